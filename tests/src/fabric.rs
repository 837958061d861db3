//! The scale-out test network: a router in front, LB hosts and backends side by side on
//! one switch, as direct server return is deployed.
//!
//! ```text
//!  client ns (<p>c)                 router ns (<p>r)                switch ns (<p>sw)
//!  eth0 198.18.0.2/24 ──veth── r-client 198.18.0.1/24
//!  default via .0.1                 r-fabric 198.18.1.1/24 ──veth── sw-r ┐
//!                                                                        br0 ─ sw-lK ──veth── LB K (<p>lK)    eth0 198.18.1.(1+K)/24
//!                                                                            ─ sw-bK ──veth── backend K (<p>bK) eth0 198.18.1.(10+K)/24, VIP on lo
//! ```
//!
//! Everything on the switch routes through the router (default via 198.18.1.1). The
//! router reaches the VIP through the LB hosts: equal-cost static routes
//! ([`Fabric::route_vip_via`]) or what BGP teaches it. An LB host is one-armed: packets
//! for the VIP come in and go out, encapsulated, on its one interface; the backends answer
//! clients through the router, never through an LB.
//!
//! [`Fabric::build6`] makes the same network with IPv6 addresses only (2001:db8::/32, the
//! digits of each IPv4 address's last octet as its interface identifier, as in
//! `topology`): client 2001:db8:18::2, router 2001:db8:18::1 and 2001:db8:18:1::1, LB host
//! K 2001:db8:18:1::(1+K), backend K 2001:db8:18:1::(10+K), the VIP [`VIP6`] on the
//! backends' `lo`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use crate::{
    Backend, Family, Netns, VIP, XdpPass, bin_path,
    topology::{IPV6_HOST_SETTINGS, VIP6, xdp_pass},
    unique_prefix, veth,
};

/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The router's address on the switch: every host's gateway there.
pub const ROUTER_FABRIC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PREFIX_LEN: u8 = 24;
/// Every host's one interface.
pub const HOST_IF: &str = "eth0";
const ROUTER_CLIENT_IF: &str = "r-client";
const ROUTER_FABRIC_IF: &str = "r-fabric";
const BRIDGE: &str = "br0";
/// Most LB hosts: 198.18.1.2 up to .9, below the backends.
pub const MAX_LBS: usize = 8;
/// Most backends: 198.18.1.11 upwards.
pub const MAX_BACKENDS: usize = 40;

/// Address of LB host `k` (1-based): 198.18.1.(1+k).
pub fn lb_addr(k: usize) -> Ipv4Addr {
    assert!((1..=MAX_LBS).contains(&k), "LB host {k} of 1..={MAX_LBS}");
    Ipv4Addr::new(198, 18, 1, 1 + k as u8)
}

/// Address of backend `k` (1-based): 198.18.1.(10+k), as in the standard topology.
pub fn backend_addr(k: usize) -> Ipv4Addr {
    crate::topology::backend_addr(k)
}

/// The client's address in an IPv6 fabric.
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
/// The router's addresses in an IPv6 fabric: on the client's side, and on the switch
/// (every host's gateway there).
const ROUTER_CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
pub const ROUTER_FABRIC_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 1);
const PREFIX_LEN6: u8 = 64;

/// IPv6 address of LB host `k` (1-based): 2001:db8:18:1::(1+k).
pub fn lb_addr6(k: usize) -> Ipv6Addr {
    let last = u16::from(lb_addr(k).octets()[3]);
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x18,
        1,
        0,
        0,
        0,
        last / 10 * 0x10 + last % 10,
    )
}

/// IPv6 address of backend `k` (1-based), as in the standard topology:
/// 2001:db8:18:1::(10+k).
pub fn backend_addr6(k: usize) -> Ipv6Addr {
    crate::topology::backend_addr6(k)
}

/// The namespaces and links; all removed on drop (also when a test panics).
pub struct Fabric {
    prefix: String,
    client: Netns,
    router: Netns,
    switch_ports: Vec<String>,
    lbs: Vec<Netns>,
    backends: Vec<Netns>,
    /// XDP_PASS on the switch's ports towards the LB hosts: a veth end wakes its reader
    /// for frames the other end sends back out (XDP_TX) only when it runs an XDP program.
    _switch_xdp: Vec<XdpPass>,
    /// [`Family::Ipv4`] ([`Fabric::build`]) or [`Family::Ipv6`] ([`Fabric::build6`]).
    family: Family,
    // Dropped last: the other namespaces' veths go with their own namespace.
    switch: Netns,
}

