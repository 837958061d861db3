//! Active/standby in NAT mode with keepalived, as docs/operations.md ("Active/standby with
//! keepalived") sets it up: two LB hosts with the same config, keepalived moving the VIP
//! and the backends' gateway together, `lb-ctl check` as its health script.
//!
//! Topology: `lb_tests::pair` (a client, two LB hosts on a client and a backend segment,
//! three backends whose default gateway is keepalived's virtual address).
//!
//! One test, in phases, each the situation an operator meets:
//! 1. a runtime change on the master reaches the standby the documented way (`lb-ctl
//!    export` there, `lb-ctl reload` here);
//! 2. the master's daemon dies: `lb-ctl check` fails, keepalived hands the addresses to the
//!    standby, and 50 live `tch` connections continue there (picked up through the same
//!    Maglev table);
//! 3. the daemon comes back: the master takes the addresses back (its flow table survived
//!    in the pinned maps), the connections continue;
//! 4. the master dies whole (its links cut, keepalived and the daemon killed): the standby
//!    takes over within keepalived's timers, new connections succeed, and the 50 continue.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    LbDaemon, VIP, all_answered,
    client::KeepAlive,
    pair::{BACKEND_IF, CLIENT_IF, Pair, backend_addr},
    require_root_and_bpf,
};

const PORT: u16 = 8080;
const CONNECTIONS: usize = 50;
/// keepalived's advertisement interval is 1 s: a standby declares the master dead after
/// three silent intervals (and a skew under one); a failed check takes two 1 s runs.
const TAKEOVER_BOUND: Duration = Duration::from_secs(8);

fn config(instance: &str, servers: usize) -> String {
    let mut c = format!(
        "instance: {instance}\ninterfaces: [{CLIENT_IF}, {BACKEND_IF}]\nflow_table_size: 65536\n\
         max_listeners: 8\nmax_backends: 256\nvserver_groups:\n  - name: web\n    servers:\n"
    );
    for k in 1..=servers {
        c.push_str(&format!(
            "      - {{ address: {}, port: {PORT} }}\n",
            backend_addr(k)
        ));
    }
    c.push_str(&format!(
        "listeners:\n  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, \
         server_group: web, scheduler: tch }}\n"
    ));
    c
}

/// Waits until LB host `k` holds the VIP and the other does not; returns how long it took.
fn wait_master(pair: &Pair, k: usize, bound: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let other = 3 - k;
    while !pair.holds_vip(k) || pair.holds_vip(other) {
        assert!(
            started.elapsed() < bound,
            "{what}: LB host {k} did not become master within {bound:?} (host 1 has the VIP: \
             {}, host 2: {})",
            pair.holds_vip(1),
            pair.holds_vip(2)
        );
        thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// One request on every connection: which backend answered each, or what failed.
fn round(connections: &mut [KeepAlive]) -> Vec<Result<String, String>> {
    connections
        .iter_mut()
        .map(|c| c.get().map_err(|e| format!("{e:#}")))
        .collect()
}

fn assert_same_backends(
    before: &[Result<String, String>],
    now: &[Result<String, String>],
    what: &str,
) {
    let failed = now.iter().filter(|r| r.is_err()).count();
    let moved = before
        .iter()
        .zip(now)
        .filter(|(b, n)| n.is_ok() && b != n)
        .count();
    assert_eq!(
        (failed, moved),
        (0, 0),
        "{what}: of {CONNECTIONS} live connections, {failed} failed and {moved} reached \
         another backend: {now:?}"
    );
}

/// 20 new connections to the VIP, four at a time: none may fail.
fn new_connections_succeed(pair: &Pair, what: &str) {
    all_answered(
        pair.client(),
        &format!("http://{VIP}:80/"),
        20,
        None,
        4,
        &format!("new connections {what}"),
    );
}

#[test]
fn the_standby_takes_over_and_live_tch_connections_survive() {
    if !require_root_and_bpf("e2e_keepalived") {
        return;
    }
    let pair = Pair::build("ka", 3);
    let _backends = pair.start_backends(PORT);
    // Two instance names only because both hosts share this machine's bpffs; two real
    // hosts use one name and one file.
    let instances = [format!("{}a", pair.prefix()), format!("{}b", pair.prefix())];
    let mut daemons: Vec<LbDaemon> = (1..=2)
        .map(|k| LbDaemon::start(pair.lb(k), &instances[k - 1], &config(&instances[k - 1], 2)))
        .collect();
    for (k, d) in daemons.iter().enumerate() {
        let out = d.ctl(&["check"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("serving:"),
            "lb-ctl check on host {}: {text}",
            k + 1
        );
    }
    let mut keepalived: Vec<_> = (1..=2)
        .map(|k| pair.keepalived(k, &daemons[k - 1].socket()))
        .collect();
    let took = wait_master(&pair, 1, Duration::from_secs(15), "start");
    println!("host 1 master {took:?} after keepalived started");

    // 1. A runtime change on the master, carried to the standby: export there, reload here.
    daemons[0].ctl_ok(&[
        "server",
        "add",
        "--group",
        "web",
        &format!("{}:{PORT}", backend_addr(3)),
    ]);
    let exported = daemons[0].ctl_ok(&["export"]);
    daemons[1].write_config(&exported.replace(&instances[0], &instances[1]));
    daemons[1].ctl_ok(&["reload"]);
    let standby = daemons[1].status();
    let servers = standby["listeners"][0]["backends"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        servers, 3,
        "the standby has the server added on the master: {standby:#}"
    );

    // 50 live connections through the master, spread over the three backends by tch.
    let to = SocketAddr::from((VIP, 80));
    let mut connections: Vec<KeepAlive> = (0..CONNECTIONS)
        .map(|i| {
            KeepAlive::open(pair.client(), to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connection {i}: {e:#}"))
        })
        .collect();
    let first = round(&mut connections);
    assert!(
        first.iter().all(Result::is_ok),
        "through the master: {first:?}"
    );
    let spread: std::collections::BTreeSet<_> = first.iter().flatten().collect();
    assert!(spread.len() >= 2, "tch spread the connections: {spread:?}");

    // 2. The master's daemon dies; its health script fails and the standby takes over.
    daemons[0].kill();
    let took = wait_master(&pair, 2, TAKEOVER_BOUND, "the master's daemon killed");
    println!("host 2 master {took:?} after host 1's daemon was killed");
    assert_same_backends(&first, &round(&mut connections), "on the standby");
    new_connections_succeed(&pair, "through the standby");

    // 3. The daemon comes back (re-adopting its pinned data plane): host 1, of higher
    // priority, takes the addresses back; its flow table still has the 50 flows.
    daemons[0].restart();
    let took = wait_master(&pair, 1, Duration::from_secs(15), "the daemon restarted");
    println!("host 1 master again {took:?} after its daemon restarted");
    assert_same_backends(&first, &round(&mut connections), "back on host 1");

    // 4. Host 1 dies whole: links cut, keepalived and the daemon killed.
    pair.cut_lb(1);
    keepalived[0].kill();
    daemons[0].kill();
    let took = wait_master(&pair, 2, TAKEOVER_BOUND, "host 1 cut off");
    println!("host 2 master {took:?} after host 1 was cut off");
    new_connections_succeed(&pair, "after the takeover");
    assert_same_backends(&first, &round(&mut connections), "after host 1 died");
    drop(keepalived);
}
