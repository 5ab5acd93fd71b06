//! Trace-context helpers: Kafka headers and stored rows in, HTTP headers out, malformed input ignored.

use opentelemetry::trace::TraceContextExt as _;
use proptest::prelude::*;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::propagation::inject;
use super::*;
use crate::config::LogFormat;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN_ID: &str = "b7ad6b7169203331";

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-{flags}")
}

pub(super) fn settings(rust_log: &str, log_format: LogFormat) -> TelemetrySettings {
    TelemetrySettings {
        rust_log: rust_log.to_owned(),
        log_format,
        otel_exporter_otlp_endpoint: None,
        otel_exporter_otlp_protocol: "grpc".to_owned(),
        otel_service_name: "card-registrar-test".to_owned(),
    }
}

/// Telemetry without an exporter, as a process without `OTEL_EXPORTER_OTLP_ENDPOINT` runs it.
fn not_exporting() -> Telemetry {
    build(&settings("info", LogFormat::Json), LogBuffer::new()).expect("telemetry")
}

/// Splits a traceparent into (version, trace id, span id, flags).
fn parts(traceparent: &str) -> (String, String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

#[test]
fn kafka_traceparent_becomes_the_parent_of_the_span_and_flows_to_the_outbox_headers() {
    let telemetry = not_exporting();
    let _guard = tracing::dispatcher::set_default(telemetry.dispatch());
    let incoming = traceparent("01");
    let headers = [("traceparent", incoming.as_bytes()), ("tracestate", &b"vendor=abc"[..])];

    let parent = parent_from_kafka_headers(headers).expect("valid parent");
    let span = tracing::info_span!("ingest_message");
    span.set_parent(parent).expect("span not started yet");
    let stored = span.in_scope(current_trace_headers).expect("current span has a context");

    let (version, trace_id, span_id, flags) = parts(&stored.traceparent);
    assert_eq!((version.as_str(), trace_id.as_str(), flags.as_str()), ("00", TRACE_ID, "01"));
    assert_ne!(span_id, PARENT_SPAN_ID, "the stored context is our span, a child of the producer's");
    assert_eq!(stored.tracestate.as_deref(), Some("vendor=abc"));
}

#[test]
fn stored_trace_headers_round_trip_through_a_context_unchanged() {
    for flags in ["01", "00"] {
        let stored = TraceHeaders { traceparent: traceparent(flags), tracestate: Some("a=1,b=2".into()) };

        let cx = parent_from_trace_headers(&stored.traceparent, stored.tracestate.as_deref()).expect("valid");

        assert!(cx.span().span_context().is_remote());
        assert_eq!(trace_headers_of(&cx), Some(stored));
    }
}

#[test]
fn dispatch_span_continues_the_stored_trace_as_a_child_of_the_stored_span() {
    let spans = SpanCapture::new();
    let telemetry =
        build_capturing(&settings("info", LogFormat::Json), LogBuffer::new(), &spans).expect("telemetry");
    let parent = parent_from_trace_headers(&traceparent("01"), None).expect("valid");

    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        let span = tracing::info_span!("dispatch_row");
        span.set_parent(parent).expect("span not started yet");
        span.in_scope(|| tracing::info!("calling D1"));
    });

    let captured = spans.spans();
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].name, "dispatch_row");
    assert_eq!(
        (captured[0].trace_id.as_str(), captured[0].parent_span_id.as_str()),
        (TRACE_ID, PARENT_SPAN_ID)
    );
}

