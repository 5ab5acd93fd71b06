//! Ingest under hostile and odd streams, against the real broker and database, with the worker
//! binary as a child process: huge garbage among valid events (memory bounded in bytes), PANs
//! inside cardIds and reused eventIds (dead letters, never silent drops), a partition task that
//! dies (readiness fails, ingest stops with an error).

use std::time::Duration;

use card_registrar::avro::encode::Framing;
use card_registrar::core::record::{CallStatus, CardState};
use card_registrar::store::{cards, dead_letters, offsets};
use card_registrar::workload::{Generator, Outgoing, Plan};

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
    assert!(
        peak < PEAK_RSS_BOUND,
        "worker peak RSS {} MiB over the bound {} MiB",
        peak >> 20,
        PEAK_RSS_BOUND >> 20
    );
}

fn outgoing(event: &card_registrar::core::event::CardEvent) -> Outgoing {
    use card_registrar::avro::encode::{Framing, encode};
    use card_registrar::avro::schemas::SchemaSet;
    Outgoing {
        kind: event.kind(),
        key: event.meta().card_id.as_str().as_bytes().to_vec(),
        payload: encode(&SchemaSet::embedded().unwrap(), event, Framing::SingleObject).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pan_inside_a_card_id_and_a_reused_event_id_become_dead_letters_never_silent_drops() {
    use card_registrar::core::event::{CardEvent, OrderOutcome, TokenizationOutcome};
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let pan_inside = tokenized("c-4111111111111111", "consumer-1", TokenizationOutcome::Approved);
    let pan_ordered = ordered("x5555555555554444y", "consumer-1", OrderOutcome::Accepted);
    let first = tokenized("ok-card-1", "consumer-1", TokenizationOutcome::Approved);
    // The same eventId for another card: a reuse, not a duplicate.
    let mut reused = tokenized("ok-card-2", "consumer-1", TokenizationOutcome::Approved);
    if let (CardEvent::Tokenized(r), CardEvent::Tokenized(f)) = (&mut reused, &first) {
        r.meta.event_id = f.meta.event_id;
    }
    let messages = [
        outgoing(&pan_inside),
        outgoing(&pan_ordered),
        outgoing(&first),
        outgoing(&first),
        outgoing(&reused),
    ];
    publish(&topics, &messages).await;

    let ingest = crate::ingest::Ingest::start(&db, &topics, &keys);
    let n = topics.published();
    wait_until("every message applied or dead-lettered", Duration::from_secs(60), || async {
        applied(&db.pool, &ingest.group).await == n
    })
    .await;
    ingest.stop().await;

    let mut dead: Vec<(String, Option<String>)> = dead_letters::list(&db.pool, &Default::default(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.reason, d.card_id))
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        vec![
            ("CARD_ID_DERIVED_FROM_PAN".into(), Some("c-[masked]".into())),
            ("CARD_ID_DERIVED_FROM_PAN".into(), Some("x[masked]y".into())),
            ("EVENT_ID_REUSED".into(), Some("ok-card-2".into())),
        ]
    );
    assert!(cards::get(&db.pool, "ok-card-1").await.unwrap().is_some());
    assert!(cards::get(&db.pool, "ok-card-2").await.unwrap().is_none(), "the reused eventId was not applied");
    // No table holds the PANs in clear.
    let snapshot = format!("{:?}", Snapshot::take(&db.pool).await);
    for pan in ["4111111111111111", "5555555555554444"] {
        assert!(!snapshot.contains(pan), "{pan} stored in clear");
    }
}

/// A sealer that panics: stands in for a bug inside a partition task.
struct PanickingSealer;

impl card_registrar::crypto::Sealer for PanickingSealer {
    fn seal(&self, _: &[u8]) -> Result<String, card_registrar::crypto::SealError> {
        panic!("sealer bug (test)")
    }
    fn open(&self, _: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, card_registrar::crypto::SealError> {
        panic!("sealer bug (test)")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_task_that_panics_fails_readiness_and_stops_ingest_with_an_error() {
    use card_registrar::avro::decode::Decoder;
    use card_registrar::avro::schemas::SchemaSet;
    use card_registrar::crypto::CardDataKeys;
    use card_registrar::ingest::consumer::{self, Health};
    use std::sync::{Arc, Mutex};

    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 3, "p");
    let valid = scripts(&keys, "die", 1, |_| Plan::TokenizedOnly);
    let mut messages: Vec<Outgoing> = valid.iter().flat_map(|c| c.phase1.clone()).collect();
    messages.push(g.poison(card_registrar::core::event::EventKind::Tokenized));
    publish(&topics, &messages).await;

    let pipeline = card_registrar::ingest::prepare::Pipeline::new(
        Decoder::new(Arc::new(SchemaSet::embedded().unwrap()), None),
        Arc::new(CardDataKeys::from_file(&keys.files.card_data_private_jwks).unwrap()),
        Arc::new(PanickingSealer),
    );
    let reports: Arc<Mutex<Vec<Health>>> = Arc::default();
    let sink = reports.clone();
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let options = test_ingest_options(&group, &topics);
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        consumer::run(
            options,
            db.pool.clone(),
            Arc::new(pipeline),
            Arc::new(move |h| sink.lock().unwrap().push(h)),
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("ingest stops by itself when a partition task dies");
    match result {
        Err(consumer::IngestError::PartitionTask { topic, partition: 0, how: "panicked" }) => {
            assert_eq!(topic, topics.tokenized)
        }
        other => panic!("expected a dead partition task, got {other:?}"),
    }
    assert!(reports.lock().unwrap().contains(&Health::PartitionTaskDied));
    // Nothing was skipped: the batch with the message that killed the task was not committed.
    let stored = offsets::load(&db.pool, &group, &topics.tokenized).await.unwrap();
    let poison_offset = messages.len() as i64 - 1;
    assert!(stored.get(&0).copied().unwrap_or(0) <= poison_offset, "{stored:?}");
}

/// Writes the fuzzers' seed inputs (`fuzz/seeds/`) from real encodings: run on purpose with
/// `cargo test --test it write_fuzz_seeds -- --ignored` after a schema or format change.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    use card_registrar::avro::encode::encode;
    use card_registrar::avro::schemas::SchemaSet;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(dir.join(target)).unwrap();
        std::fs::write(dir.join(target).join(name), bytes).unwrap();
    };
    let keys = TestKeys::new();
    let schemas = SchemaSet::embedded().unwrap();
    let cards_ = scripts(&keys, "seed", 4, |i| {
        [Plan::CreatedOnly, Plan::TokenizedOnly, Plan::OrderedOnly, Plan::CreatedThenTokenized][i]
    });
    for (i, m) in cards_.iter().flat_map(|c| c.phase1.iter().chain(&c.phase2)).enumerate() {
        // Control byte: topic of the message, with the registry, no key.
        let control = match m.kind {
            card_registrar::core::event::EventKind::Created => 0u8,
            card_registrar::core::event::EventKind::Tokenized => 1,
            card_registrar::core::event::EventKind::Ordered => 2,
            card_registrar::core::event::EventKind::Profile => {
                unreachable!("card scripts hold card events only")
            }
        };
        write("decode", &format!("single-object-{i}"), &[&[control][..], &m.payload].concat());
    }
    // Confluent framing: schema id 0 (the stub registry's first kept schema), a tokenized datum.
    let event = tokenized("card-1", "consumer-1", card_registrar::core::event::TokenizationOutcome::Approved);
    let single = encode(&schemas, &event, Framing::SingleObject).unwrap();
    let confluent = [&[1u8, 0, 0, 0, 0, 0][..], &single[10..]].concat();
    write("decode", "confluent-0", &confluent);
    // Card data: a compact JWE as text (control 0), plaintexts encrypted by the target (control 1).
    let jwe = card_registrar::crypto::encrypt_bytes(
        br#"{"pan":"4111111111111111","exp":"1230"}"#,
        &keys.card_public(),
    )
    .unwrap();
    write("card_data", "jwe", &[b"\x00card-1\n".as_slice(), jwe.as_bytes()].concat());
    write("card_data", "plaintext", b"\x01card-1\n{\"pan\":\"4111111111111111\",\"exp\":\"1230\"}");
    write(
        "card_data",
        "pan-in-id",
        b"\x01c-4111111111111111\n{\"pan\":\"5555555555554444\",\"exp\":\"0199\"}",
    );
    // D1: a Get Card body, an error body, a Retry-After date.
    write(
        "d1_response",
        "card",
        b"\x00{\"cardId\":\"c1\",\"consumerId\":\"u1\",\"cardProductId\":\"p1\",\"state\":\"ACTIVE\"}",
    );
    write(
        "d1_response",
        "error",
        b"\x01{\"errorCode\":\"INVALID_CARD\",\"errorMessage\":\"card 4111111111111111 refused\"}",
    );
    write("d1_response", "retry-after", b"\x41Wed, 21 Oct 2026 07:28:00 GMT");
}
