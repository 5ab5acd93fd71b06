//! Unit tests for key loading, card-data decryption and encryption, and assertion signing.

use std::time::{Duration, SystemTime};

use josekit::jwe::{ECDH_ES, ECDH_ES_A256KW, JweHeader};
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};

use super::test_keys::{TestKey, jwk_set, write};
use super::*;
use crate::core::dead_letter::DeadLetterReason;
use crate::core::event::{EncryptedCard, SealedCardKey};
use crate::core::ids::IssuerId;
use crate::core::pan::CardData;

const CARD_JSON: &[u8] = br#"{"pan":"4111111111111111","exp":"1229"}"#;

fn card() -> CardData {
    CardData::from_json(CARD_JSON).unwrap()
}

fn keys_for(key: &TestKey) -> CardDataKeys {
    CardDataKeys::from_jwk_bytes(key.private_jwk().to_string().as_bytes()).unwrap()
}

fn recipient_for(key: &TestKey) -> RecipientKey {
    RecipientKey::from_jwk_bytes(key.public_jwk().to_string().as_bytes()).unwrap()
}

/// Encrypts arbitrary plaintext with a chosen header, bypassing `encrypt_card_data`'s rules.
fn raw_jwe(key: &TestKey, enc: &str, plaintext: &[u8]) -> EncryptedCard {
    let mut header = JweHeader::new();
    header.set_content_encryption(enc);
    header.set_key_id(key.kid.as_str());
    let encrypter = ECDH_ES.encrypter_from_jwk(&key.public_jwk()).unwrap();
    EncryptedCard::new(josekit::jwe::serialize_compact(plaintext, &header, &encrypter).unwrap())
}

#[test]
fn encrypted_card_data_decrypts_to_the_same_pan_and_expiry() {
    let key = TestKey::generate("card-k1");
    let jwe = encrypt_card_data(&card(), &recipient_for(&key)).unwrap();
    let back = keys_for(&key).decrypt(&EncryptedCard::new(jwe)).unwrap();
    assert_eq!(back.pan.expose(), "4111111111111111");
    assert_eq!(back.exp.as_mmyy(), "1229");
}

#[test]
fn encrypted_card_data_header_names_the_algorithms_and_the_recipient_kid() {
    let key = TestKey::generate("d1-kid-7");
    let jwe = encrypt_card_data(&card(), &recipient_for(&key)).unwrap();
    let header =
        josekit::jwe::deserialize_compact(&jwe, &ECDH_ES.decrypter_from_jwk(&key.private_jwk()).unwrap())
            .unwrap()
            .1;
    assert_eq!(header.algorithm(), Some("ECDH-ES"));
    assert_eq!(header.content_encryption(), Some("A256GCM"));
    assert_eq!(header.key_id(), Some("d1-kid-7"));
}

#[test]
fn decrypt_refuses_a_kid_that_is_not_ours() {
    let ours = TestKey::generate("ours");
    let theirs = TestKey::generate("theirs");
    let jwe = encrypt_card_data(&card(), &recipient_for(&theirs)).unwrap();
    let err = keys_for(&ours).decrypt(&EncryptedCard::new(jwe)).unwrap_err();
    assert_eq!(err, CardDataDecryptError::UnknownKey);
    assert_eq!(err.reason(), DeadLetterReason::UnknownCardDataKey);
}

#[test]
fn decrypt_refuses_a_jwe_made_with_another_key_under_our_kid() {
    let ours = TestKey::generate("k");
    let impostor = TestKey::generate("k");
    let jwe = encrypt_card_data(&card(), &recipient_for(&impostor)).unwrap();
    let err = keys_for(&ours).decrypt(&EncryptedCard::new(jwe)).unwrap_err();
    assert_eq!(err, CardDataDecryptError::Undecryptable(JweDefect::Decryption));
    assert_eq!(err.reason(), DeadLetterReason::UndecryptableCardData);
}

#[test]
fn decrypt_refuses_other_algorithms_before_using_a_key() {
    let key = TestKey::generate("k");
    let keys = keys_for(&key);
    let a128 = raw_jwe(&key, "A128GCM", CARD_JSON);
    assert_eq!(keys.decrypt(&a128).unwrap_err(), CardDataDecryptError::Undecryptable(JweDefect::Encryption));

    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    header.set_key_id("k");
    let kw = ECDH_ES_A256KW.encrypter_from_jwk(&key.public_jwk()).unwrap();
    let wrapped = EncryptedCard::new(josekit::jwe::serialize_compact(CARD_JSON, &header, &kw).unwrap());
    assert_eq!(
        keys.decrypt(&wrapped).unwrap_err(),
        CardDataDecryptError::Undecryptable(JweDefect::Algorithm)
    );
}

