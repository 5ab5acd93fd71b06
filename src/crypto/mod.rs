//! Key handling and JOSE: decrypting `encryptedCard` with our card-data keys, encrypting card data
//! for D1, signing the ES256 assertion for D1's OAuth token endpoint, and signing the access tokens
//! our issuer API gives D1. josekit for most of it; the card-data JWE itself (ECDH-ES + A256GCM on
//! P-256), the hot path of ingest and dispatch, on a faster path of its own (`ecdh_es`).
//!
//! Keys come from files into types whose `Debug` shows key ids only. Nothing here logs, and no
//! error carries key material, a clear PAN, or a decrypted payload.

mod assertion;
mod card_data;
mod ecdh_es;
mod key_file;
mod recipient;
mod sealed_key;
mod sealer;
mod token_key;

#[cfg(test)]
pub(crate) mod test_keys;
#[cfg(test)]
mod tests;

pub use assertion::{ASSERTION_LIFETIME, AssertionKey, SignError};
pub use card_data::{CardDataDecryptError, CardDataKeys, JWE_ALG, JWE_ENC, JweDefect, StoredOpening};
pub use key_file::{KeyError, KeyProblem};
pub use recipient::{D1EncryptionKey, EncryptError, RecipientKey, encrypt_bytes, encrypt_card_data};
pub use sealer::{EnvelopeSealer, SealError, Sealer};
pub use token_key::{PEM_TOKEN_KID, TokenKey};
