//! File discovery and the loading pipeline: read → render → parse → resolve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use weavster_spec::diag::did_you_mean;
use weavster_spec::types::{Connector, FlowFile, Profile, ProjectFile, Runtime, Target, TestCase};
use weavster_spec::yaml::{self, Node, NodeKind, Step};
use weavster_spec::{Diagnostic, Span};

use crate::check::{self, de_diagnostic};
use crate::ident::{is_identifier, quoted_list, to_identifier};
use crate::render::{RenderContext, render, span_of};
use crate::secrets::Secrets;
use crate::{ConnectorDef, FlowDef, LoadError, LoadOptions, Loaded, LookupTable, Project, TestDef};

pub(crate) const PROJECT_FILE: &str = "weavster.yaml";
pub(crate) const PROFILES_FILE: &str = "profiles.yaml";

/// Loads and checks the project in `opts.project_dir`, in phases: discover
/// the files → render and parse `weavster.yaml` → choose the target in
/// `profiles.yaml` → resolve vars and runtime → render, parse and check
/// lookups, connectors (with the target's overrides), flows and tests →
/// order and mask the diagnostics. A phase reports what it finds and goes
/// on: every problem of every file is reported at once.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let files = discover(opts)?;
    let cli_vars = match &opts.vars {
        Some(text) => cli_vars(text)?,
        None => IndexMap::new(),
    };
    let mut l = Loader {
        diags: Vec::new(),
        sources: BTreeMap::new(),
        shown: BTreeMap::new(),
        secrets: Arc::new(Secrets::default()),
    };
    let secrets = Arc::clone(&l.secrets);
    let early = RenderContext {
        env: &opts.env,
        vars: cli_vars.clone(),
        target: None,
        project: None,
        secrets: &secrets,
        lenient_env: false,
        protect_record_templates: false,
    };
    let head = l.project_file(&files, &early)?;
    let chosen = l.target(opts, &files, &head, &early)?;

    let mut project = Project {
        root: files.root.clone(),
        secrets: Arc::clone(&secrets),
        name: head.name.clone(),
        profile: head.profile.clone(),
        target: chosen.name.clone(),
        profiles_path: files.profiles.clone(),
        vars: resolve_vars(head.file.as_ref(), chosen.target.as_ref(), cli_vars),
        runtime: resolve_runtime(head.file.as_ref(), chosen.target.as_ref()),
        ..Project::default()
    };
    project.file = head.file;

    // Files after weavster.yaml and profiles.yaml see the resolved vars,
    // target and project; flows keep record templates for run time.
    let ctx = RenderContext {
        env: &opts.env,
        vars: project.vars.clone(),
        target: Some(serde_json::json!({ "name": project.target, "profile": project.profile })),
        project: Some(serde_json::json!({
            "name": project.name,
            "version": project.file.as_ref().and_then(|f| f.version.clone()),
        })),
        secrets: &secrets,
        lenient_env: false,
        protect_record_templates: false,
    };
    let flow_ctx = RenderContext {
        protect_record_templates: true,
        vars: ctx.vars.clone(),
        target: ctx.target.clone(),
        project: ctx.project.clone(),
        ..ctx
    };

    l.lookups(&files, &mut project)?;
    let connector_nodes = l.connectors(&files, &ctx, &mut project)?;
    l.overrides(&chosen, &mut project);
    for def in project.connectors.values() {
        if let Ok(v) = serde_json::to_value(&def.connector) {
            secrets.add_secret_fields(&v);
        }
        if let Some(node) = connector_nodes.get(&def.reference) {
            check::connector(
                &mut l.diags,
                def,
                node,
                &files.root,
                &project.runtime.allowed_paths,
            );
        }
    }
    let broken_flows = l.flows(&files, &flow_ctx, &mut project, &connector_nodes)?;
    l.tests(&files, &ctx, &broken_flows, &mut project)?;
    Ok(l.finish(project, head.ok))
}

/// Phase 1: the project's files by kind, each list sorted by name.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Files {
    pub root: PathBuf,
    pub project: PathBuf,
    /// The profiles.yaml found (`--profiles-dir`, `$WEAVSTER_PROFILES_DIR`,
    /// the project, `~/.weavster`).
    pub profiles: Option<PathBuf>,
    pub lookups: Vec<PathBuf>,
    pub connectors: Vec<PathBuf>,
    pub flows: Vec<PathBuf>,
    /// `tests/<dir>/` → its cases.
    pub tests: Vec<(String, Vec<PathBuf>)>,
}

pub(crate) fn discover(opts: &LoadOptions) -> Result<Files, LoadError> {
    let root = opts.project_dir.clone();
    let project = root.join(PROJECT_FILE);
    if !project.is_file() {
        return Err(LoadError::NotAProject(root));
    }
    let mut tests = Vec::new();
    let tests_dir = root.join("tests");
    if tests_dir.is_dir() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
            .map_err(|source| LoadError::Io {
                path: tests_dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            tests.push((name, list(&dir, &["yaml", "yml"])?));
        }
    }
    Ok(Files {
        profiles: find_profiles(opts, &root),
        lookups: list(&root.join("lookups"), &["csv"])?,
        connectors: list(&root.join("connectors"), &["yaml", "yml"])?,
        flows: list(&root.join("flows"), &["yaml", "yml"])?,
        tests,
        project,
        root,
    })
}

/// Phase 2: `weavster.yaml`, rendered with `--vars` only.
pub(crate) struct Head {
    pub file: Option<ProjectFile>,
    pub node: Option<Node>,
    /// The file parsed: with a broken weavster.yaml the profile name and
    /// vars are unknown, and problems that follow from that are not
    /// reported.
    pub ok: bool,
    /// `name:`, or the directory's name.
    pub name: String,
    /// `profile:`, or the name.
    pub profile: String,
}

