//! Confluent-compatible Schema Registry client: resolves the schema id of a Confluent-framed message
//! to its writer schema, fetching each id once (schemas by id are immutable) and caching it.
//!
//! The outcome is classified here, once: an id the registry does not know (404) or a schema that
//! is not usable Avro is permanent (the message becomes a dead letter); anything else (connection
//! refused, timeout, 5xx, an unexpected answer) is transient, and the caller must retry with
//! backoff without losing the message. Errors never carry the registry URL (it may hold
//! credentials) nor message content.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::schemas::ParsedSchema;

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
    /// The request failed (connection, timeout, body): transient.
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
}

/// Resolves Confluent schema ids to writer schemas.
pub trait SchemaRegistry: Send + Sync {
    /// The writer schema registered under `id`.
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<ParsedSchema>, RegistryError>>;
}

/// `GET /schemas/ids/{id}` answer. `schemaType` is absent for Avro.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaById {
    schema: String,
    schema_type: Option<String>,
}

/// A Confluent-compatible registry over HTTP, with a per-id cache that fetches each id once, even
/// when many messages ask for it at the same moment.
#[derive(Debug)]
pub struct HttpSchemaRegistry {
    client: reqwest::Client,
    base: String,
    cache: Mutex<HashMap<u32, Arc<OnceCell<Arc<ParsedSchema>>>>>,
}

impl HttpSchemaRegistry {
    /// A client for the registry at `base_url` (`SCHEMA_REGISTRY_URL`), each request bounded by `timeout`.
    pub fn new(base_url: &url::Url, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client =
            reqwest::Client::builder().timeout(timeout).build().map_err(reqwest::Error::without_url)?;
        Ok(Self::with_client(base_url, client))
    }

    /// A client for the registry at `base_url`, using the given HTTP client.
    pub fn with_client(base_url: &url::Url, client: reqwest::Client) -> Self {
        let base = base_url.as_str().trim_end_matches('/').to_owned();
        Self { client, base, cache: Mutex::new(HashMap::new()) }
    }

    async fn fetch(&self, id: u32) -> Result<Arc<ParsedSchema>, RegistryError> {
        let request = |source: reqwest::Error| RegistryError::Request { id, source: source.without_url() };
        tracing::debug!(schema_id = id, "fetching writer schema from the schema registry");
        let response =
            self.client.get(format!("{}/schemas/ids/{id}", self.base)).send().await.map_err(request)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::NotFound { id }),
            status => return Err(RegistryError::Status { id, status }),
        }
        let body: SchemaById = response.json().await.map_err(request)?;
        if body.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
            return Err(RegistryError::NotAvro { id });
        }
        ParsedSchema::parse(&body.schema).map(Arc::new).map_err(|_| RegistryError::NotAvro { id })
    }

    fn cell(&self, id: u32) -> Arc<OnceCell<Arc<ParsedSchema>>> {
        // A std mutex: held for a map lookup only, never across an await.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.entry(id).or_default().clone()
    }

    fn forget_if_empty(&self, id: u32, cell: &Arc<OnceCell<Arc<ParsedSchema>>>) {
        // Unknown ids are not cached: they may be registered later, and a flood of bogus ids must
        // not grow the map.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.get(&id).is_some_and(|c| Arc::ptr_eq(c, cell) && c.get().is_none()) {
            cache.remove(&id);
        }
    }
}

impl SchemaRegistry for HttpSchemaRegistry {
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<ParsedSchema>, RegistryError>> {
        Box::pin(async move {
            let cell = self.cell(id);
            let result = cell.get_or_try_init(|| self.fetch(id)).await.cloned();
            if result.is_err() {
                self.forget_if_empty(id, &cell);
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
        assert_eq!(first.full_name(), Some("n.R"));
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
        assert!(results.iter().all(|r| r.as_ref().is_ok_and(|s| s.full_name() == Some("n.R"))));
    }

    #[tokio::test]
    async fn an_unknown_id_is_permanent_and_not_cached() {
        let server = MockServer::start().await;
        let not_found = serde_json::json!({ "error_code": 40403, "message": "Schema not found" });
        serve(&server, 9, ResponseTemplate::new(404).set_body_json(not_found), 2).await;
        let registry = registry(&server);
        for _ in 0..2 {
            let err = registry.writer_schema(9).await.unwrap_err();
            assert!(matches!(err, RegistryError::NotFound { id: 9 }));
            assert!(!err.is_transient());
        }
        assert!(registry.cache.lock().unwrap().is_empty());
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
