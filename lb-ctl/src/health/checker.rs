//! The scheduler: runs every target's probe on its own jittered cadence with bounded
//! concurrency, feeds the results into the targets' state machines and reports changes.
//!
//! Design for scale (10,000 targets at a 1 s interval on one core):
//! - one scheduler task owns a single timer, reset to the earliest due probe of a binary
//!   heap; there is no task or timer per target;
//! - a due probe runs as one short task in a `JoinSet`, which the scheduler owns, so
//!   aborting the scheduler aborts every probe in flight; the task, not the scheduler,
//!   waits for a permit of the semaphore that bounds concurrency, so a saturated checker
//!   delays probes but never stops the scheduler from dispatching the others;
//! - each target's first probe is at a random offset within its interval and each round
//!   is jittered by ±10%, so probes spread evenly instead of firing in bursts;
//! - at most one probe per target is in flight: a round that comes due while the previous
//!   probe still runs starts when that probe ends. A backend that accepts connections and
//!   never answers therefore holds one socket and one permit, not one per interval until
//!   the timeout, and cannot use up the permits every other target needs. The cost is
//!   that a target whose probes each run until the timeout is probed every
//!   max(interval, timeout), so a failure is detected within
//!   interval + unhealthy_threshold × max(interval, timeout) (+ jitter), the bound
//!   docs/config.md promises.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap, hash_map::RandomState},
    hash::BuildHasher,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{Notify, Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, info};

use super::{
    Target, Transition,
    histogram::Histogram,
    machine::{Cause, Change, Machine, State, Thresholds},
    probe::{Probe, ProbeError},
    slow_start::slow_start_weight,
};
use crate::{
    config::{HealthCheckKind, HealthCheckSource},
    plan::BackendKey,
};

/// Probes in flight at most, by default. Each holds one socket: the daemon's open-file
/// limit must leave room for them.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Due probes taken off the heap under one lock, so a burst of due probes does not keep
/// `snapshot` or the probe tasks waiting on the lock.
const DISPATCH_BATCH: usize = 256;

/// How long the scheduler sleeps when nothing is due; `set_targets` wakes it earlier.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerOptions {
    /// Source addresses of the probes (`health_check_source`), one per family; the
    /// kernel picks one when `None`, or for a family without one.
    pub source: Option<HealthCheckSource>,
    /// Probes in flight at most; further due probes wait for a slot (each in its own task:
    /// the scheduler never waits for one).
    pub max_in_flight: usize,
}

impl Default for CheckerOptions {
    fn default() -> Self {
        Self {
            source: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The health checker of one daemon. Dropping it (or `shutdown`) stops every probe.
#[derive(Debug)]
pub struct Checker {
    shared: Arc<Shared>,
    scheduler: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Inner>,
    /// Wakes the scheduler when the targets change.
    wake: Notify,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    transitions: mpsc::UnboundedSender<Transition>,
}

impl Checker {
    /// Starts the checker with no targets on the current tokio runtime (panics outside
    /// one). Transitions arrive on the returned receiver: unbounded, because a change of
    /// health must neither be lost nor stall probing, and there are at most a few per
    /// backend and flap-damping window.
    pub fn new(options: CheckerOptions) -> (Self, mpsc::UnboundedReceiver<Transition>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let max_in_flight = options.max_in_flight.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(Inner::new(options.source)),
            wake: Notify::new(),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            transitions: tx,
        });
        let scheduler = tokio::spawn(run_scheduler(Arc::clone(&shared)));
        (Self { shared, scheduler }, rx)
    }

    /// Replaces the set of targets. A target whose key and check are unchanged keeps its
    /// state and schedule (weight, slow start and listener name are updated); a new or
    /// changed one starts healthy, and if the one it replaces was down, a transition to
    /// up is sent. Targets not in `targets` are dropped, without a message. Keys should
    /// be unique; of duplicates the last one wins.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let transitions = {
            let mut inner = self.shared.lock();
            inner.replace_targets(targets, now())
        };
        for t in transitions {
            self.shared.send(t);
        }
        self.shared.wake.notify_one();
    }

    /// Starts these probed backends down, without a transition: a restarted daemon found
    /// them down in the pinned data plane, and must not send them new flows before their
    /// probes succeed `healthy_threshold` times. Unprobed targets are left up (nothing
    /// would ever bring them back).
    pub fn assume_down(&self, keys: &BTreeSet<BackendKey>) {
        let mut inner = self.shared.lock();
        for key in keys {
            if let Some(entry) = inner.entries.get_mut(key)
                && entry.probe.is_some()
            {
                entry.machine.assume_down();
            }
        }
    }

    /// Changes the probes' source addresses, from the next probe on.
    pub fn set_source(&self, source: Option<HealthCheckSource>) {
        self.shared.lock().source = source;
    }

    /// The backends that are down now (held down included): the checker's share of
    /// `Runtime.unhealthy`, for a controller rebuilding it wholesale.
    pub fn unhealthy(&self) -> BTreeSet<BackendKey> {
        self.shared
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| !e.machine.is_up())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Backends whose slow start is under way at `now`, with their effective weight: the
    /// contents of `Runtime.effective_weight`. While it is not empty the controller
    /// should re-plan periodically (every second is plenty); once a ramp ends its backend
    /// drops out of the list and is back at its configured weight.
    pub fn ramping(&self, now: Instant) -> Vec<(BackendKey, u32)> {
        self.shared.lock().ramping(now)
    }

    /// The state of every target and the probe metrics, for `lb-ctl status`.
    pub fn snapshot(&self) -> Snapshot {
        let in_flight = self
            .shared
            .max_in_flight
            .saturating_sub(self.shared.permits.available_permits());
        let mut snapshot = self.shared.lock().snapshot(now(), SystemTime::now());
        snapshot.in_flight = in_flight;
        snapshot
    }

    /// Stops the scheduler and every probe in flight; no transition is sent after it.
    pub fn shutdown(&self) {
        self.scheduler.abort();
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.scheduler.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves state that is still consistent enough
        // to report (counters, last results), so keep going rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, t: Transition) {
        // The receiver is gone only when the daemon is shutting down.
        let _ = self.transitions.send(t);
    }
}

