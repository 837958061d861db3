//! `lb-ctl explain`: why a packet lands where it does. It runs the data plane's own
//! decision (`lb_common::decide`) over the live maps and tells the events the decision
//! reports, so the explanation cannot drift from what the XDP program does.
//!
//! The round-robin position (`wrr`, `rr`) and the start of the `wlc` scan are per CPU: a
//! new flow's backend then depends on the CPU that receives its first packet, and the
//! explanation gives each CPU's answer.

use std::{
    cell::RefCell,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    ACL_ALLOW, Addr6, Affinity, AffinityKey, AffinityKey6, Backend, Family, Flow, FlowKey,
    FlowKey6, Listener, ListenerKey, ListenerKey6, NO_BACKEND, PROTO_TCP, PROTO_UDP, Reason,
    Scheduler, TableMeta, V4, V6,
    decide::{self, Event, Outcome, Packet, Tables, Trace},
    family::addr6,
    select::{self, EntryState, Step},
};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::DataPlane,
    family::{ListenerMapKey, ipv4_of, ipv4_word, ipv6_of},
    plan::Desired,
};

/// The answer: each step in words, and the backend the packet goes to (if any).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Explanation {
    pub steps: Vec<String>,
    /// `ADDR:PORT` of the chosen backend; None when the packet is not forwarded, or when
    /// the CPUs would pick differently (`wrr`, `rr`, `wlc`: see the steps).
    pub backend: Option<String>,
    /// forward, reset, pass, drop, or depends-on-cpu.
    pub outcome: String,
}

/// An address family's addresses as the standard library's, for the explanation.
pub trait Shown: Family {
    fn ip(addr: Self::Addr) -> IpAddr;
    /// `None` for an address of the other family.
    fn word(ip: IpAddr) -> Option<Self::Addr>;
}

impl Shown for V4 {
    fn ip(addr: u32) -> IpAddr {
        IpAddr::V4(ipv4_of(addr))
    }

    fn word(ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(a) => Some(ipv4_word(a)),
            IpAddr::V6(_) => None,
        }
    }
}

impl Shown for V6 {
    fn ip(addr: Addr6) -> IpAddr {
        IpAddr::V6(ipv6_of(addr))
    }

    fn word(ip: IpAddr) -> Option<Addr6> {
        match ip {
            IpAddr::V6(a) => Some(addr6(a.octets())),
            IpAddr::V4(_) => None,
        }
    }
}

/// The decision's tables of one family as `explain` reads them: a failed read is kept
/// (it would otherwise read as "no entry"), and a backend's address comes from where the
/// family keeps it.
pub trait ExplainTables: Tables<Family: Shown> {
    fn read_error(&self) -> Option<String>;
    /// Backend `id`'s address (`b`, its `BACKENDS` entry).
    fn backend_ip(&self, id: u32, b: &Backend) -> Option<IpAddr>;
}

/// Explains a packet from `src` to `dst` over the decision's tables as each CPU sees them
/// (`tables`, CPU 0 first: the live maps, or the in-memory data plane of the controller's
/// tests), of the packet's family. `tcp_flags`: the packet's TCP flags (a SYN unless told
/// otherwise), ignored for UDP.
pub(crate) fn explain<T: ExplainTables>(
    tables: Vec<T>,
    desired: &Desired,
    src: SocketAddr,
    dst: SocketAddr,
    protocol: u8,
    tcp_flags: u8,
    now: u64,
) -> anyhow::Result<Explanation> {
    let (Some(src_addr), Some(dst_addr)) = (T::Family::word(src.ip()), T::Family::word(dst.ip()))
    else {
        anyhow::bail!("{src} and {dst} are of different address families: no packet has both");
    };
    let packet = Packet {
        src_addr,
        dst_addr,
        src_port: src.port().to_be(),
        dst_port: dst.port().to_be(),
        protocol,
        tcp_flags: if protocol == PROTO_UDP { 0 } else { tcp_flags },
        ttl: 64,
    };
    let listener_name = |id: u32| {
        desired
            .listeners
            .values()
            .find(|l| l.id == id)
            .map_or_else(|| format!("id {id}"), |l| l.name.clone())
    };
    explain_with(&mut tables.into_iter(), &listener_name, &packet, now)
}

