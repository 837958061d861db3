//! `cargo xtask run` with no NIC named: a demo network in namespaces (a client, the load
//! balancer, three backends running an HTTP and UDP server that names itself), the daemon
//! attached to it, and the command that sends a request through the VIP. Ctrl-C removes
//! everything.

use std::{process::ExitCode, time::Duration};

use lb_tests::{
    LbDaemon, Topology, TopologyOptions, VIP, bin_path, curl_many, require_root_and_bpf,
};

const INSTANCE: &str = "demo";

fn config(topo: &Topology) -> String {
    let servers: Vec<String> = topo
        .backend_addrs()
        .iter()
        .map(|a| format!("    - {{ address: {a} }}"))
        .collect();
    format!(
        "# The demo topology's config (written by lb-demo).
instance: {INSTANCE}
interfaces: [{client_if}, {backend_if}]
flow_table_size: 65536
max_listeners: 8
max_backends: 256
default_server_group:
  servers:
{servers}
listeners:
  - name: web
    protocol: tcp
    address: {VIP}
    port: 80
    backend_port: 8080
    scheduler: wrr
    health_check: {{ type: http, interval: 2, http: {{ path: / }} }}
  - name: echo
    protocol: udp
    address: {VIP}
    port: 53
    backend_port: 5353
    health_check: {{ type: udp, udp: {{ request: ping, expect: ping }} }}
",
        client_if = topo.lb_client_if(),
        backend_if = topo.lb_backend_if(),
        servers = servers.join("\n"),
    )
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_interrupt() {
    // SAFETY: plain signal-set manipulation on sets we own; sigwait blocks this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

fn main() -> ExitCode {
    if !require_root_and_bpf("lb-demo") {
        eprintln!("lb-demo: run as root (network namespaces and XDP need it)");
        return ExitCode::from(2);
    }
    // Block the signals before any thread starts, so Ctrl-C reaches sigwait below and the
    // guards' Drop removes everything.
    // SAFETY: as in wait_for_interrupt.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    // A demo killed earlier may have left its data plane pinned.
    let _ = std::process::Command::new(bin_path("lb-ctl"))
        .args(["teardown", "--instance", INSTANCE])
        .output();

    eprintln!("lb-demo: building the network (client, lb, switch, b1..b3 namespaces)");
    let topo = Topology::build("demo", 3, TopologyOptions::default());
    topo.pin_neighbors();
    let _backends = topo.start_backends(Some(8080), Some(5353));
    // Answers the LB makes itself (ping to the VIP, a drained flow's RST) leave with
    // XDP_TX, which a veth delivers promptly only to a peer with an XDP program.
    let _client_xdp = topo.client_xdp_pass();
    eprintln!(
        "lb-demo: starting lb-ctl daemon in namespace {}",
        topo.lb().name()
    );
    let daemon = match LbDaemon::try_start(topo.lb(), INSTANCE, &config(&topo)) {
        Ok(daemon) => daemon,
        Err(e) => {
            // The daemon's own message says what went wrong; the namespaces go on return.
            eprintln!("lb-demo: {e}\nlb-demo: removing the demo network");
            return ExitCode::FAILURE;
        }
    };

    // Prove the path before telling the user it works.
    let probe = curl_many(topo.client(), &format!("http://{VIP}/"), 3, None, 1);
    let answers: Vec<String> = probe
        .iter()
        .map(|r| match r {
            Ok(body) => body.trim().to_owned(),
            Err(e) => format!("FAILED: {e}"),
        })
        .collect();
    let lb_ctl = bin_path("lb-ctl");
    let socket = daemon.socket();
    println!(
        "\nThe demo is up: VIP {VIP} (tcp/80 → backends :8080, udp/53 → :5353), three backends.
First requests answered by: {answers}

Send a request through the VIP:
    ip netns exec {client} curl -s http://{VIP}/

More:
    {lb_ctl} --socket {socket} status
    {lb_ctl} --socket {socket} stats --watch
    {lb_ctl} --socket {socket} server set --group default {b3} --weight 0
    config: {config}

Ctrl-C stops the daemon, detaches XDP and removes the namespaces.",
        answers = answers.join(", "),
        client = topo.client().name(),
        lb_ctl = lb_ctl.display(),
        socket = socket.display(),
        b3 = topo.backend_addr(3),
        config = daemon.config_path().display(),
    );
    wait_for_interrupt();
    eprintln!("\nlb-demo: stopping and cleaning up");
    drop(daemon);
    std::thread::sleep(Duration::from_millis(100));
    drop(topo);
    eprintln!("lb-demo: done");
    ExitCode::SUCCESS
}
