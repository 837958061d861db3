//! Part 3: connections against HAProxy in `mode tcp`, on the standard test topology (one
//! backend), one balancer at a time:
//!
//! - new TCP connections per second: client threads in the client namespace, each bound
//!   to its own client address, connect to the VIP, send one byte, read the backend's
//!   three-byte answer and its close, and start again, for a fixed time. The backend is a
//!   small thread-per-core server in this process (accept, read, answer, close).
//! - throughput: iperf3 (client in the client namespace, server on the backend).
//!
//! Cost per balancer core: the XDP balancer runs no user-space code on the data path; its
//! CPU time is what the kernel accounts to the XDP program (BPF_ENABLE_STATS: run time of
//! every run on both interfaces). HAProxy's is its process time from /proc (user +
//! system). Neither counts the kernel's veth and TCP work outside them: for HAProxy that
//! is two TCP stacks in softirq, so its per-core figure is flattering to it.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::util::{Summary, bpf_prog_stats, process_cpu_seconds, say, spawn_in, xdp_prog_id};
use crate::{ChildGuard, LbDaemon, Netns, Topology, TopologyOptions, VIP, client::TempDir};

const CONN_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
const CLIENT_THREADS: usize = 8;
const SERVER_THREADS: usize = 4;
/// Upper bound of connections per client thread and run, whatever the time says.
const MAX_CONNECTIONS_PER_THREAD: u64 = 2_000_000;

#[derive(Clone, Debug)]
pub struct ConnOptions {
    pub rounds: usize,
    pub seconds: f64,
    pub iperf_seconds: u32,
}

/// One balancer's figures.
#[derive(Clone, Debug, Default)]
pub struct Balancer {
    /// Connections completed per second.
    pub cps: Option<Summary>,
    /// Balancer CPU in cores (CPU seconds per second) while doing so.
    pub cps_cores: Option<Summary>,
    /// Connections per second per balancer core.
    pub cps_per_core: Option<Summary>,
    /// Balancer CPU per connection, µs.
    pub us_per_connection: Option<Summary>,
    /// XDP only: program runs per connection and ns per run.
    pub runs_per_connection: Option<Summary>,
    pub ns_per_run: Option<Summary>,
    /// XDP only: the daemon's process CPU meanwhile (not on the data path), cores.
    pub daemon_cores: Option<Summary>,
    /// XDP only: connections per second per core of XDP program + daemon.
    pub cps_per_core_with_daemon: Option<Summary>,
    pub failed: u64,
    /// iperf3 throughput, Gbit/s.
    pub gbps: Option<Summary>,
    pub gbps_cores: Option<Summary>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ConnReport {
    pub xdp: Balancer,
    /// The XDP LB's connection rounds again with the daemon stopped (no flow-table
    /// sweep): an ablation.
    pub xdp_paused: Option<Balancer>,
    pub haproxy: Balancer,
    pub haproxy_version: String,
    /// Per-core connections per second, XDP over HAProxy (medians).
    pub per_core_ratio: Option<f64>,
    pub notes: Vec<String>,
}

/// The backend: threads accepting on one listener, each answering `ok\n` and closing.
struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ns: String,
    port: u16,
}

impl EchoServer {
    fn start(ns: &Netns, port: u16) -> anyhow::Result<EchoServer> {
        let listener = spawn_in(ns, "bench-listen", move || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the listener thread panicked"))?
        .context("binding the benchmark backend")?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..SERVER_THREADS {
            let listener = listener.try_clone()?;
            let stop = Arc::clone(&stop);
            threads.push(
                thread::Builder::new()
                    .name(format!("bench-server{i}"))
                    .spawn(move || serve(&listener, &stop))?,
            );
        }
        Ok(EchoServer {
            stop,
            threads,
            ns: ns.name().to_owned(),
            port,
        })
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            let _ = stream.write_all(b"ok\n");
        }
        // Dropping the stream closes it: the backend closes first, as an HTTP/1.0 server.
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Blocked accepts return once a connection arrives: one per thread, from inside
        // the backend namespace.
        let path = std::path::Path::new("/run/netns").join(&self.ns);
        if let Ok(file) = fs::File::open(&path) {
            let port = self.port;
            let n = self.threads.len();
            let _ = thread::spawn(move || {
                // SAFETY: setns on a descriptor we own; only this thread changes.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                    for _ in 0..n {
                        let _ = TcpStream::connect_timeout(
                            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                            Duration::from_secs(1),
                        );
                    }
                }
            })
            .join();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP connection from `src` (port chosen at connect, IP_BIND_ADDRESS_NO_PORT) to
/// `dst`, giving up after `timeout`. The calling thread's namespace applies.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let local = sockaddr(SocketAddrV4::new(src, 0));
    let remote = sockaddr(dst);
    // SAFETY: valid descriptor, option values and address structs of the sizes given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        );
        // A blocking connect gives up after SO_SNDTIMEO.
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        );
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const local).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(
            fd.as_raw_fd(),
            (&raw const remote).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(TcpStream::from(fd))
}

