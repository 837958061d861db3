//! Every map of the data plane, one comment each. Sizes here are defaults; the controller
//! sets the real ones from the config (`flow_table_size`, `max_listeners`, `max_backends`)
//! before loading.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    helpers::generated::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    ADDRESS_FILTER_WORDS, AclKey, Affinity, AffinityKey, Backend, BackendCpu, BackendCpuReply,
    COUNTER_SLOTS, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_LISTENERS, Endpoint,
    EndpointKey, Flow, FlowKey, IdPair, Listener, ListenerKey, ListenerSlot, MAGLEV_TABLE_SIZE,
    MAX_ACL_ENTRIES, MAX_INTERFACES, PendingFlow, SEQUENCE_TABLE_SIZE, STAGE_SLOTS, SlotAnswer,
    TABLES_PER_LISTENER, TableMeta, TooBig, TrafficCounters, backend_cpu_index,
    flow_filter::flow_filter_entries, half_open_table_size, id_pair_entries, listener_index_bits,
    listener_index_slots, listener_scratch_slot, listener_slot, slot_answer, slot_record,
};
use lb_common::{
    AclKey6, AffinityKey6, BackendAddr6, Encap6, EncapSource6, Endpoint6, EndpointKey6, FlowKey6,
    ListenerKey6, NextHop6, PendingFlow6, TooBig6,
};

use crate::words;

const TABLE_SLOTS: u32 = DEFAULT_MAX_LISTENERS * TABLES_PER_LISTENER;

/// (VIP, port, protocol) → listener; also (VIP, 0, 0) VIP markers. Not preallocated, so
/// the controller's whole-value updates are RCU swaps that a packet sees atomically.
#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, Listener> =
    HashMap::with_max_entries(2 * DEFAULT_MAX_LISTENERS, BPF_F_NO_PREALLOC);

/// IPv4 listener keys direct-mapped to slots holding their listener (`ListenerSlot`):
/// one array read instead of `LISTENERS`' hash and bucket walk. Mmapable: the controller
/// writes a slot's spare record and then its word in place (see `ListenerSlot`). The size
/// here is a placeholder; the controller sets it from `max_listeners`.
#[map(name = "LISTENER_INDEX")]
pub static LISTENER_INDEX: Array<ListenerSlot> =
    Array::with_max_entries(listener_index_slots(DEFAULT_MAX_LISTENERS), BPF_F_MMAPABLE);

/// log2 of `LISTENER_INDEX`'s slots, set by the loader like `BACKEND_CPU_STRIDE`.
#[unsafe(no_mangle)]
static LISTENER_INDEX_BITS: u32 = listener_index_bits(DEFAULT_MAX_LISTENERS);

/// The listener of an IPv4 key: from its slot of `LISTENER_INDEX`, or, when several keys
/// share the slot, from `LISTENERS`, copied into this CPU's scratch slot. Either way a
/// record of `LISTENER_INDEX`, so the verifier follows one kind of pointer from here on.
#[inline(always)]
pub fn listener(key: &ListenerKey) -> Option<*mut Listener> {
    // SAFETY: a read of a global the loader wrote before loading (see `backend_cpu`).
    let bits = unsafe { core::ptr::read_volatile(&raw const LISTENER_INDEX_BITS) };
    let slot = LISTENER_INDEX.get_ptr_mut(listener_slot(key, bits))?;
    // SAFETY: a map value pointer, valid for the program run. The word is one aligned
    // 64-bit load (the controller stores it whole); the record's address depends on it,
    // so the record's loads follow it.
    let word = unsafe { core::ptr::read_volatile(&raw const (*slot).word) };
    let (slot, word) = match slot_answer(word, key) {
        SlotAnswer::Record(_) => (slot, word),
        SlotAnswer::Absent => return None,
        SlotAnswer::Ask => {
            let found = LISTENERS.get_ptr(key)?;
            // SAFETY: helper without arguments; the program does not migrate while it runs.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            let scratch = LISTENER_INDEX.get_ptr_mut(listener_scratch_slot(bits, cpu))?;
            // SAFETY: map value pointers; the scratch slot is this CPU's alone, and XDP
            // programs do not nest on a CPU. Its word stays 0: the record is `first`.
            unsafe {
                words::copy(&raw mut (*scratch).first, found);
                (
                    scratch,
                    core::ptr::read_volatile(&raw const (*scratch).word),
                )
            }
        }
    };
    let offset = slot_record(word);
    // SAFETY: the offset of `first` or `second` inside the slot. The controller does not
    // rewrite a record a packet may be reading: it waits for an RCU grace period after the
    // word stops naming it.
    Some(unsafe { slot.cast::<u8>().add(offset).cast::<Listener>() })
}

