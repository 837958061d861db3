//! Part 4: the control plane.
//!
//! - Maglev: `lb_common::maglev::build_table` for M = 65537 and N backends (release
//!   build, this process), and the slots that move when one backend is removed, against
//!   the ideal M/N.
//! - Change → data plane: a running daemon, traffic of new UDP flows (a fresh source
//!   address and port for every datagram, sent in a tight loop from the client) through
//!   the VIP, and a second backend added with `lb-ctl server add` over and over. Each
//!   backend records when its first datagram arrives; the latency is that time minus the
//!   moment the `lb-ctl` process returned (both read from this process's monotonic
//!   clock). Its resolution is the gap between new flows the client manages; a negative
//!   value means the change was live before the command had returned.
//! - Prober capacity: [`prober::capacity_probe`], the controller's health checker with
//!   10,000 TCP targets at a 1 s interval, on a tokio current_thread runtime pinned to one
//!   CPU.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_common::{
    MAGLEV_TABLE_SIZE,
    maglev::{MaglevBackend, build_table},
};

use super::{
    prober::{self, CapacityReport},
    util::{Summary, bench_cpu, pin_to_cpu, quantile, say, spawn_in},
};
use crate::{LbDaemon, Topology, TopologyOptions, VIP};

const UDP_PORT: u16 = 5300;
/// Client addresses the new-flow sender cycles through (each with ports 1024..=65535).
const SENDER_ADDRESSES: usize = 64;

#[derive(Clone, Debug)]
pub struct ControlOptions {
    pub maglev_rounds: usize,
    pub adds: usize,
    pub probe_seconds: u64,
}

/// A larger prime table size, for listeners with thousands of backends, where a removal
/// at the default size moves several times the ideal share of slots: measured beside the
/// default before the size becomes a listener option.
pub const LARGE_MAGLEV_TABLE_SIZE: u32 = 655_373;

#[derive(Clone, Debug)]
pub struct MaglevRow {
    /// Table size M (a prime).
    pub size: u32,
    pub backends: usize,
    /// Build time, ms.
    pub build_ms: Summary,
    /// Slots that changed owner when one backend was removed.
    pub moved: usize,
    /// M / N: what a perfect consistent hash would move.
    pub ideal: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ChangeLatency {
    /// ms from `lb-ctl server add` returning to the new backend's first new flow.
    pub samples: Vec<f64>,
    /// ms the `lb-ctl server add` process took (start to exit).
    pub command_ms: Vec<f64>,
    /// ms from starting `lb-ctl server add` to the new backend's first new flow.
    pub from_start_ms: Vec<f64>,
    /// New flows per second the sender managed (the measurement's resolution).
    pub flows_per_second: f64,
    pub notes: Vec<String>,
}

impl ChangeLatency {
    pub fn p50(&self) -> Option<f64> {
        quantile(&self.samples, 0.5)
    }

    pub fn p99(&self) -> Option<f64> {
        quantile(&self.samples, 0.99)
    }
}

#[derive(Clone, Debug)]
pub struct ProbeCapacity {
    pub targets: usize,
    pub probes_per_second: f64,
    pub expected_per_second: f64,
    pub failures: u64,
    pub keeps_up: bool,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct ControlReport {
    pub maglev: Vec<MaglevRow>,
    pub change: Option<ChangeLatency>,
    pub probe: Option<ProbeCapacity>,
    pub notes: Vec<String>,
}

fn members(n: usize) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| {
            MaglevBackend::ipv4(
                i as u32,
                u32::from_ne_bytes(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 1)) + i as u32).octets(),
                ),
                8080u16.to_be(),
                100,
            )
        })
        .collect()
}