impl Fabric {
    /// Builds the network with `n_lbs` LB hosts and `n_backends` backends, each backend
    /// holding the VIP on `lo` with `arp_ignore` 1 and `arp_announce` 2.
    pub fn build(tag: &str, n_lbs: usize, n_backends: usize) -> Fabric {
        Self::build_family(tag, n_lbs, n_backends, Family::Ipv4)
    }

    /// The same network with IPv6 addresses only, each backend holding [`VIP6`] on `lo`
    /// (an IPv6 address on `lo` is never announced on another interface, so no setting is
    /// needed for it).
    pub fn build6(tag: &str, n_lbs: usize, n_backends: usize) -> Fabric {
        Self::build_family(tag, n_lbs, n_backends, Family::Ipv6)
    }

    fn build_family(tag: &str, n_lbs: usize, n_backends: usize, family: Family) -> Fabric {
        assert!(
            family != Family::DualStack,
            "a fabric is of one family: IPv4 or IPv6"
        );
        assert!((1..=MAX_LBS).contains(&n_lbs), "n_lbs {n_lbs}");
        assert!(
            (1..=MAX_BACKENDS).contains(&n_backends),
            "n_backends {n_backends}"
        );
        let prefix = unique_prefix(tag);
        let client = Netns::create(&format!("{prefix}c"));
        let router = Netns::create(&format!("{prefix}r"));
        let switch = Netns::create(&format!("{prefix}sw"));
        let lbs: Vec<Netns> = (1..=n_lbs)
            .map(|k| Netns::create(&format!("{prefix}l{k}")))
            .collect();
        let backends: Vec<Netns> = (1..=n_backends)
            .map(|k| Netns::create(&format!("{prefix}b{k}")))
            .collect();

        for ns in [&client, &router, &switch]
            .into_iter()
            .chain(&lbs)
            .chain(&backends)
        {
            crate::topology::ipv4_only_host(ns);
            // The switch only bridges: it needs no address of either family.
            if family == Family::Ipv6 && !std::ptr::eq(ns, &switch) {
                ns.sysctls(&IPV6_HOST_SETTINGS);
            }
        }
        // The LB hosts forward too: XDP's FIB lookup answers only where forwarding is on.
        for ns in std::iter::once(&router).chain(&lbs) {
            ns.sysctl("net.ipv4.ip_forward", 1);
            if family == Family::Ipv6 {
                ns.sysctl("net.ipv6.conf.all.forwarding", 1);
            }
        }
        // Flows spread over equal-cost next hops by their 4-tuple, not their addresses.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", 1);
        if family == Family::Ipv6 {
            router.sysctl("net.ipv6.fib_multipath_hash_policy", 1);
        }
        for ns in &backends {
            ns.sysctls(&[
                ("net.ipv4.conf.all.arp_ignore", 1),
                ("net.ipv4.conf.all.arp_announce", 2),
            ]);
        }

        veth(&client, HOST_IF, &router, ROUTER_CLIENT_IF);
        veth(&router, ROUTER_FABRIC_IF, &switch, "sw-r");
        crate::topology::add_bridge(&switch, BRIDGE);
        if family == Family::Ipv6 {
            // No MLD snooping: neighbour discovery's multicast reaches every port whatever
            // the bridge has (or has not) learnt.
            switch.ip([
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ]);
        }
        let mut ends: Vec<(&Netns, String)> = vec![
            (&client, HOST_IF.into()),
            (&router, ROUTER_CLIENT_IF.into()),
            (&router, ROUTER_FABRIC_IF.into()),
            (&switch, "sw-r".into()),
        ];
        let mut ports = vec!["sw-r".to_owned()];
        for (role, hosts) in [("l", &lbs), ("b", &backends)] {
            for (i, host) in hosts.iter().enumerate() {
                let port = format!("sw-{role}{}", i + 1);
                veth(&switch, &port, host, HOST_IF);
                ends.push((&switch, port.clone()));
                ends.push((host, HOST_IF.into()));
                ports.push(port);
            }
        }
        for port in &ports {
            switch.ip(["link", "set", port, "master", BRIDGE]);
        }
        crate::topology::prepare_veth_ends(&ends);
        switch.link_up(BRIDGE);
        crate::topology::gro_on_every_end(&ends);

        if family == Family::Ipv6 {
            client.addr_add_nodad(HOST_IF, format!("{CLIENT_ADDR6}/{PREFIX_LEN6}"));
            client.route_add("default", ROUTER_CLIENT_ADDR6);
            router.addr_add_nodad(
                ROUTER_CLIENT_IF,
                format!("{ROUTER_CLIENT_ADDR6}/{PREFIX_LEN6}"),
            );
            router.addr_add_nodad(
                ROUTER_FABRIC_IF,
                format!("{ROUTER_FABRIC_ADDR6}/{PREFIX_LEN6}"),
            );
            for (i, lb) in lbs.iter().enumerate() {
                lb.addr_add_nodad(HOST_IF, format!("{}/{PREFIX_LEN6}", lb_addr6(i + 1)));
                lb.route_add("default", ROUTER_FABRIC_ADDR6);
            }
            for (i, backend) in backends.iter().enumerate() {
                backend.addr_add_nodad(HOST_IF, format!("{}/{PREFIX_LEN6}", backend_addr6(i + 1)));
                backend.addr_add_nodad("lo", format!("{VIP6}/128"));
                backend.route_add("default", ROUTER_FABRIC_ADDR6);
            }
        } else {
            client.addr_add(HOST_IF, format!("{CLIENT_ADDR}/{PREFIX_LEN}"));
            client.route_add("default", ROUTER_CLIENT_ADDR);
            router.addr_add(
                ROUTER_CLIENT_IF,
                format!("{ROUTER_CLIENT_ADDR}/{PREFIX_LEN}"),
            );
            router.addr_add(
                ROUTER_FABRIC_IF,
                format!("{ROUTER_FABRIC_ADDR}/{PREFIX_LEN}"),
            );
            for (i, lb) in lbs.iter().enumerate() {
                lb.addr_add(HOST_IF, format!("{}/{PREFIX_LEN}", lb_addr(i + 1)));
                lb.route_add("default", ROUTER_FABRIC_ADDR);
            }
            for (i, backend) in backends.iter().enumerate() {
                backend.addr_add(HOST_IF, format!("{}/{PREFIX_LEN}", backend_addr(i + 1)));
                backend.addr_add("lo", format!("{VIP}/32"));
                backend.route_add("default", ROUTER_FABRIC_ADDR);
            }
        }
        let switch_xdp = (1..=n_lbs)
            .map(|k| xdp_pass(&switch, &format!("sw-l{k}")))
            .collect();
        Fabric {
            prefix,
            client,
            router,
            switch_ports: (1..=n_lbs).map(|k| format!("sw-l{k}")).collect(),
            lbs,
            backends,
            _switch_xdp: switch_xdp,
            family,
            switch,
        }
    }

