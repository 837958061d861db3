//! The `lb_too_big6` stage: `too_big` for IPv6. A translated TCP/UDP packet too big for
//! its egress (or, with `forwarding: dsr`, a client's packet too big once encapsulated)
//! becomes the ICMPv6 Packet Too Big (type 2, RFC 4443) its sender needs, sent back out of
//! the interface it came in on (XDP_TX). IPv6 routers never fragment: without it, the
//! sender's large segments would vanish.
//!
//! As for IPv4, the quote is the packet as its sender sent it (the translation undone
//! from the hand-off in `TOO_BIG6`), and the answer comes from the quoted packet's
//! destination: the VIP for a client's packet, the client's address for a backend's
//! reply. The quote is the IPv6 header and the first 8 bytes of TCP/UDP (the ports and the
//! TCP sequence number, what a receiver matches; RFC 4443 asks for "as much as possible",
//! a SHOULD the receivers here do not need). A packet with extension headers is passed to
//! the kernel (`pass_frag_needed`): its quote would be of a length known at run time only;
//! one for a tunnel is dropped (`drop_too_big_for_tunnel`), as the kernel would route it
//! to the VIP.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_xdp_adjust_tail,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    PROTO_TCP, PROTO_UDP, Reason, TOO_BIG_DESTINATION, TOO_BIG_SOURCE, csum, family::octets6,
};
use network_types::eth::EthHdr;

use crate::{
    maps::TOO_BIG6,
    parse::{ETH_LEN, ptr_at},
    parse6::{self, IPV6_LEN, PROTO_ICMPV6},
    stats,
    too_big::{sum, word},
};

/// The quoted IPv6 header and 8 bytes of its TCP/UDP header.
const QUOTE_LEN: usize = IPV6_LEN + 8;
const ICMP_LEN: usize = 8;
const PACKET_TOO_BIG: u8 = 2;
/// What a host sends its own packets with (Linux's default).
const HOP_LIMIT: u8 = 64;

/// The answer, as it is laid out in the frame.
#[repr(C)]
struct Answer {
    eth: EthHdr,
    ip: [u8; IPV6_LEN],
    icmp: [u8; ICMP_LEN],
    quote: [u8; QUOTE_LEN],
}
const ANSWER_LEN: usize = size_of::<Answer>();
const _: () = assert!(ANSWER_LEN == ETH_LEN + IPV6_LEN + ICMP_LEN + QUOTE_LEN);

