//! The payment-channel simulator.
//!
//! Payment providers cannot be reached from here, so this crate plays N of
//! them, each an HTTP server on its own loopback port that speaks HTTP the
//! way a real provider does; the mall server's adapters are real HTTP
//! clients of these. Each provider has a capacity, a latency distribution, a
//! failure rate and a schedule of outages, all from the channels file
//! ([`config`]), which the mall server reads too.
//!
//! # Code map
//! - [`config`]: the channels file (TOML): [`config::ChannelsFile`],
//!   [`config::ChannelSpec`], [`config::Outage`]; `load`, `parse`, `validate`.
//! - `provider`: one provider's books, sans-IO: payments, refunds, the
//!   capacity window, the counters ([`Stats`]). Takes `now_ms`, returns what
//!   to do.
//! - `server`: the HTTP edge (axum): bearer check, parsing, the callback
//!   delivery task per payment.
//! - `callback`: the outbound hyper client: loopback-only targets, a small
//!   keep-alive pool, a semaphore on requests in flight.
//! - draws come from the house's seeded generator (`mall_core::rng`): a run
//!   is reproducible from its seed given the same order of requests.
//!
//! # API of each provider
//! JSON in and out. Every request needs `Authorization: Bearer <secret>`
//! (else 401 `unauthorized`); bodies are at most 16 KiB (413
//! `body_too_large`); unknown fields are refused; errors are
//! `{"error": {"code": "...", "message": "..."}}`. Ids are decimal u64 in
//! strings (`"42"`, canonical: no sign or leading zeros).
//!
//! - `POST /v1/payments` `{"payment_id", "amount_fen", "method":
//!   "card"|"third_party", "callback_url": "http://127.0.0.1:PORT/..."}` →
//!   202 `{"payment_id", "status": "pending"}`. The same payment_id again
//!   answers the same and schedules nothing; with another amount or method,
//!   409 `payment_id_reused`. 400 `malformed_json`, `invalid_request`,
//!   `invalid_id`, `invalid_amount`, `invalid_callback_url` (not loopback
//!   `http://`), `method_not_supported`. Over capacity (more than
//!   `capacity_per_s` creates in the current second, or `max_concurrency`
//!   pending): 429 `over_capacity` with `over_capacity = "refuse"`, else
//!   accepted with the callback later by the time the excess takes to drain
//!   at `capacity_per_s`. Outages: `timeout` holds the request 30 s
//!   unanswered (then 504 with `Connection: close`) and sends no callbacks
//!   until it ends; `error` answers 503 `unavailable`; `slow` multiplies the
//!   latency; `decline` fails every payment created in it. 503
//!   `payments_full` once `payments_max` payments are kept.
//! - Callback: after the drawn latency (log-normal from median and p99), a
//!   `POST callback_url` with `{"event_id", "channel", "payment_id",
//!   "status": "succeeded"|"failed", "amount_fen"}` and the header
//!   `X-Mall-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//!   ([`mall_router::signature`]). Until the receiver answers 2xx it is retried
//!   5 times, 100 ms backoff doubling, same event_id, signed afresh.
//!   Callbacks go concurrently, at most `callbacks_in_flight_max` at once.
//! - `GET /v1/payments/{payment_id}` → `{"payment_id", "status":
//!   "pending"|"succeeded"|"failed", "amount_fen", "refunded_fen"}`, or 404
//!   `unknown_payment`. A payment turns from pending at its callback time.
//! - `POST /v1/refunds` `{"refund_id", "payment_id", "amount_fen"}` → 200
//!   `{"refund_id", "status": "refunded"}`; idempotent on refund_id (409
//!   `refund_id_reused` if it comes back different); 409
//!   `refund_exceeds_payment`, 409 `payment_not_succeeded`, 404
//!   `unknown_payment`.
//! - `GET /v1/stats` → the [`Stats`] counters.
//!
//! Outages affect creates and callbacks only; status and refund requests
//! are always answered.
//!
//! # Memory
//! Each channel keeps every payment and refund it took, each map bounded by
//! `payments_max` (default 2,000,000: up to about 140 MB per channel);
//! beyond, 503 `payments_full`. Payments are never evicted: a channel that
//! is full stays full until restarted. Pending callbacks are one sleeping
//! task each (bounded by the same number).

