//! A flow that loops forever on one record, and one that crashes on
//! another, through the real runtime: embedded PostgreSQL, the apalis
//! queue, wasmtime. The other records are delivered; the two bad ones are
//! dead-lettered with stages `deadline` and `trap`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use weavster_runtime::{
    Db, DeadLetterFilter, Endpoint, FlowPlan, Metrics, QueueSettings, RunOptions, RunReport,
};
use weavster_spec::types::{Connector, FileConnector};

/// An ABI v1 guest in WAT: routes every record unchanged to output 0, loops
/// forever on a record starting `{"l`, traps on one starting `{"t`, works
/// for a while (15 × 2^28 loop turns) on one starting `{"s`, answers an
/// invalid outcome line for one starting `{"b`. (Record indexes are one
/// digit: batches of at most 10.)
const GUEST: &str = r#"
(module
  (memory (export "memory") 16)
  (data (i32.const 1000) ",\"o\":[0],\"r\":")
  (func (export "weavster_abi_version") (result i32) i32.const 1)
  (func (export "weavster_input") (param i32) (result i32) i32.const 65536)
  (func (export "weavster_init") (param i32) (result i32) i32.const 0)
  (func (export "weavster_output") (result i32) i32.const 524288)
  (func (export "weavster_output_len") (result i32) i32.const 0)
  (func $put (param $o i32) (param $b i32) (result i32)
    (i32.store8 (local.get $o) (local.get $b))
    (i32.add (local.get $o) (i32.const 1)))
  (func (export "weavster_process") (param $len i32) (result i32)
    (local $p i32) (local $end i32) (local $o i32) (local $i i32) (local $start i32) (local $k i32)
    (local.set $p (i32.const 65536))
    (local.set $end (i32.add (i32.const 65536) (local.get $len)))
    (local.set $o (i32.const 524288))
    (block $h (loop $hl
      (br_if $h (i32.ge_u (local.get $p) (local.get $end)))
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 10))
        (then (local.set $p (i32.add (local.get $p) (i32.const 1))) (br $h)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $hl)))
    (block $done (loop $rec
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $start (local.get $p))
      (block $eol (loop $scan
        (br_if $eol (i32.ge_u (local.get $p) (local.get $end)))
        (br_if $eol (i32.eq (i32.load8_u (local.get $p)) (i32.const 10)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
      (if (i32.gt_u (local.get $p) (local.get $start)) (then
        (if (i32.eq (i32.load8_u (i32.add (local.get $start) (i32.const 2))) (i32.const 108))
          (then (loop $forever (br $forever))))
        (if (i32.eq (i32.load8_u (i32.add (local.get $start) (i32.const 2))) (i32.const 116))
          (then unreachable))
        (if (i32.eq (i32.load8_u (i32.add (local.get $start) (i32.const 2))) (i32.const 98))
          (then
            (local.set $o (call $put (local.get $o) (i32.const 120)))
            (local.set $o (call $put (local.get $o) (i32.const 10)))))
        (if (i32.eq (i32.load8_u (i32.add (local.get $start) (i32.const 2))) (i32.const 115))
          (then
            (local.set $k (i32.const 0))
            (loop $slow
              (local.set $k (i32.add (local.get $k) (i32.const 1)))
              (br_if $slow (i32.lt_u (local.get $k) (i32.const 0xf0000000))))))
        (local.set $o (call $put (local.get $o) (i32.const 123)))
        (local.set $o (call $put (local.get $o) (i32.const 34)))
        (local.set $o (call $put (local.get $o) (i32.const 105)))
        (local.set $o (call $put (local.get $o) (i32.const 34)))
        (local.set $o (call $put (local.get $o) (i32.const 58)))
        (local.set $o (call $put (local.get $o) (i32.add (i32.const 48) (local.get $i))))
        (memory.copy (local.get $o) (i32.const 1000) (i32.const 13))
        (local.set $o (i32.add (local.get $o) (i32.const 13)))
        (memory.copy (local.get $o) (local.get $start) (i32.sub (local.get $p) (local.get $start)))
        (local.set $o (i32.add (local.get $o) (i32.sub (local.get $p) (local.get $start))))
        (local.set $o (call $put (local.get $o) (i32.const 125)))
        (local.set $o (call $put (local.get $o) (i32.const 10)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $rec)))
    (i32.sub (local.get $o) (i32.const 524288))))
"#;

fn file(reference: &str, path: &str) -> Endpoint {
    Endpoint::Connector {
        reference: reference.into(),
        spec: Connector::File(FileConnector {
            path: path.into(),
            format: None,
            follow: Some(false),
            mode: None,
            delimiter: None,
        }),
    }
}

fn plan(root: &Path) -> FlowPlan {
    FlowPlan {
        name: "wild".into(),
        wasm: root.join("guest.wasm"),
        vars: Default::default(),
        input: file("files.in", "in.jsonl"),
        outputs: vec![file("files.out", "out.jsonl")],
    }
}

/// Runs the flow once (to the end of its input) on a 300 ms deadline.
async fn check(db: &Db, root: &Path) -> RunReport {
    check_with(
        db,
        root,
        QueueSettings {
            batch_size: 4,
            linger: Duration::from_millis(10),
            workers: 1,
            max_attempts: 2,
            batch_deadline: Duration::from_millis(300),
            max_record_bytes: 1 << 20,
            heartbeat: weavster_runtime::HEARTBEAT,
        },
    )
    .await
}

async fn check_with(db: &Db, root: &Path, settings: QueueSettings) -> RunReport {
    let mut host = weavster_host::Host::new().expect("host");
    host.batch_deadline = settings.batch_deadline;
    let opts = RunOptions {
        once: true,
        settings,
        root: root.to_path_buf(),
        project: "wild".into(),
        metrics: Metrics::new(vec![("wild".into(), vec!["files.out".into()])]),
        metrics_addr: None,
        from_start: false,
    };
    weavster_runtime::run(db, &host, vec![plan(root)], opts, std::future::pending())
        .await
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_and_crashing_records_are_dead_lettered_the_rest_delivered() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().to_path_buf();
    let server = weavster_queue_server::Embedded::start(&weavster_queue_server::Options::new(
        root.join(".weavster/postgres"),
    ))
    .await
    .expect("embedded PostgreSQL");
    let db = Db::connect(&server.url(), 8, Duration::from_secs(10))
        .await
        .expect("connect");

    let wasm = root.join("guest.wasm");
    std::fs::write(&wasm, GUEST).expect("write guest");
    std::fs::write(
        root.join("in.jsonl"),
        "{\"n\":1}\n{\"n\":2}\n{\"loop\":true}\n{\"n\":3}\n{\"trap\":true}\n{\"n\":4}\n{\"n\":5}\n",
    )
    .expect("write input");
    let report = check(&db, &root).await;

    let out = std::fs::read_to_string(root.join("out.jsonl")).expect("output");
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "{\"n\":1}",
            "{\"n\":2}",
            "{\"n\":3}",
            "{\"n\":4}",
            "{\"n\":5}"
        ]
    );
    let counts = &report.flows["wild"].counts;
    assert_eq!(
        counts.dead,
        BTreeMap::from([("deadline".to_string(), 1), ("trap".to_string(), 1)])
    );
    assert_eq!(report.status(), "dead_letters");
    let dead = db
        .dead_letters(&DeadLetterFilter::default(), 10)
        .await
        .expect("dead letters");
    let mut by_stage: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            (
                d.stage.clone(),
                String::from_utf8_lossy(&d.record).to_string(),
            )
        })
        .collect();
    by_stage.sort();
    assert_eq!(
        by_stage,
        [
            ("deadline".to_string(), "{\"loop\":true}".to_string()),
            ("trap".to_string(), "{\"trap\":true}".to_string())
        ]
    );
    assert!(dead.iter().any(|d| d.message.contains("deadline")));

    // A second run reads nothing again: the input's position was stored.
    let again = check(&db, &root).await;
    assert_eq!(again.flows["wild"].counts.read, 0);
    assert_eq!(
        std::fs::read_to_string(root.join("out.jsonl"))
            .expect("output")
            .lines()
            .count(),
        5
    );
    db.pool().close().await;
    server.stop().await.expect("stop");
}

