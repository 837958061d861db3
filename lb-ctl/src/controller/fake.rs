//! An in-memory data plane and host for the controller's unit tests: the maps are the
//! decision's in-memory tables (`lb_common::memory`), the host is a few interfaces, a set
//! of addresses and a clock the test moves. "Pinned" maps outlive a controller, so a
//! second controller on the same host re-adopts them, as a restarted daemon does.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    rc::Rc,
};

use lb_common::{
    ADDRESS_FILTER_WORDS, Backend, Flow, Listener, Reason, SEQUENCE_TABLE_SIZE, TableMeta,
    TrafficCounters, V6, memory::MemoryTables,
};

use super::{Attachment, NS_PER_S, Platform};
use crate::{
    config::{Config, XdpMode},
    dataplane::{DataPlaneAccess, DataPlaneError, MapSizes, ReadCounters},
    explain::Shown,
    family::{EndpointEntry, EndpointMapKey, FlowMapKey, ListenerMapKey},
    pins,
    reconcile::{MapOp, MapWriter},
};

/// What the maps hold.
#[derive(Debug, Default)]
pub(super) struct Maps {
    /// Listeners, backends, tables, access lists, flows (all established), active flows.
    pub tables: MemoryTables,
    /// The IPv6 listeners, access lists and flows (backends and tables are in `tables`).
    pub tables6: MemoryTables<V6>,
    /// IPv6 backends' addresses (`BACKENDS6`).
    pub backends6: HashMap<u32, Ipv6Addr>,
    pub address_filter: BTreeMap<u32, u64>,
    pub endpoints: BTreeMap<EndpointMapKey, EndpointEntry>,
    pub tx_ports: BTreeSet<u32>,
    pub counters: BTreeMap<u32, u64>,
    pub listener_stats: HashMap<u32, TrafficCounters>,
    pub backend_stats: HashMap<u32, TrafficCounters>,
    /// Every operation written, in order.
    pub written: Vec<MapOp>,
}

/// The maps of one "pinned" data plane, shared by every controller that adopts it.
pub(super) type SharedMaps = Rc<RefCell<Maps>>;

pub(super) struct FakeDataPlane {
    maps: SharedMaps,
    sizes: MapSizes,
}

