//! What one simulator instance believes: its issuer id, the issuer's ES256 public keys, D1's
//! encryption private keys, token lifetime, the answers to a registration and to a second PUT,
//! the starting faults and optional TLS. Loaded from key files written by `keys`; `Debug` shows key
//! ids only, never key material.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use p256::{PublicKey, SecretKey};

use crate::card::is_issuer_id;
use crate::faults::{Faults, FaultsError};
use crate::jwk::{self, JwkError};
use crate::keys::KeyFiles;

/// The issuer id used when none is given.
pub const DEFAULT_ISSUER_ID: &str = "ISSUER0001";

/// Configuration of a simulator instance.
#[derive(Clone)]
pub struct SimConfig {
    /// The one issuer this D1 knows (exactly 10 characters).
    pub issuer_id: String,
    /// The issuer's ES256 public keys, by kid, for the token assertion.
    pub issuer_keys: BTreeMap<String, PublicKey>,
    /// D1's P-256 private keys, by kid, for `encryptedData` (several for rotation).
    pub encryption_keys: BTreeMap<String, SecretKey>,
    /// Lifetime of issued access tokens (zero issues tokens that are already expired).
    pub token_ttl: Duration,
    /// Status of a successful registration (a 2xx; 204 answers no body).
    pub register_status: u16,
    /// The answer to a PUT for a card already stored.
    pub duplicate_answer: DuplicateAnswer,
    /// Faults in force at start and after a reset.
    pub faults: Faults,
    /// Seed of the fault RNG; `None` draws from entropy.
    pub seed: Option<u64>,
    /// HTTPS instead of HTTP, when set.
    pub tls: Option<TlsConfig>,
    /// The issuer's outbound APIs to call back (Get Consumer Info, notifications); off when unset.
    pub issuer_api: Option<crate::callbacks::IssuerApiClient>,
}

impl SimConfig {
    /// A configuration with the given issuer and keys, and defaults for everything else: 900 s
    /// tokens, 204 on success, `ok` for a duplicate PUT, no faults, no seed, no TLS.
    pub fn new(
        issuer_id: impl Into<String>,
        issuer_keys: BTreeMap<String, PublicKey>,
        encryption_keys: BTreeMap<String, SecretKey>,
    ) -> Self {
        Self {
            issuer_id: issuer_id.into(),
            issuer_keys,
            encryption_keys,
            token_ttl: Duration::from_secs(900),
            register_status: 204,
            duplicate_answer: DuplicateAnswer::Success,
            faults: Faults::none(),
            seed: None,
            tls: None,
            issuer_api: None,
        }
    }

    /// A default configuration from the files `keys::generate` wrote (issuer id, issuer public
    /// JWK Set, D1 encryption private JWK); TLS stays off.
    pub fn from_key_files(files: &KeyFiles) -> Result<Self, ConfigError> {
        Ok(Self::new(
            files.issuer_id.clone(),
            load_issuer_keys(&files.issuer_auth_public_jwks)?,
            load_encryption_keys(&files.d1_encryption_private_jwk)?,
        ))
    }

    /// Checks the configuration; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_issuer_id(&self.issuer_id) {
            return Err(ConfigError::IssuerId);
        }
        if self.issuer_keys.is_empty() {
            return Err(ConfigError::NoKeys("issuer keys"));
        }
        if self.encryption_keys.is_empty() {
            return Err(ConfigError::NoKeys("encryption keys"));
        }
        if !(200..300).contains(&self.register_status) {
            return Err(ConfigError::RegisterStatus(self.register_status));
        }
        if let DuplicateAnswer::Error { status, .. } = &self.duplicate_answer
            && !(200..600).contains(status)
        {
            return Err(ConfigError::DuplicateAnswer(format!("status {status} is not an HTTP status")));
        }
        self.faults.validate().map_err(ConfigError::Faults)
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("issuer_id", &self.issuer_id)
            .field("issuer_keys", &self.issuer_keys.keys().collect::<Vec<_>>())
            .field("encryption_keys", &self.encryption_keys.keys().collect::<Vec<_>>())
            .field("token_ttl", &self.token_ttl)
            .field("register_status", &self.register_status)
            .field("duplicate_answer", &self.duplicate_answer)
            .field("faults", &self.faults)
            .field("seed", &self.seed)
            .field("tls", &self.tls)
            .field("issuer_api", &self.issuer_api)
            .finish()
    }
}

