//! BGP announcement of the VIPs, through a BIRD 2 the daemon runs and supervises (never a
//! BGP implementation of our own).
//!
//! The daemon tells the [`Speaker`] which VIPs may be announced (those with a backend
//! that takes new flows) whenever health or config changes; the speaker renders BIRD's
//! config (`render`), keeps BIRD running with it (`supervisor`), and reads its sessions
//! back for `lb-ctl status` (`show`). BIRD's files live in the state folder:
//! `<instance>.bird.conf` and the control socket `<instance>.bird.ctl`.

mod bird;
mod render;
mod show;
mod supervisor;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use self::{
    bird::Files,
    render::{VIPS_PROTOCOL, VIPS6_PROTOCOL, has_ipv6_sessions, session_name},
    show::{parse_protocols, parse_routes},
    supervisor::Report,
};
pub use self::{
    bird::{BirdError, Programs},
    show::{Session, SessionState},
    supervisor::Wanted,
};
use crate::config::Bgp;

/// Longest wait for BIRD to confirm a withdrawal before a graceful stop goes on anyway.
const WITHDRAW_CONFIRM: Duration = Duration::from_secs(5);

/// Waits until `applied` shows BIRD running with `target`, or not running, at most
/// `limit`; false when it did not.
pub async fn confirm(
    mut applied: watch::Receiver<Option<Wanted>>,
    target: Wanted,
    limit: Duration,
) -> bool {
    let done = |a: &Option<Wanted>| a.as_ref().is_none_or(|a| *a == target);
    matches!(
        tokio::time::timeout(limit, applied.wait_for(done)).await,
        Ok(Ok(_))
    )
}

/// BGP as `lb-ctl status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BgpStatus {
    /// `lb-ctl drain-host` is in force: nothing is announced.
    pub host_drained: bool,
    /// VIPs with a backend that takes new flows (announced unless the host is drained).
    pub healthy_vips: Vec<IpAddr>,
    /// VIPs BIRD offers its neighbors right now (`show route protocol lb_vips`, and
    /// `lb_vips6` with an IPv6 session), IPv4 ones first.
    pub announced: Vec<IpAddr>,
    pub sessions: Vec<Session>,
    /// BIRD's process id; absent while it is not running.
    pub bird_pid: Option<u32>,
    /// Times BIRD was started again after dying.
    pub bird_restarts: u32,
    /// The last failure: starting BIRD, re-reading its config, or asking it for status.
    pub problem: Option<String>,
}

/// The daemon's handle on BGP announcement: one per daemon, BIRD running only while the
/// config has a `bgp` section.
pub struct Speaker {
    files: Files,
    programs: Option<Programs>,
    wanted: watch::Sender<Wanted>,
    applied: watch::Receiver<Option<Wanted>>,
    report: Arc<Mutex<Report>>,
    task: JoinHandle<()>,
    /// VIPs with a healthy backend, as last published.
    healthy: BTreeSet<IpAddr>,
    bgp: Option<Bgp>,
    host_drained: bool,
    /// Set by `stop`: nothing is published after it.
    stopped: bool,
}

impl Speaker {
    /// Starts the supervisor task. Fails when `bgp` is set and BIRD is not installed; a
    /// config that gains a `bgp` section later reports a missing BIRD in the status and
    /// the log.
    pub fn start(state_dir: &Path, instance: &str, bgp: Option<&Bgp>) -> Result<Self, BirdError> {
        let programs = match Programs::find() {
            Ok(p) => Some(p),
            Err(e) if bgp.is_some() => return Err(e),
            Err(_) => None,
        };
        let files = Files::new(state_dir, instance);
        let (wanted, wanted_rx) = watch::channel(Wanted::default());
        let (applied_tx, applied) = watch::channel(None);
        let report = Arc::new(Mutex::new(Report::default()));
        let task = tokio::spawn(
            supervisor::Supervisor {
                instance: instance.to_owned(),
                files: files.clone(),
                programs: programs.clone(),
                wanted: wanted_rx,
                applied: applied_tx,
                report: Arc::clone(&report),
            }
            .run(),
        );
        Ok(Self {
            files,
            programs,
            wanted,
            applied,
            report,
            task,
            healthy: BTreeSet::new(),
            bgp: None,
            host_drained: false,
            stopped: false,
        })
    }

    /// Tells BIRD the current section and healthy VIPs; nothing happens when neither
    /// changed.
    pub fn publish(&mut self, bgp: Option<&Bgp>, healthy: BTreeSet<IpAddr>) {
        self.bgp = bgp.cloned();
        self.healthy = healthy;
        self.send();
    }

    /// What BIRD is asked to run with now.
    pub fn wanted(&self) -> Wanted {
        Wanted {
            bgp: self.bgp.clone(),
            vips: if self.host_drained {
                BTreeSet::new()
            } else {
                self.healthy.clone()
            },
        }
    }

