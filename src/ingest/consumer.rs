//! The Kafka side of ingest: one rdkafka consumer on the three topics, polled by one dedicated
//! thread that routes messages to per-partition tasks and owns every call into the client.
//!
//! - On assignment (inside the rebalance callback), each partition starts at the offset stored in
//!   PostgreSQL, set in the assignment list itself: seeking after assign would race the fetcher.
//!   No stored offset means the beginning.
//! - A stored offset outside the log is never skipped silently. Below the low watermark (the
//!   broker deleted messages before we read them), ingest records the gap in `offset_gaps`, moves
//!   the stored offset to the low watermark in the same transaction, counts the lost messages
//!   and logs an error. Above the high watermark (topic recreated), the partition is held: not
//!   consumed, reported in `/readyz` and a gauge, until an operator runs `offsets reset`; held
//!   partitions are checked again every few seconds. `auto.offset.reset=error` makes the client
//!   report an offset that falls out of the log while consuming instead of jumping; the
//!   partitions are then placed again the same way.
//! - A partition task that ends while it was not asked to stop (a panic) fails readiness and
//!   stops ingest with an error, so the process exits non-zero and is restarted; nothing after
//!   the stored offset is lost.
//! - Backpressure: each partition task has a queue bounded in messages and in bytes (the bytes
//!   of its batch in hand count too). When it is full the partition is paused and the overflow
//!   kept in order; the thread keeps polling, so the consumer never exceeds
//!   `max.poll.interval.ms`. The partition resumes once its queue takes the overflow. All
//!   partitions together also hold at most `memory_max_bytes` (one message always enters an
//!   empty partition), so memory does not grow with the number of partitions assigned. The
//!   client's fetch sizes and pre-fetch queue are sized from the same byte bounds.
//! - Revocation waits (bounded) for the partition's batch in hand; correctness does not depend
//!   on it, because the stored offset fences a late commit.
//! - Kafka offsets are committed asynchronously after each PostgreSQL commit, only so standard
//!   lag tools see progress; PostgreSQL is the source of truth.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::combine::{Combiner, GATHER, Limits, Ticks};
use super::message::{Committed, Incoming, RawMessage};
use super::partition::{BATCH_UNITS, HeldBytes, PartitionTask};
use super::prepare::Pipeline;
use crate::core::event::EventKind;
use crate::kafka::{Logged, logging};
use crate::store::offsets;
use crate::telemetry::metrics::{CONSUMER_LAG, OFFSETS_LOST};

/// How ingest batches and buffers.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Topic name -> event kind.
    pub topics: Vec<(String, EventKind)>,
    /// Most messages per batch and per transaction.
    pub batch_max: usize,
    /// Most message bytes per transaction (a larger single message forms a batch of one).
    pub batch_max_bytes: usize,
    /// Longest wait to fill a batch: the period of the clock all partitions close batches on.
    pub batch_wait: Duration,
    /// Messages buffered per partition before it is paused.
    pub queue_capacity: usize,
    /// Message bytes held per partition (queue and batch in hand) before it is paused.
    pub queue_max_bytes: usize,
    /// Message bytes held by all partitions together before the next one to receive is paused.
    pub memory_max_bytes: usize,
    /// Batches prepared and applied at once by all partitions together.
    pub batches_in_flight: usize,
    /// Longest wait for a revoked partition's batch in hand.
    pub revoke_wait: Duration,
    /// TLS, SASL and pass-through properties (the same for every Kafka client of the process).
    pub security: crate::kafka::KafkaSecurity,
}

/// What ingest reports for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Whether the broker connection is healthy.
    Kafka(bool),
    /// How many partitions are held because their stored offset is beyond the log.
    HeldPartitions(usize),
    /// A partition task died unexpectedly; ingest stops with an error.
    PartitionTaskDied,
}

/// Receives ingest's health changes (for `/readyz`).
pub type HealthSink = Arc<dyn Fn(Health) + Send + Sync>;

