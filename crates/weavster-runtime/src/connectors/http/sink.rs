//! The HTTP output: a batch sent as requests (a JSON array, NDJSON, or one
//! per record; optionally gzipped; split to stay under
//! `max_request_bytes`) with reqwest over rustls.
//!
//! By status (the defaults of [`StatusTable`], moved by `statuses`): 2xx
//! written; 401/403 (credentials), 404/405/410 and 501 (the address or
//! method is wrong) stop the flow — nothing is dead-lettered, the batch
//! stays queued for the run after the fix; 408, 429 and other 5xx, timeouts
//! and connection errors are retried in place with exponential backoff and
//! full jitter, honouring `Retry-After` (seconds or an HTTP date) up to
//! `max_retry_after_s`, then the batch goes back to the queue (due when a
//! longer `Retry-After` asked); any other 4xx (400, 413, 422…) is narrowed
//! down by bisection to the records the server refuses, which are
//! dead-lettered with its status and body, the rest written. Each request carries an `Idempotency-Key` made
//! from the job, the output and the records' range: the same on every
//! retry.

use std::io::Write as _;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest as _, Sha256};
use weavster_spec::types::{HttpConnector, HttpEncoding, StatusClass, StatusTable};

use crate::connectors::{ConnectorError, Context};
use crate::sink::{Failed, Refused, Sink, SinkError};

/// Default largest request body.
const MAX_REQUEST: u64 = 1 << 20;

pub(crate) struct HttpSink {
    what: String,
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    encoding: HttpEncoding,
    gzip: bool,
    max_bytes: usize,
    retries: u32,
    max_retry_after: Duration,
    statuses: StatusTable,
    /// The output, for idempotency keys.
    output: String,
    permits: Arc<tokio::sync::Semaphore>,
    rate: Option<Mutex<(f64, f64, Instant)>>,
}

/// How one request ended.
enum Sent {
    Written,
    /// A 4xx about the records: (status, the body's start).
    Refused(u16, String),
}

