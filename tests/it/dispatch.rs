//! Dispatch against the D1 simulator and real PostgreSQL: sends, reconciles, retries, parks,
//! and never sends twice.

use std::sync::Arc;
use std::time::Duration;

use card_registrar::core::record::{CardState, RegistrationSource};
use card_registrar::crypto::{AssertionKey, CardDataKeys, D1EncryptionKey};
use card_registrar::d1::{D1Client, D1ClientConfig};
use card_registrar::dispatch::attempt::Deps;
use card_registrar::dispatch::limiter::Limiter;
use card_registrar::dispatch::policy::RetryPolicy;
use card_registrar::dispatch::{DispatchOptions, Dispatcher, StepOutcome, operator};
use card_registrar::ingest::apply::apply_batch;
use card_registrar::ingest::message::{Batch, Incoming, Prepared, RawMessage};
use card_registrar::store::{cards, outbox};
use card_registrar::workload::Plan;
use chrono::Utc;
use d1_simulator::{Faults, RunningSimulator, SeedCard, SimConfig, Simulator};

use crate::helpers::*;
use crate::ingest::scripts;
use card_registrar::store::outbox::OutboxStatus;

/// The simulator and the keys both sides use.
pub struct TestD1 {
    pub sim: RunningSimulator,
}

impl TestD1 {
    pub async fn start(keys: &TestKeys) -> Self {
        Self::start_with(keys, |_| {}).await
    }

    pub async fn start_with(keys: &TestKeys, adjust: impl FnOnce(&mut SimConfig)) -> Self {
        let mut config = SimConfig::from_key_files(&keys.files).unwrap();
        adjust(&mut config);
        Self { sim: Simulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap() }
    }

    pub fn client(&self, keys: &TestKeys, timeout: Duration) -> D1Client {
        self.client_encrypting_for(keys, &keys.files.d1_encryption_public_jwk, timeout)
    }

    /// A client whose D1 encryption key is read from `d1_key` (another key makes D1 refuse).
    pub fn client_encrypting_for(
        &self,
        keys: &TestKeys,
        d1_key: &std::path::Path,
        timeout: Duration,
    ) -> D1Client {
        let f = &keys.files;
        D1Client::new(D1ClientConfig {
            base_url: self.sim.base_url().parse().unwrap(),
            issuer_id: card_registrar::core::ids::IssuerId::parse(f.issuer_id.as_str()).unwrap(),
            auth_key: AssertionKey::from_file(&f.issuer_auth_private_pem, f.issuer_auth_kid.clone()).unwrap(),
            encryption_key: D1EncryptionKey::from_file(d1_key).unwrap(),
            client_identity: None,
            ca_cert: None,
            timeout,
            audience: None,
        })
        .unwrap()
    }
}

/// A monotonic clock moved by hand (the dispatcher's deadlines and breaker read it).
pub struct ManualClock(std::sync::Mutex<tokio::time::Instant>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(std::sync::Mutex::new(tokio::time::Instant::now()))
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl card_registrar::d1::Clock for ManualClock {
    fn now(&self) -> tokio::time::Instant {
        *self.0.lock().unwrap()
    }
}

pub fn dispatcher(db: &TestDb, d1: &TestD1, keys: &TestKeys, client: Option<D1Client>) -> Dispatcher {
    dispatcher_leasing(db, d1, keys, client, Duration::from_secs(30))
}

/// [`dispatcher`] with a lease of `lease` (at least 2.6 s: margin + token fetch + PUT).
pub fn dispatcher_leasing(
    db: &TestDb,
    d1: &TestD1,
    keys: &TestKeys,
    client: Option<D1Client>,
    lease: Duration,
) -> Dispatcher {
    dispatcher_with(db, d1, keys, client, lease, Limiter::new(32, 10_000), Duration::from_millis(50))
}

/// [`dispatcher_leasing`] with its own limiter and poll interval.
fn dispatcher_with(
    db: &TestDb,
    d1: &TestD1,
    keys: &TestKeys,
    client: Option<D1Client>,
    lease: Duration,
    limiter: Limiter,
    poll_interval: Duration,
) -> Dispatcher {
    let timeout = Duration::from_millis(800);
    let deps = Deps {
        pool: db.pool.clone(),
        client: client.unwrap_or_else(|| d1.client(keys, timeout)),
        keys: Arc::new(CardDataKeys::from_file(&keys.files.card_data_private_jwks).unwrap()),
        limiter,
        policy: RetryPolicy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            reconcile_delay: Duration::from_millis(50),
            ..Default::default()
        },
        clock: Arc::new(card_registrar::d1::SystemClock),
    };
    Dispatcher::new(
        deps,
        DispatchOptions {
            owner: "test-worker".into(),
            claim_batch: 32,
            lease,
            margin: Duration::from_secs(1),
            poll_interval,
            breaker_threshold: 1000,
            breaker_cool_down: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
        },
    )
}

