//! Consumer profiles at rest: only a sealed JWE of the personal fields (to `CONSUMER_DATA_KEYS`),
//! never a clear field. An erased profile keeps no personal data: the row stays, without the
//! ciphertext, so a later Get Consumer Info answers "not found".

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::StoreError;

/// A profile to store, already sealed.
#[derive(Debug)]
pub struct SealedProfile<'a> {
    /// The consumer.
    pub consumer_id: &'a str,
    /// The JWE of the `ConsumerInfo` JSON.
    pub sealed: &'a str,
    /// The kid it is sealed to.
    pub key_id: &'a str,
    /// The event that carried it.
    pub event_id: Uuid,
    /// When the producer saw the change.
    pub occurred_at: DateTime<Utc>,
}

/// Stores (or replaces) a profile; an earlier erasure is undone by a newer profile.
pub async fn upsert(tx: &mut PgConnection, p: &SealedProfile<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO consumer_profiles (consumer_id, sealed_profile, key_id, event_id, occurred_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (consumer_id) DO UPDATE SET sealed_profile = EXCLUDED.sealed_profile,
             key_id = EXCLUDED.key_id, event_id = EXCLUDED.event_id, occurred_at = EXCLUDED.occurred_at,
             erased_at = NULL, updated_at = now()",
    )
    .bind(p.consumer_id)
    .bind(p.sealed)
    .bind(p.key_id)
    .bind(p.event_id)
    .bind(p.occurred_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("store a consumer profile", e))?;
    Ok(())
}

/// Erases a consumer's personal data (GDPR erasure); remembers only that and when it happened.
pub async fn erase(tx: &mut PgConnection, consumer_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO consumer_profiles (consumer_id, erased_at) VALUES ($1, now())
         ON CONFLICT (consumer_id) DO UPDATE SET sealed_profile = NULL, key_id = NULL, event_id = NULL,
             occurred_at = NULL, erased_at = now(), updated_at = now()",
    )
    .bind(consumer_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("erase a consumer profile", e))?;
    Ok(())
}

/// What is kept about a consumer's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredProfile {
    /// The sealed profile.
    Sealed(String),
    /// Erased by a tombstone.
    Erased,
}

/// The consumer's stored profile, `None` when never received.
pub async fn get(db: impl PgExecutor<'_>, consumer_id: &str) -> Result<Option<StoredProfile>, StoreError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT sealed_profile FROM consumer_profiles WHERE consumer_id = $1")
            .bind(consumer_id)
            .fetch_optional(db)
            .await
            .map_err(|e| StoreError::db("read a consumer profile", e))?;
    Ok(row.map(|(sealed,)| sealed.map_or(StoredProfile::Erased, StoredProfile::Sealed)))
}
