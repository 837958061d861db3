//! What the backends' decapsulation program (`lb-ctl decap`) and its controller share:
//! its maps' names, its settings, and the reasons its counters are kept under.

/// Map and program names of the decapsulation object.
pub mod names {
    pub const PROGRAM: &str = "lb_decap";
    pub const SETTINGS: &str = "DECAP_SETTINGS";
    pub const COUNTERS: &str = "DECAP_COUNTERS";
    pub const SOURCES: &str = "DECAP_SOURCES";
    pub const SOURCES6: &str = "DECAP_SOURCES6";
    /// Every map, as pinned under `<bpffs>/<name>/maps`.
    pub const ALL_MAPS: [&str; 4] = [SETTINGS, COUNTERS, SOURCES, SOURCES6];
}

/// The only value of `DECAP_SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DecapSettings {
    /// UDP port whose packets are GUE, network byte order; 0: GUE is not decapsulated.
    pub gue_port: u16,
    /// 1: only outer sources within `DECAP_SOURCES` (IPv4) and `DECAP_SOURCES6` (IPv6)
    /// are decapsulated (the LB hosts' prefixes); anyone else's tunnel packet is dropped,
    /// since its inner source (the "client") could be anything.
    pub restrict_sources: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<DecapSettings>() == 8);

/// What the decapsulation program did with a packet; index into `DECAP_COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapReason {
    /// IPIP to an address of this host: the outer header stripped, the client's packet
    /// passed to the kernel.
    DecapsulatedIpip = 0,
    /// GUE (UDP to the GUE port) to an address of this host: stripped, passed.
    DecapsulatedGue = 1,
    /// Not IPIP, ip6ip6 or GUE over either: passed untouched.
    PassNotEncapsulated = 2,
    /// Encapsulated, from an outer source outside the allowed prefixes
    /// (`--allow-source`): dropped, since the inner packet's source could be forged.
    DropSourceRefused = 3,
    /// A fragment of an outer packet, or an outer header with IP options (IPv6: an
    /// extension header before the inner IPv6 header): passed untouched (the kernel
    /// reassembles it, and decapsulates it only if its own `ipip`, `ip6_tunnel` or `fou`
    /// module is loaded).
    PassOuterUnusual = 4,
    /// The inner packet is not a whole packet of the outer header's family (version,
    /// header length, or a length that disagrees with the outer one): dropped.
    DropMalformedInner = 5,
    /// IPv6 in IPv6 (next header 41) to this host: stripped, passed.
    DecapsulatedIp6ip6 = 6,
    /// GUE over IPv6 (UDP to the GUE port) to this host: stripped, passed.
    DecapsulatedGue6 = 7,
}

// SAFETY: repr(C), integers only, explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DecapSettings {}

/// Most prefixes `DECAP_SOURCES` (and `DECAP_SOURCES6`) holds.
pub const MAX_DECAP_SOURCES: u32 = 256;

/// Number of `DecapReason` values.
pub const DECAP_REASON_COUNT: u32 = 8;

impl DecapReason {
    pub const ALL: [Self; DECAP_REASON_COUNT as usize] = [
        Self::DecapsulatedIpip,
        Self::DecapsulatedGue,
        Self::PassNotEncapsulated,
        Self::DropSourceRefused,
        Self::PassOuterUnusual,
        Self::DropMalformedInner,
        Self::DecapsulatedIp6ip6,
        Self::DecapsulatedGue6,
    ];

    /// Name in `lb-ctl decap status`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::DecapsulatedIpip => "decapsulated_ipip",
            Self::DecapsulatedGue => "decapsulated_gue",
            Self::PassNotEncapsulated => "pass_not_encapsulated",
            Self::DropSourceRefused => "drop_source_refused",
            Self::PassOuterUnusual => "pass_outer_unusual",
            Self::DropMalformedInner => "drop_malformed_inner",
            Self::DecapsulatedIp6ip6 => "decapsulated_ip6ip6",
            Self::DecapsulatedGue6 => "decapsulated_gue6",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_at_its_index() {
        for (i, r) in DecapReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
    }
}
