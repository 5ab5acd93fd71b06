//! The card rules D1 applies (d1-api.md): identifier patterns, the `{"pan","exp"}` plaintext of
//! `encryptedData` (12..19 digits, Luhn, MMYY) and "the cardId is neither the PAN nor derived
//! from it". Pure functions and the stored card record. Nothing here may keep, print or put into an
//! error more of a PAN than its last four digits.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// Longest `cardId` D1 accepts.
pub const CARD_ID_MAX: usize = 48;
/// Longest `consumerId` D1 accepts.
pub const CONSUMER_ID_MAX: usize = 64;
/// Longest `cardProductId` D1 accepts.
pub const CARD_PRODUCT_ID_MAX: usize = 48;
/// Exact length of an `issuerId`.
pub const ISSUER_ID_LEN: usize = 10;

/// True when `value` is 1..=`max` characters of `[A-Za-z0-9_-]`, D1's identifier alphabet.
pub fn is_identifier(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True when `value` is a well-formed issuer id: exactly 10 characters of `[A-Za-z0-9_-]`.
pub fn is_issuer_id(value: &str) -> bool {
    value.len() == ISSUER_ID_LEN && is_identifier(value, ISSUER_ID_LEN)
}

/// A card state as D1 reports it; Register Card accepts only `ACTIVE` and `INACTIVE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CardState {
    /// Usable (the default of Register Card).
    #[default]
    Active,
    /// Registered but not usable yet.
    Inactive,
    /// Temporarily blocked.
    Suspended,
    /// Deleted; its cardId may be reused.
    Deleted,
    /// Replaced by another card.
    Replaced,
}

/// How a stored card came to be known to the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Registration {
    /// Stored by a Register Card PUT.
    Api,
    /// Seeded, standing for D1's implicit registration (tokenization, central issuance).
    Implicit,
}

/// A stored card: everything the simulator keeps, which never includes the PAN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCard {
    /// The issuer's technical card id.
    pub card_id: String,
    /// The consumer the card belongs to.
    pub consumer_id: String,
    /// The card product.
    pub card_product_id: String,
    /// The card state.
    pub state: CardState,
    /// Last four digits of the PAN, when known (always for API registrations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_four_digits: Option<String>,
    /// Expiry as MMYY, when known (always for API registrations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    /// Payment scheme guessed from the PAN's first digit (`VISA`, `MASTERCARD`, `OTHER`).
    pub scheme_name: String,
    /// How the card was registered.
    pub registration: Registration,
    /// When the card was stored (RFC 3339, UTC).
    pub created_at: String,
    /// When the card last changed (RFC 3339, UTC).
    pub updated_at: String,
}

/// An implicitly registered card to seed (the `PUT /_sim/cards/{cardId}` body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedCard {
    /// The consumer the card belongs to (1..64 of `[A-Za-z0-9_-]`).
    pub consumer_id: String,
    /// The card product (1..48 of `[A-Za-z0-9_-]`).
    pub card_product_id: String,
    /// The card state; `ACTIVE` when absent.
    #[serde(default)]
    pub state: CardState,
    /// Last four digits to report, if any.
    #[serde(default)]
    pub last_four_digits: Option<String>,
    /// Expiry (MMYY) to report, if any.
    #[serde(default)]
    pub expiry: Option<String>,
}

impl SeedCard {
    /// A seed with ACTIVE state and no last four digits or expiry.
    pub fn new(consumer_id: impl Into<String>, card_product_id: impl Into<String>) -> Self {
        Self {
            consumer_id: consumer_id.into(),
            card_product_id: card_product_id.into(),
            state: CardState::Active,
            last_four_digits: None,
            expiry: None,
        }
    }

    /// Checks the seed's fields; the error names the first bad field.
    pub fn check(&self) -> Result<(), CardRuleError> {
        if !is_identifier(&self.consumer_id, CONSUMER_ID_MAX) {
            return Err(CardRuleError::ConsumerId);
        }
        if !is_identifier(&self.card_product_id, CARD_PRODUCT_ID_MAX) {
            return Err(CardRuleError::CardProductId);
        }
        if let Some(last4) = &self.last_four_digits
            && (last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(CardRuleError::Pan("lastFourDigits must be 4 digits"));
        }
        if let Some(exp) = &self.expiry
            && !is_expiry(exp)
        {
            return Err(CardRuleError::Expiry);
        }
        Ok(())
    }
}

/// The facts kept from a decrypted card: no PAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardFacts {
    /// Last four digits of the PAN.
    pub last_four_digits: String,
    /// Expiry as MMYY.
    pub expiry: String,
    /// Scheme guessed from the first digit.
    pub scheme_name: &'static str,
}

/// A broken card rule. Messages name the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardRuleError {
    /// The cardId breaks the pattern, or is (or contains, or digests) the PAN.
    #[error("cardId {0}")]
    CardId(&'static str),
    /// The consumerId breaks the pattern.
    #[error("consumerId must be 1..64 characters of [A-Za-z0-9_-]")]
    ConsumerId,
    /// The cardProductId breaks the pattern.
    #[error("cardProductId must be 1..48 characters of [A-Za-z0-9_-]")]
    CardProductId,
    /// The plaintext is not a JSON object with string `pan` and `exp`.
    #[error("card data must be a JSON object with string fields pan and exp")]
    CardData,
    /// The PAN is malformed or fails Luhn.
    #[error("pan {0}")]
    Pan(&'static str),
    /// The expiry is not MMYY with month 01..12.
    #[error("exp must be MMYY with a month of 01..12")]
    Expiry,
}

impl CardRuleError {
    /// The D1-style errorCode for this rule.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::CardId(_) => "INVALID_CARD_ID",
            Self::ConsumerId => "INVALID_CONSUMER_ID",
            Self::CardProductId => "INVALID_CARD_PRODUCT_ID",
            Self::CardData => "INVALID_CARD_DATA",
            Self::Pan(_) => "INVALID_PAN",
            Self::Expiry => "INVALID_EXPIRY",
        }
    }
}

