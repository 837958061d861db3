//! ICMP errors about a translated flow. The kernel cannot match them (it never saw the
//! NAT), so the program translates them like the flow they quote:
//!
//! - to a VIP, quoting a reply the LB sent (VIP:port → client): e.g. "fragmentation
//!   needed" from a router on the client's path. Sent on to the flow's backend with the
//!   quoted source rewritten to the backend, so its TCP stack lowers the path MTU. With
//!   `forwarding: dsr` the backend sent that reply from the VIP itself: the error goes to
//!   it unchanged, encapsulated like the flow's packets.
//! - to a client, quoting a packet the LB sent to a backend (client → backend:port): e.g.
//!   "port unreachable" from the backend. The quoted destination is rewritten to the VIP
//!   (and the outer source too when the backend itself sent it), so the client's stack
//!   matches it to its connection.
//!
//! Only destination unreachable, time exceeded and parameter problem are errors. Anything
//! else, and errors about no known flow, go to the kernel, unless addressed to a VIP: an
//! echo request is answered here (`vip_ping: answer`) and the rest is dropped, because a
//! VIP routed to the LB but not one of its addresses would send it back where it came
//! from until its TTL ran out.
//!
//! A stage of its own (`lb_icmp`, entered from `lb_xdp` for every ICMP packet): rare
//! packets, and the quote's parsing would otherwise be verified along every path of the
//! entry program.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Encapsulation, FlowKey, LISTENER_F_ANSWER_PING, ListenerKey, NO_BACKEND, PROTO_TCP, PROTO_UDP,
    Reason, V4, csum,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    clock, encap, flow, fwd,
    maps::{BACKENDS, LISTENERS, backend_cpu},
    parse,
    parse::{ETH_LEN, Ipv4, Parsed, ptr_at},
    stats,
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;

/// An ICMP error with the quoted IPv4 header (no options) and the first 8 bytes of its
/// TCP or UDP header: ports, then (UDP) length and checksum or (TCP) sequence number.
#[repr(C)]
struct IcmpError {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
    inner: Ipv4Hdr,
    src_port: [u8; 2],
    dst_port: [u8; 2],
    l4_word2: [u8; 2],
    l4_word3: [u8; 2],
}

/// Offset of the quoted TCP checksum from the start of `IcmpError`, when quoted.
const INNER_TCP_CHECK: usize = 8 + 20 + 16;

#[xdp]
pub fn lb_icmp(ctx: XdpContext) -> u32 {
    let verdict = match parse::ipv4(&ctx) {
        Parsed::Ipv4(ip) => match handle(&ctx, &ip) {
            Some(verdict) => verdict,
            None => not_about_a_flow(&ctx, &ip),
        },
        Parsed::Done(action, reason) => (action, reason),
    };
    stats::finish(&ctx, verdict)
}

/// An ICMP packet that is not an error about a flow of ours: to a VIP, an echo request is
/// answered when the VIP's marker says so and everything else is dropped; to anything
/// else, the kernel's.
#[inline(always)]
fn not_about_a_flow(ctx: &XdpContext, ip: &Ipv4) -> (u32, Reason) {
    let Some(marker) = LISTENERS.get_ptr(ListenerKey::vip_marker(ip.dst_addr)) else {
        return (XDP_PASS, Reason::PassOtherProtocol);
    };
    // SAFETY: a map value pointer stays valid for the program run.
    let answers = unsafe { (*marker).flags } & LISTENER_F_ANSWER_PING != 0;
    if answers && answer_echo(ctx, ip) {
        return (XDP_TX, Reason::IcmpEchoReply);
    }
    (XDP_DROP, Reason::DropVipOtherProtocol)
}

/// An echo request without IP options, as far as the reply rewrites it.
#[repr(C)]
struct EchoFrame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    /// Type, code, checksum.
    icmp: [u8; 4],
}

