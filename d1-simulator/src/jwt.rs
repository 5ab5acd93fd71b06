//! Checks the OAuth JWT-bearer assertion (RFC 7523) as d1-api.md describes it: ES256 only, `kid`
//! picks the issuer key, signature = raw r||s over `header.payload`, `iss` = `sub` = issuerId,
//! `exp` present and at most 15 minutes ahead. Pure: the clock is an argument. Never echoes the
//! assertion.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::PublicKey;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;
use serde_json::Value;

/// Longest lifetime an assertion may claim: `exp` at most now + 15 minutes.
pub(crate) const MAX_ASSERTION_LIFETIME_SECS: i64 = 15 * 60;
/// Clock skew tolerated on `exp`, `iat` and `nbf`.
pub(crate) const CLOCK_SKEW_SECS: i64 = 30;

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

/// Why an assertion was refused; each maps to one errorCode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AssertionError {
    #[error("the assertion is not a compact JWS of three base64url parts with JSON header and claims")]
    Malformed,
    #[error("the assertion alg must be ES256")]
    Algorithm,
    #[error("the assertion header has no kid")]
    MissingKid,
    #[error("the assertion kid {0:?} is not a known issuer key")]
    UnknownKid(String),
    #[error("the assertion signature does not verify with key {0:?}")]
    Signature(String),
    #[error("the assertion iss must be the issuer id")]
    Issuer,
    #[error("the assertion sub must be the issuer id")]
    Subject,
    #[error("the assertion has no numeric exp claim")]
    MissingExpiry,
    #[error("the assertion has expired")]
    Expired,
    #[error("the assertion exp is more than 15 minutes ahead")]
    ExpiryTooFar,
    #[error("the assertion iat or nbf is in the future")]
    NotYetValid,
}

impl AssertionError {
    /// The errorCode answered with 401.
    pub(crate) fn error_code(&self) -> &'static str {
        match self {
            Self::Malformed => "INVALID_ASSERTION",
            Self::Algorithm => "UNSUPPORTED_ALGORITHM",
            Self::MissingKid | Self::UnknownKid(_) => "UNKNOWN_KEY_ID",
            Self::Signature(_) => "INVALID_SIGNATURE",
            Self::Issuer => "INVALID_ISSUER",
            Self::Subject => "INVALID_SUBJECT",
            Self::MissingExpiry => "MISSING_EXPIRY",
            Self::Expired => "ASSERTION_EXPIRED",
            Self::ExpiryTooFar => "EXPIRY_TOO_FAR",
            Self::NotYetValid => "ASSERTION_NOT_YET_VALID",
        }
    }
}

/// Verifies `assertion` at unix time `now` against the issuer keys and id.
pub(crate) fn verify_assertion(
    assertion: &str,
    keys: &BTreeMap<String, PublicKey>,
    issuer_id: &str,
    now: i64,
) -> Result<(), AssertionError> {
    let mut parts = assertion.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| AssertionError::Malformed);
    let header: Header =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| AssertionError::Malformed)?;
    if header.alg.as_deref() != Some("ES256") {
        return Err(AssertionError::Algorithm);
    }
    let kid = header.kid.ok_or(AssertionError::MissingKid)?;
    let key = keys.get(&kid).ok_or_else(|| AssertionError::UnknownKid(kid.clone()))?;
    let signature =
        Signature::from_slice(&decode(signature_b64)?).map_err(|_| AssertionError::Signature(kid.clone()))?;
    let signing_input = &assertion[..header_b64.len() + 1 + claims_b64.len()];
    VerifyingKey::from(key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| AssertionError::Signature(kid))?;

    let claims: Value =
        serde_json::from_slice(&decode(claims_b64)?).map_err(|_| AssertionError::Malformed)?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer_id) {
        return Err(AssertionError::Issuer);
    }
    if claims.get("sub").and_then(Value::as_str) != Some(issuer_id) {
        return Err(AssertionError::Subject);
    }
    let exp = claims.get("exp").and_then(numeric_date).ok_or(AssertionError::MissingExpiry)?;
    if exp + CLOCK_SKEW_SECS <= now {
        return Err(AssertionError::Expired);
    }
    if exp > now + MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS {
        return Err(AssertionError::ExpiryTooFar);
    }
    for claim in ["iat", "nbf"] {
        if let Some(at) = claims.get(claim) {
            match numeric_date(at) {
                Some(at) if at <= now + CLOCK_SKEW_SECS => {}
                Some(_) => return Err(AssertionError::NotYetValid),
                None => return Err(AssertionError::Malformed),
            }
        }
    }
    Ok(())
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional, truncated to seconds.
fn numeric_date(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_f64().map(|seconds| seconds.floor() as i64))
}

