//! The HTTP input: a webhook server whose 2xx means durable. A request is
//! checked (method, path, rate, auth, size), parsed into records as a whole
//! (a JSON object, an array of objects, or NDJSON; gzip accepted), handed
//! to its flow's source and answered only once the batch holding its
//! records is committed to the queue: `503` if that does not happen within
//! `store_timeout_ms`. Concurrent requests are committed together (the
//! source takes every request waiting when it cuts a batch).
//!
//! Several flows may listen on one address with different paths: the
//! first source on an address binds it; each registers its path; the server
//! stops when the last one is dropped.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use weavster_spec::types::HttpConnector;

use super::auth;
use crate::connectors::{ConnectorError, Context};
use crate::source::{Limits, Positions, Source, SourceBatch, SourceError};

/// The default largest body (as sent, and decompressed).
pub(crate) const MAX_BODY: u64 = 8 << 20;
/// Requests waiting for their flow's source, per path.
const WAITING: usize = 4096;

/// A request's records, waiting to be stored.
struct Delivery {
    records: Vec<String>,
    /// The delivery id (`dedupe_header`), if any.
    name: Option<String>,
    stored: oneshot::Sender<()>,
}

/// One path of a server.
struct Route {
    flow: String,
    spec: HttpConnector,
    tx: mpsc::Sender<Delivery>,
    bucket: Option<Mutex<Bucket>>,
}

/// Token bucket: `rate` requests per second, bursts up to `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A listening address and its routes.
struct Server {
    routes: Mutex<HashMap<String, Arc<Route>>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// HTTPS: the certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

/// Paths of this run's inputs whose source has not registered yet: a
/// request to one is told to come back (503), not that nothing is there
/// (404) — flows on one address start one after the other.
fn starting() -> &'static Mutex<std::collections::HashSet<String>> {
    static STARTING: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    STARTING.get_or_init(Default::default)
}

/// Says that an input will listen on its path (before any source starts).
pub(crate) fn announce(spec: &HttpConnector) {
    if spec.listen.is_some()
        && let Ok(mut s) = starting().lock()
    {
        s.insert(spec.path.clone().unwrap_or_else(|| "/".into()));
    }
}

fn servers() -> &'static Mutex<HashMap<SocketAddr, Arc<Server>>> {
    static SERVERS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Server>>>> = OnceLock::new();
    SERVERS.get_or_init(Default::default)
}

/// Unregisters a route when its source is dropped (and stops the server
/// with the last one).
struct Registration {
    addr: SocketAddr,
    path: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(mut all) = servers().lock() else {
            return;
        };
        let Some(server) = all.get(&self.addr).cloned() else {
            return;
        };
        let empty = match server.routes.lock() {
            Ok(mut routes) => {
                routes.remove(&self.path);
                routes.is_empty()
            }
            Err(_) => true,
        };
        if empty {
            all.remove(&self.addr);
            if let Ok(mut stop) = server.stop.lock()
                && let Some(stop) = stop.take()
            {
                let _ = stop.send(());
            }
        }
    }
}

pub(crate) struct HttpSource {
    rx: mpsc::Receiver<Delivery>,
    limits: Limits,
    /// The requests of the batch handed out, answered on `ack`.
    waiting: Vec<oneshot::Sender<()>>,
    _registration: Registration,
}

