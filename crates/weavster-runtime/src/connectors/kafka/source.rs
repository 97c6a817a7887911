//! The Kafka source.
//!
//! A thread of its own polls the consumer (librdkafka's callbacks, and so
//! rebalances, run there, and polling never stops: a paused consumer keeps
//! its group membership) and hands events to the async side in order:
//! assignments (with the positions read from `weavster.offsets` at that
//! moment: the consumer starts there, not at Kafka's committed offsets),
//! revocations, messages, seeks done, ends of partitions. The async side
//! builds batches of one partition each, starting at the stored position.
//! The pump enqueues a batch only if the stored position is still where the
//! batch starts (compare-and-set): a partition moved to another process, a
//! zombie consumer or a replay can never enqueue a record twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use weavster_spec::types::{KafkaConnector, KafkaFormat, StartFrom};

use super::{base_config, code_of, fatal, format_of, partitions, stream, what};
use crate::Db;
use crate::connectors::file::source::json_record;
use crate::connectors::{ConnectorError, Context};
use crate::dead_letter::Stage;
use crate::source::{Limits, Position, Positions, Reject, Source, SourceBatch, SourceError};

/// Events from the polling thread, in the order they happened.
enum Event {
    /// Partitions now ours, with the stored position each starts from.
    Assigned(Vec<(i32, Option<i64>)>),
    Revoked(Vec<i32>),
    /// A seek asked for by the async side is done: messages of the
    /// partition that follow are from the new position.
    Seeked(i32),
    Message(Msg),
    /// Nothing more in the partition for now.
    End(i32),
    Failed {
        message: String,
        fatal: bool,
    },
}

/// A message, copied out of librdkafka.
#[derive(Clone)]
struct Msg {
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

/// Requests to the polling thread.
enum Cmd {
    /// Read `partition` from `offset` (`None`: from `start_from`).
    Seek(i32, Option<i64>),
    /// Tell Kafka where we are (for lag tools only).
    Commit(i32, i64),
}

/// The consumer's context: rebalances seek to our stored positions.
struct Ctx {
    db: Db,
    flow: String,
    topic: String,
    start: Offset,
    rt: tokio::runtime::Handle,
    /// Events raised inside callbacks, moved to the channel by the thread.
    pending: Mutex<Vec<Event>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = code_of(&error).is_some_and(fatal);
        if matches!(error, KafkaError::PartitionEOF(_))
            || code_of(&error) == Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
        {
            return; // also reported by poll, where it is used
        }
        if fatal && let Ok(mut p) = self.pending.lock() {
            p.push(Event::Failed {
                message: format!("{error}: {reason}"),
                fatal: true,
            });
        } else {
            tracing::warn!("kafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Our positions, read now (another process may have moved
                // them). If the database does not answer, start from
                // `start_from`: the compare-and-set refuses such a batch
                // and the source then seeks to the stored position.
                let stored = self
                    .rt
                    .block_on(async {
                        tokio::time::timeout(Duration::from_secs(10), self.db.offsets(&self.flow))
                            .await
                    })
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let mut assigned = Vec::new();
                for p in &parts {
                    let at = stored.get(&stream(&self.topic, *p)).and_then(Value::as_i64);
                    let offset = at.map(Offset::Offset).unwrap_or(self.start);
                    if let Err(e) = tpl.set_partition_offset(&self.topic, *p, offset) {
                        tracing::warn!("kafka: partition {p}: {e}");
                    }
                    assigned.push((*p, at));
                }
                let r = if cooperative {
                    base.incremental_assign(tpl)
                } else {
                    base.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::warn!("kafka: assign: {e}");
                }
                if let Ok(mut p) = self.pending.lock() {
                    p.push(Event::Assigned(assigned));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Told before the partitions go: their unenqueued records
                // are dropped (the next owner reads them from our positions).
                if let Ok(mut p) = self.pending.lock() {
                    p.push(Event::Revoked(parts));
                }
                let r = if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!("kafka: unassign: {e}");
                }
            }
            other => {
                tracing::warn!("kafka: rebalance error {other:?}");
                if !cooperative {
                    let _ = base.unassign();
                }
            }
        }
    }
}

/// One assigned partition, on the async side.
struct Part {
    /// The stored position the next batch starts from (`None`: none stored).
    stored: Option<i64>,
    /// The offset after the last message taken.
    next: Option<i64>,
    /// Messages are ignored until the seek asked for is done.
    seeking: bool,
    records: Vec<String>,
    rejects: Vec<Reject>,
    bytes: usize,
    /// When the first buffered record came (a batch is cut `linger` later).
    since: Option<tokio::time::Instant>,
    /// `--once`: the consumer reported the partition's end.
    ended: bool,
}

