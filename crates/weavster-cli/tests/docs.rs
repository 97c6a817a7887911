//! `weavster docs`: the site of every example project, opened in headless
//! Chromium (Debian's, installed by scripts/setup.sh). The expected graph
//! comes from `weavster ls --output json`, not from the site's own
//! lineage.json; every request the browser makes beyond loopback goes to a
//! recording proxy and fails the test; screenshots are kept under
//! `target/test-artifacts/docs/`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{example, project, weavster};
use serde_json::Value;

/// A proxy that answers nothing and records every request line: Chromium
/// sends it whatever is not loopback.
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 512];
                let n = c.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    // A connection opened ahead and closed unused: no request.
                    continue;
                }
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                s.lock().expect("lock").push(line);
            }
        });
        Recorder { addr, seen }
    }

    /// What went beyond loopback, less the browser's own service traffic
    /// (it updates components, fetches the time, checks sign-in and
    /// autofill whatever page is open; a page's CDN, font or analytics
    /// request is none of these and is kept).
    fn requests(&self) -> Vec<String> {
        const BROWSER_OWN: &[&str] = &[
            "clients2.google.com/time/",
            "update.googleapis.com",
            "accounts.google.com:443",
            "content-autofill.googleapis.com:443",
            "optimizationguide-pa.googleapis.com:443",
        ];
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| !BROWSER_OWN.iter().any(|h| r.contains(h)))
            .cloned()
            .collect()
    }
}

