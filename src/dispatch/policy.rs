//! What to do after a D1 call, as data: the retry schedule and the classification of outcomes.
//!
//! The schedule is exponential from 200 ms to 5 min (backon computes the ceiling for attempt n),
//! with full jitter, never shorter than D1's `Retry-After`. A row stops after `max_attempts`
//! attempts or `max_age` since its attempts began; it is then PARKED for an operator.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

use crate::d1::{D1Error, Operation};

/// Retry limits and schedule.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First delay ceiling.
    pub min_delay: Duration,
    /// Largest delay ceiling.
    pub max_delay: Duration,
    /// Attempts before parking.
    pub max_attempts: u32,
    /// Age (since the attempts began) before parking.
    pub max_age: Duration,
    /// Least wait before asking D1 about a request that may have reached it: a timed-out PUT may
    /// still be running at D1, and Get Card must not be asked before it is done.
    pub reconcile_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(300),
            max_attempts: 20,
            max_age: Duration::from_secs(24 * 3600),
            reconcile_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay ceiling after the `attempt`-th attempt (1-based): min, 2 x min, ... up to max.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let mut schedule = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let d = schedule.nth(attempt.saturating_sub(1).min(64) as usize).unwrap_or(self.max_delay);
        // backon multiplies floats; whole milliseconds keep the schedule readable in logs.
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Full jitter under the ceiling, but never before D1's `Retry-After`, nor before
    /// `reconcile_delay` when the next attempt must first ask D1 what happened.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        reconcile: bool,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = Duration::from_secs_f64(rng.gen_range(0.0..=ceiling.as_secs_f64()));
        let floor = if reconcile { self.reconcile_delay } else { Duration::ZERO };
        jittered.max(retry_after.unwrap_or(Duration::ZERO)).max(floor)
    }

    /// Why the row must stop now, if it must; `age` is the time since its attempts began
    /// (measured by PostgreSQL).
    pub fn exhausted(&self, attempts: u32, age: Duration) -> Option<String> {
        if attempts >= self.max_attempts {
            return Some(format!("gave up after {attempts} attempts"));
        }
        (age >= self.max_age).then(|| format!("gave up after {} s of attempts", age.as_secs()))
    }
}

/// What a failed D1 call means for the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again later.
    Retry {
        /// The request may have been processed: ask D1 (Get Card) before sending again.
        reconcile: bool,
        /// D1's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A 4xx on the registration PUT: D1's answer to a duplicate is unknown, so ask D1 now.
    ConfirmFirst,
    /// Not sent for lack of time in the lease: give the row back for a later attempt.
    Release,
    /// Stop: an operator must look.
    GiveUp,
}

impl Verdict {
    /// Whether the failure counts toward opening the circuit breaker (D1 or the path to it is
    /// unwell), as opposed to a verdict about this one request.
    pub fn trips_breaker(&self) -> bool {
        matches!(self, Self::Retry { .. })
    }
}

/// The one place D1 outcomes are classified.
pub fn classify(op: Operation, error: &D1Error) -> Verdict {
    match error {
        D1Error::Retryable { ambiguous, retry_after, .. } => {
            Verdict::Retry { reconcile: *ambiguous && op == Operation::Register, retry_after: *retry_after }
        }
        // Our credentials were refused even after a fresh token: a key or onboarding problem that
        // may be fixed while the row waits (it parks after max attempts otherwise).
        D1Error::Unauthorized { .. } => Verdict::Retry { reconcile: false, retry_after: None },
        D1Error::Terminal { .. } if op == Operation::Register => Verdict::ConfirmFirst,
        D1Error::Terminal { .. } | D1Error::Local { .. } => Verdict::GiveUp,
        D1Error::OutOfTime { .. } => Verdict::Release,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retryable(ambiguous: bool, retry_after: Option<Duration>) -> D1Error {
        D1Error::Retryable { status: Some(503), retry_after, ambiguous, detail: "x".into() }
    }

    #[test]
    fn the_schedule_doubles_from_200_ms_and_caps_at_5_minutes() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(5), Duration::from_millis(3200));
        assert_eq!(p.ceiling(20), Duration::from_secs(300));
        assert_eq!(p.ceiling(1000), Duration::from_secs(300));
    }

    #[test]
    fn the_delay_is_jittered_under_the_ceiling_and_honours_retry_after() {
        let p = RetryPolicy::default();
        let mut rng = rand::thread_rng();
        for attempt in 1..25 {
            let d = p.delay(attempt, None, false, &mut rng);
            assert!(d <= p.ceiling(attempt));
            assert!(
                p.delay(attempt, Some(Duration::from_secs(7)), false, &mut rng) >= Duration::from_secs(7)
            );
        }
    }

    #[test]
    fn an_ambiguous_outcome_is_never_reconciled_before_the_reconcile_delay() {
        let p = RetryPolicy::default();
        let mut rng = rand::thread_rng();
        for attempt in 1..25 {
            assert!(p.delay(attempt, None, true, &mut rng) >= Duration::from_secs(30));
        }
    }

    #[test]
    fn a_row_stops_after_max_attempts_or_max_age() {
        let p = RetryPolicy::default();
        assert_eq!(p.exhausted(19, Duration::ZERO), None);
        assert!(p.exhausted(20, Duration::ZERO).unwrap().contains("20 attempts"));
        assert!(p.exhausted(1, Duration::from_secs(25 * 3600)).is_some());
    }

    #[test]
    fn outcomes_are_classified_for_the_dispatcher() {
        use Operation::{GetCard, Register};
        assert_eq!(
            classify(Register, &retryable(true, None)),
            Verdict::Retry { reconcile: true, retry_after: None }
        );
        let ra = Some(Duration::from_secs(2));
        assert_eq!(
            classify(Register, &retryable(false, ra)),
            Verdict::Retry { reconcile: false, retry_after: ra }
        );
        assert_eq!(
            classify(GetCard, &retryable(true, None)),
            Verdict::Retry { reconcile: false, retry_after: None }
        );
        let terminal = D1Error::Terminal { status: 409, error_code: Some("X".into()), message: None };
        assert_eq!(classify(Register, &terminal), Verdict::ConfirmFirst);
        assert_eq!(classify(GetCard, &terminal), Verdict::GiveUp);
        assert_eq!(classify(Register, &D1Error::Local { detail: "k".into() }), Verdict::GiveUp);
        assert!(classify(Register, &D1Error::Unauthorized { detail: "u".into() }).trips_breaker());
        assert!(!Verdict::ConfirmFirst.trips_breaker());
        let late = D1Error::OutOfTime { detail: "register not sent".into() };
        assert_eq!(classify(Register, &late), Verdict::Release);
        assert_eq!(classify(GetCard, &late), Verdict::Release);
        assert!(!Verdict::Release.trips_breaker());
    }
}
