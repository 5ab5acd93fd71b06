//! Register Card (`PUT /banking/v2/issuers/{issuerId}/cards/{cardId}`) and Get Card
//! (`GET /banking/v1/issuers/{issuerId}/cards/{cardId}`). Order of checks for a PUT: token,
//! issuer, cardId pattern, body fields, `encryptedData`, card data, cardId vs PAN; then faults;
//! then the commit, which never overwrites. A "late commit" runs in a task of its own, so it
//! happens whether or not the client is still connected (as at a real backend). The clear PAN lives only inside the card check: it is
//! never logged, stored, counted or answered.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Failure, Shared, check_issuer, injected_gate, injected_latency, respond};
use crate::api_error::ApiError;
use crate::card::{
    CARD_ID_MAX, CARD_PRODUCT_ID_MAX, CONSUMER_ID_MAX, CardState, Registration, check_card_data,
    is_identifier,
};
use crate::injector::Injector;
use crate::jwe;
use crate::state::{Commit, SimState, registered_card};
use crate::stats::Recorder;

type CardPath = Result<Path<(String, String)>, PathRejection>;

/// Register Card.
pub(super) async fn register(
    State(state): State<Shared>,
    path: CardPath,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record(Recorder::put_received);
    let Ok(Path((issuer_id, card_id))) = path else {
        return respond(&state, "register", Err(bad_path().into()));
    };
    // Counted on arrival: a PUT for a stored card is a duplicate whatever its answer turns out to be.
    let stored_before = state.registration_of(&card_id);
    if let Some(registration) = stored_before {
        state.record(|recorder| {
            recorder.put_for_card(&card_id);
            recorder.duplicate_put(registration == Registration::Implicit);
        });
    }
    injected_latency(&state).await;
    let result =
        register_checked(&state, &issuer_id, &card_id, &headers, &body, stored_before.is_some()).await;
    respond(&state, "register", result)
}

async fn register_checked(
    state: &Shared,
    issuer_id: &str,
    card_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    stored_before: bool,
) -> Result<Response, Failure> {
    state.check_bearer(headers)?;
    check_issuer(state, issuer_id)?;
    check_card_id(card_id)?;
    let request = RegisterRequest::parse(body)?;
    let plaintext = jwe::decrypt(&request.encrypted_data, &state.encryption_keys)
        .map_err(|error| ApiError::bad_request(error.error_code(), error.to_string()))?;
    let facts = check_card_data(&plaintext, card_id)
        .map_err(|error| ApiError::bad_request(error.error_code(), error.to_string()))?;
    drop(plaintext);
    // From here the cardId is known not to reveal the PAN, so it may be counted and logged.
    if state.inject(|injector| injector.unauthorized_once(card_id)) {
        state.record(|recorder| recorder.faults().unauthorized_once += 1);
        state.expire_tokens();
        let error = ApiError::unauthorized("TOKEN_EXPIRED", "the access token has expired");
        return Err(Failure::Injected(error));
    }
    if !stored_before {
        state.record(|recorder| recorder.put_for_card(card_id));
    }
    injected_gate(state)?;
    if state.inject(Injector::fail_before_commit) {
        state.record(|recorder| recorder.faults().fail_before_commit += 1);
        let error =
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", "injected fault");
        return Err(Failure::Injected(error));
    }

    let card = registered_card(card_id, request.consumer_id, request.card_product_id, request.state, facts);
    if let Some(delay) = state.inject(Injector::late_commit) {
        state.record(Recorder::late_commit_scheduled);
        tracing::debug!(card_id, delay_ms = delay.as_millis() as u64, "accepted; committing late");
        let (shared, card_id, card_state) = (state.clone(), card_id.to_owned(), request.state);
        // Its own task: dropping this handler (the client gave up) does not stop the commit.
        let commit = tokio::spawn(async move {
            shared.pause(delay).await;
            let answer = commit_and_answer(&shared, &card_id, card, card_state, stored_before);
            shared.record(Recorder::late_commit_landed);
            answer
        });
        return commit.await.unwrap_or_else(|_| {
            let error = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                "late commit failed",
            );
            Err(Failure::Injected(error))
        });
    }
    let answer = commit_and_answer(state, card_id, card, request.state, stored_before);
    if let Some(delay) = state.inject(Injector::commit_then_timeout) {
        state.record(|recorder| recorder.faults().commit_then_timeout += 1);
        tracing::debug!(card_id, delay_ms = delay.as_millis() as u64, "committed; answering late");
        state.pause(delay).await;
    }
    answer
}

