//! The per-packet decision of the data plane, written once.
//!
//! For a packet to a listener: access list, TTL, flow entry and its state, reuse or
//! schedule or pickup, drain deadline, persistence, the scheduler, the usability re-check.
//! The XDP program runs these functions over its maps (and does what they decide: rewrite,
//! record, send); `lb-ctl explain` runs them over the pinned maps and renders the events
//! they report; the unit tests run them over tables in memory. Nothing here writes a
//! table: the decision is a value, its effects are the caller's.
//!
//! The program is split into separately verified programs (docs/architecture.md), so the
//! decision comes in the same pieces: `listener_packet` (entry program), `pick` (new-flow
//! stage) and `WlcScan` (the `wlc` stage, one candidate per step of a bounded loop).

use core::ops::Deref;

use crate::{
    ACL_NONE, Affinity, BACKEND_F_DRAINING, Backend, Flow, Listener, NO_BACKEND,
    REFUSED_SOURCES_ACL, Reason, Scheduler, TableMeta, WLC_SCAN_MAX,
    family::{Family, V4},
    select::{
        EntryState, Step, TCP_RST, acl_denies, affinity_fresh, entry_state, maglev_index,
        next_step, sequence_index, wlc_prefers,
    },
};

/// The packet as the decision sees it, of either family. Addresses and ports in network
/// byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Packet<F: Family = V4> {
    pub src_addr: F::Addr,
    pub dst_addr: F::Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub ttl: u8,
}

impl<F: Family> Packet<F> {
    /// The flow table key (client → VIP).
    #[inline(always)]
    pub fn flow_key(&self) -> F::FlowKey {
        F::flow_key(
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.protocol,
        )
    }

    /// The listener key of the packet's destination.
    #[inline(always)]
    pub fn listener_key(&self) -> F::ListenerKey {
        F::listener_key(self.dst_addr, self.dst_port, self.protocol)
    }
}

/// What the decision reads. `Ref` is how an entry comes back: in XDP a pointer into the
/// map value (which the caller then updates in place), elsewhere a reference or a copy.
pub trait Tables {
    /// The address family of the tables (each family has tables of its own).
    type Family: Family;
    type Ref<'a, T: 'a>: Deref<Target = T>
    where
        Self: 'a;

    fn listener(&self, key: &ListenerKeyOf<Self>) -> Option<Self::Ref<'_, Listener>>;
    /// Whether access list `acl` has an entry covering `addr`.
    fn acl_matches(&self, acl: u32, addr: AddrOf<Self>) -> bool;
    fn flow(&self, key: &FlowKeyOf<Self>) -> Option<Self::Ref<'_, Flow>>;
    /// `flow` for a connection opener (a SYN), whose key is rarely in the table: the data
    /// plane asks its filter of established keys first (`flow_filter`). Same answer.
    fn opening_flow(&self, key: &FlowKeyOf<Self>) -> Option<Self::Ref<'_, Flow>> {
        self.flow(key)
    }
    fn backend(&self, id: u32) -> Option<Self::Ref<'_, Backend>>;
    fn table_meta(&self, table: u32) -> Option<Self::Ref<'_, TableMeta>>;
    /// The affinity entry of client `addr` of listener `listener`.
    fn affinity(&self, listener: u32, addr: AddrOf<Self>) -> Option<Self::Ref<'_, Affinity>>;
    /// Backend id at `index` of `MAGLEV` (`NO_BACKEND` past its end).
    fn maglev(&self, index: u32) -> u32;
    /// Backend id at `index` of `SEQUENCE` (`NO_BACKEND` past its end).
    fn sequence(&self, index: u32) -> u32;
    /// The listener's round-robin position on the CPU the packet runs on. The data plane
    /// advances it; a reader of the tables sees the position the next packet takes.
    fn take_cursor(&self, listener: u32) -> u32;
    /// A backend's active flows (`wlc`).
    fn active_flows(&self, id: u32) -> u32;
    /// Whether `addr` may be a VIP: false is certain, true needs the marker lookup. The
    /// data plane answers from its VIP filter (in `ADDRESS_FILTER`), one array read instead of a
    /// hash lookup for most addresses.
    #[inline(always)]
    fn may_be_vip(&self, _addr: AddrOf<Self>) -> bool {
        true
    }
    /// Whether `addr` may be a refused source (`REFUSED_SOURCES_ACL`): false is certain,
    /// true needs the access-list lookup. The data plane answers from its filter of the
    /// refused single addresses, unless prefixes are refused too.
    #[inline(always)]
    fn may_be_refused(&self, _addr: AddrOf<Self>) -> bool {
        true
    }
}

