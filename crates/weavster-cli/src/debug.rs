//! `weavster debug`: a table of environment checks, each with its fix.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use serde::Serialize;
use weavster_project::LoadError;
use weavster_runtime::CheckContext;
use weavster_runtime::connectors;

use crate::{Format, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let loaded = match g.load() {
        Ok(l) => Some(l),
        Err(e @ LoadError::NotAProject(_)) => {
            checks.push(Check::fail(
                "project",
                e.to_string(),
                "run `weavster init` or pass --project-dir",
            ));
            None
        }
        Err(e) => {
            checks.push(Check::fail(
                "project",
                e.to_string(),
                "check the file's permissions",
            ));
            None
        }
    };
    if let Some(l) = &loaded {
        let p = &l.project;
        let errors = l.errors().count();
        checks.push(if errors == 0 {
            Check::ok(
                "project",
                format!(
                    "`{}` is valid (profile `{}`, target `{}`)",
                    p.name, p.profile, p.target
                ),
            )
        } else {
            Check::fail(
                "project",
                format!("{errors} error(s) in `{}`", p.name),
                "run `weavster validate` to see them",
            )
        });
    }
    checks.push(tool(
        "rustc",
        "rustc",
        "install Rust with rustup (https://rustup.rs) — needed by `weavster compile`",
    ));
    checks.push(tool(
        "cargo",
        "cargo",
        "install Rust with rustup — needed by `weavster compile`",
    ));
    checks.push(wasm_target());
    let embedded = loaded
        .as_ref()
        .is_none_or(|l| l.project.runtime.queue == "embedded");
    checks.push(postgres_binaries(embedded));
    if let Some(l) = &loaded {
        let p = &l.project;
        if p.runtime.queue != "embedded" {
            let c = connectors::reachable(
                &p.runtime.queue,
                5432,
                "start the database or fix `runtime.queue` for this target",
            );
            checks.push(Check {
                name: "queue (PostgreSQL)".into(),
                ok: c.ok,
                detail: c.detail,
                fix: c.fix,
            });
        }
        // Each connector's own check (Kafka: a metadata request for the
        // topic; files: a match or a writable directory).
        let rt = crate::queue::runtime()?;
        for def in p.connectors.values() {
            let cx = CheckContext {
                root: p.root.clone(),
                input: is_input(p, &def.reference),
            };
            if let Some(c) = rt.block_on(connectors::check(&def.connector, &cx)) {
                checks.push(Check {
                    name: format!("connector {}", def.reference),
                    ok: c.ok,
                    detail: c.detail,
                    fix: c.fix,
                });
            }
        }
    }
    // Everything shown goes through the project's masking: a secret or an
    // env value in a path or an address is never printed.
    if let Some(l) = &loaded {
        let secrets = &l.project.secrets;
        for c in &mut checks {
            c.detail = secrets.mask_str(&c.detail);
            if let Some(f) = &mut c.fix {
                *f = secrets.mask_str(f);
            }
        }
    }
    let all_ok = checks.iter().all(|c| c.ok);
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": all_ok, "checks": checks }))?
        ),
        Format::Text => {
            let width = checks
                .iter()
                .map(|c| c.name.chars().count())
                .max()
                .unwrap_or(10);
            for c in &checks {
                let mark = if c.ok { "✔" } else { "✘" };
                println!("{mark} {:<width$}  {}", c.name, c.detail);
                if let Some(fix) = &c.fix {
                    println!("  {:<width$}  fix: {fix}", "");
                }
            }
            let failed = checks.iter().filter(|c| !c.ok).count();
            println!();
            if all_ok {
                println!("All {} checks passed.", checks.len());
            } else {
                println!("{failed} of {} checks failed.", checks.len());
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn is_input(p: &weavster_project::Project, reference: &str) -> bool {
    p.flows.iter().any(|f| f.spec.input == reference)
}

fn tool(name: &str, cmd: &str, fix: &str) -> Check {
    match Command::new(cmd).arg("--version").output() {
        Ok(out) if out.status.success() => Check::ok(
            name,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ),
        Ok(out) => Check::fail(
            name,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
            fix,
        ),
        Err(e) => Check::fail(name, format!("not found ({e})"), fix),
    }
}

fn wasm_target() -> Check {
    let name = "wasm32-wasip1 target";
    let fix = "rustup target add wasm32-wasip1";
    match Command::new("rustc").args(["--print", "sysroot"]).output() {
        Ok(out) if out.status.success() => {
            let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let dir = sysroot.join("lib/rustlib/wasm32-wasip1");
            if dir.is_dir() {
                Check::ok(name, format!("installed in {}", sysroot.display()))
            } else {
                Check::fail(name, "not installed", fix)
            }
        }
        _ => Check::fail(
            name,
            "rustc not found",
            "install Rust with rustup, then `rustup target add wasm32-wasip1`",
        ),
    }
}

/// The PostgreSQL server binaries the embedded queue would use.
fn find_pg_bin() -> Result<PathBuf, weavster_queue_server::PgError> {
    let explicit = std::env::var_os("WEAVSTER_PG_BIN").map(PathBuf::from);
    weavster_queue_server::find_bin_dir(explicit.as_deref())
}

fn postgres_binaries(required: bool) -> Check {
    let name = "PostgreSQL binaries";
    match find_pg_bin() {
        Ok(d) => Check::ok(name, format!("initdb, pg_ctl, postgres in {}", d.display())),
        Err(e) if required => Check::fail(
            name,
            format!("needed for `queue: embedded`: {e}"),
            "apt-get install postgresql (Debian/Ubuntu) or set WEAVSTER_PG_BIN",
        ),
        Err(_) => Check::ok(
            name,
            "not found (not needed: the queue is an external database)",
        ),
    }
}