pub mod config;

mod callback;
mod provider;
mod server;

pub use provider::{PaymentStatus, Stats};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Simulator::shutdown`] waits for a server to finish its
/// in-flight requests before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The running providers.
pub struct Simulator {
    /// One per channel, in file order, with its bound address.
    channels: Vec<(Arc<server::Channel>, SocketAddr)>,
    /// Set to true once, by `shutdown`.
    shutdown: watch::Sender<bool>,
    /// The server tasks, one per channel.
    servers: Vec<JoinHandle<()>>,
}

/// Why a simulator did not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("channel {channel:?}: binding {addr}: {source}")]
    Bind {
        channel: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Simulator {
    /// Binds every channel's port (0 = any) on `host` and serves until
    /// shutdown. The outage clock starts now. `seed` drives every latency
    /// and failure draw.
    pub async fn start(file: config::ChannelsFile, seed: u64) -> Result<Simulator, SimError> {
        config::validate(&file)?;
        // Bind everything first, so a port in use leaves nothing running.
        let mut listeners = Vec::with_capacity(file.channel.len());
        for spec in &file.channel {
            let bind_error = |source| SimError::Bind {
                channel: spec.name.clone(),
                addr: SocketAddr::new(file.host, spec.port),
                source,
            };
            let listener = tokio::net::TcpListener::bind((file.host, spec.port))
                .await
                .map_err(bind_error)?;
            let addr = listener.local_addr().map_err(bind_error)?;
            listeners.push((listener, addr));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let callbacks = Arc::new(callback::CallbackClient::new(file.callbacks_in_flight_max));
        let started = tokio::time::Instant::now();
        let mut seeds = mall_core::rng::Rng::new(seed);
        let mut channels = Vec::new();
        let mut servers = Vec::new();
        for (spec, (listener, addr)) in file.channel.into_iter().zip(listeners) {
            let provider = provider::Provider::new(spec, file.payments_max, seeds.next_u64());
            let channel = Arc::new(server::Channel::new(
                provider,
                started,
                callbacks.clone(),
                shutdown_rx.clone(),
            ));
            let router = server::router(channel.clone());
            servers.push(tokio::spawn(server::serve(
                listener,
                router,
                shutdown_rx.clone(),
            )));
            tracing::info!(channel = %channel.name, %addr, "channel listening");
            channels.push((channel, addr));
        }
        Ok(Simulator {
            channels,
            shutdown,
            servers,
        })
    }

    /// The address channel `name` listens on.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|(c, _)| c.name == name)
            .map(|(_, addr)| *addr)
    }

    /// Simulated providers for `file`'s channels in this process, each on a
    /// free port, and the mall's description of each (demos and tests).
    pub async fn on_free_ports(
        mut file: config::ChannelsFile,
        seed: u64,
    ) -> Result<(Simulator, Vec<mall_router::ChannelSetup>), SimError> {
        for c in &mut file.channel {
            c.port = 0;
        }
        let simulator = Simulator::start(file.clone(), seed).await?;
        let setups = file.setups(&simulator.addrs())?;
        Ok((simulator, setups))
    }

    /// Every channel's name and address, in file order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.channels
            .iter()
            .map(|(c, addr)| (c.name.clone(), *addr))
            .collect()
    }

    /// Channel `name`'s counters, as `GET /v1/stats` shows them.
    pub fn stats(&self, name: &str) -> Option<Stats> {
        self.channels
            .iter()
            .find(|(c, _)| c.name == name)
            .map(|(c, _)| c.provider().stats())
    }

    /// Stops accepting, answers held requests, drops pending callbacks and
    /// waits (up to 5 s) for in-flight requests to finish. Dropping a
    /// `Simulator` stops it too, without waiting.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for mut server in self.servers {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}
