//! `lb-test-backend`: the backend server of the end-to-end tests, started inside a
//! backend namespace.
//!
//! ```text
//! lb-test-backend --name NAME [--http ADDR:PORT]... [--udp ADDR:PORT]... [--control PATH] [--verbose]
//! ```
//!
//! - HTTP/1.1 on every `--http` address: `200 OK` with body `NAME\n` and headers
//!   `X-Backend: NAME`, `X-Client-Addr: IP:PORT` (the peer as the backend sees it).
//!   Keep-alive is honoured (many requests per connection until the client closes or
//!   sends `Connection: close`). `/slow?ms=N` answers after N ms (at most 600000);
//!   `/stream?seconds=N` sends `NAME <i>\n` every 100 ms for N seconds (at most 600),
//!   chunked for HTTP/1.1 and close-delimited for HTTP/1.0. `/bytes?n=N` answers a body
//!   of N bytes (at most 64 MiB); `/upload` answers `NAME <bytes of request body read>\n`
//!   (bodies up to 16 MiB, with Content-Length).
//! - In 503 mode every answer is `503 Service Unavailable` with body `NAME 503\n`.
//!   SIGUSR1 switches to 503, SIGUSR2 back to 200; so do the control commands.
//! - UDP on every `--udp` address: each datagram is answered to its sender with
//!   `NAME <payload>` (`echo ping` gets `NAME ping\n`), unless turned off (`udp off`).
//! - `--control PATH`: a Unix stream socket taking one command per line, each answered
//!   with one line: `status 503`, `status 200` (→ `ok`), `udp on`, `udp off` (→ `ok`),
//!   `stats` (→ `connections=N active=N requests=N udp=N status=N`), `peers`
//!   (→ `peers IP=N IP=N …`, source addresses seen), `reset` (zero the counters), `ping`
//!   (→ `pong`). Anything else → `error …`.
//! - An IPv6 address binds an IPv6-only socket: `--http [::]:80` serves IPv6 beside
//!   `--http 0.0.0.0:80`, and peers are reported as the address family they came in.
//! - Prints `lb-test-backend ready` on stdout once every socket is bound; with `--verbose`
//!   logs one line per connection or datagram to stderr. Exits 0 on SIGTERM or SIGINT.
//!
//! Std only, one thread per connection: tests hold at most a few thousand connections,
//! and plain threads keep the server obviously correct.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    mem,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    process,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use clap::{ArgGroup, Parser};

/// Printed on stdout when the server is ready (the test harness waits for it).
const READY_LINE: &str = "lb-test-backend ready";
const MAX_SLOW_MS: u64 = 600_000;
const MAX_STREAM_SECONDS: u64 = 600;
/// Largest `/bytes` body.
const MAX_BYTES: u64 = 64 << 20;
/// Longest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest request body read (and discarded).
const MAX_BODY: u64 = 16 << 20;
/// Thread stacks: connection handlers need little, and thousands may exist at once.
const STACK_SIZE: usize = 128 * 1024;

/// The backend server of the end-to-end tests.
#[derive(Debug, Parser)]
#[command(
    name = "lb-test-backend",
    group(ArgGroup::new("serve").args(["http", "udp"]).required(true).multiple(true))
)]
struct Config {
    /// The name it answers with (one word).
    #[arg(long, value_parser = one_word)]
    name: String,
    /// Serves HTTP/1.1 on ADDR:PORT (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Vec<SocketAddr>,
    /// Answers UDP datagrams on ADDR:PORT (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    udp: Vec<SocketAddr>,
    /// A Unix stream socket taking one command per line.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Logs one line per connection or datagram on stderr.
    #[arg(long)]
    verbose: bool,
}

/// A name the tests can split a response line on.
fn one_word(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        Err("one word expected".to_owned())
    } else {
        Ok(name.to_owned())
    }
}

/// What every thread shares.
struct State {
    name: String,
    verbose: bool,
    status: AtomicU16,
    udp_on: AtomicBool,
    connections: AtomicU64,
    active: AtomicU64,
    requests: AtomicU64,
    udp: AtomicU64,
    peers: Mutex<BTreeMap<IpAddr, u64>>,
}

