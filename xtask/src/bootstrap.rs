//! `cargo xtask setup`: brings a fresh Debian machine to the state the build and the
//! tests need, idempotently. Every check prints one line; only what is missing is done.
//!
//! Order: Debian packages (apt), the `deb-web` rustup toolchain (a link to Debian's
//! rustc), bpf-linker (built against LLVM 22), the bpffs mount. Everything is checked
//! before anything is changed, so a user who is not root gets the full list of what is
//! missing instead of a half-done machine.

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    machine,
    process::{Cmd, fmt_duration, is_root},
};

/// Names the rustup toolchain that compiles `lb-ebpf`; read by `lb-build` (the build scripts
/// of lb-ctl and tests) too.
pub const TOOLCHAIN_VAR: &str = "LB_EBPF_TOOLCHAIN";
/// Debian's rustc 1.96 (LLVM 22) with its own library source, linked into rustup.
pub const DEFAULT_TOOLCHAIN: &str = "deb-web";
/// Where Debian's `rustc-web` lives; `rustup toolchain link deb-web` points there.
const DEB_WEB_PREFIX: &str = "/usr";

/// bpf-linker release installed when it is missing (builds with the default stable).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version of rustc-web, which bpf-linker must be built against. With
/// another eBPF toolchain, that toolchain's LLVM major is required instead.
const DEB_WEB_LLVM: u32 = 22;

pub const BPFFS: &str = "/sys/fs/bpf";

/// What a command needs installed. `build` needs `Build`; `test` and `run` need `Build`
/// and `Test`; a command that needs more names its extra groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Compile lb-ctl with its embedded XDP object.
    Build,
    /// Run the fixtures and the end-to-end tests (and the demo).
    Test,
    /// Benchmarks: the nftables and HAProxy baselines.
    Bench,
    /// The status-page test's headless browser.
    Browser,
    /// Build and run the container image: podman (with runc, which runs where the default
    /// runtime does not) and debootstrap for a base image when no registry answers.
    Container,
}

struct PackageSet {
    group: Group,
    /// Shown in the progress line.
    what: &'static str,
    packages: &'static [&'static str],
    /// Only needed when the eBPF toolchain is Debian's (`deb-web`).
    deb_web_only: bool,
}

/// Debian packages per group.
const PACKAGES: &[PackageSet] = &[
    // Build: Debian's rustc 1.96 with its matching library source (for
    // `-Z build-std=core`) and clippy: the `deb-web` eBPF toolchain.
    PackageSet {
        group: Group::Build,
        what: "eBPF toolchain",
        packages: &["rustc-web", "rust-web-src", "cargo-web", "rust-web-clippy"],
        deb_web_only: true,
    },
    // Build: LLVM 22 and the libraries bpf-linker links against.
    PackageSet {
        group: Group::Build,
        what: "LLVM 22 for bpf-linker",
        packages: &[
            "llvm-22-dev",
            "libpolly-22-dev",
            "libzstd-dev",
            "zlib1g-dev",
        ],
        deb_web_only: false,
    },
    // Test: what the fixtures, the end-to-end tests and the demo drive (namespaces,
    // veths, clients, GRO settings, small HTTP servers, nsenter).
    PackageSet {
        group: Group::Test,
        what: "test tools",
        packages: &[
            "iproute2",
            "curl",
            "iperf3",
            "ethtool",
            "python3",
            "util-linux",
            "iputils-ping",
        ],
        deb_web_only: false,
    },
    // Test, and running with a `bgp` section: the daemon runs BIRD 2 to announce the VIPs,
    // and the BGP end-to-end test runs a router's BIRD too.
    PackageSet {
        group: Group::Test,
        what: "BGP speaker (BIRD 2)",
        packages: &["bird2"],
        deb_web_only: false,
    },
    // Test: promtool, which checks the alert rules in deploy/prometheus and runs their
    // unit tests. Debian ships it only with the server; on a host that runs systemd the
    // package also starts a Prometheus (`systemctl disable --now prometheus` stops it).
    PackageSet {
        group: Group::Test,
        what: "alert rules checker (promtool, from prometheus)",
        packages: &["prometheus"],
        deb_web_only: false,
    },
    // Test: the active/standby test runs keepalived in each LB namespace.
    PackageSet {
        group: Group::Test,
        what: "VRRP (keepalived)",
        packages: &["keepalived"],
        deb_web_only: false,
    },
    // Bench: the baselines the XDP forwarder is measured against.
    PackageSet {
        group: Group::Bench,
        what: "benchmark baselines",
        packages: &["nftables", "haproxy"],
        deb_web_only: false,
    },
    // Browser: headless Chromium for the status-page test.
    PackageSet {
        group: Group::Browser,
        what: "headless browser",
        packages: &["chromium"],
        deb_web_only: false,
    },
    // Container: the image build and the container tests (binutils strips the binary).
    PackageSet {
        group: Group::Container,
        what: "container tools",
        packages: &["podman", "runc", "debootstrap", "binutils"],
        deb_web_only: false,
    },
];