/// Backend id → address, port, health, weight, generation.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Weighted Maglev tables, `MAGLEV_TABLE_SIZE` backend ids per table slot, two ids per
/// element (`IdPair`). Mmapable: the controller writes a table with a memory copy, not one
/// syscall per slot.
#[map(name = "MAGLEV")]
pub static MAGLEV: Array<IdPair> = Array::with_max_entries(
    id_pair_entries(TABLE_SLOTS * MAGLEV_TABLE_SIZE),
    BPF_F_MMAPABLE,
);

/// Round-robin sequences (wrr) or backend lists (rr, wlc), `SEQUENCE_TABLE_SIZE` per slot,
/// stored like `MAGLEV`.
#[map(name = "SEQUENCE")]
pub static SEQUENCE: Array<IdPair> = Array::with_max_entries(
    id_pair_entries(TABLE_SLOTS * SEQUENCE_TABLE_SIZE),
    BPF_F_MMAPABLE,
);

/// Per table slot: how many backends take new flows, how long the sequence is.
#[map(name = "TABLE_META")]
pub static TABLE_META: Array<TableMeta> = Array::with_max_entries(TABLE_SLOTS, 0);

/// Per listener and CPU: position in the round-robin sequence. Per-CPU so the hot path
/// never writes a shared cache line.
#[map(name = "CURSORS")]
pub static CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

/// Client-side 5-tuple → backend. LRU: a full table evicts the least recently used flow.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);

/// Backend endpoint (address, port, protocol) → the listeners it serves: how a backend's
/// reply finds its flow (`flow::reply_flow`). Written by the controller with the backends;
/// not preallocated, so a whole-value update is an RCU swap a packet sees atomically.
#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> =
    HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Half-open flows (a SYN, no ACK from the client yet), keyed and valued like `FLOWS`, in
/// a table of their own: a SYN flood evicts half-open entries, never established ones.
/// The client's first ACK moves its flow to `FLOWS`. One LRU list per CPU, like `FLOWS`:
/// a SYN's insert takes a free entry from its CPU's own list. The shared list also moves
/// entries between per-CPU and global lists (128 at a time, under a global lock): the
/// bench measured 35-45 ns more per new flow with it, of about 550. A flood that RSS
/// spreads over the CPUs ages each CPU's share as it aged the whole table
/// (docs/packet-policy.md).
#[map(name = "HALF_OPEN")]
pub static HALF_OPEN: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(
    half_open_table_size(DEFAULT_FLOW_TABLE_SIZE),
    BPF_F_NO_COMMON_LRU,
);

/// Backend id → active flows, for `wlc`: atomic adds, the only shared counter on the hot
/// path. LRU eviction decrements nothing, so the controller's sweep rewrites these.
#[map(name = "ACTIVE_FLOWS")]
pub static ACTIVE_FLOWS: Array<u32> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Per listener and CPU: packets, bytes, new flows, drops.
#[map(name = "LISTENER_STATS")]
pub static LISTENER_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

