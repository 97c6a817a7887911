//! The Kafka sink: one idempotent producer (`acks=all`) per process and
//! configuration. A batch is written when every delivery report is OK; each
//! failed report is classified by its error code: a record the broker
//! refuses (too large, invalid) is dead-lettered alone, a configuration
//! error (authorization, unknown topic) stops the flow, anything else
//! (timeouts, leaders moving, the network) is an outage: the batch is
//! retried for as long as it lasts, never dead-lettered for it.
//!
//! A producer that failed a batch in a way it does not recover from by
//! itself — a fatal error (an idempotent producer fenced or out of
//! sequence after an outage), or messages timed out (after a broker
//! restart it may keep timing out where a new one delivers at once) — is
//! replaced by a new one before the batch is retried.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use weavster_spec::types::{KafkaConnector, KafkaFormat, KafkaHeader, KafkaPartitioner};

use super::{base_config, code_of, fatal, format_of, partitions, record_error, split_path, what};
use crate::connectors::{ConnectorError, Context};
use crate::sink::{Failed, Refused, Sink, SinkError};

enum HeaderValue {
    Static(String),
    Path(Vec<String>),
}

pub(crate) struct KafkaSink {
    what: String,
    topic: String,
    /// The producer's configuration (to make a new one) and the one in
    /// use with its generation in [`PRODUCERS`].
    config: rdkafka::ClientConfig,
    producer: std::sync::Mutex<(u64, FutureProducer)>,
    format: KafkaFormat,
    key: Option<Vec<String>>,
    headers: Vec<(String, HeaderValue)>,
}

impl KafkaSink {
    pub(crate) async fn new(k: &KafkaConnector, cx: &Context) -> Result<KafkaSink, ConnectorError> {
        // A produce must end (delivered or failed) well before another
        // process may take the job over.
        let timeout = cx
            .lease
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1));
        let timeout_ms = timeout.as_millis().to_string();
        if let Some(t) = k.options.get("message.timeout.ms")
            && t.parse::<u128>().map_or(true, |t| t > timeout.as_millis())
        {
            return Err(ConnectorError::Config(format!(
                "option `message.timeout.ms` must be at most {timeout_ms} (shorter than the job lease, so that a retried batch never races a message still in flight)"
            )));
        }
        let mut defaults = vec![
            ("linger.ms", k.linger_ms.unwrap_or(5).to_string()),
            ("message.timeout.ms", timeout_ms),
            (
                "partitioner",
                k.partitioner
                    .unwrap_or(KafkaPartitioner::Murmur2Random)
                    .as_str()
                    .to_string(),
            ),
        ];
        if let Some(c) = k.compression {
            defaults.push(("compression.type", c.as_str().to_string()));
        }
        let config = base_config(
            k,
            &defaults,
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
            ],
        )?;
        let topic = k.topic.clone();
        let check = base_config(k, &[], &[])?;
        // The topic must exist: an unknown topic is a clear error now, not
        // dead letters later.
        tokio::task::spawn_blocking(move || {
            let client: rdkafka::consumer::BaseConsumer = check
                .create()
                .map_err(|e| ConnectorError::Config(e.to_string()))?;
            partitions(&client, &topic)
        })
        .await
        .map_err(|e| ConnectorError::Connect(e.to_string()))??;
        let producer = shared_producer(&config, None)?;
        Ok(KafkaSink {
            what: what(k),
            topic: k.topic.clone(),
            config,
            producer: std::sync::Mutex::new(producer),
            format: format_of(k),
            key: k.key.as_deref().map(split_path),
            headers: k
                .headers
                .iter()
                .map(|(name, h)| {
                    let v = match h {
                        KafkaHeader::Static(s) => HeaderValue::Static(s.clone()),
                        KafkaHeader::Path { path } => HeaderValue::Path(split_path(path)),
                    };
                    (name.clone(), v)
                })
                .collect(),
        })
    }

    fn error(&self, message: String, failed: Failed) -> SinkError {
        SinkError::Remote {
            what: self.what.clone(),
            message,
            failed,
        }
    }

    /// The message of a record: value, key, headers. Keys and headers
    /// from a path are the field's text in the record (a string
    /// unescaped), never a number printed again.
    fn message(&self, record: &str) -> Result<(Vec<u8>, Option<String>, OwnedHeaders), String> {
        // The record's top level, parsed once for every path (none when
        // nothing is read from it).
        let needs_fields = self.format != KafkaFormat::Json
            || self.key.is_some()
            || self
                .headers
                .iter()
                .any(|(_, h)| matches!(h, HeaderValue::Path(_)));
        let fields = if needs_fields {
            crate::record::fields(record).map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let raw_at =
            |path: &[String]| crate::record::lookup(&fields, path).map_err(|e| e.to_string());
        let field = |path: &[String]| -> Result<Option<String>, String> {
            Ok(raw_at(path)?
                .and_then(crate::record::text)
                .map(std::borrow::Cow::into_owned))
        };
        let value = match self.format {
            KafkaFormat::Json => record.as_bytes().to_vec(),
            f => {
                let raw = raw_at(&["value".to_string()])?;
                match (f, raw.map(|r| r.get())) {
                    (_, Some(t)) if t.starts_with('"') => {
                        let s: String =
                            serde_json::from_str(t).map_err(|e| format!("field `value`: {e}"))?;
                        if f == KafkaFormat::Bytes {
                            base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .map_err(|e| format!("field `value` is not base64: {e}"))?
                        } else {
                            s.into_bytes()
                        }
                    }
                    _ => {
                        return Err(
                            "`format: string`/`bytes` writes the record's `value` field, which must be a string"
                                .into(),
                        );
                    }
                }
            }
        };
        let key = match &self.key {
            Some(path) => field(path)?,
            None => None,
        };
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (name, h) in &self.headers {
            let v = match h {
                HeaderValue::Static(s) => Some(s.clone()),
                HeaderValue::Path(p) => field(p)?,
            };
            headers = headers.insert(Header {
                key: name,
                value: v.as_deref(),
            });
        }
        Ok((value, key, headers))
    }
}

