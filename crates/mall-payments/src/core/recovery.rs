//! A start: the money of every paid order rebuilt from the ledger, tries
//! given up lately watched again, and what a crash left pending decided
//! (by the provider's word, else by the order's status).

use super::decide::Why;
use super::{Action, Core, OrderMoney};
use mall_core::OrderId;
use mall_ledger::chart::{self, code};
use mall_ledger::{Mode, PendingState, Stored};

impl Core {
    pub(super) fn recover(&mut self, transfers: Vec<Stored>) {
        let now = self.now.wall.0;
        let watch_ms = self.config.watch_ms;
        let channels = self.config.channels.len();
        let mut pending = Vec::new();
        for s in transfers {
            let t = &s.transfer;
            let order = OrderId(t.user_data);
            match (t.code, t.mode) {
                (code::WALLET_PAYMENT | code::CHANNEL_PAYMENT, Mode::Post { pending }) => {
                    self.orders.insert(
                        order,
                        OrderMoney {
                            payer: t.debit,
                            paid_by: pending,
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
                (code::CHANNEL_PAYMENT | code::TOP_UP, Mode::Pending { .. })
                    if s.state == Some(PendingState::Voided) && s.created_at.0 + watch_ms > now =>
                {
                    if let Some(c) = chart::channel_of(t.debit).filter(|c| *c < channels) {
                        self.watch.push_back((t.id.0, c, s.created_at.0 + watch_ms));
                    }
                }
                (_, Mode::Pending { .. }) if s.state == Some(PendingState::Pending) => {
                    pending.push(s.clone())
                }
                _ => {}
            }
        }
        self.reconciling = pending.len();
        if pending.is_empty() {
            self.actions.push(Action::Recovered);
        }
        for p in pending {
            self.reconcile_one(p, true);
        }
    }

    /// Decides one pending transfer a start found.
    pub(super) fn reconcile_one(&mut self, p: Stored, first: bool) {
        let channel = chart::channel_of(p.transfer.debit);
        let id = p.transfer.id.0;
        self.decide_start(id, channel, Why::Reconcile { first }, Some(p));
    }

    /// One of the start's pending transfers is decided (or will be retried).
    pub(super) fn reconciled(&mut self) {
        self.reconciling = self.reconciling.saturating_sub(1);
        if self.reconciling == 0 {
            self.actions.push(Action::Recovered);
        }
    }
}
