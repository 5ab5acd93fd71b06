//! Settings: every variable of the configuration contract, also a `--flag` (clap `env`).
//!
//! Parsing checks types; `validate()` checks what a type cannot (files readable, id formats,
//! cross-field rules) and names the variable in its one-line error. Secret files are only named
//! here; their content is read by the adapters into redacting types and never printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use url::Url;

use crate::core::ids::IssuerId;

/// A setting that stops start-up; `Display` is the one line shown to the operator.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable (its `--flag` twin is the same name in kebab case).
    pub variable: &'static str,
    /// What is wrong, never the secret itself.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self { variable, problem: problem.into() }
    }
}

/// PostgreSQL. `Debug` redacts the URL's password and query (which may hold one).
#[derive(Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/card_registrar",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Largest number of pooled connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, global = true)]
    pub database_max_connections: u32,
    /// Connections `run` keeps open, idle or not (default: `DATABASE_MAX_CONNECTIONS`, a
    /// fixed-size pool).
    #[arg(long, env = "DATABASE_MIN_CONNECTIONS", global = true)]
    pub database_min_connections: Option<u32>,
}

/// Kafka and the event contract's topics. `Debug` redacts credentials in the registry URL.
#[derive(Clone, Args)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Consumer group.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "card-registrar")]
    pub kafka_group_id: String,
    /// Topic of `CardCreated` events.
    #[arg(long, env = "TOPIC_CARD_CREATED", default_value = "card-created")]
    pub topic_card_created: String,
    /// Topic of `CardTokenized` events.
    #[arg(long, env = "TOPIC_CARD_TOKENIZED", default_value = "card-tokenized")]
    pub topic_card_tokenized: String,
    /// Topic of `CardOrdered` events.
    #[arg(long, env = "TOPIC_CARD_ORDERED", default_value = "card-ordered")]
    pub topic_card_ordered: String,
    /// Topic of `ConsumerProfile` records (read only when CONSUMER_DATA_KEYS is set).
    #[arg(long, env = "TOPIC_CONSUMER_PROFILE", default_value = "consumer-profile")]
    pub topic_consumer_profile: String,
    /// Confluent-compatible schema registry, for messages in the Confluent wire format.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<Url>,
    /// File holding `user:password` for the registry's HTTP basic auth (Confluent's `basic.auth.user.info`).
    #[arg(long, env = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE")]
    pub schema_registry_basic_auth_user_info_file: Option<PathBuf>,
    /// File holding the CA (PEM) the registry's certificate must chain to, if not a public root.
    #[arg(long, env = "SCHEMA_REGISTRY_CA_CERT")]
    pub schema_registry_ca_cert: Option<PathBuf>,
    /// Timeout of one registry request, in milliseconds.
    #[arg(long, env = "SCHEMA_REGISTRY_TIMEOUT_MS", default_value_t = 5000)]
    pub schema_registry_timeout_ms: u64,
    /// TLS, SASL and pass-through properties toward the brokers.
    #[command(flatten)]
    pub security: KafkaSecuritySettings,
}

/// `security.protocol` toward the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaSecurityProtocol {
    /// No TLS, no authentication (loopback and tests only).
    Plaintext,
    /// TLS, optionally with a client certificate.
    Ssl,
    /// SASL without TLS (the password crosses the network in clear with PLAIN).
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL over TLS: what most banks' clusters require.
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaSaslMechanism {
    /// Username and password sent as they are (use with TLS only).
    #[value(name = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens fetched from an OIDC token endpoint (client credentials grant).
    #[value(name = "OAUTHBEARER")]
    OauthBearer,
}

/// Kafka security settings; secrets come from files. Checked and turned into client properties by
/// [`crate::kafka::KafkaSecurity::from_settings`].
#[derive(Debug, Clone, Args)]
pub struct KafkaSecuritySettings {
    /// Protocol toward the brokers.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_enum, ignore_case = true, default_value_t = KafkaSecurityProtocol::Plaintext)]
    pub kafka_security_protocol: KafkaSecurityProtocol,
    /// SASL mechanism (required with sasl_plaintext and sasl_ssl).
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub kafka_sasl_mechanism: Option<KafkaSaslMechanism>,
    /// SASL username (PLAIN, SCRAM).
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// File holding the SASL password (PLAIN, SCRAM); one trailing newline is ignored.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// OIDC token endpoint (OAUTHBEARER).
    #[arg(long, env = "KAFKA_OAUTH_TOKEN_ENDPOINT_URL")]
    pub kafka_oauth_token_endpoint_url: Option<Url>,
    /// OAuth client id (OAUTHBEARER).
    #[arg(long, env = "KAFKA_OAUTH_CLIENT_ID")]
    pub kafka_oauth_client_id: Option<String>,
    /// File holding the OAuth client secret (OAUTHBEARER).
    #[arg(long, env = "KAFKA_OAUTH_CLIENT_SECRET_FILE")]
    pub kafka_oauth_client_secret_file: Option<PathBuf>,
    /// OAuth scope requested with the token (OAUTHBEARER, optional).
    #[arg(long, env = "KAFKA_OAUTH_SCOPE")]
    pub kafka_oauth_scope: Option<String>,
    /// CA certificate(s) (PEM) the brokers' certificates must chain to; system roots when unset.
    #[arg(long, env = "KAFKA_SSL_CA_FILE")]
    pub kafka_ssl_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for TLS client authentication.
    #[arg(long, env = "KAFKA_SSL_CERT_FILE")]
    pub kafka_ssl_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "KAFKA_SSL_KEY_FILE")]
    pub kafka_ssl_key_file: Option<PathBuf>,
    /// File holding the password of an encrypted KAFKA_SSL_KEY_FILE.
    #[arg(long, env = "KAFKA_SSL_KEY_PASSWORD_FILE")]
    pub kafka_ssl_key_password_file: Option<PathBuf>,
    /// Check that the broker's certificate names the host we connect to.
    #[arg(long, env = "KAFKA_SSL_VERIFY_HOSTNAME", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_ssl_verify_hostname: bool,
    /// Other librdkafka properties, one `key=value` a line (Java properties syntax).
    #[arg(long, env = "KAFKA_PROPERTIES_FILE")]
    pub kafka_properties_file: Option<PathBuf>,
    /// Longest wait at start-up for the brokers to accept our credentials, milliseconds.
    #[arg(long, env = "KAFKA_STARTUP_CHECK_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(500..))]
    pub kafka_startup_check_timeout_ms: u64,
}

