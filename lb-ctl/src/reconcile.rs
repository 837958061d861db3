//! From a `Desired` state to the map operations that make the data plane hold it, and
//! their application in an order no packet can see half-done:
//!
//! 1. backends the new tables refer to are written first;
//! 2. a listener whose selection inputs changed gets its tables built into its idle slot,
//!    then one update of its listener entry flips it to that slot;
//! 3. VIP markers follow the listeners;
//! 4. listeners that are gone are removed, then backends that are gone are made unusable
//!    (their flows then move, see docs/architecture.md).
//!
//! Listeners whose inputs did not change see no operation at all.
//!
//! Listeners' Maglev tables differ in size, so the reconciler also places each table slot's
//! table in the shared `MAGLEV` array: a rebuild reuses its slot's previous place when the
//! size is unchanged and no live table sits there, else takes the first free stretch.
//! Places of live tables (including those of listeners about to be removed) are never
//! handed out, so no packet reads a table being overwritten.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use lb_common::{
    BACKEND_F_DRAINING, BACKEND_F_SHARED_ENDPOINT, BACKEND_F_USABLE, BACKEND_FILTER_BASE, Backend,
    EncapSource6, Listener, REFUSED_FILTER_BASE, REFUSED_PREFIXES_WORD, REFUSED_SOURCES_ACL,
    SEQUENCE_TABLE_SIZE, Scheduler, TABLES_PER_LISTENER, TableMeta, VIP_FILTER_BASE,
    VIP6_FILTER_BASE, address_filter_bit, address_filter_bit6,
    maglev::{self, MaglevBackend},
    wrr,
};

use crate::{
    dataplane::{DataPlane, DataPlaneError},
    family::{EndpointEntry, EndpointMapKey, ListenerMapKey, ipv4_word},
    plan::{Desired, DesiredListener},
};

/// One change to the maps.
#[derive(Clone, Debug, PartialEq)]
pub enum MapOp {
    /// Write a backend entry; `fresh`: the id was just (re)assigned, zero its counters.
    /// An IPv6 backend's address (`BACKENDS6`) is written first: its entry in `BACKENDS`,
    /// whose `addr` is 0, makes it usable.
    SetBackend {
        id: u32,
        value: Backend,
        fresh: bool,
        address6: Option<Ipv6Addr>,
    },
    /// Fill an idle table slot.
    WriteTable {
        slot: u32,
        maglev: Arc<Vec<u32>>,
        sequence: Arc<Vec<u32>>,
        meta: TableMeta,
    },
    /// Start a new listener's round-robin cursors at the head of its sequence.
    ResetCursor {
        listener: u32,
    },
    /// Write a listener entry (also how a listener flips to a new table slot). An IPv6
    /// listener's tunnel source (`ENCAP_SOURCES6`, all zero but for an IPv6 `forwarding:
    /// dsr` listener with an IPv6 `dsr.source`) is written first.
    SetListener {
        key: ListenerMapKey,
        value: Listener,
        source6: EncapSource6,
    },
    RemoveListener {
        key: ListenerMapKey,
    },
    /// A VIP's marker with its `LISTENER_F_*` flags.
    SetVipMarker {
        addr: IpAddr,
        flags: u8,
    },
    RemoveVipMarker {
        addr: IpAddr,
    },
    /// Add a prefix to an access list (in its family's trie).
    AddAclEntry {
        acl: u32,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Remove a prefix from an access list.
    RemoveAclEntry {
        acl: u32,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Write one word of the VIP filter (bits are set before a VIP's listeners exist and
    /// cleared after they are gone).
    SetAddressFilterWord {
        index: u32,
        word: u64,
    },
    /// Write the listeners a backend endpoint serves (with the backends: before a flow can
    /// reach it, so its first reply finds its way back).
    SetEndpoint {
        key: EndpointMapKey,
        value: EndpointEntry,
    },
    RemoveEndpoint {
        key: EndpointMapKey,
    },
}

/// Where operations go: the real maps, or a recorder in tests.
pub trait MapWriter {
    fn apply(&mut self, op: &MapOp) -> Result<(), DataPlaneError>;
}

impl MapWriter for DataPlane {
    fn apply(&mut self, op: &MapOp) -> Result<(), DataPlaneError> {
        match op {
            MapOp::SetBackend {
                id,
                value,
                fresh,
                address6,
            } => {
                if *fresh {
                    self.reset_backend_stats(*id)?;
                    self.set_active_flows(*id, 0)?;
                }
                if let Some(address) = address6 {
                    self.set_backend_address6(*id, *address)?;
                }
                self.set_backend(*id, *value)
            }
            MapOp::WriteTable {
                slot,
                maglev,
                sequence,
                meta,
            } => self.write_table(*slot, maglev, sequence, *meta),
            MapOp::ResetCursor { listener } => self.reset_cursor(*listener),
            MapOp::SetListener {
                key,
                value,
                source6,
            } => {
                if matches!(key, ListenerMapKey::V6(_)) {
                    self.set_encap_source6(value.id, *source6)?;
                }
                self.set_listener(*key, *value)
            }
            MapOp::RemoveListener { key } => self.remove_listener(key),
            MapOp::SetVipMarker { addr, flags } => self.set_listener(
                ListenerMapKey::vip_marker(*addr),
                Listener {
                    flags: *flags,
                    ..Default::default()
                },
            ),
            MapOp::RemoveVipMarker { addr } => {
                self.remove_listener(&ListenerMapKey::vip_marker(*addr))
            }
            MapOp::AddAclEntry {
                acl,
                addr,
                prefix_len,
            } => self.add_acl_entry(*acl, *addr, *prefix_len),
            MapOp::RemoveAclEntry {
                acl,
                addr,
                prefix_len,
            } => self.remove_acl_entry(*acl, *addr, *prefix_len),
            MapOp::SetAddressFilterWord { index, word } => {
                self.set_address_filter_word(*index, *word)
            }
            MapOp::SetEndpoint { key, value } => self.set_endpoint(*key, *value),
            MapOp::RemoveEndpoint { key } => self.remove_endpoint(key),
        }
    }
}

/// Where a table slot's Maglev table lies in `MAGLEV`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    base: u32,
    size: u32,
}

impl Region {
    fn of(meta: &TableMeta) -> Self {
        Self {
            base: meta.maglev_base,
            size: meta.maglev_size,
        }
    }

    const fn end(&self) -> u64 {
        self.base as u64 + self.size as u64
    }

    const fn overlaps(&self, other: &Region) -> bool {
        (self.base as u64) < other.end() && (other.base as u64) < self.end()
    }
}

/// The first stretch of `size` slots below `capacity` that overlaps none of `taken`.
fn first_fit(size: u32, capacity: u32, taken: &[Region]) -> Option<Region> {
    let mut taken = taken.to_vec();
    taken.sort_by_key(|r| r.base);
    let mut start = 0u64;
    for r in &taken {
        if u64::from(r.base) >= start + u64::from(size) {
            break;
        }
        start = start.max(r.end());
    }
    (start + u64::from(size) <= u64::from(capacity)).then_some(Region {
        base: start as u32,
        size,
    })
}

/// A listener's new Maglev table has no free stretch of the array to go to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "listener {listener}: no free stretch of {size} slots in the Maglev array for its new \
     table ({free} of maglev_slots {capacity} are free; live tables stay in place while \
     new ones are written): raise maglev_slots"
)]
pub struct NoMaglevRoom {
    pub listener: String,
    pub size: u32,
    pub free: u64,
    pub capacity: u32,
}

