//! The probes: one TCP handshake, HTTP request or UDP exchange against one backend, each
//! bounded by the check's timeout. A probe is prepared once per target (request bytes
//! built, settings resolved) and then run every interval without allocating anew.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream, UdpSocket},
};

use crate::config::{HealthCheck, HealthCheckKind, HttpCodeClass};

/// How much of an HTTP response is read looking for the status line. A status line is
/// a few dozen bytes; anything longer without a line end is not HTTP.
const HTTP_READ_LIMIT: usize = 4096;
/// Buffer for a UDP reply; a longer datagram is truncated, and `expect` is looked for in
/// what fits.
const UDP_READ_LIMIT: usize = 4096;

/// Why a probe failed. The `Display` text is the reason `status` shows and the
/// transition log carries.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// TCP RST, or ICMP port unreachable for UDP: nothing listens on the port.
    #[error("refused")]
    Refused,
    /// No answer within the check's timeout.
    #[error("timeout")]
    Timeout,
    /// ICMP host or network unreachable, or no route.
    #[error("unreachable")]
    Unreachable,
    /// An HTTP status outside the accepted classes.
    #[error("status {0}")]
    Status(u16),
    /// Something that is not an HTTP/1.x status line, or a connection closed before one.
    #[error("bad response")]
    BadResponse,
    /// A UDP reply that does not contain the expected substring.
    #[error("unexpected reply")]
    UnexpectedReply,
    /// The configured source address could not be bound (not local, in use, ...).
    #[error("cannot bind source address: {0}")]
    Source(io::ErrorKind),
    /// Any other socket error, by kind ("connection reset", ...).
    #[error("{0}")]
    Io(io::ErrorKind),
}

impl ProbeError {
    fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Self::Unreachable,
            kind => Self::Io(kind),
        }
    }
}

/// A probe ready to run against one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The address probed (the backend's, or in DSR the VIP) and the port (the check's
    /// `port`, else the backend's). Its family is the probe socket's.
    pub target: SocketAddr,
    /// `SO_MARK` of the probe's socket: in DSR, what sends it through the backend's tunnel.
    pub mark: Option<u32>,
    pub timeout: Duration,
    pub kind: ProbeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP handshake.
    Tcp,
    /// A request whose status line must carry a status in one of `codes`.
    Http {
        request: Arc<[u8]>,
        codes: Vec<HttpCodeClass>,
    },
    /// A datagram; with `expect`, a reply containing it; without, no ICMP error.
    Udp {
        request: Arc<[u8]>,
        expect: Option<Arc<[u8]>>,
    },
}

impl Probe {
    /// The probe of type `kind` (`check`'s type as resolved for its listener, see
    /// `HealthCheck::kind_for`) with `check`'s settings, against a backend at
    /// `address`:`backend_port`; `None` for `type: none`, which never probes.
    pub fn new(
        kind: HealthCheckKind,
        check: &HealthCheck,
        address: IpAddr,
        backend_port: u16,
        tunnel: Option<super::ProbeTunnel>,
    ) -> Option<Self> {
        let address = tunnel.map_or(address, |t| t.vip);
        let target = SocketAddr::new(address, check.port.unwrap_or(backend_port));
        let kind = match kind {
            HealthCheckKind::None => return None,
            HealthCheckKind::Tcp => ProbeKind::Tcp,
            HealthCheckKind::Http => {
                let http = check.http_settings();
                // Host names the backend when the check names no virtual host; the port
                // goes with it unless it is HTTP's default (RFC 9110, 7.2). An IPv6
                // address goes in brackets either way (RFC 3986, IP-literal).
                let host = match (http.host, address) {
                    (Some(host), _) => host,
                    (None, IpAddr::V4(a)) if target.port() == 80 => a.to_string(),
                    (None, IpAddr::V6(a)) if target.port() == 80 => format!("[{a}]"),
                    (None, _) => target.to_string(),
                };
                let request = format!(
                    "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-ctl-health\r\n\
                     Accept: */*\r\nConnection: close\r\n\r\n",
                    http.method.as_str(),
                    http.path,
                );
                ProbeKind::Http {
                    request: request.into_bytes().into(),
                    codes: http.codes,
                }
            }
            HealthCheckKind::Udp => {
                let udp = check.udp_settings();
                ProbeKind::Udp {
                    // The model's contract: an empty datagram when no request is given.
                    // A zero-length UDP payload is valid and still draws an ICMP port
                    // unreachable from a host where nothing listens.
                    request: udp.request.unwrap_or_default().into_bytes().into(),
                    expect: udp.expect.map(|e| e.into_bytes().into()),
                }
            }
        };
        Some(Self {
            target,
            mark: tunnel.map(|t| t.mark),
            timeout: Duration::from_secs(check.timeout.max(1).into()),
            kind,
        })
    }

