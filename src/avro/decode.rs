//! Kafka message value -> `CardEvent` (or a `ConsumerProfile` change): framing detection (Confluent wire format or Avro
//! single-object encoding), writer-schema lookup, Avro decoding with the writer schema, resolution
//! against the topic's reader schema (the newest in `schemas/`), and mapping to the core types.
//!
//! Every failure is a typed `DecodeError` with a stable dead-letter reason, or a transient registry
//! failure the caller retries. It must never panic on any input, never allocate what a length
//! prefix claims beyond a fixed cap, and never put a field's value in an error: a producer may have
//! put a PAN in any string field. Errors name the field only.

use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::error::Details;
use apache_avro::types::Value;
use chrono::{DateTime, Utc};

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use apache_avro::schema_compatibility::SchemaCompatibility;

use super::layout::{DatumError, MAX_DEPTH, MAX_VALUES};
use super::registry::{RegisteredSchema, RegistryError, SchemaRegistry};
use super::schemas::{Fingerprint, ParsedSchema, SchemaSet};
use crate::core::dead_letter::DeadLetterReason;
use crate::core::event::{
    CardCreated, CardEvent, CardOrdered, CardTokenized, EncryptedCard, EventKind, EventMeta, InitialState,
    OrderOutcome, TokenizationOutcome,
};
use crate::core::ids::{CardId, CardProductId, ConsumerId, EventId, IdError};
use crate::core::profile::{
    ConsumerInfo, ConsumerProfile, MobilePhoneNumber, ProfileChange, ResidencyAddress,
};

/// Largest allocation the Avro decoder may make for one length prefix. Far above any Kafka message
/// (1 MiB by default), so it only ever stops a forged length from reserving gigabytes.
pub const MAX_ALLOCATION_BYTES: usize = 8 * 1024 * 1024;

/// Earliest accepted `occurredAt`: the Unix epoch.
const MIN_OCCURRED_AT_MS: i64 = 0;
/// Latest accepted `occurredAt`: 9999-12-31T23:59:59.999Z, storable by every database.
const MAX_OCCURRED_AT_MS: i64 = 253_402_300_799_999;

/// Why a message value is not a valid event: a dead-letter reason and a detail naming the step or
/// field (never a field's value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// The stable reason code.
    pub reason: DeadLetterReason,
    /// What failed, for operators.
    pub detail: String,
}

impl DecodeError {
    fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }

    /// Prefixes the detail with the registry schema the message named.
    fn with_registry_origin(mut self, writer: &RegisteredSchema) -> Self {
        self.detail = format!("writer {writer}: {}", self.detail);
        self
    }
}

/// Most types (nodes of its layout) a writer schema from the registry may have.
pub const MAX_SCHEMA_NODES: usize = 512;

/// Whether a writer schema from the registry may decode messages of a `kind` topic.
///
/// A schema whose canonical fingerprint is a kept version's (of any topic) is ours. Anything else
/// is untrusted and used only if it is not recursive, nests at most `MAX_DEPTH` types deep, has at
/// most `MAX_SCHEMA_NODES` types, defines the topic's record, and resolves against the topic's
/// reader schema. (Its size was capped by the registry client before it was parsed.)
pub fn vet_registry_schema(
    kind: EventKind,
    writer: &ParsedSchema,
    schemas: &SchemaSet,
) -> Result<(), DecodeError> {
    if schemas.by_fingerprint(&writer.fingerprint()).is_some() {
        return Ok(());
    }
    let untrusted = |detail: String| Err(DecodeError::new(DeadLetterReason::UntrustedSchema, detail));
    let layout = writer.layout();
    if layout.is_recursive() {
        return untrusted("the schema is recursive".into());
    }
    if layout.depth() > MAX_DEPTH {
        return untrusted(format!("the schema nests deeper than {MAX_DEPTH} types"));
    }
    if layout.len() > MAX_SCHEMA_NODES {
        return untrusted(format!("the schema has more than {MAX_SCHEMA_NODES} types"));
    }
    let reader = schemas.reader(kind);
    if writer.full_name() != reader.schema.full_name() {
        // The writer's name is the registry's text, never echoed: it could hold anything.
        return untrusted(format!(
            "its record is not the topic's record {}",
            reader.schema.full_name().unwrap_or("(unnamed)")
        ));
    }
    // A bug in the Avro library must cost one dead letter, not the partition.
    let resolvable = catch_unwind(AssertUnwindSafe(|| {
        SchemaCompatibility::can_read(writer.schema(), reader.schema.schema()).is_ok()
    }))
    .unwrap_or(false);
    if !resolvable {
        return untrusted(format!(
            "it does not resolve against the topic's reader schema (v{})",
            reader.version
        ));
    }
    Ok(())
}

