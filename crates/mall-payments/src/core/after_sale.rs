//! After payment: delivery and settlement to the merchant, cash collected
//! on delivery, and refunds (after-sale, or of a cancelled order). Each
//! holds the order's money claim, so one runs at a time per order, and
//! refusals come first, so a refused request changes nothing.
//!
//! - **Settle**: `paid | confirmed → delivered` in the inventory first (it
//!   can no longer be cancelled; idempotent, so a settlement cut off
//!   half-way is finished by asking again), then escrow → merchant for
//!   what was paid less refunds.
//! - **COD collected**: delivered, then the cash is booked `cod → escrow`.
//! - **Forfeit**: a pre-sale deposit forfeited (its balance unpaid, or
//!   its shopper cancelled): escrow → merchant for what was paid less
//!   refunds, like a settlement without a delivery.
//! - **Refund**: back the way the money came (escrow, or the merchant once
//!   settled, → the payer), named by a key: the same key is the same
//!   refund, a replay moves nothing. The provider is told in the
//!   background (re-sent until it takes it).

use super::{derived, single, Action, Answer, Core, IoReply, Op, ReqId};
use crate::core::ProviderRefund;
use crate::errors::PayError;
use crate::views::RefundView;
use mall_core::{Order, OrderId, OrderStatus, PaymentMethod, Refusal};
use mall_inventory::Command as Inv;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{
    AccountId, Command as Led, Outcome as LedOutcome, Reply as LedReply, TransferId,
};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Clone, Debug)]
pub(crate) struct AfterSale {
    order: Order,
    kind: Kind,
    step: Step,
    /// This request took the order's claim (and releases it at the end).
    claimed: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    Settle {
        merchant: AccountId,
    },
    Forfeit {
        merchant: AccountId,
    },
    PlatformShare {
        merchant: AccountId,
        amount: u64,
    },
    Cod {
        amount: u64,
    },
    Refund {
        amount: Option<u64>,
        id: TransferId,
        merchant: AccountId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Deliver,
    /// The order after a delivery found it inactive.
    Reread,
    Accounts,
    Lookup,
    Transfer {
        amount: u64,
    },
}

/// The transfer id of the refund of `order` named `key`.
pub fn refund_id(order: OrderId, key: u64) -> TransferId {
    super::transfer_id(&[b"refund", &order.0.to_le_bytes(), &key.to_le_bytes()])
}

impl Core {
    /// Settles a delivered order to `merchant`.
    pub(super) fn settle(&mut self, req: ReqId, read: Option<Order>, merchant: AccountId) {
        let settleable = |s| {
            matches!(
                s,
                OrderStatus::Paid | OrderStatus::Confirmed | OrderStatus::Delivered
            )
        };
        self.pay_out(req, read, settleable, Kind::Settle { merchant });
    }

    /// Pays a forfeited pre-sale deposit to `merchant`.
    pub(super) fn forfeit(&mut self, req: ReqId, read: Option<Order>, merchant: AccountId) {
        let forfeited = |s| s == OrderStatus::Forfeited;
        self.pay_out(req, read, forfeited, Kind::Forfeit { merchant });
    }

    /// An order's money (less refunds) out of escrow to its merchant, once
    /// its status allows it: a settlement or a forfeit.
    fn pay_out(
        &mut self,
        req: ReqId,
        read: Option<Order>,
        allowed: impl Fn(OrderStatus) -> bool,
        kind: Kind,
    ) {
        let Some(o) = read else {
            return self.answer(req, Answer::Amount(Err(PayError::UnknownOrder)));
        };
        if !allowed(o.status) {
            let e = PayError::NotSettleable(o.status.as_str());
            return self.answer(req, Answer::Amount(Err(e)));
        }
        if !self.claim_order(o.id) {
            return self.answer(req, Answer::Amount(Err(PayError::Busy)));
        }
        let refused = match self.orders.get(&o.id) {
            // A payment being decided (a start's reconciliation, say) may
            // be the one that paid it: shortly.
            None if self.payment_live(o.id) => Some(PayError::Busy),
            None => Some(PayError::NotPaid),
            Some(m) if m.settled => Some(PayError::AlreadySettled),
            // Paid, its money on its way to the ledger: shortly.
            Some(m) if !m.posted => Some(PayError::Busy),
            Some(_) => None,
        };
        self.after_start(req, o, kind, true, refused);
    }

