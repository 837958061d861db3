//! `/metrics` end to end: a daemon with `metrics_listen` inside the LB namespace, scraped
//! with curl from inside that namespace and read with a Prometheus text-format parser
//! (`prometheus-parse`), while real connections go through the VIP.
//!
//! Each test builds its own namespaces, so the metrics port is free by construction: no
//! other process lives in a namespace the test has just made.
//!
//! Topology (see `lb_tests::topology`): a client, the LB running `lb-ctl daemon`, two
//! backends b1, b2 (198.18.1.11, .12) serving HTTP on 8080; the VIP is 198.19.0.100.

use std::{
    thread,
    time::{Duration, Instant},
};

use lb_common::Reason;
use lb_tests::{
    LbDaemon, Tally, Topology, TopologyOptions, VIP, curl_many, http_request, require_root_and_bpf,
};
use prometheus_parse::{LineInfo, Sample, SampleType, Scrape, Value};

const METRICS_PORT: u16 = 9100;
const REQUESTS: usize = 40;
const B1: &str = "198.18.1.11:8080";
const B2: &str = "198.18.1.12:8080";

fn config(topo: &Topology, metrics_port: u16) -> String {
    format!(
        "instance: {}i
interfaces: [{}, {}]
flow_table_size: 65536
max_listeners: 8
max_backends: 256
metrics_listen: 127.0.0.1:{metrics_port}
default_server_group:
  servers:
    - {{ address: 198.18.1.11, weight: 100 }}
    - {{ address: 198.18.1.12, weight: 50 }}
listeners:
  - name: web
    protocol: tcp
    address: {VIP}
    port: 80
    backend_port: 8080
    health_check: {{ type: tcp, interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2 }}
",
        topo.prefix(),
        topo.lb_client_if(),
        topo.lb_backend_if()
    )
}

fn setup(tag: &str) -> Option<(Topology, LbDaemon, Vec<lb_tests::Backend>)> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let topo = Topology::build(tag, 2, TopologyOptions::default());
    topo.pin_neighbors();
    let backends = topo.start_backends(Some(8080), None);
    let instance = format!("{}i", topo.prefix());
    let daemon = LbDaemon::start(topo.lb(), &instance, &config(&topo, METRICS_PORT));
    Some((topo, daemon, backends))
}

/// A scrape: the raw text (for TYPE lines) and what the parser made of it.
struct Metrics {
    text: String,
    scrape: Scrape,
}

fn scrape(topo: &Topology, port: u16) -> Metrics {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let reply = http_request(topo.lb(), &url, None, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let scrape = Scrape::parse(reply.body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("parsing /metrics: {e}\n{}", reply.body));
    Metrics {
        text: reply.body,
        scrape,
    }
}

impl Metrics {
    /// Samples named `name` whose labels include every pair of `labels`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The one value of `name{labels}`; panics unless exactly one series matches.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.samples(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: {} series match\n{}",
            found.len(),
            self.text
        );
        match &found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}{labels:?} is not a number: {other:?}"),
        }
    }

    fn backend(&self, name: &str, backend: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels = vec![("listener", "web"), ("backend", backend)];
        labels.extend_from_slice(extra);
        self.value(name, &labels)
    }

    /// The TYPE a family declares, read with the parser's own line parser.
    fn declared_type(&self, family: &str) -> Option<SampleType> {
        self.text
            .lines()
            .find_map(|line| match LineInfo::parse(line) {
                LineInfo::Type {
                    metric_name,
                    metric_alias,
                    sample_type,
                } if metric_name == family || metric_alias.as_deref() == Some(family) => {
                    Some(sample_type)
                }
                _ => None,
            })
    }
}

impl Metrics {
    /// Whether a sample line of the exposition is named `name` (histogram series included:
    /// `_bucket`, `_sum`, `_count`).
    fn exports(&self, name: &str) -> bool {
        self.text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
    }
}

