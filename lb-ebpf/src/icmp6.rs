//! ICMPv6 errors about a translated flow, and echo requests to an IPv6 VIP: `icmp` for
//! IPv6, in a stage of its own (`lb_icmp6`, entered from `lb_ipv6` for every ICMPv6
//! packet but neighbour discovery), whose errors towards clients go on in a second stage
//! (`lb_icmp6_client`): its search of the endpoint's flows and the transmission took one
//! stage near the 512-byte stack limit.
//!
//! - to a VIP, quoting a reply the LB sent (VIP:port → client): Packet Too Big from a
//!   router on the client's path above all (a router never fragments IPv6, so without it
//!   the backend's large segments vanish). Sent on to the flow's backend with the quoted
//!   source rewritten to the backend, so its TCP lowers the path MTU. With `forwarding:
//!   dsr` the backend sent that reply from the VIP itself: the error goes to it unchanged,
//!   in the flow's tunnel (`lb_encap6`);
//! - to a client, quoting a packet the LB sent to a backend (client → backend:port): the
//!   quoted destination is rewritten to the VIP, and the outer source too when the backend
//!   itself sent the error.
//!
//! Errors are destination unreachable, Packet Too Big, time exceeded and parameter
//! problem, behind the extension headers the policy skips (`lb_ipv6` walked them and says
//! where they end), quoting an IPv6 header without extension headers and at least 8 bytes
//! of TCP or UDP. ICMPv6 has no header of its own to fix but its checksum covers a
//! pseudo-header with the outer addresses, so an outer rewrite updates it too. Anything else goes to the
//! kernel unless addressed to a VIP, where an echo request is answered (`vip_ping:
//! answer`) and the rest dropped, as for IPv4.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Addr6, ENCAP6_ICMP, Encapsulation, FlowKey6, LISTENER_F_ANSWER_PING, Listener, PROTO_TCP,
    PROTO_UDP, Reason, STAGE_ENCAP6, STAGE_ICMP6_CLIENT, V6, csum,
    decide::Tables as _,
    family::{Family, octets6},
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    clock, flow,
    fwd6::{self, Route6},
    maps::{BACKENDS, BACKENDS6, ENCAP6, LISTENERS6, PENDING6},
    parse::{ETH_LEN, ptr_at},
    parse6::{self, IPV6_LEN, Ipv6, MAX_L4_OFFSET, PROTO_ICMPV6, words},
    stage, stats,
    tables::Maps6,
};

const DEST_UNREACHABLE: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAMETER_PROBLEM: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// An ICMPv6 error with the quoted IPv6 header (no extension headers) and the first 8
/// bytes of its TCP or UDP header.
#[repr(C)]
struct IcmpError6 {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
    inner: Ipv6Hdr,
    src_port: [u8; 2],
    dst_port: [u8; 2],
    l4_word2: [u8; 2],
    l4_word3: [u8; 2],
}

/// Offset of the quoted TCP checksum from the start of `IcmpError6`, when quoted.
const INNER_TCP_CHECK: usize = 8 + IPV6_LEN + 16;

/// The packet's IPv6 header, with where its extension headers end from `lb_ipv6`'s
/// hand-off (walking them again would cost the stage a third of its stack). The hand-off
/// must be this packet's: a stage run on its own finds what the last packet left.
#[inline(always)]
fn header(ctx: &XdpContext) -> Result<Ipv6, Reason> {
    let mut ip = parse6::header(ctx)?;
    let pending = PENDING6.get(0).ok_or(Reason::DropStageFailed)?;
    let key = &pending.key;
    let off = usize::from(pending.l4_offset);
    if key.protocol != PROTO_ICMPV6
        || key.src_addr != ip.src_addr
        || key.dst_addr != ip.dst_addr
        // One comparison: a range check compiles to a subtraction whose bound the
        // verifier does not carry back to the offset.
        || off > MAX_L4_OFFSET
    {
        return Err(Reason::DropStageFailed);
    }
    ip.l4_offset = off;
    ip.protocol = PROTO_ICMPV6;
    Ok(ip)
}

