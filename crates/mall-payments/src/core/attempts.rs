//! A payment's tries: from the request to the router, the try's pending
//! transfer in the ledger, the provider, and a retry at another channel
//! when a try fails or is given up.
//!
//! **A try is a pending ledger transfer.** Before a provider hears of a
//! try, a pending transfer `channel clearing → escrow` (or `→ wallet` for a
//! top-up) with the try's id is durable. An order has at most one try live:
//! a try given up is decided (voided, or posted if it paid after all)
//! before another starts.
//!
//! **A checkout paid as a whole** is one try and one provider payment for
//! the sum of its line orders. Its pending transfers are one per line
//! (linked: all or none), with ids `try + k + 1` and code
//! `CHECKOUT_PAYMENT`, so each line's money is its own order's, as if paid
//! alone: confirmed, posted, refunded and settled per line. While the try
//! is live, it holds each line order as well as the checkout.

use super::decide::Why;
use super::{Action, Answer, Core, Final, IoReply, Op, ProviderCall, Purpose, ReqId, Timer};
use super::{ProviderFault, WAITERS_PER_PAYMENT_MAX};
use crate::errors::PayError;
use crate::views::{Method, PayStatus, PaymentView};
use mall_core::{Order, OrderId, OrderStatus, PaymentMethod, UserId};
use mall_ledger::chart::{self, code};
use mall_ledger::{Command as Led, Mode, Reply as LedReply, Transfer, TransferId};
use mall_router::router::{AttemptId, Decision, Event, Outcome, RouteRefusal};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Clone, Debug)]
pub(crate) struct Try {
    pub(crate) purpose: Purpose,
    pub(crate) user: mall_core::UserId,
    pub(crate) amount: u64,
    /// A checkout's line orders and their amounts (empty for other tries).
    pub(crate) lines: Vec<(OrderId, u64)>,
    pub(crate) method: Method,
    pub(crate) channel: Option<usize>,
    pub(crate) tried: Vec<usize>,
    /// Given up while someone else held its claim: acted on when they are done.
    pub(crate) abandon_requested: bool,
    /// Where its pending transfer stands, as far as this core made it.
    pub(crate) ledger: TryLedger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TryLedger {
    /// Not recorded (queued, or being recorded under the claim).
    None,
    Pending,
    Voided,
}

/// The try's pending transfers: from the channel's clearing account to
/// escrow (a payment; one per line for a checkout, linked) or to the
/// shopper's wallet (a top-up).
pub(crate) fn try_transfers(id: u64, channel: usize, t: &Try) -> Vec<Transfer> {
    let one = |id: u64, credit, code, amount, user_data| Transfer {
        id: TransferId(id),
        debit: chart::clearing(channel),
        credit,
        amount,
        mode: Mode::Pending { timeout_ms: 0 },
        linked: false,
        code,
        user_data,
    };
    match t.purpose {
        Purpose::Order(o) => vec![one(id, chart::ESCROW, code::CHANNEL_PAYMENT, t.amount, o.0)],
        Purpose::TopUp(_) => {
            let wallet = chart::wallet(t.user);
            vec![one(id, wallet, code::TOP_UP, t.amount, t.user.0)]
        }
        Purpose::Checkout(_) => {
            let n = t.lines.len();
            let mut lines: Vec<Transfer> = (0..n)
                .map(|k| {
                    let (order, amount) = t.lines[k];
                    let line = id + k as u64 + 1;
                    one(line, chart::ESCROW, code::CHECKOUT_PAYMENT, amount, order.0)
                })
                .collect();
            for l in lines.iter_mut().take(n.saturating_sub(1)) {
                l.linked = true;
            }
            lines
        }
    }
}

impl Core {
    pub(super) fn pay(
        &mut self,
        req: ReqId,
        user: UserId,
        order: OrderId,
        method: Method,
        read: Option<Order>,
    ) {
        match self.payable(user, read.as_ref()) {
            Err(e) => self.answer(req, Answer::Payment(Err(e))),
            Ok(amount) => {
                let o = read.expect("a payable order was read");
                match method {
                    Method::Wallet => self.wallet_pay(req, o, amount),
                    _ => {
                        let purpose = Purpose::Order(order);
                        self.channel_pay(req, purpose, user, amount, vec![], method)
                    }
                }
            }
        }
    }