impl From<IdError> for DecodeError {
    fn from(e: IdError) -> Self {
        // IdError's text names the field and rule, never the value.
        Self::new(DeadLetterReason::InvalidField, e.to_string())
    }
}

/// Why `Decoder::decode` gave no event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    /// The message can never decode: store it as a dead letter and move on.
    #[error(transparent)]
    Invalid(#[from] DecodeError),
    /// The writer schema could not be fetched now: retry the same message later, do not skip it.
    #[error("writer schema temporarily unavailable")]
    Transient(#[source] RegistryError),
}

/// The framing of a message value, with the Avro datum that follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Confluent wire format: `00`, 4-byte big-endian schema id.
    Confluent {
        /// The registry's schema id.
        schema_id: u32,
        /// The datum.
        body: &'a [u8],
    },
    /// Avro single-object encoding: `C3 01`, 8-byte little-endian CRC-64-AVRO fingerprint.
    SingleObject {
        /// The writer schema's fingerprint.
        fingerprint: Fingerprint,
        /// The datum.
        body: &'a [u8],
    },
}

/// Detects the framing of a message value.
pub fn split_frame(payload: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let short =
        |what: &str| DecodeError::new(DeadLetterReason::Truncated, format!("value ends inside the {what}"));
    match payload {
        [] => Err(DecodeError::new(DeadLetterReason::Truncated, "value is empty")),
        [0x00, rest @ ..] => {
            let (id, body) = rest.split_first_chunk::<4>().ok_or_else(|| short("Confluent header"))?;
            Ok(Frame::Confluent { schema_id: u32::from_be_bytes(*id), body })
        }
        [0xC3] => Err(short("single-object marker")),
        [0xC3, 0x01, rest @ ..] => {
            let (fp, body) = rest.split_first_chunk::<8>().ok_or_else(|| short("single-object header"))?;
            Ok(Frame::SingleObject { fingerprint: Fingerprint(*fp), body })
        }
        _ => Err(DecodeError::new(
            DeadLetterReason::UnknownFraming,
            "value starts with neither 00 (Confluent) nor C3 01 (single-object)",
        )),
    }
}

/// Decodes one Avro datum written with `writer` into an event of `kind`, resolving it against the
/// topic's `reader` schema. Pure: bytes in, event or typed error out.
pub fn decode_datum(
    kind: EventKind,
    writer: &ParsedSchema,
    reader: &ParsedSchema,
    body: &[u8],
) -> Result<CardEvent, DecodeError> {
    to_event(kind, decode_record(writer, reader, body)?)
}

/// Decodes one `ConsumerProfile` datum, like [`decode_datum`].
pub fn decode_profile_datum(
    writer: &ParsedSchema,
    reader: &ParsedSchema,
    body: &[u8],
) -> Result<ConsumerProfile, DecodeError> {
    to_profile(decode_record(writer, reader, body)?)
}

/// The resolved record's fields.
fn decode_record(writer: &ParsedSchema, reader: &ParsedSchema, body: &[u8]) -> Result<Fields, DecodeError> {
    if writer.full_name() != reader.full_name() {
        return Err(DecodeError::new(
            DeadLetterReason::SchemaMismatch,
            format!(
                "writer record {} is not the topic's record {}",
                writer.full_name().unwrap_or("(unnamed)"),
                reader.full_name().unwrap_or("(unnamed)")
            ),
        ));
    }
    // A bug in the Avro library must cost one dead letter, not the partition.
    let value = catch_unwind(AssertUnwindSafe(|| read_value(writer, reader, body))).unwrap_or_else(|_| {
        Err(DecodeError::new(DeadLetterReason::SchemaMismatch, "the Avro decoder failed on this datum"))
    })?;
    let Value::Record(fields) = value else {
        return Err(DecodeError::new(DeadLetterReason::SchemaMismatch, "datum is not a record"));
    };
    Ok(Fields(fields))
}

