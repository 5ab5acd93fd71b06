//! Freshly generated P-256 keys for unit tests, as JWK text and files.

use std::path::PathBuf;

use josekit::jwk::Jwk;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};

/// A generated P-256 key pair with a kid.
pub(crate) struct TestKey {
    pub kid: String,
    pub pair: EcKeyPair,
}

impl TestKey {
    /// Generates a key named `kid`.
    pub fn generate(kid: &str) -> Self {
        let mut pair = EcKeyPair::generate(EcCurve::P256).unwrap();
        pair.set_key_id(Some(kid));
        Self { kid: kid.to_owned(), pair }
    }

    /// The private JWK (with `d`).
    pub fn private_jwk(&self) -> Jwk {
        self.pair.to_jwk_key_pair()
    }

    /// The public JWK.
    pub fn public_jwk(&self) -> Jwk {
        self.pair.to_jwk_public_key()
    }

    /// The private key as PKCS#8 PEM.
    pub fn pkcs8_pem(&self) -> Vec<u8> {
        use josekit::jwk::KeyPair as _;
        self.pair.to_pem_private_key()
    }

    /// The private key as SEC1 ("EC PRIVATE KEY") PEM.
    pub fn sec1_pem(&self) -> Vec<u8> {
        self.pair.to_traditional_pem_private_key()
    }
}

/// A JWK Set document holding `keys`.
pub(crate) fn jwk_set(keys: &[Jwk]) -> String {
    let keys: Vec<serde_json::Value> =
        keys.iter().map(|k| serde_json::Value::Object(k.as_ref().clone())).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Writes `content` to `name` inside `dir` and returns the path.
pub(crate) fn write(dir: &tempfile::TempDir, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}