/// Per backend and CPU, one `BackendCpu` record each (`backend_cpu`): the next hop the
/// CPU cached and the backend's client → backend counters. A plain array holding every
/// CPU's records, not a per-CPU map: its values start on a page (mmapable), so each
/// 64-byte record is a whole cache line, and reaching one is an index computation instead
/// of the per-CPU map's pointer table. No two CPUs write a line. The controller sizes it
/// `max_backends` times the possible CPUs and reads the counters through its mapping. The
/// size here is a placeholder.
#[map(name = "BACKEND_CPU")]
pub static BACKEND_CPU: Array<BackendCpu> =
    Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

/// The backend's other counters (`BackendCpuReply`: replies, pickups, reselections),
/// indexed and sized like `BACKEND_CPU` (`backend_cpu_reply`).
#[map(name = "BACKEND_CPU_REPLY")]
pub static BACKEND_CPU_REPLY: Array<BackendCpuReply> =
    Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

/// `BACKEND_CPU`'s records per CPU (`max_backends`), set by the loader before the
/// verifier sees the program: a read-only global, so the verifier knows its value.
#[unsafe(no_mangle)]
static BACKEND_CPU_STRIDE: u32 = DEFAULT_MAX_BACKENDS;

/// This CPU's record of backend `id`.
#[inline(always)]
pub fn backend_cpu(id: u32) -> Option<*mut BackendCpu> {
    BACKEND_CPU.get_ptr_mut(this_cpu_index(id))
}

/// This CPU's `BACKEND_CPU_REPLY` record of backend `id`.
#[inline(always)]
pub fn backend_cpu_reply(id: u32) -> Option<*mut BackendCpuReply> {
    BACKEND_CPU_REPLY.get_ptr_mut(this_cpu_index(id))
}

/// The index of this CPU's records of backend `id` (`backend_cpu_index`).
#[inline(always)]
fn this_cpu_index(id: u32) -> u32 {
    // SAFETY: a read of a global the loader wrote before loading; volatile so the
    // compiler does not fold in the default.
    let stride = unsafe { core::ptr::read_volatile(&raw const BACKEND_CPU_STRIDE) };
    // SAFETY: helper without arguments; the program does not migrate while it runs.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    backend_cpu_index(id, cpu, stride)
}

/// Starts loading this CPU's record of backend `id`, the value unused. A packet that found
/// its flow is forwarded to the flow's backend: issued as soon as the id is known, the
/// record's cache miss overlaps the `BACKENDS` one instead of following it.
#[inline(always)]
pub fn warm_backend_cpu(id: u32) {
    if let Some(record) = backend_cpu(id) {
        warm(record);
    }
}

/// Starts loading a record already looked up (see `warm_backend_cpu`).
#[inline(always)]
pub fn warm(record: *mut BackendCpu) {
    // SAFETY: a pointer from a successful lookup; volatile, so the load is kept.
    unsafe { core::ptr::read_volatile(&raw const (*record).hop.stamp_ns) };
}

/// Per `Reason` and CPU: every verdict with its reason, and a few events.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// ifindex → ifindex of every interface the program is attached to, for redirects.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

/// (access list id, source prefix) → 1: the sources each listener's access list names.
/// Which keys `FLOWS` may hold (`lb_common::flow_filter`): a header line and two bitmaps.
/// Mmapable: the controller's sweep rebuilds a bitmap in memory, with no syscall per word.
#[map(name = "FLOW_FILTER")]
pub static FLOW_FILTER: Array<u64> =
    Array::with_max_entries(flow_filter_entries(DEFAULT_FLOW_TABLE_SIZE), BPF_F_MMAPABLE);

/// An LPM trie, so one lookup finds the longest matching prefix.
#[map(name = "ACLS")]
pub static ACLS: LpmTrie<AclKey, u32> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

/// (listener, client address) → backend, for listeners with `persistence_timeout`. LRU,
/// sized like the flow table.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Two one-hash Bloom filters (`address_filter_bit`): of the VIP addresses, so most packets
/// that are not for a VIP are told so by one inlined array read instead of a hash lookup;
/// of the refused client sources, so a new flow's source check is one array read too
/// (`VIP_FILTER_BASE`, `REFUSED_FILTER_BASE`, `REFUSED_PREFIXES_WORD`).
#[map(name = "ADDRESS_FILTER")]
pub static ADDRESS_FILTER: Array<u64> = Array::with_max_entries(ADDRESS_FILTER_WORDS, 0);

