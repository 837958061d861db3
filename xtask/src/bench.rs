//! `cargo xtask bench [--quick]`: set up the machine (the build and test tools plus the
//! baselines: nftables, HAProxy, iperf3), build the release profile, then run
//! `target/release/lb-bench`, which prints the targets and tables and writes
//! docs/benchmarks.md. The suite reports; it does not fail on a number.

use anyhow::bail;

use crate::{
    bootstrap::{self, Group},
    build,
    process::{Cmd, is_root, target_dir},
};

/// The parts `lb-bench --only` knows.
const PARTS: [&str; 4] = ["cost", "forward", "conn", "control"];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Fewer rounds and samples, the same structure: a few minutes instead of the full run.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (cost, forward, conn, control); docs/benchmarks.md is written
    /// only by a run of every part.
    #[arg(long, value_name = "PART")]
    only: Vec<String>,
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    for part in &args.only {
        if !PARTS.contains(&part.as_str()) {
            bail!("--only {part}: the parts are {}", PARTS.join(", "));
        }
    }
    if !is_root() {
        bail!(
            "the benchmark creates network namespaces, loads XDP programs and starts \
             HAProxy: run as root"
        );
    }
    bootstrap::bootstrap(&[Group::Build, Group::Test, Group::Bench])?;
    build::cargo_build(true)?;
    // The exact command goes into docs/benchmarks.md.
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command.push_str(" --quick");
    }
    let mut cmd = Cmd::new(target_dir().join("release").join("lb-bench"));
    if args.quick {
        cmd = cmd.arg("--quick");
    }
    for part in &args.only {
        command.push_str(" --only ");
        command.push_str(part);
        cmd = cmd.args(["--only", part]);
    }
    cmd.args(["--command", &command]).run()
}