/// Ingest could not start or failed for good.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The consumer could not be created or subscribed.
    #[error("failed to {op}")]
    Kafka {
        /// What we were doing.
        op: &'static str,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The poll thread could not be started or panicked.
    #[error("ingest poll thread: {0}")]
    Thread(String),
    /// A partition task ended without being asked to (a bug): stop, so the process restarts
    /// from the stored offsets.
    #[error("the task of partition {topic}/{partition} {how}")]
    PartitionTask {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// `panicked` or `ended unexpectedly`.
        how: &'static str,
    },
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Consume from this offset (`None`: nothing stored, the beginning).
    Start(Option<i64>),
    /// Do not consume: the stored offset is beyond the end of the log.
    Hold,
}

/// One assigned partition: its task's queue and the overflow held while paused.
struct Slot {
    tx: mpsc::Sender<Incoming>,
    held: HeldBytes,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    overflow: VecDeque<Incoming>,
    paused: bool,
}

/// State shared by the poll loop and the rebalance callback (same thread; the mutex is never
/// contended, it only makes the context `Sync`).
struct Router {
    slots: HashMap<(String, i32), Slot>,
    /// Partitions given to us but not consumed: stored offset beyond the log.
    held: std::collections::BTreeSet<(String, i32)>,
}

/// The rdkafka context: rebalance handling and client callbacks.
struct Ctx {
    rt: tokio::runtime::Handle,
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    options: IngestOptions,
    kinds: HashMap<String, EventKind>,
    router: Mutex<Router>,
    commits: std::sync::mpsc::Sender<Committed>,
    /// Set by the error callback; the poll loop reports it (it alone talks to the health sink).
    brokers_down: std::sync::atomic::AtomicBool,
    /// Lets a rebalance callback waiting for PostgreSQL give up when the process stops.
    shutdown: CancellationToken,
    /// A client outside the group, for watermark queries: asked from inside the rebalance
    /// callback, the group's own client can stall on them.
    watermarks: BaseConsumer<Logged>,
    /// Message bytes held by every partition task together (see `HeldBytes`).
    held_total: Arc<std::sync::atomic::AtomicUsize>,
    /// The budget of batches being prepared and applied, shared by every partition task.
    batches: Arc<tokio::sync::Semaphore>,
    /// Applies the card partitions' batches, several in one transaction.
    combiner: Arc<Combiner>,
    /// The clock every partition closes its batches on.
    ticks: Ticks,
}

impl Ctx {
    fn router(&self) -> MutexGuard<'_, Router> {
        // A poisoned lock only means a panic elsewhere on this thread; the map is still usable.
        self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops partition tasks and waits for their batches in hand, up to `revoke_wait` in all.
    fn stop_and_wait(&self, slots: Vec<((String, i32), Slot)>, late: &str) {
        for (_, slot) in &slots {
            slot.stop.cancel();
        }
        let deadline = Instant::now() + self.options.revoke_wait;
        for ((topic, partition), slot) in slots {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.rt.block_on(async { tokio::time::timeout(left, slot.task).await }).is_err() {
                // Safe either way: a late commit is fenced by the stored offset.
                warn!(topic, partition, "{late}");
            }
        }
    }

    /// Reads the stored offsets for the group, retrying while PostgreSQL is unreachable: a
    /// partition must never start from a guessed offset. `None` when shutdown came first.
    fn stored_offsets(&self) -> Option<HashMap<(String, i32), i64>> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.rt.block_on(offsets::load_group(&self.pool, &self.options.group_id)) {
                Ok(rows) => return Some(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect()),
                Err(_) if self.shutdown.is_cancelled() => return None,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read stored offsets; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let Some(stored) = self.stored_offsets() else {
            info!("stopping before the assignment could be taken");
            return;
        };
        let mut started = Vec::new();
        for elem in tpl.elements() {
            let key = (elem.topic().to_owned(), elem.partition());
            match self.place(&key, stored.get(&key).copied()) {
                Some(Placement::Start(from)) => started.push((key, from)),
                Some(Placement::Hold) => {
                    self.router().held.insert(key);
                }
                None => return,
            }
        }
        self.start(consumer, started);
    }

