//! The privileged container, run the way docs/operations.md tells operators to run it:
//! podman with runc, the host's bpffs, the config and state folders as volumes, and the
//! network namespace of the LB host (here the LB namespace of a test topology, where an
//! operator would give `--network host`). The image is the one `cargo xtask test` builds
//! from deploy/Containerfile with the debug binary (`LB_TEST_IMAGE`).
//!
//! What users see is asserted: which backend answered, how many requests failed across a
//! container replacement, what `podman exec … lb-ctl status` prints, what a SIGHUP sent
//! through `podman kill` changes.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Resource, getrlimit};

use lb_tests::{
    BulkOptions, Tally, Topology, TopologyOptions, VIP, all_answered, bin_path,
    client::TempDir,
    privilege::in_ci,
    require_root_and_bpf,
    steady::{Steady, SteadyOptions, merged},
    udp_many,
};

const IMAGE_VAR: &str = "LB_TEST_IMAGE";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const B1: &str = "198.18.1.11";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running podman {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The image to test, or `None` (the test is skipped) outside CI when there is none.
fn test_image(test_name: &str) -> Option<String> {
    let problem = match std::env::var(IMAGE_VAR) {
        Err(_) => Some(format!(
            "{IMAGE_VAR} names no image (`cargo xtask test` builds one and sets it)"
        )),
        Ok(image) => match Command::new("podman")
            .args(["image", "exists", &image])
            .status()
        {
            Ok(s) if s.success() => return Some(image),
            Ok(_) => Some(format!(
                "no image {image} (`cargo xtask container --debug`)"
            )),
            Err(e) => Some(format!("podman is not available: {e}")),
        },
    };
    let why = problem.expect("a problem when no image was returned");
    assert!(
        !in_ci(),
        "{test_name}: cannot run ({why}), and skipping is not allowed in CI (CI=true)"
    );
    eprintln!("SKIP: {test_name}: {why}");
    None
}

/// Container limits at most the host's hard limits: podman's defaults may exceed them, and
/// then the container does not start ("setrlimit: operation not permitted"). 4,096
/// processes are plenty for the daemon's few threads; more failed on this machine kind
/// above 32,768 whatever the hard limit said.
fn ulimits() -> [String; 2] {
    let hard = |r| getrlimit(r).maximum.unwrap_or(u64::MAX);
    [
        format!("nofile={0}:{0}", hard(Resource::Nofile).min(65_536)),
        format!("nproc={0}:{0}", hard(Resource::Nproc).min(4_096)),
    ]
}

/// One daemon container of the test; removed (forcibly) when dropped.
struct Container {
    name: String,
}

impl Container {
    /// `podman run -d` of the daemon as docs/operations.md shows it, in `netns`.
    fn run(image: &str, name: &str, netns: &Path, config_dir: &Path, state_dir: &Path) -> Self {
        let [nofile, nproc] = ulimits();
        let network = format!("ns:{}", netns.display());
        let config = format!("{}:/etc/lb-ctl:ro", config_dir.display());
        let state = format!("{}:/var/lib/lb-ctl", state_dir.display());
        let out = podman(&[
            "run",
            "-d",
            "--name",
            name,
            "--runtime",
            "runc",
            "--ulimit",
            &nofile,
            "--ulimit",
            &nproc,
            "--privileged",
            "--network",
            &network,
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            &config,
            "-v",
            &state,
            "--env",
            "LB_LOG=info",
            image,
        ]);
        // From here on the container exists (podman may create it and then fail to start
        // it): the guard removes it whatever happens next.
        let container = Container {
            name: name.to_owned(),
        };
        assert!(
            out.status.success(),
            "podman run failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        container.wait_ready();
        container
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str(), "lb-ctl"];
        all.extend_from_slice(args);
        podman(&all)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "podman exec {} lb-ctl {args:?} failed ({}):\nstdout: {}\nstderr: {}\nlog:\n{}",
            self.name,
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
        text(&out.stdout)
    }

    fn status(&self) -> serde_json::Value {
        let out = self.exec_ok(&["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}\n{out}"))
    }

    fn log(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    /// Until the daemon's control socket answers, at most 30 s.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.exec(&["status", "--json"]).status.success() {
                return;
            }
            let state = podman(&["inspect", "--format", "{{.State.Running}}", &self.name]);
            assert!(
                text(&state.stdout).trim() == "true",
                "the container {} stopped before its daemon was ready; its log:\n{}",
                self.name,
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "the daemon in {} is not ready after 30 s; its log:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `podman stop` (SIGTERM, as an upgrade does) and `podman rm`.
    fn stop_and_remove(self) {
        let out = podman(&["stop", "--time", "20", &self.name]);
        assert!(
            out.status.success(),
            "podman stop {}: {}",
            self.name,
            text(&out.stderr)
        );
        // Drop removes it.
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "5", &self.name]);
    }
}

/// Removes the instance's pinned data plane (which outlives every container) at the end.
struct Pins(String);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(bin_path("lb-ctl"))
            .args(["teardown", "--instance", &self.0])
            .output();
    }
}

