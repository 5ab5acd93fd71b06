//! One task per assigned partition: take a batch (up to N messages, B bytes or T ms), prepare it
//! (decode, validate), apply it in one transaction, report the new offset for the Kafka commit.
//!
//! Memory is bounded in bytes as well as messages: the task and the poll thread share a counter
//! of the bytes the task holds (queued or in the batch in hand), released once a batch is done;
//! the poll thread pauses the partition while it is at `queue_max_bytes`.
//!
//! Transient failures (PostgreSQL down, registry unreachable) are retried with backoff on the
//! same batch, so nothing is skipped; meanwhile the queue fills and the poll thread pauses the
//! partition. A fenced batch (another consumer advanced the stored offset) re-reads the offset
//! and drops what was already applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::apply::ApplyError;
use super::combine::{Combiner, OwnedBatch, Stopped, Ticks};
use super::message::{Applied, Committed, Incoming};
use super::prepare::{Pipeline, PrepareError};
use super::profile::{self, ProfileBatch};
use crate::core::event::EventKind;
use crate::store::offsets;
use crate::telemetry::metrics::{
    DEAD_LETTERS, DECISIONS, EVENTS_CONSUMED, INGEST_BATCH_DURATION, INGEST_BATCH_SIZE,
};

/// Bytes of the messages a partition task holds (queued or in its batch in hand): added by the
/// poll thread when it hands a message over, released by the task when the batch is done. The
/// same bytes are also counted in the process-wide total that every partition shares; when the
/// partition goes away (revoked, stopped, its task dead) with messages still queued, the last
/// copy to drop gives them back to that total.
#[derive(Debug, Clone)]
pub struct HeldBytes(Arc<Counts>);

#[derive(Debug)]
struct Counts {
    own: AtomicUsize,
    total: Arc<AtomicUsize>,
}

impl Drop for Counts {
    fn drop(&mut self) {
        let left = *self.own.get_mut();
        let _ =
            self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_sub(left)));
    }
}

impl HeldBytes {
    /// A new partition's count, adding into `total` (shared by all partitions).
    pub fn sharing(total: &Arc<AtomicUsize>) -> Self {
        Self(Arc::new(Counts { own: AtomicUsize::new(0), total: total.clone() }))
    }

    /// Bytes held now by this partition.
    pub fn get(&self) -> usize {
        self.0.own.load(Ordering::Acquire)
    }

    /// Whether a message of `size` bytes fits under the partition's `limit` and the process's
    /// `total_limit`. One message always fits into an empty partition, so every partition moves
    /// on and a message larger than the limits still passes, alone.
    pub fn has_room(&self, size: usize, limit: usize, total_limit: usize) -> bool {
        let held = self.get();
        held == 0
            || (held.saturating_add(size) <= limit
                && self.0.total.load(Ordering::Acquire).saturating_add(size) <= total_limit)
    }

    /// Counts a message handed to the task.
    pub fn add(&self, size: usize) {
        self.0.own.fetch_add(size, Ordering::AcqRel);
        self.0.total.fetch_add(size, Ordering::AcqRel);
    }

    fn release(&self, size: usize) {
        // Never below zero, even if the accounting were off, and the total loses only what this
        // partition held: a stuck pause is worse than a briefly loose bound.
        let sub = |h: usize| Some(h.saturating_sub(size));
        let before = self.0.own.fetch_update(Ordering::AcqRel, Ordering::Acquire, sub).unwrap_or_default();
        let taken = before.min(size);
        let _ =
            self.0.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_sub(taken)));
    }
}

