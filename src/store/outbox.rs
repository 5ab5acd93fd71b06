//! The outbox: one row per D1 call. Enqueued in the ingest transaction; claimed under a lease
//! with `FOR UPDATE SKIP LOCKED`; finished only by the lease holder (fencing token).
//!
//! Statuses ([`OutboxStatus`]): `PENDING` (waiting, due at `next_attempt_at`), `IN_FLIGHT`
//! (leased), `DONE`, `CANCELLED`, `PARKED` (gave up; an operator can retry). A row whose lease
//! expired is claimed again only `reconcile delay` after the lease end, and marked
//! `needs_reconcile`: the previous holder may have sent a PUT that D1 is still processing.
//!
//! Every scheduling time is computed by PostgreSQL (`now() + interval`), never from a worker's
//! clock, so a worker whose clock is off cannot shorten a wait.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{PgQuery, StoreError};
use crate::core::decide::RegistrationRequest;
use crate::core::ids::CorrelationId;

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboxStatus {
    /// Waiting; due at `next_attempt_at`.
    Pending,
    /// Leased by a worker.
    InFlight,
    /// D1 has the card.
    Done,
    /// Not needed any more.
    Cancelled,
    /// Gave up; an operator can retry.
    Parked,
}

impl OutboxStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [Self::Pending, Self::InFlight, Self::Done, Self::Cancelled, Self::Parked];

    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::InFlight => "IN_FLIGHT",
            Self::Done => "DONE",
            Self::Cancelled => "CANCELLED",
            Self::Parked => "PARKED",
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboxStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
            format!("must be one of {} (not {s:?})", names.join(", "))
        })
    }
}

impl TryFrom<String> for OutboxStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Milliseconds of a duration for an SQL interval (saturating).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The `NOTIFY` channel that wakes dispatchers when rows are enqueued.
pub const NOTIFY_CHANNEL: &str = "card_registrar_outbox";

/// A registration row to insert.
#[derive(Debug, Clone)]
pub struct NewRegistration<'a> {
    /// The call's data (ids and received JWE; no clear PAN).
    pub request: &'a RegistrationRequest,
    /// W3C trace context of the decision, so dispatch continues the trace.
    pub traceparent: Option<&'a str>,
    /// W3C `tracestate` companion.
    pub tracestate: Option<&'a str>,
}

/// Inserts registration rows (at most one per card, enforced by a unique index) and wakes
/// dispatchers when the transaction commits.
pub async fn enqueue(tx: &mut PgConnection, rows: &[NewRegistration<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut id = Vec::with_capacity(rows.len());
    let mut card_id = Vec::with_capacity(rows.len());
    let mut payload = Vec::with_capacity(rows.len());
    let mut traceparent = Vec::with_capacity(rows.len());
    let mut tracestate = Vec::with_capacity(rows.len());
    let mut correlation = Vec::with_capacity(rows.len());
    for r in rows {
        let row_id = Uuid::now_v7();
        id.push(row_id);
        card_id.push(r.request.card_id.as_str());
        payload.push(serde_json::to_value(r.request).map_err(|e| StoreError::Corrupt {
            table: "outbox",
            key: r.request.card_id.to_string(),
            detail: format!("payload does not serialise: {e}"),
        })?);
        traceparent.push(r.traceparent);
        tracestate.push(r.tracestate);
        correlation.push(CorrelationId::for_outbox_row(row_id).to_string());
    }
    // One statement: the rows, and the notification (sent at commit) if any row went in.
    sqlx::query(
        "WITH ins AS (
             INSERT INTO outbox (id, kind, card_id, payload, status, traceparent, tracestate, correlation_id)
             SELECT i, 'REGISTER_CARD', c, p, 'PENDING', tp, ts, cid
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[])
                  AS t(i, c, p, tp, ts, cid)
             ON CONFLICT (card_id) WHERE kind = 'REGISTER_CARD' DO NOTHING
             RETURNING 1
         )
         SELECT pg_notify($7, '') WHERE EXISTS (SELECT 1 FROM ins)",
    )
    .bind(&id)
    .bind(&card_id)
    .bind(&payload)
    .bind(&traceparent)
    .bind(&tracestate)
    .bind(&correlation)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("enqueue registrations", e))?;
    Ok(())
}

