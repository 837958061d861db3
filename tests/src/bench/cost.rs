//! Part 1: what one packet costs the XDP program, with BPF_PROG_TEST_RUN on identical
//! 64-byte frames, by the two fair methods the peer's figures were taken with:
//!
//! - method 1: `repeat = 1`, one syscall per packet, the kernel-reported duration; the
//!   floor is `lb_empty` measured the same way. Caches are cold after each syscall, so
//!   this is an upper bound.
//! - method 2: `lb_bench` with `repeat = N`: the wrapper restores the frame (and in
//!   new-flow mode writes a fresh source) before tail-calling `lb_xdp`; the floor is the
//!   same wrapper, in the same mode, tail-calling `lb_empty`.
//!
//! Every round measures the floor next to the case and subtracts it; the report gives
//! the median over rounds and the range. Each case checks the program's own counters
//! afterwards (a "new flow" case that inserted fewer flows than it ran is reported as
//! such, not quietly measured).
//!
//! The IPv6 cases (established, new flow, not for a VIP) run on a data plane of their own
//! with one IPv6 `tch` listener, on the same TCP segment behind an IPv6 header: 84-byte
//! frames, restored by `lb_bench6` for method 2; the non-VIP frame, which the program
//! passes unchanged, gets the in-kernel loop without the wrapper instead (`lb_xdp` itself
//! with `repeat`, floor `lb_empty` the same way), as does IPv4's for the comparison.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{Context as _, ensure};
use lb_common::{FlowKey, PROTO_TCP, Reason, Scheduler};
use lb_ctl::{
    config::{Dsr, Forwarding, Protocol, Tunnel},
    dataplane::{DataPlane, LoadOptions, MapSizes},
    plan::Runtime,
};

use super::{
    kit::{self, FRAME_LEN, FlowSpace, Kit, SEGMENT, patch_source},
    util::{HostProbe, PerfWindow, Summary, bench_cpu, pin_to_cpu, say},
};
use crate::{
    Netns, TEST_OBJECT,
    packet::{ACK, Frame, Frame6, Mac, SYN, parse_mac},
    unique_prefix, veth,
    xdp::{XDP_PASS, XDP_TX, action_name},
};

/// The flow table of the benchmark: 4M entries (`flow_table_size: 4194304`).
pub const FLOW_TABLE: u32 = 4 << 20;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_PORT: u16 = 40000;
/// Not a VIP: the pass-through case.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
/// The next hop behind which the backends (198.18.64.0/18) sit, on the clients' side: the
/// LB is one-armed, as the peer is (it sends every packet back out the interface it came
/// in on, XDP_TX), so both measure the same way out.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The LB's address on that side: the outer source of DSR packets.
const LB_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// What the program returns for a packet it sends, to a backend or to a client: one arm.
const SENT: u32 = XDP_TX;
const BACKEND_PORT: u16 = 8080;
/// Flows of the "cycled" case.
const CYCLED_FLOWS: u32 = 100_000;

// The IPv6 data plane's addresses, all in 2001:db8::/32: clients on cl0's prefix
// (2001:db8:18::/64), the VIP in 2001:db8:19::/64, the backends behind one next hop on the
// same side, as for IPv4 (2001:db8:18:40::/64 via a router on cl0's prefix).
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x100);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
/// cl0's address, on the clients' prefix.
const CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
/// Not a VIP: the IPv6 pass-through case.
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x77);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0xfe);
/// The /64 of the IPv6 backends (`backend_addr6`).
const BACKENDS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0x40, 0, 0, 0, 0);
/// Bytes of the IPv6 frames: [`FRAME_LEN`]'s TCP segment (10 bytes of payload) behind a
/// 40-byte IPv6 header instead of a 20-byte IPv4 one.
pub use super::kit::FRAME6_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// An established flow of the `tch` listener (the peer's own scheduling: a Maglev
    /// ring on the 4-tuple).
    Established,
    /// The same path through a listener of another scheduler (100 backends only).
    EstablishedWith(Scheduler),
    /// `Established` with `forwarding: dsr` (100 backends only): the packet leaves
    /// encapsulated whole instead of rewritten, the peer's own work for IPIP.
    DsrEstablished(Tunnel),
    Cycled,
    NewEmpty,
    /// `NewEmpty` with `forwarding: dsr` (100 backends only).
    DsrNewEmpty(Tunnel),
    NewFull,
    Reply,
    NonVip,
    /// `Established` on the IPv6 data plane (every backend count).
    Ipv6Established,
    /// `NewEmpty` on the IPv6 data plane: a never-seen source address each packet.
    Ipv6NewEmpty,
    /// `NonVip` on the IPv6 data plane; its method 2 is the in-kernel loop without the
    /// wrapper (the frame passes unchanged, so nothing needs restoring).
    Ipv6NonVip,
}

/// The schedulers whose established path is measured besides `tch`, each on a listener of
/// its own (port 81.., backend port 8081..: endpoints of their own, so no listener shares
/// one and every case measures the unshared path).
pub const OTHER_SCHEDULERS: [Scheduler; 4] = [
    Scheduler::Sch,
    Scheduler::Wrr,
    Scheduler::Rr,
    Scheduler::Wlc,
];

/// The backend count at which the other schedulers and the DSR path are measured.
pub const SCHEDULERS_AT: usize = 100;
/// The largest backend count measured; the flatness criterion compares it with
/// `SCHEDULERS_AT`.
pub const MOST_BACKENDS: usize = 10_000;

/// The encapsulations of `forwarding: dsr` whose path is measured, each on a data plane
/// of its own (forwarding and encapsulation are settings of the whole config).
pub const DSR_TUNNELS: [Tunnel; 2] = [Tunnel::Ipip, Tunnel::Gue];

impl Case {
    /// In the report's order: each DSR case right after its NAT counterpart, then the
    /// IPv6 one.
    pub const ALL: [Case; 17] = [
        Case::Established,
        Case::DsrEstablished(Tunnel::Ipip),
        Case::DsrEstablished(Tunnel::Gue),
        Case::Ipv6Established,
        Case::EstablishedWith(Scheduler::Sch),
        Case::EstablishedWith(Scheduler::Wrr),
        Case::EstablishedWith(Scheduler::Rr),
        Case::EstablishedWith(Scheduler::Wlc),
        Case::Cycled,
        Case::NewEmpty,
        Case::DsrNewEmpty(Tunnel::Ipip),
        Case::DsrNewEmpty(Tunnel::Gue),
        Case::Ipv6NewEmpty,
        Case::NewFull,
        Case::Reply,
        Case::NonVip,
        Case::Ipv6NonVip,
    ];

    /// The IPv6 cases, in the order they run (established and non-VIP before anything
    /// fills the table, as for IPv4).
    pub const IPV6: [Case; 3] = [Case::Ipv6Established, Case::Ipv6NonVip, Case::Ipv6NewEmpty];

    pub fn is_ipv6(self) -> bool {
        Case::IPV6.contains(&self)
    }

    /// Whether measuring the case again finds the tables as the first time did: only hits
    /// of flows it made itself (the 100k cycled flows are made afresh each time, in a
    /// table of 4M). The new-flow cases fill the table, so they run once.
    pub fn can_repeat(self) -> bool {
        matches!(
            self,
            Case::Established
                | Case::EstablishedWith(_)
                | Case::DsrEstablished(_)
                | Case::Cycled
                | Case::Reply
                | Case::NonVip
        )
    }

    /// The IPv4 case an IPv6 one is compared with.
    pub fn ipv4_counterpart(self) -> Option<Case> {
        match self {
            Case::Ipv6Established => Some(Case::Established),
            Case::Ipv6NewEmpty => Some(Case::NewEmpty),
            Case::Ipv6NonVip => Some(Case::NonVip),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Case::Established => "established flow, table hit (tch)",
            Case::EstablishedWith(Scheduler::Sch) => "established flow, table hit (sch)",
            Case::EstablishedWith(Scheduler::Wrr) => "established flow, table hit (wrr)",
            Case::EstablishedWith(Scheduler::Rr) => "established flow, table hit (rr)",
            Case::EstablishedWith(Scheduler::Wlc) => "established flow, table hit (wlc)",
            Case::EstablishedWith(Scheduler::Tch) => "established flow, table hit (tch)",
            Case::DsrEstablished(Tunnel::Ipip) => "established flow, table hit, DSR ipip (tch)",
            Case::DsrEstablished(Tunnel::Gue) => "established flow, table hit, DSR gue (tch)",
            Case::Cycled => "100k flows cycled (hits, cache-cold)",
            Case::NewEmpty => "new flow each packet, table nearly empty",
            Case::DsrNewEmpty(Tunnel::Ipip) => "new flow each packet, table nearly empty, DSR ipip",
            Case::DsrNewEmpty(Tunnel::Gue) => "new flow each packet, table nearly empty, DSR gue",
            Case::NewFull => "new flow each packet, table full",
            Case::Reply => "reply (backend → client)",
            Case::NonVip => "packet not for a VIP",
            Case::Ipv6Established => "established flow, table hit, IPv6 (tch)",
            Case::Ipv6NewEmpty => "new flow each packet, table nearly empty, IPv6",
            Case::Ipv6NonVip => "packet not for a VIP, IPv6",
        }
    }

