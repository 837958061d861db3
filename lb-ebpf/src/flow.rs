//! What the entry program and the new-flow stage both do with a flow, for either address
//! family (`family::Tables`): finding it from a backend's reply, its close, its affinity;
//! and for IPv4, sending its packet to the backend (`flow6` does it for IPv6).

use core::{ffi::c_void, hint::cold_path};

use aya_ebpf::{
    bindings::{BPF_ANY, xdp_action::XDP_DROP},
    helpers::generated::bpf_loop,
    programs::XdpContext,
};
use lb_common::{
    Affinity, BACKEND_F_SHARED_ENDPOINT, Backend, BackendCpu, Encapsulation, FLOW_F_BACKEND_ACKED,
    FLOW_F_COUNTED, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_REOPENED, FLOW_F_RST, Flow, Listener,
    MAX_ENDPOINT_LISTENERS, PROTO_TCP, Reason, TOO_BIG_DESTINATION,
    decide::Packet,
    select::{TCP_ACK, TCP_FIN, TCP_RST, backend_close_is_credible, close_is_credible, is_active},
};

use crate::{
    encap,
    family::{Served, Tables},
    fwd,
    maps::BACKENDS,
    nat,
    nat::Side,
    parse::{Ipv4, L4},
    sched, stats,
};

/// A flow's entry: established flows in `FLOWS`, half-open ones in `HALF_OPEN` (their
/// family's). A key is in one of them at a time (opening and promotion move it).
#[inline(always)]
pub fn lookup<F: Tables>(key: &F::FlowKey) -> Option<*mut Flow> {
    F::flows()
        .get_ptr_mut(key)
        .or_else(|| F::half_open().get_ptr_mut(key))
}

/// The flow a backend's packet belongs to, found from the backend endpoint it comes from
/// (`ENDPOINTS`) and the client it goes to.
pub struct Reply<A> {
    pub flow: *mut Flow,
    /// What the packet's source becomes: the VIP and port the client talks to.
    pub vip: A,
    pub vport: u16,
    pub listener: u32,
}

/// Matches a packet from `backend_addr:backend_port` to `client_addr:client_port` with the
/// flow it answers: for each listener the endpoint serves, the flow entry of (client, VIP,
/// listener port) if it names this backend; of several, the one with the latest client
/// packet (an older flow of the same client port to another VIP is closed or stale: a live
/// one would have refused the newer, `shared_endpoint_collision`). No match: not a reply of
/// ours, and the kernel gets the packet; so does a backend's answer to the LB's own health
/// probe, whose client side (the LB's address) no flow can have.
///
/// An endpoint of one listener, the common case, costs one flow lookup. Several are
/// searched in a `bpf_loop`, verified once: an unrolled search of eight listeners with two
/// tables each multiplies the verifier's paths past its budget.
#[inline(always)]
pub fn reply_flow<F: Tables>(
    backend_addr: F::Addr,
    backend_port: u16,
    client_addr: F::Addr,
    client_port: u16,
    protocol: u8,
) -> Option<Reply<F::Addr>> {
    let key = F::endpoint_key(backend_addr, backend_port, protocol);
    let endpoint = F::endpoints().get_ptr(key)?;
    // SAFETY: a map value pointer stays valid for the program run.
    let count = unsafe { (*endpoint).count };
    let index = if count == 1 {
        0
    } else {
        let mut search = EndpointSearch::<F> {
            key,
            client_addr,
            client_port,
            _pad: 0,
            best: u32::MAX,
            best_seen: 0,
        };
        // SAFETY: the callback and its context follow bpf_loop's contract (kernel ≥ 5.17).
        unsafe {
            bpf_loop(
                count.min(MAX_ENDPOINT_LISTENERS as u32),
                search_step::<F> as *mut c_void,
                (&raw mut search).cast::<c_void>(),
                0,
            )
        };
        search.best
    };
    // SAFETY: as above.
    let l = unsafe { (*endpoint).listeners.get(index as usize)? };
    let flow = candidate::<F>(&key, client_addr, client_port, l)?;
    Some(Reply {
        flow,
        vip: l.vip(),
        vport: l.vport(),
        listener: l.listener(),
    })
}

