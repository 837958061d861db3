//! `cargo xtask build`: set up, then build every host crate; lb-ctl's build script
//! compiles the XDP program (lb-ebpf) with the eBPF toolchain and embeds it.

use std::{path::PathBuf, time::Instant};

use crate::{
    bootstrap::{self, Group},
    process::{Cmd, fmt_duration, lb_ctl_path, target_dir, workspace_root},
};

/// Names the XDP object built with per-packet logging for the verifier budget test.
pub const DEBUG_LOG_OBJECT_VAR: &str = "LB_EBPF_DEBUG_LOG_OBJECT";

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

/// Where `build_debug_log_object` leaves the object.
pub fn debug_log_object_path() -> PathBuf {
    target_dir()
        .join("ebpf-debug-log")
        .join("bpfel-unknown-none")
        .join("release")
        .join("lb-ebpf")
}

/// Builds the XDP object with per-packet logging (what `LB_EBPF_DEBUG_LOG=1` embeds), on
/// its own, for the verifier budget test: the budget holds for that build too, and a
/// second lb-ctl would cost a full build. Same command as lb-ctl's build script runs
/// through aya-build, in a target dir of its own.
pub fn build_debug_log_object() -> anyhow::Result<PathBuf> {
    let toolchain = bootstrap::ebpf_toolchain();
    const SEPARATOR: &str = "\x1f";
    let rustflags = [
        &format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join(SEPARATOR);
    Cmd::cargo()
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .arg(format!("+{toolchain}"))
        .args(["build", "-p", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--features", "debug-log", "--target-dir"])
        .arg(target_dir().join("ebpf-debug-log"))
        .run()?;
    let object = debug_log_object_path();
    anyhow::ensure!(object.is_file(), "the build left no {}", object.display());
    Ok(object)
}
