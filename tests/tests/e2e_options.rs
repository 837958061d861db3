//! End to end: the listener options of issue 5 with real clients and servers. Source-IP
//! persistence against a plain `wrr` listener, connection drain with its completion signal
//! (`lb-ctl wait drained`) and its deadline cut, weight 0 and `server remove` under drain,
//! source access lists edited at runtime, and the UDP idle timeout.
//!
//! Topology (see `lb_tests::topology`): a client with extra addresses 198.18.0.10 and .11,
//! the LB running `lb-ctl daemon`, three backends b1..b3 (198.18.1.11..13) serving HTTP on
//! 8080 and UDP on 5353; the VIP is 198.19.0.100. Each test asserts what a user sees:
//! which backend answered, how many requests failed, what the CLI printed and its exit
//! code, the counters of `lb-ctl stats`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Backend, ChildGuard, LbDaemon, Netns, Tally, Topology, TopologyOptions, VIP, all_answered,
    curl_many, http_get, require_root_and_bpf,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

/// The three backends as a vServer group `app` on port 8080.
const APP_GROUP: &str = "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080 }\n      - { address: 198.18.1.13, port: 8080 }\n";

/// A three-backend topology with two extra client addresses, backends started, and a
/// daemon whose config is the usual header followed by `body`.
fn setup(tag: &str, body: &str) -> Option<(Topology, LbDaemon, Vec<Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(
        tag,
        3,
        TopologyOptions {
            client_addresses: 2,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n{body}",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    Some((topo, daemon, backends))
}

fn url(port: u16) -> String {
    format!("http://{VIP}:{port}/")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "lb-ctl {args:?} → {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout).trim_end(),
        text(&out.stderr).trim_end()
    )
}

/// `b1` → `198.18.1.11`.
fn addr_of(name: &str) -> String {
    let k: u8 = name
        .strip_prefix('b')
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("not a backend name: {name:?}"));
    format!("198.18.1.{}", 10 + k)
}

