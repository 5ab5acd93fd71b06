//! Fault injection with rates of 1.0, so each mode behaves deterministically.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use d1_simulator::{Faults, Latency};
use serde_json::{Value, json};

use crate::helpers::{PAN, TestSim, error_code};

#[tokio::test]
async fn an_error_rate_of_one_answers_that_status_stores_nothing_and_spares_the_token_endpoint() {
    let faults = Faults { error_rates: BTreeMap::from([(503, 1.0)]), ..Faults::none() };
    let t = TestSim::start_with(|config| config.faults = faults).await;
    let token = t.token().await;

    let response = t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "SERVICE_UNAVAILABLE");
    assert_eq!(t.get_card(&token, "card-1").await.status(), 503);

    let stats = t.sim.stats();
    assert_eq!(stats.faults_injected.errors.get(&503), Some(&2));
    assert_eq!(stats.cards_stored, 0);
    assert_eq!(stats.puts_for("card-1"), 1);
    assert_eq!(stats.tokens_issued, 1);
}

#[tokio::test]
async fn an_injected_429_carries_the_configured_retry_after() {
    let faults = Faults { error_rates: BTreeMap::from([(429, 1.0)]), retry_after_secs: 7, ..Faults::none() };
    let t = TestSim::start_with(|config| config.faults = faults).await;
    let token = t.token().await;
    let response = t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(t.sim.stats().faults_injected.errors.get(&429), Some(&1));
}

#[tokio::test]
async fn fail_before_commit_answers_500_without_storing() {
    let t = TestSim::start_with(|config| config.faults.fail_before_commit_rate = 1.0).await;
    let token = t.token().await;
    let response = t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await;
    assert_eq!(response.status(), 500);
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);
    let stats = t.sim.stats();
    assert_eq!(stats.faults_injected.fail_before_commit, 1);
    assert_eq!((stats.effective_registrations, stats.cards_stored), (0, 0));
}

#[tokio::test]
async fn commit_then_timeout_stores_the_card_and_answers_too_late_for_the_client() {
    let t = TestSim::start_with(|config| {
        config.faults.commit_then_timeout_rate = 1.0;
        config.faults.commit_timeout_delay_ms = 60_000;
    })
    .await;
    let token = t.token().await;
    let body = t.register_body(PAN, "1229");
    let outcome = t
        .http
        .put(t.card_url("v2", "card-1"))
        .bearer_auth(&token)
        .json(&body)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(outcome.unwrap_err().is_timeout());

    let response = t.get_card(&token, "card-1").await;
    assert_eq!(response.status(), 200);
    let stats = t.sim.stats();
    assert_eq!(stats.faults_injected.commit_then_timeout, 1);
    assert_eq!(stats.effective_registrations, 1);
}

