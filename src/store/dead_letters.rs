//! Dead letters: messages that could not be applied, kept whole (sealed) and replayable.
//!
//! The original key, headers and bytes are stored only inside `envelope`, sealed by the caller
//! (a JWE to our own card-data key), because a malformed message may hold a clear PAN anywhere.
//! The clear columns hold only what is safe: where the message came from, the reason code, a
//! detail naming fields (never values), and ids that passed validation.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::StoreError;

/// Where a dead letter stands with respect to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplayStatus {
    /// Never replayed.
    New,
    /// Replayed and applied.
    Replayed,
    /// Replayed, and still not applicable.
    StillFailing,
}

impl ReplayStatus {
    /// Every status.
    pub const ALL: [Self; 3] = [Self::New, Self::Replayed, Self::StillFailing];

    /// The value stored in the `replay_status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Replayed => "REPLAYED",
            Self::StillFailing => "STILL_FAILING",
        }
    }
}

impl TryFrom<String> for ReplayStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown replay status {s:?}"))
    }
}

/// A dead letter to store.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Stable reason code.
    pub reason: &'static str,
    /// Operator-facing detail; names fields, never their values.
    pub detail: &'a str,
    /// The card, when the message decoded and its id is safe to show.
    pub card_id: Option<&'a str>,
    /// The event id, when it decoded.
    pub event_id: Option<Uuid>,
    /// The sealed original message.
    pub envelope: &'a str,
}

/// Most bytes of text (sealed envelopes and details) bound by one insert statement: far below
/// PostgreSQL's 1 GB limit on one parameter value and on one protocol message, and small enough
/// that the server never holds much more than one statement's worth at once.
pub const INSERT_MAX_BYTES: usize = 16 << 20;

/// Most rows bound by one insert statement.
pub const INSERT_MAX_ROWS: usize = 1000;

/// Stores dead letters; a message already stored (same topic, partition, offset) is skipped.
/// Large sets are written in several statements of at most [`INSERT_MAX_BYTES`] each.
pub async fn insert(tx: &mut PgConnection, rows: &[NewDeadLetter<'_>]) -> Result<(), StoreError> {
    for chunk in chunks(rows, INSERT_MAX_BYTES, INSERT_MAX_ROWS) {
        insert_chunk(tx, chunk).await?;
    }
    Ok(())
}

/// Splits `rows` into consecutive runs of at most `max_rows` rows and `max_bytes` bytes of text
/// (a single larger row forms a run of its own).
fn chunks<'r, 'a>(
    rows: &'r [NewDeadLetter<'a>],
    max_bytes: usize,
    max_rows: usize,
) -> Vec<&'r [NewDeadLetter<'a>]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, row) in rows.iter().enumerate() {
        let size = row.text_bytes();
        if i > start && (bytes.saturating_add(size) > max_bytes || i - start >= max_rows) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(size);
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

impl NewDeadLetter<'_> {
    fn text_bytes(&self) -> usize {
        self.topic.len()
            + self.reason.len()
            + self.detail.len()
            + self.card_id.map_or(0, str::len)
            + self.envelope.len()
            + 64
    }
}

async fn insert_chunk(tx: &mut PgConnection, rows: &[NewDeadLetter<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let topic: Vec<&str> = rows.iter().map(|r| r.topic).collect();
    let partition: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    let offset: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    let reason: Vec<&str> = rows.iter().map(|r| r.reason).collect();
    let detail: Vec<&str> = rows.iter().map(|r| r.detail).collect();
    let card_id: Vec<Option<&str>> = rows.iter().map(|r| r.card_id).collect();
    let event_id: Vec<Option<Uuid>> = rows.iter().map(|r| r.event_id).collect();
    let envelope: Vec<&str> = rows.iter().map(|r| r.envelope).collect();
    sqlx::query(
        "INSERT INTO dead_letters (topic, partition, \"offset\", reason, detail, card_id, event_id, envelope)
         SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                              $7::uuid[], $8::text[])
         ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
    )
    .bind(&topic)
    .bind(&partition)
    .bind(&offset)
    .bind(&reason)
    .bind(&detail)
    .bind(&card_id)
    .bind(&event_id)
    .bind(&envelope)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("store dead letters", e))?;
    Ok(())
}

