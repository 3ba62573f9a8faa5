//! After payment: delivery and settlement to the merchant, cash on
//! delivery, refunds (after-sale, or of a cancelled order). Each holds the
//! order's money claim in the core, so one runs at a time per order; the
//! order money index they read and change lives in the core.

use crate::core::{derived, single, ProviderRefund, ID_MASK};
use crate::errors::PayError;
use crate::service::{lock, spawn, CancelHold, Payments};
use crate::views::RefundView;
use mall_core::{Order, OrderId, OrderStatus, PaymentMethod, Refusal};
use mall_inventory::Command as Inv;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{AccountId, Outcome as LedOutcome, TransferId};
use std::sync::atomic::Ordering::Relaxed;
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

    /// Sends a refund to its provider; one that does not go through is
    /// re-sent by the core's sweep (refund ids are idempotent there).
    async fn provider_refund(&self, r: ProviderRefund) {
        let Some(provider) = self.shared.providers.get(r.channel) else {
            tracing::error!(
                channel = r.channel,
                "a refund names a channel no longer configured"
            );
            return;
        };
        if let Err(e) = provider.refund(r.refund, r.payment, r.amount).await {
            tracing::warn!(error = %e, "provider refund failed; it will be re-sent");
            lock(&self.shared.core).refund_later(r);
        }
    }

    /// The order was delivered: it becomes `delivered` (it can no longer be
    /// cancelled), then its escrowed money (less refunds) goes to the
    /// merchant. Delivery comes first and is idempotent, so a settlement cut
    /// off half-way is finished by calling this again.
    pub async fn settle(&self, order: OrderId) -> Result<u64, PayError> {
        let o = self.stored_order(order)?.ok_or(PayError::UnknownOrder)?;
        if !matches!(
            o.status,
            OrderStatus::Paid | OrderStatus::Confirmed | OrderStatus::Delivered
        ) {
            return Err(PayError::NotSettleable(o.status.as_str()));
        }
        let _held = self.claim_order(order)?;
        // Refusals first, so a refused delivery changes nothing.
        match lock(&self.shared.core).order_money(order) {
            None => return Err(PayError::NotPaid),
            Some(m) if m.settled => return Err(PayError::AlreadySettled),
            Some(_) => {}
        }
        let o = self.deliver(order).await?;
        self.settle_claimed(&o).await
    }

    /// `paid | confirmed → delivered` in the inventory (a replay if it is
    /// delivered already). The caller holds the order's claim.
    async fn deliver(&self, order: OrderId) -> Result<Order, PayError> {
        match self.inventory(order, Inv::Deliver { order }).await? {
            InvReply::Order { order, .. } => Ok(order),
            InvReply::Refused(Refusal::InvalidTransition { status, .. }) => {
                Err(PayError::NotSettleable(status.as_str()))
            }
            InvReply::Refused(Refusal::UnknownOrder) => Err(PayError::UnknownOrder),
            _ => {
                // Inactive: cancelled or expired meanwhile.
                let now = self.stored_order(order)?;
                Err(PayError::NotSettleable(
                    now.map_or("unknown", |o| o.status.as_str()),
                ))
            }
        }
    }

    async fn settle_claimed(&self, o: &Order) -> Result<u64, PayError> {
        let money = lock(&self.shared.core)
            .order_money(o.id)
            .ok_or(PayError::NotPaid)?;
        if money.settled {
            return Err(PayError::AlreadySettled);
        }
        let merchant = self.merchant_of(o);
        self.ensure_accounts(&[merchant]).await?;
        let amount = money.paid.saturating_sub(money.refunded);
        if amount > 0 {
            let t = single(
                derived("settle", o.id.0),
                chart::ESCROW,
                merchant,
                amount,
                code::SETTLEMENT,
                o.id.0,
            );
            if let Err(r) = self.transfer(t).await? {
                tracing::error!(refusal = r.code(), "settlement refused");
                return Err(PayError::Unavailable);
            }
        }
        lock(&self.shared.core).set_settled(o.id);
        Ok(amount)
    }

    /// The courier collected cash for a COD order: the order is delivered
    /// (it can no longer be cancelled) and the cash is booked into escrow.
    /// Idempotent: a repeat books nothing twice.
    pub async fn cod_collected(&self, order: OrderId) -> Result<u64, PayError> {
        let o = self.stored_order(order)?.ok_or(PayError::UnknownOrder)?;
        if o.payment != PaymentMethod::Cod
            || !matches!(o.status, OrderStatus::Confirmed | OrderStatus::Delivered)
        {
            return Err(PayError::NotSettleable(o.status.as_str()));
        }
        let amount = u64::try_from(o.amount_fen.0)
            .ok()
            .filter(|a| *a > 0)
            .ok_or(PayError::NotSettleable("free"))?;
        let _held = self.claim_order(order)?;
        self.deliver(order).await?;
        let id = derived("cod", order.0);
        let collect = single(
            id,
            chart::COD,
            chart::ESCROW,
            amount,
            code::COD_COLLECTION,
            order.0,
        );
        if let Err(r) = self.transfer(collect).await? {
            tracing::error!(refusal = r.code(), "COD collection refused");
            return Err(PayError::Unavailable);
        }
        lock(&self.shared.core).record_cod(order, id, amount);
        Ok(amount)
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
        let o = self.stored_order(order)?.ok_or(PayError::UnknownOrder)?;
        let _held = self.claim_order(order)?;
        self.refund_claimed(&o, amount, key).await
    }

    async fn refund_claimed(
        &self,
        o: &Order,
        amount: Option<u64>,
        key: u64,
    ) -> Result<RefundView, PayError> {
        let id = TransferId(
            (mall_core::fingerprint(&[b"refund", &o.id.0.to_le_bytes(), &key.to_le_bytes()])
                & ID_MASK)
                .max(1),
        );
        let money = lock(&self.shared.core)
            .order_money(o.id)
            .ok_or(PayError::NotPaid)?;
        if let Some(done) = self.lookup_transfer(id.0).await? {
            if done.transfer.code != code::REFUND || done.transfer.user_data != o.id.0 {
                tracing::error!(id = id.0, "a refund id collides with another transfer");
                return Err(PayError::Unavailable);
            }
            // A replay: answer as the first time (and make sure the
            // provider heard of it).
            if let Some(channel) = chart::channel_of(money.payer) {
                self.provider_refund(ProviderRefund {
                    channel,
                    refund: id.0,
                    payment: money.paid_by.0,
                    amount: done.transfer.amount,
                })
                .await;
            }
            return Ok(RefundView {
                refund: id.0,
                amount_fen: done.transfer.amount,
                refunded_total_fen: money.refunded,
                paid_fen: money.paid,
            });
        }
        let remaining = money.paid.saturating_sub(money.refunded);
        let amount = amount.unwrap_or(remaining);
        if amount == 0 || amount > remaining {
            return Err(PayError::RefundExceedsPaid { remaining });
        }
        let source = if money.settled {
            self.merchant_of(o)
        } else {
            chart::ESCROW
        };
        let t = single(id, source, money.payer, amount, code::REFUND, o.id.0);
        match self.transfer(t).await? {
            Ok(LedOutcome::Created | LedOutcome::Replayed) => {}
            Err(r) => {
                tracing::error!(refusal = r.code(), "refund refused by the ledger");
                return Err(PayError::Unavailable);
            }
        }
        let total = lock(&self.shared.core).add_refunded(o.id, amount);
        self.shared.counters.refunds.fetch_add(1, Relaxed);
        if let Some(log) = &self.shared.events {
            let now = self.now_wall().0;
            let mut e = mall_events::Event::new(now, mall_events::Kind::Refund);
            (e.u, e.s, e.o, e.a) = (o.user.0, o.sku.0, o.id.0, amount as i64);
            log.record(e);
        }
        if let Some(channel) = chart::channel_of(money.payer) {
            self.provider_refund(ProviderRefund {
                channel,
                refund: id.0,
                payment: money.paid_by.0,
                amount,
            })
            .await;
        }
        Ok(RefundView {
            refund: id.0,
            amount_fen: amount,
            refunded_total_fen: total,
            paid_fen: money.paid,
        })
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
        match self.refund_claimed(order, None, key).await {
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

    /// At a start: refunds cancelled orders that kept money (a crash
    /// between the cancel and its refund).
    pub(crate) async fn refund_cancelled_orders(&self) {
        let paid = lock(&self.shared.core).orders_with_money();
        for order in paid {
            if let Ok(Some(o)) = self.stored_order(order) {
                if o.status == OrderStatus::Cancelled {
                    if let Err(e) = self.on_cancelled(order).await {
                        tracing::warn!(order = order.0, error = %e, "refund of a cancelled order failed");
                    }
                }
            }
        }
    }
}
