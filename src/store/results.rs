//! The results outbox: one row per registration result, written in the transaction of the state
//! change that causes it ([`record`]), claimed by the relay under a lease ([`claim`]), marked once
//! the broker acknowledged a publication of it ([`mark_published`]), deleted past retention.
//!
//! Per-card order. Every writer of a card's result holds the card's advisory lock
//! (`locks::lock_cards`) from before the insert until commit, so a card's rows get increasing
//! `seq` in commit order, and a committed row's earlier rows of the same card are committed too.
//! [`claim`] hands out only a card's *oldest unpublished* row (no earlier row of that card is
//! unpublished), and a row is marked published only after an acknowledgement of it: so a card's
//! later result is never sent before its earlier one is in the log, whichever replica sends it.
//! A row whose lease ended is claimed again and may be published twice, always with the same
//! `result_id`.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{PgQuery, StoreError};
use crate::core::result::{RegistrationResult, ResultOutcome};

/// The `NOTIFY` channel that wakes relays when results are written.
pub const NOTIFY_CHANNEL: &str = "card_registrar_results";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A result to write. Ids, codes and operator text only: never card data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewResult {
    /// The card; `None` for a refused message whose cardId is not trustworthy.
    pub card_id: Option<String>,
    /// The consumer, when known and trusted.
    pub consumer_id: Option<String>,
    /// What happened.
    pub outcome: ResultOutcome,
    /// D1's errorCode (FAILED) or the dead-letter reason code (REJECTED).
    pub error_code: Option<String>,
    /// Operator-facing text (names fields and codes, never values).
    pub reason: Option<String>,
    /// The input event that caused it.
    pub event_id: Option<Uuid>,
    /// The `x-correlation-id` of the card's D1 call.
    pub correlation_id: Option<String>,
}

/// The insert of results, in their order (`seq` follows the order the changes were decided in);
/// `$1..$8` are [`ResultArrays`]. The caller must hold the advisory lock of every card among them
/// (see the module doc).
pub(crate) const INSERT: &str =
    "INSERT INTO registration_results (result_id, card_id, consumer_id, outcome, error_code, reason,
                                       event_id, correlation_id)
     SELECT i, c, cs, o, e, r, ev, cid
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[],
                 $8::text[]) WITH ORDINALITY AS t(i, c, cs, o, e, r, ev, cid, n)
     ORDER BY n";

/// Results as the arrays of [`INSERT`], each with a new `result_id`.
pub(crate) struct ResultArrays<'a> {
    id: Vec<Uuid>,
    card_id: Vec<Option<&'a str>>,
    consumer_id: Vec<Option<&'a str>>,
    outcome: Vec<&'static str>,
    error_code: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    event_id: Vec<Option<Uuid>>,
    correlation_id: Vec<Option<&'a str>>,
}

impl<'a> ResultArrays<'a> {
    /// The arrays of these results.
    pub(crate) fn of(rows: &'a [NewResult]) -> Self {
        Self {
            id: rows.iter().map(|_| Uuid::now_v7()).collect(),
            card_id: rows.iter().map(|r| r.card_id.as_deref()).collect(),
            consumer_id: rows.iter().map(|r| r.consumer_id.as_deref()).collect(),
            outcome: rows.iter().map(|r| r.outcome.as_str()).collect(),
            error_code: rows.iter().map(|r| r.error_code.as_deref()).collect(),
            reason: rows.iter().map(|r| r.reason.as_deref()).collect(),
            event_id: rows.iter().map(|r| r.event_id).collect(),
            correlation_id: rows.iter().map(|r| r.correlation_id.as_deref()).collect(),
        }
    }

    /// Binds the eight arrays, in [`INSERT`]'s order.
    pub(crate) fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.id)
            .bind(self.card_id)
            .bind(self.consumer_id)
            .bind(self.outcome)
            .bind(self.error_code)
            .bind(self.reason)
            .bind(self.event_id)
            .bind(self.correlation_id)
    }
}

