//! Robustness of the daemon and the CLI: a flow table smaller than the traffic (LRU
//! eviction under a SYN flood, measured), broken configs and CLI input refused with their
//! path and a hint, control-socket permissions and refusals, the state file across a
//! crash mid-write and corruption, and faults under a running daemon (an interface
//! removed, bpffs missing, pinned maps of another layout, a backend neighbour unknown).
//!
//! Topology (see `lb_tests::topology`): a client, the LB running `lb-ctl daemon`, backends
//! b1.. (198.18.1.11..) serving HTTP on 8080; the VIP is 198.19.0.100.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddrV4, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    ChildGuard, LbDaemon, Netns, Tally, Topology, TopologyOptions, VIP, all_answered, bin_path,
    client::TempDir, curl_many, flood::syn_flood, require_root_and_bpf,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} → {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout).trim_end(),
        text(&out.stderr).trim_end()
    )
}

/// The usual config header for a topology, with the given flow table size.
fn header(topo: &Topology, flow_table_size: u32) -> String {
    format!(
        "instance: {}i\ninterfaces: [{}, {}]\nflow_table_size: {flow_table_size}\nmax_listeners: 8\nmax_backends: 256\n",
        topo.prefix(),
        topo.lb_client_if(),
        topo.lb_backend_if()
    )
}

fn instance(topo: &Topology) -> String {
    format!("{}i", topo.prefix())
}

fn web_config(n: usize, extra_listener_options: &str) -> String {
    lb_tests::web_config(n, HTTP_PORT, extra_listener_options)
}

/// A topology of `n` backends serving HTTP, neighbours pinned, and a daemon.
fn setup(tag: &str, n: usize, flow_table_size: u32, body: &str) -> Option<(Topology, LbDaemon)> {
    setup_with(tag, n, flow_table_size, body, TopologyOptions::default())
}

fn setup_with(
    tag: &str,
    n: usize,
    flow_table_size: u32,
    body: &str,
    options: TopologyOptions,
) -> Option<(Topology, LbDaemon)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(tag, n, options);
    topo.pin_neighbors();
    let daemon = LbDaemon::start(
        topo.lb(),
        &instance(&topo),
        &format!("{}{body}", header(&topo, flow_table_size)),
    );
    Some((topo, daemon))
}

fn start_backends(topo: &Topology) -> Vec<lb_tests::Backend> {
    topo.start_backends(Some(HTTP_PORT), None)
}

fn url() -> String {
    format!("http://{VIP}:80/")
}

/// `lb-ctl daemon` started by hand (the cases `LbDaemon` cannot express: extra flags,
/// a start that must fail).
struct ManualDaemon {
    config: PathBuf,
    state_dir: PathBuf,
    socket: PathBuf,
    netns: String,
    extra: Vec<String>,
}

impl ManualDaemon {
    fn command(&self) -> Command {
        let mut cmd = Command::new(bin_path("lb-ctl"));
        cmd.env("LB_LOG", "info")
            .arg("--socket")
            .arg(&self.socket)
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--netns")
            .arg(&self.netns)
            .args(&self.extra);
        cmd
    }

    /// Starts it and expects it to exit non-zero within 30 s; returns its output.
    fn refused(&self) -> Output {
        let mut child = ChildGuard::spawn(self.command());
        let out = child
            .wait_output(Duration::from_secs(30))
            .unwrap_or_else(|| {
                let log = child.stderr();
                child.stop();
                panic!("the daemon should have refused to start, but runs:\n{log}")
            });
        assert!(
            !out.status.success(),
            "{}",
            describe("lb-ctl daemon (expected to refuse)", &out)
        );
        out
    }

    /// Starts it and waits until `status` answers; panics with its log otherwise.
    fn start(&self) -> ChildGuard {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it and waits until `status` answers; `Err` with its log if it exits first.
    fn try_start(&self) -> Result<ChildGuard, String> {
        let mut child = ChildGuard::spawn(self.command());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ctl(&self.socket, &["status", "--json"]).status.success() {
                return Ok(child);
            }
            if let Some(status) = child.try_status() {
                return Err(format!(
                    "lb-ctl daemon exited with {status}:\n{}",
                    child.stderr()
                ));
            }
            if Instant::now() >= deadline {
                let log = child.stderr();
                child.stop();
                return Err(format!("daemon not ready after 30 s:\n{log}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin_path("lb-ctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running lb-ctl {args:?}: {e}"))
}

fn teardown(instance: &str) -> Output {
    Command::new(bin_path("lb-ctl"))
        .args(["teardown", "--instance", instance])
        .output()
        .expect("running lb-ctl teardown")
}

fn stats_json(daemon: &LbDaemon) -> Value {
    let text = daemon.ctl_ok(&["stats", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON: {e}\n{text}"))
}

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name].as_u64().unwrap_or(0)
}

/// What `status` says about the maps, without counters or probe timings.
fn status_shape(status: &Value) -> Value {
    let listeners: Vec<Value> = status["listeners"]
        .as_array()
        .expect("listeners array")
        .iter()
        .map(|l| {
            let backends: Vec<Value> = l["backends"]
                .as_array()
                .expect("backends array")
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "address": b["address"], "port": b["port"], "role": b["role"],
                        "weight": b["weight"], "state": b["state"], "origin": b["origin"],
                        "backend_id": b["backend_id"],
                    })
                })
                .collect();
            serde_json::json!({
                "name": l["name"], "protocol": l["protocol"], "address": l["address"],
                "port": l["port"], "group": l["group"], "scheduler": l["scheduler"],
                "backends": backends,
            })
        })
        .collect();
    serde_json::json!({
        "listeners": listeners,
        "overlay_changes": status["overlay_changes"],
        "conflicts": status["conflicts"],
    })
}

// ---------------------------------------------------------------------------------------
// 1. Flow table exhaustion

/// One long-lived HTTP/1.0 stream read line by line with arrival times.
#[derive(Debug, Default)]
struct StreamLog {
    backend: String,
    /// (line number the backend wrote, arrival since the common start).
    lines: Vec<(u64, Duration)>,
    error: Option<String>,
}

/// `GET /stream?seconds=N` from `ns` to VIP:80 over one TCP connection (a line `NAME i`
/// every 100 ms), timestamping every line.
fn read_stream(ns: &Netns, seconds: u64, t0: Instant) -> StreamLog {
    ns.enter(|| {
        let mut log = StreamLog::default();
        let result = (|| -> std::io::Result<()> {
            let addr = SocketAddrV4::new(VIP, 80).into();
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                stream,
                "GET /stream?seconds={seconds} HTTP/1.0\r\nHost: {VIP}\r\n\r\n"
            )?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            // Status line and headers.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Err(std::io::Error::other("closed before the body"));
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
            }
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let at = t0.elapsed();
                let mut words = line.split_whitespace();
                let (Some(name), Some(i)) = (words.next(), words.next()) else {
                    return Err(std::io::Error::other(format!("odd line {line:?}")));
                };
                if log.backend.is_empty() {
                    log.backend = name.to_owned();
                } else if log.backend != name {
                    return Err(std::io::Error::other(format!(
                        "line from {name} in a stream of {}",
                        log.backend
                    )));
                }
                let i: u64 = i
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("odd line {line:?}")))?;
                log.lines.push((i, at));
            }
        })();
        if let Err(e) = result {
            log.error = Some(e.to_string());
        }
        log
    })
}

