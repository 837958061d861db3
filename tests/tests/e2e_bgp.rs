//! End to end: the daemon announces its VIPs over BGP through the BIRD it runs, and a
//! router learns them. What is asserted is what the router's operator sees: the kernel
//! routing table of the router (`ip route`), and whether a client behind it reaches the
//! VIP.
//!
//! Topology (see `lb_tests::topology`): the client namespace is the router. It runs a BIRD
//! of its own (one session to the LB, a kernel protocol exporting what it learns) and has
//! no static route to the VIP range: it reaches the VIP only while the LB announces it.
//! The LB (198.18.0.1, AS 65001) peers with it (198.18.0.2, AS 65000) and balances
//! 198.19.0.100:80 over two backends (198.18.1.11, .12) serving HTTP on 8080, checked
//! every second (2 failures down, 2 successes up). The ECMP test adds a second LB host
//! (198.18.3.1) on a link of its own to the router (198.18.3.2).
//!
//! The IPv6 tests use the topology's IPv6 plan: the LB (2001:db8:18::1) peers with the
//! router (2001:db8:18::2) and balances [2001:db8:19::100]:80 over the backends'
//! IPv6 addresses (2001:db8:18:1::11, ::12); the dual-stack one holds a session of each
//! family with the router and announces one VIP of each.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use lb_tests::{
    Backend, Family, LbDaemon, Netns, Topology, TopologyOptions, VIP, VIP6,
    bird::{LB_AS, ROUTER_AS, Router, require_bird, vip_route, vip6_route, wait_until},
    http_get, http_request, http_url, require_root_and_bpf,
    topology::{
        CLIENT_ADDR6, LB_CLIENT_ADDR, LB_CLIENT_ADDR6, VIP_RANGE, VIP6_RANGE, backend_addr6,
    },
    veth,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A second LB host, for the ECMP test, on a link of its own to the router.
const LB2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
const ROUTER_LB2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);

/// A first session: BIRD's start, a connect delay of 1 s, the OPEN exchange, the update;
/// generous for a loaded machine.
const SESSION_UP: Duration = Duration::from_secs(20);
/// Health-check detection (interval 1 s, 2 failures, plus jitter) and the withdrawal's
/// trip to the router's kernel.
const HEALTH_CHANGE: Duration = Duration::from_secs(8);
/// An update to the router once BIRD has it.
const UPDATE: Duration = Duration::from_secs(3);

fn announced(router: &Netns) -> bool {
    vip_route(router).contains(&format!("via {LB_CLIENT_ADDR}"))
}

/// The router has the IPv6 VIP's route through the LB's IPv6 address.
fn announced6(router: &Netns) -> bool {
    vip6_route(router).contains(&format!("via {LB_CLIENT_ADDR6} "))
}

struct Setup {
    topo: Topology,
    router: Router,
    daemon: LbDaemon,
    backends: Vec<Backend>,
    /// The daemon's config file as written.
    config: String,
}

/// The topology with the router's BIRD, the backends serving, and the daemon announcing
/// the VIP with `bgp_extra` added to its `bgp` section.
fn setup(tag: &str, bfd: bool, bgp_extra: &str) -> Option<Setup> {
    if !require_root_and_bpf(tag) || !require_bird(tag) {
        return None;
    }
    let topo = Topology::build(tag, 2, TopologyOptions::default());
    topo.pin_neighbors();
    // The router reaches the VIPs only through what it learns over BGP.
    topo.client().ip(["route", "del", "198.19.0.0/16"]);
    let router = Router::start(topo.client(), ROUTER_ADDR, bfd, &[LB_CLIENT_ADDR, LB2_ADDR]);
    let backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}
interfaces: [{}, {}]
flow_table_size: 65536
max_listeners: 8
max_backends: 64
bgp:
  router_id: {LB_CLIENT_ADDR}
  local_as: {LB_AS}
  hold_time: 3
  {bgp_extra}
  neighbors:
    - {{ address: {ROUTER_ADDR}, remote_as: {ROUTER_AS}, bfd: {bfd} }}
default_server_group:
  servers: [{{ address: 198.18.1.11 }}, {{ address: 198.18.1.12 }}]
