//! HTTP input (webhooks), end to end: the real binary listening on a free
//! loopback port, requests sent by a plain HTTP/1.1 client over TCP, the
//! embedded queue. Every request that got a 2xx is counted in the output;
//! refused requests store nothing.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Queue, project, records, spawn_logged, wait_bounded, weavster};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PROJECT: &str = "name: http_test\nprofile: default\n";
const PROFILES: &str =
    "default:\n  target: dev\n  outputs:\n    dev:\n      runtime:\n        queue: embedded\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One request on its own connection (`Connection: close`).
fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server refusing early may close before the body is in.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    send(port, "POST", path, headers, body).expect("request")
}

/// Waits until the server answers (404 on an unknown path).
/// Waits until the port answers and every input path in `paths` is
/// registered: a path whose flow is still starting answers 503 ("starting"),
/// a registered one 405 to a GET.
fn wait_listening(port: u16, paths: &[&str], log: &Path) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let ready = send(port, "GET", "/nothing", &[], b"").is_ok_and(|r| r.status == 404)
            && paths.iter().all(|p| match send(port, "GET", p, &[], b"") {
                // An input's path is never "not found", even while starting.
                Ok(r) => {
                    assert_ne!(
                        r.status, 404,
                        "{p} answered 404 while its flow started: {r:?}"
                    );
                    r.status == 405
                }
                Err(_) => false,
            });
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "not listening:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Waits until `path` holds `n` lines (or 60 s pass); their count.
fn wait_lines(path: &Path, n: usize) -> usize {
    let started = Instant::now();
    loop {
        let have = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
        if have >= n || started.elapsed() > Duration::from_secs(60) {
            return have;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn sign(secret: &str, signed: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(signed.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn webhook_project(port: u16) -> (tempfile::TempDir, Vec<(String, String)>) {
    let connectors = format!(
        r#"a:
  type: http
  listen: "127.0.0.1:{port}"
  path: /a
  max_body_bytes: 1000
  dedupe_header: X-Delivery
  metadata: _http
  metadata_headers: [x-delivery]
  response: {{ status: 202, body: "" }}
  auth: {{ bearer: [t1, t2] }}
b:
  type: http
  listen: "127.0.0.1:{port}"
  path: /b
  auth:
    hmac: {{ header: X-Sig, secrets: [old, new], prefix: "sha256=", timestamp_header: X-Ts }}
out_a: {{ type: file, path: a.jsonl }}
out_b: {{ type: file, path: b.jsonl }}
"#
    );
    project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("flows/fa.yaml", "input: c.a\noutputs:\n  - to: c.out_a\n"),
        ("flows/fb.yaml", "input: c.b\noutputs:\n  - to: c.out_b\n"),
    ])
}

/// Two flows on one listener: bodies (object, array, NDJSON, gzip) are
/// stored whole; a wrong or missing token, a bad or stale signature, an
/// oversized body, a gzip bomb, bad JSON, a non-object, a GET and an unknown
/// path are refused with their status and store nothing; a retried
/// delivery id is acknowledged once more but stored once; request metadata
/// reaches the record.
#[test]
fn webhooks_store_what_they_acknowledge_and_nothing_else() {
    let port = free_port();
    let (tmp, env) = webhook_project(port);
    let dir = tmp.path();
    let out = weavster(dir, &["compile"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = dir.join("run.log");
    let mut run = spawn_logged(dir, &["run"], &env, &log);
    wait_listening(port, &["/a", "/b"], &log);
    let auth = [("Authorization", "Bearer t2")];
    let ok = |r: Reply| {
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.body, "", "configured empty body");
    };
    ok(post(port, "/a", &auth, b"{\"id\":1,\"n\":1.50}"));
    ok(post(
        port,
        "/a",
        &auth,
        b"[{\"id\":2},{\"id\":3},\n{\"id\":4}]",
    ));
    ok(post(
        port,
        "/a",
        &[
            ("Authorization", "bearer t1"),
            ("Content-Type", "application/x-ndjson"),
        ],
        b"{\"id\":5}\n\n{\"id\":6}\n",
    ));
    ok(post(
        port,
        "/a",
        &[("Authorization", "Bearer t1"), ("Content-Encoding", "gzip")],
        &gzip(b"[{\"id\":7},{\"id\":8}]"),
    ));
    let delivered = [("Authorization", "Bearer t1"), ("X-Delivery", "d-1")];
    ok(post(port, "/a", &delivered, b"{\"id\":9}"));
    ok(post(port, "/a", &delivered, b"{\"id\":9}"));
    let refused: Vec<(Reply, u16, &str)> = vec![
        (
            post(
                port,
                "/a",
                &[("Authorization", "Bearer nope")],
                b"{\"id\":100}",
            ),
            401,
            "bad credentials",
        ),
        (
            post(port, "/a", &[], b"{\"id\":101}"),
            401,
            "missing Authorization",
        ),
        (
            post(port, "/a", &auth, &[b' '; 2000]),
            413,
            "over 1000 bytes",
        ),
        (
            post(
                port,
                "/a",
                &[("Authorization", "Bearer t1"), ("Content-Encoding", "gzip")],
                &gzip(&[b' '; 100_000]),
            ),
            413,
            "once decompressed",
        ),
        (
            post(port, "/a", &auth, b"[{\"id\":102},\n{\"id\" 103}]"),
            400,
            "line 2",
        ),
        (
            post(port, "/a", &auth, b"[{\"id\":104}, 5]"),
            400,
            "element 1",
        ),
        (
            send(port, "GET", "/a", &auth, b"").expect("get"),
            405,
            "POST",
        ),
        (post(port, "/nowhere", &auth, b"{}"), 404, "no input"),
    ];
    for (r, status, says) in &refused {
        assert_eq!(r.status, *status, "{r:?}");
        assert!(r.body.contains(says), "{says}: {r:?}");
    }
    assert!(
        refused[0].0.head.contains("www-authenticate: Bearer"),
        "{:?}",
        refused[0].0
    );
    // Signatures: of `{timestamp}.{body}`, any of the secrets, fresh.
    let now = chrono_now();
    let body = "{\"id\":200}";
    let good = sign("new", &format!("{now}.{body}"));
    let ts = now.to_string();
    assert_eq!(
        post(
            port,
            "/b",
            &[("X-Sig", &good), ("X-Ts", &ts)],
            body.as_bytes()
        )
        .status,
        200
    );
    let r = post(
        port,
        "/b",
        &[
            ("X-Sig", &sign("other", &format!("{now}.{body}"))),
            ("X-Ts", &ts),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        (r.status, r.body.contains("bad signature")),
        (401, true),
        "{r:?}"
    );
    let stale = (now - 3600).to_string();
    let r = post(
        port,
        "/b",
        &[
            ("X-Sig", &sign("old", &format!("{stale}.{body}"))),
            ("X-Ts", &stale),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        (r.status, r.body.contains("stale timestamp")),
        (401, true),
        "{r:?}"
    );
    let r = post(
        port,
        "/b",
        &[("X-Sig", &good), ("X-Ts", &ts)],
        b"{\"id\":201}",
    );
    assert_eq!(r.status, 401, "a signature of another body: {r:?}");
    // Exactly what was acknowledged, once.
    assert_eq!(wait_lines(&dir.join("a.jsonl"), 9), 9);
    assert_eq!(wait_lines(&dir.join("b.jsonl"), 1), 1);
    signal(run.id(), "-INT");
    wait_bounded(&mut run, Duration::from_secs(60), "weavster run");
    let a = records(&dir.join("a.jsonl"));
    let mut ids: Vec<i64> = a.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=9).collect::<Vec<_>>());
    let nine = a.iter().find(|r| r["id"] == 9).expect("9");
    assert_eq!(nine["_http"]["headers"]["x-delivery"], "d-1");
    assert_eq!(nine["_http"]["path"], "/a");
    assert_eq!(nine["_http"]["method"], "POST");
    assert!(
        std::fs::read_to_string(dir.join("a.jsonl"))
            .expect("a")
            .contains("\"n\":1.50"),
        "numbers keep their text"
    );
    assert_eq!(records(&dir.join("b.jsonl"))[0]["id"], 200);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// `kill -9` of `weavster run` while 4 clients post single-record requests:
/// every request that got a 2xx is delivered (by `run --once`, which drains
/// the queue without listening); the queue's database frozen mid-request
/// gives `503` and `Retry-After`, never a 2xx.
#[test]
fn every_acknowledged_request_survives_kill_nine() {
    let port = free_port();
    let connectors = format!(
        "in:\n  type: http\n  listen: \"127.0.0.1:{port}\"\n  store_timeout_ms: 1500\nout:\n  type: file\n  path: out.jsonl\n"
    );
    let (tmp, env) = project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("flows/hook.yaml", "input: c.in\noutputs:\n  - to: c.out\n"),
    ]);
    let dir = tmp.path();
    let queue = Queue::hold(dir);
    let out = weavster(dir, &["compile"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = dir.join("run.log");
    let mut run = spawn_logged(dir, &["run"], &env, &log);
    wait_listening(port, &["/"], &log);
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for i in 0..100_000i64 {
                    let id = c * 1_000_000 + i;
                    match send(
                        port,
                        "POST",
                        "/",
                        &[],
                        format!("{{\"id\":{id}}}").as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 => acked.lock().expect("lock").push(id),
                        Ok(r) => panic!("unexpected {r:?}"),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acked.lock().expect("lock").len() < 2000 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    run.kill().expect("kill -9");
    let _ = run.wait();
    for c in clients {
        c.join().expect("client");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 2000,
        "only {} requests acknowledged",
        acked.len()
    );
    let out = weavster(dir, &["run", "--once"], &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let got: std::collections::BTreeSet<i64> = records(&dir.join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    let lost: Vec<&i64> = acked.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged requests lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // The queue's database frozen: 503 with Retry-After, not a 2xx.
    let log = dir.join("run2.log");
    let mut run = spawn_logged(dir, &["run"], &env, &log);
    wait_listening(port, &["/"], &log);
    assert_eq!(post(port, "/", &[], b"{\"id\":-1}").status, 200);
    let pids = queue.server_pids();
    for &pid in &pids {
        signal(pid, "-STOP");
    }
    let r = send(port, "POST", "/", &[], b"{\"id\":-2}");
    for &pid in &pids {
        signal(pid, "-CONT");
    }
    let r = r.expect("answer");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.head.to_ascii_lowercase().contains("retry-after: 5"),
        "{r:?}"
    );
    signal(run.id(), "-INT");
    wait_bounded(&mut run, Duration::from_secs(60), "weavster run");
}

/// What the scripted server saw of a request.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    authorization: String,
    body: String,
    at: Instant,
}

/// A scripted HTTP server on a free port: `answer(n, &seen)` gives the
/// status, extra headers and body of the n-th request (0-based), and may
/// sleep to make the client time out.
fn scripted(
    answer: impl Fn(usize, &Seen) -> (u16, Vec<(String, String)>, String) + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let log = log.clone();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let head_end = loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let len: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let s = Seen {
                    key: header("idempotency-key"),
                    authorization: header("authorization"),
                    body: String::from_utf8_lossy(&buf[head_end..]).to_string(),
                    at: Instant::now(),
                };
                let n = {
                    let mut l = log.lock().expect("lock");
                    l.push(s.clone());
                    l.len() - 1
                };
                let (status, headers, body) = answer(n, &s);
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = conn.write_all(out.as_bytes());
            });
        }
    });
    (port, seen)
}

fn sink_project(port: u16, extra: &str, n: usize) -> (tempfile::TempDir, Vec<(String, String)>) {
    let input: String = (0..n)
        .map(|i| {
            if i == 500 {
                format!("{{\"id\":{i},\"bad\":true}}\n")
            } else {
                format!("{{\"id\":{i}}}\n")
            }
        })
        .collect();
    let connectors = format!(
        "in:\n  type: file\n  path: in.jsonl\napi:\n  type: http\n  url: \"http://127.0.0.1:{port}/ingest\"\n  token: s3cret-token\n{extra}"
    );
    project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("in.jsonl", &input),
        ("flows/push.yaml", "input: c.in\noutputs:\n  - to: c.api\n"),
    ])
}

