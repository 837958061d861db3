//! Runtime changes (the API, the CLI) as an overlay on the config file.
//!
//! The effective state is the base config with the overlay's changes replayed in order.
//! A change is checked against the CLB rules before it is accepted; the overlay is kept
//! in a state file written atomically (write, fsync, rename, fsync the folder), so a
//! change survives restarts, crashes and a cold start, and a crash mid-write loses
//! nothing. On reload, a change that no longer fits the new base is reported and
//! dropped, never silently.

mod rules;
mod state_file;
mod transitions;

use crate::config::Config;

#[cfg(test)]
pub use self::state_file::load_state;
pub use self::{
    rules::{Change, ListenerSetting, Refusal},
    state_file::{
        DrainRecord, StateError, load_state_with_drains, save_state_with_drains, state_path,
    },
    transitions::check_transition,
};

/// Replays `changes` over `base`. Changes that no longer apply are returned with the
/// reason, and left out of the result.
pub fn replay(base: &Config, changes: &[Change]) -> (Config, Vec<Change>, Vec<String>) {
    let mut config = base.clone();
    let mut kept = Vec::new();
    let mut conflicts = Vec::new();
    for change in changes {
        let mut next = config.clone();
        let result = change
            .apply(&mut next)
            .map_err(|r| r.message)
            .and_then(|()| next.validate().map_err(|e| e.to_string()))
            .and_then(|()| {
                let v = check_transition(&config, &next);
                if v.is_empty() {
                    Ok(())
                } else {
                    Err(v.join("; "))
                }
            });
        match result {
            Ok(()) => {
                config = next;
                kept.push(change.clone());
            }
            Err(why) => conflicts.push(format!("{}: {why}", change.describe())),
        }
    }
    (config, kept, conflicts)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config;

    pub(super) const BASE: &str = "
instance: t
interfaces: [eth0]
default_server_group:
  servers:
    - { address: 198.18.1.10 }
vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080 }
      - { address: 198.18.1.10, port: 8081 }
  - name: spare
primary_secondary_groups:
  - name: db
    primary: { address: 198.18.1.20, port: 5432 }
    secondary: { address: 198.18.1.21, port: 5432 }
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
  - { name: api, protocol: tcp, address: 198.19.0.100, port: 443, server_group: api }
  - { name: db, protocol: udp, address: 198.19.0.100, port: 5432, server_group: db }
";

    pub(super) fn base() -> Config {
        config::parse(BASE).unwrap()
    }

    pub(super) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Applies a change the way the controller does: the change, then validation and
    /// the transition rules.
    pub(super) fn attempt(config: &Config, change: Change) -> Result<Config, String> {
        let (next, kept, conflicts) = replay(config, std::slice::from_ref(&change));
        if kept.is_empty() {
            Err(conflicts.join("; "))
        } else {
            Ok(next)
        }
    }

    pub(super) fn refused(config: &Config, change: Change, needle: &str) {
        let err = attempt(config, change).expect_err("refused");
        assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    }
    #[test]
    fn replay_reports_and_drops_changes_that_no_longer_fit() {
        let c = base();
        let changes = vec![
            Change::ServerAdd {
                group: "spare".into(),
                address: ip("198.18.1.40"),
                port: Some(80),
                weight: None,
            },
            Change::ServerAdd {
                group: "api".into(),
                address: ip("198.18.1.41"),
                port: Some(80),
                weight: None,
            },
        ];
        let mut new_base = c.clone();
        new_base.vserver_groups.retain(|g| g.name != "spare");
        let (effective, kept, conflicts) = replay(&new_base, &changes);
        assert_eq!(kept, changes[1..]);
        assert_eq!(conflicts.len(), 1);
        assert!(
            conflicts[0].starts_with("server add 198.18.1.40:80 to group spare: no server group")
        );
        assert_eq!(effective.vserver_group("api").unwrap().servers.len(), 3);
    }
}
