//! The real `weavster` binary, run in temp dirs.
//!
//! - `corpus`: every case under `tests/corpus/` (the `_base` project with the
//!   case's files laid over it) is validated; the exit code and the
//!   diagnostics are compared with `snapshots/cli__corpus@<case>.snap`.
//! - golden snapshots of `init`, `ls --output json` and `validate --format json`.
//! - `flows-examples/*` and `weavster.yaml.example` validate.

use std::path::{Path, PathBuf};

mod common;
use common::{copy_dir, example, repo, weavster};

/// Lays a corpus case over the base project in a new temp dir; returns the
/// dir, the extra CLI args and env of the case.
fn corpus_project(case: &Path) -> (tempfile::TempDir, Vec<String>, Vec<(String, String)>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path();
    copy_dir(&repo().join("tests/corpus/_base"), project);
    let mut args = Vec::new();
    let mut env = Vec::new();
    let overlay = tempfile::tempdir().expect("overlay");
    copy_dir(case, overlay.path());
    for meta in ["_args", "_env", "_delete", ".keep"] {
        let p = overlay.path().join(meta);
        if let Ok(text) = std::fs::read_to_string(&p) {
            match meta {
                "_args" => args.extend(text.split_whitespace().map(str::to_string)),
                "_env" => env.extend(
                    text.lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.into(), v.into())),
                ),
                "_delete" => {
                    for f in text.lines().filter(|l| !l.is_empty()) {
                        let _ = std::fs::remove_file(project.join(f));
                    }
                }
                _ => {}
            }
            std::fs::remove_file(&p).expect("remove meta");
        }
    }
    copy_dir(overlay.path(), project);
    (tmp, args, env)
}

fn check(case: &Path) -> String {
    let (tmp, args, env) = corpus_project(case);
    let mut full: Vec<&str> = vec!["validate"];
    full.extend(args.iter().map(String::as_str));
    let text = weavster(tmp.path(), &full, &env);
    full.extend(["--format", "json"]);
    let json = weavster(tmp.path(), &full, &env);
    assert_eq!(text.code, json.code, "text and json exit codes differ");
    if json.code != 2 {
        let v: serde_json::Value =
            serde_json::from_str(&json.stdout).expect("validate --format json prints JSON");
        let errors = v["errors"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(errors > 0, text.code == 1, "exit code and errors disagree");
        for e in v["errors"].as_array().into_iter().flatten() {
            // Every error in a file names it, and where a span is known, its line and column.
            if e.get("file").is_some() && e.get("span").is_some() {
                assert!(
                    e["line"].as_u64().is_some() && e["column"].as_u64().is_some(),
                    "unlocated: {e}"
                );
            }
        }
    }
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        text.code, text.stdout, text.stderr
    )
}

#[test]
fn corpus() {
    let root = repo().join("tests/corpus");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('_'))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut invalid = 0;
    for case in &cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let out = check(case);
        if !out.starts_with("exit: 0") {
            invalid += 1;
        }
        insta::with_settings!({ snapshot_suffix => name.clone(), prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!("corpus", out);
        });
    }
    assert!(invalid >= 40, "only {invalid} corpus cases are invalid");
}

#[test]
fn init_scaffolds_a_valid_project() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = weavster(tmp.path(), &["init", "shop"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let project = tmp.path().join("shop");
    let mut files = Vec::new();
    collect(&project, &project, &mut files);
    files.sort();
    let mut golden = format!("exit: {}\n--- stdout\n{}--- files\n", out.code, out.stdout);
    for f in &files {
        golden.push_str(&format!(
            "=== {f}\n{}",
            std::fs::read_to_string(project.join(f)).expect("read")
        ));
    }
    insta::assert_snapshot!("init", golden);

    let v = weavster(tmp.path(), &["-C", "shop", "validate"], &[]);
    assert_eq!(v.code, 0, "generated project is invalid:\n{}", v.stderr);
    let ls = weavster(&project, &["ls", "--output", "json"], &[]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    insta::assert_snapshot!("init_ls_json", ls.stdout);
    let vj = weavster(&project, &["validate", "--format", "json"], &[]);
    insta::assert_snapshot!("init_validate_json", vj.stdout);
    let ls_text = weavster(&project, &["ls"], &[]);
    insta::assert_snapshot!("init_ls_text", ls_text.stdout);

    // The prod target resolves once its env var is set; the value came from
    // env_var(), so it is masked whole (its password above all).
    let prod = weavster(
        &project,
        &["ls", "--output", "json", "--target", "prod"],
        &[(
            "WEAVSTER_PG_URL".into(),
            "postgres://app:hunter22@db.internal:5432/shop".into(),
        )],
    );
    assert_eq!(prod.code, 0, "{}", prod.stderr);
    let ls: serde_json::Value = serde_json::from_str(&prod.stdout).expect("ls json");
    assert_eq!(ls["runtime"]["queue"], "*****", "{}", prod.stdout);
    assert!(!prod.stdout.contains("hunter22"));
    assert!(!prod.stdout.contains("db.internal"));
    // ...and fails, located, without it.
    let unset = weavster(&project, &["validate", "--target", "prod"], &[]);
    assert_eq!(unset.code, 1);
    assert!(
        unset.stderr.contains("profiles.yaml:11:"),
        "{}",
        unset.stderr
    );
}

/// The files under `dir` (relative to `root`), except the tool's own
/// `.weavster/` (the schemas `init` writes are checked on their own).
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("read").filter_map(Result::ok) {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == ".weavster") {
            continue;
        }
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).expect("prefix").display().to_string());
        }
    }
}