/// Chromium, headless, every non-loopback request through `proxy`.
fn chromium(proxy: &Recorder, profile: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter",
        "--no-pings",
        "--hide-scrollbars",
    ])
    .arg(format!("--proxy-server=http://{}", proxy.addr))
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdin(Stdio::null());
    let out = cmd
        .output()
        .expect("chromium (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The graph the project implies, by `ls --output json`: node ids and
/// (from, to) links, one per pair.
fn expected_graph(
    dir: &Path,
    env: &[(String, String)],
) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let out = weavster(dir, &["ls", "--output", "json"], env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m: Value = serde_json::from_str(&out.stdout).expect("ls json");
    let mut nodes = BTreeSet::new();
    let mut edges = BTreeSet::new();
    for c in m["connectors"].as_array().expect("connectors") {
        nodes.insert(format!("connector:{}", c["ref"].as_str().expect("ref")));
    }
    for f in m["flows"].as_array().expect("flows") {
        let name = f["name"].as_str().expect("name");
        let me = format!("flow:{name}");
        nodes.insert(me.clone());
        let input = f["input"].as_str().expect("input");
        if !input.starts_with("bridge.") {
            edges.insert((format!("connector:{input}"), me.clone()));
        }
        for o in f["outputs"].as_array().expect("outputs") {
            let to = o["to"].as_str().expect("to");
            let target = match to.strip_prefix("bridge.") {
                Some(flow) => format!("flow:{flow}"),
                None => format!("connector:{to}"),
            };
            edges.insert((me.clone(), target));
        }
    }
    (nodes, edges)
}

/// `attr="value"` of every element whose opening tag contains `marker`.
fn attrs(dom: &str, marker: &str, attr: &str) -> Vec<String> {
    dom.match_indices(marker)
        .filter_map(|(i, _)| {
            let tag_end = dom[i..].find('>')? + i;
            let tag = &dom[i..tag_end];
            let key = format!("{attr}=\"");
            let start = tag.find(&key)? + key.len();
            let len = tag[start..].find('"')?;
            Some(
                tag[start..start + len]
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("target"))
        .join("test-artifacts/docs");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Generates the site of `dir`, opens it (index and every page) in
/// Chromium and checks what the browser built.
fn check(name: &str, dir: &Path, env: &[(String, String)]) -> String {
    let site = dir.join("site");
    let out = weavster(dir, &["docs", "generate", "--output", "site"], env);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (nodes, edges) = expected_graph(dir, env);

    let proxy = Recorder::start();
    let profile = tempfile::tempdir().expect("profile");
    let index = format!("file://{}", site.join("index.html").display());
    let dom = chromium(&proxy, profile.path(), &["--dump-dom", &index]);

    let drawn: Vec<String> = attrs(&dom, "<g class=\"node ", "data-node");
    assert_eq!(
        drawn.iter().cloned().collect::<BTreeSet<_>>(),
        nodes,
        "{name}: one box per flow and connector"
    );
    assert_eq!(drawn.len(), nodes.len(), "{name}: no box twice");
    let from = attrs(&dom, "<g class=\"edge", "data-from");
    let to = attrs(&dom, "<g class=\"edge", "data-to");
    let links: Vec<(String, String)> = from.into_iter().zip(to).collect();
    assert_eq!(
        links.iter().cloned().collect::<BTreeSet<_>>(),
        edges,
        "{name}: one edge per link"
    );
    assert_eq!(links.len(), edges.len(), "{name}: no edge twice");
    // Every flow and connector is in the index's tables, with a page that
    // opens and names it.
    for id in &nodes {
        let (kind, node) = id.split_once(':').expect("id");
        assert!(
            dom.contains(&format!("data-kind=\"{kind}\" data-name=\"{node}\"")),
            "{name}: {id} is not listed"
        );
        let page = site.join(format!("{kind}s/{node}.html"));
        let page_dom = chromium(
            &proxy,
            profile.path(),
            &["--dump-dom", &format!("file://{}", page.display())],
        );
        assert!(
            page_dom.contains(&format!("<h1 class=\"{kind}-name\">{node}</h1>")),
            "{name}: the page of {id} does not name it"
        );
    }
    let shot = artifacts().join(format!("{name}.png"));
    chromium(
        &proxy,
        profile.path(),
        &[
            "--window-size=1280,1600",
            &format!("--screenshot={}", shot.display()),
            &index,
        ],
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "{name}: no screenshot at {}",
        shot.display()
    );
    assert_eq!(
        proxy.requests(),
        Vec::<String>::new(),
        "{name}: the site made requests beyond loopback"
    );
    // Nothing in the files points anywhere but the site itself.
    for f in files(&site) {
        let text = std::fs::read_to_string(&f).expect("read");
        for url in ["http://", "https://", "//cdn", "src=\"//"] {
            for (i, _) in text.match_indices(url) {
                let rest = &text[i..];
                assert!(
                    rest.starts_with("http://www.w3.org/2000/svg"),
                    "{name}: {} refers to {}",
                    f.display(),
                    &rest[..rest.len().min(60)]
                );
            }
        }
    }
    dom
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        if e.path().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn every_example_project_has_a_site_the_browser_draws_completely() {
    let mut names: Vec<String> = std::fs::read_dir(common::repo().join("flows-examples"))
        .expect("flows-examples")
        .flatten()
        .filter(|e| e.path().join("weavster.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let (tmp, env) = example(&name);
        check(&name, tmp.path(), &env);
    }
}

const SECRET: &str = "tok-9f2c41d7e8a3b6";
const PASSWORD: &str = "pw-51c3a9e0d2f4";

#[test]
fn no_secret_reaches_the_site_and_test_results_show_on_flow_pages() {
    let (tmp, mut env) = project(&[
        ("weavster.yaml", "name: shop\n"),
        (
            "connectors/api.yaml",
            "orders:\n  type: http\n  url: https://api.example.invalid/orders\n  headers:\n    Authorization: \"Bearer {{ env_var('API_TOKEN') }}\"\n",
        ),
        (
            "connectors/db.yaml",
            "orders:\n  type: postgres\n  url: \"postgres://app:{{ env_var('DB_PASSWORD') }}@db.invalid/shop\"\n  table: orders\n",
        ),
        (
            "connectors/files.yaml",
            "raw:\n  type: file\n  path: data/in.jsonl\n  format: jsonl\nunused:\n  type: file\n  path: data/other.jsonl\n  format: jsonl\n",
        ),
        (
            "flows/orders.yaml",
            "description: Orders to the API and the database\ninput: files.raw\ntransforms:\n  - set: { total: float(amount) * 2 }\noutputs:\n  - to: api.orders\n  - to: db.orders\n    when: total > 10\n",
        ),
        (
            "tests/orders/doubles.yaml",
            "input: [{amount: '2'}]\nexpect:\n  api.orders: [{amount: '2', total: 4.0}]\n",
        ),
        (
            "tests/orders/wrong.yaml",
            "input: [{amount: '2'}]\nexpect:\n  api.orders: [{amount: '2', total: 5.0}]\n",
        ),
        ("data/in.jsonl", ""),
    ]);
    env.push(("API_TOKEN".into(), SECRET.into()));
    env.push(("DB_PASSWORD".into(), PASSWORD.into()));
    let out = weavster(tmp.path(), &["test"], &env);
    assert_eq!(out.code, 1, "one fixture is wrong:\n{}", out.stdout);
    let dom = check("secrets", tmp.path(), &env);
    for f in files(&tmp.path().join("site")) {
        let bytes = std::fs::read(&f).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(SECRET) && !text.contains(PASSWORD),
            "{} shows a secret",
            f.display()
        );
    }
    assert!(dom.contains("files.unused"), "an unused connector is drawn");
    let page = std::fs::read_to_string(tmp.path().join("site/flows/orders.html")).expect("page");
    assert!(
        page.contains("<tr class=\"test passed\"><td>doubles</td>"),
        "{page}"
    );
    assert!(
        page.contains("<tr class=\"test failed\"><td>wrong</td>"),
        "{page}"
    );
    assert!(page.contains("total &gt; 10"), "the output's when is shown");
    assert!(
        page.contains("float(amount) * 2"),
        "the step's expression is shown"
    );
    assert!(page.contains(".wasm"), "the compiled module is shown");
    let api =
        std::fs::read_to_string(tmp.path().join("site/connectors/api.orders.html")).expect("page");
    assert!(
        api.contains("Authorization&quot;: &quot;*****&quot;"),
        "the header is shown, masked:\n{api}"
    );
}

/// `docs serve` answers on loopback and regenerates when a flow changes.
#[test]
fn serve_regenerates_when_a_flow_changes() {
    let (tmp, env) = example("orders");
    let mut child = common::command(
        tmp.path(),
        &["docs", "serve", "--port", "0", "--poll-ms", "100"],
        &env,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let proxy = Recorder::start();
    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium(&proxy, profile.path(), &["--dump-dom", &url]);
    assert!(dom.contains("data-node=\"flow:orders\""), "{dom}");
    let flow_url = format!("{url}flows/orders.html");
    let before = chromium(&proxy, profile.path(), &["--dump-dom", &flow_url]);
    assert!(!before.contains("Changed while serving"));

    let path = tmp.path().join("flows/orders.yaml");
    let text = std::fs::read_to_string(&path).expect("flow");
    let changed = text.replacen("description: ", "description: Changed while serving. ", 1);
    assert_ne!(text, changed);
    std::fs::write(&path, changed).expect("write");
    let started = Instant::now();
    loop {
        let line = lines
            .next()
            .expect("the server is still running")
            .expect("read");
        if line.contains("regenerated") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never regenerated"
        );
    }
    let after = chromium(&proxy, profile.path(), &["--dump-dom", &flow_url]);
    assert!(after.contains("Changed while serving"), "{after}");
    assert_eq!(proxy.requests(), Vec::<String>::new());
    let _ = child.kill();
    let _ = child.wait();
}
