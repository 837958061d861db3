//! Address and port translation with incremental checksum updates (RFC 1624), and the
//! TTL decrement a router does. Checksum words are read and written in memory order;
//! lb_common::csum works in that representation.
//!
//! Each function re-derives its header pointers with one bounds check per header and
//! then reaches fields through them: the verifier tracks a checked range on the pointer
//! it checked, not on separately computed addresses.

use core::hint::cold_path;

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, PROTO_UDP, csum};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::parse::{ETH_LEN, Ipv4, L4, ptr_at};

/// Which side of the header a translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client → VIP becomes client → backend.
    Destination,
    /// Backend → client becomes VIP → client.
    Source,
}

/// Rewrites one address and one port of a TCP/UDP packet and fixes the IP header checksum
/// and the L4 checksum (whose pseudo-header covers the address). A UDP checksum of 0
/// ("none") stays 0. Returns false only if the headers are out of bounds (they cannot be
/// after parsing; the check is for the verifier).
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    ip: &Ipv4,
    l4: &L4,
    side: Side,
    new_addr: u32,
    new_port: u16,
) -> bool {
    let Some(hdr) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        cold_path();
        return false;
    };
    // SAFETY: bounds checked by ptr_at; Ipv4Hdr has alignment 1.
    let hdr = unsafe { &mut *hdr };
    let (old_addr, old_port) = match side {
        Side::Destination => (ip.dst_addr, l4.dst_port),
        Side::Source => (ip.src_addr, l4.src_port),
    };
    let check = u16::from_ne_bytes(hdr.check);
    hdr.check = csum::replace_u32(check, old_addr, new_addr).to_ne_bytes();
    match side {
        Side::Destination => hdr.dst_addr = new_addr.to_ne_bytes(),
        Side::Source => hdr.src_addr = new_addr.to_ne_bytes(),
    }

    // The L4 header offset is 34..=74 (checked by parse::l4); say so again for the verifier.
    let off = ip.l4_offset;
    if off > ETH_LEN + 60 {
        cold_path();
        return false;
    }
    let update =
        |check: u16| csum::replace_addr_port(check, old_addr, new_addr, old_port, new_port);
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
        let check = u16::from_ne_bytes(udp.check);
        if check != 0 {
            udp.check = csum::udp_nonzero(update(check)).to_ne_bytes();
        }
        match side {
            Side::Destination => udp.dst = new_port.to_ne_bytes(),
            Side::Source => udp.src = new_port.to_ne_bytes(),
        }
    }
    true
}

/// TTL − 1 with the header checksum fixed, as a router does when it forwards.
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext) {
    let Some(hdr) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at; Ipv4Hdr has alignment 1.
    let hdr = unsafe { &mut *hdr };
    let old = u16::from_ne_bytes([hdr.ttl, hdr.proto]);
    hdr.ttl = hdr.ttl.wrapping_sub(1);
    let new = u16::from_ne_bytes([hdr.ttl, hdr.proto]);
    hdr.check = csum::replace_u16(u16::from_ne_bytes(hdr.check), old, new).to_ne_bytes();
}