#[cfg(test)]
mod tests {
    use p256::SecretKey;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn sign(key: &SecretKey, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = SigningKey::from(key).sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn setup() -> (SecretKey, BTreeMap<String, PublicKey>) {
        let key = SecretKey::random(&mut rand::rngs::OsRng);
        let keys = BTreeMap::from([("k1".to_owned(), key.public_key())]);
        (key, keys)
    }

    fn claims(exp: i64) -> Value {
        json!({"iss": "ISSUER0001", "sub": "ISSUER0001", "exp": exp, "iat": NOW, "aud": "d1"})
    }

    #[test]
    fn a_good_assertion_verifies() {
        let (key, keys) = setup();
        let jwt = sign(&key, json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}), claims(NOW + 600));
        assert_eq!(verify_assertion(&jwt, &keys, "ISSUER0001", NOW), Ok(()));
    }

    #[test]
    fn each_broken_rule_has_its_own_error() {
        let (key, keys) = setup();
        let header = json!({"alg": "ES256", "kid": "k1"});
        let other = SecretKey::random(&mut rand::rngs::OsRng);
        let cases = [
            (sign(&key, json!({"alg": "HS256", "kid": "k1"}), claims(NOW + 60)), "UNSUPPORTED_ALGORITHM"),
            (sign(&key, json!({"alg": "ES256", "kid": "k9"}), claims(NOW + 60)), "UNKNOWN_KEY_ID"),
            (sign(&other, header.clone(), claims(NOW + 60)), "INVALID_SIGNATURE"),
            (sign(&key, header.clone(), claims(NOW - 60)), "ASSERTION_EXPIRED"),
            (sign(&key, header.clone(), claims(NOW + 16 * 60)), "EXPIRY_TOO_FAR"),
            (
                sign(&key, header.clone(), json!({"iss": "X", "sub": "ISSUER0001", "exp": NOW})),
                "INVALID_ISSUER",
            ),
            (sign(&key, header.clone(), json!({"iss": "ISSUER0001", "exp": NOW})), "INVALID_SUBJECT"),
            (sign(&key, header.clone(), json!({"iss": "ISSUER0001", "sub": "ISSUER0001"})), "MISSING_EXPIRY"),
            ("a.b".to_owned(), "INVALID_ASSERTION"),
        ];
        for (jwt, code) in cases {
            let err = verify_assertion(&jwt, &keys, "ISSUER0001", NOW).unwrap_err();
            assert_eq!(err.error_code(), code, "{err}");
        }
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let (key, keys) = setup();
        let claims = json!({"iss": "ISSUER0001", "sub": "ISSUER0001", "iat": NOW as f64 + 0.72, "exp": NOW as f64 + 600.5});
        let jwt = sign(&key, json!({"alg": "ES256", "kid": "k1"}), claims);
        assert_eq!(verify_assertion(&jwt, &keys, "ISSUER0001", NOW), Ok(()));
    }

    #[test]
    fn skew_of_thirty_seconds_is_tolerated_on_iat() {
        let (key, keys) = setup();
        let header = json!({"alg": "ES256", "kid": "k1"});
        let mut early = claims(NOW + 60);
        early["iat"] = json!(NOW + 20);
        assert_eq!(verify_assertion(&sign(&key, header.clone(), early), &keys, "ISSUER0001", NOW), Ok(()));
        let mut future = claims(NOW + 60);
        future["iat"] = json!(NOW + 120);
        let err = verify_assertion(&sign(&key, header, future), &keys, "ISSUER0001", NOW).unwrap_err();
        assert_eq!(err, AssertionError::NotYetValid);
    }
}
