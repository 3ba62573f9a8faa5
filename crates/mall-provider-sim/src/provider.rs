//! One provider's books, sans-IO: payments, refunds, the capacity window
//! and the counters. Every method takes `now_ms` (milliseconds since the
//! simulator started) and does no I/O; the HTTP edge ([`crate::server`])
//! calls in under a lock and carries out what comes back (schedule a
//! callback, hold a request).
//!
//! A payment's outcome and latency are drawn when it is created; it stays
//! `pending` until [`Provider::settle`] is called at its callback time.

use crate::config::{ChannelSpec, OutageKind, OverCapacity, PayMethod, LATENCY_MS_MAX};
use mall_core::rng::Rng;
use serde::Serialize;
use std::collections::HashMap;

/// The counters `GET /v1/stats` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Payments accepted (202), not counting idempotent repeats.
    pub created: u64,
    /// Creates refused with 429 (over capacity, `over_capacity = "refuse"`).
    pub refused_over_capacity: u64,
    /// Creates answered 503 during an `error` outage.
    pub errored: u64,
    /// Creates held unanswered during a `timeout` outage.
    pub timed_out: u64,
    /// Creates and refunds refused with 503 because `payments_max` was reached.
    pub refused_full: u64,
    /// Payments now pending (created, not yet settled).
    pub pending: u64,
    /// Payments settled as succeeded.
    pub succeeded: u64,
    /// Payments settled as failed (declined).
    pub failed: u64,
    /// Sum of succeeded payments' amounts.
    pub succeeded_fen: i64,
    /// Sum of refunds.
    pub refunded_fen: i64,
    /// Callbacks the receiver took (answered 2xx).
    pub callbacks_sent: u64,
    /// Callbacks given up after every retry failed.
    pub callbacks_failed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
}

/// A business refusal: becomes one HTTP answer with a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The channel does not take this payment method.
    MethodNotSupported,
    /// A payment with this id exists with another amount or method.
    PaymentIdReused,
    /// Over capacity with `over_capacity = "refuse"`.
    OverCapacity,
    /// An `error` outage.
    Unavailable,
    /// `payments_max` reached.
    Full,
    UnknownPayment,
    PaymentNotSucceeded,
    RefundExceedsPayment,
    /// A refund with this id exists for another payment or amount.
    RefundIdReused,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::MethodNotSupported => "method_not_supported",
            Refusal::PaymentIdReused => "payment_id_reused",
            Refusal::OverCapacity => "over_capacity",
            Refusal::Unavailable => "unavailable",
            Refusal::Full => "payments_full",
            Refusal::UnknownPayment => "unknown_payment",
            Refusal::PaymentNotSucceeded => "payment_not_succeeded",
            Refusal::RefundExceedsPayment => "refund_exceeds_payment",
            Refusal::RefundIdReused => "refund_id_reused",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::MethodNotSupported => "this channel does not take that payment method",
            Refusal::PaymentIdReused => {
                "a payment with this payment_id exists with another amount or method"
            }
            Refusal::OverCapacity => "the channel is over capacity; try again later",
            Refusal::Unavailable => "the channel is unavailable",
            Refusal::Full => "the channel keeps no more payments (payments_max reached)",
            Refusal::UnknownPayment => "no payment with this payment_id",
            Refusal::PaymentNotSucceeded => "the payment has not succeeded",
            Refusal::RefundExceedsPayment => "refunds would exceed the payment's amount",
            Refusal::RefundIdReused => {
                "a refund with this refund_id exists for another payment or amount"
            }
        }
    }
}

/// A create, already parsed at the edge.
#[derive(Clone, Copy, Debug)]
pub struct CreatePayment {
    pub payment_id: u64,
    /// Positive.
    pub amount_fen: i64,
    pub method: PayMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateReply {
    /// A new payment: call [`Provider::settle`] and send its callback
    /// `delay_ms` from now.
    Accepted { delay_ms: u64 },
    /// The same payment again: answer as the first time, schedule nothing.
    Repeated,
    /// A `timeout` outage: do not answer.
    Held,
}

/// A refund, already parsed at the edge.
#[derive(Clone, Copy, Debug)]
pub struct CreateRefund {
    pub refund_id: u64,
    pub payment_id: u64,
    /// Positive.
    pub amount_fen: i64,
}

/// What `GET /v1/payments/{id}` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaymentView {
    pub status: PaymentStatus,
    pub amount_fen: i64,
    pub refunded_fen: i64,
}

/// A payment that has just settled: the callback to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub payment_id: u64,
    /// `Succeeded` or `Failed`.
    pub status: PaymentStatus,
    pub amount_fen: i64,
}

