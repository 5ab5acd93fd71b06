//! Upkeep beside the relay: the backlog as gauges and as `/readyz` detail (the relay's lag), and
//! retention of published rows.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::Readiness;
use crate::store::StoreError;
use crate::store::results;
use crate::telemetry::metrics::{RESULTS_OLDEST_PENDING_AGE, RESULTS_PENDING};

/// Retention of published results.
#[derive(Debug, Clone)]
pub struct ResultsRetention {
    /// Age after which a published row is deleted.
    pub keep: Duration,
    /// Rows deleted per statement.
    pub batch: i64,
    /// How often retention runs.
    pub every: Duration,
}

/// Deletes published rows older than `keep`, batch by batch; returns how many.
pub async fn purge_published(pool: &PgPool, retention: &ResultsRetention) -> Result<u64, StoreError> {
    let older_than = i64::try_from(retention.keep.as_secs()).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let n = results::delete_published(pool, older_than, retention.batch).await?;
        total += n;
        if n < retention.batch.max(1) as u64 {
            return Ok(total);
        }
    }
}

/// Publishes the backlog every `gauge_every` (gauges and `/readyz` detail) and runs retention
/// every `retention.every`, until `shutdown`.
pub async fn run(
    pool: PgPool,
    readiness: Readiness,
    retention: ResultsRetention,
    gauge_every: Duration,
    shutdown: CancellationToken,
) {
    let mut gauges = tokio::time::interval(gauge_every);
    let mut purge = tokio::time::interval(retention.every);
    loop {
        tokio::select! {
            _ = gauges.tick() => match results::backlog(&pool).await {
                Ok(b) => {
                    metrics::gauge!(RESULTS_PENDING).set(b.pending as f64);
                    metrics::gauge!(RESULTS_OLDEST_PENDING_AGE).set(b.oldest_age_secs);
                    readiness.set_results_backlog(b.pending.max(0) as u64, b.oldest_age_secs as u64);
                }
                Err(e) => debug!(error = %e, "cannot read the results backlog"),
            },
            _ = purge.tick() => match purge_published(&pool, &retention).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "results retention"),
                Err(e) => warn!(error = %e, "results retention failed; will retry"),
            },
            _ = shutdown.cancelled() => return,
        }
    }
}
