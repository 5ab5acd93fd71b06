//! card-registrar: registers a bank's cards with Thales D1, exactly once.
//!
//! # Layout
//! - [`core`]: pure domain (identifiers, events, card-data rules, validation, the decision engine).
//!   No I/O; every rule is unit- and property-tested here.
//! - [`crypto`]: key files and JOSE: decrypt `encryptedCard`, encrypt for D1, sign the OAuth assertion.
//! - [`d1`]: the D1 HTTP client (OAuth token cache, Register Card, Get Card, outcome classification).
//! - [`telemetry`]: metric names and descriptions.
pub mod core;
pub mod crypto;
pub mod d1;
pub mod telemetry;
