//! Jobs on the apalis queue: one job = one batch of records.

use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy, PollWith};
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::{Db, DbError, RuntimeError, queue_name};

/// One batch: its records, one JSON text per line (never parsed by the
/// host), or the byte range of a file holding them (read by the worker:
/// the queue then stores ~100 bytes instead of the records).
/// A record never holds a line break: sources and the guest guarantee it.
///
/// A range job has no `records` field, so a binary that predates ranges
/// refuses it (its job fails to decode) rather than running it as empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Job {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<FileRange>,
}

impl Job {
    pub fn new(records: &[String]) -> Job {
        Job {
            records: Some(records.join("\n")),
            range: None,
        }
    }

    pub fn from_records(records: &[&str]) -> Job {
        Job {
            records: Some(records.join("\n")),
            range: None,
        }
    }

    pub fn of_range(range: FileRange) -> Job {
        Job {
            records: None,
            range: Some(range),
        }
    }

    /// The records of a payload job (none for a range job).
    pub fn lines(&self) -> Vec<&str> {
        self.records
            .as_deref()
            .unwrap_or_default()
            .split('\n')
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Records as a byte range of a JSON-lines file: `[start, end)` of `file`
/// (relative to the project dir, as the input's stream is named), holding
/// `records` records, with the XXH3-64 checksum of its bytes. The range
/// ends after a line feed (or at the end of a finished file) and holds no
/// line a source would reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRange {
    pub file: String,
    pub start: u64,
    pub end: u64,
    pub records: u32,
    pub xxh3: u64,
}

/// A range that no longer holds what was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// It cannot be read now (the file is missing or unreadable): another
    /// attempt (or process) may.
    #[error("{file}: {message}")]
    Unreadable { file: String, message: String },
    /// Its bytes changed since they were read (the file was rewritten,
    /// truncated or replaced): no attempt can recover them.
    #[error(
        "{file}: bytes {start}..{end} changed since they were read ({message}); \
         the file was rewritten, truncated or replaced in place — append to input files, \
         never rewrite them"
    )]
    Changed {
        file: String,
        start: u64,
        end: u64,
        message: String,
        /// What the range holds now (its first bytes).
        found: Vec<u8>,
    },
}

impl FileRange {
    /// Where it is, as a dead letter's `source` names it.
    pub fn at(&self) -> String {
        format!("{}@{}..{}", self.file, self.start, self.end)
    }

    /// Reads the range from `root` (the project dir) and checks it.
    pub fn read(&self, root: &std::path::Path) -> Result<String, RangeError> {
        use std::io::{Read as _, Seek as _};
        let path = root.join(&self.file);
        let unreadable = |e: std::io::Error| RangeError::Unreadable {
            file: self.file.clone(),
            message: e.to_string(),
        };
        let len = self.end.saturating_sub(self.start);
        let mut f = std::fs::File::open(&path).map_err(unreadable)?;
        f.seek(std::io::SeekFrom::Start(self.start))
            .map_err(unreadable)?;
        let mut buf = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut buf).map_err(unreadable)?;
        let changed = |message: String, found: &[u8]| RangeError::Changed {
            file: self.file.clone(),
            start: self.start,
            end: self.end,
            message,
            found: found[..found.len().min(crate::source::KEEP_BYTES)].to_vec(),
        };
        if (buf.len() as u64) < len {
            return Err(changed(
                format!(
                    "the file now ends at byte {}",
                    self.start + buf.len() as u64
                ),
                &buf,
            ));
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&buf);
        if sum != self.xxh3 {
            return Err(changed(
                format!("checksum {sum:016x}, read as {:016x}", self.xxh3),
                &buf,
            ));
        }
        let text = String::from_utf8(buf)
            .map_err(|e| changed("not UTF-8 any more".into(), e.as_bytes()))?;
        let n = range_lines(&text, self.start == 0).count();
        if n != self.records as usize {
            return Err(changed(
                format!("{n} records, read as {}", self.records),
                text.as_bytes(),
            ));
        }
        Ok(text)
    }
}

