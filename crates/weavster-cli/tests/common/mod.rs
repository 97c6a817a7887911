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
