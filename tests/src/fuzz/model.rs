//! The model: what the packet policy says about a frame, from its bytes, the setup and
//! a shadow of the flow tables; and the output bytes it expects. IPv4 and IPv6 frames go
//! through one flow model (the data plane's decision is one procedure over both
//! families' tables); what differs is the header: the IPv6 parser's extension-header
//! walk, NAT66 without a header checksum, and the hop limit.

use std::{
    cell::Cell,
    collections::HashMap,
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    CLOSE_WINDOW, FIN_TIMEOUT_S, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_RST, FlowKey, FlowKey6,
    HALF_OPEN_TIMEOUT_S, MAX_EXTENSION_BYTES, MAX_EXTENSION_HEADERS, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, RST_TIMEOUT_S, Reason, csum,
    family::{addr6, octets6},
};
use lb_ctl::family::FlowMapKey;

use super::{
    CLOCK_SLACK_NS, IDLE_TIMEOUT_S, MAX_FRAME, MIN_FRAME, MTU,
    lab::{Lab, Route},
    setup::{BackendSpec, ListenerSpec, Setup},
};
use crate::{
    packet::{ACK, FIN, Mac, RST, SYN},
    xdp::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

/// A 5-tuple as it appears in a packet (host order here), of either family (both
/// addresses of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The backend-side tuple of client flow `self` sent to backend `b`: what its replies
    /// carry.
    pub(super) fn backend_side(&self, b: &BackendSpec) -> Tuple {
        Tuple {
            src: b.addr,
            dst: self.src,
            sport: b.port,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The client-side tuple a backend-side tuple `self` has at listener `l`: the inverse
    /// of [`Tuple::backend_side`] for a flow of that listener.
    pub(super) fn client_side(&self, l: &ListenerSpec) -> Tuple {
        Tuple {
            src: self.dst,
            dst: l.vip,
            sport: self.dport,
            dport: l.port,
            proto: self.proto,
        }
    }

    /// The key of the flow table of the tuple's family.
    pub(super) fn key(&self) -> FlowMapKey {
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => FlowMapKey::V4(FlowKey {
                src_addr: u32::from_ne_bytes(src.octets()),
                dst_addr: u32::from_ne_bytes(dst.octets()),
                src_port: self.sport.to_be(),
                dst_port: self.dport.to_be(),
                protocol: self.proto,
                _pad: [0; 3],
            }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => FlowMapKey::V6(FlowKey6 {
                src_addr: addr6(src.octets()),
                dst_addr: addr6(dst.octets()),
                src_port: self.sport.to_be(),
                dst_port: self.dport.to_be(),
                protocol: self.proto,
                _pad: [0; 3],
            }),
            _ => panic!("{self}: a tuple of two families"),
        }
    }

    pub(super) fn from_key(k: &FlowMapKey) -> Tuple {
        match k {
            FlowMapKey::V4(k) => Tuple {
                src: Ipv4Addr::from(k.src_addr.to_ne_bytes()).into(),
                dst: Ipv4Addr::from(k.dst_addr.to_ne_bytes()).into(),
                sport: u16::from_be(k.src_port),
                dport: u16::from_be(k.dst_port),
                proto: k.protocol,
            },
            FlowMapKey::V6(k) => Tuple {
                src: Ipv6Addr::from(octets6(k.src_addr)).into(),
                dst: Ipv6Addr::from(octets6(k.dst_addr)).into(),
                sport: u16::from_be(k.src_port),
                dport: u16::from_be(k.dst_port),
                proto: k.protocol,
            },
        }
    }

    pub(super) fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            _ => "?",
        };
        write!(
            f,
            "{p} {} → {}",
            std::net::SocketAddr::new(self.src, self.sport),
            std::net::SocketAddr::new(self.dst, self.dport)
        )
    }
}

/// A flow entry as the model expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ShadowFlow {
    pub(super) listener: usize,
    pub(super) backend: u32,
    /// `FLOW_F_FIN`, `FLOW_F_RST` and `FLOW_F_OPENING` only (`MODELLED_FLAGS`).
    pub(super) flags: u32,
    /// What the client last acknowledged (half-open: its SYN's sequence number + 1).
    pub(super) client_acked: u32,
    /// What the backend last acknowledged, once a reply with ACK reached the flow.
    pub(super) backend_acked: Option<u32>,
    /// Bounds of the program's clock when it last wrote `last_seen_ns` (replies do not).
    pub(super) seen: (u64, u64),
}

/// The flow a backend's packet may belong to.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReplyTo {
    /// Its client side (the key of the flow entry).
    pub(super) key: Tuple,
    pub(super) flow: ShadowFlow,
    /// The listener whose VIP and port the packet's source becomes.
    pub(super) listener: usize,
}

/// The flow flags the model follows.
pub(super) const MODELLED_FLAGS: u32 = FLOW_F_FIN | FLOW_F_RST | FLOW_F_OPENING;

/// Flow entries the model expects the program to hold (established and half-open alike:
/// the program looks both tables up wherever it looks for a flow).
#[derive(Default)]
pub struct Model {
    pub(super) flows: HashMap<Tuple, ShadowFlow>,
    pub(super) flow_keys: Vec<Tuple>,
    /// Backend packets (replies, or quoted in an ICMP error) that flows of two listeners
    /// could answer: how often the run put the "latest flow wins" rule to the test.
    pub(super) contested: Cell<u64>,
}

/// A state change that comes with an outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub(super) flow: Option<(Tuple, ShadowFlow)>,
}

/// One outcome the policy allows for a frame.
#[derive(Clone, Debug)]
pub(super) struct Outcome {
    pub(super) action: u32,
    pub(super) reason: Reason,
    pub(super) out: Out,
    pub(super) delta: Delta,
    /// Why the policy decides so, where that is not obvious from the reason.
    pub(super) why: &'static str,
}

#[derive(Clone, Debug)]
pub(super) enum Out {
    /// The frame must come back byte for byte.
    Unchanged,
    /// Not checked (dropped after a translation).
    Any,
    Expect(Expected),
}

/// An expected output: bytes, the checksum fields not compared byte for byte, and the
/// checksums that must verify.
#[derive(Clone, Debug)]
pub(super) struct Expected {
    pub(super) bytes: Vec<u8>,
    masked: Vec<usize>,
    checks: Vec<Check>,
}

#[derive(Clone, Debug)]
enum Check {
    /// The Internet checksum over `start..end` verifies.
    Sum {
        what: &'static str,
        start: usize,
        end: usize,
    },
    /// TCP or UDP checksum over the pseudo-header (of the IP header at `ip`, IPv4 or IPv6
    /// as its version says) and `len` bytes from `l4` verifies (and, for UDP, is not 0).
    L4 {
        what: &'static str,
        ip: usize,
        l4: usize,
        len: usize,
        proto: u8,
    },
    /// The 16-bit field at `at` equals `value`, 0x0000 and 0xffff counting as equal (both
    /// are zero in one's complement).
    Word {
        what: &'static str,
        at: usize,
        value: u16,
    },
}

pub(super) enum Prediction {
    Refused,
    Outcomes(Vec<Outcome>),
}

pub(super) fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

pub(super) fn addr_at(f: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3])
}

pub(super) fn addr6_at(f: &[u8], at: usize) -> Ipv6Addr {
    let octets: [u8; 16] = f[at..at + 16].try_into().expect("16 bytes");
    Ipv6Addr::from(octets)
}

/// An address's bytes, either family.
fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An address as its 16-bit words (what a checksum sums).
fn words(a: IpAddr) -> Vec<u16> {
    match a {
        IpAddr::V4(a) => addr_words(a).to_vec(),
        IpAddr::V6(a) => a.segments().to_vec(),
    }
}

/// An IPv4 address of an IPv4 packet's flow (its listener and backends are IPv4).
fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("{a}: an IPv6 address in an IPv4 packet's flow"),
    }
}

fn sum_ok(data: &[u8]) -> bool {
    csum::checksum(data) == 0
}

