//! The state file: the overlay and the drains under way, written atomically.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Change;
use crate::config::Protocol;

/// The state file: the overlay, in order, and the drains under way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    pub instance: String,
    pub changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<DrainRecord>,
}

/// A backend being drained, with its deadline in wall-clock time (a restart can be on
/// another boot's monotonic clock only after a reboot, when nothing is pinned anyway).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRecord {
    pub vip: IpAddr,
    pub vip_port: u16,
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    /// Removed from its group (true) or drained in place (false).
    pub departing: bool,
    pub deadline_unix_ms: u64,
}

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt or truncated ({source}); it holds the runtime changes \
         made through the API. Fix or move it away to start from the config file alone"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} is version {found}, this lb-ctl reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("state file {path} belongs to instance {found}, not {expected}")]
    Instance {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "refusing to write state file {path}: {tmp} is a symbolic link; the daemon writes \
         the new state there before renaming it, and never through a link another user may \
         have planted. Remove the link"
    )]
    Symlink { path: PathBuf, tmp: PathBuf },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where an instance's state lives.
pub fn state_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.state.json"))
}

/// The overlay without the drains, for tests that look at the changes alone.
#[cfg(test)]
pub fn load_state(path: &Path, instance: &str) -> Result<Vec<Change>, StateError> {
    load_state_with_drains(path, instance).map(|(changes, _)| changes)
}

/// Reads the overlay and the drains under way; a missing file is an empty overlay (first
/// start).
pub fn load_state_with_drains(
    path: &Path,
    instance: &str,
) -> Result<(Vec<Change>, Vec<DrainRecord>), StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    if state.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: state.version,
        });
    }
    if state.instance != instance {
        return Err(StateError::Instance {
            path: path.to_owned(),
            found: state.instance,
            expected: instance.to_owned(),
        });
    }
    Ok((state.changes, state.drains))
}

/// `save_state_with_drains` without drains, for tests of the changes alone.
#[cfg(test)]
pub fn save_state(path: &Path, instance: &str, changes: &[Change]) -> Result<(), StateError> {
    save_state_with_drains(path, instance, changes, &[])
}

/// Writes the overlay and the drains under way atomically: a temporary file in the same
/// folder, fsync, rename over the old file, fsync the folder. A crash at any point leaves
/// the old or the new file.
pub fn save_state_with_drains(
    path: &Path,
    instance: &str,
    changes: &[Change],
    drains: &[DrainRecord],
) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let state = StateFile {
        version: STATE_VERSION,
        instance: instance.to_owned(),
        changes: changes.to_vec(),
        drains: drains.to_vec(),
    };
    let text = serde_json::to_string_pretty(&state).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    {
        // O_NOFOLLOW: a link planted at the temporary name would otherwise make the daemon
        // (root) write wherever it points.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::ELOOP) {
                    StateError::Symlink {
                        path: path.to_owned(),
                        tmp: tmp.clone(),
                    }
                } else {
                    err(source)
                }
            })?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::tests::ip;

    #[test]
    fn state_file_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-state-{}", std::process::id()));
        let path = state_path(&dir, "t");
        let changes = vec![
            Change::ServerSet {
                group: "default".into(),
                address: ip("198.18.1.10"),
                port: None,
                weight: 7,
            },
            Change::AclAdd {
                name: "office".into(),
                cidr: "198.18.0.0/24".into(),
                existing: false,
            },
            Change::AclAdd {
                name: "office".into(),
                cidr: "198.18.1.0/24".into(),
                existing: true,
            },
        ];
        assert_eq!(
            load_state(&path, "t").unwrap(),
            vec![],
            "no file yet: empty overlay"
        );
        save_state(&path, "t", &changes).unwrap();
        assert_eq!(load_state(&path, "t").unwrap(), changes);
        assert!(matches!(
            load_state(&path, "u"),
            Err(StateError::Instance { .. })
        ));
        // Truncated mid-write (what a crash without the rename dance would leave).
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = load_state(&path, "t").unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains("corrupt or truncated"), "{err}");
        fs::write(&path, "").unwrap();
        assert!(matches!(
            load_state(&path, "t"),
            Err(StateError::Corrupt { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_at_the_temporary_state_file_is_refused_not_followed() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-state-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = state_path(&dir, "t");
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").unwrap();
        let tmp = path.with_extension("json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let changes = vec![Change::AclAdd {
            name: "office".into(),
            cidr: "198.18.0.0/24".into(),
            existing: false,
        }];
        let err = save_state(&path, "t", &changes).unwrap_err();
        assert!(matches!(err, StateError::Symlink { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("is a symbolic link"), "{message}");
        assert!(message.contains(&tmp.display().to_string()), "{message}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!path.exists(), "nothing renamed into place");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A state file written before protocols and schedulers were typed reads, and is
    /// written back byte for byte.
    #[test]
    fn the_state_file_spelling_is_unchanged() {
        let text = r#"{
  "version": 1,
  "instance": "t",
  "changes": [
    {
      "change": "listener_add",
      "name": "dns",
      "protocol": "udp",
      "address": "198.19.0.100",
      "port": 53,
      "group": "api",
      "scheduler": "sch"
    },
    {
      "change": "listener_set",
      "name": "web",
      "scheduler": "wlc"
    }
  ],
  "drains": [
    {
      "vip": "198.19.0.100",
      "vip_port": 80,
      "protocol": "tcp",
      "address": "198.18.1.10",
      "port": 8080,
      "departing": true,
      "deadline_unix_ms": 1800000030000
    }
  ]
}"#;
        let state: StateFile = serde_json::from_str(text).unwrap();
        assert_eq!(state.drains[0].protocol, Protocol::Tcp);
        assert_eq!(serde_json::to_string_pretty(&state).unwrap(), text);
    }
}