impl State {
    fn saw(&self, peer: IpAddr) {
        *self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_default() += 1;
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

fn main() {
    let config = Config::parse();
    // Block the signals we handle before any thread exists, so every thread inherits the
    // mask and only the sigwait loop below ever receives them.
    let signals = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGUSR2]);
    // SAFETY: `signals` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    if rc != 0 {
        die(&format!(
            "pthread_sigmask: {}",
            io::Error::from_raw_os_error(rc)
        ));
    }

    let state = Arc::new(State {
        name: config.name.clone(),
        verbose: config.verbose,
        status: AtomicU16::new(200),
        udp_on: AtomicBool::new(true),
        connections: AtomicU64::new(0),
        active: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        udp: AtomicU64::new(0),
        peers: Mutex::new(BTreeMap::new()),
    });

    // Bind everything before reporting ready, so a test never races the listeners.
    for addr in &config.http {
        let listener = bind_tcp(*addr).unwrap_or_else(|e| die(&format!("bind tcp {addr}: {e}")));
        let state = Arc::clone(&state);
        spawn(move || accept_http(listener, state));
    }
    for addr in &config.udp {
        let socket = bind_udp(*addr).unwrap_or_else(|e| die(&format!("bind udp {addr}: {e}")));
        let state = Arc::clone(&state);
        spawn(move || serve_udp(socket, state));
    }
    if let Some(path) = &config.control {
        // A stale socket file (from a killed run) would make bind fail.
        let _ = fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| die(&format!("bind control socket {}: {e}", path.display())));
        let state = Arc::clone(&state);
        spawn(move || accept_control(listener, state));
    }
    println!("{READY_LINE}");
    let _ = io::stdout().flush();

    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe { libc::sigwait(&signals, &mut sig) };
        if rc != 0 {
            continue;
        }
        match sig {
            libc::SIGUSR1 => state.set_status(503),
            libc::SIGUSR2 => state.set_status(200),
            _ => {
                if let Some(path) = &config.control {
                    let _ = fs::remove_file(path);
                }
                if config.verbose {
                    eprintln!("{}: exiting on signal {sig}", config.name);
                }
                process::exit(0);
            }
        }
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset only takes valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// What std's `TcpListener::bind` does (SO_REUSEADDR, a backlog of 128), except that an
/// IPv6 socket is IPv6-only: `[::]:80` then sits beside `0.0.0.0:80` instead of taking
/// IPv4 too, and IPv4 peers are never reported as `::ffff:…` addresses.
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.is_ipv4() {
        return TcpListener::bind(addr);
    }
    let fd = ipv6_only_socket(rustix::net::SocketType::STREAM)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 128)?;
    Ok(TcpListener::from(fd))
}

/// `UdpSocket::bind`, IPv6-only for an IPv6 address (see [`bind_tcp`]).
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    if addr.is_ipv4() {
        return UdpSocket::bind(addr);
    }
    let fd = ipv6_only_socket(rustix::net::SocketType::DGRAM)?;
    rustix::net::bind(&fd, &addr)?;
    Ok(UdpSocket::from(fd))
}

fn ipv6_only_socket(kind: rustix::net::SocketType) -> io::Result<std::os::fd::OwnedFd> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::INET6,
        kind,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_ipv6_v6only(&fd, true)?;
    Ok(fd)
}

fn die(msg: &str) -> ! {
    eprintln!("lb-test-backend: {msg}");
    process::exit(1);
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().stack_size(STACK_SIZE).spawn(f) {
        // Out of threads: dropping this one connection beats taking the server down.
        eprintln!("lb-test-backend: cannot start a thread: {e}");
    }
}

