//! Turns a partition's raw messages into prepared ones: Avro decode (async: the schema registry
//! may be asked), then card-data decryption and validation (CPU-bound, off the async workers).
//!
//! The clear PAN exists here only between decryption and the `cardId` checks, inside a
//! zeroizing type, and never leaves this function.

use std::sync::Arc;

use super::message::{Incoming, Prepared, Rejection};
use super::profile::{PreparedProfile, ProfileSealer};
use crate::avro::decode::{DecodeFailure, Decoder};
use crate::avro::registry::RegistryError;
use crate::core::dead_letter::DeadLetterReason;
use crate::core::event::{CardEvent, EventKind};
use crate::core::pan::mask_pan_like;
use crate::core::validate::{CardIdPolicy, ValidEvent, validate_created, validate_lifecycle};
use crate::crypto::CardDataKeys;
use crate::crypto::Sealer;

/// Preparing a batch hit a transient problem; the whole batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The schema registry did not answer.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The validation worker thread failed.
    #[error("validation worker failed: {0}")]
    Worker(String),
    /// A consumer-profile message arrived but CONSUMER_DATA_KEYS is not set.
    #[error("consumer-profile messages need CONSUMER_DATA_KEYS")]
    NoConsumerDataKeys,
}

/// Decoder, card-data keys and the dead-letter sealer: everything between bytes and a decision.
pub struct Pipeline {
    decoder: Decoder,
    keys: Arc<CardDataKeys>,
    sealer: Arc<dyn Sealer>,
    card_ids: CardIdPolicy,
    profiles: Option<Arc<ProfileSealer>>,
}

impl Pipeline {
    /// A pipeline over these parts.
    pub fn new(decoder: Decoder, keys: Arc<CardDataKeys>, sealer: Arc<dyn Sealer>) -> Self {
        Self { decoder, keys, sealer, card_ids: CardIdPolicy::default(), profiles: None }
    }

    /// The same pipeline, also able to ingest the consumer-profile topic (`CONSUMER_DATA_KEYS`).
    pub fn with_profiles(mut self, sealer: ProfileSealer) -> Self {
        self.profiles = Some(Arc::new(sealer));
        self
    }

    /// The consumer-data sealer, when profiles are ingested.
    pub fn profile_sealer(&self) -> Option<&ProfileSealer> {
        self.profiles.as_deref()
    }

    /// Decodes, validates and seals a batch of the consumer-profile topic.
    pub async fn prepare_profiles(
        &self,
        messages: &[Incoming],
    ) -> Result<Vec<PreparedProfile>, PrepareError> {
        let sealer = self.profiles.as_ref().ok_or(PrepareError::NoConsumerDataKeys)?;
        super::profile::prepare(&self.decoder, sealer, messages).await
    }

    /// The same pipeline with this cardId policy (`CARD_ID_ALLOW_NUMERIC`).
    pub fn with_card_id_policy(mut self, card_ids: CardIdPolicy) -> Self {
        self.card_ids = card_ids;
        self
    }

    /// The sealer for dead letters.
    pub fn sealer(&self) -> &dyn Sealer {
        self.sealer.as_ref()
    }

    /// Decodes and validates every message of a batch, in order.
    pub async fn prepare(
        &self,
        kind: EventKind,
        messages: &[Incoming],
    ) -> Result<Vec<Prepared>, PrepareError> {
        let mut decoded = Vec::with_capacity(messages.len());
        for m in messages {
            let payload = m.raw.payload.as_deref().unwrap_or_default();
            match self.decoder.decode(kind, m.raw.key.as_deref(), payload).await {
                Ok(event) => decoded.push(Ok(event)),
                Err(DecodeFailure::Invalid(e)) => decoded.push(Err(Rejection {
                    reason: e.reason,
                    detail: e.detail,
                    card_id: None,
                    event_id: None,
                })),
                Err(DecodeFailure::Transient(e)) => return Err(e.into()),
            }
        }
        let (keys, policy) = (self.keys.clone(), self.card_ids);
        let needs_crypto = decoded.iter().any(|d| matches!(d, Ok(CardEvent::Created(_))));
        let validated = if needs_crypto {
            tokio::task::spawn_blocking(move || validate_all(&keys, decoded, policy))
                .await
                .map_err(|e| PrepareError::Worker(e.to_string()))?
        } else {
            validate_all(&keys, decoded, policy)
        };
        Ok(messages
            .iter()
            .zip(validated)
            .map(|(m, outcome)| Prepared {
                offset: m.offset,
                raw: m.raw.clone(),
                traceparent: m.raw.header_str("traceparent").map(str::to_owned),
                tracestate: m.raw.header_str("tracestate").map(str::to_owned),
                outcome,
            })
            .collect())
    }
}

fn validate_all(
    keys: &CardDataKeys,
    decoded: Vec<Result<CardEvent, Rejection>>,
    policy: CardIdPolicy,
) -> Vec<Result<ValidEvent, Rejection>> {
    decoded.into_iter().map(|d| d.and_then(|event| validate_one(keys, event, policy))).collect()
}

/// Validates one decoded event. A refused event's cardId is shown only with every PAN-like run
/// masked, and not at all when it may be derived from the PAN in another way (a digest).
pub fn validate_one(
    keys: &CardDataKeys,
    event: CardEvent,
    policy: CardIdPolicy,
) -> Result<ValidEvent, Rejection> {
    let meta = event.meta();
    let event_id = Some(meta.event_id.as_uuid());
    let masked_card_id = mask_pan_like(meta.card_id.as_str()).into_owned();
    let id_refused = policy.refuses(meta.card_id.as_str());
    let reject = |reason: DeadLetterReason, detail: String, card_id: Option<String>| Rejection {
        reason,
        detail,
        card_id,
        event_id,
    };
    match event {
        CardEvent::Created(created) => {
            let (card, sealed_key) = keys.decrypt_sealing_key(&created.encrypted_card).map_err(|e| {
                // Without the PAN we cannot tell whether the cardId is derived from it.
                reject(e.reason(), e.to_string(), None)
            })?;
            let result = validate_created(created, &card, policy);
            drop(card);
            result.map(|valid| valid.with_sealed_card_key(sealed_key)).map_err(|reason| {
                let shown = match reason {
                    DeadLetterReason::CardIdDerivedFromPan if id_refused => Some(masked_card_id.clone()),
                    // The PAN itself or a digest of it: nothing of the id is safe to show.
                    DeadLetterReason::CardIdDerivedFromPan => None,
                    _ => Some(masked_card_id.clone()),
                };
                reject(reason, format!("{} (cardId checked against the card data)", reason.code()), shown)
            })
        }
        other => validate_lifecycle(other, policy).map_err(|reason| {
            reject(
                reason,
                format!("{} (cardId holds a PAN-like digit run)", reason.code()),
                Some(masked_card_id),
            )
        }),
    }
}
