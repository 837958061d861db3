//! Header parsing. Every access is bounds-checked against `data_end` right before it, in
//! the form the verifier tracks; the IP header length comes from IHL, never assumed.

use core::hint::cold_path;

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, PROTO_UDP, Reason, decide::Packet};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub use crate::frame::{ETH_LEN, ptr_at};
const IPV4_MIN_LEN: usize = Ipv4Hdr::LEN;
/// More-fragments flag and fragment offset, in the 16-bit `frags` field (host order).
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
const IP_DF: u16 = 0x4000;

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS: usize = 13;

/// A parsed IPv4 packet. Addresses and ports are network byte order, as in the packet.
pub struct Ipv4 {
    /// Offset of the L4 header from the start of the frame (14 + IHL × 4).
    pub l4_offset: usize,
    /// IP total length, host order.
    pub tot_len: u16,
    pub protocol: u8,
    pub ttl: u8,
    /// Type of service (DSCP and ECN), copied to an outer header.
    pub tos: u8,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub fragment: bool,
    /// DF: the sender asks for "fragmentation needed" rather than fragments.
    pub dont_fragment: bool,
}

/// TCP or UDP ports and flags of a parsed packet.
pub struct L4 {
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers, host order (0 for UDP).
    pub seq: u32,
    pub ack: u32,
}

pub enum Parsed {
    Ipv4(Ipv4),
    /// Decided during parsing: the verdict and its reason.
    Done(u32, Reason),
}

/// Whether the frame is IPv6 (`lb_xdp` asks only of frames `ipv4` found not IPv4).
#[inline(always)]
pub fn is_ipv6(ctx: &XdpContext) -> bool {
    ptr_at::<EthHdr>(ctx, 0)
        // SAFETY: bounds checked by ptr_at.
        .is_some_and(|eth| unsafe { (*eth).ether_type } == EtherType::Ipv6 as u16)
}

/// Parses Ethernet and the IPv4 header. Anything that is not IPv4 is passed; an IPv4
/// header that is truncated, has IHL < 5, a version other than 4, or a total length that
/// does not fit the frame is dropped (the kernel would drop it too; here it is counted).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Parsed {
    use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};

    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        cold_path();
        return Parsed::Done(XDP_DROP, Reason::DropMalformedEthernet);
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Parsed::Done(XDP_PASS, Reason::PassNotIp);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        cold_path();
        return Parsed::Done(XDP_DROP, Reason::DropMalformedIpv4);
    };
    // SAFETY: bounds checked by ptr_at; Ipv4Hdr has alignment 1.
    let hdr = unsafe { &*ip };
    let ihl_bytes = ((hdr.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(hdr.tot_len);
    let frame_len = ctx.data_end() - ctx.data();
    if hdr.vihl >> 4 != 4
        || ihl_bytes < IPV4_MIN_LEN
        || (tot_len as usize) < ihl_bytes
        || ETH_LEN + tot_len as usize > frame_len
    {
        cold_path();
        return Parsed::Done(XDP_DROP, Reason::DropMalformedIpv4);
    }
    let frags = u16::from_be_bytes(hdr.frags);
    Parsed::Ipv4(Ipv4 {
        l4_offset: ETH_LEN + ihl_bytes,
        tot_len,
        protocol: hdr.proto,
        ttl: hdr.ttl,
        tos: hdr.tos,
        src_addr: u32::from_ne_bytes(hdr.src_addr),
        dst_addr: u32::from_ne_bytes(hdr.dst_addr),
        fragment: frags & (IP_MF | IP_OFFSET_MASK) != 0,
        dont_fragment: frags & IP_DF != 0,
    })
}

/// Parses the TCP or UDP header inside the IP payload. `None` when it is truncated (by
/// the frame or by the IP total length), when a TCP data offset is < 5 or runs past the
/// payload, or when a UDP length is outside 8..=payload.
#[inline(always)]
pub fn l4(ctx: &XdpContext, ip: &Ipv4) -> Option<L4> {
    let payload = (ip.tot_len as usize).checked_sub(ip.l4_offset - ETH_LEN)?;
    // Bound the offset for the verifier: IHL is 4 bits, so the L4 header starts by byte 74.
    let off = ip.l4_offset;
    if off > ETH_LEN + 60 {
        return None;
    }
    l4_at(ctx, off, payload, ip.protocol)
}

/// The TCP or UDP header at `off` (which the caller has bounded for the verifier), with
/// `payload` bytes from there to the end of the IP packet.
#[inline(always)]
pub fn l4_at(ctx: &XdpContext, off: usize, payload: usize, protocol: u8) -> Option<L4> {
    match protocol {
        PROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(ctx, off)?;
            if payload < TcpHdr::LEN {
                return None;
            }
            // SAFETY: bounds checked by ptr_at; TcpHdr has alignment 1.
            let bytes = unsafe { &*(tcp as *const [u8; TcpHdr::LEN]) };
            let data_offset = (bytes[12] >> 4) as usize * 4;
            if data_offset < TcpHdr::LEN || data_offset > payload {
                return None;
            }
            Some(L4 {
                src_port: u16::from_ne_bytes([bytes[0], bytes[1]]),
                dst_port: u16::from_ne_bytes([bytes[2], bytes[3]]),
                tcp_flags: bytes[TCP_FLAGS],
                seq: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                ack: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            })
        }
        PROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(ctx, off)?;
            // SAFETY: bounds checked by ptr_at; UdpHdr has alignment 1.
            let hdr = unsafe { &*udp };
            let len = u16::from_be_bytes(hdr.len) as usize;
            if payload < UdpHdr::LEN || len < UdpHdr::LEN || len > payload {
                return None;
            }
            Some(L4 {
                src_port: u16::from_ne_bytes(hdr.src),
                dst_port: u16::from_ne_bytes(hdr.dst),
                tcp_flags: 0,
                seq: 0,
                ack: 0,
            })
        }
        _ => None,
    }
}

/// The packet as the decision (`lb_common::decide`) sees it.
#[inline(always)]
pub const fn packet(ip: &Ipv4, l4: &L4) -> Packet {
    Packet {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        protocol: ip.protocol,
        tcp_flags: l4.tcp_flags,
        ttl: ip.ttl,
    }
}

#[inline(always)]
pub const fn is_tcp_or_udp(protocol: u8) -> bool {
    protocol == PROTO_TCP || protocol == PROTO_UDP
}
