//! One attempt of one claimed outbox row: reconcile if needed, send, conclude, settle.
//!
//! The rules that keep duplicate PUTs at zero: after any outcome that may have reached D1 (a
//! timeout or lost connection after sending, a 5xx, an expired lease, a 4xx on the PUT), Get Card
//! is asked before the PUT is sent again, and never before the reconcile delay has passed. Every
//! request of the attempt starts only if it can end before the attempt's [`Deadline`] (derived from
//! the lease). Settling (row + card record) happens in a transaction that writes the row only while
//! our lease is still held, batched with other attempts' rows by [`super::settle`]; the row's fate
//! is decided by the pure [`super::fate`] functions.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tracing::{Instrument, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use serde::Deserialize as _;

use super::fate::{self, Conclusion};
use super::limiter::{Limiter, Slot};
use super::policy::{RetryPolicy, Verdict, classify};
use super::settle::Settler;
use crate::core::decide::RegistrationRequest;
use crate::core::ids::CorrelationId;
use crate::crypto::{CardDataKeys, StoredOpening};
use crate::d1::{Clock, D1Card, D1Client, D1Error, Deadline, Operation, RegisterCard};
use crate::store::outbox::ClaimedRow;
use crate::telemetry::metrics::{DISPATCH_OUTCOMES, DISPATCH_RETRIES};
use crate::telemetry::propagation::parent_from_trace_headers;

/// What every attempt needs; shared by all dispatch tasks of the process.
pub struct Deps {
    /// The database.
    pub pool: PgPool,
    /// D1.
    pub client: D1Client,
    /// Our card-data keys, to open the stored JWE at send time.
    pub keys: Arc<CardDataKeys>,
    /// Politeness caps.
    pub limiter: Limiter,
    /// Retry schedule and limits.
    pub policy: RetryPolicy,
    /// The monotonic clock deadlines and the breaker read (injected so tests can drive it).
    pub clock: Arc<dyn Clock>,
}

/// How the attempt ended, for the breaker and the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// D1 gave a verdict (success, or a refusal about this request).
    Answered,
    /// D1 or the path to it failed (5xx, timeout, 429, connection, credentials).
    Failed,
    /// No call reached a verdict (superseded, released, lease lost).
    Silent,
}

/// Runs one attempt and settles the row, giving back `slot`'s D1 call slot as soon as no more
/// calls are needed and its row place once settled. Errors are logged; the lease expiry heals a
/// row that could not be settled (it is reclaimed and reconciled).
pub async fn run(
    deps: &Deps,
    settler: &Settler,
    row: ClaimedRow,
    deadline: Deadline,
    mut slot: Slot,
) -> Signal {
    let span = info_span!("dispatch.attempt", outbox_id = %row.id, card_id = %row.card_id,
                          correlation_id = %row.correlation_id, attempt = row.attempts,
                          reconcile = row.needs_reconcile, outcome = tracing::field::Empty);
    // Continue the trace of the decision that enqueued the row (stored with it, so it survives
    // a restart); a row without one starts its own trace.
    if let Some(parent) =
        row.traceparent.as_deref().and_then(|tp| parent_from_trace_headers(tp, row.tracestate.as_deref()))
    {
        let _ = span.set_parent(parent);
    }
    async move {
        let (conclusion, signal) = conclude(deps, &row, &deadline).await;
        slot.call_done();
        let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
        let age = Duration::from_millis(u64::try_from(row.age_ms).unwrap_or(0));
        let plan = fate::plan(conclusion, &deps.policy, attempts, age, &mut rand::thread_rng());
        if let Some((_, reason @ ("ambiguous" | "rate_limited" | "retryable"))) = &plan.again {
            metrics::counter!(DISPATCH_RETRIES, "reason" => *reason).increment(1);
        }
        match settler.settle(&row, plan).await {
            Ok(label) => {
                tracing::Span::current().record("outcome", label);
                match label {
                    "lease_lost" => info!("another worker holds this row now; leaving it to them"),
                    "parked" => {
                        warn!(card_id = %row.card_id, "registration parked; an operator can retry it")
                    }
                    _ => {}
                }
                metrics::counter!(DISPATCH_OUTCOMES, "outcome" => label).increment(1);
                signal
            }
            Err(e) => {
                warn!(error = %e, "could not settle the attempt; the row will be reclaimed after its lease");
                Signal::Silent
            }
        }
    }
    .instrument(span)
    .await
}

