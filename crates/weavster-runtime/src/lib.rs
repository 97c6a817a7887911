//! Runs compiled flows for real.
//!
//! For each flow: a **source** task reads its input in batches and pushes
//! each batch as one job onto the flow's queue (apalis on PostgreSQL,
//! job type `weavster:<flow>`) in the transaction that stores the source
//! position (`weavster.offsets`), then acknowledges the batch to the
//! source. **Workers**
//! (apalis workers, each with a warm wasm instance from `weavster-host`)
//! fetch jobs, run the batch through the flow and write the routed records
//! to the flow's **sinks**; record errors go to `weavster.dead_letters`. A
//! job is finished only after every sink wrote its records, so delivery is
//! at-least-once (see docs/guarantees.md).
//!
//! This crate parses no YAML: it is handed [`FlowPlan`]s built by the CLI
//! from the loaded project, holding the spec's typed connectors (built by
//! [`connectors`]). It prints nothing; it reports through
//! [`Metrics`] and [`RunReport`].

pub mod connectors;
mod db;
pub mod dead_letter;
mod metrics;
mod queue;
mod record;
mod run;
pub mod sink;
pub mod source;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use connectors::{Check, CheckContext, ConnectorError, Endpoint};
pub use db::{Db, DbError, mask_url};
pub use dead_letter::{DeadLetter, DeadLetterFilter, Replayed, Stage};
pub use metrics::{FlowCounts, Metrics};
pub use queue::HEARTBEAT;
pub use run::{FlowReport, RunOptions, RunReport, run};
pub use source::Limits;
pub use weavster_spec::types::{Format, WriteMode};

/// Errors of the runtime. Record-level problems are never errors: they
/// become dead letters.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Host(#[from] weavster_host::HostError),
    #[error("flow `{flow}`: {message}")]
    Plan { flow: String, message: String },
    #[error("metrics server on {addr}: {message}")]
    Metrics { addr: String, message: String },
    #[error("queue: {0}")]
    Queue(String),
    #[error("flow `{flow}`: connector `{reference}`: {error}")]
    Connector {
        flow: String,
        reference: String,
        error: ConnectorError,
    },
}

/// One flow, ready to run.
#[derive(Debug, Clone)]
pub struct FlowPlan {
    pub name: String,
    /// The compiled module.
    pub wasm: PathBuf,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub input: Endpoint,
    /// In flow order.
    pub outputs: Vec<Endpoint>,
}

/// Queue and batching settings (the project's resolved `runtime`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Most records per job.
    pub batch_size: usize,
    /// How long a source waits to fill a batch.
    pub linger: Duration,
    /// Workers per flow in this process.
    pub workers: usize,
    /// Attempts per job before its records are dead-lettered.
    pub max_attempts: u32,
    /// How long one batch may run in the guest.
    pub batch_deadline: Duration,
    /// The longest record an input takes.
    pub max_record_bytes: usize,
    /// How often workers say they are alive ([`HEARTBEAT`] by
    /// default; a job of a worker silent for 3 beats is run elsewhere).
    pub heartbeat: Duration,
}

impl QueueSettings {
    pub fn limits(&self) -> source::Limits {
        source::Limits::new(self.batch_size, self.max_record_bytes)
    }
}

/// The queue name (apalis job type) of a flow.
pub fn queue_name(flow: &str) -> String {
    format!("weavster:{flow}")
}

/// FNV-1a: a stable 64-bit hash (job seeds, advisory-lock keys).
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// This machine's name, for run records and worker names.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
