//! The operator's commands, as the binary runs them: `card show`, `outbox list|retry|cancel`,
//! `dead-letters list|replay` (including a replay after a card-data key is added), `migrate`,
//! and start-up refusing a bad setting with one line naming it.

use std::process::{Command, Output};
use std::time::Duration;

use card_registrar::avro::encode::Framing;
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::core::record::CardState;
use card_registrar::store::{cards, outbox};
use card_registrar::workload::{Generator, Plan};

use crate::dispatch::ingest_directly;
use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};
use card_registrar::store::outbox::OutboxStatus;

fn cli(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_card-registrar"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("LOG_FORMAT", "text")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_show_and_outbox_commands_show_and_change_what_operators_need() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let cards_ = scripts(&keys, "cli", 2, |_| Plan::CreatedOnly);
    ingest_directly(&db, &keys, &cards_.iter().flat_map(|c| c.phase1.clone()).collect::<Vec<_>>()).await;

    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&db, &["card", "show", &cards_[0].card_id], &[]))).unwrap();
    assert_eq!(shown["record"]["state"], "PENDING");
    assert_eq!(shown["history"].as_array().unwrap().len(), 1);
    assert_eq!(shown["outbox"][0]["status"], "PENDING");
    assert!(!shown.to_string().contains(&cards_[0].pan), "card show never prints card data");
    let missing = cli(&db, &["card", "show", "no-such-card"], &[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no card no-such-card"));

    let listed = stdout(&cli(&db, &["outbox", "list", "--status", "PENDING"], &[]));
    assert_eq!(listed.lines().count(), 2);
    let id = serde_json::from_str::<serde_json::Value>(listed.lines().next().unwrap()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let card_of_row =
        serde_json::from_str::<serde_json::Value>(listed.lines().next().unwrap()).unwrap()["card_id"]
            .as_str()
            .unwrap()
            .to_owned();
    stdout(&cli(&db, &["outbox", "cancel", &id], &[]));
    let (record, _) = cards::get(&db.pool, &card_of_row).await.unwrap().unwrap();
    assert_eq!(record.state, CardState::Failed, "a cancelled call leaves the card FAILED");
    let again = cli(&db, &["outbox", "cancel", &id], &[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is CANCELLED"), "{again:?}");
    let bad = cli(&db, &["outbox", "list", "--status", "LOST"], &[]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--status must be one of"));
    assert_eq!(outbox::list(&db.pool, Some(OutboxStatus::Cancelled), None, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_for_an_unknown_card_data_key_is_replayed_once_the_key_is_added() {
    let (db, keys, producer_keys) =
        (TestDb::new().await, TestKeys::new(), TestKeys::with_card_data_kid("card-data-2"));
    // Core banking encrypted with a new card-data key we do not have yet.
    let mut g = Generator::new(
        SchemaSet::embedded().unwrap(),
        producer_keys.card_public(),
        Framing::SingleObject,
        1,
        "rot",
    );
    let card = g.card(0, Plan::CreatedOnly).unwrap();
    ingest_directly(&db, &keys, &card.phase1).await;
    let listed = stdout(&cli(&db, &["dead-letters", "list", "--reason", "UNKNOWN_CARD_DATA_KEY"], &[]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(!listed.contains(&card.pan));
    let id = serde_json::from_str::<serde_json::Value>(listed.trim()).unwrap()["id"].to_string();

    // The operator appends the new key to CARD_DATA_KEYS (the first key still seals dead letters).
    let both = keys.files.dir.join("card-data-both.jwks");
    let ours: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&keys.files.card_data_private_jwks).unwrap()).unwrap();
    let new: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&producer_keys.files.card_data_private_jwks).unwrap()).unwrap();
    let set = serde_json::json!({ "keys": [ours["keys"][0].clone(), new["keys"][0].clone()] });
    std::fs::write(&both, set.to_string()).unwrap();
    // ingest_directly reads from a topic named after the event kind.
    let env = [("CARD_DATA_KEYS", both.to_str().unwrap()), ("TOPIC_CARD_CREATED", "direct-Created")];
    let out = stdout(&cli(&db, &["dead-letters", "replay", &id], &env));
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((result["status"].as_str(), result["detail"].as_str()), (Some("REPLAYED"), Some("ENQUEUED")));
    let (record, _) = cards::get(&db.pool, &card.card_id).await.unwrap().unwrap();
    assert_eq!(record.state, CardState::Pending);
    // Replaying again changes nothing.
    let again = stdout(&cli(&db, &["dead-letters", "replay", &id], &env));
    assert!(again.contains("already replayed"));
}

#[tokio::test]
async fn migrate_applies_and_a_missing_setting_stops_start_up_with_one_line_naming_it() {
    let db = TestDb::new().await;
    assert!(stdout(&cli(&db, &["migrate"], &[])).contains("migrations applied"));
    let run = cli(&db, &["run"], &[("D1_ISSUER_ID", "TOO-SHORT"), ("CARD_DATA_KEYS", "/nonexistent.jwks")]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: CARD_DATA_KEYS: cannot read /nonexistent.jwks"), "{err}");
}

/// A pool that grew on demand made the first second of a burst after a quiet spell several times
/// slower (connects, authentication, first preparations while events waited): the worker opens
/// its connections before any work, and names them so `pg_stat_activity` shows whose they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_holds_database_min_connections_open_under_its_application_name() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let mut env =
        WorkerEnv::new(&db, &topics, &keys, &format!("pool-{}", uuid::Uuid::new_v4().simple()), None);
    env.set("DATABASE_MAX_CONNECTIONS", "9");
    env.set("DATABASE_MIN_CONNECTIONS", "7");
    let worker = Worker::spawn(&env, "pool");
    worker.wait_ready(Duration::from_secs(60)).await;
    let name = format!("card-registrar/%-{}", worker.pid());
    let count = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1")
                .bind(&name)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        n
    };
    // No event was published: only the start-up opened them. At least the seven, never more
    // than the pool (its LISTEN connections are pooled ones, held).
    wait_until("the worker's connections to open", Duration::from_secs(20), || async { count().await >= 7 })
        .await;
    let n = count().await;
    assert!(n <= 9, "{n} connections; log:\n{}", tail(&worker.log));
    worker.terminate(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_false_while_kafka_is_unreachable_and_the_worker_keeps_trying() {
    unreachable_kafka(&[], "127.0.0.1:1").await;
}

/// The same through SASL_SSL, as most banks' clusters: librdkafka then names the broker
/// `sasl_ssl://...` in its lines, and a refused connection is still only a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_to_a_sasl_ssl_listener_is_a_warning_too() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "not-used\n").unwrap();
    let security = [
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_SASL_MECHANISM", "PLAIN"),
        ("KAFKA_SASL_USERNAME", "card-registrar"),
        ("KAFKA_SASL_PASSWORD_FILE", password.to_str().unwrap()),
    ];
    unreachable_kafka(&security, "sasl_ssl://127.0.0.1:1").await;
}

/// Runs a worker whose brokers (127.0.0.1:1) refuse connections, with `security` settings: it stays
/// not ready, keeps trying, stops cleanly, and logs the refusals (naming `broker`) as warnings only.
async fn unreachable_kafka(security: &[(&str, &str)], broker: &str) {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(1).await, TestKeys::new());
    let mut env =
        WorkerEnv::new(&db, &topics, &keys, &format!("down-{}", uuid::Uuid::new_v4().simple()), None);
    env.set("KAFKA_BROKERS", "127.0.0.1:1");
    for (k, v) in security {
        env.set(k, v);
    }
    let worker = Worker::spawn(&env, "no-kafka");
    let url = format!("http://{}/readyz", worker.admin);
    wait_until("a /readyz answer", Duration::from_secs(30), || async {
        matches!(reqwest::get(&url).await, Ok(r) if r.status() == 503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["checks"]["kafka"].as_bool(), body["checks"]["database"].as_bool()),
        (Some(false), Some(true))
    );
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));
    // A broker that refuses connections is a condition the worker rides out and /readyz reports:
    // librdkafka's lines about it are warnings, so an alert on ERROR is not paged by a restart.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "ERROR lines while Kafka was unreachable: {errors:#?}");
    let refused = |l: &&serde_json::Value| {
        l["level"] == "WARN"
            && l["message"].as_str().is_some_and(|m| m.contains("Connection refused") && m.contains(broker))
    };
    assert!(lines.iter().any(|l| refused(&l)), "no WARN line names the refused connection:\n{}", tail(&log));
}

#[tokio::test]
async fn a_lease_too_short_for_the_timeout_stops_start_up_with_one_line_naming_it() {
    let (db, keys) = (TestDb::new().await, TestKeys::new());
    let f = &keys.files;
    let (auth, enc) =
        (f.issuer_auth_private_pem.display().to_string(), f.d1_encryption_public_jwk.display().to_string());
    let run = cli(
        &db,
        &["run"],
        &[
            ("INGEST_ENABLED", "false"),
            ("CARD_DATA_KEYS", &f.card_data_private_jwks.display().to_string()),
            ("D1_API_URL", "http://127.0.0.1:9"),
            ("D1_ISSUER_ID", &f.issuer_id),
            ("D1_AUTH_KEY", &auth),
            ("D1_AUTH_KEY_ID", &f.issuer_auth_kid),
            ("D1_ENCRYPTION_KEY", &enc),
            ("D1_TIMEOUT_MS", "20000"),
            ("DISPATCH_LEASE_SECS", "60"),
        ],
    );
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: DISPATCH_LEASE_SECS: "), "{err}");
    assert!(err.contains("at least 65 s"), "{err}");
}
