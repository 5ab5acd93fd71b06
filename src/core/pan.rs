//! The clear card number and expiry, and the rule that a `cardId` must not be derived from the PAN.
//!
//! `Pan` zeroizes its digits on drop, prints a mask in `Debug` and `Display`, and implements no
//! `Serialize`: the only way to read the digits is `expose()`, used at the moment of validation and
//! re-encryption. Errors here never contain the digits.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use md5::Digest as _;
use zeroize::{Zeroize, Zeroizing};

/// Why card data was rejected. Never carries the card data itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardDataError {
    /// The PAN is not 12..19 ASCII digits.
    #[error("pan must be 12..19 digits")]
    PanFormat,
    /// The PAN fails the Luhn check.
    #[error("pan fails the Luhn check")]
    PanLuhn,
    /// `exp` is not `MMYY` with a month 01..12.
    #[error("exp must be MMYY with month 01..12")]
    Expiry,
    /// The decrypted payload is not the JSON object `{"pan","exp"}`.
    #[error("card data must be a JSON object with string fields pan and exp")]
    Payload,
}

/// A clear primary account number: 12..19 digits passing Luhn. Zeroized on drop, never printed.
pub struct Pan(Zeroizing<String>);

impl Pan {
    /// Checks length, digits and Luhn; takes ownership so the input is zeroized with the `Pan`.
    pub fn parse(digits: String) -> Result<Self, CardDataError> {
        let digits = Zeroizing::new(digits);
        let len = digits.len();
        if !(12..=19).contains(&len) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardDataError::PanFormat);
        }
        if !luhn_valid(&digits) {
            return Err(CardDataError::PanLuhn);
        }
        Ok(Self(digits))
    }

    /// The digits. Call only to validate or re-encrypt, never to log or store.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four digits, which D1 and PCI DSS allow to be shown.
    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan(****{})", self.last4())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "****{}", self.last4())
    }
}

/// The Luhn (mod 10) check over ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b.wrapping_sub(b'0'));
        if d > 9 {
            return false;
        }
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Card expiry as `MMYY`, month 01..12.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    year: u8,
}

impl Expiry {
    /// Parses `MMYY`.
    pub fn parse(s: &str) -> Result<Self, CardDataError> {
        let b = s.as_bytes();
        if b.len() != 4 || !b.iter().all(u8::is_ascii_digit) {
            return Err(CardDataError::Expiry);
        }
        let month = (b[0] - b'0') * 10 + (b[1] - b'0');
        let year = (b[2] - b'0') * 10 + (b[3] - b'0');
        if !(1..=12).contains(&month) {
            return Err(CardDataError::Expiry);
        }
        Ok(Self { month, year })
    }

    /// The `MMYY` text.
    pub fn as_mmyy(&self) -> String {
        format!("{:02}{:02}", self.month, self.year)
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Card data: masked like `Pan`, whose expiry it is.
        f.write_str("Expiry(**/**)")
    }
}

/// The plaintext of `encryptedCard` / `encryptedData`: `{"pan","exp"}`. Not `Serialize`.
#[derive(Debug)]
pub struct CardData {
    /// The clear PAN.
    pub pan: Pan,
    /// The expiry.
    pub exp: Expiry,
}

impl CardData {
    /// Parses the decrypted JSON; the input buffer is the caller's to zeroize.
    pub fn from_json(plaintext: &[u8]) -> Result<Self, CardDataError> {
        #[derive(serde::Deserialize, Zeroize)]
        #[zeroize(drop)]
        struct Raw {
            pan: String,
            exp: String,
        }
        let mut raw: Raw = serde_json::from_slice(plaintext).map_err(|_| CardDataError::Payload)?;
        let pan = Pan::parse(std::mem::take(&mut raw.pan))?;
        let exp = Expiry::parse(&raw.exp)?;
        Ok(Self { pan, exp })
    }

    /// The JSON plaintext for re-encryption toward D1, in a buffer zeroized on drop.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(48));
        out.extend_from_slice(b"{\"pan\":\"");
        out.extend_from_slice(self.pan.expose().as_bytes());
        out.extend_from_slice(b"\",\"exp\":\"");
        out.extend_from_slice(self.exp.as_mmyy().as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }
}

/// Masks every run of 12..19 digits that passes Luhn (a possible PAN) in text that comes from
/// outside (e.g. an error body from D1) before it is logged or stored.
pub fn mask_pan_like(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let run = &text[start..i];
        if (12..=19).contains(&run.len()) && luhn_valid(run) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..start]);
            o.push_str("[masked]");
            copied = i;
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// How a `cardId` was found to come from the PAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanDerivation {
    /// The cardId is the PAN.
    Equal,
    /// The cardId contains the PAN.
    Contains,
    /// The cardId is a digest of the PAN (MD5, SHA-1, SHA-256 or SHA-512, hex or base64).
    Digest,
}

