//! card-registrar: registers a bank's cards with Thales D1, exactly once.
//!
//! # Layout
//! - [`core`]: pure domain (identifiers, events, card-data rules, validation, the decision engine).
//!   No I/O; every rule is unit- and property-tested here.
//! - [`ingest`]: Avro decoding (and encoding) of the Kafka card events, schema set and registry.
//! - [`telemetry`]: metric names and descriptions.
pub mod core;
pub mod ingest;
pub mod telemetry;
