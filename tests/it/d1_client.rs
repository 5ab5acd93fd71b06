//! The D1 client against the real d1-simulator, in process: registration, Get Card, OAuth with
//! real assertion checks, JWE checked by an independent decrypter, every fault mode, mutual TLS.

use std::time::{Duration, Instant, SystemTime};

use card_registrar::core::event::InitialState;
use card_registrar::core::ids::{CardId, CardProductId, ConsumerId, CorrelationId, IssuerId};
use card_registrar::core::pan::CardData;
use card_registrar::crypto::{AssertionKey, RecipientKey};
use card_registrar::d1::{
    ClientIdentity, D1Client, D1ClientConfig, D1Error, Operation, RegisterCard, classify_status,
};
use d1_simulator::{
    Faults, KeyFiles, KeyOptions, Latency, RunningSimulator, SimConfig, Simulator, TlsConfig,
};

const PAN_JSON: &[u8] = br#"{"pan":"4000056655665556","exp":"1130"}"#;

/// A running simulator with its key files (removed on drop).
struct Sim {
    sim: RunningSimulator,
    files: KeyFiles,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Generates keys and starts a plain-HTTP simulator, letting `tune` adjust its configuration.
    async fn start(tune: impl FnOnce(&mut SimConfig)) -> Self {
        Self::start_with(KeyOptions::default(), |config, _| tune(config)).await
    }

    async fn start_with(options: KeyOptions, tune: impl FnOnce(&mut SimConfig, &KeyFiles)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = d1_simulator::keys::generate(dir.path(), &options).unwrap();
        let mut config = SimConfig::from_key_files(&files).unwrap();
        tune(&mut config, &files);
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        Self { sim, files, _dir: dir }
    }

    /// A client configuration for this simulator, as the service would build it from keys.env.
    fn config(&self, timeout: Duration) -> D1ClientConfig {
        D1ClientConfig {
            base_url: self.sim.base_url().parse().unwrap(),
            issuer_id: IssuerId::parse(self.sim.issuer_id()).unwrap(),
            auth_key: AssertionKey::from_file(
                &self.files.issuer_auth_private_pem,
                &self.files.issuer_auth_kid,
            )
            .unwrap(),
            encryption_key: RecipientKey::from_file(&self.files.d1_encryption_public_jwk).unwrap(),
            client_identity: None,
            ca_cert: None,
            timeout,
            audience: None,
        }
    }

    fn client(&self) -> D1Client {
        D1Client::new(self.config(Duration::from_secs(5))).unwrap()
    }

    fn set_faults(&self, faults: Faults) {
        self.sim.set_faults(faults).unwrap();
    }
}

/// Owned inputs of one Register Card call.
struct Card {
    card_id: CardId,
    consumer_id: ConsumerId,
    product: CardProductId,
    data: CardData,
    correlation: CorrelationId,
}

impl Card {
    fn new(card_id: &str) -> Self {
        Self {
            card_id: CardId::parse(card_id).unwrap(),
            consumer_id: ConsumerId::parse("consumer-42").unwrap(),
            product: CardProductId::parse("VISA_GOLD").unwrap(),
            data: CardData::from_json(PAN_JSON).unwrap(),
            correlation: CorrelationId::for_outbox_row(uuid::Uuid::new_v4()),
        }
    }

    fn request(&self) -> RegisterCard<'_> {
        RegisterCard {
            card_id: &self.card_id,
            consumer_id: &self.consumer_id,
            card_product_id: &self.product,
            card: &self.data,
            state: InitialState::Active,
        }
    }

    async fn register(&self, client: &D1Client) -> Result<(), D1Error> {
        client.register_card(&self.request(), &self.correlation).await
    }

    async fn get(&self, client: &D1Client) -> Result<Option<card_registrar::d1::D1Card>, D1Error> {
        client.get_card(&self.card_id, &self.correlation).await
    }
}

