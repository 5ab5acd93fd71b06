//! Exactly-once into PostgreSQL with real processes: a worker `kill -9`ed again and again while
//! the stream is produced, and two workers sharing (then handing over) the partitions, both end
//! with the very database a clean run produces.

use std::time::Duration;

use card_registrar::core::event::EventKind;
use card_registrar::workload::{Generator, Outgoing, Plan};
use rand::Rng;

use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

/// Plans whose outcome does not depend on how the three topics interleave.
fn order_independent_plan(i: usize) -> Plan {
    match i % 20 {
        0..=8 => Plan::CreatedOnly,
        9..=10 => Plan::DeclinedThenCreated,
        11..=15 => Plan::TokenizedOnly,
        16..=18 => Plan::OrderedOnly,
        _ if i % 40 == 19 => Plan::PanAsCardId,
        _ => Plan::BadLuhn,
    }
}

/// About `events` messages: card scripts, 10 % re-published duplicates, a few poison messages;
/// also how many duplicates will be recognised (those of applied events; a refused message
/// published twice is refused twice).
fn stream(keys: &TestKeys, prefix: &str, events: usize) -> (Vec<Outgoing>, usize) {
    let cards = scripts(keys, prefix, events * 10 / 12, order_independent_plan);
    let mut out: Vec<Outgoing> =
        cards.iter().flat_map(|c| c.phase1.iter().chain(&c.phase2).cloned()).collect();
    let dups: Vec<Outgoing> = out.iter().step_by(10).cloned().collect();
    let refused: std::collections::HashSet<&[u8]> = cards
        .iter()
        .filter(|c| matches!(c.plan, Plan::PanAsCardId | Plan::BadLuhn))
        .map(|c| c.card_id.as_bytes())
        .collect();
    let recognised = dups.iter().filter(|d| !refused.contains(d.key.as_slice())).count();
    out.extend(dups);
    let mut g = Generator::new(
        card_registrar::avro::schemas::SchemaSet::embedded().unwrap(),
        keys.card_public(),
        card_registrar::avro::encode::Framing::SingleObject,
        3,
        prefix,
    );
    for kind in [EventKind::Created, EventKind::Tokenized, EventKind::Ordered] {
        out.push(g.poison(kind));
    }
    (out, recognised)
}

async fn run_until_applied(db: &TestDb, env: &WorkerEnv, group: &str, name: &str, published: i64) {
    let worker = Worker::spawn(env, name);
    let log = worker.log.clone();
    let wait = wait_until_or_log(db, group, published, &log);
    wait.await;
    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.success(), "{name} exited with {status}; log:\n{}", tail(&log));
}

async fn wait_until_or_log(db: &TestDb, group: &str, published: i64, log: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if applied(&db.pool, group).await == published {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all applied in time; worker log:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_restarts_and_a_rebalance_end_in_the_same_database_as_a_clean_run() {
    let keys = TestKeys::new();
    let topics = TestTopics::new(6).await;
    let (messages, recognised_duplicates) = stream(&keys, "crash", 20_000);
    assert!(messages.len() >= 20_000, "{} messages", messages.len());

    // 1. Crash run: the worker is killed at random moments while the stream is being produced.
    let crash_db = TestDb::new().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (g_crash, g_clean, g_two) = (format!("crash-{run}"), format!("clean-{run}"), format!("two-{run}"));
    let crash_env = WorkerEnv::new(&crash_db, &topics, &keys, &g_crash, None);
    let producer = {
        let (topics_names, messages) = (topics.kinds(), messages.clone());
        tokio::spawn(async move { publish_slowly(&topics_names, &messages).await })
    };
    let mut kills = 0;
    let mut worker = Worker::spawn(&crash_env, "crash-0");
    while kills < 6 || !producer.is_finished() {
        let pause = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        assert!(worker.alive(), "worker died by itself; log:\n{}", tail(&worker.log));
        worker.kill9();
        kills += 1;
        worker = Worker::spawn(&crash_env, &format!("crash-{kills}"));
    }
    producer.await.unwrap();
    let published = topics.published();
    wait_until_or_log(&crash_db, &g_crash, published, &worker.log).await;
    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert!(kills >= 5);

    // 2. Clean run over the same topics.
    let clean_db = TestDb::new().await;
    let clean_env = WorkerEnv::new(&clean_db, &topics, &keys, &g_clean, None);
    run_until_applied(&clean_db, &clean_env, &g_clean, "clean", published).await;

    // 3. Two workers in one group; one stops midway and the other takes its partitions over.
    let two_db = TestDb::new().await;
    let two_env = WorkerEnv::new(&two_db, &topics, &keys, &g_two, None);
    let (a, b) = (Worker::spawn(&two_env, "two-a"), Worker::spawn(&two_env, "two-b"));
    let (a_log, b_log) = (a.log.clone(), b.log.clone());
    wait_until("the pair to share the work", Duration::from_secs(60), || async {
        assigned(&a_log) > 0 && assigned(&b_log) > 0 && applied(&two_db.pool, &g_two).await > 0
    })
    .await;
    let before = assigned(&b_log);
    assert!(a.terminate(Duration::from_secs(30)).success());
    wait_until_or_log(&two_db, &g_two, published, &b_log).await;
    wait_until("the survivor to take the stopped worker's partitions", Duration::from_secs(30), || async {
        assigned(&b_log) > before
    })
    .await;
    assert!(b.terminate(Duration::from_secs(30)).success());

    let clean = Snapshot::take(&clean_db.pool).await;
    assert!(!clean.cards.is_empty() && !clean.dead_letters.is_empty());
    let crashed = Snapshot::take(&crash_db.pool).await;
    assert!(crashed == clean, "crash run differs: {}", crashed.diff(&clean));
    let shared = Snapshot::take(&two_db.pool).await;
    assert!(shared == clean, "two-worker run differs: {}", shared.diff(&clean));
    // No duplicate outbox rows, no missing events.
    let enqueued = clean.history.iter().filter(|h| h["effect"] == "ENQUEUED").count();
    assert_eq!(clean.outbox.len(), enqueued);
    let accounted = clean.history.len() + clean.dead_letters.len() + recognised_duplicates;
    assert_eq!(
        accounted as i64, published,
        "every message is applied, recognised as a duplicate, or a dead letter"
    );
}

/// Messages of `partition assigned` in a worker log.
fn assigned(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("partition assigned").count()
}

async fn publish_slowly(topics: &[(String, EventKind)], messages: &[Outgoing]) {
    for chunk in messages.chunks(1000) {
        publish_to(topics, chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