impl HttpSink {
    pub(crate) fn new(spec: &HttpConnector, cx: &Context) -> Result<HttpSink, ConnectorError> {
        let url = spec
            .url
            .clone()
            .ok_or_else(|| ConnectorError::Config("an output needs `url`".into()))?;
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| ConnectorError::Config(format!("`url`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConnectorError::Config(
                "`url` must be http:// or https://".into(),
            ));
        }
        super::install_crypto();
        let method = spec.method.as_deref().unwrap_or("POST");
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| ConnectorError::Config(format!("`method` `{method}`")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &spec.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ConnectorError::Config(format!("header name `{k}`")))?;
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| ConnectorError::Config(format!("the value of header `{k}`")))?;
            value.set_sensitive(crate::connectors::http::secret_header(k));
            headers.insert(name, value);
        }
        let auth = match (&spec.token, &spec.basic) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some(b)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:{}", b.user, b.password))
                ))
            }
            _ => None,
        };
        if let Some(a) = auth {
            let mut v = reqwest::header::HeaderValue::from_str(&a).map_err(|_| {
                ConnectorError::Config("the token or password is not a header value".into())
            })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let encoding = spec.encoding.unwrap_or(HttpEncoding::Json);
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static(match encoding {
                HttpEncoding::Ndjson => "application/x-ndjson",
                _ => "application/json",
            }),
        );
        let gzip = spec.gzip.unwrap_or(false);
        if gzip {
            headers.insert(
                reqwest::header::CONTENT_ENCODING,
                reqwest::header::HeaderValue::from_static("gzip"),
            );
        }
        // Redirects are never followed: reqwest would resend a POST to a
        // 301/302/303 as a body-less GET and count the records written, and
        // a redirect loop would end as retries and dead letters. A 3xx is
        // seen here and stops the flow (docs/connectors.md).
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(
                spec.connect_timeout_ms.unwrap_or(5000),
            ))
            .timeout(Duration::from_millis(spec.timeout_ms.unwrap_or(10_000)));
        if let Some(ca) = spec.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            let path = cx.root.join(ca);
            let pem = std::fs::read(&path).map_err(|e| {
                ConnectorError::Config(format!("`tls.ca_file` {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ConnectorError::Config(format!("`tls.ca_file` {}: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(ConnectorError::Config(format!(
                    "`tls.ca_file` {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for c in certs {
                client = client.add_root_certificate(c);
            }
        }
        let client = client
            .build()
            .map_err(|e| ConnectorError::Config(format!("HTTP client: {e}")))?;
        let statuses = match &spec.statuses {
            Some(s) => s.table().map_err(|p| {
                ConnectorError::Config(p.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; "))
            })?,
            None => StatusTable::default(),
        };
        Ok(HttpSink {
            what: format!("http {} {}", method, redact(&parsed)),
            client,
            url,
            method,
            headers,
            encoding,
            gzip,
            max_bytes: spec.max_request_bytes.unwrap_or(MAX_REQUEST) as usize,
            retries: spec.retries.unwrap_or(3).max(1),
            max_retry_after: Duration::from_secs(spec.max_retry_after_s.unwrap_or(30)),
            statuses,
            output: cx.output.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(
                spec.concurrency.unwrap_or(4).max(1) as usize,
            )),
            rate: spec.max_requests_per_second.map(|r| {
                let r = f64::from(r.max(1));
                Mutex::new((r, r, Instant::now()))
            }),
        })
    }

    /// Waits for a token of the rate limit.
    async fn pace(&self) {
        let Some(rate) = &self.rate else { return };
        loop {
            let wait = {
                let Ok(mut b) = rate.lock() else { return };
                let (per_s, tokens, at) = *b;
                let now = Instant::now();
                let tokens = (tokens + now.duration_since(at).as_secs_f64() * per_s).min(per_s);
                if tokens >= 1.0 {
                    *b = (per_s, tokens - 1.0, now);
                    return;
                }
                *b = (per_s, tokens, now);
                Duration::from_secs_f64((1.0 - tokens) / per_s)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The body of `records`.
    fn body(&self, records: &[&str]) -> Result<Vec<u8>, SinkError> {
        let mut out = Vec::new();
        match self.encoding {
            HttpEncoding::Json => {
                out.push(b'[');
                for (i, r) in records.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(r.as_bytes());
                }
                out.push(b']');
            }
            HttpEncoding::Ndjson => {
                for r in records {
                    out.extend_from_slice(r.as_bytes());
                    out.push(b'\n');
                }
            }
            HttpEncoding::Single => {
                for r in records {
                    out.extend_from_slice(r.as_bytes());
                }
            }
        }
        if !self.gzip {
            return Ok(out);
        }
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&out)
            .and_then(|()| e.finish())
            .map_err(|e| self.error(format!("gzip: {e}"), Failed::Retry))
    }

    fn error(&self, message: String, failed: Failed) -> SinkError {
        SinkError::Remote {
            what: self.what.clone(),
            message,
            failed,
        }
    }

    /// One request of `records` (starting at `start` in the batch), retried
    /// in place while that can help.
    async fn send(&self, job: &str, records: &[&str], start: usize) -> Result<Sent, SinkError> {
        let body = self.body(records)?;
        let key = {
            let mut h = Sha256::new();
            h.update(format!(
                "{job}\n{}\n{start}\n{}",
                self.output,
                records.len()
            ));
            hex::encode(&h.finalize()[..16])
        };
        let mut last = String::new();
        // Whether the last attempt got no answer at all (a timeout, a
        // refused or reset connection): an outage, not the records' fault.
        let mut unanswered = false;
        for attempt in 0..self.retries {
            self.pace().await;
            let permit = self.permits.acquire().await;
            let response = self
                .client
                .request(self.method.clone(), &self.url)
                .headers(self.headers.clone())
                .header("Idempotency-Key", &key)
                .body(body.clone())
                .send()
                .await;
            drop(permit);
            let wait = match response {
                Err(e) => {
                    unanswered = true;
                    last = if e.is_timeout() {
                        "timed out".to_string()
                    } else if e.is_connect() {
                        format!("cannot connect: {e}")
                    } else {
                        e.to_string()
                    };
                    None
                }
                Ok(r) => {
                    unanswered = false;
                    let status = r.status().as_u16();
                    let after = retry_after(r.headers());
                    match self.statuses.class(status) {
                        StatusClass::Success => return Ok(Sent::Written),
                        StatusClass::Stop => {
                            let location = redirect_to(status, r.headers(), &self.url);
                            let text = excerpt(r).await;
                            if let Some(to) = location {
                                return Err(self.error(
                                    format!(
                                        "HTTP {status} redirect to {to}: a write is never followed to another address; set `url` to it, the batch stays queued"
                                    ),
                                    Failed::Stop,
                                ));
                            }
                            let why = match status {
                                401 | 403 => "the credentials are refused; fix them",
                                404 | 405 | 410 | 501 => "fix `url` or `method`",
                                _ => "this status stops the flow (`statuses`)",
                            };
                            return Err(self.error(
                                format!("HTTP {status} {text}: {why}, the batch stays queued"),
                                Failed::Stop,
                            ));
                        }
                        StatusClass::Retry => {
                            last = format!("HTTP {status} {}", excerpt(r).await);
                            after
                        }
                        StatusClass::DeadLetter => {
                            return Ok(Sent::Refused(status, excerpt(r).await));
                        }
                    }
                }
            };
            if attempt + 1 == self.retries {
                break;
            }
            let delay = match wait {
                Some(d) if d > self.max_retry_after => {
                    // Too long to hold a worker: back to the queue, due
                    // when the server asked.
                    return Err(self.error(
                        format!(
                            "{last}; Retry-After {}s is longer than max_retry_after_s: the batch is due again then",
                            d.as_secs()
                        ),
                        Failed::Later(d),
                    ));
                }
                Some(d) => d,
                None => jitter(Duration::from_millis(200 << attempt.min(6))),
            };
            tokio::time::sleep(delay).await;
        }
        let failed = if unanswered {
            Failed::Unavailable
        } else {
            Failed::Retry
        };
        Err(self.error(last, failed))
    }
}

/// The URL without its password or query (for messages).
fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// Where a redirect points (resolved against `base`, without its
/// password or query); `None` for any other status.
fn redirect_to(status: u16, h: &reqwest::header::HeaderMap, base: &str) -> Option<String> {
    if !weavster_spec::types::is_redirect(status) {
        return None;
    }
    let Some(v) = h.get(reqwest::header::LOCATION) else {
        return Some("(no Location given)".to_string());
    };
    let Ok(text) = v.to_str() else {
        return Some("(a Location that is not text)".to_string());
    };
    Some(
        reqwest::Url::parse(base)
            .and_then(|b| b.join(text))
            .map_or_else(|_| format!("`{text}`"), |u| redact(&u)),
    )
}

/// The start of a response body (for a dead letter or an error).
async fn excerpt(r: reqwest::Response) -> String {
    let text = r.text().await.unwrap_or_default();
    let mut t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
}

/// `Retry-After`: seconds or an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// A random delay in `[0, max]` ("full jitter").
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let x = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    max.mul_f64((x as f64) / ((1u64 << 53) as f64))
}

/// Ranges of `records` of at most `max` body bytes (one record per range
/// for `single`).
fn parts(records: &[&str], encoding: HttpEncoding, max: usize) -> Vec<Range<usize>> {
    if encoding == HttpEncoding::Single {
        return (0..records.len()).map(|i| i..i + 1).collect();
    }
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 2);
    for (i, r) in records.iter().enumerate() {
        if i > start && bytes + r.len() + 1 > max {
            out.push(start..i);
            start = i;
            bytes = 2;
        }
        bytes += r.len() + 1;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

impl Sink for HttpSink {
    fn write<'a>(
        &'a self,
        job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>> {
        Box::pin(async move {
            let mut refused = Refused::new();
            let mut todo: Vec<Range<usize>> = parts(records, self.encoding, self.max_bytes);
            todo.reverse();
            while let Some(r) = todo.pop() {
                match self.send(job, &records[r.clone()], r.start).await? {
                    Sent::Written => {}
                    Sent::Refused(status, text) if r.len() == 1 => {
                        refused.push((r.start, format!("HTTP {status}: {text}")));
                    }
                    Sent::Refused(..) => {
                        // Halves, the first sent first.
                        let mid = r.start + r.len() / 2;
                        todo.push(mid..r.end);
                        todo.push(r.start..mid);
                    }
                }
            }
            Ok(refused)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_under_the_byte_limit() {
        let recs = ["{\"a\":1}"; 10];
        let p = parts(&recs, HttpEncoding::Json, 30);
        assert!(p.iter().all(|r| r.len() <= 3), "{p:?}");
        assert_eq!(p.iter().map(ExactSizeIterator::len).sum::<usize>(), 10);
        let big = [
            "{\"a\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
            "{}",
        ];
        assert_eq!(parts(&big, HttpEncoding::Ndjson, 10), vec![0..1, 1..2]);
        assert_eq!(
            parts(&recs[..2], HttpEncoding::Single, 1000),
            vec![0..1, 1..2]
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, soon.parse().expect("value"));
        let d = retry_after(&h).expect("a date");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert!(jitter(Duration::from_secs(1)) <= Duration::from_secs(1));
    }

    proptest::proptest! {
        /// Any record sizes and limit: the parts cover the batch in order,
        /// each under the limit unless it is one record.
        #[test]
        fn parts_cover_the_batch_under_the_limit(
            sizes in proptest::collection::vec(0usize..200, 0..60),
            max in 1usize..600,
            ndjson in proptest::prelude::any::<bool>(),
        ) {
            let texts: Vec<String> = sizes.iter().map(|n| "x".repeat(*n)).collect();
            let recs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let enc = if ndjson { HttpEncoding::Ndjson } else { HttpEncoding::Json };
            let p = parts(&recs, enc, max);
            let mut next = 0;
            for r in &p {
                proptest::prop_assert_eq!(r.start, next);
                proptest::prop_assert!(!r.is_empty());
                let bytes: usize = 2 + recs[r.clone()].iter().map(|t| t.len() + 1).sum::<usize>();
                proptest::prop_assert!(bytes <= max || r.len() == 1, "{r:?} {bytes} > {max}");
                next = r.end;
            }
            proptest::prop_assert_eq!(next, recs.len());
        }
    }
}