/// Polls `condition` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_registered_card_is_found_by_get_card_and_counted_once() {
    let sim = Sim::start(|_| {}).await;
    let client = sim.client();
    let card = Card::new("card-happy-1");
    assert_eq!(card.get(&client).await.unwrap(), None);
    card.register(&client).await.unwrap();
    let found = card.get(&client).await.unwrap().unwrap();
    assert_eq!(found.card_id.as_deref(), Some("card-happy-1"));
    assert_eq!(found.consumer_id, "consumer-42");
    assert_eq!(found.card_product_id.as_deref(), Some("VISA_GOLD"));
    assert_eq!(found.state.as_deref(), Some("ACTIVE"));
    // The simulator decrypted our JWE independently: it kept the right last four and expiry.
    let stored = sim.sim.card("card-happy-1").unwrap();
    assert_eq!(stored.last_four_digits.as_deref(), Some("5556"));
    assert_eq!(stored.expiry.as_deref(), Some("1130"));
    let stats = sim.sim.stats();
    assert_eq!(stats.effective_registrations, 1);
    assert_eq!(stats.duplicate_puts, 0);
    assert_eq!(stats.puts_for("card-happy-1"), 1);
}

#[tokio::test]
async fn one_token_serves_many_calls() {
    let sim = Sim::start(|_| {}).await;
    let client = sim.client();
    for i in 0..10 {
        Card::new(&format!("card-many-{i}")).register(&client).await.unwrap();
    }
    let stats = sim.sim.stats();
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.effective_registrations, 10);
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires_without_any_401() {
    let sim = Sim::start(|c| c.token_ttl = Duration::from_secs(1)).await;
    let client = sim.client();
    let card = Card::new("card-ttl");
    let refreshed = eventually(Duration::from_secs(5), async || {
        card.get(&client).await.unwrap();
        sim.sim.stats().tokens_issued >= 2
    })
    .await;
    assert!(refreshed, "no second token within 5 s of a 1 s token");
    assert_eq!(sim.sim.stats().rejected("TOKEN_EXPIRED"), 0);
}

#[tokio::test]
async fn a_token_the_simulator_expired_is_replaced_once_and_the_call_succeeds() {
    let sim = Sim::start(|_| {}).await;
    let client = sim.client();
    Card::new("card-exp-1").register(&client).await.unwrap();
    sim.sim.expire_tokens();
    Card::new("card-exp-2").register(&client).await.unwrap();
    let stats = sim.sim.stats();
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(stats.rejected("TOKEN_EXPIRED"), 1);
    assert_eq!(stats.effective_registrations, 2);
}

#[tokio::test]
async fn an_assertion_with_an_unknown_kid_is_unauthorized() {
    let sim = Sim::start(|_| {}).await;
    let mut config = sim.config(Duration::from_secs(5));
    config.auth_key = AssertionKey::from_file(&sim.files.issuer_auth_private_pem, "not-our-kid").unwrap();
    let err = Card::new("card-kid").register(&D1Client::new(config).unwrap()).await.unwrap_err();
    assert!(matches!(&err, D1Error::Unauthorized { detail } if detail.contains("UNKNOWN_KEY_ID")), "{err}");
    assert_eq!(sim.sim.stats().puts_total, 0);
}

