//! Avro encoding of card events and consumer profiles, the inverse of `decode`: for the `publish` command, the demo,
//! tests and benchmarks. Writes the newest kept schema version by default, or any older one, in
//! either framing. Also the registration results the relay publishes ([`encode_result`]).
//!
//! Encoding never sees a clear PAN: `CardCreated` carries only the JWE.

use apache_avro::Schema;
use apache_avro::schema::RecordField;
use apache_avro::types::Value;

use super::schemas::{ParsedSchema, SchemaSet, topic_folder};
use crate::core::event::{CardEvent, EventKind};
use crate::core::profile::ConsumerProfile;
use crate::core::result::RegistrationResult;

/// How the Avro datum is framed in the Kafka message value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Avro single-object encoding: `C3 01`, the writer schema's 8-byte CRC-64-AVRO fingerprint.
    SingleObject,
    /// Confluent wire format: `00`, the registry's 4-byte big-endian schema id.
    Confluent {
        /// The id the schema registry gave the writer schema.
        schema_id: u32,
    },
}

/// Why an event could not be encoded. Names fields, never values.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The schema set keeps no such version.
    #[error("schemas/{topic}/v{version}.avsc is not kept")]
    UnknownVersion {
        /// The topic folder.
        topic: &'static str,
        /// The version asked for.
        version: u32,
    },
    /// The writer schema is not a record.
    #[error("the writer schema is not a record")]
    NotARecord,
    /// The writer schema has a field the encoder cannot fill, or one of an unexpected type.
    #[error("the writer schema's field {field} does not fit the event")]
    Misfit {
        /// The schema's field name.
        field: String,
    },
    /// The Avro writer refused the value.
    #[error("Avro encoding failed")]
    Avro(#[source] apache_avro::Error),
}

/// Encodes an event with its topic's newest schema.
pub fn encode(schemas: &SchemaSet, event: &CardEvent, framing: Framing) -> Result<Vec<u8>, EncodeError> {
    encode_with(&schemas.reader(event.kind()).schema, event, framing)
}

/// Encodes an event with an older (or the newest) kept version of its topic's schema.
pub fn encode_version(
    schemas: &SchemaSet,
    event: &CardEvent,
    version: u32,
    framing: Framing,
) -> Result<Vec<u8>, EncodeError> {
    let kind = event.kind();
    let writer = schemas
        .version(kind, version)
        .ok_or(EncodeError::UnknownVersion { topic: topic_folder(kind), version })?;
    encode_with(&writer.schema, event, framing)
}

/// Encodes an event with any writer schema whose fields the event can fill.
pub fn encode_with(
    writer: &ParsedSchema,
    event: &CardEvent,
    framing: Framing,
) -> Result<Vec<u8>, EncodeError> {
    write_record(writer, &fields(event), framing)
}

/// Encodes a registration result (topic `card-registration-results`) with its writer schema.
pub fn encode_result(
    writer: &ParsedSchema,
    result: &RegistrationResult,
    framing: Framing,
) -> Result<Vec<u8>, EncodeError> {
    let available = [
        ("resultId", Field::Owned(result.result_id.to_string())),
        ("cardId", Field::Opt(result.card_id.as_deref())),
        ("consumerId", Field::Opt(result.consumer_id.as_deref())),
        ("outcome", Field::Symbol(result.outcome.as_str())),
        ("errorCode", Field::Opt(result.error_code.as_deref())),
        ("reason", Field::Opt(result.reason.as_deref())),
        ("eventId", Field::OptOwned(result.event_id.map(|e| e.to_string()))),
        ("occurredAt", Field::Millis(result.occurred_at.timestamp_millis())),
        ("correlationId", Field::Opt(result.correlation_id.as_deref())),
    ];
    write_record(writer, &available, framing)
}

