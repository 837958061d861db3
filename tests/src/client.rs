//! Clients run from a namespace: HTTP through curl, UDP through sockets opened inside
//! the namespace, and tallies of which backend answered.
//!
//! Every request is bounded in time (curl's `--max-time`, socket timeouts, an overall
//! deadline for bulk runs), and bulk runs are bounded in count by their callers.
//!
//! Destinations may be of either family: an IPv6 URL has its address in brackets
//! ([`http_url`] writes one), a UDP destination is a `SocketAddr`. The functions taking
//! `source: Option<Ipv4Addr>` pick an IPv4 source; each has a `…_from` twin taking a
//! source of either family (`http_get_from(ns, url, client6, timeout)`).

use std::{
    collections::BTreeMap,
    env,
    fmt::{self, Display},
    fs,
    io::{self, ErrorKind},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use crate::netns::{Netns, failure_message};

/// Marker that precedes curl's `--write-out` data, so it cannot be mistaken for a body
/// (not starting with `@`, which would make curl read the format from a file).
const MARK: &str = "~lbt-curl~";

/// curl cannot run more transfers in parallel than this.
const CURL_MAX_PARALLEL: usize = 300;

/// Upper bound on one bulk run; keeps its output well inside what a ChildGuard captures.
const MAX_BULK: usize = 50_000;

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One HTTP answer: status, response headers (names in lower case) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// One GET of `url` from namespace `ns` with curl (`curl -sS --max-time T [--interface
/// SOURCE] URL`), whatever the status. `Err` when curl fails (connection refused, timeout,
/// …), with curl's exit status and message.
pub fn http_request(
    ns: &Netns,
    url: &str,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    request(ns, url, source.map(IpAddr::V4), timeout)
}

/// [`http_request`] from `source`, an address of either family.
pub fn http_request_from(
    ns: &Netns,
    url: &str,
    source: impl Into<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    request(ns, url, Some(source.into()), timeout)
}

/// `http://ADDR:PORT/PATH` with an IPv6 address in brackets (`http://[2001:db8::1]:80/`);
/// `path` starts with `/` (or is empty).
pub fn http_url(addr: impl Into<IpAddr>, port: u16, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(addr.into(), port))
}

