//! The message decoder on untrusted bytes: both framings (single-object against the kept schemas,
//! Confluent against a stub registry that answers with a kept schema, an unknown id, or nothing
//! configured), every topic (the consumer-profile topic too, tombstones included), with and without
//! a matching key. Must never panic.

#![no_main]

use std::sync::{Arc, LazyLock};

use card_registrar::avro::decode::{Decoder, decode_datum, decode_profile_datum, split_frame};
use card_registrar::avro::registry::{RegisteredSchema, RegistryError, SchemaRegistry};
use card_registrar::avro::schemas::SchemaSet;
use card_registrar::core::event::EventKind;
use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;

/// Answers schema id N with the Nth kept schema (all topics, all versions), unknown otherwise.
struct StubRegistry(Vec<Arc<RegisteredSchema>>);

impl SchemaRegistry for StubRegistry {
    fn writer_schema(&self, id: u32) -> BoxFuture<'_, Result<Arc<RegisteredSchema>, RegistryError>> {
        let found = self.0.get(id as usize).cloned();
        Box::pin(async move { found.ok_or(RegistryError::NotFound { id }) })
    }
}

static SCHEMAS: LazyLock<Arc<SchemaSet>> =
    LazyLock::new(|| Arc::new(SchemaSet::embedded().expect("embedded schemas parse")));
static WITH_REGISTRY: LazyLock<Decoder> = LazyLock::new(|| {
    let kept = KINDS
        .iter()
        .flat_map(|k| SCHEMAS.versions(*k).iter().map(|v| (*v.schema).clone()))
        .enumerate()
        .map(|(id, schema)| Arc::new(RegisteredSchema::new(id as u32, schema)))
        .collect();
    Decoder::new(SCHEMAS.clone(), Some(Arc::new(StubRegistry(kept))))
});
const KINDS: [EventKind; 4] =
    [EventKind::Created, EventKind::Tokenized, EventKind::Ordered, EventKind::Profile];
static WITHOUT_REGISTRY: LazyLock<Decoder> = LazyLock::new(|| Decoder::new(SCHEMAS.clone(), None));

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else { return };
    let kind = KINDS[usize::from(control % 4)];
    let decoder = if control & 0x04 == 0 { &*WITH_REGISTRY } else { &*WITHOUT_REGISTRY };
    // Usually no key: decoding runs to the end and only then compares; sometimes a valid id as key.
    let key: Option<&[u8]> = if control & 0x08 == 0 { None } else { Some(b"card-1") };
    let _ = split_frame(payload);
    let reader = &SCHEMAS.reader(kind).schema;
    if kind == EventKind::Profile {
        // A tombstone (no value) or a profile, keyed by consumerId.
        let value = if control & 0x10 == 0 { Some(payload) } else { None };
        let _ = futures::executor::block_on(decoder.decode_profile(key.or(Some(payload)), value));
        for writer in SCHEMAS.versions(kind) {
            let _ = decode_profile_datum(&writer.schema, reader, payload);
        }
        return;
    }
    let _ = futures::executor::block_on(decoder.decode(kind, key, payload));
    // The pure datum decoder with every kept writer schema against the topic's reader schema.
    for writer in SCHEMAS.versions(kind) {
        let _ = decode_datum(kind, &writer.schema, reader, payload);
    }
});
