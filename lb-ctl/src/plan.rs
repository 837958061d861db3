//! From the effective config and the runtime facts (health, drains, slow start) to the
//! desired contents of the data plane: every listener with its id, settings and backends,
//! and every backend with its id, weight and state.
//!
//! Pure: no maps here. `reconcile` turns a `Desired` into map operations.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    LISTENER_F_ANSWER_PING, LISTENER_F_VIP_MARKER, MAX_ENDPOINT_LISTENERS, REFUSED_SOURCES_ACL,
    Scheduler,
};
use thiserror::Error;

use crate::{
    config::{self, Config, Protocol, VipPing},
    family::{EndpointEntry, EndpointMapKey, ListenerMapKey, Served},
};

/// A listener as the data plane knows it: VIP, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Frontend {
    pub fn of(listener: &config::Listener) -> Self {
        Self {
            address: listener.address,
            port: listener.port,
            protocol: listener.protocol,
        }
    }

    /// Its key in its family's listener table.
    pub fn key(&self) -> ListenerMapKey {
        ListenerMapKey::new(self.address, self.port, self.protocol.number())
    }
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = SocketAddr::new(self.address, self.port);
        write!(f, "{endpoint}/{}", self.protocol)
    }
}

/// A backend: one server:port of a listener's group. Health, weight and counters are per
/// (listener, server, port), as in CLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub frontend: Frontend,
    pub address: IpAddr,
    pub port: u16,
}

/// A backend's place in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Default or vServer group member.
    Member,
    Primary,
    Secondary,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// Facts the config does not hold, owned by the health checker and the API.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    /// Backends whose health checks failed. Absent means healthy: a backend takes
    /// traffic from the start and the checker takes it out when it fails.
    pub unhealthy: BTreeSet<BackendKey>,
    /// Effective weight overrides (slow start ramps), by backend.
    pub effective_weight: HashMap<BackendKey, u32>,
    /// Backends being drained (`lb-ctl server drain`): no new flows; their flows continue
    /// until the deadline (`bpf_ktime_get_coarse_ns` time), then the data plane cuts them.
    pub draining: BTreeMap<BackendKey, u64>,
    /// Backends removed from their listener's group with connection drain on: still in
    /// the data plane, draining, until the deadline.
    pub departing: BTreeMap<BackendKey, u64>,
    /// The host's addresses: no client has them, so new flows from them are refused
    /// (`REFUSED_SOURCES_ACL`).
    pub local_addresses: BTreeSet<IpAddr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredBackend {
    pub key: BackendKey,
    pub id: u32,
    pub generation: u32,
    pub role: Role,
    /// Configured weight, 0..=100.
    pub weight: u32,
    /// Weight the schedulers use (the configured one, or a slow-start ramp of it).
    pub effective_weight: u32,
    pub healthy: bool,
    /// Its established flows keep going (present and healthy; weight 0 included).
    pub usable: bool,
    /// It takes new flows: in the selection tables.
    pub in_table: bool,
    /// Draining (drained, or removed with connection drain on): flows continue until this
    /// `bpf_ktime_get_coarse_ns` time.
    pub drain_deadline_ns: Option<u64>,
    /// Removed from the group, kept only while its flows drain.
    pub departing: bool,
}

