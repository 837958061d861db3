//! Steady traffic of new HTTP connections in a thread while a test changes something (a
//! server added, a backend killed, the daemon restarted), recorded in batches with their
//! times, so the test can tell what failed before, across and after the change.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{BulkOptions, Netns, Tally, curl_many_with};

/// How the traffic runs, and its bounds.
#[derive(Debug, Clone)]
pub struct SteadyOptions {
    /// New connections per batch.
    pub batch: usize,
    /// Connections of a batch open at once.
    pub parallel: usize,
    /// Limits of each request and of a batch.
    pub requests: BulkOptions,
    /// The traffic stops after this many batches, or this long, whatever comes first.
    pub max_batches: usize,
    pub max_time: Duration,
}

/// One batch of steady traffic: when it started and ended, and what it got.
pub struct Batch {
    pub started: Instant,
    pub ended: Instant,
    pub tally: Tally,
}

/// Steady traffic shared between the thread running it and the test making changes.
pub struct Steady {
    options: SteadyOptions,
    stop: AtomicBool,
    /// Batches finished so far.
    done: AtomicUsize,
    /// Requests failed so far (for messages).
    failed: AtomicUsize,
}

impl Steady {
    pub fn new(options: SteadyOptions) -> Self {
        Self {
            options,
            stop: AtomicBool::new(false),
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        }
    }

    /// Batches of new connections to `url`, one after another with a 20 ms pause, until
    /// stopped or a bound is reached.
    pub fn run(&self, ns: &Netns, url: &str) -> Vec<Batch> {
        let o = &self.options;
        let end = Instant::now() + o.max_time;
        let mut batches = Vec::new();
        while !self.stop.load(Ordering::SeqCst)
            && batches.len() < o.max_batches
            && Instant::now() < end
        {
            let started = Instant::now();
            let results = curl_many_with(ns, url, o.batch, None, o.parallel, &o.requests);
            let tally = Tally::of(&results);
            self.failed.fetch_add(tally.failed(), Ordering::SeqCst);
            batches.push(Batch {
                started,
                ended: Instant::now(),
                tally,
            });
            self.done.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        batches
    }

    /// Waits at least `min_time`, and until `min_batches` more batches have finished, so a
    /// change happens with traffic really flowing; panics if the traffic stopped, or if
    /// the batches take 20 s longer than `min_time`.
    pub fn wait(&self, min_batches: usize, min_time: Duration) {
        let start = Instant::now();
        let target = self.done.load(Ordering::SeqCst) + min_batches;
        while self.done.load(Ordering::SeqCst) < target || start.elapsed() < min_time {
            assert!(
                !self.stop.load(Ordering::SeqCst),
                "steady traffic ended early (bounds reached)"
            );
            assert!(
                start.elapsed() < min_time + Duration::from_secs(20),
                "{min_batches} more batch(es) of traffic did not finish in time: {} \
                 request(s) failed so far",
                self.failed.load(Ordering::SeqCst)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the traffic when dropped, also when the test panics while it runs (so the
    /// scope joining the traffic thread does not wait for the bounds).
    pub fn stop_on_drop(&self) -> StopOnDrop<'_> {
        StopOnDrop(self)
    }
}

pub struct StopOnDrop<'a>(&'a Steady);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// The sum of the batches' tallies.
pub fn merged<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> Tally {
    let mut total = Tally::default();
    for b in batches {
        for (name, n) in &b.tally.answers {
            *total.answers.entry(name.clone()).or_default() += n;
        }
        total.failures.extend(b.tally.failures.iter().cloned());
    }
    total
}

/// The last failure after `t0`, in seconds after `t0` (by the end of its batch, an upper
/// bound on when it happened), for messages.
pub fn last_failing_batch(batches: &[Batch], t0: Instant) -> Option<f64> {
    batches
        .iter()
        .filter(|b| b.tally.failed() > 0 && b.ended >= t0)
        .map(|b| b.ended.duration_since(t0).as_secs_f64())
        .reduce(f64::max)
}
