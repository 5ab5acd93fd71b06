//! EC P-256 JSON Web Keys (RFC 7517/7518): reading a JWK or a JWK Set into keys by `kid`, and
//! writing keys as JWKs. Written here rather than borrowed so the simulator reads keys the way the
//! RFC says, not the way a client library does. Never prints a private key, even in errors.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint, ToEncodedPoint};
use p256::{PublicKey, SecretKey};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// A JWK as read: only the members this simulator needs; others are ignored.
#[derive(Deserialize)]
pub(crate) struct RawJwk {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<Zeroizing<String>>,
    kid: Option<String>,
}

/// Why a JWK was refused. Carries the kid (public), never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// The text is neither a JWK object nor a JWK Set.
    #[error("not a JWK or a JWK Set (JSON object with kty, or with a keys array)")]
    NotJwk,
    /// A key without a `kid`.
    #[error("a key has no kid")]
    MissingKid,
    /// A key that is not an EC P-256 key.
    #[error("key {kid:?}: {problem}")]
    Key {
        /// The key id.
        kid: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The set holds no usable key.
    #[error("the JWK Set holds no key")]
    Empty,
}

impl RawJwk {
    /// The EC P-256 public key of this JWK.
    pub(crate) fn public_key(&self) -> Result<PublicKey, &'static str> {
        if self.kty.as_deref() != Some("EC") {
            return Err("kty must be EC");
        }
        if self.crv.as_deref() != Some("P-256") {
            return Err("crv must be P-256");
        }
        let coordinate = |value: &Option<String>| -> Result<[u8; 32], &'static str> {
            let bytes = URL_SAFE_NO_PAD
                .decode(value.as_deref().ok_or("x and y are required")?)
                .map_err(|_| "x and y must be base64url")?;
            bytes.try_into().map_err(|_| "x and y must be 32 bytes")
        };
        let (x, y) = (coordinate(&self.x)?, coordinate(&self.y)?);
        let point = EncodedPoint::<p256::NistP256>::from_affine_coordinates(&x.into(), &y.into(), false);
        Option::from(PublicKey::from_encoded_point(&point)).ok_or("the point is not on P-256")
    }

    /// The EC P-256 private key of this JWK, checked against its public coordinates.
    pub(crate) fn secret_key(&self) -> Result<SecretKey, &'static str> {
        let public = self.public_key()?;
        let d = self.d.as_ref().ok_or("a private key needs d")?;
        let d = Zeroizing::new(URL_SAFE_NO_PAD.decode(d.as_bytes()).map_err(|_| "d must be base64url")?);
        if d.len() != 32 {
            return Err("d must be 32 bytes");
        }
        let secret = SecretKey::from_slice(&d).map_err(|_| "d is not a valid P-256 scalar")?;
        if secret.public_key() != public {
            return Err("d does not match x and y");
        }
        Ok(secret)
    }
}

fn raw_keys(text: &str) -> Result<Vec<(String, RawJwk)>, JwkError> {
    let value: Value = serde_json::from_str(text).map_err(|_| JwkError::NotJwk)?;
    let items = match value.get("keys") {
        Some(Value::Array(keys)) => keys.clone(),
        Some(_) => return Err(JwkError::NotJwk),
        None if value.get("kty").is_some() => vec![value],
        None => return Err(JwkError::NotJwk),
    };
    let keys = items
        .into_iter()
        .map(|item| {
            let jwk: RawJwk = serde_json::from_value(item).map_err(|_| JwkError::NotJwk)?;
            let kid = jwk.kid.clone().filter(|kid| !kid.is_empty()).ok_or(JwkError::MissingKid)?;
            Ok((kid, jwk))
        })
        .collect::<Result<Vec<_>, JwkError>>()?;
    if keys.is_empty() {
        return Err(JwkError::Empty);
    }
    Ok(keys)
}

/// Reads public keys by kid from a JWK or a JWK Set (private members, if any, are ignored).
pub(crate) fn public_keys(text: &str) -> Result<BTreeMap<String, PublicKey>, JwkError> {
    raw_keys(text)?
        .into_iter()
        .map(|(kid, jwk)| match jwk.public_key() {
            Ok(key) => Ok((kid, key)),
            Err(problem) => Err(JwkError::Key { kid, problem }),
        })
        .collect()
}

/// Reads private keys by kid from a JWK or a JWK Set.
pub(crate) fn secret_keys(text: &str) -> Result<BTreeMap<String, SecretKey>, JwkError> {
    raw_keys(text)?
        .into_iter()
        .map(|(kid, jwk)| match jwk.secret_key() {
            Ok(key) => Ok((kid, key)),
            Err(problem) => Err(JwkError::Key { kid, problem }),
        })
        .collect()
}

/// A public JWK with `kid`, `use` and `alg`.
pub(crate) fn public_jwk(key: &PublicKey, kid: &str, usage: &str, alg: &str) -> Value {
    let point = key.to_encoded_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default();
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": coordinate(point.x()),
        "y": coordinate(point.y()),
        "kid": kid,
        "use": usage,
        "alg": alg,
    })
}

/// A private JWK (public members plus `d`), as a JSON value the caller writes and drops.
pub(crate) fn private_jwk(key: &SecretKey, kid: &str, usage: &str, alg: &str) -> Value {
    let mut jwk = public_jwk(&key.public_key(), kid, usage, alg);
    jwk["d"] = Value::String(URL_SAFE_NO_PAD.encode(key.to_bytes()));
    jwk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::random(&mut rand::rngs::OsRng)
    }

    #[test]
    fn a_private_jwk_reads_back_as_the_same_key_and_public_key() {
        let secret = key();
        let text = private_jwk(&secret, "k1", "enc", "ECDH-ES").to_string();
        let secrets = secret_keys(&text).unwrap();
        assert_eq!(secrets["k1"].to_bytes(), secret.to_bytes());
        assert_eq!(public_keys(&text).unwrap()["k1"], secret.public_key());
    }

    #[test]
    fn a_jwk_set_yields_every_kid() {
        let (a, b) = (key(), key());
        let set = json!({"keys": [public_jwk(&a.public_key(), "a", "sig", "ES256"),
                                  public_jwk(&b.public_key(), "b", "sig", "ES256")]});
        let keys = public_keys(&set.to_string()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(keys["b"], b.public_key());
    }

    #[test]
    fn bad_keys_are_refused_with_the_kid_and_the_problem() {
        let mut jwk = public_jwk(&key().public_key(), "k1", "sig", "ES256");
        jwk["crv"] = json!("P-384");
        assert_eq!(
            public_keys(&jwk.to_string()),
            Err(JwkError::Key { kid: "k1".into(), problem: "crv must be P-256" })
        );
        let mut mismatched = private_jwk(&key(), "k2", "enc", "ECDH-ES");
        mismatched["d"] = json!(URL_SAFE_NO_PAD.encode(key().to_bytes()));
        assert!(matches!(secret_keys(&mismatched.to_string()), Err(JwkError::Key { .. })));
        assert_eq!(public_keys(r#"{"keys":[]}"#), Err(JwkError::Empty));
        let no_kid = json!({"kty":"EC","crv":"P-256","x":"","y":""});
        assert_eq!(public_keys(&no_kid.to_string()), Err(JwkError::MissingKid));
    }
}