/// Stores the card (never overwriting), counts it, and gives the configured answer.
fn commit_and_answer(
    state: &SimState,
    card_id: &str,
    card: crate::card::StoredCard,
    card_state: CardState,
    stored_before: bool,
) -> Result<Response, Failure> {
    match state.commit(card) {
        Commit::Stored => {
            state.record(Recorder::registered);
            tracing::info!(card_id, "card registered");
            Ok(success(state, card_id, card_state))
        }
        Commit::AlreadyThere(registration) => {
            if !stored_before {
                // Lost a race with a concurrent PUT for the same card: still a duplicate.
                state.record(|recorder| recorder.duplicate_put(registration == Registration::Implicit));
            }
            tracing::info!(card_id, "duplicate registration");
            match &state.duplicate_error {
                None => Ok(success(state, card_id, card_state)),
                Some((status, code)) => {
                    Err(ApiError::new(*status, code.clone(), "the card is already registered").into())
                }
            }
        }
    }
}

/// The configured success answer: no body for 204, a small JSON body otherwise.
fn success(state: &SimState, card_id: &str, card_state: CardState) -> Response {
    if state.register_status == StatusCode::NO_CONTENT {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (state.register_status, axum::Json(json!({"cardId": card_id, "state": card_state}))).into_response()
    }
}

/// Get Card.
pub(super) async fn get(State(state): State<Shared>, path: CardPath, headers: HeaderMap) -> Response {
    state.record(Recorder::get_received);
    injected_latency(&state).await;
    let result = get_checked(&state, path, &headers);
    respond(&state, "get", result)
}

fn get_checked(state: &SimState, path: CardPath, headers: &HeaderMap) -> Result<Response, Failure> {
    let Path((issuer_id, card_id)) = path.map_err(|_| bad_path())?;
    state.check_bearer(headers)?;
    check_issuer(state, &issuer_id)?;
    check_card_id(&card_id)?;
    injected_gate(state)?;
    match state.card(&card_id) {
        Some(card) => Ok(axum::Json(card).into_response()),
        None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "CARD_NOT_FOUND", "the card is not registered").into())
        }
    }
}

fn check_card_id(card_id: &str) -> Result<(), ApiError> {
    if is_identifier(card_id, CARD_ID_MAX) {
        Ok(())
    } else {
        Err(ApiError::bad_request("INVALID_CARD_ID", "cardId must be 1..48 characters of [A-Za-z0-9_-]"))
    }
}

fn bad_path() -> ApiError {
    ApiError::bad_request("INVALID_REQUEST", "the path parameters are not valid UTF-8")
}

/// The Register Card body, checked field by field. Unknown fields are ignored.
struct RegisterRequest {
    consumer_id: String,
    card_product_id: String,
    state: CardState,
    encrypted_data: String,
}

impl RegisterRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        // Parser messages may quote the body, so they are never forwarded.
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return Err(ApiError::bad_request("INVALID_REQUEST_BODY", "the body must be a JSON object"));
        };
        let text = |name: &str| fields.get(name).and_then(Value::as_str);
        let consumer_id =
            text("consumerId").filter(|id| is_identifier(id, CONSUMER_ID_MAX)).ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_CONSUMER_ID",
                    "consumerId must be 1..64 characters of [A-Za-z0-9_-]",
                )
            })?;
        let card_product_id =
            text("cardProductId").filter(|id| is_identifier(id, CARD_PRODUCT_ID_MAX)).ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_CARD_PRODUCT_ID",
                    "cardProductId must be 1..48 characters of [A-Za-z0-9_-]",
                )
            })?;
        let state = match fields.get("state") {
            None | Some(Value::Null) => CardState::Active,
            Some(Value::String(s)) if s == "ACTIVE" => CardState::Active,
            Some(Value::String(s)) if s == "INACTIVE" => CardState::Inactive,
            Some(_) => {
                return Err(ApiError::bad_request("INVALID_STATE", "state must be ACTIVE or INACTIVE"));
            }
        };
        let encrypted_data = text("encryptedData").ok_or_else(|| {
            ApiError::bad_request("INVALID_ENCRYPTED_DATA", "encryptedData must be a compact JWE string")
        })?;
        Ok(Self {
            consumer_id: consumer_id.to_owned(),
            card_product_id: card_product_id.to_owned(),
            state,
            encrypted_data: encrypted_data.to_owned(),
        })
    }
}
