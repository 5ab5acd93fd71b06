//! Validation before deciding. A failure is a dead-letter reason, never a D1 call.
//!
//! Identifier patterns are enforced when the event is decoded (the id newtypes); what remains is
//! the card data: `encryptedCard` must decrypt (the crypto adapter does that) to a valid PAN and
//! expiry, and the `cardId` must not be the PAN, contain it, or be a digest of it.

use super::dead_letter::DeadLetterReason;
use super::event::{CardCreated, CardEvent, SealedCardKey};
use super::pan::{CardData, CardDataError, card_id_derivation, luhn_valid};

/// An event that passed validation: the only input `decide` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent(CardEvent, Option<SealedCardKey>);

impl ValidEvent {
    /// The event.
    pub fn event(&self) -> &CardEvent {
        &self.0
    }

    /// Takes the event back.
    pub fn into_event(self) -> CardEvent {
        self.0
    }

    /// The content key of a `CardCreated`'s `encryptedCard`, sealed for storage, when the crypto
    /// layer gave one.
    pub fn sealed_card_key(&self) -> Option<&SealedCardKey> {
        self.1.as_ref()
    }

    /// The same event with the sealed content key of its `encryptedCard`, if there is one.
    pub fn with_sealed_card_key(self, key: Option<SealedCardKey>) -> Self {
        Self(self.0, key)
    }

    /// Test-only door, for decision tests that need no card data.
    #[cfg(test)]
    pub(crate) fn assume_valid(event: CardEvent) -> Self {
        Self(event, None)
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

/// Which cardIds are refused because they may hold a PAN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CardIdPolicy {
    /// Accept a cardId made only of digits even when it passes Luhn (for a bank whose card ids
    /// are numeric). A PAN-like run inside a mixed id is still refused, and `CardCreated` still
    /// compares the id with the real PAN.
    pub allow_numeric: bool,
}

impl CardIdPolicy {
    /// Whether the cardId must be refused: it contains a run of 12..19 digits passing Luhn (a
    /// possible PAN) anywhere, unless it is wholly numeric and such ids are allowed. Tokenized
    /// and ordered events carry no card data to compare with, so this is the guard that keeps a
    /// PAN inside a cardId out of the tables, logs, spans and D1.
    pub fn refuses(self, card_id: &str) -> bool {
        if self.allow_numeric && !card_id.is_empty() && card_id.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        contains_pan_like_run(card_id)
    }
}

/// Whether `text` holds a maximal run of 12..19 ASCII digits that passes Luhn (the runs that
/// [`super::pan::mask_pan_like`] masks).
pub fn contains_pan_like_run(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit()).any(|run| (12..=19).contains(&run.len()) && luhn_valid(run))
}

/// Validates a `CardCreated` against its decrypted card data.
pub fn validate_created(
    created: CardCreated,
    card: &CardData,
    policy: CardIdPolicy,
) -> Result<ValidEvent, DeadLetterReason> {
    let card_id = created.meta.card_id.as_str();
    if policy.refuses(card_id) || card_id_derivation(card_id, &card.pan).is_some() {
        return Err(DeadLetterReason::CardIdDerivedFromPan);
    }
    Ok(ValidEvent(CardEvent::Created(created), None))
}

/// Validates a tokenized or ordered event (no card data to check). A `CardCreated` passed here
/// is refused: it must go through [`validate_created`].
pub fn validate_lifecycle(event: CardEvent, policy: CardIdPolicy) -> Result<ValidEvent, DeadLetterReason> {
    match event {
        CardEvent::Created(_) => Err(DeadLetterReason::InvalidCardData),
        e if policy.refuses(e.meta().card_id.as_str()) => Err(DeadLetterReason::CardIdDerivedFromPan),
        e => Ok(ValidEvent(e, None)),
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
        assert!(validate_created(created("card-0001"), &data, CardIdPolicy::default()).is_ok());
    }

    #[test]
    fn a_card_id_that_is_the_pan_is_refused() {
        let data = card(r#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
        assert_eq!(
            validate_created(created("4111111111111111"), &data, CardIdPolicy::default()),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
        assert_eq!(
            validate_created(created("x4111111111111111x"), &data, CardIdPolicy::default()),
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

    fn tokenized(card_id: &str) -> CardEvent {
        let mut meta = created("c1").meta;
        meta.card_id = CardId::parse(card_id).unwrap();
        CardEvent::Tokenized(crate::core::event::CardTokenized {
            meta,
            outcome: crate::core::event::TokenizationOutcome::Approved,
            digital_card_id: None,
            token_requestor_id: None,
        })
    }

    #[test]
    fn a_card_id_shaped_like_a_pan_is_refused_even_without_card_data() {
        let strict = CardIdPolicy::default();
        assert!(strict.refuses("5555555555554444"));
        assert!(!strict.refuses("5555555555554445"));
        let data = card(r#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
        assert_eq!(
            validate_created(created("5555555555554444"), &data, strict),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
        assert_eq!(
            validate_lifecycle(tokenized("378282246310005"), strict),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
    }

    #[test]
    fn a_pan_inside_a_card_id_is_refused_on_every_topic() {
        let strict = CardIdPolicy::default();
        for id in ["c-4111111111111111", "4111111111111111-x", "a_5555555555554444_b", "x378282246310005"] {
            assert!(strict.refuses(id), "{id}");
            assert_eq!(
                validate_lifecycle(tokenized(id), strict),
                Err(DeadLetterReason::CardIdDerivedFromPan),
                "{id}"
            );
            // Even when it is not the PAN of the card data.
            let data = card(r#"{"pan":"6011111111111117","exp":"1230"}"#).unwrap();
            assert_eq!(
                validate_created(created(id), &data, strict),
                Err(DeadLetterReason::CardIdDerivedFromPan)
            );
        }
        // Runs that are too short, too long or fail Luhn are not PANs.
        for id in ["c-4111111111111112", "c-41111111111", "c-41111111111111111111", "card-0001-2024"] {
            assert!(!strict.refuses(id), "{id}");
            assert!(validate_lifecycle(tokenized(id), strict).is_ok(), "{id}");
        }
    }

    #[test]
    fn numeric_card_ids_are_accepted_only_when_allowed_and_never_when_they_are_the_pan() {
        let numeric = CardIdPolicy { allow_numeric: true };
        assert!(validate_lifecycle(tokenized("5555555555554444"), numeric).is_ok());
        assert!(!numeric.refuses("378282246310005"));
        // A PAN-like run inside a mixed id is still refused.
        assert!(numeric.refuses("c-5555555555554444"));
        // With card data, the comparison with the real PAN still applies.
        let data = card(r#"{"pan":"4111111111111111","exp":"1230"}"#).unwrap();
        assert_eq!(
            validate_created(created("4111111111111111"), &data, numeric),
            Err(DeadLetterReason::CardIdDerivedFromPan)
        );
        assert!(validate_created(created("5555555555554444"), &data, numeric).is_ok());
    }

    #[test]
    fn validate_lifecycle_refuses_a_created_event() {
        assert_eq!(
            validate_lifecycle(CardEvent::Created(created("c1")), CardIdPolicy::default()),
            Err(DeadLetterReason::InvalidCardData)
        );
    }
}