/// Cancels the cards' registration rows that no worker holds (`PENDING` or `PARKED`).
pub async fn cancel_unclaimed(
    tx: &mut PgConnection,
    card_ids: &[&str],
    why: &str,
) -> Result<u64, StoreError> {
    if card_ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE outbox SET status = 'CANCELLED', last_error = $2, finished_at = now(), updated_at = now(),
                           lease_owner = NULL, lease_expires_at = NULL
         WHERE kind = 'REGISTER_CARD' AND card_id = ANY($1::text[]) AND status IN ('PENDING', 'PARKED')",
    )
    .persistent(false)
    .bind(card_ids)
    .bind(why)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("cancel queued registrations", e))?;
    Ok(done.rows_affected())
}

/// A row this worker holds a lease on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRow {
    /// Row id.
    pub id: Uuid,
    /// The card.
    pub card_id: String,
    /// The registration request (JSON of `RegistrationRequest`).
    pub payload: serde_json::Value,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// Fencing token: only the holder of this value may finish the row.
    pub fence: i64,
    /// The previous holder may have sent the request: ask D1 before sending again.
    pub needs_reconcile: bool,
    /// Start of the current series of attempts (for the age limit).
    pub attempts_since: DateTime<Utc>,
    /// Trace context of the decision.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// Stable `x-correlation-id` for every attempt of this row.
    pub correlation_id: String,
    /// Milliseconds since `attempts_since`, by PostgreSQL's clock at the claim (for the age limit).
    pub age_ms: i64,
    /// At the claim, the card was registered already or D1 had registered it implicitly while this
    /// call was queued: no PUT is needed (read without the card lock; the settle decides under it).
    pub superseded: bool,
}

/// Claims up to `limit` due rows for `owner`, for `lease`: `PENDING` rows whose time has come, and
/// `IN_FLIGHT` rows whose lease ended at least `reconcile_delay` ago (a PUT the previous holder
/// sent before its lease ended has been committed or abandoned by D1 by then; the new holder asks
/// D1 first). Rows locked by another claimer are skipped, never waited for. Each row comes with
/// whether its card no longer needs the call ([`ClaimedRow::superseded`]), saving a read per row.
pub async fn claim(
    db: impl PgExecutor<'_>,
    owner: &str,
    limit: i64,
    lease: Duration,
    reconcile_delay: Duration,
) -> Result<Vec<ClaimedRow>, StoreError> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM outbox WHERE status = 'PENDING' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
         ), expired AS (
             SELECT id FROM outbox WHERE status = 'IN_FLIGHT'
               AND lease_expires_at <= now() - make_interval(secs => $4::double precision / 1000.0)
             ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (SELECT id FROM due UNION ALL SELECT id FROM expired)
         UPDATE outbox o SET
             needs_reconcile = o.needs_reconcile OR o.status = 'IN_FLIGHT',
             status = 'IN_FLIGHT', lease_owner = $2,
             lease_expires_at = now() + make_interval(secs => $3::double precision / 1000.0),
             fence = o.fence + 1, attempts = o.attempts + 1, updated_at = now()
         FROM claimed WHERE o.id = claimed.id
         RETURNING o.id, o.card_id, o.payload, o.attempts, o.fence, o.needs_reconcile, o.attempts_since,
                   o.traceparent, o.tracestate, o.correlation_id,
                   (extract(epoch FROM now() - o.attempts_since) * 1000)::bigint AS age_ms,
                   coalesce((SELECT c.state = 'REGISTERED' OR c.implicit_while_in_flight IS NOT NULL
                             FROM cards c WHERE c.card_id = o.card_id), false) AS superseded",
    )
    .bind(limit)
    .bind(owner)
    .bind(millis(lease))
    .bind(millis(reconcile_delay))
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("claim outbox rows", e))
}

