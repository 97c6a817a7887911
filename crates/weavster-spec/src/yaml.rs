//! A YAML reader that keeps the source location of every node, and a serde
//! `Deserializer` over that tree so that every deserialization error carries
//! the span of the node it is about.
//!
//! Scalars are resolved with the YAML 1.2 core schema. When a string is
//! expected, a plain scalar that looks like a number or a boolean is accepted
//! as its source text (`version: 1.0` is the string `"1.0"`), because users
//! write expressions such as `set: { n: 2 }` and versions without quotes.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use crate::diag::Span;

/// One YAML node with its location in the (rendered) source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// Source text of a scalar (after unquoting), `None` for collections.
    pub raw: Option<String>,
    /// Whether a scalar was quoted or a block scalar (never coerced).
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl NodeKind {
    /// What this node is, as a user would say it.
    pub fn describe(&self) -> &'static str {
        match self {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a map",
        }
    }
}

/// A step into a node: a map key or a list index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Node {
    /// The value under `key` if this is a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value node under `key` if this is a map.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.raw.as_deref() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The element at `index` if this is a list.
    pub fn index(&self, index: usize) -> Option<&Node> {
        match &self.kind {
            NodeKind::Seq(items) => items.get(index),
            _ => None,
        }
    }

    /// Follows `steps`; stops at the deepest node that exists.
    pub fn find(&self, steps: &[Step<'_>]) -> &Node {
        let mut node = self;
        for step in steps {
            let next = match step {
                Step::Key(k) => node.get(k),
                Step::Index(i) => node.index(*i),
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// Entries of a map (empty for anything else).
    pub fn entries(&self) -> &[(Node, Node)] {
        match &self.kind {
            NodeKind::Map(entries) => entries,
            _ => &[],
        }
    }

    /// Items of a list (empty for anything else).
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            NodeKind::Seq(items) => items,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Offset of the scalar's text inside the source: the span start, past an
    /// opening quote. Exact for plain and single-line quoted scalars.
    pub fn text_start(&self) -> usize {
        if self.quoted && self.raw.is_some() {
            self.span.start + 1
        } else {
            self.span.start
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    pub span: Span,
}

/// Maps character indexes (what the YAML scanner reports) to byte offsets.
struct Offsets {
    bytes: Vec<usize>,
}

impl Offsets {
    fn new(src: &str) -> Self {
        let mut bytes: Vec<usize> = src.char_indices().map(|(b, _)| b).collect();
        bytes.push(src.len());
        Offsets { bytes }
    }

    fn span(&self, s: saphyr_parser::Span) -> Span {
        let at = |i: usize| {
            self.bytes
                .get(i)
                .copied()
                .unwrap_or_else(|| self.bytes.last().copied().unwrap_or(0))
        };
        Span {
            start: at(s.start.index()),
            end: at(s.end.index()).max(at(s.start.index())),
            line: s.start.line(),
            col: s.start.col() + 1,
        }
    }

    fn point(&self, m: &saphyr_parser::Marker) -> Span {
        let at = self
            .bytes
            .get(m.index())
            .copied()
            .unwrap_or_else(|| self.bytes.last().copied().unwrap_or(0));
        Span {
            start: at,
            end: at,
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// The most nodes a document may expand to (aliases count the nodes they
/// repeat): a few aliases of aliases cannot make a small file use gigabytes.
pub const MAX_NODES: usize = 250_000;
/// The deepest a document may nest lists and maps.
pub const MAX_DEPTH: usize = 128;

/// Parses one YAML document. An empty document is `Null`. Documents that
/// expand to more than [`MAX_NODES`] nodes or nest deeper than
/// [`MAX_DEPTH`] are errors.
pub fn parse(src: &str) -> Result<Node, YamlError> {
    let offsets = Offsets::new(src);
    let mut parser = Parser::new_from_str(src);
    let mut builder = Builder {
        offsets: &offsets,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        docs: 0,
        nodes: 0,
    };
    while let Some(next) = parser.next_event() {
        match next {
            Ok((event, span)) => {
                let span = offsets.span(span);
                if builder.event(event, span)? {
                    break;
                }
            }
            Err(e) => {
                return Err(YamlError {
                    message: e.info().to_string(),
                    span: offsets.point(e.marker()),
                });
            }
        }
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Null,
        span: Span::default(),
        raw: None,
        quoted: false,
    }))
}

enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder<'a> {
    offsets: &'a Offsets,
    stack: Vec<Frame>,
    /// Anchored nodes, with how many nodes each holds.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    docs: usize,
    /// Nodes built so far, repeated ones included.
    nodes: usize,
}

/// How many nodes `n` holds (itself included).
fn count(n: &Node) -> usize {
    1 + match &n.kind {
        NodeKind::Seq(items) => items.iter().map(count).sum(),
        NodeKind::Map(entries) => entries.iter().map(|(k, v)| count(k) + count(v)).sum(),
        _ => 0,
    }
}

impl Builder<'_> {
    /// Handles one event; returns true at the end of the stream.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<bool, YamlError> {
        let _ = self.offsets;
        match event {
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(_) => {
                self.docs += 1;
                if self.docs > 1 {
                    return Err(YamlError {
                        message: "expected a single YAML document, found a second one (`---`)"
                            .into(),
                        span,
                    });
                }
            }
            Event::Alias(id) => {
                let size = self.anchors.get(&id).map_or(0, |(_, size)| *size);
                self.grow(size, span)?;
                let (node, _) = self.anchors.get(&id).ok_or_else(|| YamlError {
                    message: "alias refers to an unknown anchor".into(),
                    span,
                })?;
                let node = Node {
                    span,
                    ..node.clone()
                };
                self.push(node)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let quoted = !matches!(style, ScalarStyle::Plain);
                let kind = if quoted || forced_str {
                    NodeKind::Str(value.to_string())
                } else {
                    resolve_plain(&value)
                };
                let node = Node {
                    kind,
                    span,
                    raw: Some(value.to_string()),
                    quoted: quoted || forced_str,
                };
                self.grow(1, span)?;
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push(node)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.deeper(span)?;
                self.stack.push(Frame::Seq {
                    span,
                    anchor,
                    items: Vec::new(),
                })
            }
            Event::MappingStart(anchor, _) => {
                self.deeper(span)?;
                self.stack.push(Frame::Map {
                    span,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(false);
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        span: start,
                        anchor,
                        items,
                    } => (
                        Node {
                            kind: NodeKind::Seq(items),
                            span: join(start, span),
                            raw: None,
                            quoted: false,
                        },
                        anchor,
                    ),
                    Frame::Map {
                        span: start,
                        anchor,
                        entries,
                        ..
                    } => (
                        Node {
                            kind: NodeKind::Map(entries),
                            span: join(start, span),
                            raw: None,
                            quoted: false,
                        },
                        anchor,
                    ),
                };
                self.grow(1, span)?;
                if anchor > 0 {
                    let size = count(&node);
                    self.anchors.insert(anchor, (node.clone(), size));
                }
                self.push(node)?;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
        }
        Ok(false)
    }

    /// Counts `n` more nodes against [`MAX_NODES`].
    fn grow(&mut self, n: usize, span: Span) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                message: format!(
                    "the document expands to more than {MAX_NODES} nodes (aliases repeat the nodes they refer to)"
                ),
                span,
            });
        }
        Ok(())
    }

    fn deeper(&self, span: Span) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                message: format!("lists and maps nest deeper than {MAX_DEPTH} levels"),
                span,
            });
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if matches!(node.kind, NodeKind::Seq(_) | NodeKind::Map(_)) {
                        return Err(YamlError {
                            message: "a map key must be a scalar".into(),
                            span: node.span,
                        });
                    }
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.raw == node.raw) {
                        return Err(YamlError {
                            message: format!(
                                "duplicate key `{}` (first defined on line {})",
                                node.raw.as_deref().unwrap_or_default(),
                                first.span.line
                            ),
                            span: node.span,
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }
}

fn join(start: Span, end: Span) -> Span {
    Span {
        start: start.start,
        end: end.end.max(start.start),
        line: start.line,
        col: start.col,
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve_plain(s: &str) -> NodeKind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeKind::Int(i);
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return NodeKind::Int(i);
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return NodeKind::Int(i);
    }
    let looks_float = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.as_bytes()[0] != b'e'
        && digits.as_bytes()[0] != b'E';
    if looks_float && let Ok(f) = s.parse::<f64>() {
        return NodeKind::Float(f);
    }
    NodeKind::Str(s.to_string())
}

// ---------------------------------------------------------------------------
// Deserialization
// ---------------------------------------------------------------------------

/// What went wrong while turning a node into a typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum DeErrorKind {
    UnknownField {
        field: String,
        expected: Vec<&'static str>,
    },
    UnknownVariant {
        variant: String,
        expected: Vec<&'static str>,
    },
    MissingField {
        field: &'static str,
    },
    InvalidType {
        found: String,
        expected: String,
    },
    InvalidValue {
        found: String,
        expected: String,
    },
    DuplicateField {
        field: &'static str,
    },
    /// An unquoted YAML null (`null`, `~`, nothing) where one of these
    /// words is expected: YAML reads it as "not set", so the default would
    /// silently apply.
    NullForChoice {
        field: String,
        expected: Vec<String>,
    },
    Custom,
}

