//! The ES256 key pair that signs and checks the issuer API's access tokens (JWS compact JWTs).
//!
//! Replicas share the key file, so a token issued by one is accepted by all. The key never leaves
//! this module; `Debug` shows only its kid. Verification pins the algorithm to ES256.

use std::fmt;
use std::path::Path;

use josekit::jwk::Jwk;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jws::alg::ecdsa::{EcdsaJwsSigner, EcdsaJwsVerifier};
use josekit::jws::{ES256, JwsHeader};
use josekit::jwt::JwtPayload;

use super::key_file::{self, KeyError, KeyProblem, Part};

/// Signs and verifies access tokens.
pub struct TokenKey {
    kid: String,
    signer: EcdsaJwsSigner,
    verifier: EcdsaJwsVerifier,
}

/// The kid of a PEM token key (a PEM carries none).
pub const PEM_TOKEN_KID: &str = "issuer-api";

impl TokenKey {
    /// Loads a P-256 private key from a PEM (PKCS#8 or SEC1) or JWK file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = key_file::read(path)?;
        Self::from_bytes(&bytes).map_err(|p| p.at(path))
    }

    /// Parses the content of such a file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyProblem> {
        let is_pem = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN"));
        let jwk = if is_pem {
            let pair =
                EcKeyPair::from_pem(bytes, Some(EcCurve::P256)).map_err(|_| KeyProblem::NotPemOrJwk)?;
            let mut jwk = pair.to_jwk_key_pair();
            jwk.set_key_id(PEM_TOKEN_KID);
            jwk
        } else {
            Jwk::from_bytes(bytes).map_err(|_| KeyProblem::NotPemOrJwk)?
        };
        key_file::check_p256(&jwk, Part::Private)?;
        let kid = jwk.key_id().unwrap_or(PEM_TOKEN_KID).to_owned();
        let unusable = || KeyProblem::Unusable { kid: kid.clone() };
        let public = jwk.to_public_key().map_err(|_| unusable())?;
        let signer = ES256.signer_from_jwk(&jwk).map_err(|_| unusable())?;
        let verifier = ES256.verifier_from_jwk(&public).map_err(|_| unusable())?;
        Ok(Self { kid, signer, verifier })
    }

    /// The kid put in token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs the claims into a compact JWT; `None` only if signing itself failed.
    pub fn sign(&self, payload: &JwtPayload) -> Option<String> {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(self.kid.as_str());
        josekit::jwt::encode_with_signer(payload, &header, &self.signer).ok()
    }

    /// The claims of a token this key signed; `None` for anything else (another key or
    /// algorithm, a malformed or tampered token). Expiry and claims are the caller's to check.
    pub fn verify(&self, token: &str) -> Option<JwtPayload> {
        josekit::jwt::decode_with_verifier(token, &self.verifier).ok().map(|(payload, _)| payload)
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key: &TokenKey) {
        let mut claims = JwtPayload::new();
        claims.set_issuer("x");
        let token = key.sign(&claims).unwrap();
        assert_eq!(key.verify(&token).unwrap().issuer(), Some("x"));
        assert!(key.verify(&token.replace('.', ".x")).is_none());
    }

    #[test]
    fn pem_and_jwk_keys_sign_tokens_they_verify_and_debug_shows_the_kid_only() {
        let keys = crate::crypto::test_keys::TestKey::generate("token-1");
        for bytes in [keys.pkcs8_pem(), keys.sec1_pem()] {
            let key = TokenKey::from_bytes(&bytes).unwrap();
            assert_eq!(key.kid(), PEM_TOKEN_KID);
            round_trip(&key);
        }
        let key = TokenKey::from_bytes(keys.private_jwk().to_string().as_bytes()).unwrap();
        assert_eq!(key.kid(), "token-1");
        round_trip(&key);
        assert_eq!(format!("{key:?}"), r#"TokenKey { kid: "token-1" }"#);
        assert!(TokenKey::from_bytes(keys.public_jwk().to_string().as_bytes()).is_err());
    }
}
