//! Validation before deciding. A failure is a dead-letter reason, never a D1 call.
//!
//! Identifier patterns are enforced when the event is decoded (the id newtypes); what remains is
//! the card data: `encryptedCard` must decrypt (the crypto adapter does that) to a valid PAN and
//! expiry, and the `cardId` must not be the PAN, contain it, or be a digest of it.

use super::dead_letter::DeadLetterReason;
use super::event::{CardCreated, CardEvent};
use super::pan::{CardData, CardDataError, card_id_derivation, luhn_valid};

/// An event that passed validation: the only input `decide` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent(CardEvent);

impl ValidEvent {
    /// The event.
    pub fn event(&self) -> &CardEvent {
        &self.0
    }

    /// Takes the event back.
    pub fn into_event(self) -> CardEvent {
        self.0
    }

    /// Test-only door, for decision tests that need no card data.
    #[cfg(test)]
    pub(crate) fn assume_valid(event: CardEvent) -> Self {
        Self(event)
    }
}

impl From<CardDataError> for DeadLetterReason {
    fn from(e: CardDataError) -> Self {
        match e {
            CardDataError::PanFormat | CardDataError::PanLuhn => Self::InvalidPan,
            CardDataError::Expiry => Self::InvalidExpiry,
            CardDataError::Payload => Self::InvalidCardData,
        }
    }
}

/// Whether a cardId has the shape of a PAN (12..19 digits passing Luhn). Tokenized and ordered
/// events carry no card data to compare with, so this is the only guard that keeps a PAN used as
/// a cardId out of the history, the logs and D1. Numeric ids that happen to pass Luhn are refused
/// too: a scanner could not tell them from PANs either.
pub fn card_id_looks_like_pan(card_id: &str) -> bool {
    (12..=19).contains(&card_id.len()) && card_id.bytes().all(|b| b.is_ascii_digit()) && luhn_valid(card_id)
}

/// Validates a `CardCreated` against its decrypted card data.
pub fn validate_created(created: CardCreated, card: &CardData) -> Result<ValidEvent, DeadLetterReason> {
    let card_id = created.meta.card_id.as_str();
    if card_id_looks_like_pan(card_id) || card_id_derivation(card_id, &card.pan).is_some() {
        return Err(DeadLetterReason::CardIdDerivedFromPan);
    }
    Ok(ValidEvent(CardEvent::Created(created)))
}

/// Validates a tokenized or ordered event (no card data to check). A `CardCreated` passed here
/// is refused: it must go through [`validate_created`].
pub fn validate_lifecycle(event: CardEvent) -> Result<ValidEvent, DeadLetterReason> {
    match event {
        CardEvent::Created(_) => Err(DeadLetterReason::InvalidCardData),
        e if card_id_looks_like_pan(e.meta().card_id.as_str()) => Err(DeadLetterReason::CardIdDerivedFromPan),
        e => Ok(ValidEvent(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{EncryptedCard, EventMeta, InitialState};
    use crate::core::ids::{CardId, CardProductId, ConsumerId, EventId};
    use chrono::TimeZone;

    fn created(card_id: &str) -> CardCreated {
        CardCreated {
            meta: EventMeta {
                event_id: EventId::from_uuid(uuid::Uuid::nil()),
                occurred_at: chrono::Utc.timestamp_millis_opt(0).unwrap(),
                card_id: CardId::parse(card_id).unwrap(),
                consumer_id: ConsumerId::parse("consumer-1").unwrap(),
            },
            card_product_id: CardProductId::parse("product-1").unwrap(),
            encrypted_card: EncryptedCard::new("x.y.z".into()),
            initial_state: InitialState::Active,
        }
    }

    fn card(json: &str) -> Result<CardData, DeadLetterReason> {
        CardData::from_json(json.as_bytes()).map_err(DeadLetterReason::from)
    }

    #[test]
    fn a_created_event_with_valid_card_data_and_a_safe_card_id_is_accepted() {
        let data = card(r#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
        assert!(validate_created(created("card-0001"), &data).is_ok());
    }

    #[test]
    fn a_card_id_that_is_the_pan_is_refused() {
        let data = card(r#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
        assert_eq!(
            validate_created(created("4111111111111111"), &data),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
        assert_eq!(
            validate_created(created("x4111111111111111x"), &data),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
    }

    #[test]
    fn bad_card_data_maps_to_stable_reasons() {
        assert_eq!(
            card(r#"{"pan":"4111111111111112","exp":"1230"}"#).unwrap_err(),
            DeadLetterReason::InvalidPan
        );
        assert_eq!(card(r#"{"pan":"41111","exp":"1230"}"#).unwrap_err(), DeadLetterReason::InvalidPan);
        assert_eq!(
            card(r#"{"pan":"4111111111111111","exp":"1330"}"#).unwrap_err(),
            DeadLetterReason::InvalidExpiry
        );
        assert_eq!(card(r#"{"pan":"4111111111111111"}"#).unwrap_err(), DeadLetterReason::InvalidCardData);
    }

    #[test]
    fn a_card_id_shaped_like_a_pan_is_refused_even_without_card_data() {
        assert!(card_id_looks_like_pan("5555555555554444"));
        assert!(!card_id_looks_like_pan("5555555555554445"));
        assert!(!card_id_looks_like_pan("card-5555555555554444"));
        let data = card(r#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
        assert_eq!(
            validate_created(created("5555555555554444"), &data),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
        let mut tokenized = created("5555555555554444");
        tokenized.meta.card_id = CardId::parse("378282246310005").unwrap();
        let event = CardEvent::Tokenized(crate::core::event::CardTokenized {
            meta: tokenized.meta,
            outcome: crate::core::event::TokenizationOutcome::Approved,
            digital_card_id: None,
            token_requestor_id: None,
        });
        assert_eq!(validate_lifecycle(event), Err(DeadLetterReason::CardIdDerivedFromPan));
    }

    #[test]
    fn validate_lifecycle_refuses_a_created_event() {
        assert_eq!(
            validate_lifecycle(CardEvent::Created(created("c1"))),
            Err(DeadLetterReason::InvalidCardData)
        );
    }
}
