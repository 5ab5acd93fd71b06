//! Our ES256 private key and the signed JWT assertion exchanged for a D1 OAuth access token.
//!
//! The assertion carries `iss` = `sub` = our issuer id, `iat`, a unique `jti`, an `exp`
//! [`ASSERTION_LIFETIME`] after `iat` (D1 allows at most 15 minutes) and an optional `aud`; its
//! header carries `alg` = `ES256` and our `kid`. Time is passed in, so tests need no clock.
//! The key never leaves this module and `Debug` shows only its kid.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use josekit::jwk::Jwk;
use josekit::jws::alg::ecdsa::EcdsaJwsSigner;
use josekit::jws::{ES256, JwsHeader};
use josekit::jwt::JwtPayload;

use super::key_file::{self, KeyError, KeyProblem, Part};
use crate::core::ids::IssuerId;

/// How long a signed assertion is valid (D1 accepts up to 15 minutes).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Our ES256 private key for OAuth assertions, with the `kid` D1 knows it by.
pub struct AssertionKey {
    kid: String,
    signer: EcdsaJwsSigner,
}

/// The assertion could not be signed (a local failure: nothing was sent).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the OAuth assertion could not be signed with kid {kid}")]
pub struct SignError {
    /// Our key id.
    pub kid: String,
}

impl AssertionKey {
    /// Loads a P-256 private key from a PEM (PKCS#8 or SEC1) or JWK file; `kid` is the configured id.
    pub fn from_file(path: &Path, kid: impl Into<String>) -> Result<Self, KeyError> {
        let bytes = key_file::read(path)?;
        Self::from_bytes(&bytes, kid.into()).map_err(|p| p.at(path))
    }

    /// Parses the content of such a file.
    pub fn from_bytes(bytes: &[u8], kid: String) -> Result<Self, KeyProblem> {
        let is_pem = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN"));
        let signer = if is_pem {
            ES256.signer_from_pem(bytes).map_err(|_| KeyProblem::NotPemOrJwk)?
        } else {
            let jwk = Jwk::from_bytes(bytes).map_err(|_| KeyProblem::NotPemOrJwk)?;
            if let Some(in_file) = jwk.key_id().filter(|k| *k != kid) {
                return Err(KeyProblem::KidMismatch { in_file: in_file.to_owned(), configured: kid });
            }
            key_file::check_p256(&jwk, Part::Private)?;
            ES256.signer_from_jwk(&jwk).map_err(|_| KeyProblem::Unusable { kid: kid.clone() })?
        };
        Ok(Self { kid, signer })
    }

    /// The key id put in the assertion header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a fresh assertion for `issuer` at `now`, with a random `jti`.
    pub fn sign_assertion(
        &self,
        issuer: &IssuerId,
        audience: Option<&str>,
        now: SystemTime,
    ) -> Result<String, SignError> {
        let err = || SignError { kid: self.kid.clone() };
        let iat = now.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| err())?.as_secs();
        let exp = iat + ASSERTION_LIFETIME.as_secs();
        let mut payload = JwtPayload::new();
        payload.set_issuer(issuer.as_str());
        payload.set_subject(issuer.as_str());
        payload.set_jwt_id(uuid::Uuid::new_v4().to_string());
        payload.set_claim("iat", Some(iat.into())).map_err(|_| err())?;
        payload.set_claim("exp", Some(exp.into())).map_err(|_| err())?;
        if let Some(aud) = audience {
            payload.set_audience(vec![aud]);
        }
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(self.kid.as_str());
        josekit::jwt::encode_with_signer(&payload, &header, &self.signer).map_err(|_| err())
    }
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey").field("kid", &self.kid).finish()
    }
}
