//! Registration results -> Kafka (`card-registration-results`): the relay that publishes the
//! results outbox (`store::results`), and its upkeep (backlog gauges, `/readyz` detail, retention).
//!
//! Results are decided by the pure core (`core::result`) and written by ingest, dispatch and the
//! operator actions in the same transaction as the change that causes them; this module only
//! carries them out. Never here: deciding what a result is, or reading card data.

pub mod floor;
pub mod relay;
pub mod upkeep;
