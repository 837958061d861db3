//! The rules a runtime change is checked against, and how it applies to a config.

use std::net::{IpAddr, SocketAddr};

use lb_common::Scheduler;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{
    self, Config, DEFAULT_GROUP_NAME, DefaultServer, Endpoint, IpNet, Member,
    PrimarySecondaryGroup, Protocol, VServerGroup,
};

/// One runtime change, as the API receives it and the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    ServerAdd {
        group: String,
        address: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u8>,
    },
    ServerSet {
        group: String,
        address: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        weight: u8,
    },
    ServerRemove {
        group: String,
        address: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// Cut its flows at once even when the listener has connection drain on.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        now: bool,
    },
    GroupCreateVserver {
        name: String,
    },
    GroupCreatePrimarySecondary {
        name: String,
        primary: Endpoint,
        secondary: Endpoint,
        #[serde(default)]
        probe_secondary: bool,
    },
    GroupDelete {
        name: String,
    },
    ListenerAdd {
        name: String,
        protocol: Protocol,
        address: IpAddr,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler: Option<Scheduler>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        settings: Vec<ListenerSetting>,
    },
    ListenerSet {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler: Option<Scheduler>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        settings: Vec<ListenerSetting>,
    },
    ListenerRemove {
        name: String,
    },
    AclAdd {
        name: String,
        cidr: String,
        /// The list must exist already (`lb-ctl acl add` without `--create`). False in
        /// state files written before the flag existed, where adding always created.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        existing: bool,
    },
    AclRemove {
        name: String,
        cidr: String,
    },
}

/// A listener option of a runtime change, spelled as in the config file: `field` is the
/// path under the listener (`health_check.interval`), `value` its value there; `null`
/// removes the field (back to its default). Applied through the config reader, so a
/// runtime change accepts exactly what the file does, with the same errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSetting {
    pub field: String,
    pub value: serde_json::Value,
}

impl ListenerSetting {
    pub fn new(field: &str, value: impl Into<serde_json::Value>) -> Self {
        Self {
            field: field.to_owned(),
            value: value.into(),
        }
    }
}

/// `listener` with `settings` applied, read back through the config reader against the
/// rest of `config` (so an access list must exist, a threshold be in range, ...).
fn with_settings(
    config: &Config,
    listener: config::Listener,
    settings: &[ListenerSetting],
) -> Result<config::Listener, Refusal> {
    if settings.is_empty() {
        return Ok(listener);
    }
    let name = listener.name.clone();
    let mut probe = config.clone();
    let index = match probe.listeners.iter().position(|l| l.name == name) {
        Some(i) => {
            probe.listeners[i] = listener;
            i
        }
        None => {
            probe.listeners.push(listener);
            probe.listeners.len() - 1
        }
    };
    let mut tree = serde_yaml::to_value(&probe).map_err(|e| Refusal {
        message: format!("listener {name}: {e}"),
    })?;
    let entry = tree
        .get_mut("listeners")
        .and_then(|l| l.get_mut(index))
        .expect("the serialized config has the listener just put there");
    for setting in settings {
        let value = serde_yaml::to_value(&setting.value).map_err(|e| Refusal {
            message: format!("listener {name}: {}: {e}", setting.field),
        })?;
        set_path(entry, &setting.field, value);
    }
    match config::parse_value(&tree) {
        Ok(mut parsed) => Ok(parsed.listeners.swap_remove(index)),
        Err(errors) => refuse(format!("listener {name}: {errors}")),
    }
}

/// Sets `path` (fields joined by `.`) in a YAML mapping, making the mappings on the way;
/// a null value removes the field.
fn set_path(node: &mut serde_yaml::Value, path: &str, value: serde_yaml::Value) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    if !node.is_mapping() {
        *node = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    let serde_yaml::Value::Mapping(map) = node else {
        unreachable!("made a mapping just above")
    };
    let key = serde_yaml::Value::String(head.to_owned());
    match rest {
        None if value.is_null() => {
            map.remove(&key);
        }
        None => {
            map.insert(key, value);
        }
        Some(rest) => {
            let child = map.entry(key).or_insert(serde_yaml::Value::Null);
            set_path(child, rest, value);
        }
    }
}

