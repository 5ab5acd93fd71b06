//! The registration-results topic end to end, read back by a consumer this project did not write:
//! the Kafka Java client with the Avro reference implementation decoding
//! (`interop/AvroReference.java consume-results`).
//!
//! - a mixed stream (explicit, implicit by tokenization and by order, a terminal D1 refusal, bad
//!   input, an operator's cancellation, poison) gives exactly the expected results, keyed by cardId;
//! - the worker `kill -9`ed 10 times while it ingests, dispatches and relays: no result missing,
//!   copies only with the same resultId (and the same content), each card's results in the order
//!   they were committed;
//! - a publication whose mark was lost is published again with the same resultId, and the card's
//!   next result waits behind it; both framings read by the reference decoder, field for field;
//! - the claim itself: only a card's oldest unpublished result, whichever relay asks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use card_registrar::dispatch::operator;
use card_registrar::results::relay::{Relay, RelayOptions};
use card_registrar::store::outbox::{self, OutboxStatus};
use card_registrar::store::results;
use card_registrar::workload::{CardScript, Generator, Outgoing, Plan};
use d1_simulator::SeedCard;
use rand::Rng;
use uuid::Uuid;

use crate::avro_interop::{java, repo};
use crate::dispatch::TestD1;
use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

/// One message as the Java client read it.
#[derive(Debug, Clone, serde::Deserialize)]
struct ReadBack {
    partition: i32,
    offset: i64,
    key: Option<String>,
    record: serde_json::Value,
}

impl ReadBack {
    fn text(&self, field: &str) -> Option<String> {
        self.record[field].as_str().map(str::to_owned)
    }

    fn result_id(&self) -> String {
        self.text("resultId").expect("resultId")
    }
}

/// (cardId, outcome, errorCode): what a result says, without its ids and times.
type Said = (Option<String>, String, Option<String>);

/// Reads the results topic from the beginning with the Java client until `distinct` results
/// were seen and the end of the log is reached; returns every message, copies included.
fn read_back(topic: &str, distinct: usize) -> (Vec<ReadBack>, String) {
    let schemas = repo().join("schemas");
    let out = java(
        &["consume-results", &brokers(), topic, &distinct.to_string(), &schemas.display().to_string()],
        "",
    );
    let lines = out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    (lines, out)
}

