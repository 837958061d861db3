//! The new-flow stage, `lb_new_flow`: entered by tail call from `lb_xdp` for a packet that
//! starts a flow or is picked up mid-flow. It picks the backend (affinity, the listener's
//! scheduler, or the Maglev table for a pickup; `wlc` through the `lb_wlc` stage), claims
//! the backend-side 5-tuple for the replies, records the flow and sends the packet.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action::XDP_DROP},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    BACKEND_F_DRAINING, Backend, FLOW_F_COUNTED, FLOW_F_FIN, FLOW_F_PICKUP, FLOW_F_RST, Flow,
    Listener, ListenerKey, NO_BACKEND, PENDING_F_SCANNED, PendingFlow, Reason, ReverseNat,
    STAGE_WLC, Scheduler,
    select::{EntryState, Step, TCP_FIN, TCP_RST, affinity_fresh, is_active},
};

use crate::{
    flow,
    maps::{AFFINITY, BACKENDS, FLOWS, LISTENERS, PENDING, REVERSE, TABLE_META},
    parse,
    parse::{Ipv4, L4, Parsed},
    sched,
    sched::Tuple,
    stage, stats,
};

#[xdp]
pub fn lb_new_flow(ctx: XdpContext) -> u32 {
    let verdict = run(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn run(ctx: &XdpContext) -> (u32, Reason) {
    let ip = match parse::ipv4(ctx) {
        Parsed::Ipv4(ip) => ip,
        Parsed::Done(action, reason) => return (action, reason),
    };
    let Some(l4) = parse::l4(ctx, &ip) else {
        return (XDP_DROP, Reason::DropMalformedL4);
    };
    let Some(pending) = PENDING.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let pending = unsafe { &mut *pending };
    // The hand-off must be this packet's: a stage run on its own (a test run) finds
    // whatever the last packet on this CPU left.
    if pending.key != flow::client_key(&ip, &l4) {
        return (XDP_DROP, Reason::DropStageFailed);
    }
    let listener = pending.listener;
    match open(&ip, &l4, &listener, pending) {
        Ok(Opened::Backend(id, backend)) => {
            flow::send_to_backend(ctx, &ip, &l4, listener.id, id, backend, pending.now_ns)
        }
        Ok(Opened::Scan) => stage::enter(ctx, STAGE_WLC),
        Err(reason) => {
            stats::listener(listener.id, |c| c.dropped += 1);
            (XDP_DROP, reason)
        }
    }
}

/// What `open` did with the flow.
enum Opened {
    /// Recorded, with this backend.
    Backend(u32, &'static Backend),
    /// Needs the `wlc` scan first (the `lb_wlc` stage, which comes back here).
    Scan,
}

/// Picks a backend for a new flow or a pickup, claims the backend-side 5-tuple for the
/// replies, and records the flow.
#[inline(always)]
fn open(ip: &Ipv4, l4: &L4, listener: &Listener, pending: &PendingFlow) -> Result<Opened, Reason> {
    let now = pending.now_ns;
    let step = Step::from_code(pending.step);
    let state = EntryState::from_code(pending.state);
    let scanned = pending.flags & PENDING_F_SCANNED != 0;
    let meta = TABLE_META
        .get(listener.table)
        .ok_or(Reason::DropNoBackend)?;
    if meta.backends == 0 {
        return Err(Reason::DropNoBackend);
    }
    let tuple = Tuple {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
    };
    let persist = listener.persistence_timeout_s > 0 && step == Step::Schedule;
    let mut id = NO_BACKEND;
    // After the scan, the affinity lookup is known to have found nothing.
    if persist && !scanned {
        id = affinity_backend(listener, ip.src_addr, now);
    }
    let persisted = id != NO_BACKEND;
    if !persisted {
        id = if scanned {
            pending.picked
        } else if step == Step::Pickup {
            sched::maglev_tuple(listener, &tuple)
        } else if listener.scheduler == Scheduler::Wlc as u8 {
            return Ok(Opened::Scan);
        } else {
            sched::schedule(listener, meta, &tuple)
        };
    }
    let backend = sched::usable_backend(id).ok_or(Reason::DropNoBackend)?;
    if persist {
        flow::touch_affinity(listener, ip.src_addr, id, backend.generation, now);
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
    let entry = Flow {
        backend: id,
        generation: backend.generation,
        last_seen_ns: now,
        listener: listener.id,
        flags,
        reverse_seen_ns: now,
    };
    if FLOWS
        .insert(pending.key, entry, u64::from(BPF_ANY))
        .is_err()
    {
        return Err(Reason::DropFlowInsertFailed);
    }
    if pending.previous_backend == NO_BACKEND {
        stats::count(Reason::EventFlowInserted);
    }
    if flags & FLOW_F_COUNTED != 0 {
        sched::active_add(id, 1);
    }
    if pending.previous_flags & FLOW_F_COUNTED != 0 {
        sched::active_add(pending.previous_backend, -1);
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
    Ok(Opened::Backend(id, backend))
}

/// The backend a client's affinity entry binds it to, if the entry is fresh and the
/// backend still takes new flows (present, healthy, weight > 0, not draining).
#[inline(always)]
fn affinity_backend(listener: &Listener, client: u32, now: u64) -> u32 {
    let key = lb_common::AffinityKey {
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
    let (reply_key, entry) = flow::reverse_entry(ip, l4, listener, id, backend);
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
    let owner_key = lb_common::FlowKey {
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
