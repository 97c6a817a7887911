//! The PostgreSQL source, CDC mode: logical replication with `pgoutput`
//! through the SQL interface of a replication slot, over sqlx.
//!
//! Why the SQL interface (`pg_logical_slot_peek_binary_changes` +
//! `pg_replication_slot_advance`) and not the streaming replication
//! protocol: sqlx cannot speak the latter, and no maintained Rust crate
//! (docs/connectors.md) was worth a second client stack; peeking is
//! non-destructive, so the slot is advanced only past transactions whose
//! records are durably enqueued — the stored position (in the queue, with
//! the batch's job) is the authority and a re-peeked transaction is
//! skipped by it.
//!
//! Positions: transactions are decoded in commit order, each identified by
//! its commit record's LSN; the position is `(commit, n)` — the changes of
//! transaction `commit` enqueued so far — with `end` once it is whole (the
//! slot may then move past it). The initial snapshot is read in a
//! REPEATABLE READ transaction taken after the slot exists; a streamed
//! transaction that this snapshot already saw (its xid visible, its commit
//! before the snapshot's WAL position) is skipped, so every change is
//! either in the snapshot or streamed, never both, never neither.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr as _;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use weavster_spec::types::PostgresConnector;

use super::pgoutput::{
    self, Datum, Kind, Message, Old, Relation, lsn_text, parse_lsn, write_key, write_num,
    write_row, write_str,
};
use super::{literal, quote};
use crate::connectors::file::source::json_record;
use crate::connectors::{ConnectorError, Context};
use crate::dead_letter::Stage;
use crate::source::{Limits, Position, Positions, Reject, Source, SourceBatch, SourceError};

/// The stream name of a CDC input.
const STREAM: &str = "cdc";

/// The default slot of a publication.
pub(crate) fn default_slot(publication: &str) -> String {
    let mut s: String = format!("weavster_{publication}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

/// The stored position of a CDC input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pos {
    /// The commit LSN of the transaction the last enqueued change belongs
    /// to (`0/0` before any).
    commit: String,
    /// How many of its changes are enqueued.
    n: u64,
    /// Just past its commit record, once all its changes are enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    /// The initial snapshot, while transactions it saw may still come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Snap>,
    /// The initial snapshot is being read (rows enqueued so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copying: Option<u64>,
}

impl Pos {
    fn start() -> Pos {
        Pos {
            commit: "0/0".into(),
            ..Pos::default()
        }
    }
    fn commit(&self) -> u64 {
        parse_lsn(&self.commit).unwrap_or(0)
    }
}

/// Where a pending change leaves the stream: the position after it, made
/// into a [`Pos`] only for the last change of a batch.
#[derive(Debug, Clone, Copy)]
struct Mark {
    commit: u64,
    n: u64,
    /// Just past the commit record, once the transaction is whole.
    end: Option<u64>,
}

/// What the initial snapshot saw: transactions below `xmax` not in `xip`
/// (`pg_current_snapshot()`), all committed before `lsn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snap {
    xmax: u64,
    xip: Vec<u64>,
    lsn: String,
}

impl Snap {
    /// Whether a transaction committed at `commit` with `xid` (32 bits, as
    /// pgoutput sends it) is in the snapshot.
    fn saw(&self, commit: u64, xid: u32) -> bool {
        if commit >= parse_lsn(&self.lsn).unwrap_or(0) {
            return false;
        }
        // Compare modulo 2^32 (the snapshot's xids are 64-bit).
        let before = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        before(xid, self.xmax as u32) && !self.xip.iter().any(|&x| x as u32 == xid)
    }
}

/// One change, decoded: a record or what could not become one.
enum Item {
    Record(String),
    Reject(Reject),
}

pub(crate) struct CdcSource {
    what: String,
    opts: PgConnectOptions,
    conn: Option<PgConnection>,
    slot: String,
    publication: String,
    snapshot_wanted: bool,
    limits: Limits,
    poll: Duration,
    /// `--once`: the WAL position at start; changes committed before it.
    stop_at: Option<u64>,
    /// Whether a position is stored.
    stored: bool,
    /// The stored position.
    acked: Pos,
    /// The position of the last change handed out (≥ `acked`).
    sent: Pos,
    /// Decoded changes not handed out yet, with the position after each.
    pending: VecDeque<(Item, Mark)>,
    /// The slot may move here once `acked` reaches `pending_safe.1`.
    safe: u64,
    /// The slot's confirmed position as last set by this source.
    confirmed: u64,
    copy: Option<Copy>,
    relations: HashMap<u32, (Relation, Vec<Kind>)>,
    kinds: HashMap<u32, Kind>,
}

