//! Our card-data private keys and the decryption of `encryptedCard` into [`CardData`].
//!
//! Only compact JWE with `alg` = `ECDH-ES`, `enc` = `A256GCM` and a `kid` naming one of our keys is
//! accepted; anything else is refused before any key is used. Decryption is the fast path of
//! `ecdh_es`; josekit only validates each key when the file is loaded. The plaintext lives in a
//! zeroizing buffer and leaves this module only as a [`CardData`] (whose `Pan` zeroizes itself).
//! Errors map to dead-letter reasons and never carry the plaintext or a header value.

use std::fmt;
use std::path::Path;

use josekit::jwe::ECDH_ES;

use super::ecdh_es::{Checked, PrivateScalar};
use super::key_file::{self, KeyError, KeyProblem, Part};
use super::sealed_key::StorageKey;
use crate::core::dead_letter::DeadLetterReason;
use crate::core::event::{EncryptedCard, SealedCardKey};
use crate::core::pan::{CardData, CardDataError};

/// The only key-management algorithm accepted for card data.
pub const JWE_ALG: &str = "ECDH-ES";
/// The only content-encryption algorithm accepted for card data.
pub const JWE_ENC: &str = "A256GCM";

/// Our P-256 private key(s) for `encryptedCard`, by `kid`. `Debug` shows the kids only.
pub struct CardDataKeys {
    keys: Vec<Key>,
}

/// One private key, and the storage key derived from it for sealed content keys.
struct Key {
    kid: String,
    scalar: PrivateScalar,
    storage: StorageKey,
}

/// How [`CardDataKeys::open_stored`] opened a stored JWE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredOpening {
    /// With its sealed content key: no key agreement.
    SealedKey,
    /// By key agreement, there being no sealed content key (a row queued before they existed).
    KeyAgreement,
    /// By key agreement, because the sealed content key did not open for this JWE (malformed,
    /// or not made for it): the stored data was altered, yet the JWE itself decides.
    SealedKeyRefused,
}

/// What is wrong with a JWE that cannot be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JweDefect {
    /// Not five base64url parts with a JSON protected header.
    #[error("not a compact JWE")]
    NotCompact,
    /// The protected header has no `kid`.
    #[error("no kid in the header")]
    MissingKid,
    /// `alg` is not `ECDH-ES`.
    #[error("alg is not ECDH-ES")]
    Algorithm,
    /// `enc` is not `A256GCM`.
    #[error("enc is not A256GCM")]
    Encryption,
    /// The header asks for compression (`zip`), which the contract does not allow.
    #[error("zip is not allowed")]
    Compression,
    /// Key agreement or authenticated decryption failed (wrong key, tampered data, bad tag).
    #[error("decryption failed")]
    Decryption,
    /// The compact JWE is longer than any card data needs.
    #[error("longer than a card-data JWE may be")]
    TooLarge,
    /// The header names critical extensions (`crit`); we implement none.
    #[error("crit is not allowed")]
    Critical,
    /// `epk` is not a P-256 public key on the curve, or `apu`/`apv` is not base64url.
    #[error("epk, apu or apv is malformed")]
    Parameter,
}

/// Why `encryptedCard` did not yield card data. Maps to a [`DeadLetterReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardDataDecryptError {
    /// The JWE's `kid` is not one of our card-data keys.
    #[error("encryptedCard is for a kid that is not among our card-data keys")]
    UnknownKey,
    /// The JWE is malformed, uses another algorithm, or fails to decrypt.
    #[error("encryptedCard cannot be decrypted: {0}")]
    Undecryptable(JweDefect),
    /// The plaintext is not valid card data.
    #[error("encryptedCard holds invalid card data: {0}")]
    Invalid(#[source] CardDataError),
}

impl CardDataDecryptError {
    /// The stable dead-letter reason for this failure.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            Self::UnknownKey => DeadLetterReason::UnknownCardDataKey,
            Self::Undecryptable(_) => DeadLetterReason::UndecryptableCardData,
            Self::Invalid(CardDataError::PanFormat | CardDataError::PanLuhn) => DeadLetterReason::InvalidPan,
            Self::Invalid(CardDataError::Expiry) => DeadLetterReason::InvalidExpiry,
            Self::Invalid(CardDataError::Payload) => DeadLetterReason::InvalidCardData,
        }
    }
}

