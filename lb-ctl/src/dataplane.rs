//! The loaded XDP program and typed handles on its maps.
//!
//! Everything that touches a BPF map goes through `DataPlane`, so the rest of the controller
//! (planning, reconciliation, the API) deals in plain values and is testable without a
//! kernel.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    ptr::NonNull,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, ProgramArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
        xdp::DevMapHash,
    },
    programs::{SchedClassifier, Xdp},
};
use lb_common::{
    AclKey, AclKey6, Affinity, AffinityKey, AffinityKey6, Backend, BackendAddr6, BackendCpu,
    BackendCpuReply, EncapSource6, Endpoint, Endpoint6, EndpointKey, EndpointKey6, Flow, FlowKey,
    FlowKey6, Listener, ListenerKey, ListenerKey6, ListenerSlot, REASON_COUNT, Reason,
    SEQUENCE_TABLE_SIZE, TABLES_PER_LISTENER, TableMeta, TrafficCounters, acl_prefix_len,
    acl_prefix_len6, half_open_table_size, id_pair_entries, names,
};
use thiserror::Error;

use crate::{
    family::{EndpointEntry, EndpointMapKey, FlowMapKey, ListenerMapKey},
    listener_index::{ListenerIndex, SlotMemory},
    reconcile::MapWriter,
};

/// The XDP object built by build.rs from the `lb-ebpf` crate: the shipped one, production
/// programs only (no `testing` feature).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[derive(Debug, Error)]
pub enum DataPlaneError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP program was rejected: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// The verifier refused a program: a short summary, the full log in a file.
    #[error("{0}")]
    Rejected(Box<crate::verifier::Rejection>),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("adding a redirect port failed: {0}")]
    TxPort(String),
    #[error("the XDP object has no map or program named {0}")]
    Missing(&'static str),
    /// A key of one address family with a value of the other (a controller bug).
    #[error("map {0}: a key and value of different address families")]
    FamilyMismatch(&'static str),
    #[error("{name}: {source}")]
    Io {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {name} into memory failed: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NoMaglevRoom(#[from] crate::reconcile::NoMaglevRoom),
    #[error(
        "max_backends {max_backends} × {cpus} possible CPUs is more per-CPU backend records \
         than one map holds (4,294,967,295): lower max_backends"
    )]
    TooManyBackendRecords { max_backends: u32, cpus: u32 },
    #[error(
        "BACKEND_CPU_REPLY has {replies} entries and BACKEND_CPU {records}: they are sized \
         together, so these pins are not one data plane's (`lb-ctl teardown`, then start again)"
    )]
    BackendRecordsMismatch { records: u32, replies: u32 },
    #[error("{what} {index} is outside the map ({limit} entries)")]
    OutOfRange {
        what: &'static str,
        index: u32,
        limit: u32,
    },
}

type Result<T, E = DataPlaneError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { name, source }
}

/// Sizes of the maps that depend on the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub flow_table_size: u32,
    pub max_listeners: u32,
    pub max_backends: u32,
    /// Slots of `MAGLEV`, shared by every listener's tables.
    pub maglev_slots: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self::new(
            lb_common::DEFAULT_FLOW_TABLE_SIZE,
            lb_common::DEFAULT_MAX_LISTENERS,
            lb_common::DEFAULT_MAX_BACKENDS,
        )
    }
}

impl MapSizes {
    /// Sizes with the Maglev array's default room (two default tables per listener).
    pub const fn new(flow_table_size: u32, max_listeners: u32, max_backends: u32) -> Self {
        Self {
            flow_table_size,
            max_listeners,
            max_backends,
            maglev_slots: lb_common::default_maglev_slots(max_listeners),
        }
    }

    /// The sizes a config asks for.
    pub const fn of(config: &crate::config::Config) -> Self {
        Self {
            flow_table_size: config.flow_table_size,
            max_listeners: config.max_listeners,
            max_backends: config.max_backends,
            maglev_slots: config.maglev_slots(),
        }
    }

    /// `BACKEND_CPU`'s entries with `cpus` possible CPUs: `max_backends` records for each
    /// (saturated; `DataPlane::load_object` refuses sizes that do not fit).
    pub fn backend_cpu_entries(&self, cpus: u32) -> u32 {
        lb_common::backend_cpu_entries(self.max_backends, cpus).unwrap_or(u32::MAX)
    }

    pub const fn table_slots(&self) -> u32 {
        self.max_listeners * TABLES_PER_LISTENER
    }

    /// Entries of the IPv6 half-open table: a quarter of the IPv6 flow table, at least
    /// 65,536 (IPv4's floor is 262,144; IPv6 entries are larger, and rarer).
    pub const fn ipv6_half_open_table_size(&self) -> u32 {
        let quarter = self.ipv6_flow_table_size() / 4;
        if quarter < 65_536 { 65_536 } else { quarter }
    }

    /// Entries of the IPv6 flow and affinity tables: a quarter of IPv4's (their keys are
    /// 40 bytes, not 16, and most deployments carry less IPv6), at least 1024 and at most
    /// `flow_table_size`.
    pub const fn ipv6_flow_table_size(&self) -> u32 {
        let quarter = self.flow_table_size / 4;
        let at_least = if quarter < 1024 { 1024 } else { quarter };
        if at_least > self.flow_table_size {
            self.flow_table_size
        } else {
            at_least
        }
    }

    /// max_entries of every sized map, by name, on a machine of `cpus` possible CPUs.
    pub fn entries(&self, cpus: u32) -> [(&'static str, u32); 24] {
        // ADDRESS_FILTER has a fixed size.
        let slots = self.table_slots();
        [
            (names::LISTENERS, 2 * self.max_listeners),
            (
                names::LISTENER_INDEX,
                lb_common::listener_index_entries(self.max_listeners, cpus),
            ),
            (names::BACKENDS, self.max_backends),
            (names::MAGLEV, id_pair_entries(self.maglev_slots)),
            (
                names::SEQUENCE,
                id_pair_entries(slots * SEQUENCE_TABLE_SIZE),
            ),
            (names::TABLE_META, slots),
            (names::CURSORS, self.max_listeners),
            (names::FLOWS, self.flow_table_size),
            (names::HALF_OPEN, half_open_table_size(self.flow_table_size)),
            // One entry per backend endpoint, and every endpoint has a backend id.
            (names::ENDPOINTS, self.max_backends),
            (names::ACTIVE_FLOWS, self.max_backends),
            (names::LISTENER_STATS, self.max_listeners),
            (names::BACKEND_CPU, self.backend_cpu_entries(cpus)),
            (names::BACKEND_CPU_REPLY, self.backend_cpu_entries(cpus)),
            (names::AFFINITY, self.flow_table_size),
            (
                names::FLOW_FILTER,
                lb_common::flow_filter::flow_filter_entries(self.flow_table_size),
            ),
            (names::LISTENERS6, 2 * self.max_listeners),
            (names::BACKENDS6, self.max_backends),
            (names::FLOWS6, self.ipv6_flow_table_size()),
            (names::HALF_OPEN6, self.ipv6_half_open_table_size()),
            (names::ENDPOINTS6, self.max_backends),
            (names::AFFINITY6, self.ipv6_flow_table_size()),
            (names::NEXT_HOPS6, self.max_backends),
            (names::ENCAP_SOURCES6, self.max_listeners),
        ]
    }
}

/// The read-only global holding `BACKEND_CPU`'s records per CPU (`max_backends`).
const BACKEND_CPU_STRIDE: &str = "BACKEND_CPU_STRIDE";
/// The read-only global holding log2 of `LISTENER_INDEX`'s slots.
const LISTENER_INDEX_BITS: &str = "LISTENER_INDEX_BITS";

/// Every map of the program, by name (pin files carry these names).
pub const ALL_MAPS: [&str; 29] = [
    names::LISTENERS,
    names::LISTENER_INDEX,
    names::BACKENDS,
    names::MAGLEV,
    names::SEQUENCE,
    names::TABLE_META,
    names::CURSORS,
    names::FLOWS,
    names::HALF_OPEN,
    names::ENDPOINTS,
    names::ACTIVE_FLOWS,
    names::LISTENER_STATS,
    names::BACKEND_CPU,
    names::BACKEND_CPU_REPLY,
    names::COUNTERS,
    names::TX_PORTS,
    names::ACLS,
    names::AFFINITY,
    names::ADDRESS_FILTER,
    names::FLOW_FILTER,
    names::LISTENERS6,
    names::BACKENDS6,
    names::FLOWS6,
    names::HALF_OPEN6,
    names::ENDPOINTS6,
    names::ACLS6,
    names::AFFINITY6,
    names::NEXT_HOPS6,
    names::ENCAP_SOURCES6,
];

/// A `BPF_F_MMAPABLE` array mapped into this process: `IdPair` arrays as a dense `u32`
/// array (the controller writes a 65537-slot Maglev table with a memory copy instead of
/// 65537 syscalls), the flow filter as `AtomicU64` words.
pub(crate) struct MappedArray<T = u32> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is shared memory owned by this struct; plain access goes through
// &mut self, shared access only to atomics.
unsafe impl<T> Send for MappedArray<T> {}

impl MappedArray<u32> {
    /// The array of `IdPair`s holding `ids` backend ids.
    fn new(name: &'static str, map: &MapData, ids: u32) -> Result<Self> {
        Self::map(name, map, id_pair_entries(ids) as usize * 2)
    }
}

impl MappedArray<std::sync::atomic::AtomicU64> {
    /// The flow filter of a flow table of `flow_table_size` entries.
    pub(crate) fn flow_filter(map: &MapData, flow_table_size: u32) -> Result<Self> {
        let len = lb_common::flow_filter::flow_filter_entries(flow_table_size) as usize;
        Self::map(names::FLOW_FILTER, map, len)
    }