#[xdp]
pub fn lb_too_big6(ctx: XdpContext) -> u32 {
    let verdict = run(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn run(ctx: &XdpContext) -> (u32, Reason) {
    let ip = match parse6::header(ctx) {
        Ok(ip) => ip,
        Err(reason) => return (XDP_DROP, reason),
    };
    let Some(handoff) = TOO_BIG6.get(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // Read from the hand-off where used: copies of its 40-byte key and 16-byte address
    // would each take their room on the stack.
    let (orig_port, mtu, side) = (handoff.port, handoff.mtu, handoff.side);
    let encapsulated = handoff.encapsulated != 0;
    // What becomes of a packet this stage cannot answer: a translated one goes to the
    // kernel, which answers it (quoting it as translated); a client's packet for a tunnel
    // is dropped, as passed the kernel would route it to the VIP.
    let unanswered = if encapsulated {
        (XDP_DROP, Reason::DropTooBigForTunnel)
    } else {
        (XDP_PASS, Reason::PassFragNeeded)
    };
    // Without extension headers only: the fixed header's next header is TCP or UDP.
    if !(ip.protocol == PROTO_TCP || ip.protocol == PROTO_UDP) {
        return unanswered;
    }
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len <= ANSWER_LEN {
        return unanswered;
    }
    let Some(frame) = ptr_at::<Answer>(ctx, 0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: bounds checked by ptr_at (the frame is longer than the answer); Answer has
    // alignment 1. Until the tail is cut, its `ip`, `icmp` and the start of `quote` hold
    // the translated packet's IPv6 header and first bytes of L4.
    let a = unsafe { &mut *frame };
    let (sport, dport) = (
        u16::from_ne_bytes([a.icmp[0], a.icmp[1]]),
        u16::from_ne_bytes([a.icmp[2], a.icmp[3]]),
    );
    // The hand-off must be this packet's (a stage run on its own finds another's).
    let key = &handoff.key;
    if key.src_addr != ip.src_addr
        || key.dst_addr != ip.dst_addr
        || key.src_port != sport
        || key.dst_port != dport
        || key.protocol != ip.protocol
        || !(side == TOO_BIG_DESTINATION || side == TOO_BIG_SOURCE)
    {
        return (XDP_DROP, Reason::DropStageFailed);
    }

    // The quote: the header and 8 bytes of L4, moved behind where the answer's headers
    // go (in the frame: no copy of 48 bytes on the stack), then the translation undone
    // in it, with UDP's checksum (TCP's is not quoted).
    let from = (&raw const a.ip).cast::<u64>();
    let to = (&raw mut a.quote).cast::<u64>();
    for i in 0..QUOTE_LEN / 8 {
        // SAFETY: both inside the bounds-checked frame, not overlapping (14..62 and
        // 62..110); unaligned packet access is allowed where XDP runs, and volatile keeps
        // each copy one 8-byte load and store instead of 48 bytes held on the stack.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
    let q = &mut a.quote;
    let (addr_at, port_at, old_addr, old_port) = if side == TOO_BIG_DESTINATION {
        (24, 42, ip.dst_addr, dport)
    } else {
        (8, 40, ip.src_addr, sport)
    };
    let orig_addr = handoff.addr;
    q[addr_at..addr_at + 16].copy_from_slice(&octets6(orig_addr));
    q[port_at..port_at + 2].copy_from_slice(&orig_port.to_ne_bytes());
    // An encapsulated packet was never translated: its UDP checksum stands as it came.
    if ip.protocol == PROTO_UDP && !encapsulated {
        let check = csum::udp_nonzero(csum::replace_addr6_port(
            word(q, 46),
            old_addr,
            orig_addr,
            old_port,
            orig_port,
        ));
        q[46..48].copy_from_slice(&check.to_ne_bytes());
    }

    // From the address the packet was for, to its sender.
    let (from, to) = if side == TOO_BIG_DESTINATION {
        (orig_addr, ip.src_addr)
    } else {
        (ip.dst_addr, orig_addr)
    };
    let length = (ICMP_LEN + QUOTE_LEN) as u16;
    a.ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    a.ip[4..6].copy_from_slice(&length.to_be_bytes());
    a.ip[6] = PROTO_ICMPV6;
    a.ip[7] = HOP_LIMIT;
    a.ip[8..24].copy_from_slice(&octets6(from));
    a.ip[24..40].copy_from_slice(&octets6(to));
    a.icmp = [PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0, 0];
    a.icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    // The pseudo-header: both addresses, the length, the next header.
    let mut pseudo = u16::from_ne_bytes(length.to_be_bytes()) as u32
        + u16::from_ne_bytes([0, PROTO_ICMPV6]) as u32;
    let mut i = 0;
    while i < 4 {
        for w in [from[i], to[i]] {
            pseudo += (w & 0xffff) + (w >> 16);
        }
        i += 1;
    }
    let check = !csum::fold(csum::fold(pseudo) as u32 + sum(&a.icmp) + sum(&a.quote));
    a.icmp[2..4].copy_from_slice(&check.to_ne_bytes());
    a.eth = EthHdr {
        dst_addr: a.eth.src_addr,
        src_addr: a.eth.dst_addr,
        ether_type: a.eth.ether_type,
    };

    let shrink = ANSWER_LEN as i32 - frame_len as i32;
    // SAFETY: ctx is the program's context; shrinking the tail is always in bounds.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        // The frame is rewritten already: it cannot go on as it was.
        return (XDP_DROP, Reason::DropStageFailed);
    }
    if side == TOO_BIG_DESTINATION {
        (XDP_TX, Reason::IcmpFragNeededToClient)
    } else {
        (XDP_TX, Reason::IcmpFragNeededToBackend)
    }
}
