//! Decrypts the `encryptedData` compact JWE (RFC 7516) with `alg` = `ECDH-ES` (direct key
//! agreement, RFC 7518 §4.6) and `enc` = `A256GCM`: ECDH on P-256, Concat KDF (NIST SP 800-56A,
//! SHA-256) keyed on the `enc` value, AES-256-GCM with the ASCII protected header as AAD.
//! Returns the plaintext in a wiping buffer; never logs it or puts it in an error.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::jwk::RawJwk;

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    enc: Option<String>,
    kid: Option<String>,
    epk: Option<RawJwk>,
    apu: Option<String>,
    apv: Option<String>,
    zip: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// Why `encryptedData` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JweError {
    #[error("encryptedData: {0}")]
    Invalid(&'static str),
    #[error("encryptedData: kid {0:?} is not a known D1 encryption key")]
    UnknownKey(String),
    #[error("encryptedData: decryption failed (wrong key or tampered data)")]
    Decrypt,
}

impl JweError {
    /// The errorCode answered with 400.
    pub(crate) fn error_code(&self) -> &'static str {
        match self {
            Self::UnknownKey(_) => "UNKNOWN_KEY",
            Self::Invalid(_) | Self::Decrypt => "INVALID_ENCRYPTED_DATA",
        }
    }
}

/// Decrypts a compact ECDH-ES + A256GCM JWE with the key its header's `kid` names.
pub(crate) fn decrypt(
    compact: &str,
    keys: &BTreeMap<String, SecretKey>,
) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let parts: Vec<&str> = compact.split('.').collect();
    let [header_b64, encrypted_key, iv_b64, ciphertext_b64, tag_b64] = parts[..] else {
        return Err(JweError::Invalid("a compact JWE has five dot-separated parts"));
    };
    let decode =
        |part: &str, what: &'static str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JweError::Invalid(what));
    let header: Header =
        serde_json::from_slice(&decode(header_b64, "the protected header is not base64url")?).map_err(
            |_| JweError::Invalid("the protected header is not a JSON object of the expected shape"),
        )?;
    if header.alg.as_deref() != Some("ECDH-ES") {
        return Err(JweError::Invalid("alg must be ECDH-ES"));
    }
    if header.enc.as_deref() != Some("A256GCM") {
        return Err(JweError::Invalid("enc must be A256GCM"));
    }
    if header.zip.is_some() || header.crit.is_some() {
        return Err(JweError::Invalid("zip and crit are not supported"));
    }
    let kid = header.kid.ok_or(JweError::Invalid("the header has no kid"))?;
    let key = keys.get(&kid).ok_or(JweError::UnknownKey(kid))?;
    let epk = header
        .epk
        .ok_or(JweError::Invalid("the header has no epk"))?
        .public_key()
        .map_err(|_| JweError::Invalid("epk must be an EC P-256 public key"))?;
    if !encrypted_key.is_empty() {
        return Err(JweError::Invalid("the encrypted key must be empty with ECDH-ES"));
    }
    let apu = match header.apu {
        Some(apu) => decode(&apu, "apu is not base64url")?,
        None => Vec::new(),
    };
    let apv = match header.apv {
        Some(apv) => decode(&apv, "apv is not base64url")?,
        None => Vec::new(),
    };
    let iv: [u8; 12] = decode(iv_b64, "the iv is not base64url")?
        .try_into()
        .map_err(|_| JweError::Invalid("the iv must be 96 bits"))?;
    let tag = decode(tag_b64, "the tag is not base64url")?;
    if tag.len() != 16 {
        return Err(JweError::Invalid("the tag must be 128 bits"));
    }
    let mut sealed = decode(ciphertext_b64, "the ciphertext is not base64url")?;
    sealed.extend_from_slice(&tag);

    let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), epk.as_affine());
    let cek = concat_kdf(shared.raw_secret_bytes(), b"A256GCM", &apu, &apv, 256);
    let cipher = Aes256Gcm::new_from_slice(&cek).map_err(|_| JweError::Decrypt)?;
    let plaintext = cipher
        .decrypt(&Nonce::from(iv), Payload { msg: &sealed, aad: header_b64.as_bytes() })
        .map_err(|_| JweError::Decrypt)?;
    Ok(Zeroizing::new(plaintext))
}

/// The Concat KDF of NIST SP 800-56A §5.8.1 with SHA-256, as RFC 7518 §4.6.2 applies it:
/// OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo (each length-prefixed) || SuppPubInfo
/// (keydatalen as 32-bit big-endian). Keys up to 256 bits need a single round.
fn concat_kdf(z: &[u8], algorithm_id: &[u8], apu: &[u8], apv: &[u8], key_bits: u32) -> Zeroizing<Vec<u8>> {
    let mut hasher = Sha256::new();
    hasher.update(1u32.to_be_bytes());
    hasher.update(z);
    for field in [algorithm_id, apu, apv] {
        hasher.update((field.len() as u32).to_be_bytes());
        hasher.update(field);
    }
    hasher.update(key_bits.to_be_bytes());
    let digest = hasher.finalize();
    Zeroizing::new(digest[..(key_bits as usize / 8).min(32)].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_kdf_matches_the_rfc_7518_appendix_c_example() {
        // RFC 7518 Appendix C: ECDH-ES with A128GCM, apu "Alice", apv "Bob".
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110, 163,
            218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let key = concat_kdf(&z, b"A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(URL_SAFE_NO_PAD.encode(&key[..]), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let keys = BTreeMap::new();
        for compact in ["", "a.b.c", "....", "e30.....", "!!.a.b.c.d"] {
            assert!(decrypt(compact, &keys).is_err(), "{compact:?}");
        }
    }
}