    pub(crate) fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: ptr/len describe the live mapping; atomics allow shared access.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> MappedArray<T> {
    /// Maps the first `len` elements of `map`.
    fn map(name: &'static str, map: &MapData, len: usize) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd with the size the kernel expects; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataPlaneError::Mmap {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<T>()).ok_or(DataPlaneError::Mmap {
            name,
            source: std::io::Error::other("mmap returned NULL"),
        })?;
        Ok(Self { ptr, len, bytes })
    }

    /// Element `i`, read as the data plane may be writing it: each aligned 64-bit field is
    /// read whole, the record as a whole may mix two moments.
    fn read(&self, i: usize) -> T {
        assert!(
            i < self.len,
            "index {i} outside the {} mapped elements",
            self.len
        );
        // SAFETY: in the live mapping; volatile, since the data plane writes it meanwhile.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(i)) }
    }

    /// Writes element `i` (see `read`).
    fn write(&mut self, i: usize, value: T) {
        assert!(
            i < self.len,
            "index {i} outside the {} mapped elements",
            self.len
        );
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(i), value) }
    }

    /// A pointer to element `i`, for field-wise access.
    fn element(&self, i: usize) -> *mut T {
        assert!(
            i < self.len,
            "index {i} outside the {} mapped elements",
            self.len
        );
        // SAFETY: inside the live mapping.
        unsafe { self.ptr.as_ptr().add(i) }
    }

    fn slice(&self) -> &[T] {
        // SAFETY: ptr/len describe the live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: ptr/len describe the live mapping; &mut self makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// `BACKEND_CPU` and `BACKEND_CPU_REPLY` mapped into this process: every CPU's records
/// of every backend id, read and reset here without a syscall per CPU. Their stride
/// (records per CPU) is the maps' size over the possible CPUs, so handles opened from
/// pins need no config.
pub(crate) struct BackendRecords {
    records: MappedArray<BackendCpu>,
    replies: MappedArray<BackendCpuReply>,
    stride: u32,
    cpus: u32,
}

impl BackendRecords {
    fn new(map: &MapData, replies: &MapData) -> Result<Self> {
        let name = names::BACKEND_CPU;
        let entries = map.info().map_err(map_err(name))?.max_entries();
        let reply_entries = replies
            .info()
            .map_err(map_err(names::BACKEND_CPU_REPLY))?
            .max_entries();
        // Both are sized from one config; pins of two sizes are not one data plane's.
        if reply_entries != entries {
            return Err(DataPlaneError::BackendRecordsMismatch {
                records: entries,
                replies: reply_entries,
            });
        }
        let cpus = cpu_count()? as u32;
        Ok(Self {
            records: MappedArray::map(name, map, entries as usize)?,
            replies: MappedArray::map(names::BACKEND_CPU_REPLY, replies, entries as usize)?,
            stride: entries / cpus.max(1),
            cpus,
        })
    }

    /// The indexes of backend `id`'s records, one per CPU.
    fn indexes(&self, id: u32) -> Result<impl Iterator<Item = usize> + use<>> {
        if id >= self.stride {
            return Err(DataPlaneError::OutOfRange {
                what: "backend id",
                index: id,
                limit: self.stride,
            });
        }
        let stride = self.stride;
        Ok((0..self.cpus).map(move |cpu| lb_common::backend_cpu_index(id, cpu, stride) as usize))
    }

    /// A backend's counters, summed over CPUs.
    fn totals(&self, id: u32) -> Result<TrafficCounters> {
        let mut total = TrafficCounters::default();
        for i in self.indexes(id)? {
            total.add(&self.records.read(i).counters(&self.replies.read(i)));
        }
        Ok(total)
    }

    /// Zeroes every CPU's record of a backend.
    fn reset(&mut self, id: u32) -> Result<()> {
        for i in self.indexes(id)? {
            self.records.write(i, BackendCpu::default());
            self.replies.write(i, BackendCpuReply::default());
        }
        Ok(())
    }
}

/// `LISTENER_INDEX` mapped into this process, for `ListenerIndex`: its `slots` keys hash
/// to (the CPUs' scratch slots after them are the data plane's).
pub(crate) struct IndexSlots {
    slots: MappedArray<ListenerSlot>,
    barriers: Barriers,
}

impl IndexSlots {
    fn new(map: &MapData, slots: u32) -> Result<Self> {
        let name = names::LISTENER_INDEX;
        let entries = map.info().map_err(map_err(name))?.max_entries();
        if entries < slots {
            return Err(DataPlaneError::OutOfRange {
                what: "listener index slot",
                index: slots - 1,
                limit: entries,
            });
        }
        Ok(Self {
            slots: MappedArray::map(name, map, slots as usize)?,
            barriers: Barriers::new(),
        })
    }

    fn slot(&self, slot: u32) -> *mut ListenerSlot {
        self.slots.element(slot as usize)
    }

    fn word_cell(&self, slot: u32) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: an aligned u64 inside the live mapping; the data plane only reads it.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(&raw mut (*self.slot(slot)).word) }
    }

    fn record_ptr(&self, slot: u32, second: bool) -> *mut Listener {
        let slot = self.slot(slot);
        // SAFETY: in the live mapping.
        unsafe {
            if second {
                &raw mut (*slot).second
            } else {
                &raw mut (*slot).first
            }
        }
    }
}

impl SlotMemory for IndexSlots {
    fn slots(&self) -> u32 {
        self.slots.len as u32
    }

