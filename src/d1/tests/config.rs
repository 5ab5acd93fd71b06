//! Configuration checks at construction.

use std::time::Duration;

use super::config;
use crate::d1::{D1Client, D1ConfigError};

#[test]
fn plain_http_to_a_non_loopback_host_is_refused() {
    for url in ["http://d1.example.com", "http://10.0.0.1:8480", "http://[2001:db8::1]/"] {
        let (config, _, _) = config(url, Duration::from_secs(1));
        assert!(matches!(D1Client::new(config), Err(D1ConfigError::InsecureUrl { .. })), "{url}");
    }
}

#[test]
fn plain_http_to_loopback_and_https_anywhere_are_accepted() {
    for url in [
        "http://127.0.0.1:8480",
        "http://127.1.2.3",
        "http://localhost:1",
        "http://[::1]:8480",
        "https://localhost:8443",
    ] {
        let (config, _, _) = config(url, Duration::from_secs(1));
        assert!(D1Client::new(config).is_ok(), "{url}");
    }
}

#[test]
fn https_to_a_non_loopback_host_without_a_client_certificate_is_refused() {
    for url in ["https://api.d1.thalescloud.io", "https://10.0.0.1:8443"] {
        let (config, _, _) = config(url, Duration::from_secs(1));
        let err = D1Client::new(config).unwrap_err();
        assert!(matches!(err, D1ConfigError::ClientIdentityRequired { .. }), "{url}: {err}");
    }
}

#[test]
fn other_schemes_are_refused() {
    let (config, _, _) = config("ftp://127.0.0.1/", Duration::from_secs(1));
    assert!(matches!(D1Client::new(config), Err(D1ConfigError::UnsupportedUrl)));
}

#[test]
fn missing_tls_files_are_named_in_the_error() {
    let (mut config, _, _) = config("https://localhost:8443", Duration::from_secs(1));
    config.ca_cert = Some("/nonexistent/ca.pem".into());
    let err = D1Client::new(config).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn a_client_certificate_with_plain_http_is_refused() {
    let (mut config, _, _) = config("http://127.0.0.1:8480", Duration::from_secs(1));
    config.client_identity = Some(crate::d1::ClientIdentity { cert: "c.pem".into(), key: "k.pem".into() });
    assert!(matches!(D1Client::new(config), Err(D1ConfigError::ClientCertWithoutTls)));
}

#[test]
fn the_client_is_cheap_to_clone_and_shareable_across_tasks() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<D1Client>();
}

#[test]
fn client_debug_shows_no_key_material() {
    let (config, d1_key, _) = config("http://127.0.0.1:8480", Duration::from_secs(1));
    let debug = format!("{:?}", D1Client::new(config).unwrap());
    assert!(debug.contains("ISSUER0001") && debug.contains("d1-enc-1"), "{debug}");
    let x = d1_key.public_jwk().parameter("x").and_then(|v| v.as_str()).unwrap().to_owned();
    assert!(!debug.contains(&x));
}
