//! A start: the money of every paid order rebuilt from the ledger, tries
//! given up lately watched again, and what a crash left pending decided
//! (by the provider's word, else by the order's status).

use super::decide::Why;
use super::{Action, Core, OrderMoney};
use mall_core::OrderId;
use mall_ledger as mallled;
use mall_ledger::chart::{self, code};
use mall_ledger::{Mode, PendingState, Stored};
use std::collections::BTreeMap;

impl Core {
    pub(super) fn recover(&mut self, transfers: Vec<Stored>) {
        let now = self.now.wall.0;
        let watch_ms = self.config.watch_ms;
        let channels = self.config.channels.len();
        // Pending transfers by try: a checkout's lines are decided together.
        let mut pending: BTreeMap<u64, Vec<Stored>> = BTreeMap::new();
        let mut watched = std::collections::BTreeSet::new();
        for s in transfers {
            let t = &s.transfer;
            let order = OrderId(t.user_data);
            match (t.code, t.mode) {
                (
                    code::WALLET_PAYMENT | code::CHANNEL_PAYMENT | code::CHECKOUT_PAYMENT,
                    Mode::Post { pending },
                ) => {
                    let payment = super::payment_of(&mallled::Transfer { id: pending, ..*t });
                    self.orders.insert(
                        order,
                        OrderMoney {
                            payer: t.debit,
                            paid_by: pending,
                            payment,
                            paid: t.amount,
                            refunded: 0,
                            settled: false,
                            posted: true,
                        },
                    );
                }
                (code::COD_COLLECTION, _) => {
                    self.orders.insert(
                        order,
                        OrderMoney {
                            payer: t.debit,
                            paid_by: t.id,
                            payment: t.id.0,
                            paid: t.amount,
                            refunded: 0,
                            settled: false,
                            posted: true,
                        },
                    );
                }
                (code::REFUND, _) => {
                    if let Some(m) = self.orders.get_mut(&order) {
                        m.refunded += t.amount;
                    }
                }
                (code::SETTLEMENT | code::FORFEIT, _) => {
                    if let Some(m) = self.orders.get_mut(&order) {
                        m.settled = true;
                    }
                }
                // A try voided lately (a checkout's once, by any voided
                // line: its paid lines may be posted).
                (
                    code::CHANNEL_PAYMENT | code::TOP_UP | code::CHECKOUT_PAYMENT,
                    Mode::Pending { .. },
                ) if s.state == Some(PendingState::Voided) && s.created_at.0 + watch_ms > now => {
                    let id = super::payment_of(t);
                    if let Some(c) = chart::channel_of(t.debit).filter(|c| *c < channels) {
                        if watched.insert(id) {
                            self.watch.push_back((id, c, s.created_at.0 + watch_ms));
                        }
                    }
                }
                (_, Mode::Pending { .. }) if s.state == Some(PendingState::Pending) => pending
                    .entry(super::payment_of(t))
                    .or_default()
                    .push(s.clone()),
                _ => {}
            }
        }
        self.reconciling = pending.len();
        if pending.is_empty() {
            self.actions.push(Action::Recovered);
        }
        for (_, p) in pending {
            self.reconcile_one(p, true);
        }
    }

    /// Decides one try's pending transfers a start found.
    pub(super) fn reconcile_one(&mut self, p: Vec<Stored>, first: bool) {
        let Some(one) = p.first() else {
            return;
        };
        let channel = chart::channel_of(one.transfer.debit);
        let id = super::payment_of(&one.transfer);
        self.decide_start(id, channel, Why::Reconcile { first }, p);
    }

    /// One of the start's pending transfers is decided (or will be retried).
    pub(super) fn reconciled(&mut self) {
        self.reconciling = self.reconciling.saturating_sub(1);
        if self.reconciling == 0 {
            self.actions.push(Action::Recovered);
        }
    }
}
