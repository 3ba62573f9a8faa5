//! A provider adapter: the mall's HTTP client of one payment provider
//! (create a payment, ask its status, refund). Requests carry the
//! provider's key as a bearer token; answers are JSON. hyper-util's pooled
//! client keeps keep-alive connections to the provider; a request that
//! does not answer within its timeout is abandoned (the router counts it
//! as a timeout).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
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
    client: Client<HttpConnector, Full<Bytes>>,
}

pub use crate::core::ProviderStatus;

/// Idle keep-alive connections kept to one provider.
const IDLE_MAX: usize = 64;
/// An idle pooled connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A provider's answer is read up to this size.
const ANSWER_BYTES_MAX: usize = 256 * 1024;

impl Provider {
    pub fn new(name: String, addr: SocketAddr, secret: String, timeout: Duration) -> Provider {
        Provider {
            name,
            addr,
            secret,
            timeout,
            client: {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(IDLE_MAX)
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .build(connector)
            },
        }
    }

    pub fn secret(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// One request; `Ok((status, body))` for any answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), AdapterError> {
        let work = async {
            let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
            let request = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr))
                .header("authorization", format!("Bearer {}", self.secret))
                .header("content-type", "application/json")
                .body(Full::new(bytes))
                .map_err(|e| AdapterError::Garbled(self.name.clone(), e.to_string()))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| AdapterError::Unreachable(self.name.clone(), e.to_string()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| AdapterError::Unreachable(self.name.clone(), e.to_string()))?
                .to_bytes();
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