    fn word(&self, slot: u32) -> u64 {
        self.word_cell(slot)
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn record(&self, slot: u32, second: bool) -> Listener {
        // SAFETY: in the live mapping; only this process writes it.
        unsafe { std::ptr::read_volatile(self.record_ptr(slot, second)) }
    }

    fn write_record(&mut self, slot: u32, second: bool, listener: &Listener) {
        // SAFETY: as above; `ListenerIndex` writes only a record no packet reads.
        unsafe { std::ptr::write_volatile(self.record_ptr(slot, second), *listener) }
    }

    fn publish(&mut self, slot: u32, word: u64) {
        // Release: the record's bytes are visible before the word that names it.
        self.word_cell(slot)
            .store(word, std::sync::atomic::Ordering::Release);
    }

    fn start_barrier(&mut self) -> u64 {
        self.barriers.start()
    }

    fn completed_barrier(&self) -> u64 {
        self.barriers.completed()
    }

    fn wait_barrier(&mut self, n: u64) {
        self.barriers.wait(n);
    }
}

/// Waits for readers of `LISTENER_INDEX` records in a thread of its own, so a listener
/// change does not pause the apply it is part of: `start` asks for a barrier, the thread
/// runs them one after another, coalescing those asked for meanwhile.
struct Barriers {
    shared: std::sync::Arc<BarrierState>,
    worker: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct BarrierState {
    counts: std::sync::Mutex<BarrierCounts>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct BarrierCounts {
    /// The number of the last barrier asked for.
    started: u64,
    /// The number of the last barrier completed.
    completed: u64,
    /// The thread is to end.
    stop: bool,
}

impl BarrierState {
    fn lock(&self) -> std::sync::MutexGuard<'_, BarrierCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Barriers {
    fn new() -> Self {
        let shared = std::sync::Arc::new(BarrierState::default());
        let state = shared.clone();
        let worker = std::thread::Builder::new()
            .name("listener-rcu".into())
            .spawn(move || {
                loop {
                    let target = {
                        let mut c = state.lock();
                        while c.started == c.completed && !c.stop {
                            c = state.changed.wait(c).unwrap_or_else(|e| e.into_inner());
                        }
                        if c.stop {
                            return;
                        }
                        c.started
                    };
                    // Started after every barrier up to `target` was asked for: when it
                    // returns, every reader of a record retired before then is done.
                    wait_for_readers();
                    state.lock().completed = target;
                    state.changed.notify_all();
                }
            })
            .ok();
        Self { shared, worker }
    }

    fn start(&self) -> u64 {
        let mut c = self.shared.lock();
        c.started += 1;
        self.shared.changed.notify_all();
        c.started
    }

    fn completed(&self) -> u64 {
        self.shared.lock().completed
    }

    fn wait(&self, n: u64) {
        if self.worker.is_none() {
            // No thread could be started: wait here.
            wait_for_readers();
            let mut c = self.shared.lock();
            c.completed = c.completed.max(n.min(c.started));
            return;
        }
        let mut c = self.shared.lock();
        while c.completed < n {
            c = self
                .shared
                .changed
                .wait(c)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Barriers {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Returns once no packet can still be reading a record it found before the call.
/// MEMBARRIER_CMD_GLOBAL waits for an RCU grace period, and every XDP program run is inside
/// an RCU read-side section. Kernels with nohz_full CPUs refuse it; a program run lasts
/// microseconds, so a pause far longer stands in.
fn wait_for_readers() {
    if let Err(e) = rustix::thread::membarrier(rustix::thread::MembarrierCommand::Global) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "membarrier(MEMBARRIER_CMD_GLOBAL) failed ({e}): listener changes wait 50 ms \
                 for packets instead of an RCU grace period"
            );
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How to load: map sizes and where to pin (None: nothing pinned, e.g. fixtures).
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub sizes: MapSizes,
    /// Folder for map pins (`<bpffs>/<instance>/maps`); existing pins there are reused.
    pub map_pin_dir: Option<PathBuf>,
    /// Where a rejected program's verifier log is written (None: the temporary folder).
    pub verifier_log_dir: Option<PathBuf>,
}

/// aya-log's reader of the program's log ring (only in `LB_EBPF_DEBUG_LOG=1` builds).
pub type XdpLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The loaded program and its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    logger: Option<XdpLogger>,
    sizes: MapSizes,
    listeners: HashMap<MapData, ListenerKey, Listener>,
    /// `LISTENERS`' IPv4 keys direct-mapped, kept with it (`set_listener`, `remove_listener`).
    listener_index: ListenerIndex<IndexSlots>,
    backends: Array<MapData, Backend>,
    maglev: MappedArray,
    sequence: MappedArray,
    table_meta: Array<MapData, TableMeta>,
    cursors: PerCpuArray<MapData, u32>,
    flows: HashMap<MapData, FlowKey, Flow>,
    /// Half-open flows (a key is in this table or in `flows`).
    half_open: HashMap<MapData, FlowKey, Flow>,
    endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    active_flows: Array<MapData, u32>,
    listener_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_cpu: BackendRecords,
    counters: PerCpuArray<MapData, u64>,
    tx_ports: DevMapHash<MapData>,
    acls: LpmTrie<MapData, AclKey, u32>,
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    address_filter: Array<MapData, u64>,
    flow_filter: MappedArray<std::sync::atomic::AtomicU64>,
    v6: Maps6,
    /// The tail-call table of this load's stages. Held open: the kernel empties a program
    /// array when its last open file or pin goes.
    stages: MapData,
    programs: Vec<ProgramFigures>,
    /// Where `lb_probe_tunnel` is attached: interface → (its index then, the link).
    probe_links: BTreeMap<String, (u32, aya::programs::tc::SchedClassifierLinkId)>,
}

/// The IPv6 tables (`crate::family`): the IPv4 ones' namesakes with IPv6 keys.
struct Maps6 {
    listeners: HashMap<MapData, ListenerKey6, Listener>,
    /// The address of an IPv6 backend, by backend id (its entry is in `BACKENDS`).
    backends: Array<MapData, BackendAddr6>,
    flows: HashMap<MapData, FlowKey6, Flow>,
    half_open: HashMap<MapData, FlowKey6, Flow>,
    endpoints: HashMap<MapData, EndpointKey6, Endpoint6>,
    acls: LpmTrie<MapData, AclKey6, u32>,
    affinity: HashMap<MapData, AffinityKey6, Affinity>,
    /// The outer source of an IPv6 DSR listener's tunnel, by listener id.
    encap_sources: Array<MapData, EncapSource6>,
}

/// One loaded program as the kernel reports it: the verifier's cost and the native size.
#[derive(Clone, Debug)]
pub struct ProgramFigures {
    pub name: &'static str,
    /// Instructions the verifier processed (`bpf_prog_info.verified_insns`); its limit is
    /// 1,000,000, the project's budget `VERIFIER_BUDGET`.
    pub verified_insns: u32,
    /// Bytes of JIT-compiled code.
    pub jited_bytes: u32,
    /// Wall time of the load system call, almost all of it verification.
    pub load_time: std::time::Duration,
}

/// Processed instructions each program may cost the verifier: a tenth of the kernel's
/// limit, so toolchain and kernel differences, and features to come, stay far from it.
pub const VERIFIER_BUDGET: u32 = 100_000;

/// Every XDP program: the entry program first, then the stages.
pub fn xdp_programs() -> impl Iterator<Item = &'static str> {
    std::iter::once(names::PROGRAM).chain(lb_common::STAGE_PROGRAMS.iter().map(|(_, n)| *n))
}

/// Every production program: the XDP programs, then the TC program that tunnels DSR
/// health probes.
pub fn production_programs() -> impl Iterator<Item = &'static str> {
    xdp_programs().chain(std::iter::once(names::PROGRAM_PROBE_TUNNEL))
}

/// The two program types the object holds, as `load_measured` uses them.
trait Program {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError>;
    fn program_info(
        &self,
    ) -> std::result::Result<aya::programs::ProgramInfo, aya::programs::ProgramError>;
}

/// Both types have the same two methods under the same names, but no trait of aya's
/// holds them.
macro_rules! program {
    ($($t:ty),*) => {$(
        impl Program for $t {
            fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
                self.load()
            }
            fn program_info(
                &self,
            ) -> std::result::Result<aya::programs::ProgramInfo, aya::programs::ProgramError> {
                self.info()
            }
        }
    )*};
}
program!(Xdp, SchedClassifier);

/// Loads (verifies) `program`, timing it, and reads the kernel's figures of it.
fn load_measured(
    program: &mut impl Program,
    name: &'static str,
    verifier_log_dir: Option<&Path>,
) -> Result<ProgramFigures> {
    let started = std::time::Instant::now();
    crate::verifier::load_checked_with(name, verifier_log_dir, || program.load_program())?;
    let load_time = started.elapsed();
    let info = program.program_info()?;
    Ok(ProgramFigures {
        name,
        verified_insns: info.verified_instruction_count().unwrap_or(0),
        jited_bytes: info.size_jitted(),
        load_time,
    })
}

/// Loads (verifies) the entry program and every stage, and fills the stage table.
fn load_programs(
    ebpf: &mut Ebpf,
    verifier_log_dir: Option<&Path>,
) -> Result<(MapData, Vec<ProgramFigures>)> {
    let mut map = ebpf
        .take_map(names::STAGES)
        .ok_or(DataPlaneError::Missing(names::STAGES))?;
    let mut stages = ProgramArray::try_from(&mut map).map_err(map_err(names::STAGES))?;
    let mut figures = Vec::new();
    for name in xdp_programs() {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(DataPlaneError::Missing(name))?
            .try_into()?;
        figures.push(load_measured(program, name, verifier_log_dir)?);
        // The entry program has a slot too: the new-flow stage hands a SYN back to it.
        let slot = if name == names::PROGRAM {
            Some(lb_common::STAGE_ENTRY)
        } else {
            lb_common::STAGE_PROGRAMS
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(slot, _)| *slot)
        };
        if let Some(slot) = slot {
            stages
                .set(slot, program.fd()?, 0)
                .map_err(map_err(names::STAGES))?;
        }
    }
    let name = names::PROGRAM_PROBE_TUNNEL;
    let tunnel: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DataPlaneError::Missing(name))?
        .try_into()?;
    figures.push(load_measured(tunnel, name, verifier_log_dir)?);
    match map {
        aya::maps::Map::ProgramArray(data) => Ok((data, figures)),
        _ => Err(DataPlaneError::Missing(names::STAGES)),
    }
}