fn config(topo: &Topology, b1_weight: u32) -> String {
    format!(
        "instance: {prefix}i\ninterfaces: [{client_if}, {backend_if}]\nflow_table_size: 65536\n\
         max_listeners: 8\nmax_backends: 64\ndefault_server_group:\n  servers:\n    \
         - {{ address: {B1}, weight: {b1_weight} }}\n    - {{ address: 198.18.1.12 }}\n\
         listeners:\n  \
         - {{ name: web, protocol: tcp, address: {VIP}, port: 80, backend_port: {HTTP_PORT} }}\n  \
         - {{ name: dns, protocol: udp, address: {VIP}, port: 53, backend_port: {UDP_PORT} }}\n",
        prefix = topo.prefix(),
        client_if = topo.lb_client_if(),
        backend_if = topo.lb_backend_if(),
    )
}

/// Serves TCP and UDP from the container; `podman exec … lb-ctl status` works; the
/// container is replaced (stopped, a new one started from the same image, as an upgrade
/// does) under steady traffic without one failed request; `podman kill --signal HUP`
/// reloads the config.
#[test]
fn container_serves_is_replaced_under_traffic_and_reloads_on_sighup() {
    const NAME: &str = "container_serves_is_replaced_under_traffic_and_reloads_on_sighup";
    if !require_root_and_bpf(NAME) {
        return;
    }
    let Some(image) = test_image(NAME) else {
        return;
    };
    let topo = Topology::build("ctr", 2, TopologyOptions::default());
    topo.pin_neighbors();
    let _backends = topo.start_backends(Some(HTTP_PORT), Some(UDP_PORT));
    let config_dir = TempDir::new("ctr-etc");
    let state_dir = TempDir::new("ctr-state");
    std::fs::write(config_dir.path().join("lb.yaml"), config(&topo, 100)).expect("config");
    let _pins = Pins(format!("{}i", topo.prefix()));
    let name = |n: u32| format!("{}-lb{n}", topo.prefix());
    let run = |n: u32| {
        Container::run(
            &image,
            &name(n),
            &topo.lb().path(),
            config_dir.path(),
            state_dir.path(),
        )
    };

    let first = run(1);
    let web = format!("http://{VIP}:80/");
    let tcp = all_answered(topo.client(), &web, 40, None, 4, "TCP through the VIP");
    assert!(
        tcp.count("b1") > 0 && tcp.count("b2") > 0,
        "both backends answer TCP: {tcp}"
    );
    let dns: SocketAddr = (VIP, 53).into();
    let udp = Tally::of(&udp_many(
        topo.client(),
        dns,
        "ping",
        20,
        None,
        Duration::from_secs(2),
    ));
    assert_eq!(udp.failed(), 0, "UDP through the VIP: {udp}");
    assert!(
        udp.count("b1") > 0 && udp.count("b2") > 0,
        "both backends answer UDP: {udp}"
    );
    let shown = first.exec_ok(&["status"]);
    for needle in ["web", "dns", B1, "198.18.1.12"] {
        assert!(
            shown.contains(needle),
            "`podman exec {} lb-ctl status` shows {needle}:\n{shown}",
            name(1)
        );
    }

    // The upgrade: the old container stops (its daemon leaves the data plane pinned), a new
    // one starts from the same image and adopts it; requests go on throughout.
    let traffic = Steady::new(SteadyOptions {
        batch: 20,
        parallel: 4,
        requests: BulkOptions {
            max_time: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(30),
        },
        max_batches: 300,
        max_time: Duration::from_secs(60),
    });
    let (batches, second) = thread::scope(|s| {
        let running = s.spawn(|| traffic.run(topo.client(), &web));
        let stop = traffic.stop_on_drop();
        traffic.wait(5, Duration::ZERO);
        first.stop_and_remove();
        traffic.wait(5, Duration::ZERO);
        let second = run(2);
        traffic.wait(10, Duration::ZERO);
        drop(stop);
        (running.join().expect("traffic thread"), second)
    });
    let tally = merged(&batches);
    eprintln!("across the replacement: {tally}");
    assert_eq!(
        tally.failed(),
        0,
        "no request fails while the container is replaced: {tally}\nnew container's log:\n{}",
        second.log()
    );
    assert!(
        tally.total() >= 20 * 20,
        "traffic ran across the replacement: {tally}"
    );
    assert!(
        second.log().contains("data plane re-adopted"),
        "the new container's daemon adopted the pinned data plane; its log:\n{}",
        second.log()
    );

    // Reload: b1 to weight 0 in the file, SIGHUP through podman; new connections go to b2.
    std::fs::write(config_dir.path().join("lb.yaml"), config(&topo, 0)).expect("config");
    let out = podman(&["kill", "--signal", "HUP", &name(2)]);
    assert!(out.status.success(), "podman kill: {}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = second.status();
        let weight = status["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["backends"].as_array().into_iter().flatten())
            .find(|b| b["address"] == B1)
            .map(|b| b["weight"].clone());
        if weight == Some(serde_json::json!(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGHUP, status shows b1 with weight 0 within 10 s; b1: {weight:?}\nlog:\n{}",
            second.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let after = all_answered(topo.client(), &web, 30, None, 4, "TCP after the reload");
    assert_eq!(
        after.count("b1"),
        0,
        "weight 0 after the reload: no new connection to b1: {after}"
    );
}
