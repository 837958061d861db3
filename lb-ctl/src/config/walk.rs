//! Reads a YAML tree into the typed model, collecting every type error and unknown field
//! instead of stopping at the first (serde's derive stops at the first error).
//!
//! The reader checks what the YAML can get wrong on its own: shapes, types, field names,
//! enum names, address syntax, and ranges (a port of 70000 cannot even be stored). Rules
//! that relate fields to each other live in `validate` and run on the typed result, which
//! is why the reader keeps every list entry at its index, filling what it could not read
//! with a placeholder and marking its path in the `Taint`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
};

use lb_common::Scheduler;
use serde_yaml::{Mapping, Value};

use super::{
    error::{ConfigError, Taint, did_you_mean, field, index, out_of_range},
    model::{limits::*, *},
};

/// Top-level fields, in the order of the config contract (also the order errors are
/// listed in).
pub(crate) const TOP_FIELDS: &[&str] = &[
    "instance",
    "interfaces",
    "xdp_mode",
    "forwarding",
    "dsr",
    "vip_ping",
    "flow_table_size",
    "max_listeners",
    "max_backends",
    "maglev_slots",
    "health_check_source",
    "metrics_listen",
    "refused_client_sources",
    "metrics_hosts",
    "bgp",
    "acls",
    "default_server_group",
    "vserver_groups",
    "primary_secondary_groups",
    "listeners",
];
const DSR_FIELDS: &[&str] = &["encapsulation", "gue_port", "source"];
const BGP_FIELDS: &[&str] = &[
    "router_id",
    "local_as",
    "hold_time",
    "withdraw_wait",
    "neighbors",
];
const BGP_NEIGHBOR_FIELDS: &[&str] = &["address", "remote_as", "port", "bfd", "password"];
const ACL_FIELDS: &[&str] = &["name", "entries"];
const DEFAULT_GROUP_FIELDS: &[&str] = &["servers"];
const DEFAULT_SERVER_FIELDS: &[&str] = &["address", "weight"];
const VSERVER_GROUP_FIELDS: &[&str] = &["name", "servers"];
const MEMBER_FIELDS: &[&str] = &["address", "port", "weight"];
const PRIMARY_SECONDARY_FIELDS: &[&str] = &["name", "primary", "secondary", "probe_secondary"];
const ENDPOINT_FIELDS: &[&str] = &["address", "port"];
const LISTENER_FIELDS: &[&str] = &[
    "name",
    "protocol",
    "address",
    "port",
    "backend_port",
    "server_group",
    "scheduler",
    "persistence_timeout",
    "established_timeout",
    "udp_timeout",
    "connection_drain",
    "acl",
    "slow_start",
    "maglev_table_size",
    "health_check",
];
const DRAIN_FIELDS: &[&str] = &["enabled", "timeout"];
const LISTENER_ACL_FIELDS: &[&str] = &["type", "name"];
const HEALTH_CHECK_FIELDS: &[&str] = &[
    "type",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "port",
    "http",
    "udp",
    "flap_damping",
];
const HTTP_FIELDS: &[&str] = &["method", "host", "path", "codes"];
const UDP_FIELDS: &[&str] = &["request", "expect"];
const FLAP_FIELDS: &[&str] = &["max_flaps", "window", "hold"];

/// What to say about an unknown field when the generic "unknown field" would mislead:
/// returns the message and hint, or `None` for the generic one.
type UnknownField = fn(&str, &Value) -> Option<(String, Option<String>)>;

fn generic(_: &str, _: &Value) -> Option<(String, Option<String>)> {
    None
}

fn default_server_unknown(key: &str, _: &Value) -> Option<(String, Option<String>)> {
    (key == "port").then(|| {
        (
            "unknown field `port`".to_owned(),
            Some(
                "servers of the default group carry no port; set the listener's backend_port"
                    .to_owned(),
            ),
        )
    })
}

const NOT_WEIGHTED: &str = "weights do not apply to primary/secondary groups";

fn primary_secondary_unknown(key: &str, value: &Value) -> Option<(String, Option<String>)> {
    if key == "weight" {
        return Some((
            NOT_WEIGHTED.to_owned(),
            Some("the primary takes every new flow while it is healthy".to_owned()),
        ));
    }
    let looks_like_members = matches!(key, "servers" | "members" | "backends")
        || value.is_sequence()
        || value.get("address").is_some();
    looks_like_members.then(|| {
        (
            format!(
                "unknown field `{key}`: a primary/secondary group has exactly two members, \
                 `primary` and `secondary`"
            ),
            Some("use a vServer group for more servers".to_owned()),
        )
    })
}

fn endpoint_unknown(key: &str, _: &Value) -> Option<(String, Option<String>)> {
    (key == "weight").then(|| (NOT_WEIGHTED.to_owned(), None))
}

/// The typed config (placeholders where the YAML was wrong), the errors found, and the
/// paths those errors cover.
pub(crate) fn read(value: &Value) -> (Config, Vec<ConfigError>, Taint) {
    let mut reader = Reader::default();
    let config = reader.config(value);
    (config, reader.errors, reader.taint)
}

#[derive(Default)]
struct Reader {
    errors: Vec<ConfigError>,
    taint: Taint,
}

impl Reader {
    /// An error that leaves a placeholder behind: rules about `path` are moot.
    fn fail(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        self.taint.add(path);
        self.errors
            .push(ConfigError::new(path, message).with_hint(hint));
    }

    /// An error that changes nothing in the typed config (an unknown field is ignored).
    fn note(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        self.errors
            .push(ConfigError::new(path, message).with_hint(hint));
    }

    fn type_error(&mut self, path: &str, expected: &str, found: &Value) {
        let hint = match (expected, found) {
            (_, Value::Number(_) | Value::Bool(_)) if expected.contains("string") => {
                Some(format!("quote it: \"{}\"", scalar_text(found)))
            }
            ("a list", Value::String(_) | Value::Number(_)) => {
                Some(format!("write a list: [{}]", scalar_text(found)))
            }
            _ => None,
        };
        self.fail(
            path,
            format!("expected {expected}, found {}", describe(found)),
            hint,
        );
    }

