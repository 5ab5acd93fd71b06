//! D1's card-operation notifications (Notify Card Operations), stored once per `operationId`,
//! and the confirmation they give a card's registration.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;

/// One card operation update from D1, checked.
#[derive(Debug)]
pub struct NewNotification<'a> {
    /// `operationId`: the idempotency key (D1 retries).
    pub operation_id: &'a str,
    /// `cardId`.
    pub card_id: &'a str,
    /// `operation` as sent (REGISTER, DIGITIZE, ... or a value we do not know yet).
    pub operation: &'a str,
    /// `status` as sent.
    pub status: &'a str,
    /// `startTime` as sent.
    pub start_time: &'a str,
    /// The request's `x-correlation-id`, when valid.
    pub correlation_id: Option<&'a str>,
    /// The item as received.
    pub item: &'a serde_json::Value,
    /// Whether it confirms that D1 knows the card.
    pub confirms: bool,
}

/// Stores a notification unless its `operationId` is already stored; true when new.
pub async fn insert(tx: &mut PgConnection, n: &NewNotification<'_>) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO card_notifications
             (operation_id, card_id, operation, status, start_time, correlation_id, item, confirms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (operation_id) DO NOTHING",
    )
    .bind(n.operation_id)
    .bind(n.card_id)
    .bind(n.operation)
    .bind(n.status)
    .bind(n.start_time)
    .bind(n.correlation_id)
    .bind(n.item)
    .bind(n.confirms)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::db("store a D1 notification", e))?;
    Ok(done.rows_affected() == 1)
}

/// Records on the card that D1 confirmed knowing it (operation `by`, its `operationId`, at
/// `at`). The first confirmation is kept; a card not (yet) recorded is left alone, its
/// notification stays in `card_notifications`. The card's consumer when the record changed (this
/// was the first confirmation), else `None`. One statement on the caller's transaction, which
/// must hold the card's advisory lock (`locks::lock_cards`) when it also records the result.
pub async fn confirm_registration(
    tx: &mut PgConnection,
    card_id: &str,
    by: &str,
    operation_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar(
        "UPDATE cards SET d1_confirmed_at = $4, d1_confirmed_by = $2, d1_confirmed_operation_id = $3,
             updated_at = now()
         WHERE card_id = $1 AND d1_confirmed_at IS NULL
         RETURNING consumer_id",
    )
    .bind(card_id)
    .bind(by)
    .bind(operation_id)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| StoreError::db("confirm a card's registration", e))
}

/// A card confirmed by a notification D1 sent before our record of the card existed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EarlierConfirmation {
    /// The card.
    pub card_id: String,
    /// Its consumer (from our record).
    pub consumer_id: String,
    /// The confirming operation.
    pub operation: String,
    /// Its `operationId`.
    pub operation_id: String,
    /// D1's `x-correlation-id` of that notification.
    pub correlation_id: Option<String>,
}

/// Gives each of `card_ids` without a confirmation D1's earliest confirming notification stored
/// before the card's record existed (D1 may learn of a card, by a tokenization say, before our
/// event about it arrives). The caller holds the cards' advisory locks, as the notification path
/// does, so a notification is applied either there or here, never lost between the two.
pub async fn confirm_from_earlier(
    tx: &mut PgConnection,
    card_ids: &[&str],
) -> Result<Vec<EarlierConfirmation>, StoreError> {
    if card_ids.is_empty() {
        return Ok(Vec::new());
    }
    // `c.card_id = ANY($1)` too: with only the join, a small or empty `card_notifications`
    // (assumed ten pages by the planner) made it hash-join the whole `cards` table every batch.
    sqlx::query_as(
        "UPDATE cards c SET d1_confirmed_at = n.received_at, d1_confirmed_by = n.operation,
                 d1_confirmed_operation_id = n.operation_id, updated_at = now()
         FROM (SELECT DISTINCT ON (card_id) card_id, operation, operation_id, correlation_id, received_at
               FROM card_notifications WHERE confirms AND card_id = ANY($1)
               ORDER BY card_id, received_at, operation_id) n
         WHERE c.card_id = n.card_id AND c.card_id = ANY($1) AND c.d1_confirmed_at IS NULL
         RETURNING c.card_id, c.consumer_id, n.operation, n.operation_id, n.correlation_id",
    )
    .persistent(false)
    .bind(card_ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::db("apply D1's earlier confirmations", e))
}

/// A stored notification, as `card show` prints it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StoredNotification {
    /// `operationId`.
    pub operation_id: String,
    /// `operation`.
    pub operation: String,
    /// `status`.
    pub status: String,
    /// `startTime`.
    pub start_time: String,
    /// Whether it confirmed the card.
    pub confirms: bool,
    /// When we stored it.
    pub received_at: DateTime<Utc>,
}

/// D1's confirmation recorded on a card.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Confirmation {
    /// When.
    pub confirmed_at: DateTime<Utc>,
    /// Which operation.
    pub confirmed_by: String,
    /// Its `operationId`.
    pub operation_id: String,
}

/// A card's notifications, oldest first (at most 100).
pub async fn for_card(db: impl PgExecutor<'_>, card_id: &str) -> Result<Vec<StoredNotification>, StoreError> {
    sqlx::query_as(
        "SELECT operation_id, operation, status, start_time, confirms, received_at
         FROM card_notifications WHERE card_id = $1 ORDER BY received_at, operation_id LIMIT 100",
    )
    .bind(card_id)
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::db("read a card's D1 notifications", e))
}

/// The confirmation recorded on a card, if any.
pub async fn confirmation(
    db: impl PgExecutor<'_>,
    card_id: &str,
) -> Result<Option<Confirmation>, StoreError> {
    sqlx::query_as(
        "SELECT d1_confirmed_at AS confirmed_at, d1_confirmed_by AS confirmed_by,
                d1_confirmed_operation_id AS operation_id
         FROM cards WHERE card_id = $1 AND d1_confirmed_at IS NOT NULL",
    )
    .bind(card_id)
    .fetch_optional(db)
    .await
    .map_err(|e| StoreError::db("read a card's D1 confirmation", e))
}
