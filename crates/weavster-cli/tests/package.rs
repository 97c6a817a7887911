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
    Command::new("python3")
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
