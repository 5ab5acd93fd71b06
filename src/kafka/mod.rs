//! Kafka client configuration shared by every client of this process (the ingest consumer and its
//! watermark reader, the results relay, `publish`, `offsets`, the demo and the start-up check): TLS,
//! SASL (PLAIN, SCRAM, OAUTHBEARER via OIDC) and the pass-through properties file, the start-up
//! check that the brokers accept them, and the level at which the worker logs librdkafka's lines.
//!
//! Never here: consuming or producing. Secrets are read from files and never printed.

pub mod check;
pub mod logging;
pub mod properties;
pub mod security;

pub use check::{BrokerCheck, check_brokers};
pub use logging::Logged;
pub use security::KafkaSecurity;
