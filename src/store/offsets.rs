//! Consumed offsets per group, topic and partition, written in the state's own transaction.
//!
//! The stored offset is also a fence: a batch advances it only from the offset it started at, so
//! a zombie consumer that lost its partition cannot apply the same messages a second time.

use std::collections::HashMap;

use sqlx::{PgConnection, PgExecutor};

use super::StoreError;

/// The next offset to read for each stored partition of `topic`.
pub async fn load(
    db: impl PgExecutor<'_>,
    group: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, StoreError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("load consumed offsets", e))?;
    Ok(rows.into_iter().collect())
}

/// Every stored offset of the group, as (topic, partition, next offset).
pub async fn load_group(db: impl PgExecutor<'_>, group: &str) -> Result<Vec<(String, i32, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1 ORDER BY topic, partition",
    )
    .bind(group)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("load consumed offsets", e))
}

/// Moves the partition's next offset from `from` (what this consumer started the batch at;
/// `None` when nothing was stored) to `to`. Returns false when the stored offset is not `from`:
/// another consumer got there first, and the caller must roll back.
pub async fn advance(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    to: i64,
) -> Result<bool, StoreError> {
    let done = match from {
        Some(from) => sqlx::query(
            "UPDATE consumer_offsets SET next_offset = $5, updated_at = now()
             WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::db("advance consumed offset", e))?
        .rows_affected(),
        None => sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .bind(to)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::db("store first consumed offset", e))?
        .rows_affected(),
    };
    Ok(done == 1)
}

/// One partition's offset move in [`advance_all`].
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// The stored next offset the batch started at (`None`: nothing stored).
    pub from: Option<i64>,
    /// The new next offset.
    pub to: i64,
}

/// [`advance`] for several partitions in one statement; the (topic, partition) pairs that moved.
/// A pair missing from the answer was fenced: the caller must roll back.
pub async fn advance_all(
    tx: &mut PgConnection,
    moves: &[Move<'_>],
) -> Result<Vec<(String, i32)>, StoreError> {
    let groups: Vec<&str> = moves.iter().map(|m| m.group).collect();
    let topics: Vec<&str> = moves.iter().map(|m| m.topic).collect();
    let partitions: Vec<i32> = moves.iter().map(|m| m.partition).collect();
    let froms: Vec<Option<i64>> = moves.iter().map(|m| m.from).collect();
    let tos: Vec<i64> = moves.iter().map(|m| m.to).collect();
    // A NULL `from` never equals a stored offset, so those rows only take the INSERT.
    sqlx::query_as(
        "WITH m AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::int8[])
                 AS m(group_id, topic, partition, from_offset, to_offset)
         ), moved AS (
             UPDATE consumer_offsets o SET next_offset = m.to_offset, updated_at = now() FROM m
             WHERE o.group_id = m.group_id AND o.topic = m.topic AND o.partition = m.partition
               AND o.next_offset = m.from_offset
             RETURNING o.topic, o.partition
         ), first AS (
             INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
             SELECT group_id, topic, partition, to_offset FROM m WHERE from_offset IS NULL
             ON CONFLICT DO NOTHING
             RETURNING topic, partition
         )
         SELECT topic, partition FROM moved UNION ALL SELECT topic, partition FROM first",
    )
    .bind(&groups)
    .bind(&topics)
    .bind(&partitions)
    .bind(&froms)
    .bind(&tos)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::db("advance consumed offsets", e))
}

/// Moves the stored offset past messages the broker no longer has, from `from` (stored) to `to`
/// (the low watermark), and records the gap, in one transaction. False when the stored offset
/// is no longer `from` (another consumer moved it; nothing written).
pub async fn skip_gap(
    pool: &sqlx::PgPool,
    group: &str,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin offset gap", e))?;
    if !advance(&mut tx, group, topic, partition, Some(from), to).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO offset_gaps (group_id, topic, partition, from_offset, to_offset) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("record offset gap", e))?;
    tx.commit().await.map_err(|e| StoreError::db("commit offset gap", e))?;
    Ok(true)
}

/// A recorded gap: offsets `[from_offset, to_offset)` were never read.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Gap {
    /// Consumer group.
    pub group_id: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset not read.
    pub from_offset: i64,
    /// First offset read again.
    pub to_offset: i64,
    /// When ingest found it.
    pub detected_at: chrono::DateTime<chrono::Utc>,
}

/// Every recorded gap, oldest first.
pub async fn gaps(db: impl PgExecutor<'_>) -> Result<Vec<Gap>, StoreError> {
    sqlx::query_as(
        "SELECT group_id, topic, partition, from_offset, to_offset, detected_at FROM offset_gaps ORDER BY id",
    )
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("list offset gaps", e))
}

/// An operator's reset of a partition's stored offset.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Reset {
    /// Consumer group.
    pub group_id: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The stored offset before (none: nothing was stored).
    pub from_offset: Option<i64>,
    /// The stored offset now.
    pub to_offset: i64,
    /// What was asked: `earliest`, `latest` or the offset.
    pub target: String,
    /// Who ran it.
    pub operator: String,
    /// When.
    pub reset_at: chrono::DateTime<chrono::Utc>,
}

/// Sets the partition's stored offset to `to` and records who did it, in one transaction.
pub async fn reset(
    pool: &sqlx::PgPool,
    group: &str,
    topic: &str,
    partition: i32,
    to: i64,
    target: &str,
    operator: &str,
) -> Result<Reset, StoreError> {
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin offset reset", e))?;
    let before: Option<(i64,)> = sqlx::query_as(
        "SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| StoreError::db("read stored offset", e))?;
    sqlx::query(
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
         ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = $4, updated_at = now()",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(to)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("reset stored offset", e))?;
    let row: Reset = sqlx::query_as(
        "INSERT INTO offset_resets (group_id, topic, partition, from_offset, to_offset, target, operator)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING group_id, topic, partition, from_offset, to_offset, target, operator, reset_at",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(before.map(|(o,)| o))
    .bind(to)
    .bind(target)
    .bind(operator)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| StoreError::db("record offset reset", e))?;
    tx.commit().await.map_err(|e| StoreError::db("commit offset reset", e))?;
    Ok(row)
}
