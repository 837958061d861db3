//! The standard load-balancer test network.
//!
//! ```text
//!  client ns (<p>c)            LB ns (<p>lb)                 switch ns (<p>sw)        backend ns (<p>bK)
//!  eth0 198.18.0.2/24 ──veth── lb-client 198.18.0.1/24
//!       (+ .10, .11, …)        lb-back   198.18.1.1/24 ──veth── sw-lb ┐
//!  198.19.0.0/16 via .0.1                                             br0 ─ sw-bK ──veth── eth0 198.18.1.(10+K)/24
//!                                                                                          default via 198.18.1.1
//! ```
//!
//! With [`TopologyOptions::family`] [`Family::DualStack`] or [`Family::Ipv6`] every
//! interface but the switch's (a plain bridge) gets an IPv6 address from 2001:db8::/32 as
//! well or instead, numbered after the IPv4 plan: the IPv4 address's last octet becomes
//! the IPv6 interface identifier written with the same digits.
//!
//! ```text
//!  client 2001:db8:18::2/64 (+ ::10, ::11, …) ── LB 2001:db8:18::1/64
//!  2001:db8:19::/48 via 2001:db8:18::1           LB 2001:db8:18:1::1/64 ── backend K 2001:db8:18:1::(10+K)/64
//!                                                                           default via 2001:db8:18:1::1
//! ```
//!
//! The VIP is then 2001:db8:19::100 ([`VIP6`]) in the range 2001:db8:19::/48. Duplicate
//! address detection is off (`accept_dad=0`, addresses added `nodad`) so every address is
//! usable at once, router solicitations and advertisements are off, and the LB forwards
//! IPv6 as it forwards IPv4. The client's extra IPv6 addresses are deprecated (preferred
//! lifetime 0), so its primary address is its default source, as with IPv4.
//!
//! Where the VIP lives is the deployment ([`VipPlacement`]). By default the VIP range
//! 198.19.0.0/16 is routed from the client to the LB and configured on no interface: the
//! LB's XDP program is what answers for it. With [`VipPlacement::LocalOnLb`] the VIP is
//! also an address of the LB's client-side interface (`198.19.0.100/32 dev lb-client`, as
//! LVS directors have it) and the client reaches the VIP range on its link, by ARP, as
//! on a flat segment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    backend::Backend,
    netns::{Netns, unique_prefix, veth},
};

/// The test VIP: inside the VIP range routed from the client to the LB, configured on no
/// interface.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
/// The range the client routes to the LB (all VIPs of the tests).
pub const VIP_RANGE: &str = "198.19.0.0/16";

/// The config body most end-to-end tests start from: a vServer group `app` of the first
/// `n` backends of the standard topology (198.18.1.11, .12, …) on `port`, and a TCP
/// listener `web` on the VIP's port 80 for it, with `listener_options` (`, scheduler:
/// tch` …) appended inside its braces.
pub fn web_config(n: usize, port: u16, listener_options: &str) -> String {
    let servers: String = (1..=n)
        .map(|k| format!("      - {{ address: 198.18.1.{}, port: {port} }}\n", 10 + k))
        .collect();
    format!(
        "vserver_groups:\n  - name: app\n    servers:\n{servers}listeners:\n  - {{ name: web, \
         protocol: tcp, address: {VIP}, port: 80, server_group: app{listener_options} }}\n"
    )
}

/// The IPv6 test VIP ([`Family::DualStack`], [`Family::Ipv6`]): in [`VIP6_RANGE`],
/// configured on no interface.
pub const VIP6: Ipv6Addr = v6(0x19, 0, 0x100);
/// The IPv6 range the client routes to the LB.
pub const VIP6_RANGE: &str = "2001:db8:19::/48";