/// A deserialization error located at a node.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub kind: DeErrorKind,
    pub message: String,
    pub span: Option<Span>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl DeError {
    fn at(mut self, span: Span) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
        }
        self
    }
}

/// Keys of `node` whose value is an unquoted YAML null where `schema`
/// (the JSON Schema of the type `node` is read as) expects one of a list of
/// words: an error each, so that `on_no_match: null` is never read as "not
/// set" (the word `null` must be quoted).
pub fn null_choices(node: &Node, schema: &serde_json::Value) -> Vec<DeError> {
    let mut out = Vec::new();
    null_choices_at(node, schema, schema, &mut out);
    // A key in several alternatives is reported once.
    out.sort_by_key(|e| e.span.map(|s| s.start));
    out.dedup();
    out
}

/// The object and array schemas `schema` stands for: references resolved,
/// `anyOf`/`oneOf`/`allOf` alternatives flattened.
fn alternatives<'a>(
    root: &'a serde_json::Value,
    schema: &'a serde_json::Value,
    out: &mut Vec<&'a serde_json::Value>,
    depth: usize,
) {
    if depth > 16 {
        return;
    }
    if let Some(r) = schema
        .get("$ref")
        .and_then(|r| r.as_str())
        .and_then(|r| r.strip_prefix("#/$defs/"))
        && let Some(target) = root.get("$defs").and_then(|d| d.get(r))
    {
        alternatives(root, target, out, depth + 1);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(|l| l.as_array()) {
            for s in list {
                alternatives(root, s, out, depth + 1);
            }
        }
    }
    out.push(schema);
}

