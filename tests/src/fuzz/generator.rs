//! The generator: structured frames (flows, replies, ICMP errors, hostile variants)
//! and a deterministic sweep of malformed ones; IPv6's are in `generator6.rs`.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, csum};

use super::{
    lab::{
        B_FAR, B_NO_NEIGH, B_OTHER_SIDE, B0, B0_MAC, B1, CLIENT, CLIENT_FAR, CLIENT_MAC,
        CLIENT_NO_NEIGH, CLIENT_OTHER_SIDE, LB_BACKEND_MAC, LB_CLIENT_MAC, Lab, OTHER, VIP, VIP2,
        VIP3, ip,
    },
    model::{Model, Tuple, be16},
    rng::Rng,
    setup::{ListenerSpec, Setup},
};
use crate::packet::{ACK, FIN, Frame, PSH, RST, SYN, Transport};

/// Source ports of generated flows: few, so the flow table stays far from full.
const SPORTS: [u16; 48] = {
    let mut p = [0u16; 48];
    let mut i = 0;
    while i < 48 {
        p[i] = 40000 + i as u16;
        i += 1;
    }
    p
};

const CLIENTS: [Ipv4Addr; 7] = [
    CLIENT,
    CLIENT,
    CLIENT,
    CLIENT_NO_NEIGH,
    CLIENT_FAR,
    CLIENT_OTHER_SIDE,
    // A backend as a client of a VIP (hairpin).
    B1,
];

/// Destinations that are not listeners: other hosts, addresses next to the VIPs, the
/// LB's own, a VIP whose listener frames do not address.
const NOT_LISTENERS: [Ipv4Addr; 9] = [
    OTHER,
    ip(198, 19, 0, 99),
    ip(198, 19, 0, 103),
    VIP3,
    ip(198, 18, 0, 1),
    ip(198, 18, 1, 1),
    CLIENT,
    B0,
    B_OTHER_SIDE,
];

/// Every address the generator may put in a header.
const ADDRESSES: [Ipv4Addr; 16] = [
    VIP,
    VIP2,
    VIP3,
    CLIENT,
    CLIENT_NO_NEIGH,
    CLIENT_FAR,
    CLIENT_OTHER_SIDE,
    OTHER,
    B0,
    B1,
    B_NO_NEIGH,
    B_FAR,
    B_OTHER_SIDE,
    ip(198, 19, 0, 99),
    ip(198, 18, 0, 254),
    ip(198, 18, 1, 254),
];
/// The mutations `Generator::mutate_upper` makes.
#[derive(Clone, Copy)]
pub(super) enum Upper {
    /// TCP's data offset (the byte's high nibble).
    DataOffset,
    /// The byte after it: TCP's flags.
    Flags,
    /// UDP's length, anything up to a little past the frame.
    UdpLength,
    /// Up to 40 random bytes after the frame's end.
    Append,
    /// One bit anywhere in the frame.
    FlipBit,
}

pub(super) struct Generator {
    pub(super) rng: Rng,
    /// Deterministic cases run first: truncations, every IHL, every data offset, ….
    sweep: Vec<(Vec<u8>, u32, &'static str)>,
}

/// An IPv4 address of an IPv4 flow or listener.
fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("{a}: an IPv6 address where IPv4 is generated"),
    }
}

fn client_frame(f: Frame) -> Frame {
    f.macs(CLIENT_MAC, LB_CLIENT_MAC)
}

fn backend_frame(f: Frame) -> Frame {
    f.macs(B0_MAC, LB_BACKEND_MAC)
}

/// Recomputes the IP header checksum if the header is inside the frame.
fn fix_ip(f: &mut [u8]) {
    if f.len() < 34 {
        return;
    }
    let ihl = (usize::from(f[14] & 0x0f) * 4).max(20);
    if 14 + ihl > f.len() {
        return;
    }
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum::checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_ne_bytes());
}

