//! The health state of one backend as a pure state machine: consecutive-result thresholds
//! and flap damping. Time comes in as arguments, so tests drive it with made-up instants
//! and the checker with the real clock.

use std::{collections::VecDeque, time::Duration, time::Instant};

use crate::config::{FlapDamping, HealthCheck};

/// What a backend's probes decide, as configured on its listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes that bring a down backend up.
    pub healthy: u32,
    /// Consecutive failures that take an up backend down.
    pub unhealthy: u32,
    pub flap_damping: Option<FlapDamping>,
}

impl Thresholds {
    pub fn of(check: &HealthCheck) -> Self {
        Self {
            // The config allows 2..=10; a zero from a code-built config would otherwise
            // mean "never change", which nobody asks for on purpose.
            healthy: check.healthy_threshold.max(1),
            unhealthy: check.unhealthy_threshold.max(1),
            flap_damping: check.flap_damping,
        }
    }
}

/// The state a backend shows: what the data plane should do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    /// Forced down by flap damping until the instant, whatever its probes say.
    HeldDown {
        until: Instant,
    },
}

/// A change of the shown state (up ↔ down); the machine reports nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub up: bool,
    pub cause: Cause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Up → down after this many consecutive failures; `held_until` when the same change
    /// also started a flap-damping hold.
    Failures {
        count: u32,
        held_until: Option<Instant>,
    },
    /// Down → up after this many consecutive successes.
    Successes { count: u32 },
    /// Down → up because a hold ended while the probes said up.
    HoldExpired,
}

/// Thresholds and flap damping of one backend.
///
/// Two states are kept apart: `probed_up`, what the probes alone decide through the
/// thresholds, and the shown state, which is `probed_up` unless a hold forces it down.
/// Flaps are changes of `probed_up`, so a backend that keeps flapping during a hold is
/// still seen flapping.
#[derive(Clone, Debug)]
pub struct Machine {
    thresholds: Thresholds,
    probed_up: bool,
    consecutive_successes: u32,
    consecutive_failures: u32,
    /// Instants of recent changes of `probed_up`, oldest first; pruned to the window.
    flaps: VecDeque<Instant>,
    held_until: Option<Instant>,
}

