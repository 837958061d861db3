//! `lb-fuzz`: the long packet fuzzing run. Builds its own namespace, loads the XDP
//! program (nothing attached, nothing pinned), runs N seeded frames through it with
//! BPF_PROG_TEST_RUN and checks each against the packet policy's model
//! (`lb_tests::fuzz`). Needs root.
//!
//! ```text
//! lb-fuzz [--packets N] [--seed S] [--examples K] [--quiet]
//! ```
//!
//! Exit status: 0 when every frame followed the policy, 1 when the program disagreed (the
//! report lists each kind of disagreement with examples), 2 on bad usage or when it
//! cannot run here.

use std::{process::ExitCode, time::Instant};

use clap::Parser;
use lb_tests::{
    fuzz::{self, FuzzOptions, Lab},
    require_root_and_bpf,
};

/// The long packet fuzzing run.
#[derive(Debug, Parser)]
#[command(name = "lb-fuzz")]
struct Args {
    /// Frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Seed of the frame generator, decimal or 0x-hex (a report names the one that
    /// reproduces it).
    #[arg(long, value_parser = number, default_value_t = FuzzOptions::default().seed)]
    seed: u64,
    /// Examples shown for each kind of disagreement.
    #[arg(long, default_value_t = FuzzOptions::default().examples)]
    examples: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn number(v: &str) -> Result<u64, String> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = FuzzOptions {
        packets: args.packets,
        seed: args.seed,
        examples: args.examples,
        progress_every: if args.quiet { 0 } else { 100_000 },
    };
    if !require_root_and_bpf("lb-fuzz") {
        eprintln!("lb-fuzz needs root and BPF (it builds a network namespace and loads XDP)");
        return ExitCode::from(2);
    }
    eprintln!(
        "lb-fuzz: seed {:#x}, {} frames",
        options.seed, options.packets
    );
    let started = Instant::now();
    let lab = Lab::build("fuz");
    let report = match fuzz::run(&lab, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lb-fuzz: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    eprintln!("lb-fuzz: done in {:.1} s", started.elapsed().as_secs_f64());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