/// D1 and the keys toward it.
#[derive(Debug, Clone, Args)]
pub struct D1Settings {
    /// D1 host root.
    #[arg(long, env = "D1_API_URL", default_value = "http://127.0.0.1:8480")]
    pub d1_api_url: Url,
    /// Our 10-character D1 issuer id.
    #[arg(long, env = "D1_ISSUER_ID")]
    pub d1_issuer_id: Option<String>,
    /// File holding our ES256 private key (PEM or JWK) for OAuth assertions.
    #[arg(long, env = "D1_AUTH_KEY")]
    pub d1_auth_key: Option<PathBuf>,
    /// The kid D1 knows our auth key by.
    #[arg(long, env = "D1_AUTH_KEY_ID")]
    pub d1_auth_key_id: Option<String>,
    /// File holding D1's P-256 public encryption key (JWK with kid).
    #[arg(long, env = "D1_ENCRYPTION_KEY")]
    pub d1_encryption_key: Option<PathBuf>,
    /// Optional `aud` claim of the OAuth assertion.
    #[arg(long, env = "D1_AUTH_AUDIENCE")]
    pub d1_auth_audience: Option<String>,
    /// Client certificate (PEM) for mutual TLS toward D1.
    #[arg(long, env = "D1_CLIENT_CERT")]
    pub d1_client_cert: Option<PathBuf>,
    /// Client private key (PEM, PKCS#8) for mutual TLS toward D1.
    #[arg(long, env = "D1_CLIENT_KEY")]
    pub d1_client_key: Option<PathBuf>,
    /// CA certificate (PEM) that D1's server certificate must chain to.
    #[arg(long, env = "D1_CA_CERT")]
    pub d1_ca_cert: Option<PathBuf>,
    /// Most D1 calls in flight at once, per process.
    #[arg(long, env = "D1_MAX_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub d1_max_concurrency: u32,
    /// Most D1 calls started per second by the whole fleet (every replica dispatching through the
    /// same database draws from one budget in PostgreSQL).
    #[arg(long, env = "D1_MAX_RPS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub d1_max_rps: u32,
    /// Most replicas that dispatch at once; a replica that cannot reach the fleet's rate budget in
    /// PostgreSQL starts at most D1_MAX_RPS / D1_MAX_REPLICAS calls per second on its own.
    #[arg(long, env = "D1_MAX_REPLICAS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub d1_max_replicas: u32,
    /// Timeout of one D1 request, milliseconds.
    #[arg(long, env = "D1_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub d1_timeout_ms: u64,
}

/// Our card-data keys, used to read `encryptedCard`.
#[derive(Debug, Clone, Args)]
pub struct CardDataSettings {
    /// File holding our P-256 private key(s) for `encryptedCard` (JWK or JWK Set; several for rotation).
    #[arg(long, env = "CARD_DATA_KEYS")]
    pub card_data_keys: Option<PathBuf>,
    /// Accept a cardId made only of digits even if it passes Luhn (a bank whose card ids are
    /// numeric). Off: such ids are refused as possible PANs. A PAN-like run inside a mixed id is
    /// always refused.
    #[arg(long, env = "CARD_ID_ALLOW_NUMERIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub card_id_allow_numeric: bool,
}

/// Ingest tuning.
#[derive(Debug, Clone, Args)]
pub struct IngestSettings {
    /// Most messages applied in one PostgreSQL transaction, per partition.
    #[arg(long, env = "INGEST_BATCH_MAX", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ingest_batch_max: u32,
    /// Longest wait to fill a batch, milliseconds (the period of the clock partitions close batches on).
    #[arg(long, env = "INGEST_BATCH_WAIT_MS", default_value_t = 20)]
    pub ingest_batch_wait_ms: u64,
    /// Messages buffered per partition before it is paused (backpressure).
    #[arg(long, env = "INGEST_QUEUE_CAPACITY", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub ingest_queue_capacity: u32,
    /// Most message memory (`RawMessage::size`: bytes and what holding them costs) applied in one
    /// PostgreSQL transaction, per partition. A single larger message still forms a batch of one.
    #[arg(long, env = "INGEST_BATCH_MAX_BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1024..=(256 << 20)))]
    pub ingest_batch_max_bytes: u64,
    /// Message memory buffered per partition (queue and batch in hand) before it is paused; also
    /// sizes the Kafka client's fetches and pre-fetch queue.
    #[arg(long, env = "INGEST_QUEUE_MAX_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub ingest_queue_max_bytes: u64,
    /// Message memory buffered by all partitions together (queues and batches in hand) before the
    /// next partition to receive is paused; also caps the Kafka client's pre-fetch queue at half.
    /// Keeps memory flat whatever the number of assigned partitions.
    #[arg(long, env = "INGEST_MEMORY_MAX_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(4 << 30)))]
    pub ingest_memory_max_bytes: u64,
    /// Batches prepared and applied at once by all partitions together: bounds the memory of the
    /// batches being worked on and the database connections ingest holds, so dispatch keeps its
    /// share of `DATABASE_MAX_CONNECTIONS` while a backlog is ingested.
    #[arg(long, env = "INGEST_BATCHES_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub ingest_batches_in_flight: u64,
}