/// One connection: send a byte, read the answer to its end.
fn one_connection(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<()> {
    let mut stream = connect_from(src, dst, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"x")?;
    let mut buf = [0u8; 16];
    let mut got = 0;
    loop {
        match stream.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
        if got == buf.len() {
            break;
        }
    }
    if &buf[..got] == b"ok\n" {
        Ok(())
    } else {
        Err(io::Error::other(format!("answer {:?}", &buf[..got])))
    }
}

/// Runs the client threads for `seconds`: (connections completed, failed, elapsed s).
fn connection_load(topo: &Topology, dst: SocketAddrV4, seconds: f64) -> (u64, u64, f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let sources: Vec<Ipv4Addr> = topo
        .client_addrs()
        .iter()
        .copied()
        .cycle()
        .take(CLIENT_THREADS)
        .collect();
    let handles: Vec<JoinHandle<(u64, u64)>> = sources
        .into_iter()
        .enumerate()
        .map(|(i, src)| {
            spawn_in(topo.client(), &format!("bench-client{i}"), move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline && ok + failed < MAX_CONNECTIONS_PER_THREAD {
                    match one_connection(src, dst) {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        if let Ok((o, f)) = h.join() {
            ok += o;
            failed += f;
        }
    }
    (ok, failed, started.elapsed().as_secs_f64())
}

/// iperf3 from the client to `VIP:5201` for `seconds`: Gbit/s received.
fn iperf(topo: &Topology, seconds: u32) -> anyhow::Result<f64> {
    let mut child = topo.client().spawn([
        "iperf3",
        "-c",
        &VIP.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &seconds.to_string(),
        "--connect-timeout",
        "3000",
        "-J",
    ]);
    let out = child
        .wait_output(Duration::from_secs(u64::from(seconds) + 20))
        .context("iperf3 did not finish")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no sum_received in iperf3's answer")
}

/// CPU time of the balancer so far, seconds.
enum CpuMeter {
    /// The XDP program (by id) and the daemon's process (its flow-table sweep and
    /// everything else it does while traffic flows).
    Xdp {
        prog: u32,
        daemon: u32,
    },
    Process(u32),
}

impl CpuMeter {
    fn seconds(&self) -> Option<f64> {
        match *self {
            CpuMeter::Xdp { prog, daemon } => {
                Some(bpf_prog_stats(prog)?.0 as f64 / 1e9 + process_cpu_seconds(daemon)?)
            }
            CpuMeter::Process(pid) => process_cpu_seconds(pid),
        }
    }

    /// The daemon's share so far (XDP only).
    fn daemon_seconds(&self) -> Option<f64> {
        match *self {
            CpuMeter::Xdp { daemon, .. } => process_cpu_seconds(daemon),
            CpuMeter::Process(_) => None,
        }
    }

    /// Program runs so far (XDP only).
    fn runs(&self) -> Option<u64> {
        match *self {
            CpuMeter::Xdp { prog, .. } => bpf_prog_stats(prog).map(|(_, n)| n),
            CpuMeter::Process(_) => None,
        }
    }
}

/// Connection rounds through whatever balancer is up, into `b`.
fn connections(
    topo: &Topology,
    options: &ConnOptions,
    meter: &CpuMeter,
    label: &str,
    b: &mut Balancer,
) -> anyhow::Result<()> {
    let dst = SocketAddrV4::new(VIP, CONN_PORT);
    // Warm-up, and proof the path works before measuring.
    let (ok, failed, _) = connection_load(topo, dst, 0.5);
    if ok == 0 {
        bail!("{label}: no connection succeeded through the balancer ({failed} failed)");
    }
    let (mut cps, mut cores, mut per_core) = (Vec::new(), Vec::new(), Vec::new());
    let (mut us_per_conn, mut runs_per_conn, mut ns_per_run) = (Vec::new(), Vec::new(), Vec::new());
    let (mut daemon_cores, mut per_core_with_daemon) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        let (cpu0, runs0, d0) = (meter.seconds(), meter.runs(), meter.daemon_seconds());
        let (ok, failed, elapsed) = connection_load(topo, dst, options.seconds);
        let (cpu1, runs1, d1) = (meter.seconds(), meter.runs(), meter.daemon_seconds());
        let rate = ok as f64 / elapsed;
        cps.push(rate);
        b.failed += failed;
        if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
            let used = (c1 - c0) / elapsed;
            cores.push(used);
            if used > 0.0 {
                per_core.push(rate / used);
            }
            if ok > 0 {
                us_per_conn.push((c1 - c0) * 1e6 / ok as f64);
            }
            if let (Some(r0), Some(r1)) = (runs0, runs1)
                && r1 > r0
                && ok > 0
            {
                runs_per_conn.push((r1 - r0) as f64 / ok as f64);
                ns_per_run.push((c1 - c0) * 1e9 / (r1 - r0) as f64);
            }
            if let (Some(d0), Some(d1)) = (d0, d1) {
                let daemon = (d1 - d0) / elapsed;
                daemon_cores.push(daemon);
                if used + daemon > 0.0 {
                    per_core_with_daemon.push(rate / (used + daemon));
                }
            }
        }
        say(format!(
            "conn {label} round {}/{}: {rate:.0} connections/s, {failed} failed, balancer {:.3} cores",
            round + 1,
            options.rounds,
            cores.last().copied().unwrap_or(f64::NAN)
        ));
    }
    b.cps = Summary::of(&cps);
    b.cps_cores = Summary::of(&cores);
    b.cps_per_core = Summary::of(&per_core);
    b.us_per_connection = Summary::of(&us_per_conn);
    b.runs_per_connection = Summary::of(&runs_per_conn);
    b.ns_per_run = Summary::of(&ns_per_run);
    b.daemon_cores = Summary::of(&daemon_cores);
    b.cps_per_core_with_daemon = Summary::of(&per_core_with_daemon);
    Ok(())
}

/// iperf3 rounds through whatever balancer is up, into `b`.
fn throughput(
    topo: &Topology,
    options: &ConnOptions,
    meter: &CpuMeter,
    label: &str,
    b: &mut Balancer,
) {
    let (mut gbps, mut gcores) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        let cpu0 = meter.seconds();
        let started = Instant::now();
        match iperf(topo, options.iperf_seconds) {
            Ok(g) => {
                let cpu1 = meter.seconds();
                gbps.push(g);
                if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
                    gcores.push((c1 - c0) / started.elapsed().as_secs_f64());
                }
                say(format!(
                    "conn {label} iperf3 round {}/{}: {g:.2} Gbit/s",
                    round + 1,
                    options.rounds
                ));
            }
            Err(e) => b.notes.push(format!("iperf3 round {}: {e:#}", round + 1)),
        }
    }
    b.gbps = Summary::of(&gbps);
    b.gbps_cores = Summary::of(&gcores);
}

/// A process stopped (SIGSTOP) for the guard's life, continued on drop.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        // SAFETY: kill(2) on the daemon this benchmark started.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

fn daemon_config(topo: &Topology) -> String {
    format!(
        "instance: {p}i\ninterfaces: [{c}, {b}]\nflow_table_size: 1048576\n\
         default_server_group:\n  servers:\n    - {{ address: {b1} }}\n\
         listeners:\n  \
         - {{ name: conn, protocol: tcp, address: {VIP}, port: {CONN_PORT}, backend_port: {BACKEND_PORT}, health_check: {{ type: none }} }}\n  \
         - {{ name: iperf, protocol: tcp, address: {VIP}, port: {IPERF_PORT}, backend_port: {IPERF_PORT}, health_check: {{ type: none }} }}\n",
        p = topo.prefix(),
        c = topo.lb_client_if(),
        b = topo.lb_backend_if(),
        b1 = topo.backend_addr(1),
    )
}

fn haproxy_config(topo: &Topology) -> String {
    let b1 = topo.backend_addr(1);
    format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend conn\n  bind {VIP}:{CONN_PORT}\n  default_backend conn\n\
         backend conn\n  server b1 {b1}:{BACKEND_PORT}\n\
         frontend iperf\n  bind {VIP}:{IPERF_PORT}\n  default_backend iperf\n\
         backend iperf\n  server b1 {b1}:{IPERF_PORT}\n"
    )
}