    /// Pays the platform's share of a settled order's discounts to its
    /// merchant. The transfer's id is the order's, so a repeat moves
    /// nothing.
    pub(super) fn platform_share(
        &mut self,
        req: ReqId,
        read: Option<Order>,
        merchant: AccountId,
        amount: u64,
    ) {
        let Some(o) = read else {
            return self.answer(req, Answer::Amount(Err(PayError::UnknownOrder)));
        };
        if !self.claim_order(o.id) {
            return self.answer(req, Answer::Amount(Err(PayError::Busy)));
        }
        let refused = match self.orders.get(&o.id) {
            None => Some(PayError::NotPaid),
            // The merchant is paid its share with its settlement, not before.
            Some(m) if !m.settled => Some(PayError::NotSettleable(o.status.as_str())),
            // Refunded in full before delivery: no sale for the platform to fund.
            Some(m) if m.refunded >= m.paid => Some(PayError::NotPaid),
            Some(_) if amount == 0 => Some(PayError::BadAmount { max: 0 }),
            Some(_) => None,
        };
        let kind = Kind::PlatformShare { merchant, amount };
        self.after_start(req, o, kind, true, refused);
    }

    /// Cash was collected for a COD order.
    pub(super) fn cod_collected(&mut self, req: ReqId, read: Option<Order>) {
        let Some(o) = read else {
            return self.answer(req, Answer::Amount(Err(PayError::UnknownOrder)));
        };
        if o.payment != PaymentMethod::Cod
            || !matches!(o.status, OrderStatus::Confirmed | OrderStatus::Delivered)
        {
            let e = PayError::NotSettleable(o.status.as_str());
            return self.answer(req, Answer::Amount(Err(e)));
        }
        let Some(amount) = u64::try_from(o.amount_fen.0).ok().filter(|a| *a > 0) else {
            let e = PayError::NotSettleable("free");
            return self.answer(req, Answer::Amount(Err(e)));
        };
        if !self.claim_order(o.id) {
            return self.answer(req, Answer::Amount(Err(PayError::Busy)));
        }
        self.after_start(req, o, Kind::Cod { amount }, true, None);
    }

    /// Refunds `amount` (all that is left if `None`) of a paid order.
    /// `held`: the caller holds the order's claim already (a cancel).
    pub(super) fn refund(
        &mut self,
        req: ReqId,
        read: Option<Order>,
        amount: Option<u64>,
        key: u64,
        merchant: AccountId,
        held: bool,
    ) {
        let Some(o) = read else {
            return self.answer(req, Answer::Refund(Err(PayError::UnknownOrder)));
        };
        if !held && !self.claim_order(o.id) {
            return self.answer(req, Answer::Refund(Err(PayError::Busy)));
        }
        let refused = match self.orders.get(&o.id) {
            None => Some(PayError::NotPaid),
            Some(m) if !m.posted => Some(PayError::Busy),
            Some(_) => None,
        };
        let id = refund_id(o.id, key);
        let kind = Kind::Refund {
            amount,
            id,
            merchant,
        };
        self.after_start(req, o, kind, !held, refused);
    }

    fn after_start(
        &mut self,
        req: ReqId,
        order: Order,
        kind: Kind,
        claimed: bool,
        refused: Option<PayError>,
    ) {
        let step = match kind {
            Kind::Refund { .. } => Step::Lookup,
            // Nothing to deliver: the goods never left.
            Kind::Forfeit { .. } => Step::Accounts,
            // Settled already (its merchant's account exists).
            Kind::PlatformShare { amount, .. } => Step::Transfer { amount },
            _ => Step::Deliver,
        };
        let a = AfterSale {
            order,
            kind,
            step,
            claimed,
        };
        self.after.insert(req, a);
        if let Some(e) = refused {
            return self.after_done(req, Err(e));
        }
        self.after_step(req);
    }

