//! Test fixtures: a fresh PostgreSQL schema per test (dropped afterwards), event builders.

use std::sync::atomic::{AtomicU64, Ordering};

use card_registrar::core::event::*;
use card_registrar::core::ids::*;
use card_registrar::crypto::{SealError, Sealer};
use card_registrar::store;
use chrono::{TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The database every test schema lives in.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/card_registrar".into())
}

/// A schema of its own, migrated, dropped on drop.
pub struct TestDb {
    /// Pool whose connections use the schema.
    pub pool: PgPool,
    /// The schema name.
    pub schema: String,
    /// A `DATABASE_URL` pointing at the schema (for child processes).
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let base = database_url();
        let schema = format!("t_{}", Uuid::new_v4().simple());
        let admin = store::connect(&base, 1).await.expect("PostgreSQL reachable at DATABASE_URL");
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let pool = store::connect(&url, 8).await.unwrap();
        store::migrate(&pool).await.unwrap();
        Self { pool, schema, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(admin) = store::connect(&database_url(), 1).await {
                    // A test that leaks an open transaction must not hang the suite.
                    let _ = sqlx::query("SET lock_timeout = '10s'").execute(&admin).await;
                    let _ =
                        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A reversible stand-in sealer for store-level tests (the real one encrypts with JWE).
pub struct PlainSealer;

impl Sealer for PlainSealer {
    fn seal(&self, plaintext: &[u8]) -> Result<String, SealError> {
        Ok(hex::encode(plaintext))
    }
    fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        hex::decode(sealed).map(Zeroizing::new).map_err(|e| SealError { op: "open", detail: e.to_string() })
    }
}

static EVENT_SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh event id.
pub fn event_id() -> EventId {
    EventId::from_uuid(Uuid::from_u128(u128::from(EVENT_SEQ.fetch_add(1, Ordering::Relaxed)) | (7 << 64)))
}

pub fn meta(card: &str, consumer: &str) -> EventMeta {
    EventMeta {
        event_id: event_id(),
        occurred_at: Utc.timestamp_millis_opt(1_790_000_000_000).unwrap(),
        card_id: CardId::parse(card).unwrap(),
        consumer_id: ConsumerId::parse(consumer).unwrap(),
    }
}

pub fn created(card: &str, consumer: &str) -> CardEvent {
    CardEvent::Created(CardCreated {
        meta: meta(card, consumer),
        card_product_id: CardProductId::parse("prod-1").unwrap(),
        encrypted_card: EncryptedCard::new("eyJhbGciOiJFQ0RILUVTIn0..iv.ct.tag".into()),
        initial_state: InitialState::Active,
    })
}

pub fn tokenized(card: &str, consumer: &str, outcome: TokenizationOutcome) -> CardEvent {
    CardEvent::Tokenized(CardTokenized {
        meta: meta(card, consumer),
        outcome,
        digital_card_id: None,
        token_requestor_id: None,
    })
}

pub fn ordered(card: &str, consumer: &str, outcome: OrderOutcome) -> CardEvent {
    CardEvent::Ordered(CardOrdered {
        meta: meta(card, consumer),
        outcome,
        card_product_id: None,
        order_id: None,
    })
}

/// Kafka bootstrap servers for tests.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Three input topics of their own (6 partitions each), and the registration-results topic a
/// worker on them publishes to, deleted on drop.
pub struct TestTopics {
    /// `card-created` stand-in.
    pub created: String,
    /// `card-tokenized` stand-in.
    pub tokenized: String,
    /// `card-ordered` stand-in.
    pub ordered: String,
    /// `card-registration-results` stand-in.
    pub results: String,
}

impl TestTopics {
    pub async fn new(partitions: i32) -> Self {
        Self::with_config(partitions, &[]).await
    }

    /// Topics created with these topic-level settings (e.g. `max.message.bytes`).
    pub async fn with_config(partitions: i32, config: &[(&str, &str)]) -> Self {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let id = Uuid::new_v4().simple().to_string();
        let t = Self {
            created: format!("t-created-{id}"),
            tokenized: format!("t-tokenized-{id}"),
            ordered: format!("t-ordered-{id}"),
            results: format!("t-results-{id}"),
        };
        let admin: AdminClient<_> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
        let topics: Vec<NewTopic<'_>> = t
            .names()
            .iter()
            .chain([&t.results.as_str()])
            .map(|n| {
                config
                    .iter()
                    .fold(NewTopic::new(n, partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v))
            })
            .collect();
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("Kafka reachable at KAFKA_BROKERS")
        {
            r.expect("topic created");
        }
        t
    }

    pub fn names(&self) -> [&str; 3] {
        [&self.created, &self.tokenized, &self.ordered]
    }

    pub fn kinds(&self) -> Vec<(String, EventKind)> {
        vec![
            (self.created.clone(), EventKind::Created),
            (self.tokenized.clone(), EventKind::Tokenized),
            (self.ordered.clone(), EventKind::Ordered),
        ]
    }

    /// Sum of the high watermarks of every partition (= messages published, on fresh topics).
    pub fn published(&self) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        let mut total = 0;
        for topic in self.names() {
            let md = c.fetch_metadata(Some(topic), std::time::Duration::from_secs(10)).unwrap();
            for p in md.topics()[0].partitions() {
                let (_, high) =
                    c.fetch_watermarks(topic, p.id(), std::time::Duration::from_secs(10)).unwrap();
                total += high;
            }
        }
        total
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let names: Vec<String> =
            self.names().iter().chain([&self.results.as_str()]).map(|s| s.to_string()).collect();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(admin) = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers())
                    .create::<AdminClient<_>>()
                {
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
                }
            });
        })
        .join();
    }
}

