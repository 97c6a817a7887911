//! `weavster docs`: the project as a self-contained static site — a lineage
//! graph (inline SVG), one page per flow and per connector, a searchable
//! index. Every asset is embedded in the binary; the pages load nothing
//! from anywhere but their own directory.
//!
//! [`generate`] builds the pages in memory from a checked project and what
//! earlier commands left in `.weavster/target` (compiled modules, the last
//! test and run results); [`Site::write`] writes them. Everything shown is
//! masked by the project's secrets first.

pub mod lineage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::Serde;
use minijinja::{Environment, Value as J, context};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weavster_project::{Manifest, Project};

#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("template {name}: {source}")]
    Template {
        name: &'static str,
        #[source]
        source: minijinja::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A compiled module, as `compile` recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct Module {
    pub flow: String,
    pub profile: String,
    pub key: String,
    /// Project-relative path of the `.wasm`.
    pub file: String,
    /// `None` when the file is gone.
    pub size: Option<u64>,
}

/// What the last `weavster test` found (`.weavster/target/test_results.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TestResults {
    pub results: Vec<TestResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub flow: String,
    pub test: String,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl TestResults {
    /// `self` with `newer`'s results in place of the same tests' (a run of
    /// some flows keeps what is known of the others).
    pub fn merge(mut self, newer: TestResults) -> TestResults {
        self.results.retain(|r| {
            !newer
                .results
                .iter()
                .any(|n| n.flow == r.flow && n.test == r.test)
        });
        self.results.extend(newer.results);
        self.results
            .sort_by(|a, b| (&a.flow, &a.test).cmp(&(&b.flow, &b.test)));
        self
    }
}

/// What the site is made of.
pub struct Inputs<'a> {
    pub project: &'a Project,
    /// Project-relative file → rendered text, secrets masked (`Loaded::sources`).
    pub sources: &'a BTreeMap<String, String>,
    pub modules: Vec<Module>,
    pub tests: Option<TestResults>,
    /// `.weavster/target/run_results.json`.
    pub run: Option<Value>,
}

/// The site: relative path → bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Site {
    pub files: BTreeMap<String, Vec<u8>>,
}

const ASSETS: &[(&str, &str)] = &[
    ("base.html", include_str!("../assets/base.html")),
    ("index.html", include_str!("../assets/index.html")),
    ("flow.html", include_str!("../assets/flow.html")),
    ("connector.html", include_str!("../assets/connector.html")),
];
const STYLE: &str = include_str!("../assets/style.css");
const SEARCH: &str = include_str!("../assets/search.js");

