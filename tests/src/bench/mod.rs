//! The benchmark suite behind `cargo xtask bench` (binary `lb-bench`): per-packet cost
//! ([`cost`]), forwarding rate on veth against nftables and kernel routing ([`forward`]),
//! connections and throughput against HAProxy ([`conn`]) and the control plane
//! ([`control`]). It reports; it never fails on a number. [`report`] turns the results
//! into the table printed at the end and into docs/benchmarks.md.
//!
//! Every part builds its own namespaces (addresses from 198.18.0.0/15 and 2001:db8::/32
//! only) and removes them when it ends, also when it fails: a failed part is recorded in
//! the report and the next one runs.

pub mod conn;
pub mod control;
pub mod cost;
pub mod forward;
pub mod kit;
pub mod prober;
pub mod report;
pub mod util;

use std::{
    panic::{self, AssertUnwindSafe},
    time::Instant,
};

use lb_ctl::dataplane::{DataPlane, LoadOptions, ProgramFigures};

use self::{
    conn::{ConnOptions, ConnReport},
    control::{ControlOptions, ControlReport},
    cost::{CostOptions, CostReport},
    forward::{ForwardOptions, ForwardReport},
    util::{Machine, load_average, say},
};

/// The parts of the suite, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Cost,
    Forward,
    Conn,
    Control,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Cost, Part::Forward, Part::Conn, Part::Control];

    pub fn name(self) -> &'static str {
        match self {
            Part::Cost => "cost",
            Part::Forward => "forward",
            Part::Conn => "conn",
            Part::Control => "control",
        }
    }

    pub fn parse(s: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Sizes of one run: `--quick` or the full suite.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub cost: CostOptions,
    pub forward: ForwardOptions,
    pub conn: ConnOptions,
    pub control: ControlOptions,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                cost: CostOptions {
                    rounds: 3,
                    samples: 5_000,
                    new_flow_samples: 4_096,
                    repeat: 200_000,
                    new_flow_repeat: 16_384,
                    prefill_factor: 1.1,
                    backend_counts: vec![1, cost::SCHEDULERS_AT, cost::MOST_BACKENDS],
                    runs: 1,
                    perf: None,
                    cases: Vec::new(),
                },
                forward: ForwardOptions {
                    rounds: 3,
                    frames: 1 << 18,
                    new_flow_frames: 1 << 16,
                },
                conn: ConnOptions {
                    rounds: 3,
                    seconds: 1.5,
                    iperf_seconds: 2,
                },
                control: ControlOptions {
                    maglev_rounds: 5,
                    adds: 20,
                    probe_seconds: 5,
                },
            }
        } else {
            Plan {
                quick,
                cost: CostOptions {
                    rounds: 9,
                    samples: 20_000,
                    new_flow_samples: 8_192,
                    repeat: 1_000_000,
                    new_flow_repeat: 32_768,
                    prefill_factor: 1.25,
                    backend_counts: vec![1, cost::SCHEDULERS_AT, cost::MOST_BACKENDS],
                    runs: 3,
                    perf: None,
                    cases: Vec::new(),
                },
                forward: ForwardOptions {
                    rounds: 9,
                    frames: 1 << 20,
                    new_flow_frames: 1 << 18,
                },
                conn: ConnOptions {
                    rounds: 5,
                    seconds: 3.0,
                    iperf_seconds: 3,
                },
                control: ControlOptions {
                    maglev_rounds: 15,
                    adds: 50,
                    probe_seconds: 10,
                },
            }
        }
    }
}

/// How one part went.
#[derive(Clone, Debug)]
pub enum Outcome<T> {
    Skipped,
    Failed(String),
    Done(T),
}

impl<T> Outcome<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            Outcome::Done(t) => Some(t),
            _ => None,
        }
    }
}

/// Load averages around a part, and its duration.
#[derive(Clone, Debug, Default)]
pub struct PartTiming {
    pub load_before: String,
    pub load_after: String,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub plan: Plan,
    pub seconds: f64,
    pub load_at_end: String,
    pub cost: Outcome<CostReport>,
    pub forward: Outcome<ForwardReport>,
    pub conn: Outcome<ConnReport>,
    pub control: Outcome<ControlReport>,
    /// What the kernel's verifier said of each production program; measured on every
    /// run, whatever the parts (it takes well under a second).
    pub verifier: Outcome<Vec<ProgramFigures>>,
    pub timings: Vec<(Part, PartTiming)>,
}

/// Runs one part, turning an error or a panic into `Failed` (the guards inside have
/// already removed its namespaces while unwinding).
fn part<T>(
    p: Part,
    parts: &[Part],
    timings: &mut Vec<(Part, PartTiming)>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> Outcome<T> {
    if !parts.contains(&p) {
        return Outcome::Skipped;
    }
    say(format!(
        "part {} starts (load {})",
        p.name(),
        load_average()
    ));
    let load_before = load_average();
    let started = Instant::now();
    let outcome = match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(t)) => Outcome::Done(t),
        Ok(Err(e)) => Outcome::Failed(format!("{e:#}")),
        Err(payload) => Outcome::Failed(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned()),
        ),
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Outcome::Failed(why) = &outcome {
        say(format!("part {} FAILED: {why}", p.name()));
    }
    say(format!("part {} took {seconds:.0} s", p.name()));
    timings.push((
        p,
        PartTiming {
            load_before,
            load_after: load_average(),
            seconds,
        },
    ));
    outcome
}

/// Runs the selected parts of `plan`.
pub fn run(plan: Plan, parts: &[Part], command: String) -> Report {
    let machine = Machine::read();
    let started = Instant::now();
    let mut timings = Vec::new();
    let cost = part(Part::Cost, parts, &mut timings, || cost::run(&plan.cost));
    let forward = part(Part::Forward, parts, &mut timings, || {
        forward::run(&plan.forward)
    });
    let conn = part(Part::Conn, parts, &mut timings, || conn::run(&plan.conn));
    let control = part(Part::Control, parts, &mut timings, || {
        Ok(control::run(&plan.control))
    });
    let verifier = match DataPlane::load(&LoadOptions::default()) {
        Ok(dp) => Outcome::Done(dp.program_figures().to_vec()),
        Err(e) => Outcome::Failed(format!("loading the XDP programs: {e}")),
    };
    Report {
        machine,
        command,
        plan,
        seconds: started.elapsed().as_secs_f64(),
        load_at_end: load_average(),
        cost,
        forward,
        conn,
        control,
        verifier,
        timings,
    }
}
