//! The per-message spans of ingest: `ingest.message` (one per Kafka message, a child of the
//! producer's W3C trace context from the message headers, linked to the transaction applying it),
//! `card.decide` (the decision and its effect) and `ingest.dead_letter` (with the reason code).
//!
//! Ingest runs at tens of thousands of messages per second, so a message costs span creation and
//! a few recorded fields: the `eventId` is the only value formatted. Never a field from the
//! message key, value or headers other than the trace context: a key or a malformed value may
//! be a clear PAN, and only a `cardId` that passed validation (or was shown safe) is recorded.
//!
//! These spans go into traces only, not into log lines (see `telemetry::subscriber`): formatting
//! their fields for the log layer cost more than the spans. Measured in a release build without an
//! exporter: about 4 µs per message with both spans, the parent and the stored trace context
//! (8 µs when the log layer saw them too).

use opentelemetry::trace::TraceContextExt as _;
use tracing::field::Empty;
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::message::Prepared;
use crate::core::dead_letter::DeadLetterReason;
use crate::telemetry::propagation::parent_from_trace_headers;

/// What became of a message, recorded as `outcome` on its `ingest.message` span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MessageOutcome {
    /// Decided and applied.
    Applied,
    /// Its eventId was already in the history.
    Duplicate,
    /// Stored as a dead letter.
    DeadLetter,
}

impl MessageOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// The `ingest.message` span of `m`, read from `partition` of `topic`. Its parent is the
/// message's `traceparent` when it has a valid one (with a link to the enclosing
/// `ingest.transaction`), else the current span (the transaction).
pub(super) fn message(topic: &str, partition: i32, m: &Prepared) -> Span {
    let (card_id, event_id) = match &m.outcome {
        Ok(event) => {
            let meta = event.event().meta();
            (Some(meta.card_id.as_str()), Some(meta.event_id.as_uuid()))
        }
        // Set only when the cardId cannot be a PAN (see `prepare::validate_one`).
        Err(rejection) => (rejection.card_id.as_deref(), rejection.event_id),
    };
    let span = info_span!(
        "ingest.message",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = topic,
        messaging.kafka.partition = partition,
        messaging.kafka.offset = m.offset,
        card_id,
        event_id = event_id.map(tracing::field::display),
        outcome = Empty,
    );
    let parent =
        m.traceparent.as_deref().and_then(|tp| parent_from_trace_headers(tp, m.tracestate.as_deref()));
    if let Some(parent) = parent {
        // The transaction (one for many producers' traces) stays reachable through a link.
        let batch = Span::current().context().span().span_context().clone();
        if span.set_parent(parent).is_ok() {
            span.add_link(batch);
        }
    }
    span
}

/// Records what became of the message on its span.
pub(super) fn record_outcome(span: &Span, outcome: MessageOutcome) {
    span.record("outcome", outcome.as_str());
}

/// The `card.decide` span, a child of the current (message) span; `effect` is recorded later.
pub(super) fn decide() -> Span {
    info_span!("card.decide", effect = Empty)
}

/// The `ingest.dead_letter` span (sealing and storing the message), a child of the current span.
pub(super) fn dead_letter(reason: DeadLetterReason) -> Span {
    info_span!("ingest.dead_letter", reason = reason.code())
}