/// How a stream fared: lines missing, lines later than 250 ms after the previous one
/// (they come every 100 ms), the longest gap; the delayed ones within `window` counted
/// apart.
struct StreamEffect {
    expected: u64,
    received: usize,
    delayed: usize,
    delayed_in_window: usize,
    max_gap: Duration,
}

fn effect(log: &StreamLog, seconds: u64, window: (Duration, Duration)) -> StreamEffect {
    let mut delayed = 0;
    let mut delayed_in_window = 0;
    let mut max_gap = Duration::ZERO;
    for pair in log.lines.windows(2) {
        let gap = pair[1].1.saturating_sub(pair[0].1);
        max_gap = max_gap.max(gap);
        if gap > Duration::from_millis(250) {
            delayed += 1;
            // Within the flood, or up to 2 s after it (what it delayed arrives late).
            if pair[1].1 >= window.0 && pair[1].1 <= window.1 + Duration::from_secs(2) {
                delayed_in_window += 1;
            }
        }
    }
    StreamEffect {
        expected: seconds * 10,
        received: log.lines.len(),
        delayed,
        delayed_in_window,
        max_gap,
    }
}

/// 1. A flow table of 1024 entries, four long-lived streams through the VIP, then a SYN
///    flood of 8192 new flows (eight times the table) from a raw socket: the streams
///    keep every line, in order, from their backend (the flood's half-open flows stay in
///    their own tables and evict nothing), new connections keep being served during and
///    after the flood, and the counters show more new flows than the table holds. The
///    delay the flood causes on the streams is measured and printed.
#[test]
fn flow_table_exhaustion_keeps_active_streams_and_forwarding() {
    // A second client address (198.18.0.10) sends the flood, so its source ports cannot
    // meet the streams' or curl's.
    let options = TopologyOptions {
        client_addresses: 1,
        ..TopologyOptions::default()
    };
    let Some((topo, daemon)) = setup_with("exh", 2, 1024, &web_config(2, ""), options) else {
        return;
    };
    let _backends = start_backends(&topo);
    all_answered(topo.client(), &url(), 20, None, 4, "before the flood");

    const STREAMS: usize = 4;
    const SECONDS: u64 = 14;
    // LB_SYN_FLOOD_SYNS and LB_SYN_FLOOD_PER_MS change the flood (to measure more).
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let syns = env("LB_SYN_FLOOD_SYNS", 8192).min(60000) as u16;
    let per_ms = env("LB_SYN_FLOOD_PER_MS", 4).max(1);
    let t0 = Instant::now();
    let window = Mutex::new((Duration::ZERO, Duration::ZERO));
    let flood_running = AtomicBool::new(false);
    let (logs, sent, during) = thread::scope(|s| {
        let streams: Vec<_> = (0..STREAMS)
            .map(|_| s.spawn(|| read_stream(topo.client(), SECONDS, t0)))
            .collect();
        // Let the streams settle (first lines in) before the flood.
        thread::sleep(Duration::from_secs(3));
        let flood = s.spawn(|| {
            flood_running.store(true, Ordering::SeqCst);
            let start = t0.elapsed();
            let sent = syn_flood(
                topo.client(),
                topo.client_addrs()[1],
                SocketAddrV4::new(VIP, 80),
                1024..1024 + syns,
                per_ms,
            );
            *window.lock().unwrap() = (start, t0.elapsed());
            flood_running.store(false, Ordering::SeqCst);
            sent
        });
        // New connections while the flood runs.
        while !flood_running.load(Ordering::SeqCst) && !flood.is_finished() {
            thread::sleep(Duration::from_millis(5));
        }
        let during = Tally::of(&curl_many(topo.client(), &url(), 40, None, 4));
        let sent = flood.join().expect("flood thread");
        let logs: Vec<StreamLog> = streams
            .into_iter()
            .map(|h| h.join().expect("stream thread"))
            .collect();
        (logs, sent, during)
    });
    let window = *window.lock().unwrap();
    let after = Tally::of(&curl_many(topo.client(), &url(), 50, None, 4));

    let stats = stats_json(&daemon);
    let web = stats["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "web"))
        .unwrap_or_else(|| panic!("no listener web in stats: {stats:#}"))
        .clone();
    let new_flows = web["stats"]["new_flows"].as_u64().unwrap_or(0);
    let pickups = web["stats"]["pickups"].as_u64().unwrap_or(0);
    let table = daemon.status()["flow_table"].clone();
    let evicted = table["evicted"].as_u64().unwrap_or(0);
    let entries = table["entries"].as_u64().unwrap_or(u64::MAX);

    let mut report = format!(
        "SYN flood: {sent} SYNs in {:.2} s ({:.0}/s) against a 1024-entry flow table; \
         status flow_table {table}; listener web: new_flows={new_flows} \
         pickups={pickups}; event_new_flow={} \
         forwarded={} reply_forwarded={} pass_not_for_us={} (replies without a reverse \
         entry)\n",
        (window.1 - window.0).as_secs_f64(),
        f64::from(sent as u32) / (window.1 - window.0).as_secs_f64().max(1e-3),
        reason(&stats, "event_new_flow"),
        reason(&stats, "forwarded"),
        reason(&stats, "reply_forwarded"),
        reason(&stats, "pass_not_for_us"),
    );
    let mut total_delayed = 0;
    let mut total_lines = 0;
    for (i, log) in logs.iter().enumerate() {
        let e = effect(log, SECONDS, window);
        total_delayed += e.delayed_in_window;
        total_lines += e.received;
        report.push_str(&format!(
            "  stream {i} ({}): {}/{} lines, {} delayed > 250 ms ({} during the flood), \
             longest gap {} ms{}\n",
            log.backend,
            e.received,
            e.expected,
            e.delayed,
            e.delayed_in_window,
            e.max_gap.as_millis(),
            log.error
                .as_ref()
                .map(|e| format!(", ERROR: {e}"))
                .unwrap_or_default()
        ));
    }
    report.push_str(&format!(
        "  effect of the flood on established streams: {total_delayed} of {total_lines} \
         lines delayed > 250 ms, 0 lost unless listed above; new connections during the \
         flood: {during}; after: {after}"
    ));
    println!("{report}");

    assert_eq!(sent, usize::from(syns), "every SYN sent\n{report}");
    for (i, log) in logs.iter().enumerate() {
        assert!(log.error.is_none(), "stream {i} broke\n{report}");
        let numbers: Vec<u64> = log.lines.iter().map(|(n, _)| *n).collect();
        let expected: Vec<u64> = (0..SECONDS * 10).collect();
        assert_eq!(
            numbers, expected,
            "stream {i}: every line, in order, from one backend\n{report}"
        );
    }
    assert!(
        new_flows > 1024 * 4,
        "the flood made far more new flows than the table holds\n{report}"
    );
    assert!(
        entries <= 1024 && evicted == 0,
        "status shows no eviction: the flood never completed a handshake, so none of its \
         flows entered the flow table\n{report}"
    );
    assert_eq!(
        pickups, 0,
        "no established stream was evicted and picked up again (LRU keeps the active \
         flows)\n{report}"
    );
    assert!(
        during.answered() >= 38,
        "new connections are served during the flood\n{report}"
    );
    assert_eq!(after.failed(), 0, "and after it\n{report}");
}

// ---------------------------------------------------------------------------------------
// 2. Bad configs

/// One broken config: its body (after the header) and what `validate` must report: the
/// number of errors and, for each, the path the line starts with and phrases it contains.
struct BadConfig {
    name: &'static str,
    /// `None`: the usual header; `Some(n)`: the header with `flow_table_size: n`.
    flow_table_size: Option<u32>,
    body: &'static str,
    errors: &'static [(&'static str, &'static [&'static str])],
}

