//! Settling attempts in batches: each attempt hands its row and [`Plan`] to the process's settler,
//! which writes every plan that is ready in ONE transaction and answers each attempt with its own
//! outcome.
//!
//! When one of its [`SETTLE_WRITERS`] writers is free, the settler takes what is queued and what
//! joins it within [`SETTLE_GATHER`] (up to [`SETTLE_BATCH_MAX`]). A settle costs its statements
//! whatever its size, and at a moderate rate nothing else made batches: at 500 events/s settles
//! averaged 2.6 rows and their planning and execution were the largest part of PostgreSQL's time.
//! The wait is after D1 has the card (the call slot is free already) and its row is leased for a
//! minute, so it delays only the row's end and its result. Batches in
//! flight together hold distinct rows (one attempt per row), and each takes its cards' locks in one
//! sorted statement, so they cannot deadlock each other. The transaction does per batch what a settle
//! did per row, in four statements: lock every card (sorted, `locks::lock_cards`); lock the rows,
//! check every lease and read the records and the events that enqueued the calls
//! (`store::settle::read`, with PostgreSQL's `now()`); decide each row's fate with the pure
//! [`fate::fate`]; write the changed records, the rows' ends and the results (`store::settle::write`);
//! commit.
//!
//! Fencing holds per row: a row is written only if its lease is still ours, checked under its
//! card's lock in the transaction that writes it. A row whose lease is lost is skipped
//! (`lease_lost`), and a row whose card record is missing or unreadable fails alone; the others
//! commit. If the transaction itself fails, nothing of it is written and every row of it is
//! healed by its lease, as a row whose single settle failed: reclaimed after the lease and the
//! reconcile delay, and reconciled (Get Card) before anything is sent again.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{Instrument, info_span, warn};
use uuid::Uuid;

use super::fate::{self, Plan};
use crate::core::result::ResultOutcome;
use crate::store::outbox::{ClaimedRow, Finish};
use crate::store::results::NewResult;
use crate::store::{self, StoreError, locks};

/// Most rows settled in one transaction.
pub const SETTLE_BATCH_MAX: usize = 64;

/// How long a settle waits for more rows after its first (see the module doc).
pub const SETTLE_GATHER: Duration = Duration::from_millis(10);

/// Most settle transactions in flight at once (each holds a pooled connection while it runs).
/// Fewer writers make larger batches, and a settle's cost is mostly per statement: draining 30,000
/// rows, two writers settled 7.5 rows a transaction against 4.1 with four, and PostgreSQL used 0.75
/// of a core instead of 1.0 for 1,523 registrations/s instead of 1,261. Two, not one, so a settle
/// waiting on a card's lock (an ingest batch holding it) does not stop the others.
pub const SETTLE_WRITERS: usize = 2;

/// Why an attempt could not be settled; its row is healed by its lease.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The batch transaction failed: nothing of it was written.
    #[error("the settle transaction of {rows} rows failed")]
    Batch {
        /// Rows in the batch.
        rows: usize,
        /// What failed.
        #[source]
        source: Arc<StoreError>,
    },
    /// This row alone (its card record is missing or unreadable).
    #[error(transparent)]
    Row(StoreError),
    /// The settler is gone (the process is stopping).
    #[error("the settler stopped before settling the row")]
    Stopped,
}

/// How a row settled: the outcome label (`card_registrar_dispatch_outcomes_total`).
pub type Settled = Result<&'static str, SettleError>;

/// What a settle needs of a claimed row.
#[derive(Debug, Clone)]
pub struct Claim {
    id: Uuid,
    fence: i64,
    card_id: String,
    correlation_id: String,
}

impl From<&ClaimedRow> for Claim {
    fn from(row: &ClaimedRow) -> Self {
        Self {
            id: row.id,
            fence: row.fence,
            card_id: row.card_id.clone(),
            correlation_id: row.correlation_id.clone(),
        }
    }
}

/// One attempt's request.
struct Job {
    claim: Claim,
    plan: Plan,
    reply: oneshot::Sender<Settled>,
}

/// The settler of one process. Its task starts with the first settle (inside the runtime) and
/// ends when the settler is dropped, after the queued rows.
pub struct Settler {
    pool: PgPool,
    reconcile_delay: Duration,
    gather: Duration,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl Settler {
    /// A settler writing through `pool`; `reconcile_delay` is the policy's (the reconcile floor).
    pub fn new(pool: PgPool, reconcile_delay: Duration) -> Self {
        Self { pool, reconcile_delay, gather: SETTLE_GATHER, queue: OnceLock::new() }
    }

    /// The same, waiting `gather` instead of [`SETTLE_GATHER`] for more rows after a batch's first.
    pub fn with_gather(self, gather: Duration) -> Self {
        Self { gather, ..self }
    }

    /// Settles the attempt on `row` with `plan`, in the next batch. The queue needs no bound: every
    /// queued row holds a row place of the limiter until it is answered.
    pub async fn settle(&self, row: &ClaimedRow, plan: Plan) -> Settled {
        let (reply, answer) = oneshot::channel();
        let job = Job { claim: row.into(), plan, reply };
        self.queue().send(job).map_err(|_| SettleError::Stopped)?;
        answer.await.map_err(|_| SettleError::Stopped)?
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.pool.clone(), self.reconcile_delay, self.gather, rx));
            tx
        })
    }
}

