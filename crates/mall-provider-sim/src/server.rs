//! The HTTP edge of one simulated provider: axum routes, bearer check,
//! strict JSON parsing into [`crate::provider`] requests, and the callback
//! delivery task spawned for each new payment. The only module that knows
//! HTTP on the serving side.

use crate::callback::{CallbackClient, CallbackTarget};
use crate::config::PayMethod;
use crate::provider::{
    CreatePayment, CreateRefund, CreateReply, PaymentStatus, Provider, Refusal, Settled,
};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Request bodies larger than this are refused with 413.
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Connections one channel holds open at most; beyond, new ones wait in the
/// kernel's backlog (held `timeout` requests each keep one open).
pub const CONNECTIONS_MAX: usize = 4096;
/// A create during a `timeout` outage is held this long, then answered 504
/// with `Connection: close` (axum cannot drop a connection unanswered).
pub const HOLD: Duration = Duration::from_secs(30);
/// Callback delivery: retries after the first attempt, and the first backoff
/// (doubled each time: 100, 200, 400, 800, 1600 ms).
pub const CALLBACK_RETRIES: u32 = 5;
pub const CALLBACK_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Amounts above this (10 billion yuan) are refused as implausible, which
/// also keeps every sum of amounts far from overflow.
pub const AMOUNT_FEN_MAX: i64 = 1_000_000_000_000;

// A create body must be able to carry the longest callback URL.
const _: () = assert!(crate::callback::CALLBACK_URL_BYTES_MAX + 256 < BODY_BYTES_MAX);

/// One running channel: what every handler and callback task shares.
pub struct Channel {
    pub name: String,
    secret: String,
    /// The books; locked for short, await-free sections only.
    provider: Mutex<Provider>,
    /// The outage clock's zero.
    started: Instant,
    callbacks: Arc<CallbackClient>,
    /// Turns true once, at shutdown: held requests answer, callback tasks end.
    shutdown: watch::Receiver<bool>,
}

impl Channel {
    pub fn new(
        provider: Provider,
        started: Instant,
        callbacks: Arc<CallbackClient>,
        shutdown: watch::Receiver<bool>,
    ) -> Channel {
        Channel {
            name: provider.spec().name.clone(),
            secret: provider.spec().secret.clone(),
            provider: Mutex::new(provider),
            started,
            callbacks,
            shutdown,
        }
    }

    pub fn provider(&self) -> MutexGuard<'_, Provider> {
        self.provider
            .lock()
            .expect("provider lock poisoned: a core assertion failed")
    }

    /// Milliseconds since the simulator started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn shutting_down(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the simulator is gone: that is a shutdown too.
        let _ = shutdown.wait_for(|&down| down).await;
    }
}

/// The provider's API.
pub fn router(channel: Arc<Channel>) -> Router {
    Router::new()
        .route("/v1/payments", post(create_payment))
        .route("/v1/payments/{payment_id}", get(get_payment))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/stats", get(get_stats))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            channel.clone(),
            require_bearer,
        ))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(channel)
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let listener = LimitedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
    };
    let signal = async move {
        let _ = shutdown.wait_for(|&down| down).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await
    {
        tracing::error!(error = %e, "channel server failed");
    }
}

// ---- errors -------------------------------------------------------------

/// A refused request: `{"error": {"code": ..., "message": ...}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match r {
            Refusal::MethodNotSupported => StatusCode::BAD_REQUEST,
            Refusal::OverCapacity => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable | Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UnknownPayment => StatusCode::NOT_FOUND,
            Refusal::PaymentIdReused
            | Refusal::PaymentNotSucceeded
            | Refusal::RefundExceedsPayment
            | Refusal::RefundIdReused => StatusCode::CONFLICT,
        };
        api_error(status, r.code(), r.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---- parsing at the edge ------------------------------------------------

/// The body as JSON of type `T`: 413 if too large, 400 `malformed_json` if
/// not JSON, 400 `invalid_request` if it does not fit `T`. The content type
/// is not checked.
fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {BODY_BYTES_MAX} bytes"),
            )
        } else {
            api_error(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the body could not be read",
            )
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => "invalid_request",
            _ => "malformed_json",
        };
        api_error(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

/// A decimal u64 in canonical form (no sign, no leading zeros).
fn parse_id(text: &str, field: &str) -> ApiResult<u64> {
    text.parse::<u64>()
        .ok()
        .filter(|id| id.to_string() == text)
        .ok_or_else(|| {
            api_error(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!("{field} must be a decimal u64 as a string, e.g. \"42\""),
            )
        })
}

fn check_amount(amount_fen: i64) -> ApiResult<i64> {
    if (1..=AMOUNT_FEN_MAX).contains(&amount_fen) {
        Ok(amount_fen)
    } else {
        Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            format!("amount_fen must be 1 to {AMOUNT_FEN_MAX}"),
        ))
    }
}

// ---- handlers -----------------------------------------------------------

/// Every route, the fallback included, needs `Authorization: Bearer <secret>`.
async fn require_bearer(State(ch): State<Arc<Channel>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|token| constant_time_eq(token.as_bytes(), ch.secret.as_bytes())) {
        let mut response = api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <the channel's secret>",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePaymentBody {
    payment_id: String,
    amount_fen: i64,
    method: PayMethod,
    callback_url: String,
}

#[derive(Serialize)]
struct PaymentCreated {
    payment_id: String,
    status: PaymentStatus,
}

