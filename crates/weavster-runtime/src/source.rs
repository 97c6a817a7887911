//! Sources: where a flow's records come from (the trait and its data; the
//! sources themselves live in `connectors/`).
//!
//! A source yields batches of JSON records (text, one object each, never
//! holding a line break) with the position they end at in their stream. The
//! runtime puts a batch on the queue and stores its position in one
//! transaction (compare-and-set on the position the batch started from),
//! and only then calls [`Source::ack`]: a source never forgets a record
//! that is not durably enqueued. What a source cannot turn into a record is
//! handed back as a reject with its exact bytes and becomes a dead letter.

use std::collections::HashMap;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::dead_letter::Stage;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("standard input: {0}")]
    Stdin(String),
    /// A networked source (`what` names it, e.g. `kafka topic t`). `fatal`:
    /// retrying cannot help (authorization, unknown topic): the run stops.
    #[error("{what}: {message}")]
    Remote {
        what: String,
        message: String,
        fatal: bool,
    },
}

impl SourceError {
    /// Whether waiting and retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SourceError::Remote { fatal: true, .. })
    }
}

/// Where a batch is in its stream, to resume after it. A position is any
/// JSON value (a byte offset, a Kafka offset, a cursor of several columns),
/// stored per `(flow, stream)` in `weavster.offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The stream (a file's path as shown to the user; `topic:partition`).
    pub stream: String,
    /// The stored position the batch was read from; `None` when the stream
    /// had none (the batch is enqueued only if there is still none).
    pub start: Option<Value>,
    pub end: Value,
}

/// Stored positions by stream.
pub type Positions = HashMap<String, Value>;

/// What a source could not read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Its bytes, exactly as read (the first [`KEEP_BYTES`] of an over-long
    /// record).
    pub record: Vec<u8>,
    pub stage: Stage,
    pub message: String,
    /// Where it was: `file@byte` or `stdin`.
    pub at: Option<String>,
}

#[derive(Debug, Default)]
pub struct SourceBatch {
    pub records: Vec<String>,
    pub rejects: Vec<Reject>,
    /// `None` for streams that cannot be resumed (standard input).
    pub position: Option<Position>,
    /// Named deliveries (an HTTP request's delivery id) and their records
    /// (a range of `records`): a delivery stored before (or earlier in the
    /// batch) is not stored again — checked in the enqueue transaction.
    pub deliveries: Vec<(String, std::ops::Range<usize>)>,
    /// The records as a file range instead (`records` is then empty): the
    /// job holds the range and the worker reads it.
    pub range: Option<crate::queue::FileRange>,
}

impl SourceBatch {
    /// Records and rejects, however held.
    pub fn len(&self) -> usize {
        self.records.len()
            + self.rejects.len()
            + self.range.as_ref().map_or(0, |r| r.records as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How big records and batches may get.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records per batch.
    pub batch_size: usize,
    /// A record (line, CSV row, JSON array element) longer than this is a
    /// dead letter (`input`), never a stall.
    pub max_record_bytes: usize,
    /// A batch is cut once its records hold this many bytes.
    pub max_batch_bytes: usize,
    /// The same for a batch queued as a file range ([`MAX_RANGE_BYTES`]).
    pub max_range_bytes: usize,
}

impl Limits {
    pub fn new(batch_size: usize, max_record_bytes: usize) -> Limits {
        Limits {
            batch_size: batch_size.max(1),
            max_record_bytes: max_record_bytes.max(1),
            max_batch_bytes: MAX_BATCH_BYTES,
            max_range_bytes: MAX_RANGE_BYTES,
        }
    }

    /// How much a reader looks at once: enough to hold any record whole.
    pub(crate) fn window(&self) -> usize {
        READ_AHEAD.max(self.max_record_bytes + 1)
    }
}

/// A batch is cut once its records hold this many bytes (a job is one
/// batch, stored in PostgreSQL — or as a file range — and handed to the
/// guest whole). With `batch_size` (records, default 10,000) it makes
/// batches adaptive to record size: ~8,000 records of 130 bytes, ~4,500 of
/// 230, 1,000 of 1 KiB. Measured (docs/dev/benchmarks.md): per-job costs
/// (the enqueue's synchronous commit, fetching, marking) dominated at
/// 1,000 records of 230 bytes.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// A batch queued as a file range may hold more: its job is ~110 bytes
/// whatever it covers, so the 1 MiB cut above only multiplied per-job
/// costs (1 KiB records: 936 jobs for 1M records, each a synchronous
/// commit, a fetch and a mark). 8 MiB bounds what a worker holds at once
/// (the range, the encoded batch and the guest's answer, each about this
/// size) and a batch's guest time (tens of milliseconds, far from the
/// per-call deadline). A chunk with rejects is queued as its records, so
/// it is cut at [`MAX_BATCH_BYTES`] again.
pub const MAX_RANGE_BYTES: usize = 8 << 20;
/// The most of an over-long record a dead letter keeps.
pub const KEEP_BYTES: usize = 16 << 20;
/// How much a file reader reads at first.
pub(crate) const READ_AHEAD: usize = 1 << 20;

/// A source of record batches. Kafka, PostgreSQL and HTTP sources implement
/// the same trait.
pub trait Source: Send {
    /// The next batch; `None` once a finite source is exhausted. Must be
    /// cancel-safe: a batch is consumed only when returned.
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>>;

    /// Called once the batch is durably enqueued and its position stored.
    fn ack(&mut self, _batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async { Ok(()) })
    }

    /// Forgets what was read but not acknowledged, back to `positions`
    /// (another process moved them).
    fn reset(&mut self, _positions: Positions) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
