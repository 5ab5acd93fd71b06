//! Applies one or several partitions' batches in one PostgreSQL transaction: lock and load the
//! cards, plan (`plan::plan_batch`, pure: decide folded over the loaded state), write records,
//! history, outbox rows, dead letters, registration results and each partition's next offset,
//! then commit.
//!
//! Exactly-once into PostgreSQL: the offset moves in the same transaction as the state, and only
//! from the offset the batch started at (a fence against a zombie consumer). A replay after a
//! crash re-applies only uncommitted messages; the eventId check and idempotent decisions make
//! even a double delivery harmless.
//!
//! Each message gets an `ingest.message` span under the producer's trace (module `spans`);
//! an enqueued call stores the trace context of its `card.decide` span, so dispatch continues
//! the same trace.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::message::{Applied, Batch, Prepared};
use super::plan::{BatchPlan, Loaded, Part, plan_batch, trusted_card_id};
use crate::core::record::CardRecord;
use crate::core::result::ResultOutcome;
use crate::core::validate::ValidEvent;
use crate::crypto::{SealError, Sealer};
use crate::store::outbox::NewRegistration;
use crate::store::results::NewResult;
use crate::store::{
    StoreError, cards, dead_letters, history, locks, notifications, offsets, outbox, results,
};

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

/// Applies the batch in one transaction; on any error nothing is written.
pub async fn apply_batch(
    pool: &PgPool,
    sealer: &dyn Sealer,
    batch: &Batch<'_>,
    now: DateTime<Utc>,
) -> Result<Applied, ApplyError> {
    let mut applied = apply_batches(pool, sealer, std::slice::from_ref(batch), now).await?;
    applied.pop().ok_or(ApplyError::Empty)
}

