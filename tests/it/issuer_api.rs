//! The issuer API (what D1 calls on the bank's side) over real mutual TLS, on a real PostgreSQL,
//! with consumer profiles ingested from a real Kafka topic. Clients nobody here wrote: reqwest
//! over native-tls (OpenSSL), and the `curl` command line. Certificates come from the `openssl`
//! command line; the expired token is signed by the test itself (josekit) with the token key file.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use card_registrar::avro::encode::{Framing, encode_profile};
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::cli::run::issuer_api_parts;
use card_registrar::core::event::EventKind;
use card_registrar::core::ids::ConsumerId;
use card_registrar::core::profile::{ConsumerInfo, ConsumerProfile, MobilePhoneNumber, ResidencyAddress};
use card_registrar::crypto::EnvelopeSealer;
use card_registrar::ingest::consumer;
use card_registrar::ingest::profile::ProfileSealer;
use card_registrar::workload::Outgoing;
use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::helpers::*;
use super::issuer_pki::{CLIENT_ID, CLIENT_SECRET, ISSUER, Pki};

/// The issuer API serving on a fresh schema.
struct Api {
    pki: Pki,
    db: TestDb,
    base: String,
    stop: CancellationToken,
}

impl Api {
    async fn start() -> Self {
        let pki = Pki::new();
        let db = TestDb::new().await;
        let stop = CancellationToken::new();
        let parts = issuer_api_parts(pki.settings()).unwrap();
        let (addr, _task) = parts.start(db.pool.clone(), stop.clone()).unwrap();
        Self { base: format!("https://127.0.0.1:{}", addr.port()), pki, db, stop }
    }