fn l4_ok(f: &[u8], ip: usize, l4: usize, len: usize, proto: u8) -> bool {
    let mut pseudo = Vec::with_capacity(40 + len);
    if f[ip] >> 4 == 6 {
        // RFC 8200 section 8.1: addresses, upper-layer length (32 bits), next header.
        pseudo.extend_from_slice(&f[ip + 8..ip + 40]);
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        pseudo.extend_from_slice(&f[ip + 12..ip + 20]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    }
    pseudo.extend_from_slice(&f[l4..l4 + len]);
    sum_ok(&pseudo)
}

/// The echo reply the program makes of echo request `p`, in place: MACs and addresses
/// swapped, TTL 64, type 0, both checksums updated for the changed words only.
fn echo_reply(p: &Pkt<'_>) -> Expected {
    let f = p.f;
    let mut e = Expected::from(f);
    e.set(0, &f[6..12]);
    e.set(6, &f[0..6]);
    e.set(26, &f[30..34]);
    e.set(30, &f[26..30]);
    e.set(22, &[64]);
    let ip_check = adjusted(
        be16(f, 24),
        &[u16::from_be_bytes([f[22], f[23]])],
        &[u16::from_be_bytes([64, f[23]])],
    );
    e.set(24, &ip_check.to_be_bytes());
    e.set(p.off, &[0]);
    let icmp_check = adjusted(be16(f, p.off + 2), &[u16::from_be_bytes([8, 0])], &[0]);
    e.set(p.off + 2, &icmp_check.to_be_bytes());
    e
}

/// RFC 1624 eqn. 3 over big-endian words: the checksum after `old` words became `new`.
fn adjusted(check: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = u32::from(!check);
    for &w in old {
        sum += u32::from(!w);
    }
    for &w in new {
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn addr_words(a: Ipv4Addr) -> [u16; 2] {
    let o = a.octets();
    [
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    ]
}

impl Expected {
    pub(super) fn from(f: &[u8]) -> Self {
        Self {
            bytes: f.to_vec(),
            masked: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn set(&mut self, at: usize, value: &[u8]) {
        self.bytes[at..at + value.len()].copy_from_slice(value);
    }

    pub(super) fn mask(&mut self, at: usize) {
        self.masked.extend([at, at + 1]);
    }

    /// Router's TTL (IPv6: hop limit) − 1 and the next hop's MACs.
    fn hop(&mut self, v6: bool, smac: Mac, dmac: Mac) {
        let ttl = if v6 { 21 } else { 22 };
        self.bytes[ttl] = self.bytes[ttl].wrapping_sub(1);
        self.set(0, &dmac);
        self.set(6, &smac);
    }

    pub(super) fn verify(&self, out: &[u8]) -> Result<(), String> {
        if out.len() != self.bytes.len() {
            return Err(format!(
                "output length {} != expected {}",
                out.len(),
                self.bytes.len()
            ));
        }
        let mut diffs = String::new();
        for (i, (o, e)) in out.iter().zip(&self.bytes).enumerate() {
            if o != e && !self.masked.contains(&i) {
                let _ = write!(diffs, " byte {i}: {o:#04x} (expected {e:#04x});");
            }
        }
        if !diffs.is_empty() {
            return Err(format!("output differs:{diffs}"));
        }
        for check in &self.checks {
            match *check {
                Check::Sum { what, start, end } => {
                    if !sum_ok(&out[start..end]) {
                        return Err(format!(
                            "{what} does not verify (recomputed from scratch over bytes \
                             {start}..{end})"
                        ));
                    }
                }
                Check::L4 {
                    what,
                    ip,
                    l4,
                    len,
                    proto,
                } => {
                    if !l4_ok(out, ip, l4, len, proto) {
                        return Err(format!(
                            "{what} does not verify (recomputed from scratch over the \
                             pseudo-header and bytes {l4}..{})",
                            l4 + len
                        ));
                    }
                    if proto == PROTO_UDP && be16(out, l4 + 6) == 0 {
                        return Err(format!("{what} became 0 (\"no checksum\")"));
                    }
                }
                Check::Word { what, at, value } => {
                    let got = be16(out, at);
                    let zero = |v: u16| v == 0 || v == 0xffff;
                    if got != value && !(zero(got) && zero(value)) {
                        return Err(format!(
                            "{what} is {got:#06x}, expected {value:#06x} (adjusted by the \
                             rewritten fields)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The parsed IP part (IPv4, or IPv6 with its extension headers walked) of a frame the
/// program would parse.
pub(super) struct Pkt<'a> {
    pub(super) f: &'a [u8],
    pub(super) v6: bool,
    /// IPv4 header length (IPv6: 40, the fixed header).
    pub(super) ihl: usize,
    /// IP total length (IPv6: 40 + payload length).
    pub(super) tot: usize,
    /// Offset of the L4 header (IPv6: after the extension headers).
    pub(super) off: usize,
    /// TTL or hop limit.
    pub(super) ttl: u8,
    /// The upper-layer protocol (IPv6: after the extension headers).
    pub(super) proto: u8,
    pub(super) src: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) frag: bool,
    /// DF set.
    pub(super) df: bool,
    pub(super) ingress: u32,
}

impl Pkt<'_> {
    /// A TCP segment's sequence and acknowledgement numbers (0 for UDP, as the program
    /// reads them).
    fn seq_ack(&self) -> (u32, u32) {
        if self.proto != PROTO_TCP {
            return (0, 0);
        }
        let word = |at: usize| u32::from_be_bytes(self.f[at..at + 4].try_into().unwrap());
        (word(self.off + 4), word(self.off + 8))
    }
}

/// What the entry of a flow means for its next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryState {
    Missing,
    Expired,
    Live { closing: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Reuse,
    Schedule,
    Pickup,
}

/// Three-valued: the clock window decides, or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    pub(super) fn values(self) -> &'static [bool] {
        match self {
            Tri::Yes => &[true],
            Tri::No => &[false],
            Tri::Maybe => &[false, true],
        }
    }
}

fn next_step(proto: u8, tcp_flags: u8, state: EntryState) -> Step {
    let tcp = proto == PROTO_TCP;
    let open = tcp_flags & (SYN | ACK) == SYN;
    match state {
        EntryState::Live { closing: true } if tcp && open => Step::Schedule,
        EntryState::Live { .. } => Step::Reuse,
        _ if !tcp || open => Step::Schedule,
        _ => Step::Pickup,
    }
}

fn close_flags(tcp_flags: u8) -> u32 {
    if tcp_flags & RST != 0 {
        FLOW_F_RST
    } else if tcp_flags & FIN != 0 {
        FLOW_F_FIN
    } else {
        0
    }
}

fn idle_timeout_ns(proto: u8, flags: u32) -> u64 {
    let s = if proto != PROTO_TCP {
        IDLE_TIMEOUT_S
    } else if flags & FLOW_F_OPENING != 0 && flags & (FLOW_F_FIN | FLOW_F_RST) == 0 {
        HALF_OPEN_TIMEOUT_S.min(IDLE_TIMEOUT_S)
    } else if flags & FLOW_F_RST != 0 {
        RST_TIMEOUT_S.min(IDLE_TIMEOUT_S)
    } else if flags & FLOW_F_FIN != 0 {
        FIN_TIMEOUT_S.min(IDLE_TIMEOUT_S)
    } else {
        IDLE_TIMEOUT_S
    };
    u64::from(s) * 1_000_000_000
}

/// Whether a flow is idle past its timeout at a time within `now`.
fn expired(flow: &ShadowFlow, proto: u8, now: (u64, u64)) -> Tri {
    let timeout = idle_timeout_ns(proto, flow.flags);
    let least = now.0.saturating_sub(flow.seen.1 + CLOCK_SLACK_NS);
    let most = (now.1 + CLOCK_SLACK_NS).saturating_sub(flow.seen.0);
    if least > timeout {
        Tri::Yes
    } else if most <= timeout {
        Tri::No
    } else {
        Tri::Maybe
    }
}

/// The candidates that may have the latest `last_seen_ns`: those not certainly older
/// (their latest possible clock before another's earliest) than another.
fn latest(found: Vec<ReplyTo>) -> Vec<ReplyTo> {
    let older = |a: &ShadowFlow, b: &ShadowFlow| a.seen.1 + CLOCK_SLACK_NS < b.seen.0;
    found
        .iter()
        .filter(|c| !found.iter().any(|d| older(&c.flow, &d.flow)))
        .copied()
        .collect()
}

fn outcome(action: u32, reason: Reason, out: Out) -> Outcome {
    Outcome {
        action,
        reason,
        out,
        delta: Delta::default(),
        why: "",
    }
}

fn pass(reason: Reason) -> Vec<Outcome> {
    vec![outcome(XDP_PASS, reason, Out::Unchanged)]
}

fn drop_(reason: Reason) -> Vec<Outcome> {
    vec![outcome(XDP_DROP, reason, Out::Unchanged)]
}

impl Model {
    pub(super) fn insert_flow(&mut self, key: Tuple, flow: ShadowFlow) {
        if self.flows.insert(key, flow).is_none() {
            self.flow_keys.push(key);
        }
    }

    /// The keys of the model's flows of one family (IPv6: `v6`), in insertion order.
    pub(super) fn keys(&self, v6: bool) -> Vec<Tuple> {
        self.flow_keys
            .iter()
            .filter(|k| k.is_v6() == v6)
            .copied()
            .collect()
    }

    /// The backend-side tuple of the model's flow `key`: what its backend's replies
    /// carry.
    pub(super) fn reply_tuple(&self, setup: &Setup, key: &Tuple) -> Option<Tuple> {
        let flow = self.flows.get(key)?;
        Some(key.backend_side(setup.backends.get(flow.backend as usize)?))
    }

    /// The flows backend → client packet `t` may belong to, as the reply path finds them:
    /// for each listener the backend endpoint (`t`'s source) serves, the flow of the
    /// client side `t` has there, if that flow's backend is this endpoint. Of several,
    /// the one whose `last_seen_ns` is latest wins (ties: the first by listener id); each
    /// candidate the model's clock bounds cannot place before another is kept, so the
    /// caller allows every outcome that remains. Empty: not a reply of ours.
    pub(super) fn reply_flows(&self, setup: &Setup, t: &Tuple) -> Vec<ReplyTo> {
        latest(self.reply_candidates(setup, t))
    }

    /// [`Model::reply_flows`] for a frame being predicted, counting contested ones.
    fn reply_lookup(&self, setup: &Setup, t: &Tuple) -> Vec<ReplyTo> {
        let found = self.reply_candidates(setup, t);
        if found.len() > 1 {
            self.contested.set(self.contested.get() + 1);
        }
        latest(found)
    }

    /// Every flow whose client side `t` is at a listener of its backend endpoint and whose
    /// backend is that endpoint.
    fn reply_candidates(&self, setup: &Setup, t: &Tuple) -> Vec<ReplyTo> {
        setup
            .endpoint(t.src, t.sport, t.proto)
            .iter()
            .filter_map(|&listener| {
                let key = t.client_side(&setup.listeners[listener]);
                let flow = *self.flows.get(&key)?;
                let b = setup.backends.get(flow.backend as usize)?;
                ((b.addr, b.port) == (t.src, t.sport)).then_some(ReplyTo {
                    key,
                    flow,
                    listener,
                })
            })
            .collect()
    }

    /// Sequence and acknowledgement numbers that fit client → VIP flow `t`: its FIN or RST
    /// is credible near what the backend acknowledged.
    pub(super) fn client_numbers(&self, t: &Tuple) -> Option<(u32, u32)> {
        let flow = self.flows.get(t)?;
        Some((flow.backend_acked?, flow.client_acked))
    }

    /// Numbers that fit backend → client segment `t`: a half-open flow's refusal
    /// acknowledges the SYN; later, the sequence number follows what the client
    /// acknowledged.
    pub(super) fn backend_numbers(&self, setup: &Setup, t: &Tuple) -> Option<(u32, u32)> {
        let flow = self.reply_flows(setup, t).first()?.flow;
        Some(if flow.flags & FLOW_F_OPENING != 0 {
            (0, flow.client_acked)
        } else {
            (flow.client_acked, flow.backend_acked.unwrap_or(0))
        })
    }

    pub(super) fn apply(&mut self, delta: &Delta) {
        if let Some((k, f)) = delta.flow {
            self.insert_flow(k, f);
        }
    }

    /// Every outcome the policy allows for `f` arriving on `ingress`, the program's clock
    /// reading somewhere in `now`.
    pub(super) fn predict(
        &self,
        setup: &Setup,
        lab: &Lab,
        f: &[u8],
        ingress: u32,
        now: (u64, u64),
    ) -> Prediction {
        if f.len() < MIN_FRAME || f.len() > MAX_FRAME {
            return Prediction::Refused;
        }
        Prediction::Outcomes(self.ethernet(setup, lab, f, ingress, now))
    }

    fn ethernet(
        &self,
        setup: &Setup,
        lab: &Lab,
        f: &[u8],
        ingress: u32,
        now: (u64, u64),
    ) -> Vec<Outcome> {
        if be16(f, 12) == 0x86dd {
            return self.ipv6(setup, lab, f, ingress, now);
        }
        if be16(f, 12) != 0x0800 {
            return pass(Reason::PassNotIp);
        }
        if f.len() < 34 {
            return drop_(Reason::DropMalformedIpv4);
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let tot = usize::from(be16(f, 16));
        if f[14] >> 4 != 4 || ihl < 20 || tot < ihl || 14 + tot > f.len() {
            return drop_(Reason::DropMalformedIpv4);
        }
        let p = Pkt {
            f,
            v6: false,
            ihl,
            tot,
            off: 14 + ihl,
            ttl: f[22],
            proto: f[23],
            src: addr_at(f, 26).into(),
            dst: addr_at(f, 30).into(),
            frag: be16(f, 20) & 0x3fff != 0,
            df: be16(f, 20) & 0x4000 != 0,
            ingress,
        };
        if p.proto == PROTO_ICMP {
            return self.icmp(setup, lab, &p);
        }
        if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
            return if setup.is_vip(p.dst) {
                drop_(Reason::DropVipOtherProtocol)
            } else {
                pass(Reason::PassOtherProtocol)
            };
        }
        if p.frag {
            return if setup.is_vip(p.dst) {
                drop_(Reason::DropFragment)
            } else {
                pass(Reason::PassNotForUs)
            };
        }
        let payload = tot - ihl;
        let l4_ok = match p.proto {
            PROTO_TCP => {
                payload >= 20 && {
                    let doff = usize::from(f[p.off + 12] >> 4) * 4;
                    doff >= 20 && doff <= payload
                }
            }
            _ => {
                payload >= 8 && {
                    let len = usize::from(be16(f, p.off + 4));
                    (8..=payload).contains(&len)
                }
            }
        };
        if !l4_ok {
            return if setup.is_vip(p.dst) {
                drop_(Reason::DropMalformedL4)
            } else {
                pass(Reason::PassNotForUs)
            };
        }
        self.l4_packet(setup, lab, &p, now)
    }

    /// An IPv6 frame (`lb_ipv6`): the parser's verdicts and the extension-header walk
    /// (docs/packet-policy.md, "IPv6"), then, for TCP and UDP, what IPv4 gets.
    fn ipv6(
        &self,
        setup: &Setup,
        lab: &Lab,
        f: &[u8],
        ingress: u32,
        now: (u64, u64),
    ) -> Vec<Outcome> {
        let Some(w) = walk6(f) else {
            return drop_(Reason::DropMalformedIpv6);
        };
        let dst = IpAddr::V6(addr6_at(f, 38));
        // What the program does not serve: dropped when addressed to a VIP, passed
        // otherwise.
        let refuse = |reason, otherwise| {
            if setup.is_vip(dst) {
                drop_(reason)
            } else {
                pass(otherwise)
            }
        };
        // The walk stopped at what it refuses or at a fragment: the protocol is unknown.
        match w.stop {
            Stop::Refused => {
                return refuse(Reason::DropExtensionHeader, Reason::PassNotForUs);
            }
            Stop::Fragment => return refuse(Reason::DropFragment, Reason::PassNotForUs),
            Stop::Protocol => {}
        }
        // Neighbour discovery is the kernel's, whatever its addresses: a message whose
        // first 4 bytes lie inside the payload (bytes past the payload length are
        // padding; such a packet goes on as other ICMPv6).
        if w.next == PROTO_ICMPV6 && w.off + 4 <= w.end && (133..=137).contains(&f[w.off]) {
            return pass(Reason::PassNeighbourDiscovery);
        }
        // The rest of ICMPv6 goes on in `lb_icmp6`.
        if w.next == PROTO_ICMPV6 {
            let p = Pkt {
                f,
                v6: true,
                ihl: 40,
                tot: w.end - 14,
                off: w.off,
                ttl: f[21],
                proto: PROTO_ICMPV6,
                src: IpAddr::V6(addr6_at(f, 22)),
                dst,
                frag: false,
                df: false,
                ingress,
            };
            return self.icmp6(setup, lab, &p);
        }
        if w.next != PROTO_TCP && w.next != PROTO_UDP {
            return refuse(Reason::DropVipOtherProtocol, Reason::PassOtherProtocol);
        }
        let payload = w.end - w.off;
        let l4_ok = match w.next {
            PROTO_TCP => {
                payload >= 20 && {
                    let doff = usize::from(f[w.off + 12] >> 4) * 4;
                    doff >= 20 && doff <= payload
                }
            }
            // A UDP checksum of 0 is invalid over IPv6.
            _ => {
                payload >= 8 && {
                    let len = usize::from(be16(f, w.off + 4));
                    (8..=payload).contains(&len) && be16(f, w.off + 6) != 0
                }
            }
        };
        if !l4_ok {
            return refuse(Reason::DropMalformedL4, Reason::PassNotForUs);
        }
        let p = Pkt {
            f,
            v6: true,
            ihl: 40,
            tot: w.end - 14,
            off: w.off,
            ttl: f[21],
            proto: w.next,
            src: IpAddr::V6(addr6_at(f, 22)),
            dst,
            frag: false,
            df: false,
            ingress,
        };
        self.l4_packet(setup, lab, &p, now)
    }

    /// A well-formed TCP/UDP packet of either family: to a listener, a reply of a known
    /// flow, or neither.
    fn l4_packet(&self, setup: &Setup, lab: &Lab, p: &Pkt<'_>, now: (u64, u64)) -> Vec<Outcome> {
        let f = p.f;
        let t = Tuple {
            src: p.src,
            dst: p.dst,
            sport: be16(f, p.off),
            dport: be16(f, p.off + 2),
            proto: p.proto,
        };
        let tcp_flags = if p.proto == PROTO_TCP {
            f[p.off + 13]
        } else {
            0
        };
        if let Some(l) = setup.listener(t.dst, t.dport, t.proto) {
            return self.forward(setup, lab, p, &t, tcp_flags, l, now);
        }
        let replies = self.reply_lookup(setup, &t);
        if !replies.is_empty() {
            return replies
                .iter()
                .flat_map(|to| self.reply(setup, lab, p, &t, to, tcp_flags, replies.len()))
                .collect();
        }
        if setup.is_vip(p.dst) {
            drop_(Reason::DropVipNoListener)
        } else {
            pass(Reason::PassNotForUs)
        }
    }

    /// Client → listener.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the parsed packet"
    )]
    pub(super) fn forward(
        &self,
        setup: &Setup,
        lab: &Lab,
        p: &Pkt<'_>,
        t: &Tuple,
        tcp_flags: u8,
        li: usize,
        now: (u64, u64),
    ) -> Vec<Outcome> {
        let l = &setup.listeners[li];
        if l.denies(t.src) {
            return drop_(Reason::DropAclDenied);
        }
        if p.ttl <= 1 {
            return pass(Reason::PassTtlExpired);
        }
        let mut states = Vec::new();
        match self.flows.get(t) {
            None => states.push(EntryState::Missing),
            Some(flow) => {
                let closing = flow.flags & (FLOW_F_FIN | FLOW_F_RST) != 0;
                for &e in expired(flow, t.proto, now).values() {
                    states.push(if e {
                        EntryState::Expired
                    } else {
                        EntryState::Live { closing }
                    });
                }
            }
        }
        let mut outs = Vec::new();
        for state in states {
            if next_step(t.proto, tcp_flags, state) == Step::Reuse {
                let mut flow = self.flows[t];
                let b = setup.backends[flow.backend as usize];
                if t.proto == PROTO_TCP {
                    let (seq, ack) = p.seq_ack();
                    if tcp_flags & ACK != 0 {
                        flow.client_acked = ack;
                        flow.flags &= !FLOW_F_OPENING;
                    }
                    // A client's FIN or RST closes only near what the backend acknowledged
                    // to this flow (the reply path keeps it in the flow's entry).
                    if flow
                        .backend_acked
                        .is_some_and(|acked| seq.wrapping_sub(acked) < CLOSE_WINDOW)
                    {
                        flow.flags |= close_flags(tcp_flags);
                    }
                }
                flow.seen = now;
                let delta = Delta {
                    flow: Some((*t, flow)),
                };
                outs.extend(self.to_backend(lab, p, b, delta));
                continue;
            }
            // A new flow from a VIP is forged (the setup refuses no other source).
            if setup.is_vip(t.src) {
                outs.extend(drop_(Reason::DropSpoofedSource));
                continue;
            }
            // A SYN on a closing flow's entry keeps the flow's backend (every backend of
            // the setup takes new flows).
            let reopened = match state {
                EntryState::Live { closing: true } => {
                    Some(setup.backends[self.flows[t].backend as usize])
                }
                _ => None,
            };
            let Some(b) = reopened.or_else(|| setup.pick(li, t)) else {
                outs.extend(drop_(Reason::DropNoBackend));
                continue;
            };
            for &collide in self.collision(setup, t, li, &b, now).values() {
                if collide {
                    outs.extend(drop_(Reason::DropReverseCollision));
                    continue;
                }
                let tcp = t.proto == PROTO_TCP;
                let (seq, ack) = p.seq_ack();
                let opening = tcp && tcp_flags & ACK == 0;
                let delta = Delta {
                    flow: Some((
                        *t,
                        ShadowFlow {
                            listener: li,
                            backend: b.id,
                            flags: close_flags(tcp_flags)
                                | if opening { FLOW_F_OPENING } else { 0 },
                            client_acked: if opening {
                                seq.wrapping_add(1)
                            } else if tcp {
                                ack
                            } else {
                                0
                            },
                            backend_acked: None,
                            seen: now,
                        },
                    )),
                };
                outs.extend(self.to_backend(lab, p, b, delta));
            }
        }
        outs
    }

    /// Whether a new flow of listener `li` from `t` to backend `b` would share its
    /// backend-side tuple with a live flow (no FIN/RST seen, within its idle timeout) of
    /// another listener of `b`'s endpoint: the backend could not tell their packets apart.
    /// An endpoint of one listener has no such flow to ask about. Every flow of the model
    /// is of its backend's current generation: the setup is planned once.
    fn collision(
        &self,
        setup: &Setup,
        t: &Tuple,
        li: usize,
        b: &BackendSpec,
        now: (u64, u64),
    ) -> Tri {
        let served = setup.endpoint(b.addr, b.port, t.proto);
        if served.len() <= 1 {
            return Tri::No;
        }
        let mut collides = Tri::No;
        for &other in served.iter().filter(|&&other| other != li) {
            let l = &setup.listeners[other];
            let key = Tuple {
                dst: l.vip,
                dport: l.port,
                ..*t
            };
            let Some(flow) = self.flows.get(&key) else {
                continue;
            };
            let owner = setup.backends[flow.backend as usize];
            if (owner.addr, owner.port) != (b.addr, b.port)
                || flow.flags & (FLOW_F_FIN | FLOW_F_RST) != 0
            {
                continue;
            }
            match expired(flow, t.proto, now) {
                Tri::No => return Tri::Yes,
                Tri::Maybe => collides = Tri::Maybe,
                Tri::Yes => {}
            }
        }
        collides
    }

    /// The destination NAT of a client packet, then the next hop.
    fn to_backend(&self, lab: &Lab, p: &Pkt<'_>, b: BackendSpec, delta: Delta) -> Vec<Outcome> {
        let translated = nat_l4(p, true, b.addr, b.port);
        transmit(
            lab,
            p,
            translated,
            (p.src, b.addr),
            Reason::Forwarded,
            delta,
        )
    }

    /// Backend → client of a known flow.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the parsed packet and its flow"
    )]
    pub(super) fn reply(
        &self,
        setup: &Setup,
        lab: &Lab,
        p: &Pkt<'_>,
        t: &Tuple,
        to: &ReplyTo,
        tcp_flags: u8,
        candidates: usize,
    ) -> Vec<Outcome> {
        let why = if candidates > 1 {
            "one of several flows of this client port whose backend is this endpoint, which \
             the model cannot tell saw a packet last"
        } else {
            ""
        };
        if p.ttl <= 1 {
            let mut o = outcome(XDP_PASS, Reason::PassTtlExpired, Out::Unchanged);
            o.why = why;
            return vec![o];
        }
        // The backend's acknowledgement is kept in the flow; its FIN or RST ends the flow's
        // activity (as the client's does) when the sequence numbers fit: exactly the SYN
        // acknowledged while half-open, otherwise near what the client acknowledged.
        let (seq, ack) = p.seq_ack();
        let mut flow = to.flow;
        if t.proto == PROTO_TCP && tcp_flags & ACK != 0 {
            flow.backend_acked = Some(ack);
        }
        let close = close_flags(tcp_flags);
        if t.proto == PROTO_TCP
            && close != 0
            && if flow.flags & FLOW_F_OPENING != 0 {
                tcp_flags & ACK != 0 && ack == flow.client_acked
            } else {
                seq.wrapping_sub(flow.client_acked) < CLOSE_WINDOW
            }
        {
            flow.flags |= close;
        }
        let delta = Delta {
            flow: Some((to.key, flow)),
        };
        let l = &setup.listeners[to.listener];
        let translated = nat_l4(p, false, l.vip, l.port);
        let mut outs = transmit(
            lab,
            p,
            translated,
            (l.vip, t.dst),
            Reason::ReplyForwarded,
            delta,
        );
        for o in &mut outs {
            o.why = why;
        }
        outs
    }

    /// ICMP: errors about a flow are translated, everything else goes to the kernel.
    pub(super) fn icmp(&self, setup: &Setup, lab: &Lab, p: &Pkt<'_>) -> Vec<Outcome> {
        // Not an error about a flow of ours: to a VIP, an echo request is answered (every
        // VIP of the setup answers pings) and the rest dropped; otherwise the kernel's.
        let other = |why| {
            let mut o = if !setup.is_vip(p.dst) {
                outcome(XDP_PASS, Reason::PassOtherProtocol, Out::Unchanged)
            } else if !p.frag && p.off == 34 && p.f.len() >= 38 && p.f[34] == 8 && p.f[35] == 0 {
                outcome(XDP_TX, Reason::IcmpEchoReply, Out::Expect(echo_reply(p)))
            } else {
                outcome(XDP_DROP, Reason::DropVipOtherProtocol, Out::Unchanged)
            };
            o.why = why;
            vec![o]
        };
        if p.frag {
            return other("an ICMP fragment");
        }
        // The ICMP header, the quoted IPv4 header and 8 bytes of its L4 header, all
        // inside the IP packet.
        if p.off + 36 > 14 + p.tot {
            return other(
                "the IP total length ends before 8 bytes of quoted TCP/UDP header: the \
                 packet quotes no flow (bytes past the total length are not part of it)",
            );
        }
        let f = p.f;
        let q = p.off + 8;
        let kind = f[p.off];
        let inner_proto = f[q + 9];
        if !matches!(kind, 3 | 11 | 12)
            || f[q] != 0x45
            || !(inner_proto == PROTO_TCP || inner_proto == PROTO_UDP)
        {
            return other("not an ICMP error quoting TCP/UDP without IP options");
        }
        let inner_src = IpAddr::V4(addr_at(f, q + 12));
        let inner_dst = IpAddr::V4(addr_at(f, q + 16));
        let sport = be16(f, q + 20);
        let dport = be16(f, q + 22);
        // The quoted packet reversed: the flow (or reverse) key it belongs to.
        let reversed = Tuple {
            src: inner_dst,
            dst: inner_src,
            sport: dport,
            dport: sport,
            proto: inner_proto,
        };
        let replies = self.reply_lookup(setup, &reversed);
        let known = self.flows.contains_key(&reversed) || !replies.is_empty();
        // Sent to the sender of the quoted packet, as every ICMP error is.
        if p.dst != inner_src {
            return other(if known {
                "an ICMP error about a flow but not addressed to the quoted packet's sender \
                 (the client or the VIP): not an error of that flow"
            } else {
                "an ICMP error about no known flow"
            });
        }
        // A reply the LB sent (VIP → client), reported to the VIP: to the backend.
        if let Some(flow) = self.flows.get(&reversed) {
            if p.ttl <= 1 {
                return pass(Reason::PassTtlExpired);
            }
            let b = setup.backends[flow.backend as usize];
            let mut e = icmp_nat(p, q, true, v4(b.addr), b.port);
            // Outer destination: the VIP becomes the backend.
            e.set(30, &octets(b.addr));
            return transmit(
                lab,
                p,
                e,
                (p.src, b.addr),
                Reason::IcmpToBackend,
                Delta::default(),
            );
        }
        // A packet the LB sent to a backend (client → backend), reported to the client:
        // the quoted packet's flow is found as a reply's would be.
        if !replies.is_empty() {
            if p.ttl <= 1 {
                return pass(Reason::PassTtlExpired);
            }
            return replies
                .iter()
                .flat_map(|to| {
                    let l = &setup.listeners[to.listener];
                    let mut e = icmp_nat(p, q, false, v4(l.vip), l.port);
                    if p.src == inner_dst {
                        e.set(26, &octets(l.vip));
                    }
                    transmit(
                        lab,
                        p,
                        e,
                        (p.src, p.dst),
                        Reason::IcmpToClient,
                        Delta::default(),
                    )
                })
                .collect();
        }
        other(if p.ttl <= 1 {
            "an ICMP error about no known flow, TTL ≤ 1: the LB would not forward it, so it \
             is not a TTL expiry of the LB's"
        } else {
            "an ICMP error about no known flow"
        })
    }
}

impl Model {
    /// ICMPv6 other than neighbour discovery (`lb_icmp6`), at `p.off`, behind the
    /// extension headers the policy skips (`lb_ipv6` walked them and hands the offset on).
    /// Errors about a flow are translated, as ICMP's are (`Model::icmp`); anything else is
    /// dropped when addressed to a VIP, but for an echo request without extension headers,
    /// which is answered; the kernel's otherwise.
    fn icmp6(&self, setup: &Setup, lab: &Lab, p: &Pkt<'_>) -> Vec<Outcome> {
        let f = p.f;
        let at = p.off;
        let plain = at == 54;
        // Not an error about a flow of ours: to a VIP, an echo request without extension
        // headers is answered (every VIP of the setup answers pings) and the rest dropped;
        // otherwise the kernel's.
        let other = |why| {
            let mut o = if !setup.is_vip(p.dst) {
                outcome(XDP_PASS, Reason::PassOtherProtocol, Out::Unchanged)
            } else if plain && f.len() >= 58 && f[54] == 128 && f[55] == 0 {
                outcome(XDP_TX, Reason::IcmpEchoReply, Out::Expect(echo_reply6(p)))
            } else {
                outcome(XDP_DROP, Reason::DropVipOtherProtocol, Out::Unchanged)
            };
            o.why = why;
            vec![o]
        };
        // The error (8 bytes), the quoted IPv6 header and 8 bytes of TCP/UDP, inside the
        // IP packet.
        let payload = (14 + p.tot).saturating_sub(at);
        if payload < 56 {
            return other(
                "the payload length ends before 8 bytes of quoted TCP/UDP header: the \
                 packet quotes no flow",
            );
        }
        let q = at + 8;
        if !matches!(f[at], 1..=4)
            || f[q] >> 4 != 6
            || !(f[q + 6] == PROTO_TCP || f[q + 6] == PROTO_UDP)
        {
            return other("not an ICMPv6 error quoting TCP/UDP without extension headers");
        }
        let inner_src = IpAddr::V6(addr6_at(f, q + 8));
        let inner_dst = IpAddr::V6(addr6_at(f, q + 24));
        // The quoted packet reversed: the flow (or reverse) key it belongs to.
        let reversed = Tuple {
            src: inner_dst,
            dst: inner_src,
            sport: be16(f, q + 42),
            dport: be16(f, q + 40),
            proto: f[q + 6],
        };
        // Sent to the sender of the quoted packet, as every error is.
        if p.dst != inner_src {
            return other("an ICMPv6 error not addressed to the quoted packet's sender");
        }
        // A reply the LB sent (VIP → client), reported to the VIP: to the backend.
        if let Some(flow) = self.flows.get(&reversed) {
            if p.ttl <= 1 {
                return pass(Reason::PassTtlExpired);
            }
            let b = setup.backends[flow.backend as usize];
            let e = icmp6_nat(p, true, b.addr, b.port, Some(b.addr));
            return transmit(
                lab,
                p,
                e,
                (p.src, b.addr),
                Reason::IcmpToBackend,
                Delta::default(),
            );
        }
        // A packet the LB sent to a backend (client → backend), reported to the client:
        // the quoted packet's flow is found as a reply's would be.
        let replies = self.reply_lookup(setup, &reversed);
        if replies.is_empty() {
            return other("an ICMPv6 error about no known flow");
        }
        replies
            .iter()
            .flat_map(|to| {
                let l = &setup.listeners[to.listener];
                // Sent by the backend itself: the client only knows the VIP.
                let from_backend = p.src == inner_dst;
                let e = icmp6_nat(p, false, l.vip, l.port, from_backend.then_some(l.vip));
                if p.ttl <= 1 {
                    return vec![outcome(XDP_PASS, Reason::PassTtlExpired, Out::Unchanged)];
                }
                let src = if from_backend { l.vip } else { p.src };
                transmit(
                    lab,
                    p,
                    e,
                    (src, p.dst),
                    Reason::IcmpToClient,
                    Delta::default(),
                )
            })
            .collect()
    }
}

/// The echo reply the program makes of IPv6 echo request `p`, in place: MACs and
/// addresses swapped (which leaves the pseudo-header's sum as it was), hop limit 64, type
/// 129, the ICMPv6 checksum updated for the type.
fn echo_reply6(p: &Pkt<'_>) -> Expected {
    let f = p.f;
    let mut e = Expected::from(f);
    e.set(0, &f[6..12]);
    e.set(6, &f[0..6]);
    e.set(22, &f[38..54]);
    e.set(38, &f[22..38]);
    e.set(21, &[64]);
    e.set(54, &[129]);
    e.mask(56);
    e.checks.push(Check::Word {
        what: "ICMPv6 checksum",
        at: 56,
        value: adjusted(be16(f, 56), &[0x8000], &[0x8100]),
    });
    icmp6_checksum(&mut e, f, 54, 14 + p.tot);
    e
}

/// The ICMPv6 checksum (at 56) of the expected frame, over the outer pseudo-header and
/// the message to `end`: checked from scratch when the input's verified.
fn icmp6_checksum(e: &mut Expected, f: &[u8], l4: usize, end: usize) {
    if end >= l4 + 4 && l4_ok(f, 14, l4, end - l4, PROTO_ICMPV6) {
        e.checks.push(Check::L4 {
            what: "ICMPv6 checksum",
            ip: 14,
            l4,
            len: end - l4,
            proto: PROTO_ICMPV6,
        });
    }
}

/// An ICMPv6 error (at `p.off`, its quote 8 bytes further) with the quoted packet's
/// source (`src`) or destination rewritten to `addr:port`, with the quoted L4 checksum
/// (UDP's always, TCP's when quoted); `outer`: the outer destination (for a quoted
/// source) or source rewritten too. The ICMPv6 checksum covers all of it and the outer
/// addresses (its pseudo-header).
fn icmp6_nat(p: &Pkt<'_>, src: bool, addr: IpAddr, port: u16, outer: Option<IpAddr>) -> Expected {
    let f = p.f;
    let q = p.off + 8;
    let end = 14 + p.tot;
    let mut e = Expected::from(f);
    let addr_off = q + if src { 8 } else { 24 };
    let port_off = q + if src { 40 } else { 42 };
    let mut old = words(IpAddr::V6(addr6_at(f, addr_off)));
    old.push(be16(f, port_off));
    let mut new = words(addr);
    new.push(port);
    e.set(addr_off, &octets(addr));
    e.set(port_off, &port.to_be_bytes());
    // The quoted L4 checksum, and what it adds to the ICMPv6 checksum's change.
    let (mut icmp_old, mut icmp_new) = (old.clone(), new.clone());
    let l4_check = if f[q + 6] == PROTO_UDP {
        Some(q + 46)
    } else {
        Some(q + 56).filter(|&at| at + 2 <= end)
    };
    if let Some(at) = l4_check {
        let value = adjusted(be16(f, at), &old, &new);
        e.mask(at);
        e.checks.push(Check::Word {
            what: "quoted L4 checksum",
            at,
            value,
        });
        // Which of the two zeros the program writes is its choice; either sums the same.
        icmp_old.push(be16(f, at));
        icmp_new.push(value);
    }
    if let Some(outer) = outer {
        let at = if src { 38 } else { 22 };
        icmp_old.extend(words(IpAddr::V6(addr6_at(f, at))));
        icmp_new.extend(words(outer));
        e.set(at, &octets(outer));
    }
    let check = p.off + 2;
    e.mask(check);
    e.checks.push(Check::Word {
        what: "ICMPv6 checksum",
        at: check,
        value: adjusted(be16(f, check), &icmp_old, &icmp_new),
    });
    icmp6_checksum(&mut e, f, p.off, end);
    e
}

/// The ICMPv6 Packet Too Big (type 2) the program answers TCP/UDP packet `p` with when
/// its translation is too big for an egress of `mtu`: MACs swapped, from the packet's
/// destination to its source, hop limit 64, traffic class and flow label 0, quoting the
/// packet as it came in (its IPv6 header, extension headers and 8 bytes of TCP/UDP); the
/// frame cut behind the quote (110 bytes without extension headers). The translation is
/// undone incrementally in the quote, so a quoted UDP checksum may come back as the other
/// zero.
fn packet_too_big6(p: &Pkt<'_>, mtu: u32) -> Expected {
    let f = p.f;
    let quote = &f[14..p.off + 8];
    let length = 8 + quote.len();
    let mut out = Vec::with_capacity(62 + quote.len());
    out.extend_from_slice(&f[6..12]);
    out.extend_from_slice(&f[0..6]);
    out.extend_from_slice(&f[12..14]);
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(length as u16).to_be_bytes());
    out.extend_from_slice(&[PROTO_ICMPV6, 64]);
    out.extend_from_slice(&f[38..54]);
    out.extend_from_slice(&f[22..38]);
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&mtu.to_be_bytes());
    out.extend_from_slice(quote);
    let mut e = Expected::from(&out);
    e.mask(56);
    e.checks.push(Check::L4 {
        what: "ICMPv6 checksum",
        ip: 14,
        l4: 54,
        len: length,
        proto: PROTO_ICMPV6,
    });
    if p.proto == PROTO_UDP {
        // The quoted UDP checksum: 48 bytes further than in the packet.
        let at = p.off + 6 + 48;
        e.mask(at);
        e.checks.push(Check::Word {
            what: "quoted UDP checksum",
            at,
            value: be16(f, p.off + 6),
        });
    }
    e
}

/// The IP header checksum of the expected frame: masked, and checked when the input's
/// verified.
fn ip_checksum(e: &mut Expected, f: &[u8], ihl: usize) {
    e.mask(24);
    if sum_ok(&f[14..14 + ihl]) {
        e.checks.push(Check::Sum {
            what: "IPv4 header checksum",
            start: 14,
            end: 14 + ihl,
        });
    }
}

/// A TCP/UDP packet with its destination (`dst`) or source rewritten, checksums to
/// match; TTL and MACs untouched (what the kernel gets when the program passes it).
fn nat_l4(p: &Pkt<'_>, dst: bool, addr: IpAddr, port: u16) -> Expected {
    if p.v6 {
        return nat66(p, dst, addr, port);
    }
    let addr = v4(addr);
    let f = p.f;
    let mut e = Expected::from(f);
    e.set(if dst { 30 } else { 26 }, &addr.octets());
    e.set(p.off + if dst { 2 } else { 0 }, &port.to_be_bytes());
    ip_checksum(&mut e, f, p.ihl);
    let payload = p.tot - p.ihl;
    if p.proto == PROTO_TCP {
        e.mask(p.off + 16);
        if l4_ok(f, 14, p.off, payload, PROTO_TCP) {
            e.checks.push(Check::L4 {
                what: "TCP checksum",
                ip: 14,
                l4: p.off,
                len: payload,
                proto: PROTO_TCP,
            });
        }
    } else if be16(f, p.off + 6) != 0 {
        // A UDP checksum of 0 ("none") must stay 0: not masked.
        e.mask(p.off + 6);
        let len = usize::from(be16(f, p.off + 4));
        if l4_ok(f, 14, p.off, len, PROTO_UDP) {
            e.checks.push(Check::L4 {
                what: "UDP checksum",
                ip: 14,
                l4: p.off,
                len,
                proto: PROTO_UDP,
            });
        }
    }
    e
}

/// NAT66 of a TCP/UDP packet (`nat_l4` for IPv6): one address and one port rewritten,
/// no header checksum, the TCP or UDP checksum updated through its pseudo-header (RFC
/// 1624; a UDP result of 0 goes out as 0xffff, which `Check::Word` counts as equal).
/// Extension headers stay as they were.
fn nat66(p: &Pkt<'_>, dst: bool, addr: IpAddr, port: u16) -> Expected {
    let f = p.f;
    let mut e = Expected::from(f);
    let addr_off = if dst { 38 } else { 22 };
    let port_off = p.off + if dst { 2 } else { 0 };
    let old_addr = IpAddr::V6(addr6_at(f, addr_off));
    let old_port = be16(f, port_off);
    e.set(addr_off, &octets(addr));
    e.set(port_off, &port.to_be_bytes());
    let (at, len, what) = if p.proto == PROTO_TCP {
        (p.off + 16, 14 + p.tot - p.off, "TCP checksum")
    } else {
        (p.off + 6, usize::from(be16(f, p.off + 4)), "UDP checksum")
    };
    let mut old = words(old_addr);
    old.push(old_port);
    let mut new = words(addr);
    new.push(port);
    e.mask(at);
    e.checks.push(Check::Word {
        what,
        at,
        value: adjusted(be16(f, at), &old, &new),
    });
    if l4_ok(f, 14, p.off, len, p.proto) {
        e.checks.push(Check::L4 {
            what,
            ip: 14,
            l4: p.off,
            len,
            proto: p.proto,
        });
    }
    e
}

/// An ICMP error with the quoted packet's source (`src`) or destination rewritten: the
/// quoted IP checksum, the quoted L4 checksum when the quote holds it, the ICMP checksum
/// and the outer IP checksum (outer addresses are set by the caller).
fn icmp_nat(p: &Pkt<'_>, q: usize, src: bool, addr: Ipv4Addr, port: u16) -> Expected {
    let f = p.f;
    let mut e = Expected::from(f);
    let addr_off = q + if src { 12 } else { 16 };
    let port_off = q + 20 + if src { 0 } else { 2 };
    let old_addr = addr_at(f, addr_off);
    let old_port = be16(f, port_off);
    e.set(addr_off, &addr.octets());
    e.set(port_off, &port.to_be_bytes());
    e.mask(q + 10);
    if sum_ok(&f[q..q + 20]) {
        e.checks.push(Check::Sum {
            what: "quoted IPv4 header checksum",
            start: q,
            end: q + 20,
        });
    }
    let end = 14 + p.tot;
    let l4_check = if f[q + 9] == PROTO_UDP {
        Some(q + 26)
    } else {
        Some(q + 36)
    };
    if let Some(at) = l4_check.filter(|&at| at + 2 <= end) {
        let old = be16(f, at);
        // A quoted UDP checksum of 0 stays 0.
        if !(f[q + 9] == PROTO_UDP && old == 0) {
            let [a0, a1] = addr_words(old_addr);
            let [n0, n1] = addr_words(addr);
            e.mask(at);
            e.checks.push(Check::Word {
                what: "quoted L4 checksum",
                at,
                value: adjusted(old, &[a0, a1, old_port], &[n0, n1, port]),
            });
        }
    }
    e.mask(p.off + 2);
    if sum_ok(&f[p.off..end]) {
        e.checks.push(Check::Sum {
            what: "ICMP checksum",
            start: p.off,
            end,
        });
    }
    ip_checksum(&mut e, f, p.ihl);
    e
}

/// The ICMP "fragmentation needed" (type 3, code 4) the program answers TCP/UDP packet `p`
/// with when it is too big for an egress of `mtu`: MACs swapped, from the packet's
/// destination to its source, TTL 64, DF with id 0, quoting the packet as it came in (its
/// IPv4 header and 8 bytes of TCP/UDP). The translation is undone incrementally in the
/// quote, so its checksums may come back as the other zero (0x0000 for 0xffff).
fn frag_needed(p: &Pkt<'_>, mtu: u16) -> Expected {
    let f = p.f;
    let mut out = Vec::with_capacity(70);
    out.extend_from_slice(&f[6..12]);
    out.extend_from_slice(&f[0..6]);
    out.extend_from_slice(&f[12..14]);
    let mut ip = vec![0x45, 0, 0, 56, 0, 0, 0x40, 0, 64, PROTO_ICMP, 0, 0];
    ip.extend_from_slice(&f[30..34]);
    ip.extend_from_slice(&f[26..30]);
    let c = csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    out.extend_from_slice(&ip);
    let [hi, lo] = mtu.to_be_bytes();
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0, hi, lo]);
    out.extend_from_slice(&f[14..42]);
    let mut e = Expected::from(&out);
    e.mask(36);
    e.checks.push(Check::Sum {
        what: "ICMP checksum",
        start: 34,
        end: 70,
    });
    e.mask(52);
    e.checks.push(Check::Word {
        what: "quoted IPv4 header checksum",
        at: 52,
        value: be16(f, 24),
    });
    if p.proto == PROTO_UDP && be16(f, 40) != 0 {
        e.mask(68);
        e.checks.push(Check::Word {
            what: "quoted UDP checksum",
            at: 68,
            value: be16(f, 40),
        });
    }
    e
}

