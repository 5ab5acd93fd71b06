//! Reading key files (JWK, JWK Set, PEM) and checking that each key is what its role needs.
//!
//! Errors name the file and what is wrong with it (a missing `kid`, a wrong curve, a missing
//! private part) and never carry key material: no error here formats a key or a parser message
//! that might quote one.

use std::path::{Path, PathBuf};

use josekit::jwk::{Jwk, JwkSet};
use zeroize::Zeroizing;

/// A key file could not be used. Names the file and the problem, never the key.
#[derive(Debug, thiserror::Error)]
#[error("key file {}: {problem}", path.display())]
pub struct KeyError {
    /// The file that was read.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: KeyProblem,
}

/// What is wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    /// The file cannot be read.
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
    /// The content is not a JSON Web Key or a JWK Set.
    #[error("is not a JSON Web Key or a JWK Set")]
    NotJwk,
    /// The content is neither a P-256 private key in PEM (PKCS#8 or SEC1) nor a JWK.
    #[error("is neither a PEM (PKCS#8 or SEC1) EC P-256 private key nor a JSON Web Key")]
    NotPemOrJwk,
    /// The JWK names a `kid` other than the configured one.
    #[error("key {in_file} does not match the configured kid {configured}")]
    KidMismatch {
        /// The `kid` inside the file.
        in_file: String,
        /// The `kid` given in configuration.
        configured: String,
    },
    /// A JWK Set with no key in it.
    #[error("holds no key")]
    Empty,
    /// A key without `kid`; every key must name itself.
    #[error("key #{index} has no kid")]
    MissingKid {
        /// Position of the key in the file, from 0.
        index: usize,
    },
    /// Two keys share a `kid`.
    #[error("kid {kid} appears more than once")]
    DuplicateKid {
        /// The repeated key id.
        kid: String,
    },
    /// The key is not an EC key on P-256.
    #[error("key {kid} is not an EC P-256 key")]
    NotP256 {
        /// The key id (or `-` when the key has none).
        kid: String,
    },
    /// The role needs a private key and the key has no `d`.
    #[error("key {kid} is public; a private key is required")]
    NotPrivate {
        /// The key id.
        kid: String,
    },
    /// The role needs a public key and the key carries a private part.
    #[error("key {kid} holds a private part; give only the public key")]
    NotPublic {
        /// The key id.
        kid: String,
    },
    /// The key parameters are malformed or restricted to another use (`use`, `key_ops`, `alg`).
    #[error("key {kid} is malformed or restricted to another use")]
    Unusable {
        /// The key id.
        kid: String,
    },
}

impl KeyProblem {
    /// Attaches the file path.
    pub(crate) fn at(self, path: &Path) -> KeyError {
        KeyError { path: path.to_owned(), problem: self }
    }
}

/// Reads a whole key file into a buffer that is zeroized on drop.
pub(crate) fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| KeyProblem::Read(e).at(path))
}

/// Parses a JWK or a JWK Set (an object with `keys`) into its keys.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, KeyProblem> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| KeyProblem::NotJwk)?;
    let serde_json::Value::Object(map) = value else {
        return Err(KeyProblem::NotJwk);
    };
    if map.contains_key("keys") {
        let set = JwkSet::from_map(map).map_err(|_| KeyProblem::NotJwk)?;
        let keys: Vec<Jwk> = set.keys().into_iter().cloned().collect();
        if keys.is_empty() {
            return Err(KeyProblem::Empty);
        }
        Ok(keys)
    } else {
        Ok(vec![Jwk::from_map(map).map_err(|_| KeyProblem::NotJwk)?])
    }
}

/// Whether the key must or must not carry its private part.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `d` is required.
    Private,
    /// `d` is forbidden.
    Public,
}

/// Checks that `jwk` is an EC P-256 key with (or without) its private part.
pub(crate) fn check_p256(jwk: &Jwk, part: Part) -> Result<(), KeyProblem> {
    let kid = || jwk.key_id().unwrap_or("-").to_owned();
    if jwk.key_type() != "EC" || jwk.curve() != Some("P-256") {
        return Err(KeyProblem::NotP256 { kid: kid() });
    }
    match (part, jwk.parameter("d").is_some()) {
        (Part::Private, false) => Err(KeyProblem::NotPrivate { kid: kid() }),
        (Part::Public, true) => Err(KeyProblem::NotPublic { kid: kid() }),
        _ => Ok(()),
    }
}

/// The key's `kid`, required.
pub(crate) fn require_kid(jwk: &Jwk, index: usize) -> Result<String, KeyProblem> {
    match jwk.key_id() {
        Some(kid) if !kid.is_empty() => Ok(kid.to_owned()),
        _ => Err(KeyProblem::MissingKid { index }),
    }
}
