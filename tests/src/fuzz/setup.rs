//! The setup: the config a run installs, through the controller's plan and reconciler,
//! and what the model knows of it (listeners, backends, VIPs, access lists).

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    ACL_DENY, ACL_NONE, MAGLEV_TABLE_SIZE, Scheduler,
    family::addr6,
    hash,
    maglev::{self, MaglevBackend},
};
use lb_ctl::{
    config::{Config, Protocol},
    dataplane::{DataPlane, MapSizes},
    plan::{Desired, Runtime},
};

use super::{IDLE_TIMEOUT_S, model::Tuple};
use crate::provision::{self, Provisioned};

/// Map sizes of a run (the flow table's is the run's choice): listener and backend ids
/// are planned within them.
const MAX_LISTENERS: u32 = 16;
const MAX_BACKENDS: u32 = 64;

pub(super) fn sizes(flow_table_size: u32) -> MapSizes {
    MapSizes::new(flow_table_size, MAX_LISTENERS, MAX_BACKENDS)
}

/// The fuzzing config: eight IPv4 listeners on three VIPs and four IPv6 listeners on one;
/// every forwarding outcome (redirect, TX, unknown neighbour, no route, not a redirect
/// target, no backend, access list, collision) is reachable. The addresses are the lab's
/// (`lab.rs`). The generator does not aim at VIP3's only listener, so VIP3 stands for a
/// VIP none of whose listeners a frame addresses.
const CONFIG: &str = "
instance: fuzz
interfaces: [cl0, be0, ot0]
acls:
  - { name: blocked, entries: [198.18.0.3/32, 198.19.200.0/24] }
  - { name: blocked6, entries: [2001:db8:18::3/128, 2001:db8:19:200::/64] }
vserver_groups:
  - name: web
    servers:
      - { address: 198.18.1.10, port: 8080 }
      - { address: 198.18.1.11, port: 8080 }
      - { address: 198.18.1.13, port: 8080 }
  - name: dns
    servers:
      - { address: 198.18.1.10, port: 5353 }
      - { address: 198.18.1.11, port: 5353 }
  - name: web2
    servers: [{ address: 198.18.1.10, port: 8080 }]
  - name: far
    servers: [{ address: 198.19.200.10, port: 53 }]
  - name: other-side
    servers: [{ address: 198.18.2.10, port: 443 }]
  - name: empty
    servers: []
  - name: stream
    servers:
      - { address: 198.18.1.11, port: 5000 }
      - { address: 198.18.1.13, port: 5000 }
  - name: web6
    servers:
      - { address: 2001:db8:18:1::10, port: 8080 }
      - { address: 2001:db8:18:1::11, port: 8080 }
      - { address: 2001:db8:18:1::13, port: 8080 }
  - name: dns6
    servers:
      - { address: 2001:db8:18:1::10, port: 5353 }
      - { address: 2001:db8:18:1::11, port: 5353 }
  - name: tls6
    servers: [{ address: 2001:db8:18:1::10, port: 8080 }]
  - name: other-side6
    servers: [{ address: 2001:db8:18:2::10, port: 5000 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: web, scheduler: tch }
  - name: dns
    protocol: udp
    address: 198.19.0.100
    port: 53
    server_group: dns
    scheduler: tch
    udp_timeout: 900
    acl: { type: deny, name: blocked }
  - { name: web2, protocol: tcp, address: 198.19.0.101, port: 80, server_group: web2 }
  - name: dns2
    protocol: udp
    address: 198.19.0.101
    port: 53
    server_group: far
    scheduler: rr
    udp_timeout: 900
  - { name: tls2, protocol: tcp, address: 198.19.0.101, port: 443, server_group: other-side, scheduler: wlc }
  - { name: no-backend, protocol: tcp, address: 198.19.0.100, port: 8080, server_group: empty }
  - name: stream
    protocol: udp
    address: 198.19.0.100
    port: 5000
    server_group: stream
    scheduler: tch
    udp_timeout: 900
  - { name: bare, protocol: tcp, address: 198.19.0.102, port: 7, server_group: empty }
  - { name: web6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: web6, scheduler: tch }
  - name: dns6
    protocol: udp
    address: 2001:db8:19::100
    port: 53
    server_group: dns6
    scheduler: tch
    udp_timeout: 900
    acl: { type: deny, name: blocked6 }
  - { name: tls6, protocol: tcp, address: 2001:db8:19::100, port: 443, server_group: tls6 }
  - name: stream6
    protocol: udp
    address: 2001:db8:19::100
    port: 5000
    server_group: other-side6
    udp_timeout: 900
";

/// One backend entry (one member of one listener).
#[derive(Clone, Copy, Debug)]
pub struct BackendSpec {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: u8,
    pub scheduler: Scheduler,
    /// Backend ids.
    pub members: Vec<u32>,
    /// Denied source prefixes (an access list in deny mode); empty: no access list. A
    /// prefix of the other family than the listener's never matches.
    pub deny: Vec<(IpAddr, u8)>,
    maglev: Vec<u32>,
}

impl ListenerSpec {
    pub(super) fn denies(&self, src: IpAddr) -> bool {
        self.deny.iter().any(|&(net, len)| match (net, src) {
            (IpAddr::V4(net), IpAddr::V4(src)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(src) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(src)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(src) & mask == u128::from(net) & mask
            }
            _ => false,
        })
    }
}

/// What the run installs, and the model's view of it.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Indexed by backend id.
    pub backends: Vec<BackendSpec>,
    /// In listener id order.
    pub listeners: Vec<ListenerSpec>,
    pub vips: Vec<IpAddr>,
    /// Every backend endpoint (address, port, protocol) with the listeners whose members
    /// include it, as indices into `listeners` in listener id order: where a backend's
    /// packet may find its flow.
    pub endpoints: BTreeMap<(IpAddr, u16, u8), Vec<usize>>,
    config: Config,
    desired: Desired,
}

