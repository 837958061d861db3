//! Deciding whether a privileged test can run here.
//!
//! Outside CI a test that cannot run (not root, no BPF) prints `SKIP: …` and returns, so
//! `cargo test` stays usable on a laptop. In CI (`CI=true`) the same situation is a
//! failure: a privileged test silently skipped there would be a test that never runs.

use std::{env, io, path::Path, process::Command};

/// `BPF_FS_MAGIC` from linux/magic.h: statfs(2) `f_type` of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted, and where lb-ctl pins.
const BPFFS: &str = "/sys/fs/bpf";

/// True when running in CI (`CI=true` or `CI=1`), where skipping is not allowed.
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Returns whether `test_name` can run: root, `ip` and `ethtool` available, network
/// namespaces creatable. Otherwise prints `SKIP: <test>: <why>` and returns false, or
/// panics with the reason when in CI.
pub fn require_root(test_name: &str) -> bool {
    decide(test_name, root_problem())
}

/// [`require_root`], plus BPF usable: the bpf(2) syscall creates a map, and bpffs is
/// mounted at /sys/fs/bpf (mounted here if it is not, as the project's setup does).
pub fn require_root_and_bpf(test_name: &str) -> bool {
    decide(test_name, root_problem().or_else(bpf_problem))
}

fn decide(test_name: &str, problem: Option<String>) -> bool {
    match problem {
        None => true,
        Some(why) if in_ci() => {
            panic!("{test_name}: cannot run ({why}), and skipping is not allowed in CI (CI=true)")
        }
        Some(why) => {
            eprintln!("SKIP: {test_name}: {why}");
            false
        }
    }
}

fn root_problem() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root (network namespaces and XDP need it)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("ethtool", "--version")] {
        match Command::new(tool).arg(arg).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Some(format!("`{tool} {arg}` failed: {}", out.status)),
            Err(e) => return Some(format!("`{tool}` is not available: {e}")),
        }
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("the kernel has no network namespaces".into());
    }
    None
}

fn bpf_problem() -> Option<String> {
    if let Err(e) = create_test_map() {
        return Some(format!("bpf(BPF_MAP_CREATE) fails: {e}"));
    }
    if !is_bpffs(BPFFS) {
        // Mounting is what the project's setup does anyway, and it is idempotent.
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf", BPFFS])
            .output();
        if !is_bpffs(BPFFS) {
            let detail = match out {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            return Some(format!(
                "bpffs is not mounted at {BPFFS} and cannot be: {detail}"
            ));
        }
    }
    None
}

/// Creates (and closes) a one-entry array map: the cheapest proof that bpf(2) works.
fn create_test_map() -> io::Result<()> {
    /// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel treats the
    /// attribute bytes we do not pass as zero.
    #[repr(C)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` of the size we
    // pass; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            size_of::<MapCreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just got and own.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type == BPF_FS_MAGIC)
}