listeners:
  - name: web
    protocol: tcp
    address: {VIP}
    port: 80
    backend_port: {HTTP_PORT}
    health_check: {{ interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2 }}
",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    wait_until("the router learns the VIP", SESSION_UP, || {
        announced(topo.client())
    });
    Some(Setup {
        topo,
        router,
        daemon,
        backends,
        config,
    })
}

fn http_ok(topo: &Topology) -> bool {
    http_get(
        topo.client(),
        &format!("http://{VIP}/"),
        None,
        Duration::from_secs(2),
    )
    .is_ok()
}

fn bgp_status(daemon: &LbDaemon) -> Value {
    daemon.status()["bgp"].clone()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn a_vip_is_announced_while_a_backend_is_healthy() {
    let Some(mut s) = setup("bgp-health", false, "") else {
        return;
    };
    let route = vip_route(s.topo.client());
    assert_eq!(
        route,
        format!("{VIP} via {LB_CLIENT_ADDR} dev eth0 metric 32"),
        "the router's route to the VIP"
    );
    assert!(
        http_ok(&s.topo),
        "the client reaches the VIP through the route"
    );

    let status = bgp_status(&s.daemon);
    assert_eq!(status["announced"], serde_json::json!([VIP.to_string()]));
    let session = &status["sessions"][0];
    assert_eq!(session["neighbor"], ROUTER_ADDR.to_string(), "{status:#}");
    assert_eq!(session["state"], "established", "{status:#}");
    let text = s.daemon.ctl_ok(&["status"]);
    eprintln!("{text}");
    assert!(text.contains(&format!("announced: {VIP}")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&ROUTER_ADDR.to_string()) && l.contains("established")),
        "{text}"
    );

    // Both backends down: nothing behind the VIP, so it is withdrawn.
    for b in &mut s.backends {
        b.stop();
    }
    let took = wait_until("the VIP is withdrawn", HEALTH_CHANGE, || {
        !announced(s.topo.client())
    });
    eprintln!("withdrawn {took:?} after the backends stopped");
    assert!(!http_ok(&s.topo), "no route to the VIP any more");
    let status = bgp_status(&s.daemon);
    assert_eq!(status["announced"], serde_json::json!([]), "{status:#}");
    assert_eq!(status["sessions"][0]["state"], "established", "{status:#}");

    // One back: announced again, and served.
    s.backends[0] = Backend::start(
        s.topo.backend(1),
        "b1",
        &[(Ipv4Addr::UNSPECIFIED, HTTP_PORT).into()],
        &[],
    );
    wait_until("the VIP is announced again", HEALTH_CHANGE, || {
        announced(s.topo.client())
    });
    assert!(http_ok(&s.topo));
}

#[test]
fn drain_host_withdraws_while_forwarding_goes_on() {
    let Some(s) = setup("bgp-drain", false, "") else {
        return;
    };
    let said = s.daemon.ctl_ok(&["drain-host"]);
    assert!(said.contains("lb-ctl drain-host --undo"), "{said}");
    wait_until("drain-host withdraws the VIP", UPDATE, || {
        !announced(s.topo.client())
    });
    let status = bgp_status(&s.daemon);
    assert_eq!(status["host_drained"], true, "{status:#}");
    assert_eq!(status["announced"], serde_json::json!([]), "{status:#}");
    assert!(s.daemon.ctl_ok(&["status"]).contains("host drained"));

    // Traffic a router still sends (a static route here) is served: the host forwards.
    let via = LB_CLIENT_ADDR.to_string();
    let vip = format!("{VIP}/32");
    s.topo
        .client()
        .ip(["route", "add", &vip, "via", &via, "metric", "500"]);
    assert!(http_ok(&s.topo), "a drained host still forwards");
    s.topo
        .client()
        .ip(["route", "del", &vip, "via", &via, "metric", "500"]);

    // A reload keeps the drain.
    s.daemon.ctl_ok(&["reload"]);
    thread::sleep(Duration::from_secs(1));
    assert!(
        !announced(s.topo.client()),
        "a reload announced a drained host"
    );

    s.daemon.ctl_ok(&["drain-host", "--undo"]);
    wait_until("drain-host --undo announces again", UPDATE, || {
        announced(s.topo.client())
    });
    assert_eq!(bgp_status(&s.daemon)["host_drained"], false);
}