/// The ids a server accepted (bodies are JSON arrays).
fn accepted_ids(seen: &[Seen], ok: impl Fn(usize) -> bool) -> Vec<i64> {
    let mut ids = Vec::new();
    for (n, s) in seen.iter().enumerate() {
        if ok(n) {
            let v: serde_json::Value = serde_json::from_str(&s.body).expect("a JSON array");
            ids.extend(
                v.as_array()
                    .expect("array")
                    .iter()
                    .map(|r| r["id"].as_i64().expect("id")),
            );
        }
    }
    ids.sort_unstable();
    ids
}

/// The HTTP output: a request that hangs times out and is retried, a 429
/// with an HTTP-date `Retry-After` is waited for, with the same
/// `Idempotency-Key` each time; a batch the server refuses (400) because
/// of one record is bisected: 999 delivered, that one dead-lettered with
/// the server's status and words.
#[test]
fn http_output_retries_and_dead_letters_only_the_refused_record() {
    let (port, seen) = scripted(|n, s| {
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2500));
            return (200, vec![], String::new());
        }
        if n == 1 {
            let at = chrono_now() + 1;
            return (
                429,
                vec![("Retry-After".into(), http_date(at))],
                "slow down".into(),
            );
        }
        if s.body.contains("\"bad\":true") {
            return (400, vec![], "{\"error\":\"bad record\"}".into());
        }
        (200, vec![], "{}".into())
    });
    let (tmp, env) = sink_project(port, "  timeout_ms: 1000\n", 1000);
    let dir = tmp.path();
    let out = weavster(dir, &["run", "--once"], &env);
    assert_eq!(
        out.code, 1,
        "a record dead-lettered: {}{}",
        out.stdout, out.stderr
    );
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() >= 4, "{seen:#?}");
    assert_eq!(
        seen[0].key, seen[1].key,
        "the retried request keeps its key"
    );
    assert_eq!(seen[1].key, seen[2].key);
    assert!(
        seen.iter()
            .all(|s| s.authorization == "Bearer s3cret-token")
    );
    // Accepted: every 200 after the first two (the hung one was answered
    // too late for the client: counted as not written).
    let ids = accepted_ids(&seen, |n| n >= 2 && !seen[n].body.contains("\"bad\":true"));
    let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 999, "999 delivered");
    assert!(!distinct.contains(&500));
    let dead = common::dead_letters(dir, &env);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(
        dead[0]["message"]
            .as_str()
            .expect("message")
            .contains("HTTP 400"),
        "{dead:#?}"
    );
    assert!(
        dead[0]["message"]
            .as_str()
            .expect("message")
            .contains("bad record")
    );
    assert!(
        !out.stderr.contains("s3cret-token"),
        "the token is never printed"
    );
}

