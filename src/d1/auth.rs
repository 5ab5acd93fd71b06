//! D1 OAuth: exchanging a signed ES256 assertion for an access token, and caching that token.
//!
//! One token serves every call until shortly before it expires. Only one fetch runs at a time:
//! callers that arrive meanwhile wait for it and share its result, success or failure, so a
//! burst never becomes a burst of token requests. The token lives in a zeroizing buffer, its
//! `Debug` is redacted, and it is never logged.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;
use zeroize::Zeroizing;

use super::error::{D1Error, Operation, classify_status};
use super::transport;
use crate::core::ids::IssuerId;
use crate::crypto::AssertionKey;
use crate::telemetry::metrics::D1_TOKEN_REFRESHES;

/// The OAuth grant type for a JWT assertion (RFC 7523).
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Assumed lifetime when D1 omits `expires_in`: short, so a wrong guess costs little.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest lifetime believed: a huge `expires_in` must neither overflow `Instant + Duration` nor
/// keep a token that D1 may have revoked long ago.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Refresh at most this long before expiry (or 10% of the lifetime, whichever is shorter).
const MAX_EARLY_REFRESH: Duration = Duration::from_secs(60);

/// A bearer token. Cheap to clone; compared by identity to invalidate exactly the stale one.
#[derive(Clone)]
pub(crate) struct AccessToken(Arc<Zeroizing<String>>);

impl AccessToken {
    /// The `Authorization` header value, marked sensitive so HTTP layers never print it.
    pub(crate) fn authorization(&self) -> Result<(reqwest::header::HeaderName, HeaderValue), D1Error> {
        let text = Zeroizing::new(format!("Bearer {}", self.0.as_str()));
        let mut value = HeaderValue::from_str(&text).map_err(|_| D1Error::Unauthorized {
            detail: "the access token is not a valid header value".into(),
        })?;
        value.set_sensitive(true);
        Ok((AUTHORIZATION, value))
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

/// Fetches and caches D1 access tokens.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    url: Url,
    issuer: IssuerId,
    key: AssertionKey,
    audience: Option<String>,
    state: Mutex<TokenState>,
    /// Fetches finished so far; lets a waiter tell whether a fetch ended while it waited.
    fetches: AtomicU64,
}

#[derive(Default)]
struct TokenState {
    token: Option<(AccessToken, Instant)>,
    /// The last fetch failure and its fetch number, handed to callers who waited for it.
    failure: Option<(u64, D1Error)>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
    token_type: Option<String>,
}

impl TokenSource {
    /// A token source posting to `url` (the token endpoint).
    pub(crate) fn new(
        http: reqwest::Client,
        url: Url,
        issuer: IssuerId,
        key: AssertionKey,
        audience: Option<String>,
    ) -> Self {
        Self { http, url, issuer, key, audience, state: Mutex::default(), fetches: AtomicU64::new(0) }
    }

    /// A valid token: the cached one, or a fresh one (one fetch at a time).
    pub(crate) async fn get(&self) -> Result<AccessToken, D1Error> {
        let seen = self.fetches.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some((token, refresh_at)) = &state.token
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        if let Some((n, error)) = &state.failure
            && *n > seen
        {
            return Err(error.clone());
        }
        let result = self.fetch().await;
        let n = self.fetches.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(D1_TOKEN_REFRESHES, "outcome" => outcome).increment(1);
        match result {
            Ok((token, lifetime)) => {
                state.token = Some((token.clone(), Instant::now() + refresh_after(lifetime)));
                state.failure = None;
                Ok(token)
            }
            Err(error) => {
                state.token = None;
                state.failure = Some((n, error.clone()));
                Err(error)
            }
        }
    }

    /// Drops `stale` from the cache (after D1 refused it), unless it was already replaced.
    pub(crate) async fn invalidate(&self, stale: &AccessToken) {
        let mut state = self.state.lock().await;
        if state.token.as_ref().is_some_and(|(t, _)| Arc::ptr_eq(&t.0, &stale.0)) {
            state.token = None;
        }
    }

    #[tracing::instrument(name = "d1.token", skip_all, fields(otel.kind = "client", http.status_code = tracing::field::Empty))]
    async fn fetch(&self) -> Result<(AccessToken, Duration), D1Error> {
        let assertion = Zeroizing::new(
            self.key
                .sign_assertion(&self.issuer, self.audience.as_deref(), SystemTime::now())
                .map_err(|e| D1Error::Local { detail: e.to_string() })?,
        );
        let form = [("grant_type", GRANT_TYPE), ("assertion", assertion.as_str())];
        let request = self.http.post(self.url.clone()).form(&form);
        let response = transport::send(Operation::Token, request).await?;
        let status = response.status();
        let body =
            transport::read_body(response).await.map(Zeroizing::new).map_err(|e| D1Error::Retryable {
                status: Some(status.as_u16()),
                retry_after: None,
                ambiguous: false,
                detail: format!("token answer could not be read: {e}"),
            })?;
        if !status.is_success() {
            return Err(match classify_status(Operation::Token, status.as_u16(), None, &body) {
                // The token endpoint refusing (whatever the 4xx) means our credentials are not accepted.
                D1Error::Terminal { status, error_code, message } => D1Error::Unauthorized {
                    detail: format!(
                        "token endpoint answered {status} (errorCode {}, error {})",
                        error_code.as_deref().unwrap_or("-"),
                        message.as_deref().unwrap_or("-")
                    ),
                },
                other => other,
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| D1Error::Unauthorized {
            detail: "token endpoint answer has no access_token".into(),
        })?;
        if parsed.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(D1Error::Unauthorized { detail: "token endpoint issued a non-Bearer token".into() });
        }
        let lifetime = parsed.expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs);
        Ok((AccessToken(Arc::new(Zeroizing::new(parsed.access_token))), lifetime))
    }
}

/// How long to use a token of `lifetime` (at most [`MAX_LIFETIME`]): until min(60 s, 10%) before
/// it expires.
fn refresh_after(lifetime: Duration) -> Duration {
    let lifetime = lifetime.min(MAX_LIFETIME);
    lifetime - (lifetime / 10).min(MAX_EARLY_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_a_minute_or_ten_percent_before_expiry() {
        assert_eq!(refresh_after(Duration::from_secs(900)), Duration::from_secs(840));
        assert_eq!(refresh_after(Duration::from_secs(100)), Duration::from_secs(90));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_huge_expires_in_is_clamped_and_never_overflows_the_clock() {
        let after = refresh_after(Duration::from_secs(u64::MAX));
        assert_eq!(after, MAX_LIFETIME - MAX_EARLY_REFRESH);
        assert!(Instant::now().checked_add(after).is_some());
    }

    #[test]
    fn access_token_debug_is_redacted() {
        let token = AccessToken(Arc::new(Zeroizing::new("secret-token".into())));
        assert_eq!(format!("{token:?}"), "AccessToken(..)");
        let (_, value) = token.authorization().unwrap();
        assert!(value.is_sensitive());
    }
}
