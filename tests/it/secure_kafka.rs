//! Kafka security against a real broker with a SASL_SSL listener (its own process, started by
//! `scripts/services secure-kafka-up` with a test CA, a broker certificate and SCRAM users made
//! when its storage is formatted; stopped at the end): the worker consumes and registers through it
//! with SCRAM-SHA-256, `publish` produces through it with SCRAM-SHA-512 and PLAIN, a restarted
//! worker checks its stored offsets against the watermarks and `offsets reset --to latest` reads
//! them through it too, and a wrong password, a wrong CA or plaintext against the TLS port each
//! stop start-up with one line naming the setting.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use card_registrar::core::record::CardState;

use crate::dispatch::TestD1;
use crate::helpers::*;
use crate::worker::{Worker, WorkerEnv, tail};

/// The secure broker, stopped (bounded) on drop.
struct SecureKafka {
    dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

fn services(args: &[&str]) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services")).args(args).output().unwrap()
}

impl SecureKafka {
    fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("secure-kafka-").tempdir().unwrap();
        let out = services(&["secure-kafka-up", dir.path().to_str().unwrap()]);
        // Built first, so a failed start still stops whatever did start.
        let mut this = Self { vars: HashMap::new(), dir };
        assert!(
            out.status.success(),
            "secure broker did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        this.vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        this
    }

    fn var(&self, name: &str) -> String {
        self.vars.get(name).unwrap_or_else(|| panic!("{name} not printed by secure-kafka-up")).clone()
    }

    /// The worker's Kafka settings for SASL_SSL with `mechanism` and the user's password file.
    fn settings(&self, mechanism: &str) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", self.var("SECURE_KAFKA_BROKERS")),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
            ("KAFKA_SASL_MECHANISM", mechanism.into()),
            ("KAFKA_SASL_USERNAME", self.var("SECURE_KAFKA_USERNAME")),
            ("KAFKA_SASL_PASSWORD_FILE", self.var("SECURE_KAFKA_PASSWORD_FILE")),
            ("KAFKA_SSL_CA_FILE", self.var("SECURE_KAFKA_CA_FILE")),
            ("KAFKA_STARTUP_CHECK_TIMEOUT_MS", "20000".into()),
        ]
    }
}

impl Drop for SecureKafka {
    fn drop(&mut self) {
        let _ = services(&["secure-kafka-down", self.dir.path().to_str().unwrap()]);
    }
}

