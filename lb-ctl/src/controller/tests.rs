//! The controller against an in-memory data plane and host (`fake`): start, re-adoption,
//! changes, reloads, drains, the sweep and status, without a kernel or root.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use lb_common::{
    BACKEND_F_DRAINING, BACKEND_F_USABLE, Flow, FlowKey, ListenerKey, PROTO_TCP, Reason,
    TrafficCounters,
};

use super::{
    Controller, ControllerError, Done, Options, StartError,
    fake::{FakeHost, SharedMaps},
};
use crate::{
    api::exit,
    overlay::{self, Change},
    reconcile::MapOp,
};

const CONFIG: &str = "
instance: t
interfaces: [eth0]
max_backends: 256
vserver_groups:
  - name: app
    servers:
      - { address: 198.18.1.10, port: 8080 }
      - { address: 198.18.1.11, port: 8080 }
listeners:
  - name: web
    protocol: tcp
    address: 198.19.0.100
    port: 80
    server_group: app
    connection_drain: { enabled: true, timeout: 30 }
";

/// A config file and a state folder in a temporary folder, and a host in memory.
struct Setup {
    dir: PathBuf,
    host: FakeHost,
    options: Options,
}

impl Setup {
    fn new(name: &str, config: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("lb-ctl-controller-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let options = Options {
            config_path: dir.join("lb.yaml"),
            state_dir: dir.join("state"),
            bpffs: dir.join("bpffs"),
        };
        let setup = Self {
            dir,
            host: FakeHost::new(),
            options,
        };
        setup.write_config(config);
        setup
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.options.config_path, text).unwrap();
    }

    fn start(&self) -> Controller<FakeHost> {
        Controller::start_on(self.host.clone(), self.options.clone()).expect("starts")
    }

    fn maps(&self) -> SharedMaps {
        self.host.maps()
    }

    fn saved_changes(&self) -> Vec<Change> {
        let path = overlay::state_path(&self.options.state_dir, "t");
        overlay::load_state(&path, "t").unwrap()
    }

    fn saved_drains(&self) -> Vec<overlay::DrainRecord> {
        let path = overlay::state_path(&self.options.state_dir, "t");
        overlay::load_state_with_drains(&path, "t").unwrap().1
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The message of a successful operation; panics with the error otherwise.
#[track_caller]
fn ok(result: Result<Done, ControllerError>) -> String {
    match result {
        Ok(done) => done.message,
        Err(e) => panic!("expected success, got: {e}"),
    }
}

/// The message of a refusal with `code`; panics otherwise.
#[track_caller]
fn error(result: Result<Done, ControllerError>, code: i32) -> String {
    match result {
        Err(e) if e.exit_code() == code => e.to_string(),
        other => panic!("expected an error with exit code {code}, got {other:?}"),
    }
}

/// The id of a backend of listener `web`.
fn backend_id(c: &Controller<FakeHost>, address: &str) -> u32 {
    c.desired().listeners["web"]
        .backends
        .iter()
        .find(|b| b.key.address == ip(address))
        .unwrap_or_else(|| panic!("no backend {address}"))
        .id
}

fn web_key() -> ListenerKey {
    ListenerKey {
        addr: u32::from_ne_bytes([198, 19, 0, 100]),
        port: 80u16.to_be(),
        protocol: PROTO_TCP,
        _pad: 0,
    }
}

/// An established flow of listener `web` to `backend`, last seen `now`.
fn add_flow(maps: &SharedMaps, client_port: u16, backend: u32, listener: u32, now: u64) {
    let key = FlowKey {
        src_addr: u32::from_ne_bytes([198, 18, 0, 7]),
        dst_addr: u32::from_ne_bytes([198, 19, 0, 100]),
        src_port: client_port.to_be(),
        dst_port: 80u16.to_be(),
        protocol: PROTO_TCP,
        ..Default::default()
    };
    let flow = Flow {
        backend,
        listener,
        last_seen_ns: now,
        ..Default::default()
    };
    maps.borrow_mut().tables.flows.insert(key, flow);
}

#[test]
fn start_on_an_empty_data_plane_fills_the_maps_and_attaches() {
    let s = Setup::new("start", CONFIG);
    let mut c = s.start();
    let maps = s.maps();
    {
        let m = maps.borrow();
        let web = m.tables.listeners[&web_key()];
        assert_eq!(web.id, c.desired().listeners["web"].id);
        assert!(
            m.tables
                .listeners
                .contains_key(&ListenerKey::vip_marker(web_key().addr)),
            "the VIP's marker"
        );
        for address in ["198.18.1.10", "198.18.1.11"] {
            let b = m.tables.backends[&backend_id(&c, address)];
            assert_eq!(b.flags & BACKEND_F_USABLE, BACKEND_F_USABLE, "{address}");
        }
        assert_eq!(m.tx_ports, [2].into(), "eth0 is a redirect target");
    }
    assert_eq!(s.host.0.borrow().prepared, vec![vec!["eth0".to_owned()]]);
    assert!(c.runtime.local_addresses.contains(&ip("198.18.0.1").into()));

    let status = c.status().unwrap();
    assert_eq!(status.instance, "t");
    assert_eq!(status.interfaces[0].mode, "native");
    let web = &status.listeners[0];
    assert_eq!((web.name.as_str(), web.backends.len()), ("web", 2));
    assert!(
        web.backends
            .iter()
            .all(|b| b.state == "up" && b.origin == "config")
    );

    // explain runs the data plane's decision over these maps.
    let client = "198.18.0.7:40000".parse().unwrap();
    let vip = "198.19.0.100:80".parse().unwrap();
    let data = c
        .explain(client, vip, crate::config::Protocol::Tcp, None)
        .expect("explained")
        .data;
    assert_eq!(data["outcome"], "forward", "{data}");
    // An IPv6 packet runs over the IPv6 tables (no IPv6 listener here), and a packet of
    // two families is refused.
    let v6 = |s: &str| s.parse().unwrap();
    let data6 = c
        .explain(
            v6("[2001:db8::7]:40000"),
            v6("[2001:db8::100]:80"),
            crate::config::Protocol::Tcp,
            None,
        )
        .expect("explained")
        .data;
    assert_eq!(data6["outcome"], "pass", "{data6}");
    assert_eq!(
        error(
            c.explain(
                v6("[2001:db8::7]:40000"),
                vip,
                crate::config::Protocol::Tcp,
                None
            ),
            exit::REFUSED
        ),
        "explain [2001:db8::7]:40000 -> 198.19.0.100:80: the source and destination are of \
         different address families"
    );
    let backend = data["backend"].as_str().unwrap();
    assert!(
        ["198.18.1.10:8080", "198.18.1.11:8080"].contains(&backend),
        "{backend}"
    );
}

/// The error `start_on` ends with; panics if it starts.
#[track_caller]
fn start_error(s: &Setup) -> StartError {
    match Controller::start_on(s.host.clone(), s.options.clone()) {
        Ok(_) => panic!("started"),
        Err(e) => e,
    }
}

#[test]
fn a_start_that_fails_says_why_with_the_exit_code() {
    // A broken config is bad input: exit 2, naming the file and the error.
    let s = Setup::new("start-errors", &CONFIG.replace("port: 80\n", "port: 0\n"));
    let e = start_error(&s);
    assert!(matches!(e, StartError::BadConfig { .. }), "{e:?}");
    assert_eq!(e.exit_code(), exit::REFUSED);
    let message = e.to_string();
    assert!(message.contains("lb.yaml has 1 error(s)"), "{message}");
    assert!(message.contains("port: 0 is not in 1..=65535"), "{message}");
    assert!(s.host.0.borrow().pinned.is_none(), "nothing was loaded");

    // A state file that cannot be read: a failure (1), nothing loaded either.
    s.write_config(CONFIG);
    let state = overlay::state_path(&s.options.state_dir, "t");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, "{ not json").unwrap();
    let e = start_error(&s);
    assert!(matches!(e, StartError::State(_)), "{e:?}");
    assert_eq!(e.exit_code(), exit::FAILED);
    assert!(s.host.0.borrow().pinned.is_none(), "nothing was loaded");
    std::fs::remove_file(&state).unwrap();

    // An interface that does not exist at start: attaching fails (1).
    s.write_config(&CONFIG.replace("[eth0]", "[eth9]"));
    let e = start_error(&s);
    assert!(matches!(e, StartError::Failed(_)), "{e:?}");
    assert_eq!(e.exit_code(), exit::FAILED);
    assert!(e.to_string().contains("no interface eth9"), "{e}");
}

