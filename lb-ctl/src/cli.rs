//! Command-line interface: the clap definitions (also the source of completions and the
//! man page) and the parsing of operator input such as `ADDR[:PORT]`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::TypedValueParser as _};
use lb_common::Scheduler;

use crate::{
    config::{Protocol, SCHEDULERS, limits, scheduler_from_name},
    overlay::ListenerSetting,
};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/lb-ctl.sock";
/// Default folder of state files and instance locks.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb-ctl";

/// How addresses are written on the command line (the `--help` epilogue).
const ENDPOINT_SYNTAX: &str = "\
Addresses: ADDR is 198.18.1.10 or 2001:db8::10; an endpoint with a port is
ADDR:PORT, with an IPv6 address in brackets: 198.18.1.10:8080, [2001:db8::10]:8080.";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the daemon or the data plane failed (map or I/O error)
  2  bad input: invalid config, unknown name, a change refused by a rule
  3  no daemon answered on the control socket
  4  a wait timed out (wait drained)";

/// A scheduler by its config name. `Scheduler` lives in lb-common, which cannot derive
/// clap's `ValueEnum`; this parser gives the same refusal, listing the valid names.
fn scheduler_parser() -> impl clap::builder::TypedValueParser<Value = Scheduler> {
    clap::builder::PossibleValuesParser::new(SCHEDULERS.map(Scheduler::name)).map(|name| {
        scheduler_from_name(&name).expect("the parser accepts only the schedulers' names")
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "lb-ctl",
    version,
    about = "XDP Layer-4 load balancer with CLB-style server groups: daemon and control CLI",
    after_help = format!("{ENDPOINT_SYNTAX}\n\n{EXIT_CODES}")
)]
pub struct Cli {
    /// Control socket of the daemon, for the commands that talk to it (each of them also
    /// takes `--socket` after its name, which wins).
    #[arg(long, env = "LB_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// The `--socket` of a command that talks to the daemon. Only those commands have it, so
/// `validate --help` does not suggest a daemon is involved.
#[derive(Clone, Debug, Default, Args)]
pub struct Connect {
    /// Control socket of the daemon (default: `--socket` before the command, $LB_SOCKET,
    /// else /run/lb-ctl.sock).
    #[arg(long = "socket", value_name = "SOCKET", global = true)]
    pub socket: Option<PathBuf>,
}

impl Connect {
    /// This command's socket, else the one given before the command (or its default).
    pub fn or(&self, before: &std::path::Path) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| before.to_owned())
    }
}

