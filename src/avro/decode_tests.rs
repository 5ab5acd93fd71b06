//! Tests of the decoder: schema evolution, framing, every failure reason, registry use, and
//! property tests (round trip in both framings; arbitrary bytes never panic).

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use proptest::prelude::*;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::decode::{
    DecodeError, DecodeFailure, Decoder, Frame, MAX_ALLOCATION_BYTES, decode_datum, split_frame,
};
use super::encode::{Framing, encode, encode_version};
use super::registry::{HttpSchemaRegistry, RegisteredSchema, RegistryError, SchemaRegistry};
use super::schemas::{Fingerprint, ParsedSchema, SchemaSet};
use crate::core::dead_letter::DeadLetterReason;
use crate::core::event::{
    CardCreated, CardEvent, CardOrdered, CardTokenized, EncryptedCard, EventKind, EventMeta, InitialState,
    OrderOutcome, TokenizationOutcome,
};
use crate::core::ids::{CardId, CardProductId, ConsumerId, EventId};

const PAN: &str = "4111111111111111";
const KINDS: [EventKind; 3] = [EventKind::Created, EventKind::Tokenized, EventKind::Ordered];

fn schemas() -> Arc<SchemaSet> {
    Arc::new(SchemaSet::embedded().unwrap())
}

fn local() -> Decoder {
    Decoder::new(schemas(), None)
}

fn meta(card: &str) -> EventMeta {
    EventMeta {
        event_id: EventId::from_uuid(Uuid::from_u128(0x0b6f_8f0e_4a5e_4b8e_9d0c_3f1f_5f2c_9a10)),
        occurred_at: DateTime::from_timestamp_millis(1_750_000_000_123).unwrap(),
        card_id: CardId::parse(card).unwrap(),
        consumer_id: ConsumerId::parse("consumer-1").unwrap(),
    }
}

fn created(initial_state: InitialState) -> CardEvent {
    CardEvent::Created(CardCreated {
        meta: meta("card-1"),
        card_product_id: CardProductId::parse("product-1").unwrap(),
        encrypted_card: EncryptedCard::new("h.k.iv.ct.tag".into()),
        initial_state,
    })
}

fn tokenized(token_requestor_id: Option<&str>) -> CardEvent {
    CardEvent::Tokenized(CardTokenized {
        meta: meta("card-1"),
        outcome: TokenizationOutcome::Approved,
        digital_card_id: Some("dc-1".into()),
        token_requestor_id: token_requestor_id.map(str::to_owned),
    })
}

fn ordered() -> CardEvent {
    CardEvent::Ordered(CardOrdered {
        meta: meta("card-1"),
        outcome: OrderOutcome::Rejected,
        card_product_id: Some(CardProductId::parse("product-2").unwrap()),
        order_id: None,
    })
}

fn sample(kind: EventKind) -> CardEvent {
    match kind {
        EventKind::Created => created(InitialState::Inactive),
        EventKind::Tokenized => tokenized(Some("wallet-1")),
        EventKind::Ordered => ordered(),
        EventKind::Profile => panic!("the consumer-profile topic carries no card event"),
    }
}