/// Creates the three topics on the secure broker through its plaintext loopback listener.
async fn create_topics(internal: &str, topics: &TestTopics) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", internal).create().unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .names()
        .iter()
        .chain([&topics.results.as_str()])
        .map(|n| NewTopic::new(n, 3, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// Runs the binary with the worker's environment plus `extra`, bounded by `limit`.
fn binary(args: &[&str], env: &[(String, String)], extra: &[(&str, String)], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_card-registrar"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{args:?} still running after {limit:?}: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn with(base: &[(&'static str, String)], key: &'static str, value: &str) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = base.iter().filter(|(k, _)| *k != key).cloned().collect();
    v.push((key, value.to_owned()));
    v
}

/// Asserts start-up stops with exit code 2 and one stderr line naming `variable`.
fn assert_refused(out: &Output, variable: &str, secret: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}\nstdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: {variable}: ")), "{err}");
    assert!(!err.contains(secret), "the password reached stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registers_through_sasl_ssl_and_bad_credentials_stop_start_up_with_one_line() {
    let kafka = SecureKafka::start();
    let password = std::fs::read_to_string(kafka.var("SECURE_KAFKA_PASSWORD_FILE")).unwrap();
    let password = password.trim();
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Not created on the shared broker: only their names are used there (dropping them is a no-op).
    let topics = TestTopics {
        created: format!("s-created-{id}"),
        tokenized: format!("s-tokenized-{id}"),
        ordered: format!("s-ordered-{id}"),
        results: format!("s-results-{id}"),
    };
    create_topics(&kafka.var("SECURE_KAFKA_INTERNAL_BROKERS"), &topics).await;
    let d1 = TestD1::start(&keys).await;
    let mut env = WorkerEnv::new(&db, &topics, &keys, &format!("secure-{id}"), Some(d1.sim.base_url()));
    let scram256 = kafka.settings("SCRAM-SHA-256");
    for (k, v) in &scram256 {
        env.set(k, v);
    }
    let base = env.vars();

    // Each mistake stops start-up, in bounded time, with one line naming the setting.
    let wrong_password = kafka.dir.path().join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password\n").unwrap();
    let limit = Duration::from_secs(60);
    for (variable, extra) in [
        ("KAFKA_SASL_PASSWORD_FILE", with(&scram256, "KAFKA_SASL_PASSWORD_FILE", path(&wrong_password))),
        ("KAFKA_SSL_CA_FILE", with(&scram256, "KAFKA_SSL_CA_FILE", &kafka.var("SECURE_KAFKA_OTHER_CA_FILE"))),
        (
            "KAFKA_SECURITY_PROTOCOL",
            vec![
                ("KAFKA_BROKERS", kafka.var("SECURE_KAFKA_BROKERS")),
                ("KAFKA_SECURITY_PROTOCOL", "plaintext".into()),
                ("KAFKA_SASL_MECHANISM", String::new()),
                ("KAFKA_SASL_USERNAME", String::new()),
                ("KAFKA_SASL_PASSWORD_FILE", String::new()),
                ("KAFKA_SSL_CA_FILE", String::new()),
            ],
        ),
    ] {
        let extra: Vec<(&str, String)> = extra.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let cleared: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| !k.starts_with("KAFKA_SASL") && !k.starts_with("KAFKA_SSL"))
            .cloned()
            .collect();
        let started = Instant::now();
        let out = binary(&["run"], &cleared, &extra, limit);
        assert_refused(&out, variable, password);
        eprintln!("{variable}: refused in {:?}", started.elapsed());
    }

    // The worker consumes and registers through SASL_SSL + SCRAM-SHA-256.
    let worker = Worker::spawn(&env, "secure");
    worker.wait_ready(Duration::from_secs(90)).await;
    // `publish` produces through the same listener with SCRAM-SHA-512, then PLAIN.
    let public_key = path(&keys.files.card_data_public_jwk).to_owned();
    let publish_ten = |mechanism: &str, n: usize| {
        let mut extra = kafka.settings(mechanism);
        extra.push(("CARD_DATA_PUBLIC_KEY", public_key.clone()));
        let (prefix, seed) = (format!("sec{n}"), (n + 11).to_string());
        let args =
            ["publish", "--cards", "10", "--mix", "created", "--duplicates-percent", "0", "--poison", "0"];
        let args: Vec<&str> =
            args.into_iter().chain(["--phase-gap-ms", "0", "--prefix", &prefix, "--seed", &seed]).collect();
        let out = binary(&args, &base, &extra, limit);
        assert!(
            out.status.success(),
            "publish {n} with {mechanism}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (n, mechanism) in ["SCRAM-SHA-512", "PLAIN"].into_iter().enumerate() {
        publish_ten(mechanism, n);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while d1.sim.stats().effective_registrations < 20 {
        assert!(
            Instant::now() < deadline,
            "{} of 20 cards registered at D1; log:\n{}",
            d1.sim.stats().effective_registrations,
            tail(&worker.log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // D1's answer is recorded right after the call: wait for the records too.
    wait_until("20 cards REGISTERED in PostgreSQL", Duration::from_secs(30), || async {
        registered(&db).await == 20
    })
    .await;
    // The results relay's producer goes through the same listener with the same settings: each
    // registration's result is acknowledged by the secured broker.
    wait_until("20 registration results published through SASL_SSL", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM registration_results WHERE outcome = 'REGISTERED_EXPLICIT' AND published_at IS NOT NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == 20
    })
    .await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(password), "the SASL password reached the worker's log");

    // Restarted, the worker finds its stored offsets and checks each against the partition's
    // watermarks (a topic recreated under it is held, not re-read) through the same secured
    // listener: the client that reads them has the worker's security settings too.
    let worker = Worker::spawn(&env, "secure-again");
    worker.wait_ready(Duration::from_secs(90)).await;
    publish_ten("SCRAM-SHA-512", 2);
    wait_until("30 cards REGISTERED after the restart", Duration::from_secs(90), || async {
        registered(&db).await == 30
    })
    .await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("cannot read the watermarks"),
        "the watermarks were not read through the secured listener:\n{}",
        tail(&log)
    );
    let stats = d1.sim.stats();
    assert_eq!(
        (stats.effective_registrations, stats.duplicate_puts),
        (30, 0),
        "none lost, none registered twice"
    );

    // The operator's `offsets reset --to latest` reads the high watermark through the secured
    // listener as well, and stores it: the one the Kafka Java tool reads on the plaintext one.
    let high = java_high_watermark(&kafka.var("SECURE_KAFKA_INTERNAL_BROKERS"), &topics.created, 0);
    assert!(high > 0, "partition 0 of {} holds none of the 30 cards", topics.created);
    let args = [
        "offsets",
        "reset",
        "--topic",
        &topics.created,
        "--partition",
        "0",
        "--to",
        "latest",
        "--by",
        "test",
    ];
    let out = binary(&args, &base, &[], limit);
    assert!(out.status.success(), "offsets reset through SASL_SSL: {}", String::from_utf8_lossy(&out.stderr));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["to_offset"], high, "{row}");
}

/// The partition's high watermark as Kafka's own `GetOffsetShell` (Java client) reads it.
fn java_high_watermark(brokers: &str, topic: &str, partition: i32) -> i64 {
    let home = std::env::var("KAFKA_HOME").expect("KAFKA_HOME (eval \"$(scripts/services env)\")");
    let out = Command::new("java")
        .args([
            "-Xmx128m",
            &format!("-Dlog4j2.configurationFile={home}/log4j2.yaml"),
            "-cp",
            &format!("{home}/libs/*"),
        ])
        .args(["org.apache.kafka.tools.GetOffsetShell", "--bootstrap-server", brokers, "--topic", topic])
        .args(["--partitions", &partition.to_string(), "--time", "-1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "GetOffsetShell: {text}{}", String::from_utf8_lossy(&out.stderr));
    let prefix = format!("{topic}:{partition}:");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("GetOffsetShell: {text}"));
    line.trim().parse().unwrap()
}

/// Cards REGISTERED in PostgreSQL.
async fn registered(db: &TestDb) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cards WHERE state = $1")
        .bind(CardState::Registered.as_str())
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An unsigned JWT with `sub` and `exp`, as librdkafka needs to read the token's lifetime.
fn unsigned_jwt() -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = chrono::Utc::now().timestamp() + 3600;
    format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::json!({"sub": "card-registrar", "exp": exp, "iat": exp - 3600}))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_asks_the_oidc_endpoint_for_a_token_with_the_client_credentials() {
    use base64::Engine as _;
    use card_registrar::config::KafkaSecuritySettings;
    use card_registrar::kafka::{BrokerCheck, KafkaSecurity, check_brokers};
    use clap::Parser;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        s: KafkaSecuritySettings,
    }

    let idp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": unsigned_jwt(), "token_type": "bearer", "expires_in": 3600
        })))
        .mount(&idp)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "client-s3cr3t\n").unwrap();
    let endpoint = format!("{}/oauth2/token", idp.uri());
    let args = Args::try_parse_from([
        "t",
        "--kafka-security-protocol",
        "sasl_plaintext",
        "--kafka-sasl-mechanism",
        "OAUTHBEARER",
        "--kafka-oauth-token-endpoint-url",
        &endpoint,
        "--kafka-oauth-client-id",
        "card-registrar",
        "--kafka-oauth-client-secret-file",
        secret.to_str().unwrap(),
        "--kafka-oauth-scope",
        "kafka.read",
    ])
    .unwrap();
    let security = KafkaSecurity::from_settings(&args.s).unwrap();
    // No broker listens there: librdkafka's built-in OIDC client still fetches a token first.
    let found =
        tokio::task::spawn_blocking(move || check_brokers("127.0.0.1:1", &security, Duration::from_secs(3)))
            .await
            .unwrap()
            .unwrap();
    assert!(matches!(found, BrokerCheck::Unreachable(_)), "{found:?}");
    let requests = idp.received_requests().await.unwrap();
    let token_request = requests.first().expect("librdkafka asked the token endpoint");
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("card-registrar:client-s3cr3t"));
    assert_eq!(
        token_request.headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(expected.as_str())
    );
    let body = String::from_utf8_lossy(&token_request.body);
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(body.contains("scope=kafka.read"), "{body}");
}
