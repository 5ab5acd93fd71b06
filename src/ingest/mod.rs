//! Ingest: Kafka messages -> decoded, validated events -> decisions applied in PostgreSQL.
//!
//! Decoding is the Avro codec's (`crate::avro`). A message that cannot become a valid event
//! becomes a dead letter in the same transaction as the partition's offset: never a panic, never a blocked partition, never a lost message. Only an unreachable
//! schema registry or database is transient (retry, never skip). Errors and logs name fields,
//! never their values.

pub mod message;

pub mod apply;
pub mod combine;
pub mod consumer;
pub mod partition;
pub mod plan;
pub mod prepare;
pub mod profile;
pub mod replay;
mod spans;
