//! The daemon's state and every operation on it: start (load or re-adopt the pinned data
//! plane), changes through the API, reloads, and the read-only views (status, stats,
//! export). The async shell around it (socket, signals, timers) is `daemon.rs`.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use lb_common::{Flow, FlowKey, LISTENER_F_VIP_MARKER, select};
use tracing::{info, warn};

use crate::{
    api::{self, BackendStatus, Counters, InterfaceStatus, ListenerStatus, Response, Status},
    config::{self, Config},
    dataplane::{DataPlane, LoadOptions, MapSizes, ReadCounters},
    health::{self, Checker},
    host,
    overlay::{self, Change},
    pins::{self, Layout},
    plan::{self, BackendKey, Desired, Frontend, Ids, Role, Runtime},
    reconcile::Reconciler,
};

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
}

/// Now on the clock the data plane stamps flows with (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Controller {
    options: Options,
    state_path: PathBuf,
    base: Config,
    overlay: Vec<Change>,
    effective: Config,
    conflicts: Vec<String>,
    pub runtime: Runtime,
    ids: Ids,
    reconciler: Reconciler,
    desired: Desired,
    dataplane: DataPlane,
    /// The stage table of the program this daemon replaced at start, held open so the
    /// packets still in that program find their stages (`pins::pin_stages`).
    _replaced_stages: Option<aya::maps::MapData>,
    layout: Layout,
    attached: Vec<(String, u32, &'static str)>,
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
/// A large table with nothing depending on fresh counts is walked once every this many
/// sweep ticks.
const IDLE_SWEEP_EVERY: u64 = 10;
/// Up to this many flow entries a request sweeps the table itself (a few ms per 10k).
const SWEEP_IN_PLACE_MAX: u64 = 50_000;

/// Input of a flow-table sweep: where the table is pinned, the listeners' timeouts.
pub struct SweepJob {
    flows_pin: PathBuf,
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

    /// Counts one flow entry.
    fn add(&mut self, key: &FlowKey, flow: &Flow, job: &SweepJob) {
        self.entries += 1;
        let Some(listener) = job.listeners.get(&flow.listener) else {
            return;
        };
        if select::is_active(job.now, flow, key.protocol, listener) {
            *self.active.entry(flow.backend).or_default() += 1;
        }
    }
}

/// Walks the pinned flow table through its own handle: no lock on the controller.
pub fn run_sweep(job: SweepJob) -> anyhow::Result<SweepResult> {
    let map = aya::maps::MapData::from_pin(&job.flows_pin)
        .with_context(|| format!("opening {}", job.flows_pin.display()))?;
    let flows: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map))?;
    let mut result = SweepResult::empty();
    crate::flow_walk::for_each_flow(&flows, |k, v| result.add(&k, &v, &job))
        .context("reading the flow table")?;
    Ok(result)
}