/// Each card's result ids in commit order, and the number of rows, from PostgreSQL.
async fn committed(db: &TestDb) -> (HashMap<Option<String>, Vec<String>>, i64, i64) {
    let rows: Vec<(Option<String>, Uuid)> =
        sqlx::query_as("SELECT card_id, result_id FROM registration_results ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM registration_results WHERE published_at IS NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let total = rows.len() as i64;
    let mut by_card: HashMap<Option<String>, Vec<String>> = HashMap::new();
    for (card, id) in rows {
        by_card.entry(card).or_default().push(id.to_string());
    }
    (by_card, total, unpublished)
}

/// Checks what every reader may rely on, and returns the distinct results and the copies count:
/// copies of a resultId are identical and keyed alike, the key is the cardId, and each card's
/// results appear (first copies) in the order PostgreSQL committed them.
async fn check_stream(db: &TestDb, messages: &[ReadBack]) -> (Vec<Said>, usize) {
    let mut first: HashMap<String, &ReadBack> = HashMap::new();
    let mut order: HashMap<Option<String>, Vec<String>> = HashMap::new();
    let mut copies = 0;
    let mut sorted: Vec<&ReadBack> = messages.iter().collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    for m in sorted {
        assert_eq!(m.key, m.text("cardId"), "the message key is the cardId: {m:?}");
        match first.get(&m.result_id()) {
            Some(earlier) => {
                copies += 1;
                assert_eq!(earlier.record, m.record, "a re-published result is the same result");
                assert_eq!(earlier.key, m.key);
            }
            None => {
                first.insert(m.result_id(), m);
                if m.key.is_some() {
                    order.entry(m.key.clone()).or_default().push(m.result_id());
                }
            }
        }
    }
    let (by_card, total, unpublished) = committed(db).await;
    assert_eq!(unpublished, 0, "every result is marked published");
    assert_eq!(first.len() as i64, total, "every committed result is on the topic, and nothing else");
    for (card, ids) in &order {
        assert_eq!(Some(ids), by_card.get(card), "card {card:?}: results out of commit order");
    }
    let said = first
        .values()
        .map(|m| (m.text("cardId"), m.text("outcome").expect("outcome"), m.text("errorCode")))
        .collect();
    (said, copies)
}

fn count(items: impl IntoIterator<Item = Said>) -> BTreeMap<Said, usize> {
    let mut out = BTreeMap::new();
    for s in items {
        *out.entry(s).or_default() += 1;
    }
    out
}

fn said_(card: Option<&str>, outcome: &str, code: Option<&str>) -> Said {
    (card.map(str::to_owned), outcome.to_owned(), code.map(str::to_owned))
}

/// The results a card following `plan` produces when its events are applied phase by phase and
/// its registration (if any) succeeds.
fn expected(c: &CardScript) -> Vec<Said> {
    let id = Some(c.card_id.as_str());
    match c.plan {
        Plan::CreatedOnly | Plan::DeclinedThenCreated => vec![said_(id, "REGISTERED_EXPLICIT", None)],
        Plan::TokenizedOnly | Plan::TokenizedThenCreated | Plan::CreatedThenTokenized => {
            vec![said_(id, "REGISTERED_IMPLICIT_TOKENIZATION", None)]
        }
        Plan::OrderedOnly => vec![said_(id, "REGISTERED_IMPLICIT_ORDER", None)],
        // The cardId is the PAN: reported without one.
        Plan::PanAsCardId => vec![said_(None, "REJECTED", Some("CARD_ID_DERIVED_FROM_PAN"))],
        // Without a valid PAN the cardId cannot be checked against it: reported without one too.
        Plan::BadLuhn => vec![said_(None, "REJECTED", Some("INVALID_PAN"))],
        Plan::ConsumerMismatch => {
            vec![said_(id, "REGISTERED_EXPLICIT", None), said_(id, "REJECTED", Some("CONSUMER_MISMATCH"))]
        }
    }
}

/// Whether some relay holds claimed, not yet marked results.
async fn relay_holds_rows(db: &TestDb) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM registration_results
                        WHERE published_at IS NULL AND lease_owner IS NOT NULL AND lease_expires_at > now())",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn mixed_plan(i: usize) -> Plan {
    match i % 10 {
        0 | 1 => Plan::CreatedOnly,
        2 => Plan::DeclinedThenCreated,
        3 => Plan::TokenizedOnly,
        4 => Plan::OrderedOnly,
        5 => Plan::TokenizedThenCreated,
        6 => Plan::CreatedThenTokenized,
        7 => Plan::PanAsCardId,
        8 => Plan::BadLuhn,
        _ => Plan::ConsumerMismatch,
    }
}

fn poison(keys: &TestKeys, n: usize) -> Vec<Outgoing> {
    use card_registrar::core::event::EventKind;
    let mut g = Generator::new(
        card_registrar::avro::schemas::SchemaSet::embedded().unwrap(),
        keys.card_public(),
        card_registrar::avro::encode::Framing::SingleObject,
        5,
        "poison",
    );
    [EventKind::Created, EventKind::Tokenized, EventKind::Ordered]
        .into_iter()
        .cycle()
        .take(n)
        .map(|k| g.poison(k))
        .collect()
}

