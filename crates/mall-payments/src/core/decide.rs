//! Deciding a try's pending transfer, under the try's claim: whoever holds
//! the claim alone decides it.
//!
//! A decision starts for one of five reasons ([`Why`]) and goes through a
//! few steps, each one I/O:
//! - *lookup*: the try's transfer as stored, when this core has not got it
//!   in hand (after a restart, or for a try long finished);
//! - *status*: the provider's word (a start's reconciliation);
//! - *read*: the order, to tell whether this very try paid it (a confirm
//!   that landed when its post did not);
//! - *confirm*: hold → sold in the inventory, for a success;
//! - *resolve*: post or void the pending transfer;
//! - *late refund*: a charge the mall no longer wants is recorded and
//!   handed back (linked transfers: both or neither), then refunded at
//!   the provider.
//!
//! **Never charged twice.** A try given up is voided before another starts;
//! if its provider charges anyway, the money goes back. A success after the
//! order's hold expired is handed back too, and the order stays expired.

use super::attempts::TryLedger;
use super::{derived, pays_order, resolution, single, Answer, Core, IoReply, Op, ReqId, Timer};
use super::{AGAIN_US, LEDGER_RETRY_US, LEDGER_TRIES};
use crate::errors::PayError;
use mall_core::{Order, OrderId, OrderStatus, Refusal};
use mall_inventory::Command as Inv;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{
    Command as Led, Mode, Outcome as LedOutcome, PendingState, Reply as LedReply, Stored,
    TransferId,
};
use mall_router::router::{AttemptId, Outcome};
use std::sync::atomic::Ordering::Relaxed;

/// A refund to send to a provider (recorded in the ledger already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProviderRefund {
    pub channel: usize,
    pub refund: u64,
    pub payment: u64,
    pub amount: u64,
}

/// Why a try is being decided.
#[derive(Clone, Debug)]
pub(crate) enum Why {
    /// Given up: timed out, refused, or the provider did not take it.
    Abandon,
    /// A provider's callback.
    Callback {
        req: ReqId,
        event: String,
        succeeded: bool,
        amount: u64,
    },
    /// A watched try turned out charged.
    LateSuccess { until: i64 },
    /// Left pending by a crash; `first`: counted in the start's reconciliation.
    Reconcile { first: bool },
    /// A wallet payment whose order could not be confirmed: the order
    /// decides where the reserved money goes, then the request hears `error`.
    WalletUndo { req: ReqId, error: PayError },
}

#[derive(Clone, Debug)]
pub(crate) struct Decision {
    channel: Option<usize>,
    why: Why,
    stored: Option<Stored>,
    step: Step,
    ledger_tries: u8,
    /// The transfer was posted: it paid its order (or top-up).
    posted: bool,
    /// The last post or void was a replay (done before).
    replayed: bool,
}

#[derive(Clone, Debug)]
enum Step {
    Lookup,
    Status,
    Read,
    Confirm,
    Resolve { post: bool, then: Then },
    LateRefund { then: Then },
}

/// What a resolve (or late refund) leads to.
#[derive(Clone, Debug)]
enum Then {
    /// The try settled by its order: posted (it paid) or voided.
    Settled { posted: bool },
    /// Posted after its order was confirmed.
    Captured(Box<Order>),
    /// A top-up posted.
    ToppedUp,
    /// Voided after the order refused the confirm: the charge goes back,
    /// and the payment fails with this.
    Refused(PayError),
    /// A refused capture's charge handed back: the payment fails with this.
    Failed(PayError),
    /// A charge handed back.
    Returned,
}

