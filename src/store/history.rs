//! Each card's event history. The primary key on `event_id` recognises a re-published event.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::StoreError;

/// One history row to append.
#[derive(Debug, Clone)]
pub struct HistoryRow<'a> {
    /// `eventId`.
    pub event_id: Uuid,
    /// The card.
    pub card_id: &'a str,
    /// `CREATED`, `TOKENIZED` or `ORDERED`.
    pub kind: &'static str,
    /// `APPROVED`, `DECLINED`, `ACCEPTED`, `REJECTED`, or none for created.
    pub outcome: Option<&'static str>,
    /// The event's consumer.
    pub consumer_id: &'a str,
    /// `occurredAt`.
    pub occurred_at: DateTime<Utc>,
    /// What the decision did (`ENQUEUED`, `NO_CHANGE`, ...).
    pub effect: &'static str,
    /// Where the event was read.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What the history remembers of an event: enough to tell a re-published copy (same facts) from
/// an eventId reused for another event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SeenEvent {
    /// The card.
    pub card_id: String,
    /// `CREATED`, `TOKENIZED` or `ORDERED`.
    pub kind: String,
    /// Outcome, for tokenized and ordered.
    pub outcome: Option<String>,
    /// The event's consumer.
    pub consumer_id: String,
    /// `occurredAt`.
    pub occurred_at: DateTime<Utc>,
}

/// The events among these ids already in the history, with their facts.
pub async fn seen(tx: &mut PgConnection, event_ids: &[Uuid]) -> Result<HashMap<Uuid, SeenEvent>, StoreError> {
    if event_ids.is_empty() {
        return Ok(HashMap::new());
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        event_id: Uuid,
        #[sqlx(flatten)]
        seen: SeenEvent,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, card_id, kind, outcome, consumer_id, occurred_at
         FROM card_events WHERE event_id = ANY($1::uuid[])",
    )
    .persistent(false)
    .bind(event_ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::db("look up event ids", e))?;
    Ok(rows.into_iter().map(|r| (r.event_id, r.seen)).collect())
}

/// Appends rows; an event id already present is skipped.
pub async fn append(tx: &mut PgConnection, rows: &[HistoryRow<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let event_id: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let card_id: Vec<&str> = rows.iter().map(|r| r.card_id).collect();
    let kind: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let outcome: Vec<Option<&str>> = rows.iter().map(|r| r.outcome).collect();
    let consumer_id: Vec<&str> = rows.iter().map(|r| r.consumer_id).collect();
    let occurred_at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.occurred_at).collect();
    let effect: Vec<&str> = rows.iter().map(|r| r.effect).collect();
    let topic: Vec<&str> = rows.iter().map(|r| r.topic).collect();
    let partition: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    let offset: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    sqlx::query(
        "INSERT INTO card_events (event_id, card_id, kind, outcome, consumer_id, occurred_at, effect,
                                  topic, partition, \"offset\")
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::timestamptz[], $7::text[], $8::text[], $9::int[], $10::bigint[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event_id)
    .bind(&card_id)
    .bind(&kind)
    .bind(&outcome)
    .bind(&consumer_id)
    .bind(&occurred_at)
    .bind(&effect)
    .bind(&topic)
    .bind(&partition)
    .bind(&offset)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("append history", e))?;
    Ok(())
}

/// A stored history row, for `card show`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct StoredEvent {
    /// `eventId`.
    pub event_id: Uuid,
    /// Event kind.
    pub kind: String,
    /// Outcome, for tokenized and ordered.
    pub outcome: Option<String>,
    /// The event's consumer.
    pub consumer_id: String,
    /// `occurredAt`.
    pub occurred_at: DateTime<Utc>,
    /// Effect of the decision.
    pub effect: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// When it was applied.
    pub recorded_at: DateTime<Utc>,
}

/// The card's history, oldest first.
pub async fn for_card(db: impl PgExecutor<'_>, card_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
    sqlx::query_as(
        "SELECT event_id, kind, outcome, consumer_id, occurred_at, effect, topic, partition, \"offset\", recorded_at
         FROM card_events WHERE card_id = $1 ORDER BY recorded_at, \"offset\"",
    )
    .bind(card_id)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("read history", e))
}
