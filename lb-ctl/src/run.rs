//! The `lb-ctl` command: the daemon (`lb-ctl daemon`) or a command for it. It lives in
//! the library so that the modules only the command uses stay private to the crate.

use std::{process::ExitCode, time::Duration};

use crate::{
    api::exit,
    cli::{Cli, Command, DaemonArgs, LogFormat},
    client, controller, daemon,
};
use anyhow::Context as _;
use clap::Parser as _;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Joins a named network namespace before any thread exists, so every thread the daemon
/// starts lives there; the mount namespace (and so bpffs) stays the host's.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // The process is still single-threaded: every thread started later lives there.
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("joining {path}"))
}

fn run_daemon(socket: std::path::PathBuf, args: DaemonArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    if let Some(ns) = &args.netns {
        enter_netns(ns)?;
    }
    // The lock needs the instance name; a broken config is reported in full by start().
    let instance = crate::config::load(&args.config)
        .map(|c| c.instance)
        .map_err(|errors| controller::StartError::BadConfig {
            path: args.config.clone(),
            errors,
        })?;
    let _lock = daemon::lock_instance(&args.state_dir, &instance)?;
    let options = daemon::Options {
        controller: controller::Options {
            config_path: args.config,
            state_dir: args.state_dir,
            bpffs: args.bpffs,
        },
        socket,
        socket_group: args.socket_group,
        sweep_interval: Duration::from_secs(args.sweep_interval.max(1)),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon::run(options))
}

/// A command's output piped into `head` (or a pager that quits) ends as Unix tools end:
/// killed quietly by SIGPIPE. Rust ignores the signal, so a write to the closed pipe would
/// fail and `print!` panic. The daemon keeps it ignored: a client that goes away must
/// not end it.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions; the
    // command runs on this one thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Parses the command line and runs what it asks for.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Daemon(args) => match run_daemon(args.connect.or(&cli.socket), args) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("lb-ctl daemon: {e:#}");
                // A broken config is bad input (2), as for every other command.
                e.downcast_ref::<controller::StartError>()
                    .map_or(exit::FAILED, controller::StartError::exit_code)
            }
        },
        command => {
            restore_sigpipe();
            client::run(&cli.socket, command)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