/// The eBPF toolchain name: `LB_EBPF_TOOLCHAIN`, else `deb-web`.
pub fn ebpf_toolchain() -> String {
    env::var(TOOLCHAIN_VAR)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TOOLCHAIN.to_owned())
}

fn say(line: impl AsRef<str>) {
    println!("[setup] {}", line.as_ref());
}

/// Something to do, decided after all checks ran.
enum Action {
    AptInstall(Vec<&'static str>),
    LinkToolchain,
    InstallBpfLinker { llvm: u32, replace: bool },
    MountBpffs,
}

impl Action {
    fn needs_root(&self) -> bool {
        matches!(self, Self::AptInstall(_) | Self::MountBpffs)
    }

    fn describe(&self) -> String {
        match self {
            Self::AptInstall(pkgs) => format!(
                "apt-get update && apt-get install -y --no-install-recommends {}",
                pkgs.join(" ")
            ),
            Self::LinkToolchain => {
                format!("rustup toolchain link {DEFAULT_TOOLCHAIN} {DEB_WEB_PREFIX}")
            }
            Self::InstallBpfLinker { llvm, replace } => {
                bpf_linker_install_cmd(*llvm, *replace).text()
            }
            Self::MountBpffs => format!("mount -t bpf bpf {BPFFS}"),
        }
    }
}

/// Checks the machine for what `groups` need and installs what is missing.
pub fn bootstrap(groups: &[Group]) -> anyhow::Result<()> {
    let started = Instant::now();
    let toolchain = ebpf_toolchain();
    let deb_web = toolchain == DEFAULT_TOOLCHAIN;
    let needs = |g: Group| groups.contains(&g);
    let mut actions = Vec::new();

    // 1. Debian packages.
    let sets: Vec<&PackageSet> = PACKAGES
        .iter()
        .filter(|set| needs(set.group) && (deb_web || !set.deb_web_only))
        .collect();
    let wanted: Vec<&'static str> = sets
        .iter()
        .flat_map(|s| s.packages.iter().copied())
        .collect();
    match installed_packages(&wanted)? {
        Some(installed) => {
            let mut missing = Vec::new();
            for set in &sets {
                let absent: Vec<_> = set
                    .packages
                    .iter()
                    .copied()
                    .filter(|p| !installed.iter().any(|i| i == p))
                    .collect();
                if absent.is_empty() {
                    say(format!("Debian packages, {}: present", set.what));
                } else {
                    say(format!(
                        "Debian packages, {}: missing {}",
                        set.what,
                        absent.join(" ")
                    ));
                    missing.extend(absent);
                }
            }
            if !missing.is_empty() {
                actions.push(Action::AptInstall(missing));
            }
        }
        None => say(format!(
            "no dpkg-query: not a Debian system, cannot check packages; make sure these (or \
             your distribution's equivalents) are installed: {}",
            wanted.join(" ")
        )),
    }

    // 2. The eBPF toolchain.
    let mut llvm = DEB_WEB_LLVM;
    if needs(Group::Build) {
        if deb_web {
            if rustup_has_toolchain(DEFAULT_TOOLCHAIN)? {
                say(format!("rustup toolchain {DEFAULT_TOOLCHAIN}: present"));
            } else {
                say(format!(
                    "rustup toolchain {DEFAULT_TOOLCHAIN}: missing, will link Debian's rustc \
                     ({DEB_WEB_PREFIX})"
                ));
                actions.push(Action::LinkToolchain);
            }
        } else {
            llvm = check_custom_toolchain(&toolchain)?;
        }
    }

    // 3. bpf-linker against the eBPF toolchain's LLVM.
    if needs(Group::Build) {
        let install = |replace| Action::InstallBpfLinker { llvm, replace };
        match bpf_linker_state(llvm)? {
            LinkerState::Good(version) => {
                say(format!("bpf-linker {version} (LLVM {llvm}): present"));
            }
            LinkerState::Unknown(version) => say(format!(
                "bpf-linker {version}: present, LLVM version unknown (not linked to a shared \
                 libLLVM and not in cargo's install records); it must be built against LLVM \
                 {llvm}"
            )),
            LinkerState::WrongLlvm(version, major) => {
                say(format!(
                    "bpf-linker {version} is built against LLVM {major}, need {llvm}: will \
                     reinstall {BPF_LINKER_VERSION} (1-2 minutes)"
                ));
                actions.push(install(true));
            }
            LinkerState::Broken(why) => {
                say(format!(
                    "bpf-linker: present but {why}: will reinstall {BPF_LINKER_VERSION} against \
                     LLVM {llvm} (1-2 minutes)"
                ));
                actions.push(install(true));
            }
            LinkerState::Missing => {
                say(format!(
                    "bpf-linker: missing, will install {BPF_LINKER_VERSION} against LLVM {llvm} \
                     (1-2 minutes)"
                ));
                actions.push(install(false));
            }
        }
    }

    // 4. bpffs, where the daemon and the tests pin maps and links.
    if needs(Group::Test) {
        if bpffs_mounted()? {
            say(format!("bpffs on {BPFFS}: mounted"));
        } else {
            say(format!("bpffs on {BPFFS}: not mounted, will mount"));
            actions.push(Action::MountBpffs);
        }
    }

    if actions.is_empty() {
        say(format!(
            "nothing to do ({})",
            fmt_duration(started.elapsed())
        ));
        return Ok(());
    }

    if !is_root() && actions.iter().any(Action::needs_root) {
        say("not root, so nothing was changed; this machine needs:");
        for action in &actions {
            let who = if action.needs_root() {
                "as root"
            } else {
                "as you "
            };
            say(format!("  {who}: {}", action.describe()));
        }
        let why: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::AptInstall(_) => Some("install Debian packages"),
                Action::MountBpffs => Some("mount bpffs"),
                Action::LinkToolchain | Action::InstallBpfLinker { .. } => None,
            })
            .collect();
        bail!(
            "setup needs root to {}: run the commands above, or `cargo xtask setup` as root",
            why.join(" and ")
        );
    }

    for action in actions {
        match action {
            Action::AptInstall(pkgs) => {
                say(format!("installing Debian packages: {}", pkgs.join(" ")));
                Cmd::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .arg("update")
                    .run()?;
                Cmd::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&pkgs)
                    .run()?;
            }
            Action::LinkToolchain => {
                say(format!(
                    "linking Debian's rustc as rustup toolchain {DEFAULT_TOOLCHAIN}"
                ));
                Cmd::new("rustup")
                    .args(["toolchain", "link", DEFAULT_TOOLCHAIN, DEB_WEB_PREFIX])
                    .run()?;
                require_rust_src(DEFAULT_TOOLCHAIN)?;
            }
            Action::InstallBpfLinker { llvm, replace } => {
                say(format!(
                    "installing bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (1-2 minutes)"
                ));
                let prefix = llvm_prefix(llvm);
                if !prefix.join("bin/llvm-config").is_file() {
                    bail!(
                        "bpf-linker needs LLVM {llvm}'s development files: {} has no \
                         bin/llvm-config (install them, or point LLVM_PREFIX at them)",
                        prefix.display()
                    );
                }
                bpf_linker_install_cmd(llvm, replace).run()?;
                match bpf_linker_state(llvm)? {
                    LinkerState::Missing => bail!(
                        "bpf-linker was installed but is not on PATH: add cargo's bin directory \
                         (usually ~/.cargo/bin) to PATH"
                    ),
                    LinkerState::WrongLlvm(..) | LinkerState::Broken(_) => bail!(
                        "the bpf-linker first on PATH is not the one just installed into \
                         cargo's bin directory (usually ~/.cargo/bin): remove the other copy"
                    ),
                    LinkerState::Good(_) | LinkerState::Unknown(_) => {}
                }
            }
            Action::MountBpffs => {
                say(format!("mounting bpffs on {BPFFS}"));
                Cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]).run()?;
            }
        }
    }
    say(format!("done ({})", fmt_duration(started.elapsed())));
    Ok(())
}