/// The records of a range's text, as the file source splits them: lines
/// trimmed of ASCII whitespace, blank ones skipped, a byte-order mark at
/// the start of the file dropped.
pub fn range_lines(text: &str, file_start: bool) -> impl Iterator<Item = &str> {
    let text = if file_start {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    text.split('\n')
        .map(str::trim_ascii)
        .filter(|l| !l.is_empty())
}

/// How often workers report they are alive (by default); a job held by a
/// worker silent for `heartbeat × MISSED_HEARTBEATS` is given to another
/// (after a crash).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: usize = 3;

/// How often a worker with nothing to do looks for jobs anyway (a lost
/// notification, a job rescheduled for later).
pub const IDLE_POLL: Duration = Duration::from_secs(1);

/// The apalis storage of a flow's queue, waking its worker on each insert
/// notification (see [`Wake`]).
pub fn woken_storage(
    db: &Db,
    flow: &str,
    fetch: usize,
    heartbeat: Duration,
) -> PollWith<PostgresStorage<Job>, Wake> {
    let notes = Pubsub::new(db.pool().clone(), queue_name(flow));
    PollWith::new(
        storage(db, flow, fetch, heartbeat),
        Wake::new(notes, IDLE_POLL),
    )
}

/// When a worker looks for jobs: on every insert notification and every
/// `IDLE_POLL`. It drains the notifications to the last, so that the
/// listener always holds the worker's waker when it parks. (apalis's
/// `StreamStrategy` takes one notification per poll: a worker that found
/// the queue empty after taking a stale one parked with no waker at the
/// listener and slept until its next heartbeat — seconds with jobs waiting,
/// measured as 3–5 s stalls whenever a source was slower than the workers.)
pub struct Wake {
    notes: Pubsub,
    tick: tokio::time::Interval,
}

impl Wake {
    pub fn new(notes: Pubsub, every: Duration) -> Wake {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Wake { notes, tick }
    }
}

impl PollStrategy for Wake {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut woke = false;
        // Ends Pending (waker registered) or closed (the tick remains).
        while let Poll::Ready(Some(_)) = self.notes.poll_next_unpin(cx) {
            woke = true;
        }
        while self.tick.poll_tick(cx).is_ready() {
            woke = true;
        }
        if woke {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// The apalis storage of a flow's queue.
pub fn storage(db: &Db, flow: &str, fetch: usize, heartbeat: Duration) -> PostgresStorage<Job> {
    let config = Config::default()
        .queue(queue_name(flow))
        .batch_size(fetch.max(1))
        .heartbeat_interval(heartbeat)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // Without it apalis never marks a job done.
        .persist_results(true);
    PostgresStorage::new(db.pool()).with_config(config)
}

/// Inserts one batch as a job of `flow`'s queue, on `conn` — so that a
/// caller's transaction can hold it with the source position it reached,
/// or with the dead letters it replays. The row is the one apalis writes
/// itself (JSON-encoded job, ULID id, `Pending`); its insert trigger wakes
/// the workers. Returns the bytes stored.
pub async fn push<'c, E>(
    conn: E,
    flow: &str,
    job: &Job,
    max_attempts: u32,
) -> Result<usize, RuntimeError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let bytes = serde_json::to_vec(job).map_err(|e| RuntimeError::Queue(e.to_string()))?;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
         VALUES (apalis.generate_ulid(), $1, $2, 'Pending', 0, $3, now(), 0, ''::hstore)",
    )
    .bind(queue_name(flow))
    .bind(&bytes)
    .bind(max_attempts.min(i32::MAX as u32) as i32)
    .execute(conn)
    .await
    .map_err(|e| RuntimeError::Db(DbError::Query(e)))?;
    Ok(bytes.len())
}

/// Wakes `flow`'s workers for job `id` (as apalis's insert trigger does):
/// a job rescheduled for later is otherwise only seen at the next poll.
pub async fn notify(db: &Db, flow: &str, id: &str) -> Result<(), RuntimeError> {
    sqlx::query(
        "SELECT pg_notify('apalis::job::insert',
                json_build_object('job_type', $1::text, 'id', $2::text, 'run_at', now())::text)",
    )
    .bind(queue_name(flow))
    .bind(id)
    .execute(db.pool())
    .await
    .map_err(|e| RuntimeError::Queue(e.to_string()))?;
    Ok(())
}

/// Delay before attempt `attempt + 1`: 1 s, 2 s, 4 s … capped at 60 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Reschedules a failed job (apalis retries a failed job at once; the
/// backoff moves its `run_at`).
pub async fn delay(db: &Db, task_id: &str, by: Duration) -> Result<(), RuntimeError> {
    sqlx::query("UPDATE apalis.jobs SET run_at = now() + make_interval(secs => $2) WHERE id = $1")
        .bind(task_id)
        .bind(by.as_secs_f64())
        .execute(db.pool())
        .await
        .map_err(|e| RuntimeError::Queue(e.to_string()))?;
    Ok(())
}

/// The attempts job `task_id` may use (raised by [`spare_attempt`]).
pub async fn max_attempts(db: &Db, task_id: &str) -> Result<u32, RuntimeError> {
    let (n,): (i32,) = sqlx::query_as("SELECT max_attempts FROM apalis.jobs WHERE id = $1")
        .bind(task_id)
        .fetch_one(db.pool())
        .await
        .map_err(|e| RuntimeError::Queue(e.to_string()))?;
    Ok(n.max(1) as u32)
}

/// Gives job `task_id` one more attempt and delays it by `by` (a failure
/// that is not the job's fault).
pub async fn spare_attempt(db: &Db, task_id: &str, by: Duration) -> Result<(), RuntimeError> {
    sqlx::query(
        "UPDATE apalis.jobs SET max_attempts = max_attempts + 1, run_at = now() + make_interval(secs => $2) WHERE id = $1",
    )
    .bind(task_id)
    .bind(by.as_secs_f64())
    .execute(db.pool())
    .await
    .map_err(|e| RuntimeError::Queue(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn job_lines_skip_empty() {
        let j = Job::new(&["{\"a\":1}".into(), "{\"b\":2}".into()]);
        assert_eq!(j.lines(), ["{\"a\":1}", "{\"b\":2}"]);
    }
}
