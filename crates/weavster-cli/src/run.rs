//! `weavster run`: compile, open the queue, run the flows.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};
use weavster_project::Project;
use weavster_runtime::{Endpoint, FlowPlan, Metrics, QueueSettings, RunOptions, RunReport};

use crate::Global;
use crate::compile::{self, Args as CompileArgs};
use crate::queue::{Queue, runtime};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this flow (repeatable); flows it feeds through bridges run too.
    #[arg(long, short = 'f')]
    flow: Vec<String>,
    /// Read finite inputs to their end, drain the queue and exit: 0 if every
    /// record was delivered, 1 if any was dead-lettered.
    #[arg(long)]
    once: bool,
    /// Serve /health, /ready and Prometheus /metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Forget the stored input positions: read every input from its start.
    #[arg(long)]
    from_start: bool,
    /// Run the fully optimized build of the flows (`compile --release`):
    /// for production. By default the development build runs.
    #[arg(long)]
    release: bool,
    #[command(flatten)]
    package: crate::package::PackageArgs,
}

/// The flows to run: the selected ones and every flow they feed.
fn selected(project: &Project, wanted: &[String]) -> anyhow::Result<Vec<String>> {
    if wanted.is_empty() {
        return Ok(project.flows.iter().map(|f| f.name.clone()).collect());
    }
    let mut set = BTreeSet::new();
    let mut todo: Vec<String> = wanted.to_vec();
    while let Some(name) = todo.pop() {
        let Some(flow) = project.flow(&name) else {
            let names: Vec<&str> = project.flows.iter().map(|f| f.name.as_str()).collect();
            bail!("no flow named `{name}` (flows: {})", names.join(", "));
        };
        if set.insert(name.clone()) {
            for o in &flow.spec.outputs {
                if let Some(target) = o.to.strip_prefix("bridge.") {
                    todo.push(target.to_string());
                }
            }
        }
    }
    Ok(project
        .flows
        .iter()
        .filter(|f| set.contains(&f.name))
        .map(|f| f.name.clone())
        .collect())
}