/// Publishes messages to the test topics and waits for every delivery.
pub async fn publish(topics: &TestTopics, messages: &[card_registrar::workload::Outgoing]) {
    publish_to(&topics.kinds(), messages).await;
}

/// Publishes messages to the given topic of each kind and waits for every delivery.
pub async fn publish_to(topics: &[(String, EventKind)], messages: &[card_registrar::workload::Outgoing]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = |k: EventKind| topics.iter().find(|(_, kind)| *kind == k).map(|(t, _)| t.as_str()).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let record = FutureRecord::to(topic(m.kind)).key(&m.key).payload(&m.payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Key files for both sides (issuer auth, D1 encryption, card data), in a temp dir.
pub struct TestKeys {
    pub files: d1_simulator::keys::KeyFiles,
    _dir: tempfile::TempDir,
}

impl TestKeys {
    pub fn new() -> Self {
        Self::with_card_data_kid("card-data-1")
    }

    /// Keys whose card-data key has this kid (a rotated key has a new kid).
    pub fn with_card_data_kid(kid: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = d1_simulator::keys::KeyOptions { card_data_kid: kid.into(), ..Default::default() };
        let files = d1_simulator::keys::generate(dir.path(), &options).unwrap();
        Self { files, _dir: dir }
    }

    /// The card-data public key, as producers use it.
    pub fn card_public(&self) -> card_registrar::crypto::RecipientKey {
        card_registrar::crypto::RecipientKey::from_file(&self.files.card_data_public_jwk).unwrap()
    }

    /// The ingest pipeline (embedded schemas, our card-data keys, the real sealer).
    pub fn pipeline(&self) -> card_registrar::ingest::prepare::Pipeline {
        use card_registrar::avro::decode::Decoder;
        use card_registrar::avro::schemas::SchemaSet;
        use card_registrar::crypto::{CardDataKeys, EnvelopeSealer};
        let keys = CardDataKeys::from_file(&self.files.card_data_private_jwks).unwrap();
        let sealer = EnvelopeSealer::from_file(&self.files.card_data_private_jwks).unwrap();
        let decoder = Decoder::new(std::sync::Arc::new(SchemaSet::embedded().unwrap()), None);
        card_registrar::ingest::prepare::Pipeline::new(
            decoder,
            std::sync::Arc::new(keys),
            std::sync::Arc::new(sealer),
        )
    }
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sum of the stored next offsets of `group` (= messages applied, on fresh topics).
pub async fn applied(pool: &PgPool, group: &str) -> i64 {
    card_registrar::store::offsets::load_group(pool, group).await.unwrap().iter().map(|(_, _, o)| o).sum()
}

/// Everything ingest writes, without the columns that legitimately differ between runs (row ids,
/// timestamps, sealed envelopes, consumer group): two runs over the same topics must be equal.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub cards: Vec<serde_json::Value>,
    pub history: Vec<serde_json::Value>,
    pub outbox: Vec<serde_json::Value>,
    pub dead_letters: Vec<serde_json::Value>,
    pub offsets: Vec<serde_json::Value>,
}

impl Snapshot {
    pub async fn take(pool: &PgPool) -> Self {
        async fn rows(pool: &PgPool, sql: &str) -> Vec<serde_json::Value> {
            sqlx::query_scalar::<_, serde_json::Value>(&format!("SELECT row_to_json(t) FROM ({sql}) t"))
                .fetch_all(pool)
                .await
                .unwrap()
        }
        Self {
            cards: rows(pool, "SELECT card_id, consumer_id, state, source, card_product_id, encrypted_card IS NOT NULL AS has_card_data, \
                               initial_state, implicit_while_in_flight, failure FROM cards ORDER BY card_id").await,
            history: rows(pool, "SELECT event_id, card_id, kind, outcome, consumer_id, effect, topic, partition, \"offset\" \
                                 FROM card_events ORDER BY event_id").await,
            // The sealed content key is random per sealing (its nonce): whether it is there counts,
            // not its bytes.
            outbox: rows(pool, "SELECT card_id, kind, status, payload - 'cardKey' AS payload, \
                                payload ? 'cardKey' AS has_sealed_card_key FROM outbox ORDER BY card_id").await,
            dead_letters: rows(pool, "SELECT topic, partition, \"offset\", reason, detail, card_id, event_id \
                                      FROM dead_letters ORDER BY topic, partition, \"offset\"").await,
            offsets: rows(pool, "SELECT topic, partition, next_offset FROM consumer_offsets ORDER BY topic, partition").await,
        }
    }

    /// A short description of the first difference, for assertion messages.
    pub fn diff(&self, other: &Self) -> String {
        let parts: [(&str, &Vec<serde_json::Value>, &Vec<serde_json::Value>); 5] = [
            ("cards", &self.cards, &other.cards),
            ("history", &self.history, &other.history),
            ("outbox", &self.outbox, &other.outbox),
            ("dead_letters", &self.dead_letters, &other.dead_letters),
            ("offsets", &self.offsets, &other.offsets),
        ];
        for (name, a, b) in parts {
            if a != b {
                let first = a.iter().zip(b.iter()).find(|(x, y)| x != y);
                return format!("{name}: {} vs {} rows; first difference: {first:?}", a.len(), b.len());
            }
        }
        "equal".into()
    }
}

/// The ingest options the in-process ingest tests use over `topics`, for consumer group `group`.
pub fn test_ingest_options(
    group: &str,
    topics: &TestTopics,
) -> card_registrar::ingest::consumer::IngestOptions {
    card_registrar::ingest::consumer::IngestOptions {
        brokers: brokers(),
        group_id: group.to_owned(),
        topics: topics.kinds(),
        batch_max: 500,
        batch_max_bytes: 4 << 20,
        batch_wait: std::time::Duration::from_millis(20),
        queue_capacity: 1000,
        queue_max_bytes: 16 << 20,
        memory_max_bytes: 16 << 20,
        batches_in_flight: 4,
        revoke_wait: std::time::Duration::from_secs(10),
        security: Default::default(),
    }
}
