//! Business outcomes: the refusals a command can meet. They are data with a
//! stable machine code, returned per command, never operating errors.

use crate::{Fen, OrderStatus, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No stock left to hold.
    SoldOut,
    /// Some stock left, but less than asked for.
    InsufficientStock {
        available: u32,
    },
    /// The shopper's active orders already reach the item's per-user limit.
    LimitReached {
        limit: u32,
        active: u32,
    },
    /// The sale has not opened yet.
    SaleNotOpen {
        opens_at: Timestamp,
    },
    /// The sale window has closed.
    SaleClosed {
        closes_at: Timestamp,
    },
    UnknownItem,
    /// Unknown order, or one the caller may not see (never tell them apart).
    UnknownOrder,
    /// The order's status does not allow the change.
    InvalidTransition {
        status: OrderStatus,
        /// `cancelled`, `delivered` or `paid`.
        action: std::borrow::Cow<'static, str>,
    },
    /// The hold lapsed before payment arrived; the stock went back on sale.
    HoldExpired,
    /// The idempotency key was used before for a different request.
    IdempotencyKeyReused,
    /// The new stock total is below what is already held or sold.
    StockBelowCommitted {
        committed: u32,
    },
    /// The item is not as the change expected: changed meanwhile, already
    /// created, or gone. Read it again and retry.
    ItemChanged,
    /// No such coupon (or claim the caller may see).
    UnknownCoupon,
    /// The claim cannot go on this order: used on another, expired, or
    /// not the caller's.
    ClaimNotUsable,
    /// The client's expected total is not the price now; nothing was
    /// reserved. The price as it stands is given.
    PriceChanged {
        list_price_fen: Fen,
        unit_price_fen: Fen,
        amount_fen: Fen,
    },
    /// A pre-sale's balance may not be paid yet.
    BalanceNotOpen {
        opens_at: Timestamp,
    },
    /// A pre-sale's balance window has closed (the deposit was forfeited).
    BalanceClosed {
        closes_at: Timestamp,
    },
    /// The order is not a pre-sale deposit whose balance can be asked.
    NotPreSale,
    /// A pre-sale deposit is paid online, for one item at its own price
    /// (no cash on delivery, no checkout discounts).
    PreSaleOnlineOnly,
    /// A pre-sale is delivered only once its balance is paid.
    BalanceNotPaid,
}

impl Refusal {
    /// Stable machine code, part of the API contract.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::SoldOut => "sold_out",
            Refusal::InsufficientStock { .. } => "insufficient_stock",
            Refusal::LimitReached { .. } => "limit_reached",
            Refusal::SaleNotOpen { .. } => "sale_not_open",
            Refusal::SaleClosed { .. } => "sale_closed",
            Refusal::UnknownItem => "item_not_found",
            Refusal::UnknownOrder => "order_not_found",
            // The one refused transition with its own code: money of a
            // delivered order goes back only by an after-sale refund.
            Refusal::InvalidTransition {
                status: OrderStatus::Delivered,
                action,
            } if action == "cancelled" => "already_delivered",
            Refusal::InvalidTransition { .. } => "invalid_order_status",
            Refusal::HoldExpired => "hold_expired",
            Refusal::IdempotencyKeyReused => "idempotency_key_reused",
            Refusal::StockBelowCommitted { .. } => "stock_below_committed",
            Refusal::ItemChanged => "item_changed",
            Refusal::PriceChanged { .. } => "price_changed",
            Refusal::UnknownCoupon => "coupon_not_found",
            Refusal::ClaimNotUsable => "coupon_not_usable",
            Refusal::BalanceNotOpen { .. } => "balance_not_open",
            Refusal::BalanceClosed { .. } => "balance_closed",
            Refusal::NotPreSale => "not_a_presale",
            Refusal::PreSaleOnlineOnly => "presale_online_only",
            Refusal::BalanceNotPaid => "balance_not_paid",
        }
    }

    /// Human message for the error body.
    pub fn message(&self) -> String {
        match self {
            Refusal::SoldOut => "this item is sold out".into(),
            Refusal::InsufficientStock { available } => {
                format!("only {available} unit(s) left; ask for fewer")
            }
            Refusal::LimitReached { limit, active } => format!(
                "the per-shopper limit for this item is {limit} unit(s) and your orders already hold {active}"
            ),
            Refusal::SaleNotOpen { opens_at } => {
                format!("the sale for this item opens at {} (ms since epoch)", opens_at.0)
            }
            Refusal::SaleClosed { closes_at } => {
                format!("the sale for this item closed at {} (ms since epoch)", closes_at.0)
            }
            Refusal::UnknownItem => "no such item".into(),
            Refusal::UnknownOrder => "no such order".into(),
            Refusal::InvalidTransition {
                status: OrderStatus::Delivered,
                action,
            } if action == "cancelled" => "a delivered order cannot be cancelled; ask the merchant for an after-sale refund"
                .into(),
            Refusal::InvalidTransition { status, action } => {
                format!("an order that is {} cannot be {action}", status.as_str())
            }
            Refusal::HoldExpired => {
                "the hold on this order expired before payment; the stock went back on sale".into()
            }
            Refusal::IdempotencyKeyReused => {
                "this Idempotency-Key was already used for a different request".into()
            }
            Refusal::ItemChanged => "the item changed meanwhile; read it again and retry".into(),
            Refusal::UnknownCoupon => "no such coupon".into(),
            Refusal::ClaimNotUsable => {
                "this coupon cannot be used here: it is used on another order, expired, or not yours".into()
            }
            Refusal::PriceChanged { amount_fen, .. } => format!(
                "the price is now {} fen, not the total you expected; nothing was reserved",
                amount_fen.0
            ),
            Refusal::StockBelowCommitted { committed } => format!(
                "stock cannot go below the {committed} unit(s) already held or sold"
            ),
            Refusal::BalanceNotOpen { opens_at } => format!(
                "the balance of this pre-sale can be paid from {} (ms since epoch)",
                opens_at.0
            ),
            Refusal::BalanceClosed { closes_at } => format!(
                "the balance window of this pre-sale closed at {} (ms since epoch); the deposit was forfeited",
                closes_at.0
            ),
            Refusal::NotPreSale => {
                "this order is not a paid pre-sale deposit, so it has no balance to pay".into()
            }
            Refusal::PreSaleOnlineOnly => {
                "a pre-sale deposit is paid online, for the item alone (no cash on delivery, no cart checkout)".into()
            }
            Refusal::BalanceNotPaid => {
                "a pre-sale is delivered only once its balance is paid".into()
            }
        }
    }
}
