//! Request spans: each request runs in a server span named after its route template, a child of
//! the caller's W3C `traceparent`, with the response status and never the request path.
//!
//! Its own test binary: the test reads spans through a thread-local subscriber, and `tracing`
//! caches each callsite's interest process-wide, so a request served by a parallel test on another
//! thread (without a subscriber) could disable the span callsite for this one.

#[allow(dead_code)]
#[path = "sim/helpers.rs"]
mod helpers;

use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt as _;

use helpers::{PAN, TestSim};

/// Keeps every finished span.
#[derive(Debug, Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Spans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<SpanData> {
        self.0.lock().unwrap().iter().filter(|s| s.name == name).cloned().collect()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

// One thread: the subscriber set below is the thread's default, and the server runs on it too.
#[tokio::test(flavor = "current_thread")]
async fn request_spans_continue_the_callers_trace_and_name_the_route_not_the_path() {
    let spans = Spans::default();
    let provider =
        SdkTracerProvider::builder().with_span_processor(SimpleSpanProcessor::new(spans.clone())).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let t = TestSim::start().await;
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let token = t.token().await;
    let body = t.register_body(PAN, "1230");
    let put = t
        .http
        .put(t.card_url("v2", "card-traced"))
        .bearer_auth(&token)
        .header("traceparent", &traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    // A PAN as the cardId is refused; the span must not hold it either.
    let refused = t.put_card(&token, PAN, &body).await;
    assert_eq!(refused.status(), 400);

    let route = "PUT /banking/v2/issuers/{issuer_id}/cards/{card_id}";
    let puts = spans.named(route);
    assert_eq!(puts.len(), 2, "one span per PUT");
    let traced = puts.iter().find(|s| s.span_context.trace_id().to_string() == trace_id).expect("traced PUT");
    assert_eq!(traced.parent_span_id.to_string(), caller_span);
    assert_eq!(traced.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(attribute(traced, "http.response.status_code").as_deref(), Some("204"));
    assert_eq!(
        attribute(traced, "http.route").as_deref(),
        Some("/banking/v2/issuers/{issuer_id}/cards/{card_id}")
    );
    let untraced =
        puts.iter().find(|s| s.span_context.trace_id().to_string() != trace_id).expect("other PUT");
    assert_eq!(attribute(untraced, "http.response.status_code").as_deref(), Some("400"));
    assert_eq!(spans.named("POST /authz/v1/oauth2/token").len(), 1);

    let all = spans.0.lock().unwrap().clone();
    for span in &all {
        let text = format!("{} {:?} {:?}", span.name, span.attributes, span.events);
        assert!(!text.contains(PAN), "a span holds the PAN: {text}");
    }
}
