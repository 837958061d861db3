//! The entry program `lb_xdp`: parsing, the listener and flow lookups, established flows
//! in both directions (client → backend, backend → client). New flows and ICMP errors go on
//! in stages of their own (`new_flow`, `icmp`), entered by tail call.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Listener, NO_BACKEND, PROTO_ICMP, PROTO_TCP, PendingFlow, Reason, STAGE_ICMP, STAGE_IPV6,
    STAGE_NEW_FLOW, TOO_BIG_SOURCE, V4,
    decide::{self, Decision},
    select::{TCP_RST, is_tcp_open},
};

use crate::{
    clock, flow, fwd,
    maps::PENDING,
    nat,
    nat::Side,
    new_flow, parse,
    parse::{Ipv4, L4, Parsed},
    reset, stage, stats, tables,
    tables::Maps,
};

/// The kernel checks this for GPL-only helpers (bpf_fib_lookup is one).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let verdict = process(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let ip = match parse::ipv4(ctx) {
        Parsed::Ipv4(ip) => ip,
        // Asked only of frames that are not IPv4: IPv4's cost does not change. IPv6 runs
        // in a program of its own, with a stack and a verifier budget of its own.
        Parsed::Done(_, Reason::PassNotIp) if parse::is_ipv6(ctx) => {
            return stage::enter(ctx, STAGE_IPV6);
        }
        Parsed::Done(action, reason) => return (action, reason),
    };
    if ip.protocol == PROTO_ICMP {
        cold_path();
        return stage::enter(ctx, STAGE_ICMP);
    }
    if !parse::is_tcp_or_udp(ip.protocol) {
        cold_path();
        // Passed, a packet to a VIP routed to the LB (not one of its addresses) would
        // bounce between the LB and its router until its TTL ran out.
        return if is_vip(ip.dst_addr) {
            (XDP_DROP, Reason::DropVipOtherProtocol)
        } else {
            (XDP_PASS, Reason::PassOtherProtocol)
        };
    }
    if ip.fragment {
        cold_path();
        // No ports in later fragments, so no listener or flow to match: fragments to a VIP
        // are refused (counted); others are not ours.
        return if is_vip(ip.dst_addr) {
            (XDP_DROP, Reason::DropFragment)
        } else {
            (XDP_PASS, Reason::PassNotForUs)
        };
    }
    let Some(l4) = parse::l4(ctx, &ip) else {
        cold_path();
        return if is_vip(ip.dst_addr) {
            (XDP_DROP, Reason::DropMalformedL4)
        } else {
            (XDP_PASS, Reason::PassNotForUs)
        };
    };
    // No VIP filter first: the listener index answers "not a listener" with one array
    // read, as the filter would.
    if let Some(listener) = decide::listener_for(&Maps::new(), &parse::packet(&ip, &l4)) {
        return forward(ctx, &ip, &l4, &listener);
    }
    // A backend's reply: its source is a backend endpoint, its destination the client.
    // Most packets from elsewhere are told so by the backend filter, and skip the lookup.
    if tables::may_be_backend(ip.src_addr)
        && let Some(to) = flow::reply_flow::<V4>(
            ip.src_addr,
            l4.src_port,
            ip.dst_addr,
            l4.dst_port,
            ip.protocol,
        )
    {
        return reply(ctx, &ip, &l4, &to);
    }
    if is_vip(ip.dst_addr) {
        // Dropped for the same reason as other protocols above.
        (XDP_DROP, Reason::DropVipNoListener)
    } else {
        (XDP_PASS, Reason::PassNotForUs)
    }
}

#[inline(always)]
fn is_vip(addr: u32) -> bool {
    decide::is_vip(&Maps::new(), addr)
}