/// The instant the checker runs on: tokio's clock, so a test with paused time drives
/// schedule, state machines and slow start alike.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn run_scheduler(shared: Arc<Shared>) {
    let mut probes = JoinSet::new();
    let sleep = tokio::time::sleep(IDLE_SLEEP);
    tokio::pin!(sleep);
    loop {
        // Finished probe tasks stay in the set until taken out; reaping here, rather
        // than waking on each completion, costs nothing extra per probe.
        while probes.try_join_next().is_some() {}
        let at = now();
        let (due, next) = shared.lock().pop_due(at, DISPATCH_BATCH);
        if due.is_empty() {
            let deadline = next.unwrap_or(at + IDLE_SLEEP);
            sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            tokio::select! {
                () = &mut sleep => {}
                () = shared.wake.notified() => {}
            }
            continue;
        }
        for dispatch in due {
            let shared = Arc::clone(&shared);
            probes.spawn(async move {
                // Waiting here rather than in the scheduler: when every permit is taken,
                // only the probes that come due wait, in turn, and the schedule goes on.
                let Ok(permit) = Arc::clone(&shared.permits).acquire_owned().await else {
                    // The semaphore is never closed.
                    return;
                };
                let started = now();
                let result = dispatch.probe.run(dispatch.source).await;
                let latency = now().saturating_duration_since(started);
                drop(permit);
                let (transition, requeued) = {
                    let mut inner = shared.lock();
                    let done = now();
                    let requeued = inner.release(&dispatch, done);
                    let transition =
                        inner.finish(&dispatch, started, latency, result, done, SystemTime::now());
                    (transition, requeued)
                };
                if let Some(t) = transition {
                    shared.send(t);
                }
                if requeued {
                    // Its overdue round is due now: the scheduler may be asleep until later.
                    shared.wake.notify_one();
                }
            });
        }
    }
}

/// One probe to run: what, against whom, and where its result goes.
#[derive(Debug)]
struct Dispatch {
    key: BackendKey,
    slot: u64,
    seq: u64,
    due: Instant,
    probe: Arc<Probe>,
    /// The source of the probe's family, if `health_check_source` gives one.
    source: Option<IpAddr>,
}