/// `bpf_fib_lookup` from `src` towards `dst` (`route`) for the translated packet, and
/// what the program then does with it.
fn transmit(
    lab: &Lab,
    p: &Pkt<'_>,
    translated: Expected,
    (src, dst): (IpAddr, IpAddr),
    sent: Reason,
    delta: Delta,
) -> Vec<Outcome> {
    via(lab, p, &translated, lab.route_of(src, dst), sent, &delta)
}

/// What the program does with the translated packet given the FIB's answer `route`.
fn via(
    lab: &Lab,
    p: &Pkt<'_>,
    translated: &Expected,
    route: Route,
    sent: Reason,
    delta: &Delta,
) -> Vec<Outcome> {
    let with = |action, reason, out| Outcome {
        action,
        reason,
        out,
        delta: delta.clone(),
        why: "",
    };
    let kernel = |reason| with(XDP_PASS, reason, Out::Expect(translated.clone()));
    // Too big for the egress: an IPv4 TCP/UDP packet with DF and no IP options is
    // answered with fragmentation needed to its sender, out where it came in, an IPv6 one
    // with Packet Too Big; anything else (no DF, options, a translated ICMP error) goes
    // to the kernel.
    let too_big = || {
        let answered = match sent {
            Reason::Forwarded => Some(Reason::IcmpFragNeededToClient),
            Reason::ReplyForwarded => Some(Reason::IcmpFragNeededToBackend),
            _ => None,
        };
        match answered {
            Some(reason) if !p.v6 && p.df && p.ihl == 20 => {
                with(XDP_TX, reason, Out::Expect(frag_needed(p, MTU as u16)))
            }
            // IPv6: Packet Too Big, extension headers quoted.
            Some(reason) if p.v6 => {
                with(XDP_TX, reason, Out::Expect(packet_too_big6(p, MTU as u32)))
            }
            _ => kernel(Reason::PassFragNeeded),
        }
    };
    match route {
        Route::Unreachable => vec![with(XDP_DROP, Reason::DropNoRoute, Out::Any)],
        Route::Unknown => {
            let mut outcomes = vec![
                with(XDP_DROP, Reason::DropNoRoute, Out::Any),
                kernel(Reason::PassNeighUnknown),
            ];
            if p.tot > MTU {
                outcomes.push(too_big());
            }
            outcomes
        }
        Route::OrNotForwarded(route) => {
            let mut outcomes = via(lab, p, translated, *route, sent, delta);
            if !outcomes.iter().any(|o| o.reason == Reason::DropNoRoute) {
                outcomes.push(with(XDP_DROP, Reason::DropNoRoute, Out::Any));
            }
            outcomes
        }
        _ if p.tot > MTU => vec![too_big()],
        Route::NoNeigh => vec![kernel(Reason::PassNeighUnknown)],
        Route::Neigh {
            ifindex,
            smac,
            dmac,
        } => {
            let action = if ifindex == p.ingress {
                XDP_TX
            } else if ifindex == lab.client_if || ifindex == lab.backend_if {
                XDP_REDIRECT
            } else {
                return vec![kernel(Reason::PassNoTxPort)];
            };
            let mut e = translated.clone();
            e.hop(p.v6, smac, dmac);
            vec![with(action, sent, Out::Expect(e))]
        }
    }
}

