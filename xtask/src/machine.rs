//! The machine report of `cargo xtask setup` and of the start of `cargo xtask test`: the
//! versions that decide whether the kernel accepts the XDP program (the kernel verifies
//! what the eBPF rustc, its LLVM and bpf-linker produced) and the kernel features the
//! program needs. A machine where the program is rejected can be compared with one where
//! it loads line by line, and a kernel without a feature fails here, before the build.

use std::{fs, path::Path};

use anyhow::bail;

use crate::{
    bootstrap::{self, BPFFS, Linked},
    process::Cmd,
};

/// The kernel's own BTF: the project supports only kernels that have it, and aya reads it
/// when it loads the object.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The first kernel with the `bpf_loop` helper (the `wlc` scheduler's scan).
const BPF_LOOP_SINCE: (u32, u32) = (5, 17);

fn say(label: &str, text: impl AsRef<str>) {
    println!("[setup]   {label:<11} {}", text.as_ref());
}

/// Prints the report; fails when the kernel lacks something the program needs.
pub fn report() -> anyhow::Result<()> {
    println!("[setup] this machine (compare with one where the XDP program loads):");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    say(
        "kernel",
        if release.is_empty() {
            "unknown"
        } else {
            &release
        },
    );

    let toolchain = bootstrap::ebpf_toolchain();
    let ebpf = rustc(Some(&toolchain));
    say(
        "eBPF rustc",
        format!("{} [toolchain {toolchain}]", ebpf.version),
    );
    let host = rustc(None);
    say("host rustc", &host.version);

    let linker = bootstrap::find_on_path("bpf-linker");
    let linker_llvm = match &linker {
        Some(path) => bootstrap::linked_llvm_major(path).ok().flatten(),
        None => None,
    };
    let llvm_major = match &linker_llvm {
        Some(Linked::Major(major)) => Some(*major),
        _ => ebpf.llvm_major(),
    };
    let llvm_config = llvm_major.and_then(llvm_config_version);
    say(
        "LLVM",
        format!(
            "{} (eBPF rustc), {}",
            ebpf.llvm.as_deref().unwrap_or("unknown"),
            llvm_config.map_or_else(
                || "no llvm-config of bpf-linker's LLVM".to_owned(),
                |(what, v)| format!("{v} ({what}, bpf-linker's)")
            ),
        ),
    );
    let linker_text = match &linker {
        None => "not on PATH".to_owned(),
        Some(path) => {
            let version = Cmd::new(path)
                .arg("--version")
                .probe()
                .ok()
                .flatten()
                .and_then(|(_, out)| bpf_linker_version(&out).map(str::to_owned))
                .unwrap_or_else(|| "(version unknown)".to_owned());
            let llvm = match linker_llvm {
                Some(Linked::Major(major)) => format!("linked to libLLVM {major}"),
                Some(Linked::NotFound) => "its libLLVM is not installed".to_owned(),
                None => "statically linked LLVM".to_owned(),
            };
            format!("{version}, {llvm} ({})", path.display())
        }
    };
    say("bpf-linker", linker_text);

    let kernel = parse_kernel_release(&release);
    let checks = [btf(), bpf_loop(kernel), bpffs()];
    let mut missing = Vec::new();
    for check in &checks {
        match &check.outcome {
            Ok(how) => say(check.name, format!("ok: {how}")),
            Err(fix) => {
                say(check.name, format!("MISSING: {fix}"));
                missing.push(check.name);
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "this kernel lacks what the XDP program needs: {} (see the lines above)",
            missing.join(", ")
        );
    }
    Ok(())
}

struct Check {
    name: &'static str,
    /// What was found, or what is missing and what to do.
    outcome: Result<String, String>,
}

fn btf() -> Check {
    Check {
        name: "BTF",
        outcome: if Path::new(VMLINUX_BTF).is_file() {
            Ok(VMLINUX_BTF.to_owned())
        } else {
            Err(format!(
                "no {VMLINUX_BTF}: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (distribution \
                 kernels are)"
            ))
        },
    }
}

/// The helper is there when the running kernel's symbols name its implementation; that
/// also covers distribution kernels that backported it. Without a symbol table, the
/// version decides.
fn bpf_loop(kernel: Option<(u32, u32)>) -> Check {
    let (major, minor) = BPF_LOOP_SINCE;
    let version = match kernel {
        Some((a, b)) => format!("kernel {a}.{b}"),
        None => "kernel version unknown".to_owned(),
    };
    let new_enough = kernel.is_some_and(|k| k >= BPF_LOOP_SINCE);
    let fix = format!("boot kernel {major}.{minor} or newer (the wlc scheduler uses bpf_loop)");
    let outcome = match fs::read_to_string("/proc/kallsyms")
        .ok()
        .as_deref()
        .map(has_bpf_loop)
    {
        Some(Some(true)) => Ok(format!("{version}, `bpf_loop` in /proc/kallsyms")),
        Some(Some(false)) if new_enough => Err(format!(
            "{version} ≥ {major}.{minor}, but no `bpf_loop` in /proc/kallsyms: boot a kernel \
             with BPF (CONFIG_BPF_SYSCALL=y)"
        )),
        Some(Some(false)) => Err(format!("{version}, no `bpf_loop` in /proc/kallsyms: {fix}")),
        // No symbol table to read.
        Some(None) | None if new_enough => Ok(format!("{version} ≥ {major}.{minor}")),
        Some(None) | None => Err(format!("{version} < {major}.{minor}: {fix}")),
    };
    Check {
        name: "bpf_loop",
        outcome,
    }
}

fn bpffs() -> Check {
    Check {
        name: "bpffs",
        outcome: match bootstrap::bpffs_mounted() {
            Ok(true) => Ok(format!("mounted on {BPFFS}")),
            Ok(false) => Err(format!(
                "not mounted on {BPFFS}: `mount -t bpf bpf {BPFFS}` as root (setup does it)"
            )),
            Err(e) => Err(format!("{e:#}")),
        },
    }
}

/// A rustc's `--version` line and the LLVM of `-vV`.
struct Rustc {
    version: String,
    llvm: Option<String>,
}

impl Rustc {
    fn llvm_major(&self) -> Option<u32> {
        self.llvm.as_deref().and_then(major)
    }
}

/// `rustc [+toolchain] -vV`, quietly; never downloads a toolchain.
fn rustc(toolchain: Option<&str>) -> Rustc {
    let cmd = Cmd::new("rustc").env("RUSTUP_AUTO_INSTALL", "0");
    let cmd = match toolchain {
        Some(t) => cmd.arg(format!("+{t}")),
        None => cmd,
    };
    match cmd.arg("-vV").probe() {
        Ok(Some((status, out))) if status.success() => Rustc {
            version: rustc_version(&out).unwrap_or("unknown").to_owned(),
            llvm: llvm_version(&out).map(str::to_owned),
        },
        _ => Rustc {
            version: "not installed".to_owned(),
            llvm: None,
        },
    }
}

/// `llvm-config --version` of LLVM `major` (`LLVM_PREFIX`, else Debian's
/// `/usr/lib/llvm-N`): the LLVM bpf-linker is built against. Returns (which, version).
fn llvm_config_version(major: u32) -> Option<(String, String)> {
    let config = bootstrap::llvm_prefix(major).join("bin/llvm-config");
    let (status, out) = Cmd::new(&config).arg("--version").probe().ok()??;
    status
        .success()
        .then(|| (config.display().to_string(), out.trim().to_owned()))
}

/// `6.18.44-fc-v1252` → (6, 18).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// The first line of `rustc -vV`, less the program name: `1.96.0 (ac68faa20 2026-05-25)`.
pub fn rustc_version(vv: &str) -> Option<&str> {
    vv.lines().next()?.trim().strip_prefix("rustc ")
}

/// `LLVM version: 22.1.8` of `rustc -vV`.
pub fn llvm_version(vv: &str) -> Option<&str> {
    vv.lines()
        .find_map(|line| line.trim().strip_prefix("LLVM version: "))
        .map(str::trim)
}

/// `22.1.8` → 22.
pub fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}

