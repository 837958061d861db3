//! `/metrics`: the balancer's counters and states in the OpenMetrics text format, which
//! Prometheus scrapes natively.
//!
//! A scrape takes what the controller holds in memory under its lock
//! (`Controller::status_draft`; the flow table is never walked here, its numbers are the
//! last sweep's), reads the counter maps after releasing it, and encodes the [`Sample`]
//! through `prometheus-client`'s text encoder: it writes the HELP, TYPE and UNIT
//! lines, the `_total` suffix of counters and the histogram series, and escapes label
//! values. The values are the data plane's own running totals, so every family is a
//! "const" metric rebuilt per scrape rather than an instrument updated in place.
//!
//! Every name and label is listed in docs/operations.md ("Metrics").

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use lb_common::{Reason, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use thiserror::Error;

use crate::{
    api::{Counters, Status},
    bgp::SessionState,
    health::Histogram,
};

/// The media type of the exposition (Prometheus asks for it first and parses it natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("reading the counters: {0:#}")]
    Read(#[from] anyhow::Error),
    #[error("encoding the OpenMetrics text failed")]
    Encode(#[from] fmt::Error),
}

/// The health checker's probe metrics at the time of a scrape.
#[derive(Clone, Debug, Default)]
pub struct ProbeSample {
    pub latency: Histogram,
    pub dispatch_lag: Histogram,
    pub ok: u64,
    pub failed: u64,
    pub in_flight: usize,
}

/// Everything one scrape reports.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The version of this binary, reported in `lb_instance_info`.
    pub version: &'static str,
    pub status: Status,
    /// Verdict and event counters by `Reason`, summed over CPUs.
    pub reasons: Vec<(Reason, u64)>,
    /// `None` before the daemon has attached its health checker.
    pub probes: Option<ProbeSample>,
}

impl Sample {
    /// A scrape's sample from a filled status, the verdict counters and the probe
    /// metrics (`StatusDraft::probes`).
    pub fn new(
        status: Status,
        by_name: &BTreeMap<&str, u64>,
        probes: Option<crate::health::Snapshot>,
    ) -> Self {
        let reasons = Reason::ALL
            .iter()
            .map(|r| (*r, by_name.get(r.name()).copied().unwrap_or(0)))
            .collect();
        let probes = probes.map(|s| ProbeSample {
            latency: s.latency,
            dispatch_lag: s.dispatch_lag,
            ok: s.probes_ok,
            failed: s.probes_failed,
            in_flight: s.in_flight,
        });
        Self {
            version: env!("CARGO_PKG_VERSION"),
            status,
            reasons,
            probes,
        }
    }
}

/// The OpenMetrics text of a sample, ending with `# EOF`.
pub fn encode(sample: Sample) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SampleCollector(sample)));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Adapts a `Sample` to the encoder's collector interface.
#[derive(Debug)]
struct SampleCollector(Sample);

type Labels = Vec<(&'static str, String)>;

/// A gauge family: its descriptor, then one series per label set.
fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    // Every gauge here is a count or a weight: integers, written without a fraction.
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge with a single, unlabelled series.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A counter family; values stay u64 so no count loses digits to a float.
fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn info_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = Labels>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Info)?;
    for labels in series {
        metric.encode_info(&labels)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Histogram,
) -> fmt::Result {
    // The encoder accumulates per-bucket counts itself; `Histogram` hands out cumulative
    // ones, so take them apart again.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = h
        .cumulative()
        .into_iter()
        .map(|(le, total)| {
            let n = total - previous;
            previous = total;
            (le, n)
        })
        .collect();
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    metric.encode_histogram::<Labels>(h.sum().as_secs_f64(), h.count(), &buckets, None)
}

/// The two directions of a flow's traffic, as the `direction` label names them.
const TO_BACKEND: &str = "to_backend";
const TO_CLIENT: &str = "to_client";

