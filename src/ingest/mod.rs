//! Ingest: Kafka messages -> decoded, validated events -> decisions applied in PostgreSQL.
//!
//! Never blocks a partition on a bad message and never loses one: what cannot be applied becomes
//! a dead letter in the same transaction as the partition's offset.

pub mod apply;
pub mod envelope;
