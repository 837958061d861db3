//! End-to-end tests of `parse`: the contract example, one test per rule (accepted and
//! refused), several errors in one pass, syntax errors, and the YAML round trip.

use std::net::Ipv4Addr;

use lb_common::Scheduler;

use super::*;

/// The full example of docs/config.md, minus the `udp:` section of the `web` listener's HTTP check (a
/// section only read for `type: udp`, which the validator refuses; see
/// `design_example_as_written_has_one_error`).
const DESIGN_EXAMPLE: &str = r#"
instance: demo                  # names the pin folder /sys/fs/bpf/<instance>
interfaces: [eth0, eth1]        # where the XDP program attaches (client and backend side)
forwarding: nat                 # nat (default); dsr and fullnat later
flow_table_size: 1048576        # flow entries (LRU), 1024..=67108864
health_check_source: 198.18.1.1 # optional source address for probes
metrics_listen: 127.0.0.1:9100  # optional; off when absent (/metrics and the status page)
acls:
  - { name: office, entries: [198.18.0.0/24, 198.18.7.7/32] }
default_server_group:           # exactly one; servers carry no port
  servers:
    - { address: 198.18.1.10, weight: 100 }
    - { address: 198.18.1.11 }              # weight defaults to 100
vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080, weight: 100 }
      - { address: 198.18.1.10, port: 8081, weight: 50 }
primary_secondary_groups:
  - name: db
    primary:   { address: 198.18.1.20, port: 5432 }
    secondary: { address: 198.18.1.21, port: 5432 }
    probe_secondary: false                 # default false, as in CLB
listeners:
  - name: web
    protocol: tcp               # tcp | udp (http/https rejected: L7)
    address: 198.18.0.100       # the VIP
    port: 80                    # 1..=65535
    backend_port: 8080          # required with the default group, refused otherwise
    scheduler: wrr              # wrr (default) | rr | wlc | sch | tch
    persistence_timeout: 0      # seconds, 0..=3600, 0 = off (source-IP affinity)
    established_timeout: 900    # seconds a TCP flow may idle, 10..=900
    udp_timeout: 30             # seconds a UDP flow may idle, 10..=900
    connection_drain: { enabled: false, timeout: 300 }   # timeout 10..=900
    acl: { type: deny, name: office }                    # allow | deny; optional
    slow_start: 0               # seconds to ramp a recovered/added backend, 0..=600
    health_check:
      type: http                # tcp | http | udp | none (default tcp)
      interval: 2               # seconds, 1..=50
      timeout: 5                # seconds, 1..=300
      healthy_threshold: 3      # 2..=10
      unhealthy_threshold: 3    # 2..=10
      port: 8080                # optional override of the backend port
      http: { method: get, host: example.test, path: /healthz, codes: [http_2xx, http_3xx] }
      flap_damping: { max_flaps: 4, window: 60, hold: 120 }   # optional
  - name: api
    protocol: tcp
    address: 198.18.0.100
    port: 443
    server_group: api
  - name: db
    protocol: udp
    address: 198.18.0.100
    port: 5432
    server_group: db
"#;

const BASE: &str = "instance: demo\ninterfaces: [eth0]\n";

fn ok(yaml: &str) -> Config {
    match parse(yaml) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}\n---\n{yaml}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// A config whose listeners are given as flow-style mappings, one per line, on the
/// default group unless they say otherwise.
fn listeners(lines: &[&str]) -> String {
    let mut yaml = with("listeners:\n");
    for line in lines {
        yaml.push_str(&format!("  - {{ {line} }}\n"));
    }
    yaml
}

// --- the contract example -------------------------------------------------------------

#[test]
fn design_example_parses() {
    let c = ok(DESIGN_EXAMPLE);
    assert_eq!(c.instance, "demo");
    assert_eq!(c.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.forwarding, Forwarding::Nat);
    assert_eq!(c.flow_table_size, 1 << 20);
    assert_eq!(c.max_listeners, lb_common::DEFAULT_MAX_LISTENERS);
    assert_eq!(
        c.health_check_source,
        Some(Ipv4Addr::new(198, 18, 1, 1).into())
    );
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(c.acls[0].entries.len(), 2);
    assert_eq!(c.default_server_group.servers[1].weight, 100);
    assert_eq!(c.vserver_groups[0].servers[1].weight, 50);
    let db = c.primary_secondary_group("db").unwrap();
    assert_eq!(db.secondary.to_string(), "198.18.1.21:5432");
    assert!(!db.probe_secondary);

    let web = c.listener("web").unwrap();
    assert_eq!(web.backend_port, Some(8080));
    assert_eq!(web.named_group(), None);
    assert_eq!(web.scheduler, Scheduler::Wrr);
    assert_eq!(
        web.acl,
        Some(ListenerAcl {
            kind: AclKind::Deny,
            name: "office".to_owned()
        })
    );
    let http = web.health_check.http_settings();
    assert_eq!(web.health_check.kind, Some(HealthCheckKind::Http));
    assert_eq!(http.path, "/healthz");
    assert_eq!(http.host.as_deref(), Some("example.test"));
    assert_eq!(web.health_check.flap_damping.unwrap().hold, 120);

    let api = c.listener("api").unwrap();
    assert_eq!(api.named_group(), Some("api"));
    assert_eq!(api.health_check, HealthCheck::default());
    assert_eq!(c.listener("db").unwrap().protocol, Protocol::Udp);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn design_example_as_written_has_one_error() {
    let as_written = DESIGN_EXAMPLE.replace(
        "      flap_damping:",
        "      udp: { request: \"ping\", expect: \"pong\" }\n      flap_damping:",
    );
    assert_eq!(
        errors(&as_written),
        [
            "listeners[0].health_check.udp: this section is only read when type is udp (type is http; remove the section or set type: udp)"
        ]
    );
}

// --- several errors in one pass -------------------------------------------------------

#[test]
fn every_error_is_reported_in_one_pass() {
    let yaml = r#"
instance: demo
interfaces: [eth0]
flow_table_size: lots
vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080, wieght: 50 }
listeners:
  - { name: web, protocol: tcp, address: 198.18.0.100, port: 80, server_group: apx }
  - { name: dns, protocol: udp, address: 198.18.0.100, port: 70000, server_group: api }
  - { name: web2, protocol: tcp, address: 198.18.0.100, port: 80, server_group: api }
"#;
    let err = parse(yaml).unwrap_err();
    assert_eq!(
        err.paths(),
        [
            "flow_table_size",
            "vserver_groups[0].servers[0].wieght",
            "listeners[0].server_group",
            "listeners[1].port",
            "listeners[2]",
        ]
    );
    assert_eq!(
        err.to_string(),
        "flow_table_size: expected an integer, found the string `lots`\n\
         vserver_groups[0].servers[0].wieght: unknown field `wieght` (did you mean `weight`?)\n\
         listeners[0].server_group: no server group named `apx`; known: api (did you mean `api`?)\n\
         listeners[1].port: 70000 is not in 1..=65535\n\
         listeners[2]: two listeners on 198.18.0.100:80/tcp: listeners[0] and listeners[2]"
    );
}

#[test]
fn a_field_the_reader_reported_causes_no_second_error() {
    // The missing port would otherwise also fail the range check and make both listeners
    // look like duplicates on port 0; the bad group name would make the reference dangle.
    let yaml = with(
        "vserver_groups: [{ name: 5, servers: [] }]\n\
         listeners:\n\
         \x20 - { name: a, protocol: tcp, address: 198.18.0.1, server_group: x }\n\
         \x20 - { name: b, protocol: tcp, address: 198.18.0.1, server_group: x }\n",
    );
    assert_eq!(
        errors(&yaml),
        [
            "vserver_groups[0].name: expected a string, found the number 5 (quote it: \"5\")",
            "listeners[0].port: required field is missing",
            "listeners[1].port: required field is missing",
        ]
    );
}

#[test]
fn a_listener_that_is_not_a_mapping_keeps_the_indices_of_the_others() {
    let yaml = listeners(&[
        "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80",
        "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80",
    ])
    .replace("listeners:\n", "listeners:\n  - just a string\n");
    assert_eq!(
        errors(&yaml),
        [
            "listeners[0]: expected a mapping, found the string `just a string`",
            "listeners[2].name: two listeners named `a`: listeners[1] and listeners[2]",
            "listeners[2]: two listeners on 198.18.0.1:80/tcp: listeners[1] and listeners[2]",
        ]
    );
}

// --- syntax ---------------------------------------------------------------------------

#[test]
fn yaml_syntax_errors_give_line_and_column() {
    let err = parse("instance: demo\ninterfaces: [eth0\nlisteners: []\n").unwrap_err();
    assert_eq!(err.len(), 1);
    let e = &err.errors()[0];
    assert_eq!(e.path, "");
    let location = e.location.unwrap();
    assert_eq!(location.line, 3);
    assert!(location.column >= 1);
    assert!(
        e.message.starts_with("YAML syntax error: "),
        "{}",
        e.message
    );
    assert!(e.to_string().starts_with("line 3, column "), "{e}");

    let err = parse("instance: demo\n  interfaces: x\n").unwrap_err();
    assert_eq!(err.errors()[0].location.map(|l| l.line), Some(2));
}

