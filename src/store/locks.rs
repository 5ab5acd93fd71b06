//! Per-card serialisation across partitions and processes: transaction-scoped advisory locks.
//!
//! Events of one card arrive on three topics, so two partition tasks may touch the same card at
//! once, and a card may not have a row to lock yet. An advisory lock keyed on the card id works
//! for rows that do not exist. Locks are taken in ascending key order in one statement, so two
//! transactions can never wait on each other in a cycle. Every writer of a card (ingest, dispatch,
//! operators) takes this lock first, then row locks.

use sqlx::PgConnection;

use super::StoreError;

/// Locks the given cards until the end of the transaction.
pub async fn lock_cards(tx: &mut PgConnection, card_ids: &[&str]) -> Result<(), StoreError> {
    if card_ids.is_empty() {
        return Ok(());
    }
    // hashtextextended is stable across PostgreSQL versions and processes; collisions only
    // serialise two unrelated cards.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM (
             SELECT DISTINCT hashtextextended(c, 7919) AS k FROM unnest($1::text[]) AS c ORDER BY k
         ) AS keys",
    )
    .bind(card_ids)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("lock cards", e))?;
    Ok(())
}
