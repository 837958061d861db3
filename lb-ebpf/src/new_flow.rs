//! The new-flow stage, `lb_new_flow`: entered by tail call from `lb_xdp` for a packet that
//! starts a flow or is picked up mid-flow. The decision (`lb_common::decide::pick`) picks
//! the backend (affinity, the listener's scheduler, or the Maglev table for a pickup;
//! `wlc` through the `lb_wlc` stage); this stage records the flow and sends the packet.
//! The backend's replies find the flow through the backend endpoint (`flow::reply_flow`):
//! one table insert per new flow.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action::XDP_DROP},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Backend, FLOW_F_COUNTED, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_PICKUP, FLOW_F_REOPENED,
    FLOW_F_RST, Family, Flow, Listener, NO_BACKEND, Opened, PENDING_F_EXCLUSIVE,
    PENDING_F_PERSISTED, PENDING_F_RECHECK, PENDING_F_SCANNED, PROTO_TCP, Reason, STAGE_ENTRY,
    STAGE_WLC, Scheduler, V4,
    decide::{self, Opening, Packet, Pick},
    select::{EntryState, Step, TCP_ACK, TCP_FIN, TCP_RST, is_tcp_open},
};

use crate::{
    family::Tables,
    flow,
    maps::{PENDING, backend_cpu},
    parse,
    parse::{L4, Parsed},
    sched, stage, stats,
    tables::Maps,
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
    let packet = parse::packet(&ip, &l4);
    // The hand-off must be this packet's: a stage run on its own (a test run) finds
    // whatever the last packet on this CPU left.
    if pending.key != packet.flow_key() {
        cold_path();
        return (XDP_DROP, Reason::DropStageFailed);
    }
    // By reference: a copy would take 40 of the stack's 512 bytes.
    let listener = &pending.listener;
    let opening = Opening {
        step: Step::from_code(pending.step),
        state: EntryState::from_code(pending.state),
        previous_backend: pending.previous_backend,
        previous_flags: pending.previous_flags,
    };
    let scanned = if pending.flags & PENDING_F_SCANNED != 0 {
        Some(pending.picked)
    } else {
        None
    };
    let now = pending.now_ns;
    let maps = Maps::for_new_flow();
    let (id, backend, persisted) =
        match decide::pick(&maps, &mut (), listener, &packet, &opening, scanned, now) {
            Pick::Backend {
                id,
                backend,
                persisted,
            } => (id, backend, persisted),
            Pick::Scan => return stage::enter(ctx, STAGE_WLC),
            Pick::Fail(reason) => {
                cold_path();
                return refuse(listener, reason);
            }
        };
    note_persisted(&mut pending.flags, persisted);
    let client = Client {
        addr: ip.src_addr,
        l4: &l4,
        protocol: ip.protocol,
    };
    if let Err(reason) = open::<V4>(
        &client,
        listener,
        &opening,
        insert_mode(pending.flags),
        &pending.key,
        id,
        &backend,
        persisted,
        now,
    ) {
        cold_path();
        if reason == Reason::EventSynRechecked {
            return recheck(ctx, &mut pending.flags, STAGE_ENTRY);
        }
        return refuse(listener, reason);
    }
    // The record `maps` started loading, looked up again: a pointer kept across the
    // insert doubles the verifier's paths.
    flow::send_to_backend(ctx, &ip, &l4, listener, id, backend_cpu(id), &backend, now)
}

/// `PENDING_F_EXCLUSIVE` for a SYN that found no entry on the first pass (its half-open
/// lookup left to the insert), else 0.
#[inline(always)]
pub fn exclusive_insert<F: Family>(recheck: bool, packet: &Packet<F>, opening: &Opening) -> u8 {
    if !recheck
        && packet.protocol == PROTO_TCP
        && is_tcp_open(packet.tcp_flags)
        && opening.previous_backend == NO_BACKEND
    {
        PENDING_F_EXCLUSIVE
    } else {
        0
    }
}

/// Notes in the hand-off whether the pick was the client's affinity backend, for
/// `recheck`: in memory and without a branch, as a value kept in a register until then
/// would have the verifier walk the stage once per value.
#[inline(always)]
pub fn note_persisted(pending_flags: &mut u8, persisted: bool) {
    *pending_flags |= PENDING_F_PERSISTED * u8::from(persisted);
}

/// The flow insert's mode (`BPF_NOEXIST` or `BPF_ANY`) from the hand-off's flags
/// (`PENDING_F_EXCLUSIVE`). Arithmetic, opaque to the compiler: a branch on it, or code
/// specialised per mode, would have the verifier walk the rest of the stage once per
/// mode.
#[inline(always)]
pub fn insert_mode(pending_flags: u8) -> u64 {
    const _: () = assert!(BPF_ANY == 0 && BPF_NOEXIST == 1);
    core::hint::black_box(u64::from((pending_flags / PENDING_F_EXCLUSIVE) & 1))
}

/// A SYN whose half-open entry `open` found (`EventSynRechecked`), handed back to its
/// family's entry program (`entry`) to be decided with that entry. A SYN `open` counted
/// as sent to its affinity backend (`PENDING_F_PERSISTED`) is counted by the second pass
/// if it still is.
#[inline(always)]
pub fn recheck(ctx: &XdpContext, pending_flags: &mut u8, entry: u32) -> (u32, Reason) {
    stats::count(Reason::EventSynRechecked);
    if *pending_flags & PENDING_F_PERSISTED != 0 {
        stats::uncount(Reason::EventPersisted);
    }
    *pending_flags |= PENDING_F_RECHECK;
    stage::enter(ctx, entry)
}