async fn create_payment(
    State(ch): State<Arc<Channel>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body: CreatePaymentBody = parse_body(body)?;
    let payment_id = parse_id(&body.payment_id, "payment_id")?;
    let amount_fen = check_amount(body.amount_fen)?;
    let target = CallbackTarget::parse(&body.callback_url)
        .map_err(|why| api_error(StatusCode::BAD_REQUEST, "invalid_callback_url", why.0))?;
    let request = CreatePayment {
        payment_id,
        amount_fen,
        method: body.method,
    };
    let reply = ch.provider().create(request, ch.now_ms())?;
    match reply {
        CreateReply::Accepted { delay_ms } => {
            let task_ch = ch.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = deliver(&task_ch, payment_id, target, delay_ms) => {}
                    () = task_ch.shutting_down() => {}
                }
            });
        }
        CreateReply::Repeated => {}
        CreateReply::Held => return Ok(hold(&ch).await),
    }
    let answer = PaymentCreated {
        payment_id: payment_id.to_string(),
        status: PaymentStatus::Pending,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// A `timeout` outage: say nothing for [`HOLD`] (clients give up before),
/// or until shutdown.
async fn hold(ch: &Channel) -> Response {
    tokio::select! {
        () = tokio::time::sleep(HOLD) => {}
        () = ch.shutting_down() => {}
    }
    let mut response = api_error(
        StatusCode::GATEWAY_TIMEOUT,
        "timed_out",
        "the provider did not answer",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[derive(Serialize)]
struct PaymentShown {
    payment_id: String,
    status: PaymentStatus,
    amount_fen: i64,
    refunded_fen: i64,
}

async fn get_payment(
    State(ch): State<Arc<Channel>>,
    payment_id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<PaymentShown>> {
    let payment_id = payment_id.map_or_else(|_| String::new(), |Path(id)| id);
    let id = parse_id(&payment_id, "payment_id")?;
    let view = ch.provider().payment(id)?;
    Ok(Json(PaymentShown {
        payment_id: id.to_string(),
        status: view.status,
        amount_fen: view.amount_fen,
        refunded_fen: view.refunded_fen,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRefundBody {
    refund_id: String,
    payment_id: String,
    amount_fen: i64,
}

#[derive(Serialize)]
struct RefundDone {
    refund_id: String,
    status: &'static str,
}

async fn create_refund(
    State(ch): State<Arc<Channel>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RefundDone>> {
    let body: CreateRefundBody = parse_body(body)?;
    let request = CreateRefund {
        refund_id: parse_id(&body.refund_id, "refund_id")?,
        payment_id: parse_id(&body.payment_id, "payment_id")?,
        amount_fen: check_amount(body.amount_fen)?,
    };
    ch.provider().refund(request)?;
    Ok(Json(RefundDone {
        refund_id: request.refund_id.to_string(),
        status: "refunded",
    }))
}

async fn get_stats(State(ch): State<Arc<Channel>>) -> Json<crate::Stats> {
    Json(ch.provider().stats())
}

async fn not_found() -> ApiError {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

// ---- callbacks ----------------------------------------------------------

/// The callback body, in this field order.
#[derive(Serialize)]
struct CallbackBody<'a> {
    event_id: String,
    channel: &'a str,
    payment_id: String,
    status: PaymentStatus,
    amount_fen: i64,
}

/// Waits out the payment's latency, settles it and delivers its callback:
/// up to 1 + [`CALLBACK_RETRIES`] attempts until the receiver answers 2xx,
/// the same event (and event_id) every time, signed afresh each attempt.
async fn deliver(ch: &Channel, payment_id: u64, target: CallbackTarget, delay_ms: u64) {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let Some(settled) = ch.provider().settle(payment_id) else {
        return;
    };
    let body = Bytes::from(callback_body(&ch.name, settled));
    let mut backoff = CALLBACK_BACKOFF_FIRST;
    for attempt in 0..=CALLBACK_RETRIES {
        wait_out_timeout_outage(ch).await;
        let signature = mall_router::signature::sign(ch.secret.as_bytes(), unix_now_ms(), &body);
        match ch.callbacks.post(&target, body.clone(), &signature).await {
            Ok(status) if status.is_success() => {
                ch.provider().callback_delivered();
                return;
            }
            Ok(status) => {
                let channel = &ch.name;
                tracing::debug!(%channel, payment_id, attempt, %status, "callback refused");
            }
            Err(e) => {
                let channel = &ch.name;
                tracing::debug!(%channel, payment_id, attempt, error = %e, "callback failed");
            }
        }
        if attempt < CALLBACK_RETRIES {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::warn!(channel = %ch.name, payment_id, url = %target.authority, "callback given up");
    ch.provider().callback_given_up();
}

fn callback_body(channel: &str, settled: Settled) -> Vec<u8> {
    let body = CallbackBody {
        // One event per payment, so channel and payment make it unique.
        event_id: format!("evt-{channel}-{}", settled.payment_id),
        channel,
        payment_id: settled.payment_id.to_string(),
        status: settled.status,
        amount_fen: settled.amount_fen,
    };
    serde_json::to_vec(&body).expect("a struct of strings and integers serializes")
}

/// During a `timeout` outage no callbacks leave; they go when it ends.
async fn wait_out_timeout_outage(ch: &Channel) {
    loop {
        let now_ms = ch.now_ms();
        let Some(end_ms) = ch.provider().callbacks_held_until_ms(now_ms) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(end_ms.saturating_sub(now_ms))).await;
    }
}

/// The signature's clock: real time, as the receiver checks it against its own.
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---- listener -----------------------------------------------------------

/// A TCP listener that holds at most [`CONNECTIONS_MAX`] connections open.
struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

/// A connection and its place under the limit, released when it closes.
struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let stream = LimitedStream {
                        stream,
                        _permit: permit,
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of descriptors, or reset before accept: back off
                    // briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for LimitedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
