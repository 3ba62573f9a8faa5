//! A small HTTP/1.1 client over hyper: one keep-alive connection per worker,
//! reconnected on error. Only loopback targets unless told otherwise.
//!
//! Against a loopback target, connections come from many 127.0.0.0/8
//! source addresses (eight per address), as a night's shoppers come from
//! many addresses: the server's per-address connection cap sees a crowd,
//! not one client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("timed out")]
    Timeout,
    #[error("bad target {0:?}: {1}")]
    Target(String, String),
}

/// Where requests go: `http://host:port`, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    /// One or more servers (the nodes of a cluster); each connection
    /// starts on one, in turn, and moves to the next when it cannot connect.
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub addr: SocketAddr,
    pub authority: String,
}

impl Target {
    /// Parses `http://HOST:PORT`, or several separated by commas. Refuses
    /// anything but loopback unless `allow_remote` (load tests only ever
    /// hit our own machine by default).
    pub fn parse(urls: &str, allow_remote: bool) -> Result<Target, HttpError> {
        let nodes = urls
            .split(',')
            .map(|url| Target::parse_one(url.trim(), allow_remote))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target { nodes })
    }

    fn parse_one(url: &str, allow_remote: bool) -> Result<Node, HttpError> {
        let bad = |why: &str| HttpError::Target(url.into(), why.into());
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// targets"))?;
        let authority = rest.trim_end_matches('/').to_string();
        if authority.contains('/') {
            return Err(bad("give the server's root, e.g. http://127.0.0.1:8080"));
        }
        let host_port = if authority.contains(':') {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("no address"))?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(bad(
                "not a loopback address; pass --allow-remote to load a remote server",
            ));
        }
        Ok(Node { addr, authority })
    }

    /// The first server (the one reads and audits go to).
    pub fn first(&self) -> &Node {
        &self.nodes[0]
    }
}

/// One keep-alive connection.
pub struct Conn {
    target: Target,
    /// The server this connection talks to now (an index into the target's).
    node: usize,
    /// The local address it connects from (loopback targets), kept across
    /// reconnects.
    source: Option<std::net::IpAddr>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// Connections made so far in this process, to spread their sources.
static CONNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Connections per source address.
const CONNS_PER_SOURCE: u32 = 8;

impl Conn {
    pub fn new(target: Target) -> Conn {
        let made = CONNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = made as usize % target.nodes.len();
        let source = match target.nodes[node].addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_loopback() => {
                let n = made / CONNS_PER_SOURCE;
                // 127.1.x.y: never the server's own 127.0.0.1.
                Some(std::net::IpAddr::from([
                    127,
                    1,
                    (n / 250 % 250) as u8,
                    (n % 250 + 1) as u8,
                ]))
            }
            _ => None,
        };
        Conn {
            target,
            node,
            source,
            sender: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.target.nodes[self.node].addr
    }

    async fn open(&self) -> std::io::Result<tokio::net::TcpStream> {
        if let Some(source) = self.source {
            let socket = tokio::net::TcpSocket::new_v4()?;
            // A machine without the whole 127/8 on loopback: plain connect.
            if socket.bind(SocketAddr::new(source, 0)).is_ok() {
                return socket.connect(self.addr()).await;
            }
        }
        tokio::net::TcpStream::connect(self.addr()).await
    }

    /// Opens the connection now (clients keep theirs open before a sale).
    pub async fn warm_up(&mut self) -> Result<(), HttpError> {
        self.connect().await.map(|_| ())
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = match self.open().await {
                Ok(stream) => stream,
                Err(e) => {
                    // That server is gone (or draining): the next request
                    // goes to the next one.
                    let addr = self.addr();
                    self.node = (self.node + 1) % self.target.nodes.len();
                    return Err(HttpError::Connect(addr, e));
                }
            };
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected above"))
    }

    /// Sends one request and reads the whole response, within `timeout`.
    /// On any failure the connection is dropped and made anew next time.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let result =
            tokio::time::timeout(timeout, self.send_inner(method, path, token, key, body)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(HttpError::Timeout)
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let authority = self.target.nodes[self.node].authority.clone();
        let sender = self.connect().await?;
        sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(b.to_string())))?,
            None => req.body(Full::new(Bytes::new()))?,
        };
        let response = sender.send_request(req).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_unless_allowed() {
        assert!(Target::parse("http://127.0.0.1:8080", false).is_ok());
        assert!(Target::parse("http://localhost:8080/", false).is_ok());
        assert!(Target::parse("http://[::1]:8080", false).is_ok());
        let remote = Target::parse("http://10.1.2.3:8080", false)
            .unwrap_err()
            .to_string();
        assert!(remote.contains("--allow-remote"), "{remote}");
        assert!(Target::parse("http://10.1.2.3:8080", true).is_ok());
        assert!(Target::parse("https://127.0.0.1:8080", false).is_err());
        assert!(Target::parse("http://127.0.0.1:8080/v1", false).is_err());
    }
}
