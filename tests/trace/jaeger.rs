//! End to end against a real Jaeger v2: the `card-registrar run` and `d1-simulator serve`
//! binaries, each exporting over OTLP, handle an event published with a known `traceparent`; the
//! trace is then read back through Jaeger's query API and checked link by link, across the Kafka
//! header, the outbox row, the D1 HTTP call and both processes.
//!
//! Both processes batch spans with a ten-minute schedule, so the spans reach Jaeger only through
//! the flush each binary does on SIGTERM: the test also proves nothing is lost at shutdown.
//!
//! Needs: `scripts/services jaeger` (sets nothing; `eval "$(scripts/services env)"` exports
//! `JAEGER_QUERY_URL`), and the simulator binary beside the worker's (`cargo build --workspace`).
//! OTLP goes to `JAEGER_OTLP_GRPC` (default `http://127.0.0.1:4317`).

use std::time::Duration;

use card_registrar::avro::encode::Framing;
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::workload::{Generator, Plan};
use serde_json::Value;

use crate::helpers::{TestDb, TestKeys, TestTopics};
use crate::processes::{Simulator, Worker, publish_with_traceparent};

/// Ten minutes: nothing is exported on schedule during the test, only by the shutdown flush.
const BATCH_DELAY_MS: &str = "600000";

fn jaeger_query_url() -> String {
    std::env::var("JAEGER_QUERY_URL").unwrap_or_else(|_| {
        panic!(
            "JAEGER_QUERY_URL is not set: this test needs a real Jaeger. Run `scripts/services jaeger` \
             (builds it once, then starts it in about a second), then `eval \"$(scripts/services env)\"`"
        )
    })
}

/// Environment both processes share: OTLP export to Jaeger, batches leave only on shutdown.
fn otel_env() -> Vec<(String, String)> {
    let endpoint = std::env::var("JAEGER_OTLP_GRPC").unwrap_or_else(|_| "http://127.0.0.1:4317".into());
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), BATCH_DELAY_MS.into()),
    ]
}

/// A trace as Jaeger's query API returns it: its spans and the service of each.
struct JaegerTrace {
    spans: Vec<Value>,
    processes: Value,
}

impl JaegerTrace {
    /// Polls `GET /api/traces/{trace_id}` until every operation in `expected` is there (60 s at most).
    async fn fetch(query: &str, trace_id: &str, expected: &[&str]) -> Self {
        let url = format!("{query}/api/traces/{trace_id}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let body: Option<Value> = match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                _ => None,
            };
            let trace = body.map(|b| Self {
                spans: b["data"][0]["spans"].as_array().cloned().unwrap_or_default(),
                processes: b["data"][0]["processes"].clone(),
            });
            if let Some(trace) = trace {
                if expected.iter().all(|name| trace.spans.iter().any(|s| s["operationName"] == *name)) {
                    return trace;
                }
                let names: Vec<&Value> = trace.spans.iter().map(|s| &s["operationName"]).collect();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "trace {trace_id} in Jaeger holds only {names:?}"
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trace {trace_id} never reached Jaeger at {query}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The one span with this operation name.
    fn one(&self, name: &str) -> &Value {
        let found: Vec<&Value> = self.spans.iter().filter(|s| s["operationName"] == name).collect();
        assert_eq!(found.len(), 1, "spans named {name}: {found:#?}");
        found[0]
    }

    fn service(&self, span: &Value) -> String {
        let process = span["processID"].as_str().unwrap_or_default();
        self.processes[process]["serviceName"].as_str().unwrap_or_default().to_owned()
    }

    /// Asserts `child` is in `service` and a child of the span with id `parent_id`.
    fn assert_child(&self, child: &str, parent_id: &str, service: &str) {
        let span = self.one(child);
        let parent = span["references"]
            .as_array()
            .and_then(|refs| refs.iter().find(|r| r["refType"] == "CHILD_OF"))
            .map(|r| r["spanID"].as_str().unwrap_or_default().to_owned());
        assert_eq!(parent.as_deref(), Some(parent_id), "parent of {child}: {span:#}");
        assert_eq!(self.service(span), service, "service of {child}");
    }

    fn id(&self, name: &str) -> String {
        self.one(name)["spanID"].as_str().unwrap_or_default().to_owned()
    }

    fn tag(&self, name: &str, key: &str) -> Option<String> {
        let tags = self.one(name)["tags"].as_array()?;
        let value = &tags.iter().find(|t| t["key"] == key)?["value"];
        Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_shows_one_trace_from_the_kafka_header_through_both_processes() {
    let query = jaeger_query_url();
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let sim = Simulator::spawn(&keys, &otel_env());
    let group = format!("trace-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::spawn(&db, &topics, &keys, &group, &sim.base_url, &otel_env());
    worker.wait_ready(Duration::from_secs(60)).await;

    let mut g =
        Generator::new(SchemaSet::embedded().unwrap(), keys.card_public(), Framing::SingleObject, 1, "jg");
    let card = g.card(0, Plan::CreatedOnly).unwrap();
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let producer_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    publish_with_traceparent(&topics.created, &card.phase1[0], &format!("00-{trace_id}-{producer_span}-01"))
        .await;
    worker.wait_for_status(&db, &card.card_id, "DONE", Duration::from_secs(60)).await;
    assert_eq!(sim.effective_registrations().await, 1);
    worker.terminate(Duration::from_secs(30));
    sim.terminate(Duration::from_secs(30));

    let (put, token_endpoint) =
        ("PUT /banking/v2/issuers/{issuer_id}/cards/{card_id}", "POST /authz/v1/oauth2/token");
    let expected = [
        "ingest.message",
        "card.decide",
        "dispatch.attempt",
        "d1.register_card",
        "d1.token",
        put,
        token_endpoint,
    ];
    let trace = JaegerTrace::fetch(&query, &trace_id, &expected).await;
    let (service, simulator) = ("card-registrar", "d1-simulator");
    trace.assert_child("ingest.message", producer_span, service);
    assert_eq!(
        trace.tag("ingest.message", "messaging.destination.name").as_deref(),
        Some(topics.created.as_str())
    );
    assert_eq!(trace.tag("ingest.message", "card_id"), Some(card.card_id.clone()));
    trace.assert_child("card.decide", &trace.id("ingest.message"), service);
    assert_eq!(trace.tag("card.decide", "effect").as_deref(), Some("ENQUEUED"));
    trace.assert_child("dispatch.attempt", &trace.id("card.decide"), service);
    trace.assert_child("d1.register_card", &trace.id("dispatch.attempt"), service);
    trace.assert_child("d1.token", &trace.id("d1.register_card"), service);
    trace.assert_child(put, &trace.id("d1.register_card"), simulator);
    assert_eq!(trace.tag(put, "http.response.status_code").as_deref(), Some("204"));
    trace.assert_child(token_endpoint, &trace.id("d1.token"), simulator);
}