/// Turns an echo request into its reply in place, back out of the interface it came in
/// on: MACs and addresses swapped, TTL 64, type 0; the rest (identifier, sequence, data)
/// stays. Only the changed words go into the checksums. False, packet untouched, when it
/// is not an unfragmented echo request without IP options (rare enough to drop).
#[inline(always)]
fn answer_echo(ctx: &XdpContext, ip: &Ipv4) -> bool {
    // One bounds check for everything rewritten: with one pointer per header, LLVM has
    // widened the frame start with shifts, which the verifier refuses on a pointer.
    if ip.fragment || ip.l4_offset != ETH_LEN + Ipv4Hdr::LEN {
        return false;
    }
    let Some(frame) = ptr_at::<EchoFrame>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; EchoFrame has alignment 1.
    let frame = unsafe { &mut *frame };
    if frame.icmp[0] != ECHO_REQUEST || frame.icmp[1] != 0 {
        return false;
    }
    core::mem::swap(&mut frame.eth.src_addr, &mut frame.eth.dst_addr);
    // Swapping the addresses leaves the IP checksum as it was; the TTL does not.
    let hdr = &mut frame.ip;
    core::mem::swap(&mut hdr.src_addr, &mut hdr.dst_addr);
    let old_ttl_word = u16::from_ne_bytes([hdr.ttl, hdr.proto]);
    hdr.ttl = 64;
    let new_ttl_word = u16::from_ne_bytes([hdr.ttl, hdr.proto]);
    hdr.check =
        csum::replace_u16(u16::from_ne_bytes(hdr.check), old_ttl_word, new_ttl_word).to_ne_bytes();
    let icmp = &mut frame.icmp;
    let old_type_word = u16::from_ne_bytes([icmp[0], icmp[1]]);
    icmp[0] = ECHO_REPLY;
    let new_type_word = u16::from_ne_bytes([icmp[0], icmp[1]]);
    let check = csum::replace_u16(
        u16::from_ne_bytes([icmp[2], icmp[3]]),
        old_type_word,
        new_type_word,
    );
    icmp[2..4].copy_from_slice(&check.to_ne_bytes());
    true
}