/// `bpf-linker 0.13.0` → `0.13.0`.
pub fn bpf_linker_version(out: &str) -> Option<&str> {
    let mut words = out.split_whitespace();
    (words.next()? == "bpf-linker")
        .then(|| words.next())
        .flatten()
}

/// Whether a `/proc/kallsyms` text names the `bpf_loop` helper's function; `None` when
/// it lists no function at all (a kernel without kallsyms).
pub fn has_bpf_loop(kallsyms: &str) -> Option<bool> {
    let mut any = false;
    for line in kallsyms.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_address), Some(kind), Some(name)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        any = true;
        if name == "bpf_loop" {
            return Some(true);
        }
    }
    any.then_some(false)
}

#[cfg(test)]
mod tests {
    use super::{
        bpf_linker_version, has_bpf_loop, llvm_version, major, parse_kernel_release, rustc_version,
    };

    #[test]
    fn kernel_releases_give_major_and_minor() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v1252\n"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_release("5.17-rc3"), Some((5, 17)));
        assert_eq!(parse_kernel_release("6.1.0+"), Some((6, 1)));
        assert_eq!(
            parse_kernel_release("4.18.0-553.el8_10.x86_64"),
            Some((4, 18))
        );
        assert_eq!(parse_kernel_release(""), None);
        assert_eq!(parse_kernel_release("linux"), None);
    }

    #[test]
    fn rustc_lines_give_the_version_and_its_llvm() {
        let vv = "rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)
binary: rustc
commit-hash: ac68faa20c58cbccd01ee7208bf3b6e93a7d7f96
host: x86_64-unknown-linux-gnu
release: 1.96.0
LLVM version: 22.1.8
";
        assert_eq!(
            rustc_version(vv),
            Some("1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)")
        );
        assert_eq!(llvm_version(vv), Some("22.1.8"));
        assert_eq!(llvm_version(vv).and_then(major), Some(22));
        assert_eq!(llvm_version("rustc 1.0.0\n"), None);
        assert_eq!(rustc_version("error: toolchain 'x' is not installed"), None);
    }

    #[test]
    fn bpf_linker_prints_its_name_and_version() {
        assert_eq!(bpf_linker_version("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(bpf_linker_version("something 1.0"), None);
        assert_eq!(bpf_linker_version(""), None);
    }

    #[test]
    fn kallsyms_tells_whether_the_kernel_has_bpf_loop() {
        let with = "ffffffff8152e470 t bpf_for_each_map_elem\nffffffff8152e480 T bpf_loop\n";
        assert_eq!(has_bpf_loop(with), Some(true));
        // Unprivileged readers see zero addresses; the names are still there.
        assert_eq!(has_bpf_loop("0000000000000000 T bpf_loop\n"), Some(true));
        let without = "ffffffff8152e470 T bpf_for_each_map_elem\nffffffff81000000 D bpf_loop\n";
        assert_eq!(has_bpf_loop(without), Some(false));
        assert_eq!(
            has_bpf_loop("ffffffffc0a01000 t bpf_loop_x\t[some_module]\n"),
            Some(false)
        );
        assert_eq!(has_bpf_loop(""), None);
    }
}