/// Applies several partitions' batches (each partition at most once) in ONE transaction: one
/// lock, one load and one write of each kind for all of them, and every partition's offset moved
/// from where its batch started. What each batch did, in order; on any error nothing is written,
/// and a fenced partition fails the whole transaction.
pub async fn apply_batches(
    pool: &PgPool,
    sealer: &dyn Sealer,
    batches: &[Batch<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Applied>, ApplyError> {
    let mut moves = Vec::with_capacity(batches.len());
    for b in batches {
        let last = b.messages.last().ok_or(ApplyError::Empty)?;
        moves.push(offsets::Move {
            group: b.group,
            topic: b.topic,
            partition: b.partition,
            from: b.from,
            to: last.offset + 1,
        });
    }
    let parts: Vec<Part<'_>> = batches
        .iter()
        .map(|b| Part { topic: b.topic, partition: b.partition, messages: &b.messages })
        .collect();
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin ingest transaction", e))?;
    let mut applied = apply_parts(&mut tx, sealer, &parts, now).await?;
    let advanced = offsets::advance_all(&mut tx, &moves).await?;
    if let Some(fenced) =
        moves.iter().find(|m| !advanced.iter().any(|(t, p)| t == m.topic && *p == m.partition))
    {
        // Dropping the transaction rolls it back.
        return Err(ApplyError::Fenced {
            topic: fenced.topic.to_owned(),
            partition: fenced.partition,
            expected: fenced.from,
        });
    }
    tx.commit().await.map_err(|e| StoreError::db("commit ingest transaction", e))?;
    for (a, m) in applied.iter_mut().zip(&moves) {
        a.next_offset = m.to;
    }
    Ok(applied)
}

/// Applies messages inside the caller's transaction (records, history, outbox rows, dead
/// letters), without touching consumed offsets: the batch path adds them, a dead-letter replay
/// does not. Load (locking the cards), plan (pure), write.
pub async fn apply_messages(
    tx: &mut PgConnection,
    sealer: &dyn Sealer,
    topic: &str,
    partition: i32,
    messages: &[Prepared],
    now: DateTime<Utc>,
) -> Result<Applied, ApplyError> {
    let mut applied = apply_parts(tx, sealer, &[Part { topic, partition, messages }], now).await?;
    applied.pop().ok_or(ApplyError::Empty)
}

/// [`apply_messages`] for several partitions' messages at once; what each part did, in order.
async fn apply_parts(
    tx: &mut PgConnection,
    sealer: &dyn Sealer,
    parts: &[Part<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Applied>, ApplyError> {
    let loaded = load(tx, parts.iter().flat_map(|p| p.messages)).await?;
    let plan = plan_batch(loaded, parts, now);
    write(tx, sealer, plan).await
}

/// Locks the messages' cards (in cardId order) and reads their state and the history's record of
/// the messages' event ids.
async fn load<'m>(
    tx: &mut PgConnection,
    messages: impl Iterator<Item = &'m Prepared> + Clone,
) -> Result<Loaded, StoreError> {
    let events: Vec<&ValidEvent> = messages.clone().filter_map(|m| m.outcome.as_ref().ok()).collect();
    // Refused messages with a trusted cardId get a result keyed on that card: its results must be
    // written under its lock too, so that the card's results keep their commit order.
    let refused = messages.filter_map(|m| m.outcome.as_ref().err()).filter_map(trusted_card_id);
    let mut card_ids: Vec<&str> =
        events.iter().map(|e| e.event().meta().card_id.as_str()).chain(refused).collect();
    card_ids.sort_unstable();
    card_ids.dedup();
    let event_ids: Vec<Uuid> = events.iter().map(|e| e.event().meta().event_id.as_uuid()).collect();
    locks::lock_cards(tx, &card_ids).await?;
    let seen = history::seen(tx, &event_ids).await?;
    let cards = cards::load_for_update(tx, &card_ids).await?;
    Ok(Loaded { seen, cards })
}

/// Writes a plan: the thin, effectful half.
async fn write(
    tx: &mut PgConnection,
    sealer: &dyn Sealer,
    plan: BatchPlan<'_>,
) -> Result<Vec<Applied>, ApplyError> {
    let records: Vec<&CardRecord> = plan.records.iter().collect();
    cards::upsert(tx, &records).await?;
    history::append(tx, &plan.history).await?;
    let new_rows: Vec<NewRegistration<'_>> = plan
        .enqueues
        .iter()
        .map(|e| NewRegistration {
            request: &e.request,
            traceparent: e.trace.as_ref().map(|t| t.traceparent.as_str()),
            tracestate: e.trace.as_ref().and_then(|t| t.tracestate.as_deref()),
        })
        .collect();
    outbox::enqueue(tx, &new_rows).await?;
    outbox::cancel_unclaimed(tx, &plan.cancels, "implicit registration came first").await?;
    // Sealed here, not while planning: sealing is the one costly step, and it needs the key.
    let envelopes: Vec<String> =
        plan.dead_letters.iter().map(|d| sealer.seal(&d.message.raw.to_bytes())).collect::<Result<_, _>>()?;
    let dead_rows: Vec<dead_letters::NewDeadLetter<'_>> = plan
        .dead_letters
        .iter()
        .zip(&envelopes)
        .map(|(d, envelope)| dead_letters::NewDeadLetter {
            topic: d.topic,
            partition: d.partition,
            offset: d.message.offset,
            reason: d.reason.code(),
            detail: &d.detail,
            card_id: d.card_id.as_deref(),
            event_id: d.event_id,
            envelope,
        })
        .collect();
    dead_letters::insert(tx, &dead_rows).await?;
    results::record(tx, &plan.results).await?;
    // After the card's own results, so core banking hears the registration before D1's confirmation.
    let ids: Vec<&str> = records.iter().map(|r| r.card_id.as_str()).collect();
    let confirmed: Vec<NewResult> = notifications::confirm_from_earlier(tx, &ids)
        .await?
        .into_iter()
        .map(|c| NewResult {
            reason: Some(format!(
                "D1 notified {} (operationId {}) before this card's event",
                c.operation, c.operation_id
            )),
            card_id: Some(c.card_id),
            consumer_id: Some(c.consumer_id),
            outcome: ResultOutcome::ConfirmedByD1,
            error_code: None,
            event_id: None,
            correlation_id: c.correlation_id,
        })
        .collect();
    results::record(tx, &confirmed).await?;
    Ok(plan.applied)
}
