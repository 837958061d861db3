//! Keys, values and sizes of every BPF map, shared by the XDP program and the controller.
//!
//! Rules for every type here: `#[repr(C)]`, fixed-width integers only, padding written out
//! as `_pad` fields (the kernel compares keys byte for byte, and a value must not carry
//! uninitialised bytes), and the size asserted at compile time so a layout change is a
//! conscious one (pinned maps of an older layout are refused by the controller).

/// IP protocol numbers as they appear in the IPv4 header.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Slots in a listener's Maglev table unless its config says otherwise. A prime, as Maglev
/// needs; 65537 keeps each backend's share within 0.01 point of its weight share up to a
/// few thousand backends. Removing one of many backends moves several times its share of
/// slots; a larger prime (a listener's `maglev_table_size`) moves fewer.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Slots of `MAGLEV` unless the config says otherwise: two tables of the default size for
/// every listener.
pub const fn default_maglev_slots(max_listeners: u32) -> u32 {
    max_listeners.saturating_mul(TABLES_PER_LISTENER * MAGLEV_TABLE_SIZE)
}
/// Bounds of a listener's `maglev_table_size`.
pub const MAGLEV_TABLE_SIZE_MIN: u32 = 1021;
pub const MAGLEV_TABLE_SIZE_MAX: u32 = 4_194_301;
/// Longest weighted round-robin sequence. Larger weight sums are scaled down to fit.
pub const SEQUENCE_TABLE_SIZE: u32 = 65536;
/// `wlc` compares at most this many backends per new flow (the verifier needs a bound; a
/// listener with more backends scans a rotating window of this size).
pub const WLC_SCAN_MAX: u32 = 128;
/// Every listener owns two table slots: the live one and the one being rebuilt. A rebuild
/// writes the idle slot, then flips `Listener::table`, so no packet sees a half-written table.
pub const TABLES_PER_LISTENER: u32 = 2;
/// Interfaces the program can transmit on through the devmap.
pub const MAX_INTERFACES: u32 = 64;

pub const DEFAULT_MAX_LISTENERS: u32 = 64;
/// Entries of all access lists together.
pub const MAX_ACL_ENTRIES: u32 = 16384;
pub const DEFAULT_MAX_BACKENDS: u32 = 65536;
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;

/// `MAGLEV` and `SEQUENCE` hold backend ids two per map element. The kernel pads array
/// elements to 8 bytes, and the controller mmaps these arrays: with pairs, the mapping is a
/// dense `u32` array where id number i sits at index i (element i / 2, lane i % 2).
pub type IdPair = [u32; 2];

/// Map elements needed for `ids` backend ids stored as `IdPair`s.
pub const fn id_pair_entries(ids: u32) -> u32 {
    ids.div_ceil(2)
}

/// Bits of each one-hash Bloom filter in `ADDRESS_FILTER`: one of the VIP addresses (a
/// packet whose destination's bit is clear is not for a VIP), one of the refused client
/// sources that are single addresses (the LB host's own: a new flow whose source's bit is
/// clear skips the access-list lookup), one of the IPv6 VIPs, and one of the IPv4 backend
/// addresses (a packet for no listener whose source's bit is clear is no backend's reply,
/// and skips the `ENDPOINTS` lookup).
pub const ADDRESS_FILTER_BITS: u32 = 65536;
/// `u64` words of one filter.
const FILTER_WORDS: u32 = ADDRESS_FILTER_BITS / 64;
/// First word of the VIP filter in `ADDRESS_FILTER`.
pub const VIP_FILTER_BASE: u32 = 0;
/// First word of the refused-source filter in `ADDRESS_FILTER`.
pub const REFUSED_FILTER_BASE: u32 = FILTER_WORDS;
/// The word of `ADDRESS_FILTER` that is not 0 when the refused sources hold prefixes
/// (`refused_client_sources` wider than one address): the filter cannot answer for those,
/// and every new flow looks its source up in the access list.
pub const REFUSED_PREFIXES_WORD: u32 = 2 * FILTER_WORDS;
/// First word of the IPv6 VIP filter in `ADDRESS_FILTER` (an IPv6 address's bit is its
/// four words folded into one, `address_filter_bit6`).
pub const VIP6_FILTER_BASE: u32 = 2 * FILTER_WORDS + 1;
/// First word of the IPv4 backend filter in `ADDRESS_FILTER`.
pub const BACKEND_FILTER_BASE: u32 = 3 * FILTER_WORDS + 1;
/// `u64` words of `ADDRESS_FILTER`: the four filters and the prefix word.
pub const ADDRESS_FILTER_WORDS: u32 = 4 * FILTER_WORDS + 1;

/// The bit of an address (network byte order) in either filter of `ADDRESS_FILTER`:
/// Fibonacci hashing, cheap enough for every packet.
#[inline(always)]
pub const fn address_filter_bit(addr: u32) -> u32 {
    addr.wrapping_mul(0x9e37_79b9) >> 16
}

/// The bit of an IPv6 address in the IPv6 VIP filter: its words folded into one (VIPs of
/// one prefix differ in their last words, which the fold keeps), then as IPv4's.
#[inline(always)]
pub const fn address_filter_bit6(addr: [u32; 4]) -> u32 {
    address_filter_bit(addr[0] ^ addr[1] ^ addr[2] ^ addr[3].rotate_left(16))
}

/// Entries of the half-open table (`HALF_OPEN`) for a flow table of `flow_table_size`: a
/// quarter of it, at least 262144 (about 25 MB). A flood of SYNs churns this table, never
/// the one of established flows; a legitimate client's ACK, an RTT after its SYN, finds
/// its entry unless the flood inserts that many SYNs within that RTT (at 250,000 SYNs/s,
/// 262144 entries last a second).
pub const fn half_open_table_size(flow_table_size: u32) -> u32 {
    let quarter = flow_table_size / 4;
    if quarter < 262_144 { 262_144 } else { quarter }
}

/// Marks "no backend" in a selection table slot and in a flow.
pub const NO_BACKEND: u32 = u32::MAX;

/// Map names as the XDP program declares them; the controller opens them by these names.
pub mod names {
    pub const LISTENERS: &str = "LISTENERS";
    pub const LISTENER_INDEX: &str = "LISTENER_INDEX";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const SEQUENCE: &str = "SEQUENCE";
    pub const TABLE_META: &str = "TABLE_META";
    pub const CURSORS: &str = "CURSORS";
    pub const FLOWS: &str = "FLOWS";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ACTIVE_FLOWS: &str = "ACTIVE_FLOWS";
    pub const LISTENER_STATS: &str = "LISTENER_STATS";
    pub const BACKEND_CPU: &str = "BACKEND_CPU";
    pub const BACKEND_CPU_REPLY: &str = "BACKEND_CPU_REPLY";
    pub const COUNTERS: &str = "COUNTERS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const ACLS: &str = "ACLS";
    pub const ADDRESS_FILTER: &str = "ADDRESS_FILTER";
    pub const FLOW_FILTER: &str = "FLOW_FILTER";
    pub const AFFINITY: &str = "AFFINITY";
    pub const STAGES: &str = "STAGES";
    pub const PENDING: &str = "PENDING";
    pub const TOO_BIG: &str = "TOO_BIG";
    pub const LISTENERS6: &str = "LISTENERS6";
    pub const BACKENDS6: &str = "BACKENDS6";
    pub const FLOWS6: &str = "FLOWS6";
    pub const HALF_OPEN6: &str = "HALF_OPEN6";
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    pub const ACLS6: &str = "ACLS6";
    pub const AFFINITY6: &str = "AFFINITY6";
    pub const NEXT_HOPS6: &str = "NEXT_HOPS6";
    pub const PENDING6: &str = "PENDING6";
    pub const TOO_BIG6: &str = "TOO_BIG6";
    pub const ENCAP_SOURCES6: &str = "ENCAP_SOURCES6";
    pub const ENCAP6: &str = "ENCAP6";
    /// The entry program, attached to every interface.
    pub const PROGRAM: &str = "lb_xdp";
    /// The programs behind `STAGES`, entered by tail call.
    pub const PROGRAM_NEW_FLOW: &str = "lb_new_flow";
    pub const PROGRAM_NEW_FLOW6: &str = "lb_new_flow6";
    pub const PROGRAM_IPV6: &str = "lb_ipv6";
    pub const PROGRAM_ICMP6: &str = "lb_icmp6";
    pub const PROGRAM_TOO_BIG6: &str = "lb_too_big6";
    pub const PROGRAM_ICMP6_CLIENT: &str = "lb_icmp6_client";
    pub const PROGRAM_ENCAP6: &str = "lb_encap6";
    pub const PROGRAM_WLC: &str = "lb_wlc";
    pub const PROGRAM_ICMP: &str = "lb_icmp";
    pub const PROGRAM_TOO_BIG: &str = "lb_too_big";
    /// The TC egress program that tunnels DSR health probes (not an XDP stage).
    pub const PROGRAM_PROBE_TUNNEL: &str = "lb_probe_tunnel";
}