impl Setup {
    /// The fuzzing setup (`CONFIG`), planned as the controller plans it.
    pub fn standard() -> Setup {
        Setup::of(provision::config(CONFIG))
    }

    /// The model's view of `config` as planned: every listener's backends in its tables,
    /// their Maglev table, its denied prefixes. Panics on what the model does not follow
    /// (allow lists, persistence, other idle timeouts, weights).
    pub fn of(config: Config) -> Setup {
        let planned = Provisioned::plan(config, Runtime::default(), sizes(0))
            .expect("the fuzzing config fits its maps");
        let desired = planned.desired().clone();
        let mut backends: Vec<BackendSpec> = desired
            .listeners
            .values()
            .flat_map(|l| &l.backends)
            .map(|b| BackendSpec {
                id: b.id,
                addr: b.key.address,
                port: b.key.port,
            })
            .collect();
        backends.sort_by_key(|b| b.id);
        assert!(
            backends.iter().enumerate().all(|(i, b)| b.id == i as u32),
            "backend ids are 0..n: {backends:?}"
        );
        let mut listeners: Vec<ListenerSpec> = desired
            .listeners
            .values()
            .map(|l| {
                let idle_timeout = match l.frontend.protocol {
                    Protocol::Tcp => l.established_timeout,
                    Protocol::Udp => l.udp_timeout,
                };
                assert_eq!(
                    (idle_timeout, l.persistence_timeout),
                    (IDLE_TIMEOUT_S, 0),
                    "{}: the model knows one idle timeout and no persistence",
                    l.name
                );
                assert!(
                    l.backends.iter().all(|b| b.in_table && b.weight == 100),
                    "{}: the model knows healthy backends of weight 100",
                    l.name
                );
                let deny = match l.acl_mode {
                    ACL_NONE => Vec::new(),
                    ACL_DENY => desired.acls[&l.acl_id].iter().copied().collect(),
                    _ => panic!("{}: the model knows deny lists only", l.name),
                };
                let members: Vec<u32> = l.backends.iter().map(|b| b.id).collect();
                let maglev_members: Vec<MaglevBackend> = l
                    .backends
                    .iter()
                    .map(|b| match b.key.address {
                        IpAddr::V4(a) => MaglevBackend::ipv4(
                            b.id,
                            u32::from_ne_bytes(a.octets()),
                            b.key.port.to_be(),
                            b.effective_weight,
                        ),
                        IpAddr::V6(a) => MaglevBackend::ipv6(
                            b.id,
                            a.octets(),
                            b.key.port.to_be(),
                            b.effective_weight,
                        ),
                    })
                    .collect();
                ListenerSpec {
                    id: l.id,
                    vip: l.frontend.address,
                    port: l.frontend.port,
                    protocol: l.frontend.protocol.number(),
                    scheduler: l.scheduler,
                    members,
                    deny,
                    maglev: maglev::build_table(&maglev_members, MAGLEV_TABLE_SIZE),
                }
            })
            .collect();
        listeners.sort_by_key(|l| l.id);
        let mut vips: Vec<IpAddr> = listeners.iter().map(|l| l.vip).collect();
        vips.sort();
        vips.dedup();
        // From the members, not from the plan's endpoint table, so that a plan writing the
        // wrong listeners for an endpoint shows here rather than in the model.
        let mut endpoints: BTreeMap<(IpAddr, u16, u8), Vec<usize>> = BTreeMap::new();
        for (li, l) in listeners.iter().enumerate() {
            for &id in &l.members {
                let b = backends[id as usize];
                let served = endpoints.entry((b.addr, b.port, l.protocol)).or_default();
                if !served.contains(&li) {
                    served.push(li);
                }
            }
        }
        let planned_endpoints: BTreeMap<(IpAddr, u16, u8), Vec<u32>> = desired
            .endpoints
            .iter()
            .map(|(k, e)| {
                (
                    (k.address(), k.port(), k.protocol()),
                    e.served().iter().map(|l| l.listener).collect(),
                )
            })
            .collect();
        let derived: BTreeMap<(IpAddr, u16, u8), Vec<u32>> = endpoints
            .iter()
            .map(|(k, ls)| (*k, ls.iter().map(|&li| listeners[li].id).collect()))
            .collect();
        assert_eq!(
            planned_endpoints, derived,
            "the plan's backend endpoints are the listeners' members"
        );
        Setup {
            backends,
            listeners,
            vips,
            endpoints,
            config: planned.config,
            desired,
        }
    }