/// The producers of this process by configuration, each with its
/// generation (raised each time one is replaced).
type Producers = std::collections::HashMap<String, (u64, FutureProducer)>;
static PRODUCERS: std::sync::OnceLock<std::sync::Mutex<Producers>> = std::sync::OnceLock::new();

/// One long-lived producer per process and configuration: outputs of
/// several flows to the same cluster with the same settings share it (and
/// its connections, batching and idempotence state). With `replace`, the
/// generation that failed: if it is still the shared one, a new producer
/// takes its place (the old one is dropped off the async threads); if
/// another sink replaced it already, that newer one is returned.
fn shared_producer(
    config: &rdkafka::ClientConfig,
    replace: Option<u64>,
) -> Result<(u64, FutureProducer), ConnectorError> {
    let key = format!("{:?}", config.config_map());
    let map = PRODUCERS.get_or_init(Default::default);
    let mut map = map
        .lock()
        .map_err(|_| ConnectorError::Connect("a producer panicked".into()))?;
    let generation = match (map.get(&key), replace) {
        (Some((g, p)), None) => return Ok((*g, p.clone())),
        (Some((g, p)), Some(failed)) if *g != failed => return Ok((*g, p.clone())),
        (Some((g, _)), Some(_)) => g + 1,
        (None, _) => 0,
    };
    let p: FutureProducer = config
        .create()
        .map_err(|e| ConnectorError::Config(e.to_string()))?;
    if let Some((_, old)) = map.insert(key, (generation, p.clone())) {
        // Dropping purges its queue and waits up to 500 ms.
        std::thread::spawn(move || drop(old));
    }
    Ok((generation, p))
}

/// Whether a producer must be replaced after failing a batch: it is in a
/// fatal state, or the batch failed by errors that a new producer clears
/// (timeouts, idempotence state lost to an outage).
fn needs_new(producer: &FutureProducer, reports: &Reports) -> Option<String> {
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Some(format!("{code}: {reason}"));
    }
    reports.stale.clone()
}

