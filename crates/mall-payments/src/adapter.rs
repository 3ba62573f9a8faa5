//! A provider adapter: the mall's HTTP client of one payment provider
//! (create a payment, ask its status, refund). Requests carry the
//! provider's key as a bearer token; answers are JSON. A small pool of
//! keep-alive connections per provider; a request that does not answer
//! within its timeout is abandoned (the router counts it as a timeout).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("provider {0} unreachable: {1}")]
    Unreachable(String, String),
    #[error("provider {0} did not answer in time")]
    Timeout(String),
    #[error("provider {0} answered {1}: {2}")]
    Refused(String, u16, String),
    #[error("provider {0} answered nonsense: {1}")]
    Garbled(String, String),
}

pub struct Provider {
    pub name: String,
    pub addr: SocketAddr,
    secret: String,
    timeout: Duration,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

pub use crate::core::ProviderStatus;

const IDLE_MAX: usize = 64;

impl Provider {
    pub fn new(name: String, addr: SocketAddr, secret: String, timeout: Duration) -> Provider {
        Provider {
            name,
            addr,
            secret,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn secret(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, AdapterError> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match pooled {
                Some(mut s) => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                None => break,
            }
        }
        let unreachable =
            |e: &dyn std::fmt::Display| AdapterError::Unreachable(self.name.clone(), e.to_string());
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| unreachable(&e))?;
        stream.set_nodelay(true).ok();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request; `Ok((status, body))` for any answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), AdapterError> {
        let work = async {
            let mut sender = self.connection().await?;
            let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string())
                .header("authorization", format!("Bearer {}", self.secret))
                .header("content-type", "application/json")
                .body(Full::new(bytes))
                .map_err(|e| AdapterError::Garbled(self.name.clone(), e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| AdapterError::Unreachable(self.name.clone(), e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| AdapterError::Unreachable(self.name.clone(), e.to_string()))?
                .to_bytes();
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_MAX {
                idle.push(sender);
            }
            drop(idle);
            let json = if body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| AdapterError::Garbled(self.name.clone(), e.to_string()))?
            };
            Ok((status, json))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| AdapterError::Timeout(self.name.clone()))?
    }

    fn refused(&self, status: u16, json: &serde_json::Value) -> AdapterError {
        let code = json["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        AdapterError::Refused(self.name.clone(), status, code)
    }

    /// Asks the provider to charge `amount_fen`; it answers later by callback.
    pub async fn create(
        &self,
        payment_id: u64,
        amount_fen: u64,
        method: &str,
        callback_url: &str,
    ) -> Result<(), AdapterError> {
        let body = serde_json::json!({
            "payment_id": payment_id.to_string(),
            "amount_fen": amount_fen,
            "method": method,
            "callback_url": callback_url,
        });
        match self.call(Method::POST, "/v1/payments", Some(body)).await? {
            (200..=299, _) => Ok(()),
            (status, json) => Err(self.refused(status, &json)),
        }
    }

    /// The provider's word on a payment (reconciliation after a restart).
    pub async fn status(&self, payment_id: u64) -> Result<ProviderStatus, AdapterError> {
        match self
            .call(Method::GET, &format!("/v1/payments/{payment_id}"), None)
            .await?
        {
            (200, json) => Ok(match json["status"].as_str() {
                Some("pending") => ProviderStatus::Pending,
                Some("succeeded") => ProviderStatus::Succeeded,
                Some("failed") => ProviderStatus::Failed,
                _ => ProviderStatus::Unknown,
            }),
            (404, _) => Ok(ProviderStatus::Unknown),
            (status, json) => Err(self.refused(status, &json)),
        }
    }

    /// Gives money back to the payer; idempotent on `refund_id`.
    pub async fn refund(
        &self,
        refund_id: u64,
        payment_id: u64,
        amount_fen: u64,
    ) -> Result<(), AdapterError> {
        let body = serde_json::json!({
            "refund_id": refund_id.to_string(),
            "payment_id": payment_id.to_string(),
            "amount_fen": amount_fen,
        });
        match self.call(Method::POST, "/v1/refunds", Some(body)).await? {
            (200..=299, _) => Ok(()),
            (status, json) => Err(self.refused(status, &json)),
        }
    }
}
