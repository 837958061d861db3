//! End to end over IPv6: the client, LB and backend namespaces with IPv6 addresses only
//! (2001:db8::/32), `lb-ctl daemon` with an IPv6 VIP, real curl and UDP traffic. Each
//! test asserts what a user sees: which backend answered, how many requests failed, what
//! `lb-ctl` says.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    Family, LbDaemon, Tally, Topology, TopologyOptions, all_answered_from, curl_many_from,
    http_url, require_root_and_bpf, topology::VIP6, udp_request_from,
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// A three-backend IPv6 topology (dual stack with `dual`), backends started, and a
/// daemon with `groups_and_listeners` appended to a config that attaches to the LB's two
/// interfaces.
fn setup(
    tag: &str,
    client_addresses: usize,
    family: Family,
    groups_and_listeners: &str,
) -> Option<(Topology, LbDaemon, Vec<lb_tests::Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(
        tag,
        3,
        TopologyOptions {
            client_addresses,
            family,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n{groups_and_listeners}",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    Some((topo, daemon, backends))
}

/// The three backends' IPv6 addresses as a vServer group `app` on `port`, with weights.
fn group6(port: u16, weights: [u32; 3]) -> String {
    let servers: String = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "      - {{ address: \"{}\", port: {port}, weight: {w} }}\n",
                lb_tests::topology::backend_addr6(i + 1)
            )
        })
        .collect();
    format!("vserver_groups:\n  - name: app\n    servers:\n{servers}")
}

#[test]
fn ipv6_wrr_spreads_connections_by_weight_and_none_fails() {
    let Some((topo, daemon, _backends)) = setup(
        "v6wrr",
        0,
        Family::Ipv6,
        &format!(
            "{}listeners:\n  - {{ name: web, protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app }}\n",
            group6(HTTP_PORT, [100, 50, 50])
        ),
    ) else {
        return;
    };
    let n = 2000;
    let results = curl_many_from(
        topo.client(),
        &http_url(VIP6, 80, "/"),
        n,
        topo.client_addr6(),
        8,
    );
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "every request answered: {tally}");
    let share = |name: &str| tally.count(name) as f64 * 100.0 / n as f64;
    for (name, want) in [("b1", 50.0), ("b2", 25.0), ("b3", 25.0)] {
        assert!(
            (share(name) - want).abs() <= 3.5,
            "{name} got {:.1} % of new connections, expected {want} ± 3.5: {tally}",
            share(name)
        );
    }
    let status = daemon.status();
    let listener = &status["listeners"][0];
    assert_eq!(listener["stats"]["new_flows"], n as u64, "{status}");
    assert!(
        listener["backends"][0]["address"]
            .as_str()
            .is_some_and(|a| a.contains(':')),
        "IPv6 backends in status: {status}"
    );
}

