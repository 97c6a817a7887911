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