/// An address of the tables' family.
pub type AddrOf<T> = <<T as Tables>::Family as Family>::Addr;
/// A flow key of the tables' family.
pub type FlowKeyOf<T> = <<T as Tables>::Family as Family>::FlowKey;
/// A listener key of the tables' family.
pub type ListenerKeyOf<T> = <<T as Tables>::Family as Family>::ListenerKey;
/// A packet of the tables' family.
pub type PacketOf<T> = Packet<<T as Tables>::Family>;

/// What the decision saw, step by step: `explain` renders these, the data plane passes
/// `()` and they compile to nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The listener has no access list.
    NoAcl,
    /// The listener's access list: whether the source matched an entry, and the outcome.
    Acl {
        matched: bool,
        denied: bool,
    },
    /// TTL ≤ 1: the kernel answers time exceeded.
    TtlExpired,
    NoFlowEntry,
    /// The flow table's entry for the packet and what it means.
    FlowEntry {
        backend: u32,
        last_seen_ns: u64,
        flags: u32,
        state: EntryState,
    },
    /// The flow's backend drains; its flows are cut after `deadline_ns`.
    Draining {
        deadline_ns: u64,
    },
    /// The drain deadline has passed: the flow is cut (TCP: a RST answers).
    DrainExpired,
    /// The deadline has passed, but the client's own RST goes through to the backend.
    DrainExpiredRstPasses,
    /// A packet of an established flow, to its backend.
    Established {
        backend: u32,
    },
    /// The packet starts a flow (`Step::Schedule`) or is picked up (`Step::Pickup`).
    Opens {
        step: Step,
    },
    /// No backend of the listener takes new flows.
    NoBackendTakesNewFlows,
    NoAffinity,
    AffinityExpired,
    /// The affinity entry's backend no longer takes new flows.
    AffinityBackendRefuses {
        backend: u32,
    },
    Affinity {
        backend: u32,
    },
    /// A pickup through the Maglev table on the 4-tuple (`slot` within the table of
    /// `size` slots).
    Pickup {
        slot: u32,
        size: u32,
        backend: u32,
    },
    /// `sch` (`source`) or `tch`: a Maglev slot.
    Maglev {
        source: bool,
        slot: u32,
        size: u32,
        backend: u32,
    },
    /// `wrr` or `rr`: position in the sequence.
    Sequence {
        position: u32,
        backend: u32,
    },
    /// A new flow or pickup from a source no client can have (`REFUSED_SOURCES_ACL`, a
    /// VIP): dropped as forged.
    RefusedSource,
    /// A SYN on a closing flow's entry stays with that flow's backend (it takes new flows).
    Reopened {
        backend: u32,
    },
    /// `wlc` goes through the scan.
    Scan,
    /// One `wlc` candidate.
    WlcCandidate {
        backend: u32,
        active: u32,
        weight: u32,
    },
    /// `wlc`'s pick (`NO_BACKEND`: none has a weight).
    WlcPick {
        backend: u32,
    },
    /// The pick cannot take the flow (gone, unhealthy, none): `drop_no_backend`.
    Unusable {
        backend: u32,
    },
    /// The pick takes the flow.
    Picked {
        backend: u32,
    },
}

/// Receives the decision's events.
pub trait Trace {
    fn event(&mut self, event: Event);
}

impl Trace for () {
    #[inline(always)]
    fn event(&mut self, _event: Event) {}
}

/// What happens to a packet for a listener, as far as the entry program decides it.
pub enum Decision<F, B> {
    Drop(Reason),
    Pass(Reason),
    /// A packet of an established flow: to the flow's backend.
    Established {
        flow: F,
        backend: B,
    },
    /// A flow of a drained backend past its deadline: cut (TCP answered with a RST).
    DrainCut {
        flow: F,
    },
    /// A new flow or a pickup: the new-flow stage picks its backend.
    Open(Opening),
}

/// A new flow or a pickup, as the entry program saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    /// `Step::Schedule` or `Step::Pickup`.
    pub step: Step,
    pub state: EntryState,
    /// The entry this flow replaces (`NO_BACKEND`: none) and its flags.
    pub previous_backend: u32,
    pub previous_flags: u32,
}

/// The listener a packet is for, if any.
#[inline(always)]
pub fn listener_for<'a, T: Tables>(
    tables: &'a T,
    packet: &PacketOf<T>,
) -> Option<T::Ref<'a, Listener>> {
    tables.listener(&packet.listener_key())
}

/// Whether `addr` is a VIP (has a VIP marker).
#[inline(always)]
pub fn is_vip<T: Tables>(tables: &T, addr: AddrOf<T>) -> bool {
    tables.may_be_vip(addr)
        && tables
            .listener(&T::Family::listener_key(addr, 0, 0))
            .is_some()
}

