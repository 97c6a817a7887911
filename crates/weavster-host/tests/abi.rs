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
    let v = |n: u32| {
        format!(
            r#"(module (func (export "weavster_abi_version") (result i32) i32.const {n}) (memory (export "memory") 1))"#
        )
    };
    std::fs::write(&wasm, v(2)).expect("write");
    assert!(matches!(
        host.load(&wasm),
        Err(HostError::AbiVersion { found: 2, .. })
    ));
    // Rebuilt under the same name (`compile --force`), a moment later.
    std::fs::write(&wasm, v(1)).expect("write");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&wasm)
        .and_then(|f| f.set_modified(later))
        .expect("set mtime");
    host.load(&wasm)
        .expect("the new module, not the cached one");
}
