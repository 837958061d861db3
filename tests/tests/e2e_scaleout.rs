//! Scale-out acceptance: one VIP served by three LB hosts at once, the way it is deployed.
//! The router (`lb_tests::fabric`) has no static route to the VIP: its own BIRD learns it
//! over BGP from the three LB hosts and installs one route with a next hop per host
//! (`merge paths on`), spreading flows by their 4-tuple. Each LB host runs `lb-ctl daemon`
//! with `forwarding: dsr` and a `bgp` section (BFD on, hold time 3 s); each backend runs
//! `lb-ctl decap` and answers the client directly through the router.
//!
//! What is asserted is what the router's operator and the clients see: the router's
//! kernel route to the VIP, and whether requests and long-lived connections are answered
//! while LB hosts die, come back, or have nothing healthy behind the VIP.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Backend, LbDaemon, Tally, VIP,
    bird::{LB_AS, ROUTER_AS, Router, next_hops, require_bird, vip_route, wait_until},
    client::{KeepAlive, exchange, for_at_most},
    curl_many,
    fabric::{Decap, Fabric, HOST_IF, ROUTER_FABRIC_ADDR, backend_addr, lb_addr},
    http_get, require_root_and_bpf, udp_request,
};

const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
const LB_HOSTS: usize = 3;
const BACKENDS: usize = 3;

/// A first session: BIRD's start, a connect delay of 1 s, the OPEN exchange, the update;
/// after a BFD failure also the router's error wait. Generous for a loaded machine.
const SESSION_UP: Duration = Duration::from_secs(20);
/// Health-check detection (interval 1 s, 2 failures or successes, plus jitter) on every
/// LB host, and the update's trip to the router's kernel.
const HEALTH_CHANGE: Duration = Duration::from_secs(10);
/// How long the router may take to stop sending to an LB host that went silent: BFD
/// declares it down after three missed packets 100 ms apart (300 ms), then BIRD drops the
/// session's routes and rewrites the kernel route, tens of milliseconds. 1 s leaves room
/// for a loaded machine (two tests at once on two cores) while still telling BFD apart
/// from the hold time (3 s), which is what would end the session without it.
const ROUTED_AROUND: Duration = Duration::from_secs(1);

/// Three LB hosts announcing the VIP to the router, three backends serving it.
struct ScaleOut {
    // Dropped in this order: the router's BIRD, the daemons (their BIRDs and pins), the
    // backends' decap pins and servers, and last the namespaces.
    router: Router,
    daemons: Vec<LbDaemon>,
    decaps: Vec<Decap>,
    servers: Vec<Backend>,
    fabric: Fabric,
}

fn lb_config(instance: &str, k: usize) -> String {
    let servers: String = (1..=BACKENDS)
        .map(|b| format!("    - {{ address: {} }}\n", backend_addr(b)))
        .collect();
    let checks = "interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2";
    format!(
        "instance: {instance}
interfaces: [{HOST_IF}]
flow_table_size: 65536
forwarding: dsr
dsr: {{ encapsulation: ipip }}
bgp:
  router_id: {}
  local_as: {LB_AS}
  hold_time: 3
  withdraw_wait: 0
  neighbors:
    - {{ address: {ROUTER_FABRIC_ADDR}, remote_as: {ROUTER_AS}, bfd: true }}
default_server_group:
  servers:
{servers}listeners:
  - {{ name: web, protocol: tcp, address: {VIP}, port: {HTTP_PORT}, backend_port: {HTTP_PORT}, scheduler: tch, health_check: {{ {checks} }} }}
  - {{ name: dns, protocol: udp, address: {VIP}, port: {UDP_PORT}, backend_port: {UDP_PORT}, health_check: {{ type: udp, {checks} }} }}
",
        lb_addr(k)
    )
}

fn all_lb_hosts() -> Vec<Ipv4Addr> {
    (1..=LB_HOSTS).map(lb_addr).collect()
}

/// The LB hosts the router's route to the VIP goes through, in address order.
fn routed_via(s: &ScaleOut) -> Vec<Ipv4Addr> {
    let mut hops = next_hops(&vip_route(s.fabric.router()));
    hops.sort();
    hops
}

fn setup(tag: &str) -> Option<ScaleOut> {
    if !require_root_and_bpf(tag) || !require_bird(tag) {
        return None;
    }
    let fabric = Fabric::build(tag, LB_HOSTS, BACKENDS);
    fabric.pin_neighbors();
    let router = Router::start(fabric.router(), ROUTER_FABRIC_ADDR, true, &all_lb_hosts());
    let servers = fabric.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    let decaps = (1..=BACKENDS)
        .map(|k| fabric.attach_decap(k, &[]))
        .collect();
    let daemons = (1..=LB_HOSTS)
        .map(|k| {
            let instance = format!("{}i{k}", fabric.prefix());
            LbDaemon::start(fabric.lb(k), &instance, &lb_config(&instance, k))
        })
        .collect();
    let s = ScaleOut {
        router,
        daemons,
        decaps,
        servers,
        fabric,
    };
    let took = wait_until(
        "the router learns the VIP from all three LB hosts",
        SESSION_UP,
        || routed_via(&s) == all_lb_hosts(),
    );
    eprintln!("route through all three LB hosts {took:?} after the daemons started");
    Some(s)
}