#[test]
fn duplicate_keys_are_a_syntax_error() {
    let err = parse("instance: demo\ninstance: other\ninterfaces: [eth0]\n").unwrap_err();
    assert!(err.to_string().contains("duplicate entry"), "{err}");
}

#[test]
fn merge_keys_share_settings() {
    let c = ok(&with(
        "listeners:\n\
         \x20 - &common { name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 8080, scheduler: sch }\n\
         \x20 - { <<: *common, name: b, port: 81 }\n",
    ));
    assert_eq!(c.listeners[1].scheduler, Scheduler::Sch);
    assert_eq!(c.listeners[1].port, 81);
}

// --- loading --------------------------------------------------------------------------

#[test]
fn load_reads_a_file_and_names_an_unreadable_one() {
    let dir = std::env::temp_dir().join(format!("lb-ctl-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.yaml");
    std::fs::write(&file, DESIGN_EXAMPLE).unwrap();
    assert_eq!(load(&file), parse(DESIGN_EXAMPLE));

    let missing = dir.join("missing.yaml");
    let err = load(&missing).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err.errors()[0].path, "");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- round trip -----------------------------------------------------------------------

#[test]
fn design_example_round_trips_through_yaml() {
    let c = ok(DESIGN_EXAMPLE);
    let yaml = c.to_yaml();
    assert_eq!(ok(&yaml), c, "exported:\n{yaml}");
}

#[test]
fn every_setting_round_trips_through_yaml() {
    let yaml = r#"
instance: edge-1
interfaces: [eth0, "123", "true"]
flow_table_size: 1024
max_listeners: 3
max_backends: 100
health_check_source: 198.18.1.1
metrics_listen: 0.0.0.0:9100
acls:
  - { name: office, entries: [0.0.0.0/0, 198.18.7.7] }
  - { name: none }
default_server_group:
  servers: [{ address: 198.18.1.10, weight: 0 }]
vserver_groups:
  - { name: empty }
  - name: "null"
    servers: [{ address: 198.18.1.10, port: 1, weight: 7 }]
primary_secondary_groups:
  - name: db
    primary: { address: 198.18.1.20, port: 5432 }
    secondary: { address: 198.18.1.20, port: 5433 }
    probe_secondary: true
listeners:
  - name: web
    protocol: tcp
    address: 198.18.0.100
    port: 80
    backend_port: 8080
    scheduler: tch
    persistence_timeout: 3600
    established_timeout: 10
    udp_timeout: 900
    connection_drain: { enabled: true, timeout: 10 }
    acl: { type: allow, name: office }
    slow_start: 600
    health_check:
      type: http
      interval: 50
      timeout: 300
      healthy_threshold: 10
      unhealthy_threshold: 2
      port: 65535
      http: { method: head, host: "yes", path: "/a:b?c=#d", codes: [http_5xx] }
      flap_damping: { max_flaps: 100, window: 3600, hold: 86400 }
  - name: dns
    protocol: udp
    address: 198.18.0.100
    port: 53
    server_group: "null"
    scheduler: rr
    health_check:
      type: udp
      udp: { request: "ping: 1", expect: "" }
  - name: db
    protocol: tcp
    address: 198.18.0.101
    port: 5432
    server_group: db
    scheduler: wlc
    health_check: { type: none }
"#;
    let c = ok(yaml);
    let exported = c.to_yaml();
    assert_eq!(ok(&exported), c, "exported:\n{exported}");
    assert_eq!(c.interfaces[1], "123");
    assert_eq!(c.vserver_groups[1].name, "null");
}

#[test]
fn a_config_built_in_code_exports_to_yaml_that_parses() {
    let mut c = Config::new("demo", vec!["eth0".to_owned()]);
    c.vserver_groups.push(VServerGroup {
        name: "api".to_owned(),
        servers: vec![Member::new(Ipv4Addr::new(198, 18, 1, 10), 8080)],
    });
    let mut l = Listener::new("api", Protocol::Tcp, Ipv4Addr::new(198, 18, 0, 100), 443);
    l.server_group = Some("api".to_owned());
    c.listeners.push(l);
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(ok(&c.to_yaml()), c);
}

// --- Config::validate on configs built in code ----------------------------------------

#[test]
fn validate_checks_a_config_built_in_code_with_the_same_paths() {
    let mut c = Config::new("demo", vec!["eth0".to_owned()]);
    c.max_listeners = 0;
    c.default_server_group
        .servers
        .push(DefaultServer::new(Ipv4Addr::new(198, 18, 1, 10)));
    let mut web = Listener::new("web", Protocol::Tcp, Ipv4Addr::new(198, 18, 0, 100), 0);
    web.health_check.interval = 0;
    web.server_group = Some("nowhere".to_owned());
    c.listeners.push(web);
    c.vserver_groups.push(VServerGroup {
        name: "default".to_owned(),
        servers: vec![Member {
            weight: 101,
            ..Member::new(Ipv4Addr::new(198, 18, 1, 10), 80)
        }],
    });
    let err = c.validate().unwrap_err();
    assert_eq!(
        err.paths(),
        [
            "max_listeners",
            "vserver_groups[0].name",
            "vserver_groups[0].servers[0].weight",
            "listeners",
            "listeners[0].port",
            "listeners[0].server_group",
            "listeners[0].health_check.interval",
        ]
    );
}

#[test]
fn validate_treats_server_group_default_as_the_default_group() {
    let mut c = Config::new("demo", vec!["eth0".to_owned()]);
    let mut l = Listener::new("web", Protocol::Tcp, Ipv4Addr::new(198, 18, 0, 100), 80);
    l.server_group = Some("default".to_owned());
    c.listeners.push(l.clone());
    assert_eq!(
        c.validate().unwrap_err().paths(),
        ["listeners[0].backend_port"]
    );
    c.listeners[0].backend_port = Some(8080);
    assert_eq!(c.validate(), Ok(()));
}

// --- one test per rule ----------------------------------------------------------------

#[test]
fn rule_instance_name() {
    for good in ["demo", "a", "lb-1_x", &"a".repeat(32)] {
        ok(&format!("instance: {good}\ninterfaces: [eth0]\n"));
    }
    let hint = "(it names the pin folder /sys/fs/bpf/<instance>: 1 to 32 characters of a-z, \
                0-9, `_` and `-`, starting with a letter)";
    for (bad, problem) in [
        ("Demo", "must start with a lowercase letter"),
        ("1lb", "must start with a lowercase letter"),
        ("lb.x", "may hold only a-z, 0-9, `_` and `-`"),
        ("lb/x", "may hold only a-z, 0-9, `_` and `-`"),
        ("\"\"", "must not be empty"),
    ] {
        let shown = if bad == "\"\"" { "" } else { bad };
        assert_eq!(
            errors(&format!("instance: {bad}\ninterfaces: [eth0]\n")),
            [format!(
                "instance: the instance name `{shown}` {problem} {hint}"
            )]
        );
    }
    assert_eq!(
        errors(&format!(
            "instance: {}\ninterfaces: [eth0]\n",
            "a".repeat(33)
        ))[0],
        format!(
            "instance: the instance name `{}` is longer than 32 characters {hint}",
            "a".repeat(33)
        )
    );
}

#[test]
fn rule_interfaces() {
    ok("instance: demo\ninterfaces: [eth0, eth1, enp3s0f0np0, veth-lb.100]\n");
    assert_eq!(
        errors("instance: demo\ninterfaces: []\n"),
        [
            "interfaces: at least one interface is required (name the NICs the XDP program attaches to, e.g. [eth0])"
        ]
    );
    assert_eq!(
        errors("instance: demo\ninterfaces: [eth0, eth1, eth0]\n"),
        ["interfaces[2]: `eth0` is listed twice: interfaces[0] and interfaces[2]"]
    );
    assert_eq!(
        errors(
            "instance: demo\ninterfaces: [eth/0, 'eth 0', abcdefghijklmnop, 'eth0:1', '..', '']\n"
        ),
        [
            "interfaces[0]: `eth/0` is not a valid interface name: it contains `/`",
            "interfaces[1]: `eth 0` is not a valid interface name: it contains whitespace",
            "interfaces[2]: `abcdefghijklmnop` is not a valid interface name: longer than 15 bytes",
            "interfaces[3]: `eth0:1` is not a valid interface name: it contains `:` (an alias, not an interface)",
            "interfaces[4]: `..` is not a valid interface name: `.` and `..` are reserved",
            "interfaces[5]: `` is not a valid interface name: it is empty",
        ]
    );
}

#[test]
fn rule_top_level_ranges() {
    ok(&with(
        "flow_table_size: 1024\nmax_listeners: 4096\nmax_backends: 1048576\n",
    ));
    ok(&with(
        "flow_table_size: 67108864\nmax_listeners: 1\nmax_backends: 1\n",
    ));
    assert_eq!(
        errors(&with(
            "flow_table_size: 1023\nmax_listeners: 4097\nmax_backends: 0\n"
        )),
        [
            "flow_table_size: 1023 is not in 1024..=67108864",
            "max_listeners: 4097 is not in 1..=4096",
            "max_backends: 0 is not in 1..=1048576",
        ]
    );
    assert_eq!(
        errors(&with("flow_table_size: 67108865\n")),
        ["flow_table_size: 67108865 is not in 1024..=67108864"]
    );
}

#[test]
fn rule_unicast_addresses() {
    ok(&with("health_check_source: 198.18.1.1\n"));
    assert_eq!(
        errors(&with(
            "health_check_source: 0.0.0.0\ndefault_server_group: { servers: [{ address: 127.0.0.1 }] }\n\
             listeners: [{ name: a, protocol: udp, address: 224.0.0.1, port: 53, backend_port: 53 }]\n"
        )),
        [
            "health_check_source: 0.0.0.0 is the unspecified address; the probe source must be a unicast address",
            "default_server_group.servers[0].address: 127.0.0.1 is a loopback address; a server must be a unicast address",
            "listeners[0].address: 224.0.0.1 is a multicast address; a VIP must be a unicast address",
        ]
    );
}

#[test]
fn rule_metrics_hosts_are_host_names() {
    let c = ok(&with(
        "metrics_hosts: [lb-host, lb.example.test, LB-2.example.test.]\n",
    ));
    assert_eq!(c.metrics_hosts.len(), 3);
    assert_eq!(
        errors(&with(
            "metrics_hosts: [ok.example, 'lb-host:9100', 127.0.0.1, '-x.example', '']\n"
        )),
        [
            "metrics_hosts[1]: `lb-host:9100` is not a host name (a DNS name such as lb-host or lb.example.test, without a port; the listener's own address is always accepted)",
            "metrics_hosts[2]: `127.0.0.1` is not a host name (a DNS name such as lb-host or lb.example.test, without a port; the listener's own address is always accepted)",
            "metrics_hosts[3]: `-x.example` is not a host name (a DNS name such as lb-host or lb.example.test, without a port; the listener's own address is always accepted)",
            "metrics_hosts[4]: `` is not a host name (a DNS name such as lb-host or lb.example.test, without a port; the listener's own address is always accepted)",
        ]
    );
}

#[test]
fn rule_metrics_listen_port() {
    ok(&with("metrics_listen: '[::1]:9100'\n"));
    assert_eq!(
        errors(&with("metrics_listen: 127.0.0.1:0\n")),
        [
            "metrics_listen: port 0 is not in 1..=65535 (give the port scrapers will use, e.g. 127.0.0.1:9100)"
        ]
    );
}

#[test]
fn rule_acl_names_unique() {
    ok(&with(
        "acls: [{ name: office, entries: [] }, { name: lab, entries: [198.18.9.0/24] }]\n",
    ));
    assert_eq!(
        errors(&with(
            "acls: [{ name: office }, { name: office }, { name: 'bad name' }]\n"
        )),
        [
            "acls[1].name: two ACLs named `office`: acls[0] and acls[1]",
            "acls[2].name: `bad name` is not a valid ACL name (use 1 to 64 characters: letters, digits, `_`, `.` and `-`)",
        ]
    );
}

#[test]
fn rule_listener_acl_must_exist() {
    let listener = "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80, acl: { type: allow, name: ofice }";
    ok(&listeners(&[listener]).replace("listeners:", "acls: [{ name: ofice }]\nlisteners:"));
    assert_eq!(
        errors(&listeners(&[listener]).replace(
            "listeners:",
            "acls: [{ name: office }, { name: lab }]\nlisteners:"
        )),
        [
            "listeners[0].acl.name: no ACL named `ofice`; known: office, lab (did you mean `office`?)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[listener])),
        ["listeners[0].acl.name: no ACL named `ofice`; none is defined (define it under `acls`)"]
    );
}

#[test]
fn rule_default_group_addresses_unique() {
    ok(&with(
        "default_server_group: { servers: [{ address: 198.18.1.10 }, { address: 198.18.1.11 }] }\n",
    ));
    ok(&with("default_server_group: {}\n"));
    assert_eq!(
        errors(&with(
            "default_server_group: { servers: [{ address: 198.18.1.10 }, { address: 198.18.1.11 }, { address: 198.18.1.10 }] }\n"
        )),
        [
            "default_server_group.servers[2].address: 198.18.1.10 is listed twice: default_server_group.servers[0] and default_server_group.servers[2] (a server of the default group is its address alone; each listener's backend_port gives the port)"
        ]
    );
}

#[test]
fn rule_weights() {
    ok(&with(
        "default_server_group: { servers: [{ address: 198.18.1.10, weight: 0 }, { address: 198.18.1.11, weight: 100 }] }\n",
    ));
    assert_eq!(
        errors(&with(
            "default_server_group: { servers: [{ address: 198.18.1.10, weight: 101 }] }\n\
             vserver_groups: [{ name: g, servers: [{ address: 198.18.1.10, port: 80, weight: -5 }] }]\n"
        )),
        [
            "default_server_group.servers[0].weight: 101 is not in 0..=100",
            "vserver_groups[0].servers[0].weight: -5 is not in 0..=100",
        ]
    );
}

#[test]
fn rule_group_names_unique_across_kinds() {
    let ps = "primary_secondary_groups: [{ name: NAME, primary: { address: 198.18.1.20, port: 1 }, secondary: { address: 198.18.1.21, port: 1 } }]\n";
    ok(&with(&format!(
        "vserver_groups: [{{ name: api }}]\n{}",
        ps.replace("NAME", "db")
    )));
    assert_eq!(
        errors(&with(&format!(
            "vserver_groups: [{{ name: api }}]\n{}",
            ps.replace("NAME", "api")
        ))),
        [
            "primary_secondary_groups[0].name: two server groups named `api`: vserver_groups[0] and primary_secondary_groups[0] (vServer and primary/secondary groups share one set of names)"
        ]
    );
    assert_eq!(
        errors(&with("vserver_groups: [{ name: api }, { name: api }]\n")),
        [
            "vserver_groups[1].name: two server groups named `api`: vserver_groups[0] and vserver_groups[1] (vServer and primary/secondary groups share one set of names)"
        ]
    );
}

#[test]
fn rule_group_name_default_is_reserved() {
    assert_eq!(
        errors(&with("vserver_groups: [{ name: default }]\n")),
        [
            "vserver_groups[0].name: the name `default` is reserved for the default server group (list its servers under `default_server_group`, where they carry no port, or choose another name)"
        ]
    );
    assert_eq!(
        errors(&with(
            "primary_secondary_groups: [{ name: default, primary: { address: 198.18.1.20, port: 1 }, secondary: { address: 198.18.1.21, port: 1 } }]\n"
        )),
        [
            "primary_secondary_groups[0].name: the name `default` is reserved for the default server group (choose another name)"
        ]
    );
}

#[test]
fn rule_group_name_characters() {
    ok(&with(&format!(
        "vserver_groups: [{{ name: A.b_c-9 }}, {{ name: {} }}]\n",
        "g".repeat(64)
    )));
    assert_eq!(
        errors(&with(&format!(
            "vserver_groups: [{{ name: 'a b' }}, {{ name: {} }}, {{ name: '' }}]\n",
            "g".repeat(65)
        ))),
        [
            "vserver_groups[0].name: `a b` is not a valid server group name (use 1 to 64 characters: letters, digits, `_`, `.` and `-`)".to_owned(),
            format!("vserver_groups[1].name: the server group name `{}` is longer than 64 characters (use 1 to 64 characters: letters, digits, `_`, `.` and `-`)", "g".repeat(65)),
            "vserver_groups[2].name: a server group name must not be empty (use 1 to 64 characters: letters, digits, `_`, `.` and `-`)".to_owned(),
        ]
    );
}

#[test]
fn rule_vserver_members_unique_by_address_and_port() {
    let c = ok(&with(
        "vserver_groups: [{ name: api, servers: [{ address: 198.18.1.10, port: 8080 }, { address: 198.18.1.10, port: 8081 }] }, { name: empty, servers: [] }]\n",
    ));
    assert_eq!(c.vserver_groups[0].servers.len(), 2);
    assert!(c.vserver_groups[1].servers.is_empty());
    assert_eq!(
        errors(&with(
            "vserver_groups: [{ name: api, servers: [{ address: 198.18.1.10, port: 8080 }, { address: 198.18.1.11, port: 8080 }, { address: 198.18.1.10, port: 8080, weight: 5 }] }]\n",
        )),
        [
            "vserver_groups[0].servers[2]: 198.18.1.10:8080 is listed twice in group `api`: vserver_groups[0].servers[0] and vserver_groups[0].servers[2] (a server may appear again only with another port)"
        ]
    );
}

#[test]
fn rule_vserver_member_ports() {
    assert_eq!(
        errors(&with(
            "vserver_groups: [{ name: api, servers: [{ address: 198.18.1.10, port: 0 }, { address: 198.18.1.10 }] }]\n"
        )),
        [
            "vserver_groups[0].servers[0].port: 0 is not in 1..=65535",
            "vserver_groups[0].servers[1].port: required field is missing",
        ]
    );
}

#[test]
fn rule_primary_and_secondary_differ() {
    let group = |secondary: &str| {
        with(&format!(
            "primary_secondary_groups: [{{ name: db, primary: {{ address: 198.18.1.20, port: 5432 }}, secondary: {secondary} }}]\n"
        ))
    };
    ok(&group("{ address: 198.18.1.21, port: 5432 }"));
    ok(&group("{ address: 198.18.1.20, port: 5433 }"));
    assert_eq!(
        errors(&group("{ address: 198.18.1.20, port: 5432 }")),
        [
            "primary_secondary_groups[0].secondary: the secondary is the same endpoint as the primary, 198.18.1.20:5432 (a primary/secondary group needs two different members)"
        ]
    );
}

#[test]
fn rule_listener_names_unique() {
    let yaml = listeners(&[
        "name: web, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80",
        "name: web, protocol: tcp, address: 198.18.0.1, port: 81, backend_port: 80",
        "name: 'w b', protocol: tcp, address: 198.18.0.1, port: 82, backend_port: 80",
    ]);
    assert_eq!(
        errors(&yaml),
        [
            "listeners[1].name: two listeners named `web`: listeners[0] and listeners[1]",
            "listeners[2].name: `w b` is not a valid listener name (use 1 to 64 characters: letters, digits, `_`, `.` and `-`)",
        ]
    );
}

#[test]
fn rule_listener_frontends_unique() {
    ok(&listeners(&[
        "name: a, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 80",
        "name: b, protocol: udp, address: 198.19.0.100, port: 80, backend_port: 80",
        "name: c, protocol: tcp, address: 198.19.0.101, port: 80, backend_port: 80",
        "name: d, protocol: tcp, address: 198.19.0.100, port: 8080, backend_port: 80",
    ]));
    assert_eq!(
        errors(&listeners(&[
            "name: a, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 80",
            "name: b, protocol: udp, address: 198.19.0.100, port: 80, backend_port: 80",
            "name: c, protocol: udp, address: 198.19.0.100, port: 81, backend_port: 80",
            "name: d, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080",
        ])),
        ["listeners[3]: two listeners on 198.19.0.100:80/tcp: listeners[0] and listeners[3]"]
    );
}

#[test]
fn rule_default_group_listener_needs_backend_port() {
    ok(&listeners(&[
        "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 8080",
    ]));
    assert_eq!(
        errors(&listeners(&[
            "name: a, protocol: tcp, address: 198.18.0.1, port: 80"
        ])),
        [
            "listeners[0].backend_port: a listener on the default server group must set backend_port (the default group's servers carry no port; backend_port gives it for this listener)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[
            "name: a, protocol: tcp, address: 198.18.0.1, port: 80, server_group: default"
        ])),
        [
            "listeners[0].backend_port: a listener on the default server group must set backend_port (the default group's servers carry no port; backend_port gives it for this listener)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[
            "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 0"
        ])),
        ["listeners[0].backend_port: 0 is not in 1..=65535"]
    );
}

