//! The read-only views: status (and its draft, filled off the lock), stats, explain.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
};

use lb_common::select;

use super::{Controller, ControllerError, Done, NS_PER_S, Platform};
use crate::{
    api::{self, BackendStatus, Counters, InterfaceStatus, ListenerStatus, Status},
    config,
    dataplane::{DataPlaneAccess, DataPlaneError, ReadCounters},
    health::{self, Checker},
    overlay::Refusal,
    plan::{BackendKey, Role},
};

/// A status without its traffic counters, taken under the controller's lock
/// ([`Controller::status_draft`]); `fill` reads them, one map lookup per listener and
/// backend, wherever it runs.
#[derive(Debug)]
pub struct StatusDraft {
    status: Status,
    /// The data plane id of each of `status.listeners`.
    listener_ids: Vec<u32>,
    /// Seconds since the daemon started, when the draft was taken (`Stats.at_s`).
    pub at_s: f64,
    /// Where the counter maps are pinned, for a [`crate::dataplane::CounterReader`].
    pub maps_dir: PathBuf,
    /// The health checker's view at the same time.
    pub probes: Option<health::Snapshot>,
}

impl StatusDraft {
    /// The status with its counters read through `counters`.
    pub fn fill(self, counters: &impl ReadCounters) -> Result<Status, DataPlaneError> {
        let mut status = self.status;
        for (l, id) in status.listeners.iter_mut().zip(&self.listener_ids) {
            l.stats = counters.listener_totals(*id)?;
            for b in &mut l.backends {
                b.stats = counters.backend_totals(b.backend_id)?;
            }
        }
        let inserted = counters.one_counter(lb_common::Reason::EventFlowInserted)?;
        status.flow_table.evicted = inserted.saturating_sub(status.flow_table.entries);
        Ok(status)
    }
}

/// `lb-ctl stats` from a filled status (the same lookups, not made twice) and the
/// verdict counters.
pub fn stats_of(status: &Status, at_s: f64, reasons: &BTreeMap<&str, u64>) -> api::Stats {
    let mut listeners: Vec<api::ListenerStats> = status
        .listeners
        .iter()
        .map(|l| api::ListenerStats {
            name: l.name.clone(),
            stats: l.stats,
            backends: l
                .backends
                .iter()
                .map(|b| (b.endpoint().to_string(), b.stats))
                .collect(),
        })
        .collect();
    // As `Controller::stats` lists them.
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    api::Stats {
        at_s,
        listeners,
        reasons: reasons.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    }
}

