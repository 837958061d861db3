//! The typed configuration: what the daemon runs on after validation, and what `export`
//! writes back. Field names are the config file's (docs/config.md); serde's
//! `Serialize` emits them unchanged and leaves out settings at their default, so an
//! exported file shows only what differs from a fresh listener or group.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::Scheduler;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use super::net::{IpNet, IpNetError, Ipv4Net, Ipv6Net};

/// Accepted ranges and defaults. Both the YAML reader and `Config::validate` check against
/// these, so a range is stated once.
pub mod limits {
    use std::ops::RangeInclusive;

    pub const PORT: RangeInclusive<u64> = 1..=65535;
    pub const WEIGHT: RangeInclusive<u64> = 0..=100;
    pub const FLOW_TABLE_SIZE: RangeInclusive<u64> = 1024..=67_108_864;
    pub const MAX_LISTENERS: RangeInclusive<u64> = 1..=4096;
    pub const MAX_BACKENDS: RangeInclusive<u64> = 1..=1_048_576;
    /// A listener's Maglev table: a prime in this range (`validate` checks primality).
    pub const MAGLEV_TABLE_SIZE: RangeInclusive<u64> =
        lb_common::MAGLEV_TABLE_SIZE_MIN as u64..=lb_common::MAGLEV_TABLE_SIZE_MAX as u64;
    /// The primes of `MAGLEV_TABLE_SIZE` nearest below and above `size`, for an error
    /// about a size that is not one: "655357 and 655373".
    pub fn maglev_primes_around(size: u32) -> String {
        let prime = |n: &u32| lb_common::maglev::is_prime(*n);
        let (min, max) = (
            lb_common::MAGLEV_TABLE_SIZE_MIN,
            lb_common::MAGLEV_TABLE_SIZE_MAX,
        );
        let below = (min..size.clamp(min, max)).rev().find(prime);
        let above = (size.clamp(min, max)..=max).find(prime);
        below
            .into_iter()
            .chain(above)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Slots of the array every listener's two Maglev tables share (4 bytes each).
    pub const MAGLEV_SLOTS: RangeInclusive<u64> =
        2 * lb_common::MAGLEV_TABLE_SIZE_MIN as u64..=1 << 30;
    pub const PERSISTENCE_TIMEOUT: RangeInclusive<u64> = 0..=3600;
    pub const ESTABLISHED_TIMEOUT: RangeInclusive<u64> = 10..=900;
    pub const UDP_TIMEOUT: RangeInclusive<u64> = 10..=900;
    pub const DRAIN_TIMEOUT: RangeInclusive<u64> = 10..=900;
    pub const SLOW_START: RangeInclusive<u64> = 0..=600;
    pub const CHECK_INTERVAL: RangeInclusive<u64> = 1..=50;
    pub const CHECK_TIMEOUT: RangeInclusive<u64> = 1..=300;
    pub const CHECK_THRESHOLD: RangeInclusive<u64> = 2..=10;
    pub const FLAP_MAX_FLAPS: RangeInclusive<u64> = 1..=100;
    pub const FLAP_WINDOW: RangeInclusive<u64> = 1..=3600;
    pub const FLAP_HOLD: RangeInclusive<u64> = 1..=86_400;
    /// 4-byte AS numbers (RFC 6793); AS 0 is reserved (RFC 7607).
    pub const AS_NUMBER: RangeInclusive<u64> = 1..=4_294_967_295;
    /// BGP's hold time field: 0 (no keepalives) or at least 3 s (RFC 4271, 4.2). The
    /// reader takes 0..=65535; `validate` refuses 1 and 2 with the reason.
    pub const HOLD_TIME: RangeInclusive<u64> = 0..=65535;
    pub const WITHDRAW_WAIT: RangeInclusive<u64> = 0..=300;
    /// BIRD sends TCP-MD5 keys of up to 80 bytes (TCP_MD5SIG_MAXKEYLEN).
    pub const BGP_PASSWORD_MAX: usize = 80;
    /// Longest instance name: it becomes a bpffs folder and prefixes pinned map names.
    pub const INSTANCE_NAME_MAX: usize = 32;
    /// Longest name of a group, listener or ACL.
    pub const OBJECT_NAME_MAX: usize = 64;
    /// IFNAMSIZ - 1: the kernel keeps one byte for the terminating NUL.
    pub const INTERFACE_NAME_MAX: usize = 15;

    pub const DEFAULT_WEIGHT: u8 = 100;
    pub const DEFAULT_FLOW_TABLE_SIZE: u32 = lb_common::DEFAULT_FLOW_TABLE_SIZE;
    pub const DEFAULT_MAX_LISTENERS: u32 = lb_common::DEFAULT_MAX_LISTENERS;
    pub const DEFAULT_MAX_BACKENDS: u32 = lb_common::DEFAULT_MAX_BACKENDS;
    pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = lb_common::MAGLEV_TABLE_SIZE;
    pub const DEFAULT_ESTABLISHED_TIMEOUT: u32 = 900;
    pub const DEFAULT_UDP_TIMEOUT: u32 = 30;
    pub const DEFAULT_DRAIN_TIMEOUT: u32 = 300;
    pub const DEFAULT_CHECK_INTERVAL: u32 = 2;
    pub const DEFAULT_CHECK_TIMEOUT: u32 = 5;
    pub const DEFAULT_CHECK_THRESHOLD: u32 = 3;
    /// The GUE port backends decapsulate on when `dsr.gue_port` is not given.
    pub const DEFAULT_GUE_PORT: u16 = 6080;
    /// Longest `dsr.source` prefix span: at most this many host bits come from a flow's
    /// hash, so the first two octets stay the operator's.
    pub const DSR_SOURCE_PREFIX: RangeInclusive<u64> = 16..=32;
    /// The same for an IPv6 `dsr.source`: at most 16 host bits, as for IPv4.
    pub const DSR_SOURCE_PREFIX6: RangeInclusive<u64> = 112..=128;
    pub const DEFAULT_HOLD_TIME: u16 = 9;
    pub const DEFAULT_WITHDRAW_WAIT: u32 = 2;
    pub const DEFAULT_BGP_PORT: u16 = 179;
}

use limits::*;

/// Reserved name of the default server group (the CLI's `--group default`).
pub const DEFAULT_GROUP_NAME: &str = "default";

/// Every scheduler with its config name, in the order the docs list them.
pub const SCHEDULERS: [Scheduler; 5] = [
    Scheduler::Wrr,
    Scheduler::Rr,
    Scheduler::Wlc,
    Scheduler::Sch,
    Scheduler::Tch,
];

/// Looks a scheduler up by its config name (`wrr`, `rr`, `wlc`, `sch`, `tch`).
pub fn scheduler_from_name(name: &str) -> Option<Scheduler> {
    SCHEDULERS.into_iter().find(|s| s.name() == name)
}

/// One load balancer instance: everything one `lb-ctl daemon` runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Names the pin folder /sys/fs/bpf/<instance>.
    pub instance: String,
    /// Where the XDP program attaches (client and backend side).
    pub interfaces: Vec<String>,
    /// How the XDP program attaches to `interfaces`.
    #[serde(skip_serializing_if = "is_default")]
    pub xdp_mode: XdpMode,
    #[serde(skip_serializing_if = "is_default")]
    pub forwarding: Forwarding,
    /// How `forwarding: dsr` carries packets to the backends.
    #[serde(skip_serializing_if = "is_default")]
    pub dsr: Dsr,
    /// What happens to ICMP echo requests to a VIP.
    #[serde(skip_serializing_if = "is_default")]
    pub vip_ping: VipPing,
    /// Entries of the LRU flow table.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_FLOW_TABLE_SIZE>")]
    pub flow_table_size: u32,
    /// Size of the listener maps: listeners beyond it cannot be added at run time either.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_MAX_LISTENERS>")]
    pub max_listeners: u32,
    /// Size of the backend map: one entry per (listener, group member).
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_MAX_BACKENDS>")]
    pub max_backends: u32,
    /// Slots of the Maglev array all listeners' tables share: each listener takes twice
    /// its `maglev_table_size` (the live table and the one being rebuilt). Absent:
    /// `max_listeners` × 2 × 65537, room for every listener at the default size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev_slots: Option<u32>,
    /// Source addresses of health probes, one per family at most; the kernel picks one
    /// when absent (or absent for the backend's family).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_source: Option<HealthCheckSource>,
    /// Where /metrics and the status page listen; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Source prefixes no client has (the backends' networks, say): new flows from them
    /// are dropped as forged, like those from the host's own addresses and the VIPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_client_sources: Vec<IpNet>,
    /// Host names the metrics listener answers to besides its own address: a request
    /// naming any other host in `Host` is refused (DNS rebinding).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics_hosts: Vec<String>,
    /// Announce the VIPs to routers over BGP (through a BIRD the daemon runs); off when
    /// absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<Bgp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<Acl>,
    /// Exactly one per instance; absent in the file means an empty group.
    #[serde(skip_serializing_if = "DefaultGroup::is_empty")]
    pub default_server_group: DefaultGroup,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vserver_groups: Vec<VServerGroup>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub primary_secondary_groups: Vec<PrimarySecondaryGroup>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

impl Config {
    /// A config with no groups, ACLs or listeners and every setting at its default.
    pub fn new(instance: impl Into<String>, interfaces: Vec<String>) -> Self {
        Self {
            instance: instance.into(),
            interfaces,
            xdp_mode: XdpMode::default(),
            forwarding: Forwarding::default(),
            dsr: Dsr::default(),
            vip_ping: VipPing::default(),
            flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            max_listeners: DEFAULT_MAX_LISTENERS,
            max_backends: DEFAULT_MAX_BACKENDS,
            maglev_slots: None,
            health_check_source: None,
            metrics_listen: None,
            refused_client_sources: Vec::new(),
            metrics_hosts: Vec::new(),
            bgp: None,
            acls: Vec::new(),
            default_server_group: DefaultGroup::default(),
            vserver_groups: Vec::new(),
            primary_secondary_groups: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// Slots of the shared Maglev array: `maglev_slots`, or room for `max_listeners`
    /// listeners at the default table size.
    pub const fn maglev_slots(&self) -> u32 {
        match self.maglev_slots {
            Some(slots) => slots,
            None => lb_common::default_maglev_slots(self.max_listeners),
        }
    }

    /// Slots of the Maglev array the listeners take: two tables of each one's size (the
    /// live one and the one a change writes).
    pub fn maglev_slots_reserved(&self) -> u64 {
        self.listeners
            .iter()
            .map(|l| u64::from(l.maglev_table_size) * u64::from(lb_common::TABLES_PER_LISTENER))
            .sum()
    }

    /// Members of the group `l` uses (0 for a group that does not exist).
    pub fn group_size(&self, l: &Listener) -> usize {
        match l.named_group() {
            None => self.default_server_group.servers.len(),
            Some(name) => self
                .vserver_group(name)
                .map(|g| g.servers.len())
                .or_else(|| self.primary_secondary_group(name).map(|_| 2))
                .unwrap_or(0),
        }
    }

    /// The config as a YAML file that `parse` reads back to an equal `Config`.
    pub fn to_yaml(&self) -> String {
        // Every map key here is a fixed field name and every value a string, number, bool
        // or sequence, which serde_yaml always serializes: an error would be a bug in the
        // model, not something a user can cause.
        serde_yaml::to_string(self).expect("the config model serializes to YAML")
    }

    pub fn vserver_group(&self, name: &str) -> Option<&VServerGroup> {
        self.vserver_groups.iter().find(|g| g.name == name)
    }

    pub fn primary_secondary_group(&self, name: &str) -> Option<&PrimarySecondaryGroup> {
        self.primary_secondary_groups
            .iter()
            .find(|g| g.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn acl(&self, name: &str) -> Option<&Acl> {
        self.acls.iter().find(|a| a.name == name)
    }
}

/// How the XDP program attaches to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, else generic: the daemon starts
    /// on any interface, possibly at a fraction of native speed.
    #[default]
    Auto,
    /// Native (driver) mode only: an interface whose driver refuses it is an error, so a
    /// host never runs at generic speed by accident.
    Native,
    /// Generic (skb) mode: after the kernel has built a socket buffer; works on every
    /// interface.
    Generic,
}

impl XdpMode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// How a client packet reaches its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Destination rewritten to the backend; replies come back through the LB and are
    /// rewritten to the VIP (LVS-NAT).
    #[default]
    Nat,
    /// Direct server return: the client's packet goes to the backend whole, inside an
    /// outer header (`dsr.encapsulation`); the backend answers the client directly.
    Dsr,
}

impl Forwarding {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dsr => "dsr",
        }
    }
}

/// The `dsr:` section: the encapsulation of `forwarding: dsr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Dsr {
    pub encapsulation: Tunnel,
    /// UDP port backends decapsulate GUE on.
    #[serde(skip_serializing_if = "eq_u16::<DEFAULT_GUE_PORT>")]
    pub gue_port: u16,
    /// Outer source per family: an address, or a prefix whose host bits each flow's hash
    /// picks (at most 16 of them). A family without one (or no field): the LB's address on
    /// the way to each backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<DsrSource>,
}