/// The stages of the program, entered by tail call (`STAGE_*` slots). Filled by the
/// controller when it loads the programs; never pinned with the other maps, so the
/// programs of one load only ever call stages of the same load.
#[map(name = "STAGES")]
pub static STAGES: ProgramArray = ProgramArray::with_max_entries(STAGE_SLOTS, 0);

/// Per CPU: the new flow `lb_xdp` hands to `lb_new_flow` (see `PendingFlow`). Scratch
/// space of one packet, never read by the controller.
#[map(name = "PENDING")]
pub static PENDING: PerCpuArray<PendingFlow> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the packet too big for its egress that `transmit` hands to `lb_too_big` (see
/// `TooBig`). Scratch space of one packet, like `PENDING`.
#[map(name = "TOO_BIG")]
pub static TOO_BIG: PerCpuArray<TooBig> = PerCpuArray::with_max_entries(1, 0);

// IPv6: a table of its own for each table keyed or valued by an address, with the same
// meaning, flags and sizes as its IPv4 namesake (whose comment holds), so IPv4's keys stay
// small. Tables without an address (`BACKENDS` but for the address, `TABLE_META`,
// `MAGLEV`, `SEQUENCE`, the counters) are shared by both families.

#[map(name = "LISTENERS6")]
pub static LISTENERS6: HashMap<ListenerKey6, Listener> =
    HashMap::with_max_entries(2 * DEFAULT_MAX_LISTENERS, BPF_F_NO_PREALLOC);

/// Backend id → the address of an IPv6 backend (its other fields are in `BACKENDS`).
#[map(name = "BACKENDS6")]
pub static BACKENDS6: Array<BackendAddr6> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "FLOWS6")]
pub static FLOWS6: LruHashMap<FlowKey6, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);

#[map(name = "HALF_OPEN6")]
pub static HALF_OPEN6: LruHashMap<FlowKey6, Flow> = LruHashMap::with_max_entries(
    half_open_table_size(DEFAULT_FLOW_TABLE_SIZE),
    BPF_F_NO_COMMON_LRU,
);

#[map(name = "ENDPOINTS6")]
pub static ENDPOINTS6: HashMap<EndpointKey6, Endpoint6> =
    HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "ACLS6")]
pub static ACLS6: LpmTrie<AclKey6, u32> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "AFFINITY6")]
pub static AFFINITY6: LruHashMap<AffinityKey6, Affinity> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

#[map(name = "NEXT_HOPS6")]
pub static NEXT_HOPS6: PerCpuArray<NextHop6> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "PENDING6")]
pub static PENDING6: PerCpuArray<PendingFlow6> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "TOO_BIG6")]
pub static TOO_BIG6: PerCpuArray<TooBig6> = PerCpuArray::with_max_entries(1, 0);

/// Listener id → the outer source of an IPv6 `forwarding: dsr` listener's tunnel (see
/// `EncapSource6`); all zero: the address the route to the backend prefers. Written by
/// the controller with the listener entry.
#[map(name = "ENCAP_SOURCES6")]
pub static ENCAP_SOURCES6: Array<EncapSource6> = Array::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

/// Per CPU: the IPv6 packet `lb_encap6` puts in its tunnel (see `Encap6`). Scratch space
/// of one packet, like `PENDING6`.
#[map(name = "ENCAP6")]
pub static ENCAP6: PerCpuArray<Encap6> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the coarse time last read and the jiffies value it was read at (`clock`).
#[repr(C)]
pub struct ClockReading {
    pub jiffies: u64,
    pub ns: u64,
}

#[map(name = "CLOCK")]
pub static CLOCK: PerCpuArray<ClockReading> = PerCpuArray::with_max_entries(1, 0);
