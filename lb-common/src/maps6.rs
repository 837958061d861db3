//! The IPv6 tables' keys and values: the same meaning as their IPv4 namesakes in `maps`
//! (whose comments hold), with 16-byte addresses. Values without an address (`Flow`,
//! `Listener`, `Backend`, `Affinity`, the counters) are shared by both families.

use crate::{
    Listener,
    family::Addr6,
    maps::{ports_word, word_pair},
};

/// Extension headers an IPv6 packet to a VIP may carry before its TCP or UDP header; a
/// longer chain is refused (`DropExtensionHeader`). Hop-by-hop, destination options
/// twice (before and after a routing header), routing and fragment make five.
pub const MAX_EXTENSION_HEADERS: usize = 5;
/// Bytes of extension headers an IPv6 packet to a VIP may carry in all.
pub const MAX_EXTENSION_BYTES: usize = 256;

/// Key of `FLOWS6` and `HALF_OPEN6`: the client side of a flow (client → VIP).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey6 {
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey6>() == 40);

impl FlowKey6 {
    /// The key built from words, as `FlowKey::new` builds its own: a struct literal's
    /// 3-byte padding is a call of the XDP program's byte-at-a-time `memset`
    /// (`lb-ebpf/src/words.rs`), on every IPv6 packet.
    #[inline(always)]
    pub const fn new(
        src_addr: Addr6,
        dst_addr: Addr6,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self {
        let [s0, s1] = address_words(src_addr);
        let [d0, d1] = address_words(dst_addr);
        let words = [s0, s1, d0, d1, ports_word(src_port, dst_port, protocol)];
        // SAFETY: 40 bytes of plain integers, laid out as the key's fields are.
        unsafe { core::mem::transmute::<[u64; 5], FlowKey6>(words) }
    }

    /// The key as five 64-bit words (what the flow filter hashes).
    #[inline(always)]
    pub const fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes of plain integers with explicit padding, 8-byte aligned.
        unsafe { core::mem::transmute::<FlowKey6, [u64; 5]>(*self) }
    }
}

/// An address as the two 64-bit words its four 32-bit ones make in memory.
#[inline(always)]
const fn address_words(a: Addr6) -> [u64; 2] {
    [word_pair(a[0], a[1]), word_pair(a[2], a[3])]
}

/// Key of `LISTENERS6`; `port == 0` and `protocol == 0` is a VIP marker.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ListenerKey6 {
    pub addr: Addr6,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ListenerKey6>() == 20);

/// Key data of `ACLS6`, an LPM trie: the list (matched whole), then the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AclKey6 {
    /// Access list id, host order.
    pub acl: u32,
    pub addr: Addr6,
}
const _: () = assert!(size_of::<AclKey6>() == 20);

/// Prefix bits of an `ACLS6` key for a prefix of `len` bits (the list id is always matched).
pub const fn acl_prefix_len6(len: u8) -> u32 {
    32 + len as u32
}

/// Key of `AFFINITY6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey6 {
    /// Listener id, host order.
    pub listener: u32,
    pub addr: Addr6,
}
const _: () = assert!(size_of::<AffinityKey6>() == 20);

/// Key of `ENDPOINTS6`: an IPv6 backend endpoint as its replies show it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointKey6 {
    pub addr: Addr6,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<EndpointKey6>() == 20);

/// One listener an IPv6 backend endpoint serves (`EndpointListener` with an IPv6 VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointListener6 {
    pub vip: Addr6,
    /// Network byte order.
    pub vport: u16,
    pub _pad: u16,
    /// Listener id, host order.
    pub listener: u32,
}
const _: () = assert!(size_of::<EndpointListener6>() == 24);

/// Value of `ENDPOINTS6`.
pub type Endpoint6 = crate::Endpoint<EndpointListener6>;
const _: () = assert!(size_of::<Endpoint6>() == 4 + 24 * crate::MAX_ENDPOINT_LISTENERS);

/// Value of `BACKENDS6`, indexed by backend id like `BACKENDS`: the address of an IPv6
/// backend (its other fields are in `BACKENDS`, whose `addr` is 0 for it). Only IPv6
/// packets read it, so an IPv4 packet's backend stays one 32-byte entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendAddr6 {
    pub addr: Addr6,
}
const _: () = assert!(size_of::<BackendAddr6>() == 16);

