//! End to end, in both ways a NAT load balancer is deployed:
//!
//! - (a) the VIP routed to the LB and configured on no interface;
//! - (b) the VIP a local address of the LB's client-side interface, answering ARP on the
//!   client's segment, as LVS directors usually have it.
//!
//! In each, a client address the LB has no neighbour entry for must get every answer.
//! The backends' first replies to it cannot be sent by XDP (no MAC to write): they go to
//! the kernel translated (`pass_neighbour_unknown`), which resolves the client and forwards
//! them. In (b) their source, the VIP, is one of the LB's own addresses, which the kernel
//! drops as a martian unless `accept_local` is on where they come in; the daemon sets it.
//!
//! Topology (see `lb_tests::topology`): a client with its usual address (pinned in the
//! LB's neighbour table) and 198.18.0.3 (never told to the LB), the LB running `lb-ctl
//! daemon`, two backends b1, b2 serving HTTP on 8080 and UDP on 5353. (a) and (b) run
//! over IPv6 too (2001:db8:18::3 the unknown client): an IPv6 VIP that is a local address
//! answers neighbour solicitations, which the program leaves to the kernel.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    Backend, BulkOptions, Family, LbDaemon, Netns, Tally, Topology, TopologyOptions, VIP, VIP6,
    VipPlacement, all_answered, all_answered_from, curl_many_from, curl_many_with,
    require_root_and_bpf, topology::backend_addr6, udp_many_from,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
/// Requests per protocol from the unknown client.
const REQUESTS: usize = 20;

fn setup(
    tag: &str,
    vip: VipPlacement,
    before_daemon: impl FnOnce(&Topology),
) -> Option<(Topology, LbDaemon, Vec<Backend>)> {
    setup_family(tag, vip, Family::Ipv4, before_daemon)
}

/// The VIP of the family's tests.
fn vip(family: Family) -> IpAddr {
    if family == Family::Ipv6 {
        VIP6.into()
    } else {
        VIP.into()
    }
}

/// Backend `k`'s address in the config, quoted.
fn backend(family: Family, k: usize) -> String {
    if family == Family::Ipv6 {
        format!("\"{}\"", backend_addr6(k))
    } else {
        format!("198.18.1.{}", 10 + k)
    }
}

fn setup_family(
    tag: &str,
    vip_placement: VipPlacement,
    family: Family,
    before_daemon: impl FnOnce(&Topology),
) -> Option<(Topology, LbDaemon, Vec<Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(
        tag,
        2,
        TopologyOptions {
            vip: vip_placement,
            unknown_client: true,
            family,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    before_daemon(&topo);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n\
         vserver_groups:\n  - name: web\n    servers:\n      - {{ address: {b1}, port: {HTTP_PORT} }}\n      - {{ address: {b2}, port: {HTTP_PORT} }}\n\
         \x20 - name: dns\n    servers:\n      - {{ address: {b1}, port: {UDP_PORT} }}\n      - {{ address: {b2}, port: {UDP_PORT} }}\n\
         listeners:\n  - {{ name: web, protocol: tcp, address: \"{vip}\", port: 80, server_group: web }}\n\
         \x20 - {{ name: dns, protocol: udp, address: \"{vip}\", port: 53, server_group: dns, health_check: {{ type: udp, udp: {{ request: ping, expect: ping }} }} }}\n",
        topo.lb_client_if(),
        topo.lb_backend_if(),
        b1 = backend(family, 1),
        b2 = backend(family, 2),
        vip = vip(family),
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    Some((topo, daemon, backends))
}

fn url() -> String {
    url_of(Family::Ipv4)
}

fn url_of(family: Family) -> String {
    lb_tests::http_url(vip(family), 80, "/")
}

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name].as_u64().unwrap_or(0)
}

/// The LB's neighbour entry for `addr` on its client-side interface, if any.
fn lb_neighbour(topo: &Topology, addr: IpAddr) -> Option<String> {
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    let table = topo
        .lb()
        .ip([family, "neigh", "show", "dev", topo.lb_client_if()]);
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&addr.to_string()))
        .map(str::to_owned)
}

/// Forgets the LB's neighbour entry for `addr` (the kernel resolved it earlier).
fn forget_neighbour(topo: &Topology, addr: IpAddr) {
    topo.lb().ip([
        "neigh",
        "flush",
        "to",
        &addr.to_string(),
        "dev",
        topo.lb_client_if(),
    ]);
    assert_eq!(lb_neighbour(topo, addr), None, "the entry is gone");
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.run_ok(["sysctl", "-n", key]).trim().to_owned()
}

