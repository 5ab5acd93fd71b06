//! Encrypting card data for a recipient's P-256 public key: D1 at registration, or our own
//! card-data key when a producer (or a test) builds `encryptedCard`.
//!
//! The output is a compact JWE, `alg` = `ECDH-ES`, `enc` = `A256GCM`, with the recipient's `kid` in
//! the protected header, sealed by the fast path of `ecdh_es` (josekit only validates the key when
//! it is loaded). The plaintext is built in a zeroizing buffer and never leaves this module.

use std::fmt;
use std::path::Path;

use josekit::jwe::ECDH_ES;

use super::ecdh_es::{self, PublicPoint};
use super::key_file::{self, KeyError, KeyProblem, Part};
use crate::core::pan::CardData;

/// A recipient's P-256 public key with its `kid`. `Debug` shows the kid only.
#[derive(Clone)]
pub struct RecipientKey {
    kid: String,
    point: PublicPoint,
}

/// D1's public key for `encryptedData`, handed over at onboarding (`D1_ENCRYPTION_KEY`).
pub type D1EncryptionKey = RecipientKey;

/// Card data could not be encrypted (a local failure: nothing was sent anywhere).
#[derive(Debug, Clone, thiserror::Error)]
#[error("card data could not be encrypted for kid {kid}")]
pub struct EncryptError {
    /// The recipient key id.
    pub kid: String,
}

impl RecipientKey {
    /// Loads a public JWK file (a JWK, or a JWK Set holding exactly one key): EC P-256 with a `kid`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = key_file::read(path)?;
        Self::from_jwk_bytes(&bytes).map_err(|p| p.at(path))
    }

    /// Parses the content of such a file.
    pub fn from_jwk_bytes(bytes: &[u8]) -> Result<Self, KeyProblem> {
        let keys = key_file::parse_jwks(bytes)?;
        let [jwk] = keys.as_slice() else {
            return Err(KeyProblem::NotJwk);
        };
        let kid = key_file::require_kid(jwk, 0)?;
        key_file::check_p256(jwk, Part::Public)?;
        // josekit judges whether the key may encrypt (`use`, `key_ops`, `alg`, parameters).
        ECDH_ES.encrypter_from_jwk(jwk).map_err(|_| KeyProblem::Unusable { kid: kid.clone() })?;
        let point = PublicPoint::from_jwk(&serde_json::Value::Object(jwk.as_ref().clone()))
            .ok_or_else(|| KeyProblem::Unusable { kid: kid.clone() })?;
        Ok(Self { kid, point })
    }

    /// The key id put in the JWE header.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientKey").field("kid", &self.kid).finish()
    }
}

/// Encrypts `{"pan","exp"}` for `recipient` as a compact JWE (ECDH-ES + A256GCM, recipient `kid`).
pub fn encrypt_card_data(card: &CardData, recipient: &RecipientKey) -> Result<String, EncryptError> {
    encrypt_bytes(&card.to_json(), recipient)
}

/// Encrypts arbitrary bytes the same way (producers and tests that must send malformed card data).
pub fn encrypt_bytes(plaintext: &[u8], recipient: &RecipientKey) -> Result<String, EncryptError> {
    ecdh_es::encrypt(&recipient.point, &recipient.kid, plaintext)
        .ok_or_else(|| EncryptError { kid: recipient.kid.clone() })
}
