//! Test support for the load balancer's end-to-end tests.
//!
//! - [`netns`]: network namespaces owned by a test ([`Netns`]), processes inside them
//!   ([`ChildGuard`]), veth pairs and the usual `ip`/`sysctl`/`ethtool` chores.
//! - [`topology`]: the standard client / load balancer / switch / backends network, over
//!   IPv4, IPv6 or both ([`Family`]).
//! - [`bird`]: a router's own BIRD learning the VIPs over BGP, and its routes.
//! - [`backend`]: a handle on the `lb-test-backend` server started inside a namespace.
//! - [`client`]: HTTP (curl) and UDP clients run from a namespace, to and from addresses
//!   of either family, and tallies of answers.
//! - [`flood`]: forged SYNs from a raw socket, with any source address.
//! - [`steady`]: steady traffic of new connections in a thread, in timed batches, while a
//!   test changes something.
//! - [`provision`]: map contents from a config through the controller's plan and
//!   reconciler, for fixtures, the fuzzer and the benchmarks.
//! - [`xdp`]: one frame through a loaded XDP program (BPF_PROG_TEST_RUN), and the actions.
//! - [`require_root`], [`require_root_and_bpf`]: skip privileged tests where they cannot
//!   run, but fail them in CI.
//! - [`bin_path`]: where the workspace's binaries were built.
//! - [`packet`]: IPv4 and IPv6 frames built byte by byte for fixtures, and a checksum
//!   verifier for IPv6 frames.
//! - [`TEST_OBJECT`]: the XDP object with the measuring and test-helper programs.
//!
//! Rules every test keeps (and this crate helps to keep): addresses only from
//! 198.18.0.0/15 (IPv4) and 2001:db8::/32 (IPv6), and only inside namespaces the test
//! made, traffic never leaves the machine, every traffic loop is bounded in count and
//! time, and namespaces are removed even when a test panics (the guards' `Drop`).

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
pub mod pair;
pub mod privilege;
pub mod provision;
pub mod steady;
pub mod topology;
pub mod xdp;

use std::{env, path::PathBuf};

pub use backend::{Backend, BackendStats};
pub use client::{
    BulkOptions, HttpReply, Tally, all_answered, all_answered_from, curl_many, curl_many_from,
    curl_many_with, curl_many_with_from, http_get, http_get_from, http_request, http_request_from,
    http_url, udp_many, udp_many_from, udp_request, udp_request_from,
};
pub use daemon::LbDaemon;
pub use netns::{ChildGuard, Netns, unique_prefix, veth};
pub use privilege::{require_root, require_root_and_bpf};
pub use topology::{
    Family, Topology, TopologyOptions, VIP, VIP6, VipPlacement, XdpPass, web_config, web_config6,
};

/// The XDP object the tests load when they need a measuring or test-helper program
/// (`lb_bench`, `lb_empty`, …), built by build.rs with lb-ebpf's `testing` feature. Its
/// production programs are the shipped object's: same source, same build settings, the
/// testing programs only added beside them. Load it with `DataPlane::load_object`; tests of
/// the production programs alone load the shipped object (`DataPlane::load`).
pub static TEST_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use aya_obj::{Function, Object};
    use lb_ctl::dataplane::{EBPF_OBJECT, production_programs};

    use super::TEST_OBJECT;

    /// The programs lb-ebpf's `testing` feature adds.
    const TESTING_PROGRAMS: [&str; 6] = [
        "lb_bench",
        "lb_bench6",
        "lb_empty",
        "lb_gen",
        "lb_sink",
        "lb_redirect",
    ];

    fn parse(object: &[u8]) -> Object {
        Object::parse(object).expect("the embedded object parses")
    }

    fn names<T>(map: &HashMap<String, T>) -> BTreeSet<&str> {
        map.keys().map(String::as_str).collect()
    }

    /// The test object is the shipped object plus the testing programs and their `BENCH_*`
    /// maps: nothing the production programs use is missing.
    #[test]
    fn the_test_object_adds_the_testing_programs_to_the_shipped_ones() {
        let test = parse(TEST_OBJECT);
        let shipped = parse(EBPF_OBJECT);
        let expected: BTreeSet<&str> = production_programs().chain(TESTING_PROGRAMS).collect();
        assert_eq!(names(&test.programs), expected);

        let added: BTreeSet<&str> = names(&test.maps)
            .difference(&names(&shipped.maps))
            .copied()
            .collect();
        assert!(
            added.iter().all(|name| name.starts_with("BENCH_")),
            "maps only the test object has: {added:?}"
        );
        let missing: Vec<_> = names(&shipped.maps)
            .difference(&names(&test.maps))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "shipped maps missing from the test object: {missing:?}"
        );
    }

    /// What the benchmarks measure through the wrapper is the shipped code: every function
    /// of the shipped object (each program and what it calls) is in the test object,
    /// instruction for instruction. Map references are relocations resolved at load, so the
    /// added maps change no instruction. Should the added programs ever sway the compiler's
    /// choices for the shared code, this fails, and the benchmark figures no longer describe
    /// what ships.
    #[test]
    fn the_test_object_carries_the_shipped_code_unchanged() {
        let test = parse(TEST_OBJECT);
        let shipped = parse(EBPF_OBJECT);
        let code = |f: &Function| -> Vec<_> {
            f.instructions
                .iter()
                .map(|i| (i.code, i.dst_reg(), i.src_reg(), i.off, i.imm))
                .collect()
        };
        // Matched by code, not by symbol: lb-ebpf's crate hash, part of every symbol of its
        // own functions, differs between the two builds because their features differ.
        let test_code: BTreeSet<_> = test.functions.values().map(code).collect();
        for f in shipped.functions.values() {
            assert!(
                test_code.contains(&code(f)),
                "{} differs between the shipped and the test object",
                f.name
            );
        }
    }
}
