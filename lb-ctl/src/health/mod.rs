//! The health checker: probes every (listener, backend) pair as its listener's health
//! check says, decides up and down through thresholds and flap damping, and reports each
//! change of state once.
//!
//! Semantics (CLB-like; docs/config.md, `health_check`):
//! - health is per `BackendKey`, i.e. per listener and backend;
//! - a backend starts healthy: it takes traffic from the start and the checker takes it
//!   out after `unhealthy_threshold` consecutive failed probes; `healthy_threshold`
//!   consecutive successes bring it back;
//! - `type: none`, and a primary/secondary group's secondary unless the group says
//!   `probe_secondary`, are never probed and always healthy;
//! - UDP: with `expect`, only a reply containing it passes; without, any reply or no ICMP
//!   error within the timeout passes, and an ICMP port unreachable fails ("refused");
//! - flap damping holds a backend down for `hold` seconds after more than `max_flaps`
//!   changes within `window` seconds; probes go on during the hold;
//! - slow start ramps the weight of a recovered or added backend (`slow_start_weight`).
//!
//! The controller feeds `Transition`s (or `Checker::unhealthy`) into `Runtime.unhealthy`
//! and `Checker::ramping` into `Runtime.effective_weight`.
//!
//! Layout: `machine` (thresholds and flap damping, pure), `slow_start` (pure), `probe`
//! (the network probes), `histogram`, `checker` (the scheduler).
//!
//! `Checker`, its options, `Target` and `Histogram` are public for the prober capacity
//! benchmark of the tests crate, which drives the controller's own checker (and so is
//! `Transition`, which `Checker::new` hands out).

mod checker;
mod histogram;
mod machine;
mod probe;
mod slow_start;

use std::{
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

pub(crate) use checker::{BackendHealth, HealthState, Snapshot};
pub use checker::{Checker, CheckerOptions, DEFAULT_MAX_IN_FLIGHT};
pub use histogram::Histogram;

use crate::{
    config::{Config, HealthCheck, HealthCheckKind},
    plan::{BackendKey, Frontend},
};

/// One backend to watch, as the config describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: BackendKey,
    /// Name of the listener, for logs and status.
    pub listener: String,
    /// The backend's address and port (the key's; the check's `port` may override the
    /// port probed).
    pub address: IpAddr,
    pub port: u16,
    pub check: HealthCheck,
    /// The check to run: `check`'s type, else the listener protocol's.
    pub kind: HealthCheckKind,
    /// False for a primary/secondary group's secondary unless `probe_secondary`: such a
    /// backend is never probed and always healthy.
    pub probe: bool,
    /// Configured weight, the top of the slow-start ramp.
    pub weight: u32,
    /// The listener's `slow_start` seconds; 0 = off.
    pub slow_start: u32,
    /// `forwarding: dsr`: the probe goes to the VIP through the backend's tunnel, as
    /// client packets do; `None`: straight to the backend's address.
    pub tunnel: Option<ProbeTunnel>,
}

/// How a DSR probe reaches its backend: addressed to the listener's VIP, its socket
/// marked so that `lb_probe_tunnel` encapsulates it for this backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTunnel {
    /// The listener's VIP, of its backends' family.
    pub vip: IpAddr,
    /// `lb_common::probe_mark` of the backend's id.
    pub mark: u32,
}

impl Target {
    /// The backend's address and port, as probes (outside DSR) and logs use them.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// Whether `other` is the same probe of the same backend, so health state carries
    /// over from one to the other. Weight, slow start and the listener's name may differ.
    fn same_check(&self, other: &Self) -> bool {
        self.key == other.key
            && self.address == other.address
            && self.port == other.port
            && self.check == other.check
            && self.kind == other.kind
            && self.probe == other.probe
            && self.tunnel == other.tunnel
    }
}

/// A change of a backend's health, sent once per change (never for steady state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: BackendKey,
    pub listener: String,
    pub healthy: bool,
    /// Why, as logged: `refused (3 consecutive failures)`, `ok (2 consecutive
    /// successes)`, `flap damping hold ended`, ...
    pub reason: String,
    pub at: SystemTime,
}

