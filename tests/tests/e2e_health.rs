//! End to end: health checks run by the daemon flip backends out of and back into the
//! selection tables while real traffic flows (issue 4). A backend killed under steady
//! traffic, an HTTP backend answering 503, a UDP and a TCP primary/secondary group failing
//! over and back, weight 0 still probed, flap damping and slow start shown in `status`.
//!
//! Every test uses short health checks (interval 1 s, timeout 1 s, both thresholds 2), so
//! the promised bound on detection, interval + unhealthy_threshold × max(interval, timeout)
//! plus one interval of slack for jitter, is 4 s; recovery takes interval × healthy_threshold (+ the same
//! slack). Each test asserts what a user sees: which backend answered, how many requests
//! failed and when, what `lb-ctl status` says.
//!
//! Topology (see `lb_tests::topology`): a client, the LB running `lb-ctl daemon`, three
//! backends b1..b3 (198.18.1.11..13) serving HTTP on 8080 and UDP on 5353; the VIP is
//! 198.19.0.100. Health probes come from the LB's backend-side address 198.18.1.1, so
//! client connections are counted by the client's address (`Backend::peers`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Backend, BulkOptions, ChildGuard, LbDaemon, Netns, Tally, Topology, TopologyOptions, VIP,
    all_answered, curl_many, curl_many_with, require_root_and_bpf,
    steady::{Steady, SteadyOptions, last_failing_batch, merged},
    topology::LB_BACKEND_ADDR,
    udp_many, udp_request,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const B1: &str = "198.18.1.11";
const B2: &str = "198.18.1.12";
const B3: &str = "198.18.1.13";

/// The health check timings every test uses.
const INTERVAL: u64 = 1;
const TIMEOUT: u64 = 1;
const HEALTHY_THRESHOLD: u64 = 2;
const UNHEALTHY_THRESHOLD: u64 = 2;

/// `health_check` fields with those timings; `type` and the rest are added per test.
const TIMINGS: &str = "interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2";

/// The promised failure-detection bound: interval + unhealthy_threshold × max(interval,
/// timeout), plus one interval of slack for the jitter.
fn down_bound() -> Duration {
    Duration::from_secs(INTERVAL + UNHEALTHY_THRESHOLD * INTERVAL.max(TIMEOUT) + INTERVAL)
}

/// The recovery bound: interval × healthy_threshold + timeout, plus one interval of
/// jitter.
fn up_bound() -> Duration {
    Duration::from_secs(INTERVAL * HEALTHY_THRESHOLD + TIMEOUT + INTERVAL)
}

/// A three-backend topology, backends started (HTTP on 8080, UDP on 5353), and a daemon
/// whose config is the usual header followed by `groups_and_listeners`.
fn setup(tag: &str, groups_and_listeners: &str) -> Option<(Topology, LbDaemon, Vec<Backend>)> {
    setup_serving(tag, Some(HTTP_PORT), groups_and_listeners)
}

/// [`setup`] with backends serving HTTP on `http_port` only if given (UDP always).
fn setup_serving(
    tag: &str,
    http_port: Option<u16>,
    groups_and_listeners: &str,
) -> Option<(Topology, LbDaemon, Vec<Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(tag, 3, TopologyOptions::default());
    topo.pin_neighbors();
    let backends = topo.start_backends(http_port, Some(UDP_PORT));
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n{groups_and_listeners}",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    Some((topo, daemon, backends))
}

/// Starts backend `k` again in its namespace, as `start_backends` did (same name, same
/// ports).
fn restart_backend(topo: &Topology, k: usize) -> Backend {
    let any = |port: u16| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    Backend::start(
        topo.backend(k),
        &format!("b{k}"),
        &[any(HTTP_PORT)],
        &[any(UDP_PORT)],
    )
}

/// SIGKILL, as in a crash: the listening sockets close, the kernel answers RST.
fn kill_backend(backend: &mut Backend) {
    let child = backend.child();
    child.signal(libc::SIGKILL);
    assert!(
        child.wait_timeout(Duration::from_secs(5)).is_some(),
        "the backend did not die"
    );
}

fn url(port: u16) -> String {
    format!("http://{VIP}:{port}/")
}