#[xdp]
pub fn lb_icmp6(ctx: XdpContext) -> u32 {
    let verdict = match header(&ctx) {
        Ok(ip) => match error_of(&ctx, &ip) {
            Some((e, off)) => match towards_backend(&ctx, &ip, e, off) {
                Some(Ok(route)) => fwd6::transmit(&ctx, &ip, &route, Reason::IcmpToBackend),
                Some(Err(verdict)) => verdict,
                // Perhaps about a packet we sent to a backend: the stage that searches
                // the endpoint's flows (a stage of its own, for its stack).
                None => stage::enter(&ctx, STAGE_ICMP6_CLIENT),
            },
            None => not_about_a_flow(&ctx, &ip),
        },
        Err(reason) => (XDP_DROP, reason),
    };
    stats::finish(&ctx, verdict)
}

/// `lb_icmp6`'s second half: an ICMPv6 error about a packet the LB sent to a backend
/// (client → backend), reported towards the client.
#[xdp]
pub fn lb_icmp6_client(ctx: XdpContext) -> u32 {
    let verdict = match header(&ctx) {
        Ok(ip) => match error_of(&ctx, &ip) {
            Some((e, off)) => match towards_client(&ctx, &ip, e, off) {
                Some(Ok(route)) => fwd6::transmit(&ctx, &ip, &route, Reason::IcmpToClient),
                Some(Err(verdict)) => verdict,
                None => not_about_a_flow(&ctx, &ip),
            },
            None => not_about_a_flow(&ctx, &ip),
        },
        Err(reason) => (XDP_DROP, reason),
    };
    stats::finish(&ctx, verdict)
}

/// An ICMPv6 packet that is not an error about a flow of ours: to a VIP, an echo request
/// is answered when the VIP's marker says so and everything else is dropped; to anything
/// else, the kernel's.
#[inline(always)]
fn not_about_a_flow(ctx: &XdpContext, ip: &Ipv6) -> (u32, Reason) {
    let Some(marker) = Maps6::new().listener(&V6::listener_key(ip.dst_addr, 0, 0)) else {
        return (XDP_PASS, Reason::PassOtherProtocol);
    };
    if marker.flags & LISTENER_F_ANSWER_PING != 0 && answer_echo(ctx, ip) {
        return (XDP_TX, Reason::IcmpEchoReply);
    }
    (XDP_DROP, Reason::DropVipOtherProtocol)
}

/// An echo request without extension headers, as far as the reply rewrites it.
#[repr(C)]
struct EchoFrame6 {
    eth: EthHdr,
    ip: Ipv6Hdr,
    /// Type, code, checksum.
    icmp: [u8; 4],
}

/// Turns an echo request into its reply in place, back out of the interface it came in
/// on: MACs and addresses swapped (which leaves the pseudo-header's sum as it was), hop
/// limit 64, type 129. False, packet untouched, for anything but an unfragmented echo
/// request without extension headers.
#[inline(always)]
fn answer_echo(ctx: &XdpContext, ip: &Ipv6) -> bool {
    if ip.protocol != PROTO_ICMPV6 || ip.l4_offset != ETH_LEN + IPV6_LEN {
        return false;
    }
    let Some(frame) = ptr_at::<EchoFrame6>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; EchoFrame6 has alignment 1.
    let frame = unsafe { &mut *frame };
    if frame.icmp[0] != ECHO_REQUEST || frame.icmp[1] != 0 {
        return false;
    }
    core::mem::swap(&mut frame.eth.src_addr, &mut frame.eth.dst_addr);
    frame.ip.src_addr = octets6(ip.dst_addr);
    frame.ip.dst_addr = octets6(ip.src_addr);
    frame.ip.hop_limit = 64;
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

/// The ICMPv6 error of this packet and where it starts (after the extension headers the
/// policy skips), if it is an error the program translates: one of the four kinds,
/// quoting an IPv6 TCP or UDP packet without extension headers, to the sender of the
/// quoted packet.
#[inline(always)]
fn error_of<'a>(ctx: &XdpContext, ip: &Ipv6) -> Option<(&'a mut IcmpError6, usize)> {
    let off = ip.l4_offset;
    if ip.protocol != PROTO_ICMPV6 || off > MAX_L4_OFFSET {
        return None;
    }
    // The error and its quote must lie inside the IP packet, not merely inside the frame.
    let ip_payload = (ip.ip_len as usize + ETH_LEN).saturating_sub(off);
    if ip_payload < size_of::<IcmpError6>() {
        return None;
    }
    let e = ptr_at::<IcmpError6>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; every field has alignment 1; the frame lives for
    // the program run.
    let e = unsafe { &mut *e };
    if !matches!(
        e.kind,
        DEST_UNREACHABLE | PACKET_TOO_BIG | TIME_EXCEEDED | PARAMETER_PROBLEM
    ) || e.inner.vcf[0] >> 4 != 6
        || !(e.inner.next_hdr == PROTO_TCP || e.inner.next_hdr == PROTO_UDP)
        // An error goes to the sender of the quoted packet.
        || ip.dst_addr != words(&e.inner.src_addr)
    {
        return None;
    }
    Some((e, off))
}

