//! What the D1 client needs (URL, issuer, keys, TLS files, timeout) and how it becomes an HTTP client.
//!
//! Plain `http://` is refused unless the host is loopback (the simulator), and so is any host that is
//! not loopback without a client certificate (D1 requires mutual TLS); TLS material is read
//! from files. Errors name the URL host or the file, never key material.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use josekit::jwk::KeyPair as _;
use josekit::jwk::alg::ec::EcKeyPair;
use josekit::jwk::alg::rsa::RsaKeyPair;
use url::{Host, Url};
use zeroize::Zeroizing;

use crate::core::ids::IssuerId;
use crate::crypto::{AssertionKey, D1EncryptionKey};

/// Everything the D1 client needs. `Debug` shows key ids and paths only.
#[derive(Debug)]
pub struct D1ClientConfig {
    /// D1 host root (`D1_API_URL`), e.g. `https://api.d1.thalescloud.io`.
    pub base_url: Url,
    /// Our 10-character issuer id (`D1_ISSUER_ID`).
    pub issuer_id: IssuerId,
    /// Our ES256 key and its kid for OAuth assertions (`D1_AUTH_KEY`, `D1_AUTH_KEY_ID`).
    pub auth_key: AssertionKey,
    /// D1's public key for `encryptedData` (`D1_ENCRYPTION_KEY`).
    pub encryption_key: D1EncryptionKey,
    /// Our client certificate for mutual TLS (`D1_CLIENT_CERT`, `D1_CLIENT_KEY`).
    pub client_identity: Option<ClientIdentity>,
    /// The only CA trusted for D1's server certificate (`D1_CA_CERT`); system roots when unset.
    pub ca_cert: Option<PathBuf>,
    /// Per-request timeout, connection included (`D1_TIMEOUT_MS`).
    pub timeout: Duration,
    /// `aud` of the OAuth assertion, when D1 asks for one.
    pub audience: Option<String>,
}

/// A client certificate (PEM, chain allowed) and its private key (PEM: PKCS#8, SEC1 or PKCS#1).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Certificate file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// The D1 client cannot be built from this configuration.
#[derive(Debug, thiserror::Error)]
pub enum D1ConfigError {
    /// The URL is not `http(s)://host...`.
    #[error("D1 API URL must be an http or https URL with a host")]
    UnsupportedUrl,
    /// Plain http toward a host that is not loopback.
    #[error("D1 API URL uses plain http to non-loopback host {host}; use https")]
    InsecureUrl {
        /// The host named in the URL.
        host: String,
    },
    /// A D1 that is not loopback (the real one) without a client certificate for mutual TLS.
    #[error("D1 API URL host {host} is not loopback: a client certificate and key (mutual TLS) are required")]
    ClientIdentityRequired {
        /// The host named in the URL.
        host: String,
    },
    /// A client certificate is configured for a plain http URL.
    #[error("a D1 client certificate is configured but the D1 API URL is plain http")]
    ClientCertWithoutTls,
    /// A TLS file is missing or not what it should be.
    #[error("TLS file {}: {problem}", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The HTTP client library refused the settings.
    #[error("D1 HTTP client could not be built: {0}")]
    Http(#[source] reqwest::Error),
}

/// Checks scheme and host: https anywhere, http only to loopback.
pub(crate) fn check_url(url: &Url) -> Result<(), D1ConfigError> {
    let host = url.host().ok_or(D1ConfigError::UnsupportedUrl)?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&host) => Ok(()),
        "http" => Err(D1ConfigError::InsecureUrl { host: host.to_string() }),
        _ => Err(D1ConfigError::UnsupportedUrl),
    }
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// Builds the HTTP client: timeouts, no redirects (a redirected PUT could change method), TLS files.
pub(crate) fn http_client(config: &D1ClientConfig) -> Result<reqwest::Client, D1ConfigError> {
    check_url(&config.base_url)?;
    if config.client_identity.is_none()
        && let Some(host) = config.base_url.host().filter(|h| !is_loopback(h))
    {
        return Err(D1ConfigError::ClientIdentityRequired { host: host.to_string() });
    }
    let mut builder = reqwest::Client::builder()
        .use_native_tls()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("card-registrar/", env!("CARGO_PKG_VERSION")));
    if let Some(identity) = &config.client_identity {
        if config.base_url.scheme() != "https" {
            return Err(D1ConfigError::ClientCertWithoutTls);
        }
        builder = builder.identity(load_identity(identity)?);
    }
    if let Some(ca) = &config.ca_cert {
        let pem = read(ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| tls_problem(ca, "is not a PEM certificate"))?;
        if certs.is_empty() {
            return Err(tls_problem(ca, "holds no certificate"));
        }
        builder =
            certs.into_iter().fold(builder.tls_built_in_root_certs(false), |b, c| b.add_root_certificate(c));
    }
    builder.build().map_err(D1ConfigError::Http)
}

/// Loads the client identity; SEC1 and PKCS#1 keys are converted to PKCS#8, which native-tls needs.
fn load_identity(identity: &ClientIdentity) -> Result<reqwest::Identity, D1ConfigError> {
    let cert = read(&identity.cert)?;
    let key = read(&identity.key)?;
    let bad_key = || tls_problem(&identity.key, "is not a PEM private key (PKCS#8, SEC1 or PKCS#1)");
    let text = std::str::from_utf8(&key).map_err(|_| bad_key())?;
    let pkcs8 = if text.contains("-----BEGIN PRIVATE KEY-----") {
        key.clone()
    } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        Zeroizing::new(EcKeyPair::from_pem(text, None).map_err(|_| bad_key())?.to_pem_private_key())
    } else if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        Zeroizing::new(RsaKeyPair::from_pem(text).map_err(|_| bad_key())?.to_pem_private_key())
    } else {
        return Err(bad_key());
    };
    reqwest::Identity::from_pkcs8_pem(&cert, &pkcs8)
        .map_err(|_| tls_problem(&identity.cert, "with its key is not a usable client identity"))
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, D1ConfigError> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| tls_problem(path, &format!("cannot be read: {e}")))
}

fn tls_problem(path: &Path, problem: &str) -> D1ConfigError {
    D1ConfigError::TlsFile { path: path.to_owned(), problem: problem.to_owned() }
}
