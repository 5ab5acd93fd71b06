//! card-registrar: registers a bank's cards with Thales D1, exactly once.
//!
//! # Layout
//! - [`config`]: settings from the environment and flags, validated once.
//! - [`core`]: pure domain (identifiers, events, card-data rules, validation, the decision engine).
//!   No I/O; every rule is unit- and property-tested here.
//! - [`ingest`]: Kafka -> Avro decode -> validate -> decide -> one PostgreSQL transaction per batch.
//! - [`store`]: PostgreSQL (sqlx): records, history, outbox, dead letters, consumed offsets.
//! - [`telemetry`]: logs (JSON or text), traces (OpenTelemetry, W3C propagation), metric names and the
//!   Prometheus recorder; test captures of every log line and span.
//! - [`admin`]: the admin HTTP server: `/healthz`, `/readyz` (from [`admin::Readiness`]), `/metrics`.
pub mod admin;
pub mod config;
pub mod core;
pub mod ingest;
pub mod store;
pub mod telemetry;