fn url() -> String {
    format!("http://{VIP}:{HTTP_PORT}/")
}

fn encapsulated(s: &ScaleOut) -> Vec<u64> {
    s.daemons
        .iter()
        .map(|d| d.reason_count("encapsulated"))
        .collect()
}

/// DSR as deployed: the backends' answers go to the client through the router, so no LB
/// host ever sees one.
fn assert_no_reply_through_an_lb(s: &ScaleOut) {
    for (i, d) in s.daemons.iter().enumerate() {
        assert_eq!(
            d.reason_count("reply_forwarded"),
            0,
            "LB host {} forwarded a backend's reply",
            i + 1
        );
    }
}

/// A process that has exited, whoever reaps it (BIRD outlives the killed daemon, its
/// parent, for a moment, and may stay a zombie of an init that does not reap).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn three_lb_hosts_announce_the_vip_and_share_new_connections() {
    let Some(s) = setup("soa") else {
        return;
    };
    let route = vip_route(s.fabric.router());
    eprintln!("the router's route to the VIP:\n{route}");
    assert_eq!(routed_via(&s), all_lb_hosts(), "{route}");

    let before = encapsulated(&s);
    let started = Instant::now();
    let results = curl_many(s.fabric.client(), &url(), 1000, None, 8);
    let tally = Tally::of(&results);
    eprintln!("1000 connections in {:?}: {tally}", started.elapsed());
    assert_eq!(tally.failed(), 0, "every connection answered: {tally}");
    for b in 1..=BACKENDS {
        let name = format!("b{b}");
        assert!(
            tally.count(&name) >= 200,
            "{name} served its share: {tally}"
        );
    }
    let carried: Vec<u64> = encapsulated(&s)
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    eprintln!("packets encapsulated by each LB host: {carried:?}");
    // ECMP on the 4-tuple gives each host about a third of the connections, each of at
    // least three client packets (SYN, request, FIN): a sixth is far outside chance.
    for (i, n) in carried.iter().enumerate() {
        assert!(
            *n >= 1000 / 6 * 3,
            "LB host {} carried a share: {carried:?}",
            i + 1
        );
    }

    let answer = udp_request(
        s.fabric.client(),
        SocketAddr::from((VIP, UDP_PORT)),
        "hello",
        None,
        Duration::from_secs(2),
    )
    .expect("a UDP answer through the VIP");
    assert!(answer.ends_with("hello"), "{answer}");
    let decapsulated: u64 = s
        .decaps
        .iter()
        .map(|d| d.counters(&s.fabric)["decapsulated_ipip"].as_u64().unwrap())
        .sum();
    assert!(
        decapsulated >= carried.iter().sum::<u64>(),
        "the backends stripped every packet the LB hosts sent: {decapsulated} of {carried:?}"
    );
    assert_no_reply_through_an_lb(&s);
}

