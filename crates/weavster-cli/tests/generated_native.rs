//! Generated flows, compiled: the Rust `weavster compile` generates for a
//! flow must do exactly what the reference interpreter does. Many generated
//! flows (and every case of `tests/flows-corpus/`) are batched into one
//! native crate — one cargo build — run on their records, and compared with
//! the interpreter byte for byte. (The wasm build of the same code is
//! compared with the interpreter in `differential.rs`.)
//!
//! `WEAVSTER_FLOWGEN_NATIVE` sets how many generated flows (default 150).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use weavster_flowgen::Case;
use weavster_guest::abi::{encode_batch, process_batch};
use weavster_ir::LookupData;
use weavster_ir::interp::Interpreter;

fn tables() -> BTreeMap<String, LookupData> {
    let (columns, rows) = weavster_flowgen::lookup_table();
    BTreeMap::from([(
        weavster_flowgen::LOOKUP.to_string(),
        LookupData { columns, rows },
    )])
}

fn corpus() -> Vec<(String, Case)> {
    let dir = common::repo().join("tests/flows-corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/flows-corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let case = serde_json::from_str(&std::fs::read_to_string(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), case)
        })
        .collect()
}

/// The crate: one module per flow, and a main that runs batches given on
/// standard input as `[{"flow": i, "vars": {…}, "batch": "…"}]`.
fn write_crate(dir: &Path, sources: &[weavster_codegen::Generated]) {
    let guest = common::repo().join("crates/weavster-guest");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"flowgen-native\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [dependencies]\nweavster-guest = {{ path = {:?} }}\nserde_json = \"1\"\n\n\
             [workspace]\n\n[profile.dev]\nopt-level = 1\ndebug = false\n",
            guest.display().to_string()
        ),
    )
    .expect("manifest");
    let _ = std::fs::copy(common::repo().join("Cargo.lock"), dir.join("Cargo.lock"));
    let mut main = String::from("use weavster_guest::serde_json::{self, Map, Value};\n\n");
    for (i, g) in sources.iter().enumerate() {
        std::fs::write(dir.join(format!("src/f{i}.rs")), &g.source).expect("module");
        for (name, bytes) in &g.assets {
            std::fs::write(dir.join("src").join(name), bytes).expect("asset");
        }
        main.push_str(&format!("mod f{i};\n"));
    }
    main.push_str(
        "\nfn run(i: u64, vars: &Map<String, Value>, batch: &[u8]) -> Result<Vec<u8>, String> {\n    let mut out = Vec::new();\n    match i {\n",
    );
    for i in 0..sources.len() {
        main.push_str(&format!(
            "        {i} => weavster_guest::abi::process_batch(&f{i}::Compiled::new(vars)?, vars, batch, &mut out)?,\n"
        ));
    }
    main.push_str(
        "        _ => return Err(\"no such flow\".into()),\n    }\n    Ok(out)\n}\n\n\
         fn main() {\n    let input: Vec<Value> = serde_json::from_reader(std::io::stdin()).expect(\"input\");\n    \
         let out: Vec<Value> = input.iter().map(|c| {\n        \
         let vars = c[\"vars\"].as_object().cloned().unwrap_or_default();\n        \
         let batch = c[\"batch\"].as_str().unwrap_or_default();\n        \
         match run(c[\"flow\"].as_u64().unwrap_or(u64::MAX), &vars, batch.as_bytes()) {\n            \
         Ok(o) => serde_json::json!({\"ok\": String::from_utf8_lossy(&o)}),\n            \
         Err(e) => serde_json::json!({\"err\": e}),\n        }\n    }).collect();\n    \
         println!(\"{}\", serde_json::to_string(&out).expect(\"output\"));\n}\n",
    );
    std::fs::write(dir.join("src/main.rs"), main).expect("main");
}

#[test]
fn generated_rust_matches_the_interpreter_natively() {
    let count: usize = std::env::var("WEAVSTER_FLOWGEN_NATIVE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let tables = tables();
    let mut cases = corpus();
    let mut runner = TestRunner::deterministic();
    let strategy = weavster_flowgen::case();
    while cases.len() < count + 16 {
        let case = strategy.new_tree(&mut runner).expect("case").current();
        cases.push((format!("generated #{}", cases.len()), case));
    }
    // Lowered, interpreted and generated; flows that do not lower are skipped.
    let mut runs = Vec::new();
    let mut sources = Vec::new();
    let mut expected = Vec::new();
    let mut names = Vec::new();
    for (name, case) in &cases {
        let Ok(ir) = weavster_ir::lower("gen", &case.flow, &tables) else {
            assert!(!name.contains("flows-corpus"), "{name}: does not lower");
            continue;
        };
        let Ok(interp) = Interpreter::new(ir.clone()) else {
            continue;
        };
        let mut batch = Vec::new();
        encode_batch("2026-03-04T05:06:07Z", 42, &case.records, &mut batch);
        let mut out = Vec::new();
        let result = process_batch(&interp, &case.vars, &batch, &mut out)
            .map(|()| String::from_utf8_lossy(&out).to_string());
        let source = weavster_codegen::generate(&ir, "generated").expect("generates");
        let i = sources.len();
        sources.push(source);
        runs.push(json!({
            "flow": i,
            "vars": Value::Object(case.vars.clone()),
            "batch": String::from_utf8_lossy(&batch),
        }));
        expected.push(result);
        names.push((name.clone(), case.clone()));
        if sources.len() >= count + corpus().len() {
            break;
        }
    }
    let dir = common::repo().join("target/flowgen-native");
    let _ = std::fs::remove_dir_all(dir.join("src"));
    write_crate(&dir, &sources);
    let build = Command::new("cargo")
        .args(["build", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo");
    assert!(
        build.status.success(),
        "the generated Rust does not compile (a bug in the code generator):\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let mut child = Command::new(dir.join("target/debug/flowgen-native"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(serde_json::to_string(&runs).expect("runs").as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "the native runner failed");
    let got: Vec<Value> = serde_json::from_slice(&out.stdout).expect("runner output");
    assert_eq!(got.len(), expected.len());
    let mut problems = Vec::new();
    for (((name, case), want), got) in names.iter().zip(&expected).zip(&got) {
        let same = match (want, got.get("ok").and_then(Value::as_str)) {
            (Ok(w), Some(g)) => w == g,
            (Err(_), None) => true,
            _ => false,
        };
        if !same {
            problems.push(format!(
                "{name}: compiled and interpreted differ\n--- flow\n{}\n--- records\n{}\n--- interpreter\n{want:?}\n--- compiled\n{got}",
                serde_json::to_string_pretty(&case.flow).unwrap_or_default(),
                serde_json::to_string(&case.records).unwrap_or_default(),
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} flows differ:\n{}",
        problems.len(),
        names.len(),
        problems.join("\n\n")
    );
    eprintln!(
        "{} generated flows compiled natively and compared",
        names.len()
    );
}
