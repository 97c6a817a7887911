//! ABI v1: the batch protocol (see docs/abi.md) and the exports macro.
//!
//! Input batch: a header line `{"now": "<RFC 3339>", "seed": <u64>}`, then
//! one JSON record per line. Output: one line per outcome:
//! `{"i":N,"o":[routes],"r":{record}}`, `{"i":N,"f":1}` (filtered) or
//! `{"i":N,"e":{"stage":…,"message":…,"path":…}}` (record error), where `N`
//! is the index of the input record (several lines share it after `explode`).
//!
//! Records are decoded partially, by how the flow uses each top-level field
//! ([`Flow::touch`]): a field it never touches is validated but kept as its
//! input text and written back verbatim, in its place; a field it only
//! reads is parsed for the flow (only the members it reads, when it reads
//! the field by member: [`Flow::reads`]), and written back as the text it
//! came with (so `1.50`, `1e400` or a 30-digit integer are not
//! reformatted); fields it writes are parsed and serialized. Key order is
//! the same as with a full decode. Any record a partial decode rejects is
//! decoded whole to report the error, so error messages are a full
//! decode's.
//!
//! Untouched fields written compactly (`"k":v,"k2":v2`) next to each other
//! are one *run*: one record entry, under the key NUL + run number, whose
//! text [`Raws`] holds — fewer map entries and no per-field copies. A run
//! cannot keep a full decode's meaning when an untouched key appears twice
//! (a full decode keeps the first place and the last value) or is written
//! with escapes, so such a record is decoded again field by field: each
//! untouched field its own entry, a string value marked with a leading NUL
//! (which no JSON text starts with). The property test
//! `runs_write_what_field_by_field_writes` holds the two to the same bytes.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{Ctx, Flow, Outcome, RecordError, Touch};

/// Runs a batch through `flow`, appending the encoded outcomes to `out`.
/// `Err` is a malformed batch header (a host bug), never a bad record.
pub fn process_batch<F: Flow + ?Sized>(
    flow: &F,
    vars: &Map<String, Value>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut lines = input.split(|b| *b == b'\n');
    let header = lines.next().unwrap_or_default();
    let header: Value =
        serde_json::from_slice(header).map_err(|e| format!("bad batch header: {e}"))?;
    let now = header
        .get("now")
        .and_then(Value::as_str)
        .ok_or("batch header has no `now`")?;
    let seed = header
        .get("seed")
        .and_then(Value::as_u64)
        .ok_or("batch header has no `seed`")?;
    let ctx = Ctx::new(now, seed, vars);
    let touch = |k: &str| flow.touch(k);
    let reads = |k: &str, member: &str| flow.reads(k, member);
    let mut outcomes = Vec::new();
    let mut raws = Raws::default();
    let mut index = 0u64;
    // The batch is validated as UTF-8 once (the runtime's always is);
    // otherwise each line is, and a line that is not gets the decode error.
    let text: Box<dyn Iterator<Item = Result<&str, &[u8]>>> = match std::str::from_utf8(input) {
        Ok(text) => Box::new(text.split('\n').skip(1).map(Ok)),
        Err(_) => Box::new(lines.map(|l| std::str::from_utf8(l).map_err(|_| l))),
    };
    for line in text {
        let blank = match line {
            Ok(l) => l.bytes().all(|b| b.is_ascii_whitespace()),
            Err(l) => l.iter().all(u8::is_ascii_whitespace),
        };
        if blank {
            continue;
        }
        outcomes.clear();
        let decoded = match line {
            Ok(line) => decode_with(line, &touch, &reads, &mut raws, true),
            Err(line) => serde_json::from_slice(line),
        };
        match decoded {
            Ok(record @ Value::Object(_)) => flow.run(record, &ctx, &mut outcomes),
            Ok(other) => outcomes.push(Outcome::Error(RecordError {
                stage: "decode",
                message: format!(
                    "a record must be a JSON object, not {}",
                    crate::ops::type_name(&other)
                ),
                path: None,
            })),
            Err(e) => outcomes.push(Outcome::Error(RecordError {
                stage: "decode",
                message: format!("invalid JSON: {e}"),
                path: None,
            })),
        }
        for o in &outcomes {
            encode(out, index, o, touch, &raws);
        }
        index += 1;
    }
    Ok(())
}

