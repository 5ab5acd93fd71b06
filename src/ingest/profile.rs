//! The consumer-profile topic: each message is a profile (sealed to `CONSUMER_DATA_KEYS` before
//! it is stored) or a tombstone (erase), applied with the partition's offset in one transaction,
//! exactly like the card topics. A message that cannot become a profile is a dead letter, its
//! envelope sealed to the consumer-data keys too (it holds personal data).
//!
//! Messages of one consumer share a partition (the key is the consumerId), so offset order is the
//! order of that consumer's changes: the last one wins, as in a compacted topic.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::apply::ApplyError;
use super::message::{Applied, Incoming, RawMessage, Rejection};
use super::prepare::PrepareError;
use crate::avro::decode::{DecodeFailure, Decoder};
use crate::core::dead_letter::DeadLetterReason;
use crate::core::profile::ProfileChange;
use crate::crypto::{EnvelopeSealer, Sealer};
use crate::store::{StoreError, dead_letters, offsets, profiles};

/// Seals profiles (and their dead letters) with the consumer-data keys.
pub struct ProfileSealer {
    sealer: EnvelopeSealer,
}

impl ProfileSealer {
    /// Over the `CONSUMER_DATA_KEYS` sealer.
    pub fn new(sealer: EnvelopeSealer) -> Self {
        Self { sealer: sealer.for_consumer_data() }
    }
}

/// A change ready to write: personal data already sealed.
#[derive(Debug)]
pub enum SealedChange {
    /// Store this sealed profile.
    Upsert {
        /// The consumer.
        consumer_id: String,
        /// JWE of the `ConsumerInfo` JSON.
        sealed: String,
        /// The kid it is sealed to.
        key_id: String,
        /// The event id.
        event_id: Uuid,
        /// When it happened.
        occurred_at: DateTime<Utc>,
    },
    /// Erase the consumer's profile.
    Erase(String),
}

/// One message of a profile batch, prepared outside the transaction.
#[derive(Debug)]
pub struct PreparedProfile {
    /// Kafka offset.
    pub offset: i64,
    /// The message as received (sealed into a dead letter if refused).
    pub raw: RawMessage,
    /// The change, or why it was refused.
    pub outcome: Result<SealedChange, Rejection>,
}

/// Decodes, validates and seals a batch of profile messages. Sealing runs off the async workers.
pub async fn prepare(
    decoder: &Decoder,
    sealer: &Arc<ProfileSealer>,
    messages: &[Incoming],
) -> Result<Vec<PreparedProfile>, PrepareError> {
    let mut decoded = Vec::with_capacity(messages.len());
    for m in messages {
        match decoder.decode_profile(m.raw.key.as_deref(), m.raw.payload.as_deref()).await {
            Ok(change) => decoded.push(Ok(change)),
            Err(DecodeFailure::Invalid(e)) => decoded.push(Err(Rejection {
                reason: e.reason,
                detail: e.detail,
                card_id: None,
                event_id: None,
            })),
            Err(DecodeFailure::Transient(e)) => return Err(e.into()),
        }
    }
    let sealer = sealer.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        decoded.into_iter().map(|d| d.and_then(|change| seal(&sealer, change))).collect::<Vec<_>>()
    })
    .await
    .map_err(|e| PrepareError::Worker(e.to_string()))?;
    Ok(messages
        .iter()
        .zip(sealed)
        .map(|(m, outcome)| PreparedProfile { offset: m.offset, raw: m.raw.clone(), outcome })
        .collect())
}

fn seal(sealer: &ProfileSealer, change: ProfileChange) -> Result<SealedChange, Rejection> {
    match change {
        ProfileChange::Erase(consumer) => Ok(SealedChange::Erase(consumer.as_str().to_owned())),
        ProfileChange::Upsert(profile) => {
            let event_id = profile.event_id.as_uuid();
            let refuse = |detail: String| Rejection {
                reason: DeadLetterReason::InvalidField,
                detail,
                card_id: None,
                event_id: Some(event_id),
            };
            // Serialising a struct of strings cannot fail; the buffer is wiped after sealing.
            let json = zeroize::Zeroizing::new(serde_json::to_vec(&profile.info).unwrap_or_default());
            let sealed = sealer.sealer.seal(&json).map_err(|e| refuse(e.to_string()))?;
            Ok(SealedChange::Upsert {
                consumer_id: profile.consumer_id.as_str().to_owned(),
                sealed,
                key_id: sealer.sealer.current_kid().to_owned(),
                event_id,
                occurred_at: profile.occurred_at,
            })
        }
    }
}

/// Where a profile batch goes.
#[derive(Debug)]
pub struct ProfileBatch<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// The stored next offset this consumer started from.
    pub from: Option<i64>,
    /// Messages in offset order.
    pub messages: Vec<PreparedProfile>,
}

/// Applies the batch and moves the partition's offset, in one transaction.
pub async fn apply_batch(
    pool: &PgPool,
    sealer: &ProfileSealer,
    batch: &ProfileBatch<'_>,
) -> Result<Applied, ApplyError> {
    let last = batch.messages.last().ok_or(ApplyError::Empty)?;
    let next_offset = last.offset + 1;
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin profile transaction", e))?;
    let mut applied = Applied { next_offset, ..Applied::default() };
    let mut dead = Vec::new();
    for m in &batch.messages {
        match &m.outcome {
            Ok(SealedChange::Upsert { consumer_id, sealed, key_id, event_id, occurred_at }) => {
                let row = profiles::SealedProfile {
                    consumer_id,
                    sealed,
                    key_id,
                    event_id: *event_id,
                    occurred_at: *occurred_at,
                };
                profiles::upsert(&mut tx, &row).await?;
            }
            Ok(SealedChange::Erase(consumer_id)) => profiles::erase(&mut tx, consumer_id).await?,
            Err(r) => dead.push((m, r, sealer.sealer.seal(&m.raw.to_bytes())?)),
        }
    }
    let rows: Vec<dead_letters::NewDeadLetter<'_>> = dead
        .iter()
        .map(|(m, r, envelope)| dead_letters::NewDeadLetter {
            topic: batch.topic,
            partition: batch.partition,
            offset: m.offset,
            reason: r.reason.code(),
            detail: &r.detail,
            card_id: None,
            event_id: r.event_id,
            envelope,
        })
        .collect();
    dead_letters::insert(&mut tx, &rows).await?;
    applied.dead_letters = dead.iter().map(|(_, r, _)| r.reason).collect();
    if !offsets::advance(&mut tx, batch.group, batch.topic, batch.partition, batch.from, next_offset).await? {
        return Err(ApplyError::Fenced {
            topic: batch.topic.to_owned(),
            partition: batch.partition,
            expected: batch.from,
        });
    }
    tx.commit().await.map_err(|e| StoreError::db("commit profile transaction", e))?;
    Ok(applied)
}
