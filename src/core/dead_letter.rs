//! Why a message became a dead letter: one stable code per reason, stored and used as a metric label.

use std::fmt;
use std::str::FromStr;

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// The reason a message was dead-lettered instead of applied.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DeadLetterReason {
            $($(#[$doc])* $variant,)*
        }

        impl DeadLetterReason {
            /// Every reason, for metric descriptions and CLI help.
            pub const ALL: &'static [DeadLetterReason] = &[$(Self::$variant,)*];

            /// The stable code (`UNKNOWN_FRAMING`, `CONSUMER_MISMATCH`, ...).
            pub fn code(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }
        }

        impl FromStr for DeadLetterReason {
            type Err = UnknownReason;
            fn from_str(s: &str) -> Result<Self, UnknownReason> {
                match s {
                    $($code => Ok(Self::$variant),)*
                    _ => Err(UnknownReason),
                }
            }
        }
    };
}

reasons! {
    /// The value starts with neither the Confluent (0x00) nor the single-object (0xC3 0x01) marker.
    UnknownFraming => "UNKNOWN_FRAMING",
    /// The schema id or fingerprint is not known (registry or `schemas/`).
    UnknownSchema => "UNKNOWN_SCHEMA",
    /// A writer schema from the registry that is not a kept version and breaks the rules for
    /// untrusted schemas (recursive, too deep or large, another record, not resolvable).
    UntrustedSchema => "UNTRUSTED_SCHEMA",
    /// The datum declares more values, or nests deeper, than one message may.
    DatumTooComplex => "DATUM_TOO_COMPLEX",
    /// The value ends before the framing or the Avro datum is complete.
    Truncated => "TRUNCATED",
    /// The writer schema does not resolve to the reader schema of the topic, or the datum does not match it.
    SchemaMismatch => "SCHEMA_MISMATCH",
    /// A field breaks the contract (identifier pattern, UUID, enum, timestamp, key differs from cardId).
    InvalidField => "INVALID_FIELD",
    /// `encryptedCard` names a `kid` that is not among `CARD_DATA_KEYS`.
    UnknownCardDataKey => "UNKNOWN_CARD_DATA_KEY",
    /// `encryptedCard` is not a JWE we can decrypt (algorithm, format, tag).
    UndecryptableCardData => "UNDECRYPTABLE_CARD_DATA",
    /// The decrypted card data is not `{"pan","exp"}`.
    InvalidCardData => "INVALID_CARD_DATA",
    /// The PAN is not 12..19 digits or fails Luhn.
    InvalidPan => "INVALID_PAN",
    /// `exp` is not MMYY with a month 01..12.
    InvalidExpiry => "INVALID_EXPIRY",
    /// The cardId is the PAN, contains it, or is a digest of it.
    CardIdDerivedFromPan => "CARD_ID_DERIVED_FROM_PAN",
    /// The event's consumerId differs from the one recorded for the card.
    ConsumerMismatch => "CONSUMER_MISMATCH",
    /// The eventId was already used for an event with other facts (card, kind, outcome, consumer, time).
    EventIdReused => "EVENT_ID_REUSED",
}

/// The text is not one of the stable reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown dead-letter reason code")]
pub struct UnknownReason;

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_to_its_reason() {
        for r in DeadLetterReason::ALL {
            assert_eq!(r.code().parse::<DeadLetterReason>(), Ok(*r));
        }
        assert_eq!("NOPE".parse::<DeadLetterReason>(), Err(UnknownReason));
    }
}
