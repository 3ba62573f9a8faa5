//! After payment, as the service asks it of the core
//! ([`crate::core`]'s `after_sale` decides): delivery and settlement to the
//! merchant, cash on delivery, refunds (after-sale, or of a cancelled
//! order, under the cancel's hold).

use crate::core::{derived, Input};
use crate::errors::PayError;
use crate::service::{lock, spawn, CancelHold, Payments};
use crate::views::RefundView;
use mall_core::{Order, OrderId, OrderPreSale, OrderStatus, Timestamp};
use mall_ledger::chart;
use mall_ledger::AccountId;
use std::time::Duration;

impl Payments {
    fn merchant_of(&self, order: &Order) -> AccountId {
        let merchant = self
            .shared
            .engine
            .board()
            .get(order.sku)
            .map(|e| e.item.merchant)
            .expect("an order's item exists");
        chart::merchant(merchant)
    }

    /// The order was delivered: it becomes `delivered` (it can no longer be
    /// cancelled), then its escrowed money (less refunds) goes to the
    /// merchant. Delivery comes first and is idempotent, so a settlement cut
    /// off half-way is finished by calling this again.
    pub async fn settle(&self, order: OrderId) -> Result<u64, PayError> {
        self.to_merchant(order, |req, read, merchant| Input::Settle {
            req,
            read,
            merchant,
        })
        .await
    }

    /// Asks the core `input` about `order` as stored, with its merchant's
    /// account: an amount moved to the merchant.
    async fn to_merchant(
        &self,
        order: OrderId,
        input: impl FnOnce(crate::core::ReqId, Option<Order>, AccountId) -> Input,
    ) -> Result<u64, PayError> {
        let read = self.stored_order(order)?;
        let merchant = read.as_ref().map_or(chart::ESCROW, |o| self.merchant_of(o));
        self.ask(|req| input(req, read, merchant), None)
            .await?
            .amount()
    }

    /// The courier collected cash for a COD order: the order is delivered
    /// (it can no longer be cancelled) and the cash is booked into escrow.
    /// Idempotent: a repeat books nothing twice.
    pub async fn cod_collected(&self, order: OrderId) -> Result<u64, PayError> {
        let read = self.stored_order(order)?;
        self.ask(|req| Input::CodCollected { req, read }, None)
            .await?
            .amount()
    }

    /// Refunds `amount` (all that is left if `None`) of a paid order, back
    /// the way it came. `key` names the refund: the same key is the same
    /// refund (a replay moves nothing).
    pub async fn refund(
        &self,
        order: OrderId,
        amount: Option<u64>,
        key: u64,
    ) -> Result<RefundView, PayError> {
        let read = self.stored_order(order)?;
        self.refund_read(read, amount, key, false).await
    }

    async fn refund_read(
        &self,
        read: Option<Order>,
        amount: Option<u64>,
        key: u64,
        held: bool,
    ) -> Result<RefundView, PayError> {
        let merchant = read.as_ref().map(|o| self.merchant_of(o));
        let refund = |req| Input::Refund {
            req,
            read,
            amount,
            key,
            merchant: merchant.unwrap_or(chart::ESCROW),
            held,
        };
        self.ask(refund, None).await?.refund()
    }