impl DataPlane {
    /// Loads the embedded object: creates (or re-opens pinned) maps and verifies the
    /// program. Nothing is attached yet.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        Self::load_object(EBPF_OBJECT, options)
    }

    /// Like `load`, with another build of the XDP object: the verifier budget test loads
    /// the per-packet-logging build this way, the benchmarks and some tests the tests
    /// crate's build with the measuring programs (`lb_tests::TEST_OBJECT`).
    pub fn load_object(object: &[u8], options: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.verifier_log_level(crate::verifier::log_level());
        let cpus = cpu_count()? as u32;
        let max_backends = options.sizes.max_backends;
        if lb_common::backend_cpu_entries(max_backends, cpus).is_none() {
            return Err(DataPlaneError::TooManyBackendRecords { max_backends, cpus });
        }
        // Before loading: the verifier reads the value from the frozen read-only data.
        loader.override_global(BACKEND_CPU_STRIDE, &max_backends, true);
        let index_bits = lb_common::listener_index_bits(options.sizes.max_listeners);
        loader.override_global(LISTENER_INDEX_BITS, &index_bits, true);
        for (name, entries) in options.sizes.entries(cpus) {
            loader.map_max_entries(name, entries);
        }
        let pins: Vec<(&'static str, PathBuf)> = match &options.map_pin_dir {
            Some(dir) => ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        // Present only when the object was built with per-packet logging.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let (stages, programs) = load_programs(&mut ebpf, options.verifier_log_dir.as_deref())?;
        Self::from_ebpf(ebpf, options.sizes, logger, stages, programs)
    }

    fn from_ebpf(
        mut ebpf: Ebpf,
        sizes: MapSizes,
        logger: Option<XdpLogger>,
        stages: MapData,
        programs: Vec<ProgramFigures>,
    ) -> Result<Self> {
        fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
            ebpf.take_map(name).ok_or(DataPlaneError::Missing(name))
        }
        fn data(map: aya::maps::Map, name: &'static str) -> Result<MapData> {
            match map {
                aya::maps::Map::Array(m) => Ok(m),
                _ => Err(DataPlaneError::Missing(name)),
            }
        }
        let maglev = data(take(&mut ebpf, names::MAGLEV)?, names::MAGLEV)?;
        let flow_filter = MappedArray::flow_filter(
            &data(take(&mut ebpf, names::FLOW_FILTER)?, names::FLOW_FILTER)?,
            sizes.flow_table_size,
        )?;
        crate::flow_filter::size(flow_filter.words(), sizes.flow_table_size);
        let sequence = data(take(&mut ebpf, names::SEQUENCE)?, names::SEQUENCE)?;
        let slots = sizes.table_slots();
        let listeners: HashMap<MapData, ListenerKey, Listener> = take(&mut ebpf, names::LISTENERS)?
            .try_into()
            .map_err(map_err(names::LISTENERS))?;
        let entries = listeners
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(names::LISTENERS))?;
        let index = IndexSlots::new(
            &data(
                take(&mut ebpf, names::LISTENER_INDEX)?,
                names::LISTENER_INDEX,
            )?,
            lb_common::listener_index_slots(sizes.max_listeners),
        )?;
        Ok(Self {
            listeners,
            listener_index: ListenerIndex::new(index, entries),
            backends: take(&mut ebpf, names::BACKENDS)?
                .try_into()
                .map_err(map_err(names::BACKENDS))?,
            maglev: MappedArray::new(names::MAGLEV, &maglev, sizes.maglev_slots)?,
            sequence: MappedArray::new(names::SEQUENCE, &sequence, slots * SEQUENCE_TABLE_SIZE)?,
            table_meta: take(&mut ebpf, names::TABLE_META)?
                .try_into()
                .map_err(map_err(names::TABLE_META))?,
            cursors: take(&mut ebpf, names::CURSORS)?
                .try_into()
                .map_err(map_err(names::CURSORS))?,
            flows: take(&mut ebpf, names::FLOWS)?
                .try_into()
                .map_err(map_err(names::FLOWS))?,
            half_open: take(&mut ebpf, names::HALF_OPEN)?
                .try_into()
                .map_err(map_err(names::HALF_OPEN))?,
            endpoints: take(&mut ebpf, names::ENDPOINTS)?
                .try_into()
                .map_err(map_err(names::ENDPOINTS))?,
            active_flows: take(&mut ebpf, names::ACTIVE_FLOWS)?
                .try_into()
                .map_err(map_err(names::ACTIVE_FLOWS))?,
            listener_stats: take(&mut ebpf, names::LISTENER_STATS)?
                .try_into()
                .map_err(map_err(names::LISTENER_STATS))?,
            backend_cpu: BackendRecords::new(
                &data(take(&mut ebpf, names::BACKEND_CPU)?, names::BACKEND_CPU)?,
                &data(
                    take(&mut ebpf, names::BACKEND_CPU_REPLY)?,
                    names::BACKEND_CPU_REPLY,
                )?,
            )?,
            counters: take(&mut ebpf, names::COUNTERS)?
                .try_into()
                .map_err(map_err(names::COUNTERS))?,
            tx_ports: take(&mut ebpf, names::TX_PORTS)?
                .try_into()
                .map_err(map_err(names::TX_PORTS))?,
            acls: take(&mut ebpf, names::ACLS)?
                .try_into()
                .map_err(map_err(names::ACLS))?,
            affinity: take(&mut ebpf, names::AFFINITY)?
                .try_into()
                .map_err(map_err(names::AFFINITY))?,
            address_filter: take(&mut ebpf, names::ADDRESS_FILTER)?
                .try_into()
                .map_err(map_err(names::ADDRESS_FILTER))?,
            flow_filter,
            v6: Maps6 {
                listeners: take(&mut ebpf, names::LISTENERS6)?
                    .try_into()
                    .map_err(map_err(names::LISTENERS6))?,
                backends: take(&mut ebpf, names::BACKENDS6)?
                    .try_into()
                    .map_err(map_err(names::BACKENDS6))?,
                flows: take(&mut ebpf, names::FLOWS6)?
                    .try_into()
                    .map_err(map_err(names::FLOWS6))?,
                half_open: take(&mut ebpf, names::HALF_OPEN6)?
                    .try_into()
                    .map_err(map_err(names::HALF_OPEN6))?,
                endpoints: take(&mut ebpf, names::ENDPOINTS6)?
                    .try_into()
                    .map_err(map_err(names::ENDPOINTS6))?,
                acls: take(&mut ebpf, names::ACLS6)?
                    .try_into()
                    .map_err(map_err(names::ACLS6))?,
                affinity: take(&mut ebpf, names::AFFINITY6)?
                    .try_into()
                    .map_err(map_err(names::AFFINITY6))?,
                encap_sources: take(&mut ebpf, names::ENCAP_SOURCES6)?
                    .try_into()
                    .map_err(map_err(names::ENCAP_SOURCES6))?,
            },
            ebpf,
            logger,
            sizes,
            stages,
            programs,
            probe_links: BTreeMap::new(),
        })
    }

    /// What the kernel said of each production program when it loaded them.
    pub fn program_figures(&self) -> &[ProgramFigures] {
        &self.programs
    }

    /// The stage table of this load, for pinning (see `pins::pin_stages`).
    pub const fn stages(&self) -> &MapData {
        &self.stages
    }

    /// The program's log reader, when it was built with per-packet logging; the daemon
    /// drains it into its own log.
    pub fn take_logger(&mut self) -> Option<XdpLogger> {
        self.logger.take()
    }

    /// The whole loaded object: its other programs and maps (the benchmark programs of
    /// `lb-ebpf/src/bench.rs`) for benchmarks and tests. The daemon never needs it.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub const fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// Attaches `lb_probe_tunnel` to the egress of each of `interfaces` it is not on yet,
    /// and takes it off interfaces no longer listed; an interface that does not exist (now)
    /// is skipped. It touches only the daemon's marked DSR probes. On kernels with TCX
    /// (6.6 and later) the attachment lives as long as this process; older ones get a
    /// `clsact` qdisc and a filter.
    pub fn attach_probe_tunnel(&mut self, interfaces: &[String]) -> Result<()> {
        use aya::programs::tc::{self, TcAttachType};
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::PROGRAM_PROBE_TUNNEL)
            .ok_or(DataPlaneError::Missing(names::PROGRAM_PROBE_TUNNEL))?
            .try_into()?;
        // Off the interfaces no longer listed, and off those that were removed and made
        // again (another index): their attachment went with the old interface.
        let stale: Vec<String> = self
            .probe_links
            .iter()
            .filter(|(iface, (ifindex, _))| {
                !interfaces.contains(iface) || crate::pins::ifindex(iface).ok() != Some(*ifindex)
            })
            .map(|(iface, _)| iface.clone())
            .collect();
        for iface in stale {
            if let Some((_, link)) = self.probe_links.remove(&iface) {
                // The interface may be gone with its attachment already.
                let _ = program.detach(link);
            }
        }
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|k| k >= aya::util::KernelVersion::new(6, 6, 0));
        for iface in interfaces {
            let Ok(ifindex) = crate::pins::ifindex(iface) else {
                continue;
            };
            if self.probe_links.contains_key(iface) {
                continue;
            }
            if !tcx {
                // Already there is fine: another program may use it too.
                let _ = tc::qdisc_add_clsact(iface);
            }
            let link = program.attach(iface, TcAttachType::Egress)?;
            self.probe_links.insert(iface.clone(), (ifindex, link));
        }
        Ok(())
    }

    /// The XDP program, for attaching or BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DataPlaneError::Missing(names::PROGRAM))?
            .try_into()?)
    }

    pub fn set_listener(&mut self, key: ListenerMapKey, listener: Listener) -> Result<()> {
        match key {
            ListenerMapKey::V4(k) => {
                self.listeners
                    .insert(k, listener, 0)
                    .map_err(map_err(names::LISTENERS))?;
                self.listener_index.set(k, listener);
                Ok(())
            }
            ListenerMapKey::V6(k) => self
                .v6
                .listeners
                .insert(k, listener, 0)
                .map_err(map_err(names::LISTENERS6)),
        }
    }

    /// Writes the outer source of IPv6 listener `id`'s tunnel (before its entry).
    pub fn set_encap_source6(&mut self, id: u32, source: EncapSource6) -> Result<()> {
        self.v6
            .encap_sources
            .set(id, source, 0)
            .map_err(map_err(names::ENCAP_SOURCES6))
    }

    /// What `ENCAP_SOURCES6` holds for listener `id`.
    pub fn encap_source6(&self, id: u32) -> Result<EncapSource6> {
        self.v6
            .encap_sources
            .get(&id, 0)
            .map_err(map_err(names::ENCAP_SOURCES6))
    }

    /// Removes a listener or VIP marker; a key that is not there is not an error.
    pub fn remove_listener(&mut self, key: &ListenerMapKey) -> Result<()> {
        let (removed, name) = match key {
            ListenerMapKey::V4(k) => {
                // Out of the index first: until `LISTENERS` loses it too, its packets are
                // asked of nobody rather than found in a stale slot.
                self.listener_index.remove(k);
                (self.listeners.remove(k), names::LISTENERS)
            }
            ListenerMapKey::V6(k) => (self.v6.listeners.remove(k), names::LISTENERS6),
        };
        match removed {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    pub fn listener(&self, key: &ListenerMapKey) -> Result<Option<Listener>> {
        let (found, name) = match key {
            ListenerMapKey::V4(k) => (self.listeners.get(k, 0), names::LISTENERS),
            ListenerMapKey::V6(k) => (self.v6.listeners.get(k, 0), names::LISTENERS6),
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Every listener and VIP marker entry of both families.
    pub fn listener_entries(&self) -> Result<Vec<(ListenerMapKey, Listener)>> {
        let v4 = self
            .listeners
            .iter()
            .map(|r| r.map(|(k, v)| (ListenerMapKey::V4(k), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(names::LISTENERS))?;
        let v6 = self
            .v6
            .listeners
            .iter()
            .map(|r| r.map(|(k, v)| (ListenerMapKey::V6(k), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(names::LISTENERS6))?;
        Ok(v4.into_iter().chain(v6).collect())
    }

    /// Writes an IPv6 backend's address (before its entry in `BACKENDS`).
    pub fn set_backend_address6(&mut self, id: u32, address: Ipv6Addr) -> Result<()> {
        let value = BackendAddr6 {
            addr: lb_common::family::addr6(address.octets()),
        };
        self.v6
            .backends
            .set(id, value, 0)
            .map_err(map_err(names::BACKENDS6))
    }

    /// The address `BACKENDS6` holds for backend `id` (`::` for an IPv4 one).
    pub fn backend_address6(&self, id: u32) -> Result<Ipv6Addr> {
        let value = self
            .v6
            .backends
            .get(&id, 0)
            .map_err(map_err(names::BACKENDS6))?;
        Ok(crate::family::ipv6_of(value.addr))
    }

    pub fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends
            .set(id, backend, 0)
            .map_err(map_err(names::BACKENDS))
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        self.backends.get(&id, 0).map_err(map_err(names::BACKENDS))
    }

    fn check_slot(&self, slot: u32) -> Result<()> {
        let limit = self.sizes.table_slots();
        if slot >= limit {
            return Err(DataPlaneError::OutOfRange {
                what: "table slot",
                index: slot,
                limit,
            });
        }
        Ok(())
    }

    /// Writes a table slot: the Maglev table (where `meta` places it), the sequence, then
    /// the metadata. Neither the slot nor the Maglev place may be live for any listener
    /// (the caller flips `Listener::table` after).
    pub fn write_table(
        &mut self,
        slot: u32,
        maglev: &[u32],
        sequence: &[u32],
        meta: TableMeta,
    ) -> Result<()> {
        self.check_slot(slot)?;
        assert_eq!(maglev.len(), meta.maglev_size as usize, "Maglev table size");
        assert!(
            sequence.len() <= SEQUENCE_TABLE_SIZE as usize,
            "sequence too long"
        );
        let m = self.maglev_range(&meta)?;
        let dst = &mut self.maglev.slice_mut()[m];
        // Only the slots that differ: a small change touches few cache lines.
        for (d, s) in dst.iter_mut().zip(maglev) {
            if d != s {
                *d = *s;
            }
        }
        let s = slot as usize * SEQUENCE_TABLE_SIZE as usize;
        self.sequence.slice_mut()[s..s + sequence.len()].copy_from_slice(sequence);
        self.table_meta
            .set(slot, meta, 0)
            .map_err(map_err(names::TABLE_META))
    }

    /// The Maglev table of a slot, as the data plane sees it.
    pub fn maglev_table(&self, slot: u32) -> Result<&[u32]> {
        let m = self.maglev_range(&self.table_meta(slot)?)?;
        Ok(&self.maglev.slice()[m])
    }

    /// The stretch of `MAGLEV` a slot's metadata places its table in.
    fn maglev_range(&self, meta: &TableMeta) -> Result<std::ops::Range<usize>> {
        let end = u64::from(meta.maglev_base) + u64::from(meta.maglev_size);
        if end > u64::from(self.sizes.maglev_slots) {
            return Err(DataPlaneError::OutOfRange {
                what: "Maglev table end",
                index: end.min(u64::from(u32::MAX)) as u32,
                limit: self.sizes.maglev_slots,
            });
        }
        Ok(meta.maglev_base as usize..end as usize)
    }

    /// Backend id at `index` of the whole `MAGLEV` array, as the XDP program reads it
    /// (`NO_BACKEND` past its end).
    pub fn maglev_entry(&self, index: u32) -> u32 {
        self.maglev
            .slice()
            .get(index as usize)
            .copied()
            .unwrap_or(lb_common::NO_BACKEND)
    }

    /// Backend id at `index` of the whole `SEQUENCE` array (`NO_BACKEND` past its end).
    pub fn sequence_entry(&self, index: u32) -> u32 {
        self.sequence
            .slice()
            .get(index as usize)
            .copied()
            .unwrap_or(lb_common::NO_BACKEND)
    }

    /// The sequence of a slot (only the used part).
    pub fn sequence(&self, slot: u32) -> Result<&[u32]> {
        let meta = self.table_meta(slot)?;
        let s = slot as usize * SEQUENCE_TABLE_SIZE as usize;
        Ok(&self.sequence.slice()[s..s + meta.sequence_len as usize])
    }

    pub fn table_meta(&self, slot: u32) -> Result<TableMeta> {
        self.check_slot(slot)?;
        self.table_meta
            .get(&slot, 0)
            .map_err(map_err(names::TABLE_META))
    }

    /// Makes `ifindex` a redirect target of the program.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataPlaneError::TxPort(e.to_string()))
    }

    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        match self.tx_ports.remove(ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::TX_PORTS)(e)),
        }
    }

    /// Every verdict/event counter, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out = BTreeMap::new();
        for r in Reason::ALL {
            let v = self
                .counters
                .get(&(r as u32), 0)
                .map_err(map_err(names::COUNTERS))?;
            out.insert(r.name(), v.iter().sum());
        }
        debug_assert_eq!(out.len(), REASON_COUNT as usize);
        Ok(out)
    }

    pub fn counter(&self, reason: Reason) -> Result<u64> {
        let v = self
            .counters
            .get(&(reason as u32), 0)
            .map_err(map_err(names::COUNTERS))?;
        Ok(v.iter().sum())
    }

    pub fn listener_stats(&self, id: u32) -> Result<TrafficCounters> {
        sum_counters(&self.listener_stats, id, names::LISTENER_STATS)
    }

    pub fn backend_stats(&self, id: u32) -> Result<TrafficCounters> {
        self.backend_cpu.totals(id)
    }

    /// Zeroes a backend's counters when its id is given to a new backend (and its cached
    /// next hops, which the data plane then looks up afresh).
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        self.backend_cpu.reset(id)
    }

    /// Each CPU's round-robin cursor of a listener.
    pub fn cursors(&self, listener: u32) -> Result<Vec<u32>> {
        let v = self
            .cursors
            .get(&listener, 0)
            .map_err(map_err(names::CURSORS))?;
        Ok(v.iter().copied().collect())
    }

    /// Puts every CPU's round-robin cursor of a listener back to the start of its
    /// sequence (a new listener starts where the sequence starts).
    pub fn reset_cursor(&mut self, listener: u32) -> Result<()> {
        let zeros = per_cpu_zeros(names::CURSORS)?;
        self.cursors
            .set(listener, zeros, 0)
            .map_err(map_err(names::CURSORS))
    }

    pub fn active_flows(&self, id: u32) -> Result<u32> {
        self.active_flows
            .get(&id, 0)
            .map_err(map_err(names::ACTIVE_FLOWS))
    }

    pub fn set_active_flows(&mut self, id: u32, value: u32) -> Result<()> {
        self.active_flows
            .set(id, value, 0)
            .map_err(map_err(names::ACTIVE_FLOWS))
    }

    /// A flow's entry, established (`FLOWS`) or half-open (`HALF_OPEN`).
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => match self.half_open.get(key, 0) {
                Ok(v) => Ok(Some(v)),
                Err(aya::maps::MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(map_err(names::HALF_OPEN)(e)),
            },
            Err(e) => Err(map_err(names::FLOWS)(e)),
        }
    }

    /// An IPv6 flow's entry, established (`FLOWS6`) or half-open (`HALF_OPEN6`).
    pub fn flow6(&self, key: &FlowKey6) -> Result<Option<Flow>> {
        match self.v6.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => match self.v6.half_open.get(key, 0) {
                Ok(v) => Ok(Some(v)),
                Err(aya::maps::MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(map_err(names::HALF_OPEN6)(e)),
            },
            Err(e) => Err(map_err(names::FLOWS6)(e)),
        }
    }

    /// Rewrites a flow's entry in the table that holds it (`FLOWS` for a new key).
    pub fn set_flow(&mut self, key: FlowKey, flow: Flow) -> Result<()> {
        if self.half_open.get(&key, 0).is_ok() {
            return self
                .half_open
                .insert(key, flow, 0)
                .map_err(map_err(names::HALF_OPEN));
        }
        self.flows
            .insert(key, flow, 0)
            .map_err(map_err(names::FLOWS))
    }

    /// Every flow entry of both families, established and half-open, read in batches
    /// (`flow_walk`). Entries evicted during the walk may be missing.
    pub fn flows(&self) -> Result<Vec<(FlowMapKey, Flow)>> {
        let mut all = walk(&[&self.flows, &self.half_open], FlowMapKey::V4)?;
        all.extend(walk(&[&self.v6.flows, &self.v6.half_open], FlowMapKey::V6)?);
        Ok(all)
    }

    /// The entries of established flows of both families (`FLOWS`, `FLOWS6`): what the
    /// sweep counts.
    pub fn established_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>> {
        let mut all = walk(&[&self.flows], FlowMapKey::V4)?;
        all.extend(walk(&[&self.v6.flows], FlowMapKey::V6)?);
        Ok(all)
    }

    /// The flow filter's words (`lb_common::flow_filter`).
    pub fn flow_filter(&self) -> &[std::sync::atomic::AtomicU64] {
        self.flow_filter.words()
    }

    /// The entries of established flows, read the way a sweep reads them: the flow
    /// filter's idle bitmap is rebuilt from their keys (both families') and becomes the
    /// one the data plane reads.
    pub fn sweep_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>> {
        let rebuild = crate::flow_filter::Rebuild::start(self.flow_filter());
        let flows = self.established_flows()?;
        if let Some(rebuild) = rebuild {
            for (key, _) in &flows {
                match key {
                    FlowMapKey::V4(key) => rebuild.add(key),
                    FlowMapKey::V6(key) => rebuild.add(key),
                }
            }
            rebuild.finish();
        }
        Ok(flows)
    }

    /// Writes one word of the VIP filter.
    pub fn set_address_filter_word(&mut self, index: u32, word: u64) -> Result<()> {
        self.address_filter
            .set(index, word, 0)
            .map_err(map_err(names::ADDRESS_FILTER))
    }

    /// The VIP filter's words.
    pub fn address_filter(&self) -> Result<Vec<u64>> {
        self.address_filter
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(names::ADDRESS_FILTER))
    }

    /// Adds `addr/prefix_len` to access list `acl`, in its family's trie.
    pub fn add_acl_entry(&mut self, acl: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self
                .acls
                .insert(&acl_key(acl, a, prefix_len), 1, 0)
                .map_err(map_err(names::ACLS)),
            IpAddr::V6(a) => self
                .v6
                .acls
                .insert(&acl_key6(acl, a, prefix_len), 1, 0)
                .map_err(map_err(names::ACLS6)),
        }
    }

    pub fn remove_acl_entry(&mut self, acl: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let (removed, name) = match addr {
            IpAddr::V4(a) => (self.acls.remove(&acl_key(acl, a, prefix_len)), names::ACLS),
            IpAddr::V6(a) => (
                self.v6.acls.remove(&acl_key6(acl, a, prefix_len)),
                names::ACLS6,
            ),
        };
        match removed {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Whether `addr` matches an entry of access list `acl` (longest prefix).
    pub fn acl_matches(&self, acl: u32, addr: IpAddr) -> Result<bool> {
        let (found, name) = match addr {
            IpAddr::V4(a) => (self.acls.get(&acl_key(acl, a, 32), 0), names::ACLS),
            IpAddr::V6(a) => (self.v6.acls.get(&acl_key6(acl, a, 128), 0), names::ACLS6),
        };
        match found {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Every (acl, prefix) entry of both families.
    pub fn acl_entries(&self) -> Vec<(u32, IpAddr, u8)> {
        let v4 = self.acls.keys().filter_map(Result::ok).map(|k| {
            let d = k.data();
            (
                d.acl,
                IpAddr::V4(crate::family::ipv4_of(d.addr)),
                (k.prefix_len() - acl_prefix_len(0)) as u8,
            )
        });
        let v6 = self.v6.acls.keys().filter_map(Result::ok).map(|k| {
            let d = k.data();
            (
                d.acl,
                IpAddr::V6(crate::family::ipv6_of(d.addr)),
                (k.prefix_len() - acl_prefix_len6(0)) as u8,
            )
        });
        v4.chain(v6).collect()
    }

    pub fn affinity(&self, key: &AffinityKey) -> Result<Option<Affinity>> {
        match self.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::AFFINITY)(e)),
        }
    }

    pub fn set_affinity(&mut self, key: AffinityKey, value: Affinity) -> Result<()> {
        self.affinity
            .insert(key, value, 0)
            .map_err(map_err(names::AFFINITY))
    }

    /// The affinity entry of an IPv6 client.
    pub fn affinity6(&self, key: &AffinityKey6) -> Result<Option<Affinity>> {
        match self.v6.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::AFFINITY6)(e)),
        }
    }

    /// Writes the listeners a backend endpoint serves (one RCU swap of the whole value).
    pub fn set_endpoint(&mut self, key: EndpointMapKey, value: EndpointEntry) -> Result<()> {
        match (key, value) {
            (EndpointMapKey::V4(k), EndpointEntry::V4(v)) => self
                .endpoints
                .insert(k, v, 0)
                .map_err(map_err(names::ENDPOINTS)),
            (EndpointMapKey::V6(k), EndpointEntry::V6(v)) => self
                .v6
                .endpoints
                .insert(k, v, 0)
                .map_err(map_err(names::ENDPOINTS6)),
            // `EndpointEntry::of` makes entries of their key's family only.
            _ => Err(DataPlaneError::FamilyMismatch(names::ENDPOINTS)),
        }
    }

    pub fn remove_endpoint(&mut self, key: &EndpointMapKey) -> Result<()> {
        let (removed, name) = match key {
            EndpointMapKey::V4(k) => (self.endpoints.remove(k), names::ENDPOINTS),
            EndpointMapKey::V6(k) => (self.v6.endpoints.remove(k), names::ENDPOINTS6),
        };
        match removed {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// The listeners a backend endpoint serves.
    pub fn endpoint(&self, key: &EndpointMapKey) -> Result<Option<EndpointEntry>> {
        let found = match key {
            EndpointMapKey::V4(k) => self.endpoints.get(k, 0).map(EndpointEntry::V4),
            EndpointMapKey::V6(k) => self.v6.endpoints.get(k, 0).map(EndpointEntry::V6),
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::ENDPOINTS)(e)),
        }
    }

    /// Every backend endpoint entry of both families (adoption after a restart).
    pub fn endpoint_entries(&self) -> Result<Vec<(EndpointMapKey, EndpointEntry)>> {
        let v4 = self
            .endpoints
            .iter()
            .map(|r| r.map(|(k, v)| (EndpointMapKey::V4(k), EndpointEntry::V4(v))))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err(names::ENDPOINTS))?;
        let v6 = self
            .v6
            .endpoints
            .iter()
            .map(|r| r.map(|(k, v)| (EndpointMapKey::V6(k), EndpointEntry::V6(v))))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err(names::ENDPOINTS6))?;
        Ok(v4.into_iter().chain(v6).collect())
    }
}