/// Whether `card_id` is the PAN, contains it, or is a common digest of it in hex (either case) or
/// base64 / base64url (padded or not).
pub fn card_id_derivation(card_id: &str, pan: &Pan) -> Option<PanDerivation> {
    let digits = pan.expose();
    if card_id == digits {
        return Some(PanDerivation::Equal);
    }
    if card_id.contains(digits) {
        return Some(PanDerivation::Contains);
    }
    // Digests are at least 16 bytes: 22 base64 characters, 32 hex characters.
    if card_id.len() < 22 {
        return None;
    }
    let p = digits.as_bytes();
    let digests: [Zeroizing<Vec<u8>>; 4] = [
        Zeroizing::new(md5::Md5::digest(p).to_vec()),
        Zeroizing::new(sha1::Sha1::digest(p).to_vec()),
        Zeroizing::new(sha2::Sha256::digest(p).to_vec()),
        Zeroizing::new(sha2::Sha512::digest(p).to_vec()),
    ];
    for d in &digests {
        if card_id.eq_ignore_ascii_case(&hex::encode(d.as_slice())) {
            return Some(PanDerivation::Digest);
        }
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if card_id == engine.encode(d.as_slice()) {
                return Some(PanDerivation::Digest);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISA: &str = "4111111111111111";

    fn pan(s: &str) -> Pan {
        Pan::parse(s.to_owned()).unwrap()
    }

    #[test]
    fn luhn_accepts_known_test_numbers_and_rejects_a_changed_digit() {
        for ok in [VISA, "5555555555554444", "378282246310005", "6011111111111117", "4000056655665556"] {
            assert!(luhn_valid(ok), "{ok}");
        }
        assert!(!luhn_valid("4111111111111112"));
    }

    #[test]
    fn pan_length_must_be_12_to_19_digits() {
        assert_eq!(Pan::parse("12345678903".into()).unwrap_err(), CardDataError::PanFormat);
        assert!(Pan::parse("123456789031".into()).is_ok()); // 12 digits, Luhn-valid
        assert_eq!(Pan::parse("4111 1111 1111 1111".into()).unwrap_err(), CardDataError::PanFormat);
        assert_eq!(Pan::parse("41111111111111111111".into()).unwrap_err(), CardDataError::PanFormat);
        assert_eq!(Pan::parse("4111111111111112".into()).unwrap_err(), CardDataError::PanLuhn);
    }

    #[test]
    fn pan_debug_and_display_are_masked() {
        let p = pan(VISA);
        assert_eq!(format!("{p:?}"), "Pan(****1111)");
        assert_eq!(format!("{p}"), "****1111");
        let data = CardData { pan: p, exp: Expiry::parse("1229").unwrap() };
        let shown = format!("{data:?}");
        assert!(!shown.contains(VISA), "{shown}");
        // The expiry is card data too: neither MMYY nor its parts appear.
        assert_eq!(format!("{:?}", data.exp), "Expiry(**/**)");
        assert!(!shown.contains("12") && !shown.contains("29"), "{shown}");
    }

    #[test]
    fn expiry_is_mmyy_with_a_real_month() {
        assert_eq!(Expiry::parse("0130").unwrap().as_mmyy(), "0130");
        assert_eq!(Expiry::parse("1299").unwrap().as_mmyy(), "1299");
        for bad in ["0029", "1329", "129", "12/29", "ab29", "122029"] {
            assert_eq!(Expiry::parse(bad).unwrap_err(), CardDataError::Expiry, "{bad}");
        }
    }

    #[test]
    fn card_data_parses_the_contract_json_and_round_trips() {
        let d = CardData::from_json(br#"{"pan":"4111111111111111","exp":"1229"}"#).unwrap();
        assert_eq!(d.pan.expose(), VISA);
        let again = CardData::from_json(&d.to_json()).unwrap();
        assert_eq!(again.pan.expose(), VISA);
        assert_eq!(again.exp, d.exp);
        assert_eq!(CardData::from_json(b"[1]").unwrap_err(), CardDataError::Payload);
        assert_eq!(
            CardData::from_json(br#"{"pan":4111111111111111,"exp":"1229"}"#).unwrap_err(),
            CardDataError::Payload
        );
    }

    #[test]
    fn card_id_equal_to_or_containing_the_pan_is_detected() {
        let p = pan(VISA);
        assert_eq!(card_id_derivation(VISA, &p), Some(PanDerivation::Equal));
        assert_eq!(card_id_derivation(&format!("card-{VISA}"), &p), Some(PanDerivation::Contains));
        assert_eq!(card_id_derivation("card-4111", &p), None);
    }

    #[test]
    fn every_digest_form_of_the_pan_is_detected() {
        let p = pan(VISA);
        let b = VISA.as_bytes();
        let digests = [
            md5::Md5::digest(b).to_vec(),
            sha1::Sha1::digest(b).to_vec(),
            sha2::Sha256::digest(b).to_vec(),
            sha2::Sha512::digest(b).to_vec(),
        ];
        for d in digests {
            let mut forms = vec![hex::encode(&d), hex::encode_upper(&d)];
            for e in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                forms.push(e.encode(&d));
            }
            for f in forms {
                assert_eq!(card_id_derivation(&f, &p), Some(PanDerivation::Digest), "{f}");
            }
        }
        // A digest of another PAN is fine.
        let other = hex::encode(sha2::Sha256::digest(b"5555555555554444"));
        assert_eq!(card_id_derivation(&other, &p), None);
    }

    #[test]
    fn pan_like_digit_runs_are_masked_and_other_text_is_kept() {
        assert_eq!(mask_pan_like("card 4111111111111111 refused"), "card [masked] refused");
        assert_eq!(mask_pan_like("id 4111111111111112, code 12"), "id 4111111111111112, code 12");
        assert_eq!(mask_pan_like("5555555555554444/378282246310005"), "[masked]/[masked]");
        assert!(matches!(mask_pan_like("nothing here"), std::borrow::Cow::Borrowed(_)));
    }

    use proptest::prelude::*;

    /// Any 12..19-digit Luhn-valid PAN: random digits, then the check digit that makes it valid.
    fn any_pan() -> impl Strategy<Value = String> {
        proptest::collection::vec(0u8..10, 11..=18).prop_map(|body| {
            let mut digits: String = body.iter().map(|d| char::from(b'0' + d)).collect();
            let check = (0..10u8).find(|c| luhn_valid(&format!("{digits}{c}"))).unwrap_or(0);
            digits.push(char::from(b'0' + check));
            digits
        })
    }

    fn digest_forms(pan: &str) -> Vec<String> {
        let b = pan.as_bytes();
        let digests = [
            md5::Md5::digest(b).to_vec(),
            sha1::Sha1::digest(b).to_vec(),
            sha2::Sha256::digest(b).to_vec(),
            sha2::Sha512::digest(b).to_vec(),
        ];
        let mut forms = Vec::new();
        for d in digests {
            forms.push(hex::encode(&d));
            forms.push(hex::encode_upper(&d));
            for e in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                forms.push(e.encode(&d));
            }
        }
        forms
    }

    proptest! {
        #[test]
        fn every_pan_derived_card_id_form_is_detected(pan in any_pan(), prefix in "[a-z_-]{0,8}", suffix in "[a-z_-]{0,8}") {
            let p = Pan::parse(pan.clone()).unwrap();
            prop_assert!(card_id_derivation(&pan, &p).is_some());
            let wrapped = format!("{prefix}{pan}{suffix}");
            prop_assert!(card_id_derivation(&wrapped, &p).is_some());
            for form in digest_forms(&pan) {
                prop_assert_eq!(card_id_derivation(&form, &p), Some(PanDerivation::Digest));
            }
        }

        #[test]
        fn random_safe_card_ids_are_accepted(pan in any_pan(), id in "[A-Za-z_-][A-Za-z0-9_-]{0,47}") {
            let p = Pan::parse(pan.clone()).unwrap();
            // A random id only collides with the PAN if it happens to contain it.
            prop_assume!(!id.contains(&pan));
            prop_assert_eq!(card_id_derivation(&id, &p), None);
        }

        #[test]
        fn a_pan_anywhere_in_text_is_masked(pan in any_pan(), before in "[a-z :]{0,10}", after in "[a-z :]{0,10}") {
            let text = format!("{before}{pan}{after}");
            let masked = mask_pan_like(&text);
            prop_assert!(!masked.contains(&pan));
        }

        #[test]
        fn a_pan_never_appears_in_debug_or_display(pan in any_pan()) {
            let p = Pan::parse(pan.clone()).unwrap();
            let shown = format!("{p:?}{p}");
            prop_assert!(!shown.contains(&pan));
        }
    }
}
