//! The job handler: a batch through a warm wasm instance, into the sinks.
//!
//! One attempt at a job: run the batch in the guest; write its dead letters
//! (keyed by job and item, so a retry never writes them twice); then each
//! output not already written by an earlier attempt of the job, each write
//! followed by a mark (`weavster.job_outputs`) together with the records
//! that output refused. A failure anywhere before an output's write leaves
//! that output unwritten; a retry skips the outputs already marked.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use weavster_host::{FlowModule, HostError, Instance};

use crate::dead_letter::{self, NewDeadLetter, Stage};
use crate::metrics::{Metrics, OutputLabel};
use crate::queue::{self, FileRange, Job, RangeError, range_lines};
use crate::sink::{Failed, Sink};
use crate::{Db, DbError};

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
    /// The project dir (file ranges are read from it).
    pub root: std::path::PathBuf,
    /// Where a flow that must stop says why (the run then stops).
    pub halt: Arc<Halt>,
}

/// Flows that must stop (a sink's configuration cannot work), and a wake-up
/// for the run.
#[derive(Default)]
pub(crate) struct Halt {
    pub errors: Mutex<std::collections::BTreeMap<String, String>>,
    pub notify: tokio::sync::Notify,
}

impl Halt {
    pub fn stop(&self, flow: &str, message: String) {
        if let Ok(mut e) = self.errors.lock() {
            e.entry(flow.to_string()).or_insert(message);
        }
        self.notify.notify_one();
    }
}

/// What one batch produced.
#[derive(Default)]
struct Executed {
    /// The guest's answers (one per guest call), which routed records are
    /// spans of: sinks write from them, no record is copied.
    answers: Vec<String>,
    /// Records by output: their item (index in the job) and span.
    routed: Vec<Vec<(usize, Span)>>,
    dead: Vec<NewDeadLetter>,
    filtered: u64,
    unrouted: u64,
    traps: u64,
}

/// Where a routed record is: `answers[answer][start..end]`.
#[derive(Debug, Clone, Copy)]
struct Span {
    answer: usize,
    start: usize,
    end: usize,
}

impl Executed {
    fn text(&self, s: Span) -> &str {
        &self.answers[s.answer][s.start..s.end]
    }
}

/// A routed record's line as the guest writes it,
/// `{"i":N,"o":[a,b,…],"r":{…}}`: its index, routes and the record's span
/// in `line`. `None` for any other line (read by serde instead). The
/// record's text is the guest's serialization of validated input, so only
/// its framing is checked here (an object, on one line).
fn routed_line(line: &str) -> Option<(usize, Vec<u32>, std::ops::Range<usize>)> {
    let rest = line.strip_prefix("{\"i\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let i: usize = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(",\"o\":[")?;
    let close = rest.find(']')?;
    let mut routes = Vec::new();
    for r in rest[..close].split(',').filter(|r| !r.is_empty()) {
        routes.push(r.parse().ok()?);
    }
    let rest = rest[close + 1..].strip_prefix(",\"r\":")?;
    let record = rest.strip_suffix('}')?;
    if !(record.starts_with('{') && record.ends_with('}')) {
        return None;
    }
    let start = line.len() - rest.len();
    Some((i, routes, start..start + record.len()))
}

/// One line of the guest's answer (ABI v1): item `i`, then routes and a
/// record, a filter mark, or a record error.
#[derive(Deserialize)]
struct Outcome<'a> {
    i: usize,
    #[serde(default)]
    o: Option<Vec<u32>>,
    #[serde(borrow, default)]
    r: Option<&'a RawValue>,
    #[serde(default)]
    f: Option<u8>,
    #[serde(default)]
    e: Option<OutcomeError>,
}

#[derive(Deserialize)]
struct OutcomeError {
    stage: String,
    message: String,
    #[serde(default)]
    path: Option<String>,
}

/// Why an attempt failed.
enum Failure {
    /// Retried with backoff (an output or the database failed), or no
    /// sooner than the remote asked.
    Retry(String),
    Later(String, Duration),
    /// The output is unreachable: retried with backoff without using up
    /// an attempt ([`Failed::Unavailable`]).
    Unavailable(String),
    /// The guest answered something invalid: its records are dead-lettered
    /// as `internal`, never retried (a retry would answer the same).
    Internal(String),
    /// An output's configuration cannot work: the run stops; the job stays
    /// queued without using up an attempt.
    Stop(String),
    /// The job's file range changed since it was read: dead-lettered,
    /// never retried.
    Changed(RangeError),
}

