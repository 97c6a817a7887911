//! `weavster docs generate` and `weavster docs serve`: the project as a
//! static site (crates/weavster-docs builds it; this reads what earlier
//! commands left in `.weavster/target`, writes and serves it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::Value;
use weavster_docs::{Inputs, Module, Site, TestResults};
use weavster_project::Loaded;

use crate::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Write the site: a lineage graph, a page per flow and connector, a
    /// searchable index (self-contained; opens from disk).
    Generate(GenerateArgs),
    /// Serve the site on a local port, regenerated when a project file changes.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// Where to write it (default: <project>/.weavster/docs).
    #[arg(long, short = 'o', value_name = "DIR")]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8580)]
    port: u16,
    /// Address to listen on; the site shows the project's configuration
    /// (secrets masked), so it stays on loopback unless asked.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// How often to look for changed project files, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    poll_ms: u64,
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Generate(a) => generate(g, a),
        Command::Serve(a) => serve(g, a),
    }
}

/// The site of the project as it is now; `Ok(None)` when the project is
/// invalid (its diagnostics are printed).
fn build(g: &Global) -> anyhow::Result<Option<(PathBuf, Site)>> {
    let loaded = g.load()?;
    if crate::report_invalid(&loaded, "no docs were generated") {
        return Ok(None);
    }
    let site = site(&loaded)?;
    Ok(Some((loaded.project.root.clone(), site)))
}

fn site(loaded: &Loaded) -> anyhow::Result<Site> {
    let root = &loaded.project.root;
    let target = root.join(".weavster/target");
    let inputs = Inputs {
        project: &loaded.project,
        sources: &loaded.sources,
        modules: modules(root, &target.join("manifest.json")),
        tests: read_json::<TestResults>(&target.join(TEST_RESULTS)),
        run: read_json::<Value>(&target.join("run_results.json")),
    };
    Ok(weavster_docs::generate(&inputs)?)
}

/// Where `weavster test` records its results.
pub const TEST_RESULTS: &str = "test_results.json";

/// A file another command wrote; absent or unreadable is "nothing known"
/// (the page says so), never an error.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// The modules the last `compile` recorded in its manifest.
fn modules(root: &Path, manifest: &Path) -> Vec<Module> {
    let Some(m) = read_json::<Value>(manifest) else {
        return Vec::new();
    };
    let Some(list) = m.get("compiled").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|b| {
            let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
            let wasm = PathBuf::from(s("wasm")?);
            Some(Module {
                flow: s("flow")?,
                profile: s("profile").unwrap_or_default(),
                key: s("key").unwrap_or_default(),
                size: std::fs::metadata(&wasm).ok().map(|m| m.len()),
                file: crate::compile::relative(root, &wasm),
            })
        })
        .collect()
}

fn generate(g: &Global, args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let Some((root, site)) = build(g)? else {
        return Ok(ExitCode::from(1));
    };
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| root.join(".weavster/docs"));
    site.write(&dir)?;
    if !g.quiet {
        println!(
            "✔ docs: {} files in {}; open {}",
            site.files.len(),
            dir.display(),
            dir.join("index.html").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a change to the project looks like from outside: every file's
/// path, size and modification time (`.weavster/` and hidden files aside;
/// profiles.yaml wherever it is found).
fn snapshot(root: &Path, profiles: Option<&Path>) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    // Results of compile, test and run change what the pages show.
    for f in ["manifest.json", TEST_RESULTS, "run_results.json"] {
        let p = root.join(".weavster/target").join(f);
        if let Ok(meta) = std::fs::metadata(&p) {
            out.push((p, meta.len(), meta.modified().ok()));
        }
    }
    if let Some(p) = profiles
        && let Ok(meta) = std::fs::metadata(p)
    {
        out.push((p.to_path_buf(), meta.len(), meta.modified().ok()));
    }
    out.sort();
    out
}

fn serve(g: &Global, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let Some((root, first)) = build(g)? else {
        return Ok(ExitCode::from(1));
    };
    let profiles = g.load().ok().and_then(|l| l.project.profiles_path);
    let site = Arc::new(RwLock::new(first));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        println!(
            "serving the docs of {} on http://{addr}/ (Ctrl-C stops)",
            root.display()
        );
        // Regenerate when the project changes; an invalid project keeps the
        // last good site (its diagnostics are printed).
        let watched = Arc::clone(&site);
        let g2 = g.clone();
        let poll = Duration::from_millis(args.poll_ms.max(50));
        tokio::task::spawn_blocking(move || {
            let mut last = snapshot(&root, profiles.as_deref());
            loop {
                std::thread::sleep(poll);
                let now = snapshot(&root, profiles.as_deref());
                if now == last {
                    continue;
                }
                last = now;
                match build(&g2) {
                    Ok(Some((_, s))) => {
                        if let Ok(mut w) = watched.write() {
                            *w = s;
                        }
                        println!("regenerated");
                    }
                    Ok(None) => eprintln!("still serving the last valid version"),
                    Err(e) => eprintln!("{}", crate::mask(&format!("error: {e:#}"))),
                }
            }
        });
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let site = Arc::clone(&site);
            async move { page(&site, uri.path()) }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn page(site: &RwLock<Site>, path: &str) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let Ok(site) = site.read() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match site.get(path) {
        Some((kind, bytes)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes.to_vec(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