/// How a failed report is handled.
fn classify(e: &KafkaError) -> Outcome {
    match code_of(e) {
        Some(c) if record_error(c) => Outcome::Refuse,
        Some(c) if fatal(c) => Outcome::Stop,
        _ => Outcome::Retry,
    }
}

enum Outcome {
    Refuse,
    Stop,
    Retry,
}

/// What a batch's reports said.
#[derive(Default)]
struct Reports {
    refused: Refused,
    stop: Option<String>,
    retry: Option<String>,
    /// An error that a new producer clears.
    stale: Option<String>,
}

/// Errors after which a producer is replaced: messages timed out (the
/// producer may go on timing out after a broker restart) and the
/// idempotence state the broker no longer accepts.
fn stale(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::OutOfOrderSequenceNumber
            | C::UnknownProducerId
            | C::InvalidProducerIdMapping
            | C::Fatal
    )
}

impl Reports {
    fn failed(&mut self, i: usize, e: &KafkaError) {
        if let Some(c) = code_of(e)
            && stale(c)
        {
            self.stale.get_or_insert_with(|| e.to_string());
            self.retry.get_or_insert_with(|| e.to_string());
            return;
        }
        match classify(e) {
            Outcome::Refuse => self
                .refused
                .push((i, format!("the broker refused the record: {e}"))),
            Outcome::Stop => {
                self.stop.get_or_insert_with(|| e.to_string());
            }
            Outcome::Retry => {
                self.retry.get_or_insert_with(|| e.to_string());
            }
        }
    }

    async fn wait(&mut self, i: usize, f: DeliveryFuture) {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => self.failed(i, &e),
            Err(_) => {
                self.retry
                    .get_or_insert_with(|| "the producer dropped a delivery report".into());
            }
        }
    }
}

impl Sink for KafkaSink {
    fn write<'a>(
        &'a self,
        _job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>> {
        Box::pin(async move {
            let (generation, producer) = match self.producer.lock() {
                Ok(p) => p.clone(),
                Err(_) => return Err(self.error("a writer panicked".into(), Failed::Retry)),
            };
            let mut r = Reports::default();
            let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
            for (i, text) in records.iter().enumerate() {
                let (value, key, headers) = match self.message(text) {
                    Ok(m) => m,
                    Err(e) => {
                        r.refused.push((i, e));
                        continue;
                    }
                };
                let mut rec = FutureRecord::to(&self.topic)
                    .payload(&value)
                    .headers(headers);
                if let Some(k) = &key {
                    rec = rec.key(k);
                }
                loop {
                    match producer.send_result(rec) {
                        Ok(f) => {
                            pending.push_back((i, f));
                            break;
                        }
                        // The producer's queue is full: backpressure. Wait
                        // for the oldest delivery, then send again.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            rec = back;
                            match pending.pop_front() {
                                Some((j, f)) => r.wait(j, f).await,
                                None => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                        Err((e, _)) => {
                            r.failed(i, &e);
                            break;
                        }
                    }
                }
            }
            while let Some((j, f)) = pending.pop_front() {
                r.wait(j, f).await;
            }
            if (r.stop.is_some() || r.retry.is_some())
                && let Some(why) = needs_new(&producer, &r)
            {
                tracing::warn!(output = %self.what, "replacing the producer ({why}); the batch will be sent again by the new one");
                let fresh = shared_producer(&self.config, Some(generation))
                    .map_err(|e| self.error(e.to_string(), Failed::Unavailable))?;
                if let Ok(mut p) = self.producer.lock() {
                    *p = fresh;
                }
                // What a fatal state refused is not the records' fault.
                return Err(self.error(r.stop.or(r.retry).unwrap_or(why), Failed::Unavailable));
            }
            if let Some(m) = r.stop {
                return Err(self.error(m, Failed::Stop));
            }
            if let Some(m) = r.retry {
                return Err(self.error(m, Failed::Unavailable));
            }
            r.refused.sort_by_key(|(i, _)| *i);
            Ok(r.refused)
        })
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        if let Ok(p) = self.producer.lock() {
            let _ = p.1.flush(Duration::from_secs(5));
        }
    }
}
