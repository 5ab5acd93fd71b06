//! The original Kafka message kept with a dead letter: key, headers and value, sealed.
//!
//! A malformed message may hold a clear PAN in any byte, so it is stored only sealed (encrypted to
//! our own card-data key by a [`Sealer`]) and opened again only to replay it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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

    /// Bytes held: key, header names and values, value. What the byte bounds of queues and
    /// batches count.
    pub fn size(&self) -> usize {
        let len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        len(&self.key)
            + len(&self.payload)
            + self.headers.iter().map(|(k, v)| k.len() + len(v)).sum::<usize>()
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

/// Sealing or opening an envelope failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} a dead-letter envelope: {detail}")]
pub struct SealError {
    /// `seal` or `open`.
    pub op: &'static str,
    /// What went wrong (never the content).
    pub detail: String,
}

/// Encrypts envelopes at rest and decrypts them for replay.
pub trait Sealer: Send + Sync {
    /// Encrypts `plaintext` into a storable string.
    fn seal(&self, plaintext: &[u8]) -> Result<String, SealError>;
    /// Decrypts what `seal` produced.
    fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError>;
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
    fn debug_shows_sizes_not_bytes() {
        let m = RawMessage { key: Some(b"4111111111111111".to_vec()), ..Default::default() };
        let s = format!("{m:?}");
        assert!(!s.contains("4111"), "{s}");
        assert!(s.contains("key_len: Some(16)"));
    }
}