/// Builds every page.
pub fn generate(inputs: &Inputs<'_>) -> Result<Site, DocsError> {
    let p = inputs.project;
    let secrets = &p.secrets;
    let manifest = Manifest::new(p);
    let mut env = Environment::new();
    for (name, text) in ASSETS {
        env.add_template(name, text)
            .map_err(|source| DocsError::Template { name, source })?;
    }
    let render = |name: &'static str, ctx: minijinja::Value| {
        env.get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|source| DocsError::Template { name, source })
    };
    let graph = lineage::graph(p);
    let svg = lineage::svg(&graph);

    let link = |reference: &str| -> Value {
        match reference.strip_prefix("bridge.") {
            Some(flow) => {
                json!({"name": reference, "href": format!("flows/{flow}.html"), "kind": "bridge from other flows"})
            }
            None => {
                let kind = p
                    .connectors
                    .get(reference)
                    .map(|c| c.connector.type_name())
                    .unwrap_or("");
                json!({"name": reference, "href": format!("connectors/{reference}.html"), "kind": kind})
            }
        }
    };
    let last_run = inputs.run.as_ref().map(|r| secrets.mask_value(r));
    let mut flows = Vec::new();
    for f in &p.flows {
        let transforms: Vec<Value> = f
            .spec
            .transforms
            .iter()
            .map(|t| {
                let body = serde_json::to_value(t)
                    .ok()
                    .and_then(|v| v.get(t.name()).cloned())
                    .unwrap_or(Value::Null);
                let body = secrets.mask_value(&body);
                json!({
                    "name": t.name(),
                    "body": serde_json::to_string_pretty(&body).unwrap_or_default(),
                })
            })
            .collect();
        let outputs: Vec<Value> = f
            .spec
            .outputs
            .iter()
            .map(|o| {
                json!({
                    "to": o.to,
                    "href": link(&o.to)["href"],
                    "when": o.when.as_ref().map(|w| secrets.mask(w)),
                })
            })
            .collect();
        let tests: Vec<Value> = p
            .tests
            .iter()
            .filter(|t| t.flow == f.name)
            .map(|t| {
                let result = inputs.tests.as_ref().and_then(|r| {
                    r.results
                        .iter()
                        .find(|x| x.flow == t.flow && x.test == t.name)
                });
                json!({
                    "name": t.name,
                    "file": t.file,
                    "status": match result {
                        Some(r) if r.passed => "passed",
                        Some(_) => "failed",
                        None => "not run",
                    },
                    "message": result.and_then(|r| r.message.as_deref()).map(|m| secrets.mask(m)),
                })
            })
            .collect();
        let passed = tests.iter().filter(|t| t["status"] == "passed").count();
        let failed = tests.iter().filter(|t| t["status"] == "failed").count();
        let tests_summary = match (tests.len(), failed) {
            (0, _) => "none".to_string(),
            (n, 0) if passed == n => format!("{n} passed"),
            (n, 0) if passed == 0 => format!("{n}, not run"),
            (n, 0) => format!("{n} ({passed} passed, the rest not run)"),
            (n, failed) => format!("{n} ({failed} failed)"),
        };
        let module = inputs.modules.iter().find(|m| m.flow == f.name);
        let run = last_run
            .as_ref()
            .and_then(|r| r.get("flows"))
            .and_then(|fl| fl.get(&f.name))
            .cloned();
        let mut search = vec![f.name.clone(), f.spec.input.clone()];
        search.extend(f.spec.description.clone());
        search.extend(f.spec.outputs.iter().map(|o| o.to.clone()));
        search.extend(transforms.iter().map(|t| {
            format!(
                "{} {}",
                t["name"].as_str().unwrap_or(""),
                t["body"].as_str().unwrap_or("")
            )
        }));
        flows.push(json!({
            "name": f.name,
            "file": f.file,
            "description": f.spec.description,
            "input": link(&f.spec.input),
            "transforms": transforms,
            "outputs": outputs,
            "tests": tests,
            "tests_summary": tests_summary,
            "module": module,
            "run": run,
            "source": inputs.sources.get(&f.file).cloned().unwrap_or_default(),
            "search": secrets.mask(&search.join(" ")),
        }));
    }
    let connectors: Vec<Value> = manifest
        .connectors
        .iter()
        .map(|c| {
            let mut used_by = Vec::new();
            for f in &p.flows {
                if f.spec.input == c.reference {
                    used_by.push(json!({"flow": f.name, "as": "input"}));
                }
                if f.spec.outputs.iter().any(|o| o.to == c.reference) {
                    used_by.push(json!({"flow": f.name, "as": "output"}));
                }
            }
            let config = serde_json::to_string_pretty(&c.config).unwrap_or_default();
            json!({
                "ref": c.reference,
                "type": c.kind,
                "file": c.file,
                "config": config,
                "used_by": used_by,
                "search": format!("{} {} {} {}", c.reference, c.kind, c.file, config),
            })
        })
        .collect();
    let project = json!({
        "name": p.name,
        "profile": p.profile,
        "target": p.target,
    });
    let version = env!("CARGO_PKG_VERSION");
    let mut site = Site::default();
    let index = render(
        "index.html",
        context! {
            root => "",
            version,
            project => J::from(Serde(&project)),
            svg,
            flows => J::from(Serde(&flows)),
            connectors => J::from(Serde(&connectors)),
            lookups => J::from(Serde(&manifest.lookups)),
            run => J::from(Serde(&last_run)),
        },
    )?;
    site.files.insert("index.html".into(), index.into_bytes());
    for f in &flows {
        let page = render(
            "flow.html",
            context! { root => "../", version, project => J::from(Serde(&project)), flow => J::from(Serde(f)) },
        )?;
        let name = f["name"].as_str().unwrap_or_default();
        site.files
            .insert(format!("flows/{name}.html"), page.into_bytes());
    }
    for c in &connectors {
        let page = render(
            "connector.html",
            context! { root => "../", version, project => J::from(Serde(&project)), connector => J::from(Serde(c)) },
        )?;
        let name = c["ref"].as_str().unwrap_or_default();
        site.files
            .insert(format!("connectors/{name}.html"), page.into_bytes());
    }
    site.files
        .insert("style.css".into(), STYLE.as_bytes().to_vec());
    site.files
        .insert("search.js".into(), SEARCH.as_bytes().to_vec());
    // What a script or a test reads without parsing HTML.
    let nodes: Vec<Value> = graph
        .nodes
        .iter()
        .map(|n| json!({"id": n.id(), "kind": n.kind.class(), "name": n.name, "href": n.href()}))
        .collect();
    let edges: Vec<Value> = graph
        .edges
        .iter()
        .map(|e| json!({"from": graph.nodes[e.from].id(), "to": graph.nodes[e.to].id(), "bridge": e.bridge}))
        .collect();
    let lineage = json!({"nodes": nodes, "edges": edges});
    site.files.insert(
        "lineage.json".into(),
        serde_json::to_vec_pretty(&lineage).unwrap_or_default(),
    );
    Ok(site)
}

/// The subdirectories whose pages the site owns (stale pages are removed).
const OWNED: &[&str] = &["flows", "connectors"];

impl Site {
    /// Writes the site under `dir`, replacing its earlier pages: a flow or
    /// connector that is gone loses its page. Nothing else in `dir` is
    /// touched.
    pub fn write(&self, dir: &Path) -> Result<(), DocsError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DocsError::Write { path, source }
        };
        for sub in OWNED {
            let d = dir.join(sub);
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".html") && !self.files.contains_key(&format!("{sub}/{name}")) {
                    std::fs::remove_file(e.path()).map_err(werr(&e.path()))?;
                }
            }
        }
        for (rel, bytes) in &self.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(werr(parent))?;
            }
            std::fs::write(&path, bytes).map_err(werr(&path))?;
        }
        Ok(())
    }

    /// The file a URL path names (`/` is the index).
    pub fn get(&self, url_path: &str) -> Option<(&'static str, &[u8])> {
        let rel = url_path.trim_start_matches('/');
        let rel = if rel.is_empty() { "index.html" } else { rel };
        let bytes = self.files.get(rel)?;
        let kind = match rel.rsplit_once('.').map(|(_, e)| e) {
            Some("html") => "text/html; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("json") => "application/json",
            _ => "application/octet-stream",
        };
        Some((kind, bytes))
    }
}
