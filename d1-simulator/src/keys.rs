//! Generates every key both sides need, under fixed file names the service relies on: the issuer's
//! ES256 key (PEM, JWK, public JWK Set), D1's P-256 encryption key (private and public JWK), the
//! card-data key (private JWK Set, public JWK), a `keys.env`, and with TLS a CA, a server and a
//! client certificate. Private key files get mode 0600. Never prints key material.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use p256::SecretKey;
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::config::DEFAULT_ISSUER_ID;
use crate::jwk::{private_jwk, public_jwk};

/// Key ids, issuer id and whether to add TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOptions {
    /// kid of the issuer's ES256 authentication key (default `issuer-auth-1`).
    pub issuer_auth_kid: String,
    /// kid of D1's encryption key (default `d1-enc-1`).
    pub d1_encryption_kid: String,
    /// kid of our card-data key (default `card-data-1`).
    pub card_data_kid: String,
    /// Issuer id written into `keys.env` (default `ISSUER0001`).
    pub issuer_id: String,
    /// Also write a CA, a server certificate (localhost, 127.0.0.1) and a client certificate.
    pub tls: bool,
}

impl Default for KeyOptions {
    fn default() -> Self {
        Self {
            issuer_auth_kid: "issuer-auth-1".into(),
            d1_encryption_kid: "d1-enc-1".into(),
            card_data_kid: "card-data-1".into(),
            issuer_id: DEFAULT_ISSUER_ID.into(),
            tls: false,
        }
    }
}

/// The files written, as absolute paths, with the kids and issuer id they were made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFiles {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// Issuer id written into `keys.env`.
    pub issuer_id: String,
    /// kid of the issuer authentication key.
    pub issuer_auth_kid: String,
    /// kid of D1's encryption key.
    pub d1_encryption_kid: String,
    /// kid of the card-data key.
    pub card_data_kid: String,
    /// `issuer-auth-private.pem`: ES256 private key, PKCS#8 PEM.
    pub issuer_auth_private_pem: PathBuf,
    /// `issuer-auth-private.jwk`: the same key as a private JWK with kid.
    pub issuer_auth_private_jwk: PathBuf,
    /// `issuer-auth-public.jwks`: JWK Set with the public key (for the simulator).
    pub issuer_auth_public_jwks: PathBuf,
    /// `d1-encryption-private.jwk`: D1's private JWK (for the simulator).
    pub d1_encryption_private_jwk: PathBuf,
    /// `d1-encryption-public.jwk`: D1's public JWK, `use` = `enc` (for the service).
    pub d1_encryption_public_jwk: PathBuf,
    /// `card-data-private.jwks`: JWK Set with our card-data private key (for the service).
    pub card_data_private_jwks: PathBuf,
    /// `card-data-public.jwk`: the card-data public JWK (for producers).
    pub card_data_public_jwk: PathBuf,
    /// `keys.env`: suggested environment for both sides.
    pub env: PathBuf,
    /// TLS material, when asked for.
    pub tls: Option<TlsFiles>,
}

/// TLS files written with `--tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `ca.pem`: the CA certificate that signed both others.
    pub ca_cert: PathBuf,
    /// `server.pem`: server certificate for localhost and 127.0.0.1.
    pub server_cert: PathBuf,
    /// `server-key.pem`: its private key (PKCS#8).
    pub server_key: PathBuf,
    /// `client.pem`: client certificate for mutual TLS.
    pub client_cert: PathBuf,
    /// `client-key.pem`: its private key (PKCS#8).
    pub client_key: PathBuf,
}

/// Why key generation failed, naming the file or step.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file or the directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key could not be encoded.
    #[error("cannot encode the {0} key")]
    Encode(&'static str),
    /// A certificate could not be generated.
    #[error("cannot generate the {what} certificate: {source}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
}

/// Writes every key file into `dir` (created if needed) and returns their paths.
pub fn generate(dir: &Path, options: &KeyOptions) -> Result<KeyFiles, KeysError> {
    std::fs::create_dir_all(dir).map_err(|source| KeysError::Write { path: dir.to_owned(), source })?;
    let dir = dir.canonicalize().map_err(|source| KeysError::Write { path: dir.to_owned(), source })?;
    let path = |name: &str| dir.join(name);
    let mut rng = rand::rngs::OsRng;

    let issuer = SecretKey::random(&mut rng);
    let issuer_kid = options.issuer_auth_kid.as_str();
    let pem = issuer.to_pkcs8_pem(LineEnding::LF).map_err(|_| KeysError::Encode("issuer authentication"))?;
    write_secret(&path("issuer-auth-private.pem"), pem.as_bytes())?;
    write_secret_json(&path("issuer-auth-private.jwk"), &private_jwk(&issuer, issuer_kid, "sig", "ES256"))?;
    let issuer_public = json!({"keys": [public_jwk(&issuer.public_key(), issuer_kid, "sig", "ES256")]});
    write_public(&path("issuer-auth-public.jwks"), &pretty(&issuer_public))?;

    let d1 = SecretKey::random(&mut rng);
    let d1_kid = options.d1_encryption_kid.as_str();
    write_secret_json(&path("d1-encryption-private.jwk"), &private_jwk(&d1, d1_kid, "enc", "ECDH-ES"))?;
    write_public(
        &path("d1-encryption-public.jwk"),
        &pretty(&public_jwk(&d1.public_key(), d1_kid, "enc", "ECDH-ES")),
    )?;

    let card = SecretKey::random(&mut rng);
    let card_kid = options.card_data_kid.as_str();
    write_secret_json(
        &path("card-data-private.jwks"),
        &json!({"keys": [private_jwk(&card, card_kid, "enc", "ECDH-ES")]}),
    )?;
    write_public(
        &path("card-data-public.jwk"),
        &pretty(&public_jwk(&card.public_key(), card_kid, "enc", "ECDH-ES")),
    )?;

    let tls = if options.tls { Some(generate_tls(&dir)?) } else { None };
    let files = KeyFiles {
        issuer_id: options.issuer_id.clone(),
        issuer_auth_kid: issuer_kid.to_owned(),
        d1_encryption_kid: d1_kid.to_owned(),
        card_data_kid: card_kid.to_owned(),
        issuer_auth_private_pem: path("issuer-auth-private.pem"),
        issuer_auth_private_jwk: path("issuer-auth-private.jwk"),
        issuer_auth_public_jwks: path("issuer-auth-public.jwks"),
        d1_encryption_private_jwk: path("d1-encryption-private.jwk"),
        d1_encryption_public_jwk: path("d1-encryption-public.jwk"),
        card_data_private_jwks: path("card-data-private.jwks"),
        card_data_public_jwk: path("card-data-public.jwk"),
        env: path("keys.env"),
        tls,
        dir,
    };
    write_public(&files.env, &env_file(&files))?;
    Ok(files)
}

