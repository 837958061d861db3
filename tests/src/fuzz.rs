//! Packet fuzzing through BPF_PROG_TEST_RUN, every verdict checked against a host-side
//! model of the packet policy (`docs/packet-policy.md`).
//!
//! - [`Lab`]: a namespace with three LB interfaces (client side `cl0` and backend side
//!   `be0`, both redirect targets, and `ot0`, which is not), `ip_forward=1` and permanent
//!   neighbours, so `bpf_fib_lookup` answers deterministically for every address the
//!   generator uses.
//! - [`Setup`]: the listeners, backends, VIP markers and the access list the run
//!   installs. Every listener either has one backend or uses `tch`, so the backend of a
//!   packet is a function of its 4-tuple, whatever the flow table holds.
//! - [`Model`]: what the policy says about a frame, computed from its bytes, the setup and
//!   a shadow of the flow and reverse tables that the model keeps itself (the generator
//!   bounds the number of distinct flows far below the table size, so the LRU never
//!   evicts and the shadow stays exact). Time only matters for idle timeouts; the model
//!   bounds the program's clock between two readings around each run and, when a
//!   timeout falls inside that window, accepts either outcome and re-reads the entry.
//! - [`run`]: the generator (a seeded SplitMix64, no other randomness), the runs and
//!   every check: the verdict and its reason, exactly one verdict counter moved by one,
//!   XDP_ABORTED never, no frame forwarded that the policy does not forward, the output
//!   bytes (addresses, ports, TTL, MACs, every other byte untouched) and its checksums
//!   recomputed from scratch, and at the end the counters' sum and the whole flow table.
//!
//! Where the model and the program disagree the run goes on; the [`Report`] lists each
//! kind of disagreement with its first examples (input bytes, expected, observed) and the
//! seed and packet number that reproduce it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    ACL_DENY, ACL_NONE, BACKEND_F_USABLE, Backend, CLOSE_WINDOW, FIN_TIMEOUT_S,
    FLOW_F_BACKEND_ACKED, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_RST, FlowKey, HALF_OPEN_TIMEOUT_S,
    Listener, ListenerKey, MAGLEV_TABLE_SIZE, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RST_TIMEOUT_S,
    Reason, Scheduler, TableMeta, Verdict, csum, hash,
    maglev::{self, MaglevBackend},
    wrr,
};
use lb_ctl::dataplane::{DataPlane, LoadOptions, MapSizes};

use crate::{
    Netns,
    netns::{unique_prefix, veth},
    packet::{ACK, FIN, Frame, Mac, PSH, RST, SYN, Transport},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and longer than a
/// page minus the XDP headroom and the shared info.
const MIN_FRAME: usize = 14;
const MAX_FRAME: usize = 3520;
/// MTU of the lab's interfaces (veth default).
const MTU: usize = 1500;
/// Idle timeout of every listener of the setup (TCP and UDP), seconds.
const IDLE_TIMEOUT_S: u32 = 900;
/// Slack around clock readings: the program's coarse clock and ours may tick apart.
const CLOCK_SLACK_NS: u64 = 10_000_000;

// ---------------------------------------------------------------------------------------
// Randomness

/// SplitMix64: small, fast, and every run of a seed is the same.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as u64, hi as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The lab

pub const LB_CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x01];
pub const LB_BACKEND_MAC: Mac = [0x02, 0, 0, 0, 0x0b, 0x01];
pub const LB_OTHER_MAC: Mac = [0x02, 0, 0, 0, 0x0d, 0x01];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// The first VIP: listeners on TCP 80 (tch over three backends), UDP 53 (tch, with a
/// deny list), TCP 8080 (no backend) and UDP 5000.
pub const VIP: Ipv4Addr = ip(198, 19, 0, 100);
/// The second VIP: TCP 80 (shares backend B0:8080 with VIP:80, so reverse entries can
/// collide), UDP 53 (its backend has no route), TCP 443 (its backend is behind `ot0`).
pub const VIP2: Ipv4Addr = ip(198, 19, 0, 101);
/// A VIP marker without any listener.
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

const B0_MAC: Mac = [0x02, 0, 0, 0, 0, 0xb0];
const B1_MAC: Mac = [0x02, 0, 0, 0, 0, 0xb1];
const OT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xd0];
const OT2_MAC: Mac = [0x02, 0, 0, 0, 0, 0xd2];

