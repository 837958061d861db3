//! The `lb_too_big6` stage: `too_big` for IPv6. A translated TCP/UDP packet too big for
//! its egress (or, with `forwarding: dsr`, a client's packet too big once encapsulated)
//! becomes the ICMPv6 Packet Too Big (type 2, RFC 4443) its sender needs, sent back out of
//! the interface it came in on (XDP_TX). IPv6 routers never fragment: without it, the
//! sender's large segments would vanish.
//!
//! As for IPv4, the quote is the packet as its sender sent it (the translation undone
//! from the hand-off in `TOO_BIG6`), and the answer comes from the quoted packet's
//! destination: the VIP for a client's packet, the client's address for a backend's
//! reply. The quote is the IPv6 header, its extension headers and the first 8 bytes of
//! TCP/UDP (the ports and the TCP sequence number: a receiver needs all of them to find
//! the connection; RFC 4443 asks for "as much as possible", a SHOULD the receivers here do
//! not need). The packet stays where it is and becomes the quote: the frame grows in front
//! by the answer's IPv6 and ICMPv6 headers and is cut behind the quote. A packet the stage
//! cannot answer goes to the kernel (`pass_frag_needed`), or, one for a tunnel, is dropped
//! (`drop_too_big_for_tunnel`), as the kernel would route it to the VIP.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    MAX_EXTENSION_BYTES, PROTO_TCP, PROTO_UDP, Reason, TOO_BIG_DESTINATION, TOO_BIG_SOURCE, csum,
    family::octets6,
};

use crate::{
    maps::TOO_BIG6,
    parse::{ETH_LEN, ptr_at},
    parse6::{self, IPV6_LEN, PROTO_ICMPV6},
    stats,
    too_big::{sum, word},
};

const ICMP_LEN: usize = 8;
/// What the answer puts in front of the packet: its IPv6 and ICMPv6 headers.
const GROWTH: usize = IPV6_LEN + ICMP_LEN;
/// The quote without extension headers: the IPv6 header and 8 bytes of TCP/UDP.
const QUOTE_BASE: usize = IPV6_LEN + 8;
/// The longest quote: with the most extension headers the policy skips.
const QUOTE_MAX: usize = QUOTE_BASE + MAX_EXTENSION_BYTES;
const PACKET_TOO_BIG: u8 = 2;
/// What a host sends its own packets with (Linux's default).
const HOP_LIMIT: u8 = 64;

