//! Confluent-compatible Schema Registry client: resolves the schema id of a Confluent-framed message
//! to its writer schema, as Confluent's own clients are configured: HTTP basic auth from a
//! `user:password` file (`basic.auth.user.info`), TLS with a CA file, a timeout per request.
//!
//! Caches are bounded: a positive cache by id (schemas by id are immutable; fetched once even when
//! many messages ask at the same moment) and a negative cache of unknown ids that expires, so a
//! flood of bogus ids neither grows memory nor hammers the registry. Answers are untrusted: the
//! body and the schema are size-capped before parsing; whether the schema may be used at all is
//! the decoder's decision (`decode::vet_registry_schema`).
//!
//! The outcome is classified here, once: an id the registry does not know (404), a schema that is
//! not usable Avro or too large, is permanent (the message becomes a dead letter); anything else
//! (connection refused, timeout, 5xx, 401, an unexpected answer) is transient, and the caller must
//! retry with backoff without losing the message. Errors never carry the registry URL, the
//! credentials, nor message content.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::schemas::ParsedSchema;
use crate::core::pan::mask_pan_like;

/// Largest registry answer read, in bytes; the rest is never buffered.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Largest writer schema (JSON text) accepted from the registry.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most schema ids kept in the positive cache.
pub const MAX_CACHED_IDS: usize = 1024;
/// How long an id the registry did not know is answered from memory.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// Why a schema id could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry does not know the id (404): permanent.
    #[error("schema id {id} is not in the schema registry")]
    NotFound {
        /// The schema id.
        id: u32,
    },
    /// The registry holds a schema for the id, but it is not a valid Avro schema: permanent.
    #[error("schema id {id} is not a usable Avro schema")]
    NotAvro {
        /// The schema id.
        id: u32,
    },
    /// The answer or the schema is larger than this client accepts: permanent.
    #[error("schema id {id}: the registry's answer exceeds {limit} bytes")]
    TooLarge {
        /// The schema id.
        id: u32,
        /// The limit crossed.
        limit: usize,
    },
    /// The request failed (connection, TLS, timeout, body): transient.
    #[error("schema registry request for id {id} failed")]
    Request {
        /// The schema id.
        id: u32,
        /// The client's error, with the URL removed.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status (5xx, 401, ...): transient.
    #[error("schema registry answered HTTP {status} for id {id}")]
    Status {
        /// The schema id.
        id: u32,
        /// The HTTP status.
        status: u16,
    },
}

impl RegistryError {
    /// True when retrying later may succeed; false when the message must become a dead letter.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Request { .. } | Self::Status { .. })
    }

    /// True when the registry refused an answer as untrusted (too large) rather than unknown.
    pub fn is_untrusted(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// A writer schema as the registry holds it: its id, the schema, and where it is registered.
#[derive(Debug)]
pub struct RegisteredSchema {
    /// The registry's schema id.
    pub id: u32,
    /// The parsed schema.
    pub schema: ParsedSchema,
    /// One subject and version it is registered under, when the registry says.
    pub subject: Option<SubjectVersion>,
}

/// A subject and version of a registered schema.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubjectVersion {
    /// The subject, e.g. `card-created-value`.
    pub subject: String,
    /// The version under that subject.
    pub version: u32,
}

impl RegisteredSchema {
    /// A schema served under `id`, with no subject known.
    pub fn new(id: u32, schema: ParsedSchema) -> Self {
        Self { id, schema, subject: None }
    }
}

impl fmt::Display for RegisteredSchema {
    /// `schema id 7 (card-created-value v3)`: what a dead letter records about its writer schema.
    /// The subject is the registry's text: anything shaped like a PAN in it is masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Some(s) => write!(f, "schema id {} ({} v{})", self.id, mask_pan_like(&s.subject), s.version),
            None => write!(f, "schema id {}", self.id),
        }
    }
}