/// Dispatch tuning: retries, leases, breaker, retention.
#[derive(Debug, Clone, Args)]
pub struct DispatchSettings {
    /// Attempts before a row is PARKED and its card FAILED.
    #[arg(long, env = "DISPATCH_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub dispatch_max_attempts: u32,
    /// Seconds of attempts before a row is PARKED (default 24 h).
    #[arg(long, env = "DISPATCH_MAX_AGE_SECS", default_value_t = 86_400)]
    pub dispatch_max_age_secs: u64,
    /// Smallest retry delay ceiling, milliseconds (doubles per attempt).
    #[arg(long, env = "DISPATCH_RETRY_MIN_MS", default_value_t = 200)]
    pub dispatch_retry_min_ms: u64,
    /// Largest retry delay ceiling, milliseconds (default 5 min).
    #[arg(long, env = "DISPATCH_RETRY_MAX_MS", default_value_t = 300_000)]
    pub dispatch_retry_max_ms: u64,
    /// Least wait, milliseconds, before asking D1 (Get Card) about a call that may have reached it:
    /// D1 must commit or abandon every PUT within this long of receiving it. At least D1_TIMEOUT_MS.
    #[arg(long, env = "DISPATCH_RECONCILE_DELAY_MS", default_value_t = 30_000)]
    pub dispatch_reconcile_delay_ms: u64,
    /// Lease on a claimed row, seconds; 0 = max(60, ceil((margin + 4 x D1_TIMEOUT_MS) / 1000)).
    /// At least DISPATCH_LEASE_MARGIN_MS + 3 x D1_TIMEOUT_MS (token, Get Card, PUT).
    #[arg(long, env = "DISPATCH_LEASE_SECS", default_value_t = 0)]
    pub dispatch_lease_secs: u64,
    /// Safety margin, milliseconds: every D1 request of an attempt must be able to end this long
    /// before the lease does (covers a pause between the check and the send).
    #[arg(long, env = "DISPATCH_LEASE_MARGIN_MS", default_value_t = 5_000)]
    pub dispatch_lease_margin_ms: u64,
    /// Poll interval when no notification arrives, milliseconds (at most 1000).
    #[arg(long, env = "DISPATCH_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=1000))]
    pub dispatch_poll_ms: u64,
    /// Consecutive retryable D1 failures that open the circuit breaker.
    #[arg(long, env = "DISPATCH_BREAKER_THRESHOLD", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub dispatch_breaker_threshold: u32,
    /// Seconds the breaker stays open before one probe.
    #[arg(long, env = "DISPATCH_BREAKER_COOL_DOWN_SECS", default_value_t = 30)]
    pub dispatch_breaker_cool_down_secs: u64,
    /// Days finished outbox rows are kept.
    #[arg(long, env = "OUTBOX_RETENTION_DAYS", default_value_t = 7)]
    pub outbox_retention_days: u64,
}

/// How registration results are framed on the results topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFraming {
    /// Avro single-object encoding (`C3 01` + the schema's CRC-64-AVRO fingerprint).
    #[value(name = "single-object")]
    SingleObject,
    /// Confluent wire format (`00` + `RESULTS_SCHEMA_ID`, the registry's id of the schema).
    Confluent,
}

/// The registration-results topic and its relay (results outbox -> Kafka).
#[derive(Debug, Clone, Args)]
pub struct ResultsSettings {
    /// Topic the registration results are published to.
    #[arg(long, env = "TOPIC_REGISTRATION_RESULTS", default_value = "card-registration-results")]
    pub topic_registration_results: String,
    /// Run the results relay in this process (any number of replicas may).
    #[arg(long, env = "RESULTS_RELAY_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub results_relay_enabled: bool,
    /// Value framing of the results: single-object or confluent.
    #[arg(long, env = "RESULTS_FRAMING", value_enum, default_value_t = ResultsFraming::SingleObject)]
    pub results_framing: ResultsFraming,
    /// The schema registry's id of `schemas/card-registration-result`'s newest version (confluent framing).
    #[arg(long, env = "RESULTS_SCHEMA_ID")]
    pub results_schema_id: Option<u32>,
    /// Most results claimed and published at once.
    #[arg(long, env = "RESULTS_BATCH_MAX", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub results_batch_max: u32,
    /// Lease on claimed results, seconds; the producer gives up on a message after 3/4 of it.
    #[arg(long, env = "RESULTS_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(4..=3600))]
    pub results_lease_secs: u64,
    /// Days published results are kept in PostgreSQL.
    #[arg(long, env = "RESULTS_RETENTION_DAYS", default_value_t = 7)]
    pub results_retention_days: u64,
}

impl ResultsSettings {
    /// Checks the topic name (and that it is not an input topic) and the framing's schema id.
    pub fn validate(&self, kafka: &KafkaSettings) -> Result<crate::avro::encode::Framing, ConfigError> {
        let topic = &self.topic_registration_results;
        let ok = !topic.is_empty()
            && topic.len() <= 249
            && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(ConfigError::new(
                "TOPIC_REGISTRATION_RESULTS",
                "not a valid Kafka topic name ([A-Za-z0-9._-], 1..249)",
            ));
        }
        if [&kafka.topic_card_created, &kafka.topic_card_tokenized, &kafka.topic_card_ordered]
            .contains(&topic)
        {
            return Err(ConfigError::new("TOPIC_REGISTRATION_RESULTS", "must differ from the input topics"));
        }
        match (self.results_framing, self.results_schema_id) {
            (ResultsFraming::SingleObject, None) => Ok(crate::avro::encode::Framing::SingleObject),
            (ResultsFraming::SingleObject, Some(_)) => {
                Err(ConfigError::new("RESULTS_SCHEMA_ID", "applies only with RESULTS_FRAMING=confluent"))
            }
            (ResultsFraming::Confluent, Some(schema_id)) => {
                Ok(crate::avro::encode::Framing::Confluent { schema_id })
            }
            (ResultsFraming::Confluent, None) => Err(ConfigError::new(
                "RESULTS_SCHEMA_ID",
                "missing: RESULTS_FRAMING=confluent needs the registry's id of the results schema",
            )),
        }
    }
}

/// Admin HTTP endpoints.
#[derive(Debug, Clone, Args)]
pub struct AdminSettings {
    /// Listen address of `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, env = "ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
}

