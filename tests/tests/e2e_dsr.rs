//! Direct server return end to end, as it is deployed: a router in front, LB hosts and
//! backends on one switch (`lb_tests::fabric`), `lb-ctl daemon` with `forwarding: dsr` on
//! each LB host, `lb-ctl decap attach` on each backend, real curl and UDP traffic from a
//! client behind the router. The backends answer through the router, never an LB host.
//! The same over IPv6 only (`Fabric::build6`): ip6ip6 and GUE over IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    Family, LbDaemon, Tally,
    client::{KeepAlive, exchange, rounds},
    curl_many,
    fabric::{Decap, Fabric, HOST_IF},
    http_url, require_root_and_bpf, udp_request,
};

const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
/// The web listener's checks: a backend is down within about two seconds.
const CHECKS: &str = "{ interval: 1, timeout: 1, unhealthy_threshold: 2, healthy_threshold: 2 }";

/// A fabric of `n_lbs` LB hosts (the router's VIP route through all of them) and
/// `n_backends` backends running decap (with `decap_args`) and a server; a daemon with
/// `dsr` settings and a `scheduler` on each LB host.
struct Dsr {
    fabric: Fabric,
    daemons: Vec<LbDaemon>,
    decaps: Vec<Decap>,
    _servers: Vec<lb_tests::Backend>,
}

fn setup(
    tag: &str,
    n_lbs: usize,
    n_backends: usize,
    dsr: &str,
    scheduler: &str,
    decap_args: &[&str],
) -> Option<Dsr> {
    setup_family(
        tag,
        Family::Ipv4,
        n_lbs,
        n_backends,
        dsr,
        scheduler,
        decap_args,
    )
}

/// [`setup`] on a fabric of `family` (IPv4 or IPv6 only).
fn setup_family(
    tag: &str,
    family: Family,
    n_lbs: usize,
    n_backends: usize,
    dsr: &str,
    scheduler: &str,
    decap_args: &[&str],
) -> Option<Dsr> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let fabric = match family {
        Family::Ipv6 => Fabric::build6(tag, n_lbs, n_backends),
        _ => Fabric::build(tag, n_lbs, n_backends),
    };
    let vip = fabric.vip();
    fabric.pin_neighbors();
    let servers = fabric.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    let decaps = (1..=n_backends)
        .map(|k| fabric.attach_decap(k, decap_args))
        .collect();
    let servers_yaml: String = (1..=n_backends)
        .map(|k| format!("    - {{ address: \"{}\" }}\n", fabric.backend_address(k)))
        .collect();
    let daemons = (1..=n_lbs)
        .map(|k| {
            let instance = format!("{}i{k}", fabric.prefix());
            let config = format!(
                "instance: {instance}\ninterfaces: [{HOST_IF}]\nflow_table_size: 65536\n\
                 forwarding: dsr\ndsr: {dsr}\ndefault_server_group:\n  servers:\n{servers_yaml}\
                 listeners:\n  - {{ name: web, protocol: tcp, address: \"{vip}\", port: {HTTP_PORT}, \
                 backend_port: {HTTP_PORT}, scheduler: {scheduler}, health_check: {CHECKS} }}\n  \
                 - {{ name: dns, protocol: udp, address: \"{vip}\", port: {UDP_PORT}, backend_port: \
                 {UDP_PORT} }}\n"
            );
            LbDaemon::start(fabric.lb(k), &instance, &config)
        })
        .collect();
    fabric.route_vip_via(&(1..=n_lbs).collect::<Vec<_>>());
    Some(Dsr {
        fabric,
        daemons,
        decaps,
        _servers: servers,
    })
}

impl Dsr {
    fn url(&self) -> String {
        http_url(self.fabric.vip(), HTTP_PORT, "/")
    }
}

