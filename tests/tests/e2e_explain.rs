//! `lb-ctl explain` against real connections: for new flows under `sch` and `tch` it names
//! the backend that then answers, and for an established connection it names the backend
//! serving it, under every scheduler.

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
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n{GROUP}listeners:\n{listeners}",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    Some((topo, daemon, backends))
}

/// The backend `explain` names, as "b1".."b3" (or None).
fn explained(daemon: &LbDaemon, src: &str, dst: &str, established: bool) -> Option<String> {
    let mut args = vec![
        "explain", "--src", src, "--dst", dst, "--proto", "tcp", "--json",
    ];
    if established {
        args.push("--established");
    }
    let out = daemon.ctl_ok(&args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["backend"].as_str().map(|b| {
        let last: u8 = b
            .split(':')
            .next()
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        format!("b{}", last - 10)
    })
}

/// One GET from `source:port`, a new connection; returns the backend's name.
fn get_from(topo: &Topology, source: &str, port: u16, vport: u16) -> String {
    let out = topo.client().run_ok([
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--interface",
        source,
        "--local-port",
        &port.to_string(),
        "-H",
        "Connection: close",
        &format!("http://{}:{vport}/", lb_tests::VIP),
    ]);
    out.trim().to_owned()
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
