//! Test support for the load balancer's end-to-end tests.
//!
//! - [`netns`]: network namespaces owned by a test ([`Netns`]), processes inside them
//!   ([`ChildGuard`]), veth pairs and the usual `ip`/`sysctl`/`ethtool` chores.
//! - [`topology`]: the standard client / load balancer / switch / backends network.
//! - [`bird`]: a router's own BIRD learning the VIPs over BGP, and its routes.
//! - [`backend`]: a handle on the `lb-test-backend` server started inside a namespace.
//! - [`client`]: HTTP (curl) and UDP clients run from a namespace, and tallies of answers.
//! - [`flood`]: forged SYNs from a raw socket, with any source address.
//! - [`steady`]: steady traffic of new connections in a thread, in timed batches, while a
//!   test changes something.
//! - [`provision`]: map contents from a config through the controller's plan and
//!   reconciler, for fixtures, the fuzzer and the benchmarks.
//! - [`xdp`]: one frame through a loaded XDP program (BPF_PROG_TEST_RUN), and the actions.
//! - [`require_root`], [`require_root_and_bpf`]: skip privileged tests where they cannot
//!   run, but fail them in CI.
//! - [`bin_path`]: where the workspace's binaries were built.
//!
//! Rules every test keeps (and this crate helps to keep): addresses only from
//! 198.18.0.0/15 and only inside namespaces the test made, traffic never leaves the
//! machine, every traffic loop is bounded in count and time, and namespaces are removed
//! even when a test panics (the guards' `Drop`).

pub mod backend;
pub mod bench;
pub mod bird;
pub mod client;
pub mod daemon;
pub mod fabric;
pub mod flood;
pub mod fuzz;
pub mod netns;
pub mod packet;
pub mod privilege;
pub mod provision;
pub mod steady;
pub mod topology;
pub mod xdp;

use std::{env, path::PathBuf};

pub use backend::{Backend, BackendStats};
pub use client::{
    BulkOptions, HttpReply, Tally, curl_many, curl_many_with, http_get, http_request, udp_many,
    udp_request,
};
pub use daemon::LbDaemon;
pub use netns::{ChildGuard, Netns, unique_prefix, veth};
pub use privilege::{require_root, require_root_and_bpf};
pub use topology::{Topology, TopologyOptions, VIP, VipPlacement, XdpPass};

/// Path of the workspace binary `name` (`lb-ctl`, `lb-test-backend`, …), built into the
/// same target directory as the running test executable.
///
/// An environment variable named after the binary overrides the search: `LB_CTL_BIN` for
/// `lb-ctl`, `LB_TEST_BACKEND_BIN` for `lb-test-backend` (upper case, `-` → `_`, plus
/// `_BIN`). Panics, saying how to build it, when the binary is missing: `cargo test -p
/// lb-tests` builds this package's binaries but not `lb-ctl`.
pub fn bin_path(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = env::var_os(&var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{var}={} does not name a file; unset it or point it at the built `{name}`",
            path.display()
        );
        return path;
    }
    let exe = env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
    // Test executables live in `target/<profile>/deps/`, binaries in `target/<profile>/`.
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("test executable {} has no parent", exe.display()))
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: run `cargo build --workspace` (or `cargo xtask test`) \
         first, or set {var} to its path",
        path.display()
    );
    path
}