pub fn run(options: &ConnOptions) -> anyhow::Result<ConnReport> {
    super::util::require_binary("lb-ctl")?;
    let mut report = ConnReport::default();
    let topo = Topology::build(
        "bcn",
        1,
        TopologyOptions {
            client_addresses: CLIENT_THREADS,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    for ns in [topo.client(), topo.lb(), topo.backend(1)] {
        ns.sysctls(&[
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.core.somaxconn", "4096"),
        ]);
    }
    let _server = EchoServer::start(topo.backend(1), BACKEND_PORT)?;
    let _iperf_server = topo
        .backend(1)
        .spawn(["iperf3", "-s", "-p", &IPERF_PORT.to_string()]);
    thread::sleep(Duration::from_millis(200));

    // The XDP balancer, as a user runs it.
    {
        let daemon = LbDaemon::start(
            topo.lb(),
            &format!("{}i", topo.prefix()),
            &daemon_config(&topo),
        );
        let prog = xdp_prog_id(topo.lb(), topo.lb_client_if())
            .context("no XDP program on the LB's client interface")?;
        // The daemon joins the LB namespace itself (--netns): the only process there.
        let daemon_pid = match topo.lb().pids().as_slice() {
            [pid] => *pid as u32,
            other => bail!("expected the daemon alone in the LB namespace, found {other:?}"),
        };
        // Run-time accounting of BPF programs while the fd is open (machine-wide, a few ns
        // per run for every program; closed at the end of this block).
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| anyhow::anyhow!("BPF_ENABLE_STATS: {e}"))?;
        let meter = CpuMeter::Xdp {
            prog,
            daemon: daemon_pid,
        };
        connections(&topo, options, &meter, "xdp", &mut report.xdp)?;
        // Ablation: the same rounds with the daemon stopped, so its once-a-second sweep
        // of the flow table does not run (the data plane needs nothing from it here:
        // health checks are off). The flow table is only fuller by then.
        {
            let _paused = Paused::new(daemon_pid);
            let mut paused = Balancer::default();
            connections(&topo, options, &meter, "xdp, daemon paused", &mut paused)?;
            report.xdp_paused = Some(paused);
        }
        throughput(&topo, options, &meter, "xdp", &mut report.xdp);
        drop(stats);
        drop(daemon);
    }

    // HAProxy on the same namespaces: the VIP becomes a local address of the LB.
    // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/": the version.
    report.haproxy_version = String::from_utf8_lossy(&topo.lb().exec(["haproxy", "-v"]).stdout)
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    topo.lb().addr_add("lo", format!("{VIP}/32"));
    let dir = TempDir::new("bhap");
    let cfg = dir.path().join("haproxy.cfg");
    fs::write(&cfg, haproxy_config(&topo))?;
    let mut haproxy: ChildGuard = topo.lb().spawn([
        "haproxy".as_ref(),
        "-db".as_ref(),
        "-f".as_ref(),
        cfg.as_os_str(),
    ]);
    wait_listening(&topo, &mut haproxy, Duration::from_secs(10))?;
    let meter = CpuMeter::Process(haproxy.pid());
    connections(&topo, options, &meter, "haproxy", &mut report.haproxy)?;
    throughput(&topo, options, &meter, "haproxy", &mut report.haproxy);
    let threads = fs::read_dir(format!("/proc/{}/task", haproxy.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    report.notes.push(format!(
        "HAProxy ran {threads} threads (nbthread default: one per CPU)"
    ));
    haproxy.stop();

    if let (Some(x), Some(h)) = (&report.xdp.cps_per_core, &report.haproxy.cps_per_core)
        && h.median > 0.0
    {
        report.per_core_ratio = Some(x.median / h.median);
    }
    Ok(report)
}

/// Connects from the client to the VIP until HAProxy answers (or has exited).
fn wait_listening(
    topo: &Topology,
    haproxy: &mut ChildGuard,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let src = topo.client_addr();
    let dst = SocketAddrV4::new(VIP, CONN_PORT);
    loop {
        let ok = spawn_in(topo.client(), "bench-probe", move || {
            one_connection(src, dst)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))?;
        if ok.is_ok() {
            return Ok(());
        }
        if let Some(status) = haproxy.try_status() {
            bail!("HAProxy exited ({status}):\n{}", haproxy.stderr());
        }
        if Instant::now() > deadline {
            bail!(
                "HAProxy did not answer on {dst} within {timeout:?}:\n{}",
                haproxy.stderr()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}
