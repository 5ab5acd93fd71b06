//! Sealing dead-letter envelopes at rest: a compact JWE (ECDH-ES + A256GCM) to our own card-data
//! key, because a malformed message may hold a clear PAN anywhere. The same sealing, with the
//! `CONSUMER_DATA_KEYS` set, keeps consumer profiles at rest.
//!
//! Sealed to the FIRST key of `CARD_DATA_KEYS` (the current one); opened with whichever key the
//! envelope's `kid` names, so older dead letters stay replayable across a rotation as long as
//! their key stays in the file.

use std::fmt;
use std::path::Path;

use josekit::jwe::alg::ecdh_es::{EcdhEsJweDecrypter, EcdhEsJweEncrypter};
use josekit::jwe::{ECDH_ES, JweHeader};
use zeroize::Zeroizing;

use super::card_data::JWE_ENC;
use super::key_file::{self, KeyError, KeyProblem, Part};

/// Sealing or opening an envelope failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} a dead-letter envelope: {detail}")]
pub struct SealError {
    /// `seal` or `open`.
    pub op: &'static str,
    /// What went wrong (never the content).
    pub detail: String,
}

/// Encrypts envelopes at rest and decrypts them for replay.
pub trait Sealer: Send + Sync {
    /// Encrypts `plaintext` into a storable string.
    fn seal(&self, plaintext: &[u8]) -> Result<String, SealError>;
    /// Decrypts what `seal` produced.
    fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError>;
}

/// Seals and opens dead-letter envelopes with our card-data keys. `Debug` shows kids only.
pub struct EnvelopeSealer {
    current: (String, EcdhEsJweEncrypter),
    openers: Vec<(String, EcdhEsJweDecrypter)>,
    /// The setting the keys come from, named when none opens an envelope.
    key_set: &'static str,
    /// The JWE `cty` of what is sealed.
    content_type: &'static str,
}

impl EnvelopeSealer {
    /// Loads the `CARD_DATA_KEYS` file (JWK or JWK Set of P-256 private keys with kids).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = key_file::read(path)?;
        Self::from_jwk_bytes(&bytes).map_err(|p| p.at(path))
    }

    /// Parses the content of such a file.
    pub fn from_jwk_bytes(bytes: &[u8]) -> Result<Self, KeyProblem> {
        let jwks = key_file::parse_jwks(bytes)?;
        let mut current = None;
        let mut openers = Vec::with_capacity(jwks.len());
        for (index, jwk) in jwks.iter().enumerate() {
            let kid = key_file::require_kid(jwk, index)?;
            key_file::check_p256(jwk, Part::Private)?;
            let unusable = || KeyProblem::Unusable { kid: kid.clone() };
            if current.is_none() {
                let public = jwk.to_public_key().map_err(|_| unusable())?;
                current = Some((kid.clone(), ECDH_ES.encrypter_from_jwk(&public).map_err(|_| unusable())?));
            }
            openers.push((kid.clone(), ECDH_ES.decrypter_from_jwk(jwk).map_err(|_| unusable())?));
        }
        let current = current.ok_or(KeyProblem::Empty)?;
        Ok(Self {
            current,
            openers,
            key_set: "CARD_DATA_KEYS",
            content_type: "application/vnd.card-registrar.dead-letter+json",
        })
    }

    /// The same keys used for consumer profiles at rest (`CONSUMER_DATA_KEYS`): another `cty`,
    /// and errors that name that setting.
    pub fn for_consumer_data(mut self) -> Self {
        self.key_set = "CONSUMER_DATA_KEYS";
        self.content_type = "application/vnd.card-registrar.consumer-info+json";
        self
    }

    /// The kid new envelopes are sealed to (the first key of the file).
    pub fn current_kid(&self) -> &str {
        &self.current.0
    }
}

impl Sealer for EnvelopeSealer {
    fn seal(&self, plaintext: &[u8]) -> Result<String, SealError> {
        let mut header = JweHeader::new();
        header.set_content_encryption(JWE_ENC);
        header.set_key_id(self.current.0.as_str());
        header.set_content_type(self.content_type);
        josekit::jwe::serialize_compact(plaintext, &header, &self.current.1).map_err(|_| SealError {
            op: "seal",
            detail: format!("encryption to kid {} failed", self.current.0),
        })
    }

    fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let header = josekit::jwe::deserialize_compact_with_selector(sealed, |h| {
            let kid = h.key_id();
            Ok(self.openers.iter().find(|(k, _)| Some(k.as_str()) == kid).map(|(_, d)| d as _))
        });
        match header {
            Ok((plaintext, _)) => Ok(Zeroizing::new(plaintext)),
            Err(_) => Err(SealError {
                op: "open",
                detail: format!("no key in {} opens it (was its key removed?)", self.key_set),
            }),
        }
    }
}

impl fmt::Debug for EnvelopeSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.openers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("EnvelopeSealer").field("seals_to", &self.current.0).field("opens", &kids).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> serde_json::Value {
        let jwk = josekit::jwk::Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&jwk.to_string()).unwrap();
        v["kid"] = kid.into();
        v
    }

    #[test]
    fn a_sealed_envelope_opens_after_a_key_rotation_and_hides_its_content() {
        let (old, new) = (key("card-1"), key("card-2"));
        let before = EnvelopeSealer::from_jwk_bytes(
            &serde_json::to_vec(&serde_json::json!({"keys": [old.clone()]})).unwrap(),
        )
        .unwrap();
        let sealed = before.seal(b"4111111111111111").unwrap();
        assert!(!sealed.contains("4111111111111111"));
        let after = EnvelopeSealer::from_jwk_bytes(
            &serde_json::to_vec(&serde_json::json!({"keys": [new, old]})).unwrap(),
        )
        .unwrap();
        assert_eq!(after.open(&sealed).unwrap().as_slice(), b"4111111111111111");
        assert!(after.seal(b"x").unwrap().split('.').count() == 5);
        let without_old =
            EnvelopeSealer::from_jwk_bytes(&serde_json::to_vec(&key("card-3")).unwrap()).unwrap();
        assert!(without_old.open(&sealed).is_err());
        assert!(format!("{after:?}").contains("card-2"));
    }
}
