//! The binary's logs and traces: human-readable logs to stderr (`RUST_LOG`, default `info`) and,
//! when an OTLP endpoint is given, every span exported over OTLP (gRPC or HTTP/protobuf, batched on
//! Tokio) with `service.name=d1-simulator`, so its request spans join the callers' traces.
//!
//! Spans and logs never hold a PAN: handlers log a cardId only once it is known not to reveal one.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// The `service.name` of every exported span.
pub const SERVICE_NAME: &str = "d1-simulator";

/// Crates whose spans would describe the export itself: never exported.
const EXPORTER_CRATES: [&str; 6] = ["h2", "hyper", "tonic", "tower", "opentelemetry", "reqwest"];

/// How long shutdown waits for the last spans to leave.
const EXPORT_DEADLINE: Duration = Duration::from_secs(10);

/// Where spans go: `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's base URL, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The protocol is neither `grpc` nor `http/protobuf`.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, not {0:?}")]
    Protocol(String),
    /// The exporter could not be built (e.g. a malformed endpoint).
    #[error("cannot build the OTLP span exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// Another global subscriber is installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// The installed telemetry; [`Telemetry::shutdown`] sends the spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is left and stops the exporter (bounded; a failure is reported, not fatal).
    pub async fn shutdown(mut self) -> Result<(), String> {
        let Some(provider) = self.provider.take() else { return Ok(()) };
        // The SDK blocks until its exporter task answers: block a pool thread, never a worker.
        let done =
            tokio::time::timeout(EXPORT_DEADLINE, tokio::task::spawn_blocking(move || provider.shutdown()));
        match done.await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("trace export did not shut down cleanly: {error}")),
            Ok(Err(_)) | Err(_) => Err(format!("trace export did not shut down within {EXPORT_DEADLINE:?}")),
        }
    }
}

/// Installs the global subscriber: logs to stderr, spans to OTLP when `otlp` is given. Call
/// inside a Tokio runtime when exporting (the batch processor runs on it).
pub fn init(otlp: Option<&OtlpSettings>) -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let provider = otlp.map(provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        let not_exporter = Targets::new()
            .with_default(LevelFilter::INFO)
            .with_targets(EXPORTER_CRATES.map(|c| (c, LevelFilter::OFF)));
        tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME)).with_filter(not_exporter)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

fn provider(otlp: &OtlpSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match otlp.protocol.as_str() {
        "grpc" => builder.with_tonic().with_endpoint(otlp.endpoint.as_str()).build(),
        // Over HTTP the base URL gets the signal path (OpenTelemetry exporter specification).
        "http/protobuf" => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", otlp.endpoint.trim_end_matches('/')))
            .build(),
        other => return Err(TelemetryError::Protocol(other.to_owned())),
    }
    .map_err(TelemetryError::Exporter)?;
    let resource = Resource::builder().with_service_name(SERVICE_NAME).build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .build())
}
