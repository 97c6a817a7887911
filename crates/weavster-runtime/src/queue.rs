//! Jobs on the apalis queue: one job = one batch of records.

use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_postgres::{Config, PostgresStorage};
use serde::{Deserialize, Serialize};

use crate::{Db, RuntimeError, queue_name};

/// One batch: its records, one JSON text per line (never parsed by the host).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub records: String,
}

impl Job {
    pub fn new(records: &[String]) -> Job {
        Job {
            records: records.join("\n"),
        }
    }

    pub fn lines(&self) -> Vec<&str> {
        self.records.split('\n').filter(|l| !l.is_empty()).collect()
    }
}

/// How often workers report they are alive; a job held by a worker silent
/// for `HEARTBEAT × MISSED_HEARTBEATS` is given to another (after a crash).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: usize = 3;

/// The apalis storage of a flow's queue.
pub fn storage(db: &Db, flow: &str, fetch: usize) -> PostgresStorage<Job> {
    let config = Config::default()
        .queue(queue_name(flow))
        .batch_size(fetch.max(1))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // Without it apalis never marks a job done.
        .persist_results(true);
    PostgresStorage::new(db.pool()).with_config(config)
}

/// Pushes one batch (one transaction).
pub async fn push(
    storage: &mut PostgresStorage<Job>,
    job: Job,
    max_attempts: u32,
) -> Result<(), RuntimeError> {
    let task = TaskBuilder::new(job)
        .max_attempts(max_attempts as usize)
        .build();
    storage
        .push_task(task)
        .await
        .map_err(|e| RuntimeError::Queue(e.to_string()))
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
