//! End to end through the controller: live changes made with `lb-ctl` while real traffic
//! flows through the XDP data plane, a daemon killed and restarted (hot and cold), and
//! configs and changes the controller must refuse. Each test counts failed requests and
//! asserts what a user sees: which backend answered, what the CLI printed, its exit code.
//!
//! Topology (see `lb_tests::topology`): a client, the LB running `lb-ctl daemon`, three
//! backends b1..b3 (198.18.1.11..13) serving HTTP on 8080; the VIP is 198.19.0.100.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    BulkOptions, ChildGuard, LbDaemon, Netns, Tally, Topology, TopologyOptions, VIP, all_answered,
    client::KeepAlive,
    curl_many, require_root_and_bpf,
    steady::{Steady, SteadyOptions, merged},
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const B1: &str = "198.18.1.11";
const B2: &str = "198.18.1.12";
const B3: &str = "198.18.1.13";

/// A three-backend topology, backends started, and a daemon whose config is the usual
/// header (instance, both LB interfaces, map sizes) followed by `groups_and_listeners`.
fn setup(
    tag: &str,
    groups_and_listeners: &str,
) -> Option<(Topology, LbDaemon, Vec<lb_tests::Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(tag, 3, TopologyOptions::default());
    topo.pin_neighbors();
    let backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let daemon = LbDaemon::start(topo.lb(), &instance, &config(&topo, groups_and_listeners));
    Some((topo, daemon, backends))
}

fn config(topo: &Topology, groups_and_listeners: &str) -> String {
    format!(
        "instance: {}i\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n{groups_and_listeners}",
        topo.prefix(),
        topo.lb_client_if(),
        topo.lb_backend_if()
    )
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

/// Runs `lb-ctl ARGS` and asserts that it is refused with exit code 2 and a message on
/// stderr containing every one of `needles`; returns stderr.
fn refused(daemon: &LbDaemon, args: &[&str], needles: &[&str]) -> String {
    let out = daemon.ctl(args);
    let what = describe(args, &out);
    assert_eq!(out.status.code(), Some(2), "exit code 2 expected: {what}");
    let stderr = text(&out.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "the refusal should say {needle:?}: {what}"
        );
    }
    stderr
}

/// The listener named `name` in a `status --json` answer.
fn listener<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no listener {name} in status: {status:#}"))
}

/// The backend at `addr` of listener `listener_name` in a `status --json` answer.
fn backend<'a>(status: &'a Value, listener_name: &str, addr: &str) -> Option<&'a Value> {
    listener(status, listener_name)["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .find(|b| b["address"] == addr)
}

fn backend_addrs(status: &Value, listener_name: &str) -> BTreeSet<String> {
    listener(status, listener_name)["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]))
        .collect()
}

/// What `status` says about the maps, without counters or probe timings: every listener
/// with its group, scheduler and backends (address, port, role, weights, state, origin,
/// id), plus the overlay size and conflicts.
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
                        "weight": b["weight"], "effective_weight": b["effective_weight"],
                        "state": b["state"], "origin": b["origin"], "backend_id": b["backend_id"],
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

/// Requests per batch of steady traffic, and how many run at once.
const BATCH: usize = 40;
const BATCH_PARALLEL: usize = 4;

/// Batches of `BATCH` new connections; each request may take 5 s (3 s to connect, so a
/// lost SYN is retried once); at most 500 batches (so 500 × 40 requests) or 40 s.
fn steady() -> Steady {
    Steady::new(SteadyOptions {
        batch: BATCH,
        parallel: BATCH_PARALLEL,
        requests: BulkOptions {
            max_time: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(30),
        },
        max_batches: 500,
        max_time: Duration::from_secs(40),
    })
}

/// A long-lived HTTP connection from the client: `curl /stream?seconds=N`, which gets one
/// line `NAME i` every 100 ms for N seconds over one TCP connection.
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

    /// Waits until the stream has delivered its first line and returns the backend name.
    fn backend(&self) -> String {
        self.child.wait_for_output(" 0\n", Duration::from_secs(5));
        let out = self.child.stdout();
        out.split_whitespace().next().unwrap_or_default().to_owned()
    }

    /// Waits for the end and checks that curl succeeded and every line arrived, in order,
    /// from one backend; returns that backend's name.
    fn finish(mut self) -> String {
        let out = self
            .child
            .wait_output(Duration::from_secs(self.seconds + 20))
            .unwrap_or_else(|| panic!("the stream did not end: {}", self.child.stdout()));
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "the long-lived connection failed ({}): {}\nreceived: {} line(s), last {:?}",
            out.status,
            text(&out.stderr).trim_end(),
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
        assert_eq!(
            lines, expected,
            "the stream delivered every line, in order, from one backend"
        );
        name
    }
}

