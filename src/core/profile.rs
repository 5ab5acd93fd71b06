//! Consumer profiles: the end user's personal data that D1 fetches through Get Consumer Info.
//!
//! [`ConsumerInfo`] is exactly the JSON body of D1's Get Consumer Info answer; it is what gets
//! sealed at rest and what the issuer API returns. Its `Debug` shows nothing, and a refused field
//! is named, never echoed. No I/O.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{ConsumerId, EventId};

/// `mobilePhoneNumber`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MobilePhoneNumber {
    /// International prefix with its plus sign, e.g. `+33`.
    pub country_code: String,
    /// National number, digits only.
    pub phone_number: String,
}

/// `residencyAddress`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResidencyAddress {
    /// First address line.
    pub line1: String,
    /// Postal code.
    pub zip_code: String,
    /// City.
    pub city: String,
    /// ISO 3166 country code, 2 or 3 letters.
    pub country_code: String,
}

/// The consumer information D1 receives: the Get Consumer Info body. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerInfo {
    /// `xx-XX`, e.g. `en-US`.
    pub language: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Mobile phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile_phone_number: Option<MobilePhoneNumber>,
    /// `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    /// Residency address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency_address: Option<ResidencyAddress>,
}

impl fmt::Debug for ConsumerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsumerInfo([personal data redacted])")
    }
}

impl fmt::Debug for MobilePhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MobilePhoneNumber([redacted])")
    }
}

impl fmt::Debug for ResidencyAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResidencyAddress([redacted])")
    }
}

/// A field of a profile breaks its rule; names the field and the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct ProfileDefect {
    /// The field, in the Avro/JSON spelling.
    pub field: &'static str,
    /// The rule it breaks.
    pub rule: &'static str,
}

/// Longest free-text field (names, e-mail, address lines) accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

fn defect(field: &'static str, rule: &'static str) -> ProfileDefect {
    ProfileDefect { field, rule }
}

fn text(field: &'static str, value: &str) -> Result<(), ProfileDefect> {
    if value.trim().is_empty() {
        return Err(defect(field, "is empty"));
    }
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(defect(field, "is longer than 256 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(defect(field, "holds control characters"));
    }
    Ok(())
}

impl ConsumerInfo {
    /// Checks every field against D1's rules (language `^[a-z]{2}-[a-zA-Z]{2}$`, date
    /// `YYYY-MM-DD`, phone digits) and bounds every text.
    pub fn validate(&self) -> Result<(), ProfileDefect> {
        let l = self.language.as_bytes();
        let language_ok = l.len() == 5
            && l[..2].iter().all(u8::is_ascii_lowercase)
            && l[2] == b'-'
            && l[3..].iter().all(u8::is_ascii_alphabetic);
        if !language_ok {
            return Err(defect("language", "is not xx-XX (e.g. en-US)"));
        }
        text("firstName", &self.first_name)?;
        text("lastName", &self.last_name)?;
        if let Some(email) = &self.email {
            text("email", email)?;
            let at = email.find('@');
            if !at.is_some_and(|i| i > 0 && i + 1 < email.len()) || email.contains(char::is_whitespace) {
                return Err(defect("email", "is not an address"));
            }
        }
        if let Some(phone) = &self.mobile_phone_number {
            let cc = phone.country_code.as_bytes();
            if !(2..=5).contains(&cc.len()) || cc[0] != b'+' || !cc[1..].iter().all(u8::is_ascii_digit) {
                return Err(defect("mobilePhoneNumber.countryCode", "is not + and 1..4 digits"));
            }
            let n = phone.phone_number.as_bytes();
            if !(4..=15).contains(&n.len()) || !n.iter().all(u8::is_ascii_digit) {
                return Err(defect("mobilePhoneNumber.phoneNumber", "is not 4..15 digits"));
            }
        }
        if let Some(date) = &self.date_of_birth {
            let parsed =
                (date.len() == 10).then(|| NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()).flatten();
            if parsed.is_none() {
                return Err(defect("dateOfBirth", "is not a date YYYY-MM-DD"));
            }
        }
        if let Some(address) = &self.residency_address {
            text("residencyAddress.line1", &address.line1)?;
            text("residencyAddress.zipCode", &address.zip_code)?;
            text("residencyAddress.city", &address.city)?;
            let c = address.country_code.as_bytes();
            if !(2..=3).contains(&c.len()) || !c.iter().all(u8::is_ascii_uppercase) {
                return Err(defect("residencyAddress.countryCode", "is not 2 or 3 capital letters"));
            }
        }
        Ok(())
    }
}

/// One message of the consumer-profile topic, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileChange {
    /// The profile as of `occurred_at` (boxed: far larger than an erasure).
    Upsert(Box<ConsumerProfile>),
    /// A tombstone: erase everything kept about the consumer's personal data.
    Erase(ConsumerId),
}

