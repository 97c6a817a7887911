//! Counters of a run: Prometheus families (served on `/metrics`) that the
//! CLI also reads for its progress line and summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::dead_letter::{NewDeadLetter, Stage};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabel {
    pub flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    pub flow: String,
    pub output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLabel {
    pub flow: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub flow: String,
    pub stage: &'static str,
}

/// Where a run spends its time (`weavster_stage_seconds_total`): each
/// stage's seconds summed over the tasks doing it (two workers busy for a
/// second count two). What the queue itself takes (apalis fetching and
/// acknowledging jobs) is the rest of the workers' time.
///
/// - `read`: the source reading its input and splitting it into records;
/// - `enqueue`: the enqueue transaction (job, rejects, position;
///   synchronous commit), backpressure waits excluded;
/// - `load`: a worker reading a job's records back (a file range, checked);
/// - `guest`: encoding the batch for the guest, running it, reading its
///   answer;
/// - `write`: sinks writing;
/// - `mark`: dead letters and the marks of written outputs.
pub const STAGES: [&str; 6] = ["read", "enqueue", "load", "guest", "write", "mark"];

fn batch_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every counter of a run, by flow.
pub struct Metrics {
    registry: Registry,
    pub(crate) read: Family<FlowLabel, Counter>,
    pub(crate) processed: Family<FlowLabel, Counter>,
    pub(crate) out: Family<OutputLabel, Counter>,
    pub(crate) filtered: Family<FlowLabel, Counter>,
    pub(crate) unrouted: Family<FlowLabel, Counter>,
    pub(crate) dead: Family<DeadLabel, Counter>,
    pub(crate) batches: Family<FlowLabel, Counter>,
    pub(crate) failed_batches: Family<FlowLabel, Counter>,
    pub(crate) traps: Family<FlowLabel, Counter>,
    pub(crate) latency: Family<FlowLabel, Histogram, fn() -> Histogram>,
    pub(crate) queue_depth: Family<FlowLabel, Gauge>,
    pub(crate) stage_seconds: Family<StageLabel, Counter<f64, AtomicU64>>,
    pub(crate) queue_bytes: Family<FlowLabel, Counter>,
    ready: AtomicBool,
    flows: Vec<(String, Vec<String>)>,
}

/// A flow's counts, for summaries.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FlowCounts {
    /// Records read by the flow's source.
    pub read: u64,
    /// Records run through the flow (source and bridges, retries included).
    pub processed: u64,
    /// Records written, by output.
    pub out: BTreeMap<String, u64>,
    pub filtered: u64,
    pub unrouted: u64,
    /// Records dead-lettered, by stage.
    pub dead: BTreeMap<String, u64>,
    pub batches: u64,
    pub failed_batches: u64,
    pub traps: u64,
    /// Seconds spent by stage (see [`STAGES`]).
    pub stage_seconds: BTreeMap<String, f64>,
    /// Bytes of jobs written to the queue (payloads or file ranges).
    pub queue_bytes: u64,
}

impl FlowCounts {
    pub fn dead_total(&self) -> u64 {
        self.dead.values().sum()
    }

    pub fn out_total(&self) -> u64 {
        self.out.values().sum()
    }
}

