//! Applies one partition's batch in one PostgreSQL transaction: lock the cards, decide, write
//! records, history, outbox rows, dead letters and the partition's next offset, then commit.
//!
//! Exactly-once into PostgreSQL: the offset moves in the same transaction as the state, and only
//! from the offset the batch started at (a fence against a zombie consumer). A replay after a
//! crash re-applies only uncommitted messages; the eventId check and idempotent decisions make
//! even a double delivery harmless.
//!
//! Each message gets an `ingest.message` span under the producer's trace (module `spans`);
//! an enqueued call stores the trace context of its `card.decide` span, so dispatch continues
//! the same trace.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::message::{Applied, Batch, Prepared};
use crate::crypto::{SealError, Sealer};
use super::spans::{self, MessageOutcome};
use crate::core::dead_letter::DeadLetterReason;
use crate::core::decide::{Action, Effect, decide};
use crate::core::record::{CallStatus, CardRecord};
use crate::core::validate::ValidEvent;
use crate::store::history::{HistoryRow, SeenEvent};
use crate::store::outbox::NewRegistration;
use crate::store::{StoreError, cards, dead_letters, history, locks, offsets, outbox};
use crate::telemetry::propagation::{TraceHeaders, current_trace_headers};

/// Applying a batch failed; nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// PostgreSQL failed (see `StoreError::is_transient`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another consumer moved this partition's stored offset: it owns the partition now.
    #[error("stored offset of {topic}/{partition} is no longer {expected:?}: another consumer applied it")]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset this consumer started from.
        expected: Option<i64>,
    },
    /// A dead letter could not be sealed (key problem); retrying will not help until fixed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The batch is empty; there is no offset to store.
    #[error("empty batch")]
    Empty,
}

struct Dead {
    offset: i64,
    reason: DeadLetterReason,
    detail: String,
    card_id: Option<String>,
    event_id: Option<Uuid>,
    envelope: String,
}

/// The facts of an event the history keeps, to compare a repeated eventId with.
fn facts(event: &ValidEvent) -> SeenEvent {
    let e = event.event();
    let meta = e.meta();
    SeenEvent {
        card_id: meta.card_id.as_str().to_owned(),
        kind: e.kind().as_str().to_owned(),
        outcome: e.outcome_str().map(str::to_owned),
        consumer_id: meta.consumer_id.as_str().to_owned(),
        occurred_at: meta.occurred_at,
    }
}

/// Applies the batch in one transaction; on any error nothing is written.
pub async fn apply_batch(
    pool: &PgPool,
    sealer: &dyn Sealer,
    batch: &Batch<'_>,
    now: DateTime<Utc>,
) -> Result<Applied, ApplyError> {
    let last = batch.messages.last().ok_or(ApplyError::Empty)?;
    let next_offset = last.offset + 1;
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin ingest transaction", e))?;
    let mut applied =
        apply_messages(&mut tx, sealer, batch.topic, batch.partition, &batch.messages, now).await?;
    applied.next_offset = next_offset;
    if !offsets::advance(&mut tx, batch.group, batch.topic, batch.partition, batch.from, next_offset).await? {
        // Dropping the transaction rolls it back.
        return Err(ApplyError::Fenced {
            topic: batch.topic.to_owned(),
            partition: batch.partition,
            expected: batch.from,
        });
    }
    tx.commit().await.map_err(|e| StoreError::db("commit ingest transaction", e))?;
    Ok(applied)
}