/// The initial snapshot being read: its own connection in a REPEATABLE
/// READ transaction, a cursor per table.
struct Copy {
    conn: PgConnection,
    snap: Snap,
    tables: VecDeque<(String, String)>,
    /// The table whose cursor is open.
    open: Option<(String, String)>,
    rows: u64,
}

fn sql_err(what: &str, e: sqlx::Error) -> SourceError {
    SourceError::Remote {
        what: what.to_string(),
        fatal: super::class(&e) == super::Class::Stop,
        message: e.to_string(),
    }
}

fn fatal(what: &str, message: String) -> SourceError {
    SourceError::Remote {
        what: what.to_string(),
        message,
        fatal: true,
    }
}

impl CdcSource {
    pub(crate) async fn start(
        p: &PostgresConnector,
        cx: &Context,
        positions: Positions,
    ) -> Result<CdcSource, ConnectorError> {
        let publication = p
            .publication
            .clone()
            .ok_or_else(|| ConnectorError::Config("`mode: cdc` needs a `publication`".into()))?;
        let slot = p.slot.clone().unwrap_or_else(|| default_slot(&publication));
        let mut opts = PgConnectOptions::from_str(&p.url)
            .map_err(|e| ConnectorError::Config(format!("`url`: {e}")))?;
        if let Some(pw) = &p.password {
            opts = opts.password(pw);
        }
        let stored = match positions.get(STREAM) {
            Some(v) => Some(serde_json::from_value::<Pos>(v.clone()).map_err(|e| {
                ConnectorError::Config(format!("the stored CDC position {v} is not one: {e}"))
            })?),
            None => None,
        };
        let mut s = CdcSource {
            what: format!("postgres slot `{slot}` of flow `{}`", cx.flow),
            opts,
            conn: None,
            slot,
            publication,
            snapshot_wanted: p.snapshot.unwrap_or(true),
            limits: cx.limits,
            poll: Duration::from_millis(p.poll_interval_ms.unwrap_or(1000)),
            stop_at: None,
            stored: stored.is_some(),
            acked: stored.clone().unwrap_or_else(Pos::start),
            sent: stored.clone().unwrap_or_else(Pos::start),
            pending: VecDeque::new(),
            safe: 0,
            confirmed: 0,
            copy: None,
            relations: HashMap::new(),
            kinds: HashMap::new(),
        };
        let config = |e: SourceError| ConnectorError::Config(e.to_string());
        let mut owned = s.session().await.map_err(config)?;
        let conn = &mut owned;
        let exists: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT plugin::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&s.slot)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| ConnectorError::Connect(e.to_string()))?;
        let published: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
                .bind(&s.publication)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| ConnectorError::Connect(e.to_string()))?;
        if !published {
            return Err(ConnectorError::Config(format!(
                "publication `{}` does not exist: CREATE PUBLICATION {} FOR TABLE …",
                s.publication,
                quote(&s.publication)
            )));
        }
        match exists {
            Some((plugin, _)) if plugin != "pgoutput" => {
                return Err(ConnectorError::Config(format!(
                    "replication slot `{}` uses plugin `{plugin}`, not `pgoutput`",
                    s.slot
                )));
            }
            Some((_, confirmed)) => {
                s.confirmed = confirmed.as_deref().and_then(parse_lsn).unwrap_or(0);
            }
            None if stored.as_ref().is_some_and(|p| p.copying.is_none()) => {
                return Err(ConnectorError::Config(format!(
                    "replication slot `{}` is gone but this flow has read from it: the changes since are lost to it. \
                     To start over with a snapshot, delete the flow's stored position in the queue database (`DELETE FROM weavster.offsets WHERE flow = '{}'`)",
                    s.slot, cx.flow
                )));
            }
            None => {
                let lsn: String = sqlx::query_scalar(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                )
                .bind(&s.slot)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| match super::class(&e) {
                    super::Class::Stop => ConnectorError::Config(format!(
                        "cannot create replication slot `{}`: {e} (the role needs REPLICATION and the server wal_level = logical)",
                        s.slot
                    )),
                    _ => ConnectorError::Connect(format!(
                        "cannot create replication slot `{}`: {e} (the server needs wal_level = logical and a free max_replication_slots)",
                        s.slot
                    )),
                })?;
                s.confirmed = parse_lsn(&lsn).unwrap_or(0);
                tracing::info!(slot = %s.slot, lsn = %lsn, "created replication slot");
            }
        }
        if cx.once {
            let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| ConnectorError::Connect(e.to_string()))?;
            s.stop_at = parse_lsn(&lsn);
        }
        s.conn = Some(owned);
        // A snapshot is (re)read when none was finished: at-least-once if
        // a run died during it (docs/connectors.md).
        let copy_needed = match &stored {
            None => s.snapshot_wanted,
            Some(p) => p.copying.is_some(),
        };
        if copy_needed {
            s.copy = Some(s.begin_copy().await.map_err(config)?);
            s.sent.copying = Some(s.sent.copying.unwrap_or(0));
        }
        Ok(s)
    }

    /// The streaming connection (reconnected after an error).
    async fn conn(&mut self) -> Result<&mut PgConnection, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.session().await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| fatal(&self.what, "no connection".into()))
    }

    /// A connection whose output functions write what `pgoutput` expects.
    async fn session(&self) -> Result<PgConnection, SourceError> {
        let mut c = PgConnection::connect_with(&self.opts)
            .await
            .map_err(|e| sql_err(&self.what, e))?;
        sqlx::raw_sql(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET bytea_output = 'hex'; SET extra_float_digits = 1",
        )
        .execute(&mut c)
        .await
        .map_err(|e| sql_err(&self.what, e))?;
        Ok(c)
    }

    /// Opens the snapshot: REPEATABLE READ, after the slot exists.
    async fn begin_copy(&self) -> Result<Copy, SourceError> {
        let mut conn = self.session().await?;
        let w = &self.what;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut conn)
            .await
            .map_err(|e| sql_err(w, e))?;
        // The first statement takes the snapshot; the WAL position is read
        // after it: every transaction it saw committed before.
        let (xmax, xip, lsn): (String, Vec<String>, String) = sqlx::query_as(
            "SELECT pg_snapshot_xmax(s)::text, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x), \
             pg_current_wal_insert_lsn()::text FROM pg_current_snapshot() s",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sql_err(w, e))?;
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
        )
        .bind(&self.publication)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| sql_err(w, e))?;
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|e| fatal(w, format!("xid `{s}`: {e}")))
        };
        let snap = Snap {
            xmax: parse(&xmax)?,
            xip: xip.iter().map(|x| parse(x)).collect::<Result<_, _>>()?,
            lsn,
        };
        tracing::info!(slot = %self.slot, tables = tables.len(), lsn = %snap.lsn, "initial snapshot");
        Ok(Copy {
            conn,
            snap,
            tables: tables.into(),
            open: None,
            rows: 0,
        })
    }

    /// The next batch of the snapshot; `None` once it is read.
    async fn copy_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let w = self.what.clone();
        let n = self.limits.batch_size as i64;
        let Some(copy) = self.copy.as_mut() else {
            return Ok(None);
        };
        loop {
            if copy.open.is_none() {
                let Some((schema, table)) = copy.tables.pop_front() else {
                    break;
                };
                let cols: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                     AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                )
                .bind(&schema)
                .bind(&table)
                .fetch_all(&mut copy.conn)
                .await
                .map_err(|e| sql_err(&w, e))?;
                let row = cols
                    .iter()
                    .map(|(name, _, type_name)| {
                        format!(
                            "{}, {}",
                            literal(name),
                            super::source::json_of(name, type_name)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let declare = format!(
                    "DECLARE weavster_copy NO SCROLL CURSOR FOR SELECT json_build_object({row})::text FROM {}.{} q",
                    quote(&schema),
                    quote(&table)
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(declare))
                    .execute(&mut copy.conn)
                    .await
                    .map_err(|e| sql_err(&w, e))?;
                copy.open = Some((schema, table));
            }
            let rows: Vec<(String,)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("FETCH {n} FROM weavster_copy")))
                    .fetch_all(&mut copy.conn)
                    .await
                    .map_err(|e| sql_err(&w, e))?;
            let Some((schema, table)) = copy.open.clone() else {
                continue;
            };
            if rows.is_empty() {
                sqlx::raw_sql("CLOSE weavster_copy")
                    .execute(&mut copy.conn)
                    .await
                    .map_err(|e| sql_err(&w, e))?;
                copy.open = None;
                continue;
            }
            let mut batch = SourceBatch::default();
            for (row,) in rows {
                match json_record(row.as_bytes()) {
                    Ok(after) => {
                        let mut r = String::with_capacity(after.len() + 96);
                        r.push('{');
                        write_key(&mut r, "op");
                        write_str(&mut r, "snapshot");
                        r.push(',');
                        envelope(&mut r, &schema, &table, &copy.snap.lsn, None, None);
                        r.push_str(",\"before\":null,\"after\":");
                        r.push_str(&after);
                        r.push('}');
                        batch.records.push(r);
                    }
                    Err((stage, message)) => batch.rejects.push(Reject {
                        record: row.into_bytes(),
                        stage,
                        message,
                        at: Some(format!("{w}: snapshot of {schema}.{table}")),
                    }),
                }
            }
            copy.rows += (batch.records.len() + batch.rejects.len()) as u64;
            let mut end = self.sent.clone();
            end.copying = Some(copy.rows);
            end.snapshot = Some(copy.snap.clone());
            batch.position = Some(self.position(&end));
            self.sent = end;
            return Ok(Some(batch));
        }
        // Read whole: an empty batch stores that (the snapshot is not read
        // again), then the stream goes on from the slot.
        let copy = self.copy.take();
        let mut end = self.sent.clone();
        end.copying = None;
        if let Some(c) = copy {
            end.snapshot = Some(c.snap.clone());
            let _ = c.conn.close().await;
        }
        let batch = SourceBatch {
            position: Some(self.position(&end)),
            ..SourceBatch::default()
        };
        self.sent = end;
        Ok(Some(batch))
    }

    /// A batch's position: from `sent` to `end`.
    fn position(&self, end: &Pos) -> Position {
        Position {
            stream: STREAM.into(),
            start: self
                .stored
                .then(|| serde_json::to_value(&self.sent).unwrap_or(Value::Null)),
            end: serde_json::to_value(end).unwrap_or(Value::Null),
        }
    }

    /// Up to a batch of decoded changes.
    fn take_batch(&mut self) -> SourceBatch {
        let mut batch = SourceBatch::default();
        let mut bytes = 0;
        let mut end = None;
        while let Some((item, pos)) = self.pending.pop_front() {
            match item {
                Item::Record(r) => {
                    bytes += r.len();
                    batch.records.push(r);
                }
                Item::Reject(r) => batch.rejects.push(r),
            }
            end = Some(pos);
            if batch.records.len() + batch.rejects.len() >= self.limits.batch_size
                || bytes >= self.limits.max_batch_bytes
            {
                break;
            }
        }
        if let Some(m) = end {
            // The snapshot filter is kept while its transactions may come.
            let snapshot = self
                .sent
                .snapshot
                .clone()
                .filter(|s| m.commit < parse_lsn(&s.lsn).unwrap_or(0));
            let end = Pos {
                commit: lsn_text(m.commit),
                n: m.n,
                end: m.end.map(lsn_text),
                snapshot,
                copying: None,
            };
            batch.position = Some(self.position(&end));
            self.sent = end;
        }
        batch
    }

    /// Moves the slot past what is durably enqueued.
    async fn advance(&mut self) -> Result<(), SourceError> {
        let target = self
            .acked
            .end
            .as_deref()
            .and_then(parse_lsn)
            .unwrap_or(0)
            .max(self.safe);
        if target <= self.confirmed {
            return Ok(());
        }
        let slot = self.slot.clone();
        let w = self.what.clone();
        let conn = self.conn().await?;
        sqlx::query(
            "SELECT pg_replication_slot_advance(slot_name, $2::pg_lsn) FROM pg_replication_slots \
             WHERE slot_name = $1 AND confirmed_flush_lsn < $2::pg_lsn",
        )
        .bind(&slot)
        .bind(lsn_text(target))
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_err(&w, e))?;
        self.confirmed = target;
        Ok(())
    }

    /// Peeks at the changes committed before `upto`; decodes them into
    /// `pending`. Returns how many messages the slot gave.
    async fn peek(&mut self, upto: u64) -> Result<usize, SourceError> {
        let slot = self.slot.clone();
        let publication = quote(&self.publication);
        let n = i32::try_from(self.limits.batch_size.saturating_mul(16)).unwrap_or(i32::MAX);
        let w = self.what.clone();
        let conn = self.conn().await?;
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, $3, \
             'proto_version', '1', 'publication_names', $4::text)",
        )
        .bind(&slot)
        .bind(lsn_text(upto))
        .bind(n)
        .bind(publication)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_err(&w, e))?;
        let count = rows.len();
        self.decode(rows).await?;
        Ok(count)
    }

    async fn decode(&mut self, rows: Vec<(Vec<u8>,)>) -> Result<(), SourceError> {
        struct Txn {
            commit: u64,
            xid: u32,
            /// `commit` and the commit time as the records show them (once
            /// per transaction, not per change).
            lsn: String,
            time: String,
            skip: bool,
            items: Vec<Item>,
        }
        let mut txn: Option<Txn> = None;
        for (data,) in rows {
            let message = pgoutput::decode(&data).map_err(|e| fatal(&self.what, e.to_string()))?;
            match message {
                Message::Begin {
                    final_lsn,
                    commit_time,
                    xid,
                } => {
                    let sent = self.sent.commit();
                    let skip = final_lsn < sent
                        || (final_lsn == sent && self.sent.end.is_some())
                        || self
                            .sent
                            .snapshot
                            .as_ref()
                            .is_some_and(|s| s.saw(final_lsn, xid));
                    txn = Some(Txn {
                        commit: final_lsn,
                        xid,
                        lsn: lsn_text(final_lsn),
                        time: pgoutput::pg_time(commit_time),
                        skip,
                        items: Vec::new(),
                    });
                }
                Message::Relation(rel) => {
                    let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
                    let kinds = self.kinds_of(&oids).await?;
                    self.relations.insert(rel.id, (rel, kinds));
                }
                Message::Commit { end_lsn } => {
                    let Some(t) = txn.take() else {
                        return Err(fatal(&self.what, "a commit without its begin".into()));
                    };
                    self.finish(t.commit, end_lsn, t.items);
                }
                Message::Other => {}
                change => {
                    let Some(t) = txn.as_mut() else {
                        return Err(fatal(&self.what, "a change outside a transaction".into()));
                    };
                    if !t.skip {
                        let items = self.items(&change, &data, &t.lsn, t.xid, &t.time)?;
                        t.items.extend(items);
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a transaction's changes (those not enqueued before), each
    /// with the position after it.
    fn finish(&mut self, commit: u64, end_lsn: u64, items: Vec<Item>) {
        let total = items.len() as u64;
        let done = if commit == self.sent.commit() {
            self.sent.n
        } else {
            0
        };
        let at = |n: u64| Mark {
            commit,
            n,
            end: (n == total).then_some(end_lsn),
        };
        if total <= done {
            // Nothing (more) to enqueue: the slot may move past it once
            // what is before it is.
            match self.pending.back_mut() {
                Some((_, last)) if last.end.is_some() => *last = at(total),
                Some(_) => {}
                None => self.safe = self.safe.max(end_lsn),
            }
            return;
        }
        for (k, item) in items.into_iter().enumerate().skip(done as usize) {
            self.pending.push_back((item, at(k as u64 + 1)));
        }
    }

    /// The records of one change message.
    fn items(
        &self,
        change: &Message,
        raw: &[u8],
        lsn: &str,
        xid: u32,
        time: &str,
    ) -> Result<Vec<Item>, SourceError> {
        let rel_of = |id: u32| {
            self.relations.get(&id).ok_or_else(|| {
                fatal(
                    &self.what,
                    format!("a change of relation {id} before its description"),
                )
            })
        };
        let one = |op: &str,
                   rel: &(Relation, Vec<Kind>),
                   before: Option<(&Vec<Datum>, bool)>,
                   after: Option<&Vec<Datum>>| {
            let (rel, kinds) = rel;
            let mut r = String::with_capacity(256);
            r.push('{');
            write_key(&mut r, "op");
            write_str(&mut r, op);
            r.push(',');
            envelope(&mut r, &rel.schema, &rel.name, lsn, Some(xid), Some(time));
            r.push(',');
            write_key(&mut r, "before");
            let fill = |r: &mut String, t: Option<(&Vec<Datum>, bool)>| match t {
                Some((tuple, keys_only)) => write_row(r, rel, kinds, tuple, keys_only),
                None => {
                    r.push_str("null");
                    Ok(())
                }
            };
            let mut result = fill(&mut r, before);
            r.push(',');
            write_key(&mut r, "after");
            result = result.and_then(|()| fill(&mut r, after.map(|t| (t, false))));
            r.push('}');
            match result {
                Ok(()) => Item::Record(r),
                Err(message) => Item::Reject(Reject {
                    record: raw.to_vec(),
                    stage: Stage::Decode,
                    message: format!("{op} on {}.{}: {message}", rel.schema, rel.name),
                    at: Some(format!("{} at {lsn}", self.what)),
                }),
            }
        };
        Ok(match change {
            Message::Insert { rel, new } => vec![one("insert", rel_of(*rel)?, None, Some(new))],
            Message::Update { rel, old, new } => {
                let r = rel_of(*rel)?;
                // An unchanged TOASTed value: from the full old row if sent.
                let mut new = new.clone();
                if let Some((Old::Full, o)) = old {
                    for (i, d) in new.iter_mut().enumerate() {
                        if matches!(d, Datum::Unchanged)
                            && let Some(v) = o.get(i)
                        {
                            *d = v.clone();
                        }
                    }
                }
                let before = old.as_ref().map(|(k, t)| (t, *k == Old::Key));
                vec![one("update", r, before, Some(&new))]
            }
            Message::Delete { rel, old: (k, t) } => {
                vec![one(
                    "delete",
                    rel_of(*rel)?,
                    Some((t, *k == Old::Key)),
                    None,
                )]
            }
            Message::Truncate { rels } => rels
                .iter()
                .map(|id| Ok(one("truncate", rel_of(*id)?, None, None)))
                .collect::<Result<_, SourceError>>()?,
            _ => Vec::new(),
        })
    }

    /// How each of `oids` becomes JSON (domains and arrays resolved).
    async fn kinds_of(&mut self, oids: &[u32]) -> Result<Vec<Kind>, SourceError> {
        let mut rows: HashMap<u32, (String, String, u32, u32)> = HashMap::new();
        let mut need: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| !self.kinds.contains_key(o))
            .collect();
        let w = self.what.clone();
        for _ in 0..4 {
            need.retain(|o| !rows.contains_key(o) && !self.kinds.contains_key(o));
            need.sort_unstable();
            need.dedup();
            if need.is_empty() {
                break;
            }
            let ask: Vec<i64> = need.iter().map(|&o| i64::from(o)).collect();
            let conn = self.conn().await?;
            let got: Vec<(i64, String, String, i64, i64)> = sqlx::query_as(
                "SELECT oid::int8, typtype::text, typcategory::text, typelem::int8, typbasetype::int8 \
                 FROM pg_type WHERE oid = ANY($1::int8[]::oid[])",
            )
            .bind(ask)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| sql_err(&w, e))?;
            need.clear();
            for (oid, typtype, category, elem, base) in got {
                let (oid, elem, base) = (oid as u32, elem as u32, base as u32);
                if typtype == "d" {
                    need.push(base);
                } else if category == "A" && elem != 0 {
                    need.push(elem);
                }
                rows.insert(oid, (typtype, category, elem, base));
            }
        }
        fn resolve(
            oid: u32,
            rows: &HashMap<u32, (String, String, u32, u32)>,
            known: &HashMap<u32, Kind>,
            depth: u8,
        ) -> Kind {
            if let Some(k) = known.get(&oid) {
                return k.clone();
            }
            match rows.get(&oid) {
                Some((t, _, _, base)) if t == "d" && depth < 8 => {
                    resolve(*base, rows, known, depth + 1)
                }
                Some((_, c, elem, _)) if c == "A" && *elem != 0 && depth < 8 => {
                    Kind::Array(Box::new(resolve(*elem, rows, known, depth + 1)))
                }
                _ => pgoutput::builtin(oid),
            }
        }
        let mut out = Vec::with_capacity(oids.len());
        for &oid in oids {
            let k = resolve(oid, &rows, &self.kinds, 0);
            self.kinds.insert(oid, k.clone());
            out.push(k);
        }
        Ok(out)
    }
}

/// `"schema":…,"table":…,"lsn":…,"xid":…,"commit_time":…` of a record.
fn envelope(
    r: &mut String,
    schema: &str,
    table: &str,
    lsn: &str,
    xid: Option<u32>,
    time: Option<&str>,
) {
    write_key(r, "schema");
    write_str(r, schema);
    r.push(',');
    write_key(r, "table");
    write_str(r, table);
    r.push(',');
    write_key(r, "lsn");
    write_str(r, lsn);
    r.push(',');
    write_key(r, "xid");
    match xid {
        Some(x) => write_num(r, u64::from(x)),
        None => r.push_str("null"),
    }
    r.push(',');
    write_key(r, "commit_time");
    match time {
        Some(t) => write_str(r, t),
        None => r.push_str("null"),
    }
}

impl Source for CdcSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            if self.sent.copying.is_some() {
                if self.copy.is_none() {
                    // (Again, from its start, after an error or a reset.)
                    self.copy = Some(self.begin_copy().await?);
                }
                let b = self.copy_batch().await;
                if b.is_err() {
                    self.copy = None;
                }
                return b;
            }
            loop {
                if !self.pending.is_empty() {
                    return Ok(Some(self.take_batch()));
                }
                let step = async {
                    self.advance().await?;
                    let upto = match self.stop_at {
                        Some(l) => l,
                        None => {
                            let w = self.what.clone();
                            let conn = self.conn().await?;
                            let l: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
                                .fetch_one(&mut *conn)
                                .await
                                .map_err(|e| sql_err(&w, e))?;
                            parse_lsn(&l).unwrap_or(0)
                        }
                    };
                    let before = self.confirmed;
                    let got = self.peek(upto).await?;
                    if got == 0 {
                        // Nothing for us committed before `upto`: the slot
                        // may move there (an idle publication does not
                        // hold the server's WAL).
                        self.safe = self.safe.max(upto);
                    }
                    Ok::<_, SourceError>((got, before))
                };
                let (got, before) = match step.await {
                    Ok(x) => x,
                    Err(e) => {
                        self.conn = None;
                        return Err(e);
                    }
                };
                if !self.pending.is_empty() {
                    continue;
                }
                if got == 0 && self.stop_at.is_some() {
                    let _ = self.advance().await;
                    return Ok(None);
                }
                if got == 0 || self.safe <= before {
                    if let Err(e) = self.advance().await {
                        self.conn = None;
                        return Err(e);
                    }
                    tokio::time::sleep(self.poll).await;
                }
            }
        })
    }

    fn ack(&mut self, batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        if let Some(p) = &batch.position
            && let Ok(pos) = serde_json::from_value::<Pos>(p.end.clone())
        {
            self.acked = pos;
            self.stored = true;
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&mut self, positions: Positions) -> BoxFuture<'_, ()> {
        let stored = positions
            .get(STREAM)
            .and_then(|v| serde_json::from_value::<Pos>(v.clone()).ok());
        self.stored = stored.is_some();
        self.acked = stored.unwrap_or_else(Pos::start);
        self.sent = self.acked.clone();
        if !self.stored && self.snapshot_wanted {
            self.sent.copying = Some(0);
        }
        self.pending.clear();
        self.safe = 0;
        self.copy = None;
        Box::pin(async {})
    }
}