/// [`web_config`] over IPv6: the first `n` backends' IPv6 addresses (2001:db8:18:1::11,
/// ::12, …) on `port` in the vServer group `app`, and the TCP listener `web` on
/// [`VIP6`]'s port 80, with `listener_options` appended inside its braces.
pub fn web_config6(n: usize, port: u16, listener_options: &str) -> String {
    let servers: String = (1..=n)
        .map(|k| {
            format!(
                "      - {{ address: \"{}\", port: {port} }}\n",
                backend_addr6(k)
            )
        })
        .collect();
    format!(
        "vserver_groups:\n  - name: app\n    servers:\n{servers}listeners:\n  - {{ name: web, \
         protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app{listener_options} }}\n"
    )
}

/// The client's primary address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The LB's address on the client side (the client's next hop for the VIP range).
pub const LB_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The LB's address on the backend side (the backends' default gateway).
pub const LB_BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Prefix length of both subnets.
pub const PREFIX_LEN: u8 = 24;

/// The client's primary IPv6 address.
pub const CLIENT_ADDR6: Ipv6Addr = v6(0x18, 0, 0x2);
/// The LB's IPv6 address on the client side (the client's next hop for [`VIP6_RANGE`]).
pub const LB_CLIENT_ADDR6: Ipv6Addr = v6(0x18, 0, 0x1);
/// The LB's IPv6 address on the backend side (the backends' IPv6 default gateway).
pub const LB_BACKEND_ADDR6: Ipv6Addr = v6(0x18, 1, 0x1);
/// The client-side IPv6 subnet.
pub const CLIENT_NET6: &str = "2001:db8:18::/64";
/// The backend-side IPv6 subnet.
pub const BACKEND_NET6: &str = "2001:db8:18:1::/64";
/// Prefix length of both IPv6 subnets.
pub const PREFIX_LEN6: u8 = 64;

/// `2001:db8:<a>:<b>::<host>`, the one shape of every IPv6 address of the topology.
const fn v6(a: u16, b: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, b, 0, 0, 0, host)
}

/// The IPv6 interface identifier with the digits of IPv4 host number `n`: 11 → `::11`.
const fn same_digits(n: u8) -> u16 {
    (n as u16 / 100) * 0x100 + (n as u16 / 10 % 10) * 0x10 + n as u16 % 10
}

/// The client's interface (towards the LB).
pub const CLIENT_IF: &str = "eth0";
/// The LB's client-facing interface.
pub const LB_CLIENT_IF: &str = "lb-client";
/// The LB's backend-facing interface.
pub const LB_BACKEND_IF: &str = "lb-back";
/// The switch's port towards the LB.
pub const SWITCH_LB_PORT: &str = "sw-lb";
/// The bridge in the switch namespace.
pub const SWITCH_BRIDGE: &str = "br0";
/// Each backend's interface (towards the switch).
pub const BACKEND_IF: &str = "eth0";

/// Most backends the 198.18.1.0/24 numbering (.11 upwards) leaves room for.
pub const MAX_BACKENDS: usize = 244;
/// Most extra client addresses (198.18.0.10 upwards).
pub const MAX_CLIENT_ADDRESSES: usize = 245;
/// A client address the LB is never told about ([`TopologyOptions::unknown_client`]).
pub const UNKNOWN_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// The IPv6 client address the LB is never told about ([`TopologyOptions::unknown_client`]).
pub const UNKNOWN_CLIENT_ADDR6: Ipv6Addr = v6(0x18, 0, 0x3);

/// Address of backend `k` (1-based): 198.18.1.(10+k).
pub fn backend_addr(k: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&k),
        "backend {k} out of range 1..={MAX_BACKENDS}"
    );
    Ipv4Addr::new(198, 18, 1, 10 + k as u8)
}

/// IPv6 address of backend `k` (1-based): 2001:db8:18:1::(10+k), the digits of its IPv4
/// address's last octet (backend 1 is `2001:db8:18:1::11`).
pub fn backend_addr6(k: usize) -> Ipv6Addr {
    let last = backend_addr(k).octets()[3];
    v6(0x18, 1, same_digits(last))
}

/// Extra IPv6 client address `i` (0-based): 2001:db8:18::(10+i), with the digits of
/// 198.18.0.(10+i).
pub fn extra_client_addr6(i: usize) -> Ipv6Addr {
    assert!(
        i < MAX_CLIENT_ADDRESSES,
        "extra client address {i} out of range 0..{MAX_CLIENT_ADDRESSES}"
    );
    v6(0x18, 0, same_digits(10 + i as u8))
}

