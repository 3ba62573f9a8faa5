//! The payment service: every fen a shopper pays, tops up or gets back.
//!
//! Money moves only through the ledger (`mall-ledger`, run by the engine);
//! this crate decides which transfers to make and in what order, and talks
//! to payment providers through the channel router (`mall-router`) and the
//! provider [`adapter`]s.
//!
//! **A payment attempt ("try") is a pending ledger transfer.** Before a
//! provider hears of a try, a pending transfer `channel clearing → escrow`
//! (or `→ wallet` for a top-up) with the try's id is durable. The
//! provider's signed callback then decides it: success confirms the order
//! (hold → sold) and posts the transfer; failure voids it and the payment
//! is retried on another eligible channel. The ledger is the record, so a
//! restart rebuilds everything from `ledger.db` and the orders, and asks
//! providers about tries still pending.
//!
//! **Never charged twice.** An order has at most one try in flight. A try
//! given up (timed out, refused) is voided before another starts; if its
//! provider charges anyway (a late success), the money is recorded and
//! handed back at once (`late_capture` + `late_refund`, and a provider
//! refund). The same happens to a success that arrives after the order's
//! hold expired: the order stays expired. Every transfer id that repeats
//! work (post, void, settle, refund of a cancel) is derived from what it is
//! for, so doing it twice is a ledger replay, not a second movement.
//!
//! **Wallet payments** are two-phase in the ledger: pending `wallet →
//! escrow` (the wallet's limit refuses an overdraft), confirm the order,
//! post (or void if the order could not be confirmed).

pub mod adapter;
mod after_sale;
pub mod config;
pub mod core;
pub mod errors;
mod service;
pub mod sim;
pub mod views;

pub use config::{ChannelSetup, PaymentsConfig};
pub use errors::PayError;
pub use service::{CancelHold, Payments};
pub use views::{Method, PayStatus, PaymentView, RefundView, StatementLine, WalletView};

/// Counters for `/metrics`.
#[derive(Default)]
pub struct PayCounters {
    pub succeeded: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub late_refunds: std::sync::atomic::AtomicU64,
    pub refunds: std::sync::atomic::AtomicU64,
    pub callbacks_refused: std::sync::atomic::AtomicU64,
}