/// Everything one partition task needs.
pub(crate) struct PartitionTask {
    pub group: String,
    pub topic: String,
    pub kind: EventKind,
    pub partition: i32,
    pub from: Option<i64>,
    pub batch_max: usize,
    pub batch_max_bytes: usize,
    /// When a batch closes: at the first tick after its first message, the same for all partitions.
    pub ticks: Ticks,
    pub held: HeldBytes,
    /// The budget of batches being prepared and applied, shared by all partitions, in
    /// [`BATCH_UNITS`] per full batch (see [`weight`]): bounds the memory of the batches worked on.
    pub batches: Arc<Semaphore>,
    /// Applies card batches, with other partitions' batches of the same tick; its writers also
    /// bound the connections ingest takes from the pool (dispatch shares it).
    pub combiner: Arc<Combiner>,
    pub pool: PgPool,
    pub pipeline: Arc<Pipeline>,
    pub commits: std::sync::mpsc::Sender<Committed>,
    pub stop: CancellationToken,
}

/// A full batch's share of the in-flight budget (`INGEST_BATCHES_IN_FLIGHT` full batches).
pub const BATCH_UNITS: u32 = 1000;

/// A batch's share of the in-flight budget, in thousandths of a full batch: the larger of its share
/// of `batch_max` messages and of `batch_max_bytes` bytes, at least 1 and at most a full batch. What
/// a batch builds while prepared and applied (decoded events, statement parameters) grows with both,
/// so the budget bounds that memory as `INGEST_BATCHES_IN_FLIGHT` full batches did, while the small
/// batches of a moderate rate all fit and can share a transaction.
pub fn weight(messages: usize, bytes: usize, batch_max: usize, batch_max_bytes: usize) -> u32 {
    let units = u128::from(BATCH_UNITS);
    let share = |n: usize, max: usize| (n as u128 * units).div_ceil(max.max(1) as u128);
    let w = share(messages, batch_max).max(share(bytes, batch_max_bytes)).clamp(1, units);
    u32::try_from(w).unwrap_or(BATCH_UNITS)
}

/// Where preparing and applying a batch failed.
enum Step {
    Prepare(PrepareError),
    Apply(ApplyError),
    /// Stopped before the batch was applied (it will be replayed by the next owner).
    Stopped,
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

impl PartitionTask {
    /// Runs until stopped (revocation or shutdown); the batch in hand is finished first.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Incoming>) {
        let mut buf = Vec::with_capacity(self.batch_max);
        // A message that did not fit into the previous batch's bytes: it starts the next one.
        let mut carry: Option<Incoming> = None;
        loop {
            buf.clear();
            if !self.next_batch(&mut rx, &mut buf, &mut carry).await {
                return;
            }
            let taken: usize = buf.iter().map(|m| m.raw.size()).sum();
            // Messages before the stored offset were applied already (by us or a previous owner).
            let from = self.from;
            buf.retain(|m| from.is_none_or(|f| m.offset >= f));
            if !buf.is_empty() {
                let span = info_span!("ingest.batch", topic = %self.topic, partition = self.partition,
                                      first_offset = buf[0].offset, size = buf.len(), bytes = taken);
                if !self.process(&mut buf).instrument(span).await {
                    return;
                }
            }
            buf.clear();
            self.held.release(taken);
        }
    }

