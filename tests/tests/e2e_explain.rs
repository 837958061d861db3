//! `lb-ctl explain` against real connections: for a new flow it names the backend that then
//! answers, under every scheduler (for `wrr`, `rr` and `wlc`, whose pick depends on the CPU
//! that receives the first packet, the pick of the CPU the client is pinned to), under
//! `wlc` also while earlier connections stay open (so the active-flow counts decide), and
//! for an established connection it names the backend serving it.

use std::time::Duration;

use lb_tests::{LbDaemon, Topology, TopologyOptions, require_root_and_bpf};

const GROUP: &str = "vserver_groups:\n  - name: app\n    servers:\n      - { address: 198.18.1.11, port: 8080 }\n      - { address: 198.18.1.12, port: 8080, weight: 60 }\n      - { address: 198.18.1.13, port: 8080, weight: 30 }\n";

fn setup(tag: &str, listeners: &str) -> Option<(Topology, LbDaemon, Vec<lb_tests::Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(
        tag,
        3,
        TopologyOptions {
            client_addresses: 6,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let backends = topo.start_backends(Some(8080), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        // maglev_slots: room for one listener with 655373-slot tables besides the others.
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\nmaglev_slots: 1441820\n{GROUP}listeners:\n{listeners}",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    Some((topo, daemon, backends))
}

/// `lb-ctl explain --json` for a TCP packet.
fn explain_json(daemon: &LbDaemon, src: &str, dst: &str, established: bool) -> serde_json::Value {
    let mut args = vec![
        "explain",
        "--src",
        src,
        "--dst",
        dst,
        "--protocol",
        "tcp",
        "--json",
    ];
    if established {
        args.push("--established");
    }
    let out = daemon.ctl_ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// "198.18.1.12:8080" as the test backends name themselves ("b2").
fn backend_name(address: &str) -> String {
    let last: u8 = address
        .split(':')
        .next()
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    format!("b{}", last - 10)
}

/// The backend `explain` names, as "b1".."b3" (or None).
fn explained(daemon: &LbDaemon, src: &str, dst: &str, established: bool) -> Option<String> {
    explain_json(daemon, src, dst, established)["backend"]
        .as_str()
        .map(backend_name)
}

/// The backend `explain` says CPU `cpu` picks for a new flow: the one answer when every
/// CPU agrees, else that CPU's line ("CPU 0: … → forwarded to ADDR (backend id N)").
fn explained_on_cpu(daemon: &LbDaemon, src: &str, dst: &str, cpu: usize) -> String {
    pick_on_cpu(&explain_json(daemon, src, dst, false), cpu)
}

/// The backend an explanation (`explain --json`) says CPU `cpu` picks.
fn pick_on_cpu(v: &serde_json::Value, cpu: usize) -> String {
    if let Some(b) = v["backend"].as_str() {
        return backend_name(b);
    }
    let prefix = format!("CPU {cpu}: ");
    let line = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .find(|s| s.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for CPU {cpu} in {v}"));
    let address = line
        .rsplit_once("forwarded to ")
        .unwrap_or_else(|| panic!("CPU {cpu} forwards nothing: {line}"))
        .1
        .split_whitespace()
        .next()
        .unwrap();
    backend_name(address)
}

/// One GET from `source:port`, a new connection; returns the backend's name.
fn get_from(topo: &Topology, source: &str, port: u16, vport: u16) -> String {
    get_on_cpu(topo, source, port, vport, None)
}

/// `get_from` with the client pinned to one CPU: the veth that carries its SYN to the LB
/// runs the XDP program on the sending CPU.
fn get_on_cpu(topo: &Topology, source: &str, port: u16, vport: u16, cpu: Option<usize>) -> String {
    let pin = cpu.map(|c| c.to_string());
    let mut argv: Vec<&str> = Vec::new();
    if let Some(c) = &pin {
        argv.extend(["taskset", "-c", c]);
    }
    let local_port = port.to_string();
    let url = format!("http://{}:{vport}/", lb_tests::VIP);
    argv.extend([
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--interface",
        source,
        "--local-port",
        &local_port,
        "-H",
        "Connection: close",
        &url,
    ]);
    let out = topo.client().run_ok(argv);
    out.trim().to_owned()
}

#[test]
fn explain_predicts_new_flows_under_every_scheduler() {
    let Some((topo, daemon, _b)) = setup(
        "expn",
        "  - { name: a, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: wrr }\n  - { name: b, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app, scheduler: rr }\n  - { name: c, protocol: tcp, address: 198.19.0.100, port: 82, server_group: app, scheduler: wlc }\n  - { name: d, protocol: tcp, address: 198.19.0.100, port: 83, server_group: app, scheduler: sch }\n  - { name: e, protocol: tcp, address: 198.19.0.100, port: 84, server_group: app, scheduler: tch }\n",
    ) else {
        return;
    };
    let src = topo.client_addr().to_string();
    let mut answered = std::collections::BTreeMap::new();
    for (i, vport) in (80..=84u16).enumerate() {
        for k in 0..6u16 {
            let lport = 43000 + (i as u16) * 10 + k;
            let predicted = explained_on_cpu(
                &daemon,
                &format!("{src}:{lport}"),
                &format!("198.19.0.100:{vport}"),
                0,
            );
            let got = get_on_cpu(&topo, &src, lport, vport, Some(0));
            assert_eq!(got, predicted, "new flow {lport} → :{vport}");
            answered
                .entry(vport)
                .or_insert_with(std::collections::BTreeSet::new)
                .insert(got);
        }
    }
    // The round-robin schedulers really moved between backends while being predicted.
    for vport in [80, 81, 82] {
        assert!(
            answered[&vport].len() >= 2,
            ":{vport} answered {:?}",
            answered[&vport]
        );
    }
}

#[test]
fn explain_predicts_new_flows_under_sch_and_tch() {
    let Some((topo, daemon, _b)) = setup(
        "expl",
        "  - { name: sticky, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: sch }\n  - { name: spread, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app, scheduler: tch }\n",
    ) else {
        return;
    };
    let mut checked = 0;
    for (i, client) in topo.client_addrs().iter().enumerate() {
        let src = client.to_string();
        let port = 41000 + i as u16;
        // sch: the source address decides, whatever the port.
        let predicted = explained(&daemon, &format!("{src}:{port}"), "198.19.0.100:80", false)
            .expect("sch names a backend");
        assert_eq!(get_from(&topo, &src, port, 80), predicted, "sch from {src}");
        // tch: the 4-tuple decides.
        for p in [port + 100, port + 200] {
            let predicted = explained(&daemon, &format!("{src}:{p}"), "198.19.0.100:81", false)
                .expect("tch names a backend");
            assert_eq!(
                get_from(&topo, &src, p, 81),
                predicted,
                "tch from {src}:{p}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12);

    // A larger table for the tch listener, at run time: a size that does not fit the
    // Maglev array is refused whole, one that fits is used by the data plane and
    // `explain` alike.
    let refused = daemon.ctl(&[
        "listener",
        "set",
        "spread",
        "--maglev-table-size",
        "1000003",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("maglev_slots: the listeners' Maglev tables need 2131080 slots"),
        "{stderr}"
    );
    let not_prime = daemon.ctl(&["listener", "set", "spread", "--maglev-table-size", "655370"]);
    assert!(
        String::from_utf8_lossy(&not_prime.stderr)
            .contains("655370 is not a prime, and a Maglev table needs a prime size (the nearest: 655357 and 655373)"),
        "{}",
        String::from_utf8_lossy(&not_prime.stderr)
    );
    daemon.ctl_ok(&["listener", "set", "spread", "--maglev-table-size", "655373"]);
    for (i, client) in topo.client_addrs().iter().enumerate() {
        let src = client.to_string();
        let p = 43000 + i as u16;
        let v = explain_json(&daemon, &format!("{src}:{p}"), "198.19.0.100:81", false);
        let steps = v["steps"].to_string();
        assert!(steps.contains(" of 655373 → "), "{steps}");
        let predicted = v["backend"]
            .as_str()
            .map(backend_name)
            .expect("tch names a backend");
        assert_eq!(
            get_from(&topo, &src, p, 81),
            predicted,
            "tch (655373) from {src}:{p}"
        );
    }
}

#[test]
fn explain_names_the_backend_of_established_connections_under_every_scheduler() {
    let Some((topo, daemon, _b)) = setup(
        "expe",
        "  - { name: a, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: wrr }\n  - { name: b, protocol: tcp, address: 198.19.0.100, port: 81, server_group: app, scheduler: rr }\n  - { name: c, protocol: tcp, address: 198.19.0.100, port: 82, server_group: app, scheduler: wlc }\n  - { name: d, protocol: tcp, address: 198.19.0.100, port: 83, server_group: app, scheduler: sch }\n  - { name: e, protocol: tcp, address: 198.19.0.100, port: 84, server_group: app, scheduler: tch }\n",
    ) else {
        return;
    };
    for (i, vport) in (80..=84u16).enumerate() {
        for k in 0..3u16 {
            let lport = 42000 + (i as u16) * 10 + k;
            // A connection that stays open: the backend streams for 3 s and names itself
            // on every line.
            let mut stream = topo.client().spawn([
                "curl",
                "-sS",
                "-N",
                "--max-time",
                "10",
                "--local-port",
                &lport.to_string(),
                &format!("http://{}:{vport}/stream?seconds=3", lb_tests::VIP),
            ]);
            stream
                .try_wait_for_output(" 0", Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("stream on {vport} from {lport}: {e}"));
            let serving = stream
                .stdout()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            let predicted = explained(
                &daemon,
                &format!("{}:{lport}", topo.client_addr()),
                &format!("198.19.0.100:{vport}"),
                true,
            );
            assert_eq!(
                predicted.as_deref(),
                Some(serving.as_str()),
                "established connection {lport} → :{vport}"
            );
            stream.stop();
        }
    }
}

/// `wlc` while earlier connections stay open: the pick then depends on the active-flow
/// counts the data plane keeps (up on a new flow, down on its FIN or RST), which `explain`
/// reads from the same map. Each prediction is made with the previous streams still open.
#[test]
fn explain_predicts_wlc_from_the_active_flows_of_open_connections() {
    let Some((topo, daemon, _b)) = setup(
        "expw",
        "  - { name: least, protocol: tcp, address: 198.19.0.100, port: 80, server_group: app, scheduler: wlc }\n",
    ) else {
        return;
    };
    let src = topo.client_addr().to_string();
    let mut streams = Vec::new();
    let mut served = std::collections::BTreeMap::new();
    let mut saw_busy_candidate = false;
    for k in 0..7u16 {
        let lport = 44000 + k;
        let v = explain_json(&daemon, &format!("{src}:{lport}"), "198.19.0.100:80", false);
        let predicted = pick_on_cpu(&v, 0);
        // "... (backend id 1) active 2 weight 60, ...": a count above zero took part.
        saw_busy_candidate |= v["steps"]
            .to_string()
            .split(" active ")
            .skip(1)
            .any(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n > 0)
            });
        let local_port = lport.to_string();
        let url = format!("http://{}:80/stream?seconds=30", lb_tests::VIP);
        let stream = topo.client().spawn([
            "taskset",
            "-c",
            "0",
            "curl",
            "-sS",
            "-N",
            "--max-time",
            "40",
            "--interface",
            &src,
            "--local-port",
            &local_port,
            &url,
        ]);
        stream
            .try_wait_for_output(" 0", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("stream from {lport}: {e}"));
        let serving = stream
            .stdout()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            serving, predicted,
            "new flow {lport} with {k} streams open: {v}"
        );
        *served.entry(serving).or_insert(0u32) += 1;
        streams.push(stream);
    }
    assert!(
        saw_busy_candidate,
        "no prediction was made with a backend holding active flows"
    );
    // Fewest active flows per unit of weight (100, 60, 30): the heaviest backend holds
    // the most of the open streams, and every backend holds some.
    assert_eq!(served.len(), 3, "{served:?}");
    assert!(
        served["b1"] >= served["b2"] && served["b2"] >= served["b3"],
        "{served:?}"
    );
    for mut s in streams {
        s.stop();
    }
}