/// ICMPv6's next-header number.
const PROTO_ICMPV6: u8 = 58;

/// Where the IPv6 parser's extension-header walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// At the upper-layer protocol (`Walk6::next`, at `Walk6::off`).
    Protocol,
    /// At a header the policy refuses (a routing header with segments left, a hop-by-hop
    /// header not first), or a chain longer than 5 headers or 256 bytes.
    Refused,
    /// At a fragment header other than an atomic fragment's.
    Fragment,
}

/// The IPv6 header and its extension-header walk, as `parse6::ipv6` makes them.
#[derive(Clone, Copy, Debug)]
struct Walk6 {
    /// End of the IP packet in the frame (14 + 40 + payload length).
    end: usize,
    /// The next header where the walk stopped.
    next: u8,
    /// Offset of the header after the last one walked.
    off: usize,
    stop: Stop,
}

/// `parse6::ipv6`: `None` when the packet is malformed (`drop_malformed_ipv6`): its fixed
/// header truncated, a version other than 6, a payload length past the frame, an
/// extension header truncated by the frame or running past the payload.
fn walk6(f: &[u8]) -> Option<Walk6> {
    const FIRST: usize = 54;
    const MAX_L4_OFFSET: usize = FIRST + MAX_EXTENSION_BYTES;
    let is_extension = |next: u8| matches!(next, 0 | 43 | 44 | 60);
    if f.len() < FIRST || f[14] >> 4 != 6 {
        return None;
    }
    let end = FIRST + usize::from(be16(f, 18));
    if end > f.len() {
        return None;
    }
    let (mut next, mut off) = (f[20], FIRST);
    let stopped = |next, off, stop| {
        Some(Walk6 {
            end,
            next,
            off,
            stop,
        })
    };
    let mut walked = 0;
    while walked < MAX_EXTENSION_HEADERS && is_extension(next) {
        // Its first 8 bytes must be in the frame, all of it in the payload.
        if off + 8 > f.len() {
            return None;
        }
        let len = if next == 44 {
            8
        } else {
            (usize::from(f[off + 1]) + 1) * 8
        };
        if off + len > end {
            return None;
        }
        let refused = (next == 0 && walked != 0) || (next == 43 && f[off + 3] != 0);
        let fragment = next == 44 && be16(f, off + 2) & 0xfff9 != 0;
        next = f[off];
        off += len;
        walked += 1;
        if refused || off > MAX_L4_OFFSET {
            return stopped(next, off, Stop::Refused);
        }
        if fragment {
            return stopped(next, off, Stop::Fragment);
        }
    }
    // The chain goes on past the bound.
    if is_extension(next) {
        return stopped(next, off, Stop::Refused);
    }
    stopped(next, off, Stop::Protocol)
}