/// Value of `NEXT_HOPS6` (per CPU, by backend id): `NextHop` for an IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop6 {
    /// `bpf_ktime_get_coarse_ns` of the FIB lookup; 0 = empty.
    pub stamp_ns: u64,
    /// Ingress ifindex the answer was for, host order.
    pub ingress: u32,
    /// Egress ifindex, host order.
    pub egress: u32,
    /// The destination it was looked up for.
    pub addr: Addr6,
    /// Egress MTU, host order.
    pub mtu: u16,
    pub dst_mac: crate::Mac,
    pub src_mac: crate::Mac,
    pub _pad: [u8; 2],
    /// The source address the route prefers, when the lookup asked for it (encapsulation
    /// without a configured IPv6 source); all zero otherwise.
    pub src_addr: Addr6,
}
const _: () = assert!(size_of::<NextHop6>() == 64);

/// `PendingFlow` of an IPv6 packet (`PENDING6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingFlow6 {
    pub key: FlowKey6,
    pub listener: Listener,
    pub now_ns: u64,
    pub previous_backend: u32,
    pub previous_flags: u32,
    pub picked: u32,
    pub state: u8,
    pub step: u8,
    pub flags: u8,
    pub _pad: u8,
    /// Where the TCP or UDP header starts (after the extension headers), from the start
    /// of the frame: the stage does not walk the extension headers again.
    pub l4_offset: u16,
    pub _pad2: [u8; 6],
}
const _: () = assert!(size_of::<PendingFlow6>() == 112);

/// `TooBig` for IPv6 (`TOO_BIG6`): the translated packet too big for its egress, handed
/// to `lb_too_big6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TooBig6 {
    /// The translated packet's 5-tuple; the stage checks it against its packet.
    pub key: FlowKey6,
    /// The address and port the translation replaced, network byte order.
    pub addr: Addr6,
    pub port: u16,
    /// The egress MTU the FIB reported, host order.
    pub mtu: u16,
    /// `TOO_BIG_DESTINATION` or `TOO_BIG_SOURCE`.
    pub side: u8,
    /// 1: the packet was to be encapsulated (`forwarding: dsr`): it is the client's as it
    /// came (nothing to undo), and one the stage cannot answer is dropped, not passed (see
    /// `TooBig::encapsulated`).
    pub encapsulated: u8,
    /// Bytes of extension headers between the IPv6 header and the TCP/UDP header.
    pub extension_len: u16,
}
const _: () = assert!(size_of::<TooBig6>() == 64);

/// Value of `ENCAP_SOURCES6`, by listener id: the outer source of an IPv6 `forwarding:
/// dsr` listener's tunnel (`dsr.source`'s IPv6 address or prefix). The listener entry,
/// shared by both families, has room for an IPv4 source only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EncapSource6 {
    /// Network byte order; all zero: the address the route to the backend prefers.
    pub addr: Addr6,
    /// How many low bits of `addr` come from the flow's hash (0..=16).
    pub bits: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<EncapSource6>() == 20);

/// `Encap6::side` of an ICMPv6 error about a flow (never answered when too big).
pub const ENCAP6_ICMP: u8 = 0;

/// An IPv6 packet to be encapsulated for its backend, handed to `lb_encap6` (`ENCAP6`, one
/// per CPU, like `PendingFlow6`): the stages that decide where a packet goes leave the
/// tunnel to a stage of its own, so their stack and verifier cost do not grow with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Encap6 {
    /// The flow's client-side 5-tuple (client → VIP): the flow label, the GUE source port
    /// and a source prefix's host bits come from its hash. The stage checks it against its
    /// packet: the whole of it for a client's packet, the VIP for an ICMPv6 error.
    pub key: FlowKey6,
    /// `bpf_ktime_get_coarse_ns` of the packet (the next-hop cache).
    pub now_ns: u64,
    /// Listener id: its counters and its `ENCAP_SOURCES6` entry.
    pub listener: u32,
    pub backend: u32,
    /// The listener's `encap_port`, network byte order.
    pub encap_port: u16,
    /// The listener's `Encapsulation` value.
    pub encapsulation: u8,
    /// `TOO_BIG_DESTINATION`: a client's packet (counted as forwarded, answered with
    /// Packet Too Big when too big); `ENCAP6_ICMP`: an ICMPv6 error about the flow.
    pub side: u8,
    /// Where the packet's TCP or UDP header starts, from the start of the frame (a
    /// client's packet: its ports are checked against the key).
    pub l4_offset: u16,
    pub _pad: [u8; 10],
}
const _: () = assert!(size_of::<Encap6>() == 72);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made of integers only, with explicit padding.
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for ListenerKey6 {}
    unsafe impl aya::Pod for AclKey6 {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for EndpointKey6 {}
    unsafe impl aya::Pod for Endpoint6 {}
    unsafe impl aya::Pod for BackendAddr6 {}
    unsafe impl aya::Pod for NextHop6 {}
    unsafe impl aya::Pod for PendingFlow6 {}
    unsafe impl aya::Pod for TooBig6 {}
    unsafe impl aya::Pod for EncapSource6 {}
    unsafe impl aya::Pod for Encap6 {}
}
