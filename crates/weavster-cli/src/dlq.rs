//! `weavster dlq ls|show|replay|purge`: the dead-letter table.

use std::process::ExitCode;

use anyhow::bail;
use weavster_runtime::{DeadLetter, DeadLetterFilter};

use crate::queue::{Queue, runtime};
use crate::{Format, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// List dead letters (oldest first).
    Ls {
        #[arg(long, short = 'f')]
        flow: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show dead letters in full, record included.
    Show {
        #[arg(required = true)]
        ids: Vec<i64>,
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Put dead letters back on their flow's queue (and remove them); the
    /// next `weavster run` delivers them. Without ids or --flow: all.
    Replay {
        ids: Vec<i64>,
        #[arg(long, short = 'f')]
        flow: Option<String>,
    },
    /// Delete dead letters: the given ids, a flow's (--flow), or all (--all).
    Purge {
        ids: Vec<i64>,
        #[arg(long, short = 'f')]
        flow: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

/// Text safe for a terminal: control characters (escape sequences among
/// them) and bytes that are not UTF-8 are shown escaped, never sent raw.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let s = printable(s.as_bytes());
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

/// A dead letter as JSON: the record as text when it is UTF-8, else as
/// base64 (`record_base64`).
fn to_json(d: &DeadLetter) -> serde_json::Value {
    use base64::Engine as _;
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        match d.record_text() {
            Some(t) => {
                m.insert("record".into(), t.into());
            }
            None => {
                m.insert(
                    "record_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&d.record)
                        .into(),
                );
            }
        }
    }
    v
}

fn print_text(letters: &[DeadLetter], full: bool) {
    if !full {
        println!(
            "{:>6}  {:<16} {:<10} {:<20}  message",
            "id", "flow", "stage", "time"
        );
    }
    for d in letters {
        if full {
            println!("dead letter {}", d.id);
            println!("  flow:     {}", d.flow);
            println!("  stage:    {}", d.stage);
            println!("  message:  {}", printable(d.message.as_bytes()));
            if let Some(p) = &d.path {
                println!("  path:     {}", printable(p.as_bytes()));
            }
            if let Some(o) = &d.output {
                println!("  output:   {o}");
            }
            if let Some(s) = &d.source {
                println!("  read at:  {}", printable(s.as_bytes()));
            }
            println!("  attempts: {}", d.attempts);
            println!("  time:     {}", d.created_at);
            if let Some(r) = d.run_id {
                println!("  run:      {r}");
            }
            // Pretty JSON when it is JSON (escapes included); else the
            // bytes, escaped.
            let record = d
                .record_text()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .map(|p| {
                    p.lines()
                        .map(|l| printable(l.as_bytes()))
                        .collect::<Vec<_>>()
                        .join("\n    ")
                })
                .unwrap_or_else(|| printable(&d.record));
            let size = if d.record.len() > 1024 {
                format!(" ({} bytes)", d.record.len())
            } else {
                String::new()
            };
            println!("  record{size}:\n    {record}");
        } else {
            println!(
                "{:>6}  {:<16} {:<10} {:<20}  {}",
                d.id,
                d.flow,
                d.stage,
                d.created_at,
                one_line(&d.message, 80)
            );
        }
    }
}

/// The ids (of `ids`) no dead letter has, listed; `None` if all exist.
async fn missing_ids(db: &weavster_runtime::Db, ids: &[i64]) -> anyhow::Result<Option<String>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let filter = DeadLetterFilter {
        flow: None,
        ids: ids.to_vec(),
    };
    let found = db.dead_letters(&filter, i64::MAX).await?;
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !found.iter().any(|d| d.id == **id))
        .map(i64::to_string)
        .collect();
    Ok((!missing.is_empty()).then(|| missing.join(", ")))
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let loaded = g.load()?;
    let project = &loaded.project;
    if let Command::Purge {
        ids,
        flow: None,
        all: false,
    } = &args.command
        && ids.is_empty()
    {
        bail!("say what to purge: dead-letter ids, --flow F, or --all");
    }
    let flows: Vec<String> = project.flows.iter().map(|f| f.name.clone()).collect();
    let check_flow = |f: &Option<String>| -> anyhow::Result<()> {
        if let Some(f) = f
            && !flows.contains(f)
        {
            bail!("no flow named `{f}` (flows: {})", flows.join(", "));
        }
        Ok(())
    };
    let rt = runtime()?;
    rt.block_on(async {
        let queue = Queue::open(project, 4).await?;
        let result = async {
            let db = &queue.db;
            match &args.command {
                Command::Ls {
                    flow,
                    limit,
                    output,
                } => {
                    check_flow(flow)?;
                    let filter = DeadLetterFilter {
                        flow: flow.clone(),
                        ids: Vec::new(),
                    };
                    let letters = db.dead_letters(&filter, *limit).await?;
                    let total = db.count_dead_letters(&filter).await?;
                    match output {
                        Format::Json => println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &letters.iter().map(to_json).collect::<Vec<_>>()
                            )?
                        ),
                        Format::Text if letters.is_empty() => println!("no dead letters"),
                        Format::Text => {
                            print_text(&letters, false);
                            if total > letters.len() as i64 {
                                println!("({} of {total} shown; --limit for more)", letters.len());
                            }
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Command::Show { ids, output } => {
                    let filter = DeadLetterFilter {
                        flow: None,
                        ids: ids.clone(),
                    };
                    let letters = db.dead_letters(&filter, i64::MAX).await?;
                    let missing: Vec<String> = ids
                        .iter()
                        .filter(|id| !letters.iter().any(|d| d.id == **id))
                        .map(i64::to_string)
                        .collect();
                    match output {
                        Format::Json => println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &letters.iter().map(to_json).collect::<Vec<_>>()
                            )?
                        ),
                        Format::Text => print_text(&letters, true),
                    }
                    if !missing.is_empty() {
                        eprintln!("error: no dead letter with id {}", missing.join(", "));
                        return Ok(ExitCode::from(2));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Command::Replay { ids, flow } => {
                    check_flow(flow)?;
                    let filter = DeadLetterFilter {
                        flow: flow.clone(),
                        ids: ids.clone(),
                    };
                    if let Some(missing) = missing_ids(db, ids).await? {
                        eprintln!("error: no dead letter with id {missing}");
                        return Ok(ExitCode::from(2));
                    }
                    let done = db
                        .replay_dead_letters(
                            &filter,
                            &flows,
                            project.runtime.batch_size as usize,
                            project.runtime.max_attempts,
                        )
                        .await?;
                    let n: usize = done.queued.iter().map(|(_, n)| n).sum();
                    for (f, k) in &done.queued {
                        println!(
                            "✔ {f}: {k} record{} queued again",
                            crate::validate::plural(*k)
                        );
                    }
                    for (id, why) in &done.kept {
                        println!("✘ dead letter {id} kept: {why}");
                    }
                    if n == 0 {
                        println!("nothing to replay");
                    } else {
                        println!("run `weavster run` (or `run --once`) to deliver them");
                    }
                    Ok(if done.kept.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                Command::Purge { ids, flow, .. } => {
                    check_flow(flow)?;
                    if let Some(missing) = missing_ids(db, ids).await? {
                        eprintln!("error: no dead letter with id {missing}");
                        return Ok(ExitCode::from(2));
                    }
                    let filter = DeadLetterFilter {
                        flow: flow.clone(),
                        ids: ids.clone(),
                    };
                    let n = db.purge_dead_letters(&filter).await?;
                    println!(
                        "✔ {n} dead letter{} deleted",
                        crate::validate::plural(n as usize)
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        .await;
        queue.close().await;
        result
    })
}
