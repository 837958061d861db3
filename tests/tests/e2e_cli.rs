//! The operator's view end to end: the XDP mode the config chooses and `status` shows
//! (also after a restart re-adopts the pinned links), a driver that refuses native mode,
//! `lb-ctl flows`, `status --watch`, access lists that must exist, and the listener
//! options of `listener set`.
//!
//! Topology (see `lb_tests::topology`): a client, the LB running `lb-ctl daemon`, backends
//! b1.. (198.18.1.11..) serving HTTP on 8080; the VIP is 198.19.0.100. veth runs XDP
//! natively; a bridge device has no driver support for it (generic only).

use std::{
    process::{Command, Output},
    time::Duration,
};

use lb_tests::{
    LbDaemon, Tally, Topology, TopologyOptions, VIP, all_answered, bin_path, curl_many,
    require_root_and_bpf, web_config,
};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn header(topo: &Topology, extra: &str) -> String {
    format!(
        "instance: {}i\ninterfaces: [{}, {}]\nmax_listeners: 8\nmax_backends: 256\n{extra}",
        topo.prefix(),
        topo.lb_client_if(),
        topo.lb_backend_if()
    )
}

/// A vServer group `app` of backends b1..b`n` on 8080, a TCP listener `web` on VIP:80.
/// `n` backends behind the listener `web`, and the access list `office`.
fn web(n: usize) -> String {
    format!(
        "acls:\n  - {{ name: office, entries: [198.18.0.0/24] }}\n{}",
        web_config(n, HTTP_PORT, "")
    )
}

fn setup(tag: &str, n: usize, extra: &str) -> Option<(Topology, LbDaemon)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(tag, n, TopologyOptions::default());
    topo.pin_neighbors();
    let daemon = LbDaemon::start(
        topo.lb(),
        &format!("{}i", topo.prefix()),
        &format!("{}{}", header(&topo, extra), web(n)),
    );
    Some((topo, daemon))
}

fn modes(daemon: &LbDaemon) -> Vec<String> {
    let status = daemon.status();
    status["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| i["mode"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// What `ip link` shows for XDP on `dev` in the LB: `xdp` (native) or `xdpgeneric`.
fn ip_link_xdp(topo: &Topology, dev: &str) -> &'static str {
    let out = topo.lb().ip(["link", "show", "dev", dev]);
    if out.contains("xdpgeneric") {
        "generic"
    } else if out.contains(" xdp ") || out.contains("xdp/") || out.contains("xdpdrv") {
        "native"
    } else {
        "none"
    }
}

fn traffic_flows(topo: &Topology, what: &str) {
    all_answered(
        topo.client(),
        &format!("http://{VIP}:80/"),
        10,
        None,
        2,
        what,
    );
}

#[test]
fn xdp_mode_is_chosen_shown_and_kept_across_a_restart() {
    let Some((topo, mut daemon)) = setup("xdpm", 1, "xdp_mode: generic\n") else {
        return;
    };
    let _backends = topo.start_backends(Some(HTTP_PORT), None);
    assert_eq!(modes(&daemon), ["generic", "generic"]);
    assert_eq!(ip_link_xdp(&topo, topo.lb_client_if()), "generic");
    let text = daemon.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!("{} (generic)", topo.lb_client_if())),
        "{text}"
    );
    traffic_flows(&topo, "generic");

    // A reload with another mode attaches again in that mode.
    daemon.write_config(&format!(
        "{}{}",
        header(&topo, "xdp_mode: native\n"),
        web(1)
    ));
    daemon.ctl_ok(&["reload"]);
    assert_eq!(modes(&daemon), ["native", "native"]);
    assert_eq!(ip_link_xdp(&topo, topo.lb_client_if()), "native");
    traffic_flows(&topo, "native after the reload");

    // A restarted daemon re-adopts the pinned links and shows their mode, as the kernel
    // reports it.
    daemon.stop();
    daemon.restart();
    assert!(
        daemon.log().contains("data plane re-adopted"),
        "{}",
        daemon.log()
    );
    assert_eq!(modes(&daemon), ["native", "native"]);
    traffic_flows(&topo, "native after the restart");

    // `auto` keeps whatever runs.
    daemon.write_config(&format!("{}{}", header(&topo, ""), web(1)));
    daemon.ctl_ok(&["reload"]);
    assert_eq!(modes(&daemon), ["native", "native"]);
}

