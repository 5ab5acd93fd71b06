//! Log lines and spans as a test captures them: JSON with span fields, text, filters, span capture.

use super::propagation_tests::settings;
use super::*;
use crate::config::LogFormat;

/// Runs `work` under a capturing subscriber; returns the log lines and finished spans.
fn captured(rust_log: &str, format: LogFormat, work: impl FnOnce()) -> (Vec<String>, Vec<CapturedSpan>) {
    let (logs, spans) = (LogBuffer::new(), SpanCapture::new());
    let telemetry = build_capturing(&settings(rust_log, format), logs.clone(), &spans).expect("telemetry");
    tracing::dispatcher::with_default(telemetry.dispatch(), work);
    (logs.lines(), spans.spans())
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"))
}

fn ingest_message_with_an_event() {
    let batch = tracing::info_span!("ingest_batch", topic = "card-created", partition = 3_i32);
    let message = tracing::info_span!(
        parent: &batch,
        "ingest_message",
        offset = 42_i64,
        card_id = "card-7",
        event_id = "7a1c",
        correlation_id = "corr-1",
        outbox_id = tracing::field::Empty,
    );
    message.record("outbox_id", "ob-9");
    message.in_scope(|| tracing::info!(outcome = "applied", level = "shadowed", "message applied"));
}

#[test]
fn json_lines_carry_the_fields_of_every_enclosing_span() {
    let (lines, _) = captured("info", LogFormat::Json, ingest_message_with_an_event);

    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = json(&lines[0]);
    for (key, value) in [
        ("topic", serde_json::json!("card-created")),
        ("partition", serde_json::json!(3)),
        ("offset", serde_json::json!(42)),
        ("card_id", serde_json::json!("card-7")),
        ("event_id", serde_json::json!("7a1c")),
        ("correlation_id", serde_json::json!("corr-1")),
        ("outbox_id", serde_json::json!("ob-9")),
        ("outcome", serde_json::json!("applied")),
        ("message", serde_json::json!("message applied")),
        ("level", serde_json::json!("INFO")),
        ("field.level", serde_json::json!("shadowed")),
        ("span", serde_json::json!("ingest_message")),
    ] {
        assert_eq!(line[key], value, "{key} in {line}");
    }
    let trace_id = line["trace_id"].as_str().expect("trace_id");
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "{trace_id}");
    assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn inner_span_fields_win_over_outer_ones_and_event_fields_over_both() {
    let (lines, _) = captured("info", LogFormat::Json, || {
        let outer = tracing::info_span!("outer", card_id = "outer", topic = "outer");
        let inner = tracing::info_span!(parent: &outer, "inner", card_id = "inner", topic = "inner");
        inner.in_scope(|| tracing::info!(topic = "event", "hello"));
    });

    let line = json(&lines[0]);
    assert_eq!((line["card_id"].as_str(), line["topic"].as_str()), (Some("inner"), Some("event")));
}

#[test]
fn text_lines_name_the_spans_and_their_fields() {
    let (lines, _) = captured("info", LogFormat::Text, ingest_message_with_an_event);

    assert_eq!(lines.len(), 1, "{lines:?}");
    for part in ["INFO", "ingest_batch{", "topic=\"card-created\"", "card_id=\"card-7\"", "message applied"] {
        assert!(lines[0].contains(part), "{part} missing in {}", lines[0]);
    }
    assert!(!lines[0].contains('\u{1b}'), "no colour codes in captured text");
}

#[test]
fn rust_log_silences_log_lines_but_info_spans_are_still_traced() {
    let (lines, spans) = captured("warn", LogFormat::Json, || {
        tracing::info_span!("quiet_span").in_scope(|| tracing::info!("not logged"));
        tracing::warn!("logged");
    });

    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(json(&lines[0])["message"], "logged");
    assert_eq!(spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["quiet_span"]);
}

#[test]
fn debug_spans_are_traced_only_when_rust_log_asks_for_them() {
    let work = || tracing::debug_span!("verbose_span").in_scope(|| tracing::debug!("detail"));

    let (_, quiet) = captured("info", LogFormat::Json, work);
    let (lines, verbose) = captured("trace", LogFormat::Json, work);

    assert!(quiet.is_empty());
    assert_eq!(verbose.len(), 1);
    assert_eq!(lines.len(), 1);
}

#[test]
fn span_capture_keeps_every_attribute_and_event_of_every_span() {
    let (_, spans) = captured("info", LogFormat::Json, || {
        let span = tracing::info_span!("d1_register", card_id = "card-7", status = tracing::field::Empty);
        span.in_scope(|| {
            for attempt in 0..200_u32 {
                tracing::info!(attempt, "attempt made");
            }
        });
        span.record("status", 201_u16);
    });

    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.attribute("card_id"), Some("card-7"));
    assert_eq!(span.attribute("status"), Some("201"));
    assert_eq!(span.events.len(), 200, "no event dropped by span limits");
    assert_eq!(span.events[199].name, "attempt made");
    assert!(span.events[199].attributes.contains(&("attempt".into(), "199".into())));
    assert!(span.contains("card-7") && span.contains("attempt made") && !span.contains("4111111111111111"));
}

#[test]
fn exporter_crates_never_reach_the_trace_layer() {
    let (_, spans) = captured("trace", LogFormat::Json, || {
        tracing::info_span!(target: "h2::proto", "h2_internal").in_scope(|| {});
        tracing::info_span!(target: "tonic::transport", "tonic_internal").in_scope(|| {});
        tracing::info_span!(target: "opentelemetry_sdk", "sdk_internal").in_scope(|| {});
        tracing::info_span!("ours").in_scope(|| {});
    });

    assert_eq!(spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["ours"]);
}

#[test]
fn log_buffer_clear_forgets_earlier_lines() {
    let logs = LogBuffer::new();
    let telemetry = build(&settings("info", LogFormat::Json), logs.clone()).expect("telemetry");
    tracing::dispatcher::with_default(telemetry.dispatch(), || tracing::info!("first"));
    logs.clear();
    tracing::dispatcher::with_default(telemetry.dispatch(), || tracing::info!("second"));

    assert_eq!(logs.lines().len(), 1);
    assert_eq!(json(&logs.lines()[0])["message"], "second");
}

#[test]
fn a_malformed_rust_log_is_an_error_naming_the_variable() {
    let error =
        build(&settings("card_registrar=loud", LogFormat::Json), LogBuffer::new()).expect_err("bad filter");

    assert!(error.to_string().contains("RUST_LOG"), "{error}");
}

#[test]
fn an_otlp_endpoint_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let mut settings = settings("info", LogFormat::Json);
    settings.otel_exporter_otlp_endpoint = Some("http://127.0.0.1:4317".parse().expect("url"));

    let error = build(&settings, LogBuffer::new()).expect_err("no runtime");

    assert!(matches!(error, TelemetryError::NoRuntime), "{error}");
}

#[test]
fn per_message_ingest_spans_reach_traces_but_not_log_lines() {
    let (lines, spans) = captured("trace", LogFormat::Json, || {
        let batch = tracing::info_span!("ingest.batch", topic = "card-created");
        batch.in_scope(|| {
            let message =
                tracing::info_span!(target: "card_registrar::ingest::spans", "ingest.message", card_id = "card-7");
            message.in_scope(|| tracing::warn!("inside the message span"));
        });
    });

    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = json(&lines[0]);
    assert_eq!(line["span"], "ingest.batch", "{line}");
    assert_eq!(line["topic"], "card-created");
    assert!(line.get("card_id").is_none(), "{line}");
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ingest.message", "ingest.batch"]);
}
