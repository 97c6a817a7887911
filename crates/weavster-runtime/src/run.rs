//! One `weavster run`: sources, workers, draining, shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::{WorkerBuilder, WorkerBuilderExt};
use serde::Serialize;
use tokio::sync::watch;
use weavster_host::Host;
use weavster_spec::types::Connector;

use crate::connectors::{self, Context, Endpoint, Family, Reading};
use crate::dead_letter::{self, NewDeadLetter};
use crate::metrics::{FlowCounts, Metrics};
use crate::queue::{self, Job};
use crate::sink::Sink;
use crate::source::{Positions, Source, SourceBatch};
use crate::worker::{self, FlowWorker, Halt};
use crate::{Db, DbError, FlowPlan, QueueSettings, RuntimeError};

/// How a run behaves.
pub struct RunOptions {
    /// Read finite inputs to their end, drain the queue, stop.
    pub once: bool,
    pub settings: QueueSettings,
    /// The project dir (file streams are named relative to it).
    pub root: PathBuf,
    /// The project's name.
    pub project: String,
    /// Counters (made by the caller, which may show them while running).
    pub metrics: Arc<Metrics>,
    /// Serve `/health`, `/ready`, `/metrics` here.
    pub metrics_addr: Option<String>,
    /// Forget stored input positions first: read inputs from their start.
    pub from_start: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: i64,
    pub once: bool,
    /// Stopped by a signal rather than by draining.
    pub interrupted: bool,
    pub elapsed_s: f64,
    pub flows: BTreeMap<String, FlowReport>,
    /// The address `/metrics` was served on.
    pub metrics_addr: Option<String>,
    /// Bytes of write-ahead log the queue database wrote during the run
    /// (by every process using it).
    pub queue_wal_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowReport {
    #[serde(flatten)]
    pub counts: FlowCounts,
    /// A source that failed (the run then fails).
    pub error: Option<String>,
}

impl RunReport {
    pub fn dead_total(&self) -> u64 {
        self.flows.values().map(|f| f.counts.dead_total()).sum()
    }

    pub fn failed(&self) -> bool {
        self.flows.values().any(|f| f.error.is_some())
    }

    /// `failed` (an input failed), `dead_letters`, `stopped` (by a signal)
    /// or `ok`.
    pub fn status(&self) -> &'static str {
        if self.failed() {
            "failed"
        } else if self.dead_total() > 0 {
            "dead_letters"
        } else if self.interrupted {
            "stopped"
        } else {
            "ok"
        }
    }
}

/// Most unfinished jobs a source lets its flow have before it waits
/// (backpressure: memory and queue size stay bounded whatever the input).
const MAX_PENDING_JOBS: i64 = 32;

/// How long a stopping run waits for the batches in flight.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Finished jobs are deleted after this long (apalis keeps them forever).
const KEEP_DONE_JOBS: Duration = Duration::from_secs(3600);