/// The decision's tables read from the pinned maps, as the program running on `cpu` sees
/// them, for the family `F`. A failed read is kept and turned into an error after the
/// decision.
pub struct LiveTables<'a, F> {
    dp: &'a DataPlane,
    cpu: usize,
    error: RefCell<Option<String>>,
    family: PhantomData<F>,
}

impl<'a, F> LiveTables<'a, F> {
    pub fn new(dp: &'a DataPlane, cpu: usize) -> Self {
        Self {
            dp,
            cpu,
            error: RefCell::new(None),
            family: PhantomData,
        }
    }

    fn read<T>(&self, what: &str, r: Result<T, crate::dataplane::DataPlaneError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.error
                    .borrow_mut()
                    .get_or_insert_with(|| format!("reading {what}: {e}"));
                None
            }
        }
    }

    // What both families share: the backends, the tables, the cursors and counts.

    fn shared_backend(&self, id: u32) -> Option<Read<Backend>> {
        // An id past the array's end is no backend, as in XDP.
        if id >= self.dp.sizes().max_backends {
            return None;
        }
        self.read("BACKENDS", self.dp.backend(id)).map(Read)
    }

    fn shared_table_meta(&self, table: u32) -> Option<Read<TableMeta>> {
        self.read("TABLE_META", self.dp.table_meta(table)).map(Read)
    }

    fn shared_cursor(&self, listener: u32) -> u32 {
        self.read("CURSORS", self.dp.cursors(listener))
            .and_then(|c| c.get(self.cpu).copied())
            .unwrap_or(0)
    }

    fn shared_active_flows(&self, id: u32) -> u32 {
        self.read("ACTIVE_FLOWS", self.dp.active_flows(id))
            .unwrap_or(0)
    }

    fn listener_at(&self, key: ListenerMapKey) -> Option<Read<Listener>> {
        self.read("LISTENERS", self.dp.listener(&key))
            .flatten()
            .map(Read)
    }
}

/// An entry read out of a map: the decision reads it through `Deref`.
pub struct Read<T>(T);

impl<T> std::ops::Deref for Read<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The methods both families' live tables answer alike.
macro_rules! shared_tables {
    () => {
        fn backend(&self, id: u32) -> Option<Read<Backend>> {
            self.shared_backend(id)
        }

        fn table_meta(&self, table: u32) -> Option<Read<TableMeta>> {
            self.shared_table_meta(table)
        }

        fn maglev(&self, index: u32) -> u32 {
            self.dp.maglev_entry(index)
        }

        fn sequence(&self, index: u32) -> u32 {
            self.dp.sequence_entry(index)
        }

        fn take_cursor(&self, listener: u32) -> u32 {
            self.shared_cursor(listener)
        }

        fn active_flows(&self, id: u32) -> u32 {
            self.shared_active_flows(id)
        }
    };
}

impl Tables for LiveTables<'_, V4> {
    type Family = V4;
    type Ref<'a, T: 'a>
        = Read<T>
    where
        Self: 'a;

    shared_tables!();

    fn listener(&self, key: &ListenerKey) -> Option<Read<Listener>> {
        self.listener_at(ListenerMapKey::V4(*key))
    }

    fn acl_matches(&self, acl: u32, addr: u32) -> bool {
        self.read("ACLS", self.dp.acl_matches(acl, V4::ip(addr)))
            .unwrap_or(false)
    }

    fn flow(&self, key: &FlowKey) -> Option<Read<Flow>> {
        self.read("FLOWS", self.dp.flow(key)).flatten().map(Read)
    }

    fn affinity(&self, listener: u32, addr: u32) -> Option<Read<Affinity>> {
        let key = AffinityKey { listener, addr };
        self.read("AFFINITY", self.dp.affinity(&key))
            .flatten()
            .map(Read)
    }
}

impl Tables for LiveTables<'_, V6> {
    type Family = V6;
    type Ref<'a, T: 'a>
        = Read<T>
    where
        Self: 'a;

    shared_tables!();

    fn listener(&self, key: &ListenerKey6) -> Option<Read<Listener>> {
        self.listener_at(ListenerMapKey::V6(*key))
    }

    fn acl_matches(&self, acl: u32, addr: Addr6) -> bool {
        self.read("ACLS6", self.dp.acl_matches(acl, V6::ip(addr)))
            .unwrap_or(false)
    }

    fn flow(&self, key: &FlowKey6) -> Option<Read<Flow>> {
        self.read("FLOWS6", self.dp.flow6(key)).flatten().map(Read)
    }

    fn affinity(&self, listener: u32, addr: Addr6) -> Option<Read<Affinity>> {
        let key = AffinityKey6 { listener, addr };
        self.read("AFFINITY6", self.dp.affinity6(&key))
            .flatten()
            .map(Read)
    }
}

