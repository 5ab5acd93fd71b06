//! End to end against a real Jaeger v2: spans exported over OTLP (gRPC and HTTP/protobuf) arrive
//! under the trace of their W3C parent and can be read back through Jaeger's query API.
//!
//! Needs Jaeger: `scripts/services jaeger`, then `eval "$(scripts/services env)"` before `cargo test`
//! (scripts/test does both)
//! (OTLP at `JAEGER_OTLP_GRPC` / `JAEGER_OTLP_HTTP`, defaults `http://127.0.0.1:4317` / `:4318`).

use std::time::{Duration, Instant};

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::propagation_tests::settings;
use super::*;
use crate::config::LogFormat;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Polls `GET /api/traces/{trace_id}` until the span shows up, for at most 30 s.
async fn find_span(query: &str, trace_id: &str, operation: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("{query}/api/traces/{trace_id}");
    loop {
        let response = reqwest::get(&url).await.ok().filter(|r| r.status().is_success());
        if let Some(response) = response {
            let body: serde_json::Value = response.json().await.expect("Jaeger answers JSON");
            let found = body["data"][0]["spans"]
                .as_array()
                .and_then(|spans| spans.iter().find(|s| s["operationName"] == operation).cloned());
            if let Some(span) = found {
                return serde_json::json!({"span": span, "processes": body["data"][0]["processes"]});
            }
        }
        assert!(Instant::now() < deadline, "span {operation} of trace {trace_id} not in Jaeger after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn spans_exported_over_otlp_reach_jaeger_under_their_parent_trace() {
    let query = std::env::var("JAEGER_QUERY_URL").expect(
        "JAEGER_QUERY_URL is not set: run `scripts/services jaeger` and `eval \"$(scripts/services env)\"`",
    );
    let endpoints = [
        ("grpc", env_or("JAEGER_OTLP_GRPC", "http://127.0.0.1:4317")),
        ("http/protobuf", env_or("JAEGER_OTLP_HTTP", "http://127.0.0.1:4318")),
    ];
    for (protocol, endpoint) in endpoints {
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        let parent_span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
        let service = format!("card-registrar-test-{}", &trace_id[..8]);
        let mut settings = settings("info", LogFormat::Json);
        settings.otel_exporter_otlp_endpoint = Some(endpoint.parse().expect("endpoint URL"));
        settings.otel_exporter_otlp_protocol = protocol.to_owned();
        settings.otel_service_name = service.clone();
        let telemetry = build(&settings, LogBuffer::new()).expect("telemetry");
        let parent =
            parent_from_trace_headers(&format!("00-{trace_id}-{parent_span_id}-01"), None).expect("valid");

        tracing::dispatcher::with_default(telemetry.dispatch(), || {
            let span = tracing::info_span!("jaeger_e2e", outbox_id = "ob-1", protocol);
            span.set_parent(parent).expect("span not started yet");
            span.in_scope(|| tracing::info!("inside the exported span"));
        });
        telemetry.flush().await.expect("flush");
        telemetry.shutdown().await.expect("shutdown");

        let found = find_span(&query, &trace_id, "jaeger_e2e").await;
        let span = &found["span"];
        assert_eq!(span["traceID"], trace_id.as_str(), "{protocol}");
        assert_eq!(span["references"][0]["refType"], "CHILD_OF", "{protocol}");
        assert_eq!(span["references"][0]["spanID"], parent_span_id, "{protocol}");
        let process = span["processID"].as_str().expect("processID");
        assert_eq!(found["processes"][process]["serviceName"], service.as_str(), "{protocol}");
        let tags = span["tags"].as_array().expect("tags");
        assert!(tags.iter().any(|t| t["key"] == "outbox_id" && t["value"] == "ob-1"), "{protocol}: {tags:?}");
    }
}