    async fn token(&self, client: &reqwest::Client) -> String {
        let response = client
            .post(format!("{}/authz/d1/v1/oauth2/token", self.base))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        assert!(body["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
        assert_eq!(body["scope"], "consumers:read card-notifications:write");
        body["access_token"].as_str().unwrap().to_owned()
    }

    fn consumer_url(&self, issuer: &str, consumer: &str) -> String {
        format!("{}/issuers/{issuer}/consumers/{consumer}", self.base)
    }

    fn notify_url(&self) -> String {
        format!("{}/notifications/d1/v2/issuers/{ISSUER}/cards", self.base)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn info(first: &str, last: &str) -> ConsumerInfo {
    ConsumerInfo {
        language: "fr-FR".into(),
        first_name: first.into(),
        last_name: last.into(),
        email: Some(format!("{}.{}@example.org", first.to_lowercase(), last.to_lowercase())),
        mobile_phone_number: Some(MobilePhoneNumber {
            country_code: "+33".into(),
            phone_number: "612345678".into(),
        }),
        date_of_birth: Some("1984-02-29".into()),
        residency_address: Some(ResidencyAddress {
            line1: "1 rue de la Paix".into(),
            zip_code: "75002".into(),
            city: "Paris".into(),
            country_code: "FR".into(),
        }),
    }
}

fn profile_message(consumer: &str, info: ConsumerInfo, framing: Framing) -> Outgoing {
    let schemas = SchemaSet::embedded().unwrap();
    let profile = ConsumerProfile {
        event_id: event_id(),
        occurred_at: Utc::now(),
        consumer_id: ConsumerId::parse(consumer).unwrap(),
        info,
    };
    Outgoing {
        kind: EventKind::Profile,
        key: consumer.as_bytes().to_vec(),
        payload: encode_profile(&schemas, &profile, framing).unwrap(),
    }
}

async fn publish_tombstone(topic: &str, consumer: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(consumer);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

async fn create_topic(name: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    for r in admin
        .create_topics(&[NewTopic::new(name, 3, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

async fn profile_rows(db: &TestDb) -> (i64, i64) {
    sqlx::query_as("SELECT count(*) FILTER (WHERE sealed_profile IS NOT NULL), count(*) FILTER (WHERE erased_at IS NOT NULL) FROM consumer_profiles")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn profiles_from_kafka_are_served_to_d1_over_mutual_tls_and_a_tombstone_erases_them() {
    let api = Api::start().await;
    let topics = TestTopics::new(1).await;
    let profile_topic = format!("t-profile-{}", uuid::Uuid::new_v4().simple());
    create_topic(&profile_topic).await;
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let mut options = test_ingest_options(&group, &topics);
    options.topics.push((profile_topic.clone(), EventKind::Profile));
    let keys = TestKeys::new();
    let sealer = EnvelopeSealer::from_file(&api.pki.path("consumer-keys.json")).unwrap();
    let pipeline = Arc::new(keys.pipeline().with_profiles(ProfileSealer::new(sealer)));
    let stop = CancellationToken::new();
    let ingest = tokio::spawn({
        let (pool, stop) = (api.db.pool.clone(), stop.clone());
        async move { consumer::run(options, pool, pipeline, Arc::new(|_| {}), stop).await.unwrap() }
    });

    // Both framings decode; a bad profile (language) and a key that is not the consumerId are dead letters.
    let camille = info("Camille", "Durand");
    let mut bad = info("Bad", "Language");
    bad.language = "french".into();
    let mut wrong_key = profile_message("consumer-c", info("Wrong", "Key"), Framing::SingleObject);
    wrong_key.key = b"consumer-x".to_vec();
    let messages = [
        profile_message("consumer-a", camille.clone(), Framing::SingleObject),
        profile_message("consumer-b", info("Dominique", "Martin"), Framing::SingleObject),
        profile_message("consumer-bad", bad, Framing::SingleObject),
        wrong_key,
    ];
    publish_to(&[(profile_topic.clone(), EventKind::Profile)], &messages).await;
    wait_until("profiles stored", Duration::from_secs(60), || async {
        profile_rows(&api.db).await == (2, 0)
    })
    .await;
    wait_until("dead letters stored", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
            .fetch_one(&api.db.pool)
            .await
            .unwrap()
            == 2
    })
    .await;
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, detail FROM dead_letters WHERE topic = $1 ORDER BY \"offset\"")
            .bind(&profile_topic)
            .fetch_all(&api.db.pool)
            .await
            .unwrap();
    assert!(dead.iter().all(|(reason, _)| reason == "INVALID_FIELD"), "{dead:?}");

    // At rest: only ciphertext.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(t)::text FROM (SELECT * FROM consumer_profiles) t")
            .fetch_all(&api.db.pool)
            .await
            .unwrap();
    let letters: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(t)::text FROM (SELECT * FROM dead_letters) t")
            .fetch_all(&api.db.pool)
            .await
            .unwrap();
    for row in stored.iter().chain(&letters) {
        for secret in
            ["Camille", "Durand", "Dominique", "612345678", "1984-02-29", "example.org", "Paix", "Wrong"]
        {
            assert!(!row.contains(secret), "{secret} in clear at rest: {row}");
        }
    }

    // D1 (a client certificate signed by the client CA) gets a token and the profile.
    let client = api.pki.client(Some("d1"));
    let token = api.token(&client).await;
    let response = client
        .get(api.consumer_url(ISSUER, "consumer-a"))
        .query(&[("cardId", "card-1"), ("unknownFlag", "x")])
        .bearer_auth(&token)
        .header("x-correlation-id", "corr-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-correlation-id"], "corr-123");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::to_value(&camille).unwrap());

    let status = |consumer: &'static str| {
        let (client, token, url) = (client.clone(), token.clone(), api.consumer_url(ISSUER, consumer));
        async move { client.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("consumer-unknown").await, 404);
    assert_eq!(status("consumer-bad").await, 404);

    // The simulator plays D1: a registration for a consumer it does not know creates the end
    // user, fetches its information over mTLS, and notifies REGISTER (plus two deliberate duplicates).
    let mut config = d1_simulator::SimConfig::from_key_files(&keys.files).unwrap();
    config.issuer_api = Some(d1_simulator::IssuerApiClient {
        url: api.base.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: zeroize::Zeroizing::new(CLIENT_SECRET.into()),
        client_cert: api.pki.path("d1.pem"),
        client_key: api.pki.path("d1.key"),
        ca_cert: Some(api.pki.path("ca.pem")),
        notification_duplicates: 2,
        notification_attempts: 5,
        retry_delay: Duration::from_millis(100),
    });
    let sim = d1_simulator::Simulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    sqlx::query(
        "INSERT INTO cards (card_id, consumer_id, state) VALUES ('card-a1', 'consumer-a', 'PENDING')",
    )
    .execute(&api.db.pool)
    .await
    .unwrap();
    for (card, consumer) in
        [("card-a1", "consumer-a"), ("card-a2", "consumer-a"), ("card-u1", "consumer-unknown")]
    {
        assert!(sim.seed_card(card, d1_simulator::SeedCard::new(consumer, "product-1")).unwrap());
    }
    wait_until("the simulator's callbacks", Duration::from_secs(30), || async {
        let calls = sim.stats().issuer_calls;
        calls.notification_answers.values().sum::<u64>() == 9
            && calls.consumer_info_answers.values().sum::<u64>() == 2
    })
    .await;
    let calls = sim.stats().issuer_calls;
    assert_eq!((calls.end_users_created, calls.notification_duplicates), (2, 6));
    assert_eq!(calls.tokens_fetched, 1, "the token is cached: {calls:?}");
    assert_eq!(calls.consumer_info_answers, [(200, 1), (404, 1)].into_iter().collect());
    assert_eq!(calls.notification_answers, [(204, 9)].into_iter().collect());
    let user = sim.end_user("consumer-a").unwrap();
    assert_eq!(user.status, 200);
    assert_eq!(user.consumer_info, Some(serde_json::to_value(&camille).unwrap()));
    assert_eq!(sim.end_user("consumer-unknown").unwrap().status, 404);
    let notified: Vec<(String, String)> =
        sqlx::query_as("SELECT operation_id, card_id FROM card_notifications ORDER BY operation_id")
            .fetch_all(&api.db.pool)
            .await
            .unwrap();
    assert_eq!(
        notified,
        vec![
            ("reg-card-a1".into(), "card-a1".into()),
            ("reg-card-a2".into(), "card-a2".into()),
            ("reg-card-u1".into(), "card-u1".into())
        ]
    );
    let confirmed: Option<String> =
        sqlx::query_scalar("SELECT d1_confirmed_by FROM cards WHERE card_id = 'card-a1'")
            .fetch_one(&api.db.pool)
            .await
            .unwrap();
    assert_eq!(confirmed.as_deref(), Some("REGISTER"));
    sim.shutdown().await;

    // Erasure: a tombstone; later calls answer 404 and no personal data is kept.
    publish_tombstone(&profile_topic, "consumer-b").await;
    wait_until("profile erased", Duration::from_secs(60), || async { profile_rows(&api.db).await == (1, 1) })
        .await;
    assert_eq!(status("consumer-b").await, 404);
    assert_eq!(status("consumer-a").await, 200);

    stop.cancel();
    ingest.await.unwrap();
}

#[tokio::test]
async fn without_a_client_certificate_from_the_client_ca_the_handshake_is_refused() {
    let api = Api::start().await;
    for identity in [None, Some("rogue")] {
        let result = api
            .pki
            .client(identity)
            .post(format!("{}/authz/d1/v1/oauth2/token", api.base))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        assert!(result.is_err(), "{identity:?}: {result:?}");
    }
}

#[tokio::test]
async fn bad_credentials_bad_expired_or_narrow_tokens_and_another_issuer_are_refused() {
    let api = Api::start().await;
    let client = api.pki.client(Some("d1"));
    let token_status = |user: &'static str, secret: &'static str, grant: &'static str| {
        let (client, url) = (client.clone(), format!("{}/authz/d1/v1/oauth2/token", api.base));
        async move {
            let r = client
                .post(url)
                .basic_auth(user, Some(secret))
                .form(&[("grant_type", grant)])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = token_status(CLIENT_ID, "wrong", "client_credentials").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(token_status("someone", CLIENT_SECRET, "client_credentials").await.0, 401);
    assert_eq!(token_status(CLIENT_ID, CLIENT_SECRET, "password").await.0, 400);

    let get = |token: String, issuer: &'static str| {
        let (client, url) = (client.clone(), api.consumer_url(issuer, "consumer-a"));
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body["errorCode"].as_str().unwrap_or_default().to_owned())
        }
    };
    // Expired: signed with the right key (the test reads the key file itself), exp in the past.
    let key = josekit::jws::ES256.signer_from_pem(std::fs::read(api.pki.path("token.key")).unwrap()).unwrap();
    let mut claims = josekit::jwt::JwtPayload::new();
    claims.set_issuer("card-registrar-issuer-api");
    claims.set_audience(vec![ISSUER]);
    let past = Utc::now().timestamp() as u64 - 60;
    claims.set_claim("iat", Some((past - 900).into())).unwrap();
    claims.set_claim("exp", Some(past.into())).unwrap();
    claims.set_claim("scope", Some("consumers:read card-notifications:write".into())).unwrap();
    let expired = josekit::jwt::encode_with_signer(&claims, &josekit::jws::JwsHeader::new(), &key).unwrap();
    assert_eq!(get(expired, ISSUER).await, (401, "INVALID_TOKEN".into()));
    // The same claims, fresh, signed by another key.
    let other = josekit::jwk::Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).unwrap();
    let mut fresh = claims.clone();
    fresh.set_claim("exp", Some((Utc::now().timestamp() as u64 + 600).into())).unwrap();
    let forged = josekit::jwt::encode_with_signer(
        &fresh,
        &josekit::jws::JwsHeader::new(),
        &josekit::jws::ES256.signer_from_jwk(&other).unwrap(),
    )
    .unwrap();
    assert_eq!(get(forged, ISSUER).await, (401, "INVALID_TOKEN".into()));
    assert_eq!(get("not-a-token".into(), ISSUER).await, (401, "INVALID_TOKEN".into()));
    let r = client.get(api.consumer_url(ISSUER, "consumer-a")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));

    let token = api.token(&client).await;
    assert_eq!(get(token.clone(), "ISSUER0002").await, (403, "WRONG_ISSUER".into()));
    // A token for notifications only may not read consumers.
    let narrow = client
        .post(format!("{}/authz/d1/v1/oauth2/token", api.base))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "card-notifications:write")])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let narrow = narrow["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(narrow, ISSUER).await, (403, "INSUFFICIENT_SCOPE".into()));
    // The right token, a consumerId that breaks the pattern.
    let r = client.get(api.consumer_url(ISSUER, "consumer%20a")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn duplicate_notifications_are_stored_once_and_confirm_the_card() {
    let api = Api::start().await;
    let pool = &api.db.pool;
    sqlx::query("INSERT INTO cards (card_id, consumer_id, state) VALUES ('card-1', 'consumer-a', 'PENDING')")
        .execute(pool)
        .await
        .unwrap();
    let client = api.pki.client(Some("d1"));
    let token = api.token(&client).await;
    let body = json!({"cards": [
        {"operationId": "op-1", "operation": "REGISTER", "status": "SUCCESS", "startTime": "2026-12-03T10:00:00Z", "cardId": "card-1"},
        {"operationId": "op-2", "operation": "TELEPORT", "status": "SUCCESS", "startTime": "2026-12-03T10:00:01Z", "cardId": "card-1", "future": true},
        {"operationId": "op-3", "operation": "DIGITIZE", "status": "SUCCESS", "startTime": "2026-12-03T10:00:02Z", "cardId": "card-1"},
    ]});
    for _ in 0..3 {
        let r = client.post(api.notify_url()).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
    let stored: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT operation_id, operation, confirms FROM card_notifications ORDER BY operation_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        vec![
            ("op-1".into(), "REGISTER".into(), true),
            ("op-2".into(), "TELEPORT".into(), false),
            ("op-3".into(), "DIGITIZE".into(), true)
        ]
    );
    let (by, op): (String, String) = sqlx::query_as(
        "SELECT d1_confirmed_by, d1_confirmed_operation_id FROM cards WHERE card_id = 'card-1'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((by.as_str(), op.as_str()), ("REGISTER", "op-1"));

    // A bad body is refused whole, with a reason, and stores nothing.
    let bad =
        json!([{"operationId": "op-9", "operation": "REGISTER", "status": "SUCCESS", "cardId": "card-1"}]);
    let r = client.post(api.notify_url()).bearer_auth(&token).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let reason: serde_json::Value = r.json().await.unwrap();
    assert!(reason["error"].as_str().unwrap().contains("startTime is missing"), "{reason}");
    // Above the body bound: 413.
    let huge = vec![b' '; 70 * 1024];
    let r = client
        .post(api.notify_url())
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM card_notifications").fetch_one(pool).await.unwrap();
    assert_eq!(count, 3);

    // `card show` tells who and when D1 confirmed, and lists the notifications.
    let out = Command::new(env!("CARGO_BIN_EXE_card-registrar"))
        .args(["card", "show", "card-1"])
        .env_clear()
        .env("DATABASE_URL", &api.db.url)
        .env("LOG_FORMAT", "text")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["record"]["d1_confirmation"]["confirmed_by"], "REGISTER");
    assert_eq!(shown["record"]["d1_confirmation"]["operation_id"], "op-1");
    let ops: Vec<&str> = shown["d1_notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops.len(), 3, "{shown}");
    assert!(ops.contains(&"TELEPORT"));
    // Core banking hears of D1's confirmation once (the first confirming operation), in the
    // results outbox, with D1's correlation id when it sent one.
    let results: Vec<&str> =
        shown["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(results, vec!["CONFIRMED_BY_D1"], "{shown}");
    let consumer: Option<String> = sqlx::query_scalar(
        "SELECT consumer_id FROM registration_results WHERE card_id = 'card-1' AND outcome = 'CONFIRMED_BY_D1'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(consumer.as_deref(), Some("consumer-a"));
}

/// Proxy mode: the bank's own service answers; the API relays a valid 200, passes 404 and 403 on,
/// and turns anything else (an error, a body too large or not consumer information) into 502.
#[tokio::test]
async fn in_proxy_mode_the_banks_answer_is_relayed_within_its_bounds() {
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let bank = MockServer::start().await;
    let camille = serde_json::to_value(info("Camille", "Durand")).unwrap();
    let mount = |consumer: &'static str, response: ResponseTemplate| {
        Mock::given(method("GET"))
            .and(path(format!("/bank/issuers/{ISSUER}/consumers/{consumer}")))
            .respond_with(response)
    };
    Mock::given(method("GET"))
        .and(path(format!("/bank/issuers/{ISSUER}/consumers/consumer-a")))
        .and(query_param("cardId", "card-1"))
        .and(header("x-correlation-id", "corr-9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&camille))
        .expect(1)
        .mount(&bank)
        .await;
    mount("consumer-missing", ResponseTemplate::new(404)).mount(&bank).await;
    mount("consumer-forbidden", ResponseTemplate::new(403)).mount(&bank).await;
    mount("consumer-broken", ResponseTemplate::new(500)).mount(&bank).await;
    mount("consumer-huge", ResponseTemplate::new(200).set_body_string("x".repeat(80 * 1024)))
        .mount(&bank)
        .await;
    mount("consumer-odd", ResponseTemplate::new(200).set_body_json(json!({"language": "french"})))
        .mount(&bank)
        .await;

    let pki = Pki::new();
    let db = TestDb::new().await;
    let mut settings = pki.settings();
    settings.consumer_source = card_registrar::config::ConsumerSourceSettings::Proxy {
        url: url::Url::parse(&format!("{}/bank", bank.uri())).unwrap(),
        timeout: Duration::from_secs(2),
    };
    let stop = CancellationToken::new();
    let (addr, _task) = issuer_api_parts(settings).unwrap().start(db.pool.clone(), stop.clone()).unwrap();
    let api = Api { base: format!("https://127.0.0.1:{}", addr.port()), pki, db, stop };
    let client = api.pki.client(Some("d1"));
    let token = api.token(&client).await;
    let r = client
        .get(api.consumer_url(ISSUER, "consumer-a"))
        .query(&[("cardId", "card-1")])
        .header("x-correlation-id", "corr-9")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), camille);
    for (consumer, expected) in [
        ("consumer-missing", 404),
        ("consumer-forbidden", 403),
        ("consumer-broken", 502),
        ("consumer-huge", 502),
        ("consumer-odd", 502),
    ] {
        let r = client.get(api.consumer_url(ISSUER, consumer)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), expected, "{consumer}");
    }
}

#[tokio::test]
async fn curl_gets_a_token_and_notifies_with_its_client_certificate() {
    let api = Api::start().await;
    let p = |n: &str| api.pki.path(n).to_string_lossy().into_owned();
    let (cert, key, ca) = (p("d1.pem"), p("d1.key"), p("ca.pem"));
    let base = api.base.clone();
    let curl = move |args: Vec<String>| {
        let mut all = vec![
            "-sS".to_owned(),
            "--cacert".into(),
            ca.clone(),
            "--cert".into(),
            cert.clone(),
            "--key".into(),
            key.clone(),
        ];
        all.extend(args);
        let out = Command::new("curl").args(&all).output().expect("curl on PATH");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let token_url = format!("{base}/authz/d1/v1/oauth2/token");
    let (ok, body) = tokio::task::spawn_blocking({
        let curl = curl.clone();
        move || {
            curl(vec![
                "-u".into(),
                format!("{CLIENT_ID}:{CLIENT_SECRET}"),
                "-d".into(),
                "grant_type=client_credentials".into(),
                token_url,
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let notify = format!("{base}/notifications/d1/v2/issuers/{ISSUER}/cards");
    let (ok, status) = tokio::task::spawn_blocking(move || {
        curl(vec![
            "-o".into(), "/dev/null".into(), "-w".into(), "%{http_code}".into(), "-H".into(), format!("Authorization: Bearer {token}"),
            "-H".into(), "Content-Type: application/json".into(), "--data".into(),
            r#"[{"operationId":"curl-1","operation":"PRODUCE","status":"SUCCESS","startTime":"2026-12-03T10:00:00Z","cardId":"card-9"}]"#.into(),
            notify,
        ])
    })
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(status, "204");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM card_notifications WHERE operation_id = 'curl-1'")
            .fetch_one(&api.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
}
