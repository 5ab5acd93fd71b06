//! Ingest's transactions across partitions: partition tasks hand their prepared batches to the
//! process's [`Combiner`], which applies every batch that is ready in ONE transaction
//! (`apply::apply_batches`) and answers each partition with what its batch did.
//!
//! A transaction costs its statements whatever its size, and at a moderate rate nothing else made
//! batches large: at 500 events/s over six partitions each partition's transaction held 3.2 events
//! and its eleven round trips were most of PostgreSQL's work. So partitions close their batches on
//! shared [`Ticks`] (every `INGEST_BATCH_WAIT_MS` of one clock, instead of that long after each
//! batch's first message), their batches reach the combiner together, and a free writer takes what
//! is queued and what joins within [`GATHER`], up to `INGEST_BATCH_MAX` messages and
//! `INGEST_BATCH_MAX_BYTES`. A full batch (a backlog) closes at once and fills a transaction alone.
//!
//! At most `INGEST_BATCHES_IN_FLIGHT` transactions run at once (a pooled connection each; a
//! profile batch, applied by its partition, takes one of the same permits). A partition has at most
//! one batch in the combiner (it waits for the answer before its next batch), so a transaction
//! moves each partition's offset once.
//!
//! Failure stays per partition: if a transaction of several batches fails (one partition fenced by
//! another consumer, a dead letter that cannot be sealed, PostgreSQL gone), nothing of it is
//! written and each batch is applied again alone, so each partition gets its own error and the
//! others commit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, Span, debug, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::apply::{ApplyError, apply_batch, apply_batches};
use super::message::{Applied, Batch, Prepared};
use super::prepare::Pipeline;

/// How long a free writer waits, after a batch's arrival, for other partitions' batches of the
/// same tick (they were closed together and are still being prepared, or wait for the CPU).
pub const GATHER: Duration = Duration::from_millis(3);

/// One clock every partition closes its batches on: multiples of `every` since `origin`.
#[derive(Debug, Clone, Copy)]
pub struct Ticks {
    origin: Instant,
    every: Duration,
}

impl Ticks {
    /// Ticks every `every` from now (`every` zero: every instant is a tick).
    pub fn new(every: Duration) -> Self {
        Self { origin: Instant::now(), every }
    }

    /// The first tick at or after `t`.
    pub fn next(&self, t: Instant) -> Instant {
        let every = self.every.as_nanos();
        if every == 0 {
            return t;
        }
        let since = t.saturating_duration_since(self.origin).as_nanos();
        let ticks = since.div_ceil(every);
        let nanos = u64::try_from(ticks.saturating_mul(every)).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(nanos)
    }
}

/// A partition's prepared batch, owned, for the combiner.
#[derive(Debug)]
pub struct OwnedBatch {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The stored next offset the partition started the batch at.
    pub from: Option<i64>,
    /// Messages in offset order.
    pub messages: Vec<Prepared>,
}

impl OwnedBatch {
    fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.raw.size()).sum()
    }
}

/// How large a combined transaction may grow and how long it waits for company.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most messages per transaction (`INGEST_BATCH_MAX`).
    pub messages: usize,
    /// Most message bytes per transaction (`INGEST_BATCH_MAX_BYTES`).
    pub bytes: usize,
    /// How long a free writer waits for more batches after the first.
    pub gather: Duration,
}

struct Job {
    batch: OwnedBatch,
    reply: oneshot::Sender<Result<Applied, ApplyError>>,
    /// The partition's `ingest.batch` span, which the transaction's span links to.
    from: SpanContext,
}

/// The combiner of one ingest. Its task starts with the first batch (inside the runtime) and ends
/// when the combiner is dropped, after the queued batches.
pub struct Combiner {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    writers: Arc<Semaphore>,
    limits: Limits,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

/// Why the combiner could not answer: it stopped (the process is stopping); the batch is replayed.
#[derive(Debug, thiserror::Error)]
#[error("the ingest combiner stopped before applying the batch")]
pub struct Stopped;

impl Combiner {
    /// A combiner writing through `pool`, each transaction holding a permit of `writers`.
    pub fn new(pool: PgPool, pipeline: Arc<Pipeline>, writers: Arc<Semaphore>, limits: Limits) -> Self {
        Self { pool, pipeline, writers, limits, queue: OnceLock::new() }
    }

    /// The permits each transaction holds (`INGEST_BATCHES_IN_FLIGHT`; a connection each).
    pub fn writers(&self) -> &Arc<Semaphore> {
        &self.writers
    }

