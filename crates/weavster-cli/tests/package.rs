//! `weavster package`, `keygen`, `verify` with the real binary; the layout
//! read by skopeo and the signatures checked by an independent verifier
//! (tests/tools/verify_cosign.py, Python's `cryptography`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{project, repo, weavster};

const PROJECT: &str = "name: shop\nversion: 1.2.0\ndescription: orders in, orders out\nprofile: shop\npackage: { repository: registry.example.com/team/shop }\n";
const PROFILES: &str = "shop:\n  target: dev\n  outputs:\n    dev:\n      runtime:\n        queue: embedded\n      vars: { secret_looking: \"{{ env_var('WEAVSTER_SECRET_DB', 'x') }}\" }\n";

fn shop() -> (tempfile::TempDir, Vec<(String, String)>) {
    let (tmp, mut env) = project(&[
        ("weavster.yaml", PROJECT),
        ("profiles.yaml", PROFILES),
        (
            "connectors/c.yaml",
            "in: { type: file, path: in.jsonl }\nout: { type: file, path: \"{{ env_var('OUT_PATH', 'out.jsonl') }}\" }\n",
        ),
        (
            "flows/orders.yaml",
            "input: c.in\ntransforms:\n  - set: { total: float(amount) * 2 }\noutputs:\n  - to: c.out\n",
        ),
        ("flows/copy.yaml", "input: c.in\noutputs:\n  - to: c.out\n"),
        (
            "tests/orders/one.yaml",
            "input: [{amount: \"2\"}]\nexpect:\n  c.out: [{amount: \"2\", total: 4.0}]\n",
        ),
        (".env", "NOT=packaged\n"),
        ("in.jsonl", "{\"amount\":\"1\"}\n"),
    ]);
    env.push(("COSIGN_PASSWORD".into(), "correct horse".into()));
    env.push(("SOURCE_DATE_EPOCH".into(), "1767225600".into()));
    (tmp, env)
}

fn layout(dir: &Path) -> PathBuf {
    dir.join(".weavster/package")
}

/// `weavster -q package ARGS`: the digest it printed.
fn package(dir: &Path, env: &[(String, String)], args: &[&str]) -> String {
    let mut all = vec!["-q", "package"];
    all.extend_from_slice(args);
    let out = weavster(dir, &all, env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let digest = out.stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    digest
}

fn json_blob(layout: &Path, digest: &str) -> serde_json::Value {
    let bytes = std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).expect("blob");
    serde_json::from_slice(&bytes).expect("json")
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo (installed by scripts/setup.sh)")
}

/// Runs the independent verifier; its exit status.
fn independent(layout: &Path, tag: &str, key: &Path) -> bool {
    Command::new("/usr/bin/python3")
        .arg(repo().join("tests/tools/verify_cosign.py"))
        .arg(layout)
        .arg(tag)
        .arg(key)
        .output()
        .expect("python3")
        .status
        .success()
}

/// One check of `weavster verify`: its exit code and the message.
fn check(dir: &Path, env: &[(String, String)], layout: &Path, key: &str) -> (i32, String) {
    let out = weavster(
        dir,
        &["verify", &layout.display().to_string(), "--key", key],
        env,
    );
    (out.code, format!("{}{}", out.stdout, out.stderr))
}

