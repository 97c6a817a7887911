//! Ordinary bad input and faults, through the real binary: each test is a
//! defect once found (issue "Reliability I"), kept as a regression test.
//! Every record is counted: outputs and dead letters are compared with
//! what went in.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{
    command, dead_letters, dead_record, ids, project, records, wait_bounded, weavster, write,
};
use serde_json::Value;

const COPY: &str = "input: files.input\noutputs:\n  - to: files.output\n";
const FILES: &str =
    "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.jsonl }\n";

/// `weavster run --once`, bounded: a hang fails the test.
fn run_once(dir: &Path, env: &[(String, String)]) -> (i32, String) {
    let log = dir.join("run.log");
    let mut child = command(dir, &["run", "--once"], env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let status = wait_bounded(&mut child, Duration::from_secs(180), "run --once");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "{text}");
    (status.code().unwrap_or(-1), text)
}

/// Dead letters as (stage, record bytes), sorted.
fn letters(dir: &Path, env: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = dead_letters(dir, env)
        .iter()
        .map(|d| {
            (
                d["stage"].as_str().unwrap_or("").to_string(),
                dead_record(d),
            )
        })
        .collect();
    v.sort();
    v
}

fn once(ids: &[i64]) -> BTreeMap<i64, usize> {
    ids.iter().map(|i| (*i, 1)).collect()
}

/// A raw NUL inside a line, an escaped `\u0000`, invalid UTF-8 and a
/// failing function: each bad record is dead-lettered once with its exact
/// bytes; good records are written once (they were written twice, and the
/// NUL record lost, when dead letters could not hold a NUL). A field the
/// flow only reads keeps its exact text. A replay delivers nothing twice.
#[test]
fn bad_bytes_are_dead_lettered_once_with_their_exact_bytes() {
    let input: Vec<u8> = [
        &b"{\"id\":1,\"n\":1,\"x\":\"1\"}\n"[..],
        b"{\"id\":2,\"k\":\"a\x00b\",\"n\":1,\"x\":\"1\"}\n",
        b"{\"id\":3,\"k\":\"a\\u0000b\",\"n\":1,\"x\":\"1\"}\n",
        b"{\"id\":4,\"n\":1,\"x\":\"bad\"}\n",
        b"{\"id\":5,\"s\":\"\xff\xfe\",\"n\":1,\"x\":\"1\"}\n",
        b"{\"id\":6,\"n\":123456789012345678901234567890,\"x\":\"1\"}\n",
        b"{\"id\":7,\"n\":1,\"x\":\"1\"}",
    ]
    .concat();
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: bytes\n"),
        ("connectors/files.yaml", FILES),
        (
            "flows/calc.yaml",
            "input: files.input\ntransforms:\n  - set: { n2: n + 1, m: int(x) }\noutputs:\n  - to: files.output\n",
        ),
    ]);
    let dir = tmp.path();
    write(dir, "data/in.jsonl", &input);
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 1, "{log}");
    let out = dir.join("out/out.jsonl");
    assert_eq!(ids(&out), once(&[1, 3, 6, 7]), "{log}");
    let text = std::fs::read_to_string(&out).expect("output");
    assert!(text.contains("\"k\":\"a\\u0000b\""), "{text}");
    assert!(
        text.contains("\"n\":123456789012345678901234567890"),
        "a field only read was rewritten:\n{text}"
    );
    let want = vec![
        (
            "decode".to_string(),
            b"{\"id\":2,\"k\":\"a\x00b\",\"n\":1,\"x\":\"1\"}".to_vec(),
        ),
        (
            "decode".to_string(),
            b"{\"id\":5,\"s\":\"\xff\xfe\",\"n\":1,\"x\":\"1\"}".to_vec(),
        ),
        (
            "transform".to_string(),
            b"{\"id\":4,\"n\":1,\"x\":\"bad\"}".to_vec(),
        ),
    ];
    assert_eq!(letters(dir, &env), want);
    // Shown escaped, never raw.
    let dead = dead_letters(dir, &env);
    let nul = dead
        .iter()
        .find(|d| d["record"].as_str().is_some_and(|r| r.contains('\0')))
        .expect("the NUL record");
    let show = weavster(dir, &["dlq", "show", &nul["id"].to_string()], &env);
    assert!(show.stdout.contains("a\\u{0000}b"), "{}", show.stdout);
    assert!(!show.stdout.contains('\0'));

    // Replay all: the invalid UTF-8 one stays (nothing can read it); the
    // others fail again; the good records are not written again.
    let replay = weavster(dir, &["dlq", "replay"], &env);
    assert_eq!(replay.code, 1, "{}{}", replay.stdout, replay.stderr);
    assert!(
        replay.stdout.contains("not valid UTF-8"),
        "{}",
        replay.stdout
    );
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 1, "{log}");
    assert_eq!(ids(&out), once(&[1, 3, 6, 7]));
    assert_eq!(letters(dir, &env), want);
}

