//! The service's parts, run in-process as `card-registrar run` wires them: key files, the ingest
//! pipeline and consumer, the apply path without Kafka, the D1 client and the dispatcher, and the
//! d1-simulator on a runtime of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use card_registrar::avro::decode::Decoder;
use card_registrar::avro::encode::Framing;
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::core::event::EventKind;
use card_registrar::core::ids::IssuerId;
use card_registrar::crypto::{AssertionKey, CardDataKeys, D1EncryptionKey, EnvelopeSealer};
use card_registrar::d1::{D1Client, D1ClientConfig};
use card_registrar::dispatch::attempt::Deps;
use card_registrar::dispatch::limiter::Limiter;
use card_registrar::dispatch::{DispatchOptions, Dispatcher};
use card_registrar::ingest::apply::apply_batch;
use card_registrar::ingest::consumer::{self, IngestOptions};
use card_registrar::ingest::message::{Batch, Incoming, Prepared, RawMessage};
use card_registrar::ingest::prepare::Pipeline;
use card_registrar::workload::{Generator, Outgoing, Plan};
use chrono::Utc;
use d1_simulator::keys::{KeyFiles, KeyOptions};
use d1_simulator::{RunningSimulator, SimConfig, Simulator};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ServiceSettings, brokers};

/// Key files for both sides (issuer auth, D1 encryption, card data) in a temporary directory.
pub struct Keys {
    /// The files.
    pub files: KeyFiles,
    _dir: tempfile::TempDir,
}

impl Keys {
    /// Generates a fresh set.
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let files = d1_simulator::keys::generate(dir.path(), &KeyOptions::default())?;
        Ok(Self { files, _dir: dir })
    }

    /// Our card-data private keys, as ingest and dispatch load them.
    pub fn card_data_keys(&self) -> anyhow::Result<CardDataKeys> {
        Ok(CardDataKeys::from_file(&self.files.card_data_private_jwks)?)
    }

    /// The ingest pipeline: embedded schemas, our card-data keys, the real dead-letter sealer.
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        let sealer = EnvelopeSealer::from_file(&self.files.card_data_private_jwks)?;
        let decoder = Decoder::new(Arc::new(SchemaSet::embedded()?), None);
        Ok(Pipeline::new(decoder, Arc::new(self.card_data_keys()?), Arc::new(sealer)))
    }

    /// One message per card, `n` cards following `plan` (a one-message plan), ids `<prefix>-<i>`.
    pub fn messages(&self, prefix: &str, n: usize, plan: Plan) -> anyhow::Result<Vec<Outgoing>> {
        let card_key = card_registrar::crypto::RecipientKey::from_file(&self.files.card_data_public_jwk)?;
        // The seed decides the event ids: one per prefix, or two workloads would share ids and the
        // second one's events would be taken for re-published duplicates.
        let seed = prefix.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut generator =
            Generator::new(SchemaSet::embedded()?, card_key, Framing::SingleObject, seed, prefix);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let script = generator.card(i, plan)?;
            anyhow::ensure!(script.phase2.is_empty(), "{plan:?} is not a one-message plan");
            out.extend(script.phase1);
        }
        Ok(out)
    }
}

/// Ingest running in-process over `topics`, with the service's settings.
pub struct Ingest {
    /// Its consumer group (fresh, so it starts from the beginning).
    pub group: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Ingest {
    /// Starts `consumer::run` as `card-registrar run` does (on the current runtime).
    pub fn start(
        settings: &ServiceSettings,
        pool: PgPool,
        topics: Vec<(String, EventKind)>,
        pipeline: Arc<Pipeline>,
    ) -> Self {
        let group = format!("b-{}", uuid::Uuid::new_v4().simple());
        let options = IngestOptions {
            brokers: brokers(),
            group_id: group.clone(),
            topics,
            batch_max: settings.ingest.ingest_batch_max as usize,
            batch_max_bytes: settings.ingest.ingest_batch_max_bytes as usize,
            batch_wait: Duration::from_millis(settings.ingest.ingest_batch_wait_ms),
            queue_capacity: settings.ingest.ingest_queue_capacity as usize,
            queue_max_bytes: settings.ingest.ingest_queue_max_bytes as usize,
            memory_max_bytes: settings.ingest.ingest_memory_max_bytes as usize,
            batches_in_flight: settings.ingest.ingest_batches_in_flight as usize,
            revoke_wait: Duration::from_secs(10),
            security: Default::default(),
        };
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            consumer::run(options, pool, pipeline, Arc::new(|_| {}), token).await.context("ingest")
        });
        Self { group, stop, task }
    }

    /// Stops ingest and waits (bounded) for it to leave the group.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("ingest did not stop in 30 s")??
    }
}

/// The sum of `group`'s stored next offsets: messages applied, on fresh topics.
pub async fn applied(pool: &PgPool, group: &str) -> anyhow::Result<i64> {
    let stored = card_registrar::store::offsets::load_group(pool, group).await?;
    Ok(stored.iter().map(|(_, _, next)| next).sum())
}

/// Wall time of the two halves of ingest measured without Kafka.
#[derive(Debug, Clone, Copy)]
pub struct ApplyTimes {
    /// Decode + decrypt + validate of every batch (all partitions at once).
    pub prepare: Duration,
    /// One transaction per batch (all partitions at once).
    pub apply: Duration,
}