/// Resolves Confluent schema ids to writer schemas.
pub trait SchemaRegistry: Send + Sync {
    /// The writer schema registered under `id`.
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<RegisteredSchema>, RegistryError>>;
}

/// `GET /schemas/ids/{id}` answer. `schemaType` is absent for Avro.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaById {
    schema: String,
    schema_type: Option<String>,
}

/// How to reach the registry.
#[derive(Clone)]
pub struct RegistryOptions {
    /// The registry's base URL (`SCHEMA_REGISTRY_URL`).
    pub url: url::Url,
    /// File holding `user:password` for HTTP basic auth.
    pub basic_auth_user_info: Option<PathBuf>,
    /// File holding the CA (PEM) the registry's certificate must chain to; then only that CA.
    pub ca_cert: Option<PathBuf>,
    /// Bound on each request.
    pub timeout: Duration,
}

/// Why the registry client could not be built. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The user info file is not `user:password` on one line.
    #[error("{path} must hold user:password on one line")]
    UserInfo {
        /// The file.
        path: PathBuf,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("{path} holds no PEM certificate")]
    Ca {
        /// The file.
        path: PathBuf,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Basic-auth credentials; `Debug` never shows the password.
struct Credentials {
    user: String,
    password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

fn read_user_info(path: &Path) -> Result<Credentials, RegistrySetupError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|source| RegistrySetupError::Read { path: path.to_owned(), source })?,
    );
    let line = text.trim_end_matches(['\n', '\r']);
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !line.contains('\n') => {
            Ok(Credentials { user: user.to_owned(), password: Zeroizing::new(password.to_owned()) })
        }
        _ => Err(RegistrySetupError::UserInfo { path: path.to_owned() }),
    }
}

type Slot = Arc<OnceCell<Arc<RegisteredSchema>>>;

#[derive(Debug, Default)]
struct Cache {
    found: HashMap<u32, Slot>,
    unknown: HashMap<u32, Instant>,
}

/// A Confluent-compatible registry over HTTP, with bounded caches.
#[derive(Debug)]
pub struct HttpSchemaRegistry {
    client: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
    cache: Mutex<Cache>,
}

impl HttpSchemaRegistry {
    /// A client for the registry at `base_url`, each request bounded by `timeout`; no auth, public roots.
    pub fn new(base_url: &url::Url, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client =
            reqwest::Client::builder().timeout(timeout).build().map_err(reqwest::Error::without_url)?;
        Ok(Self::with_client(base_url, client))
    }

