//! Register Card and Get Card: storing without the PAN, duplicates, seeding, and refusals.

use d1_simulator::{CardState, DuplicateAnswer, SeedCard, Stats};
use serde_json::{Value, json};

use crate::helpers::{PAN, TestSim, error_code};

#[tokio::test]
async fn register_stores_the_card_and_get_returns_it_without_the_pan() {
    let t = TestSim::start().await;
    let token = t.token().await;

    let response = t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await;
    assert_eq!(response.status(), 204);
    assert!(response.text().await.unwrap().is_empty());

    let response = t.get_card(&token, "card-1").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(PAN));
    let card: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(card["cardId"], "card-1");
    assert_eq!(card["consumerId"], "consumer-1");
    assert_eq!(card["cardProductId"], "product-1");
    assert_eq!(card["state"], "ACTIVE");
    assert_eq!(card["lastFourDigits"], "1111");
    assert_eq!(card["expiry"], "1229");
    assert_eq!(card["schemeName"], "VISA");
    assert_eq!(card["registration"], "API");
    assert!(card["createdAt"].as_str().unwrap().ends_with('Z'));

    let (stats_text, stats) = t.admin_stats().await;
    assert!(!stats_text.contains(PAN));
    assert_eq!(stats.puts_total, 1);
    assert_eq!(stats.puts_for("card-1"), 1);
    assert_eq!(stats.effective_registrations, 1);
    assert_eq!(stats.duplicate_puts, 0);
    assert_eq!(stats.gets_total, 1);
    assert_eq!(stats.cards_stored, 1);
    assert_eq!(stats, t.sim.stats());
    // The polling counters are the same figures without the per-card map.
    let (counts_text, counts) = t.admin_counts().await;
    assert!(!counts_text.contains("card-1"), "{counts_text}");
    assert_eq!(counts, Stats { puts_by_card: Default::default(), ..stats });
    assert_eq!(counts, t.sim.counts());
}

#[tokio::test]
async fn get_of_an_unregistered_card_is_a_404_card_not_found() {
    let t = TestSim::start().await;
    let token = t.token().await;
    let response = t.get_card(&token, "never-registered").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "CARD_NOT_FOUND");
}

#[tokio::test]
async fn second_put_is_counted_as_a_duplicate_and_answered_ok_by_default() {
    let t = TestSim::start().await;
    let token = t.token().await;
    assert_eq!(t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await.status(), 204);
    assert_eq!(t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await.status(), 204);

    let stats = t.sim.stats();
    assert_eq!(stats.puts_total, 2);
    assert_eq!(stats.puts_for("card-1"), 2);
    assert_eq!(stats.max_puts_per_card(), 2);
    assert_eq!(stats.effective_registrations, 1);
    assert_eq!(stats.duplicate_puts, 1);
}

#[tokio::test]
async fn second_put_gets_the_configured_error_and_never_overwrites_the_card() {
    let t = TestSim::start_with(|config| {
        config.duplicate_answer = "409:CARD_ALREADY_REGISTERED".parse::<DuplicateAnswer>().unwrap();
        config.register_status = 201;
    })
    .await;
    let token = t.token().await;
    let first = t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await;
    assert_eq!(first.status(), 201);

    let mut other = t.register_body("5555555555554444", "0130");
    other["consumerId"] = json!("consumer-2");
    let second = t.put_card(&token, "card-1", &other).await;
    assert_eq!(second.status(), 409);
    assert_eq!(error_code(second).await, "CARD_ALREADY_REGISTERED");

    let card = t.sim.card("card-1").unwrap();
    assert_eq!(card.consumer_id, "consumer-1");
    assert_eq!(card.last_four_digits.as_deref(), Some("1111"));
    let stats = t.sim.stats();
    assert_eq!((stats.duplicate_puts, stats.effective_registrations), (1, 1));
    assert_eq!(stats.rejected("CARD_ALREADY_REGISTERED"), 1);
}

#[tokio::test]
async fn a_seeded_card_is_readable_and_a_put_for_it_counts_as_a_duplicate_on_a_seeded_card() {
    let t = TestSim::start().await;
    let token = t.token().await;
    assert_eq!(t.sim.seed_card("implicit-1", SeedCard::new("consumer-1", "product-1")), Ok(true));
    let seed = json!({"consumerId": "consumer-9", "cardProductId": "product-9", "state": "INACTIVE"});
    let response = t.http.put(t.url("/_sim/cards/implicit-2")).json(&seed).send().await.unwrap();
    assert_eq!(response.status(), 201);

    let card: Value = t.get_card(&token, "implicit-2").await.json().await.unwrap();
    assert_eq!(card["state"], "INACTIVE");
    assert_eq!(card["registration"], "IMPLICIT");
    assert_eq!(t.sim.card("implicit-2").unwrap().state, CardState::Inactive);

    assert_eq!(t.put_card(&token, "implicit-1", &t.register_body(PAN, "1229")).await.status(), 204);
    let stats = t.sim.stats();
    assert_eq!(stats.seeded_cards, 2);
    assert_eq!(stats.puts_total, 1);
    assert_eq!(stats.duplicate_puts, 1);
    assert_eq!(stats.duplicate_puts_on_seeded_cards, 1);
    assert_eq!(stats.effective_registrations, 0);
    assert_eq!(t.sim.card("implicit-1").unwrap().registration, d1_simulator::Registration::Implicit);
}

