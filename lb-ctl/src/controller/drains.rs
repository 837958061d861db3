//! Draining servers by hand, departing backends after a removal, and keeping both in
//! the state file across restarts.

use std::net::{IpAddr, SocketAddr};

use tracing::{info, warn};

use super::{Controller, ControllerError, Done, NS_PER_S, Platform};
use crate::{
    config, overlay,
    plan::{BackendKey, Frontend},
};

/// A departing backend is retired this long after its drain deadline; meanwhile the data
/// plane answers its flows' stragglers with RSTs.
const RETIRE_AFTER_DEADLINE_NS: u64 = 5 * NS_PER_S;

impl<P: Platform> Controller<P> {
    pub(super) fn restore_drains(&mut self, drains: &[overlay::DrainRecord]) {
        let now_mono = self.platform.monotonic_ns();
        let now_unix = self.platform.unix_ms();
        for d in drains {
            let key = BackendKey {
                frontend: Frontend {
                    address: d.vip,
                    port: d.vip_port,
                    protocol: d.protocol,
                },
                address: d.address,
                port: d.port,
            };
            let deadline = now_mono + d.deadline_unix_ms.saturating_sub(now_unix) * 1_000_000;
            if d.departing {
                self.runtime.departing.insert(key, deadline);
            } else {
                self.runtime.draining.insert(key, deadline);
            }
        }
    }

    /// Forgets departing backends whose drain deadline passed (the data plane has been
    /// cutting their flows since; a few seconds later they are retired), and drains of
    /// servers no longer configured. Applies if anything changed, or if an endpoint that
    /// left every listener has lingered long enough (`EndpointLinger`).
    pub fn expire_drains(&mut self) -> anyhow::Result<()> {
        let now = self.platform.monotonic_ns();
        let before = (self.runtime.departing.len(), self.runtime.draining.len());
        // A departing backend whose flows have all ended is retired at once, not at its
        // deadline; "at once" after two sweeps, so flows that began just before the
        // removal have been counted.
        let idle: std::collections::BTreeSet<BackendKey> = self
            .desired
            .listeners
            .values()
            .flat_map(|l| l.backends.iter())
            .filter(|b| b.departing && self.active.get(&b.id).copied().unwrap_or(0) == 0)
            .map(|b| b.key)
            .collect();
        let since = &mut self.departed_at;
        self.runtime.departing.retain(|key, deadline| {
            let started = *since.entry(*key).or_insert(now);
            let drained = idle.contains(key) && now.saturating_sub(started) > 2 * NS_PER_S;
            now < deadline.saturating_add(RETIRE_AFTER_DEADLINE_NS) && !drained
        });
        since.retain(|key, _| self.runtime.departing.contains_key(key));
        let present: std::collections::BTreeSet<BackendKey> = self
            .desired
            .listeners
            .values()
            .flat_map(|l| l.backends.iter().filter(|b| !b.departing).map(|b| b.key))
            .collect();
        self.runtime.draining.retain(|k, _| present.contains(k));
        if before != (self.runtime.departing.len(), self.runtime.draining.len()) {
            self.persist_drains();
            self.apply()?;
        } else if self.reconciler.endpoints_due(now) {
            self.apply()?;
        }
        Ok(())
    }

    /// Drains a server of a group in every listener using it: no new flows from now on;
    /// established flows continue until they end or the timeout passes, then the data
    /// plane cuts them (TCP: RST to the client; UDP: dropped).
    pub fn drain(
        &mut self,
        group: &str,
        address: IpAddr,
        port: Option<u16>,
        timeout: Option<u32>,
    ) -> Result<Done, ControllerError> {
        let now = self.platform.monotonic_ns();
        let mut keys = Vec::new();
        for l in self.desired.listeners.values().filter(|l| l.group == group) {
            let configured = self
                .effective
                .listener(&l.name)
                .map_or(config::limits::DEFAULT_DRAIN_TIMEOUT, |c| {
                    c.connection_drain.timeout
                });
            let seconds = timeout.unwrap_or(configured);
            for b in l.backends.iter().filter(|b| {
                !b.departing && b.key.address == address && port.is_none_or(|p| b.key.port == p)
            }) {
                keys.push((
                    b.key,
                    now + u64::from(seconds) * NS_PER_S,
                    l.name.clone(),
                    seconds,
                ));
            }
        }
        if keys.is_empty() {
            return Err(ControllerError::NoSuchServer {
                group: group.to_owned(),
                server: match port {
                    Some(p) => SocketAddr::new(address, p).to_string(),
                    None => address.to_string(),
                },
            });
        }
        let mut lines = Vec::new();
        for (key, deadline, listener, seconds) in keys {
            self.runtime.draining.entry(key).or_insert(deadline);
            lines.push(format!(
                "{} of listener {listener}: draining, flows cut after {seconds} s",
                SocketAddr::new(key.address, key.port)
            ));
        }
        self.persist_drains();
        let ops = self.apply()?;
        info!("drain {group} {address}: {}", lines.join("; "));
        Ok(Done::new(lines.join("\n"), ops))
    }

    /// Ends a drain: the server takes new flows again.
    pub fn undrain(
        &mut self,
        group: &str,
        address: IpAddr,
        port: Option<u16>,
    ) -> Result<Done, ControllerError> {
        let keys: Vec<BackendKey> = self
            .desired
            .listeners
            .values()
            .filter(|l| l.group == group)
            .flat_map(|l| l.backends.iter())
            .filter(|b| b.key.address == address && port.is_none_or(|p| b.key.port == p))
            .map(|b| b.key)
            .collect();
        let removed = keys
            .iter()
            .filter(|k| self.runtime.draining.remove(k).is_some())
            .count();
        if removed == 0 {
            return Err(ControllerError::NotDraining {
                group: group.to_owned(),
                address,
            });
        }
        self.persist_drains();
        let ops = self.apply()?;
        Ok(Done::new(
            format!("{removed} backend(s) take new flows again"),
            ops,
        ))
    }

    /// Keeps drains in the state file, so a restarted daemon keeps cutting on time.
    pub(super) fn persist_drains(&mut self) {
        let now_mono = self.platform.monotonic_ns();
        let now_unix = self.platform.unix_ms();
        let record = |key: &BackendKey, deadline: u64, departing: bool| overlay::DrainRecord {
            vip: key.frontend.address,
            vip_port: key.frontend.port,
            protocol: key.frontend.protocol,
            address: key.address,
            port: key.port,
            departing,
            deadline_unix_ms: now_unix + deadline.saturating_sub(now_mono) / 1_000_000,
        };
        self.drains = self
            .runtime
            .draining
            .iter()
            .map(|(k, d)| record(k, *d, false))
            .chain(
                self.runtime
                    .departing
                    .iter()
                    .map(|(k, d)| record(k, *d, true)),
            )
            .collect();
        if let Err(e) = overlay::save_state_with_drains(
            &self.state_path,
            &self.effective.instance,
            &self.overlay,
            &self.drains,
        ) {
            warn!("saving drains to the state file failed: {e}");
        }
    }
}
