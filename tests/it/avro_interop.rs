//! Avro against implementations this project did not write: the Avro reference implementation
//! (Java `org.apache.avro:avro`, from Maven Central) and the Kafka Java client (the cached Kafka
//! jars), driven through `interop/AvroReference.java`.
//!
//! - every file in `schemas/` (listed at run time, so a schema added later cannot slip by) has the
//!   canonical form and fingerprint the reference gives it;
//! - a mixed stream the Java producer writes (both framings, every kept version of every topic) ends
//!   in exactly the database our own producer's stream gives;
//! - what `card-registrar publish` writes, the reference decoder reads, field for field as we do.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use card_registrar::avro::decode::Decoder;
use card_registrar::avro::encode::{Framing, encode_version};
use card_registrar::avro::registry::{HttpSchemaRegistry, SchemaRegistry};
use card_registrar::avro::schemas::{ParsedSchema, RESULTS_FOLDER, SchemaSet, results_schema, topic_folder};
use card_registrar::core::event::{CardEvent, EventKind, InitialState, OrderOutcome, TokenizationOutcome};
use card_registrar::crypto::{CardDataKeys, EnvelopeSealer};
use card_registrar::ingest::consumer;
use card_registrar::ingest::prepare::Pipeline;
use card_registrar::workload::{Outgoing, Plan};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;
use crate::ingest::scripts;

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference's classpath, resolved once per test binary by `scripts/avro-reference`.
fn classpath() -> &'static str {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        let out = Command::new(repo().join("scripts/avro-reference")).arg("classpath").output().unwrap();
        assert!(out.status.success(), "scripts/avro-reference: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// Runs the reference tool with `args`, feeding `stdin`; returns its standard output.
pub(crate) fn java(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(classpath())
        .arg(repo().join("interop/AvroReference.java"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java on PATH");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "AvroReference {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every `schemas/<topic>/v<N>.avsc` on disk, as paths relative to `schemas/`.
fn schema_files() -> Vec<String> {
    let mut files = Vec::new();
    for topic in std::fs::read_dir(repo().join("schemas")).unwrap() {
        let topic = topic.unwrap().path();
        if !topic.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&topic).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "avsc") {
                files.push(file.strip_prefix(repo().join("schemas")).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_schema_file_has_the_canonical_form_and_fingerprint_the_reference_gives_it() {
    let files = schema_files();
    let embedded = SchemaSet::embedded().unwrap();
    let kinds = [EventKind::Created, EventKind::Tokenized, EventKind::Ordered, EventKind::Profile];
    let results = results_schema().unwrap();
    let result_files = files.iter().filter(|f| f.starts_with(&format!("{RESULTS_FOLDER}/"))).count();
    assert_eq!(
        files.len(),
        kinds.iter().map(|k| embedded.versions(*k).len()).sum::<usize>() + result_files,
        "every file in schemas/ is embedded"
    );
    let paths: Vec<String> =
        files.iter().map(|f| repo().join("schemas").join(f).display().to_string()).collect();
    let args: Vec<&str> = std::iter::once("fingerprint").chain(paths.iter().map(String::as_str)).collect();
    let out = java(&args, "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), files.len(), "{out}");
    let mut relay_writer_checked = false;
    for (file, line) in paths.iter().zip(lines) {
        let mut parts = line.splitn(3, ' ');
        let (name, fingerprint, canonical) =
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(name, file);
        let ours = ParsedSchema::parse(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(ours.canonical_form(), canonical, "{file}");
        assert_eq!(ours.fingerprint().to_string(), fingerprint, "{file}");
        if name.contains(&format!("schemas/{RESULTS_FOLDER}/")) {
            // Not an input schema: the relay writes with the newest of these files.
            relay_writer_checked |= results.fingerprint().to_string() == fingerprint;
            continue;
        }
        let kept = embedded.by_fingerprint(&ours.fingerprint()).unwrap_or_else(|| panic!("{file} embedded"));
        assert_eq!(
            format!("{}/v{}.avsc", topic_folder(kept.kind), kept.version),
            *name.rsplit("schemas/").next().unwrap()
        );
    }
    assert!(relay_writer_checked, "the results relay writes with a schema file the reference fingerprinted");
}

/// The event's fields as plain JSON: strings, enum symbols, nulls, `occurredAt` in milliseconds.
fn plain(event: &CardEvent) -> serde_json::Value {
    let m = event.meta();
    let mut o = serde_json::json!({
        "eventId": m.event_id.to_string(),
        "occurredAt": m.occurred_at.timestamp_millis(),
        "cardId": m.card_id.as_str(),
        "consumerId": m.consumer_id.as_str(),
    });
    let extra = match event {
        CardEvent::Created(c) => serde_json::json!({
            "cardProductId": c.card_product_id.as_str(),
            "encryptedCard": c.encrypted_card.as_str(),
            "initialState": match c.initial_state { InitialState::Active => "ACTIVE", InitialState::Inactive => "INACTIVE" },
        }),
        CardEvent::Tokenized(t) => serde_json::json!({
            "outcome": match t.outcome { TokenizationOutcome::Approved => "APPROVED", TokenizationOutcome::Declined => "DECLINED" },
            "digitalCardId": t.digital_card_id,
            "tokenRequestorId": t.token_requestor_id,
        }),
        CardEvent::Ordered(r) => serde_json::json!({
            "outcome": match r.outcome { OrderOutcome::Accepted => "ACCEPTED", OrderOutcome::Rejected => "REJECTED" },
            "cardProductId": r.card_product_id.as_ref().map(|p| p.as_str()),
            "orderId": r.order_id,
        }),
    };
    o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    o
}

/// The event in Avro's JSON encoding for a writer schema file: its fields only, a non-null union
/// value wrapped as `{"string": ...}`.
fn avro_json(event: &CardEvent, schema_file: &Path) -> String {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_file).unwrap()).unwrap();
    let values = plain(event);
    let mut record = serde_json::Map::new();
    for field in schema["fields"].as_array().unwrap() {
        let name = field["name"].as_str().unwrap();
        let value = values[name].clone();
        let wrapped = match (field["type"].is_array(), &value) {
            (true, serde_json::Value::Null) | (false, _) => value,
            (true, v) => serde_json::json!({ "string": v }),
        };
        record.insert(name.to_owned(), wrapped);
    }
    serde_json::Value::Object(record).to_string()
}

/// How message `i` of a kind is written: which kept version, which framing.
fn writer_of(schemas: &SchemaSet, kind: EventKind, i: usize) -> (u32, Framing) {
    let versions = schemas.versions(kind);
    let version = versions[i % versions.len()].version;
    let framing = if i.is_multiple_of(3) {
        Framing::Confluent { schema_id: schema_id(kind, version) }
    } else {
        Framing::SingleObject
    };
    (version, framing)
}

/// The registry id the test registry serves each kept version under.
fn schema_id(kind: EventKind, version: u32) -> u32 {
    let base = match kind {
        EventKind::Created => 100,
        EventKind::Tokenized => 200,
        EventKind::Ordered => 300,
        EventKind::Profile => 400,
    };
    base + version
}

async fn registry(schemas: &SchemaSet) -> MockServer {
    let server = MockServer::start().await;
    for kind in [EventKind::Created, EventKind::Tokenized, EventKind::Ordered] {
        for v in schemas.versions(kind) {
            let file = repo().join(format!("schemas/{}/v{}.avsc", topic_folder(kind), v.version));
            let json = std::fs::read_to_string(file).unwrap();
            Mock::given(method("GET"))
                .and(path(format!("/schemas/ids/{}", schema_id(kind, v.version))))
                .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": json })))
                .mount(&server)
                .await;
        }
    }
    server
}

/// Runs ingest over `topics` into `db` with a pipeline that reads through `registry`.
struct Run {
    group: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Run {
    fn start(db: &TestDb, topics: &TestTopics, keys: &TestKeys, registry: &MockServer) -> Self {
        let registry: Arc<dyn SchemaRegistry> = Arc::new(
            HttpSchemaRegistry::new(&url::Url::parse(&registry.uri()).unwrap(), Duration::from_secs(5))
                .unwrap(),
        );
        let decoder = Decoder::new(Arc::new(SchemaSet::embedded().unwrap()), Some(registry));
        let pipeline = Pipeline::new(
            decoder,
            Arc::new(CardDataKeys::from_file(&keys.files.card_data_private_jwks).unwrap()),
            Arc::new(EnvelopeSealer::from_file(&keys.files.card_data_private_jwks).unwrap()),
        );
        let group = format!("g-{}", uuid::Uuid::new_v4().simple());
        let options = test_ingest_options(&group, topics);
        let (pool, stop) = (db.pool.clone(), CancellationToken::new());
        let s = stop.clone();
        let task = tokio::spawn(async move {
            consumer::run(options, pool, Arc::new(pipeline), Arc::new(|_| {}), s).await.unwrap();
        });
        Self { group, stop, task }
    }

    async fn wait_applied(&self, db: &TestDb, n: i64) {
        wait_until("stream applied", Duration::from_secs(90), || async {
            applied(&db.pool, &self.group).await == n
        })
        .await;
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("ingest stops").unwrap();
    }
}

/// What ingest wrote, without what depends on the producer's partitioner or the topic's name (nor
/// the bytes of the sealed content key, random per sealing: whether it is there counts).
async fn outcome(pool: &PgPool) -> Vec<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    for sql in [
        "SELECT card_id, consumer_id, state, source, card_product_id, encrypted_card, initial_state, \
         implicit_while_in_flight, failure FROM cards ORDER BY card_id",
        "SELECT event_id, card_id, kind, outcome, consumer_id, effect, split_part(topic, '-', 2) AS topic \
         FROM card_events ORDER BY event_id",
        "SELECT card_id, kind, status, payload - 'cardKey' AS payload, payload ? 'cardKey' AS has_sealed_card_key \
         FROM outbox ORDER BY card_id",
        "SELECT split_part(topic, '-', 2) AS topic, reason, detail, card_id, event_id FROM dead_letters \
         ORDER BY card_id, event_id, reason",
    ] {
        all.push(
            sqlx::query_scalar::<_, serde_json::Value>(&format!("SELECT row_to_json(t) FROM ({sql}) t"))
                .fetch_all(pool)
                .await
                .unwrap(),
        );
    }
    all
}

/// Plans whose outcome does not depend on how the three topics interleave (two producers, two
/// partitioners: the interleaving differs between the runs).
fn order_independent_plan(i: usize) -> Plan {
    match i % 8 {
        0 | 1 => Plan::CreatedOnly,
        2 => Plan::DeclinedThenCreated,
        3 => Plan::TokenizedOnly,
        4 => Plan::OrderedOnly,
        5 => Plan::TokenizedThenCreated,
        6 => Plan::PanAsCardId,
        _ => Plan::BadLuhn,
    }
}

/// One phase of the stream through the Java producer: each event in Avro JSON with its writer.
fn java_produce(topics: &TestTopics, schemas: &SchemaSet, events: &[(usize, CardEvent)]) -> usize {
    let topic = |k: EventKind| topics.kinds().into_iter().find(|(_, kind)| *kind == k).unwrap().0;
    let mut lines = String::new();
    for (i, event) in events {
        let (version, framing) = writer_of(schemas, event.kind(), *i);
        let file = format!("{}/v{version}.avsc", topic_folder(event.kind()));
        let mut line = serde_json::json!({
            "topic": topic(event.kind()),
            "key": event.meta().card_id.as_str(),
            "schema": file,
            "framing": "single-object",
            "record": avro_json(event, &repo().join("schemas").join(&file)),
        });
        if let Framing::Confluent { schema_id } = framing {
            line["framing"] = "confluent".into();
            line["schemaId"] = schema_id.into();
        }
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let schemas_dir = repo().join("schemas");
    let out = java(&["produce", &brokers(), schemas_dir.to_str().unwrap()], &lines);
    assert_eq!(out.trim(), format!("produced {}", events.len()));
    events.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_from_the_java_reference_producer_ends_as_our_own_producers_stream_does() {
    let keys = TestKeys::new();
    let schemas = SchemaSet::embedded().unwrap();
    let cards = scripts(&keys, "jv", 120, order_independent_plan);
    let local = Decoder::new(Arc::new(SchemaSet::embedded().unwrap()), None);
    // Number every message, then turn it back into its event: both producers write the same events.
    let mut numbered = 0usize;
    let mut phases = Vec::new();
    for messages in [
        cards.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>(),
        cards.iter().flat_map(|c| c.phase2.clone()).collect(),
    ] {
        let mut events = Vec::new();
        for m in messages {
            events.push((numbered, local.decode(m.kind, Some(&m.key), &m.payload).await.unwrap()));
            numbered += 1;
        }
        phases.push(events);
    }
    let (phase1, phase2) = (&phases[0], &phases[1]);
    let mut used: HashMap<(EventKind, u32, bool), usize> = HashMap::new();
    for (i, e) in phase1.iter().chain(phase2) {
        let (v, f) = writer_of(&schemas, e.kind(), *i);
        *used.entry((e.kind(), v, f == Framing::SingleObject)).or_default() += 1;
    }
    assert_eq!(used.len(), 10, "every kept version of every topic in both framings: {used:?}");
    let server = registry(&schemas).await;

    // Ours: the same events, versions and framings through our encoder and librdkafka.
    let (ours_db, ours_topics) = (TestDb::new().await, TestTopics::new(6).await);
    let ours = Run::start(&ours_db, &ours_topics, &keys, &server);
    let encoded = |events: &[(usize, CardEvent)]| -> Vec<Outgoing> {
        events
            .iter()
            .map(|(i, e)| {
                let (version, framing) = writer_of(&schemas, e.kind(), *i);
                Outgoing {
                    kind: e.kind(),
                    key: e.meta().card_id.as_str().as_bytes().to_vec(),
                    payload: encode_version(&schemas, e, version, framing).unwrap(),
                }
            })
            .collect()
    };
    publish(&ours_topics, &encoded(phase1)).await;
    ours.wait_applied(&ours_db, phase1.len() as i64).await;
    publish(&ours_topics, &encoded(phase2)).await;
    ours.wait_applied(&ours_db, (phase1.len() + phase2.len()) as i64).await;
    ours.stop().await;

    // Theirs: the Avro reference encodes, the Kafka Java client produces.
    let (java_db, java_topics) = (TestDb::new().await, TestTopics::new(6).await);
    let theirs = Run::start(&java_db, &java_topics, &keys, &server);
    let n1 = java_produce(&java_topics, &schemas, phase1);
    theirs.wait_applied(&java_db, n1 as i64).await;
    let n2 = java_produce(&java_topics, &schemas, phase2);
    theirs.wait_applied(&java_db, (n1 + n2) as i64).await;
    theirs.stop().await;

    let (expected, got) = (outcome(&ours_db.pool).await, outcome(&java_db.pool).await);
    assert_eq!(expected[0].len(), cards.iter().filter(|c| c.plan.ends_registered()).count(), "cards stored");
    for (table, (e, g)) in
        ["cards", "history", "outbox", "dead_letters"].iter().zip(expected.iter().zip(&got))
    {
        assert_eq!(e.len(), g.len(), "{table}: row counts differ");
        if let Some((a, b)) = e.iter().zip(g).find(|(a, b)| a != b) {
            panic!("{table}: first difference:\n ours: {a}\n java: {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_publish_writes_the_reference_decoder_reads_as_we_do() {
    let (keys, topics) = (TestKeys::new(), TestTopics::new(3).await);
    let out = Command::new(env!("CARGO_BIN_EXE_card-registrar"))
        .args([
            "publish",
            "--cards",
            "60",
            "--duplicates-percent",
            "0",
            "--poison",
            "0",
            "--phase-gap-ms",
            "0",
        ])
        .args(["--prefix", "pubref"])
        .env("KAFKA_BROKERS", brokers())
        .env("TOPIC_CARD_CREATED", &topics.created)
        .env("TOPIC_CARD_TOKENIZED", &topics.tokenized)
        .env("TOPIC_CARD_ORDERED", &topics.ordered)
        .env("CARD_DATA_PUBLIC_KEY", &keys.files.card_data_public_jwk)
        .env("LOG_FORMAT", "text")
        .output()
        .unwrap();
    assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));

    let local = Decoder::new(Arc::new(SchemaSet::embedded().unwrap()), None);
    let schemas_dir = repo().join("schemas");
    let mut total = 0;
    for (topic, kind) in topics.kinds() {
        let ours = read_back(&topic, &local, kind).await;
        let java_lines = java(
            &["consume", &brokers(), &topic, &ours.len().to_string(), schemas_dir.to_str().unwrap()],
            "",
        );
        let mut theirs: HashMap<(i32, i64), serde_json::Value> = HashMap::new();
        for line in java_lines.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let at = (v["partition"].as_i64().unwrap() as i32, v["offset"].as_i64().unwrap());
            assert_eq!(v["key"], v["record"]["cardId"], "the key is the cardId");
            theirs.insert(at, v["record"].clone());
        }
        assert_eq!(theirs.len(), ours.len(), "{topic}");
        for (at, event) in &ours {
            assert_eq!(theirs.get(at), Some(&plain(event)), "{topic} {at:?}");
        }
        total += ours.len();
    }
    assert!(total >= 60, "messages compared: {total}");
}

/// Every message of a topic, decoded by us, by (partition, offset).
async fn read_back(topic: &str, decoder: &Decoder, kind: EventKind) -> HashMap<(i32, i64), CardEvent> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("read-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut list = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
        remaining += high - low;
        list.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut events = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while remaining > 0 {
        assert!(std::time::Instant::now() < deadline, "{topic}: {remaining} messages not read");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let event = decoder.decode(kind, m.key(), m.payload().unwrap()).await.unwrap();
            events.insert((m.partition(), m.offset()), event);
            remaining -= 1;
        }
    }
    events
}

fn zigzag(n: i64) -> Vec<u8> {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// CardOrdered v1 with one more field of the given type appended.
fn ordered_plus(extra: serde_json::Value) -> String {
    let file = repo().join("schemas/card-ordered/v1.avsc");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "name": "extra", "type": extra, "default": null }));
    schema.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_registry_schemas_become_dead_letters_and_the_partition_moves_on() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let schemas = SchemaSet::embedded().unwrap();
    let server = registry(&schemas).await;
    let mut deep = serde_json::json!("null");
    for _ in 0..40 {
        deep = serde_json::json!({ "type": "array", "items": deep });
    }
    let recursive = serde_json::json!(["null", {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}]);
    let hostile: [(u32, String); 5] = [
        (901, ordered_plus(recursive)),
        (902, ordered_plus(serde_json::json!(["null", deep]))),
        (903, ordered_plus(serde_json::json!(["null", {"type": "array", "items": "null"}]))),
        (904, ordered_plus(serde_json::json!(["null", "string"]))),
        (905, ordered_plus(serde_json::json!("null")).replace("\"CardOrdered\"", "\"Other\"")),
    ];
    for (id, schema) in &hostile {
        Mock::given(method("GET"))
            .and(path(format!("/schemas/ids/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": schema })))
            .mount(&server)
            .await;
    }
    let huge = "x".repeat(card_registrar::avro::registry::MAX_RESPONSE_BYTES * 2);
    Mock::given(method("GET"))
        .and(path("/schemas/ids/906"))
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;

    // Valid orders (kept v1 through the registry) around one message per hostile schema.
    let event = |i: usize| {
        let mut e = crate::helpers::ordered(
            &format!("hostile-{i}"),
            "consumer-h",
            card_registrar::core::event::OrderOutcome::Accepted,
        );
        if let CardEvent::Ordered(o) = &mut e {
            o.order_id = Some(format!("order-{i}"));
        }
        e
    };
    let valid = |i: usize| {
        let e = event(i);
        Outgoing {
            kind: EventKind::Ordered,
            key: e.meta().card_id.as_str().as_bytes().to_vec(),
            payload: encode_version(
                &schemas,
                &e,
                1,
                Framing::Confluent { schema_id: schema_id(EventKind::Ordered, 1) },
            )
            .unwrap(),
        }
    };
    let body =
        |i: usize| encode_version(&schemas, &event(i), 1, Framing::SingleObject).unwrap()[10..].to_vec();
    let framed = |id: u32, datum: Vec<u8>, i: usize| {
        let mut payload = vec![0];
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend(datum);
        Outgoing { kind: EventKind::Ordered, key: format!("hostile-{i}").into_bytes(), payload }
    };
    let mut messages = vec![valid(0)];
    let mut datum = body(1);
    datum.extend([2u8; 10_000]);
    messages.push(framed(901, datum, 1));
    messages.push(framed(902, [body(2), zigzag(0)].concat(), 2));
    messages.push(framed(903, [body(3), zigzag(1), zigzag(i64::from(i32::MAX))].concat(), 3));
    messages.push(framed(904, [body(4), zigzag(1), zigzag(1 << 40), b"short".to_vec()].concat(), 4));
    messages.push(framed(905, [body(5), zigzag(0)].concat(), 5));
    messages.push(framed(906, body(6), 6));
    messages.push(valid(7));

    let run = Run::start(&db, &topics, &keys, &server);
    publish(&topics, &messages).await;
    run.wait_applied(&db, messages.len() as i64).await;
    run.stop().await;

    // One partition: the dead letters are the six hostile messages, in order.
    let reasons: Vec<(i64, String)> =
        sqlx::query_as("SELECT \"offset\", reason FROM dead_letters ORDER BY \"offset\"")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let expected = [
        "UNTRUSTED_SCHEMA",
        "UNTRUSTED_SCHEMA",
        "DATUM_TOO_COMPLEX",
        "TRUNCATED",
        "UNTRUSTED_SCHEMA",
        "UNTRUSTED_SCHEMA",
    ];
    assert_eq!(
        reasons,
        expected.iter().enumerate().map(|(i, r)| (i as i64 + 1, (*r).to_owned())).collect::<Vec<_>>()
    );
    for i in [0, 7] {
        let (record, _) =
            card_registrar::store::cards::get(&db.pool, &format!("hostile-{i}")).await.unwrap().unwrap();
        assert_eq!(record.state, card_registrar::core::record::CardState::Registered);
    }
    let details: Vec<String> = sqlx::query_scalar("SELECT detail FROM dead_letters ORDER BY \"offset\"")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(details[0].starts_with("writer schema id 901"), "{details:?}");
}

/// Consumer profiles written by the Java reference producer, in both framings (the Confluent one
/// resolved through a registry), are read, sealed and stored as the reference wrote them: opened
/// again, each equals the record the reference encoded.
#[tokio::test]
async fn consumer_profiles_from_the_java_reference_producer_are_stored_as_it_wrote_them() {
    use card_registrar::core::profile::ConsumerInfo;
    use card_registrar::crypto::Sealer as _;
    use card_registrar::ingest::profile::ProfileSealer;

    let (db, keys, topics) = (TestDb::new().await, TestKeys::new(), TestTopics::new(1).await);
    let topic = format!("t-profile-{}", uuid::Uuid::new_v4().simple());
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        for r in admin
            .create_topics(&[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))], &AdminOptions::new())
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
    let registry = MockServer::start().await;
    let schema_json = std::fs::read_to_string(repo().join("schemas/consumer-profile/v1.avsc")).unwrap();
    Mock::given(method("GET"))
        .and(path("/schemas/ids/401"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": schema_json })))
        .mount(&registry)
        .await;
    // Avro's JSON encoding: a union's non-null branch is wrapped in its type's (full) name.
    let profile = |i: usize, full: bool| {
        let record = if full {
            serde_json::json!({
                "eventId": uuid::Uuid::new_v4().to_string(), "occurredAt": 1_790_000_000_000_i64 + i as i64,
                "consumerId": format!("ref-consumer-{i}"), "language": "it-IT",
                "firstName": format!("Giulia{i}"), "lastName": "Bianchi",
                "email": {"string": format!("giulia{i}@example.org")},
                "mobilePhoneNumber": {"cards.lifecycle.v1.MobilePhoneNumber": {"countryCode": "+39", "phoneNumber": "3471234567"}},
                "dateOfBirth": {"string": "1990-01-31"},
                "residencyAddress": {"cards.lifecycle.v1.ResidencyAddress":
                    {"line1": "Via Roma 1", "zipCode": "00184", "city": "Roma", "countryCode": "IT"}},
            })
        } else {
            serde_json::json!({
                "eventId": uuid::Uuid::new_v4().to_string(), "occurredAt": 1_790_000_000_000_i64 + i as i64,
                "consumerId": format!("ref-consumer-{i}"), "language": "it-IT",
                "firstName": format!("Marco{i}"), "lastName": "Rossi",
                "email": null, "mobilePhoneNumber": null, "dateOfBirth": null, "residencyAddress": null,
            })
        };
        let mut line = serde_json::json!({
            "topic": topic, "key": format!("ref-consumer-{i}"), "schema": "consumer-profile/v1.avsc",
            "framing": "single-object", "record": record.to_string(),
        });
        if i % 2 == 1 {
            line["framing"] = "confluent".into();
            line["schemaId"] = 401.into();
        }
        (line.to_string(), record)
    };
    let produced: Vec<(String, serde_json::Value)> = (0..4).map(|i| profile(i, i < 2)).collect();
    let lines: String = produced.iter().map(|(l, _)| format!("{l}\n")).collect();
    let out = java(&["produce", &brokers(), repo().join("schemas").to_str().unwrap()], &lines);
    assert_eq!(out.trim(), "produced 4");

    let registry: Arc<dyn SchemaRegistry> = Arc::new(
        HttpSchemaRegistry::new(&url::Url::parse(&registry.uri()).unwrap(), Duration::from_secs(5)).unwrap(),
    );
    let consumer_keys = keys.files.card_data_private_jwks.clone();
    let pipeline = Pipeline::new(
        Decoder::new(Arc::new(SchemaSet::embedded().unwrap()), Some(registry)),
        Arc::new(CardDataKeys::from_file(&keys.files.card_data_private_jwks).unwrap()),
        Arc::new(EnvelopeSealer::from_file(&keys.files.card_data_private_jwks).unwrap()),
    )
    .with_profiles(ProfileSealer::new(EnvelopeSealer::from_file(&consumer_keys).unwrap()));
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let mut options = test_ingest_options(&group, &topics);
    options.topics.push((topic.clone(), EventKind::Profile));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (pool, stop) = (db.pool.clone(), stop.clone());
        async move { consumer::run(options, pool, Arc::new(pipeline), Arc::new(|_| {}), stop).await.unwrap() }
    });
    wait_until("profiles applied", Duration::from_secs(90), || async {
        applied(&db.pool, &group).await == 4
    })
    .await;
    stop.cancel();
    task.await.unwrap();

    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&db.pool).await.unwrap();
    assert_eq!(dead, 0);
    let opener = EnvelopeSealer::from_file(&consumer_keys).unwrap().for_consumer_data();
    for (i, (_, record)) in produced.iter().enumerate() {
        let sealed: String =
            sqlx::query_scalar("SELECT sealed_profile FROM consumer_profiles WHERE consumer_id = $1")
                .bind(format!("ref-consumer-{i}"))
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let info: ConsumerInfo = serde_json::from_slice(&opener.open(&sealed).unwrap()).unwrap();
        let unwrap_union = |v: &serde_json::Value| match v {
            serde_json::Value::Object(m) if m.len() == 1 && !m.contains_key("line1") => {
                m.values().next().cloned()
            }
            serde_json::Value::Null => None,
            other => Some(other.clone()),
        };
        let mut expected = serde_json::json!({
            "language": record["language"], "firstName": record["firstName"], "lastName": record["lastName"],
        });
        for field in ["email", "mobilePhoneNumber", "dateOfBirth", "residencyAddress"] {
            if let Some(v) = unwrap_union(&record[field]) {
                expected[field] = v;
            }
        }
        assert_eq!(serde_json::to_value(&info).unwrap(), expected, "profile {i}");
    }
}
