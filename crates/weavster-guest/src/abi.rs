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
//! input text (in a string value marked with a leading NUL, which no JSON
//! text starts with) and written back verbatim, in its place; a field it
//! only reads is parsed for the flow, and written back as the text it came
//! with (so `1.50`, `1e400` or a 30-digit integer are not reformatted);
//! fields it writes are parsed and serialized. Key order is the same as
//! with a full decode. Any record a partial decode rejects is decoded whole
//! to report the error, so error messages are a full decode's.

use std::io::Write as _;

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
    let mut outcomes = Vec::new();
    let mut index = 0u64;
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        outcomes.clear();
        let mut raws = Raws::default();
        match decode_record(line, touch, &mut raws) {
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

/// The input text of the fields a flow only reads, by key (last wins, as
/// for duplicate keys in a decode).
#[derive(Debug, Default)]
pub struct Raws<'a>(Vec<(String, &'a str)>);

impl<'a> Raws<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, r)| *r)
    }
}

/// The marker of a field kept as its input text.
const RAW: char = '\0';

/// Decodes one input record, parsing only the top-level fields `touch`
/// says the flow uses, and keeping the input text of those it only reads
/// in `raws` (see the module documentation).
pub fn decode_record<'a>(
    line: &'a [u8],
    touch: impl Fn(&str) -> Touch,
    raws: &mut Raws<'a>,
) -> serde_json::Result<Value> {
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Not an object: decoded whole, for the error message.
        return serde_json::from_slice(line);
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    let partial = Partial { touch, raws }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    // A rejected record is decoded whole: the same error as a full decode.
    partial.or_else(|_| serde_json::from_slice(line))
}

/// Deserializes an object, parsing only the touched fields.
struct Partial<'r, 'a, T> {
    touch: T,
    raws: &'r mut Raws<'a>,
}

impl<'de, T: Fn(&str) -> Touch> DeserializeSeed<'de> for Partial<'_, 'de, T> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Fn(&str) -> Touch> Visitor<'de> for Partial<'_, 'de, T> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Sized once for typical records instead of growing 4 → 8 → 16.
        let mut m = Map::with_capacity(16);
        while let Some(key) = map.next_key::<String>()? {
            let v = match (self.touch)(&key) {
                Touch::Write => map.next_value::<Value>()?,
                Touch::Read => {
                    let raw = map.next_value::<&'de RawValue>()?.get();
                    let v = serde_json::from_str(raw).map_err(serde::de::Error::custom)?;
                    self.raws.0.push((key.clone(), raw));
                    v
                }
                Touch::None => {
                    let raw = map.next_value::<&'de RawValue>()?.get();
                    let mut s = String::with_capacity(raw.len() + 1);
                    s.push(RAW);
                    s.push_str(raw);
                    Value::String(s)
                }
            };
            m.insert(key, v);
        }
        Ok(Value::Object(m))
    }
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
    let _ = write!(out, "{{\"i\":{index},");
    match o {
        Outcome::Routed { routes, record } => {
            out.extend_from_slice(b"\"o\":[");
            for (n, r) in routes.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                let _ = write!(out, "{r}");
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

    #[test]
    fn duplicate_keys_keep_the_first_place_and_the_last_value() {
        let (partial, full) = check(r#"{"a":1,"b":2,"a":3}"#, &["b"], |_| {});
        assert_eq!(partial, r#"{"a":3,"b":2}"#);
        assert_eq!(partial, full);
    }
}