/// Decodes with the writer schema, then resolves against the reader schema when they differ.
fn read_value(writer: &ParsedSchema, reader: &ParsedSchema, body: &[u8]) -> Result<Value, DecodeError> {
    let mismatch = |detail: &str| DecodeError::new(DeadLetterReason::SchemaMismatch, detail);
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    // The bounded walk first: apache-avro would build whatever the datum declares.
    writer.layout().check(body).map_err(|e| match e {
        DatumError::TooComplex => DecodeError::new(
            DeadLetterReason::DatumTooComplex,
            format!("the datum declares more than {MAX_VALUES} values or nests deeper than {MAX_DEPTH}"),
        ),
        DatumError::Truncated => {
            DecodeError::new(DeadLetterReason::Truncated, "value ends inside the Avro datum")
        }
        DatumError::Malformed => mismatch("datum does not match its writer schema"),
        DatumError::TrailingBytes => {
            mismatch("bytes left after the datum: it does not match its writer schema")
        }
    })?;
    let mut input = ExactReader { rest: body, ran_short: false };
    let decoded = writer
        .datum_reader()
        .map_err(|_| mismatch("writer schema references types it does not define"))?
        .read_value(&mut input);
    // apache-avro reads some types as null at end of input instead of failing: trust the reader's flag.
    if input.ran_short {
        return Err(DecodeError::new(DeadLetterReason::Truncated, "value ends inside the Avro datum"));
    }
    let value = decoded.map_err(|e| match e.details() {
        Details::MemoryAllocation { desired: Some(n), .. } if *n > body.len() => {
            DecodeError::new(DeadLetterReason::Truncated, "a length prefix exceeds the value")
        }
        _ => mismatch("datum does not match its writer schema"),
    })?;
    if !input.rest.is_empty() {
        return Err(mismatch("bytes left after the datum: it does not match its writer schema"));
    }
    if writer.fingerprint() == reader.fingerprint() {
        return Ok(value);
    }
    if let Some(field) = unknown_symbol(&value, reader.schema()) {
        return Err(DecodeError::new(
            DeadLetterReason::InvalidField,
            format!("{field} has a symbol the reader schema does not know"),
        ));
    }
    reader.resolve(value).map_err(|_| mismatch("datum does not resolve to the topic's reader schema"))
}

/// The reader field whose enum lacks the symbol the writer's datum holds, if any.
fn unknown_symbol<'r>(value: &Value, reader: &'r Schema) -> Option<&'r str> {
    let (Value::Record(fields), Schema::Record(record)) = (value, reader) else {
        return None;
    };
    fields.iter().find_map(|(name, v)| {
        let symbol = match v {
            Value::Enum(_, s) => s,
            Value::Union(_, inner) => match inner.as_ref() {
                Value::Enum(_, s) => s,
                _ => return None,
            },
            _ => return None,
        };
        let field = record.fields.iter().find(|f| &f.name == name)?;
        let symbols = match &field.schema {
            Schema::Enum(e) => &e.symbols,
            Schema::Union(u) => u.variants().iter().find_map(|s| match s {
                Schema::Enum(e) => Some(&e.symbols),
                _ => None,
            })?,
            _ => return None,
        };
        (!symbols.contains(symbol)).then_some(field.name.as_str())
    })
}

/// A byte-slice reader that remembers whether the decoder asked for more than there was.
struct ExactReader<'a> {
    rest: &'a [u8],
    ran_short: bool,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.ran_short = true;
        }
        self.rest.read(buf)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.rest.len() {
            self.ran_short = true;
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.rest.read_exact(buf)
    }
}

/// The fields of a resolved record, taken out one by one by name.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn take(&mut self, name: &str) -> Result<Value, DecodeError> {
        let slot = self.0.iter_mut().find(|(n, _)| n == name).ok_or_else(|| {
            DecodeError::new(DeadLetterReason::SchemaMismatch, format!("reader schema has no field {name}"))
        })?;
        Ok(std::mem::replace(&mut slot.1, Value::Null))
    }

    fn string(&mut self, name: &str) -> Result<String, DecodeError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            _ => Err(wrong_type(name)),
        }
    }

    fn optional(&mut self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                _ => Err(wrong_type(name)),
            },
            _ => Err(wrong_type(name)),
        }
    }

    /// An optional nested record (`["null", record]`).
    fn optional_record(&mut self, name: &str) -> Result<Option<Fields>, DecodeError> {
        match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::Record(fields) => Ok(Some(Fields(fields))),
                _ => Err(wrong_type(name)),
            },
            _ => Err(wrong_type(name)),
        }
    }

    fn symbol(&mut self, name: &str) -> Result<String, DecodeError> {
        match self.take(name)? {
            Value::Enum(_, s) => Ok(s),
            _ => Err(wrong_type(name)),
        }
    }

    fn millis(&mut self, name: &str) -> Result<i64, DecodeError> {
        match self.take(name)? {
            Value::TimestampMillis(ms) | Value::Long(ms) => Ok(ms),
            _ => Err(wrong_type(name)),
        }
    }
}

