//! IPv6: the stage `lb_ipv6`, which `lb_xdp` enters for every IPv6 frame, and its new-flow
//! stage `lb_new_flow6`: the IPv4 path's steps over the IPv6 tables, with the
//! same decision (`lb_common::decide`, over `Maps6`) and the same flow bookkeeping
//! (`flow`, `new_flow::open`, generic over the family). What differs is the header: the
//! extension-header policy (`parse6`), NAT66 without a header checksum (`nat6`) and the
//! IPv6 FIB lookup (`fwd6`).
//!
//! ICMPv6 other than neighbour discovery goes on in `lb_icmp6` (`icmp6`); a packet for a
//! `forwarding: dsr` listener's backend, in `lb_encap6` (`encap6`), which puts it in its
//! tunnel.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Addr6, Backend, Encapsulation, Listener, NO_BACKEND, PENDING_F_SCANNED, PROTO_TCP, Reason,
    STAGE_ENCAP6, STAGE_ICMP6, STAGE_IPV6, STAGE_NEW_FLOW6, STAGE_WLC, TOO_BIG_DESTINATION,
    TOO_BIG_SOURCE, V6,
    decide::{self, Decision, Opening, Pick},
    select::{EntryState, Step, TCP_RST, is_tcp_open},
};

use crate::{
    clock, flow,
    fwd6::{self, Route6},
    maps::{BACKENDS6, ENCAP6, PENDING6},
    nat::Side,
    nat6,
    new_flow::{self, Client},
    parse::{self, L4},
    parse6::{self, Ipv6, PROTO_ICMPV6, Parsed6, refuse_for_vip},
    reset, stage, stats,
    tables::{self, Maps6},
};

#[inline(always)]
fn is_vip(addr: Addr6) -> bool {
    decide::is_vip(&Maps6::new(), addr)
}

/// An IPv6 frame, entered from `lb_xdp`.
#[xdp]
pub fn lb_ipv6(ctx: XdpContext) -> u32 {
    let verdict = process(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let ip = match parse6::ipv6(ctx) {
        Parsed6::Ipv6(ip) => ip,
        Parsed6::Done(action, reason) => return (action, reason),
    };
    // The walk stopped at what it refuses or at a fragment: the protocol is unknown then.
    if ip.refused_extensions {
        cold_path();
        return refuse_for_vip(
            is_vip(ip.dst_addr),
            Reason::DropExtensionHeader,
            Reason::PassNotForUs,
        );
    }
    if ip.fragment {
        cold_path();
        return refuse_for_vip(
            is_vip(ip.dst_addr),
            Reason::DropFragment,
            Reason::PassNotForUs,
        );
    }
    if ip.protocol == PROTO_ICMPV6 {
        cold_path();
        if parse6::is_neighbour_discovery(ctx, &ip) {
            return (XDP_PASS, Reason::PassNeighbourDiscovery);
        }
        // Where the extension headers end goes to the ICMPv6 stage in the hand-off:
        // walking them again there would cost it a third of its stack.
        let Some(pending) = PENDING6.get_ptr_mut(0) else {
            return (XDP_DROP, Reason::DropStageFailed);
        };
        // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
        let p = unsafe { &mut *pending };
        p.key.src_addr = ip.src_addr;
        p.key.dst_addr = ip.dst_addr;
        p.key.src_port = 0;
        p.key.dst_port = 0;
        p.key.protocol = PROTO_ICMPV6;
        p.l4_offset = ip.l4_offset as u16;
        return stage::enter(ctx, STAGE_ICMP6);
    }
    if !parse::is_tcp_or_udp(ip.protocol) {
        cold_path();
        return refuse_for_vip(
            is_vip(ip.dst_addr),
            Reason::DropVipOtherProtocol,
            Reason::PassOtherProtocol,
        );
    }
    let Some(l4) = parse6::l4(ctx, &ip) else {
        cold_path();
        return refuse_for_vip(
            is_vip(ip.dst_addr),
            Reason::DropMalformedL4,
            Reason::PassNotForUs,
        );
    };
    let packet = parse6::packet(&ip, &l4);
    if let Some(listener) = decide::listener_for(&Maps6::new(), &packet) {
        return forward(ctx, &ip, &l4, &listener);
    }
    if let Some(to) = flow::reply_flow::<V6>(
        ip.src_addr,
        l4.src_port,
        ip.dst_addr,
        l4.dst_port,
        ip.protocol,
    ) {
        return reply(ctx, &ip, &l4, &to);
    }
    refuse_for_vip(
        is_vip(ip.dst_addr),
        Reason::DropVipNoListener,
        Reason::PassNotForUs,
    )
}

/// Client → VIP (see `program::forward`).
#[inline(always)]
fn forward(ctx: &XdpContext, ip: &Ipv6, l4: &L4, listener: &Listener) -> (u32, Reason) {
    let now = clock::now();
    let packet = parse6::packet(ip, l4);
    let recheck = packet.protocol == PROTO_TCP
        && is_tcp_open(packet.tcp_flags)
        && tables::take_recheck6(&packet.flow_key());
    let maps = Maps6::for_client(recheck);
    let opening = match decide::listener_packet(&maps, &mut (), listener, &packet, now) {
        Decision::Established { flow, backend } => {
            let f = flow.get_mut();
            let backend_id = f.backend;
            flow::client_packet::<V6>(listener, &packet, l4, f, backend.generation, now);
            let Some(ip) = reread(ctx, ip) else {
                return (XDP_DROP, Reason::DropMalformedIpv6);
            };
            let delivery = Delivery {
                ip: &ip,
                l4,
                listener,
                backend: &backend,
                backend_id,
                now,
            };
            return send_to_backend(ctx, &delivery);
        }
        Decision::DrainCut { flow } => {
            cold_path();
            flow::note_close(flow.get_mut(), TCP_RST);
            stats::listener(listener.id, |c| c.dropped += 1);
            if ip.protocol == PROTO_TCP && reset::answer_with_rst6(ctx, ip) {
                return (XDP_TX, Reason::ResetDrainExpired);
            }
            return (XDP_DROP, Reason::DropDrainExpired);
        }
        Decision::Drop(reason) => {
            cold_path();
            stats::listener(listener.id, |c| c.dropped += 1);
            return (XDP_DROP, reason);
        }
        Decision::Pass(reason) => return (XDP_PASS, reason),
        Decision::Open(opening) => opening,
    };
    let Some(pending) = PENDING6.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let p = unsafe { &mut *pending };
    // Field by field: a whole `PendingFlow6` built first would take 112 bytes of the
    // program's 512-byte stack.
    p.key = packet.flow_key();
    p.listener = *listener;
    p.now_ns = now;
    p.previous_backend = opening.previous_backend;
    p.previous_flags = opening.previous_flags;
    p.picked = NO_BACKEND;
    p.state = opening.state.code();
    p.step = opening.step.code();
    p.flags = new_flow::exclusive_insert(recheck, &packet, &opening);
    p.l4_offset = ip.l4_offset as u16;
    stage::enter(ctx, STAGE_NEW_FLOW6)
}

/// The fixed header read again before the packet is sent, with what the walk found: the
/// addresses read at the start would otherwise be kept (spilled to the stack) across the
/// lookups in between, and the stack is 512 bytes.
#[inline(always)]
fn reread(ctx: &XdpContext, walked: &Ipv6) -> Option<Ipv6> {
    let mut ip = parse6::header(ctx).ok()?;
    ip.l4_offset = walked.l4_offset;
    ip.protocol = walked.protocol;
    Some(ip)
}

/// A client packet on its way to its backend.
struct Delivery<'a> {
    ip: &'a Ipv6,
    l4: &'a L4,
    listener: &'a Listener,
    backend: &'a Backend,
    backend_id: u32,
    now: u64,
}