impl Machine {
    /// A backend starts up: it takes traffic until its probes take it out (CLB).
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            probed_up: true,
            consecutive_successes: 0,
            consecutive_failures: 0,
            flaps: VecDeque::new(),
            held_until: None,
        }
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Starts over as down: it takes new flows only after `healthy_threshold` successes.
    pub fn assume_down(&mut self) {
        self.probed_up = false;
        self.consecutive_successes = 0;
        self.consecutive_failures = 0;
    }

    /// Whether the backend takes new flows.
    pub fn is_up(&self) -> bool {
        self.probed_up && self.held_until.is_none()
    }

    pub fn state(&self) -> State {
        match self.held_until {
            Some(until) => State::HeldDown { until },
            None if self.probed_up => State::Up,
            None => State::Down,
        }
    }

    #[cfg(test)]
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    #[cfg(test)]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// State changes of the probes within the flap-damping window ending at `now` (0
    /// without flap damping).
    pub fn flaps_in_window(&self, now: Instant) -> u32 {
        let Some(damping) = self.thresholds.flap_damping else {
            return 0;
        };
        let window = Duration::from_secs(damping.window.into());
        let recent = self
            .flaps
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= window)
            .count();
        u32::try_from(recent).unwrap_or(u32::MAX)
    }

    /// Applies one probe result taken at `now` and returns the change of the shown state
    /// it causes, if any. A hold that has expired by `now` ends first, so a backend
    /// follows its probes again from the first result after the hold.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<Change> {
        let was_up = self.is_up();
        let hold_expired = self.held_until.is_some_and(|until| now >= until);
        if hold_expired {
            self.held_until = None;
        }

        let mut flipped = None;
        if success {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
            if !self.probed_up && self.consecutive_successes >= self.thresholds.healthy {
                self.probed_up = true;
                flipped = Some(Cause::Successes {
                    count: self.consecutive_successes,
                });
            }
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
            if self.probed_up && self.consecutive_failures >= self.thresholds.unhealthy {
                self.probed_up = false;
                flipped = Some(Cause::Failures {
                    count: self.consecutive_failures,
                    held_until: None,
                });
            }
        }
        if flipped.is_some()
            && let Some(until) = self.note_flap(now)
            && let Some(Cause::Failures { held_until, .. }) = &mut flipped
        {
            *held_until = Some(until);
        }

        let is_up = self.is_up();
        if is_up == was_up {
            return None;
        }
        let cause = match flipped {
            Some(cause) => cause,
            // No flip of the probes, yet the shown state changed: only the end of a hold
            // does that, and only towards up.
            None => {
                debug_assert!(hold_expired && is_up);
                Cause::HoldExpired
            }
        };
        Some(Change { up: is_up, cause })
    }

    /// Records a flip of `probed_up` at `now`; starts (or restarts) a hold when the
    /// flips in the window exceed `max_flaps`, and returns its end.
    fn note_flap(&mut self, now: Instant) -> Option<Instant> {
        let damping = self.thresholds.flap_damping?;
        let window = Duration::from_secs(damping.window.into());
        self.flaps.push_back(now);
        while self
            .flaps
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.flaps.pop_front();
        }
        if self.flaps.len() <= damping.max_flaps as usize {
            return None;
        }
        let until = now + Duration::from_secs(damping.hold.into());
        self.held_until = Some(until);
        // Counting starts afresh with the hold: after it the backend gets a clean
        // slate, unless it flaps past the limit again (even during the hold, which then
        // restarts the hold).
        self.flaps.clear();
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(healthy: u32, unhealthy: u32) -> Thresholds {
        Thresholds {
            healthy,
            unhealthy,
            flap_damping: None,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn starts_up() {
        let m = Machine::new(thresholds(3, 3));
        assert!(m.is_up());
        assert_eq!(m.state(), State::Up);
    }

    #[test]
    fn goes_down_after_exactly_unhealthy_threshold_failures() {
        for n in 2..=10 {
            let t0 = Instant::now();
            let mut m = Machine::new(thresholds(3, n));
            for i in 1..n {
                assert_eq!(
                    m.record(false, t0 + secs(i.into())),
                    None,
                    "failure {i} of {n}"
                );
                assert!(m.is_up());
            }
            let change = m.record(false, t0 + secs(n.into()));
            assert_eq!(
                change,
                Some(Change {
                    up: false,
                    cause: Cause::Failures {
                        count: n,
                        held_until: None
                    }
                })
            );
            assert_eq!(m.state(), State::Down);
            // Further failures are steady state.
            assert_eq!(m.record(false, t0 + secs(100)), None);
            assert_eq!(m.consecutive_failures(), n + 1);
        }
    }

    #[test]
    fn comes_up_after_exactly_healthy_threshold_successes() {
        for n in 2..=10 {
            let t0 = Instant::now();
            let mut m = Machine::new(thresholds(n, 2));
            m.record(false, t0);
            assert!(m.record(false, t0).is_some());
            for i in 1..n {
                assert_eq!(
                    m.record(true, t0 + secs(i.into())),
                    None,
                    "success {i} of {n}"
                );
                assert!(!m.is_up());
            }
            assert_eq!(
                m.record(true, t0 + secs(n.into())),
                Some(Change {
                    up: true,
                    cause: Cause::Successes { count: n }
                })
            );
            assert!(m.is_up());
        }
    }

    #[test]
    fn a_result_of_the_other_kind_resets_the_count() {
        let t0 = Instant::now();
        let mut m = Machine::new(thresholds(3, 3));
        m.record(false, t0);
        m.record(false, t0);
        m.record(true, t0);
        assert_eq!(m.consecutive_failures(), 0);
        m.record(false, t0);
        m.record(false, t0);
        assert!(m.is_up(), "two failures after a success do not reach 3");
        assert!(m.record(false, t0).is_some());
        m.record(true, t0);
        m.record(true, t0);
        m.record(false, t0);
        m.record(true, t0);
        m.record(true, t0);
        assert!(!m.is_up());
        assert!(m.record(true, t0).is_some());
    }

    /// Drives `m` through one full down/up cycle starting at `t` (two changes).
    fn flap(m: &mut Machine, t: Instant) -> [Option<Change>; 2] {
        m.record(false, t);
        let down = m.record(false, t);
        m.record(true, t);
        let up = m.record(true, t);
        [down, up]
    }

    #[test]
    fn flap_damping_holds_down_and_releases_after_the_hold() {
        let damping = FlapDamping {
            max_flaps: 3,
            window: 60,
            hold: 120,
        };
        let mut m = Machine::new(Thresholds {
            healthy: 2,
            unhealthy: 2,
            flap_damping: Some(damping),
        });
        let t0 = Instant::now();
        // Flaps 1 and 2 (down, up) at t0, flap 3 (down) at t0+10: within the limit.
        assert!(flap(&mut m, t0).iter().all(Option::is_some));
        m.record(false, t0 + secs(10));
        assert_eq!(
            m.record(false, t0 + secs(10)).map(|c| c.cause),
            Some(Cause::Failures {
                count: 2,
                held_until: None
            })
        );
        assert_eq!(m.flaps_in_window(t0 + secs(10)), 3);
        // Flap 4 (up) at t0+20 exceeds max_flaps: no change shown, held down instead.
        m.record(true, t0 + secs(20));
        assert_eq!(m.record(true, t0 + secs(20)), None);
        let until = t0 + secs(20 + 120);
        assert_eq!(m.state(), State::HeldDown { until });
        assert!(!m.is_up());
        // Probes go on during the hold and succeed: still held.
        assert_eq!(m.record(true, t0 + secs(100)), None);
        assert_eq!(m.record(true, until - Duration::from_millis(1)), None);
        assert!(!m.is_up());
        // The first result after the hold: the probes say up, so up it goes.
        assert_eq!(
            m.record(true, until),
            Some(Change {
                up: true,
                cause: Cause::HoldExpired
            })
        );
        assert_eq!(m.state(), State::Up);
        // A clean slate: one more down is a plain down, not a hold.
        m.record(false, until + secs(1));
        assert_eq!(
            m.record(false, until + secs(1)).map(|c| c.cause),
            Some(Cause::Failures {
                count: 2,
                held_until: None
            })
        );
    }

    #[test]
    fn a_hold_started_by_a_failure_is_reported_with_the_down_change() {
        let mut m = Machine::new(Thresholds {
            healthy: 2,
            unhealthy: 2,
            flap_damping: Some(FlapDamping {
                max_flaps: 2,
                window: 30,
                hold: 60,
            }),
        });
        let t0 = Instant::now();
        flap(&mut m, t0);
        m.record(false, t0 + secs(5));
        assert_eq!(
            m.record(false, t0 + secs(5)),
            Some(Change {
                up: false,
                cause: Cause::Failures {
                    count: 2,
                    held_until: Some(t0 + secs(65))
                }
            })
        );
        // Still failing when the hold ends: it stays down, nothing to report.
        assert_eq!(m.record(false, t0 + secs(70)), None);
        assert_eq!(m.state(), State::Down);
    }

    #[test]
    fn flaps_outside_the_window_do_not_count() {
        let mut m = Machine::new(Thresholds {
            healthy: 2,
            unhealthy: 2,
            flap_damping: Some(FlapDamping {
                max_flaps: 2,
                window: 10,
                hold: 60,
            }),
        });
        let t0 = Instant::now();
        // Two flaps every 11 s: never more than 2 within 10 s.
        for round in 0..5 {
            let changes = flap(&mut m, t0 + secs(11 * round));
            assert!(changes.iter().all(Option::is_some), "round {round}");
        }
        assert_eq!(m.state(), State::Up);
        assert_eq!(m.flaps_in_window(t0 + secs(44)), 2);
        assert_eq!(m.flaps_in_window(t0 + secs(100)), 0);
    }

    #[test]
    fn flapping_during_a_hold_restarts_it() {
        let mut m = Machine::new(Thresholds {
            healthy: 2,
            unhealthy: 2,
            flap_damping: Some(FlapDamping {
                max_flaps: 1,
                window: 60,
                hold: 30,
            }),
        });
        let t0 = Instant::now();
        flap(&mut m, t0);
        assert_eq!(
            m.state(),
            State::HeldDown {
                until: t0 + secs(30)
            }
        );
        flap(&mut m, t0 + secs(20));
        assert_eq!(
            m.state(),
            State::HeldDown {
                until: t0 + secs(50)
            }
        );
        assert_eq!(m.record(true, t0 + secs(49)), None);
        assert!(m.record(true, t0 + secs(50)).is_some_and(|c| c.up));
    }
}