impl CardDataKeys {
    /// Loads a JWK or JWK Set file; every key must be EC P-256, private, with a unique `kid`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = key_file::read(path)?;
        Self::from_jwk_bytes(&bytes).map_err(|p| p.at(path))
    }

    /// Parses the content of such a file.
    pub fn from_jwk_bytes(bytes: &[u8]) -> Result<Self, KeyProblem> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, jwk) in key_file::parse_jwks(bytes)?.iter().enumerate() {
            let kid = key_file::require_kid(jwk, index)?;
            key_file::check_p256(jwk, Part::Private)?;
            if keys.iter().any(|k| k.kid == kid) {
                return Err(KeyProblem::DuplicateKid { kid });
            }
            // josekit judges whether the key may decrypt (`use`, `key_ops`, `alg`, parameters);
            // the scalar itself is then used by the fast path.
            ECDH_ES.decrypter_from_jwk(jwk).map_err(|_| KeyProblem::Unusable { kid: kid.clone() })?;
            let scalar = PrivateScalar::from_jwk(&serde_json::Value::Object(jwk.as_ref().clone()))
                .ok_or_else(|| KeyProblem::Unusable { kid: kid.clone() })?;
            let d = scalar.to_bytes().ok_or_else(|| KeyProblem::Unusable { kid: kid.clone() })?;
            let storage =
                StorageKey::derive(d.as_slice()).ok_or_else(|| KeyProblem::Unusable { kid: kid.clone() })?;
            keys.push(Key { kid, scalar, storage });
        }
        Ok(Self { keys })
    }

    /// The key ids, for start-up logs.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    /// Decrypts `encryptedCard` and parses `{"pan","exp"}`.
    pub fn decrypt(&self, card: &EncryptedCard) -> Result<CardData, CardDataDecryptError> {
        let (jwe, key) = self.parse(card)?;
        let plaintext = jwe.decrypt(&key.scalar).map_err(CardDataDecryptError::Undecryptable)?;
        CardData::from_json(&plaintext).map_err(CardDataDecryptError::Invalid)
    }

    /// Decrypts `encryptedCard` like [`Self::decrypt`], and seals its content key for storage
    /// beside it, so that [`Self::open_stored`] needs no key agreement. No sealed key (the system's
    /// random source failed) only costs dispatch that key agreement: the event is not refused.
    pub fn decrypt_sealing_key(
        &self,
        card: &EncryptedCard,
    ) -> Result<(CardData, Option<SealedCardKey>), CardDataDecryptError> {
        let (jwe, key) = self.parse(card)?;
        let cek = jwe.content_key(&key.scalar).map_err(CardDataDecryptError::Undecryptable)?;
        let plaintext = jwe.open(&cek).map_err(CardDataDecryptError::Undecryptable)?;
        let data = CardData::from_json(&plaintext).map_err(CardDataDecryptError::Invalid)?;
        Ok((data, key.storage.seal(jwe.header_b64(), &cek)))
    }

    /// Opens a stored `encryptedCard` with its sealed content key when there is one that opens
    /// for it, else by key agreement; says which.
    pub fn open_stored(
        &self,
        card: &EncryptedCard,
        sealed: Option<&SealedCardKey>,
    ) -> Result<(CardData, StoredOpening), CardDataDecryptError> {
        let (jwe, key) = self.parse(card)?;
        let cek = sealed.and_then(|s| key.storage.open(jwe.header_b64(), s));
        let (plaintext, how) = match (cek, sealed) {
            (Some(cek), _) => (jwe.open(&cek), StoredOpening::SealedKey),
            (None, None) => (jwe.decrypt(&key.scalar), StoredOpening::KeyAgreement),
            (None, Some(_)) => (jwe.decrypt(&key.scalar), StoredOpening::SealedKeyRefused),
        };
        let plaintext = plaintext.map_err(CardDataDecryptError::Undecryptable)?;
        Ok((CardData::from_json(&plaintext).map_err(CardDataDecryptError::Invalid)?, how))
    }

    /// The token's checked header and the key its `kid` names.
    fn parse<'a>(&self, card: &'a EncryptedCard) -> Result<(Checked<'a>, &Key), CardDataDecryptError> {
        let jwe = Checked::parse(card.as_str()).map_err(CardDataDecryptError::Undecryptable)?;
        let key = self.keys.iter().find(|k| k.kid == jwe.kid()).ok_or(CardDataDecryptError::UnknownKey)?;
        Ok((jwe, key))
    }
}

impl fmt::Debug for CardDataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardDataKeys").field("kids", &self.kids().collect::<Vec<_>>()).finish()
    }
}
