//! JSON log lines: one object per line with the fields of every enclosing span flattened in.
//!
//! So an SRE can filter on `card_id`, `event_id`, `topic`, `partition`, `offset`, `outbox_id` or
//! `correlation_id` whatever event they look at, and jump to the trace by `trace_id`.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys every line has; span or event fields of the same name are kept under `field.<name>`.
const RESERVED: [&str; 7] = ["timestamp", "level", "target", "span", "trace_id", "span_id", "message"];

/// Formats events as flat JSON; needs the layer's field formatter to be `JsonFields`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = BTreeMap::new();
        let mut span_name = None;
        let mut ids = None;
        if let Some(scope) = ctx.event_scope() {
            // Root first, so an inner span's field wins over an outer one of the same name.
            for span in scope.from_root() {
                let extensions = span.extensions();
                let object = extensions
                    .get::<FormattedFields<N>>()
                    .and_then(|formatted| serde_json::from_str::<Value>(&formatted.fields).ok());
                if let Some(Value::Object(object)) = object {
                    fields.extend(object);
                }
                let otel = extensions.get::<OtelData>().and_then(|o| o.trace_id().zip(o.span_id()));
                if let Some((trace_id, span_id)) = otel.filter(|(t, _)| *t != opentelemetry::TraceId::INVALID)
                {
                    ids = Some((trace_id, span_id));
                }
                span_name = Some(span.name());
            }
        }
        let mut visitor = EventFields { fields: &mut fields, message: None, log_target: None };
        event.record(&mut visitor);
        let (message, log_target) = (visitor.message, visitor.log_target);

        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), now().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), log_target.unwrap_or_else(|| meta.target().to_owned()).into());
        if let Some(message) = message {
            line.insert("message".into(), message.into());
        }
        if let Some(name) = span_name {
            line.insert("span".into(), name.into());
        }
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), trace_id.to_string().into());
            line.insert("span_id".into(), span_id.to_string().into());
        }
        for (key, value) in fields {
            let key = if RESERVED.contains(&key.as_str()) { format!("field.{key}") } else { key };
            line.insert(key, value);
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Collects an event's fields as JSON values; `message` and a bridged `log` record's target apart.
struct EventFields<'a> {
    fields: &'a mut BTreeMap<String, Value>,
    message: Option<String>,
    log_target: Option<String>,
}

impl EventFields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned)),
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            // The rest of a bridged `log` record's metadata (file, line, module) is noise here.
            name if name.starts_with("log.") => {}
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for EventFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
