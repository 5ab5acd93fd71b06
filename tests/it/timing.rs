//! Exactly once toward D1 under adversarial timing (issue 12), counted at the simulator: a worker
//! frozen (SIGSTOP) in the middle of a PUT for longer than its lease while a second worker runs;
//! workers whose wall clocks are 30 s ahead and behind (libfaketime); the 401 refresh-and-resend
//! path near the lease end; the reclaim and operator-retry floors. Each ends with no duplicate
//! PUT, every card registered once and no row stuck.

use std::sync::Arc;
use std::time::Duration;

use card_registrar::crypto::CardDataKeys;
use card_registrar::d1::SystemClock;
use card_registrar::dispatch::attempt::Deps;
use card_registrar::dispatch::limiter::Limiter;
use card_registrar::dispatch::policy::RetryPolicy;
use card_registrar::dispatch::{DispatchOptions, Dispatcher, StepOutcome, operator};
use card_registrar::store::outbox::{self, Finish, OutboxStatus};
use card_registrar::store::settle;
use card_registrar::workload::{CardScript, Plan};
use d1_simulator::Faults;
use d1_simulator::faults::Latency;

use crate::dispatch::{TestD1, ingest_directly};
use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

/// The worker settings of `WorkerEnv` (D1_TIMEOUT_MS 1000, lease 4 s, margin 500 ms, reconcile
/// delay 1500 ms): D1 must settle a PUT within 1.5 s of its arrival.
const LEASE: Duration = Duration::from_secs(4);

