//! Housekeeping beside dispatch: outbox gauges for SREs, and retention of finished rows.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::outbox;
use crate::telemetry::metrics::{OUTBOX_OLDEST_DUE_AGE, OUTBOX_ROWS};

/// Retention of finished (`DONE`, `CANCELLED`) rows.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Age after which a finished row is deleted.
    pub keep: Duration,
    /// Rows deleted per statement, so no statement holds locks for long.
    pub batch: i64,
    /// How often retention runs.
    pub every: Duration,
}

/// Deletes finished rows older than `keep`, batch by batch; returns how many.
pub async fn purge_finished(pool: &PgPool, retention: &Retention) -> Result<u64, crate::store::StoreError> {
    let older_than = i64::try_from(retention.keep.as_secs()).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let n = outbox::delete_finished(pool, older_than, retention.batch).await?;
        total += n;
        if n < retention.batch.max(1) as u64 {
            return Ok(total);
        }
    }
}

/// The gauges' counts read every `PENDING` and `IN_FLIGHT` row (through the partial indexes, but
/// each row's page too while the table changes): a backlog of 400,000 rows made a read take 220 ms.
/// Reads are spaced so they take at most a hundredth of the time: the next comes at least this
/// many times what the last took after it.
const GAUGES_SPACING: u32 = 100;

/// When the next gauges read should come, if later than `every`: after `spent`, at least
/// [`GAUGES_SPACING`] times what the last read took.
fn gauges_spaced(every: Duration, spent: Duration) -> Option<Duration> {
    let spaced = spent.saturating_mul(GAUGES_SPACING);
    (spaced > every).then_some(spaced)
}

/// Publishes outbox gauges every `gauge_every` (or less often when reading them is slow) and runs
/// retention every `retention.every`, until `shutdown`.
pub async fn run(pool: PgPool, retention: Retention, gauge_every: Duration, shutdown: CancellationToken) {
    let mut gauges = tokio::time::interval(gauge_every);
    let mut purge = tokio::time::interval(retention.every);
    loop {
        tokio::select! {
            _ = gauges.tick() => {
                let started = Instant::now();
                match outbox::gauges(&pool).await {
                    Ok(g) => {
                        metrics::gauge!(OUTBOX_ROWS, "status" => "PENDING").set(g.pending as f64);
                        metrics::gauge!(OUTBOX_ROWS, "status" => "IN_FLIGHT").set(g.in_flight as f64);
                        metrics::gauge!(OUTBOX_ROWS, "status" => "PARKED").set(g.parked as f64);
                        metrics::gauge!(OUTBOX_OLDEST_DUE_AGE).set(g.oldest_due_age_secs);
                    }
                    Err(e) => debug!(error = %e, "cannot read outbox gauges"),
                }
                if let Some(later) = gauges_spaced(gauge_every, started.elapsed()) {
                    gauges.reset_after(later);
                }
            }
            _ = purge.tick() => match purge_finished(&pool, &retention).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "outbox retention"),
                Err(e) => warn!(error = %e, "outbox retention failed; will retry"),
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_gauge_reads_are_spaced_to_a_hundredth_of_the_time() {
        let every = Duration::from_secs(10);
        assert_eq!(gauges_spaced(every, Duration::from_millis(5)), None);
        assert_eq!(gauges_spaced(every, Duration::from_millis(100)), None);
        assert_eq!(gauges_spaced(every, Duration::from_millis(220)), Some(Duration::from_secs(22)));
    }
}
