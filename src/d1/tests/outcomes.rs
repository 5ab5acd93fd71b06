//! How each D1 answer or transport failure is classified, through the real client.

use std::time::{Duration, SystemTime};

use serde_json::json;
use wiremock::ResponseTemplate;

use super::{Fixture, Inputs, config};
use crate::d1::{D1Client, D1Error, Operation, classify_status, parse_retry_after};

/// Registers once against a fresh server answering the PUT with `response`.
async fn register_with(response: ResponseTemplate) -> Result<(), D1Error> {
    let f = Fixture::start().await;
    f.token("tok", 900, 1).await;
    f.put(response, 1).await;
    let inputs = Inputs::new();
    f.client.register_card(&inputs.register(), &inputs.correlation).await
}

#[tokio::test]
async fn register_treats_200_201_and_204_as_success_whatever_the_body() {
    for response in [
        ResponseTemplate::new(200).set_body_json(json!({"cardId": "card-1", "newField": [1, 2]})),
        ResponseTemplate::new(201).set_body_string("not json"),
        ResponseTemplate::new(204),
    ] {
        register_with(response).await.unwrap();
    }
}

#[tokio::test]
async fn register_returns_terminal_error_with_the_error_code_on_400_403_and_404() {
    for status in [400, 403, 404] {
        let body = json!({"errorCode": "E123", "error": "card product unknown", "retryable": false});
        let err = register_with(ResponseTemplate::new(status).set_body_json(body)).await.unwrap_err();
        assert_eq!(
            err,
            D1Error::Terminal {
                status,
                error_code: Some("E123".into()),
                message: Some("card product unknown".into())
            }
        );
        assert!(err.is_terminal() && !err.is_retryable());
    }
}

#[tokio::test]
async fn register_tolerates_a_non_json_error_body_and_truncates_it() {
    let html = format!("<html>{}</html>", "x".repeat(1000));
    let err = register_with(ResponseTemplate::new(400).set_body_string(html)).await.unwrap_err();
    let D1Error::Terminal { status: 400, error_code: None, message: Some(message) } = err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(message.chars().count(), 200);
}

#[tokio::test]
async fn register_returns_retryable_ambiguous_on_408_500_and_503() {
    for status in [408, 500, 503] {
        let err = register_with(ResponseTemplate::new(status)).await.unwrap_err();
        assert!(err.is_retryable() && err.is_ambiguous(), "{status}: {err}");
        assert_eq!(err.status(), Some(status));
    }
}

#[tokio::test]
async fn register_returns_retryable_not_ambiguous_on_429_with_retry_after_seconds() {
    let err = register_with(ResponseTemplate::new(429).insert_header("Retry-After", "7")).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn register_parses_retry_after_as_an_http_date() {
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let err = register_with(ResponseTemplate::new(503).insert_header("Retry-After", at.as_str()))
        .await
        .unwrap_err();
    let wait = err.retry_after().unwrap();
    assert!(wait > Duration::from_secs(110) && wait <= Duration::from_secs(120), "{wait:?}");
}

#[tokio::test]
async fn register_timing_out_is_retryable_and_ambiguous() {
    let f = Fixture::with_timeout(Duration::from_millis(300)).await;
    f.token("tok", 900, 1).await;
    f.put(ResponseTemplate::new(204).set_delay(Duration::from_secs(5)), 1).await;
    let inputs = Inputs::new();
    let err = f.client.register_card(&inputs.register(), &inputs.correlation).await.unwrap_err();
    assert!(err.is_retryable() && err.is_ambiguous(), "{err}");
    assert_eq!(err.status(), None);
    assert!(err.to_string().contains("timeout"), "{err}");
}

#[tokio::test]
async fn get_card_timing_out_or_failing_is_retryable_but_never_ambiguous() {
    let f = Fixture::with_timeout(Duration::from_millis(300)).await;
    f.token("tok", 900, 1).await;
    f.get(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)), 1).await;
    let inputs = Inputs::new();
    let err = f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");

    f.server.reset().await;
    f.get(ResponseTemplate::new(503), 1).await;
    let err = f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
}

#[tokio::test]
async fn a_refused_connection_is_retryable_and_not_ambiguous() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (config, _, _) = config(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let client = D1Client::new(config).unwrap();
    let inputs = Inputs::new();
    let err = client.register_card(&inputs.register(), &inputs.correlation).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
    assert!(err.to_string().contains("connect"), "{err}");
}

#[tokio::test]
async fn get_card_returns_none_on_404_and_accepts_unknown_fields_and_states() {
    let f = Fixture::start().await;
    f.token("tok", 900, 1).await;
    f.get(ResponseTemplate::new(404).set_body_json(json!({"errorCode": "CARD_NOT_FOUND"})), 1).await;
    let inputs = Inputs::new();
    assert_eq!(f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap(), None);

    f.server.reset().await;
    let body = json!({
        "cardId": "card-1", "consumerId": "consumer-1", "cardProductId": "product-1",
        "state": "FROZEN_BY_NEW_RULE", "last4": "1111", "createdAt": "2025-01-01T00:00:00Z", "extra": {"a": 1}
    });
    f.get(ResponseTemplate::new(200).set_body_json(body), 1).await;
    let card = f.client.get_card(&inputs.card_id, &inputs.correlation).await.unwrap().unwrap();
    assert_eq!(card.consumer_id, "consumer-1");
    assert_eq!(card.card_product_id.as_deref(), Some("product-1"));
    assert_eq!(card.state.as_deref(), Some("FROZEN_BY_NEW_RULE"));
}

#[test]
fn retry_after_accepts_seconds_and_dates_and_rejects_garbage() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after(" 30 ", now), Some(Duration::from_secs(30)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-1", now), None);
}

#[test]
fn status_classification_depends_on_whether_the_call_has_an_effect() {
    let put = classify_status(Operation::Register, 502, None, b"");
    let get = classify_status(Operation::GetCard, 502, None, b"");
    assert!(put.is_ambiguous());
    assert!(get.is_retryable() && !get.is_ambiguous());
    assert!(classify_status(Operation::Register, 302, None, b"").is_terminal());
    assert!(classify_status(Operation::Register, 799, None, b"").is_ambiguous());
    assert!(classify_status(Operation::Register, 401, None, b"").is_unauthorized());
}

#[test]
fn a_pan_echoed_in_an_error_body_is_masked_before_it_is_logged_or_stored() {
    let body =
        json!({ "errorCode": "INVALID_CARD", "error": "PAN 4111111111111111 not allowed" }).to_string();
    let e = classify_status(Operation::Register, 400, None, body.as_bytes());
    assert!(!e.to_string().contains("4111111111111111"), "{e}");
    assert!(e.to_string().contains("PAN [masked] not allowed"), "{e}");
    let raw = classify_status(Operation::Register, 400, None, b"bad card 4111111111111111");
    assert!(!raw.to_string().contains("4111111111111111"));
}
