//! What a D1 call's outcome means for the caller, decided in one place.
//!
//! Every failure becomes one [`D1Error`]: `Retryable` (try later; `ambiguous` when a registration
//! may have taken effect, so Get Card must come first), `Unauthorized`, `Terminal` (D1 refused the
//! request as such), or `Local` (nothing was sent). Messages carry operations, statuses, D1 error
//! codes and ids, never card data or tokens. The classifiers here are pure functions of the
//! status, headers and body, so they are tested without a server.

use std::error::Error as _;
use std::fmt;
use std::time::{Duration, SystemTime};

/// How much of a D1 error text (or a non-JSON body) is kept.
const MAX_TEXT: usize = 200;

/// Which D1 call failed; also the `operation` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `PUT .../cards/{cardId}` (Register Card).
    Register,
    /// `GET .../cards/{cardId}` (Get Card).
    GetCard,
    /// `POST /authz/v1/oauth2/token`.
    Token,
}

impl Operation {
    /// The metric label and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::GetCard => "get_card",
            Self::Token => "token",
        }
    }

    /// Whether D1 may change state when it processes this call: only then is a lost answer ambiguous.
    fn has_effect(self) -> bool {
        matches!(self, Self::Register)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed D1 call, classified for the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum D1Error {
    /// 5xx, 408, 429, timeouts and connection failures: try again later.
    #[error("D1 {detail} (retryable, ambiguous: {ambiguous})")]
    Retryable {
        /// The HTTP status, when D1 answered.
        status: Option<u16>,
        /// D1's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// The registration may have been processed by D1: confirm with Get Card before sending again.
        ambiguous: bool,
        /// What happened (operation, status or transport failure).
        detail: String,
    },
    /// D1 refused our credentials (401 after one token refresh, or the token endpoint refused).
    #[error("D1 refused our credentials: {detail}")]
    Unauthorized {
        /// What was refused and how.
        detail: String,
    },
    /// Any other 4xx (and unexpected 1xx/3xx): sending the same request again will not help.
    #[error("D1 answered {status} (errorCode {}): {}", error_code.as_deref().unwrap_or("-"), message.as_deref().unwrap_or("-"))]
    Terminal {
        /// The HTTP status.
        status: u16,
        /// D1's `errorCode`, when the body had one.
        error_code: Option<String>,
        /// D1's `error` text (truncated), or the start of a non-JSON body.
        message: Option<String>,
    },
    /// A failure on our side before anything was sent (encryption, assertion signing).
    #[error("D1 call not sent: {detail}")]
    Local {
        /// What failed.
        detail: String,
    },
    /// Not sent: the attempt's deadline (its lease end minus the safety margin) leaves no room
    /// for another request. Nothing reached D1; the row goes back to the queue.
    #[error("D1 call not sent: {detail}")]
    OutOfTime {
        /// Which request, and how much time was left.
        detail: String,
    },
}

impl D1Error {
    /// Trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// The registration may have taken effect at D1: confirm with Get Card before sending again.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Retryable { ambiguous: true, .. })
    }

    /// Our credentials were refused.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }

    /// D1 refused this request; repeating it will not help.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Terminal { .. })
    }

    /// Nothing was sent: a local key or encryption problem, or no time left in the lease.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local { .. } | Self::OutOfTime { .. })
    }

    /// How long D1 asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status D1 answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Retryable { status, .. } => *status,
            Self::Terminal { status, .. } => Some(*status),
            Self::Unauthorized { .. } | Self::Local { .. } | Self::OutOfTime { .. } => None,
        }
    }

    /// D1's `errorCode`, for a terminal refusal.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Terminal { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }
}

/// Classifies a D1 answer that is not a success (401 included: after the one retry it is final).
pub fn classify_status(op: Operation, status: u16, retry_after: Option<Duration>, body: &[u8]) -> D1Error {
    let (error_code, message) = error_body(body);
    match status {
        401 => D1Error::Unauthorized {
            detail: format!("{op} answered 401 (errorCode {})", error_code.as_deref().unwrap_or("-")),
        },
        408 | 429 | 500..=599 => D1Error::Retryable {
            status: Some(status),
            retry_after,
            // A 429 is a refusal before processing; 408 and 5xx may come after D1 acted.
            ambiguous: op.has_effect() && status != 429,
            detail: format!("{op} answered {status}"),
        },
        100..=499 => D1Error::Terminal { status, error_code, message },
        // A status code outside the known classes: assume the worst, as the change policy allows new ones.
        _ => D1Error::Retryable {
            status: Some(status),
            retry_after,
            ambiguous: op.has_effect(),
            detail: format!("{op} answered unknown status {status}"),
        },
    }
}

/// Classifies a transport failure; also returns the metric `status` label (`timeout`, `connect`, `error`).
pub fn classify_transport(op: Operation, err: &reqwest::Error) -> (D1Error, &'static str) {
    let cause = cause_chain(err);
    if err.is_builder() {
        return (D1Error::Local { detail: format!("{op} request could not be built: {cause}") }, "error");
    }
    // Connect, DNS and TLS-handshake failures happen before a byte of the request is sent.
    let never_sent = err.is_connect();
    let label = if err.is_timeout() {
        "timeout"
    } else if never_sent {
        "connect"
    } else {
        "error"
    };
    let error = D1Error::Retryable {
        status: None,
        retry_after: None,
        ambiguous: op.has_effect() && !never_sent,
        detail: format!("{op} failed ({label}): {cause}"),
    };
    (error, label)
}

/// Parses `Retry-After`: delta-seconds, or an HTTP-date (a past date means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads D1's `errorCode` and `error` (or OAuth's `error_description`) from a JSON error body;
/// a non-JSON body yields its (truncated) start as the message.
fn error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => {
            let text = |k: &str| map.get(k).and_then(serde_json::Value::as_str).map(truncate);
            let message = text("error").or_else(|| text("error_description")).or_else(|| text("message"));
            (text("errorCode"), message)
        }
        _ if body.is_empty() => (None, None),
        _ => (None, Some(truncate(&String::from_utf8_lossy(body)))),
    }
}

/// At most [`MAX_TEXT`] characters, control characters replaced (a body cannot forge log lines),
/// and anything shaped like a PAN masked: this text is logged and stored with the outbox row.
fn truncate(s: &str) -> String {
    let short: String = s.chars().take(MAX_TEXT).map(|c| if c.is_control() { ' ' } else { c }).collect();
    crate::core::pan::mask_pan_like(&short).into_owned()
}

/// The error and its sources, joined, for the detail text; a source whose text is already
/// there (hyper repeats its cause in its own message) is not repeated.
fn cause_chain(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