    pub(super) fn listener(&self, dst: IpAddr, port: u16, protocol: u8) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.vip == dst && l.port == port && l.protocol == protocol)
    }

    pub(super) fn listener_by_id(&self, id: u32) -> Option<usize> {
        self.listeners.iter().position(|l| l.id == id)
    }

    pub(super) fn is_vip(&self, addr: IpAddr) -> bool {
        self.vips.contains(&addr)
    }

    /// The listeners backend endpoint `addr:port` serves for `protocol`, in listener id
    /// order (empty: no backend of ours).
    pub(super) fn endpoint(&self, addr: IpAddr, port: u16, protocol: u8) -> &[usize] {
        self.endpoints
            .get(&(addr, port, protocol))
            .map_or(&[], Vec::as_slice)
    }

    /// The backend a new flow or a pickup of `t` gets: the only member, or the Maglev
    /// slot of the 4-tuple (`tch`; pickups always use it).
    pub(super) fn pick(&self, listener: usize, t: &Tuple) -> Option<BackendSpec> {
        let l = &self.listeners[listener];
        match l.members.as_slice() {
            [] => None,
            [only] => Some(self.backends[*only as usize]),
            _ => {
                let h = match (t.src, t.dst) {
                    (IpAddr::V4(src), IpAddr::V4(dst)) => hash::hash_tuple(
                        u32::from_ne_bytes(src.octets()),
                        u32::from_ne_bytes(dst.octets()),
                        t.sport.to_be(),
                        t.dport.to_be(),
                    ),
                    (IpAddr::V6(src), IpAddr::V6(dst)) => hash::hash_tuple6(
                        addr6(src.octets()),
                        addr6(dst.octets()),
                        t.sport.to_be(),
                        t.dport.to_be(),
                    ),
                    _ => panic!("{t}: a tuple of two families"),
                };
                let id = l.maglev[(h % MAGLEV_TABLE_SIZE) as usize];
                Some(self.backends[id as usize])
            }
        }
    }

    /// Writes the config into the maps through the controller's plan and reconciler; the
    /// ids are the ones the model was built with.
    pub fn install(&self, dp: &mut DataPlane) -> anyhow::Result<()> {
        let installed = Provisioned::install(dp, self.config.clone(), Runtime::default())?;
        anyhow::ensure!(
            *installed.desired() == self.desired,
            "the data plane's maps are planned differently from the model's"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::lab::{
        CLIENT, CLIENT_NO_NEIGH, CLIENT6, CLIENT6_FAR, CLIENT6_NO_NEIGH, VIP, VIP6, ip, ip6,
    };
    use lb_common::{PROTO_TCP, PROTO_UDP};

    #[test]
    fn acl_prefixes() {
        let setup = Setup::standard();
        let l = &setup.listeners[setup.listener(VIP.into(), 53, PROTO_UDP).unwrap()];
        assert!(l.denies(CLIENT_NO_NEIGH.into()));
        assert!(!l.denies(CLIENT.into()));
        assert!(l.denies(ip(198, 19, 200, 255).into()));
        assert!(!l.denies(ip(198, 19, 201, 0).into()));
        assert!(!l.denies(CLIENT6_NO_NEIGH.into()));
        let l6 = &setup.listeners[setup.listener(VIP6.into(), 53, PROTO_UDP).unwrap()];
        assert!(l6.denies(CLIENT6_NO_NEIGH.into()));
        assert!(l6.denies(CLIENT6_FAR.into()));
        assert!(!l6.denies(CLIENT6.into()));
        assert!(!l6.denies(ip6(0x19, 0x201, 7).into()));
        assert!(!l6.denies(CLIENT_NO_NEIGH.into()));
    }

    #[test]
    fn the_ipv6_listeners_are_planned_with_their_backends() {
        let setup = Setup::standard();
        let web6 = setup.listener(VIP6.into(), 80, PROTO_TCP).unwrap();
        let tls6 = setup.listener(VIP6.into(), 443, PROTO_TCP).unwrap();
        assert_eq!(setup.listeners[web6].members.len(), 3);
        let shared = setup.backends[setup.listeners[tls6].members[0] as usize];
        assert_eq!(
            setup.endpoint(shared.addr, shared.port, PROTO_TCP),
            &[web6, tls6]
        );
        assert!(setup.is_vip(VIP6.into()));
        assert!(!setup.is_vip(CLIENT6.into()));
    }
}
