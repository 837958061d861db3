//! The BIRD 2 programs: finding `bird` and `birdc`, the files of one instance's BIRD, and
//! the `birdc` commands the daemon runs.

use std::{
    io,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use thiserror::Error;
use tokio::process::Command;

/// Longest a `birdc` command may take: BIRD answers its socket at once unless it hangs.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum BirdError {
    #[error(
        "`{0}` is not on PATH: BGP announcement runs BIRD 2; install the Debian package bird2 \
         (`apt-get install bird2`, or `cargo xtask setup`)"
    )]
    Missing(&'static str),
    #[error("running {program}: {source}")]
    Run {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`birdc {command}` gave no answer within {} s", BIRDC_TIMEOUT.as_secs())]
    Timeout { command: String },
    #[error("`birdc {command}` failed: {reply}")]
    Refused { command: String, reply: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The `bird` and `birdc` programs, found on PATH.
#[derive(Clone, Debug)]
pub struct Programs {
    pub bird: PathBuf,
    pub birdc: PathBuf,
}

impl Programs {
    pub fn find() -> Result<Self, BirdError> {
        Ok(Self {
            bird: on_path("bird").ok_or(BirdError::Missing("bird"))?,
            birdc: on_path("birdc").ok_or(BirdError::Missing("birdc"))?,
        })
    }
}

/// `name` in the folders of PATH, plus the sbin folders Debian installs BIRD to (they
/// are not on a normal user's PATH, and `lb-ctl status` may run as one).
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where one instance's BIRD keeps its config and control socket: in the state folder,
/// named after the instance, as the instance lock is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Files {
    pub fn new(state_dir: &Path, instance: &str) -> Self {
        Self {
            config: state_dir.join(format!("{instance}.bird.conf")),
            socket: state_dir.join(format!("{instance}.bird.ctl")),
        }
    }

    /// Replaces the config file in one step: BIRD never reads half a file, even when it
    /// restarts while the daemon writes.
    pub fn write_config(&self, text: &str) -> Result<(), BirdError> {
        let tmp = self.config.with_extension("conf.tmp");
        let write = || -> io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.config)
        };
        write().map_err(|source| BirdError::Write {
            path: self.config.clone(),
            source,
        })
    }
}

/// Runs `birdc -s <socket> <words>` and returns its reply; a failure exit is an error
/// carrying the reply (BIRD's message).
pub async fn birdc(birdc: &Path, socket: &Path, words: &[&str]) -> Result<String, BirdError> {
    let command = words.join(" ");
    let child = Command::new(birdc)
        .arg("-s")
        .arg(socket)
        .args(words)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(BIRDC_TIMEOUT, child).await {
        Err(_) => return Err(BirdError::Timeout { command }),
        Ok(Err(source)) => {
            return Err(BirdError::Run {
                program: birdc.display().to_string(),
                source,
            });
        }
        Ok(Ok(output)) => output,
    };
    let mut reply = String::from_utf8_lossy(&output.stdout).into_owned();
    reply.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(reply)
    } else {
        Err(BirdError::Refused {
            command,
            reply: reply
                .lines()
                .filter(|l| !l.starts_with("BIRD ") && !l.starts_with("Reading configuration"))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

/// Has BIRD re-read its config file. BIRD answers `Reconfigured` once done, or
/// `Reconfiguration in progress` while protocols restart; both mean the new routes are
/// being sent. A config BIRD cannot read is refused and BIRD keeps the old one.
pub async fn configure(birdc_path: &Path, socket: &Path) -> Result<(), BirdError> {
    let reply = birdc(birdc_path, socket, &["configure"]).await?;
    if reply.contains("Reconfigur") {
        Ok(())
    } else {
        Err(BirdError::Refused {
            command: "configure".to_owned(),
            reply,
        })
    }
}