/// Waits until every published message is applied, no registration is left to make, and every
/// result is published.
async fn wait_settled(db: &TestDb, group: &str, published: i64) {
    wait_until("applied, dispatched and relayed", Duration::from_secs(240), || async {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status IN ('PENDING', 'IN_FLIGHT')")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let (_, total, unpublished) = committed(db).await;
        applied(&db.pool, group).await == published && open == 0 && total > 0 && unpublished == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_stream_yields_exactly_the_expected_results_read_back_by_the_java_client() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(3).await, TestKeys::new());
    let d1 =
        TestD1::start_with(&keys, |c| c.duplicate_answer = "409:CARD_ALREADY_REGISTERED".parse().unwrap())
            .await;
    let cards = scripts(&keys, "res", 40, mixed_plan);
    let (refused, cancelled) = (&cards[0], &cards[1]);
    // D1 has card 0 for somebody else: our PUT is refused, Get Card says why: FAILED for good.
    d1.sim.seed_card(&refused.card_id, SeedCard::new("somebody-else", "prod-x")).unwrap();
    let group = format!("res-{}", Uuid::new_v4().simple());

    // Phase 1: ingest (and the relay) only, so an operator can cancel a queued registration.
    let ingest_env = WorkerEnv::new(&db, &topics, &keys, &group, None);
    let ingest = Worker::spawn(&ingest_env, "ingest");
    let mut phase1: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase1.clone()).collect();
    let dups: Vec<Outgoing> = phase1.iter().step_by(7).cloned().collect();
    phase1.extend(dups.iter().cloned());
    phase1.extend(poison(&keys, 3));
    publish(&topics, &phase1).await;
    wait_until("phase 1 applied", Duration::from_secs(120), || async {
        applied(&db.pool, &group).await == topics.published()
    })
    .await;
    let row = outbox::list(&db.pool, Some(OutboxStatus::Pending), Some(cancelled.card_id.as_str()), 1)
        .await
        .unwrap();
    operator::cancel(&db.pool, row[0].id).await.unwrap();
    publish(&topics, &cards.iter().flat_map(|c| c.phase2.clone()).collect::<Vec<_>>()).await;
    wait_until("phase 2 applied", Duration::from_secs(120), || async {
        applied(&db.pool, &group).await == topics.published()
    })
    .await;
    let log = ingest.log.clone();
    assert!(ingest.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));

    // Phase 2: dispatch registers the rest; the relay publishes what it concludes.
    let env = WorkerEnv::new(&db, &topics, &keys, &group, Some(d1.sim.base_url()));
    let worker = Worker::spawn(&env, "worker");
    wait_settled(&db, &group, topics.published()).await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));

    let mut want: Vec<Said> = cards[2..].iter().flat_map(expected).collect();
    want.push(said_(Some(&refused.card_id), "FAILED", Some("CARD_ALREADY_REGISTERED")));
    want.push(said_(Some(&cancelled.card_id), "CANCELLED", None));
    want.extend((0..3).map(|_| said_(None, "REJECTED", Some("UNKNOWN_FRAMING"))));
    // A refused message published twice is refused twice; an applied one is recognised.
    for d in &dups {
        let refused_copy = cards.iter().find(|c| {
            c.card_id.as_bytes() == d.key.as_slice() && matches!(c.plan, Plan::PanAsCardId | Plan::BadLuhn)
        });
        want.extend(refused_copy.map(expected).unwrap_or_default());
    }
    let (messages, raw) = read_back(&topics.results, want.len());
    let (got, _) = check_stream(&db, &messages).await;
    assert_eq!(count(got), count(want));
    for c in &cards {
        assert!(!raw.contains(&c.pan), "a PAN reached the results topic");
    }
    // Causes and correlation: an implicit result names its event; a D1 call's result its x-correlation-id.
    for m in &messages {
        let outcome = m.text("outcome").unwrap();
        if outcome.starts_with("REGISTERED_IMPLICIT") || outcome == "REGISTERED_EXPLICIT" {
            assert!(m.text("eventId").is_some(), "{m:?}");
        }
        if matches!(outcome.as_str(), "REGISTERED_EXPLICIT" | "FAILED" | "CANCELLED") {
            assert!(m.text("correlationId").is_some(), "{m:?}");
        }
        assert!(m.record["occurredAt"].as_i64().is_some_and(|t| t > 1_700_000_000_000), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_worker_loses_no_result_and_keeps_each_cards_results_in_order() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(3).await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let plan = |i: usize| match i % 5 {
        0 => Plan::CreatedOnly,
        1 => Plan::TokenizedOnly,
        2 => Plan::OrderedOnly,
        3 => Plan::BadLuhn,
        _ => Plan::ConsumerMismatch,
    };
    let cards = scripts(&keys, "kill", 600, plan);
    let group = format!("reskill-{}", Uuid::new_v4().simple());
    let mut env = WorkerEnv::new(&db, &topics, &keys, &group, Some(d1.sim.base_url()));
    // Short leases, so a killed relay's rows are published again soon; small batches, so the relay
    // is busy (claim, publish, mark) for most of the run and kills land in its steps.
    env.set("RESULTS_LEASE_SECS", "4");
    env.set("RESULTS_BATCH_MAX", "5");

    // The stream arrives in chunks while the worker is killed again and again.
    let phase1: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase1.clone()).collect();
    let chunks: Vec<&[Outgoing]> = phase1.chunks(phase1.len() / 5 + 1).collect();
    let phase2: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase2.clone()).collect();
    let mut phase2_sent = false;
    for n in 0..10 {
        if let Some(chunk) = chunks.get(n) {
            publish(&topics, chunk).await;
        }
        let worker = Worker::spawn(&env, &format!("w{n}"));
        // Kill at a random moment after start-up, preferably while the relay holds claimed rows
        // (between its claim and its mark: the window where a crash re-publishes).
        let pause = Duration::from_millis(rand::thread_rng().gen_range(1000..3500));
        let deadline = tokio::time::Instant::now() + pause;
        let earliest = tokio::time::Instant::now() + pause / 3;
        while tokio::time::Instant::now() < deadline {
            let now = tokio::time::Instant::now();
            if now >= earliest && relay_holds_rows(&db).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worker.kill9();
        let all_phase1 = n + 1 >= chunks.len();
        if all_phase1 && !phase2_sent && applied(&db.pool, &group).await == topics.published() {
            // The mismatching tokenizations only once their cards exist: a deterministic expectation.
            publish(&topics, &phase2).await;
            phase2_sent = true;
        }
    }
    let worker = Worker::spawn(&env, "last");
    if !phase2_sent {
        wait_until("phase 1 applied", Duration::from_secs(120), || async {
            applied(&db.pool, &group).await == topics.published()
        })
        .await;
        publish(&topics, &phase2).await;
    }
    wait_settled(&db, &group, topics.published()).await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));

    let want: Vec<Said> = cards.iter().flat_map(expected).collect();
    let (messages, _) = read_back(&topics.results, want.len());
    let (got, copies) = check_stream(&db, &messages).await;
    assert_eq!(count(got), count(want));
    let cards_with_two: HashSet<&str> =
        cards.iter().filter(|c| c.plan == Plan::ConsumerMismatch).map(|c| c.card_id.as_str()).collect();
    eprintln!(
        "{} messages, {} distinct results, {copies} re-published copies; {} cards with two results",
        messages.len(),
        messages.len() - copies,
        cards_with_two.len()
    );
}

