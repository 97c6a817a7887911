//! TCP reachability: `debug`'s check of an HTTP output's peer and of the
//! queue database.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Check;

/// Whether `url`'s host and port accept a TCP connection (2 s).
pub fn reachable(url: &str, default_port: u16, fix: &str) -> Check {
    let Some((host, port)) = host_port(url, default_port) else {
        return Check::fail("cannot tell host and port from the configured address", fix);
    };
    let addrs = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Check::fail(format!("cannot resolve {host}: {e}"), fix),
    };
    for addr in &addrs {
        if TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok() {
            return Check::ok(format!("{host}:{port} reachable"));
        }
    }
    Check::fail(format!("{host}:{port} not reachable"), fix)
}

/// `host:port` of a URL-ish string (`scheme://user:pw@host:port/...`).
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if hostport.is_empty() {
        return None;
    }
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("postgres://u:p@db.local:6543/x", 5432),
            Some(("db.local".into(), 6543))
        );
        assert_eq!(
            host_port("postgres://db/x", 5432),
            Some(("db".into(), 5432))
        );
        assert_eq!(
            host_port("kafka://[::1]:9093", 9092),
            Some(("::1".into(), 9093))
        );
        assert_eq!(
            host_port("http://example", 80),
            Some(("example".into(), 80))
        );
    }
}