/// The XDP program is split into separately verified programs: the entry program `lb_xdp`
/// (parsing, established flows, replies) and the stages it enters by tail call through
/// `STAGES` for what is rarer or costly to verify. Each stage is verified on its own, so
/// the verifier's cost of the whole is the sum of the parts, not their product.
///
/// `STAGES` slot of `lb_new_flow`: a new flow or a pickup (selection, collision check, flow
/// insert, translation).
pub const STAGE_NEW_FLOW: u32 = 0;
/// `STAGES` slot of `lb_wlc`: the `wlc` scan, which hands its pick back to `lb_new_flow`.
pub const STAGE_WLC: u32 = 1;
/// `STAGES` slot of `lb_icmp`: ICMP errors about translated flows.
pub const STAGE_ICMP: u32 = 2;
/// `STAGES` slot of `lb_too_big`: a translated packet too big for its egress, with DF,
/// answered with ICMP "fragmentation needed" to its sender.
pub const STAGE_TOO_BIG: u32 = 3;
/// `STAGES` slot of `lb_new_flow6`: `lb_new_flow` for an IPv6 packet.
pub const STAGE_NEW_FLOW6: u32 = 4;
/// `STAGES` slot of `lb_ipv6`: every IPv6 frame, after `lb_xdp` has seen its ethertype
/// (IPv6 keys and headers would take `lb_xdp` past the BPF stack limit).
pub const STAGE_IPV6: u32 = 5;
/// `STAGES` slot of `lb_icmp6`: ICMPv6 errors about translated flows, echo requests to an
/// IPv6 VIP.
pub const STAGE_ICMP6: u32 = 6;
/// `STAGES` slot of `lb_too_big6`: a translated IPv6 packet too big for its egress,
/// answered with ICMPv6 Packet Too Big to its sender.
pub const STAGE_TOO_BIG6: u32 = 7;
/// `STAGES` slot of `lb_icmp6_client`: an ICMPv6 error about a packet sent to a backend,
/// towards the client (`lb_icmp6`'s second half).
pub const STAGE_ICMP6_CLIENT: u32 = 8;
/// `STAGES` slot of `lb_encap6`: an IPv6 packet to a `forwarding: dsr` listener's backend
/// (or an ICMPv6 error about such a flow) put inside its outer IPv6 header and sent.
pub const STAGE_ENCAP6: u32 = 9;
/// `STAGES` slot of `lb_xdp` itself: `lb_new_flow` hands a SYN back to it when the
/// half-open table turns out to hold the SYN's key (`PENDING_F_RECHECK`).
pub const STAGE_ENTRY: u32 = 10;
/// Slots of `STAGES` (room for stages to come; the map is per load, never pinned).
pub const STAGE_SLOTS: u32 = 16;
const _: () = {
    assert!(STAGE_ENTRY < STAGE_SLOTS);
    let mut i = 0;
    while i < STAGE_PROGRAMS.len() {
        assert!(STAGE_PROGRAMS[i].0 < STAGE_SLOTS && STAGE_PROGRAMS[i].0 != STAGE_ENTRY);
        i += 1;
    }
};
/// Every stage: (slot, program name), in the order the controller loads them.
pub const STAGE_PROGRAMS: [(u32, &str); 10] = [
    (STAGE_NEW_FLOW, names::PROGRAM_NEW_FLOW),
    (STAGE_IPV6, names::PROGRAM_IPV6),
    (STAGE_ICMP6, names::PROGRAM_ICMP6),
    (STAGE_TOO_BIG6, names::PROGRAM_TOO_BIG6),
    (STAGE_ICMP6_CLIENT, names::PROGRAM_ICMP6_CLIENT),
    (STAGE_ENCAP6, names::PROGRAM_ENCAP6),
    (STAGE_NEW_FLOW6, names::PROGRAM_NEW_FLOW6),
    (STAGE_WLC, names::PROGRAM_WLC),
    (STAGE_ICMP, names::PROGRAM_ICMP),
    (STAGE_TOO_BIG, names::PROGRAM_TOO_BIG),
];

/// `TooBig::side`: the translation rewrote the destination (client → VIP became client →
/// backend); the answer goes to the client.
pub const TOO_BIG_DESTINATION: u8 = 1;
/// `TooBig::side`: the translation rewrote the source (backend → client became VIP →
/// client); the answer goes to the backend.
pub const TOO_BIG_SOURCE: u8 = 2;

/// A translated packet too big for its egress, handed to `lb_too_big` (`TOO_BIG`, one per
/// CPU, like `PendingFlow`). The packet is already translated when the FIB reports the
/// MTU, but the answer must quote it as its sender sent it: what the translation replaced
/// comes along.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TooBig {
    /// The translated packet's 5-tuple; the stage checks it against its packet.
    pub key: FlowKey,
    /// The address and port the translation replaced, network byte order.
    pub addr: u32,
    pub port: u16,
    /// The MTU to tell the sender, host order: the egress MTU the FIB reported, less the
    /// outer headers of an encapsulated packet.
    pub mtu: u16,
    /// `TOO_BIG_DESTINATION` or `TOO_BIG_SOURCE`.
    pub side: u8,
    /// 1: the packet was to be encapsulated (`forwarding: dsr`), so it is still the
    /// client's, and one the stage cannot answer is dropped: passed, the kernel would
    /// route it to the VIP.
    pub encapsulated: u8,
    /// Two fields, not a byte array: zeroing a 6-byte array is a call of the XDP
    /// program's byte-at-a-time `memset` (`lb-ebpf/src/words.rs`).
    pub _pad0: u16,
    pub _pad1: u32,
}
const _: () = assert!(size_of::<TooBig>() == 32);

/// `PendingFlow::flags`: `lb_wlc` has run; `picked` holds its answer.
pub const PENDING_F_SCANNED: u8 = 1;
/// `PendingFlow::flags`: the new flow's insert is made only if its key is absent
/// (`BPF_NOEXIST`; this bit's value, shifted down): a SYN that found no entry, on the
/// entry program's first pass. That pass leaves a SYN's half-open lookup to the insert
/// when the flow filter rules `FLOWS` out, since the lookup costs a new flow about a
/// tenth of its time and almost always finds nothing; the second pass
/// (`PENDING_F_RECHECK`) looks, and its insert replaces whatever is there.
pub const PENDING_F_EXCLUSIVE: u8 = 2;
/// `PendingFlow::flags`: set by the new-flow stage whose insert found the key already in
/// the half-open table (a retransmitted SYN, or another CPU's): the entry program, entered
/// again (`STAGE_ENTRY`, `STAGE_IPV6`), looks the key up and decides with its entry.
pub const PENDING_F_RECHECK: u8 = 4;
/// `PendingFlow::flags`: the new-flow stage's pick was the client's affinity backend
/// (counted `EventPersisted`), which a SYN handed back (`PENDING_F_RECHECK`) takes back.
pub const PENDING_F_PERSISTED: u8 = 8;

/// A new flow (or pickup) handed from `lb_xdp` to `lb_new_flow` (through `lb_wlc` for
/// `wlc`): what the entry program already read, so the stage neither reads it again nor
/// decides differently. One per CPU (`PENDING`): a packet runs all its stages on one CPU,
/// one after the other, and nothing else runs there in between.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingFlow {
    /// The packet's client-side 5-tuple; the stage checks it against its packet.
    pub key: FlowKey,
    /// The listener as the entry program read it.
    pub listener: Listener,
    /// The entry program's clock reading (`bpf_ktime_get_coarse_ns`).
    pub now_ns: u64,
    /// The flow entry this flow replaces (`NO_BACKEND`: none) and its `FLOW_F_*` flags.
    pub previous_backend: u32,
    pub previous_flags: u32,
    /// `lb_wlc`'s pick once `PENDING_F_SCANNED` is set (`NO_BACKEND`: none).
    pub picked: u32,
    /// `EntryState::code` of the flow table's answer.
    pub state: u8,
    /// `Step::code`: schedule or pickup.
    pub step: u8,
    /// `PENDING_F_*` bits.
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<PendingFlow>() == 80);

/// How a listener picks the backend of a new flow. Values are stored in `Listener::scheduler`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Scheduler {
    /// Weighted round robin: walks the listener's smooth WRR sequence.
    Wrr = 0,
    /// Round robin: every backend with a non-zero weight once per turn; weights ignored.
    Rr = 1,
    /// Weighted least connections: fewest active flows per unit of weight.
    Wlc = 2,
    /// Consistent hash of the source address into the weighted Maglev table.
    Sch = 3,
    /// Consistent hash of the 4-tuple into the weighted Maglev table.
    Tch = 4,
}