/// A line longer than `max_record_bytes` is dead-lettered (stage `input`,
/// with where it was) and the lines after it are read; it used to end the
/// reading of its file silently. A second run reads nothing again.
#[test]
fn an_over_long_line_is_dead_lettered_and_reading_goes_on() {
    let long = format!("{{\"id\":2,\"pad\":\"{}\"}}", "x".repeat(5000));
    let input = format!("{{\"id\":1}}\n{long}\n{{\"id\":3}}\n");
    let (tmp, env) = project(&[
        (
            "weavster.yaml",
            "name: long\nruntime: { max_record_bytes: 1000 }\n",
        ),
        ("connectors/files.yaml", FILES),
        ("flows/copy.yaml", COPY),
        ("data/in.jsonl", &input),
    ]);
    let dir = tmp.path();
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 1, "{log}");
    assert_eq!(ids(&dir.join("out/out.jsonl")), once(&[1, 3]));
    let dead = dead_letters(dir, &env);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["stage"], "input");
    assert_eq!(dead_record(&dead[0]), long.as_bytes());
    assert_eq!(dead[0]["source"], "data/in.jsonl@9");
    assert!(
        dead[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_record_bytes")),
        "{dead:#?}"
    );
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    assert_eq!(ids(&dir.join("out/out.jsonl")), once(&[1, 3]));
}

/// A CSV row with invalid UTF-8 is one dead letter (`decode`, its exact
/// bytes); the run ends (it looped forever, ignoring SIGTERM).
#[test]
fn a_csv_row_with_invalid_utf8_ends_and_is_one_dead_letter() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: csvbad\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.csv }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        (
            "flows/copy.yaml",
            "input: files.input\ntransforms:\n  - cast: { id: int }\noutputs:\n  - to: files.output\n",
        ),
    ]);
    let dir = tmp.path();
    write(dir, "data/in.csv", b"id,name\n1,ann\n2,\xff\n3,cy\n");
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 1, "{log}");
    assert_eq!(ids(&dir.join("out/out.jsonl")), once(&[1, 3]));
    assert_eq!(
        letters(dir, &env),
        vec![("decode".to_string(), b"2,\xff".to_vec())]
    );
}