/// The package: reproducible (twice the same digest, and in another
/// directory), the documented layout (config, project manifest, one wasm
/// layer per flow, the sources without profiles.yaml or hidden files,
/// connector files unrendered), read by skopeo; a different
/// SOURCE_DATE_EPOCH gives another digest.
#[test]
fn packages_are_reproducible_oci_artifacts_skopeo_reads() {
    let (tmp, env) = shop();
    let dir = tmp.path();
    let first = package(dir, &env, &[]);
    let again = package(dir, &env, &[]);
    assert_eq!(first, again, "the same project gives the same digest");
    let other = tempfile::tempdir().expect("tmp");
    let elsewhere = package(
        dir,
        &env,
        &["--output", &other.path().display().to_string()],
    );
    assert_eq!(first, elsewhere);
    let l = layout(dir);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(l.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1.2.0"
    );
    let manifest = json_blob(&l, &first);
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.weavster.project.v1"
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.version"],
        "1.2.0"
    );
    let config = json_blob(&l, manifest["config"]["digest"].as_str().expect("digest"));
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip1");
    assert_eq!(config["flows"], serde_json::json!(["copy", "orders"]));
    assert_eq!(config["weavster"]["profile"], "release");
    let layers = manifest["layers"].as_array().expect("layers");
    let types: Vec<&str> = layers
        .iter()
        .map(|l| l["mediaType"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.weavster.project.manifest.v1+json",
            "application/wasm",
            "application/wasm",
            "application/vnd.weavster.project.sources.v1.tar"
        ]
    );
    assert_eq!(layers[2]["annotations"]["dev.weavster.flow"], "orders");
    assert_eq!(
        config["layerDigests"],
        serde_json::json!(
            layers
                .iter()
                .map(|l| l["digest"].clone())
                .collect::<Vec<_>>()
        )
    );
    let project = json_blob(&l, layers[0]["digest"].as_str().expect("digest"));
    assert_eq!(project["flows"][1]["module"], layers[2]["digest"]);
    assert_eq!(project["flows"][1]["tests"], 1);
    // The sources: listed by tar; read back from the blob.
    let tar = l
        .join("blobs/sha256")
        .join(&layers[3]["digest"].as_str().expect("d")[7..]);
    let listing = Command::new("tar")
        .arg("tf")
        .arg(&tar)
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&listing.stdout).to_string();
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [
            "connectors/c.yaml",
            "flows/copy.yaml",
            "flows/orders.yaml",
            "tests/orders/one.yaml",
            "weavster.yaml"
        ],
        "no profiles.yaml, no .env, no data"
    );
    let connectors = Command::new("tar")
        .args(["xOf"])
        .arg(&tar)
        .arg("connectors/c.yaml")
        .output()
        .expect("tar");
    assert!(
        String::from_utf8_lossy(&connectors.stdout).contains("env_var('OUT_PATH'"),
        "connector files are packaged unrendered"
    );
    // skopeo reads the layout: the manifest bytes are ours, and it copies
    // the artifact into another layout with the same digest.
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:1.2.0", l.display())]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let bytes = std::fs::read(l.join("blobs/sha256").join(&first[7..])).expect("manifest");
    assert_eq!(raw.stdout, bytes);
    let copy = tempfile::tempdir().expect("tmp");
    let out = skopeo(&[
        "copy",
        &format!("oci:{}:1.2.0", l.display()),
        &format!("oci:{}:1.2.0", copy.path().display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(copy.path().join("blobs/sha256").join(&first[7..]).is_file());
    // Another time: another digest.
    let mut later = env.clone();
    later.retain(|(k, _)| k != "SOURCE_DATE_EPOCH");
    later.push(("SOURCE_DATE_EPOCH".into(), "1767225601".into()));
    assert_ne!(package(dir, &later, &[]), first);
}

/// keygen, sign, verify: a signature by the key verifies (and by the
/// independent verifier); two signers both stay; an unsigned package, the
/// wrong key, a flipped byte in a wasm layer and a manifest edited after
/// signing are each refused with their own error.
#[test]
fn signatures_verify_and_every_tampering_is_refused() {
    let (tmp, env) = shop();
    let dir = tmp.path();
    for prefix in ["alice", "bob", "mallory"] {
        let out = weavster(dir, &["keygen", "--output-key-prefix", prefix], &env);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let out = weavster(dir, &["keygen", "--output-key-prefix", "alice"], &env);
    assert_ne!(out.code, 0, "a key is never overwritten");
    let l = layout(dir);
    // Unsigned.
    let digest = package(dir, &env, &[]);
    let (code, text) = check(dir, &env, &l, "alice.pub");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unsigned"), "{text}");
    // Signed by alice, then by bob: both verify, mallory does not.
    assert_eq!(
        package(dir, &env, &["--sign", "--key", "alice.key"]),
        digest
    );
    assert_eq!(package(dir, &env, &["--sign", "--key", "bob.key"]), digest);
    for key in ["alice.pub", "bob.pub"] {
        let (code, text) = check(dir, &env, &l, key);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("2 signatures present"), "{text}");
        assert!(independent(&l, "1.2.0", &dir.join(key)), "{key}");
    }
    let (code, text) = check(dir, &env, &l, "mallory.pub");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not signed by this key"), "{text}");
    // cosign's key format both ways, against an independent
    // implementation: it decrypts our key to our public key, and we sign
    // with a key it made.
    let tool = repo().join("tests/tools/cosign_key.py");
    let decrypted = Command::new("/usr/bin/python3")
        .arg(&tool)
        .args(["decrypt", "alice.key", "correct horse"])
        .current_dir(dir)
        .output()
        .expect("python3");
    assert!(
        decrypted.status.success(),
        "{}",
        String::from_utf8_lossy(&decrypted.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&decrypted.stdout).trim(),
        std::fs::read_to_string(dir.join("alice.pub"))
            .expect("pub")
            .trim()
    );
    let made = Command::new("/usr/bin/python3")
        .arg(&tool)
        .args(["generate", "carol", "correct horse"])
        .current_dir(dir)
        .status()
        .expect("python3");
    assert!(made.success());
    assert_eq!(
        package(dir, &env, &["--sign", "--key", "carol.key"]),
        digest
    );
    let (code, text) = check(dir, &env, &l, "carol.pub");
    assert_eq!(code, 0, "{text}");
    assert!(independent(&l, "1.2.0", &dir.join("carol.pub")));
    assert!(!independent(&l, "1.2.0", &dir.join("mallory.pub")));
    // A wrong password.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "COSIGN_PASSWORD");
    bad.push(("COSIGN_PASSWORD".into(), "wrong".into()));
    let out = weavster(dir, &["package", "--sign", "--key", "alice.key"], &bad);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("wrong password"), "{}", out.stderr);
    // A flipped byte in a wasm layer (in a copy).
    let flipped = tempfile::tempdir().expect("tmp");
    copy_dir(&l, flipped.path());
    let manifest = json_blob(&l, &digest);
    let wasm = manifest["layers"][1]["digest"].as_str().expect("digest");
    let blob = flipped.path().join("blobs/sha256").join(&wasm[7..]);
    let mut bytes = std::fs::read(&blob).expect("wasm");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&blob, bytes).expect("flip");
    let (code, text) = check(dir, &env, flipped.path(), "alice.pub");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("tampered with") && text.contains(wasm),
        "{text}"
    );
    // The manifest edited after signing (an annotation changed, the index
    // pointed at the new bytes): its signatures are for the old digest.
    let edited = tempfile::tempdir().expect("tmp");
    copy_dir(&l, edited.path());
    let mut m = manifest.clone();
    m["annotations"]["org.opencontainers.image.version"] = "9.9.9".into();
    let bytes = serde_json::to_vec(&m).expect("json");
    let new = format!("sha256:{}", sha256_hex(&bytes));
    std::fs::write(edited.path().join("blobs/sha256").join(&new[7..]), &bytes).expect("write");
    let index = std::fs::read_to_string(edited.path().join("index.json"))
        .expect("index")
        .replacen(&digest, &new, 1)
        .replace(
            &format!("\"size\": {}", manifest_size(&l, &digest)),
            &format!("\"size\": {}", bytes.len()),
        );
    std::fs::write(edited.path().join("index.json"), index).expect("index");
    let (code, text) = check(dir, &env, edited.path(), "alice.pub");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("changed after signing"), "{text}");
}

