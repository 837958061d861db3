//! `lb-bench`: the benchmark suite of issue 6 (`cargo xtask bench` builds and runs it).
//!
//! ```text
//! lb-bench [--quick] [--only PART]... [--out FILE | --no-write] [--command TEXT]
//!          [--backends N]... [--case NAME]... [--perf-case NAME --perf-control CTL,ACK]
//! ```
//!
//! Runs every part (or the `--only` ones: cost, forward, conn, control), prints the
//! targets and the main tables, and writes docs/benchmarks.md (only for a run of every
//! part at every backend count, unless `--out` names a file). Needs root: it makes namespaces and loads XDP
//! programs. It reports; it exits non-zero only when it could not run at all or could
//! not write the report.

use std::{env, fs, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, builder::TypedValueParser as _};
use lb_tests::bench::{self, Part, Plan, report, util::PerfWindow};

/// The benchmark suite (`cargo xtask bench` builds and runs it).
#[derive(Debug, Parser)]
#[command(name = "lb-bench")]
struct Args {
    /// Smaller sizes and fewer rounds: a check that every part runs, not figures to
    /// publish.
    #[arg(long)]
    quick: bool,
    /// Runs only this part (repeatable); every part by default.
    #[arg(long = "only", value_name = "PART", value_parser = part_parser())]
    parts: Vec<Part>,
    /// Writes the report to FILE (by default docs/benchmarks.md, for a run of every part
    /// at every backend count).
    #[arg(long, value_name = "FILE", conflicts_with = "no_write")]
    out: Option<PathBuf>,
    /// Writes no report.
    #[arg(long)]
    no_write: bool,
    /// The command line the report names as its source (by default this one).
    #[arg(long, value_name = "TEXT")]
    command: Option<String>,
    /// Measures the cost part at these backend counts only (repeatable; by default 1, 100
    /// and 10000). Such a run writes no report unless `--out` names a file.
    #[arg(long = "backends", value_name = "N", value_parser = backend_count)]
    backends: Vec<usize>,
    /// Measures only the cost case NAME, as the report's table names it (repeatable): a
    /// quick comparison of two builds on the cases a change is about. Such a run writes no
    /// report unless `--out` names a file.
    #[arg(long = "case", value_name = "NAME", value_parser = case_name)]
    cases: Vec<String>,
    /// Profiles the cost case NAME, as the report's table names it (e.g. "new flow each
    /// packet, table nearly empty"): perf samples only while it runs. Needs
    /// `--perf-control`.
    #[arg(long, value_name = "NAME", requires = "perf_control", value_parser = case_name)]
    perf_case: Option<String>,
    /// The control and acknowledgement FIFOs of a `perf record -D -1 --control
    /// fifo:CTL,ACK` already running (docs/development.md, "Profiling one cost case").
    #[arg(long, value_name = "CTL,ACK", requires = "perf_case", value_parser = fifo_pair)]
    perf_control: Option<(PathBuf, PathBuf)>,
}

/// A backend count the cost part can provision: 1 to its largest.
fn backend_count(s: &str) -> Result<usize, String> {
    let most = bench::cost::MOST_BACKENDS;
    match s.parse::<usize>() {
        Ok(n) if (1..=most).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a backend count from 1 to {most}, got {s:?}"
        )),
    }
}

/// A cost case by the name the report's table gives it; the refusal lists them.
fn case_name(s: &str) -> Result<String, String> {
    let names = bench::cost::Case::ALL.map(bench::cost::Case::name);
    if names.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "no cost case is named {s:?}; the cases are: {}",
            names.map(|n| format!("\"{n}\"")).join(", ")
        ))
    }
}

/// `CTL,ACK`: two paths.
fn fifo_pair(s: &str) -> Result<(PathBuf, PathBuf), String> {
    match s.split_once(',') {
        Some((ctl, ack)) if !ctl.is_empty() && !ack.is_empty() => {
            Ok((PathBuf::from(ctl), PathBuf::from(ack)))
        }
        _ => Err(format!(
            "expected the two FIFOs given to perf's --control, as CTL,ACK; got {s:?}"
        )),
    }
}

/// A part by its name; clap lists the names in its refusal.
fn part_parser() -> impl clap::builder::TypedValueParser<Value = Part> {
    clap::builder::PossibleValuesParser::new(Part::ALL.map(Part::name))
        .map(|name| Part::parse(&name).expect("the parser accepts only the parts' names"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        eprintln!("lb-bench: run as root (it creates network namespaces and loads XDP programs)");
        return ExitCode::FAILURE;
    }
    let all = args.parts.is_empty();
    let parts = if all { Part::ALL.to_vec() } else { args.parts };
    let command = args.command.unwrap_or_else(|| {
        let mut c = String::from("lb-bench");
        for a in env::args().skip(1) {
            c.push(' ');
            c.push_str(&a);
        }
        c
    });
    // docs/benchmarks.md holds full runs only: every part, at every backend count.
    let full = all && args.backends.is_empty() && args.cases.is_empty();
    let out = match (args.out, args.no_write, full) {
        (Some(p), _, _) => Some(p),
        (None, false, true) => Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("docs")
                .join("benchmarks.md"),
        ),
        _ => None,
    };

    let mut plan = Plan::new(args.quick);
    if !args.backends.is_empty() {
        plan.cost.backend_counts = args.backends;
    }
    plan.cost.cases = args
        .cases
        .iter()
        .filter_map(|name| {
            bench::cost::Case::ALL
                .into_iter()
                .find(|c| c.name() == name)
        })
        .collect();
    if let (Some(case), Some((ctl, ack))) = (args.perf_case, args.perf_control) {
        match PerfWindow::open(case, &ctl, &ack) {
            Ok(w) => plan.cost.perf = Some(Arc::new(w)),
            Err(e) => {
                eprintln!(
                    "lb-bench: cannot open perf's FIFOs {} and {}: {e}",
                    ctl.display(),
                    ack.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let result = bench::run(plan, &parts, command);
    print!("{}", report::terminal(&result));
    if let Some(path) = out {
        if let Err(e) = fs::write(&path, report::markdown(&result)) {
            eprintln!("lb-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("\nwrote {}", path.display());
    }
    ExitCode::SUCCESS
}
