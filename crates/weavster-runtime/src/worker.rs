//! The job handler: a batch through a warm wasm instance, into the sinks.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use weavster_host::{FlowModule, HostError, Instance};

use crate::metrics::{DeadLabel, Metrics, OutputLabel};
use crate::queue::{self, Job};
use crate::sink::Sink;
use crate::{Db, RuntimeError};

/// Every dead-letter stage: `input` (the source could not read it),
/// `decode`/`transform`/`routing` (the flow rejected it), `trap`/`deadline`
/// (the guest crashed or ran too long on it), `output` (a sink refused it),
/// `delivery` (its batch failed every attempt).
pub const STAGES: &[&str] = &[
    "input",
    "decode",
    "transform",
    "routing",
    "trap",
    "deadline",
    "output",
    "delivery",
];

/// A record for the dead-letter table.
#[derive(Debug, Clone)]
pub(crate) struct Dead {
    pub record: String,
    pub stage: String,
    pub message: String,
    pub path: Option<String>,
}

/// A flow's shared worker state.
pub(crate) struct FlowWorker {
    pub name: String,
    pub module: FlowModule,
    pub vars: Map<String, Value>,
    /// Warm instances not in use (one per concurrent batch).
    pub instances: Mutex<Vec<Instance>>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub outputs: Vec<String>,
    pub db: Db,
    pub max_attempts: u32,
    pub metrics: Arc<Metrics>,
    pub run_id: i64,
}

/// What one batch produced.
#[derive(Default)]
struct Executed {
    /// Record texts by output.
    routed: Vec<Vec<String>>,
    dead: Vec<Dead>,
    filtered: u64,
    unrouted: u64,
    traps: u64,
}

#[derive(Deserialize)]
struct OutLine<'a> {
    i: usize,
    #[serde(default)]
    o: Option<Vec<u32>>,
    #[serde(borrow, default)]
    r: Option<&'a RawValue>,
    #[serde(default)]
    f: Option<u8>,
    #[serde(default)]
    e: Option<OutError>,
}

#[derive(Deserialize)]
struct OutError {
    stage: String,
    message: String,
    #[serde(default)]
    path: Option<String>,
}

fn encode_batch(now: &str, seed: u64, records: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 64);
    out.extend_from_slice(format!("{{\"now\":\"{now}\",\"seed\":{seed}}}\n").as_bytes());
    for r in records {
        out.extend_from_slice(r.as_bytes());
        out.push(b'\n');
    }
    out
}

impl FlowWorker {
    /// Runs encoded `batch` on a warm instance; a trapped instance is dropped.
    fn run_guest(&self, batch: &[u8]) -> Result<Vec<u8>, HostError> {
        let pooled = self.instances.lock().ok().and_then(|mut v| v.pop());
        let mut instance = match pooled {
            Some(i) => i,
            None => self.module.instantiate(&self.vars)?,
        };
        let result = instance.process(batch);
        if !result.as_ref().is_err_and(HostError::ends_instance)
            && let Ok(mut v) = self.instances.lock()
        {
            v.push(instance);
        }
        result
    }

