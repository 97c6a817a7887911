//! `weavster run` and `weavster dlq`, end to end: the real binary, the
//! embedded PostgreSQL it starts in each temp project, the compiled wasm.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Out, dead_letters, example, project, records, records_lines, weavster};
use serde_json::Value;
use weavster_spec::types::{Connector, ConnectorsFile, FlowFile, TestCase};

/// Records with sorted keys, sorted: outputs compared as multisets.
fn canonical(v: &[Value]) -> Vec<String> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let mut out: Vec<String> = v.iter().map(|r| sort(r).to_string()).collect();
    out.sort();
    out
}

fn run(dir: &Path, args: &[&str], env: &[(String, String)]) -> Out {
    let out = weavster(dir, args, env);
    assert!(
        out.code == 0 || out.code == 1,
        "weavster {args:?} exited {}:\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    out
}

/// Every fixture of every example, through `run --once` instead of `test`:
/// the fixture's input is written to the flow's input file, and what the
/// file (and stdout) outputs receive must be what the fixture expects.
/// Flows calling `now()` are left to `weavster test` (a run's clock is
/// real).
#[test]
fn examples_run_once_delivers_what_their_fixtures_expect() {
    for name in ["orders", "kitchen_sink", "events"] {
        let (tmp, env) = example(name);
        let dir = tmp.path();
        let mut connectors = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("connectors")).expect("connectors") {
            let path = entry.expect("entry").path();
            let stem = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .to_string();
            let file: ConnectorsFile =
                weavster_spec::yaml::from_str(&std::fs::read_to_string(&path).expect("read"))
                    .expect("connectors parse");
            for (k, c) in file {
                connectors.insert(format!("{stem}.{k}"), c);
            }
        }
        let mut checked = 0;
        for flow_entry in std::fs::read_dir(dir.join("flows")).expect("flows") {
            let flow_path = flow_entry.expect("entry").path();
            let flow_name = flow_path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .to_string();
            let source = std::fs::read_to_string(&flow_path).expect("flow");
            if source.contains("now()") {
                continue;
            }
            let flow: FlowFile = weavster_spec::yaml::from_str(&source).expect("flow parses");
            let Some(Connector::File(input)) = connectors.get(&flow.input) else {
                continue;
            };
            let Ok(cases) = std::fs::read_dir(dir.join("tests").join(&flow_name)) else {
                continue;
            };
            for case_entry in cases {
                let case_path = case_entry.expect("entry").path();
                let case: TestCase = weavster_spec::yaml::from_str(
                    &std::fs::read_to_string(&case_path).expect("case"),
                )
                .expect("case parses");
                let lines: Vec<String> = case.input.iter().map(Value::to_string).collect();
                std::fs::write(dir.join(&input.path), lines.join("\n") + "\n").expect("input");
                for c in connectors.values() {
                    if let Connector::File(f) = c
                        && f.path != input.path
                    {
                        let _ = std::fs::remove_file(dir.join(&f.path));
                    }
                }
                let vars = serde_json::to_string(&case.vars).expect("vars");
                let out = run(
                    dir,
                    &[
                        "run",
                        "--once",
                        "--from-start",
                        "--flow",
                        &flow_name,
                        "--vars",
                        &vars,
                    ],
                    &env,
                );
                for (key, expected) in &case.expect {
                    let got = match connectors.get(key) {
                        Some(Connector::File(f)) => records(&dir.join(&f.path)),
                        Some(Connector::Stdout(_)) => out
                            .stdout
                            .lines()
                            .map(|l| serde_json::from_str(l).expect("stdout record"))
                            .collect(),
                        _ => continue,
                    };
                    assert_eq!(
                        canonical(&got),
                        canonical(expected),
                        "{name}: {} → {key}\n{}",
                        case_path.display(),
                        out.stderr
                    );
                    checked += 1;
                }
                let want_errors = case.expect.get("errors").map_or(0, Vec::len);
                assert_eq!(out.code, i32::from(want_errors > 0), "{}", out.stderr);
            }
        }
        assert!(checked > 0, "{name}: no fixture output was checked");
    }
}