/// What a listener's tables are built from: if these are equal, so are the tables.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TableInputs {
    scheduler: Scheduler,
    maglev_size: u32,
    /// (id, identity (address and port, `MaglevBackend`), effective weight) of the
    /// backends in the table.
    members: Vec<(u32, u64, u32)>,
}

impl TableInputs {
    fn of(listener: &DesiredListener) -> Self {
        Self {
            scheduler: listener.scheduler,
            maglev_size: listener.maglev_table_size,
            members: listener
                .backends
                .iter()
                .filter(|b| b.in_table)
                .map(|b| {
                    let port = b.key.port.to_be();
                    let member = match b.key.address {
                        IpAddr::V4(a) => MaglevBackend::ipv4(b.id, ipv4_word(a), port, 0),
                        IpAddr::V6(a) => MaglevBackend::ipv6(b.id, a.octets(), port, 0),
                    };
                    (b.id, member.identity, b.effective_weight)
                })
                .collect(),
        }
    }

    fn build(&self, region: Region) -> (Vec<u32>, Vec<u32>, TableMeta) {
        debug_assert_eq!(region.size, self.maglev_size);
        let maglev_members: Vec<MaglevBackend> = self
            .members
            .iter()
            .map(|&(id, identity, weight)| MaglevBackend {
                id,
                identity,
                weight,
            })
            .collect();
        let table = maglev::build_table(&maglev_members, region.size);
        let weighted: Vec<wrr::Weighted> = self.members.iter().map(|&(id, _, w)| (id, w)).collect();
        let sequence = match self.scheduler {
            Scheduler::Wrr => wrr::weighted_sequence(&weighted, SEQUENCE_TABLE_SIZE),
            // rr ignores weights and wlc weighs by active flows: each backend once.
            Scheduler::Rr | Scheduler::Wlc | Scheduler::Sch | Scheduler::Tch => {
                wrr::each_once(&weighted)
            }
        };
        let meta = TableMeta {
            backends: self.members.iter().filter(|m| m.2 > 0).count() as u32,
            sequence_len: sequence.len() as u32,
            maglev_base: region.base,
            maglev_size: region.size,
        };
        (table, sequence, meta)
    }
}

/// What the maps hold for one listener.
#[derive(Clone, Debug)]
struct AppliedListener {
    key: ListenerMapKey,
    value: Listener,
    source6: EncapSource6,
    inputs: TableInputs,
}

/// The data plane's contents as this controller last wrote them.
#[derive(Debug)]
pub struct Reconciler {
    /// Slots of the `MAGLEV` array.
    maglev_slots: u32,
    /// Where each table slot's Maglev table was last written.
    regions: BTreeMap<u32, Region>,
    listeners: BTreeMap<String, AppliedListener>,
    backends: BTreeMap<u32, Backend>,
    /// VIP → its marker's flags.
    vips: BTreeMap<IpAddr, u8>,
    acl_entries: BTreeSet<(u32, IpAddr, u8)>,
    /// The address filter's words as written (absent = 0).
    address_filter: BTreeMap<u32, u64>,
    endpoints: BTreeMap<EndpointMapKey, EndpointEntry>,
    /// Endpoints no desired listener has any more, kept in `ENDPOINTS` (with their filter
    /// bits) until the monotonic time given: see `EndpointLinger`.
    leaving: BTreeMap<EndpointMapKey, u64>,
    linger: EndpointLinger,
}

/// How long a backend endpoint that left every listener (server removed without drain,
/// listener moved to another group) still has its `ENDPOINTS` entry. Its flows' client
/// packets are re-selected at once, as before; but a response the backend was already
/// working on when it left (the request acknowledged, so the waiting client sends
/// nothing more) still finds its flow and reaches the client, instead of going to the
/// kernel untranslated and leaving the client to its own timeout. The client's next
/// packet, its acknowledgement, is then re-selected and reset by the new backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointLinger {
    pub ns: u64,
    /// Entries `ENDPOINTS` (and `ENDPOINTS6`) hold: lingering endpoints give way, oldest
    /// first, to keep room for every desired one.
    pub room: u32,
}

/// The linger of the daemon's data plane.
pub const ENDPOINT_LINGER_NS: u64 = 5_000_000_000;

/// The words of `ADDRESS_FILTER` (index → word) for a set of VIPs, the refused client
/// sources and the backend endpoints: single refused addresses get a bit of the refused
/// filter, any wider prefix sets the prefix word (every new flow then asks the access
/// list). IPv6 VIPs have a filter of their own; IPv6 refused sources and IPv6 backends
/// have none (an IPv6 new flow asks the access list, an IPv6 packet for no listener the
/// endpoints).
fn address_filter_words<'a>(
    vips: &BTreeSet<IpAddr>,
    refused: Option<&BTreeSet<(IpAddr, u8)>>,
    endpoints: impl IntoIterator<Item = &'a EndpointMapKey>,
) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    let mut set = |base: u32, bit: u32| {
        *words.entry(base + bit / 64).or_insert(0) |= 1u64 << (bit % 64);
    };
    for addr in vips {
        match addr {
            IpAddr::V4(a) => set(VIP_FILTER_BASE, address_filter_bit(ipv4_word(*a))),
            IpAddr::V6(a) => set(
                VIP6_FILTER_BASE,
                address_filter_bit6(lb_common::family::addr6(a.octets())),
            ),
        }
    }
    let mut prefixes = false;
    for (addr, len) in refused.into_iter().flatten() {
        match addr {
            IpAddr::V4(a) if *len == 32 => {
                set(REFUSED_FILTER_BASE, address_filter_bit(ipv4_word(*a)));
            }
            IpAddr::V4(_) => prefixes = true,
            IpAddr::V6(_) => {}
        }
    }
    for key in endpoints {
        if let EndpointMapKey::V4(k) = key {
            set(BACKEND_FILTER_BASE, address_filter_bit(k.addr));
        }
    }
    if prefixes {
        words.insert(REFUSED_PREFIXES_WORD, 1);
    }
    words
}

/// The listeners of `old` and of `new` (by listener id), or `new` when they do not fit.
fn endpoint_union(key: &EndpointMapKey, old: &EndpointEntry, new: &EndpointEntry) -> EndpointEntry {
    let all: BTreeMap<u32, crate::family::Served> = old
        .served()
        .into_iter()
        .chain(new.served())
        .map(|l| (l.listener, l))
        .collect();
    EndpointEntry::of(key, all.into_values()).unwrap_or(*new)
}