/// The words a schema allows when it is a choice of strings.
fn choice_words(root: &serde_json::Value, schema: &serde_json::Value) -> Vec<String> {
    let mut alts = Vec::new();
    alternatives(root, schema, &mut alts, 0);
    let mut words = Vec::new();
    for a in alts {
        if let Some(list) = a.get("enum").and_then(|e| e.as_array()) {
            words.extend(list.iter().filter_map(|w| w.as_str().map(str::to_string)));
        }
        if let Some(w) = a.get("const").and_then(|c| c.as_str()) {
            words.push(w.to_string());
        }
    }
    words
}

fn null_choices_at(
    node: &Node,
    root: &serde_json::Value,
    schema: &serde_json::Value,
    out: &mut Vec<DeError>,
) {
    let mut alts = Vec::new();
    alternatives(root, schema, &mut alts, 0);
    match &node.kind {
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                let Some(key) = k.raw.as_deref() else {
                    continue;
                };
                let props: Vec<&serde_json::Value> = alts
                    .iter()
                    .filter_map(|a| a.get("properties").and_then(|p| p.get(key)))
                    .chain(
                        alts.iter()
                            .filter_map(|a| a.get("additionalProperties"))
                            .filter(|p| p.is_object()),
                    )
                    .collect();
                for prop in props {
                    if matches!(v.kind, NodeKind::Null) && !v.quoted {
                        let words = choice_words(root, prop);
                        if !words.is_empty() {
                            let listed: Vec<String> =
                                words.iter().map(|w| format!("`{w}`")).collect();
                            out.push(DeError {
                                message: format!(
                                    "`{key}` is YAML's null (not set), but it takes one of {}{}",
                                    listed.join(", "),
                                    if words.iter().any(|w| w == "null") {
                                        ": to mean the word, quote it: `\"null\"`"
                                    } else {
                                        ""
                                    }
                                ),
                                kind: DeErrorKind::NullForChoice {
                                    field: key.to_string(),
                                    expected: words,
                                },
                                span: Some(v.span),
                            });
                            break;
                        }
                    } else {
                        null_choices_at(v, root, prop, out);
                    }
                }
            }
        }
        NodeKind::Seq(items) => {
            for a in &alts {
                if let Some(item) = a.get("items") {
                    for it in items {
                        null_choices_at(it, root, item, out);
                    }
                    break;
                }
            }
        }
        _ => {}
    }
}