impl Core {
    /// Starts deciding try `id`, unless someone holds its claim (then the
    /// reason waits, is refused, or is asked again, by kind). `stored`:
    /// the transfer, when the caller has it.
    pub(super) fn decide_start(
        &mut self,
        id: u64,
        channel: Option<usize>,
        why: Why,
        stored: Option<Stored>,
    ) {
        // A pending transfer a start found holds its order like a live try,
        // so no new payment of the order starts while it is decided.
        let reconciled_order = match (&why, &stored) {
            (Why::Reconcile { .. }, Some(p)) if super::pays_order(p.transfer.code) => {
                Some(super::Purpose::Order(OrderId(p.transfer.user_data)))
            }
            _ => None,
        };
        let order_busy = reconciled_order
            .is_some_and(|purpose| self.live.get(&purpose).is_some_and(|live| *live != id));
        if order_busy || !self.claim(id) {
            match why {
                Why::Abandon => {
                    if let Some(t) = self.tries.get_mut(&id) {
                        t.abandon_requested = true;
                    }
                }
                Why::Callback { req, .. } => {
                    self.answer(req, Answer::Callback(Err(PayError::Busy))); // the provider retries
                }
                Why::LateSuccess { until } => {
                    if let Some(c) = channel {
                        self.watch.push_back((id, c, until));
                    }
                }
                Why::Reconcile { first } => {
                    if first {
                        self.reconciled();
                    }
                    if let Some(p) = stored {
                        self.at(self.now.mono_us + AGAIN_US, Timer::ReconcileAgain(p));
                    }
                }
                Why::WalletUndo { req, error } => {
                    self.answer(req, Answer::Payment(Err(error)));
                }
            }
            return;
        }
        if let Some(purpose) = reconciled_order {
            self.live.insert(purpose, id);
        }
        let known = match (&why, stored) {
            // A retry reads the transfer again: what it had may be stale.
            (Why::Reconcile { first: false }, _) => None,
            (_, Some(p)) => Some(p),
            (Why::Callback { amount, .. }, None) => self.known_pending(id, channel, Some(*amount)),
            (_, None) => self.known_pending(id, channel, None),
        };
        let reconcile = matches!(why, Why::Reconcile { .. });
        let mut d = Decision {
            channel,
            why,
            stored: known,
            step: Step::Lookup,
            ledger_tries: 0,
            posted: false,
            replayed: false,
        };
        if reconcile && d.stored.is_some() {
            d.step = Step::Status;
        }
        let have = d.stored.is_some();
        self.decisions.insert(id, d);
        match (reconcile, have) {
            (true, true) => self.reconcile_status(id),
            (false, true) => {
                let stored = self.decisions[&id].stored.clone();
                self.on_stored(id, stored)
            }
            (_, false) => self.ledger(Op::Decide(id), Led::LookupTransfers(vec![TransferId(id)])),
        }
    }

    /// A try this core recorded and has not resolved, as stored; `None` if
    /// its state must be read from the ledger.
    fn known_pending(
        &self,
        id: u64,
        channel: Option<usize>,
        amount: Option<u64>,
    ) -> Option<Stored> {
        let t = self.tries.get(&id)?;
        let channel = channel?;
        let fits = t.ledger == TryLedger::Pending
            && t.channel == Some(channel)
            && amount.is_none_or(|a| a == t.amount);
        fits.then(|| {
            let transfer = super::attempts::try_transfer(id, channel, t);
            super::pending(transfer, mall_core::Timestamp(0))
        })
    }

    fn reconcile_status(&mut self, id: u64) {
        let d = &self.decisions[&id];
        match d.channel.filter(|c| *c < self.config.channels.len()) {
            Some(c) => {
                let call = super::ProviderCall::Status { payment: id };
                self.provider(Op::Decide(id), c, call);
            }
            None => self.settle_or_void(id),
        }
    }