impl DesiredBackend {
    /// Its endpoint as its replies show it, for a listener of `protocol`.
    pub fn endpoint(&self, protocol: u8) -> EndpointMapKey {
        EndpointMapKey::new(self.key.address, self.key.port, protocol)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredListener {
    pub name: String,
    pub frontend: Frontend,
    pub id: u32,
    /// Group name (`default` for the default group).
    pub group: String,
    pub scheduler: Scheduler,
    pub established_timeout: u32,
    pub udp_timeout: u32,
    pub persistence_timeout: u32,
    /// Slots of each of the listener's Maglev tables.
    pub maglev_table_size: u32,
    /// `lb_common::ACL_*` and the access list's id (0 without one).
    pub acl_mode: u8,
    pub acl_id: u32,
    /// Connection drain for removed servers: seconds, when enabled.
    pub drain_timeout: Option<u32>,
    /// `forwarding: dsr`: how packets are encapsulated; `None` for NAT.
    pub dsr: Option<config::Dsr>,
    pub backends: Vec<DesiredBackend>,
}

/// Everything the data plane should hold, by listener name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub listeners: BTreeMap<String, DesiredListener>,
    /// Access list id → its prefixes (address, length), of both families.
    pub acls: BTreeMap<u32, BTreeSet<(IpAddr, u8)>>,
    /// `Listener::flags` of every VIP's marker.
    pub vip_marker_flags: u8,
    /// Every backend endpoint with the listeners it serves: how replies find their flow.
    pub endpoints: BTreeMap<EndpointMapKey, EndpointEntry>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no listener id left: max_listeners is {0}")]
    ListenersExhausted(u32),
    #[error("no backend id left: max_backends is {0} (listener × server × port)")]
    BackendsExhausted(u32),
    #[error("too many access list entries: {0} (at most {max})", max = lb_common::MAX_ACL_ENTRIES)]
    AclEntriesExhausted(usize),
    #[error(
        "backend {endpoint} serves {} listeners ({}); at most {MAX_ENDPOINT_LISTENERS} may share \
         one backend address, port and protocol: give some of them another backend port",
        listeners.len(),
        listeners.join(", ")
    )]
    EndpointShared {
        endpoint: String,
        listeners: Vec<String>,
    },
}

/// Stable ids for listeners and backends. A listener keeps its id (and so its table
/// slots, cursors and counters) for as long as its frontend exists; a backend keeps its id
/// while it stays in its listener's group. A reused backend id gets a new generation, so
/// flows of its previous owner are never delivered to the new one.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    max_listeners: u32,
    max_backends: u32,
    listeners: BTreeMap<Frontend, u32>,
    backends: BTreeMap<BackendKey, (u32, u32)>,
    /// Access list name → id (from 1; 0 means none).
    acls: BTreeMap<String, u32>,
    /// Last generation handed out per backend id.
    generations: HashMap<u32, u32>,
}

impl Ids {
    pub fn new(max_listeners: u32, max_backends: u32) -> Self {
        Self {
            max_listeners,
            max_backends,
            ..Default::default()
        }
    }

    /// Records an id found in the pinned maps at start-up (re-adoption).
    pub fn adopt_listener(&mut self, frontend: Frontend, id: u32) {
        self.listeners.insert(frontend, id);
    }

    pub fn adopt_backend(&mut self, key: BackendKey, id: u32, generation: u32) {
        self.backends.insert(key, (id, generation));
        self.note_generation(id, generation);
    }

    /// Remembers that `id` was used up to `generation`, so its next owner gets a newer one.
    pub fn note_generation(&mut self, id: u32, generation: u32) {
        let g = self.generations.entry(id).or_default();
        *g = (*g).max(generation);
    }

    fn listener_id(&mut self, frontend: Frontend) -> Result<u32, PlanError> {
        if let Some(id) = self.listeners.get(&frontend) {
            return Ok(*id);
        }
        let used: BTreeSet<u32> = self.listeners.values().copied().collect();
        let id = (0..self.max_listeners)
            .find(|i| !used.contains(i))
            .ok_or(PlanError::ListenersExhausted(self.max_listeners))?;
        self.listeners.insert(frontend, id);
        Ok(id)
    }

    fn backend_id(&mut self, key: BackendKey) -> Result<(u32, u32), PlanError> {
        if let Some(v) = self.backends.get(&key) {
            return Ok(*v);
        }
        let used: BTreeSet<u32> = self.backends.values().map(|(id, _)| *id).collect();
        let id = (0..self.max_backends)
            .find(|i| !used.contains(i))
            .ok_or(PlanError::BackendsExhausted(self.max_backends))?;
        let generation = self.generations.get(&id).map_or(1, |g| g + 1);
        self.generations.insert(id, generation);
        self.backends.insert(key, (id, generation));
        Ok((id, generation))
    }