fn cpu_count() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, source)| DataPlaneError::Io {
        name: "counting CPUs",
        source,
    })
}

/// Every entry of `tables`, keys wrapped by `wrap`.
fn walk<K: aya::Pod + Default>(
    tables: &[&HashMap<MapData, K, Flow>],
    wrap: impl Fn(K) -> FlowMapKey,
) -> Result<Vec<(FlowMapKey, Flow)>> {
    let mut all = Vec::new();
    for table in tables {
        crate::flow_walk::for_each_flow(table, |k, v| all.push((wrap(k), v))).map_err(
            |source| DataPlaneError::Io {
                name: "reading the flow table (BPF_MAP_LOOKUP_BATCH)",
                source,
            },
        )?;
    }
    Ok(all)
}

fn acl_key(acl: u32, addr: Ipv4Addr, prefix_len: u8) -> LpmKey<AclKey> {
    LpmKey::new(
        acl_prefix_len(prefix_len),
        AclKey {
            acl,
            addr: crate::family::ipv4_word(addr),
        },
    )
}

fn acl_key6(acl: u32, addr: Ipv6Addr, prefix_len: u8) -> LpmKey<AclKey6> {
    LpmKey::new(
        acl_prefix_len6(prefix_len),
        AclKey6 {
            acl,
            addr: lb_common::family::addr6(addr.octets()),
        },
    )
}

