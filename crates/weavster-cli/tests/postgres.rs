//! PostgreSQL output, end to end: a target PostgreSQL server started by the
//! test (Debian's binaries, through weavster-queue-server: initdb as a non-root user),
//! the real binary with its own embedded queue. Rows are counted in the
//! target: every record written once, bad rows (only them) dead-lettered
//! with PostgreSQL's message.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{command, dead_letters, project, weavster};

/// A PostgreSQL server for the test, in a temp dir.
struct Target {
    rt: tokio::runtime::Runtime,
    pg: Option<weavster_queue_server::Embedded>,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start() -> Target {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pg = rt
            .block_on(weavster_queue_server::Embedded::start(
                &weavster_queue_server::Options::new(dir.path().join("pg")),
            ))
            .expect("target PostgreSQL");
        Target {
            rt,
            pg: Some(pg),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.pg.as_ref().expect("running").url()
    }

    /// Stops the server, waits `down`, starts it again (same port).
    fn restart(&mut self, down: Duration) {
        if let Some(pg) = self.pg.take() {
            self.rt.block_on(pg.stop()).expect("stop");
        }
        std::thread::sleep(down);
        let pg = self
            .rt
            .block_on(weavster_queue_server::Embedded::start(
                &weavster_queue_server::Options::new(self._dir.path().join("pg")),
            ))
            .expect("restart");
        self.pg = Some(pg);
    }

    /// Runs `sql` with psql; returns its unaligned output.
    fn sql(&self, sql: &str) -> String {
        let out = common::psql_at(&self.url(), sql);
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            let _ = self.rt.block_on(pg.stop());
        }
    }
}

const PROJECT: &str = "name: pg_test\nprofile: default\n";
const PROFILES: &str =
    "default:\n  target: dev\n  outputs:\n    dev:\n      runtime:\n        queue: embedded\n";

fn pg_project(url: &str, output: &str, input: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
    let connectors = format!(
        "in:\n  type: file\n  path: in.jsonl\nout:\n  type: postgres\n  url: \"{url}\"\n{output}"
    );
    project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("in.jsonl", input),
        ("flows/load.yaml", "input: c.in\noutputs:\n  - to: c.out\n"),
    ])
}

fn check_exit(dir: &Path, args: &[&str], env: &[(String, String)], want: i32) -> common::Out {
    let out = weavster(dir, args, env);
    assert_eq!(
        out.code, want,
        "weavster {args:?}:\n{}\n{}",
        out.stdout, out.stderr
    );
    out
}

/// 1000 records of every supported type, one with a bad value and one
/// breaking a NOT NULL constraint: 998 rows written with their types, the
/// two dead-lettered with PostgreSQL's message; a missing field takes the
/// column's default; an unknown field is refused.
#[test]
fn typed_rows_and_only_bad_rows_dead_lettered() {
    let t = Target::start();
    t.sql(
        "CREATE TABLE orders (
            id int PRIMARY KEY, name text NOT NULL, amount numeric(12,2), tags text[],
            meta jsonb, at timestamptz, day date, uid uuid, blob bytea, ok bool, ratio float8,
            created timestamptz NOT NULL DEFAULT now(), seq bigint GENERATED ALWAYS AS IDENTITY)",
    );
    let mut input = String::new();
    for i in 0..1000 {
        let amount = if i == 17 {
            "\"abc\"".to_string()
        } else {
            format!("{i}.25")
        };
        let name = if i == 400 {
            "null".to_string()
        } else {
            format!("\"n{i}\"")
        };
        input.push_str(&format!(
            "{{\"id\":{i},\"name\":{name},\"amount\":{amount},\"tags\":[\"a\",\"b{i}\"],\"meta\":{{\"k\":[1,{i}]}},\
             \"at\":\"2026-05-01T10:00:00Z\",\"day\":\"2026-05-01\",\"uid\":\"6f1c1f44-3a5e-4b1e-9a59-3d0c1f3b{i:04}\",\
             \"blob\":\"aGVsbG8=\",\"ok\":true,\"ratio\":0.5}}\n"
        ));
    }
    input.push_str("{\"id\":5000,\"name\":\"x\",\"surprise\":1}\n");
    let (tmp, env) = pg_project(&t.url(), "  table: orders\n", &input);
    let dir = tmp.path();
    check_exit(dir, &["debug"], &env, 0);
    check_exit(dir, &["run", "--once"], &env, 1);
    assert_eq!(t.sql("SELECT count(*) FROM orders"), "998");
    let dead = dead_letters(dir, &env);
    assert_eq!(dead.len(), 3, "{dead:#?}");
    let messages: Vec<String> = dead
        .iter()
        .map(|d| format!("{} {}", d["stage"], d["message"]))
        .collect();
    let all = messages.join("\n");
    assert!(all.contains("22P02"), "bad numeric: {all}");
    assert!(
        all.contains("23502") && all.contains("name"),
        "not null: {all}"
    );
    assert!(all.contains("surprise"), "unknown field: {all}");
    assert!(dead.iter().all(|d| d["stage"] == "output"), "{all}");
    assert_eq!(
        t.sql(
            "SELECT name, amount, tags[2], meta->'k'->>1, at AT TIME ZONE 'UTC', day, \
             convert_from(blob, 'UTF8'), ok, ratio, created IS NOT NULL, seq IS NOT NULL FROM orders WHERE id = 42"
        ),
        "n42|42.25|b42|42|2026-05-01 10:00:00|2026-05-01|hello|t|0.5|t|t"
    );
}

