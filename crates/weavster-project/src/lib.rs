//! Loads a Weavster project from disk.
//!
//! [`load`] discovers the files of a project, renders each with MiniJinja
//! ([`render`]), parses it with spans ([`weavster_spec::yaml`]), resolves the
//! profile and target, merges vars and runtime settings, applies connector
//! overrides and checks every cross-reference ([`check`]). It never stops at
//! the first problem: everything found is returned as [`Diagnostic`]s beside
//! the (possibly partial) [`Project`]. [`report`] renders diagnostics as text
//! for the CLI to print.

mod check;
pub mod edits;
mod ident;
mod load;
mod manifest;
pub mod render;
pub mod report;
pub mod secrets;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;
use weavster_spec::types::{Connector, FlowFile, ProjectFile, Runtime, TestCase};
pub use weavster_spec::{Diagnostic, Severity, Span};

pub use ident::{is_identifier, to_identifier};
pub use load::load;
pub use manifest::Manifest;
pub use secrets::Secrets;

/// What [`load`] needs besides the files.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub project_dir: PathBuf,
    /// `--profiles-dir`.
    pub profiles_dir: Option<PathBuf>,
    /// `--target`.
    pub target: Option<String>,
    /// `--vars` (YAML or JSON map).
    pub vars: Option<String>,
    /// The process environment (env_var(), WEAVSTER_TARGET, WEAVSTER_PROFILES_DIR).
    pub env: BTreeMap<String, String>,
    /// The user's home directory, for `~/.weavster/profiles.yaml`.
    pub home_dir: Option<PathBuf>,
}

/// Why a project could not be loaded at all (as opposed to being invalid).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a Weavster project: no weavster.yaml in {0} (create one with `weavster init`)")]
    NotAProject(PathBuf),
    #[error("{0}")]
    Vars(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The result of loading: the project as far as it could be understood,
/// every diagnostic, and the rendered (masked) text of every file for snippets.
#[derive(Debug)]
pub struct Loaded {
    pub project: Project,
    pub diagnostics: Vec<Diagnostic>,
    /// Project-relative file name → rendered text with secrets masked.
    pub sources: BTreeMap<String, String>,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// A loaded project with its resolved target.
#[derive(Debug, Default)]
pub struct Project {
    pub root: PathBuf,
    pub file: Option<ProjectFile>,
    pub name: String,
    pub profile: String,
    pub target: String,
    /// The profiles.yaml used, if any.
    pub profiles_path: Option<PathBuf>,
    pub runtime: Runtime,
    /// Resolved vars: `--vars` over target vars over project vars.
    pub vars: IndexMap<String, Value>,
    /// `file.key` → connector, with target overrides applied.
    pub connectors: IndexMap<String, ConnectorDef>,
    pub flows: Vec<FlowDef>,
    pub lookups: IndexMap<String, LookupTable>,
    pub tests: Vec<TestDef>,
    pub secrets: Arc<Secrets>,
    /// Things that failed to load (`connector:<ref>`, `connectors:<file>`,
    /// `lookup:<name>`): references to them are not reported again.
    pub broken: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct ConnectorDef {
    /// `file.key`.
    pub reference: String,
    /// Project-relative path of the connectors file.
    pub file: String,
    pub connector: Connector,
}

#[derive(Debug, Clone)]
pub struct FlowDef {
    pub name: String,
    pub file: String,
    pub spec: FlowFile,
}

#[derive(Debug, Clone)]
pub struct LookupTable {
    pub file: String,
    pub data: weavster_spec::types::LookupData,
}

#[derive(Debug, Clone)]
pub struct TestDef {
    pub flow: String,
    pub name: String,
    pub file: String,
    pub spec: TestCase,
}

impl Project {
    pub fn flow(&self, name: &str) -> Option<&FlowDef> {
        self.flows.iter().find(|f| f.name == name)
    }

    /// Every lookup table by name, borrowed (what lowering a flow takes).
    pub fn lookup_data(&self) -> BTreeMap<String, &weavster_spec::types::LookupData> {
        self.lookups
            .iter()
            .map(|(k, t)| (k.clone(), &t.data))
            .collect()
    }
}