fn one_of(expected: &[&'static str]) -> String {
    match expected {
        [] => "nothing".to_string(),
        [one] => format!("`{one}`"),
        _ => {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!("one of {}", list.join(", "))
        }
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            kind: DeErrorKind::Custom,
            message: msg.to_string(),
            span: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = describe_unexpected(&unexp);
        let expected = exp.to_string();
        DeError {
            message: format!("expected {expected}, found {found}"),
            kind: DeErrorKind::InvalidType { found, expected },
            span: None,
        }
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = describe_unexpected(&unexp);
        let expected = exp.to_string();
        DeError {
            message: format!("invalid value {found}, expected {expected}"),
            kind: DeErrorKind::InvalidValue { found, expected },
            span: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            message: format!("unknown key `{field}`"),
            kind: DeErrorKind::UnknownField {
                field: field.to_string(),
                expected: expected.to_vec(),
            },
            span: None,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            message: format!("unknown variant `{variant}`, expected {}", one_of(expected)),
            kind: DeErrorKind::UnknownVariant {
                variant: variant.to_string(),
                expected: expected.to_vec(),
            },
            span: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            message: format!("missing key `{field}`"),
            kind: DeErrorKind::MissingField { field },
            span: None,
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError {
            message: format!("duplicate key `{field}`"),
            kind: DeErrorKind::DuplicateField { field },
            span: None,
        }
    }
}

fn describe_unexpected(u: &de::Unexpected<'_>) -> String {
    match u {
        de::Unexpected::Bool(b) => format!("boolean `{b}`"),
        de::Unexpected::Signed(i) => format!("integer `{i}`"),
        de::Unexpected::Unsigned(i) => format!("integer `{i}`"),
        de::Unexpected::Float(f) => format!("number `{f}`"),
        de::Unexpected::Str(s) => format!("string \"{s}\""),
        de::Unexpected::Unit => "null".to_string(),
        de::Unexpected::Seq => "a list".to_string(),
        de::Unexpected::Map => "a map".to_string(),
        other => other.to_string(),
    }
}

/// Deserializes `T` from a node.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe { node, skip: &[] })
}

/// Deserializes `T` from a node, reporting every error rather than the
/// first: after an error, the map entry holding the offending node is
/// removed and deserialization tried again (a key missing because it was
/// removed is not reported). At most 50 errors.
pub fn from_node_all<T: DeserializeOwned>(node: &Node, skip: &[&str]) -> Result<T, Vec<DeError>> {
    let first = match T::deserialize(NodeDe { node, skip }) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut errors = vec![first];
    let mut tree = node.clone();
    let mut removed: Vec<String> = Vec::new();
    while errors.len() < 50 {
        let Some(span) = errors.last().and_then(|e| e.span) else {
            break;
        };
        match remove_entry(&mut tree, span) {
            Some(key) => removed.push(key),
            None => break,
        }
        match T::deserialize(NodeDe { node: &tree, skip }) {
            Ok(_) => break,
            Err(e) => {
                // A key missing because it was removed, or misspelled as an
                // unknown key already reported, is not a new problem.
                let repeated = matches!(&e.kind, DeErrorKind::MissingField { field }
                    if removed.iter().any(|r| r == field
                        || crate::diag::did_you_mean(r, [*field]).is_some()))
                    || errors
                        .iter()
                        .any(|x| x.span == e.span && x.message == e.message);
                if repeated {
                    break;
                }
                errors.push(e);
            }
        }
    }
    Err(errors)
}

/// Removes the map entry whose key or value is at `span` (searched from the
/// deepest node); returns its key.
fn remove_entry(node: &mut Node, span: Span) -> Option<String> {
    match &mut node.kind {
        NodeKind::Map(entries) => {
            for (_, v) in entries.iter_mut() {
                if let Some(k) = remove_entry(v, span) {
                    return Some(k);
                }
            }
            let i = entries
                .iter()
                .position(|(k, v)| k.span == span || v.span == span)?;
            let (k, _) = entries.remove(i);
            Some(k.raw.unwrap_or_default())
        }
        NodeKind::Seq(items) => items.iter_mut().find_map(|n| remove_entry(n, span)),
        _ => None,
    }
}

/// Deserializes `T` from a map node, ignoring the keys in `skip` (used for
/// tagged unions whose tag was read separately, so that errors inside the
/// variant keep their precise locations).
pub fn from_node_skipping<T: DeserializeOwned>(node: &Node, skip: &[&str]) -> Result<T, DeError> {
    T::deserialize(NodeDe { node, skip })
}

/// Parses YAML text and deserializes `T` from it.
pub fn from_str<T: DeserializeOwned>(src: &str) -> Result<T, DeError> {
    let node = parse(src).map_err(|e| DeError {
        kind: DeErrorKind::Custom,
        message: e.message,
        span: Some(e.span),
    })?;
    from_node(&node)
}

#[derive(Clone, Copy)]
struct NodeDe<'a> {
    node: &'a Node,
    skip: &'a [&'a str],
}