#[test]
fn xdp_mode_native_on_a_device_without_driver_support_is_refused() {
    let tag = "xdpn";
    if !require_root_and_bpf(tag) {
        return;
    }
    let topo = Topology::build(tag, 1, TopologyOptions::default());
    topo.pin_neighbors();
    topo.lb().ip(["link", "add", "nonative0", "type", "bridge"]);
    topo.lb().ip(["link", "set", "nonative0", "up"]);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}\ninterfaces: [{}, nonative0]\nxdp_mode: native\nmax_listeners: 8\nmax_backends: 256\n{}",
        topo.lb_client_if(),
        web(1)
    );
    let err = LbDaemon::try_start(topo.lb(), &instance, &config)
        .err()
        .expect("the daemon refuses to start");
    eprintln!("the refusal: {err}");
    assert!(
        err.status.is_some_and(|s| !s.success()),
        "it exits non-zero: {err}"
    );
    for needle in [
        "xdp_mode: native, but the driver of nonative0 cannot run XDP in native mode",
        "xdp_mode: generic",
    ] {
        assert!(err.message.contains(needle), "{needle:?} in:\n{err}");
    }
    assert_eq!(
        ip_link_xdp(&topo, topo.lb_client_if()),
        "none",
        "the interface attached before the refusal is left as it was"
    );

    // `auto` falls back to generic there; `status` says so.
    let auto = config.replace("xdp_mode: native\n", "");
    let mut daemon = LbDaemon::start(topo.lb(), &instance, &auto);
    assert_eq!(modes(&daemon), ["native", "generic"]);

    // A reload to `native` is refused naming the interface, and changes nothing.
    daemon.write_config(&config);
    let out = daemon.ctl(&["reload"]);
    eprintln!("the reload: {}", text_of(&out));
    assert!(!out.status.success(), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("driver of nonative0 cannot run XDP in native mode"),
        "{}",
        text_of(&out)
    );
    assert_eq!(modes(&daemon), ["native", "generic"]);
    assert_eq!(
        ip_link_xdp(&topo, "nonative0"),
        "generic",
        "the refused switch put the generic program back"
    );
    daemon.stop();
}

