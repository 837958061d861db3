//! The one recipe for compiling the XDP program (crate `lb-ebpf`) for the BPF target, shared
//! by the build scripts that embed it: lb-ctl's (the production object) and lb-tests' (the
//! same object plus the measuring and test-helper programs of the `testing` feature).
//!
//! aya-build gives every build script a cargo target dir under its own `OUT_DIR`, so the
//! two builds never contend for one lock or overwrite each other's object.

use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Names the rustup toolchain that compiles the eBPF crate. It needs `rust-src` (for
/// `-Z build-std=core`) and an LLVM that matches bpf-linker's; the default is Debian's
/// rustc linked as `deb-web` (see docs/development.md). A laptop with `nightly` +
/// `rust-src` sets `LB_EBPF_TOOLCHAIN=nightly`.
const TOOLCHAIN_VAR: &str = "LB_EBPF_TOOLCHAIN";
/// `LB_EBPF_DEBUG_LOG=1` builds the XDP program with per-packet aya-log output (the
/// daemon forwards it to its log at debug level). Never for production: it is slow.
const DEBUG_LOG_VAR: &str = "LB_EBPF_DEBUG_LOG";
const DEFAULT_TOOLCHAIN: &str = "deb-web";

/// Builds lb-ebpf with `features` (besides `debug-log`, which `LB_EBPF_DEBUG_LOG` decides
/// for every build alike) and leaves the object at `$OUT_DIR/lb-ebpf`. Call it from the
/// build script of a crate that sits next to lb-ebpf in the workspace.
pub fn build_xdp_object(features: &[&str]) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    println!("cargo:rerun-if-env-changed={DEBUG_LOG_VAR}");
    let debug_log = env::var(DEBUG_LOG_VAR).is_ok_and(|v| v == "1");
    let toolchain = env::var(TOOLCHAIN_VAR).unwrap_or_else(|_| DEFAULT_TOOLCHAIN.to_owned());

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("the crate being built has no parent directory")?;
    let ebpf_dir = workspace.join("lb-ebpf");
    // aya-build watches the eBPF crate; the shared types it compiles in live next door.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("lb-common").display()
    );

    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // Debian's rustc is a stable-channel compiler; build-std needs -Z flags.
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }

    let mut all_features = features.to_vec();
    if debug_log {
        all_features.push("debug-log");
    }
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path to lb-ebpf")?;
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir,
            features: &all_features,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the XDP program with toolchain `{toolchain}` failed; run `cargo xtask build` \
             once to install the eBPF toolchain, or set {TOOLCHAIN_VAR}"
        )
    })
}
