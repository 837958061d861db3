//! Warnings about a valid config: settings that work but do not do what an operator
//! probably wants. `lb-ctl validate` prints them, the daemon logs them at start and on
//! reload; they never refuse a config.

use std::fmt;

use lb_common::Scheduler;

use super::{Config, Forwarding, error::index};

/// Below this many Maglev slots per server, `validate` suggests a larger table.
const MAGLEV_SLOTS_PER_SERVER: usize = 100;

/// The smallest prime of the suggested sizes with `MAGLEV_SLOTS_PER_SERVER` slots per
/// server, capped at the largest size a listener may have.
fn suggested_table_size(servers: usize) -> u32 {
    [655_373, 1_048_573, lb_common::MAGLEV_TABLE_SIZE_MAX]
        .into_iter()
        .find(|&p| p as usize >= MAGLEV_SLOTS_PER_SERVER * servers)
        .unwrap_or(lb_common::MAGLEV_TABLE_SIZE_MAX)
}

/// One warning, at the path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Config {
    /// Every warning about this (valid) config.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        // Removing one of many backends moves several times its share of a consistent-hash
        // listener's flows when the table has few slots per backend (docs/benchmarks.md,
        // section 4: 6.6x at 1,000 backends and 65537 slots).
        for (i, l) in self.listeners.iter().enumerate() {
            let servers = self.group_size(l);
            let consistent = matches!(l.scheduler, Scheduler::Sch | Scheduler::Tch);
            if consistent && (l.maglev_table_size as usize) < MAGLEV_SLOTS_PER_SERVER * servers {
                out.push(ConfigWarning {
                    path: format!("{}.maglev_table_size", index("listeners", i)),
                    message: format!(
                        "{servers} servers share {} Maglev slots: removing one moves several \
                         times its share of the flows (docs/benchmarks.md); a larger prime \
                         such as {} moves fewer (raise maglev_slots to make room)",
                        l.maglev_table_size,
                        suggested_table_size(servers)
                    ),
                });
            }
        }
        // Several LB hosts announce the VIPs; the router's ECMP moves connections between
        // them when its set of hosts changes (docs/architecture.md, "Connections that
        // move between LB hosts").
        if self.forwarding == Forwarding::Dsr && self.bgp.is_some() {
            for (i, l) in self.listeners.iter().enumerate() {
                let at = index("listeners", i);
                if l.scheduler != Scheduler::Tch {
                    out.push(ConfigWarning {
                        path: format!("{at}.scheduler"),
                        message: format!(
                            "`{}` with forwarding: dsr and bgp: a connection that moves to \
                             another LB host (one fails, is drained or comes back) is picked \
                             up by its 4-tuple and may land on another backend, which resets \
                             it; `tch` keeps it",
                            l.scheduler.name()
                        ),
                    });
                }
                if l.persistence_timeout > 0 {
                    out.push(ConfigWarning {
                        path: format!("{at}.persistence_timeout"),
                        message: "with forwarding: dsr and bgp each LB host keeps its own \
                                  affinity table: a client whose connections the router spreads \
                                  over several hosts may get several backends"
                            .to_owned(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BGP: &str = "bgp: { router_id: 198.18.2.11, local_as: 65001, neighbors: [{ address: \
                       198.18.2.1, remote_as: 65000 }] }\n";

    fn config(forwarding: &str, listeners: &str) -> String {
        format!(
            "instance: t\ninterfaces: [eth0]\nforwarding: {forwarding}\n{BGP}\
             default_server_group:\n  servers: [{{ address: 198.18.1.10 }}]\nlisteners:\n\
             {listeners}"
        )
    }

    #[test]
    fn dsr_with_bgp_warns_about_schedulers_that_lose_moved_connections() {
        let c = parse(&config(
            "dsr",
            "  - { name: a, protocol: tcp, address: 198.19.0.1, port: 80, backend_port: 80, \
             scheduler: tch }\n  - { name: b, protocol: tcp, address: 198.19.0.1, port: 81, \
             backend_port: 81, scheduler: wrr, persistence_timeout: 60 }\n",
        ))
        .unwrap();
        let warnings: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("listeners[1].scheduler: `wrr` with forwarding: dsr and bgp"),
            "{warnings:?}"
        );
        assert!(warnings[0].ends_with("`tch` keeps it"), "{warnings:?}");
        assert!(warnings[1].starts_with("listeners[1].persistence_timeout: "));
    }

    /// A `scheduler` listener over a group of `servers` members.
    fn large_group(servers: u32, scheduler: &str, extra: &str) -> String {
        let mut yaml = String::from(
            "instance: t\ninterfaces: [eth0]\nmaglev_slots: 4000000\nvserver_groups:\n  - name: big\n    servers:\n",
        );
        for i in 0..servers {
            yaml.push_str(&format!(
                "      - {{ address: 198.18.{}.{}, port: 8080 }}\n",
                1 + i / 250,
                1 + i % 250
            ));
        }
        yaml.push_str(&format!(
            "listeners:\n  - {{ name: a, protocol: tcp, address: 198.19.0.1, port: 80, \
             server_group: big, scheduler: {scheduler}{extra} }}\n"
        ));
        yaml
    }

    #[test]
    fn a_large_group_on_a_small_maglev_table_is_told_of_a_larger_one() {
        let warnings = |yaml: String| -> Vec<String> {
            parse(&yaml)
                .unwrap()
                .warnings()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            warnings(large_group(1000, "tch", "")),
            [
                "listeners[0].maglev_table_size: 1000 servers share 65537 Maglev slots: \
                 removing one moves several times its share of the flows \
                 (docs/benchmarks.md); a larger prime such as 655373 moves fewer (raise \
                 maglev_slots to make room)"
            ]
        );
        assert!(warnings(large_group(1000, "tch", ", maglev_table_size: 655373")).is_empty());
        assert!(
            warnings(large_group(1000, "wrr", "")).is_empty(),
            "not Maglev-scheduled"
        );
        assert!(
            warnings(large_group(600, "sch", "")).is_empty(),
            "over 100 slots each"
        );
        assert_eq!(
            warnings(large_group(7000, "sch", ", maglev_table_size: 655373")).len(),
            1
        );
        assert_eq!(super::suggested_table_size(7000), 1_048_573);
        assert_eq!(
            super::suggested_table_size(100_000),
            lb_common::MAGLEV_TABLE_SIZE_MAX
        );
    }

    #[test]
    fn one_host_or_nat_gets_no_warning() {
        let listeners = "  - { name: b, protocol: tcp, address: 198.19.0.1, port: 81, backend_port: 81, \
             scheduler: wrr }\n";
        assert!(
            parse(&config("nat", listeners))
                .unwrap()
                .warnings()
                .is_empty()
        );
        let no_bgp = config("dsr", listeners).replace(BGP, "");
        assert!(parse(&no_bgp).unwrap().warnings().is_empty());
    }
}