    /// Compares the stored offset with the partition's watermarks. `None` when shutdown came
    /// first.
    fn place(&self, (topic, partition): &(String, i32), stored: Option<i64>) -> Option<Placement> {
        let Some(stored) = stored else { return Some(Placement::Start(None)) };
        let (low, high) = match self.watermarks.fetch_watermarks(topic, *partition, Duration::from_secs(5)) {
            Ok(w) => w,
            Err(e) => {
                // Safe: with auto.offset.reset=error an offset outside the log is reported, not skipped.
                warn!(topic, partition, error = %e, "cannot read the watermarks; starting from the stored offset");
                return Some(Placement::Start(Some(stored)));
            }
        };
        if stored > high {
            error!(
                topic,
                partition,
                stored,
                low,
                high,
                "stored offset is beyond the end of the log (topic recreated?); partition held until \
                 `card-registrar offsets reset`"
            );
            return Some(Placement::Hold);
        }
        if stored >= low {
            return Some(Placement::Start(Some(stored)));
        }
        let mut delay = Duration::from_millis(200);
        loop {
            let skipped = self.rt.block_on(offsets::skip_gap(
                &self.pool,
                &self.options.group_id,
                topic,
                *partition,
                stored,
                low,
            ));
            match skipped {
                Ok(true) => {
                    error!(
                        topic,
                        partition,
                        from = stored,
                        to = low,
                        lost = low - stored,
                        "messages were deleted before ingest read them; continuing from the low \
                         watermark (recorded in offset_gaps)"
                    );
                    metrics::counter!(OFFSETS_LOST, "topic" => topic.clone(), "partition" => partition.to_string())
                        .increment(u64::try_from(low - stored).unwrap_or(0));
                    return Some(Placement::Start(Some(low)));
                }
                Ok(false) => {
                    // Another consumer moved the offset meanwhile: start from what it stored.
                    let now = self.stored_offsets()?;
                    return Some(Placement::Start(now.get(&(topic.clone(), *partition)).copied()));
                }
                Err(_) if self.shutdown.is_cancelled() => return None,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot record an offset gap; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Assigns partitions at their start offsets and starts their tasks.
    /// Inside the rebalance callback this must run even with nothing to start: the client
    /// counts the (possibly empty) assign call as the end of the rebalance.
    fn start(&self, consumer: &BaseConsumer<Ctx>, started: Vec<((String, i32), Option<i64>)>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), from) in &started {
            let offset = from.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.add_partition_offset(topic, *partition, offset) {
                error!(topic, partition, error = %e, "cannot set the start offset in the assignment");
            }
        }
        if let Err(e) = consumer.incremental_assign(&tpl) {
            error!(error = %e, "incremental assign failed");
            return;
        }
        let mut router = self.router();
        for ((topic, partition), from) in started {
            let Some(kind) = self.kinds.get(&topic).copied() else { continue };
            info!(topic, partition, start = ?from, "partition assigned");
            let (tx, rx) = mpsc::channel(self.options.queue_capacity);
            let stop = CancellationToken::new();
            let held = HeldBytes::sharing(&self.held_total);
            let task = PartitionTask {
                group: self.options.group_id.clone(),
                topic: topic.clone(),
                kind,
                partition,
                from,
                batch_max: self.options.batch_max,
                batch_max_bytes: self.options.batch_max_bytes,
                ticks: self.ticks,
                held: held.clone(),
                batches: self.batches.clone(),
                combiner: self.combiner.clone(),
                pool: self.pool.clone(),
                pipeline: self.pipeline.clone(),
                commits: self.commits.clone(),
                stop: stop.clone(),
            };
            let task = self.rt.spawn(task.run(rx));
            router.held.remove(&(topic.clone(), partition));
            router.slots.insert(
                (topic, partition),
                Slot { tx, held, stop, task, overflow: VecDeque::new(), paused: false },
            );
        }
    }

    /// Starts held partitions whose stored offset is back inside the log (after an operator's
    /// `offsets reset`).
    fn recheck_held(&self, consumer: &BaseConsumer<Ctx>) {
        let held: Vec<(String, i32)> = self.router().held.iter().cloned().collect();
        if held.is_empty() {
            return;
        }
        let stored = match self.rt.block_on(offsets::load_group(&self.pool, &self.options.group_id)) {
            Ok(rows) => rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect::<HashMap<_, _>>(),
            Err(e) => {
                warn!(error = %e, "cannot read stored offsets for held partitions");
                return;
            }
        };
        let mut started = Vec::new();
        for key in held {
            if let Some(Placement::Start(from)) = self.place(&key, stored.get(&key).copied()) {
                info!(topic = %key.0, partition = key.1, start = ?from, "held partition released");
                started.push((key, from));
            }
        }
        if !started.is_empty() {
            self.start(consumer, started);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let (stopping, assigned): (Vec<_>, TopicPartitionList) = {
            let mut router = self.router();
            let mut assigned = TopicPartitionList::new();
            let mut stopping = Vec::new();
            for key in tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())) {
                // A held partition was never assigned to the client; every other one was (its
                // task may already be gone, e.g. at shutdown) and must be unassigned, or the
                // client waits for it forever.
                if !router.held.remove(&key) {
                    assigned.add_partition(&key.0, key.1);
                }
                if let Some(slot) = router.slots.remove(&key) {
                    stopping.push((key, slot));
                }
            }
            (stopping, assigned)
        };
        for ((topic, partition), _) in &stopping {
            info!(topic, partition, "partition revoked");
        }
        self.stop_and_wait(stopping, "partition revoked while its batch was still running");
        // Held partitions were never assigned to the client: unassigning them would fail the call.
        let result =
            if matches!(consumer.rebalance_protocol(), rdkafka::consumer::RebalanceProtocol::Cooperative) {
                // Called even when empty: the client counts it as the end of the rebalance.
                consumer.incremental_unassign(&assigned)
            } else {
                consumer.unassign()
            };
        if let Err(e) = result {
            warn!(error = %e, "unassign failed");
        }
    }