impl MapWriter for FakeDataPlane {
    fn apply(&mut self, op: &MapOp) -> Result<(), DataPlaneError> {
        let mut maps = self.maps.borrow_mut();
        let m = &mut *maps;
        let t = &mut m.tables;
        let t6 = &mut m.tables6;
        match op {
            MapOp::SetBackend {
                id,
                value,
                fresh,
                address6,
            } => {
                if *id >= self.sizes.max_backends {
                    return Err(DataPlaneError::OutOfRange {
                        what: "backend",
                        index: *id,
                        limit: self.sizes.max_backends,
                    });
                }
                if *fresh {
                    m.backend_stats.remove(id);
                    t.active_flows.insert(*id, 0);
                }
                if let Some(address) = address6 {
                    m.backends6.insert(*id, *address);
                }
                t.backends.insert(*id, *value);
                t6.backends.insert(*id, *value);
            }
            MapOp::WriteTable {
                slot,
                maglev,
                sequence,
                meta,
            } => {
                for (i, id) in maglev.iter().enumerate() {
                    t.maglev.insert(meta.maglev_base + i as u32, *id);
                }
                for (i, id) in sequence.iter().enumerate() {
                    t.sequence
                        .insert(slot * SEQUENCE_TABLE_SIZE + i as u32, *id);
                }
                t.table_meta.insert(*slot, *meta);
                t6.maglev.clone_from(&t.maglev);
                t6.sequence.clone_from(&t.sequence);
                t6.table_meta.clone_from(&t.table_meta);
            }
            MapOp::ResetCursor { listener } => {
                t.cursors.insert(*listener, 0);
                t6.cursors.insert(*listener, 0);
            }
            MapOp::SetListener { key, value, .. } => set_listener(t, t6, *key, Some(*value)),
            MapOp::RemoveListener { key } => set_listener(t, t6, *key, None),
            MapOp::SetVipMarker { addr, flags } => {
                let marker = Listener {
                    flags: *flags,
                    ..Default::default()
                };
                set_listener(t, t6, ListenerMapKey::vip_marker(*addr), Some(marker));
            }
            MapOp::RemoveVipMarker { addr } => {
                set_listener(t, t6, ListenerMapKey::vip_marker(*addr), None);
            }
            MapOp::AddAclEntry {
                acl,
                addr,
                prefix_len,
            } => match addr {
                IpAddr::V4(a) => {
                    let entry = (*acl, crate::family::ipv4_word(*a), *prefix_len);
                    if !t.acls.contains(&entry) {
                        t.acls.push(entry);
                    }
                }
                IpAddr::V6(a) => {
                    let entry = (*acl, lb_common::family::addr6(a.octets()), *prefix_len);
                    if !t6.acls.contains(&entry) {
                        t6.acls.push(entry);
                    }
                }
            },
            MapOp::RemoveAclEntry {
                acl,
                addr,
                prefix_len,
            } => match addr {
                IpAddr::V4(a) => {
                    let entry = (*acl, crate::family::ipv4_word(*a), *prefix_len);
                    t.acls.retain(|e| *e != entry);
                }
                IpAddr::V6(a) => {
                    let entry = (*acl, lb_common::family::addr6(a.octets()), *prefix_len);
                    t6.acls.retain(|e| *e != entry);
                }
            },
            MapOp::SetAddressFilterWord { index, word } => {
                m.address_filter.insert(*index, *word);
            }
            MapOp::SetEndpoint { key, value } => {
                m.endpoints.insert(*key, *value);
            }
            MapOp::RemoveEndpoint { key } => {
                m.endpoints.remove(key);
            }
        }
        m.written.push(op.clone());
        Ok(())
    }
}

/// Writes (`Some`) or removes a listener entry in its family's table.
fn set_listener(
    t: &mut MemoryTables,
    t6: &mut MemoryTables<V6>,
    key: ListenerMapKey,
    value: Option<Listener>,
) {
    match (key, value) {
        (ListenerMapKey::V4(k), Some(v)) => {
            t.listeners.insert(k, v);
        }
        (ListenerMapKey::V4(k), None) => {
            t.listeners.remove(&k);
        }
        (ListenerMapKey::V6(k), Some(v)) => {
            t6.listeners.insert(k, v);
        }
        (ListenerMapKey::V6(k), None) => {
            t6.listeners.remove(&k);
        }
    }
}

impl ReadCounters for FakeDataPlane {
    fn all_counters(&self) -> Result<BTreeMap<&'static str, u64>, DataPlaneError> {
        let maps = self.maps.borrow();
        Ok(Reason::ALL
            .iter()
            .map(|r| {
                (
                    r.name(),
                    maps.counters.get(&(*r as u32)).copied().unwrap_or(0),
                )
            })
            .collect())
    }

    fn one_counter(&self, reason: Reason) -> Result<u64, DataPlaneError> {
        Ok(self
            .maps
            .borrow()
            .counters
            .get(&(reason as u32))
            .copied()
            .unwrap_or(0))
    }

    fn listener_totals(&self, id: u32) -> Result<TrafficCounters, DataPlaneError> {
        Ok(self
            .maps
            .borrow()
            .listener_stats
            .get(&id)
            .copied()
            .unwrap_or_default())
    }

    fn backend_totals(&self, id: u32) -> Result<TrafficCounters, DataPlaneError> {
        Ok(self
            .maps
            .borrow()
            .backend_stats
            .get(&id)
            .copied()
            .unwrap_or_default())
    }
}