/// The switch's port towards backend `k`.
pub fn switch_backend_port(k: usize) -> String {
    format!("sw-b{k}")
}

/// How the VIP reaches the LB: the two ways a NAT load balancer is deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VipPlacement {
    /// The VIP range is routed to the LB (the client's next hop is 198.18.0.1) and is an
    /// address of no interface.
    #[default]
    RoutedToLb,
    /// [`VIP`] is a local address of the LB's client-side interface and answers ARP; the
    /// client has the VIP range on its link. Replies the XDP program hands to the kernel
    /// then carry one of the LB's own addresses as their source.
    LocalOnLb,
}

/// The address families of the topology's hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only, IPv6 off on every interface (unless [`TopologyOptions::keep_ipv6`]).
    #[default]
    Ipv4,
    /// IPv4 and IPv6 addresses on client, LB and backends, VIPs of both families.
    DualStack,
    /// IPv6 only: no IPv4 address anywhere; the IPv4 accessors panic.
    Ipv6,
}

impl Family {
    pub fn has_ipv4(self) -> bool {
        self != Family::Ipv6
    }

    pub fn has_ipv6(self) -> bool {
        self != Family::Ipv4
    }
}

#[derive(Debug, Clone, Default)]
pub struct TopologyOptions {
    /// Extra client addresses 198.18.0.10, .11, … on the client's interface, for tests
    /// that need many source addresses (flows); with IPv6, as many extra IPv6 addresses
    /// 2001:db8:18::10, ::11, … as well.
    pub client_addresses: usize,
    /// Keep IPv6 on. Off by default so that neighbour discovery and MLD frames do not show
    /// up in the XDP program's counters. Implied by an IPv6 [`TopologyOptions::family`].
    pub keep_ipv6: bool,
    pub vip: VipPlacement,
    /// Also give the client [`UNKNOWN_CLIENT_ADDR`] (and [`UNKNOWN_CLIENT_ADDR6`] with
    /// IPv6), which is left out of [`Topology::client_addrs`] and so of
    /// [`Topology::pin_neighbors`]: the LB has no neighbour entry for it until its kernel
    /// resolves one, so replies to it take the XDP program's no-neighbour path.
    pub unknown_client: bool,
    /// IPv4 (the default), dual stack or IPv6 only.
    pub family: Family,
}

/// The namespaces and links of the standard test network; all of it is removed on drop
/// (also when a test panics, and when `build` itself fails halfway).
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    client: Netns,
    lb: Netns,
    switch: Netns,
    backends: Vec<Netns>,
    family: Family,
    client_addrs: Vec<Ipv4Addr>,
    client_addrs6: Vec<Ipv6Addr>,
    unknown_client: bool,
    vip: VipPlacement,
    lb_client_ifindex: u32,
    lb_backend_ifindex: u32,
}

