//! The settle's two statements, besides its lock and commit: one [`read`] of everything a batch of
//! attempts is decided on, one [`write`] of everything it changes. At a few rows a batch, a
//! statement's fixed cost (protocol, parse, plan, executor start) outweighed its work: settles were
//! the largest share of PostgreSQL's time while dispatching, with three reads and three writes each.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::cards::{self, CARD_COLUMNS, CardArrays};
use super::outbox::{FINISH_ALL, Finish, FinishArrays, OutboxStatus};
use super::results::{self, NewResult, ResultArrays};
use super::{StoreError, shift_params};
use crate::core::record::CardRecord;

/// What a batch of claimed rows is settled on.
#[derive(Debug, Default)]
pub struct Settling {
    /// The rows whose lease is still ours (status `IN_FLIGHT`, same fence), now locked.
    pub held: HashSet<Uuid>,
    /// PostgreSQL's `now()` in this transaction (the timestamps a settle writes); `None` when none
    /// of the rows exists any more.
    pub now: Option<DateTime<Utc>>,
    /// The card records of the held rows, by card id: absent when the card has none, an error
    /// when its record is unreadable (that row fails alone).
    pub records: HashMap<String, Result<CardRecord, StoreError>>,
    /// The eventId that enqueued each held row's call (the cause of an explicit result), by card.
    pub enqueued_by: HashMap<String, Uuid>,
}

/// Locks the claimed rows (`FOR UPDATE`) and reads, in one statement, which leases are still ours
/// with their cards' records and the events that enqueued them. Call after locking the cards
/// (`locks::lock_cards`): the statement's snapshot must be taken under those locks. Sent
/// unprepared, so it is planned for the tables as they are (see the store's module doc).
pub async fn read(tx: &mut PgConnection, rows: &[(Uuid, i64)]) -> Result<Settling, StoreError> {
    if rows.is_empty() {
        return Ok(Settling::default());
    }
    static READ: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT o.id AS row_id, o.status AS row_status, o.fence AS row_fence, now() AS now,
                    {CARD_COLUMNS}, ev.event_id AS enqueued_by
             FROM outbox o
             LEFT JOIN cards c ON c.card_id = o.card_id
             LEFT JOIN LATERAL (
                 SELECT e.event_id FROM card_events e
                 WHERE e.card_id = o.card_id AND e.effect = 'ENQUEUED'
                 ORDER BY e.recorded_at LIMIT 1
             ) ev ON true
             WHERE o.id = ANY($1::uuid[])
             FOR UPDATE OF o"
        )
    });
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let found = sqlx::query(READ.as_str())
        .persistent(false)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| StoreError::db("lock claimed rows and read their cards", e))?;
    let fences: HashMap<Uuid, i64> = rows.iter().copied().collect();
    let mut settling = Settling::default();
    for row in &found {
        let column = |e| StoreError::db("read a claimed row", e);
        let (id, status, fence): (Uuid, String, i64) = (
            row.try_get("row_id").map_err(column)?,
            row.try_get("row_status").map_err(column)?,
            row.try_get("row_fence").map_err(column)?,
        );
        settling.now.get_or_insert(row.try_get("now").map_err(column)?);
        if status != OutboxStatus::InFlight.as_str() || fences.get(&id) != Some(&fence) {
            continue;
        }
        settling.held.insert(id);
        let card_id: Option<String> = row.try_get("card_id").map_err(column)?;
        let Some(card_id) = card_id else { continue };
        if let Some(event) = row.try_get::<Option<Uuid>, _>("enqueued_by").map_err(column)? {
            settling.enqueued_by.insert(card_id.clone(), event);
        }
        if let Some(record) = cards::record_of(row).transpose() {
            settling.records.insert(card_id, record);
        }
    }
    Ok(settling)
}

/// Writes a settled batch in one statement: the changed records, the rows' ends, the results, and
/// the relays' notification when there are results (sent at commit). The caller holds the cards'
/// locks and the rows' (from [`read`]).
pub async fn write(
    tx: &mut PgConnection,
    records: &[&CardRecord],
    ends: &[(Uuid, &Finish)],
    reconcile_delay: Duration,
    new_results: &[NewResult],
) -> Result<(), StoreError> {
    // Every part runs to completion whether or not the final SELECT reads it; parts with empty
    // arrays write nothing. 10 + 9 + 8 parameters, then the channel.
    static WRITE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH cards_written AS ({}), rows_ended AS ({}), results_written AS ({} RETURNING 1)
             SELECT pg_notify($28, '') WHERE EXISTS (SELECT 1 FROM results_written)",
            cards::UPSERT,
            shift_params(FINISH_ALL, 10),
            shift_params(results::INSERT, 19),
        )
    });
    let q = CardArrays::of(records).bind(sqlx::query(WRITE.as_str()).persistent(false));
    let q = FinishArrays::of(ends, reconcile_delay).bind(q);
    ResultArrays::of(new_results)
        .bind(q)
        .bind(results::NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::db("write the settled rows, their cards and results", e))?;
    Ok(())
}
