//! The host settings a DSR backend needs, checked when its decapsulation is attached. The
//! decapsulated packet is addressed to the VIP, so the VIP must be an address of the
//! backend, on `lo` so that the backend never claims it on the network: every LB host and
//! backend holds it, and only the LBs may answer ARP for it. (An IPv6 VIP on `lo` is not
//! announced: Linux answers neighbour solicitations only for the receiving interface's
//! own addresses, so an IPv6 VIP needs no setting of this kind; the ARP and reverse-path
//! settings are checked unless every VIP named is IPv6.)

use std::{collections::BTreeSet, fmt, net::IpAddr};

use crate::host::{self, IpConf};

/// What the checks read from the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The higher of `all` and the interface's value, as the kernel applies each of
    /// them; `None` when it could not be read.
    pub arp_ignore: Option<u32>,
    pub arp_announce: Option<u32>,
    pub rp_filter: Option<u32>,
    /// The addresses on `lo` outside 127.0.0.0/8 and `::1`.
    pub loopback_addresses: BTreeSet<IpAddr>,
}

impl HostFacts {
    /// Reads the facts of the current network namespace.
    pub fn read(iface: &str) -> Self {
        let conf = IpConf::default();
        let effective = |key| conf.effective(iface, key).ok();
        let loopback_addresses = host::interface_addresses()
            .map(|all| {
                all.into_iter()
                    .filter(|(address, iface)| iface == "lo" && !address.is_loopback())
                    .map(|(address, _)| address)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            arp_ignore: effective("arp_ignore"),
            arp_announce: effective("arp_announce"),
            rp_filter: effective("rp_filter"),
            loopback_addresses,
        }
    }
}

/// A setting that will make DSR fail or misbehave, with the command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

/// Every setting of `facts` that is wrong for a DSR backend receiving on `iface`.
/// `vips`: addresses that must be on `lo` (none given: at least one address must be).
pub fn check_host(iface: &str, facts: &HostFacts, vips: &[IpAddr]) -> Vec<Warning> {
    let mut out = Vec::new();
    if vips.is_empty() || vips.iter().any(IpAddr::is_ipv4) {
        check_ipv4(iface, facts, &mut out);
    }
    if vips.is_empty() {
        if facts.loopback_addresses.is_empty() {
            out.push(Warning {
                problem: "no address on lo besides 127.0.0.0/8 and ::1: the kernel drops every \
                          decapsulated packet, which is addressed to a VIP"
                    .to_owned(),
                fix: "ip addr add VIP/32 dev lo, for each VIP this backend serves (VIP/128 for \
                      an IPv6 one)"
                    .to_owned(),
            });
        }
    } else {
        for vip in vips {
            if !facts.loopback_addresses.contains(vip) {
                let len = if vip.is_ipv4() { 32 } else { 128 };
                out.push(Warning {
                    problem: format!(
                        "{vip} is not on lo: the kernel drops the decapsulated packets to it"
                    ),
                    fix: format!("ip addr add {vip}/{len} dev lo"),
                });
            }
        }
    }
    out
}

/// The ARP and reverse-path settings an IPv4 VIP needs.
fn check_ipv4(iface: &str, facts: &HostFacts, out: &mut Vec<Warning>) {
    let sysctl = |key: &str, value: u32| {
        format!("sysctl -w net.ipv4.conf.all.{key}={value} net.ipv4.conf.{iface}.{key}={value}")
    };
    match facts.arp_ignore {
        Some(0) => out.push(Warning {
            problem: format!(
                "arp_ignore is 0 on {iface}: this backend answers ARP for the VIP on its \
                 loopback, and a router that believes it sends the VIP's clients here \
                 instead of to the LBs"
            ),
            fix: sysctl("arp_ignore", 1),
        }),
        None => out.push(unreadable("arp_ignore", iface)),
        Some(_) => {}
    }
    match facts.arp_announce {
        Some(2..) => {}
        Some(_) => out.push(Warning {
            problem: format!(
                "arp_announce is below 2 on {iface}: ARP requests from this backend may carry \
                 the VIP as their sender, teaching neighbours that the VIP lives here"
            ),
            fix: sysctl("arp_announce", 2),
        }),
        None => out.push(unreadable("arp_announce", iface)),
    }
    match facts.rp_filter {
        Some(1) => out.push(Warning {
            problem: format!(
                "rp_filter is strict (1) on {iface}: a decapsulated packet is dropped when \
                 the route back to its client does not leave through {iface}"
            ),
            fix: sysctl("rp_filter", 2),
        }),
        None => out.push(unreadable("rp_filter", iface)),
        Some(_) => {}
    }
}

fn unreadable(key: &str, iface: &str) -> Warning {
    Warning {
        problem: format!("net.ipv4.conf.{iface}.{key} could not be read"),
        fix: format!(
            "check it by hand: sysctl net.ipv4.conf.all.{key} net.ipv4.conf.{iface}.{key}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn good() -> HostFacts {
        HostFacts {
            arp_ignore: Some(1),
            arp_announce: Some(2),
            rp_filter: Some(2),
            loopback_addresses: [
                IpAddr::from(Ipv4Addr::new(198, 19, 0, 100)),
                "2001:db8:19::100".parse().unwrap(),
            ]
            .into(),
        }
    }

    #[test]
    fn a_well_set_backend_gets_no_warning() {
        assert_eq!(check_host("eth0", &good(), &[]), []);
        assert_eq!(
            check_host("eth0", &good(), &[Ipv4Addr::new(198, 19, 0, 100).into()]),
            []
        );
        let off = HostFacts {
            rp_filter: Some(0),
            arp_ignore: Some(2),
            ..good()
        };
        assert_eq!(check_host("eth0", &off, &[]), []);
    }

    #[test]
    fn each_wrong_setting_is_named_with_its_fix() {
        let facts = HostFacts {
            arp_ignore: Some(0),
            arp_announce: Some(0),
            rp_filter: Some(1),
            loopback_addresses: BTreeSet::new(),
        };
        let warnings = check_host("eth0", &facts, &[]);
        let fixes: Vec<&str> = warnings.iter().map(|w| w.fix.as_str()).collect();
        assert_eq!(
            fixes,
            [
                "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1",
                "sysctl -w net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.eth0.arp_announce=2",
                "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2",
                "ip addr add VIP/32 dev lo, for each VIP this backend serves (VIP/128 for an \
                 IPv6 one)",
            ]
        );
        assert!(warnings[0].problem.contains("answers ARP for the VIP"));
    }

    #[test]
    fn named_vips_must_each_be_on_lo() {
        let vips = [
            Ipv4Addr::new(198, 19, 0, 100).into(),
            Ipv4Addr::new(198, 19, 0, 101).into(),
        ];
        let warnings = check_host("eth0", &good(), &vips);
        assert_eq!(
            warnings,
            [Warning {
                problem: "198.19.0.101 is not on lo: the kernel drops the decapsulated packets \
                          to it"
                    .to_owned(),
                fix: "ip addr add 198.19.0.101/32 dev lo".to_owned(),
            }]
        );
    }

    /// An IPv6 VIP is never announced from lo (neighbour discovery answers for the
    /// receiving interface's addresses only): a backend of IPv6 VIPs alone is not told
    /// about ARP or reverse-path settings, only about a VIP missing on lo.
    #[test]
    fn ipv6_vips_need_only_be_on_lo() {
        let arp_unset = HostFacts {
            arp_ignore: Some(0),
            arp_announce: Some(0),
            rp_filter: Some(1),
            ..good()
        };
        let vip6: IpAddr = "2001:db8:19::100".parse().unwrap();
        assert_eq!(check_host("eth0", &arp_unset, &[vip6]), []);
        let missing: IpAddr = "2001:db8:19::101".parse().unwrap();
        let warnings = check_host("eth0", &good(), &[vip6, missing]);
        let fixes: Vec<&str> = warnings.iter().map(|w| w.fix.as_str()).collect();
        assert_eq!(fixes, ["ip addr add 2001:db8:19::101/128 dev lo"]);
        assert_eq!(
            check_host(
                "eth0",
                &arp_unset,
                &[vip6, Ipv4Addr::new(198, 19, 0, 100).into()]
            )
            .len(),
            3,
            "an IPv4 VIP beside it: the ARP and reverse-path settings count"
        );
    }
}