impl Part {
    fn new(stored: Option<i64>) -> Part {
        Part {
            stored,
            next: None,
            seeking: false,
            records: Vec::new(),
            rejects: Vec::new(),
            bytes: 0,
            since: None,
            ended: false,
        }
    }

    fn held(&self) -> usize {
        self.records.len() + self.rejects.len()
    }

    fn clear(&mut self) {
        self.records.clear();
        self.rejects.clear();
        self.bytes = 0;
        self.since = None;
        self.next = None;
    }
}

pub(crate) struct KafkaSource {
    what: String,
    topic: String,
    flow: String,
    db: Db,
    format: KafkaFormat,
    metadata: Option<String>,
    limits: Limits,
    linger: Duration,
    rx: mpsc::Receiver<Event>,
    cmd: std::sync::mpsc::Sender<Cmd>,
    parts: BTreeMap<i32, Part>,
    /// `--once`: each partition's end when the run started.
    ends: Option<BTreeMap<i32, i64>>,
    /// The group gave this process its (possibly empty) share.
    joined: bool,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Most events waiting between the thread and the async side before the
/// thread pauses the partitions. Large: the async side takes events in
/// bursts (between enqueues), and a pause costs a fetch round trip when
/// resumed — pausing at every burst made reading 20× slower (measured).
/// It pauses when the flow's queue is full and the pump stops taking.
const CHANNEL: usize = 1 << 16;
/// How often a `--once` source looks at positions other processes stored.
const LOOK: Duration = Duration::from_millis(500);

impl KafkaSource {
    pub(crate) async fn start(
        k: &KafkaConnector,
        cx: &Context,
    ) -> Result<KafkaSource, ConnectorError> {
        let group = k
            .group_id
            .clone()
            .unwrap_or_else(|| format!("weavster-{}-{}", cx.project, cx.flow));
        let mut defaults = vec![
            ("session.timeout.ms", "10000".to_string()),
            ("heartbeat.interval.ms", "1000".to_string()),
            (
                "partition.assignment.strategy",
                "cooperative-sticky".to_string(),
            ),
        ];
        if cx.once {
            defaults.push(("enable.partition.eof", "true".to_string()));
        }
        let config = base_config(
            k,
            &defaults,
            &[
                ("group.id", group.clone()),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
            ],
        )?;
        let start = match k.start_from.unwrap_or(StartFrom::Earliest) {
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Latest => Offset::End,
        };
        let ctx = Ctx {
            db: cx.db.clone(),
            flow: cx.flow.clone(),
            topic: k.topic.clone(),
            start,
            rt: tokio::runtime::Handle::current(),
            pending: Mutex::new(Vec::new()),
        };
        let topic = k.topic.clone();
        let once = cx.once;
        // Connect, check the topic, and (`--once`) note where it ends now.
        let (consumer, ends) = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer<Ctx> = config
                .create_with_context(ctx)
                .map_err(|e| ConnectorError::Config(e.to_string()))?;
            let ids = partitions(&consumer, &topic)?;
            let mut ends = None;
            if once {
                let mut m = BTreeMap::new();
                for p in ids {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p, super::METADATA_TIMEOUT)
                        .map_err(|e| ConnectorError::Connect(format!("partition {p}: {e}")))?;
                    m.insert(p, high.max(low));
                }
                ends = Some(m);
            }
            consumer
                .subscribe(&[&topic])
                .map_err(|e| ConnectorError::Config(e.to_string()))?;
            Ok::<_, ConnectorError>((consumer, ends))
        })
        .await
        .map_err(|e| ConnectorError::Connect(e.to_string()))??;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (cmd, cmds) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let topic = k.topic.clone();
            std::thread::Builder::new()
                .name(format!("kafka-{}", cx.flow))
                .spawn(move || poll(consumer, &topic, start, tx, cmds, &stop))
                .map_err(|e| ConnectorError::Connect(e.to_string()))?
        };
        tracing::info!(flow = %cx.flow, group = %group, "kafka: consuming `{}`", k.topic);
        Ok(KafkaSource {
            what: what(k),
            topic: k.topic.clone(),
            flow: cx.flow.clone(),
            db: cx.db.clone(),
            format: format_of(k),
            metadata: k.metadata.clone(),
            limits: cx.limits,
            linger: cx.linger,
            rx,
            cmd,
            parts: BTreeMap::new(),
            ends,
            joined: false,
            stop,
            thread: Some(thread),
        })
    }

    fn error(&self, message: String, fatal: bool) -> SourceError {
        SourceError::Remote {
            what: self.what.clone(),
            message,
            fatal,
        }
    }

    /// Takes one event.
    fn take(&mut self, ev: Event) -> Result<(), SourceError> {
        match ev {
            Event::Assigned(list) => {
                let ids: Vec<i32> = list.iter().map(|(p, _)| *p).collect();
                tracing::info!(flow = %self.flow, "kafka `{}`: assigned partitions {ids:?}", self.topic);
                self.joined = true;
                for (p, stored) in list {
                    self.parts.insert(p, Part::new(stored));
                }
            }
            Event::Revoked(list) => {
                tracing::info!(flow = %self.flow, "kafka `{}`: revoked partitions {list:?}", self.topic);
                for p in list {
                    self.parts.remove(&p);
                }
            }
            Event::Seeked(p) => {
                if let Some(part) = self.parts.get_mut(&p) {
                    part.seeking = false;
                }
            }
            Event::End(p) => {
                if let Some(part) = self.parts.get_mut(&p)
                    && !part.seeking
                {
                    part.ended = true;
                }
            }
            Event::Failed { message, fatal } => return Err(self.error(message, fatal)),
            Event::Message(m) => self.message(m),
        }
        Ok(())
    }

    fn message(&mut self, m: Msg) {
        let (topic, format, metadata) = (&self.topic, self.format, self.metadata.as_deref());
        let Some(part) = self.parts.get_mut(&m.partition) else {
            return; // not ours (any more)
        };
        if part.seeking || part.ended {
            return;
        }
        // Already taken (a message fetched before a seek).
        if part.next.is_some_and(|n| m.offset < n) {
            return;
        }
        part.next = Some(m.offset + 1);
        match record(topic, format, metadata, &m) {
            Ok(r) => {
                part.bytes += r.len();
                part.records.push(r);
            }
            Err((stage, message)) => part.rejects.push(Reject {
                record: m.payload.clone().unwrap_or_default(),
                stage,
                message,
                at: Some(format!("{topic}:{}@{}", m.partition, m.offset)),
            }),
        }
        if part.since.is_none() {
            part.since = Some(tokio::time::Instant::now());
        }
    }

    /// A partition's batch, if one is due: full, lingered long enough, or
    /// the last one of a `--once` partition.
    fn due(&mut self, now: tokio::time::Instant) -> Option<SourceBatch> {
        let (limits, linger) = (self.limits, self.linger);
        let (&p, part) = self.parts.iter_mut().find(|(_, part)| {
            part.held() > 0
                && (part.held() >= limits.batch_size
                    || part.bytes >= limits.max_batch_bytes
                    || part.ended
                    || part.since.is_some_and(|s| now >= s + linger))
        })?;
        let end = part.next?;
        let batch = SourceBatch {
            records: std::mem::take(&mut part.records),
            rejects: std::mem::take(&mut part.rejects),
            position: Some(Position {
                stream: stream(&self.topic, p),
                start: part.stored.map(Value::from),
                end: Value::from(end),
            }),
            ..SourceBatch::default()
        };
        part.bytes = 0;
        part.since = None;
        Some(batch)
    }

    /// Whether some partition holds a full batch.
    fn full(&self) -> bool {
        self.parts.values().any(|part| {
            part.held() >= self.limits.batch_size || part.bytes >= self.limits.max_batch_bytes
        })
    }

    /// The earliest time a lingering batch is due.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.parts
            .values()
            .filter_map(|p| p.since)
            .min()
            .map(|s| s + self.linger)
    }

    /// `--once`: every partition of the topic is read to its end: ours
    /// until the consumer reported their end, the others' (another process
    /// of the group has them) up to where the topic ended at the start, by
    /// the positions stored. (The end offsets are used only for partitions
    /// of other processes: some brokers report them wrong, e.g. tansu 0.6.)
    async fn finished(&mut self) -> Result<bool, SourceError> {
        let Some(ends) = &self.ends else {
            return Ok(false);
        };
        if !self.joined || self.parts.values().any(|p| p.held() > 0) {
            return Ok(false);
        }
        let stored = self
            .db
            .offsets(&self.flow)
            .await
            .map_err(|e| self.error(e.to_string(), false))?;
        Ok(ends.iter().all(|(p, end)| match self.parts.get(p) {
            Some(part) => part.ended,
            None => {
                let at = stored.get(&stream(&self.topic, *p)).and_then(Value::as_i64);
                *end == 0 || at.is_some_and(|a| a >= *end)
            }
        }))
    }
}