#[derive(Clone, Copy, Debug)]
struct Payment {
    amount_fen: i64,
    method: PayMethod,
    status: PaymentStatus,
    /// Drawn at create: what `status` becomes at settle.
    outcome: PaymentStatus,
    /// Sum of refunds; 0 <= refunded_fen <= amount_fen.
    refunded_fen: i64,
}

#[derive(Clone, Copy, Debug)]
struct Refund {
    payment_id: u64,
    amount_fen: i64,
}

pub struct Provider {
    spec: ChannelSpec,
    /// Bound on `payments` and, separately, on `refunds`.
    payments_max: usize,
    /// Latency and outcome draws.
    rng: Rng,
    /// Every payment ever accepted, by id; at most `payments_max`.
    payments: HashMap<u64, Payment>,
    /// Every refund ever taken, by id; at most `payments_max`.
    refunds: HashMap<u64, Refund>,
    /// The second (since start) `window_creates` counts.
    window_s: u64,
    /// Creates accepted in second `window_s`.
    window_creates: u64,
    stats: Stats,
}

impl Provider {
    pub fn new(spec: ChannelSpec, payments_max: usize, seed: u64) -> Provider {
        assert!(payments_max > 0);
        Provider {
            spec,
            payments_max,
            rng: Rng::new(seed),
            payments: HashMap::new(),
            refunds: HashMap::new(),
            window_s: 0,
            window_creates: 0,
            stats: Stats::default(),
        }
    }