    fn send(&self) {
        if self.stopped {
            return;
        }
        let wanted = self.wanted();
        self.wanted.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }

    pub fn is_configured(&self) -> bool {
        self.bgp.is_some()
    }

    /// `lb-ctl drain-host`: withdraws every VIP (`drained`) or announces the healthy ones
    /// again. Forwarding is untouched.
    pub fn drain_host(&mut self, drained: bool) {
        self.host_drained = drained;
        self.send();
    }

    /// A receiver that sees what BIRD runs with, to wait on a withdrawal.
    pub fn applied(&self) -> watch::Receiver<Option<Wanted>> {
        self.applied.clone()
    }

    /// The graceful stop: withdraw everything, wait for BIRD to confirm and then
    /// `withdraw_wait` for the routers to move traffic away (this host still forwards it
    /// meanwhile), then stop BIRD.
    pub async fn stop(&mut self) {
        if let Some(bgp) = self.bgp.clone() {
            let had = self.applied.borrow().as_ref().map_or(0, |w| w.vips.len());
            self.host_drained = true;
            self.send();
            match self.confirmed(WITHDRAW_CONFIRM).await {
                true if had > 0 => {
                    info!(
                        "BGP: {had} VIP(s) withdrawn; waiting {} s (withdraw_wait) before \
                         stopping BIRD",
                        bgp.withdraw_wait
                    );
                    tokio::time::sleep(Duration::from_secs(bgp.withdraw_wait.into())).await;
                }
                true => {}
                false => warn!(
                    "BGP: BIRD did not confirm the withdrawal within {} s; stopping it (the \
                     sessions close, which withdraws the VIPs too)",
                    WITHDRAW_CONFIRM.as_secs()
                ),
            }
        }
        // Without a section the supervisor stops BIRD.
        self.bgp = None;
        self.send();
        self.stopped = true;
        if !self.confirmed(WITHDRAW_CONFIRM * 2).await {
            warn!("BGP: BIRD did not stop in time");
        }
        self.task.abort();
    }

    /// Waits until BIRD runs with what it was last asked for (or does not run), at most
    /// `limit`; false when it did not.
    pub async fn confirmed(&self, limit: Duration) -> bool {
        confirm(self.applied(), self.wanted(), limit).await
    }

    /// What `lb-ctl status` needs, taken at once so that BIRD is asked without holding
    /// the daemon's lock; `None` without a `bgp` section.
    pub fn status_probe(&self) -> Option<StatusProbe> {
        let bgp = self.bgp.clone()?;
        let report = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(StatusProbe {
            status: BgpStatus {
                host_drained: self.host_drained,
                healthy_vips: self.healthy.iter().copied().collect(),
                announced: Vec::new(),
                sessions: Vec::new(),
                bird_pid: report.pid,
                bird_restarts: report.restarts,
                problem: report.problem,
            },
            bgp,
            birdc: self.programs.as_ref().map(|p| p.birdc.clone()),
            socket: self.files.socket.clone(),
        })
    }
}

/// The status of BGP, with BIRD still to be asked for its sessions and routes.
pub struct StatusProbe {
    status: BgpStatus,
    bgp: Bgp,
    birdc: Option<std::path::PathBuf>,
    socket: std::path::PathBuf,
}

impl StatusProbe {
    /// VIPs with a healthy backend.
    pub fn healthy_vips(&self) -> usize {
        self.status.healthy_vips.len()
    }

    /// Asks BIRD (two `birdc` commands, three with an IPv6 session) when it runs.
    pub async fn run(self) -> BgpStatus {
        let mut status = self.status;
        let (Some(birdc), Some(_)) = (&self.birdc, status.bird_pid) else {
            return status;
        };
        let neighbor_of = |name: &str| {
            self.bgp
                .neighbors
                .iter()
                .map(|n| n.address)
                .find(|a| session_name(*a) == name)
        };
        let protocols = bird::birdc(birdc, &self.socket, &["show", "protocols"]).await;
        match protocols.map(|reply| parse_protocols(&reply, neighbor_of)) {
            Ok(Ok(sessions)) => status.sessions = sessions,
            Ok(Err(e)) => status.problem = Some(e.to_string()),
            Err(e) => status.problem = Some(e.to_string()),
        }
        let mut statics = vec![VIPS_PROTOCOL];
        if has_ipv6_sessions(&self.bgp) {
            statics.push(VIPS6_PROTOCOL);
        }
        let mut announced = Vec::new();
        for protocol in statics {
            match bird::birdc(
                birdc,
                &self.socket,
                &["show", "route", "protocol", protocol],
            )
            .await
            {
                Ok(reply) => announced.extend(parse_routes(&reply)),
                Err(e) => status.problem = Some(e.to_string()),
            }
        }
        status.announced = announced;
        status
    }
}