/// A flow's plan from the project: its typed connectors, as the runtime
/// takes them.
fn plan(project: &Project, name: &str, wasm: &Path) -> anyhow::Result<FlowPlan> {
    let flow = project
        .flow(name)
        .with_context(|| format!("no flow `{name}`"))?;
    let endpoint = |reference: &str| -> anyhow::Result<Endpoint> {
        if let Some(target) = reference.strip_prefix("bridge.") {
            return Ok(Endpoint::Bridge {
                flow: target.to_string(),
            });
        }
        let spec = project
            .connectors
            .get(reference)
            .map(|d| d.connector.clone())
            .with_context(|| format!("flow `{name}`: no connector `{reference}`"))?;
        Ok(Endpoint::Connector {
            reference: reference.to_string(),
            spec,
        })
    };
    let input = endpoint(flow.spec.input.as_str())?;
    let outputs = flow
        .spec
        .outputs
        .iter()
        .map(|o| endpoint(o.to.as_str()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vars: Map<String, Value> = project
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(FlowPlan {
        name: name.to_string(),
        wasm: wasm.to_path_buf(),
        vars,
        input,
        outputs,
    })
}

/// Watches SIGINT and SIGTERM: the first asks for a graceful stop (`tx`
/// becomes true); a second one stops at once — the embedded PostgreSQL is
/// stopped immediately if this process is its last user, and the process
/// exits with 130. Jobs it held are run again by the next run.
fn watch_signals(
    tx: tokio::sync::watch::Sender<bool>,
    emergency: Option<weavster_queue_server::EmergencyStop>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                eprintln!(
                    "stopping: finishing the batches in flight (a second Ctrl-C or SIGTERM stops at once)"
                );
                let _ = tx.send(true);
            } else {
                eprintln!("stopping at once: batches in flight will be run again by the next run");
                if let Some(e) = &emergency {
                    e.stop_now();
                }
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

fn progress_line(metrics: &Metrics) -> String {
    metrics
        .snapshot()
        .iter()
        .map(|(flow, c)| {
            let dead = c.dead_total();
            let mut s = format!("{flow}: {} in → {} out", c.processed, c.out_total());
            if dead > 0 {
                s.push_str(&format!(", {dead} dead"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn print_summary(report: &RunReport, quiet: bool) {
    for (flow, f) in &report.flows {
        let c = &f.counts;
        let mark = if f.error.is_some() || c.dead_total() > 0 {
            "✘"
        } else {
            "✔"
        };
        if quiet && mark == "✔" {
            continue;
        }
        let outs: Vec<String> = c.out.iter().map(|(o, n)| format!("{o} {n}")).collect();
        let dead: Vec<String> = c.dead.iter().map(|(s, n)| format!("{s} {n}")).collect();
        eprintln!(
            "{mark} {flow:<16} read {:>8}  in {:>8}  out {:>8}  filtered {:>6}  unrouted {:>6}  dead {:>6}",
            c.read,
            c.processed,
            c.out_total(),
            c.filtered,
            c.unrouted,
            c.dead_total()
        );
        if !outs.is_empty() && !quiet {
            eprintln!("    → {}", outs.join(", "));
        }
        if !dead.is_empty() {
            eprintln!("    dead letters by stage: {}", dead.join(", "));
        }
        if let Some(e) = &f.error {
            eprintln!("    input failed: {}", crate::mask(e));
        }
    }
    let dead = report.dead_total();
    if dead > 0 {
        eprintln!(
            "{dead} record{} dead-lettered: see `weavster dlq ls`; `weavster dlq replay` sends them through again",
            crate::validate::plural(dead as usize)
        );
    }
    if !quiet {
        eprintln!(
            "run {} {} in {:.2}s",
            report.run_id,
            if report.interrupted {
                "stopped"
            } else {
                "finished"
            },
            report.elapsed_s
        );
    }
}

pub fn run(g: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let (loaded, release) = args.package.load(g, args.release)?;
    let flows = if loaded.is_valid() {
        selected(&loaded.project, &args.flow)?
    } else {
        Vec::new()
    };
    // Compiles what changed (and prints the diagnostics of an invalid project).
    let Some((loaded, compiled)) = compile::compile_loaded(
        loaded,
        &CompileArgs {
            flow: flows,
            force: false,
            debug: false,
            release,
            prebuilt_only: args.package.package.is_some(),
        },
        true,
    )?
    else {
        return Ok(ExitCode::from(1));
    };
    let project = &loaded.project;
    let plans = compiled
        .built
        .iter()
        .map(|b| plan(project, &b.flow, &b.wasm))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = &project.runtime;
    let settings = QueueSettings {
        batch_size: rt.batch_size as usize,
        linger: Duration::from_millis(rt.linger_ms),
        workers: rt.workers as usize,
        max_attempts: rt.max_attempts,
        batch_deadline: Duration::from_millis(rt.batch_timeout_ms),
        max_record_bytes: usize::try_from(rt.max_record_bytes).unwrap_or(usize::MAX),
        heartbeat: weavster_runtime::HEARTBEAT,
    };
    let metrics = Metrics::new(
        plans
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.outputs.iter().map(Endpoint::reference).collect(),
                )
            })
            .collect(),
    );
    let mut host = weavster_host::Host::new()?;
    host.batch_deadline = settings.batch_deadline;
    let connections = (plans.len() * (settings.workers + 2) + 4) as u32;
    let opts = RunOptions {
        once: args.once,
        settings,
        root: project.root.clone(),
        project: project.name.clone(),
        metrics: metrics.clone(),
        metrics_addr: args.metrics_addr.clone(),
        from_start: args.from_start,
    };
    let bar = (!g.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let rt = runtime()?;
    let report = rt.block_on(async {
        let queue = Queue::open(project, connections).await?;
        if !g.quiet {
            eprintln!(
                "running {} flow{} ({} build) on {}{}",
                plans.len(),
                crate::validate::plural(plans.len()),
                if release { "release" } else { "dev" },
                queue.shown,
                if args.once {
                    " (--once)"
                } else {
                    "; Ctrl-C stops"
                }
            );
        }
        let ticker = bar.clone().map(|b| {
            let m = metrics.clone();
            tokio::spawn(async move {
                loop {
                    b.set_message(progress_line(&m));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        watch_signals(stop_tx, queue.emergency())?;
        let failure: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let shutdown = {
            let failure = failure.clone();
            let queue = &queue;
            async move {
                tokio::select! {
                    _ = stop_rx.wait_for(|s| *s) => {}
                    message = queue.failed() => {
                        tracing::error!("{message}");
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(message);
                        }
                    }
                }
            }
        };
        let result = weavster_runtime::run(&queue.db, &host, plans, opts, shutdown).await;
        if let Some(t) = ticker {
            t.abort();
        }
        queue.close().await;
        if let Some(message) = failure.lock().ok().and_then(|mut f| f.take()) {
            anyhow::bail!("{message}");
        }
        anyhow::Ok(result?)
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    if let Some(addr) = &report.metrics_addr {
        tracing::info!("metrics were served on http://{addr}/metrics");
    }
    let target = project.root.join(".weavster/target");
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let results = target.join("run_results.json");
    let mut json = serde_json::to_value(&report)?;
    if let Value::Object(m) = &mut json {
        m.insert("status".into(), Value::String(report.status().into()));
    }
    std::fs::write(&results, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", results.display()))?;
    print_summary(&report, g.quiet);
    Ok(match report.status() {
        "ok" | "stopped" => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