/// Consumer-data keys: consumer profiles at rest.
#[derive(Debug, Clone, Args)]
pub struct ConsumerDataSettings {
    /// File holding our P-256 private key(s) sealing consumer profiles at rest (JWK or JWK Set;
    /// the first seals, every one opens: rotation). Unset: the consumer-profile topic is not read.
    #[arg(long, env = "CONSUMER_DATA_KEYS")]
    pub consumer_data_keys: Option<PathBuf>,
}

impl ConsumerDataSettings {
    /// The key file, when set and readable.
    pub fn validate(&self) -> Result<Option<PathBuf>, ConfigError> {
        match &self.consumer_data_keys {
            Some(p) => Ok(Some(required_file("CONSUMER_DATA_KEYS", Some(p), "the consumer-data keys")?)),
            None => Ok(None),
        }
    }
}

/// The issuer API: what D1 calls on the bank's side (OAuth token, Get Consumer Info, Notify Card
/// Operations), on its own port with mutual TLS.
#[derive(Debug, Clone, Args)]
pub struct IssuerApiSettings {
    /// Listen address of the issuer API; off when unset.
    #[arg(long, env = "ISSUER_API_LISTEN")]
    pub issuer_api_listen: Option<SocketAddr>,
    /// Server certificate chain (PEM) of the issuer API.
    #[arg(long, env = "ISSUER_API_TLS_CERT")]
    pub issuer_api_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the server certificate.
    #[arg(long, env = "ISSUER_API_TLS_KEY")]
    pub issuer_api_tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that D1's client certificates must chain to (mutual TLS).
    #[arg(long, env = "ISSUER_API_CLIENT_CA")]
    pub issuer_api_client_ca: Option<PathBuf>,
    /// File holding the OAuth client id the bank gives D1; one trailing newline is ignored.
    #[arg(long, env = "ISSUER_API_CLIENT_ID_FILE")]
    pub issuer_api_client_id_file: Option<PathBuf>,
    /// File holding the OAuth client secret the bank gives D1; one trailing newline is ignored.
    #[arg(long, env = "ISSUER_API_CLIENT_SECRET_FILE")]
    pub issuer_api_client_secret_file: Option<PathBuf>,
    /// File holding the ES256 private key (PEM or JWK) that signs the access tokens.
    #[arg(long, env = "ISSUER_API_TOKEN_KEY")]
    pub issuer_api_token_key: Option<PathBuf>,
    /// Lifetime of an access token, seconds.
    #[arg(long, env = "ISSUER_API_TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(60..=3600))]
    pub issuer_api_token_ttl_secs: u64,
    /// Largest request body accepted, and largest answer relayed in proxy mode, bytes.
    #[arg(long, env = "ISSUER_API_MAX_BODY_BYTES", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1024..=(16 << 20)))]
    pub issuer_api_max_body_bytes: u64,
    /// Proxy mode: the bank's own Get Consumer Info root URL, called instead of answering from the
    /// consumer-profile topic.
    #[arg(long, env = "ISSUER_API_CONSUMER_INFO_URL")]
    pub issuer_api_consumer_info_url: Option<Url>,
    /// Timeout of one proxied Get Consumer Info call, milliseconds.
    #[arg(long, env = "ISSUER_API_PROXY_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=30_000))]
    pub issuer_api_proxy_timeout_ms: u64,
}

/// The issuer API settings after validation.
#[derive(Debug, Clone)]
pub struct ValidIssuerApiSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Our issuer id (D1_ISSUER_ID): the only one the paths may name.
    pub issuer_id: IssuerId,
    /// Server certificate chain file.
    pub tls_cert: PathBuf,
    /// Server key file.
    pub tls_key: PathBuf,
    /// Client CA file.
    pub client_ca: PathBuf,
    /// Client id file.
    pub client_id_file: PathBuf,
    /// Client secret file.
    pub client_secret_file: PathBuf,
    /// Token signing key file.
    pub token_key: PathBuf,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Body bound.
    pub max_body_bytes: usize,
    /// Where Get Consumer Info is answered from.
    pub consumer_source: ConsumerSourceSettings,
}

/// Where Get Consumer Info answers come from.
#[derive(Debug, Clone)]
pub enum ConsumerSourceSettings {
    /// The consumer-profile topic, opened with these keys.
    Profiles {
        /// CONSUMER_DATA_KEYS.
        keys: PathBuf,
    },
    /// The bank's own service.
    Proxy {
        /// Root URL.
        url: Url,
        /// Per-call timeout.
        timeout: Duration,
    },
}