/// The decrypted plaintext; its PAN is wiped on drop and never printed.
#[derive(Deserialize)]
struct PlainCard {
    pan: String,
    exp: String,
}

impl Drop for PlainCard {
    fn drop(&mut self) {
        self.pan.zeroize();
    }
}

/// Checks the decrypted `{"pan","exp"}` plaintext against the rules and the path's cardId.
pub fn check_card_data(plaintext: &[u8], card_id: &str) -> Result<CardFacts, CardRuleError> {
    // serde_json's messages may quote the input, so its error is dropped, not forwarded.
    let card: PlainCard = serde_json::from_slice(plaintext).map_err(|_| CardRuleError::CardData)?;
    let pan = card.pan.as_str();
    if !(12..=19).contains(&pan.len()) || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardRuleError::Pan("must be 12..19 digits"));
    }
    if !luhn_ok(pan) {
        return Err(CardRuleError::Pan("fails the Luhn check"));
    }
    if !is_expiry(&card.exp) {
        return Err(CardRuleError::Expiry);
    }
    if card_id_reveals_pan(card_id, pan) {
        return Err(CardRuleError::CardId("must not be the PAN, contain it, or be a digest of it"));
    }
    let scheme_name = match pan.as_bytes()[0] {
        b'4' => "VISA",
        b'2' | b'5' => "MASTERCARD",
        _ => "OTHER",
    };
    Ok(CardFacts { last_four_digits: pan[pan.len() - 4..].to_owned(), expiry: card.exp.clone(), scheme_name })
}

/// True when `exp` is MMYY with a month of 01..12.
pub fn is_expiry(exp: &str) -> bool {
    exp.len() == 4 && exp.bytes().all(|b| b.is_ascii_digit()) && matches!(exp[..2].parse::<u8>(), Ok(1..=12))
}

/// The Luhn checksum over a string of ASCII digits.
pub fn luhn_ok(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// True when the cardId equals or contains the PAN, or is its SHA-256 digest in hex or base64.
fn card_id_reveals_pan(card_id: &str, pan: &str) -> bool {
    if card_id.contains(pan) {
        return true;
    }
    let digest = Sha256::digest(pan.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    card_id.eq_ignore_ascii_case(&hex)
        || [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .any(|engine| engine.encode(digest) == card_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_known_test_pans_and_rejects_a_changed_digit() {
        assert!(luhn_ok("4111111111111111"));
        assert!(luhn_ok("5555555555554444"));
        assert!(luhn_ok("378282246310005"));
        assert!(!luhn_ok("4111111111111112"));
    }

    #[test]
    fn card_data_keeps_only_last_four_and_expiry() {
        let facts = check_card_data(br#"{"pan":"4111111111111111","exp":"1229"}"#, "card-1").unwrap();
        assert_eq!(facts.last_four_digits, "1111");
        assert_eq!(facts.expiry, "1229");
        assert_eq!(facts.scheme_name, "VISA");
    }

    #[test]
    fn card_data_rules_name_the_broken_rule_without_the_pan() {
        let cases: [(&[u8], &str, &str); 6] = [
            (br#"{"pan":"4111111111111112","exp":"1229"}"#, "c1", "INVALID_PAN"),
            (br#"{"pan":"41111111111","exp":"1229"}"#, "c1", "INVALID_PAN"),
            (br#"{"pan":"4111111111111111","exp":"1329"}"#, "c1", "INVALID_EXPIRY"),
            (br#"{"pan":"4111111111111111"}"#, "c1", "INVALID_CARD_DATA"),
            (br#"{"pan":"4111111111111111","exp":"0129"}"#, "x4111111111111111", "INVALID_CARD_ID"),
            (b"not json 4111111111111111", "c1", "INVALID_CARD_DATA"),
        ];
        for (plaintext, card_id, code) in cases {
            let err = check_card_data(plaintext, card_id).unwrap_err();
            assert_eq!(err.error_code(), code);
            assert!(!err.to_string().contains("4111111111111111"));
        }
    }

    #[test]
    fn card_id_that_is_the_pan_digest_is_refused() {
        let digest = Sha256::digest(b"4111111111111111");
        let card_id = URL_SAFE_NO_PAD.encode(digest);
        let err = check_card_data(br#"{"pan":"4111111111111111","exp":"0129"}"#, &card_id).unwrap_err();
        assert_eq!(err.error_code(), "INVALID_CARD_ID");
    }

    #[test]
    fn identifiers_follow_the_d1_alphabet_and_lengths() {
        assert!(is_identifier("card_1-A", CARD_ID_MAX));
        assert!(!is_identifier("", CARD_ID_MAX));
        assert!(!is_identifier("card 1", CARD_ID_MAX));
        assert!(!is_identifier(&"a".repeat(49), CARD_ID_MAX));
        assert!(is_issuer_id("ISSUER0001"));
        assert!(!is_issuer_id("ISSUER001"));
    }
}
