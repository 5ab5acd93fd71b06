//! d1-simulator: a stand-in for Thales D1, written from `shared/design/d1-api.md` and nothing else.
//!
//! It serves the OAuth token endpoint (ES256 JWT-bearer assertions), Register Card (`PUT`, with a
//! compact ECDH-ES + A256GCM JWE carrying the PAN) and Get Card (`GET`), plus an unauthenticated
//! admin surface under `/_sim` for stats, fault injection, seeding and reset. It must never log,
//! store, count or echo a PAN: it keeps the last four digits and the expiry, nothing more.
//!
//! # Layout
//! - [`config`]: [`SimConfig`], what a simulator instance believes (issuer, keys, answers).
//! - [`faults`]: [`Faults`], the fault-injection settings (also the `PUT /_sim/faults` body).
//! - [`stats`]: [`Stats`], the counters tests assert on (duplicate PUTs are the exactly-once metric).
//! - [`callbacks`]: D1 calling the issuer: Get Consumer Info for new end users, REGISTER
//!   notifications with retries and deliberate duplicates ([`IssuerApiClient`]).
//! - [`card`]: the card rules (identifier patterns, PAN, Luhn, expiry, "cardId is not the PAN").
//! - [`keys`]: key and certificate generation (`d1-simulator keys`).
//! - [`server`]: [`Simulator::start`] and the [`RunningSimulator`] handle.
//! - [`telemetry`]: the binary's logs and its optional OTLP span export (`service.name`
//!   `d1-simulator`); every request runs in a server span under the caller's `traceparent`.
//! - private: `jwk` (key files), `jwt` (assertion checks), `jwe` (decryption), `injector` (fault
//!   decisions), `state` (shared in-memory state), `api_error`, `routes` (HTTP handlers and the
//!   request spans), `tls`.

#![warn(missing_docs)]

pub mod callbacks;
pub mod card;
pub mod config;
pub mod faults;
pub mod keys;
pub mod server;
pub mod stats;
pub mod telemetry;

mod api_error;
mod injector;
mod jwe;
mod jwk;
mod jwt;
mod routes;
mod state;
mod tls;

pub use callbacks::{EndUser, IssuerApiClient, IssuerCallStats};
pub use card::{CardRuleError, CardState, Registration, SeedCard, StoredCard};
pub use config::{ConfigError, DuplicateAnswer, SimConfig, TlsConfig};
pub use faults::{Faults, FaultsError, Latency};
pub use keys::{KeyFiles, KeyOptions, KeysError, TlsFiles};
pub use server::{RunningSimulator, Simulator, StartError};
pub use stats::{FaultCounts, Stats};
pub use tls::TlsError;