/// The answer's headers, as they are laid out in the frame, the quote behind them.
#[repr(C)]
struct Front {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ether_type: [u8; 2],
    ip: [u8; IPV6_LEN],
    icmp: [u8; ICMP_LEN],
    /// The quoted IPv6 header.
    quote: [u8; IPV6_LEN],
}
const QUOTE_AT: usize = ETH_LEN + GROWTH;
const _: () = assert!(size_of::<Front>() == QUOTE_AT + IPV6_LEN);

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
    let (orig_port, mtu, side, protocol) = (
        handoff.port,
        handoff.mtu,
        handoff.side,
        handoff.key.protocol,
    );
    let encapsulated = handoff.encapsulated != 0;
    // What becomes of a packet this stage cannot answer: a translated one goes to the
    // kernel, which answers it (quoting it as translated); a client's packet for a tunnel
    // is dropped, as passed the kernel would route it to the VIP.
    let unanswered = if encapsulated {
        (XDP_DROP, Reason::DropTooBigForTunnel)
    } else {
        (XDP_PASS, Reason::PassFragNeeded)
    };
    // The extension headers' length, as loaded, bounded by one comparison: every offset
    // below is a constant plus it (the verifier keeps the bound of the value compared
    // only, not of a value the compiler derives it from).
    let ext = usize::from(handoff.extension_len);
    if ext > MAX_EXTENSION_BYTES || !(protocol == PROTO_TCP || protocol == PROTO_UDP) {
        return (XDP_DROP, Reason::DropStageFailed);
    }
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, ETH_LEN + IPV6_LEN + ext) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let (sport, dport) = (
        u16::from_ne_bytes([ports[0], ports[1]]),
        u16::from_ne_bytes([ports[2], ports[3]]),
    );
    // The hand-off must be this packet's (a stage run on its own finds another's).
    let key = &handoff.key;
    if key.src_addr != ip.src_addr
        || key.dst_addr != ip.dst_addr
        || key.src_port != sport
        || key.dst_port != dport
        || !(side == TOO_BIG_DESTINATION || side == TOO_BIG_SOURCE)
    {
        return (XDP_DROP, Reason::DropStageFailed);
    }
    // A packet too big for an egress is longer than the longest quote (the smallest
    // IPv6 MTU is 1280): the checksum below reads that much. Checked as a pointer, so the
    // verifier knows it (a length compared as a number proves it nothing).
    if ptr_at::<[u8; ETH_LEN + QUOTE_MAX]>(ctx, 0).is_none() {
        return unanswered;
    }
    let quote_len = QUOTE_BASE + ext;

    // SAFETY: ctx is the program's context; the kernel checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWTH as i32)) } != 0 {
        return unanswered;
    }
    // From here on the frame is being rewritten: it cannot go on as it was.
    let failed = (XDP_DROP, Reason::DropStageFailed);
    let Some(front) = ptr_at::<Front>(ctx, 0) else {
        return failed;
    };
    // SAFETY: bounds checked by ptr_at; Front has alignment 1.
    let f = unsafe { &mut *front };
    // The MACs swapped, first: the packet's Ethernet header now lies 48 bytes in, under
    // the end of `ip` (its destination MAC) and `icmp` (its source MAC), about to be
    // written over (copied from frame to frame, not through the stack).
    const _: () = assert!(ETH_LEN + IPV6_LEN - 6 == GROWTH);
    f.dst_mac.copy_from_slice(&f.icmp[0..6]);
    f.src_mac.copy_from_slice(&f.ip[IPV6_LEN - 6..]);

    // The translation undone in the quote: the address in its IPv6 header, the port and
    // UDP's checksum in its TCP/UDP header (TCP's checksum is not quoted).
    let (addr_at, port_at, old_addr, old_port) = if side == TOO_BIG_DESTINATION {
        (24, 2, ip.dst_addr, dport)
    } else {
        (8, 0, ip.src_addr, sport)
    };
    let orig_addr = handoff.addr;
    f.quote[addr_at..addr_at + 16].copy_from_slice(&octets6(orig_addr));
    let Some(quoted_l4) = ptr_at::<[u8; 8]>(ctx, QUOTE_AT + IPV6_LEN + ext) else {
        return failed;
    };
    // SAFETY: bounds checked by ptr_at.
    let q4 = unsafe { &mut *quoted_l4 };
    q4[port_at..port_at + 2].copy_from_slice(&orig_port.to_ne_bytes());
    // An encapsulated packet was never translated: its UDP checksum stands as it came.
    if protocol == PROTO_UDP && !encapsulated {
        let check = csum::udp_nonzero(csum::replace_addr6_port(
            word(q4, 6),
            old_addr,
            orig_addr,
            old_port,
            orig_port,
        ));
        q4[6..8].copy_from_slice(&check.to_ne_bytes());
    }

    // From the address the packet was for, to its sender.
    let (from, to) = if side == TOO_BIG_DESTINATION {
        (orig_addr, ip.src_addr)
    } else {
        (ip.dst_addr, orig_addr)
    };
    let length = (ICMP_LEN + quote_len) as u16;
    f.ether_type = [0x86, 0xdd];
    f.ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    f.ip[4..6].copy_from_slice(&length.to_be_bytes());
    f.ip[6] = PROTO_ICMPV6;
    f.ip[7] = HOP_LIMIT;
    f.ip[8..24].copy_from_slice(&octets6(from));
    f.ip[24..40].copy_from_slice(&octets6(to));
    f.icmp = [PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0, 0];
    f.icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());

    // The checksum: the pseudo-header (both addresses, the length, the next header), the
    // ICMPv6 header and the quote, its variable length summed by the kernel.
    let Some(quote) = ptr_at::<[u8; QUOTE_MAX]>(ctx, QUOTE_AT) else {
        return failed;
    };
    // SAFETY: the quote's bytes are inside the bounds-checked frame (quote_len ≤
    // QUOTE_MAX, a multiple of 8: extension headers come in 8-byte units).
    let quote_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            quote.cast::<u32>(),
            quote_len as u32,
            0,
        )
    };
    if quote_sum < 0 {
        return failed;
    }
    let mut total = u64::from(u16::from_ne_bytes(length.to_be_bytes()))
        + u64::from(u16::from_ne_bytes([0, PROTO_ICMPV6]))
        + u64::from(sum(&f.icmp))
        + quote_sum as u64;
    let mut i = 0;
    while i < 4 {
        for w in [from[i], to[i]] {
            total += u64::from((w & 0xffff) + (w >> 16));
        }
        i += 1;
    }
    // Folded to 32 bits twice: the first fold's carry fits the second.
    let total = (total & 0xffff_ffff) + (total >> 32);
    let total = (total & 0xffff_ffff) + (total >> 32);
    let check = !csum::fold(total as u32);
    f.icmp[2..4].copy_from_slice(&check.to_ne_bytes());

    let answer_len = QUOTE_AT + quote_len;
    // The frame's length through memory: computed from the two pointers, which the
    // verifier allows, and not folded by the compiler into arithmetic on the end
    // pointer, which it does not.
    let frame_len = ctx.data_end() - ctx.data();
    // SAFETY: a local read back.
    let frame_len = unsafe { core::ptr::read_volatile(&raw const frame_len) };
    let shrink = answer_len as i32 - frame_len as i32;
    // SAFETY: ctx is the program's context; shrinking the tail is always in bounds.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        return failed;
    }
    if side == TOO_BIG_DESTINATION {
        (XDP_TX, Reason::IcmpFragNeededToClient)
    } else {
        (XDP_TX, Reason::IcmpFragNeededToBackend)
    }
}