#[derive(Debug)]
struct Entry {
    /// Identity of this incarnation of the target: queue entries and results of an
    /// earlier incarnation (same key, other check) carry another slot and are ignored.
    slot: u64,
    target: Target,
    /// `None` when the target is not probed (`type: none`, unprobed secondary).
    probe: Option<Arc<Probe>>,
    interval: Duration,
    machine: Machine,
    /// A probe of this target is running; its next round waits for it.
    in_flight: bool,
    /// A round came due while a probe was in flight: it starts when that probe ends.
    overdue: bool,
    /// Sequence number of the next probe, and of the last one whose result was applied.
    next_seq: u64,
    applied_seq: u64,
    last_probe: Option<LastProbe>,
    last_change: Option<SystemTime>,
    /// Start of the current slow-start ramp.
    ramp_from: Option<Instant>,
}

/// Everything behind the lock. Methods take the time as arguments: tests drive them
/// without a runtime or a network.
#[derive(Debug)]
struct Inner {
    entries: HashMap<BackendKey, Entry>,
    /// Due time of each probed target's next probe, earliest first. Entries of removed
    /// or replaced targets are left in and skipped when they come up.
    queue: BinaryHeap<Reverse<(Instant, u64, BackendKey)>>,
    source: Option<HealthCheckSource>,
    next_slot: u64,
    /// The first `set_targets` describes what was already serving (the initial config,
    /// or a restarted daemon's): nothing is "added", so nothing ramps.
    initialized: bool,
    rng: Rng,
    latency: Histogram,
    dispatch_lag: Histogram,
    probes_ok: u64,
    probes_failed: u64,
}

impl Inner {
    fn new(source: Option<HealthCheckSource>) -> Self {
        Self {
            entries: HashMap::new(),
            queue: BinaryHeap::new(),
            source,
            next_slot: 0,
            initialized: false,
            rng: Rng::seeded(),
            latency: Histogram::default(),
            dispatch_lag: Histogram::default(),
            probes_ok: 0,
            probes_failed: 0,
        }
    }

    fn replace_targets(&mut self, targets: Vec<Target>, now: Instant) -> Vec<Transition> {
        let first = !self.initialized;
        self.initialized = true;
        let mut old = std::mem::take(&mut self.entries);
        let mut transitions = Vec::new();
        for target in targets {
            let key = target.key;
            let previous = match old.remove(&key) {
                Some(mut kept) if kept.target.same_check(&target) => {
                    kept.target = target;
                    self.entries.insert(key, kept);
                    continue;
                }
                previous => previous,
            };
            let recovered = previous.as_ref().is_some_and(|p| !p.machine.is_up());
            if let Some(previous) = &previous
                && recovered
            {
                let reason = if target.probe && target.kind != HealthCheckKind::None {
                    "health check changed"
                } else {
                    "no longer probed"
                };
                transitions.push(transition(&previous.target, true, reason.to_owned()));
            }
            let slot = self.next_slot;
            self.next_slot += 1;
            let probe = if target.probe {
                Probe::new(
                    target.kind,
                    &target.check,
                    target.endpoint().ip(),
                    target.port,
                    target.tunnel,
                )
                .map(Arc::new)
            } else {
                None
            };
            let interval = Duration::from_secs(target.check.interval.max(1).into());
            if probe.is_some() {
                // The first probe at a random point of the first interval: targets added
                // together (all of them, at start-up) spread over the interval.
                let due = now + interval.mul_f64(self.rng.unit());
                self.queue.push(Reverse((due, slot, key)));
            }
            // Slow start covers a backend added to a running checker, and one that comes
            // back up because its check changed.
            let ramp_from = (target.slow_start > 0
                && (recovered || (!first && previous.is_none())))
            .then_some(now);
            let entry = Entry {
                slot,
                machine: Machine::new(Thresholds::of(&target.check)),
                target,
                probe,
                interval,
                in_flight: false,
                overdue: false,
                next_seq: 1,
                applied_seq: 0,
                last_probe: None,
                last_change: None,
                ramp_from,
            };
            self.entries.insert(key, entry);
        }
        transitions
    }