    /// A partition task that ended although it was not asked to stop, with how it ended.
    fn dead_task(&self) -> Option<((String, i32), &'static str)> {
        let mut router = self.router();
        let key = router
            .slots
            .iter()
            .find(|(_, s)| s.task.is_finished() && !s.stop.is_cancelled())
            .map(|(k, _)| k.clone())?;
        let slot = router.slots.remove(&key)?;
        drop(router);
        let how = match self.rt.block_on(slot.task) {
            Err(e) if e.is_panic() => "panicked",
            _ => "ended unexpectedly",
        };
        Some((key, how))
    }

    /// Places every assigned partition again (after the client found a fetch offset outside the
    /// log): each restarts from its stored offset, or records a gap, or is held.
    fn replace_all(&self, consumer: &BaseConsumer<Ctx>) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in self.router().slots.keys() {
            tpl.add_partition(topic, *partition);
        }
        self.revoke(consumer, &tpl);
        self.assign(consumer, &tpl);
    }
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        logging::log_line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.brokers_down.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        logging::log_error(&error, reason);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, &*tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => error!(error = ?other, "rebalance error"),
        }
    }
}

/// Runs ingest until `shutdown` is cancelled: stop fetching, let each partition finish and commit
/// the batch in hand, leave the group.
pub async fn run(
    options: IngestOptions,
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    health: HealthSink,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let rt = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kafka-poll".into())
        .spawn(move || {
            let result = poll_thread(rt, options, pool, pipeline, health, shutdown);
            let _ = done_tx.send(result);
        })
        .map_err(|e| IngestError::Thread(e.to_string()))?;
    done_rx.await.map_err(|_| IngestError::Thread("the poll thread panicked".into()))?
}

fn client_config(options: &IngestOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("max.poll.interval.ms", "300000")
        .set("statistics.interval.ms", "5000")
        // Fetches sized from the byte bounds, so the client's own buffers stay near them too
        // (a message larger than a fetch limit is still returned, alone).
        .set("max.partition.fetch.bytes", fetch_bytes(options.batch_max_bytes).to_string())
        // The client's one pre-fetch queue serves every partition: the process budget caps it.
        .set("fetch.max.bytes", fetch_bytes(client_queue_bytes(options)).to_string())
        .set("queued.max.messages.kbytes", (fetch_bytes(client_queue_bytes(options)) / 1024).to_string())
        .set("client.id", "card-registrar");
    options.security.apply(&mut c);
    c
}

