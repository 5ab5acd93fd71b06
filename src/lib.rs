//! card-registrar: registers a bank's cards with Thales D1, exactly once.
//!
//! # Layout
//! - [`avro`]: the Avro codec: kept schemas, framing, decode, encode, schema registry client.
//! - [`config`]: settings from the environment and flags, validated once.
//! - [`core`]: pure domain (identifiers, events, card-data rules, validation, the decision engine).
//!   No I/O; every rule is unit- and property-tested here.
//! - [`crypto`]: key files and JOSE: decrypt `encryptedCard`, encrypt for D1, sign the OAuth assertion.
//! - [`d1`]: the D1 HTTP client (OAuth token cache, Register Card, Get Card, outcome classification).
//! - [`dispatch`]: outbox -> D1: claim under a lease, rate limit, retry, reconcile, breaker.
//! - [`ingest`]: Kafka -> decode (via [`avro`]) -> validate -> decide -> one PostgreSQL transaction per batch.
//! - [`issuer_api`]: the API D1 calls on the bank's side (OAuth token, Get Consumer Info, Notify Card
//!   Operations), behind mutual TLS and our bearer tokens, on its own port.
//! - [`kafka`]: Kafka client security (TLS, SASL, properties file) and the start-up broker check.
//! - [`memory`]: the heap's settings (glibc's mmap threshold fixed, so large blocks go back at once).
//! - [`results`]: registration results -> Kafka: the relay of the results outbox, its upkeep.
//! - [`shutdown`]: signals -> cancellation, soft stop then hard stop.
//! - [`store`]: PostgreSQL (sqlx): records, history, outbox, dead letters, consumed offsets.
//! - [`telemetry`]: logs (JSON or text), traces (OpenTelemetry, W3C propagation), metric names and the
//!   Prometheus recorder; test captures of every log line and span.
//! - [`workload`]: synthetic card event streams with expected outcomes (demo, tests, benchmarks).
//! - [`admin`]: the admin HTTP server: `/healthz`, `/readyz` (from [`admin::Readiness`]), `/metrics`.
//! - [`cli`]: the subcommands of the `card-registrar` binary.
#![warn(missing_docs)]

pub mod admin;
pub mod avro;
pub mod cli;
pub mod config;
pub mod core;
pub mod crypto;
pub mod d1;
pub mod dispatch;
pub mod ingest;
pub mod issuer_api;
pub mod kafka;
pub mod memory;
pub mod results;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod workload;