    /// Applies the batch in the next transaction; what it did. The queue needs no bound: each
    /// partition has at most one batch in it, and its bytes are counted as the partition's.
    ///
    /// Panics if the transaction applying the batch panicked (a bug, not bad data): the caller's
    /// partition task then dies as it would have applying the batch itself, which fails readiness
    /// and stops ingest with an error instead of leaving the partition silently unread.
    pub async fn apply(&self, batch: OwnedBatch) -> Result<Result<Applied, ApplyError>, Stopped> {
        let (reply, answer) = oneshot::channel();
        let from = Span::current().context().span().span_context().clone();
        self.queue().send(Job { batch, reply, from }).map_err(|_| Stopped)?;
        match answer.await {
            Ok(outcome) => Ok(outcome),
            // The writer task answers every batch it took unless it panicked.
            Err(_) => panic!("the ingest transaction applying this batch panicked"),
        }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let writer = Writer { pool: self.pool.clone(), pipeline: self.pipeline.clone() };
            tokio::spawn(run(writer, self.writers.clone(), self.limits, rx));
            tx
        })
    }
}

#[derive(Clone)]
struct Writer {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
}

async fn run(
    writer: Writer,
    writers: Arc<Semaphore>,
    limits: Limits,
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    // A batch that did not fit the previous transaction: it starts the next one.
    let mut carry: Option<Job> = None;
    loop {
        // A free writer first: while all are busy, the queue fills the next transaction.
        let Ok(permit) = writers.clone().acquire_owned().await else { return };
        let first = match carry.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let (mut messages, mut bytes) = (first.batch.messages.len(), first.batch.bytes());
        let mut jobs = vec![first];
        let until = Instant::now() + limits.gather;
        while messages < limits.messages && bytes < limits.bytes {
            // Queued batches are taken at once; the timer only bounds waiting for more.
            let Ok(Some(job)) = tokio::time::timeout_at(until, queue.recv()).await else { break };
            let (m, b) = (job.batch.messages.len(), job.batch.bytes());
            if messages + m > limits.messages || bytes.saturating_add(b) > limits.bytes {
                carry = Some(job);
                break;
            }
            (messages, bytes) = (messages + m, bytes + b);
            jobs.push(job);
        }
        let writer = writer.clone();
        // A root span (its batches come from many traces), linked to each partition's batch.
        let span = info_span!("ingest.transaction", batches = jobs.len(), messages);
        for job in &jobs {
            span.add_link(job.from.clone());
        }
        tokio::spawn(
            async move {
                let (replies, batches): (Vec<_>, Vec<_>) =
                    jobs.into_iter().map(|j| (j.reply, j.batch)).unzip();
                let outcomes = writer.apply(batches).await;
                drop(permit);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // A partition stopped meanwhile no longer listens; its next owner re-reads the offset.
                    let _ = reply.send(outcome);
                }
            }
            .instrument(span),
        );
    }
}

impl Writer {
    /// Applies the batches in one transaction, or each alone if that fails; each one's outcome.
    async fn apply(&self, mut batches: Vec<OwnedBatch>) -> Vec<Result<Applied, ApplyError>> {
        let sealer = self.pipeline.sealer();
        let lent: Vec<Batch<'_>> = batches
            .iter_mut()
            .map(|b| {
                let OwnedBatch { group, topic, partition, from, messages } = b;
                let messages = std::mem::take(messages);
                Batch {
                    group: group.as_str(),
                    topic: topic.as_str(),
                    partition: *partition,
                    from: *from,
                    messages,
                }
            })
            .collect();
        if lent.len() > 1 {
            match apply_batches(&self.pool, sealer, &lent, Utc::now()).await {
                Ok(applied) => return applied.into_iter().map(Ok).collect(),
                Err(e) => {
                    debug!(error = %e, batches = lent.len(), "combined ingest transaction failed; applying its batches one by one")
                }
            }
        }
        let mut outcomes = Vec::with_capacity(lent.len());
        for b in &lent {
            outcomes.push(apply_batch(&self.pool, sealer, b, Utc::now()).await);
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_shared_multiples_of_the_period_and_a_zero_period_does_not_wait() {
        let ticks = Ticks::new(Duration::from_millis(20));
        let at = |ms: u64| ticks.origin + Duration::from_millis(ms);
        assert_eq!(ticks.next(at(0)), at(0));
        assert_eq!(ticks.next(at(1)), at(20));
        assert_eq!(ticks.next(at(19)), at(20));
        assert_eq!(ticks.next(at(20)), at(20));
        assert_eq!(ticks.next(at(21)), at(40));
        // Two partitions whose first messages came 15 ms apart close their batches together.
        assert_eq!(ticks.next(at(43)), ticks.next(at(58)));
        let now = Ticks::new(Duration::ZERO);
        assert_eq!(now.next(at(7)), at(7));
    }
}
