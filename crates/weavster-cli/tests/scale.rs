//! Scale-out: several continuous `weavster run` processes on one external
//! PostgreSQL share a flow's work; one reads the source at a time and
//! another takes over when it dies (docs/runtime.md, "Scaling out").

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{project, psql_at, weavster};
use serde_json::Value;

const N: usize = 300_000;
const CHUNK: usize = 10_000;

fn spawn(dir: &Path, env: &[(String, String)], log: &Path, metrics: &str) -> Child {
    common::command(dir, &["run", "--metrics-addr", metrics], env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn weavster run")
}

/// The pid of the process whose session holds the flow's source lock
/// (sessions are named `weavster/<pid>`), if any.
fn reader(url: &str) -> Option<u32> {
    let out = psql_at(
        url,
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("weavster/")?.parse().ok())
}

/// How many times each id was delivered.
fn delivered(out: &Path) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    for line in text.lines() {
        // A line being written by a live process may be cut: counted later.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        assert_eq!(v["seen"], true, "{line}");
        *seen.entry(v["id"].as_u64().expect("id")).or_insert(0) += 1;
    }
    seen
}

fn append(path: &Path, from: usize, to: usize) {
    let text: String = (from..to).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("input");
    f.write_all(text.as_bytes()).expect("append");
}

/// `in` of the flow in a process's closing summary (the work it did).
fn processed(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains(" tag "))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn three_replicas_share_the_work_and_survive_losing_the_reader_and_another() {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let pg_dir = tempfile::tempdir().expect("pg dir");
    let server = rt
        .block_on(weavster_queue_server::Embedded::start(
            &weavster_queue_server::Options::new(pg_dir.path().join("postgres")),
        ))
        .expect("external PostgreSQL");
    let url = server.url();
    let (tmp, mut env) = project(&[
        (
            "weavster.yaml",
            "name: replicas\nruntime: { queue: \"{{ env_var('QUEUE_URL') }}\", batch_size: 500, workers: 2 }\n",
        ),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl, follow: true }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        (
            "flows/tag.yaml",
            "input: files.input\ntransforms:\n  - set: { seen: true }\noutputs:\n  - to: files.output\n",
        ),
        ("data/in.jsonl", ""),
    ]);
    env.push(("QUEUE_URL".into(), url.clone()));
    let dir = tmp.path();
    assert_eq!(weavster(dir, &["compile"], &env).code, 0);
    let input = dir.join("data/in.jsonl");
    let out = dir.join("out/out.jsonl");
    let logs: Vec<_> = (0..3)
        .map(|i| dir.join(format!("replica{i}.log")))
        .collect();
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").to_string()
        })
        .collect();
    let mut procs: Vec<Option<Child>> = logs
        .iter()
        .zip(&addrs)
        .map(|(l, a)| Some(spawn(dir, &env, l, a)))
        .collect();
    // `weavster health` (the image's HEALTHCHECK) asks a run's /ready.
    let health = |i: usize| {
        let url = format!("http://{}/ready", addrs[i]);
        weavster(dir, &["health", "--url", &url], &env).code
    };
    let pids: Vec<u32> = procs
        .iter()
        .map(|p| p.as_ref().expect("child").id())
        .collect();
    let log_text = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();

    // Records arrive over time.
    let mut written = 0;
    let feed = |written: &mut usize, chunks: usize| {
        for _ in 0..chunks {
            if *written >= N {
                return;
            }
            append(&input, *written, *written + CHUNK);
            *written += CHUNK;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    feed(&mut written, 10);
    let started = Instant::now();
    while delivered(&out).len() < 50_000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "nothing flows:\n{}",
            log_text(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    for i in 0..3 {
        let started = Instant::now();
        while health(i) != 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "replica {i} never ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Kill -9 the reader: another one takes the source over.
    let first = reader(&url).expect("a process holds the source lock");
    let k = pids.iter().position(|p| *p == first).expect("one of ours");
    let killed_at = Instant::now();
    kill9(procs[k].as_mut().expect("child"));
    procs[k] = None;
    assert_eq!(health(k), 1, "a killed replica is not healthy");
    let second = loop {
        if let Some(p) = reader(&url).filter(|p| *p != first) {
            break p;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no process took the source over"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let takeover = killed_at.elapsed();
    eprintln!("source taken over by {second} after {takeover:?}");
    feed(&mut written, 10);

    // Kill -9 one more (not the new reader).
    let j = (0..3)
        .find(|&i| procs[i].is_some() && pids[i] != second)
        .expect("a third process");
    kill9(procs[j].as_mut().expect("child"));
    procs[j] = None;
    feed(&mut written, 100);
    assert_eq!(written, N);

    // Everything arrives: the survivor re-runs the dead processes' jobs
    // after their heartbeats stop.
    let started = Instant::now();
    loop {
        let seen = delivered(&out);
        if seen.len() == N {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{} of {N} delivered; survivor:\n{}",
            seen.len(),
            log_text(pids.iter().position(|p| *p == second).expect("survivor"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = pids.iter().position(|p| *p == second).expect("survivor");
    let mut survivor = procs[s].take().expect("survivor runs");
    let term = Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = common::wait_bounded(&mut survivor, Duration::from_secs(60), "survivor");
    assert!(status.success(), "{}", log_text(s));
    let seen = delivered(&out);
    let dups: usize = seen.values().map(|n| n - 1).sum();
    assert_eq!(seen.len(), N);
    assert!(seen.keys().all(|id| (*id as usize) < N));
    eprintln!("{N} delivered, {dups} twice (at least once across kill -9)");

    // The work was shared: every replica finished batches (the killed
    // ones' finished jobs keep their worker's name).
    let per_worker = psql_at(
        &url,
        // Worker names are `<flow>@<host>:<pid>:<run>:<n>`.
        "SELECT count(DISTINCT split_part(split_part(lock_by, '@', 2), ':', 2)) \
         FROM apalis.jobs WHERE status = 'Done'",
    );
    let workers: usize = String::from_utf8_lossy(&per_worker.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    eprintln!(
        "finished jobs by {workers} processes; the survivor processed {}",
        processed(&log_text(s))
    );
    assert!(processed(&log_text(s)) > 0, "{}", log_text(s));
    assert!(
        workers >= 3,
        "the replicas did not share the work ({workers} processes finished jobs)"
    );
    rt.block_on(server.stop()).expect("stop");
}
