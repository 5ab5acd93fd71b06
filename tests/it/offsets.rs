//! Stored offsets that are not in the log, on the real broker with the worker binary: records
//! deleted before ingest read them (a recorded gap, a metric), and a topic deleted and recreated
//! (the partition held, `/readyz` failing, until `offsets reset`).

use std::process::Command;
use std::time::Duration;

use card_registrar::store::{cards, offsets};
use card_registrar::workload::{Outgoing, Plan};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};

use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

fn admin() -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap()
}

async fn readyz(worker: &Worker) -> Option<(u16, serde_json::Value)> {
    let r = reqwest::get(format!("http://{}/readyz", worker.admin)).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// The value of the first sample of `name` whose labels include every one of `labels`.
async fn metric(worker: &Worker, name: &str, labels: &[&str]) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", worker.admin)).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name) && labels.iter().all(|label| l.contains(label)))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

async fn stored(db: &TestDb, group: &str, topic: &str) -> Option<i64> {
    offsets::load(&db.pool, group, topic).await.unwrap().get(&0).copied()
}

async fn run_worker_until(env: &WorkerEnv, name: &str, db: &TestDb, group: &str, topic: &str, next: i64) {
    let worker = Worker::spawn(env, name);
    wait_until("worker applied the partition", Duration::from_secs(60), || async {
        stored(db, group, topic).await == Some(next)
    })
    .await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));
}

fn created_events(keys: &TestKeys, prefix: &str, n: usize) -> (Vec<String>, Vec<Outgoing>) {
    let cards_ = scripts(keys, prefix, n, |_| Plan::CreatedOnly);
    (
        cards_.iter().map(|c| c.card_id.clone()).collect(),
        cards_.iter().flat_map(|c| c.phase1.clone()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_before_ingest_read_them_are_recorded_as_a_gap_counted_and_skipped() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let (ids, events) = created_events(&keys, "gap", 30);
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let env = WorkerEnv::new(&db, &topics, &keys, &group, None);

    publish(&topics, &events[..10]).await;
    run_worker_until(&env, "first", &db, &group, &topics.created, 10).await;

    // While no worker runs: 20 more events, and the broker loses offsets 10..25 of them.
    publish(&topics, &events[10..]).await;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topics.created, 0, Offset::Offset(25)).unwrap();
    let deleted = admin().delete_records(&tpl, &AdminOptions::new()).await.unwrap();
    assert_eq!(deleted.elements()[0].offset(), Offset::Offset(25), "new low watermark");

    let worker = Worker::spawn(&env, "second");
    wait_until("the rest applied", Duration::from_secs(60), || async {
        stored(&db, &group, &topics.created).await == Some(30)
    })
    .await;
    let topic_label = format!("topic=\"{}\"", topics.created);
    let counted =
        metric(&worker, "card_registrar_offsets_lost_total", &[&topic_label, "partition=\"0\""]).await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));

    let gaps = offsets::gaps(&db.pool).await.unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (
            gaps[0].group_id.as_str(),
            gaps[0].topic.as_str(),
            gaps[0].partition,
            gaps[0].from_offset,
            gaps[0].to_offset
        ),
        (group.as_str(), topics.created.as_str(), 0, 10, 25)
    );
    assert_eq!(counted, Some(15.0), "lost messages counted");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains("\"level\":\"ERROR\"") && log_text.contains("deleted before ingest read them"));
    for (i, id) in ids.iter().enumerate() {
        let present = cards::get(&db.pool, id).await.unwrap().is_some();
        assert_eq!(present, !(10..25).contains(&i), "card {i}");
    }
}

/// Deletes and recreates a topic (1 partition), retrying while the deletion completes.
async fn recreate(topic: &str) {
    let admin = admin();
    admin.delete_topics(&[topic], &AdminOptions::new()).await.unwrap()[0].as_ref().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        match &admin.create_topics(&[new], &AdminOptions::new()).await.unwrap()[0] {
            Ok(_) => return,
            Err(e) => assert!(std::time::Instant::now() < deadline, "cannot recreate {topic}: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_topic_holds_its_partition_until_an_operator_resets_the_offset() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let (ids, events) = created_events(&keys, "recr", 13);
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let env = WorkerEnv::new(&db, &topics, &keys, &group, None);
    publish(&topics, &events[..10]).await;
    run_worker_until(&env, "first", &db, &group, &topics.created, 10).await;

    recreate(&topics.created).await;
    publish(&topics, &events[10..]).await;

    let worker = Worker::spawn(&env, "second");
    wait_until("the partition is reported held", Duration::from_secs(60), || async {
        matches!(readyz(&worker).await, Some((503, body)) if body["checks"]["offsets_in_log"] == false
            && body["checks"]["kafka"] == true)
    })
    .await;
    assert_eq!(metric(&worker, "card_registrar_partitions_held", &[]).await, Some(1.0));
    // Held, not skipped: nothing of the new topic applied, the stored offset untouched.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stored(&db, &group, &topics.created).await, Some(10));
    for id in &ids[10..] {
        assert!(cards::get(&db.pool, id).await.unwrap().is_none());
    }

    let out = Command::new(env!("CARGO_BIN_EXE_card-registrar"))
        .args(["offsets", "reset", "--topic", &topics.created, "--partition", "0", "--to", "earliest"])
        .args(["--by", "oncall-alice"])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_GROUP_ID", &group)
        .env("LOG_FORMAT", "text")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reset: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((reset["from_offset"].as_i64(), reset["to_offset"].as_i64()), (Some(10), Some(0)));
    assert_eq!(
        (reset["target"].as_str(), reset["operator"].as_str()),
        (Some("earliest"), Some("oncall-alice"))
    );
    assert!(reset["reset_at"].is_string());

    wait_until("the held partition released and applied", Duration::from_secs(60), || async {
        stored(&db, &group, &topics.created).await == Some(3)
    })
    .await;
    worker.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(metric(&worker, "card_registrar_partitions_held", &[]).await, Some(0.0));
    for id in &ids[10..] {
        assert!(cards::get(&db.pool, id).await.unwrap().is_some());
    }
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));
}
