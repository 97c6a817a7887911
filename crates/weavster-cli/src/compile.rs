//! `weavster compile`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use weavster_build::{Built, Event, Profile};
use weavster_project::{Loaded, Manifest};

use crate::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this flow (repeatable).
    #[arg(long)]
    pub flow: Vec<String>,
    /// Rebuild even if cached.
    #[arg(long)]
    pub force: bool,
    /// Also write the generated Rust to .weavster/debug/<flow>.rs.
    #[arg(long)]
    pub debug: bool,
    /// Build fully optimized (fat LTO: slower to build, faster to run), for
    /// production; by default flows build for development.
    #[arg(long)]
    pub release: bool,
    /// Use only the modules in the cache (a package's); never cargo.
    #[arg(skip)]
    pub prebuilt_only: bool,
}

impl Args {
    pub fn profile(&self) -> Profile {
        if self.release {
            Profile::Release
        } else {
            Profile::Dev
        }
    }
}

/// The compiled flows, with what `test` and `run` need.
pub use weavster_compile::Compiled;

#[derive(Serialize)]
struct CompiledManifest<'a> {
    #[serde(flatten)]
    manifest: Manifest,
    compiled: &'a [Built],
}

/// Loads, validates, lowers and builds; prints diagnostics and progress.
/// `Ok(None)` means the project is invalid (diagnostics were printed).
pub fn compile(g: &Global, args: &Args, quiet: bool) -> anyhow::Result<Option<(Loaded, Compiled)>> {
    compile_loaded(g.load()?, args, quiet)
}

/// [`compile`] of a project already loaded.
pub fn compile_loaded(
    loaded: Loaded,
    args: &Args,
    quiet: bool,
) -> anyhow::Result<Option<(Loaded, Compiled)>> {
    if crate::report_invalid(&loaded, "nothing was compiled") {
        return Ok(None);
    }
    let project = &loaded.project;
    crate::write_schemas(&project.root);
    let started = Instant::now();
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b.set_message("compiling flows");
        b
    });
    let req = weavster_compile::Request {
        flows: args.flow.clone(),
        profile: args.profile(),
        force: args.force,
        debug: args.debug,
        cargo_target_dir: std::env::var_os("WEAVSTER_CARGO_TARGET_DIR").map(PathBuf::from),
        prebuilt_only: args.prebuilt_only,
    };
    let host = weavster_host::Host::new()?;
    let mut announced = false;
    let compiled = weavster_compile::compile(project, &req, &host, &mut |e| match e {
        Event::Compiling { crate_name, done } => {
            if let Some(b) = &bar {
                b.set_message(format!("compiling to wasm: {crate_name} ({done} crates)"));
            } else if !announced && !quiet {
                eprintln!(
                    "compiling flows to wasm (the first build compiles dependencies and takes a while)…"
                );
                announced = true;
            }
        }
        Event::UpToDate => {}
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let weavster_compile::Compiled { built, irs } = compiled?;
    let target = project.root.join(".weavster/target");
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let manifest = CompiledManifest {
        manifest: Manifest::new(project),
        compiled: &built,
    };
    let manifest_path = target.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    if !quiet {
        let secs = started.elapsed().as_secs_f64();
        for b in &built {
            let state = if b.cached { "up to date" } else { "compiled" };
            println!(
                "✔ {:<20} {state:<10} {:<7} {}",
                b.flow,
                b.profile.name(),
                relative(&project.root, &b.wasm)
            );
        }
        if args.debug {
            for b in &built {
                println!(
                    "  generated Rust: {}",
                    relative(
                        &project.root,
                        &project
                            .root
                            .join(".weavster/debug")
                            .join(format!("{}.rs", b.flow))
                    )
                );
            }
        }
        println!(
            "{} flow{} in {secs:.2}s; manifest: {}",
            built.len(),
            crate::validate::plural(built.len()),
            relative(&project.root, &manifest_path)
        );
    }
    Ok(Some((loaded, Compiled { built, irs })))
}

pub fn relative(root: &std::path::Path, p: &std::path::Path) -> String {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    p.strip_prefix(&root)
        .map(PathBuf::from)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    Ok(match compile(g, args, g.quiet)? {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::from(1),
    })
}