/// The daemon's log without terminal colour codes.
fn plain_log(daemon: &LbDaemon) -> String {
    let log = daemon.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The backend `addr:port` of listener `listener` in a `status --json` answer.
fn backend_status(status: &Value, listener: &str, addr: &str, port: u16) -> Value {
    let l = status["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("no listener {listener} in status: {status:#}"));
    l["backends"]
        .as_array()
        .and_then(|bs| {
            bs.iter()
                .find(|b| b["address"] == addr && b["port"] == port)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr}:{port} in listener {listener}: {status:#}"))
}

/// Polls `lb-ctl status` every 100 ms until `pred` holds for backend `addr:port` of
/// `listener`, at most `timeout`; returns how long it took and the backend's entry, or
/// `Err` with the last entry seen.
fn wait_backend(
    daemon: &LbDaemon,
    listener: &str,
    addr: &str,
    port: u16,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<(Duration, Value), Value> {
    let start = Instant::now();
    loop {
        let b = backend_status(&daemon.status(), listener, addr, port);
        if pred(&b) {
            return Ok((start.elapsed(), b));
        }
        if start.elapsed() >= timeout {
            return Err(b);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Health is down (and so is the state shown).
fn is_down(b: &Value) -> bool {
    b["health"] == "down" && b["state"] == "down"
}

fn is_up(b: &Value) -> bool {
    b["health"] == "up" && b["state"] == "up"
}

/// New flows the data plane sent to `addr:port` through `listener` (`lb-ctl stats`).
fn new_flows_to(daemon: &LbDaemon, listener: &str, addr_port: &str) -> u64 {
    let text = daemon.ctl_ok(&["stats", "--json"]);
    let stats: Value = serde_json::from_str(&text).expect("stats JSON");
    let l = stats["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("no listener {listener} in stats: {stats:#}"));
    l["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b[0] == addr_port))
        .map(|b| b[1]["new_flows"].as_u64().expect("new_flows"))
        .unwrap_or_else(|| panic!("no backend {addr_port} in stats of {listener}: {stats:#}"))
}

/// Connections a backend accepted from the client (not the LB's health probes).
fn from_client(backend: &Backend, client: Ipv4Addr) -> u64 {
    backend
        .peers()
        .get(&IpAddr::V4(client))
        .copied()
        .unwrap_or(0)
}

const BATCH: usize = 20;

/// Batches of `BATCH` new connections (4 at a time, 1 s to connect, 2 s per request), at
/// most 1000 batches or 40 s.
fn steady() -> Steady {
    Steady::new(SteadyOptions {
        batch: BATCH,
        parallel: 4,
        requests: BulkOptions {
            max_time: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(20),
        },
        max_batches: 1000,
        max_time: Duration::from_secs(40),
    })
}

/// A long-lived HTTP connection: `curl /stream?seconds=N` gets `NAME i` every 100 ms.
struct LongStream {
    child: ChildGuard,
    seconds: u64,
}

impl LongStream {
    fn start(ns: &Netns, port: u16, seconds: u64) -> LongStream {
        let url = format!("http://{VIP}:{port}/stream?seconds={seconds}");
        let max_time = (seconds + 15).to_string();
        let child = ns.spawn([
            "curl",
            "-sS",
            "-N",
            "--connect-timeout",
            "3",
            "--max-time",
            max_time.as_str(),
            url.as_str(),
        ]);
        LongStream { child, seconds }
    }

    /// The backend serving it, once its first line arrived.
    fn backend(&self) -> String {
        self.child.wait_for_output(" 0\n", Duration::from_secs(5));
        let out = self.child.stdout();
        out.split_whitespace().next().unwrap_or_default().to_owned()
    }

    /// Waits for the end; asserts curl succeeded and every line came, in order, from one
    /// backend, whose name it returns.
    fn finish(mut self) -> String {
        let out = self
            .child
            .wait_output(Duration::from_secs(self.seconds + 20))
            .unwrap_or_else(|| panic!("the stream did not end: {}", self.child.stdout()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the long-lived connection failed ({}): {}\nreceived {} line(s), last {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            stdout.lines().count(),
            stdout.lines().last()
        );
        let lines: Vec<&str> = stdout.lines().collect();
        let name = lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        let expected: Vec<String> = (0..self.seconds * 10)
            .map(|i| format!("{name} {i}"))
            .collect();
        assert_eq!(lines, expected, "every line, in order, from one backend");
        name
    }
}

/// A backend process SIGKILLed under steady traffic: requests fail only until the
/// detection bound, none goes to the dead backend after it; started again, it gets
/// traffic back after `healthy_threshold` successful probes.
#[test]
fn killed_backend_gets_no_request_after_the_bound_and_returns_when_restarted() {
    let Some((topo, daemon, mut backends)) = setup(
        "hkil",
        &format!(
            "vserver_groups:\n  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B2}, port: 8080 }}\n      - {{ address: {B3}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, health_check: {{ type: tcp, {TIMINGS} }} }}\n"
        ),
    ) else {
        return;
    };
    let b2 = format!("{B2}:8080");
    let steady = steady();
    let url = url(80);
    let mut restarted = None;
    let (batches, killed_at, bound_at, flows, restarted_at, up_after) = thread::scope(|s| {
        let traffic = s.spawn(|| steady.run(topo.client(), &url));
        let _stop = steady.stop_on_drop();
        steady.wait(5, Duration::from_secs(2));

        // Measured before the signal: the batch running across it counts as after.
        let killed_at = Instant::now();
        kill_backend(&mut backends[1]);
        let down = wait_backend(&daemon, "web", B2, 8080, Duration::from_secs(15), is_down);
        let (down_after, b) = down.unwrap_or_else(|b| {
            panic!(
                "b2 killed 15 s ago is still not down: {b:#}\n{}",
                plain_log(&daemon)
            )
        });
        eprintln!("b2 marked down {down_after:?} after the kill: {b}");
        // From the bound on, no new flow may reach b2.
        let bound_at = killed_at + down_bound();
        thread::sleep(bound_at.saturating_duration_since(Instant::now()));
        let flows_at_bound = new_flows_to(&daemon, "web", &b2);
        steady.wait(5, Duration::from_secs(3));
        let flows_before_restart = new_flows_to(&daemon, "web", &b2);

        restarted = Some(restart_backend(&topo, 2));
        let restarted_at = Instant::now();
        let up = wait_backend(&daemon, "web", B2, 8080, Duration::from_secs(15), is_up);
        let (up_after, _) = up.unwrap_or_else(|b| {
            panic!(
                "b2 restarted 15 s ago is still not up: {b:#}\n{}",
                plain_log(&daemon)
            )
        });
        eprintln!("b2 marked up {up_after:?} after the restart");
        steady.wait(10, Duration::from_secs(3));
        drop(_stop);
        (
            traffic.join().expect("traffic thread"),
            killed_at,
            bound_at,
            (flows_at_bound, flows_before_restart),
            restarted_at,
            up_after,
        )
    });
    let log = plain_log(&daemon);
    let before = merged(batches.iter().filter(|b| b.ended < killed_at));
    let window = merged(
        batches
            .iter()
            .filter(|b| b.ended >= killed_at && b.started < bound_at),
    );
    let after_bound = merged(
        batches
            .iter()
            .filter(|b| b.started >= bound_at && b.ended < restarted_at),
    );
    let after_restart = merged(
        batches
            .iter()
            .filter(|b| b.started >= restarted_at + up_after),
    );
    let late = merged(batches.iter().filter(|b| b.started >= bound_at));
    eprintln!(
        "kill: before {before} | until the bound {window} | after the bound {after_bound} | \
         after b2 is up again {after_restart}; last failure {:?} s after the kill",
        last_failing_batch(&batches, killed_at)
    );
    assert_eq!(before.failed(), 0, "before the kill: {before}");
    assert!(
        before.count("b2") > 0,
        "b2 took traffic before the kill: {before}"
    );
    assert_eq!(
        late.failed(),
        0,
        "no request fails later than {:?} after the kill (last failing batch ended {:?} s \
         after it): {late}\n{log}",
        down_bound(),
        last_failing_batch(&batches, killed_at)
    );
    assert!(
        after_bound.total() >= 4 * BATCH,
        "traffic ran between the bound and the restart: {after_bound}"
    );
    assert_eq!(
        after_bound.count("b1") + after_bound.count("b3"),
        after_bound.total(),
        "{after_bound}"
    );
    assert_eq!(
        flows.0, flows.1,
        "the data plane sent no new flow to the dead b2 between the bound and the restart \
         (new_flows {} at the bound, {} at the restart)",
        flows.0, flows.1
    );
    assert!(
        up_after <= up_bound() + Duration::from_millis(500),
        "b2 came back after {up_after:?}, bound {:?}",
        up_bound()
    );
    assert!(
        after_restart.total() >= 5 * BATCH
            && after_restart.count("b2") >= after_restart.total() / 5,
        "the restarted b2 takes its share of new connections again: {after_restart}"
    );
    let restarted = restarted.expect("b2 restarted");
    assert!(
        from_client(&restarted, topo.client_addr()) > 0,
        "the restarted b2 saw client connections"
    );
    // Each transition logged once.
    let down_lines = log
        .lines()
        .filter(|l| l.contains(&format!("backend {b2} of listener web is down")))
        .count();
    let up_lines = log
        .lines()
        .filter(|l| l.contains(&format!("backend {b2} of listener web is up")))
        .count();
    assert_eq!(
        (down_lines, up_lines),
        (1, 1),
        "one log line per change:\n{log}"
    );
}

/// An HTTP health check (`GET /healthz`, 2xx and 3xx accepted): a backend answering 503
/// is marked down within the bound, shown with the probe's reason, and gets no request;
/// answering 200 again, it is marked up and takes requests again.
#[test]
fn http_backend_answering_503_is_marked_down_and_200_brings_it_back() {
    let Some((topo, daemon, backends)) = setup(
        "h503",
        &format!(
            "vserver_groups:\n  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B2}, port: 8080 }}\n      - {{ address: {B3}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, health_check: {{ type: http, {TIMINGS}, http: {{ method: get, path: /healthz }} }} }}\n"
        ),
    ) else {
        return;
    };
    let b1 = backend_status(&daemon.status(), "web", B1, 8080);
    assert!(is_up(&b1), "a backend starts healthy: {b1}");

    backends[0].set_status(503);
    let (took, b1) = wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), is_down)
        .unwrap_or_else(|b| panic!("b1 answers 503 for 15 s and is not down: {b:#}"));
    eprintln!("503: b1 down after {took:?}: {b1}");
    assert!(
        took <= down_bound() + Duration::from_millis(500),
        "b1 marked down after {took:?}, bound {:?}",
        down_bound()
    );
    let reason = b1["last_probe"].as_str().unwrap_or_default();
    assert!(
        reason.contains("503"),
        "status names the probe's reason (status 503), got {:?}: {b1}",
        b1["last_probe"]
    );
    assert!(
        b1["since_change_s"].as_u64().is_some_and(|s| s <= 2),
        "the time of the change is shown: {b1}"
    );
    // The human-readable status shows it too.
    let text = daemon.ctl_ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{B1}:8080")))
        .unwrap_or_else(|| panic!("b1 in `lb-ctl status`:\n{text}"));
    assert!(
        line.contains("down") && line.contains("503"),
        "`lb-ctl status` shows b1 down with status 503: {line:?}"
    );

    // Users: every request answered 200, none by b1 (which would answer 503).
    let tally = all_answered(topo.client(), &url(80), 90, None, 4, "no request fails");
    assert_eq!(tally.count("b1"), 0, "b1 gets no request: {tally}");

    backends[0].set_status(200);
    let (took, b1) = wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), is_up)
        .unwrap_or_else(|b| panic!("b1 answers 200 for 15 s and is not up: {b:#}"));
    eprintln!("200: b1 up after {took:?}: {b1}");
    assert!(
        took <= up_bound() + Duration::from_millis(500),
        "b1 marked up after {took:?}, bound {:?}",
        up_bound()
    );
    assert_eq!(b1["last_probe"], "ok", "{b1}");
    let tally = all_answered(
        topo.client(),
        &url(80),
        90,
        None,
        4,
        "every request answered",
    );
    assert!(tally.count("b1") >= 20, "b1 takes its share again: {tally}");
    let log = plain_log(&daemon);
    let down = format!("backend {B1}:8080 of listener web is down");
    assert_eq!(
        log.lines().filter(|l| l.contains(&down)).count(),
        1,
        "the change is logged once:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(&down) && l.contains("503")),
        "the log names the reason:\n{log}"
    );
}

/// A UDP socket bound once inside `ns` (so all its datagrams are one flow), to `peer`.
struct UdpFlow {
    socket: UdpSocket,
    peer: SocketAddr,
}

impl UdpFlow {
    fn open(ns: &Netns, peer: SocketAddr) -> UdpFlow {
        let socket = ns
            .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .expect("binding a UDP socket in the client namespace");
        UdpFlow { socket, peer }
    }

    /// Sends `payload` and returns the reply (`NAME payload`), or `Err` after `timeout`.
    /// Stale replies to earlier payloads are skipped.
    fn request(&self, payload: &str, timeout: Duration) -> Result<String, String> {
        self.socket
            .send_to(payload.as_bytes(), self.peer)
            .map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no reply to {payload:?} within {timeout:?}"));
            }
            self.socket
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let reply = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
                    if from != self.peer {
                        return Err(format!("reply {reply:?} from {from}, not {}", self.peer));
                    }
                    if reply.ends_with(&format!(" {payload}")) {
                        return Ok(reply);
                    }
                }
                Err(e) => return Err(format!("no reply to {payload:?}: {e}")),
            }
        }
    }
}

fn who(reply: &Result<String, String>) -> &str {
    match reply {
        Ok(r) => r.split_whitespace().next().unwrap_or(""),
        Err(_) => "failed",
    }
}

/// A primary/secondary UDP group with a UDP health check (request `ping`, expect `ping`):
/// the primary stops answering → within the bound new flows and the running flow are
/// answered by the secondary; the primary answers again → new flows and the running flow
/// go back to it. The secondary is not probed.
#[test]
fn udp_primary_secondary_fails_over_and_back() {
    let Some((topo, daemon, backends)) = setup(
        "hudp",
        &format!(
            "primary_secondary_groups:\n  - name: dns\n    primary: {{ address: {B1}, port: 5353 }}\n    secondary: {{ address: {B2}, port: 5353 }}\nlisteners:\n  - {{ name: dns, protocol: udp, address: 198.19.0.100, port: 53, server_group: dns, health_check: {{ type: udp, {TIMINGS}, udp: {{ request: ping, expect: ping }} }} }}\n"
        ),
    ) else {
        return;
    };
    let vip: SocketAddr = (VIP, 53).into();
    let client = topo.client();
    let short = Duration::from_millis(300);
    let status = daemon.status();
    let secondary = backend_status(&status, "dns", B2, 5353);
    assert_eq!(secondary["role"], "secondary", "{secondary}");
    assert_eq!(
        secondary["probed"], false,
        "the secondary is not probed: {secondary}"
    );
    let primary = backend_status(&status, "dns", B1, 5353);
    assert_eq!(primary["probed"], true, "{primary}");

    let flow = UdpFlow::open(client, vip);
    for i in 0..10 {
        let new = udp_request(client, vip, &format!("n{i}"), None, Duration::from_secs(1));
        assert_eq!(
            who(&new.map_err(|e| e.to_string())),
            "b1",
            "new flow {i} → primary"
        );
        assert_eq!(
            who(&flow.request(&format!("f{i}"), Duration::from_secs(1))),
            "b1"
        );
    }

    // Failover: the primary drops every datagram (its probes time out).
    backends[0].set_udp(false);
    let t0 = Instant::now();
    let mut log = Vec::new(); // (seconds after t0, new flow's answerer, running flow's)
    let mut i = 0;
    while t0.elapsed() < down_bound() + Duration::from_secs(3) {
        let at = t0.elapsed();
        let new =
            udp_request(client, vip, &format!("a{i}"), None, short).map_err(|e| e.to_string());
        let run = flow.request(&format!("r{i}"), short);
        log.push((at, who(&new).to_owned(), who(&run).to_owned()));
        i += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let first_b2 = log.iter().find(|(_, n, _)| n == "b2").map(|(t, ..)| *t);
    eprintln!(
        "failover: first answer from b2 after {first_b2:?}; {} exchanges",
        log.len()
    );
    let late: Vec<_> = log.iter().filter(|(t, ..)| *t >= down_bound()).collect();
    assert!(late.len() >= 5, "exchanges after the bound: {log:?}");
    for (t, new, run) in &late {
        assert!(
            new == "b2" && run == "b2",
            "{t:?} after the primary stopped answering (bound {:?}), the secondary answers \
             new flows and the running flow; got new {new}, running {run}\nall: {log:?}\n{}",
            down_bound(),
            plain_log(&daemon)
        );
    }
    let b1 = backend_status(&daemon.status(), "dns", B1, 5353);
    assert!(is_down(&b1), "primary shown down: {b1}");
    let reason = b1["last_probe"].as_str().unwrap_or_default();
    assert!(
        reason.contains("timeout") || reason.contains("timed out"),
        "the reason is a timeout: {b1}"
    );

    // Failback: the primary answers again.
    backends[0].set_udp(true);
    let t1 = Instant::now();
    let mut log = Vec::new();
    let mut i = 0;
    while t1.elapsed() < up_bound() + Duration::from_secs(3) {
        let at = t1.elapsed();
        let new =
            udp_request(client, vip, &format!("b{i}"), None, short).map_err(|e| e.to_string());
        let run = flow.request(&format!("s{i}"), short);
        log.push((at, who(&new).to_owned(), who(&run).to_owned()));
        i += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let failures: Vec<_> = log
        .iter()
        .filter(|(_, n, r)| n == "failed" || r == "failed")
        .collect();
    assert!(
        failures.is_empty(),
        "nothing fails during the failback (the secondary answers until the primary is \
         back): {failures:?}"
    );
    let late: Vec<_> = log.iter().filter(|(t, ..)| *t >= up_bound()).collect();
    assert!(late.len() >= 5, "exchanges after the bound: {log:?}");
    for (t, new, run) in &late {
        assert!(
            new == "b1" && run == "b1",
            "{t:?} after the primary came back (bound {:?}), new flows and the running UDP \
             flow go back to it; got new {new}, running {run}\nall: {log:?}",
            up_bound()
        );
    }
    let b1 = backend_status(&daemon.status(), "dns", B1, 5353);
    assert!(is_up(&b1), "primary shown up: {b1}");
}

/// The failure-detection bound of the default check (interval 2 s, timeout 5 s, both
/// thresholds 3) for probes that fail at once, as an ICMP port unreachable makes them:
/// interval × unhealthy_threshold, plus a timeout and an interval of slack.
fn default_down_bound() -> Duration {
    Duration::from_secs(2 * 3 + 5 + 2)
}

/// A UDP listener without `health_check`, in front of backends that serve UDP only (no
/// TCP port open): it gets a UDP check, so the backends stay up and every request is
/// answered; a backend whose UDP service stops is marked down (its port answers ICMP port
/// unreachable) and gets no more requests, and comes back when it serves again.
#[test]
fn udp_listener_without_a_health_check_is_checked_with_udp() {
    let Some((topo, daemon, mut backends)) = setup_serving(
        "hudd",
        None,
        &format!(
            "vserver_groups:\n  - name: dns\n    servers:\n      - {{ address: {B1}, port: {UDP_PORT} }}\n      - {{ address: {B2}, port: {UDP_PORT} }}\nlisteners:\n  - {{ name: dns, protocol: udp, address: 198.19.0.100, port: 53, server_group: dns, scheduler: rr }}\n"
        ),
    ) else {
        return;
    };
    let vip: SocketAddr = (VIP, 53).into();
    let client = topo.client();
    let requests = |tag: &str| {
        let results = udp_many(client, vip, tag, 20, None, Duration::from_secs(2));
        Tally::of(&results)
    };

    // Long enough for a check that fails every probe (a TCP one: nothing listens on TCP)
    // to have marked both backends down.
    thread::sleep(default_down_bound());
    let status = daemon.status();
    for addr in [B1, B2] {
        let b = backend_status(&status, "dns", addr, UDP_PORT);
        assert!(
            is_up(&b) && b["probed"] == true && b["last_probe"] == "ok",
            "{addr} probed and up: {b}\n{}",
            plain_log(&daemon)
        );
    }
    let tally = requests("before");
    println!("both up: {tally}");
    assert_eq!(tally.failed(), 0, "every request answered: {tally}");
    assert!(tally.count("b1") > 0 && tally.count("b2") > 0, "{tally}");

    // b2's UDP service stops: its port answers ICMP port unreachable.
    kill_backend(&mut backends[1]);
    let (took, b2) = wait_backend(&daemon, "dns", B2, UDP_PORT, default_down_bound(), is_down)
        .unwrap_or_else(|b| {
            panic!(
                "b2 not marked down within {:?}: {b}\n{}",
                default_down_bound(),
                plain_log(&daemon)
            )
        });
    println!("b2 down after {took:?}: {b2}");
    assert_eq!(b2["last_probe"], "refused", "{b2}");
    let tally = requests("b2-down");
    println!("b2 down: {tally}");
    assert_eq!(
        (tally.count("b1"), tally.failed()),
        (20, 0),
        "every request answered by b1: {tally}"
    );

    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, UDP_PORT));
    backends[1] = Backend::start(topo.backend(2), "b2", &[], &[any]);
    let (took, _) = wait_backend(&daemon, "dns", B2, UDP_PORT, default_down_bound(), is_up)
        .unwrap_or_else(|b| panic!("b2 not back up: {b}\n{}", plain_log(&daemon)));
    println!("b2 up again after {took:?}");
    let tally = requests("b2-up");
    println!("b2 up again: {tally}");
    assert_eq!(tally.failed(), 0, "{tally}");
    assert!(tally.count("b2") > 0, "b2 answers again: {tally}");
}

/// The same failover for TCP with curl: primary/secondary group, TCP health check, steady
/// traffic. The primary's server stops → after the bound every connection is answered by
/// the secondary; it starts again → new connections go back to the primary, while a
/// long-lived connection opened on the secondary is left to finish.
#[test]
fn tcp_primary_secondary_fails_over_and_back_under_traffic() {
    let Some((topo, daemon, mut backends)) = setup(
        "htcp",
        &format!(
            "primary_secondary_groups:\n  - name: web\n    primary: {{ address: {B1}, port: 8080 }}\n    secondary: {{ address: {B2}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: web, health_check: {{ type: tcp, {TIMINGS} }} }}\n"
        ),
    ) else {
        return;
    };
    let steady = steady();
    let url = url(80);
    let mut primary_again = None;
    let mut stream = None;
    let (batches, stopping_at, stopped_at, restarted_at) = thread::scope(|s| {
        let traffic = s.spawn(|| steady.run(topo.client(), &url));
        let _stop = steady.stop_on_drop();
        steady.wait(5, Duration::from_secs(1));
        // Requests in flight while the server shuts down may fail and still end before
        // stop() returns: "before" is what ended before the stop began.
        let stopping_at = Instant::now();
        backends[0].stop();
        let stopped_at = Instant::now();
        steady.wait(10, down_bound() + Duration::from_secs(2));
        // A long-lived connection on the secondary, across the failback.
        let long = LongStream::start(topo.client(), 80, 8);
        assert_eq!(
            long.backend(),
            "b2",
            "during failover the stream is on the secondary"
        );
        stream = Some(long);
        primary_again = Some(restart_backend(&topo, 1));
        let restarted_at = Instant::now();
        steady.wait(10, up_bound() + Duration::from_secs(2));
        drop(_stop);
        (
            traffic.join().expect("traffic thread"),
            stopping_at,
            stopped_at,
            restarted_at,
        )
    });
    let before = merged(batches.iter().filter(|b| b.ended < stopping_at));
    let failed_over = merged(
        batches
            .iter()
            .filter(|b| b.started >= stopped_at + down_bound() && b.ended < restarted_at),
    );
    let back = merged(
        batches
            .iter()
            .filter(|b| b.started >= restarted_at + up_bound()),
    );
    let late = merged(
        batches
            .iter()
            .filter(|b| b.started >= stopped_at + down_bound()),
    );
    eprintln!(
        "tcp failover: before {before} | failed over {failed_over} | failed back {back}; last \
         failure {:?} s after the stop",
        last_failing_batch(&batches, stopped_at)
    );
    assert_eq!(before.failed(), 0, "{before}");
    assert_eq!(
        before.count("b1"),
        before.total(),
        "the primary takes all: {before}"
    );
    assert_eq!(
        late.failed(),
        0,
        "no request fails later than {:?} after the primary stopped: {late}\n{}",
        down_bound(),
        plain_log(&daemon)
    );
    assert!(failed_over.total() >= 4 * BATCH, "{failed_over}");
    assert_eq!(
        failed_over.count("b2"),
        failed_over.total(),
        "the secondary takes all while the primary is down: {failed_over}"
    );
    assert!(back.total() >= 4 * BATCH, "{back}");
    assert_eq!(
        back.count("b1"),
        back.total(),
        "new connections go back to the primary: {back}"
    );
    assert_eq!(
        stream.expect("stream").finish(),
        "b2",
        "the established connection on the secondary finished undisturbed"
    );
    let primary = primary_again.expect("primary restarted");
    assert!(from_client(&primary, topo.client_addr()) > 0);
}

/// Weight 0 on a healthy backend: it is still probed (HTTP probes keep reaching it from
/// the LB's address; an HTTP check because TCP probes close with a RST before the test
/// backend can read their source address), shown as draining with health up, and gets no client connection; when
/// it dies it is shown down, which only running probes can tell.
#[test]
fn weight_zero_backend_keeps_being_probed_and_shown_draining() {
    let Some((topo, daemon, mut backends)) = setup(
        "hw0",
        &format!(
            "vserver_groups:\n  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B2}, port: 8080 }}\n      - {{ address: {B3}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, health_check: {{ type: http, {TIMINGS}, http: {{ path: /healthz }} }} }}\n"
        ),
    ) else {
        return;
    };
    daemon.ctl_ok(&[
        "server",
        "set",
        "--group",
        "app",
        &format!("{B3}:8080"),
        "--weight",
        "0",
    ]);
    let probes = |b: &Backend| {
        b.peers()
            .get(&IpAddr::V4(LB_BACKEND_ADDR))
            .copied()
            .unwrap_or(0)
    };
    let probes_before = probes(&backends[2]);
    let client_before = from_client(&backends[2], topo.client_addr());
    let tally = Tally::of(&curl_many(topo.client(), &url(80), 120, None, 4));
    thread::sleep(Duration::from_millis(3500));
    let probes_after = probes(&backends[2]);
    assert_eq!(tally.failed(), 0, "{tally}");
    assert_eq!(
        tally.count("b3"),
        0,
        "weight 0 takes no new connection: {tally}"
    );
    assert_eq!(from_client(&backends[2], topo.client_addr()), client_before);
    assert!(
        probes_after >= probes_before + 3,
        "b3 at weight 0 is still probed from {LB_BACKEND_ADDR}: {probes_before} → \
         {probes_after} probe connections"
    );
    let b3 = backend_status(&daemon.status(), "web", B3, 8080);
    assert_eq!(b3["weight"], 0, "{b3}");
    assert_eq!(b3["state"], "draining", "weight 0 shows as draining: {b3}");
    assert_eq!(b3["health"], "up", "{b3}");
    assert_eq!(b3["probed"], true, "{b3}");
    assert_eq!(b3["last_probe"], "ok", "{b3}");

    kill_backend(&mut backends[2]);
    let (took, b3) = wait_backend(&daemon, "web", B3, 8080, Duration::from_secs(15), |b| {
        b["health"] == "down"
    })
    .unwrap_or_else(|b| panic!("b3 at weight 0, killed, not shown down after 15 s: {b:#}"));
    assert!(
        took <= down_bound() + Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(
        b3["state"], "down",
        "a dead weight-0 backend shows down: {b3}"
    );
}

/// Flap damping: with `max_flaps: 1`, a backend that goes down and comes back within the
/// window is held down (shown in status with `held_down_s`), gets no traffic while held,
/// although its probes succeed.
#[test]
fn flapping_backend_is_held_down_and_status_shows_it() {
    let Some((topo, daemon, backends)) = setup(
        "hflp",
        &format!(
            "vserver_groups:\n  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B2}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, health_check: {{ type: http, {TIMINGS}, http: {{ path: /healthz }}, flap_damping: {{ max_flaps: 1, window: 60, hold: 30 }} }} }}\n"
        ),
    ) else {
        return;
    };
    backends[0].set_status(503);
    let (_, b1) = wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), is_down)
        .unwrap_or_else(|b| panic!("b1 not down: {b:#}"));
    assert_eq!(b1["flaps"], 1, "one change within the window: {b1}");
    assert!(b1["held_down_s"].is_null(), "not held yet: {b1}");
    backends[0].set_status(200);
    // Two successful probes would bring it up; damping holds it down instead.
    let (took, b1) = wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), |b| {
        b["held_down_s"].as_u64().is_some_and(|s| s > 0)
    })
    .unwrap_or_else(|b| {
        panic!(
            "b1 flapped (down, then healthy probes) but no hold-down is shown: {b:#}\n{}",
            plain_log(&daemon)
        )
    });
    eprintln!("held down {took:?} after answering 200: {b1}");
    let held = b1["held_down_s"].as_u64().unwrap();
    assert!((20..=30).contains(&held), "hold of 30 s shown: {b1}");
    thread::sleep(Duration::from_secs(2));
    let b1 = backend_status(&daemon.status(), "web", B1, 8080);
    assert!(is_down(&b1), "held down while its probes pass: {b1}");
    assert_eq!(b1["last_probe"], "ok", "{b1}");
    let tally = all_answered(
        topo.client(),
        &url(80),
        40,
        None,
        4,
        "every request answered",
    );
    assert_eq!(
        tally.count("b1"),
        0,
        "a held-down backend gets no traffic: {tally}"
    );
    let log = plain_log(&daemon);
    assert!(
        log.contains("held down"),
        "the daemon logs the hold:\n{log}"
    );
}

/// Slow start: a recovered backend comes back with an effective weight below its weight,
/// rising over `slow_start` seconds, and takes a small share of new connections at first.
#[test]
fn recovered_backend_ramps_up_with_slow_start() {
    let Some((topo, daemon, backends)) = setup(
        "hslo",
        &format!(
            "vserver_groups:\n  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B2}, port: 8080 }}\n      - {{ address: {B3}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, slow_start: 60, health_check: {{ type: http, {TIMINGS}, http: {{ path: /healthz }} }} }}\n"
        ),
    ) else {
        return;
    };
    let b1 = backend_status(&daemon.status(), "web", B1, 8080);
    assert_eq!(b1["effective_weight"], 100, "no ramp at start-up: {b1}");
    backends[0].set_status(503);
    wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), is_down)
        .unwrap_or_else(|b| panic!("b1 not down: {b:#}"));
    backends[0].set_status(200);
    let (_, b1) = wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), is_up)
        .unwrap_or_else(|b| panic!("b1 not up: {b:#}"));
    let first = b1["effective_weight"].as_u64().expect("effective_weight");
    assert!(
        (1..=10).contains(&first),
        "right after recovery the effective weight is low (1..=10 of 100): {b1}"
    );
    let tally = all_answered(
        topo.client(),
        &url(80),
        150,
        None,
        4,
        "every request answered",
    );
    assert!(
        tally.count("b1") <= 15,
        "the ramping backend takes a small share (≤ 10 %): {tally}"
    );
    thread::sleep(Duration::from_secs(3));
    let b1 = backend_status(&daemon.status(), "web", B1, 8080);
    let later = b1["effective_weight"].as_u64().expect("effective_weight");
    assert!(
        later > first && later < 100,
        "the effective weight rises: {first} → {later}: {b1}"
    );
    assert_eq!(b1["weight"], 100, "{b1}");
}