fn http_date(unix: i64) -> String {
    // IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{unix}"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A 401 stops the flow with a clear error and dead-letters nothing; after
/// the credentials are fixed (here: the server accepts again) the queued
/// batch goes through.
#[test]
fn http_output_stops_on_refused_credentials_and_resumes_after_the_fix() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let (port, seen) = scripted(move |_, _| {
        if gate.load(std::sync::atomic::Ordering::SeqCst) {
            (200, vec![], String::new())
        } else {
            (401, vec![], "who are you".into())
        }
    });
    let (tmp, env) = sink_project(port, "", 50);
    let dir = tmp.path();
    let out = weavster(dir, &["run", "--once"], &env);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);
    assert!(
        common::dead_letters(dir, &env).is_empty(),
        "nothing dead-lettered"
    );
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = weavster(dir, &["run", "--once"], &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let seen = seen.lock().expect("lock").clone();
    let last = seen.last().expect("a request");
    let v: serde_json::Value = serde_json::from_str(&last.body).expect("array");
    assert_eq!(
        v.as_array().expect("array").len(),
        50,
        "the queued batch, whole"
    );
}

/// A redirect answering a write is never followed: a 302 (which a client
/// following it would resend as a body-less GET) and a 307 to the same
/// address (a loop) each stop the flow with one request sent, the error
/// naming where it points, nothing counted written or dead-lettered; once
/// the server accepts, the queued batch is delivered whole, once.
#[test]
fn http_output_never_follows_a_redirect_and_stops_instead() {
    for (status, location) in [(302u16, "/elsewhere?api_key=k"), (307, "/ingest")] {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = open.clone();
        let (port, seen) = scripted(move |_, _| {
            if gate.load(std::sync::atomic::Ordering::SeqCst) {
                (200, vec![], String::new())
            } else {
                (
                    status,
                    vec![("Location".into(), location.into())],
                    String::new(),
                )
            }
        });
        let (tmp, env) = sink_project(port, "", 40);
        let dir = tmp.path();
        let out = weavster(dir, &["run", "--once"], &env);
        assert_ne!(out.code, 0, "{status}: {}{}", out.stdout, out.stderr);
        let path = location.split('?').next().expect("path");
        assert!(
            out.stderr.contains(&format!(
                "HTTP {status} redirect to http://127.0.0.1:{port}{path}"
            )),
            "{status}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("api_key=k"), "the query is not shown");
        assert_eq!(
            seen.lock().expect("lock").len(),
            1,
            "{status}: one request, not followed"
        );
        assert!(common::dead_letters(dir, &env).is_empty(), "{status}");
        open.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = weavster(dir, &["run", "--once"], &env);
        assert_eq!(out.code, 0, "{status}: {}{}", out.stdout, out.stderr);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "{status}: {seen:#?}");
        assert_eq!(
            accepted_ids(&seen, |n| n == 1),
            (0..40).collect::<Vec<i64>>()
        );
    }
}

