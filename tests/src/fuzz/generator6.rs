//! The generator's IPv6 frames: to the IPv6 VIP and from its backends, through every kind
//! of extension-header chain the policy tells apart (skipped, refused, fragments, too long,
//! truncated), ICMPv6 (neighbour discovery, echo, errors about flows both ways and about
//! nothing), other protocols, and mutated bytes; and a deterministic sweep of the
//! boundaries.

use std::net::Ipv6Addr;

use lb_common::{PROTO_TCP, PROTO_UDP};

use super::{
    generator::{Generator, Upper},
    lab::{
        B0_MAC, B6_0, B6_1, B6_NO_NEIGH, B6_OTHER_SIDE, CLIENT_MAC, CLIENT6, CLIENT6_FAR,
        CLIENT6_NO_NEIGH, CLIENT6_OTHER_SIDE, LB_BACKEND_MAC, LB_CLIENT_MAC, Lab, OTHER6, VIP6,
        ip6,
    },
    model::{Model, Tuple, be16},
    setup::{ListenerSpec, Setup},
};
use crate::packet::{
    ACK, ExtHeader, FIN, Frame6, NH_AH, NH_NO_NEXT, PSH, RST, SYN, Transport6, pseudo_checksum6,
};

/// Clients of the IPv6 VIP (`lab.rs`); the last, a backend, is a hairpin client.
const CLIENTS6: [Ipv6Addr; 7] = [
    CLIENT6,
    CLIENT6,
    CLIENT6,
    CLIENT6_NO_NEIGH,
    CLIENT6_FAR,
    CLIENT6_OTHER_SIDE,
    B6_1,
];

/// IPv6 destinations that are not the VIP: other hosts, addresses next to the VIP, the
/// LB's own, an address with no route.
const NOT_LISTENERS6: [Ipv6Addr; 9] = [
    OTHER6,
    ip6(0x19, 0, 0x99),
    ip6(0x19, 0, 0x101),
    ip6(0x18, 0, 1),
    ip6(0x18, 1, 1),
    CLIENT6,
    B6_0,
    B6_OTHER_SIDE,
    ip6(0x20, 0, 1),
];

/// Every IPv6 address the structured generator may put in a header (all in
/// 2001:db8::/32; neighbour discovery adds link-local and multicast ones).
const ADDRESSES6: [Ipv6Addr; 14] = [
    VIP6,
    CLIENT6,
    CLIENT6_NO_NEIGH,
    CLIENT6_FAR,
    CLIENT6_OTHER_SIDE,
    OTHER6,
    B6_0,
    B6_1,
    B6_NO_NEIGH,
    B6_OTHER_SIDE,
    ip6(0x19, 0, 0x99),
    ip6(0x18, 0, 0xfe),
    ip6(0x18, 1, 0xfe),
    ip6(0x18, 0, 1),
];

const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The solicited-node multicast address of the VIP.
const SOLICITED_VIP6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x100);

fn client_frame6(f: Frame6) -> Frame6 {
    f.macs(CLIENT_MAC, LB_CLIENT_MAC)
}

fn backend_frame6(f: Frame6) -> Frame6 {
    f.macs(B0_MAC, LB_BACKEND_MAC)
}

/// Offset of the upper-layer header of an IPv6 frame and its protocol, following any
/// extension headers (at most 16) whose first two bytes are in the frame, whatever the
/// policy says of them: where a mutation finds the L4 header.
fn upper_layer(f: &[u8]) -> Option<(usize, u8)> {
    if f.len() < 54 || be16(f, 12) != 0x86dd {
        return None;
    }
    let (mut next, mut off) = (f[20], 54);
    for _ in 0..16 {
        if !matches!(next, 0 | 43 | 44 | 60) {
            return Some((off, next));
        }
        if off + 2 > f.len() {
            return None;
        }
        let len = if next == 44 {
            8
        } else {
            (usize::from(f[off + 1]) + 1) * 8
        };
        next = f[off];
        off += len;
    }
    None
}

