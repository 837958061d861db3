//! The decision's tables (`lb_common::decide::Tables`) over this program's maps: the
//! decision reads the very maps the program writes, and hands back pointers into them so
//! the program can update an entry in place without a second lookup.

use core::{cell::Cell, ops::Deref};

use aya_ebpf::maps::{Array, lpm_trie::Key as LpmKey};
use lb_common::{
    AclKey, AclKey6, Addr6, Affinity, AffinityKey, AffinityKey6, BACKEND_FILTER_BASE, Backend,
    BackendCpu, Flow, FlowKey, FlowKey6, IdPair, Listener, ListenerKey, ListenerKey6, NO_BACKEND,
    PENDING_F_RECHECK, REFUSED_FILTER_BASE, REFUSED_PREFIXES_WORD, TableMeta, V4, V6,
    VIP_FILTER_BASE, VIP6_FILTER_BASE, acl_prefix_len, acl_prefix_len6, address_filter_bit,
    address_filter_bit6, decide::Tables,
};

use crate::maps::{
    ACLS, ACLS6, ACTIVE_FLOWS, ADDRESS_FILTER, AFFINITY, AFFINITY6, BACKENDS, CURSORS, HALF_OPEN,
    HALF_OPEN6, LISTENERS6, MAGLEV, PENDING, PENDING6, SEQUENCE, TABLE_META, backend_cpu, warm,
    warm_backend_cpu,
};

/// A map value. Valid for the rest of the program run (map values are freed after an RCU
/// grace period, and the program runs inside one).
pub struct MapRef<T>(*mut T);

impl<T> MapRef<T> {
    /// The value for an update in place. Other CPUs may write the same value at the same
    /// time: callers only write fields where the last writer winning is harmless
    /// (timestamps, flag bits).
    #[inline(always)]
    #[expect(
        clippy::mut_from_ref,
        reason = "map values are shared memory; see the doc comment"
    )]
    pub fn get_mut(&self) -> &mut T {
        // SAFETY: a pointer from a successful map lookup, valid for the program run.
        unsafe { &mut *self.0 }
    }
}

impl<T> Deref for MapRef<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: as above.
        unsafe { &*self.0 }
    }
}

/// Every map the decision reads; and what the program keeps from the flow lookup for
/// after the decision: the `BACKEND_CPU` record of the flow's backend, whose load the
/// lookup started (`backend_record`), so a packet computes its index once.
pub struct Maps {
    found: Cell<Option<(u32, *mut BackendCpu)>>,
    /// Whether a SYN the flow filter rules out of `FLOWS` is looked up in `HALF_OPEN`;
    /// false leaves that lookup to the new-flow stage's insert (`PENDING_F_EXCLUSIVE`).
    half_open_lookup: bool,
    /// Whether reading a backend also starts loading this CPU's record of it (`warm`).
    warm_records: bool,
}

impl Maps {
    /// The tables read in full: every lookup the decision asks for is made.
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            found: Cell::new(None),
            half_open_lookup: true,
            warm_records: false,
        }
    }

    /// The tables as the new-flow stage reads them: the backend the scheduler picks is
    /// read from `BACKENDS` during the decision and this CPU's record of it (the next hop,
    /// the counters) after it. With thousands of backends neither stays in the CPU's
    /// caches; started together, the two misses overlap instead of following each other
    /// (docs/architecture.md, "The maps", has the measurements).
    #[inline(always)]
    pub const fn for_new_flow() -> Self {
        Self {
            found: Cell::new(None),
            half_open_lookup: true,
            warm_records: true,
        }
    }

    /// The tables as the entry program reads them for a client's packet: a SYN's
    /// half-open lookup is left to the insert, unless the new-flow stage handed the SYN
    /// back because the insert found an entry (`recheck`).
    #[inline(always)]
    pub const fn for_client(recheck: bool) -> Self {
        Self {
            found: Cell::new(None),
            half_open_lookup: recheck,
            warm_records: false,
        }
    }

    /// This CPU's record of backend `id`: the one the flow lookup found if it was for
    /// `id` (another CPU may have moved the flow since), else looked up now.
    #[inline(always)]
    pub fn backend_record(&self, id: u32) -> Option<*mut BackendCpu> {
        match self.found.get() {
            Some((found, record)) if found == id => Some(record),
            _ => backend_cpu(id),
        }
    }
}

