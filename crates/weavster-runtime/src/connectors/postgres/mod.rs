//! PostgreSQL (sqlx). Input: an incremental query read by keyset on its
//! cursor column(s), or (CDC) a publication's changes by logical
//! replication through a slot's SQL interface. Output: typed batch inserts or
//! upserts into a table whose columns are read from the catalog at start,
//! bad rows isolated and dead-lettered alone, each batch recorded in the
//! target database with its rows so that a retried batch is never written
//! twice.

mod cdc;
mod pgoutput;
mod sink;
mod source;

use std::str::FromStr as _;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use weavster_spec::types::{PostgresConnector, PostgresMode};

use super::{Check, CheckContext, ConnectorError, Context, Family};
use crate::sink::Sink;
use crate::source::{Positions, Source};

impl Family for PostgresConnector {
    fn source<'a>(
        &'a self,
        cx: &'a Context,
        positions: Positions,
    ) -> BoxFuture<'a, Result<Box<dyn Source>, ConnectorError>> {
        Box::pin(async move {
            if self.mode == Some(PostgresMode::Cdc) {
                let s = cdc::CdcSource::start(self, cx, positions).await?;
                return Ok(Box::new(s) as Box<dyn Source>);
            }
            let s = source::PgSource::start(self, cx, positions).await?;
            Ok(Box::new(s) as Box<dyn Source>)
        })
    }

    fn sink<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Sink>, ConnectorError>> {
        Box::pin(async move {
            let s = sink::PgSink::new(self, cx).await?;
            Ok(Box::new(s) as Box<dyn Sink>)
        })
    }

    fn check<'a>(&'a self, _cx: &'a CheckContext) -> BoxFuture<'a, Option<Check>> {
        Box::pin(async move {
            let fix = "start the database, or fix `url`, `password` or `table`";
            let pool = match connect(self, 1).await {
                Ok(p) => p,
                Err(e) => return Some(Check::fail(e.to_string(), fix)),
            };
            let answer = match (&self.table, &self.publication) {
                (Some(t), _) => sink::table_of(&pool, t)
                    .await
                    .map(|(name, cols)| format!("table {name}: {} column(s)", cols.len())),
                (None, Some(publication)) if self.mode == Some(PostgresMode::Cdc) => {
                    cdc::check(&pool, publication, self.slot.as_deref()).await
                }
                _ => sqlx::query_scalar::<_, String>("SELECT version()")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| ConnectorError::Connect(e.to_string())),
            };
            pool.close().await;
            Some(match answer {
                Ok(detail) => Check::ok(detail),
                Err(e) => Check::fail(e.to_string(), fix),
            })
        })
    }
}

/// What the connector is called in messages.
fn what(p: &PostgresConnector) -> String {
    match (&p.table, &p.publication) {
        (Some(t), _) => format!("postgres table `{t}`"),
        (None, Some(publication)) => format!("postgres publication `{publication}`"),
        _ => "postgres".into(),
    }
}

/// A pool on the connector's database (the URL's password, or `password`).
async fn connect(p: &PostgresConnector, size: u32) -> Result<PgPool, ConnectorError> {
    let mut opts = PgConnectOptions::from_str(&p.url)
        .map_err(|e| ConnectorError::Config(format!("`url`: {e}")))?;
    if let Some(pw) = &p.password {
        opts = opts.password(pw);
    }
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| match class(&e) {
            Class::Stop => ConnectorError::Config(format!("the database refused: {e}")),
            _ => ConnectorError::Connect(format!("cannot connect: {e}")),
        })
}

/// What an error means for a batch, by SQLSTATE (never by message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Connection, serialization, deadlock, resources, shutdown: retry.
    Retry,
    /// A value or a constraint (classes 22, 23): the record alone.
    Data,
    /// Schema, permission, login (42, 28, 3D, 3F): stop the flow.
    Stop,
}

fn class(e: &sqlx::Error) -> Class {
    let Some(code) = e.as_database_error().and_then(|d| d.code()) else {
        return Class::Retry;
    };
    sqlstate(&code)
}

/// The server cannot be reached or is going away (no SQLSTATE: the
/// network, the pool, TLS; class 08 connection exceptions; 57P01–57P03
/// shutdown and start-up; 53300 too many connections): an outage, not
/// the records' fault.
fn unreachable(e: &sqlx::Error) -> bool {
    match e.as_database_error().and_then(|d| d.code()) {
        None => matches!(
            e,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ),
        Some(code) => {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }
    }
}

fn sqlstate(code: &str) -> Class {
    match &code[..code.len().min(2)] {
        "22" | "23" => Class::Data,
        "42" | "28" | "3D" | "3F" | "0A" => Class::Stop,
        _ => Class::Retry,
    }
}

/// An identifier, quoted.
fn quote(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\"\""))
}

/// A text literal, quoted.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_class() {
        for (code, want) in [
            ("08006", Class::Retry),
            ("40001", Class::Retry),
            ("40P01", Class::Retry),
            ("53300", Class::Retry),
            ("57P01", Class::Retry),
            ("22P02", Class::Data),
            ("23505", Class::Data),
            ("23502", Class::Data),
            ("42P01", Class::Stop),
            ("42501", Class::Stop),
            ("28P01", Class::Stop),
        ] {
            assert_eq!(sqlstate(code), want, "{code}");
        }
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
