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
    /// The try's pending transfers: one, or a checkout's lines (empty: none
    /// found).
    stored: Vec<Stored>,
    step: Step,
    ledger_tries: u8,
    /// A transfer was posted: it paid its order (or top-up).
    posted: bool,
    /// Per transfer of the last resolve, whether it was a replay (done before).
    replayed: Vec<bool>,
    /// The round of the per-line step in flight, and its answers so far.
    round: u64,
    answers: Vec<Option<IoReply>>,
}

#[derive(Clone, Debug)]
enum Step {
    Lookup,
    Status,
    /// The pending lines' orders are read (`lines`: indexes into `stored`).
    Read {
        lines: Vec<usize>,
    },
    /// The pending lines' orders are confirmed.
    Confirm {
        lines: Vec<usize>,
    },
    /// Lines posted (`true`) or voided.
    Resolve {
        lines: Vec<(usize, bool)>,
        then: Then,
    },
    /// Lines' late charges recorded and handed back.
    LateRefund {
        lines: Vec<usize>,
        then: Then,
    },
}

/// What a resolve (or late refund) leads to.
#[derive(Clone, Debug)]
enum Then {
    /// The try settled by its orders: each line posted (it paid) or voided.
    Settled,
    /// Resolved after a success: the orders confirmed (their lines posted)
    /// and, if some line was refused (voided), why; its charge goes back.
    Captured {
        orders: Vec<Order>,
        refused: Option<PayError>,
    },
    /// A top-up posted.
    ToppedUp,
    /// Refused lines' charges handed back after a capture: the payment
    /// ends with this (`Ok`: some line was paid).
    Finish(Result<(), PayError>),
    /// A charge handed back.
    Returned,
}