/// Client → VIP: an established flow goes to its backend here; a new flow or a pickup is
/// handed to the new-flow stage.
#[inline(always)]
fn forward(ctx: &XdpContext, ip: &Ipv4, l4: &L4, listener: &Listener) -> (u32, Reason) {
    let now = clock::now();
    let packet = parse::packet(ip, l4);
    let recheck = packet.protocol == PROTO_TCP
        && is_tcp_open(packet.tcp_flags)
        && tables::take_recheck(&packet.flow_key());
    let maps = Maps::for_client(recheck);
    let opening = match decide::listener_packet(&maps, &mut (), listener, &packet, now) {
        Decision::Established { flow, backend } => {
            // Read before `client_packet`, after which the entry may be gone (promoted).
            let f = flow.get_mut();
            let backend_id = f.backend;
            flow::client_packet::<V4>(listener, &packet, l4, f, backend.generation, now);
            let record = maps.backend_record(backend_id);
            return flow::send_to_backend(ctx, ip, l4, listener, backend_id, record, &backend, now);
        }
        Decision::DrainCut { flow } => {
            cold_path();
            flow::note_close(flow.get_mut(), TCP_RST);
            return cut_drained(ctx, ip, listener);
        }
        Decision::Drop(reason) => {
            cold_path();
            stats::listener(listener.id, |c| c.dropped += 1);
            return (XDP_DROP, reason);
        }
        Decision::Pass(reason) => return (XDP_PASS, reason),
        Decision::Open(opening) => opening,
    };

    let Some(pending) = PENDING.get_ptr_mut(0) else {
        cold_path();
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    unsafe {
        *pending = PendingFlow {
            key: packet.flow_key(),
            listener: *listener,
            now_ns: now,
            previous_backend: opening.previous_backend,
            previous_flags: opening.previous_flags,
            picked: NO_BACKEND,
            state: opening.state.code(),
            step: opening.step.code(),
            flags: new_flow::exclusive_insert(recheck, &packet, &opening),
            _pad: 0,
        };
    }
    stage::enter(ctx, STAGE_NEW_FLOW)
}

/// A flow of a drained backend after its drain timeout: TCP is answered with a RST (the
/// client stops at once; the flow is recorded as reset, so it is no longer active), UDP is
/// dropped.
#[inline(always)]
fn cut_drained(ctx: &XdpContext, ip: &Ipv4, listener: &Listener) -> (u32, Reason) {
    stats::listener(listener.id, |c| c.dropped += 1);
    if ip.protocol == PROTO_TCP && reset::answer_with_rst(ctx, ip) {
        return (XDP_TX, Reason::ResetDrainExpired);
    }
    (XDP_DROP, Reason::DropDrainExpired)
}

/// Backend → client of a known flow: put the VIP back as the source, send.
#[inline(always)]
fn reply(ctx: &XdpContext, ip: &Ipv4, l4: &L4, to: &flow::Reply<u32>) -> (u32, Reason) {
    if ip.ttl <= 1 {
        return (XDP_PASS, Reason::PassTtlExpired);
    }
    // SAFETY: a map value pointer stays valid for the program run; the reply path writes
    // an acknowledgement number and flag bits, where the last writer winning is harmless.
    let f = unsafe { &mut *to.flow };
    let backend = f.backend;
    flow::backend_packet(f, l4, ip.protocol);
    if !nat::translate(ctx, ip, l4, Side::Source, to.vip, to.vport) {
        return (XDP_DROP, Reason::DropMalformedL4);
    }
    let route = fwd::Route {
        src_addr: to.vip,
        dst_addr: ip.dst_addr,
        src_port: to.vport,
        dst_port: l4.dst_port,
        backend: NO_BACKEND,
        record: None,
        now: 0,
        side: TOO_BIG_SOURCE,
        original_addr: ip.src_addr,
        original_port: l4.src_port,
        overhead: 0,
        want_source: false,
    };
    let out = fwd::transmit(ctx, ip, &route, Reason::ReplyForwarded);
    if out.0 != XDP_DROP {
        stats::replied(to.listener, backend, u64::from(ip.tot_len));
    }
    out
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this
    // handler is never reached in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}