impl Scheduler {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Wrr),
            1 => Some(Self::Rr),
            2 => Some(Self::Wlc),
            3 => Some(Self::Sch),
            4 => Some(Self::Tch),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Wrr => "wrr",
            Self::Rr => "rr",
            Self::Wlc => "wlc",
            Self::Sch => "sch",
            Self::Tch => "tch",
        }
    }
}

/// Key of `LISTENERS`: what a packet is addressed to.
///
/// A key with `port == 0` and `protocol == 0` is a VIP marker: it tells the program that
/// the address is a VIP even when no listener matches the port (fragments, unknown ports).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ListenerKey {
    /// The VIP. Network byte order.
    pub addr: u32,
    /// Listener port. Network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ListenerKey>() == 8);

impl ListenerKey {
    /// The key as one 64-bit word (see `FlowKey::new` for why).
    #[inline(always)]
    pub const fn new(addr: u32, port: u16, protocol: u8) -> Self {
        let word = if cfg!(target_endian = "little") {
            addr as u64 | (port as u64) << 32 | (protocol as u64) << 48
        } else {
            (addr as u64) << 32 | (port as u64) << 16 | (protocol as u64) << 8
        };
        // SAFETY: 8 bytes of plain integers either way, laid out as the fields are.
        unsafe { core::mem::transmute::<u64, ListenerKey>(word) }
    }

    pub const fn vip_marker(addr: u32) -> Self {
        Self::new(addr, 0, 0)
    }
}

impl ListenerKey {
    /// The key as the 64-bit word `ListenerKey::new` builds.
    #[inline(always)]
    pub const fn word(&self) -> u64 {
        // SAFETY: 8 bytes of plain integers, no padding (`_pad` is a field).
        unsafe { core::mem::transmute::<ListenerKey, u64>(*self) }
    }
}

/// `LISTENER_INDEX`: IPv4 listener keys (and VIP markers) direct-mapped to the slot their
/// hash names, each slot holding its one key's listener. The entry program reads a slot
/// where it would otherwise hash and walk `LISTENERS`, which stays complete and answers
/// for slots several keys share.
///
/// A slot's listener is rewritten while packets read it, so each slot has two records:
/// the controller writes the one not in use, publishes it by changing the slot's word
/// (one aligned 64-bit store), and waits for every reader of the old record to finish (an
/// RCU grace period) before it writes that one again.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerSlot {
    /// Record 0, in the word's cache line.
    pub first: Listener,
    pub _pad0: [u32; 4],
    /// The key this slot answers for, with `SLOT_*` bits in its `_pad` byte; 0: empty.
    pub word: u64,
    /// Record 1, in the next line: `SLOT_SECOND` (2) × 32 bytes on from `first`, so the
    /// program finds a record by masking the word, with no branch (see `slot_record`).
    pub second: Listener,
    pub _pad1: [u64; 3],
}
const _: () = assert!(size_of::<ListenerSlot>() == 128);
const _: () = assert!(core::mem::offset_of!(ListenerSlot, first) == 0);
const _: () = assert!(core::mem::offset_of!(ListenerSlot, second) == 32 * SLOT_SECOND as usize);

/// `ListenerSlot::word` state bits (in the key's `_pad` byte).
/// One key has this slot; its listener is in the record `SLOT_SECOND` names.
pub const SLOT_OWNED: u8 = 1;
/// With `SLOT_OWNED`: the listener is in `second`, not `first`.
pub const SLOT_SECOND: u8 = 2;
/// Several keys hash to this slot: ask `LISTENERS`.
pub const SLOT_SHARED: u8 = 4;

/// What a slot says of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotAnswer {
    /// The key's listener is in this record (`true`: `second`).
    Record(bool),
    /// Several keys share the slot: `LISTENERS` has the answer.
    Ask,
    /// Not a listener: the slot is empty or another key's alone.
    Absent,
}

/// The slot word of `key` in state `state` (`SLOT_*` bits).
#[inline(always)]
pub const fn slot_word(key: &ListenerKey, state: u8) -> u64 {
    let mut key = *key;
    key._pad = state;
    key.word()
}

/// The offset in its slot of the record slot word `word` names: `first` (0) or `second`.
/// Masked, not chosen by a branch: the verifier then follows one path, not one per record.
#[inline(always)]
pub const fn slot_record(word: u64) -> usize {
    ((slot_state(word) & SLOT_SECOND) as usize) << 5
}

/// The `SLOT_*` bits of a slot word.
#[inline(always)]
pub const fn slot_state(word: u64) -> u8 {
    // SAFETY: any 8 bytes are a valid key.
    unsafe { core::mem::transmute::<u64, ListenerKey>(word) }._pad
}

/// What slot word `word` says of `key` (a key as packets make it, `_pad` 0).
#[inline(always)]
pub const fn slot_answer(word: u64, key: &ListenerKey) -> SlotAnswer {
    let state = slot_state(word);
    if state & SLOT_SHARED != 0 {
        SlotAnswer::Ask
    } else if state & SLOT_OWNED != 0 && word == slot_word(key, state) {
        SlotAnswer::Record(state & SLOT_SECOND != 0)
    } else {
        SlotAnswer::Absent
    }
}

/// log2 of `LISTENER_INDEX`'s slots: the power of two at least twice `LISTENERS`' entries
/// (two per listener: its key and its VIP's marker), so most keys have a slot alone.
pub const fn listener_index_bits(max_listeners: u32) -> u32 {
    let keys = 2 * (max_listeners as u64);
    let slots = (2 * keys).next_power_of_two();
    let bits = slots.trailing_zeros();
    if bits < 2 { 2 } else { bits }
}

/// `LISTENER_INDEX`'s slots keys hash to (`listener_index_bits`).
pub const fn listener_index_slots(max_listeners: u32) -> u32 {
    1 << listener_index_bits(max_listeners)
}

/// `LISTENER_INDEX`'s entries on a machine of `cpus` possible CPUs: the slots, then one
/// scratch slot per CPU (`listener_scratch_slot`).
pub const fn listener_index_entries(max_listeners: u32, cpus: u32) -> u32 {
    listener_index_slots(max_listeners) + cpus
}

/// CPU `cpu`'s scratch slot in a `LISTENER_INDEX` of 2^`bits` slots: where the program
/// copies a listener it had to find in `LISTENERS`, so that every listener it uses is a
/// record of `LISTENER_INDEX` (one kind of pointer for the verifier to follow, not two).
/// Only that CPU's program writes it, and only its `first` record; its word stays 0.
#[inline(always)]
pub const fn listener_scratch_slot(bits: u32, cpu: u32) -> u32 {
    (1u32 << (bits & 31)).wrapping_add(cpu)
}

/// The slot of `key` in a `LISTENER_INDEX` of 2^`bits` slots: a multiplicative hash of the
/// key's word, its top `bits` bits.
#[inline(always)]
pub const fn listener_slot(key: &ListenerKey, bits: u32) -> u32 {
    let hash = key.word().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (hash >> ((64 - bits) & 63)) as u32
}

/// `Listener::acl_mode`: what a match in the listener's access list means.
pub const ACL_NONE: u8 = 0;
pub const ACL_ALLOW: u8 = 1;
pub const ACL_DENY: u8 = 2;

/// Value of `LISTENERS`. All fields host byte order.
///
/// Replaced whole by the controller (the map is `BPF_F_NO_PREALLOC`, so an update swaps the
/// element under RCU and a packet sees either the old or the new value, never a mix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Listener {
    /// Index into the per-listener arrays (`CURSORS`, `LISTENER_STATS`).
    pub id: u32,
    /// The live table slot: index into `TABLE_META` (which says where the slot's Maglev
    /// table lies in `MAGLEV`), and `table * SEQUENCE_TABLE_SIZE` into `SEQUENCE`.
    pub table: u32,
    /// A `Scheduler` value.
    pub scheduler: u8,
    /// `ACL_NONE`, `ACL_ALLOW` or `ACL_DENY`.
    pub acl_mode: u8,
    /// `LISTENER_F_*` bits.
    pub flags: u8,
    /// An `Encapsulation` value: how a client's packet reaches its backend.
    pub encapsulation: u8,
    /// Access list this listener checks (meaningful when `acl_mode != ACL_NONE`).
    pub acl_id: u32,
    /// A TCP flow idle longer than this is forgotten; its next packet is scheduled again.
    pub established_timeout_s: u32,
    /// Same for UDP flows.
    pub udp_timeout_s: u32,
    /// Source-address affinity lifetime; 0 = off.
    pub persistence_timeout_s: u32,
    /// Encapsulated packets: the outer source address, network byte order; 0 = the
    /// address the route to the backend prefers (the LB's address on the egress side).
    pub encap_source: u32,
    /// GUE: the UDP destination port backends decapsulate, network byte order.
    pub encap_port: u16,
    /// Encapsulated packets: how many low bits of `encap_source` come from the flow's
    /// hash (0..=16), so backends' NICs spread flows over their queues by outer source.
    pub encap_source_bits: u8,
    pub _pad: u8,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<Listener>() == 40);

