//! The dead-letter table: list, show, replay, purge.

use serde::Serialize;

use crate::queue::{self, Job};
use crate::{Db, DbError, RuntimeError};

/// One dead letter.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub flow: String,
    pub record: String,
    pub stage: String,
    pub message: String,
    pub path: Option<String>,
    pub attempts: i32,
    pub run_id: Option<i64>,
    /// RFC 3339.
    pub created_at: String,
}

/// Which dead letters a command acts on: all of them, a flow's, or ids.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub flow: Option<String>,
    pub ids: Vec<i64>,
}

const SELECT: &str = concat!(
    "SELECT id, flow, record, stage, message, path, attempts, run_id,
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at
    FROM weavster.dead_letters
    WHERE ($1::text IS NULL OR flow = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY($2))",
    " ORDER BY id LIMIT $3"
);

impl Db {
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, DbError> {
        Ok(sqlx::query_as::<_, DeadLetter>(SELECT)
            .bind(&filter.flow)
            .bind(&filter.ids)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<i64, DbError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM weavster.dead_letters
             WHERE ($1::text IS NULL OR flow = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY($2))",
        )
        .bind(&filter.flow)
        .bind(&filter.ids)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Deletes dead letters; returns how many.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, DbError> {
        let r = sqlx::query(
            "DELETE FROM weavster.dead_letters
             WHERE ($1::text IS NULL OR flow = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY($2))",
        )
        .bind(&filter.flow)
        .bind(&filter.ids)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Puts dead letters back on their flows' queues (one job per flow and
    /// `batch_size` records) and deletes them; the next `weavster run`
    /// processes them. Records of flows not in `known` are left alone.
    /// Returns the replayed count per flow.
    pub async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        known: &[String],
        batch_size: usize,
        max_attempts: u32,
    ) -> Result<Vec<(String, usize)>, RuntimeError> {
        let letters = self.dead_letters(filter, i64::MAX).await?;
        let mut out: Vec<(String, usize)> = Vec::new();
        for flow in known {
            let mine: Vec<&DeadLetter> = letters.iter().filter(|d| &d.flow == flow).collect();
            if mine.is_empty() {
                continue;
            }
            let mut storage = queue::storage(self, flow, 1);
            for chunk in mine.chunks(batch_size.max(1)) {
                let records: Vec<String> = chunk.iter().map(|d| d.record.clone()).collect();
                let ids: Vec<i64> = chunk.iter().map(|d| d.id).collect();
                // Pushed first, deleted after: a crash in between replays
                // a record twice rather than never.
                queue::push(&mut storage, Job::new(&records), max_attempts).await?;
                sqlx::query("DELETE FROM weavster.dead_letters WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&self.pool)
                    .await
                    .map_err(DbError::from)?;
            }
            out.push((flow.clone(), mine.len()));
        }
        Ok(out)
    }
}