#[inline(always)]
pub fn refuse(listener: &Listener, reason: Reason) -> (u32, Reason) {
    stats::listener(listener.id, |c| c.dropped += 1);
    (XDP_DROP, reason)
}

/// The client side of a new flow's packet, of either family.
pub struct Client<'a, A> {
    pub addr: A,
    pub l4: &'a L4,
    pub protocol: u8,
}

/// The errno of an insert with `BPF_NOEXIST` whose key is present.
const EEXIST: i32 = 17;

/// Records a new flow with its picked backend, in its family's tables: the client's
/// affinity, the flow entry and the counters. The flow entry is inserted in `mode`
/// (`insert_mode`): a SYN that found no entry only if its key is still absent, since the
/// entry program leaves its half-open lookup to this insert. Err is the refusal's
/// reason, or `EventSynRechecked` when the half-open table holds the key: the caller hands
/// the SYN back to the entry program, which decides with that entry (`recheck`). A
/// `Reason` rather than an enum of its own: the verifier walks the callers' rest once per
/// shape of what reaches it, and this shape is the one it walked before.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per family; a struct would only rename the arguments"
)]
pub fn open<F: Tables>(
    client: &Client<'_, F::Addr>,
    listener: &Listener,
    opening: &Opening,
    mode: u64,
    key: &F::FlowKey,
    id: u32,
    backend: &Backend,
    persisted: bool,
    now: u64,
) -> Result<(), Reason> {
    let l4 = client.l4;
    let pickup = opening.step == Step::Pickup;
    if listener.persistence_timeout_s > 0 && !pickup {
        flow::touch_affinity::<F>(listener, client.addr, id, backend.generation, now);
    }
    // Before the insert, where it costs the verifier least: `recheck` takes it back for a
    // SYN handed back. The affinity above is written again by the second pass, with the
    // backend the SYN then goes to.
    if persisted {
        stats::count(Reason::EventPersisted);
    }

    // Until the client acknowledges, the flow is half-open: it may be a forged SYN. It
    // lives in the half-open tables. It counts for `wlc` at once, so a burst of new
    // connections spreads; the sweep's recount leaves it out until its ACK.
    let tcp = client.protocol == PROTO_TCP;
    let half_open = tcp && l4.tcp_flags & TCP_ACK == 0;
    if flow::shared_endpoint_collision::<F>(
        client.protocol,
        client.addr,
        l4.src_port,
        listener,
        id,
        backend,
        now,
    ) {
        cold_path();
        return Err(Reason::DropReverseCollision);
    }

    let wlc = listener.scheduler == Scheduler::Wlc as u8;
    let mut flags = if pickup { FLOW_F_PICKUP } else { 0 };
    if l4.tcp_flags & TCP_RST != 0 {
        cold_path();
        flags |= FLOW_F_RST;
    } else if l4.tcp_flags & TCP_FIN != 0 {
        cold_path();
        flags |= FLOW_F_FIN;
    } else if wlc {
        flags |= FLOW_F_COUNTED;
    }
    if half_open {
        flags |= FLOW_F_OPENING;
        if opening.previous_backend != NO_BACKEND && opening.previous_flags & FLOW_F_OPENING == 0 {
            flags |= FLOW_F_REOPENED;
        }
    }
    let entry = Flow {
        backend: id,
        generation: backend.generation,
        last_seen_ns: now,
        listener: listener.id,
        flags,
        // Half-open: what a refusing backend acknowledges; otherwise what the client did.
        client_acked: if flags & FLOW_F_OPENING != 0 {
            l4.seq.wrapping_add(1)
        } else if tcp {
            l4.ack
        } else {
            0
        },
        backend_acked: 0,
    };
    let table = if half_open {
        F::half_open()
    } else {
        F::flows()
    };
    match table.insert(key, entry, mode) {
        Ok(()) => {}
        // Only `BPF_NOEXIST` fails this way.
        Err(e) if e == -EEXIST => return Err(Reason::EventSynRechecked),
        Err(_) => return Err(Reason::DropFlowInsertFailed),
    }
    if !half_open {
        F::note_insert(key);
    }
    // A key lives in one table: the entry this flow replaces may be in the other (a
    // reopened connection's closing entry, an expired half-open one).
    let previous = opening.previous_backend != NO_BACKEND;
    if previous {
        cold_path();
        let _ = if half_open {
            F::flows().remove(key)
        } else {
            F::half_open().remove(key)
        };
    }
    // Inserts into `FLOWS` of a key it did not hold: with the entries present, they tell
    // the evictions (half-open flows count when promoted).
    if !half_open && (!previous || opening.previous_flags & FLOW_F_OPENING != 0) {
        stats::count(Reason::EventFlowInserted);
    }
    if flags & FLOW_F_COUNTED != 0 {
        sched::active_add(id, 1);
    }
    // An expired entry's count is already gone: the controller's recount leaves out
    // expired flows, and giving it back again would take the count below zero.
    if opening.previous_flags & FLOW_F_COUNTED != 0 && opening.state != EntryState::Expired {
        sched::active_add(opening.previous_backend, -1);
    }

    let reselected = opening.state == EntryState::BackendUnusable;
    stats::opened(listener.id, id, Opened { pickup, reselected });
    stats::count(if pickup {
        Reason::EventPickup
    } else {
        Reason::EventNewFlow
    });
    if reselected {
        stats::count(Reason::EventReselected);
    }
    Ok(())
}