const ROUTE_FLOW: &str = "input: files.input
unrouted: error
outputs:
  - to: files.output
    when: kind == 'a'
";

/// A record no output takes (with `unrouted: error`) and a line that is not
/// JSON are dead-lettered with their reasons; the rest is delivered. After
/// the flow is fixed, `dlq replay` + `run --once` delivers the first.
#[test]
fn poison_records_are_dead_lettered_and_replayed_after_a_fix() {
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: shop\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        ("flows/route.yaml", ROUTE_FLOW),
        (
            "data/in.jsonl",
            "{\"id\":1,\"kind\":\"a\"}\n{\"id\":2,\"kind\":\"b\"}\n{\"id\":3,\n{\"id\":4,\"kind\":\"a\"}\n",
        ),
    ]);
    let dir = tmp.path();
    let first = run(dir, &["run", "--once"], &env);
    assert_eq!(first.code, 1, "{}", first.stderr);
    assert!(first.stderr.contains("dead-lettered"), "{}", first.stderr);
    let ids =
        |v: &[Value]| -> BTreeSet<i64> { v.iter().filter_map(|r| r["id"].as_i64()).collect() };
    assert_eq!(
        ids(&records(&dir.join("out/out.jsonl"))),
        BTreeSet::from([1, 4])
    );
    let dead = dead_letters(dir, &env);
    let stages: BTreeSet<&str> = dead.iter().filter_map(|d| d["stage"].as_str()).collect();
    assert_eq!(stages, BTreeSet::from(["decode", "routing"]), "{dead:#?}");
    let routing = dead
        .iter()
        .find(|d| d["stage"] == "routing")
        .expect("routing dead letter");
    assert_eq!(routing["record"], "{\"id\":2,\"kind\":\"b\"}");
    let show = weavster(dir, &["dlq", "show", &routing["id"].to_string()], &env);
    assert!(show.stdout.contains("stage:    routing"), "{}", show.stdout);

    // Fix the flow (every kind goes out), replay that one record.
    std::fs::write(
        dir.join("flows/route.yaml"),
        ROUTE_FLOW.replace("    when: kind == 'a'\n", ""),
    )
    .expect("fix");
    let replay = weavster(dir, &["dlq", "replay", &routing["id"].to_string()], &env);
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert!(
        replay.stdout.contains("route: 1 record queued again"),
        "{}",
        replay.stdout
    );
    let second = run(dir, &["run", "--once"], &env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        ids(&records(&dir.join("out/out.jsonl"))),
        BTreeSet::from([1, 2, 4])
    );
    assert_eq!(dead_letters(dir, &env).len(), 1);

    let refused = weavster(dir, &["dlq", "purge"], &env);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    let purge = weavster(dir, &["dlq", "purge", "--all"], &env);
    assert!(
        purge.stdout.contains("1 dead letter deleted"),
        "{}",
        purge.stdout
    );
    assert!(dead_letters(dir, &env).is_empty());

    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(".weavster/target/run_results.json")).expect("results"),
    )
    .expect("json");
    assert_eq!(results["status"], "ok");
    assert_eq!(results["flows"]["route"]["out"]["files.output"], 1);
}