/// How a held row ends an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// D1 has the card.
    Done,
    /// Not needed any more.
    Cancelled {
        /// Why (operator-facing).
        why: String,
    },
    /// Gave up; operators can retry.
    Parked {
        /// The last error.
        error: String,
    },
    /// Try again `after` this long (from PostgreSQL's `now()`).
    Retry {
        /// Wait before the next attempt.
        after: Duration,
        /// The error of this attempt.
        error: String,
        /// Whether D1 must be asked before the next send (the request may have reached it).
        reconcile: bool,
    },
    /// Nothing sent in this attempt (e.g. no time left in the lease): back to the queue. The attempt
    /// still counts, so a row that keeps running out of time parks instead of spinning.
    Release {
        /// Wait before the next attempt.
        after: Duration,
    },
}

/// The columns of one row's end, as [`FINISH_ALL`] sends them: the new status, whether it is
/// final (`finished_at`), the error to record (`None`: keep `last_error`; `Some(None)`: clear it),
/// `needs_reconcile` (`None`: keep), the wait before the next attempt (`None`: keep
/// `next_attempt_at`), and whether the reconcile floor is stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ending<'a> {
    status: OutboxStatus,
    finished: bool,
    error: Option<Option<&'a str>>,
    reconcile: Option<bool>,
    after_ms: Option<i64>,
    stamp_floor: bool,
}

impl<'a> Ending<'a> {
    fn of(how: &'a Finish) -> Self {
        let none = Self {
            status: OutboxStatus::Done,
            finished: false,
            error: None,
            reconcile: None,
            after_ms: None,
            stamp_floor: false,
        };
        match how {
            Finish::Done => Self { finished: true, error: Some(None), reconcile: Some(false), ..none },
            Finish::Cancelled { why } => {
                Self { status: OutboxStatus::Cancelled, finished: true, error: Some(Some(why)), ..none }
            }
            Finish::Parked { error } => {
                Self { status: OutboxStatus::Parked, error: Some(Some(error)), stamp_floor: true, ..none }
            }
            Finish::Retry { after, error, reconcile } => Self {
                status: OutboxStatus::Pending,
                error: Some(Some(error)),
                reconcile: Some(*reconcile),
                after_ms: Some(millis(*after)),
                stamp_floor: true,
                ..none
            },
            Finish::Release { after } => Self {
                status: OutboxStatus::Pending,
                after_ms: Some(millis(*after)),
                stamp_floor: true,
                ..none
            },
        }
    }
}

/// Ends the attempts on locked rows whose leases are ours, in one statement; `$1..$9` are
/// [`FinishArrays`]. The lease columns are cleared. Any request an attempt sent is settled at D1
/// within the reconcile delay: a row that stays in play or is parked records that time
/// (`reconcile_after`) so that no later action, an operator's retry included, asks D1 about it
/// earlier.
pub(crate) const FINISH_ALL: &str = "UPDATE outbox o SET
         status = t.status, updated_at = now(), lease_owner = NULL, lease_expires_at = NULL,
         finished_at = CASE WHEN t.finished THEN now() ELSE o.finished_at END,
         last_error = CASE WHEN t.set_error THEN t.error ELSE o.last_error END,
         needs_reconcile = coalesce(t.reconcile, o.needs_reconcile),
         next_attempt_at = CASE WHEN t.after_ms IS NULL THEN o.next_attempt_at
                           ELSE now() + make_interval(secs => t.after_ms::double precision / 1000.0) END,
         reconcile_after = CASE WHEN t.stamp_floor
                           THEN now() + make_interval(secs => $9::double precision / 1000.0)
                           ELSE o.reconcile_after END
     FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bool[], $5::text[], $6::bool[], $7::bigint[],
                 $8::bool[]) AS t(id, status, finished, set_error, error, reconcile, after_ms, stamp_floor)
     WHERE o.id = t.id";

