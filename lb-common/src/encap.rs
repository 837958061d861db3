//! The outer headers of direct server return (`forwarding: dsr`): the client's packet is
//! carried whole to its backend inside an outer header of its own family: IPv4 in IPv4
//! (IPIP) or IPv6 in IPv6 (next header 41, RFC 2473), or that outer header and UDP (GUE
//! variant 1, RFC 8086 §4.2: the inner IP header right after UDP, no GUE header). The
//! backend strips them (`lb-ctl decap`) and answers the client itself.
//!
//! Built here, once, for the XDP program, the probe tunnel and the tests that check every
//! byte of what they send. Addresses and ports are network byte order as they sit in
//! memory; the header arrays are the bytes on the wire.

use crate::{
    Addr6, ENCAP_TTL, EncapSource6, Encapsulation, FlowKey, FlowKey6, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, Listener, MAX_ENCAP_SOURCE_BITS, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
    UDP_HEADER_LEN,
    csum::fold,
    hash::{hash_tuple, hash_tuple6},
};

/// The IPv4 "don't fragment" bit in the flags and fragment offset word (host order).
const DONT_FRAGMENT: u16 = 0x4000;

/// What the outer headers of one packet are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    pub encapsulation: Encapsulation,
    /// Network byte order.
    pub src_addr: u32,
    /// The backend. Network byte order.
    pub dst_addr: u32,
    /// The inner packet's IPv4 total length, host order.
    pub inner_len: u16,
    /// The inner packet's TOS byte, copied so queueing along the way treats both alike.
    pub tos: u8,
    /// The inner packet's DF: a client that asked for path MTU discovery gets it through
    /// the tunnel too; one that did not lets routers fragment the outer packet.
    pub dont_fragment: bool,
    /// GUE: source port (network byte order), from the flow's hash.
    pub src_port: u16,
    /// GUE: destination port, network byte order.
    pub dst_port: u16,
}

/// What an outer header copies of the packet it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    /// IPv4 total length, host order.
    pub len: u16,
    pub tos: u8,
    pub dont_fragment: bool,
}

impl Outer {
    /// The outer headers of a packet of `flow` (client → VIP, as the flow table keys it)
    /// sent through `listener`'s tunnel to `backend_addr`. The source is the listener's
    /// `encap_source`, or where it sets none `route_source` (the address the route to the
    /// backend prefers); the flow's hash picks its host bits and GUE's source port, so a
    /// flow always looks the same and flows spread over a backend's receive queues. The
    /// XDP program and the probe tunnel both build theirs here.
    #[inline(always)]
    pub const fn for_flow(
        encapsulation: Encapsulation,
        listener: &Listener,
        route_source: u32,
        backend_addr: u32,
        flow: &FlowKey,
        inner: Inner,
    ) -> Self {
        let base = if listener.encap_source != 0 {
            listener.encap_source
        } else {
            route_source
        };
        // Only a source prefix and GUE's port take anything from the hash.
        let hash = if listener.encap_source_bits != 0 || matches!(encapsulation, Encapsulation::Gue)
        {
            hash_tuple(flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port)
        } else {
            0
        };
        Self {
            encapsulation,
            src_addr: outer_source(base, listener.encap_source_bits, hash),
            dst_addr: backend_addr,
            inner_len: inner.len,
            tos: inner.tos,
            dont_fragment: inner.dont_fragment,
            src_port: gue_source_port(hash),
            dst_port: listener.encap_port,
        }
    }

    /// The outer IPv4 header, checksum included, as ten 16-bit words in wire order (each
    /// the two bytes the packet holds, read as a native `u16`). Identification 0 (RFC 6864
    /// allows it for atomic datagrams; a fragmentable one gets fragments the kernel
    /// numbers). Words, not bytes: the XDP program writes them with ten stores, and the
    /// checksum is a sum of values already in registers.
    #[inline(always)]
    pub const fn ipv4_words(&self) -> [u16; IPV4_HEADER_LEN as usize / 2] {
        let total = self.inner_len + self.encapsulation.overhead();
        let protocol = match self.encapsulation {
            Encapsulation::Gue => PROTO_UDP,
            _ => PROTO_IPIP,
        };
        let flags: u16 = if self.dont_fragment { DONT_FRAGMENT } else { 0 };
        let [s0, s1] = halves(self.src_addr);
        let [d0, d1] = halves(self.dst_addr);
        let mut w = [
            u16::from_ne_bytes([0x45, self.tos]),
            total.to_be(),
            0,
            flags.to_be(),
            u16::from_ne_bytes([ENCAP_TTL, protocol]),
            0,
            s0,
            s1,
            d0,
            d1,
        ];
        let sum = w[0] as u32
            + w[1] as u32
            + w[3] as u32
            + w[4] as u32
            + s0 as u32
            + s1 as u32
            + d0 as u32
            + d1 as u32;
        w[5] = !fold(sum);
        w
    }

