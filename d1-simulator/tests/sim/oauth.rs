//! The token endpoint: ES256 JWT-bearer assertions in, opaque Bearer tokens out.

use p256::SecretKey;
use serde_json::{Value, json};

use crate::helpers::{ISSUER, TestSim, error_code, now};

#[tokio::test]
async fn token_is_issued_for_a_good_assertion_in_a_form_or_json_body() {
    let t = TestSim::start().await;

    let form = t.request_token(&t.good_assertion()).await;
    assert_eq!(form.status(), 200);
    let body: Value = form.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["scope"].is_string());
    assert!(body["access_token"].as_str().unwrap().len() >= 32);

    let json_body =
        json!({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": t.good_assertion()});
    let response = t.http.post(t.url("/authz/v1/oauth2/token")).json(&json_body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let second: Value = response.json().await.unwrap();
    assert_ne!(second["access_token"], body["access_token"]);
    assert_eq!(t.sim.stats().tokens_issued, 2);
}

#[tokio::test]
async fn token_is_refused_with_a_named_error_for_each_bad_assertion() {
    let t = TestSim::start().await;
    let now = now();
    let header = json!({"alg": "ES256", "kid": "issuer-auth-1"});
    let claims = |iss: &str, sub: &str, exp: i64| json!({"iss": iss, "sub": sub, "exp": exp, "iat": now});
    let stranger = SecretKey::random(&mut rand::rngs::OsRng);
    let cases = [
        (
            t.sign(json!({"alg": "ES256", "kid": "nobody"}), claims(ISSUER, ISSUER, now + 60), None),
            "UNKNOWN_KEY_ID",
        ),
        (t.sign(header.clone(), claims(ISSUER, ISSUER, now + 60), Some(&stranger)), "INVALID_SIGNATURE"),
        (t.sign(header.clone(), claims(ISSUER, ISSUER, now - 120), None), "ASSERTION_EXPIRED"),
        (t.sign(header.clone(), claims(ISSUER, ISSUER, now + 20 * 60), None), "EXPIRY_TOO_FAR"),
        (t.sign(header.clone(), claims("ISSUER0002", ISSUER, now + 60), None), "INVALID_ISSUER"),
        (t.sign(header.clone(), claims(ISSUER, "ISSUER0002", now + 60), None), "INVALID_SUBJECT"),
        (
            t.sign(json!({"alg": "ES384", "kid": "issuer-auth-1"}), claims(ISSUER, ISSUER, now + 60), None),
            "UNSUPPORTED_ALGORITHM",
        ),
        (
            t.sign(json!({"alg": "none", "kid": "issuer-auth-1"}), claims(ISSUER, ISSUER, now + 60), None),
            "UNSUPPORTED_ALGORITHM",
        ),
        (t.sign(header.clone(), json!({"iss": ISSUER, "sub": ISSUER}), None), "MISSING_EXPIRY"),
        ("not-a-jwt".to_owned(), "INVALID_ASSERTION"),
    ];
    for (assertion, expected) in &cases {
        let response = t.request_token(assertion).await;
        assert_eq!(response.status(), 401, "{expected}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(&error_code(response).await, expected);
    }
    let stats = t.sim.stats();
    assert_eq!(stats.tokens_issued, 0);
    assert_eq!(stats.rejected("UNSUPPORTED_ALGORITHM"), 2);
    assert_eq!(stats.rejected("UNKNOWN_KEY_ID"), 1);
}

#[tokio::test]
async fn token_request_with_a_wrong_grant_type_or_no_assertion_is_a_400() {
    let t = TestSim::start().await;
    let url = t.url("/authz/v1/oauth2/token");
    let assertion = t.good_assertion();
    let wrong_grant = [("grant_type", "client_credentials"), ("assertion", assertion.as_str())];
    let response = t.http.post(&url).form(&wrong_grant).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "UNSUPPORTED_GRANT_TYPE");

    let no_assertion = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")];
    let response = t.http.post(&url).form(&no_assertion).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "INVALID_REQUEST");
}

#[tokio::test]
async fn an_expired_or_unknown_token_is_refused_with_401() {
    let t = TestSim::start_with(|config| config.token_ttl = std::time::Duration::ZERO).await;
    let token = t.token().await;
    let response = t.get_card(&token, "card-1").await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "TOKEN_EXPIRED");

    let response = t.get_card("made-up-token", "card-1").await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "INVALID_TOKEN");

    let response = t.http.get(t.card_url("v1", "card-1")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "MISSING_TOKEN");
}

#[tokio::test]
async fn expiring_tokens_on_demand_makes_clients_fetch_a_new_one() {
    let t = TestSim::start().await;
    let token = t.token().await;
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);
    t.sim.expire_tokens();
    let response = t.get_card(&token, "card-1").await;
    assert_eq!(error_code(response).await, "TOKEN_EXPIRED");
    let fresh = t.token().await;
    assert_eq!(t.get_card(&fresh, "card-1").await.status(), 404);
}