    /// Runs the probe once, from `source` when given (an address of the target's family),
    /// and says whether the backend passed. The whole exchange (connect, request, reply)
    /// shares one timeout.
    pub async fn run(&self, source: Option<IpAddr>) -> Result<(), ProbeError> {
        if source.is_some_and(|s| s.is_ipv4() != self.target.is_ipv4()) {
            // A socket has one family: no packet could leave from this source.
            return Err(ProbeError::Source(io::ErrorKind::InvalidInput));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = match &self.kind {
            ProbeKind::Tcp => {
                tokio::time::timeout_at(deadline, tcp(self.target, source, self.mark)).await
            }
            ProbeKind::Http { request, codes } => {
                tokio::time::timeout_at(
                    deadline,
                    http(self.target, source, self.mark, request, codes),
                )
                .await
            }
            // UDP reads the end of the timeout as a result of its own (no ICMP error
            // means healthy when no reply is expected), so it watches the deadline
            // itself; its other steps do not wait on the network.
            ProbeKind::Udp { request, expect } => {
                return udp(
                    self.target,
                    source,
                    self.mark,
                    request,
                    expect.as_deref(),
                    deadline,
                )
                .await;
            }
        };
        result.unwrap_or(Err(ProbeError::Timeout))
    }
}

/// Marks a probe's socket for `lb_probe_tunnel` (DSR).
fn set_mark(socket: &impl std::os::fd::AsFd, mark: Option<u32>) -> Result<(), ProbeError> {
    match mark {
        Some(mark) => socket2::SockRef::from(socket)
            .set_mark(mark)
            .map_err(|e| ProbeError::Io(e.kind())),
        None => Ok(()),
    }
}

async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    mark: Option<u32>,
) -> Result<TcpStream, ProbeError> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ProbeError::Io(e.kind()))?;
    set_mark(&socket, mark)?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| ProbeError::Source(e.kind()))?;
    }
    // Close probe connections with a RST instead of a FIN: the prober then keeps no
    // TIME_WAIT socket per probe, which at 10,000 probes a second would pin hundreds of
    // thousands of sockets and exhaust the ephemeral ports towards a single backend.
    // HAProxy closes its checks the same way. Linger 0 never blocks on drop; the
    // deprecation is about a non-zero linger, which would.
    #[allow(deprecated, reason = "SO_LINGER 0 does not block the thread on drop")]
    socket
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| ProbeError::Io(e.kind()))?;
    socket
        .connect(target)
        .await
        .map_err(|e| ProbeError::from_io(&e))
}

async fn tcp(
    target: SocketAddr,
    source: Option<IpAddr>,
    mark: Option<u32>,
) -> Result<(), ProbeError> {
    connect(target, source, mark).await.map(drop)
}

async fn http(
    target: SocketAddr,
    source: Option<IpAddr>,
    mark: Option<u32>,
    request: &[u8],
    codes: &[HttpCodeClass],
) -> Result<(), ProbeError> {
    let mut stream = connect(target, source, mark).await?;
    stream
        .write_all(request)
        .await
        .map_err(|e| ProbeError::from_io(&e))?;
    let mut buf = [0u8; HTTP_READ_LIMIT];
    let mut len = 0;
    let status = loop {
        if let Some(status) = parse_status_line(&buf[..len])? {
            break status;
        }
        if len == buf.len() {
            return Err(ProbeError::BadResponse);
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| ProbeError::from_io(&e))?;
        if n == 0 {
            return Err(ProbeError::BadResponse);
        }
        len += n;
    };
    if status_accepted(status, codes) {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// The status code of an HTTP/1.x response starting with `head`: `Ok(None)` while the
/// first line is incomplete, `BadResponse` as soon as it cannot be a status line.
pub fn parse_status_line(head: &[u8]) -> Result<Option<u16>, ProbeError> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let seen = head.len().min(PREFIX.len());
    if head[..seen] != PREFIX[..seen] {
        return Err(ProbeError::BadResponse);
    }
    let Some(end) = head.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    // "HTTP/1.x SSS[ reason]\r\n"; the reason phrase may be empty or absent.
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let rest = &line[PREFIX.len()..];
    let code = match rest {
        [minor, b' ', a, b, c, tail @ ..]
            if minor.is_ascii_digit()
                && [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (tail.is_empty() || tail[0] == b' ') =>
        {
            [a, b, c]
                .iter()
                .fold(0u16, |n, d| n * 10 + u16::from(**d - b'0'))
        }
        _ => return Err(ProbeError::BadResponse),
    };
    if !(100..=599).contains(&code) {
        return Err(ProbeError::BadResponse);
    }
    Ok(Some(code))
}

/// Whether `status` falls in one of the accepted classes.
pub fn status_accepted(status: u16, codes: &[HttpCodeClass]) -> bool {
    codes.iter().any(|c| c.contains(status))
}

async fn udp(
    target: SocketAddr,
    source: Option<IpAddr>,
    mark: Option<u32>,
    request: &[u8],
    expect: Option<&[u8]>,
    deadline: tokio::time::Instant,
) -> Result<(), ProbeError> {
    // Without a source, the kernel picks one of the target's family at connect.
    let any = match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let local = SocketAddr::new(source.unwrap_or(any), 0);
    let socket = UdpSocket::bind(local).await.map_err(|e| match source {
        Some(_) => ProbeError::Source(e.kind()),
        None => ProbeError::Io(e.kind()),
    })?;
    set_mark(&socket, mark)?;
    // A connected socket is what makes the kernel report an ICMP port unreachable from
    // the backend as ECONNREFUSED on the next receive; it also filters out datagrams
    // from anyone else.
    socket
        .connect(target)
        .await
        .map_err(|e| ProbeError::from_io(&e))?;
    socket
        .send(request)
        .await
        .map_err(|e| ProbeError::from_io(&e))?;
    let mut buf = [0u8; UDP_READ_LIMIT];
    let received = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await;
    match (received, expect) {
        (Ok(Ok(n)), Some(expect)) if contains(&buf[..n], expect) => Ok(()),
        (Ok(Ok(_)), Some(_)) => Err(ProbeError::UnexpectedReply),
        // Any reply proves something listens.
        (Ok(Ok(_)), None) => Ok(()),
        (Ok(Err(e)), _) => Err(ProbeError::from_io(&e)),
        (Err(_elapsed), Some(_)) => Err(ProbeError::Timeout),
        // No reply asked for and no ICMP error within the timeout: healthy, as in CLB.
        // Only a port unreachable (or another error) tells a dead UDP service apart.
        (Err(_elapsed), None) => Ok(()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests;