async fn cards_ready(db: &TestDb, keys: &TestKeys, prefix: &str, n: usize) -> Vec<CardScript> {
    let cards = scripts(keys, prefix, n, |_| Plan::CreatedOnly);
    ingest_directly(db, keys, &cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;
    cards
}

/// Dispatch-only workers over `db` (the cards are already in the outbox).
async fn dispatch_env(db: &TestDb, keys: &TestKeys, d1: &TestD1) -> WorkerEnv {
    let topics = TestTopics::new(1).await;
    let group = format!("timing-{}", uuid::Uuid::new_v4().simple());
    let mut env = WorkerEnv::new(db, &topics, keys, &group, Some(d1.sim.base_url()));
    env.set("INGEST_ENABLED", "false");
    // Dispatch alone is under test: no Kafka client (the relay's producer and its start-up check
    // would run under libfaketime too). The relay reads no worker clock: its leases are PostgreSQL's.
    env.set("RESULTS_RELAY_ENABLED", "false");
    env
}

async fn settled(db: &TestDb) -> bool {
    let g = outbox::gauges(&db.pool).await.unwrap();
    g.pending == 0 && g.in_flight == 0
}

/// The end state every scenario must reach: each card stored at D1 by exactly one effective PUT,
/// no duplicate, every row DONE.
async fn assert_exactly_once(db: &TestDb, d1: &TestD1, cards: &[CardScript]) {
    let stats = d1.sim.stats();
    assert_eq!(stats.duplicate_puts, 0, "duplicate PUTs at D1: {stats:?}");
    assert_eq!(stats.effective_registrations as usize, cards.len(), "{stats:?}");
    for c in cards {
        assert!(d1.sim.card(&c.card_id).is_some(), "card never registered at D1");
    }
    let done = outbox::list(&db.pool, Some(OutboxStatus::Done), None, 10_000).await.unwrap();
    assert_eq!(done.len(), cards.len(), "rows not DONE: {:?}", outbox::list(&db.pool, None, None, 50).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_mid_put_longer_than_its_lease_never_causes_a_second_put() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    // Every PUT is held at D1 0.6-0.9 s before it commits: the window to freeze a worker mid-PUT.
    d1.sim
        .set_faults(Faults {
            late_commit_rate: 1.0,
            late_commit_ms: Latency { min_ms: 600, max_ms: 900 },
            ..Faults::none()
        })
        .unwrap();
    let cards = cards_ready(&db, &keys, "frozen", 30).await;
    let mut env = dispatch_env(&db, &keys, &d1).await;
    // One call in flight: when D1 has seen a's PUT, a is waiting for its answer (mid-PUT), not
    // between another row's deadline check and its send. A pause in that gap, longer than
    // DISPATCH_LEASE_MARGIN_MS, is the one case no client can fence (README, "Timing assumptions").
    env.set("D1_MAX_CONCURRENCY", "1");

    let a = Worker::spawn(&env, "a");
    a.wait_ready(Duration::from_secs(60)).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while d1.sim.stats().puts_total == 0 {
        assert!(tokio::time::Instant::now() < until, "worker a never sent; log:\n{}", tail(&a.log));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.freeze();
    let frozen_at = tokio::time::Instant::now();
    let in_flight_at_freeze = d1.sim.stats().puts_total;

    let b = Worker::spawn(&env, "b");
    b.wait_ready(Duration::from_secs(60)).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while !settled(&db).await {
        assert!(tokio::time::Instant::now() < until, "rows stuck; log of b:\n{}", tail(&b.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b could only take a's rows over once their lease ended plus the reconcile delay.
    assert!(frozen_at.elapsed() > LEASE, "a was frozen for longer than its lease");
    assert!(d1.sim.stats().gets_total >= 1, "b asked D1 about a's rows before sending");

    a.thaw();
    // a wakes up with answers and attempts it no longer owns: it must settle nothing and send nothing.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&a.log).unwrap_or_default().contains("another worker holds this row") {
        assert!(tokio::time::Instant::now() < until, "a never woke up; log:\n{}", tail(&a.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_exactly_once(&db, &d1, &cards).await;
    eprintln!(
        "frozen worker: {in_flight_at_freeze} PUT(s) at D1 when a froze for {:?}; {:?}",
        frozen_at.elapsed(),
        d1.sim.stats()
    );
    for w in [a, b] {
        let log = w.log.clone();
        assert!(w.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));
    }
}

/// libfaketime from Debian (`scripts/bootstrap` installs it), multithreaded variant.
fn libfaketime() -> String {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
        .expect("libfaketime is installed (scripts/bootstrap)")
}

/// Seconds between the worker's first log timestamp and the real time it was written (roughly).
fn log_clock_offset(log: &std::path::Path, real: chrono::DateTime<chrono::Utc>) -> i64 {
    let text = std::fs::read_to_string(log).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let stamp = first["timestamp"].as_str().unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
    (at.with_timezone(&chrono::Utc) - real).num_seconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_clocks_30_s_ahead_and_behind_never_send_twice() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    // Half the PUTs commit 1.05-1.4 s after arrival, after the client's 1 s timeout: each needs a
    // reconcile, which a clock 30 s behind would once have brought forward by 30 s.
    let mut faults = Faults {
        late_commit_rate: 0.5,
        late_commit_ms: Latency { min_ms: 1050, max_ms: 1400 },
        ..Faults::none()
    };
    faults.error_rates.insert(503, 0.1);
    d1.sim.set_faults(faults).unwrap();
    let cards = cards_ready(&db, &keys, "skew", 40).await;
    let mut env = dispatch_env(&db, &keys, &d1).await;
    env.set("LD_PRELOAD", &libfaketime());
    env.set("D1_MAX_CONCURRENCY", "4");
    let started = chrono::Utc::now();
    let mut workers = Vec::new();
    for (name, offset) in [("ahead", "+30s"), ("behind", "-30s")] {
        let mut skewed = env.clone();
        skewed.set("FAKETIME", offset);
        workers.push(Worker::spawn(&skewed, name));
    }
    for w in &workers {
        w.wait_ready(Duration::from_secs(60)).await;
    }
    let (ahead, behind) =
        (log_clock_offset(&workers[0].log, started), log_clock_offset(&workers[1].log, started));
    assert!(
        (25..=40).contains(&ahead) && (-35..=-25).contains(&behind),
        "clocks off by {ahead} s / {behind} s"
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(90);
    while !settled(&db).await {
        assert!(tokio::time::Instant::now() < until, "rows stuck; log:\n{}", tail(&workers[1].log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = d1.sim.stats();
    assert!(stats.faults_injected.late_commit > 0 && stats.gets_total > 0, "{stats:?}");
    assert_exactly_once(&db, &d1, &cards).await;
    eprintln!("skewed clocks ({ahead:+} s, {behind:+} s): {stats:?}");
    for w in workers {
        let log = w.log.clone();
        assert!(w.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));
    }
}

fn short_lease_dispatcher(db: &TestDb, d1: &TestD1, keys: &TestKeys, owner: &str) -> Dispatcher {
    let timeout = Duration::from_millis(2000);
    Dispatcher::new(
        Deps {
            pool: db.pool.clone(),
            client: d1.client(keys, timeout),
            keys: Arc::new(CardDataKeys::from_file(&keys.files.card_data_private_jwks).unwrap()),
            limiter: Limiter::new(8, 10_000),
            policy: RetryPolicy {
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
                reconcile_delay: Duration::from_millis(2000),
                ..Default::default()
            },
            clock: Arc::new(SystemClock),
        },
        DispatchOptions {
            owner: owner.into(),
            claim_batch: 8,
            lease: Duration::from_millis(3800),
            margin: Duration::from_millis(500),
            poll_interval: Duration::from_millis(50),
            breaker_threshold: 1000,
            breaker_cool_down: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_near_the_lease_end_gives_the_row_back_instead_of_resending_late() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let d1 = TestD1::start(&keys).await;
    // A 0.9 s token endpoint, and every card's first PUT refused with 401: the first attempt spends
    // 0.9 s on a token, gets the 401, spends 0.9 s more on a new token, and then has 1.5 s of its
    // 3.3 s deadline (3.8 s lease - 0.5 s margin) left, too little for a 2 s request.
    d1.sim
        .set_faults(Faults {
            token_latency: Some(Latency::fixed(900)),
            unauthorized_once: true,
            ..Faults::none()
        })
        .unwrap();
    let cards = cards_ready(&db, &keys, "late401", 5).await;
    let (first, second) =
        (short_lease_dispatcher(&db, &d1, &keys, "first"), short_lease_dispatcher(&db, &d1, &keys, "second"));
    assert_eq!(first.step().await.unwrap(), StepOutcome::Attempted(5));
    let rows = outbox::list(&db.pool, Some(OutboxStatus::Pending), None, 10).await.unwrap();
    assert_eq!(rows.len(), 5, "every row was given back unsent: {rows:?}");
    assert!(rows.iter().all(|r| r.last_error.is_none() && r.attempts == 1), "{rows:?}");
    let after_first = d1.sim.stats();
    assert_eq!(after_first.effective_registrations, 0);

    // Two dispatchers race for the rest; nothing may be sent twice.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while !settled(&db).await {
        assert!(tokio::time::Instant::now() < until, "rows stuck");
        let (a, b) = tokio::join!(first.step(), second.step());
        if a.unwrap() == StepOutcome::Idle && b.unwrap() == StepOutcome::Idle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stats = d1.sim.stats();
    assert!(stats.faults_injected.unauthorized_once >= 1, "{stats:?}");
    assert_exactly_once(&db, &d1, &cards).await;
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_only_after_the_reconcile_delay() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    cards_ready(&db, &keys, "reclaim", 1).await;
    let (lease, delay) = (Duration::from_millis(200), Duration::from_millis(1500));
    assert_eq!(outbox::claim(&db.pool, "crashed", 10, lease, delay).await.unwrap().len(), 1);
    // Measured by PostgreSQL: wait until the lease has ended, then check the delay still holds it.
    let ended = |extra: f64| {
        let pool = db.pool.clone();
        async move {
            let (yes,): (bool,) = sqlx::query_as(
                "SELECT bool_and(lease_expires_at + make_interval(secs => $1) <= now()) FROM outbox",
            )
            .bind(extra)
            .fetch_one(&pool)
            .await
            .unwrap();
            yes
        }
    };
    while !ended(0.0).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(outbox::claim(&db.pool, "next", 10, lease, delay).await.unwrap().is_empty(), "too early");
    while !ended(delay.as_secs_f64()).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = outbox::claim(&db.pool, "next", 10, lease, delay).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].needs_reconcile, "the new holder asks D1 first");
}

#[tokio::test]
async fn an_operator_retry_keeps_the_reconcile_floor() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    cards_ready(&db, &keys, "floor", 1).await;
    let delay = Duration::from_secs(30);
    let claimed = outbox::claim(&db.pool, "w", 1, Duration::from_secs(10), delay).await.unwrap();
    // The attempt timed out after sending and was parked: its PUT may still commit within 30 s.
    let mut tx = db.pool.begin().await.unwrap();
    let settling = settle::read(&mut tx, &[(claimed[0].id, claimed[0].fence)]).await.unwrap();
    assert!(settling.held.contains(&claimed[0].id));
    let parked = Finish::Parked { error: "D1 register failed (timeout)".into() };
    settle::write(&mut tx, &[], &[(claimed[0].id, &parked)], delay, &[]).await.unwrap();
    tx.commit().await.unwrap();
    operator::retry(&db.pool, claimed[0].id).await.unwrap();
    let (status, wait, reconcile): (String, f64, bool) = sqlx::query_as(
        "SELECT status, extract(epoch FROM next_attempt_at - now())::float8, needs_reconcile FROM outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, OutboxStatus::Pending.as_str());
    assert!(reconcile);
    assert!(wait > 29.0, "due in {wait} s, before the reconcile floor");
}