#[test]
fn rule_named_group_listener_refuses_backend_port() {
    let groups = "vserver_groups: [{ name: api }]\nlisteners:";
    ok(
        &listeners(&["name: a, protocol: tcp, address: 198.18.0.1, port: 80, server_group: api"])
            .replace("listeners:", groups),
    );
    assert_eq!(
        errors(
            &listeners(&["name: a, protocol: tcp, address: 198.18.0.1, port: 80, server_group: api, backend_port: 8080"])
                .replace("listeners:", groups)
        ),
        ["listeners[0].backend_port: backend_port is only for listeners on the default server group; this one uses group `api` (ports come from the group's members; remove backend_port)"]
    );
}

#[test]
fn rule_server_group_must_exist() {
    let ps = "primary_secondary_groups: [{ name: db, primary: { address: 198.18.1.20, port: 1 }, secondary: { address: 198.18.1.21, port: 1 } }]\n";
    let listener = "name: a, protocol: udp, address: 198.18.0.1, port: 53, server_group: dns";
    ok(&listeners(&[listener]).replace(
        "listeners:",
        &format!("vserver_groups: [{{ name: dns }}]\n{ps}listeners:"),
    ));
    ok(
        &listeners(&["name: a, protocol: tcp, address: 198.18.0.1, port: 5432, server_group: db"])
            .replace("listeners:", &format!("{ps}listeners:")),
    );
    assert_eq!(
        errors(&listeners(&[listener]).replace(
            "listeners:",
            &format!("vserver_groups: [{{ name: api }}]\n{ps}listeners:")
        )),
        [
            "listeners[0].server_group: no server group named `dns`; known: api, db (define it under `vserver_groups` or `primary_secondary_groups`, or leave server_group out to use the default group)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[listener])),
        [
            "listeners[0].server_group: no server group named `dns`; none is defined (define it under `vserver_groups` or `primary_secondary_groups`, or leave server_group out to use the default group)"
        ]
    );
}

#[test]
fn rule_persistence_is_for_tcp_listeners() {
    ok(&listeners(&[
        "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80, persistence_timeout: 3600",
    ]));
    ok(&listeners(&[
        "name: a, protocol: udp, address: 198.18.0.1, port: 53, backend_port: 53, persistence_timeout: 0",
    ]));
    assert_eq!(
        errors(&listeners(&[
            "name: a, protocol: udp, address: 198.18.0.1, port: 53, backend_port: 53, persistence_timeout: 60"
        ])),
        [
            "listeners[0].persistence_timeout: persistence applies to tcp listeners only; this one is udp (set it to 0, or use scheduler `sch` for source-IP affinity)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[
            "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80, persistence_timeout: 3601"
        ])),
        ["listeners[0].persistence_timeout: 3601 is not in 0..=3600"]
    );
}