/// A command group whose every subcommand talks to the daemon: `--socket` is accepted
/// after any of them.
#[derive(Debug, Args)]
pub struct Nested<T: Subcommand> {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub command: T,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the XDP program, fill its maps from the config, serve the API.
    ///
    /// Also turns `net.ipv4.conf.<iface>.accept_local` on for each interface it attaches
    /// to: replies the XDP program hands to the kernel (next hop not resolved yet) keep
    /// the VIP as their source, which the kernel drops where the VIP is an address of this
    /// host unless it accepts local sources there. It warns about a strict `rp_filter`
    /// that would drop them all the same.
    Daemon(DaemonArgs),
    /// Check a config file offline; lists every error with its path, and warnings about
    /// settings that work but probably not as meant (exit 0 with warnings).
    Validate {
        /// The config file.
        file: PathBuf,
    },
    /// Listeners, groups and backends with weight, state and active flows; the
    /// interfaces with the XDP mode in force.
    Status(StatusArgs),
    /// Packet, byte and new-flow counters and rates per listener and backend.
    Stats {
        #[command(flatten)]
        connect: Connect,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Entries of the flow table: client, VIP:port, backend, state, idle time (like
    /// `ipvsadm -Lnc`).
    Flows(FlowsArgs),
    /// Add, change or remove servers of a group.
    Server(Nested<ServerCommand>),
    /// Wait for a condition.
    Wait(Nested<WaitCommand>),
    /// Create, delete and inspect server groups.
    Group(Nested<GroupCommand>),
    /// Add, change, remove and list listeners.
    Listener(Nested<ListenerCommand>),
    /// Edit source access lists.
    Acl(Nested<AclCommand>),
    /// Why a packet from SRC to VIP lands where it does: listener, access list, flow
    /// entry, scheduler, table slot, backend — computed from the live maps.
    Explain {
        #[command(flatten)]
        connect: Connect,
        /// Client ADDR:PORT ([ADDR]:PORT for IPv6).
        #[arg(long, value_parser = parse_endpoint)]
        src: SocketAddr,
        /// VIP:PORT ([VIP]:PORT for IPv6).
        #[arg(long, value_parser = parse_endpoint)]
        dst: SocketAddr,
        /// The packet's protocol.
        #[arg(long, alias = "proto", value_enum)]
        protocol: Protocol,
        /// Explain a packet of an established connection (an ACK) instead of a SYN.
        #[arg(long)]
        established: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw every VIP from BGP while this host keeps forwarding, so routers move new
    /// traffic away and established flows finish here; before maintenance or a stop.
    ///
    /// Needs a `bgp` section. It lasts until `lb-ctl drain-host --undo` or the daemon's
    /// next start (a reload keeps it). `lb-ctl status` shows it.
    DrainHost {
        #[command(flatten)]
        connect: Connect,
        /// Announce the VIPs with a healthy backend again.
        #[arg(long)]
        undo: bool,
    },
    /// Exit 0 when the daemon answers and its XDP program is attached to every interface
    /// of its config; 1 (with the reason) when an interface is missing, 3 when no daemon
    /// answers. For keepalived's `vrrp_script` and other health checkers of the LB host.
    Check {
        #[command(flatten)]
        connect: Connect,
        /// Seconds to wait for the daemon's answer before calling it not serving.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
        timeout: u64,
    },
    /// Re-read the config file and apply the difference (also SIGHUP).
    Reload(Connect),
    /// Print the effective state (config + runtime changes) as a config file.
    Export(Connect),
    /// Detach and unpin an instance's data plane (stopping the daemon does not).
    Teardown {
        /// Instance name (default: the one named in --config).
        #[arg(long)]
        instance: Option<String>,
        /// Config file to take the instance name from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where bpffs is mounted.
        #[arg(long, default_value = crate::pins::BPFFS)]
        bpffs: PathBuf,
    },
    /// On a backend of a `forwarding: dsr` load balancer: strip the LBs' outer headers
    /// (IPIP, GUE) in XDP and hand the client's packet to the kernel, for kernels without
    /// the `ipip` or `fou` module. The program stays attached when the command exits
    /// (pinned under <bpffs>/<instance>).
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Print a shell completion script, e.g. `lb-ctl completions bash >
    /// /etc/bash_completion.d/lb-ctl`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `lb-ctl man | man -l -`.
    Man,
}

impl Command {
    /// The socket of a command that talks to the daemon, `None` for the others.
    pub fn connect(&self) -> Option<&Connect> {
        match self {
            Self::Daemon(a) => Some(&a.connect),
            Self::Status(a) => Some(&a.connect),
            Self::Flows(a) => Some(&a.connect),
            Self::Server(Nested { connect, .. })
            | Self::Wait(Nested { connect, .. })
            | Self::Group(Nested { connect, .. })
            | Self::Listener(Nested { connect, .. })
            | Self::Acl(Nested { connect, .. })
            | Self::Stats { connect, .. }
            | Self::Explain { connect, .. }
            | Self::DrainHost { connect, .. }
            | Self::Check { connect, .. }
            | Self::Reload(connect)
            | Self::Export(connect) => Some(connect),
            Self::Validate { .. }
            | Self::Teardown { .. }
            | Self::Decap(_)
            | Self::Completions { .. }
            | Self::Man => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until interrupted (with --json: one document a second).
    #[arg(long)]
    pub watch: bool,
}

/// Default of `flows --limit`: a screenful of pages, not a million lines.
pub const DEFAULT_FLOW_LIMIT: usize = 1000;

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// Only the flows of this listener.
    #[arg(long)]
    pub listener: Option<String>,
    /// Only the flows to this backend: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
    #[arg(long, value_parser = parse_server)]
    pub backend: Option<(IpAddr, Option<u16>)>,
    /// Show at most N flows (0: all); a last line counts those left out.
    #[arg(long, default_value_t = DEFAULT_FLOW_LIMIT)]
    pub limit: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach the decapsulation program to IFACE (again: apply new settings), and warn
    /// about host settings that would break DSR (arp_ignore, arp_announce, rp_filter, the
    /// VIP on lo).
    Attach {
        /// The backend's interface the LBs' packets arrive on.
        iface: String,
        #[command(flatten)]
        pin: DecapPin,
        /// Also strip GUE: IPv4 in UDP, or IPv6 in UDP over IPv6, to this port (the LBs'
        /// `dsr.gue_port`, 6080 by default). IPIP and ip6ip6 are always stripped.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        gue_port: Option<u16>,
        /// Accept tunnelled packets only from this source prefix (the LB hosts'; ADDR or
        /// ADDR/LEN, IPv4 or IPv6, repeatable; with any, a family without one accepts
        /// none). Without it any host can hand this backend a packet from any "client".
        #[arg(long = "allow-source", value_parser = parse_prefix)]
        allow_sources: Vec<crate::config::IpNet>,
        /// A VIP this backend serves, IPv4 or IPv6, checked to be on lo (repeatable).
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
    },
    /// Detach it from IFACE; the last interface removes the pins and counters.
    Detach {
        /// The interface to detach from.
        iface: String,
        #[command(flatten)]
        pin: DecapPin,
    },
    /// Interfaces, settings and counters (decapsulated, passed, dropped).
    Status {
        #[command(flatten)]
        pin: DecapPin,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Where `lb-ctl decap` pins its program.
#[derive(Debug, Args)]
pub struct DecapPin {
    /// Pin folder name under bpffs: one per set of settings (each network namespace of a
    /// test host gets its own).
    #[arg(long, default_value = crate::decap::DEFAULT_NAME)]
    pub instance: String,
    /// Where bpffs is mounted.
    #[arg(long, default_value = crate::pins::BPFFS)]
    pub bpffs: PathBuf,
}

/// A prefix (ADDR/LEN) or address of either family.
pub fn parse_prefix(s: &str) -> Result<crate::config::IpNet, String> {
    s.parse::<crate::config::IpNet>()
        .map_err(|e| match e.hint() {
            Some(hint) => format!("{e} ({hint})"),
            None => e.to_string(),
        })
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    // The socket it serves the API on.
    #[command(flatten)]
    pub connect: Connect,
    /// The config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Folder of the state file (runtime changes) and the instance lock.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Group allowed to use the control socket (mode 0660; default: root only, 0600).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Run inside this network namespace (`ip netns` name: its interfaces, addresses and
    /// settings) while keeping the host's bpffs.
    #[arg(long)]
    pub netns: Option<String>,
    /// Where bpffs is mounted.
    #[arg(long, default_value = crate::pins::BPFFS)]
    pub bpffs: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Seconds between sweeps of the flow table (active-flow counts).
    #[arg(long, default_value_t = 1)]
    pub sweep_interval: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// A server of a group: the group, and ADDR (default group) or ADDR:PORT (vServer and
/// primary/secondary groups).
#[derive(Debug, Args)]
pub struct ServerRef {
    /// Group name: `default` or a vServer / primary-secondary group.
    #[arg(long)]
    pub group: String,
    /// ADDR (default group) or ADDR:PORT; an IPv6 address with a port in brackets,
    /// [2001:db8::10]:8080.
    #[arg(value_parser = parse_server)]
    pub server: (IpAddr, Option<u16>),
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Add a server to a group (new flows start going to it).
    Add {
        #[command(flatten)]
        server: ServerRef,
        /// 0..=100 (default 100).
        #[arg(long, allow_negative_numbers = true, value_parser = parse_weight)]
        weight: Option<u8>,
    },
    /// Change a server's weight (new flows only; 0 = no new flows, established continue).
    Set {
        #[command(flatten)]
        server: ServerRef,
        /// 0..=100; 0 = no new flows, established ones continue.
        #[arg(long, allow_negative_numbers = true, value_parser = parse_weight)]
        weight: u8,
    },
    /// Take a server out of a group. New flows stop at once; its established flows follow
    /// the listener's connection drain (kept until the drain timeout, or cut at once when
    /// drain is off).
    Remove {
        #[command(flatten)]
        server: ServerRef,
        /// Cut its established flows now, even with connection drain on.
        #[arg(long)]
        now: bool,
    },
    /// Drain a server: no new flows; established flows continue until they end or the
    /// timeout passes, then they are cut (TCP: RST to the client; UDP: dropped).
    Drain {
        #[command(flatten)]
        server: ServerRef,
        /// Wait until it has no active flows (exit 4 at the timeout).
        #[arg(long)]
        wait: bool,
        /// Seconds before remaining flows are cut (default: the listener's
        /// connection_drain timeout).
        #[arg(long)]
        timeout: Option<u32>,
    },
    /// End a drain: the server takes new flows again.
    Undrain {
        #[command(flatten)]
        server: ServerRef,
    },
}

#[derive(Debug, Subcommand)]
pub enum WaitCommand {
    /// Block until a server has no active flows; exit 4 at the timeout with the count.
    Drained {
        #[command(flatten)]
        server: ServerRef,
        /// Seconds to wait.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupType {
    /// Servers as ADDR:PORT with weights, any number.
    Vserver,
    /// Exactly two servers: the secondary takes over while the primary is down.
    PrimarySecondary,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a vServer or primary/secondary group.
    Create {
        /// Name of the new group.
        name: String,
        /// Kind of group.
        #[arg(long = "type", value_enum)]
        kind: GroupType,
        /// Primary server, ADDR:PORT or [ADDR]:PORT (primary-secondary groups).
        #[arg(long, value_parser = parse_endpoint)]
        primary: Option<SocketAddr>,
        /// Secondary server, ADDR:PORT or [ADDR]:PORT (primary-secondary groups).
        #[arg(long, value_parser = parse_endpoint)]
        secondary: Option<SocketAddr>,
        /// Health-check the secondary too (default: only the primary, as in CLB).
        #[arg(long)]
        probe_secondary: bool,
    },
    /// Delete a group no listener uses.
    Delete {
        /// The group.
        name: String,
    },
    /// One group and its servers.
    Show {
        /// The group.
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Every group.
    List(ReadArgs),
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// A listener's health check type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckType {
    /// A TCP handshake to the backend port.
    Tcp,
    /// An HTTP request whose status must be in --http-codes.
    Http,
    /// A datagram (--udp-request), optionally expecting a reply (--udp-expect).
    Udp,
    /// No probing: every backend counts as healthy.
    None,
}

/// An HTTP check's method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpMethodArg {
    Get,
    Head,
}

/// A listener's access list: `allow:NAME`, `deny:NAME`, or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclRef {
    Allow(String),
    Deny(String),
    None,
}

/// `allow:NAME`, `deny:NAME` or `none`.
pub fn parse_acl_ref(s: &str) -> Result<AclRef, String> {
    let hint = "expected allow:NAME, deny:NAME or none";
    match s.split_once(':') {
        _ if s == "none" => Ok(AclRef::None),
        Some(("allow", name)) if !name.is_empty() => Ok(AclRef::Allow(name.to_owned())),
        Some(("deny", name)) if !name.is_empty() => Ok(AclRef::Deny(name.to_owned())),
        _ => Err(format!("`{s}`: {hint}")),
    }
}

/// Flap damping: `MAX_FLAPS/WINDOW/HOLD` or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlapArg {
    Set {
        max_flaps: u32,
        window: u32,
        hold: u32,
    },
    None,
}

/// `MAX_FLAPS/WINDOW/HOLD` (e.g. `4/60/300`) or `none`.
pub fn parse_flap(s: &str) -> Result<FlapArg, String> {
    if s == "none" {
        return Ok(FlapArg::None);
    }
    let parts: Vec<&str> = s.split('/').collect();
    let numbers: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
    match numbers.as_deref() {
        Some(&[max_flaps, window, hold]) => Ok(FlapArg::Set {
            max_flaps,
            window,
            hold,
        }),
        _ => Err(format!(
            "`{s}`: expected MAX_FLAPS/WINDOW/HOLD (three integers, e.g. 4/60/300) or none"
        )),
    }
}

/// A number of seconds in `range`, or why not.
fn seconds_in(s: &str, range: std::ops::RangeInclusive<u64>) -> Result<u32, String> {
    match s.parse::<u64>() {
        Ok(v) if range.contains(&v) => Ok(v as u32),
        Ok(v) => Err(format!("{v} is not in {}..={}", range.start(), range.end())),
        Err(_) => Err(format!(
            "`{s}` is not a whole number ({}..={})",
            range.start(),
            range.end()
        )),
    }
}

/// A clap value parser of seconds (or counts) in one of the config's ranges: the same
/// limits as the file, refused before anything reaches the daemon, naming the option.
macro_rules! range_parser {
    ($name:ident, $range:expr) => {
        fn $name(s: &str) -> Result<u32, String> {
            seconds_in(s, $range)
        }
    };
}
range_parser!(parse_persistence, limits::PERSISTENCE_TIMEOUT);
range_parser!(parse_established, limits::ESTABLISHED_TIMEOUT);
range_parser!(parse_udp_timeout, limits::UDP_TIMEOUT);
range_parser!(parse_drain_timeout, limits::DRAIN_TIMEOUT);
range_parser!(parse_slow_start, limits::SLOW_START);
range_parser!(parse_check_interval, limits::CHECK_INTERVAL);
range_parser!(parse_check_timeout, limits::CHECK_TIMEOUT);
range_parser!(parse_threshold, limits::CHECK_THRESHOLD);

/// A Maglev table size: a prime in its range, refused here with the primes around it.
fn parse_maglev_table_size(s: &str) -> Result<u32, String> {
    let size = seconds_in(s, limits::MAGLEV_TABLE_SIZE)?;
    if lb_common::maglev::is_prime(size) {
        return Ok(size);
    }
    Err(format!(
        "{size} is not a prime, and a Maglev table needs a prime size (the nearest: {})",
        limits::maglev_primes_around(size)
    ))
}

/// The listener options `listener add` and `listener set` share: every per-listener
/// setting of the config file besides the frontend and the group. Unset options keep the
/// config's default (add) or the listener's value (set).
#[derive(Clone, Debug, Default, Args)]
pub struct ListenerOptions {
    /// Scheduler (a new listener's default: wrr).
    #[arg(long, value_parser = scheduler_parser())]
    pub scheduler: Option<Scheduler>,
    /// Seconds of source-IP affinity, 0..=3600 (0 = off; TCP only).
    #[arg(long, value_name = "SECONDS", value_parser = parse_persistence)]
    pub persistence_timeout: Option<u32>,
    /// Seconds an established TCP flow may idle, 10..=900 (default 900).
    #[arg(long, value_name = "SECONDS", value_parser = parse_established)]
    pub established_timeout: Option<u32>,
    /// Seconds a UDP flow may idle, 10..=900 (default 30).
    #[arg(long, value_name = "SECONDS", value_parser = parse_udp_timeout)]
    pub udp_timeout: Option<u32>,
    /// Connection drain: a removed server's established flows continue until
    /// --drain-timeout (off: they are cut at once).
    #[arg(long, value_enum)]
    pub connection_drain: Option<Switch>,
    /// Seconds of connection drain, 10..=900 (default 300).
    #[arg(long, value_name = "SECONDS", value_parser = parse_drain_timeout)]
    pub drain_timeout: Option<u32>,
    /// Access list: allow:NAME (only its sources), deny:NAME (all but its sources), or
    /// none.
    #[arg(long, value_name = "allow:NAME|deny:NAME|none", value_parser = parse_acl_ref)]
    pub acl: Option<AclRef>,
    /// Seconds over which a recovered or added backend's weight ramps up, 0..=600 (0 =
    /// off).
    #[arg(long, value_name = "SECONDS", value_parser = parse_slow_start)]
    pub slow_start: Option<u32>,
    /// Slots of the listener's Maglev table: a prime, 1021..=4194301 (default 65537). A
    /// larger table moves fewer flows when one of many backends leaves; 655373 suits a
    /// thousand backends or more (raise maglev_slots to make room).
    #[arg(long, value_name = "PRIME", value_parser = parse_maglev_table_size)]
    pub maglev_table_size: Option<u32>,
    /// Health check type (default: the listener's protocol).
    #[arg(long, value_enum)]
    pub check_type: Option<CheckType>,
    /// Seconds between probes of a backend, 1..=50 (default 2).
    #[arg(long, value_name = "SECONDS", value_parser = parse_check_interval)]
    pub check_interval: Option<u32>,
    /// Seconds a probe may take, 1..=300 (default 5).
    #[arg(long, value_name = "SECONDS", value_parser = parse_check_timeout)]
    pub check_timeout: Option<u32>,
    /// Probe this port instead of the backend's.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub check_port: Option<u16>,
    /// Consecutive successes that bring a backend up, 2..=10 (default 3).
    #[arg(long, value_name = "N", value_parser = parse_threshold)]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that take a backend down, 2..=10 (default 3).
    #[arg(long, value_name = "N", value_parser = parse_threshold)]
    pub unhealthy_threshold: Option<u32>,
    /// HTTP check: request method.
    #[arg(long, value_enum)]
    pub http_method: Option<HttpMethodArg>,
    /// HTTP check: Host header (default: the backend's address).
    #[arg(long, value_name = "HOST")]
    pub http_host: Option<String>,
    /// HTTP check: request path (default /).
    #[arg(long, value_name = "PATH")]
    pub http_path: Option<String>,
    /// HTTP check: status classes that count as healthy, comma-separated: http_2xx,
    /// http_3xx, http_4xx, http_5xx (default http_2xx,http_3xx).
    #[arg(long, value_name = "CLASSES", value_delimiter = ',')]
    pub http_codes: Option<Vec<String>>,
    /// UDP check: payload of the probe datagram.
    #[arg(long, value_name = "TEXT")]
    pub udp_request: Option<String>,
    /// UDP check: a text the reply must contain (without it, no ICMP error within the
    /// timeout is success).
    #[arg(long, value_name = "TEXT")]
    pub udp_expect: Option<String>,
    /// Hold down a backend that changes state more than MAX_FLAPS times in WINDOW
    /// seconds, for HOLD seconds: MAX_FLAPS/WINDOW/HOLD, or none.
    #[arg(long, value_name = "MAX_FLAPS/WINDOW/HOLD|none", value_parser = parse_flap)]
    pub flap_damping: Option<FlapArg>,
}

impl ListenerOptions {
    /// The options given, as config fields of the listener (the scheduler apart: a change
    /// carries it as its own field).
    pub fn settings(&self) -> Vec<ListenerSetting> {
        use serde_json::json;
        let mut out = Vec::new();
        let mut put = |field: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                out.push(ListenerSetting::new(field, value));
            }
        };
        put(
            "persistence_timeout",
            self.persistence_timeout.map(|v| json!(v)),
        );
        put(
            "established_timeout",
            self.established_timeout.map(|v| json!(v)),
        );
        put("udp_timeout", self.udp_timeout.map(|v| json!(v)));
        put(
            "connection_drain.enabled",
            self.connection_drain.map(|v| json!(v == Switch::On)),
        );
        put(
            "connection_drain.timeout",
            self.drain_timeout.map(|v| json!(v)),
        );
        put(
            "acl",
            self.acl.as_ref().map(|acl| match acl {
                AclRef::Allow(name) => json!({ "type": "allow", "name": name }),
                AclRef::Deny(name) => json!({ "type": "deny", "name": name }),
                AclRef::None => serde_json::Value::Null,
            }),
        );
        put("slow_start", self.slow_start.map(|v| json!(v)));
        put(
            "maglev_table_size",
            self.maglev_table_size.map(|v| json!(v)),
        );
        put(
            "health_check.type",
            self.check_type.map(|t| {
                json!(match t {
                    CheckType::Tcp => "tcp",
                    CheckType::Http => "http",
                    CheckType::Udp => "udp",
                    CheckType::None => "none",
                })
            }),
        );
        put(
            "health_check.interval",
            self.check_interval.map(|v| json!(v)),
        );
        put("health_check.timeout", self.check_timeout.map(|v| json!(v)));
        put("health_check.port", self.check_port.map(|v| json!(v)));
        put(
            "health_check.healthy_threshold",
            self.healthy_threshold.map(|v| json!(v)),
        );
        put(
            "health_check.unhealthy_threshold",
            self.unhealthy_threshold.map(|v| json!(v)),
        );
        put(
            "health_check.http.method",
            self.http_method.map(|m| {
                json!(match m {
                    HttpMethodArg::Get => "get",
                    HttpMethodArg::Head => "head",
                })
            }),
        );
        put(
            "health_check.http.host",
            self.http_host.as_ref().map(|v| json!(v)),
        );
        put(
            "health_check.http.path",
            self.http_path.as_ref().map(|v| json!(v)),
        );
        put(
            "health_check.http.codes",
            self.http_codes.as_ref().map(|v| json!(v)),
        );
        put(
            "health_check.udp.request",
            self.udp_request.as_ref().map(|v| json!(v)),
        );
        put(
            "health_check.udp.expect",
            self.udp_expect.as_ref().map(|v| json!(v)),
        );
        put(
            "health_check.flap_damping",
            self.flap_damping.map(|f| match f {
                FlapArg::Set {
                    max_flaps,
                    window,
                    hold,
                } => json!({ "max_flaps": max_flaps, "window": window, "hold": hold }),
                FlapArg::None => serde_json::Value::Null,
            }),
        );
        out
    }
}

#[derive(Debug, Subcommand)]
pub enum ListenerCommand {
    /// Add a listener.
    Add {
        /// Name of the new listener.
        name: String,
        /// Its protocol.
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// The VIP, IPv4 or IPv6 (without brackets: its port is --port).
        #[arg(long, value_parser = parse_address)]
        address: IpAddr,
        /// The VIP's port.
        #[arg(long, value_parser = parse_port)]
        port: u16,
        /// Server group (default: the default group).
        #[arg(long)]
        group: Option<String>,
        /// Port of the default group's servers (required with the default group).
        #[arg(long, value_parser = parse_port)]
        backend_port: Option<u16>,
        #[command(flatten)]
        options: ListenerOptions,
    },
    /// Change a listener's group or options.
    Set {
        /// The listener.
        name: String,
        /// Move it to this server group.
        #[arg(long)]
        group: Option<String>,
        /// With `--group default` when moving a listener onto the default group.
        #[arg(long, value_parser = parse_port)]
        backend_port: Option<u16>,
        #[command(flatten)]
        options: ListenerOptions,
    },
    /// Remove a listener.
    Remove {
        /// The listener.
        name: String,
    },
    /// Every listener.
    List(ReadArgs),
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add a CIDR to an existing access list (with --create: to a new one).
    Add {
        /// The access list.
        name: String,
        /// ADDR/LEN or ADDR, IPv4 or IPv6 (a list may hold both).
        cidr: String,
        /// Create the list when there is none of that name (without it, an unknown name
        /// is an error: a typo must not make a new list).
        #[arg(long)]
        create: bool,
    },
    /// Remove a CIDR from an access list.
    Remove {
        /// The access list.
        name: String,
        /// ADDR/LEN or ADDR, IPv4 or IPv6.
        cidr: String,
    },
    /// Every access list.
    List(ReadArgs),
}

/// Writes the completion script of `lb-ctl` for `shell`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "lb-ctl", out);
}

/// Writes the man page of `lb-ctl`: its synopsis, every subcommand with its options, and
/// the exit codes.
pub fn write_man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // One section per subcommand with its own options, instead of clap_mangen's list of
    // lb-ctl-SUBCOMMAND(1) pages: `lb-ctl man` prints a single, complete page.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_subcommand_options(out, &format!("lb-ctl {}", sub.get_name()), sub)?;
    }
    // EXIT_CODES (the --help epilogue) as a man page's EXIT STATUS list.
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for line in EXIT_CODES.lines().skip(1) {
        if let Some((code, meaning)) = line.trim().split_once(' ') {
            writeln!(out, ".TP\n{code}\n{}", roff_text(meaning.trim()))?;
        }
    }
    man.render_version_section(out)
}

/// A `.SH` section per subcommand listing its arguments, recursing into nested ones.
fn write_subcommand_options(
    out: &mut dyn std::io::Write,
    path: &str,
    command: &clap::Command,
) -> std::io::Result<()> {
    if command.has_subcommands() {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            write_subcommand_options(out, &format!("{path} {}", sub.get_name()), sub)?;
        }
        return Ok(());
    }
    // Render the subcommand as a page of its own and keep its OPTIONS section, under a
    // heading naming the command.
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render_options_section(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    // Keep what follows its own heading: the subcommand's heading replaces it.
    let body = page
        .split_once(".SH OPTIONS\n")
        .map_or("", |(_, rest)| rest);
    if body.trim().is_empty() {
        return Ok(());
    }
    writeln!(out, ".SH \"{}\"", path.to_uppercase())?;
    if let Some(about) = command.get_about() {
        writeln!(out, "{}", roff_text(&about.to_string()))?;
    }
    out.write_all(body.as_bytes())
}

/// Plain text as a roff paragraph: a leading `.` or `'` would be read as a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    match escaped.chars().next() {
        Some('.' | '\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// `ADDR` or `ADDR:PORT`. An IPv6 address with a port goes in brackets,
/// `[2001:db8::10]:8080`; alone it may go without (`2001:db8::10`), since the colons of an
/// unbracketed one cannot tell a port from the last group.
pub fn parse_server(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let hint = "expected ADDR or ADDR:PORT, e.g. 198.18.1.10, 198.18.1.10:8080, 2001:db8::10 or \
                [2001:db8::10]:8080";
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!("`{s}` has no closing `]`; {hint}"));
        };
        let addr: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("`{inner}` is not an IPv6 address; {hint}"))?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Ok((addr.into(), None)),
            None => Err(format!("`{s}`: expected `:PORT` after `]`; {hint}")),
            Some(port) => Ok((addr.into(), Some(parse_port(port)?))),
        };
    }
    match s.rsplit_once(':') {
        Some((addr, port)) if !addr.contains(':') => {
            let addr: Ipv4Addr = addr
                .parse()
                .map_err(|_| format!("`{addr}` is not an IPv4 address; {hint}"))?;
            Ok((addr.into(), Some(parse_port(port)?)))
        }
        // Only reached when the whole is not an address itself, e.g. nine groups.
        Some((addr, port))
            if addr.parse::<Ipv6Addr>().is_ok() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Err(format!(
                "`{s}`: write an IPv6 address with a port as [ADDR]:PORT, e.g. [{addr}]:{port}"
            ))
        }
        Some(_) => Err(format!("`{s}` is not an IPv6 address; {hint}")),
        None => Err(format!("`{s}` is not an IPv4 address; {hint}")),
    }
}

