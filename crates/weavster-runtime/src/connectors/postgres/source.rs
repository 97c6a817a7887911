//! The PostgreSQL source, incremental query mode: keyset pagination on the
//! cursor column(s) (`WHERE (c1, c2) > (stored) ORDER BY c1, c2 LIMIT n`),
//! the position being the last row's cursor values, stored with the
//! batch's job (compare-and-set) like every position.
//!
//! Rows committed out of order: with a timestamp (or date) first cursor
//! column, only rows older than `delay_ms` are read, so a transaction that
//! commits up to that late with an earlier timestamp is not skipped. Other
//! cursors (a sequence) must grow in commit order (docs/connectors.md).
//! Values become JSON by one table (`json_of`): PostgreSQL's own `to_json`
//! except timestamps (RFC 3339 UTC) and bytea (base64).

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgPool;
use weavster_spec::types::PostgresConnector;

use super::{connect, literal, quote};
use crate::connectors::file::source::json_record;
use crate::connectors::{ConnectorError, Context};
use crate::source::{Limits, Position, Positions, Reject, Source, SourceBatch, SourceError};

/// The stream name of a query input.
const STREAM: &str = "query";

pub(crate) struct PgSource {
    what: String,
    pool: PgPool,
    /// `$1` the stored cursor values as a JSON array of texts (NULL: from
    /// the start), `$2` the horizon (or NULL), `$3` the limit.
    statement: String,
    /// The stored cursor (texts), `None` before the first batch.
    at: Option<Value>,
    limits: Limits,
    poll: Duration,
    /// `--once`: the horizon fixed at the start; continuous: recomputed.
    once: bool,
    delay: Option<Duration>,
    fixed_horizon: Option<String>,
}

/// A column of the query's result.
struct Col {
    name: String,
    sql_type: String,
    type_name: String,
}

/// A value of column `name` (of type `type_name`) of row `q` as JSON.
pub(crate) fn json_of(name: &str, type_name: &str) -> String {
    let c = format!("q.{}", quote(name));
    match type_name {
        "timestamptz" => {
            format!("to_json(to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))")
        }
        "timestamp" => format!("to_json(to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'))"),
        // encode() breaks base64 into lines of 76.
        "bytea" => format!("to_json(translate(encode({c}, 'base64'), E'\\n', ''))"),
        _ => format!("to_json({c})"),
    }
}