#[test]
fn a_restart_adopts_the_pinned_data_plane_keeping_ids_and_down_backends() {
    let s = Setup::new("adopt", CONFIG);
    let first = s.start();
    let listener = first.desired().listeners["web"].id;
    let (a, b) = (
        backend_id(&first, "198.18.1.10"),
        backend_id(&first, "198.18.1.11"),
    );
    let generation = s.maps().borrow().tables.backends[&a].generation;
    drop(first);
    // The previous daemon's health checker had taken .11 out.
    s.maps()
        .borrow_mut()
        .tables
        .backends
        .get_mut(&b)
        .unwrap()
        .flags &= !BACKEND_F_USABLE;
    s.maps().borrow_mut().written.clear();

    let second = s.start();
    assert_eq!(second.desired().listeners["web"].id, listener);
    assert_eq!(backend_id(&second, "198.18.1.10"), a);
    assert_eq!(s.maps().borrow().tables.backends[&a].generation, generation);
    let written = s.maps().borrow().written.clone();
    assert!(
        !written
            .iter()
            .any(|op| matches!(op, MapOp::SetBackend { fresh: true, .. })),
        "no backend id handed out again: {written:?}"
    );
    assert!(
        second
            .runtime
            .unhealthy
            .iter()
            .any(|k| k.address == ip("198.18.1.11")),
        "a backend found unusable starts down"
    );
}

