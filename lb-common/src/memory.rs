//! The decision's tables in memory (`decide::Tables`), for unit tests of the decision and
//! of what `lb-ctl explain` makes of it. Lookups behave as the maps do: an access list
//! matches by longest prefix, an index past a table's end reads `NO_BACKEND`.

use std::collections::HashMap;

use crate::{
    Affinity, Backend, Flow, Listener, NO_BACKEND, TableMeta,
    decide::Tables,
    family::{Family, V4},
};

/// The tables of one address family.
#[derive(Clone, Debug)]
pub struct MemoryTables<F: Family = V4> {
    pub listeners: HashMap<F::ListenerKey, Listener>,
    /// (access list id, address in network byte order, prefix length).
    pub acls: Vec<(u32, F::Addr, u8)>,
    pub flows: HashMap<F::FlowKey, Flow>,
    pub backends: HashMap<u32, Backend>,
    pub table_meta: HashMap<u32, TableMeta>,
    /// By (listener id, client address).
    pub affinity: HashMap<(u32, F::Addr), Affinity>,
    /// `MAGLEV` and `SEQUENCE` by index (absent: `NO_BACKEND`).
    pub maglev: HashMap<u32, u32>,
    pub sequence: HashMap<u32, u32>,
    /// Round-robin position by listener id (of the one CPU these tables stand for).
    pub cursors: HashMap<u32, u32>,
    pub active_flows: HashMap<u32, u32>,
}

impl<F: Family> Default for MemoryTables<F> {
    fn default() -> Self {
        Self {
            listeners: HashMap::new(),
            acls: Vec::new(),
            flows: HashMap::new(),
            backends: HashMap::new(),
            table_meta: HashMap::new(),
            affinity: HashMap::new(),
            maglev: HashMap::new(),
            sequence: HashMap::new(),
            cursors: HashMap::new(),
            active_flows: HashMap::new(),
        }
    }
}

impl<F: Family> Tables for MemoryTables<F> {
    type Family = F;
    type Ref<'a, T: 'a> = &'a T;

    fn listener(&self, key: &F::ListenerKey) -> Option<&Listener> {
        self.listeners.get(key)
    }

    fn acl_matches(&self, acl: u32, addr: F::Addr) -> bool {
        self.acls
            .iter()
            .any(|&(list, prefix, len)| list == acl && F::prefix_contains(prefix, len, addr))
    }

    fn flow(&self, key: &F::FlowKey) -> Option<&Flow> {
        self.flows.get(key)
    }

    fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(&id)
    }

    fn table_meta(&self, table: u32) -> Option<&TableMeta> {
        self.table_meta.get(&table)
    }

    fn affinity(&self, listener: u32, addr: F::Addr) -> Option<&Affinity> {
        self.affinity.get(&(listener, addr))
    }

    fn maglev(&self, index: u32) -> u32 {
        self.maglev.get(&index).copied().unwrap_or(NO_BACKEND)
    }

    fn sequence(&self, index: u32) -> u32 {
        self.sequence.get(&index).copied().unwrap_or(NO_BACKEND)
    }

    fn take_cursor(&self, listener: u32) -> u32 {
        self.cursors.get(&listener).copied().unwrap_or(0)
    }

    fn active_flows(&self, id: u32) -> u32 {
        self.active_flows.get(&id).copied().unwrap_or(0)
    }
}

/// A small setup the tests of the decision and of `explain` start from: one listener
/// (id 1, table slot 2) on 198.19.0.100:80 with three backends (ids 0, 1, 2 at
/// 198.18.1.10..12:8080), and every table entry the example packet can hit filled in.
pub mod example {
    use super::MemoryTables;
    use crate::{
        BACKEND_F_USABLE, Backend, Flow, Listener, ListenerKey, MAGLEV_TABLE_SIZE,
        SEQUENCE_TABLE_SIZE, Scheduler, TableMeta,
        decide::Packet,
        select::{maglev_index_source, maglev_index_tuple},
    };

    pub const S: u64 = 1_000_000_000;
    /// The clock of the examples.
    pub const NOW: u64 = 1000 * S;
    pub const VIP: u32 = u32::from_ne_bytes([198, 19, 0, 100]);
    pub const CLIENT: u32 = u32::from_ne_bytes([198, 18, 0, 7]);

    /// 198.18.0.7:40000 → 198.19.0.100:80.
    pub fn packet(protocol: u8, tcp_flags: u8) -> Packet {
        Packet {
            src_addr: CLIENT,
            dst_addr: VIP,
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol,
            tcp_flags,
            ttl: 64,
        }
    }

    /// Backend `id`: healthy, weight 100, generation 1.
    pub fn backend(id: u32) -> Backend {
        Backend {
            addr: u32::from_ne_bytes([198, 18, 1, 10 + id as u8]),
            port: 8080u16.to_be(),
            flags: BACKEND_F_USABLE,
            weight: 100,
            generation: 1,
            ..Default::default()
        }
    }

    /// A flow entry on `backend`, idle for `idle_s` seconds at `NOW`.
    pub fn flow(backend: u32, flags: u32, idle_s: u64) -> Flow {
        Flow {
            backend,
            generation: 1,
            last_seen_ns: NOW - idle_s * S,
            listener: 1,
            flags,
            ..Default::default()
        }
    }

    /// The listener with `scheduler` for `protocol`. The sequence is 0, 1, 2; the Maglev
    /// slot of the example's source address holds 1, the one of its 4-tuple holds 2.
    pub fn tables(scheduler: Scheduler, protocol: u8) -> MemoryTables {
        let listener = Listener {
            id: 1,
            table: 2,
            scheduler: scheduler as u8,
            established_timeout_s: 900,
            udp_timeout_s: 30,
            ..Default::default()
        };
        let p = packet(protocol, 0);
        let mut t = MemoryTables::default();
        t.listeners.insert(p.listener_key(), listener);
        t.listeners
            .insert(ListenerKey::vip_marker(VIP), Listener::default());
        for id in 0..3 {
            t.backends.insert(id, backend(id));
            t.sequence.insert(2 * SEQUENCE_TABLE_SIZE + id, id);
        }
        let meta = TableMeta {
            backends: 3,
            sequence_len: 3,
            maglev_base: 2 * MAGLEV_TABLE_SIZE,
            maglev_size: MAGLEV_TABLE_SIZE,
        };
        t.table_meta.insert(2, meta);
        t.maglev.insert(maglev_index_source(&meta, p.src_addr), 1);
        t.maglev.insert(
            maglev_index_tuple(&meta, p.src_addr, p.dst_addr, p.src_port, p.dst_port),
            2,
        );
        t
    }
}
