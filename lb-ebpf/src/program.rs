//! The entry point and the two packet paths (client → backend, backend → client).

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::xdp,
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
};
use lb_common::{
    ACL_NONE, AclKey, Affinity, AffinityKey, BACKEND_F_DRAINING, Backend, FLOW_F_COUNTED,
    FLOW_F_FIN, FLOW_F_PICKUP, FLOW_F_RST, Flow, FlowKey, Listener, ListenerKey, NO_BACKEND,
    PROTO_ICMP, Reason, ReverseNat, Scheduler, acl_prefix_len,
    select::{EntryState, Step, TCP_FIN, TCP_RST, entry_state, is_active, next_step},
    select::{acl_denies, affinity_fresh},
    vip_filter_bit,
};

use crate::{
    fwd, icmp,
    maps::{ACLS, AFFINITY, BACKENDS, FLOWS, LISTENERS, REVERSE, TABLE_META, VIP_FILTER},
    nat,
    nat::Side,
    parse,
    parse::{Ipv4, L4, Parsed},
    reset, sched,
    sched::Tuple,
    stats,
};

/// A live flow's reverse entry is refreshed at least this often while the flow sends.
const REVERSE_REFRESH_NS: u64 = 1_000_000_000;

/// The kernel checks this for GPL-only helpers (bpf_fib_lookup is one).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    stats::count(reason);
    // Per-packet logging exists only in builds that ask for it (LB_EBPF_DEBUG_LOG=1 at
    // build time): it costs more than the rest of the program.
    #[cfg(feature = "debug-log")]
    aya_log_ebpf::debug!(&ctx, "verdict {} reason {}", action, reason as u32);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let ip = match parse::ipv4(ctx) {
        Parsed::Ipv4(ip) => ip,
        Parsed::Done(action, reason) => return (action, reason),
    };
    if ip.protocol == PROTO_ICMP {
        return icmp::handle(ctx, &ip);
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

/// Client → VIP: find or make the flow, translate to the backend, send.
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
    let key = FlowKey {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        protocol: ip.protocol,
        _pad: [0; 3],
    };

    // Plain values, not Options: a `None` leaves its payload undefined, and LLVM may then
    // spill an uninitialised register, which the verifier refuses.
    let mut state = EntryState::Missing;
    let mut live_flow: *mut Flow = core::ptr::null_mut();
    let mut live_backend: *const Backend = core::ptr::null();
    let mut previous = Previous {
        backend: NO_BACKEND,
        flags: 0,
    };
    if let Some(fp) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program run.
        let f = unsafe { &*fp };
        previous = Previous {
            backend: f.backend,
            flags: f.flags,
        };
        let b = BACKENDS.get(f.backend);
        state = entry_state(now, f, b, ip.protocol, listener);
        if let (EntryState::Live { .. }, Some(b)) = (state, b) {
            live_flow = fp;
            live_backend = b;
        }
    }

    let step = next_step(ip.protocol, l4.tcp_flags, state);
    let (backend_id, backend): (u32, &Backend) =
        if step == Step::Reuse && !live_flow.is_null() && !live_backend.is_null() {
            // SAFETY: both point into map values, valid for the program run; the flow's
            // own CPU (RSS) is the usual writer, and a racing write of a timestamp or a
            // flag bit is harmless.
            let f = unsafe { &mut *live_flow };
            let b = unsafe { &*live_backend };
            // Past a drain deadline the flow is cut, except the client's own RST, which
            // goes through so the backend learns the connection is gone.
            if b.flags & BACKEND_F_DRAINING != 0
                && b.drain_deadline_ns != 0
                && now > b.drain_deadline_ns
                && l4.tcp_flags & TCP_RST == 0
            {
                note_close(f, TCP_RST);
                return cut_drained(ctx, ip, listener);
            }
            f.last_seen_ns = now;
            note_close(f, l4.tcp_flags);
            // Not on every packet: for flows whose entries are out of the CPU caches the
            // lookup doubles the cost. On one packet in eight, chosen at random, and on
            // any packet a second or more after the last refresh: the entry stays young
            // in the LRU as long as its flow sends (docs/packet-policy.md).
            // SAFETY: helper without arguments.
            let lucky = unsafe { bpf_get_prandom_u32() } & 7 == 0;
            if now.saturating_sub(f.reverse_seen_ns) >= REVERSE_REFRESH_NS
                || (lucky && f.reverse_seen_ns != now)
            {
                f.reverse_seen_ns = now;
                keep_reverse(ip, l4, listener, f.backend, b);
            }
            if listener.persistence_timeout_s > 0 {
                touch_affinity(listener, ip.src_addr, f.backend, b.generation, now);
            }
            (f.backend, b)
        } else {
            let tuple = Tuple {
                src_addr: ip.src_addr,
                dst_addr: ip.dst_addr,
                src_port: l4.src_port,
                dst_port: l4.dst_port,
            };
            match new_flow(ip, l4, listener, &key, &tuple, step, state, &previous, now) {
                Ok(v) => v,
                Err(reason) => {
                    stats::listener(listener.id, |c| c.dropped += 1);
                    return (XDP_DROP, reason);
                }
            }
        };

    if !nat::translate(ctx, ip, l4, Side::Destination, backend.addr, backend.port) {
        return (XDP_DROP, Reason::DropMalformedL4);
    }
    let route = fwd::Route {
        src_addr: ip.src_addr,
        dst_addr: backend.addr,
        src_port: l4.src_port,
        dst_port: backend.port,
        backend: backend_id,
        now,
    };
    let out = fwd::transmit(ctx, ip, &route, Reason::Forwarded);
    if out.0 != XDP_DROP {
        stats::forwarded(listener.id, backend_id, u64::from(ip.tot_len), false);
    }
    out
}

