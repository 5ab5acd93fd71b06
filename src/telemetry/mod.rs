//! Telemetry: logs, traces and metrics, set up in one place.
//!
//! [`init`] installs the process-wide `tracing` subscriber: an `EnvFilter` from `RUST_LOG`, logs as
//! one JSON object per line (every field of the enclosing spans flattened in, plus `trace_id` and
//! `span_id`) or as human text, and an OpenTelemetry layer. The OpenTelemetry layer always runs, so
//! span contexts, parent links and `traceparent` propagation work the same in every process; spans
//! leave the process (OTLP, gRPC or HTTP/protobuf, batched on Tokio) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The W3C TraceContext propagator is installed globally.
//! [`propagation`] carries trace context through Kafka headers, outbox rows and HTTP headers;
//! [`prometheus`] installs the metrics recorder; [`metrics`] names every metric; [`capture`] lets
//! tests read every log line and every finished span.
//!
//! Never put card data (PAN, expiry, `encryptedCard`) in a span field, an event field or a metric
//! label: whatever reaches a subscriber here may leave the process.

pub mod capture;
mod json;
pub mod metrics;
pub mod prometheus;
pub mod propagation;
mod subscriber;
mod tracer;

use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetrySettings;

pub use capture::{CapturedEvent, CapturedSpan, LogBuffer, SpanCapture};
pub use prometheus::{MetricsError, install_metrics, metrics_recorder, run_metrics_upkeep};
pub use propagation::{
    TraceHeaders, current_trace_headers, inject_current_context, parent_from_kafka_headers,
    parent_from_trace_headers, trace_headers_of,
};

/// How long `shutdown` and `flush` wait for the exporter before giving up.
const EXPORT_DEADLINE: Duration = Duration::from_secs(10);

/// Why telemetry could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG is not a valid log filter")]
    Filter(#[source] tracing_subscriber::filter::ParseError),
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` is neither `grpc` nor `http/protobuf`.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, not {0:?}")]
    Protocol(String),
    /// Exporting needs a Tokio runtime for the batch span processor.
    #[error("OTLP export needs a running Tokio runtime; call telemetry::init inside one")]
    NoRuntime,
    /// The OTLP span exporter could not be built.
    #[error("cannot build the OTLP span exporter for OTEL_EXPORTER_OTLP_ENDPOINT")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber is already installed in this process.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
    /// Flushing or shutting down the tracer provider failed.
    #[error("trace export did not {step} cleanly")]
    Export {
        /// `flush` or `shut down`.
        step: &'static str,
        /// What the SDK reported.
        #[source]
        source: opentelemetry_sdk::error::OTelSdkError,
    },
    /// Flushing or shutting down took longer than the deadline or its task failed.
    #[error("trace export did not {step} within {EXPORT_DEADLINE:?}")]
    ExportTimeout {
        /// `flush` or `shut down`.
        step: &'static str,
    },
}

/// The built telemetry: its `tracing` dispatcher and the tracer provider behind it.
///
/// [`Telemetry::shutdown`] flushes and stops the exporter. Dropping it only starts a shutdown that
/// nobody waits for (best effort): call `shutdown().await` before the process exits.
#[derive(Debug)]
pub struct Telemetry {
    dispatch: tracing::Dispatch,
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl Telemetry {
    /// The subscriber, for `tracing::dispatcher::set_default` in tests (thread-local, no global state).
    pub fn dispatch(&self) -> &tracing::Dispatch {
        &self.dispatch
    }

    /// Whether finished spans leave the process (an OTLP endpoint or a test capture is configured).
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Makes this the process-wide subscriber (also for `log` records) and installs the W3C
    /// TraceContext propagator and the tracer provider globally. Once per process.
    pub fn install_global(&self) -> Result<(), TelemetryError> {
        self.dispatch.clone().try_init().map_err(TelemetryError::AlreadyInstalled)?;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        if let Some(provider) = &self.provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        Ok(())
    }

    /// Exports every finished span now.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        let Some(provider) = self.provider.clone() else { return Ok(()) };
        // The SDK blocks until its exporter task answers: block a pool thread, never a worker.
        blocking("flush", move || provider.force_flush()).await
    }

    /// Exports what is left and stops the exporter. Call once, before the process exits.
    pub async fn shutdown(mut self) -> Result<(), TelemetryError> {
        let Some(provider) = self.provider.take() else { return Ok(()) };
        blocking("shut down", move || provider.shutdown()).await
    }
}

async fn blocking(
    step: &'static str,
    work: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> Result<(), TelemetryError> {
    match tokio::time::timeout(EXPORT_DEADLINE, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(Ok(()))) => Ok(()),
        // A second shutdown is harmless.
        Ok(Ok(Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown))) => Ok(()),
        Ok(Ok(Err(source))) => Err(TelemetryError::Export { step, source }),
        Ok(Err(_)) | Err(_) => Err(TelemetryError::ExportTimeout { step }),
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Waiting here could block the very worker the exporter task needs: let a thread finish
            // the shutdown without us (best effort; `shutdown().await` is the one that waits).
            let _ =
                std::thread::Builder::new().name("otel-shutdown".into()).spawn(move || provider.shutdown());
        } else {
            let _ = provider.shutdown();
        }
    }
}

/// Builds and installs the global subscriber, logging to standard output. Call once, inside a
/// Tokio runtime (the OTLP batch processor runs on it).
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    init_with_sink(settings, std::io::stdout)
}

/// Builds and installs the global subscriber, logging into `sink`.
pub fn init_with_sink<W>(settings: &TelemetrySettings, sink: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let telemetry = build(settings, sink)?;
    telemetry.install_global()?;
    Ok(telemetry)
}

/// Builds the subscriber (logs into `sink`, spans to OTLP when an endpoint is set) without
/// installing anything: zero2prod's `get_subscriber(.., sink)`.
pub fn build<W>(settings: &TelemetrySettings, sink: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let provider = tracer::provider(settings, None)?;
    let dispatch = subscriber::dispatch(settings, sink, &provider)?;
    Ok(Telemetry {
        dispatch,
        provider: Some(provider),
        exporting: settings.otel_exporter_otlp_endpoint.is_some(),
    })
}

/// Like [`build`], for tests: logs into `logs`, and every finished span into `spans` at once (and
/// to OTLP too when an endpoint is set), so a test can search every line and every span.
pub fn build_capturing(
    settings: &TelemetrySettings,
    logs: LogBuffer,
    spans: &SpanCapture,
) -> Result<Telemetry, TelemetryError> {
    let provider = tracer::provider(settings, Some(spans))?;
    let dispatch = subscriber::dispatch(settings, logs, &provider)?;
    Ok(Telemetry { dispatch, provider: Some(provider), exporting: true })
}

#[cfg(test)]
mod capture_tests;
#[cfg(test)]
mod deploy_files_tests;
#[cfg(test)]
mod jaeger_tests;
#[cfg(test)]
mod propagation_tests;