/// A batch that works for longer than a worker may stay silent (here: 3 ×
/// 1 s heartbeats; apalis counts whole seconds) is not taken over by the flow's other worker while it
/// runs: heartbeats do not depend on the batch yielding. Each batch runs
/// once, and every record is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_is_not_run_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().to_path_buf();
    let server = weavster_queue_server::Embedded::start(&weavster_queue_server::Options::new(
        root.join(".weavster/postgres"),
    ))
    .await
    .expect("embedded PostgreSQL");
    let db = Db::connect(&server.url(), 8, Duration::from_secs(10))
        .await
        .expect("connect");
    std::fs::write(root.join("guest.wasm"), GUEST).expect("write guest");
    std::fs::write(
        root.join("in.jsonl"),
        "{\"s\":1}\n{\"s\":2}\n{\"n\":3}\n{\"n\":4}\n{\"s\":5}\n{\"n\":6}\n",
    )
    .expect("write input");
    let report = check_with(
        &db,
        &root,
        QueueSettings {
            batch_size: 3,
            linger: Duration::from_millis(10),
            workers: 2,
            max_attempts: 3,
            batch_deadline: Duration::from_secs(600),
            max_record_bytes: 1 << 20,
            heartbeat: Duration::from_secs(1),
        },
    )
    .await;
    let out = std::fs::read_to_string(root.join("out.jsonl")).expect("output");
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "{\"n\":3}",
            "{\"n\":4}",
            "{\"n\":6}",
            "{\"s\":1}",
            "{\"s\":2}",
            "{\"s\":5}"
        ],
        "{report:?}"
    );
    assert_eq!(report.status(), "ok", "{report:?}");
    // Each batch was run once: not taken over while it ran.
    let counts = &report.flows["wild"].counts;
    assert_eq!((counts.batches, counts.processed), (2, 6), "{report:?}");
    db.pool().close().await;
    server.stop().await.expect("stop");
}

