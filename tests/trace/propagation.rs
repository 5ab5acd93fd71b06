//! In process, no collector needed: one W3C trace runs from a Kafka message's `traceparent`
//! through ingest, the decision, the outbox row, dispatch, the D1 client and the simulator,
//! checked span by span through the parent links (every finished span is captured).

use card_registrar::avro::encode::Framing;
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::config::{LogFormat, TelemetrySettings};
use card_registrar::core::event::EventKind;
use card_registrar::dispatch::StepOutcome;
use card_registrar::ingest::apply::apply_batch;
use card_registrar::ingest::message::Batch;
use card_registrar::ingest::message::{Incoming, RawMessage};
use card_registrar::telemetry::{self, CapturedSpan, LogBuffer, SpanCapture};
use card_registrar::workload::{Generator, Outgoing, Plan};
use chrono::Utc;
use d1_simulator::{SimConfig, Simulator};
use tracing::Instrument as _;

use crate::dispatcher::dispatcher;
use crate::helpers::{TestDb, TestKeys};

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const PRODUCER_SPAN: &str = "eee19b7ec3c1b174";

fn settings() -> TelemetrySettings {
    TelemetrySettings {
        rust_log: "info".into(),
        log_format: LogFormat::Json,
        otel_exporter_otlp_endpoint: None,
        otel_exporter_otlp_protocol: "grpc".into(),
        otel_service_name: "card-registrar".into(),
    }
}

fn with_traceparent(m: &Outgoing) -> RawMessage {
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    RawMessage {
        key: Some(m.key.clone()),
        headers: vec![("traceparent".into(), Some(traceparent.into_bytes()))],
        payload: Some(m.payload.clone()),
    }
}

/// The one span called `name` whose attribute `key` is `value` (or the only one when `key` is empty).
fn span<'a>(spans: &'a [CapturedSpan], name: &str, key: &str, value: &str) -> &'a CapturedSpan {
    let found: Vec<&CapturedSpan> = spans
        .iter()
        .filter(|s| s.name == name && (key.is_empty() || s.attribute(key) == Some(value)))
        .collect();
    assert_eq!(found.len(), 1, "spans named {name} with {key}={value}: {found:#?}");
    found[0]
}

fn assert_child(child: &CapturedSpan, parent: &CapturedSpan) {
    assert_eq!(child.trace_id, TRACE_ID, "{} is in the producer's trace", child.name);
    assert_eq!(child.parent_span_id, parent.span_id, "{} is a child of {}", child.name, parent.name);
}

