use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

use super::*;
use crate::{
    config::{FlapDamping, HealthCheck, Protocol},
    plan::Frontend,
};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn target(listener_port: u16, address: Ipv4Addr, port: u16) -> Target {
    Target {
        key: BackendKey {
            frontend: Frontend {
                address: Ipv4Addr::new(198, 19, 0, 100).into(),
                port: listener_port,
                protocol: Protocol::Tcp,
            },
            address: address.into(),
            port,
        },
        listener: format!("l{listener_port}"),
        address: address.into(),
        port,
        check: HealthCheck {
            interval: 1,
            timeout: 1,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..HealthCheck::default()
        },
        kind: HealthCheckKind::Tcp,
        probe: true,
        weight: 100,
        slow_start: 0,
        tunnel: None,
    }
}

fn backend(n: u8) -> Target {
    target(80, Ipv4Addr::new(198, 18, 1, n), 8080)
}

/// Runs one round of `inner` at `at`: every due probe gets `result`.
fn round(
    inner: &mut Inner,
    at: Instant,
    result: impl Fn(&BackendKey) -> Result<(), ProbeError>,
) -> Vec<Transition> {
    let (due, _) = inner.pop_due(at, usize::MAX);
    due.iter()
        .filter_map(|d| {
            inner.release(d, at);
            inner.finish(
                d,
                at,
                Duration::from_millis(1),
                result(&d.key),
                at,
                SystemTime::now(),
            )
        })
        .collect()
}

fn health(inner: &Inner, key: &BackendKey) -> BackendHealth {
    let s = inner.snapshot(Instant::now(), SystemTime::now());
    s.backends.into_iter().find(|b| b.key == *key).unwrap()
}

#[test]
fn every_target_is_probed_once_per_interval_with_jitter() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    inner.replace_targets((1..=200).map(backend).collect(), t0);
    // The first round spreads over the first interval.
    let (first, next) = inner.pop_due(t0 + Duration::from_millis(500), usize::MAX);
    assert!((40..=160).contains(&first.len()), "{} of 200", first.len());
    assert!(next.is_some_and(|n| n > t0 + Duration::from_millis(500)));
    // A scheduler waking every 10 ms for 5 s: every target on its own cadence, 0.9 to
    // 1.1 intervals apart, in sequence.
    // Each probe ends at once.
    let mut dues: HashMap<BackendKey, Vec<(Instant, u64)>> = HashMap::new();
    for d in &first {
        inner.release(d, t0 + Duration::from_millis(500));
        dues.entry(d.key).or_default().push((d.due, d.seq));
    }
    for tick in 51..=500 {
        let at = t0 + Duration::from_millis(10 * tick);
        let (due, _) = inner.pop_due(at, usize::MAX);
        for d in due {
            inner.release(&d, at);
            dues.entry(d.key).or_default().push((d.due, d.seq));
        }
    }
    assert_eq!(dues.len(), 200);
    for probes in dues.values() {
        assert!(probes[0].0 < t0 + Duration::from_secs(1));
        assert!((4..=6).contains(&probes.len()), "{}", probes.len());
        for (i, pair) in probes.windows(2).enumerate() {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap >= Duration::from_millis(900) && gap <= Duration::from_millis(1100),
                "{gap:?}"
            );
            assert_eq!(pair[0].1, i as u64 + 1);
        }
    }
    // Batches are bounded.
    let (batch, _) = inner.pop_due(t0 + Duration::from_secs(10), 7);
    assert_eq!(batch.len(), 7);
}

#[test]
fn thresholds_drive_transitions_once() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    let a = backend(1);
    let key = a.key;
    inner.replace_targets(vec![a], t0);
    let sec = |n: u64| t0 + Duration::from_secs(2 * n);
    assert!(round(&mut inner, sec(1), |_| Err(ProbeError::Refused)).is_empty());
    let down = round(&mut inner, sec(2), |_| Err(ProbeError::Refused));
    assert_eq!(down.len(), 1);
    assert!(!down[0].healthy);
    assert_eq!(down[0].reason, "refused (2 consecutive failures)");
    assert_eq!(down[0].listener, "l80");
    assert!(round(&mut inner, sec(3), |_| Err(ProbeError::Timeout)).is_empty());
    let h = health(&inner, &key);
    assert_eq!(h.state, HealthState::Down);
    assert_eq!(h.consecutive_failures, 3);
    assert_eq!(h.last_probe.as_ref().unwrap().reason(), "timeout");
    assert!(h.last_change.is_some());
    assert_eq!(inner.probes_failed, 3);
    assert!(round(&mut inner, sec(4), |_| Ok(())).is_empty());
    let up = round(&mut inner, sec(5), |_| Ok(()));
    assert_eq!(up.len(), 1);
    assert!(up[0].healthy);
    assert_eq!(up[0].reason, "ok (2 consecutive successes)");
    assert_eq!(inner.latency.count(), 5);
}

