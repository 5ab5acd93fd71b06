//! The binary layout of a schema, compiled from its Parsing Canonical Form, and a bounded walk of a
//! datum over it.
//!
//! apache-avro decodes into a `Value` tree with no limit on how many values a datum may declare: an
//! array of `null` costs no bytes per item, so ten bytes can declare billions of items, and a
//! recursive schema lets a datum nest as deep as it likes. Before apache-avro sees a datum, `check`
//! walks it with the writer's layout, allocating nothing, and refuses one that declares more than
//! [`MAX_VALUES`] values, nests deeper than [`MAX_DEPTH`], or claims more bytes than it has. What
//! passes decodes into at most `MAX_VALUES` values plus the message's own bytes.

use std::collections::HashMap;

use serde_json::Value as Json;

/// Most values (fields, items, map entries, union branches) one datum may declare.
pub const MAX_VALUES: usize = 10_000;
/// Deepest nesting of values a datum may have (and of types a registry schema may have).
pub const MAX_DEPTH: usize = 32;

/// One node of a layout: how a value of that type is laid out in Avro's binary encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Null,
    Boolean,
    /// `int` and `long`: a zig-zag varint.
    Varint,
    Float,
    Double,
    /// `bytes` and `string`: a length, then that many bytes.
    Bytes,
    Fixed(usize),
    Enum(usize),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<usize>),
    /// A named type being compiled; after compilation, only present in a recursive schema.
    Pending,
}

/// The compiled layout of a schema: nodes in an arena, the root first.
#[derive(Debug, Clone)]
pub struct Layout {
    nodes: Vec<Node>,
    recursive: bool,
    depth: usize,
}

/// Why a datum was refused by the walk: too big, too deep, or shorter than it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatumError {
    /// More than `MAX_VALUES` values, or nesting deeper than `MAX_DEPTH`.
    TooComplex,
    /// A length or the datum itself runs past the end of the message.
    Truncated,
    /// Bytes that cannot be this schema's encoding (bad union or enum index, overlong varint).
    Malformed,
    /// Bytes left after a complete datum.
    TrailingBytes,
}

impl Layout {
    /// Compiles the layout of a schema from its canonical form (already parsed as JSON).
    pub fn compile(canonical: &Json) -> Option<Self> {
        let mut compiler = Compiler { nodes: Vec::new(), names: HashMap::new(), recursive: false };
        compiler.node(canonical)?;
        let mut layout = Layout { nodes: compiler.nodes, recursive: compiler.recursive, depth: 0 };
        if !layout.recursive {
            layout.depth = layout.depth_of(0);
        }
        Some(layout)
    }

    /// True when a named type contains itself: its datums may nest without bound.
    pub fn is_recursive(&self) -> bool {
        self.recursive
    }

    /// The deepest nesting of types (`usize::MAX` for a recursive schema).
    pub fn depth(&self) -> usize {
        if self.recursive { usize::MAX } else { self.depth }
    }

    /// How many nodes the layout has: a measure of the schema's size.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for an empty layout (never for a compiled one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn depth_of(&self, node: usize) -> usize {
        // Only called on non-recursive layouts, whose depth is at most the node count.
        1 + match &self.nodes[node] {
            Node::Array(inner) | Node::Map(inner) => self.depth_of(*inner),
            Node::Union(children) | Node::Record(children) => {
                children.iter().map(|c| self.depth_of(*c)).max().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Walks one datum, allocating nothing; `Ok` if it is well formed and within the limits.
    pub fn check(&self, datum: &[u8]) -> Result<(), DatumError> {
        let mut walk = Walk { layout: self, input: datum, budget: MAX_VALUES };
        walk.value(0, 0)?;
        if walk.input.is_empty() { Ok(()) } else { Err(DatumError::TrailingBytes) }
    }
}

struct Compiler {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
    recursive: bool,
}

impl Compiler {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &Json) -> Option<usize> {
        match schema {
            Json::String(name) => Some(match name.as_str() {
                "null" => self.push(Node::Null),
                "boolean" => self.push(Node::Boolean),
                "int" | "long" => self.push(Node::Varint),
                "float" => self.push(Node::Float),
                "double" => self.push(Node::Double),
                "bytes" | "string" => self.push(Node::Bytes),
                named => {
                    let index = *self.names.get(named)?;
                    if self.nodes[index] == Node::Pending {
                        self.recursive = true;
                    }
                    index
                }
            }),
            Json::Array(branches) => {
                let slot = self.push(Node::Pending);
                let children = branches.iter().map(|b| self.node(b)).collect::<Option<Vec<_>>>()?;
                self.nodes[slot] = Node::Union(children);
                Some(slot)
            }
            Json::Object(object) => {
                let slot = self.push(Node::Pending);
                if let Some(Json::String(name)) = object.get("name") {
                    self.names.insert(name.clone(), slot);
                }
                let node = match object.get("type")?.as_str()? {
                    "record" => {
                        let fields = object.get("fields")?.as_array()?;
                        let children =
                            fields.iter().map(|f| self.node(f.get("type")?)).collect::<Option<Vec<_>>>()?;
                        Node::Record(children)
                    }
                    "enum" => Node::Enum(object.get("symbols")?.as_array()?.len()),
                    "fixed" => Node::Fixed(usize::try_from(object.get("size")?.as_u64()?).ok()?),
                    "array" => Node::Array(self.node(object.get("items")?)?),
                    "map" => Node::Map(self.node(object.get("values")?)?),
                    _ => return None,
                };
                self.nodes[slot] = node;
                Some(slot)
            }
            _ => None,
        }
    }
}

struct Walk<'a> {
    layout: &'a Layout,
    input: &'a [u8],
    budget: usize,
}

