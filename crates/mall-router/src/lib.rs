//! Online payment, sans-IO.
//!
//! - [`signature`]: how a payment provider signs its callbacks (HMAC-SHA256
//!   over a timestamp and the body), shared by the adapters and the channel
//!   simulator.
//! - [`router`]: the payment channel scheduler: which channel each attempt
//!   goes to and when (pacing, health weights, circuit breakers, a bounded
//!   FIFO with deadlines), on virtual time.
//! - [`bench`]: the wall-time cost of one routing decision.

/// The cost of one routing decision, measured (the crate's only clock read).
pub mod bench;
/// The payment channel scheduler, sans-IO on virtual time.
pub mod router;
pub mod signature;