/// Whether `addr` is a source no client can have: an address of the LB host or a refused
/// network (`REFUSED_SOURCES_ACL`), or a VIP.
#[inline(always)]
pub fn is_refused_source<T: Tables>(tables: &T, addr: AddrOf<T>) -> bool {
    (tables.may_be_refused(addr) && tables.acl_matches(REFUSED_SOURCES_ACL, addr))
        || is_vip(tables, addr)
}

/// Whether a backend takes new flows: present and healthy, weight > 0, not draining.
#[inline(always)]
pub const fn takes_new_flows(b: &Backend) -> bool {
    b.is_usable() && b.weight > 0 && b.flags & BACKEND_F_DRAINING == 0
}

/// The entry program's part: access list, TTL, flow entry, and whether the packet goes to
/// an established flow's backend or opens a flow.
#[inline(always)]
pub fn listener_packet<'a, T: Tables, R: Trace>(
    tables: &'a T,
    trace: &mut R,
    listener: &Listener,
    packet: &PacketOf<T>,
    now: u64,
) -> Decision<T::Ref<'a, Flow>, T::Ref<'a, Backend>> {
    if listener.acl_mode != ACL_NONE {
        let matched = tables.acl_matches(listener.acl_id, packet.src_addr);
        let denied = acl_denies(listener.acl_mode, matched);
        trace.event(Event::Acl { matched, denied });
        if denied {
            core::hint::cold_path();
            return Decision::Drop(Reason::DropAclDenied);
        }
    } else {
        trace.event(Event::NoAcl);
    }
    if packet.ttl <= 1 {
        core::hint::cold_path();
        trace.event(Event::TtlExpired);
        return Decision::Pass(Reason::PassTtlExpired);
    }

    let mut state = EntryState::Missing;
    let mut previous_backend = NO_BACKEND;
    let mut previous_flags = 0;
    let mut live = None;
    let key = packet.flow_key();
    let entry =
        if packet.protocol == crate::PROTO_TCP && crate::select::is_tcp_open(packet.tcp_flags) {
            tables.opening_flow(&key)
        } else {
            tables.flow(&key)
        };
    match entry {
        Some(flow) => {
            previous_backend = flow.backend;
            previous_flags = flow.flags;
            let backend = tables.backend(flow.backend);
            state = entry_state(now, &flow, backend.as_deref(), packet.protocol, listener);
            trace.event(Event::FlowEntry {
                backend: flow.backend,
                last_seen_ns: flow.last_seen_ns,
                flags: flow.flags,
                state,
            });
            if let (EntryState::Live { .. }, Some(backend)) = (state, backend) {
                live = Some((flow, backend));
            }
        }
        None => trace.event(Event::NoFlowEntry),
    }

    let step = next_step(packet.protocol, packet.tcp_flags, state);
    if step == Step::Reuse
        && let Some((flow, backend)) = live
    {
        if backend.flags & BACKEND_F_DRAINING != 0 && backend.drain_deadline_ns != 0 {
            core::hint::cold_path();
            if now > backend.drain_deadline_ns {
                // The client's own RST goes through, so the backend learns the
                // connection is gone.
                if packet.tcp_flags & TCP_RST == 0 {
                    trace.event(Event::DrainExpired);
                    return Decision::DrainCut { flow };
                }
                trace.event(Event::DrainExpiredRstPasses);
            } else {
                trace.event(Event::Draining {
                    deadline_ns: backend.drain_deadline_ns,
                });
            }
        }
        trace.event(Event::Established {
            backend: flow.backend,
        });
        return Decision::Established { flow, backend };
    }
    // Before any state exists for it. Forged with the LB's own address as source, a flow
    // would make the backend's answers to the LB's health probes from that port look like
    // its replies.
    if is_refused_source(tables, packet.src_addr) {
        core::hint::cold_path();
        trace.event(Event::RefusedSource);
        return Decision::Drop(Reason::DropSpoofedSource);
    }
    // Reuse without a live entry cannot happen (Reuse means Live); it opens a flow.
    let step = if step == Step::Pickup {
        Step::Pickup
    } else {
        Step::Schedule
    };
    trace.event(Event::Opens { step });
    Decision::Open(Opening {
        step,
        state,
        previous_backend,
        previous_flags,
    })
}

/// The new-flow stage's pick.
pub enum Pick<B> {
    /// This backend takes the flow; `persisted`: through the client's affinity entry.
    Backend {
        id: u32,
        backend: B,
        persisted: bool,
    },
    /// `wlc`: run the scan (`WlcScan`), then `pick` again with its answer.
    Scan,
    Fail(Reason),
}

