//! `cargo xtask test`: the one command CI runs. Steps run in order and stop at the first
//! failure; a summary names each step's outcome and time, then the test totals.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use crate::{
    bootstrap::{self, Group},
    build, container, machine,
    process::{Cmd, fmt_duration, in_ci, is_root, lb_ctl_path, report, target_dir},
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip fmt and clippy (local iteration; refused in CI).
    #[arg(long)]
    quick: bool,
    /// Threads per test binary. Tests inside one binary run in parallel, so every test
    /// must set up its own namespaces and addresses.
    #[arg(long, value_name = "N", default_value_t = 2)]
    test_threads: usize,
    /// Test only these packages (default: the whole workspace).
    #[arg(short, long, value_name = "PACKAGE")]
    package: Vec<String>,
    /// Passed to the test binaries, e.g. a name filter: `cargo xtask test -- fixtures`.
    #[arg(last = true, value_name = "TEST_ARGS")]
    args: Vec<String>,
}

enum Outcome {
    Passed,
    Failed,
    Skipped(&'static str),
}

struct StepResult {
    name: &'static str,
    outcome: Outcome,
    elapsed: Duration,
}

/// Totals read from libtest's `test result:` lines.
#[derive(Default)]
struct Totals {
    seen: bool,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; …`
    fn read(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            return;
        };
        self.seen = true;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// The verifier budget test, run as a step of its own (`tests/tests/verifier_budget.rs`).
const BUDGET_TEST: &str = "every_program_verifies_within_budget";

pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    if in_ci() {
        if !is_root() {
            bail!(
                "CI=true but not root: in CI every test must run, including the privileged \
                 ones (XDP attach, network namespaces), so `cargo xtask test` runs as root there"
            );
        }
        if args.quick {
            bail!("CI=true: --quick would skip fmt and clippy; CI runs every step");
        }
    }
    if args.test_threads == 0 {
        bail!("--test-threads must be at least 1");
    }

    let started = Instant::now();
    let toolchain = bootstrap::ebpf_toolchain();
    let lb_ctl = lb_ctl_path(false);
    let mut totals = Totals::default();

    type Action<'a> = Box<dyn FnOnce(&mut Totals) -> anyhow::Result<()> + 'a>;
    let quick = args.quick.then_some("--quick");
    let budget_skipped = (!args.package.is_empty()
        && !args.package.iter().any(|p| p == "lb-tests"))
    .then_some("-p without lb-tests");
    let steps: Vec<(&'static str, Option<&'static str>, Action<'_>)> = vec![
        (
            "setup",
            None,
            // Browser and Container: the status-page test drives headless Chromium and the
            // container tests podman; in CI a missing tool fails its test rather than
            // skipping it. The machine report
            // heads every test log, so a run on a machine that differs shows how.
            Box::new(|_| {
                bootstrap::bootstrap(&[
                    Group::Build,
                    Group::Test,
                    Group::Browser,
                    Group::Container,
                ])?;
                machine::report()
            }),
        ),
        (
            "fmt",
            quick,
            Box::new(|_| Cmd::cargo().args(["fmt", "--all", "--", "--check"]).run()),
        ),
        (
            "clippy (host crates)",
            quick,
            Box::new(|_| {
                Cmd::cargo()
                    .args([
                        "clippy",
                        "--workspace",
                        "--exclude",
                        "lb-ebpf",
                        "--all-targets",
                    ])
                    .args(["--", "-D", "warnings"])
                    .run()
            }),
        ),
        (
            "clippy (eBPF crate)",
            quick,
            Box::new(|_| {
                // Its own target dir: the BPF target and another toolchain would otherwise
                // contend for the main target dir's lock and invalidate its fingerprints.
                // Twice: the shipped programs alone, and with the measuring and test-helper
                // programs the tests crate builds in (`testing`).
                for features in ["", "testing"] {
                    Cmd::cargo()
                        .env("RUSTC_BOOTSTRAP", "1")
                        .arg(format!("+{toolchain}"))
                        .args(["clippy", "-p", "lb-ebpf", "--target", "bpfel-unknown-none"])
                        .args(["-Z", "build-std=core", "--features", features])
                        .arg("--target-dir")
                        .arg(target_dir().join("ebpf-clippy"))
                        .args(["--", "-D", "warnings", "-C", "panic=abort"])
                        .run()?;
                }
                Ok(())
            }),
        ),
        ("build", None, Box::new(|_| build::cargo_build(false))),
        (
            "container image",
            None,
            // The container tests run the debug build in the image a deployment uses.
            Box::new(|_| container::build_test_image()),
        ),
        (
            "eBPF debug-log build",
            None,
            // The verifier budget test loads it: the budget holds for that build too.
            Box::new(|_| build::build_debug_log_object().map(|_| ())),
        ),
        (
            "verifier budget",
            budget_skipped,
            // On its own, with its output shown: every run's log then holds each program's
            // verified-instruction count, and a shrinking headroom shows before it fails.
            Box::new(|totals: &mut Totals| {
                Cmd::cargo()
                    .env(build::DEBUG_LOG_OBJECT_VAR, build::debug_log_object_path())
                    .args(["test", "-p", "lb-tests", "--test", "verifier_budget"])
                    .args(["--", "--nocapture"])
                    .run_tee(|line| totals.read(line))
            }),
        ),
        (
            "test",
            None,
            Box::new(|totals: &mut Totals| {
                let cmd = Cmd::cargo()
                    .env("LB_CTL_BIN", &lb_ctl)
                    .env(container::TEST_IMAGE_VAR, container::TEST_IMAGE)
                    .env(build::DEBUG_LOG_OBJECT_VAR, build::debug_log_object_path())
                    .arg("test");
                let cmd = if args.package.is_empty() {
                    cmd.args(["--workspace", "--exclude", "lb-ebpf"])
                } else {
                    args.package.iter().fold(cmd, |cmd, p| cmd.args(["-p", p]))
                };
                let cmd = cmd
                    .args(["--no-fail-fast", "--", "--test-threads"])
                    .arg(args.test_threads.to_string());
                let cmd = if budget_skipped.is_none() {
                    cmd.args(["--skip", BUDGET_TEST])
                } else {
                    cmd
                };
                cmd.args(&args.args).run_tee(|line| totals.read(line))
            }),
        ),
    ];

    let count = steps.len();
    let mut results = Vec::new();
    let mut failure = None;
    for (i, (name, skip, action)) in steps.into_iter().enumerate() {
        if let Some(reason) = skip {
            println!("==> [{}/{count}] {name}: skipped ({reason})", i + 1);
            results.push(StepResult {
                name,
                outcome: Outcome::Skipped(reason),
                elapsed: Duration::ZERO,
            });
            continue;
        }
        if failure.is_some() {
            results.push(StepResult {
                name,
                outcome: Outcome::Skipped("an earlier step failed"),
                elapsed: Duration::ZERO,
            });
            continue;
        }
        println!("==> [{}/{count}] {name}", i + 1);
        let step_started = Instant::now();
        let result = action(&mut totals);
        let elapsed = step_started.elapsed();
        let outcome = match result {
            Ok(()) => Outcome::Passed,
            Err(err) => {
                report(&format!("step `{name}` failed: "), &err);
                failure = Some(name);
                Outcome::Failed
            }
        };
        println!(
            "==> {name}: {} in {}",
            outcome_text(&outcome),
            fmt_duration(elapsed)
        );
        results.push(StepResult {
            name,
            outcome,
            elapsed,
        });
    }

    println!();
    println!("xtask test summary:");
    for r in &results {
        let time = match r.outcome {
            Outcome::Skipped(_) => String::new(),
            _ => fmt_duration(r.elapsed),
        };
        println!("  {:<22} {:<32} {time}", r.name, outcome_text(&r.outcome));
    }
    println!(
        "  {:<22} {:<32} {}",
        "total",
        "",
        fmt_duration(started.elapsed())
    );
    if totals.seen {
        // The last line: the totals over every test binary (ignored tests count as skipped).
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed, totals.failed, totals.ignored
        );
    }
    match failure {
        None => Ok(()),
        Some(name) => Err(anyhow!("`cargo xtask test` failed at step `{name}`")),
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Passed => "ok".to_owned(),
        Outcome::Failed => "FAILED".to_owned(),
        Outcome::Skipped(reason) => format!("skipped ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_add_up_every_test_binary() {
        let mut totals = Totals::default();
        totals.read("running 3 tests");
        totals.read(
            "test result: ok. 22 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 0.07s",
        );
        totals.read(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; \
             finished in 1.00s",
        );
        assert!(totals.seen);
        assert_eq!((totals.passed, totals.failed, totals.ignored), (25, 2, 1));
    }
}