/// Which of `packages` dpkg reports as installed; `None` without dpkg-query.
fn installed_packages(packages: &[&str]) -> anyhow::Result<Option<Vec<String>>> {
    // One call for all; unknown names make dpkg-query exit 1 but still list the others.
    let Some((_status, out)) = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .probe()?
    else {
        return Ok(None);
    };
    Ok(Some(
        out.lines()
            .filter(|line| line.ends_with(" ok installed"))
            .filter_map(|line| line.split_whitespace().next())
            .map(|name| name.split(':').next().unwrap_or(name).to_owned())
            .collect(),
    ))
}

fn rustup_has_toolchain(name: &str) -> anyhow::Result<bool> {
    let list = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .read()
        .context("rustup is needed (https://rustup.rs); `rustup toolchain list` failed")?;
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|t| t == name))
}

/// The toolchain's sysroot, or `None` when rustup does not have it.
fn toolchain_sysroot(toolchain: &str) -> anyhow::Result<Option<PathBuf>> {
    let out = Cmd::new("rustc")
        .arg(format!("+{toolchain}"))
        .args(["--print", "sysroot"])
        // Never let a check download a toolchain.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .probe()?;
    Ok(match out {
        Some((status, out)) if status.success() => Some(PathBuf::from(out.trim())),
        _ => None,
    })
}

