//! `weavster package`: compile (release, every flow), then write the
//! project as an OCI artifact under `.weavster/package/` (docs/packaging.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use weavster_package::{
    ConnectorEntry, Contents, FlowEntry, Layout, LookupEntry, Module, ProjectManifest, Versions,
};

use crate::Global;
use crate::compile::{self, relative};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tag in the layout (default: the project's `version`, else `latest`).
    #[arg(long)]
    pub tag: Option<String>,
    /// The OCI image layout directory (default: .weavster/package).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Package development builds of the flows (default: release builds).
    #[arg(long)]
    pub dev: bool,
    /// Sign the package (cosign format) with `--key`; the key's password
    /// is read from COSIGN_PASSWORD.
    #[arg(long, requires = "key")]
    pub sign: bool,
    /// The private key to sign with (`weavster keygen` or `cosign
    /// generate-key-pair` wrote it).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// `key=value` put in the signature's `optional` (repeatable).
    #[arg(long = "annotation", short = 'a', value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
}

/// The password of a private key: COSIGN_PASSWORD (cosign's variable).
pub fn password() -> anyhow::Result<Vec<u8>> {
    match std::env::var_os("COSIGN_PASSWORD") {
        Some(p) => Ok(p.into_encoded_bytes()),
        None => anyhow::bail!(
            "set COSIGN_PASSWORD to the key's password (empty for none): Weavster does not prompt"
        ),
    }
}

/// `created`: `SOURCE_DATE_EPOCH`, else the newest source file's time.
fn created(root: &std::path::Path, files: &[weavster_package::SourceFile]) -> anyhow::Result<u64> {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH `{s}` is not a number of seconds"));
    }
    let mut newest = 0;
    for f in files {
        let m = std::fs::metadata(root.join(&f.path))
            .and_then(|m| m.modified())
            .with_context(|| format!("cannot read the time of {}", f.path))?;
        let secs = m
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        newest = newest.max(secs);
    }
    Ok(newest)
}

