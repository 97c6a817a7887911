//! The build driver.
//!
//! `.weavster/build/` is one cargo workspace: the guest crate (its source is
//! embedded in this crate and written out, so users need no checkout of
//! Weavster) and one crate per flow, sharing `.weavster/build/target`, so
//! dependencies compile once. Finished modules are copied to
//! `.weavster/target/wasm/<flow>-<key>.wasm`, where `key` hashes the
//! normalized IR, the Rust generated from it, the guest's version and
//! source, the rustc version and the
//! profile. A flow whose module exists for its key is not rebuilt; when no
//! flow changed, cargo is not run at all.
//!
//! Running needs no Rust toolchain: beside each module, `<flow>-<key>.source`
//! holds a key of everything but the rustc version. Without `rustc` on
//! PATH, a module whose source key matches is used as it is; a flow with
//! none is an error naming it ([`BuildError::NoToolchain`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::Digest as _;
use weavster_ir::Flow;

/// The wasm target.
pub const TARGET: &str = "wasm32-wasip1";

/// Guest sources, embedded at build time (path, contents).
const GUEST_FILES: &[(&str, &str)] = &[
    (
        "src/lib.rs",
        include_str!("../../weavster-guest/src/lib.rs"),
    ),
    (
        "src/abi.rs",
        include_str!("../../weavster-guest/src/abi.rs"),
    ),
    (
        "src/func.rs",
        include_str!("../../weavster-guest/src/func.rs"),
    ),
    (
        "src/ops.rs",
        include_str!("../../weavster-guest/src/ops.rs"),
    ),
    (
        "src/path.rs",
        include_str!("../../weavster-guest/src/path.rs"),
    ),
    (
        "src/step.rs",
        include_str!("../../weavster-guest/src/step.rs"),
    ),
    (
        "src/table.rs",
        include_str!("../../weavster-guest/src/table.rs"),
    ),
    (
        "src/value.rs",
        include_str!("../../weavster-guest/src/value.rs"),
    ),
];

/// The guest's dependencies, as in the repository's `[workspace.dependencies]`
/// (a test keeps them equal).
pub const GUEST_DEPENDENCIES: &str = r#"serde = "1"
serde_json = { version = "1", features = ["preserve_order", "raw_value", "float_roundtrip"] }
itoa = "1"
regex = "1"
minijinja = { version = "3", features = ["serde"] }
sha2 = "0.10"
base64 = "0.22"
chrono = { version = "0.4", default-features = false, features = ["alloc"] }
talc = "5"
"#;