impl DataPlaneAccess for FakeDataPlane {
    type Tables<'a> = MemoryTables;
    type Tables6<'a> = MemoryTables<V6>;

    fn listener_entries(&self) -> Result<Vec<(ListenerMapKey, Listener)>, DataPlaneError> {
        let maps = self.maps.borrow();
        let v4 = maps
            .tables
            .listeners
            .iter()
            .map(|(k, v)| (ListenerMapKey::V4(*k), *v));
        let v6 = maps
            .tables6
            .listeners
            .iter()
            .map(|(k, v)| (ListenerMapKey::V6(*k), *v));
        Ok(v4.chain(v6).collect())
    }

    fn backend_address6(&self, id: u32) -> Result<Ipv6Addr, DataPlaneError> {
        Ok(self
            .maps
            .borrow()
            .backends6
            .get(&id)
            .copied()
            .unwrap_or(Ipv6Addr::UNSPECIFIED))
    }

    fn table_meta(&self, slot: u32) -> Result<TableMeta, DataPlaneError> {
        Ok(self
            .maps
            .borrow()
            .tables
            .table_meta
            .get(&slot)
            .copied()
            .unwrap_or_default())
    }

    fn backend(&self, id: u32) -> Result<Backend, DataPlaneError> {
        // An array: every id below its size reads, as zeros when never written.
        if id >= self.sizes.max_backends {
            return Err(DataPlaneError::OutOfRange {
                what: "backend",
                index: id,
                limit: self.sizes.max_backends,
            });
        }
        Ok(self
            .maps
            .borrow()
            .tables
            .backends
            .get(&id)
            .copied()
            .unwrap_or_default())
    }

    fn acl_entries(&self) -> Vec<(u32, IpAddr, u8)> {
        let maps = self.maps.borrow();
        let v4 = maps
            .tables
            .acls
            .iter()
            .map(|&(acl, addr, len)| (acl, lb_common::V4::ip(addr), len));
        let v6 = maps
            .tables6
            .acls
            .iter()
            .map(|&(acl, addr, len)| (acl, V6::ip(addr), len));
        v4.chain(v6).collect()
    }

    fn address_filter(&self) -> Result<Vec<u64>, DataPlaneError> {
        let maps = self.maps.borrow();
        Ok((0..ADDRESS_FILTER_WORDS)
            .map(|i| maps.address_filter.get(&i).copied().unwrap_or(0))
            .collect())
    }

    fn endpoint_entries(&self) -> Result<Vec<(EndpointMapKey, EndpointEntry)>, DataPlaneError> {
        Ok(self
            .maps
            .borrow()
            .endpoints
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn established_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>, DataPlaneError> {
        let maps = self.maps.borrow();
        let v4 = maps
            .tables
            .flows
            .iter()
            .map(|(k, v)| (FlowMapKey::V4(*k), *v));
        let v6 = maps
            .tables6
            .flows
            .iter()
            .map(|(k, v)| (FlowMapKey::V6(*k), *v));
        Ok(v4.chain(v6).collect())
    }

    /// No flow filter here: the decision's tables look every key up.
    fn sweep_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>, DataPlaneError> {
        self.established_flows()
    }

    fn set_active_flows(&mut self, id: u32, value: u32) -> Result<(), DataPlaneError> {
        self.maps.borrow_mut().tables.active_flows.insert(id, value);
        Ok(())
    }

    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataPlaneError> {
        self.maps.borrow_mut().tx_ports.insert(ifindex);
        Ok(())
    }

    fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), DataPlaneError> {
        self.maps.borrow_mut().tx_ports.remove(&ifindex);
        Ok(())
    }

    fn decision_tables(&self) -> Result<Vec<MemoryTables>, DataPlaneError> {
        Ok(vec![self.maps.borrow().tables.clone()])
    }

    fn decision_tables6(&self) -> Result<Vec<MemoryTables<V6>>, DataPlaneError> {
        Ok(vec![self.maps.borrow().tables6.clone()])
    }
}

/// The host as a test sets it up.
#[derive(Debug)]
pub(super) struct HostState {
    /// The data plane left pinned by an earlier controller.
    pub pinned: Option<SharedMaps>,
    /// Interface name → index.
    pub interfaces: BTreeMap<String, u32>,
    pub addresses: BTreeSet<Ipv4Addr>,
    pub monotonic_ns: u64,
    pub unix_ms: u64,
    /// The interfaces each `prepare_host` was asked to prepare.
    pub prepared: Vec<Vec<String>>,
}

/// A host in memory; clones share it, so the test keeps one to act on.
#[derive(Clone, Debug)]
pub(super) struct FakeHost(pub Rc<RefCell<HostState>>);

impl FakeHost {
    /// A host with `eth0` (index 2) and one address of its own, 198.18.0.1.
    pub fn new() -> Self {
        Self(Rc::new(RefCell::new(HostState {
            pinned: None,
            interfaces: BTreeMap::from([("eth0".to_owned(), 2)]),
            addresses: BTreeSet::from([Ipv4Addr::new(198, 18, 0, 1)]),
            monotonic_ns: 1_000_000 * NS_PER_S,
            unix_ms: 1_800_000_000_000,
            prepared: Vec::new(),
        })))
    }