    /// Pays a checkout's line orders with one provider payment: every line
    /// must be payable now, and none of them paid or being paid alone.
    pub(super) fn pay_checkout(
        &mut self,
        req: ReqId,
        user: UserId,
        checkout: u64,
        method: Method,
        reads: Vec<(OrderId, Option<Order>)>,
    ) {
        let mut lines = Vec::with_capacity(reads.len());
        let mut refusal = None;
        if reads.is_empty() || reads.len() > super::CHECKOUT_PAY_LINES_MAX {
            refusal = Some(PayError::NotPayable("not a checkout of payable lines"));
        }
        if method == Method::Wallet {
            refusal = Some(PayError::NoChannel("wallet"));
        }
        for (order, read) in &reads {
            if refusal.is_some() {
                break;
            }
            // Held by anything but this checkout's own live try (a payment
            // alone, a wallet, a cancel, another checkout): in progress.
            let held_elsewhere = self
                .live
                .get(&Purpose::Order(*order))
                .is_some_and(|id| self.live.get(&Purpose::Checkout(checkout)) != Some(id));
            match self.payable(user, read.as_ref().filter(|o| o.id == *order)) {
                _ if held_elsewhere => refusal = Some(PayError::InProgress),
                Ok(amount) => lines.push((*order, amount)),
                Err(e) => refusal = Some(e),
            }
        }
        if let Some(e) = refusal {
            return self.answer(req, Answer::Payment(Err(e)));
        }
        let amount = lines.iter().map(|l| l.1).sum();
        self.channel_pay(
            req,
            Purpose::Checkout(checkout),
            user,
            amount,
            lines,
            method,
        );
    }

    /// The amount to pay, if the order can be paid now.
    fn payable(&self, user: UserId, o: Option<&Order>) -> Result<u64, PayError> {
        let o = o.filter(|o| o.user == user).ok_or(PayError::UnknownOrder)?;
        match (o.status, o.payment) {
            (OrderStatus::AwaitingPayment, PaymentMethod::Online) => {}
            (OrderStatus::Expired, _) => return Err(PayError::HoldExpired),
            (status, _) => return Err(PayError::NotPayable(status.as_str())),
        }
        if o.expires_at.is_some_and(|at| at <= self.now.wall) {
            return Err(PayError::HoldExpired);
        }
        u64::try_from(o.amount_fen.0).map_err(|_| PayError::NotPayable("free"))
    }

    pub(super) fn top_up(&mut self, req: ReqId, user: UserId, amount: u64, method: Method) {
        let id = self.random_id();
        self.channel_pay(req, Purpose::TopUp(id), user, amount, vec![], method);
    }

    /// Waits for `purpose`'s live try, starting one if there is none.
    fn channel_pay(
        &mut self,
        req: ReqId,
        purpose: Purpose,
        user: UserId,
        amount: u64,
        lines: Vec<(OrderId, u64)>,
        method: Method,
    ) {
        let refuse = |core: &mut Core, e| core.answer(req, Answer::Payment(Err(e)));
        let Some(pm) = method.channel_method() else {
            return refuse(self, PayError::NoChannel(method.as_str()));
        };
        if !self.config.channels.iter().any(|c| c.1.contains(&pm)) {
            return refuse(self, PayError::NoChannel(method.as_str()));
        }
        if let Some(live) = self.live.get(&purpose) {
            // A wallet payment, a cancel, a transfer a start found, or a
            // checkout's try holding this line order.
            // A checkout's payment with other lines is another payment.
            let same = |t: &Try| {
                t.purpose == purpose
                    && t.lines.len() == lines.len()
                    && t.lines.iter().zip(&lines).all(|(a, b)| a.0 == b.0)
            };
            if self.tries.get(live).is_none_or(|t| !same(t)) {
                return refuse(self, PayError::InProgress);
            }
        }
        let waiting = self.waiters.entry(purpose).or_default();
        if waiting.len() >= WAITERS_PER_PAYMENT_MAX {
            return refuse(self, PayError::InProgress);
        }
        waiting.push(req);
        let deadline = self.now.mono_us + self.config.wait_ms as i64 * 1_000;
        self.at(deadline, Timer::Waiter { req, purpose });
        if self.live.contains_key(&purpose) {
            return;
        }
        let id = match purpose {
            Purpose::TopUp(id) => id,
            Purpose::Order(_) => self.random_id(),
            Purpose::Checkout(_) => self.checkout_try_id(),
        };
        let t = Try {
            purpose,
            user,
            amount,
            lines,
            method,
            channel: None,
            tried: Vec::new(),
            abandon_requested: false,
            ledger: TryLedger::None,
        };
        self.set_live(&t, id);
        self.tries.insert(id, t);
        self.route(id);
    }