/// Runs `plans` until drained (`once`) or until `shutdown` resolves.
pub async fn run(
    db: &Db,
    host: &Host,
    plans: Vec<FlowPlan>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunReport, RuntimeError> {
    let started = Instant::now();
    let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    for p in &plans {
        for o in &p.outputs {
            if let Endpoint::Bridge { flow } = o
                && !names.contains(flow)
            {
                return Err(RuntimeError::Plan {
                    flow: p.name.clone(),
                    message: format!("its bridge output feeds flow `{flow}`, which is not running"),
                });
            }
        }
    }
    let mode = if opts.once { "once" } else { "continuous" };
    let run_id = db.start_run(mode, &names).await?;
    let wal = db.wal_lsn().await.ok();
    if opts.from_start {
        for n in &names {
            db.reset_offsets(n).await?;
        }
    } else {
        warn_rereading(db, &plans, &opts.root).await?;
    }
    let s = &opts.settings;
    let halt = Arc::new(Halt::default());
    let workers = match build_workers(db, host, &plans, s, &opts, run_id, &halt).await {
        Ok(w) => w,
        Err(e) => {
            let summary = serde_json::json!({ "error": e.to_string() });
            let _ = db.finish_run(run_id, "failed", &summary).await;
            return Err(e);
        }
    };

    let (stop_sources, sources_stopped) = watch::channel(false);
    let (stop_workers, workers_stopped) = watch::channel(false);

    // Workers, restarted if their backend fails (a database restart).
    let mut worker_tasks = Vec::new();
    let host_name = crate::host_name();
    for fw in &workers {
        for i in 0..s.workers.max(1) {
            let name = format!(
                "{}@{host_name}:{}:{run_id}:{i}",
                fw.name,
                std::process::id()
            );
            worker_tasks.push(tokio::spawn(supervise(
                name,
                db.clone(),
                fw.clone(),
                s.heartbeat,
                workers_stopped.clone(),
            )));
        }
    }

    let metrics_addr = match &opts.metrics_addr {
        Some(addr) => {
            let mut rx = workers_stopped.clone();
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let local = crate::metrics::serve(addr, opts.metrics.clone(), stop)
                .await
                .map_err(|e| RuntimeError::Metrics {
                    addr: addr.clone(),
                    message: e.to_string(),
                })?;
            Some(local.to_string())
        }
        None => None,
    };

    // Sources.
    if !opts.once {
        for p in &plans {
            if let Endpoint::Connector { spec, .. } = &p.input {
                connectors::family(spec).announce();
            }
        }
    }
    let errors: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut pumps = Vec::new();
    for p in &plans {
        let Endpoint::Connector { spec, .. } = &p.input else {
            continue;
        };
        let reading = connectors::family(spec).reading();
        let pump = Pump {
            flow: p.name.clone(),
            db: db.clone(),
            max_attempts: s.max_attempts,
            metrics: opts.metrics.clone(),
            run_id,
            once: opts.once,
            reading,
        };
        let cx = context(db, s, &opts, &p.name);
        let spec = spec.clone();
        let stop = sources_stopped.clone();
        let errors = errors.clone();
        let halt = halt.clone();
        let once = opts.once;
        pumps.push(Some(tokio::spawn(async move {
            let flow = pump.flow.clone();
            if let Err(e) = pump.run(connectors::family(&spec), &cx, stop).await {
                tracing::error!(flow = %flow, "input failed: {e}");
                if once {
                    if let Ok(mut m) = errors.lock() {
                        m.insert(flow, e);
                    }
                } else {
                    // A continuous run does not go on without an input.
                    halt.stop(&flow, format!("input failed: {e}"));
                }
            }
        })));
    }
    opts.metrics.set_ready(true);

    // Queue depth (for /metrics), and old finished jobs deleted.
    let depth = {
        let db = db.clone();
        let metrics = opts.metrics.clone();
        let names = names.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                if tick.is_multiple_of(60)
                    && let Err(e) = db.vacuum_jobs(&names, KEEP_DONE_JOBS).await
                {
                    tracing::warn!("cannot delete finished jobs: {e}");
                }
                tick += 1;
                for n in &names {
                    if let Ok(d) = db.unfinished_jobs(std::slice::from_ref(n)).await {
                        metrics.queue_depth.get_or_create(&Metrics::flow(n)).set(d);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let mut interrupted = false;
    tokio::pin!(shutdown);
    if opts.once {
        let drained = async {
            for p in pumps.iter_mut() {
                if let Some(h) = p.take() {
                    let _ = h.await;
                }
            }
            // Drained: no unfinished job, twice in a row. Checked often (an
            // indexed count): the wait after the last job is part of every
            // `--once` run's time.
            let mut idle = 0;
            while idle < 2 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                match db.unfinished_jobs(&names).await {
                    Ok(0) => idle += 1,
                    Ok(_) => idle = 0,
                    Err(e) => {
                        idle = 0;
                        tracing::warn!("cannot count unfinished jobs: {e}");
                    }
                }
            }
        };
        tokio::select! {
            () = drained => {}
            () = &mut shutdown => interrupted = true,
            () = halt.notify.notified() => {}
        }
    } else {
        tokio::select! {
            () = &mut shutdown => interrupted = true,
            () = halt.notify.notified() => {}
        }
    }

    // Graceful: stop reading, finish in-flight batches, stop workers.
    let _ = stop_sources.send(true);
    for h in pumps.into_iter().flatten() {
        let _ = h.await;
    }
    let _ = stop_workers.send(true);
    // In-flight batches finish, within a bound: a batch still running
    // after it is abandoned (its job is run again, as after a crash).
    let aborts: Vec<_> = worker_tasks.iter().map(|w| w.abort_handle()).collect();
    if tokio::time::timeout(STOP_GRACE, futures::future::join_all(worker_tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            "batches still running after {}s: abandoned (they will be run again)",
            STOP_GRACE.as_secs()
        );
        for a in aborts {
            a.abort();
        }
    }
    depth.abort();
    opts.metrics.set_ready(false);

    let counts = opts.metrics.snapshot();
    let mut errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    if let Ok(h) = halt.errors.lock() {
        for (flow, e) in h.iter() {
            errors.entry(flow.clone()).or_insert_with(|| e.clone());
        }
    }
    let flows = counts
        .into_iter()
        .map(|(name, counts)| {
            let error = errors.get(&name).cloned();
            (name, FlowReport { counts, error })
        })
        .collect();
    let report = RunReport {
        run_id,
        once: opts.once,
        interrupted,
        elapsed_s: started.elapsed().as_secs_f64(),
        flows,
        metrics_addr,
        queue_wal_bytes: match &wal {
            Some(lsn) => db.wal_since(lsn).await.ok(),
            None => None,
        },
    };
    let summary = serde_json::to_value(&report).unwrap_or_default();
    db.finish_run(run_id, report.status(), &summary).await?;
    Ok(report)
}

/// Says so, loudly, when a flow with a file input has no stored position
/// while its appended outputs already hold data: its inputs are read again
/// from the start (a new or reset queue database), so those outputs get
/// every record again.
async fn warn_rereading(
    db: &Db,
    plans: &[FlowPlan],
    root: &std::path::Path,
) -> Result<(), RuntimeError> {
    for p in plans {
        let file_input = matches!(
            &p.input,
            Endpoint::Connector {
                spec: Connector::File(_),
                ..
            }
        );
        if !file_input || !db.offsets(&p.name).await?.is_empty() {
            continue;
        }
        for o in &p.outputs {
            if let Endpoint::Connector {
                spec: Connector::File(f),
                ..
            } = o
                && f.mode.unwrap_or_default() == crate::WriteMode::Append
                && std::fs::metadata(root.join(&f.path)).is_ok_and(|m| m.len() > 0)
            {
                let shown = &f.path;
                tracing::warn!(
                    flow = %p.name,
                    "no input position is stored for this flow (first run, or the queue database is new, e.g. .weavster/postgres was deleted), \
                     but its output {shown} already holds data: every input record will be read and appended again. \
                     To avoid duplicates, remove or move the output first, or use `mode: overwrite`"
                );
            }
        }
    }
    Ok(())
}

/// What a flow's connectors are built with.
fn context(db: &Db, s: &QueueSettings, opts: &RunOptions, flow: &str) -> Context {
    Context {
        project: opts.project.clone(),
        flow: flow.to_string(),
        root: opts.root.clone(),
        once: opts.once,
        limits: s.limits(),
        linger: s.linger,
        db: db.clone(),
        max_attempts: s.max_attempts,
        lease: s.heartbeat * 3,
        output: String::new(),
    }
}

async fn build_workers(
    db: &Db,
    host: &Host,
    plans: &[FlowPlan],
    s: &QueueSettings,
    opts: &RunOptions,
    run_id: i64,
    halt: &Arc<Halt>,
) -> Result<Vec<Arc<FlowWorker>>, RuntimeError> {
    let mut out = Vec::new();
    for p in plans {
        let module = host.load(&p.wasm)?;
        let mut cx = context(db, s, opts, &p.name);
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        for (i, o) in p.outputs.iter().enumerate() {
            cx.output = format!("{}#{i}", o.reference());
            let sink = connectors::sink(o, &cx)
                .await
                .map_err(|error| RuntimeError::Connector {
                    flow: p.name.clone(),
                    reference: o.reference(),
                    error,
                })?;
            sinks.push(sink);
        }
        // One warm instance made now: a flow whose init fails stops the run
        // before anything is read.
        let first = module.instantiate(&p.vars)?;
        out.push(Arc::new(FlowWorker {
            name: p.name.clone(),
            module,
            vars: p.vars.clone(),
            instances: Mutex::new(vec![first]),
            sinks,
            outputs: p.outputs.iter().map(Endpoint::reference).collect(),
            db: db.clone(),
            max_attempts: s.max_attempts,
            metrics: opts.metrics.clone(),
            run_id,
            root: opts.root.clone(),
            halt: halt.clone(),
        }));
    }
    Ok(out)
}

/// Runs an apalis worker until `stop`, restarting it after a failure (a
/// lost database connection).
async fn supervise(
    name: String,
    db: Db,
    fw: Arc<FlowWorker>,
    heartbeat: Duration,
    stop: watch::Receiver<bool>,
) {
    let mut generation = 0u32;
    // Stopped: told so, or the run is gone.
    let stopped = |rx: &watch::Receiver<bool>| *rx.borrow() || rx.has_changed().is_err();
    loop {
        if stopped(&stop) {
            return;
        }
        let storage = queue::woken_storage(&db, &fw.name, 2, heartbeat);
        let worker = WorkerBuilder::new(format!("{name}:{generation}"))
            .backend(storage)
            .data(fw.clone())
            .concurrency(1)
            .build(worker::handle);
        let mut rx = stop.clone();
        let signal = async move {
            let _ = rx.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        };
        // Our own heartbeat, on a task of its own: apalis beats from the
        // worker's loop, which a long batch can starve, and another worker
        // would then take the batch from this live process.
        let beat = tokio::spawn(keep_alive(
            db.clone(),
            format!("{name}:{generation}"),
            heartbeat,
        ));
        let result = worker.run_until(signal).await;
        beat.abort();
        match result {
            Ok(()) if stopped(&stop) => return,
            Ok(()) => tracing::warn!(worker = %name, "worker stopped; restarting"),
            Err(e) => tracing::warn!(worker = %name, "worker failed: {e}; restarting"),
        }
        generation += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Marks worker `id` alive every heartbeat interval, whatever it is doing.
async fn keep_alive(db: Db, id: String, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sqlx::query("UPDATE apalis.workers SET last_seen = now() WHERE id = $1")
            .bind(&id)
            .execute(db.pool())
            .await
        {
            tracing::debug!(worker = %id, "heartbeat: {e}");
        }
    }
}

/// Moves a source's batches onto its flow's queue.
struct Pump {
    flow: String,
    db: Db,
    max_attempts: u32,
    metrics: Arc<Metrics>,
    run_id: i64,
    once: bool,
    /// How the processes share the input.
    reading: Reading,
}

/// The advisory-lock key of a flow's source.
fn source_lock_key(flow: &str) -> i64 {
    crate::fnv(&format!("weavster-source:{flow}")) as i64
}

impl Pump {
    /// Reads the source into the queue. Only one process reads a flow's
    /// shared source at a time (a PostgreSQL advisory lock held on a connection of
    /// its own): the others wait, running workers only, and take over if
    /// the reader goes away.
    async fn run(
        self,
        family: &dyn Family,
        cx: &Context,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let key = source_lock_key(&self.flow);
        let mut lock = None;
        if self.reading == Reading::Exclusive {
            match self.lock(key, &mut stop).await {
                Some(conn) => lock = Some(conn),
                None => return Ok(()),
            }
        }
        let positions = loop {
            match self.db.offsets(&self.flow).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(flow = %self.flow, "positions: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let result = match family.source(cx, positions).await {
            Ok(source) => self.pump(source, stop).await,
            Err(e) => Err(e.to_string()),
        };
        if let Some(mut conn) = lock {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *conn)
                .await;
        }
        result
    }

    /// Waits for the flow's source lock; `None` if stopped first.
    async fn lock(
        &self,
        key: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        let mut announced = false;
        loop {
            if *stop.borrow() {
                return None;
            }
            match self.db.pool().acquire().await {
                Ok(mut conn) => {
                    let got: Result<(bool,), _> = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await;
                    match got {
                        Ok((true,)) => return Some(conn),
                        Ok((false,)) if !announced => {
                            tracing::info!(flow = %self.flow, "another process reads this input; waiting (workers run meanwhile)");
                            announced = true;
                        }
                        Ok((false,)) => {}
                        Err(e) => tracing::warn!(flow = %self.flow, "source lock: {e}"),
                    }
                }
                Err(e) => tracing::warn!(flow = %self.flow, "source lock: {e}"),
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn pump(
        mut self,
        mut source: Box<dyn Source>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        loop {
            let asked = Instant::now();
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                b = source.next_batch() => b,
            };
            self.metrics.time(&self.flow, "read", asked);
            let batch = match next {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(()),
                Err(e) if self.once || e.is_fatal() => return Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(flow = %self.flow, "input: {e}; retrying in 5 s");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            };
            match self.enqueue(&batch, &mut stop).await {
                Enqueued::Done => source.ack(&batch).await.map_err(|e| e.to_string())?,
                Enqueued::Stopped => return Ok(()),
                Enqueued::Moved => {
                    tracing::warn!(flow = %self.flow, "the input's stored position moved (another process read it); going on from there");
                    let positions = self.positions(&mut stop).await;
                    source.reset(positions).await;
                }
            }
        }
    }

    /// The stored positions (retried until the database answers).
    async fn positions(&self, stop: &mut watch::Receiver<bool>) -> Positions {
        loop {
            match self.db.offsets(&self.flow).await {
                Ok(p) => return p,
                Err(e) => tracing::warn!(flow = %self.flow, "positions: {e}"),
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Positions::new(),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Backpressure, then one transaction: the batch's job, its rejects'
    /// dead letters and the source position it reached (only if the stored
    /// one is still where the batch started). Retried until the database
    /// answers or the run stops: a batch of a shared input not enqueued
    /// then is read again later; standard input's is kept trying for a
    /// while (it cannot be read again).
    async fn enqueue(&mut self, batch: &SourceBatch, stop: &mut watch::Receiver<bool>) -> Enqueued {
        let names = [self.flow.clone()];
        let mut pause = Duration::from_millis(20);
        loop {
            match self.db.unfinished_jobs(&names).await {
                Ok(n) if n < MAX_PENDING_JOBS => break,
                Ok(_) => {}
                Err(e) => tracing::warn!(flow = %self.flow, "queue: {e}"),
            }
            if *stop.borrow() {
                if self.reading != Reading::PerProcess {
                    return Enqueued::Stopped;
                }
                // Standard input cannot be read again: enqueue what is in hand.
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        let dead: Vec<NewDeadLetter> = batch
            .rejects
            .iter()
            .map(|r| {
                let mut d = NewDeadLetter::new(r.record.clone(), r.stage, r.message.clone());
                d.source = r.at.clone();
                d
            })
            .collect();
        let job = match &batch.range {
            Some(r) => Some(Job::of_range(r.clone())),
            None => (!batch.records.is_empty()).then(|| Job::new(&batch.records)),
        };
        let enqueuing = Instant::now();
        let mut pause = Duration::from_millis(100);
        let give_up = tokio::time::Instant::now() + STDIN_GRACE;
        loop {
            match self.commit(job.as_ref(), &dead, batch).await {
                Ok(true) => break,
                Ok(false) => return Enqueued::Moved,
                Err(e) => {
                    let stopping = *stop.borrow();
                    let replayable = self.reading != Reading::PerProcess;
                    if stopping && (replayable || tokio::time::Instant::now() >= give_up) {
                        if !replayable {
                            tracing::error!(flow = %self.flow, "standard input: {} records could not be enqueued before stopping: {e}", batch.len());
                        }
                        return Enqueued::Stopped;
                    }
                    tracing::warn!(flow = %self.flow, "enqueue: {e}; retrying in {pause:?}");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s), if !stopping => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.metrics.time(&self.flow, "enqueue", enqueuing);
        self.metrics.count_dead(&self.flow, &dead);
        self.metrics
            .read
            .get_or_create(&Metrics::flow(&self.flow))
            .inc_by(batch.len() as u64);
        Enqueued::Done
    }

    /// The enqueue transaction; `Ok(false)`: the stored position is not
    /// where the batch started (nothing written).
    async fn commit(
        &self,
        job: Option<&Job>,
        dead: &[NewDeadLetter],
        batch: &SourceBatch,
    ) -> Result<bool, RuntimeError> {
        let mut tx = self.db.pool().begin().await.map_err(DbError::from)?;
        // Durable before the source moves on: a job and its position lost
        // to a crash of the database would leave this run's source past
        // records that are nowhere.
        Db::durable(&mut tx).await?;
        if let Some(p) = &batch.position {
            // A stream with no stored position takes the insert; one with
            // a position moves only from where this batch started (never
            // backwards, never twice: a zombie reader or a replay fails).
            let moved = sqlx::query(
                "INSERT INTO weavster.offsets (flow, stream, position) VALUES ($1, $2, $4)
                 ON CONFLICT (flow, stream) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
                 WHERE weavster.offsets.position = $3",
            )
            .bind(&self.flow)
            .bind(&p.stream)
            .bind(p.start.as_ref().map(sqlx::types::Json))
            .bind(sqlx::types::Json(&p.end))
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
            if moved.rows_affected() == 0 {
                return Ok(false);
            }
        }
        dead_letter::insert(&mut *tx, &self.flow, self.run_id, 1, None, dead).await?;
        let deduped;
        let job = if batch.deliveries.is_empty() {
            job
        } else {
            deduped = deliveries(&mut tx, &self.flow, batch).await?;
            deduped.as_ref()
        };
        let mut bytes = 0;
        if let Some(job) = job {
            bytes = queue::push(&mut *tx, &self.flow, job, self.max_attempts).await?;
        }
        tx.commit().await.map_err(DbError::from)?;
        self.metrics
            .queue_bytes
            .get_or_create(&Metrics::flow(&self.flow))
            .inc_by(bytes as u64);
        Ok(true)
    }
}

/// Records the batch's named deliveries in `weavster.deliveries`; the job of
/// the records of those not stored before (the first of a name in the
/// batch), `None` if none is left.
async fn deliveries(
    tx: &mut sqlx::PgConnection,
    flow: &str,
    batch: &SourceBatch,
) -> Result<Option<Job>, RuntimeError> {
    let names: Vec<&str> = batch.deliveries.iter().map(|(n, _)| n.as_str()).collect();
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO weavster.deliveries (flow, id) SELECT $1, unnest($2::text[])
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(flow)
    .bind(&names)
    .fetch_all(&mut *tx)
    .await
    .map_err(DbError::from)?;
    let mut fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
    let mut keep = vec![true; batch.records.len()];
    for (name, range) in &batch.deliveries {
        // The first of a name takes it; later ones (and stored ones) drop.
        if !fresh.remove(name) {
            for k in keep.iter_mut().take(range.end).skip(range.start) {
                *k = false;
            }
        }
    }
    let records: Vec<&str> = batch
        .records
        .iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r.as_str()))
        .collect();
    Ok((!records.is_empty()).then(|| Job::from_records(&records)))
}

/// How an enqueue ended.
enum Enqueued {
    Done,
    /// The run is stopping; the batch was not enqueued.
    Stopped,
    /// Another process moved the stored position: read again from there.
    Moved,
}

/// How long a stopping run keeps trying to enqueue standard input's last
/// batch (it cannot be read again).
const STDIN_GRACE: Duration = Duration::from_secs(30);
