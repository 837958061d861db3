//! Self-test of the test-support library, without the load balancer: the LB namespace
//! forwards by plain kernel routing (ip_forward=1, and IPv6 forwarding with IPv6), and
//! the client gets a route to the backend subnet through it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    panic,
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    Backend, BulkOptions, Family, Netns, Tally, Topology, TopologyOptions, VIP, VIP6, VipPlacement,
    all_answered_from, curl_many, curl_many_from, curl_many_with, curl_many_with_from, http_get,
    http_get_from, http_request, http_request_from, http_url, require_root, require_root_and_bpf,
    topology, udp_many, udp_many_from, udp_request, udp_request_from, unique_prefix,
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_no_namespace_left(prefix: &str) {
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// The topology with a route from the client to the backends through the LB namespace,
/// in each family it has.
fn routed_topology(tag: &str, backends: usize, options: TopologyOptions) -> Topology {
    let topo = Topology::build(tag, backends, options);
    if topo.family().has_ipv4() {
        topo.client()
            .route_add("198.18.1.0/24", topology::LB_CLIENT_ADDR);
    }
    if topo.family().has_ipv6() {
        topo.client()
            .route_add(topology::BACKEND_NET6, topology::LB_CLIENT_ADDR6);
    }
    topo
}

fn url(addr: Ipv4Addr, path: &str) -> String {
    format!("http://{addr}:{HTTP_PORT}{path}")
}

#[test]
fn topology_reaches_backends_by_http_and_udp() {
    if !require_root("topology_reaches_backends_by_http_and_udp") {
        return;
    }
    let started = Instant::now();
    let topo = routed_topology(
        "sel",
        2,
        TopologyOptions {
            client_addresses: 3,
            ..Default::default()
        },
    );
    eprintln!("topology with 2 backends built in {:?}", started.elapsed());
    let prefix = topo.prefix().to_owned();
    let names = topo.namespace_names();
    assert_eq!(names.len(), 5);
    for name in &names {
        assert!(name.len() <= 15, "{name} longer than an interface name");
        assert!(netns_names().iter().any(|n| n == name), "{name} missing");
    }
    assert!(topo.lb_client_ifindex() > 0 && topo.lb_backend_ifindex() > 0);
    assert_eq!(
        topo.lb().ifindex(topology::LB_CLIENT_IF),
        topo.lb_client_ifindex()
    );
    assert_eq!(
        topo.client_addrs(),
        [
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 10),
            Ipv4Addr::new(198, 18, 0, 11),
            Ipv4Addr::new(198, 18, 0, 12)
        ]
    );
    assert_eq!(topo.backend_addr(2), Ipv4Addr::new(198, 18, 1, 12));
    // What the fixtures need the veth ends to have.
    let features = topo.lb().run_ok(["ethtool", "-k", topology::LB_BACKEND_IF]);
    assert!(
        features.contains("generic-receive-offload: on"),
        "{features}"
    );
    assert!(features.contains("tx-checksumming: off"), "{features}");
    let forward = topo.lb().run_ok(["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(forward.trim(), "1");
    topo.pin_neighbors();

    let backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    let client = topo.client();
    for (k, backend) in backends.iter().enumerate() {
        let addr = topo.backend_addr(k + 1);
        let body = http_get(client, &url(addr, "/"), None, TIMEOUT).unwrap();
        assert_eq!(body, format!("{}\n", backend.name()));
        let reply = udp_request(
            client,
            SocketAddr::from((addr, UDP_PORT)),
            "ping",
            None,
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(reply, format!("{} ping", backend.name()));
    }

    // Headers and source addresses: an extra client address is what the backend sees.
    let b1 = &backends[0];
    let reply = http_request(
        client,
        &url(topo.backend_addr(1), "/"),
        Some(Ipv4Addr::new(198, 18, 0, 11)),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), Some("b1"));
    assert!(
        reply
            .header("X-Client-Addr")
            .is_some_and(|a| a.starts_with("198.18.0.11:")),
        "{reply:?}"
    );
    assert!(
        b1.peers()
            .contains_key(&"198.18.0.11".parse::<IpAddr>().unwrap())
    );

    // 503 mode through the control socket, and back.
    b1.set_status(503);
    let reply = http_request(client, &url(topo.backend_addr(1), "/"), None, TIMEOUT).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (503, "b1 503\n"));
    let err = http_get(client, &url(topo.backend_addr(1), "/"), None, TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    b1.set_status(200);
    assert_eq!(b1.stats().status, 200);

    // UDP turned off looks like a dead service; many UDP flows are tallied per backend.
    b1.set_udp(false);
    let dead = udp_request(
        client,
        SocketAddr::from((topo.backend_addr(1), UDP_PORT)),
        "x",
        None,
        Duration::from_millis(300),
    );
    assert!(dead.is_err(), "{dead:?}");
    b1.set_udp(true);
    let replies = udp_many(
        client,
        SocketAddr::from((topo.backend_addr(2), UDP_PORT)),
        "hello",
        50,
        Some(Ipv4Addr::new(198, 18, 0, 10)),
        TIMEOUT,
    );
    let tally = Tally::of(&replies);
    assert_eq!((tally.count("b2"), tally.failed()), (50, 0), "{tally}");
    assert_eq!(replies[0], Ok("b2 hello".to_owned()));

    // /slow and /stream.
    let started = Instant::now();
    let body = http_get(
        client,
        &url(topo.backend_addr(2), "/slow?ms=300"),
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(body, "b2\n");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let body = http_get(
        client,
        &url(topo.backend_addr(2), "/stream?seconds=1"),
        None,
        TIMEOUT,
    )
    .unwrap();
    let expected: String = (0..10).map(|i| format!("b2 {i}\n")).collect();
    assert_eq!(body, expected);

    // A backend whose namespace has nothing listening: curl's error, not a panic.
    let refused = http_get(client, &url(topo.backend_addr(1), ":1/"), None, TIMEOUT);
    assert!(refused.is_err());

    // HTTP/1.0 gets a close-delimited stream.
    let body = client.run_ok([
        "curl",
        "-sS",
        "--http1.0",
        "--max-time",
        "5",
        &url(topo.backend_addr(2), "/stream?seconds=1"),
    ]);
    assert_eq!(body, expected);

    // Signals: USR1 → 503, USR2 → 200, TERM → clean exit.
    let mut backends = backends;
    let b2 = &mut backends[1];
    b2.child().signal(libc::SIGUSR1);
    wait_until(|| b2.stats().status == 503);
    b2.child().signal(libc::SIGUSR2);
    wait_until(|| b2.stats().status == 200);
    let status = b2.stop();
    assert!(status.success(), "{status}");
    assert!(!b2.control_path().exists());

    drop(backends);
    drop(topo);
    assert_no_namespace_left(&prefix);
}

/// Polls `cond` for up to 2 s (signals are delivered asynchronously).
fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 2 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The bulk client opens one new connection per request, sequentially and in parallel.
#[test]
fn curl_many_opens_a_connection_per_request() {
    if !require_root("curl_many_opens_a_connection_per_request") {
        return;
    }
    let topo = routed_topology("blk", 1, TopologyOptions::default());
    let prefix = topo.prefix().to_owned();
    let backend = Backend::start(
        topo.backend(1),
        "b1",
        &[SocketAddr::from((Ipv4Addr::UNSPECIFIED, HTTP_PORT))],
        &[],
    );
    let target = url(topo.backend_addr(1), "/");

    let started = Instant::now();
    let results = curl_many(topo.client(), &target, 300, None, 1);
    let took = started.elapsed();
    let tally = Tally::of(&results);
    assert_eq!((tally.count("b1"), tally.failed()), (300, 0), "{tally}");
    assert!(results.iter().all(|r| r.as_deref() == Ok("b1\n")));
    let stats = backend.stats();
    assert_eq!((stats.connections, stats.requests), (300, 300), "{stats:?}");
    eprintln!("300 sequential new connections: {took:?}");

    backend.reset_stats();
    let results = curl_many(topo.client(), &target, 300, None, 20);
    let tally = Tally::of(&results);
    assert_eq!((tally.count("b1"), tally.failed()), (300, 0), "{tally}");
    let stats = backend.stats();
    assert_eq!((stats.connections, stats.requests), (300, 300), "{stats:?}");

    // Failures are reported per request, and the overall deadline holds.
    let refused = format!("http://{}:1/", topo.backend_addr(1));
    let results = curl_many(topo.client(), &refused, 3, None, 2);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.starts_with("curl error 7:"))),
        "{results:?}"
    );
    backend.set_status(503);
    let results = curl_many(topo.client(), &target, 5, None, 1);
    assert!(
        results
            .iter()
            .all(|r| r == &Err("HTTP 503: \"b1 503\"".to_owned())),
        "{results:?}"
    );
    backend.set_status(200);
    let options = BulkOptions {
        deadline: Duration::from_millis(1500),
        ..Default::default()
    };
    let slow = url(topo.backend_addr(1), "/slow?ms=1000");
    let results = curl_many_with(topo.client(), &slow, 3, None, 1, &options);
    let tally = Tally::of(&results);
    assert_eq!((tally.answered(), tally.failed()), (1, 2), "{tally}");
    assert!(tally.failures[0].contains("deadline"), "{tally}");

    // keep-alive is honoured: one curl invocation with two URLs reuses its connection.
    backend.reset_stats();
    topo.client()
        .run_ok(["curl", "-sS", "--max-time", "5", &target, &target]);
    let stats = backend.stats();
    assert_eq!((stats.connections, stats.requests), (1, 2), "{stats:?}");

    drop(backend);
    drop(topo);
    assert_no_namespace_left(&prefix);
}