fn mac_str(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

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
            ns.set_mac(dev, &mac_str(mac));
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
            ns.neigh_permanent(dev, addr, &mac_str(mac));
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

    fn if_name(&self, ifindex: u32) -> &'static str {
        match ifindex {
            i if i == self.client_if => "cl0",
            i if i == self.backend_if => "be0",
            i if i == self.other_if => "ot0",
            _ => "?",
        }
    }

    /// What `bpf_fib_lookup` answers for `dst` in this namespace (routes are the three
    /// connected /24s and the local ones; there is no default route).
    fn route(&self, dst: Ipv4Addr) -> Route {
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
enum Route {
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

// ---------------------------------------------------------------------------------------
// The map setup

/// One backend entry (one member of one listener).
#[derive(Clone, Copy, Debug)]
pub struct BackendSpec {
    pub id: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub id: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
    pub scheduler: Scheduler,
    /// Backend ids.
    pub members: Vec<u32>,
    /// Denied source prefixes (access list `id + 1`, mode deny); empty: no access list.
    pub deny: Vec<(Ipv4Addr, u8)>,
    maglev: Vec<u32>,
}

impl ListenerSpec {
    fn denies(&self, src: Ipv4Addr) -> bool {
        self.deny.iter().any(|&(net, len)| {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(src) & mask == u32::from(net) & mask
        })
    }
}

/// What the run installs: backends, listeners, VIP markers, access lists.
#[derive(Clone, Debug)]
pub struct Setup {
    pub backends: Vec<BackendSpec>,
    pub listeners: Vec<ListenerSpec>,
    pub vips: Vec<Ipv4Addr>,
}

impl Setup {
    /// The fuzzing setup: seven listeners on two VIPs plus a bare VIP marker; every
    /// forwarding outcome (redirect, TX, unknown neighbour, no route, not a redirect
    /// target, no backend, access list, collision) is reachable.
    pub fn standard() -> Setup {
        let b = |id, addr, port| BackendSpec { id, addr, port };
        let backends = vec![
            b(0, B0, 8080),
            b(1, B1, 8080),
            b(2, B_NO_NEIGH, 8080),
            b(3, B0, 5353),
            b(4, B1, 5353),
            b(5, B0, 8080),
            b(6, B_FAR, 53),
            b(7, B_OTHER_SIDE, 443),
            b(8, B1, 5000),
            b(9, B_NO_NEIGH, 5000),
        ];
        let l = |id, vip, port, protocol, scheduler, members: &[u32], deny: &[(Ipv4Addr, u8)]| {
            ListenerSpec {
                id,
                vip,
                port,
                protocol,
                scheduler,
                members: members.to_vec(),
                deny: deny.to_vec(),
                maglev: Vec::new(),
            }
        };
        let mut listeners = vec![
            l(0, VIP, 80, PROTO_TCP, Scheduler::Tch, &[0, 1, 2], &[]),
            l(
                1,
                VIP,
                53,
                PROTO_UDP,
                Scheduler::Tch,
                &[3, 4],
                &[(CLIENT_NO_NEIGH, 32), (ip(198, 19, 200, 0), 24)],
            ),
            l(2, VIP2, 80, PROTO_TCP, Scheduler::Wrr, &[5], &[]),
            l(3, VIP2, 53, PROTO_UDP, Scheduler::Rr, &[6], &[]),
            l(4, VIP2, 443, PROTO_TCP, Scheduler::Wlc, &[7], &[]),
            l(5, VIP, 8080, PROTO_TCP, Scheduler::Wrr, &[], &[]),
            l(6, VIP, 5000, PROTO_UDP, Scheduler::Tch, &[8, 9], &[]),
        ];
        for listener in &mut listeners {
            let members: Vec<MaglevBackend> = listener
                .members
                .iter()
                .map(|&id| {
                    let m = backends[id as usize];
                    MaglevBackend {
                        id,
                        addr: u32::from_ne_bytes(m.addr.octets()),
                        port: m.port.to_be(),
                        weight: 100,
                    }
                })
                .collect();
            listener.maglev = maglev::build_table(&members, MAGLEV_TABLE_SIZE);
        }
        Setup {
            backends,
            listeners,
            vips: vec![VIP, VIP2, VIP3],
        }
    }

    fn listener(&self, dst: Ipv4Addr, port: u16, protocol: u8) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.vip == dst && l.port == port && l.protocol == protocol)
    }

    fn listener_by_id(&self, id: u32) -> Option<usize> {
        self.listeners.iter().position(|l| l.id == id)
    }

    fn is_vip(&self, addr: Ipv4Addr) -> bool {
        self.vips.contains(&addr)
    }

    /// The backend a new flow or a pickup of `t` gets: the only member, or the Maglev
    /// slot of the 4-tuple (`tch`; pickups always use it).
    fn pick(&self, listener: usize, t: &Tuple) -> Option<BackendSpec> {
        let l = &self.listeners[listener];
        match l.members.as_slice() {
            [] => None,
            [only] => Some(self.backends[*only as usize]),
            _ => {
                let h = hash::hash_tuple(
                    u32::from_ne_bytes(t.src.octets()),
                    u32::from_ne_bytes(t.dst.octets()),
                    t.sport.to_be(),
                    t.dport.to_be(),
                );
                let id = l.maglev[(h % MAGLEV_TABLE_SIZE) as usize];
                Some(self.backends[id as usize])
            }
        }
    }

    /// Writes everything into the maps, the way the controller does: backends, tables,
    /// listener entries, VIP markers, access lists.
    pub fn install(&self, dp: &mut DataPlane) -> anyhow::Result<()> {
        let be = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        for l in &self.listeners {
            for &id in &l.members {
                let m = self.backends[id as usize];
                dp.set_backend(
                    id,
                    Backend {
                        addr: be(m.addr),
                        port: m.port.to_be(),
                        flags: BACKEND_F_USABLE,
                        weight: 100,
                        listener: l.id,
                        generation: 1,
                        ..Default::default()
                    },
                )?;
            }
            let weighted: Vec<(u32, u32)> = l.members.iter().map(|&id| (id, 100)).collect();
            let sequence = match l.scheduler {
                Scheduler::Wrr => wrr::weighted_sequence(&weighted, lb_common::SEQUENCE_TABLE_SIZE),
                _ => wrr::each_once(&weighted),
            };
            let slot = l.id * 2;
            dp.write_table(
                slot,
                &l.maglev,
                &sequence,
                TableMeta {
                    backends: l.members.len() as u32,
                    sequence_len: sequence.len() as u32,
                },
            )?;
            let acl_id = l.id + 1;
            for &(net, len) in &l.deny {
                dp.add_acl_entry(acl_id, net, len)?;
            }
            dp.set_listener(
                ListenerKey {
                    addr: be(l.vip),
                    port: l.port.to_be(),
                    protocol: l.protocol,
                    _pad: 0,
                },
                Listener {
                    id: l.id,
                    table: slot,
                    scheduler: l.scheduler as u8,
                    established_timeout_s: IDLE_TIMEOUT_S,
                    udp_timeout_s: IDLE_TIMEOUT_S,
                    acl_mode: if l.deny.is_empty() {
                        ACL_NONE
                    } else {
                        ACL_DENY
                    },
                    acl_id: if l.deny.is_empty() { 0 } else { acl_id },
                    ..Default::default()
                },
            )?;
            dp.reset_cursor(l.id)?;
        }
        for &vip in &self.vips {
            dp.add_vip(be(vip))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The model

/// A 5-tuple as it appears in a packet (host order here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The backend-side tuple of client flow `self` sent to backend `b`: the key of its
    /// reverse entry.
    fn backend_side(&self, b: &BackendSpec) -> Tuple {
        Tuple {
            src: b.addr,
            dst: self.src,
            sport: b.port,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The client-side tuple of the flow whose reverse entry `rev` sits at backend-side
    /// tuple `self`: the inverse of [`Tuple::backend_side`].
    fn client_side(&self, rev: &ShadowRev) -> Tuple {
        Tuple {
            src: self.dst,
            dst: rev.vip,
            sport: self.dport,
            dport: rev.vport,
            proto: self.proto,
        }
    }

    fn key(&self) -> FlowKey {
        FlowKey {
            src_addr: u32::from_ne_bytes(self.src.octets()),
            dst_addr: u32::from_ne_bytes(self.dst.octets()),
            src_port: self.sport.to_be(),
            dst_port: self.dport.to_be(),
            protocol: self.proto,
            _pad: [0; 3],
        }
    }

    fn from_key(k: &FlowKey) -> Tuple {
        Tuple {
            src: Ipv4Addr::from(k.src_addr.to_ne_bytes()),
            dst: Ipv4Addr::from(k.dst_addr.to_ne_bytes()),
            sport: u16::from_be(k.src_port),
            dport: u16::from_be(k.dst_port),
            proto: k.protocol,
        }
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
            "{p} {}:{} → {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

/// A flow entry as the model expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShadowFlow {
    listener: usize,
    backend: u32,
    /// `FLOW_F_FIN`, `FLOW_F_RST` and `FLOW_F_OPENING` only (`MODELLED_FLAGS`).
    flags: u32,
    /// What the client last acknowledged (half-open: its SYN's sequence number + 1).
    client_acked: u32,
    /// Bounds of the program's clock when it last wrote the entry.
    seen: (u64, u64),
}

/// A reverse entry as the model expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShadowRev {
    vip: Ipv4Addr,
    vport: u16,
    listener: usize,
    backend: u32,
    /// What the backend last acknowledged, once it has.
    backend_acked: Option<u32>,
    /// In the half-open table (its flow has not completed the handshake): only the
    /// backend's SYN-ACK or RST finds it.
    half_open: bool,
}

/// The flow flags the model follows.
const MODELLED_FLAGS: u32 = FLOW_F_FIN | FLOW_F_RST | FLOW_F_OPENING;

/// Flow and reverse entries the model expects the program to hold.
#[derive(Default)]
pub struct Model {
    flows: HashMap<Tuple, ShadowFlow>,
    flow_keys: Vec<Tuple>,
    revs: HashMap<Tuple, ShadowRev>,
    rev_keys: Vec<Tuple>,
}

/// A state change that comes with an outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Delta {
    flow: Option<(Tuple, ShadowFlow)>,
    rev: Option<(Tuple, ShadowRev)>,
}

/// One outcome the policy allows for a frame.
#[derive(Clone, Debug)]
struct Outcome {
    action: u32,
    reason: Reason,
    out: Out,
    delta: Delta,
    /// Why the policy decides so, where that is not obvious from the reason.
    why: &'static str,
}

#[derive(Clone, Debug)]
enum Out {
    /// The frame must come back byte for byte.
    Unchanged,
    /// Not checked (dropped after a translation).
    Any,
    Expect(Expected),
}

/// An expected output: bytes, the checksum fields not compared byte for byte, and the
/// checksums that must verify.
#[derive(Clone, Debug)]
struct Expected {
    bytes: Vec<u8>,
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
    /// TCP or UDP checksum over the pseudo-header (addresses at `ip + 12`) and `len` bytes
    /// from `l4` verifies (and, for UDP, is not 0).
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

enum Prediction {
    Refused,
    Outcomes(Vec<Outcome>),
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn addr_at(f: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3])
}

fn sum_ok(data: &[u8]) -> bool {
    csum::checksum(data) == 0
}

fn l4_ok(f: &[u8], ip: usize, l4: usize, len: usize, proto: u8) -> bool {
    let mut pseudo = Vec::with_capacity(12 + len);
    pseudo.extend_from_slice(&f[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
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
    fn from(f: &[u8]) -> Self {
        Self {
            bytes: f.to_vec(),
            masked: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn set(&mut self, at: usize, value: &[u8]) {
        self.bytes[at..at + value.len()].copy_from_slice(value);
    }

    fn mask(&mut self, at: usize) {
        self.masked.extend([at, at + 1]);
    }

    /// Router's TTL − 1 and the next hop's MACs.
    fn hop(&mut self, smac: Mac, dmac: Mac) {
        self.bytes[22] = self.bytes[22].wrapping_sub(1);
        self.set(0, &dmac);
        self.set(6, &smac);
    }

    fn verify(&self, out: &[u8]) -> Result<(), String> {
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

/// The parsed IPv4 part of a frame the program would parse.
struct Pkt<'a> {
    f: &'a [u8],
    ihl: usize,
    /// IP total length.
    tot: usize,
    /// Offset of the L4 header.
    off: usize,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    frag: bool,
    /// DF set.
    df: bool,
    ingress: u32,
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
    fn values(self) -> &'static [bool] {
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
    fn insert_flow(&mut self, key: Tuple, flow: ShadowFlow) {
        if self.flows.insert(key, flow).is_none() {
            self.flow_keys.push(key);
        }
    }

    fn insert_rev(&mut self, key: Tuple, rev: ShadowRev) {
        if self.revs.insert(key, rev).is_none() {
            self.rev_keys.push(key);
        }
    }

    /// Sequence and acknowledgement numbers that fit client → VIP flow `t`: its FIN or RST
    /// is credible near what the backend acknowledged.
    fn client_numbers(&self, setup: &Setup, t: &Tuple) -> Option<(u32, u32)> {
        let flow = self.flows.get(t)?;
        let b = setup.backends.get(flow.backend as usize)?;
        let rkey = t.backend_side(b);
        Some((self.revs.get(&rkey)?.backend_acked?, flow.client_acked))
    }

    /// Numbers that fit backend → client segment `t` (a reverse key): a half-open flow's
    /// refusal acknowledges the SYN; later, the sequence number follows what the client
    /// acknowledged.
    fn backend_numbers(&self, t: &Tuple) -> Option<(u32, u32)> {
        let rev = self.revs.get(t)?;
        let owner = t.client_side(rev);
        let flow = self.flows.get(&owner)?;
        Some(if flow.flags & FLOW_F_OPENING != 0 {
            (0, flow.client_acked)
        } else {
            (flow.client_acked, rev.backend_acked.unwrap_or(0))
        })
    }

    fn apply(&mut self, delta: &Delta) {
        if let Some((k, f)) = delta.flow {
            self.insert_flow(k, f);
        }
        if let Some((k, r)) = delta.rev {
            self.insert_rev(k, r);
        }
    }

    /// Every outcome the policy allows for `f` arriving on `ingress`, the program's clock
    /// reading somewhere in `now`.
    fn predict(
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
        if be16(f, 12) != 0x0800 {
            return pass(Reason::PassNotIpv4);
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
            ihl,
            tot,
            off: 14 + ihl,
            ttl: f[22],
            proto: f[23],
            src: addr_at(f, 26),
            dst: addr_at(f, 30),
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
            return self.forward(setup, lab, &p, &t, tcp_flags, l, now);
        }
        if let Some(rev) = self.revs.get(&t) {
            return self.reply(lab, &p, &t, rev, tcp_flags);
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
    fn forward(
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
                let mut rev_delta = None;
                if t.proto == PROTO_TCP {
                    let (seq, ack) = p.seq_ack();
                    if tcp_flags & ACK != 0 {
                        flow.client_acked = ack;
                        flow.flags &= !FLOW_F_OPENING;
                    }
                    // A client's FIN or RST closes only near what the backend acknowledged
                    // (whatever flow the reverse entry at the backend-side tuple serves).
                    let rkey = t.backend_side(&b);
                    let credible = self
                        .revs
                        .get(&rkey)
                        .and_then(|r| r.backend_acked)
                        .is_some_and(|acked| seq.wrapping_sub(acked) < CLOSE_WINDOW);
                    if credible {
                        flow.flags |= close_flags(tcp_flags);
                    }
                    // The handshake completes: the flow's reverse entry leaves the
                    // half-open table if it is still this flow's, and is written again if
                    // it is missing.
                    if self.flows[t].flags & FLOW_F_OPENING != 0 && flow.flags & FLOW_F_OPENING == 0
                    {
                        rev_delta = match self.revs.get(&rkey) {
                            Some(r) if r.half_open && (r.vip, r.vport) == (t.dst, t.dport) => {
                                Some((
                                    rkey,
                                    ShadowRev {
                                        half_open: false,
                                        ..*r
                                    },
                                ))
                            }
                            Some(_) => None,
                            None => Some((
                                rkey,
                                ShadowRev {
                                    vip: t.dst,
                                    vport: t.dport,
                                    listener: li,
                                    backend: flow.backend,
                                    backend_acked: None,
                                    half_open: false,
                                },
                            )),
                        };
                    }
                }
                flow.seen = now;
                let delta = Delta {
                    flow: Some((*t, flow)),
                    rev: rev_delta,
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
            let rkey = t.backend_side(&b);
            let collides: &[bool] = match self.revs.get(&rkey) {
                Some(e) if (e.vip, e.vport) != (t.dst, t.dport) => {
                    self.owner_live(setup, t, e, now).values()
                }
                _ => &[false],
            };
            for &collide in collides {
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
                            seen: now,
                        },
                    )),
                    rev: Some((
                        rkey,
                        ShadowRev {
                            vip: t.dst,
                            vport: t.dport,
                            listener: li,
                            backend: b.id,
                            backend_acked: None,
                            half_open: opening,
                        },
                    )),
                };
                outs.extend(self.to_backend(lab, p, b, delta));
            }
        }
        outs
    }

    /// Whether the flow owning reverse entry `e` is live (present, on the same backend,
    /// no FIN/RST seen, within its idle timeout).
    fn owner_live(&self, setup: &Setup, t: &Tuple, e: &ShadowRev, now: (u64, u64)) -> Tri {
        let owner = Tuple {
            src: t.src,
            dst: e.vip,
            sport: t.sport,
            dport: e.vport,
            proto: t.proto,
        };
        let Some(flow) = self.flows.get(&owner) else {
            return Tri::No;
        };
        if flow.backend != e.backend
            || setup.listener(e.vip, e.vport, t.proto).is_none()
            || flow.flags & (FLOW_F_FIN | FLOW_F_RST) != 0
        {
            return Tri::No;
        }
        match expired(flow, t.proto, now) {
            Tri::Yes => Tri::No,
            Tri::No => Tri::Yes,
            Tri::Maybe => Tri::Maybe,
        }
    }

    /// The destination NAT of a client packet, then the next hop.
    fn to_backend(&self, lab: &Lab, p: &Pkt<'_>, b: BackendSpec, delta: Delta) -> Vec<Outcome> {
        let translated = nat_l4(p, true, b.addr, b.port);
        transmit(lab, p, translated, b.addr, Reason::Forwarded, delta)
    }

    /// Backend → client of a known flow.
    fn reply(
        &self,
        lab: &Lab,
        p: &Pkt<'_>,
        t: &Tuple,
        rev: &ShadowRev,
        tcp_flags: u8,
    ) -> Vec<Outcome> {
        if p.ttl <= 1 {
            return pass(Reason::PassTtlExpired);
        }
        // The backend's acknowledgement is kept; its FIN or RST ends the flow's activity
        // (as the client's does) when the flow still belongs to that backend and the
        // sequence numbers fit: exactly the SYN acknowledged while half-open, otherwise
        // near what the client acknowledged.
        let mut delta = Delta::default();
        let (seq, ack) = p.seq_ack();
        if t.proto == PROTO_TCP && tcp_flags & ACK != 0 {
            delta.rev = Some((
                *t,
                ShadowRev {
                    backend_acked: Some(ack),
                    ..*rev
                },
            ));
        }
        let close = close_flags(tcp_flags);
        if t.proto == PROTO_TCP && close != 0 {
            let owner = t.client_side(rev);
            if let Some(flow) = self.flows.get(&owner)
                && flow.backend == rev.backend
                && if flow.flags & FLOW_F_OPENING != 0 {
                    tcp_flags & ACK != 0 && ack == flow.client_acked
                } else {
                    seq.wrapping_sub(flow.client_acked) < CLOSE_WINDOW
                }
            {
                let mut flow = *flow;
                flow.flags |= close;
                delta.flow = Some((owner, flow));
            }
        }
        let translated = nat_l4(p, false, rev.vip, rev.vport);
        transmit(lab, p, translated, t.dst, Reason::ReplyForwarded, delta)
    }

    /// ICMP: errors about a flow are translated, everything else goes to the kernel.
    fn icmp(&self, setup: &Setup, lab: &Lab, p: &Pkt<'_>) -> Vec<Outcome> {
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
        let inner_src = addr_at(f, q + 12);
        let inner_dst = addr_at(f, q + 16);
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
        let known = self.flows.contains_key(&reversed) || self.revs.contains_key(&reversed);
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
            let mut e = icmp_nat(p, q, true, b.addr, b.port);
            // Outer destination: the VIP becomes the backend.
            e.set(30, &b.addr.octets());
            return transmit(lab, p, e, b.addr, Reason::IcmpToBackend, Delta::default());
        }
        // A packet the LB sent to a backend (client → backend), reported to the client.
        if let Some(rev) = self.revs.get(&reversed) {
            if p.ttl <= 1 {
                return pass(Reason::PassTtlExpired);
            }
            let mut e = icmp_nat(p, q, false, rev.vip, rev.vport);
            if p.src == inner_dst {
                e.set(26, &rev.vip.octets());
            }
            return transmit(lab, p, e, p.dst, Reason::IcmpToClient, Delta::default());
        }
        other(if p.ttl <= 1 {
            "an ICMP error about no known flow, TTL ≤ 1: the LB would not forward it, so it \
             is not a TTL expiry of the LB's"
        } else {
            "an ICMP error about no known flow"
        })
    }
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
fn nat_l4(p: &Pkt<'_>, dst: bool, addr: Ipv4Addr, port: u16) -> Expected {
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

/// `bpf_fib_lookup` towards `dst` for the translated packet, and what the program then
/// does with it.
fn transmit(
    lab: &Lab,
    p: &Pkt<'_>,
    translated: Expected,
    dst: Ipv4Addr,
    sent: Reason,
    delta: Delta,
) -> Vec<Outcome> {
    let with = |action, reason, out| Outcome {
        action,
        reason,
        out,
        delta: delta.clone(),
        why: "",
    };
    let kernel = |reason| with(XDP_PASS, reason, Out::Expect(translated.clone()));
    // Too big for the egress: a TCP/UDP packet with DF and no IP options is answered with
    // fragmentation needed to its sender, out where it came in; anything else (no DF,
    // options, a translated ICMP error) goes to the kernel, which fragments it.
    let too_big = || {
        let answered = match sent {
            Reason::Forwarded => Some(Reason::IcmpFragNeededToClient),
            Reason::ReplyForwarded => Some(Reason::IcmpFragNeededToBackend),
            _ => None,
        };
        match answered {
            Some(reason) if p.df && p.ihl == 20 => {
                with(XDP_TX, reason, Out::Expect(frag_needed(p, MTU as u16)))
            }
            _ => kernel(Reason::PassFragNeeded),
        }
    };
    let route = lab.route(dst);
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
            e.hop(smac, dmac);
            vec![with(action, sent, Out::Expect(e))]
        }
    }
}

// ---------------------------------------------------------------------------------------
// The generator

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
/// LB's own, a bare VIP marker.
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

struct Generator {
    rng: Rng,
    /// Deterministic cases run first: truncations, every IHL, every data offset, ….
    sweep: Vec<(Vec<u8>, u32, &'static str)>,
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
    fn new(seed: u64, lab: &Lab) -> Self {
        let mut g = Self {
            rng: Rng::new(seed),
            sweep: Vec::new(),
        };
        g.sweep = g.sweep_cases(lab);
        g
    }

    fn flags(&mut self) -> u8 {
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

    fn payload(&mut self) -> Vec<u8> {
        let n = if self.rng.chance(3) {
            // Around the MTU: some translated packets are too big for the egress.
            self.rng.usize(1400, 1530)
        } else {
            self.rng.usize(0, 48)
        };
        self.rng.bytes(n)
    }

    fn sport(&mut self) -> u16 {
        if self.rng.chance(4) {
            self.rng.u16()
        } else {
            *self.rng.pick(&SPORTS)
        }
    }

    fn ttl(&mut self) -> u8 {
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

    fn tcp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
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

    fn udp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
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
                .filter(|l| l.protocol == PROTO_TCP)
                .collect();
            let l = self.rng.pick(&tcp);
            (l.vip, l.port)
        } else {
            (*self.rng.pick(&[VIP, VIP2, VIP3]), self.rng.u16())
        };
        let flags = self.flags();
        let mut f = self.tcp(src, dst, flags);
        let t = Tuple {
            src: src.0,
            dst: dst.0,
            sport: src.1,
            dport: dst.1,
            proto: PROTO_TCP,
        };
        self.fit_numbers(&mut f, model.client_numbers(setup, &t));
        client_frame(f).build()
    }

    fn client_udp(&mut self, setup: &Setup) -> Vec<u8> {
        let src = (*self.rng.pick(&CLIENTS), self.sport());
        let dst = if self.rng.chance(88) {
            let udp: Vec<&ListenerSpec> = setup
                .listeners
                .iter()
                .filter(|l| l.protocol == PROTO_UDP)
                .collect();
            let l = self.rng.pick(&udp);
            (l.vip, l.port)
        } else {
            (*self.rng.pick(&[VIP, VIP2, VIP3]), self.rng.u16())
        };
        client_frame(self.udp(src, dst)).build()
    }

    /// A backend's answer to a flow the model knows (or to a made-up one).
    fn reply(&mut self, model: &Model) -> Vec<u8> {
        let t = if !model.rev_keys.is_empty() && self.rng.chance(90) {
            *self.rng.pick(&model.rev_keys)
        } else {
            Tuple {
                src: *self.rng.pick(&[B0, B1, B_NO_NEIGH]),
                dst: *self.rng.pick(&CLIENTS),
                sport: *self.rng.pick(&[8080, 5353, 5000, 443]),
                dport: self.sport(),
                proto: *self.rng.pick(&[PROTO_TCP, PROTO_UDP]),
            }
        };
        let f = if t.proto == PROTO_TCP {
            let flags = *self
                .rng
                .pick(&[SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK]);
            let mut f = self.tcp((t.src, t.sport), (t.dst, t.dport), flags);
            self.fit_numbers(&mut f, model.backend_numbers(&t));
            f
        } else {
            self.udp((t.src, t.sport), (t.dst, t.dport))
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
            Frame::tcp((t.src, t.sport), (t.dst, t.dport), ACK)
        } else {
            let mut f = Frame::udp((t.src, t.sport), (t.dst, t.dport));
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
    fn icmp(&mut self, model: &Model) -> (Vec<u8>, bool, &'static str) {
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
            if choice < 50 && !model.flow_keys.is_empty() {
                // About a reply the LB sent: VIP:port → client:port, reported to the VIP.
                let k = *self.rng.pick(&model.flow_keys);
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
                    k.dst
                } else {
                    *self.rng.pick(&ADDRESSES)
                };
                let src = *self.rng.pick(&[ip(198, 18, 0, 254), k.src, OTHER]);
                (src, dst, body, kind, code, rest, true, "icmp-error-to-vip")
            } else if choice < 85 && !model.rev_keys.is_empty() {
                // About a packet the LB sent to a backend: client → backend.
                let r = *self.rng.pick(&model.rev_keys);
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
                    r.src
                } else {
                    ip(198, 18, 1, 254)
                };
                let dst = if self.rng.chance(85) {
                    r.dst
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
                    src: *self.rng.pick(&ADDRESSES),
                    dst: *self.rng.pick(&ADDRESSES),
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
                6 => {
                    if f.len() > off + 12 {
                        f[off + 12] = (self.rng.below(16) as u8) << 4 | (f[off + 12] & 0x0f);
                    }
                }
                7 => {
                    if f.len() > off + 13 {
                        f[off + 13] = self.rng.byte();
                    }
                }
                8 => {
                    if f.len() >= off + 6 {
                        let payload = f.len() - off;
                        let len = self.rng.below(payload as u64 + 6) as u16;
                        f[off + 4..off + 6].copy_from_slice(&len.to_be_bytes());
                    }
                }
                9 => f[22] = *self.rng.pick(&[0, 1, 2]),
                10 => {
                    let n = self.rng.usize(1, 40);
                    f.extend(self.rng.bytes(n));
                }
                11 => {
                    let i = self.rng.usize(0, f.len() - 1);
                    f[i] ^= 1 << self.rng.below(8);
                }
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
    fn next(&mut self, setup: &Setup, model: &Model, lab: &Lab) -> (Vec<u8>, u32, &'static str) {
        if let Some(case) = self.sweep.pop() {
            return case;
        }
        let k = self.rng.below(100);
        let (mut f, ingress, kind) = match k {
            0..=7 => (self.random_bytes(), lab.client_if, "random-bytes"),
            8..=29 => (self.client_tcp(setup, model), lab.client_if, "tcp-to-vip"),
            30..=43 => (self.client_udp(setup), lab.client_if, "udp-to-vip"),
            44..=59 => (self.reply(model), lab.backend_if, "reply-from-backend"),
            60..=66 => (self.not_for_us(), lab.client_if, "not-for-us"),
            67..=70 => (self.other_protocol(), lab.client_if, "other-protocol"),
            71..=89 => {
                let (f, client, kind) = self.icmp(model);
                let ingress = if client {
                    lab.client_if
                } else {
                    lab.backend_if
                };
                (f, ingress, kind)
            }
            _ => (self.not_ipv4(), lab.client_if, "not-ipv4"),
        };
        let mut kind = kind;
        if kind != "random-bytes" && kind != "not-ipv4" && self.rng.chance(30) {
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
        cases.reverse();
        cases
    }
}

// ---------------------------------------------------------------------------------------
// The run

/// What to run.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    pub seed: u64,
    pub packets: u64,
    /// Print a progress line every this many packets (0: never).
    pub progress_every: u64,
    /// Examples kept per kind of disagreement.
    pub examples: usize,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        Self {
            seed: 0x5eed_f022,
            packets: 20_000,
            progress_every: 0,
            examples: 3,
        }
    }
}

/// One kind of disagreement between the program and the model.
#[derive(Clone, Debug, Default)]
pub struct Finding {
    pub count: u64,
    pub examples: Vec<String>,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Frames generated.
    pub packets: u64,
    /// Frames the kernel refused (shorter than an Ethernet header).
    pub refused: u64,
    /// Verdicts by reason, as observed.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Frames by generator kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Outcomes the model could not decide alone (clock window, unmodelled routes).
    pub ambiguous: u64,
    pub flows: usize,
    pub reverse_entries: usize,
    pub findings: BTreeMap<String, Finding>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// Frames that ran (generated minus refused).
    pub fn run(&self) -> u64 {
        self.packets - self.refused
    }

    fn finding(&mut self, what: impl Into<String>, example: impl FnOnce() -> String, max: usize) {
        let f = self.findings.entry(what.into()).or_default();
        f.count += 1;
        if f.examples.len() < max {
            f.examples.push(example());
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lb-fuzz: seed {:#x}: {} frames ({} ran, {} refused by the kernel as shorter than \
             an Ethernet header) in {:.1} s ({:.0} frames/s); {} ambiguous; flow table {} \
             entries, {} reverse",
            self.seed,
            self.packets,
            self.run(),
            self.refused,
            self.elapsed.as_secs_f64(),
            self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.ambiguous,
            self.flows,
            self.reverse_entries,
        )?;
        write!(f, "  verdicts:")?;
        for (reason, n) in &self.reasons {
            write!(f, " {reason}={n}")?;
        }
        writeln!(f)?;
        write!(f, "  generated:")?;
        for (kind, n) in &self.kinds {
            write!(f, " {kind}={n}")?;
        }
        writeln!(f)?;
        if self.findings.is_empty() {
            writeln!(f, "  no disagreement with the packet policy")?;
        }
        for (what, finding) in &self.findings {
            writeln!(f, "  DISAGREEMENT ×{}: {what}", finding.count)?;
            for e in &finding.examples {
                for (i, line) in e.lines().enumerate() {
                    writeln!(f, "    {}{line}", if i == 0 { "- " } else { "  " })?;
                }
            }
        }
        Ok(())
    }
}

/// A one-line reading of a frame's headers, for reports.
pub fn describe(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("{} bytes, no Ethernet header", f.len());
    }
    let ethertype = be16(f, 12);
    if ethertype != 0x0800 {
        return format!("ethertype {ethertype:#06x}");
    }
    if f.len() < 34 {
        return format!("IPv4 header truncated at {} bytes", f.len() - 14);
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let tot = usize::from(be16(f, 16));
    let frag = be16(f, 20);
    let mut s = format!(
        "IPv4 {} → {} version {} IHL {ihl} total length {tot} (frame has {}) ttl {} proto {}{}",
        addr_at(f, 26),
        addr_at(f, 30),
        f[14] >> 4,
        f.len() - 14,
        f[22],
        f[23],
        if frag & 0x3fff != 0 {
            format!(" fragment MF={} offset={}", frag >> 13 & 1, frag & 0x1fff)
        } else {
            String::new()
        }
    );
    let off = 14 + ihl;
    if ihl < 20 || f.len() < off + 4 {
        return s;
    }
    match f[23] {
        PROTO_TCP | PROTO_UDP => {
            let _ = write!(s, ", ports {} → {}", be16(f, off), be16(f, off + 2));
            if f[23] == PROTO_TCP && f.len() > off + 13 {
                let _ = write!(
                    s,
                    " flags {:#04x} data offset {}",
                    f[off + 13],
                    usize::from(f[off + 12] >> 4) * 4
                );
            } else if f[23] == PROTO_UDP && f.len() >= off + 8 {
                let _ = write!(s, " length {}", be16(f, off + 4));
            }
        }
        PROTO_ICMP => {
            let _ = write!(s, ", ICMP type {} code {}", f[off], f[off + 1]);
            let q = off + 8;
            if f.len() >= q + 24 {
                let _ = write!(
                    s,
                    " quoting [IPv4 {}:{} → {}:{} vihl {:#04x} proto {}] ({} quoted bytes inside \
                     the IP packet)",
                    addr_at(f, q + 12),
                    be16(f, q + 20),
                    addr_at(f, q + 16),
                    be16(f, q + 22),
                    f[q],
                    f[q + 9],
                    (14 + tot).saturating_sub(q)
                );
            }
        }
        _ => {}
    }
    s
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn action_name(a: u32) -> String {
    match a {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("action {other}"),
    }
}

fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Verdict counters (events left out), by `Reason` index.
fn verdict_counters(dp: &DataPlane) -> anyhow::Result<Vec<u64>> {
    Reason::ALL
        .iter()
        .map(|&r| {
            if r.verdict().is_some() {
                Ok(dp.counter(r)?)
            } else {
                Ok(0)
            }
        })
        .collect()
}

/// Runs one frame through the program and tells which verdict counter moved (`None`
/// unless exactly one moved by one); `Err` when the kernel refuses the frame.
pub fn run_counted(
    dp: &mut DataPlane,
    ingress: u32,
    frame: &[u8],
) -> Result<(u32, Option<Reason>, Vec<u8>), String> {
    let before = verdict_counters(dp).map_err(|e| format!("{e:#}"))?;
    let (action, out) = test_run(dp, ingress, frame)?;
    let after = verdict_counters(dp).map_err(|e| format!("{e:#}"))?;
    let moved: Vec<(Reason, u64)> = Reason::ALL
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a != b)
        .map(|(r, (b, a))| (*r, a - b))
        .collect();
    let reason = match moved.as_slice() {
        [(r, 1)] => Some(*r),
        _ => None,
    };
    Ok((action, reason, out))
}

/// Runs one frame through the program; `Err` with the errno when the kernel refuses it.
pub fn test_run(dp: &mut DataPlane, ingress: u32, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let program = dp.program().map_err(|e| e.to_string())?;
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .map_err(|e| format!("{e:#}"))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Loads the program (nothing pinned) with a flow table of `flow_table_size` entries,
/// installs `setup` and makes `cl0` and `be0` redirect targets. Call from inside the lab
/// namespace.
pub fn load(lab: &Lab, setup: &Setup, flow_table_size: u32) -> anyhow::Result<DataPlane> {
    let mut dp = DataPlane::load(&LoadOptions {
        sizes: MapSizes {
            flow_table_size,
            max_listeners: 8,
            max_backends: 64,
        },
        map_pin_dir: None,
        verifier_log_dir: None,
    })?;
    dp.add_tx_port(lab.client_if)?;
    dp.add_tx_port(lab.backend_if)?;
    setup.install(&mut dp)?;
    Ok(dp)
}

/// Runs `options.packets` frames through the program in `lab` and checks each against the
/// model. Errors only when the lab or the program cannot be used at all.
pub fn run(lab: &Lab, options: &FuzzOptions) -> anyhow::Result<Report> {
    lab.ns().enter(|| {
        let setup = Setup::standard();
        // Far larger than the flows a run makes (at most a few ten thousand), so the LRU
        // never evicts and the model's shadow stays exact.
        let mut dp = load(lab, &setup, 65536)?;
        let mut fuzzer = Fuzzer {
            lab,
            setup,
            model: Model::default(),
            generator: Generator::new(options.seed, lab),
            report: Report {
                seed: options.seed,
                ..Report::default()
            },
            options: options.clone(),
        };
        fuzzer.run(&mut dp)?;
        Ok(fuzzer.report)
    })
}

struct Fuzzer<'a> {
    lab: &'a Lab,
    setup: Setup,
    model: Model,
    generator: Generator,
    report: Report,
    options: FuzzOptions,
}

impl Fuzzer<'_> {
    fn run(&mut self, dp: &mut DataPlane) -> anyhow::Result<()> {
        let started = Instant::now();
        let initial = verdict_counters(dp)?;
        let mut before = initial.clone();
        for n in 0..self.options.packets {
            let (frame, ingress, kind) = self.generator.next(&self.setup, &self.model, self.lab);
            *self.report.kinds.entry(kind).or_default() += 1;
            self.report.packets += 1;
            let t0 = clock_ns();
            let result = test_run(dp, ingress, &frame);
            let t1 = clock_ns();
            let prediction = self
                .model
                .predict(&self.setup, self.lab, &frame, ingress, (t0, t1));
            let after = verdict_counters(dp)?;
            self.check(
                dp, n, kind, ingress, &frame, result, prediction, &before, &after,
            )?;
            before = after;
            if self.options.progress_every > 0 && (n + 1) % self.options.progress_every == 0 {
                eprintln!(
                    "lb-fuzz: {} frames, {} disagreement kind(s), {:.0} s",
                    n + 1,
                    self.report.findings.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        self.finish(dp, &initial, &before)?;
        self.report.elapsed = started.elapsed();
        Ok(())
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; everything known about one frame"
    )]
    fn check(
        &mut self,
        dp: &DataPlane,
        n: u64,
        kind: &str,
        ingress: u32,
        frame: &[u8],
        result: Result<(u32, Vec<u8>), String>,
        prediction: Prediction,
        before: &[u64],
        after: &[u64],
    ) -> anyhow::Result<()> {
        let max = self.options.examples;
        let seed = self.options.seed;
        let where_ = |extra: &str| {
            format!(
                "frame #{n} of seed {seed:#x} ({kind}, {} bytes, ingress {}): {extra}\n\
                 frame  {}\ninput  {}",
                frame.len(),
                self.lab.if_name(ingress),
                describe(frame),
                hex(frame)
            )
        };
        let outcomes = match (prediction, result) {
            (Prediction::Refused, Err(_)) => {
                self.report.refused += 1;
                return Ok(());
            }
            (Prediction::Refused, Ok((action, _))) => {
                let e = where_(&format!(
                    "the kernel ran a frame it should refuse; {}",
                    action_name(action)
                ));
                self.report.finding(
                    "BPF_PROG_TEST_RUN ran a frame outside 14..=3520 bytes",
                    || e,
                    max,
                );
                return Ok(());
            }
            (Prediction::Outcomes(_), Err(err)) => {
                let e = where_(&format!("BPF_PROG_TEST_RUN failed: {err}"));
                self.report.finding("BPF_PROG_TEST_RUN failed", || e, max);
                return Ok(());
            }
            (Prediction::Outcomes(o), Ok(r)) => (o, r),
        };
        let (outcomes, (action, out)) = outcomes;
        if outcomes.len() > 1 {
            self.report.ambiguous += 1;
        }
        let moved: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, (b, a))| (*r, a.wrapping_sub(*b)))
            .collect();
        let reason = match moved.as_slice() {
            [(r, 1)] => Some(*r),
            _ => None,
        };
        if let Some(r) = reason {
            *self.report.reasons.entry(r.name()).or_default() += 1;
        }
        let expected = || {
            outcomes
                .iter()
                .map(|o| {
                    let mut s = format!("{} {}", action_name(o.action), o.reason.name());
                    if !o.why.is_empty() {
                        let _ = write!(s, ": {}", o.why);
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let observed = format!(
            "{} with counters {}",
            action_name(action),
            moved
                .iter()
                .map(|(r, d)| format!("{}+{d}", r.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if action == XDP_ABORTED || action > XDP_REDIRECT {
            let e = where_(&format!("observed {observed}, expected {}", expected()));
            self.report
                .finding("XDP_ABORTED or an unknown action returned", || e, max);
            self.resync(dp, frame);
            return Ok(());
        }
        let Some(reason) = reason else {
            let e = where_(&format!(
                "observed {observed}, expected {}: not exactly one verdict counter moved by one",
                expected()
            ));
            self.report
                .finding("a verdict not counted under exactly one reason", || e, max);
            self.resync(dp, frame);
            return Ok(());
        };
        if reason.verdict() != Some(class(action)) {
            let e = where_(&format!(
                "observed {observed}: the reason does not go with the action"
            ));
            self.report
                .finding("action and reason counter disagree", || e, max);
        }
        let matching: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.action == action && o.reason == reason)
            .collect();
        if matching.is_empty() {
            let transmitted = matches!(action, XDP_TX | XDP_REDIRECT);
            let allowed = outcomes
                .iter()
                .any(|o| matches!(o.action, XDP_TX | XDP_REDIRECT));
            let title = if transmitted && !allowed {
                format!(
                    "FORWARDED ({}) a frame the policy does not forward; policy: {}",
                    reason.name(),
                    expected()
                )
            } else {
                format!("{} where the policy says {}", reason.name(), expected())
            };
            let e = where_(&format!("observed {observed}\noutput {}", hex(&out)));
            self.report.finding(title, || e, max);
            self.resync(dp, frame);
            return Ok(());
        }
        // The output: the matching outcomes whose bytes fit.
        let mut errors = Vec::new();
        let mut fitting: Vec<&Outcome> = Vec::new();
        for o in &matching {
            let verdict = match &o.out {
                Out::Unchanged if out.as_slice() != frame => Err(format!(
                    "output differs from the input:{}",
                    crate::packet::diff(&out, frame)
                        .lines()
                        .map(|l| format!(" {}", l.trim()))
                        .collect::<String>()
                )),
                Out::Expect(e) => e.verify(&out),
                _ => Ok(()),
            };
            match verdict {
                Ok(()) => fitting.push(o),
                Err(e) => errors.push(e),
            }
        }
        let Some(first) = fitting.first() else {
            let first = errors.first().cloned().unwrap_or_default();
            let title = if first.contains("does not verify") || first.contains("checksum") {
                format!("{}: checksum wrong in the output", reason.name())
            } else {
                format!("{}: output bytes differ from the policy", reason.name())
            };
            let e = where_(&format!("{observed}: {first}\noutput {}", hex(&out)));
            self.report.finding(title, || e, max);
            self.resync(dp, frame);
            return Ok(());
        };
        if fitting.iter().all(|o| o.delta == first.delta) {
            let delta = first.delta.clone();
            self.model.apply(&delta);
        } else {
            self.resync(dp, frame);
        }
        Ok(())
    }

    /// Reads the flow (and its reverse entry) the frame may have touched back from the
    /// program, after an outcome the model could not pin down.
    fn resync(&mut self, dp: &DataPlane, frame: &[u8]) {
        let Some(t) = tuple_of(frame) else { return };
        let Some(li) = self.setup.listener(t.dst, t.dport, t.proto) else {
            return;
        };
        match dp.flow(&t.key()) {
            Ok(Some(flow)) => {
                self.model.insert_flow(
                    t,
                    ShadowFlow {
                        listener: li,
                        backend: flow.backend,
                        flags: flow.flags & MODELLED_FLAGS,
                        client_acked: flow.client_acked,
                        seen: (flow.last_seen_ns, flow.last_seen_ns),
                    },
                );
                if let Some(b) = self.setup.backends.get(flow.backend as usize) {
                    let rkey = t.backend_side(b);
                    if let Ok(Some((_, f, l))) = dp.reply_flow(&rkey.key()) {
                        let listener = self.setup.listener_by_id(l.listener).unwrap_or(li);
                        self.model.insert_rev(
                            rkey,
                            ShadowRev {
                                vip: Ipv4Addr::from(l.vip.to_ne_bytes()),
                                vport: u16::from_be(l.vport),
                                listener,
                                backend: f.backend,
                                backend_acked: (f.flags & FLOW_F_BACKEND_ACKED != 0)
                                    .then_some(f.backend_acked),
                                half_open: f.flags & FLOW_F_OPENING != 0,
                            },
                        );
                    }
                }
            }
            Ok(None) => {
                if self.model.flows.remove(&t).is_some() {
                    self.model.flow_keys.retain(|k| *k != t);
                }
            }
            Err(_) => {}
        }
    }

    /// The counters' sum and the whole flow table against the model.
    fn finish(&mut self, dp: &DataPlane, initial: &[u64], last: &[u64]) -> anyhow::Result<()> {
        let max = self.options.examples;
        let counted: u64 = last.iter().zip(initial).map(|(a, b)| a - b).sum();
        let now = verdict_counters(dp)?;
        if now != last {
            self.report.finding(
                "verdict counters moved after the last frame",
                || format!("{last:?} → {now:?}"),
                max,
            );
        }
        if counted != self.report.run() {
            let e = format!(
                "sum of the verdict counters {counted}, frames run {} ({} generated − {} \
                 refused)",
                self.report.run(),
                self.report.packets,
                self.report.refused
            );
            self.report.finding(
                "the verdict counters do not add up to the frames run",
                || e,
                max,
            );
        }
        let kernel: HashMap<Tuple, lb_common::Flow> = dp
            .flows()
            .expect("reading the flow table")
            .into_iter()
            .map(|(k, f)| (Tuple::from_key(&k), f))
            .collect();
        self.report.flows = kernel.len();
        self.report.reverse_entries = self.model.revs.len();
        let mut keys: Vec<&Tuple> = kernel.keys().chain(self.model.flows.keys()).collect();
        keys.sort();
        keys.dedup();
        for t in keys {
            let k = kernel.get(t);
            let m = self.model.flows.get(t);
            let same = match (k, m) {
                (Some(k), Some(m)) => {
                    k.backend == m.backend
                        && k.flags & MODELLED_FLAGS == m.flags
                        && k.client_acked == m.client_acked
                }
                _ => false,
            };
            if !same {
                let e = format!(
                    "{t}: program {:?}, model {:?}",
                    k.map(|k| (k.backend, k.flags, k.client_acked)),
                    m.map(|m| (m.backend, m.flags, m.client_acked))
                );
                self.report
                    .finding("the flow table differs from the model", || e, max);
            }
        }
        let revs: Vec<(Tuple, ShadowRev)> = self.model.revs.iter().map(|(k, v)| (*k, *v)).collect();
        for (t, m) in revs {
            let k = dp.reply_flow(&t.key())?;
            let same = k.is_some_and(|(_, f, l)| {
                Ipv4Addr::from(l.vip.to_ne_bytes()) == m.vip
                    && u16::from_be(l.vport) == m.vport
                    && f.backend == m.backend
                    && self.setup.listener_by_id(l.listener) == Some(m.listener)
                    && (f.flags & FLOW_F_BACKEND_ACKED != 0).then_some(f.backend_acked)
                        == m.backend_acked
            });
            if !same {
                let e = format!("{t}: program {k:?}, model {m:?}");
                self.report
                    .finding("the reverse table differs from the model", || e, max);
            }
        }
        Ok(())
    }
}

fn class(action: u32) -> Verdict {
    match action {
        XDP_PASS => Verdict::Pass,
        XDP_TX | XDP_REDIRECT => Verdict::Transmit,
        _ => Verdict::Drop,
    }
}

/// The 5-tuple of a TCP/UDP frame whose headers the program would parse.
fn tuple_of(f: &[u8]) -> Option<Tuple> {
    if f.len() < 34 || be16(f, 12) != 0x0800 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let off = 14 + ihl;
    if ihl < 20 || f.len() < off + 4 || !(f[23] == PROTO_TCP || f[23] == PROTO_UDP) {
        return None;
    }
    Some(Tuple {
        src: addr_at(f, 26),
        dst: addr_at(f, 30),
        sport: be16(f, off),
        dport: be16(f, off + 2),
        proto: f[23],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut r = Rng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
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

    #[test]
    fn acl_prefixes() {
        let setup = Setup::standard();
        let l = &setup.listeners[1];
        assert!(l.denies(CLIENT_NO_NEIGH));
        assert!(!l.denies(CLIENT));
        assert!(l.denies(ip(198, 19, 200, 255)));
        assert!(!l.denies(ip(198, 19, 201, 0)));
    }
}