    /// A client configured as Confluent users configure theirs: basic auth and CA from files.
    pub fn from_options(options: &RegistryOptions) -> Result<Self, RegistrySetupError> {
        let mut builder = reqwest::Client::builder().timeout(options.timeout);
        if let Some(path) = &options.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|source| RegistrySetupError::Read { path: path.clone(), source })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| RegistrySetupError::Ca { path: path.clone() })?;
            builder = certs
                .into_iter()
                .fold(builder.tls_built_in_root_certs(false), |b, c| b.add_root_certificate(c));
        }
        let client = builder.build().map_err(|e| RegistrySetupError::Client(e.without_url()))?;
        let mut registry = Self::with_client(&options.url, client);
        registry.credentials = options.basic_auth_user_info.as_deref().map(read_user_info).transpose()?;
        Ok(registry)
    }

    /// A client for the registry at `base_url`, using the given HTTP client.
    pub fn with_client(base_url: &url::Url, client: reqwest::Client) -> Self {
        let base = base_url.as_str().trim_end_matches('/').to_owned();
        Self { client, base, credentials: None, cache: Mutex::new(Cache::default()) }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.get(format!("{}{path}", self.base));
        match &self.credentials {
            Some(c) => request.basic_auth(&c.user, Some(c.password.as_str())),
            None => request,
        }
    }

    /// Reads at most `MAX_RESPONSE_BYTES` of a body.
    async fn body(id: u32, mut response: reqwest::Response) -> Result<Vec<u8>, RegistryError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| RegistryError::Request { id, source: source.without_url() })?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(RegistryError::TooLarge { id, limit: MAX_RESPONSE_BYTES });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn fetch(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let request = |source: reqwest::Error| RegistryError::Request { id, source: source.without_url() };
        tracing::debug!(schema_id = id, "fetching writer schema from the schema registry");
        let response = self.get(&format!("/schemas/ids/{id}")).send().await.map_err(request)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::NotFound { id }),
            status => return Err(RegistryError::Status { id, status }),
        }
        let body = Self::body(id, response).await?;
        let body: SchemaById = serde_json::from_slice(&body).map_err(|_| RegistryError::NotAvro { id })?;
        if body.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
            return Err(RegistryError::NotAvro { id });
        }
        if body.schema.len() > MAX_SCHEMA_BYTES {
            return Err(RegistryError::TooLarge { id, limit: MAX_SCHEMA_BYTES });
        }
        let schema = ParsedSchema::parse(&body.schema).map_err(|_| RegistryError::NotAvro { id })?;
        Ok(Arc::new(RegisteredSchema { id, schema, subject: self.subject_of(id).await }))
    }

    /// One subject/version the id is registered under (`GET /schemas/ids/{id}/versions`), for the
    /// dead letters' detail; `None` when the registry does not say.
    async fn subject_of(&self, id: u32) -> Option<SubjectVersion> {
        let response = self.get(&format!("/schemas/ids/{id}/versions")).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Self::body(id, response).await.ok()?;
        let list: Vec<SubjectVersion> = serde_json::from_slice(&body).ok()?;
        list.into_iter().next()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A std mutex: held for map operations only, never across an await.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot for `id`, or `None` while the id is remembered as unknown.
    fn slot(&self, id: u32) -> Option<Slot> {
        let mut cache = self.lock();
        match cache.unknown.get(&id) {
            Some(at) if at.elapsed() < NEGATIVE_TTL => return None,
            Some(_) => {
                cache.unknown.remove(&id);
            }
            None => {}
        }
        if !cache.found.contains_key(&id) && cache.found.len() >= MAX_CACHED_IDS {
            // Bounded: drop resolved entries (cheap to fetch again); in-flight ones stay.
            cache.found.retain(|_, slot| slot.get().is_none());
        }
        Some(cache.found.entry(id).or_default().clone())
    }

    fn settle_failure(&self, id: u32, slot: &Slot, error: &RegistryError) {
        let mut cache = self.lock();
        if cache.found.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot) && s.get().is_none()) {
            cache.found.remove(&id);
        }
        if matches!(error, RegistryError::NotFound { .. }) {
            if cache.unknown.len() >= MAX_CACHED_IDS {
                cache.unknown.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                if cache.unknown.len() >= MAX_CACHED_IDS {
                    cache.unknown.clear();
                }
            }
            cache.unknown.insert(id, Instant::now());
        }
    }
}

