//! Circuit breaker toward D1: after `threshold` consecutive retryable failures, stop sending for
//! `cool_down`, then let one probe through; its success closes the breaker, its failure reopens it.
//!
//! Pure state machine: time is passed in, so it is tested without sleeping.

use std::time::Duration;

use tokio::time::Instant;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// No calls until the cool-down ends.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is (or may be) in flight.
    HalfOpen {
        /// Whether the probe was handed out.
        probing: bool,
    },
}

impl BreakerState {
    /// The metric value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open { .. } => 1.0,
            Self::HalfOpen { .. } => 2.0,
        }
    }

    /// The label used in logs and the transitions metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

/// What the breaker allows right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send as many as the limiter allows.
    Flow,
    /// Send exactly one probe.
    Probe,
    /// Send nothing until this instant.
    WaitUntil(Instant),
    /// A probe is in flight; wait for its result.
    WaitForProbe,
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    consecutive: u32,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self { threshold: threshold.max(1), cool_down, consecutive: 0, state: BreakerState::Closed }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether calls may go now; moves Open -> HalfOpen when the cool-down is over, and hands
    /// out the single probe.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Flow,
            BreakerState::Open { until } if now < until => Admission::WaitUntil(until),
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                Admission::Probe
            }
            BreakerState::HalfOpen { probing: true } => Admission::WaitForProbe,
        }
    }

    /// Records a call that reached a verdict from D1 (success or a non-retryable answer).
    /// Returns the new state if it changed.
    pub fn on_success(&mut self) -> Option<BreakerState> {
        self.consecutive = 0;
        (self.state != BreakerState::Closed).then(|| {
            self.state = BreakerState::Closed;
            self.state
        })
    }

    /// Records a retryable failure (5xx, timeout, connection error, 429). Returns the new state if
    /// it changed.
    pub fn on_failure(&mut self, now: Instant) -> Option<BreakerState> {
        self.consecutive = self.consecutive.saturating_add(1);
        let reopen = matches!(self.state, BreakerState::HalfOpen { .. });
        if reopen || (self.state == BreakerState::Closed && self.consecutive >= self.threshold) {
            self.state = BreakerState::Open { until: now + self.cool_down };
            return Some(self.state);
        }
        None
    }

    /// A probe that ended without a verdict (e.g. the row was cancelled): allow another probe.
    pub fn on_probe_abandoned(&mut self) {
        if self.state == (BreakerState::HalfOpen { probing: true }) {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(30));
        b.on_failure(now);
        b.on_failure(now);
        b.on_success();
        assert_eq!(b.on_failure(now), None);
        assert_eq!(b.on_failure(now), None);
        assert_eq!(b.on_failure(now), Some(BreakerState::Open { until: now + Duration::from_secs(30) }));
        assert_eq!(b.admit(now), Admission::WaitUntil(now + Duration::from_secs(30)));
    }

    #[test]
    fn after_the_cool_down_exactly_one_probe_goes_and_its_result_decides() {
        let now = Instant::now();
        let later = now + Duration::from_secs(31);
        let mut b = Breaker::new(1, Duration::from_secs(30));
        b.on_failure(now);
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.admit(later), Admission::WaitForProbe);
        // The probe fails: open again for a full cool-down.
        assert!(matches!(b.on_failure(later), Some(BreakerState::Open { .. })));
        let much_later = later + Duration::from_secs(31);
        assert_eq!(b.admit(much_later), Admission::Probe);
        assert_eq!(b.on_success(), Some(BreakerState::Closed));
        assert_eq!(b.admit(much_later), Admission::Flow);
    }

    #[test]
    fn an_abandoned_probe_lets_another_one_go() {
        let now = Instant::now();
        let mut b = Breaker::new(1, Duration::ZERO);
        b.on_failure(now);
        assert_eq!(b.admit(now), Admission::Probe);
        b.on_probe_abandoned();
        assert_eq!(b.admit(now), Admission::Probe);
    }
}
