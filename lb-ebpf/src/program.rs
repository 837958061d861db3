//! The entry program `lb_xdp`: parsing, the listener and flow lookups, established flows
//! in both directions (client → backend, backend → client). New flows and ICMP errors go on
//! in stages of their own (`new_flow`, `icmp`), entered by tail call.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::xdp,
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
};
use lb_common::{
    ACL_NONE, AclKey, BACKEND_F_DRAINING, Backend, Flow, FlowKey, Listener, ListenerKey,
    NO_BACKEND, PROTO_ICMP, PendingFlow, Reason, ReverseNat, STAGE_ICMP, STAGE_NEW_FLOW,
    acl_prefix_len,
    select::{EntryState, Step, TCP_FIN, TCP_RST, acl_denies, entry_state, next_step},
    vip_filter_bit,
};

use crate::{
    flow, fwd,
    maps::{ACLS, BACKENDS, FLOWS, LISTENERS, PENDING, REVERSE, VIP_FILTER},
    nat,
    nat::Side,
    parse,
    parse::{Ipv4, L4, Parsed},
    reset, stage, stats,
};

/// A live flow's reverse entry is refreshed at least this often while the flow sends.
const REVERSE_REFRESH_NS: u64 = 1_000_000_000;

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
        Parsed::Done(action, reason) => return (action, reason),
    };
    if ip.protocol == PROTO_ICMP {
        return stage::enter(ctx, STAGE_ICMP);
    }
    if !parse::is_tcp_or_udp(ip.protocol) {
        return (XDP_PASS, Reason::PassOtherProtocol);
    }
    if ip.fragment {
        // No ports in later fragments, so no listener or flow to match: fragments to a VIP
        // are refused (counted); others are not ours.
        return if is_vip(ip.dst_addr) {
            (XDP_DROP, Reason::DropFragment)
        } else {
            (XDP_PASS, Reason::PassNotForUs)
        };
    }
    let Some(l4) = parse::l4(ctx, &ip) else {
        return if is_vip(ip.dst_addr) {
            (XDP_DROP, Reason::DropMalformedL4)
        } else {
            (XDP_PASS, Reason::PassNotForUs)
        };
    };
    // Most packets not for a VIP are told so by the filter, and skip the listener lookup.
    let maybe_vip = maybe_vip(ip.dst_addr);
    if maybe_vip {
        let key = ListenerKey {
            addr: ip.dst_addr,
            port: l4.dst_port,
            protocol: ip.protocol,
            _pad: 0,
        };
        if let Some(listener) = LISTENERS.get_ptr(key) {
            // SAFETY: a map value pointer stays valid for the program run (RCU).
            return forward(ctx, &ip, &l4, unsafe { &*listener });
        }
    }
    let reply_key = FlowKey {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    if let Some(rev) = REVERSE.get_ptr(reply_key) {
        // SAFETY: as above.
        return reply(ctx, &ip, &l4, unsafe { &*rev });
    }
    if maybe_vip && is_vip(ip.dst_addr) {
        (XDP_PASS, Reason::PassVipNoListener)
    } else {
        (XDP_PASS, Reason::PassNotForUs)
    }
}

/// Whether `addr` may be a VIP: false is certain, true needs a lookup.
#[inline(always)]
fn maybe_vip(addr: u32) -> bool {
    let bit = vip_filter_bit(addr);
    match VIP_FILTER.get(bit / 64) {
        Some(word) => word & (1 << (bit % 64)) != 0,
        None => true,
    }
}

#[inline(always)]
fn is_vip(addr: u32) -> bool {
    if !maybe_vip(addr) {
        return false;
    }
    LISTENERS.get_ptr(ListenerKey::vip_marker(addr)).is_some()
}

/// Client → VIP: an established flow goes to its backend here; a new flow or a pickup is
/// handed to the new-flow stage.
#[inline(always)]
fn forward(ctx: &XdpContext, ip: &Ipv4, l4: &L4, listener: &Listener) -> (u32, Reason) {
    if listener.acl_mode != ACL_NONE {
        let matched = ACLS
            .get(LpmKey::new(
                acl_prefix_len(32),
                AclKey {
                    acl: listener.acl_id,
                    addr: ip.src_addr,
                },
            ))
            .is_some();
        if acl_denies(listener.acl_mode, matched) {
            stats::listener(listener.id, |c| c.dropped += 1);
            return (XDP_DROP, Reason::DropAclDenied);
        }
    }
    if ip.ttl <= 1 {
        return (XDP_PASS, Reason::PassTtlExpired);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = flow::client_key(ip, l4);

    // Plain values, not Options: a `None` leaves its payload undefined, and LLVM may then
    // spill an uninitialised register, which the verifier refuses.
    let mut state = EntryState::Missing;
    let mut live_flow: *mut Flow = core::ptr::null_mut();
    let mut live_backend: *const Backend = core::ptr::null();
    let mut previous_backend = NO_BACKEND;
    let mut previous_flags = 0;
    if let Some(fp) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program run.
        let f = unsafe { &*fp };
        previous_backend = f.backend;
        previous_flags = f.flags;
        let b = BACKENDS.get(f.backend);
        state = entry_state(now, f, b, ip.protocol, listener);
        if let (EntryState::Live { .. }, Some(b)) = (state, b) {
            live_flow = fp;
            live_backend = b;
        }
    }

    let step = next_step(ip.protocol, l4.tcp_flags, state);
    if step == Step::Reuse && !live_flow.is_null() && !live_backend.is_null() {
        // SAFETY: both point into map values, valid for the program run; the flow's own
        // CPU (RSS) is the usual writer, and a racing write of a timestamp or a flag bit
        // is harmless.
        let (f, b) = unsafe { (&mut *live_flow, &*live_backend) };
        return established(ctx, ip, l4, listener, f, b, now);
    }

    let Some(pending) = PENDING.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    unsafe {
        *pending = PendingFlow {
            key,
            listener: *listener,
            now_ns: now,
            previous_backend,
            previous_flags,
            picked: NO_BACKEND,
            state: state.code(),
            step: step.code(),
            flags: 0,
            _pad: 0,
        };
    }
    stage::enter(ctx, STAGE_NEW_FLOW)
}