impl Walk<'_> {
    fn spend(&mut self, values: u64) -> Result<(), DatumError> {
        let values = usize::try_from(values).map_err(|_| DatumError::TooComplex)?;
        self.budget = self.budget.checked_sub(values).ok_or(DatumError::TooComplex)?;
        Ok(())
    }

    fn take(&mut self, n: u64) -> Result<(), DatumError> {
        let n = usize::try_from(n).map_err(|_| DatumError::Truncated)?;
        if n > self.input.len() {
            return Err(DatumError::Truncated);
        }
        self.input = &self.input[n..];
        Ok(())
    }

    fn varint(&mut self) -> Result<i64, DatumError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.input.split_first().ok_or(DatumError::Truncated)?;
            self.input = rest;
            if shift == 63 && byte > 1 {
                return Err(DatumError::Malformed);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(DatumError::Malformed)
    }

    fn length(&mut self) -> Result<u64, DatumError> {
        u64::try_from(self.varint()?).map_err(|_| DatumError::Malformed)
    }

    fn value(&mut self, node: usize, depth: usize) -> Result<(), DatumError> {
        self.spend(1)?;
        self.charged_value(node, depth)
    }

    /// A value already paid for (an array item or map value, charged with its block's count).
    fn charged_value(&mut self, node: usize, depth: usize) -> Result<(), DatumError> {
        if depth >= MAX_DEPTH {
            return Err(DatumError::TooComplex);
        }
        match &self.layout.nodes[node] {
            Node::Null => Ok(()),
            Node::Boolean => match self.input.split_first() {
                Some((0 | 1, rest)) => {
                    self.input = rest;
                    Ok(())
                }
                Some(_) => Err(DatumError::Malformed),
                None => Err(DatumError::Truncated),
            },
            Node::Varint => self.varint().map(drop),
            Node::Float => self.take(4),
            Node::Double => self.take(8),
            Node::Bytes => {
                let n = self.length()?;
                self.take(n)
            }
            Node::Fixed(size) => self.take(*size as u64),
            Node::Enum(symbols) => {
                let index = self.varint()?;
                if usize::try_from(index).is_ok_and(|i| i < *symbols) {
                    Ok(())
                } else {
                    Err(DatumError::Malformed)
                }
            }
            Node::Union(branches) => {
                let index = usize::try_from(self.varint()?).map_err(|_| DatumError::Malformed)?;
                let branch = *branches.get(index).ok_or(DatumError::Malformed)?;
                self.value(branch, depth + 1)
            }
            Node::Record(fields) => fields.iter().try_for_each(|f| self.value(*f, depth + 1)),
            Node::Array(items) => self.blocks(|walk| walk.charged_value(*items, depth + 1)),
            Node::Map(values) => self.blocks(|walk| {
                let n = walk.length()?;
                walk.take(n)?;
                walk.charged_value(*values, depth + 1)
            }),
            Node::Pending => Err(DatumError::Malformed),
        }
    }

    /// Array and map blocks: a count (negative: followed by the block's size in bytes), items, and
    /// a zero count at the end. The whole count is charged before any item is read.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DatumError>,
    ) -> Result<(), DatumError> {
        loop {
            let count = self.varint()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.length()?;
            }
            let count = count.unsigned_abs();
            self.spend(count)?;
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