/// Upserts collapse duplicate keys of a batch (last wins) and update
/// existing rows; a column that does not exist stops the run before
/// anything is read.
#[test]
fn upserts_and_configuration_errors() {
    let t = Target::start();
    t.sql("CREATE TABLE kv (k text PRIMARY KEY, v int NOT NULL, note text DEFAULT 'none')");
    t.sql("INSERT INTO kv VALUES ('a', 0, 'old')");
    let input = "{\"k\":\"a\",\"v\":1}\n{\"k\":\"b\",\"v\":2}\n{\"k\":\"a\",\"v\":3}\n{\"k\":\"b\",\"v\":4,\"note\":\"x\"}\n";
    let (tmp, env) = pg_project(&t.url(), "  table: kv\n  upsert_keys: [k]\n", input);
    check_exit(tmp.path(), &["run", "--once"], &env, 0);
    assert_eq!(
        t.sql("SELECT k, v, note FROM kv ORDER BY k"),
        "a|3|none\nb|4|x"
    );
    // A mapped column that is not there: a clear error at start.
    let (tmp, env) = pg_project(
        &t.url(),
        "  table: kv\n  columns:\n    k: key\n    missing: v\n",
        input,
    );
    let out = weavster(tmp.path(), &["run", "--once"], &env);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no column `missing`"), "{}", out.stderr);
    assert!(dead_letters(tmp.path(), &env).is_empty());
    // A table that is not there: the same, and `debug` says so.
    let (tmp, env) = pg_project(&t.url(), "  table: nowhere\n", input);
    let out = weavster(tmp.path(), &["run", "--once"], &env);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("nowhere"), "{}", out.stderr);
    let out = weavster(tmp.path(), &["debug"], &env);
    assert!(out.stdout.contains("nowhere"), "{}", out.stdout);
}

/// Issue "Trust II", items 5 and 7: two versions of a key in one batch,
/// the later refused by a CHECK constraint — the earlier is written and
/// only the refused one is dead-lettered (the table had no row at all);
/// three versions, the last two refused: the first is written, both
/// refused ones dead-lettered. A 401-digit number and `1e400` into
/// `numeric` and `jsonb` columns (and as an upsert key) arrive with every
/// digit: a sink never reads a record through an `f64`.
#[test]
fn refused_upserts_fall_back_and_numbers_keep_every_digit() {
    let t = Target::start();
    t.sql("CREATE TABLE kv (k numeric PRIMARY KEY, v int NOT NULL CHECK (v < 100), doc jsonb)");
    let huge = format!("1{}", "0".repeat(400));
    let input = format!(
        "{{\"k\":5000,\"v\":1}}\n{{\"k\":5000,\"v\":500}}\n\
         {{\"k\":7,\"v\":2}}\n{{\"k\":7,\"v\":200}}\n{{\"k\":7,\"v\":300}}\n\
         {{\"k\":{huge},\"v\":3,\"doc\":{{\"n\":{huge},\"e\":1e400}}}}\n"
    );
    let (tmp, env) = pg_project(&t.url(), "  table: kv\n  upsert_keys: [k]\n", &input);
    let dir = tmp.path();
    check_exit(dir, &["run", "--once"], &env, 1);
    assert_eq!(
        t.sql("SELECT k, v FROM kv WHERE k < 10000 ORDER BY k"),
        "7|2\n5000|1"
    );
    assert_eq!(t.sql(&format!("SELECT v FROM kv WHERE k = {huge}")), "3");
    assert_eq!(
        t.sql(&format!(
            "SELECT doc->>'n' = '{huge}', (doc->>'e')::numeric = {huge} FROM kv WHERE k = {huge}"
        )),
        "t|t"
    );
    let dead = dead_letters(dir, &env);
    let mut refused: Vec<String> = dead
        .iter()
        .map(|d| String::from_utf8_lossy(&common::dead_record(d)).to_string())
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            "{\"k\":5000,\"v\":500}",
            "{\"k\":7,\"v\":200}",
            "{\"k\":7,\"v\":300}"
        ],
        "{dead:#?}"
    );
    assert!(
        dead.iter()
            .all(|d| d["message"].as_str().is_some_and(|m| m.contains("23514")))
    );
}