/// The flow of endpoint listener `l` for this client, if it names the endpoint's backend.
#[inline(always)]
fn candidate<F: Tables>(
    endpoint: &F::EndpointKey,
    client_addr: F::Addr,
    client_port: u16,
    l: &F::Served,
) -> Option<*mut Flow> {
    let f = lookup::<F>(&F::flow_key(
        client_addr,
        l.vip(),
        client_port,
        l.vport(),
        F::endpoint_protocol(endpoint),
    ))?;
    // SAFETY: a map value pointer stays valid for the program run.
    let id = unsafe { (*f).backend };
    let b = BACKENDS.get(id)?;
    F::backend_is(id, b, endpoint).then_some(f)
}

/// Listener `index` of endpoint `key`, looked up again inside a `bpf_loop` callback (its
/// context holds plain values, not map pointers).
#[inline(always)]
fn endpoint_listener<F: Tables>(key: &F::EndpointKey, index: u64) -> Option<&'static F::Served> {
    let endpoint = F::endpoints().get_ptr(key)?;
    // SAFETY: a map value pointer stays valid for the program run.
    unsafe { (*endpoint).listeners.get(index as usize) }
}

/// The state of a search over an endpoint's listeners: plain values only, the callback
/// looks the endpoint up again.
#[repr(C)]
struct EndpointSearch<F: Tables> {
    key: F::EndpointKey,
    client_addr: F::Addr,
    client_port: u16,
    _pad: u16,
    /// Index of the best candidate so far (`u32::MAX`: none).
    best: u32,
    best_seen: u64,
}

/// One listener of the endpoint: the body of the `bpf_loop`.
extern "C" fn search_step<F: Tables>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `reply_flow` gave it, to a live stack value.
    let search = unsafe { &mut *ctx.cast::<EndpointSearch<F>>() };
    let Some(l) = endpoint_listener::<F>(&search.key, index) else {
        return 1;
    };
    if let Some(f) = candidate::<F>(&search.key, search.client_addr, search.client_port, l) {
        // SAFETY: as above.
        let seen = unsafe { (*f).last_seen_ns };
        if search.best == u32::MAX || seen > search.best_seen {
            search.best = index as u32;
            search.best_seen = seen;
        }
    }
    0
}

/// Whether a new flow of `listener` from this client address and port to backend `id`
/// would share its backend-side 5-tuple with a live flow of another listener served by the
/// same backend endpoint: the backend could not tell their packets apart, so the newcomer
/// is refused. Only endpoints serving several listeners need the search.
#[inline(always)]
pub fn shared_endpoint_collision<F: Tables>(
    protocol: u8,
    client_addr: F::Addr,
    client_port: u16,
    listener: &Listener,
    id: u32,
    backend: &Backend,
    now: u64,
) -> bool {
    if backend.flags & BACKEND_F_SHARED_ENDPOINT == 0 {
        return false;
    }
    // Only for a backend endpoint several listeners share.
    cold_path();
    let Some(key) = F::backend_endpoint(id, backend, protocol) else {
        return false;
    };
    let Some(endpoint) = F::endpoints().get_ptr(key) else {
        return false;
    };
    // SAFETY: a map value pointer stays valid for the program run.
    let count = unsafe { (*endpoint).count };
    if count <= 1 {
        return false;
    }
    let mut search = CollisionSearch::<F> {
        key,
        client_addr,
        client_port,
        _pad: 0,
        listener: listener.id,
        _pad1: 0,
        now,
        found: 0,
        _pad2: 0,
    };
    // SAFETY: the callback and its context follow bpf_loop's contract (kernel ≥ 5.17).
    unsafe {
        bpf_loop(
            count.min(MAX_ENDPOINT_LISTENERS as u32),
            collision_step::<F> as *mut c_void,
            (&raw mut search).cast::<c_void>(),
            0,
        )
    };
    search.found != 0
}

#[repr(C)]
struct CollisionSearch<F: Tables> {
    key: F::EndpointKey,
    client_addr: F::Addr,
    client_port: u16,
    _pad: u16,
    /// The new flow's listener, skipped.
    listener: u32,
    _pad1: u32,
    now: u64,
    found: u32,
    _pad2: u32,
}

