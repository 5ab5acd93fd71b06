//! The token cache: reuse, expiry, single flight, 401 handling, token endpoint refusals.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

use super::{Fixture, Inputs, PUT_PATH, TOKEN_PATH, token_response};
use crate::d1::D1Error;

#[tokio::test]
async fn one_token_is_fetched_and_reused_for_many_calls() {
    let f = Fixture::start().await;
    f.token("tok-1", 900, 1).await;
    f.put(ResponseTemplate::new(204), 5).await;
    let inputs = Inputs::new();
    for _ in 0..5 {
        f.client.register_card(&inputs.register(), &inputs.correlation).await.unwrap();
    }
}

#[tokio::test]
async fn an_expired_token_is_fetched_again() {
    let f = Fixture::start().await;
    // expires_in 0: each token is already due for refresh when the next call comes.
    f.token("tok-short", 0, 3).await;
    f.get(ResponseTemplate::new(404), 3).await;
    let inputs = Inputs::new();
    for _ in 0..3 {
        assert_eq!(f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap(), None);
    }
}

#[tokio::test]
async fn concurrent_callers_wait_for_a_single_token_fetch() {
    let f = Fixture::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("tok-1", 900).set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&f.server)
        .await;
    f.get(ResponseTemplate::new(404), 20).await;
    let inputs = Inputs::new();
    let calls = (0..20).map(|_| f.client.get_card(&inputs.card_id, &inputs.correlation));
    for result in join_all(calls).await {
        assert_eq!(result.unwrap(), None);
    }
}

#[tokio::test]
async fn callers_waiting_on_a_failed_fetch_share_its_error_instead_of_fetching_again() {
    let f = Fixture::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(503).set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&f.server)
        .await;
    f.no_card_calls().await;
    let inputs = Inputs::new();
    let calls = (0..5).map(|_| f.client.get_card(&inputs.card_id, &inputs.correlation));
    for result in join_all(calls).await {
        let err = result.unwrap_err();
        assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
        assert_eq!(err.status(), Some(503));
    }
}

#[tokio::test]
async fn a_401_on_put_refreshes_the_token_once_and_retries_once() {
    let f = Fixture::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("tok-old", 900))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&f.server)
        .await;
    f.token("tok-new", 900, 1).await;
    Mock::given(method("PUT"))
        .and(path(PUT_PATH))
        .and(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("PUT"))
        .and(path(PUT_PATH))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.server)
        .await;
    let inputs = Inputs::new();
    f.client.register_card(&inputs.register(), &inputs.correlation).await.unwrap();
}

#[tokio::test]
async fn a_second_401_is_unauthorized_without_a_third_attempt() {
    let f = Fixture::start().await;
    f.token("tok", 900, 2).await;
    f.put(ResponseTemplate::new(401).set_body_json(json!({"errorCode": "INVALID_TOKEN", "error": "bad"})), 2)
        .await;
    let inputs = Inputs::new();
    let err = f.client.register_card(&inputs.register(), &inputs.correlation).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    assert!(err.to_string().contains("INVALID_TOKEN"), "{err}");
}

#[tokio::test]
async fn a_token_endpoint_refusal_is_unauthorized_and_no_card_call_is_made() {
    let f = Fixture::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .expect(1)
        .mount(&f.server)
        .await;
    f.no_card_calls().await;
    let inputs = Inputs::new();
    let err = f.client.register_card(&inputs.register(), &inputs.correlation).await.unwrap_err();
    assert!(
        matches!(&err, D1Error::Unauthorized { detail } if detail.contains("400") && detail.contains("invalid_grant"))
    );
}

#[tokio::test]
async fn the_token_request_carries_a_verifiable_es256_assertion_for_our_issuer() {
    let f = Fixture::start().await;
    f.token("tok", 900, 1).await;
    f.get(ResponseTemplate::new(404), 1).await;
    let inputs = Inputs::new();
    f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap();
    let requests = f.server.received_requests().await.unwrap();
    let token_request = requests.iter().find(|r| r.url.path() == TOKEN_PATH).unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&token_request.body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(field("grant_type"), "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let verifier = josekit::jws::ES256.verifier_from_jwk(&f.auth_key.public_jwk()).unwrap();
    let (claims, header) = josekit::jwt::decode_with_verifier(field("assertion"), &verifier).unwrap();
    assert_eq!(header.key_id(), Some("auth-1"));
    assert_eq!(claims.issuer(), Some("ISSUER0001"));
    assert_eq!(claims.subject(), Some("ISSUER0001"));
}

#[tokio::test]
async fn a_401_whose_token_refresh_eats_the_deadline_is_not_resent() {
    use std::sync::Arc;

    use crate::d1::{Deadline, SystemClock};

    let f = Fixture::with_timeout(Duration::from_secs(2)).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("tok-old", 900))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&f.server)
        .await;
    // The refresh takes 1 s: afterwards 1.5 s are left, less than a 2 s request may take.
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("tok-new", 900).set_delay(Duration::from_secs(1)))
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("PUT"))
        .and(path(PUT_PATH))
        .and(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("PUT"))
        .and(path(PUT_PATH))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.server)
        .await;
    let deadline =
        Deadline::at(tokio::time::Instant::now() + Duration::from_millis(2500), Arc::new(SystemClock));
    let inputs = Inputs::new();
    let err =
        f.client.register_card_within(&inputs.register(), &inputs.correlation, &deadline).await.unwrap_err();
    assert!(
        matches!(&err, D1Error::OutOfTime { detail } if detail.starts_with("register not sent")),
        "{err}"
    );
    assert!(err.is_local(), "nothing reached D1 a second time");
}

#[tokio::test]
async fn no_request_starts_when_the_deadline_leaves_no_room_for_one() {
    use std::sync::Arc;

    use crate::d1::{Deadline, SystemClock};

    let f = Fixture::with_timeout(Duration::from_secs(2)).await;
    f.token("tok", 900, 0).await;
    f.no_card_calls().await;
    let deadline = Deadline::at(tokio::time::Instant::now() + Duration::from_secs(1), Arc::new(SystemClock));
    let inputs = Inputs::new();
    let err = f.client.get_card_within(&inputs.card_id, &inputs.correlation, &deadline).await.unwrap_err();
    assert!(matches!(&err, D1Error::OutOfTime { detail } if detail.starts_with("token not sent")), "{err}");
}
