//! The router side of BGP tests: a BIRD 2 of the test's own in the router's namespace,
//! peering with the LB hosts and installing what it learns into the router's kernel
//! routing table, ECMP over equal routes; and what its operator looks at (`ip route`).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Netns, VIP, VIP6, client::TempDir, privilege::in_ci};

/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The LB hosts' AS: one for all of them, so their routes are equal and the router
/// spreads the VIP over them.
pub const LB_AS: u32 = 65001;

/// The router's BIRD, with its config and socket in a scratch folder; stopped on drop.
pub struct Router {
    _dir: TempDir,
    socket: PathBuf,
    _bird: ChildGuard,
}

impl Router {
    /// A router `router_id` in `ns` peering with the LB hosts at `neighbors` (sessions
    /// `lb1`, `lb2`, …), with BFD on every session when `bfd`. A session carries the
    /// routes of its neighbor's family, as the LB's do; with an IPv6 neighbor the router
    /// installs IPv6 routes too.
    pub fn start<A: Into<IpAddr> + Copy>(
        ns: &Netns,
        router_id: Ipv4Addr,
        bfd: bool,
        neighbors: &[A],
    ) -> Router {
        let neighbors: Vec<IpAddr> = neighbors.iter().map(|&n| n.into()).collect();
        let dir = TempDir::new("bgp-router");
        let config = dir.path().join("bird.conf");
        let socket = dir.path().join("bird.ctl");
        let (bfd_protocol, bfd_on) = if bfd {
            (
                "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 \
                 ms; multiplier 3; }; }\n",
                "bfd on; ",
            )
        } else {
            ("", "")
        };
        // As docs/operations.md's router example: ECMP over the LB hosts, short timers so
        // that a restarted LB is back in seconds.
        let mut text = format!(
            "router id {router_id};\n\
             protocol device {{}}\n\
             {bfd_protocol}\
             protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}\n"
        );
        if neighbors.iter().any(IpAddr::is_ipv6) {
            text.push_str(
                "protocol kernel { merge paths on; ipv6 { import none; export all; }; }\n",
            );
        }
        for (i, neighbor) in neighbors.iter().enumerate() {
            let channel = if neighbor.is_ipv6() { "ipv6" } else { "ipv4" };
            text.push_str(&format!(
                "protocol bgp lb{} {{ local as {ROUTER_AS}; neighbor {neighbor} as {LB_AS}; \
                 hold time 3; connect retry time 1; error wait time 1, 5; {bfd_on}\
                 {channel} {{ import all; export none; }}; }}\n",
                i + 1
            ));
        }
        std::fs::write(&config, text).unwrap();
        let bird = ns.spawn([
            "bird".as_ref(),
            "-f".as_ref(),
            "-c".as_ref(),
            config.as_os_str(),
            "-s".as_ref(),
            socket.as_os_str(),
        ]);
        let router = Router {
            _dir: dir,
            socket,
            _bird: bird,
        };
        wait_until("the router's BIRD answers", Duration::from_secs(10), || {
            router.birdc(&["show", "status"]).contains("Daemon is up")
        });
        router
    }

    pub fn birdc(&self, words: &[&str]) -> String {
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(words)
            .output()
            .unwrap_or_else(|e| panic!("running birdc: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The router's side of the session with the first neighbor as `show protocols` puts
    /// it (`Established`, …).
    pub fn session(&self) -> String {
        self.birdc(&["show", "protocols", "lb1"])
            .lines()
            .find(|l| l.starts_with("lb1"))
            .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// Whether the router's BFD session with `neighbor` is up.
    pub fn bfd_up(&self, neighbor: impl Into<IpAddr>) -> bool {
        let neighbor = neighbor.into().to_string();
        self.birdc(&["show", "bfd", "sessions"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&neighbor) && l.contains(" Up "))
    }
}

/// The router's kernel route to the VIP learnt over BGP, as `ip route` prints it; empty
/// when there is none.
pub fn vip_route(router: &Netns) -> String {
    router
        .ip(["route", "show", &format!("{VIP}/32"), "proto", "bird"])
        .trim()
        .to_owned()
}

/// The router's kernel route to the IPv6 VIP ([`VIP6`]) learnt over BGP, as `ip -6 route`
/// prints it; empty when there is none.
pub fn vip6_route(router: &Netns) -> String {
    router
        .ip([
            "-6",
            "route",
            "show",
            &format!("{VIP6}/128"),
            "proto",
            "bird",
        ])
        .trim()
        .to_owned()
}

/// The next hops of a route as `ip route` prints it: one `via`, or one per `nexthop via`
/// of a multipath route; none when there is no route.
pub fn next_hops(route: &str) -> Vec<Ipv4Addr> {
    let words: Vec<&str> = route.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after `limit`. Returns
/// how long it took.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {} s",
            limit.as_secs_f64()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// BIRD present, as the project's setup installs it; a test without it skips (fails in
/// CI).
pub fn require_bird(tag: &str) -> bool {
    let present = ["bird", "birdc"].iter().all(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok()
    });
    if !present {
        assert!(
            !in_ci(),
            "{tag}: bird2 is not installed (`cargo xtask setup`), and skipping is not allowed \
             in CI"
        );
        eprintln!("SKIP: {tag}: bird2 is not installed (`cargo xtask setup` installs it)");
    }
    present
}

#[cfg(test)]
mod tests {
    use super::next_hops;

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        assert_eq!(
            next_hops("198.19.0.100 via 198.18.0.1 dev eth0 metric 32"),
            ["198.18.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let multipath = "198.19.0.100 proto bird metric 32 \n\tnexthop via 198.18.1.2 dev \
                         r-fabric weight 1 \n\tnexthop via 198.18.1.4 dev r-fabric weight 1";
        assert_eq!(
            next_hops(multipath),
            [
                "198.18.1.2".parse::<std::net::Ipv4Addr>().unwrap(),
                "198.18.1.4".parse().unwrap()
            ]
        );
        assert!(next_hops("").is_empty());
    }
}
