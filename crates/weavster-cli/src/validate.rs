//! `weavster validate`

use std::process::ExitCode;

use serde::Serialize;
use weavster_project::report::{location, render};
use weavster_project::{Diagnostic, Severity};

use crate::{Format, Global, color_stderr};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Report format; `json` prints one document on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Serialize)]
struct JsonDiag<'a> {
    #[serde(flatten)]
    diag: &'a Diagnostic,
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    valid: bool,
    project: &'a str,
    target: &'a str,
    errors: Vec<JsonDiag<'a>>,
    warnings: Vec<JsonDiag<'a>>,
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let loaded = g.load()?;
    crate::write_schemas(&loaded.project.root);
    let valid = loaded.is_valid();
    let project = &loaded.project;
    match args.format {
        Format::Json => {
            let pick = |sev: Severity| {
                loaded
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == sev)
                    .map(|d| JsonDiag {
                        diag: d,
                        location: location(d),
                        line: d.span.map(|s| s.line),
                        column: d.span.map(|s| s.col),
                    })
                    .collect()
            };
            let report = JsonReport {
                valid,
                project: &project.name,
                target: &project.target,
                errors: pick(Severity::Error),
                warnings: pick(Severity::Warning),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Text => {
            // Warnings of a valid project are hidden by -q; errors never are.
            let quiet_ok = valid && g.quiet;
            let show = !loaded.diagnostics.is_empty() && !quiet_ok;
            if show {
                eprint!(
                    "{}",
                    render(&loaded.diagnostics, &loaded.sources, color_stderr())
                );
            }
            let errors = loaded.errors().count();
            let warnings = loaded.diagnostics.len() - errors;
            if valid {
                if !g.quiet {
                    println!(
                        "✔ project `{}` is valid (target `{}`): {} flow{}, {} connector{}, {} lookup table{}, {} test{}{}",
                        project.name,
                        project.target,
                        project.flows.len(),
                        plural(project.flows.len()),
                        project.connectors.len(),
                        plural(project.connectors.len()),
                        project.lookups.len(),
                        plural(project.lookups.len()),
                        project.tests.len(),
                        plural(project.tests.len()),
                        if warnings > 0 {
                            format!(", {warnings} warning{}", plural(warnings))
                        } else {
                            String::new()
                        },
                    );
                }
            } else {
                let files: std::collections::BTreeSet<_> =
                    loaded.errors().filter_map(|d| d.file.as_deref()).collect();
                eprintln!(
                    "✘ {errors} error{} in {} file{}{}",
                    plural(errors),
                    files.len(),
                    plural(files.len()),
                    if warnings > 0 {
                        format!(", {warnings} warning{}", plural(warnings))
                    } else {
                        String::new()
                    },
                );
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