/// Picks the backend of a new flow or a pickup: affinity (persistence), then the Maglev
/// table for a pickup or the listener's scheduler, then the usability re-check (the tables
/// may have changed since the scheduler's table was built). `scanned`: `wlc`'s pick once
/// the scan has run (`None` before).
#[inline(always)]
pub fn pick<'a, T: Tables, R: Trace>(
    tables: &'a T,
    trace: &mut R,
    listener: &Listener,
    packet: &PacketOf<T>,
    opening: &Opening,
    scanned: Option<u32>,
    now: u64,
) -> Pick<T::Ref<'a, Backend>> {
    let Some(meta) = tables.table_meta(listener.table) else {
        core::hint::cold_path();
        trace.event(Event::NoBackendTakesNewFlows);
        return Pick::Fail(Reason::DropNoBackend);
    };
    if meta.backends == 0 {
        core::hint::cold_path();
        trace.event(Event::NoBackendTakesNewFlows);
        return Pick::Fail(Reason::DropNoBackend);
    }
    // A SYN on the entry of a flow that saw a FIN or RST is the client reusing its port, or
    // a blind attacker's forged RST and SYN meant to move a live connection. Keeping the
    // backend serves the first and defeats the second; a backend that no longer takes new
    // flows (weight 0, draining) gives way to the scheduler.
    if opening.step == Step::Schedule
        && opening.state == (EntryState::Live { closing: true })
        && scanned.is_none()
        && let Some(backend) = tables.backend(opening.previous_backend)
        && takes_new_flows(&backend)
    {
        trace.event(Event::Reopened {
            backend: opening.previous_backend,
        });
        return Pick::Backend {
            id: opening.previous_backend,
            backend,
            persisted: false,
        };
    }
    let persist = listener.persistence_timeout_s > 0 && opening.step == Step::Schedule;
    let mut id = NO_BACKEND;
    // After the scan, the affinity lookup is known to have found nothing.
    if persist && scanned.is_none() {
        id = affinity_backend(tables, trace, listener, packet.src_addr, now);
    }
    let persisted = id != NO_BACKEND;
    if !persisted {
        id = if let Some(scanned) = scanned {
            scanned
        } else if opening.step == Step::Pickup {
            let index = tuple_index(&meta, packet);
            let id = tables.maglev(index);
            trace.event(Event::Pickup {
                slot: index - meta.maglev_base,
                size: meta.maglev_size,
                backend: id,
            });
            id
        } else {
            match Scheduler::from_u8(listener.scheduler) {
                Some(Scheduler::Wlc) => {
                    trace.event(Event::Scan);
                    return Pick::Scan;
                }
                Some(Scheduler::Sch) => {
                    let index = maglev_index(&meta, T::Family::hash_source(packet.src_addr));
                    let id = tables.maglev(index);
                    trace.event(Event::Maglev {
                        source: true,
                        slot: index - meta.maglev_base,
                        size: meta.maglev_size,
                        backend: id,
                    });
                    id
                }
                Some(Scheduler::Tch) => {
                    let index = tuple_index(&meta, packet);
                    let id = tables.maglev(index);
                    trace.event(Event::Maglev {
                        source: false,
                        slot: index - meta.maglev_base,
                        size: meta.maglev_size,
                        backend: id,
                    });
                    id
                }
                Some(Scheduler::Wrr) | Some(Scheduler::Rr) => {
                    let index = sequence_index(
                        listener.table,
                        tables.take_cursor(listener.id),
                        meta.sequence_len,
                    );
                    let id = tables.sequence(index);
                    trace.event(Event::Sequence {
                        position: index - listener.table * crate::SEQUENCE_TABLE_SIZE,
                        backend: id,
                    });
                    id
                }
                None => NO_BACKEND,
            }
        };
    }
    match tables.backend(id) {
        Some(backend) if backend.is_usable() => {
            trace.event(Event::Picked { backend: id });
            Pick::Backend {
                id,
                backend,
                persisted,
            }
        }
        _ => {
            core::hint::cold_path();
            trace.event(Event::Unusable { backend: id });
            Pick::Fail(Reason::DropNoBackend)
        }
    }
}

#[inline(always)]
fn tuple_index<F: Family>(meta: &TableMeta, packet: &Packet<F>) -> u32 {
    maglev_index(
        meta,
        F::hash_tuple(
            packet.src_addr,
            packet.dst_addr,
            packet.src_port,
            packet.dst_port,
        ),
    )
}

