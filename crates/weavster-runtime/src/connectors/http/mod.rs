//! HTTP. Input: a webhook server (axum) whose 2xx means the request's
//! records are committed to the queue. Output: a batched client (reqwest,
//! rustls) with retries, bisected per-record refusals and a stop on
//! refused credentials; `debug` checks that its peer answers on TCP.

mod auth;
mod sink;
mod source;

use futures::future::BoxFuture;
use weavster_spec::types::HttpConnector;

use super::net::reachable;
use super::{Check, CheckContext, ConnectorError, Context, Family, Reading};
use crate::sink::Sink;
use crate::source::{Positions, Source};

/// rustls needs a process-wide provider; ring is the one built in.
pub(crate) fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Header names whose values are secrets (marked sensitive, never logged).
pub(crate) fn secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "token",
        "secret",
        "key",
        "cookie",
        "password",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

impl Family for HttpConnector {
    /// Each process serves its own listener (requests cannot be read again).
    fn reading(&self) -> Reading {
        Reading::PerProcess
    }

    fn announce(&self) {
        source::announce(self);
    }

    fn source<'a>(
        &'a self,
        cx: &'a Context,
        positions: Positions,
    ) -> BoxFuture<'a, Result<Box<dyn Source>, ConnectorError>> {
        Box::pin(async move {
            if cx.once {
                // Requests are not a finite input: `run --once` does not
                // listen, it drains what was stored.
                return Ok(Box::new(source::Ended) as Box<dyn Source>);
            }
            let s = source::HttpSource::start(self, cx, positions).await?;
            Ok(Box::new(s) as Box<dyn Source>)
        })
    }

    fn sink<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Sink>, ConnectorError>> {
        Box::pin(async move { Ok(Box::new(sink::HttpSink::new(self, cx)?) as Box<dyn Sink>) })
    }

    fn check<'a>(&'a self, _cx: &'a CheckContext) -> BoxFuture<'a, Option<Check>> {
        Box::pin(async move {
            match &self.url {
                Some(url) => {
                    let port = if url.starts_with("https://") { 443 } else { 80 };
                    let url = url.clone();
                    let fix = "start the service or fix `url`";
                    Some(
                        tokio::task::spawn_blocking(move || reachable(&url, port, fix))
                            .await
                            .unwrap_or_else(|e| Check::fail(e.to_string(), fix)),
                    )
                }
                None => Some(Check::ok(format!(
                    "server on {}{}",
                    self.listen.clone().unwrap_or_default(),
                    self.path.clone().unwrap_or_else(|| "/".into())
                ))),
            }
        })
    }
}