    fn mapping<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        known: &[&str],
        unknown: UnknownField,
    ) -> Option<&'v Mapping> {
        let Value::Mapping(map) = value else {
            self.type_error(path, "a mapping", value);
            return None;
        };
        for (key, v) in map {
            let Some(key) = key.as_str() else {
                self.note(
                    path,
                    format!("field names are strings, found {}", describe(key)),
                    None,
                );
                continue;
            };
            if known.contains(&key) {
                continue;
            }
            let (message, hint) = unknown(key, v)
                .unwrap_or_else(|| (format!("unknown field `{key}`"), did_you_mean(key, known)));
            self.note(&field(path, key), message, hint);
        }
        Some(map)
    }

    /// Reads `key` of `map`; a missing (or null) value is an error.
    fn required<T>(
        &mut self,
        map: &Mapping,
        parent: &str,
        key: &str,
        read: impl FnOnce(&mut Self, &str, &Value) -> Option<T>,
    ) -> Option<T> {
        let path = field(parent, key);
        match present(map, key) {
            Some(value) => read(self, &path, value),
            None => {
                self.fail(&path, "required field is missing", None);
                None
            }
        }
    }

    /// Reads `key` of `map` when it is there; absent and null both mean "not set".
    fn optional<T>(
        &mut self,
        map: &Mapping,
        parent: &str,
        key: &str,
        read: impl FnOnce(&mut Self, &str, &Value) -> Option<T>,
    ) -> Option<T> {
        let path = field(parent, key);
        present(map, key).and_then(|value| read(self, &path, value))
    }

    /// Reads a list, one `item` per entry. An entry `item` returns `None` for is dropped;
    /// the list path is then marked too, so rules about the whole list stay silent.
    fn list<T>(
        &mut self,
        path: &str,
        value: &Value,
        mut item: impl FnMut(&mut Self, &str, &Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Sequence(entries) = value else {
            self.type_error(path, "a list", value);
            return None;
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut dropped = false;
        for (i, entry) in entries.iter().enumerate() {
            match item(self, &index(path, i), entry) {
                Some(v) => out.push(v),
                None => dropped = true,
            }
        }
        if dropped {
            self.taint.add(path);
        }
        Some(out)
    }

    fn string(&mut self, path: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.type_error(path, "a string", other);
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, value: &Value) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.type_error(path, "true or false", other);
                None
            }
        }
    }

    /// An integer within `range`, converted to the field's type.
    fn uint<T: TryFrom<u64>>(
        &mut self,
        path: &str,
        value: &Value,
        range: &RangeInclusive<u64>,
    ) -> Option<T> {
        let Value::Number(n) = value else {
            self.type_error(path, "an integer", value);
            return None;
        };
        if let Some(u) = n.as_u64() {
            let fits = range.contains(&u).then(|| T::try_from(u).ok()).flatten();
            if fits.is_none() {
                self.fail(path, out_of_range(u, range), None);
            }
            fits
        } else if let Some(i) = n.as_i64() {
            self.fail(path, out_of_range(i, range), None);
            None
        } else {
            self.fail(path, format!("expected an integer, found {n}"), None);
            None
        }
    }

    fn port(&mut self, path: &str, value: &Value) -> Option<u16> {
        self.uint(path, value, &PORT)
    }

    fn weight(&mut self, path: &str, value: &Value) -> Option<u8> {
        self.uint(path, value, &WEIGHT)
    }

    /// An address of either family.
    fn ip(&mut self, path: &str, value: &Value) -> Option<IpAddr> {
        let text = self.string_of(path, value, "an IP address")?;
        match text.parse::<IpAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let (message, hint) = bad_address(text);
                self.fail(path, message, hint);
                None
            }
        }
    }

    /// An address of a field that stays IPv4; `why` says so for an IPv6 one.
    fn ipv4(&mut self, path: &str, value: &Value, why: &str) -> Option<Ipv4Addr> {
        let text = self.string_of(path, value, "an IPv4 address")?;
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => Some(addr),
            Ok(IpAddr::V6(_)) => {
                self.fail(path, IPV6_NOT_IN_FIELD, Some(why.to_owned()));
                None
            }
            Err(_) => {
                self.fail(path, format!("`{text}` is not an IPv4 address"), None);
                None
            }
        }
    }

    fn router_id(&mut self, path: &str, value: &Value) -> Option<Ipv4Addr> {
        self.ipv4(
            path,
            value,
            "a BGP router id is a 32-bit number written as an IPv4 address",
        )
    }

    /// `health_check_source`: one address, or a list of one address of each family.
    fn probe_source(&mut self, path: &str, value: &Value) -> Option<HealthCheckSource> {
        let (ipv4, ipv6) = self.one_per_family(
            path,
            value,
            Self::ip,
            |a| match a {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(a) => Err(a),
            },
            "give one address, or one IPv4 and one IPv6 address; leave the field out to let \
             the kernel pick the source",
            "give at most one address per family: IPv4 backends are probed from the IPv4 \
             one, IPv6 backends from the IPv6 one",
        )?;
        HealthCheckSource::new(ipv4, ipv6)
    }

    /// A field of one value, or a list of at most one value of each family: `read` reads
    /// one, `split` tells an IPv4 one (`Ok`) from an IPv6 one. `None` after any error (the
    /// field is then tainted: rules about it must not run on the half that was read).
    fn one_per_family<T, V4, V6>(
        &mut self,
        path: &str,
        value: &Value,
        read: fn(&mut Self, &str, &Value) -> Option<T>,
        split: fn(T) -> Result<V4, V6>,
        empty_hint: &str,
        second_hint: &str,
    ) -> Option<(Option<V4>, Option<V6>)> {
        let Value::Sequence(entries) = value else {
            return Some(match split(read(self, path, value)?) {
                Ok(v4) => (Some(v4), None),
                Err(v6) => (None, Some(v6)),
            });
        };
        if entries.is_empty() {
            self.fail(path, "the list is empty", Some(empty_hint.to_owned()));
            return None;
        }
        // Each family's value with the path it was given at.
        let mut ipv4: Option<(V4, String)> = None;
        let mut ipv6: Option<(V6, String)> = None;
        let mut failed = false;
        for (i, entry) in entries.iter().enumerate() {
            let entry_path = index(path, i);
            let Some(one) = read(self, &entry_path, entry) else {
                failed = true;
                continue;
            };
            let (family, first) = match split(one) {
                Ok(v4) => ("IPv4", &ipv4.get_or_insert((v4, entry_path.clone())).1),
                Err(v6) => ("IPv6", &ipv6.get_or_insert((v6, entry_path.clone())).1),
            };
            if *first != entry_path {
                let message = format!("a second {family} source: {first} is one already");
                failed = true;
                self.fail(&entry_path, message, Some(second_hint.to_owned()));
            }
        }
        if failed {
            self.taint.add(path);
            return None;
        }
        Some((ipv4.map(|(v, _)| v), ipv6.map(|(v, _)| v)))
    }

    fn socket_addr(&mut self, path: &str, value: &Value) -> Option<SocketAddr> {
        let text = self.string_of(path, value, "an address:port")?;
        let parsed = text.parse::<SocketAddr>();
        if parsed.is_err() {
            self.fail(
                path,
                format!("`{text}` is not an address:port"),
                Some("e.g. 127.0.0.1:9100".to_owned()),
            );
        }
        parsed.ok()
    }

    /// A prefix of either family, or an address (a /32 or /128).
    fn prefix(&mut self, path: &str, value: &Value) -> Option<IpNet> {
        let text = self.string_of(path, value, "an IP prefix (a.b.c.d/len or x:x::/len)")?;
        match text.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(e) => {
                let hint = e.hint();
                self.fail(path, e.to_string(), hint);
                None
            }
        }
    }

    /// `dsr.source`: one address or prefix, or a list of one of each family (IPv4
    /// listeners' tunnels leave from the IPv4 one, IPv6 listeners' from the IPv6 one).
    fn dsr_source(&mut self, path: &str, value: &Value) -> Option<DsrSource> {
        let (ipv4, ipv6) = self.one_per_family(
            path,
            value,
            Self::prefix,
            |n| match n {
                IpNet::V4(n) => Ok(n),
                IpNet::V6(n) => Err(n),
            },
            "give one address or prefix, or one of each family; leave the field out to send \
             from the address the route to each backend prefers",
            "give at most one address or prefix per family: IPv4 listeners' tunnels leave \
             from the IPv4 one, IPv6 listeners' from the IPv6 one",
        )?;
        DsrSource::new(ipv4, ipv6)
    }

    /// The text of a string-valued field, with `expected` naming it in a type error.
    fn string_of<'v>(&mut self, path: &str, value: &'v Value, expected: &str) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.type_error(path, expected, other);
                None
            }
        }
    }

    /// One of `options` by name. `refused` names values that are known but not accepted,
    /// each with the message and hint that explain why.
    fn choice<T: Copy>(
        &mut self,
        path: &str,
        value: &Value,
        what: &str,
        options: &[(&str, T)],
        refused: &[(&str, &str, Option<&str>)],
    ) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let Value::String(text) = value else {
            self.type_error(path, &format!("a {what} ({})", names.join(" | ")), value);
            return None;
        };
        if let Some((_, v)) = options.iter().find(|(n, _)| n == text) {
            return Some(*v);
        }
        if let Some((_, message, hint)) = refused
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(text))
        {
            self.fail(path, *message, hint.map(str::to_owned));
            return None;
        }
        let hint = did_you_mean(text, &names);
        self.fail(
            path,
            format!(
                "unknown {what} `{text}`; expected one of {}",
                names.join(", ")
            ),
            hint,
        );
        None
    }

    fn config(&mut self, value: &Value) -> Config {
        let mut c = Config::new(String::new(), Vec::new());
        let empty = Mapping::new();
        let map = match value {
            // An empty file: report what is required rather than "expected a mapping".
            Value::Null => &empty,
            other => match self.mapping("", other, TOP_FIELDS, generic) {
                Some(map) => map,
                None => return c,
            },
        };
        if let Some(v) = self.required(map, "", "instance", Self::string) {
            c.instance = v;
        }
        if let Some(v) = self.required(map, "", "interfaces", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.string(p, v).unwrap_or_default()))
        }) {
            c.interfaces = v;
        }
        if let Some(v) = self.optional(map, "", "xdp_mode", |r, p, v| {
            r.choice(
                p,
                v,
                "XDP mode",
                &[
                    ("auto", XdpMode::Auto),
                    ("native", XdpMode::Native),
                    ("generic", XdpMode::Generic),
                ],
                &[
                    (
                        "driver",
                        "`driver` is called `native` here",
                        Some("use `native`"),
                    ),
                    (
                        "skb",
                        "`skb` is called `generic` here",
                        Some("use `generic`"),
                    ),
                    (
                        "offload",
                        "hardware offload is not supported",
                        Some("use `native`"),
                    ),
                ],
            )
        }) {
            c.xdp_mode = v;
        }
        if let Some(v) = self.optional(map, "", "forwarding", Self::forwarding) {
            c.forwarding = v;
        }
        if let Some(v) = self.optional(map, "", "dsr", |r, p, v| Some(r.dsr(p, v))) {
            c.dsr = v;
        }
        if let Some(v) = self.optional(map, "", "vip_ping", |r, p, v| {
            r.choice(
                p,
                v,
                "answer to a ping",
                &[("answer", VipPing::Answer), ("drop", VipPing::Drop)],
                &[],
            )
        }) {
            c.vip_ping = v;
        }
        if let Some(v) = self.optional(map, "", "flow_table_size", |r, p, v| {
            r.uint(p, v, &FLOW_TABLE_SIZE)
        }) {
            c.flow_table_size = v;
        }
        if let Some(v) = self.optional(map, "", "max_listeners", |r, p, v| {
            r.uint(p, v, &MAX_LISTENERS)
        }) {
            c.max_listeners = v;
        }
        if let Some(v) = self.optional(map, "", "max_backends", |r, p, v| {
            r.uint(p, v, &MAX_BACKENDS)
        }) {
            c.max_backends = v;
        }
        c.maglev_slots = self.optional(map, "", "maglev_slots", |r, p, v| {
            r.uint(p, v, &MAGLEV_SLOTS)
        });
        c.health_check_source = self.optional(map, "", "health_check_source", Self::probe_source);
        c.metrics_listen = self.optional(map, "", "metrics_listen", Self::socket_addr);
        if let Some(v) = self.optional(map, "", "refused_client_sources", |r, p, v| {
            r.list(p, v, Self::prefix)
        }) {
            c.refused_client_sources = v;
        }
        if let Some(v) = self.optional(map, "", "metrics_hosts", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.string(p, v).unwrap_or_default()))
        }) {
            c.metrics_hosts = v;
        }
        c.bgp = self.optional(map, "", "bgp", Self::bgp);
        if let Some(v) = self.optional(map, "", "acls", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.acl(p, v)))
        }) {
            c.acls = v;
        }
        if let Some(v) = self.optional(map, "", "default_server_group", |r, p, v| {
            Some(r.default_group(p, v))
        }) {
            c.default_server_group = v;
        }
        if let Some(v) = self.optional(map, "", "vserver_groups", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.vserver_group(p, v)))
        }) {
            c.vserver_groups = v;
        }
        if let Some(v) = self.optional(map, "", "primary_secondary_groups", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.primary_secondary_group(p, v)))
        }) {
            c.primary_secondary_groups = v;
        }
        if let Some(v) = self.optional(map, "", "listeners", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.listener(p, v)))
        }) {
            c.listeners = v;
        }
        c
    }

    fn forwarding(&mut self, path: &str, value: &Value) -> Option<Forwarding> {
        self.choice(
            path,
            value,
            "forwarding mode",
            &[("nat", Forwarding::Nat), ("dsr", Forwarding::Dsr)],
            &[(
                "fullnat",
                "`fullnat` forwarding is not supported yet",
                Some("use `nat` or `dsr`"),
            )],
        )
    }

    fn dsr(&mut self, path: &str, value: &Value) -> Dsr {
        let mut dsr = Dsr::default();
        let Some(m) = self.mapping(path, value, DSR_FIELDS, generic) else {
            return dsr;
        };
        if let Some(v) = self.optional(m, path, "encapsulation", |r, p, v| {
            r.choice(
                p,
                v,
                "encapsulation",
                &[("ipip", Tunnel::Ipip), ("gue", Tunnel::Gue)],
                &[],
            )
        }) {
            dsr.encapsulation = v;
        }
        if let Some(v) = self.optional(m, path, "gue_port", |r, p, v| r.uint(p, v, &PORT)) {
            dsr.gue_port = v;
        }
        dsr.source = self.optional(m, path, "source", Self::dsr_source);
        dsr
    }

    fn bgp(&mut self, path: &str, value: &Value) -> Option<Bgp> {
        let m = self.mapping(path, value, BGP_FIELDS, generic)?;
        let mut bgp = Bgp::new(Ipv4Addr::UNSPECIFIED, 0, Vec::new());
        if let Some(v) = self.required(m, path, "router_id", Self::router_id) {
            bgp.router_id = v;
        }
        if let Some(v) = self.required(m, path, "local_as", |r, p, v| r.uint(p, v, &AS_NUMBER)) {
            bgp.local_as = v;
        }
        if let Some(v) = self.optional(m, path, "hold_time", |r, p, v| r.uint(p, v, &HOLD_TIME)) {
            bgp.hold_time = v;
        }
        if let Some(v) = self.optional(m, path, "withdraw_wait", |r, p, v| {
            r.uint(p, v, &WITHDRAW_WAIT)
        }) {
            bgp.withdraw_wait = v;
        }
        if let Some(v) = self.required(m, path, "neighbors", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.bgp_neighbor(p, v)))
        }) {
            bgp.neighbors = v;
        }
        Some(bgp)
    }

    fn bgp_neighbor(&mut self, path: &str, value: &Value) -> BgpNeighbor {
        let mut n = BgpNeighbor::new(Ipv4Addr::UNSPECIFIED, 0);
        let Some(m) = self.mapping(path, value, BGP_NEIGHBOR_FIELDS, generic) else {
            return n;
        };
        if let Some(v) = self.required(m, path, "address", Self::ip) {
            n.address = v;
        }
        if let Some(v) = self.required(m, path, "remote_as", |r, p, v| r.uint(p, v, &AS_NUMBER)) {
            n.remote_as = v;
        }
        if let Some(v) = self.optional(m, path, "port", Self::port) {
            n.port = v;
        }
        if let Some(v) = self.optional(m, path, "bfd", Self::boolean) {
            n.bfd = v;
        }
        n.password = self.optional(m, path, "password", Self::string);
        n
    }

    fn acl(&mut self, path: &str, value: &Value) -> Acl {
        let mut acl = Acl {
            name: String::new(),
            entries: Vec::new(),
        };
        let Some(m) = self.mapping(path, value, ACL_FIELDS, generic) else {
            return acl;
        };
        if let Some(v) = self.required(m, path, "name", Self::string) {
            acl.name = v;
        }
        if let Some(v) = self.optional(m, path, "entries", |r, p, v| r.list(p, v, Self::prefix)) {
            acl.entries = v;
        }
        acl
    }

    fn default_group(&mut self, path: &str, value: &Value) -> DefaultGroup {
        let mut group = DefaultGroup::default();
        let Some(m) = self.mapping(path, value, DEFAULT_GROUP_FIELDS, generic) else {
            return group;
        };
        if let Some(v) = self.optional(m, path, "servers", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.default_server(p, v)))
        }) {
            group.servers = v;
        }
        group
    }

    fn default_server(&mut self, path: &str, value: &Value) -> DefaultServer {
        let mut server = DefaultServer::new(Ipv4Addr::UNSPECIFIED);
        let Some(m) = self.mapping(path, value, DEFAULT_SERVER_FIELDS, default_server_unknown)
        else {
            return server;
        };
        if let Some(v) = self.required(m, path, "address", Self::ip) {
            server.address = v;
        }
        if let Some(v) = self.optional(m, path, "weight", Self::weight) {
            server.weight = v;
        }
        server
    }

    fn vserver_group(&mut self, path: &str, value: &Value) -> VServerGroup {
        let mut group = VServerGroup {
            name: String::new(),
            servers: Vec::new(),
        };
        let Some(m) = self.mapping(path, value, VSERVER_GROUP_FIELDS, generic) else {
            return group;
        };
        if let Some(v) = self.required(m, path, "name", Self::string) {
            group.name = v;
        }
        if let Some(v) = self.optional(m, path, "servers", |r, p, v| {
            r.list(p, v, |r, p, v| Some(r.member(p, v)))
        }) {
            group.servers = v;
        }
        group
    }

    fn member(&mut self, path: &str, value: &Value) -> Member {
        let mut member = Member::new(Ipv4Addr::UNSPECIFIED, 0);
        let Some(m) = self.mapping(path, value, MEMBER_FIELDS, generic) else {
            return member;
        };
        if let Some(v) = self.required(m, path, "address", Self::ip) {
            member.address = v;
        }
        if let Some(v) = self.required(m, path, "port", Self::port) {
            member.port = v;
        }
        if let Some(v) = self.optional(m, path, "weight", Self::weight) {
            member.weight = v;
        }
        member
    }

    fn primary_secondary_group(&mut self, path: &str, value: &Value) -> PrimarySecondaryGroup {
        let unset = Endpoint::new(Ipv4Addr::UNSPECIFIED, 0);
        let mut group = PrimarySecondaryGroup {
            name: String::new(),
            primary: unset,
            secondary: unset,
            probe_secondary: false,
        };
        let Some(m) = self.mapping(
            path,
            value,
            PRIMARY_SECONDARY_FIELDS,
            primary_secondary_unknown,
        ) else {
            return group;
        };
        if let Some(v) = self.required(m, path, "name", Self::string) {
            group.name = v;
        }
        if let Some(v) = self.required(m, path, "primary", Self::endpoint) {
            group.primary = v;
        }
        if let Some(v) = self.required(m, path, "secondary", Self::endpoint) {
            group.secondary = v;
        }
        if let Some(v) = self.optional(m, path, "probe_secondary", Self::boolean) {
            group.probe_secondary = v;
        }
        group
    }

    fn endpoint(&mut self, path: &str, value: &Value) -> Option<Endpoint> {
        let m = self.mapping(path, value, ENDPOINT_FIELDS, endpoint_unknown)?;
        let address = self.required(m, path, "address", Self::ip);
        let port = self.required(m, path, "port", Self::port);
        Some(Endpoint {
            address: address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port: port.unwrap_or(0),
        })
    }

    fn listener(&mut self, path: &str, value: &Value) -> Listener {
        let mut l = Listener::new(String::new(), Protocol::Tcp, Ipv4Addr::UNSPECIFIED, 0);
        let Some(m) = self.mapping(path, value, LISTENER_FIELDS, generic) else {
            return l;
        };
        if let Some(v) = self.required(m, path, "name", Self::string) {
            l.name = v;
        }
        if let Some(v) = self.required(m, path, "protocol", Self::protocol) {
            l.protocol = v;
        }
        if let Some(v) = self.required(m, path, "address", Self::ip) {
            l.address = v;
        }
        if let Some(v) = self.required(m, path, "port", Self::port) {
            l.port = v;
        }
        l.backend_port = self.optional(m, path, "backend_port", Self::port);
        // `default` names the default group, which is what an absent field means too.
        l.server_group = self
            .optional(m, path, "server_group", Self::string)
            .filter(|g| g != DEFAULT_GROUP_NAME);
        if let Some(v) = self.optional(m, path, "scheduler", Self::scheduler) {
            l.scheduler = v;
        }
        if let Some(v) = self.optional(m, path, "persistence_timeout", |r, p, v| {
            r.uint(p, v, &PERSISTENCE_TIMEOUT)
        }) {
            l.persistence_timeout = v;
        }
        if let Some(v) = self.optional(m, path, "established_timeout", |r, p, v| {
            r.uint(p, v, &ESTABLISHED_TIMEOUT)
        }) {
            l.established_timeout = v;
        }
        if let Some(v) = self.optional(m, path, "udp_timeout", |r, p, v| r.uint(p, v, &UDP_TIMEOUT))
        {
            l.udp_timeout = v;
        }
        if let Some(v) = self.optional(m, path, "connection_drain", Self::connection_drain) {
            l.connection_drain = v;
        }
        l.acl = self.optional(m, path, "acl", Self::listener_acl);
        if let Some(v) = self.optional(m, path, "slow_start", |r, p, v| r.uint(p, v, &SLOW_START)) {
            l.slow_start = v;
        }
        if let Some(v) = self.optional(m, path, "maglev_table_size", |r, p, v| {
            r.uint(p, v, &MAGLEV_TABLE_SIZE)
        }) {
            l.maglev_table_size = v;
        }
        if let Some(v) = self.optional(m, path, "health_check", Self::health_check) {
            l.health_check = v;
        }
        l
    }

    fn protocol(&mut self, path: &str, value: &Value) -> Option<Protocol> {
        let hint = Some("use protocol: tcp to balance the connections");
        self.choice(
            path,
            value,
            "protocol",
            &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)],
            &[
                ("http", LAYER_7_REFUSAL, hint),
                ("https", LAYER_7_REFUSAL, hint),
            ],
        )
    }

    fn scheduler(&mut self, path: &str, value: &Value) -> Option<Scheduler> {
        let options: Vec<(&str, Scheduler)> = SCHEDULERS.iter().map(|s| (s.name(), *s)).collect();
        self.choice(
            path,
            value,
            "scheduler",
            &options,
            &[(
                "qch",
                "the `qch` scheduler (QUIC connection ID) is not supported yet",
                Some("`tch` hashes the 4-tuple"),
            )],
        )
    }

    fn connection_drain(&mut self, path: &str, value: &Value) -> Option<ConnectionDrain> {
        let m = self.mapping(path, value, DRAIN_FIELDS, generic)?;
        let mut drain = ConnectionDrain::default();
        if let Some(v) = self.optional(m, path, "enabled", Self::boolean) {
            drain.enabled = v;
        }
        if let Some(v) = self.optional(m, path, "timeout", |r, p, v| r.uint(p, v, &DRAIN_TIMEOUT)) {
            drain.timeout = v;
        }
        Some(drain)
    }

    fn listener_acl(&mut self, path: &str, value: &Value) -> Option<ListenerAcl> {
        let m = self.mapping(path, value, LISTENER_ACL_FIELDS, generic)?;
        let kind = self.required(m, path, "type", |r, p, v| {
            r.choice(
                p,
                v,
                "ACL type",
                &[("allow", AclKind::Allow), ("deny", AclKind::Deny)],
                &[],
            )
        });
        let name = self.required(m, path, "name", Self::string);
        Some(ListenerAcl {
            kind: kind.unwrap_or(AclKind::Allow),
            name: name.unwrap_or_default(),
        })
    }

    fn health_check(&mut self, path: &str, value: &Value) -> Option<HealthCheck> {
        let m = self.mapping(path, value, HEALTH_CHECK_FIELDS, generic)?;
        let mut hc = HealthCheck::default();
        if let Some(v) = self.optional(m, path, "type", |r, p, v| {
            r.choice(
                p,
                v,
                "health check type",
                &[
                    ("tcp", HealthCheckKind::Tcp),
                    ("http", HealthCheckKind::Http),
                    ("udp", HealthCheckKind::Udp),
                    ("none", HealthCheckKind::None),
                ],
                &[],
            )
        }) {
            hc.kind = Some(v);
        }
        if let Some(v) = self.optional(m, path, "interval", |r, p, v| r.uint(p, v, &CHECK_INTERVAL))
        {
            hc.interval = v;
        }
        if let Some(v) = self.optional(m, path, "timeout", |r, p, v| r.uint(p, v, &CHECK_TIMEOUT)) {
            hc.timeout = v;
        }
        if let Some(v) = self.optional(m, path, "healthy_threshold", |r, p, v| {
            r.uint(p, v, &CHECK_THRESHOLD)
        }) {
            hc.healthy_threshold = v;
        }
        if let Some(v) = self.optional(m, path, "unhealthy_threshold", |r, p, v| {
            r.uint(p, v, &CHECK_THRESHOLD)
        }) {
            hc.unhealthy_threshold = v;
        }
        hc.port = self.optional(m, path, "port", Self::port);
        hc.http = self.optional(m, path, "http", Self::http_check);
        hc.udp = self.optional(m, path, "udp", Self::udp_check);
        hc.flap_damping = self.optional(m, path, "flap_damping", Self::flap_damping);
        Some(hc)
    }

    fn http_check(&mut self, path: &str, value: &Value) -> Option<HttpCheck> {
        let m = self.mapping(path, value, HTTP_FIELDS, generic)?;
        let mut http = HttpCheck::default();
        if let Some(v) = self.optional(m, path, "method", |r, p, v| {
            r.choice(
                p,
                v,
                "HTTP method",
                &[("get", HttpMethod::Get), ("head", HttpMethod::Head)],
                &[],
            )
        }) {
            http.method = v;
        }
        http.host = self.optional(m, path, "host", Self::string);
        if let Some(v) = self.optional(m, path, "path", Self::string) {
            http.path = v;
        }
        if let Some(v) = self.optional(m, path, "codes", |r, p, v| {
            r.list(p, v, |r, p, v| {
                let classes = HttpCodeClass::ALL.map(|c| (c.name(), c));
                r.choice(p, v, "status class", &classes, &[])
            })
        }) {
            http.codes = v;
        }
        Some(http)
    }

    fn udp_check(&mut self, path: &str, value: &Value) -> Option<UdpCheck> {
        let m = self.mapping(path, value, UDP_FIELDS, generic)?;
        Some(UdpCheck {
            request: self.optional(m, path, "request", Self::string),
            expect: self.optional(m, path, "expect", Self::string),
        })
    }

    fn flap_damping(&mut self, path: &str, value: &Value) -> Option<FlapDamping> {
        let m = self.mapping(path, value, FLAP_FIELDS, generic)?;
        let max_flaps = self.required(m, path, "max_flaps", |r, p, v| {
            r.uint(p, v, &FLAP_MAX_FLAPS)
        });
        let window = self.required(m, path, "window", |r, p, v| r.uint(p, v, &FLAP_WINDOW));
        let hold = self.required(m, path, "hold", |r, p, v| r.uint(p, v, &FLAP_HOLD));
        Some(FlapDamping {
            max_flaps: max_flaps.unwrap_or(0),
            window: window.unwrap_or(0),
            hold: hold.unwrap_or(0),
        })
    }
}

