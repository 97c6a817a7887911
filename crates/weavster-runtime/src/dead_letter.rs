//! Dead letters: records that could not be delivered, with why. Written by
//! sources (`input`, `decode`) and workers; listed, replayed and purged by
//! `weavster dlq`.
//!
//! A record is stored as its bytes (`bytea`): whatever a source read —
//! invalid UTF-8, a NUL, an over-long line — is kept exactly. Text columns
//! (message, path) never hold a NUL (it is written `\u0000`). A worker's
//! dead letters carry their job and item (the record's index in the job):
//! inserting them again, on a retry of the same job, does nothing.

use serde::Serialize;

use crate::queue::{self, Job};
use crate::{Db, DbError, RuntimeError};

/// Why a record is a dead letter: where on its way it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The source could not read it (an over-long line, a CSV row with too
    /// many fields, a JSON file that ends early).
    Input,
    /// Not JSON, not an object, or not UTF-8.
    Decode,
    /// A step of the flow failed on it.
    Transform,
    /// No output took it (`unrouted: error`).
    Routing,
    /// The guest crashed on it.
    Trap,
    /// The guest ran past `batch_timeout_ms` on it.
    Deadline,
    /// An output refused it.
    Output,
    /// Its batch failed every attempt.
    Delivery,
    /// The compiled flow answered something invalid: a bug in Weavster.
    Internal,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Input,
        Stage::Decode,
        Stage::Transform,
        Stage::Routing,
        Stage::Trap,
        Stage::Deadline,
        Stage::Output,
        Stage::Delivery,
        Stage::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Routing => "routing",
            Stage::Trap => "trap",
            Stage::Deadline => "deadline",
            Stage::Output => "output",
            Stage::Delivery => "delivery",
            Stage::Internal => "internal",
        }
    }

    /// The stage a guest names in a record error.
    pub fn from_guest(s: &str) -> Stage {
        match s {
            "decode" => Stage::Decode,
            "routing" => Stage::Routing,
            "output" => Stage::Output,
            _ => Stage::Transform,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record on its way to the dead-letter table.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    pub record: Vec<u8>,
    pub stage: Stage,
    pub message: String,
    /// The field path, when the flow named one.
    pub path: Option<String>,
    /// Its index in its job (worker dead letters).
    pub item: Option<i32>,
    /// The output that refused it.
    pub output: Option<String>,
    /// Where a source read it (`file@byte`).
    pub source: Option<String>,
}

impl NewDeadLetter {
    pub fn new(
        record: impl Into<Vec<u8>>,
        stage: Stage,
        message: impl Into<String>,
    ) -> NewDeadLetter {
        NewDeadLetter {
            record: record.into(),
            stage,
            message: message.into(),
            path: None,
            item: None,
            output: None,
            source: None,
        }
    }

    pub fn item(mut self, i: usize) -> NewDeadLetter {
        self.item = i32::try_from(i).ok();
        self
    }
}

/// Text PostgreSQL can store: a NUL becomes `\u0000`.
fn text(s: &str) -> String {
    s.replace('\0', "\\u0000")
}

/// Writes dead letters in one statement. With a `job`, letters already
/// written for the same job, item, stage and output are skipped.
pub(crate) async fn insert<'c, E>(
    conn: E,
    flow: &str,
    run_id: i64,
    attempts: i32,
    job: Option<&str>,
    dead: &[NewDeadLetter],
) -> Result<(), DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    if dead.is_empty() {
        return Ok(());
    }
    let records: Vec<&[u8]> = dead.iter().map(|d| d.record.as_slice()).collect();
    let stages: Vec<&str> = dead.iter().map(|d| d.stage.as_str()).collect();
    let messages: Vec<String> = dead.iter().map(|d| text(&d.message)).collect();
    let paths: Vec<Option<String>> = dead.iter().map(|d| d.path.as_deref().map(text)).collect();
    let items: Vec<Option<i32>> = dead.iter().map(|d| d.item).collect();
    let outputs: Vec<Option<String>> = dead.iter().map(|d| d.output.clone()).collect();
    let sources: Vec<Option<String>> = dead.iter().map(|d| d.source.as_deref().map(text)).collect();
    sqlx::query(
        "INSERT INTO weavster.dead_letters
             (flow, record, stage, message, path, attempts, run_id, job_id, item, output, source)
         SELECT $1, r, s, m, p, $6, $7, $8, i, o, src
         FROM unnest($2::bytea[], $3::text[], $4::text[], $5::text[], $9::int[], $10::text[], $11::text[])
              AS t(r, s, m, p, i, o, src)
         ON CONFLICT (job_id, item, stage, (coalesce(output, ''))) WHERE job_id IS NOT NULL
         DO NOTHING",
    )
    .bind(flow)
    .bind(&records)
    .bind(&stages)
    .bind(&messages)
    .bind(&paths)
    .bind(attempts)
    .bind(run_id)
    .bind(job)
    .bind(&items)
    .bind(&outputs)
    .bind(&sources)
    .execute(conn)
    .await?;
    Ok(())
}

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub flow: String,
    /// The record's bytes, exactly as read.
    #[serde(skip)]
    pub record: Vec<u8>,
    pub stage: String,
    pub message: String,
    pub path: Option<String>,
    pub attempts: i32,
    pub run_id: Option<i64>,
    /// The output that refused it.
    pub output: Option<String>,
    /// Where a source read it (`file@byte`).
    pub source: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl DeadLetter {
    /// The record as text, if it is valid UTF-8.
    pub fn record_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.record).ok()
    }
}