/// Every (listener, backend) pair of a validated config, with its listener's check.
///
/// Members of the default and vServer groups are probed; of a primary/secondary group,
/// the primary always and the secondary when the group says `probe_secondary`. Weight-0
/// (drained) backends are probed too: a drain is not a failure. With `forwarding: dsr`
/// a backend that has an id in the data plane (`backend_id`) is probed through its
/// tunnel.
pub(crate) fn targets(
    config: &Config,
    backend_id: impl Fn(&BackendKey) -> Option<u32>,
) -> Vec<Target> {
    let dsr = config.forwarding == crate::config::Forwarding::Dsr;
    let mut out = Vec::new();
    for listener in &config.listeners {
        let frontend = Frontend::of(listener);
        for m in crate::plan::members(config, listener) {
            let key = BackendKey {
                frontend,
                address: m.address,
                port: m.port,
            };
            let tunnel = if dsr {
                backend_id(&key).map(|id| ProbeTunnel {
                    vip: frontend.address,
                    mark: lb_common::probe_mark(id),
                })
            } else {
                None
            };
            out.push(Target {
                key,
                listener: listener.name.clone(),
                address: m.address,
                port: m.port,
                check: listener.health_check.clone(),
                kind: listener.health_check_kind(),
                probe: m.probed,
                weight: m.weight,
                slow_start: listener.slow_start,
                tunnel,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{
        probe::{Probe, ProbeKind},
        *,
    };
    use crate::config;

    #[test]
    fn targets_follow_groups_and_probe_secondary() {
        let cfg = config::parse(
            "
instance: t
interfaces: [eth0]
default_server_group:
  servers:
    - { address: 198.18.1.10 }
    - { address: 198.18.1.11, weight: 0 }
vserver_groups:
  - name: api
    servers:
      - { address: 198.18.1.10, port: 8080, weight: 60 }
primary_secondary_groups:
  - name: db
    primary: { address: 198.18.1.20, port: 5432 }
    secondary: { address: 198.18.1.21, port: 5433 }
  - name: db2
    primary: { address: 198.18.1.20, port: 6432 }
    secondary: { address: 198.18.1.21, port: 6433 }
    probe_secondary: true
listeners:
  - name: web
    protocol: tcp
    address: 198.19.0.100
    port: 80
    backend_port: 8080
    slow_start: 30
    health_check: { type: http, interval: 5 }
  - { name: api, protocol: tcp, address: 198.19.0.100, port: 443, server_group: api }
  - { name: db, protocol: udp, address: 198.19.0.100, port: 5432, server_group: db }
  - { name: db2, protocol: udp, address: 198.19.0.100, port: 6432, server_group: db2 }
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = targets(&cfg, |_| None);
        let summary: Vec<(&str, String, bool, u32)> = t
            .iter()
            .map(|t| {
                (
                    t.listener.as_str(),
                    format!("{}:{}", t.address, t.port),
                    t.probe,
                    t.weight,
                )
            })
            .collect();
        let expected: Vec<(&str, String, bool, u32)> = [
            ("web", "198.18.1.10:8080", true, 100),
            ("web", "198.18.1.11:8080", true, 0),
            ("api", "198.18.1.10:8080", true, 60),
            ("db", "198.18.1.20:5432", true, 100),
            ("db", "198.18.1.21:5433", false, 100),
            ("db2", "198.18.1.20:6432", true, 100),
            ("db2", "198.18.1.21:6433", true, 100),
        ]
        .into_iter()
        .map(|(l, a, p, w)| (l, a.to_owned(), p, w))
        .collect();
        assert_eq!(summary, expected);
        let kinds: Vec<(&str, HealthCheckKind)> =
            t.iter().map(|t| (t.listener.as_str(), t.kind)).collect();
        assert!(kinds.contains(&("web", HealthCheckKind::Http)), "{kinds:?}");
        assert!(kinds.contains(&("api", HealthCheckKind::Tcp)), "{kinds:?}");
        // UDP listeners without a check: probed with UDP, not with a TCP handshake their
        // backends would refuse.
        assert!(kinds.contains(&("db", HealthCheckKind::Udp)), "{kinds:?}");
        assert!(kinds.contains(&("db2", HealthCheckKind::Udp)), "{kinds:?}");
        let db = t.iter().find(|t| t.listener == "db").unwrap();
        let probe = Probe::new(db.kind, &db.check, db.address, db.port, None).unwrap();
        assert_eq!(
            probe.kind,
            ProbeKind::Udp {
                request: Vec::new().into(),
                expect: None
            }
        );
        assert_eq!(probe.target.to_string(), "198.18.1.20:5432");
        assert_eq!(t[0].slow_start, 30);
        assert_eq!(t[0].check.interval, 5);
        assert_eq!(t[0].key.frontend.port, 80);
        assert!(
            t.iter()
                .all(|t| t.key.address == t.address && t.key.port == t.port)
        );
    }
}
