//! The OpenTelemetry tracer provider: OTLP export when an endpoint is set, a test capture when asked.
//!
//! Without either, the provider has no span processor: spans still get W3C ids and parents (so
//! context propagates through this process), they are just never exported.

use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor};

use super::{SpanCapture, TelemetryError};
use crate::config::TelemetrySettings;

/// Events and attributes a captured span may hold: a test must see all of them, not the first 128.
const CAPTURE_LIMIT: u32 = 1_000_000;

/// Builds the provider for these settings, adding `capture` as a synchronous exporter when given.
pub(super) fn provider(
    settings: &TelemetrySettings,
    capture: Option<&SpanCapture>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder().with_service_name(settings.otel_service_name.clone()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otel_exporter_otlp_endpoint {
        // The batch processor spawns its task with tokio::spawn, which panics outside a runtime.
        tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let exporter = otlp_exporter(endpoint, &settings.otel_exporter_otlp_protocol)?;
        builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build());
    }
    if let Some(capture) = capture {
        builder = builder
            .with_max_events_per_span(CAPTURE_LIMIT)
            .with_max_attributes_per_span(CAPTURE_LIMIT)
            .with_max_attributes_per_event(CAPTURE_LIMIT)
            .with_span_processor(SimpleSpanProcessor::new(capture.clone()));
    }
    Ok(builder.build())
}

fn otlp_exporter(
    endpoint: &url::Url,
    protocol: &str,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let built = match protocol {
        "grpc" => builder.with_tonic().with_endpoint(endpoint.as_str()).build(),
        "http/protobuf" => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_traces_url(endpoint))
            .build(),
        other => return Err(TelemetryError::Protocol(other.to_owned())),
    };
    built.map_err(TelemetryError::Exporter)
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is the collector's base URL; over HTTP, traces go to
/// `<base>/v1/traces` (OpenTelemetry exporter specification). The exporter takes a full URL.
fn http_traces_url(endpoint: &url::Url) -> String {
    format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_traces_url_appends_the_signal_path_to_the_base_url() {
        let with_slash = url::Url::parse("http://127.0.0.1:4318/").expect("url");
        let with_path = url::Url::parse("http://collector:4318/otlp").expect("url");
        assert_eq!(http_traces_url(&with_slash), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(http_traces_url(&with_path), "http://collector:4318/otlp/v1/traces");
    }
}
