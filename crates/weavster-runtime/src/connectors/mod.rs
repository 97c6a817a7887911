//! Connectors: one module per family, each owning its source, its sink,
//! its health check and their unit tests. [`family`] is the single `match`
//! on the spec's [`Connector`] that picks one; the runtime takes the typed
//! spec connector directly (serde data, never YAML).
//!
//! Adding a connector (docs/dev/connectors.md): its spec type in
//! `weavster-spec::types`, a module here implementing [`Family`], one arm
//! in [`family`], and its tests.

pub mod bridge;
pub mod file;
pub mod http;
pub mod kafka;
mod net;
pub mod postgres;
pub mod stdio;

pub use net::reachable;

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::value::RawValue;
use weavster_spec::types::Connector;

use crate::Db;
use crate::sink::Sink;
use crate::source::{Limits, Positions, Source};

/// Where a flow's records come from or go to.
// A few per run, built once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A connector of the project (`reference` as written: `file.key`).
    Connector { reference: String, spec: Connector },
    /// Another flow's queue (`bridge.<flow>`); as an input, records arrive
    /// from other flows' bridge outputs.
    Bridge { flow: String },
}

impl Endpoint {
    /// As the flow names it.
    pub fn reference(&self) -> String {
        match self {
            Endpoint::Connector { reference, .. } => reference.clone(),
            Endpoint::Bridge { flow } => format!("bridge.{flow}"),
        }
    }
}

/// Why a connector cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Its configuration cannot work (names what to fix).
    #[error("{0}")]
    Config(String),
    /// Its peer refused or failed (a broker, a file system).
    #[error("{0}")]
    Connect(String),
}

/// What building a source or sink may use.
#[derive(Clone)]
pub struct Context {
    /// The project's name (default Kafka consumer group: `weavster-<project>-<flow>`).
    pub project: String,
    pub flow: String,
    /// The project dir (relative paths are read from here).
    pub root: PathBuf,
    /// `run --once`: read finite inputs (and Kafka to its start's end) and stop.
    pub once: bool,
    pub limits: Limits,
    /// How long a source waits to fill a batch.
    pub linger: Duration,
    pub db: Db,
    pub max_attempts: u32,
    /// How long a job may run before another process may take it over
    /// (a produce must time out before that).
    pub lease: Duration,
    /// For a sink: which output of the flow it is (`<reference>#<index>`),
    /// unique within the flow.
    pub output: String,
}

/// What `weavster debug` checks without a queue.
pub struct CheckContext {
    pub root: PathBuf,
    /// The connector is some flow's input (else an output, or unused).
    pub input: bool,
}

/// One health check's answer.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(detail: impl Into<String>) -> Check {
        Check {
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// How a source's input is shared between the processes of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// One process reads it at a time (an advisory lock); it can be read
    /// again from its stored position (files).
    Exclusive,
    /// Every process reads its own (standard input); it cannot be read
    /// again, so a stopping run still enqueues what it holds.
    PerProcess,
    /// The processes share it among themselves (a Kafka consumer group);
    /// it can be read again from the stored positions.
    Shared,
}

/// A connector family. Each method has a default for what the family
/// cannot do (an output-only connector has no source).
pub trait Family: Send + Sync {
    fn reading(&self) -> Reading {
        Reading::Exclusive
    }

    /// Called for every flow's input before any source starts (a webhook
    /// path is then answered "starting", not "not found").
    fn announce(&self) {}

    /// Connects and returns the source, starting from `positions` (the
    /// stored ones of this flow).
    fn source<'a>(
        &'a self,
        _cx: &'a Context,
        _positions: Positions,
    ) -> BoxFuture<'a, Result<Box<dyn Source>, ConnectorError>> {
        Box::pin(async { Err(ConnectorError::Config("it cannot be an input".into())) })
    }

    /// Connects and returns the sink.
    fn sink<'a>(
        &'a self,
        _cx: &'a Context,
    ) -> BoxFuture<'a, Result<Box<dyn Sink>, ConnectorError>> {
        Box::pin(async { Err(ConnectorError::Config("it cannot be an output".into())) })
    }

    /// Asks the peer what `weavster debug` shows (for Kafka: the topic's
    /// metadata); `None`: nothing to check.
    fn check<'a>(&'a self, cx: &'a CheckContext) -> BoxFuture<'a, Option<Check>>;
}

/// The family of a connector: the one `match` on connector types.
pub fn family(c: &Connector) -> &dyn Family {
    match c {
        Connector::File(f) => f,
        Connector::Stdin(s) => s,
        Connector::Stdout(s) => s,
        Connector::Kafka(k) => k,
        Connector::Postgres(p) => p,
        Connector::Http(h) => h,
    }
}

/// Builds an endpoint's sink.
pub async fn sink(endpoint: &Endpoint, cx: &Context) -> Result<Box<dyn Sink>, ConnectorError> {
    match endpoint {
        Endpoint::Bridge { flow } => Ok(Box::new(bridge::BridgeSink::new(
            flow.clone(),
            cx.db.clone(),
            cx.max_attempts,
        ))),
        Endpoint::Connector { spec, .. } => family(spec).sink(cx).await,
    }
}

/// The check of a connector for `weavster debug`.
pub async fn check(c: &Connector, cx: &CheckContext) -> Option<Check> {
    family(c).check(cx).await
}

/// `record` (an object's text) with `field` set to `value` (JSON text);
/// every other value keeps its text.
pub(crate) fn with_field(record: &str, field: &str, value: &str) -> Result<String, String> {
    let mut obj: indexmap::IndexMap<String, Box<RawValue>> =
        serde_json::from_str(record).map_err(|e| format!("record: {e}"))?;
    let v = RawValue::from_string(value.to_string()).map_err(|e| e.to_string())?;
    obj.insert(field.to_string(), v);
    serde_json::to_string(&obj).map_err(|e| e.to_string())
}