/// A message as a record (text), or why it cannot be one.
fn record(
    topic: &str,
    format: KafkaFormat,
    metadata: Option<&str>,
    m: &Msg,
) -> Result<String, (Stage, String)> {
    let text = match (format, &m.payload) {
        (KafkaFormat::Json, None) => {
            return Err((
                Stage::Decode,
                "the message has no value (a tombstone); `format: json` takes JSON objects".into(),
            ));
        }
        (KafkaFormat::Json, Some(v)) => json_record(v)?,
        (KafkaFormat::String, v) => {
            let value = match v {
                None => Value::Null,
                Some(v) => Value::String(
                    String::from_utf8(v.clone())
                        .map_err(|e| (Stage::Decode, format!("the value is not UTF-8: {e}")))?,
                ),
            };
            serde_json::json!({ "value": value }).to_string()
        }
        (KafkaFormat::Bytes, v) => {
            let value = v
                .as_ref()
                .map(|v| Value::String(base64::engine::general_purpose::STANDARD.encode(v)))
                .unwrap_or(Value::Null);
            serde_json::json!({ "value": value }).to_string()
        }
    };
    let Some(field) = metadata else {
        return Ok(text);
    };
    let bytes = |b: &Option<Vec<u8>>| match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => serde_json::json!({
                "base64": base64::engine::general_purpose::STANDARD.encode(b)
            }),
        },
    };
    // A name sent once: its value; sent more than once: every value, in
    // order, as an array (never only the last).
    let mut headers: Map<String, Value> = Map::new();
    for (k, v) in &m.headers {
        let v = bytes(v);
        match headers.get_mut(k) {
            None => {
                headers.insert(k.clone(), v);
            }
            // A header's own value is never an array (text, null or
            // `{"base64": …}`): an array is the list of a repeated name.
            Some(Value::Array(all)) => all.push(v),
            Some(first) => {
                let was = first.take();
                *first = Value::Array(vec![was, v]);
            }
        }
    }
    let meta = serde_json::json!({
        "topic": topic,
        "partition": m.partition,
        "offset": m.offset,
        "timestamp": m.timestamp,
        "key": bytes(&m.key),
        "headers": headers,
    })
    .to_string();
    // The record's other values keep their text (a number's digits).
    crate::connectors::with_field(&text, field, &meta).map_err(|_| {
        (
            Stage::Decode,
            "the value is not a JSON object: there is no field for `metadata`".into(),
        )
    })
}

