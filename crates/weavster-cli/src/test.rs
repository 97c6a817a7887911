//! `weavster test`: fixture tests through the compiled wasm.

use std::process::ExitCode;

use serde_json::{Map, Value};
use weavster_guest::Outcome;
use weavster_guest::abi::{decode_line, encode_batch};
use weavster_guest::ops::equal;
use weavster_spec::types::TestCase;

use crate::Global;
use crate::compile::{self, Args as CompileArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only the tests of this flow (repeatable).
    #[arg(long, short = 's')]
    select: Vec<String>,
    /// Test the fully optimized build (`compile --release`).
    #[arg(long)]
    release: bool,
    #[command(flatten)]
    package: crate::package::PackageArgs,
}

/// `now()` in fixtures that do not pin it.
pub const DEFAULT_NOW: &str = "2000-01-01T00:00:00Z";
/// The batch seed of fixture runs.
pub const SEED: u64 = 0;

/// What a case produced, grouped per output.
#[derive(Debug, Default)]
pub struct Produced {
    pub outputs: Vec<Vec<Value>>,
    pub errors: Vec<Value>,
}

/// Groups decoded outcomes by output index.
pub fn group(outcomes: &[Outcome], n_outputs: usize) -> Produced {
    let mut p = Produced {
        outputs: vec![Vec::new(); n_outputs],
        errors: Vec::new(),
    };
    for o in outcomes {
        match o {
            Outcome::Routed { routes, record } => {
                for r in routes {
                    if let Some(list) = p.outputs.get_mut(*r as usize) {
                        list.push(record.clone());
                    }
                }
            }
            Outcome::Filtered => {}
            Outcome::Error(e) => {
                let mut m = Map::new();
                m.insert("stage".into(), Value::String(e.stage.into()));
                m.insert("message".into(), Value::String(e.message.clone()));
                if let Some(p) = &e.path {
                    m.insert("path".into(), Value::String(p.clone()));
                }
                p.errors.push(Value::Object(m));
            }
        }
    }
    p
}

/// Keys sorted, so that a diff shows values, not key order (which is ignored).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn pretty(v: &[Value]) -> String {
    let v: Vec<Value> = v.iter().map(sorted).collect();
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn diff(expected: &[Value], actual: &[Value]) -> String {
    let (e, a) = (pretty(expected), pretty(actual));
    let d = similar::TextDiff::from_lines(&e, &a);
    let mut out = String::new();
    for change in d.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        out.push_str(&format!("      {sign} {change}"));
        if !change.to_string().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn records_equal(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
}

fn errors_match(expected: &[Value], actual: &[Value]) -> bool {
    expected.len() == actual.len()
        && expected.iter().zip(actual).all(|(e, a)| {
            ["stage", "message", "path"]
                .iter()
                .all(|k| match e.get(*k).and_then(Value::as_str) {
                    None => true,
                    Some(want) => {
                        let got = a.get(*k).and_then(Value::as_str).unwrap_or_default();
                        if *k == "message" {
                            got.contains(want)
                        } else {
                            got == want
                        }
                    }
                })
        })
}

/// Compares one case; returns the failure report, if any.
pub fn check_case(case: &TestCase, outputs: &[String], produced: &Produced) -> Option<String> {
    let mut report = String::new();
    for (key, expected) in &case.expect {
        if key == "errors" {
            if !errors_match(expected, &produced.errors) {
                report.push_str(&format!(
                    "    errors (- expected, + actual; messages match as substrings):\n{}",
                    diff(expected, &produced.errors)
                ));
            }
            continue;
        }
        let Some(i) = outputs.iter().position(|o| o == key) else {
            continue;
        };
        if !records_equal(expected, &produced.outputs[i]) {
            report.push_str(&format!(
                "    {key} (- expected, + actual):\n{}",
                diff(expected, &produced.outputs[i])
            ));
        }
    }
    if case.strict {
        for (i, o) in outputs.iter().enumerate() {
            if !case.expect.contains_key(o) && !produced.outputs[i].is_empty() {
                report.push_str(&format!(
                    "    {o} is not listed (strict) but received:\n{}",
                    diff(&[], &produced.outputs[i])
                ));
            }
        }
        if !case.expect.contains_key("errors") && !produced.errors.is_empty() {
            report.push_str(&format!(
                "    unexpected record errors (strict):\n{}",
                diff(&[], &produced.errors)
            ));
        }
    }
    (!report.is_empty()).then_some(report)
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let (loaded, release) = args.package.load(g, args.release)?;
    let compile_args = CompileArgs {
        flow: args.select.clone(),
        force: false,
        debug: false,
        release,
        prebuilt_only: args.package.package.is_some(),
    };
    let Some((loaded, compiled)) = compile::compile_loaded(loaded, &compile_args, true)? else {
        return Ok(ExitCode::from(1));
    };
    let project = &loaded.project;
    let host = weavster_host::Host::new()?;
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut results = weavster_docs::TestResults::default();
    let mut record = |flow: &str, test: &str, message: Option<String>| {
        results.results.push(weavster_docs::TestResult {
            flow: flow.into(),
            test: test.into(),
            passed: message.is_none(),
            message,
        });
    };
    for (built, ir) in compiled.built.iter().zip(&compiled.irs) {
        let cases: Vec<_> = project
            .tests
            .iter()
            .filter(|t| t.flow == built.flow)
            .collect();
        if cases.is_empty() {
            continue;
        }
        let module = host.load(&built.wasm)?;
        let outputs: Vec<String> = ir.outputs.iter().map(|o| o.to.clone()).collect();
        for t in cases {
            let mut vars: Map<String, Value> = project
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in &t.spec.vars {
                vars.insert(k.clone(), v.clone());
            }
            let name = format!("{}/{}", t.flow, t.name);
            let mut instance = module.instantiate(&vars)?;
            let mut batch = Vec::new();
            encode_batch(
                t.spec.now.as_deref().unwrap_or(DEFAULT_NOW),
                SEED,
                &t.spec.input,
                &mut batch,
            );
            let result = instance
                .process(&batch)
                .map_err(|e| e.to_string())
                .and_then(|out| {
                    out.split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| decode_line(l).map(|(_, o)| o))
                        .collect::<Result<Vec<_>, _>>()
                });
            match result {
                Err(e) => {
                    failed += 1;
                    println!("✘ {name}: the batch failed: {e}");
                    record(&t.flow, &t.name, Some(format!("the batch failed: {e}")));
                }
                Ok(outcomes) => {
                    let produced = group(&outcomes, outputs.len());
                    match check_case(&t.spec, &outputs, &produced) {
                        None => {
                            passed += 1;
                            record(&t.flow, &t.name, None);
                            if !g.quiet {
                                println!("✔ {name}");
                            }
                        }
                        Some(report) => {
                            failed += 1;
                            println!("✘ {name} ({})\n{report}", t.file);
                            record(&t.flow, &t.name, Some(report));
                        }
                    }
                }
            }
        }
    }
    save_results(&project.root, results);
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Records the results for `weavster docs` (merged with what is known of
/// tests not run this time). Failing to write is logged, not fatal: the
/// tests ran.
fn save_results(root: &std::path::Path, results: weavster_docs::TestResults) {
    let path = root
        .join(".weavster/target")
        .join(crate::docs::TEST_RESULTS);
    let old: weavster_docs::TestResults = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let merged = old.merge(results);
    let written = std::fs::create_dir_all(root.join(".weavster/target")).and_then(|_| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&merged).unwrap_or_default(),
        )
    });
    if let Err(e) = written {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}
