//! Ingest: Kafka message values -> core events. Avro decoding with framing detected per message
//! (Confluent wire format through a schema registry, or single-object encoding against the schema
//! versions kept in `schemas/`), and the inverse encoding for producers, tests and benchmarks.
//!
//! A message that cannot become a valid event yields a typed error with a stable dead-letter reason
//! and never a panic; only an unreachable schema registry is transient (retry, never skip). Errors
//! and logs name fields, never their values.

pub mod decode;
pub mod encode;
pub mod registry;
pub mod schemas;

#[cfg(test)]
mod decode_tests;