    /// `ipv4_words` as the bytes on the wire.
    pub const fn ipv4_header(&self) -> [u8; IPV4_HEADER_LEN as usize] {
        wire_bytes(self.ipv4_words())
    }

    /// The GUE UDP header in wire-order words, as `ipv4_words`. Checksum 0: IPv4 UDP
    /// allows none (RFC 768), the inner packet carries its own, and computing one would
    /// read the whole packet.
    #[inline(always)]
    pub const fn udp_words(&self) -> [u16; UDP_HEADER_LEN as usize / 2] {
        gue_udp_words(self.src_port, self.dst_port, self.inner_len)
    }

    /// `udp_words` as the bytes on the wire.
    pub const fn udp_header(&self) -> [u8; UDP_HEADER_LEN as usize] {
        wire_bytes(self.udp_words())
    }
}

/// A GUE UDP header in wire-order words, for either outer family: ports as given
/// (network order), length over the inner packet, checksum 0 (each `udp_words` says why
/// its family allows it).
#[inline(always)]
const fn gue_udp_words(src_port: u16, dst_port: u16, inner_len: u16) -> [u16; 4] {
    [src_port, dst_port, (inner_len + UDP_HEADER_LEN).to_be(), 0]
}

/// Wire-order words (each the two bytes the packet holds, read as a native `u16`) as
/// those bytes. `B` must be twice `W`.
const fn wire_bytes<const W: usize, const B: usize>(w: [u16; W]) -> [u8; B] {
    assert!(B == 2 * W);
    let mut h = [0; B];
    let mut i = 0;
    while i < W {
        let b = w[i].to_ne_bytes();
        h[2 * i] = b[0];
        h[2 * i + 1] = b[1];
        i += 1;
    }
    h
}

/// The two wire-order 16-bit words of an address held in network byte order.
#[inline(always)]
const fn halves(addr: u32) -> [u16; 2] {
    let b = addr.to_ne_bytes();
    [
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
    ]
}

/// The outer source of a flow: `base` with its low `bits` bits taken from the flow's hash,
/// so a backend's NIC, which spreads packets over its queues by the outer header, spreads
/// the flows too. `bits` 0: `base` itself.
#[inline(always)]
pub const fn outer_source(base: u32, bits: u8, flow_hash: u32) -> u32 {
    if bits == 0 {
        return base;
    }
    let bits = if bits > MAX_ENCAP_SOURCE_BITS {
        MAX_ENCAP_SOURCE_BITS
    } else {
        bits
    };
    let mask = (1u32 << bits) - 1;
    let host = u32::from_be(base) & !mask | (flow_hash & mask);
    host.to_be()
}

/// The GUE source port of a flow, network byte order: from the flow's hash, in the
/// dynamic range (49152–65535) as RFC 8086 §5.6.1 recommends for flow entropy.
#[inline(always)]
pub const fn gue_source_port(flow_hash: u32) -> u16 {
    (0xc000 | (flow_hash as u16 & 0x3fff)).to_be()
}

/// What the outer headers of one IPv6 packet are made of (`Outer` for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer6 {
    pub encapsulation: Encapsulation,
    pub src_addr: Addr6,
    /// The backend.
    pub dst_addr: Addr6,
    /// The inner packet's length, its IPv6 header included (40 + its payload length),
    /// host order.
    pub inner_len: u16,
    /// The inner packet's traffic class, copied so queueing along the way treats both
    /// alike (as IPv4's TOS).
    pub traffic_class: u8,
    /// The outer flow label (20 bits, host order), from the flow's hash: routers that
    /// spread IPv6 over equal-cost paths or receive queues by the flow label (RFC 6438)
    /// spread the tunnel's flows, whose outer addresses are all alike.
    pub flow_label: u32,
    /// GUE: source port (network byte order), from the flow's hash.
    pub src_port: u16,
    /// GUE: destination port, network byte order.
    pub dst_port: u16,
}