/// A compiled flow that answers an invalid outcome (a bug in Weavster):
/// its batch is dead-lettered at once as `internal`, with a message asking
/// for a report, never retried; other batches go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_guest_answer_is_an_internal_dead_letter_not_a_retry() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().to_path_buf();
    let server = weavster_queue_server::Embedded::start(&weavster_queue_server::Options::new(
        root.join(".weavster/postgres"),
    ))
    .await
    .expect("embedded PostgreSQL");
    let db = Db::connect(&server.url(), 8, Duration::from_secs(10))
        .await
        .expect("connect");
    std::fs::write(root.join("guest.wasm"), GUEST).expect("write guest");
    std::fs::write(
        root.join("in.jsonl"),
        "{\"n\":1}\n{\"n\":2}\n{\"b\":3}\n{\"n\":4}\n{\"n\":5}\n",
    )
    .expect("write input");
    let report = check(&db, &root).await;
    let out = std::fs::read_to_string(root.join("out.jsonl")).expect("output");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["{\"n\":5}"]);
    let counts = &report.flows["wild"].counts;
    assert_eq!(counts.dead, BTreeMap::from([("internal".to_string(), 4)]));
    assert_eq!(counts.failed_batches, 0, "retried: {report:?}");
    let dead = db
        .dead_letters(&DeadLetterFilter::default(), 10)
        .await
        .expect("dead letters");
    assert!(
        dead.iter()
            .all(|d| d.attempts == 1 && d.message.contains("bug in Weavster")),
        "{dead:#?}"
    );
    db.pool().close().await;
    server.stop().await.expect("stop");
}