fn per_cpu_zeros<T: aya::Pod + Default + Clone>(
    name: &'static str,
) -> Result<aya::maps::PerCpuValues<T>> {
    let io = |source| DataPlaneError::Io { name, source };
    let ncpu = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
    aya::maps::PerCpuValues::try_from(vec![T::default(); ncpu]).map_err(io)
}

fn sum_counters(
    map: &PerCpuArray<MapData, TrafficCounters>,
    id: u32,
    name: &'static str,
) -> Result<TrafficCounters> {
    let per_cpu = map.get(&id, 0).map_err(map_err(name))?;
    let mut total = TrafficCounters::default();
    for c in per_cpu.iter() {
        total.add(c);
    }
    Ok(total)
}

/// The traffic counters, read: the daemon's own maps (`DataPlane`, under the controller's
/// lock) or handles of their own on the pins (`CounterReader`, without it).
pub trait ReadCounters {
    /// Every verdict/event counter, summed over CPUs.
    fn all_counters(&self) -> Result<BTreeMap<&'static str, u64>>;
    fn one_counter(&self, reason: Reason) -> Result<u64>;
    fn listener_totals(&self, id: u32) -> Result<TrafficCounters>;
    fn backend_totals(&self, id: u32) -> Result<TrafficCounters>;
}

