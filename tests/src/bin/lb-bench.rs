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

use lb_tests::bench::{self, Part, Plan, report};

struct Args {
    quick: bool,
    parts: Vec<Part>,
    out: Option<PathBuf>,
    no_write: bool,
    command: Option<String>,
}

fn usage() -> String {
    format!(
        "usage: lb-bench [--quick] [--only PART]... [--out FILE | --no-write] [--command TEXT]\n\
         PART is one of: {}",
        report::part_names()
    )
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        parts: Vec::new(),
        out: None,
        no_write: false,
        command: None,
    };
    let mut it = env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--only" => {
                let name = it.next().ok_or("--only needs a part name")?;
                let p = Part::parse(&name).ok_or(format!("unknown part {name:?}"))?;
                args.parts.push(p);
            }
            "--out" => args.out = Some(it.next().ok_or("--out needs a file")?.into()),
            "--no-write" => args.no_write = true,
            "--command" => args.command = Some(it.next().ok_or("--command needs text")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.no_write && args.out.is_some() {
        return Err("--out and --no-write exclude each other".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("lb-bench: {msg}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
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
