//! The decision's tables in memory (`decide::Tables`), for unit tests of the decision and
//! of what `lb-ctl explain` makes of it. Lookups behave as the maps do: an access list
//! matches by longest prefix, an index past a table's end reads `NO_BACKEND`.

use std::collections::HashMap;

use crate::{
    AclKey, Affinity, AffinityKey, Backend, Flow, FlowKey, Listener, ListenerKey, NO_BACKEND,
    TableMeta, decide::Tables,
};

#[derive(Clone, Debug, Default)]
pub struct MemoryTables {
    pub listeners: HashMap<ListenerKey, Listener>,
    /// (access list id, address in network byte order, prefix length).
    pub acls: Vec<(u32, u32, u8)>,
    pub flows: HashMap<FlowKey, Flow>,
    pub backends: HashMap<u32, Backend>,
    pub table_meta: HashMap<u32, TableMeta>,
    pub affinity: HashMap<AffinityKey, Affinity>,
    /// `MAGLEV` and `SEQUENCE` by index (absent: `NO_BACKEND`).
    pub maglev: HashMap<u32, u32>,
    pub sequence: HashMap<u32, u32>,
    /// Round-robin position by listener id (of the one CPU these tables stand for).
    pub cursors: HashMap<u32, u32>,
    pub active_flows: HashMap<u32, u32>,
}

impl Tables for MemoryTables {
    type Ref<'a, T: 'a> = &'a T;

    fn listener(&self, key: &ListenerKey) -> Option<&Listener> {
        self.listeners.get(key)
    }

    fn acl_matches(&self, key: &AclKey) -> bool {
        let addr = u32::from_be(key.addr);
        self.acls.iter().any(|&(acl, prefix, len)| {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            acl == key.acl && addr & mask == u32::from_be(prefix) & mask
        })
    }

    fn flow(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.get(key)
    }

    fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.get(&id)
    }

    fn table_meta(&self, table: u32) -> Option<&TableMeta> {
        self.table_meta.get(&table)
    }

    fn affinity(&self, key: &AffinityKey) -> Option<&Affinity> {
        self.affinity.get(key)
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
