//! Every metric name, in one place, with its description. Prefix `card_registrar_`.
//!
//! Labels never hold a cardId, consumerId or PAN: only bounded sets (topic, partition, status,
//! reason code, operation).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter, labels `topic`, `outcome` (`applied`, `duplicate`, `dead_letter`).
pub const EVENTS_CONSUMED: &str = "card_registrar_events_consumed_total";
/// Counter, label `effect` (the decision's history effect, e.g. `ENQUEUED`).
pub const DECISIONS: &str = "card_registrar_decisions_total";
/// Counter, label `reason` (dead-letter reason code).
pub const DEAD_LETTERS: &str = "card_registrar_dead_letters_total";
/// Histogram of messages per partition batch.
pub const INGEST_BATCH_SIZE: &str = "card_registrar_ingest_batch_size";
/// Histogram of a partition batch's time from its start to its commit, seconds.
pub const INGEST_BATCH_DURATION: &str = "card_registrar_ingest_batch_duration_seconds";
/// Gauge, labels `topic`, `partition`: librdkafka's consumer lag (high watermark minus the committed
/// offset), refreshed with its statistics every 5 s.
pub const CONSUMER_LAG: &str = "card_registrar_consumer_lag";
/// Gauge, label `status` (`PENDING`, `IN_FLIGHT`, `PARKED`): outbox rows per status, every 10 s.
pub const OUTBOX_ROWS: &str = "card_registrar_outbox_rows";
/// Gauge: age in seconds of the oldest outbox row that is due and not sent.
pub const OUTBOX_OLDEST_DUE_AGE: &str = "card_registrar_outbox_oldest_due_age_seconds";
/// Counter, labels `operation` (`register`, `get_card`, `token`), `status` (HTTP status or `timeout`, `connect`).
pub const D1_REQUESTS: &str = "card_registrar_d1_requests_total";
/// Histogram, label `operation`: D1 request latency, seconds.
pub const D1_REQUEST_DURATION: &str = "card_registrar_d1_request_duration_seconds";
/// Counter, label `reason` (`retryable`, `ambiguous`, `rate_limited`): attempts rescheduled.
pub const DISPATCH_RETRIES: &str = "card_registrar_dispatch_retries_total";
/// Counter, label `outcome` (`done`, `parked`, `cancelled`, `retry`, `released`, `lease_lost`):
/// settled dispatch attempts.
pub const DISPATCH_OUTCOMES: &str = "card_registrar_dispatch_outcomes_total";
/// Gauge: circuit breaker state, 0 closed, 1 open, 2 half-open.
pub const CIRCUIT_BREAKER_STATE: &str = "card_registrar_circuit_breaker_state";
/// Counter, label `to` (`open`, `half_open`, `closed`): breaker transitions.
pub const CIRCUIT_BREAKER_TRANSITIONS: &str = "card_registrar_circuit_breaker_transitions_total";
/// Counter, label `outcome` (`ok`, `error`): OAuth token fetches.
pub const D1_TOKEN_REFRESHES: &str = "card_registrar_d1_token_refreshes_total";
/// Counter, labels `endpoint` (`token`, `consumer_info`, `card_notifications`), `status` (HTTP
/// status): requests to the issuer API (D1 calling the bank).
pub const ISSUER_API_REQUESTS: &str = "card_registrar_issuer_api_requests_total";
/// Histogram, label `endpoint`: issuer API request duration, seconds.
pub const ISSUER_API_REQUEST_DURATION: &str = "card_registrar_issuer_api_request_duration_seconds";
/// Counter, labels `operation` (a known D1 operation or `OTHER`), `outcome` (`stored`,
/// `duplicate`): card operation updates D1 notified.
pub const ISSUER_API_NOTIFICATIONS: &str = "card_registrar_issuer_api_notifications_total";
/// Gauge: 1 while `/readyz` answers 200, else 0 (set by `admin::Readiness`).
pub const READY: &str = "card_registrar_ready";
/// Counter, labels `topic`, `partition`: messages the broker deleted before ingest read them
/// (stored offset below the low watermark; each gap is also a row in `offset_gaps`).
pub const OFFSETS_LOST: &str = "card_registrar_offsets_lost_total";
/// Gauge: partitions held back because their stored offset is above the high watermark (topic
/// recreated?); they wait for `card-registrar offsets reset`.
pub const PARTITIONS_HELD: &str = "card_registrar_partitions_held";
/// Gauge: registration results written but not yet acknowledged by the broker, every 10 s.
pub const RESULTS_PENDING: &str = "card_registrar_results_pending";
/// Gauge: age in seconds of the oldest unpublished registration result (the relay's lag).
pub const RESULTS_OLDEST_PENDING_AGE: &str = "card_registrar_results_oldest_pending_age_seconds";
/// Counter, label `outcome` (`REGISTERED_EXPLICIT`, ..., `CANCELLED`): registration results the
/// broker acknowledged (a re-publication after a relay crash counts again).
pub const RESULTS_PUBLISHED: &str = "card_registrar_results_published_total";

