//! The `d1-simulator` binary: `serve` runs the simulator from flags or `D1SIM_*` environment
//! variables until SIGINT/SIGTERM; `keys` writes key files. Logs go to stderr; never a PAN or key.
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, request spans are exported over OTLP (`service.name`
//! `d1-simulator`) and flushed before exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use d1_simulator::config::{DEFAULT_ISSUER_ID, load_encryption_keys, load_issuer_keys};
use d1_simulator::faults::parse_error_rates;
use d1_simulator::{
    DuplicateAnswer, Faults, IssuerApiClient, KeyOptions, Latency, SimConfig, Simulator, TlsConfig, telemetry,
};

/// A stand-in for Thales D1 with fault injection.
#[derive(Parser)]
#[command(name = "d1-simulator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the D1 endpoints and the /_sim admin routes.
    Serve(Box<ServeArgs>),
    /// Write issuer, D1 and card-data keys (and TLS material with --tls) into a directory.
    Keys(KeysArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "D1SIM_LISTEN", default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// The issuer id accepted (exactly 10 characters).
    #[arg(long, env = "D1SIM_ISSUER_ID", default_value = DEFAULT_ISSUER_ID)]
    issuer_id: String,
    /// JWK Set (or JWK) of the issuer's ES256 public keys, with kids.
    #[arg(long, env = "D1SIM_ISSUER_KEYS")]
    issuer_keys: PathBuf,
    /// D1's P-256 private JWK with kid (a JWK Set for rotation).
    #[arg(long, env = "D1SIM_ENCRYPTION_KEY")]
    encryption_key: PathBuf,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "D1SIM_TOKEN_TTL_SECS", default_value_t = 900)]
    token_ttl_secs: u64,
    /// Status of a successful registration (2xx; 204 has no body).
    #[arg(long, env = "D1SIM_REGISTER_STATUS", default_value_t = 204)]
    register_status: u16,
    /// Answer to a PUT for a card already stored: `ok` or `STATUS:ERROR_CODE`.
    #[arg(long, env = "D1SIM_DUPLICATE_PUT", default_value = "ok")]
    duplicate_put: DuplicateAnswer,
    /// Extra latency per request in ms: `50` or a uniform range `0-200`.
    #[arg(long, env = "D1SIM_LATENCY_MS")]
    latency_ms: Option<Latency>,
    /// Error rates per status, e.g. `503=0.2,429=0.05` (statuses 429, 500, 502, 503, 504).
    #[arg(long, env = "D1SIM_ERROR_RATE", default_value = "")]
    error_rate: String,
    /// Retry-After seconds on an injected 429.
    #[arg(long, env = "D1SIM_RETRY_AFTER_SECS", default_value_t = 1)]
    retry_after_secs: u64,
    /// Rate of registrations answered 500 without storing.
    #[arg(long, env = "D1SIM_FAIL_BEFORE_COMMIT_RATE", default_value_t = 0.0)]
    fail_before_commit_rate: f64,
    /// Rate of registrations stored, then answered after --commit-timeout-delay-ms.
    #[arg(long, env = "D1SIM_COMMIT_TIMEOUT_RATE", default_value_t = 0.0)]
    commit_timeout_rate: f64,
    /// Delay of a "commit then time out" answer, in ms.
    #[arg(long, env = "D1SIM_COMMIT_TIMEOUT_DELAY_MS", default_value_t = 30_000)]
    commit_timeout_delay_ms: u64,
    /// Rate of registrations committed late: accepted, processed even if the client disconnects,
    /// stored after --late-commit-ms.
    #[arg(long, env = "D1SIM_LATE_COMMIT_RATE", default_value_t = 0.0)]
    late_commit_rate: f64,
    /// Delay of a late commit from arrival, in ms: `5000` or a uniform range `1000-10000`.
    #[arg(long, env = "D1SIM_LATE_COMMIT_MS", default_value = "1000-10000")]
    late_commit_ms: Latency,
    /// Extra latency of the token endpoint only, in ms: `50` or a uniform range `0-200`.
    #[arg(long, env = "D1SIM_TOKEN_LATENCY_MS")]
    token_latency_ms: Option<Latency>,
    /// Every card's first Register Card answers 401 and every issued token expires.
    #[arg(long, env = "D1SIM_UNAUTHORIZED_ONCE")]
    unauthorized_once: bool,
    /// Requests per second allowed on the card endpoints (burst = the same); beyond, 429.
    #[arg(long, env = "D1SIM_RATE_LIMIT_RPS")]
    rate_limit_rps: Option<u32>,
    /// Seed of the fault RNG, for reproducible runs.
    #[arg(long, env = "D1SIM_SEED")]
    seed: Option<u64>,
    /// Server certificate (PEM); enables HTTPS together with --tls-key.
    #[arg(long, env = "D1SIM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "D1SIM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are required (mutual TLS).
    #[arg(long, env = "D1SIM_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// The issuer's root URL for D1's outbound calls (Get Consumer Info, Notify Card Operations); off when unset.
    #[arg(long, env = "D1SIM_ISSUER_API_URL", requires_all = ["issuer_api_client_id", "issuer_api_client_secret_file", "issuer_api_client_cert", "issuer_api_client_key"])]
    issuer_api_url: Option<String>,
    /// OAuth client id toward the issuer API.
    #[arg(long, env = "D1SIM_ISSUER_API_CLIENT_ID")]
    issuer_api_client_id: Option<String>,
    /// File holding the OAuth client secret toward the issuer API.
    #[arg(long, env = "D1SIM_ISSUER_API_CLIENT_SECRET_FILE")]
    issuer_api_client_secret_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the issuer API.
    #[arg(long, env = "D1SIM_ISSUER_API_CLIENT_CERT")]
    issuer_api_client_cert: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8).
    #[arg(long, env = "D1SIM_ISSUER_API_CLIENT_KEY")]
    issuer_api_client_key: Option<PathBuf>,
    /// CA (PEM) of the issuer API's server certificate; system roots when unset.
    #[arg(long, env = "D1SIM_ISSUER_API_CA")]
    issuer_api_ca: Option<PathBuf>,
    /// Deliberate extra deliveries of every notification.
    #[arg(long, env = "D1SIM_NOTIFICATION_DUPLICATES", default_value_t = 0)]
    notification_duplicates: u32,
    /// OTLP collector base URL (e.g. `http://127.0.0.1:4317`); request spans are exported only when set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otel_exporter_otlp_endpoint: Option<String>,
    /// OTLP protocol: `grpc` or `http/protobuf`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc")]
    otel_exporter_otlp_protocol: String,
}