#[test]
fn a_reload_applies_a_removed_changed_or_added_bgp_section() {
    let Some(s) = setup("bgp-reload", false, "") else {
        return;
    };
    let bgp_start = s.config.find("bgp:").unwrap();
    let bgp_end = s.config.find("default_server_group:").unwrap();
    let without = format!("{}{}", &s.config[..bgp_start], &s.config[bgp_end..]);

    // Removed: BIRD stops, the router loses the route, the status has no bgp.
    let bird = bgp_status(&s.daemon)["bird_pid"].as_i64().unwrap() as i32;
    s.daemon.write_config(&without);
    s.daemon.ctl_ok(&["reload"]);
    wait_until("the VIP is withdrawn", UPDATE, || {
        !announced(s.topo.client())
    });
    assert!(s.daemon.status().get("bgp").is_none());
    wait_until("BIRD stops", UPDATE, || !pid_alive(bird));
    assert_eq!(
        s.daemon.ctl(&["drain-host"]).status.code(),
        Some(2),
        "drain-host without a bgp section is refused"
    );

    // Added back: announced again.
    s.daemon.write_config(&s.config);
    s.daemon.ctl_ok(&["reload"]);
    wait_until("the VIP is announced again", SESSION_UP, || {
        announced(s.topo.client())
    });

    // Changed: a second neighbor gets a session of its own, and the first session is
    // not restarted for it (BIRD re-reads its config, it does not start again).
    let since = bgp_status(&s.daemon)["sessions"][0]["since"].clone();
    let neighbor = format!("- {{ address: {ROUTER_ADDR}, remote_as: {ROUTER_AS}, bfd: false }}");
    let two = s.config.replace(
        &neighbor,
        &format!("{neighbor}\n    - {{ address: {ROUTER_LB2_ADDR}, remote_as: {ROUTER_AS} }}"),
    );
    assert_ne!(two, s.config);
    s.daemon.write_config(&two);
    s.daemon.ctl_ok(&["reload"]);
    wait_until("status shows both sessions", UPDATE, || {
        bgp_status(&s.daemon)["sessions"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    let status = bgp_status(&s.daemon);
    let sessions = status["sessions"].as_array().unwrap();
    assert_eq!(sessions[0]["state"], "established", "{status:#}");
    assert_eq!(sessions[0]["since"], since, "{status:#}");
    assert_eq!(sessions[1]["neighbor"], ROUTER_LB2_ADDR.to_string());
    assert_ne!(sessions[1]["state"], "established", "{status:#}");
    assert!(announced(s.topo.client()));
}

#[test]
fn sigterm_withdraws_before_the_daemon_exits() {
    let Some(mut s) = setup("bgp-term", false, "withdraw_wait: 3") else {
        return;
    };
    let bird = bgp_status(&s.daemon)["bird_pid"]
        .as_i64()
        .expect("BIRD's pid in the status") as i32;
    let daemon = s.daemon.child().expect("the daemon runs");
    daemon.signal(libc::SIGTERM);
    wait_until("SIGTERM withdraws the VIP", UPDATE, || {
        !announced(s.topo.client())
    });
    assert!(
        daemon.try_status().is_none(),
        "the VIP was withdrawn by the daemon's exit, not before it"
    );
    assert_eq!(
        s.router.session(),
        "Established",
        "the session stays up during withdraw_wait"
    );
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .expect("the daemon exits after withdraw_wait");
    assert!(status.success(), "{status}");
    assert!(!pid_alive(bird), "BIRD is stopped with the daemon");
    wait_until("the router sees the session closed", UPDATE, || {
        !s.router.session().starts_with("Established")
    });
}

#[test]
fn a_killed_bird_is_started_again_and_announces_again() {
    let Some(s) = setup("bgp-restart", false, "") else {
        return;
    };
    let first = bgp_status(&s.daemon)["bird_pid"]
        .as_i64()
        .expect("BIRD's pid in the status") as i32;
    // SAFETY: a plain kill(2) of the BIRD this test's daemon started.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    wait_until("the router drops the dead session's route", UPDATE, || {
        !announced(s.topo.client())
    });
    wait_until("the route is back", SESSION_UP, || {
        announced(s.topo.client())
    });
    let status = bgp_status(&s.daemon);
    assert_eq!(status["bird_restarts"], 1, "{status:#}");
    let second = status["bird_pid"].as_i64().expect("BIRD runs again") as i32;
    assert_ne!(second, first);
    assert!(
        s.daemon.log().contains("BIRD died"),
        "the daemon logs the death"
    );
    assert!(http_ok(&s.topo));
}

#[test]
fn with_bfd_a_frozen_lb_is_routed_around_in_under_a_second() {
    let Some(s) = setup("bgp-bfd", true, "") else {
        return;
    };
    wait_until("BFD is up on the router", UPDATE, || {
        s.router.bfd_up(LB_CLIENT_ADDR)
    });
    let bird = bgp_status(&s.daemon)["bird_pid"]
        .as_i64()
        .expect("BIRD's pid in the status") as i32;
    // A host that stops answering (hung, or its link cut): BIRD frozen sends nothing, and
    // the TCP session stays open, so only BFD can tell. The hold time (3 s) would take
    // three times longer.
    // SAFETY: plain kill(2)s of the BIRD this test's daemon started.
    assert_eq!(unsafe { libc::kill(bird, libc::SIGSTOP) }, 0);
    let took = wait_until(
        "the router routes around the frozen LB",
        Duration::from_secs(3),
        || !announced(s.topo.client()),
    );
    assert_eq!(unsafe { libc::kill(bird, libc::SIGCONT) }, 0);
    eprintln!("routed around in {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "BFD took {took:?} to withdraw the route"
    );
    wait_until("the route is back", SESSION_UP, || {
        announced(s.topo.client())
    });
}

/// A second LB host in a namespace of its own, linked to the router, announcing the same
/// VIP (its backend is not reachable from there, so its listener checks nothing: this
/// test is about routes, not traffic).
struct SecondLb {
    // Stopped (and its data plane torn down) before its namespace goes.
    daemon: LbDaemon,
    _ns: Netns,
}

impl SecondLb {
    fn start(topo: &Topology) -> SecondLb {
        let ns = Netns::create(&format!("{}lb2", topo.prefix()));
        veth(topo.client(), "to-lb2", &ns, "up0");
        topo.client()
            .addr_add("to-lb2", format!("{ROUTER_LB2_ADDR}/24"));
        topo.client().link_up("to-lb2");
        ns.addr_add("up0", format!("{LB2_ADDR}/24"));
        ns.link_up("up0");
        let instance = format!("{}j", topo.prefix());
        let config = format!(
            "instance: {instance}
interfaces: [up0]
flow_table_size: 65536
max_listeners: 8
max_backends: 64
bgp:
  router_id: {LB2_ADDR}
  local_as: {LB_AS}
  hold_time: 3
  neighbors: [{{ address: {ROUTER_LB2_ADDR}, remote_as: {ROUTER_AS} }}]
default_server_group:
  servers: [{{ address: 198.18.1.11 }}]
listeners:
  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, backend_port: {HTTP_PORT}, health_check: {{ type: none }} }}
"
        );
        let daemon = LbDaemon::start(&ns, &instance, &config);
        SecondLb { daemon, _ns: ns }
    }
}