    /// The peer's figures: (method 2, method 1) ns, floor subtracted, from `PEER_SOURCE`.
    /// The peer has one established path whatever its ring; every scheduler's is held to it.
    /// The peer encapsulates in IPIP, so its figures are those of our DSR ipip path as much
    /// as of NAT; it has no GUE, and no IPv6 figures.
    pub fn peer(self) -> Option<(f64, f64)> {
        match self {
            Case::Established | Case::EstablishedWith(_) | Case::DsrEstablished(Tunnel::Ipip) => {
                Some((105.0, 153.0))
            }
            Case::Cycled => Some((259.0, 373.0)),
            Case::NewEmpty | Case::DsrNewEmpty(Tunnel::Ipip) => Some((508.0, 650.0)),
            Case::DsrEstablished(Tunnel::Gue) | Case::DsrNewEmpty(Tunnel::Gue) => None,
            Case::NewFull => Some((1089.0, 1375.0)),
            Case::NonVip => Some((55.0, 59.0)),
            Case::Reply | Case::Ipv6Established | Case::Ipv6NewEmpty | Case::Ipv6NonVip => None,
        }
    }

    /// Listener port and backend port of the case's flow.
    fn ports(self) -> (u16, u16) {
        match self {
            Case::EstablishedWith(s) => {
                let i = OTHER_SCHEDULERS.iter().position(|o| *o == s).unwrap_or(0) as u16;
                (81 + i, BACKEND_PORT + 1 + i)
            }
            // The backend gets the client's packet unchanged: it listens on the VIP's port.
            Case::DsrEstablished(_) | Case::DsrNewEmpty(_) => (80, 80),
            _ => (80, BACKEND_PORT),
        }
    }
}

/// Where the peer's figures come from, said beside every ratio.
pub const PEER_SOURCE: &str = "peer of 2026-12-03";
/// The same, in full, for the report's text.
pub const PEER_SOURCE_LONG: &str = "the C balancer measured with its own harness on \
    2026-12-03, on a freshly provisioned machine of this kind (2-vCPU EPYC VM, kernel \
    6.18.44), the median of three runs of 5 rounds each (the three runs spread up to \
    1.35×); not in the same run as ours, so a ratio near 1 is within the machines' \
    day-to-day drift (±20 %)";

/// The peer's floors in the same runs: method 2 (wrapper + empty) and method 1 (empty,
/// repeat=1).
pub const PEER_FLOOR: (f64, f64) = (33.0, 82.0);

/// A case whose rounds spread more than this (largest / smallest) is too noisy to quote:
/// the report flags it instead of comparing its median.
pub const NOISY: f64 = 1.3;

#[derive(Clone, Debug)]
pub struct CostOptions {
    pub rounds: usize,
    /// Method 1 syscalls per round and case.
    pub samples: u32,
    /// Method 1 syscalls per round for the new-flow cases (every one inserts a flow, and
    /// the "nearly empty" table must stay nearly empty).
    pub new_flow_samples: u32,
    /// Method 2 repetitions per round (established, reply, non-VIP).
    pub repeat: u32,
    /// Method 2 repetitions per round of the new-flow cases (multiples of 1024).
    pub new_flow_repeat: u32,
    /// Inserts before the "full" case, as a multiple of the table size.
    pub prefill_factor: f64,
    pub backend_counts: Vec<usize>,
    /// Fresh data planes the cases at `SCHEDULERS_AT` and `MOST_BACKENDS` backends are
    /// measured on (`median_runs`).
    pub runs: usize,
    /// Profiles the cases it names with perf (`lb-bench --perf-case`).
    pub perf: Option<std::sync::Arc<PerfWindow>>,
    /// Measures only these cases (`lb-bench --case`); every case when empty. A data plane
    /// none of whose cases is chosen is not loaded.
    pub cases: Vec<Case>,
}

impl CostOptions {
    /// `order` less the cases not chosen.
    fn chosen(&self, order: &[Case]) -> Vec<Case> {
        order
            .iter()
            .copied()
            .filter(|c| self.cases.is_empty() || self.cases.contains(c))
            .collect()
    }
}

/// One case at one backend count.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: Case,
    pub backends: usize,
    /// Floor subtracted, ns.
    pub method1: Option<Summary>,
    pub method2: Option<Summary>,
    /// Before subtraction, ns.
    pub method1_raw: Option<Summary>,
    pub method2_raw: Option<Summary>,
    /// Only for [`Case::Ipv6NonVip`]: the IPv4 non-VIP frame through the same loop
    /// without the wrapper as its method 2, in the same rounds, floor subtracted, ns.
    pub loop_ipv4: Option<Summary>,
    /// What the case checked about itself (and anything that went wrong).
    pub notes: Vec<String>,
    /// The slower of the host probe's readings just before and just after the case, ns
    /// per load (`HostProbe`).
    pub host_probe: Option<f64>,
    /// Runs the figures come from (`median_runs`): 1, their summaries are over the
    /// case's rounds; more, over the runs' medians.
    pub runs: usize,
}

impl CaseResult {
    /// Why figure `s` of this case is no result: its rounds (or runs) spread more than
    /// `NOISY`, or the host probe read more than `NOISY` × `quietest` around it (a busy
    /// stretch that lasted the whole case, which leaves the rounds alike).
    pub fn flag(&self, s: &Summary, quietest: Option<f64>) -> Option<String> {
        let spread = s.spread();
        if spread > NOISY {
            let over = if self.runs > 1 { "runs" } else { "rounds" };
            return Some(format!("noisy: {over} spread {spread:.2}×"));
        }
        let (probe, quiet) = (self.host_probe?, quietest?);
        (probe > NOISY * quiet)
            .then(|| format!("host busy: probe {:.2}× the run's quietest", probe / quiet))
    }

    /// The notes that say a check of the case failed.
    fn failed_checks(&self) -> impl Iterator<Item = &String> {
        self.notes.iter().filter(|n| n.contains("CHECK FAILED"))
    }

    /// The first flag of either method's figure.
    fn flags(&self, quietest: Option<f64>) -> Option<String> {
        [self.method2, self.method1]
            .into_iter()
            .flatten()
            .find_map(|s| self.flag(&s, quietest))
    }
}

#[derive(Clone, Debug, Default)]
pub struct CostReport {
    pub results: Vec<CaseResult>,
    /// Floors over all rounds of all cases: method 1, method 2 fixed frame, method 2 new
    /// flow each run.
    pub floor_m1: Option<Summary>,
    pub floor_m2: Option<Summary>,
    pub floor_m2_vary: Option<Summary>,
    /// The kernel's test-run loop alone (`lb_empty`, `repeat`, no wrapper).
    pub test_loop: Option<Summary>,
    /// The floors of the IPv6 cases, on their 84-byte frames: method 1, and the loop
    /// without the wrapper of the non-VIP case.
    pub floor_m1_v6: Option<Summary>,
    pub floor_loop_v6: Option<Summary>,
    /// `lb_bench6` into `lb_empty`: fixed frame, and new-flow mode.
    pub floor_m2_v6: Option<Summary>,
    pub floor_m2_vary_v6: Option<Summary>,
    /// The quietest host probe reading of every run (`quietest_probe`), kept runs and
    /// runs not quoted alike: what every case's reading is held against.
    pub quietest_probe: Option<f64>,
    pub notes: Vec<String>,
}

/// Floors measured per round, kept for the report's floor line.
#[derive(Default)]
struct Floors {
    m1: Vec<f64>,
    m2: Vec<f64>,
    m2_vary: Vec<f64>,
    /// `lb_empty` run with `repeat` and no wrapper: what the kernel's test-run loop alone
    /// costs per run, so the report can tell it from what the wrapper adds.
    test_loop: Vec<f64>,
    /// The IPv6 cases' floors, kept apart so the IPv4 ones stay those of 64-byte frames.
    m1_v6: Vec<f64>,
    m2_v6: Vec<f64>,
    m2_vary_v6: Vec<f64>,
    loop_v6: Vec<f64>,
}

