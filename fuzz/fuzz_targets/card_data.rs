//! Card data on untrusted bytes: `encryptedCard` as any compact JWE text, and any plaintext
//! properly encrypted to our key, through decryption, `{"pan","exp"}` parsing and the cardId
//! checks, and any text as the content key stored beside it. Must never panic, and the content
//! key sealed at decryption must open the same card data.

#![no_main]

use std::sync::LazyLock;

use card_registrar::core::event::{CardCreated, EncryptedCard, EventMeta, InitialState, SealedCardKey};
use card_registrar::core::ids::{CardId, CardProductId, ConsumerId, EventId};
use card_registrar::core::pan::CardData;
use card_registrar::core::validate::{CardIdPolicy, validate_created};
use card_registrar::crypto::{CardDataKeys, RecipientKey, StoredOpening, encrypt_bytes};
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<(CardDataKeys, RecipientKey)> = LazyLock::new(|| {
    let mut pair = EcKeyPair::generate(EcCurve::P256).expect("P-256 key");
    pair.set_key_id(Some("fuzz-1"));
    let private = pair.to_jwk_key_pair().to_string();
    let public = pair.to_jwk_public_key().to_string();
    (
        CardDataKeys::from_jwk_bytes(private.as_bytes()).expect("private JWK"),
        RecipientKey::from_jwk_bytes(public.as_bytes()).expect("public JWK"),
    )
});

fn created(card_id: &str, jwe: String) -> Option<CardCreated> {
    Some(CardCreated {
        meta: EventMeta {
            event_id: EventId::from_uuid(Default::default()),
            occurred_at: chrono::DateTime::UNIX_EPOCH,
            card_id: CardId::parse(card_id).ok()?,
            consumer_id: ConsumerId::parse("consumer-1").ok()?,
        },
        card_product_id: CardProductId::parse("product-1").ok()?,
        encrypted_card: EncryptedCard::new(jwe),
        initial_state: InitialState::Active,
    })
}

fuzz_target!(|data: &[u8]| {
    let (keys, recipient) = &*KEYS;
    let Some((&control, rest)) = data.split_first() else { return };
    let policy = CardIdPolicy { allow_numeric: control & 0x02 != 0 };
    // The first line of the rest is a cardId candidate; the remainder is the JWE or plaintext.
    let (card_id, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&rest[..i]).into_owned(), &rest[i + 1..]),
        None => ("card-1".to_owned(), rest),
    };
    let _ = policy.refuses(&card_id);
    let _ = CardData::from_json(body);
    let jwe = if control & 0x01 == 0 {
        String::from_utf8_lossy(body).into_owned()
    } else {
        match encrypt_bytes(body, recipient) {
            Ok(jwe) => jwe,
            Err(_) => return,
        }
    };
    let encrypted = EncryptedCard::new(jwe.clone());
    // The first line also stands for a stored `cardKey`: any text beside any JWE.
    let _ = keys.open_stored(&encrypted, Some(&SealedCardKey::new(card_id.clone())));
    if let Ok((card, sealed)) = keys.decrypt_sealing_key(&encrypted) {
        let sealed = sealed.expect("the system's random source works");
        let (stored, how) = keys.open_stored(&encrypted, Some(&sealed)).expect("its own sealed key opens it");
        assert_eq!(how, StoredOpening::SealedKey);
        assert_eq!((stored.pan.expose(), stored.exp.as_mmyy()), (card.pan.expose(), card.exp.as_mmyy()));
        if let Some(event) = created(&card_id, jwe) {
            let _ = validate_created(event, &card, policy);
        }
    }
});