/// Recomputes the TCP or UDP checksum of an IPv6 frame if its headers say where (over
/// the header's destination: a routing header's final one is not looked for).
fn fix_l4_6(f: &mut [u8]) {
    let Some((off, proto)) = upper_layer(f) else {
        return;
    };
    let end = 54 + usize::from(be16(f, 18));
    if end > f.len() || off > end {
        return;
    }
    let payload = end - off;
    let (at, len) = match proto {
        PROTO_TCP if payload >= 20 => (off + 16, payload),
        PROTO_UDP if payload >= 8 => {
            let len = usize::from(be16(f, off + 4));
            if !(8..=payload).contains(&len) {
                return;
            }
            (off + 6, len)
        }
        _ => return,
    };
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).expect("16 bytes"));
    let mut c = pseudo_checksum6(src, dst, proto, &f[off..off + len]);
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

impl Generator {
    /// Hop limit: mostly 64, sometimes 0, 1 (not forwarded) or 2 and 255.
    fn hop_limit6(&mut self) -> u8 {
        if self.rng.chance(8) {
            *self.rng.pick(&[0, 1, 2, 255])
        } else {
            64
        }
    }

    /// Options of a hop-by-hop or destination options header: nothing, padding, or an
    /// option the LB ignores (router alert, an unknown type, a jumbo payload one).
    fn options6(&mut self) -> Vec<u8> {
        match self.rng.below(5) {
            0 => Vec::new(),
            1 => vec![5, 2, 0, 0],
            2 => vec![1, 0],
            3 => vec![0xc2, 4, 0, 1, 0, 0],
            _ => {
                let n = self.rng.usize(0, 40);
                let mut o = vec![0x1e, n as u8];
                o.extend(self.rng.bytes(n));
                o
            }
        }
    }

    /// A header the policy skips, not hop-by-hop: destination options, a routing header
    /// with no segment left, an atomic fragment.
    fn skipped_ext(&mut self) -> ExtHeader {
        match self.rng.below(4) {
            0 | 1 => ExtHeader::DestOpts(self.options6()),
            2 => {
                if self.rng.chance(50) {
                    ExtHeader::srh(0, &[VIP6, OTHER6])
                } else {
                    ExtHeader::routing0(0, &[OTHER6])
                }
            }
            _ => ExtHeader::Fragment {
                offset: 0,
                more: false,
                id: self.rng.next_u64() as u32,
            },
        }
    }

    /// An extension-header chain: none half of the time, else skipped headers (hop-by-hop
    /// first or not), refused ones (hop-by-hop later, segments left, more than 5 headers or
    /// 256 bytes), fragments, AH, or a header running past the packet.
    pub(super) fn ext_chain(&mut self) -> Vec<ExtHeader> {
        let mut chain = Vec::new();
        let k = self.rng.below(100);
        if k < 50 {
            return chain;
        }
        if k < 72 {
            if self.rng.chance(50) {
                chain.push(ExtHeader::HopByHop(self.options6()));
            }
            while chain.len() < 5 && (chain.is_empty() || self.rng.chance(50)) {
                let h = self.skipped_ext();
                chain.push(h);
            }
            return chain;
        }
        match k {
            // Hop-by-hop anywhere but first.
            72..=75 => {
                chain.push(self.skipped_ext());
                chain.push(ExtHeader::HopByHop(self.options6()));
            }
            // A routing header with segments left: the VIP is not the last destination.
            76..=80 => {
                if self.rng.chance(50) {
                    chain.push(ExtHeader::HopByHop(vec![]));
                }
                let left = self.rng.range(1, 3) as u8;
                chain.push(if self.rng.chance(50) {
                    ExtHeader::srh(left, &[OTHER6, VIP6])
                } else {
                    ExtHeader::routing0(left, &[OTHER6, CLIENT6])
                });
            }
            // 5 headers (the most walked), or more.
            81..=85 => {
                let n = self.rng.usize(5, 8);
                for _ in 0..n {
                    chain.push(ExtHeader::DestOpts(vec![]));
                }
            }
            // About 256 bytes of headers, either side of the bound.
            86..=89 => {
                let total = *self.rng.pick(&[248usize, 256, 264, 320]);
                // Two destination options headers of `total` bytes: 2 + n bytes each,
                // padded to 8.
                let first = total / 2 / 8 * 8;
                chain.push(ExtHeader::DestOpts(vec![0; first - 2]));
                chain.push(ExtHeader::DestOpts(vec![0; total - first - 2]));
            }
            // A fragment other than an atomic one.
            90..=94 => {
                if self.rng.chance(30) {
                    chain.push(ExtHeader::DestOpts(vec![]));
                }
                let (offset, more) = *self.rng.pick(&[(0, true), (1, false), (185, true)]);
                chain.push(ExtHeader::Fragment {
                    offset,
                    more,
                    id: self.rng.next_u64() as u32,
                });
            }
            // AH ends the walk: another protocol.
            95..=96 => chain.push(ExtHeader::Other {
                kind: NH_AH,
                body: self.rng.bytes(14),
            }),
            // A header whose length runs past the packet.
            _ => {
                let mut bytes = vec![self.rng.byte() | 0x10];
                bytes.extend(self.rng.bytes(6));
                chain.push(ExtHeader::Raw { kind: 60, bytes });
            }
        }
        chain
    }