impl Metrics {
    /// Metrics for these flows (name, output names).
    pub fn new(flows: Vec<(String, Vec<String>)>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("weavster");
        let m = Metrics {
            read: Family::default(),
            processed: Family::default(),
            out: Family::default(),
            filtered: Family::default(),
            unrouted: Family::default(),
            dead: Family::default(),
            batches: Family::default(),
            failed_batches: Family::default(),
            traps: Family::default(),
            latency: Family::new_with_constructor(batch_histogram),
            queue_depth: Family::default(),
            stage_seconds: Family::default(),
            queue_bytes: Family::default(),
            ready: AtomicBool::new(false),
            flows,
            registry: Registry::default(),
        };
        registry.register("records_read", "Records read by sources", m.read.clone());
        registry.register(
            "records_in",
            "Records run through a flow",
            m.processed.clone(),
        );
        registry.register("records_out", "Records written to an output", m.out.clone());
        registry.register(
            "records_filtered",
            "Records dropped by filters",
            m.filtered.clone(),
        );
        registry.register(
            "records_unrouted",
            "Records no output took",
            m.unrouted.clone(),
        );
        registry.register("records_dead", "Records dead-lettered", m.dead.clone());
        registry.register("batches", "Batches processed", m.batches.clone());
        registry.register(
            "batches_failed",
            "Batch attempts that failed",
            m.failed_batches.clone(),
        );
        registry.register("guest_traps", "Guest traps and deadlines", m.traps.clone());
        registry.register(
            "batch_duration_seconds",
            "Time to process one batch, sinks included",
            m.latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Unfinished jobs of a flow",
            m.queue_depth.clone(),
        );
        registry.register(
            "stage_seconds",
            "Seconds spent by stage, summed over the tasks doing it",
            m.stage_seconds.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes of jobs written to the queue",
            m.queue_bytes.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Counts dead letters of `flow` by stage.
    pub(crate) fn count_dead(&self, flow: &str, dead: &[NewDeadLetter]) {
        for d in dead {
            self.dead
                .get_or_create(&DeadLabel {
                    flow: flow.to_string(),
                    stage: d.stage.to_string(),
                })
                .inc();
        }
    }

    /// Adds the time since `since` to `stage` of `flow`.
    pub(crate) fn time(&self, flow: &str, stage: &'static str, since: std::time::Instant) {
        self.stage_seconds
            .get_or_create(&StageLabel {
                flow: flow.to_string(),
                stage,
            })
            .inc_by(since.elapsed().as_secs_f64());
    }

    pub(crate) fn flow(name: &str) -> FlowLabel {
        FlowLabel {
            flow: name.to_string(),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Current counts of every flow.
    pub fn snapshot(&self) -> BTreeMap<String, FlowCounts> {
        let mut all = BTreeMap::new();
        for (flow, outputs) in &self.flows {
            let l = Self::flow(flow);
            let mut c = FlowCounts {
                read: self.read.get_or_create(&l).get(),
                processed: self.processed.get_or_create(&l).get(),
                filtered: self.filtered.get_or_create(&l).get(),
                unrouted: self.unrouted.get_or_create(&l).get(),
                batches: self.batches.get_or_create(&l).get(),
                failed_batches: self.failed_batches.get_or_create(&l).get(),
                traps: self.traps.get_or_create(&l).get(),
                queue_bytes: self.queue_bytes.get_or_create(&l).get(),
                ..FlowCounts::default()
            };
            for stage in STAGES {
                let s = self
                    .stage_seconds
                    .get_or_create(&StageLabel {
                        flow: flow.clone(),
                        stage,
                    })
                    .get();
                c.stage_seconds.insert(stage.to_string(), s);
            }
            for o in outputs {
                let n = self
                    .out
                    .get_or_create(&OutputLabel {
                        flow: flow.clone(),
                        output: o.clone(),
                    })
                    .get();
                *c.out.entry(o.clone()).or_default() += n;
            }
            for stage in Stage::ALL {
                let n = self
                    .dead
                    .get_or_create(&DeadLabel {
                        flow: flow.clone(),
                        stage: stage.to_string(),
                    })
                    .get();
                if n > 0 {
                    c.dead.insert(stage.to_string(), n);
                }
            }
            all.insert(flow.clone(), c);
        }
        all
    }
}

/// Serves `/health` (alive), `/ready` (workers running) and `/metrics`
/// until `stop` resolves.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<std::net::SocketAddr, std::io::Error> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let m1 = metrics.clone();
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let m = m1.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn serves_health_ready_and_metrics() {
        let m = Metrics::new(vec![("orders".into(), vec!["files.out".into()])]);
        m.processed
            .get_or_create(&Metrics::flow("orders"))
            .inc_by(7);
        m.latency
            .get_or_create(&Metrics::flow("orders"))
            .observe(0.01);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve("127.0.0.1:0", m.clone(), async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
        let (health, not_ready) =
            tokio::task::spawn_blocking(move || (get(addr, "/health"), get(addr, "/ready")))
                .await
                .expect("join");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        m.set_ready(true);
        let (ready, metrics) =
            tokio::task::spawn_blocking(move || (get(addr, "/ready"), get(addr, "/metrics")))
                .await
                .expect("join");
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert!(
            metrics.contains("weavster_records_in_total{flow=\"orders\"} 7"),
            "{metrics}"
        );
        assert!(
            metrics.contains("weavster_batch_duration_seconds"),
            "{metrics}"
        );
        let _ = tx.send(());
        assert_eq!(m.snapshot()["orders"].processed, 7);
    }
}
