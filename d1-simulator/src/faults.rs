//! Fault-injection settings: latency, error rates per status, "fail before commit", "commit then
//! time out", "late commit", a slow token endpoint, "401 once" and a token-bucket rate limit. One serde struct serves the command line, the library
//! and `PUT /_sim/faults`. Settings only: the random draws live in `injector`.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Statuses the error-rate fault may answer with.
pub const INJECTABLE_STATUSES: [u16; 5] = [429, 500, 502, 503, 504];

/// What the simulator does wrong on purpose. Applies to Register Card and Get Card; the token
/// endpoint only gets the latency and `token_latency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Extra delay before each request is handled.
    pub latency: Option<Latency>,
    /// Probability (0..=1) of answering each status instead of handling the request; keys are
    /// 429, 500, 502, 503 or 504, and the rates add up to at most 1.
    pub error_rates: BTreeMap<u16, f64>,
    /// `Retry-After` seconds sent with an injected 429.
    pub retry_after_secs: u64,
    /// Probability that a valid new registration answers 500 without storing the card.
    pub fail_before_commit_rate: f64,
    /// Probability that a valid registration stores the card, then answers only after
    /// `commit_timeout_delay_ms` (so the client times out).
    pub commit_then_timeout_rate: f64,
    /// The delay of a "commit then time out" answer, in milliseconds.
    pub commit_timeout_delay_ms: u64,
    /// Probability that a valid new registration is committed late: the PUT is accepted, processing
    /// goes on whether or not the client is still connected, and the card is stored after a delay
    /// drawn from `late_commit_ms` (counted from arrival); the answer, if anyone still listens, follows.
    pub late_commit_rate: f64,
    /// Delay of a late commit, in milliseconds.
    pub late_commit_ms: Latency,
    /// Extra delay on the token endpoint only (a slow authorization server).
    pub token_latency: Option<Latency>,
    /// Every card's first Register Card answers 401 `TOKEN_EXPIRED` before any processing, and
    /// every issued token expires: the client must fetch a new token and send again.
    pub unauthorized_once: bool,
    /// Requests per second allowed (burst = the same number); beyond it, 429 with `Retry-After`.
    pub rate_limit_rps: Option<u32>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: None,
            error_rates: BTreeMap::new(),
            retry_after_secs: 1,
            fail_before_commit_rate: 0.0,
            commit_then_timeout_rate: 0.0,
            commit_timeout_delay_ms: 30_000,
            late_commit_rate: 0.0,
            late_commit_ms: Latency { min_ms: 1000, max_ms: 10_000 },
            token_latency: None,
            unauthorized_once: false,
            rate_limit_rps: None,
        }
    }
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Checks ranges: rates within 0..=1, known statuses, error rates summing to at most 1.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (&status, &rate) in &self.error_rates {
            if !INJECTABLE_STATUSES.contains(&status) {
                return Err(FaultsError::Status(status));
            }
            check_rate("errorRates", rate)?;
        }
        if self.error_rates.values().sum::<f64>() > 1.0 + 1e-9 {
            return Err(FaultsError::RateSum);
        }
        check_rate("failBeforeCommitRate", self.fail_before_commit_rate)?;
        check_rate("commitThenTimeoutRate", self.commit_then_timeout_rate)?;
        check_rate("lateCommitRate", self.late_commit_rate)?;
        for latency in self.latency.iter().chain(&self.token_latency).chain([&self.late_commit_ms]) {
            if latency.min_ms > latency.max_ms {
                return Err(FaultsError::Latency("minMs is above maxMs".into()));
            }
        }
        if self.rate_limit_rps == Some(0) {
            return Err(FaultsError::RateLimit);
        }
        Ok(())
    }
}

fn check_rate(field: &'static str, rate: f64) -> Result<(), FaultsError> {
    if (0.0..=1.0).contains(&rate) { Ok(()) } else { Err(FaultsError::Rate { field, rate }) }
}

/// A fixed delay (`min_ms == max_ms`) or a uniform random one in `min_ms..=max_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Latency {
    /// Shortest delay, in milliseconds.
    pub min_ms: u64,
    /// Longest delay, in milliseconds.
    pub max_ms: u64,
}

impl Latency {
    /// A fixed delay.
    pub fn fixed(ms: u64) -> Self {
        Self { min_ms: ms, max_ms: ms }
    }
}

impl FromStr for Latency {
    type Err = FaultsError;