    fn tcp6(&mut self, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Frame6 {
        let mut f = Frame6::tcp(src, dst, flags);
        f.transport = Transport6::Tcp {
            flags,
            seq: self.rng.next_u64() as u32,
            ack: self.rng.next_u64() as u32,
        };
        f.window = self.rng.u16();
        f.payload = self.payload();
        f.hop_limit = self.hop_limit6();
        f.flow_label = self.rng.next_u64() as u32 & 0xf_ffff;
        f.ext = self.ext_chain();
        f
    }

    fn udp6(&mut self, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Frame6 {
        let mut f = Frame6::udp(src, dst);
        if self.rng.chance(5) {
            f = f.no_udp_checksum();
        }
        f.payload = self.payload();
        f.hop_limit = self.hop_limit6();
        f.ext = self.ext_chain();
        f
    }

    /// `fit_numbers` for an IPv6 segment.
    fn fit_numbers6(&mut self, f: &mut Frame6, numbers: Option<(u32, u32)>) {
        if let (Some((seq, ack)), &Transport6::Tcp { flags, .. }) = (numbers, &f.transport)
            && self.rng.chance(50)
        {
            let ahead = self.rng.below(2000) as u32;
            f.transport = Transport6::Tcp {
                flags,
                seq: seq.wrapping_add(ahead),
                ack,
            };
        }
    }

    /// A listener of the IPv6 VIP of `protocol`, or (12 %) a random port of the VIP.
    fn ipv6_destination(&mut self, setup: &Setup, protocol: u8) -> (Ipv6Addr, u16) {
        if self.rng.chance(88) {
            let ls: Vec<&ListenerSpec> = setup
                .listeners
                .iter()
                .filter(|l| l.protocol == protocol && l.vip.is_ipv6())
                .collect();
            let l = self.rng.pick(&ls);
            (VIP6, l.port)
        } else {
            (VIP6, self.rng.u16())
        }
    }

    pub(super) fn client_tcp6(&mut self, setup: &Setup, model: &Model) -> Vec<u8> {
        let src = (*self.rng.pick(&CLIENTS6), self.sport());
        let dst = self.ipv6_destination(setup, PROTO_TCP);
        let flags = self.flags();
        let mut f = self.tcp6(src, dst, flags);
        let t = Tuple {
            src: src.0.into(),
            dst: dst.0.into(),
            sport: src.1,
            dport: dst.1,
            proto: PROTO_TCP,
        };
        self.fit_numbers6(&mut f, model.client_numbers(&t));
        client_frame6(f).build()
    }

    pub(super) fn client_udp6(&mut self, setup: &Setup) -> Vec<u8> {
        let src = (*self.rng.pick(&CLIENTS6), self.sport());
        let dst = self.ipv6_destination(setup, PROTO_UDP);
        client_frame6(self.udp6(src, dst)).build()
    }

    /// A backend's answer to an IPv6 flow the model knows (or to a made-up one).
    pub(super) fn reply6(&mut self, setup: &Setup, model: &Model) -> Vec<u8> {
        let keys = model.keys(true);
        let known = if !keys.is_empty() && self.rng.chance(90) {
            model.reply_tuple(setup, self.rng.pick(&keys))
        } else {
            None
        };
        let t = known.unwrap_or_else(|| Tuple {
            src: (*self.rng.pick(&[B6_0, B6_1, B6_NO_NEIGH, B6_OTHER_SIDE])).into(),
            dst: (*self.rng.pick(&CLIENTS6)).into(),
            sport: *self.rng.pick(&[8080, 5353, 5000]),
            dport: self.sport(),
            proto: *self.rng.pick(&[PROTO_TCP, PROTO_UDP]),
        });
        let (std::net::IpAddr::V6(src), std::net::IpAddr::V6(dst)) = (t.src, t.dst) else {
            unreachable!("an IPv6 flow's reply tuple is IPv6: {t}");
        };
        let mut f = if t.proto == PROTO_TCP {
            let flags = *self
                .rng
                .pick(&[SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK]);
            let mut f = self.tcp6((src, t.sport), (dst, t.dport), flags);
            self.fit_numbers6(&mut f, model.backend_numbers(setup, &t));
            f
        } else {
            self.udp6((src, t.sport), (dst, t.dport))
        };
        // Backends seldom send extension headers.
        if self.rng.chance(50) {
            f.ext.clear();
        }
        backend_frame6(f).build()
    }

    /// TCP/UDP to IPv6 hosts and ports that are not listeners.
    pub(super) fn not_for_us6(&mut self) -> Vec<u8> {
        let src = (*self.rng.pick(&ADDRESSES6), self.rng.u16());
        let dst = (*self.rng.pick(&NOT_LISTENERS6), self.rng.u16());
        let f = if self.rng.chance(50) {
            let flags = self.flags();
            self.tcp6(src, dst, flags)
        } else {
            self.udp6(src, dst)
        };
        client_frame6(f).build()
    }

    /// Protocols other than TCP, UDP and ICMPv6 (ESP, AH, no next header, GRE, ICMP for
    /// IPv4, SCTP, …), to the VIP or not.
    pub(super) fn other_protocol6(&mut self) -> Vec<u8> {
        let mut f = Frame6::udp(
            (*self.rng.pick(&ADDRESSES6), 0),
            (*self.rng.pick(&[VIP6, VIP6, OTHER6, B6_0]), 0),
        );
        f.transport = Transport6::Other(*self.rng.pick(&[50, NH_AH, NH_NO_NEXT, 47, 1, 132, 255]));
        f.payload = {
            let n = self.rng.usize(0, 40);
            self.rng.bytes(n)
        };
        f.hop_limit = self.hop_limit6();
        f.ext = self.ext_chain();
        client_frame6(f).build()
    }

    /// ICMPv6: neighbour discovery (types 133–137, whatever the addresses), echo, errors
    /// about an IPv6 flow in both directions, and any type. Returns the frame, whether it
    /// comes in on the client side, and its kind.
    pub(super) fn icmp6(&mut self, setup: &Setup, model: &Model) -> (Vec<u8>, bool, &'static str) {
        let choice = self.rng.below(100);
        let body = |g: &mut Self, max: usize| {
            let n = g.rng.usize(0, max);
            g.rng.bytes(n)
        };
        let (f, client, kind) = if choice < 35 {
            let kind = self.rng.range(133, 137) as u8;
            let src = *self
                .rng
                .pick(&[LINK_LOCAL, Ipv6Addr::UNSPECIFIED, CLIENT6, OTHER6, B6_0]);
            let dst = *self
                .rng
                .pick(&[ALL_NODES, SOLICITED_VIP6, VIP6, LINK_LOCAL, OTHER6]);
            let mut target = VIP6.octets().to_vec();
            target.extend(body(self, 16));
            let f = Frame6::icmp6(src, dst, kind, 0, [0; 4]).payload(&target);
            (f, self.rng.chance(80), "icmp6-neighbour-discovery")
        } else if choice < 55 {
            let kind = *self.rng.pick(&[128, 128, 129]);
            let id = self.rng.u16();
            let f = Frame6::icmp6(
                *self.rng.pick(&CLIENTS6),
                *self.rng.pick(&[VIP6, VIP6, OTHER6, B6_0]),
                kind,
                0,
                [(id >> 8) as u8, id as u8, 0, 1],
            )
            .payload(&body(self, 56));
            (f, true, "icmp6-echo")
        } else if choice < 85 {
            let kind = *self.rng.pick(&[1, 2, 3, 4]);
            let rest = if kind == 2 {
                1280u32.to_be_bytes()
            } else {
                [0; 4]
            };
            let keys = model.keys(true);
            let known = (!keys.is_empty()).then(|| *self.rng.pick(&keys));
            let (f, client) = match known {
                // About a reply the LB sent (VIP → client), reported to the VIP by a
                // router on the client side.
                Some(k) if self.rng.chance(50) => {
                    let (std::net::IpAddr::V6(client), std::net::IpAddr::V6(vip)) = (k.src, k.dst)
                    else {
                        unreachable!("an IPv6 key: {k}");
                    };
                    let quoted = self.quote6(&Tuple {
                        src: vip.into(),
                        dst: client.into(),
                        sport: k.dport,
                        dport: k.sport,
                        proto: k.proto,
                    });
                    let dst = if self.rng.chance(90) {
                        vip
                    } else {
                        *self.rng.pick(&ADDRESSES6)
                    };
                    let src = *self.rng.pick(&[ip6(0x18, 0, 0xfe), client, OTHER6]);
                    let f = Frame6::icmp6_error(src, dst, kind, 0, rest, &quoted);
                    (f, true)
                }
                // About a packet the LB sent to a backend (client → backend), reported to
                // the client by the backend.
                Some(k) => {
                    let r = model.reply_tuple(setup, &k).expect("a flow of the model");
                    let (std::net::IpAddr::V6(backend), std::net::IpAddr::V6(client)) =
                        (r.src, r.dst)
                    else {
                        unreachable!("an IPv6 reply tuple: {r}");
                    };
                    let quoted = self.quote6(&Tuple {
                        src: client.into(),
                        dst: backend.into(),
                        sport: r.dport,
                        dport: r.sport,
                        proto: r.proto,
                    });
                    // From the backend itself (its outer source becomes the VIP), or
                    // from a router between it and the LB.
                    let src = if self.rng.chance(60) {
                        backend
                    } else {
                        ip6(0x18, 1, 0xfe)
                    };
                    let dst = if self.rng.chance(85) {
                        client
                    } else {
                        *self.rng.pick(&ADDRESSES6)
                    };
                    let f = Frame6::icmp6_error(src, dst, kind, 0, rest, &quoted);
                    (f, false)
                }
                None => {
                    let quoted = self.quote6(&Tuple {
                        src: VIP6.into(),
                        dst: CLIENT6.into(),
                        sport: 80,
                        dport: 40000,
                        proto: PROTO_TCP,
                    });
                    (
                        Frame6::icmp6_error(OTHER6, VIP6, kind, 0, rest, &quoted),
                        true,
                    )
                }
            };
            (f, client, "icmp6-error")
        } else {
            let f = Frame6::icmp6(
                *self.rng.pick(&ADDRESSES6),
                *self.rng.pick(&ADDRESSES6),
                self.rng.byte(),
                self.rng.byte(),
                [0; 4],
            )
            .payload(&body(self, 40));
            (f, self.rng.chance(50), "icmp6-any")
        };
        let mut f = f;
        f.hop_limit = if f.dst.is_multicast() || f.src.is_unicast_link_local() {
            255
        } else {
            self.hop_limit6()
        };
        if self.rng.chance(20) {
            f.ext = self.ext_chain();
        }
        let f = if client {
            client_frame6(f)
        } else {
            backend_frame6(f)
        };
        (f.build(), client, kind)
    }

    /// The start of an IPv6 TCP/UDP packet of tuple `t` as an ICMPv6 error quotes it: its
    /// header and 8 bytes of TCP/UDP (what the program needs), a few bytes less or more
    /// (TCP's checksum is quoted from 58 bytes), or more of it; sometimes with an
    /// extension header (not translated).
    fn quote6(&mut self, t: &Tuple) -> Vec<u8> {
        let (std::net::IpAddr::V6(src), std::net::IpAddr::V6(dst)) = (t.src, t.dst) else {
            unreachable!("an IPv6 tuple: {t}");
        };
        let mut f = if t.proto == PROTO_TCP {
            Frame6::tcp((src, t.sport), (dst, t.dport), ACK)
        } else {
            Frame6::udp((src, t.sport), (dst, t.dport))
        };
        f.payload = {
            let n = self.rng.usize(0, 1200);
            self.rng.bytes(n)
        };
        if self.rng.chance(5) {
            f.ext.push(ExtHeader::DestOpts(vec![]));
        }
        let mut p = f.packet();
        let len = match self.rng.below(10) {
            0..=2 => 48,
            3..=5 => self.rng.usize(40, 64),
            _ => self.rng.usize(40, 1232),
        };
        p.truncate(len.min(p.len()));
        p
    }

    /// Random bytes that look like IPv6 for a while: the version, a payload length, the
    /// VIP as destination, a next header.
    pub(super) fn random_bytes6(&mut self) -> Vec<u8> {
        let n = self.rng.usize(14, 160);
        let mut f = self.rng.bytes(n);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        if f.len() > 14 && self.rng.chance(70) {
            f[14] = 0x60 | (f[14] & 0x0f);
        }
        if f.len() >= 54 {
            if self.rng.chance(50) {
                let len = (f.len() - 54) as u16;
                f[18..20].copy_from_slice(&len.to_be_bytes());
            }
            if self.rng.chance(50) {
                f[38..54].copy_from_slice(&VIP6.octets());
            }
            if self.rng.chance(60) {
                f[20] = *self.rng.pick(&[0, 6, 17, 43, 44, 58, 60]);
            }
        }
        f
    }

    /// One or two structural mutations of an IPv6 frame.
    pub(super) fn mutate6(&mut self, f: &mut Vec<u8>) {
        for _ in 0..self.rng.usize(1, 2) {
            if f.len() < 54 {
                return;
            }
            let upper = upper_layer(f);
            let off = upper.map_or(54, |(off, _)| off);
            match self.rng.below(16) {
                0 | 1 => {
                    // Every length up to past the upper-layer header, sometimes beyond.
                    let stack = (off + 20).min(f.len());
                    let len = if self.rng.chance(80) {
                        self.rng.usize(0, stack)
                    } else {
                        self.rng.usize(0, f.len())
                    };
                    f.truncate(len);
                    if len >= 54 && self.rng.chance(50) {
                        // Consistent with the shorter frame.
                        f[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
                    }
                }
                2 => f[14] = (self.rng.below(16) as u8) << 4 | (f[14] & 0x0f),
                3 => {
                    let frame_payload = (f.len() - 54) as u64;
                    let len = match self.rng.below(4) {
                        0 => frame_payload + self.rng.range(1, 100),
                        1 => self.rng.below(frame_payload + 1),
                        2 => u64::from(self.rng.u16()),
                        _ => frame_payload,
                    };
                    f[18..20].copy_from_slice(&(len.min(0xffff) as u16).to_be_bytes());
                }
                4 => f[21] = *self.rng.pick(&[0, 1, 2, 255]),
                5 => f[20] = *self.rng.pick(&[0, 6, 17, 43, 44, 58, 60, 50, 51, 59]),
                6 => {
                    // A byte of the extension headers: a next header, a length, segments
                    // left, a fragment offset.
                    if off > 54 && off <= f.len() {
                        let at = self.rng.usize(54, off - 1);
                        f[at] = if self.rng.chance(50) {
                            self.rng.byte()
                        } else {
                            *self.rng.pick(&[0, 1, 6, 17, 43, 44, 58, 60])
                        };
                    }
                }
                7 => self.mutate_upper(f, off, Upper::DataOffset),
                8 => self.mutate_upper(f, off, Upper::Flags),
                9 => self.mutate_upper(f, off, Upper::UdpLength),
                10 => self.mutate_upper(f, off, Upper::Append),
                11 => self.mutate_upper(f, off, Upper::FlipBit),
                12 => {
                    // A checksum (TCP, UDP — to zero, sometimes — or ICMPv6) or a port.
                    let at = *self.rng.pick(&[off + 16, off + 6, off + 2, off]);
                    if at + 2 <= f.len() {
                        if self.rng.chance(30) {
                            f[at..at + 2].copy_from_slice(&[0, 0]);
                        } else {
                            f[at] ^= 0xff;
                        }
                    }
                }
                13 => {
                    let t = *self.rng.pick(&[0x8100u16, 0x0800, 0x86dd, 0x88a8]);
                    f[12..14].copy_from_slice(&t.to_be_bytes());
                }
                _ => {
                    let at = *self.rng.pick(&[22usize, 38]);
                    f[at..at + 16].copy_from_slice(&self.rng.pick(&ADDRESSES6).octets());
                }
            }
        }
        if self.rng.chance(40) {
            fix_l4_6(f);
        }
    }

    /// Deterministic IPv6 cases: every truncation of a SYN through skipped headers and of
    /// a datagram, the chain's bounds (5 headers, 256 bytes), each extension-header rule,
    /// fragments, hop limits, UDP checksum 0 and lengths, TCP data offsets, neighbour
    /// discovery and echo to the VIP. In order (the caller reverses).
    pub(super) fn sweep_cases6(&mut self, lab: &Lab) -> Vec<(Vec<u8>, u32, &'static str)> {
        let c = lab.client_if;
        let mut cases = Vec::new();
        let syn = client_frame6(
            Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN)
                .ext(ExtHeader::HopByHop(vec![5, 2, 0, 0]))
                .ext(ExtHeader::DestOpts(vec![]))
                .ext(ExtHeader::Fragment {
                    offset: 0,
                    more: false,
                    id: 9,
                })
                .payload(b"hello"),
        )
        .build();
        let udp =
            client_frame6(Frame6::udp((CLIENT6, 40001), (VIP6, 53)).payload(b"query")).build();
        for base in [&syn, &udp] {
            for len in 14..=base.len() {
                let mut f = base[..len].to_vec();
                cases.push((f.clone(), c, "sweep6-truncated"));
                if len >= 54 {
                    f[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
                    cases.push((f, c, "sweep6-truncated-consistent"));
                }
            }
        }
        let with = |ext: Vec<ExtHeader>, dst: Ipv6Addr, port: u16| {
            let mut f = Frame6::tcp((CLIENT6, 40010 + port % 7), (dst, port), SYN);
            f.ext = ext;
            client_frame6(f).build()
        };
        let dest_opts = |n: usize| vec![ExtHeader::DestOpts(vec![]); n];
        for dst in [VIP6, OTHER6] {
            for n in [4, 5, 6] {
                cases.push((with(dest_opts(n), dst, 80), c, "sweep6-chain-length"));
            }
            // 256 bytes of headers (walked), then 264 (refused).
            for total in [256usize, 264] {
                let first = 128;
                let chain = vec![
                    ExtHeader::DestOpts(vec![0; first - 2]),
                    ExtHeader::DestOpts(vec![0; total - first - 2]),
                ];
                cases.push((with(chain, dst, 80), c, "sweep6-chain-bytes"));
            }
            let rules = [
                vec![ExtHeader::HopByHop(vec![])],
                vec![ExtHeader::DestOpts(vec![]), ExtHeader::HopByHop(vec![])],
                vec![ExtHeader::HopByHop(vec![]), ExtHeader::HopByHop(vec![])],
                vec![ExtHeader::srh(0, &[VIP6, OTHER6])],
                vec![ExtHeader::srh(1, &[OTHER6, VIP6])],
                vec![ExtHeader::routing0(0, &[OTHER6])],
                vec![ExtHeader::routing0(2, &[OTHER6, CLIENT6])],
            ];
            for chain in rules {
                cases.push((with(chain, dst, 80), c, "sweep6-extension-rule"));
            }
            for (offset, more) in [
                (0, false),
                (0, true),
                (1, false),
                (185, true),
                (8191, false),
            ] {
                let f = client_frame6(
                    Frame6::udp((CLIENT6, 40003), (dst, 53))
                        .payload(b"fragment")
                        .fragment(offset, more, 7),
                )
                .build();
                cases.push((f, c, "sweep6-fragment"));
            }
            for kind in 133..=137 {
                let nd = client_frame6(
                    Frame6::icmp6(LINK_LOCAL, dst, kind, 0, [0; 4]).payload(&VIP6.octets()),
                )
                .build();
                cases.push((nd, c, "sweep6-neighbour-discovery"));
                let fragmented = client_frame6(
                    Frame6::icmp6(LINK_LOCAL, dst, kind, 0, [0; 4])
                        .payload(&VIP6.octets())
                        .fragment(0, true, 1),
                )
                .build();
                cases.push((fragmented, c, "sweep6-neighbour-discovery"));
            }
            let echo = client_frame6(Frame6::echo_request(CLIENT6, dst, 1, 1)).build();
            cases.push((echo, c, "sweep6-echo"));
            let none =
                client_frame6(Frame6::udp((CLIENT6, 40004), (dst, 53)).no_udp_checksum()).build();
            cases.push((none, c, "sweep6-udp-checksum-0"));
        }
        for hop_limit in [0, 1, 2] {
            let f =
                client_frame6(Frame6::tcp((CLIENT6, 40005), (VIP6, 80), SYN).hop_limit(hop_limit))
                    .build();
            cases.push((f, c, "sweep6-hop-limit"));
        }
        // Packet Too Big from a router to the VIP about the reply of the first SYN's flow
        // (VIP6:80 → CLIENT6:40000), quoting just too little, just enough, and enough for
        // the TCP checksum; and one not about a flow.
        let reply = Frame6::tcp((VIP6, 80), (CLIENT6, 40000), SYN | ACK).packet();
        for (quoted, client) in [(47, CLIENT6), (48, CLIENT6), (57, CLIENT6), (58, CLIENT6)]
            .into_iter()
            .chain([(58, OTHER6)])
        {
            let mut q = reply[..quoted].to_vec();
            q[24..40].copy_from_slice(&client.octets());
            let f =
                client_frame6(Frame6::packet_too_big(ip6(0x18, 0, 0xfe), VIP6, 1280, &q)).build();
            cases.push((f, c, "sweep6-icmp6-error"));
        }
        let plain = client_frame6(Frame6::tcp((CLIENT6, 40006), (VIP6, 80), SYN)).build();
        for doff in 0..16u8 {
            let mut f = plain.clone();
            f[54 + 12] = doff << 4;
            cases.push((f, c, "sweep6-tcp-data-offset"));
        }
        for len in [0u16, 1, 7, 8, 9, 30] {
            let mut f = udp.clone();
            f[58..60].copy_from_slice(&len.to_be_bytes());
            cases.push((f, c, "sweep6-udp-length"));
        }
        cases
    }
}