/// Whether the error quotes the TCP checksum (it rewrites it then).
#[inline(always)]
fn tcp_check_quoted(ip: &Ipv6, off: usize) -> bool {
    (ip.ip_len as usize + ETH_LEN).saturating_sub(off) >= INNER_TCP_CHECK + 2
}

/// An error about a reply we sent (VIP → client), reported back to the VIP: the quoted
/// source becomes the flow's backend, and so does the outer destination. `None` when the
/// quote is not such a reply of a live flow; `Err` for a verdict reached here.
#[inline(always)]
fn towards_backend(
    ctx: &XdpContext,
    ip: &Ipv6,
    e: &mut IcmpError6,
    off: usize,
) -> Option<Result<Route6, (u32, Reason)>> {
    let protocol = e.inner.next_hdr;
    let tcp_check_quoted = tcp_check_quoted(ip, off);
    let (inner_src, inner_dst) = (words(&e.inner.src_addr), words(&e.inner.dst_addr));
    let (src_port, dst_port) = (
        u16::from_ne_bytes(e.src_port),
        u16::from_ne_bytes(e.dst_port),
    );
    // The client side of the quoted reply's flow, as `FLOWS6` keys it.
    let key = V6::flow_key(inner_dst, inner_src, dst_port, src_port, protocol);
    let f = flow::lookup::<V6>(&key)?;
    // SAFETY: a map value pointer stays valid for the program run.
    let f = unsafe { &*f };
    let b = BACKENDS.get(f.backend)?;
    if b.generation != f.generation || !b.is_usable() {
        return None;
    }
    let addr = BACKENDS6.get(f.backend)?.addr;
    if ip.hop_limit <= 1 {
        return Some(Err((XDP_PASS, Reason::PassTtlExpired)));
    }
    // In DSR the backend sent the reply from the VIP itself: the error goes to it as it
    // is, in the flow's tunnel (`lb_encap6`), and its stack matches the quote.
    if let Some(l) = LISTENERS6.get_ptr(V6::listener_key(inner_src, src_port, protocol)) {
        // SAFETY: a map value pointer stays valid for the program run.
        let l = unsafe { &*l };
        if l.encapsulation != Encapsulation::None as u8 {
            return Some(Err(encapsulate(ctx, &key, l, f.backend)));
        }
    }
    let mut check = rewrite_quoted(ctx, e, off, tcp_check_quoted, true, addr, b.port);
    // The outer destination is in the pseudo-header the checksum covers.
    check = csum::replace_addr6_port(check, ip.dst_addr, addr, 0, 0);
    e.check = check.to_ne_bytes();
    set_outer(ctx, false, addr);
    Some(Ok(Route6::icmp(ip.src_addr, addr)))
}

/// An ICMPv6 error about a reply of `flow` (client → VIP), a flow of a `forwarding: dsr`
/// listener: handed to `lb_encap6`, which tunnels it to the flow's backend.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, flow: &FlowKey6, l: &Listener, backend: u32) -> (u32, Reason) {
    let Some(handoff) = ENCAP6.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let h = unsafe { &mut *handoff };
    h.key = *flow;
    h.now_ns = clock::now();
    h.listener = l.id;
    h.backend = backend;
    h.encap_port = l.encap_port;
    h.encapsulation = l.encapsulation;
    h.side = ENCAP6_ICMP;
    h.l4_offset = 0;
    stage::enter(ctx, STAGE_ENCAP6)
}