/// The flow entry a new flow replaces, if any (`backend == NO_BACKEND`: none).
struct Previous {
    backend: u32,
    flags: u32,
}

/// Records a FIN or RST from the client: the flow stops being active (and gives back its
/// `wlc` count) but stays in the table for the rest of the close.
#[inline(always)]
fn note_close(f: &mut Flow, tcp_flags: u8) {
    let seen = if tcp_flags & TCP_RST != 0 {
        FLOW_F_RST
    } else if tcp_flags & TCP_FIN != 0 {
        FLOW_F_FIN
    } else {
        return;
    };
    if f.flags & seen != 0 {
        return;
    }
    f.flags |= seen;
    if f.flags & FLOW_F_COUNTED != 0 {
        f.flags &= !FLOW_F_COUNTED;
        sched::active_add(f.backend, -1);
    }
}

/// The backend a client's affinity entry binds it to, if the entry is fresh and the
/// backend still takes new flows (present, healthy, weight > 0, not draining).
#[inline(always)]
fn affinity_backend(listener: &Listener, client: u32, now: u64) -> u32 {
    let key = AffinityKey {
        listener: listener.id,
        addr: client,
    };
    let Some(a) = AFFINITY.get_ptr(key) else {
        return NO_BACKEND;
    };
    // SAFETY: a map value pointer stays valid for the program run.
    let a = unsafe { &*a };
    if !affinity_fresh(now, a, listener.persistence_timeout_s) {
        return NO_BACKEND;
    }
    match BACKENDS.get(a.backend) {
        Some(b)
            if b.generation == a.generation
                && b.is_usable()
                && b.weight > 0
                && b.flags & BACKEND_F_DRAINING == 0 =>
        {
            a.backend
        }
        _ => NO_BACKEND,
    }
}

/// Records or refreshes a client's affinity. Writes at most once a second per client, so
/// a busy flow does not rewrite a shared entry on every packet.
#[inline(always)]
fn touch_affinity(listener: &Listener, client: u32, backend: u32, generation: u32, now: u64) {
    let key = AffinityKey {
        listener: listener.id,
        addr: client,
    };
    if let Some(a) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program run.
        let a = unsafe { &mut *a };
        if a.backend == backend && a.generation == generation {
            if now.saturating_sub(a.last_seen_ns) > 1_000_000_000 {
                a.last_seen_ns = now;
            }
            return;
        }
    }
    let _ = AFFINITY.insert(
        key,
        Affinity {
            backend,
            generation,
            last_seen_ns: now,
        },
        u64::from(BPF_ANY),
    );
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

/// Picks a backend for a new flow or a pickup, claims the backend-side 5-tuple for the
/// replies, and records the flow.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the arguments"
)]
fn new_flow(
    ip: &Ipv4,
    l4: &L4,
    listener: &Listener,
    key: &FlowKey,
    tuple: &Tuple,
    step: Step,
    state: EntryState,
    previous: &Previous,
    now: u64,
) -> Result<(u32, &'static Backend), Reason> {
    let meta = TABLE_META
        .get(listener.table)
        .ok_or(Reason::DropNoBackend)?;
    if meta.backends == 0 {
        return Err(Reason::DropNoBackend);
    }
    let persist = listener.persistence_timeout_s > 0 && step == Step::Schedule;
    let mut id = NO_BACKEND;
    if persist {
        id = affinity_backend(listener, ip.src_addr, now);
    }
    let persisted = id != NO_BACKEND;
    if !persisted {
        id = if step == Step::Pickup {
            sched::maglev_tuple(listener, tuple)
        } else {
            sched::schedule(listener, meta, tuple)
        };
    }
    let backend = sched::usable_backend(id).ok_or(Reason::DropNoBackend)?;
    if persist {
        touch_affinity(listener, ip.src_addr, id, backend.generation, now);
    }
    if persisted {
        stats::count(Reason::EventPersisted);
    }

    claim_reverse(ip, l4, listener, id, backend, now)?;

    let wlc = listener.scheduler == Scheduler::Wlc as u8;
    let mut flags = if step == Step::Pickup {
        FLOW_F_PICKUP
    } else {
        0
    };
    if l4.tcp_flags & TCP_RST != 0 {
        flags |= FLOW_F_RST;
    } else if l4.tcp_flags & TCP_FIN != 0 {
        flags |= FLOW_F_FIN;
    } else if wlc {
        flags |= FLOW_F_COUNTED;
    }
    let flow = Flow {
        backend: id,
        generation: backend.generation,
        last_seen_ns: now,
        listener: listener.id,
        flags,
        reverse_seen_ns: now,
    };
    if FLOWS.insert(key, flow, u64::from(BPF_ANY)).is_err() {
        return Err(Reason::DropFlowInsertFailed);
    }
    if previous.backend == NO_BACKEND {
        stats::count(Reason::EventFlowInserted);
    }
    if flags & FLOW_F_COUNTED != 0 {
        sched::active_add(id, 1);
    }
    if previous.flags & FLOW_F_COUNTED != 0 {
        sched::active_add(previous.backend, -1);
    }

    let reselected = state == EntryState::BackendUnusable;
    let pickup = step == Step::Pickup;
    let bump = |c: &mut lb_common::TrafficCounters| {
        if pickup {
            c.pickups += 1;
        } else {
            c.new_flows += 1;
        }
        if reselected {
            c.reselected += 1;
        }
    };
    stats::listener(listener.id, bump);
    stats::backend(id, bump);
    stats::count(if pickup {
        Reason::EventPickup
    } else {
        Reason::EventNewFlow
    });
    if reselected {
        stats::count(Reason::EventReselected);
    }
    Ok((id, backend))
}

