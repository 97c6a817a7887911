//! Sinks: where a flow output's records go.
//!
//! A sink writes a whole batch and reports success for the batch; records it
//! cannot represent (a CSV output given a field it has no column for) are
//! reported back one by one and become dead letters (stage `output`). A job
//! is acknowledged only after every sink of its flow succeeded.

use futures::future::BoxFuture;

use crate::Format;

/// What the worker does about a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Transient (a timeout, a broker or the network): the batch is retried
    /// with backoff, then dead-lettered as `delivery` after `max_attempts`.
    Retry,
    /// The remote cannot be reached or did not answer in time (a broker
    /// down or paused, a connection refused or reset, a timeout): nothing
    /// is wrong with the records, so the batch is retried with backoff (up
    /// to a minute apart) for as long as the outage lasts, without using up
    /// an attempt, and never dead-lettered for it.
    Unavailable,
    /// Transient, and the remote said when to come back (an HTTP
    /// `Retry-After` too long to wait in place): retried from the queue no
    /// sooner than that (capped at an hour); it counts as an attempt.
    Later(std::time::Duration),
    /// Configuration (authorization, an unknown topic or table): retrying
    /// cannot help, dead-lettering would bury a mistake. The flow stops with
    /// the error; the job stays queued (its attempts are not used up) for
    /// the next run.
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("standard output: {0}")]
    Stdout(String),
    #[error("bridge to flow `{flow}`: {message}")]
    Bridge { flow: String, message: String },
    /// A networked sink (`what` names it, e.g. `kafka topic t`).
    #[error("{what}: {message}")]
    Remote {
        what: String,
        message: String,
        failed: Failed,
    },
}

impl SinkError {
    /// Decided by the sink from the error's kind, never from its message.
    pub fn failed(&self) -> Failed {
        match self {
            SinkError::Remote { failed, .. } => *failed,
            _ => Failed::Retry,
        }
    }
}

/// The records (by index in the written slice) a sink refused, and why:
/// they become dead letters (stage `output`); the rest of the batch counts
/// as written.
pub type Refused = Vec<(usize, String)>;

pub trait Sink: Send + Sync {
    /// Writes `records` (JSON texts) of job `job` (the same id on every
    /// attempt); `Err` fails the whole batch.
    fn write<'a>(
        &'a self,
        job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>>;
}

/// Encodes records for a stream or file. `columns`: the CSV header in use
/// (set from the first record, and written, when empty).
pub(crate) fn encode(
    format: Format,
    records: &[&str],
    delimiter: u8,
    columns: &mut Vec<String>,
    out: &mut Vec<u8>,
) -> Refused {
    let mut refused = Vec::new();
    match format {
        Format::Jsonl | Format::Json => {
            for r in records {
                out.extend_from_slice(r.as_bytes());
                out.push(b'\n');
            }
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .delimiter(delimiter)
                .from_writer(Vec::new());
            for (i, r) in records.iter().enumerate() {
                // Cells are the fields' text (`1.50`, `1e400` as sent).
                let Ok(obj) = crate::record::fields(r) else {
                    refused.push((i, "a CSV output takes JSON objects".into()));
                    continue;
                };
                if columns.is_empty() {
                    *columns = obj.iter().map(|(k, _)| k.to_string()).collect();
                    if w.write_record(columns.iter()).is_err() {
                        refused.push((i, "cannot encode the CSV header".into()));
                        continue;
                    }
                }
                if let Some((extra, _)) = obj.iter().find(|(k, _)| !columns.iter().any(|c| c == k))
                {
                    refused.push((
                        i,
                        format!(
                            "field `{extra}` is not a column of this CSV output (columns: {})",
                            columns.join(", ")
                        ),
                    ));
                    continue;
                }
                let row: Vec<std::borrow::Cow<'_, str>> = columns
                    .iter()
                    .map(|c| {
                        obj.iter()
                            .find(|(k, _)| k == c)
                            .and_then(|(_, v)| crate::record::text(v))
                            .unwrap_or_default()
                    })
                    .collect();
                if let Err(e) = w.write_record(row.iter().map(|c| c.as_bytes())) {
                    refused.push((i, format!("cannot encode as CSV: {e}")));
                }
            }
            if let Ok(bytes) = w.into_inner() {
                out.extend_from_slice(&bytes);
            }
        }
    }
    refused
}
