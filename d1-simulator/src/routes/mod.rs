//! The HTTP surface: D1's token, Register Card and Get Card endpoints, and the `/_sim` admin
//! routes. Shared helpers for answering: refusals are counted by errorCode and logged by code only
//! (a path or body might hold a PAN), injected faults are counted by kind. Every request runs
//! in a server span under the caller's W3C trace context (`trace`).

mod admin;
mod cards;
mod oauth;
mod trace;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::api_error::ApiError;
use crate::card::is_issuer_id;
use crate::injector::{Injected, Injector};
use crate::state::SimState;

/// Shared state as handlers receive it.
type Shared = Arc<SimState>;

/// The whole application.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/authz/v1/oauth2/token", post(oauth::token))
        .route("/banking/v2/issuers/{issuer_id}/cards/{card_id}", put(cards::register))
        .route("/banking/v1/issuers/{issuer_id}/cards/{card_id}", get(cards::get))
        .nest("/_sim", admin::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint") })
        .layer(axum::middleware::from_fn(trace::request_span))
        .with_state(state)
}

/// Why a request did not get its normal answer.
enum Failure {
    /// The request broke a rule: counted in `rejected_by_reason`.
    Refused(ApiError),
    /// A fault was injected (already counted by kind).
    Injected(ApiError),
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Self::Refused(error)
    }
}

/// Turns a handler's result into the response, counting refusals.
fn respond(state: &SimState, endpoint: &'static str, result: Result<Response, Failure>) -> Response {
    match result {
        Ok(response) => response,
        Err(Failure::Refused(error)) => {
            state.record(|recorder| recorder.rejected(&error.error_code));
            tracing::debug!(endpoint, status = error.status.as_u16(), error_code = %error.error_code, "refused");
            error.into_response()
        }
        Err(Failure::Injected(error)) => {
            tracing::debug!(endpoint, status = error.status.as_u16(), error_code = %error.error_code, "fault injected");
            error.into_response()
        }
    }
}

/// Waits for the latency fault, if any.
async fn injected_latency(state: &SimState) {
    if let Some(delay) = state.inject(Injector::latency) {
        state.record(|recorder| recorder.faults().latency += 1);
        state.pause(delay).await;
    }
}

/// The rate limit and the error-rate faults.
fn injected_gate(state: &SimState) -> Result<(), Failure> {
    let Some(injected) = state.inject(|injector| injector.gate(Instant::now())) else {
        return Ok(());
    };
    let error = match injected {
        Injected::RateLimited { retry_after_secs } => {
            state.record(|recorder| recorder.faults().rate_limited += 1);
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "too many requests")
                .with_retry_after(retry_after_secs)
        }
        Injected::Status { status, retry_after_secs } => {
            state.record(|recorder| *recorder.faults().errors.entry(status).or_default() += 1);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match status {
                StatusCode::TOO_MANY_REQUESTS => "TOO_MANY_REQUESTS",
                StatusCode::BAD_GATEWAY => "BAD_GATEWAY",
                StatusCode::SERVICE_UNAVAILABLE => "SERVICE_UNAVAILABLE",
                StatusCode::GATEWAY_TIMEOUT => "GATEWAY_TIMEOUT",
                _ => "INTERNAL_SERVER_ERROR",
            };
            let error = ApiError::new(status, code, "injected fault");
            match retry_after_secs {
                Some(secs) => error.with_retry_after(secs),
                None => error,
            }
        }
    };
    Err(Failure::Injected(error))
}

/// Checks the path's issuerId: 400 when malformed, 403 when not the configured issuer.
fn check_issuer(state: &SimState, issuer_id: &str) -> Result<(), ApiError> {
    if !is_issuer_id(issuer_id) {
        return Err(ApiError::bad_request(
            "INVALID_ISSUER_ID",
            "issuerId must be 10 characters of [A-Za-z0-9_-]",
        ));
    }
    if issuer_id != state.issuer_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ISSUER_MISMATCH",
            "issuerId is not this client's issuer",
        ));
    }
    Ok(())
}