impl HttpSource {
    pub(crate) async fn start(
        spec: &HttpConnector,
        cx: &Context,
        _positions: Positions,
    ) -> Result<HttpSource, ConnectorError> {
        let listen = spec
            .listen
            .as_deref()
            .ok_or_else(|| ConnectorError::Config("an input needs `listen`".into()))?;
        let addr: SocketAddr = tokio::net::lookup_host(listen)
            .await
            .map_err(|e| ConnectorError::Config(format!("`listen` `{listen}`: {e}")))?
            .next()
            .ok_or_else(|| ConnectorError::Config(format!("`listen` `{listen}`: no address")))?;
        let path = spec.path.clone().unwrap_or_else(|| "/".into());
        let (tx, rx) = mpsc::channel(WAITING);
        let route = Arc::new(Route {
            flow: cx.flow.clone(),
            spec: spec.clone(),
            tx,
            bucket: spec.max_requests_per_second.map(|r| {
                Mutex::new(Bucket {
                    rate: f64::from(r.max(1)),
                    tokens: f64::from(r.max(1)),
                    at: Instant::now(),
                })
            }),
        });
        // Deliveries named more than a week ago are forgotten.
        let _ = sqlx::query(
            "DELETE FROM weavster.deliveries WHERE received_at < now() - interval '7 days'",
        )
        .execute(cx.db.pool())
        .await;
        let existing = servers()
            .lock()
            .map_err(|_| ConnectorError::Config("server registry poisoned".into()))?
            .get(&addr)
            .cloned();
        let tls = spec.tls.as_ref().and_then(|t| {
            Some((
                cx.root.join(t.cert_file.as_ref()?),
                cx.root.join(t.key_file.as_ref()?),
            ))
        });
        let server = match existing {
            Some(s) if s.tls != tls => {
                return Err(ConnectorError::Config(format!(
                    "{addr} is served by another flow with other `tls` settings: inputs sharing an address share its TLS"
                )));
            }
            Some(s) => s,
            None => {
                let rustls = match &tls {
                    Some((cert, key)) => {
                        super::install_crypto();
                        Some(
                            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                                .await
                                .map_err(|e| {
                                    ConnectorError::Config(format!(
                                        "`tls`: {} / {}: {e}",
                                        cert.display(),
                                        key.display()
                                    ))
                                })?,
                        )
                    }
                    None => None,
                };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ConnectorError::Config(format!("cannot listen on {addr}: {e}")))?;
                let (stop_tx, stop_rx) = oneshot::channel();
                let server = Arc::new(Server {
                    routes: Mutex::new(HashMap::new()),
                    stop: Mutex::new(Some(stop_tx)),
                    tls: tls.clone(),
                });
                let app = axum::Router::new()
                    .fallback(handle)
                    .with_state(server.clone())
                    .into_make_service_with_connect_info::<SocketAddr>();
                match rustls {
                    None => {
                        tokio::spawn(async move {
                            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                                let _ = stop_rx.await;
                            });
                            if let Err(e) = serve.await {
                                tracing::error!(%addr, "http input: {e}");
                            }
                        });
                    }
                    Some(config) => {
                        let listener = listener.into_std().map_err(|e| {
                            ConnectorError::Config(format!("cannot listen on {addr}: {e}"))
                        })?;
                        let serve = axum_server::tls_rustls::from_tcp_rustls(listener, config)
                            .map_err(|e| {
                                ConnectorError::Config(format!("cannot listen on {addr}: {e}"))
                            })?;
                        let handle = axum_server::Handle::new();
                        let stopper = handle.clone();
                        tokio::spawn(async move {
                            let _ = stop_rx.await;
                            // Requests in flight are answered (their records
                            // are stored or refused), then connections close.
                            stopper.graceful_shutdown(Some(Duration::from_secs(10)));
                        });
                        tokio::spawn(async move {
                            if let Err(e) = serve.handle(handle).serve(app).await {
                                tracing::error!(%addr, "https input: {e}");
                            }
                        });
                    }
                }
                tracing::info!(%addr, tls = tls.is_some(), "http input listening");
                if let Ok(mut all) = servers().lock() {
                    all.insert(addr, server.clone());
                }
                server
            }
        };
        {
            let mut routes = server
                .routes
                .lock()
                .map_err(|_| ConnectorError::Config("route registry poisoned".into()))?;
            if let Some(other) = routes.get(&path) {
                return Err(ConnectorError::Config(format!(
                    "{addr}{path} is already the input of flow `{}`",
                    other.flow
                )));
            }
            routes.insert(path.clone(), route);
        }
        if let Ok(mut s) = starting().lock() {
            s.remove(&path);
        }
        Ok(HttpSource {
            rx,
            limits: cx.limits,
            waiting: Vec::new(),
            _registration: Registration { addr, path },
        })
    }
}

impl Source for HttpSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            // Requests of a batch not acknowledged (the run stops) are
            // answered 503 by dropping their senders.
            self.waiting.clear();
            let Some(first) = self.rx.recv().await else {
                return Ok(None);
            };
            let mut batch = SourceBatch::default();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(d) = next.take() {
                let start = batch.records.len();
                bytes += d.records.iter().map(String::len).sum::<usize>();
                batch.records.extend(d.records);
                if let Some(name) = d.name {
                    batch.deliveries.push((name, start..batch.records.len()));
                }
                self.waiting.push(d.stored);
                if batch.records.len() >= self.limits.batch_size
                    || bytes >= self.limits.max_batch_bytes
                {
                    break;
                }
                next = self.rx.try_recv().ok();
            }
            Ok(Some(batch))
        })
    }

    fn ack(&mut self, _batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        for w in self.waiting.drain(..) {
            let _ = w.send(());
        }
        Box::pin(async { Ok(()) })
    }
}

/// The input of `run --once`: nothing (it does not listen).
pub(crate) struct Ended;

impl Source for Ended {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async { Ok(None) })
    }
}