fn request(
    ns: &Netns,
    url: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    let mut args = vec![
        "curl".to_owned(),
        "-sS".into(),
        "--max-time".into(),
        secs(timeout),
        // Response headers first on stdout, then the body, then the status after MARK.
        "-D".into(),
        "-".into(),
        "-w".into(),
        format!("{MARK} %{{http_code}}"),
    ];
    if let Some(source) = source {
        args.extend(["--interface".into(), source.to_string()]);
    }
    args.push(url.into());
    let (rest, status) = curl_marked(ns, &args)?;
    let status: u16 = status
        .trim()
        .parse()
        .with_context(|| format!("bad status in curl output: {status:?}"))?;
    let (head, body) = rest
        .split_once("\r\n\r\n")
        .with_context(|| format!("curl output without end of headers: {rest:?}"))?;
    let headers = head
        .lines()
        .skip(1) // the status line
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpReply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Runs curl (`args`, whose write-out starts with MARK) in `ns`: what it printed before
/// MARK, and after it. `Err` when curl fails, with its exit status and message.
fn curl_marked(ns: &Netns, args: &[String]) -> anyhow::Result<(String, String)> {
    let out = ns.exec(args);
    if !out.status.success() {
        bail!(
            "{}",
            failure_message(&format!("ip netns exec {ns} {}", args.join(" ")), &out)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (before, after) = stdout
        .rsplit_once(MARK)
        .with_context(|| format!("curl output without status marker: {stdout:?}"))?;
    Ok((before.to_owned(), after.to_owned()))
}

/// [`http_request`] returning the body of a 2xx answer; any other status is an `Err` with
/// the status and the body (e.g. `b1 503`).
pub fn http_get(
    ns: &Netns,
    url: &str,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> anyhow::Result<String> {
    get(ns, url, source.map(IpAddr::V4), timeout)
}

/// [`http_get`] from `source`, an address of either family.
pub fn http_get_from(
    ns: &Netns,
    url: &str,
    source: impl Into<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<String> {
    get(ns, url, Some(source.into()), timeout)
}

fn get(ns: &Netns, url: &str, source: Option<IpAddr>, timeout: Duration) -> anyhow::Result<String> {
    let reply = request(ns, url, source, timeout)?;
    if !(200..300).contains(&reply.status) {
        bail!(
            "HTTP {} from {url}: {:?}",
            reply.status,
            reply.body.trim_end()
        );
    }
    Ok(reply.body)
}

/// Downloads `url` from `ns` with curl, discarding the body: `Ok(bytes received)` for a 2xx
/// answer within `timeout`, `Err` otherwise (a transfer that stalls ends at the timeout,
/// with what arrived by then in the message).
pub fn http_download(ns: &Netns, url: &str, timeout: Duration) -> anyhow::Result<u64> {
    let args = [
        "curl".to_owned(),
        "-sS".into(),
        "--max-time".into(),
        secs(timeout),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        format!("{MARK} %{{http_code}} %{{size_download}}"),
        url.into(),
    ];
    let out = ns.exec(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let written = stdout.rsplit_once(MARK).map(|(_, w)| w.trim().to_owned());
    if !out.status.success() {
        bail!(
            "{} (status and bytes received: {written:?})",
            failure_message(&format!("ip netns exec {ns} {}", args.join(" ")), &out)
        );
    }
    let written = written.with_context(|| format!("curl output without marker: {stdout:?}"))?;
    let (status, size) = written
        .split_once(' ')
        .with_context(|| format!("bad curl write-out: {written:?}"))?;
    if !status.starts_with('2') {
        bail!("HTTP {status} from {url} ({size} bytes)");
    }
    size.parse()
        .with_context(|| format!("bad size in curl write-out: {written:?}"))
}

/// POSTs the file at `body` to `url` from `ns` with curl (no `Expect: 100-continue`): the
/// body of a 2xx answer within `timeout`, `Err` otherwise.
pub fn http_upload(
    ns: &Netns,
    url: &str,
    body: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    let args = [
        "curl".to_owned(),
        "-sS".into(),
        "--max-time".into(),
        secs(timeout),
        "-H".into(),
        "Expect:".into(),
        "-H".into(),
        "Content-Type: application/octet-stream".into(),
        "--data-binary".into(),
        format!("@{}", body.display()),
        "-w".into(),
        format!("{MARK} %{{http_code}}"),
        url.into(),
    ];
    let (reply, status) = curl_marked(ns, &args)?;
    if !status.trim().starts_with('2') {
        bail!("HTTP {} from {url}: {:?}", status.trim(), reply.trim_end());
    }
    Ok(reply.to_owned())
}

/// Limits of a bulk run.
#[derive(Debug, Clone)]
pub struct BulkOptions {
    /// Longest time one request may take (curl `--max-time`).
    pub max_time: Duration,
    /// Longest time one connection attempt may take (curl `--connect-timeout`).
    pub connect_timeout: Duration,
    /// Longest time the whole run may take; requests not done by then are reported as
    /// failed.
    pub deadline: Duration,
}

impl Default for BulkOptions {
    fn default() -> Self {
        BulkOptions {
            max_time: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(120),
        }
    }
}

/// [`curl_many_with`] with the default [`BulkOptions`] (5 s per request, 2 s to connect,
/// 120 s for the whole run).
pub fn curl_many(
    ns: &Netns,
    url: &str,
    count: usize,
    source: Option<Ipv4Addr>,
    parallelism: usize,
) -> Vec<Result<String, String>> {
    curl_many_with(ns, url, count, source, parallelism, &BulkOptions::default())
}

/// [`curl_many`] from `source`, an address of either family.
pub fn curl_many_from(
    ns: &Netns,
    url: &str,
    count: usize,
    source: impl Into<IpAddr>,
    parallelism: usize,
) -> Vec<Result<String, String>> {
    let source = Some(source.into());
    bulk(ns, url, count, source, parallelism, &BulkOptions::default())
}

/// [`curl_many`] where every request must be answered: a failure fails the test with
/// `what` and the tally (who answered, what failed). Returns the tally.
pub fn all_answered(
    ns: &Netns,
    url: &str,
    count: usize,
    source: Option<Ipv4Addr>,
    parallelism: usize,
    what: &str,
) -> Tally {
    answered(ns, url, count, source.map(IpAddr::V4), parallelism, what)
}

/// [`all_answered`] from `source`, an address of either family.
pub fn all_answered_from(
    ns: &Netns,
    url: &str,
    count: usize,
    source: impl Into<IpAddr>,
    parallelism: usize,
    what: &str,
) -> Tally {
    answered(ns, url, count, Some(source.into()), parallelism, what)
}

fn answered(
    ns: &Netns,
    url: &str,
    count: usize,
    source: Option<IpAddr>,
    parallelism: usize,
    what: &str,
) -> Tally {
    let options = BulkOptions::default();
    let tally = Tally::of(&bulk(ns, url, count, source, parallelism, &options));
    assert_eq!(
        tally.failed(),
        0,
        "{what}: {} of {count} requests to {url} failed: {tally}",
        tally.failed()
    );
    tally
}

/// `count` GETs of `url` from `ns`, at most `parallelism` at a time, each on a NEW TCP
/// connection (so each is a new flow for the load balancer), all in one curl process.
///
/// Result `i` is `Ok(body)` for a 2xx answer, else `Err` with the HTTP status and body or
/// curl's error. Connections are not reused because every request carries
/// `Connection: close`, which the backend honours by closing after its answer. Each body
/// goes to its own file, so parallel transfers cannot interleave their output; curl stdout
/// is not used.
pub fn curl_many_with(
    ns: &Netns,
    url: &str,
    count: usize,
    source: Option<Ipv4Addr>,
    parallelism: usize,
    options: &BulkOptions,
) -> Vec<Result<String, String>> {
    bulk(ns, url, count, source.map(IpAddr::V4), parallelism, options)
}

/// [`curl_many_with`] from `source`, an address of either family.
pub fn curl_many_with_from(
    ns: &Netns,
    url: &str,
    count: usize,
    source: impl Into<IpAddr>,
    parallelism: usize,
    options: &BulkOptions,
) -> Vec<Result<String, String>> {
    bulk(ns, url, count, Some(source.into()), parallelism, options)
}

fn bulk(
    ns: &Netns,
    url: &str,
    count: usize,
    source: Option<IpAddr>,
    parallelism: usize,
    options: &BulkOptions,
) -> Vec<Result<String, String>> {
    assert!(
        count <= MAX_BULK,
        "curl_many: count {count} above {MAX_BULK}"
    );
    assert!(
        (1..=CURL_MAX_PARALLEL).contains(&parallelism),
        "curl_many: parallelism {parallelism} outside 1..={CURL_MAX_PARALLEL}"
    );
    if count == 0 {
        return Vec::new();
    }
    let dir = TempDir::new("curl");
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut config = String::with_capacity(count * (url.len() + dir.path().as_os_str().len() + 32));
    for i in 0..count {
        let out = dir.path().join(i.to_string());
        config.push_str(&format!(
            "url = {}\noutput = {}\n",
            quote(url),
            quote(&out.to_string_lossy())
        ));
    }
    let config_path = dir.path().join("config");
    fs::write(&config_path, config)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));

    let mut args = vec![
        "curl".to_owned(),
        "-sS".into(),
        // `-s` does not silence the progress meter of --parallel in curl 7.88, and it
        // shares stderr with our per-transfer reports.
        "--no-progress-meter".into(),
        "-H".into(),
        "Connection: close".into(),
        "--max-time".into(),
        secs(options.max_time),
        "--connect-timeout".into(),
        secs(options.connect_timeout),
        // To stderr, which is unbuffered: stdout (a pipe) is block-buffered, and what a
        // deadline-killed curl had buffered there would be lost with it.
        "-w".into(),
        format!(
            "%{{stderr}}{MARK} %{{http_code}} %{{exitcode}} %{{filename_effective}} %{{errormsg}}\\n"
        ),
    ];
    if parallelism > 1 {
        args.extend([
            "--parallel".into(),
            // Open new connections right away instead of waiting to multiplex.
            "--parallel-immediate".into(),
            "--parallel-max".into(),
            parallelism.to_string(),
        ]);
    }
    if let Some(source) = source {
        args.extend(["--interface".into(), source.to_string()]);
    }
    args.extend(["-K".into(), config_path.to_string_lossy().into_owned()]);

    let mut child = ns.spawn(&args);
    let output = child.wait_output(options.deadline);
    let (stderr, why_missing) = match output {
        Some(out) => (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            format!("curl exited ({}) without reporting it", out.status),
        ),
        None => {
            child.stop();
            let stderr = child
                .wait_output(Duration::ZERO)
                .map(|o| o.stderr)
                .unwrap_or_default();
            (
                String::from_utf8_lossy(&stderr).into_owned(),
                format!("not done within the deadline of {:?}", options.deadline),
            )
        }
    };

    let mut results: Vec<Option<Result<String, String>>> = vec![None; count];
    for line in stderr.lines() {
        // Anywhere in the line: other stderr text may precede it without a newline.
        let Some((_, rest)) = line.split_once(MARK) else {
            continue;
        };
        let mut fields = rest.trim_start().splitn(4, ' ');
        let (Some(code), Some(exit), Some(file)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let errormsg = fields.next().unwrap_or("").trim();
        let Some(i) = Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < count)
        else {
            continue;
        };
        let body = fs::read_to_string(file).unwrap_or_default();
        results[i] = Some(match (exit, code.parse::<u16>()) {
            ("0", Ok(200..=299)) => Ok(body),
            ("0", _) => Err(format!("HTTP {code}: {:?}", body.trim_end())),
            _ => Err(format!("curl error {exit}: {errormsg}")),
        });
    }
    // curl's own messages (the lines without MARK), for requests it never reported.
    let curl_messages: Vec<&str> = stderr.lines().filter(|l| !l.contains(MARK)).collect();
    let stderr_tail = curl_messages[curl_messages.len().saturating_sub(3)..].join(" | ");
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(format!(
                    "no result: {why_missing}; curl stderr: {stderr_tail}"
                ))
            })
        })
        .collect()
}

