//! Forged traffic, end to end: what a blind attacker on the client side can do with
//! packets whose source address is not theirs.
//!
//! Topology: `lb_tests::topology` with two backends serving HTTP on 8080; the LB's health
//! probes leave from its backend-side address, 198.18.1.1, on ephemeral ports.

use std::{
    net::{SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    LbDaemon, Topology, TopologyOptions, VIP, client::KeepAlive, flood::syn_flood,
    require_root_and_bpf, topology::LB_BACKEND_ADDR,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
/// Client addresses the SYN floods come from, one per round.
const FLOODERS: usize = 16;
/// How long health checks run after the flood.
const WATCH: Duration = Duration::from_secs(60);

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name].as_u64().unwrap_or(0)
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
    let before = daemon.stats();
    let sent = syn_flood(
        topo.client(),
        LB_BACKEND_ADDR,
        SocketAddrV4::new(VIP, 80),
        *ports.start()..ports.end().saturating_add(1),
        20,
    );
    thread::sleep(Duration::from_millis(500));
    let after = daemon.stats();
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

/// 50 keep-alive connections idle while SYNs flood the VIP at the generator's top rate
/// from another client address (many times the smallest flow table), then each sends a
/// request: every one is answered. New connections opened during the flood: at least
/// 99 % answered. Half-open flows have tables of their own, so the flood churns those.
#[test]
fn a_syn_flood_neither_evicts_idle_connections_nor_starves_new_ones() {
    let tag = "hfl";
    if !require_root_and_bpf(tag) {
        return;
    }
    let topo = Topology::build(
        tag,
        2,
        TopologyOptions {
            client_addresses: FLOODERS,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let _backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 1024\nmax_listeners: 8\nmax_backends: 256\n\
         vserver_groups:\n  - name: web\n    servers:\n      - {{ address: 198.18.1.11, port: {HTTP_PORT} }}\n      - {{ address: 198.18.1.12, port: {HTTP_PORT} }}\n\
         listeners:\n  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, server_group: web }}\n",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);

    const IDLE: usize = 50;
    const NEW: usize = 300;
    let mut idle: Vec<(KeepAlive, String)> = (0..IDLE)
        .map(|i| {
            let mut c = KeepAlive::open(
                topo.client(),
                SocketAddr::from((VIP, 80)),
                Duration::from_secs(2),
            )
            .expect("connect to the VIP");
            let backend = c
                .get()
                .unwrap_or_else(|e| panic!("connection {i} before the flood: {e}"));
            (c, backend)
        })
        .collect();

    // Rounds of 60,000 SYNs, each from another client address (new 5-tuples every time),
    // as fast as the generator goes, until the new connections below are done.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (sent, elapsed, during) = thread::scope(|s| {
        let flood = s.spawn(|| {
            let started = Instant::now();
            let mut sent = 0;
            for flooder in &topo.client_addrs()[1..] {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                sent += syn_flood(
                    topo.client(),
                    *flooder,
                    SocketAddrV4::new(VIP, 80),
                    1024..61_024,
                    1_000,
                );
            }
            (sent, started.elapsed())
        });
        thread::sleep(Duration::from_millis(50));
        // A SYN the flood crowds out of the veths' queues (generator, LB and backends
        // share two CPUs here) is retransmitted after 1 s and 3 s, as by any client.
        let during = lb_tests::Tally::of(&lb_tests::curl_many_with(
            topo.client(),
            &format!("http://{VIP}:80/"),
            NEW,
            None,
            4,
            &lb_tests::BulkOptions {
                connect_timeout: Duration::from_secs(5),
                max_time: Duration::from_secs(10),
                ..Default::default()
            },
        ));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (sent, elapsed) = flood.join().expect("the flood thread");
        (sent, elapsed, during)
    });
    let rate = sent as f64 / elapsed.as_secs_f64().max(1e-3);
    println!(
        "flood: {sent} SYNs in {:.2} s ({rate:.0}/s) against a 1024-entry flow table; {NEW} \
         new connections meanwhile: {during}",
        elapsed.as_secs_f64(),
    );

    let mut stalled = Vec::new();
    for (i, (c, backend)) in idle.iter_mut().enumerate() {
        match c.get() {
            Ok(b) if b == *backend => {}
            Ok(b) => stalled.push(format!("connection {i}: answered by {b}, not {backend}")),
            Err(e) => stalled.push(format!("connection {i} ({backend}): {e}")),
        }
    }
    let s = daemon.stats();
    assert!(
        stalled.is_empty(),
        "{} of {IDLE} idle connections broke after the flood: {stalled:#?}\nreasons: {:#}",
        stalled.len(),
        s["reasons"]
    );
    assert!(
        sent >= 120_000,
        "the flood outlasted two rounds: {sent} sent"
    );
    let answered = during.count("b1") + during.count("b2");
    assert!(
        answered * 100 >= NEW * 99,
        "at least 99 % of new connections during the flood answered: {during}"
    );
}