const GROUP: &str =
    "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n";

fn bad_configs() -> Vec<BadConfig> {
    vec![
        BadConfig {
            name: "wrong type",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080, weight: heavy }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
            errors: &[(
                "vserver_groups[0].servers[0].weight",
                &["expected an integer, found the string `heavy`"],
            )],
        },
        BadConfig {
            name: "weight out of range",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080, weight: 101 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
            errors: &[(
                "vserver_groups[0].servers[0].weight",
                &["101 is not in 0..=100"],
            )],
        },
        BadConfig {
            name: "ports out of range",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 70000 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 0, server_group: app }\n",
            errors: &[
                (
                    "vserver_groups[0].servers[0].port",
                    &["70000 is not in 1..=65535"],
                ),
                ("listeners[0].port", &["0 is not in 1..=65535"]),
            ],
        },
        BadConfig {
            name: "health check thresholds out of range",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, health_check: { interval: 0, healthy_threshold: 1, unhealthy_threshold: 11 } }\n",
            errors: &[
                (
                    "listeners[0].health_check.interval",
                    &["0 is not in 1..=50"],
                ),
                (
                    "listeners[0].health_check.healthy_threshold",
                    &["1 is not in 2..=10"],
                ),
                (
                    "listeners[0].health_check.unhealthy_threshold",
                    &["11 is not in 2..=10"],
                ),
            ],
        },
        BadConfig {
            name: "timeouts out of range",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, established_timeout: 5, udp_timeout: 901, persistence_timeout: 4000 }\n",
            errors: &[
                (
                    "listeners[0].persistence_timeout",
                    &["4000 is not in 0..=3600"],
                ),
                (
                    "listeners[0].established_timeout",
                    &["5 is not in 10..=900"],
                ),
                ("listeners[0].udp_timeout", &["901 is not in 10..=900"]),
            ],
        },
        BadConfig {
            name: "flow table too small, unknown scheduler",
            flow_table_size: Some(512),
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: fastest }\n",
            errors: &[
                ("flow_table_size", &["512 is not in 1024..=67108864"]),
                (
                    "listeners[0].scheduler",
                    &[
                        "unknown scheduler `fastest`",
                        "expected one of wrr, rr, wlc, sch, tch",
                    ],
                ),
            ],
        },
        BadConfig {
            name: "duplicate names",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n  - name: app\n    servers:\n      - { address: 198.18.1.12, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app }\n",
            errors: &[
                (
                    "vserver_groups[1].name",
                    &[
                        "two server groups named `app`",
                        "vserver_groups[0] and vserver_groups[1]",
                    ],
                ),
                (
                    "listeners[1].name",
                    &["two listeners named `web`", "listeners[0] and listeners[1]"],
                ),
            ],
        },
        BadConfig {
            name: "dangling group and ACL references",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: apps }\n  - { name: api, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app, acl: { type: deny, name: blocked } }\n",
            errors: &[
                (
                    "listeners[0].server_group",
                    &["no server group named `apps`", "did you mean `app`?"],
                ),
                (
                    "listeners[1].acl.name",
                    &["no ACL named `blocked`", "define it under `acls`"],
                ),
            ],
        },
        BadConfig {
            name: "two listeners on one VIP:port:protocol",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n  - { name: web2, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
            errors: &[(
                "listeners[1]",
                &[
                    "two listeners on 198.19.0.100:80/tcp",
                    "listeners[0] and listeners[1]",
                ],
            )],
        },
        BadConfig {
            name: "primary/secondary group with three members",
            flow_table_size: None,
            body: "primary_secondary_groups:\n  - name: db\n    primary: { address: 198.18.1.11, port: 8080 }\n    secondary: { address: 198.18.1.12, port: 8080 }\n    tertiary: { address: 198.18.1.13, port: 8080 }\nlisteners:\n  - { name: db, protocol: tcp, address: 198.19.0.100, port: 80, server_group: db }\n",
            errors: &[(
                "primary_secondary_groups[0].tertiary",
                &[
                    "unknown field `tertiary`",
                    "exactly two members",
                    "use a vServer group for more servers",
                ],
            )],
        },
        BadConfig {
            name: "HTTP listener",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protocol: http, address: 198.19.0.100, port: 80, server_group: app }\n",
            errors: &[(
                "listeners[0].protocol",
                &["Layer 7", "TCP and UDP only", "use protocol: tcp"],
            )],
        },
        BadConfig {
            name: "IPv4 server for an IPv6 listener with forwarding: dsr",
            flow_table_size: None,
            body: "forwarding: dsr\nvserver_groups:\n  - name: app\n    servers:\n      - { address: \"2001:db8::11\", port: 80 }\n      - { address: 198.18.1.12, port: 80 }\nlisteners:\n  - { name: web, protocol: tcp, address: \"2001:db8::100\", port: 80, server_group: app }\n",
            // An IPv6 listener takes dsr, over IPv6 servers only: the tunnel carries the
            // client's packet unchanged.
            errors: &[(
                "vserver_groups[0].servers[1].address",
                &[
                    "198.18.1.12 is IPv4, but listener `web` using its group is IPv6",
                    "forwarding: dsr carries the client's packet unchanged",
                ],
            )],
        },
        BadConfig {
            name: "IPv6 server for an IPv4 listener",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: \"2001:db8::12\", port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
            errors: &[(
                "vserver_groups[0].servers[1].address",
                &[
                    "2001:db8::12 is IPv6, but listener `web` using its group is IPv4",
                    "a listener and its servers are of one family",
                ],
            )],
        },
        BadConfig {
            name: "unknown field",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\nlisteners:\n  - { name: web, protcol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
            errors: &[
                (
                    "listeners[0].protcol",
                    &["unknown field `protcol`", "did you mean `protocol`?"],
                ),
                ("listeners[0].protocol", &["required field is missing"]),
            ],
        },
        BadConfig {
            name: "YAML syntax error",
            flow_table_size: None,
            body: "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
            // No path: the line and column say where.
            errors: &[(
                "line 10, column 10",
                &["YAML syntax error", "did not find expected ',' or '}'"],
            )],
        },
    ]
}

