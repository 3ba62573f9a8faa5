//! Payments from a shopper's wallet: two-phase in the ledger. A pending
//! transfer `wallet → escrow` (the wallet's limit refuses an overdraft),
//! then the order is confirmed, then the transfer is posted; if the order
//! could not be confirmed, the order's status decides where the reserved
//! money goes.

use super::decide::Why;
use super::{Answer, Core, IoReply, Op, Purpose, ReqId};
use crate::errors::PayError;
use crate::views::{Method, PayStatus, PaymentView};
use mall_core::{Order, Refusal};
use mall_inventory::Command as Inv;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{
    Command as Led, Mode, Refusal as LedRefusal, Reply as LedReply, Transfer, TransferId,
};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Clone, Debug)]
pub(crate) struct WalletPay {
    order: Order,
    pending: Transfer,
    step: WalletStep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WalletStep {
    Accounts,
    Reserve,
    Confirm,
    /// Confirmed: the money is posted before the answer.
    Post,
}

impl Core {
    pub(super) fn wallet_pay(&mut self, req: ReqId, o: Order, amount: u64) {
        let purpose = Purpose::Order(o.id);
        if self.live.contains_key(&purpose) {
            return self.answer(req, Answer::Payment(Err(PayError::InProgress)));
        }
        self.live.insert(purpose, 0);
        let wallet = chart::wallet(o.user);
        let pending = Transfer {
            id: TransferId(self.random_id()),
            debit: wallet,
            credit: chart::ESCROW,
            amount,
            mode: Mode::Pending { timeout_ms: 0 },
            linked: false,
            code: code::WALLET_PAYMENT,
            user_data: o.id.0,
        };
        let missing = super::missing_accounts(self, &[wallet]);
        let step = if missing.is_empty() {
            WalletStep::Reserve
        } else {
            WalletStep::Accounts
        };
        self.wallets.insert(
            req,
            WalletPay {
                order: o,
                pending: pending.clone(),
                step,
            },
        );
        if missing.is_empty() {
            self.transfers(Op::Wallet(req), vec![pending]);
        } else {
            self.ledger(Op::Wallet(req), Led::CreateAccounts(missing));
        }
    }

    pub(super) fn wallet_reply(&mut self, req: ReqId, reply: IoReply) {
        let Some(w) = self.wallets.get_mut(&req) else {
            return;
        };
        match (w.step, reply) {
            (WalletStep::Accounts, IoReply::Ledger(Ok(LedReply::Accounts(r))))
                if r.iter().all(Result::is_ok) =>
            {
                w.step = WalletStep::Reserve;
                let pending = w.pending.clone();
                self.accounts.insert(pending.debit);
                self.transfers(Op::Wallet(req), vec![pending]);
            }
            (WalletStep::Reserve, IoReply::Ledger(Ok(LedReply::Transfers(r)))) => match r.first() {
                Some(Ok(_)) => {
                    w.step = WalletStep::Confirm;
                    let order = w.order.id;
                    self.inventory(Op::Wallet(req), order, Inv::Confirm { order });
                }
                Some(Err(LedRefusal::ExceedsCredits)) => {
                    self.wallet_fail(req, PayError::InsufficientFunds)
                }
                other => {
                    tracing::error!(?other, "wallet payment refused by the ledger");
                    self.wallet_fail(req, PayError::Unavailable)
                }
            },
            (WalletStep::Confirm, IoReply::Inventory(Ok(InvReply::Order { order, replayed })))
                if !replayed
                    || self
                        .orders
                        .get(&order.id)
                        .is_none_or(|m| m.paid_by == w.pending.id) =>
            {
                // Confirmed: the money must follow, now (before the answer)
                // or, should the ledger fail, by a retry.
                w.step = WalletStep::Post;
                let p = w.pending.clone();
                w.order = order;
                self.record_paid(&p, false);
                let post = super::resolution(&p, true);
                self.transfers(Op::Wallet(req), vec![post]);
            }
            (WalletStep::Post, reply) => {
                let p = w.pending.clone();
                let order = w.order.clone();
                let posted = matches!(&reply, IoReply::Ledger(Ok(LedReply::Transfers(r))) if r.iter().all(Result::is_ok));
                if posted {
                    self.record_paid(&p, true);
                } else {
                    let stored = super::pending(p.clone(), self.now.wall);
                    self.post_paid(stored);
                }
                self.paid_event(order, p.amount, "wallet".into());
                self.counters.succeeded.fetch_add(1, Relaxed);
                let view = self.wallet_done(req).expect("a wallet payment");
                self.answer(req, Answer::Payment(Ok(view)));
            }
            (WalletStep::Confirm, reply) => {
                // Not confirmed: refused (the hold expired, the order moved
                // on), or unknown (the shard was full or could not commit).
                // The order decides where the reserved money goes.
                let error = match reply {
                    IoReply::Inventory(Ok(InvReply::Refused(Refusal::HoldExpired))) => {
                        PayError::HoldExpired
                    }
                    IoReply::Inventory(Ok(InvReply::Refused(Refusal::InvalidTransition {
                        status,
                        ..
                    }))) => PayError::NotPayable(status.as_str()),
                    IoReply::Inventory(Err(e)) => e,
                    _ => PayError::NotPayable("no longer active"),
                };
                let p = w.pending.clone();
                let stored = super::pending(p.clone(), self.now.wall);
                self.decide_start(p.id.0, None, Why::WalletUndo { req, error }, vec![stored]);
            }
            (_, IoReply::Ledger(Err(e))) => self.wallet_fail(req, e),
            (step, other) => {
                tracing::error!(
                    ?step,
                    ?other,
                    "a wallet payment got an answer it did not ask for"
                );
                self.wallet_fail(req, PayError::Unavailable)
            }
        }
    }

    fn wallet_fail(&mut self, req: ReqId, e: PayError) {
        self.wallet_done(req);
        self.answer(req, Answer::Payment(Err(e)));
    }

    /// The wallet payment is over: its order is free again. The view it
    /// answers if it succeeded.
    pub(super) fn wallet_done(&mut self, req: ReqId) -> Option<PaymentView> {
        let w = self.wallets.remove(&req)?;
        self.live.remove(&Purpose::Order(w.order.id));
        Some(PaymentView {
            status: PayStatus::Succeeded,
            method: Method::Wallet,
            amount_fen: w.pending.amount,
            attempt: w.pending.id.0,
            channel: None,
        })
    }
}