/// A change that cannot be made, with the rule it breaks.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct Refusal {
    pub message: String,
}

fn refuse<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        message: message.into(),
    })
}

fn group_names(config: &Config) -> String {
    let mut names = vec![DEFAULT_GROUP_NAME.to_owned()];
    names.extend(config.vserver_groups.iter().map(|g| g.name.clone()));
    names.extend(
        config
            .primary_secondary_groups
            .iter()
            .map(|g| g.name.clone()),
    );
    names.join(", ")
}

/// `ADDR` or `ADDR:PORT` as the CLI takes it: `[2001:db8::10]:8080` for IPv6.
fn endpoint(address: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => SocketAddr::new(address, p).to_string(),
        None => address.to_string(),
    }
}

/// `ADDR:PORT` with the port left for the user to fill in.
fn with_any_port(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:PORT"),
        IpAddr::V6(a) => format!("[{a}]:PORT"),
    }
}

/// Which kind of group a name refers to.
enum GroupRef<'a> {
    Default,
    VServer(&'a mut VServerGroup),
    PrimarySecondary,
}

fn group_mut<'a>(config: &'a mut Config, name: &str) -> Result<GroupRef<'a>, Refusal> {
    if name == DEFAULT_GROUP_NAME {
        return Ok(GroupRef::Default);
    }
    let known = group_names(config);
    if let Some(i) = config.vserver_groups.iter().position(|g| g.name == name) {
        return Ok(GroupRef::VServer(&mut config.vserver_groups[i]));
    }
    if config.primary_secondary_group(name).is_some() {
        return Ok(GroupRef::PrimarySecondary);
    }
    refuse(format!("no server group `{name}`; groups: {known}"))
}

const PS_MEMBERS: &str = "a primary/secondary group has exactly two members, fixed at creation: \
     members cannot be added or removed, and roles and ports cannot be changed";

fn check_weight(weight: u8) -> Result<(), Refusal> {
    if weight > 100 {
        return refuse(format!("weight {weight} is not in 0..=100"));
    }
    Ok(())
}

impl Change {
    /// A short description for logs and conflict reports.
    pub fn describe(&self) -> String {
        match self {
            Self::ServerAdd {
                group,
                address,
                port,
                ..
            } => format!("server add {} to group {group}", endpoint(*address, *port)),
            Self::ServerSet {
                group,
                address,
                port,
                weight,
            } => format!(
                "server set {} in group {group} weight {weight}",
                endpoint(*address, *port)
            ),
            Self::ServerRemove {
                group,
                address,
                port,
                ..
            } => format!(
                "server remove {} from group {group}",
                endpoint(*address, *port)
            ),
            Self::GroupCreateVserver { name } => format!("group create {name} (vserver)"),
            Self::GroupCreatePrimarySecondary { name, .. } => {
                format!("group create {name} (primary-secondary)")
            }
            Self::GroupDelete { name } => format!("group delete {name}"),
            Self::ListenerAdd { name, .. } => format!("listener add {name}"),
            Self::ListenerSet { name, .. } => format!("listener set {name}"),
            Self::ListenerRemove { name } => format!("listener remove {name}"),
            Self::AclAdd { name, cidr, .. } => format!("acl add {name} {cidr}"),
            Self::AclRemove { name, cidr } => format!("acl remove {name} {cidr}"),
        }
    }

