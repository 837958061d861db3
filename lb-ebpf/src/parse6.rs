//! IPv6 header parsing, with the extension-header policy of docs/packet-policy.md:
//!
//! - hop-by-hop options (first only), destination options and a routing header whose
//!   segments left is 0 are skipped;
//! - a routing header with segments left > 0 names a later destination than the VIP, and
//!   a hop-by-hop header anywhere but first is malformed (RFC 8200 section 4.1): refused;
//! - a fragment header of an atomic fragment (offset 0, no more fragments) is skipped; any
//!   other fragment is a fragment, with the IPv4 fragments' policy;
//! - at most `MAX_EXTENSION_HEADERS` headers and `MAX_EXTENSION_BYTES` bytes of them: a
//!   longer chain is refused, for a VIP (the walk is bounded for the verifier and for
//!   the cost of a packet);
//! - anything else (ESP, AH, no next header, an unknown header) ends the walk: it is the
//!   packet's protocol, neither TCP nor UDP.
//!
//! "Refused" and "fragment" are facts here; the entry program decides what they mean for
//! the packet (dropped when addressed to a VIP, passed otherwise).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use lb_common::{Addr6, MAX_EXTENSION_BYTES, MAX_EXTENSION_HEADERS, Reason, V6, decide::Packet};
use network_types::ip::Ipv6Hdr;

use crate::{
    maps::PENDING6,
    parse::{ETH_LEN, L4, l4_at, ptr_at},
};

pub const IPV6_LEN: usize = Ipv6Hdr::LEN;
/// Where the L4 header may start at the latest: the bound the verifier is told.
pub const MAX_L4_OFFSET: usize = ETH_LEN + IPV6_LEN + MAX_EXTENSION_BYTES;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DESTINATION_OPTIONS: u8 = 60;
pub const PROTO_ICMPV6: u8 = 58;

/// A parsed IPv6 packet. Addresses and ports are network byte order, as in the packet.
pub struct Ipv6 {
    /// Offset of the upper-layer header from the start of the frame.
    pub l4_offset: usize,
    /// The IP packet's length (40 + payload length), host order.
    pub ip_len: u16,
    /// The upper-layer protocol, after the extension headers.
    pub protocol: u8,
    pub hop_limit: u8,
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    /// A fragment other than an atomic one.
    pub fragment: bool,
    /// Extension headers the policy refuses for a VIP.
    pub refused_extensions: bool,
}

pub enum Parsed6 {
    Ipv6(Ipv6),
    /// Decided during parsing: the verdict and its reason.
    Done(u32, Reason),
}

/// An address in the packet as four words, loaded a word at a time. The BPF target turns
/// a load it cannot prove aligned into byte loads, and sixteen bytes per address left the
/// compiler spilling each to the stack (a third of the 512 bytes a program may use). The
/// loads are 2-byte aligned in any frame; the kernel allows unaligned packet loads on
/// every architecture with efficient unaligned access (x86-64 and arm64 among them), as
/// C programs reading `struct ipv6hdr` rely on. Volatile keeps each load one instruction.
#[inline(always)]
pub fn words(bytes: &[u8; 16]) -> Addr6 {
    let p = bytes.as_ptr().cast::<u32>();
    // SAFETY: 16 readable bytes (a field of a bounds-checked header); see above for the
    // alignment.
    unsafe {
        [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ]
    }
}

/// Parses the IPv6 header and walks its extension headers. A header that is truncated, of
/// another version, or whose payload length runs past the frame is dropped, as is an
/// extension header that runs past the payload.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Parsed6 {
    let mut ip = match header(ctx) {
        Ok(ip) => ip,
        Err(reason) => return Parsed6::Done(XDP_DROP, reason),
    };
    if let Err(reason) = walk(ctx, &mut ip) {
        return Parsed6::Done(XDP_DROP, reason);
    }
    Parsed6::Ipv6(ip)
}

/// The fixed header alone: the upper-layer header is taken to follow it (`walk` moves
/// past extension headers).
#[inline(always)]
pub fn header(ctx: &XdpContext) -> Result<Ipv6, Reason> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN).ok_or(Reason::DropMalformedIpv6)?;
    // SAFETY: bounds checked by ptr_at; Ipv6Hdr has alignment 1.
    let hdr = unsafe { &*ip };
    let payload_len = u16::from_be_bytes(hdr.payload_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if hdr.vcf[0] >> 4 != 6 || ETH_LEN + IPV6_LEN + payload_len > frame_len {
        return Err(Reason::DropMalformedIpv6);
    }
    Ok(Ipv6 {
        l4_offset: ETH_LEN + IPV6_LEN,
        ip_len: (IPV6_LEN + payload_len) as u16,
        protocol: hdr.next_hdr,
        hop_limit: hdr.hop_limit,
        src_addr: words(&hdr.src_addr),
        dst_addr: words(&hdr.dst_addr),
        fragment: false,
        refused_extensions: false,
    })
}