/// 3000 sequential new connections, the size of the largest distribution tests.
#[test]
fn curl_many_3000_sequential_connections_in_time() {
    if !require_root("curl_many_3000_sequential_connections_in_time") {
        return;
    }
    let topo = routed_topology("3k", 1, TopologyOptions::default());
    let backend = Backend::start(
        topo.backend(1),
        "b1",
        &[SocketAddr::from((Ipv4Addr::UNSPECIFIED, HTTP_PORT))],
        &[],
    );
    let started = Instant::now();
    let results = curl_many(
        topo.client(),
        &url(topo.backend_addr(1), "/"),
        3000,
        None,
        1,
    );
    let took = started.elapsed();
    let tally = Tally::of(&results);
    assert_eq!((tally.count("b1"), tally.failed()), (3000, 0), "{tally}");
    assert_eq!(backend.stats().connections, 3000);
    eprintln!("3000 sequential new connections: {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// Namespaces go away also when the test panics, and processes inside are killed.
#[test]
fn cleanup_on_panic_and_processes_inside() {
    if !require_root("cleanup_on_panic_and_processes_inside") {
        return;
    }
    let prefix = panic::catch_unwind(|| {
        let topo = Topology::build("pan", 1, TopologyOptions::default());
        let prefix = topo.prefix().to_owned();
        // A process that nobody stops explicitly: Netns::drop must kill it.
        let _ = topo.backend(1).spawn(["sleep", "600"]);
        panic::panic_any(prefix);
    })
    .expect_err("the closure panics")
    .downcast::<String>()
    .expect("panic payload is the prefix");
    assert_no_namespace_left(&prefix);

    // A leaked (forgotten) child is killed by the namespace's drop.
    let name = format!("{}x", unique_prefix("kil"));
    let ns = Netns::create(&name);
    let child = ns.spawn(["sleep", "600"]);
    let pid = child.pid();
    std::mem::forget(child);
    // `ip netns exec` needs a moment before it has switched namespaces and exec'd.
    let deadline = Instant::now() + Duration::from_secs(2);
    while ns.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ns.pids(), vec![pid as i32]);
    drop(ns);
    // The zombie is ours to reap; its exit status shows SIGTERM.
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(rc, pid as i32);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
    assert!(!netns_names().contains(&name));
}

/// `enter` runs code in the namespace and re-raises its panics; `command` keeps the
/// host's mounts (bpffs) while joining the namespace.
#[test]
fn enter_and_command_join_the_namespace() {
    if !require_root("enter_and_command_join_the_namespace") {
        return;
    }
    let ns = Netns::create(&format!("{}n", unique_prefix("ent")));
    // A veth pair inside the namespace (this kernel has no dummy driver).
    ns.ip([
        "link", "add", "dummy7", "type", "veth", "peer", "name", "dummy8",
    ]);
    let index = ns.ifindex("dummy7");
    assert!(index > 1);
    let inside = ns.enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(inside, ours);

    let caught = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        ns.enter(|| panic!("inside"));
    }))
    .expect_err("enter re-raises");
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"inside"));

    let out = ns.command("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(links.contains("dummy7"), "{links}");
    // `ip netns exec` sees the namespace's /sys; `command` keeps the host's.
    let host_sys = ns.command("ls").arg("/sys/class/net").output().unwrap();
    assert!(!String::from_utf8_lossy(&host_sys.stdout).contains("dummy7"));
    assert!(ns.run_ok(["ls", "/sys/class/net"]).contains("dummy7"));
}