/// The verdict for an ICMP error about a flow of ours; `None` for anything else.
#[inline(always)]
fn handle(ctx: &XdpContext, ip: &Ipv4) -> Option<(u32, Reason)> {
    let off = ip.l4_offset;
    if ip.fragment || off > ETH_LEN + 60 {
        return None;
    }
    // The error and its quote must lie inside the IP packet, not merely inside the frame
    // (Ethernet padding follows short packets).
    let ip_payload = (ip.tot_len as usize).saturating_sub(off - ETH_LEN);
    if ip_payload < size_of::<IcmpError>() {
        return None;
    }
    let e = ptr_at::<IcmpError>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; every field has alignment 1.
    let e = unsafe { &mut *e };
    if !matches!(e.kind, DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM)
        || e.inner.vihl != 0x45
        || !(e.inner.proto == PROTO_TCP || e.inner.proto == PROTO_UDP)
    {
        return None;
    }
    let protocol = e.inner.proto;
    let inner_src = u32::from_ne_bytes(e.inner.src_addr);
    let inner_dst = u32::from_ne_bytes(e.inner.dst_addr);
    let src_port = u16::from_ne_bytes(e.src_port);
    let dst_port = u16::from_ne_bytes(e.dst_port);
    // Both kinds of error go to the sender of the quoted packet; anything else is not
    // about a flow of ours as seen from here.
    if ip.dst_addr != inner_src {
        return None;
    }
    // The quoted TCP checksum is rewritten only when the IP packet quotes it.
    let tcp_check_quoted = ip_payload >= INNER_TCP_CHECK + 2;

    // The quoted packet seen from the other end: for a reply we sent (VIP → client), the
    // client side of its flow, as FLOWS keys it.
    let key = FlowKey::new(inner_dst, inner_src, dst_port, src_port, protocol);

    // A reply we sent (VIP → client), reported back to the VIP, quotes a flow of the flow
    // table.
    if let Some(flow) = flow::lookup::<V4>(&key) {
        // SAFETY: a map value pointer stays valid for the program run.
        let flow = unsafe { &*flow };
        if let Some(b) = BACKENDS.get(flow.backend)
            && b.generation == flow.generation
            && b.is_usable()
        {
            if ip.ttl <= 1 {
                return Some((XDP_PASS, Reason::PassTtlExpired));
            }
            // In DSR the backend sent the reply from the VIP itself: the error goes to it
            // as it is, in the flow's tunnel, and its stack matches the quote.
            let listener = ListenerKey::new(inner_src, src_port, protocol);
            if let Some(l) = LISTENERS.get_ptr(listener)
                // SAFETY: a map value pointer stays valid for the program run.
                && unsafe { (*l).encapsulation } != Encapsulation::None as u8
            {
                let delivery = encap::Delivery {
                    // SAFETY: as above.
                    listener: unsafe { &*l },
                    backend_id: flow.backend,
                    backend: b,
                    record: backend_cpu(flow.backend),
                    now: clock::now(),
                    src_port: dst_port,
                    dst_port: src_port,
                    side: 0,
                    sent: Reason::IcmpToBackend,
                };
                return Some(encap::send(ctx, ip, &delivery));
            }
            let (addr, port) = (b.addr, b.port);
            rewrite_quoted(ctx, e, off, tcp_check_quoted, Quoted::Source, addr, port);
            rewrite_outer(ctx, Outer::Destination, ip.dst_addr, addr);
            let route = fwd::Route {
                src_addr: ip.src_addr,
                dst_addr: addr,
                src_port: 0,
                dst_port: 0,
                backend: NO_BACKEND,
                record: None,
                now: 0,
                // An error about an error is never sent (RFC 1122 3.2.2).
                side: 0,
                original_addr: 0,
                original_port: 0,
                overhead: 0,
                want_source: false,
            };
            return Some(fwd::transmit(ctx, ip, &route, Reason::IcmpToBackend));
        }
    }

    // A packet we sent to a backend (client → backend), reported towards the client: the
    // backend endpoint it went to and the client find its flow, as for a reply.
    let to = flow::reply_flow::<V4>(inner_dst, dst_port, inner_src, src_port, protocol)?;
    if ip.ttl <= 1 {
        return Some((XDP_PASS, Reason::PassTtlExpired));
    }
    let (vip, vport) = (to.vip, to.vport);
    rewrite_quoted(
        ctx,
        e,
        off,
        tcp_check_quoted,
        Quoted::Destination,
        vip,
        vport,
    );
    let mut src = ip.src_addr;
    if src == inner_dst {
        // Sent by the backend itself: the client only knows the VIP.
        rewrite_outer(ctx, Outer::Source, src, vip);
        src = vip;
    }
    let route = fwd::Route {
        src_addr: src,
        dst_addr: ip.dst_addr,
        src_port: 0,
        dst_port: 0,
        backend: NO_BACKEND,
        record: None,
        now: 0,
        side: 0,
        original_addr: 0,
        original_port: 0,
        overhead: 0,
        want_source: false,
    };
    Some(fwd::transmit(ctx, ip, &route, Reason::IcmpToClient))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoted {
    Source,
    Destination,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outer {
    Source,
    Destination,
}

/// Rewrites one address and port of the quoted packet, with the quoted IP checksum, the
/// quoted L4 checksum when it is quoted, and the ICMP checksum (which covers them all).
#[inline(always)]
fn rewrite_quoted(
    ctx: &XdpContext,
    e: &mut IcmpError,
    off: usize,
    tcp_check_quoted: bool,
    side: Quoted,
    new_addr: u32,
    new_port: u16,
) {
    let (addr_field, port_field) = match side {
        Quoted::Source => (&mut e.inner.src_addr, &mut e.src_port),
        Quoted::Destination => (&mut e.inner.dst_addr, &mut e.dst_port),
    };
    let old_addr = u32::from_ne_bytes(*addr_field);
    let old_port = u16::from_ne_bytes(*port_field);
    *addr_field = new_addr.to_ne_bytes();
    *port_field = new_port.to_ne_bytes();
    let mut icmp = u16::from_ne_bytes(e.check);
    icmp = csum::replace_u32(icmp, old_addr, new_addr);
    icmp = csum::replace_u16(icmp, old_port, new_port);

    let old_ip_check = u16::from_ne_bytes(e.inner.check);
    let new_ip_check = csum::replace_u32(old_ip_check, old_addr, new_addr);
    e.inner.check = new_ip_check.to_ne_bytes();
    icmp = csum::replace_u16(icmp, old_ip_check, new_ip_check);

    let l4_update =
        |check: u16| csum::replace_addr_port(check, old_addr, new_addr, old_port, new_port);
    if e.inner.proto == PROTO_UDP {
        let old = u16::from_ne_bytes(e.l4_word3);
        if old != 0 {
            let new = csum::udp_nonzero(l4_update(old));
            e.l4_word3 = new.to_ne_bytes();
            icmp = csum::replace_u16(icmp, old, new);
        }
    } else if tcp_check_quoted && let Some(check) = ptr_at::<[u8; 2]>(ctx, off + INNER_TCP_CHECK) {
        // SAFETY: bounds checked by ptr_at.
        let check = unsafe { &mut *check };
        let old = u16::from_ne_bytes(*check);
        let new = l4_update(old);
        *check = new.to_ne_bytes();
        icmp = csum::replace_u16(icmp, old, new);
    }
    e.check = icmp.to_ne_bytes();
}

/// Rewrites an outer address (with the outer IP checksum; ICMP has no pseudo-header).
#[inline(always)]
fn rewrite_outer(ctx: &XdpContext, side: Outer, old: u32, new: u32) {
    let Some(hdr) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at; Ipv4Hdr has alignment 1.
    let hdr = unsafe { &mut *hdr };
    match side {
        Outer::Source => hdr.src_addr = new.to_ne_bytes(),
        Outer::Destination => hdr.dst_addr = new.to_ne_bytes(),
    }
    hdr.check = csum::replace_u32(u16::from_ne_bytes(hdr.check), old, new).to_ne_bytes();
}