#[test]
fn malformed_or_missing_traceparent_gives_no_parent() {
    let malformed = [
        String::new(),
        "garbage".into(),
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}"),
        format!("00-{}-{PARENT_SPAN_ID}-01", "0".repeat(32)),
        format!("00-{TRACE_ID}-{}-01", "0".repeat(16)),
        format!("00-{TRACE_ID}-b7ad6b71692033-01"),
        format!("ff-{TRACE_ID}-{PARENT_SPAN_ID}-01"),
        format!("00-{}-{PARENT_SPAN_ID}-01", "z".repeat(32)),
        format!("00-{}-{PARENT_SPAN_ID}-01", TRACE_ID.to_uppercase()),
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01-extra"),
    ];
    for traceparent in &malformed {
        assert!(parent_from_trace_headers(traceparent, Some("a=1")).is_none(), "{traceparent:?}");
        assert!(
            parent_from_kafka_headers([("traceparent", traceparent.as_bytes())]).is_none(),
            "{traceparent:?}"
        );
    }
    assert!(parent_from_kafka_headers([("traceparent", &[0xff, 0xfe, 0x00][..])]).is_none(), "not UTF-8");
    assert!(parent_from_kafka_headers([("tracestate", &b"a=1"[..])]).is_none(), "no traceparent");
    assert!(parent_from_kafka_headers(std::iter::empty()).is_none());
}

#[test]
fn kafka_header_names_match_case_insensitively_and_the_first_traceparent_wins() {
    let first = traceparent("01");
    let second = format!("00-{}-{PARENT_SPAN_ID}-01", "1".repeat(32));
    let headers = [("TraceParent", first.as_bytes()), ("traceparent", second.as_bytes())];

    let cx = parent_from_kafka_headers(headers).expect("valid");

    assert_eq!(cx.span().span_context().trace_id().to_string(), TRACE_ID);
}

#[test]
fn inject_current_context_adds_the_current_span_to_http_headers() {
    let telemetry = not_exporting();
    let _guard = tracing::dispatcher::set_default(telemetry.dispatch());
    let span = tracing::info_span!("d1_register");
    span.set_parent(parent_from_trace_headers(&traceparent("01"), Some("v=1")).expect("valid"))
        .expect("parent");
    let mut headers = http::HeaderMap::new();

    let expected = span.in_scope(|| {
        inject_current_context(&mut headers);
        current_trace_headers().expect("context")
    });

    assert_eq!(headers.get("traceparent").and_then(|v| v.to_str().ok()), Some(expected.traceparent.as_str()));
    assert_eq!(headers.get("tracestate").and_then(|v| v.to_str().ok()), Some("v=1"));
    assert!(expected.traceparent.contains(TRACE_ID));
}

#[test]
fn without_a_subscriber_there_is_no_current_context_and_the_incoming_one_passes_through() {
    let parent = parent_from_trace_headers(&traceparent("01"), None).expect("valid");
    let mut headers = http::HeaderMap::new();

    let span = tracing::info_span!("ingest_message");
    let (current, stored) = span.in_scope(|| {
        inject_current_context(&mut headers);
        (current_trace_headers(), current_trace_headers().or_else(|| trace_headers_of(&parent)))
    });

    assert_eq!(current, None);
    assert!(headers.is_empty());
    assert_eq!(stored.map(|t| t.traceparent), Some(traceparent("01")));
}

#[test]
fn inject_replaces_trace_headers_already_present() {
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", http::HeaderValue::from_static("stale"));

    inject(&TraceHeaders { traceparent: traceparent("01"), tracestate: None }, &mut headers);

    assert_eq!(headers.get_all("traceparent").iter().count(), 1);
    assert_eq!(headers.get("traceparent").and_then(|v| v.to_str().ok()), Some(traceparent("01").as_str()));
    assert!(headers.get("tracestate").is_none());
}

proptest! {
    #[test]
    fn any_header_bytes_give_either_no_parent_or_a_valid_one(
        value in proptest::collection::vec(any::<u8>(), 0..80),
        text in "[0-9a-f-]{0,60}",
    ) {
        for bytes in [value.as_slice(), text.as_bytes()] {
            if let Some(cx) = parent_from_kafka_headers([("traceparent", bytes)]) {
                prop_assert!(cx.span().span_context().is_valid());
                prop_assert!(trace_headers_of(&cx).is_some());
            }
        }
    }
}