/// The BPF check passes here, and `Netns::command` keeps the host's bpffs in view while
/// `ip netns exec` does not (the reason `command` exists).
#[test]
fn bpf_check_and_bpffs_visibility() {
    if !require_root_and_bpf("bpf_check_and_bpffs_visibility") {
        return;
    }
    let ns = Netns::create(&format!("{}n", unique_prefix("bpf")));
    let fs_type =
        |out: std::process::Output| String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let via_command = ns
        .command("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .unwrap();
    assert_eq!(fs_type(via_command), "bpf_fs");
    let via_exec = ns.exec(["stat", "-f", "-c", "%T", "/sys/fs/bpf"]);
    assert_ne!(fs_type(via_exec), "bpf_fs");
}

#[test]
fn bin_path_finds_the_backend_and_explains_a_missing_binary() {
    let backend = lb_tests::bin_path("lb-test-backend");
    assert!(backend.is_file(), "{}", backend.display());
    let missing = panic::catch_unwind(|| lb_tests::bin_path("lb-no-such-binary"))
        .expect_err("a missing binary panics");
    let message = missing
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(message.contains("cargo build --workspace"), "{message}");
}

/// `ip -6 addr` lines still tentative (duplicate address detection running) in `ns`.
fn tentative(ns: &Netns) -> String {
    ns.ip(["-6", "addr", "show", "tentative"])
}

/// The IPv6-only topology: addresses from 2001:db8::/32 usable at once, IPv6 forwarding
/// in the LB, no IPv4 anywhere, neighbours pinned, and HTTP and UDP from the client (from
/// its primary and its extra addresses) reaching each backend's IPv6 address.
#[test]
fn ipv6_topology_reaches_backends_by_http_and_udp() {
    if !require_root("ipv6_topology_reaches_backends_by_http_and_udp") {
        return;
    }
    let started = Instant::now();
    let topo = routed_topology(
        "v6",
        2,
        TopologyOptions {
            client_addresses: 2,
            family: Family::Ipv6,
            ..Default::default()
        },
    );
    eprintln!(
        "IPv6 topology with 2 backends built in {:?}",
        started.elapsed()
    );
    let prefix = topo.prefix().to_owned();
    assert_eq!(topo.namespace_names().len(), 5);

    // The addressing plan.
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    assert_eq!(
        topo.client_addrs6(),
        [
            v6("2001:db8:18::2"),
            v6("2001:db8:18::10"),
            v6("2001:db8:18::11")
        ]
    );
    assert_eq!(topo.backend_addr6(1), v6("2001:db8:18:1::11"));
    assert_eq!(topo.backend_addr6(2), v6("2001:db8:18:1::12"));
    assert_eq!(topo.vip6(), v6("2001:db8:19::100"));
    assert_eq!(topo.vips(), [IpAddr::V6(VIP6)]);
    assert_eq!(topo.backend_ips(2), [IpAddr::V6(v6("2001:db8:18:1::12"))]);
    let ipv4_asked = panic::catch_unwind(panic::AssertUnwindSafe(|| topo.backend_addr(1)));
    assert!(
        ipv4_asked.is_err(),
        "an IPv6-only topology has no IPv4 address"
    );

    // What the tests rely on: no IPv4, no tentative address, forwarding, DAD off.
    let client = topo.client();
    assert_eq!(client.ip(["-4", "addr", "show", "dev", "eth0"]).trim(), "");
    let mut interfaces = vec![
        (topo.client(), "eth0"),
        (topo.lb(), topology::LB_CLIENT_IF),
        (topo.lb(), topology::LB_BACKEND_IF),
    ];
    interfaces.extend(topo.backends().iter().map(|b| (b, topology::BACKEND_IF)));
    for (ns, dev) in interfaces {
        assert_eq!(tentative(ns).trim(), "", "tentative addresses in {ns}");
        let dad = ns.run_ok(["sysctl", "-n", &format!("net.ipv6.conf.{dev}.accept_dad")]);
        assert_eq!(dad.trim(), "0", "accept_dad of {dev} in {ns}");
    }
    let forwarding = topo
        .lb()
        .run_ok(["sysctl", "-n", "net.ipv6.conf.lb-back.forwarding"]);
    assert_eq!(forwarding.trim(), "1");
    let backend_routes = topo.backend(1).ip(["-6", "route", "show", "default"]);
    assert!(
        backend_routes.contains("via 2001:db8:18:1::1"),
        "{backend_routes}"
    );

    topo.pin_neighbors();
    let neighbours = topo.lb().ip(["-6", "neigh", "show", "dev", "lb-back"]);
    for k in 1..=2 {
        let line = neighbours
            .lines()
            .find(|l| l.starts_with(&format!("{} ", topo.backend_addr6(k))))
            .unwrap_or_else(|| panic!("no neighbour entry for b{k}: {neighbours}"));
        assert!(line.contains("PERMANENT"), "{line}");
    }
    let to_lb = client.ip(["-6", "neigh", "show", "dev", "eth0"]);
    assert!(
        to_lb.contains("2001:db8:18::1 ") && to_lb.contains("PERMANENT"),
        "{to_lb}"
    );

    // Every backend answers on its IPv6 address, by TCP and by UDP.
    let backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    for (k, backend) in backends.iter().enumerate() {
        let addr = topo.backend_addr6(k + 1);
        let body = http_get(client, &http_url(addr, HTTP_PORT, "/"), None, TIMEOUT).unwrap();
        assert_eq!(body, format!("{}\n", backend.name()));
        let reply = udp_request(
            client,
            SocketAddr::new(addr.into(), UDP_PORT),
            "ping",
            None,
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(reply, format!("{} ping", backend.name()));
    }

    // The primary address is the default source; from an extra IPv6 address, the
    // backend sees that one, bracketed, and counts it.
    let b1_url = http_url(topo.backend_addr6(1), HTTP_PORT, "/");
    let reply = http_request(client, &b1_url, None, TIMEOUT).unwrap();
    let seen = reply.header("x-client-addr").unwrap_or_default();
    assert!(seen.starts_with("[2001:db8:18::2]:"), "{reply:?}");
    let source = topo.client_addrs6()[2];
    let reply = http_request_from(client, &b1_url, source, TIMEOUT).unwrap();
    assert_eq!((reply.status, reply.header("x-backend")), (200, Some("b1")));
    let seen = reply.header("x-client-addr").unwrap_or_default();
    assert!(seen.starts_with("[2001:db8:18::11]:"), "{reply:?}");
    assert!(backends[0].peers().contains_key(&IpAddr::V6(source)));
    assert_eq!(
        http_get_from(client, &b1_url, source, TIMEOUT).unwrap(),
        "b1\n"
    );

    // Bulk runs, bounded: 40 new connections and 30 UDP flows, each from a given source.
    let b2_url = http_url(topo.backend_addr6(2), HTTP_PORT, "/");
    let tally = Tally::of(&curl_many_from(
        client,
        &b2_url,
        40,
        topo.client_addrs6()[1],
        4,
    ));
    assert_eq!((tally.count("b2"), tally.failed()), (40, 0), "{tally}");
    assert_eq!(backends[1].stats().connections, 41);
    let options = BulkOptions {
        deadline: Duration::from_secs(30),
        ..Default::default()
    };
    let results = curl_many_with_from(client, &b2_url, 5, source, 1, &options);
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("b2\n")),
        "{results:?}"
    );
    let tally = all_answered_from(client, &b1_url, 10, source, 2, "IPv6 from an extra address");
    assert_eq!(tally.count("b1"), 10, "{tally}");
    assert_eq!(backends[0].peers().get(&IpAddr::V6(source)), Some(&12));
    let b1_udp = SocketAddr::new(topo.backend_addr6(1).into(), UDP_PORT);
    let replies = udp_many_from(client, b1_udp, "hello", 30, topo.client_addr6(), TIMEOUT);
    let tally = Tally::of(&replies);
    assert_eq!((tally.count("b1"), tally.failed()), (30, 0), "{tally}");
    let reply = udp_request_from(client, b1_udp, "v6", source, TIMEOUT).unwrap();
    assert_eq!(reply, "b1 v6");

    // The checks can fail: a silent UDP service times out, a family mismatch is refused.
    backends[0].set_udp(false);
    let dead = udp_request(client, b1_udp, "x", None, Duration::from_millis(300));
    assert!(dead.is_err(), "{dead:?}");
    backends[0].set_udp(true);
    let mixed = udp_request_from(client, b1_udp, "x", Ipv4Addr::new(198, 18, 0, 2), TIMEOUT);
    assert!(
        mixed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("different families")),
        "{mixed:?}"
    );

    drop(backends);
    drop(topo);
    assert_no_namespace_left(&prefix);
    eprintln!("IPv6 self-test done in {:?}", started.elapsed());
}