    /// Applies the change to `config`, or says which rule refuses it. The result still
    /// has to pass `Config::validate` and `check_transition`.
    pub fn apply(&self, config: &mut Config) -> Result<(), Refusal> {
        match self {
            Self::ServerAdd {
                group,
                address,
                port,
                weight,
            } => {
                let weight = weight.unwrap_or(config::limits::DEFAULT_WEIGHT);
                check_weight(weight)?;
                match group_mut(config, group)? {
                    GroupRef::Default => {
                        if port.is_some() {
                            return refuse(format!(
                                "servers of the default group carry no port ({}): the \
                                 listener's backend_port gives it; use {address}",
                                endpoint(*address, *port)
                            ));
                        }
                        let servers = &mut config.default_server_group.servers;
                        if servers.iter().any(|s| s.address == *address) {
                            return refuse(format!("{address} is already in the default group"));
                        }
                        servers.push(DefaultServer {
                            address: *address,
                            weight,
                        });
                    }
                    GroupRef::VServer(g) => {
                        let Some(p) = port else {
                            return refuse(format!(
                                "members of vServer group {group} each name their port: use {}",
                                with_any_port(*address)
                            ));
                        };
                        if g.servers
                            .iter()
                            .any(|m| m.address == *address && m.port == *p)
                        {
                            return refuse(format!(
                                "{} is already in group {group}",
                                endpoint(*address, *port)
                            ));
                        }
                        g.servers.push(Member {
                            address: *address,
                            port: *p,
                            weight,
                        });
                    }
                    GroupRef::PrimarySecondary => {
                        return refuse(format!("group {group}: {PS_MEMBERS}"));
                    }
                }
            }
            Self::ServerSet {
                group,
                address,
                port,
                weight,
            } => {
                check_weight(*weight)?;
                match group_mut(config, group)? {
                    GroupRef::Default => {
                        let Some(s) = config
                            .default_server_group
                            .servers
                            .iter_mut()
                            .find(|s| s.address == *address && port.is_none())
                        else {
                            return refuse(not_in_default(config, *address, *port));
                        };
                        s.weight = *weight;
                    }
                    GroupRef::VServer(g) => {
                        let listed = members_of(g);
                        let Some(m) = find_member(g, *address, *port)? else {
                            return refuse(format!(
                                "no server {} in group {group}; its servers: {listed}",
                                endpoint(*address, *port)
                            ));
                        };
                        m.weight = *weight;
                    }
                    GroupRef::PrimarySecondary => {
                        return refuse(format!(
                            "group {group}: weights do not apply to primary/secondary groups"
                        ));
                    }
                }
            }
            Self::ServerRemove {
                group,
                address,
                port,
                ..
            } => match group_mut(config, group)? {
                GroupRef::Default => {
                    let servers = &mut config.default_server_group.servers;
                    let before = servers.len();
                    servers.retain(|s| !(s.address == *address && port.is_none()));
                    if servers.len() == before {
                        return refuse(not_in_default(config, *address, *port));
                    }
                }
                GroupRef::VServer(g) => {
                    let listed = members_of(g);
                    if find_member(g, *address, *port)?.is_none() {
                        return refuse(format!(
                            "no server {} in group {group}; its servers: {listed}",
                            endpoint(*address, *port)
                        ));
                    }
                    g.servers
                        .retain(|m| !(m.address == *address && port.is_none_or(|p| m.port == p)));
                }
                GroupRef::PrimarySecondary => {
                    return refuse(format!("group {group}: {PS_MEMBERS}"));
                }
            },
            Self::GroupCreateVserver { name } => {
                check_new_group(config, name)?;
                config.vserver_groups.push(VServerGroup {
                    name: name.clone(),
                    servers: Vec::new(),
                });
            }
            Self::GroupCreatePrimarySecondary {
                name,
                primary,
                secondary,
                probe_secondary,
            } => {
                check_new_group(config, name)?;
                config.primary_secondary_groups.push(PrimarySecondaryGroup {
                    name: name.clone(),
                    primary: *primary,
                    secondary: *secondary,
                    probe_secondary: *probe_secondary,
                });
            }
            Self::GroupDelete { name } => {
                if name == DEFAULT_GROUP_NAME {
                    return refuse("the default server group cannot be deleted");
                }
                let users: Vec<&str> = config
                    .listeners
                    .iter()
                    .filter(|l| l.named_group() == Some(name.as_str()))
                    .map(|l| l.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return refuse(format!(
                        "group {name} is in use by listener(s) {}: a group in use cannot be \
                         deleted; move them first (lb-ctl listener set NAME --group G)",
                        users.join(", ")
                    ));
                }
                let before = config.vserver_groups.len() + config.primary_secondary_groups.len();
                config.vserver_groups.retain(|g| g.name != *name);
                config.primary_secondary_groups.retain(|g| g.name != *name);
                if config.vserver_groups.len() + config.primary_secondary_groups.len() == before {
                    return refuse(format!(
                        "no server group `{name}`; groups: {}",
                        group_names(config)
                    ));
                }
            }
            Self::ListenerAdd {
                name,
                protocol: proto,
                address,
                port,
                group,
                backend_port,
                scheduler: sched,
                settings,
            } => {
                if config.listener(name).is_some() {
                    return refuse(format!("listener {name} already exists"));
                }
                let mut listener = config::Listener::new(name.clone(), *proto, *address, *port);
                listener.server_group = group.clone().filter(|g| g != DEFAULT_GROUP_NAME);
                listener.backend_port = *backend_port;
                if let Some(s) = sched {
                    listener.scheduler = *s;
                }
                check_group_port(config, &listener)?;
                let listener = with_settings(config, listener, settings)?;
                config.listeners.push(listener);
            }
            Self::ListenerSet {
                name,
                group,
                backend_port,
                scheduler: sched,
                settings,
            } => {
                let Some(i) = config.listeners.iter().position(|l| l.name == *name) else {
                    return refuse(format!(
                        "no listener {name}; listeners: {}",
                        listener_names(config)
                    ));
                };
                let mut listener = config.listeners[i].clone();
                if let Some(g) = group {
                    let to_default = g == DEFAULT_GROUP_NAME;
                    let was_default = listener.named_group().is_none();
                    listener.server_group = (!to_default).then(|| g.clone());
                    match (was_default, to_default, backend_port) {
                        // The default group's port is set when a listener joins it and is
                        // fixed from then on.
                        (true, true, Some(p)) if Some(*p) != listener.backend_port => {
                            return refuse(format!(
                                "listener {name}: the default group's backend port is fixed \
                                 once its listener exists ({})",
                                listener.backend_port.unwrap_or_default()
                            ));
                        }
                        (false, true, p) => listener.backend_port = *p,
                        (_, false, Some(_)) => {
                            return refuse(format!(
                                "listener {name}: backend_port is only for the default group; \
                                 vServer and primary/secondary members name their own ports"
                            ));
                        }
                        (_, false, None) => listener.backend_port = None,
                        _ => {}
                    }
                } else if let Some(p) = backend_port {
                    if listener.named_group().is_some() {
                        return refuse(format!(
                            "listener {name}: backend_port is only for the default group"
                        ));
                    }
                    if Some(*p) != listener.backend_port {
                        return refuse(format!(
                            "listener {name}: the default group's backend port is fixed once its \
                             listener exists ({})",
                            listener.backend_port.unwrap_or_default()
                        ));
                    }
                }
                if let Some(s) = sched {
                    listener.scheduler = *s;
                }
                check_group_port(config, &listener)?;
                config.listeners[i] = with_settings(config, listener, settings)?;
            }
            Self::ListenerRemove { name } => {
                let before = config.listeners.len();
                config.listeners.retain(|l| l.name != *name);
                if config.listeners.len() == before {
                    return refuse(format!(
                        "no listener {name}; listeners: {}",
                        listener_names(config)
                    ));
                }
            }
            Self::AclAdd {
                name,
                cidr,
                existing,
            } => {
                let net = parse_cidr(cidr)?;
                if *existing && config.acl(name).is_none() {
                    return refuse(format!(
                        "no access list `{name}`; access lists: {} (`lb-ctl acl add --create \
                         {name} {cidr}` makes a new one)",
                        acl_names(config)
                    ));
                }
                match config.acls.iter_mut().find(|a| a.name == *name) {
                    Some(acl) => {
                        if acl.entries.contains(&net) {
                            return refuse(format!("{net} is already in access list {name}"));
                        }
                        acl.entries.push(net);
                    }
                    None => config.acls.push(config::Acl {
                        name: name.clone(),
                        entries: vec![net],
                    }),
                }
            }
            Self::AclRemove { name, cidr } => {
                let net = parse_cidr(cidr)?;
                let known = acl_names(config);
                let Some(acl) = config.acls.iter_mut().find(|a| a.name == *name) else {
                    return refuse(format!("no access list `{name}`; access lists: {known}"));
                };
                let before = acl.entries.len();
                acl.entries.retain(|e| *e != net);
                if acl.entries.len() == before {
                    return refuse(format!("{net} is not in access list {name}"));
                }
            }
        }
        Ok(())
    }
}