/// Applies card scripts' messages straight through the ingest transaction (no Kafka needed here).
pub async fn ingest_directly(db: &TestDb, keys: &TestKeys, messages: &[card_registrar::workload::Outgoing]) {
    let pipeline = keys.pipeline();
    for (i, m) in messages.iter().enumerate() {
        let raw = RawMessage { key: Some(m.key.clone()), headers: vec![], payload: Some(m.payload.clone()) };
        let incoming = [Incoming { offset: i as i64, raw }];
        let prepared: Vec<Prepared> = pipeline.prepare(m.kind, &incoming).await.unwrap();
        let topic = format!("direct-{:?}", m.kind);
        let stored = card_registrar::store::offsets::load(&db.pool, "direct", &topic).await.unwrap();
        let batch = Batch {
            group: "direct",
            topic: &topic,
            partition: 0,
            from: stored.get(&0).copied(),
            messages: prepared,
        };
        apply_batch(&db.pool, pipeline.sealer(), &batch, Utc::now()).await.unwrap();
    }
}

async fn drain(d: &Dispatcher) {
    for _ in 0..200 {
        if d.step().await.unwrap() == StepOutcome::Idle {
            let g = outbox::gauges(&d.deps().pool).await.unwrap();
            if g.pending == 0 && g.in_flight == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("outbox did not drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_card_is_registered_once_and_becomes_registered_explicitly() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let cards = scripts(&keys, "one", 3, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let d = dispatcher(&db, &d1, &keys, None);
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(3));
    assert_eq!(d.step().await.unwrap(), StepOutcome::Idle);
    let stats = d1.sim.stats();
    assert_eq!((stats.effective_registrations, stats.duplicate_puts, stats.puts_total), (3, 0, 3));
    for c in &cards {
        let (r, _) = cards::get(&db.pool, &c.card_id).await.unwrap().unwrap();
        assert_eq!((r.state, r.source), (CardState::Registered, Some(RegistrationSource::Explicit)));
        let stored = d1.sim.card(&c.card_id).unwrap();
        assert_eq!(stored.consumer_id, c.consumer_id);
        assert_eq!(stored.last_four_digits.as_deref(), Some(&c.pan[c.pan.len() - 4..]));
    }
    assert!(outbox::list(&db.pool, Some(OutboxStatus::Done), None, 10).await.unwrap().len() == 3);
}

/// Ingest keeps each JWE's content key sealed in the row (`cardKey`), so dispatch opens the card
/// data without a key agreement; a row queued before that (no `cardKey`) and a row whose sealed key
/// was altered at rest (another row's) still send their own card, by key agreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_sealed_card_keys_without_one_or_with_another_rows_register_their_own_card() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let cards = scripts(&keys, "sealed", 3, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let sealed: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT card_id, payload->>'cardKey' FROM outbox ORDER BY card_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(sealed.len(), 3);
    for (card_id, key) in &sealed {
        let key = key.as_deref().unwrap_or_default();
        assert!(key.starts_with("v1.") && key.len() == 83, "{card_id}: {key:?}");
    }
    // The first row as a row queued before sealed keys; the second carrying the third's key.
    sqlx::query("UPDATE outbox SET payload = payload - 'cardKey' WHERE card_id = $1")
        .bind(&sealed[0].0)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox SET payload = jsonb_set(payload, '{cardKey}', to_jsonb($2::text)) WHERE card_id = $1",
    )
    .bind(&sealed[1].0)
    .bind(&sealed[2].1)
    .execute(&db.pool)
    .await
    .unwrap();
    let d = dispatcher(&db, &d1, &keys, None);
    drain(&d).await;
    let stats = d1.sim.stats();
    assert_eq!((stats.effective_registrations, stats.duplicate_puts, stats.puts_total), (3, 0, 3));
    for c in &cards {
        let stored = d1.sim.card(&c.card_id).unwrap();
        assert_eq!(stored.last_four_digits.as_deref(), Some(&c.pan[c.pan.len() - 4..]), "{}", c.card_id);
    }
}