/// REQUESTS HTTP requests (each a new connection) and REQUESTS UDP requests (each a new
/// flow) from the unknown client, with the LB's neighbour entry for it missing before
/// each batch: every one answered by a backend, and the first replies of each batch took
/// the kernel's path.
fn unknown_client_gets_every_answer(topo: &Topology, daemon: &LbDaemon, family: Family) {
    let client: IpAddr = if family == Family::Ipv6 {
        topo.unknown_client_addr6().into()
    } else {
        topo.unknown_client_addr().into()
    };
    let url = url_of(family);
    assert_eq!(
        lb_neighbour(topo, client),
        None,
        "the LB has never heard of {client}"
    );

    let before = daemon.stats();
    let results = curl_many_from(topo.client(), &url, REQUESTS, client, 1);
    let tally = Tally::of(&results);
    let after = daemon.stats();
    println!("HTTP from {client}: {tally}");
    assert_eq!(
        tally.count("b1") + tally.count("b2"),
        REQUESTS,
        "every HTTP request from {client} answered by a backend: {tally}\n{}",
        daemon.log()
    );
    let passed =
        reason(&after, "pass_neighbour_unknown") - reason(&before, "pass_neighbour_unknown");
    assert!(
        passed > 0,
        "the first replies went to the kernel to resolve {client}: {after:#}"
    );
    assert!(
        lb_neighbour(topo, client).is_some(),
        "the kernel resolved {client}"
    );

    forget_neighbour(topo, client);
    let before = daemon.stats();
    let results = udp_many_from(
        topo.client(),
        SocketAddr::new(vip(family), 53),
        "ping",
        REQUESTS,
        client,
        Duration::from_secs(2),
    );
    let tally = Tally::of(&results);
    let after = daemon.stats();
    println!("UDP from {client}: {tally}");
    assert_eq!(
        tally.count("b1") + tally.count("b2"),
        REQUESTS,
        "every UDP request from {client} answered by a backend: {tally}"
    );
    assert!(
        reason(&after, "pass_neighbour_unknown") > reason(&before, "pass_neighbour_unknown"),
        "the first UDP reply went to the kernel: {after:#}"
    );
}

/// The known client (its neighbour entry present): the fast path all along.
fn known_client_gets_every_answer(topo: &Topology, family: Family) {
    if family == Family::Ipv6 {
        all_answered_from(
            topo.client(),
            &url_of(family),
            REQUESTS,
            topo.client_addr6(),
            1,
            "the known client",
        );
    } else {
        all_answered(topo.client(), &url(), REQUESTS, None, 1, "the known client");
    }
}

/// (a) The VIP routed to the LB.
#[test]
fn vip_routed_to_the_lb_answers_a_client_it_has_no_neighbour_for() {
    let Some((topo, daemon, _backends)) = setup("dra", VipPlacement::RoutedToLb, |_| {}) else {
        return;
    };
    known_client_gets_every_answer(&topo, Family::Ipv4);
    unknown_client_gets_every_answer(&topo, &daemon, Family::Ipv4);
}

/// (b) The VIP a local address of the LB: the replies the kernel forwards have one of
/// its own addresses as source.
#[test]
fn vip_local_on_the_lb_answers_a_client_it_has_no_neighbour_for() {
    let Some((topo, daemon, _backends)) = setup("drb", VipPlacement::LocalOnLb, |_| {}) else {
        return;
    };
    let local = topo
        .lb()
        .ip(["-4", "addr", "show", "dev", topo.lb_client_if()]);
    assert!(local.contains(&format!("{VIP}/32")), "{local}");
    known_client_gets_every_answer(&topo, Family::Ipv4);
    unknown_client_gets_every_answer(&topo, &daemon, Family::Ipv4);

    // The daemon set accept_local where XDP runs, inside its own namespace, and said so.
    for iface in [topo.lb_client_if(), topo.lb_backend_if()] {
        assert_eq!(
            sysctl(topo.lb(), &format!("net.ipv4.conf.{iface}.accept_local")),
            "1",
            "accept_local on {iface}"
        );
        assert!(
            daemon
                .log()
                .contains(&format!("net.ipv4.conf.{iface}.accept_local set to 1")),
            "the log says accept_local was set on {iface}:\n{}",
            daemon.log()
        );
    }
}

