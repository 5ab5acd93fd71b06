//! Embeds the event contract: lists `schemas/<topic>/v<N>.avsc` and writes an `include_str!` table
//! to `$OUT_DIR/embedded_schemas.rs`, so publishing a schema version is "drop a file, rebuild".
//!
//! A file in `schemas/<topic>/` that ends in `.avsc` but is not named `v<N>.avsc` fails the build:
//! a typo must not silently drop a version from the binary.

use std::io::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() -> Result<()> {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| missing("CARGO_MANIFEST_DIR"))?)
        .join("schemas");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut entries = Vec::new();
    for topic in fs::read_dir(&root)? {
        let topic = topic?;
        if !topic.file_type()?.is_dir() {
            continue;
        }
        let topic_name = utf8(&topic.path())?;
        for file in fs::read_dir(topic.path())? {
            let path = file?.path();
            if path.extension().is_none_or(|e| e != "avsc") {
                continue;
            }
            let version = version_of(&path)?;
            entries.push((topic_name.clone(), version, path));
        }
    }
    entries.sort();

    let mut out = String::from("&[\n");
    for (topic, version, path) in &entries {
        let path = path.to_str().ok_or_else(|| invalid(path, "path is not UTF-8"))?;
        out.push_str(&format!(
            "    EmbeddedSchema {{ topic: {topic:?}, version: {version}, json: include_str!({path:?}) }},\n"
        ));
    }
    out.push_str("]\n");
    let dest = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| missing("OUT_DIR"))?);
    fs::write(dest.join("embedded_schemas.rs"), out)
}

/// `v12.avsc` -> 12.
fn version_of(path: &Path) -> Result<u32> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(path, "schema files must be named v<N>.avsc with N >= 1"))
}

fn utf8(dir: &Path) -> Result<String> {
    dir.file_name()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .ok_or_else(|| invalid(dir, "topic folder name is not UTF-8"))
}

fn invalid(path: &Path, why: &str) -> Error {
    Error::new(ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}

fn missing(var: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("{var} is not set"))
}
