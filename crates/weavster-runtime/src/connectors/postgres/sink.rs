//! The PostgreSQL sink.
//!
//! One statement per batch: the records go as one `jsonb` array parameter
//! and are cast to the columns' types in SQL (`INSERT … SELECT … FROM
//! jsonb_array_elements($1)`), so PostgreSQL itself converts every value
//! with the column's own input function. A field that is missing takes the
//! column's default; a JSON null is NULL. Upserts collapse duplicate keys
//! of a batch (last wins) first. The statement runs under a savepoint; a
//! data error (SQLSTATE 22, 23) is narrowed down by bisection to the
//! records that cause it, which are refused (dead letters) while the rest
//! is written. With `exactly_once`, the job's id is recorded in
//! `weavster_written` in the same transaction as its rows: a retried job
//! finds it and writes nothing again.

use std::collections::HashSet;

use futures::future::BoxFuture;
use sqlx::{PgPool, Postgres, Transaction};
use weavster_spec::types::{PostgresConnector, UnknownFields};

use super::{Class, class, connect, literal, quote, what};
use crate::connectors::{ConnectorError, Context};
use crate::sink::{Failed, Refused, Sink, SinkError};

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    name: String,
    /// `format_type`: the type as SQL spells it (`numeric(10,2)`, `text[]`).
    sql_type: String,
    /// `typcategory`: `A` arrays, `U` user types (json, jsonb, bytea, uuid…).
    category: String,
    type_name: String,
    default: Option<String>,
    /// Identity `ALWAYS` or generated: never written.
    computed: bool,
}

/// name, format_type, typcategory, typname, default, attidentity, attgenerated.
type CatalogRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
);

/// The table's quoted name and columns; a missing table is a clear error.
pub(super) async fn table_of(
    pool: &PgPool,
    table: &str,
) -> Result<(String, Vec<Column>), ConnectorError> {
    let name: String = sqlx::query_scalar("SELECT $1::regclass::text")
        .bind(table)
        .fetch_one(pool)
        .await
        .map_err(|e| match class(&e) {
            Class::Stop => ConnectorError::Config(format!("table `{table}`: {e}")),
            _ => ConnectorError::Connect(e.to_string()),
        })?;
    let rows: Vec<CatalogRow> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text,
                    t.typname::text, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
                    a.attgenerated::text
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| ConnectorError::Connect(e.to_string()))?;
    let columns = rows
        .into_iter()
        .map(
            |(name, sql_type, category, type_name, default, identity, generated)| Column {
                name,
                sql_type,
                category,
                type_name,
                computed: identity == "a" || !generated.is_empty(),
                default: if generated.is_empty() { default } else { None },
            },
        )
        .collect();
    Ok((name, columns))
}

pub(crate) struct PgSink {
    what: String,
    pool: PgPool,
    /// The insert (or upsert) statement; `$1` is the batch as a jsonb array.
    statement: String,
    /// Record fields allowed (`None`: any; a mapping or a jsonb column).
    known: Option<HashSet<String>>,
    /// Upsert key paths, to collapse duplicates of a batch.
    keys: Vec<Vec<String>>,
    /// The name batches are recorded under in `weavster_written`.
    marker: Option<String>,
}