/// Which dead letters a command acts on: all of them, a flow's, or ids.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub flow: Option<String>,
    pub ids: Vec<i64>,
}

/// The filter's `WHERE` clause ($1 flow, $2 ids).
macro_rules! filtered {
    ($head:literal $(, $tail:literal)?) => {
        concat!(
            $head,
            " WHERE ($1::text IS NULL OR flow = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY($2))"
            $(, $tail)?
        )
    };
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replayed {
    /// Records queued again, per flow.
    pub queued: Vec<(String, usize)>,
    /// Dead letters left where they are, with why (ids).
    pub kept: Vec<(i64, String)>,
}

impl Db {
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, DbError> {
        let sql = filtered!(
            "SELECT id, flow, record, stage, message, path, attempts, run_id, output, source,
             to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at
             FROM weavster.dead_letters",
            " ORDER BY id LIMIT $3"
        );
        Ok(sqlx::query_as::<_, DeadLetter>(sql)
            .bind(&filter.flow)
            .bind(&filter.ids)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<i64, DbError> {
        let sql = filtered!("SELECT count(*) FROM weavster.dead_letters");
        let (n,): (i64,) = sqlx::query_as(sql)
            .bind(&filter.flow)
            .bind(&filter.ids)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Deletes dead letters; returns how many.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, DbError> {
        let sql = filtered!("DELETE FROM weavster.dead_letters");
        let r = sqlx::query(sql)
            .bind(&filter.flow)
            .bind(&filter.ids)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Puts dead letters back on their flows' queues (one job per flow and
    /// `batch_size` records) and deletes them, in one transaction per job;
    /// the next `weavster run` processes them. Records of flows not in
    /// `known` are left alone, and so are records that are not UTF-8 text
    /// (no flow can read them: fix the input instead).
    pub async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        known: &[String],
        batch_size: usize,
        max_attempts: u32,
    ) -> Result<Replayed, RuntimeError> {
        let letters = self.dead_letters(filter, i64::MAX).await?;
        let mut out = Replayed::default();
        for d in &letters {
            if !known.contains(&d.flow) {
                out.kept
                    .push((d.id, format!("flow `{}` is not in this project", d.flow)));
            } else if d.record_text().is_none() {
                out.kept.push((
                    d.id,
                    "the record is not valid UTF-8: no flow can read it".into(),
                ));
            }
        }
        for flow in known {
            let mine: Vec<(&DeadLetter, &str)> = letters
                .iter()
                .filter(|d| &d.flow == flow)
                .filter_map(|d| d.record_text().map(|t| (d, t)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            for chunk in mine.chunks(batch_size.max(1)) {
                let records: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
                let ids: Vec<i64> = chunk.iter().map(|(d, _)| d.id).collect();
                let mut tx = self.pool.begin().await.map_err(DbError::from)?;
                queue::push(&mut *tx, flow, &Job::from_records(&records), max_attempts).await?;
                sqlx::query("DELETE FROM weavster.dead_letters WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::from)?;
                tx.commit().await.map_err(DbError::from)?;
            }
            out.queued.push((flow.clone(), mine.len()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip_from_the_guest() {
        for s in Stage::ALL {
            if matches!(s, Stage::Decode | Stage::Routing | Stage::Output) {
                assert_eq!(Stage::from_guest(s.as_str()), s);
            }
        }
        assert_eq!(Stage::from_guest("transform"), Stage::Transform);
    }

    #[test]
    fn text_columns_never_hold_nul() {
        assert_eq!(text("a\0b"), "a\\u0000b");
    }
}
