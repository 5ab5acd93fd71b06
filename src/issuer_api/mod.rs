//! The issuer API: what D1 calls on the bank's side, on its own port, behind mutual TLS and
//! bearer tokens we issue.
//!
//! - `POST /authz/d1/v1/oauth2/token`: client credentials (Basic) -> a short-lived ES256 token.
//! - `GET /issuers/{issuerId}/consumers/{consumerId}`: Get Consumer Info ([`consumers`]).
//! - `POST /notifications/d1/v2/issuers/{issuerId}/cards`: Notify Card Operations ([`notifications`]).
//!
//! Every call: a server span continuing D1's `traceparent`, `x-correlation-id` echoed when
//! well-formed, a request counter by endpoint and status. Nothing here logs a request body or an
//! answer: both may hold personal data.

pub mod consumers;
pub mod error;
pub mod notifications;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use rustls::server::ServerConfig;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field::Empty, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use self::consumers::ConsumerSource;
use self::error::ApiError;
use self::token::{ClientCredentials, SCOPE_CONSUMERS, SCOPE_NOTIFICATIONS, TokenAuthority, TokenRefusal};
use crate::core::ids::{CardId, ConsumerId, CorrelationId, IssuerId};
use crate::telemetry::metrics::{ISSUER_API_REQUEST_DURATION, ISSUER_API_REQUESTS};
use crate::telemetry::propagation::parent_from_trace_headers;

/// Everything the handlers share.
pub struct IssuerApi {
    /// Our issuer id: the only one paths may name.
    pub issuer_id: IssuerId,
    /// Issues and checks tokens.
    pub tokens: TokenAuthority,
    /// D1's client credentials.
    pub credentials: ClientCredentials,
    /// Where consumer information comes from.
    pub consumers: ConsumerSource,
    /// PostgreSQL.
    pub pool: PgPool,
    /// The clock (injected so tests can move it).
    pub clock: fn() -> SystemTime,
}

/// How long a graceful stop waits for calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The routes, with a body bound of `max_body_bytes` (413 above it).
pub fn router(api: Arc<IssuerApi>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/authz/d1/v1/oauth2/token", post(token_endpoint))
        .route("/issuers/{issuer_id}/consumers/{consumer_id}", get(consumer_info))
        .route("/notifications/d1/v2/issuers/{issuer_id}/cards", post(card_notifications))
        .route_layer(middleware::from_fn(observe))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api)
}

/// Serves `router` over TLS on `listener` until `stop`, then drains calls in flight.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let handle: Handle<SocketAddr> = Handle::new();
    let server =
        axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls))?.handle(handle.clone());
    let stopper = tokio::spawn(async move {
        stop.cancelled().await;
        handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let served = server.serve(router.into_make_service()).await;
    stopper.abort();
    served
}

fn endpoint_name(path: &str) -> &'static str {
    if path.starts_with("/authz") {
        "token"
    } else if path.starts_with("/issuers") {
        "consumer_info"
    } else {
        "card_notifications"
    }
}

/// A well-formed `x-correlation-id` of the request (anything else is neither echoed nor logged).
fn correlation_id(headers: &HeaderMap) -> Option<CorrelationId> {
    headers.get("x-correlation-id").and_then(|v| v.to_str().ok()).and_then(|v| CorrelationId::parse(v).ok())
}

/// The server span (continuing D1's trace), metrics, and the echoed correlation id.
async fn observe(matched: MatchedPath, request: Request, next: Next) -> Response {
    let endpoint = endpoint_name(matched.as_str());
    let headers = request.headers();
    let correlation = correlation_id(headers);
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let parent = text("traceparent").and_then(|tp| parent_from_trace_headers(tp, text("tracestate")));
    let span = info_span!(
        "issuer_api.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = matched.as_str(),
        endpoint,
        correlation_id = correlation.as_ref().map(|c| tracing::field::display(c.as_str())),
        http.response.status_code = Empty,
    );
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    metrics::counter!(ISSUER_API_REQUESTS, "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(ISSUER_API_REQUEST_DURATION, "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    if let Some(c) = correlation.and_then(|c| HeaderValue::from_str(c.as_str()).ok()) {
        response.headers_mut().insert("x-correlation-id", c);
    }
    response
}

fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let mut response =
        (status, axum::Json(json!({"error": error, "error_description": description, "errorCode": error})))
            .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="issuer-api""#));
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /authz/d1/v1/oauth2/token` (RFC 6749 client credentials).
async fn token_endpoint(State(api): State<Arc<IssuerApi>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !api.credentials.accepts(authorization) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let now = (api.clock)();
    match api.tokens.issue(form.get("scope").map(String::as_str), now) {
        Err(_) => oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "unknown scope requested"),
        Ok(None) => {
            warn!("issuer API: a token could not be signed");
            oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "token signing failed")
        }
        Ok(Some(t)) => {
            let expires_at: chrono::DateTime<chrono::Utc> = t.expires_at.into();
            let body = json!({
                "access_token": t.access_token,
                "token_type": "Bearer",
                "expires_in": t.expires_in.as_secs(),
                "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "scope": t.scope,
            });
            let mut response = (StatusCode::OK, axum::Json(body)).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

/// The bearer token holds `scope`, and the path names our issuer id.
fn authorize(api: &IssuerApi, headers: &HeaderMap, scope: &str, issuer: &str) -> Result<(), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    api.tokens.check(authorization, scope, (api.clock)()).map_err(|refusal| match refusal {
        TokenRefusal::Scope => ApiError::forbidden("INSUFFICIENT_SCOPE", refusal.to_string()),
        _ => ApiError::invalid_token(refusal.to_string()),
    })?;
    if issuer != api.issuer_id.as_str() {
        return Err(ApiError::forbidden("WRONG_ISSUER", "the path names another issuer"));
    }
    Ok(())
}

/// `GET /issuers/{issuerId}/consumers/{consumerId}`; unknown query parameters are ignored.
async fn consumer_info(
    State(api): State<Arc<IssuerApi>>,
    Path((issuer, consumer)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&api, &headers, SCOPE_CONSUMERS, &issuer)?;
    let consumer = ConsumerId::parse(consumer).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let card = query
        .get("cardId")
        .map(|c| CardId::parse(c.as_str()))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let correlation = correlation_id(&headers);
    consumers::answer(
        &api.consumers,
        &api.pool,
        &api.issuer_id,
        &consumer,
        card.as_ref(),
        correlation.as_ref(),
    )
    .await
}

/// `POST /notifications/d1/v2/issuers/{issuerId}/cards` -> 204 once stored.
async fn card_notifications(
    State(api): State<Arc<IssuerApi>>,
    Path(issuer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&api, &headers, SCOPE_NOTIFICATIONS, &issuer)?;
    let updates = notifications::parse(&body).map_err(ApiError::bad_request)?;
    let correlation = correlation_id(&headers);
    notifications::store(&api.pool, &updates, correlation.as_ref()).await.map_err(|e| {
        warn!(error = %crate::cli::migrate::error_chain(&e), "Notify Card Operations: not stored");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "not stored; retry later")
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