/// Frames and writes a record from the fields available, in the writer schema's field order.
fn write_record(
    writer: &ParsedSchema,
    available: &[(&str, Field<'_>)],
    framing: Framing,
) -> Result<Vec<u8>, EncodeError> {
    let Schema::Record(record) = writer.schema() else {
        return Err(EncodeError::NotARecord);
    };
    let values = record
        .fields
        .iter()
        .map(|f| {
            let field = available.iter().find(|(name, _)| *name == f.name).map(|(_, v)| v);
            Ok((f.name.clone(), fit(field, f)?))
        })
        .collect::<Result<Vec<_>, EncodeError>>()?;
    framed_record(writer, framing, values)
}

/// Encodes a consumer profile with the newest `ConsumerProfile` schema.
pub fn encode_profile(
    schemas: &SchemaSet,
    profile: &ConsumerProfile,
    framing: Framing,
) -> Result<Vec<u8>, EncodeError> {
    let writer = &schemas.reader(EventKind::Profile).schema;
    let Schema::Record(record) = writer.schema() else {
        return Err(EncodeError::NotARecord);
    };
    let info = &profile.info;
    let string = |s: &str| Value::String(s.to_owned());
    let optional = |field: &str, value: Option<Value>| -> Result<Value, EncodeError> {
        let schema = record.fields.iter().find(|f| f.name == field).map(|f| &f.schema);
        let Some(Schema::Union(u)) = schema else {
            return Err(EncodeError::Misfit { field: field.to_owned() });
        };
        let index = |null: bool| {
            u.variants().iter().position(|v| (*v == Schema::Null) == null).and_then(|i| u32::try_from(i).ok())
        };
        let misfit = || EncodeError::Misfit { field: field.to_owned() };
        Ok(match value {
            None => Value::Union(index(true).ok_or_else(misfit)?, Box::new(Value::Null)),
            Some(v) => Value::Union(index(false).ok_or_else(misfit)?, Box::new(v)),
        })
    };
    let phone = info.mobile_phone_number.as_ref().map(|p| {
        Value::Record(vec![
            ("countryCode".into(), string(&p.country_code)),
            ("phoneNumber".into(), string(&p.phone_number)),
        ])
    });
    let address = info.residency_address.as_ref().map(|a| {
        Value::Record(vec![
            ("line1".into(), string(&a.line1)),
            ("zipCode".into(), string(&a.zip_code)),
            ("city".into(), string(&a.city)),
            ("countryCode".into(), string(&a.country_code)),
        ])
    });
    let values = vec![
        ("eventId".into(), Value::String(profile.event_id.to_string())),
        ("occurredAt".into(), Value::TimestampMillis(profile.occurred_at.timestamp_millis())),
        ("consumerId".into(), string(profile.consumer_id.as_str())),
        ("language".into(), string(&info.language)),
        ("firstName".into(), string(&info.first_name)),
        ("lastName".into(), string(&info.last_name)),
        ("email".into(), optional("email", info.email.as_deref().map(string))?),
        ("mobilePhoneNumber".into(), optional("mobilePhoneNumber", phone)?),
        ("dateOfBirth".into(), optional("dateOfBirth", info.date_of_birth.as_deref().map(string))?),
        ("residencyAddress".into(), optional("residencyAddress", address)?),
    ];
    framed_record(writer, framing, values)
}

/// One record datum with `writer`, behind the framing's header.
fn framed_record(
    writer: &ParsedSchema,
    framing: Framing,
    values: Vec<(String, Value)>,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    frame(&mut out, writer, framing);
    writer
        .datum_writer()
        .and_then(|w| w.write_value_ref(&mut out, &Value::Record(values)))
        .map_err(EncodeError::Avro)?;
    Ok(out)
}

fn frame(out: &mut Vec<u8>, writer: &ParsedSchema, framing: Framing) {
    match framing {
        Framing::SingleObject => {
            out.extend_from_slice(&[0xC3, 0x01]);
            out.extend_from_slice(&writer.fingerprint().0);
        }
        Framing::Confluent { schema_id } => {
            out.push(0x00);
            out.extend_from_slice(&schema_id.to_be_bytes());
        }
    }
}

/// A field value before it meets the writer schema's type.
enum Field<'a> {
    Str(&'a str),
    Owned(String),
    Millis(i64),
    Symbol(&'static str),
    Opt(Option<&'a str>),
    OptOwned(Option<String>),
}

fn fields(event: &CardEvent) -> Vec<(&'static str, Field<'_>)> {
    let meta = event.meta();
    let mut out = vec![
        ("eventId", Field::Owned(meta.event_id.to_string())),
        ("occurredAt", Field::Millis(meta.occurred_at.timestamp_millis())),
        ("cardId", Field::Str(meta.card_id.as_str())),
        ("consumerId", Field::Str(meta.consumer_id.as_str())),
    ];
    match event {
        CardEvent::Created(c) => out.extend([
            ("cardProductId", Field::Str(c.card_product_id.as_str())),
            ("encryptedCard", Field::Str(c.encrypted_card.as_str())),
            ("initialState", Field::Symbol(c.initial_state.as_str())),
        ]),
        CardEvent::Tokenized(t) => out.extend([
            ("outcome", Field::Symbol(event.outcome_str().unwrap_or_default())),
            ("digitalCardId", Field::Opt(t.digital_card_id.as_deref())),
            ("tokenRequestorId", Field::Opt(t.token_requestor_id.as_deref())),
        ]),
        CardEvent::Ordered(o) => out.extend([
            ("outcome", Field::Symbol(event.outcome_str().unwrap_or_default())),
            ("cardProductId", Field::Opt(o.card_product_id.as_ref().map(|p| p.as_str()))),
            ("orderId", Field::Opt(o.order_id.as_deref())),
        ]),
    }
    out
}

fn fit(field: Option<&Field<'_>>, schema_field: &RecordField) -> Result<Value, EncodeError> {
    let misfit = || EncodeError::Misfit { field: schema_field.name.clone() };
    Ok(match (field.ok_or_else(misfit)?, &schema_field.schema) {
        (Field::Str(s), Schema::String) => Value::String((*s).to_owned()),
        (Field::Owned(s), Schema::String) => Value::String(s.clone()),
        (Field::Millis(ms), Schema::TimestampMillis) => Value::TimestampMillis(*ms),
        (Field::Millis(ms), Schema::Long) => Value::Long(*ms),
        (Field::Symbol(s), Schema::Enum(e)) => {
            let index = e.symbols.iter().position(|x| x == s).ok_or_else(misfit)?;
            Value::Enum(u32::try_from(index).map_err(|_| misfit())?, (*s).to_owned())
        }
        (Field::OptOwned(o), Schema::Union(_)) => return fit(Some(&Field::Opt(o.as_deref())), schema_field),
        (Field::Opt(o), Schema::Union(u)) => {
            let (index, value) = match o {
                None => (u.variants().iter().position(|v| *v == Schema::Null), Value::Null),
                Some(s) => {
                    (u.variants().iter().position(|v| *v == Schema::String), Value::String((*s).to_owned()))
                }
            };
            let index = index.and_then(|i| u32::try_from(i).ok()).ok_or_else(misfit)?;
            Value::Union(index, Box::new(value))
        }
        _ => return Err(misfit()),
    })
}
