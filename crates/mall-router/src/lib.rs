//! Online payment, sans-IO.
//!
//! - [`signature`]: how a payment provider signs its callbacks (HMAC-SHA256
//!   over a timestamp and the body), shared by the adapters and the channel
//!   simulator.
//! - [`router`]: the payment channel scheduler: which channel each attempt
//!   goes to and when (pacing, health weights, circuit breakers, a bounded
//!   FIFO with deadlines), on virtual time.
//! - [`bench`]: the wall-time cost of one routing decision.
//! - [`ChannelSetup`]: the one description of a payment channel: what the
//!   router routes by, and where and how its provider is reached. The
//!   channels file (`mall-provider-sim`) produces it; the payment service
//!   (`mall-payments`) runs on it.

/// The cost of one routing decision, measured (the crate's only clock read).
pub mod bench;
/// The payment channel scheduler, sans-IO on virtual time.
pub mod router;
pub mod signature;

/// One payment channel: what the router may send it (`route`), where its
/// provider listens and the key the mall calls it with and checks its
/// callbacks by.
#[derive(Clone, Debug)]
pub struct ChannelSetup {
    pub route: router::ChannelConfig,
    pub addr: std::net::SocketAddr,
    pub secret: String,
}