    /// Issues the I/O of the request's current step.
    fn after_step(&mut self, req: ReqId) {
        let a = &self.after[&req];
        let id = a.order.id;
        match (a.step, &a.kind) {
            (Step::Deliver, _) => {
                self.inventory(Op::AfterSale(req), id, Inv::Deliver { order: id })
            }
            (Step::Reread, _) => self.read_order(Op::AfterSale(req), id),
            (Step::Lookup, Kind::Refund { id: refund, .. }) => {
                let lookup = Led::LookupTransfers(vec![*refund]);
                self.ledger(Op::AfterSale(req), lookup)
            }
            (Step::Accounts, Kind::Settle { merchant } | Kind::Forfeit { merchant }) => {
                let missing = super::missing_accounts(self, &[*merchant]);
                if missing.is_empty() {
                    return self.settle_transfer(req);
                }
                self.ledger(Op::AfterSale(req), Led::CreateAccounts(missing))
            }
            (Step::Transfer { amount }, kind) => {
                let t = match kind {
                    Kind::Settle { merchant } => single(
                        derived("settle", id.0),
                        chart::ESCROW,
                        *merchant,
                        amount,
                        code::SETTLEMENT,
                        id.0,
                    ),
                    Kind::PlatformShare { merchant, .. } => single(
                        derived("platform_share", id.0),
                        chart::PROMOTIONS,
                        *merchant,
                        amount,
                        code::PLATFORM_DISCOUNT,
                        id.0,
                    ),
                    Kind::Forfeit { merchant } => single(
                        derived("forfeit", id.0),
                        chart::ESCROW,
                        *merchant,
                        amount,
                        code::FORFEIT,
                        id.0,
                    ),
                    Kind::Cod { .. } => single(
                        derived("cod", id.0),
                        chart::COD,
                        chart::ESCROW,
                        amount,
                        code::COD_COLLECTION,
                        id.0,
                    ),
                    Kind::Refund {
                        id: refund,
                        merchant,
                        ..
                    } => {
                        let m = self.orders[&id];
                        let source = if m.settled { *merchant } else { chart::ESCROW };
                        single(*refund, source, m.payer, amount, code::REFUND, id.0)
                    }
                };
                self.transfers(Op::AfterSale(req), vec![t])
            }
            (step, kind) => unreachable!("no {step:?} in {kind:?}"),
        }
    }

    pub(super) fn after_reply(&mut self, req: ReqId, reply: IoReply) {
        let Some(a) = self.after.get(&req) else {
            return;
        };
        let (step, kind, order) = (a.step, a.kind.clone(), a.order.id);
        match (step, reply) {
            (Step::Deliver, IoReply::Inventory(Ok(InvReply::Order { .. }))) => match kind {
                Kind::Settle { merchant } => {
                    let missing = super::missing_accounts(self, &[merchant]);
                    if missing.is_empty() {
                        self.settle_transfer(req)
                    } else {
                        self.after_go(req, Step::Accounts)
                    }
                }
                Kind::Cod { amount } => self.after_go(req, Step::Transfer { amount }),
                Kind::Refund { .. } | Kind::Forfeit { .. } | Kind::PlatformShare { .. } => {
                    unreachable!("refunds, forfeits and platform shares deliver nothing")
                }
            },
            (Step::Deliver, IoReply::Inventory(Ok(reply))) => match reply {
                InvReply::Refused(Refusal::InvalidTransition { status, .. }) => {
                    self.after_done(req, Err(PayError::NotSettleable(status.as_str())))
                }
                InvReply::Refused(Refusal::UnknownOrder) => {
                    self.after_done(req, Err(PayError::UnknownOrder))
                }
                InvReply::Refused(Refusal::BalanceNotPaid) => {
                    self.after_done(req, Err(PayError::BalanceNotPaid))
                }
                // Inactive: cancelled or expired meanwhile.
                _ => self.after_go(req, Step::Reread),
            },
            (Step::Reread, IoReply::Order(Ok(o))) => {
                let status = o.map_or("unknown", |o| o.status.as_str());
                self.after_done(req, Err(PayError::NotSettleable(status)))
            }
            (Step::Accounts, IoReply::Ledger(Ok(LedReply::Accounts(r))))
                if r.iter().all(Result::is_ok) =>
            {
                if let Kind::Settle { merchant } | Kind::Forfeit { merchant } = kind {
                    self.accounts.insert(merchant);
                }
                self.settle_transfer(req)
            }
            (Step::Lookup, IoReply::Ledger(Ok(LedReply::TransferLookup(mut r)))) => {
                let Kind::Refund { amount, id, .. } = kind else {
                    unreachable!("lookups are of refunds")
                };
                let m = self.orders[&order];
                match r.pop().flatten() {
                    Some(done) => {
                        let t = &done.transfer;
                        if t.code != code::REFUND || t.user_data != order.0 {
                            tracing::error!(
                                id = id.0,
                                "a refund id collides with another transfer"
                            );
                            return self.after_done(req, Err(PayError::Unavailable));
                        }
                        // A replay: answer as the first time, and make sure
                        // the provider heard of it.
                        self.provider_hears(m.payer, id, m.payment, t.amount);
                        let view = RefundView {
                            refund: id.0,
                            amount_fen: t.amount,
                            refunded_total_fen: m.refunded,
                            paid_fen: m.paid,
                        };
                        self.after_answer(req, Answer::Refund(Ok(view)))
                    }
                    None => {
                        let remaining = m.paid.saturating_sub(m.refunded);
                        let amount = amount.unwrap_or(remaining);
                        if amount == 0 || amount > remaining {
                            let e = PayError::RefundExceedsPaid { remaining };
                            return self.after_done(req, Err(e));
                        }
                        self.after_go(req, Step::Transfer { amount })
                    }
                }
            }
            (Step::Transfer { amount }, IoReply::Ledger(Ok(LedReply::Transfers(r)))) => {
                match r.first() {
                    Some(Ok(outcome)) => self.transferred(req, amount, *outcome),
                    other => {
                        tracing::error!(?other, ?kind, "an after-sale transfer was refused");
                        self.after_done(req, Err(PayError::Unavailable))
                    }
                }
            }
            (_, IoReply::Ledger(Err(e)) | IoReply::Inventory(Err(e)) | IoReply::Order(Err(e))) => {
                self.after_done(req, Err(e))
            }
            (step, other) => {
                tracing::error!(
                    ?step,
                    ?other,
                    "an after-sale request got an answer it did not ask for"
                );
                self.after_done(req, Err(PayError::Unavailable))
            }
        }
    }

