//! The D1 calls: Register Card (PUT) and Get Card (GET), authenticated with the cached token.
//!
//! Card data is encrypted for D1 here, in memory, right before the PUT; the clear PAN never
//! leaves this function in any other form. A 401 invalidates the token and the call is retried
//! once with a fresh one. Every request (token fetch, call, re-send after a 401) first checks the
//! caller's [`Deadline`]: none starts unless it can end before it. Spans carry the card id, the correlation id and the HTTP status, never
//! a body, a header value or a token.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use url::Url;

use super::auth::TokenSource;
use super::config::{D1ClientConfig, D1ConfigError, http_client};
use super::deadline::Deadline;
use super::error::{D1Error, Operation, classify_status, parse_retry_after};
use super::transport;
use crate::core::event::InitialState;
use crate::core::ids::{CardId, CardProductId, ConsumerId, CorrelationId, IssuerId};
use crate::core::pan::CardData;
use crate::crypto::{D1EncryptionKey, encrypt_card_data};

/// The correlation header D1 logs on its side.
const CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// A client for D1's card API. Cheap to clone; clones share the connection pool and token cache.
#[derive(Clone)]
pub struct D1Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    issuer: IssuerId,
    encryption_key: D1EncryptionKey,
    tokens: TokenSource,
    /// The per-request timeout: a request may start only this long before the deadline.
    timeout: std::time::Duration,
}

/// One Register Card request. Borrowed, so the caller keeps ownership of the card data.
#[derive(Debug)]
pub struct RegisterCard<'a> {
    /// `cardId` (path).
    pub card_id: &'a CardId,
    /// `consumerId`.
    pub consumer_id: &'a ConsumerId,
    /// `cardProductId`.
    pub card_product_id: &'a CardProductId,
    /// The clear card data, encrypted for D1 inside [`D1Client::register_card`].
    pub card: &'a CardData,
    /// `state`.
    pub state: InitialState,
}

/// What Get Card answered. Unknown fields are ignored; `state` is kept as text for new values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct D1Card {
    /// `cardId`, when echoed.
    pub card_id: Option<String>,
    /// `consumerId` the card is registered for.
    pub consumer_id: String,
    /// `cardProductId`, when given.
    pub card_product_id: Option<String>,
    /// `state` (`ACTIVE`, `INACTIVE`, `SUSPENDED`, `DELETED`, `REPLACED`, or a newer value).
    pub state: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody<'a> {
    consumer_id: &'a str,
    card_product_id: &'a str,
    encrypted_data: &'a str,
    state: &'a str,
}

impl D1Client {
    /// Builds the client: checks the URL, loads the TLS files, prepares the token source.
    pub fn new(config: D1ClientConfig) -> Result<Self, D1ConfigError> {
        let http = http_client(&config)?;
        let token_url = join(&config.base_url, &["authz", "v1", "oauth2", "token"])?;
        let tokens = TokenSource::new(
            http.clone(),
            token_url,
            config.issuer_id.clone(),
            config.auth_key,
            config.audience,
        );
        let inner = Inner {
            http,
            base: config.base_url,
            issuer: config.issuer_id,
            encryption_key: config.encryption_key,
            tokens,
            timeout: config.timeout,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Our issuer id.
    pub fn issuer_id(&self) -> &IssuerId {
        &self.inner.issuer
    }

    /// Register Card without a deadline (one-off calls; dispatch uses [`Self::register_card_within`]).
    pub async fn register_card(
        &self,
        req: &RegisterCard<'_>,
        correlation: &CorrelationId,
    ) -> Result<(), D1Error> {
        self.register_card_within(req, correlation, &Deadline::none()).await
    }

    /// Register Card: `PUT /banking/v2/issuers/{issuerId}/cards/{cardId}`. Any 2xx is success.
    /// No request starts unless it can end before `deadline`.
    #[tracing::instrument(
        name = "d1.register_card",
        skip_all,
        fields(otel.kind = "client", card_id = %req.card_id, correlation_id = %correlation, http.status_code)
    )]
    pub async fn register_card_within(
        &self,
        req: &RegisterCard<'_>,
        correlation: &CorrelationId,
        deadline: &Deadline,
    ) -> Result<(), D1Error> {
        let encrypted = encrypt_card_data(req.card, &self.inner.encryption_key)
            .map_err(|e| D1Error::Local { detail: e.to_string() })?;
        let body = serde_json::to_vec(&RegisterBody {
            consumer_id: req.consumer_id.as_str(),
            card_product_id: req.card_product_id.as_str(),
            encrypted_data: &encrypted,
            state: req.state.as_str(),
        })
        .map_err(|e| D1Error::Local { detail: format!("register body could not be serialized: {e}") })?;
        let url = self.card_url("v2", req.card_id)?;
        let op = Operation::Register;
        let response = self
            .call(op, correlation, deadline, || {
                self.inner.http.put(url.clone()).header(CONTENT_TYPE, "application/json").body(body.clone())
            })
            .await?;
        let status = response.status();
        if status.is_success() {
            // Read the (ignored) body so the connection goes back to the pool; a 2xx is final either way.
            let _ = transport::read_body(response).await;
            Ok(())
        } else {
            Err(error_from(op, response).await)
        }
    }