/// 50 long-lived connections, a request on each every 100 ms, while LB host 1 dies (its
/// link cut, its daemon and BIRD killed: no goodbye reaches the router) and later comes
/// back. The connections it carried move to the other hosts, which pick the same backends
/// (`tch`: Maglev on the 4-tuple, the same table on every host), and back again.
#[test]
fn long_lived_connections_survive_an_lb_host_dying_and_coming_back() {
    let Some(mut s) = setup("sob") else {
        return;
    };
    for lb in all_lb_hosts() {
        wait_until("BFD is up on the router", SESSION_UP, || {
            s.router.bfd_up(lb)
        });
    }
    let to = SocketAddr::from((VIP, HTTP_PORT));
    let mut connections: Vec<KeepAlive> = (0..50)
        .map(|i| {
            KeepAlive::open(s.fabric.client(), to, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    let first_backend: Vec<String> = connections
        .iter_mut()
        .map(|c| c.get().expect("first request"))
        .collect();
    let failed = exchange(
        &mut connections,
        &first_backend,
        for_at_most(Duration::from_secs(2)),
    );
    assert!(
        failed.is_empty(),
        "through three LB hosts: {} of 50 failed: {failed:?}",
        failed.len()
    );
    let carried = encapsulated(&s);
    assert!(
        carried.iter().all(|n| *n > 0),
        "each LB host carried some of the connections: {carried:?}"
    );
    let pickups_before: u64 = s.daemons[1..]
        .iter()
        .map(|d| d.reason_count("event_pickup"))
        .sum();

    // LB host 1 dies while the connections are busy.
    let bird = s.daemons[0].status()["bgp"]["bird_pid"]
        .as_i64()
        .expect("BIRD's pid in the status") as i32;
    let (failed, routed_around) = thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            exchange(
                &mut connections,
                &first_backend,
                for_at_most(Duration::from_secs(4)),
            )
        });
        thread::sleep(Duration::from_secs(1));
        let cut = Instant::now();
        s.fabric.set_lb_link(1, false);
        s.daemons[0].kill();
        // SAFETY: a plain kill(2) of the BIRD this test's daemon started; it may be
        // exiting already (the daemon's death sends it SIGTERM).
        unsafe { libc::kill(bird, libc::SIGKILL) };
        wait_until(
            "the router routes around LB host 1",
            Duration::from_secs(5),
            || routed_via(&s) == [lb_addr(2), lb_addr(3)],
        );
        let routed_around = cut.elapsed();
        (traffic.join().expect("the traffic thread"), routed_around)
    });
    eprintln!("the router dropped LB host 1 {routed_around:?} after its link was cut");
    assert!(
        routed_around < ROUTED_AROUND,
        "BFD took {routed_around:?} to take LB host 1 out of the route"
    );
    assert!(
        failed.is_empty(),
        "LB host 1 died: {} of 50 failed: {failed:?}",
        failed.len()
    );
    let pickups: u64 = s.daemons[1..]
        .iter()
        .map(|d| d.reason_count("event_pickup"))
        .sum();
    assert!(
        pickups > pickups_before,
        "LB hosts 2 and 3 picked up LB host 1's connections"
    );

    // It comes back with the same config while the connections are busy; they go on a
    // few seconds past its return to the route.
    wait_until("LB host 1's BIRD is gone", Duration::from_secs(5), || {
        gone(bird)
    });
    s.fabric.set_lb_link(1, true);
    let back = Instant::now();
    s.daemons[0].restart();
    let carried_before_return = s.daemons[0].reason_count("encapsulated");
    let stop = AtomicBool::new(false);
    let (failed, returned) = thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let mut limit = for_at_most(SESSION_UP + Duration::from_secs(5));
            exchange(&mut connections, &first_backend, || {
                stop.load(Ordering::Relaxed) || limit()
            })
        });
        wait_until("LB host 1 is back in the route", SESSION_UP, || {
            routed_via(&s) == all_lb_hosts()
        });
        let returned = back.elapsed();
        thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        (traffic.join().expect("the traffic thread"), returned)
    });
    eprintln!("LB host 1 back in the route {returned:?} after its link came up");
    assert!(
        failed.is_empty(),
        "LB host 1 came back: {} of 50 failed: {failed:?}",
        failed.len()
    );
    assert!(
        s.daemons[0].reason_count("encapsulated") > carried_before_return,
        "the router sends some of the connections through LB host 1 again"
    );
    assert_no_reply_through_an_lb(&s);
}

/// Every LB host checks the backends on its own; when none is healthy, each withdraws the
/// VIP, and the router, with no route left, tells the client at once rather than sending
/// its packets to hosts that would drop them.
#[test]
fn a_vip_without_a_healthy_backend_is_withdrawn_by_every_lb_host() {
    let Some(mut s) = setup("soc") else {
        return;
    };
    for server in &mut s.servers {
        server.stop();
    }
    let took = wait_until("every LB host withdraws the VIP", HEALTH_CHANGE, || {
        vip_route(s.fabric.router()).is_empty()
    });
    eprintln!("withdrawn {took:?} after the backends stopped");
    for d in &s.daemons {
        let status = d.status();
        assert_eq!(
            status["bgp"]["announced"],
            serde_json::json!([]),
            "{:#}",
            status["bgp"]
        );
    }
    let refused = Instant::now();
    assert!(
        http_get(s.fabric.client(), &url(), None, Duration::from_secs(3)).is_err(),
        "no route to the VIP any more"
    );
    assert!(
        refused.elapsed() < Duration::from_secs(2),
        "the router answered at once that the VIP is unreachable"
    );

    // One backend back: every LB host announces the VIP again, and it serves everything.
    s.servers[0] = s.fabric.start_backend(1, Some(HTTP_PORT), Some(UDP_PORT));
    let took = wait_until(
        "every LB host announces the VIP again",
        HEALTH_CHANGE,
        || routed_via(&s) == all_lb_hosts(),
    );
    eprintln!("announced again {took:?} after backend 1 started");
    let results = curl_many(s.fabric.client(), &url(), 30, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}");
    assert_eq!(tally.count("b1"), 30, "{tally}");
    assert_no_reply_through_an_lb(&s);
}
