//! An `lb-ctl daemon` run by a test inside a topology's LB namespace, and the `lb-ctl`
//! CLI pointed at it. Drop stops the daemon and tears its pinned data plane down, so a
//! test leaves nothing in bpffs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
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

impl LbDaemon {
    /// Writes `config` (YAML) and starts the daemon in `ns`; returns once its control
    /// socket answers `status`. Panics with the daemon's output if it does not start.
    pub fn start(ns: &Netns, instance: &str, config: &str) -> LbDaemon {
        let dir = TempDir::new("lbd");
        let mut daemon = LbDaemon {
            child: None,
            ns_name: ns.name().to_owned(),
            dir,
            instance: instance.to_owned(),
        };
        daemon.write_config(config);
        daemon.spawn();
        daemon
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

    fn spawn(&mut self) {
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
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctl(&["status", "--json"]).status.success() {
                return;
            }
            let child = self.child.as_mut().expect("daemon started");
            if let Some(status) = child.try_status() {
                panic!(
                    "lb-ctl daemon exited with {status} before it was ready:\n{}",
                    child.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "lb-ctl daemon not ready after 30 s:\n{}",
                child.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
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

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.child
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
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
        self.spawn();
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