impl IssuerApiSettings {
    /// `None` when the API is off; else every file present, the issuer id valid, and a source
    /// for consumer information (the profile keys, or a proxy URL).
    pub fn validate(
        &self,
        issuer_id: Option<&str>,
        consumer_data_keys: Option<&Path>,
    ) -> Result<Option<ValidIssuerApiSettings>, ConfigError> {
        let Some(listen) = self.issuer_api_listen else {
            return Ok(None);
        };
        let issuer = issuer_id.ok_or_else(|| {
            ConfigError::new("D1_ISSUER_ID", "missing: the issuer API serves paths under our issuer id")
        })?;
        let issuer_id =
            IssuerId::parse(issuer).map_err(|e| ConfigError::new("D1_ISSUER_ID", e.to_string()))?;
        let file =
            |variable, path: &Option<PathBuf>, what: &str| required_file(variable, path.as_deref(), what);
        let consumer_source = match (&self.issuer_api_consumer_info_url, consumer_data_keys) {
            (Some(url), _) => {
                if url.scheme() != "https" && !(url.scheme() == "http" && is_loopback(url)) {
                    return Err(ConfigError::new(
                        "ISSUER_API_CONSUMER_INFO_URL",
                        "must be https (plain http only toward loopback)",
                    ));
                }
                ConsumerSourceSettings::Proxy {
                    url: url.clone(),
                    timeout: Duration::from_millis(self.issuer_api_proxy_timeout_ms),
                }
            }
            (None, Some(keys)) => ConsumerSourceSettings::Profiles { keys: keys.to_path_buf() },
            (None, None) => {
                return Err(ConfigError::new(
                    "CONSUMER_DATA_KEYS",
                    "missing: Get Consumer Info needs the consumer-data keys (or ISSUER_API_CONSUMER_INFO_URL)",
                ));
            }
        };
        Ok(Some(ValidIssuerApiSettings {
            listen,
            issuer_id,
            tls_cert: file("ISSUER_API_TLS_CERT", &self.issuer_api_tls_cert, "the server certificate")?,
            tls_key: file("ISSUER_API_TLS_KEY", &self.issuer_api_tls_key, "the server key")?,
            client_ca: file("ISSUER_API_CLIENT_CA", &self.issuer_api_client_ca, "D1's client CA")?,
            client_id_file: file(
                "ISSUER_API_CLIENT_ID_FILE",
                &self.issuer_api_client_id_file,
                "the client id",
            )?,
            client_secret_file: file(
                "ISSUER_API_CLIENT_SECRET_FILE",
                &self.issuer_api_client_secret_file,
                "the client secret",
            )?,
            token_key: file("ISSUER_API_TOKEN_KEY", &self.issuer_api_token_key, "the token signing key")?,
            token_ttl: Duration::from_secs(self.issuer_api_token_ttl_secs),
            max_body_bytes: self.issuer_api_max_body_bytes as usize,
            consumer_source,
        }))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Logs and traces. `Debug` redacts credentials in the OTLP endpoint URL.
#[derive(Clone, Args)]
pub struct TelemetrySettings {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub rust_log: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// OTLP endpoint; traces are off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_exporter_otlp_endpoint: Option<Url>,
    /// OTLP protocol: `grpc` or `http/protobuf`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc", global = true)]
    pub otel_exporter_otlp_protocol: String,
    /// Service name on every span.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "card-registrar", global = true)]
    pub otel_service_name: String,
}

/// A URL fit for a log line or `Debug`: the password replaced by `***` and the query (libpq
/// accepts `?password=`, and tokens travel there too) by `[redacted]`.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let mut out = u.to_string();
            if had_query {
                out.push_str("?[redacted]");
            }
            out
        }
        Err(_) => "[unparseable URL]".into(),
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("database_min_connections", &self.database_min_connections)
            .finish()
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_group_id", &self.kafka_group_id)
            .field("topic_card_created", &self.topic_card_created)
            .field("topic_card_tokenized", &self.topic_card_tokenized)
            .field("topic_card_ordered", &self.topic_card_ordered)
            .field("topic_consumer_profile", &self.topic_consumer_profile)
            .field("schema_registry_url", &self.schema_registry_url.as_ref().map(|u| redact_url(u.as_str())))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TelemetrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetrySettings")
            .field("rust_log", &self.rust_log)
            .field("log_format", &self.log_format)
            .field(
                "otel_exporter_otlp_endpoint",
                &self.otel_exporter_otlp_endpoint.as_ref().map(|u| redact_url(u.as_str())),
            )
            .field("otel_exporter_otlp_protocol", &self.otel_exporter_otlp_protocol)
            .field("otel_service_name", &self.otel_service_name)
            .finish()
    }
}

impl DispatchSettings {
    /// The retry policy these settings describe.
    pub fn retry_policy(&self) -> crate::dispatch::policy::RetryPolicy {
        crate::dispatch::policy::RetryPolicy {
            min_delay: Duration::from_millis(self.dispatch_retry_min_ms),
            max_delay: Duration::from_millis(self.dispatch_retry_max_ms.max(self.dispatch_retry_min_ms)),
            max_attempts: self.dispatch_max_attempts,
            max_age: Duration::from_secs(self.dispatch_max_age_secs),
            reconcile_delay: Duration::from_millis(self.dispatch_reconcile_delay_ms),
        }
    }

    /// The lease: explicit, or long enough for a token fetch, Get Card, the PUT and a token refresh
    /// with its re-send, plus the margin (whole seconds, at least 60).
    pub fn lease(&self, d1_timeout: Duration) -> Duration {
        if self.dispatch_lease_secs > 0 {
            Duration::from_secs(self.dispatch_lease_secs)
        } else {
            let needed = self.margin() + d1_timeout * 4;
            Duration::from_secs(needed.as_millis().div_ceil(1000) as u64).max(Duration::from_secs(60))
        }
    }

    /// The safety margin before the lease end.
    pub fn margin(&self) -> Duration {
        Duration::from_millis(self.dispatch_lease_margin_ms)
    }

    /// Refuses settings under which no attempt could be safe or make progress: a lease too short
    /// for the margin plus a token fetch, Get Card and the PUT (every attempt would give its row
    /// back unsent), or a reconcile delay shorter than one request (D1 may legitimately still be
    /// processing a request when the client gives up on it).
    pub fn validate(&self, d1_timeout: Duration) -> Result<(), ConfigError> {
        let lease = self.lease(d1_timeout);
        let needed = self.margin() + d1_timeout * 3;
        if lease < needed {
            return Err(ConfigError::new(
                "DISPATCH_LEASE_SECS",
                format!(
                    "a lease of {} ms cannot fit DISPATCH_LEASE_MARGIN_MS ({} ms) plus 3 x D1_TIMEOUT_MS ({} ms); \
                     raise it to at least {} s",
                    lease.as_millis(),
                    self.dispatch_lease_margin_ms,
                    d1_timeout.as_millis(),
                    needed.as_millis().div_ceil(1000)
                ),
            ));
        }
        if Duration::from_millis(self.dispatch_reconcile_delay_ms) < d1_timeout {
            return Err(ConfigError::new(
                "DISPATCH_RECONCILE_DELAY_MS",
                format!(
                    "{} ms is shorter than D1_TIMEOUT_MS ({} ms): D1 may still be processing a PUT when we ask about it",
                    self.dispatch_reconcile_delay_ms,
                    d1_timeout.as_millis()
                ),
            ));
        }
        Ok(())
    }
}

