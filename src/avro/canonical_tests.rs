use super::*;

/// (input, canonical form, fingerprint as the signed 64-bit value the specification lists), from
/// the Avro project's published test vectors (`share/test/data/schema-tests.txt`), which the Java
/// reference implementation checks.
const SPEC_VECTORS: &[(&str, &str, Option<i64>)] = &[
    (r#""null""#, r#""null""#, Some(7195948357588979594)),
    (r#"{"type":"null"}"#, r#""null""#, None),
    (r#""boolean""#, r#""boolean""#, Some(-6970731678124411036)),
    (r#"{"type":"boolean"}"#, r#""boolean""#, None),
    (r#""int""#, r#""int""#, Some(8247732601305521295)),
    (r#"{"type":"int"}"#, r#""int""#, None),
    (r#""long""#, r#""long""#, Some(-3434872931120570953)),
    (r#"{"type":"long"}"#, r#""long""#, None),
    (r#""float""#, r#""float""#, Some(5583340709985441680)),
    (r#"{"type":"float"}"#, r#""float""#, None),
    (r#""double""#, r#""double""#, Some(-8181574048448539266)),
    (r#"{"type":"double"}"#, r#""double""#, None),
    (r#""bytes""#, r#""bytes""#, Some(5746618253357095269)),
    (r#"{"type":"bytes"}"#, r#""bytes""#, None),
    (r#""string""#, r#""string""#, Some(-8142146995180207161)),
    (r#"{"type":"string"}"#, r#""string""#, None),
    ("[  ]", "[]", Some(-1241056759729112623)),
    (r#"[ "int"  ]"#, r#"["int"]"#, Some(-5232228896498058493)),
    (r#"[ "int" , {"type":"boolean"} ]"#, r#"["int","boolean"]"#, Some(5392556393470105090)),
    (
        r#"{"fields":[], "type":"record", "name":"foo"}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
        r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
        Some(5916914534497305771),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
        r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
        Some(-4616218487480524110),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "doc":"Useful info"}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "aliases":["foo","bar"]}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}"#,
        r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
        Some(7843277075252814651),
    ),
    (
        r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
                      {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
             "type":"record", "name":"foo" }"#,
        r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
        Some(-4860222112080293046),
    ),
    (
        r#"{"type":"enum", "name":"foo", "symbols":["A1"]}"#,
        r#"{"name":"foo","type":"enum","symbols":["A1"]}"#,
        Some(-6342190197741309591),
    ),
    (
        r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
        r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
        Some(-4448647247586288245),
    ),
    (
        r#"{"name":"foo","type":"fixed","size":15}"#,
        r#"{"name":"foo","type":"fixed","size":15}"#,
        Some(1756455273707447556),
    ),
    (
        r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
        r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
        Some(-3064184465700546786),
    ),
    (
        r#"{ "items":{"type":"null"}, "type":"array"}"#,
        r#"{"type":"array","items":"null"}"#,
        Some(-589620603366471059),
    ),
    (
        r#"{ "values":"string", "type":"map"}"#,
        r#"{"type":"map","values":"string"}"#,
        Some(-8732877298790414990),
    ),
    (
        r#"{"name":"PigValue","type":"record",
            "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
        r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
        Some(-1759257747318642341),
    ),
];

#[test]
fn the_specification_test_vectors_give_their_canonical_forms_and_fingerprints() {
    for (input, canonical, fp) in SPEC_VECTORS {
        let form = parsing_canonical_form(input).unwrap();
        assert_eq!(&form, canonical, "canonical form of {input}");
        if let Some(fp) = fp {
            assert_eq!(crc64_avro(form.as_bytes()), *fp as u64, "fingerprint of {input}");
        }
    }
}

#[test]
fn a_logical_type_on_a_primitive_canonicalizes_to_the_primitive_name() {
    let form = parsing_canonical_form(
        r#"{"type":"record","name":"R","namespace":"n","fields":[
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"when"}]}"#,
    )
    .unwrap();
    assert_eq!(form, r#"{"name":"n.R","type":"record","fields":[{"name":"at","type":"long"}]}"#);
}

#[test]
fn card_created_v2_has_the_fingerprint_other_implementations_give_it() {
    // The value Java's SchemaNormalization.parsingFingerprint64 and fastavro give, as the 8 bytes on
    // the wire (apache-avro 0.22's own canonical form gives 547d7d4a0ebe737c).
    let file =
        super::super::schemas::EMBEDDED.iter().find(|f| f.topic == "card-created" && f.version == 2).unwrap();
    let form = parsing_canonical_form(file.json).unwrap();
    assert_eq!(hex::encode(fingerprint(&form)), "774e9da3f802789a");
}

#[test]
fn names_resolve_in_the_enclosing_namespace_then_the_null_namespace() {
    let form = parsing_canonical_form(
        r#"{"type":"record","name":"Outer","namespace":"a","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}},
            {"name":"again","type":"E"},
            {"name":"inner","type":{"type":"record","name":"b.Inner","fields":[
                {"name":"f","type":{"type":"fixed","name":"F","size":"016"}},
                {"name":"g","type":"F"},
                {"name":"h","type":"a.E"}]}}]}"#,
    )
    .unwrap();
    assert_eq!(
        form,
        concat!(
            r#"{"name":"a.Outer","type":"record","fields":["#,
            r#"{"name":"e","type":{"name":"a.E","type":"enum","symbols":["X"]}},"#,
            r#"{"name":"again","type":"a.E"},"#,
            r#"{"name":"inner","type":{"name":"b.Inner","type":"record","fields":["#,
            r#"{"name":"f","type":{"name":"b.F","type":"fixed","size":16}},"#,
            r#"{"name":"g","type":"b.F"},{"name":"h","type":"a.E"}]}}]}"#
        )
    );
}

#[test]
fn malformed_schemas_are_refused_with_the_rule_broken() {
    for (json, rule) in [
        ("{", "the text is not JSON"),
        ("12", "a schema is neither a string, an array nor an object"),
        (r#"{"name":"x"}"#, "an object schema has no type"),
        (r#""Unknown""#, "a type name is used before it is defined"),
        (r#"{"type":"record","fields":[]}"#, "a named type has no name"),
        (r#"{"type":"array"}"#, "an array has no items"),
        (r#"{"type":"fixed","name":"f"}"#, "a fixed has no integer size"),
        (
            r#"[{"type":"enum","name":"E","symbols":["A"]},{"type":"enum","name":"E","symbols":["B"]}]"#,
            "a type name is defined twice",
        ),
    ] {
        assert_eq!(parsing_canonical_form(json), Err(CanonicalError(rule)), "{json}");
    }
}