    /// Records an access list id found in the pinned data plane.
    pub fn adopt_acl(&mut self, name: String, id: u32) {
        self.acls.insert(name, id);
    }

    pub fn acl(&self, name: &str) -> Option<u32> {
        self.acls.get(name).copied()
    }

    fn acl_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.acls.get(name) {
            return *id;
        }
        let used: BTreeSet<u32> = self.acls.values().copied().collect();
        let id = (1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX);
        self.acls.insert(name.to_owned(), id);
        id
    }

    /// Forgets ids that `desired` does not use, so they can be handed out again.
    pub fn release_unused(&mut self, desired: &Desired) {
        let frontends: BTreeSet<Frontend> =
            desired.listeners.values().map(|l| l.frontend).collect();
        let backends: BTreeSet<BackendKey> = desired
            .listeners
            .values()
            .flat_map(|l| l.backends.iter().map(|b| b.key))
            .collect();
        self.listeners.retain(|f, _| frontends.contains(f));
        self.backends.retain(|k, _| backends.contains(k));
        let acls: BTreeSet<u32> = desired.acls.keys().copied().collect();
        self.acls.retain(|_, id| acls.contains(id));
    }
}

impl Runtime {
    /// Departing backends of one listener.
    fn draining_departures(&self, frontend: Frontend) -> Vec<(BackendKey, u64)> {
        self.departing
            .iter()
            .filter(|(k, _)| k.frontend == frontend)
            .map(|(k, d)| (*k, *d))
            .collect()
    }
}

/// One member of a listener's group before ids and health are applied.
pub struct GroupMember {
    pub address: IpAddr,
    pub port: u16,
    /// Configured weight (100 on primary/secondary groups, where weights do not apply).
    pub weight: u32,
    pub role: Role,
    /// Health-checked: every member but a secondary whose group does not ask for it.
    pub probed: bool,
}

/// The members of a listener's group, with the listener's backend port for the default
/// group. `config` must be validated (no dangling reference).
pub fn members(config: &Config, listener: &config::Listener) -> Vec<GroupMember> {
    match listener.named_group() {
        None => {
            let port = listener.backend_port.unwrap_or(0);
            config
                .default_server_group
                .servers
                .iter()
                .map(|s| GroupMember {
                    address: s.address,
                    port,
                    weight: u32::from(s.weight),
                    role: Role::Member,
                    probed: true,
                })
                .collect()
        }
        Some(name) => {
            if let Some(g) = config.vserver_group(name) {
                g.servers
                    .iter()
                    .map(|m| GroupMember {
                        address: m.address,
                        port: m.port,
                        weight: u32::from(m.weight),
                        role: Role::Member,
                        probed: true,
                    })
                    .collect()
            } else if let Some(g) = config.primary_secondary_group(name) {
                [(g.primary, Role::Primary), (g.secondary, Role::Secondary)]
                    .into_iter()
                    .map(|(e, role)| GroupMember {
                        address: e.address,
                        port: e.port,
                        // Weights do not apply to primary/secondary groups; one backend
                        // takes the new flows at a time.
                        weight: 100,
                        role,
                        // As in CLB, the secondary is not probed unless asked for.
                        probed: role == Role::Primary || g.probe_secondary,
                    })
                    .collect()
            } else {
                // A validated config has no dangling reference.
                Vec::new()
            }
        }
    }
}