fn accept_http(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let state = Arc::clone(&state);
                // Counted at accept, so the count is complete once the client has had
                // its answer.
                state.connections.fetch_add(1, Ordering::Relaxed);
                state.active.fetch_add(1, Ordering::Relaxed);
                spawn(move || {
                    serve_connection(stream, &state);
                    state.active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            // EMFILE and friends: back off briefly instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    http10: bool,
    keep_alive: bool,
    /// Bytes of request body read (and discarded).
    body_read: u64,
}

/// Reads one request head (and discards its body). `Ok(None)` on a clean EOF before a
/// request started.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut head_len = 0;
    let mut line = String::new();
    // Tolerate empty lines before a request (RFC 9112 §2.2).
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        head_len += n;
        if !line.trim().is_empty() {
            break;
        }
        if head_len > MAX_HEAD {
            return Err(bad("request head too long"));
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let http10 = version == "HTTP/1.0";
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        http10,
        keep_alive: !http10,
        body_read: 0,
    };
    let mut content_length = 0u64;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(bad("EOF inside request head"));
        }
        head_len += n;
        if head_len > MAX_HEAD {
            return Err(bad("request head too long"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    request.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    request.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| bad("bad Content-Length"))?;
            if content_length > MAX_BODY {
                return Err(bad("request body too large"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked request bodies are not supported"));
        }
    }
    request.body_read = io::copy(&mut reader.take(content_length), &mut io::sink())?;
    Ok(Some(request))
}

fn query_number(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_connection(stream: TcpStream, state: &State) {
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let peer_text = peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
    if let Some(peer) = peer {
        state.saw(peer.ip());
    }
    if state.verbose {
        let local = local.map_or_else(|| "?".to_owned(), |l| l.to_string());
        eprintln!("{}: connection from {peer_text} to {local}", state.name);
    }
    // Answers go out in one write each; no point in delaying them.
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let body = format!("{} bad request: {e}\n", state.name);
                    let _ = write_response(&mut writer, state, 400, &peer_text, false, &body, true);
                }
                break;
            }
        };
        state.requests.fetch_add(1, Ordering::Relaxed);
        if answer(&mut writer, state, &request, &peer_text).is_err() || !request.keep_alive {
            break;
        }
    }
    // Send our FIN now rather than when the reader half is dropped too.
    let _ = writer.shutdown(Shutdown::Write);
}

fn answer(w: &mut TcpStream, state: &State, request: &Request, peer: &str) -> io::Result<()> {
    let with_body = request.method != "HEAD";
    let status = state.status.load(Ordering::Relaxed);
    if status != 200 {
        let body = format!("{} {status}\n", state.name);
        return write_response(w, state, status, peer, request.keep_alive, &body, with_body);
    }
    match request.path.as_str() {
        "/slow" => {
            let ms = query_number(&request.query, "ms")
                .unwrap_or(0)
                .min(MAX_SLOW_MS);
            thread::sleep(Duration::from_millis(ms));
        }
        "/stream" if with_body => {
            let seconds = query_number(&request.query, "seconds")
                .unwrap_or(1)
                .min(MAX_STREAM_SECONDS);
            return stream_lines(w, state, request, peer, seconds);
        }
        "/bytes" => {
            let n = query_number(&request.query, "n")
                .unwrap_or(0)
                .min(MAX_BYTES);
            return send_bytes(w, state, request, peer, n, with_body);
        }
        "/upload" => {
            let body = format!("{} {}\n", state.name, request.body_read);
            return write_response(w, state, 200, peer, request.keep_alive, &body, with_body);
        }
        _ => {}
    }
    let body = format!("{}\n", state.name);
    write_response(w, state, 200, peer, request.keep_alive, &body, with_body)
}

fn write_response(
    w: &mut TcpStream,
    state: &State,
    status: u16,
    peer: &str,
    keep_alive: bool,
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         X-Backend: {}\r\nX-Client-Addr: {peer}\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        state.name,
        if keep_alive { "keep-alive" } else { "close" }
    );
    if with_body {
        out.push_str(body);
    }
    w.write_all(out.as_bytes())
}