/// Dual stack: each backend answers on both its addresses, and sees the client's IPv4
/// and IPv6 addresses as they are (IPv6-only sockets, no `::ffff:` mapping). With the VIP
/// local on the LB, the client reaches both VIPs on its link; the unknown client
/// addresses exist on the client but not in the LB's neighbour table.
#[test]
fn dual_stack_topology_serves_both_families() {
    if !require_root("dual_stack_topology_serves_both_families") {
        return;
    }
    let topo = routed_topology(
        "ds",
        2,
        TopologyOptions {
            family: Family::DualStack,
            vip: VipPlacement::LocalOnLb,
            unknown_client: true,
            ..Default::default()
        },
    );
    let prefix = topo.prefix().to_owned();
    assert_eq!(topo.vips(), [IpAddr::V4(VIP), IpAddr::V6(VIP6)]);
    assert_eq!(topo.client_addrs(), [topology::CLIENT_ADDR]);
    assert_eq!(topo.client_addrs6(), [topology::CLIENT_ADDR6]);
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        assert_eq!(topo.lb().run_ok(["sysctl", "-n", key]).trim(), "1", "{key}");
    }
    // The switch only bridges: no IPv6 there.
    let switch_v6 = topo.switch().ip(["-6", "addr"]);
    assert_eq!(switch_v6.trim(), "", "{switch_v6}");
    topo.pin_neighbors();
    let client = topo.client();
    let addrs = client.ip(["addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("198.18.0.3/24") && addrs.contains("2001:db8:18::3/64"),
        "{addrs}"
    );
    assert_eq!(topo.unknown_client_addr6(), topology::UNKNOWN_CLIENT_ADDR6);
    let lb_neighbours = topo.lb().ip(["neigh", "show", "dev", "lb-client"]);
    assert!(
        !lb_neighbours.contains("198.18.0.3 ") && !lb_neighbours.contains("2001:db8:18::3 "),
        "{lb_neighbours}"
    );
    assert!(lb_neighbours.contains("2001:db8:18::2 "), "{lb_neighbours}");

    let backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    for (k, backend) in backends.iter().enumerate() {
        for ip in topo.backend_ips(k + 1) {
            let url = http_url(ip, HTTP_PORT, "/");
            let results = curl_many(client, &url, 10, None, 2);
            let tally = Tally::of(&results);
            assert_eq!(
                (tally.count(backend.name()), tally.failed()),
                (10, 0),
                "{url}: {tally}"
            );
            let replies = udp_many(
                client,
                SocketAddr::new(ip, UDP_PORT),
                "hi",
                10,
                None,
                TIMEOUT,
            );
            let tally = Tally::of(&replies);
            assert_eq!(
                (tally.count(backend.name()), tally.failed()),
                (10, 0),
                "{ip}: {tally}"
            );
        }
        let peers = backend.peers();
        let expected = [
            (IpAddr::V4(topology::CLIENT_ADDR), 20),
            (IpAddr::V6(topology::CLIENT_ADDR6), 20),
        ];
        assert_eq!(peers.into_iter().collect::<Vec<_>>(), expected);
    }

    // Both VIPs are the LB's own addresses here: a server in the LB namespace answers.
    let on_lb = Backend::start(
        topo.lb(),
        "lb",
        &[
            SocketAddr::new(VIP.into(), HTTP_PORT),
            SocketAddr::new(VIP6.into(), HTTP_PORT),
        ],
        &[],
    );
    for vip in topo.vips() {
        let body = http_get(client, &http_url(vip, HTTP_PORT, "/"), None, TIMEOUT).unwrap();
        assert_eq!(body, "lb\n", "{vip}");
    }

    drop(on_lb);
    drop(backends);
    drop(topo);
    assert_no_namespace_left(&prefix);
}