fn rust_src_dir(sysroot: &Path) -> PathBuf {
    sysroot.join("lib/rustlib/src/rust/library")
}

fn require_rust_src(toolchain: &str) -> anyhow::Result<()> {
    let sysroot = toolchain_sysroot(toolchain)?
        .with_context(|| format!("`rustc +{toolchain} --print sysroot` failed"))?;
    let src = rust_src_dir(&sysroot);
    if !src.is_dir() {
        bail!(
            "toolchain {toolchain} has no library source at {} (needed for -Z build-std=core)",
            src.display()
        );
    }
    Ok(())
}

/// A user-chosen toolchain is only checked: xtask does not install or change it. Returns
/// its LLVM major version, which bpf-linker must match.
fn check_custom_toolchain(toolchain: &str) -> anyhow::Result<u32> {
    let Some(sysroot) = toolchain_sysroot(toolchain)? else {
        bail!(
            "{TOOLCHAIN_VAR}={toolchain}, but rustup has no toolchain `{toolchain}`: install it \
             with `rustup toolchain install {toolchain} --component rust-src,clippy`, or unset \
             {TOOLCHAIN_VAR} to use Debian's rustc (`{DEFAULT_TOOLCHAIN}`, which setup installs)"
        );
    };
    let src = rust_src_dir(&sysroot);
    if !src.is_dir() {
        bail!(
            "{TOOLCHAIN_VAR}={toolchain}: that toolchain has no rust-src ({} is missing), which \
             `-Z build-std=core` needs: `rustup component add rust-src --toolchain {toolchain}`",
            src.display()
        );
    }
    let info = Cmd::new("rustc")
        .arg(format!("+{toolchain}"))
        .arg("-vV")
        .read()?;
    let llvm = machine::llvm_version(&info)
        .and_then(machine::major)
        .with_context(|| format!("`rustc +{toolchain} -vV` names no LLVM version"))?;
    say(format!(
        "rustup toolchain {toolchain} (from {TOOLCHAIN_VAR}) with rust-src: present (LLVM {llvm})"
    ));
    Ok(llvm)
}