/// One listener of the endpoint: does it hold a live flow of this client on this backend?
extern "C" fn collision_step<F: Tables>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `shared_endpoint_collision` gave it.
    let search = unsafe { &mut *ctx.cast::<CollisionSearch<F>>() };
    let Some(l) = endpoint_listener::<F>(&search.key, index) else {
        return 1;
    };
    if l.listener() == search.listener {
        return 0;
    }
    let Some(f) = candidate::<F>(&search.key, search.client_addr, search.client_port, l) else {
        return 0;
    };
    // SAFETY: as above.
    let owner = unsafe { &*f };
    // Generations count per backend id, and the owner's id is the other listener's entry
    // for this endpoint: its flow belongs to that entry's current owner, or to nobody.
    if BACKENDS
        .get(owner.backend)
        .is_none_or(|b| b.generation != owner.generation)
    {
        return 0;
    }
    let protocol = F::endpoint_protocol(&search.key);
    let owner_listener = F::listener_key(l.vip(), l.vport(), protocol);
    if let Some(ol) = F::listeners().get_ptr(owner_listener)
        // SAFETY: as above.
        && is_active(search.now, owner, protocol, unsafe { &*ol })
    {
        search.found = 1;
        return 1;
    }
    0
}

/// The client has acknowledged: its half-open flow (`f`, in `HALF_OPEN`, under `key`)
/// moves to the table of established flows. `f` must not be used afterwards: its memory
/// goes back to the half-open table.
#[inline(always)]
pub fn promote<F: Tables>(key: &F::FlowKey, f: &Flow) {
    let mut established = *f;
    let new_key = established.flags & FLOW_F_REOPENED == 0;
    established.flags &= !FLOW_F_REOPENED;
    if F::flows()
        .insert(key, established, u64::from(BPF_ANY))
        .is_err()
    {
        return;
    }
    F::note_insert(key);
    if new_key {
        stats::count(Reason::EventFlowInserted);
    }
    let _ = F::half_open().remove(key);
}

/// What a client packet of an established flow does to its entry, in either family: the
/// entry's clock, the client's acknowledgement and close, the client's affinity, and the
/// end of the half-open state (the entry moves to `FLOWS`: `f` must not be used after).
#[inline(always)]
pub fn client_packet<F: Tables>(
    listener: &Listener,
    packet: &Packet<F>,
    l4: &L4,
    f: &mut Flow,
    generation: u32,
    now: u64,
) {
    // The coarse clock moves once per tick: most packets of a busy flow find the entry
    // already up to date and leave its cache line clean.
    if f.last_seen_ns != now {
        f.last_seen_ns = now;
    }
    let opening = f.flags & FLOW_F_OPENING != 0;
    if packet.protocol == PROTO_TCP {
        note_client_ack(f, l4);
        client_close(l4, f);
    }
    if listener.persistence_timeout_s > 0 {
        touch_affinity::<F>(listener, packet.src_addr, f.backend, generation, now);
    }
    // The handshake's last step: the flow leaves the half-open table (and `f` with it).
    if opening && f.flags & FLOW_F_OPENING == 0 {
        // Once per flow.
        cold_path();
        promote::<F>(&packet.flow_key(), f);
    }
}

/// What a backend's packet does to its flow's entry, in either family.
#[inline(always)]
pub fn backend_packet(f: &mut Flow, l4: &L4, protocol: u8) {
    if protocol != PROTO_TCP {
        return;
    }
    // What the backend acknowledged makes the client's FIN or RST credible or not.
    note_backend_ack(f, l4);
    // The backend closes or refuses: the flow stops being active (for wlc, status and
    // wait drained) even if the client never answers, provided the FIN or RST fits what
    // the client last acknowledged.
    if l4.tcp_flags & (TCP_FIN | TCP_RST) != 0
        && backend_close_is_credible(f, l4.seq, l4.ack, l4.tcp_flags)
    {
        note_close(f, l4.tcp_flags);
    }
}

/// Keeps what the client last acknowledged (for the credibility of the backend's FIN or
/// RST) and ends the half-open state: a client that acknowledges has completed the
/// handshake.
#[inline(always)]
pub fn note_client_ack(f: &mut Flow, l4: &L4) {
    if l4.tcp_flags & TCP_ACK == 0 {
        return;
    }
    if f.client_acked != l4.ack {
        f.client_acked = l4.ack;
    }
    if f.flags & FLOW_F_OPENING != 0 {
        f.flags &= !FLOW_F_OPENING;
    }
}

