//! Test fixtures: a simulator started on a free port with freshly generated keys, and this test
//! suite's own tiny ES256 JWT and ECDH-ES/A256GCM JWE builders (RustCrypto).

use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use d1_simulator::keys::{KeyFiles, KeyOptions, generate};
use d1_simulator::{RunningSimulator, SimConfig, Simulator, Stats};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;
use p256::{PublicKey, SecretKey};
use rand::RngCore as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// A Luhn-valid test PAN; tests assert it never comes back.
pub const PAN: &str = "4111111111111111";
pub const ISSUER: &str = "ISSUER0001";

pub struct TestSim {
    pub sim: RunningSimulator,
    pub files: KeyFiles,
    pub http: reqwest::Client,
    issuer_key: SecretKey,
    d1_key: PublicKey,
    _dir: TempDir,
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Reads a public JWK with a library parser, after dropping the members it does not know.
pub fn read_public_jwk(text: &str) -> PublicKey {
    let mut jwk: Value = serde_json::from_str(text).unwrap();
    let object = jwk.as_object_mut().unwrap();
    object.retain(|name, _| ["kty", "crv", "x", "y"].contains(&name.as_str()));
    PublicKey::from_jwk_str(&jwk.to_string()).unwrap()
}

impl TestSim {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a simulator on 127.0.0.1:0 after `adjust` has changed the default configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut SimConfig)) -> Self {
        Self::start_with_files(|config, _| adjust(config)).await
    }

    /// Like `start_with`, with the generated key files (TLS material included) at hand.
    pub async fn start_with_files(adjust: impl FnOnce(&mut SimConfig, &KeyFiles)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path(), &KeyOptions { tls: true, ..KeyOptions::default() }).unwrap();
        let mut config = SimConfig::from_key_files(&files).unwrap();
        adjust(&mut config, &files);
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let pem = std::fs::read_to_string(&files.issuer_auth_private_pem).unwrap();
        let issuer_key = SecretKey::from_pkcs8_pem(&pem).unwrap();
        let d1_key = read_public_jwk(&std::fs::read_to_string(&files.d1_encryption_public_jwk).unwrap());
        Self { sim, files, http: reqwest::Client::new(), issuer_key, d1_key, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    pub fn card_url(&self, version: &str, card_id: &str) -> String {
        self.url(&format!("/banking/{version}/issuers/{ISSUER}/cards/{card_id}"))
    }

    /// An ES256 JWS over `header` and `claims`, signed with `key` (the issuer key by default).
    pub fn sign(&self, header: Value, claims: Value, key: Option<&SecretKey>) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = SigningKey::from(key.unwrap_or(&self.issuer_key)).sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    pub fn good_assertion(&self) -> String {
        let now = now();
        self.sign(
            json!({"alg": "ES256", "kid": "issuer-auth-1", "typ": "JWT"}),
            json!({"iss": ISSUER, "sub": ISSUER, "aud": "https://api.d1.thalescloud.io", "iat": now, "exp": now + 600}),
            None,
        )
    }

    pub async fn request_token(&self, assertion: &str) -> reqwest::Response {
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion)];
        self.http.post(self.url("/authz/v1/oauth2/token")).form(&form).send().await.unwrap()
    }

    pub async fn token(&self) -> String {
        let response = self.request_token(&self.good_assertion()).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A compact ECDH-ES + A256GCM JWE of `plaintext` for D1's key, with header extras merged in.
    pub fn encrypt(&self, plaintext: &str, header_extra: Value) -> String {
        encrypt_for(&self.d1_key, plaintext, header_extra)
    }

    pub fn register_body(&self, pan: &str, exp: &str) -> Value {
        json!({
            "consumerId": "consumer-1",
            "cardProductId": "product-1",
            "state": "ACTIVE",
            "encryptedData": self.encrypt(&json!({"pan": pan, "exp": exp}).to_string(), json!({})),
            "someFutureField": {"ignored": true},
        })
    }

    pub async fn put_card(&self, token: &str, card_id: &str, body: &Value) -> reqwest::Response {
        self.http.put(self.card_url("v2", card_id)).bearer_auth(token).json(body).send().await.unwrap()
    }

    pub async fn get_card(&self, token: &str, card_id: &str) -> reqwest::Response {
        self.http.get(self.card_url("v1", card_id)).bearer_auth(token).send().await.unwrap()
    }

    /// The stats as the admin endpoint serves them (raw text and parsed).
    pub async fn admin_stats(&self) -> (String, Stats) {
        self.admin_get("/_sim/stats").await
    }

    /// The counters without the per-card map, as `GET /_sim/counts` serves them.
    pub async fn admin_counts(&self) -> (String, Stats) {
        self.admin_get("/_sim/counts").await
    }

    async fn admin_get(&self, path: &str) -> (String, Stats) {
        let text = self.http.get(self.url(path)).send().await.unwrap().text().await.unwrap();
        let stats = serde_json::from_str(&text).unwrap();
        (text, stats)
    }
}

pub fn encrypt_for(recipient: &PublicKey, plaintext: &str, header_extra: Value) -> String {
    let ephemeral = SecretKey::random(&mut rand::rngs::OsRng);
    let point = ephemeral.public_key().to_encoded_point(false);
    let mut header = json!({
        "alg": "ECDH-ES",
        "enc": "A256GCM",
        "kid": "d1-enc-1",
        "epk": {
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        },
    });
    for (name, value) in header_extra.as_object().unwrap() {
        header[name] = value.clone();
    }
    let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
    let decode_party = |name: &str| {
        header
            .get(name)
            .and_then(Value::as_str)
            .map(|v| URL_SAFE_NO_PAD.decode(v).unwrap())
            .unwrap_or_default()
    };
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), recipient.as_affine());
    // Concat KDF, one SHA-256 round: counter || Z || len||"A256GCM" || len||apu || len||apv || 256.
    let mut kdf = Sha256::new();
    kdf.update(1u32.to_be_bytes());
    kdf.update(shared.raw_secret_bytes());
    for field in [b"A256GCM".to_vec(), decode_party("apu"), decode_party("apv")] {
        kdf.update((field.len() as u32).to_be_bytes());
        kdf.update(&field);
    }
    kdf.update(256u32.to_be_bytes());
    let cek = kdf.finalize();
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let sealed = Aes256Gcm::new_from_slice(&cek)
        .unwrap()
        .encrypt(&Nonce::from(iv), Payload { msg: plaintext.as_bytes(), aad: header_b64.as_bytes() })
        .unwrap();
    let (ciphertext, tag) = sealed.split_at(sealed.len() - 16);
    format!(
        "{header_b64}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(ciphertext),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The errorCode of a JSON error answer, asserting the PAN is absent from the whole body.
pub async fn error_code(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap();
    assert!(!text.contains(PAN), "the PAN leaked into an error body");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["error"].is_string(), "error text missing in {text}");
    body["errorCode"].as_str().unwrap().to_owned()
}