/// The SQL value of record path `path` cast to `col`'s type (SQL NULL for
/// a JSON null), or its default when the path is missing.
fn expression(col: &Column, path: &[String]) -> String {
    let p = literal(&format!("{{{}}}", path.join(",")));
    let json = format!("(r.x #> {p})");
    let text = format!("(r.x #>> {p})");
    let t = &col.sql_type;
    let value = match (col.category.as_str(), col.type_name.as_str()) {
        (_, "json" | "jsonb") => format!("{json}::{t}"),
        (_, "bytea") => format!("decode({text}, 'base64')"),
        ("A", _) => format!(
            "CASE WHEN jsonb_typeof({json}) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text({json}))::{t} ELSE {text}::{t} END"
        ),
        _ => format!("{text}::{t}"),
    };
    let default = col.default.clone().unwrap_or_else(|| "NULL".into());
    format!(
        "CASE WHEN {json} IS NULL THEN {default} WHEN jsonb_typeof({json}) = 'null' THEN NULL ELSE {value} END"
    )
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

impl PgSink {
    pub(crate) async fn new(p: &PostgresConnector, cx: &Context) -> Result<PgSink, ConnectorError> {
        let Some(table) = &p.table else {
            return Err(ConnectorError::Config(
                "an output needs `table` (the table to write)".into(),
            ));
        };
        let pool = connect(p, p.pool_size.unwrap_or(4)).await?;
        let (name, columns) = table_of(&pool, table).await?;
        let column = |c: &str| {
            columns.iter().find(|col| col.name == c).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "table {name} has no column `{c}` (columns: {})",
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        // (column, record path) pairs written.
        let mut written: Vec<(&Column, Vec<String>)> = Vec::new();
        let mut known = None;
        if let Some(j) = &p.jsonb_column {
            let col = column(j)?;
            if !matches!(col.type_name.as_str(), "json" | "jsonb") {
                return Err(ConnectorError::Config(format!(
                    "`jsonb_column` `{j}` is of type {}, not jsonb or json",
                    col.sql_type
                )));
            }
            written.push((col, Vec::new()));
        } else if !p.columns.is_empty() {
            for (c, path) in &p.columns {
                written.push((column(c)?, split(path)));
            }
        } else {
            for col in columns.iter().filter(|c| !c.computed) {
                written.push((col, vec![col.name.clone()]));
            }
            if p.unknown_fields.unwrap_or(UnknownFields::Error) == UnknownFields::Error {
                known = Some(columns.iter().map(|c| c.name.clone()).collect());
            }
        }
        let mut keys = Vec::new();
        for k in &p.upsert_keys {
            column(k)?;
            let path = written
                .iter()
                .find(|(c, _)| &c.name == k)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| {
                    ConnectorError::Config(format!("upsert key `{k}` is not a written column"))
                })?;
            keys.push(path);
        }
        let names: Vec<String> = written.iter().map(|(c, _)| quote(&c.name)).collect();
        let values: Vec<String> = written
            .iter()
            .map(|(c, path)| {
                if path.is_empty() {
                    format!("r.x::{}", c.sql_type)
                } else {
                    expression(c, path)
                }
            })
            .collect();
        let mut statement = format!(
            "INSERT INTO {name} ({}) SELECT {} FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS r(x, n) ORDER BY r.n",
            names.join(", "),
            values.join(", ")
        );
        if !p.upsert_keys.is_empty() {
            let conflict: Vec<String> = p.upsert_keys.iter().map(|k| quote(k)).collect();
            let updates: Vec<String> = written
                .iter()
                .filter(|(c, _)| !p.upsert_keys.contains(&c.name))
                .map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
                .collect();
            if updates.is_empty() {
                statement.push_str(&format!(
                    " ON CONFLICT ({}) DO NOTHING",
                    conflict.join(", ")
                ));
            } else {
                statement.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    conflict.join(", "),
                    updates.join(", ")
                ));
            }
        }
        let marker = if p.exactly_once.unwrap_or(true) {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS weavster_written (
                    job_id text NOT NULL,
                    output text NOT NULL,
                    refused jsonb NOT NULL DEFAULT '[]',
                    written_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (job_id, output))",
            )
            .execute(&pool)
            .await
            .map_err(|e| {
                ConnectorError::Config(format!(
                    "cannot create the table `weavster_written` that makes writes exactly-once ({e}); \
                     grant CREATE, create it yourself (docs/connectors.md), or set `exactly_once: false`"
                ))
            })?;
            // A job is never run again once it is done (and done jobs are
            // deleted after an hour): older marks are of no use.
            let _ = sqlx::query(
                "DELETE FROM weavster_written WHERE written_at < now() - interval '1 day'",
            )
            .execute(&pool)
            .await;
            Some(format!("{}/{}", cx.flow, cx.output))
        } else {
            None
        };
        Ok(PgSink {
            what: what(p),
            pool,
            statement,
            known,
            keys,
            marker,
        })
    }

    fn error(&self, e: &sqlx::Error) -> SinkError {
        SinkError::Remote {
            what: self.what.clone(),
            message: e.to_string(),
            failed: match class(e) {
                Class::Stop => Failed::Stop,
                _ if super::unreachable(e) => Failed::Unavailable,
                _ => Failed::Retry,
            },
        }
    }

    /// Writes `idx` (indexes into `records`) under a savepoint; data errors
    /// are narrowed down to single records, which go to `refused`.
    fn write_some<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        records: &'a [&'a str],
        idx: &'a [usize],
        refused: &'a mut Refused,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if idx.is_empty() {
                return Ok(());
            }
            let mut batch =
                String::with_capacity(idx.iter().map(|&i| records[i].len() + 1).sum::<usize>() + 2);
            batch.push('[');
            for (k, &i) in idx.iter().enumerate() {
                if k > 0 {
                    batch.push(',');
                }
                batch.push_str(records[i]);
            }
            batch.push(']');
            sqlx::query("SAVEPOINT w").execute(&mut **tx).await?;
            // Built from quoted identifiers, the catalog's own type names
            // and default expressions; values are only ever the parameter.
            match sqlx::query(sqlx::AssertSqlSafe(self.statement.clone()))
                .bind(&batch)
                .execute(&mut **tx)
                .await
            {
                Ok(_) => {
                    sqlx::query("RELEASE SAVEPOINT w")
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                }
                Err(e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT w")
                        .execute(&mut **tx)
                        .await?;
                    if class(&e) != Class::Data {
                        return Err(e);
                    }
                    if let [i] = idx {
                        let message = e
                            .as_database_error()
                            .map(|d| {
                                format!(
                                    "{} (SQLSTATE {})",
                                    d.message(),
                                    d.code().unwrap_or_default()
                                )
                            })
                            .unwrap_or_else(|| e.to_string());
                        refused.push((*i, message));
                        return Ok(());
                    }
                    let (a, b) = idx.split_at(idx.len() / 2);
                    self.write_some(tx, records, a, refused).await?;
                    self.write_some(tx, records, b, refused).await
                }
            }
        })
    }
}

