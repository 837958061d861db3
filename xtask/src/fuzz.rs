//! `cargo xtask fuzz [--packets N] [--seed S]`: the long packet-fuzzing run (at least a
//! million frames by default) through BPF_PROG_TEST_RUN, each verdict checked against the
//! host-side model of docs/packet-policy.md. `cargo xtask test` runs a 20,000-frame slice.

use anyhow::bail;

use crate::{
    bootstrap::{self, Group},
    build,
    process::{Cmd, is_root, target_dir},
};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Frames to generate.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Seed of the generator (the same seed generates the same frames).
    #[arg(long)]
    seed: Option<String>,
}

pub fn fuzz(args: &FuzzArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the fuzzer loads the XDP program and makes a network namespace: run as root");
    }
    bootstrap::bootstrap(&[Group::Build, Group::Test])?;
    build::cargo_build(true)?;
    let mut cmd = Cmd::new(target_dir().join("release").join("lb-fuzz"))
        .args(["--packets", &args.packets.to_string()]);
    if let Some(seed) = &args.seed {
        cmd = cmd.args(["--seed", seed]);
    }
    cmd.run()
}