impl DatabaseSettings {
    /// Checks the URL scheme.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = Url::parse(&self.database_url)
            .map_err(|e| ConfigError::new("DATABASE_URL", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::new("DATABASE_URL", "scheme must be postgres:// or postgresql://"));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::new("DATABASE_MAX_CONNECTIONS", "must be at least 1"));
        }
        self.min_connections().map(drop)
    }

    /// Connections the worker keeps open: `DATABASE_MIN_CONNECTIONS`, by default all of
    /// `DATABASE_MAX_CONNECTIONS`. A connection opened under load costs its connect, its
    /// authentication and its first statements' preparation while events wait: a pool that grew
    /// on demand made the first second of a burst after a quiet spell several times slower.
    pub fn min_connections(&self) -> Result<u32, ConfigError> {
        match self.database_min_connections {
            None => Ok(self.database_max_connections),
            Some(min) if min <= self.database_max_connections => Ok(min),
            Some(min) => Err(ConfigError::new(
                "DATABASE_MIN_CONNECTIONS",
                format!(
                    "must not exceed DATABASE_MAX_CONNECTIONS ({min} > {})",
                    self.database_max_connections
                ),
            )),
        }
    }
}

impl KafkaSettings {
    /// Checks brokers and topic names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka_brokers.split(',').any(|b| b.trim().is_empty() || !b.contains(':')) {
            return Err(ConfigError::new("KAFKA_BROKERS", "must be a comma-separated list of host:port"));
        }
        if self.kafka_group_id.trim().is_empty() {
            return Err(ConfigError::new("KAFKA_GROUP_ID", "must not be empty"));
        }
        for (var, topic) in [
            ("TOPIC_CARD_CREATED", &self.topic_card_created),
            ("TOPIC_CARD_TOKENIZED", &self.topic_card_tokenized),
            ("TOPIC_CARD_ORDERED", &self.topic_card_ordered),
            ("TOPIC_CONSUMER_PROFILE", &self.topic_consumer_profile),
        ] {
            let ok = !topic.is_empty()
                && topic.len() <= 249
                && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(ConfigError::new(var, "not a valid Kafka topic name ([A-Za-z0-9._-], 1..249)"));
            }
        }
        let topics = [&self.topic_card_created, &self.topic_card_tokenized, &self.topic_card_ordered];
        if topics[0] == topics[1] || topics[1] == topics[2] || topics[0] == topics[2] {
            return Err(ConfigError::new("TOPIC_CARD_CREATED", "the three input topics must differ"));
        }
        if topics.contains(&&self.topic_consumer_profile) {
            return Err(ConfigError::new("TOPIC_CONSUMER_PROFILE", "must differ from the card topics"));
        }
        if !(100..=60_000).contains(&self.schema_registry_timeout_ms) {
            return Err(ConfigError::new("SCHEMA_REGISTRY_TIMEOUT_MS", "must be 100..60000"));
        }
        if let Some(url) = &self.schema_registry_url {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new("SCHEMA_REGISTRY_URL", "must be an http or https URL"));
            }
            if url.scheme() == "http" && self.schema_registry_basic_auth_user_info_file.is_some() {
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if !loopback {
                    return Err(ConfigError::new(
                        "SCHEMA_REGISTRY_URL",
                        "must be https when SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE is set (credentials in clear)",
                    ));
                }
            }
        } else if self.schema_registry_basic_auth_user_info_file.is_some()
            || self.schema_registry_ca_cert.is_some()
        {
            return Err(ConfigError::new(
                "SCHEMA_REGISTRY_URL",
                "missing: the registry settings are set without it",
            ));
        }
        Ok(())
    }
}

/// The D1 settings after validation: every required value present.
#[derive(Debug, Clone)]
pub struct ValidD1Settings {
    /// D1 host root.
    pub api_url: Url,
    /// Issuer id.
    pub issuer_id: IssuerId,
    /// ES256 private key file.
    pub auth_key: PathBuf,
    /// Its kid.
    pub auth_key_id: String,
    /// D1's public encryption key file.
    pub encryption_key: PathBuf,
    /// Optional assertion audience.
    pub audience: Option<String>,
    /// Mutual TLS files (cert, key) and optional CA.
    pub client_tls: Option<(PathBuf, PathBuf)>,
    /// CA certificate file.
    pub ca_cert: Option<PathBuf>,
    /// Per-process concurrency cap.
    pub max_concurrency: u32,
    /// Fleet-wide rate cap.
    pub max_rps: u32,
    /// Divisor of the rate cap for a replica cut off from the fleet's budget.
    pub max_replicas: u32,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl D1Settings {
    /// Checks that every value dispatch needs is present and well-formed.
    pub fn validate(&self) -> Result<ValidD1Settings, ConfigError> {
        if !matches!(self.d1_api_url.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "D1_API_URL",
                "scheme must be https:// (or http:// toward loopback)",
            ));
        }
        if self.d1_api_url.scheme() == "http" && !is_loopback(&self.d1_api_url) {
            return Err(ConfigError::new("D1_API_URL", "plain http is only allowed toward a loopback host"));
        }
        let issuer = self
            .d1_issuer_id
            .as_deref()
            .ok_or_else(|| ConfigError::new("D1_ISSUER_ID", "missing: the 10-character D1 issuer id"))?;
        let issuer_id =
            IssuerId::parse(issuer).map_err(|e| ConfigError::new("D1_ISSUER_ID", e.to_string()))?;
        let auth_key = required_file("D1_AUTH_KEY", self.d1_auth_key.as_deref(), "our ES256 private key")?;
        let auth_key_id =
            self.d1_auth_key_id.clone().filter(|k| !k.trim().is_empty()).ok_or_else(|| {
                ConfigError::new("D1_AUTH_KEY_ID", "missing: the kid D1 knows our auth key by")
            })?;
        let encryption_key =
            required_file("D1_ENCRYPTION_KEY", self.d1_encryption_key.as_deref(), "D1's public key (JWK)")?;
        let client_tls = match (&self.d1_client_cert, &self.d1_client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                required_file("D1_CLIENT_CERT", Some(c), "client certificate")?,
                required_file("D1_CLIENT_KEY", Some(k), "client key")?,
            )),
            (Some(_), None) => {
                return Err(ConfigError::new("D1_CLIENT_KEY", "missing: D1_CLIENT_CERT is set"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("D1_CLIENT_CERT", "missing: D1_CLIENT_KEY is set"));
            }
        };
        if client_tls.is_none() && !is_loopback(&self.d1_api_url) {
            return Err(ConfigError::new(
                "D1_CLIENT_CERT",
                "missing: D1_CLIENT_CERT and D1_CLIENT_KEY (mutual TLS) are required when D1_API_URL is not loopback",
            ));
        }
        let ca_cert = match &self.d1_ca_cert {
            Some(p) => Some(required_file("D1_CA_CERT", Some(p), "CA certificate")?),
            None => None,
        };
        Ok(ValidD1Settings {
            api_url: self.d1_api_url.clone(),
            issuer_id,
            auth_key,
            auth_key_id,
            encryption_key,
            audience: self.d1_auth_audience.clone(),
            client_tls,
            ca_cert,
            max_concurrency: self.d1_max_concurrency,
            max_rps: self.d1_max_rps,
            max_replicas: self.d1_max_replicas,
            timeout: Duration::from_millis(self.d1_timeout_ms),
        })
    }
}

