//! BIRD's configuration, written from the `bgp` section and the VIPs to announce.
//!
//! The VIPs are routes of static protocols that only the BGP sessions export: IPv4 VIPs
//! as /32s in `lb_vips`, IPv6 VIPs as /128s in `lb_vips6`. No kernel protocol, so BIRD
//! never touches this host's routing table, and the blackhole next hop is never used (the
//! XDP program answers for the VIPs). Each session has one channel, of its neighbor's
//! family, and announces that family's VIPs with this host as the next hop: a session
//! with an IPv4 neighbor carries no IPv6 routes (that would need an IPv6 next hop on an
//! IPv4 session), and the other way round.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use crate::config::{Bgp, BgpNeighbor};

/// Name of the static protocol that holds the announced IPv4 VIPs.
pub const VIPS_PROTOCOL: &str = "lb_vips";
/// Name of the static protocol that holds the announced IPv6 VIPs; there is one only when
/// a neighbor is IPv6.
pub const VIPS6_PROTOCOL: &str = "lb_vips6";

/// BFD timers: a peer that misses three 100 ms packets is down after 300 ms, the
/// sub-second failover the issue asks for, at 10 packets a second per session.
pub const BFD_INTERVAL_MS: u32 = 100;
pub const BFD_MULTIPLIER: u32 = 3;

/// Session timers shorter than BIRD's defaults, which are made for routers that keep
/// their sessions for months: a restarted BIRD (or router) would otherwise wait 5 s
/// before it connects (`connect delay time`), 120 s between attempts (`connect retry
/// time`), and 60 s after a session error (`error wait time`) before announcing again.
const CONNECT_DELAY_S: u32 = 1;
const CONNECT_RETRY_S: u32 = 5;
const ERROR_WAIT_S: (u32, u32) = (5, 60);

/// The BIRD protocol name of the session with `neighbor`: BIRD names may hold letters,
/// digits and `_` only, so the dots and colons become underscores (`bgp_198_18_2_1`,
/// `bgp_2001_db8__1`). An address's text has no `_`, so two neighbors never share a name;
/// an IPv6 one has eight groups or a `::`, so it never looks like an IPv4 one.
pub fn session_name(neighbor: IpAddr) -> String {
    let text: String = neighbor
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("bgp_{text}")
}

/// Whether BIRD runs the IPv6 static protocol for `bgp`: only a session with an IPv6
/// neighbor carries IPv6 routes.
pub fn has_ipv6_sessions(bgp: &Bgp) -> bool {
    bgp.neighbors.iter().any(|n| n.address.is_ipv6())
}

/// The whole of `bird.conf` for `bgp` announcing `vips`.
pub fn render(instance: &str, bgp: &Bgp, vips: &BTreeSet<IpAddr>) -> String {
    let mut out = String::new();
    line(
        &mut out,
        &format!(
            "# Written by `lb-ctl daemon` for instance {instance} on every change; edits are lost."
        ),
    );
    line(&mut out, &format!("router id {};", bgp.router_id));
    // Session states with their date and time as one word, for `lb-ctl status` to read.
    line(&mut out, "timeformat protocol \"%F_%T\";");
    line(
        &mut out,
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
    );
    line(&mut out, "");
    line(&mut out, "protocol device {");
    line(&mut out, "}");
    line(&mut out, "");
    static_vips(&mut out, Family::Ipv4, vips);
    // Without an IPv6 session the IPv6 VIPs have nowhere to go (the config refuses them
    // then); an IPv4-only host's config stays as it was before IPv6 sessions existed.
    if has_ipv6_sessions(bgp) {
        line(&mut out, "");
        static_vips(&mut out, Family::Ipv6, vips);
    }
    if bgp.neighbors.iter().any(|n| n.bfd) {
        line(&mut out, "");
        line(&mut out, "protocol bfd {");
        line(&mut out, "  interface \"*\" {");
        line(
            &mut out,
            &format!("    min rx interval {BFD_INTERVAL_MS} ms;"),
        );
        line(
            &mut out,
            &format!("    min tx interval {BFD_INTERVAL_MS} ms;"),
        );
        line(&mut out, &format!("    multiplier {BFD_MULTIPLIER};"));
        line(&mut out, "  };");
        line(&mut out, "}");
    }
    for neighbor in &bgp.neighbors {
        line(&mut out, "");
        session(&mut out, bgp, neighbor);
    }
    out
}

