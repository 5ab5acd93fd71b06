//! Get Consumer Info: the consumer's profile, opened from its sealed copy (or, in proxy mode,
//! the bank's own answer relayed within a size and time bound).
//!
//! 404 for a consumer never received or erased (a tombstone); 403 when the `cardId` D1 names
//! belongs to another consumer. The answer is personal data: it is never logged, and carries
//! `Cache-Control: no-store`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use tracing::warn;
use url::Url;

use super::error::ApiError;
use crate::core::ids::{CardId, ConsumerId, CorrelationId, IssuerId};
use crate::core::profile::ConsumerInfo;
use crate::crypto::{EnvelopeSealer, Sealer};
use crate::store::profiles::{self, StoredProfile};
use crate::store::{StoreError, cards};
use crate::telemetry::propagation::inject_current_context;

/// Where answers come from.
pub enum ConsumerSource {
    /// Sealed profiles from the consumer-profile topic.
    Profiles {
        /// Opens them (`CONSUMER_DATA_KEYS`).
        opener: EnvelopeSealer,
    },
    /// The bank's own service.
    Proxy(Proxy),
}

/// Proxy mode: the bank's Get Consumer Info, called with the same path and query.
pub struct Proxy {
    client: reqwest::Client,
    base: Url,
    max_bytes: usize,
}

impl Proxy {
    /// A proxy to `base` with a per-call timeout and an answer bound.
    pub fn new(base: Url, timeout: Duration, max_bytes: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, base, max_bytes })
    }
}

fn no_store(info: ConsumerInfo) -> Response {
    let mut response = (StatusCode::OK, Json(info)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn store_failed(e: &StoreError) -> ApiError {
    warn!(error = %crate::cli::migrate::error_chain(e), "Get Consumer Info: database error");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "try again later")
}

/// Answers Get Consumer Info for a validated consumer.
pub async fn answer(
    source: &ConsumerSource,
    pool: &PgPool,
    issuer: &IssuerId,
    consumer: &ConsumerId,
    card: Option<&CardId>,
    correlation: Option<&CorrelationId>,
) -> Result<Response, ApiError> {
    if let Some(card) = card {
        let owner = cards::get(pool, card.as_str()).await.map_err(|e| store_failed(&e))?;
        if owner.is_some_and(|(record, _)| record.consumer_id != *consumer) {
            return Err(ApiError::forbidden("CARD_NOT_OF_CONSUMER", "the card belongs to another consumer"));
        }
    }
    match source {
        ConsumerSource::Profiles { opener } => from_profiles(opener, pool, consumer).await.map(no_store),
        ConsumerSource::Proxy(proxy) => {
            proxy_call(proxy, issuer, consumer, card, correlation).await.map(no_store)
        }
    }
}

async fn from_profiles(
    opener: &EnvelopeSealer,
    pool: &PgPool,
    consumer: &ConsumerId,
) -> Result<ConsumerInfo, ApiError> {
    let not_found = || ApiError::not_found("CONSUMER_NOT_FOUND", "no such consumer");
    let sealed = match profiles::get(pool, consumer.as_str()).await.map_err(|e| store_failed(&e))? {
        None | Some(StoredProfile::Erased) => return Err(not_found()),
        Some(StoredProfile::Sealed(sealed)) => sealed,
    };
    let json = opener.open(&sealed).map_err(|e| {
        warn!(consumer_id = %consumer, error = %e, "Get Consumer Info: stored profile does not open");
        ApiError::internal()
    })?;
    serde_json::from_slice(&json).map_err(|_| {
        warn!(consumer_id = %consumer, "Get Consumer Info: stored profile is not consumer information");
        ApiError::internal()
    })
}

async fn proxy_call(
    proxy: &Proxy,
    issuer: &IssuerId,
    consumer: &ConsumerId,
    card: Option<&CardId>,
    correlation: Option<&CorrelationId>,
) -> Result<ConsumerInfo, ApiError> {
    let unavailable = |why: &str| {
        warn!(consumer_id = %consumer, why, "Get Consumer Info: the bank's service failed");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "CONSUMER_SOURCE_UNAVAILABLE",
            "consumer information unavailable",
        )
    };
    let mut url = proxy.base.clone();
    url.path_segments_mut()
        .map_err(|_| unavailable("the proxy URL cannot take a path"))?
        .pop_if_empty()
        .extend(["issuers", issuer.as_str(), "consumers", consumer.as_str()]);
    if let Some(card) = card {
        url.query_pairs_mut().append_pair("cardId", card.as_str());
    }
    let mut headers = HeaderMap::new();
    inject_current_context(&mut headers);
    if let Some(c) = correlation.and_then(|c| HeaderValue::from_str(c.as_str()).ok()) {
        headers.insert("x-correlation-id", c);
    }
    let mut response =
        proxy.client.get(url).headers(headers).send().await.map_err(|_| unavailable("no answer"))?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(ApiError::not_found("CONSUMER_NOT_FOUND", "no such consumer")),
        StatusCode::FORBIDDEN => {
            return Err(ApiError::forbidden("CONSUMER_FORBIDDEN", "consumer information not allowed"));
        }
        _ => return Err(unavailable("unexpected status")),
    }
    if response.content_length().is_some_and(|n| n > proxy.max_bytes as u64) {
        return Err(unavailable("answer too large"));
    }
    let mut body = zeroize::Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(|_| unavailable("answer cut short"))? {
        if body.len() + chunk.len() > proxy.max_bytes {
            return Err(unavailable("answer too large"));
        }
        body.extend_from_slice(&chunk);
    }
    // Relayed only if it is consumer information as D1 expects it.
    let info: ConsumerInfo =
        serde_json::from_slice(&body).map_err(|_| unavailable("answer is not consumer information"))?;
    info.validate().map_err(|_| unavailable("answer breaks a field rule"))?;
    Ok(info)
}
