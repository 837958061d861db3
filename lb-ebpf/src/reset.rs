//! Cutting a TCP flow from the LB: the client's packet is turned into a RST answering it
//! (addresses and ports swapped, the payload cut off, checksums computed from scratch) and
//! sent back out of the interface it came in on. Used when a drained backend's drain
//! timeout has passed, so the client learns at once instead of retransmitting into a void.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{PROTO_TCP, csum};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::parse::{ETH_LEN, Ipv4, ptr_at};

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

/// Rewrites the packet into a RST to its sender. False (packet untouched) when it cannot:
/// IP options (the headers would have to move) or a shrink the driver refuses.
#[inline(always)]
pub fn answer_with_rst(ctx: &XdpContext, ip: &Ipv4) -> bool {
    if ip.l4_offset != ETH_LEN + Ipv4Hdr::LEN || ip.protocol != PROTO_TCP {
        return false;
    }
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, ip.l4_offset) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; TcpHdr has alignment 1.
    let (seq, ack_seq, flags, data_offset) = unsafe {
        let raw = &*(tcp as *const [u8; TcpHdr::LEN]);
        (
            u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
            u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
            raw[13],
            (raw[12] >> 4) as u32 * 4,
        )
    };
    let payload = (ip.tot_len as u32).saturating_sub(Ipv4Hdr::LEN as u32 + data_offset);
    // RFC 793: answer an ACK with seq = its ack; anything else with ACK of what it sent.
    let (out_seq, out_ack, out_flags) = if flags & TCP_ACK != 0 {
        (ack_seq, 0, TCP_RST)
    } else {
        let consumed = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(consumed), TCP_RST | TCP_ACK)
    };

    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > RST_FRAME_LEN {
        let shrink = RST_FRAME_LEN as i32 - frame_len as i32;
        // SAFETY: ctx is the program's context; shrinking the tail is always in bounds.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
            return false;
        }
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

    let (sport, dport) = ([tcp[0], tcp[1]], [tcp[2], tcp[3]]);
    tcp[0..2].copy_from_slice(&dport);
    tcp[2..4].copy_from_slice(&sport);
    tcp[4..8].copy_from_slice(&out_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&out_ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = out_flags;
    tcp[14..20].copy_from_slice(&[0; 6]); // window, checksum, urgent pointer
    // Pseudo-header: the new source (old destination) and destination, protocol, length.
    let pseudo = u16::from_ne_bytes([dst[0], dst[1]]) as u32
        + u16::from_ne_bytes([dst[2], dst[3]]) as u32
        + u16::from_ne_bytes([src[0], src[1]]) as u32
        + u16::from_ne_bytes([src[2], src[3]]) as u32
        + u16::from_ne_bytes([0, PROTO_TCP]) as u32
        + u16::from_ne_bytes(20u16.to_be_bytes()) as u32;
    let tcp_check = !csum::fold(pseudo + sum20(tcp));
    tcp[16..18].copy_from_slice(&tcp_check.to_ne_bytes());
    true
}