/// A departing backend is retired this long after its drain deadline; meanwhile the data
/// plane answers its flows' stragglers with RSTs.
const RETIRE_AFTER_DEADLINE_NS: u64 = 5 * NS_PER_S;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sizes(config: &Config) -> MapSizes {
    MapSizes {
        flow_table_size: config.flow_table_size,
        max_listeners: config.max_listeners,
        max_backends: config.max_backends,
    }
}

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
    pub fn fill(self, counters: &impl ReadCounters) -> anyhow::Result<Status> {
        let mut status = self.status;
        for (l, id) in status.listeners.iter_mut().zip(&self.listener_ids) {
            l.stats = counters.listener_totals(*id)?.into();
            for b in &mut l.backends {
                b.stats = counters.backend_totals(b.backend_id)?.into();
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
                .map(|b| (format!("{}:{}", b.address, b.port), b.stats))
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

impl Controller {
    /// Loads the config and the overlay, loads or re-adopts the data plane, attaches it
    /// and fills the maps.
    pub fn start(options: Options) -> anyhow::Result<Self> {
        let base = config::load(&options.config_path).map_err(|errors| {
            anyhow::anyhow!(
                "{} has {} error(s):\n{errors}",
                options.config_path.display(),
                errors.len()
            )
        })?;
        let state_path = overlay::state_path(&options.state_dir, &base.instance);
        let (saved, drains) = overlay::load_state_with_drains(&state_path, &base.instance)?;
        let (effective, overlay, conflicts) = overlay::replay(&base, &saved);
        for c in &conflicts {
            warn!("runtime change dropped, it no longer fits the config: {c}");
        }
        if overlay != saved {
            overlay::save_state_with_drains(&state_path, &base.instance, &overlay, &drains)?;
        }

        pins::check_bpffs(&options.bpffs)?;
        let layout = Layout::new(&options.bpffs, &effective.instance);
        let adopting = layout.exists();
        let sizes = sizes(&effective);
        if adopting {
            pins::check_pinned_layout(&layout, &sizes)?;
        }
        std::fs::create_dir_all(layout.maps())
            .with_context(|| format!("creating {}", layout.maps().display()))?;
        let mut dataplane = DataPlane::load(&LoadOptions {
            sizes,
            map_pin_dir: Some(layout.maps()),
            verifier_log_dir: Some(options.state_dir.clone()),
        })?;

        let mut ids = Ids::new(sizes.max_listeners, sizes.max_backends);
        let mut reconciler = Reconciler::new();
        let mut runtime = Runtime {
            local_addresses: host_addresses(),
            ..Runtime::default()
        };
        if adopting {
            runtime.unhealthy = adopt(&dataplane, &effective, &mut ids, &mut reconciler)?;
        }
        let attached = pins::attach(dataplane.program()?, &layout, &effective.interfaces, false)?;
        let replaced_stages = pins::pin_stages(dataplane.stages(), &layout)?;
        for (iface, ifindex, mode) in &attached {
            dataplane.add_tx_port(*ifindex)?;
            info!("XDP on {iface} (ifindex {ifindex}): {mode}");
        }

        let mut controller = Self {
            options,
            state_path,
            base,
            overlay,
            effective,
            conflicts,
            departed_at: HashMap::new(),
            initially_down: runtime.unhealthy.clone(),
            runtime,
            ids,
            reconciler,
            desired: Desired::default(),
            dataplane,
            _replaced_stages: replaced_stages,
            layout,
            attached,
            active: HashMap::new(),
            flow_entries: 0,
            sweep_ticks: 0,
            started: Instant::now(),
            health: None,
            drains: drains.clone(),
            cut_removed: false,
        };
        controller.restore_drains(&drains);
        controller.prepare_host();
        let ops = controller.apply()?;
        info!(
            "instance {}: {} listener(s), {} map operation(s){}",
            controller.effective.instance,
            controller.effective.listeners.len(),
            ops,
            if adopting {
                ", data plane re-adopted"
            } else {
                ""
            }
        );
        Ok(controller)
    }

    pub fn instance(&self) -> &str {
        &self.effective.instance
    }

    pub fn effective(&self) -> &Config {
        &self.effective
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    pub fn dataplane(&self) -> &DataPlane {
        &self.dataplane
    }

    /// See `DataPlane::take_logger`.
    pub fn take_xdp_logger(&mut self) -> Option<crate::dataplane::XdpLogger> {
        self.dataplane.take_logger()
    }

    fn restore_drains(&mut self, drains: &[overlay::DrainRecord]) {
        let now_mono = monotonic_coarse_ns();
        let now_unix = unix_ms();
        for d in drains {
            let Some(protocol) = (match d.protocol.as_str() {
                "tcp" => Some(config::Protocol::Tcp),
                "udp" => Some(config::Protocol::Udp),
                _ => None,
            }) else {
                continue;
            };
            let key = BackendKey {
                frontend: Frontend {
                    address: d.vip,
                    port: d.vip_port,
                    protocol,
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

    /// Hands the health checker its targets; from now on its verdicts drive the tables.
    pub fn attach_health(&mut self, checker: Checker) -> anyhow::Result<()> {
        self.health = Some(checker);
        self.refresh_health_targets();
        if let Some(c) = &self.health {
            c.assume_down(&self.initially_down);
        }
        // From here on the checker's view is the truth (unprobed backends it keeps up).
        self.health_changed()?;
        Ok(())
    }

    fn refresh_health_targets(&self) {
        if let Some(checker) = &self.health {
            checker.set_source(self.effective.health_check_source);
            checker.set_targets(health::targets(&self.effective));
        }
    }

    /// Takes the checker's current verdicts and slow-start weights into the plan and
    /// applies: only listeners whose backends changed get new tables.
    pub fn health_changed(&mut self) -> anyhow::Result<usize> {
        if let Some(checker) = &self.health {
            self.runtime.unhealthy = checker.unhealthy();
            self.runtime.effective_weight = checker.ramping(Instant::now()).into_iter().collect();
        }
        self.apply()
    }

    /// Whether some backend is in its slow-start ramp (the daemon re-plans every second).
    pub fn is_ramping(&self) -> bool {
        !self.runtime.effective_weight.is_empty()
            || self
                .health
                .as_ref()
                .is_some_and(|c| !c.ramping(Instant::now()).is_empty())
    }

    /// Plans from the effective config and runtime facts and writes the difference.
    ///
    /// A backend that leaves a listener (server removed, listener moved to another group)
    /// while the listener has connection drain on keeps its flows: it becomes departing,
    /// out of the tables, until its drain deadline.
    pub fn apply(&mut self) -> anyhow::Result<usize> {
        let now = monotonic_coarse_ns();
        // Planned on a copy of the ids: the plan releases the ids of backends that left,
        // and a departing one must keep its id and generation (its flows carry them).
        let mut ids = self.ids.clone();
        let mut desired = plan::plan(&self.effective, &self.runtime, &mut ids)?;
        let mut departures = false;
        for (name, old) in &self.desired.listeners {
            let Some(new) = desired.listeners.get(name) else {
                continue;
            };
            let Some(timeout) = new.drain_timeout.filter(|_| !self.cut_removed) else {
                continue;
            };
            if new.frontend != old.frontend {
                continue;
            }
            for b in old.backends.iter().filter(|b| b.usable && !b.departing) {
                if new.backends.iter().any(|n| n.key == b.key) {
                    continue;
                }
                // A server already being drained keeps its deadline.
                let deadline = self
                    .runtime
                    .draining
                    .remove(&b.key)
                    .unwrap_or(now + u64::from(timeout) * NS_PER_S);
                self.runtime.departing.insert(b.key, deadline);
                departures = true;
            }
        }
        if departures {
            ids = self.ids.clone();
            desired = plan::plan(&self.effective, &self.runtime, &mut ids)?;
            self.persist_drains();
        }
        self.ids = ids;
        let ops = self.reconciler.apply(&desired, &mut self.dataplane)?;
        self.desired = desired;
        Ok(ops.len())
    }

    /// Follows the host's addresses (an operator or DHCP may add one at any time): the
    /// data plane refuses new flows from each of them.
    pub fn refresh_local_addresses(&mut self) -> anyhow::Result<()> {
        let now = host_addresses();
        if now != self.runtime.local_addresses {
            info!(
                "host addresses changed: {} now, refused as client sources",
                now.len()
            );
            self.runtime.local_addresses = now;
            self.apply()?;
        }
        Ok(())
    }

    /// Forgets departing backends whose drain deadline passed (the data plane has been
    /// cutting their flows since; a few seconds later they are retired), and drains of
    /// servers no longer configured. Applies if anything changed.
    pub fn expire_drains(&mut self) -> anyhow::Result<()> {
        let now = monotonic_coarse_ns();
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
        }
        Ok(())
    }

    /// Drains a server of a group in every listener using it: no new flows from now on;
    /// established flows continue until they end or the timeout passes, then the data
    /// plane cuts them (TCP: RST to the client; UDP: dropped).
    pub fn drain(
        &mut self,
        group: &str,
        address: std::net::Ipv4Addr,
        port: Option<u16>,
        timeout: Option<u32>,
    ) -> Response {
        let now = monotonic_coarse_ns();
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
            return Response::refused(format!(
                "no server {} in group {group} serves a listener; `lb-ctl group show {group}` \
                 lists its servers",
                match port {
                    Some(p) => format!("{address}:{p}"),
                    None => address.to_string(),
                }
            ));
        }
        let mut lines = Vec::new();
        for (key, deadline, listener, seconds) in keys {
            self.runtime.draining.entry(key).or_insert(deadline);
            lines.push(format!(
                "{}:{} of listener {listener}: draining, flows cut after {seconds} s",
                key.address, key.port
            ));
        }
        self.persist_drains();
        match self.apply() {
            Ok(ops) => {
                info!("drain {group} {address}: {}", lines.join("; "));
                Response::ok(lines.join("\n"), ops)
            }
            Err(e) => Response::failed(format!("{e:#}")),
        }
    }

    /// Ends a drain: the server takes new flows again.
    pub fn undrain(
        &mut self,
        group: &str,
        address: std::net::Ipv4Addr,
        port: Option<u16>,
    ) -> Response {
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
            return Response::refused(format!("no drain of {address} in group {group} to end"));
        }
        self.persist_drains();
        match self.apply() {
            Ok(ops) => Response::ok(format!("{removed} backend(s) take new flows again"), ops),
            Err(e) => Response::failed(format!("{e:#}")),
        }
    }

    /// Keeps drains in the state file, so a restarted daemon keeps cutting on time.
    fn persist_drains(&mut self) {
        let now_mono = monotonic_coarse_ns();
        let now_unix = unix_ms();
        let record = |key: &BackendKey, deadline: u64, departing: bool| overlay::DrainRecord {
            vip: key.frontend.address,
            vip_port: key.frontend.port,
            protocol: key.frontend.protocol.name().to_owned(),
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

    /// A runtime change: checked against the rules, persisted, applied.
    pub fn change(&mut self, change: Change) -> Response {
        self.cut_removed = matches!(change, Change::ServerRemove { now: true, .. });
        let response = self.change_inner(change);
        self.cut_removed = false;
        response
    }

    fn change_inner(&mut self, change: Change) -> Response {
        let mut next = self.effective.clone();
        if let Err(refusal) = change.apply(&mut next) {
            return Response::refused(refusal.message);
        }
        if let Err(errors) = next.validate() {
            return Response::refused(errors.to_string());
        }
        let violations = overlay::check_transition(&self.effective, &next);
        if !violations.is_empty() {
            return Response::refused(violations.join("\n"));
        }
        // Ids must be available before anything is persisted.
        if let Err(e) = plan::plan(&next, &self.runtime, &mut self.ids.clone()) {
            return Response::refused(e.to_string());
        }
        let mut overlay = self.overlay.clone();
        overlay.push(change.clone());
        if let Err(e) = overlay::save_state_with_drains(
            &self.state_path,
            self.instance(),
            &overlay,
            &self.drains,
        ) {
            return Response::failed(e.to_string());
        }
        let previous = std::mem::replace(&mut self.effective, next);
        self.overlay = overlay;
        match self.apply() {
            Ok(ops) => {
                self.refresh_health_targets();
                info!("{} ({ops} map operation(s))", change.describe());
                Response::ok(format!("{}: done", change.describe()), ops)
            }
            Err(e) => {
                // Put the previous state back, in the maps and on disk.
                self.effective = previous;
                self.overlay.pop();
                let _ = overlay::save_state_with_drains(
                    &self.state_path,
                    self.instance(),
                    &self.overlay,
                    &self.drains,
                );
                let _ = self.apply();
                Response::failed(format!("{}: {e:#}", change.describe()))
            }
        }
    }

    /// Re-reads the config file; applies only the difference, with the overlay replayed.
    pub fn reload(&mut self) -> Response {
        let base = match config::load(&self.options.config_path) {
            Ok(c) => c,
            Err(errors) => {
                return Response::refused(format!(
                    "{} has {} error(s); nothing was changed:\n{errors}",
                    self.options.config_path.display(),
                    errors.len()
                ));
            }
        };
        if base.instance != self.base.instance {
            return Response::refused(format!(
                "the config names instance {} but this daemon runs {}; nothing was changed \
                 (an instance is renamed by a restart)",
                base.instance, self.base.instance
            ));
        }
        if sizes(&base) != sizes(&self.base) {
            return Response::refused(
                "flow_table_size, max_listeners and max_backends size the pinned maps; \
                 changing them needs `lb-ctl teardown` and a restart; nothing was changed",
            );
        }
        let (next, kept, conflicts) = overlay::replay(&base, &self.overlay);
        let violations = overlay::check_transition(&self.effective, &next);
        if !violations.is_empty() {
            return Response::refused(format!(
                "the new config breaks these rules; nothing was changed:\n{}",
                violations.join("\n")
            ));
        }
        if let Err(e) = plan::plan(&next, &self.runtime, &mut self.ids.clone()) {
            return Response::refused(format!("{e}; nothing was changed"));
        }
        if kept != self.overlay
            && let Err(e) = overlay::save_state_with_drains(
                &self.state_path,
                self.instance(),
                &kept,
                &self.drains,
            )
        {
            return Response::failed(e.to_string());
        }
        let interfaces_changed = next.interfaces != self.effective.interfaces;
        self.base = base;
        self.effective = next;
        self.overlay = kept;
        self.conflicts = conflicts.clone();
        for c in &conflicts {
            warn!("runtime change dropped, it no longer fits the config: {c}");
        }
        if interfaces_changed && let Err(e) = self.reattach() {
            return Response::failed(format!("{e:#}"));
        }
        // Also without new interfaces: the VIPs, and so which of them are local, may
        // have changed.
        self.prepare_host();
        match self.apply() {
            Ok(ops) => {
                self.refresh_health_targets();
                info!("config reloaded: {ops} map operation(s)");
                let mut message = format!("reloaded: {ops} map operation(s)");
                for c in &conflicts {
                    message.push_str(&format!("\ndropped runtime change: {c}"));
                }
                Response::ok(
                    message,
                    serde_json::json!({ "operations": ops, "conflicts": conflicts }),
                )
            }
            Err(e) => Response::failed(format!("{e:#}")),
        }
    }

    fn reattach(&mut self) -> anyhow::Result<()> {
        let old: Vec<u32> = self.attached.iter().map(|a| a.1).collect();
        self.attached = pins::attach(
            self.dataplane.program()?,
            &self.layout,
            &self.effective.interfaces,
            true,
        )?;
        for ifindex in old {
            if !self.attached.iter().any(|a| a.1 == ifindex) {
                self.dataplane.remove_tx_port(ifindex)?;
            }
        }
        for (name, ifindex, mode) in &self.attached {
            if *mode == pins::MISSING {
                warn!("interface {name} does not exist: XDP is not attached there");
            } else {
                self.dataplane.add_tx_port(*ifindex)?;
            }
        }
        Ok(())
    }

    /// Notices configured interfaces that disappeared or came back (a new index): logs it
    /// once, shows it in `status` (mode `missing`), and attaches again when it is back.
    pub fn check_interfaces(&mut self) -> anyhow::Result<()> {
        let mut reattach = false;
        for (name, ifindex, mode) in &mut self.attached {
            match pins::ifindex(name) {
                Ok(now) if now == *ifindex => {}
                Ok(now) => {
                    info!("interface {name} is back (ifindex {now}): attaching XDP again");
                    reattach = true;
                }
                Err(_) if *mode != pins::MISSING => {
                    warn!(
                        "interface {name} disappeared: its traffic is not balanced until it \
                         comes back (lb-ctl status shows it as missing)"
                    );
                    let gone = *ifindex;
                    *mode = pins::MISSING;
                    *ifindex = 0;
                    self.dataplane.remove_tx_port(gone)?;
                }
                Err(_) => {}
            }
        }
        if reattach {
            self.reattach()?;
            // A re-created interface starts from the kernel's defaults.
            self.prepare_host();
        }
        Ok(())
    }

    /// The kernel settings the data plane needs on the attached interfaces, checked
    /// against the VIPs of the effective config (see `host`).
    fn prepare_host(&self) {
        let interfaces: Vec<&str> = self
            .attached
            .iter()
            .filter(|(_, _, mode)| *mode != pins::MISSING)
            .map(|(name, _, _)| name.as_str())
            .collect();
        let vips = self.effective.listeners.iter().map(|l| l.address).collect();
        host::prepare(&host::Ipv4Conf::default(), &interfaces, &vips);
    }

    /// Counts active flows per backend by walking the flow table (LRU eviction and idle
    /// expiry decrement nothing in the data plane), and corrects the `wlc` counters. On a
    /// large table this takes a while: the daemon runs it off the lock (`sweep_job`,
    /// `run_sweep`, `finish_sweep`); here it runs in place, for small tables.
    pub fn sweep(&mut self) -> anyhow::Result<()> {
        let job = self.sweep_job()?;
        let mut result = SweepResult::empty();
        // Half-open flows are not counted, as in the background sweep: they become
        // active with the client's ACK (IPVS too counts SYN_RECV as inactive).
        for (key, flow) in self.dataplane.established_flows()? {
            result.add(&key, &flow, &job);
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
    pub fn sweep_job(&self) -> anyhow::Result<SweepJob> {
        Ok(SweepJob {
            flows_pin: self.layout.maps().join(lb_common::names::FLOWS),
            listeners: self
                .dataplane
                .listener_entries()?
                .into_iter()
                .filter(|(_, l)| l.flags & LISTENER_F_VIP_MARKER == 0)
                .map(|(_, l)| (l.id, l))
                .collect(),
            now: monotonic_coarse_ns(),
        })
    }

    /// Stores a sweep's counts and writes the `wlc` counters from them.
    pub fn finish_sweep(&mut self, result: SweepResult) -> anyhow::Result<()> {
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
    fn backends_of(&self, group: &str, address: std::net::Ipv4Addr, port: Option<u16>) -> Vec<u32> {
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
    fn fresh_counts(&mut self) -> anyhow::Result<()> {
        if self.sweep_is_cheap() {
            self.sweep()
        } else {
            Ok(())
        }
    }

    pub fn active_flows(
        &mut self,
        group: &str,
        address: std::net::Ipv4Addr,
        port: Option<u16>,
    ) -> Response {
        if let Err(e) = self.fresh_counts() {
            return Response::failed(format!("{e:#}"));
        }
        let ids = self.backends_of(group, address, port);
        let count: u32 = ids
            .iter()
            .map(|id| self.active.get(id).copied().unwrap_or(0))
            .sum();
        Response::ok(
            format!("{count} active flow(s)"),
            serde_json::json!({ "active_flows": count, "backends": ids.len() }),
        )
    }

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

    pub fn status(&mut self) -> anyhow::Result<Status> {
        self.fresh_counts()?;
        self.last_status()
    }

    /// `status` with the active-flow counts and flow-table occupancy of the last sweep
    /// (the daemon sweeps every `--sweep-interval`): what /metrics and the status page
    /// read, so a scrape or a page refresh never walks the flow table itself.
    pub fn last_status(&self) -> anyhow::Result<Status> {
        self.status_draft().fill(&self.dataplane)
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
                let now_mono = monotonic_coarse_ns();
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
                protocol: l.protocol.name().to_owned(),
                address: l.address,
                port: l.port,
                group: d.group.clone(),
                scheduler: d.scheduler.name().to_owned(),
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
            flow_table: api::FlowTableStatus {
                capacity: self.effective.flow_table_size,
                entries: self.flow_entries,
                evicted: 0,
            },
        };
        StatusDraft {
            status,
            listener_ids,
            at_s: self.started.elapsed().as_secs_f64(),
            maps_dir: self.layout.maps(),
            probes: self.health_snapshot(),
        }
    }

    /// The health checker's view (per-backend state, probe latency and counts); `None`
    /// until the daemon has attached a checker.
    pub fn health_snapshot(&self) -> Option<health::Snapshot> {
        self.health.as_ref().map(Checker::snapshot)
    }

    /// Flow table occupancy from the last sweep, and how many entries the LRU has evicted:
    /// entries ever added under a new 5-tuple minus entries present.
    pub fn flow_table(&self) -> anyhow::Result<api::FlowTableStatus> {
        let mut table = self.status_draft().status.flow_table;
        let inserted = self
            .dataplane
            .counter(lb_common::Reason::EventFlowInserted)?;
        table.evicted = inserted.saturating_sub(table.entries);
        Ok(table)
    }

    pub fn stats(&self) -> anyhow::Result<api::Stats> {
        let mut listeners = Vec::new();
        for d in self.desired.listeners.values() {
            let mut backends = Vec::new();
            for b in &d.backends {
                backends.push((
                    format!("{}:{}", b.key.address, b.key.port),
                    Counters::from(self.dataplane.backend_stats(b.id)?),
                ));
            }
            listeners.push(api::ListenerStats {
                name: d.name.clone(),
                stats: self.dataplane.listener_stats(d.id)?.into(),
                backends,
            });
        }
        Ok(api::Stats {
            at_s: self.started.elapsed().as_secs_f64(),
            listeners,
            reasons: self
                .dataplane
                .counters()?
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        })
    }

    /// `lb-ctl explain`.
    pub fn explain(
        &self,
        src: std::net::SocketAddrV4,
        dst: std::net::SocketAddrV4,
        protocol: &str,
        tcp_flags: Option<u8>,
    ) -> Response {
        let proto = match protocol {
            "tcp" => lb_common::PROTO_TCP,
            "udp" => lb_common::PROTO_UDP,
            other => {
                return Response::refused(format!("protocol `{other}` is not one of tcp, udp"));
            }
        };
        let flags = tcp_flags.unwrap_or(select::TCP_SYN);
        match crate::explain::explain(&self.dataplane, &self.desired, src, dst, proto, flags) {
            Ok(e) => Response::ok(e.steps.join("\n"), e),
            Err(e) => Response::failed(format!("{e:#}")),
        }
    }

    pub fn export(&self) -> String {
        self.effective.to_yaml()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn config_path(&self) -> &Path {
        &self.options.config_path
    }
}

/// The host's IPv4 addresses; none when they cannot be read (logged), as then nothing is
/// refused that a client could legitimately have.
fn host_addresses() -> std::collections::BTreeSet<std::net::Ipv4Addr> {
    match host::local_addresses() {
        Ok(addresses) => addresses.into_iter().map(|a| a.address).collect(),
        Err(e) => {
            warn!("cannot list the host's addresses, so none is refused as a client source: {e}");
            std::collections::BTreeSet::new()
        }
    }
}

/// Rebuilds ids and the reconciler's record from a pinned data plane, so the first
/// apply keeps every established flow's backend id and generation. Returns the configured
/// backends the data plane had marked unusable (down when the previous daemon stopped).
fn adopt(
    dataplane: &DataPlane,
    config: &Config,
    ids: &mut Ids,
    reconciler: &mut Reconciler,
) -> anyhow::Result<std::collections::BTreeSet<BackendKey>> {
    let mut down = std::collections::BTreeSet::new();
    let frontends: BTreeMap<lb_common::ListenerKey, (&str, Frontend)> = config
        .listeners
        .iter()
        .map(|l| {
            let f = Frontend::of(l);
            (f.key(), (l.name.as_str(), f))
        })
        .collect();
    let mut adopted = Vec::new();
    let mut vips = Vec::new();
    let mut by_id: HashMap<u32, Frontend> = HashMap::new();
    for (key, value) in dataplane.listener_entries()? {
        if value.flags & LISTENER_F_VIP_MARKER != 0 {
            vips.push((key.addr, value.flags));
            continue;
        }
        match frontends.get(&key) {
            Some((name, frontend)) => {
                ids.adopt_listener(*frontend, value.id);
                if value.acl_id != 0
                    && let Some(acl) = config.listener(name).and_then(|l| l.acl.as_ref())
                {
                    ids.adopt_acl(acl.name.clone(), value.acl_id);
                }
                by_id.insert(value.id, *frontend);
                adopted.push(((*name).to_owned(), key, value));
            }
            // A listener no longer in the config: recorded under a name no config
            // uses, so the first apply removes it.
            None => adopted.push((format!("stale listener {}", value.id), key, value)),
        }
    }
    reconciler.adopt(&adopted, &vips);
    reconciler.adopt_acl_entries(dataplane.acl_entries());
    reconciler.adopt_vip_filter(&dataplane.vip_filter()?);
    reconciler.adopt_endpoints(dataplane.endpoint_entries()?);
    for id in 0..config.max_backends {
        let b = dataplane.backend(id)?;
        if b.generation == 0 {
            continue;
        }
        if let Some(frontend) = by_id.get(&b.listener) {
            let key = BackendKey {
                frontend: *frontend,
                address: std::net::Ipv4Addr::from(b.addr.to_ne_bytes()),
                port: u16::from_be(b.port),
            };
            ids.adopt_backend(key, id, b.generation);
            if !b.is_usable() {
                down.insert(key);
            }
        } else {
            // Its listener is gone: the first apply retires it; its generation is kept so
            // the id's next owner never inherits its flows.
            ids.note_generation(id, b.generation);
        }
        reconciler.adopt_backend(id, b);
    }
    Ok(down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DataPlaneError;

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