fn manifest_size(l: &Path, digest: &str) -> u64 {
    std::fs::metadata(l.join("blobs/sha256").join(&digest[7..]))
        .expect("manifest")
        .len()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .expect("cp");
    assert!(out.status.success());
}

/// Debian's docker-registry on a free loopback port (filesystem storage
/// in a temp dir), optionally with htpasswd basic auth; killed on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tmp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut config = format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (installed by scripts/setup.sh)");
            std::fs::write(dir.path().join("htpasswd"), out.stdout).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: weavster-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (installed by scripts/setup.sh)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    fn repo(&self, path: &str) -> String {
        format!("127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weavster ARGS` with `stdin` on standard input: (code, stdout+stderr).
fn with_stdin(dir: &Path, args: &[&str], env: &[(String, String)], stdin: &str) -> (i32, String) {
    use std::io::Write as _;
    let mut child = common::command(dir, args, env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weavster");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// End to end through a real registry: push (skopeo reads the manifest and
/// config we pushed), a second signer's push keeps the first signature,
/// verify by reference, and `run --package REF --key` in an empty working
/// directory with no cargo or rustc on PATH moves every record; a wrong
/// key and a package of a future ABI are refused before anything runs.
#[test]
fn a_pushed_signed_package_runs_without_a_toolchain() {
    let registry = Registry::start(None);
    let (tmp, env) = shop();
    let dir = tmp.path();
    for prefix in ["alice", "bob", "mallory"] {
        assert_eq!(
            weavster(dir, &["keygen", "--output-key-prefix", prefix], &env).code,
            0
        );
    }
    let digest = package(dir, &env, &["--sign", "--key", "alice.key"]);
    let reference = registry.repo("team/shop:1.2.0");
    let out = weavster(dir, &["push", &reference, "--insecure"], &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("{}@{digest}", registry.repo("team/shop"))),
        "{}",
        out.stdout
    );
    // skopeo reads what we pushed: our manifest bytes, our config.
    let docker = format!("docker://{reference}");
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &docker]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(
        raw.stdout,
        std::fs::read(layout(dir).join("blobs/sha256").join(&digest[7..])).expect("manifest")
    );
    let config = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        "--raw",
        &docker,
    ]);
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).expect("config");
    assert_eq!(config["flows"], serde_json::json!(["copy", "orders"]));
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}", registry.repo("team/shop")),
    ]);
    let sig_tag = format!("{}.sig", digest.replacen(':', "-", 1));
    assert!(String::from_utf8_lossy(&tags.stdout).contains(&sig_tag));
    // skopeo copies it out of the registry unchanged (same digest), and
    // the copy opens as our package.
    let copied = tempfile::tempdir().expect("tmp");
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &docker,
        &format!("oci:{}:1.2.0", copied.path().display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        copied
            .path()
            .join("blobs/sha256")
            .join(&digest[7..])
            .is_file()
    );
    // Bob signs and pushes: both signatures are in the registry.
    assert_eq!(package(dir, &env, &["--sign", "--key", "bob.key"]), digest);
    let other = tempfile::tempdir().expect("tmp");
    std::fs::remove_dir_all(layout(dir)).expect("rm");
    assert_eq!(package(dir, &env, &["--sign", "--key", "bob.key"]), digest);
    let out = weavster(dir, &["push", &reference, "--insecure"], &env);
    assert!(
        out.stdout.contains("2 signatures"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = weavster(
        dir,
        &[
            "pull",
            &reference,
            "--insecure",
            "-o",
            &other.path().display().to_string(),
        ],
        &env,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().last(), Some(digest.as_str()));
    for key in ["alice.pub", "bob.pub"] {
        assert!(independent(other.path(), "1.2.0", &dir.join(key)), "{key}");
        let out = weavster(
            dir,
            &["verify", &reference, "--insecure", "--key", key],
            &env,
        );
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    let out = weavster(
        dir,
        &["verify", &reference, "--insecure", "--key", "mallory.pub"],
        &env,
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    // Run it where there is no project and no toolchain.
    let work = tempfile::tempdir().expect("work");
    let w = work.path();
    std::fs::create_dir(w.join("profiles")).expect("mkdir");
    std::fs::write(
        w.join("profiles/profiles.yaml"),
        "shop:\n  target: prod\n  outputs:\n    prod:\n      runtime:\n        queue: embedded\n        require_signature: true\n",
    )
    .expect("profiles");
    let input: String = (0..100)
        .map(|i| format!("{{\"amount\":\"{i}\"}}\n"))
        .collect();
    std::fs::write(w.join("in.jsonl"), input).expect("input");
    let mut bare = env.clone();
    bare.push(("PATH".into(), "/usr/bin:/bin".into()));
    bare.push((
        "WEAVSTER_PROFILES_DIR".into(),
        w.join("profiles").display().to_string(),
    ));
    let key = dir.join("alice.pub").display().to_string();
    let refused = weavster(
        w,
        &[
            "run",
            "--package",
            &reference,
            "--insecure",
            "--once",
            "--key",
            &dir.join("mallory.pub").display().to_string(),
        ],
        &bare,
    );
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("nothing was run"),
        "{}",
        refused.stderr
    );
    assert!(!w.join("out.jsonl").exists());
    // The target requires signatures: no key, no run.
    let unkeyed = weavster(
        w,
        &[
            "run",
            "--package",
            &reference,
            "--insecure",
            "--once",
            "--target",
            "prod",
        ],
        &bare,
    );
    assert_ne!(unkeyed.code, 0);
    assert!(
        unkeyed.stderr.contains("require_signature"),
        "{}",
        unkeyed.stderr
    );
    assert!(!w.join("out.jsonl").exists());
    // A verify key in the environment refuses a project's sources.
    let mut keyed = env.clone();
    keyed.push(("WEAVSTER_VERIFY_KEY".into(), key.clone()));
    let sources = weavster(dir, &["run", "--once"], &keyed);
    assert_eq!(sources.code, 2, "{}", sources.stderr);
    assert!(
        sources.stderr.contains("signed package"),
        "{}",
        sources.stderr
    );
    // The packaged fixtures pass against the packaged modules.
    let tested = weavster(
        w,
        &[
            "test",
            "--package",
            &reference,
            "--insecure",
            "--key",
            &key,
            "--target",
            "prod",
        ],
        &bare,
    );
    assert_eq!(tested.code, 0, "{}{}", tested.stdout, tested.stderr);
    assert!(tested.stdout.contains("1 passed"), "{}", tested.stdout);
    let ran = weavster(
        w,
        &[
            "run",
            "--package",
            &reference,
            "--insecure",
            "--once",
            "--key",
            &key,
            "--target",
            "prod",
        ],
        &bare,
    );
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("signature verified"), "{}", ran.stderr);
    // Both flows write out.jsonl: 100 records each, `orders` with totals.
    let records = common::records(&w.join("out.jsonl"));
    assert_eq!(records.len(), 200);
    assert_eq!(
        records.iter().filter(|r| r.get("total").is_some()).count(),
        100
    );
    // A package from a future ABI: refused, naming both versions.
    let future = tempfile::tempdir().expect("tmp");
    copy_dir(other.path(), future.path());
    rewrite_config(future.path(), &digest, |c| c["weavster"]["abi"] = 99.into());
    let out = weavster(
        w,
        &[
            "run",
            "--package",
            &future.path().display().to_string(),
            "--once",
        ],
        &bare,
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("ABI v99"), "{}", out.stderr);
    assert!(out.stderr.contains("runs ABI v1"), "{}", out.stderr);
}

/// Rewrites the config of the package `digest` in a layout with `edit`
/// (new config and manifest blobs, the index pointed at the new manifest).
fn rewrite_config(l: &Path, digest: &str, edit: impl Fn(&mut serde_json::Value)) {
    let mut manifest = json_blob(l, digest);
    let mut config = json_blob(l, manifest["config"]["digest"].as_str().expect("digest"));
    edit(&mut config);
    let bytes = serde_json::to_vec(&config).expect("json");
    let d = format!("sha256:{}", sha256_hex(&bytes));
    std::fs::write(l.join("blobs/sha256").join(&d[7..]), &bytes).expect("config");
    manifest["config"]["digest"] = d.into();
    manifest["config"]["size"] = bytes.len().into();
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let new = format!("sha256:{}", sha256_hex(&bytes));
    std::fs::write(l.join("blobs/sha256").join(&new[7..]), &bytes).expect("manifest");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(l.join("index.json")).expect("index"))
            .expect("json");
    for m in index["manifests"].as_array_mut().expect("manifests") {
        if m["digest"] == digest {
            m["digest"] = new.clone().into();
            m["size"] = bytes.len().into();
        }
    }
    std::fs::write(l.join("index.json"), index.to_string()).expect("index");
}

