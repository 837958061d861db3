//! The daemon's read-only HTTP listener, on `metrics_listen` (off when absent):
//!
//! - `GET /metrics`: the OpenMetrics exposition (`crate::metrics`);
//! - `GET /`: the status page, one self-contained HTML file (inline CSS and JS, no other
//!   asset) that renders `/status.json` and refreshes itself every second;
//! - `GET /status.json`: what `lb-ctl status --json` prints, plus `stats` (the counters
//!   of `lb-ctl stats --json`, with the sample time the page computes rates from).
//!
//! A deliberately small HTTP/1.1 server rather than a web framework: three read-only
//! routes, one request per connection (`Connection: close`), the request head bounded in
//! size and time, any other method refused, a bounded number of connections served at
//! once and per client address, so a few idle connections cannot keep a scrape waiting.
//! Scrapers and browsers need nothing more, and nothing here can change the balancer: the
//! routes only read.
//!
//! `Host` must name the listener: its own address, or a name of `metrics_hosts`. A web
//! page that makes its own DNS name resolve to this address (DNS rebinding) would
//! otherwise read the status page from the operator's browser as a same-origin resource.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    api::{Stats, Status},
    bgp::{BgpStatus, Speaker},
    controller::{Controller, StatusDraft, stats_of},
    dataplane::{CounterReader, ReadCounters as _},
    metrics,
};

/// Longest request head (request line and headers) read; longer gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head; slower gets 408. Short: a connection
/// that has sent nothing holds one of `MAX_CONNECTIONS`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take the response; a slower one is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections of one client address served at once; more are answered 429 and closed.
/// A browser opens up to six per origin, Prometheus one per scrape.
pub const MAX_PER_CLIENT: usize = 8;

/// The status page: a static file, all data comes from `/status.json`.
const PAGE: &str = include_str!("page.html");

/// The page's Content-Security-Policy: nothing may be loaded from anywhere, only the
/// page's own inline style and script run, and its script may only fetch from this
/// origin. It makes the "no external assets" rule something the browser enforces.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; \
                        script-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
                        base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Debug, Error)]
