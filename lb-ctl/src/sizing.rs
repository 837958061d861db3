//! What the data plane's maps take of the kernel's memory, from their layouts
//! (`pins::expected_layout`, the sizes the build and the config give them) and the
//! kernel's own accounting of each map type (`map_mem_usage`, Linux 6.4 and later, which
//! `/proc/<pid>/fdinfo` shows as `memlock`). The sizing table of docs/config.md is this
//! module's output for common sizes, and a test compares the figures with what the kernel
//! reports for a loaded data plane.

use std::fmt::Write as _;

use lb_common::names;

use crate::{dataplane::MapSizes, pins};

/// How the kernel lays out a map type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `BPF_MAP_TYPE_ARRAY`: every value, 8-byte aligned, allocated at creation.
    Array,
    /// The same with `BPF_F_MMAPABLE`: whole pages.
    MmapableArray,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`: every value once per CPU.
    PerCpuArray,
    /// `BPF_MAP_TYPE_LRU_HASH`: every element allocated at creation.
    LruHash,
    /// `BPF_MAP_TYPE_HASH` with `BPF_F_NO_PREALLOC`: buckets at creation, an element per
    /// entry present (counted here as if full).
    HashNoPrealloc,
    /// `BPF_MAP_TYPE_LPM_TRIE`: a node per entry present (counted here as if full).
    LpmTrie,
    /// Program arrays and device maps: a few pointers per slot.
    Small,
}

/// The kind of each map of the program.
fn kind(name: &str) -> Kind {
    match name {
        names::MAGLEV
        | names::SEQUENCE
        | names::FLOW_FILTER
        | names::BACKEND_CPU
        | names::BACKEND_CPU_REPLY
        | names::LISTENER_INDEX => Kind::MmapableArray,
        names::BACKENDS
        | names::BACKENDS6
        | names::ENCAP_SOURCES6
        | names::TABLE_META
        | names::ACTIVE_FLOWS
        | names::ADDRESS_FILTER => Kind::Array,
        names::CURSORS | names::LISTENER_STATS | names::COUNTERS | names::NEXT_HOPS6 => {
            Kind::PerCpuArray
        }
        names::FLOWS
        | names::HALF_OPEN
        | names::AFFINITY
        | names::FLOWS6
        | names::HALF_OPEN6
        | names::AFFINITY6 => Kind::LruHash,
        names::LISTENERS | names::ENDPOINTS | names::LISTENERS6 | names::ENDPOINTS6 => {
            Kind::HashNoPrealloc
        }
        names::ACLS | names::ACLS6 => Kind::LpmTrie,
        _ => Kind::Small,
    }
}

/// `struct htab_elem` on 64-bit kernels: the hash-list node, the LRU node, the hash.
const HTAB_ELEM: u64 = 48;
/// `struct bucket`: list head and spinlock.
const BUCKET: u64 = 16;
/// `struct llist_node`, kept beside each element of a map without preallocation.
const LLIST_NODE: u64 = 8;
/// `struct lpm_trie_node` before its key bytes.
const LPM_NODE: u64 = 40;
const PAGE: u64 = 4096;

const fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// One map's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: &'static str,
    pub kind: Kind,
    pub entries: u32,
    /// Bytes, headers of the map itself left out (a few hundred bytes each).
    pub bytes: u64,
}

/// The memory of `name` with `key` and `value` bytes and `entries`, on `cpus` CPUs, as
/// the kernel accounts it; maps without preallocation counted full.
pub fn map_memory(name: &'static str, key: u32, value: u32, entries: u32, cpus: u32) -> MapMemory {
    let kind = kind(name);
    let (key, value, n, cpus) = (
        u64::from(key),
        round_up(u64::from(value), 8),
        u64::from(entries),
        u64::from(cpus),
    );
    let buckets = u64::from(entries.max(1).next_power_of_two()) * BUCKET;
    let elem = HTAB_ELEM + round_up(key, 8) + value;
    let bytes = match kind {
        Kind::Array => n * value,
        Kind::MmapableArray => round_up(n * value, PAGE),
        Kind::PerCpuArray => n * 8 + n * value * cpus,
        Kind::LruHash => buckets + n * elem,
        Kind::HashNoPrealloc => buckets + n * (elem + LLIST_NODE),
        Kind::LpmTrie => n * (LPM_NODE + key + value),
        Kind::Small => n * 8,
    };
    MapMemory {
        name,
        kind,
        entries,
        bytes,
    }
}

/// Every pinned map of a data plane of `sizes` on `cpus` CPUs.
pub fn data_plane(sizes: &MapSizes, cpus: u32) -> Vec<MapMemory> {
    pins::expected_layout(sizes, cpus)
        .into_iter()
        .map(|(name, key, value, entries)| map_memory(name, key, value, entries, cpus))
        .collect()
}

/// The CPUs the kernel allocates per-CPU values for: every possible one, not only those
/// online (aya reads `/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> Option<u32> {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// Their sum.
pub fn total(maps: &[MapMemory]) -> u64 {
    maps.iter().map(|m| m.bytes).sum()
}

/// Bytes as MiB with one decimal (GiB from 1 GiB on).
pub fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// The per-entry figures and the table of docs/config.md ("Sizing"), as Markdown.
pub fn sizing_tables() -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| map | kind | entries | bytes per entry (hash maps: with their bucket) | per CPU |\n|---|---|---|---|---|"
    );
    // 1024 backends: `BACKEND_CPU`'s records of one CPU fill whole pages.
    let reference = MapSizes::new(1 << 20, lb_common::DEFAULT_MAX_LISTENERS, 1024);
    // What a second CPU adds is the per-CPU part.
    for (m, two) in data_plane(&reference, 1)
        .into_iter()
        .zip(data_plane(&reference, 2))
    {
        let entries = u64::from(m.entries.max(1));
        let per_cpu = two.bytes - m.bytes;
        let per_entry = (m.bytes - per_cpu) as f64 / entries as f64;
        let _ = writeln!(
            o,
            "| `{}` | {} | {} | {per_entry:.0} | {} |",
            m.name,
            kind_name(m.kind),
            entries_rule(m.name),
            if per_cpu == 0 {
                "–".to_owned()
            } else {
                format!("{} B per entry", per_cpu / entries)
            }
        );
    }
    let _ = writeln!(
        o,
        "\n| flow_table_size | max_backends | CPUs | flow tables (`FLOWS`, `HALF_OPEN`, `AFFINITY`, `FLOW_FILTER` and their IPv6 namesakes) | everything else | total |\n|---|---|---|---|---|---|"
    );
    for flows in [1u32 << 20, 16 << 20] {
        for backends in [1000u32, 65536] {
            for cpus in [2u32, 64] {
                let sizes = MapSizes::new(flows, lb_common::DEFAULT_MAX_LISTENERS, backends);
                let maps = data_plane(&sizes, cpus);
                let flow_tables: u64 = maps
                    .iter()
                    .filter(|m| {
                        [
                            names::FLOWS,
                            names::HALF_OPEN,
                            names::AFFINITY,
                            names::FLOW_FILTER,
                            names::FLOWS6,
                            names::HALF_OPEN6,
                            names::AFFINITY6,
                        ]
                        .contains(&m.name)
                    })
                    .map(|m| m.bytes)
                    .sum();
                let all = total(&maps);
                let _ = writeln!(
                    o,
                    "| {} | {} | {cpus} | {} | {} | {} |",
                    entries_label(flows),
                    thousands(u64::from(backends)),
                    human(flow_tables),
                    human(all - flow_tables),
                    human(all)
                );
            }
        }
    }
    o
}