/// What an outer IPv6 header copies of the packet it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner6 {
    /// The IPv6 header and payload, host order.
    pub len: u16,
    pub traffic_class: u8,
}

impl Inner6 {
    /// From the packet's first two bytes (version, traffic class, the flow label's top)
    /// and its length (header and payload).
    #[inline(always)]
    pub const fn of(first: [u8; 2], len: u16) -> Self {
        Self {
            len,
            traffic_class: first[0] << 4 | first[1] >> 4,
        }
    }
}

impl Outer6 {
    /// The outer headers of a packet of `flow` (client → VIP, as `FLOWS6` keys it) sent
    /// through an IPv6 listener's tunnel (`encapsulation`, GUE to `gue_port`, network
    /// order) to `backend_addr`. The source is `source`'s address (its host bits from the
    /// flow's hash), or where it sets none `route_source`. The flow label, GUE's source
    /// port and the source's host bits all come from one hash of the flow's 4-tuple, so a
    /// flow always looks the same and flows spread. The XDP program and the probe tunnel
    /// both build theirs here.
    #[inline(always)]
    pub const fn for_flow(
        encapsulation: Encapsulation,
        gue_port: u16,
        source: &EncapSource6,
        route_source: Addr6,
        backend_addr: Addr6,
        flow: &FlowKey6,
        inner: Inner6,
    ) -> Self {
        let hash = hash_tuple6(flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port);
        let configured = (source.addr[0] | source.addr[1] | source.addr[2] | source.addr[3]) != 0;
        let src_addr = if configured {
            outer_source6(source.addr, source.bits, hash)
        } else {
            route_source
        };
        Self {
            encapsulation,
            src_addr,
            dst_addr: backend_addr,
            inner_len: inner.len,
            traffic_class: inner.traffic_class,
            flow_label: flow_label(hash),
            src_port: gue_source_port(hash),
            dst_port: gue_port,
        }
    }

    /// The outer IPv6 header as twenty 16-bit words in wire order (see
    /// `Outer::ipv4_words`). Version 6, the inner traffic class, the flow label, the
    /// payload length (the inner packet, and UDP's 8 bytes for GUE), next header 41
    /// (IPIP) or 17 (GUE), hop limit `ENCAP_TTL`. No extension header: RFC 2473's tunnel
    /// encapsulation limit option is optional, and a backend decapsulating in XDP would
    /// have to walk it.
    #[inline(always)]
    pub const fn ipv6_words(&self) -> [u16; IPV6_HEADER_LEN as usize / 2] {
        let (next, udp) = match self.encapsulation {
            Encapsulation::Gue => (PROTO_UDP, UDP_HEADER_LEN),
            _ => (PROTO_IPV6, 0),
        };
        let label = self.flow_label & FLOW_LABEL_MASK;
        let first = 0x6000 | (self.traffic_class as u16) << 4 | (label >> 16) as u16;
        let [s0, s1] = halves(self.src_addr[0]);
        let [s2, s3] = halves(self.src_addr[1]);
        let [s4, s5] = halves(self.src_addr[2]);
        let [s6, s7] = halves(self.src_addr[3]);
        let [d0, d1] = halves(self.dst_addr[0]);
        let [d2, d3] = halves(self.dst_addr[1]);
        let [d4, d5] = halves(self.dst_addr[2]);
        let [d6, d7] = halves(self.dst_addr[3]);
        [
            first.to_be(),
            (label as u16).to_be(),
            (self.inner_len + udp).to_be(),
            u16::from_ne_bytes([next, ENCAP_TTL]),
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            d6,
            d7,
        ]
    }

    /// `ipv6_words` as the bytes on the wire.
    pub const fn ipv6_header(&self) -> [u8; IPV6_HEADER_LEN as usize] {
        wire_bytes(self.ipv6_words())
    }

    /// The GUE UDP header in wire-order words. Checksum 0, as over IPv4: RFC 6935 and
    /// RFC 6936 allow a tunnel's UDP over IPv6 without one when the tunnel's far end
    /// expects it (the backends' `lb-ctl decap` accepts it; a kernel decapsulating with
    /// `fou` needs its zero-checksum receive option), the inner packet carries its own
    /// (its TCP or UDP checksum, which IPv6 makes mandatory, covers its addresses), and a
    /// checksum would mean reading the whole packet.
    #[inline(always)]
    pub const fn udp_words(&self) -> [u16; UDP_HEADER_LEN as usize / 2] {
        gue_udp_words(self.src_port, self.dst_port, self.inner_len)
    }