fn listener_value(l: &DesiredListener, table: u32) -> Listener {
    Listener {
        id: l.id,
        table,
        scheduler: l.scheduler as u8,
        established_timeout_s: l.established_timeout,
        udp_timeout_s: l.udp_timeout,
        persistence_timeout_s: l.persistence_timeout,
        acl_mode: l.acl_mode,
        acl_id: l.acl_id,
        ..encapsulation_fields(l)
    }
}

/// The listener entry's encapsulation fields: all zero for NAT. The outer source is the
/// IPv4 `dsr.source` for an IPv4 listener; an IPv6 one's is in `ENCAP_SOURCES6`
/// (`encap_source6`).
fn encapsulation_fields(l: &DesiredListener) -> Listener {
    let Some(dsr) = l.dsr else {
        return Listener::default();
    };
    let encapsulation = dsr.encapsulation.encapsulation();
    let source = match l.frontend.address {
        IpAddr::V4(_) => dsr.source.and_then(|s| s.ipv4()),
        IpAddr::V6(_) => None,
    };
    Listener {
        encapsulation: encapsulation as u8,
        encap_source: source.map_or(0, |s| ipv4_word(s.addr())),
        encap_source_bits: source.map_or(0, |s| 32 - s.prefix_len()),
        encap_port: if encapsulation == lb_common::Encapsulation::Gue {
            dsr.gue_port.to_be()
        } else {
            0
        },
        ..Default::default()
    }
}

/// The `ENCAP_SOURCES6` entry of an IPv6 listener: its IPv6 `dsr.source`, all zero
/// without one (and for any other listener).
fn encap_source6(l: &DesiredListener) -> EncapSource6 {
    let source = match l.frontend.address {
        IpAddr::V6(_) => l.dsr.and_then(|d| d.source).and_then(|s| s.ipv6()),
        IpAddr::V4(_) => None,
    };
    source.map_or_else(EncapSource6::default, |s| EncapSource6 {
        addr: lb_common::family::addr6(s.addr().octets()),
        bits: 128 - s.prefix_len(),
        _pad: [0; 3],
    })
}

impl Reconciler {
    /// A reconciler for a data plane whose `MAGLEV` array has `maglev_slots` slots.
    pub fn new(maglev_slots: u32) -> Self {
        Self {
            maglev_slots,
            regions: BTreeMap::new(),
            listeners: BTreeMap::new(),
            backends: BTreeMap::new(),
            vips: BTreeMap::new(),
            acl_entries: BTreeSet::new(),
            address_filter: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            leaving: BTreeMap::new(),
            linger: EndpointLinger::default(),
        }
    }

    /// Keeps the endpoints that leave every listener for `linger` (none by default).
    pub fn with_endpoint_linger(mut self, linger: EndpointLinger) -> Self {
        self.linger = linger;
        self
    }

    /// Whether a lingering endpoint's time is up (an `apply` then removes it).
    pub fn endpoints_due(&self, now: u64) -> bool {
        self.leaving.values().any(|&until| now >= until)
    }

    /// When endpoint `key`, no longer desired, goes: its recorded deadline, or, leaving
    /// now, the linger from now.
    fn lingers_until(&self, key: &EndpointMapKey, now: u64) -> u64 {
        self.leaving
            .get(key)
            .copied()
            .unwrap_or(now + self.linger.ns)
    }

    /// The endpoints no desired listener has that stay for now: their linger has not
    /// ended and, per address family, the desired endpoints and these fit the maps (the
    /// ones that left last are kept first).
    fn lingering(&self, desired: &Desired, now: u64) -> BTreeSet<EndpointMapKey> {
        if self.linger.ns == 0 {
            return BTreeSet::new();
        }
        let mut candidates: Vec<(u64, EndpointMapKey)> = self
            .endpoints
            .keys()
            .filter(|k| !desired.endpoints.contains_key(k))
            .map(|k| (self.lingers_until(k, now), *k))
            .filter(|(until, _)| now < *until)
            .collect();
        candidates.sort_by(|a, b| b.cmp(a));
        let is_v4 = |k: &EndpointMapKey| matches!(k, EndpointMapKey::V4(_));
        let mut used = [false, true]
            .map(|v4| desired.endpoints.keys().filter(|k| is_v4(k) == v4).count() as u64);
        candidates
            .into_iter()
            .filter(|(_, k)| {
                let n = &mut used[usize::from(is_v4(k))];
                *n += 1;
                *n <= u64::from(self.linger.room)
            })
            .map(|(_, k)| k)
            .collect()
    }

    /// Starts from what a pinned data plane already holds (a restarted daemon): listener
    /// entries keep their live table slot, so the first reconcile writes the other one.
    /// `listeners` are (name, key, value, the live slot's metadata); a name no desired
    /// listener has gets removed. `vips` are (address, marker flags).
    pub fn adopt(
        &mut self,
        listeners: &[(String, ListenerMapKey, Listener, TableMeta)],
        vips: &[(IpAddr, u8)],
    ) {
        for (name, key, value, meta) in listeners {
            self.regions.insert(value.table, Region::of(meta));
            self.listeners.insert(
                name.clone(),
                AppliedListener {
                    key: *key,
                    value: *value,
                    // Rewritten with the rebuild forced below.
                    source6: EncapSource6::default(),
                    // Unknown inputs: force one rebuild, which also proves the tables.
                    inputs: TableInputs {
                        scheduler: Scheduler::Wrr,
                        maglev_size: 0,
                        members: vec![(u32::MAX, 0, 0)],
                    },
                },
            );
        }
        self.vips.extend(vips.iter().copied());
    }