/// Computes the desired data-plane contents. `config` must be validated.
pub fn plan(config: &Config, runtime: &Runtime, ids: &mut Ids) -> Result<Desired, PlanError> {
    let mut desired = Desired {
        vip_marker_flags: LISTENER_F_VIP_MARKER
            | match config.vip_ping {
                VipPing::Answer => LISTENER_F_ANSWER_PING,
                VipPing::Drop => 0,
            },
        ..Desired::default()
    };
    let mut entries = 0;
    for acl in &config.acls {
        let id = ids.acl_id(&acl.name);
        let prefixes: BTreeSet<(IpAddr, u8)> = acl.entries.iter().map(prefix).collect();
        entries += prefixes.len();
        desired.acls.insert(id, prefixes);
    }
    let refused: BTreeSet<(IpAddr, u8)> = runtime
        .local_addresses
        .iter()
        .map(|a| (*a, if a.is_ipv4() { 32 } else { 128 }))
        .chain(config.refused_client_sources.iter().map(prefix))
        .collect();
    if !refused.is_empty() {
        entries += refused.len();
        desired.acls.insert(REFUSED_SOURCES_ACL, refused);
    }
    if entries > lb_common::MAX_ACL_ENTRIES as usize {
        return Err(PlanError::AclEntriesExhausted(entries));
    }
    for listener in &config.listeners {
        let frontend = Frontend::of(listener);
        let id = ids.listener_id(frontend)?;
        let group = listener
            .named_group()
            .unwrap_or(config::DEFAULT_GROUP_NAME)
            .to_owned();
        let members = members(config, listener);
        let healthy = |address, port| {
            !runtime.unhealthy.contains(&BackendKey {
                frontend,
                address,
                port,
            })
        };
        let primary_up = members
            .iter()
            .find(|m| m.role == Role::Primary)
            .is_some_and(|m| healthy(m.address, m.port));

        let mut backends = Vec::with_capacity(members.len());
        for m in members {
            let key = BackendKey {
                frontend,
                address: m.address,
                port: m.port,
            };
            let (bid, generation) = ids.backend_id(key)?;
            let is_healthy = healthy(m.address, m.port);
            let effective_weight = runtime
                .effective_weight
                .get(&key)
                .copied()
                .unwrap_or(m.weight)
                .min(m.weight);
            let drain_deadline_ns = runtime.draining.get(&key).copied();
            let (usable, in_table) = match m.role {
                Role::Member => (
                    is_healthy,
                    is_healthy && effective_weight > 0 && drain_deadline_ns.is_none(),
                ),
                Role::Primary => (is_healthy, is_healthy),
                // The secondary takes new flows only while the primary is down. Its TCP
                // flows may finish after a failback; its UDP flows move back to the
                // primary (a datagram flow has nothing to finish).
                Role::Secondary => {
                    let keeps_flows = primary_up && listener.protocol == Protocol::Udp;
                    (is_healthy && !keeps_flows, is_healthy && !primary_up)
                }
            };
            backends.push(DesiredBackend {
                key,
                id: bid,
                generation,
                role: m.role,
                weight: m.weight,
                effective_weight,
                healthy: is_healthy,
                usable,
                in_table: in_table && drain_deadline_ns.is_none(),
                drain_deadline_ns,
                departing: false,
            });
        }
        // Servers removed with connection drain on stay until their deadline.
        for (key, deadline) in runtime.draining_departures(frontend) {
            if backends.iter().any(|b| b.key == key) {
                continue;
            }
            let (bid, generation) = ids.backend_id(key)?;
            backends.push(DesiredBackend {
                key,
                id: bid,
                generation,
                role: Role::Member,
                weight: 0,
                effective_weight: 0,
                healthy: true,
                usable: true,
                in_table: false,
                drain_deadline_ns: Some(deadline),
                departing: true,
            });
        }
        let (acl_mode, acl_id) = match &listener.acl {
            Some(a) => (
                match a.kind {
                    config::AclKind::Allow => lb_common::ACL_ALLOW,
                    config::AclKind::Deny => lb_common::ACL_DENY,
                },
                ids.acl(&a.name).unwrap_or(0),
            ),
            None => (lb_common::ACL_NONE, 0),
        };
        desired.listeners.insert(
            listener.name.clone(),
            DesiredListener {
                name: listener.name.clone(),
                frontend,
                id,
                group,
                scheduler: listener.scheduler,
                established_timeout: listener.established_timeout,
                udp_timeout: listener.udp_timeout,
                persistence_timeout: listener.persistence_timeout,
                maglev_table_size: listener.maglev_table_size,
                acl_mode,
                acl_id,
                drain_timeout: listener
                    .connection_drain
                    .enabled
                    .then_some(listener.connection_drain.timeout),
                dsr: (config.forwarding == config::Forwarding::Dsr).then_some(config.dsr),
                backends,
            },
        );
    }
    desired.endpoints = endpoints(&desired)?;
    ids.release_unused(&desired);
    Ok(desired)
}