/// An answer with a JSON error body.
fn refuse(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn retry_after(mut r: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

struct Hs<'a>(&'a HeaderMap);

impl auth::Headers for Hs<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(HeaderValue::as_bytes)
    }
}

async fn handle(
    State(server): State<Arc<Server>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_string();
    let route = match server.routes.lock() {
        Ok(routes) => routes.get(&path).cloned(),
        Err(_) => None,
    };
    let Some(route) = route else {
        if starting().lock().is_ok_and(|s| s.contains(&path)) {
            return retry_after(
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this input is starting; retry",
                ),
                1,
            );
        }
        return refuse(StatusCode::NOT_FOUND, "no input on this path");
    };
    if request.method() != Method::POST && request.method() != Method::PUT {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "POST records here");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
        return r;
    }
    if let Some(bucket) = &route.bucket
        && !bucket.lock().map(|mut b| b.take()).unwrap_or(true)
    {
        return retry_after(
            refuse(StatusCode::TOO_MANY_REQUESTS, "over the request rate"),
            1,
        );
    }
    let spec = &route.spec;
    let max = spec.max_body_bytes.unwrap_or(MAX_BODY);
    let (parts, body) = request.into_parts();
    // Credentials before anything is read; a signature needs the body.
    if let Some(a) = &spec.auth
        && let Err(auth::Refused(why)) = auth::credentials(a, &Hs(&parts.headers))
    {
        return unauthorized(spec, why);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over {max} bytes"),
        );
    }
    let raw = match axum::body::to_bytes(Body::new(body), max as usize).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {max} bytes"),
            );
        }
    };
    if let Some(a) = &spec.auth
        && let Err(auth::Refused(why)) =
            auth::signature(a, &Hs(&parts.headers), &raw, chrono::Utc::now().timestamp())
    {
        return unauthorized(spec, why);
    }
    let body = match decode_body(&parts.headers, raw, max) {
        Ok(b) => b,
        Err((status, why)) => return refuse(status, &why),
    };
    let ndjson = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("ndjson") || t.contains("jsonl") || t.contains("json-seq"));
    let mut records = match parse(&body, ndjson) {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, &why),
    };
    if records.is_empty() {
        return accepted(spec, 0);
    }
    if let Some(field) = &spec.metadata {
        let meta = metadata(
            &parts.method,
            &path,
            &parts.headers,
            remote,
            &spec.metadata_headers,
        );
        for r in &mut records {
            match crate::connectors::with_field(r, field, &meta) {
                Ok(text) => *r = text,
                Err(why) => return refuse(StatusCode::BAD_REQUEST, &why),
            }
        }
    }
    let name = spec.dedupe_header.as_ref().and_then(|h| {
        parts
            .headers
            .get(h.to_ascii_lowercase().as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let n = records.len();
    let (stored, is_stored) = oneshot::channel();
    let delivery = Delivery {
        records,
        name,
        stored,
    };
    if route.tx.try_send(delivery).is_err() {
        return retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests waiting to be stored",
            ),
            1,
        );
    }
    let timeout = Duration::from_millis(spec.store_timeout_ms.unwrap_or(10_000));
    match tokio::time::timeout(timeout, is_stored).await {
        Ok(Ok(())) => accepted(spec, n),
        // Not stored in time (the queue is full or its database is down),
        // or the run stopped: the sender must retry.
        _ => retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the records could not be stored yet",
            ),
            5,
        ),
    }
}