/// `Listener::encapsulation`: NAT (the destination is rewritten to the backend, replies
/// come back through the LB) or direct server return with the client's packet carried
/// whole inside an outer header to the backend, which answers the client itself.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Encapsulation {
    /// `forwarding: nat`: no encapsulation, the packet is translated.
    #[default]
    None = 0,
    /// IP in IP of the listener's family: IPv4 in IPv4 (IP protocol 4, RFC 2003), IPv6
    /// in IPv6 (next header 41, RFC 2473).
    Ipip = 1,
    /// Generic UDP Encapsulation, variant 1 (the inner IP packet right after the UDP
    /// header), to `encap_port`, over the listener's family.
    Gue = 2,
}

impl Encapsulation {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Ipip),
            2 => Some(Self::Gue),
            _ => None,
        }
    }

    /// Bytes the encapsulation adds in front of the client's IPv4 packet.
    pub const fn overhead(self) -> u16 {
        match self {
            Self::None => 0,
            Self::Ipip => IPV4_HEADER_LEN,
            Self::Gue => IPV4_HEADER_LEN + UDP_HEADER_LEN,
        }
    }

    /// Bytes the encapsulation adds in front of the client's IPv6 packet.
    pub const fn overhead6(self) -> u16 {
        match self {
            Self::None => 0,
            Self::Ipip => IPV6_HEADER_LEN,
            Self::Gue => IPV6_HEADER_LEN + UDP_HEADER_LEN,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        }
    }
}

/// `SO_MARK` of the daemon's health probes in DSR mode: the tag in the top byte, the
/// backend id below it. `lb_probe_tunnel` sends a packet so marked, to a VIP, through the
/// backend's tunnel, as client packets go; anything else it leaves alone. Backend ids stay
/// below 2^24 (`max_backends` is at most 2^20).
pub const PROBE_MARK_TAG: u32 = 0x4c00_0000;
pub const PROBE_MARK_MASK: u32 = 0xff00_0000;

/// The mark of the probes of backend `id`.
pub const fn probe_mark(id: u32) -> u32 {
    PROBE_MARK_TAG | (id & !PROBE_MARK_MASK)
}

/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: u16 = 20;
pub const UDP_HEADER_LEN: u16 = 8;
/// IP protocol number of IPv4 in IPv4.
pub const PROTO_IPIP: u8 = 4;
/// An IPv6 header (without extension headers).
pub const IPV6_HEADER_LEN: u16 = 40;
/// IPv6 next header of IPv6 in IPv6 ("IPv6 encapsulation", RFC 2473).
pub const PROTO_IPV6: u8 = 41;
/// The outer header's TTL (IPv6: hop limit): what a host sends its own packets with
/// (Linux's default).
pub const ENCAP_TTL: u8 = 64;
/// Most low bits of the outer source a flow's hash may choose (a /16).
pub const MAX_ENCAP_SOURCE_BITS: u8 = 16;

/// `Listener::flags`: the entry is a VIP marker, not a listener.
pub const LISTENER_F_VIP_MARKER: u8 = 1;
/// `Listener::flags` of a VIP marker: the program answers ICMP echo requests to the VIP
/// (`vip_ping: answer`); without it they are dropped.
pub const LISTENER_F_ANSWER_PING: u8 = 2;

/// `Backend::flags`: the backend exists and passes its health checks. Its established flows
/// keep going (weight 0 included); only usable backends with a weight are in the tables.
pub const BACKEND_F_USABLE: u8 = 1;
/// `Backend::flags`: removed or drained with connection drain on; flows continue until
/// `drain_deadline_ns`.
pub const BACKEND_F_DRAINING: u8 = 2;
/// `Backend::flags`: its endpoint (address, port, protocol) serves several listeners, so a
/// new flow must check that no live flow of another listener has the same client address
/// and port (`ENDPOINTS`). Without it, a new flow skips that lookup.
pub const BACKEND_F_SHARED_ENDPOINT: u8 = 4;

/// Value of `BACKENDS`, indexed by backend id. A backend is one member of a listener's
/// group: health, weight and counters are per (listener, server, port), as in CLB.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Server address. Network byte order.
    pub addr: u32,
    /// Server port. Network byte order.
    pub port: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// Effective weight (after slow start), host order. Read by `wlc`.
    pub weight: u32,
    /// Owning listener id, host order.
    pub listener: u32,
    /// Bumped each time the id is given to a new backend; a flow remembers it, so a flow
    /// of a removed backend never lands on the id's next owner. Host order.
    pub generation: u32,
    pub _pad2: u32,
    /// While draining: `bpf_ktime_get_coarse_ns` time after which flows are cut; 0 = never.
    pub drain_deadline_ns: u64,
}
const _: () = assert!(size_of::<Backend>() == 32);

impl Backend {
    pub const fn is_usable(&self) -> bool {
        self.flags & BACKEND_F_USABLE != 0
    }
}

/// Value of `TABLE_META`, indexed by table slot. Host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableMeta {
    /// Backends that take new flows in this table; 0 = new flows are dropped (no backend).
    pub backends: u32,
    /// Entries used in the slot's `SEQUENCE` region (wrr: the sequence; rr and wlc: each
    /// backend once).
    pub sequence_len: u32,
    /// First entry of the slot's Maglev table in `MAGLEV`. Listeners' tables differ in
    /// size, so the controller places each one and says where here.
    pub maglev_base: u32,
    /// Slots of the slot's Maglev table (a prime).
    pub maglev_size: u32,
}
const _: () = assert!(size_of::<TableMeta>() == 16);

/// Key of `FLOWS` and `HALF_OPEN`: the client side of a flow (client → VIP).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Network byte order.
    pub src_addr: u32,
    /// Network byte order.
    pub dst_addr: u32,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 16);

impl FlowKey {
    /// The key written as two 64-bit words. The kernel hashes a key 32 bits at a time
    /// right after the program stores it; a struct literal compiles to byte and half-word
    /// stores (and a call to `memset` for the padding), and each 32-bit load that spans
    /// several of them waits for them to retire instead of being forwarded from the store
    /// buffer. This and the clock read once per tick (`lb-ebpf/src/clock.rs`) took a fifth
    /// off an established packet's cost, measured together (docs/benchmarks.md).
    #[inline(always)]
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self {
        let words = [
            word_pair(src_addr, dst_addr),
            ports_word(src_port, dst_port, protocol),
        ];
        // SAFETY: 16 bytes of plain integers either way, laid out as the fields are.
        unsafe { core::mem::transmute::<[u64; 2], FlowKey>(words) }
    }

    /// The key's two 64-bit words, as `new` builds them.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes of plain integers with explicit padding, 8-byte aligned.
        unsafe { core::mem::transmute::<FlowKey, [u64; 2]>(*self) }
    }
}

/// The 64-bit word two consecutive 32-bit words make in memory (the addresses of a flow
/// key of either family, `FlowKey::new`, `FlowKey6::new`).
#[inline(always)]
pub(crate) const fn word_pair(first: u32, second: u32) -> u64 {
    if cfg!(target_endian = "little") {
        first as u64 | (second as u64) << 32
    } else {
        (first as u64) << 32 | second as u64
    }
}

/// The last word of a flow key of either family: the ports, the protocol and the padding
/// (zero), laid out as the fields are (`FlowKey::new`, `FlowKey6::new`).
#[inline(always)]
pub(crate) const fn ports_word(src_port: u16, dst_port: u16, protocol: u8) -> u64 {
    if cfg!(target_endian = "little") {
        src_port as u64 | (dst_port as u64) << 16 | (protocol as u64) << 32
    } else {
        (src_port as u64) << 48 | (dst_port as u64) << 32 | (protocol as u64) << 24
    }
}

/// `Flow::flags`: a FIN was seen from the client.
pub const FLOW_F_FIN: u32 = 1;
/// `Flow::flags`: a RST was seen from the client.
pub const FLOW_F_RST: u32 = 2;
/// `Flow::flags`: created by a mid-flow pickup (TCP without SYN and without an entry).
pub const FLOW_F_PICKUP: u32 = 4;
/// `Flow::flags`: the flow holds one count in `ACTIVE_FLOWS` of its backend (`wlc`).
pub const FLOW_F_COUNTED: u32 = 8;
/// `Flow::flags`: opened by a SYN, and the client has not acknowledged anything yet (a
/// half-open connection, or a forged SYN). It lives `HALF_OPEN_TIMEOUT_S` at most.
pub const FLOW_F_OPENING: u32 = 16;
/// `Flow::flags` of a half-open flow: its SYN took the key's entry out of `FLOWS` (a
/// connection reusing a closed one's port), so its promotion is no new key there and does
/// not count as one (`EventFlowInserted`).
pub const FLOW_F_REOPENED: u32 = 32;
/// `Flow::flags`: `backend_acked` holds an acknowledgement number the backend sent.
pub const FLOW_F_BACKEND_ACKED: u32 = 64;