pub enum WebError {
    // The I/O error is part of the message rather than a `source`: the one line the
    // daemon logs or exits with then says it once, before the hint.
    #[error("metrics_listen {addr}: cannot listen: {error} (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The HTTP listener of a daemon, following the config's `metrics_listen` across reloads.
#[derive(Debug, Default)]
pub struct WebServer {
    /// The address last asked for (also when listening on it failed, so a failure is
    /// reported once per change of the config, not on every check).
    wanted: Option<SocketAddr>,
    /// What `Host` may say, shared with the serving task so a reload changes it in place.
    hosts: Option<Arc<RwLock<HostPolicy>>>,
    task: Option<JoinHandle<()>>,
}

impl WebServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens on `want` (stops listening when `None`), moving the listener when the
    /// address changed since the last call, and answers to the host `names` besides its
    /// address. Must run inside the daemon's tokio runtime.
    pub fn follow(
        &mut self,
        want: Option<SocketAddr>,
        names: &[String],
        controller: &Arc<Mutex<Controller>>,
        speaker: &Arc<Mutex<Speaker>>,
    ) -> Result<(), WebError> {
        // Unchanged: listening already, off, or listening on it failed before (not
        // retried until the config names another address).
        if want == self.wanted {
            if let (Some(addr), Some(hosts)) = (want, &self.hosts) {
                *hosts.write().unwrap_or_else(|e| e.into_inner()) = HostPolicy::new(addr, names);
            }
            return Ok(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            info!(
                "metrics and status page: stopped listening on {}",
                self.wanted.map_or_else(String::new, |a| a.to_string())
            );
        }
        self.wanted = want;
        let Some(addr) = want else {
            return Ok(());
        };
        let listener = bind(addr)?;
        info!("metrics on http://{addr}/metrics, status page on http://{addr}/");
        let hosts = Arc::new(RwLock::new(HostPolicy::new(addr, names)));
        self.hosts = Some(Arc::clone(&hosts));
        self.task = Some(tokio::spawn(serve(
            listener,
            hosts,
            Arc::clone(controller),
            Arc::clone(speaker),
        )));
        Ok(())
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds synchronously, so a daemon that cannot listen fails at start with the reason.
fn bind(addr: SocketAddr) -> Result<TcpListener, WebError> {
    let err = |error| WebError::Bind { addr, error };
    let std_listener = std::net::TcpListener::bind(addr).map_err(err)?;
    std_listener.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std_listener).map_err(err)
}

/// Connections open per client address.
#[derive(Debug, Default)]
struct Clients(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One connection of a client, counted while it lives.
#[derive(Debug)]
struct ClientSlot {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Clients {
    /// A slot for one more connection from `ip`, unless it has `MAX_PER_CLIENT` already.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= MAX_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    hosts: Arc<RwLock<HostPolicy>>,
    controller: Arc<Mutex<Controller>>,
    speaker: Arc<Mutex<Speaker>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Arc::new(Clients::default());
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(client) = clients.enter(peer.ip()) else {
                    // Answered without waiting: the socket buffer of a fresh connection
                    // takes these few bytes, and a client that does not read loses them.
                    let refusal = Response::text(
                        429,
                        format!("more than {MAX_PER_CLIENT} connections from {}", peer.ip()),
                    );
                    let _ = stream.try_write(&refusal.to_bytes());
                    debug!("metrics listener: {peer}: 429, too many connections");
                    continue;
                };
                let controller = Arc::clone(&controller);
                let speaker = Arc::clone(&speaker);
                let hosts = Arc::clone(&hosts);
                tokio::spawn(async move {
                    handle(stream, peer, &hosts, &controller, &speaker).await;
                    drop(client);
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each without its CRLF.
    pub headers: Vec<String>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    fn with_header(mut self, header: impl Into<String>) -> Self {
        self.headers.push(header.into());
        self
    }

    /// The status line, the headers and the body, as sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
             Connection: close\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Page,
    Metrics,
    StatusJson,
}

/// What `Host` may say: the listener's address, with or without its port, or one of the
/// configured names (`metrics_hosts`), compared without case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPolicy {
    listen: SocketAddr,
    names: Vec<String>,
}

impl HostPolicy {
    pub fn new(listen: SocketAddr, names: &[String]) -> Self {
        let names = names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        Self { listen, names }
    }

    /// Whether a `Host` header value names this listener.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if port.is_some_and(|p| p != self.listen.port()) {
            return false;
        }
        match name.parse::<IpAddr>() {
            // An address is no DNS name, so no page can rebind it: any address of this
            // host is fine when the listener listens on all of them.
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip == self.listen.ip().to_canonical() || self.listen.ip().is_unspecified()
            }
            Err(_) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.names.contains(&name)
            }
        }
    }
}

/// `host[:port]` or `[v6]:port` into the host and the port; `None` when malformed.
fn split_host(value: &str) -> Option<(&str, Option<u16>)> {
    let value = value.trim();
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match value.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    (!name.is_empty()).then_some((name, port))
}

/// Checks `Host`: HTTP/1.1 requires exactly one (RFC 9112); an HTTP/1.0 request may go
/// without, as no browser sends one so.
fn check_host(text: &str, version: &str, hosts: &HostPolicy) -> Result<(), Response> {
    let mut values = text.split("\r\n").skip(1).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then_some(value.trim())
    });
    match (values.next(), values.next()) {
        (None, _) if version == "HTTP/1.0" => Ok(()),
        (None, _) => Err(Response::text(
            400,
            "an HTTP/1.1 request needs a Host header",
        )),
        (Some(_), Some(_)) => Err(Response::text(400, "more than one Host header")),
        (Some(host), None) if hosts.allows(host) => Ok(()),
        (Some(host), None) => Err(Response::text(
            421,
            format!(
                "Host `{host}` is not this listener ({}); add the name to metrics_hosts to \
                 serve it",
                hosts.listen
            ),
        )),
    }
}

/// Decides from the request head alone: a route, or the error response. Of the headers
/// only `Host` matters (no content negotiation: /metrics always answers in OpenMetrics,
/// which Prometheus asks for first).
pub fn route(head: &[u8], hosts: &HostPolicy) -> Result<Route, Response> {
    let text = std::str::from_utf8(head).map_err(|_| Response::text(400, "bad request"))?;
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::text(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Err(Response::text(400, "bad request line"));
    }
    check_host(text, version, hosts)?;
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let route = match path {
        "/" | "/index.html" => Route::Page,
        "/metrics" => Route::Metrics,
        "/status.json" => Route::StatusJson,
        _ => {
            return Err(Response::text(
                404,
                "not found: this listener serves /metrics, / (the status page) and /status.json",
            ));
        }
    };
    if method != "GET" {
        return Err(
            Response::text(405, "only GET: everything here is read-only").with_header("Allow: GET"),
        );
    }
    Ok(route)
}

/// Why no complete request head arrived.
#[derive(Debug)]
enum HeadError {
    TooLarge,
    /// The peer closed or the socket failed: nobody to answer.
    Gone,
}