/// A table `events` without keys, a compiled project writing `n` records
/// into it.
fn events_project(t: &Target, n: usize) -> (tempfile::TempDir, Vec<(String, String)>) {
    t.sql("CREATE TABLE events (id int NOT NULL, body text)");
    let input: String = (0..n)
        .map(|i| format!("{{\"id\":{i},\"body\":\"lorem ipsum {i}\"}}\n"))
        .collect();
    let (tmp, env) = pg_project(&t.url(), "  table: events\n", &input);
    check_exit(tmp.path(), &["compile"], &env, 0);
    (tmp, env)
}

/// `kill -9` of `weavster run` while it writes 200k records into a table
/// without keys, again and again, then a run to the end: every record is in
/// the table exactly once (the batch marker in the target database makes a
/// retried batch skip what it wrote).
#[test]
fn kill_nine_writes_every_row_exactly_once() {
    const N: usize = 200_000;
    let t = Target::start();
    let (tmp, env) = events_project(&t, N);
    let dir = tmp.path();
    let mut seen = 0;
    for k in 0..4 {
        let mut child = command(dir, &["run"], &env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Kill once some more rows are in.
        let started = Instant::now();
        loop {
            let n: usize = t.sql("SELECT count(*) FROM events").parse().expect("count");
            if n > seen + 15_000 || started.elapsed() > Duration::from_secs(90) {
                seen = n;
                break;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        assert!(seen < N, "kill {k} came too late to test anything");
    }
    check_exit(dir, &["run", "--once"], &env, 0);
    assert_eq!(
        t.sql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events"),
        format!("{N}|{N}|0|{}", N - 1)
    );
}

fn query_project(url: &str, source: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
    let connectors = format!(
        "src:\n  type: postgres\n  url: \"{url}\"\n{source}out:\n  type: file\n  path: out.jsonl\n"
    );
    project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("flows/copy.yaml", "input: c.src\noutputs:\n  - to: c.out\n"),
    ])
}

/// Query mode: 100k rows by keyset on `[updated_at, id]` (many rows share a
/// timestamp, across batch boundaries), their types as JSON; rows added
/// later are read by the next run and nothing is read twice.
#[test]
fn query_mode_reads_every_row_once_by_keyset() {
    let t = Target::start();
    t.sql(
        "CREATE TABLE items (id int PRIMARY KEY, updated_at timestamptz NOT NULL, price numeric(12,3),
            tags text[], blob bytea, meta json, note text)",
    );
    // 100k rows, 10 per millisecond of a past day.
    t.sql(
        "INSERT INTO items SELECT i, timestamptz '2026-01-01 00:00:00+00' + (i / 10) * interval '1 millisecond',
            i + 0.125, ARRAY['t', i::text], '\\x68656c6c6f', '{\"k\":\n 1}', 'line\nbreak'
         FROM generate_series(0, 99999) i",
    );
    let (tmp, env) = query_project(
        &t.url(),
        "  query: SELECT id, updated_at, price, tags, blob, meta, note FROM items\n  cursor: [updated_at, id]\n",
    );
    let dir = tmp.path();
    check_exit(dir, &["run", "--once"], &env, 0);
    let got = common::records(&dir.join("out.jsonl"));
    assert_eq!(got.len(), 100_000);
    let ids: std::collections::BTreeSet<i64> =
        got.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    assert_eq!(ids.len(), 100_000);
    let r = &got[42];
    assert_eq!(r["id"], 42);
    assert_eq!(r["updated_at"], "2026-01-01T00:00:00.004000Z");
    assert_eq!(r["price"].to_string(), "42.125");
    assert_eq!(r["tags"], serde_json::json!(["t", "42"]));
    assert_eq!(r["blob"], "aGVsbG8=");
    assert_eq!(r["meta"]["k"], 1);
    assert_eq!(r["note"], "line\nbreak");
    // Rows sharing the last timestamp, and later ones: read once, by the next run.
    t.sql(
        "INSERT INTO items (id, updated_at) VALUES
            (100000, timestamptz '2026-01-01 00:00:09.999+00'),
            (100001, timestamptz '2026-01-02 00:00:00+00')",
    );
    check_exit(dir, &["run", "--once"], &env, 0);
    let got = common::records(&dir.join("out.jsonl"));
    assert_eq!(got.len(), 100_002);
    let ids: std::collections::BTreeSet<i64> =
        got.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    assert_eq!(ids.len(), 100_002);
}

