//! The flow-table sweep: active flows per backend (for `wlc`, drains and `status`) and the
//! table's occupancy.

use std::{collections::HashMap, path::PathBuf};

use anyhow::Context as _;
use lb_common::{Flow, FlowKey, FlowKey6, LISTENER_F_VIP_MARKER, select};

use super::{Controller, ControllerError, Done, Platform};
use crate::dataplane::DataPlaneAccess as _;

/// A large table with nothing depending on fresh counts is walked once every this many
/// sweep ticks.
const IDLE_SWEEP_EVERY: u64 = 10;

/// Up to this many flow entries a request sweeps the table itself (a few ms per 10k).
const SWEEP_IN_PLACE_MAX: u64 = 50_000;

/// Input of a flow-table sweep: where the table and its filter are pinned, the
/// listeners' timeouts.
pub struct SweepJob {
    flows_pin: PathBuf,
    /// IPv6's established flows (`FLOWS6`): counted alike, their keys put in the filter.
    flows6_pin: PathBuf,
    filter_pin: PathBuf,
    flow_table_size: u32,
    listeners: HashMap<u32, lb_common::Listener>,
    now: u64,
}

/// What a sweep found: entries present, active flows per backend id.
pub struct SweepResult {
    entries: u64,
    active: HashMap<u32, u32>,
}

impl SweepResult {
    fn empty() -> Self {
        Self {
            entries: 0,
            active: HashMap::new(),
        }
    }

    /// Counts one flow entry of either family (`protocol`: its key's).
    fn add(&mut self, protocol: u8, flow: &Flow, job: &SweepJob) {
        self.entries += 1;
        let Some(listener) = job.listeners.get(&flow.listener) else {
            return;
        };
        if select::is_active(job.now, flow, protocol, listener) {
            *self.active.entry(flow.backend).or_default() += 1;
        }
    }
}

/// Walks the pinned flow table through its own handle, no lock on the controller, and
/// rebuilds the flow filter from the keys it finds (`crate::flow_filter`).
pub fn run_sweep(job: SweepJob) -> anyhow::Result<SweepResult> {
    let flows = super::flows::open_flow_table::<FlowKey>(&job.flows_pin)?;
    let filter_map = aya::maps::MapData::from_pin(&job.filter_pin)
        .with_context(|| format!("opening {}", job.filter_pin.display()))?;
    let filter = crate::dataplane::MappedArray::flow_filter(&filter_map, job.flow_table_size)?;
    let rebuild = crate::flow_filter::Rebuild::start(filter.words());
    let mut result = SweepResult::empty();
    crate::flow_walk::for_each_flow(&flows, |k, v| {
        if let Some(r) = &rebuild {
            r.add(&k);
        }
        result.add(k.protocol, &v, &job);
    })
    .context("reading the flow table")?;
    let flows6 = super::flows::open_flow_table::<FlowKey6>(&job.flows6_pin)?;
    crate::flow_walk::for_each_flow(&flows6, |k, v| {
        if let Some(r) = &rebuild {
            r.add(&k);
        }
        result.add(k.protocol, &v, &job);
    })
    .context("reading the IPv6 flow table")?;
    // Both tables walked: the rebuilt bitmap holds every key either table held.
    if let Some(r) = rebuild {
        r.finish();
    }
    Ok(result)
}

impl<P: Platform> Controller<P> {
    /// Counts active flows per backend by walking the flow table (LRU eviction and idle
    /// expiry decrement nothing in the data plane), and corrects the `wlc` counters. On a
    /// large table this takes a while: the daemon runs it off the lock (`sweep_job`,
    /// `run_sweep`, `finish_sweep`); here it runs in place, for small tables.
    pub fn sweep(&mut self) -> Result<(), ControllerError> {
        let job = self.sweep_job()?;
        let mut result = SweepResult::empty();
        // Half-open flows are not counted, as in the background sweep: they become
        // active with the client's ACK (IPVS too counts SYN_RECV as inactive).
        for (key, flow) in self.dataplane.sweep_flows()? {
            result.add(key.protocol(), &flow, &job);
        }
        self.finish_sweep(result)
    }