impl Sink for PgSink {
    fn write<'a>(
        &'a self,
        job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>> {
        Box::pin(async move {
            let mut refused: Refused = Vec::new();
            // Fields that are not columns, and upsert duplicates: each
            // key's versions in order (the last is written; if the table
            // refuses it, the one before it is tried, and so on). Read as
            // the fields' text, never through numbers.
            let mut versions: indexmap::IndexMap<Vec<Option<String>>, Vec<usize>> =
                indexmap::IndexMap::new();
            let mut take: Vec<usize> = Vec::with_capacity(records.len());
            for (i, r) in records.iter().enumerate() {
                if self.known.is_none() && self.keys.is_empty() {
                    take.push(i);
                    continue;
                }
                let fields = match crate::record::fields(r) {
                    Ok(f) => f,
                    Err(e) => {
                        refused.push((i, e.to_string()));
                        continue;
                    }
                };
                if let Some(known) = &self.known
                    && let Some((extra, _)) =
                        fields.iter().find(|(k, _)| !known.contains(k.as_ref()))
                {
                    refused.push((
                        i,
                        format!(
                            "field `{extra}` is not a column of {} (set `unknown_fields: ignore` to drop such fields)",
                            self.what
                        ),
                    ));
                    continue;
                }
                if self.keys.is_empty() {
                    take.push(i);
                    continue;
                }
                let key: Result<Vec<Option<String>>, _> = self
                    .keys
                    .iter()
                    .map(|p| {
                        crate::record::lookup(&fields, p).map(|v| {
                            v.and_then(crate::record::text)
                                .map(std::borrow::Cow::into_owned)
                        })
                    })
                    .collect();
                match key {
                    Ok(key) => versions.entry(key).or_default().push(i),
                    Err(e) => refused.push((i, e.to_string())),
                }
            }
            take.extend(versions.values().filter_map(|v| v.last().copied()));
            take.sort_unstable();
            let mut tx = self.pool.begin().await.map_err(|e| self.error(&e))?;
            if let Some(output) = &self.marker {
                let fresh = sqlx::query(
                    "INSERT INTO weavster_written (job_id, output) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(job)
                .bind(output)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(&e))?
                .rows_affected()
                    == 1;
                if !fresh {
                    // Written by an earlier attempt: what it refused, again.
                    let before: sqlx::types::Json<Vec<(usize, String)>> = sqlx::query_scalar(
                        "SELECT refused FROM weavster_written WHERE job_id = $1 AND output = $2",
                    )
                    .bind(job)
                    .bind(output)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| self.error(&e))?;
                    tracing::info!(
                        job,
                        "{}: batch already written; not written again",
                        self.what
                    );
                    return Ok(before.0);
                }
            }
            self.write_some(&mut tx, records, &take, &mut refused)
                .await
                .map_err(|e| self.error(&e))?;
            // A key whose written version was refused: its version before
            // (a refused one never hides a valid one behind it).
            loop {
                let refused_now: HashSet<usize> = refused.iter().map(|(i, _)| *i).collect();
                let mut again: Vec<usize> = versions
                    .values_mut()
                    .filter_map(|v| {
                        let last = *v.last()?;
                        refused_now.contains(&last).then(|| {
                            v.pop();
                            v.last().copied()
                        })?
                    })
                    .collect();
                if again.is_empty() {
                    break;
                }
                again.sort_unstable();
                self.write_some(&mut tx, records, &again, &mut refused)
                    .await
                    .map_err(|e| self.error(&e))?;
            }
            refused.sort_by_key(|(i, _)| *i);
            if let Some(output) = &self.marker {
                sqlx::query(
                    "UPDATE weavster_written SET refused = $3 WHERE job_id = $1 AND output = $2",
                )
                .bind(job)
                .bind(output)
                .bind(sqlx::types::Json(&refused))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(&e))?;
            }
            tx.commit().await.map_err(|e| self.error(&e))?;
            Ok(refused)
        })
    }
}