/// Why a field that stays IPv4 refuses an IPv6 address; the hint says why it does.
const IPV6_NOT_IN_FIELD: &str = "IPv6 is not supported in this field";

/// Message and hint for text that is not an address, in the family it looks like.
fn bad_address(text: &str) -> (String, Option<String>) {
    let family = if text.contains(':') { "IPv6" } else { "IPv4" };
    let hint = if let Ok(endpoint) = text.parse::<SocketAddr>() {
        Some(format!(
            "write the address alone, {}: the port has a field of its own",
            endpoint.ip()
        ))
    } else if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && inner.parse::<Ipv6Addr>().is_ok()
    {
        Some(format!("write it without brackets: {inner}"))
    } else {
        None
    };
    let family = match hint {
        Some(_) => "IP",
        None => family,
    };
    (format!("`{text}` is not an {family} address"), hint)
}

/// The value of `key`, treating an explicit null (`key:` with nothing after it) as absent.
fn present<'v>(map: &'v Mapping, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// How a value reads in "expected X, found Y".
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string `{s}`"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// Every field path the reader accepts, e.g. `listeners[].health_check.http.path`:
/// the config reference (docs/config.md) must document each one (a test checks).
pub fn field_paths() -> Vec<String> {
    let nest = |prefix: &str, fields: &[&str]| -> Vec<String> {
        fields.iter().map(|f| format!("{prefix}.{f}")).collect()
    };
    let mut paths: Vec<String> = TOP_FIELDS.iter().map(|f| (*f).to_owned()).collect();
    paths.extend(nest("dsr", DSR_FIELDS));
    paths.extend(nest("bgp", BGP_FIELDS));
    paths.extend(nest("bgp.neighbors[]", BGP_NEIGHBOR_FIELDS));
    paths.extend(nest("acls[]", ACL_FIELDS));
    paths.extend(nest("default_server_group", DEFAULT_GROUP_FIELDS));
    paths.extend(nest(
        "default_server_group.servers[]",
        DEFAULT_SERVER_FIELDS,
    ));
    paths.extend(nest("vserver_groups[]", VSERVER_GROUP_FIELDS));
    paths.extend(nest("vserver_groups[].servers[]", MEMBER_FIELDS));
    paths.extend(nest("primary_secondary_groups[]", PRIMARY_SECONDARY_FIELDS));
    paths.extend(nest("primary_secondary_groups[].primary", ENDPOINT_FIELDS));
    paths.extend(nest(
        "primary_secondary_groups[].secondary",
        ENDPOINT_FIELDS,
    ));
    paths.extend(nest("listeners[]", LISTENER_FIELDS));
    paths.extend(nest("listeners[].connection_drain", DRAIN_FIELDS));
    paths.extend(nest("listeners[].acl", LISTENER_ACL_FIELDS));
    paths.extend(nest("listeners[].health_check", HEALTH_CHECK_FIELDS));
    paths.extend(nest("listeners[].health_check.http", HTTP_FIELDS));
    paths.extend(nest("listeners[].health_check.udp", UDP_FIELDS));
    paths.extend(nest("listeners[].health_check.flap_damping", FLAP_FIELDS));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reader errors only (no rule checks), as `path: message (hint)` lines.
    fn read_errors(yaml: &str) -> Vec<String> {
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        let (_, errors, _) = read(&value);
        errors.iter().map(ToString::to_string).collect()
    }

    fn read_ok(yaml: &str) -> Config {
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        let (config, errors, _) = read(&value);
        assert!(errors.is_empty(), "{errors:?}");
        config
    }

    const BASE: &str = "instance: demo\ninterfaces: [eth0]\n";

    #[test]
    fn empty_document_reports_required_fields() {
        assert_eq!(
            read_errors(""),
            [
                "instance: required field is missing",
                "interfaces: required field is missing"
            ]
        );
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        assert_eq!(read_errors("[1, 2]"), ["expected a mapping, found a list"]);
    }

    #[test]
    fn defaults_fill_what_is_absent() {
        let c = read_ok(BASE);
        assert_eq!(c, Config::new("demo", vec!["eth0".to_owned()]));
    }

    #[test]
    fn explicit_null_means_absent() {
        let c = read_ok(&format!("{BASE}metrics_listen:\nacls: ~\n"));
        assert_eq!(c.metrics_listen, None);
        assert!(c.acls.is_empty());
    }

    #[test]
    fn unknown_fields_suggest_the_closest_known_one() {
        let errors = read_errors(&format!(
            "{BASE}listeners:\n  - {{ name: a, protocl: tcp, address: 198.18.0.1, port: 80, group: x }}\n"
        ));
        assert_eq!(
            errors,
            [
                "listeners[0].protocl: unknown field `protocl` (did you mean `protocol`?)",
                "listeners[0].group: unknown field `group` (did you mean `server_group`?)",
                "listeners[0].protocol: required field is missing",
            ]
        );
        let errors = read_errors(&format!("{BASE}colour: blue\n"));
        assert_eq!(errors, ["colour: unknown field `colour`"]);
    }

    #[test]
    fn type_errors_name_what_was_expected_and_found() {
        let errors = read_errors(
            "instance: 7\ninterfaces: eth0\nflow_table_size: big\nmax_listeners: 1.5\n",
        );
        assert_eq!(
            errors,
            [
                "instance: expected a string, found the number 7 (quote it: \"7\")",
                "interfaces: expected a list, found the string `eth0` (write a list: [eth0])",
                "flow_table_size: expected an integer, found the string `big`",
                "max_listeners: expected an integer, found 1.5",
            ]
        );
    }

    #[test]
    fn booleans_are_yaml_1_2_true_or_false() {
        let errors = read_errors(&format!(
            "{BASE}primary_secondary_groups:\n  - name: db\n    primary: {{ address: 198.18.1.20, port: 5432 }}\n    secondary: {{ address: 198.18.1.21, port: 5432 }}\n    probe_secondary: yes\n"
        ));
        assert_eq!(
            errors,
            [
                "primary_secondary_groups[0].probe_secondary: expected true or false, found the string `yes`"
            ]
        );
    }

    #[test]
    fn out_of_range_integers_show_the_value_and_the_range() {
        let errors = read_errors(&format!(
            "{BASE}listeners:\n  - {{ name: a, protocol: tcp, address: 198.18.0.1, port: 70000 }}\n  - {{ name: b, protocol: tcp, address: 198.18.0.1, port: -1, slow_start: 601 }}\n"
        ));
        assert_eq!(
            errors,
            [
                "listeners[0].port: 70000 is not in 1..=65535",
                "listeners[1].port: -1 is not in 1..=65535",
                "listeners[1].slow_start: 601 is not in 0..=600",
            ]
        );
    }

    #[test]
    fn addresses_of_either_family_are_read() {
        let c = read_ok(&format!(
            "{BASE}health_check_source: 2001:db8::1\ndefault_server_group:\n  servers: [{{ address: 2001:db8::10 }}, {{ address: '2001:db8::11' }}, {{ address: 198.18.1.10 }}]\nacls: [{{ name: x, entries: [2001:db8::/32, 198.18.0.0/24, '::1'] }}]\nrefused_client_sources: [2001:db8:ffff::/48]\n"
        ));
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            c.health_check_source,
            Some(HealthCheckSource::from(v6("2001:db8::1")))
        );
        let servers: Vec<IpAddr> = c
            .default_server_group
            .servers
            .iter()
            .map(|s| s.address)
            .collect();
        assert_eq!(
            servers,
            [v6("2001:db8::10"), v6("2001:db8::11"), v6("198.18.1.10")]
        );
        let entries: Vec<String> = c.acls[0].entries.iter().map(ToString::to_string).collect();
        assert_eq!(entries, ["2001:db8::/32", "198.18.0.0/24", "::1/128"]);
        assert_eq!(
            c.refused_client_sources[0].to_string(),
            "2001:db8:ffff::/48"
        );
    }

    #[test]
    fn malformed_ipv6_addresses_and_prefixes_name_their_path() {
        let errors = read_errors(&format!(
            "{BASE}health_check_source: '2001:db8:::1'\ndefault_server_group:\n  servers: [{{ address: '2001:db8::g' }}, {{ address: 198.18.1.300 }}, {{ address: '[2001:db8::10]' }}, {{ address: '[2001:db8::10]:80' }}]\nacls: [{{ name: x, entries: ['2001:db8::1/32', '2001:db8::/129', '2001:db8:::/32'] }}]\n"
        ));
        assert_eq!(
            errors,
            [
                "health_check_source: `2001:db8:::1` is not an IPv6 address",
                "acls[0].entries[0]: 2001:db8::1/32 has host bits set (did you mean `2001:db8::/32`?)",
                "acls[0].entries[1]: prefix length 129 is longer than 128 (an IPv6 prefix length is 0..=128)",
                "acls[0].entries[2]: `2001:db8:::/32` is not an IPv6 address or prefix (e.g. 2001:db8::1 or 2001:db8::/32)",
                "default_server_group.servers[0].address: `2001:db8::g` is not an IPv6 address",
                "default_server_group.servers[1].address: `198.18.1.300` is not an IPv4 address",
                "default_server_group.servers[2].address: `[2001:db8::10]` is not an IP address (write it without brackets: 2001:db8::10)",
                "default_server_group.servers[3].address: `[2001:db8::10]:80` is not an IP address (write the address alone, 2001:db8::10: the port has a field of its own)",
            ]
        );
    }

    #[test]
    fn the_probe_source_is_one_address_or_one_of_each_family() {
        let c = read_ok(&format!(
            "{BASE}health_check_source: [2001:db8::1, 198.18.1.1]\n"
        ));
        let source = c.health_check_source.unwrap();
        assert_eq!(source.ipv4(), Some(Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(source.ipv6(), Some("2001:db8::1".parse().unwrap()));
        // Exported as read back: a list of both, IPv4 first.
        assert!(
            c.to_yaml()
                .contains("health_check_source:\n- 198.18.1.1\n- 2001:db8::1\n"),
            "{}",
            c.to_yaml()
        );
        assert_eq!(crate::config::parse(&c.to_yaml()).unwrap(), c);
        let one = read_ok(&format!("{BASE}health_check_source: [198.18.1.1]\n"));
        assert_eq!(
            one.health_check_source,
            Some(Ipv4Addr::new(198, 18, 1, 1).into())
        );
        assert!(one.to_yaml().contains("health_check_source: 198.18.1.1\n"));
        assert_eq!(
            read_errors(&format!(
                "{BASE}health_check_source: [198.18.1.1, 2001:db8::1, 198.18.1.2, x]\n"
            )),
            [
                "health_check_source[2]: a second IPv4 source: health_check_source[0] is one already (give at most one address per family: IPv4 backends are probed from the IPv4 one, IPv6 backends from the IPv6 one)",
                "health_check_source[3]: `x` is not an IPv4 address",
            ]
        );
        assert_eq!(
            read_errors(&format!("{BASE}health_check_source: []\n")),
            [
                "health_check_source: the list is empty (give one address, or one IPv4 and one IPv6 address; leave the field out to let the kernel pick the source)"
            ]
        );
    }

    #[test]
    fn fields_that_stay_ipv4_refuse_ipv6_saying_why() {
        let errors = read_errors(&format!(
            "{BASE}bgp: {{ router_id: '2001:db8::1', local_as: 65001, neighbors: [{{ address: '2001:db8::2', remote_as: 65000 }}] }}\n"
        ));
        assert_eq!(
            errors,
            [
                "bgp.router_id: IPv6 is not supported in this field (a BGP router id is a 32-bit number written as an IPv4 address)",
            ]
        );
    }

    #[test]
    fn metrics_listen_takes_an_address_and_port() {
        let c = read_ok(&format!("{BASE}metrics_listen: 127.0.0.1:9100\n"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(
            read_errors(&format!("{BASE}metrics_listen: localhost\n")),
            ["metrics_listen: `localhost` is not an address:port (e.g. 127.0.0.1:9100)"]
        );
    }

    #[test]
    fn acl_entries_with_host_bits_show_the_network() {
        let errors = read_errors(&format!(
            "{BASE}acls: [{{ name: office, entries: [198.18.0.7/24, 198.18.7.7] }}]\n"
        ));
        assert_eq!(
            errors,
            ["acls[0].entries[0]: 198.18.0.7/24 has host bits set (did you mean `198.18.0.0/24`?)"]
        );
    }

    #[test]
    fn acls_may_have_no_entries() {
        let c = read_ok(&format!(
            "{BASE}acls: [{{ name: empty }}, {{ name: also, entries: [] }}]\n"
        ));
        assert!(c.acls.iter().all(|a| a.entries.is_empty()));
    }

    #[test]
    fn xdp_mode_is_auto_native_or_generic() {
        assert_eq!(read_ok(BASE).xdp_mode, XdpMode::Auto);
        for (text, mode) in [
            ("auto", XdpMode::Auto),
            ("native", XdpMode::Native),
            ("generic", XdpMode::Generic),
        ] {
            let c = read_ok(&format!("{BASE}xdp_mode: {text}\n"));
            assert_eq!(c.xdp_mode, mode);
            // Written back by `lb-ctl export` (auto, the default, left out).
            assert_eq!(
                c.to_yaml().contains(&format!("xdp_mode: {text}")),
                mode != XdpMode::Auto
            );
            assert_eq!(crate::config::parse(&c.to_yaml()).unwrap(), c);
        }
        assert_eq!(
            read_errors(&format!("{BASE}xdp_mode: skb\n")),
            ["xdp_mode: `skb` is called `generic` here (use `generic`)"]
        );
        assert_eq!(
            read_errors(&format!("{BASE}xdp_mode: nativ\n")),
            [
                "xdp_mode: unknown XDP mode `nativ`; expected one of auto, native, generic (did you mean `native`?)"
            ]
        );
        assert_eq!(
            read_errors(&format!("{BASE}xdp_mode: 1\n")).len(),
            1,
            "a number is a type error"
        );
    }

    #[test]
    fn forwarding_is_nat_or_dsr() {
        assert_eq!(
            read_ok(&format!("{BASE}forwarding: nat\n")).forwarding,
            Forwarding::Nat
        );
        let c = read_ok(&format!("{BASE}forwarding: dsr\n"));
        assert_eq!((c.forwarding, c.dsr), (Forwarding::Dsr, Dsr::default()));
        assert_eq!(
            read_errors(&format!("{BASE}forwarding: fullnat\n")),
            ["forwarding: `fullnat` forwarding is not supported yet (use `nat` or `dsr`)"]
        );
        assert_eq!(
            read_errors(&format!("{BASE}forwarding: nta\n")),
            [
                "forwarding: unknown forwarding mode `nta`; expected one of nat, dsr (did you mean `nat`?)"
            ]
        );
    }

    #[test]
    fn the_dsr_section_names_each_bad_field() {
        let c = read_ok(&format!(
            "{BASE}forwarding: dsr\ndsr: {{ encapsulation: gue, gue_port: 9000, source: 198.18.9.0/24 }}\n"
        ));
        assert_eq!(c.dsr.encapsulation, Tunnel::Gue);
        assert_eq!(c.dsr.gue_port, 9000);
        assert_eq!(
            c.dsr.source,
            Some("198.18.9.0/24".parse::<IpNet>().unwrap().into())
        );
        assert_eq!(
            read_errors(&format!(
                "{BASE}forwarding: dsr\ndsr: {{ encapsulation: gre, gue_port: 0, source: 198.18.9.1/24, mtu: 9000 }}\n"
            )),
            [
                "dsr.mtu: unknown field `mtu`",
                "dsr.encapsulation: unknown encapsulation `gre`; expected one of ipip, gue (did you mean `gue`?)",
                "dsr.gue_port: 0 is not in 1..=65535",
                "dsr.source: 198.18.9.1/24 has host bits set (did you mean `198.18.9.0/24`?)",
            ]
        );
    }

    /// `dsr.source` is per family, as `health_check_source` is: one address or prefix, or
    /// one of each family; what was read is written back the same way.
    #[test]
    fn the_dsr_source_is_one_prefix_or_one_of_each_family() {
        let c = read_ok(&format!(
            "{BASE}forwarding: dsr\ndsr: {{ source: [2001:db8:9::/112, 198.18.9.0/24] }}\n"
        ));
        let source = c.dsr.source.unwrap();
        assert_eq!(
            source.ipv4().map(|n| n.to_string()),
            Some("198.18.9.0/24".to_owned())
        );
        assert_eq!(
            source.ipv6().map(|n| n.to_string()),
            Some("2001:db8:9::/112".to_owned())
        );
        assert!(
            c.to_yaml()
                .contains("source:\n  - 198.18.9.0/24\n  - 2001:db8:9::/112\n"),
            "{}",
            c.to_yaml()
        );
        let one = read_ok(&format!(
            "{BASE}forwarding: dsr\ndsr: {{ source: '2001:db8:9::1' }}\n"
        ));
        let source = one.dsr.source.unwrap();
        assert_eq!(source.ipv4(), None);
        assert_eq!(
            source.ipv6().map(|n| n.to_string()),
            Some("2001:db8:9::1/128".to_owned())
        );
        assert_eq!(
            read_errors(&format!(
                "{BASE}forwarding: dsr\ndsr: {{ source: [198.18.9.0/24, 198.18.8.1, '2001:db8::/129'] }}\n"
            )),
            [
                "dsr.source[1]: a second IPv4 source: dsr.source[0] is one already (give at most one address or prefix per family: IPv4 listeners' tunnels leave from the IPv4 one, IPv6 listeners' from the IPv6 one)",
                "dsr.source[2]: prefix length 129 is longer than 128 (an IPv6 prefix length is 0..=128)",
            ]
        );
        assert_eq!(
            read_errors(&format!("{BASE}forwarding: dsr\ndsr: {{ source: [] }}\n")),
            [
                "dsr.source: the list is empty (give one address or prefix, or one of each family; leave the field out to send from the address the route to each backend prefers)"
            ]
        );
    }

    #[test]
    fn http_listeners_are_refused_as_layer_7() {
        for protocol in ["http", "HTTPS"] {
            let errors = read_errors(&format!(
                "{BASE}listeners: [{{ name: a, protocol: {protocol}, address: 198.18.0.1, port: 80, backend_port: 80 }}]\n"
            ));
            assert_eq!(
                errors,
                [
                    "listeners[0].protocol: HTTP/HTTPS listeners are Layer 7; this XDP load balancer forwards TCP and UDP only (use protocol: tcp to balance the connections)"
                ]
            );
        }
    }

    #[test]
    fn schedulers_by_name() {
        for s in SCHEDULERS {
            let c = read_ok(&format!(
                "{BASE}listeners: [{{ name: a, protocol: tcp, address: 198.18.0.1, port: 80, scheduler: {} }}]\n",
                s.name()
            ));
            assert_eq!(c.listeners[0].scheduler, s);
        }
        let errors = read_errors(&format!(
            "{BASE}listeners: [{{ name: a, protocol: tcp, address: 198.18.0.1, port: 80, scheduler: wrrr }}]\n"
        ));
        assert_eq!(
            errors,
            [
                "listeners[0].scheduler: unknown scheduler `wrrr`; expected one of wrr, rr, wlc, sch, tch (did you mean `wrr`?)"
            ]
        );
        let errors = read_errors(&format!(
            "{BASE}listeners: [{{ name: a, protocol: tcp, address: 198.18.0.1, port: 80, scheduler: qch }}]\n"
        ));
        assert_eq!(
            errors,
            [
                "listeners[0].scheduler: the `qch` scheduler (QUIC connection ID) is not supported yet (`tch` hashes the 4-tuple)"
            ]
        );
    }

    #[test]
    fn default_group_servers_carry_no_port() {
        let errors = read_errors(&format!(
            "{BASE}default_server_group:\n  servers: [{{ address: 198.18.1.10, port: 8080 }}]\n"
        ));
        assert_eq!(
            errors,
            [
                "default_server_group.servers[0].port: unknown field `port` (servers of the default group carry no port; set the listener's backend_port)"
            ]
        );
    }

    #[test]
    fn primary_secondary_groups_have_exactly_two_members() {
        let errors = read_errors(&format!(
            "{BASE}primary_secondary_groups:\n  - name: db\n    primary: {{ address: 198.18.1.20, port: 5432 }}\n    secondary: {{ address: 198.18.1.21, port: 5432 }}\n    tertiary: {{ address: 198.18.1.22, port: 5432 }}\n  - name: db2\n    servers: [{{ address: 198.18.1.20, port: 5432 }}]\n"
        ));
        assert_eq!(
            errors,
            [
                "primary_secondary_groups[0].tertiary: unknown field `tertiary`: a primary/secondary group has exactly two members, `primary` and `secondary` (use a vServer group for more servers)",
                "primary_secondary_groups[1].servers: unknown field `servers`: a primary/secondary group has exactly two members, `primary` and `secondary` (use a vServer group for more servers)",
                "primary_secondary_groups[1].primary: required field is missing",
                "primary_secondary_groups[1].secondary: required field is missing",
            ]
        );
    }

    #[test]
    fn primary_secondary_members_take_no_weight() {
        let errors = read_errors(&format!(
            "{BASE}primary_secondary_groups:\n  - name: db\n    primary: {{ address: 198.18.1.20, port: 5432, weight: 100 }}\n    secondary: {{ address: 198.18.1.21, port: 5432 }}\n"
        ));
        assert_eq!(
            errors,
            [
                "primary_secondary_groups[0].primary.weight: weights do not apply to primary/secondary groups"
            ]
        );
    }

    #[test]
    fn server_group_default_means_the_default_group() {
        let c = read_ok(&format!(
            "{BASE}listeners: [{{ name: a, protocol: tcp, address: 198.18.0.1, port: 80, backend_port: 80, server_group: default }}]\n"
        ));
        assert_eq!(c.listeners[0].server_group, None);
    }

    #[test]
    fn health_check_sections_are_read() {
        let c = read_ok(&format!(
            "{BASE}listeners:\n  - name: a\n    protocol: udp\n    address: 198.18.0.1\n    port: 53\n    health_check:\n      type: udp\n      interval: 1\n      port: 5353\n      udp: {{ request: ping, expect: pong }}\n      flap_damping: {{ max_flaps: 4, window: 60, hold: 120 }}\n"
        ));
        let hc = &c.listeners[0].health_check;
        assert_eq!(hc.kind, Some(HealthCheckKind::Udp));
        assert_eq!(hc.interval, 1);
        assert_eq!(hc.timeout, DEFAULT_CHECK_TIMEOUT);
        assert_eq!(hc.port, Some(5353));
        assert_eq!(hc.udp_settings().expect.as_deref(), Some("pong"));
        assert_eq!(
            hc.flap_damping,
            Some(FlapDamping {
                max_flaps: 4,
                window: 60,
                hold: 120
            })
        );
    }

    #[test]
    fn http_codes_are_named_classes() {
        let errors = read_errors(&format!(
            "{BASE}listeners:\n  - name: a\n    protocol: tcp\n    address: 198.18.0.1\n    port: 80\n    health_check: {{ type: http, http: {{ method: post, codes: [http_2xx, 200] }} }}\n"
        ));
        assert_eq!(
            errors,
            [
                "listeners[0].health_check.http.method: unknown HTTP method `post`; expected one of get, head",
                "listeners[0].health_check.http.codes[1]: expected a status class (http_2xx | http_3xx | http_4xx | http_5xx), found the number 200",
            ]
        );
    }

    #[test]
    fn flap_damping_needs_all_three_numbers() {
        let errors = read_errors(&format!(
            "{BASE}listeners:\n  - name: a\n    protocol: tcp\n    address: 198.18.0.1\n    port: 80\n    health_check: {{ flap_damping: {{ max_flaps: 0, window: 60 }} }}\n"
        ));
        assert_eq!(
            errors,
            [
                "listeners[0].health_check.flap_damping.max_flaps: 0 is not in 1..=100",
                "listeners[0].health_check.flap_damping.hold: required field is missing",
            ]
        );
    }

    #[test]
    fn non_string_keys_are_reported() {
        let errors = read_errors(&format!("{BASE}80: web\n"));
        assert_eq!(errors, ["field names are strings, found the number 80"]);
    }
}
