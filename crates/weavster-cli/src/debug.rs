//! `weavster debug`: a table of environment checks, each with its fix.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use serde::Serialize;
use weavster_project::LoadError;
use weavster_spec::types::Connector;

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
            checks.push(reachable(
                "queue (PostgreSQL)",
                &p.runtime.queue,
                5432,
                "start the database or fix `runtime.queue` for this target",
            ));
        }
        for def in p.connectors.values() {
            let name = format!("connector {}", def.reference);
            match &def.connector {
                Connector::File(f) => checks.push(file_check(
                    &name,
                    &p.root,
                    &f.path,
                    is_input(p, &def.reference),
                )),
                Connector::Kafka(k) => {
                    let first = k
                        .brokers
                        .split(',')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    checks.push(reachable(
                        &name,
                        &format!("kafka://{first}"),
                        9092,
                        "start the broker or fix `brokers`",
                    ));
                }
                Connector::Postgres(pg) => checks.push(reachable(
                    &name,
                    &pg.url,
                    5432,
                    "start the database or fix `url`",
                )),
                Connector::Http(h) => match &h.url {
                    Some(url) => {
                        let port = if url.starts_with("https://") { 443 } else { 80 };
                        checks.push(reachable(
                            &name,
                            url,
                            port,
                            "start the service or fix `url`",
                        ));
                    }
                    None => checks.push(Check::ok(
                        name,
                        format!("server on {}", h.listen.clone().unwrap_or_default()),
                    )),
                },
                Connector::Stdin(_) | Connector::Stdout(_) => {}
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
fn find_pg_bin() -> Result<PathBuf, weavster_pg::PgError> {
    let explicit = std::env::var_os("WEAVSTER_PG_BIN").map(PathBuf::from);
    weavster_pg::find_bin_dir(explicit.as_deref())
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

/// `host:port` of a URL-ish string (`scheme://user:pw@host:port/...`).
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if hostport.is_empty() {
        return None;
    }
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), default_port)),
    }
}

fn reachable(name: &str, url: &str, default_port: u16, fix: &str) -> Check {
    let Some((host, port)) = host_port(url, default_port) else {
        return Check::fail(
            name,
            "cannot tell host and port from the configured address",
            fix,
        );
    };
    let addrs = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Check::fail(name, format!("cannot resolve {host}: {e}"), fix),
    };
    for addr in &addrs {
        if TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok() {
            return Check::ok(name, format!("{host}:{port} reachable"));
        }
    }
    Check::fail(name, format!("{host}:{port} not reachable"), fix)
}

fn file_check(name: &str, root: &Path, pattern: &str, input: bool) -> Check {
    let full = root.join(pattern);
    if input {
        let matches =
            glob::glob(&full.to_string_lossy()).map(|paths| paths.filter_map(Result::ok).count());
        match matches {
            Ok(0) => Check::fail(
                name,
                format!("no file matches {pattern}"),
                "create the input file or fix `path`",
            ),
            Ok(n) => Check::ok(name, format!("{n} file(s) match {pattern}")),
            Err(e) => Check::fail(name, format!("invalid glob {pattern}: {e}"), "fix `path`"),
        }
    } else {
        let parent = full
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.to_path_buf());
        let mut existing = parent.as_path();
        while !existing.exists() {
            match existing.parent() {
                Some(p) => existing = p,
                None => break,
            }
        }
        if existing.is_file() {
            return Check::fail(
                name,
                format!(
                    "{pattern} cannot be created: {} is a file, not a directory",
                    existing.strip_prefix(root).unwrap_or(existing).display()
                ),
                "move that file away or fix `path`",
            );
        }
        let writable = std::fs::metadata(existing)
            .map(|m| !m.permissions().readonly())
            .unwrap_or(false);
        if writable {
            Check::ok(name, format!("{pattern} can be written"))
        } else {
            Check::fail(
                name,
                format!("{} is not writable", existing.display()),
                "fix the directory's permissions or `path`",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("postgres://u:p@db.local:6543/x", 5432),
            Some(("db.local".into(), 6543))
        );
        assert_eq!(
            host_port("postgres://db/x", 5432),
            Some(("db".into(), 5432))
        );
        assert_eq!(
            host_port("kafka://[::1]:9093", 9092),
            Some(("::1".into(), 9093))
        );
        assert_eq!(
            host_port("http://example", 80),
            Some(("example".into(), 80))
        );
    }
}