fn new_result(
    card: Option<&str>,
    outcome: card_registrar::core::result::ResultOutcome,
) -> results::NewResult {
    results::NewResult {
        card_id: card.map(str::to_owned),
        consumer_id: card.map(|_| "consumer-1".to_owned()),
        outcome,
        error_code: None,
        reason: None,
        event_id: None,
        correlation_id: None,
    }
}

#[tokio::test]
async fn a_cards_next_result_is_claimable_only_once_the_previous_one_is_published_by_any_relay() {
    use card_registrar::core::result::ResultOutcome::{
        RegisteredExplicit, RegisteredImplicitOrder, Rejected,
    };
    let db = TestDb::new().await;
    let lease = Duration::from_secs(30);
    let mut tx = db.pool.begin().await.unwrap();
    let rows = [
        new_result(Some("card-a"), Rejected),
        new_result(Some("card-a"), RegisteredExplicit),
        new_result(Some("card-b"), RegisteredImplicitOrder),
        new_result(None, Rejected),
        new_result(None, Rejected),
    ];
    results::record(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
    let outcome_of = |claimed: &[results::PendingResult]| -> Vec<(Option<String>, String)> {
        claimed.iter().map(|r| (r.card_id.clone(), r.outcome.clone())).collect()
    };

    // Heads only: card-a's second result waits for its first; cardless results have no order.
    let r1 = results::claim(&db.pool, "relay-1", 10, lease, 0).await.unwrap();
    assert_eq!(
        outcome_of(&r1),
        vec![
            (Some("card-a".into()), "REJECTED".into()),
            (Some("card-b".into()), "REGISTERED_IMPLICIT_ORDER".into()),
            (None, "REJECTED".into()),
            (None, "REJECTED".into()),
        ]
    );
    // Another relay gets nothing: every head is leased, and card-a's second is not a head.
    assert!(results::claim(&db.pool, "relay-2", 10, lease, 0).await.unwrap().is_empty());

    // Relay 1 gives card-a's first back unpublished: relay 2 may take it, still not the second.
    results::release(&db.pool, "relay-1", &[r1[0].seq], Duration::ZERO).await.unwrap();
    let r2 = results::claim(&db.pool, "relay-2", 10, lease, 0).await.unwrap();
    assert_eq!(outcome_of(&r2), vec![(Some("card-a".into()), "REJECTED".into())]);

    // Acknowledged and marked (by whichever relay heard the ack): now the second is the head.
    assert_eq!(results::mark_published(&db.pool, &[r2[0].seq]).await.unwrap(), 1);
    assert_eq!(results::mark_published(&db.pool, &[r2[0].seq]).await.unwrap(), 0, "marked once");
    let next = results::claim(&db.pool, "relay-1", 10, lease, 0).await.unwrap();
    assert_eq!(outcome_of(&next), vec![(Some("card-a".into()), "REGISTERED_EXPLICIT".into())]);
    assert_eq!(
        next[0].result_id,
        sqlx::query_scalar::<_, Uuid>("SELECT result_id FROM registration_results WHERE seq = $1")
            .bind(next[0].seq)
            .fetch_one(&db.pool)
            .await
            .unwrap()
    );

    // A lease that ran out (a relay that died) makes the row claimable again, same resultId.
    let short = results::claim(&db.pool, "relay-3", 10, Duration::ZERO, 0).await.unwrap();
    assert!(short.is_empty(), "everything is leased for 30 s");
    results::release(&db.pool, "relay-1", &[next[0].seq], Duration::ZERO).await.unwrap();
    let again = results::claim(&db.pool, "relay-3", 10, Duration::ZERO, 0).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].result_id, next[0].result_id);
    let after_expiry = results::claim(&db.pool, "relay-4", 10, lease, 0).await.unwrap();
    assert_eq!(after_expiry.iter().map(|r| r.result_id).collect::<Vec<_>>(), vec![next[0].result_id]);

    let backlog = results::backlog(&db.pool).await.unwrap();
    assert_eq!(backlog.pending, 4);
}