#[test]
fn one_probe_per_target_in_flight_and_a_slow_one_delays_only_its_target() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    let (slow, fast) = (backend(1), backend(2));
    let (slow_key, fast_key) = (slow.key, fast.key);
    inner.replace_targets(vec![slow, fast], t0);
    let sec = |n: u64| t0 + Duration::from_secs(n);
    let (first, _) = inner.pop_due(sec(1), usize::MAX);
    assert_eq!(first.len(), 2);
    let slow_probe = first.iter().find(|d| d.key == slow_key).unwrap();
    let fast_probe = first.iter().find(|d| d.key == fast_key).unwrap();
    assert!(!inner.release(fast_probe, sec(1)));
    // Ten intervals later the slow target's probe still runs: the fast one was probed
    // every round, the slow one never again.
    let mut fast_rounds = 0;
    for tick in 11..=110 {
        let at = t0 + Duration::from_millis(100 * tick);
        let (due, next) = inner.pop_due(at, usize::MAX);
        assert!(next.is_some(), "the fast target stays scheduled");
        for d in due {
            assert_eq!(d.key, fast_key, "a second probe of the slow target");
            assert!(!inner.release(&d, at));
            fast_rounds += 1;
        }
    }
    assert!((9..=11).contains(&fast_rounds), "{fast_rounds}");
    // The slow probe ends: its overdue round is queued for that moment, once.
    assert!(inner.release(slow_probe, sec(11)));
    inner.finish(
        slow_probe,
        sec(1),
        Duration::from_secs(10),
        Err(ProbeError::Timeout),
        sec(11),
        SystemTime::now(),
    );
    let (due, _) = inner.pop_due(sec(11), usize::MAX);
    let slow_again: Vec<_> = due.iter().filter(|d| d.key == slow_key).collect();
    assert_eq!(slow_again.len(), 1);
    assert_eq!(slow_again[0].due, sec(11));
    assert_eq!(slow_again[0].seq, 2);
    assert_eq!(health(&inner, &slow_key).consecutive_failures, 1);
}

#[test]
fn set_targets_keeps_the_state_of_unchanged_targets() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    let (a, b, c) = (backend(1), backend(2), backend(3));
    inner.replace_targets(vec![a.clone(), b.clone(), c.clone()], t0);
    let down_keys = [a.key, b.key];
    for s in 1..=2 {
        round(&mut inner, t0 + Duration::from_secs(2 * s), |k| {
            if down_keys.contains(k) {
                Err(ProbeError::Refused)
            } else {
                Ok(())
            }
        });
    }
    let down: BTreeSet<BackendKey> = down_keys.into_iter().collect();
    let unhealthy: BTreeSet<BackendKey> = inner
        .entries
        .iter()
        .filter(|(_, e)| !e.machine.is_up())
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(unhealthy, down);

    // a: unchanged but for its weight; b: its check changes; c: removed; d: new.
    let mut a2 = a.clone();
    a2.weight = 50;
    a2.slow_start = 60;
    let mut b2 = b.clone();
    b2.check.port = Some(9090);
    let d = backend(4);
    let now = t0 + Duration::from_secs(5);
    let transitions = inner.replace_targets(vec![a2, b2, d.clone()], now);
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert_eq!(transitions[0].key, b.key);
    assert!(transitions[0].healthy);
    assert_eq!(transitions[0].reason, "health check changed");

    let ha = health(&inner, &a.key);
    assert_eq!(ha.state, HealthState::Down, "state kept");
    assert_eq!(ha.consecutive_failures, 2);
    assert_eq!(inner.entries[&a.key].target.weight, 50, "weight updated");
    let hb = health(&inner, &b.key);
    assert_eq!((hb.state, hb.consecutive_failures), (HealthState::Up, 0));
    assert!(!inner.entries.contains_key(&c.key));
    assert_eq!(
        health(&inner, &d.key).state,
        HealthState::Up,
        "new targets start up"
    );

    // a keeps its schedule: its next probe is its third (seq 3); b and d start afresh.
    let (due, _) = inner.pop_due(now + Duration::from_secs(2), usize::MAX);
    let seq = |k: &BackendKey| due.iter().find(|x| x.key == *k).map(|x| x.seq);
    assert_eq!(seq(&a.key), Some(3));
    assert_eq!(seq(&b.key), Some(1));
    assert_eq!(seq(&d.key), Some(1));
    assert_eq!(seq(&c.key), None, "removed targets are no longer probed");
    assert_eq!(due.len(), 3);
    assert_eq!(
        inner.entries[&b.key].probe.as_ref().unwrap().target.port(),
        9090
    );
}

