//! `lb-ctl flows`: the flow table's entries, filtered and bounded, read off the
//! controller's lock like the sweep (a table of millions takes a while to walk).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::Context as _;
use lb_common::{
    FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_PICKUP, FLOW_F_RST, Flow, FlowKey, FlowKey6,
    LISTENER_F_VIP_MARKER, PROTO_TCP, select,
};
use serde::{Deserialize, Serialize};

use super::{Controller, ControllerError, Platform};
use crate::{dataplane::DataPlaneAccess as _, family::FlowMapKey, overlay::Refusal};

/// One flow entry as `lb-ctl flows` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    pub protocol: String,
    pub client: SocketAddr,
    /// VIP:port.
    pub vip: SocketAddr,
    pub listener: String,
    /// ADDR:PORT; `-` for a backend no longer in the desired state.
    pub backend: String,
    /// `established`, `opening` (SYN seen, no ACK yet), `fin`, `rst` (seen from the
    /// client), `udp`; `+pickup` for a flow picked up mid-connection.
    pub state: String,
    /// Seconds since the last client packet.
    pub idle_s: u64,
    /// Seconds until the entry counts as expired (0: expired, awaiting reuse or eviction).
    pub expires_in_s: u64,
}

/// The answer: the first `limit` matching entries and how many matched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowEntry>,
    /// Entries matching the filter (shown or not).
    pub matched: u64,
    /// Entries in the tables (flows and half-open).
    pub entries: u64,
}

/// What a flow listing needs, taken under the lock.
pub struct FlowsJob {
    /// The IPv4 tables' pins, then the IPv6 ones'.
    pins: Vec<PathBuf>,
    pins6: Vec<PathBuf>,
    /// Listener id → name and its data-plane entry (for the idle timeouts).
    listeners: HashMap<u32, (String, lb_common::Listener)>,
    backends: HashMap<u32, SocketAddr>,
    listener: Option<u32>,
    backend: Option<(IpAddr, Option<u16>)>,
    limit: usize,
    now: u64,
}

impl FlowsJob {
    fn entry(&self, key: &FlowMapKey, flow: &Flow) -> Option<FlowEntry> {
        if self.listener.is_some_and(|id| id != flow.listener) {
            return None;
        }
        let backend = self.backends.get(&flow.backend);
        if let Some((address, port)) = self.backend {
            let b = backend?;
            if b.ip() != address || port.is_some_and(|p| p != b.port()) {
                return None;
            }
        }
        let (name, listener) = self.listeners.get(&flow.listener)?;
        let tcp = key.protocol() == PROTO_TCP;
        let mut state = if !tcp {
            "udp"
        } else if flow.flags & FLOW_F_RST != 0 {
            "rst"
        } else if flow.flags & FLOW_F_FIN != 0 {
            "fin"
        } else if flow.flags & FLOW_F_OPENING != 0 {
            "opening"
        } else {
            "established"
        }
        .to_owned();
        if flow.flags & FLOW_F_PICKUP != 0 {
            state.push_str("+pickup");
        }
        let idle_ns = self.now.saturating_sub(flow.last_seen_ns);
        let timeout_s = u64::from(select::idle_timeout_s(key.protocol(), flow.flags, listener));
        Some(FlowEntry {
            protocol: if tcp { "tcp" } else { "udp" }.to_owned(),
            client: key.client(),
            vip: key.vip(),
            listener: name.clone(),
            backend: backend.map_or_else(|| "-".to_owned(), ToString::to_string),
            state,
            idle_s: idle_ns / 1_000_000_000,
            expires_in_s: (timeout_s * 1_000_000_000).saturating_sub(idle_ns) / 1_000_000_000,
        })
    }
}

/// A pinned flow table of either family, through a handle of its own.
pub(crate) fn open_flow_table<K: aya::Pod>(
    pin: &std::path::Path,
) -> anyhow::Result<aya::maps::HashMap<aya::maps::MapData, K, Flow>> {
    let map =
        aya::maps::MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    Ok(aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
        map,
    ))?)
}

/// Walks the pinned flow tables through their own handles: no lock on the controller.
pub fn run_flows(job: &FlowsJob) -> anyhow::Result<FlowList> {
    let mut list = FlowList::default();
    let mut visit = |key: FlowMapKey, flow: Flow| {
        list.entries += 1;
        if let Some(entry) = job.entry(&key, &flow) {
            list.matched += 1;
            if job.limit == 0 || list.flows.len() < job.limit {
                list.flows.push(entry);
            }
        }
    };
    for pin in &job.pins {
        let table = open_flow_table::<FlowKey>(pin)?;
        crate::flow_walk::for_each_flow(&table, |k, f| visit(FlowMapKey::V4(k), f))
            .context("reading the flow table")?;
    }
    for pin in &job.pins6 {
        let table = open_flow_table::<FlowKey6>(pin)?;
        crate::flow_walk::for_each_flow(&table, |k, f| visit(FlowMapKey::V6(k), f))
            .context("reading the IPv6 flow table")?;
    }
    list.flows.sort_by(|a, b| {
        (&a.listener, a.client.ip(), a.client.port()).cmp(&(
            &b.listener,
            b.client.ip(),
            b.client.port(),
        ))
    });
    Ok(list)
}

