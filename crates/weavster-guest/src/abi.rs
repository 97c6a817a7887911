//! ABI v1: the batch protocol (see docs/abi.md) and the exports macro.
//!
//! Input batch: a header line `{"now": "<RFC 3339>", "seed": <u64>}`, then
//! one JSON record per line. Output: one line per outcome:
//! `{"i":N,"o":[routes],"r":{record}}`, `{"i":N,"f":1}` (filtered) or
//! `{"i":N,"e":{"stage":…,"message":…,"path":…}}` (record error), where `N`
//! is the index of the input record (several lines share it after `explode`).

use std::io::Write as _;

use serde_json::{Map, Value};

use crate::{Ctx, Flow, Outcome, RecordError};

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
    let mut outcomes = Vec::new();
    let mut index = 0u64;
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        outcomes.clear();
        match serde_json::from_slice::<Value>(line) {
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
            encode(out, index, o);
        }
        index += 1;
    }
    Ok(())
}

fn encode(out: &mut Vec<u8>, index: u64, o: &Outcome) {
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
            let _ = serde_json::to_writer(&mut *out, record);
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

/// Encodes a batch for [`process_batch`].
pub fn encode_batch(now: &str, seed: u64, records: &[Value], out: &mut Vec<u8>) {
    let header = serde_json::json!({ "now": now, "seed": seed });
    let _ = serde_json::to_writer(&mut *out, &header);
    for r in records {
        out.push(b'\n');
        let _ = serde_json::to_writer(&mut *out, r);
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