/// The backend a client's affinity entry binds it to, if the entry is fresh and the
/// backend still takes new flows; else `NO_BACKEND`.
#[inline(always)]
fn affinity_backend<T: Tables, R: Trace>(
    tables: &T,
    trace: &mut R,
    listener: &Listener,
    client: AddrOf<T>,
    now: u64,
) -> u32 {
    let Some(a) = tables.affinity(listener.id, client) else {
        trace.event(Event::NoAffinity);
        return NO_BACKEND;
    };
    if !affinity_fresh(now, &a, listener.persistence_timeout_s) {
        trace.event(Event::AffinityExpired);
        return NO_BACKEND;
    }
    match tables.backend(a.backend) {
        Some(b) if b.generation == a.generation && takes_new_flows(&b) => {
            trace.event(Event::Affinity { backend: a.backend });
            a.backend
        }
        _ => {
            trace.event(Event::AffinityBackendRefuses { backend: a.backend });
            NO_BACKEND
        }
    }
}

/// One `wlc` scan: fewest active flows per unit of weight over a window of at most
/// `WLC_SCAN_MAX` entries of the listener's backend list, starting at this CPU's rotating
/// position (so ties spread). The XDP program runs `consider` as the body of a `bpf_loop`;
/// `run` is the same loop in plain Rust.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WlcScan {
    pub table: u32,
    pub len: u32,
    pub position: u32,
    pub best: u32,
    pub best_active: u32,
    pub best_weight: u32,
}

impl WlcScan {
    /// A scan of `listener`'s backend list from `cursor` (the listener's round-robin
    /// position on this CPU).
    #[inline(always)]
    pub const fn new(listener: &Listener, meta: &TableMeta, cursor: u32) -> Self {
        let len = meta.sequence_len;
        Self {
            table: listener.table,
            len,
            position: if len == 0 { 0 } else { cursor % len },
            best: NO_BACKEND,
            best_active: 0,
            best_weight: 0,
        }
    }

    /// Candidates the scan looks at.
    #[inline(always)]
    pub const fn window(&self) -> u32 {
        if self.len < WLC_SCAN_MAX {
            self.len
        } else {
            WLC_SCAN_MAX
        }
    }

    /// Looks at the next candidate.
    #[inline(always)]
    pub fn consider<T: Tables, R: Trace>(&mut self, tables: &T, trace: &mut R) {
        let id = tables.sequence(sequence_index(self.table, self.position, self.len));
        self.position += 1;
        if self.position >= self.len {
            self.position = 0;
        }
        let Some(b) = tables.backend(id) else {
            return;
        };
        // A count decremented past zero by a race with the controller's recount would make
        // the backend look the busiest of all; it has no flows to speak of.
        let active = match tables.active_flows(id) {
            a if a > i32::MAX as u32 => 0,
            a => a,
        };
        trace.event(Event::WlcCandidate {
            backend: id,
            active,
            weight: b.weight,
        });
        // The first candidate with a weight wins against "none yet".
        if b.weight > 0
            && (self.best == NO_BACKEND
                || wlc_prefers(active, b.weight, self.best_active, self.best_weight))
        {
            self.best = id;
            self.best_active = active;
            self.best_weight = b.weight;
        }
    }

    /// The whole scan, for readers of the tables (the XDP program loops with `bpf_loop`).
    pub fn run<T: Tables, R: Trace>(mut self, tables: &T, trace: &mut R) -> u32 {
        for _ in 0..self.window() {
            self.consider(tables, trace);
        }
        trace.event(Event::WlcPick { backend: self.best });
        self.best
    }
}

/// Where the decision sends a packet, for readers of the tables (`explain`, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// To this backend id.
    Forward(u32),
    /// Answered by the LB itself with a RST (a drained flow past its deadline).
    Reset,
    Drop(Reason),
    Pass(Reason),
}