pub fn maglev(rounds: usize) -> Vec<MaglevRow> {
    let mut rows = Vec::new();
    for (size, n) in [10usize, 100, 1000, 10_000]
        .map(|n| (MAGLEV_TABLE_SIZE, n))
        .into_iter()
        .chain([1000, 10_000].map(|n| (LARGE_MAGLEV_TABLE_SIZE, n)))
    {
        let set = members(n);
        // One untimed build first: page faults of the table and allocator warm-up.
        let before = build_table(&set, size);
        let times: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let table = build_table(&set, size);
                let ms = started.elapsed().as_secs_f64() * 1e3;
                std::hint::black_box(table);
                ms
            })
            .collect();
        let removed = n / 2;
        let rest: Vec<MaglevBackend> = set
            .iter()
            .copied()
            .filter(|b| b.id != removed as u32)
            .collect();
        let after = build_table(&rest, size);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let row = MaglevRow {
            size,
            backends: n,
            build_ms: Summary::of(&times).unwrap_or(Summary {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                rounds: 0,
            }),
            moved,
            ideal: f64::from(size) / n as f64,
        };
        say(format!(
            "maglev M={size} N={n}: {} ms, {moved} slots moved (ideal {:.0})",
            row.build_ms.show(3),
            row.ideal
        ));
        rows.push(row);
    }
    rows
}