fn generate_tls(dir: &Path) -> Result<TlsFiles, KeysError> {
    let cert_error = |what| move |source| KeysError::Certificate { what, source };
    let ca_key = KeyPair::generate().map_err(cert_error("CA"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error("CA"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "d1-simulator test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error("CA"))?;
    let ca = Issuer::new(ca_params, ca_key);

    let leaf = |what: &'static str, names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(cert_error(what))?;
        let mut params = CertificateParams::new(names).map_err(cert_error(what))?;
        params.distinguished_name.push(DnType::CommonName, what);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).map_err(cert_error(what))?;
        Ok::<_, KeysError>((cert.pem(), Zeroizing::new(key.serialize_pem())))
    };
    let server_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (server_pem, server_key) =
        leaf("d1-simulator server", server_names, ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_pem, client_key) =
        leaf("card-registrar client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;

    let files = TlsFiles {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    write_public(&files.ca_cert, &ca_cert.pem())?;
    write_public(&files.server_cert, &server_pem)?;
    write_secret(&files.server_key, server_key.as_bytes())?;
    write_public(&files.client_cert, &client_pem)?;
    write_secret(&files.client_key, client_key.as_bytes())?;
    Ok(files)
}

fn env_file(files: &KeyFiles) -> String {
    let p = |path: &Path| path.display().to_string();
    let scheme = if files.tls.is_some() { "https://localhost" } else { "http://127.0.0.1" };
    let mut env = format!(
        "# card-registrar\n\
         D1_API_URL={scheme}:8480\n\
         D1_ISSUER_ID={issuer}\n\
         D1_AUTH_KEY={auth_key}\n\
         D1_AUTH_KEY_ID={auth_kid}\n\
         D1_ENCRYPTION_KEY={enc_public}\n\
         CARD_DATA_KEYS={card_keys}\n",
        issuer = files.issuer_id,
        auth_key = p(&files.issuer_auth_private_pem),
        auth_kid = files.issuer_auth_kid,
        enc_public = p(&files.d1_encryption_public_jwk),
        card_keys = p(&files.card_data_private_jwks),
    );
    if let Some(tls) = &files.tls {
        env += &format!(
            "D1_CLIENT_CERT={}\nD1_CLIENT_KEY={}\nD1_CA_CERT={}\n",
            p(&tls.client_cert),
            p(&tls.client_key),
            p(&tls.ca_cert)
        );
    }
    env += &format!(
        "\n# d1-simulator\n\
         D1SIM_ISSUER_ID={issuer}\n\
         D1SIM_ISSUER_KEYS={issuer_keys}\n\
         D1SIM_ENCRYPTION_KEY={enc_private}\n",
        issuer = files.issuer_id,
        issuer_keys = p(&files.issuer_auth_public_jwks),
        enc_private = p(&files.d1_encryption_private_jwk),
    );
    if let Some(tls) = &files.tls {
        env += &format!(
            "D1SIM_TLS_CERT={}\nD1SIM_TLS_KEY={}\nD1SIM_CLIENT_CA={}\n",
            p(&tls.server_cert),
            p(&tls.server_key),
            p(&tls.ca_cert)
        );
    }
    env
}

fn pretty(value: &serde_json::Value) -> String {
    // Serializing a Value cannot fail; fall back to the compact form anyway rather than panic.
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()) + "\n"
}

fn write_secret_json(path: &Path, value: &serde_json::Value) -> Result<(), KeysError> {
    let text = Zeroizing::new(pretty(value));
    write_secret(path, text.as_bytes())
}

fn write_public(path: &Path, text: &str) -> Result<(), KeysError> {
    write_file(path, text.as_bytes(), 0o644)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeysError> {
    write_file(path, bytes, 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeysError> {
    let error = |source| KeysError::Write { path: path.to_owned(), source };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(mode);
        let mut file = options.open(path).map_err(error)?;
        // An existing file keeps its old mode on open, so set it explicitly.
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(error)?;
        file.write_all(bytes).map_err(error)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        options.open(path).and_then(|mut file| file.write_all(bytes)).map_err(error)
    }
}