/// The answer to a PUT for a cardId already stored (the card is never overwritten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DuplicateAnswer {
    /// The configured success status, as for a first registration (`ok`).
    Success,
    /// An error status with a JSON `{"errorCode","error"}` body (`409:CARD_ALREADY_REGISTERED`).
    Error {
        /// The HTTP status.
        status: u16,
        /// The errorCode of the body.
        error_code: String,
    },
}

impl FromStr for DuplicateAnswer {
    type Err = ConfigError;

    /// Parses `ok` or `<status>:<errorCode>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("ok") {
            return Ok(Self::Success);
        }
        let bad = || ConfigError::DuplicateAnswer(format!("{s:?} is neither ok nor STATUS:ERROR_CODE"));
        let (status, error_code) = s.split_once(':').ok_or_else(bad)?;
        let status: u16 = status.trim().parse().map_err(|_| bad())?;
        let error_code = error_code.trim();
        if error_code.is_empty() || !(100..600).contains(&status) {
            return Err(bad());
        }
        Ok(Self::Error { status, error_code: error_code.to_owned() })
    }
}

impl fmt::Display for DuplicateAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => f.write_str("ok"),
            Self::Error { status, error_code } => write!(f, "{status}:{error_code}"),
        }
    }
}

/// Server certificate, key and optional client CA (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Reads the issuer's ES256 public keys from a JWK or JWK Set file.
pub fn load_issuer_keys(path: &Path) -> Result<BTreeMap<String, PublicKey>, ConfigError> {
    let text = read(path)?;
    jwk::public_keys(&text).map_err(|source| ConfigError::Jwk { path: path.to_owned(), source })
}

/// Reads D1's P-256 private keys from a JWK or JWK Set file.
pub fn load_encryption_keys(path: &Path) -> Result<BTreeMap<String, SecretKey>, ConfigError> {
    let text = zeroize::Zeroizing::new(read(path)?);
    jwk::secret_keys(&text).map_err(|source| ConfigError::Jwk { path: path.to_owned(), source })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// A configuration problem, naming the setting or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The issuer id is not 10 characters of `[A-Za-z0-9_-]`.
    #[error("issuer id must be exactly 10 characters of [A-Za-z0-9_-]")]
    IssuerId,
    /// No keys of a kind.
    #[error("no {0} configured")]
    NoKeys(&'static str),
    /// The registration status is not 2xx.
    #[error("register status {0} is not a 2xx status")]
    RegisterStatus(u16),
    /// The duplicate answer is malformed.
    #[error("duplicate PUT answer: {0}")]
    DuplicateAnswer(String),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("{path}: {source}")]
    Jwk {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: JwkError,
    },
    /// The faults are out of range.
    #[error("faults: {0}")]
    Faults(#[from] FaultsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_answer_parses_ok_and_status_code_pairs() {
        assert_eq!("ok".parse::<DuplicateAnswer>().unwrap(), DuplicateAnswer::Success);
        assert_eq!(
            "409:CARD_ALREADY_REGISTERED".parse::<DuplicateAnswer>().unwrap(),
            DuplicateAnswer::Error { status: 409, error_code: "CARD_ALREADY_REGISTERED".into() }
        );
        assert!("409".parse::<DuplicateAnswer>().is_err());
        assert!("999:X".parse::<DuplicateAnswer>().is_err());
        assert_eq!(DuplicateAnswer::Error { status: 409, error_code: "X".into() }.to_string(), "409:X");
    }
}