/// The whole decision for one packet, in the order the programs run its pieces:
/// `listener_packet` (entry program), `pick` (new-flow stage), the `wlc` scan (its stage)
/// and `pick` again with the scan's answer. Packets not for a listener are dropped when
/// addressed to a VIP and passed otherwise (the reply path and ICMP errors are not
/// decisions: they follow the flow's entries).
pub fn decide_packet<T: Tables, R: Trace>(
    tables: &T,
    trace: &mut R,
    packet: &PacketOf<T>,
    now: u64,
) -> Outcome {
    let Some(listener) = listener_for(tables, packet) else {
        return if is_vip(tables, packet.dst_addr) {
            Outcome::Drop(Reason::DropVipNoListener)
        } else {
            Outcome::Pass(Reason::PassNotForUs)
        };
    };
    let opening = match listener_packet(tables, trace, &listener, packet, now) {
        Decision::Drop(reason) => return Outcome::Drop(reason),
        Decision::Pass(reason) => return Outcome::Pass(reason),
        Decision::Established { flow, .. } => return Outcome::Forward(flow.backend),
        Decision::DrainCut { .. } => {
            return if packet.protocol == crate::PROTO_TCP {
                Outcome::Reset
            } else {
                Outcome::Drop(Reason::DropDrainExpired)
            };
        }
        Decision::Open(opening) => opening,
    };
    let mut scanned = None;
    loop {
        match pick(tables, trace, &listener, packet, &opening, scanned, now) {
            Pick::Backend { id, .. } => return Outcome::Forward(id),
            Pick::Fail(reason) => return Outcome::Drop(reason),
            // The scan runs once: `pick` with its answer never asks for it again.
            Pick::Scan if scanned.is_none() => {
                let Some(meta) = tables.table_meta(listener.table) else {
                    return Outcome::Drop(Reason::DropNoBackend);
                };
                let scan = WlcScan::new(&listener, &meta, tables.take_cursor(listener.id));
                scanned = Some(scan.run(tables, trace));
            }
            Pick::Scan => return Outcome::Drop(Reason::DropStageFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ACL_ALLOW, ACL_DENY, FLOW_F_FIN, PROTO_TCP, PROTO_UDP,
        memory::{
            MemoryTables,
            example::{CLIENT, NOW, S, backend, flow, packet, tables},
        },
        select::{TCP_ACK, TCP_SYN},
    };

    fn decide(t: &MemoryTables, p: &Packet) -> (Outcome, Vec<Event>) {
        let mut events = Vec::new();
        let outcome = decide_packet(t, &mut Recorder(&mut events), p, NOW);
        (outcome, events)
    }

    struct Recorder<'a>(&'a mut Vec<Event>);
    impl Trace for Recorder<'_> {
        fn event(&mut self, event: Event) {
            self.0.push(event);
        }
    }

    #[test]
    fn packets_not_for_a_listener_pass() {
        let t = tables(Scheduler::Wrr, PROTO_TCP);
        let mut p = packet(PROTO_TCP, TCP_SYN);
        p.dst_port = 81u16.to_be();
        assert_eq!(decide(&t, &p).0, Outcome::Drop(Reason::DropVipNoListener));
        p.dst_addr = CLIENT;
        assert_eq!(decide(&t, &p).0, Outcome::Pass(Reason::PassNotForUs));
    }

    #[test]
    fn every_scheduler_picks_from_its_table() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        // wrr and rr: the sequence at this CPU's position.
        for scheduler in [Scheduler::Wrr, Scheduler::Rr] {
            let mut t = tables(scheduler, PROTO_TCP);
            t.cursors.insert(1, 4);
            let (outcome, events) = decide(&t, &syn);
            assert_eq!(outcome, Outcome::Forward(1), "{scheduler:?}");
            assert!(events.contains(&Event::Sequence {
                position: 1,
                backend: 1
            }));
        }
        // sch: the Maglev slot of the source address; tch: of the 4-tuple.
        let t = tables(Scheduler::Sch, PROTO_TCP);
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(1));
        let t = tables(Scheduler::Tch, PROTO_TCP);
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(2));
        // wlc: fewest active flows per weight, whatever the scan's starting point.
        let mut t = tables(Scheduler::Wlc, PROTO_TCP);
        t.active_flows.extend([(0, 5), (1, 1), (2, 3)]);
        for cursor in 0..3 {
            t.cursors.insert(1, cursor);
            let (outcome, events) = decide(&t, &syn);
            assert_eq!(outcome, Outcome::Forward(1), "scan from {cursor}");
            assert!(events.contains(&Event::WlcPick { backend: 1 }));
        }
        // A tie goes to the first candidate of the rotating scan.
        t.active_flows.extend([(0, 1), (2, 1)]);
        t.cursors.insert(1, 2);
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(2));
        // Weight counts: 2 flows on weight 100 beat 1 flow on weight 20.
        t.active_flows.extend([(0, 2), (1, 1), (2, 9)]);
        t.backends.get_mut(&1).unwrap().weight = 20;
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(0));
    }

    #[test]
    fn flow_entry_states_decide_reuse_schedule_or_pickup() {
        let ack = packet(PROTO_TCP, TCP_ACK);
        let syn = packet(PROTO_TCP, TCP_SYN);
        let key = syn.flow_key();
        let mut t = tables(Scheduler::Wrr, PROTO_TCP);
        // Missing: SYN scheduled (cursor 0 → backend 0), ACK picked up (Maglev on the
        // 4-tuple → backend 2).
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(0));
        let (outcome, events) = decide(&t, &ack);
        assert_eq!(outcome, Outcome::Forward(2));
        assert!(events.contains(&Event::Opens { step: Step::Pickup }));
        // Live: reused whatever the flags.
        t.flows.insert(key, flow(1, 0, 5));
        assert_eq!(decide(&t, &ack).0, Outcome::Forward(1));
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(1));
        // Live but closing: a SYN is a new connection on the same port, and it stays with
        // the backend (a forged RST and SYN cannot move a connection)...
        t.flows.insert(key, flow(1, FLOW_F_FIN, 5));
        assert_eq!(decide(&t, &ack).0, Outcome::Forward(1));
        let (outcome, events) = decide(&t, &syn);
        assert_eq!(outcome, Outcome::Forward(1));
        assert!(events.contains(&Event::Reopened { backend: 1 }));
        // ... unless that backend no longer takes new flows.
        t.backends.get_mut(&1).unwrap().weight = 0;
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(0));
        t.backends.get_mut(&1).unwrap().weight = 100;
        // Expired: scheduled or picked up again.
        t.flows.insert(key, flow(1, 0, 901));
        assert_eq!(decide(&t, &ack).0, Outcome::Forward(2));
        // Backend unusable (unhealthy, or the id went to another server).
        t.flows.insert(key, flow(1, 0, 5));
        t.backends.get_mut(&1).unwrap().flags = 0;
        let (outcome, events) = decide(&t, &ack);
        assert_eq!(outcome, Outcome::Forward(2));
        assert!(events.iter().any(|e| matches!(
            e,
            Event::FlowEntry {
                state: EntryState::BackendUnusable,
                ..
            }
        )));
        t.backends.insert(
            1,
            Backend {
                generation: 2,
                ..backend(1)
            },
        );
        assert_eq!(decide(&t, &ack).0, Outcome::Forward(2));
        // UDP: an expired entry is a new flow.
        let mut t = tables(Scheduler::Wrr, PROTO_UDP);
        let udp = packet(PROTO_UDP, 0);
        t.flows.insert(udp.flow_key(), flow(1, 0, 31));
        assert_eq!(decide(&t, &udp).0, Outcome::Forward(0));
    }

    #[test]
    fn drain_deadline_cuts_but_lets_the_clients_rst_through() {
        let ack = packet(PROTO_TCP, TCP_ACK);
        let mut t = tables(Scheduler::Wrr, PROTO_TCP);
        t.flows.insert(ack.flow_key(), flow(1, 0, 5));
        t.backends.get_mut(&1).unwrap().flags |= BACKEND_F_DRAINING;
        t.backends.get_mut(&1).unwrap().drain_deadline_ns = NOW + 10 * S;
        let (outcome, events) = decide(&t, &ack);
        assert_eq!(outcome, Outcome::Forward(1));
        assert!(events.contains(&Event::Draining {
            deadline_ns: NOW + 10 * S
        }));
        t.backends.get_mut(&1).unwrap().drain_deadline_ns = NOW - 1;
        assert_eq!(decide(&t, &ack).0, Outcome::Reset);
        let rst = packet(PROTO_TCP, TCP_RST | TCP_ACK);
        assert_eq!(decide(&t, &rst).0, Outcome::Forward(1));
        let mut t = tables(Scheduler::Wrr, PROTO_UDP);
        let udp = packet(PROTO_UDP, 0);
        t.flows.insert(udp.flow_key(), flow(1, 0, 5));
        t.backends.get_mut(&1).unwrap().flags |= BACKEND_F_DRAINING;
        t.backends.get_mut(&1).unwrap().drain_deadline_ns = NOW - 1;
        assert_eq!(decide(&t, &udp).0, Outcome::Drop(Reason::DropDrainExpired));
    }

    #[test]
    fn access_list_and_ttl() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        let mut t = tables(Scheduler::Wrr, PROTO_TCP);
        let l = t.listeners.get_mut(&syn.listener_key()).unwrap();
        l.acl_mode = ACL_ALLOW;
        l.acl_id = 3;
        assert_eq!(decide(&t, &syn).0, Outcome::Drop(Reason::DropAclDenied));
        t.acls.push((3, u32::from_ne_bytes([198, 18, 0, 0]), 24));
        assert_eq!(decide(&t, &syn).0, Outcome::Forward(0));
        t.listeners.get_mut(&syn.listener_key()).unwrap().acl_mode = ACL_DENY;
        assert_eq!(decide(&t, &syn).0, Outcome::Drop(Reason::DropAclDenied));
        let t = tables(Scheduler::Wrr, PROTO_TCP);
        let mut low = syn;
        low.ttl = 1;
        assert_eq!(decide(&t, &low).0, Outcome::Pass(Reason::PassTtlExpired));
    }

    #[test]
    fn persistence_then_scheduler_then_usability() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        let mut t = tables(Scheduler::Wlc, PROTO_TCP);
        t.listeners
            .get_mut(&syn.listener_key())
            .unwrap()
            .persistence_timeout_s = 60;
        let akey = (1, CLIENT);
        t.affinity.insert(
            akey,
            Affinity {
                backend: 2,
                generation: 1,
                last_seen_ns: NOW - 10 * S,
            },
        );
        let (outcome, events) = decide(&t, &syn);
        assert_eq!(outcome, Outcome::Forward(2));
        assert!(
            !events.contains(&Event::Scan),
            "the affinity wins without a scan"
        );
        // Weight 0 (quiesced): the affinity no longer binds; wlc picks among the others.
        t.backends.get_mut(&2).unwrap().weight = 0;
        t.active_flows.extend([(0, 3), (1, 1)]);
        let (outcome, events) = decide(&t, &syn);
        assert_eq!(outcome, Outcome::Forward(1));
        assert!(events.contains(&Event::AffinityBackendRefuses { backend: 2 }));
        // Expired affinity.
        t.backends.get_mut(&2).unwrap().weight = 100;
        t.affinity.get_mut(&akey).unwrap().last_seen_ns = NOW - 61 * S;
        assert!(decide(&t, &syn).1.contains(&Event::AffinityExpired));
        // The scheduler's pick is re-checked: a table not yet rebuilt after a failure.
        let mut t = tables(Scheduler::Tch, PROTO_TCP);
        t.backends.get_mut(&2).unwrap().flags = 0;
        assert_eq!(decide(&t, &syn).0, Outcome::Drop(Reason::DropNoBackend));
        // No backend takes new flows at all.
        let mut t = tables(Scheduler::Sch, PROTO_TCP);
        t.table_meta.get_mut(&2).unwrap().backends = 0;
        assert_eq!(decide(&t, &syn).0, Outcome::Drop(Reason::DropNoBackend));
    }

    /// The same procedure over IPv6 tables: a listener, its access list, `sch` through
    /// the Maglev slot of the IPv6 source hash, and the established flow afterwards.
    #[test]
    fn ipv6_packets_take_the_same_decision() {
        use crate::{
            ACL_DENY, MAGLEV_TABLE_SIZE, SEQUENCE_TABLE_SIZE, V6,
            family::{Family, addr6},
            memory::example::backend,
        };
        let client = addr6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let vip = addr6([
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64,
        ]);
        let p = Packet::<V6> {
            src_addr: client,
            dst_addr: vip,
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol: PROTO_TCP,
            tcp_flags: TCP_SYN,
            ttl: 64,
        };
        let mut t = MemoryTables::<V6>::default();
        let listener = Listener {
            id: 1,
            table: 2,
            scheduler: Scheduler::Sch as u8,
            established_timeout_s: 900,
            ..Default::default()
        };
        t.listeners.insert(p.listener_key(), listener);
        t.listeners
            .insert(V6::listener_key(vip, 0, 0), Listener::default());
        let meta = TableMeta {
            backends: 3,
            sequence_len: 3,
            maglev_base: 2 * MAGLEV_TABLE_SIZE,
            maglev_size: MAGLEV_TABLE_SIZE,
        };
        t.table_meta.insert(2, meta);
        for id in 0..3 {
            t.backends.insert(id, backend(id));
            t.sequence.insert(2 * SEQUENCE_TABLE_SIZE + id, id);
        }
        let slot = maglev_index(&meta, V6::hash_source(client));
        t.maglev.insert(slot, 2);
        let mut events = Vec::new();
        let outcome = decide_packet(&t, &mut Recorder(&mut events), &p, NOW);
        assert_eq!(outcome, Outcome::Forward(2));
        assert!(events.contains(&Event::Maglev {
            source: true,
            slot: slot - meta.maglev_base,
            size: MAGLEV_TABLE_SIZE,
            backend: 2,
        }));

        // An established flow goes on to its backend whatever the scheduler says.
        t.flows.insert(p.flow_key(), flow(0, 0, 1));
        let ack = Packet {
            tcp_flags: TCP_ACK,
            ..p
        };
        let mut events = Vec::new();
        assert_eq!(
            decide_packet(&t, &mut Recorder(&mut events), &ack, NOW),
            Outcome::Forward(0)
        );

        // The access list matches IPv6 prefixes.
        t.listeners.get_mut(&p.listener_key()).unwrap().acl_mode = ACL_DENY;
        t.listeners.get_mut(&p.listener_key()).unwrap().acl_id = 5;
        t.acls.push((
            5,
            addr6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            48,
        ));
        let mut events = Vec::new();
        assert_eq!(
            decide_packet(&t, &mut Recorder(&mut events), &p, NOW),
            Outcome::Drop(Reason::DropAclDenied)
        );
    }
}