/// Connections refused by a dead backend (SYN answered by a RST from the backend) are not
/// active flows: `status` shows none on it, and `wait drained` returns at once. An active
/// flow is a flow entry with no FIN/RST seen (`lb_common::select::is_active`); the LB
/// translated that RST.
#[test]
fn connections_refused_by_a_dead_backend_are_not_active_flows() {
    let Some((topo, daemon, mut backends)) = setup(
        "hrst",
        &format!(
            "vserver_groups:\n  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B2}, port: 8080 }}\nlisteners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: rr, health_check: {{ type: none }} }}\n"
        ),
    ) else {
        return;
    };
    // No health check: the dead b2 stays in the tables and refuses its share.
    backends[1].stop();
    let options = BulkOptions {
        max_time: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(20),
    };
    let results = curl_many_with(topo.client(), &url(80), 40, None, 1, &options);
    let tally = Tally::of(&results);
    assert!(
        tally.failed() >= 10 && tally.count("b1") >= 10,
        "about half refused by b2: {tally}"
    );
    assert!(
        tally
            .failures
            .iter()
            .all(|f| f.contains("Couldn't connect") || f.contains("refused")),
        "refused, not timed out: {tally}"
    );
    // The flow table is swept every second.
    thread::sleep(Duration::from_millis(2500));
    let b2 = backend_status(&daemon.status(), "web", B2, 8080);
    let b1 = backend_status(&daemon.status(), "web", B1, 8080);
    assert_eq!(
        (b1["active_flows"].as_u64(), b2["active_flows"].as_u64()),
        (Some(0), Some(0)),
        "no connection is open: b1 closed every one (FIN), b2 refused {} (RST from b2); \
         b1 {b1}\nb2 {b2}",
        tally.failed()
    );
    let args = [
        "wait",
        "drained",
        "--group",
        "app",
        "198.18.1.12:8080",
        "--timeout",
        "3",
    ];
    let out = daemon.ctl(&args);
    assert!(
        out.status.success(),
        "lb-ctl {args:?}: a server with no open connection is drained: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
}

/// Backends that accept connections and never answer hold one probe each, not one per
/// interval until the timeout: with 100 such targets (a group of 20, on five listeners)
/// probed every second with a 300 s timeout, a probe per round would fill the checker's
/// 1024 probe slots within 11 s. A backend killed after that is still marked down within
/// its own bound.
#[test]
fn backends_that_never_answer_do_not_delay_another_backends_failure() {
    const HUNG: u16 = 20;
    const HUNG_LISTENERS: u16 = 5;
    const HUNG_TIMEOUT: u64 = 300;
    let first_port = 9001;
    let servers: String = (0..HUNG)
        .map(|i| format!("      - {{ address: {B2}, port: {} }}\n", first_port + i))
        .collect();
    // `/slow?ms=600000` is answered after ten minutes: never, within the timeout.
    let check = |path: &str| {
        format!(
            "health_check: {{ type: http, interval: {INTERVAL}, timeout: {HUNG_TIMEOUT}, \
             healthy_threshold: {HEALTHY_THRESHOLD}, unhealthy_threshold: {UNHEALTHY_THRESHOLD}, \
             http: {{ path: \"{path}\" }} }}"
        )
    };
    let mut listeners = String::new();
    for i in 0..HUNG_LISTENERS {
        listeners.push_str(&format!(
            "  - {{ name: hung{i}, protocol: tcp, address: 198.19.0.100, port: {}, server_group: hung, {} }}\n",
            81 + i,
            check("/slow?ms=600000")
        ));
    }
    listeners.push_str(&format!(
        "  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, {} }}\n",
        check("/")
    ));
    let Some((topo, daemon, mut backends)) = setup(
        "hhung",
        &format!(
            "vserver_groups:\n  - name: hung\n    servers:\n{servers}  - name: app\n    servers:\n      - {{ address: {B1}, port: 8080 }}\n      - {{ address: {B3}, port: 8080 }}\nlisteners:\n{listeners}"
        ),
    ) else {
        return;
    };
    let any = |port: u16| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let hung_addrs: Vec<SocketAddr> = (0..HUNG).map(|i| any(first_port + i)).collect();
    let _hung = Backend::start(topo.backend(2), "hung", &hung_addrs, &[]);

    // Long enough for probes started every round to take every slot, with jitter.
    let targets = f64::from(HUNG * HUNG_LISTENERS);
    let fill = lb_ctl::health::DEFAULT_MAX_IN_FLIGHT as f64 / targets * INTERVAL as f64;
    thread::sleep(Duration::from_secs_f64(fill * 1.1 + 2.0));
    let b1 = backend_status(&daemon.status(), "web", B1, 8080);
    assert!(is_up(&b1), "b1 serves: {b1}");

    let killed_at = Instant::now();
    kill_backend(&mut backends[0]);
    // Its own bound: a refused probe fails at once, so unhealthy_threshold rounds, plus
    // one interval for the round under way and its jitter.
    let bound = Duration::from_secs(INTERVAL * UNHEALTHY_THRESHOLD + INTERVAL);
    let down = wait_backend(&daemon, "web", B1, 8080, Duration::from_secs(15), is_down);
    let after_kill = killed_at.elapsed();
    let (_, b) = down.unwrap_or_else(|b| {
        panic!(
            "b1 killed 15 s ago is still not down: {b:#}\n{}",
            plain_log(&daemon)
        )
    });
    eprintln!("b1 marked down {after_kill:?} after the kill: {b}");
    // One more second for polling `lb-ctl status`.
    assert!(
        after_kill <= bound + Duration::from_secs(1),
        "b1 down only {after_kill:?} after the kill, bound {bound:?}"
    );
    assert_eq!(b["last_probe"], "refused", "{b}");
}