#[test]
fn ipv6_udp_reaches_every_backend_and_replies_come_from_the_vip() {
    let Some((topo, _daemon, _backends)) = setup(
        "v6udp",
        0,
        Family::Ipv6,
        &format!(
            "{}listeners:\n  - {{ name: dns, protocol: udp, address: \"{VIP6}\", port: 53, server_group: app, scheduler: rr }}\n",
            group6(UDP_PORT, [100, 100, 100])
        ),
    ) else {
        return;
    };
    let vip = SocketAddr::new(VIP6.into(), 53);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..30 {
        // A reply from anywhere but the VIP would not reach the connected socket.
        let answer = udp_request_from(
            topo.client(),
            vip,
            &format!("q{i}"),
            topo.client_addr6(),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        let backend = answer
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *seen.entry(backend).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "rr over three backends: {seen:?}");
}

#[test]
fn ipv6_and_ipv4_vips_serve_the_same_backends_at_once() {
    let Some((topo, daemon, _backends)) = setup(
        "dual",
        0,
        Family::DualStack,
        &format!(
            "{}  - name: app4\n    servers:\n      - {{ address: 198.18.1.11, port: {HTTP_PORT} }}\n      - {{ address: 198.18.1.12, port: {HTTP_PORT} }}\n      - {{ address: 198.18.1.13, port: {HTTP_PORT} }}\nlisteners:\n  - {{ name: web6, protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app }}\n  - {{ name: web4, protocol: tcp, address: {}, port: 80, server_group: app4 }}\n",
            group6(HTTP_PORT, [100, 100, 100]),
            lb_tests::VIP,
        ),
    ) else {
        return;
    };
    let v6 = all_answered_from(
        topo.client(),
        &http_url(VIP6, 80, "/"),
        300,
        topo.client_addr6(),
        4,
        "IPv6 VIP",
    );
    let v4 = all_answered_from(
        topo.client(),
        &http_url(lb_tests::VIP, 80, "/"),
        300,
        topo.client_addr(),
        4,
        "IPv4 VIP",
    );
    for name in ["b1", "b2", "b3"] {
        assert!(v6.count(name) > 50, "{name} over IPv6: {v6}");
        assert!(v4.count(name) > 50, "{name} over IPv4: {v4}");
    }
    let status = daemon.status();
    for l in status["listeners"].as_array().expect("listeners") {
        assert_eq!(l["stats"]["new_flows"], 300, "{l}");
    }
}

/// `curl` from `source`:`port` to `[VIP6]:vport`: the answering backend's name.
fn get_from(topo: &Topology, source: std::net::Ipv6Addr, port: u16, vport: u16) -> String {
    let (source, port) = (source.to_string(), port.to_string());
    let url = http_url(VIP6, vport, "/");
    topo.client()
        .run_ok([
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--interface",
            source.as_str(),
            "--local-port",
            port.as_str(),
            "-H",
            "Connection: close",
            url.as_str(),
        ])
        .trim()
        .to_owned()
}

/// The backend `lb-ctl explain` names for a new TCP flow from `src` to `dst`, as the
/// backends name themselves ("b1"…): their IPv6 addresses end in 11, 12, 13.
fn explained(daemon: &LbDaemon, src: &str, dst: &str) -> String {
    let out = daemon.ctl_ok(&[
        "explain",
        "--src",
        src,
        "--dst",
        dst,
        "--protocol",
        "tcp",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let backend = v["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("explain names a backend: {v}"));
    let addr: SocketAddr = backend.parse().unwrap_or_else(|e| panic!("{backend}: {e}"));
    let std::net::IpAddr::V6(a) = addr.ip() else {
        panic!("{backend} is not IPv6");
    };
    format!("b{}", a.segments()[7] - 0x10)
}

#[test]
fn ipv6_sch_keeps_each_client_on_the_backend_explain_predicts() {
    let Some((topo, daemon, _backends)) = setup(
        "v6sch",
        8,
        Family::Ipv6,
        &format!(
            "{}listeners:\n  - {{ name: sticky, protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app, scheduler: sch }}\n",
            group6(HTTP_PORT, [100, 100, 100])
        ),
    ) else {
        return;
    };
    let mut used = std::collections::BTreeSet::new();
    for (i, client) in topo.client_addrs6().iter().enumerate() {
        let port = 42000 + i as u16;
        let predicted = explained(
            &daemon,
            &format!("[{client}]:{port}"),
            &format!("[{VIP6}]:80"),
        );
        // sch: the source address decides, whatever the port.
        for p in [port, port + 500] {
            assert_eq!(
                get_from(&topo, *client, p, 80),
                predicted,
                "sch from [{client}]:{p}"
            );
        }
        used.insert(predicted);
    }
    assert!(used.len() >= 2, "clients spread over backends: {used:?}");
}

/// Weight 0 takes a backend out of new flows (an open connection goes on); a backend
/// that stops answering its health checks is taken out and new connections fail over
/// to the others; drained past its timeout, a backend's connection is reset by the LB.
#[test]
fn ipv6_weight_zero_failover_and_drain_behave_as_over_ipv4() {
    let Some((topo, daemon, mut backends)) = setup(
        "v6ops",
        0,
        Family::Ipv6,
        &format!(
            "{}listeners:\n  - {{ name: web, protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app, health_check: {{ interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2 }} }}\n",
            group6(HTTP_PORT, [100, 100, 100])
        ),
    ) else {
        return;
    };
    let url = http_url(VIP6, 80, "/");
    let src = topo.client_addr6();
    let server = |k: usize| format!("[{}]:{HTTP_PORT}", lb_tests::topology::backend_addr6(k));

    // Weight 0: new connections avoid b1.
    daemon.ctl_ok(&[
        "server",
        "set",
        "--group",
        "app",
        &server(1),
        "--weight",
        "0",
    ]);
    let tally = all_answered_from(topo.client(), &url, 150, src, 4, "at weight 0");
    assert_eq!(tally.count("b1"), 0, "weight 0 takes no new flows: {tally}");
    daemon.ctl_ok(&[
        "server",
        "set",
        "--group",
        "app",
        &server(1),
        "--weight",
        "100",
    ]);

    // Failover: b2's HTTP server stops; health checks take it out.
    backends[1].stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = daemon.status();
        let down = status["listeners"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .any(|b| {
                b["address"] == lb_tests::topology::backend_addr6(2).to_string()
                    && b["state"] == "down"
            });
        if down {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b2 never marked down: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tally = all_answered_from(topo.client(), &url, 150, src, 4, "after b2 failed");
    assert_eq!(tally.count("b2"), 0, "{tally}");
    assert!(tally.count("b1") > 0 && tally.count("b3") > 0, "{tally}");

    // Drain: a connection held open on b3 past the 2 s drain timeout is reset.
    let mut stream = lb_tests::client::KeepAlive::open(
        topo.client(),
        SocketAddr::new(VIP6.into(), 80),
        Duration::from_secs(3),
    )
    .expect("a connection");
    let mut on = stream.get().expect("first request");
    let mut tries = 0;
    while on != "b3" && tries < 30 {
        stream = lb_tests::client::KeepAlive::open(
            topo.client(),
            SocketAddr::new(VIP6.into(), 80),
            Duration::from_secs(3),
        )
        .expect("a connection");
        on = stream.get().expect("first request");
        tries += 1;
    }
    assert_eq!(on, "b3", "a connection on b3 within 30 tries");
    daemon.ctl_ok(&[
        "server",
        "drain",
        "--group",
        "app",
        &server(3),
        "--timeout",
        "2",
    ]);
    stream
        .get()
        .expect("the drained server's connection goes on before its timeout");
    std::thread::sleep(Duration::from_secs(3));
    let cut = stream.get();
    assert!(
        cut.is_err(),
        "the connection is cut after the drain timeout: {cut:?}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["stats", "--json"])).expect("stats json");
    assert!(
        stats["reasons"]["reset_drain_expired"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "the LB answered with a RST: {:#}",
        stats["reasons"]
    );
}
