//! `pg-write-paths URL [ROWS]`: the ways of writing a batch of JSON records
//! into a PostgreSQL table, measured in one run on the same rows (batches
//! of 1000, a transaction each, as the sink commits): the sink's statement
//! (`INSERT … SELECT` casting each field of `jsonb_array_elements($1)`,
//! which keeps column defaults for missing fields and PostgreSQL's own
//! input functions), `jsonb_to_recordset`, `UNNEST` of typed arrays, and
//! `COPY FROM STDIN`. Prints rows/s and the ratio to the sink's statement;
//! asserts nothing but that every row arrived.

use std::time::Instant;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

const BATCH: usize = 1000;
const COLUMNS: &str =
    "id int, customer_id text, amount numeric, qty int, status text, note text, total numeric";

struct Row {
    id: i32,
    customer: String,
    amount: String,
    qty: i32,
    status: &'static str,
    note: &'static str,
    total: String,
}

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let amount = (i % 100) as f64 + 0.5;
            let qty = (i % 7 + 1) as i32;
            Row {
                id: i as i32,
                customer: format!("C{}", i % 1000),
                amount: format!("{amount}"),
                qty,
                status: "new",
                note: "lorem ipsum dolor sit amet, consectetur adipiscing",
                total: format!("{:.2}", amount * f64::from(qty)),
            }
        })
        .collect()
}

fn json(batch: &[Row]) -> String {
    let items: Vec<String> = batch
        .iter()
        .map(|r| {
            format!(
                "{{\"id\":{},\"customer_id\":\"{}\",\"amount\":{},\"qty\":{},\"status\":\"{}\",\"note\":\"{}\",\"total\":{}}}",
                r.id, r.customer, r.amount, r.qty, r.status, r.note, r.total
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The sink's statement shape: each column cast from its field, a missing
/// field taking the default, in record order.
fn sink_statement(table: &str) -> String {
    let cols = [
        ("id", "int"),
        ("customer_id", "text"),
        ("amount", "numeric"),
        ("qty", "int"),
        ("status", "text"),
        ("note", "text"),
        ("total", "numeric"),
    ];
    let values: Vec<String> = cols
        .iter()
        .map(|(c, t)| {
            format!(
                "CASE WHEN x->'{c}' IS NULL THEN NULL WHEN jsonb_typeof(x->'{c}') = 'null' THEN NULL ELSE (x->>'{c}')::{t} END"
            )
        })
        .collect();
    let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS r(x, n) ORDER BY r.n",
        names.join(", "),
        values.join(", ")
    )
}

async fn write(
    conn: &mut PgConnection,
    how: &str,
    table: &str,
    batch: &[Row],
) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    match how {
        "sink" => {
            sqlx::query(sqlx::AssertSqlSafe(sink_statement(table)))
                .bind(json(batch))
                .execute(&mut *tx)
                .await?;
        }
        "recordset" => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} SELECT * FROM jsonb_to_recordset($1::jsonb) AS r({COLUMNS})"
            )))
            .bind(json(batch))
            .execute(&mut *tx)
            .await?;
        }
        "unnest" => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} SELECT * FROM UNNEST($1::int[], $2::text[], $3::text[]::numeric[], $4::int[], $5::text[], $6::text[], $7::text[]::numeric[])"
            )))
            .bind(batch.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(batch.iter().map(|r| r.customer.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|r| r.amount.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|r| r.qty).collect::<Vec<_>>())
            .bind(batch.iter().map(|r| r.status.to_string()).collect::<Vec<_>>())
            .bind(batch.iter().map(|r| r.note.to_string()).collect::<Vec<_>>())
            .bind(batch.iter().map(|r| r.total.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        "copy" => {
            let mut text = String::new();
            for r in batch {
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    r.id, r.customer, r.amount, r.qty, r.status, r.note, r.total
                ));
            }
            let mut copy = tx.copy_in_raw(&format!("COPY {table} FROM STDIN")).await?;
            copy.send(text.into_bytes()).await?;
            copy.finish().await?;
        }
        other => anyhow::bail!("unknown write path {other}"),
    }
    tx.commit().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().context("usage: pg-write-paths URL [ROWS]")?;
    let n: usize = args.next().map_or(Ok(200_000), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = PgConnection::connect(&url).await?;
        let data = rows(n);
        let mut results = Vec::new();
        for how in ["sink", "recordset", "unnest", "copy"] {
            let table = format!("write_path_{how}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({COLUMNS})"
            )))
            .execute(&mut conn)
            .await?;
            let started = Instant::now();
            for batch in data.chunks(BATCH) {
                write(&mut conn, how, &table, batch).await?;
            }
            let secs = started.elapsed().as_secs_f64();
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut conn)
                .await?;
            anyhow::ensure!(count as usize == n, "{how}: {count} rows of {n}");
            results.push((how, secs));
        }
        let base = results[0].1;
        println!("PostgreSQL write paths, {n} rows in batches of {BATCH} (a transaction each), one connection:");
        for (how, secs) in results {
            let what = match how {
                "sink" => "INSERT … SELECT casts FROM jsonb_array_elements (the sink's)",
                "recordset" => "INSERT … SELECT * FROM jsonb_to_recordset",
                "unnest" => "INSERT … SELECT * FROM UNNEST(typed arrays)",
                _ => "COPY FROM STDIN (text)",
            };
            println!("  {what:<62} {secs:6.2} s {:9.0} rows/s  ({:.2}x the sink's)", n as f64 / secs, base / secs);
        }
        Ok(())
    })
}