#[test]
fn rule_maglev_table_size_is_a_prime_that_fits_maglev_slots() {
    let line = |size: u32| {
        format!(
            "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80, scheduler: tch, maglev_table_size: {size}"
        )
    };
    let c = ok(&listeners(&[&line(655_373)]));
    assert_eq!(c.listeners[0].maglev_table_size, 655_373);
    assert!(c.to_yaml().contains("maglev_table_size: 655373"));
    assert!(
        !ok(&listeners(&[&line(65_537)]))
            .to_yaml()
            .contains("maglev_table_size")
    );
    assert_eq!(
        errors(&listeners(&[&line(655_370)])),
        [
            "listeners[0].maglev_table_size: 655370 is not a prime, and a Maglev table needs a prime size (the nearest primes: 655357 and 655373)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[&line(1000)])),
        ["listeners[0].maglev_table_size: 1000 is not in 1021..=4194301"]
    );
    // Two tables of each listener must fit the shared array.
    let two = [
        line(655_373),
        line(65_537)
            .replace("name: a", "name: b")
            .replace("port: 80,", "port: 81,"),
    ];
    let two: Vec<&str> = two.iter().map(String::as_str).collect();
    let c = ok(&listeners(&two).replace("listeners:", "maglev_slots: 1441820\nlisteners:"));
    assert_eq!(c.maglev_slots(), 1_441_820);
    assert_eq!(
        errors(&listeners(&two).replace("listeners:", "maglev_slots: 1441819\nlisteners:")),
        [
            "maglev_slots: the listeners' Maglev tables need 1441820 slots (2 × maglev_table_size each), but maglev_slots is 1441819 (raise maglev_slots (4 bytes a slot); at most 1073741824)"
        ]
    );
    // By default, room for max_listeners listeners at the default size.
    let c = ok(&listeners(&two).replace("listeners:", "max_listeners: 12\nlisteners:"));
    assert_eq!(c.maglev_slots(), 12 * 2 * 65_537);
    assert_eq!(
        errors(&listeners(&two).replace("listeners:", "max_listeners: 5\nlisteners:")),
        [
            "maglev_slots: the listeners' Maglev tables need 1441820 slots (2 × maglev_table_size each), but maglev_slots is 655370 (raise maglev_slots (4 bytes a slot); at most 1073741824)"
        ]
    );
}

#[test]
fn rule_listener_timeouts() {
    let l = "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80";
    ok(&listeners(&[&format!(
        "{l}, established_timeout: 10, udp_timeout: 900, slow_start: 600, connection_drain: {{ enabled: true, timeout: 900 }}"
    )]));
    assert_eq!(
        errors(&listeners(&[&format!(
            "{l}, established_timeout: 9, udp_timeout: 901, slow_start: 601, connection_drain: {{ timeout: 5 }}"
        )])),
        [
            "listeners[0].established_timeout: 9 is not in 10..=900",
            "listeners[0].udp_timeout: 901 is not in 10..=900",
            "listeners[0].connection_drain.timeout: 5 is not in 10..=900",
            "listeners[0].slow_start: 601 is not in 0..=600",
        ]
    );
}

#[test]
fn rule_health_check_ranges() {
    let l = "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80";
    ok(&listeners(&[&format!(
        "{l}, health_check: {{ interval: 1, timeout: 300, healthy_threshold: 2, unhealthy_threshold: 10, port: 1 }}"
    )]));
    assert_eq!(
        errors(&listeners(&[&format!(
            "{l}, health_check: {{ interval: 51, timeout: 0, healthy_threshold: 1, unhealthy_threshold: 11, port: 0, flap_damping: {{ max_flaps: 101, window: 0, hold: 86401 }} }}"
        )])),
        [
            "listeners[0].health_check.interval: 51 is not in 1..=50",
            "listeners[0].health_check.timeout: 0 is not in 1..=300",
            "listeners[0].health_check.healthy_threshold: 1 is not in 2..=10",
            "listeners[0].health_check.unhealthy_threshold: 11 is not in 2..=10",
            "listeners[0].health_check.port: 0 is not in 1..=65535",
            "listeners[0].health_check.flap_damping.max_flaps: 101 is not in 1..=100",
            "listeners[0].health_check.flap_damping.window: 0 is not in 1..=3600",
            "listeners[0].health_check.flap_damping.hold: 86401 is not in 1..=86400",
        ]
    );
}

#[test]
fn rule_health_check_sections_match_the_type() {
    let l = "name: a, protocol: udp, address: 198.18.0.1, port: 53, backend_port: 53";
    // Any check type on any listener: CLB allows a TCP check of a UDP service.
    ok(&listeners(&[&format!(
        "{l}, health_check: {{ type: http, http: {{ path: /ok }} }}"
    )]));
    ok(&listeners(&[&format!(
        "{l}, health_check: {{ type: tcp }}"
    )]));
    ok(&listeners(&[&format!(
        "{l}, health_check: {{ type: udp, udp: {{ request: ping }} }}"
    )]));
    assert_eq!(
        errors(&listeners(&[&format!(
            "{l}, health_check: {{ http: {{ path: /ok }} }}"
        )])),
        [
            "listeners[0].health_check.http: this section is only read when type is http (type is udp (the default of a udp listener); remove the section or set type: http)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[&format!(
            "{l}, health_check: {{ type: tcp, http: {{ path: /ok }} }}"
        )])),
        [
            "listeners[0].health_check.http: this section is only read when type is http (type is tcp; remove the section or set type: http)"
        ]
    );
    assert_eq!(
        errors(&listeners(&[&format!(
            "{l}, health_check: {{ type: none, udp: {{ expect: pong }} }}"
        )])),
        [
            "listeners[0].health_check.udp: this section is only read when type is udp (type is none; remove the section or set type: udp)"
        ]
    );
}

