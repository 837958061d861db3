//! `cargo xtask run`: set up, build, then run the daemon in the foreground, on the
//! interfaces a config names, or on the demo topology when no config is given.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};

use crate::{
    bootstrap::{self, Group},
    build,
    demo::{self, Demo},
    process::{Cmd, is_root, lb_ctl_path},
};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// An interface the config attaches to (checked to exist; needs --config).
    #[arg(long, value_name = "IFACE")]
    iface: Vec<String>,
    /// The daemon's config file; without it, the demo topology runs.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra arguments for `lb-ctl daemon`.
    #[arg(last = true, value_name = "DAEMON_ARGS")]
    args: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    bootstrap::bootstrap(&[Group::Build, Group::Test])?;
    build::cargo_build(args.release)?;
    let lb_ctl = lb_ctl_path(args.release);

    let Some(config) = args.config else {
        if !args.iface.is_empty() {
            bail!(
                "--iface needs --config: the config file names the listeners, the backends and \
                 the `interfaces` to attach to"
            );
        }
        return demo::run(&Demo {
            lb_ctl,
            daemon_args: args.args,
        });
    };

    // Relative to where the user ran cargo, not to the workspace root.
    let config = std::env::current_dir()
        .context("current directory")?
        .join(config);
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading the config {}", config.display()))?;
    for iface in &args.iface {
        if !std::path::Path::new("/sys/class/net").join(iface).exists() {
            bail!("--iface {iface}: no such network interface");
        }
        if !text.contains(iface.as_str()) {
            eprintln!(
                "xtask: warning: {} does not mention {iface}; the daemon attaches to the \
                 config's `interfaces`",
                config.display()
            );
        }
    }
    if !is_root() {
        bail!("lb-ctl daemon loads and attaches an XDP program: run as root");
    }

    let cmd = Cmd::new(&lb_ctl)
        .args(["daemon", "--config"])
        .arg(&config)
        .args(&args.args);
    // Replace this process, so Ctrl-C and exit codes reach and come from the daemon.
    let text = cmd.text();
    println!("$ {text}");
    let err = cmd.into_command().exec();
    Err(err).with_context(|| format!("could not start `{text}`"))
}
