//! The messages ingest passes along, in the order they exist: a Kafka message as received
//! ([`RawMessage`], also the envelope kept sealed with a dead letter), handed to its partition task
//! ([`Incoming`]), prepared outside the transaction ([`Prepared`] or a [`Rejection`]), applied as a
//! [`Batch`] with a result ([`Applied`]) and a Kafka commit to make ([`Committed`]).
//!
//! A malformed message may hold a clear PAN in any byte, so a dead letter's envelope is stored
//! only sealed (encrypted to our own card-data key by a [`crate::crypto::Sealer`]) and opened
//! again only to replay it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::core::dead_letter::DeadLetterReason;
use crate::core::decide::Effect;
use crate::core::validate::ValidEvent;

/// What a heap block costs besides its bytes, as [`RawMessage::size`] counts it: glibc's malloc
/// adds an 8-byte header and rounds each block up to a multiple of 16 (32 at least), so a small
/// block costs 8 to 39 bytes more than it holds.
pub const ALLOCATION_OVERHEAD: usize = 24;

/// A Kafka message as received.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Headers in order (name, value).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Message value.
    pub payload: Option<Vec<u8>>,
}

impl std::fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sizes only: the bytes may hold card data.
        f.debug_struct("RawMessage")
            .field("key_len", &self.key.as_ref().map(Vec::len))
            .field("headers", &self.headers.len())
            .field("payload_len", &self.payload.as_ref().map(Vec::len))
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    key: Option<String>,
    headers: Vec<(String, Option<String>)>,
    payload: Option<String>,
}

/// The envelope does not parse (it was not written by [`RawMessage::to_bytes`]).
#[derive(Debug, thiserror::Error)]
#[error("dead-letter envelope is malformed")]
pub struct MalformedEnvelope;

impl RawMessage {
    /// Serialises for sealing, into a buffer zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let b64 = |v: &Vec<u8>| STANDARD.encode(v);
        let wire = Wire {
            key: self.key.as_ref().map(b64),
            headers: self.headers.iter().map(|(k, v)| (k.clone(), v.as_ref().map(b64))).collect(),
            payload: self.payload.as_ref().map(b64),
        };
        // Serialising plain strings into a Vec cannot fail.
        Zeroizing::new(serde_json::to_vec(&wire).unwrap_or_default())
    }

    /// Parses what `to_bytes` produced.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MalformedEnvelope> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|_| MalformedEnvelope)?;
        let unb64 = |s: String| STANDARD.decode(s).map_err(|_| MalformedEnvelope);
        Ok(Self {
            key: wire.key.map(unb64).transpose()?,
            headers: wire
                .headers
                .into_iter()
                .map(|(k, v)| Ok((k, v.map(unb64).transpose()?)))
                .collect::<Result<_, MalformedEnvelope>>()?,
            payload: wire.payload.map(unb64).transpose()?,
        })
    }

    /// Memory held: key, header names and values, value, and what holding them costs (the struct,
    /// the header list, and [`ALLOCATION_OVERHEAD`] for each heap block). What the byte bounds of
    /// queues and batches count: for a small message the bytes alone were under half of it, so a
    /// 16 MiB budget held more than 40 MiB.
    pub fn size(&self) -> usize {
        let block = |len: usize| len + ALLOCATION_OVERHEAD;
        let len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, |v| block(v.len()));
        let list = match self.headers.capacity() {
            0 => 0,
            n => block(n * std::mem::size_of::<(String, Option<Vec<u8>>)>()),
        };
        std::mem::size_of::<Self>()
            + len(&self.key)
            + len(&self.payload)
            + list
            + self.headers.iter().map(|(k, v)| block(k.len()) + len(v)).sum::<usize>()
    }

    /// The value of the first header with this name, as UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A message handed from the poll thread to its partition task.
#[derive(Debug)]
pub struct Incoming {
    /// Kafka offset.
    pub offset: i64,
    /// Key, headers, value.
    pub raw: RawMessage,
}

/// A batch committed in PostgreSQL, to be committed to Kafka too (for lag tools only).
#[derive(Debug, Clone)]
pub struct Committed {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to read.
    pub next_offset: i64,
}

/// Why a message will not be applied, decided before the transaction (decoding, validation).
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Stable reason.
    pub reason: DeadLetterReason,
    /// Operator-facing detail naming fields, never values.
    pub detail: String,
    /// The card, when the message decoded and the id is safe to show.
    pub card_id: Option<String>,
    /// The event id, when it decoded.
    pub event_id: Option<Uuid>,
}

/// One message of the batch, prepared outside the transaction.
#[derive(Debug)]
pub struct Prepared {
    /// Kafka offset.
    pub offset: i64,
    /// The message as received (sealed into a dead letter if refused).
    pub raw: RawMessage,
    /// The message's W3C `traceparent` header: the parent of its `ingest.message` span.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The validated event, or why it was refused.
    pub outcome: Result<ValidEvent, Rejection>,
}

/// A partition's batch.
#[derive(Debug)]
pub struct Batch<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// The stored next offset this consumer started from (`None`: nothing stored yet).
    pub from: Option<i64>,
    /// Messages in offset order.
    pub messages: Vec<Prepared>,
}

/// What a committed batch did, for metrics and logs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// The partition's next offset, now stored.
    pub next_offset: i64,
    /// Effects of applied events.
    pub effects: Vec<Effect>,
    /// Events already in the history (re-published or replayed).
    pub duplicates: usize,
    /// Reasons of stored dead letters.
    pub dead_letters: Vec<DeadLetterReason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_binary_keys_headers_and_values() {
        let m = RawMessage {
            key: Some(vec![0, 159, 255]),
            headers: vec![("traceparent".into(), Some(b"00-abc".to_vec())), ("empty".into(), None)],
            payload: Some(vec![0xC3, 0x01, 7]),
        };
        assert_eq!(RawMessage::from_bytes(&m.to_bytes()).unwrap(), m);
        assert_eq!(m.header_str("TraceParent"), Some("00-abc"));
        assert!(RawMessage::from_bytes(b"{").is_err());
    }

    #[test]
    fn size_counts_the_struct_and_every_block_not_only_the_bytes() {
        let m = RawMessage {
            key: Some(b"card-1".to_vec()),
            headers: vec![("traceparent".into(), Some(vec![b'0'; 55])), ("empty".into(), None)],
            payload: Some(vec![0; 100]),
        };
        let bytes = 6 + 11 + 55 + 5 + 100;
        // Blocks: key, payload, the header list, two names, one value.
        let list = 2 * std::mem::size_of::<(String, Option<Vec<u8>>)>();
        assert_eq!(m.size(), std::mem::size_of::<RawMessage>() + bytes + list + 6 * ALLOCATION_OVERHEAD);
        assert!(m.size() > 2 * bytes, "a small message costs about twice its bytes");
        assert_eq!(RawMessage::default().size(), std::mem::size_of::<RawMessage>());
    }

    #[test]
    fn debug_shows_sizes_not_bytes() {
        let m = RawMessage { key: Some(b"4111111111111111".to_vec()), ..Default::default() };
        let s = format!("{m:?}");
        assert!(!s.contains("4111"), "{s}");
        assert!(s.contains("key_len: Some(16)"));
    }
}
