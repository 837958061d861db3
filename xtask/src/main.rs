//! Project tasks, run as `cargo xtask <command>`: bootstrap a machine, build, test, run.
//!
//! xtask builds with the default stable toolchain and depends on no other crate of the
//! workspace: it is what installs the toolchain those crates need.

mod bench;
mod bootstrap;
mod build;
mod container;
mod demo;
mod fuzz;
mod machine;
mod process;
mod run;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bootstrap::Group;

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Project tasks of the XDP load balancer",
    after_help = "The eBPF toolchain is `deb-web` (Debian's rustc) unless LB_EBPF_TOOLCHAIN names \
                  another rustup toolchain with rust-src. See docs/development.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (Debian packages, the deb-web toolchain link,
    /// bpf-linker, the bpffs mount); idempotent. build, test and run do this first. Then
    /// report the kernel and toolchain versions and check the kernel features.
    Setup {
        /// Also install an optional group's packages.
        #[arg(long = "with", value_enum, value_name = "GROUP")]
        with: Vec<Group>,
    },
    /// Set up, then build the workspace: target/<profile>/lb-ctl carries the XDP object.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// What CI runs: setup, fmt, clippy (host and eBPF), build, then every test.
    Test(test::TestArgs),
    /// Set up, build, then run the daemon with a config (or the demo topology).
    Run(run::RunArgs),
    /// Set up (with the nftables and HAProxy baselines), build release, run the benchmark
    /// suite: prints the table and writes docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// Set up (with podman and debootstrap), build release, then build the container image
    /// from deploy/Containerfile and print its name.
    Container(container::ContainerArgs),
    /// Build release and run the long packet fuzzing (1,000,000 frames by default)
    /// against the model of the packet policy.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup { with } => {
            let mut groups = vec![Group::Build, Group::Test];
            groups.extend(with);
            bootstrap::bootstrap(&groups)
                .and_then(|()| machine::report())
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Build { release } => build::build(release).map(|_| ExitCode::SUCCESS),
        Command::Test(args) => test::test(&args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::bench(&args).map(|()| ExitCode::SUCCESS),
        Command::Fuzz(args) => fuzz::fuzz(&args).map(|()| ExitCode::SUCCESS),
        Command::Container(args) => container::container(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        process::report("error: ", &err);
        ExitCode::FAILURE
    })
}
