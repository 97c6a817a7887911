//! `weavster ls`

use std::process::ExitCode;

use weavster_project::Manifest;

use crate::{Format, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let loaded = g.load()?;
    if crate::report_invalid(&loaded, "run `weavster validate` for details") {
        return Ok(ExitCode::from(1));
    }
    let m = Manifest::new(&loaded.project);
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&m)?),
        Format::Text => {
            println!(
                "project {}  profile {}  target {}  queue {}",
                m.project, m.profile, m.target, m.runtime.queue
            );
            println!();
            println!("FLOWS");
            for f in &m.flows {
                println!(
                    "  {:<20} {} → {} ({} transform{}, {} test{})",
                    f.name,
                    f.input,
                    f.outputs
                        .iter()
                        .map(|o| match &o.when {
                            Some(w) => format!("{} when {w}", o.to),
                            None => o.to.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.transforms.len(),
                    crate::validate::plural(f.transforms.len()),
                    f.tests,
                    crate::validate::plural(f.tests)
                );
            }
            println!();
            println!("CONNECTORS");
            for c in &m.connectors {
                println!(
                    "  {:<20} {:<8} {}",
                    c.reference,
                    c.kind,
                    serde_json::to_string(&c.config)?
                );
            }
            if !m.lookups.is_empty() {
                println!();
                println!("LOOKUPS");
                for l in &m.lookups {
                    println!(
                        "  {:<20} {} rows, columns {}",
                        l.name,
                        l.rows,
                        l.columns.join(", ")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