/// Writes results inside the caller's transaction, in order, and wakes relays when it commits.
/// The caller must hold the advisory lock of every card among them (see the module doc).
pub async fn record(tx: &mut PgConnection, rows: &[NewResult]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // One statement: the rows, and the relays' notification (sent at commit).
    static RECORD: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH ins AS ({INSERT} RETURNING 1) SELECT pg_notify($9, '') WHERE EXISTS (SELECT 1 FROM ins)"
        )
    });
    ResultArrays::of(rows)
        .bind(sqlx::query(RECORD.as_str()))
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::db("record registration results", e))?;
    Ok(())
}

/// A result row the relay holds a lease on.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingResult {
    /// Position in the results outbox (per card: commit order).
    pub seq: i64,
    /// Unique id; kept by every publication of this row.
    pub result_id: Uuid,
    /// The card (also the message key).
    pub card_id: Option<String>,
    /// The consumer.
    pub consumer_id: Option<String>,
    /// Stable outcome symbol.
    pub outcome: String,
    /// D1 errorCode or dead-letter reason.
    pub error_code: Option<String>,
    /// Operator-facing text.
    pub reason: Option<String>,
    /// Causing event.
    pub event_id: Option<Uuid>,
    /// D1 correlation id.
    pub correlation_id: Option<String>,
    /// When the change was made (PostgreSQL's clock at its transaction).
    pub occurred_at: DateTime<Utc>,
}

impl PendingResult {
    /// The result as published; a stored outcome the code does not know is corruption.
    pub fn to_result(&self) -> Result<RegistrationResult, StoreError> {
        let outcome = ResultOutcome::parse(&self.outcome).ok_or_else(|| StoreError::Corrupt {
            table: "registration_results",
            key: self.seq.to_string(),
            detail: "outcome".into(),
        })?;
        Ok(RegistrationResult {
            result_id: self.result_id,
            card_id: self.card_id.clone(),
            consumer_id: self.consumer_id.clone(),
            outcome,
            error_code: self.error_code.clone(),
            reason: self.reason.clone(),
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id.clone(),
        })
    }
}

/// Claims up to `limit` publishable rows for `owner`, for `lease`: rows not published, not leased
/// (or whose lease ended), and with no earlier unpublished row of the same card. So at most one
/// row per card is out at a time, and it is the card's oldest unpublished one. Rows locked by
/// another claimer are skipped, never waited for.
///
/// A row is its card's oldest when its `seq` is at most the first of the card's unpublished rows.
/// Those are found among all the card's rows (`registration_results_by_card`), the unpublished
/// test applied after the look-up: `OFFSET 0` keeps it out of the scan, so no index of unpublished
/// rows can serve the look-up. Asked for the card's unpublished rows directly (`NOT EXISTS`), the
/// planner could answer from the queue's `(seq)` index and did whenever its statistics had been
/// gathered with every result published (the usual state): believing the queue held one row, it
/// checked each candidate against the whole queue, and a relay 30,000 results behind took 3 s a
/// claim.
///
/// Only rows from `seq` `from` on are claimed (0: the whole queue): a published row's entry stays
/// in the queue's index until VACUUM, and a claim from the start reads every one of them (see
/// `results::relay` for the floor it passes). The card's-oldest test still looks at all of the
/// card's rows, so a floor never lets a card's later row out before an earlier one.
pub async fn claim(
    db: impl PgExecutor<'_>,
    owner: &str,
    limit: i64,
    lease: Duration,
    from: i64,
) -> Result<Vec<PendingResult>, StoreError> {
    sqlx::query_as(
        "WITH heads AS (
             SELECT r.seq FROM registration_results r
             WHERE r.published_at IS NULL AND r.seq >= $4
               AND (r.lease_expires_at IS NULL OR r.lease_expires_at <= now())
               AND (r.card_id IS NULL
                    OR r.seq <= (SELECT min(c.seq)
                                 FROM (SELECT e.seq, e.published_at FROM registration_results e
                                       WHERE e.card_id = r.card_id OFFSET 0) c
                                 WHERE c.published_at IS NULL))
             ORDER BY r.seq LIMIT $1 FOR UPDATE SKIP LOCKED
         )
         UPDATE registration_results r SET lease_owner = $2, attempts = r.attempts + 1,
                lease_expires_at = now() + make_interval(secs => $3::double precision / 1000.0)
         FROM heads WHERE r.seq = heads.seq
         RETURNING r.seq, r.result_id, r.card_id, r.consumer_id, r.outcome, r.error_code, r.reason,
                   r.event_id, r.correlation_id, r.occurred_at",
    )
    .bind(limit)
    .bind(owner)
    .bind(millis(lease))
    .bind(from)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("claim registration results", e))
}