impl SchemaRegistry for HttpSchemaRegistry {
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<RegisteredSchema>, RegistryError>> {
        Box::pin(async move {
            let slot = self.slot(id).ok_or(RegistryError::NotFound { id })?;
            let result = slot.get_or_try_init(|| self.fetch(id)).await.cloned();
            if let Err(e) = &result {
                self.settle_failure(id, &slot, e);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SCHEMA: &str =
        r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":"string"}]}"#;

    fn registry(server: &MockServer) -> HttpSchemaRegistry {
        let url = url::Url::parse(&server.uri()).unwrap();
        HttpSchemaRegistry::new(&url, Duration::from_secs(5)).unwrap()
    }

    async fn serve(server: &MockServer, id: u32, response: ResponseTemplate, times: u64) {
        Mock::given(method("GET"))
            .and(path(format!("/schemas/ids/{id}")))
            .respond_with(response)
            .expect(times)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn a_known_id_is_fetched_once_and_then_served_from_the_cache() {
        let server = MockServer::start().await;
        serve(
            &server,
            7,
            ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": SCHEMA })),
            1,
        )
        .await;
        let registry = registry(&server);
        let first = registry.writer_schema(7).await.unwrap();
        let second = registry.writer_schema(7).await.unwrap();
        assert_eq!(first.schema.full_name(), Some("n.R"));
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_id_make_a_single_request() {
        let server = MockServer::start().await;
        let body = serde_json::json!({ "schema": SCHEMA });
        let slow = ResponseTemplate::new(200).set_body_json(body).set_delay(Duration::from_millis(100));
        serve(&server, 8, slow, 1).await;
        let registry = registry(&server);
        let lookups = (0..16).map(|_| registry.writer_schema(8));
        let results = futures::future::join_all(lookups).await;
        assert!(results.iter().all(|r| r.as_ref().is_ok_and(|s| s.schema.full_name() == Some("n.R"))));
    }

    #[tokio::test]
    async fn an_unknown_id_is_permanent_and_remembered_for_a_while_not_forever() {
        let server = MockServer::start().await;
        let not_found = serde_json::json!({ "error_code": 40403, "message": "Schema not found" });
        serve(&server, 9, ResponseTemplate::new(404).set_body_json(not_found), 1).await;
        let registry = registry(&server);
        for _ in 0..3 {
            let err = registry.writer_schema(9).await.unwrap_err();
            assert!(matches!(err, RegistryError::NotFound { id: 9 }));
            assert!(!err.is_transient());
        }
        let cache = registry.cache.lock().unwrap();
        assert!(cache.found.is_empty());
        assert!(cache.unknown.contains_key(&9));
    }

    #[tokio::test]
    async fn the_negative_cache_expires_and_stays_bounded() {
        let server = MockServer::start().await;
        serve(&server, 14, ResponseTemplate::new(404), 2).await;
        let registry = registry(&server);
        assert!(registry.writer_schema(14).await.is_err());
        registry.lock().unknown.insert(14, Instant::now() - NEGATIVE_TTL);
        assert!(matches!(registry.writer_schema(14).await, Err(RegistryError::NotFound { id: 14 })));
        {
            let mut cache = registry.lock();
            for id in 1000..1000 + MAX_CACHED_IDS as u32 {
                cache.unknown.insert(id, Instant::now());
            }
        }
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(404)).mount(&server).await;
        assert!(registry.writer_schema(5).await.is_err());
        assert!(registry.lock().unknown.len() <= MAX_CACHED_IDS);
    }

    #[tokio::test]
    async fn the_positive_cache_is_bounded() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": SCHEMA })))
            .mount(&server)
            .await;
        let registry = registry(&server);
        for id in 0..MAX_CACHED_IDS as u32 + 10 {
            registry.writer_schema(id).await.unwrap();
        }
        assert!(registry.lock().found.len() <= MAX_CACHED_IDS);
    }

    #[tokio::test]
    async fn basic_auth_is_sent_from_the_user_info_file_and_the_subject_is_recorded() {
        use wiremock::matchers::header;
        let server = MockServer::start().await;
        // "registrar:s3cret:with-colon" in base64: the password may itself hold a colon.
        let auth = "Basic cmVnaXN0cmFyOnMzY3JldDp3aXRoLWNvbG9u";
        Mock::given(method("GET"))
            .and(path("/schemas/ids/15"))
            .and(header("authorization", auth))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": SCHEMA })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/schemas/ids/15/versions"))
            .and(header("authorization", auth))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!([{ "subject": "card-created-value", "version": 3 }])),
            )
            .expect(1)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user-info");
        std::fs::write(&file, "registrar:s3cret:with-colon\n").unwrap();
        let options = RegistryOptions {
            url: url::Url::parse(&server.uri()).unwrap(),
            basic_auth_user_info: Some(file),
            ca_cert: None,
            timeout: Duration::from_secs(5),
        };
        let registry = HttpSchemaRegistry::from_options(&options).unwrap();
        assert!(!format!("{registry:?}").contains("s3cret"));
        let found = registry.writer_schema(15).await.unwrap();
        assert_eq!(found.to_string(), "schema id 15 (card-created-value v3)");
        let hostile = RegisteredSchema {
            subject: Some(SubjectVersion { subject: "s-4111111111111111".into(), version: 1 }),
            ..RegisteredSchema::new(16, found.schema.clone())
        };
        assert!(!hostile.to_string().contains("4111111111111111"), "{hostile}");
    }

