//! Sending one HTTP request to D1: trace-context propagation, latency and status metrics, the
//! span's `http.status_code`, and transport-failure classification.
//!
//! It never logs headers or bodies: requests carry a bearer token and encrypted card data.

use std::time::Instant;

use reqwest::header::HeaderMap;

use super::error::{D1Error, Operation, classify_transport};
use crate::telemetry::metrics::{D1_REQUEST_DURATION, D1_REQUESTS};
use crate::telemetry::propagation::inject_current_context;

/// The most of a response body we read: D1 answers are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

/// Sends `request`, recording metrics and the status on the current span.
pub(crate) async fn send(
    op: Operation,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, D1Error> {
    // Always W3C, whatever global propagator is (or is not) installed: D1 and the simulator read it.
    let mut trace_headers = HeaderMap::new();
    inject_current_context(&mut trace_headers);
    let started = Instant::now();
    let result = request.headers(trace_headers).send().await;
    metrics::histogram!(D1_REQUEST_DURATION, "operation" => op.as_str())
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            metrics::counter!(D1_REQUESTS, "operation" => op.as_str(), "status" => status.to_string())
                .increment(1);
            tracing::Span::current().record("http.status_code", status);
            Ok(response)
        }
        Err(e) => {
            let (error, label) = classify_transport(op, &e);
            metrics::counter!(D1_REQUESTS, "operation" => op.as_str(), "status" => label).increment(1);
            Err(error)
        }
    }
}

/// Reads at most [`MAX_BODY`] bytes of the body; a body that breaks off yields what arrived.
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_BODY {
            break;
        }
    }
    Ok(body)
}