fn wrong_type(field: &str) -> DecodeError {
    DecodeError::new(DeadLetterReason::SchemaMismatch, format!("field {field} has an unexpected type"))
}

fn unknown(field: &str) -> DecodeError {
    DecodeError::new(DeadLetterReason::InvalidField, format!("{field} has an unknown symbol"))
}

fn occurred_at(f: &mut Fields) -> Result<DateTime<Utc>, DecodeError> {
    Some(f.millis("occurredAt")?)
        .filter(|ms| (MIN_OCCURRED_AT_MS..=MAX_OCCURRED_AT_MS).contains(ms))
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            DecodeError::new(DeadLetterReason::InvalidField, "occurredAt is outside 1970-01-01..9999-12-31")
        })
}

fn to_profile(mut f: Fields) -> Result<ConsumerProfile, DecodeError> {
    let event_id = EventId::parse(&f.string("eventId")?)?;
    let occurred_at = occurred_at(&mut f)?;
    let consumer_id = ConsumerId::parse(f.string("consumerId")?)?;
    let mobile_phone_number = match f.optional_record("mobilePhoneNumber")? {
        Some(mut p) => Some(MobilePhoneNumber {
            country_code: p.string("countryCode")?,
            phone_number: p.string("phoneNumber")?,
        }),
        None => None,
    };
    let residency_address = match f.optional_record("residencyAddress")? {
        Some(mut a) => Some(ResidencyAddress {
            line1: a.string("line1")?,
            zip_code: a.string("zipCode")?,
            city: a.string("city")?,
            country_code: a.string("countryCode")?,
        }),
        None => None,
    };
    let info = ConsumerInfo {
        language: f.string("language")?,
        first_name: f.string("firstName")?,
        last_name: f.string("lastName")?,
        email: f.optional("email")?,
        mobile_phone_number,
        date_of_birth: f.optional("dateOfBirth")?,
        residency_address,
    };
    // The defect names the field and rule only: the values are personal data.
    info.validate().map_err(|d| DecodeError::new(DeadLetterReason::InvalidField, d.to_string()))?;
    Ok(ConsumerProfile { event_id, occurred_at, consumer_id, info })
}

fn to_event(kind: EventKind, mut f: Fields) -> Result<CardEvent, DecodeError> {
    let event_id = EventId::parse(&f.string("eventId")?)?;
    let occurred_at = occurred_at(&mut f)?;
    let meta = EventMeta {
        event_id,
        occurred_at,
        card_id: CardId::parse(f.string("cardId")?)?,
        consumer_id: ConsumerId::parse(f.string("consumerId")?)?,
    };
    Ok(match kind {
        EventKind::Created => CardEvent::Created(CardCreated {
            meta,
            card_product_id: CardProductId::parse(f.string("cardProductId")?)?,
            encrypted_card: EncryptedCard::new(f.string("encryptedCard")?),
            initial_state: match f.symbol("initialState")?.as_str() {
                "ACTIVE" => InitialState::Active,
                "INACTIVE" => InitialState::Inactive,
                _ => return Err(unknown("initialState")),
            },
        }),
        EventKind::Tokenized => CardEvent::Tokenized(CardTokenized {
            meta,
            outcome: match f.symbol("outcome")?.as_str() {
                "APPROVED" => TokenizationOutcome::Approved,
                "DECLINED" => TokenizationOutcome::Declined,
                _ => return Err(unknown("outcome")),
            },
            digital_card_id: f.optional("digitalCardId")?,
            token_requestor_id: f.optional("tokenRequestorId")?,
        }),
        EventKind::Ordered => CardEvent::Ordered(CardOrdered {
            meta,
            outcome: match f.symbol("outcome")?.as_str() {
                "ACCEPTED" => OrderOutcome::Accepted,
                "REJECTED" => OrderOutcome::Rejected,
                _ => return Err(unknown("outcome")),
            },
            card_product_id: f.optional("cardProductId")?.map(CardProductId::parse).transpose()?,
            order_id: f.optional("orderId")?,
        }),
        EventKind::Profile => {
            return Err(DecodeError::new(
                DeadLetterReason::SchemaMismatch,
                "consumer-profile is not a card event topic",
            ));
        }
    })
}

/// Decodes Kafka messages of the three topics: framing, writer schema (local set or registry),
/// Avro, reader-schema resolution, contract checks, and the message key.
#[derive(Clone)]
pub struct Decoder {
    schemas: Arc<SchemaSet>,
    registry: Option<Arc<dyn SchemaRegistry>>,
    /// `vet_registry_schema` verdicts by writer fingerprint and topic kind (bounded).
    verdicts: Arc<Mutex<Verdicts>>,
}