#[tokio::test]
async fn bad_registrations_are_refused_with_a_specific_error_code_and_no_pan() {
    let t = TestSim::start().await;
    let token = t.token().await;
    let good = t.register_body(PAN, "1229");
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let plain = |pan: &str, exp: &str| json!({"pan": pan, "exp": exp}).to_string();
    let mut tampered = good["encryptedData"].as_str().unwrap().to_owned();
    tampered.insert_str(tampered.rfind('.').unwrap(), "AAAA");
    let too_long = "c".repeat(49);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("card-1", with("encryptedData", json!("not.a.jwe")), "INVALID_ENCRYPTED_DATA"),
        ("card-1", with("encryptedData", json!(tampered)), "INVALID_ENCRYPTED_DATA"),
        (
            "card-1",
            with("encryptedData", json!(t.encrypt(&plain(PAN, "1229"), json!({"kid": "d1-enc-9"})))),
            "UNKNOWN_KEY",
        ),
        (
            "card-1",
            with("encryptedData", json!(t.encrypt(&plain(PAN, "1229"), json!({"enc": "A128GCM"})))),
            "INVALID_ENCRYPTED_DATA",
        ),
        (
            "card-1",
            with("encryptedData", json!(t.encrypt(&plain("4111111111111112", "1229"), json!({})))),
            "INVALID_PAN",
        ),
        (
            "card-1",
            with("encryptedData", json!(t.encrypt(&plain("41111111", "1229"), json!({})))),
            "INVALID_PAN",
        ),
        ("card-1", with("encryptedData", json!(t.encrypt(&plain(PAN, "1329"), json!({})))), "INVALID_EXPIRY"),
        ("card-1", with("encryptedData", json!(t.encrypt(r#"{"pan":1}"#, json!({})))), "INVALID_CARD_DATA"),
        ("card-1", with("consumerId", json!("bad consumer")), "INVALID_CONSUMER_ID"),
        ("card-1", with("cardProductId", json!("")), "INVALID_CARD_PRODUCT_ID"),
        ("card-1", with("state", json!("SUSPENDED")), "INVALID_STATE"),
        ("card-1", with("encryptedData", Value::Null), "INVALID_ENCRYPTED_DATA"),
        (&too_long, good.clone(), "INVALID_CARD_ID"),
        (PAN, good.clone(), "INVALID_CARD_ID"),
        ("x-4111111111111111", good.clone(), "INVALID_CARD_ID"),
    ];
    for (card_id, body, expected) in &cases {
        let response = t.put_card(&token, card_id, body).await;
        assert_eq!(response.status(), 400, "{expected}");
        assert_eq!(&error_code(response).await, expected);
    }
    let response =
        t.http.put(t.card_url("v2", "card-1")).bearer_auth(&token).body("{oops").send().await.unwrap();
    assert_eq!(error_code(response).await, "INVALID_REQUEST_BODY");

    let (stats_text, stats) = t.admin_stats().await;
    assert!(!stats_text.contains(PAN), "a PAN-bearing cardId was counted");
    assert_eq!(stats.puts_total, cases.len() as u64 + 1);
    assert_eq!(stats.rejected("INVALID_CARD_ID"), 3);
    assert_eq!(stats.rejected("UNKNOWN_KEY"), 1);
    assert_eq!(stats.cards_stored, 0);
    assert!(stats.puts_by_card.is_empty());
}

#[tokio::test]
async fn apu_and_apv_take_part_in_the_key_derivation() {
    let t = TestSim::start().await;
    let token = t.token().await;
    let plaintext = json!({"pan": PAN, "exp": "0130"}).to_string();
    let mut body = t.register_body(PAN, "0130");
    body["encryptedData"] = json!(t.encrypt(&plaintext, json!({"apu": "QWxpY2U", "apv": "Qm9i"})));
    assert_eq!(t.put_card(&token, "card-apu", &body).await.status(), 204);
}

#[tokio::test]
async fn a_request_for_another_issuer_is_forbidden() {
    let t = TestSim::start().await;
    let token = t.token().await;
    let url = t.url("/banking/v1/issuers/ISSUER0002/cards/card-1");
    let response = t.http.get(url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "ISSUER_MISMATCH");
}

#[tokio::test]
async fn reset_forgets_cards_and_counts_but_keeps_tokens() {
    let t = TestSim::start().await;
    let token = t.token().await;
    assert_eq!(t.put_card(&token, "card-1", &t.register_body(PAN, "1229")).await.status(), 204);
    let response = t.http.post(t.url("/_sim/reset")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(t.sim.stats(), d1_simulator::Stats::default());
    assert_eq!(t.get_card(&token, "card-1").await.status(), 404);
}
