//! Kafka: a consumer group whose offsets are ours (stored with each batch's
//! job, in one transaction), and an idempotent producer whose batch is done
//! only when every delivery report is OK. librdkafka through rdkafka.
//!
//! Decisions (docs/connectors/kafka.md): streams are named
//! `<topic>:<partition>` and their position is the next offset to read; a
//! batch holds records of one partition; Kafka's own committed offsets are
//! written after ours, only for lag tools, and never read.

mod sink;
mod source;

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use weavster_spec::types::{KafkaConnector, KafkaFormat};

use super::{Check, CheckContext, ConnectorError, Context, Family, Reading};
use crate::sink::Sink;
use crate::source::{Positions, Source};

/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl Family for KafkaConnector {
    fn reading(&self) -> Reading {
        Reading::Shared
    }

    fn source<'a>(
        &'a self,
        cx: &'a Context,
        _positions: Positions,
    ) -> BoxFuture<'a, Result<Box<dyn Source>, ConnectorError>> {
        // Positions are read again at each assignment (another process may
        // have moved them since).
        Box::pin(async move {
            let s = source::KafkaSource::start(self, cx).await?;
            Ok(Box::new(s) as Box<dyn Source>)
        })
    }

    fn sink<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Sink>, ConnectorError>> {
        Box::pin(async move {
            let s = sink::KafkaSink::new(self, cx).await?;
            Ok(Box::new(s) as Box<dyn Sink>)
        })
    }

    fn check<'a>(&'a self, _cx: &'a CheckContext) -> BoxFuture<'a, Option<Check>> {
        Box::pin(async move {
            let fix = "start the broker, fix `brokers`/`options`, or create the topic";
            let config = match base_config(self, &[], &[]) {
                Ok(c) => c,
                Err(e) => return Some(Check::fail(e.to_string(), "fix `options`")),
            };
            let topic = self.topic.clone();
            let answer = tokio::task::spawn_blocking(move || {
                let client: BaseConsumer = config
                    .create()
                    .map_err(|e| ConnectorError::Config(e.to_string()))?;
                partitions(&client, &topic)
            })
            .await;
            Some(match answer {
                Ok(Ok(parts)) => Check::ok(format!(
                    "topic `{}`: {} partition(s) on {}",
                    self.topic,
                    parts.len(),
                    self.brokers
                )),
                Ok(Err(e)) => Check::fail(e.to_string(), fix),
                Err(e) => Check::fail(e.to_string(), fix),
            })
        })
    }
}

/// What the connector is called in messages.
fn what(k: &KafkaConnector) -> String {
    format!("kafka topic `{}`", k.topic)
}

/// The client config: `defaults`, then the user's `options` (which may
/// override them), then `fixed` (which they may not: a clear error).
fn base_config(
    k: &KafkaConnector,
    defaults: &[(&str, String)],
    fixed: &[(&str, String)],
) -> Result<ClientConfig, ConnectorError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    c.set("allow.auto.create.topics", "false");
    // librdkafka logs through its own callbacks; errors reach us as values.
    c.set("log_level", "3");
    for (key, value) in defaults {
        c.set(*key, value);
    }
    for (key, value) in &k.options {
        if let Some((_, want)) = fixed.iter().find(|(f, _)| f == key)
            && want != value
        {
            return Err(ConnectorError::Config(format!(
                "option `{key}` must be `{want}` here: Weavster's delivery guarantee depends on it"
            )));
        }
        c.set(key, value);
    }
    for (key, value) in fixed {
        c.set(*key, value);
    }
    Ok(c)
}

/// The topic's partitions, by a metadata request; a missing topic or a
/// refused login is a configuration error.
fn partitions<K: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<K>,
    topic: &str,
) -> Result<Vec<i32>, ConnectorError> {
    let md = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| match e.rdkafka_error_code() {
            Some(code) if fatal(code) => ConnectorError::Config(format!(
                "the broker refused: {code} (check the credentials in `options`)"
            )),
            _ => ConnectorError::Connect(format!("metadata request failed: {e}")),
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(ConnectorError::Config(format!(
            "topic `{topic}` does not exist"
        )));
    };
    match t.error() {
        None => {}
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            return Err(ConnectorError::Config(format!(
                "topic `{topic}` does not exist"
            )));
        }
        Some(e) => {
            let code: RDKafkaErrorCode = e.into();
            return Err(if fatal(code) {
                ConnectorError::Config(format!("topic `{topic}`: {code}"))
            } else {
                ConnectorError::Connect(format!("topic `{topic}`: {code}"))
            });
        }
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(ConnectorError::Config(format!(
            "topic `{topic}` does not exist (no partitions)"
        )));
    }
    Ok(ids)
}

/// Errors that retrying cannot fix: the flow stops.
fn fatal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::InvalidTopic
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::Fatal
    )
}

/// Errors of one record (the rest of the batch is fine): dead-lettered.
fn record_error(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord | C::InvalidMessage
    )
}

fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// The stream name of a partition.
fn stream(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// A record path split into segments (`a.b[0]` and `a.b.0` alike).
fn split_path(p: &str) -> Vec<String> {
    p.replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn format_of(k: &KafkaConnector) -> KafkaFormat {
    k.format.unwrap_or(KafkaFormat::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_fields_text() {
        let r = r#"{"s": "a", "n": 1.50, "b": true, "z": null, "big": 1e400, "o": {"x": [1, 2]}}"#;
        let check = |p: &str| {
            crate::record::at_path(r, &split_path(p))
                .expect("JSON")
                .and_then(crate::record::text)
                .map(std::borrow::Cow::into_owned)
        };
        assert_eq!(check("s").as_deref(), Some("a"));
        assert_eq!(check("n").as_deref(), Some("1.50"));
        assert_eq!(check("b").as_deref(), Some("true"));
        assert_eq!(check("big").as_deref(), Some("1e400"));
        assert_eq!(check("z"), None);
        assert_eq!(check("missing"), None);
        assert_eq!(check("o").as_deref(), Some("{\"x\": [1, 2]}"));
        assert_eq!(check("o.x[1]").as_deref(), Some("2"));
    }

    #[test]
    fn fixed_options_cannot_be_overridden() {
        let mut k = KafkaConnector {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            group_id: None,
            start_from: None,
            format: None,
            metadata: None,
            key: None,
            headers: Default::default(),
            compression: None,
            linger_ms: None,
            partitioner: None,
            options: Default::default(),
        };
        k.options
            .insert("enable.idempotence".into(), "false".into());
        let e =
            base_config(&k, &[], &[("enable.idempotence", "true".into())]).expect_err("refused");
        assert!(e.to_string().contains("enable.idempotence"), "{e}");
        k.options.insert("enable.idempotence".into(), "true".into());
        assert!(base_config(&k, &[], &[("enable.idempotence", "true".into())]).is_ok());
    }
}