#[test]
fn init_refuses_a_non_empty_dir_without_force() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
    let out = weavster(tmp.path(), &["init", "."], &[]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("init_non_empty", out.stderr);
    let forced = weavster(
        tmp.path(),
        &["init", ".", "--force", "--name", "forced"],
        &[],
    );
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("notes.txt")).expect("kept"),
        "mine"
    );
    assert_eq!(weavster(tmp.path(), &["validate", "-q"], &[]).code, 0);
}

#[test]
fn usage_and_environment_errors_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    let none = weavster(tmp.path(), &["validate"], &[]);
    assert_eq!(none.code, 2);
    insta::assert_snapshot!("not_a_project", none.stderr);
    assert_eq!(weavster(tmp.path(), &["frobnicate"], &[]).code, 2);
    assert_eq!(
        weavster(tmp.path(), &["validate", "--format", "yaml"], &[]).code,
        2
    );
}

#[test]
fn debug_reports_checks_with_fixes() {
    let tmp = tempfile::tempdir().expect("tmp");
    assert_eq!(weavster(tmp.path(), &["init", "p"], &[]).code, 0);
    let p = tmp.path().join("p");
    std::fs::remove_file(p.join("data/orders.jsonl")).expect("rm");
    let out = weavster(&p, &["debug", "--output", "json"], &[]);
    assert_eq!(out.code, 1, "a missing input file fails a check");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let checks = v["checks"].as_array().expect("checks");
    let input = checks
        .iter()
        .find(|c| c["name"] == "connector files.orders_in")
        .expect("input check");
    assert_eq!(input["ok"], false);
    assert!(input["fix"].as_str().is_some_and(|f| !f.is_empty()));
    for name in [
        "project",
        "rustc",
        "cargo",
        "wasm32-wasip1 target",
        "PostgreSQL binaries",
    ] {
        assert!(
            checks.iter().any(|c| c["name"] == name),
            "no `{name}` check"
        );
    }
    let text = weavster(&p, &["debug"], &[]);
    assert!(
        text.stdout.contains("✘ connector files.orders_in") && text.stdout.contains("fix: "),
        "{}",
        text.stdout
    );
}

#[test]
fn examples_compile_and_pass_their_fixtures() {
    for name in ["orders", "kitchen_sink", "events", "clickstream"] {
        let (tmp, env) = example(name);
        let c = weavster(tmp.path(), &["compile", "--debug"], &env);
        assert_eq!(
            c.code, 0,
            "{name}: compile failed:\n{}{}",
            c.stdout, c.stderr
        );
        assert!(
            c.stdout.contains("generated Rust: .weavster/debug/"),
            "{}",
            c.stdout
        );
        assert!(tmp.path().join(".weavster/target/manifest.json").is_file());
        // Nothing changed: no cargo, every module up to date.
        let again = weavster(tmp.path(), &["compile"], &env);
        assert_eq!(again.code, 0);
        assert!(!again.stdout.contains(" compiled "), "{}", again.stdout);
        let t = weavster(tmp.path(), &["test"], &env);
        assert_eq!(
            t.code, 0,
            "{name}: fixtures failed:\n{}{}",
            t.stdout, t.stderr
        );
        assert!(
            t.stdout
                .lines()
                .last()
                .is_some_and(|l| l.ends_with("passed, 0 failed")),
            "{}",
            t.stdout
        );
    }
}

