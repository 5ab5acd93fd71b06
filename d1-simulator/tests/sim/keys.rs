//! `keys::generate`: every file under its fixed name, parseable, private files readable by the
//! owner only.

use std::os::unix::fs::PermissionsExt as _;

use d1_simulator::keys::{KeyOptions, generate};
use p256::pkcs8::DecodePrivateKey as _;
use p256::{PublicKey, SecretKey};
use serde_json::Value;

use crate::helpers::read_public_jwk;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn jwk_without_extras(jwk: &Value) -> String {
    let mut jwk = jwk.clone();
    jwk.as_object_mut().unwrap().retain(|name, _| ["kty", "crv", "x", "y", "d"].contains(&name.as_str()));
    jwk.to_string()
}

#[tokio::test]
async fn keys_writes_every_file_and_the_files_parse() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate(dir.path(), &KeyOptions { tls: true, ..KeyOptions::default() }).unwrap();
    let names = [
        "issuer-auth-private.pem",
        "issuer-auth-private.jwk",
        "issuer-auth-public.jwks",
        "d1-encryption-private.jwk",
        "d1-encryption-public.jwk",
        "card-data-private.jwks",
        "card-data-public.jwk",
        "keys.env",
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ];
    for name in names {
        assert!(dir.path().join(name).is_file(), "{name} missing");
    }
    let private = [
        &files.issuer_auth_private_pem,
        &files.issuer_auth_private_jwk,
        &files.d1_encryption_private_jwk,
        &files.card_data_private_jwks,
        &files.tls.as_ref().unwrap().server_key,
        &files.tls.as_ref().unwrap().client_key,
    ];
    for path in private {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }

    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap();
    let json = |path: &std::path::Path| serde_json::from_str::<Value>(&read(path)).unwrap();
    // The PEM and the private JWK hold the same issuer key, and the public JWK Set its public half.
    let issuer = SecretKey::from_pkcs8_pem(&read(&files.issuer_auth_private_pem)).unwrap();
    let issuer_jwk = json(&files.issuer_auth_private_jwk);
    assert_eq!(issuer_jwk["kid"], "issuer-auth-1");
    assert_eq!(SecretKey::from_jwk_str(&jwk_without_extras(&issuer_jwk)).unwrap(), issuer);
    let issuer_set = json(&files.issuer_auth_public_jwks);
    assert_eq!(issuer_set["keys"][0]["kid"], "issuer-auth-1");
    assert!(issuer_set["keys"][0].get("d").is_none());
    let issuer_public = PublicKey::from_jwk_str(&jwk_without_extras(&issuer_set["keys"][0])).unwrap();
    assert_eq!(issuer_public, issuer.public_key());

    let d1_private = json(&files.d1_encryption_private_jwk);
    assert_eq!(d1_private["kid"], "d1-enc-1");
    let d1_secret = SecretKey::from_jwk_str(&jwk_without_extras(&d1_private)).unwrap();
    let d1_public_jwk = json(&files.d1_encryption_public_jwk);
    assert_eq!(
        (d1_public_jwk["kid"].as_str(), d1_public_jwk["use"].as_str()),
        (Some("d1-enc-1"), Some("enc"))
    );
    assert!(d1_public_jwk.get("d").is_none());
    assert_eq!(read_public_jwk(&read(&files.d1_encryption_public_jwk)), d1_secret.public_key());

    let card_set = json(&files.card_data_private_jwks);
    assert_eq!(card_set["keys"][0]["kid"], "card-data-1");
    let card_secret = SecretKey::from_jwk_str(&jwk_without_extras(&card_set["keys"][0])).unwrap();
    assert_eq!(read_public_jwk(&read(&files.card_data_public_jwk)), card_secret.public_key());

    let env = read(&files.env);
    for line in [
        "D1_ISSUER_ID=ISSUER0001",
        "D1_AUTH_KEY_ID=issuer-auth-1",
        &format!("D1_AUTH_KEY={}", files.issuer_auth_private_pem.display()),
        &format!("D1_ENCRYPTION_KEY={}", files.d1_encryption_public_jwk.display()),
        &format!("CARD_DATA_KEYS={}", files.card_data_private_jwks.display()),
        &format!("D1SIM_ISSUER_KEYS={}", files.issuer_auth_public_jwks.display()),
        &format!("D1SIM_ENCRYPTION_KEY={}", files.d1_encryption_private_jwk.display()),
        "D1_API_URL=https://localhost:8480",
    ] {
        assert!(env.lines().any(|l| l == line), "keys.env lacks {line}");
    }

    let tls = files.tls.as_ref().unwrap();
    reqwest::Certificate::from_pem(read(&tls.ca_cert).as_bytes()).unwrap();
    reqwest::Identity::from_pkcs8_pem(read(&tls.client_cert).as_bytes(), read(&tls.client_key).as_bytes())
        .unwrap();
    assert!(read(&tls.server_cert).starts_with("-----BEGIN CERTIFICATE-----"));
}

#[tokio::test]
async fn keys_honours_custom_kids_and_issuer_id_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let options = KeyOptions {
        issuer_auth_kid: "auth-2".into(),
        d1_encryption_kid: "enc-2".into(),
        card_data_kid: "card-2".into(),
        issuer_id: "BANK000042".into(),
        tls: false,
    };
    let files = generate(dir.path(), &options).unwrap();
    assert!(files.tls.is_none());
    assert!(!dir.path().join("ca.pem").exists());
    let env = std::fs::read_to_string(&files.env).unwrap();
    assert!(env.contains("D1_ISSUER_ID=BANK000042\n") && env.contains("D1_AUTH_KEY_ID=auth-2\n"));
    let config = d1_simulator::SimConfig::from_key_files(&files).unwrap();
    assert_eq!(config.issuer_id, "BANK000042");
    assert!(config.issuer_keys.contains_key("auth-2") && config.encryption_keys.contains_key("enc-2"));
}