#[test]
fn changes_add_reweigh_and_remove_servers_and_are_saved() {
    let s = Setup::new("change", CONFIG);
    let mut c = s.start();
    ok(c.change(Change::ServerAdd {
        group: "app".into(),
        address: ip("198.18.1.12").into(),
        port: Some(8080),
        weight: None,
    }));
    assert_eq!(c.desired().listeners["web"].backends.len(), 3);
    let new = backend_id(&c, "198.18.1.12");
    assert!(s.maps().borrow().tables.backends.contains_key(&new));

    ok(c.change(Change::ServerSet {
        group: "app".into(),
        address: ip("198.18.1.12").into(),
        port: Some(8080),
        weight: 0,
    }));
    let b = s.maps().borrow().tables.backends[&new];
    assert_eq!(
        (b.weight, b.flags & BACKEND_F_USABLE),
        (0, BACKEND_F_USABLE)
    );
    assert_eq!(s.saved_changes().len(), 2);

    // Connection drain is on: a removed server departs with its flows...
    ok(c.change(Change::ServerRemove {
        group: "app".into(),
        address: ip("198.18.1.11").into(),
        port: Some(8080),
        now: false,
    }));
    let status = c.status().unwrap();
    let departing: Vec<_> = status.listeners[0]
        .backends
        .iter()
        .filter(|b| b.departing)
        .map(|b| b.address)
        .collect();
    assert_eq!(departing, [ip("198.18.1.11")]);
    assert!(s.saved_drains().iter().any(|d| d.departing));
    // ...unless cut at once.
    ok(c.change(Change::ServerRemove {
        group: "app".into(),
        address: ip("198.18.1.12").into(),
        port: Some(8080),
        now: true,
    }));
    assert_eq!(s.maps().borrow().tables.backends[&new].flags, 0);
    assert_eq!(s.saved_changes().len(), 4);
    // Its endpoint lingers, so an answer already under way reaches its client; the sweep
    // after the linger removes it.
    let has_endpoint = |addr: &str| {
        let addr = IpAddr::from(ip(addr));
        s.maps()
            .borrow()
            .endpoints
            .keys()
            .any(|k| k.address() == addr)
    };
    assert!(has_endpoint("198.18.1.12"));
    s.host.advance(4);
    c.expire_drains().unwrap();
    assert!(has_endpoint("198.18.1.12"));
    s.host.advance(1);
    c.expire_drains().unwrap();
    assert!(!has_endpoint("198.18.1.12"));
    assert!(has_endpoint("198.18.1.10"));

    // A refused change writes nothing, here or on disk.
    let written = s.maps().borrow().written.len();
    let message = error(
        c.change(Change::ServerAdd {
            group: "nope".into(),
            address: ip("198.18.1.13").into(),
            port: Some(8080),
            weight: None,
        }),
        exit::REFUSED,
    );
    assert!(message.contains("no server group `nope`"), "{message}");
    assert_eq!(s.maps().borrow().written.len(), written);
    assert_eq!(s.saved_changes().len(), 4);

    // A change that cannot be saved is not made: a failure, not a refusal.
    let state = overlay::state_path(&s.options.state_dir, "t");
    std::fs::create_dir_all(state.with_extension("json.tmp")).unwrap();
    let result = c.change(Change::ServerAdd {
        group: "app".into(),
        address: ip("198.18.1.13").into(),
        port: Some(8080),
        weight: None,
    });
    assert!(
        matches!(result, Err(ControllerError::State(_))),
        "{result:?}"
    );
    error(result, exit::FAILED);
    assert_eq!(s.maps().borrow().written.len(), written);
    std::fs::remove_dir(state.with_extension("json.tmp")).unwrap();

    // The overlay survives a restart.
    drop(c);
    let c = s.start();
    assert_eq!(
        c.desired().listeners["web"].backends.len(),
        2,
        "one departing"
    );
}

