//! The compile pipeline: a checked project's flows are lowered to the IR,
//! built to `wasm32-wasip1` modules (cached by key) and precompiled for
//! wasmtime. One function, used by `weavster compile`/`test`/`run`/
//! `package`, the benchmark and the differential tests; progress comes as
//! [`Event`]s (the CLI draws them). Prints nothing.

use std::path::PathBuf;

pub use weavster_build::{Built, Event, Profile};
use weavster_project::Project;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("no flow named `{name}` (flows: {known})")]
    NoFlow { name: String, known: String },
    #[error("internal error lowering {file} (a bug in Weavster): {message}")]
    Lower { file: String, message: String },
    #[error(transparent)]
    Build(#[from] weavster_build::BuildError),
    #[error(transparent)]
    Host(#[from] weavster_host::HostError),
}

/// What to compile, and how.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Only these flows (empty: all).
    pub flows: Vec<String>,
    pub profile: Profile,
    /// Rebuild even if cached.
    pub force: bool,
    /// Also write the generated Rust to `.weavster/debug/<flow>.rs`.
    pub debug: bool,
    /// Cargo's target dir (default `.weavster/build/target`).
    pub cargo_target_dir: Option<PathBuf>,
    /// Use only modules already in the cache (a package's), never cargo.
    pub prebuilt_only: bool,
}

/// The compiled flows: modules (precompiled beside them) and their IRs,
/// in the project's flow order.
pub struct Compiled {
    pub built: Vec<Built>,
    pub irs: Vec<weavster_ir::Flow>,
}

/// Lowers, builds and precompiles the flows `req` selects of `project`
/// (which must be valid: its checks passed).
pub fn compile(
    project: &Project,
    req: &Request,
    host: &weavster_host::Host,
    progress: &mut dyn FnMut(Event),
) -> Result<Compiled, CompileError> {
    for f in &req.flows {
        if project.flow(f).is_none() {
            let names: Vec<&str> = project.flows.iter().map(|f| f.name.as_str()).collect();
            return Err(CompileError::NoFlow {
                name: f.clone(),
                known: names.join(", "),
            });
        }
    }
    let lookups = project.lookup_data();
    let selected: Vec<_> = project
        .flows
        .iter()
        .filter(|f| req.flows.is_empty() || req.flows.contains(&f.name))
        .collect();
    let irs = selected
        .iter()
        .map(|f| {
            weavster_ir::lower(&f.name, &f.spec, &lookups).map_err(|e| CompileError::Lower {
                file: f.file.clone(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<weavster_build::FlowInput<'_>> = irs
        .iter()
        .zip(&selected)
        .map(|(ir, f)| weavster_build::FlowInput {
            ir,
            origin: &f.file,
        })
        .collect();
    let opts = weavster_build::Options {
        project_root: &project.root,
        force: req.force,
        debug: req.debug,
        profile: req.profile,
        cargo_target_dir: req.cargo_target_dir.clone(),
        prebuilt_only: req.prebuilt_only,
    };
    let built = weavster_build::build(&inputs, &opts, progress)?;
    // Native code for wasmtime, cached beside each module.
    for b in &built {
        host.precompile(&b.wasm)?;
    }
    Ok(Compiled { built, irs })
}