/// A half-open flow stays this long after its last packet: long enough for a client's SYN
/// retransmissions (1, 2, 4, 8, 16 s apart), short enough that unanswered or forged SYNs
/// do not count as active flows for `wlc`, `status` and `wait drained` for long.
pub const HALF_OPEN_TIMEOUT_S: u32 = 30;
/// A FIN or RST counts (closes the flow for `wlc`, `status` and `wait drained`, and lets a
/// SYN on the same 4-tuple be scheduled anew) only if its sequence number lies within this
/// many bytes after what the other side last acknowledged: a blind attacker guesses it
/// once in 4,096 tries (RFC 5961 has the receiver check the same). The packet itself is
/// always forwarded: the endpoint makes its own check.
pub const CLOSE_WINDOW: u32 = 1 << 20;

/// A flow whose client sent FIN stays this long after its last packet, so the rest of the
/// close handshake still reaches its backend.
pub const FIN_TIMEOUT_S: u32 = 60;
/// Same after a RST: only stragglers are left.
pub const RST_TIMEOUT_S: u32 = 10;

/// Value of `FLOWS`. Host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// Backend id (index into `BACKENDS`).
    pub backend: u32,
    /// The backend's `generation` when the flow was created.
    pub generation: u32,
    /// `bpf_ktime_get_coarse_ns` of the last client packet.
    pub last_seen_ns: u64,
    /// Listener id.
    pub listener: u32,
    /// `FLOW_F_*` bits.
    pub flags: u32,
    /// TCP, host order: the client's last acknowledgement number (the next byte it
    /// expects from the backend), near which a FIN or RST from the backend is credible
    /// (`CLOSE_WINDOW`). While `FLOW_F_OPENING`: the client's SYN sequence number + 1, the
    /// acknowledgement a backend refusing the connection sends.
    pub client_acked: u32,
    /// TCP, host order: the backend's last acknowledgement number (the next byte it
    /// expects from the client), once `FLOW_F_BACKEND_ACKED` is set; written by the reply
    /// path. A FIN or RST from the client is credible near it (`CLOSE_WINDOW`).
    pub backend_acked: u32,
}
const _: () = assert!(size_of::<Flow>() == 32);

/// Key of `ENDPOINTS`: a backend endpoint as its replies show it (source address, source
/// port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointKey {
    /// Network byte order.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<EndpointKey>() == 8);

/// How many listeners one backend endpoint may serve. A reply is matched to its flow by
/// looking up the client side of the flow for each of them, so the bound is also the
/// reply path's worst case (in lookups); one listener, the common case, costs one.
pub const MAX_ENDPOINT_LISTENERS: usize = 8;

/// One listener a backend endpoint serves: what a reply's source becomes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointListener {
    /// The VIP. Network byte order.
    pub vip: u32,
    /// The listener port. Network byte order.
    pub vport: u16,
    pub _pad: u16,
    /// Listener id, host order.
    pub listener: u32,
}
const _: () = assert!(size_of::<EndpointListener>() == 12);

/// Value of `ENDPOINTS`: the listeners whose flows may reach this backend endpoint. The
/// replies of a flow are translated back without an entry of their own: the client side
/// of the flow is (reply destination, VIP, listener port), and the flow entry found there
/// must name this backend. One flow-table insert per new flow, not two.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint<L = EndpointListener> {
    /// Entries of `listeners` in use, at most `MAX_ENDPOINT_LISTENERS`.
    pub count: u32,
    pub listeners: [L; MAX_ENDPOINT_LISTENERS],
}
const _: () = assert!(size_of::<Endpoint>() == 4 + 12 * MAX_ENDPOINT_LISTENERS);

impl<L: Copy + Default> Endpoint<L> {
    /// The listeners in use (`count` of them, at most `MAX_ENDPOINT_LISTENERS`).
    #[inline(always)]
    pub fn served(&self) -> &[L] {
        let n = (self.count as usize).min(MAX_ENDPOINT_LISTENERS);
        &self.listeners[..n]
    }

    /// An endpoint serving `listeners`, in that order; `None` when there are more than
    /// `MAX_ENDPOINT_LISTENERS`.
    pub fn of(listeners: impl IntoIterator<Item = L>) -> Option<Self> {
        let mut out = Self::default();
        for l in listeners {
            *out.listeners.get_mut(out.count as usize)? = l;
            out.count += 1;
        }
        Some(out)
    }
}

/// Key data of `ACLS`, an LPM trie: the list, matched whole (the first 32 bits of every
/// prefix), then the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AclKey {
    /// Access list id, host order (`Listener::acl_id`).
    pub acl: u32,
    /// Source address or prefix. Network byte order.
    pub addr: u32,
}
const _: () = assert!(size_of::<AclKey>() == 8);

/// The access list of sources no client can have: the LB host's own addresses (kept up to
/// date by the controller) and the config's `refused_client_sources`. A new flow from one of
/// them (or from a VIP) is forged: it is dropped (`DropSpoofedSource`) before it creates any
/// state. Listener access lists get ids from 1, so 0 is free for it.
pub const REFUSED_SOURCES_ACL: u32 = 0;

/// Prefix bits of an `ACLS` key for a CIDR of `len` bits (the list id is always matched).
pub const fn acl_prefix_len(len: u8) -> u32 {
    32 + len as u32
}

/// Key of `AFFINITY`: a client of a listener with `persistence_timeout`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// Listener id, host order.
    pub listener: u32,
    /// Client address. Network byte order.
    pub addr: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 8);

/// Value of `AFFINITY`: where the client's flows go while the entry is fresh.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Affinity {
    /// Backend id and generation, host order.
    pub backend: u32,
    pub generation: u32,
    /// `bpf_ktime_get_coarse_ns` of the client's last packet to the listener.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<Affinity>() == 16);

/// A MAC address as three 16-bit words, each the two bytes the frame holds read as a
/// native `u16`. Ethernet headers and the next-hop records hold MACs at even offsets, so
/// one moves in three 16-bit loads and stores; as a byte array it took six byte moves, and
/// a packet's two MACs were moved twice (record to stack, stack to frame).
pub type Mac = [u16; 3];

/// A MAC address's bytes as `Mac` words.
#[inline(always)]
pub const fn mac_words(b: [u8; 6]) -> Mac {
    [
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
        u16::from_ne_bytes([b[4], b[5]]),
    ]
}

/// The last FIB answer for a backend (`BackendCpu::hop`, `NEXT_HOPS6` has the IPv6 one),
/// so established packets skip `bpf_fib_lookup`. Valid while `stamp_ns` is within
/// `NEXT_HOP_TTL_NS` and the packet came in on `ingress`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// `bpf_ktime_get_coarse_ns` of the FIB lookup; 0 = empty.
    pub stamp_ns: u64,
    /// Ingress ifindex the answer was for (routing may depend on it), host order.
    pub ingress: u32,
    /// Egress ifindex, host order.
    pub egress: u32,
    /// The destination it was looked up for, network byte order: a backend id given to a
    /// new backend never inherits the old one's next hop.
    pub addr: u32,
    /// Egress MTU, host order: longer packets take the FIB path (and its verdict).
    pub mtu: u16,
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub _pad: [u8; 2],
    /// The source address the route prefers, network byte order, when the lookup asked
    /// for it (encapsulation without a configured source); 0 otherwise.
    pub src_addr: u32,
}
const _: () = assert!(size_of::<NextHop>() == 40);

/// How long a cached next hop is trusted: a changed route or neighbour reaches the fast
/// path within this time.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// What one CPU writes for one backend when it sends a client's packet there
/// (`BACKEND_CPU`, `backend_cpu_index`): the next hop it cached and the client → backend
/// counters. 64 bytes, one cache line of the page-aligned array, so that packet touches
/// one line of the backend's besides its `BACKENDS` entry. The counters such a packet does
/// not touch are in a record of their own (`BackendCpuReply`): as the second half of a
/// 128-byte record they doubled the pages a packet's records spread over, and with
/// 10,000 backends and 100,000 flows an established packet cost about 35 ns more. As
/// separate per-CPU maps (a next-hop cache and a counter set) it was two lines and two
/// pointer loads of the kernel's per-CPU indirection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendCpu {
    pub hop: NextHop,
    /// Client → backend packets and bytes (IP length) forwarded.
    pub packets: u64,
    pub bytes: u64,
    /// Flows created by the scheduler (TCP SYN, first UDP packet).
    pub new_flows: u64,
}
const _: () = assert!(size_of::<BackendCpu>() == 64);