/// Phase 3: the target chosen in `profiles.yaml`.
#[derive(Default)]
pub(crate) struct Chosen {
    pub name: String,
    pub target: Option<Target>,
    /// Its node, for locating overrides.
    pub node: Option<Node>,
    /// The profiles file as shown in diagnostics.
    pub file: String,
}

/// Phase 4: `--vars` over the target's vars over the project's.
pub(crate) fn resolve_vars(
    project: Option<&ProjectFile>,
    target: Option<&Target>,
    cli: IndexMap<String, Value>,
) -> IndexMap<String, Value> {
    let mut vars = project.map(|p| p.vars.clone()).unwrap_or_default();
    if let Some(t) = target {
        for (k, v) in &t.vars {
            vars.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in cli {
        vars.insert(k, v);
    }
    vars
}

/// Phase 4: the runtime: defaults ← weavster.yaml ← target.
pub(crate) fn resolve_runtime(project: Option<&ProjectFile>, target: Option<&Target>) -> Runtime {
    let mut runtime = Runtime::default();
    if let Some(rt) = project.and_then(|p| p.runtime.as_ref()) {
        runtime.apply(rt);
    }
    if let Some(rt) = target.and_then(|t| t.runtime.as_ref()) {
        runtime.apply(rt);
    }
    runtime
}

impl Loader {
    fn project_file(
        &mut self,
        files: &Files,
        early: &RenderContext<'_>,
    ) -> Result<Head, LoadError> {
        let text = read(&files.project)?;
        let node = self.render_parse(PROJECT_FILE, &text, early);
        let file: Option<ProjectFile> = node
            .as_ref()
            .and_then(|n| self.deserialize(PROJECT_FILE, n));
        let dir_name = files
            .root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "project".into());
        let name = file.as_ref().map(|p| p.name.clone()).unwrap_or(dir_name);
        if let (Some(pf), Some(node)) = (&file, &node) {
            if !is_identifier(&pf.name) {
                self.push(
                    Diagnostic::error(
                        "project::name",
                        format!("invalid project name `{}`", pf.name),
                    )
                    .in_file(PROJECT_FILE)
                    .at(node.find(&[Step::Key("name")]).span)
                    .expected("lowercase letters, digits and `_`, starting with a letter")
                    .hint(format!("try `{}`", to_identifier(&pf.name))),
                );
            }
            if let Some(rt) = &pf.runtime {
                check::runtime(
                    &mut self.diags,
                    PROJECT_FILE,
                    node.find(&[Step::Key("runtime")]),
                    rt,
                );
            }
        }
        let profile = file
            .as_ref()
            .and_then(|p| p.profile.clone())
            .unwrap_or_else(|| name.clone());
        Ok(Head {
            ok: file.is_some(),
            file,
            node,
            name,
            profile,
        })
    }

    /// The target: `--target`, then `$WEAVSTER_TARGET`, then the profile's
    /// `target`; `dev` when there is no profiles.yaml.
    fn target(
        &mut self,
        opts: &LoadOptions,
        files: &Files,
        head: &Head,
        early: &RenderContext<'_>,
    ) -> Result<Chosen, LoadError> {
        let requested = opts
            .target
            .clone()
            .or_else(|| opts.env.get("WEAVSTER_TARGET").cloned());
        let fallback = requested.clone().unwrap_or_else(|| "dev".into());
        let Some(path) = &files.profiles else {
            if requested.is_some() {
                self.push(
                    Diagnostic::error("profiles::missing", "a target was requested but no profiles.yaml was found")
                        .hint("looked in --profiles-dir, $WEAVSTER_PROFILES_DIR, the project dir and ~/.weavster/"),
                );
            }
            return Ok(Chosen {
                name: fallback,
                ..Chosen::default()
            });
        };
        let rel = display_path(&files.root, path);
        let mut chosen = Chosen {
            name: fallback,
            file: rel.clone(),
            ..Chosen::default()
        };
        let text = read(path)?;
        // Env vars of other targets may be unset here: reported only for
        // the target chosen (below).
        let lenient = RenderContext {
            lenient_env: true,
            vars: early.vars.clone(),
            target: early.target.clone(),
            project: early.project.clone(),
            ..*early
        };
        let Some(node) = self.render_parse(&rel, &text, &lenient) else {
            return Ok(chosen);
        };
        let profiles = self.profiles(&rel, &node);
        let Some(profile) = profiles.get(&head.profile) else {
            let reported = !head.ok
                || node.get(&head.profile).is_some()
                || !matches!(node.kind, NodeKind::Map(_) | NodeKind::Null);
            if !reported {
                let names: Vec<&str> = profiles.keys().map(String::as_str).collect();
                let mut d = Diagnostic::error(
                    "profiles::unknown-profile",
                    format!("profile `{}` is not defined in {rel}", head.profile),
                )
                .in_file(PROJECT_FILE)
                .expected(if names.is_empty() {
                    "a profile".to_string()
                } else {
                    format!("one of {}", quoted_list(&names))
                })
                .maybe_hint(
                    did_you_mean(&head.profile, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`?")),
                );
                if let Some(n) = &head.node {
                    let at = n
                        .get("profile")
                        .or_else(|| n.get("name"))
                        .map(|n| n.span)
                        .unwrap_or(n.span);
                    d = d.at(at);
                }
                self.push(d);
            }
            return Ok(chosen);
        };
        let profile_node = node.get(&head.profile).cloned();
        chosen.name = requested.clone().unwrap_or_else(|| profile.target.clone());
        match profile.outputs.get(&chosen.name) {
            Some(t) => {
                chosen.target = Some(t.clone());
                chosen.node = profile_node.as_ref().map(|p| {
                    p.find(&[Step::Key("outputs"), Step::Key(&chosen.name)])
                        .clone()
                });
                if let Some(tn) = &chosen.node {
                    self.unset_env_vars(&rel, tn);
                    if let Some(rt) = &t.runtime {
                        check::runtime(&mut self.diags, &rel, tn.find(&[Step::Key("runtime")]), rt);
                    }
                }
            }
            None => {
                let names: Vec<&str> = profile.outputs.keys().map(String::as_str).collect();
                let key = if requested.is_none() {
                    "target"
                } else {
                    "outputs"
                };
                let at = profile_node
                    .as_ref()
                    .map(|p| p.find(&[Step::Key(key)]).span);
                let mut d = Diagnostic::error(
                    "profiles::unknown-target",
                    format!("profile `{}` has no target `{}`", head.profile, chosen.name),
                )
                .in_file(&rel)
                .expected(format!("one of {}", quoted_list(&names)))
                .maybe_hint(
                    did_you_mean(&chosen.name, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`?")),
                );
                if let Some(at) = at {
                    d = d.at(at);
                }
                self.push(d);
            }
        }
        Ok(chosen)
    }

    /// Phase 5: `lookups/*.csv`.
    fn lookups(&mut self, files: &Files, project: &mut Project) -> Result<(), LoadError> {
        for path in &files.lookups {
            let rel = display_path(&files.root, path);
            let text = read(path)?;
            let name = stem(path);
            let Some(table) = self.lookup(&rel, &text) else {
                project.broken.insert(format!("lookup:{name}"));
                continue;
            };
            if !is_identifier(&name) {
                self.push(
                    Diagnostic::error(
                        "lookup::name",
                        format!("invalid lookup table name `{name}`"),
                    )
                    .in_file(&rel)
                    .expected(
                        "a file name of lowercase letters, digits and `_`, starting with a letter",
                    ),
                );
            }
            project.lookups.insert(name, table);
        }
        Ok(())
    }

    /// Phase 5: `connectors/*.yaml`; returns each connector's node (for
    /// the checks, after the target's overrides).
    fn connectors(
        &mut self,
        files: &Files,
        ctx: &RenderContext<'_>,
        project: &mut Project,
    ) -> Result<IndexMap<String, Node>, LoadError> {
        let mut nodes: IndexMap<String, Node> = IndexMap::new();
        for path in &files.connectors {
            let rel = display_path(&files.root, path);
            let text = read(path)?;
            let file_stem = stem(path);
            let Some(node) = self.render_parse(&rel, &text, ctx) else {
                project.broken.insert(format!("connectors:{file_stem}"));
                continue;
            };
            if file_stem == "bridge" {
                self.push(
                    Diagnostic::error(
                        "connector::reserved",
                        "`bridge` is reserved for flow-to-flow references",
                    )
                    .in_file(&rel)
                    .at(file_start())
                    .hint("rename this file; refer to another flow's queue as `bridge.<flow>`"),
                );
                continue;
            }
            if !is_identifier(&file_stem) {
                self.push(
                    Diagnostic::error("connector::file-name", format!("invalid connectors file name `{file_stem}`"))
                        .in_file(&rel)
                        .at(file_start())
                        .expected("a file name of lowercase letters, digits and `_` (it is the first half of `file.key` refs)"),
                );
                project.broken.insert(format!("connectors:{file_stem}"));
                continue;
            }
            let entries = match &node.kind {
                NodeKind::Map(entries) => entries,
                NodeKind::Null => continue,
                other => {
                    self.push(
                        Diagnostic::error(
                            "schema::wrong-type",
                            format!(
                                "expected a map of `name: connector`, found {}",
                                other.describe()
                            ),
                        )
                        .in_file(&rel)
                        .at(node.span),
                    );
                    continue;
                }
            };
            for (k, v) in entries {
                let key = k.raw.clone().unwrap_or_default();
                if !is_identifier(&key) {
                    self.push(
                        Diagnostic::error(
                            "connector::name",
                            format!("invalid connector name `{key}`"),
                        )
                        .in_file(&rel)
                        .at(k.span)
                        .expected("lowercase letters, digits and `_`, starting with a letter"),
                    );
                    continue;
                }
                let reference = format!("{file_stem}.{key}");
                match self.connector(&rel, v) {
                    Some(c) => {
                        nodes.insert(reference.clone(), v.clone());
                        project.connectors.insert(
                            reference.clone(),
                            ConnectorDef {
                                reference,
                                file: rel.clone(),
                                connector: c,
                            },
                        );
                    }
                    None => {
                        project.broken.insert(format!("connector:{reference}"));
                    }
                }
            }
        }
        Ok(nodes)
    }

    /// Phase 5: the target's connector overrides, merged into the connectors.
    fn overrides(&mut self, chosen: &Chosen, project: &mut Project) {
        let Some(target) = &chosen.target else { return };
        for (reference, patch) in &target.connectors {
            let at = chosen.node.as_ref().map(|t| {
                t.find(&[Step::Key("connectors"), Step::Key(reference)])
                    .span
            });
            let Some(def) = project.connectors.get_mut(reference) else {
                if project.broken.contains(&format!("connector:{reference}"))
                    || reference
                        .split_once('.')
                        .is_some_and(|(f, _)| project.broken.contains(&format!("connectors:{f}")))
                {
                    continue;
                }
                let names: Vec<&str> = project.connectors.keys().map(String::as_str).collect();
                let mut d = Diagnostic::error(
                    "profiles::unknown-connector",
                    format!(
                        "target `{}` overrides unknown connector `{reference}`",
                        project.target
                    ),
                )
                .in_file(&chosen.file)
                .maybe_hint(
                    did_you_mean(reference, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`?")),
                );
                if let Some(at) = at {
                    d = d.at(at);
                }
                self.push(d);
                continue;
            };
            let mut merged = serde_json::to_value(&def.connector).unwrap_or(Value::Null);
            deep_merge(&mut merged, patch);
            match serde_json::from_value::<Connector>(merged) {
                Ok(c) => def.connector = c,
                Err(e) => {
                    let mut d = Diagnostic::error(
                        "profiles::bad-override",
                        format!("override of `{reference}` makes it invalid: {e}"),
                    )
                    .in_file(&chosen.file);
                    if let Some(at) = at {
                        d = d.at(at);
                    }
                    self.push(d);
                }
            }
        }
    }

    /// Phase 5: `flows/*.yaml`, then the checks across flows and
    /// connectors. Returns the stems of flow files that did not load
    /// (their tests are not checked).
    fn flows(
        &mut self,
        files: &Files,
        flow_ctx: &RenderContext<'_>,
        project: &mut Project,
        connector_nodes: &IndexMap<String, Node>,
    ) -> Result<Vec<String>, LoadError> {
        let mut flow_nodes: Vec<(FlowDef, Node)> = Vec::new();
        let mut broken = Vec::new();
        // Flow files that parsed as YAML but not as a flow: checked part by part.
        let mut partial = Vec::new();
        let allow_env = project
            .file
            .as_ref()
            .is_some_and(|f| f.allow_env_var_in_flows);
        for path in &files.flows {
            let rel = display_path(&files.root, path);
            let text = read(path)?;
            let Some((node, rendered)) = self.render_parse_keep(&rel, &text, flow_ctx) else {
                broken.push(stem(path));
                continue;
            };
            self.env_in_flow(&rel, &rendered, allow_env);
            let Some(spec) = self.flow(&rel, &node) else {
                broken.push(stem(path));
                partial.push((stem(path), rel, node));
                continue;
            };
            let name = spec.name.clone().unwrap_or_else(|| stem(path));
            let name_span = node.get("name").map(|n| n.span).unwrap_or(file_start());
            if !is_identifier(&name) {
                self.push(
                    Diagnostic::error("flow::name", format!("invalid flow name `{name}`"))
                        .in_file(&rel)
                        .at(name_span)
                        .expected("lowercase letters, digits and `_`, starting with a letter")
                        .maybe_hint(spec.name.is_none().then(|| {
                            "the name defaults to the file stem; set `name:` or rename the file"
                                .into()
                        })),
                );
            }
            if let Some((first, _)) = flow_nodes.iter().find(|(f, _)| f.name == name) {
                self.push(
                    Diagnostic::error(
                        "flow::duplicate",
                        format!("flow `{name}` is already defined in {}", first.file),
                    )
                    .in_file(&rel)
                    .at(name_span)
                    .hint("flow names must be unique; set a different `name:`"),
                );
                continue;
            }
            flow_nodes.push((
                FlowDef {
                    name,
                    file: rel,
                    spec,
                },
                node,
            ));
        }
        check::flows(&mut self.diags, project, &flow_nodes);
        check::one_way_keys(&mut self.diags, project, &flow_nodes, connector_nodes);
        check::own_output(&mut self.diags, project, &flow_nodes);
        for (name, rel, node) in &partial {
            check::partial_flow(&mut self.diags, project, &flow_nodes, name, rel, node);
        }
        project.flows = flow_nodes.into_iter().map(|(f, _)| f).collect();
        Ok(broken)
    }

    /// Phase 5: `tests/<flow>/*.yaml`.
    fn tests(
        &mut self,
        files: &Files,
        ctx: &RenderContext<'_>,
        broken_flows: &[String],
        project: &mut Project,
    ) -> Result<(), LoadError> {
        for (flow_name, cases) in &files.tests {
            for path in cases {
                let rel = display_path(&files.root, path);
                let text = read(path)?;
                let Some(node) = self.render_parse(&rel, &text, ctx) else {
                    continue;
                };
                let Some(spec) = self.deserialize::<TestCase>(&rel, &node) else {
                    continue;
                };
                let Some(flow) = project.flow(flow_name) else {
                    if broken_flows.contains(flow_name) {
                        continue;
                    }
                    let names: Vec<&str> = project.flows.iter().map(|f| f.name.as_str()).collect();
                    self.push(
                        Diagnostic::error(
                            "test::unknown-flow",
                            format!("tests/{flow_name}/ names no flow"),
                        )
                        .in_file(&rel)
                        .at(file_start())
                        .expected(format!(
                            "a directory named after a flow: {}",
                            quoted_list(&names)
                        ))
                        .maybe_hint(
                            did_you_mean(flow_name, names.iter().copied())
                                .map(|s| format!("did you mean `tests/{s}/`?")),
                        ),
                    );
                    continue;
                };
                check::test_case(&mut self.diags, &rel, &node, &spec, flow);
                project.tests.push(TestDef {
                    flow: flow_name.clone(),
                    name: stem(path),
                    file: rel,
                    spec,
                });
            }
        }
        Ok(())
    }

    /// Phase 6: diagnostics in a stable order (file, position, message),
    /// without repeats; secrets masked in every file and message, and every
    /// span moved to where its text is in the file as shown.
    fn finish(self, project: Project, project_ok: bool) -> Loaded {
        let secrets = Arc::clone(&project.secrets);
        let mut diagnostics = self.diags;
        if !project_ok {
            diagnostics.retain(|d| d.code != "expr::unknown-var");
        }
        diagnostics.sort_by(|a, b| {
            (&a.file, a.span.map(|s| (s.line, s.col)), &a.message).cmp(&(
                &b.file,
                b.span.map(|s| (s.line, s.col)),
                &b.message,
            ))
        });
        diagnostics.dedup();
        let mut shown = self.shown;
        let mut sources = BTreeMap::new();
        let mut moved: BTreeMap<String, (crate::edits::Edits, crate::edits::Edits)> =
            BTreeMap::new();
        for (file, text) in self.sources {
            let (masked, edits) = secrets.mask_edits(&text);
            let before = shown.remove(&file).unwrap_or_default();
            moved.insert(file.clone(), (before, edits));
            sources.insert(file, masked);
        }
        let diagnostics = diagnostics
            .into_iter()
            .map(|mut d| {
                d.message = secrets.mask(&d.message);
                for text in [&mut d.label, &mut d.expected, &mut d.hint]
                    .into_iter()
                    .flatten()
                {
                    *text = secrets.mask_values(text);
                }
                if let (Some(file), Some(span)) = (&d.file, d.span)
                    && let (Some((shown, masked)), Some(text)) =
                        (moved.get(file), sources.get(file))
                {
                    let map = shown.then(masked);
                    d.span = Some(span_of(text, map.map(span.start), map.map(span.end)));
                }
                d
            })
            .collect();
        Loaded {
            project,
            diagnostics,
            sources,
        }
    }
}

struct Loader {
    diags: Vec<Diagnostic>,
    /// File → the text shown in snippets (rendered, values in place).
    sources: BTreeMap<String, String>,
    /// File → how offsets of the parsed text (with markers) move in its
    /// shown text.
    shown: BTreeMap<String, crate::edits::Edits>,
    secrets: Arc<Secrets>,
}

/// The largest project file read (YAML or CSV).
pub const MAX_FILE_BYTES: usize = 8 << 20;

impl Loader {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn render_parse(&mut self, rel: &str, text: &str, ctx: &RenderContext<'_>) -> Option<Node> {
        self.render_parse_keep(rel, text, ctx).map(|(n, _)| n)
    }

    /// Renders and parses a file; also returns what rendering printed.
    fn render_parse_keep(
        &mut self,
        rel: &str,
        text: &str,
        ctx: &RenderContext<'_>,
    ) -> Option<(Node, crate::render::Rendered)> {
        if text.len() > MAX_FILE_BYTES {
            self.push(
                Diagnostic::error(
                    "file::too-large",
                    format!(
                        "the file is {} bytes; project files may hold at most {MAX_FILE_BYTES}",
                        text.len()
                    ),
                )
                .in_file(rel)
                .at(file_start()),
            );
            return None;
        }
        let rendered = match render(rel, text, ctx) {
            Ok(r) => r,
            Err(d) => {
                self.sources.insert(rel.to_string(), text.to_string());
                self.push(d);
                return None;
            }
        };
        let (shown, edits) = rendered.display();
        self.sources.insert(rel.to_string(), shown);
        self.shown.insert(rel.to_string(), edits);
        match yaml::parse(&rendered.text) {
            Ok(mut node) => {
                crate::render::fill(&mut node, &rendered.inserts);
                Some((node, rendered))
            }
            Err(e) => {
                let span = span_of(&rendered.text, e.span.start, e.span.end);
                self.push(
                    Diagnostic::error("yaml::syntax", format!("invalid YAML: {}", e.message))
                        .in_file(rel)
                        .at(Span {
                            line: e.span.line,
                            col: e.span.col,
                            ..span
                        }),
                );
                None
            }
        }
    }

    /// `env_var()` values printed into a flow file: compiled into its
    /// module, which is meant to be shipped. Secrets never; others only
    /// when the project allows it.
    fn env_in_flow(&mut self, rel: &str, rendered: &crate::render::Rendered, allow: bool) {
        for ins in &rendered.inserts {
            if ins.env.is_empty() || (allow && !ins.secret) {
                continue;
            }
            let names: Vec<String> = ins.env.iter().map(|n| format!("`{n}`")).collect();
            let span = span_of(&rendered.text, ins.at, ins.end);
            let d = if ins.secret {
                Diagnostic::error(
                    "flow::secret",
                    format!(
                        "the secret {} would be compiled into this flow's module",
                        names.join(", ")
                    ),
                )
                .hint("secrets belong in connectors (read when the flow runs), never in a flow")
            } else {
                Diagnostic::error(
                    "flow::env-var",
                    format!(
                        "env_var() value of {} would be compiled into this flow's module",
                        names.join(", ")
                    ),
                )
                .hint("compiled modules are meant to be shipped: use var('name') (given to the flow when it runs, from the target's vars), or set `allow_env_var_in_flows: true` in weavster.yaml")
            };
            self.push(d.in_file(rel).at(span));
        }
    }

    /// Reports env vars that rendered as unset markers inside `node`.
    fn unset_env_vars(&mut self, rel: &str, node: &Node) {
        if let Some(name) = node
            .raw
            .as_deref()
            .and_then(crate::render::find_unset_marker)
        {
            self.push(
                Diagnostic::error(
                    "render::env-var",
                    format!("environment variable `{name}` is not set and env_var() was given no default"),
                )
                .in_file(rel)
                .at(node.span)
                .hint(format!("export {name}=… or write env_var('{name}', 'default')")),
            );
        }
        for (_, v) in node.entries() {
            self.unset_env_vars(rel, v);
        }
        for v in node.items() {
            self.unset_env_vars(rel, v);
        }
    }

    /// Deserializes `T`, reporting every schema error of the node.
    fn deserialize<T: DeserializeOwned + schemars::JsonSchema>(
        &mut self,
        rel: &str,
        node: &Node,
    ) -> Option<T> {
        self.deserialize_skipping(rel, node, &[])
    }

    /// Reads `node` as a `T`, every problem a diagnostic; an unquoted null
    /// where `T` takes one of a list of words is one too (it would read as
    /// "not set").
    fn deserialize_skipping<T: DeserializeOwned + schemars::JsonSchema>(
        &mut self,
        rel: &str,
        node: &Node,
        skip: &[&str],
    ) -> Option<T> {
        let nulls = yaml::null_choices(node, schemars::schema_for!(T).as_value());
        let failed = !nulls.is_empty();
        for e in &nulls {
            self.push(de_diagnostic(rel, node, e));
        }
        match yaml::from_node_all::<T>(node, skip) {
            Ok(_) if failed => None,
            Ok(v) => Some(v),
            Err(errors) => {
                for e in &errors {
                    self.push(de_diagnostic(rel, node, e));
                }
                None
            }
        }
    }

    fn profiles(&mut self, rel: &str, node: &Node) -> IndexMap<String, Profile> {
        let mut out = IndexMap::new();
        match &node.kind {
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    if let Some(p) = self.deserialize::<Profile>(rel, v) {
                        out.insert(k.raw.clone().unwrap_or_default(), p);
                    }
                }
            }
            NodeKind::Null => {}
            other => self.push(
                Diagnostic::error(
                    "schema::wrong-type",
                    format!("expected a map of profiles, found {}", other.describe()),
                )
                .in_file(rel)
                .at(node.span),
            ),
        }
        out
    }

    fn connector(&mut self, rel: &str, node: &Node) -> Option<Connector> {
        let Some((type_key, type_node)) = node.entry("type") else {
            let d = match &node.kind {
                NodeKind::Map(_) => {
                    Diagnostic::error("schema::missing-key", "connector has no `type`")
                        .expected(format!("`type: ` one of {}", quoted_list(Connector::TYPES)))
                }
                other => Diagnostic::error(
                    "schema::wrong-type",
                    format!("expected a connector map, found {}", other.describe()),
                ),
            };
            self.push(d.in_file(rel).at(node.span));
            return None;
        };
        let _ = type_key;
        let ty = type_node.raw.clone().unwrap_or_default();
        let skip = &["type"];
        match ty.as_str() {
            "file" => self
                .deserialize_skipping(rel, node, skip)
                .map(Connector::File),
            "stdin" => self
                .deserialize_skipping(rel, node, skip)
                .map(Connector::Stdin),
            "stdout" => self
                .deserialize_skipping(rel, node, skip)
                .map(Connector::Stdout),
            "kafka" => self
                .deserialize_skipping(rel, node, skip)
                .map(Connector::Kafka),
            "postgres" => self
                .deserialize_skipping(rel, node, skip)
                .map(Connector::Postgres),
            "http" => self
                .deserialize_skipping(rel, node, skip)
                .map(Connector::Http),
            other => {
                let mut d = Diagnostic::error(
                    "connector::unknown-type",
                    format!("unknown connector type `{other}`"),
                )
                .in_file(rel)
                .at(type_node.span)
                .expected(format!("one of {}", quoted_list(Connector::TYPES)));
                if other == "bridge" {
                    d = d.hint("bridges need no connector: write `to: bridge.<flow>` in the flow's outputs");
                } else {
                    d = d.maybe_hint(
                        did_you_mean(other, Connector::TYPES.iter().copied())
                            .map(|s| format!("did you mean `{s}`?")),
                    );
                }
                self.push(d);
                None
            }
        }
    }

    /// A flow file; on failure, every transform and output is also tried on
    /// its own so that all their errors are reported at once.
    fn flow(&mut self, rel: &str, node: &Node) -> Option<FlowFile> {
        let nulls = yaml::null_choices(node, schemars::schema_for!(FlowFile).as_value());
        for e in &nulls {
            self.push(de_diagnostic(rel, node, e));
        }
        match yaml::from_node::<FlowFile>(node) {
            // Read, but a choice left null: the flow is not used as read.
            Ok(_) if !nulls.is_empty() => None,
            Ok(f) => Some(f),
            Err(first) => {
                self.push(de_diagnostic(rel, node, &first));
                for t in node.get("transforms").map(Node::items).unwrap_or_default() {
                    if let Err(e) = yaml::from_node::<weavster_spec::types::Transform>(t) {
                        self.push(de_diagnostic(rel, node, &e));
                    }
                }
                for o in node.get("outputs").map(Node::items).unwrap_or_default() {
                    if let Err(e) = yaml::from_node::<weavster_spec::types::Output>(o) {
                        self.push(de_diagnostic(rel, node, &e));
                    }
                }
                None
            }
        }
    }

    fn lookup(&mut self, rel: &str, text: &str) -> Option<LookupTable> {
        let errors_before = self.diags.len();
        let table = self.lookup_rows(rel, text);
        // Kept for snippets only when something is wrong (a table can be
        // large: a million rows is tens of megabytes).
        if self.diags.len() > errors_before {
            self.sources.insert(rel.to_string(), text.to_string());
        }
        table
    }

    fn lookup_rows(&mut self, rel: &str, text: &str) -> Option<LookupTable> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(text.as_bytes());
        let err = |msg: String, line: Option<u64>| {
            let mut d = Diagnostic::error("lookup::csv", msg).in_file(rel);
            if let Some(line) = line {
                d = d.at(crate::render::line_span(text, line as usize));
            }
            d
        };
        let columns: Vec<String> = match reader.headers() {
            Ok(h) => h.iter().map(|s| s.trim().to_string()).collect(),
            Err(e) => {
                self.push(err(format!("cannot read the header row: {e}"), Some(1)));
                return None;
            }
        };
        if columns.len() < 2 || columns.iter().all(String::is_empty) {
            self.push(
                err("a lookup table needs a header row with at least two columns".into(), Some(1))
                    .hint("the first column is the key; `column:` picks a value column (default: the second)"),
            );
            return None;
        }
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut lines: Vec<u64> = Vec::new();
        let mut ok = true;
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    lines.push(record.position().map(|p| p.line()).unwrap_or(0));
                    rows.push(record.iter().map(str::to_string).collect());
                }
                Err(e) => {
                    let line = e.position().map(|p| p.line());
                    self.push(err(format!("invalid CSV: {e}"), line));
                    ok = false;
                    break;
                }
            }
        }
        // Duplicate keys, found without copying them.
        let mut seen: std::collections::HashMap<&str, u64> =
            std::collections::HashMap::with_capacity(rows.len());
        let mut duplicates = Vec::new();
        for (row, line) in rows.iter().zip(&lines) {
            let key = row.first().map(String::as_str).unwrap_or_default();
            match seen.get(key) {
                Some(first) => duplicates.push((key.to_string(), *first, *line)),
                None => {
                    seen.insert(key, *line);
                }
            }
        }
        drop(seen);
        for (key, first, line) in duplicates {
            self.push(
                err(
                    format!("duplicate key `{key}` (first on line {first})"),
                    Some(line),
                )
                .hint("each key may appear once; the first column is the key"),
            );
            ok = false;
        }
        ok.then(|| LookupTable {
            file: rel.to_string(),
            data: weavster_spec::types::LookupData { columns, rows },
        })
    }
}

/// `--vars`: a YAML or JSON map (a usage error otherwise).
fn cli_vars(text: &str) -> Result<IndexMap<String, Value>, LoadError> {
    let bad = |msg: String| {
        LoadError::Vars(format!(
            "{msg}; expected a YAML or JSON map, e.g. --vars '{{min_total: 10}}'"
        ))
    };
    match yaml::parse(text) {
        Ok(node) => yaml::from_node::<IndexMap<String, Value>>(&node).map_err(|_| {
            bad(format!(
                "--vars must be a map, found {}",
                node.kind.describe()
            ))
        }),
        Err(e) => Err(bad(format!("--vars is not valid YAML: {}", e.message))),
    }
}

/// The start of a file, for problems with a file as a whole.
fn file_start() -> Span {
    Span {
        start: 0,
        end: 0,
        line: 1,
        col: 1,
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Files in `dir` with one of `exts`, sorted by name; none if `dir` is absent.
fn list(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, LoadError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| exts.iter().any(|x| e == *x)))
        .collect();
    files.sort();
    Ok(files)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Path relative to the project root with `/` separators (absolute if outside).
pub(crate) fn display_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn find_profiles(opts: &LoadOptions, root: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = &opts.profiles_dir {
        // An explicit --profiles-dir is the only place looked at.
        return Some(d.join(PROFILES_FILE)).filter(|p| p.is_file());
    }
    if let Some(d) = opts.env.get("WEAVSTER_PROFILES_DIR") {
        candidates.push(PathBuf::from(d).join(PROFILES_FILE));
    }
    candidates.push(root.join(PROFILES_FILE));
    if let Some(home) = &opts.home_dir {
        candidates.push(home.join(".weavster").join(PROFILES_FILE));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// One test per phase; `check` runs a phase over a project written from
/// `(path, text)` pairs.
#[cfg(test)]
mod tests {
    use super::*;

    fn write(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        dir
    }

    fn opts(dir: &Path) -> LoadOptions {
        LoadOptions {
            project_dir: dir.to_path_buf(),
            ..LoadOptions::default()
        }
    }

    fn loader() -> Loader {
        Loader {
            diags: Vec::new(),
            sources: BTreeMap::new(),
            shown: BTreeMap::new(),
            secrets: Arc::new(Secrets::default()),
        }
    }

    /// Runs phases 1–3 on `files` with `opts` changed by `with`: the target
    /// chosen and the diagnostic codes.
    fn check(
        files: &[(&str, &str)],
        with: impl FnOnce(&mut LoadOptions),
    ) -> (String, Option<Target>, Vec<String>) {
        let dir = write(files);
        let mut o = opts(dir.path());
        with(&mut o);
        let files = discover(&o).expect("discover");
        let mut l = loader();
        let secrets = Secrets::default();
        let early = RenderContext {
            env: &o.env,
            vars: IndexMap::new(),
            target: None,
            project: None,
            secrets: &secrets,
            lenient_env: false,
            protect_record_templates: false,
        };
        let head = l.project_file(&files, &early).expect("project file");
        let chosen = l.target(&o, &files, &head, &early).expect("target");
        let codes = l.diags.iter().map(|d| d.code.to_string()).collect();
        (chosen.name, chosen.target, codes)
    }

    #[test]
    fn discover_lists_each_kind_sorted_and_nothing_else() {
        let dir = write(&[
            ("weavster.yaml", "name: p\n"),
            ("flows/b.yaml", ""),
            ("flows/a.yml", ""),
            ("flows/notes.txt", ""),
            ("connectors/x.yaml", ""),
            ("lookups/t.csv", ""),
            ("lookups/t.yaml", ""),
            ("tests/a/two.yml", ""),
            ("tests/a/one.yaml", ""),
            ("tests/README.md", ""),
            ("profiles.yaml", ""),
        ]);
        let root = dir.path().to_path_buf();
        let files = discover(&opts(&root)).expect("discover");
        assert_eq!(
            files,
            Files {
                project: root.join("weavster.yaml"),
                profiles: Some(root.join("profiles.yaml")),
                lookups: vec![root.join("lookups/t.csv")],
                connectors: vec![root.join("connectors/x.yaml")],
                flows: vec![root.join("flows/a.yml"), root.join("flows/b.yaml")],
                tests: vec![(
                    "a".into(),
                    vec![root.join("tests/a/one.yaml"), root.join("tests/a/two.yml")]
                )],
                root: root.clone(),
            }
        );
        // An explicit --profiles-dir is the only place looked at.
        let mut o = opts(&root);
        o.profiles_dir = Some(root.join("elsewhere"));
        assert_eq!(discover(&o).expect("discover").profiles, None);
        let empty = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            discover(&opts(empty.path())),
            Err(LoadError::NotAProject(_))
        ));
    }

    const PROFILES: &str =
        "p:\n  target: dev\n  outputs:\n    dev: {vars: {v: dev}}\n    prod: {vars: {v: prod}}\n";

    #[test]
    fn the_target_is_asked_for_else_the_environments_else_the_profiles() {
        let files = [("weavster.yaml", "name: p\n"), ("profiles.yaml", PROFILES)];
        let (name, target, codes) = check(&files, |_| {});
        assert_eq!((name.as_str(), codes.len()), ("dev", 0));
        assert!(target.is_some());
        let (name, _, _) = check(&files, |o| {
            o.env.insert("WEAVSTER_TARGET".into(), "prod".into());
        });
        assert_eq!(name, "prod");
        let (name, _, _) = check(&files, |o| {
            o.env.insert("WEAVSTER_TARGET".into(), "dev".into());
            o.target = Some("prod".into());
        });
        assert_eq!(name, "prod");
        let (name, target, codes) = check(&files, |o| o.target = Some("prd".into()));
        assert_eq!(name, "prd");
        assert!(target.is_none());
        assert_eq!(codes, ["profiles::unknown-target"]);
    }

    #[test]
    fn without_profiles_the_target_is_dev_and_asking_for_one_is_an_error() {
        let files = [("weavster.yaml", "name: p\n")];
        assert_eq!(check(&files, |_| {}), ("dev".into(), None, vec![]));
        let (name, _, codes) = check(&files, |o| o.target = Some("prod".into()));
        assert_eq!(
            (name.as_str(), codes),
            ("prod", vec!["profiles::missing".to_string()])
        );
        let other = [
            ("weavster.yaml", "name: p\nprofile: q\n"),
            ("profiles.yaml", PROFILES),
        ];
        assert_eq!(check(&other, |_| {}).2, ["profiles::unknown-profile"]);
    }

    #[test]
    fn vars_cli_over_target_over_project() {
        let project: ProjectFile = serde_json::from_value(
            serde_json::json!({"name": "p", "vars": {"a": 1, "b": 1, "c": 1}}),
        )
        .expect("project");
        let target: Target =
            serde_json::from_value(serde_json::json!({"vars": {"b": 2, "c": 2}})).expect("target");
        let cli = IndexMap::from([("c".to_string(), Value::from(3))]);
        let vars = resolve_vars(Some(&project), Some(&target), cli);
        assert_eq!(
            serde_json::to_value(&vars).expect("json"),
            serde_json::json!({"a": 1, "b": 2, "c": 3})
        );
        assert!(resolve_vars(None, None, IndexMap::new()).is_empty());
    }

    #[test]
    fn runtime_target_over_project_over_defaults() {
        let project: ProjectFile = serde_json::from_value(
            serde_json::json!({"name": "p", "runtime": {"workers": 3, "batch_size": 10}}),
        )
        .expect("project");
        let target: Target =
            serde_json::from_value(serde_json::json!({"runtime": {"workers": 5}})).expect("target");
        let rt = resolve_runtime(Some(&project), Some(&target));
        assert_eq!((rt.workers, rt.batch_size), (5, 10));
        let d = Runtime::default();
        assert_eq!(resolve_runtime(None, None).max_attempts, d.max_attempts);
    }

    #[test]
    fn finish_orders_by_file_and_position_drops_repeats_and_masks() {
        let mut l = loader();
        let at = |line| Span {
            start: 0,
            end: 0,
            line,
            col: 1,
        };
        let secrets = Arc::new(Secrets::default());
        secrets.add("hunter2-secret");
        for d in [
            Diagnostic::error("x", "second").in_file("b.yaml").at(at(1)),
            Diagnostic::error("x", "uses hunter2-secret")
                .in_file("a.yaml")
                .at(at(9)),
            Diagnostic::error("x", "first").in_file("a.yaml").at(at(2)),
            Diagnostic::error("x", "first").in_file("a.yaml").at(at(2)),
        ] {
            l.push(d);
        }
        let project = Project {
            secrets,
            ..Project::default()
        };
        let loaded = l.finish(project, true);
        let got: Vec<(String, String)> = loaded
            .diagnostics
            .iter()
            .map(|d| (d.file.clone().unwrap_or_default(), d.message.clone()))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("a.yaml".into(), "first".into()));
        assert!(
            got[1].1.starts_with("uses ") && !got[1].1.contains("hunter2"),
            "{got:?}"
        );
        assert_eq!(got[2], ("b.yaml".into(), "second".into()));
    }
}