/// The namespace the program runs in: one arm, cl0 (198.18.0.1/24 and 2001:db8:18::1/64),
/// where the clients are and the router the backends of either family sit behind, all
/// permanent neighbours; IPv6 forwarding on, no duplicate address detection.
struct Lab {
    ns: Netns,
    _peer: Netns,
    client_if: u32,
    /// cl0's MAC and the router's: the Ethernet header a packet to a backend must leave
    /// with.
    lb_mac: Mac,
    gateway_mac: Mac,
    /// A veth end that stays down: `lb_bench` is attached to it to keep it in the XDP
    /// dispatcher (see `kit::hold_in_dispatcher`).
    idle_if: u32,
    /// The same for `lb_bench6`.
    idle6_if: u32,
    probe: HostProbe,
}

fn lab() -> Lab {
    let prefix = unique_prefix("bco");
    let ns = Netns::create(&format!("{prefix}x"));
    let peer = Netns::create(&format!("{prefix}p"));
    // Before the interfaces exist, so that each starts from `default`: no duplicate address
    // detection (no address stays tentative), and IPv6 forwarding, without which
    // `bpf_fib_lookup` refuses to forward (setting `all` sets `default` too).
    ns.sysctls(&[
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ]);
    veth(&ns, "cl0", &peer, "pcl0");
    veth(&ns, "idle0", &peer, "pidle0");
    veth(&ns, "idle1", &peer, "pidle1");
    ns.link_up("cl0");
    peer.link_up("pcl0");
    // Being on cl0, this address is also the source the route to the backends prefers,
    // which `forwarding: dsr` without `dsr.source` sends from.
    ns.addr_add("cl0", format!("{LB_ADDRESS}/24"));
    ns.sysctl("net.ipv4.ip_forward", 1);
    ns.neigh_permanent("cl0", CLIENT, &peer.mac("pcl0"));
    ns.neigh_permanent("cl0", GATEWAY, &peer.mac("pcl0"));
    // 10,000 backends need no 10,000 neighbour entries: they sit behind one router.
    ns.route_add("198.18.64.0/18", GATEWAY);
    // The same for IPv6: the router is a permanent neighbour like the IPv4 one, so both
    // families' next hops are found the same way.
    ns.addr_add_nodad("cl0", format!("{CLIENT_SIDE6}/64"));
    ns.neigh_permanent("cl0", CLIENT6, &peer.mac("pcl0"));
    ns.neigh_permanent("cl0", GATEWAY6, &peer.mac("pcl0"));
    ns.route_add(format!("{BACKENDS6}/64"), GATEWAY6);
    Lab {
        client_if: ns.ifindex("cl0"),
        lb_mac: parse_mac(&ns.mac("cl0")),
        gateway_mac: parse_mac(&peer.mac("pcl0")),
        idle_if: ns.ifindex("idle0"),
        idle6_if: ns.ifindex("idle1"),
        ns,
        _peer: peer,
        probe: HostProbe::new(),
    }
}

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 1)) + i as u32)
}

/// The `i`th IPv6 backend: 2001:db8:18:40::1 and up.
fn backend_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(BACKENDS6) + 1 + i as u128)
}

/// A 64-byte TCP frame (54 bytes of headers, 10 of payload).
fn tcp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut f = Frame::tcp(src, dst, flags);
    f.payload = vec![0; FRAME_LEN - 54];
    let bytes = f.build();
    debug_assert_eq!(bytes.len(), FRAME_LEN);
    bytes
}

/// The IPv6 counterpart of [`tcp_frame`]: the same TCP segment, 10 bytes of payload, behind
/// an IPv6 header (84 bytes).
fn tcp_frame6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Vec<u8> {
    let bytes = Frame6::tcp(src, dst, flags)
        .payload(&[0; FRAME_LEN - 54])
        .build();
    debug_assert_eq!(bytes.len(), FRAME6_LEN);
    bytes
}

/// The source of the `n`th IPv6 new flow: 2001:db8:18:0:8000:: + `n`, on the clients'
/// prefix, never CLIENT6, never the same for two values of `n`.
fn source6(n: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(CLIENT6) & !u128::from(u64::MAX) | u128::from((1u64 << 63) | n))
}

/// Gives an IPv6 frame the source [`source6`]`(n)` (bytes 30..38, the interface
/// identifier); checksums untouched, as the wrapper leaves them for IPv4 (the program does
/// not verify them).
fn patch_source6(frame: &mut [u8], n: u64) {
    frame[30..38].copy_from_slice(&source6(n).octets()[8..]);
}