#[test]
fn a_failing_fixture_prints_a_diff_and_exits_1() {
    let (tmp, env) = example("orders");
    let case = tmp.path().join("tests/orders/basic.yaml");
    let text = std::fs::read_to_string(&case)
        .expect("fixture")
        .replace("country_name: Germany", "country_name: Deutschland");
    std::fs::write(&case, text).expect("write");
    let out = weavster(tmp.path(), &["test", "--select", "orders"], &env);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    insta::assert_snapshot!("test_failure", out.stdout);
}

#[test]
fn compile_reports_unknown_flows_and_invalid_projects() {
    let (tmp, env) = example("orders");
    let out = weavster(tmp.path(), &["compile", "--flow", "order"], &env);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no flow named `order`"),
        "{}",
        out.stderr
    );
    std::fs::write(
        tmp.path().join("flows/broken.yaml"),
        "input: nope\noutputs: []\n",
    )
    .expect("write");
    let out = weavster(tmp.path(), &["compile"], &env);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("nothing was compiled"),
        "{}",
        out.stderr
    );
}

#[test]
fn examples_validate() {
    let examples = repo().join("flows-examples");
    let mut n = 0;
    for e in std::fs::read_dir(&examples)
        .expect("flows-examples")
        .filter_map(Result::ok)
    {
        if e.path().join("weavster.yaml").is_file() {
            let out = weavster(&e.path(), &["validate"], &[]);
            assert_eq!(
                out.code,
                0,
                "{} is invalid:\n{}",
                e.path().display(),
                out.stderr
            );
            n += 1;
        }
    }
    assert!(n >= 1, "no example projects found");
    // weavster.yaml.example is a complete, valid project file.
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        repo().join("weavster.yaml.example"),
        tmp.path().join("weavster.yaml"),
    )
    .expect("copy");
    let out = weavster(tmp.path(), &["validate"], &[]);
    assert_eq!(
        out.code, 0,
        "weavster.yaml.example is invalid:\n{}",
        out.stderr
    );
}

