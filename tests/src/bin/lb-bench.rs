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
use lb_tests::bench::{self, Part, Plan, cost::Case, report, util::PerfWindow};

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
    #[arg(long = "case", value_name = "NAME", value_parser = case_by_name)]
    cases: Vec<Case>,
    /// Profiles the cost case NAME, as the report's table names it (e.g. "new flow each
    /// packet, table nearly empty"): perf samples only while it runs. Needs
    /// `--perf-control`, and the cost part in the run (with `--case`, among its cases).
    #[arg(long, value_name = "NAME", requires = "perf_control", value_parser = case_by_name)]
    perf_case: Option<Case>,
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
fn case_by_name(s: &str) -> Result<Case, String> {
    Case::ALL
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            format!(
                "no cost case is named {s:?}; the cases are: {}",
                Case::ALL.map(|c| format!("\"{}\"", c.name())).join(", ")
            )
        })
}

/// Why `--perf-case` would sample nothing in this run, if it would not.
fn perf_case_unreachable(perf_case: Case, parts: &[Part], cases: &[Case]) -> Option<String> {
    let name = perf_case.name();
    if !parts.contains(&Part::Cost) {
        return Some(format!(
            "--perf-case \"{name}\" is a cost case, but the run leaves the cost part out \
             (add --only cost)"
        ));
    }
    if !cases.is_empty() && !cases.contains(&perf_case) {
        return Some(format!(
            "--perf-case \"{name}\" is not among the --case cases, so it never runs \
             (add --case \"{name}\")"
        ));
    }
    None
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
    let all = args.parts.is_empty();
    let parts = if all { Part::ALL.to_vec() } else { args.parts };
    if let Some(why) = args
        .perf_case
        .and_then(|case| perf_case_unreachable(case, &parts, &args.cases))
    {
        eprintln!("lb-bench: {why}");
        return ExitCode::FAILURE;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("lb-bench: run as root (it creates network namespaces and loads XDP programs)");
        return ExitCode::FAILURE;
    }
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
    plan.cost.cases = args.cases;
    if let (Some(case), Some((ctl, ack))) = (args.perf_case, args.perf_control) {
        match PerfWindow::open(case.name().to_owned(), &ctl, &ack) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perf_case_the_run_never_reaches_is_refused_with_the_fix() {
        let why = perf_case_unreachable(Case::NewEmpty, &[Part::Cost], &[Case::Reply])
            .expect("a case left out by --case is refused");
        assert_eq!(
            why,
            "--perf-case \"new flow each packet, table nearly empty\" is not among the --case \
             cases, so it never runs (add --case \"new flow each packet, table nearly empty\")"
        );
        let why = perf_case_unreachable(Case::Reply, &[Part::Forward], &[])
            .expect("a run without the cost part is refused");
        assert!(why.contains("(add --only cost)"), "{why}");
    }

    #[test]
    fn a_perf_case_the_run_reaches_is_accepted() {
        assert_eq!(perf_case_unreachable(Case::Reply, &Part::ALL, &[]), None);
        assert_eq!(
            perf_case_unreachable(Case::Reply, &[Part::Cost], &[Case::NonVip, Case::Reply]),
            None
        );
    }

    #[test]
    fn a_case_name_maps_to_its_case_and_a_wrong_one_lists_them() {
        assert_eq!(case_by_name("reply (backend → client)"), Ok(Case::Reply));
        let err = case_by_name("reply").unwrap_err();
        assert!(
            err.starts_with("no cost case is named \"reply\"; the cases are: "),
            "{err}"
        );
        assert!(err.contains("\"reply (backend → client)\""), "{err}");
    }
}