impl Topology {
    /// Builds the network with `n_backends` backends; `tag` (its first 3 alphanumeric
    /// characters) goes into the namespace names to tell tests apart in `ip netns list`.
    pub fn build(tag: &str, n_backends: usize, options: TopologyOptions) -> Topology {
        assert!(
            (1..=MAX_BACKENDS).contains(&n_backends),
            "n_backends {n_backends} out of range 1..={MAX_BACKENDS}"
        );
        assert!(
            options.client_addresses <= MAX_CLIENT_ADDRESSES,
            "client_addresses {} above {MAX_CLIENT_ADDRESSES}",
            options.client_addresses
        );
        let prefix = unique_prefix(tag);
        // Each Netns is a guard: if anything below panics, those created so far are
        // deleted while unwinding.
        let client = Netns::create(&format!("{prefix}c"));
        let lb = Netns::create(&format!("{prefix}lb"));
        let switch = Netns::create(&format!("{prefix}sw"));
        let backends: Vec<Netns> = (1..=n_backends)
            .map(|k| Netns::create(&format!("{prefix}b{k}")))
            .collect();

        // Namespace-wide defaults first, so interfaces created next inherit them (IPv6
        // off, or DAD off, before any link-local address or DAD happens).
        let family = options.family;
        let all_ns = || [&client, &lb, &switch].into_iter().chain(&backends);
        for ns in all_ns() {
            let mut settings = vec![
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ];
            // The switch only bridges: it needs no address of either family.
            let ipv6_here = if family.has_ipv6() {
                !std::ptr::eq(ns, &switch)
            } else {
                options.keep_ipv6
            };
            if !ipv6_here {
                settings.push(("net.ipv6.conf.all.disable_ipv6", "1"));
                settings.push(("net.ipv6.conf.default.disable_ipv6", "1"));
            } else if family.has_ipv6() {
                settings.extend(IPV6_HOST_SETTINGS);
            }
            if std::ptr::eq(ns, &lb) {
                settings.push(("net.ipv4.ip_forward", "1"));
                if family.has_ipv6() {
                    settings.push(("net.ipv6.conf.all.forwarding", "1"));
                }
            }
            ns.sysctls(&settings);
        }

        veth(&client, CLIENT_IF, &lb, LB_CLIENT_IF);
        veth(&lb, LB_BACKEND_IF, &switch, SWITCH_LB_PORT);
        add_bridge(&switch, SWITCH_BRIDGE);
        if family.has_ipv6() {
            // No MLD snooping: neighbour discovery's multicast reaches every port whatever
            // the bridge has (or has not) learnt.
            switch.ip([
                "link",
                "set",
                SWITCH_BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ]);
        }
        switch.ip(["link", "set", SWITCH_LB_PORT, "master", SWITCH_BRIDGE]);
        for (i, backend) in backends.iter().enumerate() {
            let port = switch_backend_port(i + 1);
            veth(&switch, &port, backend, BACKEND_IF);
            switch.ip(["link", "set", &port, "master", SWITCH_BRIDGE]);
        }

        let mut veth_ends: Vec<(&Netns, String)> = vec![
            (&client, CLIENT_IF.into()),
            (&lb, LB_CLIENT_IF.into()),
            (&lb, LB_BACKEND_IF.into()),
            (&switch, SWITCH_LB_PORT.into()),
        ];
        for (i, backend) in backends.iter().enumerate() {
            veth_ends.push((&switch, switch_backend_port(i + 1)));
            veth_ends.push((backend, BACKEND_IF.into()));
        }
        prepare_veth_ends(&veth_ends);
        switch.link_up(SWITCH_BRIDGE);
        gro_on_every_end(&veth_ends);

        let mut client_addrs = Vec::new();
        if family.has_ipv4() {
            client_addrs.push(CLIENT_ADDR);
            client_addrs.extend(
                (0..options.client_addresses).map(|i| Ipv4Addr::new(198, 18, 0, 10 + i as u8)),
            );
            let unknown = options.unknown_client.then_some(UNKNOWN_CLIENT_ADDR);
            for addr in client_addrs.iter().chain(&unknown) {
                client.addr_add(CLIENT_IF, format!("{addr}/{PREFIX_LEN}"));
            }
            lb.addr_add(LB_CLIENT_IF, format!("{LB_CLIENT_ADDR}/{PREFIX_LEN}"));
            lb.addr_add(LB_BACKEND_IF, format!("{LB_BACKEND_ADDR}/{PREFIX_LEN}"));
            match options.vip {
                VipPlacement::RoutedToLb => client.route_add(VIP_RANGE, LB_CLIENT_ADDR),
                VipPlacement::LocalOnLb => {
                    lb.addr_add(LB_CLIENT_IF, format!("{VIP}/32"));
                    client.ip(["route", "add", VIP_RANGE, "dev", CLIENT_IF]);
                }
            }
            for (i, backend) in backends.iter().enumerate() {
                backend.addr_add(BACKEND_IF, format!("{}/{PREFIX_LEN}", backend_addr(i + 1)));
                backend.route_add("default", LB_BACKEND_ADDR);
            }
        }

        let mut client_addrs6 = Vec::new();
        if family.has_ipv6() {
            client_addrs6.push(CLIENT_ADDR6);
            client_addrs6.extend((0..options.client_addresses).map(extra_client_addr6));
            // Every address but the primary deprecated (preferred lifetime 0): IPv6 source
            // selection then picks the primary, as IPv4 picks its primary address, where
            // it would otherwise pick the address added last. Binding to them still works.
            client.addr_add_nodad(CLIENT_IF, format!("{CLIENT_ADDR6}/{PREFIX_LEN6}"));
            let unknown = options.unknown_client.then_some(UNKNOWN_CLIENT_ADDR6);
            for addr in client_addrs6[1..].iter().chain(&unknown) {
                client.ip([
                    "addr",
                    "add",
                    &format!("{addr}/{PREFIX_LEN6}"),
                    "dev",
                    CLIENT_IF,
                    "nodad",
                    "preferred_lft",
                    "0",
                ]);
            }
            lb.addr_add_nodad(LB_CLIENT_IF, format!("{LB_CLIENT_ADDR6}/{PREFIX_LEN6}"));
            lb.addr_add_nodad(LB_BACKEND_IF, format!("{LB_BACKEND_ADDR6}/{PREFIX_LEN6}"));
            match options.vip {
                VipPlacement::RoutedToLb => client.route_add(VIP6_RANGE, LB_CLIENT_ADDR6),
                VipPlacement::LocalOnLb => {
                    lb.addr_add_nodad(LB_CLIENT_IF, format!("{VIP6}/128"));
                    client.ip(["route", "add", VIP6_RANGE, "dev", CLIENT_IF]);
                }
            }
            for (i, backend) in backends.iter().enumerate() {
                let addr = backend_addr6(i + 1);
                backend.addr_add_nodad(BACKEND_IF, format!("{addr}/{PREFIX_LEN6}"));
                backend.route_add("default", LB_BACKEND_ADDR6);
            }
        }

        let lb_client_ifindex = lb.ifindex(LB_CLIENT_IF);
        let lb_backend_ifindex = lb.ifindex(LB_BACKEND_IF);
        Topology {
            prefix,
            client,
            lb,
            switch,
            backends,
            family,
            client_addrs,
            client_addrs6,
            unknown_client: options.unknown_client,
            vip: options.vip,
            lb_client_ifindex,
            lb_backend_ifindex,
        }
    }