/// Applies messages inside the caller's transaction (records, history, outbox rows, dead
/// letters), without touching consumed offsets: the batch path adds them, a dead-letter replay
/// does not.
pub async fn apply_messages(
    tx: &mut PgConnection,
    sealer: &dyn Sealer,
    topic: &str,
    partition: i32,
    messages: &[Prepared],
    now: DateTime<Utc>,
) -> Result<Applied, ApplyError> {
    let events: Vec<(&Prepared, &ValidEvent)> =
        messages.iter().filter_map(|m| m.outcome.as_ref().ok().map(|e| (m, e))).collect();
    let mut card_ids: Vec<&str> = events.iter().map(|(_, e)| e.event().meta().card_id.as_str()).collect();
    card_ids.sort_unstable();
    card_ids.dedup();
    let event_ids: Vec<Uuid> = events.iter().map(|(_, e)| e.event().meta().event_id.as_uuid()).collect();

    locks::lock_cards(tx, &card_ids).await?;
    let seen = history::seen(tx, &event_ids).await?;
    let mut state: HashMap<String, (Option<CardRecord>, Option<CallStatus>)> =
        cards::load_for_update(tx, &card_ids)
            .await?
            .into_iter()
            .map(|(k, (r, c))| (k, (Some(r), c)))
            .collect();

    let mut applied = Applied::default();
    let mut in_batch: HashMap<Uuid, SeenEvent> = HashMap::new();
    let mut dirty: Vec<String> = Vec::new();
    let mut history_rows: Vec<HistoryRow<'_>> = Vec::new();
    let mut enqueues = Vec::new();
    let mut cancels: Vec<&str> = Vec::new();
    let mut dead: Vec<Dead> = Vec::new();

    for m in messages {
        let span = spans::message(topic, partition, m);
        // Synchronous: the spans are entered and left without crossing an await.
        let outcome = span.in_scope(|| -> Result<MessageOutcome, ApplyError> {
            let event = match &m.outcome {
                Err(r) => {
                    let _dead_letter = spans::dead_letter(r.reason).entered();
                    dead.push(Dead {
                        offset: m.offset,
                        reason: r.reason,
                        detail: r.detail.clone(),
                        card_id: r.card_id.clone(),
                        event_id: r.event_id,
                        envelope: sealer.seal(&m.raw.to_bytes())?,
                    });
                    return Ok(MessageOutcome::DeadLetter);
                }
                Ok(e) => e,
            };
            let meta = event.event().meta();
            let event_id = meta.event_id.as_uuid();
            let card_id = meta.card_id.as_str();
            if let Some(earlier) = seen.get(&event_id).or_else(|| in_batch.get(&event_id)) {
                if *earlier == facts(event) {
                    applied.duplicates += 1;
                    return Ok(MessageOutcome::Duplicate);
                }
                // Same eventId, other facts: a producer bug that must not pass as a duplicate.
                let reason = DeadLetterReason::EventIdReused;
                let _dead_letter = spans::dead_letter(reason).entered();
                dead.push(Dead {
                    offset: m.offset,
                    reason,
                    detail: format!(
                        "{}: eventId already used by an event with another card, kind, outcome, consumer or time",
                        reason.code()
                    ),
                    card_id: Some(card_id.to_owned()),
                    event_id: Some(event_id),
                    envelope: sealer.seal(&m.raw.to_bytes())?,
                });
                return Ok(MessageOutcome::DeadLetter);
            }
            let decide_span = spans::decide();
            let _decide = decide_span.enter();
            let (record, call) = state.entry(card_id.to_owned()).or_insert((None, None));
            let decision = decide(record.as_ref(), *call, event, now);
            let mut outcome = MessageOutcome::Applied;
            for action in &decision.actions {
                match action {
                    Action::EnqueueRegistration(request) => {
                        // Dispatch continues the trace from this decision, also after a restart.
                        let trace = current_trace_headers().or_else(|| {
                            m.traceparent.clone().map(|traceparent| TraceHeaders {
                                traceparent,
                                tracestate: m.tracestate.clone(),
                            })
                        });
                        enqueues.push((request.clone(), trace));
                        *call = Some(CallStatus::Queued);
                    }
                    Action::CancelQueuedRegistration => {
                        cancels.push(card_id);
                        if matches!(call, Some(CallStatus::Queued | CallStatus::Parked)) {
                            *call = Some(CallStatus::Cancelled);
                        }
                    }
                    Action::History(effect) => {
                        decide_span.record("effect", effect.as_str());
                        in_batch.insert(event_id, facts(event));
                        applied.effects.push(*effect);
                        history_rows.push(HistoryRow {
                            event_id,
                            card_id,
                            kind: event.event().kind().as_str(),
                            outcome: event.event().outcome_str(),
                            consumer_id: meta.consumer_id.as_str(),
                            occurred_at: meta.occurred_at,
                            effect: effect.as_str(),
                            topic,
                            partition,
                            offset: m.offset,
                        });
                    }
                    Action::DeadLetter(reason) => {
                        let _dead_letter = spans::dead_letter(*reason).entered();
                        outcome = MessageOutcome::DeadLetter;
                        dead.push(Dead {
                            offset: m.offset,
                            reason: *reason,
                            detail: format!("{} for card {card_id}", reason.code()),
                            card_id: Some(card_id.to_owned()),
                            event_id: Some(event_id),
                            envelope: sealer.seal(&m.raw.to_bytes())?,
                        });
                    }
                }
            }
            if let Some(next) = decision.record {
                *record = Some(next);
                dirty.push(card_id.to_owned());
            }
            Ok(outcome)
        })?;
        spans::record_outcome(&span, outcome);
    }

    dirty.sort_unstable();
    dirty.dedup();
    let records: Vec<&CardRecord> =
        dirty.iter().filter_map(|c| state.get(c).and_then(|(r, _)| r.as_ref())).collect();
    let mut consumers: Vec<&str> = records.iter().map(|r| r.consumer_id.as_str()).collect();
    consumers.sort_unstable();
    consumers.dedup();
    cards::note_consumers(tx, &consumers).await?;
    cards::upsert(tx, &records).await?;
    history::append(tx, &history_rows).await?;
    let new_rows: Vec<NewRegistration<'_>> = enqueues
        .iter()
        .map(|(request, trace)| NewRegistration {
            request,
            traceparent: trace.as_ref().map(|t| t.traceparent.as_str()),
            tracestate: trace.as_ref().and_then(|t| t.tracestate.as_deref()),
        })
        .collect();
    outbox::enqueue(tx, &new_rows).await?;
    outbox::cancel_unclaimed(tx, &cancels, "implicit registration came first").await?;
    let dead_rows: Vec<dead_letters::NewDeadLetter<'_>> = dead
        .iter()
        .map(|d| dead_letters::NewDeadLetter {
            topic,
            partition,
            offset: d.offset,
            reason: d.reason.code(),
            detail: &d.detail,
            card_id: d.card_id.as_deref(),
            event_id: d.event_id,
            envelope: &d.envelope,
        })
        .collect();
    dead_letters::insert(tx, &dead_rows).await?;
    applied.dead_letters = dead.iter().map(|d| d.reason).collect();

    Ok(applied)
}