/// An access-list prefix: its address and length. Each family's prefixes go to that
/// family's trie, where only packets of the family look.
fn prefix(net: &config::IpNet) -> (IpAddr, u8) {
    match net {
        config::IpNet::V4(n) => (IpAddr::V4(n.addr()), n.prefix_len()),
        config::IpNet::V6(n) => (IpAddr::V6(n.addr()), n.prefix_len()),
    }
}

/// The backend endpoints of `desired` (every backend of every listener, departing ones
/// included: their flows still get replies), each with the listeners it serves, by
/// listener id.
fn endpoints(desired: &Desired) -> Result<BTreeMap<EndpointMapKey, EndpointEntry>, PlanError> {
    let mut served: BTreeMap<EndpointMapKey, BTreeMap<u32, (Served, &str)>> = BTreeMap::new();
    // Backends of a DSR listener answer clients directly: no reply of theirs comes
    // through the LB, and the backend sees each flow's VIP, so two listeners' flows on
    // one endpoint never look alike to it.
    for l in desired.listeners.values().filter(|l| l.dsr.is_none()) {
        for b in &l.backends {
            let endpoint = b.endpoint(l.frontend.protocol.number());
            let listener = Served {
                vip: l.frontend.address,
                port: l.frontend.port,
                listener: l.id,
            };
            served
                .entry(endpoint)
                .or_default()
                .insert(l.id, (listener, l.name.as_str()));
        }
    }
    let mut out = BTreeMap::new();
    for (key, listeners) in served {
        let Some(value) = EndpointEntry::of(&key, listeners.values().map(|(l, _)| *l)) else {
            let protocol = if key.protocol() == lb_common::PROTO_UDP {
                "udp"
            } else {
                "tcp"
            };
            return Err(PlanError::EndpointShared {
                endpoint: format!(
                    "{} ({protocol})",
                    SocketAddr::new(key.address(), key.port())
                ),
                listeners: listeners.values().map(|(_, n)| (*n).to_owned()).collect(),
            });
        };
        out.insert(key, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        config::parse(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "
instance: t
interfaces: [eth0]
default_server_group:
  servers:
    - { address: 198.18.1.10 }
    - { address: 198.18.1.11, weight: 0 }
vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080, weight: 60 }
      - { address: 198.18.1.10, port: 8081, weight: 40 }
primary_secondary_groups:
  - name: db
    primary: { address: 198.18.1.20, port: 5432 }
    secondary: { address: 198.18.1.21, port: 5432 }
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
  - { name: api, protocol: tcp, address: 198.19.0.100, port: 443, server_group: api }
  - { name: db, protocol: udp, address: 198.19.0.100, port: 5432, server_group: db }
  - { name: dbt, protocol: tcp, address: 198.19.0.100, port: 5432, server_group: db }
";

    #[test]
    fn members_ids_and_table_membership() {
        let cfg = config(BASE);
        let mut ids = Ids::new(8, 64);
        let d = plan(&cfg, &Runtime::default(), &mut ids).unwrap();
        let web = &d.listeners["web"];
        assert_eq!(web.group, "default");
        assert_eq!(web.backends.len(), 2);
        assert!(web.backends.iter().all(|b| b.key.port == 8080));
        let zero = &web.backends[1];
        assert_eq!(
            (zero.usable, zero.in_table),
            (true, false),
            "weight 0 keeps flows only"
        );
        let api = &d.listeners["api"];
        assert_eq!(
            api.backends.iter().map(|b| b.key.port).collect::<Vec<_>>(),
            [8080, 8081]
        );
        // Every (listener, server, port) is its own backend id.
        let mut all: Vec<u32> = d
            .listeners
            .values()
            .flat_map(|l| l.backends.iter().map(|b| b.id))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 + 2 + 2 + 2);
        // Listener ids are distinct and stable across plans.
        let again = plan(&cfg, &Runtime::default(), &mut ids).unwrap();
        assert_eq!(d, again);
    }

    #[test]
    fn primary_secondary_failover_and_failback() {
        let cfg = config(BASE);
        let mut ids = Ids::new(8, 64);
        let mut rt = Runtime::default();
        let d = plan(&cfg, &rt, &mut ids).unwrap();
        let roles = |d: &Desired, name: &str| -> Vec<(Role, bool, bool)> {
            d.listeners[name]
                .backends
                .iter()
                .map(|b| (b.role, b.usable, b.in_table))
                .collect()
        };
        // Primary up: it takes new flows; UDP flows of the secondary move back to it, TCP
        // flows of the secondary may finish.
        assert_eq!(
            roles(&d, "db"),
            [(Role::Primary, true, true), (Role::Secondary, false, false)]
        );
        assert_eq!(
            roles(&d, "dbt"),
            [(Role::Primary, true, true), (Role::Secondary, true, false)]
        );
        // Primary down: the secondary takes everything.
        let primary = d.listeners["db"].backends[0].key;
        rt.unhealthy.insert(primary);
        let d = plan(&cfg, &rt, &mut ids).unwrap();
        assert_eq!(
            roles(&d, "db"),
            [(Role::Primary, false, false), (Role::Secondary, true, true)]
        );
        // Health is per listener: the TCP listener's primary is still up.
        assert_eq!(roles(&d, "dbt")[0], (Role::Primary, true, true));
    }

    #[test]
    fn reused_backend_ids_get_a_new_generation() {
        let mut cfg = config(BASE);
        let mut ids = Ids::new(8, 64);
        let d1 = plan(&cfg, &Runtime::default(), &mut ids).unwrap();
        let old = d1.listeners["api"].backends[1].clone();
        cfg.vserver_groups[0].servers.pop();
        plan(&cfg, &Runtime::default(), &mut ids).unwrap();
        cfg.vserver_groups[0].servers.push(config::Member::new(
            "198.18.1.12".parse::<IpAddr>().unwrap(),
            9000,
        ));
        let d3 = plan(&cfg, &Runtime::default(), &mut ids).unwrap();
        let new = &d3.listeners["api"].backends[1];
        assert_eq!(new.id, old.id, "the freed id is reused");
        assert!(new.generation > old.generation);
    }

    #[test]
    fn id_space_limits_are_reported() {
        let cfg = config(BASE);
        assert_eq!(
            plan(&cfg, &Runtime::default(), &mut Ids::new(2, 64)),
            Err(PlanError::ListenersExhausted(2))
        );
        assert_eq!(
            plan(&cfg, &Runtime::default(), &mut Ids::new(8, 3)),
            Err(PlanError::BackendsExhausted(3))
        );
    }

    /// Nine listeners on one VIP whose default group sends them all to 198.18.1.10:8080:
    /// one backend endpoint serving nine listeners, one more than a reply may search.
    #[test]
    fn a_backend_endpoint_serves_at_most_eight_listeners() {
        let listeners = |n: u16| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "  - {{ name: l{i}, protocol: tcp, address: 198.19.0.1, port: {}, \
                         backend_port: 8080 }}\n",
                        80 + i
                    )
                })
                .collect()
        };
        let yaml = |n| {
            format!(
                "instance: t\ninterfaces: [eth0]\ndefault_server_group:\n  servers:\n    \
                 - {{ address: 198.18.1.10 }}\nlisteners:\n{}",
                listeners(n)
            )
        };
        let d = plan(
            &config(&yaml(8)),
            &Runtime::default(),
            &mut Ids::new(16, 64),
        )
        .unwrap();
        assert_eq!(d.endpoints.len(), 1);
        let endpoint = d.endpoints.values().next().unwrap();
        assert_eq!(endpoint.count(), 8);
        let ids: Vec<u32> = endpoint.served().iter().map(|l| l.listener).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7], "by listener id");

        let err = plan(
            &config(&yaml(9)),
            &Runtime::default(),
            &mut Ids::new(16, 64),
        )
        .expect_err("nine listeners on one endpoint");
        assert_eq!(
            err.to_string(),
            "backend 198.18.1.10:8080 (tcp) serves 9 listeners (l0, l1, l2, l3, l4, l5, l6, l7, \
             l8); at most 8 may share one backend address, port and protocol: give some of them \
             another backend port"
        );
    }

    /// In DSR no reply comes back through the LB, and the backend sees each flow's VIP:
    /// nine listeners may share a backend endpoint, and no endpoint is written.
    #[test]
    fn dsr_listeners_carry_their_encapsulation_and_need_no_endpoints() {
        let listeners: String = (0..9)
            .map(|i| {
                format!(
                    "  - {{ name: l{i}, protocol: tcp, address: 198.19.0.{}, port: 80, \
                     backend_port: 80 }}\n",
                    i + 1
                )
            })
            .collect();
        let yaml = format!(
            "instance: t\ninterfaces: [eth0]\nforwarding: dsr\ndsr: {{ encapsulation: gue }}\n\
             default_server_group:\n  servers:\n    - {{ address: 198.18.1.10 }}\n\
             listeners:\n{listeners}"
        );
        let d = plan(&config(&yaml), &Runtime::default(), &mut Ids::new(16, 64)).unwrap();
        assert!(d.endpoints.is_empty());
        let l = &d.listeners["l0"];
        assert_eq!(
            l.dsr.map(|dsr| (dsr.encapsulation, dsr.gue_port)),
            Some((config::Tunnel::Gue, 6080))
        );
    }

    /// An IPv6 listener's backends and endpoints are keyed for the IPv6 tables, with the
    /// same ids, tables and rules as IPv4's.
    #[test]
    fn an_ipv6_listener_is_planned_like_an_ipv4_one() {
        let mut cfg = config(BASE);
        cfg.listeners[0].address = "2001:db8::100".parse().unwrap();
        cfg.default_server_group.servers[0].address = "2001:db8:1::10".parse().unwrap();
        cfg.default_server_group.servers[1].address = "2001:db8:1::11".parse().unwrap();
        let d = plan(&cfg, &Runtime::default(), &mut Ids::new(8, 64)).unwrap();
        let web = &d.listeners["web"];
        assert!(matches!(web.frontend.key(), ListenerMapKey::V6(_)));
        assert_eq!(web.frontend.to_string(), "[2001:db8::100]:80/tcp");
        assert_eq!(web.backends.len(), 2);
        let endpoint = web.backends[0].endpoint(lb_common::PROTO_TCP);
        assert_eq!(
            endpoint.address(),
            "2001:db8:1::10".parse::<IpAddr>().unwrap()
        );
        let entry = &d.endpoints[&endpoint];
        assert_eq!(
            entry.served(),
            vec![Served {
                vip: "2001:db8::100".parse().unwrap(),
                port: 80,
                listener: web.id,
            }]
        );
    }

    /// An access list may mix families; the IPv4 data plane gets its IPv4 prefixes, which
    /// are all an IPv4 packet can match.
    #[test]
    fn access_lists_hold_prefixes_of_both_families() {
        let yaml = format!(
            "{BASE}acls: [{{ name: office, entries: [198.18.0.0/24, 2001:db8::/32] }}]\n\
             refused_client_sources: [198.18.9.0/24, 2001:db8:9::/48]\n"
        );
        let d = plan(&config(&yaml), &Runtime::default(), &mut Ids::new(8, 64)).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let office: Vec<_> = d.acls[&1].iter().copied().collect();
        assert_eq!(office, [(ip("198.18.0.0"), 24), (ip("2001:db8::"), 32)]);
        let refused: Vec<_> = d.acls[&REFUSED_SOURCES_ACL].iter().copied().collect();
        assert_eq!(refused, [(ip("198.18.9.0"), 24), (ip("2001:db8:9::"), 48)]);
    }
}