/// 2. Every config of the corpus: `lb-ctl validate` exits 2 and lists each error at its
///    path with the expected words (and the hint where the product gives one); the
///    running daemon given it with `reload` refuses it and changes nothing.
#[test]
fn bad_configs_are_refused_with_path_and_hint_and_change_nothing() {
    let body = format!(
        "{GROUP}listeners:\n  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, server_group: app }}\n"
    );
    let Some((topo, daemon)) = setup("bad", 1, 65536, &body) else {
        return;
    };
    let _backends = start_backends(&topo);
    let shape = status_shape(&daemon.status());
    let export = daemon.ctl_ok(&["export"]);
    let dir = TempDir::new("badcfg");
    let corpus = bad_configs();
    assert!(corpus.len() >= 12);
    for (i, bad) in corpus.iter().enumerate() {
        let config = format!(
            "{}{}",
            header(&topo, bad.flow_table_size.unwrap_or(65536)),
            bad.body
        );
        let path = dir.path().join(format!("bad{i}.yaml"));
        fs::write(&path, &config).expect("writing a bad config");
        let arg = path.to_string_lossy().into_owned();
        let out = daemon.ctl(&["validate", &arg]);
        let what = describe(&format!("validate ({})", bad.name), &out);
        assert_eq!(out.status.code(), Some(2), "{what}");
        let report = text_of(&out);
        assert!(
            report.contains(&format!("{} error(s)", bad.errors.len())),
            "{} error(s) counted: {what}",
            bad.errors.len()
        );
        for (path, phrases) in bad.errors {
            let line = report
                .lines()
                .find(|l| l.starts_with(&format!("{path}:")))
                .unwrap_or_else(|| panic!("an error line starting with `{path}:`: {what}"));
            for phrase in *phrases {
                assert!(
                    line.contains(phrase),
                    "the line for `{path}` says {phrase:?}: {line}\n{what}"
                );
            }
        }

        daemon.write_config(&config);
        let out = daemon.ctl(&["reload"]);
        let what = describe(&format!("reload ({})", bad.name), &out);
        assert_eq!(out.status.code(), Some(2), "reload refuses it: {what}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("nothing was changed"), "{what}");
        for (path, _) in bad.errors {
            assert!(
                stderr.contains(&format!("{path}:")),
                "names `{path}`: {what}"
            );
        }
        assert_eq!(
            status_shape(&daemon.status()),
            shape,
            "status unchanged after the refused reload of {}",
            bad.name
        );
    }
    assert_eq!(daemon.ctl_ok(&["export"]), export, "export unchanged");
    let tally = Tally::of(&curl_many(topo.client(), &url(), 20, None, 4));
    assert_eq!(tally.count("b1"), 20, "traffic as before: {tally}");
    daemon.write_config(&format!("{}{body}", header(&topo, 65536)));
    let out = daemon.ctl_ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
}

fn text_of(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

// ---------------------------------------------------------------------------------------
// 3. CLI input

/// 3. Bad CLI input (addresses, ports, weights, unknown groups and listeners, missing
///    arguments, bad names): exit code 2, a message that says what was wrong and what is
///    valid, and nothing changed.
#[test]
fn cli_input_errors_exit_2_and_say_what_is_valid() {
    let Some((_topo, daemon)) = setup("cli", 1, 65536, &web_config(1, "")) else {
        return;
    };
    let export = daemon.ctl_ok(&["export"]);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["server", "add", "--group", "app", "198.18.1.300:8080"],
            &[
                "`198.18.1.300` is not an IPv4 address",
                "expected ADDR or ADDR:PORT",
            ],
        ),
        (
            &["server", "add", "--group", "app", "backend-one"],
            &[
                "`backend-one` is not an IPv4 address",
                "expected ADDR or ADDR:PORT",
            ],
        ),
        (
            &["server", "add", "--group", "app", "2001:db8::1:8080"],
            &["each name their port: use [2001:db8::1:8080]:PORT"],
        ),
        (
            &["server", "add", "--group", "app", "[2001:db8::1]:8080"],
            &["2001:db8::1 is IPv6, but listener `web` using its group is IPv4"],
        ),
        (
            &["server", "add", "--group", "app", "198.18.1.12:0"],
            &["port 0 is not in 1..=65535"],
        ),
        (
            &["server", "add", "--group", "app", "198.18.1.12:70000"],
            &["port 70000 is not in 1..=65535"],
        ),
        (
            &["server", "add", "--group", "app", "198.18.1.12:http"],
            &["`http` is not a port number (1..=65535)"],
        ),
        (
            &[
                "server",
                "set",
                "--group",
                "app",
                "198.18.1.11:8080",
                "--weight",
                "101",
            ],
            &["weight 101 is not in 0..=100"],
        ),
        (
            &[
                "server",
                "set",
                "--group",
                "app",
                "198.18.1.11:8080",
                "--weight=-1",
            ],
            &["`-1` is not a weight (an integer 0..=100)"],
        ),
        (
            &[
                "server",
                "set",
                "--group",
                "app",
                "198.18.1.11:8080",
                "--weight",
                "heavy",
            ],
            &["`heavy` is not a weight (an integer 0..=100)"],
        ),
        (
            &["server", "add", "--group", "nosuch", "198.18.1.12:8080"],
            &["no server group `nosuch`; groups: default, app"],
        ),
        (
            &["server", "add", "198.18.1.12:8080"],
            &["required arguments were not provided", "--group <GROUP>"],
        ),
        (
            &["server", "add", "--group", "app"],
            &["required arguments were not provided", "<SERVER>"],
        ),
        (
            &[
                "listener",
                "add",
                "api",
                "--protocol",
                "tcp",
                "--address",
                "198.19.0.100",
            ],
            &["required arguments were not provided", "--port <PORT>"],
        ),
        (
            &[
                "listener",
                "add",
                "api",
                "--protocol",
                "tcp",
                "--address",
                "198.19.0.300",
                "--port",
                "81",
                "--group",
                "app",
            ],
            &[
                "invalid value '198.19.0.300' for '--address <ADDRESS>'",
                "`198.19.0.300` is not an IPv4 address",
            ],
        ),
        (
            &[
                "listener",
                "add",
                "api",
                "--protocol",
                "tcp",
                "--address",
                "198.19.0.100",
                "--port",
                "65536",
                "--group",
                "app",
            ],
            &["invalid value '65536' for '--port <PORT>'"],
        ),
        (
            &[
                "listener",
                "add",
                "api",
                "--protocol",
                "sctp",
                "--address",
                "198.19.0.100",
                "--port",
                "81",
                "--group",
                "app",
            ],
            &[
                "invalid value 'sctp' for '--protocol <PROTOCOL>'",
                "[possible values: tcp, udp]",
            ],
        ),
        (
            &[
                "listener",
                "add",
                "api",
                "--protocol",
                "tcp",
                "--address",
                "198.19.0.100",
                "--port",
                "81",
                "--group",
                "app",
                "--scheduler",
                "fastest",
            ],
            &[
                "invalid value 'fastest' for '--scheduler <SCHEDULER>'",
                "[possible values: wrr, rr, wlc, sch, tch]",
            ],
        ),
        (
            &[
                "listener",
                "add",
                "api",
                "--protocol",
                "tcp",
                "--address",
                "198.19.0.100",
                "--port",
                "81",
                "--group",
                "nosuch",
            ],
            &["no server group `nosuch`; groups: default, app"],
        ),
        (&["listener", "remove", "nosuch"], &["no listener nosuch"]),
        (&["group", "show", "nosuch"], &["no server group `nosuch`"]),
        (
            &["group", "create", "g", "--type", "bogus"],
            &[
                "invalid value 'bogus' for '--type <KIND>'",
                "[possible values: vserver, primary-secondary]",
            ],
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--type",
                "primary-secondary",
                "--primary",
                "198.18.1.11",
                "--secondary",
                "198.18.1.12:8080",
            ],
            &["`198.18.1.11` has no port; expected ADDR:PORT"],
        ),
        (&["frobnicate"], &["unrecognized subcommand 'frobnicate'"]),
    ];
    let mut problems = Vec::new();
    for (args, needles) in cases {
        let out = daemon.ctl(args);
        let what = describe(&format!("lb-ctl {}", args.join(" ")), &out);
        if out.status.code() != Some(2) {
            problems.push(format!("exit code 2 expected: {what}"));
            continue;
        }
        let all = text_of(&out);
        for needle in *needles {
            if !all.contains(needle) {
                problems.push(format!("should say {needle:?}: {what}"));
            }
        }
    }
    // A port of 0 for a listener: refused (by the parser or the daemon) naming the range.
    let args = [
        "listener",
        "add",
        "api",
        "--protocol",
        "tcp",
        "--address",
        "198.19.0.100",
        "--port",
        "0",
        "--group",
        "app",
    ];
    let out = daemon.ctl(&args);
    let what = describe("lb-ctl listener add … --port 0", &out);
    if out.status.code() != Some(2) || !text_of(&out).contains("port 0 is not in 1..=65535") {
        problems.push(format!(
            "port 0 refused with the valid range 1..=65535: {what}"
        ));
    }
    assert_eq!(daemon.ctl_ok(&["export"]), export, "nothing changed");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------
