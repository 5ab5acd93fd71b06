//! The D1 HTTP client: OAuth token cache, Register Card, Get Card, and the classification of every
//! outcome into what the dispatcher should do (retry, confirm first, give up).
//!
//! It never logs or traces card data, a request body, or a token, and never decides on its own to
//! send a registration twice: the only automatic retry is after a 401, which D1 answers before
//! processing. Retrying, backoff and confirming ambiguous outcomes belong to the dispatcher.

mod auth;
mod client;
mod config;
mod deadline;
mod error;
mod transport;

#[cfg(test)]
mod tests;

pub use client::{D1Card, D1Client, RegisterCard};
pub use config::{ClientIdentity, D1ClientConfig, D1ConfigError};
pub use deadline::{Clock, Deadline, SystemClock};
pub use error::{D1Error, Operation, classify_status, parse_retry_after};