    /// Takes up to `max` probes due at `now` off the queue and schedules each target's
    /// next round. Returns them and the due time of the next probe after them.
    fn pop_due(&mut self, now: Instant, max: usize) -> (Vec<Dispatch>, Option<Instant>) {
        let mut due = Vec::new();
        while due.len() < max {
            let Some(Reverse((at, slot, key))) = self.queue.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.queue.pop();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.slot != slot {
                continue;
            }
            let Some(probe) = &entry.probe else {
                continue;
            };
            if entry.in_flight {
                // No second probe of a target in flight: the round is taken off the queue
                // and put back when the running probe ends (`release`).
                entry.overdue = true;
                continue;
            }
            // ±10% per round keeps targets from falling into step with one another.
            let jittered = entry.interval.mul_f64(0.9 + 0.2 * self.rng.unit());
            // Next round on the target's own cadence; if the scheduler fell a whole
            // round behind (probes saturated), start afresh from now instead of firing
            // the missed rounds back to back.
            let mut next = at + jittered;
            if next <= now {
                next = now + jittered;
            }
            self.queue.push(Reverse((next, slot, key)));
            due.push(Dispatch {
                key,
                slot,
                seq: entry.next_seq,
                due: at,
                probe: Arc::clone(probe),
                source: self.source.and_then(|s| s.for_backend(probe.target.ip())),
            });
            entry.in_flight = true;
            entry.next_seq += 1;
        }
        let next = self.queue.peek().map(|Reverse((at, _, _))| *at);
        (due, next)
    }

    /// Marks the probe of `dispatch` as ended at `now`; a round that came due meanwhile is
    /// queued for `now`. Returns whether one was (the scheduler then needs a wake-up).
    fn release(&mut self, dispatch: &Dispatch, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&dispatch.key) else {
            return false;
        };
        if entry.slot != dispatch.slot {
            // A probe of an earlier incarnation: the current one has its own schedule.
            return false;
        }
        entry.in_flight = false;
        if !std::mem::take(&mut entry.overdue) {
            return false;
        }
        self.queue.push(Reverse((now, dispatch.slot, dispatch.key)));
        true
    }

    /// Applies the result of a probe that started at `started`; returns the transition
    /// it causes.
    fn finish(
        &mut self,
        dispatch: &Dispatch,
        started: Instant,
        latency: Duration,
        result: Result<(), ProbeError>,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Transition> {
        self.latency.observe(latency);
        self.dispatch_lag
            .observe(started.saturating_duration_since(dispatch.due));
        match &result {
            Ok(()) => self.probes_ok += 1,
            Err(_) => self.probes_failed += 1,
        }
        let entry = self.entries.get_mut(&dispatch.key)?;
        if entry.slot != dispatch.slot || dispatch.seq <= entry.applied_seq {
            // Removed or replaced (with one probe per target in flight, a later probe of
            // the same incarnation cannot have finished first).
            return None;
        }
        entry.applied_seq = dispatch.seq;
        let target = &entry.target;
        debug!(
            backend = %target.endpoint(),
            listener = %target.listener,
            result = %result.as_ref().err().map_or_else(|| "ok".to_owned(), ToString::to_string),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "health probe"
        );
        let held_before = matches!(entry.machine.state(), State::HeldDown { .. });
        let change = entry.machine.record(result.is_ok(), now);
        let failure = result.as_ref().err().cloned();
        entry.last_probe = Some(LastProbe {
            at: wall,
            latency,
            result,
        });

        let damping = entry.machine.thresholds().flap_damping;
        if let (State::HeldDown { .. }, false, Some(d)) =
            (entry.machine.state(), held_before, damping)
            && change.is_none()
        {
            // A hold that started without a change of the shown state (the backend was
            // down and its probes brought it up): nothing for the data plane, but worth
            // one line, since the backend now stays down whatever its probes say.
            info!(
                "backend {} of listener {} is held down for {} s: more than {} state changes \
                 within {} s",
                target.endpoint(),
                target.listener,
                d.hold,
                d.max_flaps,
                d.window
            );
        }
        let Change { up, cause } = change?;
        let reason = match cause {
            Cause::Failures { count, held_until } => {
                let why = failure.map_or_else(|| "failed".to_owned(), |e| e.to_string());
                let mut reason = format!("{why} ({count} consecutive failures)");
                if let (Some(until), Some(d)) = (held_until, damping) {
                    let hold = until.saturating_duration_since(now).as_secs();
                    reason.push_str(&format!(
                        "; flapping (more than {} changes within {} s), held down for {hold} s",
                        d.max_flaps, d.window
                    ));
                }
                reason
            }
            Cause::Successes { count } => format!("ok ({count} consecutive successes)"),
            Cause::HoldExpired => "flap damping hold ended".to_owned(),
        };
        entry.last_change = Some(wall);
        if up && entry.target.slow_start > 0 {
            entry.ramp_from = Some(now);
        }
        let mut t = transition(&entry.target, up, reason);
        t.at = wall;
        Some(t)
    }

    fn ramping(&self, now: Instant) -> Vec<(BackendKey, u32)> {
        let mut out: Vec<(BackendKey, u32)> = self
            .entries
            .iter()
            .filter_map(|(key, e)| Some((*key, e.ramp_weight(now)?)))
            .collect();
        out.sort_unstable();
        out
    }

    fn snapshot(&self, now: Instant, wall: SystemTime) -> Snapshot {
        let mut backends: Vec<BackendHealth> = self
            .entries
            .values()
            .map(|e| {
                let state = match e.machine.state() {
                    State::Up => HealthState::Up,
                    State::Down => HealthState::Down,
                    State::HeldDown { until } => HealthState::HeldDown {
                        until: wall + until.saturating_duration_since(now),
                    },
                };
                BackendHealth {
                    key: e.target.key,
                    probed: e.probe.is_some(),
                    state,
                    last_probe: e.last_probe.clone(),
                    last_change: e.last_change,
                    #[cfg(test)]
                    consecutive_successes: e.machine.consecutive_successes(),
                    #[cfg(test)]
                    consecutive_failures: e.machine.consecutive_failures(),
                    flaps_in_window: e.machine.flaps_in_window(now),
                    #[cfg(test)]
                    slow_start_weight: e.ramp_weight(now),
                }
            })
            .collect();
        backends.sort_unstable_by_key(|b| b.key);
        Snapshot {
            backends,
            latency: self.latency.clone(),
            dispatch_lag: self.dispatch_lag.clone(),
            probes_ok: self.probes_ok,
            probes_failed: self.probes_failed,
            in_flight: 0,
        }
    }
}