    #[tokio::test]
    async fn a_request_without_the_right_credentials_is_transient() {
        let server = MockServer::start().await;
        serve(&server, 16, ResponseTemplate::new(401), 1).await;
        let err = registry(&server).writer_schema(16).await.unwrap_err();
        assert!(matches!(err, RegistryError::Status { id: 16, status: 401 }) && err.is_transient());
    }

    #[test]
    fn a_user_info_file_that_is_not_user_colon_password_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user-info");
        std::fs::write(&file, "no-colon-secret").unwrap();
        let options = RegistryOptions {
            url: url::Url::parse("http://127.0.0.1:1").unwrap(),
            basic_auth_user_info: Some(file),
            ca_cert: None,
            timeout: Duration::from_secs(5),
        };
        let err = HttpSchemaRegistry::from_options(&options).unwrap_err();
        assert!(matches!(err, RegistrySetupError::UserInfo { .. }));
        assert!(!err.to_string().contains("no-colon-secret"));
    }

    #[tokio::test]
    async fn an_oversized_answer_or_schema_is_permanent_and_never_buffered_whole() {
        let server = MockServer::start().await;
        let huge = "x".repeat(MAX_RESPONSE_BYTES + 1);
        serve(&server, 17, ResponseTemplate::new(200).set_body_string(huge), 1).await;
        let big_schema =
            format!(r#"{{"type":"record","name":"R","doc":"{}","fields":[]}}"#, "d".repeat(MAX_SCHEMA_BYTES));
        serve(
            &server,
            18,
            ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": big_schema })),
            1,
        )
        .await;
        let registry = registry(&server);
        let err = registry.writer_schema(17).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::TooLarge { id: 17, limit: MAX_RESPONSE_BYTES })
                && !err.is_transient()
        );
        let err = registry.writer_schema(18).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::TooLarge { id: 18, limit: MAX_SCHEMA_BYTES }) && err.is_untrusted()
        );
    }

    #[tokio::test]
    async fn a_server_error_is_transient() {
        let server = MockServer::start().await;
        serve(&server, 10, ResponseTemplate::new(503), 1).await;
        let err = registry(&server).writer_schema(10).await.unwrap_err();
        assert!(matches!(err, RegistryError::Status { id: 10, status: 503 }));
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn a_registry_that_is_down_is_transient_and_the_error_hides_the_url() {
        // A port nobody listens on: bound, then released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = url::Url::parse(&format!("http://user:secret@{closed}/")).unwrap();
        let registry = HttpSchemaRegistry::new(&url, Duration::from_secs(5)).unwrap();
        let err = registry.writer_schema(11).await.unwrap_err();
        assert!(matches!(err, RegistryError::Request { id: 11, .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(!format!("{err:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_non_avro_or_unparseable_schema_is_permanent() {
        let server = MockServer::start().await;
        let proto = serde_json::json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" });
        serve(&server, 12, ResponseTemplate::new(200).set_body_json(proto), 1).await;
        serve(&server, 13, ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": "{" })), 1)
            .await;
        let registry = registry(&server);
        assert!(matches!(registry.writer_schema(12).await, Err(RegistryError::NotAvro { id: 12 })));
        assert!(matches!(registry.writer_schema(13).await, Err(RegistryError::NotAvro { id: 13 })));
    }
}