    /// The pinned maps (after a controller started on this host).
    pub fn maps(&self) -> SharedMaps {
        Rc::clone(
            self.0
                .borrow()
                .pinned
                .as_ref()
                .expect("a data plane was loaded"),
        )
    }

    /// Moves both clocks on.
    pub fn advance(&self, seconds: u64) {
        let mut s = self.0.borrow_mut();
        s.monotonic_ns += seconds * NS_PER_S;
        s.unix_ms += seconds * 1000;
    }
}

impl Platform for FakeHost {
    type DataPlane = FakeDataPlane;

    fn load(&mut self, _: &Config, sizes: MapSizes) -> anyhow::Result<(FakeDataPlane, bool)> {
        let mut s = self.0.borrow_mut();
        let adopted = s.pinned.is_some();
        let maps = Rc::clone(s.pinned.get_or_insert_with(SharedMaps::default));
        Ok((FakeDataPlane { maps, sizes }, adopted))
    }

    fn attach(
        &mut self,
        _: &mut FakeDataPlane,
        interfaces: &[String],
        mode: XdpMode,
        running: bool,
    ) -> anyhow::Result<Vec<Attachment>> {
        let s = self.0.borrow();
        let in_force = match mode {
            XdpMode::Generic => pins::GENERIC,
            XdpMode::Auto | XdpMode::Native => pins::NATIVE,
        };
        interfaces
            .iter()
            .map(|name| match s.interfaces.get(name) {
                Some(index) => Ok((name.clone(), *index, in_force)),
                None if running => Ok((name.clone(), 0, pins::MISSING)),
                None => Err(anyhow::anyhow!("no interface {name}")),
            })
            .collect()
    }

    fn ifindex(&self, name: &str) -> Option<u32> {
        self.0.borrow().interfaces.get(name).copied()
    }

    fn local_addresses(&self) -> BTreeSet<IpAddr> {
        self.0
            .borrow()
            .addresses
            .iter()
            .map(|a| IpAddr::V4(*a))
            .collect()
    }

    fn prepare_host(&self, interfaces: &[&str], _: &BTreeSet<IpAddr>) {
        self.0
            .borrow_mut()
            .prepared
            .push(interfaces.iter().map(|i| (*i).to_owned()).collect());
    }

    fn maps_dir(&self) -> PathBuf {
        PathBuf::from("/nonexistent/maps")
    }

    fn monotonic_ns(&self) -> u64 {
        self.0.borrow().monotonic_ns
    }

    fn unix_ms(&self) -> u64 {
        self.0.borrow().unix_ms
    }
}
