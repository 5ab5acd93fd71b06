//! W3C trace context across our boundaries: Kafka headers in, outbox rows between ingest and
//! dispatch (so dispatch continues the trace, also after a restart), HTTP headers out.
//!
//! Always W3C TraceContext (`traceparent` / `tracestate`), whatever the global propagator is; a
//! malformed or absent `traceparent` gives no parent, never an error. Works whether or not spans
//! are exported: [`super::init`] always runs the OpenTelemetry layer, so the current span has a
//! real context.
//!
//! Typical use in ingest (the fallback keeps the producer's trace when no subscriber is installed):
//! ```
//! use card_registrar::telemetry::propagation::*;
//! use tracing_opentelemetry::OpenTelemetrySpanExt as _;
//!
//! let headers = [("traceparent", &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..])];
//! let parent = parent_from_kafka_headers(headers);
//! let span = tracing::info_span!("ingest_message");
//! if let Some(parent) = &parent {
//!     let _ = span.set_parent(parent.clone());
//! }
//! let stored = span.in_scope(|| {
//!     current_trace_headers().or_else(|| parent.as_ref().and_then(trace_headers_of))
//! });
//! assert!(stored.is_some());
//! ```

use std::collections::HashMap;
use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::{Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// A span's W3C trace context as text, as stored in an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `traceparent`, e.g. `00-<32 hex trace id>-<16 hex span id>-01`.
    pub traceparent: String,
    /// `tracestate`, when the trace carries vendor state.
    pub tracestate: Option<String>,
}

/// A parent context from Kafka message headers (`traceparent`, `tracestate`; names matched
/// case-insensitively, values must be UTF-8). `None` when there is no valid `traceparent`.
pub fn parent_from_kafka_headers<'a, I>(headers: I) -> Option<Context>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut carrier = HashMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if (name == TRACEPARENT || name == TRACESTATE)
            && !carrier.contains_key(&name)
            && let Ok(value) = std::str::from_utf8(value)
        {
            carrier.insert(name, value.to_owned());
        }
    }
    extract(&carrier)
}

/// A parent context from a stored `traceparent` / `tracestate`. `None` when `traceparent` is malformed.
pub fn parent_from_trace_headers(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let mut carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    extract(&carrier)
}

fn extract(carrier: &HashMap<String, String>) -> Option<Context> {
    // The SDK parser accepts short ids (it parses hex numbers); W3C fixes the lengths.
    if !carrier.get(TRACEPARENT).is_some_and(|tp| is_w3c_traceparent(tp)) {
        return None;
    }
    // Extract onto an empty context: a failed extraction must not fall back to whatever is current.
    let cx = PROPAGATOR.extract_with_context(&Context::new(), carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// `version-traceid-parentid-flags` with 2, 32, 16 and 2 lowercase hex digits; version 00 has exactly
/// these four fields, later versions may append more (W3C Trace Context, section 3.2).
fn is_w3c_traceparent(value: &str) -> bool {
    let fields: Vec<&str> = value.trim().split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    fields.len() >= 4
        && [(fields[0], 2), (fields[1], 32), (fields[2], 16), (fields[3], 2)]
            .iter()
            .all(|(f, len)| hex(f, *len))
        && (fields[0] != "00" || fields.len() == 4)
}

/// The W3C trace context of the current `tracing` span, else of the current OpenTelemetry context.
///
/// `None` when neither has a valid span context: no subscriber with the OpenTelemetry layer is
/// installed (e.g. a unit test), or the span is disabled. Callers holding the incoming parent fall
/// back to `trace_headers_of(&parent)`, which passes the producer's trace through unchanged.
pub fn current_trace_headers() -> Option<TraceHeaders> {
    trace_headers_of(&tracing::Span::current().context()).or_else(|| trace_headers_of(&Context::current()))
}

/// The W3C trace context of `cx`, or `None` when it holds no valid span context.
pub fn trace_headers_of(cx: &Context) -> Option<TraceHeaders> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    PROPAGATOR.inject_context(cx, &mut carrier);
    let traceparent = carrier.remove(TRACEPARENT)?;
    let tracestate = carrier.remove(TRACESTATE).filter(|s| !s.is_empty());
    Some(TraceHeaders { traceparent, tracestate })
}

/// Adds the current span's `traceparent` / `tracestate` to outgoing HTTP headers (a no-op when
/// there is no valid current span context). `reqwest::header::HeaderMap` is this type.
pub fn inject_current_context(headers: &mut http::HeaderMap) {
    if let Some(trace) = current_trace_headers() {
        inject(&trace, headers);
    }
}

/// Adds the given trace context to HTTP headers, replacing any present.
pub fn inject(trace: &TraceHeaders, headers: &mut http::HeaderMap) {
    let mut injector = HeaderInjector(headers);
    injector.set(TRACEPARENT, trace.traceparent.clone());
    if let Some(state) = &trace.tracestate {
        injector.set(TRACESTATE, state.clone());
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // W3C values are visible ASCII; anything else is dropped rather than sent malformed.
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}
