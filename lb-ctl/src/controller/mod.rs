//! The daemon's state and every operation on it: start (load or re-adopt the pinned data
//! plane), changes through the API, reloads, and the read-only views (status, stats,
//! export). The async shell around it (socket, signals, timers) is `daemon.rs`.

mod changes;
mod drains;
mod error;
#[cfg(test)]
mod fake;
mod flows;
mod lifecycle;
mod platform;
mod status;
mod sweep;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, path::PathBuf, time::Instant};

use crate::{
    config::Config,
    health::Checker,
    overlay::{self, Change},
    plan::{BackendKey, Desired, Ids, Runtime},
    reconcile::Reconciler,
};

pub(crate) use self::{
    error::{ControllerError, Done, StartError, respond},
    flows::{FlowList, run_flows},
    platform::{Attachment, Kernel, Platform},
    status::{StatusDraft, stats_of},
    sweep::run_sweep,
};

/// How the daemon was started.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
}

/// Now on the clock the data plane stamps flows with (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The daemon's state. `P` is the host it runs on: the kernel (`Kernel`) in production, a
/// stand-in in the unit tests.
pub(crate) struct Controller<P: Platform = Kernel> {
    platform: P,
    options: Options,
    state_path: PathBuf,
    base: Config,
    overlay: Vec<Change>,
    effective: Config,
    conflicts: Vec<String>,
    /// Reloads applied and refused so far (`/metrics`).
    reloads: crate::api::ReloadStatus,
    pub runtime: Runtime,
    ids: Ids,
    reconciler: Reconciler,
    desired: Desired,
    dataplane: P::DataPlane,
    attached: Vec<Attachment>,
    /// Active flows per backend id from the last sweep of the flow table.
    active: HashMap<u32, u32>,
    /// Entries the last sweep found in the flow table (active or not).
    flow_entries: u64,
    /// Sweep timer ticks so far (see `sweep_due`).
    sweep_ticks: u64,
    started: Instant,
    /// The health checker, once the daemon's runtime has started it.
    health: Option<Checker>,
    /// Drains as last saved (the state file keeps them with the overlay).
    drains: Vec<overlay::DrainRecord>,
    /// When each departing backend started departing (`monotonic_coarse_ns`).
    departed_at: HashMap<BackendKey, u64>,
    /// Backends a restarted daemon found unhealthy in the pinned data plane.
    initially_down: std::collections::BTreeSet<BackendKey>,
    /// Set while a `server remove --now` applies: removed servers are cut at once even
    /// with connection drain on.
    cut_removed: bool,
}

const NS_PER_S: u64 = 1_000_000_000;

impl<P: Platform> Controller<P> {
    pub fn instance(&self) -> &str {
        &self.effective.instance
    }

    pub fn effective(&self) -> &Config {
        &self.effective
    }

    #[cfg(test)]
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    pub fn export(&self) -> String {
        self.effective.to_yaml()
    }

    /// VIPs where a new flow finds a backend: some listener on the VIP has a backend in
    /// its selection tables (healthy, weight above 0, not draining). These are what BGP
    /// announces; a VIP without one is withdrawn so routers send its clients to a host
    /// that can serve them.
    /// Both families: BGP announces each over the sessions of its family.
    pub fn healthy_vips(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.desired
            .listeners
            .values()
            .filter(|l| l.backends.iter().any(|b| b.in_table))
            .map(|l| l.frontend.address)
            .collect()
    }
}

impl Controller<Kernel> {
    /// See `DataPlane::take_logger`.
    pub fn take_xdp_logger(&mut self) -> Option<crate::dataplane::XdpLogger> {
        self.dataplane.take_logger()
    }
}