impl ExplainTables for LiveTables<'_, V4> {
    fn read_error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    fn backend_ip(&self, _id: u32, b: &Backend) -> Option<IpAddr> {
        Some(V4::ip(b.addr))
    }
}

impl ExplainTables for LiveTables<'_, V6> {
    fn read_error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    fn backend_ip(&self, id: u32, _b: &Backend) -> Option<IpAddr> {
        self.read("BACKENDS6", self.dp.backend_address6(id))
            .map(IpAddr::V6)
    }
}

/// In-memory IPv4 tables (the controller's tests) read without failing.
impl ExplainTables for lb_common::memory::MemoryTables<V4> {
    fn read_error(&self) -> Option<String> {
        None
    }

    fn backend_ip(&self, _id: u32, b: &Backend) -> Option<IpAddr> {
        Some(V4::ip(b.addr))
    }
}

/// In-memory IPv6 tables: `BACKENDS6` is not among them, so a backend shows as its id.
impl ExplainTables for lb_common::memory::MemoryTables<V6> {
    fn read_error(&self) -> Option<String> {
        None
    }

    fn backend_ip(&self, _id: u32, _b: &Backend) -> Option<IpAddr> {
        None
    }
}

/// Collects the decision's events.
struct Recorder(Vec<Event>);

impl Trace for Recorder {
    fn event(&mut self, event: Event) {
        self.0.push(event);
    }
}

/// Whether an event depends on the CPU the packet runs on.
const fn per_cpu(event: &Event) -> bool {
    matches!(
        event,
        Event::Sequence { .. } | Event::Scan | Event::WlcCandidate { .. } | Event::WlcPick { .. }
    )
}

/// The decision for `packet` on each CPU's view of the tables (`tables` yields one per
/// CPU, CPU 0 first), in words.
fn explain_with<T: ExplainTables>(
    tables: &mut dyn Iterator<Item = T>,
    listener_name: &dyn Fn(u32) -> String,
    packet: &Packet<T::Family>,
    now: u64,
) -> anyhow::Result<Explanation> {
    let first = tables
        .next()
        .ok_or_else(|| anyhow::anyhow!("no CPU to explain the packet on"))?;
    let mut recorder = Recorder(Vec::new());
    let outcome = decide::decide_packet(&first, &mut recorder, packet, now);
    if let Some(e) = first.read_error() {
        anyhow::bail!("{e}");
    }
    let words = Words {
        tables: &first,
        packet,
        now,
    };
    let mut steps = vec![words.listener_line(listener_name)];
    let events = recorder.0;
    let depends_on_cpu = events.iter().any(per_cpu);
    steps.extend(
        events
            .iter()
            .filter(|e| !per_cpu(e))
            .filter_map(|e| words.event(e)),
    );
    if !depends_on_cpu {
        steps.push(words.outcome_line(outcome));
        return Ok(words.explanation(steps, outcome));
    }

    // Each CPU decides from its own round-robin position.
    let mut outcomes = vec![(0usize, outcome, cpu_line(&words, &events, outcome))];
    for (cpu, t) in tables.enumerate() {
        let mut recorder = Recorder(Vec::new());
        let outcome = decide::decide_packet(&t, &mut recorder, packet, now);
        if let Some(e) = t.read_error() {
            anyhow::bail!("{e}");
        }
        let words = Words {
            tables: &t,
            packet,
            now,
        };
        outcomes.push((cpu + 1, outcome, cpu_line(&words, &recorder.0, outcome)));
    }
    let scheduler = words.scheduler_name();
    steps.push(format!(
        "{scheduler}: the pick depends on the CPU that receives the packet; each CPU has its own position:"
    ));
    steps.extend(
        outcomes
            .iter()
            .map(|(cpu, _, line)| format!("CPU {cpu}: {line}")),
    );
    let agreed = outcomes.iter().all(|(_, o, _)| *o == outcome);
    if agreed {
        Ok(words.explanation(steps, outcome))
    } else {
        Ok(Explanation {
            steps,
            backend: None,
            outcome: "depends-on-cpu".to_owned(),
        })
    }
}

