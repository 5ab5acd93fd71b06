//! One server span per request, named `<METHOD> <route template>` (OpenTelemetry HTTP naming),
//! whose parent is the caller's W3C `traceparent` / `tracestate`, so the simulator's work shows
//! up inside the client's trace.
//!
//! The span holds the route template (`/banking/v2/issuers/{issuer_id}/cards/{card_id}`), never
//! the request path: a path segment may be a PAN sent as a cardId. Only W3C TraceContext is read,
//! with this crate's own extractor (no code shared with card-registrar's client).

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Wraps the handler in its request span and records the response status on it.
pub(crate) async fn request_span(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    // Without a matched route (404 fallback), OpenTelemetry names the span by the method alone.
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.clone(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
    );
    if let Some(parent) = caller_context(request.headers()) {
        let _ = span.set_parent(parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The caller's trace context, when the request carries a valid W3C `traceparent`.
fn caller_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let cx = TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Reads trace headers (UTF-8 values only) for the propagator.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