/// `statuses` moves a status to another class (409: retried, not
/// dead-lettered), and a `Retry-After` longer than `max_retry_after_s`
/// sends the batch back to the queue due when the server asked (not after
/// the queue's 1 s backoff): every record delivered once, nothing
/// dead-lettered.
#[test]
fn http_output_statuses_are_configurable_and_a_long_retry_after_reschedules() {
    let (port, seen) = scripted(|n, _| match n {
        0 => (409, vec![], "conflict, try later".into()),
        1 => (503, vec![("Retry-After".into(), "3".into())], "".into()),
        _ => (200, vec![], String::new()),
    });
    let (tmp, env) = sink_project(
        port,
        "  max_retry_after_s: 1
  statuses: { retry: [409] }
",
        50,
    );
    let dir = tmp.path();
    let out = weavster(dir, &["run", "--once"], &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("due again"), "{}", out.stderr);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "409, 503, 200: {seen:#?}");
    let waited = seen[2].at.duration_since(seen[1].at);
    assert!(
        waited >= Duration::from_millis(2900),
        "the batch came back after {waited:?}, before the server's Retry-After of 3 s"
    );
    assert_eq!(
        accepted_ids(&seen, |n| n == 2),
        (0..50).collect::<Vec<i64>>()
    );
    assert!(common::dead_letters(dir, &env).is_empty());
    assert!(
        seen.iter().all(|s| s.key == seen[0].key),
        "one Idempotency-Key"
    );
}

