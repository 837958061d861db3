//! IPv6 address and port translation (NAT66). IPv6 has no header checksum: only the
//! TCP or UDP checksum changes, through its pseudo-header's address and the port, and is
//! updated incrementally (RFC 1624). UDP's checksum is mandatory over IPv6, so a result
//! of 0 is written as 0xffff.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr6, PROTO_TCP, PROTO_UDP, csum, family::octets6};
use network_types::{ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    nat::Side,
    parse::{ETH_LEN, L4, ptr_at},
    parse6::{Ipv6, MAX_L4_OFFSET},
};

/// Rewrites one address and one port of a TCP/UDP packet and fixes the L4 checksum.
/// Returns false only if the headers are out of bounds (they cannot be after parsing).
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    ip: &Ipv6,
    l4: &L4,
    side: Side,
    new_addr: Addr6,
    new_port: u16,
) -> bool {
    let Some(hdr) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; Ipv6Hdr has alignment 1.
    let hdr = unsafe { &mut *hdr };
    let (old_addr, old_port) = match side {
        Side::Destination => (ip.dst_addr, l4.dst_port),
        Side::Source => (ip.src_addr, l4.src_port),
    };
    match side {
        Side::Destination => hdr.dst_addr = octets6(new_addr),
        Side::Source => hdr.src_addr = octets6(new_addr),
    }
    let off = ip.l4_offset;
    if off > MAX_L4_OFFSET {
        return false;
    }
    let update =
        |check: u16| csum::replace_addr6_port(check, old_addr, new_addr, old_port, new_port);
    if ip.protocol == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, off) else {
            return false;
        };
        // SAFETY: bounds checked by ptr_at; TcpHdr has alignment 1.
        let tcp = unsafe { &mut *tcp };
        tcp.check = update(u16::from_ne_bytes(tcp.check)).to_ne_bytes();
        match side {
            Side::Destination => tcp.dest = new_port.to_ne_bytes(),
            Side::Source => tcp.source = new_port.to_ne_bytes(),
        }
    } else if ip.protocol == PROTO_UDP {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
            return false;
        };
        // SAFETY: bounds checked by ptr_at; UdpHdr has alignment 1.
        let udp = unsafe { &mut *udp };
        udp.check = csum::udp_nonzero(update(u16::from_ne_bytes(udp.check))).to_ne_bytes();
        match side {
            Side::Destination => udp.dst = new_port.to_ne_bytes(),
            Side::Source => udp.src = new_port.to_ne_bytes(),
        }
    }
    true
}

/// Hop limit − 1, as a router does when it forwards (no checksum covers it).
#[inline(always)]
pub fn decrement_hop_limit(ctx: &XdpContext) {
    if let Some(hdr) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) {
        // SAFETY: bounds checked by ptr_at; Ipv6Hdr has alignment 1.
        unsafe { (*hdr).hop_limit = (*hdr).hop_limit.wrapping_sub(1) };
    }
}
