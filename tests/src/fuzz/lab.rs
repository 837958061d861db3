//! The lab: a namespace with the three LB interfaces, its addresses and neighbours,
//! and what `bpf_fib_lookup` answers there.

use std::net::Ipv4Addr;

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
        for (dev, peer_dev, mac, cidr) in links {
            veth(&ns, dev, &peer, peer_dev);
            ns.set_mac(dev, &mac_string(mac));
            ns.link_up(dev);
            peer.link_up(peer_dev);
            ns.addr_add(dev, cidr);
        }
        ns.sysctl("net.ipv4.ip_forward", 1);
        for (dev, addr, mac) in [
            ("cl0", CLIENT, CLIENT_MAC),
            ("be0", B0, B0_MAC),
            ("be0", B1, B1_MAC),
            ("ot0", B_OTHER_SIDE, OT_MAC),
            ("ot0", CLIENT_OTHER_SIDE, OT2_MAC),
        ] {
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

#[derive(Clone, Copy, Debug)]
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
}