#[tokio::test]
async fn an_assertion_signed_by_another_key_is_unauthorized() {
    let sim = Sim::start(|_| {}).await;
    let other = tempfile::tempdir().unwrap();
    let other_files = d1_simulator::keys::generate(other.path(), &KeyOptions::default()).unwrap();
    let mut config = sim.config(Duration::from_secs(5));
    config.auth_key =
        AssertionKey::from_file(&other_files.issuer_auth_private_pem, &sim.files.issuer_auth_kid).unwrap();
    let err = Card::new("card-sig").register(&D1Client::new(config).unwrap()).await.unwrap_err();
    assert!(
        matches!(&err, D1Error::Unauthorized { detail } if detail.contains("INVALID_SIGNATURE")),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_assertion_is_refused_and_classified_unauthorized() {
    let sim = Sim::start(|_| {}).await;
    let key =
        AssertionKey::from_file(&sim.files.issuer_auth_private_pem, &sim.files.issuer_auth_kid).unwrap();
    let issuer = IssuerId::parse(sim.sim.issuer_id()).unwrap();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let assertion = key.sign_assertion(&issuer, None, an_hour_ago).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/authz/v1/oauth2/token", sim.sim.base_url()))
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    let err = classify_status(Operation::Token, status, None, &body);
    assert!(
        matches!(&err, D1Error::Unauthorized { detail } if detail.contains("ASSERTION_EXPIRED")),
        "{err}"
    );
    // The same key, signing now, is accepted: only the expiry was wrong.
    let fresh = key.sign_assertion(&issuer, None, SystemTime::now()).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/authz/v1/oauth2/token", sim.sim.base_url()))
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &fresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn card_data_encrypted_for_an_unknown_d1_kid_is_terminal_with_its_error_code() {
    let sim = Sim::start(|_| {}).await;
    let other = tempfile::tempdir().unwrap();
    let options = KeyOptions { d1_encryption_kid: "d1-enc-unknown".into(), ..KeyOptions::default() };
    let other_files = d1_simulator::keys::generate(other.path(), &options).unwrap();
    let mut config = sim.config(Duration::from_secs(5));
    config.encryption_key = RecipientKey::from_file(&other_files.d1_encryption_public_jwk).unwrap();
    let err = Card::new("card-jwe").register(&D1Client::new(config).unwrap()).await.unwrap_err();
    assert!(err.is_terminal(), "{err}");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.error_code(), Some("UNKNOWN_KEY"));
    assert_eq!(sim.sim.stats().effective_registrations, 0);
}

#[tokio::test]
async fn injected_500_and_503_are_retryable_and_ambiguous_on_register() {
    for status in [500u16, 503] {
        let sim = Sim::start(|_| {}).await;
        sim.set_faults(Faults { error_rates: [(status, 1.0)].into(), ..Faults::none() });
        let err = Card::new("card-5xx").register(&sim.client()).await.unwrap_err();
        assert!(err.is_retryable() && err.is_ambiguous(), "{status}: {err}");
        assert_eq!(err.status(), Some(status));
    }
}

#[tokio::test]
async fn injected_429_is_retryable_not_ambiguous_and_carries_retry_after() {
    let sim = Sim::start(|_| {}).await;
    sim.set_faults(Faults { error_rates: [(429, 1.0)].into(), retry_after_secs: 3, ..Faults::none() });
    let err = Card::new("card-429").register(&sim.client()).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_once_the_burst_is_spent() {
    let sim = Sim::start(|_| {}).await;
    sim.set_faults(Faults { rate_limit_rps: Some(2), retry_after_secs: 1, ..Faults::none() });
    let client = sim.client();
    let mut limited = None;
    for i in 0..10 {
        if let Err(err) = Card::new(&format!("card-rl-{i}")).register(&client).await {
            limited = Some(err);
            break;
        }
    }
    let err = limited.expect("no 429 within 10 calls at 2 rps");
    assert!(err.is_retryable() && !err.is_ambiguous() && err.status() == Some(429), "{err}");
    assert!(err.retry_after().is_some());
}

#[tokio::test]
async fn commit_then_timeout_is_retryable_ambiguous_and_the_card_is_registered() {
    let sim = Sim::start(|_| {}).await;
    sim.set_faults(Faults {
        commit_then_timeout_rate: 1.0,
        commit_timeout_delay_ms: 10_000,
        ..Faults::none()
    });
    let client = D1Client::new(sim.config(Duration::from_millis(500))).unwrap();
    let card = Card::new("card-ctt");
    let err = card.register(&client).await.unwrap_err();
    assert!(err.is_retryable() && err.is_ambiguous(), "{err}");
    assert_eq!(err.status(), None);
    assert!(err.to_string().contains("timeout"), "{err}");
    sim.set_faults(Faults::none());
    let found = card.get(&client).await.unwrap();
    assert_eq!(found.map(|c| c.consumer_id).as_deref(), Some("consumer-42"));
    assert_eq!(sim.sim.stats().effective_registrations, 1);
}

#[tokio::test]
async fn fail_before_commit_is_retryable_ambiguous_and_nothing_is_stored() {
    let sim = Sim::start(|_| {}).await;
    sim.set_faults(Faults { fail_before_commit_rate: 1.0, ..Faults::none() });
    let client = sim.client();
    let card = Card::new("card-fbc");
    let err = card.register(&client).await.unwrap_err();
    assert!(err.is_ambiguous() && err.status() == Some(500), "{err}");
    assert_eq!(card.get(&client).await.unwrap(), None);
}

#[tokio::test]
async fn latency_below_the_timeout_is_only_slower() {
    let sim = Sim::start(|_| {}).await;
    sim.set_faults(Faults { latency: Some(Latency::fixed(150)), ..Faults::none() });
    let client = D1Client::new(sim.config(Duration::from_secs(2))).unwrap();
    let card = Card::new("card-slow");
    let started = Instant::now();
    card.register(&client).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(card.get(&client).await.unwrap().is_some());
}

#[tokio::test]
async fn get_card_faults_are_retryable_but_never_ambiguous() {
    let sim = Sim::start(|_| {}).await;
    sim.set_faults(Faults { error_rates: [(503, 1.0)].into(), ..Faults::none() });
    let err = Card::new("card-get-503").get(&sim.client()).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
}

/// A simulator over TLS that requires a client certificate signed by its CA.
async fn mtls_sim() -> Sim {
    let options = KeyOptions { tls: true, ..KeyOptions::default() };
    Sim::start_with(options, |config, files| {
        let tls = files.tls.as_ref().unwrap();
        config.tls = Some(TlsConfig {
            cert: tls.server_cert.clone(),
            key: tls.server_key.clone(),
            client_ca: Some(tls.ca_cert.clone()),
        })
    })
    .await
}

#[tokio::test]
async fn mutual_tls_with_our_client_certificate_registers_the_card() {
    let sim = mtls_sim().await;
    let tls = sim.files.tls.clone().unwrap();
    let mut config = sim.config(Duration::from_secs(5));
    assert_eq!(config.base_url.scheme(), "https");
    config.ca_cert = Some(tls.ca_cert);
    config.client_identity = Some(ClientIdentity { cert: tls.client_cert, key: tls.client_key });
    let card = Card::new("card-mtls");
    card.register(&D1Client::new(config).unwrap()).await.unwrap();
    assert_eq!(sim.sim.stats().effective_registrations, 1);
}

#[tokio::test]
async fn mutual_tls_without_a_client_certificate_is_refused_before_any_request() {
    let sim = mtls_sim().await;
    let mut config = sim.config(Duration::from_secs(5));
    config.ca_cert = Some(sim.files.tls.clone().unwrap().ca_cert);
    let err = Card::new("card-no-cert").register(&D1Client::new(config).unwrap()).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let stats = sim.sim.stats();
    assert_eq!((stats.tokens_issued, stats.puts_total), (0, 0));
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let sim = mtls_sim().await;
    let tls = sim.files.tls.clone().unwrap();
    let mut config = sim.config(Duration::from_secs(5));
    // System roots only: the simulator's private CA is not trusted.
    config.client_identity = Some(ClientIdentity { cert: tls.client_cert, key: tls.client_key });
    let err = Card::new("card-bad-ca").register(&D1Client::new(config).unwrap()).await.unwrap_err();
    assert!(err.is_retryable() && !err.is_ambiguous(), "{err}");
    assert_eq!(sim.sim.stats().tokens_issued, 0);
}

#[tokio::test]
async fn mutual_tls_accepts_a_sec1_client_key() {
    use josekit::jwk::alg::ec::EcKeyPair;
    let sim = mtls_sim().await;
    let tls = sim.files.tls.clone().unwrap();
    let pkcs8 = std::fs::read(&tls.client_key).unwrap();
    let sec1 = EcKeyPair::from_pem(&pkcs8, None).unwrap().to_traditional_pem_private_key();
    assert!(String::from_utf8_lossy(&sec1).contains("BEGIN EC PRIVATE KEY"));
    let sec1_path = sim._dir.path().join("client-key-sec1.pem");
    std::fs::write(&sec1_path, sec1).unwrap();
    let mut config = sim.config(Duration::from_secs(5));
    config.ca_cert = Some(tls.ca_cert);
    config.client_identity = Some(ClientIdentity { cert: tls.client_cert, key: sec1_path });
    Card::new("card-sec1").register(&D1Client::new(config).unwrap()).await.unwrap();
}