/// Runs ingest's own two steps over `messages` without Kafka: split over `partitions` like a
/// topic would be, batches of `batch_max`, partitions in parallel; first every `prepare`, then
/// every `apply_batch`, so each half is timed alone.
pub async fn apply_directly(
    pool: &PgPool,
    pipeline: Arc<Pipeline>,
    kind: EventKind,
    messages: &[Outgoing],
    partitions: usize,
    batch_max: usize,
) -> anyhow::Result<ApplyTimes> {
    let started = Instant::now();
    let mut preparing = JoinSet::new();
    for partition in 0..partitions {
        let incoming: Vec<Incoming> = messages
            .iter()
            .skip(partition)
            .step_by(partitions)
            .enumerate()
            .map(|(offset, m)| Incoming { offset: offset as i64, raw: raw(m) })
            .collect();
        let pipeline = pipeline.clone();
        preparing.spawn(async move {
            let mut batches = Vec::new();
            for chunk in incoming.chunks(batch_max) {
                batches.push(pipeline.prepare(kind, chunk).await?);
            }
            anyhow::Ok((partition, batches))
        });
    }
    let prepared = preparing.join_all().await.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let prepare = started.elapsed();

    let started = Instant::now();
    let mut applying = JoinSet::new();
    for (partition, batches) in prepared {
        let (pool, pipeline) = (pool.clone(), pipeline.clone());
        applying.spawn(async move { apply_partition(&pool, &pipeline, partition as i32, batches).await });
    }
    applying.join_all().await.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(ApplyTimes { prepare, apply: started.elapsed() })
}

/// Applies one partition's prepared batches in order, each advancing the stored offset.
async fn apply_partition(
    pool: &PgPool,
    pipeline: &Pipeline,
    partition: i32,
    batches: Vec<Vec<Prepared>>,
) -> anyhow::Result<()> {
    let mut from = None;
    for messages in batches {
        let batch = Batch { group: "direct", topic: "direct", partition, from, messages };
        let applied = apply_batch(pool, pipeline.sealer(), &batch, Utc::now()).await?;
        anyhow::ensure!(applied.dead_letters.is_empty(), "the workload produced dead letters");
        from = Some(applied.next_offset);
    }
    Ok(())
}

fn raw(m: &Outgoing) -> RawMessage {
    RawMessage { key: Some(m.key.clone()), headers: vec![], payload: Some(m.payload.clone()) }
}

/// Starts the d1-simulator (plain HTTP on loopback, no faults) on `rt`, a runtime of its own so
/// its CPU can be told apart from the service's.
pub fn start_simulator(rt: &tokio::runtime::Runtime, keys: &Keys) -> anyhow::Result<RunningSimulator> {
    let config = SimConfig::from_key_files(&keys.files)?;
    Ok(rt.block_on(Simulator::start(config, "127.0.0.1:0".parse()?))?)
}

/// A D1 client toward the simulator, configured as the service would be.
pub fn d1_client(sim: &RunningSimulator, keys: &Keys, timeout: Duration) -> anyhow::Result<D1Client> {
    d1_client_at(sim.base_url(), keys, timeout)
}

/// The same toward a simulator at `base_url`.
pub fn d1_client_at(base_url: &str, keys: &Keys, timeout: Duration) -> anyhow::Result<D1Client> {
    let f = &keys.files;
    Ok(D1Client::new(D1ClientConfig {
        base_url: base_url.parse()?,
        issuer_id: IssuerId::parse(f.issuer_id.as_str())?,
        auth_key: AssertionKey::from_file(&f.issuer_auth_private_pem, f.issuer_auth_kid.clone())?,
        encryption_key: D1EncryptionKey::from_file(&f.d1_encryption_public_jwk)?,
        client_identity: None,
        ca_cert: None,
        timeout,
        audience: None,
    })?)
}

/// The politeness caps toward D1: `D1_MAX_CONCURRENCY` (default 32) as configured, but
/// `D1_MAX_RPS` unlimited unless set, since its production default (200/s) would be the figure.
pub fn d1_caps(settings: &ServiceSettings) -> (u32, u32) {
    let rps = if std::env::var_os("D1_MAX_RPS").is_some() { settings.d1.d1_max_rps } else { 1_000_000 };
    (settings.d1.d1_max_concurrency, rps)
}

/// A dispatcher over `pool` and `client`, with the service's dispatch settings and [`d1_caps`].
pub fn dispatcher(
    settings: &ServiceSettings,
    pool: PgPool,
    client: D1Client,
    keys: &Keys,
) -> anyhow::Result<Dispatcher> {
    let (concurrency, rps) = d1_caps(settings);
    let timeout = Duration::from_millis(settings.d1.d1_timeout_ms);
    let deps = Deps {
        pool,
        client,
        keys: Arc::new(keys.card_data_keys()?),
        limiter: Limiter::new(concurrency, rps),
        policy: settings.dispatch.retry_policy(),
        clock: Arc::new(card_registrar::d1::SystemClock),
    };
    let d = &settings.dispatch;
    Ok(Dispatcher::new(
        deps,
        DispatchOptions {
            owner: "bench-worker".into(),
            claim_batch: concurrency as usize,
            lease: d.lease(timeout),
            margin: d.margin(),
            poll_interval: Duration::from_millis(d.dispatch_poll_ms),
            breaker_threshold: d.dispatch_breaker_threshold,
            breaker_cool_down: Duration::from_secs(d.dispatch_breaker_cool_down_secs),
            drain_timeout: Duration::from_secs(10),
        },
    ))
}
