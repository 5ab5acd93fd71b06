//! The local schema set: every version kept in `schemas/`, embedded at build time, parsed once.
//!
//! Per topic the newest version is the reader schema; every version of every topic is findable by
//! its CRC-64-AVRO fingerprint, the id that single-object encoding carries. Loading refuses a set
//! that would decode wrongly later (a record name that does not match its folder, a version the
//! newest cannot fully read, two versions with one fingerprint). No I/O: the files are compiled in.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

use super::canonical::{self, CanonicalError, parsing_canonical_form};
use super::layout::Layout;
use crate::core::event::EventKind;

/// A schema file compiled into the binary by `build.rs`.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedSchema {
    /// The folder under `schemas/`, e.g. `card-created`.
    pub topic: &'static str,
    /// `N` of `vN.avsc`.
    pub version: u32,
    /// The schema JSON.
    pub json: &'static str,
}

/// Every `schemas/<topic>/v<N>.avsc`, sorted by topic and version.
pub static EMBEDDED: &[EmbeddedSchema] = include!(concat!(env!("OUT_DIR"), "/embedded_schemas.rs"));

/// A CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, as the 8 little-endian
/// bytes that single-object encoding carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A parsed Avro schema with what decoding needs to know about it.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    schema: Schema,
    canonical_form: String,
    fingerprint: Fingerprint,
    full_name: Option<String>,
    layout: Layout,
    /// Whether a named type is used by reference somewhere in the schema.
    references: bool,
}

/// Why schema JSON could not become a `ParsedSchema`.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// apache-avro refused the schema.
    #[error("the Avro library refuses the schema")]
    Avro(#[source] apache_avro::Error),
    /// The schema has no Parsing Canonical Form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

impl ParsedSchema {
    /// Parses schema JSON (a file of ours, or a registry answer). The fingerprint is the
    /// specification's: CRC-64-AVRO of the Parsing Canonical Form computed from this JSON.
    pub fn parse(json: &str) -> Result<Self, ParseError> {
        let canonical_form = parsing_canonical_form(json)?;
        let canonical_json = serde_json::from_str(&canonical_form)
            .map_err(|_| CanonicalError("the canonical form is not JSON"))?;
        let layout = Layout::compile(&canonical_json).ok_or(CanonicalError("the layout does not compile"))?;
        let schema = Schema::parse_str(json).map_err(ParseError::Avro)?;
        let fingerprint = Fingerprint(canonical::fingerprint(&canonical_form));
        let full_name = schema.name().map(|n| n.fullname(None));
        let references = refers_by_name(&schema);
        Ok(Self { schema, canonical_form, fingerprint, full_name, layout, references })
    }

    /// A datum reader for this schema (named-type table per [`Self::table`]).
    pub fn datum_reader(&self) -> apache_avro::AvroResult<GenericDatumReader<'_>> {
        GenericDatumReader::builder(&self.schema).maybe_resolved_writer_schemata(self.table()?).build()
    }

    /// A datum writer for this schema (named-type table per [`Self::table`]).
    pub fn datum_writer(&self) -> apache_avro::AvroResult<GenericDatumWriter<'_>> {
        GenericDatumWriter::builder(&self.schema).maybe_resolved_schemata(self.table()?).build()
    }

    /// The named-type table to give apache-avro: `None` lets it build the full table, which it
    /// would otherwise do for every datum. Only a schema that refers to a named type by name
    /// consults it, so the others get an empty one (about a fifth of the decoding work of our events).
    fn table(&self) -> apache_avro::AvroResult<Option<ResolvedSchema<'_>>> {
        if self.references { Ok(None) } else { ResolvedSchema::new_with_schemata(Vec::new()).map(Some) }
    }

    /// Resolves a datum decoded with another schema to this one (same table rule as
    /// [`Self::table`]).
    pub fn resolve(&self, value: Value) -> apache_avro::AvroResult<Value> {
        if self.references {
            value.resolve(&self.schema)
        } else {
            value.resolve_with_names(&self.schema, &HashMap::<apache_avro::schema::Name, Schema>::new())
        }
    }

    /// Its binary layout, for the bounded walk every datum gets before decoding.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The Parsing Canonical Form.
    pub fn canonical_form(&self) -> &str {
        &self.canonical_form
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Its CRC-64-AVRO fingerprint, per the specification.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The full name of a named schema (`cards.lifecycle.v1.CardCreated`), `None` for primitives.
    pub fn full_name(&self) -> Option<&str> {
        self.full_name.as_deref()
    }
}