/// Whether the new-flow stage handed this SYN back (`PENDING_F_RECHECK` for `key`): its
/// half-open entry is then looked up (`Maps::for_client`). The mark is taken, so a later
/// SYN of the same key is not taken for a second pass.
#[inline(always)]
pub fn take_recheck(key: &FlowKey) -> bool {
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let p = unsafe { &mut *p };
    take_mark(&mut p.flags, || p.key == *key)
}

/// `take_recheck` for an IPv6 SYN (`PENDING6`).
#[inline(always)]
pub fn take_recheck6(key: &FlowKey6) -> bool {
    let Some(p) = PENDING6.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as above.
    let p = unsafe { &mut *p };
    take_mark(&mut p.flags, || p.key == *key)
}

/// Clears a hand-off's `PENDING_F_RECHECK` if it is set and the hand-off is the packet's
/// (`same_key`, asked only then), and says whether it did.
#[inline(always)]
fn take_mark(flags: &mut u8, same_key: impl FnOnce() -> bool) -> bool {
    if *flags & PENDING_F_RECHECK == 0 || !same_key() {
        return false;
    }
    *flags &= !PENDING_F_RECHECK;
    true
}

/// Backend id number `index` of a selection table (see `IdPair`).
#[inline(always)]
fn table_entry(map: &Array<IdPair>, index: u32) -> u32 {
    match map.get(index / 2) {
        Some(pair) => pair[(index & 1) as usize],
        None => NO_BACKEND,
    }
}

impl Tables for Maps {
    type Family = V4;
    type Ref<'a, T: 'a> = MapRef<T>;

    #[inline(always)]
    fn listener(&self, key: &ListenerKey) -> Option<MapRef<Listener>> {
        crate::maps::listener(key).map(MapRef)
    }

    #[inline(always)]
    fn acl_matches(&self, acl: u32, addr: u32) -> bool {
        ACLS.get(LpmKey::new(acl_prefix_len(32), AclKey { acl, addr }))
            .is_some()
    }

    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<MapRef<Flow>> {
        let flow = crate::flow::lookup::<V4>(key)?;
        // SAFETY: a pointer from a successful lookup.
        let id = unsafe { (*flow).backend };
        let record = backend_cpu(id);
        if let Some(record) = record {
            warm(record);
            self.found.set(Some((id, record)));
        }
        Some(MapRef(flow))
    }

    #[inline(always)]
    fn opening_flow(&self, key: &FlowKey) -> Option<MapRef<Flow>> {
        if crate::flow_filter::may_hold(key) {
            return self.flow(key);
        }
        if !self.half_open_lookup {
            return None;
        }
        HALF_OPEN.get_ptr_mut(key).map(MapRef)
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<MapRef<Backend>> {
        if self.warm_records {
            warm_backend_cpu(id);
        }
        BACKENDS.get_ptr_mut(id).map(MapRef)
    }

    #[inline(always)]
    fn table_meta(&self, table: u32) -> Option<MapRef<TableMeta>> {
        TABLE_META.get_ptr_mut(table).map(MapRef)
    }

    #[inline(always)]
    fn affinity(&self, listener: u32, addr: u32) -> Option<MapRef<Affinity>> {
        AFFINITY
            .get_ptr_mut(AffinityKey { listener, addr })
            .map(MapRef)
    }

    #[inline(always)]
    fn maglev(&self, index: u32) -> u32 {
        table_entry(&MAGLEV, index)
    }

    #[inline(always)]
    fn sequence(&self, index: u32) -> u32 {
        table_entry(&SEQUENCE, index)
    }

    /// Advances this CPU's cursor of the listener and returns its previous value.
    #[inline(always)]
    fn take_cursor(&self, listener: u32) -> u32 {
        match CURSORS.get_ptr_mut(listener) {
            Some(c) => {
                // SAFETY: per-CPU value, only this CPU touches it while the program runs.
                let v = unsafe { *c };
                unsafe { *c = v.wrapping_add(1) };
                v
            }
            None => 0,
        }
    }

    #[inline(always)]
    fn active_flows(&self, id: u32) -> u32 {
        ACTIVE_FLOWS.get(id).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn may_be_vip(&self, addr: u32) -> bool {
        filter_has(VIP_FILTER_BASE, addr)
    }

    #[inline(always)]
    fn may_be_refused(&self, addr: u32) -> bool {
        ADDRESS_FILTER
            .get(REFUSED_PREFIXES_WORD)
            .is_none_or(|w| *w != 0)
            || filter_has(REFUSED_FILTER_BASE, addr)
    }
}

/// Whether `addr` may be an IPv4 backend's address: false only when no backend endpoint
/// has it, so a packet for no listener from it is no reply, and skips the `ENDPOINTS`
/// lookup.
#[inline(always)]
pub fn may_be_backend(addr: u32) -> bool {
    filter_has(BACKEND_FILTER_BASE, addr)
}

/// Whether the filter starting at word `base` of `ADDRESS_FILTER` has `addr`'s bit.
#[inline(always)]
fn filter_has(base: u32, addr: u32) -> bool {
    let bit = address_filter_bit(addr);
    match ADDRESS_FILTER.get(base + bit / 64) {
        Some(word) => word & (1 << (bit % 64)) != 0,
        None => true,
    }
}

/// The IPv6 maps the decision reads, and those both families share (read through `Maps`).
pub struct Maps6 {
    /// As `Maps::half_open_lookup`.
    half_open_lookup: bool,
    /// As `Maps::warm_records`.
    warm_records: bool,
}

impl Maps6 {
    /// As `Maps::new`.
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            half_open_lookup: true,
            warm_records: false,
        }
    }

