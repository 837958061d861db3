//! The new-flow stage, `lb_new_flow`: entered by tail call from `lb_xdp` for a packet that
//! starts a flow or is picked up mid-flow. The decision (`lb_common::decide::pick`) picks
//! the backend (affinity, the listener's scheduler, or the Maglev table for a pickup;
//! `wlc` through the `lb_wlc` stage); this stage records the flow and sends the packet.
//! The backend's replies find the flow through the backend endpoint (`flow::reply_flow`):
//! one table insert per new flow.

use aya_ebpf::{
    bindings::{BPF_ANY, xdp_action::XDP_DROP},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Backend, FLOW_F_COUNTED, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_PICKUP, FLOW_F_REOPENED,
    FLOW_F_RST, Flow, Listener, NO_BACKEND, Opened, PENDING_F_SCANNED, Reason, STAGE_WLC,
    Scheduler, V4,
    decide::{self, Opening, Pick},
    select::{EntryState, Step, TCP_ACK, TCP_FIN, TCP_RST},
};

use crate::{
    family::Tables,
    flow,
    maps::{PENDING, backend_cpu, warm_backend_cpu},
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
    let maps = Maps::new();
    let (id, backend, persisted) =
        match decide::pick(&maps, &mut (), listener, &packet, &opening, scanned, now) {
            Pick::Backend {
                id,
                backend,
                persisted,
            } => (id, backend, persisted),
            Pick::Scan => return stage::enter(ctx, STAGE_WLC),
            Pick::Fail(reason) => return refuse(listener, reason),
        };
    // Its cache miss overlaps the flow's insert instead of following it. Looked up again
    // for the send: a record pointer kept across the insert doubles the verifier's paths.
    warm_backend_cpu(id);
    let client = Client {
        addr: ip.src_addr,
        l4: &l4,
        protocol: ip.protocol,
    };
    if let Err(reason) = open::<V4>(
        &client,
        listener,
        &opening,
        &pending.key,
        id,
        &backend,
        persisted,
        now,
    ) {
        return refuse(listener, reason);
    }
    flow::send_to_backend(ctx, &ip, &l4, listener, id, backend_cpu(id), &backend, now)
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

/// Records a new flow with its picked backend, in its family's tables: the client's
/// affinity, the flow entry and the counters.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per family; a struct would only rename the arguments"
)]
pub fn open<F: Tables>(
    client: &Client<'_, F::Addr>,
    listener: &Listener,
    opening: &Opening,
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
    if persisted {
        stats::count(Reason::EventPersisted);
    }

    // Until the client acknowledges, the flow is half-open: it may be a forged SYN. It
    // lives in the half-open tables. It counts for `wlc` at once, so a burst of new
    // connections spreads; the sweep's recount leaves it out until its ACK.
    let tcp = client.protocol == lb_common::PROTO_TCP;
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
        return Err(Reason::DropReverseCollision);
    }

    let wlc = listener.scheduler == Scheduler::Wlc as u8;
    let mut flags = if pickup { FLOW_F_PICKUP } else { 0 };
    if l4.tcp_flags & TCP_RST != 0 {
        flags |= FLOW_F_RST;
    } else if l4.tcp_flags & TCP_FIN != 0 {
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
    if table.insert(key, entry, u64::from(BPF_ANY)).is_err() {
        return Err(Reason::DropFlowInsertFailed);
    }
    if !half_open {
        F::note_insert(key);
    }
    // A key lives in one table: the entry this flow replaces may be in the other (a
    // reopened connection's closing entry, an expired half-open one).
    let previous = opening.previous_backend != NO_BACKEND;
    if previous {
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