#[test]
fn a_check_without_a_type_is_the_listener_protocol_s() {
    let udp = "name: dns, protocol: udp, address: 198.18.0.1, port: 53, backend_port: 53";
    let tcp = "name: web, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80";
    let c = ok(&listeners(&[udp, tcp]));
    assert_eq!(c.listeners[0].health_check, HealthCheck::default());
    assert_eq!(c.listeners[0].health_check_kind(), HealthCheckKind::Udp);
    assert_eq!(c.listeners[1].health_check_kind(), HealthCheckKind::Tcp);
    // The default UDP probe: an empty datagram, healthy unless it draws an ICMP error.
    assert_eq!(
        c.listeners[0].health_check.udp_settings(),
        UdpCheck::default()
    );

    // A section without `type` keeps the protocol's check.
    let c = ok(&listeners(&[
        &format!("{udp}, health_check: {{ interval: 1, udp: {{ request: ping, expect: pong }} }}"),
        &format!("{tcp}, health_check: {{ interval: 1 }}"),
    ]));
    assert_eq!(c.listeners[0].health_check_kind(), HealthCheckKind::Udp);
    assert_eq!(
        c.listeners[0].health_check.udp_settings().expect.as_deref(),
        Some("pong")
    );
    assert_eq!(c.listeners[1].health_check_kind(), HealthCheckKind::Tcp);
    assert_eq!(
        errors(&listeners(&[&format!(
            "{tcp}, health_check: {{ udp: {{ request: ping }} }}"
        )])),
        [
            "listeners[0].health_check.udp: this section is only read when type is udp (type is tcp (the default of a tcp listener); remove the section or set type: udp)"
        ]
    );

    // Asked for explicitly, a TCP check of a UDP service stays one.
    let c = ok(&listeners(&[&format!(
        "{udp}, health_check: {{ type: tcp }}"
    )]));
    assert_eq!(c.listeners[0].health_check_kind(), HealthCheckKind::Tcp);
}

#[test]
fn the_check_type_survives_an_export_whatever_the_protocol() {
    let udp = |name: &str, port: u16| {
        format!("name: {name}, protocol: udp, address: 198.18.0.1, port: {port}, backend_port: 53")
    };
    let c = ok(&listeners(&[
        &udp("dns", 53),
        &format!("{}, health_check: {{ type: tcp }}", udp("tcp-check", 54)),
        &format!("{}, health_check: {{ interval: 10 }}", udp("slow", 55)),
    ]));
    let yaml = c.to_yaml();
    assert_eq!(ok(&yaml), c, "exported:\n{yaml}");
    let kinds: Vec<HealthCheckKind> = ok(&yaml)
        .listeners
        .iter()
        .map(Listener::health_check_kind)
        .collect();
    assert_eq!(
        kinds,
        [
            HealthCheckKind::Udp,
            HealthCheckKind::Tcp,
            HealthCheckKind::Udp
        ]
    );
    // The default stays out of the export.
    assert_eq!(yaml.matches("health_check").count(), 2, "{yaml}");
}

#[test]
fn a_listener_made_in_code_gets_its_protocol_s_check() {
    let vip = Ipv4Addr::new(198, 18, 0, 1);
    let udp = Listener::new("dns", Protocol::Udp, vip, 53);
    let tcp = Listener::new("web", Protocol::Tcp, vip, 80);
    assert_eq!(udp.health_check_kind(), HealthCheckKind::Udp);
    assert_eq!(tcp.health_check_kind(), HealthCheckKind::Tcp);
}

#[test]
fn rule_http_check_settings() {
    let l = "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80";
    let c = ok(&listeners(&[&format!(
        "{l}, health_check: {{ type: http }}"
    )]));
    assert_eq!(
        c.listeners[0].health_check.http_settings(),
        HttpCheck::default()
    );
    assert_eq!(
        errors(&listeners(&[&format!(
            "{l}, health_check: {{ type: http, http: {{ path: healthz, host: 'a b', codes: [] }} }}"
        )])),
        [
            "listeners[0].health_check.http.path: `healthz` is not an HTTP request path (start with `/` and use no spaces, e.g. /healthz)",
            "listeners[0].health_check.http.host: `a b` is not a valid Host header value (a host name such as example.test, without spaces)",
            "listeners[0].health_check.http.codes: at least one status class is required (e.g. [http_2xx, http_3xx])",
        ]
    );
}

#[test]
fn rule_listener_count_within_max_listeners() {
    let two = [
        "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80",
        "name: b, protocol: tcp, address: 198.18.0.1, port: 81, backend_port: 80",
    ];
    ok(&listeners(&two).replace("listeners:", "max_listeners: 2\nlisteners:"));
    assert_eq!(
        errors(&listeners(&two).replace("listeners:", "max_listeners: 1\nlisteners:")),
        ["listeners: 2 listeners, but max_listeners is 1 (raise max_listeners; at most 4096)"]
    );
}

#[test]
fn rule_backends_within_max_backends() {
    let yaml = |max: u32| {
        listeners(&[
            "name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80",
            "name: b, protocol: tcp, address: 198.18.0.1, port: 81, server_group: api",
        ])
        .replace(
            "listeners:",
            &format!(
                "max_backends: {max}\ndefault_server_group: {{ servers: [{{ address: 198.18.1.10 }}, {{ address: 198.18.1.11 }}] }}\n\
                 vserver_groups: [{{ name: api, servers: [{{ address: 198.18.1.10, port: 1 }}] }}]\nlisteners:"
            ),
        )
    };
    ok(&yaml(3));
    assert_eq!(
        errors(&yaml(2)),
        [
            "max_backends: the listeners need 3 backend entries (one per listener and group member), but max_backends is 2 (raise max_backends; at most 1048576)"
        ]
    );
}

