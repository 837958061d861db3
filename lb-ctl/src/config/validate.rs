//! The rules of the model, checked on a typed `Config`: names, uniqueness, references
//! between listeners, groups and ACLs, the backend-port rule, and every range.
//!
//! The same checks run on a config read from YAML (after the reader, skipping whatever
//! depends on a field the reader already reported) and on one built in code by the
//! runtime API (`Config::validate`), so a rule is written once.

use std::{collections::HashMap, hash::Hash, net::IpAddr, ops::RangeInclusive};

use lb_common::Scheduler;

use super::{
    error::{
        ConfigError, ConfigErrors, Taint, closest, field, index, out_of_range,
        sort_by_document_order,
    },
    model::{limits::*, *},
    walk::TOP_FIELDS,
};

impl Config {
    /// Checks every rule of the model; `Ok` only when nothing is wrong.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = check(self, &Taint::default());
        sort_by_document_order(&mut errors, TOP_FIELDS);
        ConfigErrors::from_vec(errors).map_or(Ok(()), Err)
    }
}

/// The rule errors of `config`, leaving out those that depend on a path in `taint`.
pub(crate) fn check(config: &Config, taint: &Taint) -> Vec<ConfigError> {
    let mut checker = Checker {
        taint,
        errors: Vec::new(),
    };
    checker.top_level(config);
    checker.bgp(config);
    checker.acls(config);
    checker.default_group(config);
    checker.groups(config);
    checker.listeners(config);
    checker.families(config);
    checker.dsr(config);
    checker.ipv6_vips_and_bgp(config);
    checker.errors
}

