//! card-registrar: registers a bank's cards with Thales D1, exactly once.
//!
//! # Layout
//! - [`config`]: settings from the environment and flags, validated once.
//! - [`core`]: pure domain (identifiers, events, card-data rules, validation, the decision engine).
//!   No I/O; every rule is unit- and property-tested here.
//! - [`ingest`]: Kafka -> Avro decode -> validate -> decide -> one PostgreSQL transaction per batch.
//! - [`store`]: PostgreSQL (sqlx): records, history, outbox, dead letters, consumed offsets.
//! - [`telemetry`]: metric names and descriptions.
pub mod config;
pub mod core;
pub mod ingest;
pub mod store;
pub mod telemetry;
