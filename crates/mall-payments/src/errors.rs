//! Why a payment operation was refused: stable codes and HTTP statuses.

/// Why a payment operation was refused. Stable codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("no such order")]
    UnknownOrder,
    #[error("the order is {0}; only orders awaiting payment can be paid")]
    NotPayable(&'static str),
    #[error("the order's hold expired before payment; it was not charged")]
    HoldExpired,
    #[error("the wallet balance is too low for this payment")]
    InsufficientFunds,
    #[error("a payment of this order is already under way; wait for it")]
    InProgress,
    #[error("every channel declined or failed this payment; nothing was charged")]
    Declined,
    #[error("no payment channel serves {0}")]
    NoChannel(&'static str),
    #[error("payments are queued beyond capacity; retry shortly (the order stays payable until its hold expires)")]
    QueueFull,
    #[error("the payment waited too long for a free channel and was not made; retry (the order stays payable until its hold expires)")]
    QueueTimeout,
    #[error("the ledger could not make this durable; nothing was acknowledged; retry")]
    Unavailable,
    #[error("the mall is at capacity; retry in a second")]
    Overloaded,
    #[error("the order was not paid, so there is nothing to refund or settle")]
    NotPaid,
    #[error("refunds would exceed what was paid ({remaining} fen left to refund)")]
    RefundExceedsPaid { remaining: u64 },
    #[error("the order was settled to its merchant already")]
    AlreadySettled,
    #[error("the order is {0}; it cannot be settled")]
    NotSettleable(&'static str),
    #[error("amount must be 1 to {max} fen")]
    BadAmount { max: u64 },
    #[error("no payment channel named {0}")]
    UnknownChannel(String),
    #[error("callback signature: {0}")]
    Signature(&'static str),
    #[error("callback already taken")]
    CallbackReplayed,
    #[error("callback body: {0}")]
    BadCallback(String),
    #[error("the callback names a payment this channel was not asked for")]
    UnknownPayment,
    #[error("that payment is being settled right now; retry")]
    Busy,
    #[error("a pre-sale is delivered only once its balance is paid")]
    BalanceNotPaid,
}

impl PayError {
    pub fn code(&self) -> &'static str {
        match self {
            PayError::UnknownOrder => "order_not_found",
            PayError::NotPayable(_) => "invalid_order_status",
            PayError::HoldExpired => "hold_expired",
            PayError::InsufficientFunds => "insufficient_funds",
            PayError::InProgress => "payment_in_progress",
            PayError::Declined => "payment_declined",
            PayError::NoChannel(_) => "no_channel_for_method",
            PayError::QueueFull => "payment_queue_full",
            PayError::QueueTimeout => "payment_queue_timeout",
            PayError::Unavailable => "store_unavailable",
            PayError::Overloaded => "overloaded",
            PayError::NotPaid => "not_paid",
            PayError::RefundExceedsPaid { .. } => "refund_exceeds_paid",
            PayError::AlreadySettled => "already_settled",
            PayError::NotSettleable(_) => "invalid_order_status",
            PayError::BadAmount { .. } => "invalid_amount",
            PayError::UnknownChannel(_) => "unknown_channel",
            PayError::Signature(c) => c,
            PayError::CallbackReplayed => "callback_replayed",
            PayError::BadCallback(_) => "invalid_callback",
            PayError::UnknownPayment => "unknown_payment",
            PayError::Busy => "busy",
            PayError::BalanceNotPaid => "balance_not_paid",
        }
    }

    /// The HTTP status this refusal maps to.
    pub fn status(&self) -> u16 {
        match self {
            PayError::UnknownOrder | PayError::UnknownChannel(_) | PayError::UnknownPayment => 404,
            PayError::NotPayable(_)
            | PayError::HoldExpired
            | PayError::InProgress
            | PayError::RefundExceedsPaid { .. }
            | PayError::AlreadySettled
            | PayError::NotSettleable(_)
            | PayError::NotPaid
            | PayError::BalanceNotPaid
            | PayError::CallbackReplayed => 409,
            PayError::InsufficientFunds | PayError::Declined => 402,
            PayError::NoChannel(_) | PayError::BadAmount { .. } => 422,
            PayError::Signature(_) => 401,
            PayError::BadCallback(_) => 400,
            PayError::QueueFull
            | PayError::QueueTimeout
            | PayError::Unavailable
            | PayError::Overloaded
            | PayError::Busy => 503,
        }
    }
}
