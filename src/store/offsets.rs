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
