//! The deadline of one dispatch attempt, and the clock it is read from.
//!
//! A worker may only talk to D1 while its lease on the row holds: a request that reaches D1 after
//! the lease ended can race the next holder. The deadline is derived from the lease by the
//! dispatcher (the lease length, measured on the monotonic clock from just before the claim, minus
//! a safety margin) and checked before every request of the attempt: the token fetch, Get Card,
//! the PUT and its re-send after a 401. A request starts only if it can also end (`timeout`)
//! before the deadline. The monotonic clock is immune to wall-clock skew; it is injected so tests
//! can drive it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::{D1Error, Operation};

/// Where "now" comes from (a monotonic instant). Injected so tests can move time by hand.
pub trait Clock: Send + Sync + 'static {
    /// The current monotonic instant.
    fn now(&self) -> Instant;
}

/// The process clock (`tokio::time::Instant::now`, which `tokio::time::pause` also controls).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The last instant by which every request of an attempt must have ended.
#[derive(Clone)]
pub struct Deadline {
    at: Option<Instant>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let left = self.at.map(|at| at.saturating_duration_since(self.clock.now()));
        f.debug_struct("Deadline").field("left", &left).finish()
    }
}

impl Deadline {
    /// Requests must end by `at` on `clock`.
    pub fn at(at: Instant, clock: Arc<dyn Clock>) -> Self {
        Self { at: Some(at), clock }
    }

    /// No deadline (a one-off call outside dispatch, e.g. a benchmark or a probe).
    pub fn none() -> Self {
        Self { at: None, clock: Arc::new(SystemClock) }
    }

    /// Time left before the deadline (`None` when there is no deadline).
    pub fn left(&self) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(self.clock.now()))
    }

    /// Whether a request of up to `timeout` may start now: it must be able to end by the deadline.
    pub fn admit(&self, op: Operation, timeout: Duration) -> Result<(), D1Error> {
        match self.left() {
            Some(left) if left < timeout => Err(D1Error::OutOfTime {
                detail: format!(
                    "{op} not sent: {} ms left before the lease deadline, a request may take {} ms",
                    left.as_millis(),
                    timeout.as_millis()
                ),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A clock moved by hand.
    struct Manual(Mutex<Instant>);

    impl Clock for Manual {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn a_request_starts_only_if_it_can_end_before_the_deadline() {
        let start = Instant::now();
        let clock = Arc::new(Manual(Mutex::new(start)));
        let deadline = Deadline::at(start + Duration::from_secs(10), clock.clone());
        let timeout = Duration::from_secs(4);
        assert_eq!(deadline.admit(Operation::Register, timeout), Ok(()));
        *clock.0.lock().unwrap() = start + Duration::from_secs(6);
        assert_eq!(deadline.admit(Operation::Register, timeout), Ok(()));
        *clock.0.lock().unwrap() = start + Duration::from_millis(6001);
        let refused = deadline.admit(Operation::Token, timeout).unwrap_err();
        assert!(matches!(&refused, D1Error::OutOfTime { detail } if detail.starts_with("token not sent")));
        *clock.0.lock().unwrap() = start + Duration::from_secs(60);
        assert!(deadline.admit(Operation::GetCard, timeout).is_err());
        assert_eq!(Deadline::none().admit(Operation::Register, timeout), Ok(()));
    }
}