/// HTTPS end to end: a flow posts over TLS (trusting the test CA through
/// `tls.ca_file`) to another flow's webhook served with `tls.cert_file`
/// and `key_file`; curl, an independent client, posts too. Every record
/// arrives once; a plain-HTTP request to the TLS port stores nothing.
#[test]
fn https_webhook_receives_from_an_https_output() {
    let port = free_port();
    let certs = tempfile::tempdir().expect("certs");
    let ca = common::certificates(certs.path(), "server");
    let cert = certs.path().join("server.crt");
    let key = certs.path().join("server.key");
    let connectors = format!(
        r#"in: {{ type: file, path: in.jsonl }}
out_https:
  type: http
  url: "https://localhost:{port}/hook"
  encoding: ndjson
  tls: {{ ca_file: "{ca}" }}
hook:
  type: http
  listen: "127.0.0.1:{port}"
  path: /hook
  tls: {{ cert_file: "{cert}", key_file: "{key}" }}
got: {{ type: file, path: got.jsonl }}
"#,
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    );
    let input: String = (0..500).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let (tmp, env) = project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        ("connectors/c.yaml", &connectors),
        ("in.jsonl", &input),
        (
            "flows/push.yaml",
            "input: c.in\noutputs:\n  - to: c.out_https\n",
        ),
        (
            "flows/receive.yaml",
            "input: c.hook\noutputs:\n  - to: c.got\n",
        ),
    ]);
    let dir = tmp.path();
    let out = weavster(dir, &["validate"], &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = weavster(dir, &["compile"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = dir.join("run.log");
    let mut run = spawn_logged(dir, &["run"], &env, &log);
    let have = wait_lines(&dir.join("got.jsonl"), 500);
    assert_eq!(
        have,
        500,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let curl = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"id\":\"curl\"}",
            &format!("https://localhost:{port}/hook"),
        ])
        .output()
        .expect("curl");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(wait_lines(&dir.join("got.jsonl"), 501), 501);
    // Plain HTTP to the TLS port: no HTTP answer, nothing stored.
    let plain = send(port, "POST", "/hook", &[], b"{\"id\":\"plain\"}");
    assert!(!matches!(&plain, Ok(r) if r.status < 300), "{plain:?}");
    signal(run.id(), "-INT");
    wait_bounded(&mut run, Duration::from_secs(60), "weavster run");
    let ids: Vec<String> = records(&dir.join("got.jsonl"))
        .iter()
        .map(|r| r["id"].to_string())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (501, 501), "each once");
    assert!(!ids.contains(&"\"plain\"".to_string()));
}
