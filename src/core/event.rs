//! Card lifecycle events in domain form, as decoded from Avro and before card-data validation.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{CardId, CardProductId, ConsumerId, EventId};

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// `eventId`: unique per event; a re-published event keeps it.
    pub event_id: EventId,
    /// `occurredAt`: when the producer saw it happen.
    pub occurred_at: DateTime<Utc>,
    /// `cardId`: the technical card id, also the message key.
    pub card_id: CardId,
    /// `consumerId`: the card holder as D1 knows them.
    pub consumer_id: ConsumerId,
}

/// `initialState` of a created card; D1's `state` on registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitialState {
    /// The default.
    Active,
    /// Created but not yet usable.
    Inactive,
}

impl InitialState {
    /// The contract's symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        }
    }
}

/// `outcome` of a tokenization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizationOutcome {
    /// D1 tokenized the card, which registers it implicitly.
    Approved,
    /// No token; no registration effect.
    Declined,
}

/// `outcome` of a central-issuance order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    /// The order was accepted, which registers the card implicitly.
    Accepted,
    /// No registration effect.
    Rejected,
}

/// `encryptedCard`: a compact JWE as received (ciphertext). `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptedCard(String);

impl EncryptedCard {
    /// Wraps the compact serialization.
    pub fn new(compact: String) -> Self {
        Self(compact)
    }

    /// The compact serialization.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EncryptedCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptedCard({} bytes)", self.0.len())
    }
}

/// The content key of an [`EncryptedCard`], sealed to our own storage key by the crypto layer at
/// ingest, so dispatch can open the stored JWE without a key agreement. Opaque here; `Debug` shows
/// only its length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedCardKey(String);

impl SealedCardKey {
    /// Wraps the text form.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedCardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedCardKey({} bytes)", self.0.len())
    }
}

/// `CardCreated` (topic `card-created`), published by core banking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardCreated {
    /// Common fields.
    pub meta: EventMeta,
    /// `cardProductId`.
    pub card_product_id: CardProductId,
    /// `encryptedCard`: JWE for our card-data key holding `{"pan","exp"}`.
    pub encrypted_card: EncryptedCard,
    /// `initialState`.
    pub initial_state: InitialState,
}

/// `CardTokenized` (topic `card-tokenized`), published by tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardTokenized {
    /// Common fields.
    pub meta: EventMeta,
    /// `outcome`.
    pub outcome: TokenizationOutcome,
    /// `digitalCardId`, when the token exists.
    pub digital_card_id: Option<String>,
    /// `tokenRequestorId`, e.g. a wallet.
    pub token_requestor_id: Option<String>,
}

/// `CardOrdered` (topic `card-ordered`), published by central issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardOrdered {
    /// Common fields.
    pub meta: EventMeta,
    /// `outcome`.
    pub outcome: OrderOutcome,
    /// `cardProductId`, when known.
    pub card_product_id: Option<CardProductId>,
    /// `orderId`, when known.
    pub order_id: Option<String>,
}

/// One card lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardEvent {
    /// Core banking created the card.
    Created(CardCreated),
    /// Tokenization finished (approved or declined).
    Tokenized(CardTokenized),
    /// Central issuance took (or refused) an order.
    Ordered(CardOrdered),
}

/// The kind of an event, as stored in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `CardCreated`.
    Created,
    /// `CardTokenized`.
    Tokenized,
    /// `CardOrdered`.
    Ordered,
    /// `ConsumerProfile` (topic `consumer-profile`): not a card event, ingested on its own path.
    Profile,
}

impl EventKind {
    /// Stable text form for storage and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Tokenized => "TOKENIZED",
            Self::Ordered => "ORDERED",
            Self::Profile => "CONSUMER_PROFILE",
        }
    }
}

impl CardEvent {
    /// The common fields.
    pub fn meta(&self) -> &EventMeta {
        match self {
            Self::Created(e) => &e.meta,
            Self::Tokenized(e) => &e.meta,
            Self::Ordered(e) => &e.meta,
        }
    }

    /// Which of the three events this is.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Created(_) => EventKind::Created,
            Self::Tokenized(_) => EventKind::Tokenized,
            Self::Ordered(_) => EventKind::Ordered,
        }
    }

    /// The outcome text stored in history (`APPROVED`, `REJECTED`, ...); `None` for created.
    pub fn outcome_str(&self) -> Option<&'static str> {
        match self {
            Self::Created(_) => None,
            Self::Tokenized(e) => Some(match e.outcome {
                TokenizationOutcome::Approved => "APPROVED",
                TokenizationOutcome::Declined => "DECLINED",
            }),
            Self::Ordered(e) => Some(match e.outcome {
                OrderOutcome::Accepted => "ACCEPTED",
                OrderOutcome::Rejected => "REJECTED",
            }),
        }
    }
}
