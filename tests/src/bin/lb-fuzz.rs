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

use lb_tests::{
    fuzz::{self, FuzzOptions, Lab},
    require_root_and_bpf,
};

const USAGE: &str = "usage: lb-fuzz [--packets N (default 1000000)] [--seed S (decimal or 0x-hex, \
                     default 0x5eedf022)] [--examples K (default 3)] [--quiet]";

fn number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|e| format!("{flag} {v:?}: {e}\n{USAGE}"))
}

fn parse() -> Result<FuzzOptions, String> {
    let mut options = FuzzOptions {
        packets: 1_000_000,
        progress_every: 100_000,
        ..FuzzOptions::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--packets" => options.packets = number("--packets", value())?,
            "--seed" => options.seed = number("--seed", value())?,
            "--examples" => options.examples = number("--examples", value())? as usize,
            "--quiet" => options.progress_every = 0,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
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