#[test]
fn rule_wrr_group_fits_the_sequence_table() {
    let table = lb_common::SEQUENCE_TABLE_SIZE as usize;
    let config = |members: usize, scheduler: Scheduler| {
        let mut c = Config::new("demo", vec!["eth0".to_owned()]);
        c.max_backends = 1 << 20;
        c.vserver_groups.push(VServerGroup {
            name: "big".to_owned(),
            servers: (0..members)
                .map(|i| {
                    let [_, _, hi, lo] = (i as u32 / 1000).to_be_bytes();
                    let port = 1000 + (i % 1000) as u16;
                    Member::new(Ipv4Addr::new(198, 18, hi, lo), port)
                })
                .collect(),
        });
        let mut l = Listener::new("web", Protocol::Tcp, Ipv4Addr::new(198, 19, 0, 100), 80);
        l.server_group = Some("big".to_owned());
        l.scheduler = scheduler;
        c.listeners.push(l);
        c
    };
    assert_eq!(config(table, Scheduler::Wrr).validate(), Ok(()));
    assert_eq!(config(table + 1, Scheduler::Sch).validate(), Ok(()));
    let err = config(table + 1, Scheduler::Wrr).validate().unwrap_err();
    assert_eq!(err.paths(), ["listeners[0].scheduler"]);
    assert_eq!(
        err.iter().next().unwrap().to_string(),
        "listeners[0].scheduler: wrr cannot schedule the 65537 servers of group `big`: its \
         sequence table holds 65536, and each server needs a turn (split the group across \
         listeners of at most 65536 servers, or use scheduler `sch` or `tch`)"
    );
}

// --- forwarding: dsr --------------------------------------------------------------------

#[test]
fn dsr_settings_round_trip_through_yaml() {
    let c = ok(&with(
        "forwarding: dsr\ndsr: { encapsulation: gue, gue_port: 9000, source: 198.18.9.0/24 }\n",
    ));
    let exported = c.to_yaml();
    assert_eq!(ok(&exported), c, "exported:\n{exported}");
    let c = ok(&with("forwarding: dsr\ndsr: { source: 198.18.9.7 }\n"));
    assert_eq!(ok(&c.to_yaml()), c);
}

#[test]
fn rule_dsr_backends_listen_on_the_listener_port() {
    let yaml = "forwarding: dsr
default_server_group:
  servers: [{ address: 198.18.1.10 }]
vserver_groups:
  - name: api
    servers: [{ address: 198.18.1.10, port: 443 }, { address: 198.18.1.11, port: 8443 }]
primary_secondary_groups:
  - { name: db, primary: { address: 198.18.1.20, port: 5432 }, secondary: { address: 198.18.1.21, port: 5433 } }
listeners:
  - { name: web, protocol: tcp, address: 198.18.0.100, port: 80, backend_port: 8080 }
  - { name: api, protocol: tcp, address: 198.18.0.100, port: 443, server_group: api }
  - { name: db, protocol: tcp, address: 198.18.0.100, port: 5432, server_group: db }
  - { name: ok, protocol: udp, address: 198.18.0.100, port: 53, backend_port: 53 }
";
    let hint = "(with forwarding: dsr the backend receives the client's packet unchanged, so it \
                must listen on the listener's port (the VIP too, on its loopback))";
    assert_eq!(
        errors(&with(yaml)),
        [
            format!(
                "vserver_groups[0].servers[1].port: port 8443 differs from port 443 of listener \
                 `api`, which forwarding: dsr cannot translate {hint}"
            ),
            format!(
                "primary_secondary_groups[0].secondary.port: port 5433 differs from port 5432 of \
                 listener `db`, which forwarding: dsr cannot translate {hint}"
            ),
            format!(
                "listeners[0].backend_port: port 8080 differs from port 80 of listener `web`, \
                 which forwarding: dsr cannot translate {hint}"
            ),
        ]
    );
    // The same config in NAT mode translates ports.
    ok(&with(&yaml.replace("forwarding: dsr", "forwarding: nat")));
}

#[test]
fn rule_dsr_settings_apply_to_dsr_only_and_within_their_ranges() {
    assert_eq!(
        errors(&with("dsr: { encapsulation: gue }\n")),
        [
            "dsr: the dsr section applies to `forwarding: dsr`; forwarding is nat (set `forwarding: \
             dsr`, or remove the dsr section)"
        ]
    );
    assert_eq!(
        errors(&with("forwarding: dsr\ndsr: { gue_port: 7000 }\n")),
        [
            "dsr.gue_port: gue_port applies to `encapsulation: gue`; this is ipip (set \
             `encapsulation: gue`, or remove gue_port)"
        ]
    );
    assert_eq!(
        errors(&with("forwarding: dsr\ndsr: { source: 198.18.0.0/15 }\n")),
        [
            "dsr.source: a /15 spans more than 16 bits of flow hash (give an address, or a \
             prefix from /16 to /32 routed back to the LB hosts (ICMP errors about the tunnel \
             come back to it))"
        ]
    );
    ok(&with("forwarding: dsr\ndsr: { source: 198.18.0.0/16 }\n"));
}

// --- bgp ------------------------------------------------------------------------------

const BGP_EXAMPLE: &str = "bgp:
  router_id: 198.18.2.11
  local_as: 65001
  hold_time: 3
  neighbors:
    - { address: 198.18.2.1, remote_as: 65000, bfd: true }
";

#[test]
fn the_issue_bgp_example_parses_with_defaults_filled() {
    let c = ok(&with(BGP_EXAMPLE));
    let bgp = c.bgp.expect("a bgp section");
    assert_eq!(bgp.router_id, Ipv4Addr::new(198, 18, 2, 11));
    assert_eq!(bgp.local_as, 65001);
    assert_eq!(bgp.hold_time, 3);
    assert_eq!(bgp.withdraw_wait, 2);
    assert_eq!(bgp.neighbors.len(), 1);
    let n = &bgp.neighbors[0];
    assert_eq!(n.address, Ipv4Addr::new(198, 18, 2, 1));
    assert_eq!(n.remote_as, 65000);
    assert_eq!(n.port, 179);
    assert!(n.bfd);
    assert_eq!(n.password, None);
}

#[test]
fn bgp_defaults_and_absence() {
    assert_eq!(ok(BASE).bgp, None);
    let c = ok(&with(
        "bgp: { router_id: 198.18.2.11, local_as: 4200000000, neighbors: \
         [{ address: 198.18.2.1, remote_as: 65000 }] }\n",
    ));
    let bgp = c.bgp.unwrap();
    assert_eq!(bgp.hold_time, 9);
    assert_eq!(bgp.local_as, 4_200_000_000);
    assert!(!bgp.neighbors[0].bfd);
}

#[test]
fn every_bgp_setting_round_trips_through_yaml() {
    let c = ok(&with(
        "bgp:
  router_id: 198.18.2.11
  local_as: 65001
  hold_time: 0
  withdraw_wait: 0
  neighbors:
    - { address: 198.18.2.1, remote_as: 65000, port: 1179, bfd: true, password: s3cret }
    - { address: 198.18.2.2, remote_as: 65002 }
",
    ));
    let yaml = c.to_yaml();
    assert_eq!(ok(&yaml), c, "{yaml}");
    assert!(!with(BGP_EXAMPLE).is_empty());
    let defaults = ok(&with(
        BGP_EXAMPLE.replace("hold_time: 3", "hold_time: 9").as_str(),
    ));
    let exported = defaults.to_yaml();
    for absent in ["hold_time", "withdraw_wait", "port:"] {
        assert!(!exported.contains(absent), "{absent} in\n{exported}");
    }
}