impl ProfileChange {
    /// The consumer it is about.
    pub fn consumer_id(&self) -> &ConsumerId {
        match self {
            Self::Upsert(p) => &p.consumer_id,
            Self::Erase(c) => c,
        }
    }
}

/// A `ConsumerProfile` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerProfile {
    /// `eventId`.
    pub event_id: EventId,
    /// `occurredAt`.
    pub occurred_at: DateTime<Utc>,
    /// `consumerId`, also the message key.
    pub consumer_id: ConsumerId,
    /// The personal data.
    pub info: ConsumerInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ConsumerInfo {
        ConsumerInfo {
            language: "fr-FR".into(),
            first_name: "Camille".into(),
            last_name: "Durand".into(),
            email: Some("camille.durand@example.org".into()),
            mobile_phone_number: Some(MobilePhoneNumber {
                country_code: "+33".into(),
                phone_number: "612345678".into(),
            }),
            date_of_birth: Some("1984-02-29".into()),
            residency_address: Some(ResidencyAddress {
                line1: "1 rue de la Paix".into(),
                zip_code: "75002".into(),
                city: "Paris".into(),
                country_code: "FR".into(),
            }),
        }
    }

    #[test]
    fn a_complete_profile_is_valid_and_serialises_as_d1_names_its_fields() {
        let info = sample();
        assert_eq!(info.validate(), Ok(()));
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["mobilePhoneNumber"]["countryCode"], "+33");
        assert_eq!(json["residencyAddress"]["zipCode"], "75002");
        assert_eq!(json["dateOfBirth"], "1984-02-29");
        assert_eq!(json["firstName"], "Camille");
    }

    #[test]
    fn optional_fields_are_left_out_when_unknown() {
        let info = ConsumerInfo {
            email: None,
            mobile_phone_number: None,
            date_of_birth: None,
            residency_address: None,
            ..sample()
        };
        assert_eq!(info.validate(), Ok(()));
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains("email") && !json.contains("dateOfBirth"), "{json}");
    }

    #[test]
    fn each_broken_rule_names_its_field_but_never_the_value() {
        let cases: Vec<(ConsumerInfo, &str)> = vec![
            (ConsumerInfo { language: "fr_FR".into(), ..sample() }, "language"),
            (ConsumerInfo { language: "FR-fr".into(), ..sample() }, "language"),
            (ConsumerInfo { first_name: " ".into(), ..sample() }, "firstName"),
            (ConsumerInfo { last_name: "Du\nrand".into(), ..sample() }, "lastName"),
            (ConsumerInfo { last_name: "x".repeat(257), ..sample() }, "lastName"),
            (ConsumerInfo { email: Some("camille.example.org".into()), ..sample() }, "email"),
            (ConsumerInfo { date_of_birth: Some("1985-02-29".into()), ..sample() }, "dateOfBirth"),
            (ConsumerInfo { date_of_birth: Some("84-2-9".into()), ..sample() }, "dateOfBirth"),
            (
                ConsumerInfo {
                    mobile_phone_number: Some(MobilePhoneNumber {
                        country_code: "33".into(),
                        phone_number: "612345678".into(),
                    }),
                    ..sample()
                },
                "mobilePhoneNumber.countryCode",
            ),
            (
                ConsumerInfo {
                    mobile_phone_number: Some(MobilePhoneNumber {
                        country_code: "+33".into(),
                        phone_number: "06 12".into(),
                    }),
                    ..sample()
                },
                "mobilePhoneNumber.phoneNumber",
            ),
        ];
        for (info, field) in cases {
            let err = info.validate().unwrap_err();
            assert_eq!(err.field, field);
            for secret in ["Camille", "Durand", "1985", "06 12", "camille"] {
                assert!(!err.to_string().contains(secret), "{err}");
            }
        }
    }

    #[test]
    fn debug_shows_no_personal_data() {
        let info = sample();
        let shown = format!("{info:?} {:?} {:?}", info.mobile_phone_number, info.residency_address);
        for secret in ["Camille", "Durand", "612345678", "1984", "Paix", "camille.durand"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