/// A registry with basic auth: a push without credentials is refused with
/// a hint; with --username/--password-stdin, or with a docker config's
/// `auths`, it goes through.
#[test]
fn registry_credentials_come_from_flags_or_the_docker_config() {
    let registry = Registry::start(Some(("ci", "s3cret")));
    let (tmp, env) = shop();
    let dir = tmp.path();
    package(dir, &env, &[]);
    let reference = registry.repo("team/shop:1.2.0");
    let out = weavster(dir, &["push", &reference, "--insecure"], &env);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("credentials"), "{}", out.stderr);
    let (code, text) = with_stdin(
        dir,
        &[
            "push",
            &reference,
            "--insecure",
            "--username",
            "ci",
            "--password-stdin",
        ],
        &env,
        "s3cret\n",
    );
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("s3cret"), "the password is never printed");
    let docker = tempfile::tempdir().expect("tmp");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            "{{\"auths\":{{\"127.0.0.1:{}\":{{\"auth\":\"{auth}\"}}}}}}",
            registry.port
        ),
    )
    .expect("config");
    let mut with_config = env.clone();
    with_config.push(("DOCKER_CONFIG".into(), docker.path().display().to_string()));
    let pulled = tempfile::tempdir().expect("tmp");
    let out = weavster(
        dir,
        &[
            "pull",
            &reference,
            "--insecure",
            "-o",
            &pulled.path().display().to_string(),
        ],
        &with_config,
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
