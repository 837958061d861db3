//! What the entry program and the new-flow stage both do with a flow: its close, its
//! reverse entry and affinity, and sending its packet to the backend.

use aya_ebpf::{
    bindings::{BPF_ANY, xdp_action::XDP_DROP},
    programs::XdpContext,
};
use lb_common::{
    Affinity, AffinityKey, Backend, FLOW_F_COUNTED, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_REOPENED,
    FLOW_F_RST, Flow, FlowKey, Listener, REVERSE_F_ACKED, Reason, ReverseNat, TOO_BIG_DESTINATION,
    select::{TCP_ACK, TCP_FIN, TCP_RST, close_is_credible},
};

use crate::{
    fwd,
    maps::{AFFINITY, FLOWS, HALF_OPEN, HALF_OPEN_REVERSE, REVERSE},
    nat,
    nat::Side,
    parse::{Ipv4, L4},
    sched, stats,
};

/// A flow's entry: established flows in `FLOWS`, half-open ones in `HALF_OPEN`. A key is
/// in one of them at a time (opening and promotion move it).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<*mut Flow> {
    FLOWS
        .get_ptr_mut(key)
        .or_else(|| HALF_OPEN.get_ptr_mut(key))
}

/// A reverse entry, in `REVERSE` or, for a half-open flow, `HALF_OPEN_REVERSE`.
#[inline(always)]
pub fn lookup_reverse(key: &FlowKey) -> Option<*mut ReverseNat> {
    REVERSE
        .get_ptr_mut(key)
        .or_else(|| HALF_OPEN_REVERSE.get_ptr_mut(key))
}

/// The client has acknowledged: its half-open flow (`f`, in `HALF_OPEN`) and reverse entry
/// move to the tables of established flows. `f` must not be used afterwards: its memory
/// goes back to the half-open table.
#[inline(always)]
pub fn promote(ip: &Ipv4, l4: &L4, listener: &Listener, f: &Flow, backend: &Backend) {
    let mut established = *f;
    let new_key = established.flags & FLOW_F_REOPENED == 0;
    established.flags &= !FLOW_F_REOPENED;
    let key = crate::parse::packet(ip, l4).flow_key();
    let (reply_key, fresh) = reverse_entry(ip, l4, listener, f.backend, backend);
    if FLOWS.insert(key, established, u64::from(BPF_ANY)).is_err() {
        return;
    }
    if new_key {
        stats::count(Reason::EventFlowInserted);
    }
    let _ = HALF_OPEN.remove(key);
    // The reverse entry moves along if it is still this flow's; one another flow has
    // taken over stays; a missing one (evicted by a flood of SYNs) is written again, as
    // `keep_reverse` would.
    match HALF_OPEN_REVERSE.get_ptr(reply_key) {
        Some(rev) => {
            // SAFETY: a map value pointer stays valid for the program run.
            let rev = unsafe { *rev };
            if rev.vip == fresh.vip && rev.vport == fresh.vport {
                let _ = REVERSE.insert(reply_key, rev, u64::from(BPF_ANY));
                let _ = HALF_OPEN_REVERSE.remove(reply_key);
            }
        }
        None => {
            if REVERSE.get_ptr(reply_key).is_none() {
                let _ = REVERSE.insert(reply_key, fresh, u64::from(BPF_ANY));
            }
        }
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
/// number fits what the backend last acknowledged (`close_is_credible`); the backend's
/// acknowledgements are in the flow's reverse entry.
#[inline(always)]
pub fn client_close(ip: &Ipv4, l4: &L4, listener: &Listener, f: &mut Flow, backend: &Backend) {
    if l4.tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    let (reply_key, _) = reverse_entry(ip, l4, listener, f.backend, backend);
    let credible = match lookup_reverse(&reply_key) {
        // SAFETY: a map value pointer stays valid for the program run.
        Some(rev) => unsafe {
            close_is_credible(
                l4.seq,
                (*rev).backend_acked,
                (*rev).flags & REVERSE_F_ACKED != 0,
            )
        },
        None => false,
    };
    if credible {
        note_close(f, l4.tcp_flags);
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
pub fn touch_affinity(listener: &Listener, client: u32, backend: u32, generation: u32, now: u64) {
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

/// The reverse-NAT key a backend's replies to this client packet's flow carry (backend
/// address and port, client address and port), and the entry that turns them back into
/// the VIP's.
#[inline(always)]
pub fn reverse_entry(
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
        listener: listener.id,
        backend: id,
        generation: backend.generation,
        flags: 0,
        backend_acked: 0,
    };
    (reply_key, entry)
}

/// Keeps a live flow's reverse entry: the two LRU tables age apart, and a flow whose
/// backend stays quiet while new flows churn the tables could lose its reverse entry
/// while its forward entry lives on. The lookup refreshes the entry's LRU position; a
/// missing one is written again (it cannot collide: its tuple is this flow's own).
#[inline(always)]
pub fn keep_reverse(ip: &Ipv4, l4: &L4, listener: &Listener, f: &Flow, backend: &Backend) {
    // A half-open flow's reverse entry lives in its own table, and is moved with it.
    if f.flags & FLOW_F_OPENING != 0 {
        return;
    }
    let (reply_key, entry) = reverse_entry(ip, l4, listener, f.backend, backend);
    // Present in either table (another VIP's half-open flow may have taken the tuple
    // over): kept as it is.
    if lookup_reverse(&reply_key).is_some() {
        return;
    }
    let _ = REVERSE.insert(reply_key, entry, u64::from(BPF_ANY));
}

/// Client → backend: translates the packet to the backend, sends it, counts it.
#[inline(always)]
pub fn send_to_backend(
    ctx: &XdpContext,
    ip: &Ipv4,
    l4: &L4,
    listener_id: u32,
    backend_id: u32,
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
        now,
        side: TOO_BIG_DESTINATION,
        original_addr: ip.dst_addr,
        original_port: l4.dst_port,
    };
    let out = fwd::transmit(ctx, ip, &route, Reason::Forwarded);
    if out.0 != XDP_DROP {
        stats::forwarded(listener_id, backend_id, u64::from(ip.tot_len), false);
    }
    out
}