impl PgSource {
    pub(crate) async fn start(
        p: &PostgresConnector,
        cx: &Context,
        positions: Positions,
    ) -> Result<PgSource, ConnectorError> {
        let (Some(query), Some(cursor)) = (&p.query, &p.cursor) else {
            return Err(ConnectorError::Config(
                "an input needs `query` and `cursor`".into(),
            ));
        };
        let cursor = cursor.columns();
        let pool = connect(p, p.pool_size.unwrap_or(2)).await?;
        // The query's columns and types: a temporary view in one session.
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| ConnectorError::Connect(e.to_string()))?;
        let view = format!("CREATE TEMPORARY VIEW weavster_query AS {query}");
        sqlx::query(sqlx::AssertSqlSafe(view))
            .execute(&mut *conn)
            .await
            .map_err(|e| ConnectorError::Config(format!("`query`: {e}")))?;
        let cols: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = 'weavster_query'::regclass AND a.attnum > 0 ORDER BY a.attnum",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| ConnectorError::Connect(e.to_string()))?;
        let _ = sqlx::query("DROP VIEW weavster_query")
            .execute(&mut *conn)
            .await;
        drop(conn);
        let cols: Vec<Col> = cols
            .into_iter()
            .map(|(name, sql_type, type_name)| Col {
                name,
                sql_type,
                type_name,
            })
            .collect();
        let mut keys = Vec::new();
        for c in &cursor {
            let col = cols.iter().find(|k| &k.name == c).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "cursor column `{c}` is not a column of the query (columns: {})",
                    cols.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            keys.push(col);
        }
        let timed = matches!(
            keys[0].type_name.as_str(),
            "timestamptz" | "timestamp" | "date"
        );
        let record = cols
            .iter()
            .map(|c| format!("{}, {}", literal(&c.name), json_of(&c.name, &c.type_name)))
            .collect::<Vec<_>>()
            .join(", ");
        let key_list = keys
            .iter()
            .map(|k| format!("q.{}", quote(&k.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let stored = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("($1::jsonb->>{i})::{}", k.sql_type))
            .collect::<Vec<_>>()
            .join(", ");
        let cursor_texts = keys
            .iter()
            .map(|k| format!("q.{}::text", quote(&k.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let horizon = if timed {
            format!(
                " AND ($2::timestamptz IS NULL OR q.{}::timestamptz < $2::timestamptz)",
                quote(&keys[0].name)
            )
        } else {
            String::new()
        };
        let statement = format!(
            "SELECT json_build_object({record})::text, jsonb_build_array({cursor_texts})::text \
             FROM ({query}) q \
             WHERE ($1::jsonb IS NULL OR ({key_list}) > ({stored})){horizon} \
             ORDER BY {key_list} LIMIT $3"
        );
        let delay = timed.then(|| Duration::from_millis(p.delay_ms.unwrap_or(5000)));
        let mut s = PgSource {
            what: format!("postgres query of flow `{}`", cx.flow),
            pool,
            statement,
            at: positions.get(STREAM).cloned(),
            limits: cx.limits,
            poll: Duration::from_millis(p.poll_interval_ms.unwrap_or(1000)),
            once: cx.once,
            delay,
            fixed_horizon: None,
        };
        if cx.once {
            s.fixed_horizon = s
                .horizon()
                .await
                .map_err(|e| ConnectorError::Connect(e.to_string()))?;
        }
        Ok(s)
    }

    /// `now() - delay` as text, by the database's clock.
    async fn horizon(&self) -> Result<Option<String>, sqlx::Error> {
        let Some(d) = self.delay else {
            return Ok(None);
        };
        let h: String = sqlx::query_scalar("SELECT (now() - make_interval(secs => $1))::text")
            .bind(d.as_secs_f64())
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(h))
    }

    fn error(&self, e: sqlx::Error) -> SourceError {
        SourceError::Remote {
            what: self.what.clone(),
            fatal: super::class(&e) == super::Class::Stop,
            message: e.to_string(),
        }
    }
}

impl Source for PgSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            loop {
                let horizon = if self.once {
                    self.fixed_horizon.clone()
                } else {
                    self.horizon().await.map_err(|e| self.error(e))?
                };
                let rows: Vec<(String, String)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(self.statement.clone()))
                        .bind(self.at.as_ref().map(|v| v.to_string()))
                        .bind(horizon)
                        .bind(self.limits.batch_size as i64)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| self.error(e))?;
                if let Some((_, last)) = rows.last() {
                    let end: Value = serde_json::from_str(last)
                        .map_err(|e| self.error(sqlx::Error::Decode(Box::new(e))))?;
                    let mut batch = SourceBatch::default();
                    for (r, _) in rows {
                        // One line per record (a `json` column may hold
                        // line breaks between its tokens).
                        match json_record(r.as_bytes()) {
                            Ok(r) => batch.records.push(r),
                            Err((stage, message)) => batch.rejects.push(Reject {
                                record: r.into_bytes(),
                                stage,
                                message,
                                at: Some(self.what.clone()),
                            }),
                        }
                    }
                    return Ok(Some(SourceBatch {
                        records: batch.records,
                        rejects: batch.rejects,
                        position: Some(Position {
                            stream: STREAM.into(),
                            start: self.at.clone(),
                            end,
                        }),
                        ..SourceBatch::default()
                    }));
                }
                if self.once {
                    return Ok(None);
                }
                tokio::time::sleep(self.poll).await;
            }
        })
    }

    fn ack(&mut self, batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        if let Some(p) = &batch.position {
            self.at = Some(p.end.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&mut self, positions: Positions) -> BoxFuture<'_, ()> {
        self.at = positions.get(STREAM).cloned();
        Box::pin(async {})
    }
}
