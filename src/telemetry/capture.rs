//! In-memory sinks for tests: every log line ([`LogBuffer`]) and every finished span with its
//! attributes and events ([`SpanCapture`]), so a test can search all of them (e.g. for a PAN).
//!
//! Both grow without bound: for tests only, never for a running service.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::fmt::MakeWriter;

/// A `MakeWriter` that keeps every byte logged; also echoes to stdout when `TEST_LOG` is set.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    bytes: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl LogBuffer {
    /// An empty buffer, echoing to stdout only when the `TEST_LOG` variable is set.
    pub fn new() -> Self {
        Self { bytes: Arc::default(), echo: std::env::var_os("TEST_LOG").is_some() }
    }

    /// Everything logged so far, as text (invalid UTF-8 replaced).
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// Every complete line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }

    /// Forgets what was logged.
    pub fn clear(&self) {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// One write handle of a [`LogBuffer`]; the fmt layer writes each line through one.
#[derive(Debug)]
pub struct LogBufferWriter {
    buffer: LogBuffer,
}

impl Write for LogBufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.bytes.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        if self.buffer.echo {
            std::io::stdout().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBufferWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogBufferWriter { buffer: self.clone() }
    }
}

/// A span exporter that keeps every finished span in memory (attached synchronously, so a span is
/// visible as soon as it closes).
#[derive(Debug, Clone, Default)]
pub struct SpanCapture {
    spans: Arc<Mutex<Vec<SpanData>>>,
}

/// A finished span in plain form: name, ids, attributes, events and links.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedSpan {
    /// Span name.
    pub name: String,
    /// W3C trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, 16 hex digits (all zeros for a root span).
    pub parent_span_id: String,
    /// Attributes as (key, value rendered as text).
    pub attributes: Vec<(String, String)>,
    /// Events in order.
    pub events: Vec<CapturedEvent>,
    /// Span ids of the spans this one links to (e.g. a message span to its batch).
    pub links: Vec<String>,
}

/// An event recorded in a span (a `tracing` event inside it).
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedEvent {
    /// Event name (the `tracing` message).
    pub name: String,
    /// Attributes as (key, value rendered as text).
    pub attributes: Vec<(String, String)>,
}

impl SpanCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every span finished so far, oldest first.
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).iter().map(CapturedSpan::from).collect()
    }

    /// Forgets the spans captured so far.
    pub fn clear(&self) {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

impl SpanExporter for SpanCapture {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).extend(batch);
        Ok(())
    }
}

impl CapturedSpan {
    /// Whether `needle` occurs anywhere in the span: name, attribute keys or values, event names,
    /// event attribute keys or values.
    pub fn contains(&self, needle: &str) -> bool {
        let in_pairs =
            |pairs: &[(String, String)]| pairs.iter().any(|(k, v)| k.contains(needle) || v.contains(needle));
        self.name.contains(needle)
            || in_pairs(&self.attributes)
            || self.events.iter().any(|e| e.name.contains(needle) || in_pairs(&e.attributes))
    }

    /// The value of attribute `key`, if present.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
}

impl From<&SpanData> for CapturedSpan {
    fn from(span: &SpanData) -> Self {
        Self {
            name: span.name.to_string(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: span.parent_span_id.to_string(),
            attributes: pairs(&span.attributes),
            events: span
                .events
                .iter()
                .map(|e| CapturedEvent { name: e.name.to_string(), attributes: pairs(&e.attributes) })
                .collect(),
            links: span.links.iter().map(|l| l.span_context.span_id().to_string()).collect(),
        }
    }
}