impl ReadCounters for DataPlane {
    fn all_counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        self.counters()
    }
    fn one_counter(&self, reason: Reason) -> Result<u64> {
        self.counter(reason)
    }
    fn listener_totals(&self, id: u32) -> Result<TrafficCounters> {
        self.listener_stats(id)
    }
    fn backend_totals(&self, id: u32) -> Result<TrafficCounters> {
        self.backend_stats(id)
    }
}

/// Everything the controller reads from and writes to a loaded data plane: the maps
/// (`MapWriter` for the reconciler's operations, `ReadCounters` for the counters) and the
/// few reads and writes around them. `DataPlane` implements it over the kernel's maps; the
/// controller's unit tests over memory, so start, adoption, changes, drains, the sweep and
/// status run without a kernel.
pub trait DataPlaneAccess: MapWriter + ReadCounters {
    /// The decision's tables as one CPU's program sees them (`explain`), per family.
    type Tables<'a>: crate::explain::ExplainTables<Family = lb_common::V4>
    where
        Self: 'a;
    type Tables6<'a>: crate::explain::ExplainTables<Family = lb_common::V6>
    where
        Self: 'a;

    /// Every listener entry and VIP marker (adoption, the sweep's timeouts).
    fn listener_entries(&self) -> Result<Vec<(ListenerMapKey, Listener)>>;
    /// The backend entry of an id below `max_backends` (adoption).
    fn backend(&self, id: u32) -> Result<Backend>;
    /// The address of IPv6 backend `id` (`BACKENDS6`).
    fn backend_address6(&self, id: u32) -> Result<Ipv6Addr>;
    /// A table slot's metadata (adoption: where live Maglev tables lie).
    fn table_meta(&self, slot: u32) -> Result<TableMeta>;
    /// Every (access list, address, prefix length) entry (adoption).
    fn acl_entries(&self) -> Vec<(u32, IpAddr, u8)>;
    /// The address filter's words, VIPs and refused sources (adoption).
    fn address_filter(&self) -> Result<Vec<u64>>;
    /// Every backend endpoint with the listeners it serves (adoption).
    fn endpoint_entries(&self) -> Result<Vec<(EndpointMapKey, EndpointEntry)>>;
    /// The entries of established flows of both families: what the sweep counts.
    fn established_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>>;
    /// `established_flows` for a sweep: also rebuilds the flow filter from the keys.
    fn sweep_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>>;
    /// The active-flow count `wlc` weighs a backend by.
    fn set_active_flows(&mut self, id: u32, value: u32) -> Result<()>;
    /// Makes `ifindex` a redirect target of the program.
    fn add_tx_port(&mut self, ifindex: u32) -> Result<()>;
    fn remove_tx_port(&mut self, ifindex: u32) -> Result<()>;
    /// The decision's tables, one per CPU, CPU 0 first.
    fn decision_tables(&self) -> Result<Vec<Self::Tables<'_>>>;
    /// The same for IPv6.
    fn decision_tables6(&self) -> Result<Vec<Self::Tables6<'_>>>;
}

