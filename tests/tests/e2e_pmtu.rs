//! Path MTU through the LB, end to end: a 5 MB download and a 5 MB upload through the VIP
//! complete when one side of the LB has a smaller MTU (1400) than the other (1500).
//!
//! The endpoint on the narrow side advertises the MSS of a 1500-byte network (its route's
//! `advmss 1460`), as one behind a router whose next link is the narrow one does: TCP's
//! MSS exchange then does not keep the other endpoint's segments under 1400, and only the
//! LB's ICMP "fragmentation needed" tells it, quoting the segment as that endpoint sent
//! it. Without that answer (or with the kernel's, which quotes the translated packet) the
//! transfer in that direction stalls after its first full-sized segment.
//!
//! Topology: `lb_tests::topology` with one backend serving HTTP on 8080. The answers leave
//! by XDP_TX, so the veth peers of both LB interfaces run an XDP program of their own
//! (`Topology::client_xdp_pass`, `switch_xdp_pass`).

use std::{fs, time::Duration};

use lb_tests::{
    LbDaemon, Topology, TopologyOptions, VIP,
    client::{TempDir, http_download, http_upload},
    require_root_and_bpf,
    topology::{
        BACKEND_IF, CLIENT_IF, LB_BACKEND_ADDR, LB_BACKEND_IF, LB_CLIENT_ADDR, LB_CLIENT_IF,
        SWITCH_BRIDGE, SWITCH_LB_PORT, VIP_RANGE, switch_backend_port,
    },
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const SIZE: u64 = 5 * 1024 * 1024;
const NARROW_MTU: &str = "1400";
/// Far more than a 5 MB transfer over veth takes (well under a second), far less than a
/// stalled TCP connection takes to give up.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Narrow {
    ClientSide,
    BackendSide,
}

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name].as_u64().unwrap_or(0)
}

fn transfers_complete(tag: &str, narrow: Narrow) {
    if !require_root_and_bpf(tag) {
        return;
    }
    let topo = Topology::build(tag, 1, TopologyOptions::default());
    let mtu = |ns: &lb_tests::Netns, dev: &str| {
        ns.ip(["link", "set", dev, "mtu", NARROW_MTU]);
    };
    let answer = match narrow {
        Narrow::ClientSide => {
            mtu(topo.client(), CLIENT_IF);
            mtu(topo.lb(), LB_CLIENT_IF);
            topo.client().ip([
                "route",
                "replace",
                VIP_RANGE,
                "via",
                &LB_CLIENT_ADDR.to_string(),
                "advmss",
                "1460",
            ]);
            "icmp_frag_needed_to_backend"
        }
        Narrow::BackendSide => {
            mtu(topo.lb(), LB_BACKEND_IF);
            for dev in [SWITCH_LB_PORT.to_owned(), switch_backend_port(1)] {
                mtu(topo.switch(), &dev);
            }
            mtu(topo.switch(), SWITCH_BRIDGE);
            mtu(topo.backend(1), BACKEND_IF);
            topo.backend(1).ip([
                "route",
                "replace",
                "default",
                "via",
                &LB_BACKEND_ADDR.to_string(),
                "advmss",
                "1460",
            ]);
            "icmp_frag_needed_to_client"
        }
    };
    topo.pin_neighbors();
    let _backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n\
         default_server_group:\n  servers:\n    - {{ address: 198.18.1.11 }}\n\
         listeners:\n  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, backend_port: {HTTP_PORT} }}\n",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    let _client_wake = topo.client_xdp_pass();
    let _switch_wake = topo.switch_xdp_pass();

    let download = http_download(
        topo.client(),
        &format!("http://{VIP}/bytes?n={SIZE}"),
        TRANSFER_TIMEOUT,
    );
    let dir = TempDir::new(tag);
    let file = dir.path().join("upload");
    fs::write(&file, vec![b'u'; SIZE as usize]).expect("writing the upload");
    let upload = http_upload(
        topo.client(),
        &format!("http://{VIP}/upload"),
        &file,
        TRANSFER_TIMEOUT,
    );

    let text = daemon.ctl_ok(&["stats", "--json"]);
    let stats: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON: {e}\n{text}"));
    let answers = reason(&stats, answer);
    println!(
        "{narrow:?} at {NARROW_MTU}: download {download:?}, upload {upload:?}, {answer}={answers}, \
         pass_frag_needed={}",
        reason(&stats, "pass_frag_needed")
    );
    assert_eq!(
        download.as_ref().ok(),
        Some(&SIZE),
        "the 5 MB download completes ({narrow:?} at {NARROW_MTU}): {download:?}; {:#}",
        stats["reasons"]
    );
    assert_eq!(
        upload.as_deref().ok(),
        Some(format!("b1 {SIZE}\n").as_str()),
        "the 5 MB upload completes ({narrow:?} at {NARROW_MTU}): {upload:?}; {:#}",
        stats["reasons"]
    );
    assert!(
        answers > 0,
        "the LB answered the first full-sized segment with {answer}: {:#}",
        stats["reasons"]
    );
}

/// The client side is narrow: the backend's full-sized segments of the download are too
/// big for it, and the LB tells the backend.
#[test]
fn transfers_complete_with_a_narrow_client_side() {
    transfers_complete("mtc", Narrow::ClientSide);
}

/// The backend side is narrow: the client's full-sized segments of the upload are too big
/// for it, and the LB tells the client, from the VIP.
#[test]
fn transfers_complete_with_a_narrow_backend_side() {
    transfers_complete("mtb", Narrow::BackendSide);
}