/// The batch the guest reads: the guest's own encoding of records that
/// are already JSON text.
fn encode_batch(now: &str, seed: u64, records: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 64);
    weavster_guest::abi::encode_batch_raw(now, seed, records.iter().copied(), &mut out);
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

    /// Decodes the guest's outcome lines into `ex` (keeping the answer);
    /// `index` maps an outcome's record index to the batch's. `Err`: an
    /// invalid answer.
    fn collect(
        &self,
        out: Vec<u8>,
        records: &[&str],
        index: impl Fn(usize) -> usize,
        ex: &mut Executed,
    ) -> Result<(), String> {
        let out = String::from_utf8(out).map_err(|e| format!("answer is not UTF-8: {e}"))?;
        let answer = ex.answers.len();
        let mut at = 0;
        for line in out.split('\n') {
            let line_start = at;
            at += line.len() + 1;
            if line.is_empty() {
                continue;
            }
            // The guest's own framing, read without a parse; any other line
            // (filtered, errors, or routed written otherwise) through serde.
            let (i, routed) = match routed_line(line) {
                Some((i, routes, span)) => (i, Some((routes, span))),
                None => {
                    let l: Outcome =
                        serde_json::from_str(line).map_err(|e| format!("bad outcome line: {e}"))?;
                    let Some(r) = l.r else {
                        self.outcome(l, records, &index, ex)?;
                        continue;
                    };
                    let text = r.get();
                    if !text.starts_with('{') {
                        return Err(format!("outcome record is not a JSON object: {text}"));
                    }
                    // `text` borrows from `line`: its offset there.
                    let start = text.as_ptr() as usize - line.as_ptr() as usize;
                    let routed = (l.o.unwrap_or_default(), start..start + text.len());
                    (l.i, Some(routed))
                }
            };
            let i = index(i);
            if i >= records.len() {
                return Err(format!(
                    "outcome for record {i} of a batch of {}",
                    records.len()
                ));
            }
            if let Some((routes, span)) = routed {
                if routes.is_empty() {
                    ex.unrouted += 1;
                }
                let span = Span {
                    answer,
                    start: line_start + span.start,
                    end: line_start + span.end,
                };
                for o in routes {
                    let list = ex
                        .routed
                        .get_mut(o as usize)
                        .ok_or_else(|| format!("outcome routed to output {o}, which is not one"))?;
                    list.push((i, span));
                }
            }
        }
        ex.answers.push(out);
        Ok(())
    }

    /// A filtered record or a record error.
    fn outcome(
        &self,
        l: Outcome<'_>,
        records: &[&str],
        index: impl Fn(usize) -> usize,
        ex: &mut Executed,
    ) -> Result<(), String> {
        let i = index(l.i);
        if i >= records.len() {
            return Err(format!(
                "outcome for record {i} of a batch of {}",
                records.len()
            ));
        }
        if l.f.is_some() {
            ex.filtered += 1;
        } else if let Some(e) = l.e {
            let mut d = NewDeadLetter::new(
                records[i].as_bytes(),
                Stage::from_guest(&e.stage),
                e.message,
            )
            .item(i);
            d.path = e.path;
            ex.dead.push(d);
        } else {
            return Err("outcome line without an outcome".into());
        }
        Ok(())
    }

    /// Runs the batch. After a trap or deadline the records are retried one
    /// by one on fresh instances, so only the records that trap again are
    /// dead-lettered.
    fn execute(&self, records: &[&str], seed: u64, now: &str) -> Result<Executed, Failure> {
        let mut ex = Executed {
            routed: vec![Vec::new(); self.outputs.len()],
            ..Executed::default()
        };
        match self.run_guest(&encode_batch(now, seed, records)) {
            Ok(out) => self
                .collect(out, records, |i| i, &mut ex)
                .map_err(Failure::Internal)?,
            Err(e) if e.ends_instance() => {
                ex.traps += 1;
                tracing::warn!(flow = %self.name, "{e}; retrying the batch record by record");
                for (k, rec) in records.iter().enumerate() {
                    let one = [*rec];
                    match self.run_guest(&encode_batch(now, seed, &one)) {
                        Ok(out) => self
                            .collect(out, records, |_| k, &mut ex)
                            .map_err(Failure::Internal)?,
                        Err(e) if e.ends_instance() => {
                            ex.traps += 1;
                            let stage = if matches!(e, HostError::Deadline(_)) {
                                Stage::Deadline
                            } else {
                                Stage::Trap
                            };
                            ex.dead.push(
                                NewDeadLetter::new(rec.as_bytes(), stage, e.to_string()).item(k),
                            );
                        }
                        Err(e) => return Err(Failure::Retry(e.to_string())),
                    }
                }
            }
            Err(e) => return Err(Failure::Retry(e.to_string())),
        }
        Ok(ex)
    }

    /// The outputs an earlier attempt of `job` already wrote.
    async fn written_outputs(&self, job: &str) -> Result<BTreeSet<usize>, DbError> {
        let rows: Vec<(i32,)> =
            sqlx::query_as("SELECT output FROM weavster.job_outputs WHERE job_id = $1")
                .bind(job)
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows.into_iter().map(|(o,)| o as usize).collect())
    }

    /// Marks output `o` of `job` written, with the records it refused, in
    /// one transaction.
    async fn mark_written(
        &self,
        job: &str,
        o: usize,
        refused: &[NewDeadLetter],
    ) -> Result<(), DbError> {
        let mut tx = self.db.pool().begin().await?;
        dead_letter::insert(&mut *tx, &self.name, self.run_id, 1, Some(job), refused).await?;
        sqlx::query(
            "INSERT INTO weavster.job_outputs (job_id, output) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(job)
        .bind(o as i32)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The text of a range job's records, read and checked (`None` for a
    /// payload job).
    fn load(&self, job: &Job) -> Result<Option<String>, RangeError> {
        let Some(r) = &job.range else {
            return Ok(None);
        };
        let t = Instant::now();
        let text = tokio::task::block_in_place(|| r.read(&self.root))?;
        self.metrics.time(&self.name, "load", t);
        Ok(Some(text))
    }

    /// One attempt at a job: guest, dead letters, sinks, counters.
    async fn process(&self, job: &Job, id: &str, attempt: u32, seed: u64) -> Result<(), Failure> {
        let started = Instant::now();
        let text = self.load(job).map_err(|e| match e {
            RangeError::Unreadable { .. } => Failure::Retry(e.to_string()),
            RangeError::Changed { .. } => Failure::Changed(e),
        })?;
        let records: Vec<&str> = match (&text, &job.range) {
            (Some(t), Some(r)) => range_lines(t, r.start == 0).collect(),
            _ => job.lines(),
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let m = &self.metrics;
        let t = Instant::now();
        let ex = tokio::task::block_in_place(|| self.execute(&records, seed, &now))?;
        m.time(&self.name, "guest", t);
        let retry = |e: DbError| Failure::Retry(e.to_string());
        let t = Instant::now();
        // Dead letters before any output: a failure here has written nothing.
        dead_letter::insert(
            self.db.pool(),
            &self.name,
            self.run_id,
            1,
            Some(id),
            &ex.dead,
        )
        .await
        .map_err(retry)?;
        let done = if attempt > 1 {
            self.written_outputs(id).await.map_err(retry)?
        } else {
            BTreeSet::new()
        };
        m.time(&self.name, "mark", t);
        let mut refused_total = Vec::new();
        for (o, list) in ex.routed.iter().enumerate() {
            if list.is_empty() || done.contains(&o) {
                continue;
            }
            let refs: Vec<&str> = list.iter().map(|(_, s)| ex.text(*s)).collect();
            let sink = self
                .sinks
                .get(o)
                .ok_or_else(|| Failure::Internal(format!("no sink for output {o}")))?;
            let t = Instant::now();
            let refused = sink.write(id, &refs).await.map_err(|e| match e.failed() {
                Failed::Retry => Failure::Retry(e.to_string()),
                Failed::Later(d) => Failure::Later(e.to_string(), d),
                Failed::Unavailable => Failure::Unavailable(e.to_string()),
                Failed::Stop => Failure::Stop(format!("output {}: {e}", self.outputs[o])),
            })?;
            m.time(&self.name, "write", t);
            let refused: Vec<NewDeadLetter> = refused
                .into_iter()
                .filter_map(|(k, message)| {
                    let (item, span) = list.get(k)?;
                    let mut d = NewDeadLetter::new(
                        ex.text(*span).as_bytes(),
                        Stage::Output,
                        format!("{}: {message}", self.outputs[o]),
                    )
                    .item(*item);
                    d.output = Some(self.outputs[o].clone());
                    Some(d)
                })
                .collect();
            m.out
                .get_or_create(&OutputLabel {
                    flow: self.name.clone(),
                    output: self.outputs[o].clone(),
                })
                .inc_by((list.len() - refused.len()) as u64);
            let t = Instant::now();
            self.mark_written(id, o, &refused).await.map_err(retry)?;
            m.time(&self.name, "mark", t);
            refused_total.extend(refused);
        }
        // Counted once the job succeeded (a retried attempt counts once).
        let fl = Metrics::flow(&self.name);
        m.processed.get_or_create(&fl).inc_by(records.len() as u64);
        m.filtered.get_or_create(&fl).inc_by(ex.filtered);
        m.unrouted.get_or_create(&fl).inc_by(ex.unrouted);
        m.traps.get_or_create(&fl).inc_by(ex.traps);
        m.batches.get_or_create(&fl).inc();
        m.count_dead(&self.name, &ex.dead);
        m.count_dead(&self.name, &refused_total);
        m.latency
            .get_or_create(&fl)
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Dead-letters the records of `job` that have no dead letter yet (its
    /// last attempt failed, or the guest answered something invalid).
    async fn dead_letter_rest(
        &self,
        job: &Job,
        id: &str,
        attempts: u32,
        stage: Stage,
        message: &str,
    ) -> Result<(), DbError> {
        let text = match self.load(job) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .dead_letter_range(job, id, attempts, stage, message, e)
                    .await;
            }
        };
        let lines: Vec<&str> = match (&text, &job.range) {
            (Some(t), Some(r)) => range_lines(t, r.start == 0).collect(),
            _ => job.lines(),
        };
        let have: Vec<(i32,)> = sqlx::query_as(
            "SELECT DISTINCT item FROM weavster.dead_letters WHERE job_id = $1 AND item IS NOT NULL",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        let have: BTreeSet<usize> = have.into_iter().map(|(i,)| i as usize).collect();
        let dead: Vec<NewDeadLetter> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !have.contains(i))
            .map(|(i, r)| NewDeadLetter::new(r.as_bytes(), stage, message).item(i))
            .collect();
        self.insert_dead(id, attempts, &dead).await
    }

    /// Inserts dead letters of job `id` and counts them.
    async fn insert_dead(
        &self,
        id: &str,
        attempts: u32,
        dead: &[NewDeadLetter],
    ) -> Result<(), DbError> {
        dead_letter::insert(
            self.db.pool(),
            &self.name,
            self.run_id,
            attempts as i32,
            Some(id),
            dead,
        )
        .await?;
        self.metrics.count_dead(&self.name, dead);
        Ok(())
    }

    /// The one dead letter of a range job whose range cannot be read any
    /// more: it holds what the range holds now, and says where it was.
    async fn dead_letter_range(
        &self,
        job: &Job,
        id: &str,
        attempts: u32,
        stage: Stage,
        message: &str,
        e: RangeError,
    ) -> Result<(), DbError> {
        let (found, why) = match &e {
            RangeError::Changed { found, .. } => (found.clone(), e.to_string()),
            RangeError::Unreadable { .. } => (Vec::new(), e.to_string()),
        };
        let records = job.range.as_ref().map_or(0, |r| r.records);
        // Item 0: keyed like any other, so a re-run job (after a crash)
        // does not write it twice.
        let mut d = NewDeadLetter::new(
            found,
            stage,
            format!("{message}: the {records} records of this batch are lost to this run: {why}"),
        )
        .item(0);
        d.source = job.range.as_ref().map(FileRange::at);
        let dead = [d];
        self.insert_dead(id, attempts, &dead).await
    }
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
    let message = match w.process(&job, &id, n, crate::fnv(&id)).await {
        Ok(()) => return Ok(()),
        Err(Failure::Internal(e)) => {
            let message = format!(
                "bug in Weavster: the compiled module of flow `{}` gave an invalid answer ({e}); \
                 please report it with the flow's file, this record, and the generated Rust \
                 (`weavster compile --debug --flow {}` writes it)",
                w.name, w.name
            );
            tracing::error!(flow = %w.name, job = %id, "{message}");
            w.dead_letter_rest(&job, &id, n, Stage::Internal, &message)
                .await?;
            return Ok(());
        }
        Err(Failure::Changed(e)) => {
            tracing::error!(flow = %w.name, job = %id, "{e}");
            // The range was just read and refused: not read again.
            w.dead_letter_range(&job, &id, n, Stage::Input, "input changed", e)
                .await?;
            return Ok(());
        }
        Err(Failure::Unavailable(message)) => {
            // An outage of any length ends in delivery (or a stop), never
            // in dead letters: this attempt does not count.
            let wait = queue::backoff(n);
            let fl = Metrics::flow(&w.name);
            w.metrics.failed_batches.get_or_create(&fl).inc();
            tracing::warn!(flow = %w.name, job = %id, attempt = n, "{message}; the output is unavailable: retrying in {wait:?} (an outage never uses up attempts)");
            queue::spare_attempt(&w.db, &id, wait).await?;
            wake_after(w, &id, wait);
            return Err(message.into());
        }
        Err(Failure::Retry(message)) => (message, None),
        Err(Failure::Later(message, after)) => (message, Some(after)),
        Err(Failure::Stop(message)) => {
            tracing::error!(flow = %w.name, job = %id, "{message}; stopping");
            w.halt.stop(&w.name, message.clone());
            // This attempt does not count: the job waits for a fixed flow.
            queue::spare_attempt(&w.db, &id, queue::backoff(n)).await?;
            return Err(message.into());
        }
    };
    let (message, after) = message;
    let fl = Metrics::flow(&w.name);
    w.metrics.failed_batches.get_or_create(&fl).inc();
    // The job's own budget: a stopped flow gave it attempts back.
    let budget = queue::max_attempts(&w.db, &id)
        .await
        .unwrap_or(w.max_attempts);
    if n >= budget {
        tracing::error!(flow = %w.name, job = %id, attempt = n, "{message}; dead-lettering the batch");
        w.dead_letter_rest(
            &job,
            &id,
            n,
            Stage::Delivery,
            &format!("failed {n} times: {message}"),
        )
        .await?;
        Ok(())
    } else {
        // The remote's wait, if longer than the backoff (an hour at most).
        let wait = after.map_or(queue::backoff(n), |a| {
            a.min(Duration::from_secs(3600)).max(queue::backoff(n))
        });
        tracing::warn!(flow = %w.name, job = %id, attempt = n, "{message}; retrying in {wait:?}");
        queue::delay(&w.db, &id, wait).await?;
        wake_after(w, &id, wait);
        Err(message.into())
    }
}

/// Wakes a worker of `w`'s flow when job `id`'s wait is over (else it
/// waits for a poll).
fn wake_after(w: &FlowWorker, id: &str, wait: Duration) {
    let (db, flow, id) = (w.db.clone(), w.name.clone(), id.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = queue::notify(&db, &flow, &id).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_encoding() {
        let b = encode_batch("2000-01-01T00:00:00Z", 7, &["{\"a\":1}", "{}"]);
        assert_eq!(
            String::from_utf8_lossy(&b),
            "{\"now\":\"2000-01-01T00:00:00Z\",\"seed\":7}\n{\"a\":1}\n{}"
        );
    }

    proptest::proptest! {
        /// The fast read of a routed line agrees with serde on every line
        /// the guest writes, and declines (leaving it to serde) the rest.
        #[test]
        fn routed_lines_read_as_serde_reads_them(
            i in 0usize..100_000,
            routes in proptest::collection::vec(0u32..40, 0..4),
            fields in proptest::collection::btree_map(r#"[a-z"\\}\]]{0,4}"#, r#"[ -~é\n]{0,6}"#, 0..4),
        ) {
            let record = serde_json::to_string(&fields).expect("record");
            let list: Vec<String> = routes.iter().map(u32::to_string).collect();
            let line = format!("{{\"i\":{i},\"o\":[{}],\"r\":{record}}}", list.join(","));
            let (fi, fo, span) = routed_line(&line).expect("a routed line");
            let l: Outcome = serde_json::from_str(&line).expect("serde");
            proptest::prop_assert_eq!((fi, fo), (l.i, l.o.unwrap_or_default()));
            proptest::prop_assert_eq!(&line[span], l.r.map(RawValue::get).unwrap_or_default());
            for other in [format!("{{\"i\":{i},\"f\":1}}"), format!("{{\"i\":{i},\"o\":[],\"r\":[1]}}")] {
                proptest::prop_assert!(routed_line(&other).is_none());
            }
        }
    }

    #[test]
    fn outcome_lines_parse_borrowed() {
        let l: Outcome = serde_json::from_str(r#"{"i":3,"o":[0,2],"r":{"a": 1}}"#).expect("parse");
        assert_eq!(
            (l.i, l.o, l.r.map(RawValue::get)),
            (3, Some(vec![0, 2]), Some("{\"a\": 1}"))
        );
    }
}