/// `kill -9` at several moments of a run over 200k records, then a run to
/// the end: every input record reached the output (at least once).
#[test]
fn killed_runs_lose_no_acknowledged_record() {
    const N: usize = 200_000;
    let input: String = (0..N)
        .map(|i| format!("{{\"id\":{i},\"name\":\"customer {i}\"}}\n"))
        .collect();
    let (tmp, env) = project(&[
        (
            "weavster.yaml",
            "name: crash\nruntime: { batch_size: 2000 }\n",
        ),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        (
            "flows/copy.yaml",
            "input: files.input\ntransforms:\n  - set: { name: upper(name) }\noutputs:\n  - to: files.output\n",
        ),
        ("data/in.jsonl", &input),
    ]);
    let dir = tmp.path();
    let compiled = weavster(dir, &["compile"], &env);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    // Creates the queue database, so the kills below hit a running flow.
    assert_eq!(weavster(dir, &["dlq", "ls"], &env).code, 0);
    let mut delivered = Vec::new();
    for wait_ms in [400u64, 900, 1500] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weavster"));
        cmd.current_dir(dir)
            .args(["run", "--once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().expect("kill -9");
        let _ = child.wait();
        delivered.push(records_lines(&dir.join("out/out.jsonl")));
    }
    eprintln!("records in the output after each kill: {delivered:?}");
    let last = run(dir, &["run", "--once"], &env);
    assert_eq!(last.code, 0, "{}", last.stderr);
    let out = std::fs::read_to_string(dir.join("out/out.jsonl")).expect("output");
    let mut seen = vec![false; N];
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).expect("a whole JSON record per line");
        let id = v["id"].as_u64().expect("id") as usize;
        assert_eq!(v["name"], format!("CUSTOMER {id}"));
        seen[id] = true;
    }
    let missing: Vec<usize> = (0..N).filter(|i| !seen[*i]).take(10).collect();
    assert!(
        missing.is_empty(),
        "records never delivered, e.g. {missing:?}"
    );
}

fn spawn_run(dir: &Path, env: &[(String, String)], log: &Path) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weavster"));
    cmd.current_dir(dir)
        .args(["run", "--once"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn")
}

/// Two `weavster run --once` on one external PostgreSQL share the work and
/// deliver every record; the database is restarted while they run, and
/// they recover.
#[test]
fn two_processes_share_an_external_database_and_survive_its_restart() {
    const N: usize = 100_000;
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let pg_dir = tempfile::tempdir().expect("pg dir");
    let server = rt
        .block_on(weavster_queue_server::Embedded::start(
            &weavster_queue_server::Options::new(pg_dir.path().join("postgres")),
        ))
        .expect("external PostgreSQL");
    let input: String = (0..N).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let (tmp, mut env) = project(&[
        (
            "weavster.yaml",
            "name: shared\nruntime: { queue: \"{{ env_var('QUEUE_URL') }}\", batch_size: 500 }\n",
        ),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        (
            "flows/tag.yaml",
            "input: files.input\ntransforms:\n  - set: { seen: true }\noutputs:\n  - to: files.output\n",
        ),
        ("data/in.jsonl", &input),
    ]);
    env.push(("QUEUE_URL".into(), server.url()));
    let dir = tmp.path();
    assert_eq!(weavster(dir, &["compile"], &env).code, 0);
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let mut a = spawn_run(dir, &env, &log_a);
    let mut b = spawn_run(dir, &env, &log_b);
    // Restart the database under them once output is flowing.
    let out = dir.join("out/out.jsonl");
    let started = std::time::Instant::now();
    while records_lines(&out) == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let restart = Command::new(server.bin_dir().join("pg_ctl"))
        .args(["restart", "-m", "fast", "-w", "-D"])
        .arg(server.data_dir())
        .stdout(Stdio::null())
        .status()
        .expect("pg_ctl restart");
    assert!(restart.success());
    let (sa, sb) = (a.wait().expect("a"), b.wait().expect("b"));
    let (ta, tb) = (
        std::fs::read_to_string(&log_a).unwrap_or_default(),
        std::fs::read_to_string(&log_b).unwrap_or_default(),
    );
    assert!(sa.success() && sb.success(), "A:\n{ta}\nB:\n{tb}");
    let mut seen = vec![false; N];
    for line in std::fs::read_to_string(&out).expect("output").lines() {
        let v: Value = serde_json::from_str(line).expect("a whole record per line");
        assert_eq!(v["seen"], true);
        seen[v["id"].as_u64().expect("id") as usize] = true;
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "A:\n{ta}\nB:\n{tb}");
    // Both processes ran batches: `in` is the third figure of the summary.
    let processed = |log: &str| -> u64 {
        log.lines()
            .find(|l| l.contains(" tag "))
            .and_then(|l| l.split_whitespace().nth(5))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        processed(&ta) > 0 && processed(&tb) > 0,
        "work was not shared:\nA:\n{ta}\nB:\n{tb}"
    );
    rt.block_on(server.stop()).expect("stop");
}

/// stdin → flow → stdout with `--once`: ends at end of input.
#[test]
fn stdin_to_stdout() {
    use std::io::Write as _;
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: pipe\n"),
        (
            "connectors/io.yaml",
            "input: { type: stdin }\noutput: { type: stdout }\n",
        ),
        (
            "flows/pipe.yaml",
            "input: io.input\ntransforms:\n  - set: { n2: n * 2 }\noutputs:\n  - to: io.output\n",
        ),
    ]);
    let dir = tmp.path();
    assert_eq!(weavster(dir, &["compile"], &env).code, 0);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weavster"));
    cmd.current_dir(dir)
        .args(["-q", "run", "--once"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"n\":1}\n{\"n\":2}\n\n{\"n\":3}\n")
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert_eq!(
        canonical(&got),
        canonical(&[
            serde_json::json!({"n": 1, "n2": 2}),
            serde_json::json!({"n": 2, "n2": 4}),
            serde_json::json!({"n": 3, "n2": 6}),
        ])
    );
}

