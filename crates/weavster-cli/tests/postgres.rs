//! PostgreSQL output, end to end: a target PostgreSQL server started by the
//! test (Debian's binaries, through weavster-pg: initdb as a non-root user),
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
    pg: Option<weavster_pg::Embedded>,
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
            .block_on(weavster_pg::Embedded::start(&weavster_pg::Options::new(
                dir.path().join("pg"),
            )))
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
            .block_on(weavster_pg::Embedded::start(&weavster_pg::Options::new(
                self._dir.path().join("pg"),
            )))
            .expect("restart");
        self.pg = Some(pg);
    }

    /// Runs `sql` with psql; returns its unaligned output.
    fn sql(&self, sql: &str) -> String {
        let psql = common::psql();
        let out = Command::new(psql)
            .arg(self.url())
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql");
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
