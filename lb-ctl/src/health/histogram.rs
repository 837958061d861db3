//! A fixed-bucket histogram of durations, in the shape of a Prometheus histogram.

use std::time::Duration;

/// Upper bounds of the buckets, in seconds; a last, implicit bucket is +Inf. They span a
/// probe on the same LAN (well under a millisecond) up to the longest useful timeouts.
pub const BUCKETS_S: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    counts: [u64; BUCKETS_S.len() + 1],
    sum: Duration,
}

impl Histogram {
    pub fn observe(&mut self, value: Duration) {
        let s = value.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of all observations.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// `(upper bound in seconds, cumulative count)` per bucket, as Prometheus `le`
    /// buckets; the last bound is `f64::INFINITY` and its count equals `count()`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let bounds = BUCKETS_S.iter().copied().chain([f64::INFINITY]);
        let mut total = 0;
        bounds
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let mut h = Histogram::default();
        for ms in [0, 1, 2, 7, 400, 1000, 9000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum(), Duration::from_millis(10_410));
        let c = h.cumulative();
        assert_eq!(c.len(), 9);
        assert_eq!(c[0], (0.001, 2), "0 ms and 1 ms are <= 0.001 s");
        assert_eq!(c[1], (0.005, 3));
        assert_eq!(c[2], (0.01, 4));
        assert_eq!(c[5], (0.5, 5));
        assert_eq!(c[6], (1.0, 6));
        assert_eq!(c[7], (5.0, 6));
        assert_eq!(c[8], (f64::INFINITY, 7));
    }
}