/// The watermark reader's configuration: the consumer's brokers and security, no group.
fn watermark_config(options: &IngestOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.brokers).set("client.id", "card-registrar-watermarks");
    options.security.apply(&mut c);
    c
}

/// The client's pre-fetch queue: a partition's bound, at most half the process budget.
fn client_queue_bytes(options: &IngestOptions) -> usize {
    options.queue_max_bytes.min(options.memory_max_bytes / 2)
}

/// A fetch size: the byte bound, within what librdkafka accepts (at least its 1 MB
/// `message.max.bytes`, below its 100 MB `receive.message.max.bytes`).
fn fetch_bytes(bound: usize) -> usize {
    bound.clamp(1 << 20, 64 << 20)
}

fn poll_thread(
    rt: tokio::runtime::Handle,
    options: IngestOptions,
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    health: HealthSink,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let (commits_tx, commits_rx) = std::sync::mpsc::channel::<Committed>();
    let kinds = options.topics.iter().cloned().collect();
    let topics: Vec<String> = options.topics.iter().map(|(t, _)| t.clone()).collect();
    let in_flight = u32::try_from(options.batches_in_flight.max(1)).unwrap_or(256);
    let batches = Arc::new(tokio::sync::Semaphore::new((in_flight * BATCH_UNITS) as usize));
    let writers = Arc::new(tokio::sync::Semaphore::new(in_flight as usize));
    let limits = Limits { messages: options.batch_max, bytes: options.batch_max_bytes, gather: GATHER };
    let combiner = Arc::new(Combiner::new(pool.clone(), pipeline.clone(), writers, limits));
    let ctx = Ctx {
        rt,
        pool,
        pipeline,
        options: options.clone(),
        kinds,
        router: Mutex::new(Router { slots: HashMap::new(), held: Default::default() }),
        commits: commits_tx,
        brokers_down: std::sync::atomic::AtomicBool::new(false),
        shutdown: shutdown.clone(),
        watermarks: watermark_config(&options)
            .create_with_context(Logged)
            .map_err(|source| IngestError::Kafka { op: "create the watermark client", source })?,
        held_total: Arc::default(),
        batches,
        combiner,
        ticks: Ticks::new(options.batch_wait),
    };
    let consumer: BaseConsumer<Ctx> = client_config(&options)
        .create_with_context(ctx)
        .map_err(|source| IngestError::Kafka { op: "create the Kafka consumer", source })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| IngestError::Kafka { op: "subscribe to the topics", source })?;
    info!(topics = ?names, group = %options.group_id, "ingest started");

    let mut last_check = Instant::now() - Duration::from_secs(60);
    let mut healthy = None;
    let mut report = |ok: bool| {
        // Only changes are reported: the readiness gauge is not touched per message.
        if healthy != Some(ok) {
            healthy = Some(ok);
            health(Health::Kafka(ok));
        }
    };
    let mut held_reported = None;
    let mut failure = None;
    while !shutdown.is_cancelled() {
        if consumer.context().brokers_down.swap(false, std::sync::atomic::Ordering::Relaxed) {
            report(false);
        }
        if let Some(((topic, partition), how)) = consumer.context().dead_task() {
            error!(
                topic,
                partition,
                how,
                "partition task died; stopping ingest so the process restarts from the stored offsets"
            );
            health(Health::PartitionTaskDied);
            failure = Some(IngestError::PartitionTask { topic, partition, how });
            break;
        }
        let held = consumer.context().router().held.len();
        if held_reported != Some(held) {
            held_reported = Some(held);
            health(Health::HeldPartitions(held));
        }
        flush_overflow(&consumer);
        drain_commits(&consumer, &commits_rx);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                report(true);
                route(&consumer, &message);
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                error!("a fetch offset is outside the log; placing the assigned partitions again");
                consumer.context().replace_all(&consumer);
            }
            Some(Err(e)) => warn!(error = %e, "kafka poll error"),
        }
        if last_check.elapsed() >= Duration::from_secs(5) {
            last_check = Instant::now();
            report(consumer.fetch_metadata(names.first().copied(), Duration::from_secs(2)).is_ok());
            consumer.context().recheck_held(&consumer);
        }
    }

    info!("ingest stopping: finishing batches in hand");
    let slots: Vec<_> = consumer.context().router().slots.drain().collect();
    consumer.context().stop_and_wait(slots, "batch still running at shutdown; it will be replayed");
    drain_commits(&consumer, &commits_rx);
    consumer.unsubscribe();
    // Dropping the consumer closes it: it leaves the group so partitions move at once.
    drop(consumer);
    info!("ingest stopped");
    failure.map_or(Ok(()), Err)
}