/// `vet_registry_schema` verdicts by writer fingerprint and topic kind.
type Verdicts = HashMap<(Fingerprint, EventKind), Result<(), DecodeError>>;

/// Most verdicts the decoder remembers before starting afresh.
const MAX_VERDICTS: usize = 1024;

impl Decoder {
    /// A decoder over the local schema set and, when `SCHEMA_REGISTRY_URL` is set, a registry.
    pub fn new(schemas: Arc<SchemaSet>, registry: Option<Arc<dyn SchemaRegistry>>) -> Self {
        Self { schemas, registry, verdicts: Arc::default() }
    }

    /// `vet_registry_schema`, computed once per writer schema and topic kind.
    fn vet(&self, kind: EventKind, writer: &ParsedSchema) -> Result<(), DecodeError> {
        let key = (writer.fingerprint(), kind);
        let lock = || self.verdicts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(verdict) = lock().get(&key) {
            return verdict.clone();
        }
        let verdict = vet_registry_schema(kind, writer, &self.schemas);
        let mut verdicts = lock();
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.clear();
        }
        verdicts.insert(key, verdict.clone());
        verdict
    }

    /// The local schema set.
    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    /// Decodes one message of a card event topic. Waits only for a registry lookup of an uncached id.
    pub async fn decode(
        &self,
        kind: EventKind,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<CardEvent, DecodeFailure> {
        let event = self.record(kind, payload, decode_datum).await?;
        if key != Some(event.meta().card_id.as_str().as_bytes()) {
            return Err(
                DecodeError::new(DeadLetterReason::InvalidField, "message key differs from cardId").into()
            );
        }
        Ok(event)
    }

    /// Decodes one message of the consumer-profile topic: a profile, or an erasure for a
    /// tombstone (no value) whose key is a valid consumerId.
    pub async fn decode_profile(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<ProfileChange, DecodeFailure> {
        let Some(payload) = payload else {
            let key = key.and_then(|k| std::str::from_utf8(k).ok()).ok_or_else(|| {
                DecodeError::new(DeadLetterReason::InvalidField, "tombstone without a UTF-8 consumerId key")
            })?;
            return Ok(ProfileChange::Erase(ConsumerId::parse(key).map_err(DecodeError::from)?));
        };
        let profile = self
            .record(EventKind::Profile, payload, |_, writer, reader, body| {
                decode_profile_datum(writer, reader, body)
            })
            .await?;
        if key != Some(profile.consumer_id.as_str().as_bytes()) {
            return Err(DecodeError::new(
                DeadLetterReason::InvalidField,
                "message key differs from consumerId",
            )
            .into());
        }
        Ok(ProfileChange::Upsert(Box::new(profile)))
    }

    /// Framing, writer schema (kept or registry), then `datum` with the topic's reader schema.
    async fn record<T>(
        &self,
        kind: EventKind,
        payload: &[u8],
        datum: impl Fn(EventKind, &ParsedSchema, &ParsedSchema, &[u8]) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeFailure> {
        let unknown_schema = |detail: String| DecodeError::new(DeadLetterReason::UnknownSchema, detail);
        let reader: &ParsedSchema = &self.schemas.reader(kind).schema;
        Ok(match split_frame(payload)? {
            Frame::SingleObject { fingerprint, body } => {
                let writer = self
                    .schemas
                    .by_fingerprint(&fingerprint)
                    .ok_or_else(|| unknown_schema(format!("no kept schema has fingerprint {fingerprint}")))?;
                datum(kind, &writer.schema, reader, body)?
            }
            Frame::Confluent { schema_id, body } => {
                let registry = self.registry.as_ref().ok_or_else(|| {
                    unknown_schema(format!("schema id {schema_id}: no schema registry is configured"))
                })?;
                let writer = registry.writer_schema(schema_id).await.map_err(|e| {
                    if e.is_transient() {
                        DecodeFailure::Transient(e)
                    } else if e.is_untrusted() {
                        DecodeError::new(DeadLetterReason::UntrustedSchema, e.to_string()).into()
                    } else {
                        unknown_schema(e.to_string()).into()
                    }
                })?;
                self.vet(kind, &writer.schema).map_err(|e| e.with_registry_origin(&writer))?;
                datum(kind, &writer.schema, reader, body).map_err(|e| e.with_registry_origin(&writer))?
            }
        })
    }
}