/// What a partial decode keeps of the input line for the encoder: the
/// text of the fields a flow only reads, and of the runs of untouched
/// fields. Borrowed from the line, so it lives as long as the batch input.
#[derive(Debug, Default)]
pub struct Raws<'a> {
    /// Read-only fields' input text, by key (last wins, as for duplicate
    /// keys in a decode).
    read: Vec<(Key<'a>, &'a str)>,
    /// Runs of untouched fields, in the record under the key [`run_key`]`(n)`.
    runs: Vec<&'a str>,
    /// Scratch: the untouched keys of the record being decoded.
    untouched: Vec<&'a str>,
}

impl<'a> Raws<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.read
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, r)| *r)
    }

    fn clear(&mut self) {
        self.read.clear();
        self.runs.clear();
    }
}

/// The marker of a field kept as its input text, and the first character
/// of a run's key. No JSON text starts with a NUL, and a key holding one is
/// written escaped, so never borrowed from the line.
const RAW: char = '\0';

/// The key of run `n` in a partially decoded record: NUL, then `n`.
fn run_key(n: usize) -> String {
    let mut k = String::with_capacity(4);
    k.push(RAW);
    k.push_str(itoa::Buffer::new().format(n));
    k
}

/// `n` in decimal (itoa: `core::fmt`'s machinery showed in profiles at two
/// numbers per record).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Which run a record key names, if it is a run's.
fn run_index(key: &str) -> Option<usize> {
    key.strip_prefix(RAW)?.parse().ok()
}

/// A key as it came: borrowed from the line when it has no escapes.
#[derive(Debug)]
enum Key<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// Decodes one input record, parsing only the top-level fields `touch`
/// says the flow uses, and keeping the input text of those it only reads
/// and of runs of those it never touches in `raws` (see the module
/// documentation).
pub fn decode_record<'a>(
    line: &'a [u8],
    touch: impl Fn(&str) -> Touch,
    raws: &mut Raws<'a>,
) -> serde_json::Result<Value> {
    match std::str::from_utf8(line) {
        // Validated once here: the parser then borrows without checking
        // each piece again.
        Ok(line) => decode_with(line, &touch, &|_, _| None, raws, true),
        Err(_) => serde_json::from_slice(line),
    }
}

/// [`decode_record`], merging untouched neighbours into runs or not (the
/// reference the runs are tested against).
fn decode_with<'a>(
    line: &'a str,
    touch: &dyn Fn(&str) -> Touch,
    reads: &dyn Fn(&str, &str) -> Option<bool>,
    raws: &mut Raws<'a>,
    runs: bool,
) -> serde_json::Result<Value> {
    if line.bytes().find(|b| !b.is_ascii_whitespace()) != Some(b'{') {
        // Not an object: decoded whole, for the error message.
        return serde_json::from_str(line);
    }
    raws.clear();
    let mut de = serde_json::Deserializer::from_str(line);
    let partial = Partial {
        touch,
        reads,
        raws: &mut *raws,
        line,
        runs,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match partial {
        Ok(Some(v)) => Ok(v),
        // Runs could not keep a full decode's meaning (a duplicate or
        // escaped untouched key): decoded field by field instead.
        Ok(None) => {
            raws.clear();
            decode_with(line, touch, reads, raws, false)
        }
        // A rejected record is decoded whole: the same error as a full decode.
        Err(_) => serde_json::from_str(line),
    }
}

/// Deserializes an object, parsing only the touched fields. `None` when
/// runs were asked for but would change the record's meaning.
struct Partial<'r, 'a, 't> {
    touch: &'t dyn Fn(&str) -> Touch,
    reads: &'t dyn Fn(&str, &str) -> Option<bool>,
    raws: &'r mut Raws<'a>,
    line: &'a str,
    runs: bool,
}

