//! `POST /authz/v1/oauth2/token`: the JWT-bearer grant (RFC 7523). A form-encoded or JSON body
//! with `grant_type` and `assertion`; a valid ES256 assertion earns an opaque Bearer token.
//! Only the latency faults apply here (`latency`, then `tokenLatency`). Never logs the assertion or the token.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Failure, Shared, injected_latency, respond};
use crate::api_error::ApiError;
use crate::jwt::verify_assertion;

/// The only grant type D1 documents for issuers.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    assertion: Option<String>,
}

/// Issues an access token for a valid assertion.
pub(super) async fn token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    injected_latency(&state).await;
    if let Some(delay) = state.inject(crate::injector::Injector::token_latency) {
        state.record(|recorder| recorder.faults().token_latency += 1);
        state.pause(delay).await;
    }
    let result = issue(&state, &headers, &body);
    respond(&state, "token", result)
}

fn issue(state: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response, Failure> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let request: TokenRequest = if is_json {
        serde_json::from_slice(body).map_err(|_| malformed())?
    } else {
        serde_urlencoded::from_bytes(body).map_err(|_| malformed())?
    };
    if request.grant_type.as_deref() != Some(JWT_BEARER) {
        return Err(ApiError::bad_request(
            "UNSUPPORTED_GRANT_TYPE",
            format!("grant_type must be {JWT_BEARER}"),
        )
        .into());
    }
    let assertion = request
        .assertion
        .filter(|assertion| !assertion.is_empty())
        .ok_or_else(|| ApiError::bad_request("INVALID_REQUEST", "assertion is required"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    verify_assertion(&assertion, &state.issuer_keys, &state.issuer_id, now)
        .map_err(|error| ApiError::unauthorized(error.error_code(), error.to_string()))?;

    let access_token = state.issue_token();
    tracing::debug!("access token issued");
    let body = json!({
        "access_token": access_token,
        "expires_in": state.token_ttl.as_secs(),
        "scope": "cards",
        "token_type": "Bearer",
    });
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn malformed() -> ApiError {
    ApiError::bad_request(
        "INVALID_REQUEST",
        "the body must be form-encoded or JSON with grant_type and assertion",
    )
}