async fn run(
    pool: PgPool,
    reconcile_delay: Duration,
    gather: Duration,
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    let writers = Arc::new(Semaphore::new(SETTLE_WRITERS));
    let mut jobs = Vec::with_capacity(SETTLE_BATCH_MAX);
    loop {
        // A free writer first: while all are busy, the queue fills the next batch.
        let Ok(writer) = writers.clone().acquire_owned().await else { return };
        if queue.recv_many(&mut jobs, SETTLE_BATCH_MAX).await == 0 {
            return;
        }
        let until = tokio::time::Instant::now() + gather;
        while jobs.len() < SETTLE_BATCH_MAX {
            let room = SETTLE_BATCH_MAX - jobs.len();
            match tokio::time::timeout_at(until, queue.recv_many(&mut jobs, room)).await {
                // More joined; or the queue closed (these are settled, the next turn returns).
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        let (replies, work): (Vec<_>, Vec<_>) =
            std::mem::take(&mut jobs).into_iter().map(|j| (j.reply, (j.claim, j.plan))).unzip();
        let pool = pool.clone();
        let span = info_span!("dispatch.settle", rows = work.len());
        tokio::spawn(
            async move {
                let outcomes = settle_batch(&pool, reconcile_delay, work).await;
                drop(writer);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // An attempt aborted at the drain deadline no longer listens; its row is settled.
                    let _ = reply.send(outcome);
                }
            }
            .instrument(span),
        );
    }
}

/// Settles these rows in one transaction; each row's outcome, in order. The settler's batch step,
/// public so tests can form a batch of their choosing.
pub async fn settle_batch(
    pool: &PgPool,
    reconcile_delay: Duration,
    work: Vec<(Claim, Plan)>,
) -> Vec<Settled> {
    let rows = work.len();
    match write(pool, reconcile_delay, work).await {
        Ok(outcomes) => outcomes.into_iter().map(|o| o.map_err(SettleError::Row)).collect(),
        Err(e) => {
            warn!(error = %e, rows, "settle transaction failed; its rows will be reclaimed after their leases");
            let source = Arc::new(e);
            (0..rows).map(|_| Err(SettleError::Batch { rows, source: source.clone() })).collect()
        }
    }
}

/// The batch's transaction. Returns each row's outcome, in order; an error means nothing was
/// written.
async fn write(
    pool: &PgPool,
    reconcile_delay: Duration,
    work: Vec<(Claim, Plan)>,
) -> Result<Vec<Result<&'static str, StoreError>>, StoreError> {
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin settle", e))?;
    let card_ids: Vec<&str> = work.iter().map(|(r, _)| r.card_id.as_str()).collect();
    locks::lock_cards(&mut tx, &card_ids).await?;
    let leases: Vec<(Uuid, i64)> = work.iter().map(|(r, _)| (r.id, r.fence)).collect();
    let store::settle::Settling { held, now, mut records, enqueued_by } =
        store::settle::read(&mut tx, &leases).await?;

    let mut outcomes = Vec::with_capacity(work.len());
    let mut settled = Vec::with_capacity(held.len());
    for (row, plan) in work {
        let (true, Some(now)) = (held.contains(&row.id), now) else {
            outcomes.push(Ok("lease_lost"));
            continue;
        };
        let record = match records.remove(&row.card_id) {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                outcomes.push(Err(e));
                continue;
            }
            None => {
                outcomes.push(Err(StoreError::Corrupt {
                    table: "outbox",
                    key: row.id.to_string(),
                    detail: "registration row without a card record".into(),
                }));
                continue;
            }
        };
        let fate = fate::fate(&record, plan, now);
        outcomes.push(Ok(fate.label));
        let changed = fate.record != record;
        settled.push((row, fate, changed));
    }

    let changed: Vec<_> =
        settled.iter().filter(|(_, _, changed)| *changed).map(|(_, f, _)| &f.record).collect();
    let ends: Vec<(Uuid, &Finish)> = settled.iter().map(|(row, f, _)| (row.id, &f.finish)).collect();
    // Our call's cause is the event that enqueued it; an implicit registration that settled the
    // card meanwhile was reported by ingest only if the call had not been in flight.
    let caused =
        |f: &fate::Fate| matches!(f.result, Some(ResultOutcome::RegisteredExplicit | ResultOutcome::Failed));
    let new_results: Vec<NewResult> = settled
        .iter()
        .filter_map(|(row, f, _)| {
            let outcome = f.result?;
            Some(NewResult {
                card_id: Some(row.card_id.clone()),
                consumer_id: Some(f.record.consumer_id.as_str().to_owned()),
                outcome,
                error_code: f.error_code.clone(),
                reason: f.record.failure.clone().filter(|_| outcome == ResultOutcome::Failed),
                event_id: if caused(f) { enqueued_by.get(&row.card_id).copied() } else { None },
                correlation_id: Some(row.correlation_id.clone()),
            })
        })
        .collect();
    if !ends.is_empty() {
        store::settle::write(&mut tx, &changed, &ends, reconcile_delay, &new_results).await?;
    }
    tx.commit().await.map_err(|e| StoreError::db("commit settle", e))?;
    Ok(outcomes)
}