/// `dsr.source`: the outer source of IPv4 listeners' tunnels and of IPv6 listeners'
/// tunnels, at most one address or prefix per family (each tunnel's outer header is of
/// its listener's family). Written as one, or a list of one of each family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsrSource {
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
}

impl DsrSource {
    /// `None` when both are absent: no source is the same as no `dsr.source`.
    pub fn new(ipv4: Option<Ipv4Net>, ipv6: Option<Ipv6Net>) -> Option<Self> {
        (ipv4.is_some() || ipv6.is_some()).then_some(Self { ipv4, ipv6 })
    }

    pub fn ipv4(&self) -> Option<Ipv4Net> {
        self.ipv4
    }

    pub fn ipv6(&self) -> Option<Ipv6Net> {
        self.ipv6
    }

    /// The prefixes set, IPv4 first.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> {
        self.ipv4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.ipv6.map(IpNet::V6))
    }
}

impl From<IpNet> for DsrSource {
    fn from(net: IpNet) -> Self {
        match net {
            IpNet::V4(n) => Self {
                ipv4: Some(n),
                ipv6: None,
            },
            IpNet::V6(n) => Self {
                ipv4: None,
                ipv6: Some(n),
            },
        }
    }
}

/// One prefix as a scalar, two as a list: what the file said reads back the same.
impl Serialize for DsrSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let prefixes: Vec<IpNet> = self.prefixes().collect();
        match prefixes.as_slice() {
            [one] => one.serialize(s),
            all => all.serialize(s),
        }
    }
}