/// 1. A server added under steady traffic takes its share of new connections; no request
///    fails before, during or after the change.
#[test]
fn server_added_under_steady_traffic_takes_new_connections_without_failures() {
    let Some((topo, daemon, backends)) = setup(
        "cadd",
        "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
    ) else {
        return;
    };
    let steady = steady();
    let url = url(80);
    let (batches, added_at) = thread::scope(|s| {
        let traffic = s.spawn(|| steady.run(topo.client(), &url));
        let _stop = steady.stop_on_drop();
        steady.wait(20, Duration::from_secs(1));
        let out = daemon.ctl_ok(&["server", "add", "--group", "app", &format!("{B3}:8080")]);
        let added_at = Instant::now();
        assert!(out.contains("done"), "server add answered: {out}");
        steady.wait(30, Duration::from_secs(2));
        drop(_stop);
        (traffic.join().expect("traffic thread"), added_at)
    });
    let all = merged(&batches);
    assert_eq!(
        all.failed(),
        0,
        "no request fails while a server is added: {all}\n{}",
        daemon.log()
    );
    let before = merged(batches.iter().filter(|b| b.started < added_at));
    let after = merged(batches.iter().filter(|b| b.started >= added_at));
    eprintln!("server add: before {before} | after {after}");
    assert!(
        before.total() >= 2 * BATCH && after.total() >= 4 * BATCH,
        "traffic ran before ({}) and after ({}) the change",
        before.total(),
        after.total()
    );
    assert!(
        before.count("b3") <= BATCH,
        "b3 was not in the group before the add (at most the batch running across the \
         change reaches it): {before}"
    );
    let share = after.count("b3") as f64 / after.total() as f64;
    assert!(
        (0.25..=0.42).contains(&share),
        "b3 takes about a third of the connections opened after the add, got {:.0} %: {after}",
        share * 100.0
    );
    let client = std::net::IpAddr::V4(topo.client_addr());
    assert!(
        backends[2].peers().get(&client).copied().unwrap_or(0) as usize >= after.count("b3"),
        "b3 saw the connections from the client"
    );
    let status = daemon.status();
    let b3 = backend(&status, "web", B3).unwrap_or_else(|| panic!("b3 in status: {status:#}"));
    assert_eq!(b3["origin"], "api", "{b3}");
    assert_eq!(b3["weight"], 100, "{b3}");
}