// 4. Control plane safety

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// `groupadd -f lbtest` (idempotent) and its gid; `root` (0) if groupadd is unavailable.
fn test_group() -> (String, u32) {
    let ok = Command::new("groupadd")
        .args(["-f", "-r", "lbtest"])
        .output()
        .is_ok_and(|o| o.status.success());
    let name = if ok { "lbtest" } else { "root" };
    let c = std::ffi::CString::new(name).expect("group name");
    // SAFETY: getgrnam returns NULL or a pointer to static storage, read at once.
    let gid = unsafe {
        let gr = libc::getgrnam(c.as_ptr());
        assert!(!gr.is_null(), "group {name} exists");
        (*gr).gr_gid
    };
    (name.to_owned(), gid)
}

/// 4. The control socket is 0600 (root only) by default and 0660 with `--socket-group`;
///    a second daemon of the same instance is refused with a clear message; a socket
///    path that is a symbolic link, and a socket folder anyone may write to, are refused.
#[test]
fn control_socket_is_private_and_unsafe_paths_are_refused() {
    let Some((topo, mut daemon)) = setup("sock", 1, 65536, &web_config(1, "")) else {
        return;
    };
    let instance = instance(&topo);
    assert_eq!(
        mode(&daemon.socket()),
        0o600,
        "socket {} is owner-only",
        daemon.socket().display()
    );
    let meta = fs::metadata(daemon.socket()).expect("socket metadata");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "owned by root");

    // A second daemon for the same instance (same state folder, another socket).
    let dir = TempDir::new("sock");
    let second = ManualDaemon {
        config: daemon.config_path(),
        state_dir: daemon.state_dir(),
        socket: dir.path().join("second.sock"),
        netns: topo.lb().name().to_owned(),
        extra: Vec::new(),
    };
    let out = second.refused();
    let what = describe("a second daemon of the same instance", &out);
    assert!(
        text(&out.stderr).contains(&format!(
            "another lb-ctl daemon is running instance {instance}"
        )),
        "{what}"
    );
    assert!(
        daemon.ctl(&["status"]).status.success(),
        "the first daemon still serves"
    );

    // The first one stops (pins stay); the next ones start on the same instance.
    daemon.stop();
    let (group, gid) = test_group();
    let grouped = ManualDaemon {
        socket: dir.path().join("grouped.sock"),
        extra: vec!["--socket-group".into(), group.clone()],
        ..second
    };
    let mut child = grouped.start();
    let meta = fs::metadata(&grouped.socket).expect("socket metadata");
    assert_eq!(
        (mode(&grouped.socket), meta.gid()),
        (0o660, gid),
        "--socket-group {group}: mode 0660, group {group}"
    );
    child.stop();

    // A symbolic link where the socket goes.
    let target = dir.path().join("elsewhere");
    fs::write(&target, "not a socket").expect("writing the link target");
    let link = dir.path().join("link.sock");
    symlink(&target, &link).expect("symlink");
    let linked = ManualDaemon {
        socket: link.clone(),
        extra: Vec::new(),
        ..grouped
    };
    let out = linked.refused();
    let what = describe("socket path is a symbolic link", &out);
    assert!(
        text(&out.stderr).contains(&format!(
            "control socket path {} is a symbolic link; refusing to use it",
            link.display()
        )),
        "{what}"
    );
    assert_eq!(
        fs::read_to_string(&target).ok().as_deref(),
        Some("not a socket"),
        "the link's target is untouched"
    );

    // A socket folder anyone may write to (0777, not sticky).
    let open_dir = dir.path().join("open");
    fs::create_dir(&open_dir).expect("mkdir");
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).expect("chmod 0777");
    let open = ManualDaemon {
        socket: open_dir.join("ctl.sock"),
        ..linked
    };
    let out = open.refused();
    let what = describe("socket folder is world-writable", &out);
    assert!(
        text(&out.stderr).contains("is writable by everyone"),
        "{what}"
    );
    assert!(
        !open_dir.join("ctl.sock").exists(),
        "no socket left in the open folder"
    );
    // The same folder with the sticky bit (like /tmp) is fine.
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    let mut child = open.start();
    assert_eq!(mode(&open.socket), 0o600);
    child.stop();
    let out = teardown(&instance);
    assert!(out.status.success(), "{}", describe("teardown", &out));
}

