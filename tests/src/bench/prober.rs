//! The benchmark driver for the health checker's capacity promise (10,000 backends at a
//! 1 s interval on one core): the controller's own `Checker`, probing targets on a local
//! listener. [`super::control`] runs [`capacity_probe`] on a tokio `current_thread` runtime
//! pinned to one CPU, so everything (scheduler, probes, the local server) shares one core.
//!
//! Every probe is a real TCP handshake over loopback, closed with a RST as in
//! production. The open-file limit must exceed `max_in_flight` plus the sockets the
//! local server has not yet accepted and closed.

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_ctl::{
    config::{HealthCheck, HealthCheckKind, Protocol},
    health::{Checker, CheckerOptions, Histogram, Target},
    plan::{BackendKey, Frontend},
};
use tokio::net::TcpSocket;

/// What `capacity_probe` measured.
#[derive(Clone, Debug)]
pub struct CapacityReport {
    pub targets: usize,
    pub interval: Duration,
    pub duration: Duration,
    /// Probes completed during the measurement.
    pub probes: u64,
    pub failures: u64,
    pub probes_per_second: f64,
    /// `targets / interval`: what keeping up means.
    pub expected_per_second: f64,
    pub latency: Histogram,
    /// How late probes started against their schedule.
    pub dispatch_lag: Histogram,
}

impl CapacityReport {
    /// The checker kept up: at least 95% of the scheduled rate, no failed probe, and at
    /// least 99% of the probes started within 100 ms of their due time (a tenth of the
    /// smallest interval, well inside the ±10% jitter).
    pub fn keeps_up(&self) -> bool {
        let lag_ok = self
            .dispatch_lag
            .cumulative()
            .iter()
            .find(|(le, _)| *le >= 0.1)
            .is_some_and(|(_, n)| *n as f64 >= 0.99 * self.dispatch_lag.count() as f64);
        self.probes_per_second >= 0.95 * self.expected_per_second && self.failures == 0 && lag_ok
    }
}

impl fmt::Display for CapacityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean = |h: &Histogram| h.sum().as_secs_f64() * 1000.0 / h.count().max(1) as f64;
        write!(
            f,
            "{} targets every {:?} for {:?}: {} probes ({:.0}/s of {:.0}/s expected), \
             {} failed, mean latency {:.3} ms, mean dispatch lag {:.3} ms",
            self.targets,
            self.interval,
            self.duration,
            self.probes,
            self.probes_per_second,
            self.expected_per_second,
            self.failures,
            mean(&self.latency),
            mean(&self.dispatch_lag),
        )
    }
}

/// Runs `targets` TCP targets, each probed every `interval_s` seconds, against one local
/// listener on 127.0.0.1 for one warm-up interval plus `duration`, and reports the
/// probes completed during `duration`. Runs on the caller's runtime.
pub async fn capacity_probe(
    targets: usize,
    interval_s: u32,
    duration: Duration,
    max_in_flight: usize,
) -> io::Result<CapacityReport> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    // A deep accept queue: the server shares the core with the prober and may accept
    // in bursts.
    let listener = socket.listen(4096)?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => drop(stream),
                // A probe's RST can abort a connection before it is accepted; other
                // errors (out of files) pass when probes finish, so retry after a pause
                // rather than spin.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });

    let interval_s = interval_s.max(1);
    let check = HealthCheck {
        kind: Some(HealthCheckKind::Tcp),
        interval: interval_s,
        timeout: 1,
        ..HealthCheck::default()
    };
    let all: Vec<Target> = (0..targets)
        .map(|i| {
            // Distinct keys: one listener (frontend) per target, all on the same backend.
            let frontend = Frontend {
                address: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i as u32 >> 16))
                    .into(),
                port: (i & 0xffff) as u16,
                protocol: Protocol::Tcp,
            };
            Target {
                key: BackendKey {
                    frontend,
                    address: Ipv4Addr::LOCALHOST.into(),
                    port,
                },
                listener: format!("bench{i}"),
                address: Ipv4Addr::LOCALHOST.into(),
                port,
                check: check.clone(),
                kind: HealthCheckKind::Tcp,
                probe: true,
                weight: 100,
                slow_start: 0,
                tunnel: None,
            }
        })
        .collect();

    let (checker, _transitions) = Checker::new(CheckerOptions {
        source: None,
        max_in_flight,
    });
    checker.set_targets(all);
    let interval = Duration::from_secs(interval_s.into());
    // The first round spreads over one interval; measure the steady state after it.
    tokio::time::sleep(interval).await;
    let before = checker.snapshot();
    tokio::time::sleep(duration).await;
    let after = checker.snapshot();
    checker.shutdown();
    server.abort();

    let probes =
        (after.probes_ok + after.probes_failed) - (before.probes_ok + before.probes_failed);
    let seconds = duration.as_secs_f64().max(f64::EPSILON);
    Ok(CapacityReport {
        targets,
        interval,
        duration,
        probes,
        failures: after.probes_failed - before.probes_failed,
        probes_per_second: probes as f64 / seconds,
        expected_per_second: targets as f64 / interval.as_secs_f64(),
        latency: after.latency,
        dispatch_lag: after.dispatch_lag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_run_probes_every_target() {
        let report = capacity_probe(100, 1, Duration::from_secs(2), 64)
            .await
            .unwrap();
        assert_eq!(report.failures, 0, "{report}");
        // Not a timing assertion: only that the rounds happened (about 200 probes).
        assert!(report.probes >= 100, "{report}");
        assert!(report.latency.count() >= report.probes);
    }
}
