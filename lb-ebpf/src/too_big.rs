//! The `lb_too_big` stage: a translated TCP/UDP packet with DF that is too big for its
//! egress is turned into the ICMP "fragmentation needed" (type 3, code 4, RFC 1191) its
//! sender needs, and sent back out of the interface it came in on (XDP_TX).
//!
//! The kernel would answer the translated packet: quoting the backend's address to the
//! client, or sending the answer to the VIP for a reply, and neither sender could match it
//! to its connection, so its TCP would retransmit the same segment until it gave up (a
//! path-MTU black hole). Here the quote is the packet as its sender sent it (the
//! translation undone from the hand-off in `TOO_BIG`), and the answer comes from the
//! quoted packet's destination:
//!
//! - client → VIP, too big for the backend side: from the VIP to the client;
//! - backend → client, too big for the client side: from the client's address to the
//!   backend. The LB's own address on that side is not known here; the client's is one a
//!   Linux backend takes (it accepts an ICMP error from any source when the quote matches
//!   a socket), and the backend routes to it through the LB anyway, so a strict reverse
//!   path filter lets it in too.
//!
//! The quote is the IPv4 header and the first 8 bytes of TCP/UDP (RFC 792): the ports and
//! the TCP sequence number, all a receiver checks. A packet with IP options is passed to
//! the kernel as before (`pass_frag_needed`): its quote would have a length known only at
//! run time, for packets that are rare on TCP and UDP.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_xdp_adjust_tail,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    FlowKey, PROTO_ICMP, PROTO_UDP, Reason, TOO_BIG_DESTINATION, TOO_BIG_SOURCE, csum,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::TOO_BIG,
    parse,
    parse::{ETH_LEN, Parsed, ptr_at},
    stats,
};

/// The quoted IPv4 header (no options) and 8 bytes of its TCP/UDP header.
const QUOTE_LEN: usize = Ipv4Hdr::LEN + 8;
const ICMP_LEN: usize = 8;
const DEST_UNREACHABLE: u8 = 3;
const FRAG_NEEDED: u8 = 4;
/// What a host sends its own packets with (Linux's default).
const TTL: u8 = 64;

/// The answer, as it is laid out in the frame.
#[repr(C)]
struct Answer {
    eth: EthHdr,
    ip: [u8; Ipv4Hdr::LEN],
    icmp: [u8; ICMP_LEN],
    quote: [u8; QUOTE_LEN],
}
const ANSWER_LEN: usize = size_of::<Answer>();
const _: () = assert!(ANSWER_LEN == ETH_LEN + Ipv4Hdr::LEN + ICMP_LEN + QUOTE_LEN);

/// The translated packet's Ethernet header, IPv4 header and first 8 bytes of L4: what the
/// answer is made of.
#[repr(C)]
struct Head {
    eth: EthHdr,
    quote: [u8; QUOTE_LEN],
}

#[xdp]
pub fn lb_too_big(ctx: XdpContext) -> u32 {
    let verdict = run(&ctx);
    stats::finish(&ctx, verdict)
}

/// Sum of the 16-bit words of `bytes` as they sit in memory (N even, known at compile time,
/// so the loop unrolls and the verifier sees no loop).
#[inline(always)]
pub fn sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < N {
        s += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    s
}

