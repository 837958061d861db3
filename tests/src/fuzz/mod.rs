//! Packet fuzzing through BPF_PROG_TEST_RUN, every verdict checked against a host-side
//! model of the packet policy (`docs/packet-policy.md`). One file per part:
//!
//! - `lab.rs`, [`Lab`]: a namespace with three LB interfaces (client side `cl0` and backend
//!   side `be0`, both redirect targets, and `ot0`, which is not), IPv4 and IPv6 addresses
//!   (2001:db8::/32), IPv4 and IPv6 forwarding, no duplicate address detection, and
//!   permanent neighbours, so `bpf_fib_lookup` answers deterministically for every address
//!   the generator uses.
//! - `setup.rs`, [`Setup`]: the config the run installs through the controller's plan and
//!   reconciler (`lb_tests::provision`), IPv4 and IPv6 listeners, and the model's view of
//!   its listeners, backends, VIPs and access lists. Every listener either has one backend
//!   or uses `tch`, so the backend of a packet is a function of its 4-tuple, whatever the
//!   flow table holds.
//! - `model.rs`, [`Model`]: what the policy says about a frame, computed from its bytes,
//!   the setup and a shadow of the flow tables that the model keeps itself (the generator
//!   bounds the number of distinct flows far below the table size, so the LRU never evicts
//!   and the shadow stays exact); a backend's packet finds its flow through the listeners
//!   its endpoint serves, as the program's reply path does. IPv6 frames go through the
//!   same flow model with IPv6 tuples, after the IPv6 parser's extension-header walk.
//!   Time only matters for idle timeouts; the model bounds the program's clock between two
//!   readings around each run and, when a timeout falls inside that window, accepts either
//!   outcome and re-reads the entry.
//! - `generator.rs`, `generator6.rs`: the frames (IPv4, and IPv6 to the IPv6 VIP and
//!   from its backends), from a seeded SplitMix64 (`rng.rs`, [`Rng`]; no other
//!   randomness).
//! - `runner.rs`, [`run`]: the runs and every check: the verdict and its reason, exactly
//!   one verdict counter moved by one, XDP_ABORTED never, no frame forwarded that the
//!   policy does not forward, the output bytes (addresses, ports, TTL or hop limit, MACs,
//!   every other byte untouched) and its checksums recomputed from scratch, and at the end
//!   the counters' sum and the whole flow table (both families).
//! - `report.rs`, [`Report`]: where the model and the program disagree the run goes on;
//!   the report lists each kind of disagreement with its first examples (input bytes,
//!   expected, observed) and the seed and packet number that reproduce it.

/// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and longer than a
/// page minus the XDP headroom and the shared info.
const MIN_FRAME: usize = 14;
const MAX_FRAME: usize = 3520;
/// MTU of the lab's interfaces (veth default).
const MTU: usize = 1500;
/// Idle timeout of every listener of the setup (TCP and UDP), seconds: the config's.
const IDLE_TIMEOUT_S: u32 = 900;
/// Slack around clock readings: the program's coarse clock and ours may tick apart.
const CLOCK_SLACK_NS: u64 = 10_000_000;

mod generator;
mod generator6;
mod lab;
mod model;
mod report;
mod rng;
mod runner;
mod setup;

pub use self::{lab::*, model::*, report::*, rng::*, runner::*, setup::*};
