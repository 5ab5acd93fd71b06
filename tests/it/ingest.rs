//! Ingest against the real broker and database: a mixed stream gives exactly the expected
//! records, outbox rows, dead letters and stored offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use card_registrar::avro::encode::Framing;
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::core::event::EventKind;
use card_registrar::core::record::{CallStatus, CardState, RegistrationSource};
use card_registrar::ingest::consumer;
use card_registrar::store::{cards, dead_letters, history, offsets};
use card_registrar::workload::{CardScript, Generator, Outgoing, Plan};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// A running in-process ingest over the test topics; stopped on `stop()`.
pub struct Ingest {
    pub group: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Ingest {
    pub fn start(db: &TestDb, topics: &TestTopics, keys: &TestKeys) -> Self {
        Self::start_with(db, topics, keys, |_| {})
    }

    /// Starts with the test options changed by `tune`.
    pub fn start_with(
        db: &TestDb,
        topics: &TestTopics,
        keys: &TestKeys,
        tune: impl FnOnce(&mut consumer::IngestOptions),
    ) -> Self {
        let group = format!("g-{}", uuid::Uuid::new_v4().simple());
        let mut options = test_ingest_options(&group, topics);
        tune(&mut options);
        let stop = CancellationToken::new();
        let (pool, pipeline, s) = (db.pool.clone(), Arc::new(keys.pipeline()), stop.clone());
        let task = tokio::spawn(async move {
            consumer::run(options, pool, pipeline, Arc::new(|_| {}), s).await.unwrap();
        });
        Self { group, stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("ingest stops in time")
            .unwrap();
    }
}

pub fn scripts(keys: &TestKeys, prefix: &str, n: usize, plan: impl Fn(usize) -> Plan) -> Vec<CardScript> {
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 7, prefix);
    (0..n).map(|i| g.card(i, plan(i)).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_stream_gives_exactly_the_expected_records_outbox_rows_dead_letters_and_offsets() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(6).await, TestKeys::new());
    let cards = scripts(&keys, "mix", 200, Generator::realistic_plan);
    let mut phase1: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase1.clone()).collect();
    let phase2: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase2.clone()).collect();
    // Re-published duplicates, undecodable bytes, and a single-object message of an unknown schema.
    let duplicates: Vec<Outgoing> = phase1.iter().step_by(10).cloned().collect();
    phase1.extend(duplicates.iter().cloned());
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 9, "p");
    phase1.push(g.poison(EventKind::Created));
    phase1.push(g.poison(EventKind::Tokenized));
    let mut unknown = phase1[0].clone();
    unknown.payload[2..10].copy_from_slice(&[0xAB; 8]);
    phase1.push(unknown);

    let ingest = Ingest::start(&db, &topics, &keys);
    publish(&topics, &phase1).await;
    let n1 = topics.published();
    wait_until("phase 1 applied", Duration::from_secs(60), || async {
        applied(&db.pool, &ingest.group).await == n1
    })
    .await;
    publish(&topics, &phase2).await;
    let n2 = topics.published();
    wait_until("phase 2 applied", Duration::from_secs(60), || async {
        applied(&db.pool, &ingest.group).await == n2
    })
    .await;
    ingest.stop().await;

    // Every partition's stored offset is its high watermark.
    let stored = offsets::load_group(&db.pool, &group_of(&db).await).await.unwrap();
    assert_eq!(stored.len(), 18, "{stored:?}");
    assert_eq!(stored.iter().map(|(_, _, o)| o).sum::<i64>(), n2);

    let mut dead_by_reason: HashMap<String, usize> = HashMap::new();
    for d in dead_letters::list(&db.pool, &Default::default(), 10_000).await.unwrap() {
        *dead_by_reason.entry(d.reason).or_default() += 1;
    }
    let count = |p: Plan| cards.iter().filter(|c| c.plan == p).count();
    assert_eq!(dead_by_reason.get("UNKNOWN_FRAMING"), Some(&2));
    assert_eq!(dead_by_reason.get("UNKNOWN_SCHEMA"), Some(&1));
    // Re-published copies of refused messages are refused again (each is a message received).
    let dup_of = |p: Plan| {
        duplicates
            .iter()
            .filter(|d| cards.iter().any(|c| c.plan == p && d.key == c.card_id.as_bytes()))
            .count()
    };
    assert_eq!(
        dead_by_reason.get("CARD_ID_DERIVED_FROM_PAN").copied(),
        Some(count(Plan::PanAsCardId) + dup_of(Plan::PanAsCardId))
    );
    assert_eq!(
        dead_by_reason.get("INVALID_PAN").copied(),
        Some(count(Plan::BadLuhn) + dup_of(Plan::BadLuhn))
    );
    assert_eq!(dead_by_reason.get("CONSUMER_MISMATCH").copied(), Some(count(Plan::ConsumerMismatch)));

    for c in &cards {
        let view = cards::get(&db.pool, &c.card_id).await.unwrap();
        match c.plan {
            Plan::PanAsCardId | Plan::BadLuhn => assert!(view.is_none(), "{:?} stored", c.plan),
            Plan::CreatedOnly | Plan::DeclinedThenCreated | Plan::ConsumerMismatch => {
                let (r, call) = view.unwrap();
                assert_eq!((r.state, call), (CardState::Pending, Some(CallStatus::Queued)), "{:?}", c.plan);
                assert_eq!(r.consumer_id.as_str(), c.consumer_id);
            }
            Plan::TokenizedOnly | Plan::OrderedOnly => {
                let (r, call) = view.unwrap();
                assert_eq!(r.state, CardState::Registered);
                assert!(matches!(
                    r.source,
                    Some(RegistrationSource::ImplicitTokenization | RegistrationSource::ImplicitOrder)
                ));
                assert_eq!(call, None);
            }
            Plan::TokenizedThenCreated => {
                let (r, call) = view.unwrap();
                assert_eq!(
                    (r.state, r.source),
                    (CardState::Registered, Some(RegistrationSource::ImplicitTokenization))
                );
                assert!(r.encrypted_card.is_some() && r.card_product_id.is_some(), "enriched by CardCreated");
                assert_eq!(call, None);
            }
            Plan::CreatedThenTokenized => {
                let (r, call) = view.unwrap();
                assert_eq!(r.state, CardState::Registered);
                assert!(matches!(call, None | Some(CallStatus::Cancelled)), "{call:?}");
            }
        }
        // One history row per distinct applied event, duplicates recognised.
        if c.plan.ends_registered() {
            let expected = c.phase1.len() + c.phase2.len() - usize::from(c.plan == Plan::ConsumerMismatch);
            assert_eq!(
                history::for_card(&db.pool, &c.card_id).await.unwrap().len(),
                expected,
                "{:?}",
                c.plan
            );
        }
    }
}