    /// Records the VIP filter found in a pinned data plane.
    pub fn adopt_address_filter(&mut self, words: &[u64]) {
        self.address_filter = words
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0)
            .map(|(i, w)| (i as u32, *w))
            .collect();
    }

    /// Records the access list entries found in a pinned data plane.
    pub fn adopt_acl_entries(&mut self, entries: impl IntoIterator<Item = (u32, IpAddr, u8)>) {
        self.acl_entries.extend(entries);
    }

    /// Records a backend entry found in a pinned data plane.
    pub fn adopt_backend(&mut self, id: u32, value: Backend) {
        self.backends.insert(id, value);
    }

    /// Records the backend endpoint entries found in a pinned data plane.
    pub fn adopt_endpoints(
        &mut self,
        entries: impl IntoIterator<Item = (EndpointMapKey, EndpointEntry)>,
    ) {
        self.endpoints.extend(entries);
    }

    /// The applied record of a desired listener, if it is the same listener (same key and
    /// id; a listener whose VIP, port or protocol changed is a new one).
    fn applied(&self, l: &DesiredListener) -> Option<&AppliedListener> {
        self.listeners
            .get(&l.name)
            .filter(|a| a.key == l.frontend.key() && a.value.id == l.id)
    }

    /// The slot, Maglev place and inputs of every listener whose tables must be (re)built.
    fn place_tables<'d>(
        &self,
        desired: &'d Desired,
    ) -> Result<BTreeMap<&'d str, (u32, Region, TableInputs)>, NoMaglevRoom> {
        let mut taken: Vec<Region> = self
            .listeners
            .values()
            .filter_map(|a| self.regions.get(&a.value.table))
            .copied()
            .collect();
        let mut places = BTreeMap::new();
        for l in desired.listeners.values() {
            let applied = self.applied(l);
            let inputs = TableInputs::of(l);
            if applied.is_some_and(|a| a.inputs == inputs) {
                continue;
            }
            let base = l.id * TABLES_PER_LISTENER;
            let slot = if applied.map(|a| a.value.table) == Some(base) {
                base + 1
            } else {
                base
            };
            let size = l.maglev_table_size;
            let region = match self.regions.get(&slot) {
                Some(r) if r.size == size && !taken.iter().any(|t| t.overlaps(r)) => *r,
                _ => first_fit(size, self.maglev_slots, &taken).ok_or_else(|| {
                    let used: u64 = taken.iter().map(|t| u64::from(t.size)).sum();
                    NoMaglevRoom {
                        listener: l.name.clone(),
                        size,
                        free: u64::from(self.maglev_slots).saturating_sub(used),
                        capacity: self.maglev_slots,
                    }
                })?,
            };
            taken.push(region);
            places.insert(l.name.as_str(), (slot, region, inputs));
        }
        Ok(places)
    }

    /// Whether every table `desired` needs rebuilt has room in the Maglev array: checked
    /// before a change is persisted, so a change that cannot be applied is refused whole.
    pub fn check_room(&self, desired: &Desired) -> Result<(), NoMaglevRoom> {
        self.place_tables(desired).map(|_| ())
    }

    /// Computes the operations that take the maps from their applied state to `desired`,
    /// at monotonic time `now` (nanoseconds; it ends lingering endpoints).
    pub fn diff(&self, desired: &Desired, now: u64) -> Result<Vec<MapOp>, NoMaglevRoom> {
        let places = self.place_tables(desired)?;
        let lingering = self.lingering(desired, now);
        let mut backends = Vec::new();
        let mut tables = Vec::new();
        let mut demotions = Vec::new();
        let mut markers = Vec::new();
        let mut removals = Vec::new();

        let desired_acl: BTreeSet<(u32, IpAddr, u8)> = desired
            .acls
            .iter()
            .flat_map(|(id, prefixes)| prefixes.iter().map(move |(a, l)| (*id, *a, *l)))
            .collect();
        let acl_adds = desired_acl
            .difference(&self.acl_entries)
            .map(|&(acl, addr, prefix_len)| MapOp::AddAclEntry {
                acl,
                addr,
                prefix_len,
            });
        let acl_removes: Vec<MapOp> = self
            .acl_entries
            .difference(&desired_acl)
            .map(|&(acl, addr, prefix_len)| MapOp::RemoveAclEntry {
                acl,
                addr,
                prefix_len,
            })
            .collect();
        backends.extend(acl_adds);

        let mut desired_backends: BTreeSet<u32> = BTreeSet::new();
        for l in desired.listeners.values() {
            for b in &l.backends {
                desired_backends.insert(b.id);
                let mut flags = if b.usable { BACKEND_F_USABLE } else { 0 };
                if b.drain_deadline_ns.is_some() {
                    flags |= BACKEND_F_DRAINING;
                }
                if desired
                    .endpoints
                    .get(&b.endpoint(l.frontend.protocol.number()))
                    .is_some_and(|e| e.count() > 1)
                {
                    flags |= BACKEND_F_SHARED_ENDPOINT;
                }
                // An IPv6 backend's address is in `BACKENDS6`.
                let (addr, address6) = match b.key.address {
                    IpAddr::V4(a) => (ipv4_word(a), None),
                    IpAddr::V6(a) => (0, Some(a)),
                };
                let value = Backend {
                    addr,
                    port: b.key.port.to_be(),
                    flags,
                    // Out of the tables (a secondary after failback, a drained or down
                    // server): weight 0, so no path of the data plane gives it a new flow
                    // (a reopened connection's SYN, a client's affinity).
                    weight: if b.in_table { b.effective_weight } else { 0 },
                    listener: l.id,
                    generation: b.generation,
                    drain_deadline_ns: b.drain_deadline_ns.unwrap_or(0),
                    ..Default::default()
                };
                let old = self.backends.get(&b.id);
                if old != Some(&value) {
                    let fresh = old.is_none_or(|o| o.generation != value.generation);
                    let op = MapOp::SetBackend {
                        id: b.id,
                        value,
                        fresh,
                        address6,
                    };
                    // A backend that stops being usable while the live table still lists
                    // it would fail the new flows the table gives it until the new table
                    // is in: for a healthy one (a UDP secondary at failback), flows that
                    // need not fail. So it loses its flag once the tables without it are
                    // live, as a removed server does.
                    let demoted = old.is_some_and(|o| o.flags & BACKEND_F_USABLE != 0)
                        && flags & BACKEND_F_USABLE == 0;
                    if demoted {
                        demotions.push(op);
                    } else {
                        backends.push(op);
                    }
                }
            }

            let key = l.frontend.key();
            let applied = self.applied(l);
            match (applied, places.get(l.name.as_str())) {
                (Some(a), None) => {
                    let value = listener_value(l, a.value.table);
                    let source6 = encap_source6(l);
                    if value != a.value || source6 != a.source6 {
                        tables.push(MapOp::SetListener {
                            key,
                            value,
                            source6,
                        });
                    }
                }
                (_, place) => {
                    // place_tables places every listener with no applied record.
                    let (slot, region, inputs) = place.expect("a placed table");
                    let slot = *slot;
                    let (maglev, sequence, meta) = inputs.build(*region);
                    tables.push(MapOp::WriteTable {
                        slot,
                        maglev: Arc::new(maglev),
                        sequence: Arc::new(sequence),
                        meta,
                    });
                    if applied.is_none() {
                        tables.push(MapOp::ResetCursor { listener: l.id });
                    }
                    tables.push(MapOp::SetListener {
                        key,
                        value: listener_value(l, slot),
                        source6: encap_source6(l),
                    });
                }
            }
        }

        let desired_keys: BTreeSet<ListenerMapKey> = desired
            .listeners
            .values()
            .map(|l| l.frontend.key())
            .collect();
        let desired_vips: BTreeSet<IpAddr> = desired_keys.iter().map(|k| k.address()).collect();
        // Filter bits: the union first (with the backends, before any listener or endpoint
        // exists or any refused source is listed), the exact set last (after the removals).
        let wanted = address_filter_words(
            &desired_vips,
            desired.acls.get(&REFUSED_SOURCES_ACL),
            desired.endpoints.keys().chain(&lingering),
        );
        let indices: BTreeSet<u32> = wanted
            .keys()
            .chain(self.address_filter.keys())
            .copied()
            .collect();
        let mut filter_last = Vec::new();
        for i in indices {
            let old = self.address_filter.get(&i).copied().unwrap_or(0);
            let new = wanted.get(&i).copied().unwrap_or(0);
            if old | new != old {
                backends.insert(
                    0,
                    MapOp::SetAddressFilterWord {
                        index: i,
                        word: old | new,
                    },
                );
            }
            if new != old | new {
                filter_last.push(MapOp::SetAddressFilterWord {
                    index: i,
                    word: new,
                });
            }
        }
        for addr in &desired_vips {
            if self.vips.get(addr) != Some(&desired.vip_marker_flags) {
                markers.push(MapOp::SetVipMarker {
                    addr: *addr,
                    flags: desired.vip_marker_flags,
                });
            }
        }
        for a in self.listeners.values() {
            if !desired_keys.contains(&a.key) {
                removals.push(MapOp::RemoveListener { key: a.key });
            }
        }
        for addr in self.vips.keys() {
            if !desired_vips.contains(addr) {
                removals.push(MapOp::RemoveVipMarker { addr: *addr });
            }
        }
        for (id, b) in &self.backends {
            if !desired_backends.contains(id) && b.flags != 0 {
                removals.push(MapOp::SetBackend {
                    id: *id,
                    value: Backend { flags: 0, ..*b },
                    fresh: false,
                    address6: None,
                });
            }
        }

        // Like the VIP filter: listeners an endpoint gains are written with the backends
        // (before a flow can reach them), the ones it loses after the listeners are gone.
        let mut endpoints_last = Vec::new();
        for (key, value) in &desired.endpoints {
            let old = self.endpoints.get(key);
            if old == Some(value) {
                continue;
            }
            let first = old.map_or(*value, |old| endpoint_union(key, old, value));
            if old != Some(&first) {
                backends.push(MapOp::SetEndpoint {
                    key: *key,
                    value: first,
                });
            }
            if first != *value {
                endpoints_last.push(MapOp::SetEndpoint {
                    key: *key,
                    value: *value,
                });
            }
        }
        removals.extend(endpoints_last);
        for key in self.endpoints.keys() {
            if !desired.endpoints.contains_key(key) && !lingering.contains(key) {
                removals.push(MapOp::RemoveEndpoint { key: *key });
            }
        }

        removals.extend(acl_removes);
        removals.extend(filter_last);
        Ok(backends
            .into_iter()
            .chain(tables)
            .chain(demotions)
            .chain(markers)
            .chain(removals)
            .collect())
    }

    /// Applies `diff(desired, now)` in order, recording each operation as it succeeds, so
    /// a failure part-way leaves this record true to the maps. Returns the operations.
    pub fn apply(
        &mut self,
        desired: &Desired,
        now: u64,
        writer: &mut impl MapWriter,
    ) -> Result<Vec<MapOp>, DataPlaneError> {
        let ops = self.diff(desired, now)?;
        let by_key: BTreeMap<ListenerMapKey, &DesiredListener> = desired
            .listeners
            .values()
            .map(|l| (l.frontend.key(), l))
            .collect();
        for op in &ops {
            writer.apply(op)?;
            match op {
                MapOp::SetBackend { id, value, .. } => {
                    self.backends.insert(*id, *value);
                }
                MapOp::SetListener {
                    key,
                    value,
                    source6,
                } => {
                    if let Some(l) = by_key.get(key) {
                        self.listeners.insert(
                            l.name.clone(),
                            AppliedListener {
                                key: *key,
                                value: *value,
                                source6: *source6,
                                inputs: TableInputs::of(l),
                            },
                        );
                    }
                }
                MapOp::RemoveListener { key } => self.listeners.retain(|_, a| a.key != *key),
                MapOp::SetVipMarker { addr, flags } => {
                    self.vips.insert(*addr, *flags);
                }
                MapOp::RemoveVipMarker { addr } => {
                    self.vips.remove(addr);
                }
                MapOp::AddAclEntry {
                    acl,
                    addr,
                    prefix_len,
                } => {
                    self.acl_entries.insert((*acl, *addr, *prefix_len));
                }
                MapOp::RemoveAclEntry {
                    acl,
                    addr,
                    prefix_len,
                } => {
                    self.acl_entries.remove(&(*acl, *addr, *prefix_len));
                }
                MapOp::SetAddressFilterWord { index, word } => {
                    if *word == 0 {
                        self.address_filter.remove(index);
                    } else {
                        self.address_filter.insert(*index, *word);
                    }
                }
                MapOp::SetEndpoint { key, value } => {
                    self.endpoints.insert(*key, *value);
                }
                MapOp::RemoveEndpoint { key } => {
                    self.endpoints.remove(key);
                }
                MapOp::WriteTable { slot, meta, .. } => {
                    self.regions.insert(*slot, Region::of(meta));
                }
                MapOp::ResetCursor { .. } => {}
            }
        }
        // A listener renamed in place keeps its key; drop records no longer desired.
        self.listeners
            .retain(|name, _| desired.listeners.contains_key(name));
        // The endpoints still written that no listener has: lingering since the first
        // apply without them (the deadline `lingering` assumed for them).
        self.leaving = self
            .endpoints
            .keys()
            .filter(|k| !desired.endpoints.contains_key(k))
            .map(|k| (*k, self.lingers_until(k, now)))
            .collect();
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config,
        dataplane::MapSizes,
        plan::{Ids, Runtime, plan},
    };

    #[derive(Default)]
    struct Recorder(Vec<MapOp>);

    impl MapWriter for Recorder {
        fn apply(&mut self, op: &MapOp) -> Result<(), DataPlaneError> {
            self.0.push(op.clone());
            Ok(())
        }
    }

    const BASE: &str = "