/// One CPU's pick in one line.
fn cpu_line<T: ExplainTables>(words: &Words<'_, T>, events: &[Event], outcome: Outcome) -> String {
    let mut parts: Vec<String> = Vec::new();
    let candidates: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::WlcCandidate {
                backend,
                active,
                weight,
            } => Some(format!(
                "{} active {active} weight {weight}",
                words.name(*backend)
            )),
            _ => None,
        })
        .collect();
    if !candidates.is_empty() {
        parts.push(format!(
            "fewest active flows per unit of weight among {}",
            candidates.join(", ")
        ));
    }
    parts.extend(
        events
            .iter()
            .filter(|e| per_cpu(e) && !matches!(e, Event::WlcCandidate { .. } | Event::Scan))
            .filter_map(|e| words.event(e)),
    );
    parts.push(words.outcome_line(outcome));
    parts.join("; ")
}

/// Puts the decision into words.
struct Words<'a, T: ExplainTables> {
    tables: &'a T,
    packet: &'a Packet<T::Family>,
    now: u64,
}

impl<T: ExplainTables> Words<'_, T> {
    fn listener(&self) -> Option<Listener> {
        decide::listener_for(self.tables, self.packet).map(|l| *l)
    }

    fn proto(&self) -> &'static str {
        if self.packet.protocol == PROTO_TCP {
            "tcp"
        } else {
            "udp"
        }
    }

    fn dst(&self) -> SocketAddr {
        SocketAddr::new(
            T::Family::ip(self.packet.dst_addr),
            u16::from_be(self.packet.dst_port),
        )
    }

    fn src(&self) -> IpAddr {
        T::Family::ip(self.packet.src_addr)
    }

    fn scheduler_name(&self) -> &'static str {
        self.listener()
            .and_then(|l| Scheduler::from_u8(l.scheduler))
            .map_or("?", Scheduler::name)
    }

    fn address(&self, id: u32) -> Option<String> {
        let b = self.tables.backend(id).filter(|b| b.generation != 0)?;
        let ip = self.tables.backend_ip(id, &b)?;
        Some(SocketAddr::new(ip, u16::from_be(b.port)).to_string())
    }

    fn name(&self, id: u32) -> String {
        if id == NO_BACKEND {
            return "no backend".to_owned();
        }
        match self.address(id) {
            Some(a) => format!("{a} (backend id {id})"),
            None => format!("backend id {id} (empty)"),
        }
    }

    fn listener_line(&self, listener_name: &dyn Fn(u32) -> String) -> String {
        let (dst, proto) = (self.dst(), self.proto());
        match self.listener() {
            Some(l) => format!(
                "listener {} (id {}) matches {dst}/{proto}: scheduler {}, live table slot {}",
                listener_name(l.id),
                l.id,
                self.scheduler_name(),
                l.table
            ),
            None if decide::is_vip(self.tables, self.packet.dst_addr) => format!(
                "{dst}/{proto}: {} is a VIP but no listener has port {}/{proto}",
                dst.ip(),
                dst.port()
            ),
            None => format!("{dst}/{proto}: not a listener, unless it is a reply of a known flow"),
        }
    }

    fn event(&self, event: &Event) -> Option<String> {
        let listener = self.listener().unwrap_or_default();
        Some(match *event {
            Event::NoAcl => "no access list".to_owned(),
            Event::Acl { matched, denied } => format!(
                "access list {} ({}): {} {} an entry → {}",
                listener.acl_id,
                if listener.acl_mode == ACL_ALLOW {
                    "allow"
                } else {
                    "deny"
                },
                self.src(),
                if matched { "matches" } else { "matches no" },
                if denied { "denied" } else { "allowed" }
            ),
            Event::TtlExpired => "TTL ≤ 1: the kernel answers time exceeded".to_owned(),
            Event::NoFlowEntry => "no flow entry".to_owned(),
            Event::FlowEntry {
                backend,
                last_seen_ns,
                flags,
                state,
            } => format!(
                "flow entry: {}, idle {} s of {} s allowed → {}",
                self.name(backend),
                self.now.saturating_sub(last_seen_ns) / 1_000_000_000,
                select::idle_timeout_s(self.packet.protocol, flags, &listener),
                match state {
                    EntryState::Live { closing: false } => "live",
                    EntryState::Live { closing: true } => "live, FIN/RST seen",
                    EntryState::Expired => "expired",
                    EntryState::BackendUnusable => "its backend is gone or unhealthy",
                    EntryState::Missing => "missing",
                }
            ),
            Event::Draining { deadline_ns } => format!(
                "its backend is draining: the flow continues for {} s more",
                deadline_ns.saturating_sub(self.now) / 1_000_000_000
            ),
            Event::DrainExpired => {
                "its backend is drained and the drain timeout has passed: the flow is cut"
                    .to_owned()
            }
            Event::DrainExpiredRstPasses => "its backend is drained and the drain timeout has \
                passed, but the client's own RST goes through to the backend"
                .to_owned(),
            Event::Established { backend } => {
                format!("packet of an established flow → {}", self.name(backend))
            }
            Event::Opens { step: Step::Pickup } => {
                "TCP packet without SYN and without a usable entry: mid-flow pickup through \
                  the Maglev table on the 4-tuple, whatever the scheduler"
                    .to_owned()
            }
            Event::Opens { .. } => "new flow: scheduled".to_owned(),
            Event::RefusedSource => format!(
                "{} is an address of this host, a VIP or in refused_client_sources: no client \
                 has it, the packet is forged",
                self.src()
            ),
            Event::NoBackendTakesNewFlows => {
                "no backend takes new flows (all down, weight 0 or draining)".to_owned()
            }
            Event::NoAffinity => format!("persistence: no affinity entry for {}", self.src()),
            Event::AffinityExpired => "persistence: the affinity entry has expired".to_owned(),
            Event::AffinityBackendRefuses { backend } => format!(
                "persistence: the affinity entry's backend {} no longer takes new flows",
                self.name(backend)
            ),
            Event::Affinity { backend } => format!(
                "persistence: {} has a fresh affinity entry → {}",
                self.src(),
                self.name(backend)
            ),
            Event::Pickup {
                slot,
                size,
                backend,
            } => format!("Maglev slot {slot} of {size} → {}", self.name(backend)),
            Event::Maglev {
                source,
                slot,
                size,
                backend,
            } => format!(
                "{}: hash of the {} → Maglev slot {slot} of {size} → {}",
                self.scheduler_name(),
                if source { "source address" } else { "4-tuple" },
                self.name(backend)
            ),
            Event::Sequence { position, backend } => format!(
                "sequence position {position} of {} → {}",
                self.tables
                    .table_meta(listener.table)
                    .map_or(0, |m| m.sequence_len),
                self.name(backend)
            ),
            Event::Reopened { backend } => format!(
                "the entry's connection has closed and its backend {} takes new flows: the \
                 new connection stays with it",
                self.name(backend)
            ),
            Event::Scan | Event::WlcCandidate { .. } => return None,
            Event::WlcPick { backend } => format!(
                "→ {} (ties go to the first in the rotating scan)",
                self.name(backend)
            ),
            Event::Unusable { backend } => format!(
                "{} cannot take the flow (gone or unhealthy since the table was built)",
                self.name(backend)
            ),
            Event::Picked { .. } => return None,
        })
    }

    fn outcome_line(&self, outcome: Outcome) -> String {
        match outcome {
            Outcome::Forward(id) => format!("forwarded to {}", self.name(id)),
            Outcome::Reset => format!(
                "the LB answers with a RST ({})",
                Reason::ResetDrainExpired.name()
            ),
            Outcome::Drop(reason) => format!("dropped ({})", reason.name()),
            Outcome::Pass(reason) => format!("passed to the kernel ({})", reason.name()),
        }
    }

    fn explanation(&self, steps: Vec<String>, outcome: Outcome) -> Explanation {
        let (outcome, backend) = match outcome {
            Outcome::Forward(id) => ("forward", self.address(id)),
            Outcome::Reset => ("reset", None),
            Outcome::Drop(_) => ("drop", None),
            Outcome::Pass(_) => ("pass", None),
        };
        Explanation {
            steps,
            backend,
            outcome: outcome.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{
        ACL_DENY, BACKEND_F_DRAINING, FLOW_F_RST, PROTO_TCP, PROTO_UDP,
        memory::{
            MemoryTables,
            example::{CLIENT, NOW, S, flow, packet, tables},
        },
        select::{TCP_ACK, TCP_SYN},
    };

    use super::*;

    /// Explains the example packet with one table set per CPU.
    fn run(per_cpu: Vec<MemoryTables>, p: &Packet) -> Explanation {
        let name = |id: u32| format!("web{id}");
        explain_with(&mut per_cpu.into_iter(), &name, p, NOW).expect("explains")
    }

    fn has(e: &Explanation, text: &str) -> bool {
        e.steps.iter().any(|s| s.contains(text))
    }

    #[test]
    fn maglev_schedulers_name_the_backend_and_the_slot() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        let e = run(vec![tables(Scheduler::Sch, PROTO_TCP)], &syn);
        assert_eq!(e.outcome, "forward");
        assert_eq!(e.backend.as_deref(), Some("198.18.1.11:8080"));
        assert!(has(
            &e,
            "listener web1 (id 1) matches 198.19.0.100:80/tcp: scheduler sch"
        ));
        assert!(
            has(&e, "sch: hash of the source address → Maglev slot"),
            "{e:?}"
        );
        let e = run(vec![tables(Scheduler::Tch, PROTO_TCP)], &syn);
        assert_eq!(e.backend.as_deref(), Some("198.18.1.12:8080"));
        assert!(has(&e, "tch: hash of the 4-tuple"));
    }

    #[test]
    fn round_robin_gives_each_cpus_pick() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        for scheduler in [Scheduler::Wrr, Scheduler::Rr] {
            let mut cpu0 = tables(scheduler, PROTO_TCP);
            let mut cpu1 = tables(scheduler, PROTO_TCP);
            cpu0.cursors.insert(1, 0);
            cpu1.cursors.insert(1, 5);
            let e = run(vec![cpu0.clone(), cpu1], &syn);
            assert_eq!(e.outcome, "depends-on-cpu", "{scheduler:?}");
            assert_eq!(e.backend, None);
            assert!(has(
                &e,
                "CPU 0: sequence position 0 of 3 → 198.18.1.10:8080 (backend id 0)"
            ));
            assert!(has(
                &e,
                "CPU 1: sequence position 2 of 3 → 198.18.1.12:8080 (backend id 2)"
            ));
            // Both CPUs at the same position: one answer.
            let e = run(vec![cpu0.clone(), cpu0], &syn);
            assert_eq!(e.outcome, "forward");
            assert_eq!(e.backend.as_deref(), Some("198.18.1.10:8080"));
        }
    }

    #[test]
    fn wlc_lists_the_candidates_and_the_pick() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        let mut t = tables(Scheduler::Wlc, PROTO_TCP);
        t.active_flows.extend([(0, 4), (1, 2), (2, 7)]);
        let mut other_cpu = t.clone();
        other_cpu.cursors.insert(1, 2);
        let e = run(vec![t, other_cpu], &syn);
        assert_eq!(e.outcome, "forward", "{e:?}");
        assert_eq!(e.backend.as_deref(), Some("198.18.1.11:8080"));
        assert!(has(
            &e,
            "CPU 0: fewest active flows per unit of weight among 198.18.1.10:8080 (backend id 0) active 4 weight 100"
        ));
        assert!(has(
            &e,
            "CPU 1: fewest active flows per unit of weight among 198.18.1.12:8080 (backend id 2) active 7 weight 100"
        ));
    }

    #[test]
    fn every_flow_entry_state_is_told() {
        let ack = packet(PROTO_TCP, TCP_ACK);
        let syn = packet(PROTO_TCP, TCP_SYN);
        let key = ack.flow_key();
        let mut t = tables(Scheduler::Sch, PROTO_TCP);
        // Missing: a SYN is scheduled, an ACK picked up.
        let e = run(vec![t.clone()], &ack);
        assert!(has(&e, "no flow entry"));
        assert!(has(&e, "mid-flow pickup"));
        assert_eq!(e.backend.as_deref(), Some("198.18.1.12:8080"));
        // Live.
        t.flows.insert(key, flow(0, 0, 5));
        let e = run(vec![t.clone()], &ack);
        assert!(has(&e, "idle 5 s of 900 s allowed → live"), "{e:?}");
        assert!(has(&e, "packet of an established flow → 198.18.1.10:8080"));
        assert_eq!(e.backend.as_deref(), Some("198.18.1.10:8080"));
        // Closing: the SYN of a new connection on the same port stays on the backend...
        t.flows.insert(key, flow(0, FLOW_F_RST, 1));
        let e = run(vec![t.clone()], &syn);
        assert!(has(&e, "live, FIN/RST seen"));
        assert!(has(&e, "new flow: scheduled"));
        assert!(has(&e, "the new connection stays with it"), "{e:?}");
        assert_eq!(e.backend.as_deref(), Some("198.18.1.10:8080"));
        // ... unless the backend no longer takes new flows: then it is scheduled.
        t.backends.get_mut(&0).unwrap().weight = 0;
        let e = run(vec![t.clone()], &syn);
        assert_eq!(e.backend.as_deref(), Some("198.18.1.11:8080"));
        t.backends.get_mut(&0).unwrap().weight = 100;
        // Expired.
        t.flows.insert(key, flow(0, 0, 901));
        let e = run(vec![t.clone()], &ack);
        assert!(has(&e, "→ expired"));
        assert_eq!(e.backend.as_deref(), Some("198.18.1.12:8080"));
        // Backend unusable.
        t.flows.insert(key, flow(0, 0, 5));
        t.backends.get_mut(&0).unwrap().flags = 0;
        let e = run(vec![t.clone()], &ack);
        assert!(has(&e, "its backend is gone or unhealthy"));
        assert_eq!(e.backend.as_deref(), Some("198.18.1.12:8080"));
    }

    #[test]
    fn persistence_is_told_before_the_scheduler() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        for scheduler in [
            Scheduler::Wrr,
            Scheduler::Rr,
            Scheduler::Wlc,
            Scheduler::Sch,
            Scheduler::Tch,
        ] {
            let mut t = tables(scheduler, PROTO_TCP);
            t.listeners
                .get_mut(&syn.listener_key())
                .unwrap()
                .persistence_timeout_s = 60;
            // No affinity entry yet: the scheduler picks.
            let e = run(vec![t.clone()], &syn);
            assert!(
                has(&e, "persistence: no affinity entry for 198.18.0.7"),
                "{scheduler:?}: {e:?}"
            );
            // A fresh entry binds the client to its backend, whatever the scheduler
            // would pick and on every CPU alike.
            let key = (1, CLIENT);
            t.affinity.insert(
                key,
                Affinity {
                    backend: 2,
                    generation: 1,
                    last_seen_ns: NOW - 10 * S,
                },
            );
            let mut other_cpu = t.clone();
            other_cpu.cursors.insert(1, 1);
            let e = run(vec![t.clone(), other_cpu], &syn);
            assert!(
                has(
                    &e,
                    "persistence: 198.18.0.7 has a fresh affinity entry → 198.18.1.12:8080"
                ),
                "{scheduler:?}: {e:?}"
            );
            assert_eq!(e.outcome, "forward", "{scheduler:?}: {e:?}");
            assert_eq!(e.backend.as_deref(), Some("198.18.1.12:8080"));
            assert!(!has(&e, "CPU 1:"), "{scheduler:?}: no per-CPU pick: {e:?}");
            // Past the persistence timeout the entry no longer binds.
            t.affinity.get_mut(&key).unwrap().last_seen_ns = NOW - 61 * S;
            let e = run(vec![t.clone()], &syn);
            assert!(
                has(&e, "persistence: the affinity entry has expired"),
                "{scheduler:?}: {e:?}"
            );
            // A backend that no longer takes new flows (draining) gives way.
            t.affinity.get_mut(&key).unwrap().last_seen_ns = NOW - 10 * S;
            t.backends.get_mut(&2).unwrap().flags |= BACKEND_F_DRAINING;
            let e = run(vec![t.clone()], &syn);
            assert!(
                has(
                    &e,
                    "the affinity entry's backend 198.18.1.12:8080 (backend id 2) no longer takes new flows"
                ),
                "{scheduler:?}: {e:?}"
            );
            // Persistence binds new flows only: a pickup follows the Maglev table.
            let ack = packet(PROTO_TCP, TCP_ACK);
            let e = run(vec![t.clone()], &ack);
            assert!(has(&e, "mid-flow pickup"), "{scheduler:?}: {e:?}");
            assert!(!has(&e, "persistence"), "{scheduler:?}: {e:?}");
        }
    }

    #[test]
    fn udp_flow_entries_live_expire_and_follow_their_backend() {
        let dgram = packet(PROTO_UDP, 0);
        let mut t = tables(Scheduler::Sch, PROTO_UDP);
        let e = run(vec![t.clone()], &dgram);
        assert!(has(&e, "no flow entry"));
        assert!(has(&e, "new flow: scheduled"), "UDP has no pickup: {e:?}");
        assert_eq!(e.backend.as_deref(), Some("198.18.1.11:8080"));
        t.flows.insert(dgram.flow_key(), flow(0, 0, 29));
        let e = run(vec![t.clone()], &dgram);
        assert!(has(&e, "idle 29 s of 30 s allowed → live"), "{e:?}");
        assert_eq!(e.backend.as_deref(), Some("198.18.1.10:8080"));
        t.flows.insert(dgram.flow_key(), flow(0, 0, 31));
        let e = run(vec![t.clone()], &dgram);
        assert!(has(&e, "idle 31 s of 30 s allowed → expired"), "{e:?}");
        assert_eq!(e.backend.as_deref(), Some("198.18.1.11:8080"));
    }

    #[test]
    fn a_pick_that_cannot_take_the_flow_is_dropped() {
        let syn = packet(PROTO_TCP, TCP_SYN);
        // The Maglev table still names backend 1, which has failed since it was built.
        let mut t = tables(Scheduler::Sch, PROTO_TCP);
        t.backends.get_mut(&1).unwrap().flags = 0;
        let e = run(vec![t], &syn);
        assert_eq!(e.outcome, "drop");
        assert!(has(
            &e,
            "198.18.1.11:8080 (backend id 1) cannot take the flow"
        ));
        assert!(has(&e, "dropped (drop_no_backend)"));
        // No backend takes new flows at all.
        let mut t = tables(Scheduler::Wrr, PROTO_TCP);
        t.table_meta.get_mut(&2).unwrap().backends = 0;
        let e = run(vec![t], &syn);
        assert_eq!(e.outcome, "drop");
        assert!(has(&e, "no backend takes new flows"));
        // wlc with every candidate at weight 0.
        let mut t = tables(Scheduler::Wlc, PROTO_TCP);
        for b in t.backends.values_mut() {
            b.weight = 0;
        }
        let e = run(vec![t], &syn);
        assert_eq!(e.outcome, "drop", "{e:?}");
        assert!(has(&e, "→ no backend"), "{e:?}");
    }

    #[test]
    fn drains_access_lists_and_strangers() {
        let ack = packet(PROTO_TCP, TCP_ACK);
        let mut t = tables(Scheduler::Wrr, PROTO_TCP);
        t.flows.insert(ack.flow_key(), flow(0, 0, 5));
        let b = t.backends.get_mut(&0).unwrap();
        b.flags |= BACKEND_F_DRAINING;
        b.drain_deadline_ns = NOW + 30 * S;
        let e = run(vec![t.clone()], &ack);
        assert!(has(&e, "the flow continues for 30 s more"));
        assert_eq!(e.outcome, "forward");
        t.backends.get_mut(&0).unwrap().drain_deadline_ns = NOW - 1;
        let e = run(vec![t.clone()], &ack);
        assert_eq!(e.outcome, "reset");
        assert!(has(&e, "reset_drain_expired"));
        let rst = packet(PROTO_TCP, TCP_ACK | select::TCP_RST);
        let e = run(vec![t.clone()], &rst);
        assert_eq!(e.outcome, "forward");
        assert!(has(&e, "the client's own RST goes through"));

        let mut t = tables(Scheduler::Wrr, PROTO_UDP);
        let l = t
            .listeners
            .get_mut(&packet(PROTO_UDP, 0).listener_key())
            .unwrap();
        l.acl_mode = ACL_DENY;
        l.acl_id = 4;
        t.acls.push((4, u32::from_ne_bytes([198, 18, 0, 0]), 16));
        let e = run(vec![t.clone()], &packet(PROTO_UDP, 0));
        assert_eq!(e.outcome, "drop");
        assert!(has(
            &e,
            "access list 4 (deny): 198.18.0.7 matches an entry → denied"
        ));
        assert!(has(&e, "dropped (drop_acl_denied)"));

        let mut stranger = packet(PROTO_TCP, TCP_SYN);
        stranger.dst_port = 443u16.to_be();
        let e = run(vec![tables(Scheduler::Wrr, PROTO_TCP)], &stranger);
        assert_eq!(e.outcome, "drop");
        assert!(has(
            &e,
            "198.19.0.100 is a VIP but no listener has port 443/tcp"
        ));
        assert!(has(&e, "drop_vip_no_listener"));
    }
}
