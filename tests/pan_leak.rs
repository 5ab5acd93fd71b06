//! The clear PAN never leaves memory: the whole path (Kafka ingest, decisions, dead letters and
//! their replay, dispatch to the in-process D1 simulator) runs at `RUST_LOG=trace` with known PANs,
//! then every log line, every span (attributes and events), the `/metrics` text and every row of
//! every table of the test schema is searched for each PAN, in clear, as hex of its ASCII digits
//! (both cases) and as base64 / base64url (padded or not).
//!
//! Its own test binary: it installs the process-wide subscriber and metrics recorder.

#[allow(dead_code)]
#[path = "trace/dispatcher.rs"]
mod dispatcher;
#[allow(dead_code)]
#[path = "it/helpers.rs"]
mod helpers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use card_registrar::admin::{self, Check, Readiness};
use card_registrar::avro::encode::{Framing, encode};
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::config::{LogFormat, TelemetrySettings};
use card_registrar::core::event::*;
use card_registrar::core::ids::{CardId, ConsumerId, EventId};
use card_registrar::ingest::consumer::{self, IngestOptions};
use card_registrar::ingest::replay::replay;
use card_registrar::store::{dead_letters, outbox};
use card_registrar::telemetry::{self, LogBuffer, SpanCapture};
use card_registrar::workload::{CardScript, Generator, Outgoing, Plan};
use d1_simulator::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use helpers::*;

const PLANS: [Plan; 9] = [
    Plan::CreatedOnly,
    Plan::DeclinedThenCreated,
    Plan::TokenizedOnly,
    Plan::OrderedOnly,
    Plan::TokenizedThenCreated,
    Plan::CreatedThenTokenized,
    Plan::PanAsCardId,
    Plan::BadLuhn,
    Plan::ConsumerMismatch,
];

/// Every form in which a PAN must not appear. Besides the full PAN, its first 15 digits: a
/// `BadLuhn` card carries its PAN with a wrong check digit, and hex and unpadded base64 of the 15
/// digits (five whole base64 groups) are prefixes of those of any 16-digit PAN starting with them.
fn needles(pan: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for digits in [pan, &pan[..15]] {
        let bytes = digits.as_bytes();
        out.extend([
            ("clear", digits.to_owned()),
            ("hex", hex::encode(bytes)),
            ("HEX", hex::encode_upper(bytes)),
            ("base64", STANDARD.encode(bytes)),
            ("base64 unpadded", STANDARD_NO_PAD.encode(bytes)),
            ("base64url", URL_SAFE.encode(bytes)),
            ("base64url unpadded", URL_SAFE_NO_PAD.encode(bytes)),
        ]);
    }
    out
}

/// Every (place, encoding) where a PAN shows up, with a little context (the PAN itself masked).
fn leaks(pans: &[String], haystacks: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for pan in pans {
        for (encoding, needle) in needles(pan) {
            for (place, text) in haystacks {
                if let Some(at) = text.find(&needle) {
                    let around =
                        &text.as_bytes()[at.saturating_sub(120)..(at + needle.len() + 120).min(text.len())];
                    let context = String::from_utf8_lossy(around).replace(&needle, "<PAN>");
                    found.push(format!("{place}: {encoding} of a PAN ending {}: …{context}…", &pan[12..]));
                }
            }
        }
    }
    found
}

/// A message with a PAN where no PAN belongs: a lifecycle event whose cardId is the PAN.
fn lifecycle_with_pan_as_card_id(kind: EventKind, pan: &str) -> Outgoing {
    let meta = EventMeta {
        event_id: EventId::from_uuid(uuid::Uuid::new_v4()),
        occurred_at: chrono::Utc::now(),
        card_id: CardId::parse(pan).unwrap(),
        consumer_id: ConsumerId::parse("pan-leak-consumer").unwrap(),
    };
    let event = match kind {
        EventKind::Tokenized => CardEvent::Tokenized(CardTokenized {
            meta,
            outcome: TokenizationOutcome::Approved,
            digital_card_id: None,
            token_requestor_id: None,
        }),
        _ => CardEvent::Ordered(CardOrdered {
            meta,
            outcome: OrderOutcome::Accepted,
            card_product_id: None,
            order_id: None,
        }),
    };
    let payload = encode(&SchemaSet::embedded().unwrap(), &event, Framing::SingleObject).unwrap();
    Outgoing { kind, key: pan.as_bytes().to_vec(), payload }
}