/// A stored dead letter (without its sealed envelope).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Reason code.
    pub reason: String,
    /// Detail.
    pub detail: String,
    /// The card, when known and safe.
    pub card_id: Option<String>,
    /// The event id, when known.
    pub event_id: Option<Uuid>,
    /// Stored at.
    pub created_at: DateTime<Utc>,
    /// `NEW`, `REPLAYED` or `STILL_FAILING`.
    #[sqlx(try_from = "String")]
    pub replay_status: ReplayStatus,
    /// Last replay.
    pub replayed_at: Option<DateTime<Utc>>,
    /// What the last replay concluded.
    pub replay_detail: Option<String>,
}

const COLUMNS: &str = "id, topic, partition, \"offset\", reason, detail, card_id, event_id, created_at, \
                       replay_status, replayed_at, replay_detail";

/// Filter for listing and replaying.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// Only this reason code.
    pub reason: Option<&'a str>,
    /// Only this topic.
    pub topic: Option<&'a str>,
    /// Only this card.
    pub card_id: Option<&'a str>,
    /// Only these replay statuses (none = all).
    pub replay_status: Option<&'a [ReplayStatus]>,
}

/// Dead letters matching the filter, oldest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    f: &Filter<'_>,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let statuses: Option<Vec<&str>> = f.replay_status.map(|s| s.iter().map(|s| s.as_str()).collect());
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters
         WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR topic = $2)
           AND ($3::text IS NULL OR card_id = $3) AND ($4::text[] IS NULL OR replay_status = ANY($4))
         ORDER BY id LIMIT $5"
    ))
    .bind(f.reason)
    .bind(f.topic)
    .bind(f.card_id)
    .bind(statuses)
    .bind(limit)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("list dead letters", e))
}

/// Counts per reason code.
pub async fn count_by_reason(db: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, StoreError> {
    sqlx::query_as("SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason")
        .fetch_all(db)
        .await
        .map_err(|e| StoreError::db("count dead letters", e))
}

/// The sealed envelope of one dead letter, locked for replay.
pub async fn envelope_for_update(
    tx: &mut PgConnection,
    id: i64,
) -> Result<Option<(DeadLetter, String)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        letter: DeadLetter,
        envelope: String,
    }
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS}, envelope FROM dead_letters WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::db("read dead letter", e))?;
    Ok(row.map(|r| (r.letter, r.envelope)))
}

/// Records the outcome of a replay.
pub async fn mark_replayed(
    tx: &mut PgConnection,
    id: i64,
    status: ReplayStatus,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE dead_letters SET replay_status = $2, replay_detail = $3, replayed_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(detail)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("record replay", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(envelope: &str) -> NewDeadLetter<'_> {
        NewDeadLetter {
            topic: "t",
            partition: 0,
            offset: 0,
            reason: "UNKNOWN_FRAMING",
            detail: "d",
            card_id: None,
            event_id: None,
            envelope,
        }
    }

    #[test]
    fn large_envelopes_are_split_into_statements_under_the_byte_bound() {
        let big = "x".repeat(1_800_000);
        let rows: Vec<_> = (0..1000).map(|_| row(&big)).collect();
        let parts = chunks(&rows, INSERT_MAX_BYTES, INSERT_MAX_ROWS);
        assert_eq!(parts.iter().map(|c| c.len()).sum::<usize>(), 1000);
        assert!(parts.len() >= 1000 * 1_800_000 / INSERT_MAX_BYTES, "{}", parts.len());
        for c in &parts {
            assert!(c.iter().map(NewDeadLetter::text_bytes).sum::<usize>() <= INSERT_MAX_BYTES);
        }
    }

    #[test]
    fn a_row_larger_than_the_bound_goes_alone_and_small_rows_are_capped_by_count() {
        let huge = "x".repeat(100);
        let rows = [row("a"), row(&huge), row("b")];
        let parts = chunks(&rows, 50, 10);
        assert_eq!(parts.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
        let small: Vec<_> = (0..25).map(|_| row("a")).collect();
        let parts = chunks(&small, usize::MAX, 10);
        assert_eq!(parts.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert!(chunks(&[], 10, 10).is_empty());
    }
}