    /// As `Maps::for_new_flow`.
    #[inline(always)]
    pub const fn for_new_flow() -> Self {
        Self {
            half_open_lookup: true,
            warm_records: true,
        }
    }

    /// As `Maps::for_client`.
    #[inline(always)]
    pub const fn for_client(recheck: bool) -> Self {
        Self {
            half_open_lookup: recheck,
            warm_records: false,
        }
    }
}

impl Tables for Maps6 {
    type Family = V6;
    type Ref<'a, T: 'a> = MapRef<T>;

    #[inline(always)]
    fn listener(&self, key: &ListenerKey6) -> Option<MapRef<Listener>> {
        LISTENERS6.get_ptr_mut(key).map(MapRef)
    }

    #[inline(always)]
    fn acl_matches(&self, acl: u32, addr: Addr6) -> bool {
        ACLS6
            .get(LpmKey::new(acl_prefix_len6(128), AclKey6 { acl, addr }))
            .is_some()
    }

    #[inline(always)]
    fn flow(&self, key: &FlowKey6) -> Option<MapRef<Flow>> {
        let flow = crate::flow::lookup::<V6>(key)?;
        // SAFETY: a pointer from a successful lookup.
        warm_backend_cpu(unsafe { (*flow).backend });
        Some(MapRef(flow))
    }

    #[inline(always)]
    fn opening_flow(&self, key: &FlowKey6) -> Option<MapRef<Flow>> {
        if crate::flow_filter::may_hold(key) {
            return self.flow(key);
        }
        if !self.half_open_lookup {
            return None;
        }
        HALF_OPEN6.get_ptr_mut(key).map(MapRef)
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<MapRef<Backend>> {
        // Backends are shared by both families: `Maps` reads them, and warms as asked.
        let maps = if self.warm_records {
            Maps::for_new_flow()
        } else {
            Maps::new()
        };
        maps.backend(id)
    }

    #[inline(always)]
    fn table_meta(&self, table: u32) -> Option<MapRef<TableMeta>> {
        Maps::new().table_meta(table)
    }

    #[inline(always)]
    fn affinity(&self, listener: u32, addr: Addr6) -> Option<MapRef<Affinity>> {
        AFFINITY6
            .get_ptr_mut(AffinityKey6 { listener, addr })
            .map(MapRef)
    }

    #[inline(always)]
    fn maglev(&self, index: u32) -> u32 {
        Maps::new().maglev(index)
    }

    #[inline(always)]
    fn sequence(&self, index: u32) -> u32 {
        Maps::new().sequence(index)
    }

    #[inline(always)]
    fn take_cursor(&self, listener: u32) -> u32 {
        Maps::new().take_cursor(listener)
    }

    #[inline(always)]
    fn active_flows(&self, id: u32) -> u32 {
        Maps::new().active_flows(id)
    }

    #[inline(always)]
    fn may_be_vip(&self, addr: Addr6) -> bool {
        let bit = address_filter_bit6(addr);
        match ADDRESS_FILTER.get(VIP6_FILTER_BASE + bit / 64) {
            Some(word) => word & (1 << (bit % 64)) != 0,
            None => true,
        }
    }
}
