//! The Avro codec: the schemas kept in `schemas/`, message framing (Confluent wire format and Avro
//! single-object encoding), decoding into core events, encoding (for `publish`, the demo, tests and
//! benchmarks) and the Confluent-compatible schema registry client.
//!
//! Used by ingest, `publish` and the workload generator. Everything a message value holds is
//! untrusted: decoding never panics, never allocates beyond a fixed bound, and never puts a field's
//! value in an error. No Kafka and no database here.

pub mod canonical;
pub mod decode;
pub mod encode;
pub mod layout;
pub mod registry;
pub mod schemas;

#[cfg(test)]
mod decode_tests;