#[test]
fn bgp_errors_name_their_path() {
    let found = errors(&with(
        "bgp:
  router_id: 2001:db8::1
  local_as: 0
  hold_time: 2
  withdraw_wait: 301
  neighbors:
    - { address: 198.18.2.1, remote_as: 4294967296, bfd: yes }
    - { address: 198.18.2.1, remote_as: 65000, port: 0, password: 'a\"b' }
    - { address: 0.0.0.0, remote_as: 65000, multihop: 2 }
",
    ));
    let expected = [
        "bgp.router_id: IPv6 is not supported in this field",
        "bgp.local_as: 0 is not in 1..=4294967295",
        "bgp.hold_time: a hold time of 2 s is not allowed",
        "bgp.withdraw_wait: 301 is not in 0..=300",
        "bgp.neighbors[0].remote_as: 4294967296 is not in 1..=4294967295",
        "bgp.neighbors[0].bfd: expected true or false",
        "bgp.neighbors[1].address: neighbor 198.18.2.1 is listed twice",
        "bgp.neighbors[1].port: 0 is not in 1..=65535",
        "bgp.neighbors[1].password: the TCP MD5 password may hold only printable ASCII",
        "bgp.neighbors[2].address: 0.0.0.0 is the unspecified address",
        "bgp.neighbors[2].multihop: unknown field `multihop`",
    ];
    for e in expected {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing `{e}` in:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
}

#[test]
fn bgp_needs_its_required_fields_and_a_neighbor() {
    let found = errors(&with("bgp: {}\n"));
    for e in [
        "bgp.router_id: required field is missing",
        "bgp.local_as: required field is missing",
        "bgp.neighbors: required field is missing",
    ] {
        assert!(found.iter().any(|f| f.starts_with(e)), "{e} in {found:?}");
    }
    let found = errors(&with(
        "bgp: { router_id: 198.18.2.11, local_as: 65001, neighbors: [] }\n",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("bgp.neighbors: at least one neighbor is required"),
        "{found:?}"
    );
    let found = errors(&with("bgp: [198.18.2.1]\n"));
    assert!(found[0].starts_with("bgp: expected a mapping"), "{found:?}");
}

#[test]
fn ipv6_neighbors_are_sessions_of_their_own() {
    let c = ok(&with(
        "bgp:
  router_id: 198.18.2.11
  local_as: 65001
  neighbors:
    - { address: 198.18.2.1, remote_as: 65000 }
    - { address: '2001:db8:2::1', remote_as: 65000, bfd: true, port: 1179, password: s3cret }
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
default_server_group:
  servers: [{ address: 198.18.1.10 }]
",
    ));
    let bgp = c.bgp.as_ref().unwrap();
    assert_eq!(
        bgp.neighbors[1].address,
        "2001:db8:2::1".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(bgp.neighbors[1].bfd);
    let yaml = c.to_yaml();
    assert_eq!(ok(&yaml), c, "{yaml}");
    assert!(yaml.contains("2001:db8:2::1"), "{yaml}");
}

#[test]
fn ipv6_neighbor_errors_name_their_path() {
    let found = errors(&with(
        "bgp:
  router_id: 198.18.2.11
  local_as: 65001
  neighbors:
    - { address: '2001:db8:::1', remote_as: 65000 }
    - { address: 'fe80::1', remote_as: 65000 }
    - { address: '::ffff:198.18.2.1', remote_as: 65000 }
    - { address: '2001:db8:2::1', remote_as: 65000 }
    - { address: '2001:db8:2:0::1', remote_as: 65000 }
    - { address: 'ff02::2', remote_as: 65000 }
",
    ));
    // The per-entry checks come first, the duplicates after them.
    assert_eq!(
        found,
        [
            "bgp.neighbors[0].address: `2001:db8:::1` is not an IPv6 address",
            "bgp.neighbors[1].address: fe80::1 is a link-local address; a neighbor must be a \
             unicast address (use a global or unique local address: a link-local one needs an \
             interface)",
            "bgp.neighbors[2].address: ::ffff:198.18.2.1 is an IPv4-mapped IPv6 address; a \
             neighbor must be a unicast address (write it as 198.18.2.1)",
            "bgp.neighbors[5].address: ff02::2 is a multicast address; a neighbor must be a \
             unicast address",
            "bgp.neighbors[4].address: neighbor 2001:db8:2::1 is listed twice: \
             bgp.neighbors[3] and bgp.neighbors[4] (one session per router: merge the two \
             entries)",
        ],
        "{}",
        found.join("\n")
    );
}

/// Each session carries its neighbor's family: VIPs of a family no neighbor has are
/// refused at their address, whichever the family.
#[test]
fn a_vip_needs_a_neighbor_of_its_family() {
    let config = |neighbors: &str| {
        with(&format!(
            "bgp: {{ router_id: 198.18.2.11, local_as: 65001, neighbors: [{neighbors}] }}
vserver_groups:
  - {{ name: four, servers: [{{ address: 198.18.1.10, port: 8080 }}] }}
  - {{ name: six, servers: [{{ address: '2001:db8:1::10', port: 8080 }}] }}
listeners:
  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: four }}
  - {{ name: web6, protocol: tcp, address: '2001:db8:19::100', port: 80, server_group: six }}
  - {{ name: dns6, protocol: udp, address: '2001:db8:19::101', port: 53, server_group: six }}
"
        ))
    };
    let v4 = "{ address: 198.18.2.1, remote_as: 65000 }";
    let v6 = "{ address: '2001:db8:2::1', remote_as: 65000 }";
    let c = ok(&config(&format!("{v4}, {v6}")));
    assert_eq!(c.bgp.unwrap().neighbors.len(), 2);

    let found = errors(&config(v6));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "listeners[0].address: an IPv4 VIP cannot be announced: no `bgp.neighbors` entry \
             is an IPv4 address"
        ),
        "{found:?}"
    );
    let found = errors(&config(v4));
    assert_eq!(
        found,
        [
            format!("listeners[1].address: {IPV6_NOT_ANNOUNCED}"),
            format!("listeners[2].address: {IPV6_NOT_ANNOUNCED}"),
        ]
    );
    // A neighbor address the reader refused says nothing of its family: no second error.
    let found = errors(&config("{ address: '2001:db8:2::x', remote_as: 65000 }"));
    assert_eq!(
        found,
        ["bgp.neighbors[0].address: `2001:db8:2::x` is not an IPv6 address"],
    );
}

// --- IPv6 -------------------------------------------------------------------------------

/// The error an IPv6 listener gets on a host whose `bgp` has no IPv6 neighbor.
const IPV6_NOT_ANNOUNCED: &str = "an IPv6 VIP cannot be announced: no `bgp.neighbors` entry \
     is an IPv6 address, and a BGP session carries the routes of its neighbor's family only \
     (add the router's IPv6 address to `bgp.neighbors` (a session of its own beside the \
     other family's), route the VIP to this host another way (a static route, another \
     speaker), or run it on hosts without `bgp`)";

#[test]
fn ipv6_is_accepted_wherever_the_issue_says() {
    let c = ok(&with(
        "health_check_source: [198.18.1.1, 2001:db8:1::1]
refused_client_sources: [198.18.1.0/24, 2001:db8:1::/48]
acls:
  - { name: office, entries: [198.18.0.0/24, 2001:db8:a::/48, 2001:db8:b::7] }
default_server_group:
  servers: [{ address: 198.18.1.10 }]
vserver_groups:
  - name: api6
    servers:
      - { address: 2001:db8:1::10, port: 8080 }
      - { address: 2001:db8:1::10, port: 8081, weight: 50 }
primary_secondary_groups:
  - name: db6
    primary: { address: 2001:db8:1::20, port: 5432 }
    secondary: { address: 2001:db8:1::21, port: 5432 }
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080, acl: { type: allow, name: office } }
",
    ));
    assert_eq!(c.acls[0].entries[2].to_string(), "2001:db8:b::7/128");
    assert_eq!(
        c.primary_secondary_group("db6")
            .unwrap()
            .primary
            .to_string(),
        "[2001:db8:1::20]:5432"
    );
    assert_eq!(ok(&c.to_yaml()), c, "exported:\n{}", c.to_yaml());
}

#[test]
fn an_ipv6_listener_is_served_and_announced_over_an_ipv6_session() {
    let v6 = "vserver_groups:
  - name: api6
    servers: [{ address: 2001:db8:1::10, port: 8080 }]
listeners:
  - { name: web6, protocol: tcp, address: 2001:db8::100, port: 80, server_group: api6 }
";
    let c = ok(&with(v6));
    assert_eq!(c.listeners[0].address.to_string(), "2001:db8::100");
    // Only an IPv4 session: the IPv6 VIP could not be announced.
    let found = errors(&with(&format!(
        "{v6}bgp: {{ router_id: 198.18.0.1, local_as: 65001, neighbors: [{{ address: 198.18.0.254, remote_as: 65000 }}] }}\n"
    )));
    assert_eq!(
        found,
        [format!("listeners[0].address: {IPV6_NOT_ANNOUNCED}")]
    );
    // An IPv6 session beside it carries it.
    let c = ok(&with(&format!(
        "{v6}bgp: {{ router_id: 198.18.0.1, local_as: 65001, neighbors: [{{ address: 198.18.0.254, remote_as: 65000 }}, {{ address: '2001:db8::fe', remote_as: 65000 }}] }}\n"
    )));
    assert_eq!(
        c.bgp.unwrap().neighbors[1].address,
        "2001:db8::fe".parse::<std::net::IpAddr>().unwrap()
    );
    // Built in code, the same.
    let mut c = Config::new("demo", vec!["eth0".to_owned()]);
    c.vserver_groups.push(VServerGroup {
        name: "api6".to_owned(),
        servers: vec![Member::new(
            "2001:db8:1::10".parse::<std::net::IpAddr>().unwrap(),
            8080,
        )],
    });
    let mut l = Listener::new(
        "web6",
        Protocol::Tcp,
        "2001:db8::100".parse::<std::net::IpAddr>().unwrap(),
        80,
    );
    l.server_group = Some("api6".to_owned());
    c.listeners.push(l);
    c.validate().expect("an IPv6 listener on IPv6 servers");
    c.bgp = Some(Bgp::new(
        Ipv4Addr::new(198, 18, 0, 1),
        65001,
        vec![BgpNeighbor::new(Ipv4Addr::new(198, 18, 0, 254), 65000)],
    ));
    let found: Vec<String> = c
        .validate()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [format!("listeners[0].address: {IPV6_NOT_ANNOUNCED}")]
    );
    c.bgp.as_mut().unwrap().neighbors[0] =
        BgpNeighbor::new("2001:db8::fe".parse::<std::net::Ipv6Addr>().unwrap(), 65000);
    c.validate().expect("an IPv6 VIP with an IPv6 session");
}

