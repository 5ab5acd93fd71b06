//! Fixtures shared by the service benchmarks (`ingest`, `dispatch`): knobs read from the
//! environment, the service's own settings with their production defaults, a schema and topics of
//! their own, the in-process service parts, and the external tools used as ceilings.
//!
//! Benches cannot import `tests/`, so the few fixtures they share with the integration tests are
//! repeated here in a fallible form (a bench reports an error instead of panicking). Each bench
//! uses a part of this module.

pub mod db;
pub mod kafka;
pub mod pgbench;
pub mod service;
pub mod sim_process;

use std::time::Duration;

use card_registrar::config::{D1Settings, DatabaseSettings, DispatchSettings, IngestSettings};
use clap::Parser;

/// The benchmark's size knobs, read from the environment and remembered so the report can print
/// the exact command line that reproduces it.
#[derive(Debug, Default)]
pub struct Knobs {
    used: Vec<(&'static str, String)>,
}

impl Knobs {
    /// The value of `name`, or `default` when unset or unparsable.
    pub fn usize(&mut self, name: &'static str, default: usize) -> usize {
        let value = std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        self.used.push((name, value.to_string()));
        value
    }

    /// The command line that runs `bench` with these values.
    pub fn command(&self, bench: &str) -> String {
        let vars: Vec<String> = self.used.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} cargo bench --bench {bench}", vars.join(" "))
    }
}

/// The service's settings as `card-registrar run` would read them: production defaults from
/// `src/config.rs`, overridden by the same environment variables (e.g. `INGEST_BATCH_MAX`).
#[derive(Debug, Parser)]
pub struct ServiceSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub ingest: IngestSettings,
    #[command(flatten)]
    pub dispatch: DispatchSettings,
    #[command(flatten)]
    pub d1: D1Settings,
}

impl ServiceSettings {
    /// Reads the settings from the environment only (the bench's own arguments are cargo's).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self::try_parse_from(["bench"])?)
    }

    /// One line naming the ingest settings in force.
    pub fn ingest_line(&self) -> String {
        let i = &self.ingest;
        format!(
            "INGEST_BATCH_MAX={} INGEST_BATCH_WAIT_MS={} INGEST_QUEUE_CAPACITY={} INGEST_BATCHES_IN_FLIGHT={} DATABASE_MAX_CONNECTIONS={}",
            i.ingest_batch_max,
            i.ingest_batch_wait_ms,
            i.ingest_queue_capacity,
            i.ingest_batches_in_flight,
            self.database.database_max_connections
        )
    }
}

/// Kafka bootstrap servers (`KAFKA_BROKERS`, as `scripts/services env` prints it).
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Events per second; 0 when no time passed.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Kernel clock ticks per second for /proc CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Fields of a /proc `stat` line after the process name: state is index 0, utime (field 14) is 11,
/// stime 12, cutime (children reaped) 13, cstime 14.
fn stat_ticks(stat: &str) -> Vec<f64> {
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0)).collect()
}

/// CPU seconds (user + system) in a /proc `stat` line, with its reaped children's if `children`.
fn stat_cpu(stat: &str, children: bool) -> f64 {
    let fields = stat_ticks(stat);
    let ticks = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    let own = ticks(11) + ticks(12);
    (if children { own + ticks(13) + ticks(14) } else { own }) / TICKS_PER_SEC
}

/// CPU seconds (user + system) of process `pid`, from /proc (0 if it cannot be read).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| stat_cpu(&s, false)).unwrap_or(0.0)
}

/// CPU seconds (user + system) of this process, and of its threads whose name starts with
/// `prefix`, from /proc (Linux only; zeros elsewhere).
pub fn cpu_seconds(prefix: &str) -> (f64, f64) {
    let process = std::fs::read_to_string("/proc/self/stat").map(|s| stat_cpu(&s, false)).unwrap_or(0.0);
    let mut threads = 0.0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            threads +=
                std::fs::read_to_string(task.path().join("stat")).map(|s| stat_cpu(&s, false)).unwrap_or(0.0);
        }
    }
    (process, threads)
}

/// CPU seconds used so far by PostgreSQL on this machine: every live `postgres` process, plus the
/// postmaster's reaped children (backends that exited). Every server counts, so run benches with
/// no other PostgreSQL busy (`scripts/services` starts one). `None` when no postgres process is
/// visible (a remote server, or another PID namespace).
pub fn postgres_cpu_seconds() -> Option<f64> {
    let mut total = 0.0;
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).map_or(true, |c| c.trim_end() != "postgres") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        seen = true;
        // The postmaster's parent is not postgres; only its reaped children are PostgreSQL's own.
        let parent = stat_ticks(&stat).get(1).copied().unwrap_or(0.0) as u64;
        let parent_comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
        total += stat_cpu(&stat, parent_comm.trim_end() != "postgres");
    }
    seen.then_some(total)
}