/// Client → backend: NAT66 to the backend, sent, counted; with `forwarding: dsr`, on to
/// the tunnel's stage (`lb_encap6`), which sends and counts it.
#[inline(always)]
fn send_to_backend(ctx: &XdpContext, d: &Delivery<'_>) -> (u32, Reason) {
    let (ip, l4) = (d.ip, d.l4);
    if d.listener.encapsulation != Encapsulation::None as u8 {
        return encapsulate(ctx, d);
    }
    let Some(addr) = BACKENDS6.get(d.backend_id) else {
        return (XDP_DROP, Reason::DropNoBackend);
    };
    let addr = addr.addr;
    if !nat6::translate(ctx, ip, l4, Side::Destination, addr, d.backend.port) {
        return (XDP_DROP, Reason::DropMalformedL4);
    }
    let route = Route6 {
        src_addr: ip.src_addr,
        dst_addr: addr,
        src_port: l4.src_port,
        dst_port: d.backend.port,
        backend: d.backend_id,
        now: d.now,
        side: TOO_BIG_DESTINATION,
        original_addr: ip.dst_addr,
        original_port: l4.dst_port,
        overhead: 0,
        want_source: false,
    };
    let out = fwd6::transmit(ctx, ip, &route, Reason::Forwarded);
    if out.0 != XDP_DROP {
        stats::forwarded(d.listener.id, d.backend_id, u64::from(ip.ip_len));
    }
    out
}

/// A client's packet for a `forwarding: dsr` listener: handed to `lb_encap6`.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, d: &Delivery<'_>) -> (u32, Reason) {
    let Some(handoff) = ENCAP6.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let h = unsafe { &mut *handoff };
    // Field by field, for the stack (see `forward`).
    h.key.src_addr = d.ip.src_addr;
    h.key.dst_addr = d.ip.dst_addr;
    h.key.src_port = d.l4.src_port;
    h.key.dst_port = d.l4.dst_port;
    h.key.protocol = d.ip.protocol;
    h.now_ns = d.now;
    h.listener = d.listener.id;
    h.backend = d.backend_id;
    h.encap_port = d.listener.encap_port;
    h.encapsulation = d.listener.encapsulation;
    h.side = TOO_BIG_DESTINATION;
    h.l4_offset = d.ip.l4_offset as u16;
    stage::enter(ctx, STAGE_ENCAP6)
}