    pub(super) fn decide_reply(&mut self, id: u64, reply: IoReply) {
        let Some(step) = self.decisions.get(&id).map(|d| d.step.clone()) else {
            return;
        };
        match (step, reply) {
            (Step::Lookup, IoReply::Ledger(Ok(LedReply::TransferLookup(mut r)))) => {
                let stored = r.pop().flatten();
                self.on_stored(id, stored)
            }
            (Step::Status, IoReply::Provider(Ok(super::ProviderStatus::Succeeded))) => {
                self.capture(id)
            }
            // Failed, unknown or still pending: the order decides (a
            // confirm may have landed before the crash); a try voided is
            // watched and a late charge handed back.
            (Step::Status, _) => self.settle_or_void(id),
            (Step::Read, IoReply::Order(Ok(o))) => self.read_done(id, o),
            (Step::Confirm, IoReply::Inventory(Ok(reply))) => self.confirmed(id, reply),
            (Step::Resolve { then, .. }, IoReply::Ledger(Ok(LedReply::Transfers(r)))) => {
                match r.first() {
                    Some(Ok(outcome)) => {
                        let d = self.decisions.get_mut(&id).expect("deciding");
                        d.replayed = *outcome == LedOutcome::Replayed;
                        self.then(id, then)
                    }
                    other => {
                        tracing::error!(
                            transfer = id,
                            ?other,
                            "resolving a pending transfer was refused"
                        );
                        self.decided(id, Err(PayError::Unavailable))
                    }
                }
            }
            (Step::LateRefund { then }, IoReply::Ledger(Ok(LedReply::Transfers(r)))) => {
                if r.iter().any(Result::is_err) {
                    tracing::error!(?r, "recording a late refund was refused");
                    return self.decided(id, Err(PayError::Unavailable));
                }
                if r.iter().all(|r| *r == Ok(LedOutcome::Created)) {
                    self.counters.late_refunds.fetch_add(1, Relaxed);
                }
                self.send_late_refund(id);
                self.then(id, then)
            }
            // The ledger was full or could not commit: its steps are tried
            // again shortly, a few times.
            (
                Step::Lookup | Step::Resolve { .. } | Step::LateRefund { .. },
                IoReply::Ledger(Err(PayError::Overloaded | PayError::Unavailable)),
            ) => {
                let d = self.decisions.get_mut(&id).expect("checked");
                d.ledger_tries += 1;
                if d.ledger_tries < LEDGER_TRIES {
                    self.at(self.now.mono_us + LEDGER_RETRY_US, Timer::DecideAgain(id));
                } else {
                    self.decided(id, Err(PayError::Unavailable));
                }
            }
            (_, IoReply::Order(Err(e)) | IoReply::Inventory(Err(e)) | IoReply::Ledger(Err(e))) => {
                self.decided(id, Err(e))
            }
            (step, other) => {
                tracing::error!(?step, ?other, "a decision got an answer it did not ask for");
                self.decided(id, Err(PayError::Unavailable))
            }
        }
    }

    /// The ledger step of a decision, again.
    pub(super) fn decide_step_again(&mut self, id: u64) {
        let Some(d) = self.decisions.get(&id) else {
            return;
        };
        match d.step.clone() {
            Step::Lookup => self.ledger(Op::Decide(id), Led::LookupTransfers(vec![TransferId(id)])),
            Step::Resolve { post, then } => self.resolve(id, post, then),
            Step::LateRefund { then } => self.late_refund(id, then),
            _ => {}
        }
    }

