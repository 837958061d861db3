//! Path MTU through the LB, end to end: a 5 MB download and a 5 MB upload through the VIP
//! complete when one side of the LB has a smaller MTU (1400) than the other (1500), over
//! IPv4 and over IPv6 (where no router fragments: the LB's Packet Too Big is all the
//! sender gets).
//!
//! The endpoint on the narrow side advertises the MSS of a 1500-byte network (its route's
//! `advmss 1460`), as one behind a router whose next link is the narrow one does: TCP's
//! MSS exchange then does not keep the other endpoint's segments under 1400, and only the
//! LB's ICMP "fragmentation needed" (ICMPv6 Packet Too Big) tells it, quoting the segment
//! as that endpoint sent it. Without that answer (or with the kernel's, which quotes the translated packet) the
//! transfer in that direction stalls after its first full-sized segment.
//!
//! Topology: `lb_tests::topology` with one backend serving HTTP on 8080. The answers leave
//! by XDP_TX, so the veth peers of both LB interfaces run an XDP program of their own
//! (`Topology::client_xdp_pass`, `switch_xdp_pass`).

use std::{fs, time::Duration};

use lb_tests::{
    Family, LbDaemon, Topology, TopologyOptions, VIP,
    client::{TempDir, http_download, http_upload, http_url},
    require_root_and_bpf,
    topology::{
        BACKEND_IF, CLIENT_IF, LB_BACKEND_ADDR, LB_BACKEND_ADDR6, LB_BACKEND_IF, LB_CLIENT_ADDR,
        LB_CLIENT_ADDR6, LB_CLIENT_IF, SWITCH_BRIDGE, SWITCH_LB_PORT, VIP_RANGE, VIP6, VIP6_RANGE,
        backend_addr6, switch_backend_port,
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

fn transfers_complete(tag: &str, narrow: Narrow, family: Family) {
    if !require_root_and_bpf(tag) {
        return;
    }
    let v6 = family == Family::Ipv6;
    let topo = Topology::build(
        tag,
        1,
        TopologyOptions {
            family,
            ..Default::default()
        },
    );
    // The MSS a 1500-byte network advertises: 1500 less the IP and TCP headers.
    let advmss = if v6 { "1440" } else { "1460" };
    let mtu = |ns: &lb_tests::Netns, dev: &str| {
        ns.ip(["link", "set", dev, "mtu", NARROW_MTU]);
    };
    let answer = match narrow {
        Narrow::ClientSide => {
            mtu(topo.client(), CLIENT_IF);
            mtu(topo.lb(), LB_CLIENT_IF);
            let (vips, via) = if v6 {
                (VIP6_RANGE, LB_CLIENT_ADDR6.to_string())
            } else {
                (VIP_RANGE, LB_CLIENT_ADDR.to_string())
            };
            topo.client()
                .ip(["route", "replace", vips, "via", &via, "advmss", advmss]);
            "icmp_frag_needed_to_backend"
        }
        Narrow::BackendSide => {
            mtu(topo.lb(), LB_BACKEND_IF);
            for dev in [SWITCH_LB_PORT.to_owned(), switch_backend_port(1)] {
                mtu(topo.switch(), &dev);
            }
            mtu(topo.switch(), SWITCH_BRIDGE);
            mtu(topo.backend(1), BACKEND_IF);
            let via = if v6 {
                LB_BACKEND_ADDR6.to_string()
            } else {
                LB_BACKEND_ADDR.to_string()
            };
            topo.backend(1)
                .ip(["route", "replace", "default", "via", &via, "advmss", advmss]);
            "icmp_frag_needed_to_client"
        }
    };
    topo.pin_neighbors();
    let _backends = topo.start_backends(Some(HTTP_PORT), None);
    let instance = format!("{}i", topo.prefix());
    let (server, vip) = if v6 {
        (format!("\"{}\"", backend_addr6(1)), format!("\"{VIP6}\""))
    } else {
        ("198.18.1.11".to_owned(), VIP.to_string())
    };
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, {}]\nflow_table_size: 65536\nmax_listeners: 8\nmax_backends: 256\n\
         default_server_group:\n  servers:\n    - {{ address: {server} }}\n\
         listeners:\n  - {{ name: web, protocol: tcp, address: {vip}, port: 80, backend_port: {HTTP_PORT} }}\n",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let url = |path: &str| {
        if v6 {
            http_url(VIP6, 80, path)
        } else {
            http_url(VIP, 80, path)
        }
    };
    let daemon = LbDaemon::start(topo.lb(), &instance, &config);
    let _client_wake = topo.client_xdp_pass();
    let _switch_wake = topo.switch_xdp_pass();

    let download = http_download(
        topo.client(),
        &url(&format!("/bytes?n={SIZE}")),
        TRANSFER_TIMEOUT,
    );
    let dir = TempDir::new(tag);
    let file = dir.path().join("upload");
    fs::write(&file, vec![b'u'; SIZE as usize]).expect("writing the upload");
    let upload = http_upload(topo.client(), &url("/upload"), &file, TRANSFER_TIMEOUT);

    let text = daemon.ctl_ok(&["stats", "--json"]);
    let stats: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON: {e}\n{text}"));
    let answers = reason(&stats, answer);
    println!(
        "{family:?}, {narrow:?} at {NARROW_MTU}: download {download:?}, upload {upload:?}, {answer}={answers}, \
         pass_frag_needed={}",
        reason(&stats, "pass_frag_needed")
    );
    assert_eq!(
        download.as_ref().ok(),
        Some(&SIZE),
        "the 5 MB download completes ({family:?}, {narrow:?} at {NARROW_MTU}): {download:?}; {:#}",
        stats["reasons"]
    );
    assert_eq!(
        upload.as_deref().ok(),
        Some(format!("b1 {SIZE}\n").as_str()),
        "the 5 MB upload completes ({family:?}, {narrow:?} at {NARROW_MTU}): {upload:?}; {:#}",
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
    transfers_complete("mtc", Narrow::ClientSide, Family::Ipv4);
}

/// The backend side is narrow: the client's full-sized segments of the upload are too big
/// for it, and the LB tells the client, from the VIP.
#[test]
fn transfers_complete_with_a_narrow_backend_side() {
    transfers_complete("mtb", Narrow::BackendSide, Family::Ipv4);
}

/// Over IPv6, the client side narrow: Packet Too Big to the backend.
#[test]
fn ipv6_transfers_complete_with_a_narrow_client_side() {
    transfers_complete("mtc6", Narrow::ClientSide, Family::Ipv6);
}

/// Over IPv6, the backend side narrow: Packet Too Big to the client, from the VIP.
#[test]
fn ipv6_transfers_complete_with_a_narrow_backend_side() {
    transfers_complete("mtb6", Narrow::BackendSide, Family::Ipv6);
}
