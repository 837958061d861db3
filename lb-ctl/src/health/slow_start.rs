//! Slow start: a recovered or added backend's weight ramps up linearly instead of taking
//! its full share of new flows at once, so a cold cache or a JIT still warming up is not
//! flooded.

use std::time::Duration;

/// The weight a backend gets `since` after it recovered or was added, ramping linearly
/// from 1 to `weight` over `slow_start_s` seconds.
///
/// Weight 0 stays 0 (a drained backend gets no new flows, ramp or not); `slow_start_s`
/// 0 means full weight at once. The ramp starts at 1 rather than 0 so the backend is in
/// the selection tables from the first instant: it is healthy, and a backend that takes
/// no flow at all cannot warm up.
pub fn slow_start_weight(weight: u32, since: Duration, slow_start_s: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    let ramp_ms = u128::from(slow_start_s) * 1000;
    let since_ms = since.as_millis();
    if since_ms >= ramp_ms {
        return weight;
    }
    // Millisecond steps in integers: the same inputs give the same weight everywhere,
    // and `since_ms < ramp_ms` keeps the result below `weight`.
    let extra = u128::from(weight - 1) * since_ms / ramp_ms;
    1 + u32::try_from(extra).unwrap_or(weight - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(weight: u32, since_ms: u64, slow_start_s: u32) -> u32 {
        slow_start_weight(weight, Duration::from_millis(since_ms), slow_start_s)
    }

    #[test]
    fn ramps_linearly_from_one_to_the_weight() {
        assert_eq!(w(100, 0, 100), 1);
        assert_eq!(w(100, 1_000, 100), 1, "99 × 1/100 rounds down");
        assert_eq!(w(100, 2_000, 100), 2);
        assert_eq!(w(100, 50_000, 100), 50);
        assert_eq!(w(100, 99_999, 100), 99);
        assert_eq!(w(100, 100_000, 100), 100);
        assert_eq!(w(100, 1_000_000, 100), 100);
        assert_eq!(w(11, 5_000, 10), 6);
        // Never decreasing over time.
        let mut last = 0;
        for ms in (0..=30_000).step_by(250) {
            let now = w(37, ms, 30);
            assert!(now >= last && (1..=37).contains(&now), "{ms} ms: {now}");
            last = now;
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(w(0, 0, 60), 0, "drained stays drained");
        assert_eq!(w(0, 120_000, 60), 0);
        assert_eq!(w(80, 0, 0), 80, "no slow start: full weight at once");
        assert_eq!(w(1, 0, 60), 1);
        assert_eq!(w(u32::MAX, 300_000, 600), u32::MAX / 2 + 1);
    }
}