#[test]
fn flows_lists_connections_with_their_backend() {
    let Some((topo, daemon)) = setup("flw", 2, "") else {
        return;
    };
    let _backends = topo.start_backends(Some(HTTP_PORT), None);
    let results = curl_many(topo.client(), &format!("http://{VIP}:80/"), 20, None, 4);
    let tally = Tally::of(&results);
    assert_eq!(tally.failed(), 0, "{tally}");

    let list: Value = serde_json::from_str(&daemon.ctl_ok(&["flows", "--json"])).unwrap();
    let flows = list["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 20, "one entry per connection: {list:#}");
    for f in flows {
        assert_eq!(f["vip"], format!("{VIP}:80"), "{f}");
        assert_eq!(f["listener"], "web", "{f}");
        assert!(
            f["client"].as_str().unwrap().starts_with("198.18.0.2:"),
            "{f}"
        );
        // The connections ended: the client's FIN was seen.
        assert_eq!(f["state"], "fin", "{f}");
    }
    for (name, address) in [("b1", "198.18.1.11"), ("b2", "198.18.1.12")] {
        let only: Value =
            serde_json::from_str(&daemon.ctl_ok(&["flows", "--json", "--backend", address]))
                .unwrap();
        let flows = only["flows"].as_array().unwrap();
        assert_eq!(
            flows.len(),
            tally.count(name),
            "the flows to {name} are the connections it answered: {only:#}"
        );
        assert!(
            flows
                .iter()
                .all(|f| f["backend"] == format!("{address}:{HTTP_PORT}")),
            "{only:#}"
        );
    }

    let table = daemon.ctl_ok(&["flows", "--limit", "3"]);
    assert!(table.starts_with("PRO  CLIENT"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("TCP")).count(),
        3,
        "{table}"
    );
    assert!(table.contains("17 more flow(s) not shown"), "{table}");
    assert!(table.contains("20 flow(s) matched"), "{table}");

    let out = daemon.ctl(&["flows", "--listener", "wbe"]);
    assert_eq!(out.status.code(), Some(2), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("no listener `wbe`; listeners: web"),
        "{}",
        text_of(&out)
    );
}

#[test]
fn status_watch_redraws_until_interrupted() {
    let Some((_topo, daemon)) = setup("stw", 1, "") else {
        return;
    };
    let mut child = Command::new(bin_path("lb-ctl"))
        .arg("status")
        .arg("--watch")
        .arg("--socket")
        .arg(daemon.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after 2.5 s"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("\x1b[H\x1b[2J").count();
    assert!(
        frames >= 2,
        "redrawn every second: {frames} frame(s)\n{text}"
    );
    assert!(text.contains("listener web"), "{text}");
}

#[test]
fn acls_must_exist_and_listener_options_are_editable() {
    let Some((_topo, daemon)) = setup("clio", 1, "") else {
        return;
    };
    // A typo does not make a new list.
    let out = daemon.ctl(&["acl", "add", "ofice", "198.51.100.0/24"]);
    assert_eq!(out.status.code(), Some(2), "{}", text_of(&out));
    let said = text_of(&out);
    assert!(
        said.contains("no access list `ofice`; access lists: office") && said.contains("--create"),
        "{said}"
    );
    assert!(!daemon.ctl_ok(&["export"]).contains("ofice"));
    daemon.ctl_ok(&["acl", "add", "office", "198.51.100.0/24"]);
    daemon.ctl_ok(&["acl", "add", "--create", "partners", "203.0.113.0/24"]);
    let acls = daemon.ctl_ok(&["acl", "list"]);
    assert!(
        acls.contains("office") && acls.contains("198.51.100.0/24") && acls.contains("partners"),
        "{acls}"
    );

    // Listener options at runtime, read like the file.
    daemon.ctl_ok(&[
        "listener",
        "set",
        "web",
        "--established-timeout",
        "120",
        "--connection-drain",
        "on",
        "--drain-timeout",
        "30",
        "--acl",
        "deny:partners",
        "--check-interval",
        "3",
    ]);
    let export = daemon.ctl_ok(&["export"]);
    for needle in [
        "established_timeout: 120",
        "enabled: true",
        "timeout: 30",
        "name: partners",
        "interval: 3",
    ] {
        assert!(export.contains(needle), "{needle:?} in\n{export}");
    }
    for (args, needle) in [
        (&["--check-interval", "99"][..], "--check-interval"),
        (&["--acl", "allow:nosuch"], "nosuch"),
        (&["--http-codes", "2xx"], "health_check.http.codes"),
    ] {
        let mut argv = vec!["listener", "set", "web"];
        argv.extend_from_slice(args);
        let out = daemon.ctl(&argv);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {}", text_of(&out));
        assert!(
            text_of(&out).contains(needle),
            "{argv:?}: {}",
            text_of(&out)
        );
    }
    // `--proto` still works for explain, as a hidden alias of `--protocol`.
    for flag in ["--protocol", "--proto"] {
        daemon.ctl_ok(&[
            "explain",
            "--src",
            "198.18.0.2:40000",
            "--dst",
            &format!("{VIP}:80"),
            flag,
            "tcp",
        ]);
    }
}