impl Entry {
    /// The slow-start weight at `now` while a ramp is under way and the backend is up.
    fn ramp_weight(&self, now: Instant) -> Option<u32> {
        let from = self.ramp_from?;
        let t = &self.target;
        let since = now.saturating_duration_since(from);
        let ramping = self.machine.is_up()
            && t.weight > 0
            && since < Duration::from_secs(t.slow_start.into());
        ramping.then(|| slow_start_weight(t.weight, since, t.slow_start))
    }
}

/// A transition of `target`, logged once here at info level.
fn transition(target: &Target, healthy: bool, reason: String) -> Transition {
    info!(
        "backend {} of listener {} is {}: {reason}",
        target.endpoint(),
        target.listener,
        if healthy { "up" } else { "down" }
    );
    Transition {
        key: target.key,
        listener: target.listener.clone(),
        healthy,
        reason,
        at: SystemTime::now(),
    }
}

/// The state of every target and the probe metrics.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// By key.
    pub backends: Vec<BackendHealth>,
    /// Duration of every probe (successful or not).
    pub latency: Histogram,
    /// How late probes started against their schedule: the checker keeps up while this
    /// stays in the lowest buckets.
    pub dispatch_lag: Histogram,
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// Probes running now.
    pub in_flight: usize,
}

#[derive(Clone, Debug)]
pub struct BackendHealth {
    pub key: BackendKey,
    /// False for `type: none` and unprobed secondaries, which are always up.
    pub probed: bool,
    pub state: HealthState,
    pub last_probe: Option<LastProbe>,
    /// When the state last changed; `None` if it never did.
    pub last_change: Option<SystemTime>,
    /// The state machine's run of results, for the tests of the checker.
    #[cfg(test)]
    pub consecutive_successes: u32,
    #[cfg(test)]
    pub consecutive_failures: u32,
    /// Changes of state within the flap-damping window (0 without flap damping).
    pub flaps_in_window: u32,
    /// The slow-start weight while a ramp is under way (the checker's tests; the
    /// controller reads `Checker::ramping`).
    #[cfg(test)]
    pub slow_start_weight: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    Up,
    Down,
    /// Held down by flap damping until then, whatever the probes say.
    HeldDown {
        until: SystemTime,
    },
}

impl HealthState {
    #[cfg(test)]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::HeldDown { .. } => "held down",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastProbe {
    pub at: SystemTime,
    pub latency: Duration,
    pub result: Result<(), ProbeError>,
}

impl LastProbe {
    /// `ok` or the failure reason (`refused`, `timeout`, `status 503`, ...).
    pub fn reason(&self) -> String {
        match &self.result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }
    }
}

/// splitmix64: jitter needs spread, not secrecy, and this keeps `rand` out of the
/// dependencies. Seeded from std's per-process random hasher keys.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        Self(RandomState::new().hash_one(0x5eed_u64))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
