//! The differential harness: every flow of every example project runs
//! through the reference interpreter (native) and its compiled wasm module
//! (wasmtime), on the fixtures' inputs, the example's data files and
//! property-generated records; the encoded outcomes (records, routes,
//! errors) must be byte-identical. Also: golden snapshots of the generated
//! Rust of every example flow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};
use weavster_guest::abi::{encode_batch, process_batch};
use weavster_ir::LookupData;
use weavster_ir::interp::Interpreter;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("flows-examples"))
        .expect("flows-examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("weavster.yaml").is_file())
        .collect();
    v.sort();
    v
}

fn load(dir: &Path) -> weavster_project::Loaded {
    let opts = weavster_project::LoadOptions {
        project_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let loaded = weavster_project::load(&opts).expect("loads");
    assert!(
        loaded.is_valid(),
        "{} is invalid: {:?}",
        dir.display(),
        loaded.diagnostics
    );
    loaded
}

fn lookups(p: &weavster_project::Project) -> BTreeMap<String, LookupData> {
    p.lookup_data()
        .into_iter()
        .map(|(k, t)| (k, t.clone()))
        .collect()
}

/// Every key name the flow mentions (from its IR), to make records that
/// exercise its paths.
fn field_names(ir: &weavster_ir::Flow) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let (1, Some(Value::String(k))) = (m.len(), m.get("Key")) {
                    out.push(k.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(ir).expect("ir serializes"), &mut out);
    out.sort();
    out.dedup();
    out
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "[a-zA-Z ]{0,6}".prop_map(Value::String),
        "-?[0-9]{1,4}(\\.[0-9]{1,2})?".prop_map(Value::String),
        prop::sample::select(vec![
            "de",
            "DE",
            "us",
            "test",
            "new",
            "yes",
            "",
            "2026-01-02T03:04:05Z",
            "a,b",
            "+49 170 1"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Records of the flow's keys and some it never touches.
fn records(mut fields: Vec<String>) -> impl Strategy<Value = Vec<Value>> {
    fields.extend(["untouched".to_string(), "other_key".to_string()]);
    let record = prop::collection::vec((prop::sample::select(fields), value()), 0..8)
        .prop_map(|kvs| Value::Object(kvs.into_iter().collect::<Map<String, Value>>()));
    prop::collection::vec(record, 1..8)
}

/// The interpreter decoding whole records, the interpreter decoding only the
/// fields the flow touches, and the wasm must give the same bytes.
fn compare(
    name: &str,
    (interp, whole): (&Interpreter, &Interpreter),
    wasm: &mut weavster_host::Instance,
    vars: &Map<String, Value>,
    batch: &[u8],
) {
    let mut native = Vec::new();
    process_batch(interp, vars, batch, &mut native).expect("interpreter batch");
    let mut full = Vec::new();
    process_batch(whole, vars, batch, &mut full).expect("interpreter batch");
    if native != full {
        panic!(
            "flow `{name}`: partial and whole-record decoding differ\n--- batch\n{}\n--- partial\n{}\n--- whole\n{}",
            String::from_utf8_lossy(batch),
            String::from_utf8_lossy(&native),
            String::from_utf8_lossy(&full)
        );
    }
    let compiled = wasm.process(batch).expect("wasm batch");
    if native != compiled {
        panic!(
            "flow `{name}`: wasm and interpreter differ\n--- batch\n{}\n--- interpreter\n{}\n--- wasm\n{}",
            String::from_utf8_lossy(batch),
            String::from_utf8_lossy(&native),
            String::from_utf8_lossy(&compiled)
        );
    }
}

#[test]
fn wasm_matches_the_interpreter() {
    let host = weavster_host::Host::new().expect("host");
    let shared_target = repo().join("target/weavster-flows");
    let mut flows_checked = 0;
    for dir in examples() {
        let tmp = tempfile::tempdir().expect("tmp");
        copy_dir(&dir, tmp.path());
        let loaded = load(tmp.path());
        let project = &loaded.project;
        let req = weavster_compile::Request {
            profile: weavster_compile::Profile::Release,
            cargo_target_dir: Some(shared_target.clone()),
            ..Default::default()
        };
        let weavster_compile::Compiled { built, irs } =
            weavster_compile::compile(project, &req, &host, &mut |_| {}).expect("builds");
        let vars: Map<String, Value> = project
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let data: Vec<Value> = std::fs::read_dir(tmp.path().join("data"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .flat_map(|e| {
                let text = std::fs::read_to_string(e.path()).expect("data");
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (ir, b) in irs.iter().zip(&built) {
            let module = host.load(&b.wasm).expect("module loads");
            let interp = Interpreter::new(ir.clone()).expect("interpreter");
            let whole = Interpreter::new(weavster_ir::Flow {
                fields: None,
                ..ir.clone()
            })
            .expect("interpreter");
            let interps = (&interp, &whole);
            let mut wasm = module.instantiate(&vars).expect("instance");
            // Fixtures, with their own `now` and vars.
            for t in project.tests.iter().filter(|t| t.flow == ir.name) {
                let mut case_vars = vars.clone();
                case_vars.extend(t.spec.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
                let mut inst = module.instantiate(&case_vars).expect("instance");
                let mut batch = Vec::new();
                encode_batch(
                    t.spec.now.as_deref().unwrap_or("2000-01-01T00:00:00Z"),
                    0,
                    &t.spec.input,
                    &mut batch,
                );
                compare(&ir.name, interps, &mut inst, &case_vars, &batch);
            }
            // The example's data files.
            let mut batch = Vec::new();
            encode_batch("2026-01-01T00:00:00Z", 7, &data, &mut batch);
            compare(&ir.name, interps, &mut wasm, &vars, &batch);
            // Property-generated records.
            let mut runner = TestRunner::new(Config {
                cases: 64,
                failure_persistence: None,
                ..Config::default()
            });
            let wasm = std::cell::RefCell::new(wasm);
            let result = runner.run(&(records(field_names(ir)), any::<u64>()), |(recs, seed)| {
                let mut batch = Vec::new();
                encode_batch("2026-01-01T00:00:00Z", seed, &recs, &mut batch);
                compare(&ir.name, interps, &mut wasm.borrow_mut(), &vars, &batch);
                Ok(())
            });
            if let Err(e) = result {
                panic!("flow `{}`: {e}", ir.name);
            }
            flows_checked += 1;
        }
    }
    assert!(
        flows_checked >= 5,
        "only {flows_checked} flows were compared"
    );
}

/// A sample of generated flows and every case of `tests/flows-corpus/`
/// through the real wasm build and wasmtime: the same bytes as the
/// interpreter. (`generated_native.rs` compares many more natively.)
#[test]
fn generated_flows_in_wasm_match_the_interpreter() {
    use proptest::strategy::ValueTree;
    let sample: usize = std::env::var("WEAVSTER_FLOWGEN_WASM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (columns, rows) = weavster_flowgen::lookup_table();
    let tables = BTreeMap::from([(
        weavster_flowgen::LOOKUP.to_string(),
        LookupData { columns, rows },
    )]);
    let mut cases: Vec<weavster_flowgen::Case> = Vec::new();
    let mut corpus: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/flows-corpus"))
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    corpus.sort();
    for p in corpus {
        cases
            .push(serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("case"));
    }
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let strategy = weavster_flowgen::case();
    let mut generated = 0;
    while generated < sample {
        let case = strategy.new_tree(&mut runner).expect("case").current();
        if weavster_ir::lower("g", &case.flow, &tables).is_ok() {
            cases.push(case);
            generated += 1;
        }
    }
    let irs: Vec<weavster_ir::Flow> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| weavster_ir::lower(&format!("gen{i}"), &c.flow, &tables).expect("lowers"))
        .collect();
    let tmp = tempfile::tempdir().expect("tmp");
    let inputs: Vec<_> = irs
        .iter()
        .map(|ir| weavster_build::FlowInput {
            ir,
            origin: "generated",
        })
        .collect();
    let opts = weavster_build::Options {
        project_root: tmp.path(),
        force: false,
        debug: false,
        profile: weavster_build::Profile::Release,
        cargo_target_dir: Some(repo().join("target/weavster-flows")),
        prebuilt_only: false,
    };
    let built = weavster_build::build(&inputs, &opts, &mut |_| {}).expect("builds");
    let host = weavster_host::Host::new().expect("host");
    for ((ir, case), b) in irs.iter().zip(&cases).zip(&built) {
        let module = host.load(&b.wasm).expect("module loads");
        let interp = Interpreter::new(ir.clone()).expect("interpreter");
        let whole = Interpreter::new(weavster_ir::Flow {
            fields: None,
            ..ir.clone()
        })
        .expect("interpreter");
        let mut wasm = module.instantiate(&case.vars).expect("instance");
        let mut batch = Vec::new();
        encode_batch("2026-03-04T05:06:07Z", 42, &case.records, &mut batch);
        compare(&ir.name, (&interp, &whole), &mut wasm, &case.vars, &batch);
    }
}

#[test]
fn generated_rust_is_stable() {
    for dir in examples() {
        let loaded = load(&dir);
        let tables = lookups(&loaded.project);
        for f in &loaded.project.flows {
            let ir = weavster_ir::lower(&f.name, &f.spec, &tables).expect("lowers");
            let source = weavster_codegen::generate(&ir, &f.file)
                .expect("generates")
                .source;
            let project = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            insta::with_settings!({ snapshot_suffix => format!("{project}-{}", f.name), prepend_module_to_snapshot => false, omit_expression => true }, {
                insta::assert_snapshot!("generated", source);
            });
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        if entry.file_name() == ".weavster" || entry.file_name() == "out" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
