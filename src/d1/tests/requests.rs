//! What the client puts on the wire: paths, headers, the PUT body and its JWE, trace context.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{Fixture, Inputs, PUT_PATH, config, token_response};
use crate::core::event::EncryptedCard;
use crate::crypto::CardDataKeys;
use crate::d1::D1Client;

#[tokio::test]
async fn the_put_body_has_the_four_fields_and_a_jwe_that_decrypts_with_d1s_key() {
    let f = Fixture::start().await;
    f.token("tok-abc", 900, 1).await;
    f.put(ResponseTemplate::new(204), 1).await;
    let inputs = Inputs::new();
    f.client.register_card(&inputs.register(), &inputs.correlation).await.unwrap();

    let requests = f.server.received_requests().await.unwrap();
    let put = requests.iter().find(|r| r.url.path() == PUT_PATH).unwrap();
    let header =
        |name: &str| put.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(header("authorization"), "Bearer tok-abc");
    assert_eq!(header("x-correlation-id"), "cr-test-1");
    assert_eq!(header("content-type"), "application/json");

    let body: serde_json::Value = put.body_json().unwrap();
    let mut fields: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["cardProductId", "consumerId", "encryptedData", "state"]);
    assert_eq!(body["consumerId"], "consumer-1");
    assert_eq!(body["cardProductId"], "product-1");
    assert_eq!(body["state"], "ACTIVE");
    assert!(!String::from_utf8_lossy(&put.body).contains("4111111111111111"));

    let d1 = CardDataKeys::from_jwk_bytes(f.d1_key.private_jwk().to_string().as_bytes()).unwrap();
    let jwe = body["encryptedData"].as_str().unwrap().to_owned();
    let card = d1.decrypt(&EncryptedCard::new(jwe)).unwrap();
    assert_eq!(card.pan.expose(), "4111111111111111");
    assert_eq!(card.exp.as_mmyy(), "1229");
}

#[tokio::test]
async fn get_card_sends_bearer_and_correlation_headers() {
    let f = Fixture::start().await;
    f.token("tok-get", 900, 1).await;
    f.get(ResponseTemplate::new(404), 1).await;
    let inputs = Inputs::new();
    f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap();
    let requests = f.server.received_requests().await.unwrap();
    let get = requests.iter().find(|r| r.method.as_str() == "GET").unwrap();
    assert_eq!(get.headers.get("authorization").unwrap(), "Bearer tok-get");
    assert_eq!(get.headers.get("x-correlation-id").unwrap(), "cr-test-1");
}

#[tokio::test]
async fn a_base_url_with_a_path_prefixes_every_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/d1/authz/v1/oauth2/token"))
        .respond_with(token_response("tok", 900))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/d1/banking/v1/issuers/ISSUER0001/cards/card-1"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let (config, _, _) = config(&format!("{}/d1/", server.uri()), Duration::from_secs(5));
    let inputs = Inputs::new();
    assert_eq!(
        D1Client::new(config).unwrap().get_card(&inputs.card_id, &inputs.correlation).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn requests_carry_the_w3c_trace_context_of_the_current_span() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let f = Fixture::start().await;
    f.token("tok", 900, 1).await;
    f.get(ResponseTemplate::new(404), 1).await;
    let inputs = Inputs::new();
    let parent = tracing::info_span!("dispatch");
    f.client.get_card(&inputs.card_id, &inputs.correlation).instrument(parent).await.unwrap();

    let requests = f.server.received_requests().await.unwrap();
    for request in &requests {
        let traceparent =
            request.headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{} has no traceparent", request.url.path());
        assert_ne!(parts[1], "00000000000000000000000000000000");
    }
    let trace_ids: std::collections::HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.headers.get("traceparent")?.to_str().ok()?.split('-').nth(1))
        .collect();
    assert_eq!(trace_ids.len(), 1, "token and card calls share the dispatch trace");
}