/// Recomputes the TCP or UDP checksum if the headers are consistent enough to say where.
fn fix_l4(f: &mut [u8]) {
    if f.len() < 34 || be16(f, 12) != 0x0800 {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let tot = usize::from(be16(f, 16));
    if ihl < 20 || tot < ihl || 14 + tot > f.len() {
        return;
    }
    let off = 14 + ihl;
    let payload = tot - ihl;
    let (at, len) = match f[23] {
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
    let src: [u8; 4] = f[26..30].try_into().unwrap_or_default();
    let dst: [u8; 4] = f[30..34].try_into().unwrap_or_default();
    let mut c = csum::l4_checksum(src, dst, f[23], &f[off..off + len]);
    if f[23] == PROTO_UDP {
        c = csum::udp_nonzero(c);
    }
    f[at..at + 2].copy_from_slice(&c.to_ne_bytes());
}

/// An ICMP message: type, code, checksum, 4 bytes, then `body`.
fn icmp_message(kind: u8, code: u8, rest: [u8; 4], body: &[u8], good_checksum: bool) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = csum::checksum(&m);
    let c = if good_checksum { c } else { c ^ 0x5a5a };
    m[2..4].copy_from_slice(&c.to_ne_bytes());
    m
}

impl Generator {
    pub(super) fn new(seed: u64, lab: &Lab) -> Self {
        let mut g = Self {
            rng: Rng::new(seed),
            sweep: Vec::new(),
        };
        g.sweep = g.sweep_cases(lab);
        g
    }

    pub(super) fn flags(&mut self) -> u8 {
        match self.rng.below(20) {
            0..=5 => SYN,
            6..=10 => ACK,
            11 => ACK | PSH,
            12 => FIN | ACK,
            13 => RST,
            14 => RST | ACK,
            15 => SYN | ACK,
            16 => FIN,
            _ => self.rng.byte(),
        }
    }

    pub(super) fn payload(&mut self) -> Vec<u8> {
        let n = if self.rng.chance(3) {
            // Around the MTU: some translated packets are too big for the egress.
            self.rng.usize(1400, 1530)
        } else {
            self.rng.usize(0, 48)
        };
        self.rng.bytes(n)
    }

    pub(super) fn sport(&mut self) -> u16 {
        if self.rng.chance(4) {
            self.rng.u16()
        } else {
            *self.rng.pick(&SPORTS)
        }
    }

    pub(super) fn ttl(&mut self) -> u8 {
        if self.rng.chance(6) {
            *self.rng.pick(&[0, 1, 2, 255])
        } else {
            64
        }
    }

    /// IP options and fragment bits, sometimes.
    fn ip_extras(&mut self, mut f: Frame) -> Frame {
        if self.rng.chance(8) {
            let n = self.rng.usize(1, 40);
            let mut opts = self.rng.bytes(n);
            if self.rng.chance(50) {
                opts.fill(1); // NOPs
            }
            f = f.options(&opts);
        }
        if self.rng.chance(4) {
            f = f.fragment(self.rng.chance(50), self.rng.below(0x2000) as u16);
        }
        f.dont_fragment = self.rng.chance(50);
        f.id = self.rng.u16();
        f.ttl = self.ttl();
        f
    }

    pub(super) fn tcp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
        let mut f = Frame::tcp(src, dst, flags);
        f.transport = Transport::Tcp {
            flags,
            seq: self.rng.next_u64() as u32,
            ack: self.rng.next_u64() as u32,
        };
        f.window = self.rng.u16();
        f.payload = self.payload();
        self.ip_extras(f)
    }

    pub(super) fn udp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
        let mut f = Frame::udp(src, dst);
        if self.rng.chance(5) {
            f = f.no_udp_checksum();
        }
        f.payload = self.payload();
        self.ip_extras(f)
    }

    /// Gives a TCP frame of a flow the model knows sequence numbers that fit it, half of
    /// the time: random ones almost never close anything.
    fn fit_numbers(&mut self, f: &mut Frame, numbers: Option<(u32, u32)>) {
        if let (Some((seq, ack)), &Transport::Tcp { flags, .. }) = (numbers, &f.transport)
            && self.rng.chance(50)
        {
            let ahead = self.rng.below(2000) as u32;
            f.transport = Transport::Tcp {
                flags,
                seq: seq.wrapping_add(ahead),
                ack,
            };
        }
    }

    fn client_tcp(&mut self, setup: &Setup, model: &Model) -> Vec<u8> {
        let src = (*self.rng.pick(&CLIENTS), self.sport());
        let dst = if self.rng.chance(88) {
            let tcp: Vec<&ListenerSpec> = setup
                .listeners
                .iter()
                .filter(|l| l.protocol == PROTO_TCP && l.vip.is_ipv4() && l.vip != VIP3)
                .collect();
            let l = self.rng.pick(&tcp);
            (v4(l.vip), l.port)
        } else {
            (*self.rng.pick(&[VIP, VIP2, VIP3]), self.rng.u16())
        };
        let flags = self.flags();
        let mut f = self.tcp(src, dst, flags);
        let t = Tuple {
            src: src.0.into(),
            dst: dst.0.into(),
            sport: src.1,
            dport: dst.1,
            proto: PROTO_TCP,
        };
        self.fit_numbers(&mut f, model.client_numbers(&t));
        client_frame(f).build()
    }

    fn client_udp(&mut self, setup: &Setup) -> Vec<u8> {
        let src = (*self.rng.pick(&CLIENTS), self.sport());
        let dst = if self.rng.chance(88) {
            let udp: Vec<&ListenerSpec> = setup
                .listeners
                .iter()
                .filter(|l| l.protocol == PROTO_UDP && l.vip.is_ipv4() && l.vip != VIP3)
                .collect();
            let l = self.rng.pick(&udp);
            (v4(l.vip), l.port)
        } else {
            (*self.rng.pick(&[VIP, VIP2, VIP3]), self.rng.u16())
        };
        client_frame(self.udp(src, dst)).build()
    }

    /// A backend's answer to a flow the model knows (or to a made-up one).
    pub(super) fn reply(&mut self, setup: &Setup, model: &Model) -> Vec<u8> {
        let keys = model.keys(false);
        let known = if !keys.is_empty() && self.rng.chance(90) {
            model.reply_tuple(setup, self.rng.pick(&keys))
        } else {
            None
        };
        let t = known.unwrap_or_else(|| Tuple {
            src: (*self.rng.pick(&[B0, B1, B_NO_NEIGH])).into(),
            dst: (*self.rng.pick(&CLIENTS)).into(),
            sport: *self.rng.pick(&[8080, 5353, 5000, 443]),
            dport: self.sport(),
            proto: *self.rng.pick(&[PROTO_TCP, PROTO_UDP]),
        });
        let f = if t.proto == PROTO_TCP {
            let flags = *self
                .rng
                .pick(&[SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK]);
            let mut f = self.tcp((v4(t.src), t.sport), (v4(t.dst), t.dport), flags);
            self.fit_numbers(&mut f, model.backend_numbers(setup, &t));
            f
        } else {
            self.udp((v4(t.src), t.sport), (v4(t.dst), t.dport))
        };
        backend_frame(f).build()
    }

    /// TCP/UDP to hosts and ports that are not listeners.
    fn not_for_us(&mut self) -> Vec<u8> {
        let src = (*self.rng.pick(&ADDRESSES), self.rng.u16());
        let dst = (*self.rng.pick(&NOT_LISTENERS), self.rng.u16());
        let f = if self.rng.chance(50) {
            let flags = self.flags();
            self.tcp(src, dst, flags)
        } else {
            self.udp(src, dst)
        };
        client_frame(f).build()
    }

    fn other_protocol(&mut self) -> Vec<u8> {
        let mut f = Frame::udp(
            (*self.rng.pick(&ADDRESSES), 0),
            (*self.rng.pick(&[VIP, VIP2, OTHER, VIP3]), 0),
        );
        f.transport = Transport::Other(*self.rng.pick(&[0, 2, 4, 41, 47, 50, 58, 132, 255]));
        f.payload = {
            let n = self.rng.usize(0, 40);
            self.rng.bytes(n)
        };
        client_frame(self.ip_extras(f)).build()
    }

    /// A quoted packet: IPv4 header (20 bytes unless `vihl` says otherwise) and the first
    /// `l4_len` bytes of its TCP or UDP header.
    fn quote(&mut self, t: &Tuple, l4_len: usize, vihl: u8) -> Vec<u8> {
        let mut f = if t.proto == PROTO_TCP {
            Frame::tcp((v4(t.src), t.sport), (v4(t.dst), t.dport), ACK)
        } else {
            let mut f = Frame::udp((v4(t.src), t.sport), (v4(t.dst), t.dport));
            if self.rng.chance(10) {
                f = f.no_udp_checksum();
            }
            f
        };
        if t.proto != PROTO_TCP && t.proto != PROTO_UDP {
            f.transport = Transport::Other(t.proto);
        }
        f.payload = {
            let n = self.rng.usize(0, 1400);
            self.rng.bytes(n)
        };
        f.dont_fragment = true;
        let full = f.build();
        let mut q = full[14..34 + l4_len.min(full.len() - 34)].to_vec();
        q[0] = vihl;
        q
    }

    /// ICMP: echo, errors about a flow in both directions, errors about nothing.
    pub(super) fn icmp(&mut self, setup: &Setup, model: &Model) -> (Vec<u8>, bool, &'static str) {
        let choice = self.rng.below(100);
        let (outer_src, outer_dst, body, kind, code, rest, ingress_client, label) = if choice < 15 {
            let kind = *self.rng.pick(&[8, 0, 13, 5, 4, 42]);
            let body = {
                let n = self.rng.usize(0, 56);
                self.rng.bytes(n)
            };
            (
                *self.rng.pick(&ADDRESSES),
                *self.rng.pick(&[VIP, VIP2, OTHER]),
                body,
                kind,
                0,
                [0, 1, 0, self.rng.byte()],
                true,
                "icmp-echo-or-info",
            )
        } else {
            let l4_len = if self.rng.chance(30) {
                20
            } else if self.rng.chance(10) {
                self.rng.usize(0, 7)
            } else {
                8
            };
            let vihl = if self.rng.chance(5) {
                *self.rng.pick(&[0x46, 0x44, 0x65, 0x4f])
            } else {
                0x45
            };
            let kind = if self.rng.chance(85) {
                *self.rng.pick(&[3, 3, 3, 11, 12])
            } else {
                self.rng.byte()
            };
            let code = if kind == 3 && self.rng.chance(50) {
                4
            } else {
                self.rng.below(16) as u8
            };
            let mtu = (self.rng.range(500, 1500) as u16).to_be_bytes();
            let rest = [0, 0, mtu[0], mtu[1]];
            let keys = model.keys(false);
            if choice < 50 && !keys.is_empty() {
                // About a reply the LB sent: VIP:port → client:port, reported to the VIP.
                let k = *self.rng.pick(&keys);
                let quoted = Tuple {
                    src: k.dst,
                    dst: k.src,
                    sport: k.dport,
                    dport: k.sport,
                    proto: k.proto,
                };
                let mut body = self.quote(&quoted, l4_len, vihl);
                if self.rng.chance(20) {
                    body.extend({
                        let n = self.rng.usize(1, 24);
                        self.rng.bytes(n)
                    });
                }
                let dst = if self.rng.chance(90) {
                    v4(k.dst)
                } else {
                    *self.rng.pick(&ADDRESSES)
                };
                let src = *self.rng.pick(&[ip(198, 18, 0, 254), v4(k.src), OTHER]);
                (src, dst, body, kind, code, rest, true, "icmp-error-to-vip")
            } else if choice < 85
                && let Some(r) = keys
                    .get(self.rng.below(keys.len() as u64) as usize)
                    .and_then(|k| model.reply_tuple(setup, k))
            {
                // About a packet the LB sent to a backend: client → backend.
                let quoted = Tuple {
                    src: r.dst,
                    dst: r.src,
                    sport: r.dport,
                    dport: r.sport,
                    proto: r.proto,
                };
                let mut body = self.quote(&quoted, l4_len, vihl);
                if self.rng.chance(20) {
                    body.extend({
                        let n = self.rng.usize(1, 24);
                        self.rng.bytes(n)
                    });
                }
                let src = if self.rng.chance(60) {
                    v4(r.src)
                } else {
                    ip(198, 18, 1, 254)
                };
                let dst = if self.rng.chance(85) {
                    v4(r.dst)
                } else {
                    *self.rng.pick(&ADDRESSES)
                };
                (
                    src,
                    dst,
                    body,
                    kind,
                    code,
                    rest,
                    false,
                    "icmp-error-to-client",
                )
            } else {
                let quoted = Tuple {
                    src: (*self.rng.pick(&ADDRESSES)).into(),
                    dst: (*self.rng.pick(&ADDRESSES)).into(),
                    sport: self.rng.u16(),
                    dport: *self.rng.pick(&[80, 53, 8080, 5353, 443, 5000]),
                    proto: *self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47]),
                };
                let body = self.quote(&quoted, l4_len, vihl);
                (
                    *self.rng.pick(&ADDRESSES),
                    *self.rng.pick(&ADDRESSES),
                    body,
                    kind,
                    code,
                    rest,
                    self.rng.chance(50),
                    "icmp-error-random",
                )
            }
        };
        let good = self.rng.chance(92);
        let mut f = Frame::udp((outer_src, 0), (outer_dst, 0));
        f.transport = Transport::Other(PROTO_ICMP);
        f.payload = icmp_message(kind, code, rest, &body, good);
        let f = self.ip_extras(f);
        let f = if ingress_client {
            client_frame(f)
        } else {
            backend_frame(f)
        };
        (f.build(), ingress_client, label)
    }

    /// VLAN-tagged, IPv6, ARP, other ethertypes.
    fn not_ipv4(&mut self) -> Vec<u8> {
        let inner = client_frame(Frame::tcp((CLIENT, 40000), (VIP, 80), SYN)).build();
        let mut f = inner[..12].to_vec();
        match self.rng.below(5) {
            0 => {
                // 802.1Q tag, then the IPv4 packet.
                f.extend_from_slice(&[0x81, 0x00, 0x00, self.rng.byte()]);
                f.extend_from_slice(&inner[12..]);
            }
            1 => {
                // IPv6 + TCP SYN.
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
                f.extend_from_slice(&[0xfd; 32]);
                f.extend_from_slice(&inner[34..54]);
            }
            2 => {
                // ARP who-has VIP.
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&CLIENT_MAC);
                f.extend_from_slice(&CLIENT.octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&VIP.octets());
            }
            3 => {
                // 802.1ad (QinQ).
                f.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2]);
                f.extend_from_slice(&inner[12..]);
            }
            _ => {
                let t = self.rng.u16();
                f.extend_from_slice(&t.to_be_bytes());
                f.extend_from_slice(&inner[14..]);
            }
        }
        f
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let n = if self.rng.chance(5) {
            self.rng.usize(0, 1600)
        } else {
            self.rng.usize(0, 120)
        };
        let mut f = self.rng.bytes(n);
        if f.len() >= 14 && self.rng.chance(50) {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            if f.len() >= 15 && self.rng.chance(50) {
                f[14] = 0x45;
            }
            if f.len() >= 34 && self.rng.chance(40) {
                f[30..34].copy_from_slice(&self.rng.pick(&[VIP, VIP2, OTHER]).octets());
                f[23] = *self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP]);
                if self.rng.chance(50) {
                    let tot = (f.len() - 14).min(0xffff) as u16;
                    f[16..18].copy_from_slice(&tot.to_be_bytes());
                }
                fix_ip(&mut f);
            }
        }
        f
    }

    /// One or two structural mutations of an IPv4 frame.
    /// A mutation both families' mutators make, of the upper-layer header at `off` or of
    /// the frame as a whole.
    pub(super) fn mutate_upper(&mut self, f: &mut Vec<u8>, off: usize, what: Upper) {
        match what {
            Upper::DataOffset => {
                if f.len() > off + 12 {
                    f[off + 12] = (self.rng.below(16) as u8) << 4 | (f[off + 12] & 0x0f);
                }
            }
            Upper::Flags => {
                if f.len() > off + 13 {
                    f[off + 13] = self.rng.byte();
                }
            }
            Upper::UdpLength => {
                if f.len() >= off + 6 {
                    let payload = f.len() - off;
                    let len = self.rng.below(payload as u64 + 6) as u16;
                    f[off + 4..off + 6].copy_from_slice(&len.to_be_bytes());
                }
            }
            Upper::Append => {
                let n = self.rng.usize(1, 40);
                f.extend(self.rng.bytes(n));
            }
            Upper::FlipBit => {
                let i = self.rng.usize(0, f.len() - 1);
                f[i] ^= 1 << self.rng.below(8);
            }
        }
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        for _ in 0..self.rng.usize(1, 2) {
            if f.len() < 34 {
                return;
            }
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let off = 14 + ihl.max(20);
            match self.rng.below(16) {
                0 | 1 => {
                    // Every length up to the end of the headers, sometimes beyond.
                    let stack = (off + 20).min(f.len());
                    let len = if self.rng.chance(80) {
                        self.rng.usize(0, stack)
                    } else {
                        self.rng.usize(0, f.len())
                    };
                    f.truncate(len);
                    if len >= 18 && self.rng.chance(50) {
                        // Consistent with the shorter frame.
                        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
                    }
                }
                2 => f[14] = (f[14] & 0xf0) | self.rng.below(16) as u8,
                3 => f[14] = (self.rng.below(16) as u8) << 4 | (f[14] & 0x0f),
                4 => {
                    let frame_ip = (f.len() - 14) as u64;
                    let tot = match self.rng.below(4) {
                        0 => frame_ip + self.rng.range(1, 100),
                        1 => self.rng.below(frame_ip),
                        2 => u64::from(self.rng.u16()),
                        _ => frame_ip,
                    };
                    f[16..18].copy_from_slice(&(tot.min(0xffff) as u16).to_be_bytes());
                }
                5 => {
                    let mf = if self.rng.chance(50) { 0x2000 } else { 0 };
                    let offset: u16 = *self.rng.pick(&[0, 1, 185, 0x1fff]) | mf;
                    let df = if self.rng.chance(30) { 0x4000 } else { 0 };
                    f[20..22].copy_from_slice(&(offset | df).to_be_bytes());
                }
                6 => self.mutate_upper(f, off, Upper::DataOffset),
                7 => self.mutate_upper(f, off, Upper::Flags),
                8 => self.mutate_upper(f, off, Upper::UdpLength),
                9 => f[22] = *self.rng.pick(&[0, 1, 2]),
                10 => self.mutate_upper(f, off, Upper::Append),
                11 => self.mutate_upper(f, off, Upper::FlipBit),
                12 => {
                    let at = *self.rng.pick(&[24usize, off + 16, off + 6, off + 2]);
                    if at + 2 <= f.len() {
                        f[at] ^= 0xff;
                    }
                }
                13 => {
                    let t = *self.rng.pick(&[0x8100u16, 0x86dd, 0x0806, 0x88a8, 0x0801]);
                    f[12..14].copy_from_slice(&t.to_be_bytes());
                }
                14 => f[23] = *self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47, 0]),
                _ => {
                    let at = *self.rng.pick(&[26usize, 30]);
                    f[at..at + 4].copy_from_slice(&self.rng.pick(&ADDRESSES).octets());
                }
            }
        }
        if self.rng.chance(70) {
            fix_ip(f);
        }
        if self.rng.chance(40) {
            fix_l4(f);
        }
    }

    /// The next frame, its ingress interface and what kind of frame it is.
    pub(super) fn next(
        &mut self,
        setup: &Setup,
        model: &Model,
        lab: &Lab,
    ) -> (Vec<u8>, u32, &'static str) {
        if let Some(case) = self.sweep.pop() {
            return case;
        }
        let side = |client: bool| {
            if client {
                lab.client_if
            } else {
                lab.backend_if
            }
        };
        let k = self.rng.below(100);
        let (mut f, ingress, kind) = match k {
            0..=5 => (self.random_bytes(), lab.client_if, "random-bytes"),
            6..=21 => (self.client_tcp(setup, model), lab.client_if, "tcp-to-vip"),
            22..=32 => (self.client_udp(setup), lab.client_if, "udp-to-vip"),
            33..=44 => (
                self.reply(setup, model),
                lab.backend_if,
                "reply-from-backend",
            ),
            45..=49 => (self.not_for_us(), lab.client_if, "not-for-us"),
            50..=52 => (self.other_protocol(), lab.client_if, "other-protocol"),
            53..=66 => {
                let (f, client, kind) = self.icmp(setup, model);
                (f, side(client), kind)
            }
            67..=70 => (self.not_ipv4(), lab.client_if, "not-ipv4"),
            71 => (self.random_bytes6(), lab.client_if, "random-bytes6"),
            72..=80 => (self.client_tcp6(setup, model), lab.client_if, "tcp6-to-vip"),
            81..=85 => (self.client_udp6(setup), lab.client_if, "udp6-to-vip"),
            86..=92 => (
                self.reply6(setup, model),
                lab.backend_if,
                "reply6-from-backend",
            ),
            93..=95 => {
                let (f, client, kind) = self.icmp6(setup, model);
                (f, side(client), kind)
            }
            96..=97 => (self.not_for_us6(), lab.client_if, "not-for-us6"),
            _ => (self.other_protocol6(), lab.client_if, "other-protocol6"),
        };
        let mut kind = kind;
        let unstructured = ["random-bytes", "random-bytes6", "not-ipv4"];
        if !unstructured.contains(&kind) && self.rng.chance(30) {
            if k >= 71 {
                self.mutate6(&mut f);
                kind = match kind {
                    "tcp6-to-vip" => "tcp6-to-vip-mutated",
                    "udp6-to-vip" => "udp6-to-vip-mutated",
                    "reply6-from-backend" => "reply6-mutated",
                    "not-for-us6" => "not-for-us6-mutated",
                    "other-protocol6" => "other-protocol6-mutated",
                    _ => "icmp6-mutated",
                };
            } else {
                self.mutate(&mut f);
                kind = match kind {
                    "tcp-to-vip" => "tcp-to-vip-mutated",
                    "udp-to-vip" => "udp-to-vip-mutated",
                    "reply-from-backend" => "reply-mutated",
                    "not-for-us" => "not-for-us-mutated",
                    "other-protocol" => "other-protocol-mutated",
                    _ => "icmp-mutated",
                };
            }
        }
        // Now and then from another interface than usual.
        let ingress = match self.rng.below(40) {
            0 => lab.other_if,
            1 => lab.backend_if,
            2 => lab.client_if,
            _ => ingress,
        };
        (f, ingress, kind)
    }

    /// Deterministic cases: every truncation of a few packets (with the IP total length
    /// as built and as the shorter frame), every IHL, every TCP data offset, fragments,
    /// TTLs. Returned in reverse order (they are popped).
    fn sweep_cases(&mut self, lab: &Lab) -> Vec<(Vec<u8>, u32, &'static str)> {
        let c = lab.client_if;
        let syn = client_frame(
            Frame::tcp((CLIENT, 40000), (VIP, 80), SYN)
                .options(&[0x94, 0x04, 0, 0])
                .payload(b"hello"),
        )
        .build();
        let udp = client_frame(Frame::udp((CLIENT, 40001), (VIP, 53)).payload(b"query")).build();
        let mut icmp = Frame::udp((ip(198, 18, 0, 254), 0), (VIP, 0));
        icmp.transport = Transport::Other(PROTO_ICMP);
        let mut quote = Frame::tcp((VIP, 80), (CLIENT, 40000), ACK).build()[14..42].to_vec();
        quote[0] = 0x45;
        icmp.payload = icmp_message(3, 4, [0, 0, 0x05, 0xdc], &quote, true);
        let icmp = client_frame(icmp).build();
        let mut cases = Vec::new();
        for base in [&syn, &udp, &icmp] {
            for len in 0..=base.len() {
                let mut f = base[..len].to_vec();
                cases.push((f.clone(), c, "sweep-truncated"));
                if len >= 18 {
                    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
                    fix_ip(&mut f);
                    cases.push((f, c, "sweep-truncated-consistent"));
                }
            }
        }
        for ihl in 0..16u8 {
            for fixed in [false, true] {
                let mut f = syn.clone();
                f[14] = 0x40 | ihl;
                if fixed {
                    fix_ip(&mut f);
                }
                cases.push((f, c, "sweep-ihl"));
            }
        }
        let plain = client_frame(Frame::tcp((CLIENT, 40002), (VIP, 80), SYN)).build();
        for doff in 0..16u8 {
            let mut f = plain.clone();
            f[46] = doff << 4;
            cases.push((f, c, "sweep-tcp-data-offset"));
        }
        for (mf, offset) in [
            (true, 0),
            (false, 1),
            (true, 185),
            (false, 0x1fff),
            (true, 8),
        ] {
            for dst in [VIP, OTHER] {
                let f = client_frame(
                    Frame::udp((CLIENT, 40003), (dst, 53))
                        .payload(b"fragment")
                        .fragment(mf, offset),
                )
                .build();
                cases.push((f, c, "sweep-fragment"));
            }
        }
        for ttl in [0, 1, 2] {
            let f = client_frame(Frame::tcp((CLIENT, 40004), (VIP, 80), SYN).ttl(ttl)).build();
            cases.push((f, c, "sweep-ttl"));
        }
        // An ICMP error whose IP total length ends before the quote does (the quote is in
        // the frame's trailing bytes only), and one whose quote stops after 8 bytes of
        // TCP with trailing bytes behind it.
        for cut in [1usize, 8, 12, 20] {
            let mut f = icmp.clone();
            let tot = be16(&f, 16) as usize - cut;
            f[16..18].copy_from_slice(&(tot as u16).to_be_bytes());
            fix_ip(&mut f);
            cases.push((f, c, "sweep-icmp-total-length"));
        }
        for len in [0usize, 1, 7, 8, 9, 30] {
            let mut f = udp.clone();
            let ulen = len as u16;
            f[38..40].copy_from_slice(&ulen.to_be_bytes());
            cases.push((f, c, "sweep-udp-length"));
        }
        cases.extend(self.sweep_cases6(lab));
        cases.reverse();
        cases
    }
}
