//! The mall's chart of accounts and transfer codes: which ledger account
//! holds whose money, and what each transfer was for.
//!
//! An account id carries its kind in the top byte and its owner below, so
//! every account has one id that anyone can compute (no lookup table):
//!
//! | kind | id | limit |
//! |---|---|---|
//! | shopper wallet | `1 << 56 \| user` | debits ≤ credits: never below zero |
//! | merchant receivable | `2 << 56 \| merchant` | — |
//! | platform escrow | `3 << 56` | — |
//! | channel clearing | `4 << 56 \| channel` | — (what a provider owes the mall) |
//! | COD receivable | `5 << 56` | — (cash couriers collected) |
//! | platform promotions | `6 << 56` | — (the platform's money for the discounts it funds; it goes negative as it pays) |
//!
//! Money paths: top-up `clearing → wallet`; payment `wallet | clearing →
//! escrow` (two-phase: pending until the order is confirmed); delivery
//! `escrow → merchant`; COD collection `cod → escrow`; refund back along
//! the path the money came; a forfeited pre-sale deposit `escrow →
//! merchant`; the platform's share of a discount, at settlement,
//! `promotions → merchant`.

use crate::{Account, AccountId, AccountKind, Limits};
use mall_core::{MerchantId, UserId};

const SHIFT: u32 = 56;
const OWNER_MASK: u64 = (1 << SHIFT) - 1;

pub fn wallet(user: UserId) -> AccountId {
    AccountId((1 << SHIFT) | (user.0 & OWNER_MASK))
}

pub fn merchant(m: MerchantId) -> AccountId {
    AccountId((2 << SHIFT) | (m.0 & OWNER_MASK))
}

pub const ESCROW: AccountId = AccountId(3 << SHIFT);

pub fn clearing(channel: usize) -> AccountId {
    AccountId((4 << SHIFT) | (channel as u64 & OWNER_MASK))
}

pub const COD: AccountId = AccountId(5 << SHIFT);

pub const PROMOTIONS: AccountId = AccountId(6 << SHIFT);

/// The kind an id names, if it is in the chart.
pub fn kind_of(id: AccountId) -> Option<AccountKind> {
    match id.0 >> SHIFT {
        1 => Some(AccountKind::Wallet),
        2 => Some(AccountKind::MerchantReceivable),
        3 if id == ESCROW => Some(AccountKind::PlatformEscrow),
        4 => Some(AccountKind::ChannelClearing),
        5 if id == COD => Some(AccountKind::CodReceivable),
        6 if id == PROMOTIONS => Some(AccountKind::PlatformPromotions),
        _ => None,
    }
}

/// The channel a clearing account belongs to.
pub fn channel_of(id: AccountId) -> Option<usize> {
    (id.0 >> SHIFT == 4).then_some((id.0 & OWNER_MASK) as usize)
}

/// The account as it must be created (kind and limits follow from the id).
pub fn account(id: AccountId) -> Option<Account> {
    let kind = kind_of(id)?;
    let limits = Limits {
        debits_must_not_exceed_credits: kind == AccountKind::Wallet,
        credits_must_not_exceed_debits: false,
    };
    Some(Account::new(id, kind, limits))
}

/// What a transfer was for (its `code`). `user_data` holds the order id
/// (or the user id for top-ups).
pub mod code {
    pub const TOP_UP: u16 = 1;
    pub const WALLET_PAYMENT: u16 = 2;
    pub const CHANNEL_PAYMENT: u16 = 3;
    pub const SETTLEMENT: u16 = 4;
    pub const COD_COLLECTION: u16 = 5;
    pub const REFUND: u16 = 6;
    /// A provider charged for an attempt the mall had abandoned...
    pub const LATE_CAPTURE: u16 = 7;
    /// ...and the mall gave it straight back.
    pub const LATE_REFUND: u16 = 8;
    /// A pre-sale deposit forfeited (its balance unpaid in its window, or
    /// its shopper cancelled): escrow → the merchant.
    pub const FORFEIT: u16 = 9;
    /// The platform's share of an order's discounts, paid to the merchant
    /// at settlement: promotions → merchant.
    pub const PLATFORM_DISCOUNT: u16 = 10;
    /// One line of a checkout paid as a whole: a pending transfer per line
    /// order, all from one provider payment (see the payment core).
    pub const CHECKOUT_PAYMENT: u16 = 11;

