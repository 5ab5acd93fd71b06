//! The card-data JWE, both directions, without josekit: ECDH-ES direct key agreement on P-256,
//! the Concat KDF of RFC 7518 §4.6.2 (one SHA-256 round), AES-256-GCM, compact serialisation.
//!
//! Why: josekit imports every ephemeral key through OpenSSL 3's DER decoder and key-management
//! layers, which cost about three key agreements, and decrypting `encryptedCard` bounds
//! created-event ingest. Here opening a token costs one P-256 scalar multiplication, done by
//! OpenSSL's constant-time `EC_POINT_mul` on the point decoded from the header (the function
//! OpenSSL's own ECDH calls); sealing one costs a key generation and one multiplication. RustCrypto's
//! pure-Rust `p256` was measured first and is about 2.5 times slower than OpenSSL per
//! multiplication on this machine, so it only serves as the independent implementation of the
//! interop tests. The KDF is `sha2`, the AEAD `aes-gcm`.
//!
//! Exactly one algorithm pair, so the rules are few and strict: `alg` = `ECDH-ES`, `enc` =
//! `A256GCM`, no `zip`, no `crit`, a `kid`, an `epk` that is a JWK `EC`/`P-256` point given by
//! canonical coordinates (`x`, `y` of 32 bytes, each below the field prime) on the curve, optional
//! `apu`/`apv`, an empty encrypted key, a 96-bit IV, a 128-bit tag, and at most [`MAX_COMPACT`]
//! bytes in all; every base64url part is decoded strictly. Our copies of the private scalar, the
//! shared secret and the content key are zeroized; `aes-gcm` checks the tag (in constant time)
//! before it releases any plaintext.

use std::sync::LazyLock;

use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::nid::Nid;
use rand::RngCore as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::card_data::{JWE_ALG, JWE_ENC, JweDefect};

/// Longest compact JWE accepted (card data is some tens of bytes; headers some hundreds).
pub const MAX_COMPACT: usize = 64 * 1024;

/// The P-256 field prime, big-endian: a canonical coordinate is below it.
const FIELD_PRIME: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
];

/// P-256, built once (`None` only if this OpenSSL lacks the curve: every use then fails cleanly).
static P256: LazyLock<Option<EcGroup>> =
    LazyLock::new(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok());

/// Our private scalar `d`, flagged for OpenSSL's constant-time paths and wiped when dropped.
pub struct PrivateScalar(BigNum);

impl PrivateScalar {
    /// `d` of a P-256 JWK, refused unless it is 32 bytes in 1..n-1 and `x`/`y` are its public point.
    pub fn from_jwk(jwk: &Value) -> Option<Self> {
        let d = Zeroizing::new(B64.decode(jwk.get("d")?.as_str()?).ok()?);
        if d.len() != 32 {
            return None;
        }
        let mut scalar = Self(BigNum::from_slice(&d).ok()?);
        scalar.0.set_const_time();
        let group = P256.as_ref()?;
        let mut ctx = BigNumContext::new().ok()?;
        let mut order = BigNum::new().ok()?;
        group.order(&mut order, &mut ctx).ok()?;
        if scalar.0.num_bits() == 0 || scalar.0.ucmp(&order) != std::cmp::Ordering::Less {
            return None;
        }
        let mut derived = EcPoint::new(group).ok()?;
        derived.mul_generator2(group, &scalar.0, &mut ctx).ok()?;
        let stated = PublicPoint::from_jwk(jwk)?.point(&mut ctx)?;
        derived.eq(group, &stated, &mut ctx).ok()?.then_some(scalar)
    }
}

impl PrivateScalar {
    /// `d` as 32 big-endian bytes, zeroized when dropped (`None` only if OpenSSL fails).
    pub fn to_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.0.to_vec_padded(32).ok().map(Zeroizing::new)
    }
}

