//! The worker binary as a child process (for crash, rebalance and exactly-once tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::{TestDb, TestKeys, TestTopics, brokers};

/// Everything a worker process needs to know; one per scenario, shared by its processes.
#[derive(Clone)]
pub struct WorkerEnv {
    vars: Vec<(String, String)>,
    logs: std::sync::Arc<tempfile::TempDir>,
}

impl WorkerEnv {
    /// Overrides or adds one variable.
    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.into(), value.into()));
    }

    /// The variables, for running the binary with other commands or arguments.
    pub fn vars(&self) -> Vec<(String, String)> {
        self.vars.clone()
    }

    /// Environment for a worker on this schema, these topics and keys; `d1_url` None = no dispatch.
    pub fn new(db: &TestDb, topics: &TestTopics, keys: &TestKeys, group: &str, d1_url: Option<&str>) -> Self {
        let f = &keys.files;
        let mut vars: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("DATABASE_MAX_CONNECTIONS".into(), "8".into()),
            ("KAFKA_BROKERS".into(), brokers()),
            ("KAFKA_GROUP_ID".into(), group.into()),
            ("TOPIC_CARD_CREATED".into(), topics.created.clone()),
            ("TOPIC_CARD_TOKENIZED".into(), topics.tokenized.clone()),
            ("TOPIC_CARD_ORDERED".into(), topics.ordered.clone()),
            ("TOPIC_REGISTRATION_RESULTS".into(), topics.results.clone()),
            ("CARD_DATA_KEYS".into(), f.card_data_private_jwks.display().to_string()),
            ("LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
            ("SHUTDOWN_TIMEOUT_SECS".into(), "15".into()),
        ];
        match d1_url {
            Some(url) => vars.extend([
                ("D1_API_URL".into(), url.to_owned()),
                ("D1_ISSUER_ID".into(), f.issuer_id.clone()),
                ("D1_AUTH_KEY".into(), f.issuer_auth_private_pem.display().to_string()),
                ("D1_AUTH_KEY_ID".into(), f.issuer_auth_kid.clone()),
                ("D1_ENCRYPTION_KEY".into(), f.d1_encryption_public_jwk.display().to_string()),
                // Fast enough for a test: short timeouts and leases, quick retries.
                ("D1_TIMEOUT_MS".into(), "1000".into()),
                ("DISPATCH_LEASE_SECS".into(), "4".into()),
                ("DISPATCH_LEASE_MARGIN_MS".into(), "500".into()),
                ("DISPATCH_RETRY_MAX_MS".into(), "2000".into()),
                ("DISPATCH_RECONCILE_DELAY_MS".into(), "1500".into()),
                ("DISPATCH_POLL_MS".into(), "100".into()),
                ("D1_MAX_RPS".into(), "1000".into()),
            ]),
            None => vars.push(("DISPATCH_ENABLED".into(), "false".into())),
        }
        // Removed with the scenario; failing assertions print the log tail first.
        let logs = std::sync::Arc::new(tempfile::Builder::new().prefix("worker-logs-").tempdir().unwrap());
        Self { vars, logs }
    }
}

/// A running worker process.
pub struct Worker {
    child: Child,
    /// Its admin address.
    pub admin: String,
    /// Its combined stdout/stderr.
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Worker {
    /// Starts `card-registrar run`; `name` distinguishes its log file.
    pub fn spawn(env: &WorkerEnv, name: &str) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let log = env.logs.path().join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_card-registrar"))
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADMIN_LISTEN", &admin)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("card-registrar binary starts");
        Self { child, admin, log }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("worker did not stop within {within:?}; log: {}", tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/readyz` answers 200 (database and Kafka healthy).
    pub async fn wait_ready(&self, within: Duration) {
        let url = format!("http://{}/readyz", self.admin);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "worker never ready; log:\n{}", tail(&self.log));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGSTOP: the process freezes wherever it is (a GC pause, CPU throttling, VM steal).
    pub fn freeze(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGSTOP).unwrap();
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT).unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file (for failure messages).
pub fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