impl Core {
    /// Starts deciding try `id`, unless someone holds its claim (then the
    /// reason waits, is refused, or is asked again, by kind). `stored`:
    /// the try's transfers, when the caller has them.
    pub(super) fn decide_start(
        &mut self,
        id: u64,
        channel: Option<usize>,
        why: Why,
        stored: Vec<Stored>,
    ) {
        // A pending transfer a start found holds its order like a live try,
        // so no new payment of the order starts while it is decided.
        let reconciled_orders: Vec<super::Purpose> = match &why {
            Why::Reconcile { .. } => stored
                .iter()
                .filter(|p| pays_order(p.transfer.code))
                .map(|p| super::Purpose::Order(OrderId(p.transfer.user_data)))
                .collect(),
            _ => Vec::new(),
        };
        let order_busy = reconciled_orders
            .iter()
            .any(|purpose| self.live.get(purpose).is_some_and(|live| *live != id));
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
                    if !stored.is_empty() {
                        self.at(self.now.mono_us + AGAIN_US, Timer::ReconcileAgain(stored));
                    }
                }
                Why::WalletUndo { req, error } => {
                    self.answer(req, Answer::Payment(Err(error)));
                }
            }
            return;
        }
        for purpose in reconciled_orders {
            self.live.insert(purpose, id);
        }
        let known = match (&why, stored) {
            // A retry reads the transfers again: what it had may be stale.
            (Why::Reconcile { first: false }, _) => Vec::new(),
            (_, s) if !s.is_empty() => s,
            (Why::Callback { amount, .. }, _) => self.known_pending(id, channel, Some(*amount)),
            (_, _) => self.known_pending(id, channel, None),
        };
        let reconcile = matches!(why, Why::Reconcile { .. });
        let have = !known.is_empty();
        let d = Decision {
            channel,
            why,
            stored: known,
            step: if reconcile && have {
                Step::Status
            } else {
                Step::Lookup
            },
            ledger_tries: 0,
            posted: false,
            replayed: Vec::new(),
            round: 0,
            answers: Vec::new(),
        };
        self.decisions.insert(id, d);
        match (reconcile, have) {
            (true, true) => self.reconcile_status(id),
            (false, true) => {
                let stored = self.decisions[&id].stored.clone();
                self.on_stored(id, stored)
            }
            (_, false) => self.lookup(id),
        }
    }

    fn lookup(&mut self, id: u64) {
        let ids = super::try_transfer_ids(id);
        self.ledger(Op::Decide(id), Led::LookupTransfers(ids));
    }

    /// A try this core recorded and has not resolved, as stored; empty if
    /// its state must be read from the ledger.
    fn known_pending(&self, id: u64, channel: Option<usize>, amount: Option<u64>) -> Vec<Stored> {
        let (Some(t), Some(channel)) = (self.tries.get(&id), channel) else {
            return Vec::new();
        };
        let fits = t.ledger == TryLedger::Pending
            && t.channel == Some(channel)
            && amount.is_none_or(|a| a == t.amount);
        if !fits {
            return Vec::new();
        }
        super::attempts::try_transfers(id, channel, t)
            .into_iter()
            .map(|transfer| super::pending(transfer, mall_core::Timestamp(0)))
            .collect()
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
            (Step::Lookup, IoReply::Ledger(Ok(LedReply::TransferLookup(r)))) => {
                let stored = r
                    .into_iter()
                    .flatten()
                    .filter(|s| super::of_try(id, &s.transfer))
                    .collect();
                self.on_stored(id, stored)
            }
            (Step::Status, IoReply::Provider(Ok(super::ProviderStatus::Succeeded))) => {
                self.capture(id)
            }
            // Failed, unknown or still pending: the orders decide (a
            // confirm may have landed before the crash); a try voided is
            // watched and a late charge handed back.
            (Step::Status, _) => self.settle_or_void(id),
            (Step::Resolve { lines, then }, IoReply::Ledger(Ok(LedReply::Transfers(r)))) => {
                if r.len() != lines.len() || r.iter().any(Result::is_err) {
                    tracing::error!(
                        transfer = id,
                        ?r,
                        "resolving a pending transfer was refused"
                    );
                    return self.decided(id, Err(PayError::Unavailable));
                }
                let d = self.decisions.get_mut(&id).expect("deciding");
                d.replayed = r.iter().map(|o| *o == Ok(LedOutcome::Replayed)).collect();
                self.then(id, lines, then)
            }
            (Step::LateRefund { lines, then }, IoReply::Ledger(Ok(LedReply::Transfers(r)))) => {
                if r.iter().any(Result::is_err) {
                    tracing::error!(?r, "recording a late refund was refused");
                    return self.decided(id, Err(PayError::Unavailable));
                }
                // Two transfers a line: its charge and its return.
                for pair in r.chunks(2) {
                    if pair.iter().all(|r| *r == Ok(LedOutcome::Created)) {
                        self.counters.late_refunds.fetch_add(1, Relaxed);
                    }
                }
                self.send_late_refunds(id, &lines);
                self.then(id, Vec::new(), then)
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

    /// One line's read or confirm: once every line of the round has
    /// answered, the step goes on.
    pub(super) fn decide_line_reply(&mut self, id: u64, line: usize, round: u64, reply: IoReply) {
        let Some(d) = self.decisions.get_mut(&id).filter(|d| d.round == round) else {
            return;
        };
        let Some(slot) = d.answers.get_mut(line) else {
            return;
        };
        *slot = Some(reply);
        if d.answers.iter().any(Option::is_none) {
            return;
        }
        let answers: Vec<IoReply> = std::mem::take(&mut d.answers)
            .into_iter()
            .flatten()
            .collect();
        // An order or inventory that did not answer: the decision fails
        // and is asked again (after what the other lines did is noted).
        let failed = answers.iter().find_map(|a| match a {
            IoReply::Order(Err(e)) | IoReply::Inventory(Err(e)) => Some(e.clone()),
            IoReply::Order(Ok(_)) | IoReply::Inventory(Ok(_)) => None,
            _ => Some(PayError::Unavailable),
        });
        match d.step.clone() {
            Step::Read { lines } => match failed {
                Some(e) => self.decided(id, Err(e)),
                None => self.read_done(id, lines, answers),
            },
            Step::Confirm { lines } => self.confirmed(id, lines, answers, failed),
            step => {
                tracing::error!(?step, "a line's answer came to a step without lines");
                self.decided(id, Err(PayError::Unavailable))
            }
        }
    }

    /// Starts a round of per-line I/O (`step`: a read or a confirm of
    /// each line's order), each answered to [`Core::decide_line_reply`].
    fn line_round(&mut self, id: u64, step: Step) {
        self.rounds += 1;
        let round = self.rounds;
        let d = self.decisions.get_mut(&id).expect("deciding");
        let (lines, confirm) = match &step {
            Step::Read { lines } => (lines.clone(), false),
            Step::Confirm { lines } => (lines.clone(), true),
            _ => unreachable!("only reads and confirms go by line"),
        };
        let orders: Vec<OrderId> = lines
            .iter()
            .map(|k| OrderId(d.stored[*k].transfer.user_data))
            .collect();
        d.step = step;
        d.round = round;
        d.answers = vec![None; lines.len()];
        for (k, order) in orders.into_iter().enumerate() {
            let op = Op::DecideLine(id, k, round);
            if confirm {
                self.inventory(op, order, Inv::Confirm { order });
            } else {
                self.read_order(op, order);
            }
        }
    }

    /// The ledger step of a decision, again.
    pub(super) fn decide_step_again(&mut self, id: u64) {
        let Some(d) = self.decisions.get(&id) else {
            return;
        };
        match d.step.clone() {
            Step::Lookup => self.lookup(id),
            Step::Resolve { lines, then } => self.resolve(id, lines, then),
            Step::LateRefund { lines, then } => self.late_refund(id, lines, then),
            _ => {}
        }
    }

    /// The try's transfers as stored: what the decision does with them.
    fn on_stored(&mut self, id: u64, stored: Vec<Stored>) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let channel = d.channel;
        let stored = match &d.why {
            Why::Callback { amount, .. } => {
                let fits = channel.is_some_and(|c| {
                    stored.iter().all(|s| {
                        s.transfer.debit == chart::clearing(c)
                            && matches!(s.transfer.mode, Mode::Pending { .. })
                    })
                }) && stored.iter().map(|s| s.transfer.amount).sum::<u64>() == *amount;
                if fits {
                    stored
                } else {
                    Vec::new()
                }
            }
            _ => stored,
        };
        d.stored = stored.clone();
        let of = |state: PendingState| -> Vec<usize> {
            (0..stored.len())
                .filter(|k| stored[*k].state == Some(state))
                .collect()
        };
        let pending = of(PendingState::Pending);
        let mut returned = of(PendingState::Voided);
        returned.extend(of(PendingState::Expired));
        if stored.is_empty() {
            return match d.why {
                Why::Callback { .. } => self.decided(id, Err(PayError::UnknownPayment)),
                Why::Abandon => {
                    if let Some(t) = self.tries.get_mut(&id) {
                        t.ledger = TryLedger::Voided;
                    }
                    self.decided(id, Ok(()))
                }
                _ => self.decided(id, Ok(())),
            };
        }
        match d.why.clone() {
            Why::Callback { succeeded, .. } => match (pending.is_empty(), succeeded) {
                (false, true) => self.capture(id),
                (false, false) => self.settle_or_void(id),
                (true, false) => self.decided(id, Ok(())),
                // Charged: lines voided meanwhile are handed back.
                (true, true) if returned.is_empty() => self.decided(id, Ok(())),
                (true, true) => self.late_refund(id, returned, Then::Returned),
            },
            Why::Reconcile { .. } if !pending.is_empty() => {
                self.decisions.get_mut(&id).expect("deciding").step = Step::Status;
                self.reconcile_status(id)
            }
            Why::Abandon | Why::WalletUndo { .. } if !pending.is_empty() => self.settle_or_void(id),
            Why::Abandon => {
                if let Some(t) = self.tries.get_mut(&id) {
                    t.ledger = TryLedger::Voided;
                }
                self.decided(id, Ok(()))
            }
            Why::LateSuccess { .. } if !pending.is_empty() => self.decided(id, Err(PayError::Busy)),
            Why::LateSuccess { .. } if !returned.is_empty() => {
                self.late_refund(id, returned, Then::Returned)
            }
            _ => self.decided(id, Ok(())),
        }
    }

    /// The pending lines, by index.
    fn pending_lines(&self, id: u64) -> Vec<usize> {
        let d = &self.decisions[&id];
        (0..d.stored.len())
            .filter(|k| d.stored[*k].state == Some(PendingState::Pending))
            .collect()
    }

    /// Pending transfers, undecided: post each one whose order was paid by
    /// it, void the others.
    fn settle_or_void(&mut self, id: u64) {
        let lines = self.pending_lines(id);
        if lines.is_empty() {
            return self.decided(id, Ok(()));
        }
        let d = &self.decisions[&id];
        if lines.iter().all(|k| pays_order(d.stored[*k].transfer.code)) {
            self.line_round(id, Step::Read { lines });
        } else {
            let voids = lines.into_iter().map(|k| (k, false)).collect();
            self.resolve(id, voids, Then::Settled);
        }
    }

    fn read_done(&mut self, id: u64, lines: Vec<usize>, answers: Vec<IoReply>) {
        let mut resolve = Vec::with_capacity(lines.len());
        for (k, answer) in lines.into_iter().zip(answers) {
            let IoReply::Order(Ok(o)) = answer else {
                unreachable!("failed answers are taken first");
            };
            let p = self.decisions[&id].stored[k].clone();
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
            resolve.push((k, ours));
        }
        // Some lines paid by this try, some not: the provider charged (a
        // line is confirmed only after a success), so the rest are
        // confirmed too, or voided and handed back if they cannot be.
        let some = resolve.iter().filter(|l| l.1).count();
        if some > 0 && some < resolve.len() {
            return self.capture(id);
        }
        self.resolve(id, resolve, Then::Settled);
    }

    /// A success for a pending try: confirm its orders, then post; a line
    /// whose order cannot be confirmed any more is voided and its money
    /// handed back.
    fn capture(&mut self, id: u64) {
        let lines = self.pending_lines(id);
        if lines.is_empty() {
            return self.decided(id, Ok(()));
        }
        let d = &self.decisions[&id];
        if d.stored[lines[0]].transfer.code == code::TOP_UP {
            let posts = lines.into_iter().map(|k| (k, true)).collect();
            return self.resolve(id, posts, Then::ToppedUp);
        }
        self.line_round(id, Step::Confirm { lines });
    }

    fn confirmed(
        &mut self,
        id: u64,
        lines: Vec<usize>,
        answers: Vec<IoReply>,
        failed: Option<PayError>,
    ) {
        let mut resolve = Vec::with_capacity(lines.len());
        let mut orders = Vec::new();
        let mut refused = None;
        for (k, answer) in lines.into_iter().zip(answers) {
            let p = self.decisions[&id].stored[k].clone();
            let order = OrderId(p.transfer.user_data);
            let reply = match answer {
                IoReply::Inventory(Ok(reply)) => reply,
                _ => continue,
            };
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
                    self.record_paid(&p.transfer, false);
                    resolve.push((k, true));
                    orders.push(o);
                }
                reply => {
                    let e = match reply {
                        InvReply::Refused(Refusal::HoldExpired) => PayError::HoldExpired,
                        _ => PayError::NotPayable("no longer awaiting payment"),
                    };
                    refused.get_or_insert(e);
                    resolve.push((k, false));
                }
            }
        }
        // A line's confirm did not answer: decided later (the confirms
        // that landed are noted, and replay as this try's).
        if let Some(e) = failed {
            return self.decided(id, Err(e));
        }
        self.resolve(id, resolve, Then::Captured { orders, refused })
    }

    fn resolve(&mut self, id: u64, lines: Vec<(usize, bool)>, then: Then) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let transfers = lines
            .iter()
            .map(|(k, post)| resolution(&d.stored[*k].transfer, *post))
            .collect();
        d.step = Step::Resolve { lines, then };
        self.transfers(Op::Decide(id), transfers);
    }

    /// The provider charged for lines the mall no longer wants: record each
    /// charge and its return (linked: both or neither).
    fn late_refund(&mut self, id: u64, lines: Vec<usize>, then: Then) {
        let d = self.decisions.get_mut(&id).expect("deciding");
        let mut transfers = Vec::with_capacity(lines.len() * 2);
        for k in &lines {
            let t = &d.stored[*k].transfer;
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
            transfers.extend([capture, back]);
        }
        d.step = Step::LateRefund { lines, then };
        self.transfers(Op::Decide(id), transfers);
    }

    fn send_late_refunds(&mut self, id: u64, lines: &[usize]) {
        let d = &self.decisions[&id];
        let refunds: Vec<ProviderRefund> = lines
            .iter()
            .filter_map(|k| {
                let t = &d.stored[*k].transfer;
                Some(ProviderRefund {
                    channel: chart::channel_of(t.debit)?,
                    refund: derived("late_refund", t.id.0).0,
                    payment: super::payment_of(t),
                    amount: t.amount,
                })
            })
            .collect();
        for r in refunds {
            self.send_refund(r);
        }
    }

    /// After a resolve (`lines`: what it posted and voided) or a late refund.
    fn then(&mut self, id: u64, lines: Vec<(usize, bool)>, then: Then) {
        let d = &self.decisions[&id];
        let channel = d.channel;
        let posted: Vec<Stored> = lines
            .iter()
            .filter(|l| l.1)
            .map(|l| d.stored[l.0].clone())
            .collect();
        let voided: Vec<usize> = lines.iter().filter(|l| !l.1).map(|l| l.0).collect();
        let wallet = d
            .stored
            .first()
            .is_some_and(|s| s.transfer.code == code::WALLET_PAYMENT);
        let replayed = d.replayed.clone();
        match then {
            Then::Settled => {
                for p in &posted {
                    self.record_paid(&p.transfer, true);
                }
                if !voided.is_empty() {
                    // Voided: should its provider charge after all, the
                    // watch hands the charge back.
                    if posted.is_empty() {
                        if let Some(tr) = self.tries.get_mut(&id) {
                            tr.ledger = TryLedger::Voided;
                        }
                    }
                    if let Some(c) = channel.filter(|_| !wallet) {
                        self.watch_try(id, c);
                    }
                }
                if !posted.is_empty() {
                    self.decisions.get_mut(&id).expect("deciding").posted = true;
                    self.finish_try(id, Ok((id, channel)));
                }
                self.decided(id, Ok(()))
            }
            Then::Captured { orders, refused } => {
                let name = channel.map(|c| self.channel_name(c)).unwrap_or_default();
                let mut paid = orders.into_iter();
                for (i, (k, post)) in lines.iter().enumerate() {
                    if !post {
                        continue;
                    }
                    let t = self.decisions[&id].stored[*k].transfer.clone();
                    self.record_paid(&t, true);
                    let o = paid.next().expect("an order per line posted");
                    if !replayed.get(i).copied().unwrap_or(false) {
                        self.paid_event(o, t.amount, name.clone());
                    }
                }
                match refused {
                    None => {
                        self.finish_try(id, Ok((id, channel)));
                        self.decided(id, Ok(()))
                    }
                    Some(e) => {
                        // Watched too: should the handback not land (a crash,
                        // a ledger away), the watch finds the charge and
                        // hands the voided lines back (idempotently).
                        if let Some(c) = channel {
                            self.watch_try(id, c);
                        }
                        let finish = if posted.is_empty() { Err(e) } else { Ok(()) };
                        self.late_refund(id, voided, Then::Finish(finish))
                    }
                }
            }
            Then::ToppedUp => {
                self.finish_try(id, Ok((id, channel)));
                self.decided(id, Ok(()))
            }
            Then::Finish(result) => {
                self.finish_try(id, result.map(|()| (id, channel)));
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
                // Decided: its orders are free. Not decided: it holds the
                // orders until it is, so no other payment can pay them too.
                if result.is_ok() {
                    for p in d.stored.iter().filter(|p| pays_order(p.transfer.code)) {
                        let purpose = super::Purpose::Order(OrderId(p.transfer.user_data));
                        if self.live.get(&purpose) == Some(&id) {
                            self.live.remove(&purpose);
                        }
                    }
                }
                if let Err(e) = result {
                    tracing::warn!(transfer = id, error = %e, "reconciling a pending payment failed; retrying");
                    if !d.stored.is_empty() {
                        self.at(self.now.mono_us + AGAIN_US, Timer::ReconcileAgain(d.stored));
                    }
                }
                if first {
                    self.reconciled();
                }
            }
            Why::WalletUndo { req, error } => {
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "a wallet reservation stays pending; retrying");
                    if !d.stored.is_empty() {
                        let p = d.stored.clone();
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
                if let (Err(_), Some(p)) = (&result, d.stored.first()) {
                    let purpose = super::Purpose::Order(OrderId(p.transfer.user_data));
                    self.live.insert(purpose, id);
                }
                self.answer(req, Answer::Payment(answer));
            }
        }
        // A timeout the router sent meanwhile is acted on.
        let requested = self.tries.get(&id).is_some_and(|t| t.abandon_requested);
        if requested {
            self.decide_start(id, d.channel, Why::Abandon, Vec::new());
        }
    }
}