    /// The VIP of the fabric's family: [`VIP`] or [`VIP6`].
    pub fn vip(&self) -> IpAddr {
        match self.family {
            Family::Ipv6 => VIP6.into(),
            _ => VIP.into(),
        }
    }

    /// Backend `k`'s address of the fabric's family.
    pub fn backend_address(&self, k: usize) -> IpAddr {
        match self.family {
            Family::Ipv6 => backend_addr6(k).into(),
            _ => backend_addr(k).into(),
        }
    }

    /// LB host `k`'s address of the fabric's family.
    fn lb_address(&self, k: usize) -> IpAddr {
        match self.family {
            Family::Ipv6 => lb_addr6(k).into(),
            _ => lb_addr(k).into(),
        }
    }

    /// The namespace-name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// LB host `k` (1-based).
    pub fn lb(&self, k: usize) -> &Netns {
        &self.lbs[k - 1]
    }

    /// Backend `k` (1-based).
    pub fn backend(&self, k: usize) -> &Netns {
        &self.backends[k - 1]
    }

    pub fn backends(&self) -> &[Netns] {
        &self.backends
    }

    /// The router's route to the VIP: equal-cost through LB hosts `lbs` (1-based).
    pub fn route_vip_via(&self, lbs: &[usize]) {
        let vip = self.vip();
        let len = if vip.is_ipv4() { 32 } else { 128 };
        let mut args = vec![
            "route".to_owned(),
            "replace".to_owned(),
            format!("{vip}/{len}"),
        ];
        for k in lbs {
            args.extend([
                "nexthop".into(),
                "via".into(),
                self.lb_address(*k).to_string(),
            ]);
        }
        self.router.ip(&args);
    }