/// Backend → client of a known flow: the VIP back as the source, sent.
#[inline(always)]
fn reply(ctx: &XdpContext, ip: &Ipv6, l4: &L4, to: &flow::Reply<Addr6>) -> (u32, Reason) {
    if ip.hop_limit <= 1 {
        return (XDP_PASS, Reason::PassTtlExpired);
    }
    // SAFETY: a map value pointer stays valid for the program run; see `program::reply`.
    let f = unsafe { &mut *to.flow };
    let backend = f.backend;
    flow::backend_packet(f, l4, ip.protocol);
    if !nat6::translate(ctx, ip, l4, Side::Source, to.vip, to.vport) {
        return (XDP_DROP, Reason::DropMalformedL4);
    }
    let route = Route6 {
        src_addr: to.vip,
        dst_addr: ip.dst_addr,
        src_port: to.vport,
        dst_port: l4.dst_port,
        backend: NO_BACKEND,
        now: 0,
        side: TOO_BIG_SOURCE,
        original_addr: ip.src_addr,
        original_port: l4.src_port,
        overhead: 0,
        want_source: false,
    };
    let out = fwd6::transmit(ctx, ip, &route, Reason::ReplyForwarded);
    if out.0 != XDP_DROP {
        stats::replied(to.listener, backend, u64::from(ip.ip_len));
    }
    out
}

/// The new-flow stage for IPv6 (see `new_flow::lb_new_flow`).
#[xdp]
pub fn lb_new_flow6(ctx: XdpContext) -> u32 {
    let verdict = new_flow(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn new_flow(ctx: &XdpContext) -> (u32, Reason) {
    let Some(pending) = PENDING6.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let pending = unsafe { &mut *pending };
    // The entry stage walked the extension headers; the hand-off says where they end.
    let mut ip = match parse6::header(ctx) {
        Ok(ip) => ip,
        Err(reason) => return (XDP_DROP, reason),
    };
    ip.l4_offset = usize::from(pending.l4_offset);
    ip.protocol = pending.key.protocol;
    let Some(l4) = parse6::l4(ctx, &ip) else {
        return (XDP_DROP, Reason::DropMalformedL4);
    };
    // The hand-off must be this packet's (see `new_flow::lb_new_flow`). Field by field,
    // and the listener by reference: copies of 40-byte keys and listeners would each take
    // their share of the 512-byte stack.
    let key = &pending.key;
    if key.src_addr != ip.src_addr
        || key.dst_addr != ip.dst_addr
        || key.src_port != l4.src_port
        || key.dst_port != l4.dst_port
    {
        cold_path();
        return (XDP_DROP, Reason::DropStageFailed);
    }
    let packet = parse6::packet(&ip, &l4);
    let listener = &pending.listener;
    let opening = Opening {
        step: Step::from_code(pending.step),
        state: EntryState::from_code(pending.state),
        previous_backend: pending.previous_backend,
        previous_flags: pending.previous_flags,
    };
    let scanned = (pending.flags & PENDING_F_SCANNED != 0).then_some(pending.picked);
    let now = pending.now_ns;
    let (id, backend, persisted) = match decide::pick(
        &Maps6::for_new_flow(),
        &mut (),
        listener,
        &packet,
        &opening,
        scanned,
        now,
    ) {
        Pick::Backend {
            id,
            backend,
            persisted,
        } => (id, backend, persisted),
        Pick::Scan => return stage::enter(ctx, STAGE_WLC),
        Pick::Fail(reason) => {
            cold_path();
            return new_flow::refuse(listener, reason);
        }
    };
    new_flow::note_persisted(&mut pending.flags, persisted);
    let client = Client {
        addr: ip.src_addr,
        l4: &l4,
        protocol: ip.protocol,
    };
    if let Err(reason) = new_flow::open::<V6>(
        &client,
        listener,
        &opening,
        new_flow::insert_mode(pending.flags),
        key,
        id,
        &backend,
        persisted,
        now,
    ) {
        cold_path();
        if reason == Reason::EventSynRechecked {
            return new_flow::recheck(ctx, &mut pending.flags, STAGE_IPV6);
        }
        return new_flow::refuse(listener, reason);
    }
    let Some(ip) = reread(ctx, &ip) else {
        return (XDP_DROP, Reason::DropMalformedIpv6);
    };
    let delivery = Delivery {
        ip: &ip,
        l4: &l4,
        listener,
        backend: &backend,
        backend_id: id,
        now,
    };
    send_to_backend(ctx, &delivery)
}