#[derive(Args)]
struct KeysArgs {
    /// Directory to write into (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Also write ca.pem, server.pem, server-key.pem, client.pem, client-key.pem.
    #[arg(long)]
    tls: bool,
    /// Issuer id for keys.env.
    #[arg(long, default_value = DEFAULT_ISSUER_ID)]
    issuer_id: String,
    /// kid of the issuer authentication key.
    #[arg(long, default_value = "issuer-auth-1")]
    issuer_auth_kid: String,
    /// kid of D1's encryption key.
    #[arg(long, default_value = "d1-enc-1")]
    d1_encryption_kid: String,
    /// kid of the card-data key.
    #[arg(long, default_value = "card-data-1")]
    card_data_kid: String,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(*args),
        Command::Keys(args) => match telemetry::init(None) {
            Ok(_logs_only) => keys(args),
            Err(error) => Err(error.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("d1-simulator: {message}");
            ExitCode::FAILURE
        }
    }
}

fn keys(args: KeysArgs) -> Result<(), String> {
    let options = KeyOptions {
        issuer_auth_kid: args.issuer_auth_kid,
        d1_encryption_kid: args.d1_encryption_kid,
        card_data_kid: args.card_data_kid,
        issuer_id: args.issuer_id,
        tls: args.tls,
    };
    let files = d1_simulator::keys::generate(&args.out, &options).map_err(|error| error.to_string())?;
    println!("keys written to {}; see {}", files.dir.display(), files.env.display());
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let otlp = args.otel_exporter_otlp_endpoint.clone().map(|endpoint| telemetry::OtlpSettings {
        endpoint,
        protocol: args.otel_exporter_otlp_protocol.clone(),
    });
    let config = serve_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(async move {
        // Inside the runtime: the OTLP batch processor runs on it.
        let telemetry = telemetry::init(otlp.as_ref()).map_err(|error| error.to_string())?;
        let served = run(config).await;
        // Spans still buffered leave before the process does, whatever happened.
        if let Err(message) = telemetry.shutdown().await {
            eprintln!("d1-simulator: warning: {message}");
        }
        served
    })
}

