//! The lab: a namespace with the three LB interfaces, its addresses and neighbours (IPv4
//! and IPv6), and what `bpf_fib_lookup` answers there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    Netns,
    netns::{unique_prefix, veth},
    packet::{Mac, mac_string},
};

pub const LB_CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x01];
pub const LB_BACKEND_MAC: Mac = [0x02, 0, 0, 0, 0x0b, 0x01];
pub const LB_OTHER_MAC: Mac = [0x02, 0, 0, 0, 0x0d, 0x01];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];

pub(super) const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// The first VIP: listeners on TCP 80 (tch over three backends), UDP 53 (tch, with a
/// deny list), TCP 8080 (no backend) and UDP 5000.
pub const VIP: Ipv4Addr = ip(198, 19, 0, 100);
/// The second VIP: TCP 80 (shares backend B0:8080 with VIP:80, so one client port's flows
/// to both VIPs can collide), UDP 53 (its backend has no route), TCP 443 (its backend is behind `ot0`).
pub const VIP2: Ipv4Addr = ip(198, 19, 0, 101);
/// A VIP whose only listener (TCP 7, no backend) frames to listeners leave out: it stands
/// for a VIP none of whose listeners a frame addresses.
pub const VIP3: Ipv4Addr = ip(198, 19, 0, 102);

/// Client with a permanent neighbour entry on `cl0`.
pub const CLIENT: Ipv4Addr = ip(198, 18, 0, 2);
/// Client on `cl0` without a neighbour entry (and denied by VIP:53's access list).
pub const CLIENT_NO_NEIGH: Ipv4Addr = ip(198, 18, 0, 3);
/// Client without a route back (replies to it are dropped: no route).
pub const CLIENT_FAR: Ipv4Addr = ip(198, 19, 200, 7);
/// Client behind `ot0` (replies to it go to the kernel: not a redirect target).
pub const CLIENT_OTHER_SIDE: Ipv4Addr = ip(198, 18, 2, 20);
/// Not a VIP, not a backend, not a client.
pub const OTHER: Ipv4Addr = ip(198, 18, 0, 77);

pub const B0: Ipv4Addr = ip(198, 18, 1, 10);
pub const B1: Ipv4Addr = ip(198, 18, 1, 11);
/// A backend without a neighbour entry.
pub const B_NO_NEIGH: Ipv4Addr = ip(198, 18, 1, 13);
/// A backend without a route.
pub const B_FAR: Ipv4Addr = ip(198, 19, 200, 10);
/// A backend behind `ot0`.
pub const B_OTHER_SIDE: Ipv4Addr = ip(198, 18, 2, 10);

/// An address of the lab's IPv6 plan: `2001:db8:a:b::h` (everything is in 2001:db8::/32).
pub(super) const fn ip6(a: u16, b: u16, h: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, b, 0, 0, 0, h)
}

/// The IPv6 VIP: listeners on TCP 80 (tch over three backends), UDP 53 (tch, with a deny
/// list), TCP 443 (one backend, B6_0:8080, which it shares with TCP 80, so one client
/// port's flows to both can collide) and UDP 5000 (its backend is behind `ot0`).
pub const VIP6: Ipv6Addr = ip6(0x19, 0, 0x100);
/// Client with a permanent neighbour entry on `cl0`.
pub const CLIENT6: Ipv6Addr = ip6(0x18, 0, 2);
/// Client on `cl0` without a neighbour entry (and denied by VIP6:53's access list).
pub const CLIENT6_NO_NEIGH: Ipv6Addr = ip6(0x18, 0, 3);
/// Client without a route back (replies to it are dropped: no route).
pub const CLIENT6_FAR: Ipv6Addr = ip6(0x19, 0x200, 7);
/// Client behind `ot0` (replies to it go to the kernel: not a redirect target).
pub const CLIENT6_OTHER_SIDE: Ipv6Addr = ip6(0x18, 2, 0x20);
/// Not a VIP, not a backend, not a client.
pub const OTHER6: Ipv6Addr = ip6(0x18, 0, 0x77);
pub const B6_0: Ipv6Addr = ip6(0x18, 1, 0x10);
pub const B6_1: Ipv6Addr = ip6(0x18, 1, 0x11);
/// An IPv6 backend without a neighbour entry.
pub const B6_NO_NEIGH: Ipv6Addr = ip6(0x18, 1, 0x13);
/// An IPv6 backend behind `ot0`.
pub const B6_OTHER_SIDE: Ipv6Addr = ip6(0x18, 2, 0x10);