impl<'a> NodeDe<'a> {
    fn new(node: &'a Node) -> Self {
        NodeDe { node, skip: &[] }
    }

    fn scalar_text(&self) -> Option<&'a str> {
        match &self.node.kind {
            NodeKind::Str(s) => Some(s),
            NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_) => self.node.raw.as_deref(),
            _ => None,
        }
    }

    fn map_access(&self) -> MapDe<'a> {
        MapDe {
            entries: self.node.entries().iter(),
            skip: self.skip,
            value: None,
        }
    }
}

macro_rules! forward_to_any {
    ($($name:ident)*) => {
        $(
            fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.deserialize_any(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let span = self.node.span;
        let result = match &self.node.kind {
            NodeKind::Null => visitor.visit_unit(),
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            NodeKind::Int(i) => visitor.visit_i64(*i),
            NodeKind::Float(f) => visitor.visit_f64(*f),
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            NodeKind::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
            }),
            NodeKind::Map(_) => visitor.visit_map(self.map_access()),
        };
        result.map_err(|e| e.at(span))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar_text() {
            Some(s) => visitor
                .visit_borrowed_str(s)
                .map_err(|e: DeError| e.at(self.node.span)),
            None => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e| e.at(self.node.span))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Map(_) => visitor
                .visit_map(self.map_access())
                .map_err(|e| e.at(self.node.span)),
            // An empty value (`key:`) stands for an empty map.
            NodeKind::Null => visitor
                .visit_map(self.map_access())
                .map_err(|e| e.at(self.node.span)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Null => visitor
                .visit_seq(SeqDe { items: [].iter() })
                .map_err(|e| e.at(self.node.span)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let span = self.node.span;
        match &self.node.kind {
            NodeKind::Str(_) | NodeKind::Int(_) | NodeKind::Bool(_) | NodeKind::Float(_) => {
                let text = self.scalar_text().unwrap_or_default();
                visitor
                    .visit_enum(text.into_deserializer())
                    .map_err(|e: DeError| e.at(span))
            }
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                visitor
                    .visit_enum(EnumDe { key: k, value: v })
                    .map_err(|e| e.at(span))
            }
            other => {
                let found = match other {
                    NodeKind::Map(entries) if entries.is_empty() => "an empty map".to_string(),
                    NodeKind::Map(entries) => format!("a map with {} keys", entries.len()),
                    other => other.describe().to_string(),
                };
                let expected = format!("a map with exactly one key, {}", one_of(variants));
                Err(DeError {
                    message: format!("expected {expected}, found {found}"),
                    kind: DeErrorKind::InvalidType { found, expected },
                    span: Some(span),
                })
            }
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_bytes deserialize_byte_buf
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
}

struct SeqDe<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDe::new(node))
                .map(Some)
                .map_err(|e| e.at(node.span)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    skip: &'a [&'a str],
    value: Option<&'a Node>,
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (k, v) in self.entries.by_ref() {
            if k.raw.as_deref().is_some_and(|raw| self.skip.contains(&raw)) {
                continue;
            }
            self.value = Some(v);
            return seed
                .deserialize(NodeDe::new(k))
                .map(Some)
                .map_err(|e| e.at(k.span));
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let node = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value requested before key"))?;
        seed.deserialize(NodeDe::new(node))
            .map_err(|e| e.at(node.span))
    }
}

struct EnumDe<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de> de::EnumAccess<'de> for EnumDe<'de> {
    type Error = DeError;
    type Variant = VariantDe<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantDe<'de>), DeError> {
        let v = seed
            .deserialize(NodeDe::new(self.key))
            .map_err(|e| e.at(self.key.span))?;
        Ok((v, VariantDe { value: self.value }))
    }
}

