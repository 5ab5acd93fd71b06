//! Identifier newtypes. The only way in is a fallible `parse`, so no unchecked id travels.
//!
//! Errors name the field and the broken rule but never echo the rejected value: a producer may
//! (wrongly) have put a PAN in any of these fields.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was rejected. Carries the field name, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value is empty or longer than the field allows.
    #[error("{field} must be {min}..{max} characters long (got {len})")]
    Length {
        /// The contract's field name.
        field: &'static str,
        /// Minimum length.
        min: usize,
        /// Maximum length.
        max: usize,
        /// Length received.
        len: usize,
    },
    /// The value holds a character outside `[A-Za-z0-9_-]`.
    #[error("{field} may only contain [A-Za-z0-9_-]")]
    Charset {
        /// The contract's field name.
        field: &'static str,
    },
    /// The value is not a UUID.
    #[error("{field} must be a UUID")]
    NotUuid {
        /// The contract's field name.
        field: &'static str,
    },
}

fn check_token(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), IdError> {
    let len = s.chars().count();
    if len < min || len > max {
        return Err(IdError::Length { field, min, max, len });
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(IdError::Charset { field });
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The contract's name for this field, used in error messages.
            pub const FIELD: &'static str = $field;

            /// Parses a value, checking length and character set.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_token($field, &s, $min, $max)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

token_id!(
    /// D1 card id: 1..48 of `[A-Za-z0-9_-]`, never the PAN nor derived from it.
    CardId, "cardId", 1, 48
);
token_id!(
    /// D1 consumer (end user) id: 1..64 of `[A-Za-z0-9_-]`.
    ConsumerId, "consumerId", 1, 64
);
token_id!(
    /// D1 card product id: 1..48 of `[A-Za-z0-9_-]`.
    CardProductId, "cardProductId", 1, 48
);
token_id!(
    /// D1 issuer id: exactly 10 characters of `[A-Za-z0-9_-]`.
    IssuerId, "issuerId", 10, 10
);
token_id!(
    /// `x-correlation-id` toward D1: 1..64 of `[A-Za-z0-9_-]`, never derived from personal data.
    CorrelationId, "x-correlation-id", 1, 64
);

impl CorrelationId {
    /// A correlation id derived from an outbox row id: stable across retries of that row.
    pub fn for_outbox_row(row_id: Uuid) -> Self {
        Self(format!("cr-{}", row_id.simple()))
    }
}

/// The event's unique id (`eventId`, a UUID).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(Uuid);

impl EventId {
    /// Parses the textual UUID form.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid { field: "eventId" })
    }

    /// Wraps a UUID.
    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_id_accepts_the_documented_charset_and_lengths() {
        assert!(CardId::parse("a").is_ok());
        assert!(CardId::parse("A-z_09").is_ok());
        assert!(CardId::parse("x".repeat(48)).is_ok());
    }

    #[test]
    fn card_id_rejects_empty_too_long_and_foreign_characters_without_echoing_them() {
        assert!(matches!(CardId::parse(""), Err(IdError::Length { len: 0, .. })));
        assert!(matches!(CardId::parse("x".repeat(49)), Err(IdError::Length { len: 49, .. })));
        let err = CardId::parse("4111 1111").unwrap_err();
        assert_eq!(err, IdError::Charset { field: "cardId" });
        assert!(!err.to_string().contains("4111"));
        assert!(CardId::parse("é").is_err());
    }

    #[test]
    fn consumer_id_allows_64_characters() {
        assert!(ConsumerId::parse("c".repeat(64)).is_ok());
        assert!(ConsumerId::parse("c".repeat(65)).is_err());
    }

    #[test]
    fn issuer_id_is_exactly_ten_characters() {
        assert!(IssuerId::parse("ISSUER0001").is_ok());
        assert!(IssuerId::parse("ISSUER001").is_err());
        assert!(IssuerId::parse("ISSUER00001").is_err());
    }

    #[test]
    fn event_id_must_be_a_uuid() {
        assert!(EventId::parse("0b6f8f0e-4a5e-4b8e-9d0c-3f1f5f2c9a10").is_ok());
        assert_eq!(EventId::parse("nope").unwrap_err(), IdError::NotUuid { field: "eventId" });
    }

    #[test]
    fn correlation_id_for_a_row_is_stable_and_valid() {
        let row = Uuid::new_v4();
        let a = CorrelationId::for_outbox_row(row);
        assert_eq!(a, CorrelationId::for_outbox_row(row));
        assert!(CorrelationId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn ids_deserialize_through_parse() {
        let ok: Result<CardId, _> = serde_json::from_str("\"card-1\"");
        assert!(ok.is_ok());
        let bad: Result<CardId, _> = serde_json::from_str("\"card 1\"");
        assert!(bad.is_err());
    }
}