/// 2. Weight 0 quiesces a server: its long-lived connection keeps streaming, it gets no
///    new connection; once that connection has closed, `server remove`: no failure.
#[test]
fn weight_zero_keeps_the_long_connection_and_takes_no_new_ones_then_remove() {
    // b2 starts at weight 0, so the long connection is known to land on b1.
    let Some((topo, daemon, backends)) = setup(
        "cw0",
        "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080, weight: 0 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n",
    ) else {
        return;
    };
    let stream = LongStream::start(topo.client(), 80, 8);
    assert_eq!(stream.backend(), "b1", "the long connection is on b1");

    daemon.ctl_ok(&[
        "server",
        "set",
        "--group",
        "app",
        &format!("{B2}:8080"),
        "--weight",
        "100",
    ]);
    daemon.ctl_ok(&[
        "server",
        "set",
        "--group",
        "app",
        &format!("{B1}:8080"),
        "--weight",
        "0",
    ]);
    // Connections from the client (the health checker's probes come from the LB).
    let client = std::net::IpAddr::V4(topo.client_addr());
    let from_client = |b: &lb_tests::Backend| b.peers().get(&client).copied().unwrap_or(0);
    let b1_connections = from_client(&backends[0]);

    // New connections while the stream runs: all on b2, none failed.
    let results = curl_many(topo.client(), &url(80), 200, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}\n{}", daemon.log());
    assert_eq!(
        tally.count("b1"),
        0,
        "weight 0 takes no new connection: {tally}"
    );
    assert_eq!(
        from_client(&backends[0]),
        b1_connections,
        "b1 accepted no new connection"
    );

    // status: b1 at weight 0, draining, with its one active flow (the flow table is swept
    // every second).
    let mut status = daemon.status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while backend(&status, "web", B1).is_some_and(|b| b["active_flows"] == 0)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(200));
        status = daemon.status();
    }
    let b1 = backend(&status, "web", B1).unwrap_or_else(|| panic!("b1 in status: {status:#}"));
    assert_eq!(b1["weight"], 0, "{b1}");
    assert_eq!(b1["state"], "draining", "weight 0 shows as draining: {b1}");
    assert_eq!(b1["active_flows"], 1, "the long-lived connection: {b1}");

    // The long-lived connection delivered everything, from b1.
    assert_eq!(stream.finish(), "b1");
    // The operator's way to know: `wait drained`.
    let args = [
        "wait",
        "drained",
        "--group",
        "app",
        &format!("{B1}:8080"),
        "--timeout",
        "10",
    ];
    let out = daemon.ctl(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));

    daemon.ctl_ok(&["server", "remove", "--group", "app", &format!("{B1}:8080")]);
    let results = curl_many(topo.client(), &url(80), 100, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "after the remove: {tally}");
    assert_eq!(tally.count("b2"), 100, "only b2 remains: {tally}");
    let status = daemon.status();
    assert_eq!(
        backend_addrs(&status, "web"),
        BTreeSet::from([format!("{B2}:8080")]),
        "{status:#}"
    );
}