/// The names of this project's metrics (`lb_…`) a text of queries uses, once each.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("lb_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Polls the metrics until `check` passes (it returns why not), at most `timeout`.
fn wait_for(
    topo: &Topology,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&Metrics) -> Result<(), String>,
) -> Metrics {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(topo, METRICS_PORT);
        match check(&m) {
            Ok(()) => return m,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}: {why}\n{}", m.text)
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn metrics_are_prometheus_text_and_count_the_traffic() {
    let Some((topo, daemon, _backends)) = setup("met") else {
        return;
    };
    // The checker needs a probe or two before the histogram has observations.
    let before = wait_for(&topo, "first probes", Duration::from_secs(10), |m| {
        let n = m.value("lb_health_probe_duration_seconds_count", &[]);
        if n >= 2.0 {
            Ok(())
        } else {
            Err(format!("{n} probes"))
        }
    });

    // HELP and TYPE for every family, with the type Prometheus expects.
    for (family, kind) in [
        ("lb_listener_packets", SampleType::Counter),
        ("lb_listener_bytes", SampleType::Counter),
        ("lb_listener_new_flows", SampleType::Counter),
        ("lb_listener_active_flows", SampleType::Gauge),
        ("lb_backend_packets", SampleType::Counter),
        ("lb_backend_bytes", SampleType::Counter),
        ("lb_backend_new_flows", SampleType::Counter),
        ("lb_backend_active_flows", SampleType::Gauge),
        ("lb_backend_up", SampleType::Gauge),
        ("lb_backend_state", SampleType::Gauge),
        ("lb_backend_weight", SampleType::Gauge),
        ("lb_backend_effective_weight", SampleType::Gauge),
        ("lb_xdp_packets", SampleType::Counter),
        ("lb_xdp_events", SampleType::Counter),
        ("lb_flow_table_entries", SampleType::Gauge),
        ("lb_flow_table_capacity", SampleType::Gauge),
        ("lb_flow_table_evictions_estimate", SampleType::Gauge),
        ("lb_maglev_slots_capacity", SampleType::Gauge),
        ("lb_maglev_slots_reserved", SampleType::Gauge),
        ("lb_health_probe_duration_seconds", SampleType::Histogram),
        ("lb_health_probes", SampleType::Counter),
        ("lb_config_reloads", SampleType::Counter),
        ("lb_config_last_reload_successful", SampleType::Gauge),
    ] {
        assert!(
            before.scrape.docs.contains_key(family),
            "no HELP for {family}\n{}",
            before.text
        );
        assert_eq!(
            before.declared_type(family),
            Some(kind),
            "TYPE of {family}\n{}",
            before.text
        );
    }
    assert!(
        before.text.ends_with("# EOF\n"),
        "no # EOF\n{}",
        before.text
    );

    // The dashboard and the alert rules in deploy/ query only what this exports.
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/lb-dashboard.json"))
        .expect("deploy/grafana/lb-dashboard.json");
    let rules = std::fs::read_to_string(deploy.join("prometheus/lb-alerts.yml"))
        .expect("deploy/prometheus/lb-alerts.yml");
    for (file, text) in [("the dashboard", &dashboard), ("the alert rules", &rules)] {
        let names = metric_names(text);
        assert!(names.len() >= 6, "{file} names {names:?}");
        for name in names {
            assert!(
                before.exports(&name),
                "{file} queries {name}, which /metrics does not export:\n{}",
                before.text
            );
        }
    }

    // Every reason of the data plane is exported, once, with a `reason` label.
    for r in Reason::ALL {
        let name = r.name();
        let labels = [("reason", name)];
        let series = before.samples("lb_xdp_packets_total", &labels).count()
            + before.samples("lb_xdp_events_total", &labels).count();
        assert_eq!(series, 1, "reason {name}\n{}", before.text);
    }

    // Health and weights as configured; the two backends are up.
    for (b, weight) in [(B1, 100.0), (B2, 50.0)] {
        assert_eq!(before.backend("lb_backend_up", b, &[]), 1.0, "{b} up");
        assert_eq!(before.backend("lb_backend_weight", b, &[]), weight);
        assert_eq!(
            before.backend("lb_backend_effective_weight", b, &[]),
            weight
        );
        assert_eq!(
            before.backend("lb_backend_state", b, &[("state", "up")]),
            1.0
        );
        assert_eq!(
            before.backend("lb_backend_state", b, &[("state", "down")]),
            0.0
        );
    }
    assert_eq!(before.value("lb_flow_table_capacity", &[]), 65536.0);
    // One listener at the default table size: two tables of 65537 slots, of the default
    // array's room for max_listeners (8) of them.
    assert_eq!(before.value("lb_maglev_slots_reserved", &[]), 131_074.0);
    assert_eq!(
        before.value("lb_maglev_slots_capacity", &[]),
        8.0 * 131_074.0
    );
    // The XDP mode in force on each interface (veth runs XDP natively).
    for iface in [topo.lb_client_if(), topo.lb_backend_if()] {
        assert_eq!(
            before.value(
                "lb_interface_info",
                &[("interface", iface), ("mode", "native")]
            ),
            1.0,
            "{iface}\n{}",
            before.text
        );
    }

    // The probe latency histogram: cumulative buckets ending in +Inf = count.
    let histogram = before
        .samples("lb_health_probe_duration_seconds", &[])
        .next()
        .unwrap_or_else(|| panic!("no probe histogram\n{}", before.text));
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("probe histogram parsed as {:?}", histogram.value);
    };
    assert!(buckets.len() >= 2, "buckets {buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].count <= w[1].count && w[0].less_than < w[1].less_than)
    );
    let last = buckets.last().unwrap();
    assert!(last.less_than.is_infinite(), "last bucket {last:?}");
    let count = before.value("lb_health_probe_duration_seconds_count", &[]);
    assert_eq!(last.count, count, "+Inf bucket = count");
    assert!(before.value("lb_health_probe_duration_seconds_sum", &[]) > 0.0);
    let probes = before.value("lb_health_probes_total", &[("result", "ok")])
        + before.value("lb_health_probes_total", &[("result", "failed")]);
    assert!(
        probes >= count,
        "probes {probes} vs histogram count {count}"
    );

    // Traffic: REQUESTS new connections through the VIP.
    let results = curl_many(
        topo.client(),
        &format!("http://{VIP}:80/"),
        REQUESTS,
        None,
        4,
    );
    let tally = Tally::of(&results);
    assert_eq!(tally.answered(), REQUESTS, "{tally}");
    let after = scrape(&topo, METRICS_PORT);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };

    let listener = [
        ("listener", "web"),
        ("vip", "198.19.0.100:80"),
        ("protocol", "tcp"),
    ];
    assert_eq!(
        delta("lb_listener_new_flows_total", &listener),
        REQUESTS as f64,
        "listener new flows"
    );
    let mut to_backend_total = 0.0;
    let mut to_client_total = 0.0;
    for (b, name) in [(B1, "b1"), (B2, "b2")] {
        let answers = tally.count(name) as f64;
        let labels = [("listener", "web"), ("backend", b)];
        let with = |d: &'static str| [labels[0], labels[1], ("direction", d)];
        assert_eq!(
            delta("lb_backend_new_flows_total", &labels),
            answers,
            "new flows of {b} = connections it answered ({tally})"
        );
        // A short HTTP exchange is at least SYN, request, FIN and ACKs one way and
        // SYN-ACK, answer, FIN the other.
        let to_backend = delta("lb_backend_packets_total", &with("to_backend"));
        let to_client = delta("lb_backend_packets_total", &with("to_client"));
        assert!(
            to_backend >= 3.0 * answers,
            "{b}: {to_backend} packets to it for {answers}"
        );
        assert!(
            to_client >= 3.0 * answers,
            "{b}: {to_client} replies for {answers}"
        );
        // Every packet carries at least an IPv4 and a TCP header.
        assert!(delta("lb_backend_bytes_total", &with("to_backend")) >= 40.0 * to_backend);
        assert!(delta("lb_backend_bytes_total", &with("to_client")) >= 40.0 * to_client);
        to_backend_total += to_backend;
        to_client_total += to_client;
    }
    let with = |d: &'static str| [listener[0], listener[1], listener[2], ("direction", d)];
    assert_eq!(
        delta("lb_listener_packets_total", &with("to_backend")),
        to_backend_total
    );
    assert_eq!(
        delta("lb_listener_packets_total", &with("to_client")),
        to_client_total
    );
    // The data plane's verdict counters saw the same packets.
    assert_eq!(
        delta(
            "lb_xdp_packets_total",
            &[("reason", "forwarded"), ("verdict", "transmit")]
        ),
        to_backend_total
    );
    assert_eq!(
        delta(
            "lb_xdp_packets_total",
            &[("reason", "reply_forwarded"), ("verdict", "transmit")]
        ),
        to_client_total
    );
    assert_eq!(
        delta("lb_xdp_events_total", &[("reason", "event_new_flow")]),
        REQUESTS as f64
    );

    // The flow table, once a sweep has seen the new entries: nothing was evicted from a
    // table this large, so the estimate is exact (0).
    wait_for(&topo, "flow table sweep", Duration::from_secs(5), |m| {
        let entries = m.value("lb_flow_table_entries", &[]);
        let evicted = m.value("lb_flow_table_evictions_estimate", &[]);
        if entries >= REQUESTS as f64 && evicted == 0.0 {
            Ok(())
        } else {
            Err(format!("entries {entries}, evictions estimate {evicted}"))
        }
    });

    // An open connection is an active flow of its backend once the sweep counts it.
    let mut stream = topo.client().spawn([
        "curl",
        "-sS",
        "-N",
        "--max-time",
        "15",
        &format!("http://{VIP}:80/stream?seconds=10"),
    ]);
    stream.wait_for_output(" 0", Duration::from_secs(5));
    let serving = stream
        .stdout()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let (busy, idle) = if serving == "b1" { (B1, B2) } else { (B2, B1) };
    wait_for(&topo, "active flow", Duration::from_secs(5), |m| {
        let busy_n = m.backend("lb_backend_active_flows", busy, &[]);
        let idle_n = m.backend("lb_backend_active_flows", idle, &[]);
        let listener_n = m.value("lb_listener_active_flows", &listener);
        if (busy_n, idle_n, listener_n) == (1.0, 0.0, 1.0) {
            Ok(())
        } else {
            Err(format!(
                "{busy} {busy_n}, {idle} {idle_n}, listener {listener_n}"
            ))
        }
    });
    stream.stop();
    drop(daemon);
}