    /// A fresh id for a checkout's try (see [`super::LINE_MASK`]).
    fn checkout_try_id(&mut self) -> u64 {
        (self.rng.next_u64() & super::ID_MASK & !super::LINE_MASK).max(super::LINE_MASK + 1)
    }

    /// Try `id` is its purpose's live try (and its line orders').
    fn set_live(&mut self, t: &Try, id: u64) {
        self.live.insert(t.purpose, id);
        for (order, _) in &t.lines {
            self.live.insert(Purpose::Order(*order), id);
        }
    }

    /// Try `id` is no longer live (where it still is).
    fn clear_live(&mut self, t: &Try, id: u64) {
        let purposes = t.lines.iter().map(|l| Purpose::Order(l.0));
        for purpose in std::iter::once(t.purpose).chain(purposes) {
            if self.live.get(&purpose) == Some(&id) {
                self.live.remove(&purpose);
            }
        }
    }

    /// A request waited `wait_ms`: answered "pending" (if still waiting).
    pub(super) fn waiter_due(&mut self, req: ReqId, purpose: Purpose) {
        let Some(waiting) = self.waiters.get_mut(&purpose) else {
            return;
        };
        let Some(at) = waiting.iter().position(|r| *r == req) else {
            return;
        };
        waiting.swap_remove(at);
        if waiting.is_empty() {
            self.waiters.remove(&purpose);
        }
        let id = self.live.get(&purpose).copied().unwrap_or(0);
        let Some(t) = self.tries.get(&id) else {
            // Not possible: waiters wait only on a live try, and leave when it ends.
            return self.answer(req, Answer::Payment(Err(PayError::InProgress)));
        };
        let view = PaymentView {
            status: PayStatus::Pending,
            method: t.method,
            amount_fen: t.amount,
            attempt: id,
            channel: t.channel.map(|c| self.channel_name(c)),
        };
        self.answer(req, Answer::Payment(Ok(view)));
    }

    /// Hands a try to the router.
    pub(super) fn route(&mut self, id: u64) {
        let Some(t) = self.tries.get(&id) else {
            return;
        };
        let method = t.method.channel_method().expect("a channel try");
        let decision = self
            .router
            .submit(AttemptId(id), method, &t.tried, self.now.mono_us);
        match decision {
            Decision::Dispatch { channel } => self.dispatch(id, channel),
            Decision::Queued => {}
            Decision::Refused(r) => {
                let e = match r {
                    RouteRefusal::QueueFull => PayError::QueueFull,
                    // Also when every channel of the method was tried.
                    RouteRefusal::NoChannelForMethod => PayError::Declined,
                };
                self.finish_try(id, Err(e));
            }
        }
    }

    pub(super) fn router_event(&mut self, event: Event) {
        match event {
            Event::Dispatch { attempt, channel } => self.dispatch(attempt.0, channel),
            Event::QueueExpired { attempt } => {
                self.finish_try(attempt.0, Err(PayError::QueueTimeout))
            }
            Event::TimedOut { attempt, channel } => {
                self.decide_start(attempt.0, Some(channel), Why::Abandon, Vec::new())
            }
        }
    }

    /// A try has a channel: record it in the ledger (under its claim, so a
    /// timeout cannot void a try whose transfer is about to appear), then
    /// ask the provider.
    fn dispatch(&mut self, id: u64, channel: usize) {
        let fresh = self
            .tries
            .get(&id)
            .is_some_and(|t| t.ledger == TryLedger::None && !t.abandon_requested);
        if !fresh || !self.claim(id) {
            return;
        }
        let t = self.tries.get_mut(&id).expect("checked");
        t.channel = Some(channel);
        t.tried.push(channel);
        let wallet = match t.purpose {
            Purpose::TopUp(_) => Some(chart::wallet(t.user)),
            Purpose::Order(_) | Purpose::Checkout(_) => None,
        };
        let missing = super::missing_accounts(self, wallet.as_slice());
        if missing.is_empty() {
            self.record(id);
        } else {
            self.ledger(Op::TryAccounts(id), Led::CreateAccounts(missing));
        }
    }

    fn record(&mut self, id: u64) {
        let Some(t) = self.tries.get(&id) else {
            self.claims.remove(&id);
            return;
        };
        let transfers = try_transfers(id, t.channel.expect("dispatched"), t);
        self.transfers(Op::Record(id), transfers);
    }

