//! Ingest under hostile and odd streams, against the real broker and database, with the worker
//! binary as a child process: huge garbage among valid events (memory bounded in bytes).

use std::time::Duration;

use card_registrar::core::record::{CallStatus, CardState};
use card_registrar::store::{cards, dead_letters};
use card_registrar::workload::{Outgoing, Plan};

use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

/// Peak resident memory (`VmHWM`) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// 1 MiB of bytes no framing accepts (first byte is neither 0x00 nor 0xC3), not compressible.
fn garbage(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(GARBAGE_BYTES);
    out.push(0xFF);
    while out.len() < GARBAGE_BYTES {
        // xorshift64: fast, enough to defeat compression.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(GARBAGE_BYTES);
    out
}

const GARBAGE_BYTES: usize = 1 << 20;
const GARBAGE_MESSAGES: u64 = 1000;
/// The stated bound on the worker's peak RSS while it takes 1 GB of garbage (README, "Measured
/// figures"): queues and batches are bounded in bytes, so it does not grow with the garbage.
const PEAK_RSS_BOUND: u64 = 400 << 20;

/// Publishes with a producer that allows 1 MiB values.
async fn publish_large(topics: &TestTopics, messages: &[Outgoing]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kinds = topics.kinds();
    let topic = |k| kinds.iter().find(|(_, kind)| *kind == k).map(|(t, _)| t.as_str()).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "4194304")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for chunk in messages.chunks(100) {
        let mut pending = Vec::with_capacity(chunk.len());
        for m in chunk {
            let record = FutureRecord::to(topic(m.kind)).key(&m.key).payload(&m.payload);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for p in pending {
            p.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_one_megabyte_garbage_messages_are_dead_lettered_in_bounded_memory() {
    let db = TestDb::new().await;
    let topics = TestTopics::with_config(3, &[("max.message.bytes", "4194304")]).await;
    let keys = TestKeys::new();
    let cards_ = scripts(&keys, "big", 300, |_| Plan::CreatedOnly);
    let valid: Vec<Outgoing> = cards_.iter().flat_map(|c| c.phase1.clone()).collect();
    // Garbage interleaved with valid events, on every partition of the created topic.
    let mut stream = Vec::new();
    let mut valid_iter = valid.iter();
    for i in 0..GARBAGE_MESSAGES {
        stream.push(Outgoing {
            kind: card_registrar::core::event::EventKind::Created,
            key: format!("garbage-{i}").into_bytes(),
            payload: garbage(i),
        });
        if i % 3 == 0
            && let Some(v) = valid_iter.next()
        {
            stream.push(v.clone());
        }
    }
    stream.extend(valid_iter.cloned());
    publish_large(&topics, &stream).await;
    drop(stream);
    let published = topics.published();
    assert_eq!(published, GARBAGE_MESSAGES as i64 + valid.len() as i64);

    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let env = WorkerEnv::new(&db, &topics, &keys, &group, None);
    let worker = Worker::spawn(&env, "big");
    let started = std::time::Instant::now();
    wait_until("every message applied or dead-lettered", Duration::from_secs(600), || async {
        applied(&db.pool, &group).await == published
    })
    .await;
    let took = started.elapsed();
    let peak = peak_rss(worker.pid());
    eprintln!(
        "1000 x 1 MiB garbage + {} valid events: {:.1} s, worker peak RSS {} MiB",
        valid.len(),
        took.as_secs_f64(),
        peak >> 20
    );
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", tail(&log));

    let by_reason = dead_letters::count_by_reason(&db.pool).await.unwrap();
    assert_eq!(by_reason, vec![("UNKNOWN_FRAMING".to_owned(), GARBAGE_MESSAGES as i64)]);
    for c in &cards_ {
        let (r, call) = cards::get(&db.pool, &c.card_id).await.unwrap().expect("valid card registered");
        assert_eq!((r.state, call), (CardState::Pending, Some(CallStatus::Queued)));
    }
    assert!(peak < PEAK_RSS_BOUND, "worker peak RSS {} MiB over the bound {} MiB", peak >> 20, PEAK_RSS_BOUND >> 20);
}
