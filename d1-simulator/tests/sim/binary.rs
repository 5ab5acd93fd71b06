//! The `d1-simulator` binary: `keys` writes the files; `serve` takes its settings from `D1SIM_*`
//! environment variables and stops cleanly on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_d1-simulator");

#[tokio::test]
async fn keys_subcommand_writes_the_files_and_serve_reads_d1sim_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BINARY).args(["keys", "--out"]).arg(dir.path()).status().unwrap();
    assert!(status.success());
    let path = |name: &str| dir.path().join(name);
    assert!(path("keys.env").is_file() && path("card-data-private.jwks").is_file());

    let mut child = Command::new(BINARY)
        .arg("serve")
        .env("D1SIM_LISTEN", "127.0.0.1:0")
        .env("D1SIM_ISSUER_KEYS", path("issuer-auth-public.jwks"))
        .env("D1SIM_ENCRYPTION_KEY", path("d1-encryption-private.jwk"))
        .env("D1SIM_ERROR_RATE", "503=1.0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap();
        if let Some(rest) = line.split("local_addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };

    let http = reqwest::Client::new();
    let health = http.get(format!("http://{addr}/_sim/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let faults: serde_json::Value =
        http.get(format!("http://{addr}/_sim/faults")).send().await.unwrap().json().await.unwrap();
    assert_eq!(faults["errorRates"], json!({"503": 1.0}));

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the simulator did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success());
}
