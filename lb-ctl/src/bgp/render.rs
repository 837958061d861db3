//! BIRD's configuration, written from the `bgp` section and the VIPs to announce.
//!
//! The VIPs are routes of a static protocol (`lb_vips`) that only the BGP sessions export:
//! no kernel protocol, so BIRD never touches this host's routing table, and the
//! blackhole next hop is never used (the XDP program answers for the VIPs). Every session
//! announces them with this host as the next hop.

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr};

use crate::config::{Bgp, BgpNeighbor};

/// Name of the static protocol that holds the announced VIPs.
pub const VIPS_PROTOCOL: &str = "lb_vips";

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
/// digits and `_` only, so the dots become underscores (`bgp_198_18_2_1`).
pub fn session_name(neighbor: Ipv4Addr) -> String {
    let [a, b, c, d] = neighbor.octets();
    format!("bgp_{a}_{b}_{c}_{d}")
}

/// The whole of `bird.conf` for `bgp` announcing `vips`.
pub fn render(instance: &str, bgp: &Bgp, vips: &BTreeSet<Ipv4Addr>) -> String {
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
    line(&mut out, &format!("protocol static {VIPS_PROTOCOL} {{"));
    line(&mut out, "  ipv4;");
    for vip in vips {
        line(&mut out, &format!("  route {vip}/32 blackhole;"));
    }
    line(&mut out, "}");
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
    let _ = writeln!(out, "  ipv4 {{");
    let _ = writeln!(out, "    import none;");
    let _ = writeln!(out, "    export where proto = \"{VIPS_PROTOCOL}\";");
    let _ = writeln!(out, "    next hop self;");
    let _ = writeln!(out, "  }};");
    let _ = writeln!(out, "}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bgp, BgpNeighbor};

    fn neighbor(address: Ipv4Addr, remote_as: u32) -> BgpNeighbor {
        BgpNeighbor::new(address, remote_as)
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

    /// BIRD itself reads what `render` writes (`bird -p`), when it is installed.
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
        let mut bgp = Bgp::new(Ipv4Addr::new(198, 18, 2, 11), 65001, vec![first, second]);
        for (hold_time, vips) in [(0, vec![]), (3, vec![Ipv4Addr::new(198, 18, 0, 100)])] {
            bgp.hold_time = hold_time;
            let text = render("demo", &bgp, &vips.into_iter().collect());
            let path = std::env::temp_dir().join(format!(
                "lb-ctl-render-{}-{hold_time}.conf",
                std::process::id()
            ));
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
        assert_eq!(session_name(Ipv4Addr::new(198, 18, 2, 1)), "bgp_198_18_2_1");
    }
}