impl DataPlaneAccess for DataPlane {
    type Tables<'a> = crate::explain::LiveTables<'a, lb_common::V4>;
    type Tables6<'a> = crate::explain::LiveTables<'a, lb_common::V6>;

    fn listener_entries(&self) -> Result<Vec<(ListenerMapKey, Listener)>> {
        Self::listener_entries(self)
    }
    fn backend(&self, id: u32) -> Result<Backend> {
        Self::backend(self, id)
    }
    fn backend_address6(&self, id: u32) -> Result<Ipv6Addr> {
        Self::backend_address6(self, id)
    }
    fn table_meta(&self, slot: u32) -> Result<TableMeta> {
        Self::table_meta(self, slot)
    }
    fn acl_entries(&self) -> Vec<(u32, IpAddr, u8)> {
        Self::acl_entries(self)
    }
    fn address_filter(&self) -> Result<Vec<u64>> {
        Self::address_filter(self)
    }
    fn endpoint_entries(&self) -> Result<Vec<(EndpointMapKey, EndpointEntry)>> {
        Self::endpoint_entries(self)
    }
    fn established_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>> {
        Self::established_flows(self)
    }
    fn sweep_flows(&self) -> Result<Vec<(FlowMapKey, Flow)>> {
        Self::sweep_flows(self)
    }
    fn set_active_flows(&mut self, id: u32, value: u32) -> Result<()> {
        Self::set_active_flows(self, id, value)
    }
    fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        Self::add_tx_port(self, ifindex)
    }
    fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        Self::remove_tx_port(self, ifindex)
    }
    fn decision_tables(&self) -> Result<Vec<Self::Tables<'_>>> {
        Ok((0..cpu_count()?)
            .map(|cpu| crate::explain::LiveTables::new(self, cpu))
            .collect())
    }
    fn decision_tables6(&self) -> Result<Vec<Self::Tables6<'_>>> {
        Ok((0..cpu_count()?)
            .map(|cpu| crate::explain::LiveTables::new(self, cpu))
            .collect())
    }
}

/// Read-only handles on the counter maps, opened from their pins: /metrics and the status
/// page read one per backend through them after the controller's lock is released.
pub struct CounterReader {
    listener_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_cpu: BackendRecords,
    counters: PerCpuArray<MapData, u64>,
}

impl CounterReader {
    /// Opens the counter maps pinned in `maps_dir` (`Layout::maps`).
    pub fn open(maps_dir: &Path) -> Result<Self> {
        fn per_cpu<V: aya::Pod>(dir: &Path, name: &'static str) -> Result<PerCpuArray<MapData, V>> {
            let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(map_err(name))
        }
        Ok(Self {
            listener_stats: per_cpu(maps_dir, names::LISTENER_STATS)?,
            backend_cpu: BackendRecords::new(
                &MapData::from_pin(maps_dir.join(names::BACKEND_CPU))
                    .map_err(map_err(names::BACKEND_CPU))?,
                &MapData::from_pin(maps_dir.join(names::BACKEND_CPU_REPLY))
                    .map_err(map_err(names::BACKEND_CPU_REPLY))?,
            )?,
            counters: per_cpu(maps_dir, names::COUNTERS)?,
        })
    }
}

impl ReadCounters for CounterReader {
    fn all_counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out = BTreeMap::new();
        for r in Reason::ALL {
            out.insert(r.name(), self.one_counter(r)?);
        }
        Ok(out)
    }
    fn one_counter(&self, reason: Reason) -> Result<u64> {
        let v = self
            .counters
            .get(&(reason as u32), 0)
            .map_err(map_err(names::COUNTERS))?;
        Ok(v.iter().sum())
    }
    fn listener_totals(&self, id: u32) -> Result<TrafficCounters> {
        sum_counters(&self.listener_stats, id, names::LISTENER_STATS)
    }
    fn backend_totals(&self, id: u32) -> Result<TrafficCounters> {
        self.backend_cpu.totals(id)
    }
}

/// The pin folder of an instance's maps under a bpffs mount.
pub fn map_pin_dir(bpffs: &Path, instance: &str) -> PathBuf {
    bpffs.join(instance).join("maps")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The shipped object holds the production programs and nothing else: the measuring
    /// and test-helper programs and their `BENCH_*` maps only exist in the tests crate's
    /// build (lb-ebpf's `testing` feature). Parsed, not loaded: no privileges needed.
    #[test]
    fn the_shipped_object_holds_only_production_programs() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        assert_eq!(programs, production_programs().collect::<BTreeSet<_>>());
        let bench_maps: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| name.starts_with("BENCH_"))
            .collect();
        assert!(
            bench_maps.is_empty(),
            "measuring maps shipped: {bench_maps:?}"
        );
        for name in ALL_MAPS.iter().chain([&names::STAGES]) {
            assert!(object.maps.contains_key(*name), "no map {name}");
        }
    }
}