/// The 16-bit word at `at`, as it sits in memory.
#[inline(always)]
pub fn word(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn addr(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn run(ctx: &XdpContext) -> (u32, Reason) {
    let ip = match parse::ipv4(ctx) {
        Parsed::Ipv4(ip) => ip,
        Parsed::Done(action, reason) => return (action, reason),
    };
    let Some(handoff) = TOO_BIG.get(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    let (key, orig_addr, orig_port, mtu, side, encapsulated) = (
        handoff.key,
        handoff.addr,
        handoff.port,
        handoff.mtu,
        handoff.side,
        handoff.encapsulated != 0,
    );
    // What becomes of a packet this stage cannot answer: a translated one goes to the
    // kernel, which fragments it; a client's packet for a tunnel cannot.
    let unanswered = if encapsulated {
        (XDP_DROP, Reason::DropTooBigForTunnel)
    } else {
        (XDP_PASS, Reason::PassFragNeeded)
    };
    let frame_len = ctx.data_end() - ctx.data();
    if ip.l4_offset != ETH_LEN + Ipv4Hdr::LEN || frame_len <= ANSWER_LEN {
        return unanswered;
    }
    let Some(head) = ptr_at::<Head>(ctx, 0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: bounds checked by ptr_at; Head has alignment 1.
    let head = unsafe { &*head };
    let (dst_mac, src_mac) = (head.eth.src_addr, head.eth.dst_addr);
    let mut q = head.quote;
    // The hand-off must be this packet's: a stage run on its own (a test run) finds
    // whatever the last packet on this CPU left.
    let packet = FlowKey::new(
        ip.src_addr,
        ip.dst_addr,
        word(&q, 20),
        word(&q, 22),
        ip.protocol,
    );
    if packet != key || !(side == TOO_BIG_DESTINATION || side == TOO_BIG_SOURCE) {
        return (XDP_DROP, Reason::DropStageFailed);
    }

    // Undo the translation in the quote, checksums with it.
    let (addr_at, port_at) = if side == TOO_BIG_DESTINATION {
        (16, 22)
    } else {
        (12, 20)
    };
    let (old_addr, old_port) = (addr(&q, addr_at), word(&q, port_at));
    q[addr_at..addr_at + 4].copy_from_slice(&orig_addr.to_ne_bytes());
    q[port_at..port_at + 2].copy_from_slice(&orig_port.to_ne_bytes());
    let ip_check = csum::replace_u32(word(&q, 10), old_addr, orig_addr);
    q[10..12].copy_from_slice(&ip_check.to_ne_bytes());
    // The TCP checksum lies past the 8 quoted bytes; UDP's is in them (0: none, kept).
    if ip.protocol == PROTO_UDP && word(&q, 26) != 0 {
        let check = csum::udp_nonzero(csum::replace_addr_port(
            word(&q, 26),
            old_addr,
            orig_addr,
            old_port,
            orig_port,
        ));
        q[26..28].copy_from_slice(&check.to_ne_bytes());
    }

    // From the address the packet was for, to its sender.
    let (from, to) = (addr(&q, 16), addr(&q, 12));
    let mut hdr = [0u8; Ipv4Hdr::LEN];
    hdr[0] = 0x45;
    hdr[2..4].copy_from_slice(&((ANSWER_LEN - ETH_LEN) as u16).to_be_bytes());
    // DF with id 0 (RFC 6864): a 56-byte packet is never fragmented.
    hdr[6] = 0x40;
    hdr[8] = TTL;
    hdr[9] = PROTO_ICMP;
    hdr[12..16].copy_from_slice(&from.to_ne_bytes());
    hdr[16..20].copy_from_slice(&to.to_ne_bytes());
    let check = !csum::fold(sum(&hdr));
    hdr[10..12].copy_from_slice(&check.to_ne_bytes());

    let mut icmp = [0u8; ICMP_LEN];
    icmp[0] = DEST_UNREACHABLE;
    icmp[1] = FRAG_NEEDED;
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let check = !csum::fold(sum(&icmp) + sum(&q));
    icmp[2..4].copy_from_slice(&check.to_ne_bytes());

    let shrink = ANSWER_LEN as i32 - frame_len as i32;
    // SAFETY: ctx is the program's context; shrinking the tail is always in bounds.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        // The packet is untouched so far: as if the stage had not run.
        return unanswered;
    }
    let Some(answer) = ptr_at::<Answer>(ctx, 0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: bounds checked by ptr_at; Answer has alignment 1.
    let answer = unsafe { &mut *answer };
    answer.eth.dst_addr = dst_mac;
    answer.eth.src_addr = src_mac;
    answer.ip = hdr;
    answer.icmp = icmp;
    answer.quote = q;
    if side == TOO_BIG_DESTINATION {
        (XDP_TX, Reason::IcmpFragNeededToClient)
    } else {
        (XDP_TX, Reason::IcmpFragNeededToBackend)
    }
}
