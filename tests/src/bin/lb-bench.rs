//! `lb-bench`: the benchmark suite of issue 6 (`cargo xtask bench` builds and runs it).
//!
//! ```text
//! lb-bench [--quick] [--only PART]... [--out FILE | --no-write] [--command TEXT]
//! ```
//!
//! Runs every part (or the `--only` ones: cost, forward, conn, control), prints the
//! targets and the main tables, and writes docs/benchmarks.md (only for a run of every
//! part, unless `--out` names a file). Needs root: it makes namespaces and loads XDP
//! programs. It reports; it exits non-zero only when it could not run at all or could
//! not write the report.

use std::{env, fs, path::PathBuf, process::ExitCode};

use clap::{Parser, builder::TypedValueParser as _};
use lb_tests::bench::{self, Part, Plan, report};

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
    /// Writes the report to FILE (by default docs/benchmarks.md, for a run of every part).
    #[arg(long, value_name = "FILE", conflicts_with = "no_write")]
    out: Option<PathBuf>,
    /// Writes no report.
    #[arg(long)]
    no_write: bool,
    /// The command line the report names as its source (by default this one).
    #[arg(long, value_name = "TEXT")]
    command: Option<String>,
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
    let out = match (args.out, args.no_write, all) {
        (Some(p), _, _) => Some(p),
        (None, false, true) => Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("docs")
                .join("benchmarks.md"),
        ),
        _ => None,
    };

    let result = bench::run(Plan::new(args.quick), &parts, command);
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