/// Messages that cannot be decoded, holding a PAN in the key, the value, or cut mid-record.
fn undecodable(pan: &str, pan_as_card_id: &CardScript) -> Vec<Outgoing> {
    let json = Outgoing {
        kind: EventKind::Created,
        key: pan.as_bytes().to_vec(),
        payload: format!(r#"{{"pan":"{pan}","exp":"1230","cardId":"{pan}"}}"#).into_bytes(),
    };
    let mut truncated = pan_as_card_id.phase1[0].clone();
    truncated.payload.truncate(truncated.payload.len() / 2);
    vec![json, truncated]
}

async fn table_rows(db: &TestDb) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&db.schema)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 6, "tables of {}: {tables:?}", db.schema);
    let mut out = Vec::new();
    for table in tables {
        let sql = format!("SELECT row_to_json(t)::text FROM {}.{table} t", db.schema);
        let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&db.pool).await.unwrap();
        out.push((format!("table {table} ({} rows)", rows.len()), rows.join("\n")));
    }
    out
}

#[test]
fn the_search_finds_a_pan_in_every_encoding_it_claims_to_cover() {
    let pan = "4000001234567899".to_owned();
    for (encoding, needle) in needles(&pan) {
        let planted = vec![("planted".to_owned(), format!("x={needle};"))];
        assert!(!leaks(std::slice::from_ref(&pan), &planted).is_empty(), "{encoding} not found");
    }
    let broken = vec![("planted".to_owned(), STANDARD.encode("4000001234567890"))];
    assert!(!leaks(&[pan], &broken).is_empty(), "the PAN with another check digit is found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_pan_reaches_a_log_line_a_span_a_metric_or_a_table_on_the_whole_path_at_trace_level() {
    // Arrange: everything the process emits is captured.
    let (logs, spans) = (LogBuffer::new(), SpanCapture::new());
    let settings = TelemetrySettings {
        rust_log: "trace".into(),
        log_format: LogFormat::Json,
        otel_exporter_otlp_endpoint: None,
        otel_exporter_otlp_protocol: "grpc".into(),
        otel_service_name: "card-registrar".into(),
    };
    let telemetry = telemetry::build_capturing(&settings, logs.clone(), &spans).unwrap();
    telemetry.install_global().unwrap();
    let metrics = telemetry::install_metrics().unwrap();
    let admin_stop = CancellationToken::new();
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let router = admin::router(Readiness::new(&[Check::Database]), metrics);
    tokio::spawn(admin::serve(listener, router, admin_stop.clone()));

    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(3).await, TestKeys::new());
    let sim =
        Simulator::start(SimConfig::from_key_files(&keys.files).unwrap(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 42, "leak");
    let cards: Vec<CardScript> =
        (0..PLANS.len() * 2).map(|i| g.card(i, PLANS[i % PLANS.len()]).unwrap()).collect();
    let pans: Vec<String> = cards.iter().map(|c| c.pan.clone()).collect();
    let pan_as_card_id = cards.iter().find(|c| c.plan == Plan::PanAsCardId).unwrap();
    let mut phase1: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase1.clone()).collect();
    phase1.push(lifecycle_with_pan_as_card_id(EventKind::Tokenized, &pan_as_card_id.pan));
    phase1.push(lifecycle_with_pan_as_card_id(EventKind::Ordered, &pan_as_card_id.pan));
    phase1.extend(undecodable(&pan_as_card_id.pan, pan_as_card_id));
    let phase2: Vec<Outgoing> = cards.iter().flat_map(|c| c.phase2.clone()).collect();
    let explicit = cards.iter().filter(|c| c.plan.needs_explicit_registration()).count() as u64;

    // Act: ingest and dispatch run side by side, as in `card-registrar run`.
    let work = CancellationToken::new();
    let group = format!("leak-{}", uuid::Uuid::new_v4().simple());
    let options = IngestOptions {
        brokers: brokers(),
        group_id: group.clone(),
        topics: topics.kinds(),
        batch_max: 50,
        batch_max_bytes: 4 << 20,
        batch_wait: Duration::from_millis(20),
        queue_capacity: 100,
        queue_max_bytes: 16 << 20,
        memory_max_bytes: 16 << 20,
        batches_in_flight: 4,
        revoke_wait: Duration::from_secs(10),
        security: Default::default(),
    };
    let (pool, pipeline, stop) = (db.pool.clone(), Arc::new(keys.pipeline()), work.clone());
    let ingest = tokio::spawn(consumer::run(options, pool, pipeline, Arc::new(|_| {}), stop));
    let dispatch =
        tokio::spawn(Arc::new(dispatcher::dispatcher(&db.pool, &keys, sim.base_url())).run(work.clone()));
    publish(&topics, &phase1).await;
    let n1 = topics.published();
    wait_until("phase 1 applied", Duration::from_secs(60), || async {
        applied(&db.pool, &group).await == n1
    })
    .await;
    publish(&topics, &phase2).await;
    let n2 = topics.published();
    wait_until("phase 2 applied", Duration::from_secs(60), || async {
        applied(&db.pool, &group).await == n2
    })
    .await;
    wait_until("every registration settled", Duration::from_secs(60), || async {
        let gauges = outbox::gauges(&db.pool).await.unwrap();
        // A created-then-tokenized card may be registered by a PUT too, when dispatch was quicker.
        gauges.pending == 0 && gauges.in_flight == 0 && sim.stats().effective_registrations >= explicit
    })
    .await;
    let letters = dead_letters::list(&db.pool, &dead_letters::Filter::default(), 1000).await.unwrap();
    let reasons: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
    for expected in ["CARD_ID_DERIVED_FROM_PAN", "INVALID_PAN", "CONSUMER_MISMATCH", "UNKNOWN_FRAMING"] {
        assert!(reasons.contains(&expected), "no {expected} dead letter among {reasons:?}");
    }
    let ids: Vec<i64> = letters.iter().map(|d| d.id).collect();
    let topic_kinds: HashMap<String, EventKind> = topics.kinds().into_iter().collect();
    let replayed = replay(&db.pool, &keys.pipeline(), &topic_kinds, &ids).await.unwrap();
    assert!(
        replayed.iter().all(|r| r.status == card_registrar::store::dead_letters::ReplayStatus::StillFailing),
        "{replayed:?}"
    );
    work.cancel();
    ingest.await.unwrap().unwrap();
    dispatch.await.unwrap();
    telemetry.flush().await.unwrap();

    // Assert: nowhere, in no encoding.
    let mut haystacks = vec![
        ("logs".to_owned(), logs.contents()),
        ("metrics".to_owned(), reqwest::get(&metrics_url).await.unwrap().text().await.unwrap()),
    ];
    haystacks.extend(spans.spans().iter().map(|s| (format!("span {}", s.name), format!("{s:?}"))));
    haystacks.extend(table_rows(&db).await);
    admin_stop.cancel();
    let lines = logs.lines();
    assert!(
        lines.iter().any(|l| l.contains(r#""level":"TRACE""#)),
        "trace level is on ({} lines)",
        lines.len()
    );
    assert!(haystacks.iter().any(|(place, _)| place == "span dispatch.attempt"), "spans were captured");
    let found = leaks(&pans, &haystacks);
    assert!(found.is_empty(), "{} PAN leaks:\n{}", found.len(), found.join("\n"));
}
