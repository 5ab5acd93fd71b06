//! The worker and simulator binaries as child processes with extra environment (OTLP export),
//! and a producer that sets a `traceparent` header.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::{TestDb, TestKeys, TestTopics, brokers};

const WORKER: &str = env!("CARGO_BIN_EXE_card-registrar");

/// The simulator binary, built beside the worker's; fails when it is missing or older than its sources.
fn simulator_binary() -> PathBuf {
    let path = Path::new(WORKER).with_file_name(format!("d1-simulator{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("{} is missing: build the workspace first (`cargo build --workspace`)", path.display())
    });
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("d1-simulator/src");
    assert!(
        built >= newest(&sources),
        "{} is older than {}: rebuild it (`cargo build --workspace`)",
        path.display(),
        sources.display()
    );
    path
}

/// The newest modification time under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
        };
        latest = latest.max(time);
    }
    latest
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process whose output goes to a log file; killed on drop.
struct Process {
    child: Child,
    log: tempfile::NamedTempFile,
    name: &'static str,
}

impl Process {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then waits (bounded) and asserts a clean exit.
    fn terminate(mut self, within: Duration) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {within:?}:\n{}",
                self.name,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{} exited with {status}:\n{}", self.name, self.tail());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `d1-simulator serve` on a free port.
pub struct Simulator {
    process: Process,
    /// Its root URL.
    pub base_url: String,
}

impl Simulator {
    /// Starts the simulator with the test keys and `extra` environment; waits until it listens.
    pub fn spawn(keys: &TestKeys, extra: &[(String, String)]) -> Self {
        let f = &keys.files;
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(simulator_binary())
            .arg("serve")
            .env_clear()
            .env("D1SIM_LISTEN", "127.0.0.1:0")
            .env("D1SIM_ISSUER_ID", &f.issuer_id)
            .env("D1SIM_ISSUER_KEYS", &f.issuer_auth_public_jwks)
            .env("D1SIM_ENCRYPTION_KEY", &f.d1_encryption_private_jwk)
            .env("RUST_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("d1-simulator binary starts");
        // Copy stderr into the log file, watching for the line with the bound address.
        let (stderr, mut out) = (child.stderr.take().unwrap(), log.reopen().unwrap());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(out, "{line}");
                if let Some(rest) = line.split("local_addr=").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
        });
        let process = Process { child, log, name: "d1-simulator" };
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("d1-simulator never listened:\n{}", process.tail()));
        Self { process, base_url: format!("http://{addr}") }
    }

    /// Registrations that took effect, from `/_sim/stats`.
    pub async fn effective_registrations(&self) -> u64 {
        let stats: serde_json::Value =
            reqwest::get(format!("{}/_sim/stats", self.base_url)).await.unwrap().json().await.unwrap();
        stats["effectiveRegistrations"].as_u64().unwrap_or_else(|| panic!("stats: {stats}"))
    }

    /// SIGTERM; asserts a clean exit.
    pub fn terminate(self, within: Duration) {
        self.process.terminate(within);
    }
}

/// `card-registrar run` (ingest and dispatch) on the test schema, topics and keys.
pub struct Worker {
    process: Process,
    admin: String,
}

impl Worker {
    /// Starts the worker with `extra` environment, dispatching to `d1_url`.
    pub fn spawn(
        db: &TestDb,
        topics: &TestTopics,
        keys: &TestKeys,
        group: &str,
        d1_url: &str,
        extra: &[(String, String)],
    ) -> Self {
        let f = &keys.files;
        let admin = format!("127.0.0.1:{}", free_port());
        let log = tempfile::NamedTempFile::new().unwrap();
        let path = |p: &Path| p.display().to_string();
        let vars: Vec<(&str, String)> = vec![
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("DATABASE_URL", db.url.clone()),
            ("KAFKA_BROKERS", brokers()),
            ("KAFKA_GROUP_ID", group.to_owned()),
            ("TOPIC_CARD_CREATED", topics.created.clone()),
            ("TOPIC_CARD_TOKENIZED", topics.tokenized.clone()),
            ("TOPIC_CARD_ORDERED", topics.ordered.clone()),
            ("TOPIC_REGISTRATION_RESULTS", topics.results.clone()),
            ("CARD_DATA_KEYS", path(&f.card_data_private_jwks)),
            ("D1_API_URL", d1_url.to_owned()),
            ("D1_ISSUER_ID", f.issuer_id.clone()),
            ("D1_AUTH_KEY", path(&f.issuer_auth_private_pem)),
            ("D1_AUTH_KEY_ID", f.issuer_auth_kid.clone()),
            ("D1_ENCRYPTION_KEY", path(&f.d1_encryption_public_jwk)),
            ("DISPATCH_POLL_MS", "100".into()),
            ("ADMIN_LISTEN", admin.clone()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
            ("SHUTDOWN_TIMEOUT_SECS", "15".into()),
        ];
        let out = log.reopen().unwrap();
        let child = Command::new(WORKER)
            .arg("run")
            .env_clear()
            .envs(vars)
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("card-registrar binary starts");
        Self { process: Process { child, log, name: "card-registrar" }, admin }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let url = format!("http://{}/readyz", self.admin);
        let deadline = tokio::time::Instant::now() + within;
        while !reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "worker never ready:\n{}", self.process.tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the card's outbox row has `status`.
    pub async fn wait_for_status(&self, db: &TestDb, card_id: &str, status: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now: Option<String> = sqlx::query_scalar("SELECT status FROM outbox WHERE card_id = $1")
                .bind(card_id)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
            if now.as_deref() == Some(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox row of {card_id} is {now:?}, not {status}:\n{}",
                self.process.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM; asserts a clean exit (which includes flushing its spans).
    pub fn terminate(self, within: Duration) {
        self.process.terminate(within);
    }
}

/// Publishes one message with a `traceparent` header and waits for its delivery.
pub async fn publish_with_traceparent(
    topic: &str,
    m: &card_registrar::workload::Outgoing,
    traceparent: &str,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let headers = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(traceparent) });
    let record = FutureRecord::to(topic).key(&m.key).payload(&m.payload).headers(headers);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}
