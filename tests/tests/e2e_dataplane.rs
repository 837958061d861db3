//! End to end through the XDP data plane: a client namespace, the LB namespace running
//! `lb-ctl daemon`, three backends running an HTTP and UDP server that names itself, real
//! curl and UDP traffic to the VIP. Each test asserts what a user sees: which backend
//! answered and how many requests failed.

use std::{net::SocketAddr, time::Duration};

use lb_common::{
    MAGLEV_TABLE_SIZE,
    hash::hash_source,
    maglev::{MaglevBackend, build_table},
};
use lb_tests::{
    LbDaemon, Tally, Topology, TopologyOptions, curl_many, require_root_and_bpf, udp_request,
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// A three-backend topology, backends started, and a daemon with `listeners_yaml`
/// appended to a config that attaches to the LB's two interfaces.
fn setup(
    tag: &str,
    client_addresses: usize,
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

fn url(port: u16) -> String {
    format!("http://{}:{port}/", lb_tests::VIP)
}

#[test]
fn wrr_spreads_3000_connections_by_weight_and_none_fails() {
    let Some((topo, daemon, _backends)) = setup(
        "wrr",
        0,
        "default_server_group:\n  servers:\n    - { address: 198.18.1.11, weight: 100 }\n    - { address: 198.18.1.12, weight: 50 }\n    - { address: 198.18.1.13, weight: 50 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }\n",
    ) else {
        return;
    };
    let results = curl_many(topo.client(), &url(80), 3000, None, 8);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "every request answered: {tally}");
    let share = |name: &str| tally.count(name) as f64 * 100.0 / 3000.0;
    for (name, want) in [("b1", 50.0), ("b2", 25.0), ("b3", 25.0)] {
        assert!(
            (share(name) - want).abs() <= 3.0,
            "{name} got {:.1} % of new connections, expected {want} ± 3: {tally}",
            share(name)
        );
    }
    let status = daemon.status();
    assert_eq!(
        status["listeners"][0]["stats"]["new_flows"], 3000,
        "{status}"
    );
}

#[test]
fn sch_keeps_each_client_address_on_the_backend_lb_common_predicts() {
    let Some((topo, daemon, _backends)) = setup(
        "sch",
        24,
        "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080 }\n      - { address: 198.18.1.13, port: 8080 }\nlisteners:\n  - { name: sticky, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: sch }\n",
    ) else {
        return;
    };
    // The listener's table as lb-common builds it, from the ids the daemon reports.
    let status = daemon.status();
    let (members, addresses): (Vec<MaglevBackend>, Vec<(u32, std::net::Ipv4Addr)>) =
        status["listeners"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| {
                let addr: std::net::Ipv4Addr = b["address"].as_str().unwrap().parse().unwrap();
                let id = b["backend_id"].as_u64().unwrap() as u32;
                let member = MaglevBackend::ipv4(
                    id,
                    u32::from_ne_bytes(addr.octets()),
                    (b["port"].as_u64().unwrap() as u16).to_be(),
                    b["weight"].as_u64().unwrap() as u32,
                );
                (member, (id, addr))
            })
            .unzip();
    let table = build_table(&members, MAGLEV_TABLE_SIZE);
    let name_of = |id: u32| -> String {
        let (_, addr) = addresses
            .iter()
            .find(|(i, _)| *i == id)
            .expect("id in table");
        format!("b{}", addr.octets()[3] - 10)
    };

    let mut used = std::collections::BTreeSet::new();
    for &client in topo.client_addrs().iter().take(24) {
        let results = curl_many(topo.client(), &url(80), 5, Some(client), 1);
        let tally = Tally::of(&results);
        assert_eq!(tally.failed(), 0, "{client}: {tally}");
        let backends = tally.backends();
        assert_eq!(backends.len(), 1, "{client} stuck to one backend: {tally}");
        let predicted = name_of(
            table[(hash_source(u32::from_ne_bytes(client.octets())) % MAGLEV_TABLE_SIZE) as usize],
        );
        assert_eq!(
            backends[0], predicted,
            "{client}: lb-common predicts {predicted}"
        );
        used.insert(backends[0].to_owned());
    }
    assert_eq!(
        used.len(),
        3,
        "all three backends used across 24 clients: {used:?}"
    );
}

#[test]
fn tch_spreads_one_client_over_all_backends() {
    let Some((topo, _daemon, _backends)) = setup(
        "tch",
        0,
        "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080 }\n      - { address: 198.18.1.13, port: 8080 }\nlisteners:\n  - { name: spread, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: tch }\n",
    ) else {
        return;
    };
    let results = curl_many(topo.client(), &url(80), 300, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}");
    for name in ["b1", "b2", "b3"] {
        assert!(
            tally.count(name) >= 60,
            "{name} got {} of 300 (< 20 %): {tally}",
            tally.count(name)
        );
    }
}

#[test]
fn udp_request_response_through_the_vip() {
    let Some((topo, daemon, _backends)) = setup(
        "udp",
        0,
        "vserver_groups:\n  - name: dns\n    servers:\n      - { address: 198.18.1.11, port: 5353 }\n      - { address: 198.18.1.12, port: 5353 }\nlisteners:\n  - { name: dns, protocol: udp, address: 198.19.0.100, port: 53, server_group: dns, scheduler: rr }\n",
    ) else {
        return;
    };
    let vip: SocketAddr = format!("{}:53", lb_tests::VIP).parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let reply = udp_request(
            topo.client(),
            vip,
            &format!("ping{i}"),
            None,
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", daemon.log()));
        let (name, payload) = reply.trim().split_once(' ').expect("NAME payload");
        assert_eq!(payload, format!("ping{i}"));
        seen.insert(name.to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["b1", "b2"],
        "rr over new flows reaches both backends"
    );
}

#[test]
fn weight_zero_backend_gets_no_connection() {
    let Some((topo, _daemon, backends)) = setup(
        "w0",
        0,
        "default_server_group:\n  servers:\n    - { address: 198.18.1.11 }\n    - { address: 198.18.1.12 }\n    - { address: 198.18.1.13, weight: 0 }\nlisteners:\n  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }\n",
    ) else {
        return;
    };
    let results = curl_many(topo.client(), &url(80), 300, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}");
    assert_eq!(
        tally.count("b3"),
        0,
        "weight 0 takes no new connection: {tally}"
    );
    // Health probes (from the LB) still reach b3, as they should; the client never does.
    let from_client = backends[2]
        .peers()
        .get(&std::net::IpAddr::V4(topo.client_addr()))
        .copied()
        .unwrap_or(0);
    assert_eq!(from_client, 0, "b3 saw no connection from the client");
    assert!(
        tally.count("b1") > 100 && tally.count("b2") > 100,
        "{tally}"
    );
}