    fn after_go(&mut self, req: ReqId, step: Step) {
        self.after.get_mut(&req).expect("after-sale").step = step;
        self.after_step(req);
    }

    /// Settlement: what was paid less refunds (nothing to move: settled).
    fn settle_transfer(&mut self, req: ReqId) {
        let order = self.after[&req].order.id;
        let m = self.orders[&order];
        match m.paid.saturating_sub(m.refunded) {
            0 => self.transferred(req, 0, LedOutcome::Created),
            amount => self.after_go(req, Step::Transfer { amount }),
        }
    }

    fn transferred(&mut self, req: ReqId, amount: u64, outcome: LedOutcome) {
        let a = self.after[&req].clone();
        let order = a.order.id;
        match a.kind {
            Kind::Settle { .. } | Kind::Forfeit { .. } => {
                self.set_settled(order);
                self.after_answer(req, Answer::Amount(Ok(amount)))
            }
            Kind::PlatformShare { .. } => self.after_answer(req, Answer::Amount(Ok(amount))),
            Kind::Cod { .. } => {
                self.record_cod(order, derived("cod", order.0), amount);
                self.after_answer(req, Answer::Amount(Ok(amount)))
            }
            Kind::Refund { id, .. } => {
                let total = self.add_refunded(order, amount);
                if outcome == LedOutcome::Created {
                    self.counters.refunds.fetch_add(1, Relaxed);
                    self.actions.push(Action::Refunded {
                        order: a.order.clone(),
                        amount,
                    });
                }
                let m = self.orders[&order];
                self.provider_hears(m.payer, id, m.payment, amount);
                let view = RefundView {
                    refund: id.0,
                    amount_fen: amount,
                    refunded_total_fen: total,
                    paid_fen: m.paid,
                };
                self.after_answer(req, Answer::Refund(Ok(view)))
            }
        }
    }

    /// A refund of money that came through a channel goes back through it.
    fn provider_hears(&mut self, payer: AccountId, refund: TransferId, payment: u64, amount: u64) {
        if let Some(channel) = chart::channel_of(payer) {
            self.send_refund(ProviderRefund {
                channel,
                refund: refund.0,
                payment,
                amount,
            });
        }
    }

    fn after_done(&mut self, req: ReqId, result: Result<(), PayError>) {
        let e = result.expect_err("after_done ends refusals");
        let answer = match self.after.get(&req).map(|a| &a.kind) {
            Some(Kind::Refund { .. }) => Answer::Refund(Err(e)),
            _ => Answer::Amount(Err(e)),
        };
        self.after_answer(req, answer);
    }

    fn after_answer(&mut self, req: ReqId, answer: Answer) {
        if let Some(a) = self.after.remove(&req) {
            if a.claimed {
                self.release_order(a.order.id);
            }
        }
        self.answer(req, answer);
    }
}