/// Keeps a live flow's reverse entry: the two LRU tables age apart, and a flow whose
/// backend stays quiet while new flows churn the tables could lose its reverse entry
/// while its forward entry lives on. The lookup refreshes the entry's LRU position; a
/// missing one is written again (it cannot collide: its tuple is this flow's own).
#[inline(always)]
fn keep_reverse(ip: &Ipv4, l4: &L4, listener: &Listener, id: u32, backend: &Backend) {
    let (reply_key, entry) = reverse_entry(ip, l4, listener, id, backend);
    if REVERSE.get_ptr(reply_key).is_some() {
        return;
    }
    let _ = REVERSE.insert(reply_key, entry, u64::from(BPF_ANY));
}

/// The reverse-NAT key a backend's replies to this client packet's flow carry (backend
/// address and port, client address and port), and the entry that turns them back into
/// the VIP's.
#[inline(always)]
fn reverse_entry(
    ip: &Ipv4,
    l4: &L4,
    listener: &Listener,
    id: u32,
    backend: &Backend,
) -> (FlowKey, ReverseNat) {
    let reply_key = FlowKey {
        src_addr: backend.addr,
        dst_addr: ip.src_addr,
        src_port: backend.port,
        dst_port: l4.src_port,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    let entry = ReverseNat {
        vip: ip.dst_addr,
        vport: l4.dst_port,
        _pad: 0,
        listener: listener.id,
        backend: id,
        generation: backend.generation,
        _pad2: 0,
    };
    (reply_key, entry)
}

/// Records how to translate the backend's replies. The backend-side 5-tuple (backend
/// address and port, client address and port) must be unique: two client flows to
/// different VIPs that share a backend could collide. A live flow keeps its entry and the
/// newcomer is refused; an entry whose flow is gone, moved or idle is taken over.
#[inline(always)]
fn claim_reverse(
    ip: &Ipv4,
    l4: &L4,
    listener: &Listener,
    id: u32,
    backend: &Backend,
    now: u64,
) -> Result<(), Reason> {
    let (reply_key, entry) = reverse_entry(ip, l4, listener, id, backend);
    if REVERSE
        .insert(reply_key, entry, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return Ok(());
    }
    if let Some(existing) = REVERSE.get_ptr(reply_key) {
        // SAFETY: a map value pointer stays valid for the program run.
        let e = unsafe { &*existing };
        if (e.vip != entry.vip || e.vport != entry.vport) && owner_is_live(ip, l4, e, now) {
            return Err(Reason::DropReverseCollision);
        }
    }
    REVERSE
        .insert(reply_key, entry, u64::from(BPF_ANY))
        .map_err(|_| Reason::DropFlowInsertFailed)
}

/// Whether the flow that owns reverse entry `e` (same client address and port, another
/// VIP:port) still exists, still points at the same backend, and is active.
#[inline(always)]
fn owner_is_live(ip: &Ipv4, l4: &L4, e: &ReverseNat, now: u64) -> bool {
    let owner_key = FlowKey {
        src_addr: ip.src_addr,
        dst_addr: e.vip,
        src_port: l4.src_port,
        dst_port: e.vport,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    let Some(owner) = FLOWS.get_ptr(owner_key) else {
        return false;
    };
    // SAFETY: a map value pointer stays valid for the program run.
    let owner = unsafe { &*owner };
    if owner.backend != e.backend || owner.generation != e.generation {
        return false;
    }
    let owner_listener = ListenerKey {
        addr: e.vip,
        port: e.vport,
        protocol: ip.protocol,
        _pad: 0,
    };
    match LISTENERS.get_ptr(owner_listener) {
        // SAFETY: as above.
        Some(l) => is_active(now, owner, ip.protocol, unsafe { &*l }),
        None => false,
    }
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
                note_close(f, l4.tcp_flags);
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