    /// The try's transfer as stored: what the decision does with it.
    fn on_stored(&mut self, id: u64, stored: Option<Stored>) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let channel = d.channel;
        let stored = match &d.why {
            Why::Callback { amount, .. } => stored.filter(|s| {
                channel.is_some_and(|c| s.transfer.debit == chart::clearing(c))
                    && matches!(s.transfer.mode, Mode::Pending { .. })
                    && s.transfer.amount == *amount
            }),
            _ => stored,
        };
        d.stored = stored.clone();
        let state = stored.as_ref().and_then(|s| s.state);
        match (d.why.clone(), state) {
            (Why::Callback { .. }, None) => self.decided(id, Err(PayError::UnknownPayment)),
            (Why::Callback { succeeded, .. }, Some(state)) => match (state, succeeded) {
                (PendingState::Pending, true) => self.capture(id),
                (PendingState::Pending, false) => self.settle_or_void(id),
                (PendingState::Posted, _) | (_, false) => self.decided(id, Ok(())),
                (_, true) => self.late_refund(id, Then::Returned),
            },
            (Why::Reconcile { .. }, Some(PendingState::Pending)) => {
                self.decisions.get_mut(&id).expect("deciding").step = Step::Status;
                self.reconcile_status(id)
            }
            (Why::Abandon | Why::WalletUndo { .. }, Some(PendingState::Pending)) => {
                self.settle_or_void(id)
            }
            (Why::Abandon, _) => {
                if let Some(t) = self.tries.get_mut(&id) {
                    t.ledger = TryLedger::Voided;
                }
                self.decided(id, Ok(()))
            }
            (Why::LateSuccess { .. }, Some(PendingState::Voided | PendingState::Expired)) => {
                self.late_refund(id, Then::Returned)
            }
            (Why::LateSuccess { .. }, Some(PendingState::Pending)) => {
                self.decided(id, Err(PayError::Busy))
            }
            _ => self.decided(id, Ok(())),
        }
    }

    /// A pending transfer, undecided: post it if its order was paid by it,
    /// void it otherwise.
    fn settle_or_void(&mut self, id: u64) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let Some(p) = d.stored.clone() else {
            return self.decided(id, Ok(()));
        };
        if pays_order(p.transfer.code) {
            d.step = Step::Read;
            self.read_order(Op::Decide(id), OrderId(p.transfer.user_data));
        } else {
            self.resolve(id, false, Then::Settled { posted: false });
        }
    }

    fn read_done(&mut self, id: u64, o: Option<Order>) {
        let p = self.decisions[&id]
            .stored
            .clone()
            .expect("read for a transfer");
        let order = OrderId(p.transfer.user_data);
        // Forfeited: a pre-sale deposit, forfeited only once paid (its
        // money goes to the merchant, so it is posted, never voided).
        let paid = o.is_some_and(|o| {
            matches!(
                o.status,
                OrderStatus::Paid | OrderStatus::Delivered | OrderStatus::Forfeited
            )
        });
        let ours = paid
            && self
                .orders
                .get(&order)
                .is_none_or(|m| m.paid_by == p.transfer.id);
        self.resolve(id, ours, Then::Settled { posted: ours });
    }

    /// A success for a pending try: confirm the order, then post; if the
    /// order cannot be confirmed any more, void and hand the money back.
    fn capture(&mut self, id: u64) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let Some(p) = d.stored.clone() else {
            return self.decided(id, Ok(()));
        };
        if p.transfer.code == code::TOP_UP {
            return self.resolve(id, true, Then::ToppedUp);
        }
        d.step = Step::Confirm;
        let order = OrderId(p.transfer.user_data);
        self.inventory(Op::Decide(id), order, Inv::Confirm { order });
    }

    fn confirmed(&mut self, id: u64, reply: InvReply) {
        let p = self.decisions[&id]
            .stored
            .clone()
            .expect("confirming a transfer");
        let order = OrderId(p.transfer.user_data);
        // A replayed confirm is this try's only if no other transfer paid the order.
        match reply {
            InvReply::Order { order: o, replayed }
                if !replayed
                    || self
                        .orders
                        .get(&order)
                        .is_none_or(|m| m.paid_by == p.transfer.id) =>
            {
                // The order is this try's from the confirm on, before its
                // post lands: any other try of it now finds it taken.
                let t = &p.transfer;
                self.record_paid(order, t.debit, t.id, t.amount, false);
                self.resolve(id, true, Then::Captured(Box::new(o)))
            }
            reply => {
                let e = match reply {
                    InvReply::Refused(Refusal::HoldExpired) => PayError::HoldExpired,
                    _ => PayError::NotPayable("no longer awaiting payment"),
                };
                self.resolve(id, false, Then::Refused(e))
            }
        }
    }

    fn resolve(&mut self, id: u64, post: bool, then: Then) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let p = d.stored.clone().expect("resolving a transfer");
        d.step = Step::Resolve { post, then };
        self.transfers(Op::Decide(id), vec![resolution(&p.transfer, post)]);
    }

    /// The provider charged for a try the mall no longer wants: record the
    /// charge and its return (linked: both or neither).
    fn late_refund(&mut self, id: u64, then: Then) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let t = d
            .stored
            .clone()
            .expect("a late refund of a transfer")
            .transfer;
        d.step = Step::LateRefund { then };
        let mut capture = single(
            derived("late_capture", t.id.0),
            t.debit,
            chart::ESCROW,
            t.amount,
            code::LATE_CAPTURE,
            t.user_data,
        );
        capture.linked = true;
        let back = single(
            derived("late_refund", t.id.0),
            chart::ESCROW,
            t.debit,
            t.amount,
            code::LATE_REFUND,
            t.user_data,
        );
        self.transfers(Op::Decide(id), vec![capture, back]);
    }

    fn send_late_refund(&mut self, id: u64) {
        let d = &self.decisions[&id];
        let t = &d.stored.as_ref().expect("a late refund").transfer;
        let Some(channel) = chart::channel_of(t.debit) else {
            return;
        };
        let r = ProviderRefund {
            channel,
            refund: derived("late_refund", t.id.0).0,
            payment: t.id.0,
            amount: t.amount,
        };
        self.send_refund(r);
    }

    fn then(&mut self, id: u64, then: Then) {
        let d = &self.decisions[&id];
        let p = d.stored.clone().expect("a decided transfer");
        let t = &p.transfer;
        let channel = d.channel;
        match then {
            Then::Settled { posted: true } => {
                self.decisions.get_mut(&id).expect("deciding").posted = true;
                self.record_paid(OrderId(t.user_data), t.debit, t.id, t.amount, true);
                self.finish_try(id, Ok((id, channel)));
                self.decided(id, Ok(()))
            }
            Then::Settled { posted: false } => {
                if let Some(tr) = self.tries.get_mut(&id) {
                    tr.ledger = TryLedger::Voided;
                }
                if let Some(c) = channel.filter(|_| t.code != code::WALLET_PAYMENT) {
                    self.watch_try(id, c);
                }
                self.decided(id, Ok(()))
            }
            Then::Captured(o) => {
                let order = OrderId(t.user_data);
                self.record_paid(order, t.debit, t.id, t.amount, true);
                if !self.decisions[&id].replayed {
                    let name = channel.map(|c| self.channel_name(c)).unwrap_or_default();
                    self.paid_event(*o, t.amount, name);
                }
                self.finish_try(id, Ok((id, channel)));
                self.decided(id, Ok(()))
            }
            Then::ToppedUp => {
                self.finish_try(id, Ok((id, channel)));
                self.decided(id, Ok(()))
            }
            Then::Refused(e) => self.late_refund(id, Then::Failed(e)),
            Then::Failed(e) => {
                self.finish_try(id, Err(e));
                self.decided(id, Ok(()))
            }
            Then::Returned => self.decided(id, Ok(())),
        }
    }

    /// The decision is over: the claim is released and its reason answered.
    fn decided(&mut self, id: u64, result: Result<(), PayError>) {
        let Some(d) = self.decisions.remove(&id) else {
            return;
        };
        self.claims.remove(&id);
        match d.why {
            Why::Abandon => match result {
                // The try is voided (or paid after all): the payment goes on.
                Ok(()) => self.retry_or_fail(id),
                // The try stays live (so no other starts) until it is decided.
                Err(e) => {
                    tracing::warn!(error = %e, "giving up a payment try failed; retrying");
                    self.at(
                        self.now.mono_us + AGAIN_US,
                        Timer::AbandonAgain(id, d.channel),
                    );
                }
            },
            Why::Callback {
                req,
                event,
                succeeded,
                ..
            } => {
                if result.is_ok() {
                    // The router hears the outcome only once the decision is
                    // durable: if it failed half-way, the router's timeout
                    // gives the try up, so nothing is left hanging.
                    let outcome = if succeeded {
                        Outcome::Succeeded
                    } else {
                        Outcome::Failed
                    };
                    self.router
                        .complete(AttemptId(id), outcome, self.now.mono_us);
                    if !succeeded {
                        self.retry_or_fail(id);
                    }
                    self.remember_event(event);
                }
                self.answer(req, Answer::Callback(result));
            }
            Why::LateSuccess { until } => {
                if result.is_err() {
                    if let Some(c) = d.channel {
                        self.watch.push_back((id, c, until));
                    }
                }
            }
            Why::Reconcile { first } => {
                // Decided: its order is free. Not decided: it holds the
                // order until it is, so no other payment can pay it too.
                if let (Some(p), Ok(())) = (&d.stored, &result) {
                    let purpose = super::Purpose::Order(OrderId(p.transfer.user_data));
                    if pays_order(p.transfer.code) && self.live.get(&purpose) == Some(&id) {
                        self.live.remove(&purpose);
                    }
                }
                if let Err(e) = result {
                    tracing::warn!(transfer = id, error = %e, "reconciling a pending payment failed; retrying");
                    if let Some(p) = d.stored {
                        self.at(self.now.mono_us + AGAIN_US, Timer::ReconcileAgain(p));
                    }
                }
                if first {
                    self.reconciled();
                }
            }
            Why::WalletUndo { req, error } => {
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "a wallet reservation stays pending; retrying");
                    if let Some(p) = d.stored.clone() {
                        self.at(self.now.mono_us + AGAIN_US, Timer::ReconcileAgain(p));
                    }
                }
                // Paid by this very reservation after all (its confirm
                // landed, its answer did not): the answer says so.
                let answer = match self.wallet_done(req) {
                    Some(view) if d.posted => Ok(view),
                    _ => Err(error),
                };
                // Not decided: the reservation holds its order until its
                // retry decides it, so no other payment can pay it too.
                if let (Err(_), Some(p)) = (&result, &d.stored) {
                    let purpose = super::Purpose::Order(OrderId(p.transfer.user_data));
                    self.live.insert(purpose, id);
                }
                self.answer(req, Answer::Payment(answer));
            }
        }
        // A timeout the router sent meanwhile is acted on.
        let requested = self.tries.get(&id).is_some_and(|t| t.abandon_requested);
        if requested {
            self.decide_start(id, d.channel, Why::Abandon, None);
        }
    }
}