    /// Whether the table is small enough to sweep in place on a request (`status`,
    /// `wait drained`); otherwise the last background sweep (at most a few seconds old)
    /// answers.
    pub fn sweep_is_cheap(&self) -> bool {
        self.flow_entries < SWEEP_IN_PLACE_MAX
    }

    /// Whether the periodic sweep should walk the flow table now. Walking a large table
    /// takes time (about 27 ms per 100,000 entries) and slows the data plane while it
    /// runs, so it walks every tick only when something depends on fresh counts (a `wlc`
    /// listener, a drain under way) or the table is small; otherwise every
    /// `IDLE_SWEEP_EVERY` ticks (status and metrics show counts that old at most).
    pub fn sweep_due(&mut self) -> bool {
        self.sweep_ticks = self.sweep_ticks.wrapping_add(1);
        let needed = self
            .desired
            .listeners
            .values()
            .any(|l| l.scheduler == lb_common::Scheduler::Wlc)
            || !self.runtime.draining.is_empty()
            || !self.runtime.departing.is_empty()
            || self.sweep_is_cheap();
        needed || self.sweep_ticks.is_multiple_of(IDLE_SWEEP_EVERY)
    }

    /// What a sweep needs, taken under the lock.
    pub fn sweep_job(&self) -> Result<SweepJob, ControllerError> {
        Ok(SweepJob {
            flows_pin: self.platform.maps_dir().join(lb_common::names::FLOWS),
            flows6_pin: self.platform.maps_dir().join(lb_common::names::FLOWS6),
            filter_pin: self.platform.maps_dir().join(lb_common::names::FLOW_FILTER),
            flow_table_size: self.effective.flow_table_size,
            listeners: self
                .dataplane
                .listener_entries()?
                .into_iter()
                .filter(|(_, l)| l.flags & LISTENER_F_VIP_MARKER == 0)
                .map(|(_, l)| (l.id, l))
                .collect(),
            now: self.platform.monotonic_ns(),
        })
    }

    /// Stores a sweep's counts and writes the `wlc` counters from them.
    pub fn finish_sweep(&mut self, result: SweepResult) -> Result<(), ControllerError> {
        self.flow_entries = result.entries;
        for l in self.desired.listeners.values() {
            if l.scheduler != lb_common::Scheduler::Wlc {
                continue;
            }
            for b in &l.backends {
                let count = result.active.get(&b.id).copied().unwrap_or(0);
                self.dataplane.set_active_flows(b.id, count)?;
            }
        }
        self.active = result.active;
        Ok(())
    }

    /// Finds a backend of a group by address and optional port, across the listeners
    /// using that group.
    fn backends_of(&self, group: &str, address: std::net::IpAddr, port: Option<u16>) -> Vec<u32> {
        self.desired
            .listeners
            .values()
            .filter(|l| l.group == group)
            .flat_map(|l| l.backends.iter())
            .filter(|b| b.key.address == address && port.is_none_or(|p| b.key.port == p))
            .map(|b| b.id)
            .collect()
    }

    /// `sweep` when it is cheap; otherwise the counts of the last background sweep.
    pub(super) fn fresh_counts(&mut self) -> Result<(), ControllerError> {
        if self.sweep_is_cheap() {
            self.sweep()
        } else {
            Ok(())
        }
    }

    pub fn active_flows(
        &mut self,
        group: &str,
        address: std::net::IpAddr,
        port: Option<u16>,
    ) -> Result<Done, ControllerError> {
        self.fresh_counts()?;
        let ids = self.backends_of(group, address, port);
        let count: u32 = ids
            .iter()
            .map(|id| self.active.get(id).copied().unwrap_or(0))
            .sum();
        Ok(Done::new(
            format!("{count} active flow(s)"),
            serde_json::json!({ "active_flows": count, "backends": ids.len() }),
        ))
    }
}
