//! Operator actions on outbox rows (`outbox retry`, `outbox cancel`): row and card change together,
//! under the same per-card lock as ingest and dispatch.

use sqlx::PgPool;
use uuid::Uuid;

use crate::core::decide::{on_operator_cancel, on_operator_retry};
use crate::core::result::ResultOutcome;
use crate::store::outbox::OutboxStatus;
use crate::store::results::{self, NewResult};
use crate::store::{StoreError, cards, locks, outbox};

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No such row.
    #[error("no outbox row {0}")]
    NotFound(Uuid),
    /// The row is not in a state the action applies to.
    #[error("outbox row {id} is {status}; {action} applies to {applies_to} rows")]
    WrongStatus {
        /// Row id.
        id: Uuid,
        /// Its status.
        status: OutboxStatus,
        /// The action.
        action: &'static str,
        /// Statuses it applies to.
        applies_to: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Retries a PARKED row (or hurries a waiting one): due now, attempts reset, D1 asked first; a
/// FAILED card becomes PENDING again. Never due before the row's reconcile floor: a PUT of its last
/// attempt may still be running at D1.
pub async fn retry(pool: &PgPool, id: Uuid) -> Result<(), OperatorError> {
    use OutboxStatus::{Parked, Pending};
    change(pool, id, "retry", &[Parked, Pending], "PARKED or PENDING", true).await
}

/// Cancels a row that no worker holds (PENDING or PARKED): it is never sent; a PENDING card
/// becomes FAILED ("cancelled by an operator").
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<(), OperatorError> {
    use OutboxStatus::{Parked, Pending};
    change(pool, id, "cancel", &[Pending, Parked], "PENDING or PARKED", false).await
}

async fn change(
    pool: &PgPool,
    id: Uuid,
    action: &'static str,
    allowed: &[OutboxStatus],
    applies_to: &'static str,
    retry: bool,
) -> Result<(), OperatorError> {
    // Learn the card first, then lock in the usual order: card, then row.
    let Some(card_id) = outbox::card_of(pool, id).await? else { return Err(OperatorError::NotFound(id)) };
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin operator action", e))?;
    locks::lock_cards(&mut tx, &[card_id.as_str()]).await?;
    let Some(row) = outbox::get_for_update(&mut tx, id).await? else {
        return Err(OperatorError::NotFound(id));
    };
    if !allowed.contains(&row.status) {
        return Err(OperatorError::WrongStatus { id, status: row.status, action, applies_to });
    }
    let mut views = cards::load_for_update(&mut tx, &[row.card_id.as_str()]).await?;
    let mut consumer_id = None;
    if let Some((record, _)) = views.remove(row.card_id.as_str()) {
        let next = if retry { on_operator_retry(&record) } else { on_operator_cancel(&record) };
        if let Some(next) = next {
            cards::upsert(&mut tx, &[&next]).await?;
        }
        consumer_id = Some(record.consumer_id.as_str().to_owned());
    }
    if retry {
        // No result now: the retried call's own outcome (REGISTERED_EXPLICIT or FAILED) follows.
        outbox::requeue(&mut tx, id).await?;
    } else {
        outbox::cancel_unclaimed(&mut tx, &[row.card_id.as_str()], "cancelled by an operator").await?;
        let cancelled = NewResult {
            card_id: Some(row.card_id.clone()),
            consumer_id,
            outcome: ResultOutcome::Cancelled,
            error_code: None,
            reason: Some("cancelled by an operator".into()),
            event_id: None,
            correlation_id: Some(row.correlation_id.clone()),
        };
        results::record(&mut tx, &[cancelled]).await?;
    }
    tx.commit().await.map_err(|e| StoreError::db("commit operator action", e))?;
    Ok(())
}