    /// Parses `"50"` (fixed) or `"0-200"` (uniform range).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |part: &str| {
            part.trim().parse::<u64>().map_err(|_| FaultsError::Latency(format!("{part:?} is not a number")))
        };
        let latency = match s.split_once('-') {
            Some((min, max)) => Self { min_ms: parse(min)?, max_ms: parse(max)? },
            None => Self::fixed(parse(s)?),
        };
        if latency.min_ms > latency.max_ms {
            return Err(FaultsError::Latency(format!("{s:?}: the minimum is above the maximum")));
        }
        Ok(latency)
    }
}

/// Parses `"503=0.2,429=0.05"` into error rates per status (an empty string means none).
pub fn parse_error_rates(s: &str) -> Result<BTreeMap<u16, f64>, FaultsError> {
    let mut rates = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let bad = || FaultsError::ErrorRateSyntax(item.to_owned());
        let (status, rate) = item.split_once('=').ok_or_else(bad)?;
        let status: u16 = status.trim().parse().map_err(|_| bad())?;
        let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
        rates.insert(status, rate);
    }
    Ok(rates)
}

/// Why fault settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// A probability outside 0..=1.
    #[error("{field}: rate {rate} is outside 0..=1")]
    Rate {
        /// The offending field.
        field: &'static str,
        /// The rate given.
        rate: f64,
    },
    /// An error rate for a status the simulator does not inject.
    #[error("errorRates: status {0} cannot be injected (use 429, 500, 502, 503 or 504)")]
    Status(u16),
    /// Error rates adding up to more than 1.
    #[error("errorRates: the rates add up to more than 1")]
    RateSum,
    /// An error-rate item that is not `STATUS=RATE`.
    #[error("errorRates: {0:?} is not STATUS=RATE")]
    ErrorRateSyntax(String),
    /// A malformed latency.
    #[error("latency: {0}")]
    Latency(String),
    /// A rate limit of zero.
    #[error("rateLimitRps must be at least 1")]
    RateLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses_fixed_and_ranges() {
        assert_eq!("50".parse::<Latency>().unwrap(), Latency::fixed(50));
        assert_eq!("0-200".parse::<Latency>().unwrap(), Latency { min_ms: 0, max_ms: 200 });
        assert!("200-0".parse::<Latency>().is_err());
        assert!("fast".parse::<Latency>().is_err());
    }

    #[test]
    fn error_rates_parse_and_validate() {
        let rates = parse_error_rates("503=0.2, 429=0.05").unwrap();
        assert_eq!(rates, BTreeMap::from([(429, 0.05), (503, 0.2)]));
        assert!(Faults { error_rates: rates, ..Faults::none() }.validate().is_ok());
        assert!(parse_error_rates("503:0.2").is_err());
        let too_much = Faults { error_rates: BTreeMap::from([(500, 0.7), (503, 0.5)]), ..Faults::none() };
        assert_eq!(too_much.validate(), Err(FaultsError::RateSum));
        let unknown = Faults { error_rates: BTreeMap::from([(404, 0.1)]), ..Faults::none() };
        assert_eq!(unknown.validate(), Err(FaultsError::Status(404)));
    }

    #[test]
    fn faults_json_uses_camel_case_and_defaults() {
        let faults: Faults = serde_json::from_str(r#"{"errorRates":{"503":1.0}}"#).unwrap();
        assert_eq!(faults.error_rates.get(&503), Some(&1.0));
        assert_eq!(faults.retry_after_secs, 1);
        assert_eq!(faults.commit_timeout_delay_ms, 30_000);
        assert_eq!(faults.late_commit_ms, Latency { min_ms: 1000, max_ms: 10_000 });
        let late: Faults = serde_json::from_str(
            r#"{"lateCommitRate":1.0,"lateCommitMs":{"minMs":1000,"maxMs":2000},"tokenLatency":{"minMs":500,"maxMs":500},"unauthorizedOnce":true}"#,
        )
        .unwrap();
        assert!(late.validate().is_ok() && late.unauthorized_once);
        assert_eq!(late.token_latency, Some(Latency::fixed(500)));
        let inverted = Faults { late_commit_ms: Latency { min_ms: 2, max_ms: 1 }, ..Faults::none() };
        assert!(inverted.validate().is_err());
        assert!(serde_json::from_str::<Faults>(r#"{"errorRate":{}}"#).is_err());
    }
}
