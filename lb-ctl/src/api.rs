//! The local control API: one JSON request per line on a Unix stream socket, one JSON
//! response line back. `lb-ctl` (the CLI) is its client; anything that speaks JSON over a
//! Unix socket can be another.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use lb_common::Scheduler;

use crate::{config::Protocol, overlay::Change};

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Counters per listener and backend, and per reason.
    Stats,
    /// A change to the effective state (kept in the overlay).
    Change {
        change: Change,
    },
    /// Re-read the config file and apply the difference.
    Reload,
    /// The effective state as a config file.
    Export,
    /// Drain a server: no new flows, established ones until they end or the timeout.
    Drain {
        group: String,
        address: IpAddr,
        #[serde(default)]
        port: Option<u16>,
        /// Seconds; default: the listener's `connection_drain.timeout`.
        #[serde(default)]
        timeout: Option<u32>,
    },
    /// End a drain.
    Undrain {
        group: String,
        address: IpAddr,
        #[serde(default)]
        port: Option<u16>,
    },
    /// Why a packet lands where it does.
    Explain {
        src: SocketAddr,
        dst: SocketAddr,
        protocol: Protocol,
        /// TCP flags of the packet (default: a SYN).
        #[serde(default)]
        tcp_flags: Option<u8>,
    },
    /// Active flows of one backend (for `wait drained`).
    ActiveFlows {
        group: String,
        address: IpAddr,
        #[serde(default)]
        port: Option<u16>,
    },
    /// Flow table entries, the first `limit` (0: all) matching the filter.
    Flows {
        #[serde(default)]
        listener: Option<String>,
        #[serde(default)]
        backend: Option<IpAddr>,
        #[serde(default)]
        backend_port: Option<u16>,
        limit: usize,
    },
    /// Withdraw every VIP from BGP, forwarding on (`undo`: announce them again).
    DrainHost {
        #[serde(default)]
        undo: bool,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok {
        #[serde(default)]
        message: String,
        #[serde(default)]
        data: serde_json::Value,
    },
    Error {
        /// What went wrong, in words for the operator.
        message: String,
        /// Exit code the CLI uses (see `lb-ctl --help`).
        code: i32,
    },
}

impl Response {
    pub fn ok(message: impl Into<String>, data: impl Serialize) -> Self {
        Self::Ok {
            message: message.into(),
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
            code: exit::REFUSED,
        }
    }
}

/// Exit codes of `lb-ctl`, shared by the CLI and the daemon's error responses.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The daemon or the data plane failed (map error, I/O error).
    pub const FAILED: i32 = 1;
    /// Bad input: invalid config, unknown name, a change refused by a rule.
    pub const REFUSED: i32 = 2;
    /// No daemon answered on the socket.
    pub const NO_DAEMON: i32 = 3;
    /// A wait timed out (`wait drained`, `server drain --wait`).
    pub const TIMEOUT: i32 = 4;
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "no lb-ctl daemon answers on {path}: {source} (start one with `lb-ctl daemon --config \
         FILE`, or point --socket / LB_SOCKET at its socket)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon sent a response this lb-ctl does not understand: {0}")]
    Protocol(String),
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(format!("{e}: {answer}")))
}

/// `status`: the effective state with health and flow counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub config: String,
    pub interfaces: Vec<InterfaceStatus>,
    pub listeners: Vec<ListenerStatus>,
    /// Runtime changes kept in the overlay.
    pub overlay_changes: usize,
    /// Overlay changes dropped at the last start or reload, with the reason.
    pub conflicts: Vec<String>,
    #[serde(default)]
    pub flow_table: FlowTableStatus,
    #[serde(default)]
    pub maglev: MaglevStatus,
    /// Config reloads (SIGHUP, `lb-ctl reload`) since the daemon started.
    #[serde(default)]
    pub reloads: ReloadStatus,
    /// BGP sessions and announced VIPs; absent without a `bgp` section. Filled by the
    /// daemon, which asks BIRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::bgp::BgpStatus>,
}

/// Config reloads since the daemon started: applied ones, refused ones (the config file
/// had an error or broke a rule; nothing of it was applied), and whether the last one
/// succeeded (true before any).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub applied: u64,
    pub refused: u64,
    pub last_successful: bool,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        Self {
            applied: 0,
            refused: 0,
            last_successful: true,
        }
    }
}

/// The flow table as the last sweep (every second) saw it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct FlowTableStatus {
    /// `flow_table_size`.
    pub capacity: u32,
    /// Entries present (active or idle).
    pub entries: u64,
    /// Entries the LRU evicted to make room: entries added under a new 5-tuple minus
    /// entries present. Exact as long as nothing else deletes entries (nothing does).
    pub evicted: u64,
}

/// The Maglev array all listeners' tables share: its slots (`maglev_slots`), and those the
/// listeners reserve, two tables of their `maglev_table_size` each. A listener whose
/// tables would not fit is refused.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct MaglevStatus {
    pub capacity: u32,
    pub reserved: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// The XDP mode in force as the kernel reports it, also for a link a restarted daemon
    /// re-adopted: native or generic (`missing` while the interface does not exist).
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    pub group: String,
    pub scheduler: Scheduler,
    pub backends: Vec<BackendStatus>,
    pub stats: Counters,
}

impl ListenerStatus {
    /// VIP and port, as every view shows them (IPv6 in brackets).
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub port: u16,
    /// member, primary or secondary.
    pub role: String,
    pub weight: u32,
    pub effective_weight: u32,
    /// up, draining (weight 0 or being drained) or down.
    pub state: String,
    /// up or down, from the health checks.
    pub health: String,
    /// Whether health checks probe it (not: `type: none`, an unprobed secondary).
    #[serde(default)]
    pub probed: bool,
    /// Last probe result and reason ("ok", "refused", "status 503", …), when probed.
    #[serde(default)]
    pub last_probe: Option<String>,
    /// How long the last probe took, in milliseconds.
    #[serde(default)]
    pub last_probe_ms: Option<f64>,
    /// Seconds since the health state last changed, when it has.
    #[serde(default)]
    pub since_change_s: Option<u64>,
    /// Flap damping: seconds left in a hold-down.
    #[serde(default)]
    pub held_down_s: Option<u64>,
    /// State changes within the flap-damping window.
    #[serde(default)]
    pub flaps: u32,
    /// While draining: seconds until its remaining flows are cut.
    #[serde(default)]
    pub drain_left_s: Option<u64>,
    /// Removed from the group; kept only while its flows drain.
    #[serde(default)]
    pub departing: bool,
    /// Flows with no FIN/RST seen, used within their idle timeout.
    pub active_flows: u32,
    /// config (from the config file) or api (added at runtime).
    pub origin: String,
    pub backend_id: u32,
    pub stats: Counters,
}

impl BackendStatus {
    /// Address and port, as every view shows them (IPv6 in brackets).
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// Traffic counters (sums over CPUs), as the data plane keeps them per listener and
/// backend.
pub type Counters = lb_common::TrafficCounters;

/// `stats`: counters only, cheap enough to poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Monotonic seconds of the sample, for rates.
    pub at_s: f64,
    pub listeners: Vec<ListenerStats>,
    /// Verdict and event counters by name.
    pub reasons: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ListenerStats {
    pub name: String,
    pub stats: Counters,
    pub backends: Vec<(String, Counters)>,
}