    /// The namespace-name prefix (`unique_prefix(tag)`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// The namespace holding the bridge between the LB and the backends.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Backend `k`, 1-based like its name `<p>bK`.
    pub fn backend(&self, k: usize) -> &Netns {
        assert!(
            (1..=self.backends.len()).contains(&k),
            "backend {k} out of range 1..={}",
            self.backends.len()
        );
        &self.backends[k - 1]
    }

    pub fn backends(&self) -> &[Netns] {
        &self.backends
    }

    pub fn n_backends(&self) -> usize {
        self.backends.len()
    }

    /// Names of all namespaces of the topology.
    pub fn namespace_names(&self) -> Vec<&str> {
        [&self.client, &self.lb, &self.switch]
            .into_iter()
            .chain(&self.backends)
            .map(Netns::name)
            .collect()
    }

    /// The address families of the hosts ([`TopologyOptions::family`]).
    pub fn family(&self) -> Family {
        self.family
    }

    fn need_ipv4(&self) {
        assert!(
            self.family.has_ipv4(),
            "an IPv4 address asked of an IPv6-only topology"
        );
    }

    fn need_ipv6(&self) {
        assert!(
            self.family.has_ipv6(),
            "an IPv6 address asked of a topology built without IPv6 (TopologyOptions::family)"
        );
    }

    /// The client's addresses: 198.18.0.2 first, then the extra ones (198.18.0.10, …).
    pub fn client_addrs(&self) -> &[Ipv4Addr] {
        self.need_ipv4();
        &self.client_addrs
    }

    /// The client's primary address, 198.18.0.2.
    pub fn client_addr(&self) -> Ipv4Addr {
        self.need_ipv4();
        CLIENT_ADDR
    }

