//! The pure core: identifiers, events, card data rules, validation and the decision engine.
//!
//! Nothing here performs I/O, reads the clock, or imports tokio, sqlx, rdkafka or reqwest: time is
//! passed in, and decisions are returned as values that the adapters carry out.

pub mod dead_letter;
pub mod decide;
pub mod event;
pub mod ids;
pub mod pan;
pub mod profile;
pub mod record;
pub mod result;
pub mod validate;

#[cfg(test)]
mod decide_tests;
