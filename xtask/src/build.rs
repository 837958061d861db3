//! `cargo xtask build`: set up, then build every host crate; lb-ctl's build script
//! compiles the XDP program (lb-ebpf) with the eBPF toolchain and embeds it.

use std::{path::PathBuf, time::Instant};

use crate::{
    bootstrap::{self, Group},
    process::{Cmd, fmt_duration, lb_ctl_path, workspace_root},
};

pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    bootstrap::bootstrap(&[Group::Build])?;
    let started = Instant::now();
    cargo_build(release)?;
    let lb_ctl = lb_ctl_path(release);
    let shown = lb_ctl.strip_prefix(workspace_root()).unwrap_or(&lb_ctl);
    let skipped =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!(
        "built in {}: {} ({})",
        fmt_duration(started.elapsed()),
        shown.display(),
        if skipped {
            "AYA_BUILD_SKIP is set: no XDP program embedded"
        } else {
            "with the XDP program embedded"
        }
    );
    Ok(lb_ctl)
}

/// `cargo build --workspace` without lb-ebpf, which only builds for the BPF target (lb-ctl's
/// build script builds it). Produces lb-ctl and the test helper binaries.
pub fn cargo_build(release: bool) -> anyhow::Result<()> {
    let cmd = Cmd::cargo().args(["build", "--workspace", "--exclude", "lb-ebpf"]);
    let cmd = if release { cmd.arg("--release") } else { cmd };
    cmd.run()?;
    let lb_ctl = lb_ctl_path(release);
    anyhow::ensure!(lb_ctl.is_file(), "the build left no {}", lb_ctl.display());
    Ok(())
}