/// The rest of one CPU's counters of one backend (`BACKEND_CPU_REPLY`, indexed like
/// `BACKEND_CPU`): the backend's replies and the rarer events. 64 bytes, so no cache line
/// holds two CPUs' records whatever `max_backends` is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendCpuReply {
    /// Backend → client packets and bytes (IP length) forwarded.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Flows created by a mid-flow pickup.
    pub pickups: u64,
    /// Flows moved off a backend that became unusable.
    pub reselected: u64,
    pub _pad: [u64; 4],
}
const _: () = assert!(size_of::<BackendCpuReply>() == 64);

impl BackendCpuReply {
    pub const fn opened(&mut self, how: Opened) {
        let (_, pickups, reselected) = how.counts();
        self.pickups += pickups;
        self.reselected += reselected;
    }
}

impl BackendCpu {
    pub const fn opened(&mut self, how: Opened) {
        self.new_flows += how.counts().0;
    }

    /// The counters of this record and its `reply` record, as a listener's are kept.
    /// Packets are dropped before a backend is known, so a backend's `dropped` is 0.
    pub const fn counters(&self, reply: &BackendCpuReply) -> TrafficCounters {
        TrafficCounters {
            packets: self.packets,
            bytes: self.bytes,
            reply_packets: reply.reply_packets,
            reply_bytes: reply.reply_bytes,
            new_flows: self.new_flows,
            pickups: reply.pickups,
            reselected: reply.reselected,
            dropped: 0,
        }
    }
}

/// The index of `cpu`'s record of backend `id` in `BACKEND_CPU` (and in
/// `BACKEND_CPU_REPLY`), an array of `stride * CPUs` records where `stride` is
/// `max_backends`: each CPU's records are contiguous, so no cache line holds two CPUs'
/// records. `id` must be below `stride` (a larger one is another CPU's record): the
/// controller checks its ids, and every id the data plane passes was read from
/// `BACKENDS`, whose size is `stride`, or from a flow entry it wrote with such an id.
/// The array's own bound check keeps any index inside the map; a check here as well cost
/// the verifier 7,600 more instructions in `lb_xdp`. The controller sizes the array so
/// that `stride * CPUs` fits a `u32` (`backend_cpu_entries`).
#[inline(always)]
pub const fn backend_cpu_index(id: u32, cpu: u32, stride: u32) -> u32 {
    cpu.wrapping_mul(stride).wrapping_add(id)
}

/// `BACKEND_CPU`'s size (and `BACKEND_CPU_REPLY`'s): a record per backend id for each of
/// `cpus` CPUs (the kernel's possible CPUs, which number every CPU a program can run on).
/// `None` when it does not fit a map.
pub const fn backend_cpu_entries(max_backends: u32, cpus: u32) -> Option<u32> {
    max_backends.checked_mul(cpus)
}

/// Per-CPU traffic counters of a listener (`LISTENER_STATS`); a backend's are summed from
/// its `BackendCpu` and `BackendCpuReply` records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct TrafficCounters {
    /// Client → backend packets and bytes (IP length) forwarded.
    pub packets: u64,
    pub bytes: u64,
    /// Backend → client packets and bytes (IP length) reverse-translated.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Flows created by the scheduler (TCP SYN, first UDP packet).
    pub new_flows: u64,
    /// Flows created by a mid-flow pickup (TCP packet without SYN and without an entry).
    pub pickups: u64,
    /// Flows moved off a backend that became unusable.
    pub reselected: u64,
    /// Packets for this listener dropped (no backend, ACL, drain expiry, collision).
    pub dropped: u64,
}
const _: () = assert!(size_of::<TrafficCounters>() == 64);

/// How a flow was opened, as the counters count it: by the scheduler or by a mid-flow
/// pickup, and moved off a backend that became unusable or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub pickup: bool,
    pub reselected: bool,
}

impl Opened {
    /// What it adds to (`new_flows`, `pickups`, `reselected`): of a listener's counters,
    /// and of its backend's, which keeps the first in `BackendCpu` and the other two in
    /// `BackendCpuReply`.
    pub const fn counts(self) -> (u64, u64, u64) {
        (
            !self.pickup as u64,
            self.pickup as u64,
            self.reselected as u64,
        )
    }
}

impl TrafficCounters {
    pub const fn opened(&mut self, how: Opened) {
        let (new_flows, pickups, reselected) = how.counts();
        self.new_flows += new_flows;
        self.pickups += pickups;
        self.reselected += reselected;
    }

    /// Sums the per-CPU copies of a counter set.
    pub fn add(&mut self, other: &Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.reply_packets += other.reply_packets;
        self.reply_bytes += other.reply_bytes;
        self.new_flows += other.new_flows;
        self.pickups += other.pickups;
        self.reselected += other.reselected;
        self.dropped += other.dropped;
    }
}

/// What the program did with a packet and why; index into the per-CPU `COUNTERS` array.
/// Every verdict the program returns is counted under exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Client packet translated and sent to its backend (XDP_TX or redirect).
    Forwarded = 0,
    /// Backend reply translated back to the VIP and sent to the client.
    ReplyForwarded = 1,
    /// Neither IPv4 nor IPv6 (ARP, VLAN-tagged, …): XDP_PASS.
    PassNotIp = 2,
    /// IPv4 but neither TCP nor UDP, nor an ICMP error about a known flow, and not
    /// addressed to a VIP: XDP_PASS.
    PassOtherProtocol = 3,
    /// TCP/UDP not addressed to a listener and not a reply of a known flow: XDP_PASS.
    PassNotForUs = 4,
    /// TCP/UDP to a VIP on a port/protocol with no listener: XDP_DROP. Passed to the
    /// kernel, it would be routed back toward the client side when the VIP is routed to the
    /// LB but not one of its addresses, and bounce until its TTL runs out.
    DropVipNoListener = 5,
    /// TTL ≤ 1: XDP_PASS so the kernel answers ICMP time exceeded, as a router would.
    PassTtlExpired = 6,
    /// Next hop's MAC unknown: the translated packet goes to the kernel, which resolves it.
    PassNeighUnknown = 7,
    /// Translated packet larger than the egress MTU that the program does not answer
    /// itself (no DF, IP options, an ICMP error): XDP_PASS, the kernel fragments it.
    PassFragNeeded = 8,
    /// Egress interface is not one the program is attached to: XDP_PASS (kernel forwards).
    PassNoTxPort = 9,
    /// Frame shorter than an Ethernet header: XDP_DROP.
    DropMalformedEthernet = 10,
    /// Bad IPv4 header (truncated, IHL < 5, version ≠ 4, total length outside the frame):
    /// XDP_DROP.
    DropMalformedIpv4 = 11,
    /// TCP/UDP header truncated or TCP data offset < 5 or past the packet, for a listener
    /// or a known flow: XDP_DROP.
    DropMalformedL4 = 12,
    /// IPv4 fragment addressed to a VIP (no ports to schedule on): XDP_DROP.
    DropFragment = 13,
    /// New flow for a listener with no usable backend: XDP_DROP.
    DropNoBackend = 14,
    /// New flow whose backend-side 5-tuple is already used by another live flow (of
    /// another listener sharing the backend endpoint): XDP_DROP.
    DropReverseCollision = 15,
    /// No route to the backend or client (blackhole, unreachable, prohibited, forwarding
    /// off): XDP_DROP.
    DropNoRoute = 16,
    /// Source denied by the listener's access list: XDP_DROP.
    DropAclDenied = 17,
    /// UDP packet of a flow whose drained backend's drain timeout passed (TCP gets a RST,
    /// `ResetDrainExpired`; a TCP packet the RST cannot be made from, with IP options, is
    /// dropped here too): XDP_DROP.
    DropDrainExpired = 18,
    /// Flow table insert failed (should not happen with an LRU map): XDP_DROP.
    DropFlowInsertFailed = 19,
    /// Event, not a verdict: a TCP flow picked up mid-stream through the Maglev table.
    EventPickup = 20,
    /// Event, not a verdict: a flow moved off a backend that became unusable.
    EventReselected = 21,
    /// Event, not a verdict: a new flow created by the scheduler.
    EventNewFlow = 22,
    /// ICMP error about a reply the LB sent (e.g. fragmentation needed on the client's
    /// path), translated and sent to the flow's backend.
    IcmpToBackend = 23,
    /// ICMP error about a packet the LB sent to a backend (e.g. port unreachable),
    /// translated back to the VIP and sent to the client.
    IcmpToClient = 24,
    /// TCP packet of a flow whose drained backend's drain timeout passed: the LB answers
    /// the client with a RST (XDP_TX) so it stops waiting.
    ResetDrainExpired = 25,
    /// Event, not a verdict: a new flow sent to its client's affinity backend
    /// (`persistence_timeout`).
    EventPersisted = 26,
    /// Event, not a verdict: a flow entry added under a 5-tuple the table did not hold
    /// (not a replacement). Entries added minus entries present = entries the LRU evicted.
    EventFlowInserted = 27,
    /// A later stage of the program could not run (its program is missing from `STAGES`,
    /// which happens only if loading went wrong) or found no hand-off for its packet:
    /// XDP_DROP.
    DropStageFailed = 28,
    /// Another protocol (neither TCP nor UDP), an ICMP message other than an echo request
    /// the LB answers, or an ICMP error about no known flow, addressed to a VIP: XDP_DROP
    /// (for the same reason as `DropVipNoListener`).
    DropVipOtherProtocol = 29,
    /// ICMP echo request to a VIP, answered by the program (XDP_TX) because the
    /// configuration says so (`vip_ping: answer`).
    IcmpEchoReply = 30,
    /// A new flow or pickup whose source no client can have: an address of the LB host, a
    /// VIP, or a prefix of `refused_client_sources` (`REFUSED_SOURCES_ACL`): XDP_DROP,
    /// before any state is created.
    DropSpoofedSource = 31,
    /// Client packet with DF too big for the backend side: answered with ICMP
    /// "fragmentation needed" from the VIP, quoting the packet as the client sent it
    /// (XDP_TX).
    IcmpFragNeededToClient = 32,
    /// Backend reply with DF too big for the client side: answered with ICMP
    /// "fragmentation needed" to the backend, quoting the reply as the backend sent it
    /// (XDP_TX).
    IcmpFragNeededToBackend = 33,
    /// Client packet encapsulated whole (`forwarding: dsr`) and sent to its backend, which
    /// answers the client directly (XDP_TX or redirect).
    Encapsulated = 34,
    /// `forwarding: dsr` without `dsr.source`, and the route to the backend has no
    /// preferred source address (no address on the egress interface): XDP_DROP.
    DropNoSourceAddress = 35,
    /// `forwarding: dsr`: no room in front of the frame for the outer header (a driver
    /// without XDP headroom): XDP_DROP.
    DropNoHeadroom = 36,
    /// `forwarding: dsr`: a client packet without DF that is too big for the backend side
    /// once encapsulated: XDP_DROP (a backend decapsulating in XDP cannot reassemble
    /// fragments of the outer packet). With DF the client is told the MTU instead
    /// (`IcmpFragNeededToClient`).
    DropTooBigForTunnel = 37,
    /// Bad IPv6 header (truncated, version ≠ 6, payload length past the frame) or a
    /// truncated extension header: XDP_DROP.
    DropMalformedIpv6 = 38,
    /// IPv6 to a VIP with extension headers the policy refuses (docs/packet-policy.md): a
    /// routing header with segments left, a hop-by-hop header that is not first, more
    /// than `MAX_EXTENSION_HEADERS` of them or more than `MAX_EXTENSION_BYTES`: XDP_DROP.
    DropExtensionHeader = 39,
    /// ICMPv6 neighbour discovery (router and neighbour solicitations and advertisements,
    /// redirects): always the kernel's, whatever the address: XDP_PASS.
    PassNeighbourDiscovery = 40,
    /// Event, not a verdict: a SYN whose insert into the half-open table found its key
    /// there (a retransmitted SYN), handed back to the entry program, which looks the
    /// entry up and decides with it (`PENDING_F_RECHECK`).
    EventSynRechecked = 41,
}