/// 5. The state file: a crash in the middle of a write (a truncated `*.json.tmp` left
///    next to it) loses nothing, the daemon starts with the last complete state; a
///    corrupt state file is refused, naming the file and saying "corrupt or truncated",
///    and nothing is started.
#[test]
fn state_file_survives_a_crash_mid_write_and_corruption_is_refused() {
    let Some((topo, mut daemon)) = setup("state", 2, 65536, &web_config(1, "")) else {
        return;
    };
    let _backends = start_backends(&topo);
    let instance = instance(&topo);
    daemon.ctl_ok(&[
        "server",
        "add",
        "--group",
        "app",
        "198.18.1.12:8080",
        "--weight",
        "40",
    ]);
    let state = daemon.state_dir().join(format!("{instance}.state.json"));
    let saved = fs::read_to_string(&state)
        .unwrap_or_else(|e| panic!("state file {}: {e}", state.display()));
    assert!(saved.contains("198.18.1.12"), "{saved}");
    let export = daemon.ctl_ok(&["export"]);
    daemon.stop();

    // A crash while writing the next state: the temporary file is half written.
    let tmp = daemon
        .state_dir()
        .join(format!("{instance}.state.json.tmp"));
    fs::write(&tmp, &saved[..saved.len() / 2]).expect("writing the torn temporary file");
    daemon.restart();
    assert_eq!(
        daemon.ctl_ok(&["export"]),
        export,
        "the last complete state is back"
    );
    assert_eq!(daemon.status()["overlay_changes"], 1);
    let tally = all_answered(topo.client(), &url(), 40, None, 4, "every request answered");
    assert!(tally.count("b2") > 0, "the runtime change is live: {tally}");
    daemon.stop();

    // The state file itself truncated (what a non-atomic write would leave).
    fs::write(&state, &saved[..saved.len() / 2]).expect("truncating the state file");
    let manual = ManualDaemon {
        config: daemon.config_path(),
        state_dir: daemon.state_dir(),
        socket: daemon.socket(),
        netns: topo.lb().name().to_owned(),
        extra: Vec::new(),
    };
    let out = manual.refused();
    let what = describe("daemon with a truncated state file", &out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&state.display().to_string()) && stderr.contains("corrupt or truncated"),
        "{what}"
    );
    assert!(
        !daemon.socket().exists(),
        "no control socket from the refused start"
    );
    // The pinned data plane kept forwarding meanwhile.
    all_answered(
        topo.client(),
        &url(),
        20,
        None,
        4,
        "the data plane outlives the daemon",
    );

    fs::write(&state, &saved).expect("restoring the state file");
    daemon.restart();
    assert_eq!(daemon.ctl_ok(&["export"]), export);
}