fn route(consumer: &BaseConsumer<Ctx>, message: &BorrowedMessage<'_>) {
    let key = (message.topic().to_owned(), message.partition());
    let incoming = Incoming { offset: message.offset(), raw: raw_message(message) };
    let ctx = consumer.context();
    let (limit, total_limit) = (ctx.options.queue_max_bytes, ctx.options.memory_max_bytes);
    let mut router = ctx.router();
    let Some(slot) = router.slots.get_mut(&key) else {
        // Not (or no longer) ours; it will be read again from the stored offset by its owner.
        debug!(topic = %key.0, partition = key.1, "message for an unassigned partition dropped");
        return;
    };
    if !slot.overflow.is_empty() {
        slot.overflow.push_back(incoming);
        return;
    }
    let size = incoming.raw.size();
    let sent = if slot.held.has_room(size, limit, total_limit) {
        slot.tx.try_send(incoming).map(|()| slot.held.add(size))
    } else {
        Err(TrySendError::Full(incoming))
    };
    match sent {
        Ok(()) => {}
        Err(TrySendError::Full(incoming)) => {
            slot.overflow.push_back(incoming);
            if !slot.paused {
                pause(consumer, &key, true);
                slot.paused = true;
            }
        }
        Err(TrySendError::Closed(_)) => {
            warn!(topic = %key.0, partition = key.1, "partition task has stopped")
        }
    }
}

fn flush_overflow(consumer: &BaseConsumer<Ctx>) {
    let ctx = consumer.context();
    let (limit, total_limit) = (ctx.options.queue_max_bytes, ctx.options.memory_max_bytes);
    let mut router = ctx.router();
    for (key, slot) in &mut router.slots {
        while let Some(incoming) = slot.overflow.pop_front() {
            let size = incoming.raw.size();
            if !slot.held.has_room(size, limit, total_limit) {
                slot.overflow.push_front(incoming);
                break;
            }
            match slot.tx.try_send(incoming) {
                Ok(()) => slot.held.add(size),
                Err(TrySendError::Full(incoming) | TrySendError::Closed(incoming)) => {
                    slot.overflow.push_front(incoming);
                    break;
                }
            }
        }
        if slot.paused && slot.overflow.is_empty() {
            pause(consumer, key, false);
            slot.paused = false;
        }
    }
}

fn pause(consumer: &BaseConsumer<Ctx>, (topic, partition): &(String, i32), pause: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, *partition);
    let result = if pause { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    match result {
        Ok(()) => debug!(topic, partition, pause, "backpressure"),
        Err(e) => warn!(topic, partition, error = %e, "pause/resume failed"),
    }
}

fn drain_commits(consumer: &BaseConsumer<Ctx>, commits: &std::sync::mpsc::Receiver<Committed>) {
    let mut tpl = TopicPartitionList::new();
    let mut any = false;
    while let Ok(c) = commits.try_recv() {
        if let Err(e) = tpl.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.next_offset)) {
            warn!(error = %e, "cannot record a Kafka commit");
        }
        any = true;
    }
    if any && let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        debug!(error = %e, "async Kafka commit failed (PostgreSQL holds the offsets)");
    }
}

fn raw_message(message: &BorrowedMessage<'_>) -> RawMessage {
    let headers = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
    RawMessage {
        key: message.key().map(<[u8]>::to_vec),
        headers,
        payload: message.payload().map(<[u8]>::to_vec),
    }
}