impl Default for Dsr {
    fn default() -> Self {
        Self {
            encapsulation: Tunnel::Ipip,
            gue_port: DEFAULT_GUE_PORT,
            source: None,
        }
    }
}

/// The outer header of `forwarding: dsr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    /// IPv4 in IPv4 (IP protocol 4).
    #[default]
    Ipip,
    /// IPv4 in UDP (GUE variant 1) to `gue_port`: backends' NICs spread it over their
    /// queues by the UDP source port, which varies per flow.
    Gue,
}

impl Tunnel {
    pub const fn encapsulation(self) -> lb_common::Encapsulation {
        match self {
            Self::Ipip => lb_common::Encapsulation::Ipip,
            Self::Gue => lb_common::Encapsulation::Gue,
        }
    }
}

/// What the data plane does with an ICMP echo request ("ping") to a VIP. Nothing else sent
/// to a VIP outside its listeners reaches the LB's kernel (docs/packet-policy.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VipPing {
    /// Answered from XDP, whatever the listeners and the health of the backends.
    #[default]
    Answer,
    /// Dropped (counted as `drop_vip_other_protocol`).
    Drop,
}

/// `health_check_source`: where health probes come from, at most one address per family.
/// IPv4 backends are probed from the IPv4 address, IPv6 backends from the IPv6 one; for a
/// family without one the kernel picks the source. Written as one address, or a list of
/// one address of each family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckSource {
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
}