/// A packet of a live flow: to the flow's backend, unless the backend's drain deadline has
/// passed.
#[inline(always)]
fn established(
    ctx: &XdpContext,
    ip: &Ipv4,
    l4: &L4,
    listener: &Listener,
    f: &mut Flow,
    b: &Backend,
    now: u64,
) -> (u32, Reason) {
    // Past a drain deadline the flow is cut, except the client's own RST, which goes
    // through so the backend learns the connection is gone.
    if b.flags & BACKEND_F_DRAINING != 0
        && b.drain_deadline_ns != 0
        && now > b.drain_deadline_ns
        && l4.tcp_flags & TCP_RST == 0
    {
        flow::note_close(f, TCP_RST);
        return cut_drained(ctx, ip, listener);
    }
    f.last_seen_ns = now;
    flow::note_close(f, l4.tcp_flags);
    // Not on every packet: for flows whose entries are out of the CPU caches the lookup
    // doubles the cost. On one packet in eight, chosen at random, and on any packet a
    // second or more after the last refresh: the entry stays young in the LRU as long as
    // its flow sends (docs/packet-policy.md).
    // SAFETY: helper without arguments.
    let lucky = unsafe { bpf_get_prandom_u32() } & 7 == 0;
    if now.saturating_sub(f.reverse_seen_ns) >= REVERSE_REFRESH_NS
        || (lucky && f.reverse_seen_ns != now)
    {
        f.reverse_seen_ns = now;
        flow::keep_reverse(ip, l4, listener, f.backend, b);
    }
    if listener.persistence_timeout_s > 0 {
        flow::touch_affinity(listener, ip.src_addr, f.backend, b.generation, now);
    }
    flow::send_to_backend(ctx, ip, l4, listener.id, f.backend, b, now)
}

/// A flow of a drained backend after its drain timeout: TCP is answered with a RST (the
/// client stops at once; the flow is recorded as reset, so it is no longer active), UDP is
/// dropped.
#[inline(always)]
fn cut_drained(ctx: &XdpContext, ip: &Ipv4, listener: &Listener) -> (u32, Reason) {
    stats::listener(listener.id, |c| c.dropped += 1);
    if ip.protocol == lb_common::PROTO_TCP && reset::answer_with_rst(ctx, ip) {
        return (XDP_TX, Reason::ResetDrainExpired);
    }
    (XDP_DROP, Reason::DropDrainExpired)
}

/// Backend → client of a known flow: put the VIP back as the source, send.
#[inline(always)]
fn reply(ctx: &XdpContext, ip: &Ipv4, l4: &L4, rev: &ReverseNat) -> (u32, Reason) {
    if ip.ttl <= 1 {
        return (XDP_PASS, Reason::PassTtlExpired);
    }
    let (vip, vport, listener, backend) = (rev.vip, rev.vport, rev.listener, rev.backend);
    if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // The backend closes or refuses: the flow stops being active (for wlc, status and
        // wait drained) even if the client never answers. Rare, so one more lookup is fine.
        let key = FlowKey {
            src_addr: ip.dst_addr,
            dst_addr: vip,
            src_port: l4.dst_port,
            dst_port: vport,
            protocol: ip.protocol,
            _pad: [0; 3],
        };
        if let Some(f) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a map value pointer stays valid for the program run.
            let f = unsafe { &mut *f };
            if f.backend == backend {
                flow::note_close(f, l4.tcp_flags);
            }
        }
    }
    if !nat::translate(ctx, ip, l4, Side::Source, vip, vport) {
        return (XDP_DROP, Reason::DropMalformedL4);
    }
    let route = fwd::Route {
        src_addr: vip,
        dst_addr: ip.dst_addr,
        src_port: vport,
        dst_port: l4.dst_port,
        backend: NO_BACKEND,
        now: 0,
    };
    let out = fwd::transmit(ctx, ip, &route, Reason::ReplyForwarded);
    if out.0 != XDP_DROP {
        stats::forwarded(listener, backend, u64::from(ip.tot_len), true);
    }
    out
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this
    // handler is never reached in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}
