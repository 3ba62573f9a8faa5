//! The payment service's settings.

use mall_router::router::RouterConfig;
use std::net::SocketAddr;

pub use mall_router::ChannelSetup;

#[derive(Clone, Debug)]
pub struct PaymentsConfig {
    pub channels: Vec<ChannelSetup>,
    pub router: RouterConfig,
    /// Where providers send callbacks: the server's root, e.g. `http://127.0.0.1:8080`.
    pub callback_base: String,
    /// How long a payment request waits for its outcome before answering "pending".
    pub wait_ms: u64,
    /// How long a provider may take to accept a payment.
    pub provider_timeout_ms: u64,
    /// Channels tried per payment, at most.
    pub tries_max: usize,
    /// Payments being *started* at once (reading the order, reserving the
    /// money in the ledger, handing the try to the router), at most; more
    /// wait their turn, first come, first served. A payment waiting for its
    /// provider holds no turn: how many are with providers is bounded by
    /// the router (each channel's capacity and concurrency, and its queue
    /// with deadlines), not by this.
    pub in_process_max: usize,
    /// How long tries given up are watched: their provider is asked now and
    /// then whether it charged after all (a callback may never come), and a
    /// charge is handed back.
    pub watch_ms: i64,
    /// Largest single top-up, in fen.
    pub top_up_max_fen: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            channels: Vec::new(),
            router: RouterConfig::default(),
            callback_base: "http://127.0.0.1:8080".into(),
            wait_ms: 5_000,
            in_process_max: 64,
            watch_ms: 15 * 60_000,
            provider_timeout_ms: 1_000,
            tries_max: 3,
            top_up_max_fen: 5_000_000,
        }
    }
}

impl PaymentsConfig {
    /// The settings for a server listening on `server`, paying through
    /// `channels` (none: wallet payments only). Providers call back on
    /// loopback; a server on every address is also there.
    pub fn for_server(server: SocketAddr, channels: Vec<ChannelSetup>) -> PaymentsConfig {
        let callback = if server.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], server.port()))
        } else {
            server
        };
        PaymentsConfig {
            channels,
            callback_base: format!("http://{callback}"),
            ..PaymentsConfig::default()
        }
    }
}