    /// The LB hosts know every backend's MAC from the start, so the first packets take
    /// XDP's fast path rather than the kernel's neighbour resolution.
    pub fn pin_neighbors(&self) {
        for (i, backend) in self.backends.iter().enumerate() {
            let mac = backend.mac(HOST_IF);
            for lb in &self.lbs {
                lb.neigh_permanent(HOST_IF, self.backend_address(i + 1), &mac);
            }
        }
    }

    /// Cuts LB host `k`'s link at the switch (`up` false), as a pulled cable or a dead
    /// switch port: the host keeps its addresses, routes and neighbours, it is just no
    /// longer heard; or restores it.
    pub fn set_lb_link(&self, k: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.switch
            .ip(["link", "set", &self.switch_ports[k - 1], state]);
    }

    /// Starts `lb-test-backend` in every backend, named `b1`, `b2`, …; see
    /// [`Fabric::start_backend`].
    pub fn start_backends(&self, http_port: Option<u16>, udp_port: Option<u16>) -> Vec<Backend> {
        (1..=self.backends.len())
            .map(|k| self.start_backend(k, http_port, udp_port))
            .collect()
    }

    /// Starts `lb-test-backend` in backend `k`, named `bK`: HTTP on the wildcard address
    /// of the fabric's family (the VIP on `lo` included), UDP on the VIP and on the
    /// backend's own address. A UDP
    /// server on the wildcard address would answer from the backend's own address (the
    /// kernel takes an unconnected socket's source from the route), which the client,
    /// talking to the VIP, drops; TCP answers from the address the connection was made
    /// to. The LB hosts' UDP health probes go to the backend's own address.
    pub fn start_backend(
        &self,
        k: usize,
        http_port: Option<u16>,
        udp_port: Option<u16>,
    ) -> Backend {
        let any: IpAddr = match self.family {
            Family::Ipv6 => Ipv6Addr::UNSPECIFIED.into(),
            _ => Ipv4Addr::UNSPECIFIED.into(),
        };
        let http: Vec<_> = http_port.into_iter().map(|p| (any, p).into()).collect();
        let udp: Vec<_> = udp_port
            .into_iter()
            .flat_map(|p| [(self.vip(), p).into(), (self.backend_address(k), p).into()])
            .collect();
        Backend::start(&self.backends[k - 1], &format!("b{k}"), &http, &udp)
    }

    /// `lb-ctl decap attach` on backend `k` for the VIP, with `args` added (`--gue-port`,
    /// …); asserts that it warns of nothing, as the fabric's backends are set up as the
    /// docs say. Its pins are removed when the guard drops.
    pub fn attach_decap(&self, k: usize, args: &[&str]) -> Decap {
        let name = format!("{}d{k}", self.prefix);
        let out = self
            .backend(k)
            .command(bin_path("lb-ctl"))
            .args([
                "decap",
                "attach",
                HOST_IF,
                "--instance",
                &name,
                "--vip",
                &self.vip().to_string(),
            ])
            .args(args)
            .output()
            .expect("running lb-ctl decap attach");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "decap attach: {stderr}");
        assert!(
            !stderr.contains("warning"),
            "the fabric's backends are set up as the docs say: {stderr}"
        );
        Decap { name, backend: k }
    }
}

/// `lb-ctl decap` attached on a backend ([`Fabric::attach_decap`]), its pins removed on
/// drop: the namespace going away takes the interface, not the bpffs pins.
pub struct Decap {
    name: String,
    backend: usize,
}

impl Decap {
    /// `lb-ctl decap status --json` counters (`decapsulated_ipip`, …).
    pub fn counters(&self, fabric: &Fabric) -> serde_json::Value {
        let out = fabric
            .backend(self.backend)
            .command(bin_path("lb-ctl"))
            .args(["decap", "status", "--instance", &self.name, "--json"])
            .output()
            .expect("running lb-ctl decap status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("decap status JSON");
        status["counters"].clone()
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(PathBuf::from("/sys/fs/bpf").join(&self.name));
    }
}