/// Rows' ends as the arrays of [`FINISH_ALL`], with the reconcile delay.
pub(crate) struct FinishArrays<'a> {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    finished: Vec<bool>,
    set_error: Vec<bool>,
    error: Vec<Option<&'a str>>,
    reconcile: Vec<Option<bool>>,
    after_ms: Vec<Option<i64>>,
    stamp_floor: Vec<bool>,
    reconcile_delay_ms: i64,
}

impl<'a> FinishArrays<'a> {
    /// The arrays of these ends.
    pub(crate) fn of(rows: &[(Uuid, &'a Finish)], reconcile_delay: Duration) -> Self {
        let n = rows.len();
        let mut arrays = Self {
            id: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            finished: Vec::with_capacity(n),
            set_error: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            reconcile: Vec::with_capacity(n),
            after_ms: Vec::with_capacity(n),
            stamp_floor: Vec::with_capacity(n),
            reconcile_delay_ms: millis(reconcile_delay),
        };
        for (row_id, how) in rows {
            let e = Ending::of(how);
            arrays.id.push(*row_id);
            arrays.status.push(e.status.as_str());
            arrays.finished.push(e.finished);
            arrays.set_error.push(e.error.is_some());
            arrays.error.push(e.error.flatten());
            arrays.reconcile.push(e.reconcile);
            arrays.after_ms.push(e.after_ms);
            arrays.stamp_floor.push(e.stamp_floor);
        }
        arrays
    }

    /// Binds the nine parameters, in [`FINISH_ALL`]'s order.
    pub(crate) fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.id)
            .bind(self.status)
            .bind(self.finished)
            .bind(self.set_error)
            .bind(self.error)
            .bind(self.reconcile)
            .bind(self.after_ms)
            .bind(self.stamp_floor)
            .bind(self.reconcile_delay_ms)
    }
}

/// A row as operators see it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct OutboxRow {
    /// Row id.
    pub id: Uuid,
    /// Call kind.
    pub kind: String,
    /// The card.
    pub card_id: String,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: OutboxStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// Next attempt time (when `PENDING`).
    pub next_attempt_at: DateTime<Utc>,
    /// Current lease holder.
    pub lease_owner: Option<String>,
    /// Whether D1 must be asked before the next send.
    pub needs_reconcile: bool,
    /// The last error.
    pub last_error: Option<String>,
    /// Correlation id sent to D1.
    pub correlation_id: String,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

const ROW_COLUMNS: &str = "id, kind, card_id, status, attempts, next_attempt_at, lease_owner, needs_reconcile, \
                           last_error, correlation_id, created_at, updated_at";

/// Rows filtered by status and/or card, newest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    status: Option<OutboxStatus>,
    card_id: Option<&str>,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM outbox
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR card_id = $2)
         ORDER BY created_at DESC LIMIT $3"
    ))
    .bind(status.map(OutboxStatus::as_str))
    .bind(card_id)
    .bind(limit)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("list outbox rows", e))
}

/// The card of a row, if the row exists.
pub async fn card_of(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT card_id FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .map_err(|e| StoreError::db("read outbox row", e))?;
    Ok(row.map(|(c,)| c))
}