    /// The order was cancelled under `hold`: refund what is left of its
    /// payment, back the way it came. Should the refund fail (the ledger is
    /// down), it is retried in the background until it lands, and a start
    /// refunds any cancelled order that kept money; the cancel stands.
    pub async fn refund_cancelled(&self, hold: CancelHold, order: &Order) -> Option<RefundView> {
        let key = derived("cancel", order.id.0).0;
        let paid = lock(&self.shared.core)
            .order_money(order.id)
            .is_some_and(|m| m.paid > m.refunded);
        if !paid {
            return None;
        }
        match self.refund_read(Some(order.clone()), None, key, true).await {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(order = order.id.0, error = %e, "refund of a cancelled order failed; retrying in the background");
                drop(hold);
                let me = self.clone();
                let id = order.id;
                spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match me.on_cancelled(id).await {
                            Ok(_) => return,
                            Err(e) => {
                                tracing::warn!(order = id.0, error = %e, "refund of a cancelled order; retrying")
                            }
                        }
                    }
                });
                None
            }
        }
    }

    /// A pre-sale part cancelled with the order a cancel named (not held
    /// by it): its money back, retried in the background until it lands
    /// (`Busy` while a payment of it is still being decided).
    pub fn refund_cancelled_soon(&self, order: OrderId) {
        let me = self.clone();
        spawn(async move {
            let mut wait = Duration::from_millis(0);
            // For ten minutes; after that a start refunds what is left
            // (a payment whose post never landed stays `busy` until then).
            for _ in 0..600 {
                tokio::time::sleep(wait).await;
                match me.on_cancelled(order).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(order = order.0, error = %e, "refund of a cancelled pre-sale part; retrying")
                    }
                }
                wait = Duration::from_secs(1);
            }
            tracing::warn!(
                order = order.0,
                "refund of a cancelled pre-sale part given up until the next start"
            );
        });
    }

    /// A deposit forfeited now (its shopper cancelled): its money to the
    /// merchant, retried in the background until it lands.
    pub fn forfeit_soon(&self, order: OrderId) {
        let me = self.clone();
        spawn(async move {
            let mut wait = Duration::from_millis(0);
            loop {
                tokio::time::sleep(wait).await;
                match me.forfeit(order).await {
                    Ok(_) | Err(PayError::AlreadySettled | PayError::NotPaid) => return,
                    Err(e) => {
                        tracing::debug!(order = order.0, error = %e, "a forfeited deposit to its merchant; retrying")
                    }
                }
                wait = Duration::from_secs(1);
            }
        });
    }

    /// An order was cancelled: refund what is left of its payment, if any.
    /// `Busy` while a payment of the order is still being decided (the
    /// caller retries; a start refunds whatever a cancelled order kept).
    pub async fn on_cancelled(&self, order: OrderId) -> Result<Option<RefundView>, PayError> {
        let paid = {
            let core = lock(&self.shared.core);
            if core.payment_live(order) {
                return Err(PayError::Busy);
            }
            core.order_money(order).is_some_and(|m| m.paid > m.refunded)
        };
        if !paid {
            return Ok(None);
        }
        self.refund(order, None, derived("cancel", order.0).0)
            .await
            .map(Some)
    }

    /// A forfeited pre-sale deposit: its money (less refunds) goes to its
    /// merchant. Idempotent: a repeat moves nothing (`already_settled`).
    pub async fn forfeit(&self, order: OrderId) -> Result<u64, PayError> {
        self.to_merchant(order, |req, read, merchant| Input::Forfeit {
            req,
            read,
            merchant,
        })
        .await
    }

    /// Pays the platform's share `amount` of a delivered order's discounts
    /// to its merchant (once: a repeat moves nothing).
    pub async fn pay_platform_share(&self, order: OrderId, amount: u64) -> Result<u64, PayError> {
        self.to_merchant(order, |req, read, merchant| Input::PlatformShare {
            req,
            read,
            merchant,
            amount,
        })
        .await
    }

    /// At a start: refunds cancelled orders that kept money (a crash
    /// between the cancel and its refund), pays forfeited deposits to their
    /// merchants, and watches paid deposits whose balance is not paid.
    pub(crate) async fn sweep_at_start(&self) {
        let paid = lock(&self.shared.core).orders_with_money();
        let mut balances_paid = Vec::new();
        for order in paid {
            let Ok(Some(o)) = self.stored_order(order) else {
                continue;
            };
            if o.status == OrderStatus::Cancelled {
                if let Err(e) = self.on_cancelled(order).await {
                    tracing::warn!(order = order.0, error = %e, "refund of a cancelled order failed");
                }
            }
            self.look_at(&o, &mut balances_paid);
        }
        let mut deposits = lock(&self.shared.deposits);
        for d in balances_paid {
            deposits.remove(&d);
        }
    }

    /// Notes what an order with money means for the deposit watch: a paid
    /// deposit is watched, a forfeited one paid out, a paid balance ends
    /// its deposit's watch (pushed to `balances_paid`).
    fn look_at(&self, o: &Order, balances_paid: &mut Vec<OrderId>) {
        lock(&self.shared.looked_at).insert(o.id);
        match (o.status, o.presale) {
            (OrderStatus::Forfeited, _) => self.watch_deposit(o, o.updated_at),
            (OrderStatus::Paid, Some(OrderPreSale::Deposit { .. })) => self.note_presale_paid(o),
            (
                OrderStatus::Paid | OrderStatus::Delivered,
                Some(OrderPreSale::Balance { deposit }),
            ) => balances_paid.push(deposit),
            _ => {}
        }
    }

    /// Orders with money not looked at yet (a payment recorded by a path
    /// that announced none: a replayed post, a start's reconciliation).
    async fn look_at_new(&self) {
        let fresh: Vec<OrderId> = {
            let all = lock(&self.shared.core).orders_with_money();
            let seen = lock(&self.shared.looked_at);
            all.into_iter().filter(|o| !seen.contains(o)).collect()
        };
        let mut balances_paid = Vec::new();
        for order in fresh {
            if let Ok(Some(o)) = self.stored_order(order) {
                self.look_at(&o, &mut balances_paid);
            }
        }
        let mut deposits = lock(&self.shared.deposits);
        for d in balances_paid {
            deposits.remove(&d);
        }
    }

    /// A pre-sale order was paid: a deposit is watched until its balance
    /// window ends; a balance paid ends its deposit's watch.
    pub(crate) fn note_presale_paid(&self, o: &Order) {
        match o.presale {
            Some(OrderPreSale::Deposit {
                balance_closes_at, ..
            }) => self.watch_deposit(o, balance_closes_at),
            Some(OrderPreSale::Balance { deposit }) => {
                lock(&self.shared.deposits).remove(&deposit);
            }
            None => {}
        }
    }

    fn watch_deposit(&self, o: &Order, due: Timestamp) {
        lock(&self.shared.deposits).insert(o.id, (due, 0));
    }

    /// Every second: deposits past their balance window's end are read.
    /// Forfeited (the shard forfeits at the window's end): the deposit
    /// goes to the merchant. Still paid: the shard has not ticked yet or
    /// the balance was paid; looked at again 5 rounds later until final.
    /// Anything else (cancelled, delivered): no longer watched.
    pub(crate) async fn watch_deposits(&self) {
        for round in 1u64.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if round.is_multiple_of(30) {
                self.look_at_new().await;
            }
            let now = self.shared.clock.now();
            let due: Vec<OrderId> = lock(&self.shared.deposits)
                .iter_mut()
                .filter(|(_, (due, _))| *due <= now)
                .filter_map(|(id, (_, skip))| match skip {
                    0 => Some(*id),
                    n => {
                        *n -= 1;
                        None
                    }
                })
                .collect();
            for id in due {
                let done = match self.stored_order(id) {
                    Ok(Some(o)) if o.status == OrderStatus::Forfeited => {
                        match self.forfeit(id).await {
                            Ok(_) | Err(PayError::AlreadySettled | PayError::NotPaid) => true,
                            Err(e) => {
                                tracing::warn!(order = id.0, error = %e, "a forfeited deposit's money to its merchant; retrying");
                                false
                            }
                        }
                    }
                    Ok(Some(o)) => o.status != OrderStatus::Paid,
                    Ok(None) => true,
                    Err(_) => false,
                };
                let mut deposits = lock(&self.shared.deposits);
                if done {
                    deposits.remove(&id);
                } else if let Some(w) = deposits.get_mut(&id) {
                    w.1 = 5;
                }
            }
        }
    }
}