enum LinkerState {
    Missing,
    Good(String),
    WrongLlvm(String, u32),
    /// Present but unusable (does not run, or its libLLVM is gone).
    Broken(&'static str),
    Unknown(String),
}

fn bpf_linker_state(llvm: u32) -> anyhow::Result<LinkerState> {
    let Some(path) = find_on_path("bpf-linker") else {
        return Ok(LinkerState::Missing);
    };
    let version = match Cmd::new(&path).arg("--version").probe()? {
        Some((status, out)) if status.success() => machine::bpf_linker_version(&out)
            .unwrap_or("(unknown version)")
            .to_owned(),
        _ => return Ok(LinkerState::Broken("`bpf-linker --version` fails")),
    };
    // A bpf-linker built with LLVM_PREFIX links the shared libLLVM: ldd names its version.
    match linked_llvm_major(&path)? {
        Some(Linked::Major(major)) if major == llvm => return Ok(LinkerState::Good(version)),
        Some(Linked::Major(major)) => return Ok(LinkerState::WrongLlvm(version, major)),
        Some(Linked::NotFound) => return Ok(LinkerState::Broken("its libLLVM is not installed")),
        None => {}
    }
    // Statically linked: cargo's install records keep the features it was built with.
    Ok(match installed_llvm_feature(llvm)? {
        Some(true) => LinkerState::Good(version),
        Some(false) | None => LinkerState::Unknown(version),
    })
}

#[derive(Debug, PartialEq, Eq)]
pub enum Linked {
    Major(u32),
    NotFound,
}

/// The major version of the shared libLLVM `binary` links, per `ldd`.
pub fn linked_llvm_major(binary: &Path) -> anyhow::Result<Option<Linked>> {
    let Some((_, out)) = Cmd::new("ldd").arg(binary).probe()? else {
        return Ok(None);
    };
    Ok(out.lines().find_map(parse_ldd_line))
}

/// One `ldd` line: `libLLVM.so.22.1 => /usr/lib/…`, `libLLVM-22.so => …`, or
/// `libLLVM.so.22.1 => not found`.
fn parse_ldd_line(line: &str) -> Option<Linked> {
    let lib = line.trim_start().strip_prefix("libLLVM")?;
    if lib.contains("not found") {
        return Some(Linked::NotFound);
    }
    let digits: String = lib
        .trim_start_matches(['-', '.'])
        .trim_start_matches("so.")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Linked::Major)
}

/// Whether cargo's records say bpf-linker was built with the `llvm-22` feature.
fn installed_llvm_feature(llvm: u32) -> anyhow::Result<Option<bool>> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => match env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cargo"),
            None => return Ok(None),
        },
    };
    let Ok(records) = fs::read_to_string(cargo_home.join(".crates2.json")) else {
        return Ok(None);
    };
    // {"installs":{"bpf-linker 0.13.0 (registry+…)":{…,"features":["llvm-22"],…},…}}
    let Some(start) = records.find("\"bpf-linker ") else {
        return Ok(None);
    };
    let entry = &records[start..];
    let entry = &entry[..entry.find('}').unwrap_or(entry.len())];
    Ok(Some(entry.contains(&format!("\"llvm-{llvm}\""))))
}

/// `LLVM_PREFIX` when the user set it, else Debian's `/usr/lib/llvm-N`.
pub fn llvm_prefix(llvm: u32) -> PathBuf {
    env::var_os("LLVM_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/llvm-{llvm}")))
}

fn bpf_linker_install_cmd(llvm: u32, replace: bool) -> Cmd {
    let cmd = Cmd::cargo()
        .env("LLVM_PREFIX", llvm_prefix(llvm))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .arg("--no-default-features")
        .args(["--features", &format!("llvm-{llvm}")]);
    if replace { cmd.arg("--force") } else { cmd }
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

#[cfg(test)]
mod tests {
    use super::{Linked, parse_ldd_line};

    #[test]
    fn ldd_lines_name_the_llvm_major() {
        let debian = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f)";
        assert_eq!(parse_ldd_line(debian), Some(Linked::Major(22)));
        let fedora = "\tlibLLVM-21.so => /usr/lib64/libLLVM-21.so (0x00007f)";
        assert_eq!(parse_ldd_line(fedora), Some(Linked::Major(21)));
        let gone = "\tlibLLVM.so.22.1 => not found";
        assert_eq!(parse_ldd_line(gone), Some(Linked::NotFound));
        assert_eq!(parse_ldd_line("\tlibc.so.6 => /lib/libc.so.6"), None);
    }
}
