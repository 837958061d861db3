//! The task that runs BIRD: starts it with the rendered config, re-reads the config into
//! it when the VIPs or the `bgp` section change, starts it again (with backoff) when it
//! dies, and stops it when the section goes away or the daemon stops.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::watch,
    time::Instant,
};
use tracing::{error, info, warn};

use super::{
    bird::{self, BirdError, Files, Programs},
    render::render,
};
use crate::config::Bgp;

/// First wait before starting a BIRD that died; doubled at each death in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A BIRD that ran this long before dying is restarted after `FIRST_BACKOFF` again.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long BIRD has to close its sessions (a Cease to each neighbor) when stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the daemon wants BIRD to do: the section to run, and the VIPs to announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub bgp: Option<Bgp>,
    pub vips: BTreeSet<IpAddr>,
}

/// What the supervisor last did, for `lb-ctl status`.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// BIRD's process id while it runs.
    pub pid: Option<u32>,
    /// Times BIRD was started again after dying.
    pub restarts: u32,
    /// The last failure (start, reconfigure, death), cleared by a success.
    pub problem: Option<String>,
}

pub(super) struct Supervisor {
    pub instance: String,
    pub files: Files,
    pub programs: Option<Programs>,
    pub wanted: watch::Receiver<Wanted>,
    /// What BIRD runs with: the `Wanted` it started with or last re-read; `None` while it
    /// does not run.
    pub applied: watch::Sender<Option<Wanted>>,
    pub report: Arc<Mutex<Report>>,
}

impl Supervisor {
    fn note(&self, update: impl FnOnce(&mut Report)) {
        // A poisoned lock only means a reader panicked mid-copy; the report is plain data.
        update(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn problem(&self, text: String) {
        self.note(|r| r.problem = Some(text));
    }

    fn applied(&self, wanted: Option<Wanted>) {
        self.applied.send_replace(wanted);
    }

    /// Runs until the daemon drops the sending side of `wanted`.
    pub async fn run(mut self) {
        self.stop_stale().await;
        let mut child: Option<(Child, Instant)> = None;
        // The config text BIRD runs with, and the `Wanted` it came from.
        let mut running: Option<(String, Wanted)> = None;
        let mut backoff = FIRST_BACKOFF;
        // When to try again after a death or a failed start or reconfigure.
        let mut retry_at: Option<Instant> = None;
        loop {
            let wanted = self.wanted.borrow_and_update().clone();
            let due = retry_at.is_none_or(|t| t <= Instant::now());
            match &wanted.bgp {
                None => {
                    if let Some((c, _)) = child.take() {
                        info!("bgp section gone: stopping BIRD");
                        self.stop(c).await;
                    }
                    running = None;
                    retry_at = None;
                    self.applied(None);
                }
                Some(bgp) if due => {
                    let text = render(&self.instance, bgp, &wanted.vips);
                    let changed = running.as_ref().is_none_or(|(t, _)| *t != text);
                    let outcome = match &child {
                        None => self.start(&text).await.map(|c| {
                            child = Some((c, Instant::now()));
                        }),
                        Some(_) if changed => self.reconfigure(&text).await,
                        Some(_) => Ok(()),
                    };
                    match outcome {
                        Ok(()) => {
                            if changed {
                                info!(
                                    "BGP: announcing {} VIP(s) to {} neighbor(s)",
                                    wanted.vips.len(),
                                    bgp.neighbors.len()
                                );
                            }
                            running = Some((text, wanted.clone()));
                            retry_at = None;
                            self.note(|r| r.problem = None);
                            self.applied(Some(wanted.clone()));
                        }
                        Err(e) => {
                            error!("BGP: {e}; trying again in {} s", backoff.as_secs());
                            self.problem(e.to_string());
                            running = None;
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                Some(_) => {}
            }
            let retry = retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                changed = self.wanted.changed() => {
                    if changed.is_err() {
                        if let Some((c, _)) = child.take() {
                            self.stop(c).await;
                        }
                        self.applied(None);
                        return;
                    }
                }
                exit = async { child.as_mut().expect("guarded").0.wait().await },
                    if child.is_some() =>
                {
                    let ran = child.take().map(|(_, since)| since.elapsed()).unwrap_or_default();
                    if ran >= STABLE_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                    let how = match exit {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    warn!(
                        "BIRD died ({how}) after {} s; starting it again in {} s",
                        ran.as_secs(),
                        backoff.as_secs()
                    );
                    self.note(|r| {
                        r.pid = None;
                        r.restarts += 1;
                        r.problem = Some(format!("BIRD died ({how})"));
                    });
                    self.applied(None);
                    running = None;
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                () = tokio::time::sleep_until(retry), if retry_at.is_some() => {
                    // `due` is true on the next pass.
                }
            }
        }
    }

    /// A BIRD left on this instance's control socket by a daemon that did not stop
    /// cleanly would hold the BGP port and keep announcing: it is shut down first.
    async fn stop_stale(&self) {
        let Some(programs) = &self.programs else {
            return;
        };
        if std::os::unix::net::UnixStream::connect(&self.files.socket).is_ok() {
            warn!(
                "a BIRD from an earlier run answers on {}: shutting it down",
                self.files.socket.display()
            );
            if let Err(e) = bird::birdc(&programs.birdc, &self.files.socket, &["down"]).await {
                warn!("shutting the earlier BIRD down: {e}");
            }
            // `down` answers before BIRD has closed its sockets.
            for _ in 0..50 {
                if std::os::unix::net::UnixStream::connect(&self.files.socket).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn start(&self, text: &str) -> Result<Child, BirdError> {
        let programs = self.programs.as_ref().ok_or(BirdError::Missing("bird"))?;
        self.files.write_config(text)?;
        let mut command = Command::new(&programs.bird);
        command
            .arg("-f")
            .arg("-c")
            .arg(&self.files.config)
            .arg("-s")
            .arg(&self.files.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: between fork and exec the closure makes one system call (prctl), which
        // is async-signal-safe, and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // BIRD must not outlive a daemon that dies without stopping it: it would
                // keep announcing VIPs no controller watches over.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().map_err(|source| BirdError::Run {
            program: programs.bird.display().to_string(),
            source,
        })?;
        let pid = child.id();
        info!(
            "BIRD started (pid {}), config {}, control socket {}",
            pid.unwrap_or_default(),
            self.files.config.display(),
            self.files.socket.display()
        );
        self.note(|r| r.pid = pid);
        // BIRD logs to stderr (`log stderr` in its config): its lines join the daemon's.
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    info!(target: "bird", "{line}");
                }
            });
        }
        Ok(child)
    }

    async fn reconfigure(&self, text: &str) -> Result<(), BirdError> {
        let programs = self.programs.as_ref().ok_or(BirdError::Missing("birdc"))?;
        self.files.write_config(text)?;
        bird::configure(&programs.birdc, &self.files.socket).await
    }

    /// SIGTERM, which BIRD answers by closing every session with a Cease; SIGKILL if it
    /// has not exited after `STOP_GRACE`.
    async fn stop(&self, mut child: Child) {
        if let Some(pid) = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => info!("BIRD stopped"),
            Err(_) => {
                warn!(
                    "BIRD did not stop within {} s: killed",
                    STOP_GRACE.as_secs()
                );
                let _ = child.kill().await;
            }
        }
        self.note(|r| r.pid = None);
    }
}