/// `validate` ≡ `run`: every corpus project `validate` accepts (warnings
/// allowed) starts and finishes `run --once` with no configuration error
/// (exit 0, or 1 when records were dead-lettered; never 2, never an
/// `error:` line), and so does a fresh `init`.
#[test]
fn what_validate_accepts_runs() {
    let root = repo().join("tests/corpus");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.ends_with("_base"))
        .collect();
    cases.sort();
    let mut ran = 0;
    // Compiled wasm dependencies shared with the other tests.
    let shared = (
        "WEAVSTER_CARGO_TARGET_DIR".to_string(),
        repo().join("target/weavster-flows").display().to_string(),
    );
    let run_once = |dir: &Path, args: &[String], env: &[(String, String)], what: &str| {
        let mut full: Vec<&str> = vec!["run", "--once"];
        full.extend(args.iter().map(String::as_str));
        let mut env = env.to_vec();
        env.push(shared.clone());
        let out = weavster(dir, &full, &env);
        assert!(
            (out.code == 0 || out.code == 1) && !out.stderr.contains("error:"),
            "{what}: validate accepts it, run refuses it (exit {}):\n{}",
            out.code,
            out.stderr
        );
    };
    for case in &cases {
        let (tmp, args, env) = corpus_project(case);
        let mut full: Vec<&str> = vec!["validate"];
        full.extend(args.iter().map(String::as_str));
        if weavster(tmp.path(), &full, &env).code != 0 {
            continue;
        }
        run_once(tmp.path(), &args, &env, &case.display().to_string());
        ran += 1;
    }
    assert!(ran >= 3, "only {ran} valid corpus projects");
    let tmp = tempfile::tempdir().expect("tmp");
    let env: Vec<(String, String)> = Vec::new();
    let out = weavster(tmp.path(), &["init", "fresh"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = tmp.path().join("fresh");
    assert_eq!(weavster(&dir, &["validate"], &env).code, 0);
    run_once(&dir, &[], &env, "weavster init");
}

/// Every YAML file `init` writes starts with a `yaml-language-server`
/// hint; the hint resolves (from the file) to a schema file the tool
/// wrote, equal to the current schema; and the file validates against it
/// (the `jsonschema` crate, independent of our own checks).
#[test]
fn init_files_point_editors_at_the_current_schemas() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = weavster(tmp.path(), &["init", "shop"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let project = tmp.path().join("shop");
    let mut files = Vec::new();
    collect(&project, &project, &mut files);
    let current = weavster_spec::types::schemas();
    let mut checked = 0;
    for f in files.iter().filter(|f| f.ends_with(".yaml")) {
        let path = project.join(f);
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().unwrap_or_default();
        let rel = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{f} starts with {first:?}, not a schema hint"));
        let schema_path = path.parent().expect("dir").join(rel);
        let schema_text = std::fs::read_to_string(&schema_path)
            .unwrap_or_else(|e| panic!("{f}: {} does not resolve: {e}", schema_path.display()));
        let name = schema_path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let want = serde_json::to_string_pretty(&current[name.as_str()]).expect("json") + "\n";
        assert_eq!(schema_text, want, "{f}: {name} is not the current schema");
        let schema: serde_json::Value = serde_json::from_str(&schema_text).expect("schema");
        let value: serde_json::Value = weavster_spec::yaml::from_str(&text).expect("yaml");
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{f} against {name}: {errors:#?}");
        checked += 1;
    }
    assert_eq!(
        checked, 5,
        "weavster.yaml, profiles, connectors, a flow, a test"
    );
}

/// `docker/`: the Dockerfile passes hadolint (installed by setup.sh; no
/// Docker engine here to build it), and the compose file and Kubernetes
/// manifests parse and hold what docker/README.md says they do.
#[test]
fn docker_files_lint_and_hold_what_the_readme_says() {
    use weavster_spec::yaml::{self, Node, Step};
    let root = repo();
    let dockerfile = root.join("docker/Dockerfile.runtime");
    let lint = std::process::Command::new(root.join(".tools/bin/hadolint"))
        .arg(&dockerfile)
        .output()
        .expect("hadolint (scripts/setup.sh installs it)");
    assert!(
        lint.status.success(),
        "hadolint:\n{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    for want in [
        "scripts/build-static.sh",
        "FROM scratch",
        "ca-certificates.crt",
        "USER 65532:65532",
        "HEALTHCHECK",
        "\"/weavster\", \"health\"",
        "ENTRYPOINT [\"/weavster\"]",
    ] {
        assert!(text.contains(want), "the Dockerfile lacks {want}");
    }
    let scalar = |n: &Node, path: &[&str]| -> String {
        let steps: Vec<Step<'_>> = path.iter().map(|k| Step::Key(k)).collect();
        n.find(&steps).raw.clone().unwrap_or_default()
    };
    let compose = yaml::parse(
        &std::fs::read_to_string(root.join("docker/docker-compose.yml")).expect("compose"),
    )
    .expect("compose parses");
    assert_eq!(
        scalar(&compose, &["services", "weavster", "deploy", "replicas"]),
        "3"
    );
    assert!(scalar(&compose, &["services", "queue", "image"]).starts_with("postgres:"));
    assert!(scalar(&compose, &["services", "broker", "image"]).contains("tansu"));
    // The replicas' queue is the init scaffold's prod target's variable.
    assert!(
        !scalar(
            &compose,
            &["services", "weavster", "environment", "WEAVSTER_PG_URL"]
        )
        .is_empty()
    );
    let profiles =
        std::fs::read_to_string(root.join("templates/project/profiles.yaml")).expect("template");
    assert!(profiles.contains("env_var('WEAVSTER_PG_URL')"));
    let k8s = std::fs::read_to_string(root.join("docker/k8s/weavster.yaml")).expect("k8s");
    let docs: Vec<Node> = k8s
        .split("\n---\n")
        .map(|d| yaml::parse(d).expect("a manifest parses"))
        .collect();
    let kinds: Vec<String> = docs.iter().map(|d| scalar(d, &["kind"])).collect();
    assert_eq!(kinds, ["ConfigMap", "Secret", "Deployment"]);
    let container = docs[2]
        .find(&[
            Step::Key("spec"),
            Step::Key("template"),
            Step::Key("spec"),
            Step::Key("containers"),
        ])
        .items()
        .first()
        .cloned()
        .expect("a container");
    assert_eq!(
        scalar(&container, &["readinessProbe", "httpGet", "path"]),
        "/ready"
    );
    assert_eq!(
        scalar(&container, &["livenessProbe", "httpGet", "path"]),
        "/health"
    );
    let args: Vec<String> = container
        .find(&[Step::Key("args")])
        .items()
        .iter()
        .filter_map(|a| a.raw.clone())
        .collect();
    assert!(args.iter().any(|a| a == "--package") && args.iter().any(|a| a == "--key"));
}
