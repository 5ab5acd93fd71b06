//! The relay: claims publishable result rows under a lease, publishes them with an idempotent
//! producer (`enable.idempotence=true`, `acks=all`), and marks them published once the broker
//! acknowledged them.
//!
//! Why a card's results reach the topic in order, also with several relays: `store::results::claim`
//! hands out only a card's oldest unpublished row, and a row is marked published only after the
//! broker acknowledged it, so a card's next row cannot be claimed, by any relay, before its
//! previous one is in the log; the message key is the cardId, so both land in the same partition.
//! No clock is trusted for this. A relay that stalls past its lease may still deliver its copy
//! late, after the row was published again and later rows followed: that copy is a duplicate with
//! the same `resultId`, and readers dedupe on it (the first copy is always in order).
//!
//! Claims start at the relay's [`Floor`], so they do not read the results published before them
//! again (their index entries stay until VACUUM); one claim a second reads the whole queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::avro::encode::{Framing, encode_result};
use crate::avro::schemas::{ParsedSchema, SchemaError, results_schema};
use crate::kafka::{KafkaSecurity, Logged};
use crate::results::floor::Floor;
use crate::store::StoreError;
use crate::store::results::{self, NOTIFY_CHANNEL, PendingResult};
use crate::telemetry::metrics::RESULTS_PUBLISHED;

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// The results topic.
    pub topic: String,
    /// TLS / SASL settings shared with every Kafka client of the process.
    pub security: KafkaSecurity,
    /// Value framing (single-object, or Confluent with the registry's schema id).
    pub framing: Framing,
    /// This relay's name in lease columns.
    pub owner: String,
    /// Most rows claimed (and published concurrently) at once.
    pub batch: usize,
    /// Lease on claimed rows; the producer gives up on a message before it ends.
    pub lease: Duration,
    /// Poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Wait before a row the broker did not take is claimable again.
    pub retry_delay: Duration,
    /// How long a stop waits for the batch in hand.
    pub drain_timeout: Duration,
    /// Longest time between two claims that read the whole queue rather than from the relay's
    /// floor: how long a result committed below the floor can wait ([`Floor`]).
    pub whole_queue_every: Duration,
}

impl RelayOptions {
    /// How long the producer keeps trying one message (`message.timeout.ms`): well inside the
    /// lease, so a relay normally hears back before another may claim the row.
    pub fn delivery_timeout(&self) -> Duration {
        (self.lease * 3 / 4).max(Duration::from_secs(1))
    }
}

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The results schema in `schemas/` does not load.
    #[error("load the registration results schema")]
    Schema(#[from] SchemaError),
    /// librdkafka refused the producer configuration.
    #[error("create the results producer")]
    Producer(#[source] rdkafka::error::KafkaError),
}

/// The relay of one process.
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer<Logged>,
    schema: ParsedSchema,
    options: RelayOptions,
    floor: Mutex<Floor>,
}

/// What one [`Relay::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows the broker acknowledged (and that were marked published).
    pub published: usize,
    /// Rows given back (refused or timed out by the producer, or not encodable).
    pub released: usize,
}

impl Relay {
    /// A relay with its idempotent producer.
    pub fn new(pool: PgPool, options: RelayOptions) -> Result<Self, RelayError> {
        let schema = results_schema()?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", options.delivery_timeout().as_millis().to_string());
        options.security.apply(&mut config);
        let producer = config.create_with_context(Logged).map_err(RelayError::Producer)?;
        let floor = Mutex::new(Floor::new(options.whole_queue_every));
        Ok(Self { pool, producer, schema, options, floor })
    }