/// True when `schema` names a type defined elsewhere (`Schema::Ref`), the only case in which
/// apache-avro's decoder and resolver look a name up.
fn refers_by_name(schema: &Schema) -> bool {
    match schema {
        Schema::Ref { .. } => true,
        Schema::Array(array) => refers_by_name(&array.items),
        Schema::Map(map) => refers_by_name(&map.types),
        Schema::Union(union) => union.variants().iter().any(refers_by_name),
        Schema::Record(record) => record.fields.iter().any(|f| refers_by_name(&f.schema)),
        _ => false,
    }
}

/// The `schemas/` folder of a topic kind.
pub fn topic_folder(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Created => "card-created",
        EventKind::Tokenized => "card-tokenized",
        EventKind::Ordered => "card-ordered",
        EventKind::Profile => "consumer-profile",
    }
}

/// The record full name the contract gives a topic kind.
pub fn record_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Created => "cards.lifecycle.v1.CardCreated",
        EventKind::Tokenized => "cards.lifecycle.v1.CardTokenized",
        EventKind::Ordered => "cards.lifecycle.v1.CardOrdered",
        EventKind::Profile => "cards.lifecycle.v1.ConsumerProfile",
    }
}

const KINDS: [EventKind; 4] =
    [EventKind::Created, EventKind::Tokenized, EventKind::Ordered, EventKind::Profile];

/// The `schemas/` folder of the registration results card-registrar publishes (not an input topic).
pub const RESULTS_FOLDER: &str = "card-registration-result";
/// The record full name of a registration result.
pub const RESULTS_RECORD: &str = "cards.registration.v1.CardRegistrationResult";

/// Folders of the streams card-registrar writes: kept in `schemas/` (and checked against the Avro
/// reference), but not part of the input schema set.
const OUTPUT_FOLDERS: &[&str] = &[RESULTS_FOLDER];

/// The newest kept schema of the registration results: the one the relay writes with.
pub fn results_schema() -> Result<ParsedSchema, SchemaError> {
    let file = EMBEDDED
        .iter()
        .filter(|f| f.topic == RESULTS_FOLDER)
        .max_by_key(|f| f.version)
        .ok_or(SchemaError::NoVersion { topic: RESULTS_FOLDER })?;
    let parsed = ParsedSchema::parse(file.json).map_err(|source| SchemaError::Parse {
        topic: file.topic.to_owned(),
        version: file.version,
        source,
    })?;
    if parsed.full_name() != Some(RESULTS_RECORD) {
        return Err(SchemaError::WrongRecord {
            topic: file.topic.to_owned(),
            version: file.version,
            expected: RESULTS_RECORD,
        });
    }
    Ok(parsed)
}

/// One kept version of a topic's schema.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    /// The topic kind.
    pub kind: EventKind,
    /// `N` of `vN.avsc`.
    pub version: u32,
    /// The parsed schema.
    pub schema: Arc<ParsedSchema>,
}

/// Why the schema set could not be loaded. Names the file; schema files hold no card data.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A folder under `schemas/` that is not one of the four topics.
    #[error("schemas/{topic}/ is not a known topic folder")]
    UnknownTopic {
        /// The folder.
        topic: String,
    },
    /// A topic without any version.
    #[error("schemas/{topic}/ holds no v<N>.avsc")]
    NoVersion {
        /// The folder.
        topic: &'static str,
    },
    /// The file is not a valid Avro schema.
    #[error("schemas/{topic}/v{version}.avsc does not parse")]
    Parse {
        /// The folder.
        topic: String,
        /// The version.
        version: u32,
        /// The parser's complaint.
        #[source]
        source: ParseError,
    },
    /// The record name does not match the folder.
    #[error("schemas/{topic}/v{version}.avsc must define record {expected}")]
    WrongRecord {
        /// The folder.
        topic: String,
        /// The version.
        version: u32,
        /// The contract's record name.
        expected: &'static str,
    },
    /// The newest version cannot fully read an older one.
    #[error("schemas/{topic}/v{newest}.avsc cannot fully read v{version} (incompatible change)")]
    Incompatible {
        /// The folder.
        topic: &'static str,
        /// The older version.
        version: u32,
        /// The newest version.
        newest: u32,
    },
    /// Two files share one fingerprint, so single-object messages could not tell them apart.
    #[error("schemas/{topic}/v{version}.avsc has the same canonical form as another kept version")]
    DuplicateFingerprint {
        /// The folder.
        topic: String,
        /// The version.
        version: u32,
    },
}

/// Every kept version of the four topics' schemas.
#[derive(Debug)]
pub struct SchemaSet {
    /// Per kind (indexed as `KINDS`), versions sorted oldest first; never empty.
    versions: [Vec<SchemaVersion>; 4],
    by_fingerprint: HashMap<Fingerprint, SchemaVersion>,
}

fn index(kind: EventKind) -> usize {
    match kind {
        EventKind::Created => 0,
        EventKind::Tokenized => 1,
        EventKind::Ordered => 2,
        EventKind::Profile => 3,
    }
}