    /// [`UNKNOWN_CLIENT_ADDR`]; panics unless the topology was built with
    /// [`TopologyOptions::unknown_client`].
    pub fn unknown_client_addr(&self) -> Ipv4Addr {
        self.need_ipv4();
        assert!(
            self.unknown_client,
            "the topology was built without TopologyOptions::unknown_client"
        );
        UNKNOWN_CLIENT_ADDR
    }

    /// The client's IPv6 addresses: 2001:db8:18::2 first, then the extra ones
    /// (2001:db8:18::10, …).
    pub fn client_addrs6(&self) -> &[Ipv6Addr] {
        self.need_ipv6();
        &self.client_addrs6
    }

    /// The client's primary IPv6 address, 2001:db8:18::2.
    pub fn client_addr6(&self) -> Ipv6Addr {
        self.need_ipv6();
        CLIENT_ADDR6
    }

    /// [`UNKNOWN_CLIENT_ADDR6`]; panics unless the topology was built with IPv6 and
    /// [`TopologyOptions::unknown_client`].
    pub fn unknown_client_addr6(&self) -> Ipv6Addr {
        self.need_ipv6();
        assert!(
            self.unknown_client,
            "the topology was built without TopologyOptions::unknown_client"
        );
        UNKNOWN_CLIENT_ADDR6
    }

    /// Where the VIP lives in this topology.
    pub fn vip_placement(&self) -> VipPlacement {
        self.vip
    }

    /// Address of backend `k` (1-based): 198.18.1.(10+k).
    pub fn backend_addr(&self, k: usize) -> Ipv4Addr {
        self.need_ipv4();
        self.backend(k);
        backend_addr(k)
    }

