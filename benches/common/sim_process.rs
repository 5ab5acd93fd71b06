//! The d1-simulator binary in a process of its own (`BENCH_SIMULATOR=process`): D1's stand-in
//! then shares no process, runtime or allocator with the service, and its CPU is read from its
//! own /proc entry. Build it first: `cargo build --release -p d1-simulator` (or point
//! `BENCH_SIMULATOR_BIN` at it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use d1_simulator::stats::Stats;

use super::service::Keys;
use super::{poll_until, process_cpu_seconds};

/// A running `d1-simulator serve`, killed on drop.
pub struct SimProcess {
    child: Child,
    base_url: String,
    http: reqwest::Client,
}

impl SimProcess {
    /// Starts the binary on a free loopback port with `keys`, and waits until it answers.
    pub async fn start(keys: &Keys) -> anyhow::Result<Self> {
        let bin = std::env::var_os("BENCH_SIMULATOR_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/d1-simulator"),
            PathBuf::from,
        );
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p d1-simulator` first (or set BENCH_SIMULATOR_BIN)",
            bin.display()
        );
        // A free port: bound, read, released (the simulator binds it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let f = &keys.files;
        let child = Command::new(&bin)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--issuer-id")
            .arg(f.issuer_id.as_str())
            .arg("--issuer-keys")
            .arg(&f.issuer_auth_public_jwks)
            .arg("--encryption-key")
            .arg(&f.d1_encryption_private_jwk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let sim = Self { child, base_url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        poll_until(
            "the simulator process to answer",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let up = sim.http.get(format!("{}/_sim/health", sim.base_url)).send().await;
                Ok(up.is_ok_and(|r| r.status().is_success()).then_some(()))
            },
        )
        .await?;
        Ok(sim)
    }

    /// Where it listens.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Its counters (`GET /_sim/counts`: without the per-card map).
    pub async fn counts(&self) -> anyhow::Result<Stats> {
        let response = self.http.get(format!("{}/_sim/counts", self.base_url)).send().await?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// CPU seconds it has used.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