#[test]
fn dsr_ipip_backends_answer_clients_directly_and_none_fails() {
    let Some(dsr) = setup("dsr", 1, 2, "{ encapsulation: ipip }", "wrr", &[]) else {
        return;
    };
    let client = dsr.fabric.client();
    let results = curl_many(client, &dsr.url(), 400, None, 8);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "every request answered: {tally}");
    for name in ["b1", "b2"] {
        assert!(tally.count(name) >= 150, "{name} served its share: {tally}");
    }
    let answer = udp_request(
        client,
        SocketAddr::new(dsr.fabric.vip(), UDP_PORT),
        "hello",
        None,
        Duration::from_secs(2),
    )
    .expect("a UDP answer");
    assert!(answer.ends_with("hello"), "{answer}");

    let lb = &dsr.daemons[0];
    // Each connection's client packets went through the tunnel; no reply through the LB.
    assert!(
        lb.reason_count("encapsulated") >= 400 * 3,
        "SYN, request and FIN of each"
    );
    assert_eq!(lb.reason_count("reply_forwarded"), 0);
    let decapsulated: u64 = dsr
        .decaps
        .iter()
        .map(|d| {
            d.counters(&dsr.fabric)["decapsulated_ipip"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert!(
        decapsulated >= 400 * 3,
        "the backends stripped them: {decapsulated}"
    );
}

#[test]
fn dsr_gue_from_a_source_prefix_is_decapsulated_on_its_port() {
    let Some(dsr) = setup(
        "gue",
        1,
        2,
        "{ encapsulation: gue, gue_port: 6080, source: 198.18.9.0/24 }",
        "tch",
        &["--gue-port", "6080", "--allow-source", "198.18.9.0/24"],
    ) else {
        return;
    };
    let results = curl_many(dsr.fabric.client(), &dsr.url(), 200, None, 8);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "every request answered: {tally}");
    assert_eq!(tally.backends().len(), 2, "{tally}");
    for d in &dsr.decaps {
        let c = d.counters(&dsr.fabric);
        assert!(c["decapsulated_gue"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["drop_source_refused"], 0, "{c}");
    }
}

/// The reason several LB hosts can serve one VIP: with `tch` every host picks the same
/// backend for a 4-tuple, so a connection whose packets move to another LB host (the
/// router's ECMP set changed) goes on. 50 long-lived connections, a request on each
/// every 100 ms; the router's route loses one LB host, then gets it back.
#[test]
fn dsr_connections_survive_moving_between_lb_hosts_with_tch() {
    let Some(dsr) = setup("mov", 2, 3, "{ encapsulation: ipip }", "tch", &[]) else {
        return;
    };
    let to = SocketAddr::new(dsr.fabric.vip(), HTTP_PORT);
    let mut connections: Vec<KeepAlive> = (0..50)
        .map(|i| {
            KeepAlive::open(dsr.fabric.client(), to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    let mut first_backend = Vec::new();
    for c in &mut connections {
        first_backend.push(c.get().expect("first request"));
    }
    // Five requests on every connection, 100 ms apart; a connection fails once.
    let mut round = |label: &str| {
        let failed = exchange(&mut connections, &first_backend, rounds(5));
        assert!(
            failed.is_empty(),
            "{label}: {} of 50 connections failed: {failed:?}",
            failed.len()
        );
    };
    round("through both LB hosts");
    let before: Vec<u64> = dsr
        .daemons
        .iter()
        .map(|d| d.reason_count("encapsulated"))
        .collect();
    assert!(
        before.iter().all(|n| *n > 0),
        "ECMP used both LB hosts: {before:?}"
    );
    dsr.fabric.route_vip_via(&[2]);
    round("after LB host 1 left the route");
    let picked_up = dsr.daemons[1].reason_count("event_pickup");
    assert!(picked_up > 0, "LB host 2 picked up LB host 1's connections");
    dsr.fabric.route_vip_via(&[1, 2]);
    round("after LB host 1 came back");
}

/// The health of backend `address` of listener `web`, as `lb-ctl status` shows it.
fn web_health(daemon: &LbDaemon, address: IpAddr) -> String {
    let status = daemon.status();
    status["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"] == "web")
        .flat_map(|l| l["backends"].as_array().into_iter().flatten())
        .find(|b| b["address"] == address.to_string())
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// A backend that answers on its own address but lost its decapsulation black-holes the
/// VIP's traffic. Probes travel the tunnel as client packets do, so it is marked down and
/// gets none; a direct probe would have kept it up.
#[test]
fn a_backend_without_decap_fails_its_dsr_health_check_and_gets_no_traffic() {
    let Some(dsr) = setup("nod", 1, 2, "{ encapsulation: ipip }", "wrr", &[]) else {
        return;
    };
    loses_its_tunnel_and_goes_down(dsr);
}

/// The same over IPv6: the IPv6 probe travels the ip6ip6 tunnel (`lb_probe_tunnel`).
#[test]
fn an_ipv6_backend_without_decap_fails_its_dsr_health_check_and_gets_no_traffic() {
    let Some(dsr) = setup_family(
        "nod6",
        Family::Ipv6,
        1,
        2,
        "{ encapsulation: ipip }",
        "wrr",
        &[],
    ) else {
        return;
    };
    loses_its_tunnel_and_goes_down(dsr);
}

/// Backend 2 up through its tunnel, then without its decapsulation (its VIP on lo and its
/// server kept): marked down within the checks' time, and backend 1 serves every request.
fn loses_its_tunnel_and_goes_down(mut dsr: Dsr) {
    let lb = &dsr.daemons[0];
    let b2 = dsr.fabric.backend_address(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while web_health(lb, b2) != "up" {
        assert!(
            std::time::Instant::now() < deadline,
            "b2 up through its tunnel"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Backend 2 loses its decapsulation; its VIP on lo and its server stay.
    drop(dsr.decaps.pop());
    let started = std::time::Instant::now();
    while web_health(lb, b2) != "down" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b2 marked down without its decapsulation; it is {}",
            web_health(lb, b2)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "b2 down {:?} after its decapsulation went",
        started.elapsed()
    );
    assert_eq!(web_health(lb, dsr.fabric.backend_address(1)), "up");
    let results = curl_many(dsr.fabric.client(), &dsr.url(), 100, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}");
    assert_eq!(tally.count("b1"), 100, "{tally}");
}

/// IPv6 end to end with ip6ip6 (no `dsr.source`: the LB host's own IPv6 address):
/// TCP and UDP through an IPv6 VIP, the backends answering the client through the
/// router, every client packet through the tunnel and stripped by `lb-ctl decap`.
#[test]
fn dsr6_ip6ip6_backends_answer_clients_directly_and_none_fails() {
    let Some(dsr) = setup_family(
        "ds6",
        Family::Ipv6,
        1,
        2,
        "{ encapsulation: ipip }",
        "wrr",
        &[],
    ) else {
        return;
    };
    answered_directly(&dsr, 300, "decapsulated_ip6ip6");
}

/// IPv6 end to end with GUE over IPv6 from an IPv6 source prefix (beside an IPv4 one,
/// which IPv6 listeners do not use), the backends decapsulating on the GUE port and
/// allowing that prefix only.
#[test]
fn dsr6_gue_from_an_ipv6_source_prefix_is_decapsulated_on_its_port() {
    let Some(dsr) = setup_family(
        "gu6",
        Family::Ipv6,
        1,
        2,
        "{ encapsulation: gue, gue_port: 6080, source: [198.18.9.0/24, '2001:db8:9::/112'] }",
        "tch",
        &["--gue-port", "6080", "--allow-source", "2001:db8:9::/112"],
    ) else {
        return;
    };
    answered_directly(&dsr, 200, "decapsulated_gue6");
    for d in &dsr.decaps {
        let c = d.counters(&dsr.fabric);
        assert_eq!(c["drop_source_refused"], 0, "{c}");
    }
}

/// `n` HTTP requests and a UDP exchange through the VIP, all answered by the backends
/// directly; each connection's client packets went through the LB's tunnel (SYN, request
/// and FIN at least), none of the replies did, and the backends stripped the tunnel
/// (their `counter`).
fn answered_directly(dsr: &Dsr, n: usize, counter: &str) {
    let client = dsr.fabric.client();
    let results = curl_many(client, &dsr.url(), n, None, 8);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "every request answered: {tally}");
    assert_eq!(tally.backends().len(), 2, "both backends served: {tally}");
    let answer = udp_request(
        client,
        SocketAddr::new(dsr.fabric.vip(), UDP_PORT),
        "hello",
        None,
        Duration::from_secs(2),
    )
    .expect("a UDP answer");
    assert!(answer.ends_with("hello"), "{answer}");
    let lb = &dsr.daemons[0];
    let n = n as u64;
    assert!(
        lb.reason_count("encapsulated") >= n * 3,
        "SYN, request and FIN of each: {}",
        lb.reason_count("encapsulated")
    );
    assert_eq!(lb.reason_count("reply_forwarded"), 0);
    let decapsulated: u64 = dsr
        .decaps
        .iter()
        .map(|d| d.counters(&dsr.fabric)[counter].as_u64().unwrap())
        .sum();
    assert!(
        decapsulated >= n * 3,
        "the backends stripped them: {decapsulated}"
    );
}