/// The backend `addr:port` of listener `listener` in a `status --json` answer.
fn backend_status(status: &Value, listener: &str, addr: &str, port: u16) -> Option<Value> {
    status["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("no listener {listener} in status: {status:#}"))["backends"]
        .as_array()
        .and_then(|bs| {
            bs.iter()
                .find(|b| b["address"] == addr && b["port"] == port)
        })
        .cloned()
}

/// `lb-ctl stats --json`, parsed.
fn stats(daemon: &LbDaemon) -> Value {
    let text = daemon.ctl_ok(&["stats", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON: {e}\n{text}"))
}

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no reason {name} in stats: {stats:#}"))
}

fn listener_stat(stats: &Value, listener: &str, field: &str) -> u64 {
    stats["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .and_then(|l| l["stats"][field].as_u64())
        .unwrap_or_else(|| panic!("no {field} for listener {listener} in stats: {stats:#}"))
}

/// Connections a backend accepted from `client`.
fn from_client(backend: &Backend, client: Ipv4Addr) -> u64 {
    backend
        .peers()
        .get(&IpAddr::V4(client))
        .copied()
        .unwrap_or(0)
}

/// A long-lived HTTP connection: `curl /stream?seconds=N` gets `NAME i` every 100 ms over
/// one TCP connection.
struct LongStream {
    child: ChildGuard,
    seconds: u64,
    started: Instant,
}

/// How a long-lived connection ended.
struct StreamEnd {
    output: Output,
    /// When curl exited, after the start.
    after: Duration,
    lines: Vec<String>,
}

impl StreamEnd {
    fn describe(&self) -> String {
        format!(
            "curl {} after {:.1} s, {} line(s), last {:?}: {}",
            self.output.status,
            self.after.as_secs_f64(),
            self.lines.len(),
            self.lines.last(),
            text(&self.output.stderr).trim_end()
        )
    }
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
        LongStream {
            child,
            seconds,
            started: Instant::now(),
        }
    }

    /// The backend serving it (b1, b2, …), once its first line arrived.
    fn backend(&self) -> String {
        self.child.wait_for_output(" 0\n", Duration::from_secs(5));
        let out = self.child.stdout();
        out.split_whitespace().next().unwrap_or_default().to_owned()
    }

    fn done(&mut self) -> bool {
        self.child.try_status().is_some()
    }

    /// Waits for curl to exit, whatever the result.
    fn end(mut self) -> StreamEnd {
        let output = self
            .child
            .wait_output(Duration::from_secs(self.seconds + 20))
            .unwrap_or_else(|| panic!("the stream did not end: {}", self.child.stdout()));
        let after = self.started.elapsed();
        let lines = text(&output.stdout).lines().map(str::to_owned).collect();
        StreamEnd {
            output,
            after,
            lines,
        }
    }

    /// Waits for the end; asserts curl succeeded and every line arrived, in order, from
    /// `backend`.
    fn finish_from(self, backend: &str) -> StreamEnd {
        let seconds = self.seconds;
        let end = self.end();
        assert!(
            end.output.status.success(),
            "the long-lived connection was not cut: {}",
            end.describe()
        );
        let expected: Vec<String> = (0..seconds * 10)
            .map(|i| format!("{backend} {i}"))
            .collect();
        assert_eq!(
            end.lines, expected,
            "the stream delivered every line, in order, from {backend}"
        );
        end
    }
}

/// Polls `status` until `pred` holds for backend `addr:8080` of `listener` (at most
/// `timeout`); returns the entry, or panics with the last one seen.
fn wait_backend(
    daemon: &LbDaemon,
    listener: &str,
    addr: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let b = backend_status(&daemon.status(), listener, addr, HTTP_PORT)
            .unwrap_or_else(|| panic!("{addr} not in listener {listener}"));
        if pred(&b) {
            return b;
        }
        assert!(start.elapsed() < timeout, "{what}: {b:#}");
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// Persistence

/// `persistence_timeout: 60`: each of two client addresses sticks to one backend over 100
/// connections, while the same group behind a listener without persistence spreads the
/// same clients' connections over all three; a removed backend breaks the affinity.
#[test]
fn persistence_keeps_each_client_on_one_backend_while_wrr_spreads() {
    let Some((topo, daemon, _backends)) = setup(
        "opst",
        &format!(
            "{APP_GROUP}listeners:\n  - {{ name: sticky, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: wrr, persistence_timeout: 60 }}\n  - {{ name: plain, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app, scheduler: wrr }}\n"
        ),
    ) else {
        return;
    };
    let client = topo.client();
    let mut sticky_to = Vec::new();
    for source in [CLIENT_A, CLIENT_B] {
        // One connection makes the affinity entry; 99 more, 4 at a time, follow it.
        let mut results = curl_many(client, &url(80), 1, Some(source), 1);
        results.extend(curl_many(client, &url(80), 99, Some(source), 4));
        let tally = Tally::of(&results);
        assert_eq!(
            tally.failed(),
            0,
            "{source} on the sticky listener: {tally}"
        );
        assert_eq!(
            tally.backends().len(),
            1,
            "{source} sticks to one backend over 100 connections: {tally}"
        );
        sticky_to.push(tally.backends()[0].to_owned());

        let plain = all_answered(
            client,
            &url(81),
            99,
            Some(source),
            4,
            &format!("{source} on the plain listener"),
        );
        for name in ["b1", "b2", "b3"] {
            assert!(
                plain.count(name) >= 20,
                "without persistence wrr spreads {source}'s connections: {plain}"
            );
        }
    }
    eprintln!(
        "persistence: {CLIENT_A} → {}, {CLIENT_B} → {}",
        sticky_to[0], sticky_to[1]
    );
    let s = stats(&daemon);
    assert!(
        reason(&s, "event_persisted") >= 198,
        "connections after the first of each client were placed by persistence: {}",
        reason(&s, "event_persisted")
    );

    // A removed backend breaks the affinity: A moves, and sticks to its new backend.
    let gone = sticky_to[0].clone();
    daemon.ctl_ok(&[
        "server",
        "remove",
        "--group",
        "app",
        &format!("{}:8080", addr_of(&gone)),
    ]);
    let tally = all_answered(
        client,
        &url(80),
        50,
        Some(CLIENT_A),
        4,
        &format!("after removing {gone}"),
    );
    assert_eq!(tally.count(&gone), 0, "{gone} was removed: {tally}");
    assert_eq!(
        tally.backends().len(),
        1,
        "{CLIENT_A} sticks to its new backend: {tally}"
    );
}

// ---------------------------------------------------------------------------------------
// Connection drain

/// A listener over the three backends with `connection_drain: {enabled: true, timeout:
/// 10}` (and any `extra` listener fields).
fn drain_config(extra: &str) -> String {
    format!(
        "{APP_GROUP}listeners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, connection_drain: {{ enabled: true, timeout: 10 }}{extra} }}\n"
    )
}

/// 100 new connections: none fails, none reaches `avoid`.
fn new_connections_avoid(topo: &Topology, daemon: &LbDaemon, avoid: &str, when: &str) {
    let tally = all_answered(
        topo.client(),
        &url(80),
        100,
        None,
        4,
        &format!("{when}\n{}", daemon.log()),
    );
    assert_eq!(
        tally.count(avoid),
        0,
        "{when}: new connections avoid {avoid}: {tally}"
    );
    assert_eq!(
        tally.backends().len(),
        2,
        "{when}: the other two take them: {tally}"
    );
}

/// `server drain` with a long-lived connection on the server: new connections go to the
/// others, the long connection goes on, and `wait drained` returns 0 once it has closed
/// by itself (not before).
#[test]
fn drain_waits_for_the_long_connection_and_wait_drained_returns_when_it_closes() {
    let Some((topo, daemon, _backends)) = setup("odrn", &drain_config("")) else {
        return;
    };
    let mut stream = LongStream::start(topo.client(), 80, 6);
    let on = stream.backend();
    let server = format!("{}:8080", addr_of(&on));
    let out = daemon.ctl_ok(&["server", "drain", "--group", "app", &server]);
    eprintln!("server drain {server}: {}", out.trim_end());

    new_connections_avoid(&topo, &daemon, &on, "during the drain");
    let b = wait_backend(
        &daemon,
        "web",
        &addr_of(&on),
        Duration::from_secs(3),
        "the drained server shows its one active flow",
        |b| b["active_flows"] == 1,
    );
    assert_eq!(b["state"], "draining", "{b}");
    assert!(
        b["drain_left_s"]
            .as_u64()
            .is_some_and(|s| (1..=10).contains(&s)),
        "the time left before the cut is shown: {b}"
    );
    assert!(!stream.done(), "the stream is still running");

    let args = [
        "wait",
        "drained",
        "--group",
        "app",
        &server,
        "--timeout",
        "30",
    ];
    let out = daemon.ctl(&args);
    let stream_running_at_return = !stream.done();
    let what = describe(&args, &out);
    assert!(out.status.success(), "{what}\n{}", daemon.log());
    let end = stream.finish_from(&on);
    eprintln!("wait drained returned; the stream {}", end.describe());
    assert!(
        !stream_running_at_return,
        "wait drained returned while the long connection was still open: {what}"
    );
    assert!(
        text(&out.stdout).contains("drained"),
        "the answer says so: {what}"
    );
    let s = stats(&daemon);
    assert_eq!(reason(&s, "reset_drain_expired"), 0, "nothing was cut");
}

/// `server drain` while a connection is kept open past the drain timeout: `wait drained
/// --timeout 3` exits 4 naming the one active flow; after the listener's drain timeout
/// (10 s) the connection is reset by the LB, and `stats` counts it.
#[test]
fn drain_timeout_resets_the_connection_kept_open_and_wait_drained_exits_4() {
    let Some((topo, daemon, _backends)) = setup("odrx", &drain_config("")) else {
        return;
    };
    let stream = LongStream::start(topo.client(), 80, 30);
    let on = stream.backend();
    let server = format!("{}:8080", addr_of(&on));
    daemon.ctl_ok(&["server", "drain", "--group", "app", &server]);
    let drained_at = Instant::now();
    new_connections_avoid(&topo, &daemon, &on, "during the drain");

    let args = [
        "wait",
        "drained",
        "--group",
        "app",
        &server,
        "--timeout",
        "3",
    ];
    let started = Instant::now();
    let out = daemon.ctl(&args);
    let took = started.elapsed();
    let what = describe(&args, &out);
    assert_eq!(out.status.code(), Some(4), "exit 4 at the timeout: {what}");
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(6),
        "it waited about 3 s ({took:?}): {what}"
    );
    let message = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        message.contains("1 active"),
        "the message gives the number still active (1): {what}"
    );

    let end = stream.end();
    let cut_after = drained_at.elapsed();
    eprintln!(
        "drain timeout: the stream ended {:.1} s after the drain: {}",
        cut_after.as_secs_f64(),
        end.describe()
    );
    assert!(
        !end.output.status.success(),
        "the connection kept open past the drain timeout is cut: {}",
        end.describe()
    );
    let stderr = text(&end.output.stderr);
    assert!(
        stderr.contains("reset") || stderr.contains("Recv failure"),
        "curl reports a reset: {}",
        end.describe()
    );
    assert!(
        cut_after >= Duration::from_secs(9) && cut_after <= Duration::from_secs(14),
        "cut at the drain timeout (10 s after the drain), not before and not much later: \
         ended {cut_after:?} after the drain: {}",
        end.describe()
    );
    let s = stats(&daemon);
    assert!(
        reason(&s, "reset_drain_expired") >= 1,
        "stats counts the cut: {:#}",
        s["reasons"]
    );
    // The operator's signal: the connection is gone, so the server is drained (the flow
    // table is swept every second).
    thread::sleep(Duration::from_secs(2));
    let args = [
        "wait",
        "drained",
        "--group",
        "app",
        &server,
        "--timeout",
        "5",
    ];
    let out = daemon.ctl(&args);
    assert!(
        out.status.success(),
        "after the cut the server has no connection left and is drained: {}\nstatus: {}",
        describe(&args, &out),
        backend_status(&daemon.status(), "web", &addr_of(&on), HTTP_PORT)
            .map_or("gone".to_owned(), |b| b.to_string())
    );
}

/// Weight 0 is not a drain: with drain enabled (timeout 10 s), a long connection on a
/// weight-0 server runs its full 14 s; new connections avoid the server.
#[test]
fn weight_zero_never_cuts_a_long_connection_even_past_the_drain_timeout() {
    let Some((topo, daemon, _backends)) = setup("ow0d", &drain_config("")) else {
        return;
    };
    let stream = LongStream::start(topo.client(), 80, 14);
    let on = stream.backend();
    let server = format!("{}:8080", addr_of(&on));
    daemon.ctl_ok(&["server", "set", "--group", "app", &server, "--weight", "0"]);
    new_connections_avoid(&topo, &daemon, &on, "at weight 0");
    stream.finish_from(&on);
    let s = stats(&daemon);
    assert_eq!(
        reason(&s, "reset_drain_expired") + reason(&s, "drop_drain_expired"),
        0,
        "weight 0 cuts nothing: {:#}",
        s["reasons"]
    );
}

/// `server remove` with drain enabled: the removed server's long connection runs to its
/// end (6 s, within the 10 s drain timeout), new connections go to the others, and then
/// the server is gone from status.
#[test]
fn server_remove_with_drain_keeps_the_long_connection_until_it_ends() {
    let Some((topo, daemon, _backends)) = setup("ormv", &drain_config("")) else {
        return;
    };
    let stream = LongStream::start(topo.client(), 80, 6);
    let on = stream.backend();
    let server = format!("{}:8080", addr_of(&on));
    daemon.ctl_ok(&["server", "remove", "--group", "app", &server]);
    let after_remove = backend_status(&daemon.status(), "web", &addr_of(&on), HTTP_PORT);
    new_connections_avoid(&topo, &daemon, &on, "after the remove");
    let b = after_remove
        .unwrap_or_else(|| panic!("{on} removed with drain on is kept in status while it drains"));
    assert_eq!(b["departing"], true, "kept only while it drains: {b}");
    let end = stream.end();
    let s = stats(&daemon);
    assert!(
        end.output.status.success() && end.lines.len() == 60,
        "the removed server's long connection runs to its end (drain timeout 10 s > 6 s): \
         {}\nreasons: event_reselected={} reset_drain_expired={} event_pickup={}\nstatus of \
         {on} right after the remove: {b}\n{}",
        end.describe(),
        reason(&s, "event_reselected"),
        reason(&s, "reset_drain_expired"),
        reason(&s, "event_pickup"),
        daemon.log()
    );
    assert!(
        end.lines.iter().all(|l| l.starts_with(&format!("{on} "))),
        "every line from {on}"
    );
    assert_eq!(
        reason(&s, "reset_drain_expired"),
        0,
        "nothing was cut: {:#}",
        s["reasons"]
    );
    // Gone once drained (the sweep runs every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_status(&daemon.status(), "web", &addr_of(&on), HTTP_PORT).is_some() {
        assert!(
            Instant::now() < deadline,
            "the removed server leaves status once drained: {:#}",
            daemon.status()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// Access lists

/// curl from `source`, 1.5 s at most: `Ok(backend)` or `Err(curl's message)`.
fn try_get(topo: &Topology, port: u16, source: Ipv4Addr) -> Result<String, String> {
    http_get(
        topo.client(),
        &url(port),
        Some(source),
        Duration::from_millis(1500),
    )
    .map(|body| body.trim().to_owned())
    .map_err(|e| e.to_string())
}

fn assert_denied(topo: &Topology, port: u16, source: Ipv4Addr, when: &str) {
    match try_get(topo, port, source) {
        Ok(b) => panic!("{when}: {source} is denied on :{port} but was answered by {b}"),
        Err(e) => assert!(
            e.contains("timed out") || e.contains("Timeout") || e.contains("exit status: 28"),
            "{when}: a denied client gets no answer at all (a timeout), got: {e}"
        ),
    }
}

fn assert_served(topo: &Topology, port: u16, source: Ipv4Addr, when: &str) {
    let tally = Tally::of(&curl_many(topo.client(), &url(port), 10, Some(source), 2));
    assert_eq!(
        tally.answered(),
        10,
        "{when}: {source} is allowed on :{port} and served: {tally}"
    );
}

/// A deny list: the denied client gets no answer and the counters show it, the other
/// client is served; `acl add` at runtime denies the second too, `acl remove` re-allows
/// it, `acl list` shows the entries. An allow list on a second listener: only its entry
/// is served.
#[test]
fn access_lists_deny_and_allow_and_runtime_edits_apply() {
    let Some((topo, daemon, backends)) = setup(
        "oacl",
        &format!(
            "acls:\n  - {{ name: office, entries: [198.18.0.10/32] }}\n  - {{ name: partners, entries: [198.18.0.11/32] }}\n{APP_GROUP}listeners:\n  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, acl: {{ type: deny, name: office }} }}\n  - {{ name: partner, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app, acl: {{ type: allow, name: partners }} }}\n"
        ),
    ) else {
        return;
    };
    let client_addr = topo.client_addr();

    // Deny list on :80.
    assert_denied(&topo, 80, CLIENT_A, "deny office");
    assert_served(&topo, 80, CLIENT_B, "deny office");
    assert_served(&topo, 80, client_addr, "deny office");
    let s = stats(&daemon);
    assert!(reason(&s, "drop_acl_denied") >= 1, "{:#}", s["reasons"]);
    assert!(
        listener_stat(&s, "web", "dropped") >= 1,
        "the listener counts the drop: {s:#}"
    );
    assert!(
        backends.iter().all(|b| from_client(b, CLIENT_A) == 0),
        "no backend saw the denied client"
    );

    // Allow list on :81.
    assert_served(&topo, 81, CLIENT_B, "allow partners");
    assert_denied(&topo, 81, CLIENT_A, "allow partners");
    assert_denied(&topo, 81, client_addr, "allow partners");
    assert!(listener_stat(&stats(&daemon), "partner", "dropped") >= 2);

    // Runtime edits.
    daemon.ctl_ok(&["acl", "add", "office", "198.18.0.11/32"]);
    let listed = daemon.ctl_ok(&["acl", "list"]);
    let office = listed
        .lines()
        .find(|l| l.starts_with("office"))
        .unwrap_or_else(|| panic!("office in `acl list`:\n{listed}"));
    assert!(
        office.contains("198.18.0.10/32") && office.contains("198.18.0.11/32"),
        "`acl list` shows both entries: {office:?}"
    );
    let json: Value =
        serde_json::from_str(&daemon.ctl_ok(&["acl", "list", "--json"])).expect("acl list JSON");
    let office_json = json
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == "office"))
        .unwrap_or_else(|| panic!("office in acl list --json: {json:#}"));
    assert_eq!(
        office_json["entries"],
        serde_json::json!(["198.18.0.10/32", "198.18.0.11/32"]),
        "{json:#}"
    );
    let dropped_before = reason(&stats(&daemon), "drop_acl_denied");
    assert_denied(&topo, 80, CLIENT_B, "after `acl add office 198.18.0.11/32`");
    assert!(reason(&stats(&daemon), "drop_acl_denied") > dropped_before);
    assert_served(
        &topo,
        80,
        client_addr,
        "after `acl add office 198.18.0.11/32`",
    );

    daemon.ctl_ok(&["acl", "remove", "office", "198.18.0.11/32"]);
    assert_served(
        &topo,
        80,
        CLIENT_B,
        "after `acl remove office 198.18.0.11/32`",
    );
    assert_denied(
        &topo,
        80,
        CLIENT_A,
        "after `acl remove office 198.18.0.11/32`",
    );
    let listed = daemon.ctl_ok(&["acl", "list"]);
    let office = listed
        .lines()
        .find(|l| l.starts_with("office"))
        .unwrap_or_else(|| panic!("office in `acl list`:\n{listed}"));
    assert!(
        office.contains("198.18.0.10/32") && !office.contains("198.18.0.11/32"),
        "`acl list` after the remove: {office:?}"
    );
    // The allow list grows at runtime too.
    daemon.ctl_ok(&["acl", "add", "partners", "198.18.0.0/24"]);
    assert_served(
        &topo,
        81,
        client_addr,
        "after `acl add partners 198.18.0.0/24`",
    );
}

// ---------------------------------------------------------------------------------------
// Idle timeout

/// `udp_timeout: 10`: one UDP flow (same source port) keeps its backend while it is used,
/// even after that backend's weight drops to 0; idle for 11 s it is forgotten, and its
/// next datagram is scheduled again, onto the other backend.
#[test]
fn udp_flow_idle_past_udp_timeout_is_scheduled_again() {
    let Some((topo, daemon, _backends)) = setup(
        "oudp",
        "vserver_groups:\n  - name: dns\n    servers:\n      - { address: 198.18.1.11, port: 5353 }\n      - { address: 198.18.1.12, port: 5353 }\nlisteners:\n  - { name: dns, protocol: udp, address: 198.19.0.100, port: 53, server_group: dns, udp_timeout: 10, health_check: { type: udp, udp: { request: ping, expect: ping } } }\n",
    ) else {
        return;
    };
    let vip: SocketAddr = (VIP, 53).into();
    let socket = topo
        .client()
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("UDP socket in the client namespace");
    let ask = |payload: &str| -> String {
        socket.send_to(payload.as_bytes(), vip).expect("send");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        let (n, from) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no reply to {payload:?}: {e}\n{}", daemon.log()));
        assert_eq!(from, vip);
        let reply = text(&buf[..n]);
        let (who, echoed) = reply.trim().split_once(' ').expect("NAME payload");
        assert_eq!(echoed, payload);
        who.to_owned()
    };
    let first = ask("q0");
    let other = if first == "b1" { "b2" } else { "b1" };
    let new_flows = |d: &LbDaemon| listener_stat(&stats(d), "dns", "new_flows");
    let flows_before = new_flows(&daemon);

    daemon.ctl_ok(&[
        "server",
        "set",
        "--group",
        "dns",
        &format!("{}:5353", addr_of(&first)),
        "--weight",
        "0",
    ]);
    // In use (every 2 s, well within 10 s): the flow stays on its backend.
    for i in 1..=3 {
        thread::sleep(Duration::from_secs(2));
        assert_eq!(
            ask(&format!("q{i}")),
            first,
            "a used flow keeps its backend"
        );
    }
    assert_eq!(new_flows(&daemon), flows_before, "no new flow while in use");

    thread::sleep(Duration::from_secs(11));
    assert_eq!(
        ask("q-after-idle"),
        other,
        "idle 11 s (udp_timeout 10), the flow is forgotten and scheduled again; its old \
         backend is at weight 0"
    );
    assert_eq!(
        new_flows(&daemon),
        flows_before + 1,
        "the datagram after the idle period made a new flow"
    );
}