/// Number of `Reason` values (size of `COUNTERS`).
pub const REASON_COUNT: u32 = 42;
/// Entries of `COUNTERS`: more than `REASON_COUNT`, so reasons can be added without a new
/// pinned map layout.
pub const COUNTER_SLOTS: u32 = 64;
const _: () = assert!(REASON_COUNT <= COUNTER_SLOTS);

impl Reason {
    pub const ALL: [Self; REASON_COUNT as usize] = [
        Self::Forwarded,
        Self::ReplyForwarded,
        Self::PassNotIp,
        Self::PassOtherProtocol,
        Self::PassNotForUs,
        Self::DropVipNoListener,
        Self::PassTtlExpired,
        Self::PassNeighUnknown,
        Self::PassFragNeeded,
        Self::PassNoTxPort,
        Self::DropMalformedEthernet,
        Self::DropMalformedIpv4,
        Self::DropMalformedL4,
        Self::DropFragment,
        Self::DropNoBackend,
        Self::DropReverseCollision,
        Self::DropNoRoute,
        Self::DropAclDenied,
        Self::DropDrainExpired,
        Self::DropFlowInsertFailed,
        Self::EventPickup,
        Self::EventReselected,
        Self::EventNewFlow,
        Self::IcmpToBackend,
        Self::IcmpToClient,
        Self::ResetDrainExpired,
        Self::EventPersisted,
        Self::EventFlowInserted,
        Self::DropStageFailed,
        Self::DropVipOtherProtocol,
        Self::IcmpEchoReply,
        Self::DropSpoofedSource,
        Self::IcmpFragNeededToClient,
        Self::IcmpFragNeededToBackend,
        Self::Encapsulated,
        Self::DropNoSourceAddress,
        Self::DropNoHeadroom,
        Self::DropTooBigForTunnel,
        Self::DropMalformedIpv6,
        Self::DropExtensionHeader,
        Self::PassNeighbourDiscovery,
        Self::EventSynRechecked,
    ];

    /// Name used in metrics and `lb-ctl stats`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::ReplyForwarded => "reply_forwarded",
            Self::PassNotIp => "pass_not_ip",
            Self::PassOtherProtocol => "pass_other_protocol",
            Self::PassNotForUs => "pass_not_for_us",
            Self::DropVipNoListener => "drop_vip_no_listener",
            Self::PassTtlExpired => "pass_ttl_expired",
            Self::PassNeighUnknown => "pass_neighbour_unknown",
            Self::PassFragNeeded => "pass_frag_needed",
            Self::PassNoTxPort => "pass_no_tx_port",
            Self::DropMalformedEthernet => "drop_malformed_ethernet",
            Self::DropMalformedIpv4 => "drop_malformed_ipv4",
            Self::DropMalformedL4 => "drop_malformed_l4",
            Self::DropFragment => "drop_fragment",
            Self::DropNoBackend => "drop_no_backend",
            Self::DropReverseCollision => "drop_reverse_collision",
            Self::DropNoRoute => "drop_no_route",
            Self::DropAclDenied => "drop_acl_denied",
            Self::DropDrainExpired => "drop_drain_expired",
            Self::DropFlowInsertFailed => "drop_flow_insert_failed",
            Self::EventPickup => "event_pickup",
            Self::EventReselected => "event_reselected",
            Self::EventNewFlow => "event_new_flow",
            Self::IcmpToBackend => "icmp_to_backend",
            Self::IcmpToClient => "icmp_to_client",
            Self::ResetDrainExpired => "reset_drain_expired",
            Self::EventPersisted => "event_persisted",
            Self::EventFlowInserted => "event_flow_inserted",
            Self::DropStageFailed => "drop_stage_failed",
            Self::DropVipOtherProtocol => "drop_vip_other_protocol",
            Self::IcmpEchoReply => "icmp_echo_reply",
            Self::DropSpoofedSource => "drop_spoofed_source",
            Self::IcmpFragNeededToClient => "icmp_frag_needed_to_client",
            Self::IcmpFragNeededToBackend => "icmp_frag_needed_to_backend",
            Self::Encapsulated => "encapsulated",
            Self::DropNoSourceAddress => "drop_no_source_address",
            Self::DropNoHeadroom => "drop_no_headroom",
            Self::DropTooBigForTunnel => "drop_too_big_for_tunnel",
            Self::DropMalformedIpv6 => "drop_malformed_ipv6",
            Self::DropExtensionHeader => "drop_extension_header",
            Self::PassNeighbourDiscovery => "pass_neighbour_discovery",
            Self::EventSynRechecked => "event_syn_rechecked",
        }
    }

    /// The XDP verdict that goes with this reason (`None` for events).
    pub const fn verdict(self) -> Option<Verdict> {
        match self {
            Self::Forwarded
            | Self::ReplyForwarded
            | Self::IcmpToBackend
            | Self::IcmpToClient
            | Self::ResetDrainExpired
            | Self::IcmpEchoReply
            | Self::IcmpFragNeededToClient
            | Self::IcmpFragNeededToBackend
            | Self::Encapsulated => Some(Verdict::Transmit),
            Self::PassNotIp
            | Self::PassNeighbourDiscovery
            | Self::PassOtherProtocol
            | Self::PassNotForUs
            | Self::PassTtlExpired
            | Self::PassNeighUnknown
            | Self::PassFragNeeded
            | Self::PassNoTxPort => Some(Verdict::Pass),
            Self::DropMalformedEthernet
            | Self::DropMalformedIpv4
            | Self::DropMalformedL4
            | Self::DropFragment
            | Self::DropNoBackend
            | Self::DropReverseCollision
            | Self::DropNoRoute
            | Self::DropAclDenied
            | Self::DropDrainExpired
            | Self::DropFlowInsertFailed
            | Self::DropStageFailed
            | Self::DropVipNoListener
            | Self::DropVipOtherProtocol
            | Self::DropSpoofedSource
            | Self::DropNoSourceAddress
            | Self::DropNoHeadroom
            | Self::DropTooBigForTunnel
            | Self::DropMalformedIpv6
            | Self::DropExtensionHeader => Some(Verdict::Drop),
            Self::EventPickup
            | Self::EventReselected
            | Self::EventNewFlow
            | Self::EventPersisted
            | Self::EventFlowInserted
            | Self::EventSynRechecked => None,
        }
    }
}

