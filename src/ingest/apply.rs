//! Applies one partition's batch in one PostgreSQL transaction: lock the cards, decide, write
//! records, history, outbox rows, dead letters and the partition's next offset, then commit.
//!
//! Exactly-once into PostgreSQL: the offset moves in the same transaction as the state, and only
//! from the offset the batch started at (a fence against a zombie consumer). A replay after a
//! crash re-applies only uncommitted messages; the eventId check and idempotent decisions make
//! even a double delivery harmless.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::envelope::{RawMessage, SealError, Sealer};
use crate::core::dead_letter::DeadLetterReason;
use crate::core::decide::{Action, Effect, decide};
use crate::core::record::{CallStatus, CardRecord};
use crate::core::validate::ValidEvent;
use crate::store::history::HistoryRow;
use crate::store::outbox::NewRegistration;
use crate::store::{StoreError, cards, dead_letters, history, locks, offsets, outbox};

/// Why a message will not be applied, decided before the transaction (decoding, validation).
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Stable reason.
    pub reason: DeadLetterReason,
    /// Operator-facing detail naming fields, never values.
    pub detail: String,
    /// The card, when the message decoded and the id is safe to show.
    pub card_id: Option<String>,
    /// The event id, when it decoded.
    pub event_id: Option<Uuid>,
}

/// One message of the batch, prepared outside the transaction.
#[derive(Debug)]
pub struct Prepared {
    /// Kafka offset.
    pub offset: i64,
    /// The message as received (sealed into a dead letter if refused).
    pub raw: RawMessage,
    /// W3C trace context to store with an enqueued call.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The validated event, or why it was refused.
    pub outcome: Result<ValidEvent, Rejection>,
}

/// A partition's batch.
#[derive(Debug)]
pub struct Batch<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// The stored next offset this consumer started from (`None`: nothing stored yet).
    pub from: Option<i64>,
    /// Messages in offset order.
    pub messages: Vec<Prepared>,
}

/// What a committed batch did, for metrics and logs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// The partition's next offset, now stored.
    pub next_offset: i64,
    /// Effects of applied events.
    pub effects: Vec<Effect>,
    /// Events already in the history (re-published or replayed).
    pub duplicates: usize,
    /// Reasons of stored dead letters.
    pub dead_letters: Vec<DeadLetterReason>,
}

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
    let mut applied = apply_messages(&mut tx, sealer, batch.topic, batch.partition, &batch.messages, now).await?;
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
    let mut state: HashMap<String, (Option<CardRecord>, Option<CallStatus>)> = cards::load_for_update(tx, &card_ids)
        .await?
        .into_iter()
        .map(|(k, (r, c))| (k, (Some(r), c)))
        .collect();

    let mut applied = Applied::default();
    let mut in_batch: HashSet<Uuid> = HashSet::new();
    let mut dirty: Vec<String> = Vec::new();
    let mut history_rows: Vec<HistoryRow<'_>> = Vec::new();
    let mut enqueues = Vec::new();
    let mut cancels: Vec<&str> = Vec::new();
    let mut dead: Vec<Dead> = Vec::new();

    for m in messages {
        let event = match &m.outcome {
            Err(r) => {
                dead.push(Dead {
                    offset: m.offset,
                    reason: r.reason,
                    detail: r.detail.clone(),
                    card_id: r.card_id.clone(),
                    event_id: r.event_id,
                    envelope: sealer.seal(&m.raw.to_bytes())?,
                });
                continue;
            }
            Ok(e) => e,
        };
        let meta = event.event().meta();
        let event_id = meta.event_id.as_uuid();
        if seen.contains(&event_id) || in_batch.contains(&event_id) {
            applied.duplicates += 1;
            continue;
        }
        let card_id = meta.card_id.as_str();
        let (record, call) = state.entry(card_id.to_owned()).or_insert((None, None));
        let decision = decide(record.as_ref(), *call, event, now);
        for action in &decision.actions {
            match action {
                Action::EnqueueRegistration(request) => {
                    enqueues.push((request.clone(), m.traceparent.as_deref(), m.tracestate.as_deref()));
                    *call = Some(CallStatus::Queued);
                }
                Action::CancelQueuedRegistration => {
                    cancels.push(card_id);
                    if matches!(call, Some(CallStatus::Queued | CallStatus::Parked)) {
                        *call = Some(CallStatus::Cancelled);
                    }
                }
                Action::History(effect) => {
                    in_batch.insert(event_id);
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
                Action::DeadLetter(reason) => dead.push(Dead {
                    offset: m.offset,
                    reason: *reason,
                    detail: format!("{} for card {card_id}", reason.code()),
                    card_id: Some(card_id.to_owned()),
                    event_id: Some(event_id),
                    envelope: sealer.seal(&m.raw.to_bytes())?,
                }),
            }
        }
        if let Some(next) = decision.record {
            *record = Some(next);
            dirty.push(card_id.to_owned());
        }
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
        .map(|(request, traceparent, tracestate)| NewRegistration {
            request,
            traceparent: *traceparent,
            tracestate: *tracestate,
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
