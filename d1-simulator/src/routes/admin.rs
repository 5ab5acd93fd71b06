//! The unauthenticated `/_sim` admin routes: health, stats (and the same without the per-card
//! counts, for polling), faults (read and replace), reset,
//! token expiry, and seeding/reading cards. For tests and demos only; never exposes a PAN
//! (the simulator holds none).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use super::Shared;
use crate::api_error::ApiError;
use crate::card::SeedCard;
use crate::faults::Faults;

/// The admin routes, nested under `/_sim`.
pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/stats", get(|State(state): State<Shared>| async move { axum::Json(state.stats(true)) }))
        .route("/counts", get(|State(state): State<Shared>| async move { axum::Json(state.stats(false)) }))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/reset", post(reset))
        .route("/tokens/expire", post(expire_tokens))
        .route("/cards/{card_id}", put(seed_card).get(show_card))
}

async fn get_faults(State(state): State<Shared>) -> axum::Json<Faults> {
    axum::Json(state.faults())
}

async fn put_faults(State(state): State<Shared>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(error) => {
            return ApiError::bad_request("INVALID_FAULTS", format!("faults: {error}")).into_response();
        }
    };
    match state.set_faults(faults.clone()) {
        Ok(()) => {
            tracing::info!(?faults, "faults replaced");
            axum::Json(faults).into_response()
        }
        Err(error) => ApiError::bad_request("INVALID_FAULTS", error.to_string()).into_response(),
    }
}

async fn reset(State(state): State<Shared>) -> StatusCode {
    state.reset();
    tracing::info!("simulator reset");
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(state): State<Shared>) -> StatusCode {
    state.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn seed_card(State(state): State<Shared>, Path(card_id): Path<String>, body: Bytes) -> Response {
    // The seed body holds no card data, but stay uniform: never echo parser messages.
    let Ok(seed) = serde_json::from_slice::<SeedCard>(&body) else {
        return ApiError::bad_request("INVALID_SEED", "the body must be {consumerId, cardProductId, state?}")
            .into_response();
    };
    match state.seed(&card_id, seed) {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => (StatusCode::OK, axum::Json(json!({"status": "already stored"}))).into_response(),
        Err(error) => ApiError::bad_request(error.error_code(), error.to_string()).into_response(),
    }
}

async fn show_card(State(state): State<Shared>, Path(card_id): Path<String>) -> Response {
    match state.card(&card_id) {
        Some(card) => axum::Json(card).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "CARD_NOT_FOUND", "no such card").into_response(),
    }
}