/// Byte offset of `s`, a slice of `line`, in it (only called once
/// [`compact_field`] checked both slices lie in it).
fn offset(line: &str, s: &str) -> usize {
    (s.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize)
}

/// Whether an untouched field's text in `line`, key at `key` (its text,
/// inside the quotes) and value `raw`, is written `"key":value` exactly.
/// Both are slices of the line as serde_json borrows them; anything else
/// (were it ever to copy one) is simply not compact.
fn compact_field(line: &str, key: &str, raw: &str) -> bool {
    let inside = |s: &str| {
        let at = offset(line, s);
        at <= line.len() && s.len() <= line.len() - at
    };
    if !inside(key) || !inside(raw) || offset(line, key) == 0 {
        return false;
    }
    let end = offset(line, key) + key.len();
    line.as_bytes().get(end..end + 2) == Some(b"\":") && offset(line, raw) == end + 2
}

impl<'de> DeserializeSeed<'de> for Partial<'_, 'de, '_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Partial<'_, 'de, '_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let line = self.line;
        let mut m = Map::with_capacity(8);
        // The run being extended: (start, end) byte offsets in the line.
        let mut run: Option<(usize, usize)> = None;
        // Untouched keys: merged into runs, they must be unique (a full
        // decode keeps a duplicate's first place and last value) and
        // unescaped (to compare them as written).
        let Raws {
            read,
            runs,
            untouched,
        } = &mut *self.raws;
        untouched.clear();
        let mut escaped = false;
        let close = |run: &mut Option<(usize, usize)>,
                     m: &mut Map<String, Value>,
                     runs: &mut Vec<&'de str>| {
            if let Some((start, end)) = run.take() {
                // In bounds and on char boundaries: both ends are a JSON
                // token's.
                let text = line.get(start..end).unwrap_or_default();
                m.insert(run_key(runs.len()), Value::Null);
                runs.push(text);
            }
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let touch = (self.touch)(key.as_str());
            if touch != Touch::None {
                close(&mut run, &mut m, runs);
                // Could be taken for a run's key.
                escaped |= key.as_str().starts_with(RAW);
            }
            match touch {
                Touch::Write => {
                    let v = map.next_value::<Value>()?;
                    m.insert(key.as_str().to_owned(), v);
                }
                Touch::Read => {
                    let raw = map.next_value::<&'de RawValue>()?.get();
                    let v = read_only(key.as_str(), raw, self.reads)
                        .map_err(serde::de::Error::custom)?;
                    m.insert(key.as_str().to_owned(), v);
                    read.push((key, raw));
                }
                Touch::None => {
                    let raw = map.next_value::<&'de RawValue>()?.get();
                    match key {
                        Key::Borrowed(k) if self.runs && compact_field(line, k, raw) => {
                            untouched.push(k);
                            let key_start = offset(line, k) - 1;
                            let raw_end = offset(line, raw) + raw.len();
                            run = match run {
                                // The next field right after a comma.
                                Some((start, end))
                                    if key_start == end + 1
                                        && line.as_bytes().get(end) == Some(&b',') =>
                                {
                                    Some((start, raw_end))
                                }
                                mut other => {
                                    close(&mut other, &mut m, runs);
                                    Some((key_start, raw_end))
                                }
                            };
                        }
                        key => {
                            close(&mut run, &mut m, runs);
                            match &key {
                                Key::Borrowed(k) => untouched.push(k),
                                Key::Owned(_) => escaped = true,
                            }
                            let mut s = String::with_capacity(raw.len() + 1);
                            s.push(RAW);
                            s.push_str(raw);
                            m.insert(key.as_str().to_owned(), Value::String(s));
                        }
                    }
                }
            }
        }
        close(&mut run, &mut m, runs);
        if !runs.is_empty() && (escaped || has_duplicate(untouched)) {
            return Ok(None);
        }
        Ok(Some(Value::Object(m)))
    }
}