/// Build profile of the flow modules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// For development (`compile`, `test`, `run`): opt-level 3 and one
    /// codegen unit, but no LTO: changing a flow rebuilds its small crate
    /// and links, in about a second.
    #[default]
    Dev,
    /// For shipping (`compile --release`, `run --release`, `package`):
    /// opt-level 3, fat LTO, one codegen unit, panic=abort, stripped.
    Release,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Release => "release",
        }
    }

    /// The cargo profile it builds with (and its target subdirectory).
    fn cargo_profile(self) -> &'static str {
        match self {
            Profile::Dev => "weavster-dev",
            Profile::Release => "release",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`: {source} (is Rust installed? `weavster debug` checks)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Rust target {TARGET} is not installed: run `rustup target add {TARGET}`")]
    MissingTarget,
    #[error(
        "the generated code of flow `{flow}` failed to compile. This is a bug in Weavster, not in your project; \
         please report it with the generated file {generated}\n\n{output}"
    )]
    Generated {
        flow: String,
        generated: PathBuf,
        output: String,
    },
    #[error("cargo failed while building the flow modules:\n\n{0}")]
    Cargo(String),
    #[error("cannot generate the code of flow `{flow}`: {message} (a bug in Weavster)")]
    Codegen { flow: String, message: String },
    #[error(
        "flow `{flow}` must be compiled, and no Rust toolchain is on PATH ({detail}): \
         install Rust (scripts/setup.sh does), or compile the project where Rust is \
         and bring its .weavster/target/wasm along"
    )]
    NoToolchain { flow: String, detail: String },
    #[error(
        "flow `{flow}` as this target renders it is not the flow that was packaged \
         (a `var()` it uses differs from the packaging target's?): package the project for this target"
    )]
    NotPackaged { flow: String },
}

/// One flow to build.
pub struct FlowInput<'a> {
    pub ir: &'a Flow,
    /// Project-relative file the flow came from (for messages).
    pub origin: &'a str,
}

/// A built (or cached) flow module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub flow: String,
    pub wasm: PathBuf,
    pub key: String,
    pub fingerprint: String,
    pub cached: bool,
    /// The profile it was built with.
    pub profile: Profile,
}

/// Progress reported while building (the CLI draws it).
#[derive(Debug, Clone)]
pub enum Event {
    /// Cargo is compiling `crate_name` (count so far).
    Compiling { crate_name: String, done: usize },
    /// Every flow was cached.
    UpToDate,
}

/// Where things live under `.weavster/`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(project_root: &Path) -> Self {
        // Absolute, because cargo runs in the build dir.
        let root = std::path::absolute(project_root).unwrap_or_else(|_| project_root.to_path_buf());
        Layout {
            root: root.join(".weavster"),
        }
    }

    pub fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }

    pub fn wasm_dir(&self) -> PathBuf {
        self.root.join("target").join("wasm")
    }

    pub fn debug_dir(&self) -> PathBuf {
        self.root.join("debug")
    }
}

fn write_if_changed(path: &Path, contents: &str) -> Result<(), BuildError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| BuildError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, contents).map_err(|source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The version line of the rustc that cargo will use in `dir`.
pub fn rustc_version(dir: &Path) -> Result<String, BuildError> {
    let out = Command::new("rustc")
        .arg("-vV")
        .current_dir(dir)
        .output()
        .map_err(|source| BuildError::Spawn {
            command: "rustc -vV".into(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A hash of everything a module depends on besides the flow itself.
pub fn toolchain_key(rustc: &str, profile: Profile) -> String {
    let mut h = sha2::Sha256::new();
    h.update(weavster_guest::VERSION.as_bytes());
    for (path, src) in GUEST_FILES {
        h.update(path.as_bytes());
        h.update(src.as_bytes());
    }
    h.update(GUEST_DEPENDENCIES.as_bytes());
    h.update(rustc.as_bytes());
    h.update(profile.name().as_bytes());
    if !rustc.is_empty() {
        // Flags change the module too (not for `source_key`, which a
        // toolchain-less run computes).
        h.update(rustflags().as_bytes());
    }
    hex(&h.finalize())
}

/// The key of a flow module without the compiler's version: what a
/// toolchain-less `run` can check a cached module against.
pub fn source_key(fingerprint: &str, source: &str, profile: Profile) -> String {
    flow_key(fingerprint, source, &toolchain_key("", profile))
}

/// `<flow>.<profile>-`: how the modules of a flow built with a profile
/// start their names (so that a dev and a release build of it coexist).
fn module_prefix(flow: &str, profile: Profile) -> String {
    format!("{flow}.{}-", profile.name())
}

/// The cached module of `flow` whose source key is `key`, if any.
fn find_by_source_key(
    wasm_dir: &Path,
    flow: &str,
    profile: Profile,
    key: &str,
) -> Option<(PathBuf, String)> {
    let prefix = module_prefix(flow, profile);
    let entries = std::fs::read_dir(wasm_dir).ok()?;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(module_key) = name
            .strip_prefix(&prefix)
            .and_then(|n| n.strip_suffix(".source"))
        else {
            continue;
        };
        let wasm = wasm_dir.join(format!("{prefix}{module_key}.wasm"));
        if std::fs::read_to_string(e.path()).is_ok_and(|k| k.trim() == key) && wasm.is_file() {
            return Some((wasm, module_key.to_string()));
        }
    }
    None
}

/// The cache key of one flow: its IR, the Rust generated from it (so that a
/// Weavster with different code generation never reuses a stale module) and
/// the toolchain.
pub fn flow_key(fingerprint: &str, source: &str, toolchain: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(fingerprint.as_bytes());
    h.update(source.as_bytes());
    h.update(toolchain.as_bytes());
    hex(&h.finalize())[..16].to_string()
}

/// The flow crate's package name. It carries the cache key, so that
/// projects sharing a cargo target dir never overwrite each other's modules.
fn crate_name(flow: &str, key: &str) -> String {
    format!("flow_{flow}_{key}")
}

fn generate(f: &FlowInput<'_>) -> Result<weavster_codegen::Generated, BuildError> {
    weavster_codegen::generate(f.ir, f.origin).map_err(|e| BuildError::Codegen {
        flow: f.ir.name.clone(),
        message: e.to_string(),
    })
}

/// Options of [`build`].
pub struct Options<'a> {
    pub project_root: &'a Path,
    pub force: bool,
    /// Also write the generated Rust to `.weavster/debug/<flow>.rs`.
    pub debug: bool,
    pub profile: Profile,
    /// Cargo's target dir (default `.weavster/build/target`); sharing one
    /// across projects lets them share compiled dependencies.
    pub cargo_target_dir: Option<PathBuf>,
    /// Use only modules already in the cache (a package's), never cargo.
    pub prebuilt_only: bool,
}

/// Builds every flow whose module is not cached; returns all modules.
pub fn build(
    flows: &[FlowInput<'_>],
    opts: &Options<'_>,
    progress: &mut dyn FnMut(Event),
) -> Result<Vec<Built>, BuildError> {
    let layout = Layout::new(opts.project_root);
    let wasm_dir = layout.wasm_dir();
    std::fs::create_dir_all(&wasm_dir).map_err(|source| BuildError::Io {
        path: wasm_dir.clone(),
        source,
    })?;
    if opts.prebuilt_only {
        return cached_without_toolchain(flows, opts, &wasm_dir, "", progress);
    }
    let rustc = match rustc_version(opts.project_root) {
        Ok(r) => Some(r),
        Err(BuildError::Spawn { source, .. }) if !opts.force => {
            return cached_without_toolchain(flows, opts, &wasm_dir, &source.to_string(), progress);
        }
        Err(e) => return Err(e),
    };
    let toolchain = toolchain_key(rustc.as_deref().unwrap_or_default(), opts.profile);

    let mut results = Vec::new();
    let mut stale = Vec::new();
    for f in flows {
        let fingerprint = f.ir.fingerprint();
        // Generated once, for the key, the build dir and `--debug`.
        let generated = generate(f)?;
        let source = generated.source.clone();
        let key = flow_key(&fingerprint, &source, &toolchain);
        let wasm = wasm_dir.join(format!(
            "{}{key}.wasm",
            module_prefix(&f.ir.name, opts.profile)
        ));
        let cached = !opts.force && wasm.is_file();
        if opts.debug {
            write_if_changed(
                &layout.debug_dir().join(format!("{}.rs", f.ir.name)),
                &source,
            )?;
        }
        if !cached {
            stale.push((f, generated));
        }
        results.push(Built {
            flow: f.ir.name.clone(),
            wasm,
            key,
            fingerprint,
            cached,
            profile: opts.profile,
        });
    }
    if stale.is_empty() {
        progress(Event::UpToDate);
        return Ok(results);
    }

    let build_dir = layout.build_dir();
    let keys: Vec<&str> = results.iter().map(|b| b.key.as_str()).collect();
    write_workspace(&build_dir, flows, &keys)?;
    for (f, generated) in &stale {
        let src = build_dir.join("flows").join(&f.ir.name).join("src");
        write_if_changed(&src.join("lib.rs"), &generated.source)?;
        for (name, bytes) in &generated.assets {
            let path = src.join(name);
            if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
                std::fs::write(&path, bytes).map_err(|source| BuildError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    let cargo_target = match &opts.cargo_target_dir {
        Some(d) => std::path::absolute(d).unwrap_or_else(|_| d.clone()),
        None => build_dir.join("target"),
    };
    let stale_crates: Vec<(String, String)> = results
        .iter()
        .filter(|b| !b.cached)
        .map(|b| (b.flow.clone(), crate_name(&b.flow, &b.key)))
        .collect();
    run_cargo(
        &build_dir,
        &cargo_target,
        &stale_crates,
        opts.profile,
        progress,
    )?;
    let target_dir = cargo_target.join(TARGET).join(opts.profile.cargo_profile());
    for b in results.iter().filter(|b| !b.cached) {
        let built = target_dir.join(format!("{}.wasm", crate_name(&b.flow, &b.key)));
        // Old modules of this flow are replaced by the new one.
        if let Ok(entries) = std::fs::read_dir(&wasm_dir) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().to_string();
                let prefix = module_prefix(&b.flow, opts.profile);
                if name.starts_with(&prefix) && !name.starts_with(&format!("{prefix}{}.", b.key)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        std::fs::copy(&built, &b.wasm).map_err(|source| BuildError::Io {
            path: built.clone(),
            source,
        })?;
        if let Some((f, generated)) = stale.iter().find(|(f, _)| f.ir.name == b.flow) {
            write_if_changed(
                &b.wasm.with_extension("source"),
                &source_key(&f.ir.fingerprint(), &generated.source, opts.profile),
            )?;
        }
    }
    Ok(results)
}

/// Every flow from the cache, found by its source key (no rustc to ask).
fn cached_without_toolchain(
    flows: &[FlowInput<'_>],
    opts: &Options<'_>,
    wasm_dir: &Path,
    detail: &str,
    progress: &mut dyn FnMut(Event),
) -> Result<Vec<Built>, BuildError> {
    let layout = Layout::new(opts.project_root);
    let mut results = Vec::new();
    for f in flows {
        let fingerprint = f.ir.fingerprint();
        let source = generate(f)?.source;
        if opts.debug {
            write_if_changed(
                &layout.debug_dir().join(format!("{}.rs", f.ir.name)),
                &source,
            )?;
        }
        let key = source_key(&fingerprint, &source, opts.profile);
        let (wasm, key) =
            find_by_source_key(wasm_dir, &f.ir.name, opts.profile, &key).ok_or_else(|| {
                if opts.prebuilt_only {
                    BuildError::NotPackaged {
                        flow: f.ir.name.clone(),
                    }
                } else {
                    BuildError::NoToolchain {
                        flow: f.ir.name.clone(),
                        detail: detail.to_string(),
                    }
                }
            })?;
        results.push(Built {
            flow: f.ir.name.clone(),
            wasm,
            key,
            fingerprint,
            cached: true,
            profile: opts.profile,
        });
    }
    progress(Event::UpToDate);
    Ok(results)
}

fn write_workspace(dir: &Path, flows: &[FlowInput<'_>], keys: &[&str]) -> Result<(), BuildError> {
    let members: Vec<String> = flows
        .iter()
        .map(|f| format!("\"flows/{}\"", f.ir.name))
        .collect();
    let manifest = format!(
        r#"# Generated by Weavster. Do not edit: it is rewritten by `weavster compile`.
[workspace]
resolver = "2"
members = ["weavster-guest", {members}]

[profile.release]
opt-level = 3
lto = "fat"
codegen-units = 1
panic = "abort"
strip = true

[profile.weavster-dev]
inherits = "release"
lto = false
incremental = false
"#,
        members = members.join(", ")
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest)?;
    let guest_manifest = format!(
        r#"[package]
name = "weavster-guest"
version = "{version}"
edition = "2024"
publish = false

[dependencies]
{deps}"#,
        version = weavster_guest::VERSION,
        deps = GUEST_DEPENDENCIES
    );
    write_if_changed(&dir.join("weavster-guest/Cargo.toml"), &guest_manifest)?;
    for (path, src) in GUEST_FILES {
        write_if_changed(&dir.join("weavster-guest").join(path), src)?;
    }
    for (f, key) in flows.iter().zip(keys) {
        let manifest = format!(
            r#"[package]
name = "{name}"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
# cdylib only: with an rlib beside it cargo silently drops LTO.
crate-type = ["cdylib"]
path = "src/lib.rs"

[dependencies]
weavster-guest = {{ path = "../../weavster-guest" }}
"#,
            name = crate_name(&f.ir.name, key)
        );
        write_if_changed(
            &dir.join("flows").join(&f.ir.name).join("Cargo.toml"),
            &manifest,
        )?;
    }
    Ok(())
}

/// The user's rustflags, then one that writes the cargo home (where
/// dependencies' sources are) as `/cargo`: a module holds no path of the
/// machine that built it (packages are reproducible across machines;
/// rustc already maps its own sources to `/rustc/<commit>`, and cargo
/// names the flow crates by relative paths).
fn rustflags() -> String {
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(f) if !f.is_empty() => f.split('\x1f').map(str::to_string).collect(),
        _ => std::env::var("RUSTFLAGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|h| h.join(".cargo")));
    if let Some(home) = home {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags.join("\x1f")
}

fn run_cargo(
    dir: &Path,
    target_dir: &Path,
    stale: &[(String, String)],
    profile: Profile,
    progress: &mut dyn FnMut(Event),
) -> Result<(), BuildError> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args([
            "build",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.args(["--profile", profile.cargo_profile()]);
    for (_, name) in stale {
        cmd.args(["-p", name]);
    }
    let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
        command: "cargo build".into(),
        source,
    })?;
    let stderr = child.stderr.take();
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let mut done = 0;
    let mut messages = String::new();
    if let Some(stdout) = child.stdout.take() {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match msg.get("reason").and_then(|r| r.as_str()) {
                Some("compiler-artifact") => {
                    done += 1;
                    let name = msg
                        .pointer("/target/name")
                        .and_then(|n| n.as_str())
                        .unwrap_or_default()
                        .to_string();
                    progress(Event::Compiling {
                        crate_name: name,
                        done,
                    });
                }
                Some("compiler-message") => {
                    if let Some(r) = msg.pointer("/message/rendered").and_then(|r| r.as_str()) {
                        messages.push_str(r);
                    }
                }
                _ => {}
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        command: "cargo build".into(),
        source,
    })?;
    let stderr = stderr_thread.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let output = format!("{messages}{stderr}");
    if output.contains("target may not be installed")
        || output.contains("can't find crate for `std`")
    {
        return Err(BuildError::MissingTarget);
    }
    for (flow, _) in stale {
        let generated = dir.join("flows").join(flow).join("src/lib.rs");
        if output.contains(&format!("flows/{flow}/src/lib.rs")) {
            return Err(BuildError::Generated {
                flow: flow.clone(),
                generated,
                output,
            });
        }
    }
    Err(BuildError::Cargo(output))
}

#[cfg(test)]
mod tests {
    use super::GUEST_DEPENDENCIES;

    /// The guest's dependencies in generated manifests match the workspace's.
    #[test]
    fn guest_dependencies_match_the_workspace() {
        let ws = include_str!("../../../Cargo.toml");
        for line in GUEST_DEPENDENCIES.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                ws.lines().any(|w| w.trim() == line.trim()),
                "workspace Cargo.toml lacks `{line}`"
            );
        }
    }
}