impl HealthCheckSource {
    /// `None` when both are absent: no source is the same as no `health_check_source`.
    pub fn new(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> Option<Self> {
        (ipv4.is_some() || ipv6.is_some()).then_some(Self { ipv4, ipv6 })
    }

    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }

    /// The source of a probe to `backend`: the address of its family, if one is set.
    pub fn for_backend(&self, backend: IpAddr) -> Option<IpAddr> {
        match backend {
            IpAddr::V4(_) => self.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.map(IpAddr::V6),
        }
    }

    /// The addresses set, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }
}

impl From<IpAddr> for HealthCheckSource {
    fn from(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(a) => Self {
                ipv4: Some(a),
                ipv6: None,
            },
            IpAddr::V6(a) => Self {
                ipv4: None,
                ipv6: Some(a),
            },
        }
    }
}

impl From<Ipv4Addr> for HealthCheckSource {
    fn from(address: Ipv4Addr) -> Self {
        IpAddr::V4(address).into()
    }
}

impl From<Ipv6Addr> for HealthCheckSource {
    fn from(address: Ipv6Addr) -> Self {
        IpAddr::V6(address).into()
    }
}

/// One address as a scalar, two as a list: what the file said reads back the same.
impl Serialize for HealthCheckSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let addresses: Vec<IpAddr> = self.addresses().collect();
        match addresses.as_slice() {
            [one] => one.serialize(s),
            all => all.serialize(s),
        }
    }
}