/// A missing input file fails the run (exit 1, named); a truncated JSON
/// file among others is read up to where it breaks, its rest is one dead
/// letter, and the other files are read — once, not again on the next run.
#[test]
fn missing_and_broken_input_files() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: files\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/*.json }\noutput: { type: file, path: out/out.jsonl }\nmissing: { type: file, path: data/none.jsonl }\n",
        ),
        ("flows/copy.yaml", COPY),
        (
            "flows/lost.yaml",
            "input: files.missing\noutputs:\n  - to: files.output\n",
        ),
        (
            "data/a.json",
            "[{\"id\":1}, {\"id\":2}, {\"id\":3, \"x\": [1,",
        ),
        ("data/b.json", "{\"id\": 9}"),
        ("data/c.json", "[\n  {\"id\": 4},\n  {\"id\": 5}\n]\n"),
        ("data/d.json", ""),
    ]);
    let dir = tmp.path();
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("data/none.jsonl: no such file"), "{log}");
    assert_eq!(
        ids(&dir.join("out/out.jsonl")),
        once(&[1, 2, 4, 5]),
        "{log}"
    );
    assert_eq!(
        letters(dir, &env),
        vec![
            ("input".to_string(), b"{\"id\": 9}".to_vec()),
            ("input".to_string(), b"{\"id\":3, \"x\": [1,".to_vec()),
        ]
    );
    let (_, log) = run_once(dir, &env);
    assert_eq!(
        ids(&dir.join("out/out.jsonl")),
        once(&[1, 2, 4, 5]),
        "{log}"
    );
    assert_eq!(letters(dir, &env).len(), 2);
}

/// A compiled project runs and tests with no Rust toolchain on PATH; a
/// changed flow then says which flow needs compiling and why it cannot be.
#[test]
fn compiled_projects_run_without_a_rust_toolchain() {
    let (tmp, mut env) = project(&[
        ("weavster.yaml", "name: norust\n"),
        ("connectors/files.yaml", FILES),
        (
            "flows/copy.yaml",
            "input: files.input\ntransforms:\n  - set: { b: a * 2 }\noutputs:\n  - to: files.output\n",
        ),
        (
            "tests/copy/one.yaml",
            "input:\n  - { a: 2 }\nexpect:\n  files.output:\n    - { a: 2, b: 4 }\n",
        ),
        ("data/in.jsonl", "{\"id\":1,\"a\":1}\n"),
    ]);
    let dir = tmp.path();
    assert_eq!(weavster(dir, &["compile"], &env).code, 0);
    env.push((
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ));
    let test = weavster(dir, &["test"], &env);
    assert_eq!(test.code, 0, "{}{}", test.stdout, test.stderr);
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    assert_eq!(records(&dir.join("out/out.jsonl"))[0]["b"], 2);
    write(
        dir,
        "flows/copy.yaml",
        b"input: files.input\ntransforms:\n  - set: { b: a * 3 }\noutputs:\n  - to: files.output\n",
    );
    let changed = weavster(dir, &["run", "--once"], &env);
    assert_eq!(changed.code, 2, "{}", changed.stderr);
    assert!(
        changed.stderr.contains("flow `copy` must be compiled")
            && changed.stderr.contains("no Rust toolchain"),
        "{}",
        changed.stderr
    );
}

fn big_project(n: usize) -> (tempfile::TempDir, Vec<(String, String)>) {
    let input: String = (0..n).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let (tmp, env) = project(&[
        (
            "weavster.yaml",
            "name: stop\nruntime: { batch_size: 500 }\n",
        ),
        ("connectors/files.yaml", FILES),
        (
            "flows/copy.yaml",
            "input: files.input\ntransforms:\n  - set: { seen: true }\noutputs:\n  - to: files.output\n",
        ),
        ("data/in.jsonl", &input),
    ]);
    assert_eq!(weavster(tmp.path(), &["compile"], &env).code, 0);
    (tmp, env)
}

/// Every id in 0..n at least once (duplicates are allowed after a stop).
fn all_delivered(out: &Path, n: usize) {
    let got = ids(out);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !got.contains_key(&(*i as i64)))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never delivered, e.g. {missing:?}");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

fn wait_for_output(out: &Path) {
    let started = std::time::Instant::now();
    while common::records_lines(out) == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM in the middle of `run --once` stops it gracefully (exit 0,
/// `stopped`, the embedded server stopped); it used to hang. A second
/// signal stops at once (exit 130), even with a batch that cannot finish
/// (its sink blocked). A later run delivers the rest.
#[test]
fn once_stops_on_a_signal_and_a_second_signal_forces() {
    const N: usize = 150_000;
    let (tmp, env) = big_project(N);
    let dir = tmp.path();
    let out = dir.join("out/out.jsonl");
    let pid_file = dir.join(".weavster/postgres/data/postmaster.pid");

    let log = dir.join("term.log");
    let mut child = command(dir, &["run", "--once"], &env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    wait_for_output(&out);
    signal(child.id(), "-TERM");
    let status = wait_bounded(
        &mut child,
        Duration::from_secs(90),
        "run --once after SIGTERM",
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(
        !pid_file.exists(),
        "the embedded PostgreSQL was left running:\n{text}"
    );

    // The second signal matters when the graceful stop cannot finish: a
    // flow writing to a standard output nobody reads blocks in its sink
    // once the pipe is full, and so does its batch in flight.
    write(dir, "connectors/io.yaml", b"output: { type: stdout }\n");
    write(
        dir,
        "flows/pipe.yaml",
        b"input: files.input\noutputs:\n  - to: io.output\n",
    );
    assert_eq!(weavster(dir, &["compile"], &env).code, 0);
    let log = dir.join("force.log");
    let mut child = command(dir, &["run", "--once", "--flow", "pipe"], &env)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let mut piped = child.stdout.take().expect("stdout");
    // A byte read: the flow is writing; then nobody reads, and its batches
    // (15 KB each, 4.5 MB in all) fill the 64 KiB pipe.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut piped, &mut first).expect("the flow's first output");
    std::thread::sleep(Duration::from_secs(1));
    signal(child.id(), "-INT");
    std::thread::sleep(Duration::from_millis(200));
    signal(child.id(), "-INT");
    let status = wait_bounded(
        &mut child,
        Duration::from_secs(30),
        "run --once after two SIGINTs",
    );
    drop(piped);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{text}");

    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    all_delivered(&out, N);
}

/// The embedded PostgreSQL killed (`kill -9`) mid-run is started again and
/// the run finishes with every record; it used to retry forever.
#[test]
fn a_killed_embedded_postgres_is_restarted() {
    const N: usize = 100_000;
    let (tmp, env) = big_project(N);
    let dir = tmp.path();
    let out = dir.join("out/out.jsonl");
    let log = dir.join("run.log");
    let mut child = command(dir, &["run", "--once"], &env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    wait_for_output(&out);
    let (pid, _) = weavster_queue_server::live_postmaster(&dir.join(".weavster/postgres/data"))
        .expect("a running postmaster");
    signal(pid, "-KILL");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "run after the queue was killed: still running after 180 s (hangs); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("started again"), "{text}");
    all_delivered(&out, N);
}

/// Two `run --once` at the same time in one project share its embedded
/// server (the second used to stop the first's); both finish, every record
/// is delivered.
#[test]
fn two_runs_in_one_project_share_the_embedded_server() {
    const N: usize = 60_000;
    let (tmp, env) = big_project(N);
    let dir = tmp.path();
    // The server's data dir exists before both start.
    assert_eq!(weavster(dir, &["dlq", "ls"], &env).code, 0);
    let spawn = |log: &str| {
        command(dir, &["run", "--once"], &env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).expect("log"))
            .spawn()
            .expect("spawn")
    };
    let mut a = spawn("a.log");
    std::thread::sleep(Duration::from_millis(300));
    let mut b = spawn("b.log");
    let sa = wait_bounded(&mut a, Duration::from_secs(180), "first run");
    let sb = wait_bounded(&mut b, Duration::from_secs(180), "second run");
    let ta = std::fs::read_to_string(dir.join("a.log")).unwrap_or_default();
    let tb = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
    assert!(sa.success() && sb.success(), "A:\n{ta}\nB:\n{tb}");
    assert!(!tb.contains("pg_ctl"), "{tb}");
    all_delivered(&dir.join("out/out.jsonl"), N);
    assert!(
        !dir.join(".weavster/postgres/data/postmaster.pid").exists(),
        "the last run out did not stop the server"
    );
}

/// Deleting `.weavster/postgres` forgets input positions: the next run says
/// loudly that its inputs are read again into outputs that hold data.
#[test]
fn a_new_queue_database_warns_before_reading_inputs_again() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: again\n"),
        ("connectors/files.yaml", FILES),
        ("flows/copy.yaml", COPY),
        ("data/in.jsonl", "{\"id\":1}\n"),
    ]);
    let dir = tmp.path();
    assert_eq!(run_once(dir, &env).0, 0);
    std::fs::remove_dir_all(dir.join(".weavster/postgres")).expect("rm");
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("no input position is stored") && log.contains("out/out.jsonl"),
        "{log}"
    );
}

/// Secrets and env values never reach `ls`, `debug` or error messages, and
/// `--vars` values cannot add keys to a file.
#[test]
fn secrets_and_vars_stay_data() {
    let (tmp, mut env) = project(&[
        ("weavster.yaml", "name: masks\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: \"{{ env_var('WEAVSTER_SECRET_DIR') }}/in.jsonl\" }\noutput:\n  type: file\n  path: out/{{ var('name2', 'o.jsonl') }}\n",
        ),
        (
            "connectors/api.yaml",
            "kafka_out:\n  type: kafka\n  brokers: localhost:9092\n  topic: t\n  options:\n    sasl.jaas.config: 'org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"kpass-123\";'\npg:\n  type: postgres\n  url: \"postgres://db/shop?sslpassword=pgpass-456&application_name=w\"\n  table: t\nhook:\n  type: http\n  url: \"https://api.example.com/x?api_key=key-789\"\n  headers:\n    Authorization: Bearer tok-000\n    X-Api-Key: xkey-111\n",
        ),
        ("flows/copy.yaml", COPY),
    ]);
    env.push(("WEAVSTER_SECRET_DIR".into(), "data/s3cret-dir".into()));
    let dir = tmp.path();
    let secrets = [
        "s3cret-dir",
        "kpass-123",
        "pgpass-456",
        "key-789",
        "tok-000",
        "xkey-111",
    ];
    for args in [
        vec!["ls", "-o", "json"],
        vec!["ls"],
        vec!["debug"],
        vec!["debug", "-o", "json"],
        vec!["validate", "--format", "json"],
    ] {
        let out = weavster(dir, &args, &env);
        for s in secrets {
            assert!(
                !out.stdout.contains(s) && !out.stderr.contains(s),
                "`{}` printed {s}:\n{}{}",
                args.join(" "),
                out.stdout,
                out.stderr
            );
        }
    }
    // A var is a value: a line break in it adds no key.
    let vars = "{name2: \"a\\n  format: csv\\n  mode: overwrite\\n  #.jsonl\"}";
    let ls = weavster(dir, &["ls", "-o", "json", "--vars", vars], &env);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    let v: Value = serde_json::from_str(&ls.stdout).expect("ls json");
    let output = v["connectors"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["ref"] == "files.output"))
        .expect("files.output");
    assert!(output["config"].get("format").is_none(), "{output:#}");
    assert!(output["config"].get("mode").is_none(), "{output:#}");
    // A bad --vars is a usage error.
    let bad = weavster(dir, &["validate", "--vars", "[1, 2]"], &env);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// Messages: an output path under a regular file says so (`run` and
/// `debug`); an unknown dead-letter id is a usage error.
#[test]
fn clear_messages_for_ordinary_mistakes() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: msgs\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/sub/o.jsonl }\n",
        ),
        ("flows/copy.yaml", COPY),
        ("data/in.jsonl", "{\"id\":1}\n"),
        ("out/sub", "a file where a directory should be\n"),
    ]);
    let dir = tmp.path();
    let debug = weavster(dir, &["debug"], &env);
    assert!(
        debug.stdout.contains("out/sub is a file, not a directory"),
        "{}",
        debug.stdout
    );
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("is a file, not a directory"), "{log}");
    for cmd in [
        &["dlq", "replay", "999999"][..],
        &["dlq", "purge", "999999"],
    ] {
        let out = weavster(dir, cmd, &env);
        assert_eq!(out.code, 2, "{cmd:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("no dead letter with id 999999"),
            "{}",
            out.stderr
        );
    }
}

/// A regex extraction without `into` writes its groups as fields: the
/// compiled flow once emitted broken records for it (every batch failed).
/// `weavster test` and `run --once` deliver the groups.
#[test]
fn regex_groups_without_into_reach_the_output() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: groups\n"),
        ("connectors/files.yaml", FILES),
        (
            "flows/days.yaml",
            "input: files.input\ntransforms:\n  - regex: { field: ts, pattern: '^(?P<day>\\d{4}-\\d{2}-\\d{2})T' }\noutputs:\n  - to: files.output\n    when: day != 'x'\n",
        ),
        (
            "tests/days/one.yaml",
            "input:\n  - { ts: '2026-01-02T03:04:05Z', day: old }\nexpect:\n  files.output:\n    - { ts: '2026-01-02T03:04:05Z', day: '2026-01-02' }\n",
        ),
        (
            "data/in.jsonl",
            "{\"id\":1,\"ts\":\"2026-01-02T03:04:05Z\"}\n{\"id\":2,\"ts\":\"2026-02-03T00:00:00Z\",\"day\":\"x\"}\n",
        ),
    ]);
    let dir = tmp.path();
    let test = weavster(dir, &["test"], &env);
    assert_eq!(test.code, 0, "{}{}", test.stdout, test.stderr);
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    let got = records(&dir.join("out/out.jsonl"));
    let days: Vec<&str> = got.iter().filter_map(|r| r["day"].as_str()).collect();
    assert_eq!(days, ["2026-01-02", "2026-02-03"], "{got:?}");
}

/// A file input's jobs hold byte ranges (issue 17): a range rewritten
/// after it was enqueued is never run as whatever it holds now. The job
/// (a copy of the first run's, queued again through the database) becomes
/// one dead letter naming the file and the range, with the bytes found;
/// the records appended after it are read and delivered.
#[test]
fn a_rewritten_range_is_one_dead_letter_naming_the_file() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: ranges\n"),
        ("connectors/files.yaml", FILES),
        ("flows/copy.yaml", COPY),
        ("data/in.jsonl", "{\"id\":1}\n{\"id\":2}\n"),
    ]);
    let dir = tmp.path();
    let queue = common::Queue::hold(dir);
    assert_eq!(run_once(dir, &env).0, 0);
    assert_eq!(ids(&dir.join("out/out.jsonl")), once(&[1, 2]));
    let job = queue
        .sql("SELECT convert_from(job, 'UTF8') FROM apalis.jobs WHERE job_type = 'weavster:copy'")
        .expect("the job");
    let job: Value = serde_json::from_str(&job).expect("job json");
    assert_eq!(
        job["records"],
        Value::Null,
        "a range job holds no records: {job}"
    );
    assert_eq!(
        (
            &job["range"]["file"],
            &job["range"]["start"],
            &job["range"]["end"]
        ),
        (
            &Value::from("data/in.jsonl"),
            &Value::from(0),
            &Value::from(18)
        ),
        "{job}"
    );
    // Queued again, and the file rewritten (same length) and appended to.
    queue.requeue_all("copy");
    write(
        dir,
        "data/in.jsonl",
        b"{\"id\":7}\n{\"id\":8}\n{\"id\":3}\n",
    );
    let (code, stderr) = run_once(dir, &env);
    assert_eq!(code, 1, "dead letters: exit 1\n{stderr}");
    assert_eq!(ids(&dir.join("out/out.jsonl")), once(&[1, 2, 3]));
    let dead = dead_letters(dir, &env);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d["stage"], "input", "{d}");
    assert_eq!(d["source"], "data/in.jsonl@0..18", "{d}");
    assert_eq!(dead_record(d), b"{\"id\":7}\n{\"id\":8}\n");
    let reason = d["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the 2 records of this batch are lost to this run")
            && reason.contains("data/in.jsonl: bytes 0..18 changed since they were read"),
        "{reason}"
    );
    // The same job run again (as after a crash before it was marked done):
    // its dead letter is not written twice.
    queue
        .sql(
            "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(), lock_by = NULL, lock_at = NULL
             WHERE id = (SELECT job_id FROM weavster.dead_letters LIMIT 1)",
        )
        .expect("run again");
    let (code, stderr) = run_once(dir, &env);
    assert!(code == 0 || code == 1, "{stderr}");
    assert_eq!(dead_letters(dir, &env).len(), 1, "{stderr}");
    assert_eq!(ids(&dir.join("out/out.jsonl")), once(&[1, 2, 3]));
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped. The tests run
/// as root (CI and this project's machines); without it they say so.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs at {} needs root (this test fills a disk)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk under a file output (issue "Trust II", item 4): 30,000
/// records into a 1 MiB tmpfs. Each batch is in the file or in the dead
/// letters (`delivery`), never both, and no torn line is left; after the
/// disk is enlarged, a replay delivers the dead letters and the file holds
/// every record exactly once (it held 2,547 duplicates when a failed write
/// left its complete lines behind). In every format the output keeps: a
/// JSON array stays an array, a CSV file keeps one header.
#[test]
fn a_full_disk_leaves_each_record_written_or_dead_lettered_never_both() {
    for (format, file) in [
        ("jsonl", "out.jsonl"),
        ("json", "out.json"),
        ("csv", "out.csv"),
    ] {
        let n = 30_000i64;
        let input: String = (0..n)
            .map(|i| format!("{{\"id\":{i},\"pad\":\"{:0>40}\"}}\n", i))
            .collect();
        let files = format!(
            "input: {{ type: file, path: data/in.jsonl }}\noutput: {{ type: file, path: out/{file} }}\n"
        );
        let (tmp, env) = project(&[
            (
                "weavster.yaml",
                "name: full\nruntime:\n  max_attempts: 1\n  batch_size: 1000\n",
            ),
            ("connectors/files.yaml", &files),
            ("flows/copy.yaml", COPY),
        ]);
        let dir = tmp.path();
        write(dir, "data/in.jsonl", input.as_bytes());
        let disk = Tmpfs::mount(&dir.join("out"), "1m");
        let (code, log) = run_once(dir, &env);
        assert_eq!(code, 1, "{format}: dead letters: {log}");
        let out = dir.join("out").join(file);
        let written = read_ids(&out, format);
        let dead: Vec<i64> = dead_letters(dir, &env)
            .iter()
            .map(|d| {
                assert_eq!(d["stage"], "delivery", "{format}: {d}");
                let v: Value = serde_json::from_slice(&dead_record(d)).expect("JSON");
                v["id"].as_i64().expect("id")
            })
            .collect();
        assert!(!written.is_empty() && !dead.is_empty(), "{format}: {log}");
        let mut all: Vec<i64> = written.iter().chain(&dead).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..n).collect::<Vec<_>>(),
            "{format}: every record once, in the file or dead-lettered ({} + {})",
            written.len(),
            dead.len()
        );
        disk.resize("16m");
        let replay = weavster(dir, &["dlq", "replay"], &env);
        assert_eq!(replay.code, 0, "{}{}", replay.stdout, replay.stderr);
        let (code, log) = run_once(dir, &env);
        assert_eq!(code, 0, "{format}: {log}");
        let mut got = read_ids(&out, format);
        got.sort_unstable();
        assert_eq!(
            got,
            (0..n).collect::<Vec<_>>(),
            "{format}: after the replay"
        );
        drop(disk);
    }
}

/// The ids of an output file in `format`, checking its shape: every line a
/// whole record, a JSON array closed, one CSV header.
fn read_ids(path: &Path, format: &str) -> Vec<i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match format {
        "json" => {
            let v: Value = serde_json::from_str(&text).expect("a valid JSON array");
            v.as_array()
                .expect("array")
                .iter()
                .map(|r| r["id"].as_i64().expect("id"))
                .collect()
        }
        "csv" => {
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("id,pad"), "one header");
            lines
                .map(|l| {
                    let (id, pad) = l.split_once(',').expect("two cells");
                    assert_eq!(pad.len(), 40, "a whole row: {l}");
                    id.parse().expect("an id")
                })
                .collect()
        }
        _ => {
            assert!(text.is_empty() || text.ends_with('\n'), "no torn line");
            text.lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).expect("a whole record");
                    v["id"].as_i64().expect("id")
                })
                .collect()
        }
    }
}

/// Issue "Trust II", item 7: a CSV output's cells are the fields' text —
/// `1.50`, `1e400` and a 30-digit integer as sent (it wrote `1.5` and
/// refused `1e400`).
#[test]
fn csv_cells_keep_the_fields_text() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: cells\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.csv }\n",
        ),
        ("flows/copy.yaml", COPY),
    ]);
    let dir = tmp.path();
    write(
        dir,
        "data/in.jsonl",
        b"{\"a\":1.50,\"b\":1e400,\"c\":123456789012345678901234567890,\"d\":\"x,y\",\"e\":null}\n",
    );
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out/out.csv")).expect("output"),
        "a,b,c,d,e\n1.50,1e400,123456789012345678901234567890,\"x,y\",\n"
    );
}

/// Issue "Trust II", item 6: `mode: overwrite` never empties an output
/// before the run writes to it. A second `run --once` with nothing new to
/// read, and a run that fails at start (its metrics port taken), leave the
/// file as the first run wrote it (both emptied it); a run with new input
/// replaces it with what that run writes.
#[test]
fn overwrite_never_empties_an_output_before_writing() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: over\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.jsonl, mode: overwrite }\n",
        ),
        ("flows/copy.yaml", COPY),
    ]);
    let dir = tmp.path();
    write(dir, "data/in.jsonl", b"{\"id\":1}\n{\"id\":2}\n");
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    let out = dir.join("out/out.jsonl");
    let first = std::fs::read_to_string(&out).expect("output");
    assert_eq!(ids(&out), once(&[1, 2]));
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        std::fs::read_to_string(&out).expect("output"),
        first,
        "nothing new: kept"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let failed = weavster(dir, &["run", "--once", "--metrics-addr", &addr], &env);
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).expect("output"),
        first,
        "a failed start: kept"
    );
    drop(taken);
    let mut more = std::fs::read(dir.join("data/in.jsonl")).expect("input");
    more.extend_from_slice(b"{\"id\":3}\n");
    write(dir, "data/in.jsonl", &more);
    let (code, log) = run_once(dir, &env);
    assert_eq!(code, 0, "{log}");
    assert_eq!(ids(&out), once(&[3]), "replaced by what this run wrote");
}