/// Two transactions committing out of order: the one that started first
/// (earlier timestamp) commits 2 s after the other. With the delay window
/// both are read by a continuous run.
#[test]
fn query_mode_reads_rows_committed_out_of_order() {
    let t = Target::start();
    t.sql(
        "CREATE TABLE ev (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let (tmp, env) = query_project(
        &t.url(),
        "  query: SELECT id, at FROM ev\n  cursor: [at, id]\n  delay_ms: 4000\n  poll_interval_ms: 200\n",
    );
    let dir = tmp.path();
    check_exit(dir, &["compile"], &env, 0);
    let mut run = command(dir, &["run"], &env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // The run is polling once row 0 is out.
    t.sql("INSERT INTO ev (id) VALUES (0)");
    let out = dir.join("out.jsonl");
    let started = Instant::now();
    while common::records(&out).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run reads nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The slow transaction: its row's timestamp is taken now, it commits
    // after 2 s; the fast one commits at once with a later timestamp.
    let psql = common::psql();
    let mut slow = Command::new(psql)
        .arg(t.url())
        .args([
            "-c",
            "BEGIN; INSERT INTO ev (id) VALUES (1); SELECT pg_sleep(2); COMMIT;",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("slow transaction");
    std::thread::sleep(Duration::from_millis(300));
    t.sql("INSERT INTO ev (id) VALUES (2)");
    let _ = slow.wait();
    let started = Instant::now();
    while common::records(&out).len() < 3 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let status = common::wait_bounded(&mut run, Duration::from_secs(60), "run");
    assert!(status.success());
    let mut ids: Vec<i64> = common::records(&out)
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);
}

/// The target server stops for a while mid-run, then comes back: the
/// batches that failed are retried, every row is written once.
#[test]
fn a_restarted_target_loses_nothing() {
    const N: usize = 100_000;
    let mut t = Target::start();
    let (tmp, env) = events_project(&t, N);
    let dir = tmp.path();
    let log = dir.join("run.log");
    let mut child = common::spawn_logged(dir, &["run", "--once"], &env, &log);
    let started = Instant::now();
    while t
        .sql("SELECT count(*) FROM events")
        .parse::<usize>()
        .expect("count")
        < 10_000
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "nothing written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.restart(Duration::from_secs(3));
    let status = common::wait_bounded(&mut child, Duration::from_secs(240), "run");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{text}");
    assert!(text.contains("retrying"), "no batch was retried:\n{text}");
    assert_eq!(
        t.sql("SELECT count(*), count(DISTINCT id) FROM events"),
        format!("{N}|{N}")
    );
}

/// A target server with `wal_level = logical` (CDC).
fn logical_target() -> Target {
    let mut t = Target::start();
    t.sql("ALTER SYSTEM SET wal_level = logical");
    t.restart(Duration::ZERO);
    assert_eq!(t.sql("SHOW wal_level"), "logical");
    t
}

/// Applies CDC records (in commit order) to a table image `id → row`;
/// checks that each row's `v` grows by one per update.
fn replay(records: &[serde_json::Value]) -> std::collections::BTreeMap<i64, serde_json::Value> {
    let mut rows = std::collections::BTreeMap::new();
    for r in records {
        let table = r["table"].as_str().expect("table");
        if table != "acct" {
            continue;
        }
        match r["op"].as_str().expect("op") {
            "snapshot" | "insert" => {
                let id = r["after"]["id"].as_i64().expect("id");
                assert!(
                    rows.insert(id, r["after"].clone()).is_none(),
                    "{id} twice: {r}"
                );
            }
            "update" => {
                let id = r["after"]["id"].as_i64().expect("id");
                let old = rows
                    .insert(id, r["after"].clone())
                    .expect("updated row exists");
                assert_eq!(
                    old["v"].as_i64().map(|v| v + 1),
                    r["after"]["v"].as_i64(),
                    "{r}"
                );
                // REPLICA IDENTITY FULL: the whole old row.
                assert_eq!(r["before"], old, "{r}");
            }
            "delete" => {
                let id = r["before"]["id"].as_i64().expect("id");
                assert!(rows.remove(&id).is_some(), "deleted row {id} unknown: {r}");
            }
            op => panic!("op {op}: {r}"),
        }
    }
    rows
}

/// CDC: 1000 rows read as a snapshot while 40 transactions insert, update
/// and delete (and write an unpublished table), `kill -9` twice mid-stream,
/// then a run to the end: replaying the records in commit order gives the
/// table exactly, every change was enqueued once, snapshot and stream give
/// a row the same JSON, a key-only table's delete carries its key, and the
/// slot moves past WAL written while the publication is idle.
#[test]
fn cdc_snapshot_and_changes_exactly_once_across_kill_nine() {
    let t = logical_target();
    let typed = "tags int[], at timestamptz, day date, uid uuid, blob bytea, meta jsonb, \
                 amount numeric, ratio float8, ok bool, note text";
    t.sql(&format!(
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, {typed});
         ALTER TABLE acct REPLICA IDENTITY FULL;
         CREATE TABLE kv (k text PRIMARY KEY, n int);
         CREATE TABLE other (id int);
         CREATE PUBLICATION pub FOR TABLE acct, kv;"
    ));
    let values = "'{1,NULL,3}', '2026-05-01 10:00:00.5+02', '2026-05-01', \
                  '6f1c1f44-3a5e-4b1e-9a59-3d0c1f3b0001', decode(repeat('68656c6c6f', 30), 'hex'), \
                  '{\"a\": [1, 2.50]}', 12345678901234567890.000000000001, 0.1, true, E'line\\nbreak'";
    t.sql(&format!(
        "INSERT INTO acct SELECT i, 0 FROM generate_series(0, 998) i;
         INSERT INTO acct VALUES (999, 0, {values});"
    ));
    let connectors = format!(
        "src:\n  type: postgres\n  url: \"{}\"\n  mode: cdc\n  publication: pub\n  poll_interval_ms: 100\n\
         out:\n  type: file\n  path: out.jsonl\n",
        t.url()
    );
    let (tmp, env) = project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("flows/copy.yaml", "input: c.src\noutputs:\n  - to: c.out\n"),
    ]);
    let dir = tmp.path();
    let queue = common::Queue::hold(dir);
    check_exit(dir, &["compile"], &env, 0);
    let out = dir.join("out.jsonl");
    let url = t.url();
    // 40 transactions, each updating, inserting and deleting disjoint rows.
    let writer = std::thread::spawn(move || {
        let mut changes = 0usize;
        for k in 0..40 {
            let sql = format!(
                "WITH u AS (UPDATE acct SET v = v + 1 WHERE id < 500 AND id % 40 = {k} RETURNING 1),
                      i AS (INSERT INTO acct (id, v) SELECT 10000 + {k} * 25 + g, 0 FROM generate_series(0, 24) g RETURNING 1),
                      d AS (DELETE FROM acct WHERE id BETWEEN 500 + {k} * 5 AND 504 + {k} * 5 RETURNING 1),
                      o AS (INSERT INTO other SELECT g FROM generate_series(1, 50) g RETURNING 1)
                 SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM i) + (SELECT count(*) FROM d)"
            );
            let o = common::psql_at(&url, &sql);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            changes += String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<usize>()
                .expect("count");
            std::thread::sleep(Duration::from_millis(60));
        }
        changes
    });
    let mut seen = 0;
    for k in 0..2 {
        let log = dir.join(format!("run-{k}.log"));
        let mut env = env.clone();
        env.push(("WEAVSTER_LOG".into(), "warn,weavster_runtime=info".into()));
        let mut child = common::spawn_logged(dir, &["run"], &env, &log);
        let started = Instant::now();
        loop {
            let have = std::fs::read_to_string(&out).map_or(0, |s| s.lines().count());
            // The first kill once the snapshot is read (a kill during it
            // reads it again: not exactly-once, see docs/guarantees.md).
            let snapshot_read = k > 0
                || queue.sql("SELECT count(*) FROM weavster.offsets WHERE flow = 'copy' AND position->'copying' IS NULL").as_deref() == Some("1");
            if (snapshot_read && have > seen + 100) || started.elapsed() > Duration::from_secs(60) {
                assert!(
                    have > seen,
                    "run {k} delivered nothing:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                seen = have;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    let changes = writer.join().expect("writer");
    t.sql("BEGIN; INSERT INTO kv VALUES ('a', 1); UPDATE kv SET n = 2; COMMIT; DELETE FROM kv");
    t.sql(&format!("INSERT INTO acct VALUES (99999, 0, {values})"));
    let changes = changes + 1;
    check_exit(dir, &["run", "--once"], &env, 0);
    // Every change enqueued once (the jobs' records; the file output is
    // at-least-once across a kill and holds the same records).
    let jobs: Vec<String> = queue
        .jobs_records("copy")
        .iter()
        .flat_map(|j| j.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let delivered: std::collections::BTreeSet<String> = std::fs::read_to_string(&out)
        .expect("out")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        seen < delivered.len(),
        "the kills came too late to test anything"
    );
    assert_eq!(
        delivered,
        jobs.iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        "delivered records are the enqueued ones"
    );
    let mut got: Vec<serde_json::Value> = jobs
        .iter()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    // Commit order (a stable sort keeps a transaction's order).
    let lsn = |r: &serde_json::Value| {
        let s = r["lsn"].as_str().expect("lsn");
        let (hi, lo) = s.split_once('/').expect("lsn");
        (u64::from_str_radix(hi, 16).expect("hex") << 32)
            | u64::from_str_radix(lo, 16).expect("hex")
    };
    got.sort_by_key(|r| (r["op"] != "snapshot", lsn(r)));
    let image = replay(&got);
    let table = t.sql("SELECT id, v FROM acct ORDER BY id");
    let replayed: Vec<String> = image
        .iter()
        .map(|(id, row)| format!("{id}|{}", row["v"]))
        .collect();
    assert_eq!(
        replayed.join("\n"),
        table,
        "replayed image differs from the table"
    );
    // Replaying caught any loss or repeat (an update must find its row one
    // version behind); no record is in two jobs either.
    let distinct: std::collections::BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(distinct.len(), jobs.len(), "a record enqueued twice");
    let streamed = got
        .iter()
        .filter(|r| r["table"] == "acct" && r["op"] != "snapshot")
        .count();
    assert!(
        streamed > 0 && streamed <= changes,
        "{streamed} of {changes} changes streamed"
    );
    // The same row by snapshot and by stream.
    let by_id = |id: i64| {
        got.iter()
            .find(|r| r["after"]["id"] == id)
            .map(|r| {
                let mut a = r["after"].clone();
                a["id"] = 0.into();
                a
            })
            .expect("row")
    };
    let (snap, streamed) = (by_id(999), by_id(99999));
    assert_eq!(snap, streamed);
    assert_eq!(snap["at"], "2026-05-01T08:00:00.500000Z");
    assert_eq!(snap["tags"], serde_json::json!([1, null, 3]));
    let exact = "\"amount\":12345678901234567890.000000000001,";
    let exact = delivered
        .iter()
        .filter(|l| l.replace(" : ", ":").contains(exact))
        .count();
    assert_eq!(exact, 2, "numeric digits kept");
    assert!(
        snap["blob"].as_str().expect("base64").len() > 76,
        "one line of base64"
    );
    // A key-only table: before of a delete is the key.
    let kv: Vec<&serde_json::Value> = got.iter().filter(|r| r["table"] == "kv").collect();
    let ops: Vec<&str> = kv.iter().map(|r| r["op"].as_str().expect("op")).collect();
    assert_eq!(ops, ["insert", "update", "delete"]);
    assert_eq!(kv[2]["before"], serde_json::json!({"k": "a"}));
    assert!(kv[0]["xid"] == kv[1]["xid"] && kv[1]["lsn"] == kv[0]["lsn"]);
    // An idle publication: WAL of other tables, then a run moves the slot.
    let jobs_before = queue.jobs_records("copy").len();
    t.sql("INSERT INTO other SELECT g FROM generate_series(1, 100000) g");
    let written = t.sql("SELECT pg_current_wal_lsn()");
    let out = weavster(dir, &["debug"], &env);
    assert!(
        out.stdout.contains("slot `weavster_pub`") && out.stdout.contains("bytes behind"),
        "{}",
        out.stdout
    );
    check_exit(dir, &["run", "--once"], &env, 0);
    assert_eq!(
        t.sql(&format!(
            "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name = 'weavster_pub'"
        )),
        "t",
        "the slot did not move past an idle publication's WAL"
    );
    assert_eq!(queue.jobs_records("copy").len(), jobs_before, "nothing new");
}

/// CDC configuration errors are clear and stop the run before anything is
/// read: a publication that does not exist, a server without
/// `wal_level = logical` (`debug` says so too).
#[test]
fn cdc_configuration_errors_are_clear() {
    let t = Target::start();
    t.sql("CREATE TABLE a (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE a");
    let project_for = |publication: &str| {
        let connectors = format!(
            "src:\n  type: postgres\n  url: \"{}\"\n  mode: cdc\n  publication: {publication}\n\
             out:\n  type: file\n  path: out.jsonl\n",
            t.url()
        );
        project(&[
            ("weavster.yaml", PROJECT),
            ("profiles.yaml", PROFILES),
            ("connectors/c.yaml", &connectors),
            ("flows/copy.yaml", "input: c.src\noutputs:\n  - to: c.out\n"),
        ])
    };
    let (tmp, env) = project_for("nope");
    let out = weavster(tmp.path(), &["run", "--once"], &env);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("publication `nope` does not exist"),
        "{}",
        out.stderr
    );
    let (tmp, env) = project_for("p");
    let out = weavster(tmp.path(), &["debug"], &env);
    assert!(out.stdout.contains("wal_level = logical"), "{}", out.stdout);
    let out = weavster(tmp.path(), &["run", "--once"], &env);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("wal_level"), "{}", out.stderr);
}

/// TLS to the database: `sslmode=verify-full` with the server's CA writes
/// the rows; a CA that did not sign the server's certificate is refused
/// before anything is read.
#[test]
fn tls_verifies_the_server() {
    let mut t = Target::start();
    let certs = tempfile::tempdir().expect("certs");
    let ca = common::certificates(certs.path(), "server");
    let other_ca = common::certificates(certs.path(), "other");
    t.sql("ALTER SYSTEM SET ssl = on");
    for (key, file) in [
        ("ssl_cert_file", "server.crt"),
        ("ssl_key_file", "server.key"),
    ] {
        t.sql(&format!(
            "ALTER SYSTEM SET {key} = '{}'",
            certs.path().join(file).display()
        ));
    }
    t.restart(Duration::ZERO);
    assert_eq!(t.sql("SHOW ssl"), "on");
    t.sql("CREATE TABLE s (id int PRIMARY KEY)");
    // Over TCP (the test URL names a socket directory).
    let tcp = t.url().split('?').next().expect("url").to_string();
    let url = |ca: &Path| format!("{tcp}?sslmode=verify-full&sslrootcert={}", ca.display());
    let (tmp, env) = pg_project(&url(&ca), "  table: s\n", "{\"id\":1}\n{\"id\":2}\n");
    check_exit(tmp.path(), &["run", "--once"], &env, 0);
    assert_eq!(t.sql("SELECT count(*) FROM s"), "2");
    let (tmp, env) = pg_project(&url(&other_ca), "  table: s\n", "{\"id\":3}\n");
    let out = weavster(tmp.path(), &["run", "--once"], &env);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    assert_eq!(t.sql("SELECT count(*) FROM s"), "2");
}
