//! Online payment, sans-IO.
//!
//! - [`signature`]: how a payment provider signs its callbacks (HMAC-SHA256
//!   over a timestamp and the body), shared by the adapters and the channel
//!   simulator.

pub mod signature;