#[tokio::test]
async fn shutdown_ends_a_pending_commit_then_timeout_delay() {
    let t = TestSim::start_with(|config| {
        config.faults.commit_then_timeout_rate = 1.0;
        config.faults.commit_timeout_delay_ms = 600_000;
    })
    .await;
    let token = t.token().await;
    let request =
        t.http.put(t.card_url("v2", "card-1")).bearer_auth(&token).json(&t.register_body(PAN, "1229"));
    let pending = tokio::spawn(request.send());
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.sim.stats().faults_injected.commit_then_timeout == 0 {
        assert!(Instant::now() < deadline, "the delayed registration never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    t.sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(pending.await.unwrap().unwrap().status(), 204);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_beyond_the_burst() {
    let t = TestSim::start_with(|config| config.faults.rate_limit_rps = Some(2)).await;
    let token = t.token().await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = t.get_card(&token, "card-1").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        }
    }
    // Four requests well within a second: the burst of 2 passes, then the bucket is empty.
    assert_eq!(&statuses[..2], &[404, 404]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    assert!(t.sim.stats().faults_injected.rate_limited >= 1);
}

#[tokio::test]
async fn latency_delays_every_endpoint_including_the_token() {
    let faults = Faults { latency: Some(Latency::fixed(300)), ..Faults::none() };
    let t = TestSim::start_with(|config| config.faults = faults).await;
    let started = Instant::now();
    let token = t.token().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(t.sim.stats().faults_injected.latency, 2);
}

#[tokio::test]
async fn faults_are_replaced_at_runtime_through_the_admin_endpoint_and_reset_restores_them() {
    let t = TestSim::start().await;
    let token = t.token().await;
    let url = t.url("/_sim/faults");
    let response = t.http.put(&url).json(&json!({"errorRates": {"500": 1.0}})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let current: Value = t.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(current["errorRates"]["500"], 1.0);
    assert_eq!(t.get_card(&token, "card-1").await.status(), 500);

    let refused = t.http.put(&url).json(&json!({"errorRates": {"404": 0.5}})).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(error_code(refused).await, "INVALID_FAULTS");

    t.sim.reset();
    assert_eq!(t.sim.faults(), Faults::none());
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);

    t.sim.set_faults(Faults { error_rates: BTreeMap::from([(502, 1.0)]), ..Faults::none() }).unwrap();
    assert_eq!(t.get_card(&token, "card-1").await.status(), 502);
}

#[tokio::test]
async fn faults_never_mask_a_refusal_of_a_bad_request() {
    let faults = Faults { error_rates: BTreeMap::from([(503, 1.0)]), ..Faults::none() };
    let t = TestSim::start_with(|config| config.faults = faults).await;
    let response = t.get_card("no-such-token", "card-1").await;
    assert_eq!(response.status(), 401);
    assert!(t.sim.stats().faults_injected.errors.is_empty());
}

#[tokio::test]
async fn a_late_commit_stores_the_card_after_the_client_gave_up_and_a_second_put_meanwhile_is_a_duplicate() {
    let t = TestSim::start_with(|config| {
        config.faults.late_commit_rate = 1.0;
        config.faults.late_commit_ms = Latency::fixed(800);
    })
    .await;
    let token = t.token().await;
    let body = t.register_body(PAN, "1229");
    let started = Instant::now();
    let outcome = t
        .http
        .put(t.card_url("v2", "card-1"))
        .bearer_auth(&token)
        .json(&body)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(outcome.unwrap_err().is_timeout());
    // The client disconnected; D1 has not committed yet, so Get Card says 404...
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);
    // ...and a second PUT now is exactly the duplicate the dispatcher must never send.
    let second = t.put_card(&token, "card-1", &body).await;
    assert!(second.status().is_success());
    assert!(started.elapsed() >= Duration::from_millis(800));
    let stats = t.sim.stats();
    assert_eq!(stats.faults_injected.late_commit, 2);
    assert_eq!((stats.effective_registrations, stats.duplicate_puts), (1, 1));
    assert_eq!(t.get_card(&token, "card-1").await.status(), 200);
}

#[tokio::test]
async fn unauthorized_once_refuses_each_cards_first_put_and_expires_the_tokens() {
    let t = TestSim::start_with(|config| config.faults.unauthorized_once = true).await;
    let token = t.token().await;
    let body = t.register_body(PAN, "1229");
    let first = t.put_card(&token, "card-1", &body).await;
    assert_eq!(first.status(), 401);
    assert_eq!(error_code(first).await, "TOKEN_EXPIRED");
    assert_eq!(t.put_card(&token, "card-1", &body).await.status(), 401, "the old token expired");
    let fresh = t.token().await;
    assert!(t.put_card(&fresh, "card-1", &body).await.status().is_success());
    let stats = t.sim.stats();
    assert_eq!((stats.faults_injected.unauthorized_once, stats.effective_registrations), (1, 1));
}

#[tokio::test]
async fn the_token_latency_slows_the_token_endpoint_only() {
    let t = TestSim::start_with(|config| config.faults.token_latency = Some(Latency::fixed(300))).await;
    let started = Instant::now();
    let token = t.token().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(t.sim.stats().faults_injected.token_latency, 1);
}