    /// Addresses of all backends, in order b1, b2, ….
    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.need_ipv4();
        (1..=self.backends.len()).map(backend_addr).collect()
    }

    /// IPv6 address of backend `k` (1-based): 2001:db8:18:1::(10+k) (`::11` for b1).
    pub fn backend_addr6(&self, k: usize) -> Ipv6Addr {
        self.need_ipv6();
        self.backend(k);
        backend_addr6(k)
    }

    /// IPv6 addresses of all backends, in order b1, b2, ….
    pub fn backend_addrs6(&self) -> Vec<Ipv6Addr> {
        self.need_ipv6();
        (1..=self.backends.len()).map(backend_addr6).collect()
    }

    /// Every address of backend `k`, IPv4 first: what a test loops over to reach it in
    /// each family the topology has.
    pub fn backend_ips(&self, k: usize) -> Vec<IpAddr> {
        self.backend(k);
        let v4 = self.family.has_ipv4().then(|| backend_addr(k).into());
        let v6 = self.family.has_ipv6().then(|| backend_addr6(k).into());
        v4.into_iter().chain(v6).collect()
    }

    pub fn vip(&self) -> Ipv4Addr {
        self.need_ipv4();
        VIP
    }

    /// The IPv6 VIP, 2001:db8:19::100.
    pub fn vip6(&self) -> Ipv6Addr {
        self.need_ipv6();
        VIP6
    }

    /// The VIPs of the topology's families, IPv4 first.
    pub fn vips(&self) -> Vec<IpAddr> {
        let v4 = self.family.has_ipv4().then_some(IpAddr::V4(VIP));
        let v6 = self.family.has_ipv6().then_some(IpAddr::V6(VIP6));
        v4.into_iter().chain(v6).collect()
    }

    /// The LB's client-facing interface name ([`LB_CLIENT_IF`]).
    pub fn lb_client_if(&self) -> &'static str {
        LB_CLIENT_IF
    }

    /// The LB's backend-facing interface name ([`LB_BACKEND_IF`]).
    pub fn lb_backend_if(&self) -> &'static str {
        LB_BACKEND_IF
    }

    pub fn lb_client_ifindex(&self) -> u32 {
        self.lb_client_ifindex
    }

    pub fn lb_backend_ifindex(&self) -> u32 {
        self.lb_backend_ifindex
    }

    /// Permanent neighbour entries on both sides of the LB, for each family the topology
    /// has (ARP entries for IPv4, neighbour-discovery entries for IPv6): in the LB for
    /// every client address (but [`UNKNOWN_CLIENT_ADDR`] and [`UNKNOWN_CLIENT_ADDR6`]) and
    /// every backend, in the client and the backends for the LB's addresses (and the VIP,
    /// when the client reaches it on its link). `bpf_fib_lookup` reports "no neighbour"
    /// for an address the kernel has not resolved yet, so without this the first packets
    /// of a test may take a different path. The client never has to ask for the LB's
    /// address, so the LB does not learn the unknown client from an ARP request or a
    /// neighbour solicitation either.
    pub fn pin_neighbors(&self) {
        let client_mac = self.client.mac(CLIENT_IF);
        let lb_client_mac = self.lb.mac(LB_CLIENT_IF);
        let lb_backend_mac = self.lb.mac(LB_BACKEND_IF);
        let backend_macs: Vec<String> = self.backends.iter().map(|b| b.mac(BACKEND_IF)).collect();
        let client_addrs = self.client_addrs.iter().map(|&a| IpAddr::from(a));
        let client_addrs6 = self.client_addrs6.iter().map(|&a| IpAddr::from(a));
        for addr in client_addrs.chain(client_addrs6) {
            self.lb.neigh_permanent(LB_CLIENT_IF, addr, &client_mac);
        }
        let mut plans = Vec::new();
        if self.family.has_ipv4() {
            plans.push(NeighborPlan {
                lb_client: LB_CLIENT_ADDR.into(),
                lb_backend: LB_BACKEND_ADDR.into(),
                vip: VIP.into(),
                backend: |k| backend_addr(k).into(),
            });
        }
        if self.family.has_ipv6() {
            plans.push(NeighborPlan {
                lb_client: LB_CLIENT_ADDR6.into(),
                lb_backend: LB_BACKEND_ADDR6.into(),
                vip: VIP6.into(),
                backend: |k| backend_addr6(k).into(),
            });
        }
        for plan in plans {
            self.client
                .neigh_permanent(CLIENT_IF, plan.lb_client, &lb_client_mac);
            if self.vip == VipPlacement::LocalOnLb {
                self.client
                    .neigh_permanent(CLIENT_IF, plan.vip, &lb_client_mac);
            }
            for (i, backend) in self.backends.iter().enumerate() {
                self.lb
                    .neigh_permanent(LB_BACKEND_IF, (plan.backend)(i + 1), &backend_macs[i]);
                backend.neigh_permanent(BACKEND_IF, plan.lb_backend, &lb_backend_mac);
            }
        }
    }

    /// Starts `lb-test-backend` in every backend namespace, named `b1`, `b2`, …, serving
    /// HTTP on `http_port` and UDP echo on `udp_port` (either optional) of every address
    /// of each family the topology has: `0.0.0.0` for IPv4, `[::]` for IPv6 (an IPv6-only
    /// socket, so IPv4 peers never show up as `::ffff:…` addresses).
    pub fn start_backends(&self, http_port: Option<u16>, udp_port: Option<u16>) -> Vec<Backend> {
        let mut any: Vec<IpAddr> = Vec::new();
        if self.family.has_ipv4() {
            any.push(Ipv4Addr::UNSPECIFIED.into());
        }
        if self.family.has_ipv6() {
            any.push(Ipv6Addr::UNSPECIFIED.into());
        }
        let on = |port: Option<u16>| -> Vec<SocketAddr> {
            port.into_iter()
                .flat_map(|port| any.iter().map(move |&ip| SocketAddr::new(ip, port)))
                .collect()
        };
        let (http, udp) = (on(http_port), on(udp_port));
        self.backends
            .iter()
            .enumerate()
            .map(|(i, ns)| Backend::start(ns, &format!("b{}", i + 1), &http, &udp))
            .collect()
    }
}

/// The addresses [`Topology::pin_neighbors`] pins, in one family.
struct NeighborPlan {
    lb_client: IpAddr,
    lb_backend: IpAddr,
    vip: IpAddr,
    backend: fn(usize) -> IpAddr,
}