    /// Claims one batch, publishes it, waits for every acknowledgement (bounded by the delivery
    /// timeout), then marks the acknowledged rows and gives the others back.
    pub async fn step(&self) -> Result<StepReport, StoreError> {
        let from = self.floor().start(Instant::now());
        let limit = self.options.batch as i64;
        let rows = results::claim(&self.pool, &self.options.owner, limit, self.options.lease, from).await?;
        self.floor().claimed(from, rows.iter().map(|r| r.seq).min(), Instant::now());
        let mut report = StepReport { claimed: rows.len(), ..StepReport::default() };
        if rows.is_empty() {
            return Ok(report);
        }
        let outcomes = join_all(rows.iter().map(|row| self.publish(row))).await;
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        for (row, ok) in rows.iter().zip(outcomes) {
            if ok {
                acked.push(row.seq);
                metrics::counter!(RESULTS_PUBLISHED, "outcome" => outcome_label(&row.outcome)).increment(1);
            } else {
                failed.push(row.seq);
            }
        }
        results::mark_published(&self.pool, &acked).await?;
        results::release(&self.pool, &self.options.owner, &failed, self.options.retry_delay).await?;
        report.published = acked.len();
        report.released = failed.len();
        Ok(report)
    }

    /// Where claims start (held only between awaits).
    fn floor(&self) -> std::sync::MutexGuard<'_, Floor> {
        self.floor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes one row; true once the broker acknowledged it.
    async fn publish(&self, row: &PendingResult) -> bool {
        let value = match row.to_result().map(|r| encode_result(&self.schema, &r, self.options.framing)) {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                error!(seq = row.seq, error = %e, "registration result does not encode; left unpublished");
                return false;
            }
            Err(e) => {
                error!(seq = row.seq, error = %e, "registration result unreadable; left unpublished");
                return false;
            }
        };
        let mut record = FutureRecord::<str, [u8]>::to(&self.options.topic).payload(&value);
        if let Some(card_id) = &row.card_id {
            record = record.key(card_id.as_str());
        }
        let delivery = match self.producer.send_result(record) {
            Ok(d) => d,
            Err((e, _)) => {
                warn!(seq = row.seq, error = %e, "cannot queue a registration result; will retry");
                return false;
            }
        };
        match delivery.await {
            Ok(Ok(_)) => true,
            Ok(Err((e, _))) => {
                warn!(seq = row.seq, error = %e, "broker did not take a registration result; will retry");
                false
            }
            Err(_) => false,
        }
    }

    /// Runs until `shutdown`: publishes while rows are due, waits for a notification or the poll
    /// interval otherwise. A stop waits at most `drain_timeout` for the batch in hand; rows left
    /// leased are published again after their lease (same `resultId`).
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), wake.clone(), shutdown.clone()));
        info!(owner = %self.options.owner, topic = %self.options.topic, "results relay started");
        let mut errors = 0u32;
        while !shutdown.is_cancelled() {
            let step = self.step();
            tokio::pin!(step);
            let result = tokio::select! {
                r = &mut step => r,
                _ = shutdown.cancelled() => {
                    match tokio::time::timeout(self.options.drain_timeout, step).await {
                        Ok(r) => r,
                        Err(_) => {
                            warn!("results still unacknowledged at the drain deadline; they will be published again");
                            break;
                        }
                    }
                }
            };
            let idle = match result {
                Ok(r) => {
                    errors = 0;
                    r.claimed == 0 || r.released > 0
                }
                Err(e) => {
                    errors = errors.saturating_add(1);
                    warn!(error = %e, "cannot claim or mark registration results; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200 * u64::from(errors.min(25)))) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            if idle {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.options.poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        listener.abort();
        info!("results relay stopped");
    }
}

/// The metric label of a stored outcome (a bounded set; anything else is `UNKNOWN`).
fn outcome_label(outcome: &str) -> &'static str {
    crate::core::result::ResultOutcome::parse(outcome).map_or("UNKNOWN", |o| o.as_str())
}

/// LISTEN for new results; a lost connection is re-established (the poll covers the gap).
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for new results; polling only");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            warn!(error = %e, "cannot LISTEN for new results; polling only");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        warn!(error = %e, "results LISTEN connection failed");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