#[test]
fn two_lb_hosts_announcing_a_vip_give_the_router_a_multipath_route() {
    let Some(s) = setup("bgp-ecmp", false, "") else {
        return;
    };
    let second = SecondLb::start(&s.topo);
    let both = |route: &str| {
        route.contains(&format!("nexthop via {LB_CLIENT_ADDR} "))
            && route.contains(&format!("nexthop via {LB2_ADDR} "))
    };
    wait_until(
        "the router spreads the VIP over both hosts",
        SESSION_UP,
        || both(&vip_route(s.topo.client())),
    );

    // One host drained: the router keeps the other.
    second.daemon.ctl_ok(&["drain-host"]);
    wait_until("the drained host leaves the route", UPDATE, || {
        let route = vip_route(s.topo.client());
        !route.contains("nexthop") && announced(s.topo.client())
    });
    second.daemon.ctl_ok(&["drain-host", "--undo"]);
    wait_until("it comes back", UPDATE, || {
        both(&vip_route(s.topo.client()))
    });
}

// --- IPv6 ---------------------------------------------------------------------------------

/// The router's IPv6 address, the LB's IPv6 neighbor.
const ROUTER_ADDR6: Ipv6Addr = CLIENT_ADDR6;
/// `metrics_listen` of the IPv6 tests' daemon, on the LB namespace's loopback.
const METRICS_PORT: u16 = 9100;