/// Reads up to the blank line ending the head; the body (GET has none) is never read.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        // Only the new bytes and the three before them can complete the terminator.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let end = buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| from + i + 4);
        if end.unwrap_or(buf.len()) > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        if let Some(end) = end {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    hosts: &RwLock<HostPolicy>,
    controller: &Mutex<Controller>,
    speaker: &Mutex<Speaker>,
) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => {
            let route = route(&head, &hosts.read().unwrap_or_else(|e| e.into_inner()));
            match route {
                Ok(route) => respond(route, controller, speaker).await,
                Err(response) => response,
            }
        }
        Ok(Err(HeadError::TooLarge)) => Response::text(
            431,
            format!("request head larger than {MAX_HEAD_BYTES} bytes"),
        ),
        Ok(Err(HeadError::Gone)) => return,
        Err(_) => Response::text(408, format!("no request within {READ_TIMEOUT:?}")),
    };
    debug!("metrics listener: {peer}: {}", response.status);
    let bytes = response.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("metrics listener: {peer}: writing the response: {e}"),
        Err(_) => debug!("metrics listener: {peer}: too slow to take the response"),
    }
}

async fn respond(
    route: Route,
    controller: &Mutex<Controller>,
    speaker: &Mutex<Speaker>,
) -> Response {
    if route == Route::Page {
        return Response::new(200, "text/html; charset=utf-8", PAGE)
            .with_header(format!("Content-Security-Policy: {PAGE_CSP}"));
    }
    // Under the lock only what the controller holds in memory; the counter maps, one
    // lookup per listener and backend, are read after it is released, on a blocking
    // thread, so a scrape of many backends never holds up the control API or health
    // transitions.
    let draft = controller.lock().await.status_draft();
    // BIRD is asked after the controller's lock is released, as for `lb-ctl status`.
    let probe = speaker.lock().await.status_probe();
    let bgp = match probe {
        Some(probe) => Some(probe.run().await),
        None => None,
    };
    let read = tokio::task::spawn_blocking(move || read_snapshot(route, draft, bgp)).await;
    match read.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok(response) => response,
        Err(e) => {
            let path = if route == Route::Metrics {
                "/metrics"
            } else {
                "/status.json"
            };
            warn!("{path}: {e:#}");
            Response::text(500, format!("{e:#}"))
        }
    }
}

/// Reads the counters of `draft` through handles of its own on the pinned maps and
/// renders `route`, with BGP's sessions and VIPs (`bgp`, absent without a `bgp` section).
fn read_snapshot(
    route: Route,
    draft: StatusDraft,
    bgp: Option<BgpStatus>,
) -> anyhow::Result<Response> {
    let counters = CounterReader::open(&draft.maps_dir)?;
    let (at_s, probes) = (draft.at_s, draft.probes.clone());
    let mut status = draft.fill(&counters)?;
    status.bgp = bgp;
    let reasons = counters.all_counters()?;
    Ok(match route {
        Route::Metrics => {
            let text = metrics::encode(metrics::Sample::new(status, &reasons, probes))?;
            Response::new(200, metrics::CONTENT_TYPE, text)
        }
        _ => {
            let stats = stats_of(&status, at_s, &reasons);
            let body = serde_json::to_vec(&status_json(status, stats)?)?;
            Response::new(200, "application/json", body)
        }
    })
}