instance: t
interfaces: [eth0]
vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080 }
      - { address: 198.18.1.11, port: 8080 }
  - name: other
    servers:
      - { address: 198.18.1.30, port: 9000 }
listeners:
  - { name: api, protocol: tcp, address: 198.19.0.100, port: 80, server_group: api }
  - { name: other, protocol: tcp, address: 198.19.0.101, port: 80, server_group: other }
";

    struct Harness {
        config: config::Config,
        runtime: Runtime,
        ids: Ids,
        reconciler: Reconciler,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                config: config::parse(BASE).unwrap(),
                runtime: Runtime::default(),
                ids: Ids::new(8, 64),
                reconciler: Reconciler::new(MapSizes::default().maglev_slots),
            }
        }

        fn step(&mut self) -> Vec<MapOp> {
            self.step_at(0)
        }

        fn step_at(&mut self, now: u64) -> Vec<MapOp> {
            self.config.validate().unwrap();
            let desired = plan(&self.config, &self.runtime, &mut self.ids).unwrap();
            let mut rec = Recorder::default();
            self.reconciler.apply(&desired, now, &mut rec).unwrap();
            rec.0
        }

        /// The key of server `address:port` of listener `listener` (its index in the config).
        fn backend_key(
            &self,
            listener: usize,
            address: &str,
            port: u16,
        ) -> crate::plan::BackendKey {
            crate::plan::BackendKey {
                frontend: crate::plan::Frontend::of(&self.config.listeners[listener]),
                address: address.parse().unwrap(),
                port,
            }
        }
    }

    /// A compact, comparable rendering of an op list.
    fn shape(ops: &[MapOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                MapOp::SetBackend {
                    id, value, fresh, ..
                } => format!(
                    "backend {id} flags={} weight={}{}",
                    value.flags,
                    value.weight,
                    if *fresh { " fresh" } else { "" }
                ),
                MapOp::WriteTable { slot, meta, .. } => {
                    format!("table {slot} backends={}", meta.backends)
                }
                MapOp::ResetCursor { listener } => format!("cursor {listener}"),
                MapOp::SetListener { value, .. } => {
                    format!("listener {} slot={}", value.id, value.table)
                }
                MapOp::RemoveListener { key } => {
                    format!("remove listener port={}", key.port())
                }
                MapOp::SetVipMarker { flags, .. } => format!("vip flags={flags}"),
                MapOp::RemoveVipMarker { .. } => "vip -".into(),
                MapOp::AddAclEntry {
                    acl,
                    addr,
                    prefix_len,
                } => format!("acl {acl} + {addr}/{prefix_len}"),
                MapOp::RemoveAclEntry {
                    acl,
                    addr,
                    prefix_len,
                } => format!("acl {acl} - {addr}/{prefix_len}"),
                MapOp::SetAddressFilterWord { index, .. } if *index >= BACKEND_FILTER_BASE => {
                    "backend filter".into()
                }
                MapOp::SetAddressFilterWord { .. } => "vip filter".into(),
                MapOp::SetEndpoint { key, value } => format!(
                    "endpoint {}:{} listeners={:?}",
                    key.address(),
                    key.port(),
                    value
                        .served()
                        .iter()
                        .map(|l| l.listener)
                        .collect::<Vec<_>>()
                ),
                MapOp::RemoveEndpoint { key } => {
                    format!("remove endpoint {}:{}", key.address(), key.port())
                }
            })
            .collect()
    }

    #[test]
    fn first_apply_writes_everything_in_order() {
        let mut h = Harness::new();
        assert_eq!(
            shape(&h.step()),
            [
                // The filter bits come first: no endpoint exists before its address's bit,
                // no listener before its VIP's.
                "backend filter",
                "backend filter",
                "backend filter",
                "vip filter",
                "vip filter",
                "backend 0 flags=1 weight=100 fresh",
                "backend 1 flags=1 weight=100 fresh",
                "backend 2 flags=1 weight=100 fresh",
                // Each backend endpoint with the listeners it serves, before any
                // listener can send it a flow.
                "endpoint 198.18.1.10:8080 listeners=[0]",
                "endpoint 198.18.1.11:8080 listeners=[0]",
                "endpoint 198.18.1.30:9000 listeners=[1]",
                "table 0 backends=2",
                "cursor 0",
                "listener 0 slot=0",
                "table 2 backends=1",
                "cursor 1",
                "listener 1 slot=2",
                // Marker and answers pings (`vip_ping: answer`, the default).
                "vip flags=3",
                "vip flags=3",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        );
        assert!(h.step().is_empty(), "nothing changed, nothing written");
    }

    /// The host's own addresses get bits of the refused filter, written before their
    /// access-list entries; a refused prefix sets the prefix word instead; both go last
    /// when they leave.
    #[test]
    fn refused_sources_fill_the_refused_filter() {
        let mut h = Harness::new();
        h.step();
        let host: std::net::Ipv4Addr = "198.18.0.1".parse().unwrap();
        h.runtime.local_addresses.insert(host.into());
        let ops = h.step();
        let bit = address_filter_bit(ipv4_word(host));
        let word = |ops: &[MapOp], index: u32| {
            ops.iter().position(
                |op| matches!(op, MapOp::SetAddressFilterWord { index: i, .. } if *i == index),
            )
        };
        let filter = word(&ops, REFUSED_FILTER_BASE + bit / 64).expect("the host's bit");
        let acl = ops
            .iter()
            .position(|op| matches!(op, MapOp::AddAclEntry { acl: 0, addr, prefix_len: 32 } if *addr == host))
            .expect("the host's access-list entry");
        assert!(filter < acl, "the bit first: {ops:?}");
        assert_eq!(
            word(&ops, REFUSED_PREFIXES_WORD),
            None,
            "no prefix: {ops:?}"
        );

        h.config
            .refused_client_sources
            .push("198.18.200.0/24".parse().unwrap());
        let ops = h.step();
        assert!(
            ops.contains(&MapOp::SetAddressFilterWord {
                index: REFUSED_PREFIXES_WORD,
                word: 1
            }),
            "a prefix turns the access-list lookup on for every new flow: {ops:?}"
        );

        h.config.refused_client_sources.clear();
        h.runtime.local_addresses.clear();
        let ops = h.step();
        let removed = ops
            .iter()
            .position(|op| matches!(op, MapOp::RemoveAclEntry { .. }))
            .expect("entries removed");
        let cleared = word(&ops, REFUSED_PREFIXES_WORD).expect("prefix word cleared");
        assert!(removed < cleared, "the word last: {ops:?}");
        assert!(h.step().is_empty());
    }

    #[test]
    fn vip_ping_rewrites_only_the_markers() {
        let mut h = Harness::new();
        h.step();
        h.config.vip_ping = config::VipPing::Drop;
        assert_eq!(shape(&h.step()), ["vip flags=1", "vip flags=1"]);
        assert!(h.step().is_empty());
    }

    #[test]
    fn adding_a_server_touches_only_its_listener_and_flips_slots() {
        let mut h = Harness::new();
        h.step();
        h.config.vserver_groups[0].servers.push(config::Member::new(
            "198.18.1.12".parse::<IpAddr>().unwrap(),
            8080,
        ));
        assert_eq!(
            shape(&h.step()),
            [
                "backend filter",
                "backend 3 flags=1 weight=100 fresh",
                "endpoint 198.18.1.12:8080 listeners=[0]",
                "table 1 backends=3",
                "listener 0 slot=1"
            ]
        );
        // The next change goes back to slot 0.
        h.config.vserver_groups[0].servers[0].weight = 50;
        assert_eq!(
            shape(&h.step()),
            [
                "backend 0 flags=1 weight=50",
                "table 0 backends=3",
                "listener 0 slot=0"
            ]
        );
    }

    /// (slot, Maglev base, Maglev size) of every table an op list writes.
    fn placed(ops: &[MapOp]) -> Vec<(u32, u32, u32)> {
        ops.iter()
            .filter_map(|op| match op {
                MapOp::WriteTable {
                    slot, maglev, meta, ..
                } => {
                    assert_eq!(maglev.len(), meta.maglev_size as usize);
                    Some((*slot, meta.maglev_base, meta.maglev_size))
                }
                _ => None,
            })
            .collect()
    }

    const M: u32 = lb_common::MAGLEV_TABLE_SIZE;

    /// A listener's two slots ping-pong between two places; a new size takes a free
    /// stretch away from every live table, and the place it left is reused.
    #[test]
    fn maglev_tables_are_placed_apart_from_live_ones_and_reused() {
        let mut h = Harness::new();
        assert_eq!(placed(&h.step()), [(0, 0, M), (2, M, M)]);
        h.config.vserver_groups[0].servers[0].weight = 50;
        assert_eq!(placed(&h.step()), [(1, 2 * M, M)]);
        h.config.vserver_groups[0].servers[0].weight = 40;
        assert_eq!(placed(&h.step()), [(0, 0, M)], "slot 0's place, free again");

        // 655373 slots: live tables sit at 0 and M, so it goes after them.
        h.config.listeners[0].maglev_table_size = 655_373;
        assert_eq!(placed(&h.step()), [(1, 2 * M, 655_373)]);
        h.config.vserver_groups[0].servers[0].weight = 30;
        // Slot 0's old place is too small: the first stretch that fits follows slot 1's.
        assert_eq!(placed(&h.step()), [(0, 2 * M + 655_373, 655_373)]);
        h.config.vserver_groups[0].servers[0].weight = 20;
        assert_eq!(placed(&h.step()), [(1, 2 * M, 655_373)]);
        // Back to the default: the stretch before the other listener's table is free.
        h.config.listeners[0].maglev_table_size = M;
        assert_eq!(placed(&h.step()), [(0, 0, M)]);
    }

    /// A table that finds no room is an error before any operation is written, and the
    /// check a change runs first says so too.
    #[test]
    fn no_room_for_a_table_fails_before_anything_is_written() {
        let mut h = Harness::new();
        h.reconciler = Reconciler::new(3 * M);
        h.step();
        h.config.listeners[0].maglev_table_size = 131_071;
        h.config.validate().unwrap();
        let desired = plan(&h.config, &h.runtime, &mut h.ids).unwrap();
        let err = h.reconciler.check_room(&desired).unwrap_err();
        assert_eq!(
            err.to_string(),
            "listener api: no free stretch of 131071 slots in the Maglev array for its new \
             table (65537 of maglev_slots 196611 are free; live tables stay in place while \
             new ones are written): raise maglev_slots"
        );
        let mut rec = Recorder::default();
        assert!(matches!(
            h.reconciler.apply(&desired, 0, &mut rec),
            Err(DataPlaneError::NoMaglevRoom(_))
        ));
        assert!(rec.0.is_empty(), "nothing written: {:?}", shape(&rec.0));
        // With room for it, the same change goes through.
        h.reconciler.maglev_slots = 5 * M;
        assert_eq!(placed(&h.step()), [(1, 2 * M, 131_071)]);
    }

    /// A restarted daemon adopts the live tables' places: its first rebuild writes
    /// around them.
    #[test]
    fn adopted_live_tables_keep_their_place() {
        let mut h = Harness::new();
        let ops = h.step();
        let listeners: Vec<(String, ListenerMapKey, Listener, TableMeta)> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::SetListener { key, value, .. } => Some((*key, *value)),
                _ => None,
            })
            .map(|(key, value)| {
                let meta = ops
                    .iter()
                    .find_map(|op| match op {
                        MapOp::WriteTable { slot, meta, .. } if *slot == value.table => Some(*meta),
                        _ => None,
                    })
                    .unwrap();
                let name = if value.id == 0 { "api" } else { "other" };
                (name.to_owned(), key, value, meta)
            })
            .collect();
        h.reconciler = Reconciler::new(MapSizes::default().maglev_slots);
        h.reconciler.adopt(&listeners, &[]);
        // Both listeners are rebuilt (their inputs are unknown) into their other slots,
        // away from the live tables at 0 and M.
        assert_eq!(placed(&h.step()), [(1, 2 * M, M), (3, 3 * M, M)]);
    }

    #[test]
    fn weight_zero_keeps_the_backend_usable_but_out_of_the_table() {
        let mut h = Harness::new();
        h.step();
        h.config.vserver_groups[0].servers[1].weight = 0;
        assert_eq!(
            shape(&h.step()),
            [
                "backend 1 flags=1 weight=0",
                "table 1 backends=1",
                "listener 0 slot=1"
            ]
        );
    }

    #[test]
    fn removing_a_server_rebuilds_then_disables_it() {
        let mut h = Harness::new();
        h.step();
        h.config.vserver_groups[0].servers.remove(0);
        assert_eq!(
            shape(&h.step()),
            [
                "table 1 backends=1",
                "listener 0 slot=1",
                "backend 0 flags=0 weight=100",
                // Its replies no longer find a flow: the forward side reschedules them.
                "remove endpoint 198.18.1.10:8080",
                // Its address's bit last, once no endpoint has it.
                "backend filter",
            ]
        );
    }

    #[test]
    fn an_endpoint_that_left_lingers_then_goes_unless_it_returns_or_room_is_short() {
        let mut h = Harness::new();
        h.reconciler = Reconciler::new(MapSizes::default().maglev_slots).with_endpoint_linger(
            EndpointLinger {
                ns: 5_000,
                room: 64,
            },
        );
        h.step_at(1_000);
        let removed = h.config.vserver_groups[0].servers.remove(0);
        // Its replies still find their flows (the endpoint and its filter bit stay); the
        // client side is re-selected at once, as without the linger.
        assert_eq!(
            shape(&h.step_at(2_000)),
            [
                "table 1 backends=1",
                "listener 0 slot=1",
                "backend 0 flags=0 weight=100",
            ]
        );
        assert!(!h.reconciler.endpoints_due(6_999));
        assert!(h.step_at(6_999).is_empty());
        assert!(h.reconciler.endpoints_due(7_000));
        assert_eq!(
            shape(&h.step_at(7_000)),
            ["remove endpoint 198.18.1.10:8080", "backend filter"]
        );
        assert!(!h.reconciler.endpoints_due(u64::MAX));

        // Back within the linger: the endpoint is desired again, nothing expires later.
        h.config.vserver_groups[0]
            .servers
            .insert(0, removed.clone());
        h.step_at(8_000);
        h.config.vserver_groups[0].servers.remove(0);
        h.step_at(9_000);
        h.config.vserver_groups[0].servers.insert(0, removed);
        let back = shape(&h.step_at(10_000));
        assert!(!back.iter().any(|op| op.contains("endpoint")), "{back:?}");
        assert!(!h.reconciler.endpoints_due(u64::MAX));

        // No room beside the desired endpoints (3 of them): the one that left goes at once.
        h.reconciler.linger.room = 3;
        h.config.vserver_groups[0].servers.remove(0);
        h.config.vserver_groups[1]
            .servers
            .push(config::Member::new([198, 18, 1, 31], 9000));
        let ops = shape(&h.step_at(11_000));
        assert!(
            ops.iter()
                .any(|op| op == "remove endpoint 198.18.1.10:8080"),
            "{ops:?}"
        );
        assert!(!h.reconciler.endpoints_due(u64::MAX));
    }

    #[test]
    fn unhealthy_backend_leaves_the_table_and_comes_back() {
        let mut h = Harness::new();
        h.step();
        let key = h.backend_key(0, "198.18.1.11", 8080);
        h.runtime.unhealthy.insert(key);
        assert_eq!(
            shape(&h.step()),
            [
                "table 1 backends=1",
                "listener 0 slot=1",
                // After the table without it is live: until then the table still gives it
                // new flows, which its flag would refuse.
                "backend 1 flags=0 weight=0",
            ]
        );
        h.runtime.unhealthy.clear();
        assert_eq!(
            shape(&h.step()),
            [
                "backend 1 flags=1 weight=100",
                "table 0 backends=2",
                "listener 0 slot=0"
            ]
        );
    }

    #[test]
    fn a_udp_secondary_leaves_new_flows_only_once_the_primary_s_table_is_live() {
        let mut h = Harness::new();
        // BASE ends with its listeners: one more, and the group it uses.
        h.config = config::parse(&format!(
            "{BASE}  - {{ name: db, protocol: udp, address: 198.19.0.102, port: 5432, server_group: db }}
primary_secondary_groups:
  - name: db
    primary: {{ address: 198.18.1.20, port: 5432 }}
    secondary: {{ address: 198.18.1.21, port: 5432 }}
"
        ))
        .unwrap();
        h.step();
        let primary = h.backend_key(2, "198.18.1.20", 5432);
        h.runtime.unhealthy.insert(primary);
        // Failover: the secondary is usable before the table that gives it new flows.
        assert_eq!(
            shape(&h.step()),
            [
                "backend 4 flags=1 weight=100",
                "table 5 backends=1",
                "listener 2 slot=5",
                "backend 3 flags=0 weight=0",
            ]
        );
        // Failback: the healthy secondary is given no new flow by the live table before it
        // stops being usable (its UDP flows move back to the primary).
        h.runtime.unhealthy.clear();
        assert_eq!(
            shape(&h.step()),
            [
                "backend 3 flags=1 weight=100",
                "table 4 backends=1",
                "listener 2 slot=4",
                "backend 4 flags=0 weight=0",
            ]
        );
    }

    #[test]
    fn moving_a_listener_to_another_group_and_removing_a_listener() {
        let mut h = Harness::new();
        h.step();
        h.config.listeners[0].server_group = Some("other".into());
        assert_eq!(
            shape(&h.step()),
            [
                // The other group's server now serves both listeners: its entries (one
                // per listener) say so, and new flows check for a collision.
                "backend 3 flags=5 weight=100 fresh",
                "backend 2 flags=5 weight=100",
                "endpoint 198.18.1.30:9000 listeners=[0, 1]",
                "table 1 backends=1",
                "listener 0 slot=1",
                "backend 0 flags=0 weight=100",
                "backend 1 flags=0 weight=100",
                "remove endpoint 198.18.1.10:8080",
                "remove endpoint 198.18.1.11:8080",
                "backend filter",
                "backend filter",
            ]
        );
        h.config.listeners.remove(1);
        assert_eq!(
            shape(&h.step()),
            [
                "backend 3 flags=1 weight=100",
                "remove listener port=80",
                "vip -",
                "backend 2 flags=0 weight=100",
                // The endpoint stops serving the listener once it is gone.
                "endpoint 198.18.1.30:9000 listeners=[0]",
                // The bit of a VIP goes last, once no listener of it is left.
                "vip filter"
            ]
        );
    }

    #[test]
    fn changing_only_timeouts_rewrites_the_listener_entry_alone() {
        let mut h = Harness::new();
        h.step();
        h.config.listeners[1].established_timeout = 60;
        assert_eq!(shape(&h.step()), ["listener 1 slot=2"]);
    }

    /// An IPv6 `forwarding: dsr` listener's tunnel source goes with its listener entry
    /// (`ENCAP_SOURCES6`, its host bits counted from the prefix), IPv4 listeners keep the
    /// IPv4 one in their entry; a change of the IPv6 source alone rewrites the listener.
    #[test]
    fn an_ipv6_dsr_listener_carries_its_ipv6_source_beside_its_entry() {
        let mut h = Harness::new();
        h.config = config::parse(
            "
instance: t
interfaces: [eth0]
forwarding: dsr
dsr: { encapsulation: gue, source: [198.18.9.0/24, '2001:db8:9::/112'] }
vserver_groups:
  - name: v4
    servers: [{ address: 198.18.1.10, port: 80 }]
  - name: v6
    servers: [{ address: 2001:db8:1::10, port: 80 }]
listeners:
  - { name: a4, protocol: tcp, address: 198.19.0.100, port: 80, server_group: v4 }
  - { name: a6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: v6 }
",
        )
        .unwrap();
        let sets = |ops: &[MapOp]| -> Vec<(bool, Listener, EncapSource6)> {
            ops.iter()
                .filter_map(|op| match op {
                    MapOp::SetListener {
                        key,
                        value,
                        source6,
                    } => Some((matches!(key, ListenerMapKey::V6(_)), *value, *source6)),
                    _ => None,
                })
                .collect()
        };
        let first = sets(&h.step());
        let (_, v4, v4_source) = first.iter().find(|(v6, ..)| !v6).copied().unwrap();
        assert_eq!(v4.encap_source.to_ne_bytes(), [198, 18, 9, 0]);
        assert_eq!(v4.encap_source_bits, 8);
        assert_eq!(v4_source, EncapSource6::default());
        let (_, v6, v6_source) = first.iter().find(|(v6, ..)| *v6).copied().unwrap();
        assert_eq!((v6.encap_source, v6.encap_source_bits), (0, 0));
        assert_eq!(
            v6.encapsulation,
            lb_common::Encapsulation::Gue as u8,
            "gue over IPv6"
        );
        assert_eq!(
            crate::family::ipv6_of(v6_source.addr),
            "2001:db8:9::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6_source.bits, 16);

        let dsr = &mut h.config.dsr;
        dsr.source = config::DsrSource::new(
            dsr.source.and_then(|s| s.ipv4()),
            Some(config::Ipv6Net::host("2001:db8:9::7".parse().unwrap())),
        );
        let changed = sets(&h.step());
        assert_eq!(changed.len(), 1, "the IPv6 listener alone: {changed:?}");
        let (is_v6, _, source) = changed[0];
        assert!(is_v6);
        assert_eq!(
            (source.addr[3].to_ne_bytes(), source.bits),
            ([0, 0, 0, 7], 0)
        );
        assert!(h.step().is_empty(), "nothing left to write");
    }
}