impl SchemaSet {
    /// The set compiled into this binary from `schemas/`.
    pub fn embedded() -> Result<Self, SchemaError> {
        Self::from_files(EMBEDDED)
    }

    /// Builds a set from schema files, checking names, compatibility and fingerprints.
    pub fn from_files(files: &[EmbeddedSchema]) -> Result<Self, SchemaError> {
        let mut versions: [Vec<SchemaVersion>; 4] = Default::default();
        let mut by_fingerprint = HashMap::new();
        for file in files.iter().filter(|f| !OUTPUT_FOLDERS.contains(&f.topic)) {
            let kind = KINDS
                .into_iter()
                .find(|k| topic_folder(*k) == file.topic)
                .ok_or_else(|| SchemaError::UnknownTopic { topic: file.topic.to_owned() })?;
            let parsed = ParsedSchema::parse(file.json).map_err(|source| SchemaError::Parse {
                topic: file.topic.to_owned(),
                version: file.version,
                source,
            })?;
            if parsed.full_name() != Some(record_name(kind)) || !matches!(parsed.schema, Schema::Record(_)) {
                return Err(SchemaError::WrongRecord {
                    topic: file.topic.to_owned(),
                    version: file.version,
                    expected: record_name(kind),
                });
            }
            let version = SchemaVersion { kind, version: file.version, schema: Arc::new(parsed) };
            if by_fingerprint.insert(version.schema.fingerprint(), version.clone()).is_some() {
                return Err(SchemaError::DuplicateFingerprint {
                    topic: file.topic.to_owned(),
                    version: file.version,
                });
            }
            versions[index(kind)].push(version);
        }
        for kind in KINDS {
            let list = &mut versions[index(kind)];
            list.sort_by_key(|v| v.version);
            let newest = list.last().ok_or(SchemaError::NoVersion { topic: topic_folder(kind) })?;
            for older in &list[..list.len() - 1] {
                let full = SchemaCompatibility::can_read(older.schema.schema(), newest.schema.schema());
                if !matches!(full, Ok(Compatibility::Full)) {
                    return Err(SchemaError::Incompatible {
                        topic: topic_folder(kind),
                        version: older.version,
                        newest: newest.version,
                    });
                }
            }
        }
        Ok(Self { versions, by_fingerprint })
    }

    /// The reader schema of a topic kind: its newest version.
    pub fn reader(&self, kind: EventKind) -> &SchemaVersion {
        let list = &self.versions[index(kind)];
        // `from_files` refuses a topic without versions, so the list is never empty.
        &list[list.len() - 1]
    }

    /// Every kept version of a topic kind, oldest first.
    pub fn versions(&self, kind: EventKind) -> &[SchemaVersion] {
        &self.versions[index(kind)]
    }

    /// One version of a topic kind.
    pub fn version(&self, kind: EventKind, version: u32) -> Option<&SchemaVersion> {
        self.versions(kind).iter().find(|v| v.version == version)
    }

    /// The kept version (of any topic) with this fingerprint.
    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&SchemaVersion> {
        self.by_fingerprint.get(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose second field names the enum the first defines: apache-avro needs the
    /// table of named types to decode and to resolve it.
    const WITH_REFERENCE: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"a","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
        {"name":"b","type":["null","E"]}]}"#;

    #[test]
    fn a_schema_that_names_a_type_by_reference_decodes_and_resolves_with_its_table() {
        let schema = ParsedSchema::parse(WITH_REFERENCE).unwrap();
        assert!(schema.references);
        // a = Y (index 1), b = branch 1 (E) = X (index 0)
        let value = schema.datum_reader().unwrap().read_value(&mut &[0x02u8, 0x02, 0x00][..]).unwrap();
        let expected = Value::Record(vec![
            ("a".into(), Value::Enum(1, "Y".into())),
            ("b".into(), Value::Union(1, Box::new(Value::Enum(0, "X".into())))),
        ]);
        assert_eq!(value, expected);
        let mut written = Vec::new();
        schema.datum_writer().unwrap().write_value_ref(&mut written, &value).unwrap();
        assert_eq!(written, [0x02, 0x02, 0x00]);
        assert_eq!(schema.resolve(value).unwrap(), expected);
    }

    #[test]
    fn no_kept_schema_names_a_type_by_reference_so_every_one_takes_the_fast_path() {
        for file in EMBEDDED {
            let schema = ParsedSchema::parse(file.json).unwrap();
            assert!(!schema.references, "{}/v{}", file.topic, file.version);
        }
    }

    #[test]
    fn every_embedded_schema_file_parses_into_the_set() {
        let set = SchemaSet::embedded().unwrap();
        let inputs: Vec<_> = EMBEDDED.iter().filter(|f| !OUTPUT_FOLDERS.contains(&f.topic)).collect();
        assert_eq!(inputs.len(), 6);
        for file in inputs {
            let kind = KINDS.into_iter().find(|k| topic_folder(*k) == file.topic).unwrap();
            assert!(set.version(kind, file.version).is_some(), "{}/v{}", file.topic, file.version);
        }
    }

