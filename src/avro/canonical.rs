//! Avro's Parsing Canonical Form and its CRC-64-AVRO fingerprint, exactly as the specification
//! defines them ("Parsing Canonical Form for Schemas", "Schema Fingerprints").
//!
//! Computed from the schema's JSON, not from a parsed `apache_avro::Schema`: apache-avro 0.22's
//! `canonical_form` keeps `{"type":"long"}` for a primitive that carries a logical type, where the
//! specification's [PRIMITIVES] rule gives `"long"`, so its fingerprints match no other
//! implementation. The test suite checks this module against the specification's test vectors and
//! against the Java reference implementation for every file in `schemas/`.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde_json::Value;

/// Why a schema has no canonical form: the JSON is not a well-formed Avro schema. Names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a canonicalizable Avro schema: {0}")]
pub struct CanonicalError(pub &'static str);

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The Parsing Canonical Form of a schema given as JSON text.
pub fn parsing_canonical_form(json: &str) -> Result<String, CanonicalError> {
    let value: Value = serde_json::from_str(json).map_err(|_| CanonicalError("the text is not JSON"))?;
    canonical_form_of(&value)
}

/// The Parsing Canonical Form of a schema given as parsed JSON.
pub fn canonical_form_of(schema: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    let mut defined = HashSet::new();
    write_schema(schema, "", &mut defined, &mut out)?;
    Ok(out)
}

/// The fingerprint single-object encoding carries: CRC-64-AVRO of the canonical form, little-endian.
pub fn fingerprint(canonical_form: &str) -> [u8; 8] {
    crc64_avro(canonical_form.as_bytes()).to_le_bytes()
}

const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// The CRC-64-AVRO (Rabin) table, built at compile time from the specification's polynomial.
const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// CRC-64-AVRO of some bytes, as the specification's reference code computes it.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    bytes.iter().fold(EMPTY, |fp, b| (fp >> 8) ^ TABLE[((fp ^ u64::from(*b)) & 0xff) as usize])
}

fn write_str(s: &str, out: &mut String) {
    // serde_json writes a string with the escapes JSON requires and UTF-8 for everything else
    // ([STRINGS]); names and symbols are plain ASCII in any valid schema anyway.
    let _ = write!(out, "{}", Value::String(s.to_owned()));
}

/// The full name of a named schema's `name`, given its `namespace` attribute and the enclosing one.
fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match namespace.unwrap_or(enclosing) {
        "" => name.to_owned(),
        ns => format!("{ns}.{name}"),
    }
}

/// The namespace part of a full name.
fn namespace_of(full: &str) -> &str {
    full.rsplit_once('.').map_or("", |(ns, _)| ns)
}

fn write_schema(
    schema: &Value,
    enclosing: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    match schema {
        Value::String(name) => write_reference(name, enclosing, defined, out),
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(branch, enclosing, defined, out)?;
            }
            out.push(']');
            Ok(())
        }
        Value::Object(object) => {
            let kind = object.get("type").ok_or(CanonicalError("an object schema has no type"))?;
            let Value::String(kind) = kind else {
                // `{"type": {...}}` or `{"type": [...]}`: the attribute holds a whole schema.
                return write_schema(kind, enclosing, defined, out);
            };
            match kind.as_str() {
                "record" | "error" | "enum" | "fixed" => write_named(object, kind, enclosing, defined, out),
                "array" => {
                    out.push_str(r#"{"type":"array","items":"#);
                    let items = object.get("items").ok_or(CanonicalError("an array has no items"))?;
                    write_schema(items, enclosing, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                "map" => {
                    out.push_str(r#"{"type":"map","values":"#);
                    let values = object.get("values").ok_or(CanonicalError("a map has no values"))?;
                    write_schema(values, enclosing, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                // [PRIMITIVES]: `{"type":"long","logicalType":...}` is "long"; a named reference
                // written as `{"type":"Name"}` is the reference.
                other => write_reference(other, enclosing, defined, out),
            }
        }
        _ => Err(CanonicalError("a schema is neither a string, an array nor an object")),
    }
}

fn write_reference(
    name: &str,
    enclosing: &str,
    defined: &HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    if PRIMITIVES.contains(&name) {
        write_str(name, out);
        return Ok(());
    }
    let qualified = full_name(name, None, enclosing);
    // A short name resolves in the enclosing namespace first, then in the null namespace.
    let resolved = [qualified.as_str(), name]
        .into_iter()
        .find(|n| defined.contains(*n))
        .ok_or(CanonicalError("a type name is used before it is defined"))?;
    write_str(resolved, out);
    Ok(())
}

fn write_named(
    object: &serde_json::Map<String, Value>,
    kind: &str,
    enclosing: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    let Some(Value::String(name)) = object.get("name") else {
        return Err(CanonicalError("a named type has no name"));
    };
    let namespace = match object.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::String(ns)) => Some(ns.as_str()),
        Some(_) => return Err(CanonicalError("a namespace is not a string")),
    };
    let full = full_name(name, namespace, enclosing);
    if !defined.insert(full.clone()) {
        return Err(CanonicalError("a type name is defined twice"));
    }
    out.push_str(r#"{"name":"#);
    write_str(&full, out);
    out.push_str(r#","type":"#);
    // "error" is a record in every respect the canonical form keeps.
    write_str(if kind == "error" { "record" } else { kind }, out);
    let inner = namespace_of(&full).to_owned();
    match kind {
        "enum" => {
            let Some(Value::Array(symbols)) = object.get("symbols") else {
                return Err(CanonicalError("an enum has no symbols"));
            };
            out.push_str(r#","symbols":["#);
            for (i, symbol) in symbols.iter().enumerate() {
                let Value::String(symbol) = symbol else {
                    return Err(CanonicalError("an enum symbol is not a string"));
                };
                if i > 0 {
                    out.push(',');
                }
                write_str(symbol, out);
            }
            out.push(']');
        }
        "fixed" => {
            // [INTEGERS]: the size as a plain integer, whether it was written quoted or not.
            let size = match object.get("size") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse::<u64>().ok(),
                _ => None,
            }
            .ok_or(CanonicalError("a fixed has no integer size"))?;
            let _ = write!(out, r#","size":{size}"#);
        }
        _ => {
            let Some(Value::Array(fields)) = object.get("fields") else {
                return Err(CanonicalError("a record has no fields"));
            };
            out.push_str(r#","fields":["#);
            for (i, field) in fields.iter().enumerate() {
                let Some(Value::String(field_name)) = field.get("name") else {
                    return Err(CanonicalError("a record field has no name"));
                };
                let field_type = field.get("type").ok_or(CanonicalError("a record field has no type"))?;
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"name":"#);
                write_str(field_name, out);
                out.push_str(r#","type":"#);
                write_schema(field_type, &inner, defined, out)?;
                out.push('}');
            }
            out.push(']');
        }
    }
    out.push('}');
    Ok(())
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