/// A bridge in `ns` that forwards at once: no spanning tree, no forwarding delay.
pub(crate) fn add_bridge(ns: &Netns, name: &str) {
    ns.ip([
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ]);
}

/// The settings of every namespace of a test network without IPv6: no reverse-path
/// filtering (the tests pick their sources), IPv6 off.
pub(crate) fn ipv4_only_host(ns: &Netns) {
    ns.sysctls(&[
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
    ]);
}

/// The IPv6 settings of every host of a test network with IPv6, set before its
/// interfaces exist so they inherit them: no duplicate address detection (an address is
/// usable the moment it is added; the kernel skips DAD only when both `all` and the
/// interface say so), no router solicitations, no router advertisements accepted (routes
/// are the test's), IPv6 on.
pub(crate) const IPV6_HOST_SETTINGS: [(&str, &str); 8] = [
    ("net.ipv6.conf.all.disable_ipv6", "0"),
    ("net.ipv6.conf.default.disable_ipv6", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.default.dad_transmits", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.default.router_solicitations", "0"),
];

/// Every veth end of a test network: checksum offload off (real checksums on the wire),
/// `rp_filter` off on the interface too (although "all" already rules), up.
pub(crate) fn prepare_veth_ends(ends: &[(&Netns, String)]) {
    for (ns, dev) in ends {
        ns.checksum_offload_off(dev);
        ns.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), 0);
        ns.link_up(dev);
    }
}

/// GRO on every veth end, once all are up (see `Netns::gro_on`): XDP_TX and redirected
/// frames into a veth are dropped silently unless the receiving end has it.
pub(crate) fn gro_on_every_end(ends: &[(&Netns, String)]) {
    for (ns, dev) in ends {
        ns.gro_on(dev);
    }
}

/// An XDP program that passes every frame, attached to an interface while this guard
/// lives.
///
/// A veth hands the frames an XDP program sends back out of it (XDP_TX) to its peer, but
/// wakes the peer to read them only when the peer runs an XDP program of its own; without
/// one they wait until some other packet reaches the peer. A NIC has no such condition.
/// Tests of the answers the LB's program makes itself (echo replies to a VIP, RSTs, ICMP
/// fragmentation needed) need this on the peer of the interface the answer leaves by,
/// unless other traffic to that peer goes on at the same time.
pub struct XdpPass {
    _dataplane: lb_ctl::dataplane::DataPlane,
}

impl Topology {
    /// Attaches `lb_empty` (XDP_PASS for every frame) to the client's interface, in driver
    /// mode: only a driver-mode program makes the veth wake its reader.
    pub fn client_xdp_pass(&self) -> XdpPass {
        xdp_pass(&self.client, CLIENT_IF)
    }

    /// The same on the switch's port towards the LB ([`SWITCH_LB_PORT`]), the peer of the
    /// LB's backend-side interface.
    pub fn switch_xdp_pass(&self) -> XdpPass {
        xdp_pass(&self.switch, SWITCH_LB_PORT)
    }
}

/// Attaches an XDP_PASS program to `dev` of `ns` in driver mode, for as long as the
/// guard lives.
pub(crate) fn xdp_pass(ns: &Netns, dev: &str) -> XdpPass {
    use aya::programs::{Xdp, XdpMode};
    use lb_ctl::dataplane::{DataPlane, LoadOptions, MapSizes};
    ns.enter(|| {
        let mut dataplane = DataPlane::load_object(
            crate::TEST_OBJECT,
            &LoadOptions {
                sizes: MapSizes::new(1024, 1, 1),
                map_pin_dir: None,
                verifier_log_dir: None,
            },
        )
        .expect("the test XDP object loads");
        let program: &mut Xdp = dataplane
            .ebpf_mut()
            .program_mut("lb_empty")
            .expect("the object has lb_empty")
            .try_into()
            .expect("lb_empty is an XDP program");
        program.load().expect("lb_empty verifies");
        program
            .attach(dev, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("lb_empty attaches to {dev}: {e}"));
        XdpPass {
            _dataplane: dataplane,
        }
    })
}