/// GET `path` of the daemon's `metrics_listen`, from the LB namespace.
fn get_local(topo: &Topology, path: &str) -> String {
    let url = format!("http://127.0.0.1:{METRICS_PORT}{path}");
    let reply = http_request(topo.lb(), &url, None, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    reply.body
}

/// The topology of `family` with the router's BIRD peering over IPv6 (and over IPv4 too
/// when `family` is dual stack), the backends serving on both families, and the daemon
/// announcing [`VIP6`] (and [`VIP`] in dual stack) with BFD on the IPv6 session when
/// `bfd`, `bgp_extra` added to its `bgp` section.
fn setup6(tag: &str, family: Family, bfd: bool, bgp_extra: &str) -> Option<Setup> {
    if !require_root_and_bpf(tag) || !require_bird(tag) {
        return None;
    }
    let dual = family == Family::DualStack;
    let topo = Topology::build(
        tag,
        2,
        TopologyOptions {
            family,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    // The router reaches the VIPs only through what it learns over BGP.
    topo.client().ip(["-6", "route", "del", VIP6_RANGE]);
    let mut neighbors: Vec<IpAddr> = vec![LB_CLIENT_ADDR6.into()];
    if dual {
        topo.client().ip(["route", "del", VIP_RANGE]);
        neighbors.push(LB_CLIENT_ADDR.into());
    }
    let router = Router::start(topo.client(), ROUTER_ADDR, bfd, &neighbors);
    let backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let check = "health_check: { interval: 1, timeout: 1, healthy_threshold: 2, \
                 unhealthy_threshold: 2 }";
    let (ipv4_neighbor, ipv4_group, ipv4_listener) = if dual {
        (
            format!("\n    - {{ address: {ROUTER_ADDR}, remote_as: {ROUTER_AS} }}"),
            format!(
                "\n  - name: app4\n    servers: [{{ address: 198.18.1.11, port: {HTTP_PORT} }}, \
                 {{ address: 198.18.1.12, port: {HTTP_PORT} }}]"
            ),
            format!(
                "\n  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, server_group: \
                 app4, {check} }}"
            ),
        )
    } else {
        Default::default()
    };
    // The router id stays a 32-bit number written as an IPv4 address, on an IPv6-only
    // host too.
    let config = format!(
        "instance: {instance}
interfaces: [{}, {}]
flow_table_size: 65536
max_listeners: 8
max_backends: 64
metrics_listen: 127.0.0.1:{METRICS_PORT}
bgp:
  router_id: {LB_CLIENT_ADDR}
  local_as: {LB_AS}
  hold_time: 3
  {bgp_extra}
  neighbors:
    - {{ address: \"{ROUTER_ADDR6}\", remote_as: {ROUTER_AS}, bfd: {bfd} }}{ipv4_neighbor}
vserver_groups:
  - name: app6
    servers: [{{ address: \"{}\", port: {HTTP_PORT} }}, {{ address: \"{}\", port: {HTTP_PORT} }}]{ipv4_group}
listeners:
  - {{ name: web6, protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app6, {check} }}{ipv4_listener}
",
        topo.lb_client_if(),
        topo.lb_backend_if(),
        backend_addr6(1),
        backend_addr6(2),
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    wait_until("the router learns the IPv6 VIP", SESSION_UP, || {
        announced6(topo.client())
    });
    if dual {
        wait_until("the router learns the IPv4 VIP", SESSION_UP, || {
            announced(topo.client())
        });
    }
    Some(Setup {
        topo,
        router,
        daemon,
        backends,
        config,
    })
}

fn http6_ok(topo: &Topology) -> bool {
    http_get(
        topo.client(),
        &http_url(VIP6, 80, "/"),
        None,
        Duration::from_secs(2),
    )
    .is_ok()
}

/// The session the status shows with `neighbor`.
fn session_with(status: &Value, neighbor: impl Into<IpAddr>) -> Value {
    let neighbor = neighbor.into().to_string();
    status["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["neighbor"] == neighbor.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no session with {neighbor} in {status:#}"))
}

#[test]
fn an_ipv6_vip_is_announced_to_an_ipv6_neighbor_while_a_backend_is_healthy() {
    let Some(mut s) = setup6("bgp6-health", Family::Ipv6, true, "") else {
        return;
    };
    let route = vip6_route(s.topo.client());
    assert!(
        route.starts_with(&format!("{VIP6} via {LB_CLIENT_ADDR6} dev eth0 ")),
        "the router's route to the IPv6 VIP: {route}"
    );
    assert!(
        http6_ok(&s.topo),
        "the client reaches the IPv6 VIP through the route"
    );
    wait_until("BFD is up over IPv6 on the router", UPDATE, || {
        s.router.bfd_up(LB_CLIENT_ADDR6)
    });

    let status = bgp_status(&s.daemon);
    assert_eq!(status["announced"], serde_json::json!([VIP6.to_string()]));
    let session = session_with(&status, ROUTER_ADDR6);
    assert_eq!(session["state"], "established", "{status:#}");
    assert_eq!(session["name"], "bgp_2001_db8_18__2", "{status:#}");
    let text = s.daemon.ctl_ok(&["status"]);
    eprintln!("{text}");
    assert!(text.contains(&format!("announced: {VIP6}\n")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&ROUTER_ADDR6.to_string()) && l.contains("established")),
        "{text}"
    );

    // Both backends down: nothing behind the VIP, so it is withdrawn.
    for b in &mut s.backends {
        b.stop();
    }
    let took = wait_until("the IPv6 VIP is withdrawn", HEALTH_CHANGE, || {
        !announced6(s.topo.client())
    });
    eprintln!("withdrawn {took:?} after the backends stopped");
    assert!(!http6_ok(&s.topo), "no route to the IPv6 VIP any more");
    let status = bgp_status(&s.daemon);
    assert_eq!(status["announced"], serde_json::json!([]), "{status:#}");
    assert_eq!(
        session_with(&status, ROUTER_ADDR6)["state"],
        "established",
        "{status:#}"
    );

    // One back: announced again, and served.
    s.backends[0] = Backend::start(
        s.topo.backend(1),
        "b1",
        &[(Ipv6Addr::UNSPECIFIED, HTTP_PORT).into()],
        &[],
    );
    wait_until("the IPv6 VIP is announced again", HEALTH_CHANGE, || {
        announced6(s.topo.client())
    });
    assert!(http6_ok(&s.topo));

    // drain-host withdraws it too, and --undo announces it again.
    s.daemon.ctl_ok(&["drain-host"]);
    wait_until("drain-host withdraws the IPv6 VIP", UPDATE, || {
        !announced6(s.topo.client())
    });
    let status = bgp_status(&s.daemon);
    assert_eq!(status["host_drained"], true, "{status:#}");
    assert_eq!(status["announced"], serde_json::json!([]), "{status:#}");
    let metrics = get_local(&s.topo, "/metrics");
    for line in [
        format!("lb_bgp_vip_announced{{address=\"{VIP6}\"}} 0"),
        "lb_bgp_host_drained 1".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    s.daemon.ctl_ok(&["drain-host", "--undo"]);
    wait_until(
        "drain-host --undo announces the IPv6 VIP again",
        UPDATE,
        || announced6(s.topo.client()),
    );
    assert!(http6_ok(&s.topo));
}

#[test]
fn with_bfd_over_ipv6_a_frozen_lb_is_routed_around_in_under_a_second() {
    let Some(s) = setup6("bgp6-bfd", Family::Ipv6, true, "") else {
        return;
    };
    wait_until("BFD is up over IPv6 on the router", UPDATE, || {
        s.router.bfd_up(LB_CLIENT_ADDR6)
    });
    let bird = bgp_status(&s.daemon)["bird_pid"]
        .as_i64()
        .expect("BIRD's pid in the status") as i32;
    // As over IPv4: BIRD frozen sends nothing and the TCP session stays open, so only
    // BFD can tell.
    // SAFETY: plain kill(2)s of the BIRD this test's daemon started.
    assert_eq!(unsafe { libc::kill(bird, libc::SIGSTOP) }, 0);
    let took = wait_until(
        "the router routes around the frozen LB",
        Duration::from_secs(3),
        || !announced6(s.topo.client()),
    );
    assert_eq!(unsafe { libc::kill(bird, libc::SIGCONT) }, 0);
    eprintln!("routed around in {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "BFD took {took:?} to withdraw the route"
    );
    wait_until("the route is back", SESSION_UP, || {
        announced6(s.topo.client())
    });
}

#[test]
fn dual_stack_announces_each_vip_over_the_session_of_its_family() {
    let Some(mut s) = setup6("bgp6-dual", Family::DualStack, false, "withdraw_wait: 3") else {
        return;
    };
    // Each route through the LB's address of its own family.
    assert!(
        vip_route(s.topo.client()).starts_with(&format!("{VIP} via {LB_CLIENT_ADDR} ")),
        "{}",
        vip_route(s.topo.client())
    );
    assert!(
        vip6_route(s.topo.client()).starts_with(&format!("{VIP6} via {LB_CLIENT_ADDR6} ")),
        "{}",
        vip6_route(s.topo.client())
    );
    assert!(http_ok(&s.topo), "the client reaches the IPv4 VIP");
    assert!(http6_ok(&s.topo), "the client reaches the IPv6 VIP");
    // The router learnt the IPv6 VIP on the IPv6 session only, and the IPv4 VIP on the
    // IPv4 one only.
    let learnt = |session: &str| s.router.birdc(&["show", "route", "protocol", session]);
    let (on_v6, on_v4) = (learnt("lb1"), learnt("lb2"));
    assert!(
        on_v6.contains(&format!("{VIP6}/128")) && !on_v6.contains(&VIP.to_string()),
        "{on_v6}"
    );
    assert!(
        on_v4.contains(&format!("{VIP}/32")) && !on_v4.contains(&VIP6.to_string()),
        "{on_v4}"
    );

    let status = bgp_status(&s.daemon);
    assert_eq!(
        status["announced"],
        serde_json::json!([VIP.to_string(), VIP6.to_string()]),
        "{status:#}"
    );
    for neighbor in [IpAddr::from(ROUTER_ADDR6), ROUTER_ADDR.into()] {
        assert_eq!(
            session_with(&status, neighbor)["state"],
            "established",
            "{status:#}"
        );
    }
    let text = s.daemon.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!("announced: {VIP}, {VIP6}\n")),
        "{text}"
    );
    // /metrics and the status page's status.json say the same.
    let metrics = get_local(&s.topo, "/metrics");
    for line in [
        format!("lb_bgp_session_established{{neighbor=\"{ROUTER_ADDR}\"}} 1"),
        format!("lb_bgp_session_established{{neighbor=\"{ROUTER_ADDR6}\"}} 1"),
        format!("lb_bgp_vip_announced{{address=\"{VIP}\"}} 1"),
        format!("lb_bgp_vip_announced{{address=\"{VIP6}\"}} 1"),
        "lb_bgp_host_drained 0".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let page: Value = serde_json::from_str(&get_local(&s.topo, "/status.json")).unwrap();
    assert_eq!(page["bgp"]["announced"], status["announced"], "{page:#}");
    assert_eq!(
        session_with(&page["bgp"], ROUTER_ADDR6)["state"],
        "established",
        "{page:#}"
    );

    // SIGTERM withdraws both before the daemon exits.
    let daemon = s.daemon.child().expect("the daemon runs");
    daemon.signal(libc::SIGTERM);
    wait_until("SIGTERM withdraws both VIPs", UPDATE, || {
        !announced6(s.topo.client()) && !announced(s.topo.client())
    });
    assert!(
        daemon.try_status().is_none(),
        "the VIPs were withdrawn by the daemon's exit, not before it"
    );
    assert_eq!(
        s.router.session(),
        "Established",
        "the IPv6 session stays up during withdraw_wait"
    );
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .expect("the daemon exits after withdraw_wait");
    assert!(status.success(), "{status}");
}