/// Parses a read-only field's text: only the members the flow reads when
/// it reads the field by member and the field is an object (the others are
/// skipped, as untouched fields are), whole otherwise.
fn read_only(
    key: &str,
    raw: &str,
    reads: &dyn Fn(&str, &str) -> Option<bool>,
) -> serde_json::Result<Value> {
    if reads(key, "").is_none() || !raw.starts_with('{') {
        return serde_json::from_str(raw);
    }
    struct Members<'r> {
        key: &'r str,
        reads: &'r dyn Fn(&str, &str) -> Option<bool>,
    }
    impl<'de> Visitor<'de> for Members<'_> {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut m = Map::new();
            while let Some(member) = map.next_key::<Key<'de>>()? {
                if (self.reads)(self.key, member.as_str()) == Some(true) {
                    m.insert(member.as_str().to_owned(), map.next_value::<Value>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Value::Object(m))
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let v = de.deserialize_map(Members { key, reads })?;
    de.end()?;
    Ok(v)
}

/// Whether `keys` holds a key twice (reorders them).
fn has_duplicate(keys: &mut [&str]) -> bool {
    if keys.len() <= 16 {
        return keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k));
    }
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

/// Writes a record decoded by [`decode_record`]: untouched and read-only
/// top-level fields as the text they came with, the rest serialized.
pub fn encode_record(
    out: &mut Vec<u8>,
    record: &Value,
    touch: impl Fn(&str) -> Touch,
    raws: &Raws<'_>,
) {
    let Value::Object(m) = record else {
        let _ = serde_json::to_writer(&mut *out, record);
        return;
    };
    out.push(b'{');
    for (n, (k, v)) in m.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        if let Some(run) = run_index(k).and_then(|i| raws.runs.get(i)) {
            out.extend_from_slice(run.as_bytes());
            continue;
        }
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        let raw = match (touch(k), v) {
            (Touch::None, Value::String(s)) => s.strip_prefix(RAW),
            (Touch::Read, _) => raws.get(k),
            _ => None,
        };
        match raw {
            Some(raw) => out.extend_from_slice(raw.as_bytes()),
            None => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
    }
    out.push(b'}');
}

fn encode(
    out: &mut Vec<u8>,
    index: u64,
    o: &Outcome,
    touch: impl Fn(&str) -> Touch,
    raws: &Raws<'_>,
) {
    // Writing to a Vec cannot fail.
    out.extend_from_slice(b"{\"i\":");
    push_decimal(out, index);
    out.push(b',');
    match o {
        Outcome::Routed { routes, record } => {
            out.extend_from_slice(b"\"o\":[");
            for (n, r) in routes.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                push_decimal(out, u64::from(*r));
            }
            out.extend_from_slice(b"],\"r\":");
            encode_record(out, record, touch, raws);
        }
        Outcome::Filtered => out.extend_from_slice(b"\"f\":1"),
        Outcome::Error(e) => {
            out.extend_from_slice(b"\"e\":");
            let mut m = Map::new();
            m.insert("stage".into(), Value::String(e.stage.into()));
            m.insert("message".into(), Value::String(e.message.clone()));
            if let Some(p) = &e.path {
                m.insert("path".into(), Value::String(p.clone()));
            }
            let _ = serde_json::to_writer(&mut *out, &Value::Object(m));
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Decodes one output line (host side and tests).
pub fn decode_line(line: &[u8]) -> Result<(u64, Outcome), String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("bad output line: {e}"))?;
    let i = v
        .get("i")
        .and_then(Value::as_u64)
        .ok_or("output line has no index")?;
    if let Some(r) = v.get("r") {
        let routes = v
            .get("o")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect()
            })
            .unwrap_or_default();
        return Ok((
            i,
            Outcome::Routed {
                routes,
                record: r.clone(),
            },
        ));
    }
    if v.get("f").is_some() {
        return Ok((i, Outcome::Filtered));
    }
    let e = v.get("e").ok_or("output line has no outcome")?;
    let stage = match e.get("stage").and_then(Value::as_str) {
        Some("decode") => "decode",
        Some("output") => "output",
        Some("routing") => "routing",
        _ => "transform",
    };
    Ok((
        i,
        Outcome::Error(RecordError {
            stage,
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            path: e.get("path").and_then(Value::as_str).map(str::to_string),
        }),
    ))
}