/// Series of one traffic counter in both directions.
fn directions(
    labels: &Labels,
    c: &Counters,
    to_backend: fn(&Counters) -> u64,
    to_client: fn(&Counters) -> u64,
) -> [(Labels, u64); 2] {
    let with = |d: &str| {
        let mut l = labels.clone();
        l.push(("direction", d.to_owned()));
        l
    };
    [
        (with(TO_BACKEND), to_backend(c)),
        (with(TO_CLIENT), to_client(c)),
    ]
}

impl Collector for SampleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let e = &mut encoder;

        info_family(
            e,
            "lb_instance",
            "The balancer instance this daemon runs, and the lb-ctl version.",
            [vec![
                ("instance", s.status.instance.clone()),
                ("version", s.version.to_owned()),
            ]],
        )?;
        info_family(
            e,
            "lb_interface",
            "Interfaces the XDP program is attached to, and the XDP mode in force (native, generic; missing while the interface does not exist).",
            s.status
                .interfaces
                .iter()
                .map(|i| vec![("interface", i.name.clone()), ("mode", i.mode.clone())]),
        )?;

        counter_family(
            e,
            "lb_config_reloads",
            "Config reloads (SIGHUP, lb-ctl reload) since the daemon started: applied, or \
             refused (nothing of that config was applied).",
            None,
            [
                (
                    vec![("result", "applied".to_owned())],
                    s.status.reloads.applied,
                ),
                (
                    vec![("result", "refused".to_owned())],
                    s.status.reloads.refused,
                ),
            ],
        )?;
        gauge(
            e,
            "lb_config_last_reload_successful",
            "1 if the last config reload was applied (or none was tried), 0 if it was refused.",
            u64::from(s.status.reloads.last_successful),
        )?;

        // Listeners.
        let listeners: Vec<(Labels, &crate::api::ListenerStatus)> = s
            .status
            .listeners
            .iter()
            .map(|l| {
                (
                    vec![
                        ("listener", l.name.clone()),
                        ("vip", l.endpoint().to_string()),
                        ("protocol", l.protocol.name().to_owned()),
                    ],
                    l,
                )
            })
            .collect();
        info_family(
            e,
            "lb_listener",
            "Each listener with its scheduler and server group.",
            listeners.iter().map(|(labels, l)| {
                let mut labels = labels.clone();
                labels.push(("scheduler", l.scheduler.name().to_owned()));
                labels.push(("group", l.group.clone()));
                labels
            }),
        )?;
        counter_family(
            e,
            "lb_listener_packets",
            "Packets forwarded for the listener: client to backend (to_backend) and the \
             backends' replies translated back to the VIP (to_client).",
            None,
            listeners.iter().flat_map(|(labels, l)| {
                directions(labels, &l.stats, |c| c.packets, |c| c.reply_packets)
            }),
        )?;
        counter_family(
            e,
            "lb_listener",
            "IP bytes forwarded for the listener, by direction (see lb_listener_packets_total).",
            Some(&Unit::Bytes),
            listeners.iter().flat_map(|(labels, l)| {
                directions(labels, &l.stats, |c| c.bytes, |c| c.reply_bytes)
            }),
        )?;
        counter_family(
            e,
            "lb_listener_new_flows",
            "Flows the listener's scheduler created (TCP SYN, first UDP packet).",
            None,
            listeners
                .iter()
                .map(|(labels, l)| (labels.clone(), l.stats.new_flows)),
        )?;
        counter_family(
            e,
            "lb_listener_flow_pickups",
            "TCP flows picked up mid-stream through the Maglev table (no flow entry: after a \
             restart, a failover or an eviction).",
            None,
            listeners
                .iter()
                .map(|(labels, l)| (labels.clone(), l.stats.pickups)),
        )?;
        counter_family(
            e,
            "lb_listener_flows_reselected",
            "Flows moved off a backend that became unusable.",
            None,
            listeners
                .iter()
                .map(|(labels, l)| (labels.clone(), l.stats.reselected)),
        )?;
        counter_family(
            e,
            "lb_listener_dropped_packets",
            "Packets for the listener dropped (no usable backend, access list, drain expiry, \
             reverse-tuple collision); lb_xdp_packets_total says why.",
            None,
            listeners
                .iter()
                .map(|(labels, l)| (labels.clone(), l.stats.dropped)),
        )?;
        gauge_family(
            e,
            "lb_listener_active_flows",
            "Flows of the listener with no FIN/RST seen and used within their idle timeout, \
             as of the last flow-table sweep.",
            listeners.iter().map(|(labels, l)| {
                let active: u64 = l.backends.iter().map(|b| u64::from(b.active_flows)).sum();
                (labels.clone(), active)
            }),
        )?;

        // Backends: per (listener, backend), as health and weights are.
        let backends: Vec<(Labels, &crate::api::BackendStatus)> = s
            .status
            .listeners
            .iter()
            .flat_map(|l| {
                l.backends.iter().map(move |b| {
                    (
                        vec![
                            ("listener", l.name.clone()),
                            ("backend", b.endpoint().to_string()),
                        ],
                        b,
                    )
                })
            })
            .collect();
        info_family(
            e,
            "lb_backend",
            "Each backend of each listener with its role (member, primary, secondary) and \
             origin (config file or runtime API).",
            backends.iter().map(|(labels, b)| {
                let mut labels = labels.clone();
                labels.push(("role", b.role.clone()));
                labels.push(("origin", b.origin.clone()));
                labels
            }),
        )?;
        counter_family(
            e,
            "lb_backend_packets",
            "Packets forwarded to the backend (to_backend) and its replies translated back \
             to the VIP (to_client).",
            None,
            backends.iter().flat_map(|(labels, b)| {
                directions(labels, &b.stats, |c| c.packets, |c| c.reply_packets)
            }),
        )?;
        counter_family(
            e,
            "lb_backend",
            "IP bytes forwarded to and from the backend, by direction.",
            Some(&Unit::Bytes),
            backends.iter().flat_map(|(labels, b)| {
                directions(labels, &b.stats, |c| c.bytes, |c| c.reply_bytes)
            }),
        )?;
        counter_family(
            e,
            "lb_backend_new_flows",
            "Flows the scheduler sent to the backend.",
            None,
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), b.stats.new_flows)),
        )?;
        counter_family(
            e,
            "lb_backend_flow_pickups",
            "TCP flows picked up mid-stream onto the backend through the Maglev table.",
            None,
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), b.stats.pickups)),
        )?;
        counter_family(
            e,
            "lb_backend_flows_reselected",
            "Flows moved onto the backend from one that became unusable.",
            None,
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), b.stats.reselected)),
        )?;
        counter_family(
            e,
            "lb_backend_dropped_packets",
            "Packets of the backend's flows dropped (drain expiry).",
            None,
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), b.stats.dropped)),
        )?;
        gauge_family(
            e,
            "lb_backend_active_flows",
            "Flows on the backend with no FIN/RST seen and used within their idle timeout, \
             as of the last flow-table sweep.",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), u64::from(b.active_flows))),
        )?;
        gauge_family(
            e,
            "lb_backend_up",
            "Health of the backend for this listener: 1 up, 0 down (failed probes or held \
             down by flap damping).",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), u64::from(b.health == "up"))),
        )?;
        gauge_family(
            e,
            "lb_backend_state",
            "State of the backend, one series per state with 1 on the current one: up, \
             draining (weight 0 or being drained) or down.",
            backends.iter().flat_map(|(labels, b)| {
                ["up", "draining", "down"].map(|state| {
                    let mut l = labels.clone();
                    l.push(("state", state.to_owned()));
                    (l, u64::from(b.state == state))
                })
            }),
        )?;
        gauge_family(
            e,
            "lb_backend_weight",
            "Configured weight of the backend (0..=100).",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), u64::from(b.weight))),
        )?;
        gauge_family(
            e,
            "lb_backend_effective_weight",
            "Weight the selection tables give the backend while it is usable: the \
             configured weight, lowered during a slow-start ramp.",
            backends
                .iter()
                .map(|(labels, b)| (labels.clone(), u64::from(b.effective_weight))),
        )?;

        // What the XDP program did with every packet, and its events.
        counter_family(
            e,
            "lb_xdp_packets",
            "Packets by what the XDP program did with them (verdict pass, drop or transmit) \
             and why (reason); every packet is counted once. See docs/packet-policy.md.",
            None,
            s.reasons.iter().filter_map(|(r, n)| {
                let verdict = match r.verdict()? {
                    Verdict::Pass => "pass",
                    Verdict::Drop => "drop",
                    Verdict::Transmit => "transmit",
                };
                Some((
                    vec![
                        ("reason", r.name().to_owned()),
                        ("verdict", verdict.to_owned()),
                    ],
                    *n,
                ))
            }),
        )?;
        counter_family(
            e,
            "lb_xdp_events",
            "Events of the XDP program that are not verdicts (new flow, mid-flow pickup, \
             reselection, persistence hit, flow-table insert), by reason.",
            None,
            s.reasons
                .iter()
                .filter(|(r, _)| r.verdict().is_none())
                .map(|(r, n)| (vec![("reason", r.name().to_owned())], *n)),
        )?;

        // The flow table.
        let ft = &s.status.flow_table;
        gauge(
            e,
            "lb_flow_table_entries",
            "Entries in the flow table (active or idle) as the last sweep counted them.",
            ft.entries,
        )?;
        gauge(
            e,
            "lb_flow_table_capacity",
            "Size of the flow table (flow_table_size); the LRU evicts the least recently \
             used entry to make room beyond it.",
            u64::from(ft.capacity),
        )?;
        gauge(
            e,
            "lb_flow_table_evictions_estimate",
            "Estimate of the entries the LRU has evicted: flow entries ever created minus \
             entries present at the last sweep. A gauge, not a counter: flows created since \
             that sweep count until the next one, so it can step back a little.",
            ft.evicted,
        )?;

        // The Maglev array.
        gauge(
            e,
            "lb_maglev_slots_capacity",
            "Slots of the Maglev array all listeners' tables share (maglev_slots).",
            u64::from(s.status.maglev.capacity),
        )?;
        gauge(
            e,
            "lb_maglev_slots_reserved",
            "Slots of the Maglev array the listeners reserve: two tables of each one's \
             maglev_table_size. A listener whose tables would not fit is refused.",
            s.status.maglev.reserved,
        )?;

        // Health probes.
        if let Some(p) = &s.probes {
            histogram(
                e,
                "lb_health_probe_duration",
                "Duration of every health probe, successful or not.",
                &p.latency,
            )?;
            histogram(
                e,
                "lb_health_probe_dispatch_lag",
                "How late probes started against their schedule; the checker keeps up while \
                 this stays in the lowest buckets.",
                &p.dispatch_lag,
            )?;
            counter_family(
                e,
                "lb_health_probes",
                "Health probes finished, by result (ok or failed).",
                None,
                [
                    (vec![("result", "ok".to_owned())], p.ok),
                    (vec![("result", "failed".to_owned())], p.failed),
                ],
            )?;
            gauge(
                e,
                "lb_health_probes_in_flight",
                "Health probes running now.",
                p.in_flight as u64,
            )?;
        }

        // BGP, with a `bgp` section only.
        if let Some(bgp) = &s.status.bgp {
            gauge_family(
                e,
                "lb_bgp_session_established",
                "1 while the BGP session with the neighbor is established (the VIPs of the \
                 neighbor's family are announced on it), 0 otherwise.",
                bgp.sessions.iter().map(|x| {
                    let neighbor = x.neighbor.map_or_else(|| x.name.clone(), |n| n.to_string());
                    (
                        vec![("neighbor", neighbor)],
                        u64::from(x.state == SessionState::Established),
                    )
                }),
            )?;
            let vips: BTreeSet<IpAddr> = bgp
                .healthy_vips
                .iter()
                .chain(&bgp.announced)
                .copied()
                .collect();
            gauge_family(
                e,
                "lb_bgp_vip_announced",
                "1 while BIRD offers the VIP to its neighbors of the VIP's family, 0 while it \
                 has a healthy backend but is not offered (host drained, BIRD down or \
                 reconfiguring).",
                vips.into_iter().map(|vip| {
                    (
                        vec![("address", vip.to_string())],
                        u64::from(bgp.announced.contains(&vip)),
                    )
                }),
            )?;
            gauge(
                e,
                "lb_bgp_host_drained",
                "1 while `lb-ctl drain-host` withdraws every VIP.",
                u64::from(bgp.host_drained),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::{BackendStatus, FlowTableStatus, InterfaceStatus, ListenerStatus};

    fn sample() -> Sample {
        let backend = |last: u8, state: &str, health: &str| BackendStatus {
            address: std::net::Ipv4Addr::new(198, 18, 1, last).into(),
            port: 8080,
            role: "member".into(),
            weight: 100,
            effective_weight: if state == "up" { 100 } else { 0 },
            state: state.into(),
            health: health.into(),
            probed: true,
            last_probe: Some("ok".into()),
            last_probe_ms: Some(0.2),
            since_change_s: None,
            held_down_s: None,
            flaps: 0,
            drain_left_s: None,
            departing: false,
            active_flows: 3,
            origin: "config".into(),
            backend_id: u32::from(last),
            stats: Counters {
                packets: 10,
                bytes: 1000,
                reply_packets: 8,
                reply_bytes: 9000,
                new_flows: 2,
                ..Counters::default()
            },
        };
        let mut latency = Histogram::default();
        latency.observe(Duration::from_micros(300));
        latency.observe(Duration::from_millis(20));
        Sample {
            version: "0.1.0",
            status: Status {
                instance: "demo".into(),
                interfaces: vec![InterfaceStatus {
                    name: "eth0".into(),
                    ifindex: 2,
                    mode: "native".into(),
                }],
                listeners: vec![ListenerStatus {
                    name: "web".into(),
                    protocol: crate::config::Protocol::Tcp,
                    address: std::net::Ipv4Addr::new(198, 19, 0, 100).into(),
                    port: 80,
                    group: "default".into(),
                    scheduler: lb_common::Scheduler::Wrr,
                    backends: vec![backend(11, "up", "up"), backend(12, "down", "down")],
                    stats: Counters {
                        packets: 20,
                        new_flows: 4,
                        ..Counters::default()
                    },
                }],
                flow_table: FlowTableStatus {
                    capacity: 1024,
                    entries: 4,
                    evicted: 1,
                },
                ..Status::default()
            },
            reasons: Reason::ALL.iter().map(|r| (*r, *r as u64)).collect(),
            probes: Some(ProbeSample {
                latency,
                ok: 5,
                failed: 1,
                ..ProbeSample::default()
            }),
        }
    }

    #[test]
    fn exposition_has_descriptors_series_and_eof() {
        let text = encode(sample()).unwrap();
        for line in [
            "# TYPE lb_backend_packets counter",
            "# TYPE lb_backend_bytes counter",
            "# UNIT lb_backend_bytes bytes",
            "# TYPE lb_health_probe_duration_seconds histogram",
            "lb_backend_packets_total{listener=\"web\",backend=\"198.18.1.11:8080\",direction=\"to_backend\"} 10",
            "lb_backend_bytes_total{listener=\"web\",backend=\"198.18.1.12:8080\",direction=\"to_client\"} 9000",
            "lb_backend_up{listener=\"web\",backend=\"198.18.1.12:8080\"} 0",
            "lb_backend_state{listener=\"web\",backend=\"198.18.1.12:8080\",state=\"down\"} 1",
            "lb_listener_packets_total{listener=\"web\",vip=\"198.19.0.100:80\",protocol=\"tcp\",direction=\"to_backend\"} 20",
            "lb_listener_active_flows{listener=\"web\",vip=\"198.19.0.100:80\",protocol=\"tcp\"} 6",
            "lb_xdp_packets_total{reason=\"drop_no_backend\",verdict=\"drop\"} 14",
            "lb_xdp_events_total{reason=\"event_new_flow\"} 22",
            "lb_flow_table_evictions_estimate 1",
            "lb_health_probe_duration_seconds_bucket{le=\"0.001\"} 1",
            "lb_health_probe_duration_seconds_bucket{le=\"0.05\"} 2",
            "lb_health_probe_duration_seconds_bucket{le=\"+Inf\"} 2",
            "lb_health_probe_duration_seconds_count 2",
            "lb_health_probes_total{result=\"failed\"} 1",
            "lb_instance_info{instance=\"demo\",version=\"0.1.0\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        // Every reason is reported exactly once, under packets or events.
        for r in Reason::ALL {
            let needle = format!("{{reason=\"{}\"", r.name());
            assert_eq!(
                text.matches(&needle).count(),
                1,
                "reason {} in:\n{text}",
                r.name()
            );
        }
    }

    /// BGP's families only with a `bgp` section: sessions of both families by neighbor
    /// address, and each VIP as an address (no port, so no brackets).
    #[test]
    fn bgp_sessions_and_vips_of_both_families() {
        use crate::bgp::{BgpStatus, Session};
        assert!(!encode(sample()).unwrap().contains("lb_bgp_"));
        let session = |neighbor: Option<&str>, name: &str, state| Session {
            name: name.to_owned(),
            neighbor: neighbor.map(|n| n.parse().unwrap()),
            state,
            since: "2026-12-06 12:58:55".to_owned(),
            info: String::new(),
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let mut s = sample();
        s.status.bgp = Some(BgpStatus {
            host_drained: false,
            healthy_vips: vec![ip("198.19.0.100"), ip("2001:db8:19::100")],
            announced: vec![ip("2001:db8:19::100")],
            sessions: vec![
                session(Some("198.18.2.1"), "bgp_198_18_2_1", SessionState::Active),
                session(
                    Some("2001:db8:2::1"),
                    "bgp_2001_db8_2__1",
                    SessionState::Established,
                ),
                session(None, "bgp_2001_db8_2__2", SessionState::Established),
            ],
            bird_pid: Some(42),
            bird_restarts: 0,
            problem: None,
        });
        let text = encode(s).unwrap();
        for line in [
            "# TYPE lb_bgp_session_established gauge",
            "lb_bgp_session_established{neighbor=\"198.18.2.1\"} 0",
            "lb_bgp_session_established{neighbor=\"2001:db8:2::1\"} 1",
            "lb_bgp_session_established{neighbor=\"bgp_2001_db8_2__2\"} 1",
            "lb_bgp_vip_announced{address=\"198.19.0.100\"} 0",
            "lb_bgp_vip_announced{address=\"2001:db8:19::100\"} 1",
            "lb_bgp_host_drained 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    /// Labels name an IPv6 VIP or backend as `lb-ctl status` shows it, in brackets, so a
    /// label never reads as an address whose last group is the port.
    #[test]
    fn ipv6_endpoints_are_bracketed_in_labels() {
        let mut s = sample();
        let web = &mut s.status.listeners[0];
        web.address = "2001:db8::100".parse().unwrap();
        web.backends[0].address = "2001:db8::11".parse().unwrap();
        let text = encode(s).unwrap();
        for line in [
            "lb_backend_up{listener=\"web\",backend=\"[2001:db8::11]:8080\"} 1",
            "lb_listener_active_flows{listener=\"web\",vip=\"[2001:db8::100]:80\",protocol=\"tcp\"} 6",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }
}
