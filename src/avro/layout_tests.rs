use super::*;

fn layout(schema: &str) -> Layout {
    let form = crate::avro::canonical::parsing_canonical_form(schema).unwrap();
    Layout::compile(&serde_json::from_str(&form).unwrap()).unwrap()
}

fn zigzag(n: i64) -> Vec<u8> {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn a_well_formed_datum_passes_and_trailing_bytes_do_not() {
    let l = layout(
        r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"},
            {"name":"o","type":["null","string"]},{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"f","type":{"type":"fixed","name":"F","size":2}},
            {"name":"m","type":{"type":"map","values":"int"}},{"name":"d","type":"double"},{"name":"b","type":"boolean"}]}"#,
    );
    let mut datum = vec![];
    datum.extend(zigzag(2));
    datum.extend(b"hi");
    datum.extend(zigzag(1));
    datum.extend(zigzag(1));
    datum.push(b'x');
    datum.extend(zigzag(1));
    datum.extend(zigzag(1_700_000_000_000));
    datum.extend([1, 2]);
    datum.extend(zigzag(-1)); // a map block of one entry, with its byte size
    datum.extend(zigzag(3));
    datum.extend(zigzag(1));
    datum.push(b'k');
    datum.extend(zigzag(7));
    datum.extend(zigzag(0));
    datum.extend([0; 8]);
    datum.push(1);
    assert_eq!(l.check(&datum), Ok(()));
    datum.push(0);
    assert_eq!(l.check(&datum), Err(DatumError::TrailingBytes));
}

#[test]
fn a_string_longer_than_the_message_is_truncated_without_allocating() {
    let l = layout(r#""string""#);
    let mut datum = zigzag(i64::MAX / 2);
    datum.extend(b"abc");
    assert_eq!(l.check(&datum), Err(DatumError::Truncated));
    assert_eq!(l.check(&zigzag(-5)), Err(DatumError::Malformed));
}

#[test]
fn an_array_of_nulls_declaring_billions_of_items_is_too_complex() {
    let l = layout(r#"{"type":"array","items":"null"}"#);
    assert_eq!(l.check(&zigzag(2_000_000_000)), Err(DatumError::TooComplex));
    // The array itself is one value, each item one more: MAX_VALUES in all, and not one beyond.
    let at_limit = [zigzag(MAX_VALUES as i64 - 1), zigzag(0)].concat();
    assert_eq!(l.check(&at_limit), Ok(()));
    let beyond = [zigzag(MAX_VALUES as i64), zigzag(0)].concat();
    assert_eq!(l.check(&beyond), Err(DatumError::TooComplex));
}

#[test]
fn deeply_nested_arrays_of_null_are_too_complex() {
    let mut schema = r#""null""#.to_owned();
    for _ in 0..40 {
        schema = format!(r#"{{"type":"array","items":{schema}}}"#);
    }
    let l = layout(&schema);
    assert!(l.depth() > MAX_DEPTH);
    let datum: Vec<u8> = std::iter::repeat_n(zigzag(1), 40).flatten().collect();
    assert_eq!(l.check(&datum), Err(DatumError::TooComplex));
}

#[test]
fn a_recursive_schema_is_recognised_and_its_datum_depth_is_bounded() {
    let l = layout(r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#);
    assert!(l.is_recursive());
    assert_eq!(l.depth(), usize::MAX);
    // 10 kB of "one more node": far deeper than MAX_DEPTH.
    let datum = vec![2u8; 10_000];
    assert_eq!(l.check(&datum), Err(DatumError::TooComplex));
    assert_eq!(l.check(&[2, 2, 0]), Ok(()));
}

#[test]
fn bad_union_and_enum_indexes_and_overlong_varints_are_malformed() {
    assert_eq!(layout(r#"["null","int"]"#).check(&zigzag(2)), Err(DatumError::Malformed));
    assert_eq!(
        layout(r#"{"type":"enum","name":"E","symbols":["A"]}"#).check(&zigzag(1)),
        Err(DatumError::Malformed)
    );
    assert_eq!(layout(r#""long""#).check(&[0xff; 11]), Err(DatumError::Malformed));
    assert_eq!(layout(r#""long""#).check(&[0xff; 3]), Err(DatumError::Truncated));
    assert_eq!(layout(r#""boolean""#).check(&[2]), Err(DatumError::Malformed));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let l = layout(r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":["null","string",{"type":"map","values":"long"}]}}]}"#);
        let _ = l.check(&bytes);
    }
}