struct VariantDe<'a> {
    value: &'a Node,
}

impl<'de> de::VariantAccess<'de> for VariantDe<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value.kind {
            NodeKind::Null => Ok(()),
            _ => Err(de::Error::invalid_type(
                de::Unexpected::Map,
                &"a name without arguments",
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(NodeDe::new(self.value))
            .map_err(|e| e.at(self.value.span))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(NodeDe::new(self.value), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(NodeDe::new(self.value), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_values() {
        let node = parse("a:\n  b: [1, 'x']\n").expect("valid yaml");
        let b = node.find(&[Step::Key("a"), Step::Key("b"), Step::Index(1)]);
        assert_eq!((b.span.line, b.span.col), (2, 10));
        assert_eq!(b.kind, NodeKind::Str("x".into()));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n").expect_err("duplicate");
        assert_eq!(err.span.line, 2);
    }

    #[test]
    fn plain_numbers_coerce_to_strings_when_asked() {
        let v: std::collections::BTreeMap<String, String> =
            from_str("a: 1.0\nb: true\n").expect("coerces");
        assert_eq!(v["a"], "1.0");
        assert_eq!(v["b"], "true");
    }

    #[test]
    fn null_is_not_a_string() {
        let err = from_str::<std::collections::BTreeMap<String, String>>("a:\n").expect_err("null");
        assert_eq!(err.span.map(|s| s.line), Some(1));
    }
}