/// `git` of the project dir, if it is a clean checkout: (source, revision).
fn git(root: &std::path::Path) -> (Option<String>, Option<String>) {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = out(&["rev-parse", "HEAD"]).filter(|r| !r.is_empty());
    // A revision names the sources only if nothing differs from it.
    let clean = out(&["status", "--porcelain", "--", "."]).is_some_and(|s| s.is_empty());
    let source = out(&["remote", "get-url", "origin"]).filter(|s| !s.is_empty());
    (source, revision.filter(|_| clean))
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let compile_args = compile::Args {
        flow: Vec::new(),
        force: false,
        debug: false,
        release: !args.dev,
        prebuilt_only: false,
    };
    // Compiling progress and results are shown (a release build takes a while).
    let Some((loaded, compiled)) = compile::compile(g, &compile_args, g.quiet)? else {
        return Ok(ExitCode::from(1));
    };
    let p = &loaded.project;
    let sources = weavster_package::project_sources(&p.root)?;
    let epoch = created(&p.root, &sources)?;
    let created = chrono::DateTime::from_timestamp(epoch as i64, 0)
        .context("the creation time is out of range")?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let version = p.file.as_ref().and_then(|f| f.version.clone());
    let mut modules = Vec::new();
    let mut flows = Vec::new();
    for b in &compiled.built {
        let wasm =
            std::fs::read(&b.wasm).with_context(|| format!("cannot read {}", b.wasm.display()))?;
        modules.push(Module {
            flow: b.flow.clone(),
            fingerprint: b.fingerprint.clone(),
            wasm,
        });
        let f = p
            .flow(&b.flow)
            .with_context(|| format!("flow `{}` was built but is not in the project", b.flow))?;
        flows.push(FlowEntry {
            name: f.name.clone(),
            file: f.file.clone(),
            description: f.spec.description.clone(),
            input: f.spec.input.to_string(),
            outputs: f.spec.outputs.iter().map(|o| o.to.to_string()).collect(),
            transforms: f
                .spec
                .transforms
                .iter()
                .map(|t| t.name().to_string())
                .collect(),
            fingerprint: b.fingerprint.clone(),
            module: String::new(),
            key: b.key.clone(),
            source_key: std::fs::read_to_string(b.wasm.with_extension("source"))
                .map(|k| k.trim().to_string())
                .with_context(|| {
                    format!(
                        "flow `{}`: its module has no source key (compile --force)",
                        b.flow
                    )
                })?,
            tests: p.tests.iter().filter(|t| t.flow == f.name).count(),
        });
    }
    let (source, revision) = git(&p.root);
    let contents = Contents {
        project: ProjectManifest {
            project: p.name.clone(),
            version: version.clone(),
            flows,
            connectors: p
                .connectors
                .values()
                .map(|c| ConnectorEntry {
                    reference: c.reference.clone(),
                    kind: c.connector.type_name().to_string(),
                    file: c.file.clone(),
                })
                .collect(),
            lookups: p
                .lookups
                .iter()
                .map(|(name, t)| LookupEntry {
                    name: name.clone(),
                    file: t.file.clone(),
                    rows: t.data.rows.len(),
                })
                .collect(),
        },
        description: p.file.as_ref().and_then(|f| f.description.clone()),
        modules,
        sources,
        versions: Versions {
            version: env!("CARGO_PKG_VERSION").into(),
            abi: weavster_host::ABI_VERSION,
            guest: weavster_guest::VERSION.into(),
            profile: compile_args.profile().name().into(),
            target: p.target.clone(),
        },
        created,
        created_epoch: epoch,
        source,
        revision,
    };
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| p.root.join(".weavster/package"));
    let tag = args
        .tag
        .clone()
        .or(version)
        .unwrap_or_else(|| "latest".into());
    let signing_key = match (&args.sign, &args.key) {
        (true, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key {}", path.display()))?;
            Some(
                weavster_package::signature::read_private(&text, &password()?)
                    .with_context(|| format!("{}", path.display()))?,
            )
        }
        _ => None,
    };
    let reference = p
        .file
        .as_ref()
        .and_then(|f| f.package.as_ref())
        .and_then(|k| k.repository.clone())
        .unwrap_or_else(|| p.name.clone());
    let layout = Layout::new(&dir);
    let written = weavster_package::write(&layout, contents, &tag)?;
    let mut signed = None;
    if let Some(key) = &signing_key {
        let mut optional = std::collections::BTreeMap::new();
        optional.insert(
            "dev.weavster.project".to_string(),
            serde_json::json!(p.name),
        );
        optional.insert("dev.weavster.tag".to_string(), serde_json::json!(tag));
        for a in &args.annotations {
            let (k, v) = a
                .split_once('=')
                .with_context(|| format!("--annotation `{a}`: expected KEY=VALUE"))?;
            optional.insert(k.to_string(), serde_json::json!(v));
        }
        signed = Some(weavster_package::signature::sign(
            &layout,
            &written.digest,
            &reference,
            key,
            optional,
        )?);
    }
    if !g.quiet {
        println!(
            "✔ packaged {}:{} ({} flow{}, {} bytes) into {}",
            p.name,
            written.tag,
            compiled.built.len(),
            crate::validate::plural(compiled.built.len()),
            written.total,
            relative(&p.root, &dir)
        );
        if let Some(n) = signed {
            println!(
                "✔ signed for {reference} ({n} signature{} in {})",
                crate::validate::plural(n),
                weavster_package::signature::sig_tag(&written.digest)
            );
        }
    }
    println!("{}", written.digest);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Files written: PREFIX.key (encrypted with COSIGN_PASSWORD) and PREFIX.pub.
    #[arg(long, default_value = "cosign")]
    pub output_key_prefix: String,
}