pub(super) const B0_MAC: Mac = [0x02, 0, 0, 0, 0, 0xb0];
const B1_MAC: Mac = [0x02, 0, 0, 0, 0, 0xb1];
const OT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xd0];
const OT2_MAC: Mac = [0x02, 0, 0, 0, 0, 0xd2];

/// The namespace the program runs in, with its three interfaces. Removed on drop.
pub struct Lab {
    ns: Netns,
    _peer: Netns,
    pub client_if: u32,
    pub backend_if: u32,
    pub other_if: u32,
}

impl Lab {
    /// Builds the namespace; needs root (check with `require_root_and_bpf` first).
    pub fn build(tag: &str) -> Lab {
        let prefix = unique_prefix(tag);
        let ns = Netns::create(&format!("{prefix}fz"));
        let peer = Netns::create(&format!("{prefix}fp"));
        let links = [
            ("cl0", "pcl0", LB_CLIENT_MAC, "198.18.0.1/24"),
            ("be0", "pbe0", LB_BACKEND_MAC, "198.18.1.1/24"),
            ("ot0", "pot0", LB_OTHER_MAC, "198.18.2.1/24"),
        ];
        // IPv6 forwarding on (the FIB gives XDP no IPv6 next hop otherwise), and no
        // duplicate address detection, so the IPv6 addresses are usable at once.
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ]);
        for (dev, peer_dev, mac, cidr) in links {
            veth(&ns, dev, &peer, peer_dev);
            ns.set_mac(dev, &mac_string(mac));
            ns.link_up(dev);
            peer.link_up(peer_dev);
            ns.addr_add(dev, cidr);
        }
        for (dev, cidr) in [
            ("cl0", "2001:db8:18::1/64"),
            ("be0", "2001:db8:18:1::1/64"),
            ("ot0", "2001:db8:18:2::1/64"),
        ] {
            ns.addr_add_nodad(dev, cidr);
        }
        let neighbours: [(&str, IpAddr, Mac); 10] = [
            ("cl0", CLIENT.into(), CLIENT_MAC),
            ("be0", B0.into(), B0_MAC),
            ("be0", B1.into(), B1_MAC),
            ("ot0", B_OTHER_SIDE.into(), OT_MAC),
            ("ot0", CLIENT_OTHER_SIDE.into(), OT2_MAC),
            ("cl0", CLIENT6.into(), CLIENT_MAC),
            ("be0", B6_0.into(), B0_MAC),
            ("be0", B6_1.into(), B1_MAC),
            ("ot0", B6_OTHER_SIDE.into(), OT_MAC),
            ("ot0", CLIENT6_OTHER_SIDE.into(), OT2_MAC),
        ];
        for (dev, addr, mac) in neighbours {
            ns.neigh_permanent(dev, addr, &mac_string(mac));
        }
        Lab {
            client_if: ns.ifindex("cl0"),
            backend_if: ns.ifindex("be0"),
            other_if: ns.ifindex("ot0"),
            ns,
            _peer: peer,
        }
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub(super) fn if_name(&self, ifindex: u32) -> &'static str {
        match ifindex {
            i if i == self.client_if => "cl0",
            i if i == self.backend_if => "be0",
            i if i == self.other_if => "ot0",
            _ => "?",
        }
    }

    /// What `bpf_fib_lookup` answers for a packet from `src` to `dst`, of either family
    /// (both of one family).
    pub(super) fn route_of(&self, src: IpAddr, dst: IpAddr) -> Route {
        match (src, dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.route6(src, dst),
            (_, IpAddr::V4(dst)) => self.route(dst),
            (IpAddr::V4(_), IpAddr::V6(_)) => Route::Unknown,
        }
    }

    /// What `bpf_fib_lookup` answers for IPv6 `dst` in this namespace: the three connected
    /// /64s (`2001:db8:18:0..=2::/64`) and the local routes; no default route. The kernel
    /// refuses some sources outright (link-local, multicast, loopback), and the program's
    /// next-hop cache of a backend does not ask it again: a source outside 2001:db8::/32
    /// (which the generator only makes by accident) may also be dropped for no route.
    pub(super) fn route6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Route {
        let ours = |a: Ipv6Addr| a.segments()[..2] == [0x2001, 0xdb8];
        if !ours(dst) {
            // Link-local, multicast, loopback, mapped, …: not worth modelling exactly.
            return Route::Unknown;
        }
        let route = self.route6_to(dst);
        if ours(src) {
            route
        } else {
            Route::OrNotForwarded(Box::new(route))
        }
    }

    fn route6_to(&self, dst: Ipv6Addr) -> Route {
        let s = dst.segments();
        if s[2] != 0x18 || s[3] > 2 {
            return Route::Unreachable;
        }
        let (ifindex, smac) = match s[3] {
            0 => (self.client_if, LB_CLIENT_MAC),
            1 => (self.backend_if, LB_BACKEND_MAC),
            _ => (self.other_if, LB_OTHER_MAC),
        };
        let neigh = |dmac: Mac| Route::Neigh {
            ifindex,
            smac,
            dmac,
        };
        match s[4..] {
            // The subnet-router anycast address (a local anycast route with forwarding on).
            [0, 0, 0, 0] => Route::Unknown,
            // The LB's own address: a local route, not forwarded.
            [0, 0, 0, 1] => Route::Unreachable,
            _ => match dst {
                CLIENT6 => neigh(CLIENT_MAC),
                B6_0 => neigh(B0_MAC),
                B6_1 => neigh(B1_MAC),
                B6_OTHER_SIDE => neigh(OT_MAC),
                CLIENT6_OTHER_SIDE => neigh(OT2_MAC),
                _ => Route::NoNeigh,
            },
        }
    }

    /// What `bpf_fib_lookup` answers for `dst` in this namespace (routes are the three
    /// connected /24s and the local ones; there is no default route).
    pub(super) fn route(&self, dst: Ipv4Addr) -> Route {
        let o = dst.octets();
        let neigh = |ifindex: u32, smac: Mac, dmac: Mac| Route::Neigh {
            ifindex,
            smac,
            dmac,
        };
        match o {
            [198, 18, n @ 0..=2, host] => {
                let (ifindex, smac) = match n {
                    0 => (self.client_if, LB_CLIENT_MAC),
                    1 => (self.backend_if, LB_BACKEND_MAC),
                    _ => (self.other_if, LB_OTHER_MAC),
                };
                match host {
                    // The network address: a broadcast route on some kernels.
                    0 => Route::Unknown,
                    // The LB's own address and the broadcast address: not forwarded.
                    1 | 255 => Route::Unreachable,
                    _ => match dst {
                        CLIENT => neigh(ifindex, smac, CLIENT_MAC),
                        B0 => neigh(ifindex, smac, B0_MAC),
                        B1 => neigh(ifindex, smac, B1_MAC),
                        B_OTHER_SIDE => neigh(ifindex, smac, OT_MAC),
                        CLIENT_OTHER_SIDE => neigh(ifindex, smac, OT2_MAC),
                        _ => Route::NoNeigh,
                    },
                }
            }
            // Local (lo) routes.
            [127, ..] => Route::Unreachable,
            // This network, multicast, class E, broadcast: not worth modelling exactly.
            [0, ..] | [224..=255, ..] => Route::Unknown,
            _ => Route::Unreachable,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Route {
    Neigh {
        ifindex: u32,
        smac: Mac,
        dmac: Mac,
    },
    NoNeigh,
    Unreachable,
    /// The model does not say (addresses the structured generator never uses).
    Unknown,
    /// The route, or no route (IPv6 from an odd source: see [`Lab::route6`]).
    OrNotForwarded(Box<Route>),
}