/// What `weavster debug` says of a CDC input: the publication's tables,
/// the server's `wal_level`, and the slot's lag (bytes of WAL the server
/// keeps for it).
pub(crate) async fn check(
    pool: &sqlx::PgPool,
    publication: &str,
    slot: Option<&str>,
) -> Result<String, ConnectorError> {
    let err = |e: sqlx::Error| ConnectorError::Connect(e.to_string());
    let slot = slot.map_or_else(|| default_slot(publication), str::to_string);
    let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(pool)
        .await
        .map_err(err)?;
    if wal_level != "logical" {
        return Err(ConnectorError::Config(format!(
            "the server's wal_level is `{wal_level}`: CDC needs `wal_level = logical` (postgresql.conf, then restart)"
        )));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(publication)
            .fetch_one(pool)
            .await
            .map_err(err)?;
    if !exists {
        return Err(ConnectorError::Config(format!(
            "publication `{publication}` does not exist: CREATE PUBLICATION {} FOR TABLE …",
            quote(publication)
        )));
    }
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_publication_tables WHERE pubname = $1")
            .bind(publication)
            .fetch_one(pool)
            .await
            .map_err(err)?;
    let lag: Option<(Option<i64>, bool)> = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, active \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_optional(pool)
    .await
    .map_err(err)?;
    let slot_says = match lag {
        None => format!("slot `{slot}` not created yet (`run` creates it)"),
        Some((lag, active)) => format!(
            "slot `{slot}` {} bytes behind{}",
            lag.unwrap_or(0),
            if active { ", in use" } else { "" }
        ),
    };
    Ok(format!(
        "publication {publication}: {tables} table(s); {slot_says}"
    ))
}