#[test]
fn unprobed_targets_are_always_up() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    let mut secondary = backend(1);
    secondary.probe = false;
    let mut none = backend(2);
    none.kind = HealthCheckKind::None;
    inner.replace_targets(vec![secondary.clone(), none], t0);
    let (due, next) = inner.pop_due(t0 + Duration::from_secs(100), usize::MAX);
    assert!(due.is_empty());
    assert_eq!(next, None);
    let h = health(&inner, &secondary.key);
    assert!(!h.probed);
    assert_eq!(h.state, HealthState::Up);

    // A probed secondary that went down, then unprobed (probe_secondary turned off):
    // it comes back up, and the controller hears so.
    let mut probed = secondary.clone();
    probed.probe = true;
    inner.replace_targets(vec![probed], t0);
    for s in 1..=2 {
        round(&mut inner, t0 + Duration::from_secs(2 * s), |_| {
            Err(ProbeError::Refused)
        });
    }
    let t = inner.replace_targets(vec![secondary.clone()], t0 + Duration::from_secs(5));
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].healthy, t[0].reason.as_str()),
        (true, "no longer probed")
    );
}

#[test]
fn slow_start_ramps_added_and_recovered_backends() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    let mut a = backend(1);
    a.slow_start = 10;
    // The initial targets were already serving: no ramp.
    inner.replace_targets(vec![a.clone()], t0);
    assert_eq!(inner.ramping(t0), []);
    // An added one ramps from 1 to its weight.
    let mut b = backend(2);
    b.slow_start = 10;
    inner.replace_targets(vec![a.clone(), b.clone()], t0);
    assert_eq!(inner.ramping(t0), [(b.key, 1)]);
    assert_eq!(inner.ramping(t0 + Duration::from_secs(5)), [(b.key, 50)]);
    assert_eq!(inner.ramping(t0 + Duration::from_secs(10)), []);
    // A recovered one ramps from the moment it came up.
    let sec = |n: u64| t0 + Duration::from_secs(2 * n);
    for s in 11..=12 {
        round(&mut inner, sec(s), |_| Err(ProbeError::Refused));
    }
    assert_eq!(inner.ramping(sec(12)), [], "down backends do not ramp");
    round(&mut inner, sec(13), |_| Ok(()));
    let up = round(&mut inner, sec(14), |_| Ok(()));
    assert_eq!(up.len(), 2);
    let mut ramps = inner.ramping(sec(16));
    ramps.sort_unstable();
    let w = slow_start_weight(100, Duration::from_secs(4), 10);
    assert_eq!(ramps, [(a.key, w), (b.key, w)]);
    let snap = inner.snapshot(sec(16), SystemTime::now());
    assert!(snap.backends.iter().all(|b| b.slow_start_weight == Some(w)));
}

#[test]
fn snapshot_shows_holds_and_flaps() {
    let mut inner = Inner::new(None);
    let t0 = Instant::now();
    let mut a = backend(1);
    a.check.flap_damping = Some(FlapDamping {
        max_flaps: 1,
        window: 60,
        hold: 600,
    });
    inner.replace_targets(vec![a.clone()], t0);
    let sec = |n: u64| t0 + Duration::from_secs(2 * n);
    round(&mut inner, sec(1), |_| Err(ProbeError::Refused));
    let down = round(&mut inner, sec(2), |_| Err(ProbeError::Refused));
    assert_eq!(down.len(), 1);
    round(&mut inner, sec(3), |_| Ok(()));
    // The second flap exceeds max_flaps: held down, no transition.
    assert!(round(&mut inner, sec(4), |_| Ok(())).is_empty());
    let wall = SystemTime::now();
    let s = inner.snapshot(sec(4), wall);
    let h = &s.backends[0];
    assert_eq!(
        h.state,
        HealthState::HeldDown {
            until: wall + Duration::from_secs(600)
        }
    );
    assert_eq!(h.state.name(), "held down");
    assert_eq!(h.consecutive_successes, 2);
    assert_eq!(s.probes_ok, 2);
    let held: Vec<_> = inner
        .entries
        .values()
        .filter(|e| !e.machine.is_up())
        .collect();
    assert_eq!(held.len(), 1);
}

