//! `weavster-guest`: linked into every compiled flow.
//!
//! - [`path`]: reading and writing record paths;
//! - [`value`]: type names, truthiness and conversions;
//! - [`ops`]: operators with the null rules;
//! - [`func`]: the function library (one signature for all: `fn(&[Value], &Ctx) -> R<Value>`);
//! - [`step`]: regex, lookup, template and cast helpers;
//! - [`abi`]: the batch protocol and the wasm exports ([`export_flow!`]).
//!
//! The same code runs natively in the reference interpreter, so both
//! executions share every semantic rule; the differential tests check the
//! compiler's lowering on top of it. Depends on nothing host-only.

pub mod abi;

/// In wasm, Talc instead of the default dlmalloc: flows allocate much
/// (records are JSON values) and Talc is faster (see docs/dev/benchmarks.md).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

pub mod func;
pub mod ops;
pub mod path;
pub mod step;
pub mod table;
pub mod value;

use std::cell::Cell;

pub use serde_json::{Map, Value};

/// ABI version exported as `weavster_abi_version`.
pub const ABI_VERSION: i32 = 1;

/// Version of this crate; part of the compile cache key.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A problem with one record: it goes to the dead letters, the batch goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    /// `decode`, `transform`, `output` or `routing`.
    pub stage: &'static str,
    pub message: String,
    /// The record path involved, when there is one.
    pub path: Option<String>,
}

impl RecordError {
    pub fn transform(message: impl Into<String>) -> Self {
        RecordError {
            stage: "transform",
            message: message.into(),
            path: None,
        }
    }

    /// Sets the path if none is set yet.
    pub fn at(mut self, path: &str) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_string());
        }
        self
    }

    pub fn stage(mut self, stage: &'static str) -> Self {
        self.stage = stage;
        self
    }
}

pub type R<T> = Result<T, RecordError>;

/// What one input record became.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A record and the indexes of the outputs it goes to (empty: unrouted).
    Routed {
        routes: Vec<u32>,
        record: Value,
    },
    /// Dropped by a filter (or `drop` policies, or an empty explode).
    Filtered,
    Error(RecordError),
}

/// Per-batch context: the batch timestamp and seed (for `now()` and
/// `uuid()`), and the target's vars (for `var()`).
#[derive(Debug)]
pub struct Ctx<'a> {
    pub now: &'a str,
    pub seed: u64,
    pub vars: &'a Map<String, Value>,
    counter: Cell<u64>,
}

impl<'a> Ctx<'a> {
    pub fn new(now: &'a str, seed: u64, vars: &'a Map<String, Value>) -> Self {
        Ctx {
            now,
            seed,
            vars,
            counter: Cell::new(0),
        }
    }

    /// The next number of the batch's deterministic sequence (splitmix64).
    pub fn next_random(&self) -> u64 {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A compiled flow (generated code) or the reference interpreter.
pub trait Flow {
    /// Runs one record; pushes one outcome (several after `explode`).
    fn run(&self, record: Value, ctx: &Ctx<'_>, out: &mut Vec<Outcome>);

    /// How the flow uses the top-level field `key`. The batch decoder
    /// parses only the fields it touches; every other one is kept as its
    /// input text and written back verbatim, and so is a field it only
    /// reads (see [`abi`]). By default a flow may write everything.
    fn touch(&self, key: &str) -> Touch {
        let _ = key;
        Touch::Write
    }

    /// For a field the flow only reads ([`Touch::Read`]): `None` (whatever
    /// `member` is) when it may read the field whole, else whether it reads
    /// the field's member `member` (or below it). A decoder keeps only the
    /// members read; the field is written back as its input text anyway.
    /// By default a flow may read every field whole.
    fn reads(&self, key: &str, member: &str) -> Option<bool> {
        let _ = (key, member);
        None
    }
}

/// How a flow uses a top-level record field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Never read nor written: passed through as text, not parsed.
    None,
    /// Read, never written: parsed, and written back as its input text.
    Read,
    /// May be set, changed or removed.
    Write,
}

// Re-exported for generated code, which depends on this crate only.
pub use {regex, serde_json};