    pub fn name(code: u16) -> &'static str {
        match code {
            TOP_UP => "top_up",
            WALLET_PAYMENT => "wallet_payment",
            CHANNEL_PAYMENT => "channel_payment",
            SETTLEMENT => "settlement",
            COD_COLLECTION => "cod_collection",
            REFUND => "refund",
            LATE_CAPTURE => "late_capture",
            LATE_REFUND => "late_refund",
            FORFEIT => "forfeit",
            PLATFORM_DISCOUNT => "platform_discount",
            CHECKOUT_PAYMENT => "checkout_payment",
            _ => "other",
        }
    }
}

/// Whether a transfer moves money the way its code says: between the
/// kinds of account the mall's chart allows for it (a pending transfer's
/// post or void moves between the same accounts).
pub fn check(t: &crate::Transfer) -> Result<(), String> {
    use AccountKind::*;
    let (from, to) = (kind_of(t.debit), kind_of(t.credit));
    let shape = |debits: &[AccountKind], credits: &[AccountKind]| {
        from.is_some_and(|k| debits.contains(&k)) && to.is_some_and(|k| credits.contains(&k))
    };
    let ok = match t.code {
        code::TOP_UP => shape(&[ChannelClearing], &[Wallet]),
        code::WALLET_PAYMENT => shape(&[Wallet], &[PlatformEscrow]),
        code::CHANNEL_PAYMENT | code::CHECKOUT_PAYMENT | code::LATE_CAPTURE => {
            shape(&[ChannelClearing], &[PlatformEscrow])
        }
        code::SETTLEMENT | code::FORFEIT => shape(&[PlatformEscrow], &[MerchantReceivable]),
        code::COD_COLLECTION => shape(&[CodReceivable], &[PlatformEscrow]),
        code::REFUND => shape(
            &[PlatformEscrow, MerchantReceivable],
            &[Wallet, ChannelClearing, CodReceivable],
        ),
        code::LATE_REFUND => shape(&[PlatformEscrow], &[ChannelClearing]),
        code::PLATFORM_DISCOUNT => shape(&[PlatformPromotions], &[MerchantReceivable]),
        other => return Err(format!("transfer {}: unknown code {other}", t.id.0)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "transfer {}: a {} from {:?} to {:?}",
            t.id.0,
            code::name(t.code),
            from,
            to
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_do_not_collide() {
        let w = wallet(UserId(7));
        let m = merchant(MerchantId(7));
        let c = clearing(7);
        assert_eq!(kind_of(w), Some(AccountKind::Wallet));
        assert_eq!(kind_of(m), Some(AccountKind::MerchantReceivable));
        assert_eq!(kind_of(c), Some(AccountKind::ChannelClearing));
        assert_eq!(kind_of(ESCROW), Some(AccountKind::PlatformEscrow));
        assert_eq!(kind_of(COD), Some(AccountKind::CodReceivable));
        assert_eq!(kind_of(PROMOTIONS), Some(AccountKind::PlatformPromotions));
        assert_eq!(kind_of(AccountId((6 << SHIFT) | 1)), None);
        assert_eq!(channel_of(c), Some(7));
        assert_eq!(channel_of(w), None);
        assert_eq!(kind_of(AccountId(3)), None);
        assert!(account(w).unwrap().limits.debits_must_not_exceed_credits);
        assert!(
            !account(ESCROW)
                .unwrap()
                .limits
                .debits_must_not_exceed_credits
        );
        let ids = [w, m, c, ESCROW, COD, PROMOTIONS];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn every_code_has_its_shape() {
        let t = |code, debit, credit| crate::Transfer {
            id: crate::TransferId(1),
            debit,
            credit,
            amount: 5,
            code,
            user_data: 0,
            mode: crate::Mode::Single,
            linked: false,
        };
        let m = merchant(MerchantId(1));
        assert!(check(&t(code::FORFEIT, ESCROW, m)).is_ok());
        assert!(check(&t(code::PLATFORM_DISCOUNT, PROMOTIONS, m)).is_ok());
        assert!(check(&t(code::CHECKOUT_PAYMENT, clearing(1), ESCROW)).is_ok());
        assert!(check(&t(code::CHECKOUT_PAYMENT, wallet(UserId(2)), ESCROW)).is_err());
        assert!(check(&t(code::PLATFORM_DISCOUNT, ESCROW, m)).is_err());
        assert!(check(&t(code::SETTLEMENT, m, ESCROW)).is_err());
        assert!(check(&t(code::REFUND, ESCROW, wallet(UserId(2)))).is_ok());
        assert!(check(&t(99, ESCROW, m))
            .unwrap_err()
            .contains("unknown code"));
    }
}
