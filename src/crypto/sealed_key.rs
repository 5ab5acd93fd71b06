//! The content key of a card-data JWE, sealed for storage beside the JWE, so that dispatch opens
//! the stored token without a second key agreement.
//!
//! Why: ingest pays one P-256 multiplication to check `encryptedCard`; opening the same token again
//! at dispatch cost another, about a fifth of the service's CPU per registration. A content key
//! opens only its own token (ECDH-ES derives a fresh one per JWE). It is sealed with AES-256-GCM
//! under a storage key that HKDF-SHA256 derives from the card-data private key the JWE's `kid`
//! names, with the JWE's protected header (which holds the `epk`) as additional data. So reading it
//! takes the same private key as reading the JWE, it cannot be moved onto another token, and
//! retiring a kid retires both. Text form: `v1.` + base64url(nonce ‖ sealed key ‖ tag).

use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::core::event::SealedCardKey;

/// Version prefix of the text form.
const V1: &str = "v1.";
/// HKDF `info`: what the derived key is for, so it is never the same as any other use of `d`.
const INFO: &[u8] = b"card-registrar/sealed-card-key/v1";
/// Nonce, sealed key, tag.
const SEALED_LEN: usize = 12 + 32 + 16;

/// The AES-256-GCM key that seals content keys for one card-data private key.
pub struct StorageKey(Aes256Gcm);

impl StorageKey {
    /// Derives the storage key from the private scalar `d` (32 bytes, big-endian). `None` only if
    /// HKDF refuses the length (it allows up to 8,160 bytes; this asks 32).
    pub fn derive(d: &[u8]) -> Option<Self> {
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, d).expand(INFO, okm.as_mut_slice()).ok()?;
        Some(Self(Aes256Gcm::new(&(*okm).into())))
    }

    /// Seals the content key of the JWE whose protected header is `header_b64`. `None` only if the
    /// system's random source fails.
    pub fn seal(&self, header_b64: &str, cek: &[u8; 32]) -> Option<SealedCardKey> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.try_fill_bytes(&mut nonce).ok()?;
        let mut buffer = Zeroizing::new(*cek);
        let tag = self
            .0
            .encrypt_in_place_detached(&Nonce::from(nonce), header_b64.as_bytes(), buffer.as_mut_slice())
            .ok()?;
        let mut out = [0u8; SEALED_LEN];
        out[..12].copy_from_slice(&nonce);
        out[12..44].copy_from_slice(buffer.as_slice());
        out[44..].copy_from_slice(&tag);
        Some(SealedCardKey::new(format!("{V1}{}", B64.encode(out))))
    }

    /// The content key sealed for the JWE whose protected header is `header_b64`; `None` when the
    /// text is malformed, was sealed under another key, or for another token.
    pub fn open(&self, header_b64: &str, sealed: &SealedCardKey) -> Option<Zeroizing<[u8; 32]>> {
        let b64 = sealed.as_str().strip_prefix(V1)?;
        // A longer text cannot decode to SEALED_LEN bytes: refuse it before allocating.
        if b64.len() != SEALED_LEN.div_ceil(3) * 4 {
            return None;
        }
        let bytes = Zeroizing::new(B64.decode(b64).ok()?);
        let (nonce, rest) = bytes.split_at_checked(12)?;
        let (key, tag) = rest.split_at_checked(32)?;
        let mut cek = Zeroizing::new(<[u8; 32]>::try_from(key).ok()?);
        let nonce = <[u8; 12]>::try_from(nonce).ok()?;
        let tag = <[u8; 16]>::try_from(tag).ok()?;
        self.0
            .decrypt_in_place_detached(
                &Nonce::from(nonce),
                header_b64.as_bytes(),
                cek.as_mut_slice(),
                &Tag::from(tag),
            )
            .ok()?;
        Some(cek)
    }
}