async fn conclude(deps: &Deps, row: &ClaimedRow, deadline: &Deadline) -> (Conclusion, Signal) {
    let request = match RegistrationRequest::deserialize(&row.payload) {
        Ok(r) => r,
        Err(e) => return (Conclusion::gave_up(format!("outbox payload unreadable: {e}")), Signal::Silent),
    };
    // An implicit registration arrived while the row was queued: no PUT needed.
    if row.superseded {
        return (Conclusion::Superseded, Signal::Silent);
    }
    let correlation = match CorrelationId::parse(row.correlation_id.as_str()) {
        Ok(c) => c,
        Err(_) => CorrelationId::for_outbox_row(row.id),
    };
    if row.needs_reconcile {
        match ask(deps, &request, &correlation, deadline).await {
            Asked::Registered => return (Conclusion::Registered, Signal::Answered),
            Asked::Conflict(why) => return (Conclusion::gave_up(why), Signal::Answered),
            Asked::Absent => {}
            Asked::Failed(c, s) => return (c, s),
        }
    }
    let card = match deps.keys.open_stored(&request.encrypted_card, request.card_key.as_ref()) {
        Ok((card, how)) => {
            if how == StoredOpening::SealedKeyRefused {
                warn!(
                    row_id = %row.id,
                    "the row's sealed card key does not open its card data (altered at rest?); opened by key agreement"
                );
            }
            card
        }
        Err(e) => {
            let why =
                format!("stored card data cannot be opened ({}); check CARD_DATA_KEYS", e.reason().code());
            return (Conclusion::gave_up(why), Signal::Silent);
        }
    };
    deps.limiter.pace().await;
    let put = RegisterCard {
        card_id: &request.card_id,
        consumer_id: &request.consumer_id,
        card_product_id: &request.card_product_id,
        card: &card,
        state: request.state,
    };
    let result = deps.client.register_card_within(&put, &correlation, deadline).await;
    drop(card);
    match result {
        Ok(()) => (Conclusion::Registered, Signal::Answered),
        Err(e) => match classify(Operation::Register, &e) {
            Verdict::Retry { reconcile, retry_after } => (
                Conclusion::Failed { error: e.to_string(), reconcile_next: reconcile, retry_after },
                Signal::Failed,
            ),
            // D1's answer to a second PUT is unknown: a 4xx may mean "already there".
            Verdict::ConfirmFirst => match ask(deps, &request, &correlation, deadline).await {
                Asked::Registered => (Conclusion::Registered, Signal::Answered),
                // D1 refused the PUT (its errorCode is kept) and Get Card says why.
                Asked::Conflict(why) => (
                    Conclusion::GaveUp { reason: why, error_code: e.error_code().map(str::to_owned) },
                    Signal::Answered,
                ),
                Asked::Absent => (Conclusion::refused(&e), Signal::Answered),
                // No time left to ask: D1 saw this PUT, so the next attempt must ask first.
                Asked::Failed(Conclusion::Release(why), s) => (failed_locally(&why, true), s),
                Asked::Failed(c, s) => (c, s),
            },
            // Nothing was sent (a 401 answer, if any, was a refusal before processing).
            Verdict::Release => (Conclusion::Release(e.to_string()), Signal::Silent),
            Verdict::GiveUp => (Conclusion::refused(&e), signal_of(&e)),
        },
    }
}

fn signal_of(e: &D1Error) -> Signal {
    if e.is_local() { Signal::Silent } else { Signal::Answered }
}

fn failed_locally(error: &str, reconcile_next: bool) -> Conclusion {
    Conclusion::Failed { error: error.to_owned(), reconcile_next, retry_after: None }
}

enum Asked {
    Registered,
    Conflict(String),
    Absent,
    Failed(Conclusion, Signal),
}

/// Get Card, to learn whether a previous attempt took effect.
async fn ask(
    deps: &Deps,
    request: &RegistrationRequest,
    correlation: &CorrelationId,
    deadline: &Deadline,
) -> Asked {
    deps.limiter.pace().await;
    match deps.client.get_card_within(&request.card_id, correlation, deadline).await {
        Ok(Some(card)) => judge(request, &card),
        Ok(None) => Asked::Absent,
        Err(e) => match classify(Operation::GetCard, &e) {
            Verdict::Retry { retry_after, .. } => Asked::Failed(
                Conclusion::Failed { error: e.to_string(), reconcile_next: true, retry_after },
                Signal::Failed,
            ),
            Verdict::Release => Asked::Failed(Conclusion::Release(e.to_string()), Signal::Silent),
            Verdict::ConfirmFirst | Verdict::GiveUp => Asked::Failed(Conclusion::refused(&e), signal_of(&e)),
        },
    }
}

fn judge(request: &RegistrationRequest, card: &D1Card) -> Asked {
    if card.consumer_id != request.consumer_id.as_str() {
        return Asked::Conflict("D1 has this cardId registered to another consumer".into());
    }
    match card.state.as_deref() {
        Some(s @ ("DELETED" | "REPLACED")) => Asked::Conflict(format!("D1 shows this cardId as {s}")),
        _ => Asked::Registered,
    }
}