/// The BGP speaker of the host: it announces each VIP that has a backend taking new flows
/// with this host as the next hop, an IPv4 VIP as a /32 to every IPv4 neighbor and an
/// IPv6 VIP as a /128 to every IPv6 neighbor (each session carries its own family).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bgp {
    /// BGP identifier of this host; usually one of its addresses.
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// Seconds without a message from a neighbor before its session is torn down and its
    /// routes withdrawn; keepalives go every third of it. 0 turns keepalives off. The
    /// session uses the smaller of the two sides' values.
    #[serde(skip_serializing_if = "eq_u16::<DEFAULT_HOLD_TIME>")]
    pub hold_time: u16,
    /// Seconds a graceful stop waits between withdrawing the VIPs and closing the
    /// sessions, so routers move traffic away while this host still forwards it.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_WITHDRAW_WAIT>")]
    pub withdraw_wait: u32,
    pub neighbors: Vec<BgpNeighbor>,
}

impl Bgp {
    pub fn new(router_id: Ipv4Addr, local_as: u32, neighbors: Vec<BgpNeighbor>) -> Self {
        Self {
            router_id,
            local_as,
            hold_time: DEFAULT_HOLD_TIME,
            withdraw_wait: DEFAULT_WITHDRAW_WAIT,
            neighbors,
        }
    }
}

/// One router this host holds a BGP session with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BgpNeighbor {
    /// Its family is the session's: the VIPs of that family are announced on it.
    pub address: IpAddr,
    pub remote_as: u32,
    /// TCP port of the neighbor's BGP.
    #[serde(skip_serializing_if = "eq_u16::<DEFAULT_BGP_PORT>")]
    pub port: u16,
    /// Run BFD on the session: a dead peer is noticed in under a second, not a hold time.
    #[serde(skip_serializing_if = "is_default")]
    pub bfd: bool,
    /// TCP MD5 signature key (RFC 2385) shared with the neighbor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl BgpNeighbor {
    pub fn new(address: impl Into<IpAddr>, remote_as: u32) -> Self {
        Self {
            address: address.into(),
            remote_as,
            port: DEFAULT_BGP_PORT,
            bfd: false,
            password: None,
        }
    }
}

/// A named list of source prefixes that listeners allow or deny.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Acl {
    pub name: String,
    /// Either family: a prefix of the other family than a packet's never matches it.
    pub entries: Vec<IpNet>,
}

/// The instance's default server group. Its servers carry no port: each listener on this
/// group gives one with `backend_port`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DefaultGroup {
    pub servers: Vec<DefaultServer>,
}

impl DefaultGroup {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DefaultServer {
    pub address: IpAddr,
    #[serde(skip_serializing_if = "eq_u8::<DEFAULT_WEIGHT>")]
    pub weight: u8,
}

impl DefaultServer {
    pub fn new(address: impl Into<IpAddr>) -> Self {
        Self {
            address: address.into(),
            weight: DEFAULT_WEIGHT,
        }
    }
}

/// A user-made group whose members each name their own port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VServerGroup {
    pub name: String,
    pub servers: Vec<Member>,
}

