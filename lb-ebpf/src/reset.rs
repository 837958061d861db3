//! Cutting a TCP flow from the LB: the client's packet is turned into a RST answering it
//! (addresses and ports swapped, the payload cut off, checksums computed from scratch) and
//! sent back out of the interface it came in on. Used when a drained backend's drain
//! timeout has passed, so the client learns at once instead of retransmitting into a void.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::family::octets6;
use lb_common::{PROTO_TCP, csum};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    parse::{ETH_LEN, Ipv4, ptr_at},
    parse6::{IPV6_LEN, Ipv6},
};

const RST_FRAME_LEN: usize = ETH_LEN + Ipv4Hdr::LEN + TcpHdr::LEN;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;

/// Sum of the 16-bit words of a 20-byte header, as it sits in memory.
#[inline(always)]
fn sum20(bytes: &[u8; 20]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// What a RST answering a TCP segment carries (RFC 793): an ACK is answered with seq =
/// its ack; anything else with an ACK of what it sent (`payload` bytes, SYN and FIN).
/// `None` when the TCP header is out of bounds.
#[inline(always)]
fn rst_numbers(ctx: &XdpContext, l4_offset: usize, ip_payload: u32) -> Option<(u32, u32, u8)> {
    let tcp = ptr_at::<TcpHdr>(ctx, l4_offset)?;
    // SAFETY: bounds checked by ptr_at; TcpHdr has alignment 1.
    let raw = unsafe { &*(tcp as *const [u8; TcpHdr::LEN]) };
    let seq = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let ack_seq = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let flags = raw[13];
    let data_offset = (raw[12] >> 4) as u32 * 4;
    let payload = ip_payload.saturating_sub(data_offset);
    Some(if flags & TCP_ACK != 0 {
        (ack_seq, 0, TCP_RST)
    } else {
        let consumed = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(consumed), TCP_RST | TCP_ACK)
    })
}

/// Cuts the frame to `len` bytes. False when the driver refuses.
#[inline(always)]
fn shrink_to(ctx: &XdpContext, len: usize) -> bool {
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > len {
        let shrink = len as i32 - frame_len as i32;
        // SAFETY: ctx is the program's context; shrinking the tail is always in bounds.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
            return false;
        }
    }
    true
}

/// The TCP header of the RST, ports swapped, checksummed with `pseudo` (the sum of the
/// pseudo-header's words, either family's).
#[inline(always)]
fn write_rst_tcp(tcp: &mut [u8; 20], (seq, ack, flags): (u32, u32, u8), pseudo: u32) {
    let (sport, dport) = ([tcp[0], tcp[1]], [tcp[2], tcp[3]]);
    tcp[0..2].copy_from_slice(&dport);
    tcp[2..4].copy_from_slice(&sport);
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    // Window, checksum, urgent pointer: two stores (a 6-byte fill is a call of the
    // byte-at-a-time `memset`, `words.rs`).
    tcp[14..16].copy_from_slice(&[0; 2]);
    tcp[16..20].copy_from_slice(&[0; 4]);
    let tcp_check = !csum::fold(pseudo + sum20(tcp));
    tcp[16..18].copy_from_slice(&tcp_check.to_ne_bytes());
}

/// Rewrites the packet into a RST to its sender. False (packet untouched) when it cannot:
/// IP options (the headers would have to move) or a shrink the driver refuses.
#[inline(always)]
pub fn answer_with_rst(ctx: &XdpContext, ip: &Ipv4) -> bool {
    if ip.l4_offset != ETH_LEN + Ipv4Hdr::LEN || ip.protocol != PROTO_TCP {
        return false;
    }
    let Some(numbers) = rst_numbers(ctx, ip.l4_offset, ip.tot_len as u32 - Ipv4Hdr::LEN as u32)
    else {
        return false;
    };
    if !shrink_to(ctx, RST_FRAME_LEN) {
        return false;
    }
    let (Some(eth), Some(hdr), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<[u8; 20]>(ctx, ETH_LEN),
        ptr_at::<[u8; 20]>(ctx, ETH_LEN + Ipv4Hdr::LEN),
    ) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; all three have alignment 1.
    let (eth, hdr, tcp) = unsafe { (&mut *eth, &mut *hdr, &mut *tcp) };
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);

    let (src, dst) = (
        [hdr[12], hdr[13], hdr[14], hdr[15]],
        [hdr[16], hdr[17], hdr[18], hdr[19]],
    );
    hdr[2..4].copy_from_slice(&40u16.to_be_bytes()); // total length
    hdr[4..6].copy_from_slice(&[0, 0]); // id
    hdr[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, no fragment
    hdr[8] = 64; // TTL
    hdr[10..12].copy_from_slice(&[0, 0]);
    hdr[12..16].copy_from_slice(&dst);
    hdr[16..20].copy_from_slice(&src);
    let ip_check = !csum::fold(sum20(hdr));
    hdr[10..12].copy_from_slice(&ip_check.to_ne_bytes());

    // Pseudo-header: the new source (old destination) and destination, protocol, length.
    let pseudo = u16::from_ne_bytes([dst[0], dst[1]]) as u32
        + u16::from_ne_bytes([dst[2], dst[3]]) as u32
        + u16::from_ne_bytes([src[0], src[1]]) as u32
        + u16::from_ne_bytes([src[2], src[3]]) as u32
        + u16::from_ne_bytes([0, PROTO_TCP]) as u32
        + u16::from_ne_bytes(20u16.to_be_bytes()) as u32;
    write_rst_tcp(tcp, numbers, pseudo);
    true
}

/// `answer_with_rst` for IPv6: the RST from the VIP, hop limit 64, without the packet's
/// extension headers (a packet with some is not answered: its headers would have to move).
/// The addresses come from the parsed header (`ip`, words already in registers), not from
/// the frame byte by byte: sixteen byte values per address spill to the stack.
#[inline(always)]
pub fn answer_with_rst6(ctx: &XdpContext, ip: &Ipv6) -> bool {
    if ip.l4_offset != ETH_LEN + IPV6_LEN || ip.protocol != PROTO_TCP {
        return false;
    }
    let Some(numbers) = rst_numbers(ctx, ip.l4_offset, ip.ip_len as u32 - IPV6_LEN as u32) else {
        return false;
    };
    if !shrink_to(ctx, ETH_LEN + IPV6_LEN + TcpHdr::LEN) {
        return false;
    }
    let (Some(eth), Some(hdr), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, ETH_LEN),
        ptr_at::<[u8; 20]>(ctx, ETH_LEN + IPV6_LEN),
    ) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; all three have alignment 1.
    let (eth, hdr, tcp) = unsafe { (&mut *eth, &mut *hdr, &mut *tcp) };
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
    // Version 6, traffic class and flow label 0, payload the TCP header, hop limit 64.
    hdr.vcf = [0x60, 0, 0, 0];
    hdr.payload_len = 20u16.to_be_bytes();
    hdr.next_hdr = PROTO_TCP;
    hdr.hop_limit = 64;
    hdr.src_addr = octets6(ip.dst_addr);
    hdr.dst_addr = octets6(ip.src_addr);
    let mut pseudo =
        u16::from_ne_bytes(20u16.to_be_bytes()) as u32 + u16::from_ne_bytes([0, PROTO_TCP]) as u32;
    let mut i = 0;
    while i < 4 {
        for word in [ip.src_addr[i], ip.dst_addr[i]] {
            pseudo += (word & 0xffff) + (word >> 16);
        }
        i += 1;
    }
    write_rst_tcp(tcp, numbers, csum::fold(pseudo) as u32);
    true
}