/// A continuous run follows lines appended to its input and stops
/// gracefully on SIGTERM: exit 0, status `stopped`, the embedded server
/// stopped.
#[test]
fn continuous_run_follows_appends_and_stops_on_sigterm() {
    use std::io::Write as _;
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: follow\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/*.jsonl }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        (
            "flows/copy.yaml",
            "input: files.input\noutputs:\n  - to: files.output\n",
        ),
        ("data/a.jsonl", "{\"id\":1}\n"),
    ]);
    let dir = tmp.path();
    assert_eq!(weavster(dir, &["compile"], &env).code, 0);
    let log = dir.join("run.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weavster"));
    cmd.current_dir(dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let out = dir.join("out/out.jsonl");
    let wait_for = |n: usize| {
        let started = std::time::Instant::now();
        while records_lines(&out) < n && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        records_lines(&out)
    };
    assert_eq!(wait_for(1), 1);
    // Appended lines (the second one in two writes) and a new file.
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("data/a.jsonl"))
        .expect("open");
    a.write_all(b"{\"id\":2}\n{\"id\"").expect("append");
    a.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(400));
    a.write_all(b":3}\n").expect("append");
    std::fs::write(dir.join("data/b.jsonl"), "{\"id\":4}\n").expect("new file");
    assert_eq!(wait_for(4), 4);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = child.wait().expect("wait");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{text}");
    assert!(text.contains("stopped"), "{text}");
    let ids: BTreeSet<i64> = records(&out)
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3, 4]));
    assert!(
        !dir.join(".weavster/postgres/data/postmaster.pid").exists(),
        "the embedded PostgreSQL was left running"
    );
}

/// An output that fails every write: the batch is retried with backoff,
/// then its records are dead-lettered with stage `delivery`; the run exits 1.
#[test]
fn a_batch_failing_every_attempt_is_dead_lettered() {
    let (tmp, env) = project(&[
        (
            "weavster.yaml",
            "name: broken\nruntime: { max_attempts: 2 }\n",
        ),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/o.json }\n",
        ),
        (
            "flows/copy.yaml",
            "input: files.input\noutputs:\n  - to: files.output\n",
        ),
        ("data/in.jsonl", "{\"id\":1}\n{\"id\":2}\n"),
        // Not a JSON array weavster can append to.
        ("out/o.json", "not json at all\n"),
    ]);
    let dir = tmp.path();
    let out = run(dir, &["run", "--once"], &env);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("retrying in 1s"), "{}", out.stderr);
    let dead = dead_letters(dir, &env);
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for d in &dead {
        assert_eq!(d["stage"], "delivery");
        assert_eq!(d["attempts"], 2);
        let message = d["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("failed 2 times") && message.contains("JSON array"),
            "{message}"
        );
    }
}