#[test]
fn rule_a_listener_and_its_servers_are_of_one_family() {
    let hint = "(a listener and its servers are of one family: forwarding: nat rewrites \
                addresses, not the address family)";
    // An IPv6 listener on a group of IPv4 servers: the listener is the odd one out.
    assert_eq!(
        errors(&listeners(&[
            "name: web6, protocol: tcp, address: 2001:db8::100, port: 80, backend_port: 8080",
        ])
        .replace(
            "listeners:",
            "default_server_group: { servers: [{ address: 198.18.1.10 }, { address: 198.18.1.11 }] }\nlisteners:"
        )),
        [
            format!(
                "listeners[0].address: 2001:db8::100 is IPv6, but every server of group \
                 `default` is IPv4 {hint}"
            ),
        ]
    );
    // An IPv6 server in a group IPv4 listeners use: the server is, named once.
    assert_eq!(
        errors(&with(
            "vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080 }
      - { address: 2001:db8::10, port: 8080 }
primary_secondary_groups:
  - name: db
    primary: { address: 198.18.1.20, port: 5432 }
    secondary: { address: 2001:db8::21, port: 5432 }
listeners:
  - { name: api, protocol: tcp, address: 198.19.0.100, port: 443, server_group: api }
  - { name: api2, protocol: tcp, address: 198.19.0.101, port: 443, server_group: api }
  - { name: db, protocol: tcp, address: 198.19.0.100, port: 5432, server_group: db }
"
        )),
        [
            format!(
                "vserver_groups[0].servers[1].address: 2001:db8::10 is IPv6, but listeners \
                 `api`, `api2` using its group are IPv4 {hint}"
            ),
            format!(
                "primary_secondary_groups[0].secondary.address: 2001:db8::21 is IPv6, but \
                 listener `db` using its group is IPv4 {hint}"
            ),
        ]
    );
    // A group no listener uses may hold either family; an empty group fits any listener.
    ok(&with(
        "vserver_groups:
  - { name: mixed, servers: [{ address: 198.18.1.10, port: 80 }, { address: 2001:db8::10, port: 80 }] }
  - { name: empty }
listeners:
  - { name: a, protocol: tcp, address: 198.19.0.100, port: 80, server_group: empty }
",
    ));
}

/// An IPv6 listener takes `forwarding: dsr` on IPv6 servers (the tunnel is IPv6 in
/// IPv6); a server of the other family is refused at its path, in DSR's words; an IPv6
/// `dsr.source` prefix spans at most 16 bits of hash, as an IPv4 one.
#[test]
fn rule_ipv6_listeners_forward_with_dsr_over_ipv6_servers() {
    let dsr6 = "forwarding: dsr
dsr: { encapsulation: gue, source: [198.18.9.0/24, '2001:db8:9::/112'] }
vserver_groups:
  - name: api6
    servers: [{ address: 2001:db8::10, port: 80 }, { address: 2001:db8::11, port: 80 }]
listeners:
  - { name: web6, protocol: tcp, address: 2001:db8::100, port: 80, server_group: api6 }
";
    let c = ok(&with(dsr6));
    assert_eq!(
        c.dsr.source.and_then(|s| s.ipv6()).map(|n| n.to_string()),
        Some("2001:db8:9::/112".to_owned())
    );
    let mixed = dsr6.replace(
        "{ address: 2001:db8::11, port: 80 }",
        "{ address: 198.18.1.11, port: 80 }",
    );
    assert_eq!(
        errors(&with(&mixed)),
        [
            "vserver_groups[0].servers[1].address: 198.18.1.11 is IPv4, but listener `web6` \
             using its group is IPv6 (a listener and its servers are of one family: forwarding: \
             dsr carries the client's packet unchanged, in a tunnel of its own family)"
                .to_owned(),
        ]
    );
    let wide = dsr6.replace("'2001:db8:9::/112'", "'2001:db8:9::/96'");
    assert_eq!(
        errors(&with(&wide)),
        [
            "dsr.source: a /96 spans more than 16 bits of flow hash (give an address, or a \
             prefix from /112 to /128 routed back to the LB hosts (ICMP errors about the tunnel \
             come back to it))"
                .to_owned(),
        ]
    );
    let port = dsr6.replace(
        "{ address: 2001:db8::11, port: 80 }",
        "{ address: 2001:db8::11, port: 8080 }",
    );
    assert_eq!(
        errors(&with(&port)),
        [
            "vserver_groups[0].servers[1].port: port 8080 differs from port 80 of listener \
             `web6`, which forwarding: dsr cannot translate (with forwarding: dsr the backend \
             receives the client's packet unchanged, so it must listen on the listener's port \
             (the VIP too, on its loopback))"
                .to_owned(),
        ]
    );
}

#[test]
fn rule_listener_frontends_compare_addresses_not_their_spelling() {
    let found = errors(&with(
        "vserver_groups:
  - name: api6
    servers: [{ address: 2001:db8::10, port: 80 }]
listeners:
  - { name: a, protocol: tcp, address: '2001:db8::1', port: 80, server_group: api6 }
  - { name: b, protocol: tcp, address: '2001:db8:0::1', port: 80, server_group: api6 }
  - { name: c, protocol: tcp, address: '2001:0DB8::1', port: 80, server_group: api6 }
",
    ));
    assert_eq!(
        found,
        [
            "listeners[1]: two listeners on [2001:db8::1]:80/tcp: listeners[0] and listeners[1]",
            "listeners[2]: two listeners on [2001:db8::1]:80/tcp: listeners[0] and listeners[2]",
        ]
    );
}

#[test]
fn rule_ipv6_addresses_must_be_unicast() {
    assert_eq!(
        errors(&with(
            "health_check_source: ['::']
vserver_groups:
  - name: g
    servers:
      - { address: '::1', port: 80 }
      - { address: 'ff02::1', port: 80 }
      - { address: '::ffff:198.18.1.10', port: 80 }
      - { address: 'fe80::1', port: 80 }
      - { address: 'fd00::1', port: 80 }
"
        )),
        [
            "health_check_source: :: is the unspecified address; the probe source must be a \
             unicast address",
            "vserver_groups[0].servers[0].address: ::1 is a loopback address; a server must be \
             a unicast address",
            "vserver_groups[0].servers[1].address: ff02::1 is a multicast address; a server must \
             be a unicast address",
            "vserver_groups[0].servers[2].address: ::ffff:198.18.1.10 is an IPv4-mapped IPv6 \
             address; a server must be a unicast address (write it as 198.18.1.10)",
            "vserver_groups[0].servers[3].address: fe80::1 is a link-local address; a server \
             must be a unicast address (use a global or unique local address: a link-local one \
             needs an interface)",
        ]
    );
}

#[test]
fn default_group_and_vserver_members_compare_addresses_as_values() {
    assert_eq!(
        errors(&with(
            "default_server_group:
  servers: [{ address: '2001:db8::10' }, { address: '2001:db8:0:0::10' }]
vserver_groups:
  - name: g
    servers: [{ address: '2001:db8::20', port: 80 }, { address: '2001:DB8::20', port: 80 }]
"
        )),
        [
            "default_server_group.servers[1].address: 2001:db8::10 is listed twice: \
             default_server_group.servers[0] and default_server_group.servers[1] (a server of \
             the default group is its address alone; each listener's backend_port gives the \
             port)",
            "vserver_groups[0].servers[1]: [2001:db8::20]:80 is listed twice in group `g`: \
             vserver_groups[0].servers[0] and vserver_groups[0].servers[1] (a server may appear \
             again only with another port)",
        ]
    );
}

#[test]
fn an_unreadable_address_causes_no_family_error() {
    let found = errors(&with(
        "vserver_groups:
  - name: api6
    servers: [{ address: 2001:db8::10, port: 80 }, { address: 2001:db8::zz, port: 80 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.300, port: 80, server_group: api6 }
",
    ));
    assert_eq!(
        found,
        [
            "vserver_groups[0].servers[1].address: `2001:db8::zz` is not an IPv6 address",
            "listeners[0].address: `198.19.0.300` is not an IPv4 address",
        ]
    );
}