/// 3. `listener set NAME --group OTHER` sends new connections to the other group, with
///    steady traffic running across the switch: nothing fails before or after it; the
///    few connections open on the old group at that instant are cut (the old group's
///    servers leave the listener, and without connection drain their flows end at once)
///    or get the answer already under way, never left waiting: a request the old server
///    acknowledged before the switch and answers 1.5 s later still gets its answer.
#[test]
fn listener_set_group_moves_new_connections_to_the_other_group() {
    let Some((topo, daemon, _backends)) = setup(
        "clis",
        "vserver_groups:\n  - name: blue\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n  - name: green\n    servers:\n      - { address: 198.18.1.12, port: 8080 }\n      - { address: 198.18.1.13, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: blue }\n",
    ) else {
        return;
    };
    let results = curl_many(topo.client(), &url(80), 60, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}");
    assert_eq!(tally.count("b1"), 60, "group blue is b1 alone: {tally}");

    let steady = steady();
    let url = url(80);
    let (batches, switch_started, moved_at) = thread::scope(|s| {
        let traffic = s.spawn(|| steady.run(topo.client(), &url));
        let _stop = steady.stop_on_drop();
        steady.wait(20, Duration::from_secs(1));
        // Connected before the switch, so to b1; the request is acknowledged by b1's
        // kernel at once, its answer comes 1.5 s later, after the switch.
        let mut slow = KeepAlive::open(
            topo.client(),
            SocketAddr::from((VIP, 80)),
            Duration::from_secs(5),
        )
        .expect("a connection to the VIP");
        slow.send("/slow?ms=1500").expect("the slow request sent");
        let slow = s.spawn(move || slow.answer());
        thread::sleep(Duration::from_millis(100));
        let switch_started = Instant::now();
        daemon.ctl_ok(&["listener", "set", "web", "--group", "green"]);
        let moved_at = Instant::now();
        steady.wait(30, Duration::from_secs(2));
        drop(_stop);
        let slow = slow.join().expect("slow request thread");
        assert_eq!(
            slow.as_deref().map_err(|e| format!("{e:#}")),
            Ok("b1"),
            "the answer b1 was working on at the switch reaches the client"
        );
        (
            traffic.join().expect("traffic thread"),
            switch_started,
            moved_at,
        )
    });
    let all = merged(&batches);
    let before = merged(batches.iter().filter(|b| b.ended < switch_started));
    let across = merged(
        batches
            .iter()
            .filter(|b| b.ended >= switch_started && b.started < moved_at),
    );
    let after = merged(batches.iter().filter(|b| b.started >= moved_at));
    eprintln!("listener set --group: before {before} | across {across} | after {after}");
    assert_eq!(before.failed(), 0, "before the switch: {before}");
    assert_eq!(after.failed(), 0, "after the switch: {after}");
    assert!(
        across.failed() <= BATCH_PARALLEL
            && across
                .failures
                .iter()
                .all(|f| f.contains("reset") || f.contains("Empty reply")),
        "at most the connections open at the switch ({BATCH_PARALLEL} at a time) are cut, \
         by a reset: {across}"
    );
    assert_eq!(before.count("b1"), before.total(), "{before}");
    assert!(
        before.total() >= 10 * BATCH,
        "traffic before the switch: {before}"
    );
    assert_eq!(all.total(), batches.len() * BATCH);
    assert!(
        after.total() >= 2 * BATCH,
        "traffic after the switch: {after}"
    );
    assert_eq!(
        after.count("b1"),
        0,
        "no new connection to blue after the switch: {after}"
    );
    assert!(
        after.count("b2") >= after.total() / 4 && after.count("b3") >= after.total() / 4,
        "green's two servers share the new connections: {after}"
    );

    let status = daemon.status();
    assert_eq!(listener(&status, "web")["group"], "green", "{status:#}");
    assert_eq!(
        backend_addrs(&status, "web"),
        BTreeSet::from([format!("{B2}:8080"), format!("{B3}:8080")])
    );
    let listed = daemon.ctl_ok(&["listener", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).expect("listener list JSON");
    assert_eq!(listed[0]["server_group"], "green", "{listed:#}");
}

/// 4. The daemon SIGKILLed during steady traffic and restarted: no request fails,
///    established (a stream spanning the kill and the restart) or new; a change made with
///    the CLI before the kill is in effect after the restart, and after a cold start
///    (daemon stopped, pinned data plane torn down, daemon started again).
#[test]
fn daemon_killed_and_restarted_loses_no_request_and_keeps_runtime_changes() {
    let Some((topo, mut daemon, _backends)) = setup(
        "ckil",
        "default_server_group:\n  servers:\n    - { address: 198.18.1.11 }\n    - { address: 198.18.1.12 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }\n",
    ) else {
        return;
    };
    // Runtime changes: b3 added, b1 quiesced. New connections go to b2 and b3 only.
    daemon.ctl_ok(&["server", "add", "--group", "default", B3]);
    daemon.ctl_ok(&["server", "set", "--group", "default", B1, "--weight", "0"]);
    let check_changes = |daemon: &LbDaemon, when: &str| {
        let status = daemon.status();
        let b1 = backend(&status, "web", B1)
            .unwrap_or_else(|| panic!("{when}: b1 in status: {status:#}"));
        let b3 = backend(&status, "web", B3)
            .unwrap_or_else(|| panic!("{when}: b3 (added through the CLI) in status: {status:#}"));
        assert_eq!(
            b1["weight"], 0,
            "{when}: b1's weight set through the CLI: {b1}"
        );
        assert_eq!(b3["origin"], "api", "{when}: {b3}");
        assert_eq!(b3["weight"], 100, "{when}: {b3}");
        assert_eq!(status["overlay_changes"], 2, "{when}: {status:#}");
    };
    check_changes(&daemon, "before the kill");

    let stream = LongStream::start(topo.client(), 80, 10);
    let streaming_from = stream.backend();
    assert!(
        ["b2", "b3"].contains(&streaming_from.as_str()),
        "the stream is on b2 or b3, not {streaming_from}"
    );

    let steady = steady();
    let url = url(80);
    let (batches, killed_at, restarted_at) = thread::scope(|s| {
        let traffic = s.spawn(|| steady.run(topo.client(), &url));
        let _stop = steady.stop_on_drop();
        steady.wait(10, Duration::from_secs(1));
        daemon.kill();
        let killed_at = Instant::now();
        // The outage: no daemon at all; traffic goes on through the pinned program.
        steady.wait(20, Duration::from_secs(2));
        let out = daemon.ctl(&["status"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "no daemon answers: {}",
            describe(&["status"], &out)
        );
        daemon.restart();
        let restarted_at = Instant::now();
        steady.wait(20, Duration::from_secs(2));
        drop(_stop);
        (
            traffic.join().expect("traffic thread"),
            killed_at,
            restarted_at,
        )
    });
    let log = daemon.log();
    let all = merged(&batches);
    assert_eq!(
        all.failed(),
        0,
        "no request fails across the kill and the restart: {all}\ndaemon log after restart:\n{log}"
    );
    let outage = merged(
        batches
            .iter()
            .filter(|b| b.started >= killed_at && b.started < restarted_at),
    );
    let after = merged(batches.iter().filter(|b| b.started >= restarted_at));
    eprintln!("kill and restart: outage {outage} | after the restart {after} | all {all}");
    assert!(
        outage.total() >= BATCH,
        "traffic ran during the outage: {outage}"
    );
    assert!(
        after.total() >= BATCH,
        "traffic ran after the restart: {after}"
    );
    assert_eq!(
        all.count("b1"),
        0,
        "weight 0 (set before the kill) holds throughout: {all}"
    );
    assert!(
        outage.count("b3") > 0 && after.count("b3") > 0,
        "b3 (added before the kill) takes connections during the outage ({outage}) and after \
         the restart ({after})"
    );
    check_changes(&daemon, "after the restart");
    let modes = |daemon: &LbDaemon| -> Vec<String> {
        let status = daemon.status();
        let ifaces = status["interfaces"].as_array().expect("interfaces").clone();
        assert_eq!(ifaces.len(), 2, "{status:#}");
        ifaces
            .iter()
            .map(|i| i["mode"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    // The mode in force, as the kernel reports it for the re-adopted links: veth runs
    // XDP natively.
    assert_eq!(
        modes(&daemon),
        ["native", "native"],
        "the restarted daemon shows the mode of the re-adopted links"
    );
    assert!(
        daemon.log().contains("data plane re-adopted"),
        "the restarted daemon re-adopted the pinned data plane:\n{}",
        daemon.log()
    );
    // The established connection lived through it all.
    assert_eq!(stream.finish(), streaming_from);

    // Cold start: stop, remove the pinned data plane, start from nothing but the config
    // file and the state file.
    daemon.stop();
    let out = daemon.teardown();
    assert!(out.status.success(), "{}", describe(&["teardown"], &out));
    assert!(
        !daemon.pin_dir().exists(),
        "teardown removed {}",
        daemon.pin_dir().display()
    );
    daemon.restart();
    check_changes(&daemon, "after a cold start");
    assert_eq!(
        modes(&daemon),
        ["native", "native"],
        "a cold start attaches afresh, natively on veth"
    );
    let results = curl_many(topo.client(), &url, 150, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(
        tally.failed(),
        0,
        "after a cold start: {tally}\n{}",
        daemon.log()
    );
    assert_eq!(tally.count("b1"), 0, "b1 still at weight 0: {tally}");
    assert!(
        tally.count("b2") >= 40 && tally.count("b3") >= 40,
        "b2 and b3 share the connections: {tally}"
    );
}

const GOOD_CONFIG: &str = "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n";

/// Five errors of five kinds, in an edit of `GOOD_CONFIG` that, applied even in part,
/// would change where traffic goes (b3 joins, weights change, listeners appear).
const BAD_CONFIG: &str = "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080, weight: 250 }\n      - { address: 198.18.1.12, port: 8080, wieght: 10 }\n      - { address: 198.18.1.13, port: \"http\" }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n  - { name: web-too, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app }\n  - { name: api, protocol: tcp, address: 198.19.0.100, port: 81, server_group: ap }\n";

/// The path each error of `BAD_CONFIG` must be reported at.
const BAD_PATHS: [&str; 5] = [
    "vserver_groups[0].servers[0].weight",
    "vserver_groups[0].servers[1].wieght",
    "vserver_groups[0].servers[2].port",
    "listeners[1]",
    "listeners[2].server_group",
];

/// 5. A config with five errors of different kinds: `validate` lists all five with their
///    paths in one run and exits 2; `reload` with it in place exits 2 with the errors and
///    changes nothing in the maps (status and traffic identical).
#[test]
fn config_with_five_errors_is_listed_in_full_and_reload_changes_nothing() {
    let Some((topo, daemon, _backends)) = setup("cval", GOOD_CONFIG) else {
        return;
    };
    let bad = config(&topo, BAD_CONFIG);
    let bad_path = daemon.state_dir().with_file_name("bad.yaml");
    fs::write(&bad_path, &bad).expect("writing bad.yaml");
    let bad_arg = bad_path.to_string_lossy().into_owned();

    // validate: offline, all five at once, each with its path.
    let out = daemon.ctl(&["validate", &bad_arg]);
    let what = describe(&["validate", &bad_arg], &out);
    assert_eq!(out.status.code(), Some(2), "{what}");
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(report.contains("5 error(s)"), "five errors counted: {what}");
    for path in BAD_PATHS {
        assert!(
            report.lines().any(|l| l.starts_with(&format!("{path}:"))),
            "an error line starting with `{path}:`: {what}"
        );
    }
    let mentions = |needle: &str| {
        assert!(
            report.contains(needle),
            "the report mentions {needle:?}: {what}"
        );
    };
    mentions("unknown field `wieght`");
    mentions("250 is not in 0..=100");
    mentions("`http`");
    mentions("`ap`");
    mentions("198.19.0.100:80");

    // Before: status, export and traffic.
    let shape_before = status_shape(&daemon.status());
    let export_before = daemon.ctl_ok(&["export"]);
    let before = all_answered(
        topo.client(),
        &url(80),
        100,
        None,
        4,
        "every request answered",
    );
    assert_eq!(before.backends(), ["b1", "b2"], "{before}");

    // reload with the bad config in place: refused with the same five errors.
    daemon.write_config(&bad);
    let out = daemon.ctl(&["reload"]);
    let what = describe(&["reload"], &out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "reload refuses the config: {what}"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nothing was changed"), "{what}");
    for path in BAD_PATHS {
        assert!(
            stderr.contains(&format!("{path}:")),
            "reload reports `{path}`: {what}"
        );
    }

    // After: the same maps, the same answers.
    assert_eq!(
        status_shape(&daemon.status()),
        shape_before,
        "status unchanged by the refused reload"
    );
    assert_eq!(
        daemon.ctl_ok(&["export"]),
        export_before,
        "export unchanged"
    );
    let after = all_answered(
        topo.client(),
        &url(80),
        100,
        None,
        4,
        "every request answered",
    );
    assert_eq!(
        after.backends(),
        ["b1", "b2"],
        "same backends after: {after}"
    );
    for name in ["b1", "b2"] {
        assert!(
            after.count(name) >= 35,
            "weights unchanged (about 50/50): {after}"
        );
    }
    let failed = Tally::of(&curl_many(topo.client(), &url(81), 5, None, 1));
    assert_eq!(
        failed.answered(),
        0,
        "no listener on :81 appeared: {failed}"
    );

    // The good config back: reload accepted, nothing to change.
    daemon.write_config(&config(&topo, GOOD_CONFIG));
    let out = daemon.ctl_ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(status_shape(&daemon.status()), shape_before);
}

/// The modifiability rules through the CLI: each refusal exits 2 and names the rule, and
/// a refused change leaves the effective state alone. Then `export` re-validates.
#[test]
fn refused_changes_exit_2_with_the_rule_and_export_revalidates() {
    let Some((topo, daemon, _backends)) = setup(
        "cref",
        "default_server_group:\n  servers:\n    - { address: 198.18.1.11 }\nvserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.12, port: 8080 }\n  - name: spare\n    servers: []\nprimary_secondary_groups:\n  - name: db\n    primary: { address: 198.18.1.11, port: 8080 }\n    secondary: { address: 198.18.1.12, port: 8080 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }\n  - { name: api, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app }\n  - { name: db, protocol: tcp, address: 198.19.0.100, port: 82, server_group: db }\n",
    ) else {
        return;
    };
    let export_before = daemon.ctl_ok(&["export"]);

    refused(
        &daemon,
        &["server", "add", "--group", "db", &format!("{B3}:8080")],
        &["db", "exactly two members"],
    );
    refused(
        &daemon,
        &["server", "remove", "--group", "db", &format!("{B2}:8080")],
        &["db", "exactly two members"],
    );
    refused(
        &daemon,
        &[
            "server",
            "set",
            "--group",
            "db",
            &format!("{B1}:8080"),
            "--weight",
            "50",
        ],
        &["weights do not apply to primary/secondary"],
    );
    refused(
        &daemon,
        &["group", "delete", "app"],
        &["in use by listener(s) api"],
    );
    refused(
        &daemon,
        &["group", "delete", "default"],
        &["default server group cannot be deleted"],
    );
    refused(
        &daemon,
        &["group", "create", "default", "--type", "vserver"],
        &["default server group"],
    );
    // Refused by the CLI's parser, before any request: the message names the range.
    refused(
        &daemon,
        &[
            "server",
            "set",
            "--group",
            "app",
            &format!("{B2}:8080"),
            "--weight",
            "101",
        ],
        &["0..=100"],
    );
    refused(
        &daemon,
        &[
            "listener",
            "add",
            "new",
            "--protocol",
            "tcp",
            "--address",
            "198.19.0.100",
            "--port",
            "90",
        ],
        &["must set a backend port", "--backend-port"],
    );
    refused(
        &daemon,
        &[
            "listener",
            "add",
            "new",
            "--protocol",
            "tcp",
            "--address",
            "198.19.0.100",
            "--port",
            "90",
            "--group",
            "app",
            "--backend-port",
            "8080",
        ],
        &["backend_port is only for the default group"],
    );
    refused(
        &daemon,
        &[
            "listener",
            "set",
            "web",
            "--group",
            "default",
            "--backend-port",
            "9090",
        ],
        &["backend port is fixed"],
    );
    refused(
        &daemon,
        &["server", "add", "--group", "default", &format!("{B3}:8080")],
        &["no port"],
    );
    refused(
        &daemon,
        &["server", "add", "--group", "nosuch", B3],
        &["no server group `nosuch`"],
    );

    assert_eq!(
        daemon.ctl_ok(&["export"]),
        export_before,
        "refused changes left the effective state alone"
    );
    assert_eq!(daemon.status()["overlay_changes"], 0);

    // The listeners still answer as configured.
    for (port, want) in [(80, "b1"), (81, "b2"), (82, "b1")] {
        let tally = Tally::of(&curl_many(topo.client(), &url(port), 10, None, 2));
        assert_eq!(tally.count(want), 10, "port {port} → {want}: {tally}");
    }

    // Accepted changes, then export: the file re-validates and carries them.
    daemon.ctl_ok(&["group", "delete", "spare"]);
    daemon.ctl_ok(&[
        "server",
        "add",
        "--group",
        "app",
        &format!("{B3}:8080"),
        "--weight",
        "40",
    ]);
    let exported = daemon.ctl_ok(&["export"]);
    let path = daemon.state_dir().with_file_name("exported.yaml");
    fs::write(&path, &exported).expect("writing exported.yaml");
    let path = path.to_string_lossy().into_owned();
    let out = daemon.ctl(&["validate", &path]);
    assert!(
        out.status.success(),
        "the exported config validates: {}\n--- exported ---\n{exported}",
        describe(&["validate", &path], &out)
    );
    assert!(
        exported.contains(B3),
        "export carries the added server:\n{exported}"
    );
    assert!(
        !exported.contains("spare"),
        "export drops the deleted group:\n{exported}"
    );
}