/// The event as a reader of the newest schema sees it after it was written with `version`.
fn as_written_by(event: CardEvent, version: u32) -> CardEvent {
    match (event, version) {
        (CardEvent::Created(c), 1) => {
            CardEvent::Created(CardCreated { initial_state: InitialState::Active, ..c })
        }
        (CardEvent::Tokenized(t), 1) => CardEvent::Tokenized(CardTokenized { token_requestor_id: None, ..t }),
        (e, _) => e,
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

fn invalid(result: Result<CardEvent, DecodeFailure>) -> DecodeError {
    match result {
        Err(DecodeFailure::Invalid(e)) => e,
        other => panic!("expected an invalid message, got {other:?}"),
    }
}

fn decode_local(kind: EventKind, payload: &[u8]) -> Result<CardEvent, DecodeFailure> {
    block_on(local().decode(kind, Some(b"card-1"), payload))
}

/// A tokenized record (newest schema's fields) with the given values.
fn tokenized_value(event_id: &str, card_id: &str, occurred_at: i64, outcome: Value) -> Value {
    Value::Record(vec![
        ("eventId".into(), Value::String(event_id.into())),
        ("occurredAt".into(), Value::TimestampMillis(occurred_at)),
        ("cardId".into(), Value::String(card_id.into())),
        ("consumerId".into(), Value::String("consumer-1".into())),
        ("outcome".into(), outcome),
        ("digitalCardId".into(), Value::Union(0, Box::new(Value::Null))),
        ("tokenRequestorId".into(), Value::Union(0, Box::new(Value::Null))),
    ])
}

/// A tokenized message in the newest schema, single-object framed, with the given strings.
fn raw_tokenized(event_id: &str, card_id: &str, occurred_at: i64) -> Vec<u8> {
    let approved = Value::Enum(0, "APPROVED".into());
    single_object(
        &schemas().reader(EventKind::Tokenized).schema,
        &tokenized_value(event_id, card_id, occurred_at, approved),
    )
}

fn single_object(writer: &ParsedSchema, value: &Value) -> Vec<u8> {
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&writer.fingerprint().0);
    GenericDatumWriter::builder(writer.schema()).build().unwrap().write_value_ref(&mut out, value).unwrap();
    out
}

#[test]
fn the_newest_reader_resolves_every_older_writer_version_with_defaults() {
    let set = schemas();
    for kind in KINDS {
        for v in set.versions(kind) {
            let payload = encode_version(&set, &sample(kind), v.version, Framing::SingleObject).unwrap();
            let decoded = decode_local(kind, &payload).unwrap();
            assert_eq!(decoded, as_written_by(sample(kind), v.version), "{kind:?} v{}", v.version);
        }
    }
}

#[test]
fn a_v1_card_created_reads_as_active_and_a_v1_card_tokenized_has_no_requestor() {
    let set = schemas();
    let old = encode_version(&set, &created(InitialState::Inactive), 1, Framing::SingleObject).unwrap();
    let CardEvent::Created(c) = decode_local(EventKind::Created, &old).unwrap() else { panic!() };
    assert_eq!(c.initial_state, InitialState::Active);
    let old = encode_version(&set, &tokenized(Some("wallet-1")), 1, Framing::SingleObject).unwrap();
    let CardEvent::Tokenized(t) = decode_local(EventKind::Tokenized, &old).unwrap() else { panic!() };
    assert_eq!((t.token_requestor_id, t.digital_card_id.as_deref()), (None, Some("dc-1")));
}

#[test]
fn framing_is_detected_from_the_first_bytes() {
    let body = [9u8, 9];
    let mut confluent = vec![0x00, 0, 0, 1, 2];
    confluent.extend_from_slice(&body);
    assert_eq!(split_frame(&confluent), Ok(Frame::Confluent { schema_id: 258, body: &body }));
    let mut single = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    single.extend_from_slice(&body);
    let fingerprint = Fingerprint([1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(split_frame(&single), Ok(Frame::SingleObject { fingerprint, body: &body }));
}

#[test]
fn an_unknown_first_byte_or_marker_is_unknown_framing() {
    for payload in [&b"{\"cardId\":1}"[..], &[0x01, 0, 0, 0, 1], &[0xC3, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]] {
        assert_eq!(split_frame(payload).unwrap_err().reason, DeadLetterReason::UnknownFraming);
    }
}

#[test]
fn a_header_cut_short_is_truncated() {
    for payload in [&[][..], &[0x00, 0, 0], &[0xC3], &[0xC3, 0x01, 1, 2, 3]] {
        assert_eq!(split_frame(payload).unwrap_err().reason, DeadLetterReason::Truncated, "{payload:?}");
    }
}

#[test]
fn an_unknown_fingerprint_is_unknown_schema() {
    let mut payload = encode(&schemas(), &ordered(), Framing::SingleObject).unwrap();
    payload[2] ^= 0xFF;
    assert_eq!(invalid(decode_local(EventKind::Ordered, &payload)).reason, DeadLetterReason::UnknownSchema);
}

#[test]
fn a_datum_cut_short_is_truncated() {
    let payload = encode(&schemas(), &sample(EventKind::Created), Framing::SingleObject).unwrap();
    for cut in [1, 5, payload.len() - 11] {
        let err = invalid(decode_local(EventKind::Created, &payload[..payload.len() - cut]));
        assert_eq!(err.reason, DeadLetterReason::Truncated, "cut {cut}: {err}");
    }
}

#[test]
fn a_forged_length_prefix_is_truncated_without_a_large_allocation() {
    let mut payload = encode(&schemas(), &ordered(), Framing::SingleObject).unwrap();
    payload.truncate(10);
    // eventId's length: zig-zag varint of 2^40, far above the cap.
    payload.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    assert_eq!(invalid(decode_local(EventKind::Ordered, &payload)).reason, DeadLetterReason::Truncated);
    assert_eq!(apache_avro::util::max_allocation_bytes(usize::MAX), MAX_ALLOCATION_BYTES);
}

#[test]
fn bytes_after_the_datum_are_a_schema_mismatch() {
    let mut payload = encode(&schemas(), &ordered(), Framing::SingleObject).unwrap();
    payload.push(0);
    assert_eq!(invalid(decode_local(EventKind::Ordered, &payload)).reason, DeadLetterReason::SchemaMismatch);
}

#[test]
fn a_card_tokenized_datum_on_the_created_topic_is_a_schema_mismatch() {
    let payload = encode(&schemas(), &tokenized(None), Framing::SingleObject).unwrap();
    let err = invalid(decode_local(EventKind::Created, &payload));
    assert_eq!(err.reason, DeadLetterReason::SchemaMismatch);
    assert!(err.detail.contains("CardTokenized"), "{err}");
}

#[test]
fn a_bad_event_id_or_card_id_is_an_invalid_field_named_without_its_value() {
    let cases = [
        (raw_tokenized(PAN, "card-1", 0), "eventId"),
        (raw_tokenized(&Uuid::nil().to_string(), &format!("{PAN} "), 0), "cardId"),
        (raw_tokenized(&Uuid::nil().to_string(), "", 0), "cardId"),
    ];
    for (payload, field) in cases {
        let err = invalid(block_on(local().decode(EventKind::Tokenized, Some(PAN.as_bytes()), &payload)));
        assert_eq!(err.reason, DeadLetterReason::InvalidField);
        assert!(err.detail.contains(field), "{err}");
        assert!(!err.to_string().contains(PAN) && !format!("{err:?}").contains(PAN));
    }
}

#[test]
fn an_occurred_at_outside_the_accepted_range_is_an_invalid_field() {
    for ms in [-1, i64::MAX] {
        let err = invalid(decode_local(
            EventKind::Tokenized,
            &raw_tokenized(&Uuid::nil().to_string(), "card-1", ms),
        ));
        assert_eq!((err.reason, err.detail.contains("occurredAt")), (DeadLetterReason::InvalidField, true));
    }
}

#[test]
fn an_enum_symbol_the_reader_does_not_know_is_an_invalid_field() {
    let set = schemas();
    let reader = &set.reader(EventKind::Tokenized).schema;
    let v2 = super::schemas::EMBEDDED.iter().find(|f| f.topic == "card-tokenized" && f.version == 2).unwrap();
    let newer = v2.json.replace(r#"["APPROVED", "DECLINED"]"#, r#"["APPROVED", "DECLINED", "PENDING"]"#);
    assert_ne!(newer, v2.json);
    let writer = ParsedSchema::parse(&newer).unwrap();
    let pending = tokenized_value(&Uuid::nil().to_string(), "card-1", 0, Value::Enum(2, "PENDING".into()));
    let payload = single_object(&writer, &pending);
    let err = decode_datum(EventKind::Tokenized, &writer, reader, &payload[10..]).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::InvalidField);
    assert!(err.detail.starts_with("outcome"), "{err}");
    let approved = tokenized_value(&Uuid::nil().to_string(), "card-1", 0, Value::Enum(0, "APPROVED".into()));
    let payload = single_object(&writer, &approved);
    assert!(decode_datum(EventKind::Tokenized, &writer, reader, &payload[10..]).is_ok());
}

#[test]
fn a_missing_or_different_message_key_is_an_invalid_field() {
    let payload = encode(&schemas(), &ordered(), Framing::SingleObject).unwrap();
    for key in [None, Some(&b"card-2"[..])] {
        let err = invalid(block_on(local().decode(EventKind::Ordered, key, &payload)));
        assert_eq!(err.reason, DeadLetterReason::InvalidField);
        assert_eq!(err.detail, "message key differs from cardId");
    }
}

#[test]
fn a_confluent_message_without_a_configured_registry_is_unknown_schema() {
    let payload = encode(&schemas(), &ordered(), Framing::Confluent { schema_id: 3 }).unwrap();
    assert_eq!(invalid(decode_local(EventKind::Ordered, &payload)).reason, DeadLetterReason::UnknownSchema);
}

fn registry_decoder(server: &MockServer) -> Decoder {
    let url = url::Url::parse(&server.uri()).unwrap();
    let registry = HttpSchemaRegistry::new(&url, Duration::from_secs(5)).unwrap();
    Decoder::new(schemas(), Some(Arc::new(registry)))
}

async fn serve_schema(server: &MockServer, id: u32, kind: EventKind, version: u32, times: u64) {
    let json = crate::avro::schemas::EMBEDDED
        .iter()
        .find(|f| f.topic == crate::avro::schemas::topic_folder(kind) && f.version == version)
        .unwrap()
        .json;
    Mock::given(method("GET"))
        .and(path(format!("/schemas/ids/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "schema": json })))
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn confluent_messages_resolve_through_the_registry_fetching_each_id_once() {
    let server = MockServer::start().await;
    serve_schema(&server, 21, EventKind::Tokenized, 1, 1).await;
    let decoder = registry_decoder(&server);
    let payload =
        encode_version(&schemas(), &tokenized(Some("w")), 1, Framing::Confluent { schema_id: 21 }).unwrap();
    for _ in 0..2 {
        let event = decoder.decode(EventKind::Tokenized, Some(b"card-1"), &payload).await.unwrap();
        assert_eq!(event, tokenized(None));
    }
    let concurrent = (0..8).map(|_| decoder.decode(EventKind::Tokenized, Some(b"card-1"), &payload));
    assert!(
        futures::future::join_all(concurrent)
            .await
            .iter()
            .all(|r| r.as_ref().is_ok_and(|e| *e == tokenized(None)))
    );
}

#[tokio::test]
async fn concurrent_first_decodes_of_one_schema_id_fetch_it_once() {
    let server = MockServer::start().await;
    serve_schema(&server, 22, EventKind::Ordered, 1, 1).await;
    let decoder = registry_decoder(&server);
    let payload = encode(&schemas(), &ordered(), Framing::Confluent { schema_id: 22 }).unwrap();
    let concurrent = (0..8).map(|_| decoder.decode(EventKind::Ordered, Some(b"card-1"), &payload));
    assert!(
        futures::future::join_all(concurrent).await.iter().all(|r| r.as_ref().is_ok_and(|e| *e == ordered()))
    );
}

#[tokio::test]
async fn an_id_the_registry_does_not_know_is_unknown_schema() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/schemas/ids/23"))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({ "error_code": 40403 })))
        .expect(1)
        .mount(&server)
        .await;
    let payload = encode(&schemas(), &ordered(), Framing::Confluent { schema_id: 23 }).unwrap();
    let err = invalid(registry_decoder(&server).decode(EventKind::Ordered, Some(b"card-1"), &payload).await);
    assert_eq!(err.reason, DeadLetterReason::UnknownSchema);
    assert!(err.detail.contains("23"));
}

#[tokio::test]
async fn a_registry_that_is_down_is_transient_not_a_dead_letter() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = url::Url::parse(&format!("http://{closed}")).unwrap();
    let registry = HttpSchemaRegistry::new(&url, Duration::from_secs(5)).unwrap();
    let decoder = Decoder::new(schemas(), Some(Arc::new(registry)));
    let payload = encode(&schemas(), &ordered(), Framing::Confluent { schema_id: 24 }).unwrap();
    let result = decoder.decode(EventKind::Ordered, Some(b"card-1"), &payload).await;
    assert!(
        matches!(result, Err(DecodeFailure::Transient(RegistryError::Request { id: 24, .. }))),
        "{result:?}"
    );
}

/// Serves the newest schema of every kind under ids 1, 2, 3 (created, tokenized, ordered).
struct StaticRegistry(Arc<SchemaSet>);

impl SchemaRegistry for StaticRegistry {
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<RegisteredSchema>, RegistryError>> {
        let found = KINDS
            .get(id as usize - 1)
            .map(|k| Arc::new(RegisteredSchema::new(id, (*self.0.reader(*k).schema).clone())));
        Box::pin(async move { found.ok_or(RegistryError::NotFound { id }) })
    }
}

/// A registry serving whatever schema JSON a test hands it, under id 1.
struct HostileRegistry(String);

impl SchemaRegistry for HostileRegistry {
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<RegisteredSchema>, RegistryError>> {
        let parsed = ParsedSchema::parse(&self.0).map(|s| Arc::new(RegisteredSchema::new(id, s)));
        Box::pin(async move { parsed.map_err(|_| RegistryError::NotAvro { id }) })
    }
}

fn hostile(schema: String, datum: &[u8]) -> DecodeError {
    let decoder = Decoder::new(schemas(), Some(Arc::new(HostileRegistry(schema))));
    let mut payload = vec![0, 0, 0, 0, 1];
    payload.extend_from_slice(datum);
    invalid(block_on(decoder.decode(EventKind::Ordered, Some(b"card-1"), &payload)))
}

/// CardOrdered v1 with one more field of the given type appended.
fn ordered_plus(extra_type: &str) -> String {
    let v1 = super::schemas::EMBEDDED.iter().find(|f| f.topic == "card-ordered" && f.version == 1).unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(v1.json).unwrap();
    let extra: serde_json::Value = serde_json::from_str(extra_type).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "name": "extra", "type": extra, "default": null }));
    schema.to_string()
}

/// A valid CardOrdered v1 datum (no header).
fn ordered_datum() -> Vec<u8> {
    encode_version(&schemas(), &ordered(), 1, Framing::SingleObject).unwrap()[10..].to_vec()
}

fn zigzag(n: i64) -> Vec<u8> {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

#[test]
fn a_recursive_registry_schema_with_a_10_kb_message_is_untrusted() {
    let schema = ordered_plus(
        r#"["null", {"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}]"#,
    );
    let mut datum = ordered_datum();
    datum.extend(std::iter::repeat_n(2u8, 10_000));
    let err = hostile(schema, &datum);
    assert_eq!(
        (err.reason, err.detail.as_str()),
        (DeadLetterReason::UntrustedSchema, "writer schema id 1: the schema is recursive")
    );
}

#[test]
fn deeply_nested_arrays_of_null_are_untrusted_and_shallow_ones_with_billions_of_items_too_complex() {
    let mut deep = r#""null""#.to_owned();
    for _ in 0..40 {
        deep = format!(r#"{{"type":"array","items":{deep}}}"#);
    }
    let err = hostile(ordered_plus(&format!(r#"["null", {deep}]"#)), &ordered_datum());
    assert_eq!(err.reason, DeadLetterReason::UntrustedSchema);
    assert!(err.detail.ends_with("the schema nests deeper than 32 types"), "{err}");

    let mut datum = ordered_datum();
    datum.extend(zigzag(1)); // the union's array branch
    datum.extend(zigzag(i64::from(i32::MAX))); // one block declaring 2^31 nulls
    let err = hostile(ordered_plus(r#"["null", {"type":"array","items":"null"}]"#), &datum);
    assert_eq!(err.reason, DeadLetterReason::DatumTooComplex, "{err}");
}

#[test]
fn a_string_or_array_declared_far_beyond_the_message_is_truncated() {
    let mut datum = ordered_datum();
    datum.extend(zigzag(1));
    datum.extend(zigzag(1 << 40));
    datum.extend(b"short");
    let err = hostile(ordered_plus(r#"["null", "string"]"#), &datum);
    assert_eq!(err.reason, DeadLetterReason::Truncated, "{err}");
    let mut datum = ordered_datum();
    datum.extend(zigzag(1));
    datum.extend(zigzag(1000));
    datum.extend(zigzag(7));
    let err = hostile(ordered_plus(r#"["null", {"type":"array","items":"long"}]"#), &datum);
    assert_eq!(err.reason, DeadLetterReason::Truncated, "{err}");
}

#[test]
fn a_registry_schema_of_another_record_or_not_resolvable_is_untrusted() {
    let other = ordered_plus(r#""null""#).replace("\"CardOrdered\"", "\"Other\"");
    let err = hostile(other, &ordered_datum());
    assert_eq!(err.reason, DeadLetterReason::UntrustedSchema);
    assert_eq!(
        err.detail,
        "writer schema id 1: its record is not the topic's record cards.lifecycle.v1.CardOrdered"
    );
    let v1 = super::schemas::EMBEDDED.iter().find(|f| f.topic == "card-ordered" && f.version == 1).unwrap();
    let retyped =
        v1.json.replacen(r#"{"name": "cardId", "type": "string""#, r#"{"name": "cardId", "type": "long""#, 1);
    assert_ne!(retyped, v1.json);
    let err = hostile(retyped, &ordered_datum());
    assert_eq!(err.reason, DeadLetterReason::UntrustedSchema);
    assert!(err.detail.contains("does not resolve against the topic's reader schema (v1)"), "{err}");
}

#[test]
fn an_unkept_registry_schema_within_the_rules_decodes() {
    let mut datum = ordered_datum();
    datum.extend(zigzag(1));
    datum.extend(zigzag(2));
    datum.extend(b"ok");
    let decoder =
        Decoder::new(schemas(), Some(Arc::new(HostileRegistry(ordered_plus(r#"["null", "string"]"#)))));
    let mut payload = vec![0, 0, 0, 0, 1];
    payload.extend_from_slice(&datum);
    assert_eq!(block_on(decoder.decode(EventKind::Ordered, Some(b"card-1"), &payload)).unwrap(), ordered());
}

fn schema_id(kind: EventKind) -> u32 {
    KINDS.iter().position(|k| *k == kind).unwrap() as u32 + 1
}

fn id(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_-]{{1,{max}}}")).unwrap()
}

fn any_event() -> impl Strategy<Value = CardEvent> {
    let meta = (any::<u128>(), 0..=253_402_300_799_999i64, id(48), id(64))
        .prop_map(|(u, ms, card, consumer)| EventMeta {
            event_id: EventId::from_uuid(Uuid::from_u128(u)),
            occurred_at: DateTime::<Utc>::from_timestamp_millis(ms).unwrap(),
            card_id: CardId::parse(card).unwrap(),
            consumer_id: ConsumerId::parse(consumer).unwrap(),
        })
        .boxed();
    let text = || proptest::option::of(".{0,24}");
    prop_oneof![
        (meta.clone(), id(48), ".{0,64}", any::<bool>()).prop_map(|(meta, product, jwe, active)| {
            CardEvent::Created(CardCreated {
                meta,
                card_product_id: CardProductId::parse(product).unwrap(),
                encrypted_card: EncryptedCard::new(jwe),
                initial_state: if active { InitialState::Active } else { InitialState::Inactive },
            })
        }),
        (meta.clone(), any::<bool>(), text(), text()).prop_map(|(meta, ok, digital, requestor)| {
            CardEvent::Tokenized(CardTokenized {
                meta,
                outcome: if ok { TokenizationOutcome::Approved } else { TokenizationOutcome::Declined },
                digital_card_id: digital,
                token_requestor_id: requestor,
            })
        }),
        (meta, any::<bool>(), proptest::option::of(id(48)), text()).prop_map(|(meta, ok, product, order)| {
            CardEvent::Ordered(CardOrdered {
                meta,
                outcome: if ok { OrderOutcome::Accepted } else { OrderOutcome::Rejected },
                card_product_id: product.map(|p| CardProductId::parse(p).unwrap()),
                order_id: order,
            })
        }),
    ]
}

fn kind_strategy() -> impl Strategy<Value = EventKind> {
    prop_oneof![Just(EventKind::Created), Just(EventKind::Tokenized), Just(EventKind::Ordered)]
}

/// The detail `decode_datum` gives when it caught a panic of the Avro library: must never happen.
const PANICKED: &str = "the Avro decoder failed on this datum";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn valid_events_round_trip_in_both_framings(event in any_event(), confluent in any::<bool>()) {
        let set = schemas();
        let decoder = Decoder::new(set.clone(), Some(Arc::new(StaticRegistry(set.clone()))));
        let framing = if confluent { Framing::Confluent { schema_id: schema_id(event.kind()) } } else { Framing::SingleObject };
        let payload = encode(&set, &event, framing).unwrap();
        let key = event.meta().card_id.as_str().as_bytes().to_vec();
        let decoded = block_on(decoder.decode(event.kind(), Some(&key), &payload)).unwrap();
        prop_assert_eq!(decoded, event);
    }

    #[test]
    fn arbitrary_bytes_give_a_typed_error_and_never_panic(kind in kind_strategy(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let set = schemas();
        let decoder = Decoder::new(set.clone(), Some(Arc::new(StaticRegistry(set))));
        match block_on(decoder.decode(kind, Some(b"card-1"), &bytes)) {
            Ok(event) => prop_assert_eq!(event.kind(), kind),
            Err(DecodeFailure::Invalid(e)) => prop_assert_ne!(e.detail, PANICKED),
            Err(DecodeFailure::Transient(e)) => prop_assert!(false, "transient: {}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_give_a_typed_error_and_never_panic(
        kind in kind_strategy(),
        writer_kind in kind_strategy(),
        confluent in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let set = schemas();
        let decoder = Decoder::new(set.clone(), Some(Arc::new(StaticRegistry(set.clone()))));
        let mut payload = if confluent {
            let mut p = vec![0x00];
            p.extend_from_slice(&schema_id(writer_kind).to_be_bytes());
            p
        } else {
            let mut p = vec![0xC3, 0x01];
            p.extend_from_slice(&set.reader(writer_kind).schema.fingerprint().0);
            p
        };
        payload.extend_from_slice(&bytes);
        match block_on(decoder.decode(kind, Some(b"card-1"), &payload)) {
            Ok(event) => prop_assert_eq!(event.kind(), kind),
            Err(DecodeFailure::Invalid(e)) => prop_assert_ne!(e.detail, PANICKED),
            Err(DecodeFailure::Transient(e)) => prop_assert!(false, "transient: {}", e),
        }
    }
}

mod profiles {
    use super::*;
    use crate::avro::encode::encode_profile;
    use crate::core::profile::{ConsumerInfo, ConsumerProfile, MobilePhoneNumber, ProfileChange};

    fn profile(consumer: &str) -> ConsumerProfile {
        ConsumerProfile {
            event_id: EventId::from_uuid(Uuid::from_u128(7)),
            occurred_at: DateTime::<Utc>::from_timestamp_millis(1_790_000_000_000).unwrap(),
            consumer_id: ConsumerId::parse(consumer).unwrap(),
            info: ConsumerInfo {
                language: "en-GB".into(),
                first_name: "Ada".into(),
                last_name: "Lovelace".into(),
                email: None,
                mobile_phone_number: Some(MobilePhoneNumber {
                    country_code: "+44".into(),
                    phone_number: "7700900123".into(),
                }),
                date_of_birth: Some("1815-12-10".into()),
                residency_address: None,
            },
        }
    }

    fn invalid_change(result: Result<ProfileChange, DecodeFailure>) -> DecodeError {
        match result {
            Err(DecodeFailure::Invalid(e)) => e,
            other => panic!("expected an invalid message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_profile_round_trips_in_both_framings_and_a_tombstone_erases() {
        let server = MockServer::start().await;
        serve_schema(&server, 41, EventKind::Profile, 1, 1).await;
        let decoder = registry_decoder(&server);
        let p = profile("consumer-1");
        for framing in [Framing::SingleObject, Framing::Confluent { schema_id: 41 }] {
            let payload = encode_profile(&schemas(), &p, framing).unwrap();
            let change = decoder.decode_profile(Some(b"consumer-1"), Some(&payload)).await.unwrap();
            assert_eq!(change, ProfileChange::Upsert(Box::new(p.clone())));
        }
        let erase = decoder.decode_profile(Some(b"consumer-1"), None).await.unwrap();
        assert_eq!(erase, ProfileChange::Erase(ConsumerId::parse("consumer-1").unwrap()));
    }

    #[test]
    fn a_bad_key_a_bad_field_or_a_card_record_is_refused_naming_no_value() {
        let payload = encode_profile(&schemas(), &profile("consumer-1"), Framing::SingleObject).unwrap();
        let decode =
            |key: Option<&[u8]>, payload: Option<&[u8]>| block_on(local().decode_profile(key, payload));
        let e = invalid_change(decode(Some(b"consumer-2"), Some(&payload)));
        assert_eq!(
            (e.reason, e.detail.as_str()),
            (DeadLetterReason::InvalidField, "message key differs from consumerId")
        );
        assert_eq!(invalid_change(decode(None, None)).reason, DeadLetterReason::InvalidField);
        assert_eq!(invalid_change(decode(Some(b"bad key!"), None)).reason, DeadLetterReason::InvalidField);
        let mut bad = profile("consumer-1");
        bad.info.date_of_birth = Some("1815-13-10".into());
        let payload = encode_profile(&schemas(), &bad, Framing::SingleObject).unwrap();
        let e = invalid_change(decode(Some(b"consumer-1"), Some(&payload)));
        assert_eq!(e.reason, DeadLetterReason::InvalidField);
        assert!(e.detail.contains("dateOfBirth") && !e.detail.contains("1815"), "{e}");
        let card = encode(&schemas(), &ordered(), Framing::SingleObject).unwrap();
        assert_eq!(
            invalid_change(decode(Some(b"card-1"), Some(&card))).reason,
            DeadLetterReason::SchemaMismatch
        );
        // And a profile on a card topic.
        let payload = encode_profile(&schemas(), &profile("card-1"), Framing::SingleObject).unwrap();
        assert_eq!(
            invalid(decode_local(EventKind::Ordered, &payload)).reason,
            DeadLetterReason::SchemaMismatch
        );
    }
}

#[test]
fn every_kept_version_decodes_resolves_and_encodes_as_the_librarys_own_reader_and_writer_do() {
    use apache_avro::reader::datum::GenericDatumReader;
    let set = schemas();
    for kind in [EventKind::Created, EventKind::Tokenized, EventKind::Ordered] {
        let reader = &set.reader(kind).schema;
        for version in set.versions(kind) {
            let payload =
                encode_version(&set, &sample(kind), version.version, Framing::SingleObject).unwrap();
            let body = &payload[10..];
            let writer = &version.schema;
            let ours = writer.datum_reader().unwrap().read_value(&mut &body[..]).unwrap();
            let library = GenericDatumReader::builder(writer.schema()).build().unwrap();
            let theirs = library.read_value(&mut &body[..]).unwrap();
            assert_eq!(ours, theirs, "{kind:?} v{}", version.version);
            let (mut written, mut library_wrote) = (Vec::new(), Vec::new());
            writer.datum_writer().unwrap().write_value_ref(&mut written, &theirs).unwrap();
            let library_writer = GenericDatumWriter::builder(writer.schema()).build().unwrap();
            library_writer.write_value_ref(&mut library_wrote, &theirs).unwrap();
            assert_eq!(written, library_wrote, "{kind:?} v{}: our writer's bytes", version.version);
            assert_eq!(
                reader.resolve(ours).unwrap(),
                theirs.resolve(reader.schema()).unwrap(),
                "{kind:?} v{}",
                version.version
            );
        }
    }
}
