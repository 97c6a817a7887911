//! Helpers shared by the CLI test binaries: the real binary in temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with a clean environment (no WEAVSTER_* from the caller,
/// HOME in a temp dir, no colours) plus `env`.
pub fn weavster(dir: &Path, args: &[&str], env: &[(String, String)]) -> Out {
    let home = tempfile::tempdir().expect("home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weavster"));
    cmd.current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env("HOME", home.path())
        .env_remove("WEAVSTER_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("WEAVSTER_") || k.starts_with("CORPUS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run weavster");
    let clean = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .replace(&dir.display().to_string(), "<dir>")
            .replace(&home.path().display().to_string(), "<home>")
    };
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: clean(&out.stdout),
        stderr: clean(&out.stderr),
    };
    assert!(
        !out.stderr.contains("panicked"),
        "weavster panicked:\n{}",
        out.stderr
    );
    out
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A project copied from `flows-examples/` into a temp dir, and env that
/// shares compiled wasm dependencies across tests.
pub fn example(name: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
    let tmp = tempfile::tempdir().expect("tmp");
    copy_dir(&repo().join("flows-examples").join(name), tmp.path());
    let _ = std::fs::remove_dir_all(tmp.path().join(".weavster"));
    let env = vec![(
        "WEAVSTER_CARGO_TARGET_DIR".to_string(),
        repo().join("target/weavster-flows").display().to_string(),
    )];
    (tmp, env)
}

/// Writes `files` (path → text) into a new project dir; env that shares
/// compiled wasm dependencies across tests.
pub fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<(String, String)>) {
    let tmp = tempfile::tempdir().expect("tmp");
    for (path, text) in files {
        write(tmp.path(), path, text.as_bytes());
    }
    let env = vec![(
        "WEAVSTER_CARGO_TARGET_DIR".to_string(),
        repo().join("target/weavster-flows").display().to_string(),
    )];
    (tmp, env)
}

/// Writes `bytes` at `path` under `dir`, creating directories.
pub fn write(dir: &Path, path: &str, bytes: &[u8]) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, bytes).expect("write");
}

/// The JSON records of a JSON-lines file (none if it does not exist).
pub fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("output record is JSON"))
        .collect()
}

/// How many times each `id` occurs in a JSON-lines file.
pub fn ids(path: &Path) -> std::collections::BTreeMap<i64, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in records(path) {
        *m.entry(r["id"].as_i64().expect("id")).or_default() += 1;
    }
    m
}

pub fn records_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// `weavster dlq ls -o json`, every dead letter.
pub fn dead_letters(dir: &Path, env: &[(String, String)]) -> Vec<serde_json::Value> {
    let out = weavster(dir, &["dlq", "ls", "-o", "json", "--limit", "1000000"], env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("dlq ls json")
}

/// A dead letter's record bytes (from `record`, or `record_base64`).
pub fn dead_record(d: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    match (d["record"].as_str(), d["record_base64"].as_str()) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64"),
        _ => Vec::new(),
    }
}

/// The weavster binary with the test's env, not yet run.
pub fn command(dir: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weavster"));
    cmd.current_dir(dir).args(args).env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("WEAVSTER_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Waits for `child` at most `limit`; kills it and fails if it hangs.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (hangs)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Debian's `psql` (installed with the PostgreSQL server binaries).
pub fn psql() -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/psql"))
        .find(|p| p.exists())
        .expect("psql")
}

/// `psql URL -v ON_ERROR_STOP=1 -At -c SQL`.
pub fn psql_at(url: &str, sql: &str) -> std::process::Output {
    Command::new(psql())
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .output()
        .expect("psql")
}

/// The binary started in the background, its stderr into `log`.
pub fn spawn_logged(
    dir: &Path,
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> std::process::Child {
    command(dir, args, env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn weavster")
}

/// The project's embedded queue database, held open by the test (the
/// server is shared by its users and stops with the last one), so that the
/// queue can be read between and after runs.
pub struct Queue {
    rt: tokio::runtime::Runtime,
    pg: Option<weavster_queue_server::Embedded>,
}

impl Queue {
    pub fn hold(dir: &Path) -> Queue {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pg = rt
            .block_on(weavster_queue_server::Embedded::start(
                &weavster_queue_server::Options::new(dir.join(".weavster/postgres")),
            ))
            .expect("embedded PostgreSQL");
        Queue { rt, pg: Some(pg) }
    }

    /// Runs `sql` on the queue database: its unaligned output, `None` if it
    /// failed (the run has not created the tables yet).
    pub fn sql(&self, sql: &str) -> Option<String> {
        let out = psql_at(&self.pg.as_ref().expect("running").url(), sql);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The pids of the queue server: its postmaster and every backend
    /// (freezing all of them freezes the database).
    pub fn server_pids(&self) -> Vec<u32> {
        let pg = self.pg.as_ref().expect("running");
        let (postmaster, _) =
            weavster_queue_server::live_postmaster(pg.data_dir()).expect("a running postmaster");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces.
            let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
            let ppid: Option<u32> = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(postmaster)
                && let Ok(pid) = entry.file_name().to_string_lossy().parse()
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Every job of `flow` enqueued so far queued once more, as a new
    /// pending job (what a crash between a batch's work and its mark
    /// leaves to do again).
    pub fn requeue_all(&self, flow: &str) {
        self.sql(&format!(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
             SELECT apalis.generate_ulid(), job_type, job, 'Pending', 0, max_attempts, now(), 0, ''::hstore
             FROM apalis.jobs WHERE job_type = 'weavster:{flow}'"
        ))
        .expect("queued again");
    }

    /// The records of every job of `flow` ever enqueued (done ones are
    /// kept for an hour), one text per job.
    pub fn jobs_records(&self, flow: &str) -> Vec<String> {
        let pg = self.pg.as_ref().expect("running");
        let psql = psql();
        let out = Command::new(psql)
            .arg(pg.url())
            .args([
                "-At",
                "-c",
                &format!(
                    "SELECT convert_from(job, 'UTF8')::jsonb->>'records' FROM apalis.jobs WHERE job_type = 'weavster:{flow}'"
                ),
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One job per row; a job's records are lines (psql shows the
        // embedded line feeds as they are).
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            let _ = self.rt.block_on(pg.stop());
        }
    }
}

/// Writes a CA and a server certificate for `localhost` signed by it into
/// `dir` (openssl, installed by scripts/setup.sh); returns the CA's path.
pub fn certificates(dir: &Path, name: &str) -> std::path::PathBuf {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ca = format!("{name}-ca");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=weavster test CA",
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.crt"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.csr"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{ca}.crt"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        &format!("{name}.crt"),
    ]);
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join(format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    dir.join(format!("{ca}.crt"))
}