/// One member of a vServer group; a server may be a member several times on other ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub address: IpAddr,
    pub port: u16,
    #[serde(skip_serializing_if = "eq_u8::<DEFAULT_WEIGHT>")]
    pub weight: u8,
}

impl Member {
    pub fn new(address: impl Into<IpAddr>, port: u16) -> Self {
        Self {
            address: address.into(),
            port,
            weight: DEFAULT_WEIGHT,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            port: self.port,
        }
    }
}

/// Active/passive pair: the primary takes every new flow while it is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrimarySecondaryGroup {
    pub name: String,
    pub primary: Endpoint,
    pub secondary: Endpoint,
    /// Probe the secondary too; off by default, as in CLB.
    #[serde(skip_serializing_if = "is_default")]
    pub probe_secondary: bool,
}

/// A server and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(address: impl Into<IpAddr>, port: u16) -> Self {
        Self {
            address: address.into(),
            port,
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// `198.18.1.10:8080`, `[2001:db8::10]:8080`: IPv6 in brackets, as everywhere an
/// endpoint is shown.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.socket_addr().fmt(f)
    }
}

/// The transport a listener balances. The config file, the state file, the API and the
/// CLI spell it `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Why an HTTP or HTTPS listener is refused.
pub const LAYER_7_REFUSAL: &str =
    "HTTP/HTTPS listeners are Layer 7; this XDP load balancer forwards TCP and UDP only";

/// The protocol by name, or why the name is not one (in the API's and the state file's
/// JSON; the config file's reader gives its own, located, message).
impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "http" | "https" => Err(serde::de::Error::custom(LAYER_7_REFUSAL)),
            other => Err(serde::de::Error::custom(format!(
                "protocol `{other}` is not one of tcp, udp"
            ))),
        }
    }
}

impl Protocol {
    /// The IP protocol number, as the data plane's listener key holds it.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::PROTO_TCP,
            Self::Udp => lb_common::PROTO_UDP,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VIP, port and protocol that clients connect to, and how its flows are spread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    /// The VIP. Its servers are of its family (`validate`).
    pub address: IpAddr,
    pub port: u16,
    /// Port of the default group's servers for this listener; set exactly when the
    /// listener uses the default group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_port: Option<u16>,
    /// `None` = the default group. Use `named_group` to read it: code-built configs may
    /// also spell the default group `Some("default")`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_group: Option<String>,
    #[serde(serialize_with = "serialize_scheduler", skip_serializing_if = "is_wrr")]
    pub scheduler: Scheduler,
    /// Seconds of source-IP affinity; 0 = off. TCP listeners only.
    #[serde(skip_serializing_if = "is_default")]
    pub persistence_timeout: u32,
    /// Seconds a TCP flow may idle before it is forgotten.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_ESTABLISHED_TIMEOUT>")]
    pub established_timeout: u32,
    /// Seconds a UDP flow may idle before it is forgotten.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_UDP_TIMEOUT>")]
    pub udp_timeout: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub connection_drain: ConnectionDrain,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<ListenerAcl>,
    /// Seconds over which a recovered or added backend's weight ramps up; 0 = off.
    #[serde(skip_serializing_if = "is_default")]
    pub slow_start: u32,
    /// Slots of the listener's Maglev table (a prime). A larger table moves fewer flows
    /// when one of many backends leaves.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_MAGLEV_TABLE_SIZE>")]
    pub maglev_table_size: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub health_check: HealthCheck,
}

impl Listener {
    /// A listener on the default group with every option at its default. Set
    /// `backend_port` or `server_group` before validating.
    pub fn new(
        name: impl Into<String>,
        protocol: Protocol,
        address: impl Into<IpAddr>,
        port: u16,
    ) -> Self {
        Self {
            name: name.into(),
            protocol,
            address: address.into(),
            port,
            backend_port: None,
            server_group: None,
            scheduler: Scheduler::Wrr,
            persistence_timeout: 0,
            established_timeout: DEFAULT_ESTABLISHED_TIMEOUT,
            udp_timeout: DEFAULT_UDP_TIMEOUT,
            connection_drain: ConnectionDrain::default(),
            acl: None,
            slow_start: 0,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            health_check: HealthCheck::default(),
        }
    }

