//! Test fixtures: a fresh PostgreSQL schema per test (dropped afterwards), event builders.

use std::sync::atomic::{AtomicU64, Ordering};

use card_registrar::core::event::*;
use card_registrar::core::ids::*;
use card_registrar::ingest::envelope::{SealError, Sealer};
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
