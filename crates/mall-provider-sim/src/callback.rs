//! Outbound callbacks: a loopback-only target, hyper-util's pooled HTTP/1
//! client (keep-alive connections per receiver), and a semaphore bounding
//! the requests in flight across all channels.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::uri::PathAndQuery;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Callback URLs longer than this are refused.
pub const CALLBACK_URL_BYTES_MAX: usize = 2048;
/// One delivery attempt (connect, send, read the answer) at most.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The receiver's answer body is read (and thrown away) up to this size.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Idle keep-alive connections kept per receiver address.
const IDLE_PER_TARGET_MAX: usize = 32;
/// An idle pooled connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a callback goes: a loopback `http://` URL, parsed once at create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackTarget {
    pub addr: SocketAddr,
    /// `host[:port]` as given, for the Host header.
    pub authority: String,
    pub path: PathAndQuery,
}

/// Why a callback URL is refused (the message says what is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadCallbackUrl(pub String);

impl CallbackTarget {
    /// Parses `http://HOST[:PORT][/PATH][?QUERY]`, where HOST is a loopback
    /// IP literal or `localhost` (no name lookups).
    pub fn parse(url: &str) -> Result<CallbackTarget, BadCallbackUrl> {
        Self::parse_text(url).map_err(BadCallbackUrl)
    }

    fn parse_text(url: &str) -> Result<CallbackTarget, String> {
        if url.len() > CALLBACK_URL_BYTES_MAX {
            return Err(format!(
                "callback_url is longer than {CALLBACK_URL_BYTES_MAX} bytes"
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or("callback_url must be an http:// URL")?;
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let path = PathAndQuery::try_from(path)
            .map_err(|_| "callback_url has an invalid path".to_string())?;
        let addr = parse_authority(authority)?;
        if !addr.ip().is_loopback() {
            return Err("callback_url must point to a loopback address".into());
        }
        Ok(CallbackTarget {
            addr,
            authority: authority.to_string(),
            path,
        })
    }
}

fn parse_authority(authority: &str) -> Result<SocketAddr, String> {
    let bad = || format!("callback_url has a bad host or port: {authority:?}");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            a => (host, Some(a.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?,
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>().map_err(|_| bad())?
    };
    Ok(SocketAddr::new(ip, port))
}

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("http: {0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("timed out")]
    Timeout,
}

/// Shared by every channel of a simulator.
pub struct CallbackClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Requests in flight; `callbacks_in_flight_max` permits.
    in_flight: Semaphore,
}

impl CallbackClient {
    pub fn new(in_flight_max: usize) -> CallbackClient {
        assert!(in_flight_max > 0);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_TARGET_MAX)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        CallbackClient {
            client,
            in_flight: Semaphore::new(in_flight_max),
        }
    }

    /// One delivery attempt: POSTs `body` with the signature header and
    /// returns the receiver's status. (A pooled connection the receiver
    /// closed meanwhile is retried on a fresh one by the client; receivers
    /// de-duplicate by event_id, so a repeat is harmless.)
    pub async fn post(
        &self,
        target: &CallbackTarget,
        body: Bytes,
        signature: &str,
    ) -> Result<StatusCode, CallbackError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let request = build_request(target, body, signature)?;
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.send(request))
            .await
            .map_err(|_| CallbackError::Timeout)?
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<StatusCode, CallbackError> {
        let response = self.client.request(request).await?;
        let status = response.status();
        // Read the answer to the end so the connection can carry the next one.
        Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| CallbackError::Body(e.to_string()))?;
        Ok(status)
    }
}

/// The request to `target`: to its (loopback) address, naming its host.
fn build_request(
    target: &CallbackTarget,
    body: Bytes,
    signature: &str,
) -> Result<Request<Full<Bytes>>, CallbackError> {
    Ok(Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{}", target.addr, target.path.as_str()))
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(mall_router::signature::HEADER, signature)
        .body(Full::new(body))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls() {
        let t = CallbackTarget::parse("http://127.0.0.1:9000/pay/cb?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert_eq!(t.path.as_str(), "/pay/cb?x=1");
        let t = CallbackTarget::parse("http://localhost").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.path.as_str(), "/");
        let t = CallbackTarget::parse("http://[::1]:81?q").unwrap();
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
        assert_eq!(t.path.as_str(), "/?q");
        for bad in [
            "https://127.0.0.1:9000/",
            "http://10.0.0.1:9000/",
            "http://example.com/",
            "http://user@127.0.0.1:9000/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:9000/a b",
            "http://[::1/",
            "http:///x",
            "ftp://127.0.0.1/",
            "",
        ] {
            assert!(CallbackTarget::parse(bad).is_err(), "{bad}");
        }
        let long = format!("http://127.0.0.1:9000/{}", "a".repeat(3000));
        assert!(CallbackTarget::parse(&long).is_err());
    }
}
