//! What callers see: how a shopper pays, and the answers of payments,
//! wallets, statements and refunds.

use mall_router::router::PayMethod;

/// How a shopper pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Wallet,
    Card,
    ThirdParty,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "wallet" => Some(Method::Wallet),
            "card" => Some(Method::Card),
            "third_party" => Some(Method::ThirdParty),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Wallet => "wallet",
            Method::Card => "card",
            Method::ThirdParty => "third_party",
        }
    }
    pub(crate) fn channel_method(self) -> Option<PayMethod> {
        match self {
            Method::Wallet => None,
            Method::Card => Some(PayMethod::Card),
            Method::ThirdParty => Some(PayMethod::ThirdParty),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayStatus {
    Succeeded,
    /// Still with a provider (or queued for one) when the wait ended.
    Pending,
}

impl PayStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PayStatus::Succeeded => "succeeded",
            PayStatus::Pending => "pending",
        }
    }
}

/// The answer to a payment or top-up.
#[derive(Clone, Debug)]
pub struct PaymentView {
    pub status: PayStatus,
    pub method: Method,
    pub amount_fen: u64,
    /// The ledger transfer of the (last) try.
    pub attempt: u64,
    pub channel: Option<String>,
}

/// A wallet as its owner sees it.
#[derive(Clone, Debug)]
pub struct WalletView {
    pub balance_fen: i128,
    /// Reserved by payments under way.
    pub pending_out_fen: u64,
    /// Top-ups under way.
    pub pending_in_fen: u64,
}

/// One line of a wallet statement.
#[derive(Clone, Debug)]
pub struct StatementLine {
    pub seq: u64,
    pub transfer: u64,
    pub kind: &'static str,
    pub mode: &'static str,
    /// Positive: into the wallet.
    pub amount_fen: i128,
    pub state: Option<&'static str>,
    pub reference: u64,
    pub at_ms: i64,
}

/// What a refund did.
#[derive(Clone, Debug)]
pub struct RefundView {
    pub refund: u64,
    pub amount_fen: u64,
    pub refunded_total_fen: u64,
    pub paid_fen: u64,
}