    pub(super) fn try_accounts_made(&mut self, id: u64, reply: IoReply) {
        match reply {
            IoReply::Ledger(Ok(LedReply::Accounts(r))) if r.iter().all(Result::is_ok) => {
                if let Some(t) = self.tries.get(&id) {
                    let wallet = chart::wallet(t.user);
                    self.accounts.insert(wallet);
                }
                self.record(id);
            }
            other => {
                tracing::error!(?other, "creating a wallet for a top-up");
                self.record_failed(id);
            }
        }
    }

    pub(super) fn recorded(&mut self, id: u64, reply: IoReply) {
        match reply {
            IoReply::Ledger(Ok(LedReply::Transfers(r))) if r.iter().all(Result::is_ok) => {
                self.claims.remove(&id);
                let Some(t) = self.tries.get_mut(&id) else {
                    return;
                };
                t.ledger = TryLedger::Pending;
                let channel = t.channel.expect("dispatched");
                if t.abandon_requested {
                    return self.decide_start(id, Some(channel), Why::Abandon, Vec::new());
                }
                let call = ProviderCall::Create {
                    payment: id,
                    amount: t.amount,
                    method: t.method,
                };
                self.provider(Op::Create(id), channel, call);
            }
            other => {
                if let IoReply::Ledger(Ok(LedReply::Transfers(r))) = &other {
                    tracing::error!(?r, "recording a payment try was refused");
                }
                self.record_failed(id);
            }
        }
    }

    /// The try's record did not land: nothing was asked of a provider.
    fn record_failed(&mut self, id: u64) {
        self.claims.remove(&id);
        self.router
            .complete(AttemptId(id), Outcome::Failed, self.now.mono_us);
        self.finish_try(id, Err(PayError::Unavailable));
    }

    /// The provider's answer to a create: taken (the callback decides), or
    /// not, and the try is given up (should the provider charge anyway,
    /// the late success is handed back).
    pub(super) fn created(&mut self, id: u64, reply: IoReply) {
        let outcome = match reply {
            IoReply::Provider(Ok(_)) => return,
            IoReply::Provider(Err(ProviderFault::Timeout)) => Outcome::TimedOut,
            _ => Outcome::Failed,
        };
        let channel = self.tries.get(&id).and_then(|t| t.channel);
        if self
            .router
            .complete(AttemptId(id), outcome, self.now.mono_us)
        {
            self.decide_start(id, channel, Why::Abandon, Vec::new());
        }
    }

    /// Ends a try's purpose: tells every waiter and forgets the try.
    pub(super) fn finish_try(&mut self, id: u64, result: Final) {
        let Some(t) = self.tries.remove(&id) else {
            return;
        };
        if self.live.get(&t.purpose) != Some(&id) {
            return; // an old try of a payment that has moved on
        }
        self.clear_live(&t, id);
        let waiters = self.waiters.remove(&t.purpose).unwrap_or_default();
        match &result {
            Ok(_) => self.counters.succeeded.fetch_add(1, Relaxed),
            Err(_) => self.counters.failed.fetch_add(1, Relaxed),
        };
        let answer = result.map(|(attempt, channel)| PaymentView {
            status: PayStatus::Succeeded,
            method: t.method,
            amount_fen: t.amount,
            attempt,
            channel: channel.map(|c| self.channel_name(c)),
        });
        for req in waiters {
            self.answer(req, Answer::Payment(answer.clone()));
        }
    }

    /// A try failed or was given up and is voided: the payment goes on at
    /// another channel, or fails once its channels are tried.
    pub(super) fn retry_or_fail(&mut self, id: u64) {
        let Some(mut t) = self.tries.remove(&id) else {
            return;
        };
        let pm = t.method.channel_method().expect("a channel try");
        let serving = self
            .config
            .channels
            .iter()
            .filter(|c| c.1.contains(&pm))
            .count();
        if t.tried.len() >= self.config.tries_max.min(serving) {
            self.tries.insert(id, t);
            return self.finish_try(id, Err(PayError::Declined));
        }
        if self.live.get(&t.purpose) != Some(&id) {
            return;
        }
        let next = match t.purpose {
            Purpose::Checkout(_) => self.checkout_try_id(),
            _ => self.random_id(),
        };
        t.channel = None;
        t.abandon_requested = false;
        t.ledger = TryLedger::None;
        self.clear_live(&t, id);
        self.set_live(&t, next);
        self.tries.insert(next, t);
        self.route(next);
    }

    /// An order was paid: the event for the log.
    pub(super) fn paid_event(&mut self, order: Order, amount: u64, channel: String) {
        self.actions.push(Action::Paid {
            order,
            amount,
            channel,
        });
    }
}