#[inline(always)]
const fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_DESTINATION_OPTIONS
    )
}

/// Walks the extension headers after the fixed header: `ip.protocol` becomes the
/// upper-layer protocol and `ip.l4_offset` its offset, or the packet is marked a fragment
/// or refused (and the walk stops there).
#[inline(always)]
fn walk(ctx: &XdpContext, ip: &mut Ipv6) -> Result<(), Reason> {
    let end = ETH_LEN + ip.ip_len as usize;
    let mut next = ip.protocol;
    let mut off = ip.l4_offset;
    let mut walked = 0;
    while walked < MAX_EXTENSION_HEADERS && is_extension(next) {
        let ext = ptr_at::<[u8; 8]>(ctx, off).ok_or(Reason::DropMalformedIpv6)?;
        // SAFETY: bounds checked by ptr_at.
        let ext = unsafe { &*ext };
        let len = if next == NEXT_FRAGMENT {
            8
        } else {
            (ext[1] as usize + 1) * 8
        };
        if off + len > end {
            return Err(Reason::DropMalformedIpv6);
        }
        let refused = match next {
            NEXT_HOP_BY_HOP => walked != 0,
            // Segments left: the VIP is not the packet's last destination.
            NEXT_ROUTING => ext[3] != 0,
            _ => false,
        };
        // Offset (13 bits) and M: an atomic fragment has neither.
        let fragment = next == NEXT_FRAGMENT && u16::from_be_bytes([ext[2], ext[3]]) & 0xfff9 != 0;
        next = ext[0];
        off = settle(off + len);
        walked += 1;
        if refused || off > MAX_L4_OFFSET {
            ip.refused_extensions = true;
            return Ok(());
        }
        if fragment {
            ip.fragment = true;
            ip.protocol = next;
            return Ok(());
        }
    }
    // The chain goes on past the bound.
    if is_extension(next) {
        ip.refused_extensions = true;
        return Ok(());
    }
    ip.protocol = next;
    ip.l4_offset = off;
    Ok(())
}

/// `off`, read back from memory. Each chain of extension headers leaves the verifier its
/// own range of offsets, and everything after the walk would be verified once per range;
/// a value read from a map is one unknown value, so it is verified once. `usize::MAX`
/// (refused by the caller's bound) if the scratch map is missing.
#[inline(always)]
fn settle(off: usize) -> usize {
    let Some(p) = PENDING6.get_ptr_mut(0) else {
        return usize::MAX;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs. Volatile, so
    // the compiler does not hand the stored register back instead of loading it.
    unsafe {
        core::ptr::write_volatile(&raw mut (*p).l4_offset, off as u16);
        core::ptr::read_volatile(&raw const (*p).l4_offset) as usize
    }
}

/// The TCP or UDP header of a parsed packet; `None` when truncated (see `parse::l4`) or,
/// for UDP, without a checksum, which IPv6 requires (RFC 8200 section 8.1).
#[inline(always)]
pub fn l4(ctx: &XdpContext, ip: &Ipv6) -> Option<L4> {
    let off = ip.l4_offset;
    if off > MAX_L4_OFFSET {
        return None;
    }
    let payload = (ip.ip_len as usize + ETH_LEN).checked_sub(off)?;
    let l4 = l4_at(ctx, off, payload, ip.protocol)?;
    if ip.protocol == lb_common::PROTO_UDP {
        let check = ptr_at::<[u8; 8]>(ctx, off)?;
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &*check };
        if udp[6] == 0 && udp[7] == 0 {
            return None;
        }
    }
    Some(l4)
}

/// The packet as the decision (`lb_common::decide`) sees it.
#[inline(always)]
pub const fn packet(ip: &Ipv6, l4: &L4) -> Packet<V6> {
    Packet {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        protocol: ip.protocol,
        tcp_flags: l4.tcp_flags,
        ttl: ip.hop_limit,
    }
}

/// Whether an ICMPv6 packet is neighbour discovery (RFC 4861: router and neighbour
/// solicitations and advertisements, redirects), which is the kernel's whatever its
/// addresses.
#[inline(always)]
pub fn is_neighbour_discovery(ctx: &XdpContext, ip: &Ipv6) -> bool {
    let off = ip.l4_offset;
    // Inside the payload: bytes past the payload length are padding, not a message.
    if off > MAX_L4_OFFSET || off + 4 > ETH_LEN + usize::from(ip.ip_len) {
        return false;
    }
    let Some(icmp) = ptr_at::<[u8; 4]>(ctx, off) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp)[0] };
    (133..=137).contains(&kind)
}

/// Verdict for a parsed packet the entry program does not serve: dropped (with `reason`)
/// when addressed to a VIP, passed otherwise.
#[inline(always)]
pub fn refuse_for_vip(vip: bool, reason: Reason, otherwise: Reason) -> (u32, Reason) {
    if vip {
        (XDP_DROP, reason)
    } else {
        (XDP_PASS, otherwise)
    }
}