    #[test]
    fn the_results_schema_is_the_newest_result_version_and_its_enum_tolerates_new_outcomes() {
        let schema = results_schema().unwrap();
        assert_eq!(schema.full_name(), Some(RESULTS_RECORD));
        let Schema::Record(record) = schema.schema() else { panic!("not a record") };
        let outcome = record.fields.iter().find(|f| f.name == "outcome").unwrap();
        let Schema::Enum(e) = &outcome.schema else { panic!("outcome is not an enum") };
        assert_eq!(e.default.as_deref(), Some("UNKNOWN"));
        for o in crate::core::result::ResultOutcome::ALL {
            assert!(e.symbols.iter().any(|s| s == o.as_str()), "{}", o.as_str());
        }
    }

    #[test]
    fn the_reader_is_the_newest_version_of_each_topic() {
        let set = SchemaSet::embedded().unwrap();
        assert_eq!(set.reader(EventKind::Created).version, 2);
        assert_eq!(set.reader(EventKind::Tokenized).version, 2);
        assert_eq!(set.reader(EventKind::Ordered).version, 1);
        assert_eq!(set.reader(EventKind::Profile).version, 1);
    }

    #[test]
    fn every_kept_version_is_found_by_its_fingerprint() {
        let set = SchemaSet::embedded().unwrap();
        for kind in KINDS {
            for v in set.versions(kind) {
                let found = set.by_fingerprint(&v.schema.fingerprint()).unwrap();
                assert_eq!((found.kind, found.version), (kind, v.version));
            }
        }
    }

    #[test]
    fn the_fingerprint_is_the_little_endian_crc_64_avro_of_the_canonical_form() {
        // Reference value from the Avro specification's test vectors: the schema "int".
        let int = ParsedSchema::parse(r#""int""#).unwrap();
        assert_eq!(int.fingerprint().0, 0x7275_d51a_3f39_5c8f_u64.to_le_bytes());
    }

    const V1: &str = r#"{"type":"record","name":"CardOrdered","namespace":"cards.lifecycle.v1",
        "fields":[{"name":"cardId","type":"string"}]}"#;

    fn file(topic: &'static str, version: u32, json: &'static str) -> EmbeddedSchema {
        EmbeddedSchema { topic, version, json }
    }

    fn with_others(extra: &[EmbeddedSchema]) -> Vec<EmbeddedSchema> {
        let mut files: Vec<_> = EMBEDDED.iter().copied().filter(|f| f.topic != "card-ordered").collect();
        files.extend_from_slice(extra);
        files
    }

    #[test]
    fn a_version_the_newest_cannot_read_is_refused() {
        let v2 = r#"{"type":"record","name":"CardOrdered","namespace":"cards.lifecycle.v1",
            "fields":[{"name":"cardId","type":"string"},{"name":"orderId","type":"string"}]}"#;
        let err =
            SchemaSet::from_files(&with_others(&[file("card-ordered", 1, V1), file("card-ordered", 2, v2)]))
                .unwrap_err();
        assert!(matches!(err, SchemaError::Incompatible { version: 1, newest: 2, .. }), "{err}");
    }

    #[test]
    fn a_record_name_that_does_not_match_its_folder_is_refused() {
        let files = with_others(&[file("card-ordered", 1, V1.replace("CardOrdered", "X").leak())]);
        let err = SchemaSet::from_files(&files).unwrap_err();
        assert!(matches!(err, SchemaError::WrongRecord { version: 1, .. }), "{err}");
    }

    #[test]
    fn two_versions_with_one_canonical_form_are_refused() {
        let doc_only = r#"{"type":"record","name":"CardOrdered","namespace":"cards.lifecycle.v1","doc":"x",
            "fields":[{"name":"cardId","type":"string"}]}"#;
        let err = SchemaSet::from_files(&with_others(&[
            file("card-ordered", 1, V1),
            file("card-ordered", 2, doc_only),
        ]))
        .unwrap_err();
        assert!(matches!(err, SchemaError::DuplicateFingerprint { version: 2, .. }), "{err}");
    }

    #[test]
    fn an_unknown_folder_and_a_topic_without_versions_are_refused() {
        let err = SchemaSet::from_files(&with_others(&[file("card-lost", 1, V1)])).unwrap_err();
        assert!(matches!(err, SchemaError::UnknownTopic { .. }), "{err}");
        let err = SchemaSet::from_files(&with_others(&[])).unwrap_err();
        assert!(matches!(err, SchemaError::NoVersion { topic: "card-ordered" }), "{err}");
    }
}