/// One UDP request from `ns`: sends `payload` to `addr` (of either family) from a fresh
/// socket (bound to `source` if given, on a new ephemeral port) and returns the reply (for
/// `lb-test-backend`, `NAME <payload>`). `Err` on timeout or a reply from another
/// address than `addr` (which a real client would not accept either).
pub fn udp_request(
    ns: &Netns,
    addr: SocketAddr,
    payload: &str,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> anyhow::Result<String> {
    udp_one(ns, addr, payload, source.map(IpAddr::V4), timeout)
}

/// [`udp_request`] from `source`, an address of `addr`'s family.
pub fn udp_request_from(
    ns: &Netns,
    addr: SocketAddr,
    payload: &str,
    source: impl Into<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<String> {
    udp_one(ns, addr, payload, Some(source.into()), timeout)
}

fn udp_one(
    ns: &Netns,
    addr: SocketAddr,
    payload: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<String> {
    ns.enter(|| udp_exchange(addr, payload.as_bytes(), source, timeout))
        .map_err(|e| anyhow!("UDP {payload:?} to {addr} from {ns}: {e}"))
}

/// `count` UDP requests as [`udp_request`], one after another, each from a new socket and
/// therefore a new source port (a new flow). Takes at most `count × timeout`.
pub fn udp_many(
    ns: &Netns,
    addr: SocketAddr,
    payload: &str,
    count: usize,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> Vec<Result<String, String>> {
    udp_bulk(ns, addr, payload, count, source.map(IpAddr::V4), timeout)
}

/// [`udp_many`] from `source`, an address of `addr`'s family.
pub fn udp_many_from(
    ns: &Netns,
    addr: SocketAddr,
    payload: &str,
    count: usize,
    source: impl Into<IpAddr>,
    timeout: Duration,
) -> Vec<Result<String, String>> {
    udp_bulk(ns, addr, payload, count, Some(source.into()), timeout)
}

fn udp_bulk(
    ns: &Netns,
    addr: SocketAddr,
    payload: &str,
    count: usize,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Vec<Result<String, String>> {
    assert!(
        count <= MAX_BULK,
        "udp_many: count {count} above {MAX_BULK}"
    );
    ns.enter(|| {
        (0..count)
            .map(|_| {
                udp_exchange(addr, payload.as_bytes(), source, timeout).map_err(|e| e.to_string())
            })
            .collect()
    })
}

fn udp_exchange(
    addr: SocketAddr,
    payload: &[u8],
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<String> {
    let unspecified = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let source = source.unwrap_or(unspecified);
    if source.is_ipv4() != addr.is_ipv4() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("source {source} and destination {addr} are of different families"),
        ));
    }
    let socket = UdpSocket::bind((source, 0))?;
    // Unconnected on purpose: a reply from the wrong address is reported as such instead
    // of being filtered out by the kernel and showing up as a timeout.
    socket.send_to(payload, addr)?;
    let mut buf = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("no reply within {timeout:?}"),
            ));
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            Ok((n, from)) => {
                return Err(io::Error::other(format!(
                    "reply {:?} came from {from}, not {addr}",
                    String::from_utf8_lossy(&buf[..n])
                )));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no reply within {timeout:?}"),
                ));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Which backend gave how many answers, and what failed.
///
/// An answer is attributed to its first word: the backend's name for both an HTTP body
/// (`b1\n`) and a UDP reply (`b1 ping`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub answers: BTreeMap<String, usize>,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn of<'a>(results: impl IntoIterator<Item = &'a Result<String, String>>) -> Tally {
        let mut tally = Tally::default();
        for result in results {
            match result {
                Ok(answer) => {
                    let who = answer.split_whitespace().next().unwrap_or("").to_owned();
                    *tally.answers.entry(who).or_default() += 1;
                }
                Err(e) => tally.failures.push(e.clone()),
            }
        }
        tally
    }

    /// Answers from backend `name`.
    pub fn count(&self, name: &str) -> usize {
        self.answers.get(name).copied().unwrap_or(0)
    }

    pub fn answered(&self) -> usize {
        self.answers.values().sum()
    }

    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    pub fn total(&self) -> usize {
        self.answered() + self.failed()
    }

    /// Names of the backends that answered at least once.
    pub fn backends(&self) -> Vec<&str> {
        self.answers.keys().map(String::as_str).collect()
    }
}

