//! Forged traffic, end to end: what a blind attacker on the client side can do with
//! packets whose source address is not theirs.
//!
//! Topology: `lb_tests::topology` with two backends serving HTTP on 8080; the LB's health
//! probes leave from its backend-side address, 198.18.1.1, on ephemeral ports.

use std::{
    net::SocketAddrV4,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    LbDaemon, Topology, TopologyOptions, VIP, flood::syn_flood, require_root_and_bpf,
    topology::LB_BACKEND_ADDR,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
/// How long health checks run after the flood.
const WATCH: Duration = Duration::from_secs(60);

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name].as_u64().unwrap_or(0)
}

fn stats(daemon: &LbDaemon) -> Value {
    let text = daemon.ctl_ok(&["stats", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON: {e}\n{text}"))
}

/// (address, health) of every backend of listener `web`.
fn health(daemon: &LbDaemon) -> Vec<(String, String)> {
    let status = daemon.status();
    status["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "web"))
        .and_then(|l| l["backends"].as_array())
        .unwrap_or_else(|| panic!("no listener web in status: {status:#}"))
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or("?").to_owned(),
                b["health"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// The ephemeral port range of `topo`'s LB, where its probes' source ports come from.
fn ephemeral_ports(topo: &Topology) -> std::ops::RangeInclusive<u16> {
    let text = topo
        .lb()
        .run_ok(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
    let mut ends = text
        .split_whitespace()
        .map(|p| p.parse::<u16>().expect("a port"));
    let (Some(lo), Some(hi)) = (ends.next(), ends.next()) else {
        panic!("ip_local_port_range: {text}");
    };
    lo..=hi
}

/// SYNs to the VIP forged with the LB's own backend-side address as source, one from every
/// ephemeral port: accepted, each would leave a reverse entry (backend:8080 → LB:port) that
/// captures the backend's answer to a health probe from that port, and the backends would
/// be marked down one after the other. They must be dropped and counted, and 60 s of
/// health checks afterwards must keep every backend up.
#[test]
fn syns_forged_from_the_lbs_own_address_cannot_blind_health_checks() {
    let tag = "hsp";
    if !require_root_and_bpf(tag) {
        return;
    }
    let topo = Topology::build(tag, 2, TopologyOptions::default());
    topo.pin_neighbors();
    let _backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n\
         health_check_source: {LB_BACKEND_ADDR}\n\
         vserver_groups:\n  - name: web\n    servers:\n      - {{ address: 198.18.1.11, port: {HTTP_PORT} }}\n      - {{ address: 198.18.1.12, port: {HTTP_PORT} }}\n\
         listeners:\n  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, server_group: web, \
         health_check: {{ type: tcp, interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2 }} }}\n",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    let up = |h: &[(String, String)]| h.iter().all(|(_, health)| health == "up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up(&health(&daemon)) {
        assert!(
            Instant::now() < deadline,
            "backends up at the start: {:?}",
            health(&daemon)
        );
        thread::sleep(Duration::from_millis(200));
    }

    let ports = ephemeral_ports(&topo);
    let before = stats(&daemon);
    let sent = syn_flood(
        topo.client(),
        LB_BACKEND_ADDR,
        SocketAddrV4::new(VIP, 80),
        *ports.start()..ports.end().saturating_add(1),
        20,
    );
    thread::sleep(Duration::from_millis(500));
    let after = stats(&daemon);
    let dropped = reason(&after, "drop_spoofed_source") - reason(&before, "drop_spoofed_source");
    println!(
        "{sent} SYNs from {LB_BACKEND_ADDR} over ports {ports:?}: {dropped} dropped as forged"
    );
    assert!(
        sent > 20_000,
        "the flood covers the ephemeral range: {sent} sent"
    );
    assert_eq!(
        dropped as usize, sent,
        "every forged SYN dropped and counted: {:#}",
        after["reasons"]
    );
    assert_eq!(
        reason(&after, "event_new_flow"),
        reason(&before, "event_new_flow"),
        "no flow created"
    );

    let started = Instant::now();
    while started.elapsed() < WATCH {
        let h = health(&daemon);
        assert!(
            up(&h),
            "{:?} into the health checks after the flood: {h:?}",
            started.elapsed()
        );
        thread::sleep(Duration::from_secs(1));
    }
}
