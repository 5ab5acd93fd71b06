//! A row's fate as one pure value. The attempt's [`Conclusion`] and the retry policy give a
//! [`Plan`] before any transaction opens (the random jitter is drawn here); inside the settle
//! transaction, [`fate`] turns the plan and the card record into the new record and how the row
//! ends. No I/O, no clock: the time comes in as an argument (PostgreSQL's `now()`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::policy::RetryPolicy;
use crate::core::decide::{CallOutcome, RowFate, on_call_outcome};
use crate::core::record::CardRecord;
use crate::core::result::{ResultOutcome, of_change};
use crate::d1::D1Error;
use crate::store::outbox::Finish;

/// What an attempt concluded before settling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// D1 has the card for this consumer.
    Registered,
    /// Stop: terminal refusal, conflict, or a local problem an operator must fix.
    GaveUp {
        /// Why (operator-facing, no card data).
        reason: String,
        /// D1's `errorCode`, when D1 refused with one.
        error_code: Option<String>,
    },
    /// D1 registered the card implicitly meanwhile: no PUT needed.
    Superseded,
    /// A retryable failure.
    Failed {
        /// What failed (operator-facing, no card data).
        error: String,
        /// The PUT may have reached D1: ask D1 before sending again.
        reconcile_next: bool,
        /// D1's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Nothing was sent in this attempt (no time left in the lease); the row goes back.
    Release(String),
}

impl Conclusion {
    /// Gave up for a reason of ours (conflict, unreadable payload, key problem).
    pub fn gave_up(reason: impl Into<String>) -> Self {
        Self::GaveUp { reason: reason.into(), error_code: None }
    }

    /// Gave up on D1's answer, keeping its `errorCode` for the registration result.
    pub fn refused(e: &D1Error) -> Self {
        Self::GaveUp { reason: e.to_string(), error_code: e.error_code().map(str::to_owned) }
    }
}

/// The policy's decision about an attempt, made before the settle transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What the attempt means for the card.
    pub outcome: CallOutcome,
    /// How the row ends if it stays in play (retry or release), with the reason label for metrics.
    pub again: Option<(Finish, &'static str)>,
    /// D1's `errorCode` when the attempt gave up on a D1 refusal (reported with a FAILED result).
    pub error_code: Option<String>,
}

/// How a settled attempt changes the card and the row, and the registration result it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    /// The new card record.
    pub record: CardRecord,
    /// How the row ends.
    pub finish: Finish,
    /// The outcome label (`card_registrar_dispatch_outcomes_total`).
    pub label: &'static str,
    /// The result to publish, when the card entered REGISTERED or FAILED.
    pub result: Option<ResultOutcome>,
    /// D1's `errorCode`, for a FAILED result.
    pub error_code: Option<String>,
}

/// Applies the retry policy: attempts and age limits, backoff with jitter, reconcile floor.
/// `attempts` includes this one; `age` is the time since the attempts began (PostgreSQL's clock).
pub fn plan(
    conclusion: Conclusion,
    policy: &RetryPolicy,
    attempts: u32,
    age: Duration,
    rng: &mut impl Rng,
) -> Plan {
    let (error, finish, reason) = match conclusion {
        Conclusion::Registered => {
            return Plan { outcome: CallOutcome::Registered, again: None, error_code: None };
        }
        Conclusion::GaveUp { reason, error_code } => {
            return Plan { outcome: CallOutcome::GaveUp { reason }, again: None, error_code };
        }
        Conclusion::Superseded => {
            return Plan { outcome: CallOutcome::Superseded, again: None, error_code: None };
        }
        Conclusion::Failed { error, reconcile_next, retry_after } => {
            let after = policy.delay(attempts, retry_after, reconcile_next, rng);
            let reason = if reconcile_next {
                "ambiguous"
            } else if retry_after.is_some() {
                "rate_limited"
            } else {
                "retryable"
            };
            let finish = Finish::Retry { after, error: error.clone(), reconcile: reconcile_next };
            (error, finish, reason)
        }
        Conclusion::Release(why) => {
            let after = policy.delay(attempts, None, false, rng);
            (why, Finish::Release { after }, "released")
        }
    };
    match policy.exhausted(attempts, age) {
        Some(why) => Plan {
            outcome: CallOutcome::GaveUp { reason: format!("{why}; last: {error}") },
            again: None,
            error_code: None,
        },
        None => Plan { outcome: CallOutcome::WillRetry, again: Some((finish, reason)), error_code: None },
    }
}