impl CardDataSettings {
    /// The key file, which ingest needs to read `encryptedCard`.
    pub fn validate(&self) -> Result<PathBuf, ConfigError> {
        required_file(
            "CARD_DATA_KEYS",
            self.card_data_keys.as_deref(),
            "our card-data private key(s) (JWK or JWK Set)",
        )
    }
}

impl TelemetrySettings {
    /// Checks the log filter and OTLP protocol.
    pub fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.rust_log)
            .map_err(|e| ConfigError::new("RUST_LOG", format!("not a valid filter ({e})")))?;
        if !matches!(self.otel_exporter_otlp_protocol.as_str(), "grpc" | "http/protobuf") {
            return Err(ConfigError::new("OTEL_EXPORTER_OTLP_PROTOCOL", "must be grpc or http/protobuf"));
        }
        Ok(())
    }
}

pub(crate) fn required_file(
    variable: &'static str,
    path: Option<&Path>,
    what: &str,
) -> Result<PathBuf, ConfigError> {
    let path =
        path.ok_or_else(|| ConfigError::new(variable, format!("missing: path of the file holding {what}")))?;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(ConfigError::new(variable, format!("{} is not a file", path.display()))),
        Err(e) => Err(ConfigError::new(variable, format!("cannot read {} ({e})", path.display()))),
    }
}

