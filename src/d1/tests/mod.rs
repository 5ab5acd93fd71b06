//! Unit tests of the D1 client against wiremock: token caching, 401 handling, outcome
//! classification, the request's shape, and configuration checks.

mod config;
mod outcomes;
mod requests;
mod token;

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{D1Client, D1ClientConfig, RegisterCard};
use crate::core::event::InitialState;
use crate::core::ids::{CardId, CardProductId, ConsumerId, CorrelationId, IssuerId};
use crate::core::pan::CardData;
use crate::crypto::test_keys::TestKey;
use crate::crypto::{AssertionKey, RecipientKey};

pub(super) const ISSUER: &str = "ISSUER0001";
pub(super) const TOKEN_PATH: &str = "/authz/v1/oauth2/token";
pub(super) const PUT_PATH: &str = "/banking/v2/issuers/ISSUER0001/cards/card-1";
pub(super) const GET_PATH: &str = "/banking/v1/issuers/ISSUER0001/cards/card-1";

/// A wiremock "D1", a client pointed at it, and the keys to check what the client sent.
pub(super) struct Fixture {
    pub server: MockServer,
    pub client: D1Client,
    pub d1_key: TestKey,
    pub auth_key: TestKey,
}

/// Card request inputs, owned so tests can borrow them into a [`RegisterCard`].
pub(super) struct Inputs {
    pub card_id: CardId,
    pub consumer_id: ConsumerId,
    pub product: CardProductId,
    pub card: CardData,
    pub correlation: CorrelationId,
}

impl Inputs {
    pub fn new() -> Self {
        Self {
            card_id: CardId::parse("card-1").unwrap(),
            consumer_id: ConsumerId::parse("consumer-1").unwrap(),
            product: CardProductId::parse("product-1").unwrap(),
            card: CardData::from_json(br#"{"pan":"4111111111111111","exp":"1229"}"#).unwrap(),
            correlation: CorrelationId::parse("cr-test-1").unwrap(),
        }
    }

    pub fn register(&self) -> RegisterCard<'_> {
        RegisterCard {
            card_id: &self.card_id,
            consumer_id: &self.consumer_id,
            card_product_id: &self.product,
            card: &self.card,
            state: InitialState::Active,
        }
    }
}

/// A config for `base` with fresh keys and the given timeout.
pub(super) fn config(base: &str, timeout: Duration) -> (D1ClientConfig, TestKey, TestKey) {
    let d1_key = TestKey::generate("d1-enc-1");
    let auth_key = TestKey::generate("auth-1");
    let config = D1ClientConfig {
        base_url: base.parse().unwrap(),
        issuer_id: IssuerId::parse(ISSUER).unwrap(),
        auth_key: AssertionKey::from_bytes(&auth_key.pkcs8_pem(), "auth-1".into()).unwrap(),
        encryption_key: RecipientKey::from_jwk_bytes(d1_key.public_jwk().to_string().as_bytes()).unwrap(),
        client_identity: None,
        ca_cert: None,
        timeout,
        audience: None,
    };
    (config, d1_key, auth_key)
}

impl Fixture {
    pub async fn start() -> Self {
        Self::with_timeout(Duration::from_secs(5)).await
    }

    pub async fn with_timeout(timeout: Duration) -> Self {
        let server = MockServer::start().await;
        let (config, d1_key, auth_key) = config(&server.uri(), timeout);
        let client = D1Client::new(config).unwrap();
        Self { server, client, d1_key, auth_key }
    }

    /// Mounts a token endpoint issuing `token` valid `expires_in` seconds, expected `times` times.
    pub async fn token(&self, token: &str, expires_in: u64, times: u64) {
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(token_response(token, expires_in))
            .expect(times)
            .named("token")
            .mount(&self.server)
            .await;
    }

    /// Mounts `response` for the card PUT, expected `times` times.
    pub async fn put(&self, response: ResponseTemplate, times: u64) {
        Mock::given(method("PUT"))
            .and(path(PUT_PATH))
            .respond_with(response)
            .expect(times)
            .named("put")
            .mount(&self.server)
            .await;
    }

    /// Mounts `response` for the card GET, expected `times` times.
    pub async fn get(&self, response: ResponseTemplate, times: u64) {
        Mock::given(method("GET"))
            .and(path(GET_PATH))
            .respond_with(response)
            .expect(times)
            .named("get")
            .mount(&self.server)
            .await;
    }

    /// Expects no card call at all.
    pub async fn no_card_calls(&self) {
        Mock::given(path_regex("^/banking/"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&self.server)
            .await;
    }
}

/// A successful token answer.
pub(super) fn token_response(token: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": token, "expires_in": expires_in, "token_type": "Bearer", "scope": "cards"
    }))
}
