//! The queue database: connection, migrations, offsets, runs.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the queue database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot set up the queue tables: {0}")]
    Migrate(String),
    #[error("queue database: {0}")]
    Query(#[from] sqlx::Error),
}

/// A connection pool on the queue database, with the tables set up.
#[derive(Clone, Debug)]
pub struct Db {
    pub(crate) pool: PgPool,
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Connects (retrying for up to `wait`, for a server still starting)
    /// and runs the migrations: apalis's (schema `apalis`) and Weavster's
    /// (schema `weavster`, own migration table).
    ///
    /// Sessions commit with `synchronous_commit = off`: a commit returns
    /// before its WAL is flushed (the server flushes within 200 ms, in
    /// order). A crash of the server (or of the machine) can then lose the
    /// last commits *and everything after them*: an acknowledgement, a
    /// dead letter, a mark — each is done again by a job that runs again.
    /// Only enqueueing, after which a source moves on, commits
    /// synchronously ([`Db::durable`]).
    pub async fn connect(url: &str, max_connections: u32, wait: Duration) -> Result<Db, DbError> {
        let deadline = tokio::time::Instant::now() + wait;
        let options: sqlx::postgres::PgConnectOptions =
            url.parse().map_err(|e| DbError::Connect {
                url: mask_url(url),
                source: e,
            })?;
        let options = options.options([("synchronous_commit", "off")]);
        // Which process a session belongs to, in pg_stat_activity (who holds
        // a source's lock, whose queries are slow), unless the URL names it.
        let options = if url.contains("application_name") {
            options
        } else {
            options.application_name(&format!("weavster/{}", std::process::id()))
        };
        let pool = loop {
            let attempt = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await;
            match attempt {
                Ok(pool) => break pool,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(DbError::Connect {
                        url: mask_url(url),
                        source: e,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        let db = Db { pool };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut apalis = apalis_postgres::PostgresStorage::migrations();
        apalis.set_ignore_missing(true);
        apalis
            .run(&self.pool)
            .await
            .map_err(|e| DbError::Migrate(format!("apalis: {e}")))?;
        let mut ours = sqlx::migrate!("./migrations");
        ours.create_schema("weavster");
        ours.dangerous_set_table_name("weavster._sqlx_migrations");
        ours.run(&self.pool)
            .await
            .map_err(|e| DbError::Migrate(format!("weavster: {e}")))?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Makes the transaction on `conn` commit synchronously (its WAL
    /// flushed before the commit returns, with everything before it).
    pub async fn durable(conn: &mut sqlx::PgConnection) -> Result<(), DbError> {
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Where the database's write-ahead log is (to measure how much a run
    /// wrote: [`Db::wal_since`]).
    pub async fn wal_lsn(&self) -> Result<String, DbError> {
        let (lsn,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.pool)
            .await?;
        Ok(lsn)
    }

    /// Bytes of write-ahead log written since `lsn` (by every session).
    pub async fn wal_since(&self, lsn: &str) -> Result<u64, DbError> {
        let (n,): (f64,) =
            sqlx::query_as("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
                .bind(lsn)
                .fetch_one(&self.pool)
                .await?;
        Ok(n.max(0.0) as u64)
    }

    /// The stored positions of a flow's input streams.
    pub async fn offsets(&self, flow: &str) -> Result<crate::source::Positions, DbError> {
        let rows: Vec<(String, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as("SELECT stream, position FROM weavster.offsets WHERE flow = $1")
                .bind(flow)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(k, v)| (k, v.0)).collect())
    }

    /// Forgets a flow's input positions (`run --from-start`).
    pub async fn reset_offsets(&self, flow: &str) -> Result<u64, DbError> {
        let r = sqlx::query("DELETE FROM weavster.offsets WHERE flow = $1")
            .bind(flow)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    pub(crate) async fn start_run(&self, mode: &str, flows: &[String]) -> Result<i64, DbError> {
        let host = crate::host_name();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO weavster.runs (host, pid, mode, flows) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(host)
        .bind(std::process::id() as i32)
        .bind(mode)
        .bind(flows)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub(crate) async fn finish_run(
        &self,
        id: i64,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE weavster.runs SET finished_at = now(), status = $2, summary = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(sqlx::types::Json(summary))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jobs of these flows not finished yet (waiting, running, or failed
    /// with attempts left).
    pub async fn unfinished_jobs(&self, flows: &[String]) -> Result<i64, DbError> {
        let queues: Vec<String> = flows.iter().map(|f| crate::queue_name(f)).collect();
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = ANY($1)
             AND (status IN ('Pending', 'Queued', 'Running')
                  OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .bind(&queues)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Deletes finished jobs older than `age` (apalis keeps them forever).
    pub async fn vacuum_jobs(&self, flows: &[String], age: Duration) -> Result<u64, DbError> {
        let queues: Vec<String> = flows.iter().map(|f| crate::queue_name(f)).collect();
        let r = sqlx::query(
            "DELETE FROM apalis.jobs WHERE job_type = ANY($1) AND status = 'Done'
             AND done_at < now() - make_interval(secs => $2)",
        )
        .bind(&queues)
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(mask_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
