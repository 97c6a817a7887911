//! `weavster health`: asks a running `weavster run` whether it is healthy
//! (its `/health` or `/ready`) — the container HEALTHCHECK of an image
//! that holds no curl (docker/Dockerfile.runtime).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to ask: a run's `--metrics-addr` with `/ready` (workers running,
    /// queue reachable) or `/health` (the process answers).
    #[arg(long, default_value = "http://127.0.0.1:9464/ready")]
    url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// 0 when the answer is 200; 1 for any other answer or none.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let rest = args
        .url
        .strip_prefix("http://")
        .context("--url must be http://HOST:PORT/PATH (the run's --metrics-addr)")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let answer = (|| -> std::io::Result<String> {
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).to_string())
    })();
    match answer {
        Ok(text) => {
            let status = text.lines().next().unwrap_or_default().to_string();
            if status.split_whitespace().nth(1) == Some("200") {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("unhealthy: {} answered {status:?}", args.url);
                Ok(ExitCode::from(1))
            }
        }
        Err(e) => {
            eprintln!("unhealthy: {}: {e}", args.url);
            Ok(ExitCode::from(1))
        }
    }
}