/// `/bytes`: `n` bytes of body, written in chunks of 64 KiB so a download of many
/// megabytes needs no buffer of its size.
fn send_bytes(
    w: &mut TcpStream,
    state: &State,
    request: &Request,
    peer: &str,
    n: u64,
    with_body: bool,
) -> io::Result<()> {
    w.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\
             X-Backend: {}\r\nX-Client-Addr: {peer}\r\nConnection: {}\r\n\r\n",
            state.name,
            if request.keep_alive {
                "keep-alive"
            } else {
                "close"
            }
        )
        .as_bytes(),
    )?;
    if !with_body {
        return Ok(());
    }
    // On the heap: connection threads have small stacks (STACK_SIZE).
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let len = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..len])?;
        left -= len as u64;
    }
    Ok(())
}

/// `/stream`: one line per 100 ms, chunked (HTTP/1.1, connection stays usable) or
/// close-delimited (HTTP/1.0).
fn stream_lines(
    w: &mut TcpStream,
    state: &State,
    request: &Request,
    peer: &str,
    seconds: u64,
) -> io::Result<()> {
    let chunked = !request.http10;
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        ""
    };
    let connection = if chunked && request.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    w.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{framing}X-Backend: {}\r\n\
             X-Client-Addr: {peer}\r\nConnection: {connection}\r\n\r\n",
            state.name
        )
        .as_bytes(),
    )?;
    for i in 0..seconds * 10 {
        if i > 0 {
            thread::sleep(Duration::from_millis(100));
        }
        let line = format!("{} {i}\n", state.name);
        if chunked {
            w.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())?;
        } else {
            w.write_all(line.as_bytes())?;
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
        Ok(())
    } else {
        // The end of a close-delimited body is the end of the connection.
        Err(io::Error::other("close-delimited body sent"))
    }
}

fn serve_udp(socket: UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        state.udp.fetch_add(1, Ordering::Relaxed);
        state.saw(from.ip());
        if state.verbose {
            eprintln!("{}: datagram of {n} bytes from {from}", state.name);
        }
        if !state.udp_on.load(Ordering::Relaxed) {
            continue;
        }
        let mut reply = Vec::with_capacity(state.name.len() + 1 + n);
        reply.extend_from_slice(state.name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&reply, from)
            && state.verbose
        {
            eprintln!("{}: reply to {from} failed: {e}", state.name);
        }
    }
}

fn accept_control(listener: UnixListener, state: Arc<State>) {
    for stream in listener.incoming().flatten() {
        let state = Arc::clone(&state);
        spawn(move || serve_control(stream, &state));
    }
}

fn serve_control(stream: UnixStream, state: &State) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut writer = stream;
    for line in BufReader::new(read_half).lines() {
        let Ok(line) = line else {
            return;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            [] => continue,
            ["ping"] => "pong".to_owned(),
            ["status", code] => match code.parse::<u16>() {
                Ok(code @ 200..=599) => {
                    state.set_status(code);
                    "ok".to_owned()
                }
                _ => format!("error bad status {code:?}"),
            },
            ["udp", "on"] => {
                state.udp_on.store(true, Ordering::Relaxed);
                "ok".to_owned()
            }
            ["udp", "off"] => {
                state.udp_on.store(false, Ordering::Relaxed);
                "ok".to_owned()
            }
            ["stats"] => format!(
                "connections={} active={} requests={} udp={} status={}",
                state.connections.load(Ordering::Relaxed),
                state.active.load(Ordering::Relaxed),
                state.requests.load(Ordering::Relaxed),
                state.udp.load(Ordering::Relaxed),
                state.status.load(Ordering::Relaxed)
            ),
            // The leading word keeps the answer non-empty when no peer was seen yet.
            ["peers"] => state
                .peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .fold("peers".to_owned(), |acc, (ip, n)| format!("{acc} {ip}={n}")),
            ["reset"] => {
                // `active` is not a counter of the past: it stays as it is.
                state.connections.store(0, Ordering::Relaxed);
                state.requests.store(0, Ordering::Relaxed);
                state.udp.store(0, Ordering::Relaxed);
                state
                    .peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                "ok".to_owned()
            }
            _ => format!("error unknown command {line:?}"),
        };
        if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}