/// (a) over IPv6: the IPv6 VIP routed to the LB.
#[test]
fn ipv6_vip_routed_to_the_lb_answers_a_client_it_has_no_neighbour_for() {
    let Some((topo, daemon, _backends)) =
        setup_family("dra6", VipPlacement::RoutedToLb, Family::Ipv6, |_| {})
    else {
        return;
    };
    known_client_gets_every_answer(&topo, Family::Ipv6);
    unknown_client_gets_every_answer(&topo, &daemon, Family::Ipv6);
}

/// (b) over IPv6: the IPv6 VIP a local address of the LB, resolved by the client's
/// neighbour solicitations (the kernel's: the program passes neighbour discovery), and
/// replies the kernel forwards carrying it as their source.
#[test]
fn ipv6_vip_local_on_the_lb_answers_a_client_it_has_no_neighbour_for() {
    let Some((topo, daemon, _backends)) =
        setup_family("drb6", VipPlacement::LocalOnLb, Family::Ipv6, |_| {})
    else {
        return;
    };
    let local = topo
        .lb()
        .ip(["-6", "addr", "show", "dev", topo.lb_client_if()]);
    assert!(local.contains(&format!("{VIP6}/128")), "{local}");
    known_client_gets_every_answer(&topo, Family::Ipv6);
    unknown_client_gets_every_answer(&topo, &daemon, Family::Ipv6);
    let stats = daemon.stats();
    assert!(
        reason(&stats, "pass_neighbour_discovery") > 0,
        "the client's solicitations for the VIP went to the kernel: {stats:#}"
    );
}

/// (b) with strict reverse-path filtering where the replies come in: the kernel drops
/// them whatever `accept_local` says. The daemon says so at start, naming the interface,
/// the VIP and the fix; the fix (loose mode) works.
#[test]
fn strict_rp_filter_with_a_local_vip_is_reported_and_loose_mode_works() {
    let Some((topo, daemon, _backends)) = setup("drs", VipPlacement::LocalOnLb, |topo| {
        topo.lb().sysctl(
            &format!("net.ipv4.conf.{}.rp_filter", topo.lb_backend_if()),
            1,
        );
    }) else {
        return;
    };
    let log = daemon.log();
    let warning = log
        .lines()
        .find(|l| l.contains("rp_filter") && l.contains("WARN"))
        .unwrap_or_else(|| panic!("no rp_filter warning in the log:\n{log}"));
    println!("{warning}");
    for needle in [
        format!("net.ipv4.conf.{}.rp_filter", topo.lb_backend_if()),
        VIP.to_string(),
        format!(
            "sysctl -w net.ipv4.conf.{}.rp_filter=2",
            topo.lb_backend_if()
        ),
    ] {
        assert!(warning.contains(&needle), "{needle:?} in {warning}");
    }
    assert!(
        !log.lines().any(|l| l.contains("rp_filter")
            && l.contains(&format!("net.ipv4.conf.{}.", topo.lb_client_if()))),
        "no warning about {}, where the VIP lives:\n{log}",
        topo.lb_client_if()
    );

    // What the warning says: the unknown client gets nothing.
    let short = BulkOptions {
        max_time: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(20),
    };
    let client = topo.unknown_client_addr();
    let tally = Tally::of(&curl_many_with(
        topo.client(),
        &url(),
        3,
        Some(client),
        1,
        &short,
    ));
    assert_eq!(
        tally.answered(),
        0,
        "strict rp_filter drops the replies the kernel gets: {tally}"
    );

    topo.lb().sysctl(
        &format!("net.ipv4.conf.{}.rp_filter", topo.lb_backend_if()),
        2,
    );
    unknown_client_gets_every_answer(&topo, &daemon, Family::Ipv4);
}

/// Forwarding off on the LB (`net.ipv4.ip_forward=0`): the kernel's FIB gives the
/// program no next hop, so nothing is balanced. The daemon says so at start, naming each
/// interface and the fix, and the fix works without a restart.
#[test]
fn forwarding_off_is_reported_and_turning_it_on_works() {
    let Some((topo, daemon, _backends)) = setup("dfw", VipPlacement::RoutedToLb, |topo| {
        topo.lb().sysctl("net.ipv4.ip_forward", 0);
    }) else {
        return;
    };
    let log = daemon.log();
    for iface in [topo.lb_client_if(), topo.lb_backend_if()] {
        let needle = format!("net.ipv4.conf.{iface}.forwarding is 0");
        let warning = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains(&needle))
            .unwrap_or_else(|| panic!("no warning {needle:?} in the log:\n{log}"));
        assert!(
            warning.contains("sysctl -w net.ipv4.ip_forward=1"),
            "the fix in {warning}"
        );
    }

    let short = BulkOptions {
        max_time: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(20),
    };
    let before = daemon.stats();
    let tally = Tally::of(&curl_many_with(topo.client(), &url(), 3, None, 1, &short));
    assert_eq!(tally.answered(), 0, "nothing is forwarded: {tally}");
    let after = daemon.stats();
    assert!(
        reason(&after, "drop_no_route") > reason(&before, "drop_no_route"),
        "the requests were dropped as drop_no_route: {after:#}"
    );

    topo.lb().sysctl("net.ipv4.ip_forward", 1);
    all_answered(
        topo.client(),
        &url(),
        REQUESTS,
        None,
        1,
        "every request answered once forwarding is on",
    );
}