impl<P: Platform> Controller<P> {
    /// The input of `run_flows`: the filter checked against the listeners (an unknown
    /// name is refused with the known ones).
    pub fn flows_job(
        &self,
        listener: Option<&str>,
        backend: Option<(IpAddr, Option<u16>)>,
        limit: usize,
    ) -> Result<FlowsJob, ControllerError> {
        let listener = match listener {
            None => None,
            Some(name) => match self.desired.listeners.get(name) {
                Some(l) => Some(l.id),
                None => {
                    let known: Vec<&str> =
                        self.desired.listeners.keys().map(String::as_str).collect();
                    return Err(Refusal {
                        message: format!(
                            "no listener `{name}`; listeners: {}",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    }
                    .into());
                }
            },
        };
        let entries: HashMap<u32, lb_common::Listener> = self
            .dataplane
            .listener_entries()?
            .into_iter()
            .filter(|(_, l)| l.flags & LISTENER_F_VIP_MARKER == 0)
            .map(|(_, l)| (l.id, l))
            .collect();
        let listeners = self
            .desired
            .listeners
            .values()
            .filter_map(|l| Some((l.id, (l.name.clone(), *entries.get(&l.id)?))))
            .collect();
        let backends = self
            .desired
            .listeners
            .values()
            .flat_map(|l| &l.backends)
            .map(|b| (b.id, SocketAddr::new(b.key.address, b.key.port)))
            .collect();
        let maps = self.platform.maps_dir();
        Ok(FlowsJob {
            pins: vec![
                maps.join(lb_common::names::FLOWS),
                maps.join(lb_common::names::HALF_OPEN),
            ],
            pins6: vec![
                maps.join(lb_common::names::FLOWS6),
                maps.join(lb_common::names::HALF_OPEN6),
            ],
            listeners,
            backends,
            listener,
            backend,
            limit,
            now: self.platform.monotonic_ns(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> FlowsJob {
        let listener = lb_common::Listener {
            established_timeout_s: 900,
            udp_timeout_s: 30,
            ..Default::default()
        };
        FlowsJob {
            pins: Vec::new(),
            pins6: Vec::new(),
            listeners: [(1, ("web".to_owned(), listener))].into(),
            backends: [
                (7, "198.18.1.10:8080".parse().unwrap()),
                (8, "198.18.1.11:8080".parse().unwrap()),
            ]
            .into(),
            listener: None,
            backend: None,
            limit: 0,
            now: 100 * 1_000_000_000,
        }
    }

    fn key(port: u16) -> FlowMapKey {
        FlowMapKey::V4(FlowKey {
            src_addr: u32::from(std::net::Ipv4Addr::new(198, 18, 0, 2)).to_be(),
            dst_addr: u32::from(std::net::Ipv4Addr::new(198, 18, 0, 100)).to_be(),
            src_port: port.to_be(),
            dst_port: 80u16.to_be(),
            protocol: PROTO_TCP,
            ..Default::default()
        })
    }

    fn flow(backend: u32, flags: u32, idle_s: u64) -> Flow {
        Flow {
            backend,
            listener: 1,
            flags,
            last_seen_ns: (100 - idle_s) * 1_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_shows_client_vip_backend_state_and_idle_time() {
        let e = job().entry(&key(40000), &flow(7, 0, 10)).unwrap();
        assert_eq!(e.client, "198.18.0.2:40000".parse().unwrap());
        assert_eq!(e.vip, "198.18.0.100:80".parse().unwrap());
        assert_eq!(
            (
                e.backend.as_str(),
                e.state.as_str(),
                e.idle_s,
                e.expires_in_s
            ),
            ("198.18.1.10:8080", "established", 10, 890)
        );
        let e = job()
            .entry(&key(40001), &flow(9, FLOW_F_FIN | FLOW_F_PICKUP, 0))
            .unwrap();
        assert_eq!((e.backend.as_str(), e.state.as_str()), ("-", "fin+pickup"));
        let e = job()
            .entry(&key(40002), &flow(7, FLOW_F_OPENING, 1))
            .unwrap();
        assert_eq!(e.state, "opening");
    }

    #[test]
    fn filters_by_listener_and_backend() {
        let mut j = job();
        j.backend = Some(("198.18.1.11".parse().unwrap(), None));
        assert!(j.entry(&key(1), &flow(7, 0, 0)).is_none());
        assert!(j.entry(&key(1), &flow(8, 0, 0)).is_some());
        j.backend = Some(("198.18.1.11".parse().unwrap(), Some(9090)));
        assert!(j.entry(&key(1), &flow(8, 0, 0)).is_none());
        j.backend = None;
        j.listener = Some(2);
        assert!(j.entry(&key(1), &flow(7, 0, 0)).is_none());
    }

    #[test]
    fn an_ipv6_entry_shows_bracketed_endpoints() {
        let mut j = job();
        j.backends
            .insert(9, "[2001:db8:1::10]:8080".parse().unwrap());
        let key = FlowMapKey::V6(FlowKey6 {
            src_addr: lb_common::family::addr6(
                "2001:db8::7"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            ),
            dst_addr: lb_common::family::addr6(
                "2001:db8::100"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            ),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol: PROTO_TCP,
            _pad: [0; 3],
        });
        let e = j.entry(&key, &flow(9, 0, 0)).unwrap();
        assert_eq!(e.client.to_string(), "[2001:db8::7]:40000");
        assert_eq!(e.vip.to_string(), "[2001:db8::100]:80");
        assert_eq!(e.backend, "[2001:db8:1::10]:8080");
        j.backend = Some(("2001:db8:1::10".parse().unwrap(), None));
        assert!(j.entry(&key, &flow(9, 0, 0)).is_some());
    }
}
