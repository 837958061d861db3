//! The Prometheus alert rules in `deploy/prometheus/`: `promtool check rules` accepts them,
//! and `promtool test rules` runs their unit tests (each alert fires on the series that
//! should raise it, with its labels and text, and not on a healthy instance). promtool
//! comes with Debian's `prometheus` package, which `cargo xtask test` installs. That the
//! rules name only exported metrics is checked against a running daemon in
//! `e2e_metrics.rs`.

use std::{path::PathBuf, process::Command};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (`cargo xtask setup` does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool {}:\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn the_alert_rules_are_valid() {
    let text = promtool(&["check", "rules", "lb-alerts.yml"]);
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
}

#[test]
fn each_alert_fires_where_it_should_and_only_there() {
    let text = promtool(&["test", "rules", "lb-alerts.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}
