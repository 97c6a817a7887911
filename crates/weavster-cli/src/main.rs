//! `weavster`: the command-line tool. The only crate that prints and picks
//! exit codes: 0 ok, 1 the project failed (invalid config, failed check),
//! 2 usage or environment error.

mod compile;
mod debug;
mod dlq;
mod docs;
mod health;
mod init;
mod ls;
mod package;
mod queue;
mod run;
mod test;
mod validate;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weavster_project::{LoadError, LoadOptions, Loaded};

#[derive(Parser, Debug)]
#[command(
    name = "weavster",
    version,
    about = "Integration flows as code: compiled, sandboxed, tested."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The project directory (default: the current directory).
    #[arg(
        long,
        short = 'C',
        global = true,
        env = "WEAVSTER_PROJECT_DIR",
        value_name = "DIR"
    )]
    pub(crate) project_dir: Option<PathBuf>,
    /// Directory holding profiles.yaml (default: $WEAVSTER_PROFILES_DIR, the project dir, ~/.weavster).
    #[arg(long, global = true, value_name = "DIR")]
    profiles_dir: Option<PathBuf>,
    /// Target (environment) in the profile (default: $WEAVSTER_TARGET, then the profile's `target`).
    #[arg(long, short = 't', global = true)]
    target: Option<String>,
    /// Vars as a YAML or JSON map, e.g. '{min_total: 10}'; they override every other var.
    #[arg(long, global = true, value_name = "YAML")]
    vars: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More output (repeat for more).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less output.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output format of commands that report on the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new project (with sample data, a flow, a fixture test and dev/prod targets).
    Init(init::Args),
    /// Parse, render and check every file; report all errors at once.
    Validate(validate::Args),
    /// List flows, connectors and lookups with the resolved target.
    Ls(ls::Args),
    /// Check the environment: Rust toolchain, wasm target, PostgreSQL, configured services.
    Debug(debug::Args),
    /// Compile flows to wasm32-wasip1 modules (cached under .weavster/).
    Compile(compile::Args),
    /// The project as a browsable site: lineage graph, flows, connectors.
    Docs(docs::Args),
    /// Package the project (compiled flows, manifest, sources; never
    /// profiles.yaml) as an OCI artifact under .weavster/package; prints its digest.
    Package(package::Args),
    /// Write a cosign-compatible key pair (cosign.key, encrypted with COSIGN_PASSWORD, and cosign.pub).
    Keygen(package::KeygenArgs),
    /// Check a package's signature by a public key and every blob's digest (exit 0 only then).
    Verify(package::VerifyArgs),
    /// Push a package and its signatures to an OCI registry; prints repository@digest.
    Push(package::PushArgs),
    /// Pull a package and its signatures from an OCI registry into a layout (every digest checked).
    Pull(package::PullArgs),
    /// Run the fixture tests (tests/<flow>/*.yaml) through the compiled modules.
    Test(test::Args),
    /// Run flows: inputs → queue (PostgreSQL) → compiled flows → outputs.
    Run(run::Args),
    /// Inspect, replay or purge dead letters (records that could not be delivered).
    Dlq(dlq::Args),
    /// Ask a running `weavster run` (its --metrics-addr) whether it is ready: exit 0 or 1.
    Health(health::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    let result = match &cli.command {
        Command::Init(args) => init::run(&cli.global, args),
        Command::Validate(args) => validate::run(&cli.global, args),
        Command::Ls(args) => ls::run(&cli.global, args),
        Command::Debug(args) => debug::run(&cli.global, args),
        Command::Compile(args) => compile::run(&cli.global, args),
        Command::Docs(args) => docs::run(&cli.global, args),
        Command::Test(args) => test::run(&cli.global, args),
        Command::Package(args) => package::run(&cli.global, args),
        Command::Keygen(args) => package::keygen(args),
        Command::Verify(args) => package::verify(&cli.global, args),
        Command::Push(args) => package::push(&cli.global, args),
        Command::Pull(args) => package::pull(&cli.global, args),
        Command::Run(args) => run::run(&cli.global, args),
        Command::Dlq(args) => dlq::run(&cli.global, args),
        Command::Health(args) => health::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", mask(&format!("error: {e:#}")));
            ExitCode::from(2)
        }
    }
}

/// The loaded project's secrets: every message and log line this process
/// writes to stderr is masked through them.
static SECRETS: std::sync::OnceLock<std::sync::Arc<weavster_project::Secrets>> =
    std::sync::OnceLock::new();

/// `text` with the loaded project's secrets masked.
pub fn mask(text: &str) -> String {
    match SECRETS.get() {
        Some(s) => s.mask(text),
        None => text.to_string(),
    }
}

/// A log line, written to stderr masked when complete.
struct MaskedLine(Vec<u8>);

impl std::io::Write for MaskedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedLine {
    fn drop(&mut self) {
        let text = mask(&String::from_utf8_lossy(&self.0));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    }
}

fn init_logging(g: &Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEAVSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskedLine(Vec::new()));
    let _ = match g.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(color_stderr()).try_init(),
    };
}

/// Writes the JSON Schemas of every file kind into `<root>/.weavster/schemas/`
/// (where the `# yaml-language-server: $schema=` hints of `init`'s files
/// point), rewriting only what changed. A read-only project is not an
/// error: the hints then point at nothing until a writable run.
pub fn write_schemas(root: &std::path::Path) {
    let dir = root.join(".weavster/schemas");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (name, schema) in weavster_spec::types::schemas() {
        let Ok(text) = serde_json::to_string_pretty(&schema) else {
            continue;
        };
        let text = text + "\n";
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str())
            && let Err(e) = std::fs::write(&path, text)
        {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }
}

/// Prints an invalid project's diagnostics and `verdict` (what was not
/// done) on stderr; `true` when the project is invalid.
pub fn report_invalid(loaded: &Loaded, verdict: &str) -> bool {
    if loaded.is_valid() {
        return false;
    }
    eprint!(
        "{}",
        weavster_project::report::render(&loaded.diagnostics, &loaded.sources, color_stderr())
    );
    eprintln!("✘ the project is invalid; {verdict}");
    true
}

/// Colours on stderr: only on a terminal, and never with NO_COLOR set.
pub fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

impl Global {
    pub fn project_dir(&self) -> PathBuf {
        self.project_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Loads the project. `Err` means it could not be read at all (exit 2).
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let opts = LoadOptions {
            project_dir: self.project_dir(),
            profiles_dir: self.profiles_dir.clone(),
            target: self.target.clone(),
            vars: self.vars.clone(),
            env: std::env::vars().collect(),
            home_dir: std::env::var_os("HOME").map(PathBuf::from),
        };
        let loaded = weavster_project::load(&opts)?;
        let _ = SECRETS.set(loaded.project.secrets.clone());
        Ok(loaded)
    }
}