    /// Get Card without a deadline (one-off calls; dispatch uses [`Self::get_card_within`]).
    pub async fn get_card(
        &self,
        card_id: &CardId,
        correlation: &CorrelationId,
    ) -> Result<Option<D1Card>, D1Error> {
        self.get_card_within(card_id, correlation, &Deadline::none()).await
    }

    /// Get Card: `GET /banking/v1/issuers/{issuerId}/cards/{cardId}`; `None` when D1 answers 404.
    /// No request starts unless it can end before `deadline`.
    #[tracing::instrument(
        name = "d1.get_card",
        skip_all,
        fields(otel.kind = "client", card_id = %card_id, correlation_id = %correlation, http.status_code)
    )]
    pub async fn get_card_within(
        &self,
        card_id: &CardId,
        correlation: &CorrelationId,
        deadline: &Deadline,
    ) -> Result<Option<D1Card>, D1Error> {
        let url = self.card_url("v1", card_id)?;
        let op = Operation::GetCard;
        let response = self.call(op, correlation, deadline, || self.inner.http.get(url.clone())).await?;
        let status = response.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(error_from(op, response).await);
        }
        let unreadable = |what: String| D1Error::Retryable {
            status: Some(status.as_u16()),
            retry_after: None,
            ambiguous: false,
            detail: format!("get_card answer {what}"),
        };
        let body = transport::read_body(response).await.map_err(|e| unreadable(format!("broke off: {e}")))?;
        serde_json::from_slice(&body).map(Some).map_err(|e| unreadable(format!("is not a card: {e}")))
    }

    /// Sends with a bearer token and the common headers; on 401, refreshes the token and retries once.
    /// Before the token is fetched and before each send, checks there is time to finish by `deadline`.
    async fn call(
        &self,
        op: Operation,
        correlation: &CorrelationId,
        deadline: &Deadline,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, D1Error> {
        let correlation = HeaderValue::from_str(correlation.as_str())
            .map_err(|_| D1Error::Local { detail: "correlation id is not a header value".into() })?;
        let mut refreshed = false;
        loop {
            // A token fetch is a request too: it may only start if it can end in time.
            deadline.admit(Operation::Token, self.inner.timeout)?;
            let token = self.inner.tokens.get().await?;
            let (auth_name, auth_value) = token.authorization()?;
            deadline.admit(op, self.inner.timeout)?;
            let request = build()
                .header(auth_name, auth_value)
                .header(CORRELATION_HEADER, correlation.clone())
                .header(ACCEPT, "application/json");
            let response = transport::send(op, request).await?;
            if response.status().as_u16() != 401 || refreshed {
                return Ok(response);
            }
            // D1 refused the token before processing the call: a retry cannot duplicate anything.
            tracing::debug!(operation = op.as_str(), "D1 answered 401; refreshing the token once");
            self.inner.tokens.invalidate(&token).await;
            refreshed = true;
        }
    }

    fn card_url(&self, version: &str, card_id: &CardId) -> Result<Url, D1Error> {
        let path = ["banking", version, "issuers", self.inner.issuer.as_str(), "cards", card_id.as_str()];
        join(&self.inner.base, &path).map_err(|e| D1Error::Local { detail: e.to_string() })
    }
}

impl fmt::Debug for D1Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("D1Client")
            .field("base", &self.inner.base.as_str())
            .field("issuer", &self.inner.issuer)
            .field("encryption_key", &self.inner.encryption_key)
            .finish_non_exhaustive()
    }
}

/// Classifies a non-success answer, reading `Retry-After` and the error body.
async fn error_from(op: Operation, response: reqwest::Response) -> D1Error {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = transport::read_body(response).await.unwrap_or_default();
    classify_status(op, status, retry_after, &body)
}

/// Appends path segments to the base URL (which may itself have a path).
fn join(base: &Url, segments: &[&str]) -> Result<Url, D1ConfigError> {
    let mut url = base.clone();
    url.path_segments_mut().map_err(|_| D1ConfigError::UnsupportedUrl)?.pop_if_empty().extend(segments);
    Ok(url)
}