/// An address family of BIRD's: its channel, and the static protocol of its VIPs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    fn channel(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Family::Ipv4 => VIPS_PROTOCOL,
            Family::Ipv6 => VIPS6_PROTOCOL,
        }
    }

    /// The prefix length of one address.
    fn host_prefix(self) -> u8 {
        match self {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        }
    }
}

/// The static protocol announcing the VIPs of `family`, each as a blackholed host route.
fn static_vips(out: &mut String, family: Family, vips: &BTreeSet<IpAddr>) {
    line(out, &format!("protocol static {} {{", family.protocol()));
    line(out, &format!("  {};", family.channel()));
    for vip in vips.iter().filter(|v| Family::of(**v) == family) {
        line(
            out,
            &format!("  route {vip}/{} blackhole;", family.host_prefix()),
        );
    }
    line(out, "}");
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

fn session(out: &mut String, bgp: &Bgp, n: &BgpNeighbor) {
    let _ = writeln!(out, "protocol bgp {} {{", session_name(n.address));
    let _ = writeln!(out, "  local as {};", bgp.local_as);
    let _ = writeln!(
        out,
        "  neighbor {} port {} as {};",
        n.address, n.port, n.remote_as
    );
    let _ = writeln!(out, "  hold time {};", bgp.hold_time);
    if bgp.hold_time > 0 {
        // BIRD's own default, written out so that `startup hold time` cannot exceed it.
        let _ = writeln!(out, "  keepalive time {};", (bgp.hold_time / 3).max(1));
    }
    let _ = writeln!(out, "  connect delay time {CONNECT_DELAY_S};");
    let _ = writeln!(out, "  connect retry time {CONNECT_RETRY_S};");
    let _ = writeln!(
        out,
        "  error wait time {}, {};",
        ERROR_WAIT_S.0, ERROR_WAIT_S.1
    );
    if let Some(password) = &n.password {
        // Validation keeps `"` and `\` out of it, so it needs no escaping.
        let _ = writeln!(out, "  password \"{password}\";");
    }
    if n.bfd {
        let _ = writeln!(out, "  bfd on;");
    }
    let family = Family::of(n.address);
    let _ = writeln!(out, "  {} {{", family.channel());
    let _ = writeln!(out, "    import none;");
    let _ = writeln!(out, "    export where proto = \"{}\";", family.protocol());
    let _ = writeln!(out, "    next hop self;");
    let _ = writeln!(out, "  }};");
    let _ = writeln!(out, "}}");
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::config::{Bgp, BgpNeighbor};

    fn neighbor(address: impl Into<IpAddr>, remote_as: u32) -> BgpNeighbor {
        BgpNeighbor::new(address, remote_as)
    }

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn the_issue_example_with_two_vips() {
        let mut with_bfd = neighbor(Ipv4Addr::new(198, 18, 2, 1), 65000);
        with_bfd.bfd = true;
        let mut bgp = Bgp::new(Ipv4Addr::new(198, 18, 2, 11), 65001, vec![with_bfd]);
        bgp.hold_time = 3;
        let vips = [
            Ipv4Addr::new(198, 18, 0, 101),
            Ipv4Addr::new(198, 18, 0, 100),
        ]
        .into_iter()
        .map(IpAddr::from)
        .collect();
        assert_eq!(
            render("demo", &bgp, &vips),
            r#"# Written by `lb-ctl daemon` for instance demo on every change; edits are lost.
router id 198.18.2.11;
timeformat protocol "%F_%T";
log stderr { info, remote, warning, error, auth, fatal, bug };

protocol device {
}

protocol static lb_vips {
  ipv4;
  route 198.18.0.100/32 blackhole;
  route 198.18.0.101/32 blackhole;
}

protocol bfd {
  interface "*" {
    min rx interval 100 ms;
    min tx interval 100 ms;
    multiplier 3;
  };
}

protocol bgp bgp_198_18_2_1 {
  local as 65001;
  neighbor 198.18.2.1 port 179 as 65000;
  hold time 3;
  keepalive time 1;
  connect delay time 1;
  connect retry time 5;
  error wait time 5, 60;
  bfd on;
  ipv4 {
    import none;
    export where proto = "lb_vips";
    next hop self;
  };
}
"#
        );
    }

    #[test]
    fn nothing_to_announce_two_neighbors_without_bfd() {
        let mut second = neighbor(Ipv4Addr::new(198, 18, 2, 2), 4_200_000_000);
        second.port = 1179;
        second.password = Some("s3cret word".to_owned());
        let mut bgp = Bgp::new(
            Ipv4Addr::new(198, 18, 2, 11),
            65001,
            vec![neighbor(Ipv4Addr::new(198, 18, 2, 1), 65000), second],
        );
        bgp.hold_time = 0;
        let text = render("demo", &bgp, &BTreeSet::new());
        assert!(
            text.contains("protocol static lb_vips {\n  ipv4;\n}\n"),
            "{text}"
        );
        assert!(!text.contains("bfd"), "{text}");
        assert!(!text.contains("keepalive"), "{text}");
        assert!(text.contains("  hold time 0;\n"), "{text}");
        assert!(
            text.contains(
                "protocol bgp bgp_198_18_2_2 {\n  local as 65001;\n  neighbor 198.18.2.2 port \
                 1179 as 4200000000;\n"
            ),
            "{text}"
        );
        assert!(text.contains("  password \"s3cret word\";\n"), "{text}");
        assert_eq!(text.matches("protocol bgp ").count(), 2);
        // Nothing reaches the kernel's routing table.
        assert!(!text.contains("protocol kernel"), "{text}");
    }

    /// A dual-stack host: one session per family with the same router, each exporting
    /// its family's static protocol only; BFD asked for on the IPv6 session.
    #[test]
    fn an_ipv6_session_carries_the_ipv6_vips_only() {
        let mut six = neighbor(v6("2001:db8:2::1"), 65000);
        six.bfd = true;
        let mut bgp = Bgp::new(
            Ipv4Addr::new(198, 18, 2, 11),
            65001,
            vec![neighbor(Ipv4Addr::new(198, 18, 2, 1), 65000), six],
        );
        bgp.hold_time = 3;
        let vips: BTreeSet<IpAddr> = [
            IpAddr::from(v6("2001:db8:19::100")),
            IpAddr::from(Ipv4Addr::new(198, 19, 0, 100)),
            IpAddr::from(v6("2001:db8:19::1:100")),
        ]
        .into_iter()
        .collect();
        let text = render("demo", &bgp, &vips);
        assert!(
            text.contains(
                "protocol static lb_vips {\n  ipv4;\n  route 198.19.0.100/32 blackhole;\n}\n\n\
                 protocol static lb_vips6 {\n  ipv6;\n  route 2001:db8:19::100/128 \
                 blackhole;\n  route 2001:db8:19::1:100/128 blackhole;\n}\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                r#"protocol bgp bgp_198_18_2_1 {
  local as 65001;
  neighbor 198.18.2.1 port 179 as 65000;
  hold time 3;
  keepalive time 1;
  connect delay time 1;
  connect retry time 5;
  error wait time 5, 60;
  ipv4 {
    import none;
    export where proto = "lb_vips";
    next hop self;
  };
}

protocol bgp bgp_2001_db8_2__1 {
  local as 65001;
  neighbor 2001:db8:2::1 port 179 as 65000;
  hold time 3;
  keepalive time 1;
  connect delay time 1;
  connect retry time 5;
  error wait time 5, 60;
  bfd on;
  ipv6 {
    import none;
    export where proto = "lb_vips6";
    next hop self;
  };
}
"#
            ),
            "{text}"
        );
        // One BFD protocol serves the sessions of both families.
        assert_eq!(text.matches("protocol bfd").count(), 1, "{text}");
    }

    /// An IPv4-only host's config has no IPv6 static protocol, as before IPv6 sessions
    /// existed; an IPv6-only host keeps an empty IPv4 one.
    #[test]
    fn the_ipv6_static_protocol_only_with_an_ipv6_session() {
        let vips: BTreeSet<IpAddr> = [IpAddr::from(Ipv4Addr::new(198, 19, 0, 100))].into();
        let four = Bgp::new(
            Ipv4Addr::new(198, 18, 2, 11),
            65001,
            vec![neighbor(Ipv4Addr::new(198, 18, 2, 1), 65000)],
        );
        let text = render("demo", &four, &vips);
        assert!(!text.contains("lb_vips6"), "{text}");
        assert!(!text.contains("ipv6"), "{text}");

        let vips: BTreeSet<IpAddr> = [IpAddr::from(v6("2001:db8:19::100"))].into();
        let six = Bgp::new(
            Ipv4Addr::new(198, 18, 2, 11),
            65001,
            vec![neighbor(v6("2001:db8:2::1"), 65000)],
        );
        let text = render("demo", &six, &vips);
        assert!(
            text.contains("protocol static lb_vips {\n  ipv4;\n}\n"),
            "{text}"
        );
        assert!(
            text.contains("route 2001:db8:19::100/128 blackhole;"),
            "{text}"
        );
        assert!(!text.contains("  ipv4 {"), "{text}");
    }

    /// BIRD itself reads what `render` writes (`bird -p`), when it is installed: IPv4 and
    /// IPv6 sessions, with and without BFD, password and VIPs.
    #[test]
    fn bird_parses_the_rendered_config() {
        let Ok(programs) = crate::bgp::Programs::find() else {
            eprintln!("SKIP: bird_parses_the_rendered_config: bird2 is not installed");
            return;
        };
        let mut first = neighbor(Ipv4Addr::new(198, 18, 2, 1), 65000);
        first.bfd = true;
        first.password = Some("s3cret word".to_owned());
        let mut second = neighbor(Ipv4Addr::new(198, 18, 2, 2), 65001);
        second.port = 1179;
        let mut third = neighbor(v6("2001:db8:2::1"), 65000);
        third.bfd = true;
        third.password = Some("s3cret word".to_owned());
        // The longest session name an address gives.
        let fourth = neighbor(v6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), 65002);
        let dual = Bgp::new(
            Ipv4Addr::new(198, 18, 2, 11),
            65001,
            vec![first.clone(), second, third.clone(), fourth],
        );
        let ipv6_only = Bgp::new(Ipv4Addr::new(198, 18, 2, 11), 65001, vec![third]);
        let ipv4_only = Bgp::new(Ipv4Addr::new(198, 18, 2, 11), 65001, vec![first]);
        let vips: Vec<IpAddr> = vec![
            Ipv4Addr::new(198, 18, 0, 100).into(),
            v6("2001:db8:19::100").into(),
        ];
        let cases = [
            (&dual, 0, vec![]),
            (&dual, 3, vips.clone()),
            (&ipv6_only, 3, vips[1..].to_vec()),
            (&ipv6_only, 9, vec![]),
            (&ipv4_only, 3, vips[..1].to_vec()),
        ];
        for (i, (bgp, hold_time, vips)) in cases.into_iter().enumerate() {
            let mut bgp = bgp.clone();
            bgp.hold_time = hold_time;
            let text = render("demo", &bgp, &vips.into_iter().collect());
            let path =
                std::env::temp_dir().join(format!("lb-ctl-render-{}-{i}.conf", std::process::id()));
            std::fs::write(&path, &text).unwrap();
            let out = std::process::Command::new(&programs.bird)
                .arg("-p")
                .arg("-c")
                .arg(&path)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&path);
            assert!(
                out.status.success(),
                "bird -p refused:\n{}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn session_names_are_bird_identifiers() {
        let name = |text: &str| session_name(text.parse().unwrap());
        assert_eq!(name("198.18.2.1"), "bgp_198_18_2_1");
        assert_eq!(name("2001:db8:2::1"), "bgp_2001_db8_2__1");
        assert_eq!(name("2001:db8::2:1"), "bgp_2001_db8__2_1");
        assert_eq!(name("2001:db8:1:2:3:4:5:6"), "bgp_2001_db8_1_2_3_4_5_6");
        let longest = name("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
        for n in [longest.as_str(), &name("2001:db8::1"), &name("198.18.2.1")] {
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{n}"
            );
        }
        // BIRD's symbols are at most 64 bytes.
        assert!(longest.len() <= 64, "{longest}");
    }
}
