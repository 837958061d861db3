//! Each address family's tables, behind one trait, so the code that works on flows
//! (`flow`, `new_flow`) is written once and compiled for each family: IPv4 keeps its small
//! keys, IPv6 gets its own maps, and neither pays for the other.

use aya_ebpf::maps::{HashMap, LruHashMap};
use lb_common::{
    Addr6, Affinity, AffinityKey, AffinityKey6, Backend, Endpoint, Endpoint6, EndpointKey,
    EndpointKey6, EndpointListener, EndpointListener6, Family, Flow, Listener, V4, V6,
};

use crate::maps::{
    AFFINITY, AFFINITY6, BACKENDS6, ENDPOINTS, ENDPOINTS6, FLOWS, FLOWS6, HALF_OPEN, HALF_OPEN6,
    LISTENERS, LISTENERS6,
};

/// An endpoint's listener of either family: the VIP and port a reply's source becomes.
pub trait Served: Copy {
    type Addr: Copy;
    fn vip(&self) -> Self::Addr;
    fn vport(&self) -> u16;
    fn listener(&self) -> u32;
}

impl Served for EndpointListener {
    type Addr = u32;

    #[inline(always)]
    fn vip(&self) -> u32 {
        self.vip
    }

    #[inline(always)]
    fn vport(&self) -> u16 {
        self.vport
    }

    #[inline(always)]
    fn listener(&self) -> u32 {
        self.listener
    }
}

impl Served for EndpointListener6 {
    type Addr = Addr6;

    #[inline(always)]
    fn vip(&self) -> Addr6 {
        self.vip
    }

    #[inline(always)]
    fn vport(&self) -> u16 {
        self.vport
    }

    #[inline(always)]
    fn listener(&self) -> u32 {
        self.listener
    }
}

/// A family's tables.
pub trait Tables: Family {
    type AffinityKey: Copy;
    type EndpointKey: Copy;
    type Served: Served<Addr = Self::Addr> + Copy + Default;

    fn listeners() -> &'static HashMap<Self::ListenerKey, Listener>;
    fn flows() -> &'static LruHashMap<Self::FlowKey, Flow>;
    fn half_open() -> &'static LruHashMap<Self::FlowKey, Flow>;
    fn endpoints() -> &'static HashMap<Self::EndpointKey, Endpoint<Self::Served>>;
    fn affinity() -> &'static LruHashMap<Self::AffinityKey, Affinity>;
    fn affinity_key(listener: u32, addr: Self::Addr) -> Self::AffinityKey;
    fn endpoint_key(addr: Self::Addr, port: u16, protocol: u8) -> Self::EndpointKey;
    fn endpoint_protocol(key: &Self::EndpointKey) -> u8;
    /// Whether backend `id` (`b`, its `BACKENDS` entry) is the endpoint `key`.
    fn backend_is(id: u32, b: &Backend, key: &Self::EndpointKey) -> bool;
    /// The endpoint of backend `id` (`b`) for `protocol`; `None` if it has no address of
    /// this family.
    fn backend_endpoint(id: u32, b: &Backend, protocol: u8) -> Option<Self::EndpointKey>;
    /// Records that `key` was just inserted into `flows()` (the filter of established keys).
    fn note_insert(key: &Self::FlowKey);
}

impl Tables for V4 {
    type AffinityKey = AffinityKey;
    type EndpointKey = EndpointKey;
    type Served = EndpointListener;

    #[inline(always)]
    fn listeners() -> &'static HashMap<Self::ListenerKey, Listener> {
        &LISTENERS
    }

    #[inline(always)]
    fn flows() -> &'static LruHashMap<Self::FlowKey, Flow> {
        &FLOWS
    }

    #[inline(always)]
    fn half_open() -> &'static LruHashMap<Self::FlowKey, Flow> {
        &HALF_OPEN
    }

    #[inline(always)]
    fn endpoints() -> &'static HashMap<EndpointKey, Endpoint> {
        &ENDPOINTS
    }

    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKey, Affinity> {
        &AFFINITY
    }

    #[inline(always)]
    fn affinity_key(listener: u32, addr: u32) -> AffinityKey {
        AffinityKey { listener, addr }
    }

    #[inline(always)]
    fn endpoint_key(addr: u32, port: u16, protocol: u8) -> EndpointKey {
        EndpointKey {
            addr,
            port,
            protocol,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn endpoint_protocol(key: &EndpointKey) -> u8 {
        key.protocol
    }

    #[inline(always)]
    fn backend_is(_id: u32, b: &Backend, key: &EndpointKey) -> bool {
        b.addr == key.addr && b.port == key.port
    }

    #[inline(always)]
    fn backend_endpoint(_id: u32, b: &Backend, protocol: u8) -> Option<EndpointKey> {
        Some(Self::endpoint_key(b.addr, b.port, protocol))
    }

    #[inline(always)]
    fn note_insert(key: &Self::FlowKey) {
        crate::flow_filter::note_insert(key);
    }
}

impl Tables for V6 {
    type AffinityKey = AffinityKey6;
    type EndpointKey = EndpointKey6;
    type Served = EndpointListener6;

    #[inline(always)]
    fn listeners() -> &'static HashMap<Self::ListenerKey, Listener> {
        &LISTENERS6
    }

    #[inline(always)]
    fn flows() -> &'static LruHashMap<Self::FlowKey, Flow> {
        &FLOWS6
    }

    #[inline(always)]
    fn half_open() -> &'static LruHashMap<Self::FlowKey, Flow> {
        &HALF_OPEN6
    }

    #[inline(always)]
    fn endpoints() -> &'static HashMap<EndpointKey6, Endpoint6> {
        &ENDPOINTS6
    }

    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKey6, Affinity> {
        &AFFINITY6
    }

    #[inline(always)]
    fn affinity_key(listener: u32, addr: Addr6) -> AffinityKey6 {
        AffinityKey6 { listener, addr }
    }

    #[inline(always)]
    fn endpoint_key(addr: Addr6, port: u16, protocol: u8) -> EndpointKey6 {
        EndpointKey6 {
            addr,
            port,
            protocol,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn endpoint_protocol(key: &EndpointKey6) -> u8 {
        key.protocol
    }

    #[inline(always)]
    fn backend_is(id: u32, b: &Backend, key: &EndpointKey6) -> bool {
        b.port == key.port && BACKENDS6.get(id).is_some_and(|a| a.addr == key.addr)
    }

    #[inline(always)]
    fn backend_endpoint(id: u32, b: &Backend, protocol: u8) -> Option<EndpointKey6> {
        let a = BACKENDS6.get(id)?;
        Some(Self::endpoint_key(a.addr, b.port, protocol))
    }

    #[inline(always)]
    fn note_insert(key: &Self::FlowKey) {
        crate::flow_filter::note_insert(key);
    }
}