/// The batch header line: `{"now":…,"seed":…}`.
fn encode_header(now: &str, seed: u64, out: &mut Vec<u8>) {
    let header = serde_json::json!({ "now": now, "seed": seed });
    let _ = serde_json::to_writer(&mut *out, &header);
}

/// Encodes a batch for [`process_batch`] from values.
pub fn encode_batch(now: &str, seed: u64, records: &[Value], out: &mut Vec<u8>) {
    encode_header(now, seed, out);
    for r in records {
        out.push(b'\n');
        let _ = serde_json::to_writer(&mut *out, r);
    }
}

/// Encodes a batch for [`process_batch`] from records that are already
/// JSON text, one line each (what the runtime's queue holds), copied as
/// they are: the guest parses them.
pub fn encode_batch_raw<'a>(
    now: &str,
    seed: u64,
    records: impl IntoIterator<Item = &'a str>,
    out: &mut Vec<u8>,
) {
    encode_header(now, seed, out);
    for r in records {
        out.push(b'\n');
        out.extend_from_slice(r.as_bytes());
    }
}

/// The guest's state behind the exports: buffers owned and reused across
/// calls, and the flow instance built by `weavster_init`.
pub struct State<F> {
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub vars: Map<String, Value>,
    pub flow: Option<F>,
}

impl<F: Flow> Default for State<F> {
    fn default() -> Self {
        State {
            input: Vec::new(),
            output: Vec::new(),
            vars: Map::new(),
            flow: None,
        }
    }
}

impl<F: Flow> State<F> {
    /// Makes the input buffer `len` bytes long; returns its address.
    pub fn input_buffer(&mut self, len: usize) -> usize {
        self.input.resize(len, 0);
        self.input.as_mut_ptr() as usize
    }

    /// Init context (`{"vars": {...}}`) in the input buffer. 0 on success;
    /// -1 with the message in the output buffer.
    pub fn init(&mut self, len: usize, new: fn(&Map<String, Value>) -> Result<F, String>) -> i32 {
        self.output.clear();
        let result = serde_json::from_slice::<Value>(&self.input[..len.min(self.input.len())])
            .map_err(|e| format!("bad init context: {e}"))
            .and_then(|ctx| {
                let vars = ctx
                    .get("vars")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let flow = new(&vars)?;
                Ok((vars, flow))
            });
        match result {
            Ok((vars, flow)) => {
                self.vars = vars;
                self.flow = Some(flow);
                0
            }
            Err(e) => {
                self.output.extend_from_slice(e.as_bytes());
                -1
            }
        }
    }

    /// A batch in the input buffer; returns the output length, or -1 with
    /// the message in the output buffer.
    pub fn process(&mut self, len: usize) -> i32 {
        self.output.clear();
        let Some(flow) = &self.flow else {
            self.output
                .extend_from_slice(b"weavster_process called before weavster_init");
            return -1;
        };
        let input = &self.input[..len.min(self.input.len())];
        match process_batch(flow, &self.vars, input, &mut self.output) {
            Ok(()) => i32::try_from(self.output.len()).unwrap_or(-1),
            Err(e) => {
                self.output.clear();
                self.output.extend_from_slice(e.as_bytes());
                -1
            }
        }
    }
}

