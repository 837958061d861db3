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
//! once. Scrapers and browsers need nothing more, and nothing here can change the
//! balancer: the routes only read, through the same controller lock as the control API.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{controller::Controller, metrics};

/// Longest request head (request line and headers) read; longer gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head; slower gets 408.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response; a slower one is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;

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
    task: Option<JoinHandle<()>>,
}

impl WebServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens on `want` (stops listening when `None`), moving the listener when the
    /// address changed since the last call; a no-op otherwise. Must run inside the
    /// daemon's tokio runtime.
    pub fn follow(
        &mut self,
        want: Option<SocketAddr>,
        controller: &Arc<Mutex<Controller>>,
    ) -> Result<(), WebError> {
        // Unchanged: listening already, off, or listening on it failed before (not
        // retried until the config names another address).
        if want == self.wanted {
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
        self.task = Some(tokio::spawn(serve(listener, Arc::clone(controller))));
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

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, controller: Arc<Mutex<Controller>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let controller = Arc::clone(&controller);
                tokio::spawn(async move {
                    handle(stream, peer, &controller).await;
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

/// Decides from the request head alone: a route, or the error response. Headers are
/// not needed by any route (no Host routing, no content negotiation: /metrics always
/// answers in OpenMetrics, which Prometheus asks for first).
pub fn route(head: &[u8]) -> Result<Route, Response> {
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

async fn handle(mut stream: TcpStream, peer: SocketAddr, controller: &Mutex<Controller>) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => match route(&head) {
            Ok(route) => respond(route, controller).await,
            Err(response) => response,
        },
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

async fn respond(route: Route, controller: &Mutex<Controller>) -> Response {
    match route {
        Route::Page => Response::new(200, "text/html; charset=utf-8", PAGE)
            .with_header(format!("Content-Security-Policy: {PAGE_CSP}")),
        Route::Metrics => {
            // Read under the lock, encode after releasing it.
            let sample = metrics::Sample::take(&*controller.lock().await);
            match sample.and_then(metrics::encode) {
                Ok(text) => Response::new(200, metrics::CONTENT_TYPE, text),
                Err(e) => {
                    warn!("/metrics: {e}");
                    Response::text(500, e.to_string())
                }
            }
        }
        Route::StatusJson => {
            let value = status_json(&*controller.lock().await);
            match value.and_then(|v| serde_json::to_vec(&v).map_err(anyhow::Error::from)) {
                Ok(body) => Response::new(200, "application/json", body),
                Err(e) => {
                    warn!("/status.json: {e:#}");
                    Response::text(500, format!("{e:#}"))
                }
            }
        }
    }
}

/// `lb-ctl status --json` with the counters of `lb-ctl stats --json` under `stats`.
pub fn status_json(controller: &Controller) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(controller.last_status()?)?;
    let stats = serde_json::to_value(controller.stats()?)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("stats".to_owned(), stats);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refusals() {
        assert_eq!(route(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Route::Page));
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Ok(Route::Metrics));
        assert_eq!(
            route(b"GET /status.json?t=1 HTTP/1.0\r\n\r\n"),
            Ok(Route::StatusJson)
        );
        let status = |head: &[u8]| route(head).map_err(|r| r.status);
        assert_eq!(status(b"GET /nope HTTP/1.1\r\n\r\n"), Err(404));
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status(b"DELETE / HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status(b"GET /metrics\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET metrics HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / SPDY/3\r\n\r\n"), Err(400));
        assert_eq!(status(b"\xff\xfe / HTTP/1.1\r\n\r\n"), Err(400));
        let refused = route(b"PUT / HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(refused.headers.iter().any(|h| h == "Allow: GET"));
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