    pub fn spec(&self) -> &ChannelSpec {
        &self.spec
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn create(&mut self, req: CreatePayment, now_ms: u64) -> Result<CreateReply, Refusal> {
        assert!(req.amount_fen > 0);
        if !self.spec.methods.contains(&req.method) {
            return Err(Refusal::MethodNotSupported);
        }
        let outage = self.spec.outage_at(now_ms).map(|o| (o.kind, o.factor));
        match outage {
            Some((OutageKind::Timeout, _)) => {
                self.stats.timed_out += 1;
                return Ok(CreateReply::Held);
            }
            Some((OutageKind::Error, _)) => {
                self.stats.errored += 1;
                return Err(Refusal::Unavailable);
            }
            _ => {}
        }
        if let Some(p) = self.payments.get(&req.payment_id) {
            if p.amount_fen != req.amount_fen || p.method != req.method {
                return Err(Refusal::PaymentIdReused);
            }
            return Ok(CreateReply::Repeated);
        }
        if self.payments.len() >= self.payments_max {
            self.stats.refused_full += 1;
            return Err(Refusal::Full);
        }
        let queued_ms = self.admit(now_ms)?;
        let mut delay_ms = self.rng.log_normal_ms(
            self.spec.latency_ms.median,
            self.spec.latency_ms.p99,
            LATENCY_MS_MAX,
        );
        let decline = self.rng.chance(self.spec.failure_rate);
        let outcome = match outage {
            Some((OutageKind::Decline, _)) => PaymentStatus::Failed,
            _ if decline => PaymentStatus::Failed,
            _ => PaymentStatus::Succeeded,
        };
        if let Some((OutageKind::Slow, factor)) = outage {
            delay_ms = (delay_ms as f64 * factor.unwrap_or(1.0)).round() as u64;
        }
        let payment = Payment {
            amount_fen: req.amount_fen,
            method: req.method,
            status: PaymentStatus::Pending,
            outcome,
            refunded_fen: 0,
        };
        self.payments.insert(req.payment_id, payment);
        self.stats.created += 1;
        self.stats.pending += 1;
        assert!(self.stats.pending <= self.payments.len() as u64);
        Ok(CreateReply::Accepted {
            delay_ms: delay_ms.saturating_add(queued_ms),
        })
    }

    /// Counts a create against the capacity window. `Ok(extra_ms)` is the
    /// time the excess takes to drain at `capacity_per_s` (0 within
    /// capacity; only with `over_capacity = "slow"`).
    fn admit(&mut self, now_ms: u64) -> Result<u64, Refusal> {
        let second = now_ms / 1000;
        if second != self.window_s {
            self.window_s = second;
            self.window_creates = 0;
        }
        let rate_excess = (self.window_creates + 1).saturating_sub(self.spec.capacity_per_s.into());
        let pending_excess =
            (self.stats.pending + 1).saturating_sub(self.spec.max_concurrency.into());
        let excess = rate_excess.max(pending_excess);
        if excess > 0 && self.spec.over_capacity == OverCapacity::Refuse {
            self.stats.refused_over_capacity += 1;
            return Err(Refusal::OverCapacity);
        }
        self.window_creates += 1;
        Ok(excess * 1000 / u64::from(self.spec.capacity_per_s))
    }

    /// The payment's callback time has come: it takes its drawn outcome.
    /// `None` if it is unknown or already settled (nothing to send).
    pub fn settle(&mut self, payment_id: u64) -> Option<Settled> {
        let p = self.payments.get_mut(&payment_id)?;
        if p.status != PaymentStatus::Pending {
            return None;
        }
        p.status = p.outcome;
        assert!(p.status != PaymentStatus::Pending);
        assert!(self.stats.pending > 0);
        self.stats.pending -= 1;
        match p.status {
            PaymentStatus::Succeeded => {
                self.stats.succeeded += 1;
                self.stats.succeeded_fen = self.stats.succeeded_fen.saturating_add(p.amount_fen);
            }
            _ => self.stats.failed += 1,
        }
        Some(Settled {
            payment_id,
            status: p.status,
            amount_fen: p.amount_fen,
        })
    }

    /// During a `timeout` outage no callbacks leave: `Some(end_ms)` is when
    /// the outage in force at `now_ms` ends.
    pub fn callbacks_held_until_ms(&self, now_ms: u64) -> Option<u64> {
        match self.spec.outage_at(now_ms) {
            Some(o) if o.kind == OutageKind::Timeout => Some(o.to_s.saturating_mul(1000)),
            _ => None,
        }
    }

    pub fn payment(&self, payment_id: u64) -> Result<PaymentView, Refusal> {
        let p = self
            .payments
            .get(&payment_id)
            .ok_or(Refusal::UnknownPayment)?;
        Ok(PaymentView {
            status: p.status,
            amount_fen: p.amount_fen,
            refunded_fen: p.refunded_fen,
        })
    }

    pub fn refund(&mut self, req: CreateRefund) -> Result<(), Refusal> {
        assert!(req.amount_fen > 0);
        if let Some(r) = self.refunds.get(&req.refund_id) {
            if r.payment_id != req.payment_id || r.amount_fen != req.amount_fen {
                return Err(Refusal::RefundIdReused);
            }
            return Ok(());
        }
        let p = self
            .payments
            .get_mut(&req.payment_id)
            .ok_or(Refusal::UnknownPayment)?;
        if p.status != PaymentStatus::Succeeded {
            return Err(Refusal::PaymentNotSucceeded);
        }
        let refunded_fen = p
            .refunded_fen
            .checked_add(req.amount_fen)
            .filter(|&r| r <= p.amount_fen)
            .ok_or(Refusal::RefundExceedsPayment)?;
        if self.refunds.len() >= self.payments_max {
            self.stats.refused_full += 1;
            return Err(Refusal::Full);
        }
        p.refunded_fen = refunded_fen;
        assert!(0 < p.refunded_fen && p.refunded_fen <= p.amount_fen);
        self.refunds.insert(
            req.refund_id,
            Refund {
                payment_id: req.payment_id,
                amount_fen: req.amount_fen,
            },
        );
        self.stats.refunded_fen = self.stats.refunded_fen.saturating_add(req.amount_fen);
        Ok(())
    }

    pub fn callback_delivered(&mut self) {
        self.stats.callbacks_sent += 1;
    }

    pub fn callback_given_up(&mut self) {
        self.stats.callbacks_failed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Latency, Outage};

    fn spec(capacity_per_s: u32, over_capacity: OverCapacity) -> ChannelSpec {
        ChannelSpec {
            name: "test".into(),
            port: 0,
            secret: "0123456789abcdef".into(),
            methods: vec![PayMethod::Card],
            capacity_per_s,
            max_concurrency: 1000,
            fee_bp: 0,
            priority: 0,
            over_capacity,
            failure_rate: 0.0,
            latency_ms: Latency {
                median: 10,
                p99: 10,
            },
            outage: vec![],
        }
    }

    fn create(id: u64, amount_fen: i64) -> CreatePayment {
        CreatePayment {
            payment_id: id,
            amount_fen,
            method: PayMethod::Card,
        }
    }

    #[test]
    fn refuse_beyond_capacity_per_second_and_start_over_next_second() {
        let mut p = Provider::new(spec(2, OverCapacity::Refuse), 100, 1);
        assert!(p.create(create(1, 5), 0).is_ok());
        assert!(p.create(create(2, 5), 10).is_ok());
        assert_eq!(p.create(create(3, 5), 999), Err(Refusal::OverCapacity));
        // A repeat is not a new create: it takes no capacity.
        assert_eq!(p.create(create(1, 5), 999), Ok(CreateReply::Repeated));
        assert!(p.create(create(3, 5), 1000).is_ok());
        assert_eq!(p.stats().refused_over_capacity, 1);
        assert_eq!(p.stats().created, 3);
        assert_eq!(p.stats().pending, 3);
    }

    #[test]
    fn slow_accepts_with_delay_growing_with_the_excess() {
        let mut p = Provider::new(spec(2, OverCapacity::Slow), 100, 1);
        let delays: Vec<u64> = (1..=5)
            .map(|id| match p.create(create(id, 5), 0) {
                Ok(CreateReply::Accepted { delay_ms }) => delay_ms,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [10, 10, 510, 1010, 1510]);
    }

    #[test]
    fn concurrency_counts_pending_payments() {
        let mut s = spec(100, OverCapacity::Refuse);
        s.max_concurrency = 1;
        let mut p = Provider::new(s, 100, 1);
        assert!(p.create(create(1, 5), 0).is_ok());
        assert_eq!(p.create(create(2, 5), 0), Err(Refusal::OverCapacity));
        assert!(p.settle(1).is_some());
        assert!(p.create(create(2, 5), 0).is_ok());
    }

    #[test]
    fn outages_by_kind() {
        let mut s = spec(100, OverCapacity::Refuse);
        let window = |from_s, to_s, kind, factor| Outage {
            from_s,
            to_s,
            kind,
            factor,
        };
        s.outage = vec![
            window(1, 2, OutageKind::Timeout, None),
            window(2, 3, OutageKind::Error, None),
            window(3, 4, OutageKind::Slow, Some(10.0)),
            window(4, 5, OutageKind::Decline, None),
        ];
        let mut p = Provider::new(s, 100, 1);
        assert_eq!(p.create(create(1, 5), 1500), Ok(CreateReply::Held));
        assert_eq!(p.callbacks_held_until_ms(1500), Some(2000));
        assert_eq!(p.callbacks_held_until_ms(2000), None);
        assert_eq!(p.create(create(1, 5), 2500), Err(Refusal::Unavailable));
        assert_eq!(
            p.create(create(1, 5), 3500),
            Ok(CreateReply::Accepted { delay_ms: 100 })
        );
        assert!(p.create(create(2, 5), 4500).is_ok());
        assert_eq!(p.settle(1).unwrap().status, PaymentStatus::Succeeded);
        assert_eq!(p.settle(2).unwrap().status, PaymentStatus::Failed);
        assert_eq!(p.settle(2), None);
        let stats = p.stats();
        assert_eq!((stats.timed_out, stats.errored), (1, 1));
        assert_eq!((stats.succeeded, stats.failed, stats.pending), (1, 1, 0));
    }

    #[test]
    fn refunds_stay_within_the_payment() {
        let mut p = Provider::new(spec(100, OverCapacity::Refuse), 100, 1);
        p.create(create(1, 100), 0).unwrap();
        let refund = |refund_id, amount_fen| CreateRefund {
            refund_id,
            payment_id: 1,
            amount_fen,
        };
        assert_eq!(p.refund(refund(9, 10)), Err(Refusal::PaymentNotSucceeded));
        p.settle(1).unwrap();
        assert_eq!(p.refund(refund(9, 60)), Ok(()));
        assert_eq!(p.refund(refund(9, 60)), Ok(()));
        assert_eq!(p.refund(refund(9, 61)), Err(Refusal::RefundIdReused));
        assert_eq!(p.refund(refund(10, 41)), Err(Refusal::RefundExceedsPayment));
        assert_eq!(p.refund(refund(10, 40)), Ok(()));
        assert_eq!(p.payment(1).unwrap().refunded_fen, 100);
        assert_eq!(p.stats().refunded_fen, 100);
        let unknown = CreateRefund {
            refund_id: 11,
            payment_id: 2,
            amount_fen: 1,
        };
        assert_eq!(p.refund(unknown), Err(Refusal::UnknownPayment));
    }

    #[test]
    fn payments_max_bounds_the_map() {
        let mut p = Provider::new(spec(100, OverCapacity::Refuse), 2, 1);
        p.create(create(1, 5), 0).unwrap();
        p.create(create(2, 5), 0).unwrap();
        assert_eq!(p.create(create(3, 5), 0), Err(Refusal::Full));
        assert_eq!(p.create(create(2, 5), 0), Ok(CreateReply::Repeated));
        assert_eq!(p.stats().refused_full, 1);
    }
}