/// XDP verdicts as the policy documents them (XDP_TX and XDP_REDIRECT are both "Transmit").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Transmit,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made of integers only, with explicit padding.
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for Listener {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for TableMeta {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for AclKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for PendingFlow {}
    unsafe impl aya::Pod for TooBig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener and its backend count an opening alike, the backend across its two
    /// records.
    #[test]
    fn an_opening_counts_the_same_for_a_listener_and_its_backend() {
        for (pickup, reselected) in [(false, false), (true, false), (false, true), (true, true)] {
            let how = Opened { pickup, reselected };
            let mut listener = TrafficCounters::default();
            let mut backend = BackendCpu::default();
            let mut reply = BackendCpuReply::default();
            listener.opened(how);
            backend.opened(how);
            reply.opened(how);
            assert_eq!(backend.counters(&reply), listener, "{how:?}");
            assert_eq!(
                (listener.new_flows, listener.pickups, listener.reselected),
                (u64::from(!pickup), u64::from(pickup), u64::from(reselected)),
                "{how:?}"
            );
        }
    }

    /// The flow keys built from words hold what a field-by-field literal holds, padding
    /// zero, in either family.
    #[test]
    fn flow_keys_built_from_words_are_the_literal_keys() {
        let (sport, dport) = (40_000u16.to_be(), 80u16.to_be());
        let (src, dst) = (
            u32::from_be_bytes([198, 18, 0, 1]).to_be(),
            u32::from_be_bytes([198, 18, 0, 10]).to_be(),
        );
        assert_eq!(
            FlowKey::new(src, dst, sport, dport, 17),
            FlowKey {
                src_addr: src,
                dst_addr: dst,
                src_port: sport,
                dst_port: dport,
                protocol: 17,
                _pad: [0; 3],
            }
        );
        let (src6, dst6) = (
            [0x2001_0db8u32.to_be(), 0, 0, 1u32.to_be()],
            [0x2001_0db8u32.to_be(), 0, 0, 0x100u32.to_be()],
        );
        assert_eq!(
            crate::FlowKey6::new(src6, dst6, sport, dport, 6),
            crate::FlowKey6 {
                src_addr: src6,
                dst_addr: dst6,
                src_port: sport,
                dst_port: dport,
                protocol: 6,
                _pad: [0; 3],
            }
        );
    }

    /// A slot answers with a record only for the key it owns, sends shared slots to
    /// `LISTENERS`, and says "not a listener" for every other key.
    #[test]
    fn a_slot_answers_only_for_its_own_key() {
        let key = ListenerKey::new(
            u32::from_be_bytes([198, 18, 0, 10]).to_be(),
            80u16.to_be(),
            6,
        );
        let other = ListenerKey::new(key.addr, 443u16.to_be(), 6);
        let udp = ListenerKey::new(key.addr, key.port, 17);
        assert_eq!(slot_answer(0, &key), SlotAnswer::Absent);
        let first = slot_word(&key, SLOT_OWNED);
        let second = slot_word(&key, SLOT_OWNED | SLOT_SECOND);
        assert_eq!(slot_answer(first, &key), SlotAnswer::Record(false));
        assert_eq!(slot_answer(second, &key), SlotAnswer::Record(true));
        for k in [other, udp, ListenerKey::vip_marker(key.addr)] {
            assert_eq!(slot_answer(first, &k), SlotAnswer::Absent, "{k:?}");
        }
        let shared = slot_word(&ListenerKey::default(), SLOT_SHARED);
        assert_eq!(slot_answer(shared, &key), SlotAnswer::Ask);
        assert_eq!(slot_state(second), SLOT_OWNED | SLOT_SECOND);
        assert_eq!(
            slot_record(first),
            core::mem::offset_of!(ListenerSlot, first)
        );
        assert_eq!(
            slot_record(second),
            core::mem::offset_of!(ListenerSlot, second)
        );
        assert_eq!(slot_record(0), 0, "a scratch slot's word names `first`");
        // A word in no state is no key's, even the all-zero key's.
        assert_eq!(slot_answer(slot_word(&key, 0), &key), SlotAnswer::Absent);
    }

    /// Twice as many slots as `LISTENERS` has entries, a power of two; every key's slot
    /// inside the index; the keys of a /24 of VIPs on one port spread over the slots.
    #[test]
    fn listener_index_size_and_spread() {
        for (max, bits) in [(1, 2), (64, 8), (100, 9), (4096, 14)] {
            assert_eq!(listener_index_bits(max), bits, "max_listeners {max}");
            assert!(listener_index_slots(max) >= 4 * max);
        }
        let bits = listener_index_bits(64);
        let mut used = std::collections::BTreeSet::new();
        for host in 0..64u8 {
            let addr = u32::from_be_bytes([198, 18, 1, host]).to_be();
            let slot = listener_slot(&ListenerKey::new(addr, 80u16.to_be(), 6), bits);
            assert!(slot < listener_index_slots(64));
            used.insert(slot);
        }
        println!(
            "64 keys in {} of {} slots",
            used.len(),
            listener_index_slots(64)
        );
        assert!(used.len() >= 48, "64 keys in only {} slots", used.len());
    }

    /// Every CPU's records of every backend have an index of their own, inside the array,
    /// each CPU's contiguous: no record (nor, at 128 bytes each in a page-aligned array, any
    /// cache line) is shared by two CPUs.
    #[test]
    fn each_cpu_has_its_own_run_of_backend_records() {
        let (stride, cpus) = (1000, 8);
        let entries = backend_cpu_entries(stride, cpus).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for cpu in 0..cpus {
            for id in 0..stride {
                let i = backend_cpu_index(id, cpu, stride);
                assert!(i < entries);
                assert_eq!(
                    i / stride,
                    cpu,
                    "record of backend {id} outside CPU {cpu}'s run"
                );
                assert!(seen.insert(i));
            }
        }
        assert_eq!(seen.len() as u32, entries);
        assert_eq!(backend_cpu_entries(1 << 20, 4096), None);
        assert_eq!(backend_cpu_entries(1 << 20, 4095), Some((1 << 20) * 4095));
    }

    #[test]
    fn a_backends_two_records_give_its_counters() {
        let r = BackendCpu {
            packets: 1,
            bytes: 2,
            new_flows: 3,
            ..BackendCpu::default()
        };
        let reply = BackendCpuReply {
            reply_packets: 4,
            reply_bytes: 5,
            pickups: 6,
            reselected: 7,
            ..BackendCpuReply::default()
        };
        assert_eq!(
            r.counters(&reply),
            TrafficCounters {
                packets: 1,
                bytes: 2,
                reply_packets: 4,
                reply_bytes: 5,
                new_flows: 3,
                pickups: 6,
                reselected: 7,
                dropped: 0,
            }
        );
    }

    #[test]
    fn keys_built_from_words_equal_their_fields() {
        let flow = FlowKey::new(0x0102_0304, 0x0506_0708, 0x090a, 0x0b0c, PROTO_TCP);
        assert_eq!(
            flow,
            FlowKey {
                src_addr: 0x0102_0304,
                dst_addr: 0x0506_0708,
                src_port: 0x090a,
                dst_port: 0x0b0c,
                protocol: PROTO_TCP,
                _pad: [0; 3],
            }
        );
        let listener = ListenerKey::new(0x0102_0304, 0x090a, PROTO_UDP);
        assert_eq!(
            listener,
            ListenerKey {
                addr: 0x0102_0304,
                port: 0x090a,
                protocol: PROTO_UDP,
                _pad: 0,
            }
        );
        assert_eq!(
            ListenerKey::vip_marker(7),
            ListenerKey {
                addr: 7,
                port: 0,
                protocol: 0,
                _pad: 0,
            }
        );
    }

    #[test]
    fn reasons_are_dense_and_named_once() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REASON_COUNT as usize);
    }

    #[test]
    fn scheduler_round_trips() {
        for v in 0..=4 {
            assert_eq!(Scheduler::from_u8(v).map(|s| s as u8), Some(v));
        }
        assert_eq!(Scheduler::from_u8(5), None);
    }
}