/// Marks rows published. Call only with rows the broker acknowledged: whichever relay got the
/// acknowledgement may mark (a row published twice is marked once), so no fence is needed.
pub async fn mark_published(db: impl PgExecutor<'_>, seqs: &[i64]) -> Result<u64, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE registration_results SET published_at = now(), lease_owner = NULL, lease_expires_at = NULL
         WHERE seq = ANY($1::bigint[]) AND published_at IS NULL",
    )
    .bind(seqs)
    .execute(db)
    .await
    .map_err(|e| StoreError::db("mark registration results published", e))?;
    Ok(done.rows_affected())
}

/// Gives rows back unpublished (the broker refused or timed out): claimable again `after` this
/// long, by PostgreSQL's clock. Only the lease holder's rows are touched.
pub async fn release(
    db: impl PgExecutor<'_>,
    owner: &str,
    seqs: &[i64],
    after: Duration,
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE registration_results SET lease_owner = NULL,
                lease_expires_at = now() + make_interval(secs => $3::double precision / 1000.0)
         WHERE seq = ANY($1::bigint[]) AND lease_owner = $2 AND published_at IS NULL",
    )
    .bind(seqs)
    .bind(owner)
    .bind(millis(after))
    .execute(db)
    .await
    .map_err(|e| StoreError::db("release registration results", e))?;
    Ok(())
}

/// The relay's backlog: unpublished rows and the age of the oldest, in seconds (0 when none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows not yet published.
    pub pending: i64,
    /// Seconds since the oldest unpublished row was written.
    pub oldest_age_secs: f64,
}

/// Reads the backlog through the partial index of unpublished rows.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<Backlog, StoreError> {
    let (pending, age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(occurred_at))::float8
         FROM registration_results WHERE published_at IS NULL",
    )
    .fetch_one(db)
    .await
    .map_err(|e| StoreError::db("read the results backlog", e))?;
    Ok(Backlog { pending, oldest_age_secs: age.unwrap_or(0.0).max(0.0) })
}

/// Deletes up to `batch` rows published more than `older_than_secs` ago; returns how many.
pub async fn delete_published(
    db: impl PgExecutor<'_>,
    older_than_secs: i64,
    batch: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM registration_results WHERE seq IN (
             SELECT seq FROM registration_results
             WHERE published_at < now() - make_interval(secs => $1::double precision)
             LIMIT $2)",
    )
    .bind(older_than_secs)
    .bind(batch)
    .execute(db)
    .await
    .map_err(|e| StoreError::db("delete published registration results", e))?;
    Ok(done.rows_affected())
}

/// A stored result, for `card show` and tests.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct StoredResult {
    /// Unique id.
    pub result_id: Uuid,
    /// Outcome symbol.
    pub outcome: String,
    /// D1 errorCode or dead-letter reason.
    pub error_code: Option<String>,
    /// Operator-facing text.
    pub reason: Option<String>,
    /// Causing event.
    pub event_id: Option<Uuid>,
    /// D1 correlation id.
    pub correlation_id: Option<String>,
    /// When the change was made.
    pub occurred_at: DateTime<Utc>,
    /// When the broker acknowledged it (`None`: not yet).
    pub published_at: Option<DateTime<Utc>>,
}

/// The card's results, oldest first.
pub async fn for_card(db: impl PgExecutor<'_>, card_id: &str) -> Result<Vec<StoredResult>, StoreError> {
    sqlx::query_as(
        "SELECT result_id, outcome, error_code, reason, event_id, correlation_id, occurred_at, published_at
         FROM registration_results WHERE card_id = $1 ORDER BY seq",
    )
    .bind(card_id)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("read the card's results", e))
}