/// A backend's UDP receiver: records the first datagram after it is armed.
struct Receiver {
    first: Arc<Mutex<Option<Instant>>>,
    armed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &crate::Netns) -> anyhow::Result<Receiver> {
        let socket = spawn_in(ns, "bench-udp-bind", || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let first = Arc::new(Mutex::new(None));
        let armed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (first, armed, stop) = (Arc::clone(&first), Arc::clone(&armed), Arc::clone(&stop));
            thread::Builder::new()
                .name("bench-udp-recv".into())
                .spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if socket.recv_from(&mut buf).is_ok() && armed.load(Ordering::Acquire) {
                            let now = Instant::now();
                            let mut f = first.lock().unwrap_or_else(|e| e.into_inner());
                            if f.is_none() {
                                *f = Some(now);
                            }
                        }
                    }
                })?
        };
        Ok(Receiver {
            first,
            armed,
            stop,
            thread: Some(thread),
        })
    }

    fn arm(&self) {
        *self.first.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.armed.store(true, Ordering::Release);
    }

    fn first(&self) -> Option<Instant> {
        *self.first.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client sending one datagram per new flow until stopped (or 10 minutes, or the
/// tuples run out).
struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Sender {
    fn start(topo: &Topology) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let sources: Vec<Ipv4Addr> = topo.client_addrs()[1..].to_vec();
        let thread = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            spawn_in(topo.client(), "bench-udp-send", move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                let dst = SocketAddrV4::new(VIP, UDP_PORT);
                // Every (address, port) once: each datagram is a new flow for the LB.
                'outer: for port in 1024..=u16::MAX {
                    for &src in &sources {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break 'outer;
                        }
                        let Ok(socket) = UdpSocket::bind((src, port)) else {
                            continue;
                        };
                        socket.send_to(b"x", dst)?;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        };
        Sender {
            stop,
            sent,
            thread: Some(thread),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn change_latency(adds: usize) -> anyhow::Result<ChangeLatency> {
    super::util::require_binary("lb-ctl")?;
    let topo = Topology::build(
        "bcp",
        2,
        TopologyOptions {
            client_addresses: SENDER_ADDRESSES,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let b2 = topo.backend_addr(2).to_string();
    let config = format!(
        "instance: {p}i\ninterfaces: [{c}, {b}]\nflow_table_size: 4194304\n\
         default_server_group:\n  servers:\n    - {{ address: {b1} }}\n\
         listeners:\n  - {{ name: udp, protocol: udp, address: {VIP}, port: {UDP_PORT}, \
         backend_port: {UDP_PORT}, udp_timeout: 10, health_check: {{ type: none }} }}\n",
        p = topo.prefix(),
        c = topo.lb_client_if(),
        b = topo.lb_backend_if(),
        b1 = topo.backend_addr(1),
    );
    let daemon = LbDaemon::start(topo.lb(), &format!("{}i", topo.prefix()), &config);
    let r1 = Receiver::start(topo.backend(1))?;
    let r2 = Receiver::start(topo.backend(2))?;
    r1.arm();
    let sender = Sender::start(&topo);
    // The path works before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(5);
    while r1.first().is_none() {
        ensure!(
            Instant::now() < deadline,
            "no datagram reached backend 1 through the VIP"
        );
        thread::sleep(Duration::from_millis(10));
    }

    let mut result = ChangeLatency::default();
    let started = Instant::now();
    let sent_before = sender.sent.load(Ordering::Relaxed);
    for i in 0..adds {
        if i > 0 {
            daemon.ctl_ok(&["server", "remove", "--group", "default", &b2, "--now"]);
            // Datagrams already on their way to backend 2 land before it is armed.
            thread::sleep(Duration::from_millis(50));
        }
        r2.arm();
        let before = Instant::now();
        daemon.ctl_ok(&["server", "add", "--group", "default", &b2]);
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(2);
        let first = loop {
            if let Some(t) = r2.first() {
                break t;
            }
            if Instant::now() > deadline {
                bail!("add {}: no new flow reached backend 2 within 2 s", i + 1);
            }
            thread::sleep(Duration::from_micros(200));
        };
        let ms = if first >= returned {
            (first - returned).as_secs_f64() * 1e3
        } else {
            -(returned - first).as_secs_f64() * 1e3
        };
        result.samples.push(ms);
        result
            .command_ms
            .push((returned - before).as_secs_f64() * 1e3);
        result
            .from_start_ms
            .push(first.saturating_duration_since(before).as_secs_f64() * 1e3);
    }
    let sent = sender.sent.load(Ordering::Relaxed) - sent_before;
    result.flows_per_second = sent as f64 / started.elapsed().as_secs_f64();
    drop(sender);
    let negative = result.samples.iter().filter(|&&s| s < 0.0).count();
    if negative > 0 {
        result.notes.push(format!(
            "{negative} of {adds} adds: the first new flow reached the backend before the \
             command had returned"
        ));
    }
    say(format!(
        "change → data plane: p50 {:.3} ms, p99 {:.3} ms over {adds} adds, sender {:.0} new flows/s",
        result.p50().unwrap_or(f64::NAN),
        result.p99().unwrap_or(f64::NAN),
        result.flows_per_second
    ));
    drop(daemon);
    Ok(result)
}

pub fn probe_capacity(seconds: u64) -> anyhow::Result<ProbeCapacity> {
    let limit = super::util::raise_nofile_limit();
    ensure!(
        limit > lb_ctl::health::DEFAULT_MAX_IN_FLIGHT as u64 + 1024,
        "the open-file limit ({limit}) is too small for the prober benchmark"
    );
    let handle = thread::Builder::new().name("bench-prober".into()).spawn(
        move || -> anyhow::Result<CapacityReport> {
            // One core: the runtime's only thread, pinned.
            pin_to_cpu(bench_cpu())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(prober::capacity_probe(
                10_000,
                1,
                Duration::from_secs(seconds),
                lb_ctl::health::DEFAULT_MAX_IN_FLIGHT,
            ))?)
        },
    )?;
    let report = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the prober thread panicked"))?
        .context("capacity_probe")?;
    say(format!("prober: {report}"));
    Ok(ProbeCapacity {
        targets: report.targets,
        probes_per_second: report.probes_per_second,
        expected_per_second: report.expected_per_second,
        failures: report.failures,
        keeps_up: report.keeps_up(),
        text: report.to_string(),
    })
}

pub fn run(options: &ControlOptions) -> ControlReport {
    let mut report = ControlReport {
        maglev: maglev(options.maglev_rounds),
        ..ControlReport::default()
    };
    match change_latency(options.adds) {
        Ok(c) => report.change = Some(c),
        Err(e) => report
            .notes
            .push(format!("change → data plane not measured: {e:#}")),
    }
    match probe_capacity(options.probe_seconds) {
        Ok(p) => report.probe = Some(p),
        Err(e) => report
            .notes
            .push(format!("prober capacity not measured: {e:#}")),
    }
    report
}
