//! The `tracing` subscriber: a log layer (JSON or text) and an OpenTelemetry layer, each filtered.
//!
//! The log layer follows `RUST_LOG` exactly, except for the per-message ingest spans, which only
//! traces get (a log line inside one names its batch's span and trace). The trace layer sees at
//! least `info` whatever `RUST_LOG` says, so quieter logs never cut a trace (nor drop the
//! `traceparent` we store in the outbox), and never sees the exporter's own crates (h2, hyper,
//! tonic, tower, opentelemetry): their spans would be exported by the export they describe.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::registry::Registry;

use super::TelemetryError;
use super::json::FlatJson;
use crate::config::{LogFormat, TelemetrySettings};

/// Crates whose spans and events never go into traces (prefix match on the target).
const EXPORTER_CRATES: [&str; 6] = ["h2", "hyper", "tonic", "tower::", "opentelemetry", "reqwest"];

/// Where the per-message ingest spans are created (and nothing is logged). They go into traces only:
/// the log layer would format every field of every span to JSON for log lines that are never written
/// inside them, which costs more than the spans themselves at tens of thousands of messages a second.
const TRACE_ONLY_SPANS: &str = "card_registrar::ingest::spans";

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Builds the dispatcher for these settings: logs into `sink`, spans into `provider`.
pub(super) fn dispatch<W>(
    settings: &TelemetrySettings,
    sink: W,
    provider: &SdkTracerProvider,
) -> Result<Dispatch, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // The SDK's own chatter ("global tracer provider is set") is not for operators, unless asked for.
    let quiet_sdk = if settings.rust_log.contains("opentelemetry") {
        ""
    } else {
        ",opentelemetry=warn,opentelemetry_sdk=warn"
    };
    // A directive, not a filter function: its callsites are decided once (never logged), so the
    // per-message spans cost the log layer nothing and every other callsite keeps its interest.
    let spec = format!("{}{quiet_sdk},{TRACE_ONLY_SPANS}=off", settings.rust_log);
    let log_filter = EnvFilter::try_new(&spec).map_err(TelemetryError::Filter)?;
    let log_layer: BoxedLayer = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(sink)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(sink)
            .with_filter(log_filter)
            .boxed(),
    };

    let at_least_info =
        EnvFilter::try_new(&settings.rust_log).map_err(TelemetryError::Filter)?.or(LevelFilter::INFO);
    let not_exporter = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(EXPORTER_CRATES.map(|c| (c, LevelFilter::OFF)));
    let trace_layer: BoxedLayer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("card-registrar"))
        .with_filter(at_least_info.and(not_exporter))
        .boxed();

    Ok(Dispatch::new(Registry::default().with(vec![log_layer, trace_layer])))
}