/// Packets read on the LB's client-side interface so far.
fn lb_client_rx_packets(topo: &Topology) -> u64 {
    let path = format!(
        "/sys/class/net/{}/statistics/rx_packets",
        topo.lb_client_if()
    );
    topo.lb()
        .run_ok(["cat", &path])
        .trim()
        .parse()
        .expect("rx_packets is a number")
}

/// `ping` from the client to the VIP: how many of `count` echo requests were answered.
fn pings_answered(topo: &Topology, count: usize) -> usize {
    let out = topo.client().exec([
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        &VIP.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let received = l.split(", ").nth(1)?;
            received.strip_suffix(" received")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("ping summary in:\n{text}"))
}

/// A VIP routed to the LB but not one of its addresses, and an LB whose default route
/// points back toward the client-side router (which forwards): a packet the kernel got
/// for the VIP would bounce between the two until its TTL ran out (cilium/cilium#32195).
/// 100 UDP datagrams to a port without a listener must cross the LB's client interface
/// 100 times, not thousands; pings are answered from XDP, or dropped with
/// `vip_ping: drop`.
#[test]
fn traffic_to_a_routed_vip_outside_its_listeners_does_not_loop() {
    let Some((topo, daemon, _backends)) = setup("drl", VipPlacement::RoutedToLb, |topo| {
        topo.lb().route_add("default", "198.18.0.2");
        // The client is the router here: it forwards, and takes back (accept_local) the
        // packets it sent that the LB would route to it.
        topo.client().sysctl("net.ipv4.ip_forward", 1);
        topo.client().sysctl("net.ipv4.conf.all.accept_local", 1);
        topo.client().sysctl("net.ipv4.conf.eth0.accept_local", 1);
    }) else {
        return;
    };
    const DATAGRAMS: u64 = 100;
    let before_rx = lb_client_rx_packets(&topo);
    let before = daemon.stats();
    topo.client().enter(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
        for _ in 0..DATAGRAMS {
            socket
                .send_to(b"anyone?", (VIP, 5999))
                .expect("send to the VIP");
        }
    });
    // Long enough for a looping packet to go around its 64 hops many times over.
    std::thread::sleep(Duration::from_secs(1));
    let crossed = lb_client_rx_packets(&topo) - before_rx;
    let after = daemon.stats();
    let dropped = reason(&after, "drop_vip_no_listener") - reason(&before, "drop_vip_no_listener");
    println!(
        "{DATAGRAMS} datagrams to {VIP}:5999: {crossed} packets in on the client side, {dropped} dropped"
    );
    assert_eq!(
        dropped, DATAGRAMS,
        "each datagram dropped once, counted: {after:#}"
    );
    assert!(
        crossed < DATAGRAMS + 20,
        "{crossed} packets crossed the LB's client interface for {DATAGRAMS} datagrams: a loop"
    );

    let _wake = topo.client_xdp_pass();
    assert_eq!(
        pings_answered(&topo, 3),
        3,
        "vip_ping: answer (the default): {:#}",
        daemon.stats()["reasons"]
    );
    assert!(reason(&daemon.stats(), "icmp_echo_reply") >= 3);

    let config = std::fs::read_to_string(daemon.config_path()).expect("the daemon's config");
    daemon.write_config(&config.replacen("flow_table_size", "vip_ping: drop\nflow_table_size", 1));
    daemon.ctl_ok(&["reload"]);
    let before = daemon.stats();
    let before_rx = lb_client_rx_packets(&topo);
    assert_eq!(pings_answered(&topo, 3), 0, "vip_ping: drop");
    let after = daemon.stats();
    assert_eq!(
        reason(&after, "drop_vip_other_protocol") - reason(&before, "drop_vip_other_protocol"),
        3,
        "{after:#}"
    );
    assert!(
        lb_client_rx_packets(&topo) - before_rx < 3 + 20,
        "no loop for pings either"
    );
}