impl Display for Tally {
    /// `b1=150 b2=150 failed=0`, plus the distinct failure messages (up to 5).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, n) in &self.answers {
            write!(f, "{name}={n} ")?;
        }
        write!(f, "failed={}", self.failed())?;
        let mut distinct: Vec<&String> = self.failures.iter().collect();
        distinct.sort();
        distinct.dedup();
        for failure in distinct.iter().take(5) {
            write!(f, "\n  failure: {failure}")?;
        }
        Ok(())
    }
}

/// A scratch folder under the system temp dir, removed on drop (unless kept).
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = env::temp_dir().join(format!(
            "lbt-{tag}-{}-{}",
            process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a killed run with the same pid would otherwise make create fail.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the folder in place on drop: a message points into it.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// One long-lived HTTP/1.1 connection with keep-alive, opened from inside a namespace and
/// used from the test thread: a client that stays connected while the network under it
/// changes (an LB host removed, say).
pub struct KeepAlive {
    stream: std::net::TcpStream,
    buffer: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `to` from namespace `ns`, each read and write bounded by `timeout`.
    pub fn open(ns: &Netns, to: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let stream = ns.enter(|| std::net::TcpStream::connect_timeout(&to, timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    /// One `GET /` on the connection: the body of a 200 answer (the backend's name), or
    /// what went wrong.
    pub fn get(&mut self) -> anyhow::Result<String> {
        self.send("/")?;
        self.answer()
    }

    /// Sends `GET path` without waiting for its answer (`answer` reads it).
    pub fn send(&mut self, path: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        self.stream.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: lb-test\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        )?;
        Ok(())
    }

    /// The answer to the request sent first of those not answered yet: the body of a 200
    /// answer (the backend's name), or what went wrong.
    pub fn answer(&mut self) -> anyhow::Result<String> {
        use std::io::Read as _;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .with_context(|| format!("an answer without Content-Length: {head:?}"))?;
                if self.buffer.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&self.buffer[end + 4..end + 4 + length])
                        .into_owned();
                    self.buffer.drain(..end + 4 + length);
                    if !head.starts_with("HTTP/1.1 200") {
                        bail!("{}: {body}", head.lines().next().unwrap_or_default());
                    }
                    return Ok(body.trim().to_owned());
                }
            }
            let n = match self.stream.read(&mut chunk) {
                // A signal to the test process (a child exiting) is no connection failure.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!(
                        "no answer within {:?} ({} bytes of it received)",
                        self.stream
                            .read_timeout()
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        self.buffer.len()
                    );
                }
                r => r?,
            };
            if n == 0 {
                bail!("the connection was closed");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Requests on every connection, a round every 100 ms, until `done` (which bounds it);
/// the connections that failed, each once, with why. A connection fails when a request
/// gets no answer or the answer comes from another backend than its first.
pub fn exchange(
    connections: &mut [KeepAlive],
    first_backend: &[String],
    mut done: impl FnMut() -> bool,
) -> BTreeMap<usize, String> {
    let mut failed = BTreeMap::new();
    while !done() {
        for (i, c) in connections.iter_mut().enumerate() {
            if failed.contains_key(&i) {
                continue;
            }
            match c.get() {
                Ok(name) if name == first_backend[i] => {}
                Ok(name) => {
                    failed.insert(i, format!("answered by {name}, not {}", first_backend[i]));
                }
                Err(e) => {
                    failed.insert(i, e.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    failed
}

/// A `done` for [`exchange`]: true once `limit` has passed.
pub fn for_at_most(limit: Duration) -> impl FnMut() -> bool {
    let start = std::time::Instant::now();
    move || start.elapsed() >= limit
}

/// A `done` for [`exchange`]: true after `n` rounds.
pub fn rounds(n: usize) -> impl FnMut() -> bool {
    let mut done = 0;
    move || {
        done += 1;
        done > n
    }
}
