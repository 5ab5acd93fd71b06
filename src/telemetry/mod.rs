//! Telemetry: metric names (and, with the observability work, logs and traces).

pub mod metrics;