    /// Waits for the first message, then fills the batch until it has `batch_max` messages or
    /// `batch_max_bytes` bytes, or the next tick. False when stopped with nothing in hand.
    async fn next_batch(
        &self,
        rx: &mut mpsc::Receiver<Incoming>,
        buf: &mut Vec<Incoming>,
        carry: &mut Option<Incoming>,
    ) -> bool {
        let first = match carry.take() {
            Some(m) => m,
            None => tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return false },
                _ = self.stop.cancelled() => return false,
            },
        };
        let mut bytes = first.raw.size();
        buf.push(first);
        let deadline = self.ticks.next(tokio::time::Instant::now());
        let mut take = |m: Incoming, buf: &mut Vec<Incoming>| -> bool {
            let size = m.raw.size();
            if bytes.saturating_add(size) > self.batch_max_bytes {
                *carry = Some(m);
                return false;
            }
            bytes += size;
            buf.push(m);
            true
        };
        'fill: while buf.len() < self.batch_max && !self.stop.is_cancelled() {
            // What is already queued first, without a timer per message.
            while buf.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(m) => {
                        if !take(m, buf) {
                            break 'fill;
                        }
                    }
                    Err(_) => break,
                }
            }
            if buf.len() >= self.batch_max {
                break;
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => if !take(m, buf) { break },
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.stop.cancelled() => break,
            }
        }
        true
    }

    /// Prepares and applies one batch: the card path (applied by the combiner), or the
    /// consumer-profile path (applied here, under one of the combiner's writer permits). The
    /// batch's share of the in-flight budget is held until it is applied.
    async fn prepare_and_apply(&self, messages: &[Incoming]) -> Result<(Applied, usize), Step> {
        let bytes = messages.iter().map(|m| m.raw.size()).sum();
        let units = weight(messages.len(), bytes, self.batch_max, self.batch_max_bytes);
        let _budget = tokio::select! {
            // The semaphore is never closed, so the permits are always there.
            p = self.batches.clone().acquire_many_owned(units) => p.ok(),
            _ = self.stop.cancelled() => return Err(Step::Stopped),
        };
        if self.kind == EventKind::Profile {
            let prepared = self.pipeline.prepare_profiles(messages).await.map_err(Step::Prepare)?;
            let sealer =
                self.pipeline.profile_sealer().ok_or(Step::Prepare(PrepareError::NoConsumerDataKeys))?;
            let size = prepared.len();
            let batch = ProfileBatch {
                group: &self.group,
                topic: &self.topic,
                partition: self.partition,
                from: self.from,
                messages: prepared,
            };
            let _writer = tokio::select! {
                w = self.combiner.writers().clone().acquire_owned() => w.ok(),
                _ = self.stop.cancelled() => return Err(Step::Stopped),
            };
            let applied = profile::apply_batch(&self.pool, sealer, &batch).await;
            return applied.map(|a| (a, size)).map_err(Step::Apply);
        }
        let prepared = self.pipeline.prepare(self.kind, messages).await.map_err(Step::Prepare)?;
        let size = prepared.len();
        let batch = OwnedBatch {
            group: self.group.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            from: self.from,
            messages: prepared,
        };
        match self.combiner.apply(batch).await {
            Ok(applied) => applied.map(|a| (a, size)).map_err(Step::Apply),
            Err(Stopped) => Err(Step::Stopped),
        }
    }

    /// Prepares and applies the batch, retrying transient failures. False when stopped before
    /// the batch could be committed (it will be replayed by the next owner).
    async fn process(&mut self, buf: &mut Vec<Incoming>) -> bool {
        let mut delays = backoff();
        loop {
            let started = Instant::now();
            let messages: Vec<Incoming> = std::mem::take(buf);
            let outcome = self.prepare_and_apply(&messages).await;
            *buf = messages;
            match outcome {
                Err(Step::Stopped) => return false,
                Err(Step::Prepare(e)) => {
                    warn!(error = %e, "cannot prepare batch; retrying");
                    if !self.pause(&mut delays).await {
                        return false;
                    }
                }
                Ok((applied, size)) => {
                    self.from = Some(applied.next_offset);
                    let _ = self.commits.send(Committed {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        next_offset: applied.next_offset,
                    });
                    metrics::histogram!(INGEST_BATCH_SIZE).record(size as f64);
                    metrics::histogram!(INGEST_BATCH_DURATION).record(started.elapsed().as_secs_f64());
                    let topic = self.topic.clone();
                    for effect in &applied.effects {
                        metrics::counter!(DECISIONS, "effect" => effect.as_str()).increment(1);
                    }
                    for reason in &applied.dead_letters {
                        metrics::counter!(DEAD_LETTERS, "reason" => reason.code()).increment(1);
                    }
                    let dead = applied.dead_letters.len() as u64;
                    let dup = applied.duplicates as u64;
                    let ok = (size as u64).saturating_sub(dead + dup);
                    metrics::counter!(EVENTS_CONSUMED, "topic" => topic.clone(), "outcome" => "applied")
                        .increment(ok);
                    metrics::counter!(EVENTS_CONSUMED, "topic" => topic.clone(), "outcome" => "duplicate")
                        .increment(dup);
                    metrics::counter!(EVENTS_CONSUMED, "topic" => topic, "outcome" => "dead_letter")
                        .increment(dead);
                    return true;
                }
                Err(Step::Apply(ApplyError::Fenced { .. })) => {
                    match offsets::load(&self.pool, &self.group, &self.topic).await {
                        Ok(stored) => {
                            let now = stored.get(&self.partition).copied();
                            info!(stored = ?now, ours = ?self.from, "another consumer advanced this partition; skipping what it applied");
                            self.from = now;
                            let from = self.from;
                            buf.retain(|m| from.is_none_or(|f| m.offset >= f));
                            if buf.is_empty() {
                                return true;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot re-read the stored offset; retrying");
                            if !self.pause(&mut delays).await {
                                return false;
                            }
                        }
                    }
                }
                Err(Step::Apply(e)) => {
                    let transient = matches!(&e, ApplyError::Store(s) if s.is_transient());
                    if transient {
                        warn!(error = %e, "PostgreSQL unavailable; retrying the batch");
                    } else {
                        // Not expected to heal by itself (e.g. a sealing key problem); retrying keeps
                        // the partition where it is, so nothing is lost while an operator fixes it.
                        tracing::error!(error = %e, "cannot apply the batch; retrying");
                    }
                    if !self.pause(&mut delays).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Sleeps the next backoff delay; false when stopped meanwhile.
    async fn pause(&self, delays: &mut impl Iterator<Item = Duration>) -> bool {
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_weighs_its_larger_share_of_the_message_and_byte_limits() {
        // 1,000 messages or 4 MiB make a full batch.
        let w = |messages, bytes| weight(messages, bytes, 1000, 4 << 20);
        assert_eq!(w(1000, 1 << 20), BATCH_UNITS, "a full count of small messages");
        assert_eq!(w(10, 4 << 20), BATCH_UNITS, "a few messages of a full batch's bytes");
        assert_eq!(w(3, 3 * 600), 3, "the small batch of a moderate rate");
        assert_eq!(
            w(1, 40 << 20),
            BATCH_UNITS,
            "one message larger than a batch takes a full batch, no more"
        );
        assert_eq!(w(0, 0), 1, "never free");
        assert_eq!(w(500, 1 << 20), 500);
        assert_eq!(w(100, 3 << 20), 750);
    }

    #[test]
    fn partitions_share_the_process_budget_and_an_empty_partition_always_takes_one_message() {
        let total = Arc::default();
        let (a, b) = (HeldBytes::sharing(&total), HeldBytes::sharing(&total));
        // Partition limit 100, process limit 150.
        assert!(a.has_room(90, 100, 150));
        a.add(90);
        assert!(!a.has_room(20, 100, 150), "over the partition's own limit");
        b.add(50);
        assert!(!b.has_room(20, 100, 150), "within b's limit but over the process's");
        let c = HeldBytes::sharing(&total);
        assert!(c.has_room(1000, 100, 150), "an empty partition takes one message, however large");
        a.release(90);
        assert_eq!(total.load(Ordering::Acquire), 50);
        assert!(b.has_room(20, 100, 150));
        b.release(500);
        assert_eq!((b.get(), total.load(Ordering::Acquire)), (0, 0), "never below zero");
    }

    #[test]
    fn a_partition_that_goes_away_gives_its_bytes_back_to_the_process_budget() {
        let total = Arc::default();
        let stays = HeldBytes::sharing(&total);
        stays.add(10);
        // Revoked with messages still queued: the router's copy and the task's both drop.
        let revoked = HeldBytes::sharing(&total);
        let in_task = revoked.clone();
        revoked.add(90);
        drop(revoked);
        assert_eq!(total.load(Ordering::Acquire), 100, "the task still holds its queue");
        drop(in_task);
        assert_eq!(total.load(Ordering::Acquire), 10, "only what live partitions hold");
        // An over-release (the accounting off) never takes another partition's bytes.
        stays.release(500);
        assert_eq!(total.load(Ordering::Acquire), 0);
    }
}
