//! The two address families. Each has tables of its own in the data plane, so IPv4 keys
//! stay as small as they were (a flow key of 16 bytes, not the 40 an IPv6 one needs) and
//! IPv4's per-packet cost does not grow; the decision (`decide`) is one procedure, generic
//! over the family, run by the data plane and `lb-ctl explain` for both.
//!
//! Addresses keep the packet's byte order in memory: an IPv4 address is its four bytes
//! read as a native `u32`, an IPv6 address its sixteen bytes read as four native `u32`s.

use core::{fmt::Debug, hash::Hash};

use crate::{
    FlowKey, FlowKey6, ListenerKey, ListenerKey6,
    hash::{hash_source, hash_source6, hash_tuple, hash_tuple6},
};

/// An IPv6 address as four words, each in network byte order (the packet's bytes).
pub type Addr6 = [u32; 4];

/// What the decision needs to know of an address family.
pub trait Family: Copy + Default + Debug + PartialEq + Eq + 'static {
    type Addr: Copy + Default + Debug + PartialEq + Eq + Hash;
    /// Key of the family's flow tables (client → VIP).
    type FlowKey: Copy + Debug + PartialEq + Eq + Hash;
    /// Key of the family's listener table.
    type ListenerKey: Copy + Debug + PartialEq + Eq + Hash;

    fn flow_key(
        src_addr: Self::Addr,
        dst_addr: Self::Addr,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self::FlowKey;
    fn listener_key(addr: Self::Addr, port: u16, protocol: u8) -> Self::ListenerKey;
    /// Hash of a client address (`sch`).
    fn hash_source(addr: Self::Addr) -> u32;
    /// Hash of a 4-tuple (`tch`, pickups).
    fn hash_tuple(src_addr: Self::Addr, dst_addr: Self::Addr, src_port: u16, dst_port: u16) -> u32;
    /// Whether `addr` lies in `prefix`/`len` (the access lists' rule, for tables in memory).
    fn prefix_contains(prefix: Self::Addr, len: u8, addr: Self::Addr) -> bool;
}

/// IPv4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V4;

/// IPv6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6;

impl Family for V4 {
    type Addr = u32;
    type FlowKey = FlowKey;
    type ListenerKey = ListenerKey;

    #[inline(always)]
    fn flow_key(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> FlowKey {
        FlowKey::new(src_addr, dst_addr, src_port, dst_port, protocol)
    }

    #[inline(always)]
    fn listener_key(addr: u32, port: u16, protocol: u8) -> ListenerKey {
        ListenerKey::new(addr, port, protocol)
    }

    #[inline(always)]
    fn hash_source(addr: u32) -> u32 {
        hash_source(addr)
    }

    #[inline(always)]
    fn hash_tuple(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16) -> u32 {
        hash_tuple(src_addr, dst_addr, src_port, dst_port)
    }

    fn prefix_contains(prefix: u32, len: u8, addr: u32) -> bool {
        let mask = match len {
            0 => 0,
            _ => u32::MAX << (32 - u32::from(len.min(32))),
        };
        u32::from_be(addr) & mask == u32::from_be(prefix) & mask
    }
}

impl Family for V6 {
    type Addr = Addr6;
    type FlowKey = FlowKey6;
    type ListenerKey = ListenerKey6;

    #[inline(always)]
    fn flow_key(
        src_addr: Addr6,
        dst_addr: Addr6,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> FlowKey6 {
        FlowKey6::new(src_addr, dst_addr, src_port, dst_port, protocol)
    }

    #[inline(always)]
    fn listener_key(addr: Addr6, port: u16, protocol: u8) -> ListenerKey6 {
        ListenerKey6 {
            addr,
            port,
            protocol,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn hash_source(addr: Addr6) -> u32 {
        hash_source6(addr)
    }

    #[inline(always)]
    fn hash_tuple(src_addr: Addr6, dst_addr: Addr6, src_port: u16, dst_port: u16) -> u32 {
        hash_tuple6(src_addr, dst_addr, src_port, dst_port)
    }

    fn prefix_contains(prefix: Addr6, len: u8, addr: Addr6) -> bool {
        let len = u32::from(len.min(128));
        (0..4).all(|i| {
            let bits = len.saturating_sub(32 * i as u32).min(32);
            let mask = match bits {
                0 => 0,
                _ => u32::MAX << (32 - bits),
            };
            u32::from_be(addr[i]) & mask == u32::from_be(prefix[i]) & mask
        })
    }
}

/// An IPv6 address's words from its bytes (network order kept).
#[inline(always)]
pub const fn addr6(octets: [u8; 16]) -> Addr6 {
    let o = octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The bytes of an IPv6 address held as words.
#[inline(always)]
pub const fn octets6(addr: Addr6) -> [u8; 16] {
    let [a, b, c, d] = [
        addr[0].to_ne_bytes(),
        addr[1].to_ne_bytes(),
        addr[2].to_ne_bytes(),
        addr[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_prefixes_match_by_leading_bits() {
        let net = addr6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let inside = addr6([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let outside = addr6([0x20, 0x01, 0x0d, 0xb9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(V6::prefix_contains(net, 32, inside));
        assert!(!V6::prefix_contains(net, 32, outside));
        assert!(!V6::prefix_contains(net, 48, inside));
        assert!(V6::prefix_contains(net, 0, outside));
        assert!(V6::prefix_contains(inside, 128, inside));
        assert_eq!(octets6(inside)[15], 9);
    }

    #[test]
    fn ipv4_prefixes_match_by_leading_bits() {
        let net = u32::from_ne_bytes([198, 18, 0, 0]);
        assert!(V4::prefix_contains(
            net,
            15,
            u32::from_ne_bytes([198, 19, 1, 1])
        ));
        assert!(!V4::prefix_contains(
            net,
            16,
            u32::from_ne_bytes([198, 19, 1, 1])
        ));
    }
}