/// A call's slot is free once D1 has answered, and the loop uses it at once: with one slot, a
/// second card is sent while the first card's settle still waits for its card's lock (held here by
/// another transaction), long before the poll would look again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_slot_serves_the_next_row_while_the_previous_rows_settle_waits() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let cards = scripts(&keys, "slot", 2, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let first: String = sqlx::query_scalar("SELECT card_id FROM outbox ORDER BY next_attempt_at, id LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let second = cards.iter().map(|c| c.card_id.clone()).find(|c| *c != first).unwrap();
    let mut blocker = db.pool.begin().await.unwrap();
    card_registrar::store::locks::lock_cards(&mut blocker, &[first.as_str()]).await.unwrap();

    let d = Arc::new(dispatcher_with(
        &db,
        &d1,
        &keys,
        None,
        Duration::from_secs(30),
        Limiter::new(1, 10_000),
        Duration::from_secs(60),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(d.clone().run(stop.clone()));
    wait_until("the second card at D1", Duration::from_secs(15), || async { d1.sim.card(&second).is_some() })
        .await;
    assert!(d1.sim.card(&first).is_some(), "the first card was sent before");
    let status = |card: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM outbox WHERE card_id = $1")
                .bind(card)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(status(first.clone()).await, "IN_FLIGHT", "its settle still waits for the card's lock");
    blocker.rollback().await.unwrap();
    wait_until("both rows settled", Duration::from_secs(15), || async {
        status(first.clone()).await == "DONE" && status(second.clone()).await == "DONE"
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    let stats = d1.sim.stats();
    assert_eq!((stats.effective_registrations, stats.duplicate_puts, stats.puts_total), (2, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_then_timeout_is_reconciled_with_get_card_and_never_sent_twice() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    d1.sim
        .set_faults(Faults { commit_then_timeout_rate: 1.0, commit_timeout_delay_ms: 3000, ..Faults::none() })
        .unwrap();
    let cards = scripts(&keys, "amb", 5, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let d = dispatcher(&db, &d1, &keys, None);
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(5));
    let rows = outbox::list(&db.pool, Some(OutboxStatus::Pending), None, 10).await.unwrap();
    assert_eq!(rows.len(), 5, "all timed out and wait for a retry");
    assert!(rows.iter().all(|r| r.needs_reconcile), "an ambiguous outcome must be reconciled first");
    d1.sim.set_faults(Faults::none()).unwrap();
    drain(&d).await;
    let stats = d1.sim.stats();
    assert_eq!((stats.effective_registrations, stats.duplicate_puts, stats.puts_total), (5, 0, 5));
    assert!(stats.gets_total >= 5);
    for c in &cards {
        assert_eq!(cards::get(&db.pool, &c.card_id).await.unwrap().unwrap().0.state, CardState::Registered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_error_parks_the_row_and_fails_the_card_until_an_operator_retries_it() {
    let (db, keys, other_keys) = (TestDb::new().await, TestKeys::new(), TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let cards = scripts(&keys, "term", 1, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards[0].phase1).await;
    // Misconfigured: D1's encryption key is another one, so D1 refuses the request (400).
    let wrong =
        d1.client_encrypting_for(&keys, &other_keys.files.d1_encryption_public_jwk, Duration::from_secs(2));
    let broken = dispatcher(&db, &d1, &keys, Some(wrong));
    assert_eq!(broken.step().await.unwrap(), StepOutcome::Attempted(1));
    let parked = outbox::list(&db.pool, Some(OutboxStatus::Parked), None, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].last_error.as_deref().unwrap_or_default().contains("400"),
        "{:?}",
        parked[0].last_error
    );
    let (r, _) = cards::get(&db.pool, &cards[0].card_id).await.unwrap().unwrap();
    assert_eq!(r.state, CardState::Failed);
    assert!(r.failure.is_some());
    assert_eq!(broken.step().await.unwrap(), StepOutcome::Idle, "a parked row is not retried by itself");

    // The cause is fixed (right key); the operator retries the row.
    operator::retry(&db.pool, parked[0].id).await.unwrap();
    assert_eq!(cards::get(&db.pool, &cards[0].card_id).await.unwrap().unwrap().0.state, CardState::Pending);
    let fixed = dispatcher(&db, &d1, &keys, None);
    drain(&fixed).await;
    let (r, _) = cards::get(&db.pool, &cards[0].card_id).await.unwrap().unwrap();
    assert_eq!(r.state, CardState::Registered);
    assert_eq!(d1.sim.stats().effective_registrations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_registered_to_another_consumer_at_d1_is_a_terminal_conflict() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    // D1 refuses a PUT for a card it already has (one of the two possible answers).
    let d1 =
        TestD1::start_with(&keys, |c| c.duplicate_answer = "409:CARD_ALREADY_REGISTERED".parse().unwrap())
            .await;
    let cards = scripts(&keys, "conf", 1, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards[0].phase1).await;
    d1.sim.seed_card(&cards[0].card_id, SeedCard::new("somebody-else", "prod-x")).unwrap();
    let d = dispatcher(&db, &d1, &keys, None);
    d.step().await.unwrap();
    let (r, _) = cards::get(&db.pool, &cards[0].card_id).await.unwrap().unwrap();
    assert_eq!(r.state, CardState::Failed);
    assert!(r.failure.unwrap().contains("another consumer"));
    assert_eq!(outbox::list(&db.pool, Some(OutboxStatus::Parked), None, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_answer_to_a_put_for_a_card_d1_already_has_for_us_counts_as_success() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 =
        TestD1::start_with(&keys, |c| c.duplicate_answer = "409:CARD_ALREADY_REGISTERED".parse().unwrap())
            .await;
    let cards = scripts(&keys, "dup", 1, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards[0].phase1).await;
    d1.sim
        .seed_card(&cards[0].card_id, SeedCard::new(cards[0].consumer_id.as_str(), "prod-classic"))
        .unwrap();
    let d = dispatcher(&db, &d1, &keys, None);
    d.step().await.unwrap();
    assert_eq!(
        cards::get(&db.pool, &cards[0].card_id).await.unwrap().unwrap().0.state,
        CardState::Registered
    );
    assert_eq!(d1.sim.stats().gets_total, 1, "the 409 was confirmed with Get Card");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_cancelled_by_an_implicit_registration_is_never_sent() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let cards = scripts(&keys, "canc", 4, |_| Plan::CreatedThenTokenized);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let d = dispatcher(&db, &d1, &keys, None);
    assert_eq!(d.step().await.unwrap(), StepOutcome::Idle);
    assert_eq!(d1.sim.stats().puts_total, 0);
    assert_eq!(outbox::list(&db.pool, Some(OutboxStatus::Cancelled), None, 10).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_lease_expired_is_reconciled_before_it_is_sent_again() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let cards = scripts(&keys, "lease", 1, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards[0].phase1).await;
    // A worker claims the row, sends the PUT, and "crashes" before settling.
    let (lease, reconcile_delay) = (Duration::from_millis(200), Duration::from_millis(50));
    let claimed = outbox::claim(&db.pool, "crashed-worker", 10, lease, reconcile_delay).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let crashed = dispatcher(&db, &d1, &keys, None);
    let request: card_registrar::core::decide::RegistrationRequest =
        serde_json::from_value(claimed[0].payload.clone()).unwrap();
    let card = crashed.deps().keys.decrypt(&request.encrypted_card).unwrap();
    let put = card_registrar::d1::RegisterCard {
        card_id: &request.card_id,
        consumer_id: &request.consumer_id,
        card_product_id: &request.card_product_id,
        card: &card,
        state: request.state,
    };
    crashed
        .deps()
        .client
        .register_card(&put, &card_registrar::core::ids::CorrelationId::for_outbox_row(claimed[0].id))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = dispatcher(&db, &d1, &keys, None);
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(1));
    let stats = d1.sim.stats();
    assert_eq!((stats.puts_total, stats.duplicate_puts, stats.gets_total), (1, 0, 1));
    assert_eq!(
        cards::get(&db.pool, &cards[0].card_id).await.unwrap().unwrap().0.state,
        CardState::Registered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_until_d1_accepts() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let mut faults = Faults::none();
    faults.error_rates.insert(503, 0.3);
    faults.error_rates.insert(429, 0.1);
    faults.retry_after_secs = 0;
    d1.sim.set_faults(faults).unwrap();
    let cards = scripts(&keys, "retry", 40, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let d = dispatcher(&db, &d1, &keys, None);
    drain(&d).await;
    let stats = d1.sim.stats();
    assert_eq!((stats.effective_registrations, stats.duplicate_puts), (40, 0));
    assert!(stats.puts_total > 40, "some attempts were refused and retried");
    assert!(outbox::list(&db.pool, Some(OutboxStatus::Parked), None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_k_failures_then_lets_one_probe_through_and_closes_on_success() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let mut down = Faults::none();
    down.error_rates.insert(503, 1.0);
    d1.sim.set_faults(down).unwrap();
    let cards = scripts(&keys, "brk", 5, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let cool_down = Duration::from_millis(300);
    // The breaker reads the injected clock: the test moves it instead of sleeping.
    let clock = Arc::new(ManualClock::default());
    let d = Dispatcher::new(
        Deps {
            pool: db.pool.clone(),
            client: d1.client(&keys, Duration::from_millis(800)),
            keys: Arc::new(CardDataKeys::from_file(&keys.files.card_data_private_jwks).unwrap()),
            limiter: Limiter::new(32, 10_000),
            policy: RetryPolicy {
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                reconcile_delay: Duration::from_millis(2),
                ..Default::default()
            },
            clock: clock.clone(),
        },
        DispatchOptions {
            owner: "breaker-test".into(),
            claim_batch: 32,
            lease: Duration::from_secs(30),
            margin: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            breaker_threshold: 3,
            breaker_cool_down: cool_down,
            drain_timeout: Duration::from_secs(5),
        },
    );
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(5));
    let after_first = d1.sim.stats().puts_total + d1.sim.stats().gets_total;
    assert_eq!(d.step().await.unwrap(), StepOutcome::Paused, "5 consecutive failures opened it");
    assert_eq!(d1.sim.stats().puts_total + d1.sim.stats().gets_total, after_first, "nothing sent while open");
    clock.advance(cool_down + Duration::from_millis(50));
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(1), "one probe after the cool-down");
    assert_eq!(d.step().await.unwrap(), StepOutcome::Paused, "the failed probe reopened it");
    d1.sim.set_faults(Faults::none()).unwrap();
    clock.advance(cool_down + Duration::from_millis(50));
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(1), "the probe succeeds");
    drain(&d).await;
    assert_eq!((d1.sim.stats().effective_registrations, d1.sim.stats().duplicate_puts), (5, 0));
}

#[tokio::test]
async fn retention_deletes_only_finished_rows_older_than_the_limit_in_bounded_batches() {
    use card_registrar::dispatch::maintenance::{Retention, purge_finished};
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let cards = scripts(&keys, "ret", 6, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    // Two old DONE, one old CANCELLED, one recent DONE, one old PARKED, one PENDING.
    let set = |status: &'static str, age_days: i32, card: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE outbox SET status = $1, finished_at = now() - make_interval(days => $2) WHERE card_id = $3")
                .bind(status)
                .bind(age_days)
                .bind(card)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    set("DONE", 8, cards[0].card_id.clone()).await;
    set("DONE", 9, cards[1].card_id.clone()).await;
    set("CANCELLED", 30, cards[2].card_id.clone()).await;
    set("DONE", 1, cards[3].card_id.clone()).await;
    set("PARKED", 30, cards[4].card_id.clone()).await;
    let retention =
        Retention { keep: Duration::from_secs(7 * 86_400), batch: 2, every: Duration::from_secs(60) };
    assert_eq!(purge_finished(&db.pool, &retention).await.unwrap(), 3);
    let left: Vec<OutboxStatus> =
        outbox::list(&db.pool, None, None, 10).await.unwrap().into_iter().map(|r| r.status).collect();
    assert_eq!(left.len(), 3);
    assert!(
        left.contains(&OutboxStatus::Parked)
            && left.contains(&OutboxStatus::Pending)
            && left.contains(&OutboxStatus::Done)
    );
}

/// `n` created cards queued through ingest and all claimed by worker `w` (30-s leases), in the
/// cards' order.
async fn created_and_claimed(
    db: &TestDb,
    keys: &TestKeys,
    prefix: &str,
    n: usize,
    reconcile_delay: Duration,
) -> (Vec<card_registrar::workload::CardScript>, Vec<outbox::ClaimedRow>) {
    let cards = scripts(keys, prefix, n, |_| Plan::CreatedOnly);
    ingest_directly(db, keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let mut claimed =
        outbox::claim(&db.pool, "w", 10, Duration::from_secs(30), reconcile_delay).await.unwrap();
    claimed.sort_by_key(|r| cards.iter().position(|c| c.card_id == r.card_id));
    assert_eq!(claimed.len(), n);
    (cards, claimed)
}

/// Attempts that finish a little apart settle together: the settler waits its gather window after
/// a batch's first row (at a moderate rate, settles of one or two rows were most of PostgreSQL's
/// time). One transaction shows as one `now()` in every row it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_answered_within_the_gather_window_settle_in_one_transaction() {
    use card_registrar::dispatch::fate::{Conclusion, plan};
    use card_registrar::dispatch::settle::Settler;
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let delay = Duration::from_secs(30);
    let (_, claimed) = created_and_claimed(&db, &keys, "gather", 3, delay).await;
    let settler = Arc::new(Settler::new(db.pool.clone(), delay).with_gather(Duration::from_secs(1)));
    let policy = RetryPolicy { reconcile_delay: delay, ..Default::default() };
    let mut settles = tokio::task::JoinSet::new();
    for row in claimed.clone() {
        let (settler, policy) = (settler.clone(), policy.clone());
        settles.spawn(async move {
            let plan = plan(Conclusion::Registered, &policy, 1, Duration::ZERO, &mut rand::thread_rng());
            settler.settle(&row, plan).await.unwrap()
        });
        // Each answer comes after the previous row was handed to the settler.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let labels: Vec<&str> = settles.join_all().await;
    assert_eq!(labels, ["done", "done", "done"]);
    let ends: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT DISTINCT status, updated_at FROM outbox").fetch_all(&db.pool).await.unwrap();
    assert_eq!(ends.len(), 1, "rows ended in more than one transaction: {ends:?}");
    assert_eq!(ends[0].0, "DONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_settle_batch_writes_each_rows_own_fate_and_skips_a_row_whose_lease_was_lost() {
    use card_registrar::core::result::ResultOutcome;
    use card_registrar::dispatch::fate::{Conclusion, plan};
    use card_registrar::dispatch::settle::{Claim, settle_batch};
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let delay = Duration::from_secs(30);
    let (cards, claimed) = created_and_claimed(&db, &keys, "batch", 4, delay).await;
    // The last row's lease ended and another worker claimed it: the fence moved on.
    sqlx::query("UPDATE outbox SET fence = fence + 1, lease_owner = 'other' WHERE id = $1")
        .bind(claimed[3].id)
        .execute(&db.pool)
        .await
        .unwrap();
    let policy = RetryPolicy { reconcile_delay: delay, ..Default::default() };
    let conclusions = [
        Conclusion::Registered,
        Conclusion::Failed {
            error: "D1 register failed (503)".into(),
            reconcile_next: false,
            retry_after: None,
        },
        Conclusion::GaveUp { reason: "D1 answered 400".into(), error_code: Some("INVALID_CARD".into()) },
        Conclusion::Registered,
    ];
    let mut rng = rand::thread_rng();
    let work = claimed
        .iter()
        .zip(conclusions)
        .map(|(row, c)| (Claim::from(row), plan(c, &policy, 1, Duration::ZERO, &mut rng)))
        .collect();
    let labels: Vec<&str> =
        settle_batch(&db.pool, delay, work).await.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(labels, ["done", "retry", "parked", "lease_lost"]);

    let row = |i: usize| {
        let (pool, id) = (db.pool.clone(), claimed[i].id);
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
                "SELECT status, lease_owner, last_error FROM outbox WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let state = |i: usize| {
        let (pool, card) = (db.pool.clone(), cards[i].card_id.clone());
        async move { cards::get(&pool, &card).await.unwrap().unwrap().0.state }
    };
    let results = |i: usize| {
        let (pool, card) = (db.pool.clone(), cards[i].card_id.clone());
        async move {
            card_registrar::store::results::for_card(&pool, &card)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.outcome, r.error_code, r.event_id.is_some()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(row(0).await, ("DONE".into(), None, None));
    assert_eq!(state(0).await, CardState::Registered);
    assert_eq!(results(0).await, [(ResultOutcome::RegisteredExplicit.as_str().into(), None, true)]);
    // The cause is the event that enqueued the call: the card's CardCreated.
    let created: uuid::Uuid =
        sqlx::query_scalar("SELECT event_id FROM card_events WHERE card_id = $1 AND kind = 'CREATED'")
            .bind(&cards[0].card_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let cause =
        card_registrar::store::results::for_card(&db.pool, &cards[0].card_id).await.unwrap()[0].event_id;
    assert_eq!(cause, Some(created));

    let (status, owner, error) = row(1).await;
    assert_eq!((status.as_str(), owner), ("PENDING", None));
    assert!(error.unwrap().contains("503"));
    assert_eq!(state(1).await, CardState::Pending);
    assert!(results(1).await.is_empty(), "a retry settles nothing");

    assert_eq!(row(2).await.0, "PARKED");
    assert_eq!(state(2).await, CardState::Failed);
    assert_eq!(
        results(2).await,
        [(ResultOutcome::Failed.as_str().into(), Some("INVALID_CARD".into()), true)]
    );

    // Untouched: it belongs to the other worker now.
    assert_eq!(row(3).await, ("IN_FLIGHT".into(), Some("other".into()), None));
    assert_eq!(state(3).await, CardState::Pending);
    assert!(results(3).await.is_empty());
}

/// A row whose card record is gone fails alone, with an error naming the row; the batch's other
/// rows commit, and the failed row keeps its lease (healed by it, as a failed settle's row).
#[tokio::test]
async fn a_settle_row_without_a_card_record_fails_alone_and_the_others_commit() {
    use card_registrar::dispatch::fate::{Conclusion, plan};
    use card_registrar::dispatch::settle::{Claim, SettleError, settle_batch};
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let cards = scripts(&keys, "gone", 2, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let delay = Duration::from_secs(30);
    let mut claimed = outbox::claim(&db.pool, "w", 10, Duration::from_secs(30), delay).await.unwrap();
    claimed.sort_by_key(|r| cards.iter().position(|c| c.card_id == r.card_id));
    assert_eq!(claimed.len(), 2);
    sqlx::query("DELETE FROM cards WHERE card_id = $1")
        .bind(&cards[0].card_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let policy = RetryPolicy { reconcile_delay: delay, ..Default::default() };
    let mut rng = rand::thread_rng();
    let work = claimed
        .iter()
        .map(|row| (Claim::from(row), plan(Conclusion::Registered, &policy, 1, Duration::ZERO, &mut rng)))
        .collect();
    let outcomes = settle_batch(&db.pool, delay, work).await;
    match &outcomes[0] {
        Err(SettleError::Row(e)) => {
            let text = e.to_string();
            assert!(
                text.contains(&claimed[0].id.to_string()) && text.contains("without a card record"),
                "{text}"
            );
        }
        other => panic!("expected the row's own error, got {other:?}"),
    }
    assert_eq!(outcomes[1].as_ref().unwrap(), &"done");
    let status = |id: uuid::Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM outbox WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(status(claimed[0].id).await, "IN_FLIGHT");
    assert_eq!(status(claimed[1].id).await, "DONE");
    assert_eq!(
        cards::get(&db.pool, &cards[1].card_id).await.unwrap().unwrap().0.state,
        CardState::Registered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_batches_whose_connection_is_killed_lose_nothing_the_rows_are_reclaimed_and_reconciled() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    let n = 6;
    let cards = scripts(&keys, "kill", n, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    let d = Arc::new(dispatcher_leasing(&db, &d1, &keys, None, Duration::from_secs(3)));

    // Every settle transaction waits for the cards' locks, held here; each waiting one's
    // connection is killed, as a database crash or a network cut would.
    let ids: Vec<&str> = cards.iter().map(|c| c.card_id.as_str()).collect();
    let mut blocker = db.pool.begin().await.unwrap();
    card_registrar::store::locks::lock_cards(&mut blocker, &ids).await.unwrap();
    let (blocker_pid,): (i32,) =
        sqlx::query_as("SELECT pg_backend_pid()").fetch_one(&mut *blocker).await.unwrap();
    let step = tokio::spawn({
        let d = d.clone();
        async move { d.step().await }
    });
    let mut killed = 0;
    while !step.is_finished() {
        let waiting: Vec<(i32,)> =
            sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
                .bind(blocker_pid)
                .fetch_all(&db.pool)
                .await
                .unwrap();
        for (pid,) in waiting {
            sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&db.pool).await.unwrap();
            killed += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(step.await.unwrap().unwrap(), StepOutcome::Attempted(n));
    blocker.rollback().await.unwrap();
    assert!(killed >= 1);
    let stats = d1.sim.stats();
    assert_eq!((stats.effective_registrations, stats.puts_total), (n as u64, n as u64), "every PUT was sent");
    let in_flight = outbox::list(&db.pool, Some(OutboxStatus::InFlight), None, 10).await.unwrap();
    assert_eq!(in_flight.len(), n, "no settle was written");
    for c in &cards {
        assert_eq!(cards::get(&db.pool, &c.card_id).await.unwrap().unwrap().0.state, CardState::Pending);
    }

    // The leases heal them: reclaimed once ended (+ the reconcile delay), D1 asked first.
    loop {
        let (ended,): (bool,) = sqlx::query_as(
            "SELECT bool_and(lease_expires_at + interval '60 milliseconds' <= now()) FROM outbox",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain(&d).await;
    let stats = d1.sim.stats();
    assert_eq!(
        (stats.effective_registrations, stats.puts_total, stats.duplicate_puts),
        (n as u64, n as u64, 0)
    );
    assert!(stats.gets_total >= n as u64, "each reclaimed row was reconciled: {stats:?}");
    assert_eq!(outbox::list(&db.pool, Some(OutboxStatus::Done), None, 10).await.unwrap().len(), n);
    for c in &cards {
        assert_eq!(cards::get(&db.pool, &c.card_id).await.unwrap().unwrap().0.state, CardState::Registered);
        let results = card_registrar::store::results::for_card(&db.pool, &c.card_id).await.unwrap();
        assert_eq!(results.len(), 1, "one result per card");
    }
}
