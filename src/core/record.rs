//! The card record kept per cardId, and the status of its registration call as the decision sees it.

use chrono::{DateTime, Utc};

use super::event::{EncryptedCard, InitialState};
use super::ids::{CardId, CardProductId, ConsumerId};

/// Where the card stands with D1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardState {
    /// An explicit registration call is queued or in flight.
    Pending,
    /// D1 has the card (explicitly or implicitly).
    Registered,
    /// The registration call failed for good; an operator can retry it.
    Failed,
}

impl CardState {
    /// Stable text form (`PENDING`, `REGISTERED`, `FAILED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Registered => "REGISTERED",
            Self::Failed => "FAILED",
        }
    }

    /// Parses the stable text form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "REGISTERED" => Self::Registered,
            "FAILED" => Self::Failed,
            _ => return None,
        })
    }
}

/// How D1 came to know the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistrationSource {
    /// Our registration PUT.
    Explicit,
    /// D1 registered it when the card was tokenized.
    ImplicitTokenization,
    /// D1 registered it when the card was ordered from central issuance.
    ImplicitOrder,
}

impl RegistrationSource {
    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "EXPLICIT",
            Self::ImplicitTokenization => "IMPLICIT_TOKENIZATION",
            Self::ImplicitOrder => "IMPLICIT_ORDER",
        }
    }

    /// Parses the stable text form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "EXPLICIT" => Self::Explicit,
            "IMPLICIT_TOKENIZATION" => Self::ImplicitTokenization,
            "IMPLICIT_ORDER" => Self::ImplicitOrder,
            _ => return None,
        })
    }
}

/// The status of the card's registration call, read by the store under the card's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallStatus {
    /// Waiting to be sent (possibly after a failed attempt); no worker holds it: cancellable.
    Queued,
    /// A worker holds a lease on it: the request may be on the wire.
    InFlight,
    /// D1 confirmed the registration.
    Done,
    /// Cancelled before it was sent (implicit registration came first, or an operator).
    Cancelled,
    /// Gave up after a terminal error or too many attempts; an operator can retry it.
    Parked,
}

/// The current record of one card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRecord {
    /// The card.
    pub card_id: CardId,
    /// The consumer the card was first seen with; events naming another are refused.
    pub consumer_id: ConsumerId,
    /// Where the card stands.
    pub state: CardState,
    /// How D1 learnt of it, once registered.
    pub source: Option<RegistrationSource>,
    /// From `CardCreated` (or an accepted order).
    pub card_product_id: Option<CardProductId>,
    /// The JWE received in `CardCreated` (ciphertext only).
    pub encrypted_card: Option<EncryptedCard>,
    /// `initialState` from `CardCreated`.
    pub initial_state: Option<InitialState>,
    /// An implicit registration seen while our call was in flight: settles the card if the call fails.
    pub implicit_while_in_flight: Option<RegistrationSource>,
    /// Why the card is FAILED.
    pub failure: Option<String>,
    /// When the card became REGISTERED.
    pub registered_at: Option<DateTime<Utc>>,
    /// Optimistic-concurrency version; the store bumps it on every write.
    pub version: i64,
}

impl CardRecord {
    /// A fresh record for a card first seen now.
    pub fn new(card_id: CardId, consumer_id: ConsumerId, state: CardState) -> Self {
        Self {
            card_id,
            consumer_id,
            state,
            source: None,
            card_product_id: None,
            encrypted_card: None,
            initial_state: None,
            implicit_while_in_flight: None,
            failure: None,
            registered_at: None,
            version: 0,
        }
    }
}
