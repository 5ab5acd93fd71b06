//! Consumers' personal data never leaves its ciphertext except toward D1: profiles are ingested
//! from Kafka (valid ones, one refused for a bad field, one erased by a tombstone), D1 (the
//! in-process simulator, over mutual TLS) fetches them with Get Consumer Info and notifies card
//! operations, all at `RUST_LOG=trace`; then every log line, span, the `/metrics` text and every
//! row of every table is searched for the names, e-mail addresses, phone numbers, dates of birth
//! and address lines used, in clear and as base64. The same capture shows that a call carrying
//! D1's `traceparent` runs in a server span of that trace.
//!
//! Its own test binary: it installs the process-wide subscriber and metrics recorder.

#[allow(dead_code)]
#[path = "it/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "it/issuer_pki.rs"]
mod issuer_pki;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use card_registrar::admin::{self, Check, Readiness};
use card_registrar::avro::encode::{Framing, encode_profile};
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::cli::run::issuer_api_parts;
use card_registrar::config::{LogFormat, TelemetrySettings};
use card_registrar::core::event::EventKind;
use card_registrar::core::ids::ConsumerId;
use card_registrar::core::profile::{ConsumerInfo, ConsumerProfile, MobilePhoneNumber, ResidencyAddress};
use card_registrar::crypto::EnvelopeSealer;
use card_registrar::ingest::consumer;
use card_registrar::ingest::profile::ProfileSealer;
use card_registrar::telemetry::{self, LogBuffer, SpanCapture};
use card_registrar::workload::Outgoing;
use d1_simulator::{IssuerApiClient, SeedCard, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use helpers::*;
use issuer_pki::{CLIENT_ID, CLIENT_SECRET, Pki};

fn person(n: usize) -> ConsumerInfo {
    ConsumerInfo {
        language: "de-DE".into(),
        first_name: format!("Wilhelmina{n}"),
        last_name: format!("Zwetschgenbaum{n}"),
        email: Some(format!("wilhelmina{n}.private@mailhost.example")),
        mobile_phone_number: Some(MobilePhoneNumber {
            country_code: "+49".into(),
            phone_number: format!("1517770{n:04}"),
        }),
        date_of_birth: Some(format!("19{:02}-07-23", 50 + n)),
        residency_address: Some(ResidencyAddress {
            line1: format!("Quittenallee {n}"),
            zip_code: "10117".into(),
            city: "Berlin".into(),
            country_code: "DE".into(),
        }),
    }
}

/// The personal values of a profile, each in every form searched.
fn needles(info: &ConsumerInfo) -> Vec<(String, String)> {
    let phone = info.mobile_phone_number.as_ref().map(|p| p.phone_number.clone()).unwrap_or_default();
    let values = [
        info.first_name.clone(),
        info.last_name.clone(),
        info.email.clone().unwrap_or_default(),
        phone,
        info.date_of_birth.clone().unwrap_or_default(),
        info.residency_address.as_ref().map(|a| a.line1.clone()).unwrap_or_default(),
    ];
    values
        .into_iter()
        .flat_map(|v| {
            [
                (format!("clear {v}"), v.clone()),
                (format!("base64 of {v}"), STANDARD.encode(&v)),
                (format!("base64url of {v}"), URL_SAFE_NO_PAD.encode(&v)),
            ]
        })
        .collect()
}

fn message(consumer: &str, info: ConsumerInfo) -> Outgoing {
    let profile = ConsumerProfile {
        event_id: event_id(),
        occurred_at: chrono::Utc::now(),
        consumer_id: ConsumerId::parse(consumer).unwrap(),
        info,
    };
    let payload = encode_profile(&SchemaSet::embedded().unwrap(), &profile, Framing::SingleObject).unwrap();
    Outgoing { kind: EventKind::Profile, key: consumer.as_bytes().to_vec(), payload }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_personal_data_reaches_a_log_line_a_span_a_metric_or_a_table_at_trace_level() {
    // Arrange: everything the process emits is captured.
    let (logs, spans) = (LogBuffer::new(), SpanCapture::new());
    let settings = TelemetrySettings {
        rust_log: "trace".into(),
        log_format: LogFormat::Json,
        otel_exporter_otlp_endpoint: None,
        otel_exporter_otlp_protocol: "grpc".into(),
        otel_service_name: "card-registrar".into(),
    };
    let telemetry = telemetry::build_capturing(&settings, logs.clone(), &spans).unwrap();
    telemetry.install_global().unwrap();
    let metrics = telemetry::install_metrics().unwrap();
    let admin_stop = CancellationToken::new();
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(admin::serve(
        listener,
        admin::router(Readiness::new(&[Check::Database]), metrics),
        admin_stop.clone(),
    ));

    let (db, topics, keys, pki) =
        (TestDb::new().await, TestTopics::new(1).await, TestKeys::new(), Pki::new());
    let work = CancellationToken::new();
    let (addr, _api) =
        issuer_api_parts(pki.settings()).unwrap().start(db.pool.clone(), work.clone()).unwrap();
    let profile_topic = format!("t-profile-{}", uuid::Uuid::new_v4().simple());
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        let topic = NewTopic::new(&profile_topic, 1, TopicReplication::Fixed(1));
        for r in admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap() {
            r.unwrap();
        }
    }
    let people: Vec<ConsumerInfo> = (1..=3).map(person).collect();
    let mut refused = person(4);
    refused.email = Some("wilhelmina4 at nowhere".into());

    // Act: ingest the profiles, erase one, let D1 fetch and notify.
    let group = format!("pii-{}", uuid::Uuid::new_v4().simple());
    let mut options = test_ingest_options(&group, &topics);
    options.topics.push((profile_topic.clone(), EventKind::Profile));
    let sealer = EnvelopeSealer::from_file(&pki.path("consumer-keys.json")).unwrap();
    let pipeline = Arc::new(keys.pipeline().with_profiles(ProfileSealer::new(sealer)));
    let ingest =
        tokio::spawn(consumer::run(options, db.pool.clone(), pipeline, Arc::new(|_| {}), work.clone()));
    let mut messages: Vec<Outgoing> =
        people.iter().enumerate().map(|(i, p)| message(&format!("pii-consumer-{i}"), p.clone())).collect();
    messages.push(message("pii-consumer-9", refused.clone()));
    publish_to(&[(profile_topic.clone(), EventKind::Profile)], &messages).await;
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        let tombstone: FutureRecord<'_, str, [u8]> = FutureRecord::to(&profile_topic).key("pii-consumer-2");
        producer.send(tombstone, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    wait_until("profiles applied", Duration::from_secs(60), || async {
        applied(&db.pool, &group).await == 5
    })
    .await;

    let mut config = SimConfig::from_key_files(&keys.files).unwrap();
    config.issuer_api = Some(IssuerApiClient {
        url: format!("https://127.0.0.1:{}", addr.port()),
        client_id: CLIENT_ID.into(),
        client_secret: zeroize::Zeroizing::new(CLIENT_SECRET.into()),
        client_cert: pki.path("d1.pem"),
        client_key: pki.path("d1.key"),
        ca_cert: Some(pki.path("ca.pem")),
        notification_duplicates: 1,
        notification_attempts: 3,
        retry_delay: Duration::from_millis(100),
    });
    let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    for i in 0..3 {
        sim.seed_card(&format!("pii-card-{i}"), SeedCard::new(format!("pii-consumer-{i}"), "product-1"))
            .unwrap();
    }
    wait_until("D1 fetched and notified", Duration::from_secs(30), || async {
        let calls = sim.stats().issuer_calls;
        calls.consumer_info_answers.values().sum::<u64>() == 3
            && calls.notification_answers.values().sum::<u64>() == 6
    })
    .await;
    let calls = sim.stats().issuer_calls;
    assert_eq!(calls.consumer_info_answers, [(200, 2), (404, 1)].into_iter().collect());
    assert_eq!(
        sim.end_user("pii-consumer-0").unwrap().consumer_info,
        Some(serde_json::to_value(&people[0]).unwrap()),
        "D1 got the data: the search below is not vacuous"
    );
    // D1's trace continues into our server span (same capture, so checked here too).
    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let client = pki.client(Some("d1"));
    let token: serde_json::Value = client
        .post(format!("https://127.0.0.1:{}/authz/d1/v1/oauth2/token", addr.port()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let notified = client
        .post(format!(
            "https://127.0.0.1:{}/notifications/d1/v2/issuers/{}/cards",
            addr.port(),
            issuer_pki::ISSUER
        ))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&serde_json::json!([{"operationId": "traced-1", "operation": "DIGITIZE", "status": "SUCCESS",
                                   "startTime": "2026-12-03T10:00:00Z", "cardId": "pii-card-0"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(notified.status(), 204);
    work.cancel();
    ingest.await.unwrap().unwrap();
    sim.shutdown().await;
    telemetry.flush().await.unwrap();

    // Assert: nowhere, in no form.
    let mut haystacks = vec![
        ("logs".to_owned(), logs.contents()),
        ("metrics".to_owned(), reqwest::get(&metrics_url).await.unwrap().text().await.unwrap()),
    ];
    haystacks.extend(spans.spans().iter().map(|s| (format!("span {}", s.name), format!("{s:?}"))));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&db.schema)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {}.{table} t", db.schema))
                .fetch_all(&db.pool)
                .await
                .unwrap();
        haystacks.push((format!("table {table}"), rows.join("\n")));
    }
    admin_stop.cancel();
    assert!(logs.lines().iter().any(|l| l.contains(r#""level":"TRACE""#)), "trace level is on");
    let metrics_text = &haystacks[1].1;
    for series in [
        r#"card_registrar_issuer_api_requests_total{endpoint="consumer_info",status="200"} 2"#,
        r#"card_registrar_issuer_api_requests_total{endpoint="consumer_info",status="404"} 1"#,
        r#"card_registrar_issuer_api_notifications_total{operation="REGISTER",outcome="stored"} 3"#,
        r#"card_registrar_issuer_api_notifications_total{operation="REGISTER",outcome="duplicate"} 3"#,
    ] {
        assert!(metrics_text.contains(series), "{series} not in /metrics:\n{metrics_text}");
    }
    assert!(haystacks.iter().any(|(p, _)| p == "span issuer_api.request"), "issuer API spans were captured");
    let traced: Vec<_> = spans
        .spans()
        .into_iter()
        .filter(|s| s.name == "issuer_api.request" && s.trace_id == trace_id)
        .collect();
    assert_eq!(traced.len(), 1, "one server span continues D1's trace");
    assert_eq!(traced[0].parent_span_id, parent_id);
    assert!(
        traced[0].attributes.iter().any(|(k, v)| k == "http.response.status_code" && v == "204"),
        "{:?}",
        traced[0]
    );
    let mut found = Vec::new();
    for info in people.iter().chain([&refused]) {
        for (what, needle) in needles(info) {
            for (place, text) in &haystacks {
                if text.contains(&needle) {
                    found.push(format!("{place}: {what}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "{} personal data leaks:\n{}", found.len(), found.join("\n"));
}