/// A FIN or RST from the client of a live flow: it closes the flow only if its sequence
/// number fits what the backend last acknowledged (`close_is_credible`), which the reply
/// path keeps in the flow entry.
#[inline(always)]
pub fn client_close(l4: &L4, f: &mut Flow) {
    if l4.tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    if close_is_credible(l4.seq, f.backend_acked, f.flags & FLOW_F_BACKEND_ACKED != 0) {
        note_close(f, l4.tcp_flags);
    }
}

/// Keeps what the backend last acknowledged (for the credibility of the client's FIN or
/// RST), written only when it changes.
#[inline(always)]
pub fn note_backend_ack(f: &mut Flow, l4: &L4) {
    if l4.tcp_flags & TCP_ACK == 0 {
        return;
    }
    if f.backend_acked != l4.ack {
        f.backend_acked = l4.ack;
    }
    // The flags word is the forward path's too (another CPU may be clearing the opening
    // bit): written once per flow here, not on every reply.
    if f.flags & FLOW_F_BACKEND_ACKED == 0 {
        f.flags |= FLOW_F_BACKEND_ACKED;
    }
}

/// Records a FIN or RST: the flow stops being active (and gives back its `wlc` count) but
/// stays in the table for the rest of the close.
#[inline(always)]
pub fn note_close(f: &mut Flow, tcp_flags: u8) {
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

/// Records or refreshes a client's affinity. Writes at most once a second per client, so
/// a busy flow does not rewrite a shared entry on every packet.
#[inline(always)]
pub fn touch_affinity<F: Tables>(
    listener: &Listener,
    client: F::Addr,
    backend: u32,
    generation: u32,
    now: u64,
) {
    let key = F::affinity_key(listener.id, client);
    if let Some(a) = F::affinity().get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program run.
        let a = unsafe { &mut *a };
        if a.backend == backend && a.generation == generation {
            if now.saturating_sub(a.last_seen_ns) > 1_000_000_000 {
                a.last_seen_ns = now;
            }
            return;
        }
    }
    let _ = F::affinity().insert(
        key,
        Affinity {
            backend,
            generation,
            last_seen_ns: now,
        },
        u64::from(BPF_ANY),
    );
}

/// Client → backend: translates the packet to the backend (`forwarding: nat`) or
/// encapsulates it (`dsr`), sends it, counts it.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the packet, its listener and its backend: one call site per stage"
)]
pub fn send_to_backend(
    ctx: &XdpContext,
    ip: &Ipv4,
    l4: &L4,
    listener: &Listener,
    backend_id: u32,
    record: Option<*mut BackendCpu>,
    backend: &Backend,
    now: u64,
) -> (u32, Reason) {
    // `record` (this CPU's `BACKEND_CPU` record of the backend, looked up once per packet)
    // holds the cached next hop and the backend's counters.
    let out = if listener.encapsulation == Encapsulation::None as u8 {
        translate_to_backend(ctx, ip, l4, backend_id, record, backend, now)
    } else {
        let delivery = encap::Delivery {
            listener,
            backend_id,
            backend,
            record,
            now,
            src_port: l4.src_port,
            dst_port: l4.dst_port,
            side: TOO_BIG_DESTINATION,
            sent: Reason::Encapsulated,
        };
        encap::send(ctx, ip, &delivery)
    };
    if out.0 != XDP_DROP {
        stats::forwarded_with(listener.id, record, u64::from(ip.tot_len));
    }
    out
}

#[inline(always)]
fn translate_to_backend(
    ctx: &XdpContext,
    ip: &Ipv4,
    l4: &L4,
    backend_id: u32,
    record: Option<*mut BackendCpu>,
    backend: &Backend,
    now: u64,
) -> (u32, Reason) {
    if !nat::translate(ctx, ip, l4, Side::Destination, backend.addr, backend.port) {
        return (XDP_DROP, Reason::DropMalformedL4);
    }
    let route = fwd::Route {
        src_addr: ip.src_addr,
        dst_addr: backend.addr,
        src_port: l4.src_port,
        dst_port: backend.port,
        backend: backend_id,
        record,
        now,
        side: TOO_BIG_DESTINATION,
        original_addr: ip.dst_addr,
        original_port: l4.dst_port,
        overhead: 0,
        want_source: false,
    };
    fwd::transmit(ctx, ip, &route, Reason::Forwarded)
}