    /// `udp_words` as the bytes on the wire.
    pub const fn udp_header(&self) -> [u8; UDP_HEADER_LEN as usize] {
        wire_bytes(self.udp_words())
    }
}

/// The 20 bits of an IPv6 flow label.
const FLOW_LABEL_MASK: u32 = 0xf_ffff;

/// The outer flow label of a flow: 20 bits of its hash, never 0 (which means "no label",
/// RFC 6437).
#[inline(always)]
pub const fn flow_label(flow_hash: u32) -> u32 {
    let label = flow_hash & FLOW_LABEL_MASK;
    if label == 0 { 1 } else { label }
}

/// `outer_source` for IPv6: `base` with its low `bits` bits (at most 16) from the flow's
/// hash.
#[inline(always)]
pub const fn outer_source6(base: Addr6, bits: u8, flow_hash: u32) -> Addr6 {
    let mut addr = base;
    addr[3] = outer_source(base[3], bits, flow_hash);
    addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::checksum;

    fn outer(encapsulation: Encapsulation) -> Outer {
        Outer {
            encapsulation,
            src_addr: u32::from_ne_bytes([198, 18, 1, 2]),
            dst_addr: u32::from_ne_bytes([198, 18, 2, 10]),
            inner_len: 60,
            tos: 0x10,
            dont_fragment: true,
            src_port: 50000u16.to_be(),
            dst_port: 6080u16.to_be(),
        }
    }

    #[test]
    fn an_ipip_header_has_every_field_and_a_valid_checksum() {
        let h = outer(Encapsulation::Ipip).ipv4_header();
        assert_eq!(
            h[..10],
            [0x45, 0x10, 0, 80, 0, 0, 0x40, 0, ENCAP_TTL, PROTO_IPIP]
        );
        assert_eq!(h[12..], [198, 18, 1, 2, 198, 18, 2, 10]);
        // A header with its checksum sums to 0xffff: its checksum recomputed is 0.
        assert_eq!(checksum(&h), 0);
        let mut zeroed = h;
        zeroed[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(checksum(&zeroed).to_ne_bytes(), [h[10], h[11]]);
    }

    #[test]
    fn a_gue_header_is_udp_to_the_port_with_the_length_of_what_it_carries() {
        let o = outer(Encapsulation::Gue);
        let h = o.ipv4_header();
        assert_eq!(h[2..4], 88u16.to_be_bytes());
        assert_eq!(h[9], PROTO_UDP);
        assert_eq!(checksum(&h), 0);
        assert_eq!(
            o.udp_header(),
            [0xc3, 0x50, 0x17, 0xc0, 0, 68, 0, 0],
            "50000 → 6080, length 8 + 60, no checksum"
        );
    }

    #[test]
    fn without_df_the_outer_packet_may_be_fragmented() {
        let mut o = outer(Encapsulation::Ipip);
        o.dont_fragment = false;
        let h = o.ipv4_header();
        assert_eq!(h[6..8], [0, 0]);
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn the_outer_source_keeps_the_prefix_and_takes_the_low_bits_from_the_hash() {
        let base = u32::from_ne_bytes([198, 18, 9, 0]);
        assert_eq!(outer_source(base, 0, 0xdead_beef), base);
        assert_eq!(
            outer_source(base, 8, 0x1234_56ab).to_ne_bytes(),
            [198, 18, 9, 0xab]
        );
        assert_eq!(
            outer_source(base, 12, 0x1234_5fab).to_ne_bytes(),
            [198, 18, 0xf, 0xab]
        );
        // More than a /16's worth is capped: the first two octets always stay.
        assert_eq!(
            outer_source(base, 24, 0xffff_ffff).to_ne_bytes(),
            [198, 18, 0xff, 0xff]
        );
    }

    #[test]
    fn gue_source_ports_stay_in_the_dynamic_range() {
        for hash in [0, 1, 0x3fff, 0x4000, 0xffff, 0xdead_beef] {
            let port = u16::from_be(gue_source_port(hash));
            assert!(port >= 49152, "{port}");
        }
        assert_ne!(gue_source_port(1), gue_source_port(2));
    }

    fn addr6(text: &str) -> Addr6 {
        crate::family::addr6(text.parse::<std::net::Ipv6Addr>().unwrap().octets())
    }

    fn outer6(encapsulation: Encapsulation) -> Outer6 {
        Outer6 {
            encapsulation,
            src_addr: addr6("2001:db8:18:1::1"),
            dst_addr: addr6("2001:db8:18:1::10"),
            inner_len: 80,
            traffic_class: 0xb8,
            flow_label: 0xa_bcde,
            src_port: 50000u16.to_be(),
            dst_port: 6080u16.to_be(),
        }
    }

    #[test]
    fn an_ip6ip6_header_has_every_field() {
        let h = outer6(Encapsulation::Ipip).ipv6_header();
        // Version 6, traffic class 0xb8, flow label 0xabcde, payload 80, next header 41,
        // hop limit 64.
        assert_eq!(
            h[..8],
            [0x6b, 0x8a, 0xbc, 0xde, 0, 80, PROTO_IPV6, ENCAP_TTL]
        );
        assert_eq!(
            h[8..24],
            "2001:db8:18:1::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(
            h[24..],
            "2001:db8:18:1::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn a_gue6_header_is_udp_with_the_length_of_what_it_carries_and_no_checksum() {
        let o = outer6(Encapsulation::Gue);
        let h = o.ipv6_header();
        assert_eq!(h[4..8], [0, 88, PROTO_UDP, ENCAP_TTL], "payload 8 + 80");
        assert_eq!(
            o.udp_header(),
            [0xc3, 0x50, 0x17, 0xc0, 0, 88, 0, 0],
            "50000 → 6080, length 8 + 80, checksum 0 (RFC 6935)"
        );
    }

    #[test]
    fn an_ipv6_flow_gets_its_label_port_and_source_bits_from_one_hash() {
        let flow = FlowKey6 {
            src_addr: addr6("2001:db8:18::2"),
            dst_addr: addr6("2001:db8:19::100"),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol: crate::PROTO_TCP,
            _pad: [0; 3],
        };
        let hash = hash_tuple6(flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port);
        let inner = Inner6 {
            len: 60,
            traffic_class: 0x10,
        };
        let route = addr6("2001:db8:18:1::1");
        let backend = addr6("2001:db8:18:1::10");
        let none = EncapSource6::default();
        let o = Outer6::for_flow(
            Encapsulation::Gue,
            6080u16.to_be(),
            &none,
            route,
            backend,
            &flow,
            inner,
        );
        assert_eq!(
            (o.src_addr, o.dst_addr),
            (route, backend),
            "the route's source"
        );
        assert_eq!(o.flow_label, flow_label(hash));
        assert_eq!(o.src_port, gue_source_port(hash));
        assert_eq!((o.inner_len, o.traffic_class), (60, 0x10));
        let prefix = EncapSource6 {
            addr: addr6("2001:db8:9::"),
            bits: 16,
            _pad: [0; 3],
        };
        let o = Outer6::for_flow(
            Encapsulation::Ipip,
            0,
            &prefix,
            route,
            backend,
            &flow,
            inner,
        );
        let src = crate::family::octets6(o.src_addr);
        assert_eq!(src[..14], crate::family::octets6(prefix.addr)[..14]);
        assert_eq!(u16::from_be_bytes([src[14], src[15]]), hash as u16);
        let one = EncapSource6 {
            addr: addr6("2001:db8:9::7"),
            ..Default::default()
        };
        let o = Outer6::for_flow(Encapsulation::Ipip, 0, &one, route, backend, &flow, inner);
        assert_eq!(o.src_addr, one.addr, "an address: itself");
    }

    #[test]
    fn flow_labels_are_twenty_bits_and_never_zero() {
        assert_eq!(Inner6::of([0x6b, 0x81], 60).traffic_class, 0xb8);
        assert_eq!(flow_label(0x1234_5678), 0x4_5678);
        assert_eq!(flow_label(0xfff0_0000), 1, "0 means unlabelled");
        let mut o = outer6(Encapsulation::Ipip);
        o.flow_label = 0xf_ffff;
        o.traffic_class = 0xff;
        assert_eq!(o.ipv6_header()[..4], [0x6f, 0xff, 0xff, 0xff]);
    }
}