    /// Decodes the guest's outcome lines into `ex`; `index` maps an outcome's
    /// record index to the batch's.
    fn collect(
        &self,
        out: &[u8],
        records: &[&str],
        index: impl Fn(usize) -> usize,
        ex: &mut Executed,
    ) -> Result<(), String> {
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let l: OutLine =
                serde_json::from_slice(line).map_err(|e| format!("bad outcome line: {e}"))?;
            let i = index(l.i);
            if let Some(r) = l.r {
                let routes = l.o.unwrap_or_default();
                if routes.is_empty() {
                    ex.unrouted += 1;
                }
                for o in routes {
                    if let Some(list) = ex.routed.get_mut(o as usize) {
                        list.push(r.get().to_string());
                    }
                }
            } else if l.f.is_some() {
                ex.filtered += 1;
            } else if let Some(e) = l.e {
                ex.dead.push(Dead {
                    record: records.get(i).copied().unwrap_or_default().to_string(),
                    stage: e.stage,
                    message: e.message,
                    path: e.path,
                });
            } else {
                return Err("outcome line without an outcome".into());
            }
        }
        Ok(())
    }

    /// Runs the batch. After a trap or deadline the records are retried one
    /// by one on fresh instances, so only the records that trap again are
    /// dead-lettered. `Err`: the batch cannot run at all (retried).
    fn execute(&self, records: &[&str], seed: u64, now: &str) -> Result<Executed, String> {
        let mut ex = Executed {
            routed: vec![Vec::new(); self.outputs.len()],
            ..Executed::default()
        };
        match self.run_guest(&encode_batch(now, seed, records)) {
            Ok(out) => self.collect(&out, records, |i| i, &mut ex)?,
            Err(e) if e.ends_instance() => {
                ex.traps += 1;
                tracing::warn!(flow = %self.name, "{e}; retrying the batch record by record");
                for (k, rec) in records.iter().enumerate() {
                    let one = [*rec];
                    match self.run_guest(&encode_batch(now, seed, &one)) {
                        Ok(out) => self.collect(&out, records, |_| k, &mut ex)?,
                        Err(e) if e.ends_instance() => {
                            ex.traps += 1;
                            let stage = if matches!(e, HostError::Deadline(_)) {
                                "deadline"
                            } else {
                                "trap"
                            };
                            ex.dead.push(Dead {
                                record: rec.to_string(),
                                stage: stage.into(),
                                message: e.to_string(),
                                path: None,
                            });
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        }
        Ok(ex)
    }

    /// One attempt at a job: guest, sinks, dead letters, counters.
    async fn process(&self, job: &Job, seed: u64) -> Result<(), String> {
        let started = Instant::now();
        let records = job.lines();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut ex = tokio::task::block_in_place(|| self.execute(&records, seed, &now))?;
        let mut written = vec![0u64; self.outputs.len()];
        for (o, list) in ex.routed.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            let sink = self
                .sinks
                .get(o)
                .ok_or_else(|| format!("no sink for output {o}"))?;
            let refused = sink.write(&refs).await.map_err(|e| e.to_string())?;
            written[o] = (list.len() - refused.len()) as u64;
            for (i, message) in refused {
                ex.dead.push(Dead {
                    record: refs.get(i).copied().unwrap_or_default().to_string(),
                    stage: "output".into(),
                    message: format!("{}: {message}", self.outputs[o]),
                    path: None,
                });
            }
        }
        insert_dead(&self.db, &self.name, self.run_id, 1, &ex.dead)
            .await
            .map_err(|e| e.to_string())?;
        // Counted once the job succeeded (a retried attempt counts once).
        let m = &self.metrics;
        let fl = Metrics::flow(&self.name);
        m.processed.get_or_create(&fl).inc_by(records.len() as u64);
        m.filtered.get_or_create(&fl).inc_by(ex.filtered);
        m.unrouted.get_or_create(&fl).inc_by(ex.unrouted);
        m.traps.get_or_create(&fl).inc_by(ex.traps);
        m.batches.get_or_create(&fl).inc();
        for (o, n) in written.iter().enumerate() {
            m.out
                .get_or_create(&OutputLabel {
                    flow: self.name.clone(),
                    output: self.outputs[o].clone(),
                })
                .inc_by(*n);
        }
        count_dead(m, &self.name, &ex.dead);
        m.latency
            .get_or_create(&fl)
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

pub(crate) fn count_dead(m: &Metrics, flow: &str, dead: &[Dead]) {
    for d in dead {
        m.dead
            .get_or_create(&DeadLabel {
                flow: flow.to_string(),
                stage: d.stage.clone(),
            })
            .inc();
    }
}

/// Writes dead letters in one statement.
pub(crate) async fn insert_dead(
    db: &Db,
    flow: &str,
    run_id: i64,
    attempts: i32,
    dead: &[Dead],
) -> Result<(), RuntimeError> {
    if dead.is_empty() {
        return Ok(());
    }
    let records: Vec<&str> = dead.iter().map(|d| d.record.as_str()).collect();
    let stages: Vec<&str> = dead.iter().map(|d| d.stage.as_str()).collect();
    let messages: Vec<&str> = dead.iter().map(|d| d.message.as_str()).collect();
    let paths: Vec<Option<&str>> = dead.iter().map(|d| d.path.as_deref()).collect();
    sqlx::query(
        "INSERT INTO weavster.dead_letters (flow, record, stage, message, path, attempts, run_id)
         SELECT $1, r, s, m, p, $6, $7
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS t(r, s, m, p)",
    )
    .bind(flow)
    .bind(&records)
    .bind(&stages)
    .bind(&messages)
    .bind(&paths)
    .bind(attempts)
    .bind(run_id)
    .execute(db.pool())
    .await
    .map_err(|e| RuntimeError::Db(e.into()))?;
    Ok(())
}

/// The apalis handler of every flow queue.
pub(crate) async fn handle(
    job: Job,
    attempt: Attempt,
    task_id: TaskId,
    worker: Data<Arc<FlowWorker>>,
) -> Result<(), BoxDynError> {
    let id = task_id.to_string();
    let w: &FlowWorker = &worker;
    let n = attempt.current() as u32;
    match w.process(&job, crate::fnv(&id)).await {
        Ok(()) => Ok(()),
        Err(message) => {
            let fl = Metrics::flow(&w.name);
            w.metrics.failed_batches.get_or_create(&fl).inc();
            if n >= w.max_attempts {
                tracing::error!(flow = %w.name, job = %id, attempt = n, "{message}; dead-lettering the batch");
                let dead: Vec<Dead> = job
                    .lines()
                    .into_iter()
                    .map(|r| Dead {
                        record: r.to_string(),
                        stage: "delivery".into(),
                        message: format!("failed {n} times: {message}"),
                        path: None,
                    })
                    .collect();
                insert_dead(&w.db, &w.name, w.run_id, n as i32, &dead).await?;
                count_dead(&w.metrics, &w.name, &dead);
                Ok(())
            } else {
                let wait = queue::backoff(n);
                tracing::warn!(flow = %w.name, job = %id, attempt = n, "{message}; retrying in {wait:?}");
                queue::delay(&w.db, &id, wait).await?;
                Err(message.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_encoding() {
        let b = encode_batch("2000-01-01T00:00:00Z", 7, &["{\"a\":1}", "{}"]);
        assert_eq!(
            String::from_utf8_lossy(&b),
            "{\"now\":\"2000-01-01T00:00:00Z\",\"seed\":7}\n{\"a\":1}\n{}\n"
        );
    }

    #[test]
    fn outcome_lines_parse_borrowed() {
        let l: OutLine = serde_json::from_str(r#"{"i":3,"o":[0,2],"r":{"a": 1}}"#).expect("parse");
        assert_eq!(
            (l.i, l.o, l.r.map(RawValue::get)),
            (3, Some(vec![0, 2]), Some("{\"a\": 1}"))
        );
    }
}