struct Checker<'a> {
    taint: &'a Taint,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    /// Records an error at `path`, unless `path` or one of the other fields the rule read
    /// (`inputs`) holds a placeholder for a value the reader already reported.
    fn report(&mut self, path: &str, inputs: &[&str], message: String, hint: Option<String>) {
        if self.taint.covers(path) || inputs.iter().any(|p| self.taint.covers(p)) {
            return;
        }
        self.errors
            .push(ConfigError::new(path, message).with_hint(hint));
    }

    fn range(&mut self, path: &str, value: impl Into<u64>, range: &RangeInclusive<u64>) {
        let value = value.into();
        if !range.contains(&value) {
            self.report(path, &[], out_of_range(value, range), None);
        }
    }

    /// VIPs, servers and the probe source must be addresses a packet can be sent to.
    fn unicast(&mut self, path: &str, addr: impl Into<IpAddr>, role: &str) {
        let addr = addr.into();
        let (kind, hint) = match addr {
            _ if addr.is_unspecified() => ("the unspecified", None),
            _ if addr.is_loopback() => ("a loopback", None),
            _ if addr.is_multicast() => ("a multicast", None),
            IpAddr::V4(a) if a.is_broadcast() => ("the broadcast", None),
            // On the wire such a packet is IPv4: the address is the IPv4 one.
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => (
                "an IPv4-mapped IPv6",
                a.to_ipv4_mapped().map(|v4| format!("write it as {v4}")),
            ),
            // Only meaningful with an interface, which no address field here names.
            IpAddr::V6(a) if a.is_unicast_link_local() => (
                "a link-local",
                Some(
                    "use a global or unique local address: a link-local one needs an interface"
                        .into(),
                ),
            ),
            _ => return,
        };
        self.report(
            path,
            &[],
            format!("{addr} is {kind} address; {role} must be a unicast address"),
            hint,
        );
    }

    /// Names of groups, listeners and ACLs: they are typed on the command line and shown in
    /// metrics labels, so they stay short and plain.
    fn object_name(&mut self, path: &str, name: &str, what: &str) {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        let message = if name.is_empty() {
            format!("a {what} name must not be empty")
        } else if name.chars().count() > OBJECT_NAME_MAX {
            format!("the {what} name `{name}` is longer than {OBJECT_NAME_MAX} characters")
        } else if !valid_chars {
            format!("`{name}` is not a valid {what} name")
        } else {
            return;
        };
        self.report(
            path,
            &[],
            message,
            Some(format!(
                "use 1 to {OBJECT_NAME_MAX} characters: letters, digits, `_`, `.` and `-`"
            )),
        );
    }

    /// Reports every repeat of a key after its first occurrence. `entries` yields
    /// (path of the entry, key).
    fn unique<K: Eq + Hash>(
        &mut self,
        entries: impl IntoIterator<Item = (String, K)>,
        mut message: impl FnMut(&K, &str, &str) -> (String, Option<String>),
    ) {
        let mut first: HashMap<K, String> = HashMap::new();
        for (path, key) in entries {
            if let Some(first_path) = first.get(&key) {
                let (text, hint) = message(&key, first_path, &path);
                let first_path = first_path.clone();
                self.report(&path, &[&first_path], text, hint);
            } else {
                first.insert(key, path);
            }
        }
    }

    fn top_level(&mut self, c: &Config) {
        self.instance_name(&c.instance);
        if c.interfaces.is_empty() {
            self.report(
                "interfaces",
                &[],
                "at least one interface is required".to_owned(),
                Some("name the NICs the XDP program attaches to, e.g. [eth0]".to_owned()),
            );
        }
        for (i, name) in c.interfaces.iter().enumerate() {
            let path = index("interfaces", i);
            if let Some(reason) = interface_name_problem(name) {
                self.report(
                    &path,
                    &[],
                    format!("`{name}` is not a valid interface name: {reason}"),
                    None,
                );
            }
        }
        self.unique(
            c.interfaces
                .iter()
                .enumerate()
                .map(|(i, n)| (index("interfaces", i), n.as_str())),
            |name, first, again| {
                (
                    format!("`{name}` is listed twice: {first} and {again}"),
                    None,
                )
            },
        );
        self.range("flow_table_size", c.flow_table_size, &FLOW_TABLE_SIZE);
        self.range("max_listeners", c.max_listeners, &MAX_LISTENERS);
        self.range("max_backends", c.max_backends, &MAX_BACKENDS);
        if let Some(slots) = c.maglev_slots {
            self.range("maglev_slots", slots, &MAGLEV_SLOTS);
        }
        if let Some(source) = c.health_check_source {
            for address in source.addresses() {
                self.unicast("health_check_source", address, "the probe source");
            }
        }
        if let Some(listen) = c.metrics_listen
            && listen.port() == 0
        {
            self.report(
                "metrics_listen",
                &[],
                "port 0 is not in 1..=65535".to_owned(),
                Some("give the port scrapers will use, e.g. 127.0.0.1:9100".to_owned()),
            );
        }
        for (i, name) in c.metrics_hosts.iter().enumerate() {
            if !is_host_name(name) {
                self.report(
                    &index("metrics_hosts", i),
                    &[],
                    format!("`{name}` is not a host name"),
                    Some(
                        "a DNS name such as lb-host or lb.example.test, without a port; the \
                         listener's own address is always accepted"
                            .to_owned(),
                    ),
                );
            }
        }
    }

    /// The `dsr` section applies to `forwarding: dsr` only, and in that mode a packet
    /// reaches its backend unchanged, so every backend listens on its listener's port.
    fn dsr(&mut self, c: &Config) {
        if c.forwarding != Forwarding::Dsr {
            if c.dsr != Dsr::default() {
                self.report(
                    "dsr",
                    &["forwarding"],
                    "the dsr section applies to `forwarding: dsr`; forwarding is nat".to_owned(),
                    Some("set `forwarding: dsr`, or remove the dsr section".to_owned()),
                );
            }
            return;
        }
        if c.dsr.encapsulation != Tunnel::Gue && c.dsr.gue_port != DEFAULT_GUE_PORT {
            self.report(
                "dsr.gue_port",
                &["dsr.encapsulation"],
                "gue_port applies to `encapsulation: gue`; this is ipip".to_owned(),
                Some("set `encapsulation: gue`, or remove gue_port".to_owned()),
            );
        }
        for net in c.dsr.source.iter().flat_map(DsrSource::prefixes) {
            self.unicast("dsr.source", net.addr(), "the outer source");
            let range = match net {
                IpNet::V4(_) => &DSR_SOURCE_PREFIX,
                IpNet::V6(_) => &DSR_SOURCE_PREFIX6,
            };
            if !range.contains(&u64::from(net.prefix_len())) {
                self.report(
                    "dsr.source",
                    &[],
                    format!(
                        "a /{} spans more than 16 bits of flow hash",
                        net.prefix_len()
                    ),
                    Some(format!(
                        "give an address, or a prefix from /{} to /{} routed back to the LB \
                         hosts (ICMP errors about the tunnel come back to it)",
                        range.start(),
                        range.end()
                    )),
                );
            }
        }
        for (i, l) in c.listeners.iter().enumerate() {
            let path = index("listeners", i);
            let hint = || {
                Some(
                    "with forwarding: dsr the backend receives the client's packet unchanged, \
                     so it must listen on the listener's port (the VIP too, on its loopback)"
                        .to_owned(),
                )
            };
            let mismatch = |port: u16| {
                format!(
                    "port {port} differs from port {} of listener `{}`, which forwarding: dsr \
                     cannot translate",
                    l.port, l.name
                )
            };
            match l.named_group() {
                None => {
                    if let Some(port) = l.backend_port
                        && port != l.port
                    {
                        let path = field(&path, "backend_port");
                        self.report(&path, &[], mismatch(port), hint());
                    }
                }
                Some(name) => {
                    if let Some(g) = c.vserver_groups.iter().position(|g| g.name == name) {
                        let servers = field(&index("vserver_groups", g), "servers");
                        for (j, m) in c.vserver_groups[g].servers.iter().enumerate() {
                            if m.port != l.port {
                                let at = field(&index(&servers, j), "port");
                                self.report(&at, &[], mismatch(m.port), hint());
                            }
                        }
                    }
                    if let Some(g) = c
                        .primary_secondary_groups
                        .iter()
                        .position(|g| g.name == name)
                    {
                        let group = &c.primary_secondary_groups[g];
                        let base = index("primary_secondary_groups", g);
                        for (role, endpoint) in
                            [("primary", group.primary), ("secondary", group.secondary)]
                        {
                            if endpoint.port != l.port {
                                let at = field(&field(&base, role), "port");
                                self.report(&at, &[], mismatch(endpoint.port), hint());
                            }
                        }
                    }
                }
            }
        }
    }

    /// A listener and its servers are of one family: `forwarding: nat` rewrites the
    /// destination address, it cannot turn an IPv4 packet into an IPv6 one, and `forwarding:
    /// dsr` delivers the client's packet as it is. The odd one out is reported: a listener none of whose servers is of its family, else each
    /// server of the other family (once, naming every listener it does not fit).
    fn families(&mut self, c: &Config) {
        // Per server of the other family: its address path, the address, and the names of
        // the listeners it does not fit.
        let mut misfits: Vec<(String, IpAddr, Vec<&str>)> = Vec::new();
        for (i, l) in c.listeners.iter().enumerate() {
            let listener_path = field(&index("listeners", i), "address");
            // An address the reader could not read is a placeholder of no family.
            if self.taint.covers(&listener_path) {
                continue;
            }
            let servers = group_addresses(c, l);
            let others: Vec<&(String, IpAddr)> = servers
                .iter()
                .filter(|(_, a)| a.is_ipv4() != l.address.is_ipv4())
                .collect();
            if others.is_empty() {
                continue;
            }
            if others.len() == servers.len() {
                let group = l.named_group().unwrap_or(DEFAULT_GROUP_NAME);
                let inputs: Vec<&str> = others.iter().map(|(p, _)| p.as_str()).collect();
                self.report(
                    &listener_path,
                    &inputs,
                    format!(
                        "{} is {}, but every server of group `{group}` is {}",
                        l.address,
                        family(l.address),
                        family(others[0].1)
                    ),
                    Some(family_rule(c.forwarding).to_owned()),
                );
                continue;
            }
            for (path, address) in others {
                match misfits.iter_mut().find(|(p, ..)| p == path) {
                    Some((_, _, names)) => names.push(&l.name),
                    None => misfits.push((path.clone(), *address, vec![&l.name])),
                }
            }
        }
        for (path, address, names) in misfits {
            let listeners: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            let (listener, is) = match names.len() {
                1 => ("listener", "is"),
                _ => ("listeners", "are"),
            };
            self.report(
                &path,
                &[],
                format!(
                    "{address} is {}, but {listener} {} using its group {is} {}",
                    family(address),
                    listeners.join(", "),
                    family_other(address)
                ),
                Some(family_rule(c.forwarding).to_owned()),
            );
        }
    }

    /// An IPv6 VIP goes only over sessions with IPv6 neighbors (`bgp`): without one it
    /// could not be announced, and routers would never send its clients here.
    fn ipv6_vips_and_bgp(&mut self, c: &Config) {
        self.vips_need_a_session(c, "IPv6");
    }

    /// The listeners of family `name` (`IPv4`, `IPv6`) on a host with `bgp` and no
    /// neighbor of that family are refused at their address: each session carries the
    /// routes of its own family only.
    fn vips_need_a_session(&mut self, c: &Config, name: &str) {
        let Some(bgp) = &c.bgp else {
            return;
        };
        if bgp.neighbors.iter().any(|n| family(n.address) == name) {
            return;
        }
        let neighbor_paths: Vec<String> = (0..bgp.neighbors.len())
            .map(|i| field(&index("bgp.neighbors", i), "address"))
            .chain(["bgp.neighbors".to_owned()])
            .collect();
        let inputs: Vec<&str> = neighbor_paths.iter().map(String::as_str).collect();
        for (i, l) in c.listeners.iter().enumerate() {
            if family(l.address) == name {
                self.report(
                    &field(&index("listeners", i), "address"),
                    &inputs,
                    format!(
                        "an {name} VIP cannot be announced: no `bgp.neighbors` entry is an \
                         {name} address, and a BGP session carries the routes of its \
                         neighbor's family only"
                    ),
                    Some(format!(
                        "add the router's {name} address to `bgp.neighbors` (a session of its \
                         own beside the other family's), route the VIP to this host another \
                         way (a static route, another speaker), or run it on hosts without \
                         `bgp`"
                    )),
                );
            }
        }
    }

    fn instance_name(&mut self, name: &str) {
        let problem = if name.is_empty() {
            Some("must not be empty")
        } else if name.len() > INSTANCE_NAME_MAX {
            Some("is longer than 32 characters")
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("must start with a lowercase letter")
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        {
            Some("may hold only a-z, 0-9, `_` and `-`")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.report(
                "instance",
                &[],
                format!("the instance name `{name}` {problem}"),
                Some(format!(
                    "it names the pin folder /sys/fs/bpf/<instance>: 1 to {INSTANCE_NAME_MAX} \
                     characters of a-z, 0-9, `_` and `-`, starting with a letter"
                )),
            );
        }
    }

    fn bgp(&mut self, c: &Config) {
        let Some(bgp) = &c.bgp else {
            return;
        };
        self.unicast("bgp.router_id", bgp.router_id, "the router id");
        self.range("bgp.local_as", bgp.local_as, &AS_NUMBER);
        self.range("bgp.hold_time", bgp.hold_time, &HOLD_TIME);
        if matches!(bgp.hold_time, 1 | 2) {
            self.report(
                "bgp.hold_time",
                &[],
                format!("a hold time of {} s is not allowed", bgp.hold_time),
                Some(
                    "BGP takes 0 (no keepalives) or 3 to 65535 seconds; turn `bfd` on for \
                     faster failure detection"
                        .to_owned(),
                ),
            );
        }
        self.range("bgp.withdraw_wait", bgp.withdraw_wait, &WITHDRAW_WAIT);
        if bgp.neighbors.is_empty() {
            self.report(
                "bgp.neighbors",
                &[],
                "at least one neighbor is required".to_owned(),
                Some(
                    "name the routers the VIPs are announced to, e.g. \
                     [{ address: 198.18.2.1, remote_as: 65000 }]"
                        .to_owned(),
                ),
            );
        }
        for (i, n) in bgp.neighbors.iter().enumerate() {
            let path = index("bgp.neighbors", i);
            self.unicast(&field(&path, "address"), n.address, "a neighbor");
            self.range(&field(&path, "remote_as"), n.remote_as, &AS_NUMBER);
            self.range(&field(&path, "port"), n.port, &PORT);
            if let Some(password) = &n.password {
                let printable = password.chars().all(|c| c.is_ascii_graphic() || c == ' ');
                let problem = if password.is_empty() {
                    Some("must not be empty".to_owned())
                } else if password.len() > BGP_PASSWORD_MAX {
                    Some(format!("is longer than {BGP_PASSWORD_MAX} bytes"))
                } else if !printable || password.contains(['"', '\\']) {
                    Some("may hold only printable ASCII without `\"` and `\\`".to_owned())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    self.report(
                        &field(&path, "password"),
                        &[],
                        format!("the TCP MD5 password {problem}"),
                        Some(format!(
                            "1 to {BGP_PASSWORD_MAX} printable ASCII characters, the same on \
                             the router"
                        )),
                    );
                }
            }
        }
        self.unique(
            bgp.neighbors
                .iter()
                .enumerate()
                .map(|(i, n)| (field(&index("bgp.neighbors", i), "address"), n.address)),
            |addr, first, again| {
                (
                    format!(
                        "neighbor {addr} is listed twice: {} and {}",
                        parent(first),
                        parent(again)
                    ),
                    Some("one session per router: merge the two entries".to_owned()),
                )
            },
        );
        self.vips_need_a_session(c, "IPv4");
    }

    fn acls(&mut self, c: &Config) {
        for (i, acl) in c.acls.iter().enumerate() {
            self.object_name(&field(&index("acls", i), "name"), &acl.name, "ACL");
        }
        self.unique(
            c.acls
                .iter()
                .enumerate()
                .map(|(i, a)| (field(&index("acls", i), "name"), a.name.as_str())),
            |name, first, again| {
                (
                    format!(
                        "two ACLs named `{name}`: {} and {}",
                        parent(first),
                        parent(again)
                    ),
                    None,
                )
            },
        );
    }

    fn default_group(&mut self, c: &Config) {
        let base = "default_server_group.servers";
        for (i, server) in c.default_server_group.servers.iter().enumerate() {
            let path = index(base, i);
            self.unicast(&field(&path, "address"), server.address, "a server");
            self.range(&field(&path, "weight"), server.weight, &WEIGHT);
        }
        self.unique(
            c.default_server_group
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| (field(&index(base, i), "address"), s.address)),
            |addr, first, again| {
                (
                    format!(
                        "{addr} is listed twice: {} and {}",
                        parent(first),
                        parent(again)
                    ),
                    Some(
                        "a server of the default group is its address alone; each listener's \
                         backend_port gives the port"
                            .to_owned(),
                    ),
                )
            },
        );
    }

    fn groups(&mut self, c: &Config) {
        for (i, group) in c.vserver_groups.iter().enumerate() {
            let path = index("vserver_groups", i);
            self.group_name(
                &field(&path, "name"),
                &group.name,
                "list its servers under `default_server_group`, where they carry no port, or \
                 choose another name",
            );
            let servers = field(&path, "servers");
            for (j, member) in group.servers.iter().enumerate() {
                let member_path = index(&servers, j);
                self.unicast(&field(&member_path, "address"), member.address, "a server");
                self.range(&field(&member_path, "port"), member.port, &PORT);
                self.range(&field(&member_path, "weight"), member.weight, &WEIGHT);
            }
            self.unique_members(&servers, group);
        }
        for (i, group) in c.primary_secondary_groups.iter().enumerate() {
            let path = index("primary_secondary_groups", i);
            self.group_name(&field(&path, "name"), &group.name, "choose another name");
            for (role, endpoint) in [("primary", group.primary), ("secondary", group.secondary)] {
                let endpoint_path = field(&path, role);
                self.unicast(
                    &field(&endpoint_path, "address"),
                    endpoint.address,
                    "a server",
                );
                self.range(&field(&endpoint_path, "port"), endpoint.port, &PORT);
            }
            if group.primary == group.secondary {
                let inputs = ["primary", "secondary"].map(|role| field(&path, role));
                let leaf_inputs: Vec<String> = inputs
                    .iter()
                    .flat_map(|p| [field(p, "address"), field(p, "port")])
                    .collect();
                let leaf_refs: Vec<&str> = leaf_inputs.iter().map(String::as_str).collect();
                self.report(
                    &inputs[1],
                    &leaf_refs,
                    format!(
                        "the secondary is the same endpoint as the primary, {}",
                        group.primary
                    ),
                    Some("a primary/secondary group needs two different members".to_owned()),
                );
            }
        }
        // vServer and primary/secondary groups share one namespace: a listener names either.
        let names = c
            .vserver_groups
            .iter()
            .enumerate()
            .map(|(i, g)| (field(&index("vserver_groups", i), "name"), g.name.as_str()))
            .chain(c.primary_secondary_groups.iter().enumerate().map(|(i, g)| {
                (
                    field(&index("primary_secondary_groups", i), "name"),
                    g.name.as_str(),
                )
            }));
        self.unique(names, |name, first, again| {
            (
                format!(
                    "two server groups named `{name}`: {} and {}",
                    parent(first),
                    parent(again)
                ),
                Some("vServer and primary/secondary groups share one set of names".to_owned()),
            )
        });
    }

    fn group_name(&mut self, path: &str, name: &str, reserved_hint: &str) {
        if name == DEFAULT_GROUP_NAME {
            self.report(
                path,
                &[],
                "the name `default` is reserved for the default server group".to_owned(),
                Some(reserved_hint.to_owned()),
            );
        } else {
            self.object_name(path, name, "server group");
        }
    }

    fn unique_members(&mut self, servers_path: &str, group: &VServerGroup) {
        let entries = group
            .servers
            .iter()
            .enumerate()
            .map(|(j, m)| (index(servers_path, j), m.endpoint()));
        let mut first: HashMap<Endpoint, String> = HashMap::new();
        for (path, endpoint) in entries {
            let leaves = [field(&path, "address"), field(&path, "port")];
            match first.get(&endpoint) {
                Some(first_path) => {
                    let first_leaves = [field(first_path, "address"), field(first_path, "port")];
                    let inputs: Vec<&str> = leaves
                        .iter()
                        .chain(&first_leaves)
                        .map(String::as_str)
                        .collect();
                    let message = format!(
                        "{endpoint} is listed twice in group `{}`: {first_path} and {path}",
                        group.name
                    );
                    self.report(
                        &path,
                        &inputs,
                        message,
                        Some("a server may appear again only with another port".to_owned()),
                    );
                }
                None => {
                    first.insert(endpoint, path);
                }
            }
        }
    }

    fn listeners(&mut self, c: &Config) {
        let count = c.listeners.len();
        if count > c.max_listeners as usize {
            self.report(
                "listeners",
                &["max_listeners"],
                format!(
                    "{count} listeners, but max_listeners is {}",
                    c.max_listeners
                ),
                Some(format!(
                    "raise max_listeners; at most {}",
                    MAX_LISTENERS.end()
                )),
            );
        }
        for (i, listener) in c.listeners.iter().enumerate() {
            self.listener(c, &index("listeners", i), listener);
        }
        // Each listener holds two tables: the live one and the one a change rebuilds.
        let needed = c.maglev_slots_reserved();
        // Too many listeners is reported above, and is the cause to fix first.
        if count <= c.max_listeners as usize && needed > u64::from(c.maglev_slots()) {
            self.report(
                "maglev_slots",
                &["listeners"],
                format!(
                    "the listeners' Maglev tables need {needed} slots (2 × maglev_table_size \
                     each), but maglev_slots is {}",
                    c.maglev_slots()
                ),
                Some(format!(
                    "raise maglev_slots (4 bytes a slot); at most {}",
                    MAGLEV_SLOTS.end()
                )),
            );
        }
        self.unique(
            c.listeners
                .iter()
                .enumerate()
                .map(|(i, l)| (field(&index("listeners", i), "name"), l.name.as_str())),
            |name, first, again| {
                (
                    format!(
                        "two listeners named `{name}`: {} and {}",
                        parent(first),
                        parent(again)
                    ),
                    None,
                )
            },
        );
        self.unique_frontends(c);
        self.backend_capacity(c);
    }

    /// The data plane finds a listener by (VIP, port, protocol): two cannot share one.
    /// Addresses compare as values: `2001:db8::1` and `2001:db8:0::1` are one VIP.
    fn unique_frontends(&mut self, c: &Config) {
        let mut first: HashMap<(IpAddr, u16, Protocol), String> = HashMap::new();
        for (i, l) in c.listeners.iter().enumerate() {
            let path = index("listeners", i);
            match first.get(&l.frontend()) {
                Some(first_path) => {
                    let inputs: Vec<String> = [&path, first_path]
                        .iter()
                        .flat_map(|p| ["address", "port", "protocol"].map(|f| field(p, f)))
                        .collect();
                    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    let message = format!(
                        "two listeners on {}/{}: {first_path} and {path}",
                        l.endpoint(),
                        l.protocol
                    );
                    self.report(&path, &inputs, message, None);
                }
                None => {
                    first.insert(l.frontend(), path);
                }
            }
        }
    }

    fn listener(&mut self, c: &Config, path: &str, l: &Listener) {
        let at = |f: &str| field(path, f);
        self.object_name(&at("name"), &l.name, "listener");
        self.unicast(&at("address"), l.address, "a VIP");
        self.range(&at("port"), l.port, &PORT);
        self.server_group(c, path, l);
        self.sequence_fits(c, path, l);
        if let Some(acl) = &l.acl
            && c.acl(&acl.name).is_none()
        {
            let known: Vec<&str> = c.acls.iter().map(|a| a.name.as_str()).collect();
            let inputs: Vec<String> = (0..c.acls.len())
                .map(|i| field(&index("acls", i), "name"))
                .collect();
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let (message, hint) = dangling("ACL", &acl.name, &known, "define it under `acls`");
            self.report(&field(&at("acl"), "name"), &inputs, message, hint);
        }
        self.range(
            &at("persistence_timeout"),
            l.persistence_timeout,
            &PERSISTENCE_TIMEOUT,
        );
        if l.persistence_timeout > 0 && l.protocol != Protocol::Tcp {
            self.report(
                &at("persistence_timeout"),
                &[&at("protocol")],
                format!(
                    "persistence applies to tcp listeners only; this one is {}",
                    l.protocol
                ),
                Some("set it to 0, or use scheduler `sch` for source-IP affinity".to_owned()),
            );
        }
        self.range(
            &at("established_timeout"),
            l.established_timeout,
            &ESTABLISHED_TIMEOUT,
        );
        self.range(&at("udp_timeout"), l.udp_timeout, &UDP_TIMEOUT);
        self.range(
            &field(&at("connection_drain"), "timeout"),
            l.connection_drain.timeout,
            &DRAIN_TIMEOUT,
        );
        self.range(&at("slow_start"), l.slow_start, &SLOW_START);
        self.maglev_table_size(&at("maglev_table_size"), l.maglev_table_size);
        self.health_check(&at("health_check"), &l.health_check, l.protocol);
    }

    /// Maglev needs a prime table size; a wrong one is told the primes around it.
    fn maglev_table_size(&mut self, path: &str, size: u32) {
        if !MAGLEV_TABLE_SIZE.contains(&u64::from(size)) {
            self.range(path, size, &MAGLEV_TABLE_SIZE);
            return;
        }
        if !lb_common::maglev::is_prime(size) {
            self.report(
                path,
                &[],
                format!("{size} is not a prime, and a Maglev table needs a prime size"),
                Some(format!(
                    "the nearest primes: {}",
                    maglev_primes_around(size)
                )),
            );
        }
    }

    /// A listener uses exactly one group: the default one, which needs `backend_port`
    /// because its servers carry no port, or a named one whose members give the ports.
    fn server_group(&mut self, c: &Config, path: &str, l: &Listener) {
        let group_path = field(path, "server_group");
        let port_path = field(path, "backend_port");
        match (l.named_group(), l.backend_port) {
            (None, None) => self.report(
                &port_path,
                &[&group_path],
                "a listener on the default server group must set backend_port".to_owned(),
                Some(
                    "the default group's servers carry no port; backend_port gives it for this \
                     listener"
                        .to_owned(),
                ),
            ),
            (None, Some(port)) => self.range(&port_path, port, &PORT),
            (Some(group), Some(_)) => self.report(
                &port_path,
                &[&group_path],
                format!(
                    "backend_port is only for listeners on the default server group; this one \
                     uses group `{group}`"
                ),
                Some("ports come from the group's members; remove backend_port".to_owned()),
            ),
            (Some(_), None) => {}
        }
        if let Some(group) = l.named_group()
            && c.vserver_group(group).is_none()
            && c.primary_secondary_group(group).is_none()
        {
            let known: Vec<&str> = group_names(c).collect();
            let inputs: Vec<String> = (0..c.vserver_groups.len())
                .map(|i| field(&index("vserver_groups", i), "name"))
                .chain(
                    (0..c.primary_secondary_groups.len())
                        .map(|i| field(&index("primary_secondary_groups", i), "name")),
                )
                .collect();
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let (message, hint) = dangling(
                "server group",
                group,
                &known,
                "define it under `vserver_groups` or `primary_secondary_groups`, or leave \
                 server_group out to use the default group",
            );
            self.report(&group_path, &inputs, message, hint);
        }
    }

    /// `wrr` gives every member at least one turn in the listener's sequence table, so a
    /// group larger than the table cannot be scheduled. Members of weight 0 count too: a
    /// weight is one `lb-ctl server set` away.
    fn sequence_fits(&mut self, c: &Config, path: &str, l: &Listener) {
        if l.scheduler != Scheduler::Wrr {
            return;
        }
        let (members, group) = match l.named_group() {
            None => (c.default_server_group.servers.len(), DEFAULT_GROUP_NAME),
            Some(name) => match c.vserver_group(name) {
                Some(g) => (g.servers.len(), name),
                None => return,
            },
        };
        let table = lb_common::SEQUENCE_TABLE_SIZE as usize;
        if members > table {
            self.report(
                &field(path, "scheduler"),
                &[&field(path, "server_group")],
                format!(
                    "wrr cannot schedule the {members} servers of group `{group}`: its \
                     sequence table holds {table}, and each server needs a turn"
                ),
                Some(format!(
                    "split the group across listeners of at most {table} servers, or use \
                     scheduler `sch` or `tch`"
                )),
            );
        }
    }

    fn health_check(&mut self, path: &str, hc: &HealthCheck, protocol: Protocol) {
        let at = |f: &str| field(path, f);
        self.range(&at("interval"), hc.interval, &CHECK_INTERVAL);
        self.range(&at("timeout"), hc.timeout, &CHECK_TIMEOUT);
        self.range(
            &at("healthy_threshold"),
            hc.healthy_threshold,
            &CHECK_THRESHOLD,
        );
        self.range(
            &at("unhealthy_threshold"),
            hc.unhealthy_threshold,
            &CHECK_THRESHOLD,
        );
        if let Some(port) = hc.port {
            self.range(&at("port"), port, &PORT);
        }
        let kind = hc.kind_for(protocol);
        let kind_is = match hc.kind {
            Some(_) => format!("type is {}", kind.name()),
            None => format!(
                "type is {} (the default of a {protocol} listener)",
                kind.name()
            ),
        };
        for (section, present, wanted) in [
            ("http", hc.http.is_some(), HealthCheckKind::Http),
            ("udp", hc.udp.is_some(), HealthCheckKind::Udp),
        ] {
            if present && kind != wanted {
                self.report(
                    &at(section),
                    &[&at("type")],
                    format!("this section is only read when type is {section}"),
                    Some(format!(
                        "{kind_is}; remove the section or set type: {section}"
                    )),
                );
            }
        }
        if let Some(http) = &hc.http {
            let http_path = at("http");
            let request_safe = |s: &str| !s.chars().any(|c| c.is_whitespace() || c.is_control());
            if !http.path.starts_with('/') || !request_safe(&http.path) {
                self.report(
                    &field(&http_path, "path"),
                    &[],
                    format!("`{}` is not an HTTP request path", http.path),
                    Some("start with `/` and use no spaces, e.g. /healthz".to_owned()),
                );
            }
            if let Some(host) = &http.host
                && (host.is_empty() || !request_safe(host))
            {
                self.report(
                    &field(&http_path, "host"),
                    &[],
                    format!("`{host}` is not a valid Host header value"),
                    Some("a host name such as example.test, without spaces".to_owned()),
                );
            }
            if http.codes.is_empty() {
                self.report(
                    &field(&http_path, "codes"),
                    &[],
                    "at least one status class is required".to_owned(),
                    Some("e.g. [http_2xx, http_3xx]".to_owned()),
                );
            }
        }
        if let Some(flap) = &hc.flap_damping {
            let flap_path = at("flap_damping");
            self.range(
                &field(&flap_path, "max_flaps"),
                flap.max_flaps,
                &FLAP_MAX_FLAPS,
            );
            self.range(&field(&flap_path, "window"), flap.window, &FLAP_WINDOW);
            self.range(&field(&flap_path, "hold"), flap.hold, &FLAP_HOLD);
        }
    }

    /// Each listener takes one backend entry per member of its group.
    fn backend_capacity(&mut self, c: &Config) {
        let needed: usize = c.listeners.iter().map(|l| c.group_size(l)).sum();
        if needed > c.max_backends as usize {
            self.report(
                "max_backends",
                &[],
                format!(
                    "the listeners need {needed} backend entries (one per listener and group \
                     member), but max_backends is {}",
                    c.max_backends
                ),
                Some(format!(
                    "raise max_backends; at most {}",
                    MAX_BACKENDS.end()
                )),
            );
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits and `-`, none empty or starting or
/// ending with `-`, at most 253 characters. An IP address is not one: the listener's own
/// address is accepted without being listed, and no other address can name it.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<IpAddr>().is_err()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a listener and its servers are of one family, in the words of the forwarding mode.
const fn family_rule(forwarding: Forwarding) -> &'static str {
    match forwarding {
        Forwarding::Nat => {
            "a listener and its servers are of one family: forwarding: nat rewrites addresses, \
             not the address family"
        }
        Forwarding::Dsr => {
            "a listener and its servers are of one family: forwarding: dsr carries the \
             client's packet unchanged, in a tunnel of its own family"
        }
    }
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn family_other(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv6" } else { "IPv4" }
}

/// The server addresses of the group `l` uses, with their paths (nothing for a group that
/// does not exist: that has its own error).
fn group_addresses(c: &Config, l: &Listener) -> Vec<(String, IpAddr)> {
    let at =
        |base: String, i: usize, address: IpAddr| (field(&index(&base, i), "address"), address);
    match l.named_group() {
        None => c
            .default_server_group
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| at("default_server_group.servers".to_owned(), i, s.address))
            .collect(),
        Some(name) => {
            if let Some(g) = c.vserver_groups.iter().position(|g| g.name == name) {
                let base = field(&index("vserver_groups", g), "servers");
                c.vserver_groups[g]
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| at(base.clone(), i, m.address))
                    .collect()
            } else if let Some(g) = c
                .primary_secondary_groups
                .iter()
                .position(|g| g.name == name)
            {
                let group = &c.primary_secondary_groups[g];
                let base = index("primary_secondary_groups", g);
                [("primary", group.primary), ("secondary", group.secondary)]
                    .into_iter()
                    .map(|(role, e)| (field(&field(&base, role), "address"), e.address))
                    .collect()
            } else {
                Vec::new()
            }
        }
    }
}

fn group_names(c: &Config) -> impl Iterator<Item = &str> {
    c.vserver_groups
        .iter()
        .map(|g| g.name.as_str())
        .chain(c.primary_secondary_groups.iter().map(|g| g.name.as_str()))
}

/// Message and hint for a reference to something that does not exist.
fn dangling(what: &str, name: &str, known: &[&str], define_hint: &str) -> (String, Option<String>) {
    if known.is_empty() {
        return (
            format!("no {what} named `{name}`; none is defined"),
            Some(define_hint.to_owned()),
        );
    }
    let message = format!("no {what} named `{name}`; known: {}", known.join(", "));
    let hint = closest(name, known).map(|c| format!("did you mean `{c}`?"));
    (message, hint.or_else(|| Some(define_hint.to_owned())))
}

/// The kernel's rule for interface names (`dev_valid_name`), with the reason it fails.
fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > INTERFACE_NAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if name.contains('/') {
        Some("it contains `/`")
    } else if name.contains(':') {
        Some("it contains `:` (an alias, not an interface)")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else {
        None
    }
}

/// `listeners[0]` from `listeners[0].name`: duplicate messages name the entries.
fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(p, _)| p)
}