// ---------------------------------------------------------------------------------------
// 5. Faults

/// 6. The client-side interface disappears under the running daemon: it keeps serving
///    the API, does not crash, and says what happened. When an interface of that name
///    comes back, a restart of the daemon attaches to it and traffic flows again.
#[test]
fn interface_removed_under_the_daemon() {
    let Some((topo, mut daemon)) = setup("ifrm", 1, 65536, &web_config(1, "")) else {
        return;
    };
    let _backends = start_backends(&topo);
    all_answered(topo.client(), &url(), 10, None, 2, "every request answered");
    let lb_if = topo.lb_client_if();
    topo.lb().ip(["link", "del", lb_if]);
    // Give the sweep and the health checks a few rounds.
    thread::sleep(Duration::from_secs(4));
    let status = daemon.status();
    assert_eq!(status["listeners"][0]["name"], "web", "{status:#}");
    let stats = daemon.ctl(&["stats", "--json"]);
    assert!(stats.status.success(), "{}", describe("stats", &stats));
    let reload = daemon.ctl(&["reload"]);
    let log = daemon.log();
    assert!(
        daemon.ctl(&["status"]).status.success(),
        "still serving after the reload attempt"
    );
    assert!(
        !log.contains("panicked"),
        "the daemon did not panic:\n{log}"
    );
    let reported = {
        let says = |s: &str| {
            text_of(&reload).contains(s) || log.contains(s) || status.to_string().contains(s)
        };
        says(lb_if) && (says("not exist") || says("gone") || says("missing") || says("removed"))
    };

    // The interface comes back (same names, same addresses), then the daemon restarts.
    lb_tests::veth(topo.lb(), lb_if, topo.client(), "eth0");
    topo.lb().addr_add(lb_if, "198.18.0.1/24");
    topo.client().addr_add("eth0", "198.18.0.2/24");
    for (ns, dev) in [(topo.lb(), lb_if), (topo.client(), "eth0")] {
        ns.checksum_offload_off(dev);
        ns.link_up(dev);
    }
    for (ns, dev) in [(topo.lb(), lb_if), (topo.client(), "eth0")] {
        ns.gro_on(dev);
    }
    topo.client().route_add("198.19.0.0/16", "198.18.0.1");
    topo.pin_neighbors();
    daemon.stop();
    let restarted = ManualDaemon {
        config: daemon.config_path(),
        state_dir: daemon.state_dir(),
        socket: daemon.socket(),
        netns: topo.lb().name().to_owned(),
        extra: Vec::new(),
    }
    .try_start();
    let (restart, tally) = match &restarted {
        Ok(child) => (
            format!(
                "status interfaces {}; log:\n{}",
                serde_json::from_slice::<Value>(
                    &ctl(&daemon.socket(), &["status", "--json"]).stdout
                )
                .map(|s| s["interfaces"].clone())
                .unwrap_or_default(),
                child.stderr()
            ),
            Tally::of(&curl_many(topo.client(), &url(), 10, None, 2)),
        ),
        Err(e) => (e.clone(), Tally::default()),
    };
    let summary = format!(
        "after removing {lb_if}: status interfaces {}; {}\n--- daemon log (first run) ---\n\
         {log}\nafter it came back, the restart: {restart}\ntraffic: {tally}",
        status["interfaces"],
        describe("reload", &reload),
    );
    println!("{summary}");
    assert!(
        reported,
        "the daemon reports the missing interface {lb_if} (reload, log or status)\n{summary}"
    );
    assert!(
        restarted.is_ok(),
        "the daemon restarts once the interface is back (a pinned link of a deleted \
         interface is stale, not a reason to refuse)\n{summary}"
    );
    assert_eq!(
        (tally.count("b1"), tally.failed()),
        (10, 0),
        "traffic flows through the interface that came back\n{summary}"
    );
}