/// An error about a packet we sent to a backend (client → backend), reported towards the
/// client: the quoted destination becomes the VIP, and the outer source too when the
/// backend itself sent the error. `None` when it is not about a flow of ours; an error
/// whose hop limit would run out goes to the kernel untouched, as towards a backend.
#[inline(always)]
fn towards_client(
    ctx: &XdpContext,
    ip: &Ipv6,
    e: &mut IcmpError6,
    off: usize,
) -> Option<Result<Route6, (u32, Reason)>> {
    let protocol = e.inner.next_hdr;
    let tcp_check_quoted = tcp_check_quoted(ip, off);
    let (src_port, dst_port) = (
        u16::from_ne_bytes(e.src_port),
        u16::from_ne_bytes(e.dst_port),
    );
    let to = flow::reply_flow::<V6>(
        words(&e.inner.dst_addr),
        dst_port,
        words(&e.inner.src_addr),
        src_port,
        protocol,
    )?;
    if ip.hop_limit <= 1 {
        return Some(Err((XDP_PASS, Reason::PassTtlExpired)));
    }
    // Read from the packet again rather than kept across the search: 16 bytes of stack.
    let from_backend = ip.src_addr == words(&e.inner.dst_addr);
    let (vip, vport) = (to.vip, to.vport);
    let mut check = rewrite_quoted(ctx, e, off, tcp_check_quoted, false, vip, vport);
    let mut src = ip.src_addr;
    if from_backend {
        // Sent by the backend itself: the client only knows the VIP.
        check = csum::replace_addr6_port(check, src, vip, 0, 0);
        set_outer(ctx, true, vip);
        src = vip;
    }
    e.check = check.to_ne_bytes();
    Some(Ok(Route6::icmp(src, ip.dst_addr)))
}

/// Rewrites the quoted source (`source`) or destination address and port, with the
/// quoted L4 checksum when it is quoted; returns the ICMPv6 checksum updated for what
/// changed in the message (the caller adds the outer pseudo-header's changes and writes
/// it).
#[inline(always)]
fn rewrite_quoted(
    ctx: &XdpContext,
    e: &mut IcmpError6,
    off: usize,
    tcp_check_quoted: bool,
    source: bool,
    new_addr: Addr6,
    new_port: u16,
) -> u16 {
    let (addr_field, port_field) = if source {
        (&mut e.inner.src_addr, &mut e.src_port)
    } else {
        (&mut e.inner.dst_addr, &mut e.dst_port)
    };
    let old_addr = words(addr_field);
    let old_port = u16::from_ne_bytes(*port_field);
    *addr_field = octets6(new_addr);
    *port_field = new_port.to_ne_bytes();
    let mut icmp = csum::replace_addr6_port(
        u16::from_ne_bytes(e.check),
        old_addr,
        new_addr,
        old_port,
        new_port,
    );
    let l4_update =
        |check: u16| csum::replace_addr6_port(check, old_addr, new_addr, old_port, new_port);
    if e.inner.next_hdr == PROTO_UDP {
        let old = u16::from_ne_bytes(e.l4_word3);
        let new = csum::udp_nonzero(l4_update(old));
        e.l4_word3 = new.to_ne_bytes();
        icmp = csum::replace_u16(icmp, old, new);
    } else if tcp_check_quoted && let Some(check) = ptr_at::<[u8; 2]>(ctx, off + INNER_TCP_CHECK) {
        // SAFETY: bounds checked by ptr_at.
        let check = unsafe { &mut *check };
        let old = u16::from_ne_bytes(*check);
        let new = l4_update(old);
        *check = new.to_ne_bytes();
        icmp = csum::replace_u16(icmp, old, new);
    }
    icmp
}

/// Writes the outer source (`source`) or destination address.
#[inline(always)]
fn set_outer(ctx: &XdpContext, source: bool, addr: Addr6) {
    if let Some(hdr) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) {
        // SAFETY: bounds checked by ptr_at; Ipv6Hdr has alignment 1.
        let hdr = unsafe { &mut *hdr };
        if source {
            hdr.src_addr = octets6(addr);
        } else {
            hdr.dst_addr = octets6(addr);
        }
    }
}