async fn wait_for(rx: &mut mpsc::UnboundedReceiver<Transition>, healthy: bool) -> Transition {
    let t = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a transition within 15 s")
        .expect("the checker is running");
    assert_eq!(t.healthy, healthy, "{t:?}");
    t
}

#[tokio::test]
async fn checker_takes_a_dead_backend_out_and_back_in() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let accept = |l: TcpListener| {
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        })
    };
    let server = accept(listener);
    let (checker, mut rx) = Checker::new(CheckerOptions {
        source: Some(LOCALHOST.into()),
        max_in_flight: 4,
    });
    let t = target(80, LOCALHOST, addr.port());
    let key = t.key;
    checker.set_targets(vec![t]);
    // Wait for two successful probes (bounded by the 15 s below).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while checker.snapshot().probes_ok < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no probes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.try_recv().is_err(), "no transition while steady");

    server.abort();
    let _ = server.await;
    let down = wait_for(&mut rx, false).await;
    assert_eq!(down.key, key);
    assert_eq!(down.reason, "refused (2 consecutive failures)");
    assert_eq!(checker.unhealthy(), BTreeSet::from([key]));
    let snap = checker.snapshot();
    assert_eq!(snap.backends[0].state, HealthState::Down);
    assert_eq!(
        snap.backends[0].last_probe.as_ref().unwrap().reason(),
        "refused"
    );

    let server = accept(TcpListener::bind(addr).await.unwrap());
    let up = wait_for(&mut rx, true).await;
    assert_eq!(up.reason, "ok (2 consecutive successes)");
    assert!(checker.unhealthy().is_empty());

    checker.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probes = checker.snapshot().probes_ok;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        checker.snapshot().probes_ok,
        probes,
        "no probe after shutdown"
    );
    server.abort();
}

/// Twenty HTTP backends that accept and never answer, probed every second with a 300 s
/// timeout, on a checker with fewer permits than a probe per round would pile up: a
/// backend that dies next to them is still taken out within its own bound.
#[tokio::test]
async fn backends_that_never_answer_do_not_delay_another_backends_failure() {
    const HUNG: usize = 20;
    let mut hung = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..HUNG {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        hung.push(listener.local_addr().unwrap().port());
        servers.push(tokio::spawn(async move {
            // Accepted connections are kept open, and never answered.
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }));
    }
    let dead_port = {
        let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        l.local_addr().unwrap().port()
    };
    let http = |port: u16| {
        let mut t = target(80, LOCALHOST, port);
        t.kind = HealthCheckKind::Http;
        t.check.timeout = 300;
        t
    };
    let (checker, mut rx) = Checker::new(CheckerOptions {
        source: Some(LOCALHOST.into()),
        max_in_flight: 2 * HUNG,
    });
    let mut targets: Vec<Target> = hung.iter().map(|&p| http(p)).collect();
    checker.set_targets(targets.clone());
    // Three rounds: a probe per round and target would hold 60 of the 40 permits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let in_flight = checker.snapshot().in_flight;
    assert!(
        in_flight <= HUNG,
        "{in_flight} probes in flight for {HUNG} targets"
    );

    let dead = http(dead_port);
    let dead_key = dead.key;
    targets.push(dead);
    let added = tokio::time::Instant::now();
    checker.set_targets(targets);
    let down = wait_for(&mut rx, false).await;
    assert_eq!(down.key, dead_key);
    // Its own bound: interval × unhealthy_threshold, plus a first probe within one
    // interval and the jitter.
    let took = added.elapsed();
    assert!(took <= Duration::from_millis(3500), "down after {took:?}");
    assert!(checker.snapshot().in_flight <= HUNG);
    checker.shutdown();
    for s in servers {
        s.abort();
    }
}

#[test]
fn checker_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Checker>();
    shareable::<Snapshot>();
}

/// `health_check_source` gives one address per family: a probe goes out from the one of
/// its backend's family, and the kernel picks when the family has none.
#[test]
fn probes_take_the_source_of_their_family() {
    let v4 = Ipv4Addr::new(198, 18, 1, 1);
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let t0 = Instant::now();
    let source_of_a_probe = |source| {
        let mut inner = Inner::new(source);
        inner.replace_targets(vec![backend(1)], t0);
        let (batch, _) = inner.pop_due(t0 + Duration::from_secs(10), 8);
        batch[0].source
    };
    let both = HealthCheckSource::new(Some(v4), Some(v6));
    assert_eq!(source_of_a_probe(both), Some(v4.into()));
    assert_eq!(source_of_a_probe(Some(v6.into())), None);
    assert_eq!(source_of_a_probe(None), None);
}
