//! PostgreSQL restarted mid-stream: the worker recovers by itself, loses nothing, and ends with
//! the database a clean run produces. Its own test binary, because restarting the database
//! disturbs every connection of the process (the other integration tests run in parallel).
//!
//! Restarts through `scripts/services restart-postgres` (the script-managed cluster), or through
//! the command in `PG_RESTART_COMMAND`.

#[allow(dead_code)]
#[path = "it/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "it/worker.rs"]
mod worker;

use std::time::Duration;

use card_registrar::avro::encode::Framing;
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::workload::{Generator, Outgoing, Plan};

use helpers::*;
use worker::{Worker, WorkerEnv, tail};

fn restart_postgres() {
    let command = std::env::var("PG_RESTART_COMMAND")
        .unwrap_or_else(|_| format!("{}/scripts/services restart-postgres", env!("CARGO_MANIFEST_DIR")));
    let status =
        std::process::Command::new("sh").arg("-c").arg(&command).status().expect("run the restart command");
    assert!(status.success(), "`{command}` failed: this test needs a PostgreSQL it may restart");
}

async fn until_applied(db: &TestDb, group: &str, n: i64, log: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        // Errors while the database is down count as "not yet".
        let done: i64 = card_registrar::store::offsets::load_group(&db.pool, group)
            .await
            .map(|rows| rows.iter().map(|(_, _, o)| o).sum())
            .unwrap_or(0);
        if done == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all applied; log:\n{}", tail(log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_mid_stream_loses_nothing_and_needs_no_operator() {
    let (keys, topics) = (TestKeys::new(), TestTopics::new(6).await);
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 5, "pgr");
    let plans =
        [Plan::CreatedOnly, Plan::TokenizedOnly, Plan::OrderedOnly, Plan::DeclinedThenCreated, Plan::BadLuhn];
    let messages: Vec<Outgoing> = (0..6000)
        .flat_map(|i| {
            let s = g.card(i, plans[i % plans.len()]).unwrap();
            s.phase1.into_iter().chain(s.phase2)
        })
        .collect();
    let run = uuid::Uuid::new_v4().simple().to_string();

    let db = TestDb::new().await;
    let group = format!("pgr-{run}");
    let env = WorkerEnv::new(&db, &topics, &keys, &group, None);
    let worker = Worker::spawn(&env, "restarted");
    worker.wait_ready(Duration::from_secs(60)).await;
    let (first, rest) = messages.split_at(messages.len() / 2);
    publish(&topics, first).await;
    wait_until("some events applied", Duration::from_secs(60), || async {
        applied(&db.pool, &group).await > 0
    })
    .await;
    // Keep the stream flowing while the database goes away and comes back.
    let producer = {
        let (names, rest) = (topics.kinds(), rest.to_vec());
        tokio::spawn(async move {
            for chunk in rest.chunks(500) {
                publish_to(&names, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    producer.await.unwrap();
    let published = topics.published();
    until_applied(&db, &group, published, &worker.log).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));

    let clean_db = TestDb::new().await;
    let clean_group = format!("pgr-clean-{run}");
    let clean_env = WorkerEnv::new(&clean_db, &topics, &keys, &clean_group, None);
    let clean = Worker::spawn(&clean_env, "clean");
    until_applied(&clean_db, &clean_group, published, &clean.log).await;
    assert!(clean.terminate(Duration::from_secs(30)).success());

    let (after_restart, reference) = (Snapshot::take(&db.pool).await, Snapshot::take(&clean_db.pool).await);
    assert!(after_restart == reference, "differs from a clean run: {}", after_restart.diff(&reference));
    assert_eq!(reference.history.len() + reference.dead_letters.len(), published as usize);
}
