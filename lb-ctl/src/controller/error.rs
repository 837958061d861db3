//! Why an operation of the controller did not happen, and the exit code the CLI ends with
//! for it (`api::exit`): bad input is refused (2), a failure of the daemon or the data
//! plane is a failure (1).

use std::path::PathBuf;

use thiserror::Error;

use crate::{
    api::{Response, exit},
    config::ConfigErrors,
    dataplane::DataPlaneError,
    overlay::{Refusal, StateError},
    plan::PlanError,
};

/// Why the controller did not start: `lb-ctl daemon` ends with `exit_code`.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("{} has {} error(s):\n{errors}", .path.display(), .errors.len())]
    BadConfig { path: PathBuf, errors: ConfigErrors },
    /// The state file (runtime changes and drains) could not be read or rewritten.
    #[error(transparent)]
    State(#[from] StateError),
    /// Reading the pinned maps to re-adopt them, or adding a redirect port, failed.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    /// Loading or attaching the program, or filling its maps, failed. Transparent, so
    /// that the daemon's `{:#}` shows the chain of causes once.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl StartError {
    /// The exit code of `lb-ctl daemon` for this error.
    pub const fn exit_code(&self) -> i32 {
        match self {
            Self::BadConfig { .. } => exit::REFUSED,
            Self::State(_) | Self::DataPlane(_) | Self::Failed(_) => exit::FAILED,
        }
    }
}

#[derive(Debug, Error)]
pub enum ControllerError {
    /// A reload found the config file broken.
    #[error("{} has {} error(s); nothing was changed:\n{errors}", .path.display(), .errors.len())]
    BadConfig { path: PathBuf, errors: ConfigErrors },
    /// A change breaks one of the overlay's rules.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A change leaves a config that does not validate.
    #[error(transparent)]
    Invalid(ConfigErrors),
    /// A change breaks a rule between two successive states.
    #[error("{}", .0.join("\n"))]
    BreaksRules(Vec<String>),
    /// A reloaded config breaks a rule between two successive states.
    #[error("the new config breaks these rules; nothing was changed:\n{}", .0.join("\n"))]
    ReloadBreaksRules(Vec<String>),
    /// The ids a change needs are not there.
    #[error(transparent)]
    NoIds(PlanError),
    /// The ids a reloaded config needs are not there.
    #[error("{0}; nothing was changed")]
    ReloadNoIds(PlanError),
    #[error(
        "the config names instance {found} but this daemon runs {running}; nothing was \
         changed (an instance is renamed by a restart)"
    )]
    InstanceRenamed { found: String, running: String },
    /// A change's new Maglev tables do not fit the shared array.
    #[error("{0}; nothing was changed")]
    NoMaglevRoom(crate::reconcile::NoMaglevRoom),
    #[error(
        "flow_table_size, max_listeners, max_backends and maglev_slots size the pinned maps; \
         changing them needs `lb-ctl teardown` and a restart; nothing was changed"
    )]
    MapSizesChanged,
    #[error(
        "forwarding changes from {from} to {to}: every established connection would break \
         (its backend would get packets it cannot match); nothing was changed. Switch at a \
         quiet time: stop the daemon, `lb-ctl teardown`, start it with the new config"
    )]
    ForwardingChanged { from: String, to: String },
    /// Drain: no such server serves a listener.
    #[error(
        "no server {server} in group {group} serves a listener; `lb-ctl group show {group}` \
         lists its servers"
    )]
    NoSuchServer { group: String, server: String },
    /// Undrain: nothing to end.
    #[error("no drain of {address} in group {group} to end")]
    NotDraining {
        group: String,
        address: std::net::IpAddr,
    },
    /// The state file could not be written: the change was not made.
    #[error(transparent)]
    State(#[from] StateError),
    /// Reading or writing a map failed.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    /// Applying a change to the maps (or another step around them) failed.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
    /// Applying an accepted change failed; the previous state was put back.
    #[error("{change}: {source:#}")]
    ChangeFailed {
        change: String,
        source: anyhow::Error,
    },
}

impl ControllerError {
    /// The exit code of `lb-ctl` for this error.
    pub const fn exit_code(&self) -> i32 {
        match self {
            Self::BadConfig { .. }
            | Self::Refused(_)
            | Self::Invalid(_)
            | Self::BreaksRules(_)
            | Self::ReloadBreaksRules(_)
            | Self::NoIds(_)
            | Self::ReloadNoIds(_)
            | Self::NoMaglevRoom(_)
            | Self::InstanceRenamed { .. }
            | Self::MapSizesChanged
            | Self::ForwardingChanged { .. }
            | Self::NoSuchServer { .. }
            | Self::NotDraining { .. } => exit::REFUSED,
            Self::State(_) | Self::DataPlane(_) | Self::Failed(_) | Self::ChangeFailed { .. } => {
                exit::FAILED
            }
        }
    }
}

impl From<ControllerError> for Response {
    fn from(e: ControllerError) -> Self {
        Self::Error {
            message: e.to_string(),
            code: e.exit_code(),
        }
    }
}

/// What a successful operation says: a message for the operator and data for scripts.
#[derive(Debug)]
pub struct Done {
    pub message: String,
    pub data: serde_json::Value,
}

impl Done {
    pub fn new(message: impl Into<String>, data: impl serde::Serialize) -> Self {
        Self {
            message: message.into(),
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl From<Done> for Response {
    fn from(done: Done) -> Self {
        Self::Ok {
            message: done.message,
            data: done.data,
        }
    }
}

/// The API's answer to an operation.
pub fn respond(result: Result<Done, ControllerError>) -> Response {
    result.map_or_else(Response::from, Response::from)
}