async fn run((config, listen): (SimConfig, SocketAddr)) -> Result<(), String> {
    let simulator = Simulator::start(config, listen).await.map_err(|error| error.to_string())?;
    tracing::info!(base_url = simulator.base_url(), "serving; stop with SIGINT or SIGTERM");
    wait_for_signal().await?;
    simulator.shutdown().await;
    Ok(())
}

fn serve_config(args: ServeArgs) -> Result<(SimConfig, SocketAddr), String> {
    let error = |error: &dyn std::fmt::Display| error.to_string();
    let faults = Faults {
        latency: args.latency_ms,
        error_rates: parse_error_rates(&args.error_rate).map_err(|e| error(&e))?,
        retry_after_secs: args.retry_after_secs,
        fail_before_commit_rate: args.fail_before_commit_rate,
        commit_then_timeout_rate: args.commit_timeout_rate,
        commit_timeout_delay_ms: args.commit_timeout_delay_ms,
        late_commit_rate: args.late_commit_rate,
        late_commit_ms: args.late_commit_ms,
        token_latency: args.token_latency_ms,
        unauthorized_once: args.unauthorized_once,
        rate_limit_rps: args.rate_limit_rps,
    };
    let mut config = SimConfig::new(
        args.issuer_id,
        load_issuer_keys(&args.issuer_keys).map_err(|e| error(&e))?,
        load_encryption_keys(&args.encryption_key).map_err(|e| error(&e))?,
    );
    config.token_ttl = Duration::from_secs(args.token_ttl_secs);
    config.register_status = args.register_status;
    config.duplicate_answer = args.duplicate_put;
    config.faults = faults;
    config.seed = args.seed;
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig { cert, key, client_ca: args.client_ca }),
        _ => None,
    };
    if let (Some(url), Some(client_id), Some(secret), Some(client_cert), Some(client_key)) = (
        args.issuer_api_url,
        args.issuer_api_client_id,
        args.issuer_api_client_secret_file,
        args.issuer_api_client_cert,
        args.issuer_api_client_key,
    ) {
        let secret = std::fs::read_to_string(&secret).map_err(|e| format!("{}: {e}", secret.display()))?;
        config.issuer_api = Some(IssuerApiClient {
            url: url.trim_end_matches('/').to_owned(),
            client_id,
            client_secret: zeroize::Zeroizing::new(secret.trim_end_matches(['\r', '\n']).to_owned()),
            client_cert,
            client_key,
            ca_cert: args.issuer_api_ca,
            notification_duplicates: args.notification_duplicates,
            notification_attempts: 5,
            retry_delay: Duration::from_millis(200),
        });
    }
    config.validate().map_err(|e| error(&e))?;
    Ok((config, args.listen))
}

async fn wait_for_signal() -> Result<(), String> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| format!("cannot listen for SIGTERM: {error}"))?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(|error| format!("cannot listen for SIGINT: {error}")),
        _ = terminate.recv() => Ok(()),
    }
}