// One thread: the capturing subscriber is this thread's default, and every task (the simulator's
// server, the HTTP client, the database driver) runs on it.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_links_the_kafka_message_the_decision_the_dispatch_and_the_simulator() {
    let spans = SpanCapture::new();
    let telemetry = telemetry::build_capturing(&settings(), LogBuffer::new(), &spans).unwrap();
    let _default = tracing::dispatcher::set_default(telemetry.dispatch());
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let sim =
        Simulator::start(SimConfig::from_key_files(&keys.files).unwrap(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 3, "tr");
    let (card, bad) = (g.card(0, Plan::CreatedOnly).unwrap(), g.card(1, Plan::BadLuhn).unwrap());

    // Ingest: one batch with a registrable card and a dead letter, both from the producer's trace.
    let pipeline = keys.pipeline();
    let incoming = [
        Incoming { offset: 40, raw: with_traceparent(&card.phase1[0]) },
        Incoming { offset: 41, raw: with_traceparent(&bad.phase1[0]) },
    ];
    let prepared = pipeline.prepare(EventKind::Created, &incoming).await.unwrap();
    let batch = Batch { group: "g", topic: "card-created", partition: 3, from: None, messages: prepared };
    let batch_span = tracing::info_span!("ingest.batch");
    apply_batch(&db.pool, pipeline.sealer(), &batch, Utc::now()).instrument(batch_span).await.unwrap();
    let stored: Option<String> = sqlx::query_scalar("SELECT traceparent FROM outbox WHERE card_id = $1")
        .bind(&card.card_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // Dispatch: the row's stored context is the parent, also in a fresh dispatcher (as after a restart).
    let d = dispatcher(&db.pool, &keys, sim.base_url());
    assert_eq!(d.step().await.unwrap(), StepOutcome::Attempted(1));
    assert_eq!(sim.stats().effective_registrations, 1);

    let spans = spans.spans();
    let batch = span(&spans, "ingest.batch", "", "");
    let message = span(&spans, "ingest.message", "messaging.kafka.offset", "40");
    assert_eq!(message.trace_id, TRACE_ID);
    assert_eq!(message.parent_span_id, PRODUCER_SPAN);
    assert_eq!(message.links, vec![batch.span_id.clone()], "the message links to its batch");
    for (key, value) in [
        ("messaging.system", "kafka"),
        ("messaging.destination.name", "card-created"),
        ("messaging.kafka.partition", "3"),
        ("card_id", card.card_id.as_str()),
        ("outcome", "applied"),
    ] {
        assert_eq!(message.attribute(key), Some(value), "{key}");
    }
    let decide = span(&spans, "card.decide", "", "");
    assert_child(decide, message);
    assert_eq!(decide.attribute("effect"), Some("ENQUEUED"));
    assert_eq!(
        stored,
        Some(format!("00-{TRACE_ID}-{}-01", decide.span_id)),
        "the outbox row holds the decision"
    );

    let attempt = span(&spans, "dispatch.attempt", "", "");
    assert_child(attempt, decide);
    assert_eq!(attempt.attribute("outcome"), Some("done"));
    let register = span(&spans, "d1.register_card", "", "");
    assert_child(register, attempt);
    let token = span(&spans, "d1.token", "", "");
    assert_child(token, register);
    assert_child(span(&spans, "PUT /banking/v2/issuers/{issuer_id}/cards/{card_id}", "", ""), register);
    assert_child(span(&spans, "POST /authz/v1/oauth2/token", "", ""), token);

    let refused = span(&spans, "ingest.message", "messaging.kafka.offset", "41");
    assert_eq!((refused.trace_id.as_str(), refused.parent_span_id.as_str()), (TRACE_ID, PRODUCER_SPAN));
    assert_eq!(refused.attribute("outcome"), Some("dead_letter"));
    let dead_letter = span(&spans, "ingest.dead_letter", "", "");
    assert_child(dead_letter, refused);
    assert_eq!(dead_letter.attribute("reason"), Some("INVALID_PAN"));
}

// The combiner's transaction is a root span of its own (it applies batches of many traces): it
// links to each partition's `ingest.batch`, and the messages without a producer's context are its
// children, so a trace viewer gets from any of them to the others.
#[tokio::test(flavor = "current_thread")]
async fn an_ingest_transaction_links_to_the_batch_of_each_partition_it_applied() {
    use std::sync::Arc;
    use std::time::Duration;

    use card_registrar::ingest::combine::{Combiner, Limits, OwnedBatch};

    let spans = SpanCapture::new();
    let telemetry = telemetry::build_capturing(&settings(), LogBuffer::new(), &spans).unwrap();
    let _default = tracing::dispatcher::set_default(telemetry.dispatch());
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let pipeline = Arc::new(keys.pipeline());
    let limits = Limits { messages: 1000, bytes: 4 << 20, gather: Duration::from_millis(300) };
    let combiner =
        Combiner::new(db.pool.clone(), pipeline.clone(), Arc::new(tokio::sync::Semaphore::new(1)), limits);
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 3, "tx");
    let mut batches = Vec::new();
    for partition in 0..2 {
        let m = &g.card(partition as usize, Plan::CreatedOnly).unwrap().phase1[0];
        let raw = RawMessage { key: Some(m.key.clone()), headers: vec![], payload: Some(m.payload.clone()) };
        let messages = pipeline.prepare(EventKind::Created, &[Incoming { offset: 0, raw }]).await.unwrap();
        let (group, topic) = ("g".into(), "card-created".into());
        batches.push(OwnedBatch { group, topic, partition, from: None, messages });
    }
    let (b1, b0) = (batches.pop().unwrap(), batches.pop().unwrap());
    let (a0, a1) = tokio::join!(
        combiner.apply(b0).instrument(tracing::info_span!("ingest.batch", partition = 0)),
        combiner.apply(b1).instrument(tracing::info_span!("ingest.batch", partition = 1)),
    );
    assert_eq!((a0.unwrap().unwrap().next_offset, a1.unwrap().unwrap().next_offset), (1, 1));
    drop(combiner);
    tokio::task::yield_now().await;

    let spans = spans.spans();
    let transaction = span(&spans, "ingest.transaction", "", "");
    assert_eq!(transaction.attribute("batches"), Some("2"), "one transaction for both partitions");
    let mut linked = transaction.links.clone();
    linked.sort();
    let mut batch_ids: Vec<String> =
        spans.iter().filter(|s| s.name == "ingest.batch").map(|s| s.span_id.clone()).collect();
    batch_ids.sort();
    assert_eq!(batch_ids.len(), 2);
    assert_eq!(linked, batch_ids, "the transaction links to both partitions' batches");
    let messages: Vec<&CapturedSpan> = spans.iter().filter(|s| s.name == "ingest.message").collect();
    assert_eq!(messages.len(), 2);
    for m in messages {
        assert_eq!(m.parent_span_id, transaction.span_id, "a message without a producer's context");
    }
}