fn acl_names(config: &Config) -> String {
    if config.acls.is_empty() {
        return "none".to_owned();
    }
    config
        .acls
        .iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn listener_names(config: &Config) -> String {
    if config.listeners.is_empty() {
        return "none".to_owned();
    }
    config
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_cidr(cidr: &str) -> Result<IpNet, Refusal> {
    cidr.parse::<IpNet>().map_err(|e| Refusal {
        message: match e.hint() {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        },
    })
}

fn not_in_default(config: &Config, address: IpAddr, port: Option<u16>) -> String {
    if port.is_some() {
        return format!(
            "servers of the default group carry no port ({}); name the server as {address}",
            endpoint(address, port)
        );
    }
    let listed: Vec<String> = config
        .default_server_group
        .servers
        .iter()
        .map(|s| s.address.to_string())
        .collect();
    format!(
        "no server {address} in the default group; its servers: {}",
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        }
    )
}

fn members_of(g: &VServerGroup) -> String {
    if g.servers.is_empty() {
        return "none".to_owned();
    }
    g.servers
        .iter()
        .map(|m| m.endpoint().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The member at address[:port]; without a port the address must be unambiguous.
fn find_member(
    g: &mut VServerGroup,
    address: IpAddr,
    port: Option<u16>,
) -> Result<Option<&mut Member>, Refusal> {
    let matching: Vec<usize> = g
        .servers
        .iter()
        .enumerate()
        .filter(|(_, m)| m.address == address && port.is_none_or(|p| m.port == p))
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [i] => Ok(Some(&mut g.servers[*i])),
        _ => refuse(format!(
            "{address} is in group {} with several ports; say which: {}",
            g.name,
            with_any_port(address)
        )),
    }
}

fn check_new_group(config: &Config, name: &str) -> Result<(), Refusal> {
    if name == DEFAULT_GROUP_NAME {
        return refuse("the default server group always exists and cannot be created");
    }
    if config.vserver_group(name).is_some() || config.primary_secondary_group(name).is_some() {
        return refuse(format!("server group {name} already exists"));
    }
    Ok(())
}

fn check_group_port(config: &Config, listener: &config::Listener) -> Result<(), Refusal> {
    match (listener.named_group(), listener.backend_port) {
        (None, None) => refuse(format!(
            "listener {}: a listener on the default group must set a backend port \
             (--backend-port), which is fixed from then on",
            listener.name
        )),
        (Some(_), Some(_)) => refuse(format!(
            "listener {}: backend_port is only for the default group; vServer and \
             primary/secondary members name their own ports",
            listener.name
        )),
        (Some(g), None)
            if config.primary_secondary_group(g).is_none() && config.vserver_group(g).is_none() =>
        {
            refuse(format!(
                "no server group `{g}`; groups: {}",
                group_names(config)
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::tests::{attempt, base, ip, refused};

    #[test]
    fn server_add_rules() {
        let c = base();
        let ok = attempt(
            &c,
            Change::ServerAdd {
                group: "api".into(),
                address: ip("198.18.1.11"),
                port: Some(8080),
                weight: Some(50),
            },
        )
        .unwrap();
        assert_eq!(ok.vserver_group("api").unwrap().servers.len(), 3);
        // A server may appear with several ports, not twice with the same one.
        refused(
            &c,
            Change::ServerAdd {
                group: "api".into(),
                address: ip("198.18.1.10"),
                port: Some(8080),
                weight: None,
            },
            "already in group api",
        );
        refused(
            &c,
            Change::ServerAdd {
                group: "api".into(),
                address: ip("198.18.1.11"),
                port: None,
                weight: None,
            },
            "each name their port",
        );
        refused(
            &c,
            Change::ServerAdd {
                group: "default".into(),
                address: ip("198.18.1.11"),
                port: Some(80),
                weight: None,
            },
            "carry no port",
        );
        attempt(
            &c,
            Change::ServerAdd {
                group: "default".into(),
                address: ip("198.18.1.11"),
                port: None,
                weight: Some(0),
            },
        )
        .unwrap();
        refused(
            &c,
            Change::ServerAdd {
                group: "db".into(),
                address: ip("198.18.1.22"),
                port: Some(5432),
                weight: None,
            },
            "exactly two members",
        );
        refused(
            &c,
            Change::ServerAdd {
                group: "nope".into(),
                address: ip("198.18.1.22"),
                port: Some(1),
                weight: None,
            },
            "no server group `nope`; groups: default, api, spare, db",
        );
        refused(
            &c,
            Change::ServerAdd {
                group: "api".into(),
                address: ip("198.18.1.22"),
                port: Some(1),
                weight: Some(101),
            },
            "not in 0..=100",
        );
    }

    #[test]
    fn weights_are_editable_except_on_primary_secondary() {
        let c = base();
        let next = attempt(
            &c,
            Change::ServerSet {
                group: "default".into(),
                address: ip("198.18.1.10"),
                port: None,
                weight: 0,
            },
        )
        .unwrap();
        assert_eq!(next.default_server_group.servers[0].weight, 0);
        refused(
            &c,
            Change::ServerSet {
                group: "api".into(),
                address: ip("198.18.1.10"),
                port: None,
                weight: 5,
            },
            "several ports",
        );
        attempt(
            &c,
            Change::ServerSet {
                group: "api".into(),
                address: ip("198.18.1.10"),
                port: Some(8081),
                weight: 5,
            },
        )
        .unwrap();
        refused(
            &c,
            Change::ServerSet {
                group: "db".into(),
                address: ip("198.18.1.20"),
                port: Some(5432),
                weight: 5,
            },
            "weights do not apply",
        );
    }

    #[test]
    fn primary_secondary_members_cannot_be_removed() {
        refused(
            &base(),
            Change::ServerRemove {
                group: "db".into(),
                address: ip("198.18.1.20"),
                port: Some(5432),
                now: false,
            },
            "cannot be added or removed",
        );
    }

    #[test]
    fn group_rules() {
        let c = base();
        refused(
            &c,
            Change::GroupCreateVserver {
                name: "default".into(),
            },
            "cannot be created",
        );
        refused(
            &c,
            Change::GroupCreateVserver { name: "api".into() },
            "already exists",
        );
        refused(
            &c,
            Change::GroupDelete {
                name: "default".into(),
            },
            "cannot be deleted",
        );
        refused(
            &c,
            Change::GroupDelete { name: "api".into() },
            "in use by listener(s) api",
        );
        let next = attempt(
            &c,
            Change::GroupDelete {
                name: "spare".into(),
            },
        )
        .unwrap();
        assert!(next.vserver_group("spare").is_none());
        let next = attempt(
            &c,
            Change::GroupCreatePrimarySecondary {
                name: "cache".into(),
                primary: Endpoint::new(ip("198.18.1.30"), 11211),
                secondary: Endpoint::new(ip("198.18.1.31"), 11211),
                probe_secondary: true,
            },
        )
        .unwrap();
        assert!(
            next.primary_secondary_group("cache")
                .unwrap()
                .probe_secondary
        );
    }

    #[test]
    fn listener_rules() {
        let c = base();
        refused(
            &c,
            Change::ListenerAdd {
                name: "x".into(),
                protocol: Protocol::Tcp,
                address: ip("198.19.0.100"),
                port: 8443,
                group: None,
                backend_port: None,
                scheduler: None,
                settings: vec![],
            },
            "must set a backend port",
        );
        refused(
            &c,
            Change::ListenerAdd {
                name: "x".into(),
                protocol: Protocol::Tcp,
                address: ip("198.19.0.100"),
                port: 8443,
                group: Some("api".into()),
                backend_port: Some(1),
                scheduler: None,
                settings: vec![],
            },
            "only for the default group",
        );
        // Protocols and schedulers are typed: a wrong name does not get past the API.
        let add = |protocol: &str, scheduler: &str| {
            serde_json::from_value::<Change>(serde_json::json!({
                "change": "listener_add", "name": "x", "protocol": protocol,
                "address": "198.19.0.100", "port": 8443, "group": "api", "scheduler": scheduler,
            }))
            .map_err(|e| e.to_string())
        };
        assert!(add("http", "wrr").unwrap_err().contains("Layer 7"));
        assert!(
            add("sctp", "wrr")
                .unwrap_err()
                .contains("protocol `sctp` is not one of tcp, udp")
        );
        assert!(add("tcp", "fastest").unwrap_err().contains(
            "unknown variant `fastest`, expected one of `wrr`, `rr`, `wlc`, `sch`, `tch`"
        ));
        assert!(matches!(
            add("udp", "sch"),
            Ok(Change::ListenerAdd {
                protocol: Protocol::Udp,
                scheduler: Some(Scheduler::Sch),
                ..
            })
        ));
        refused(
            &c,
            Change::ListenerAdd {
                name: "x".into(),
                protocol: Protocol::Tcp,
                address: ip("198.19.0.100"),
                port: 80,
                group: Some("api".into()),
                backend_port: None,
                scheduler: None,
                settings: vec![],
            },
            "two listeners on 198.19.0.100:80/tcp",
        );
        // Moving a listener between groups, and the fixed default-group port.
        let moved = attempt(
            &c,
            Change::ListenerSet {
                name: "web".into(),
                group: Some("api".into()),
                backend_port: None,
                scheduler: Some(Scheduler::Sch),
                settings: vec![],
            },
        )
        .unwrap();
        let web = moved.listener("web").unwrap();
        assert_eq!((web.named_group(), web.backend_port), (Some("api"), None));
        refused(
            &c,
            Change::ListenerSet {
                name: "web".into(),
                group: None,
                backend_port: Some(9090),
                scheduler: None,
                settings: vec![],
            },
            "fixed once its listener exists",
        );
        refused(
            &c,
            Change::ListenerSet {
                name: "api".into(),
                group: Some("default".into()),
                backend_port: None,
                scheduler: None,
                settings: vec![],
            },
            "must set a backend port",
        );
    }

    #[test]
    fn acl_add_needs_an_existing_list_unless_it_may_create() {
        let mut c = base();
        for name in ["office", "partners"] {
            c.acls.push(config::Acl {
                name: name.into(),
                entries: vec!["198.18.0.0/24".parse().unwrap()],
            });
        }
        let add = |name: &str, existing: bool| Change::AclAdd {
            name: name.into(),
            cidr: "198.51.100.0/24".into(),
            existing,
        };
        let known = ["office", "partners"];
        let err = attempt(&c, add("ofice", true)).unwrap_err();
        assert!(
            err.contains("no access list `ofice`; access lists: ")
                && known.iter().all(|k| err.contains(k))
                && err.contains("acl add --create ofice 198.51.100.0/24"),
            "{err}"
        );
        let next = attempt(&c, add("office", true)).unwrap();
        assert!(
            next.acl("office")
                .unwrap()
                .entries
                .iter()
                .any(|e| e.to_string() == "198.51.100.0/24")
        );
        // `--create`, and a state file written before the flag (no `existing`): created.
        assert!(attempt(&c, add("new", false)).unwrap().acl("new").is_some());
        let old: Change = serde_json::from_value(serde_json::json!({
            "change": "acl_add", "name": "new", "cidr": "198.51.100.0/24",
        }))
        .unwrap();
        assert_eq!(old, add("new", false));
        refused(
            &c,
            Change::AclRemove {
                name: "ofice".into(),
                cidr: "198.51.100.0/24".into(),
            },
            "access lists: ",
        );
    }

    #[test]
    fn listener_settings_go_through_the_config_reader() {
        let c = base();
        let set = |settings: Vec<ListenerSetting>| Change::ListenerSet {
            name: "web".into(),
            group: None,
            backend_port: None,
            scheduler: None,
            settings,
        };
        let next = attempt(
            &c,
            set(vec![
                ListenerSetting::new("established_timeout", 60),
                ListenerSetting::new("connection_drain.enabled", true),
                ListenerSetting::new("health_check.type", "http"),
                ListenerSetting::new("health_check.http.path", "/health"),
                ListenerSetting::new(
                    "health_check.flap_damping",
                    serde_json::json!({ "max_flaps": 4, "window": 60, "hold": 300 }),
                ),
            ]),
        )
        .unwrap();
        let web = next.listener("web").unwrap();
        assert_eq!(web.established_timeout, 60);
        assert!(web.connection_drain.enabled);
        assert_eq!(web.health_check.http.as_ref().unwrap().path, "/health");
        assert_eq!(web.health_check.flap_damping.unwrap().hold, 300);
        // Null removes a setting: back to the default.
        let back = attempt(
            &next,
            set(vec![ListenerSetting::new(
                "health_check.flap_damping",
                serde_json::Value::Null,
            )]),
        )
        .unwrap();
        assert_eq!(
            back.listener("web").unwrap().health_check.flap_damping,
            None
        );
        // The reader's errors, with the field's path.
        refused(
            &c,
            set(vec![ListenerSetting::new("health_check.interval", 99)]),
            "health_check.interval",
        );
        refused(
            &c,
            set(vec![ListenerSetting::new(
                "acl",
                serde_json::json!({ "type": "allow", "name": "nosuch" }),
            )]),
            "nosuch",
        );
        refused(
            &c,
            set(vec![ListenerSetting::new(
                "health_check.http.codes",
                vec!["2xx"],
            )]),
            "health_check.http.codes",
        );
        // A new listener takes them too.
        let added = attempt(
            &c,
            Change::ListenerAdd {
                name: "x".into(),
                protocol: Protocol::Udp,
                address: ip("198.19.0.100"),
                port: 5353,
                group: Some("api".into()),
                backend_port: None,
                scheduler: None,
                settings: vec![ListenerSetting::new("udp_timeout", 120)],
            },
        )
        .unwrap();
        assert_eq!(added.listener("x").unwrap().udp_timeout, 120);
    }

    /// Runtime changes take IPv6 where the file does, under the same rules: the family
    /// of a group's listeners, and the gate while the data plane is IPv4 only.
    #[test]
    fn ipv6_changes_follow_the_config_rules() {
        let c = base();
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        refused(
            &c,
            Change::ServerAdd {
                group: "api".into(),
                address: v6("2001:db8::10"),
                port: Some(8080),
                weight: None,
            },
            "2001:db8::10 is IPv6, but listener `api` using its group is IPv4",
        );
        let spare = attempt(
            &c,
            Change::ServerAdd {
                group: "spare".into(),
                address: v6("2001:db8::10"),
                port: Some(8080),
                weight: None,
            },
        )
        .unwrap();
        refused(
            &spare,
            Change::ServerAdd {
                group: "spare".into(),
                address: v6("2001:db8:0::10"),
                port: Some(8080),
                weight: None,
            },
            "[2001:db8::10]:8080 is already in group spare",
        );
        refused(
            &spare,
            Change::ServerAdd {
                group: "spare".into(),
                address: v6("2001:db8::11"),
                port: None,
                weight: None,
            },
            "each name their port: use [2001:db8::11]:PORT",
        );
        refused(
            &c,
            Change::ServerAdd {
                group: "default".into(),
                address: v6("2001:db8::10"),
                port: Some(80),
                weight: None,
            },
            "carry no port ([2001:db8::10]:80)",
        );
        let with_web6 = attempt(
            &spare,
            Change::ListenerAdd {
                name: "web6".into(),
                protocol: Protocol::Tcp,
                address: v6("2001:db8::100"),
                port: 80,
                group: Some("spare".into()),
                backend_port: None,
                scheduler: None,
                settings: vec![],
            },
        )
        .expect("an IPv6 listener on a group of IPv6 servers");
        assert_eq!(
            with_web6.listener("web6").unwrap().address,
            v6("2001:db8::100")
        );
        let mut with_acl = c.clone();
        with_acl.acls.push(config::Acl {
            name: "office".into(),
            entries: vec!["198.18.0.0/24".parse().unwrap()],
        });
        let next = attempt(
            &with_acl,
            Change::AclAdd {
                name: "office".into(),
                cidr: "2001:db8::/32".into(),
                existing: true,
            },
        )
        .unwrap();
        assert_eq!(
            next.acl("office").unwrap().entries[1].to_string(),
            "2001:db8::/32"
        );
        refused(
            &with_acl,
            Change::AclAdd {
                name: "office".into(),
                cidr: "2001:db8::1/32".into(),
                existing: true,
            },
            "2001:db8::1/32 has host bits set (did you mean `2001:db8::/32`?)",
        );
    }
}