/// 7. bpffs not mounted where the daemon is told to pin: refused with the way out.
#[test]
fn bpffs_not_mounted_is_refused() {
    if !require_root_and_bpf("bpffs_not_mounted_is_refused") {
        return;
    }
    let ns = Netns::create(&format!("{}lb", lb_tests::unique_prefix("bpf")));
    let dir = TempDir::new("nobpffs");
    let plain = dir.path().join("not-bpffs-dir");
    fs::create_dir(&plain).expect("mkdir");
    let config = dir.path().join("lb.yaml");
    fs::write(
        &config,
        format!(
            "instance: nobpffs{}\ninterfaces: [lo]\nflow_table_size: 1024\n",
            std::process::id() % 100_000
        ),
    )
    .expect("writing the config");
    let daemon = ManualDaemon {
        config,
        state_dir: dir.path().join("state"),
        socket: dir.path().join("ctl.sock"),
        netns: ns.name().to_owned(),
        extra: vec!["--bpffs".into(), plain.to_string_lossy().into_owned()],
    };
    let out = daemon.refused();
    let what = describe("daemon --bpffs <plain folder>", &out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{} is not a bpffs mount", plain.display()))
            && stderr.contains("mount -t bpf bpf"),
        "{what}"
    );
    assert_eq!(
        fs::read_dir(&plain).expect("read_dir").count(),
        0,
        "nothing written into the plain folder"
    );
}

/// 8. Pinned maps of another layout (the flow table size changed between two runs):
///    refused, naming `lb-ctl teardown`; after the teardown the daemon starts.
#[test]
fn pinned_maps_of_another_layout_are_refused_until_teardown() {
    let Some((topo, mut daemon)) = setup("lay", 1, 1024, &web_config(1, "")) else {
        return;
    };
    let _backends = start_backends(&topo);
    let instance = instance(&topo);
    daemon.stop();
    assert!(daemon.pin_dir().exists(), "SIGTERM leaves the pins");
    daemon.write_config(&format!("{}{}", header(&topo, 2048), web_config(1, "")));
    let manual = ManualDaemon {
        config: daemon.config_path(),
        state_dir: daemon.state_dir(),
        socket: daemon.socket(),
        netns: topo.lb().name().to_owned(),
        extra: Vec::new(),
    };
    let out = manual.refused();
    let what = describe("daemon with flow_table_size 2048 over pins of 1024", &out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("incompatible layout")
            && stderr.contains("1024 entries")
            && stderr.contains("2048 entries")
            && stderr.contains(&format!("lb-ctl teardown --instance {instance}")),
        "{what}"
    );
    // The old data plane still forwards.
    all_answered(
        topo.client(),
        &url(),
        10,
        None,
        2,
        "the pinned data plane is untouched",
    );

    let out = daemon.teardown();
    assert!(out.status.success(), "{}", describe("teardown", &out));
    assert!(!daemon.pin_dir().exists(), "teardown removed the pins");
    daemon.restart();
    all_answered(
        topo.client(),
        &url(),
        20,
        None,
        4,
        "the new data plane forwards",
    );
}

/// 9. The LB does not know the backend's MAC (neighbour table flushed, no health checks
///    to resolve it): the first packets go to the kernel translated
///    (`pass_neighbour_unknown`), which resolves the neighbour; requests succeed.
#[test]
fn missing_backend_neighbour_goes_to_the_kernel() {
    if !require_root_and_bpf("missing_backend_neighbour_goes_to_the_kernel") {
        return;
    }
    let topo = Topology::build("nei", 1, TopologyOptions::default());
    let _backends = start_backends(&topo);
    let daemon = LbDaemon::start(
        topo.lb(),
        &instance(&topo),
        &format!(
            "{}{}",
            header(&topo, 65536),
            web_config(1, ", health_check: { type: none }")
        ),
    );
    topo.lb()
        .ip(["neigh", "flush", "dev", topo.lb_backend_if()]);
    let neigh = topo.lb().ip(["neigh", "show", "dev", topo.lb_backend_if()]);
    assert!(
        !neigh.contains("198.18.1.11"),
        "no neighbour entry for b1: {neigh}"
    );
    let before = stats_json(&daemon);
    let tally = Tally::of(&curl_many(topo.client(), &url(), 20, None, 1));
    let after = stats_json(&daemon);
    assert_eq!(tally.count("b1"), 20, "every request answered: {tally}");
    let unknown =
        reason(&after, "pass_neighbour_unknown") - reason(&before, "pass_neighbour_unknown");
    let forwarded = reason(&after, "forwarded") - reason(&before, "forwarded");
    println!("pass_neighbour_unknown +{unknown}, forwarded +{forwarded}");
    assert!(
        unknown > 0,
        "the first packets went to the kernel: {after:#}"
    );
    assert!(
        forwarded > unknown,
        "later ones took the fast path once the kernel resolved b1: {after:#}"
    );
    let neigh = topo.lb().ip(["neigh", "show", "dev", topo.lb_backend_if()]);
    assert!(
        neigh.contains("198.18.1.11"),
        "the kernel resolved b1: {neigh}"
    );
}