impl Drop for PrivateScalar {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// A P-256 public point as its uncompressed encoding (`04 || x || y`), on the curve.
#[derive(Clone)]
pub struct PublicPoint([u8; 65]);

impl PublicPoint {
    /// A JWK `{"kty":"EC","crv":"P-256","x","y"}` with canonical coordinates on the curve; `None`
    /// for anything else.
    pub fn from_jwk(jwk: &Value) -> Option<Self> {
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        if text("kty") != Some("EC") || text("crv") != Some("P-256") {
            return None;
        }
        let x: [u8; 32] = decode_exact(text("x")?).ok()?;
        let y: [u8; 32] = decode_exact(text("y")?).ok()?;
        // Big-endian byte order is numeric order for equal lengths.
        if x >= FIELD_PRIME || y >= FIELD_PRIME {
            return None;
        }
        let mut encoded = [4u8; 65];
        encoded[1..33].copy_from_slice(&x);
        encoded[33..].copy_from_slice(&y);
        let point = Self(encoded);
        // OpenSSL refuses a point off the curve here (an invalid-curve point never gets multiplied).
        point.point(&mut BigNumContext::new().ok()?)?;
        Some(point)
    }

    fn point(&self, ctx: &mut BigNumContext) -> Option<EcPoint> {
        EcPoint::from_bytes(P256.as_ref()?, &self.0, ctx).ok()
    }
}

/// The x-coordinate of `secret` x `peer`: the ECDH shared secret Z.
fn shared_secret(secret: &BigNumRef, peer: &PublicPoint) -> Option<Zeroizing<Vec<u8>>> {
    let group = P256.as_ref()?;
    let mut ctx = BigNumContext::new().ok()?;
    let peer = peer.point(&mut ctx)?;
    let mut product = EcPoint::new(group).ok()?;
    product.mul2(group, &peer, secret, &mut ctx).ok()?;
    let encoded = Zeroizing::new(product.to_bytes(group, PointConversionForm::UNCOMPRESSED, &mut ctx).ok()?);
    // 65 bytes unless the product is the point at infinity (impossible for d in 1..n-1).
    (encoded.len() == 65).then(|| Zeroizing::new(encoded[1..33].to_vec()))
}

/// IV, ciphertext (zeroized when dropped, as it is decrypted in place) and tag of a token.
type Parts = ([u8; 12], Zeroizing<Vec<u8>>, [u8; 16]);

/// A compact JWE whose protected header passed the checks that need no key.
pub struct Checked<'a> {
    header_b64: &'a str,
    header: Map<String, Value>,
    rest: [&'a str; 4],
}

impl<'a> Checked<'a> {
    /// Splits a compact JWE and checks its header's algorithms, `zip`, `crit` and `kid`.
    pub fn parse(compact: &'a str) -> Result<Self, JweDefect> {
        if compact.len() > MAX_COMPACT {
            return Err(JweDefect::TooLarge);
        }
        let mut parts = compact.split('.');
        let (Some(header_b64), Some(key), Some(iv), Some(ciphertext), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JweDefect::NotCompact);
        };
        let bytes = B64.decode(header_b64).map_err(|_| JweDefect::NotCompact)?;
        let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| JweDefect::NotCompact)?;
        let text = |name: &str| header.get(name).and_then(Value::as_str);
        if text("alg") != Some(JWE_ALG) {
            return Err(JweDefect::Algorithm);
        }
        if text("enc") != Some(JWE_ENC) {
            return Err(JweDefect::Encryption);
        }
        if header.contains_key("zip") {
            return Err(JweDefect::Compression);
        }
        // We implement no extension, so none may be critical.
        if header.contains_key("crit") {
            return Err(JweDefect::Critical);
        }
        if text("kid").is_none() {
            return Err(JweDefect::MissingKid);
        }
        Ok(Self { header_b64, header, rest: [key, iv, ciphertext, tag] })
    }

    /// The `kid` of the header.
    pub fn kid(&self) -> &str {
        self.header.get("kid").and_then(Value::as_str).unwrap_or_default()
    }

    /// Opens the token with `key`. The plaintext is zeroized when dropped.
    pub fn decrypt(&self, key: &PrivateScalar) -> Result<Zeroizing<Vec<u8>>, JweDefect> {
        self.open(&*self.content_key(key)?)
    }

    /// The content key: the key agreement with `key` and the Concat KDF, the costly half of
    /// opening. It opens only this token (its IV and tag are checked by [`Self::open`]).
    pub fn content_key(&self, key: &PrivateScalar) -> Result<Zeroizing<[u8; 32]>, JweDefect> {
        // Every check that needs no key comes before the multiplication.
        self.parts()?;
        let epk = self.header.get("epk").and_then(PublicPoint::from_jwk).ok_or(JweDefect::Parameter)?;
        let party = |name: &str| -> Result<Vec<u8>, JweDefect> {
            match self.header.get(name) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => B64.decode(s).map_err(|_| JweDefect::Parameter),
                Some(_) => Err(JweDefect::Parameter),
            }
        };
        let (apu, apv) = (party("apu")?, party("apv")?);
        let z = shared_secret(&key.0, &epk).ok_or(JweDefect::Decryption)?;
        Ok(concat_kdf(&z, &apu, &apv))
    }

    /// Opens the token with its content key: AES-256-GCM over the ciphertext, the protected
    /// header as additional data. The plaintext is zeroized when dropped.
    pub fn open(&self, cek: &[u8; 32]) -> Result<Zeroizing<Vec<u8>>, JweDefect> {
        let (iv, mut buffer, tag) = self.parts()?;
        Aes256Gcm::new_from_slice(cek)
            .map_err(|_| JweDefect::Decryption)?
            .decrypt_in_place_detached(
                &Nonce::from(iv),
                self.header_b64.as_bytes(),
                &mut buffer,
                &Tag::from(tag),
            )
            .map_err(|_| JweDefect::Decryption)?;
        Ok(buffer)
    }

    /// IV, ciphertext and tag, decoded; refused if there is a wrapped key (direct key agreement
    /// has none) or a size is wrong.
    fn parts(&self) -> Result<Parts, JweDefect> {
        let [encrypted_key, iv, ciphertext, tag] = self.rest;
        if !encrypted_key.is_empty() {
            return Err(JweDefect::NotCompact);
        }
        let iv: [u8; 12] = decode_exact(iv)?;
        let tag: [u8; 16] = decode_exact(tag)?;
        let ciphertext = Zeroizing::new(B64.decode(ciphertext).map_err(|_| JweDefect::NotCompact)?);
        Ok((iv, ciphertext, tag))
    }

    /// The protected header as sent (base64url): what binds a sealed content key to this token.
    pub fn header_b64(&self) -> &str {
        self.header_b64
    }
}

