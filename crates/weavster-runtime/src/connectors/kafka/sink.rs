//! The Kafka sink: one idempotent producer (`acks=all`) per process and
//! configuration. A batch is written when every delivery report is OK; each
//! failed report is classified by its error code: a record the broker
//! refuses (too large, invalid) is dead-lettered alone, a configuration
//! error (authorization, unknown topic) stops the flow, anything else
//! (timeouts, leaders moving, the network) retries the batch.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use serde_json::Value;
use weavster_spec::types::{KafkaConnector, KafkaFormat, KafkaHeader, KafkaPartitioner};

use super::{
    at_path, base_config, code_of, fatal, format_of, partitions, record_error, split_path,
    stringify, what,
};
use crate::connectors::{ConnectorError, Context};
use crate::sink::{Failed, Refused, Sink, SinkError};

enum HeaderValue {
    Static(String),
    Path(Vec<String>),
}

pub(crate) struct KafkaSink {
    what: String,
    topic: String,
    producer: FutureProducer,
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
        let producer = shared_producer(&config)?;
        Ok(KafkaSink {
            what: what(k),
            topic: k.topic.clone(),
            producer,
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

    /// The message of a record: value, key, headers.
    fn message(&self, record: &str) -> Result<(Vec<u8>, Option<String>, OwnedHeaders), String> {
        let needs_value = self.format != KafkaFormat::Json
            || self.key.is_some()
            || self
                .headers
                .iter()
                .any(|(_, h)| matches!(h, HeaderValue::Path(_)));
        let parsed: Option<Value> = if needs_value {
            Some(serde_json::from_str(record).map_err(|e| format!("invalid JSON: {e}"))?)
        } else {
            None
        };
        let value = match (self.format, &parsed) {
            (KafkaFormat::Json, _) => record.as_bytes().to_vec(),
            (f, Some(v)) => match (f, v.get("value")) {
                (KafkaFormat::String, Some(Value::String(s))) => s.as_bytes().to_vec(),
                (KafkaFormat::Bytes, Some(Value::String(s))) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| format!("field `value` is not base64: {e}"))?
                }
                _ => {
                    return Err(
                        "`format: string`/`bytes` writes the record's `value` field, which must be a string"
                            .into(),
                    );
                }
            },
            (_, None) => record.as_bytes().to_vec(),
        };
        let key = match (&self.key, &parsed) {
            (Some(path), Some(v)) => stringify(at_path(v, path)),
            _ => None,
        };
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (name, h) in &self.headers {
            let v = match (h, &parsed) {
                (HeaderValue::Static(s), _) => Some(s.clone()),
                (HeaderValue::Path(p), Some(v)) => stringify(at_path(v, p)),
                (HeaderValue::Path(_), None) => None,
            };
            headers = headers.insert(Header {
                key: name,
                value: v.as_deref(),
            });
        }
        Ok((value, key, headers))
    }
}

/// One long-lived producer per process and configuration: outputs of
/// several flows to the same cluster with the same settings share it (and
/// its connections, batching and idempotence state).
fn shared_producer(config: &rdkafka::ClientConfig) -> Result<FutureProducer, ConnectorError> {
    static PRODUCERS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, FutureProducer>>,
    > = std::sync::OnceLock::new();
    let key = format!("{:?}", config.config_map());
    let map = PRODUCERS.get_or_init(Default::default);
    let mut map = map
        .lock()
        .map_err(|_| ConnectorError::Connect("a producer panicked".into()))?;
    if let Some(p) = map.get(&key) {
        return Ok(p.clone());
    }
    let p: FutureProducer = config
        .create()
        .map_err(|e| ConnectorError::Config(e.to_string()))?;
    map.insert(key, p.clone());
    Ok(p)
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
}

impl Reports {
    fn failed(&mut self, i: usize, e: &KafkaError) {
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
                    match self.producer.send_result(rec) {
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
            if let Some(m) = r.stop {
                return Err(self.error(m, Failed::Stop));
            }
            if let Some(m) = r.retry {
                return Err(self.error(m, Failed::Retry));
            }
            r.refused.sort_by_key(|(i, _)| *i);
            Ok(r.refused)
        })
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
