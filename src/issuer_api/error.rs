//! Error answers: JSON `{errorCode, error}` as D1's v2 APIs use them, with a status. The text
//! names what is wrong, never a value from the request (which may be personal data).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
    /// `WWW-Authenticate` challenge, for 401.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    /// An error with this status, code and reason.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), challenge: None }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    /// 401 for a missing, invalid or expired bearer token.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self {
            challenge: Some(r#"Bearer realm="issuer-api", error="invalid_token""#),
            ..Self::new(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", message)
        }
    }

    /// 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 500: our fault; the detail is logged by the caller, not sent.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"errorCode": self.code, "error": self.message}))).into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