/// `weavster keygen`: a cosign-compatible key pair; never overwrites.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let private = PathBuf::from(format!("{}.key", args.output_key_prefix));
    let public = PathBuf::from(format!("{}.pub", args.output_key_prefix));
    for f in [&private, &public] {
        if f.exists() {
            anyhow::bail!(
                "{} exists: not overwritten (move it away first)",
                f.display()
            );
        }
    }
    let (key, pubkey) = weavster_package::signature::generate(&password()?)?;
    write_new(&private, key.as_bytes(), 0o600)?;
    write_new(&public, pubkey.as_bytes(), 0o644)?;
    println!(
        "✔ wrote {} (private, encrypted with COSIGN_PASSWORD) and {} (public)",
        private.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_new(path: &std::path::Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// How to reach a registry (shared by push, pull, verify, run).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// The registry user (the password from standard input, see
    /// --password-stdin); default: ~/.docker/config.json (or $DOCKER_CONFIG)
    /// and its credential helpers, else anonymous.
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Plain HTTP to the registry (a local or test registry).
    #[arg(long)]
    pub insecure: bool,
}

impl RegistryArgs {
    pub fn access(&self) -> anyhow::Result<weavster_package::registry::Access> {
        let basic = match &self.username {
            Some(u) => {
                let mut p = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut p)
                    .context("cannot read the password from standard input")?;
                Some((u.clone(), p.trim_end_matches(['\n', '\r']).to_string()))
            }
            None => None,
        };
        Ok(weavster_package::registry::Access {
            basic,
            insecure: self.insecure,
        })
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f))
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Where to: `registry/repository[:tag]` (default: `package.repository`
    /// from weavster.yaml, tagged with the project's version).
    pub reference: Option<String>,
    /// The layout to push from (default: .weavster/package).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// The tag in that layout (default: its only package).
    #[arg(long)]
    pub tag: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `weavster push`: blobs, the manifest, then the signatures (merged with
/// the registry's); prints `registry/repository@sha256:…`.
pub fn push(g: &Global, args: &PushArgs) -> anyhow::Result<ExitCode> {
    let (reference, from) = match &args.reference {
        Some(r) => (
            r.clone(),
            args.from
                .clone()
                .unwrap_or_else(|| g.project_dir().join(".weavster/package")),
        ),
        None => {
            let loaded = g.load()?;
            let p = &loaded.project;
            let file = p.file.as_ref();
            let repo = file
                .and_then(|f| f.package.as_ref())
                .and_then(|k| k.repository.clone())
                .context("no reference given and no `package: {repository: …}` in weavster.yaml")?;
            let tag = args
                .tag
                .clone()
                .or_else(|| file.and_then(|f| f.version.clone()))
                .unwrap_or_else(|| "latest".into());
            (
                format!("{repo}:{tag}"),
                args.from
                    .clone()
                    .unwrap_or_else(|| p.root.join(".weavster/package")),
            )
        }
    };
    let layout = Layout::new(&from);
    let access = args.registry.access()?;
    let pushed = block_on(weavster_package::registry::push(
        &layout,
        args.tag.as_deref(),
        &reference,
        &access,
    ))??;
    if !g.quiet {
        println!(
            "✔ pushed to {reference} ({} signature{})",
            pushed.signatures,
            crate::validate::plural(pushed.signatures)
        );
    }
    println!("{}", pushed.reference);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// `registry/repository:tag` or `…@sha256:…`.
    pub reference: String,
    /// The layout to pull into (default: .weavster/package).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `weavster pull`: the package and its signatures, every digest checked.
pub fn pull(g: &Global, args: &PullArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| g.project_dir().join(".weavster/package"));
    let access = args.registry.access()?;
    let pulled = block_on(weavster_package::registry::pull(
        &args.reference,
        &Layout::new(&dir),
        &access,
    ))??;
    if !g.quiet {
        println!(
            "✔ pulled {} into {} as `{}` ({} signature{})",
            args.reference,
            dir.display(),
            pulled.tag,
            pulled.signatures,
            crate::validate::plural(pulled.signatures)
        );
    }
    println!("{}", pulled.digest);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// An OCI image layout directory (`weavster package` or `pull` wrote
    /// it, or `skopeo copy … oci:DIR`), or a registry reference (pulled
    /// into a temporary layout first).
    pub package: String,
    /// The public key (`PUBLIC KEY` PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The tag in the layout (default: its only package).
    #[arg(long)]
    pub tag: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `weavster verify`: exit 0 only if a signature by the key covers exactly
/// this manifest and every blob matches its digest; 1 otherwise.
pub fn verify(g: &Global, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let as_dir = PathBuf::from(&args.package);
    // A pulled package's temporary layout lives until the check is done.
    let mut _pulled: Option<tempfile::TempDir> = None;
    let (dir, tag) = if as_dir.join("index.json").is_file() {
        (as_dir, args.tag.clone())
    } else if as_dir.exists() {
        anyhow::bail!(
            "{} is not an OCI image layout (no index.json)",
            as_dir.display()
        );
    } else {
        let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
        let access = args.registry.access()?;
        let p = block_on(weavster_package::registry::pull(
            &args.package,
            &Layout::new(tmp.path()),
            &access,
        ))??;
        let dir = tmp.path().to_path_buf();
        _pulled = Some(tmp);
        (dir, Some(p.tag))
    };
    let text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read the key {}", args.key.display()))?;
    let key = weavster_package::signature::read_public(&text)
        .with_context(|| format!("{}", args.key.display()))?;
    let layout = Layout::new(&dir);
    let checked = weavster_package::open(&layout, tag.as_deref()).and_then(|p| {
        weavster_package::signature::verify(&layout, &p.digest, &key).map(|v| (p, v))
    });
    match checked {
        Ok((p, v)) => {
            if !g.quiet {
                println!(
                    "✔ {} is signed by {} for {} ({} flow{}; {} signature{} present)",
                    p.digest,
                    args.key.display(),
                    v.reference,
                    p.project.flows.len(),
                    crate::validate::plural(p.project.flows.len()),
                    v.signatures,
                    crate::validate::plural(v.signatures)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("✘ {}: {e}", args.package);
            Ok(ExitCode::from(1))
        }
    }
}

/// A package made ready to run: its sources extracted, its modules where
/// the build cache finds them, the project loaded from them with the
/// working directory as its root.
pub struct Materialized {
    pub loaded: weavster_project::Loaded,
    /// The modules are release builds.
    pub release: bool,
}

/// `run --package SRC`: SRC is a layout dir or a registry reference
/// (pulled into `<workdir>/.weavster/packages/pulled`). Every digest is
/// checked; with `key`, a signature by it must cover the manifest; a
/// package of another ABI is refused — all before anything runs.
pub fn materialize(
    g: &Global,
    src: &str,
    tag: Option<&str>,
    key: Option<&std::path::Path>,
    registry: &RegistryArgs,
) -> anyhow::Result<Materialized> {
    let workdir = std::path::absolute(g.project_dir()).context("the working directory")?;
    let state = workdir.join(".weavster/packages");
    let as_dir = PathBuf::from(src);
    let (dir, tag) = if as_dir.join("index.json").is_file() {
        (as_dir, tag.map(str::to_string))
    } else if as_dir.exists() {
        anyhow::bail!(
            "{} is not an OCI image layout (no index.json)",
            as_dir.display()
        );
    } else {
        let dir = state.join("pulled");
        let p = block_on(weavster_package::registry::pull(
            src,
            &Layout::new(&dir),
            &registry.access()?,
        ))??;
        (dir, Some(p.tag))
    };
    let layout = Layout::new(&dir);
    let package = weavster_package::open(&layout, tag.as_deref())
        .with_context(|| format!("package {src}"))?;
    if let Some(key) = key {
        let text = std::fs::read_to_string(key)
            .with_context(|| format!("cannot read the key {}", key.display()))?;
        let public = weavster_package::signature::read_public(&text)
            .with_context(|| format!("{}", key.display()))?;
        weavster_package::signature::verify(&layout, &package.digest, &public)
            .with_context(|| format!("package {src} is refused; nothing was run"))?;
    }
    let v = &package.config.weavster;
    if v.abi != weavster_host::ABI_VERSION {
        anyhow::bail!(
            "package {src} was built by Weavster {} for ABI v{}; this weavster {} runs ABI v{}: \
             package it again with this version (or run it with Weavster {})",
            v.version,
            v.abi,
            env!("CARGO_PKG_VERSION"),
            weavster_host::ABI_VERSION,
            v.version
        );
    }
    // The sources, fresh for this digest.
    let hex = &package.digest["sha256:".len()..];
    let src_dir = state.join(&hex[..16]);
    if src_dir.exists() {
        std::fs::remove_dir_all(&src_dir)
            .with_context(|| format!("cannot clear {}", src_dir.display()))?;
    }
    for f in &package.sources {
        let path = src_dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, &f.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // The modules, named as the build cache names them.
    let wasm_dir = workdir.join(".weavster/target/wasm");
    std::fs::create_dir_all(&wasm_dir)
        .with_context(|| format!("cannot create {}", wasm_dir.display()))?;
    let release = v.profile == "release";
    for f in &package.project.flows {
        let (_, bytes) = package
            .modules
            .iter()
            .find(|(name, _)| name == &f.name)
            .with_context(|| format!("flow `{}` has no module in the package", f.name))?;
        let stem = format!("{}.{}-{}", f.name, v.profile, f.key);
        for (ext, data) in [
            ("wasm", bytes.as_slice()),
            ("source", f.source_key.as_bytes()),
        ] {
            let path = wasm_dir.join(format!("{stem}.{ext}"));
            std::fs::write(&path, data)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let mut g = g.clone();
    g.project_dir = Some(src_dir);
    let mut loaded = g.load()?;
    loaded.project.root = workdir;
    if !g.quiet {
        eprintln!(
            "running package {src} ({}, {} {}){}",
            package.digest,
            package.config.project,
            package.config.version.as_deref().unwrap_or(""),
            if key.is_some() {
                ", signature verified"
            } else {
                ""
            }
        );
    }
    Ok(Materialized { loaded, release })
}

/// `runtime.require_signature` of the loaded target: sources are refused,
/// and a package needs a key (checked by [`materialize`]).
pub fn require_signature(
    loaded: &weavster_project::Loaded,
    package: bool,
    key: bool,
) -> anyhow::Result<()> {
    let p = &loaded.project;
    if !p.runtime.require_signature {
        return Ok(());
    }
    if !package {
        anyhow::bail!(
            "target `{}` sets runtime.require_signature: run a signed package (`--package REF --key cosign.pub`), not the project's sources",
            p.target
        );
    }
    if !key {
        anyhow::bail!(
            "target `{}` sets runtime.require_signature: give the public key (--key or WEAVSTER_VERIFY_KEY); nothing was run",
            p.target
        );
    }
    Ok(())
}

/// `--package` and what goes with it, shared by `run` and `test`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PackageArgs {
    /// Use a package (an OCI layout directory or a registry reference)
    /// instead of the project's sources: its modules as built, no Rust
    /// toolchain. Profiles and target come from --profiles-dir/--target;
    /// relative paths and the embedded queue are the working directory's
    /// (-C).
    #[arg(long, value_name = "DIR|REF")]
    pub package: Option<String>,
    /// Refuse a package without a signature by this public key (checked
    /// before anything runs). Set, it also refuses the project's sources:
    /// a machine with a verify key runs signed packages only.
    #[arg(long, value_name = "FILE", env = "WEAVSTER_VERIFY_KEY")]
    pub key: Option<PathBuf>,
    /// The tag in the package layout (default: its only package).
    #[arg(long, requires = "package")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl PackageArgs {
    /// The project to run or test: the package's (its modules' profile
    /// decides release) or the sources' (`release` as asked); refused
    /// under `runtime.require_signature` as that says.
    pub fn load(
        &self,
        g: &Global,
        release: bool,
    ) -> anyhow::Result<(weavster_project::Loaded, bool)> {
        if let (Some(key), None) = (&self.key, &self.package) {
            anyhow::bail!(
                "a verify key is set ({}, by --key or WEAVSTER_VERIFY_KEY): run a signed package (--package DIR|REF); the project's sources are not signed",
                key.display()
            );
        }
        let (loaded, release) = match &self.package {
            Some(src) => {
                let p = materialize(
                    g,
                    src,
                    self.tag.as_deref(),
                    self.key.as_deref(),
                    &self.registry,
                )?;
                (p.loaded, p.release)
            }
            None => (g.load()?, release),
        };
        require_signature(&loaded, self.package.is_some(), self.key.is_some())?;
        Ok((loaded, release))
    }
}