/// An address alone (a listener's VIP: its port is an option of its own).
pub fn parse_address(s: &str) -> Result<IpAddr, String> {
    let hint = "e.g. 198.19.0.100 or 2001:db8::100";
    match parse_server(s) {
        Ok((address, None)) => Ok(address),
        Ok((address, Some(_))) => Err(format!(
            "`{s}` has a port; give the address alone ({address}) and the port with --port"
        )),
        Err(_) if s.contains(':') => Err(format!("`{s}` is not an IPv6 address; {hint}")),
        Err(_) => Err(format!("`{s}` is not an IPv4 address; {hint}")),
    }
}

/// A port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is not in 1..=65535")),
        Err(_) => Err(format!("`{s}` is not a port number (1..=65535)")),
    }
}

/// `ADDR:PORT`, `[ADDR]:PORT` for IPv6.
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    match parse_server(s)? {
        (addr, Some(port)) => Ok(SocketAddr::new(addr, port)),
        (IpAddr::V6(addr), None) if !s.starts_with('[') => Err(format!(
            "`{s}` has no port: an IPv6 endpoint is written [ADDR]:PORT, e.g. [{addr}]:8080"
        )),
        (IpAddr::V6(_), None) => Err(format!("`{s}` has no port; expected [ADDR]:PORT")),
        (IpAddr::V4(_), None) => Err(format!("`{s}` has no port; expected ADDR:PORT")),
    }
}

