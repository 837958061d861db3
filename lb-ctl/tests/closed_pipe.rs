//! Output piped into a reader that stops early (`lb-ctl completions bash | head`,
//! `lb-ctl status --watch | head`) ends the command quietly, as it ends any Unix tool: no
//! panic message.

use std::{
    io::Read as _,
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
};

#[test]
fn a_reader_that_stops_early_ends_the_command_without_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-ctl"))
        // Longer than a pipe's buffer (64 KiB), so the writer meets the closed end.
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running lb-ctl completions");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("its stdout")
        .read_exact(&mut first)
        .expect("the script starts");
    // The read end is closed now: the rest of the script has nowhere to go.
    let out = child.wait_with_output().expect("lb-ctl ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}