#[test]
fn a_reload_with_a_config_error_changes_nothing_and_names_the_file() {
    let s = Setup::new("reload", CONFIG);
    let mut c = s.start();
    let written = s.maps().borrow().written.len();
    s.write_config(&CONFIG.replace("port: 80\n", "port: 70000\n"));
    let result = c.reload();
    assert!(matches!(result, Err(ControllerError::BadConfig { .. })));
    let message = error(result, exit::REFUSED);
    assert!(
        message.contains(&s.options.config_path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(message.contains("listeners[0].port"), "{message}");
    assert_eq!(s.maps().borrow().written.len(), written);

    // Fixed: the difference is applied, and only that.
    s.write_config(&CONFIG.replace(
        "      - { address: 198.18.1.11, port: 8080 }\n",
        "      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080 }\n",
    ));
    ok(c.reload());
    assert_eq!(c.desired().listeners["web"].backends.len(), 3);
    let written = s.maps().borrow().written[written..].to_vec();
    assert!(
        !written
            .iter()
            .any(|op| matches!(op, MapOp::ResetCursor { .. })),
        "the listener stays: {written:?}"
    );

    // The instance name is fixed while the daemon runs.
    s.write_config(&CONFIG.replace("instance: t", "instance: u"));
    let message = error(c.reload(), exit::REFUSED);
    assert!(message.contains("instance u"), "{message}");
}

#[test]
fn drain_and_undrain_mark_the_backend_and_persist() {
    let s = Setup::new("drain", CONFIG);
    let mut c = s.start();
    let id = backend_id(&c, "198.18.1.10");
    let now = s.host.0.borrow().monotonic_ns;
    let message = ok(c.drain("app", ip("198.18.1.10").into(), None, Some(10)));
    assert!(message.contains("flows cut after 10 s"), "{message}");
    let b = s.maps().borrow().tables.backends[&id];
    assert_eq!(b.flags & BACKEND_F_DRAINING, BACKEND_F_DRAINING);
    assert_eq!(b.drain_deadline_ns, now + 10 * super::NS_PER_S);
    let status = c.status().unwrap();
    let drained = status.listeners[0]
        .backends
        .iter()
        .find(|b| b.backend_id == id)
        .unwrap();
    assert_eq!(
        (drained.state.as_str(), drained.drain_left_s),
        ("draining", Some(10))
    );
    assert_eq!(s.saved_drains().len(), 1);
    assert_eq!(s.saved_drains()[0].protocol, crate::config::Protocol::Tcp);

    // A restart keeps the deadline (moved to the wall clock and back).
    drop(c);
    let mut c = s.start();
    assert_eq!(
        s.maps().borrow().tables.backends[&id].drain_deadline_ns,
        now + 10 * super::NS_PER_S
    );

    // Past the deadline the data plane cuts the drained server's flows; it stays drained
    // (no new flows) until undrained.
    s.host.advance(11);
    c.expire_drains().unwrap();
    let status = c.status().unwrap();
    let drained = status.listeners[0]
        .backends
        .iter()
        .find(|b| b.backend_id == id)
        .unwrap();
    assert_eq!(
        (drained.state.as_str(), drained.drain_left_s),
        ("draining", Some(0))
    );

    error(
        c.drain("app", ip("198.18.9.9").into(), None, None),
        exit::REFUSED,
    );
    // An IPv6 server is named as the CLI takes it, and has no backend to drain yet.
    let v6 = "2001:db8::10".parse().unwrap();
    assert!(
        error(c.drain("app", v6, Some(8080), None), exit::REFUSED)
            .starts_with("no server [2001:db8::10]:8080 in group app serves a listener")
    );
    ok(c.undrain("app", ip("198.18.1.10").into(), None));
    assert_eq!(
        s.maps().borrow().tables.backends[&id].flags & BACKEND_F_DRAINING,
        0
    );
    assert!(s.saved_drains().is_empty());
    error(
        c.undrain("app", ip("198.18.1.10").into(), None),
        exit::REFUSED,
    );
}

#[test]
fn a_departing_backend_is_retired_after_its_deadline_or_once_idle() {
    let s = Setup::new("depart", CONFIG);
    let mut c = s.start();
    let listener = c.desired().listeners["web"].id;
    let (a, b) = (backend_id(&c, "198.18.1.10"), backend_id(&c, "198.18.1.11"));
    let now = s.host.0.borrow().monotonic_ns;
    // .10 has a flow going on; .11 none.
    add_flow(&s.maps(), 40000, a, listener, now);
    for address in ["198.18.1.10", "198.18.1.11"] {
        ok(c.change(Change::ServerRemove {
            group: "app".into(),
            address: ip(address).into(),
            port: Some(8080),
            now: false,
        }));
    }
    c.sweep().unwrap();
    c.expire_drains().unwrap();
    assert_eq!(c.runtime.departing.len(), 2);

    // Idle for more than two sweeps' worth: .11 goes, .10 keeps its flow.
    s.host.advance(3);
    add_flow(&s.maps(), 40000, a, listener, now + 3 * super::NS_PER_S);
    c.sweep().unwrap();
    c.expire_drains().unwrap();
    let left: Vec<IpAddr> = c.runtime.departing.keys().map(|k| k.address).collect();
    assert_eq!(left, [IpAddr::from(ip("198.18.1.10"))]);
    assert_eq!(s.maps().borrow().tables.backends[&b].flags, 0, "retired");

    // Past the 30 s deadline the data plane cuts its flows; 5 s later it is retired.
    s.host.advance(30);
    add_flow(&s.maps(), 40000, a, listener, now + 33 * super::NS_PER_S);
    c.sweep().unwrap();
    c.expire_drains().unwrap();
    assert_eq!(c.runtime.departing.len(), 1, "cut, not yet retired");
    s.host.advance(3);
    c.expire_drains().unwrap();
    assert!(c.runtime.departing.is_empty());
    assert_eq!(s.maps().borrow().tables.backends[&a].flags, 0);
    assert!(s.saved_drains().is_empty());
}

#[test]
fn the_sweep_counts_active_flows_and_feeds_wlc() {
    let s = Setup::new(
        "sweep",
        &CONFIG.replace("server_group: app", "server_group: app\n    scheduler: wlc"),
    );
    let mut c = s.start();
    let listener = c.desired().listeners["web"].id;
    let (a, b) = (backend_id(&c, "198.18.1.10"), backend_id(&c, "198.18.1.11"));
    let now = s.host.0.borrow().monotonic_ns;
    for port in 1..=3 {
        add_flow(&s.maps(), port, a, listener, now);
    }
    add_flow(&s.maps(), 4, b, listener, now);
    // Idle past the established timeout: present, not active.
    add_flow(&s.maps(), 5, b, listener, now - 100_000 * super::NS_PER_S);
    c.sweep().unwrap();
    {
        let m = s.maps();
        let m = m.borrow();
        assert_eq!(m.tables.active_flows[&a], 3);
        assert_eq!(m.tables.active_flows[&b], 1);
    }
    let data = c
        .active_flows("app", ip("198.18.1.10").into(), None)
        .expect("counted")
        .data;
    assert_eq!(data["active_flows"], 3);
    let status = c.last_status().unwrap();
    assert_eq!(status.flow_table.entries, 5);
    let flows: Vec<u32> = status.listeners[0]
        .backends
        .iter()
        .map(|b| b.active_flows)
        .collect();
    assert_eq!(flows, [3, 1]);
    assert!(c.sweep_due(), "wlc needs fresh counts every tick");
}

#[test]
fn status_and_stats_read_each_ids_counters() {
    let s = Setup::new("status", CONFIG);
    let mut c = s.start();
    let listener = c.desired().listeners["web"].id;
    let a = backend_id(&c, "198.18.1.10");
    {
        let maps = s.maps();
        let mut m = maps.borrow_mut();
        m.listener_stats.insert(
            listener,
            TrafficCounters {
                packets: 9,
                ..Default::default()
            },
        );
        m.backend_stats.insert(
            a,
            TrafficCounters {
                new_flows: 4,
                ..Default::default()
            },
        );
        m.counters.insert(Reason::EventFlowInserted as u32, 12);
        m.counters.insert(Reason::Forwarded as u32, 9);
    }
    add_flow(&s.maps(), 1, a, listener, s.host.0.borrow().monotonic_ns);
    let status = c.status().unwrap();
    assert_eq!(status.listeners[0].stats.packets, 9);
    let new_flows: Vec<u64> = status.listeners[0]
        .backends
        .iter()
        .map(|b| b.stats.new_flows)
        .collect();
    assert_eq!(new_flows, [4, 0]);
    assert_eq!(status.flow_table.entries, 1);
    assert_eq!(status.flow_table.evicted, 11, "12 inserted, 1 present");
    assert_eq!(c.last_status().unwrap().flow_table.evicted, 11);
    let stats = c.stats().unwrap();
    assert_eq!(stats.listeners[0].stats.packets, 9);
    assert_eq!(stats.reasons["forwarded"], 9);
    assert_eq!(stats.reasons.len(), lb_common::REASON_COUNT as usize);
}

#[test]
fn interfaces_and_host_addresses_are_followed() {
    let s = Setup::new("host", CONFIG);
    let mut c = s.start();
    s.host.0.borrow_mut().interfaces.clear();
    c.check_interfaces().unwrap();
    assert_eq!(c.status().unwrap().interfaces[0].mode, "missing");
    assert!(s.maps().borrow().tx_ports.is_empty());

    s.host.0.borrow_mut().interfaces.insert("eth0".into(), 7);
    c.check_interfaces().unwrap();
    let status = c.status().unwrap();
    assert_eq!(
        (
            status.interfaces[0].ifindex,
            status.interfaces[0].mode.as_str()
        ),
        (7, "native")
    );
    assert_eq!(s.maps().borrow().tx_ports, [7].into());
    assert_eq!(s.host.0.borrow().prepared.len(), 2, "prepared again");

    s.host.0.borrow_mut().addresses.insert(ip("198.18.0.9"));
    c.refresh_local_addresses().unwrap();
    assert!(c.runtime.local_addresses.contains(&ip("198.18.0.9").into()));
    let refused = u32::from_ne_bytes([198, 18, 0, 9]);
    assert!(
        s.maps()
            .borrow()
            .tables
            .acls
            .iter()
            .any(|&(_, addr, len)| addr == refused && len == 32),
        "refused as a client source"
    );
}

#[test]
fn a_vip_is_healthy_while_a_backend_takes_new_flows() {
    let config = format!(
        "{CONFIG}  - name: dns
    protocol: udp
    address: 198.19.0.101
    port: 53
    server_group: app
    health_check: {{ type: none }}
"
    );
    let s = Setup::new("healthy-vips", &config);
    let mut c = s.start();
    let both = [ip("198.19.0.100"), ip("198.19.0.101")].map(IpAddr::from);
    assert_eq!(c.healthy_vips().into_iter().collect::<Vec<_>>(), both);
    // Every backend of `web` down: its VIP goes, the other stays.
    c.runtime.unhealthy = c.desired().listeners["web"]
        .backends
        .iter()
        .map(|b| b.key)
        .collect();
    c.apply().unwrap();
    assert_eq!(
        c.healthy_vips().into_iter().collect::<Vec<_>>(),
        [IpAddr::from(ip("198.19.0.101"))]
    );
    // One back: announced again.
    let first = c.desired().listeners["web"].backends[0].key;
    c.runtime.unhealthy.remove(&first);
    c.apply().unwrap();
    assert_eq!(c.healthy_vips().into_iter().collect::<Vec<_>>(), both);
    // Weight 0 everywhere takes no new flows either.
    for address in ["198.18.1.10", "198.18.1.11"] {
        ok(c.change(Change::ServerSet {
            group: "app".into(),
            address: ip(address).into(),
            port: Some(8080),
            weight: 0,
        }));
    }
    assert!(c.healthy_vips().is_empty());
}

#[test]
fn xdp_mode_is_applied_at_start_and_on_reload() {
    let s = Setup::new(
        "xdpmode",
        &CONFIG.replace(
            "interfaces: [eth0]\n",
            "interfaces: [eth0]\nxdp_mode: generic\n",
        ),
    );
    let mut c = s.start();
    assert_eq!(c.status().unwrap().interfaces[0].mode, "generic");
    // Another mode is a reason to attach again, without new interfaces.
    s.write_config(CONFIG);
    ok(c.reload());
    assert_eq!(c.status().unwrap().interfaces[0].mode, "native");
    assert_eq!(c.effective().xdp_mode, crate::config::XdpMode::Auto);
}