/// A claim fetches about one row per row it hands out, however many results wait and
/// whatever PostgreSQL's statistics say: gathered while everything was published (the usual state),
/// they put the queue at one row, and the planner then checked each head against the whole queue
/// (a relay behind by 30,000 results took 3 s a claim of 500: it fell further behind).
#[tokio::test]
async fn a_claim_reads_the_queue_once_however_stale_the_statistics() {
    let db = TestDb::new().await;
    const PUBLISHED: i64 = 5_000;
    const WAITING: i64 = 5_000;
    sqlx::raw_sql(&format!(
        "INSERT INTO registration_results (result_id, card_id, outcome, published_at)
           SELECT gen_random_uuid(), 'p' || i, 'REGISTERED_EXPLICIT', now() FROM generate_series(1, {PUBLISHED}) i;
         ANALYZE registration_results;
         INSERT INTO registration_results (result_id, card_id, outcome)
           SELECT gen_random_uuid(), 'w' || i, 'REGISTERED_EXPLICIT' FROM generate_series(1, {WAITING}) i;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // Counted before and after, in one transaction: PostgreSQL may fold earlier counts into these.
    const READ: &str = "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables
                        WHERE schemaname = current_schema() AND relname = 'registration_results'";
    let mut tx = db.pool.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar(READ).fetch_one(&mut *tx).await.unwrap();
    let claimed = results::claim(&mut *tx, "relay-1", 100, Duration::from_secs(30), 0).await.unwrap();
    let after: i64 = sqlx::query_scalar(READ).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(claimed.len(), 100);
    assert!(claimed.iter().all(|r| r.card_id.as_deref().is_some_and(|c| c.starts_with('w'))));
    let read = after - before;
    assert!(read < 10 * 100, "a claim of 100 fetched {read} rows by index ({WAITING} results waiting)");
}

/// A claim from the relay's floor does not read the published results below it. Publishing a row
/// leaves its entry in the queue's index until VACUUM, and a claim from the start of the queue read
/// every one of them: a relay working through a 1,000,000-card backlog read about 4,000 buffers a
/// claim of 100, its biggest cost in PostgreSQL.
#[tokio::test]
async fn a_claim_from_the_floor_does_not_read_the_published_results_below_it() {
    let db = TestDb::new().await;
    const PUBLISHED: i64 = 50_000;
    sqlx::raw_sql(&format!(
        "ALTER TABLE registration_results SET (autovacuum_enabled = off);
         INSERT INTO registration_results (result_id, card_id, outcome)
           SELECT gen_random_uuid(), 'p' || i, 'REGISTERED_EXPLICIT' FROM generate_series(1, {PUBLISHED}) i;
         UPDATE registration_results SET published_at = now();
         INSERT INTO registration_results (result_id, card_id, outcome)
           SELECT gen_random_uuid(), 'w' || i, 'REGISTERED_EXPLICIT' FROM generate_series(1, 30) i;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // Blocks of the queue's index read in this transaction so far (its own counts, not yet flushed).
    const BLOCKS: &str = "SELECT pg_stat_get_xact_blocks_fetched('registration_results_pending'::regclass)";
    let mut tx = db.pool.begin().await.unwrap();
    let lease = Duration::from_secs(30);
    let start: i64 = sqlx::query_scalar(BLOCKS).fetch_one(&mut *tx).await.unwrap();
    let first = results::claim(&mut *tx, "relay-1", 10, lease, 0).await.unwrap();
    let after_first: i64 = sqlx::query_scalar(BLOCKS).fetch_one(&mut *tx).await.unwrap();
    let floor = first.iter().map(|r| r.seq).min().unwrap();
    let second = results::claim(&mut *tx, "relay-1", 10, lease, floor).await.unwrap();
    let after_second: i64 = sqlx::query_scalar(BLOCKS).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((first.len(), second.len()), (10, 10));
    assert!(first.iter().chain(&second).all(|r| r.card_id.as_deref().is_some_and(|c| c.starts_with('w'))));
    let (from_start, from_floor) = (after_first - start, after_second - after_first);
    // From the start the scan reads every leaf page holding the 50,000 published entries: 296
    // blocks alone, where this scan marks them dead and so reads each page twice; 159 once in the
    // full test run, where other tests' open snapshots can keep them from being marked. Each
    // claim's UPDATE also writes its 10 rows' new (leased) versions into the index: about 20.
    assert!(
        from_start > 100,
        "the claim from the start read {from_start} blocks: the published entries are gone"
    );
    assert!(from_floor < 40, "the claim from the floor read {from_floor} blocks of the queue's index");
}

/// A result whose transaction commits after later results were published sits below the relay's
/// floor (its `seq` was taken at insert): claims from the floor pass it by, and the next claim of
/// the whole queue (at least once a period; here a second relay's first) publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_committed_below_the_relays_floor_waits_for_a_claim_of_the_whole_queue() {
    use card_registrar::avro::encode::Framing::SingleObject;
    use card_registrar::core::result::ResultOutcome::RegisteredExplicit;
    let (db, topics) = (TestDb::new().await, TestTopics::new(1).await);
    let hour = Duration::from_secs(3600);
    let relay = relay_of(&db, &topics.results, SingleObject, 1, hour);
    let mut late = db.pool.begin().await.unwrap();
    results::record(&mut late, &[new_result(Some("card-late"), RegisteredExplicit)]).await.unwrap();
    record_one(&db, new_result(Some("card-a"), RegisteredExplicit)).await;
    record_one(&db, new_result(Some("card-b"), RegisteredExplicit)).await;
    let published = || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT card_id FROM registration_results WHERE published_at IS NOT NULL ORDER BY card_id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(relay.step().await.unwrap().published, 1, "card-a, from the whole queue");
    late.commit().await.unwrap();
    assert_eq!(relay.step().await.unwrap().published, 1, "card-b, from the floor");
    assert_eq!(relay.step().await.unwrap().claimed, 0, "nothing more from the floor");
    assert_eq!(published().await, ["card-a", "card-b"], "card-late is below the floor");
    let other = relay_of(&db, &topics.results, SingleObject, 1, hour);
    assert_eq!(other.step().await.unwrap().published, 1, "the whole queue");
    assert_eq!(published().await, ["card-a", "card-b", "card-late"]);
}

fn relay(db: &TestDb, topic: &str, framing: card_registrar::avro::encode::Framing) -> Relay {
    relay_of(db, topic, framing, 10, Duration::ZERO)
}

fn relay_of(
    db: &TestDb,
    topic: &str,
    framing: card_registrar::avro::encode::Framing,
    batch: usize,
    whole_queue_every: Duration,
) -> Relay {
    Relay::new(
        db.pool.clone(),
        RelayOptions {
            brokers: brokers(),
            topic: topic.to_owned(),
            security: card_registrar::kafka::KafkaSecurity::default(),
            framing,
            owner: format!("relay-{}", Uuid::new_v4().simple()),
            batch,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            retry_delay: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
            whole_queue_every,
        },
    )
    .unwrap()
}

async fn record_one(db: &TestDb, result: results::NewResult) {
    let mut tx = db.pool.begin().await.unwrap();
    results::record(&mut tx, &[result]).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_mark_was_lost_is_published_again_with_its_result_id_in_either_framing() {
    use card_registrar::avro::encode::Framing;
    use card_registrar::core::result::ResultOutcome::{Failed, RegisteredExplicit, RegisteredImplicitOrder};
    let (db, topics) = (TestDb::new().await, TestTopics::new(3).await);
    let single = relay(&db, &topics.results, Framing::SingleObject);
    let confluent = relay(&db, &topics.results, Framing::Confluent { schema_id: 7 });
    let event = Uuid::new_v4();
    let failed = results::NewResult {
        error_code: Some("CARD_ALREADY_REGISTERED".into()),
        reason: Some("D1 has this cardId registered to another consumer".into()),
        event_id: Some(event),
        correlation_id: Some("corr-1".into()),
        ..new_result(Some("card-a"), Failed)
    };
    record_one(&db, failed).await;
    assert_eq!(single.step().await.unwrap().published, 1);
    // The relay crashed after the broker's ack and before its mark committed: the row is still
    // unpublished (its lease ended), and the card's next result waits behind it.
    sqlx::query("UPDATE registration_results SET published_at = NULL, lease_expires_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    record_one(&db, new_result(Some("card-a"), RegisteredExplicit)).await;
    record_one(&db, new_result(Some("card-b"), RegisteredImplicitOrder)).await;
    let report = confluent.step().await.unwrap();
    assert_eq!((report.claimed, report.published), (2, 2), "card-a's first again, and card-b");
    assert_eq!(single.step().await.unwrap().published, 1, "then card-a's second");
    assert_eq!(single.step().await.unwrap().claimed, 0);

    let schemas = repo().join("schemas");
    let out = java(
        &[
            "consume-results",
            &brokers(),
            &topics.results,
            "3",
            &schemas.display().to_string(),
            "7=card-registration-result/v1.avsc",
        ],
        "",
    );
    let messages: Vec<ReadBack> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(messages.len(), 4, "{out}");
    let (said, copies) = check_stream(&db, &messages).await;
    assert_eq!(copies, 1);
    assert_eq!(
        count(said),
        count([
            said_(Some("card-a"), "FAILED", Some("CARD_ALREADY_REGISTERED")),
            said_(Some("card-a"), "REGISTERED_EXPLICIT", None),
            said_(Some("card-b"), "REGISTERED_IMPLICIT_ORDER", None),
        ])
    );
    // Field for field, as the reference decoder reads what we wrote.
    let first = &messages.iter().find(|m| m.text("outcome").as_deref() == Some("FAILED")).unwrap().record;
    assert_eq!(first["consumerId"], "consumer-1");
    assert_eq!(first["reason"], "D1 has this cardId registered to another consumer");
    assert_eq!(first["eventId"], event.to_string());
    assert_eq!(first["correlationId"], "corr-1");
}