#[test]
fn decrypt_refuses_tampered_ciphertext_and_garbage() {
    let key = TestKey::generate("k");
    let keys = keys_for(&key);
    let jwe = encrypt_card_data(&card(), &recipient_for(&key)).unwrap();
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let flipped = if parts[3].starts_with('A') { "B" } else { "A" };
    parts[3].replace_range(0..1, flipped);
    let tampered = EncryptedCard::new(parts.join("."));
    assert_eq!(
        keys.decrypt(&tampered).unwrap_err(),
        CardDataDecryptError::Undecryptable(JweDefect::Decryption)
    );
    for garbage in ["", "a.b.c", "not-a-jwe", "....", "e30.....", "e30...."] {
        let err = keys.decrypt(&EncryptedCard::new(garbage.to_owned())).unwrap_err();
        assert_eq!(err.reason(), DeadLetterReason::UndecryptableCardData, "{garbage}");
    }
}

#[test]
fn decrypted_payload_errors_map_to_their_dead_letter_reasons() {
    let key = TestKey::generate("k");
    let keys = keys_for(&key);
    let cases: [(&[u8], DeadLetterReason); 4] = [
        (br#"{"pan":"4111111111111112","exp":"1229"}"#, DeadLetterReason::InvalidPan),
        (br#"{"pan":"41111","exp":"1229"}"#, DeadLetterReason::InvalidPan),
        (br#"{"pan":"4111111111111111","exp":"1329"}"#, DeadLetterReason::InvalidExpiry),
        (b"hello", DeadLetterReason::InvalidCardData),
    ];
    for (plaintext, reason) in cases {
        let err = keys.decrypt(&raw_jwe(&key, "A256GCM", plaintext)).unwrap_err();
        assert_eq!(err.reason(), reason);
        assert!(!err.to_string().contains("4111"));
    }
}

#[test]
fn a_jwk_set_with_two_kids_decrypts_for_both() {
    let (old, new) = (TestKey::generate("2024"), TestKey::generate("2025"));
    let keys =
        CardDataKeys::from_jwk_bytes(jwk_set(&[old.private_jwk(), new.private_jwk()]).as_bytes()).unwrap();
    assert_eq!(keys.kids().collect::<Vec<_>>(), ["2024", "2025"]);
    for key in [&old, &new] {
        let jwe = encrypt_card_data(&card(), &recipient_for(key)).unwrap();
        assert_eq!(keys.decrypt(&EncryptedCard::new(jwe)).unwrap().exp.as_mmyy(), "1229");
    }
}

#[test]
fn the_content_key_sealed_at_ingest_opens_the_stored_jwe_in_another_process_without_key_agreement() {
    let (old, new) = (TestKey::generate("2024"), TestKey::generate("2025"));
    let file = jwk_set(&[new.private_jwk(), old.private_jwk()]);
    let ingest = CardDataKeys::from_jwk_bytes(file.as_bytes()).unwrap();
    // Another worker (or this one after a restart) loads the same file: the same storage keys.
    let dispatch = CardDataKeys::from_jwk_bytes(file.as_bytes()).unwrap();
    for key in [&old, &new] {
        let jwe = EncryptedCard::new(encrypt_card_data(&card(), &recipient_for(key)).unwrap());
        let (at_ingest, sealed) = ingest.decrypt_sealing_key(&jwe).unwrap();
        let sealed = sealed.unwrap();
        assert_eq!(at_ingest.pan.expose(), "4111111111111111");
        // "v1." and base64url of nonce, key and tag; nothing of the key or the PAN in Debug.
        assert!(sealed.as_str().starts_with("v1.") && sealed.as_str().len() == 83, "{sealed:?}");
        assert_eq!(format!("{sealed:?}"), "SealedCardKey(83 bytes)");
        let (card, how) = dispatch.open_stored(&jwe, Some(&sealed)).unwrap();
        assert_eq!(how, StoredOpening::SealedKey);
        assert_eq!((card.pan.expose(), card.exp.as_mmyy()), ("4111111111111111", "1229".to_owned()));
        // A row queued before sealed keys existed is opened by key agreement.
        let (card, how) = dispatch.open_stored(&jwe, None).unwrap();
        assert_eq!((how, card.pan.last4()), (StoredOpening::KeyAgreement, "1111"));
    }
    // Each seal has its own nonce.
    let jwe = EncryptedCard::new(encrypt_card_data(&card(), &recipient_for(&new)).unwrap());
    let (first, second) = (
        ingest.decrypt_sealing_key(&jwe).unwrap().1.unwrap(),
        ingest.decrypt_sealing_key(&jwe).unwrap().1.unwrap(),
    );
    assert_ne!(first, second);
}

#[test]
fn a_sealed_content_key_opens_only_its_own_jwe_and_an_altered_one_falls_back_to_key_agreement() {
    let key = TestKey::generate("k1");
    let keys = keys_for(&key);
    let seal = |jwe: &EncryptedCard| keys.decrypt_sealing_key(jwe).unwrap().1.unwrap();
    let other_card = CardData::from_json(br#"{"pan":"5555555555554444","exp":"0731"}"#).unwrap();
    let (a, b) = (
        EncryptedCard::new(encrypt_card_data(&card(), &recipient_for(&key)).unwrap()),
        EncryptedCard::new(encrypt_card_data(&other_card, &recipient_for(&key)).unwrap()),
    );
    let sealed_a = seal(&a);
    // A's key moved onto B's row: refused (bound to A's header), and B opens by key agreement.
    let (opened, how) = keys.open_stored(&b, Some(&sealed_a)).unwrap();
    assert_eq!((how, opened.pan.last4()), (StoredOpening::SealedKeyRefused, "4444"));
    // Altered, truncated, padded, unversioned or sealed by another private key: refused alike.
    let text = sealed_a.as_str();
    let flipped = format!("{}{}", &text[..10], if &text[10..11] == "A" { "B" } else { "A" }) + &text[11..];
    let by_another_key = {
        let impostor = TestKey::generate("k1");
        let jwe = EncryptedCard::new(encrypt_card_data(&card(), &recipient_for(&impostor)).unwrap());
        keys_for(&impostor).decrypt_sealing_key(&jwe).unwrap().1.unwrap()
    };
    for bad in [
        SealedCardKey::new(flipped),
        SealedCardKey::new(text[..text.len() - 4].to_owned()),
        SealedCardKey::new(format!("{text}AAAA")),
        SealedCardKey::new(text.replacen("v1.", "v2.", 1)),
        SealedCardKey::new(text[3..].to_owned()),
        SealedCardKey::new(String::new()),
        by_another_key,
    ] {
        let (opened, how) = keys.open_stored(&a, Some(&bad)).unwrap();
        assert_eq!((how, opened.pan.last4()), (StoredOpening::SealedKeyRefused, "1111"), "{bad:?}");
    }
    // The sealed key does not make an altered ciphertext readable.
    let mut parts: Vec<String> = a.as_str().split('.').map(str::to_owned).collect();
    // One character changed (the last was 'A' once in 64 runs, which left it unaltered).
    let last = if parts[3].ends_with('A') { "B" } else { "A" };
    parts[3] = format!("{}{last}", &parts[3][..parts[3].len() - 1]);
    let tampered = EncryptedCard::new(parts.join("."));
    assert_ne!(tampered, a);
    assert_eq!(
        keys.open_stored(&tampered, Some(&sealed_a)).unwrap_err(),
        CardDataDecryptError::Undecryptable(JweDefect::Decryption)
    );
    // A kid we no longer hold is an unknown key whatever is stored beside it.
    let retired = keys_for(&TestKey::generate("k2"));
    assert_eq!(retired.open_stored(&a, Some(&sealed_a)).unwrap_err(), CardDataDecryptError::UnknownKey);
}

#[test]
fn card_data_keys_refuse_keys_without_kid_public_duplicate_or_off_curve() {
    let key = TestKey::generate("k");
    let mut no_kid = key.private_jwk();
    no_kid.set_key_id("");
    let p384 = {
        let mut pair = EcKeyPair::generate(EcCurve::P384).unwrap();
        pair.set_key_id(Some("big"));
        pair.to_jwk_key_pair()
    };
    let load = |s: String| CardDataKeys::from_jwk_bytes(s.as_bytes()).unwrap_err();
    assert!(matches!(load(no_kid.to_string()), KeyProblem::MissingKid { index: 0 }));
    assert!(matches!(load(key.public_jwk().to_string()), KeyProblem::NotPrivate { kid } if kid == "k"));
    assert!(matches!(
        load(jwk_set(&[key.private_jwk(), key.private_jwk()])),
        KeyProblem::DuplicateKid { .. }
    ));
    assert!(matches!(load(p384.to_string()), KeyProblem::NotP256 { kid } if kid == "big"));
    assert!(matches!(load(r#"{"keys":[]}"#.into()), KeyProblem::Empty));
    assert!(matches!(load("-----BEGIN".into()), KeyProblem::NotJwk));
}

#[test]
fn key_errors_name_the_file_and_debug_never_shows_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate("card-kid");
    let jwk = key.private_jwk();
    let d = jwk.parameter("d").and_then(|v| v.as_str()).unwrap().to_owned();
    let path = write(&dir, "card.jwk", jwk.to_string());
    let keys = CardDataKeys::from_file(&path).unwrap();
    let debug = format!("{keys:?}");
    assert_eq!(debug, r#"CardDataKeys { kids: ["card-kid"] }"#);
    assert!(!debug.contains(&d));

    let missing = dir.path().join("nope.jwk");
    let err = CardDataKeys::from_file(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.jwk"), "{err}");
    let public_path = write(&dir, "public.jwk", key.public_jwk().to_string());
    let err = CardDataKeys::from_file(&public_path).unwrap_err().to_string();
    assert!(err.contains("public.jwk") && err.contains("private key is required"), "{err}");
    let err = RecipientKey::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("private part") && !err.contains(&d), "{err}");
}

#[test]
fn assertion_key_loads_pkcs8_sec1_and_jwk_and_signs_a_verifiable_es256_jwt() {
    let key = TestKey::generate("auth-1");
    let issuer = IssuerId::parse("ISSUER0001").unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let verifier = josekit::jws::ES256.verifier_from_jwk(&key.public_jwk()).unwrap();
    for bytes in [key.pkcs8_pem(), key.sec1_pem(), key.private_jwk().to_string().into_bytes()] {
        let signing = AssertionKey::from_bytes(&bytes, "auth-1".into()).unwrap();
        let jwt = signing.sign_assertion(&issuer, Some("https://d1.example"), now).unwrap();
        let (claims, header) = josekit::jwt::decode_with_verifier(&jwt, &verifier).unwrap();
        assert_eq!(header.algorithm(), Some("ES256"));
        assert_eq!(header.key_id(), Some("auth-1"));
        assert_eq!(claims.issuer(), Some("ISSUER0001"));
        assert_eq!(claims.subject(), Some("ISSUER0001"));
        assert_eq!(claims.audience(), Some(vec!["https://d1.example"]));
        assert_eq!(claims.claim("iat"), Some(&serde_json::json!(1_700_000_000u64)));
        assert_eq!(claims.claim("exp"), Some(&serde_json::json!(1_700_000_300u64)));
        assert_eq!(format!("{signing:?}"), r#"AssertionKey { kid: "auth-1" }"#);
    }
}

#[test]
fn each_assertion_has_a_fresh_jti_and_no_aud_unless_asked() {
    let key = TestKey::generate("a");
    let signing = AssertionKey::from_bytes(&key.pkcs8_pem(), "a".into()).unwrap();
    let issuer = IssuerId::parse("ISSUER0001").unwrap();
    let verifier = josekit::jws::ES256.verifier_from_jwk(&key.public_jwk()).unwrap();
    let decode = |jwt: &str| josekit::jwt::decode_with_verifier(jwt, &verifier).unwrap().0;
    let a = decode(&signing.sign_assertion(&issuer, None, SystemTime::now()).unwrap());
    let b = decode(&signing.sign_assertion(&issuer, None, SystemTime::now()).unwrap());
    assert_ne!(a.jwt_id(), b.jwt_id());
    assert!(a.jwt_id().is_some());
    assert_eq!(a.audience(), None);
}

#[test]
fn assertion_key_refuses_a_jwk_with_another_kid_and_a_non_key() {
    let key = TestKey::generate("in-file");
    let err = AssertionKey::from_bytes(key.private_jwk().to_string().as_bytes(), "configured".into());
    assert!(matches!(err, Err(KeyProblem::KidMismatch { .. })));
    let err = AssertionKey::from_bytes(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "k".into(),
    );
    assert!(matches!(err, Err(KeyProblem::NotPemOrJwk)));
    let err = AssertionKey::from_bytes(key.public_jwk().to_string().as_bytes(), "in-file".into());
    assert!(matches!(err, Err(KeyProblem::NotPrivate { .. })));
}

/// A josekit-made card-data JWE whose protected header is rewritten by `edit` (the tag no longer
/// matches, but every check before the tag must refuse the header first).
fn with_header(key: &TestKey, edit: impl FnOnce(&mut serde_json::Value)) -> EncryptedCard {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let jwe = raw_jwe(key, "A256GCM", CARD_JSON);
    let mut parts: Vec<String> = jwe.as_str().split('.').map(str::to_owned).collect();
    let mut header: serde_json::Value = serde_json::from_slice(&B64.decode(&parts[0]).unwrap()).unwrap();
    edit(&mut header);
    parts[0] = B64.encode(header.to_string());
    EncryptedCard::new(parts.join("."))
}

fn defect(keys: &CardDataKeys, jwe: &EncryptedCard) -> JweDefect {
    match keys.decrypt(jwe) {
        Err(CardDataDecryptError::Undecryptable(d)) => d,
        other => panic!("expected an undecryptable JWE, got {:?}", other.map(|_| "card data")),
    }
}

#[test]
fn the_fast_path_refuses_crit_zip_foreign_curves_and_points_off_the_curve() {
    let key = TestKey::generate("k");
    let keys = keys_for(&key);
    let crit = with_header(&key, |h| h["crit"] = serde_json::json!(["exp"]));
    assert_eq!(defect(&keys, &crit), JweDefect::Critical);
    let zip = with_header(&key, |h| h["zip"] = serde_json::json!("DEF"));
    assert_eq!(defect(&keys, &zip), JweDefect::Compression);
    let no_kid = with_header(&key, |h| {
        h.as_object_mut().unwrap().remove("kid");
    });
    assert_eq!(defect(&keys, &no_kid), JweDefect::MissingKid);
    let p384 = with_header(&key, |h| h["epk"]["crv"] = serde_json::json!("P-384"));
    assert_eq!(defect(&keys, &p384), JweDefect::Parameter);
    // (x, y + 1) is not on the curve: an invalid-curve point must never reach the multiplication.
    let off_curve = with_header(&key, |h| {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let mut y = B64.decode(h["epk"]["y"].as_str().unwrap()).unwrap();
        y[31] ^= 0x01;
        h["epk"]["y"] = serde_json::json!(B64.encode(y));
    });
    assert_eq!(defect(&keys, &off_curve), JweDefect::Parameter);
    let short_x = with_header(&key, |h| h["epk"]["x"] = serde_json::json!("AAAA"));
    assert_eq!(defect(&keys, &short_x), JweDefect::Parameter);
    let no_epk = with_header(&key, |h| {
        h.as_object_mut().unwrap().remove("epk");
    });
    assert_eq!(defect(&keys, &no_epk), JweDefect::Parameter);
    let bad_apu = with_header(&key, |h| h["apu"] = serde_json::json!("not base64!"));
    assert_eq!(defect(&keys, &bad_apu), JweDefect::Parameter);
}

#[test]
fn the_fast_path_refuses_a_wrapped_key_odd_iv_or_tag_sizes_and_oversized_tokens() {
    let key = TestKey::generate("k");
    let keys = keys_for(&key);
    let good = raw_jwe(&key, "A256GCM", CARD_JSON);
    let parts: Vec<&str> = good.as_str().split('.').collect();
    let with = |i: usize, value: &str| {
        let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        p[i] = value.to_owned();
        EncryptedCard::new(p.join("."))
    };
    assert_eq!(defect(&keys, &with(1, "AAAA")), JweDefect::NotCompact, "a wrapped key");
    assert_eq!(defect(&keys, &with(2, "AAAAAAAAAAAAAAAAAAAA")), JweDefect::NotCompact, "a 96-bit IV only");
    assert_eq!(
        defect(&keys, &with(4, "AAAAAAAAAAAAAAAAAAAAAA")),
        JweDefect::Decryption,
        "16-byte tag, wrong"
    );
    assert_eq!(defect(&keys, &with(4, "AAAA")), JweDefect::NotCompact, "a 128-bit tag only");
    assert_eq!(defect(&keys, &with(3, "@@@@")), JweDefect::NotCompact, "ciphertext not base64url");
    let huge = with(3, &"A".repeat(70_000));
    assert_eq!(defect(&keys, &huge), JweDefect::TooLarge);
    assert_eq!(defect(&keys, &EncryptedCard::new(format!("{}.x", good.as_str()))), JweDefect::NotCompact);
    // The untouched token still opens.
    assert_eq!(keys.decrypt(&good).unwrap().pan.last4(), "1111");
}

#[test]
fn a_key_whose_public_part_does_not_match_its_private_part_is_refused_at_load() {
    let (a, b) = (TestKey::generate("k"), TestKey::generate("k"));
    let mut jwk = a.private_jwk();
    let d = b.private_jwk().parameter("d").unwrap().clone();
    jwk.set_parameter("d", Some(d)).unwrap();
    let err = CardDataKeys::from_jwk_bytes(jwk.to_string().as_bytes()).unwrap_err();
    assert!(matches!(&err, KeyProblem::Unusable { kid } if kid == "k"), "{err:?}");
}