/// A weight, 0..=100.
pub fn parse_weight(s: &str) -> Result<u8, String> {
    match s.parse::<u32>() {
        Ok(w) if w <= 100 => Ok(w as u8),
        Ok(w) => Err(format!(
            "weight {w} is not in 0..=100 (0 = no new flows, established ones continue)"
        )),
        Err(_) => Err(format!("`{s}` is not a weight (an integer 0..=100)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_page_generate() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).expect("completions are UTF-8");
            for word in ["lb-ctl", "drain", "explain", "completions"] {
                assert!(text.contains(word), "{shell} completions lack {word}");
            }
        }
        let mut out = Vec::new();
        write_man_page(&mut out).expect("the man page renders");
        let page = String::from_utf8(out).expect("the man page is UTF-8");
        for needle in [
            ".TH lb-ctl",
            ".SH SYNOPSIS",
            "LB-CTL SERVER DRAIN",
            "\\-\\-wait",
            ".SH \"EXIT STATUS\"",
        ] {
            assert!(
                page.contains(needle),
                "the man page lacks {needle:?}:\n{page}"
            );
        }
    }

    /// Every argument of every command, with the command's path.
    fn all_args(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in command.get_arguments() {
            out.push((path.to_owned(), arg.clone()));
        }
        for sub in command.get_subcommands() {
            all_args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    fn find<'a>(command: &'a clap::Command, path: &[&str]) -> &'a clap::Command {
        path.iter().fold(command, |c, name| {
            c.find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"))
        })
    }

    #[test]
    fn every_option_and_argument_has_a_help_text() {
        let mut command = Cli::command();
        command.build();
        let mut args = Vec::new();
        all_args(&command, "lb-ctl", &mut args);
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|(_, a)| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|(path, a)| format!("{path}: {}", a.get_id()))
            .collect();
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
        assert!(
            args.len() > 80,
            "the walk reached the subcommands: {}",
            args.len()
        );
    }

    #[test]
    fn only_commands_that_talk_to_the_daemon_take_a_socket() {
        let mut command = Cli::command();
        command.build();
        let has_socket = |path: &[&str]| {
            find(&command, path)
                .get_arguments()
                .any(|a| a.get_long() == Some("socket") && !a.is_hide_set())
        };
        for path in [
            &["validate"][..],
            &["teardown"],
            &["completions"],
            &["man"],
            &["decap", "attach"],
            &["decap", "detach"],
            &["decap", "status"],
        ] {
            assert!(!has_socket(path), "{path:?} shows --socket");
        }
        for path in [
            &["daemon"][..],
            &["status"],
            &["stats"],
            &["flows"],
            &["server", "add"],
            &["server", "drain"],
            &["wait", "drained"],
            &["group", "list"],
            &["listener", "add"],
            &["acl", "add"],
            &["explain"],
            &["drain-host"],
            &["reload"],
            &["export"],
        ] {
            assert!(has_socket(path), "{path:?} lacks --socket");
        }
    }

    #[test]
    fn the_socket_after_the_command_wins_over_the_one_before() {
        let cli =
            Cli::try_parse_from(["lb-ctl", "--socket", "/a", "status", "--socket", "/b"]).unwrap();
        let before = cli.socket.clone();
        let connect = cli.command.connect().unwrap();
        assert_eq!(connect.or(&before), PathBuf::from("/b"));
        let cli = Cli::try_parse_from([
            "lb-ctl",
            "--socket",
            "/a",
            "server",
            "add",
            "--group",
            "default",
            "198.18.1.10",
            "--socket",
            "/c",
        ])
        .unwrap();
        assert_eq!(
            cli.command.connect().unwrap().or(&cli.socket),
            PathBuf::from("/c")
        );
        let cli = Cli::try_parse_from(["lb-ctl", "--socket", "/a", "reload"]).unwrap();
        assert_eq!(
            cli.command.connect().unwrap().or(&cli.socket),
            PathBuf::from("/a")
        );
        let err =
            Cli::try_parse_from(["lb-ctl", "validate", "f.yaml", "--socket", "/a"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn explain_takes_protocol_and_the_old_proto() {
        for flag in ["--protocol", "--proto"] {
            let cli = Cli::try_parse_from([
                "lb-ctl",
                "explain",
                "--src",
                "198.18.0.2:4000",
                "--dst",
                "198.18.0.100:80",
                flag,
                "udp",
            ])
            .unwrap();
            assert!(
                matches!(
                    cli.command,
                    Command::Explain {
                        protocol: Protocol::Udp,
                        ..
                    }
                ),
                "{flag}"
            );
        }
        let help = find(&Cli::command(), &["explain"])
            .clone()
            .render_help()
            .to_string();
        assert!(help.contains("--protocol <PROTOCOL>"), "{help}");
        assert!(!help.contains("--proto "), "the alias stays hidden: {help}");
        assert!(help.contains("possible values: tcp, udp"), "{help}");
        let help = find(&Cli::command(), &["listener", "add"])
            .clone()
            .render_help()
            .to_string();
        assert!(help.contains("possible values: tcp, udp"), "{help}");
    }

    #[test]
    fn listener_options_become_config_fields() {
        let cli = Cli::try_parse_from([
            "lb-ctl",
            "listener",
            "set",
            "web",
            "--established-timeout",
            "60",
            "--connection-drain",
            "on",
            "--drain-timeout",
            "30",
            "--acl",
            "deny:bad",
            "--check-type",
            "http",
            "--http-path",
            "/health",
            "--http-codes",
            "http_2xx,http_4xx",
            "--flap-damping",
            "4/60/300",
            "--check-port",
            "8081",
        ])
        .unwrap();
        let Command::Listener(Nested {
            command: ListenerCommand::Set { options, .. },
            ..
        }) = cli.command
        else {
            panic!("parsed as listener set");
        };
        let settings: Vec<(String, String)> = options
            .settings()
            .into_iter()
            .map(|s| (s.field, s.value.to_string()))
            .collect();
        let expected = [
            ("established_timeout", "60"),
            ("connection_drain.enabled", "true"),
            ("connection_drain.timeout", "30"),
            ("acl", r#"{"name":"bad","type":"deny"}"#),
            ("health_check.type", r#""http""#),
            ("health_check.port", "8081"),
            ("health_check.http.path", r#""/health""#),
            ("health_check.http.codes", r#"["http_2xx","http_4xx"]"#),
            (
                "health_check.flap_damping",
                r#"{"hold":300,"max_flaps":4,"window":60}"#,
            ),
        ];
        assert_eq!(
            settings,
            expected.map(|(f, v)| (f.to_owned(), v.to_owned())).to_vec()
        );
    }

    #[test]
    fn listener_option_values_are_checked_naming_the_option() {
        for (args, needle) in [
            (&["--established-timeout", "5"][..], "--established-timeout"),
            (&["--check-interval", "51"], "51 is not in 1..=50"),
            (
                &["--acl", "maybe:x"],
                "expected allow:NAME, deny:NAME or none",
            ),
            (&["--flap-damping", "4/60"], "MAX_FLAPS/WINDOW/HOLD"),
            (&["--connection-drain", "yes"], "possible values: on, off"),
        ] {
            let mut argv = vec!["lb-ctl", "listener", "set", "web"];
            argv.extend_from_slice(args);
            let err = Cli::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(err.contains(args[0]), "{args:?} names the option: {err}");
        }
        assert_eq!(parse_acl_ref("none"), Ok(AclRef::None));
        assert_eq!(
            parse_acl_ref("allow:office"),
            Ok(AclRef::Allow("office".into()))
        );
        assert!(parse_acl_ref("allow:").is_err());
        assert_eq!(parse_flap("none"), Ok(FlapArg::None));
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            parse_server("198.18.1.10:8080"),
            Ok(("198.18.1.10".parse().unwrap(), Some(8080)))
        );
        assert_eq!(
            parse_server("198.18.1.10"),
            Ok(("198.18.1.10".parse().unwrap(), None))
        );
        assert!(
            parse_server("198.18.1.300")
                .unwrap_err()
                .contains("not an IPv4 address")
        );
        assert!(
            parse_server("198.18.1.1:0")
                .unwrap_err()
                .contains("not in 1..=65535")
        );
        assert!(
            parse_server("198.18.1.1:70000")
                .unwrap_err()
                .contains("not in 1..=65535")
        );
        assert!(
            parse_endpoint("198.18.1.1")
                .unwrap_err()
                .contains("no port")
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_server("[2001:db8::10]:8080"),
            Ok((v6("2001:db8::10"), Some(8080)))
        );
        // Alone, an IPv6 address needs no brackets (but may have them).
        assert_eq!(parse_server("2001:db8::10"), Ok((v6("2001:db8::10"), None)));
        assert_eq!(
            parse_server("[2001:db8::10]"),
            Ok((v6("2001:db8::10"), None))
        );
        assert_eq!(
            parse_endpoint("[2001:db8::10]:443"),
            Ok("[2001:db8::10]:443".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint("[2001:db8::10]:443").unwrap().to_string(),
            "[2001:db8::10]:443"
        );
        // Unbracketed, the last group reads as part of the address, never as a port.
        assert_eq!(
            parse_endpoint("2001:db8::10:8080"),
            Err(
                "`2001:db8::10:8080` has no port: an IPv6 endpoint is written [ADDR]:PORT, \
                 e.g. [2001:db8::10:8080]:8080"
                    .to_owned()
            )
        );
        assert_eq!(
            parse_server("2001:db8:1:2:3:4:5:6:8080"),
            Err(
                "`2001:db8:1:2:3:4:5:6:8080`: write an IPv6 address with a port as \
                 [ADDR]:PORT, e.g. [2001:db8:1:2:3:4:5:6]:8080"
                    .to_owned()
            )
        );
        for (bad, needle) in [
            ("[2001:db8::10", "no closing `]`"),
            ("[198.18.1.10]:80", "`198.18.1.10` is not an IPv6 address"),
            ("[2001:db8::10]8080", "expected `:PORT` after `]`"),
            ("[2001:db8::10]:0", "port 0 is not in 1..=65535"),
            ("2001:db8::g", "`2001:db8::g` is not an IPv6 address"),
            ("[2001:db8::10]", "no port; expected [ADDR]:PORT"),
        ] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert_eq!(parse_address("2001:db8::100"), Ok(v6("2001:db8::100")));
        assert!(
            parse_address("[2001:db8::100]:80")
                .unwrap_err()
                .contains("give the address alone (2001:db8::100) and the port with --port")
        );
        // Everywhere the CLI takes ADDR:PORT.
        let cli = Cli::try_parse_from([
            "lb-ctl",
            "explain",
            "--src",
            "[2001:db8::7]:40000",
            "--dst",
            "[2001:db8::100]:80",
            "--protocol",
            "tcp",
        ])
        .unwrap();
        let Command::Explain { src, dst, .. } = cli.command else {
            panic!("parsed as explain");
        };
        assert_eq!((src.port(), dst.ip()), (40000, v6("2001:db8::100")));
        for argv in [
            &[
                "lb-ctl",
                "server",
                "add",
                "--group",
                "api",
                "[2001:db8::10]:8080",
            ][..],
            &[
                "lb-ctl",
                "server",
                "drain",
                "--group",
                "default",
                "2001:db8::10",
            ],
            &[
                "lb-ctl",
                "wait",
                "drained",
                "--group",
                "api",
                "[2001:db8::10]:8080",
            ],
            &["lb-ctl", "flows", "--backend", "[2001:db8::10]:8080"],
            &[
                "lb-ctl",
                "group",
                "create",
                "db",
                "--type",
                "primary-secondary",
                "--primary",
                "[2001:db8::20]:5432",
                "--secondary",
                "[2001:db8::21]:5432",
            ],
            &[
                "lb-ctl",
                "listener",
                "add",
                "web6",
                "--protocol",
                "tcp",
                "--address",
                "2001:db8::100",
                "--port",
                "80",
                "--backend-port",
                "8080",
            ],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn the_help_says_ipv6_endpoints_are_bracketed() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("[2001:db8::10]:8080"), "{help}");
        assert!(help.contains("with an IPv6 address in brackets"), "{help}");
        let help = find(&Cli::command(), &["explain"])
            .clone()
            .render_help()
            .to_string();
        assert!(help.contains("[ADDR]:PORT for IPv6"), "{help}");
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("0"), Ok(0));
        assert_eq!(parse_weight("100"), Ok(100));
        assert!(parse_weight("101").unwrap_err().contains("0..=100"));
        assert!(parse_weight("-1").unwrap_err().contains("not a weight"));
        assert!(parse_weight("heavy").unwrap_err().contains("not a weight"));
    }
}
