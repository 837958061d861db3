//! `cargo xtask run` with no config: the demo topology. The demo itself is the `lb-demo`
//! binary of the tests crate, which owns the namespace and backend helpers the tests use:
//! it builds a client, the load balancer, a switch and three backends in network
//! namespaces, starts `lb-ctl daemon` on it and prints the command that sends a request
//! through the VIP. Ctrl-C removes everything.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};

use crate::process::{Cmd, is_root};

/// What the demo gets from `run`: the freshly built binaries and the user's extra
/// daemon arguments.
pub struct Demo {
    /// `target/<profile>/lb-ctl`.
    pub lb_ctl: PathBuf,
    /// Arguments after `--`, for `lb-ctl daemon` (not used by the demo).
    pub daemon_args: Vec<String>,
}

/// Replaces this process with `lb-demo`, so Ctrl-C reaches it directly.
pub fn run(demo: &Demo) -> anyhow::Result<ExitCode> {
    if !demo.daemon_args.is_empty() {
        bail!("the demo takes no daemon arguments; give --config FILE to run your own config");
    }
    if !is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run as root");
    }
    let dir = demo
        .lb_ctl
        .parent()
        .context("lb-ctl has no parent folder")?;
    let cmd = Cmd::new(dir.join("lb-demo")).env("LB_CTL_BIN", &demo.lb_ctl);
    let text = cmd.text();
    println!("$ {text}");
    let err = cmd.into_command().exec();
    Err(err).with_context(|| format!("could not start `{text}`"))
}