/// The 5-tuple of a TCP/UDP frame of either family whose headers the program would parse
/// that far (for reading its flow back).
pub(super) fn tuple_of(f: &[u8]) -> Option<Tuple> {
    if f.len() < 34 {
        return None;
    }
    let (src, dst, off, proto): (IpAddr, IpAddr, usize, u8) = match be16(f, 12) {
        0x0800 => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            (
                addr_at(f, 26).into(),
                addr_at(f, 30).into(),
                14 + ihl,
                f[23],
            )
        }
        0x86dd => {
            let w = walk6(f).filter(|w| w.stop == Stop::Protocol)?;
            (
                addr6_at(f, 22).into(),
                addr6_at(f, 38).into(),
                w.off,
                w.next,
            )
        }
        _ => return None,
    };
    if f.len() < off + 4 || !(proto == PROTO_TCP || proto == PROTO_UDP) {
        return None;
    }
    Some(Tuple {
        src,
        dst,
        sport: be16(f, off),
        dport: be16(f, off + 2),
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fuzz::lab::{B0, B1, CLIENT, CLIENT6, OTHER6, VIP, VIP2, VIP6},
        packet::{ExtHeader, Frame, Frame6, SYN},
    };

    const S: u64 = 1_000_000_000;

    /// The walk of a SYN to the IPv6 VIP through `ext`: where it stops, and what it stops
    /// at.
    fn walked(ext: Vec<ExtHeader>) -> Option<(Stop, u8, usize)> {
        let mut f = Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN);
        f.ext = ext;
        walk6(&f.build()).map(|w| (w.stop, w.next, w.off))
    }

    #[test]
    fn the_ipv6_walk_follows_the_extension_header_policy() {
        let opts = |n| vec![ExtHeader::DestOpts(vec![]); n];
        // At most 5 headers.
        assert_eq!(walked(opts(5)), Some((Stop::Protocol, PROTO_TCP, 54 + 40)));
        assert_eq!(walked(opts(6)).map(|w| w.0), Some(Stop::Refused));
        // At most 256 bytes of them.
        let bytes = |total: usize| {
            vec![
                ExtHeader::DestOpts(vec![0; 126]),
                ExtHeader::DestOpts(vec![0; total - 130]),
            ]
        };
        assert_eq!(
            walked(bytes(256)),
            Some((Stop::Protocol, PROTO_TCP, 54 + 256))
        );
        assert_eq!(walked(bytes(264)).map(|w| w.0), Some(Stop::Refused));
        // Hop-by-hop first only; routing with no segment left; atomic fragments.
        let hbh = || ExtHeader::HopByHop(vec![]);
        assert_eq!(walked(vec![hbh()]).map(|w| w.0), Some(Stop::Protocol));
        assert_eq!(
            walked(vec![ExtHeader::DestOpts(vec![]), hbh()]).map(|w| w.0),
            Some(Stop::Refused)
        );
        assert_eq!(
            walked(vec![ExtHeader::srh(0, &[VIP6, OTHER6])]).map(|w| w.0),
            Some(Stop::Protocol)
        );
        assert_eq!(
            walked(vec![ExtHeader::srh(1, &[OTHER6, VIP6])]).map(|w| w.0),
            Some(Stop::Refused)
        );
        let fragment = |offset, more| ExtHeader::Fragment {
            offset,
            more,
            id: 1,
        };
        assert_eq!(
            walked(vec![fragment(0, false)]).map(|w| w.0),
            Some(Stop::Protocol)
        );
        assert_eq!(
            walked(vec![fragment(0, true)]).map(|w| w.0),
            Some(Stop::Fragment)
        );
        assert_eq!(
            walked(vec![fragment(1, false)]).map(|w| w.0),
            Some(Stop::Fragment)
        );
        // A header running past the payload, or cut by the frame: malformed.
        let past = ExtHeader::Raw {
            kind: 60,
            bytes: vec![40, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(walked(vec![past]), None);
        let f = Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN)
            .ext(ExtHeader::DestOpts(vec![]))
            .build();
        assert!(walk6(&f[..58]).is_none());
    }

    /// The setup and its listeners VIP:80 and VIP2:80, which share B0:8080.
    struct Shared {
        setup: Setup,
        web: usize,
        web2: usize,
    }

    impl Shared {
        fn new() -> Self {
            let setup = Setup::standard();
            let web = setup.listener(VIP.into(), 80, PROTO_TCP).unwrap();
            let web2 = setup.listener(VIP2.into(), 80, PROTO_TCP).unwrap();
            Self { setup, web, web2 }
        }

        /// The listener's backend entry of `addr`:8080.
        fn member(&self, listener: usize, addr: Ipv4Addr) -> BackendSpec {
            self.setup.listeners[listener]
                .members
                .iter()
                .map(|&id| self.setup.backends[id as usize])
                .find(|b| b.addr == IpAddr::V4(addr) && b.port == 8080)
                .unwrap()
        }

        /// Client port 40000 to `vip`:80.
        fn key(vip: Ipv4Addr) -> Tuple {
            Tuple {
                src: CLIENT.into(),
                dst: vip.into(),
                sport: 40000,
                dport: 80,
                proto: PROTO_TCP,
            }
        }

        fn flow(listener: usize, b: BackendSpec, seen: (u64, u64)) -> ShadowFlow {
            ShadowFlow {
                listener,
                backend: b.id,
                flags: 0,
                client_acked: 1,
                backend_acked: Some(1),
                seen,
            }
        }

        /// A packet of `addr`:8080 to the client port.
        fn reply(addr: Ipv4Addr) -> Tuple {
            Tuple {
                src: addr.into(),
                dst: CLIENT.into(),
                sport: 8080,
                dport: 40000,
                proto: PROTO_TCP,
            }
        }
    }

    #[test]
    fn a_backend_packet_answers_only_a_flow_whose_backend_sent_it() {
        let s = Shared::new();
        let mut m = Model::default();
        let b1 = s.member(s.web, B1);
        m.insert_flow(Shared::key(VIP), Shared::flow(s.web, b1, (0, 0)));
        assert!(m.reply_flows(&s.setup, &Shared::reply(B0)).is_empty());
        let found = m.reply_flows(&s.setup, &Shared::reply(B1));
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].key, found[0].listener), (Shared::key(VIP), s.web));
    }

    #[test]
    fn of_two_flows_on_a_shared_endpoint_the_latest_answers_or_either_when_unknown() {
        let s = Shared::new();
        let mut m = Model::default();
        m.insert_flow(
            Shared::key(VIP),
            Shared::flow(s.web, s.member(s.web, B0), (S, S + 1)),
        );
        m.insert_flow(
            Shared::key(VIP2),
            Shared::flow(s.web2, s.member(s.web2, B0), (2 * S, 2 * S + 1)),
        );
        let found = m.reply_flows(&s.setup, &Shared::reply(B0));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].listener, s.web2);
        // Within the clock's slack of each other: the model cannot order them.
        m.insert_flow(
            Shared::key(VIP),
            Shared::flow(s.web, s.member(s.web, B0), (2 * S, 2 * S + 1)),
        );
        assert_eq!(m.reply_flows(&s.setup, &Shared::reply(B0)).len(), 2);
    }

    #[test]
    fn a_new_flow_collides_with_a_live_flow_of_another_listener_of_a_shared_endpoint() {
        let s = Shared::new();
        let now = (1000 * S, 1000 * S + 1);
        let b0 = s.member(s.web2, B0);
        let new = Shared::key(VIP2);
        let collision = |m: &Model| m.collision(&s.setup, &new, s.web2, &b0, now);
        let mut m = Model::default();
        assert_eq!(collision(&m), Tri::No);
        let live = Shared::flow(s.web, s.member(s.web, B0), now);
        m.insert_flow(Shared::key(VIP), live);
        assert_eq!(collision(&m), Tri::Yes);
        // Closed, or idle past its timeout: no longer live.
        for flags in [FLOW_F_FIN, FLOW_F_RST] {
            m.insert_flow(Shared::key(VIP), ShadowFlow { flags, ..live });
            assert_eq!(collision(&m), Tri::No);
        }
        let idle = now.0 - idle_timeout_ns(PROTO_TCP, 0) - S;
        m.insert_flow(
            Shared::key(VIP),
            ShadowFlow {
                seen: (idle, idle),
                ..live
            },
        );
        assert_eq!(collision(&m), Tri::No);
        // Another backend of the other listener: another backend-side tuple.
        m.insert_flow(
            Shared::key(VIP),
            Shared::flow(s.web, s.member(s.web, B1), now),
        );
        assert_eq!(collision(&m), Tri::No);
        // Its own listener's flow on that port is the one a new flow replaces.
        m.insert_flow(new, Shared::flow(s.web2, b0, now));
        assert_eq!(collision(&m), Tri::No);
        // B1:8080 serves one listener: nothing to collide with.
        let b1 = s.member(s.web, B1);
        assert_eq!(
            m.collision(&s.setup, &Shared::key(VIP), s.web, &b1, now),
            Tri::No
        );
    }

    #[test]
    fn adjusted_checksum_matches_a_full_recomputation() {
        let mut f = Frame::udp((CLIENT, 40000), (VIP, 53)).payload(b"x").build();
        let old = addr_at(&f, 30);
        let old_port = be16(&f, 36);
        let check = be16(&f, 40);
        f[30..34].copy_from_slice(&B0.octets());
        f[36..38].copy_from_slice(&5353u16.to_be_bytes());
        let [o0, o1] = addr_words(old);
        let [n0, n1] = addr_words(B0);
        let adj = adjusted(check, &[o0, o1, old_port], &[n0, n1, 5353]);
        f[40..42].copy_from_slice(&adj.to_be_bytes());
        assert!(l4_ok(&f, 14, 34, 9, PROTO_UDP));
    }
}