    /// The check run against this listener's backends: the configured type, else the
    /// protocol's own.
    pub fn health_check_kind(&self) -> HealthCheckKind {
        self.health_check.kind_for(self.protocol)
    }

    /// The vServer or primary/secondary group this listener uses; `None` for the default
    /// group, whether the config omits `server_group` or names `default`.
    pub fn named_group(&self) -> Option<&str> {
        self.server_group
            .as_deref()
            .filter(|name| *name != DEFAULT_GROUP_NAME)
    }

    /// What the data plane keys the listener on. The address is compared as a value,
    /// so `2001:db8::1` and `2001:db8:0::1` are one VIP.
    pub fn frontend(&self) -> (IpAddr, u16, Protocol) {
        (self.address, self.port, self.protocol)
    }

    /// The VIP and port: `198.19.0.100:80`, `[2001:db8::100]:80`.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.address, self.port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionDrain {
    #[serde(skip_serializing_if = "is_default")]
    pub enabled: bool,
    /// Seconds a removed or drained server's flows may continue before they are cut.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_DRAIN_TIMEOUT>")]
    pub timeout: u32,
}

impl Default for ConnectionDrain {
    fn default() -> Self {
        Self {
            enabled: false,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerAcl {
    #[serde(rename = "type")]
    pub kind: AclKind,
    pub name: String,
}

/// What a source matching the listener's ACL gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclKind {
    /// Only matching sources are served.
    Allow,
    /// Matching sources are dropped.
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// `None` when the config names no type: the listener's protocol decides
    /// ([`HealthCheck::kind_for`]). Kept apart from an explicit type so that an export
    /// reads back the same whatever the protocol.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<HealthCheckKind>,
    /// Seconds between probes of one backend.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_CHECK_INTERVAL>")]
    pub interval: u32,
    /// Seconds one probe may take.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_CHECK_TIMEOUT>")]
    pub timeout: u32,
    /// Consecutive successes that bring a backend up.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_CHECK_THRESHOLD>")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a backend down.
    #[serde(skip_serializing_if = "eq_u32::<DEFAULT_CHECK_THRESHOLD>")]
    pub unhealthy_threshold: u32,
    /// Probe this port instead of the backend's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only with `kind == Http`; absent means `HttpCheck::default()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Only with `kind == Udp`; absent means `UdpCheck::default()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flap_damping: Option<FlapDamping>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            healthy_threshold: DEFAULT_CHECK_THRESHOLD,
            unhealthy_threshold: DEFAULT_CHECK_THRESHOLD,
            port: None,
            http: None,
            udp: None,
            flap_damping: None,
        }
    }
}

impl HealthCheck {
    /// The check run for a listener of `protocol`: the configured type, else the
    /// protocol's own.
    pub fn kind_for(&self, protocol: Protocol) -> HealthCheckKind {
        self.kind.unwrap_or(HealthCheckKind::default_for(protocol))
    }

    /// The HTTP probe settings in effect (defaults when the section is absent).
    pub fn http_settings(&self) -> HttpCheck {
        self.http.clone().unwrap_or_default()
    }

