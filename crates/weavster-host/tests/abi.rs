//! The host refuses modules that do not speak ABI v1, with a clear message.

use std::path::Path;

use weavster_host::{Host, HostError};

fn check(wat: &str) -> Result<(), String> {
    let host = Host::new().expect("host");
    host.load_bytes(wat.as_bytes(), Path::new("flow.wasm"))
        .map(|_| ())
        .map_err(|e| match e {
            HostError::AbiVersion { found, .. } => format!("abi v{found}: {e}"),
            HostError::NotAFlow { .. } => format!("not a flow: {e}"),
            other => format!("other: {other}"),
        })
}

#[test]
fn refuses_another_abi_version() {
    let err = check(r#"(module (func (export "weavster_abi_version") (result i32) i32.const 2) (memory (export "memory") 1))"#)
        .expect_err("refused");
    assert!(err.starts_with("abi v2:"), "{err}");
    assert!(err.contains("weavster compile --force"), "{err}");
}

#[test]
fn refuses_a_module_without_the_abi() {
    let err = check(r#"(module (memory (export "memory") 1))"#).expect_err("refused");
    assert!(
        err.starts_with("not a flow:") && err.contains("weavster_abi_version"),
        "{err}"
    );
}

#[test]
fn accepts_v1() {
    check(r#"(module (func (export "weavster_abi_version") (result i32) i32.const 1) (memory (export "memory") 1))"#)
        .expect("v1 loads");
}

#[test]
fn a_module_rebuilt_in_place_is_compiled_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wasm = dir.path().join("flow.wasm");
    let host = Host::new().expect("host");
    let v = |n: i32| {
        format!(
            r#"(module (func (export "weavster_abi_version") (result i32) i32.const {n}) (memory (export "memory") 1))"#
        )
    };
    let rebuild = |n: i32, shift: i64| {
        std::fs::write(&wasm, v(n)).expect("write");
        let now = std::time::SystemTime::now();
        let d = std::time::Duration::from_secs(shift.unsigned_abs());
        let at = if shift >= 0 { now + d } else { now - d };
        std::fs::File::options()
            .write(true)
            .open(&wasm)
            .and_then(|f| f.set_modified(at))
            .expect("set mtime");
    };
    let found = |n: i32| match host.load(&wasm) {
        Ok(_) => 1,
        Err(HostError::AbiVersion { found, .. }) => found,
        Err(e) => panic!("v{n}: {e}"),
    };
    let cached = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cwasm"))
            .collect();
        names.sort();
        names
    };
    // v2, then rebuilt under the same name (`compile --force`) a moment
    // later, then again with a modification time older than the cache's
    // (a restored or copied file), then back to v2.
    for (n, shift) in [(2, 0), (1, 2), (2, -3600), (1, -7200)] {
        rebuild(n, shift);
        assert_eq!(found(n), n, "the module written last, not a cached one");
        assert_eq!(
            cached().len(),
            1,
            "one native build per module: {:?}",
            cached()
        );
    }
    // A second load uses the cache.
    let before = cached();
    assert_eq!(found(1), 1);
    assert_eq!(cached(), before);
}