/// One row by id, locked for an operator action.
pub async fn get_for_update(tx: &mut PgConnection, id: Uuid) -> Result<Option<OutboxRow>, StoreError> {
    sqlx::query_as(&format!("SELECT {ROW_COLUMNS} FROM outbox WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::db("read outbox row", e))
}

/// Operator retry: a parked (or waiting) row becomes due now, attempts reset, asking D1 first; but
/// never before its `reconcile_after` (a PUT of its last attempt may still be running at D1).
pub async fn requeue(tx: &mut PgConnection, id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET status = 'PENDING', attempts = 0, needs_reconcile = true,
                           next_attempt_at = greatest(now(), coalesce(reconcile_after, now())),
                           finished_at = NULL, updated_at = now(), attempts_since = now()
         WHERE id = $1 AND status IN ('PARKED', 'PENDING')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("requeue outbox row", e))?;
    Ok(())
}

/// Ids of every parked row.
pub async fn parked_ids(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, StoreError> {
    let rows: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM outbox WHERE status = 'PARKED' ORDER BY updated_at")
            .fetch_all(db)
            .await
            .map_err(|e| StoreError::db("list parked rows", e))?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Deletes up to `batch` finished rows older than `older_than_secs`; returns how many.
pub async fn delete_finished(
    db: impl PgExecutor<'_>,
    older_than_secs: i64,
    batch: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox WHERE status IN ('DONE', 'CANCELLED')
               AND finished_at < now() - make_interval(secs => $1::double precision)
             LIMIT $2)",
    )
    .bind(older_than_secs)
    .bind(batch)
    .execute(db)
    .await
    .map_err(|e| StoreError::db("delete finished outbox rows", e))?;
    Ok(done.rows_affected())
}

/// Gauges for SREs: active rows by status, and the age of the oldest due row in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxGauges {
    /// `PENDING` rows.
    pub pending: i64,
    /// `IN_FLIGHT` rows.
    pub in_flight: i64,
    /// `PARKED` rows.
    pub parked: i64,
    /// Seconds since the oldest due row became due (0 when none).
    pub oldest_due_age_secs: f64,
}

/// Reads the gauges using the partial indexes only (cheap at millions of rows).
pub async fn gauges(db: impl PgExecutor<'_>) -> Result<OutboxGauges, StoreError> {
    let (pending, in_flight, parked, age): (i64, i64, i64, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE status = 'PENDING'),
                (SELECT count(*) FROM outbox WHERE status = 'IN_FLIGHT'),
                (SELECT count(*) FROM outbox WHERE status = 'PARKED'),
                (SELECT extract(epoch FROM now() - min(next_attempt_at))::float8
                   FROM outbox WHERE status = 'PENDING' AND next_attempt_at <= now())",
    )
    .fetch_one(db)
    .await
    .map_err(|e| StoreError::db("read outbox gauges", e))?;
    Ok(OutboxGauges { pending, in_flight, parked, oldest_due_age_secs: age.unwrap_or(0.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_sets_what_the_single_row_updates_set_and_keeps_the_rest() {
        let e = |how: &Finish| {
            let e = Ending::of(how);
            (
                e.status,
                e.finished,
                e.error.map(|e| e.map(str::to_owned)),
                e.reconcile,
                e.after_ms,
                e.stamp_floor,
            )
        };
        let s = |t: &str| Some(Some(t.to_owned()));
        assert_eq!(e(&Finish::Done), (OutboxStatus::Done, true, Some(None), Some(false), None, false));
        assert_eq!(
            e(&Finish::Cancelled { why: "w".into() }),
            (OutboxStatus::Cancelled, true, s("w"), None, None, false)
        );
        assert_eq!(
            e(&Finish::Parked { error: "p".into() }),
            (OutboxStatus::Parked, false, s("p"), None, None, true)
        );
        let retry = Finish::Retry { after: Duration::from_millis(1500), error: "r".into(), reconcile: true };
        assert_eq!(e(&retry), (OutboxStatus::Pending, false, s("r"), Some(true), Some(1500), true));
        // A release keeps the last error and whether D1 must be asked: nothing was sent.
        assert_eq!(
            e(&Finish::Release { after: Duration::from_millis(7) }),
            (OutboxStatus::Pending, false, None, None, Some(7), true)
        );
    }
}