impl Source for KafkaSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            let mut look = tokio::time::Instant::now() + LOOK;
            loop {
                let now = tokio::time::Instant::now();
                if let Some(b) = self.due(now) {
                    return Ok(Some(b));
                }
                if self.ends.is_some() && now >= look {
                    if self.finished().await? {
                        return Ok(None);
                    }
                    look = now + LOOK;
                }
                let wake = self
                    .next_due()
                    .unwrap_or(now + LOOK)
                    .min(if self.ends.is_some() {
                        look
                    } else {
                        now + LOOK
                    });
                tokio::select! {
                    ev = self.rx.recv() => match ev {
                        Some(ev) => {
                            self.take(ev)?;
                            // Take what is waiting without sleeping, until
                            // a partition's batch is full: a batch never
                            // holds more than `runtime.batch_size` records.
                            for _ in 0..4096 {
                                if self.full() {
                                    break;
                                }
                                match self.rx.try_recv() {
                                    Ok(ev) => self.take(ev)?,
                                    Err(_) => break,
                                }
                            }
                        }
                        None => return Err(self.error("the consumer stopped".into(), false)),
                    },
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        })
    }

    fn ack(&mut self, batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        if let Some(pos) = &batch.position
            && let Some(end) = pos.end.as_i64()
            && let Some(p) = pos
                .stream
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<i32>().ok())
            && let Some(part) = self.parts.get_mut(&p)
        {
            part.stored = Some(end);
            let _ = self.cmd.send(Cmd::Commit(p, end));
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&mut self, positions: Positions) -> BoxFuture<'_, ()> {
        for (p, part) in self.parts.iter_mut() {
            let at = positions
                .get(&stream(&self.topic, *p))
                .and_then(Value::as_i64);
            part.clear();
            part.stored = at;
            part.seeking = true;
            part.ended = false;
            let _ = self.cmd.send(Cmd::Seek(*p, at));
        }
        Box::pin(async {})
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The thread leaves the group (a prompt rebalance for the others).
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The polling thread.
fn poll(
    consumer: BaseConsumer<Ctx>,
    topic: &str,
    start: Offset,
    tx: mpsc::Sender<Event>,
    cmds: std::sync::mpsc::Receiver<Cmd>,
    stop: &AtomicBool,
) {
    let mut held: VecDeque<Event> = VecDeque::new();
    let mut paused = false;
    let mut commits: HashMap<i32, i64> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Seek(p, at) => {
                    let offset = at.map(Offset::Offset).unwrap_or(start);
                    if let Err(e) = consumer.seek(topic, p, offset, Duration::from_secs(10)) {
                        tracing::warn!("kafka: seek partition {p}: {e}");
                    }
                    held.retain(|e| !matches!(e, Event::Message(m) if m.partition == p));
                    held.push_back(Event::Seeked(p));
                }
                Cmd::Commit(p, at) => {
                    commits.insert(p, at);
                }
            }
        }
        if !commits.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, at) in commits.drain() {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(at));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!("kafka: commit: {e}");
            }
        }
        while let Some(ev) = held.pop_front() {
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    held.push_front(ev);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        // Backpressure: the async side is behind. Pause fetching and keep
        // polling (the group keeps us); resume once it caught up.
        if !held.is_empty() && !paused {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
            }
            paused = true;
        } else if held.is_empty() && paused && tx.capacity() > CHANNEL / 4 * 3 {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.resume(&a);
            }
            paused = false;
        }
        let got = consumer.poll(Duration::from_millis(100));
        // Callback events first: they happened before what poll returned.
        let assigned = match consumer.context().pending.lock() {
            Ok(mut p) => {
                let any = p.iter().any(|e| matches!(e, Event::Assigned(_)));
                held.extend(p.drain(..));
                any
            }
            Err(_) => false,
        };
        if assigned
            && paused
            && let Ok(a) = consumer.assignment()
        {
            let _ = consumer.pause(&a);
        }
        match got {
            None => {}
            Some(Ok(m)) => held.push_back(Event::Message(Msg {
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().map(<[u8]>::to_vec),
                key: m.key().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp: m.timestamp().to_millis(),
            })),
            Some(Err(KafkaError::PartitionEOF(p))) => held.push_back(Event::End(p)),
            Some(Err(e)) => {
                let fatal = code_of(&e).is_some_and(fatal);
                if fatal {
                    held.push_back(Event::Failed {
                        message: e.to_string(),
                        fatal,
                    });
                } else {
                    tracing::warn!("kafka: {e}");
                }
            }
        }
    }
    // Leave the group now rather than after the session timeout.
    consumer.unsubscribe();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keeps_the_values_text() {
        let m = Msg {
            partition: 2,
            offset: 7,
            payload: Some(b"{\"n\":12345678901234567890.000000000001,\"x\":1}".to_vec()),
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), Some(vec![0xff]))],
            timestamp: Some(5),
        };
        let r = record("t", KafkaFormat::Json, Some("_kafka"), &m).expect("record");
        assert!(
            r.starts_with("{\"n\":12345678901234567890.000000000001,\"x\":1,\"_kafka\":"),
            "{r}"
        );
        let v: Value = serde_json::from_str(&r).expect("json");
        assert_eq!(v["_kafka"]["offset"], 7);
        assert_eq!(v["_kafka"]["headers"]["h"]["base64"], "/w==");
        // A repeated name keeps every value, in order.
        let repeated = Msg {
            headers: vec![
                ("h".into(), Some(b"a".to_vec())),
                ("g".into(), None),
                ("h".into(), Some(b"b".to_vec())),
                ("h".into(), Some(vec![0xff])),
            ],
            ..m.clone()
        };
        let r = record("t", KafkaFormat::Json, Some("_kafka"), &repeated).expect("record");
        let v: Value = serde_json::from_str(&r).expect("json");
        assert_eq!(
            v["_kafka"]["headers"],
            serde_json::json!({"h": ["a", "b", {"base64": "/w=="}], "g": null})
        );
        let arr = Msg {
            payload: Some(b"[1]".to_vec()),
            ..m
        };
        assert!(record("t", KafkaFormat::Json, Some("_kafka"), &arr).is_err());
    }
}
