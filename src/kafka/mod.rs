//! Kafka client configuration shared by every client of this process (the ingest consumer,
//! `publish`, the demo and the start-up check): TLS, SASL (PLAIN, SCRAM, OAUTHBEARER via OIDC) and
//! the pass-through properties file, and the start-up check that the brokers accept them.
//!
//! Never here: consuming or producing. Secrets are read from files and never printed.

pub mod check;
pub mod properties;
pub mod security;

pub use check::{BrokerCheck, check_brokers};
pub use security::KafkaSecurity;