#[test]
fn the_listener_answers_only_reads_and_follows_reloads() {
    let Some((topo, daemon, _backends)) = setup("mer") else {
        return;
    };
    let base = format!("http://127.0.0.1:{METRICS_PORT}");
    // The HTTP status curl saw; "000" when it could not connect.
    let code = |args: &[&str]| -> String {
        let mut all = vec![
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&topo.lb().exec(all).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(code(&[&format!("{base}/nope")]), "404");
    assert_eq!(code(&["-X", "POST", &format!("{base}/metrics")]), "405");
    assert_eq!(code(&["-X", "DELETE", &format!("{base}/")]), "405");
    // A request head over the limit is refused, not buffered.
    let big = format!("X-Big: {}", "a".repeat(16 * 1024));
    assert_eq!(code(&["-H", &big, &format!("{base}/metrics")]), "431");

    // The status page and its data.
    let page = http_request(topo.lb(), &format!("{base}/"), None, Duration::from_secs(5)).unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'none'")),
        "{:?}",
        page.headers
    );
    let json = http_request(
        topo.lb(),
        &format!("{base}/status.json"),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(json.status, 200);
    let status: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(status["instance"], daemon.instance());
    assert_eq!(status["listeners"][0]["name"], "web");
    assert_eq!(
        status["listeners"][0]["backends"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(status["stats"]["at_s"].is_number(), "{status}");
    assert!(
        status["stats"]["reasons"]["forwarded"].is_number(),
        "{status}"
    );
    // The same data as `lb-ctl status --json`, plus stats.
    let cli = daemon.status();
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut expected = keys(&cli);
    expected.push("stats".into());
    expected.sort();
    let mut got = keys(&status);
    got.sort();
    assert_eq!(got, expected);

    // A refused reload is counted and turns the last-reload gauge to 0 (what an alert
    // watches); the next good one turns it back.
    let fresh = scrape(&topo, METRICS_PORT);
    assert_eq!(
        fresh.value("lb_config_reloads_total", &[("result", "refused")]),
        0.0
    );
    assert_eq!(fresh.value("lb_config_last_reload_successful", &[]), 1.0);
    daemon.write_config("instance: [this is not a config\n");
    let refused = daemon.ctl(&["reload"]);
    assert!(!refused.status.success(), "a broken config is refused");
    let after = scrape(&topo, METRICS_PORT);
    assert_eq!(
        after.value("lb_config_reloads_total", &[("result", "refused")]),
        1.0
    );
    assert_eq!(after.value("lb_config_last_reload_successful", &[]), 0.0);

    // A reload moves the listener (within a sweep interval), and removing the setting
    // stops it.
    daemon.write_config(&config(&topo, METRICS_PORT + 1));
    daemon.ctl_ok(&["reload"]);
    let moved = format!("http://127.0.0.1:{}/metrics", METRICS_PORT + 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while code(&[&moved]) != "200" {
        assert!(
            Instant::now() < deadline,
            "{moved} not served after the reload"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let old = topo
        .lb()
        .exec(["curl", "-sS", "--max-time", "2", &format!("{base}/metrics")]);
    assert!(!old.status.success(), "the old address still answers");
    let applied = scrape(&topo, METRICS_PORT + 1);
    assert_eq!(
        applied.value("lb_config_reloads_total", &[("result", "applied")]),
        1.0
    );
    assert_eq!(applied.value("lb_config_last_reload_successful", &[]), 1.0);
    let without = config(&topo, METRICS_PORT + 1).replace(
        &format!("metrics_listen: 127.0.0.1:{}\n", METRICS_PORT + 1),
        "",
    );
    daemon.write_config(&without);
    daemon.ctl_ok(&["reload"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while topo
        .lb()
        .exec(["curl", "-sS", "--max-time", "2", &moved])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "{moved} still served without metrics_listen"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The listener answers only to its own address in `Host` (a DNS-rebinding page names
/// its own domain), and idle connections, up to `MAX_PER_CLIENT` of them served and the
/// rest refused, cannot make a scrape from another address wait.
#[test]
fn foreign_hosts_are_refused_and_idle_connections_do_not_delay_scrapes() {
    let Some((topo, _daemon, _backends)) = setup("mhost") else {
        return;
    };
    let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
    let with_host = |host: &str| {
        let out = topo.lb().exec([
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            &format!("Host: {host}"),
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = with_host("evil.example");
    assert_eq!(code, "421", "Host: evil.example answered: {body}");
    assert!(
        body.contains("Host `evil.example` is not this listener") && body.contains("metrics_hosts"),
        "{body}"
    );
    assert_eq!(with_host(&format!("127.0.0.1:{METRICS_PORT}")).0, "200");

    // Idle connections from another loopback address: connected, nothing sent.
    const IDLE: usize = 100;
    let idle: Vec<std::net::TcpStream> = topo.lb().enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut idle = Vec::new();
            for _ in 0..IDLE {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                let target = format!("127.0.0.1:{METRICS_PORT}").parse().unwrap();
                let stream = socket.connect(target).await.unwrap();
                idle.push(stream.into_std().unwrap());
            }
            idle
        })
    });
    // Scrapes spread over longer than the header-read timeout, each within 1.5 s.
    for _ in 0..3 {
        let started = Instant::now();
        let reply = http_request(topo.lb(), &url, None, Duration::from_millis(1500))
            .unwrap_or_else(|e| panic!("a scrape with {IDLE} idle connections open: {e:#}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        eprintln!(
            "scrape with {IDLE} idle connections open: {:?}",
            started.elapsed()
        );
        thread::sleep(Duration::from_secs(1));
    }
    drop(idle);
}