fn unauthorized(spec: &HttpConnector, why: &str) -> Response {
    let mut r = refuse(StatusCode::UNAUTHORIZED, why);
    if spec.auth.as_ref().is_some_and(|a| !a.bearer.is_empty()) {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn accepted(spec: &HttpConnector, n: usize) -> Response {
    let response = spec.response.as_ref();
    let status = response
        .and_then(|r| r.status)
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(StatusCode::is_success)
        .unwrap_or(StatusCode::OK);
    match response.and_then(|r| r.body.clone()) {
        Some(body) => (status, body).into_response(),
        None => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            format!("{{\"accepted\":{n}}}"),
        )
            .into_response(),
    }
}

/// The body, decompressed (`gzip`) under the same limit.
fn decode_body(headers: &HeaderMap, raw: Bytes, max: u64) -> Result<Bytes, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") | Some("") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_ref())
                .take(max + 1)
                .read_to_end(&mut out)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("gzip: {e}")))?;
            if out.len() as u64 > max {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {max} bytes once decompressed"),
                ));
            }
            Ok(out.into())
        }
        Some(other) => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` (gzip or none)"),
        )),
    }
}

/// Records of a body: an object, an array of objects, or NDJSON (one object
/// per line). All or nothing: the first error names where it is.
pub(crate) fn parse(body: &[u8], ndjson: bool) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("the body is not UTF-8 (byte {})", e.valid_up_to()))?;
    let one = |raw: &RawValue, at: &dyn Fn() -> String| -> Result<String, String> {
        let t = raw.get();
        if !t.starts_with('{') {
            return Err(format!("{}: a record must be a JSON object", at()));
        }
        Ok(if t.contains(['\n', '\r']) {
            t.replace(['\n', '\r'], " ")
        } else {
            t.to_string()
        })
    };
    if ndjson {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("line {}", i + 1);
            let raw: &RawValue =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            out.push(one(raw, &at)?);
        }
        return Ok(out);
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        items
            .iter()
            .enumerate()
            .map(|(i, raw)| one(raw, &|| format!("element {i}")))
            .collect()
    } else {
        let raw: &RawValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(vec![one(raw, &|| "the body".to_string())?])
    }
}

/// `{method, path, headers, remote}` as JSON text.
fn metadata(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    remote: SocketAddr,
    wanted: &[String],
) -> String {
    let mut hs = serde_json::Map::new();
    for name in wanted {
        let v = headers
            .get(name.to_ascii_lowercase().as_str())
            .and_then(|v| v.to_str().ok())
            .map_or(serde_json::Value::Null, |v| {
                serde_json::Value::String(v.into())
            });
        hs.insert(name.to_ascii_lowercase(), v);
    }
    serde_json::json!({
        "method": method.as_str(),
        "path": path,
        "headers": hs,
        "remote": remote.to_string(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_whole_or_not_at_all() {
        assert_eq!(parse(b"{\"a\":1}", false), Ok(vec!["{\"a\":1}".into()]));
        assert_eq!(
            parse(b"[{\"a\":1},\n {\"b\":\n2}]", false),
            Ok(vec!["{\"a\":1}".into(), "{\"b\": 2}".into()])
        );
        assert_eq!(
            parse(b"{\"a\":1}\n\n{\"b\":2}\n", true),
            Ok(vec!["{\"a\":1}".into(), "{\"b\":2}".into()])
        );
        let e = parse(b"{\"a\":1}\n{\"b\":\n", true).expect_err("bad line");
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse(b"[{\"a\":1}, 3]", false).expect_err("not an object");
        assert!(e.contains("element 1"), "{e}");
        let e = parse(b"[{\"a\":1},\n {\"b\" 2}]", false).expect_err("syntax");
        assert!(e.contains("line 2"), "{e}");
        assert!(parse(b"\xff", false).is_err());
        assert_eq!(parse(b"[]", false), Ok(vec![]));
    }

    #[test]
    fn metadata_keeps_the_other_values_text() {
        assert_eq!(
            crate::connectors::with_field(
                "{\"n\":1.50,\"m\":{\"x\":1}}",
                "_http",
                "{\"path\":\"/\"}"
            ),
            Ok("{\"n\":1.50,\"m\":{\"x\":1},\"_http\":{\"path\":\"/\"}}".into())
        );
    }

    /// A generated record: an object of a few fields, strings that may hold
    /// line breaks, quotes and non-ASCII, numbers with many digits.
    fn record() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            (
                "[a-z]{1,6}",
                prop_oneof![
                    any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
                    "-?[1-9][0-9]{0,25}(\\.[0-9]{1,12})?",
                    Just("null".to_string()),
                    Just("[1, {\"a\": \"b\"}]".to_string()),
                ],
            ),
            0..5,
        )
        .prop_map(|fields| {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(", "))
        })
    }

    proptest::proptest! {
        /// Any records, sent as an array or as NDJSON (pretty-printed with
        /// line breaks between tokens in the array case): every one comes
        /// back, in order, on one line, with its values' text.
        #[test]
        fn any_records_come_back_whole(records in proptest::collection::vec(record(), 0..8)) {
            let array = format!("[\n{}\n]", records.join(",\n  "));
            let got = parse(array.as_bytes(), false).expect("an array parses");
            proptest::prop_assert_eq!(got.len(), records.len());
            for (g, r) in got.iter().zip(&records) {
                proptest::prop_assert!(!g.contains('\n'));
                let a: serde_json::Value = serde_json::from_str(g).expect("json");
                let b: serde_json::Value = serde_json::from_str(r).expect("json");
                proptest::prop_assert_eq!(a, b);
            }
            let ndjson = records.join("\n");
            let got = parse(ndjson.as_bytes(), true).expect("ndjson parses");
            proptest::prop_assert_eq!(got, records);
        }

        /// Any bytes: parsed or refused, never a panic, and a refusal says
        /// where.
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), nd in proptest::prelude::any::<bool>()) {
            let _ = parse(&body, nd);
        }
    }
}