    /// The UDP probe settings in effect (defaults when the section is absent).
    pub fn udp_settings(&self) -> UdpCheck {
        self.udp.clone().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP handshake to the backend port.
    Tcp,
    /// An HTTP request whose status must fall in one of `codes`.
    Http,
    /// A datagram, and optionally an expected reply; ICMP port unreachable is a failure.
    Udp,
    /// No probing: every backend counts as healthy.
    None,
}

impl HealthCheckKind {
    /// The check of a listener whose config names none. A UDP service answers no TCP
    /// handshake, so a TCP check would mark every backend of a UDP-only service down;
    /// CLB checks UDP listeners with UDP too.
    pub const fn default_for(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
            Self::None => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    #[serde(skip_serializing_if = "is_default")]
    pub method: HttpMethod,
    /// Host header; the backend address when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    /// Status classes that count as healthy.
    pub codes: Vec<HttpCodeClass>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        Self {
            method: HttpMethod::default(),
            host: None,
            path: "/".to_owned(),
            codes: vec![HttpCodeClass::Http2xx, HttpCodeClass::Http3xx],
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
}

impl HttpMethod {
    /// The method as it goes on the request line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HttpCodeClass {
    #[serde(rename = "http_2xx")]
    Http2xx,
    #[serde(rename = "http_3xx")]
    Http3xx,
    #[serde(rename = "http_4xx")]
    Http4xx,
    #[serde(rename = "http_5xx")]
    Http5xx,
}

impl HttpCodeClass {
    pub const ALL: [Self; 4] = [Self::Http2xx, Self::Http3xx, Self::Http4xx, Self::Http5xx];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Http2xx => "http_2xx",
            Self::Http3xx => "http_3xx",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
        }
    }

    /// Whether an HTTP status code falls in this class.
    pub const fn contains(self, status: u16) -> bool {
        let first = match self {
            Self::Http2xx => 200,
            Self::Http3xx => 300,
            Self::Http4xx => 400,
            Self::Http5xx => 500,
        };
        status >= first && status < first + 100
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UdpCheck {
    /// Payload of the probe datagram; empty when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// A substring the reply must contain; when absent, no ICMP error within the timeout
    /// is success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// Holds down a backend that changes state more than `max_flaps` times in `window`
/// seconds, for `hold` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlapDamping {
    pub max_flaps: u32,
    pub window: u32,
    pub hold: u32,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn eq_u32<const N: u32>(value: &u32) -> bool {
    *value == N
}

fn eq_u16<const N: u16>(value: &u16) -> bool {
    *value == N
}

fn eq_u8<const N: u8>(value: &u8) -> bool {
    *value == N
}

fn is_wrr(scheduler: &Scheduler) -> bool {
    *scheduler == Scheduler::Wrr
}

fn serialize_scheduler<S: Serializer>(scheduler: &Scheduler, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(scheduler.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip() {
        for s in SCHEDULERS {
            assert_eq!(scheduler_from_name(s.name()), Some(s));
        }
        assert_eq!(scheduler_from_name("qch"), None);
    }

    #[test]
    fn http_code_classes_cover_their_hundred() {
        assert!(HttpCodeClass::Http2xx.contains(200));
        assert!(HttpCodeClass::Http2xx.contains(299));
        assert!(!HttpCodeClass::Http2xx.contains(300));
        assert!(HttpCodeClass::Http5xx.contains(503));
        assert!(!HttpCodeClass::Http4xx.contains(399));
    }

    #[test]
    fn defaults_are_left_out_of_the_yaml() {
        let mut config = Config::new("demo", vec!["eth0".to_owned()]);
        let mut listener = Listener::new("web", Protocol::Tcp, Ipv4Addr::new(198, 18, 0, 100), 80);
        listener.backend_port = Some(8080);
        config.listeners.push(listener);
        config
            .default_server_group
            .servers
            .push(DefaultServer::new(Ipv4Addr::new(198, 18, 1, 10)));
        let yaml = config.to_yaml();
        for absent in [
            "xdp_mode",
            "forwarding",
            "flow_table_size",
            "max_listeners",
            "weight",
            "scheduler",
            "established_timeout",
            "udp_timeout",
            "connection_drain",
            "health_check",
            "vserver_groups",
        ] {
            assert!(!yaml.contains(absent), "{absent} in\n{yaml}");
        }
        assert!(yaml.contains("backend_port: 8080"), "{yaml}");
    }

    #[test]
    fn named_group_treats_default_as_the_default_group() {
        let mut l = Listener::new("a", Protocol::Udp, Ipv4Addr::new(198, 18, 0, 1), 53);
        assert_eq!(l.named_group(), None);
        l.server_group = Some("default".to_owned());
        assert_eq!(l.named_group(), None);
        l.server_group = Some("dns".to_owned());
        assert_eq!(l.named_group(), Some("dns"));
    }
}
