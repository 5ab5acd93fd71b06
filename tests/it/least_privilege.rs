//! PostgreSQL least privilege and TLS: the worker runs as the runtime role of
//! `sql/runtime-role.sql` with `MIGRATE_ON_START=false`, registers cards, and that role cannot
//! change the schema; `sslmode=verify-full` against the local server with a test CA
//! (`scripts/services pg-tls`) works for the binary and refuses a CA that did not sign the server.

use std::process::Command;
use std::time::Duration;

use card_registrar::store;
use card_registrar::workload::{Outgoing, Plan};

use crate::dispatch::TestD1;
use crate::helpers::*;
use crate::ingest::scripts;
use crate::worker::{Worker, WorkerEnv, tail};

const RUNTIME_ROLE_SQL: &str = include_str!("../../sql/runtime-role.sql");

/// The SQL file as psql would run it with `-v runtime_role=... -v schema=...`.
fn runtime_role_sql(role: &str, schema: &str) -> String {
    RUNTIME_ROLE_SQL
        .replace(":\"runtime_role\"", &format!("\"{role}\""))
        .replace(":\"schema\"", &format!("\"{schema}\""))
}

/// A login role of its own, with the runtime grants on the test schema; dropped on drop.
struct RuntimeRole {
    name: String,
}

impl RuntimeRole {
    async fn create(db: &TestDb) -> Self {
        let name = format!("cr_rt_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE ROLE \"{name}\" LOGIN")).execute(&db.pool).await.unwrap();
        sqlx::raw_sql(&runtime_role_sql(&name, &db.schema)).execute(&db.pool).await.unwrap();
        Self { name }
    }

    /// The test schema's URL, connecting as this role.
    fn url(&self, db: &TestDb) -> String {
        let (scheme, rest) = db.url.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{}@{host}", self.name)
    }
}

impl Drop for RuntimeRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(admin) = store::connect(&database_url(), 1).await {
                    let _ = sqlx::query(&format!("DROP OWNED BY \"{name}\"")).execute(&admin).await;
                    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{name}\"")).execute(&admin).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registers_as_the_runtime_role_which_cannot_change_the_schema() {
    let (db, topics, keys) = (TestDb::new().await, TestTopics::new(3).await, TestKeys::new());
    let role = RuntimeRole::create(&db).await;
    let url = role.url(&db);
    let d1 = TestD1::start(&keys).await;
    let group = format!("rt-{}", uuid::Uuid::new_v4().simple());
    let mut env = WorkerEnv::new(&db, &topics, &keys, &group, Some(d1.sim.base_url()));
    env.set("DATABASE_URL", &url);
    env.set("MIGRATE_ON_START", "false");
    let worker = Worker::spawn(&env, "runtime-role");
    worker.wait_ready(Duration::from_secs(60)).await;

    let cards = scripts(&keys, "rt", 10, |_| Plan::CreatedOnly);
    let events: Vec<Outgoing> =
        cards.iter().flat_map(|c| c.phase1.iter().chain(&c.phase2).cloned()).collect();
    publish(&topics, &events).await;
    wait_until("10 cards registered at D1", Duration::from_secs(60), || async {
        d1.sim.stats().effective_registrations == 10
    })
    .await;
    wait_until("10 cards REGISTERED in PostgreSQL", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cards WHERE state = 'REGISTERED'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 10
    })
    .await;
    let log = worker.log.clone();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "log:\n{}", tail(&log));
    assert!(std::fs::read_to_string(&log).unwrap().contains("database schema is current"));

    // The same role cannot change the schema, nor rewrite history.
    let runtime = store::connect(&url, 1).await.unwrap();
    for statement in [
        "ALTER TABLE cards ADD COLUMN extra int",
        "CREATE TABLE extra (id int)",
        "DROP TABLE outbox",
        "CREATE INDEX extra_idx ON cards (updated_at)",
        "TRUNCATE consumer_offsets",
        "UPDATE card_events SET event_id = event_id",
        "DELETE FROM card_events",
        "DELETE FROM cards",
    ] {
        let err = sqlx::query(statement).execute(&runtime).await.expect_err(statement);
        // 42501 insufficient_privilege; 42501 also covers "must be owner of table".
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{statement}: {err}");
    }
    runtime.close().await;
}

#[tokio::test]
async fn every_table_the_migrations_create_has_its_runtime_grant() {
    let db = TestDb::new().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&db.schema)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 7, "{tables:?}");
    for table in tables {
        assert!(
            RUNTIME_ROLE_SQL.contains(&format!(":\"schema\".{table} TO")),
            "sql/runtime-role.sql has no grant on {table}: add the DML the code needs"
        );
    }
}

#[tokio::test]
async fn unapplied_migrations_counts_what_the_migrate_job_has_not_applied_yet() {
    let base = database_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = store::connect(&base, 1).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let pool = store::connect(&url, 2).await.unwrap();
    assert!(store::unapplied_migrations(&pool).await.is_err(), "no _sqlx_migrations table yet");
    store::migrate(&pool).await.unwrap();
    assert_eq!(store::unapplied_migrations(&pool).await.unwrap(), 0);
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store::unapplied_migrations(&pool).await.unwrap(), 1);
    pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
    admin.close().await;
}

/// `scripts/services pg-tls`: TLS on the local server (idempotent), the CA's path.
fn pg_tls_ca() -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
        .arg("pg-tls")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg-tls: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("PG_TLS_CA_FILE=")).expect("CA path printed").to_owned()
}

#[tokio::test]
async fn verify_full_tls_to_postgres_works_with_the_right_ca_and_refuses_another() {
    let ca = pg_tls_ca();
    let db = TestDb::new().await;
    let tls_url = format!("{}&sslmode=verify-full&sslrootcert={ca}", db.url);
    let pool = store::connect(&tls_url, 1).await.unwrap();
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "connection is not encrypted");
    assert!(version.is_some_and(|v| v.starts_with("TLS")));
    pool.close().await;

    // The binary with the same URL: `migrate` connects through verify-full.
    let out = Command::new(env!("CARGO_BIN_EXE_card-registrar"))
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &tls_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A CA that did not sign the server's certificate is refused.
    let other = tempfile::tempdir().unwrap();
    let files = d1_simulator::keys::generate(
        other.path(),
        &d1_simulator::keys::KeyOptions { tls: true, ..Default::default() },
    )
    .unwrap();
    let other_ca = files.tls.unwrap().ca_cert;
    let wrong = format!("{}&sslmode=verify-full&sslrootcert={}", db.url, other_ca.display());
    let err = store::connect(&wrong, 1).await.expect_err("a foreign CA must be refused");
    assert!(format!("{:?}", err).to_lowercase().contains("certificate"), "{err:?}");

    // Plaintext loopback connections still work (other tests share this server).
    let plain = store::connect(&format!("{}&sslmode=disable", db.url), 1).await.unwrap();
    assert!(store::ping(&plain).await);
}