/// The new card record, how the row ends, the outcome label and the registration result, from the
/// plan and the record as it is now (read under the card lock).
pub fn fate(record: &CardRecord, plan: Plan, now: DateTime<Utc>) -> Fate {
    let decision = on_call_outcome(record, &plan.outcome, now);
    let result = of_change(Some(record), &decision.record);
    let error_code = plan.error_code.clone().filter(|_| result == Some(ResultOutcome::Failed));
    let (finish, label) = match decision.row {
        RowFate::Done => (Finish::Done, "done"),
        RowFate::Cancel => {
            (Finish::Cancelled { why: "implicit registration came first".into() }, "cancelled")
        }
        RowFate::Park => {
            let error = match plan.outcome {
                CallOutcome::GaveUp { reason } => reason,
                _ => "gave up".to_owned(),
            };
            (Finish::Parked { error }, "parked")
        }
        RowFate::Retry => match plan.again {
            Some((finish @ Finish::Release { .. }, _)) => (finish, "released"),
            Some((finish, _)) => (finish, "retry"),
            // Superseded, but the record no longer says so: try again shortly.
            None => (Finish::Release { after: Duration::ZERO }, "released"),
        },
    };
    Fate { record: decision.record, finish, label, result, error_code }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 3, reconcile_delay: Duration::from_secs(30), ..RetryPolicy::default() }
    }

    fn failed(reconcile_next: bool) -> Conclusion {
        Conclusion::Failed { error: "D1 register failed (timeout)".into(), reconcile_next, retry_after: None }
    }

    #[test]
    fn an_ambiguous_failure_waits_at_least_the_reconcile_delay() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = plan(failed(true), &policy(), 1, Duration::ZERO, &mut rng);
        assert_eq!(p.outcome, CallOutcome::WillRetry);
        match p.again {
            Some((Finish::Retry { after, reconcile: true, .. }, "ambiguous")) => {
                assert!(after >= Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn released_attempts_count_so_a_row_that_never_gets_time_parks() {
        let mut rng = StdRng::seed_from_u64(1);
        let release = || Conclusion::Release("register not sent: 10 ms left".into());
        let p = plan(release(), &policy(), 2, Duration::ZERO, &mut rng);
        assert!(matches!(p.again, Some((Finish::Release { .. }, "released"))));
        let p = plan(release(), &policy(), 3, Duration::ZERO, &mut rng);
        assert!(
            matches!(&p.outcome, CallOutcome::GaveUp { reason } if reason.contains("3 attempts") && reason.contains("not sent")),
            "{p:?}"
        );
        assert_eq!(p.again, None);
    }

    fn pending() -> CardRecord {
        use crate::core::ids::{CardId, ConsumerId};
        use crate::core::record::CardState;
        CardRecord::new(
            CardId::parse("card-1").unwrap(),
            ConsumerId::parse("c-1").unwrap(),
            CardState::Pending,
        )
    }

    #[test]
    fn a_d1_refusal_fails_the_card_with_d1s_error_code_and_a_success_registers_it_explicitly() {
        let mut rng = StdRng::seed_from_u64(1);
        let refused =
            Conclusion::GaveUp { reason: "D1 answered 400".into(), error_code: Some("INVALID_X".into()) };
        let f = fate(&pending(), plan(refused, &policy(), 1, Duration::ZERO, &mut rng), Utc::now());
        assert_eq!(
            (f.label, f.result, f.error_code.as_deref()),
            ("parked", Some(ResultOutcome::Failed), Some("INVALID_X"))
        );

        let f = fate(
            &pending(),
            plan(Conclusion::Registered, &policy(), 1, Duration::ZERO, &mut rng),
            Utc::now(),
        );
        assert_eq!(
            (f.label, f.result, f.error_code),
            ("done", Some(ResultOutcome::RegisteredExplicit), None)
        );
        // Already registered (implicitly, meanwhile): the row ends, the card's result was ingest's.
        let f =
            fate(&f.record, plan(Conclusion::Registered, &policy(), 1, Duration::ZERO, &mut rng), Utc::now());
        assert_eq!(f.result, None);
    }

    #[test]
    fn a_failed_call_after_an_implicit_registration_in_flight_reports_that_registration() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut r = pending();
        r.implicit_while_in_flight = Some(crate::core::record::RegistrationSource::ImplicitOrder);
        let f = fate(
            &r,
            plan(Conclusion::gave_up("conflict"), &policy(), 1, Duration::ZERO, &mut rng),
            Utc::now(),
        );
        assert_eq!(
            (f.label, f.result, f.error_code),
            ("cancelled", Some(ResultOutcome::RegisteredImplicitOrder), None)
        );
        let f = fate(&pending(), plan(failed(false), &policy(), 1, Duration::ZERO, &mut rng), Utc::now());
        assert_eq!((f.label, f.result), ("retry", None), "a retry settles nothing");
    }

    #[test]
    fn the_age_limit_parks_a_failing_row() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = plan(failed(false), &policy(), 1, Duration::from_secs(25 * 3600), &mut rng);
        assert!(matches!(p.outcome, CallOutcome::GaveUp { .. }));
    }
}