/// Defines the ABI v1 exports for a flow type: `export_flow!(MyFlow, MyFlow::new)`.
#[macro_export]
macro_rules! export_flow {
    ($ty:ty, $new:expr) => {
        thread_local! {
            static WEAVSTER_STATE: ::std::cell::RefCell<$crate::abi::State<$ty>> =
                ::std::cell::RefCell::new($crate::abi::State::default());
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn weavster_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn weavster_input(len: i32) -> i32 {
            WEAVSTER_STATE.with(|s| s.borrow_mut().input_buffer(len.max(0) as usize) as i32)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn weavster_init(len: i32) -> i32 {
            WEAVSTER_STATE.with(|s| s.borrow_mut().init(len.max(0) as usize, $new))
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn weavster_process(len: i32) -> i32 {
            WEAVSTER_STATE.with(|s| s.borrow_mut().process(len.max(0) as usize))
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn weavster_output() -> i32 {
            WEAVSTER_STATE.with(|s| s.borrow().output.as_ptr() as usize as i32)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn weavster_output_len() -> i32 {
            WEAVSTER_STATE.with(|s| s.borrow().output.len() as i32)
        }
    };
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The runtime's records (JSON text) and the tests' (values) make the
    /// same batch.
    #[test]
    fn raw_and_value_batches_are_the_same_bytes() {
        let values = [
            serde_json::json!({"a": 1, "b": [true, null], "s": "x\ny\"z"}),
            serde_json::json!({}),
            serde_json::json!({"n": 1e300, "u": "é\u{0}"}),
        ];
        let texts: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        for n in 0..=values.len() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_batch("2000-01-01T00:00:00Z", 9, &values[..n], &mut a);
            encode_batch_raw(
                "2000-01-01T00:00:00Z",
                9,
                texts[..n].iter().map(String::as_str),
                &mut b,
            );
            assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        }
    }

    /// Decodes `line` writing only `fields` (and reading `read`), lets
    /// `edit` change the record, encodes it; also returns what a full
    /// decode + serialize gives.
    fn check_rw(
        line: &str,
        read: &[&str],
        fields: &[&str],
        edit: fn(&mut Value),
    ) -> (String, String) {
        let run = |touch: &dyn Fn(&str) -> Touch| {
            let mut raws = Raws::default();
            let mut v = match decode_record(line.as_bytes(), touch, &mut raws) {
                Ok(v) => v,
                Err(e) => return format!("error: {e}"),
            };
            edit(&mut v);
            let mut out = Vec::new();
            encode_record(&mut out, &v, touch, &raws);
            String::from_utf8(out).unwrap_or_default()
        };
        let partial = |k: &str| {
            if fields.contains(&k) {
                Touch::Write
            } else if read.contains(&k) {
                Touch::Read
            } else {
                Touch::None
            }
        };
        (run(&partial), run(&|_| Touch::Write))
    }

    fn check(line: &str, fields: &[&str], edit: fn(&mut Value)) -> (String, String) {
        check_rw(line, &[], fields, edit)
    }

    #[test]
    fn untouched_fields_pass_through_verbatim() {
        let (partial, full) = check(
            r#"{"a": 1.50, "b" : {"x" : [1, 2]}, "c": "s", "d": 1e400, "e": "\u00e9"}"#,
            &["c"],
            |v| v["c"] = Value::from("S"),
        );
        assert_eq!(
            partial,
            r#"{"a":1.50,"b":{"x" : [1, 2]},"c":"S","d":1e400,"e":"\u00e9"}"#
        );
        // A full decode normalizes numbers and cannot hold 1e400 at all.
        assert!(full.starts_with("error: number out of range"), "{full}");
    }

    #[test]
    fn key_order_is_the_full_decodes() {
        // Canonical input (as serde_json writes it): the same bytes either way.
        let line = r#"{"a":1,"b":{"k":[true,null]},"c":"x","d":2.5,"e\"q":"é\n"}"#;
        for edit in [
            (|v: &mut Value| {
                // Removed and set again: goes to the end, as with a full decode.
                if let Some(m) = v.as_object_mut() {
                    m.shift_remove("c");
                    m.insert("c".into(), Value::from(1));
                    m.insert("new".into(), Value::Null);
                }
            }) as fn(&mut Value),
            |v| v["c"] = Value::from("y"),
            |_| {},
        ] {
            let (partial, full) = check(line, &["c", "new"], edit);
            assert_eq!(partial, full);
        }
    }

    #[test]
    fn bad_records_are_the_same_errors() {
        for line in [
            r#"[1,2]"#,
            r#"{"a": tru}"#,
            r#"{"a": 1"#,
            r#"{"a":1} x"#,
            "7",
        ] {
            let (partial, full) = check(line, &["b"], |_| {});
            assert_eq!(partial, full, "{line}");
            assert!(partial.starts_with("error") || line == "7" || line == "[1,2]");
        }
    }

    #[test]
    fn read_only_fields_keep_their_text() {
        let line = r#"{"n": 123456789012345678901234567890, "p": 1.50, "s": "\u00e9", "w": 1}"#;
        let (partial, _) = check_rw(line, &["n", "p", "s"], &["w", "n2"], |v| {
            let n = v["n"].as_f64().unwrap_or_default();
            v["n2"] = Value::from(n);
            v["w"] = Value::from(2);
        });
        assert_eq!(
            partial,
            r#"{"n":123456789012345678901234567890,"p":1.50,"s":"\u00e9","w":2,"n2":1.2345678901234568e+29}"#
        );
    }

    #[test]
    fn a_field_written_but_declared_untouched_is_still_valid_json() {
        // A flow that writes a field its analysis missed (a bug) must never
        // produce broken output: only marked values pass through as text.
        let (partial, full) = check(r#"{"a":"x","b":1}"#, &[], |v| {
            v["day"] = Value::from("2024-01-01");
        });
        assert_eq!(partial, full);
    }

    #[test]
    fn a_read_only_field_out_of_range_is_the_full_decodes_error() {
        let (partial, full) = check_rw(r#"{"a":1e400}"#, &["a"], &[], |_| {});
        assert_eq!(partial, full);
        assert!(
            partial.starts_with("error: number out of range"),
            "{partial}"
        );
    }

    /// A generated record's text: keys from a small set (so duplicates
    /// happen), some written escaped, values of every kind (some a full
    /// decode rejects), compact or spaced separators.
    fn record_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("\"a\"".to_string()),
            Just("\"b\"".to_string()),
            Just("\"c\"".to_string()),
            Just("\"d\"".to_string()),
            Just("\"\\u0061\"".to_string()),  // "a", escaped
            Just("\"\\u00000\"".to_string()), // NUL then 0: a run's key
            Just("\"e\\\"q\"".to_string()),
        ];
        let value = prop_oneof![
            Just("1.50"),
            Just("-0"),
            Just("1e400"),
            Just("\"s\\n\\u00e9\""),
            Just("\"é\""),
            Just("[1, {\"x\" : null}]"),
            Just("{\"a\":{\"b\":[]}}"),
            Just("true"),
            Just("null"),
        ];
        let sep = prop_oneof![Just(""), Just(" "), Just("\t ")];
        proptest::collection::vec((key, sep.clone(), value, sep), 0..8).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, s1, v, s2)| format!("{s1}{k}{s2}:{s1}{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    /// Decodes and encodes `line` with `touch`, after `edit` (none, set,
    /// remove, remove then set again) on `key`.
    fn round_trip(
        line: &str,
        touch: &dyn Fn(&str) -> Touch,
        runs: bool,
        edit: u8,
        key: &str,
    ) -> String {
        let mut raws = Raws::default();
        let mut v = match decode_with(line, touch, &|_, _| None, &mut raws, runs) {
            Ok(v) => v,
            Err(e) => return format!("error: {e}"),
        };
        if let Value::Object(m) = &mut v {
            match edit {
                1 => {
                    m.insert(key.into(), Value::from(7));
                }
                2 => {
                    m.shift_remove(key);
                }
                3 => {
                    m.shift_remove(key);
                    m.insert(key.into(), Value::from("x"));
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        encode_record(&mut out, &v, touch, &raws);
        String::from_utf8(out).unwrap_or_default()
    }

    proptest::proptest! {
        /// Merging untouched neighbours into runs writes exactly what the
        /// field-by-field decode writes, whatever the record and the flow.
        #[test]
        fn runs_write_what_field_by_field_writes(
            line in record_text(),
            touches in proptest::collection::vec(0u8..3, 4),
            edit in 0u8..4,
            edited in 0usize..4,
        ) {
            let keys = ["a", "b", "c", "d"];
            let touch = |k: &str| match keys.iter().position(|x| *x == k).map(|i| touches[i]) {
                Some(1) => Touch::Read,
                Some(2) => Touch::Write,
                _ => Touch::None,
            };
            // Only written fields are edited, as a flow would.
            let key = keys[edited];
            let edit = if touch(key) == Touch::Write { edit } else { 0 };
            let runs = round_trip(&line, &touch, true, edit, key);
            let fields = round_trip(&line, &touch, false, edit, key);
            proptest::prop_assert_eq!(runs, fields, "{}", line);
        }
    }

    proptest::proptest! {
        #[test]
        fn decimals_are_to_strings(n in proptest::num::u64::ANY) {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            proptest::prop_assert_eq!(String::from_utf8_lossy(&out), n.to_string());
        }
    }

    /// Routes every record to output 0, unchanged.
    struct Pass;

    impl Flow for Pass {
        fn run(&self, record: Value, _: &Ctx<'_>, out: &mut Vec<Outcome>) {
            out.push(Outcome::Routed {
                routes: vec![0],
                record,
            });
        }
    }

    #[test]
    fn a_line_of_bad_utf8_is_its_own_error_and_the_others_run() {
        let mut batch = b"{\"now\":\"2000-01-01T00:00:00Z\",\"seed\":1}\n".to_vec();
        batch.extend_from_slice(b"{\"a\":1}\n{\"a\":\"\xff\"}\n\n{\"a\": 2}");
        let mut out = Vec::new();
        process_batch(&Pass, &Map::new(), &batch, &mut out).expect("batch runs");
        let lines: Vec<_> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| decode_line(l).expect("an outcome"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(matches!(&lines[0], (0, Outcome::Routed { .. })));
        assert!(
            matches!(&lines[1], (1, Outcome::Error(e)) if e.stage == "decode" && e.message.contains("invalid unicode")),
            "{:?}",
            lines[1]
        );
        assert!(matches!(&lines[2], (2, Outcome::Routed { record, .. }) if record["a"] == 2));
    }

    #[test]
    fn a_field_read_by_member_holds_only_those_members() {
        let line = r#"{"user":{"name":"a","n":1e400,"name":"b","x":[1]},"id":7}"#;
        let touch = |k: &str| {
            if k == "user" {
                Touch::Read
            } else {
                Touch::None
            }
        };
        let reads = |k: &str, m: &str| (k == "user").then_some(m == "name");
        let mut raws = Raws::default();
        let v = decode_with(line, &touch, &reads, &mut raws, true).expect("decodes");
        // The last duplicate's value; a member out of range is not parsed.
        assert_eq!(v["user"], serde_json::json!({"name": "b"}));
        let mut out = Vec::new();
        encode_record(&mut out, &v, touch, &raws);
        assert_eq!(String::from_utf8_lossy(&out), line);
        // Not an object: parsed whole.
        let line = r#"{"user":[1,2]}"#;
        let v = decode_with(line, &touch, &reads, &mut raws, true).expect("decodes");
        assert_eq!(v["user"], serde_json::json!([1, 2]));
    }

    #[test]
    fn duplicate_keys_keep_the_first_place_and_the_last_value() {
        let (partial, full) = check(r#"{"a":1,"b":2,"a":3}"#, &["b"], |_| {});
        assert_eq!(partial, r#"{"a":3,"b":2}"#);
        assert_eq!(partial, full);
    }
}