/// `INGEST_BATCHES_IN_FLIGHT=1` over 18 partitions: the partitions take turns with one permit,
/// none starves, and every message is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_batch_in_flight_for_eighteen_partitions_applies_every_message_once() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(6).await, TestKeys::new());
    let cards = scripts(&keys, "one", 150, Generator::realistic_plan);
    let phase1: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase1.clone()).collect();
    let phase2: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase2.clone()).collect();
    let ingest = Ingest::start_with(&db, &topics, &keys, |o| o.batches_in_flight = 1);
    for (phase, messages) in [("phase 1", &phase1), ("phase 2", &phase2)] {
        publish(&topics, messages).await;
        let n = topics.published();
        wait_until(phase, Duration::from_secs(60), || async { applied(&db.pool, &ingest.group).await == n })
            .await;
    }
    ingest.stop().await;

    let stored = offsets::load_group(&db.pool, &group_of(&db).await).await.unwrap();
    assert_eq!(stored.len(), 18, "every partition stored its offset: {stored:?}");
    assert_eq!(stored.iter().map(|(_, _, o)| o).sum::<i64>(), topics.published());
    for c in cards.iter().filter(|c| c.plan.ends_registered()) {
        let expected = c.phase1.len() + c.phase2.len() - usize::from(c.plan == Plan::ConsumerMismatch);
        let history = history::for_card(&db.pool, &c.card_id).await.unwrap();
        assert_eq!(history.len(), expected, "{:?}: each event applied once", c.plan);
    }
}

async fn group_of(db: &TestDb) -> String {
    let row: (String,) =
        sqlx::query_as("SELECT group_id FROM consumer_offsets LIMIT 1").fetch_one(&db.pool).await.unwrap();
    row.0
}