/// `lb-ctl status --json` with the counters of `lb-ctl stats --json` under `stats`.
pub fn status_json(status: Status, stats: Stats) -> serde_json::Result<serde_json::Value> {
    let mut value = serde_json::to_value(status)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("stats".to_owned(), serde_json::to_value(stats)?);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> HostPolicy {
        HostPolicy::new("127.0.0.1:9100".parse().unwrap(), &[])
    }

    #[test]
    fn routes_and_refusals() {
        let route = |head: &[u8]| route(head, &local());
        assert_eq!(
            route(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n\r\n"),
            Ok(Route::Page)
        );
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"),
            Ok(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /status.json?t=1 HTTP/1.0\r\n\r\n"),
            Ok(Route::StatusJson)
        );
        let status = |head: &str| {
            let head = head.replace("\r\n\r\n", "\r\nHost: 127.0.0.1:9100\r\n\r\n");
            route(head.as_bytes()).map_err(|r| r.status)
        };
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), Err(404));
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status("DELETE / HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status("GET /metrics\r\n\r\n"), Err(400));
        assert_eq!(status("GET metrics HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status("GET / SPDY/3\r\n\r\n"), Err(400));
        assert_eq!(
            route(b"\xff\xfe / HTTP/1.1\r\n\r\n").map_err(|r| r.status),
            Err(400)
        );
        let refused = route(b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap_err();
        assert!(refused.headers.iter().any(|h| h == "Allow: GET"));
    }

    #[test]
    fn host_must_name_the_listener() {
        let status = |policy: &HostPolicy, host: &str| {
            let head = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
            route(head.as_bytes(), policy)
                .map(|_| 200)
                .unwrap_or_else(|r| r.status)
        };
        let local = local();
        for host in ["127.0.0.1", "127.0.0.1:9100", " 127.0.0.1:9100 "] {
            assert_eq!(status(&local, host), 200, "{host}");
        }
        // DNS rebinding: a name that resolves here, but is not ours.
        for host in [
            "evil.example",
            "evil.example:9100",
            "localhost:9100",
            "127.0.0.1:9101",
            "127.0.0.2:9100",
            "127.0.0.1:x",
            "",
            "[::1]:9100",
        ] {
            assert_eq!(status(&local, host), 421, "{host}");
        }
        let refusal = route(
            b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            &local,
        )
        .unwrap_err();
        assert_eq!(
            String::from_utf8(refusal.body).unwrap(),
            "Host `evil.example` is not this listener (127.0.0.1:9100); add the name to \
             metrics_hosts to serve it\n"
        );
        // Configured names, without case and with or without the port.
        let named = HostPolicy::new(
            "127.0.0.1:9100".parse().unwrap(),
            &["LB-Host".to_owned(), "lb.example.test.".to_owned()],
        );
        for host in ["lb-host", "lb-host:9100", "LB.example.test", "127.0.0.1"] {
            assert_eq!(status(&named, host), 200, "{host}");
        }
        assert_eq!(status(&named, "lb-host:80"), 421);
        assert_eq!(status(&named, "evil.example"), 421);
        // On every address: any address literal, still no other name.
        let any = HostPolicy::new("0.0.0.0:9100".parse().unwrap(), &[]);
        assert_eq!(status(&any, "198.18.0.1:9100"), 200);
        assert_eq!(status(&any, "evil.example:9100"), 421);
        let v6 = HostPolicy::new("[::1]:9100".parse().unwrap(), &[]);
        assert_eq!(status(&v6, "[::1]:9100"), 200);
        assert_eq!(status(&v6, "[::1]"), 200);
        assert_eq!(status(&v6, "127.0.0.1:9100"), 421);
        // HTTP/1.1 without Host, or with two.
        let head = b"GET /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(route(head, &local).unwrap_err().status, 400);
        let head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n";
        assert_eq!(route(head, &local).unwrap_err().status, 400);
    }

    #[test]
    fn clients_are_limited_one_by_one() {
        let clients = Arc::new(Clients::default());
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let held: Vec<ClientSlot> = (0..MAX_PER_CLIENT)
            .map(|_| clients.enter(a).unwrap())
            .collect();
        assert!(clients.enter(a).is_none(), "one more from a");
        assert!(clients.enter(b).is_some(), "b is not held up by a");
        drop(held);
        assert!(clients.enter(a).is_some());
        assert!(
            clients.0.lock().unwrap().is_empty(),
            "counts go back to nothing"
        );
    }

    #[test]
    fn responses_are_complete_http() {
        let r = Response::text(404, "not found");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("\r\nContent-Length: 10\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnot found\n"));
    }

    #[test]
    fn the_page_is_self_contained() {
        // No external assets: nothing is loaded from another origin.
        for needle in ["http://", "https://", "src=\"//", "@import", "<link"] {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
        for needle in ["data-backend", "data-state", "status.json"] {
            assert!(PAGE.contains(needle), "the page lacks {needle}");
        }
        // Endpoints are shown through one function, which brackets IPv6 as lb-ctl does.
        assert!(PAGE.contains("function endpoint(address, port)"));
        assert!(
            !PAGE.contains(".address + \":\""),
            "an endpoint formatted by hand"
        );
    }

    #[tokio::test]
    async fn head_is_bounded_and_complete() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                results.push(read_head(&mut s).await.map_err(|e| format!("{e:?}")));
            }
            results
        });
        let mut a = TcpStream::connect(addr).await.unwrap();
        // Split across writes, terminator straddling them.
        a.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.write_all(b"\n\r\n").await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "y".repeat(MAX_HEAD_BYTES)
        );
        let _ = b.write_all(big.as_bytes()).await;
        let results = server.await.unwrap();
        assert_eq!(
            results[0].as_deref(),
            Ok(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..])
        );
        assert_eq!(results[1].as_deref().unwrap_err(), "TooLarge");
    }
}