fn entries_label(n: u32) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else {
        n.to_string()
    }
}

/// `n` with a comma every three digits, as the docs write counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Array => "array",
        Kind::MmapableArray => "array (mmapable)",
        Kind::PerCpuArray => "per-CPU array",
        Kind::LruHash => "LRU hash",
        Kind::HashNoPrealloc => "hash, no prealloc",
        Kind::LpmTrie => "LPM trie",
        Kind::Small => "program/device map",
    }
}

/// How a map's entries follow from the config.
fn entries_rule(name: &str) -> &'static str {
    match name {
        names::FLOWS | names::AFFINITY => "`flow_table_size`",
        names::HALF_OPEN => "`flow_table_size` / 4, at least 262,144",
        names::LISTENERS => "2 × `max_listeners`",
        names::LISTENER_INDEX => {
            "4 × `max_listeners` rounded up to a power of two, + one per possible CPU"
        }
        // Two backend ids an entry.
        names::MAGLEV => "`maglev_slots` / 2 (default: `max_listeners` × 65,537)",
        names::SEQUENCE => "`max_listeners` × 65,536",
        names::TABLE_META => "`max_listeners` × 2",
        names::CURSORS | names::LISTENER_STATS | names::ENCAP_SOURCES6 => "`max_listeners`",
        names::BACKENDS | names::ENDPOINTS | names::ACTIVE_FLOWS => "`max_backends`",
        names::BACKEND_CPU | names::BACKEND_CPU_REPLY => "`max_backends` per possible CPU",
        names::COUNTERS => "64",
        names::ACLS => "16,384 access-list entries",
        names::ADDRESS_FILTER => "4,097 words",
        names::FLOW_FILTER => {
            "`flow_table_size` rounded up to a power of two, / 4, + 8 (two bitmaps of 8 bits per flow entry)"
        }
        names::TX_PORTS => "one per interface",
        names::LISTENERS6 => "2 × `max_listeners`",
        names::FLOWS6 | names::AFFINITY6 => {
            "`flow_table_size` / 4, at least 1,024 (at most `flow_table_size`)"
        }
        names::HALF_OPEN6 => "`FLOWS6` / 4, at least 65,536",
        names::BACKENDS6 | names::ENDPOINTS6 | names::NEXT_HOPS6 => "`max_backends`",
        names::ACLS6 => "16,384 access-list entries",
        _ => "fixed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's figures for these layouts (6.18), by its formulas worked by hand.
    #[test]
    fn the_flow_table_costs_its_elements_and_buckets() {
        let m = map_memory(names::FLOWS, 16, 32, 1 << 20, 2);
        assert_eq!(m.bytes, (1 << 20) * 16 + (1 << 20) * (48 + 16 + 32));
        let m = map_memory(names::NEXT_HOPS6, 4, 40, 1000, 64);
        assert_eq!(m.bytes, 1000 * 8 + 1000 * 40 * 64);
        let m = map_memory(names::MAGLEV, 4, 8, 100, 2);
        assert_eq!(m.bytes, 4096);
    }

    #[test]
    fn docs_config_holds_the_current_sizing_tables() {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md"),
        )
        .expect("docs/config.md");
        let tables = sizing_tables();
        assert!(
            docs.contains(&tables),
            "docs/config.md's sizing tables differ from lb_ctl::sizing's; put these in \
             (between the sizing markers):\n{tables}"
        );
    }
}