/// Counter, label `source` = `fleet` | `fallback`: D1 requests this process was allowed to start,
/// by where the permit came from (the fleet's bucket in PostgreSQL, or the local share while the
/// bucket is unreachable). Its rate is this replica's current share of `D1_MAX_RPS`.
pub const D1_RATE_PERMITS: &str = "card_registrar_d1_rate_permits_total";
/// Gauge: 1 while this process cannot reach the fleet's D1 rate bucket and uses its local share
/// (`D1_MAX_RPS / D1_MAX_REPLICAS`), else 0.
pub const D1_RATE_FALLBACK: &str = "card_registrar_d1_rate_fallback";

/// Every metric name above (dashboards and alerts may use only these; a test checks both).
pub const ALL: [&str; 26] = [
    EVENTS_CONSUMED,
    DECISIONS,
    DEAD_LETTERS,
    INGEST_BATCH_SIZE,
    INGEST_BATCH_DURATION,
    CONSUMER_LAG,
    OUTBOX_ROWS,
    OUTBOX_OLDEST_DUE_AGE,
    D1_REQUESTS,
    D1_REQUEST_DURATION,
    DISPATCH_RETRIES,
    DISPATCH_OUTCOMES,
    CIRCUIT_BREAKER_STATE,
    CIRCUIT_BREAKER_TRANSITIONS,
    D1_TOKEN_REFRESHES,
    READY,
    OFFSETS_LOST,
    PARTITIONS_HELD,
    RESULTS_PENDING,
    RESULTS_OLDEST_PENDING_AGE,
    RESULTS_PUBLISHED,
    ISSUER_API_REQUESTS,
    ISSUER_API_REQUEST_DURATION,
    ISSUER_API_NOTIFICATIONS,
    D1_RATE_PERMITS,
    D1_RATE_FALLBACK,
];

/// The histograms among [`ALL`]: Prometheus exposes them as `_bucket`, `_sum` and `_count` series.
pub const HISTOGRAMS: [&str; 4] =
    [INGEST_BATCH_SIZE, INGEST_BATCH_DURATION, D1_REQUEST_DURATION, ISSUER_API_REQUEST_DURATION];

/// Registers descriptions and units with the installed recorder.
pub fn describe() {
    describe_counter!(EVENTS_CONSUMED, "Kafka messages consumed, by topic and outcome");
    describe_counter!(DECISIONS, "Decisions applied, by history effect");
    describe_counter!(DEAD_LETTERS, "Messages stored as dead letters, by reason code");
    describe_histogram!(INGEST_BATCH_SIZE, Unit::Count, "Messages per partition batch");
    describe_histogram!(
        INGEST_BATCH_DURATION,
        Unit::Seconds,
        "Time of one partition batch from its start to its commit"
    );
    describe_gauge!(CONSUMER_LAG, Unit::Count, "High watermark minus stored next offset, per partition");
    describe_gauge!(OUTBOX_ROWS, Unit::Count, "Outbox rows by status");
    describe_gauge!(OUTBOX_OLDEST_DUE_AGE, Unit::Seconds, "Age of the oldest due outbox row");
    describe_counter!(D1_REQUESTS, "Requests to D1, by operation and status");
    describe_histogram!(D1_REQUEST_DURATION, Unit::Seconds, "D1 request latency, by operation");
    describe_counter!(DISPATCH_RETRIES, "Dispatch attempts rescheduled, by reason");
    describe_counter!(DISPATCH_OUTCOMES, "Dispatch attempts finished, by outcome");
    describe_gauge!(CIRCUIT_BREAKER_STATE, "Circuit breaker toward D1: 0 closed, 1 open, 2 half-open");
    describe_counter!(CIRCUIT_BREAKER_TRANSITIONS, "Circuit breaker transitions, by target state");
    describe_counter!(D1_TOKEN_REFRESHES, "OAuth access-token fetches, by outcome");
    describe_gauge!(READY, "1 while the process is ready (database, Kafka, not shutting down), else 0");
    describe_counter!(OFFSETS_LOST, "Messages deleted by the broker before ingest read them, per partition");
    describe_counter!(
        ISSUER_API_REQUESTS,
        "Requests to the issuer API (D1 calling us), by endpoint and status"
    );
    describe_histogram!(
        ISSUER_API_REQUEST_DURATION,
        Unit::Seconds,
        "Issuer API request duration, by endpoint"
    );
    describe_counter!(
        ISSUER_API_NOTIFICATIONS,
        "Card operation updates notified by D1, by operation and outcome"
    );
    describe_gauge!(PARTITIONS_HELD, "Partitions held back: stored offset above the high watermark");
    describe_gauge!(RESULTS_PENDING, Unit::Count, "Registration results not yet published");
    describe_gauge!(
        RESULTS_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished registration result"
    );
    describe_counter!(RESULTS_PUBLISHED, "Registration results acknowledged by the broker, by outcome");
    describe_counter!(
        D1_RATE_PERMITS,
        "D1 requests allowed to start, by permit source (fleet bucket or local share)"
    );
    describe_gauge!(
        D1_RATE_FALLBACK,
        "1 while the fleet's D1 rate bucket is unreachable and the local share is used"
    );
}