pub fn run(options: &CostOptions) -> anyhow::Result<CostReport> {
    let lab = lab();
    let mut report = CostReport::default();
    let mut floors = Floors::default();
    // Per backend count, its runs.
    let mut measured = Vec::new();
    for &n in &options.backend_counts {
        // The peer's figures are the median of three runs: the backend counts the targets
        // compare (with the peer, and 10,000 with 100) are measured on as many fresh data
        // planes, the others on one.
        let planes = if n == SCHEDULERS_AT || n == MOST_BACKENDS {
            options.runs.max(1)
        } else {
            1
        };
        let mut runs = Vec::with_capacity(planes);
        for run in 1..=planes {
            let started = Instant::now();
            let results = lab
                .ns
                .enter(|| run_backends(&lab, options, n, &mut floors))
                .with_context(|| format!("per-packet cost with {n} backends, run {run}"))?;
            say(format!(
                "cost: {n} backends, run {run} of {planes} done in {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            runs.push(results);
        }
        measured.push(runs);
    }
    // The quietest probe reading of every run, the quoted one's or not: what the report
    // holds each case's reading against.
    report.quietest_probe = quietest_probe(measured.iter().flatten().flatten());
    for runs in measured {
        report.results.extend(median_runs(runs));
    }
    report.floor_m1 = Summary::of(&floors.m1);
    report.floor_m2 = Summary::of(&floors.m2);
    report.floor_m2_vary = Summary::of(&floors.m2_vary);
    report.test_loop = Summary::of(&floors.test_loop);
    report.floor_m1_v6 = Summary::of(&floors.m1_v6);
    report.floor_loop_v6 = Summary::of(&floors.loop_v6);
    report.floor_m2_v6 = Summary::of(&floors.m2_v6);
    report.floor_m2_vary_v6 = Summary::of(&floors.m2_vary_v6);
    Ok(report)
}

/// One result per case from several runs, each on a fresh data plane (the same cases in
/// each), as the peer's figures are the median of three runs: each figure is the median
/// of the runs' medians, with their range, so a run slowed as a whole (a busy stretch, a
/// data plane placed badly in memory) neither moves it nor goes unseen; `CaseResult::flag`
/// then flags the runs' spread. The host probe is the middle run's (by method 2), and the
/// notes give every run's figures with their rounds' spread.
pub fn median_runs(runs: Vec<Vec<CaseResult>>) -> Vec<CaseResult> {
    if runs.len() <= 1 {
        return runs.into_iter().flatten().collect();
    }
    let mut by_case: Vec<Vec<CaseResult>> = Vec::new();
    for result in runs.into_iter().flatten() {
        match by_case.iter_mut().find(|c| c[0].case == result.case) {
            Some(c) => c.push(result),
            None => by_case.push(vec![result]),
        }
    }
    by_case.into_iter().map(median_run).collect()
}

/// `median_runs` for one case's results, one per run.
fn median_run(results: Vec<CaseResult>) -> CaseResult {
    let over = |get: fn(&CaseResult) -> Option<Summary>| {
        let medians: Vec<f64> = results
            .iter()
            .filter_map(|r| get(r).map(|s| s.median))
            .collect();
        Summary::of(&medians)
    };
    // The run whose method-2 figure is the middle one: its notes and probe reading stand
    // for the case.
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| {
        let m = |i: usize| {
            results[i]
                .method2
                .or(results[i].method1)
                .map_or(0.0, |s| s.median)
        };
        m(a).total_cmp(&m(b))
    });
    let middle = order[order.len() / 2];
    let figures = |get: fn(&CaseResult) -> Option<Summary>| {
        results
            .iter()
            .map(|r| {
                get(r).map_or_else(
                    || "–".to_owned(),
                    |s| format!("{:.0} ({:.2}×)", s.median, s.spread()),
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut notes = vec![format!(
        "the median of {} runs on fresh data planes, each the median of its rounds (their \
         max / min in brackets): method 2 {} ns, method 1 {} ns; notes of run {}",
        results.len(),
        figures(|r| r.method2),
        figures(|r| r.method1),
        middle + 1,
    )];
    // A failed check of any run stays in the notes.
    for (i, r) in results.iter().enumerate() {
        if i != middle {
            notes.extend(r.failed_checks().map(|n| format!("run {}: {n}", i + 1)));
        }
    }
    let mut out = results[middle].clone();
    notes.append(&mut out.notes);
    CaseResult {
        method1: over(|r| r.method1),
        method2: over(|r| r.method2),
        method1_raw: over(|r| r.method1_raw),
        method2_raw: over(|r| r.method2_raw),
        loop_ipv4: over(|r| r.loop_ipv4),
        notes,
        runs: results.len(),
        ..out
    }
}

/// The per-round bookkeeping of one case.
#[derive(Default)]
struct Rounds {
    m1: Vec<f64>,
    m2: Vec<f64>,
    m1_raw: Vec<f64>,
    m2_raw: Vec<f64>,
    loop_ipv4: Vec<f64>,
}

impl Rounds {
    fn result(self, case: Case, backends: usize, notes: Vec<String>) -> CaseResult {
        CaseResult {
            case,
            backends,
            method1: Summary::of(&self.m1),
            method2: Summary::of(&self.m2),
            method1_raw: Summary::of(&self.m1_raw),
            method2_raw: Summary::of(&self.m2_raw),
            loop_ipv4: Summary::of(&self.loop_ipv4),
            notes,
            host_probe: None,
            runs: 1,
        }
    }
}

/// What a data plane of the benchmark serves: the IPv4 listener(s) forwarding by NAT or by
/// `forwarding: dsr`, or one IPv6 listener (NAT66).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plane {
    Nat,
    Dsr(Tunnel),
    Ipv6,
}

/// Everything measured at one backend count, on a freshly loaded data plane (a fresh,
/// empty 4M-entry flow table).
struct Bench<'a> {
    dp: DataPlane,
    kit: Kit,
    lab: &'a Lab,
    options: &'a CostOptions,
    space: FlowSpace,
    lb_fd: aya::programs::ProgramFd,
    empty_fd: aya::programs::ProgramFd,
    /// Counter value of the first flow the nearly-empty case made: never touched again,
    /// so it must be gone once the table has been filled past its size.
    first_new: Option<u64>,
    /// The next value for [`patch_source6`]: IPv6 new flows never reuse a source.
    next_source6: u64,
}

fn run_backends(
    lab: &Lab,
    options: &CostOptions,
    n: usize,
    floors: &mut Floors,
) -> anyhow::Result<Vec<CaseResult>> {
    pin_to_cpu(bench_cpu())?;
    let mut results = Vec::new();
    // Order matters: the nearly-empty new-flow case runs before anything fills the table,
    // the full case last.
    let mut order = vec![Case::Established];
    if n == SCHEDULERS_AT {
        order.extend(OTHER_SCHEDULERS.map(Case::EstablishedWith));
    }
    order.extend([
        Case::Reply,
        Case::NonVip,
        Case::NewEmpty,
        Case::Cycled,
        Case::NewFull,
    ]);
    let mut planes = vec![(Plane::Nat, order)];
    if n == SCHEDULERS_AT {
        // Each DSR data plane is loaded only once the previous one is gone: `lb_bench`
        // holds the idle interface, and the new one starts from the same fresh table
        // the NAT cases did.
        for tunnel in DSR_TUNNELS {
            planes.push((
                Plane::Dsr(tunnel),
                vec![Case::DsrEstablished(tunnel), Case::DsrNewEmpty(tunnel)],
            ));
        }
    }
    // IPv6 on a data plane of its own, loaded the same way once the others are gone: the
    // IPv4 rows are measured without an IPv6 listener, and the IPv6 new flows start from
    // a fresh table too.
    planes.push((Plane::Ipv6, Case::IPV6.to_vec()));
    for (plane, cases) in planes {
        let cases = options.chosen(&cases);
        if !cases.is_empty() {
            Bench::load(lab, options, n, plane)?.run(&cases, n, floors, &mut results)?;
        }
    }
    // Back in the table's order.
    results.sort_by_key(|r| Case::ALL.iter().position(|c| *c == r.case));
    Ok(results)
}

impl<'a> Bench<'a> {
    /// A freshly loaded data plane with `n` backends behind the `tch` listener (and, for
    /// NAT at [`SCHEDULERS_AT`] backends, the other schedulers' listeners), forwarding by
    /// NAT or by `forwarding: dsr`, or `n` IPv6 backends behind an IPv6 `tch` listener;
    /// provisioned as the controller does.
    fn load(
        lab: &'a Lab,
        options: &'a CostOptions,
        n: usize,
        plane: Plane,
    ) -> anyhow::Result<Bench<'a>> {
        let load_started = Instant::now();
        // The test object, for the wrapper and the floor; its lb_xdp is the shipped one.
        let mut dp = DataPlane::load_object(
            TEST_OBJECT,
            &LoadOptions {
                sizes: MapSizes::new(FLOW_TABLE, 8, 16384),
                map_pin_dir: None,
                verifier_log_dir: None,
            },
        )
        .context("loading the data plane")?;
        say(format!(
            "cost: data plane with a {FLOW_TABLE}-entry flow table loaded in {:.1} s",
            load_started.elapsed().as_secs_f64()
        ));
        dp.add_tx_port(lab.client_if)?;
        let backend_port = match plane {
            Plane::Dsr(tunnel) => Case::DsrEstablished(tunnel).ports().1,
            Plane::Nat | Plane::Ipv6 => Case::Established.ports().1,
        };
        // The peer balances with a 65537-slot Maglev ring; tch is ours.
        let mut config = match plane {
            Plane::Ipv6 => kit::one_listener(
                dp.sizes(),
                (Protocol::Tcp, VIP6, 80),
                Scheduler::Tch,
                (0..n).map(|i| (backend_addr6(i), backend_port)),
            ),
            Plane::Nat | Plane::Dsr(_) => kit::one_listener(
                dp.sizes(),
                (Protocol::Tcp, VIP, 80),
                Scheduler::Tch,
                (0..n).map(|i| (backend_addr(i), backend_port)),
            ),
        };
        match plane {
            Plane::Dsr(tunnel) => {
                config.forwarding = Forwarding::Dsr;
                // No `source`: the outer source is the one the route to the backends
                // prefers (cl0's address), the default an operator gets, looked up with
                // the next hop and cached with it per backend.
                config.dsr = Dsr {
                    encapsulation: tunnel,
                    ..Dsr::default()
                };
            }
            Plane::Nat if n == SCHEDULERS_AT => {
                for scheduler in OTHER_SCHEDULERS {
                    let (port, backend_port) = Case::EstablishedWith(scheduler).ports();
                    kit::add_listener(
                        &mut config,
                        (Protocol::Tcp, VIP, port),
                        scheduler,
                        (0..n).map(|i| (backend_addr(i), backend_port)),
                    );
                }
            }
            Plane::Nat | Plane::Ipv6 => {}
        }
        // As in production: the host's own addresses are refused as client sources, so a
        // new flow pays that lookup here too.
        let runtime = Runtime {
            local_addresses: crate::provision::host_addresses()?,
            ..Runtime::default()
        };
        kit::provision_with(&mut dp, config, runtime)?;
        let mut kit = Kit::new(&mut dp, &["lb_bench", "lb_bench6", "lb_empty"])?;
        kit::hold_in_dispatcher(&mut dp, "lb_bench", lab.idle_if)?;
        kit::hold_in_dispatcher(&mut dp, "lb_bench6", lab.idle6_if)?;
        let lb_fd = kit::prog_fd(&mut dp, lb_common::names::PROGRAM)?;
        let empty_fd = kit::prog_fd(&mut dp, "lb_empty")?;
        kit.set_target(&lb_fd)?;
        Ok(Bench {
            dp,
            kit,
            lab,
            options,
            space: FlowSpace::new(),
            lb_fd,
            empty_fd,
            first_new: None,
            next_source6: 0,
        })
    }

    /// Measures `cases` in this order, appending their results.
    fn run(
        mut self,
        cases: &[Case],
        n: usize,
        floors: &mut Floors,
        results: &mut Vec<CaseResult>,
    ) -> anyhow::Result<()> {
        for &case in cases {
            let started = Instant::now();
            let perf = self
                .options
                .perf
                .as_deref()
                .filter(|p| case.name() == p.case);
            if let Some(p) = perf {
                p.enable().context("starting perf")?;
            }
            let mut result = self.probed_case(case, n, floors)?;
            let (mut flags, mut failed_earlier) = (Vec::new(), Vec::new());
            // A case that leaves the tables as it found them is measured again when flagged
            // (at most twice more), and the first unflagged attempt is kept: the attempts
            // are chosen by their noise, never by their figures, and the report says so.
            while case.can_repeat() && flags.len() < MAX_RETRIES {
                // Against the quietest reading so far, this attempt's included.
                let quietest = quietest_probe(results.iter().chain([&result]));
                let Some(flag) = result.flags(quietest) else {
                    break;
                };
                say(format!(
                    "cost: {n} backends, {}: {flag}; measuring again",
                    case.name()
                ));
                flags.push(flag);
                // A check an attempt failed stays in the notes, whichever attempt is kept.
                failed_earlier.extend(
                    result
                        .failed_checks()
                        .map(|n| format!("attempt {}: {n}", flags.len())),
                );
                result = self.probed_case(case, n, floors)?;
            }
            if let Some(p) = perf {
                p.disable().context("stopping perf")?;
            }
            result.notes.extend(failed_earlier);
            if !flags.is_empty() {
                result.notes.push(format!(
                    "measured {} times, the earlier attempts flagged ({})",
                    flags.len() + 1,
                    flags.join("; ")
                ));
            }
            say(format!(
                "cost: {n} backends, {}: m1 {} ns, m2 {} ns ({:.1} s)",
                case.name(),
                super::util::show(result.method1, 0),
                super::util::show(result.method2, 0),
                started.elapsed().as_secs_f64()
            ));
            // A failed check is in the report's notes, which a partial run does not write.
            for note in result.failed_checks() {
                say(format!("cost: {n} backends, {}: {note}", case.name()));
            }
            results.push(result);
        }
        Ok(())
    }
}

/// How many times a flagged case is measured again.
const MAX_RETRIES: usize = 2;

/// The quietest host probe reading of `results`: what a case's reading is held against.
pub fn quietest_probe<'a>(results: impl IntoIterator<Item = &'a CaseResult>) -> Option<f64> {
    results
        .into_iter()
        .filter_map(|r| r.host_probe)
        .min_by(f64::total_cmp)
}

impl Bench<'_> {
    /// Measures `case`, with the host probe read before and after.
    fn probed_case(
        &mut self,
        case: Case,
        n: usize,
        floors: &mut Floors,
    ) -> anyhow::Result<CaseResult> {
        let before = self.lab.probe.ns_per_load();
        let mut result = self.case(case, n, floors)?;
        result.host_probe = Some(before.max(self.lab.probe.ns_per_load()));
        Ok(result)
    }

    fn counter(&self, reason: Reason) -> anyhow::Result<u64> {
        Ok(self.dp.counter(reason)?)
    }

    /// Method 1 over `frames` (one syscall each): mean kernel duration of the program
    /// and of `lb_empty` on the same frames, interleaved.
    fn method1(
        &mut self,
        frames: &mut dyn FnMut(u32) -> Vec<u8>,
        count: u32,
        ingress: u32,
        expect: u32,
    ) -> anyhow::Result<(f64, f64)> {
        let (mut total, mut floor) = (0u64, 0u64);
        for i in 0..count {
            let frame = frames(i);
            let (verdict, ns) = kit::test_run(&mut self.dp, "lb_empty", &frame, ingress, 1)?;
            ensure!(verdict == XDP_PASS, "lb_empty returned {verdict}");
            floor += ns;
            let (verdict, ns) =
                kit::test_run(&mut self.dp, lb_common::names::PROGRAM, &frame, ingress, 1)?;
            ensure!(
                verdict == expect,
                "lb_xdp returned {verdict}, expected {expect}"
            );
            total += ns;
        }
        let count = f64::from(count.max(1));
        Ok((total as f64 / count, floor as f64 / count))
    }

    /// Method 2 with a fixed frame: `repeat` runs through the wrapper into the program,
    /// then into `lb_empty`; mean ns of each.
    fn method2_fixed(
        &mut self,
        frame: &[u8],
        ingress: u32,
        repeat: u32,
        expect: u32,
    ) -> anyhow::Result<(f64, f64)> {
        self.kit.set_vary(false)?;
        self.kit.set_packet(frame)?;
        self.kit.set_target(&self.empty_fd)?;
        let (verdict, floor) = kit::test_run(&mut self.dp, "lb_bench", frame, ingress, repeat)?;
        ensure!(
            verdict == XDP_PASS,
            "lb_bench → lb_empty returned {verdict}"
        );
        self.kit.set_target(&self.lb_fd)?;
        let (verdict, total) = kit::test_run(&mut self.dp, "lb_bench", frame, ingress, repeat)?;
        ensure!(
            verdict == expect,
            "lb_bench → lb_xdp returned {verdict}, expected {expect}"
        );
        Ok((total as f64, floor as f64))
    }

    /// `method2_fixed` for an IPv6 frame, through `lb_bench6`.
    fn method2_fixed6(
        &mut self,
        frame: &[u8],
        repeat: u32,
        expect: u32,
    ) -> anyhow::Result<(f64, f64)> {
        let ingress = self.lab.client_if;
        self.kit.set_vary(false)?;
        self.kit.set_packet6(frame)?;
        self.kit.set_target(&self.empty_fd)?;
        let (verdict, floor) = kit::test_run(&mut self.dp, "lb_bench6", frame, ingress, repeat)?;
        ensure!(
            verdict == XDP_PASS,
            "lb_bench6 → lb_empty returned {verdict}"
        );
        self.kit.set_target(&self.lb_fd)?;
        let (verdict, total) = kit::test_run(&mut self.dp, "lb_bench6", frame, ingress, repeat)?;
        ensure!(
            verdict == expect,
            "lb_bench6 → lb_xdp returned {verdict}, expected {expect}"
        );
        Ok((total as f64, floor as f64))
    }

    /// Method 2 for IPv6 new flows: `runs` runs of `lb_bench6` in new-flow mode into
    /// `lb_xdp` (`program`) or `lb_empty`, each from a source not used before; mean ns.
    fn method2_new6(&mut self, frame: &[u8], runs: u32, program: bool) -> anyhow::Result<f64> {
        self.kit.set_vary(true)?;
        self.kit.set_packet6(frame)?;
        let (fd, expect) = if program {
            (&self.lb_fd, SENT)
        } else {
            (&self.empty_fd, XDP_PASS)
        };
        self.kit.set_target(fd)?;
        self.kit.set_counter(0, self.next_source6)?;
        self.next_source6 += u64::from(runs);
        let (verdict, mean) =
            kit::test_run(&mut self.dp, "lb_bench6", frame, self.lab.client_if, runs)?;
        self.kit.set_vary(false)?;
        ensure!(
            verdict == expect,
            "lb_bench6 in new-flow mode returned {verdict}, expected {expect}"
        );
        Ok(mean as f64)
    }

    /// Method 2 in new-flow mode over the given counter segments (each run a tuple of its
    /// own): mean ns per run, weighted by segment length.
    fn method2_segments(
        &mut self,
        frame: &[u8],
        segments: &[(u64, u32)],
        target_empty: bool,
    ) -> anyhow::Result<f64> {
        self.kit.set_vary(true)?;
        self.kit.set_packet(frame)?;
        let (fd, expect) = if target_empty {
            (&self.empty_fd, XDP_PASS)
        } else {
            (&self.lb_fd, SENT)
        };
        self.kit.set_target(fd)?;
        let (mut ns, mut runs) = (0u64, 0u64);
        for &(start, len) in segments {
            self.kit.set_counter(0, start)?;
            let (verdict, mean) =
                kit::test_run(&mut self.dp, "lb_bench", frame, self.lab.client_if, len)?;
            ensure!(
                verdict == expect,
                "lb_bench in new-flow mode returned {verdict}, expected {expect}"
            );
            ns += mean * u64::from(len);
            runs += u64::from(len);
        }
        self.kit.set_vary(false)?;
        Ok(ns as f64 / runs.max(1) as f64)
    }

    /// `count` counter values in fresh segments: (start, length) pairs.
    fn fresh_segments(&mut self, count: u32) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut left = count;
        while left > 0 {
            let len = left.min(SEGMENT);
            out.push((self.space.segment(), len));
            left -= len;
        }
        out
    }

    fn case(&mut self, case: Case, n: usize, floors: &mut Floors) -> anyhow::Result<CaseResult> {
        let o = self.options.clone();
        let client = self.lab.client_if;
        let mut rounds = Rounds::default();
        let mut notes = Vec::new();
        let (port, _) = case.ports();
        let syn = tcp_frame((CLIENT, CLIENT_PORT), (VIP, port), SYN);
        let ack = tcp_frame((CLIENT, CLIENT_PORT), (VIP, port), ACK);
        match case {
            Case::Ipv6Established | Case::Ipv6NewEmpty | Case::Ipv6NonVip => {
                return self.case6(case, n, floors);
            }
            Case::Established
            | Case::EstablishedWith(_)
            | Case::DsrEstablished(_)
            | Case::Reply
            | Case::NonVip => {
                // The flow all of them use: created once by a SYN.
                if let Case::DsrEstablished(tunnel) = case {
                    notes.push(self.check_encapsulated(&syn, tunnel)?);
                } else {
                    let (verdict, _) =
                        kit::test_run(&mut self.dp, lb_common::names::PROGRAM, &syn, client, 1)?;
                    ensure!(verdict == SENT, "the SYN returned {verdict}");
                }
                let (frame, ingress, expect, reason) = match case {
                    Case::Established | Case::EstablishedWith(_) => {
                        (ack.clone(), client, SENT, Reason::Forwarded)
                    }
                    Case::DsrEstablished(_) => (ack.clone(), client, SENT, Reason::Encapsulated),
                    Case::Reply => {
                        let backend = self.flow_backend()?;
                        let reply = tcp_frame((backend, BACKEND_PORT), (CLIENT, CLIENT_PORT), ACK);
                        (reply, self.lab.client_if, SENT, Reason::ReplyForwarded)
                    }
                    _ => (
                        tcp_frame((CLIENT, CLIENT_PORT), (OTHER, 80), ACK),
                        client,
                        XDP_PASS,
                        Reason::PassNotForUs,
                    ),
                };
                let new_before = self.counter(Reason::EventNewFlow)?;
                let before = self.counter(reason)?;
                let mut runs = 0u64;
                for _ in 0..o.rounds {
                    let (total, floor) =
                        self.method1(&mut |_| frame.clone(), o.samples, ingress, expect)?;
                    rounds.m1_raw.push(total);
                    rounds.m1.push(total - floor);
                    floors.m1.push(floor);
                    let (total, floor) = self.method2_fixed(&frame, ingress, o.repeat, expect)?;
                    rounds.m2_raw.push(total);
                    rounds.m2.push(total - floor);
                    floors.m2.push(floor);
                    let (_, bare) =
                        kit::test_run(&mut self.dp, "lb_empty", &frame, ingress, o.repeat)?;
                    floors.test_loop.push(bare as f64);
                    runs += u64::from(o.samples) + u64::from(o.repeat);
                }
                let counted = self.counter(reason)? - before;
                let new_flows = self.counter(Reason::EventNewFlow)? - new_before;
                notes.push(format!(
                    "{counted} of {runs} runs counted as {}; {new_flows} new flows",
                    reason.name()
                ));
                if counted != runs || new_flows != 0 {
                    notes.push("CHECK FAILED: not every run took the path measured".into());
                }
            }
            Case::NewEmpty | Case::DsrNewEmpty(_) | Case::NewFull => {
                let nearly_empty = matches!(case, Case::NewEmpty | Case::DsrNewEmpty(_));
                if let Case::DsrNewEmpty(tunnel) = case {
                    // One flow of the case's kind, outside the measured runs.
                    let mut probe = syn.clone();
                    patch_source(&mut probe, self.space.segment());
                    notes.push(self.check_encapsulated(&probe, tunnel)?);
                }
                if case == Case::NewFull {
                    let prefill = (f64::from(FLOW_TABLE) * o.prefill_factor) as u32;
                    let started = Instant::now();
                    let segments = self.fresh_segments(prefill);
                    self.method2_segments(&syn, &segments, false)?;
                    notes.push(format!(
                        "pre-filled with {prefill} new flows ({:.2}× the table) in {:.1} s",
                        o.prefill_factor,
                        started.elapsed().as_secs_f64()
                    ));
                    // The first flow of the nearly-empty case must have been evicted.
                    if let Some(n) = self.first_new {
                        let mut frame = syn.clone();
                        patch_source(&mut frame, n);
                        if self.dp.flow(&self.flow_key(frame))?.is_some() {
                            notes.push(
                                "CHECK FAILED: the oldest untouched flow is still in the table: \
                                 not full"
                                    .into(),
                            );
                        } else {
                            notes.push(
                                "the oldest untouched flow was evicted: the table is full".into(),
                            );
                        }
                    }
                }
                let before = self.counter(Reason::EventNewFlow)?;
                let sent_before = self.counter(Reason::Encapsulated)?;
                let mut runs = 0u64;
                for _ in 0..o.rounds {
                    let segments = self.fresh_segments(o.new_flow_samples);
                    if case == Case::NewEmpty && self.first_new.is_none() {
                        self.first_new = segments.first().map(|s| s.0);
                    }
                    let mut values = segments
                        .iter()
                        .flat_map(|&(start, len)| start..start + u64::from(len));
                    let template = syn.clone();
                    let (total, floor) = self.method1(
                        &mut |_| {
                            let mut f = template.clone();
                            patch_source(&mut f, values.next().unwrap_or_default());
                            f
                        },
                        o.new_flow_samples,
                        client,
                        SENT,
                    )?;
                    rounds.m1_raw.push(total);
                    rounds.m1.push(total - floor);
                    floors.m1.push(floor);
                    let floor_segments = self.fresh_segments(o.new_flow_repeat);
                    let floor = self.method2_segments(&syn, &floor_segments, true)?;
                    let segments = self.fresh_segments(o.new_flow_repeat);
                    let total = self.method2_segments(&syn, &segments, false)?;
                    rounds.m2_raw.push(total);
                    rounds.m2.push(total - floor);
                    floors.m2_vary.push(floor);
                    runs += u64::from(o.new_flow_samples) + u64::from(o.new_flow_repeat);
                }
                let new_flows = self.counter(Reason::EventNewFlow)? - before;
                notes.push(format!("{new_flows} new flows in {runs} runs"));
                if new_flows != runs {
                    notes.push("CHECK FAILED: not every run made a new flow".into());
                }
                if let Case::DsrNewEmpty(_) = case {
                    let sent = self.counter(Reason::Encapsulated)? - sent_before;
                    notes.push(format!(
                        "{sent} of {runs} runs counted as {}",
                        Reason::Encapsulated.name()
                    ));
                    if sent != runs {
                        notes.push("CHECK FAILED: not every run was encapsulated".into());
                    }
                }
                if nearly_empty {
                    // Every flow this data plane has made so far is still in the table.
                    let fill = self.counter(Reason::EventNewFlow)? as f64 / f64::from(FLOW_TABLE);
                    notes.push(format!(
                        "the table was {:.1} % full at the end",
                        fill * 100.0
                    ));
                }
            }
            Case::Cycled => {
                // 100,000 distinct flows: 97 segments of 1024 and one of 672.
                let segments = self.fresh_segments(CYCLED_FLOWS);
                let before = self.counter(Reason::EventNewFlow)?;
                self.method2_segments(&syn, &segments, false)?;
                let created = self.counter(Reason::EventNewFlow)? - before;
                // The first ACK of each flow completes its handshake (half-open table →
                // flow table); one pass of them first, so the measured runs are hits.
                self.method2_segments(&ack, &segments, false)?;
                notes.push(format!(
                    "pre-inserted {created} flows with SYNs through the wrapper in new-flow mode, \
                     completed their handshakes with one pass of ACKs, then the same counter \
                     segments again with an ACK: every run a hit"
                ));
                let before = self.counter(Reason::EventNewFlow)?;
                let values: Vec<u64> = segments
                    .iter()
                    .flat_map(|&(start, len)| start..start + u64::from(len))
                    .collect();
                let mut next = 0usize;
                for _ in 0..o.rounds {
                    let template = ack.clone();
                    let (total, floor) = self.method1(
                        &mut |_| {
                            let mut f = template.clone();
                            patch_source(&mut f, values[next % values.len()]);
                            next += 1;
                            f
                        },
                        o.samples,
                        client,
                        SENT,
                    )?;
                    rounds.m1_raw.push(total);
                    rounds.m1.push(total - floor);
                    floors.m1.push(floor);
                    let floor = self.method2_segments(&ack, &segments, true)?;
                    let total = self.method2_segments(&ack, &segments, false)?;
                    rounds.m2_raw.push(total);
                    rounds.m2.push(total - floor);
                    floors.m2_vary.push(floor);
                }
                let new_flows = self.counter(Reason::EventNewFlow)? - before;
                if created != u64::from(CYCLED_FLOWS) || new_flows != 0 {
                    notes.push(format!(
                        "CHECK FAILED: {created} flows created, {new_flows} new flows while cycling"
                    ));
                }
            }
        }
        Ok(rounds.result(case, n, notes))
    }

    /// An IPv6 case: method 1 as for IPv4, on 84-byte frames, with its floor (`lb_empty` on
    /// the same frames); method 2 only for the non-VIP frame, as a loop without the
    /// wrapper (see the module documentation).
    fn case6(&mut self, case: Case, n: usize, floors: &mut Floors) -> anyhow::Result<CaseResult> {
        let o = self.options.clone();
        let client = self.lab.client_if;
        let mut rounds = Rounds::default();
        let mut notes = Vec::new();
        let syn = tcp_frame6((CLIENT6, CLIENT_PORT), (VIP6, 80), SYN);
        let ack = tcp_frame6((CLIENT6, CLIENT_PORT), (VIP6, 80), ACK);
        match case {
            Case::Ipv6Established | Case::Ipv6NonVip => {
                // The flow both use, created once by a SYN, as for IPv4.
                let (verdict, _) =
                    kit::test_run(&mut self.dp, lb_common::names::PROGRAM, &syn, client, 1)?;
                ensure!(verdict == SENT, "the IPv6 SYN returned {verdict}");
                let (frame, expect, reason) = if case == Case::Ipv6Established {
                    (ack, SENT, Reason::Forwarded)
                } else {
                    (
                        tcp_frame6((CLIENT6, CLIENT_PORT), (OTHER6, 80), ACK),
                        XDP_PASS,
                        Reason::PassNotForUs,
                    )
                };
                // Once, outside the counted runs: the frame takes the path meant (and the
                // established flow's first ACK completes its handshake).
                notes.push(self.check6(&frame, case, n)?);
                // The IPv4 non-VIP frame through the same loop, for the comparison the
                // wrapper cannot give.
                let frame4 = tcp_frame((CLIENT, CLIENT_PORT), (OTHER, 80), ACK);
                let new_before = self.counter(Reason::EventNewFlow)?;
                let before = self.counter(reason)?;
                let mut runs = 0u64;
                for _ in 0..o.rounds {
                    let (total, floor) =
                        self.method1(&mut |_| frame.clone(), o.samples, client, expect)?;
                    rounds.m1_raw.push(total);
                    rounds.m1.push(total - floor);
                    floors.m1_v6.push(floor);
                    runs += u64::from(o.samples);
                    if case == Case::Ipv6Established {
                        let (total, floor) = self.method2_fixed6(&frame, o.repeat, expect)?;
                        rounds.m2_raw.push(total);
                        rounds.m2.push(total - floor);
                        floors.m2_v6.push(floor);
                        runs += u64::from(o.repeat);
                    }
                    if case == Case::Ipv6NonVip {
                        let (total, floor) = self.direct_loop(&frame, o.repeat, expect)?;
                        rounds.m2_raw.push(total);
                        rounds.m2.push(total - floor);
                        floors.loop_v6.push(floor);
                        let (total, floor) = self.direct_loop(&frame4, o.repeat, expect)?;
                        rounds.loop_ipv4.push(total - floor);
                        runs += 2 * u64::from(o.repeat);
                    }
                }
                let counted = self.counter(reason)? - before;
                let new_flows = self.counter(Reason::EventNewFlow)? - new_before;
                notes.push(format!(
                    "{counted} of {runs} runs counted as {}; {new_flows} new flows",
                    reason.name()
                ));
                if counted != runs || new_flows != 0 {
                    notes.push("CHECK FAILED: not every run took the path measured".into());
                }
                if case == Case::Ipv6Established {
                    notes.push(
                        "method 2 through `lb_bench6`, `lb_bench` for the 84-byte IPv6 frames"
                            .into(),
                    );
                } else if let Some(four) = Summary::of(&rounds.loop_ipv4) {
                    notes.push(format!(
                        "method 2 without the wrapper: `lb_xdp` itself with repeat = {} (the \
                         frame passes unchanged), floor `lb_empty` the same way; the IPv4 \
                         non-VIP frame measured the same way, in the same rounds: {} ns",
                        o.repeat,
                        four.show(0)
                    ));
                }
            }
            Case::Ipv6NewEmpty => {
                // One flow of the case's kind first, outside the counted runs (built whole,
                // its checksum right, as the check wants).
                let probe = tcp_frame6((source6(self.next_source6), CLIENT_PORT), (VIP6, 80), SYN);
                let mut patched = syn.clone();
                patch_source6(&mut patched, self.next_source6);
                ensure!(
                    patched[..38] == probe[..38],
                    "patch_source6 does not write source6"
                );
                self.next_source6 += 1;
                notes.push(self.check6(&probe, case, n)?);
                let before = self.counter(Reason::EventNewFlow)?;
                let mut runs = 0u64;
                for _ in 0..o.rounds {
                    let mut next = self.next_source6;
                    self.next_source6 += u64::from(o.new_flow_samples);
                    let template = syn.clone();
                    let (total, floor) = self.method1(
                        &mut |_| {
                            let mut f = template.clone();
                            patch_source6(&mut f, next);
                            next += 1;
                            f
                        },
                        o.new_flow_samples,
                        client,
                        SENT,
                    )?;
                    rounds.m1_raw.push(total);
                    rounds.m1.push(total - floor);
                    floors.m1_v6.push(floor);
                    runs += u64::from(o.new_flow_samples);
                    // Method 2: `lb_bench6` in new-flow mode numbers each run's source as
                    // `source6` does, from the counter set here.
                    let floor = self.method2_new6(&syn, o.new_flow_repeat, false)?;
                    let total = self.method2_new6(&syn, o.new_flow_repeat, true)?;
                    rounds.m2_raw.push(total);
                    rounds.m2.push(total - floor);
                    floors.m2_vary_v6.push(floor);
                    runs += u64::from(o.new_flow_repeat);
                }
                let new_flows = self.counter(Reason::EventNewFlow)? - before;
                notes.push(format!("{new_flows} new flows in {runs} runs"));
                if new_flows != runs {
                    notes.push("CHECK FAILED: not every run made a new flow".into());
                }
                let fill = self.counter(Reason::EventNewFlow)? as f64 / f64::from(FLOW_TABLE);
                notes.push(format!(
                    "the table was {:.1} % full at the end",
                    fill * 100.0
                ));
                notes.push(
                    "method 2 through `lb_bench6` in new-flow mode (each run a new source)".into(),
                );
            }
            _ => unreachable!("{case:?} is no IPv6 case"),
        }
        Ok(rounds.result(case, n, notes))
    }

    /// `lb_xdp` run `repeat` times on `frame` by the kernel's test loop, no wrapper, then
    /// `lb_empty` the same way: mean ns of each. Valid only for a frame the program leaves
    /// as it found it.
    fn direct_loop(
        &mut self,
        frame: &[u8],
        repeat: u32,
        expect: u32,
    ) -> anyhow::Result<(f64, f64)> {
        let client = self.lab.client_if;
        let (verdict, total) = kit::test_run(
            &mut self.dp,
            lb_common::names::PROGRAM,
            frame,
            client,
            repeat,
        )?;
        ensure!(
            verdict == expect,
            "lb_xdp with repeat returned {verdict}, expected {expect}"
        );
        let (verdict, floor) = kit::test_run(&mut self.dp, "lb_empty", frame, client, repeat)?;
        ensure!(verdict == XDP_PASS, "lb_empty returned {verdict}");
        Ok((total as f64, floor as f64))
    }

    /// Runs an IPv6 client frame once through the program and checks what left: for the
    /// non-VIP case the frame unchanged and passed; otherwise the frame translated to one
    /// of the `n` backends (port 8080, hop limit − 1, checksums right), addressed from cl0
    /// to the gateway.
    fn check6(&mut self, frame: &[u8], case: Case, n: usize) -> anyhow::Result<String> {
        let (verdict, out) = crate::xdp::test_run(
            &mut self.dp,
            lb_common::names::PROGRAM,
            self.lab.client_if,
            frame,
        )?;
        if case == Case::Ipv6NonVip {
            ensure!(
                verdict == XDP_PASS && out == frame,
                "the IPv6 non-VIP frame returned {} and {}",
                action_name(verdict),
                if out == frame { "unchanged" } else { "changed" }
            );
            return Ok("checked once: passed unchanged".into());
        }
        ensure!(
            verdict == SENT,
            "the IPv6 frame returned {}",
            action_name(verdict)
        );
        let parse = |f: &[u8]| {
            crate::packet::verify6(f)
                .and_then(|()| crate::packet::parse6(f))
                .map_err(|e| anyhow::anyhow!("the IPv6 frame: {e}"))
        };
        let (sent, given) = (parse(&out)?, parse(frame)?);
        let dst_port = u16::from_be_bytes([out[sent.l4_offset + 2], out[sent.l4_offset + 3]]);
        let index = u128::from(sent.dst).wrapping_sub(u128::from(backend_addr6(0)));
        ensure!(
            out.len() == frame.len() && index < n as u128 && dst_port == BACKEND_PORT,
            "the IPv6 frame left for [{}]:{dst_port} ({} bytes), not for one of the {n} \
             backends",
            sent.dst,
            out.len()
        );
        ensure!(
            out[..6] == self.lab.gateway_mac && out[6..12] == self.lab.lb_mac,
            "the translated frame is not addressed from cl0 to the gateway"
        );
        ensure!(
            sent.src == given.src && sent.hop_limit + 1 == given.hop_limit,
            "the translated frame's source or hop limit is wrong"
        );
        Ok(format!(
            "checked once: left translated to [{}]:{dst_port}, hop limit {}, checksums right, \
             from cl0 to the gateway",
            sent.dst, sent.hop_limit
        ))
    }

    /// The backend the SYN's flow was given.
    fn flow_backend(&self) -> anyhow::Result<Ipv4Addr> {
        self.backend_of(tcp_frame((CLIENT, CLIENT_PORT), (VIP, 80), SYN))
    }

    /// The backend the flow of a client → VIP frame was given.
    fn backend_of(&self, frame: Vec<u8>) -> anyhow::Result<Ipv4Addr> {
        let flow = self
            .dp
            .flow(&self.flow_key(frame))?
            .context("the flow is not in the flow table")?;
        let b = self.dp.backend(flow.backend)?;
        Ok(Ipv4Addr::from(b.addr.to_ne_bytes()))
    }

    /// Runs a client's `frame` once through the program and checks the frame that left:
    /// the client's packet unchanged behind an outer header of `tunnel`, from cl0's address
    /// to the flow's backend, addressed to the gateway. The counters then show that every
    /// measured run took the same path; this shows the path is the one meant.
    fn check_encapsulated(&mut self, frame: &[u8], tunnel: Tunnel) -> anyhow::Result<String> {
        let (verdict, out) = crate::xdp::test_run(
            &mut self.dp,
            lb_common::names::PROGRAM,
            self.lab.client_if,
            frame,
        )?;
        ensure!(
            verdict == SENT,
            "the DSR SYN returned {}",
            action_name(verdict)
        );
        let backend = self.backend_of(frame.to_vec())?;
        let protocol = match tunnel {
            Tunnel::Ipip => 4,
            Tunnel::Gue => 17,
        };
        let inner = 14 + usize::from(tunnel.encapsulation().overhead());
        ensure!(
            out.len() == inner + frame.len() - 14,
            "the DSR SYN left as {} bytes, {} expected",
            out.len(),
            inner + frame.len() - 14
        );
        ensure!(
            out[..6] == self.lab.gateway_mac && out[6..12] == self.lab.lb_mac,
            "the encapsulated SYN is not addressed from cl0 to the gateway"
        );
        ensure!(
            out[12..14] == [0x08, 0x00] && out[14] == 0x45 && out[23] == protocol,
            "the outer header is not IPv4 with protocol {protocol}"
        );
        let sum = out[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        ensure!(
            (sum & 0xffff) + (sum >> 16) == 0xffff,
            "the outer IPv4 checksum is wrong"
        );
        let (src, dst) = (
            Ipv4Addr::new(out[26], out[27], out[28], out[29]),
            Ipv4Addr::new(out[30], out[31], out[32], out[33]),
        );
        ensure!(
            (src, dst) == (LB_ADDRESS, backend),
            "outer {src} → {dst}, expected {LB_ADDRESS} → {backend}"
        );
        if tunnel == Tunnel::Gue {
            let port = u16::from_be_bytes([out[36], out[37]]);
            ensure!(
                port == Dsr::default().gue_port,
                "the GUE packet goes to port {port}"
            );
        }
        ensure!(
            out[inner..] == frame[14..],
            "the inner packet is not the client's, unchanged"
        );
        Ok(format!(
            "checked once: a SYN left encapsulated ({}, {src} → {dst}, inner packet \
             unchanged)",
            match tunnel {
                Tunnel::Ipip => "IPIP",
                Tunnel::Gue => "GUE",
            }
        ))
    }

    /// The flow-table key of a client → VIP frame.
    fn flow_key(&self, frame: Vec<u8>) -> FlowKey {
        let word = |at: usize| {
            u32::from_ne_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
        };
        let half = |at: usize| u16::from_ne_bytes([frame[at], frame[at + 1]]);
        FlowKey {
            src_addr: word(26),
            dst_addr: word(30),
            src_port: half(34),
            dst_port: half(36),
            protocol: PROTO_TCP,
            _pad: [0; 3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(case: Case, m2: &[f64], m1: &[f64], note: &str) -> CaseResult {
        CaseResult {
            case,
            backends: SCHEDULERS_AT,
            method1: Summary::of(m1),
            method2: Summary::of(m2),
            method1_raw: Summary::of(m1),
            method2_raw: Summary::of(m2),
            loop_ipv4: None,
            notes: vec![note.to_owned()],
            host_probe: Some(150.0),
            runs: 1,
        }
    }

    /// Each figure is the median of the runs' medians with their range, flagged on the
    /// runs' spread; a failed check of a run not quoted stays in the notes.
    #[test]
    fn figures_are_the_median_of_the_runs() {
        let runs = vec![
            vec![
                result(Case::NewEmpty, &[600.0, 610.0], &[700.0, 900.0], "a"),
                result(Case::NonVip, &[20.0, 21.0], &[30.0, 31.0], "a"),
            ],
            vec![
                // A run slowed as a whole: its rounds agree, its median is far off.
                result(Case::NewEmpty, &[900.0, 910.0], &[650.0, 660.0], "b"),
                result(
                    Case::NonVip,
                    &[19.0, 19.5],
                    &[30.0, 30.5],
                    "CHECK FAILED: b",
                ),
            ],
            vec![
                // One slow round: its median stands.
                result(Case::NewEmpty, &[500.0, 510.0, 900.0], &[760.0, 770.0], "c"),
                result(Case::NonVip, &[22.0, 22.5], &[29.0, 29.5], "c"),
            ],
        ];
        let out = median_runs(runs);
        assert_eq!(out.len(), 2);
        let new = &out[0];
        assert_eq!(new.case, Case::NewEmpty);
        let m2 = new.method2.unwrap();
        assert_eq!(
            (m2.median, m2.min, m2.max, m2.rounds),
            (605.0, 510.0, 905.0, 3)
        );
        assert_eq!(
            new.flag(&m2, Some(150.0)).as_deref(),
            Some("noisy: runs spread 1.77×")
        );
        let m1 = new.method1.unwrap();
        assert_eq!((m1.median, m1.min, m1.max), (765.0, 655.0, 800.0));
        assert_eq!(new.flag(&m1, Some(150.0)), None);
        assert!(
            new.notes[0].contains("method 2 605 (1.02×), 905 (1.01×), 510 (1.80×) ns"),
            "{:?}",
            new.notes
        );
        assert_eq!(new.notes.last().map(String::as_str), Some("a"));
        let non_vip = &out[1];
        assert_eq!(non_vip.method2.unwrap().median, 20.5);
        assert_eq!(non_vip.notes.last().map(String::as_str), Some("a"));
        assert!(
            non_vip.notes.iter().any(|n| n == "run 2: CHECK FAILED: b"),
            "{:?}",
            non_vip.notes
        );
    }

    #[test]
    fn one_run_is_kept_as_it_is() {
        let run = vec![result(Case::NewEmpty, &[600.0, 610.0], &[700.0], "a")];
        let out = median_runs(vec![run]);
        assert_eq!(out[0].notes, vec!["a".to_owned()]);
    }
}