impl<P: Platform> Controller<P> {
    fn origin(&self, group: &str, key: &BackendKey) -> &'static str {
        let in_base = if group == config::DEFAULT_GROUP_NAME {
            self.base
                .default_server_group
                .servers
                .iter()
                .any(|s| s.address == key.address)
        } else if let Some(g) = self.base.vserver_group(group) {
            g.servers
                .iter()
                .any(|m| m.address == key.address && m.port == key.port)
        } else {
            self.base.primary_secondary_group(group).is_some()
        };
        if in_base { "config" } else { "api" }
    }

    pub fn status(&mut self) -> Result<Status, ControllerError> {
        self.fresh_counts()?;
        self.last_status()
    }

    /// `status` with the active-flow counts and flow-table occupancy of the last sweep
    /// (the daemon sweeps every `--sweep-interval`): what /metrics and the status page
    /// read, so a scrape or a page refresh never walks the flow table itself.
    pub fn last_status(&self) -> Result<Status, ControllerError> {
        Ok(self.status_draft().fill(&self.dataplane)?)
    }

    /// `last_status` without its traffic counters: only what the controller holds in
    /// memory, so it costs no system call. /metrics and the status page take it under the
    /// lock and read the counters after releasing it ([`StatusDraft::fill`]).
    pub fn status_draft(&self) -> StatusDraft {
        let health: HashMap<BackendKey, health::BackendHealth> = self
            .health
            .as_ref()
            .map(|c| {
                c.snapshot()
                    .backends
                    .into_iter()
                    .map(|b| (b.key, b))
                    .collect()
            })
            .unwrap_or_default();
        let now = std::time::SystemTime::now();
        let mut listeners = Vec::new();
        let mut listener_ids = Vec::new();
        for l in &self.effective.listeners {
            let Some(d) = self.desired.listeners.get(&l.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for b in &d.backends {
                let draining = b.drain_deadline_ns.is_some()
                    || (b.role == Role::Member && (b.weight == 0 || b.effective_weight == 0));
                let state = if !b.healthy {
                    "down"
                } else if draining {
                    "draining"
                } else {
                    "up"
                };
                let now_mono = self.platform.monotonic_ns();
                let h = health.get(&b.key);
                let held_down_s = h.and_then(|h| match h.state {
                    health::HealthState::HeldDown { until } => {
                        Some(until.duration_since(now).unwrap_or_default().as_secs())
                    }
                    _ => None,
                });
                backends.push(BackendStatus {
                    address: b.key.address,
                    port: b.key.port,
                    role: b.role.name().to_owned(),
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    state: state.to_owned(),
                    health: if b.healthy { "up" } else { "down" }.to_owned(),
                    probed: h.is_some_and(|h| h.probed),
                    last_probe: h.and_then(|h| h.last_probe.as_ref()).map(|p| p.reason()),
                    last_probe_ms: h
                        .and_then(|h| h.last_probe.as_ref())
                        .map(|p| p.latency.as_secs_f64() * 1000.0),
                    since_change_s: h
                        .and_then(|h| h.last_change)
                        .map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
                    held_down_s,
                    flaps: h.map_or(0, |h| h.flaps_in_window),
                    drain_left_s: b
                        .drain_deadline_ns
                        .map(|d| d.saturating_sub(now_mono) / NS_PER_S),
                    departing: b.departing,
                    active_flows: self.active.get(&b.id).copied().unwrap_or(0),
                    origin: self.origin(&d.group, &b.key).to_owned(),
                    backend_id: b.id,
                    stats: Counters::default(),
                });
            }
            listener_ids.push(d.id);
            listeners.push(ListenerStatus {
                name: l.name.clone(),
                protocol: l.protocol,
                address: l.address,
                port: l.port,
                group: d.group.clone(),
                scheduler: d.scheduler,
                backends,
                stats: Counters::default(),
            });
        }
        let status = Status {
            instance: self.effective.instance.clone(),
            config: self.options.config_path.display().to_string(),
            interfaces: self
                .attached
                .iter()
                .map(|(name, ifindex, mode)| InterfaceStatus {
                    name: name.clone(),
                    ifindex: *ifindex,
                    mode: (*mode).to_owned(),
                })
                .collect(),
            listeners,
            overlay_changes: self.overlay.len(),
            conflicts: self.conflicts.clone(),
            reloads: self.reloads,
            flow_table: api::FlowTableStatus {
                capacity: self.effective.flow_table_size,
                entries: self.flow_entries,
                evicted: 0,
            },
            maglev: api::MaglevStatus {
                capacity: self.effective.maglev_slots(),
                reserved: self.effective.maglev_slots_reserved(),
            },
            bgp: None,
        };
        StatusDraft {
            status,
            listener_ids,
            at_s: self.started.elapsed().as_secs_f64(),
            maps_dir: self.platform.maps_dir(),
            probes: self.health_snapshot(),
        }
    }

    /// The health checker's view (per-backend state, probe latency and counts); `None`
    /// until the daemon has attached a checker.
    pub fn health_snapshot(&self) -> Option<health::Snapshot> {
        self.health.as_ref().map(Checker::snapshot)
    }

    pub fn stats(&self) -> Result<api::Stats, ControllerError> {
        let mut listeners = Vec::new();
        for d in self.desired.listeners.values() {
            let mut backends = Vec::new();
            for b in &d.backends {
                backends.push((
                    SocketAddr::new(b.key.address, b.key.port).to_string(),
                    self.dataplane.backend_totals(b.id)?,
                ));
            }
            listeners.push(api::ListenerStats {
                name: d.name.clone(),
                stats: self.dataplane.listener_totals(d.id)?,
                backends,
            });
        }
        Ok(api::Stats {
            at_s: self.started.elapsed().as_secs_f64(),
            listeners,
            reasons: self
                .dataplane
                .all_counters()?
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        })
    }

    /// `lb-ctl explain`.
    pub fn explain(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        protocol: config::Protocol,
        tcp_flags: Option<u8>,
    ) -> Result<Done, ControllerError> {
        let proto = protocol.number();
        let flags = tcp_flags.unwrap_or(select::TCP_SYN);
        let now = self.platform.monotonic_ns();
        let explained = match (src, dst) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => self
                .dataplane
                .decision_tables()
                .map_err(anyhow::Error::from)
                .and_then(|t| {
                    crate::explain::explain(t, &self.desired, src, dst, proto, flags, now)
                }),
            (SocketAddr::V6(_), SocketAddr::V6(_)) => self
                .dataplane
                .decision_tables6()
                .map_err(anyhow::Error::from)
                .and_then(|t| {
                    crate::explain::explain(t, &self.desired, src, dst, proto, flags, now)
                }),
            _ => {
                return Err(Refusal {
                    message: format!(
                        "explain {src} -> {dst}: the source and destination are of different \
                         address families"
                    ),
                }
                .into());
            }
        };
        let explanation = explained?;
        Ok(Done::new(explanation.steps.join("\n"), explanation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters that say which id they were read for.
    struct ById;

    impl ReadCounters for ById {
        fn all_counters(&self) -> Result<BTreeMap<&'static str, u64>, DataPlaneError> {
            Ok(BTreeMap::from([("forwarded", 7)]))
        }
        fn one_counter(&self, _: lb_common::Reason) -> Result<u64, DataPlaneError> {
            Ok(50)
        }
        fn listener_totals(&self, id: u32) -> Result<lb_common::TrafficCounters, DataPlaneError> {
            Ok(lb_common::TrafficCounters {
                packets: u64::from(id),
                ..Default::default()
            })
        }
        fn backend_totals(&self, id: u32) -> Result<lb_common::TrafficCounters, DataPlaneError> {
            Ok(lb_common::TrafficCounters {
                new_flows: u64::from(id) * 10,
                ..Default::default()
            })
        }
    }

    #[test]
    fn a_status_draft_is_filled_off_the_lock_with_each_ids_counters() {
        let backend = |id: u32| {
            serde_json::json!({
                "address": "198.18.1.10", "port": 8000 + id, "role": "member", "weight": 100,
                "effective_weight": 100, "state": "up", "health": "up", "flaps": 0,
                "drain_left_s": null, "departing": false, "active_flows": 0,
                "origin": "config", "backend_id": id, "stats": Counters::default(),
            })
        };
        let listener = |name: &str, backends: Vec<serde_json::Value>| {
            serde_json::json!({
                "name": name, "protocol": "tcp", "address": "198.19.0.100", "port": 80,
                "group": "app", "scheduler": "wrr", "backends": backends,
                "stats": Counters::default(),
            })
        };
        let status: Status = serde_json::from_value(serde_json::json!({
            "instance": "t", "config": "t.yaml", "interfaces": [], "overlay_changes": 0,
            "conflicts": [],
            "listeners": [listener("web", vec![backend(3), backend(4)]), listener("api", vec![])],
            "flow_table": { "capacity": 1024, "entries": 20, "evicted": 0 },
        }))
        .unwrap();
        let draft = StatusDraft {
            status,
            listener_ids: vec![1, 2],
            at_s: 1.5,
            maps_dir: PathBuf::new(),
            probes: None,
        };
        let status = draft.fill(&ById).unwrap();
        assert_eq!(status.listeners[0].stats.packets, 1);
        assert_eq!(status.listeners[1].stats.packets, 2);
        let flows: Vec<u64> = status.listeners[0]
            .backends
            .iter()
            .map(|b| b.stats.new_flows)
            .collect();
        assert_eq!(flows, [30, 40]);
        assert_eq!(status.flow_table.evicted, 30, "inserted 50, 20 present");
        let stats = stats_of(&status, 1.5, &ById.all_counters().unwrap());
        let names: Vec<&str> = stats.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["api", "web"], "by name, as lb-ctl stats lists them");
        assert_eq!(stats.listeners[1].backends[1].0, "198.18.1.10:8004");
        assert_eq!(stats.listeners[1].backends[1].1.new_flows, 40);
        assert_eq!(stats.reasons["forwarded"], 7);
    }
}
