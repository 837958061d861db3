//! A handle on the `lb-test-backend` server (src/bin/lb-test-backend.rs) running inside a
//! namespace: start it, flip it between 200 and 503, read its counters.

use std::{
    collections::BTreeMap,
    env,
    ffi::OsString,
    fs,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{self, ExitStatus},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    bin_path,
    netns::{ChildGuard, Netns},
};

/// How long a backend gets to bind its sockets and report ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The line `lb-test-backend` prints on stdout once every socket is bound.
pub const READY_LINE: &str = "lb-test-backend ready";

/// Timeout of one exchange on the control socket.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

static CONTROL_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The backend's counters, as reported by its `stats` control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendStats {
    /// TCP connections accepted (on all HTTP listeners).
    pub connections: u64,
    /// TCP connections open right now.
    pub active: u64,
    /// HTTP requests answered (several per keep-alive connection).
    pub requests: u64,
    /// UDP datagrams received.
    pub udp: u64,
    /// The status every HTTP answer currently gets (200 or 503).
    pub status: u16,
}

/// A running `lb-test-backend`, stopped (SIGTERM) on drop.
///
/// It answers HTTP with `200 OK` and body `NAME\n` (plus `/slow?ms=N` and
/// `/stream?seconds=N`), and UDP datagrams with `NAME <payload>`; see the binary's
/// documentation. The handle talks to it over a Unix control socket, which lives in the
/// file system and is therefore reachable from the test process whatever the namespace.
#[derive(Debug)]
pub struct Backend {
    name: String,
    control: PathBuf,
    child: ChildGuard,
}

impl Backend {
    /// Starts `lb-test-backend --name NAME` inside `ns`, listening for HTTP on each of
    /// `http` and for UDP on each of `udp`, and waits until it is ready. Set
    /// `LB_TEST_VERBOSE=1` to make it log every connection to its (captured) stderr.
    pub fn start(ns: &Netns, name: &str, http: &[SocketAddr], udp: &[SocketAddr]) -> Backend {
        let control = env::temp_dir().join(format!(
            "lbt-{}-{}-{name}.sock",
            process::id(),
            CONTROL_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut args: Vec<OsString> = vec![
            bin_path("lb-test-backend").into(),
            "--name".into(),
            name.into(),
            "--control".into(),
            control.clone().into(),
        ];
        for addr in http {
            args.extend(["--http".into(), addr.to_string().into()]);
        }
        for addr in udp {
            args.extend(["--udp".into(), addr.to_string().into()]);
        }
        if env::var_os("LB_TEST_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0") {
            args.push("--verbose".into());
        }
        let child = ns.spawn(args);
        let backend = Backend {
            name: name.to_owned(),
            control,
            child,
        };
        backend.child.wait_for_output(READY_LINE, STARTUP_TIMEOUT);
        backend
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Path of the control socket (`status 503`, `status 200`, `stats`, `peers`, `reset`,
    /// `udp on|off`).
    pub fn control_path(&self) -> &Path {
        &self.control
    }

    /// The process, e.g. for its stderr or to send it a signal.
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// Sends one control command and returns the one-line answer; panics if the exchange
    /// fails or the backend answers `error …`.
    pub fn control(&self, command: &str) -> String {
        let stream = UnixStream::connect(&self.control).unwrap_or_else(|e| {
            self.control_failed(
                command,
                &format!("cannot connect {}: {e}", self.control.display()),
            )
        });
        stream
            .set_read_timeout(Some(CONTROL_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CONTROL_TIMEOUT)))
            .unwrap_or_else(|e| self.control_failed(command, &format!("cannot set timeouts: {e}")));
        (&stream)
            .write_all(format!("{command}\n").as_bytes())
            .unwrap_or_else(|e| self.control_failed(command, &format!("cannot be sent: {e}")));
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .unwrap_or_else(|e| self.control_failed(command, &format!("got no answer: {e}")));
        let line = line.trim_end().to_owned();
        if line.is_empty() || line.starts_with("error") {
            self.control_failed(command, &format!("was refused: {line:?}"));
        }
        line
    }

    fn control_failed(&self, command: &str, what: &str) -> ! {
        panic!(
            "backend {}: control command {command:?} {what}\n--- backend stderr ---\n{}",
            self.name,
            self.child.stderr().trim_end()
        )
    }

    /// Every HTTP answer becomes `503 Service Unavailable` (body `NAME 503\n`) for `503`,
    /// or `200 OK` again for `200`.
    pub fn set_status(&self, status: u16) {
        self.control(&format!("status {status}"));
    }

    /// Whether UDP datagrams get an answer (`false`: they are counted and dropped, which
    /// looks like a dead UDP service to a health check).
    pub fn set_udp(&self, answer: bool) {
        self.control(if answer { "udp on" } else { "udp off" });
    }

    pub fn stats(&self) -> BackendStats {
        let line = self.control("stats");
        let mut stats = BackendStats::default();
        for field in line.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let parse = || {
                value
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("backend {}: bad stats {line:?}: {e}", self.name))
            };
            match key {
                "connections" => stats.connections = parse(),
                "active" => stats.active = parse(),
                "requests" => stats.requests = parse(),
                "udp" => stats.udp = parse(),
                "status" => stats.status = parse() as u16,
                _ => {}
            }
        }
        stats
    }

    /// Source addresses seen (TCP connections and UDP datagrams) and how often each.
    pub fn peers(&self) -> BTreeMap<IpAddr, u64> {
        let line = self.control("peers");
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .map(|(ip, n)| {
                let parsed = ip.parse().ok().zip(n.parse().ok());
                parsed.unwrap_or_else(|| panic!("backend {}: bad peers {line:?}", self.name))
            })
            .collect()
    }

    /// Zeroes the counters and the peer list.
    pub fn reset_stats(&self) {
        self.control("reset");
    }

    /// Stops the backend (SIGTERM, SIGKILL after 2 s); it exits 0 on SIGTERM.
    pub fn stop(&mut self) -> ExitStatus {
        self.child.stop()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.child.stop();
        // The backend removes its socket on SIGTERM; this covers a SIGKILLed one.
        let _ = fs::remove_file(&self.control);
    }
}