/// Encrypts `plaintext` to `recipient` as a compact JWE (`ECDH-ES`, `A256GCM`, `kid`, `epk`) with a
/// fresh ephemeral key and IV. `None` only if OpenSSL or the system's random source fails, or the
/// plaintext exceeds AES-GCM's limit (64 GiB).
pub fn encrypt(recipient: &PublicPoint, kid: &str, plaintext: &[u8]) -> Option<String> {
    let group = P256.as_ref()?;
    // EC_KEY_free wipes the ephemeral private key.
    let ephemeral = EcKey::generate(group).ok()?;
    let mut ctx = BigNumContext::new().ok()?;
    let epk = ephemeral.public_key().to_bytes(group, PointConversionForm::UNCOMPRESSED, &mut ctx).ok()?;
    let (x, y) = (epk.get(1..33)?, epk.get(33..65)?);
    let header = serde_json::json!({
        "alg": JWE_ALG,
        "enc": JWE_ENC,
        "kid": kid,
        "epk": {"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y)},
    });
    let header_b64 = B64.encode(header.to_string());
    let z = shared_secret(ephemeral.private_key(), recipient)?;
    let cek = concat_kdf(&z, b"", b"");
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.try_fill_bytes(&mut iv).ok()?;
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    let tag = Aes256Gcm::new_from_slice(cek.as_slice())
        .ok()?
        .encrypt_in_place_detached(&Nonce::from(iv), header_b64.as_bytes(), &mut buffer)
        .ok()?;
    Some(format!("{header_b64}..{}.{}.{}", B64.encode(iv), B64.encode(&*buffer), B64.encode(tag)))
}

/// Concat KDF (NIST SP 800-56A) as RFC 7518 §4.6.2 applies it to direct key agreement with
/// `A256GCM`: one SHA-256 round over counter, Z, AlgorithmID, PartyUInfo, PartyVInfo, SuppPubInfo.
fn concat_kdf(z: &[u8], apu: &[u8], apv: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    for field in [JWE_ENC.as_bytes(), apu, apv] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field);
    }
    h.update(256u32.to_be_bytes());
    Zeroizing::new(h.finalize().into())
}

fn decode_exact<const N: usize>(b64: &str) -> Result<[u8; N], JweDefect> {
    // A longer text cannot decode to N bytes: refuse it before allocating.
    if b64.len() > N.div_ceil(3) * 4 {
        return Err(JweDefect::NotCompact);
    }
    B64.decode(b64).ok().and_then(|v| v.try_into().ok()).ok_or(JweDefect::NotCompact)
}
