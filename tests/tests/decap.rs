//! The backends' decapsulation program, as `lb-ctl decap attach` leaves it: attached in a
//! namespace the test made, its pinned program run on frames with BPF_PROG_TEST_RUN, every
//! output byte and the counter each frame moves checked; then detached, pins gone.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use lb_tests::{
    Netns, bin_path,
    packet::{ExtHeader, Frame, Frame6, SYN},
    require_root_and_bpf, unique_prefix, veth,
    xdp::{self, XDP_DROP, XDP_PASS},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];

/// `lb-ctl ARGS` inside `ns` (joined with setns, so the root bpffs stays in view, as on
/// a backend host); its status, stdout and stderr.
fn lb_ctl_in(ns: &Netns, args: &[&str]) -> (bool, String, String) {
    let out = ns
        .command(bin_path("lb-ctl"))
        .args(args)
        .output()
        .expect("running lb-ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An outer IPv4 header (+ UDP for GUE) around `inner`'s IP packet, from the LB to the
/// backend, as the LB's encapsulation writes it, with `mutate` applied to the outer
/// header bytes before the checksum.
fn tunnelled(
    inner: &Frame,
    gue_port: Option<u16>,
    src: Ipv4Addr,
    mutate: impl Fn(&mut [u8]),
) -> Vec<u8> {
    let inner = inner.build();
    let packet = &inner[14..];
    let extra = if gue_port.is_some() { 28 } else { 20 };
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((packet.len() + extra) as u16).to_be_bytes());
    ip.extend_from_slice(&[
        0,
        0,
        0x40,
        0,
        64,
        if gue_port.is_some() { 17 } else { 4 },
        0,
        0,
    ]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&BACKEND.octets());
    mutate(&mut ip);
    let c = lb_common::csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    let mut out = Vec::new();
    out.extend_from_slice(&BACKEND_MAC);
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip);
    if let Some(port) = gue_port {
        out.extend_from_slice(&50000u16.to_be_bytes());
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&((packet.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(packet);
    out
}

/// The client's packet as the backend's kernel must get it: the frame's own MACs, then
/// the inner IP packet, byte for byte.
fn decapsulated(inner: &Frame) -> Vec<u8> {
    let mut f = inner.build();
    f[..6].copy_from_slice(&BACKEND_MAC);
    f[6..12].copy_from_slice(&LB_MAC);
    f
}

/// One frame through the program: what it is, the frame, the verdict, the frame out
/// (`None`: unchanged), and the counter it moves.
type Row = (&'static str, Vec<u8>, u32, Option<Vec<u8>>, &'static str);

/// Removes a decap pin folder when the test ends, also when it fails half-way (the
/// namespace going away takes the interface, not the bpffs pins).
struct Unpin(std::path::PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend namespace with `eth0` up, its peer in another namespace, and the name
/// prefix of both.
fn backend(tag: &str) -> (String, Netns, Netns) {
    let prefix = unique_prefix(tag);
    let ns = Netns::create(&format!("{prefix}b"));
    let peer = Netns::create(&format!("{prefix}p"));
    veth(&ns, "eth0", &peer, "sw0");
    ns.link_up("eth0");
    (prefix, ns, peer)
}

fn counters(ns: &Netns, name: &str) -> serde_json::Value {
    let (ok, out, err) = lb_ctl_in(ns, &["decap", "status", "--instance", name, "--json"]);
    assert!(ok, "decap status: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    status["counters"].clone()
}

/// Runs each row through the attached `program`: its verdict, every output byte, and
/// exactly its counter moved.
fn run_rows(ns: &Netns, name: &str, program: &Xdp, ingress: u32, rows: &[Row]) {
    for (what, input, verdict, output, counter) in rows {
        let before = counters(ns, name);
        let (got, out) = xdp::run_program(program, ingress, input).expect("test run");
        assert_eq!(got, *verdict, "{what}: verdict");
        let want = output.as_ref().unwrap_or(input);
        assert!(
            out == *want,
            "{what}: output differs:\n{}",
            lb_tests::packet::diff(&out, want)
        );
        let after = counters(ns, name);
        let moved: Vec<String> = after
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| before[k.as_str()] != **v)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(moved, [counter.to_string()], "{what}: counters that moved");
    }
}

#[test]
fn decap_strips_ipip_and_gue_and_counts_the_rest() {
    if !require_root_and_bpf("decap_strips_ipip_and_gue_and_counts_the_rest") {
        return;
    }
    let (prefix, ns, peer) = backend("dcp");
    ns.addr_add("eth0", format!("{BACKEND}/24"));
    ns.addr_add("lo", format!("{VIP}/32"));
    ns.sysctls(&[
        ("net.ipv4.conf.all.arp_ignore", 1),
        ("net.ipv4.conf.all.arp_announce", 2),
    ]);
    let name = format!("{prefix}d");
    let _pins = Unpin(Path::new("/sys/fs/bpf").join(&name));
    let (ok, out, err) = lb_ctl_in(
        &ns,
        &[
            "decap",
            "attach",
            "eth0",
            "--instance",
            &name,
            "--gue-port",
            "6080",
            "--vip",
            &VIP.to_string(),
        ],
    );
    assert!(ok, "decap attach: {err}");
    assert!(
        out.contains("IPIP, ip6ip6 and GUE on UDP port 6080 decapsulated on eth0"),
        "{out}"
    );
    assert!(
        !err.contains("warning"),
        "a well-set backend gets no warning: {err}"
    );
    let pin = Path::new("/sys/fs/bpf").join(&name);
    let program = Xdp::from_pin(pin.join("prog"), XdpAttachType::Interface)
        .expect("the attached program is pinned");
    let ingress = ns.ifindex("eth0");

    let syn = Frame::tcp((CLIENT, 40000), (VIP, 80), SYN);
    let other_udp = Frame::udp((LB, 50000), (BACKEND, 53)).payload(b"not a tunnel");
    let cases: Vec<Row> = vec![
        (
            "IPIP to this backend: stripped, the client's packet passed",
            tunnelled(&syn, None, LB, |_| {}),
            XDP_PASS,
            Some(decapsulated(&syn)),
            "decapsulated_ipip",
        ),
        (
            "GUE to the GUE port: stripped likewise",
            tunnelled(&syn, Some(6080), LB, |_| {}),
            XDP_PASS,
            Some(decapsulated(&syn)),
            "decapsulated_gue",
        ),
        (
            "UDP to another port is no tunnel",
            tunnelled(&syn, Some(6081), LB, |_| {}),
            XDP_PASS,
            None,
            "pass_not_encapsulated",
        ),
        (
            "plain traffic is not touched",
            other_udp.build(),
            XDP_PASS,
            None,
            "pass_not_encapsulated",
        ),
        (
            "an outer fragment goes to the kernel as it is",
            tunnelled(&syn, None, LB, |ip| ip[6] = 0x20),
            XDP_PASS,
            None,
            "pass_outer_unusual",
        ),
        (
            "an inner packet whose length disagrees with the outer one is dropped",
            tunnelled(&syn, None, LB, |ip| {
                let len = u16::from_be_bytes([ip[2], ip[3]]) + 4;
                ip[2..4].copy_from_slice(&len.to_be_bytes());
            }),
            XDP_DROP,
            None,
            "drop_malformed_inner",
        ),
    ];
    run_rows(&ns, &name, &program, ingress, &cases);

    // Only the LB hosts may tunnel once --allow-source says who they are.
    let (ok, _, err) = lb_ctl_in(
        &ns,
        &[
            "decap",
            "attach",
            "eth0",
            "--instance",
            &name,
            "--allow-source",
            "198.18.1.0/29",
        ],
    );
    assert!(ok, "re-attach: {err}");
    let forged = tunnelled(&syn, None, Ipv4Addr::new(198, 18, 5, 5), |_| {});
    let (got, _) = xdp::run_program(&program, ingress, &forged).expect("test run");
    // The pinned program object is the one attached before; the settings are shared maps.
    assert_eq!(got, XDP_DROP, "a tunnel from outside the allowed prefixes");
    let (got, out) =
        xdp::run_program(&program, ingress, &tunnelled(&syn, None, LB, |_| {})).expect("run");
    assert_eq!(
        (got, out),
        (XDP_PASS, decapsulated(&syn)),
        "from an LB host"
    );
    let c = counters(&ns, &name);
    assert_eq!(c["drop_source_refused"], 1, "{c}");

    let (ok, out, _) = lb_ctl_in(&ns, &["decap", "status", "--instance", &name]);
    assert!(ok);
    assert!(
        out.contains("on eth0") && out.contains("198.18.1.0/29"),
        "{out}"
    );
    assert!(
        out.contains("GUE port: none (IPIP and ip6ip6 only)"),
        "re-attached without --gue-port: {out}"
    );

    let (ok, _, err) = lb_ctl_in(&ns, &["decap", "detach", "eth1", "--instance", &name]);
    assert!(
        !ok && err.contains("eth1 has no decapsulation program") && err.contains("attached: eth0"),
        "{err}"
    );
    let (ok, out, err) = lb_ctl_in(&ns, &["decap", "detach", "eth0", "--instance", &name]);
    assert!(ok, "{err}");
    assert!(out.contains("nothing left attached, pins removed"), "{out}");
    assert!(!pin.exists(), "the pins are gone");
    let link = ns.ip(["link", "show", "eth0"]);
    assert!(!link.contains("xdp"), "nothing attached any more: {link}");
    drop(peer);
}

#[test]
fn decap_attach_warns_about_each_wrong_host_setting() {
    if !require_root_and_bpf("decap_attach_warns_about_each_wrong_host_setting") {
        return;
    }
    let (prefix, ns, peer) = backend("dcw");
    ns.sysctls(&[
        ("net.ipv4.conf.all.arp_ignore", 0),
        ("net.ipv4.conf.all.arp_announce", 0),
        ("net.ipv4.conf.all.rp_filter", 1),
    ]);
    let name = format!("{prefix}d");
    let _pins = Unpin(Path::new("/sys/fs/bpf").join(&name));
    let (ok, _, err) = lb_ctl_in(&ns, &["decap", "attach", "eth0", "--instance", &name]);
    assert!(ok, "attached all the same: {err}");
    for fix in [
        "net.ipv4.conf.eth0.arp_ignore=1",
        "net.ipv4.conf.eth0.arp_announce=2",
        "net.ipv4.conf.eth0.rp_filter=2",
        "ip addr add VIP/32 dev lo",
    ] {
        assert!(err.contains(fix), "a warning with `{fix}`:\n{err}");
    }
    let (ok, _, err) = lb_ctl_in(&ns, &["decap", "detach", "eth0", "--instance", &name]);
    assert!(ok, "{err}");
    let (ok, _, err) = lb_ctl_in(&ns, &["decap", "status", "--instance", &name]);
    assert!(
        !ok && err.contains("`lb-ctl decap attach IFACE` loads one"),
        "{err}"
    );
    drop(peer);
}

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x100);
const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 1);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 0x10);

/// An outer IPv6 header (+ UDP for GUE, checksum 0) around `inner`'s IPv6 packet, from
/// `src` to the backend, as the LB's encapsulation writes it (flow label 0x12345), with
/// `mutate` applied to the outer header bytes.
fn tunnelled6(
    inner: &Frame6,
    gue_port: Option<u16>,
    src: Ipv6Addr,
    mutate: impl Fn(&mut [u8]),
) -> Vec<u8> {
    let inner = inner.build();
    let packet = &inner[14..];
    let udp = if gue_port.is_some() { 8 } else { 0 };
    let mut ip = vec![0x60, 0x01, 0x23, 0x45];
    ip.extend_from_slice(&((packet.len() + udp) as u16).to_be_bytes());
    ip.push(if gue_port.is_some() { 17 } else { 41 });
    ip.push(64);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&BACKEND6.octets());
    mutate(&mut ip);
    let mut out = Vec::new();
    out.extend_from_slice(&BACKEND_MAC);
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&[0x86, 0xdd]);
    out.extend_from_slice(&ip);
    if let Some(port) = gue_port {
        out.extend_from_slice(&50000u16.to_be_bytes());
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&((packet.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(packet);
    out
}

/// The client's IPv6 packet as the backend's kernel must get it.
fn decapsulated6(inner: &Frame6) -> Vec<u8> {
    let mut f = inner.build();
    f[..6].copy_from_slice(&BACKEND_MAC);
    f[6..12].copy_from_slice(&LB_MAC);
    f
}

/// The same program strips IPv6 tunnels: ip6ip6 (next header 41) and GUE over IPv6 to
/// the GUE port, with the LB's zero UDP checksum; an outer extension header, an inner
/// packet of the wrong length or family are dealt with as over IPv4; `--allow-source`
/// takes IPv6 prefixes, and with only IPv4 ones given refuses every IPv6 tunnel.
#[test]
fn decap_strips_ip6ip6_and_gue6_and_counts_the_rest() {
    if !require_root_and_bpf("decap_strips_ip6ip6_and_gue6_and_counts_the_rest") {
        return;
    }
    let (prefix, ns, peer) = backend("dc6");
    ns.sysctls(&[
        ("net.ipv6.conf.all.disable_ipv6", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.lo.disable_ipv6", "0"),
    ]);
    ns.addr_add_nodad("lo", format!("{VIP6}/128"));
    let name = format!("{prefix}d");
    let _pins = Unpin(Path::new("/sys/fs/bpf").join(&name));
    let vip6 = VIP6.to_string();
    let (ok, out, err) = lb_ctl_in(
        &ns,
        &[
            "decap",
            "attach",
            "eth0",
            "--instance",
            &name,
            "--gue-port",
            "6080",
            "--vip",
            &vip6,
        ],
    );
    assert!(ok, "decap attach: {err}");
    assert!(out.contains("decapsulated on eth0"), "{out}");
    assert!(
        !err.contains("warning"),
        "an IPv6 VIP on lo needs no ARP setting: {err}"
    );
    let pin = Path::new("/sys/fs/bpf").join(&name);
    let program = Xdp::from_pin(pin.join("prog"), XdpAttachType::Interface)
        .expect("the attached program is pinned");
    let ingress = ns.ifindex("eth0");

    let syn = Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN);
    let udp = Frame6::udp((CLIENT6, 40001), (VIP6, 53)).payload(b"query");
    let other_udp = Frame6::udp((LB6, 50000), (BACKEND6, 53)).payload(b"not a tunnel");
    // RFC 2473's tunnel encapsulation limit: a destination options header before the
    // inner packet, which the LB never sends.
    let with_limit = {
        let mut f = tunnelled6(&syn, None, LB6, |_| {});
        let at = 14 + 40;
        f[14 + 6] = 60;
        let len = u16::from_be_bytes([f[18], f[19]]) + 8;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        f.splice(at..at, [41, 0, 4, 1, 4, 1, 1, 0]);
        f
    };
    let ipv4_inside = {
        let inner = Frame::tcp((Ipv4Addr::new(198, 18, 0, 2), 40000), (VIP, 80), SYN).build();
        let mut f = tunnelled6(&syn, None, LB6, |_| {});
        f.truncate(14 + 40);
        f.extend_from_slice(&inner[14..]);
        let len = (inner.len() - 14) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        f
    };
    let rows: Vec<Row> = vec![
        (
            "ip6ip6 to this backend: stripped, the client's packet passed",
            tunnelled6(&syn, None, LB6, |_| {}),
            XDP_PASS,
            Some(decapsulated6(&syn)),
            "decapsulated_ip6ip6",
        ),
        (
            "GUE over IPv6 to the GUE port, UDP checksum 0: stripped likewise",
            tunnelled6(&udp, Some(6080), LB6, |_| {}),
            XDP_PASS,
            Some(decapsulated6(&udp)),
            "decapsulated_gue6",
        ),
        (
            "UDP over IPv6 to another port is no tunnel",
            tunnelled6(&syn, Some(6081), LB6, |_| {}),
            XDP_PASS,
            None,
            "pass_not_encapsulated",
        ),
        (
            "plain IPv6 traffic is not touched",
            other_udp.build(),
            XDP_PASS,
            None,
            "pass_not_encapsulated",
        ),
        (
            "an extension header before the inner packet: the kernel's",
            with_limit,
            XDP_PASS,
            None,
            "pass_outer_unusual",
        ),
        (
            "an inner packet whose length disagrees with the outer one is dropped",
            tunnelled6(&syn, None, LB6, |ip| {
                let len = u16::from_be_bytes([ip[4], ip[5]]) + 4;
                ip[4..6].copy_from_slice(&len.to_be_bytes());
            }),
            XDP_DROP,
            None,
            "drop_malformed_inner",
        ),
        (
            "an IPv4 packet inside ip6ip6 is no IPv6 packet: dropped",
            ipv4_inside,
            XDP_DROP,
            None,
            "drop_malformed_inner",
        ),
        (
            "an IPv6 packet with extension headers of its own is carried whole",
            tunnelled6(
                &syn.clone().ext(ExtHeader::DestOpts(vec![1, 2, 0, 0])),
                None,
                LB6,
                |_| {},
            ),
            XDP_PASS,
            Some(decapsulated6(
                &syn.clone().ext(ExtHeader::DestOpts(vec![1, 2, 0, 0])),
            )),
            "decapsulated_ip6ip6",
        ),
    ];
    run_rows(&ns, &name, &program, ingress, &rows);

    // The LB hosts' IPv6 prefix: other sources are refused; an IPv4 prefix alone
    // refuses every IPv6 tunnel.
    let forged = tunnelled6(
        &syn,
        None,
        Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 5),
        |_| {},
    );
    for (allowed, from_lb) in [
        (vec!["--allow-source", "2001:db8:18:1::/64"], XDP_PASS),
        (vec!["--allow-source", "198.18.1.0/29"], XDP_DROP),
    ] {
        let mut args = vec!["decap", "attach", "eth0", "--instance", &name];
        args.extend(&allowed);
        let (ok, _, err) = lb_ctl_in(&ns, &args);
        assert!(ok, "re-attach: {err}");
        let (got, _) = xdp::run_program(&program, ingress, &forged).expect("test run");
        assert_eq!(
            got, XDP_DROP,
            "{allowed:?}: a tunnel from outside the allowed prefixes"
        );
        let (got, _) = xdp::run_program(&program, ingress, &tunnelled6(&syn, None, LB6, |_| {}))
            .expect("test run");
        assert_eq!(got, from_lb, "{allowed:?}: from an LB host");
    }
    let (ok, out, _) = lb_ctl_in(&ns, &["decap", "status", "--instance", &name]);
    assert!(ok);
    assert!(out.contains("198.18.1.0/29"), "{out}");
    let (ok, _, err) = lb_ctl_in(
        &ns,
        &[
            "decap",
            "attach",
            "eth0",
            "--instance",
            &name,
            "--allow-source",
            "2001:db8:18:1::/64",
            "--allow-source",
            "198.18.1.0/29",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = lb_ctl_in(&ns, &["decap", "status", "--instance", &name]);
    assert!(ok);
    assert!(
        out.contains("198.18.1.0/29") && out.contains("2001:db8:18:1::/64"),
        "both families listed: {out}"
    );
    let (ok, _, err) = lb_ctl_in(&ns, &["decap", "detach", "eth0", "--instance", &name]);
    assert!(ok, "{err}");
    drop(peer);
}
