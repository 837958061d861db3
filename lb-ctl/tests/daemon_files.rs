//! The daemon's own files in the state folder are never opened through a symbolic link:
//! it runs as root, and a link planted there would make it write wherever it points.

use std::{fs, path::PathBuf, process::Command, time::Duration};

/// A fresh folder of this test's own under the system's temporary folder.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-ctl-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn daemon_refuses_a_symlinked_instance_lock_and_does_not_write_through_it() {
    let dir = scratch("locklink");
    let state = dir.join("state");
    fs::create_dir_all(&state).unwrap();
    let config = dir.join("lb.yaml");
    // The daemon stops at the lock, before it loads anything; should it get further,
    // the missing interface and a bpffs folder that is not one stop it there.
    fs::write(&config, "instance: locklink\ninterfaces: [lbnosuch0]\n").unwrap();
    let victim = dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let lock = state.join("locklink.lock");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-ctl"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--bpffs")
        .arg(dir.join("not-bpffs"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the refusal is immediate; a daemon that got past it is killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon ran: {stderr}");
    assert!(
        stderr.contains(&format!(
            "refusing the instance lock {}: it is a symbolic link",
            lock.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the daemon wrote through the link"
    );
    fs::remove_dir_all(&dir).unwrap();
}
