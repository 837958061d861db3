//! An `lb-ctl daemon` run by a test inside a topology's LB namespace, and the `lb-ctl`
//! CLI pointed at it. Drop stops the daemon and tears its pinned data plane down, so a
//! test leaves nothing in bpffs.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    thread,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Netns, bin_path, client::TempDir};

/// A running (or stopped, between restarts) daemon of one instance.
pub struct LbDaemon {
    child: Option<ChildGuard>,
    ns_name: String,
    dir: TempDir,
    instance: String,
}

/// Lines of the daemon's log a failed start shows: its error message fits easily, and a
/// log of megabytes does not flood the terminal.
const SHOWN_LINES: usize = 40;

/// A daemon that did not become ready: how it ended and the end of its log.
#[derive(Debug)]
pub struct StartError {
    /// Its exit status; `None` when it was still not ready at the deadline (it is stopped).
    pub status: Option<ExitStatus>,
    /// Its last words: from its final `lb-ctl daemon: ` error to the end, or the last
    /// lines of its log (at most 40 lines either way).
    pub message: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "lb-ctl daemon exited with {status} before it was ready:")?,
            None => write!(f, "lb-ctl daemon not ready after 30 s; the end of its log:")?,
        }
        write!(f, "\n{}", self.message)
    }
}

impl std::error::Error for StartError {}

/// The part of a daemon's log worth showing when it failed: `lb-ctl daemon` ends with one
/// `lb-ctl daemon: <error>` message, possibly of several lines, after its tracing output.
pub fn last_words(log: &str) -> String {
    let lines: Vec<&str> = log.trim_end().lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("lb-ctl daemon: "))
        .unwrap_or(0)
        .max(lines.len().saturating_sub(SHOWN_LINES));
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[{start} earlier line(s) of its log not shown]\n"));
    }
    out.push_str(&lines[start..].join("\n"));
    out
}

impl LbDaemon {
    /// Writes `config` (YAML) and starts the daemon in `ns`; returns once its control
    /// socket answers `status`. Panics with the end of the daemon's log if it does not
    /// start.
    pub fn start(ns: &Netns, instance: &str, config: &str) -> LbDaemon {
        Self::try_start(ns, instance, config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`LbDaemon::start`], returning why it did not start instead of panicking; its pins
    /// are torn down then.
    pub fn try_start(ns: &Netns, instance: &str, config: &str) -> Result<LbDaemon, StartError> {
        let dir = TempDir::new("lbd");
        let mut daemon = LbDaemon {
            child: None,
            ns_name: ns.name().to_owned(),
            dir,
            instance: instance.to_owned(),
        };
        daemon.write_config(config);
        daemon.spawn()?;
        Ok(daemon)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("lb.yaml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Replaces the config file (for reload tests).
    pub fn write_config(&self, config: &str) {
        fs::write(self.config_path(), config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config_path().display()));
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let mut cmd = Command::new(bin_path("lb-ctl"));
        cmd.env("LB_LOG", "info")
            .arg("--socket")
            .arg(self.socket())
            .arg("daemon")
            .arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--netns")
            .arg(&self.ns_name);
        let child = ChildGuard::spawn(cmd);
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctl(&["status", "--json"]).status.success() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("daemon started");
            if let Some(status) = child.try_status() {
                // Its last message may still be in the pipe.
                let log = child
                    .wait_output(Duration::from_secs(1))
                    .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
                    .unwrap_or_else(|| child.stderr());
                self.child = None;
                let mut message = last_words(&log);
                if self.has_verifier_log() {
                    // The message names the log file in the state folder.
                    self.dir.keep();
                    message.push_str(&format!(
                        "\n[the daemon's folder {} is kept]",
                        self.dir.path().display()
                    ));
                }
                return Err(StartError {
                    status: Some(status),
                    message,
                });
            }
            if Instant::now() >= deadline {
                let message = last_words(&child.stderr());
                self.stop();
                return Err(StartError {
                    status: None,
                    message,
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the daemon left a rejected program's verifier log in its state folder.
    fn has_verifier_log(&self) -> bool {
        fs::read_dir(self.state_dir()).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("verifier-"))
        })
    }

    /// Runs `lb-ctl --socket S ARGS…` on the host.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin_path("lb-ctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running lb-ctl {args:?}: {e}"))
    }

    /// Like `ctl`, panicking with the output unless it succeeds; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "lb-ctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `lb-ctl status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let text = self.ctl_ok(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON: {e}\n{text}"))
    }

    /// `lb-ctl stats --json`.
    pub fn stats(&self) -> serde_json::Value {
        let text = self.ctl_ok(&["stats", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON: {e}\n{text}"))
    }

    /// The data plane's counter of `reason` (`encapsulated`, `drop_no_backend`, …).
    pub fn reason_count(&self, reason: &str) -> u64 {
        self.stats()["reasons"][reason].as_u64().unwrap_or(0)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.child
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    /// The daemon's process, to signal or wait for it by hand; `None` once stopped.
    pub fn child(&mut self) -> Option<&mut ChildGuard> {
        self.child.as_mut()
    }

    /// SIGKILL: the daemon dies without any cleanup, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGKILL);
            child.wait_timeout(Duration::from_secs(5));
        }
    }

    /// SIGTERM and wait: a clean stop (the data plane stays pinned).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
    }

    /// Starts the daemon again with the same config, state and socket.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the daemon first");
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }

    /// `lb-ctl teardown`: removes the pinned data plane.
    pub fn teardown(&self) -> Output {
        self.ctl(&["teardown", "--instance", &self.instance])
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf").join(&self.instance)
    }
}

impl Drop for LbDaemon {
    fn drop(&mut self) {
        self.stop();
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::last_words;

    #[test]
    fn a_failed_daemon_shows_its_message_not_its_whole_log() {
        let mut log = String::new();
        for i in 0..5_000 {
            log.push_str(&format!("2026-01-01T00:00:00Z  INFO lb_ctl: line {i}\n"));
        }
        log.push_str("lb-ctl daemon: the kernel rejected the XDP program lb_xdp: oops\n");
        log.push_str("  the verifier processed 12 instructions\n  what to try: this\n");
        let shown = last_words(&log);
        assert_eq!(
            shown,
            "[5000 earlier line(s) of its log not shown]\n\
             lb-ctl daemon: the kernel rejected the XDP program lb_xdp: oops\n  \
             the verifier processed 12 instructions\n  what to try: this"
        );
    }

    #[test]
    fn without_a_final_message_the_last_lines_are_shown() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let shown = last_words(&log);
        assert_eq!(shown.lines().count(), 41);
        assert!(shown.starts_with("[60 earlier line(s)"), "{shown}");
        assert!(shown.ends_with("line 99"), "{shown}");
        assert_eq!(last_words("short\nlog\n"), "short\nlog");
    }
}