/// Whether the URL's host is loopback (127.0.0.0/8, ::1 or localhost).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        d1: D1Settings,
        #[command(flatten)]
        kafka: KafkaSettings,
        #[command(flatten)]
        db: DatabaseSettings,
        #[command(flatten)]
        dispatch: DispatchSettings,
        #[command(flatten)]
        results: ResultsSettings,
    }

    fn parse(args: &[&str]) -> T {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn results_framing_and_topic_are_checked_naming_the_variable() {
        let t = parse(&[]);
        assert_eq!(t.results.validate(&t.kafka).unwrap(), crate::avro::encode::Framing::SingleObject);
        let t = parse(&["--results-framing", "confluent"]);
        assert_eq!(t.results.validate(&t.kafka).unwrap_err().variable, "RESULTS_SCHEMA_ID");
        let t = parse(&["--results-framing", "confluent", "--results-schema-id", "42"]);
        assert_eq!(
            t.results.validate(&t.kafka).unwrap(),
            crate::avro::encode::Framing::Confluent { schema_id: 42 }
        );
        let t = parse(&["--results-schema-id", "42"]);
        assert_eq!(t.results.validate(&t.kafka).unwrap_err().variable, "RESULTS_SCHEMA_ID");
        let t = parse(&["--topic-registration-results", "card-created"]);
        assert_eq!(t.results.validate(&t.kafka).unwrap_err().variable, "TOPIC_REGISTRATION_RESULTS");
        let t = parse(&["--topic-registration-results", "no spaces"]);
        assert_eq!(t.results.validate(&t.kafka).unwrap_err().variable, "TOPIC_REGISTRATION_RESULTS");
    }

    #[test]
    fn a_missing_issuer_id_names_the_variable() {
        let err = parse(&[]).d1.validate().unwrap_err();
        assert_eq!(err.variable, "D1_ISSUER_ID");
        assert!(err.to_string().starts_with("D1_ISSUER_ID: missing"));
    }

    #[test]
    fn a_malformed_issuer_id_names_the_rule() {
        let err = parse(&["--d1-issuer-id", "short"]).d1.validate().unwrap_err();
        assert_eq!(err.variable, "D1_ISSUER_ID");
        assert!(err.problem.contains("10..10"), "{err}");
    }

    #[test]
    fn an_unreadable_key_file_names_the_variable_and_path() {
        let err = parse(&["--d1-issuer-id", "ISSUER0001", "--d1-auth-key", "/nonexistent/key.pem"])
            .d1
            .validate()
            .unwrap_err();
        assert_eq!(err.variable, "D1_AUTH_KEY");
        assert!(err.problem.contains("/nonexistent/key.pem"));
    }

    #[test]
    fn plain_http_toward_a_remote_host_is_refused() {
        let err = parse(&["--d1-api-url", "http://api.d1.thalescloud.io"]).d1.validate().unwrap_err();
        assert_eq!(err.variable, "D1_API_URL");
        assert!(is_loopback(&Url::parse("http://localhost:8480").unwrap()));
        assert!(is_loopback(&Url::parse("http://[::1]:8480").unwrap()));
    }

    #[test]
    fn half_a_client_certificate_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "x").unwrap();
        let f = f.to_str().unwrap();
        let err = parse(&[
            "--d1-issuer-id",
            "ISSUER0001",
            "--d1-auth-key",
            f,
            "--d1-auth-key-id",
            "k1",
            "--d1-encryption-key",
            f,
            "--d1-client-cert",
            f,
        ])
        .d1
        .validate()
        .unwrap_err();
        assert_eq!(err.variable, "D1_CLIENT_KEY");
    }

    fn d1_args<'a>(url: &'a str, key_file: &'a str) -> Vec<&'a str> {
        vec![
            "--d1-api-url",
            url,
            "--d1-issuer-id",
            "ISSUER0001",
            "--d1-auth-key",
            key_file,
            "--d1-auth-key-id",
            "k1",
            "--d1-encryption-key",
            key_file,
        ]
    }

    #[test]
    fn a_remote_d1_without_a_client_certificate_is_refused_naming_both_settings() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "x").unwrap();
        let f = f.to_str().unwrap();
        for url in ["https://api.d1.thalescloud.io", "https://10.0.0.1:8443"] {
            let err = parse(&d1_args(url, f)).d1.validate().unwrap_err();
            assert_eq!(err.variable, "D1_CLIENT_CERT", "{url}");
            assert!(err.to_string().contains("D1_CLIENT_KEY"), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        let mut with_pair = d1_args("https://api.d1.thalescloud.io", f);
        with_pair.extend(["--d1-client-cert", f, "--d1-client-key", f]);
        assert!(parse(&with_pair).d1.validate().unwrap().client_tls.is_some());
        for url in ["http://127.0.0.1:8480", "https://localhost:8443", "http://[::1]:1"] {
            assert!(parse(&d1_args(url, f)).d1.validate().is_ok(), "{url}");
        }
    }

    #[test]
    fn identical_topics_are_refused() {
        let t = parse(&["--topic-card-ordered", "card-created"]);
        assert!(t.kafka.validate().is_err());
        assert!(parse(&[]).kafka.validate().is_ok());
    }

    #[test]
    fn a_non_postgres_database_url_is_refused() {
        assert_eq!(
            parse(&["--database-url", "mysql://x/y"]).db.validate().unwrap_err().variable,
            "DATABASE_URL"
        );
    }

    #[test]
    fn the_pool_is_fixed_size_unless_a_smaller_minimum_is_set() {
        let min = |args: &[&str]| parse(args).db.min_connections();
        assert_eq!(min(&[]).unwrap(), 16);
        assert_eq!(min(&["--database-max-connections", "8"]).unwrap(), 8);
        assert_eq!(min(&["--database-min-connections", "2"]).unwrap(), 2);
        let err = min(&["--database-min-connections", "17"]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_MIN_CONNECTIONS");
        assert!(err.to_string().contains("17 > 16"), "{err}");
        assert_eq!(
            parse(&["--database-min-connections", "17"]).db.validate().unwrap_err().variable,
            "DATABASE_MIN_CONNECTIONS"
        );
        assert_eq!(
            parse(&["--database-max-connections", "0"]).db.validate().unwrap_err().variable,
            "DATABASE_MAX_CONNECTIONS"
        );
    }

    #[test]
    fn a_lease_too_short_for_margin_and_three_requests_is_refused() {
        let t = |args: &[&str]| parse(args).dispatch.validate(Duration::from_millis(20_000));
        // Default lease: max(60 s, margin + 4 x timeout) = 85 s: fine.
        assert!(t(&[]).is_ok());
        let err = t(&["--dispatch-lease-secs", "60"]).unwrap_err();
        assert_eq!(err.variable, "DISPATCH_LEASE_SECS");
        assert!(err.to_string().contains("at least 65 s"), "{err}");
        assert!(t(&["--dispatch-lease-secs", "65"]).is_ok());
        let err = t(&["--dispatch-reconcile-delay-ms", "10000"]).unwrap_err();
        assert_eq!(err.variable, "DISPATCH_RECONCILE_DELAY_MS");
    }

    #[test]
    fn settings_that_may_hold_a_secret_redact_it_in_debug() {
        let t = parse(&[
            "--database-url",
            "postgres://app:s3cret-pw@db.internal:5432/cards?sslmode=require&password=qpw",
            "--schema-registry-url",
            "https://reg-user:reg-s3cret@registry.internal/",
        ]);
        let db = format!("{:?}", t.db);
        assert!(!db.contains("s3cret-pw") && !db.contains("qpw"), "{db}");
        assert!(db.contains("app:***@db.internal:5432/cards?[redacted]"), "{db}");
        let kafka = format!("{:?}", t.kafka);
        assert!(!kafka.contains("reg-s3cret"), "{kafka}");
        assert!(kafka.contains("reg-user:***@registry.internal"), "{kafka}");
        assert_eq!(redact_url("not a url"), "[unparseable URL]");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn the_issuer_api_is_off_by_default_and_names_what_it_lacks() {
        #[derive(Parser)]
        struct A {
            #[command(flatten)]
            api: IssuerApiSettings,
        }
        let api =
            |args: &[&str]| A::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap().api;
        assert!(api(&[]).validate(None, None).unwrap().is_none());
        let on = api(&["--issuer-api-listen", "127.0.0.1:0"]);
        assert_eq!(on.validate(None, None).unwrap_err().variable, "D1_ISSUER_ID");
        assert_eq!(on.validate(Some("ISSUER0001"), None).unwrap_err().variable, "CONSUMER_DATA_KEYS");
        let keys = Path::new("/nonexistent/keys.json");
        assert_eq!(on.validate(Some("ISSUER0001"), Some(keys)).unwrap_err().variable, "ISSUER_API_TLS_CERT");
        let proxy = api(&[
            "--issuer-api-listen",
            "127.0.0.1:0",
            "--issuer-api-consumer-info-url",
            "http://bank.internal/",
        ]);
        assert_eq!(
            proxy.validate(Some("ISSUER0001"), None).unwrap_err().variable,
            "ISSUER_API_CONSUMER_INFO_URL"
        );
        assert!(A::try_parse_from(["t", "--issuer-api-token-ttl-secs", "10"]).is_err());
    }

    #[test]
    fn zero_concurrency_is_refused_at_parse_time() {
        assert!(T::try_parse_from(["t", "--d1-max-concurrency", "0"]).is_err());
    }
}
