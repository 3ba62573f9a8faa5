//! A reference model of one shard, written for obviousness, not speed:
//! counters are recounted from the full list of orders on every question.
//! The deterministic simulation checks every reply of [`crate::Inventory`]
//! against it.

use crate::{Command, Reply};
use mall_core::{
    Claim, ClaimId, ClaimStatus, Coupon, CouponId, Fen, Item, Order, OrderId, OrderPreSale,
    OrderStatus, PaymentMethod, Refusal, Sku, Timestamp, UserId,
};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Model {
    pub shard: usize,
    pub hold_timeout_ms: i64,
    pub items: BTreeMap<Sku, Item>,
    /// Every order ever made, terminal ones included.
    pub orders: BTreeMap<OrderId, Order>,
    pub next_seq: u64,
    pub coupons: BTreeMap<CouponId, Coupon>,
    /// Every claim ever made.
    pub claims: Vec<Claim>,
}

impl Model {
    pub fn new(shard: usize, hold_timeout_ms: i64) -> Model {
        Model {
            shard,
            hold_timeout_ms,
            items: BTreeMap::new(),
            orders: BTreeMap::new(),
            next_seq: 1,
            coupons: BTreeMap::new(),
            claims: Vec::new(),
        }
    }

    /// `(claims, used)` of a coupon, recounted.
    pub fn coupon_counters(&self, id: CouponId) -> (u32, u32) {
        let mine = self.claims.iter().filter(|c| c.coupon == id);
        let used = mine
            .clone()
            .filter(|c| c.status == ClaimStatus::Used)
            .count();
        (mine.count() as u32, used as u32)
    }

    fn coupon_command(&mut self, command: &Command, now: Timestamp) -> Reply {
        match command {
            Command::PutCoupon { coupon, expected } => {
                if self.coupons.get(&coupon.id) != expected.as_ref() {
                    return Reply::Refused(Refusal::ItemChanged);
                }
                let (claims, _) = self.coupon_counters(coupon.id);
                if coupon.quantity < claims {
                    return Reply::Refused(Refusal::StockBelowCommitted { committed: claims });
                }
                self.coupons.insert(coupon.id, coupon.clone());
                Reply::Coupon(coupon.clone())
            }
            Command::Claim(c) => {
                if let Some(key) = &c.idempotency_key {
                    let earlier = self
                        .claims
                        .iter()
                        .find(|x| x.user == c.user && x.idempotency_key.as_ref() == Some(key));
                    if let Some(e) = earlier {
                        return if e.request_fingerprint == c.fingerprint {
                            Reply::Claim {
                                claim: e.clone(),
                                replayed: true,
                            }
                        } else {
                            Reply::Refused(Refusal::IdempotencyKeyReused)
                        };
                    }
                }
                let Some(coupon) = self.coupons.get(&c.coupon) else {
                    return Reply::Refused(Refusal::UnknownCoupon);
                };
                if now < coupon.claim_opens_at {
                    return Reply::Refused(Refusal::SaleNotOpen {
                        opens_at: coupon.claim_opens_at,
                    });
                }
                if now >= coupon.claim_closes_at {
                    return Reply::Refused(Refusal::SaleClosed {
                        closes_at: coupon.claim_closes_at,
                    });
                }
                let (claims, _) = self.coupon_counters(c.coupon);
                if claims >= coupon.quantity {
                    return Reply::Refused(Refusal::SoldOut);
                }
                let mine = self
                    .claims
                    .iter()
                    .filter(|x| x.user == c.user && x.coupon == c.coupon)
                    .count() as u32;
                if mine >= coupon.per_user_limit {
                    return Reply::Refused(Refusal::LimitReached {
                        limit: coupon.per_user_limit,
                        active: mine,
                    });
                }
                let seq = self.claims.iter().map(|x| x.id.seq()).max().unwrap_or(0) + 1;
                let claim = Claim {
                    id: ClaimId::new(self.shard, seq),
                    coupon: c.coupon,
                    user: c.user,
                    status: ClaimStatus::Claimed,
                    order: None,
                    idempotency_key: c.idempotency_key.clone(),
                    request_fingerprint: c.fingerprint,
                    created_at: now,
                    updated_at: now,
                };
                self.claims.push(claim.clone());
                Reply::Claim {
                    claim,
                    replayed: false,
                }
            }
            Command::UseClaim { claim, user, order } => {
                let Some(c) = self
                    .claims
                    .iter_mut()
                    .find(|x| x.id == *claim && x.user == *user)
                else {
                    return Reply::Refused(Refusal::UnknownCoupon);
                };
                if c.status == ClaimStatus::Used {
                    return if c.order == Some(*order) {
                        Reply::Claim {
                            claim: c.clone(),
                            replayed: true,
                        }
                    } else {
                        Reply::Refused(Refusal::ClaimNotUsable)
                    };
                }
                if now >= self.coupons[&c.coupon].valid_until {
                    return Reply::Refused(Refusal::ClaimNotUsable);
                }
                c.status = ClaimStatus::Used;
                c.order = Some(*order);
                c.updated_at = now;
                Reply::Claim {
                    claim: c.clone(),
                    replayed: false,
                }
            }
            Command::ReturnClaim { claim, order } => {
                let Some(c) = self.claims.iter_mut().find(|x| x.id == *claim) else {
                    return Reply::Refused(Refusal::UnknownCoupon);
                };
                if c.status == ClaimStatus::Used && c.order == Some(*order) {
                    c.status = ClaimStatus::Claimed;
                    c.order = None;
                    c.updated_at = now;
                    Reply::Claim {
                        claim: c.clone(),
                        replayed: false,
                    }
                } else {
                    Reply::Claim {
                        claim: c.clone(),
                        replayed: true,
                    }
                }
            }
            Command::ClaimsOf { user } => {
                let mut claims: Vec<Claim> = self
                    .claims
                    .iter()
                    .filter(|c| c.user == *user)
                    .cloned()
                    .collect();
                claims.sort_by_key(|c| c.id);
                let coupons: Vec<Coupon> = self
                    .coupons
                    .values()
                    .filter(|c| claims.iter().any(|x| x.coupon == c.id))
                    .cloned()
                    .collect();
                Reply::Claims { claims, coupons }
            }
            Command::Coupons => Reply::Coupons(
                self.coupons
                    .values()
                    .map(|c| {
                        let (claims, used) = self.coupon_counters(c.id);
                        crate::CouponCounts {
                            coupon: c.clone(),
                            claims,
                            used,
                        }
                    })
                    .collect(),
            ),
            _ => unreachable!("not a coupon command"),
        }
    }

    /// `(available, held, sold)`, recounted.
    pub fn counters(&self, sku: Sku) -> (u32, u32, u32) {
        let (mut held, mut sold) = (0, 0);
        for o in self
            .orders
            .values()
            .filter(|o| o.sku == sku && !o.is_balance())
        {
            match o.status {
                OrderStatus::AwaitingPayment => held += o.quantity.get(),
                OrderStatus::Paid | OrderStatus::Confirmed | OrderStatus::Delivered => {
                    sold += o.quantity.get()
                }
                _ => {}
            }
        }
        (self.items[&sku].stock_total - held - sold, held, sold)
    }

    fn active_units(&self, user: UserId, sku: Sku) -> u32 {
        self.orders
            .values()
            .filter(|o| o.user == user && o.sku == sku && o.status.is_active() && !o.is_balance())
            .map(|o| o.quantity.get())
            .sum()
    }

    pub fn tick(&mut self, now: Timestamp) {
        for o in self.orders.values_mut() {
            if o.status == OrderStatus::AwaitingPayment && o.expires_at.is_some_and(|at| at <= now)
            {
                o.status = OrderStatus::Expired;
                o.expires_at = None;
                o.updated_at = now;
            }
        }
        // Paid deposits at their balance window's end: forfeited unless
        // their balance is paid.
        let due: Vec<OrderId> = self
            .orders
            .values()
            .filter(|o| o.status == OrderStatus::Paid)
            .filter(|o| {
                matches!(o.presale, Some(OrderPreSale::Deposit { balance_closes_at, .. }) if balance_closes_at <= now)
            })
            .map(|o| o.id)
            .collect();
        for d in due {
            if self.balance_of(d).is_some_and(|b| b.status.is_sold()) {
                continue;
            }
            let o = self.orders.get_mut(&d).expect("due above");
            (o.status, o.updated_at) = (OrderStatus::Forfeited, now);
        }
    }

    /// The active balance order of deposit `d`, if one was asked.
    fn balance_of(&self, d: OrderId) -> Option<&Order> {
        self.orders.values().find(|o| {
            o.presale == Some(OrderPreSale::Balance { deposit: d }) && o.status.is_active()
        })
    }

    /// Ends an order (a cancel), as the engine records it.
    fn end(&mut self, id: OrderId, status: OrderStatus, now: Timestamp) -> Order {
        let o = self.orders.get_mut(&id).expect("an order to end");
        (o.status, o.expires_at, o.updated_at) = (status, None, now);
        o.clone()
    }

    pub fn apply(&mut self, command: &Command, now: Timestamp) -> Reply {
        match command {
            Command::Reserve(r) => {
                if let Some(key) = &r.idempotency_key {
                    let earlier = self
                        .orders
                        .values()
                        .find(|o| o.user == r.user && o.idempotency_key.as_ref() == Some(key));
                    if let Some(o) = earlier {
                        if o.request_fingerprint != r.fingerprint {
                            return Reply::Refused(Refusal::IdempotencyKeyReused);
                        }
                        return if o.status.is_active() {
                            Reply::Order {
                                order: o.clone(),
                                replayed: true,
                            }
                        } else {
                            Reply::StoredOrder(o.id)
                        };
                    }
                }
                let Some(item) = self.items.get(&r.sku).cloned() else {
                    return Reply::Refused(Refusal::UnknownItem);
                };
                if !r.early_access && now < item.opens_at {
                    return Reply::Refused(Refusal::SaleNotOpen {
                        opens_at: item.opens_at,
                    });
                }
                if !r.early_access && now >= item.closes_at {
                    return Reply::Refused(Refusal::SaleClosed {
                        closes_at: item.closes_at,
                    });
                }
                let (available, _, _) = self.counters(r.sku);
                let q = r.quantity.get();
                if available == 0 {
                    return Reply::Refused(Refusal::SoldOut);
                }
                // A pre-sale: online, undiscounted; it costs its deposit, at
                // the price of the balance window's opening.
                let presale = item.presale.map(|p| {
                    let final_price = price_at(&item, p.balance_opens_at);
                    let deposit = Fen(p.deposit_fen.0 * i64::from(q));
                    let part = OrderPreSale::Deposit {
                        balance_fen: Fen((final_price.0 - p.worth_fen.0) * i64::from(q)),
                        balance_opens_at: p.balance_opens_at,
                        balance_closes_at: p.balance_closes_at,
                    };
                    (final_price, deposit, part)
                });
                if presale.is_some()
                    && (r.payment != PaymentMethod::Online || r.discount_fen.0 != 0)
                {
                    return Reply::Refused(Refusal::PreSaleOnlineOnly);
                }
                // The price now: the sale window's, else the list price.
                let (unit, amount) = match presale {
                    Some((final_price, deposit, _)) => (final_price, deposit),
                    None => {
                        let unit = price_at(&item, now);
                        (unit, Fen(unit.0 * i64::from(q)))
                    }
                };
                // A discount may take a unit down to its floor (at least
                // 1 fen, at most the list price), never below.
                let floor = item.floor_price_fen.0.max(1).min(item.price_fen.0.max(1));
                let stale = r.expected_total_fen.is_some_and(|e| e != amount);
                let too_deep = r.discount_fen.0 < 0
                    || (presale.is_none() && amount.0 - r.discount_fen.0 < floor * i64::from(q));
                if stale || too_deep {
                    return Reply::Refused(Refusal::PriceChanged {
                        list_price_fen: item.price_fen,
                        unit_price_fen: unit,
                        amount_fen: amount,
                    });
                }
                let amount = Fen(amount.0 - r.discount_fen.0);
                let active = self.active_units(r.user, r.sku);
                if active + q > item.per_user_limit {
                    return Reply::Refused(Refusal::LimitReached {
                        limit: item.per_user_limit,
                        active,
                    });
                }
                if available < q {
                    return Reply::Refused(Refusal::InsufficientStock { available });
                }
                let online = r.payment == PaymentMethod::Online;
                let order = Order {
                    id: OrderId::new(self.shard, self.next_seq),
                    sku: r.sku,
                    user: r.user,
                    quantity: r.quantity,
                    list_price_fen: item.price_fen,
                    unit_price_fen: unit,
                    amount_fen: amount,
                    payment: r.payment,
                    status: if online {
                        OrderStatus::AwaitingPayment
                    } else {
                        OrderStatus::Confirmed
                    },
                    address: r.address.clone(),
                    idempotency_key: r.idempotency_key.clone(),
                    request_fingerprint: r.fingerprint,
                    per_user_limit: item.per_user_limit,
                    created_at: now,
                    expires_at: online.then(|| {
                        let hold = now.plus_ms(self.hold_timeout_ms);
                        match presale {
                            Some((
                                _,
                                _,
                                OrderPreSale::Deposit {
                                    balance_closes_at, ..
                                },
                            )) => hold.min(balance_closes_at),
                            _ => hold,
                        }
                    }),
                    updated_at: now,
                    presale: presale.map(|p| p.2),
                };
                self.next_seq += 1;
                self.orders.insert(order.id, order.clone());
                Reply::Order {
                    order,
                    replayed: false,
                }
            }
            Command::Confirm { order } => {
                let Some(o) = self.orders.get_mut(order) else {
                    return Reply::Inactive(*order);
                };
                match o.status {
                    OrderStatus::Paid => Reply::Order {
                        order: o.clone(),
                        replayed: true,
                    },
                    OrderStatus::Delivered if o.payment == PaymentMethod::Online => Reply::Order {
                        order: o.clone(),
                        replayed: true,
                    },
                    OrderStatus::AwaitingPayment if o.expires_at.is_some_and(|at| at <= now) => {
                        o.status = OrderStatus::Expired;
                        o.expires_at = None;
                        o.updated_at = now;
                        Reply::Refused(Refusal::HoldExpired)
                    }
                    OrderStatus::AwaitingPayment => {
                        o.status = OrderStatus::Paid;
                        o.expires_at = None;
                        o.updated_at = now;
                        Reply::Order {
                            order: o.clone(),
                            replayed: false,
                        }
                    }
                    OrderStatus::Confirmed | OrderStatus::Delivered => {
                        Reply::Refused(Refusal::InvalidTransition {
                            status: o.status,
                            action: "paid".into(),
                        })
                    }
                    OrderStatus::Cancelled | OrderStatus::Expired | OrderStatus::Forfeited => {
                        Reply::Inactive(*order)
                    }
                }
            }
            Command::Release { order, by } => {
                let Some(o) = self.orders.get_mut(order) else {
                    return Reply::Inactive(*order);
                };
                if !o.status.is_active() {
                    return Reply::Inactive(*order);
                }
                if by.is_some_and(|u| u != o.user) {
                    return Reply::Refused(Refusal::UnknownOrder);
                }
                if let Some(d) = o.presale_deposit() {
                    return self.release_presale(d, *by, now);
                }
                let o = self.orders.get_mut(order).expect("looked up above");
                match o.status {
                    OrderStatus::AwaitingPayment | OrderStatus::Confirmed | OrderStatus::Paid => {
                        o.status = OrderStatus::Cancelled;
                        o.expires_at = None;
                        o.updated_at = now;
                        Reply::Order {
                            order: o.clone(),
                            replayed: false,
                        }
                    }
                    status => Reply::Refused(Refusal::InvalidTransition {
                        status,
                        action: "cancelled".into(),
                    }),
                }
            }
            Command::Deliver { order } => {
                let Some(o) = self.orders.get(order) else {
                    return Reply::Inactive(*order);
                };
                if matches!(o.status, OrderStatus::Paid | OrderStatus::Confirmed) {
                    match o.presale {
                        Some(OrderPreSale::Deposit { .. }) => {
                            let b = self.balance_of(*order).map(|b| (b.id, b.status));
                            match b {
                                Some((b, OrderStatus::Paid)) => {
                                    let b = self.orders.get_mut(&b).expect("found above");
                                    (b.status, b.updated_at) = (OrderStatus::Delivered, now);
                                }
                                Some((_, OrderStatus::Delivered)) => {}
                                _ => return Reply::Refused(Refusal::BalanceNotPaid),
                            }
                        }
                        Some(OrderPreSale::Balance { .. }) => {
                            return Reply::Refused(Refusal::InvalidTransition {
                                status: o.status,
                                action: "delivered apart from its deposit order".into(),
                            })
                        }
                        None => {}
                    }
                }
                let o = self.orders.get_mut(order).expect("looked up above");
                match o.status {
                    OrderStatus::Delivered => Reply::Order {
                        order: o.clone(),
                        replayed: true,
                    },
                    OrderStatus::Paid | OrderStatus::Confirmed => {
                        o.status = OrderStatus::Delivered;
                        o.updated_at = now;
                        Reply::Order {
                            order: o.clone(),
                            replayed: false,
                        }
                    }
                    OrderStatus::Cancelled | OrderStatus::Expired | OrderStatus::Forfeited => {
                        Reply::Inactive(*order)
                    }
                    status => Reply::Refused(Refusal::InvalidTransition {
                        status,
                        action: "delivered".into(),
                    }),
                }
            }
            Command::PutItem { item, expected } => {
                if self.items.get(&item.sku) != expected.as_ref() {
                    return Reply::Refused(Refusal::ItemChanged);
                }
                if expected.is_some() {
                    let (_, held, sold) = self.counters(item.sku);
                    if item.stock_total < held + sold {
                        return Reply::Refused(Refusal::StockBelowCommitted {
                            committed: held + sold,
                        });
                    }
                }
                self.items.insert(item.sku, item.clone());
                Reply::Item(item.clone())
            }
            Command::PutCoupon { .. }
            | Command::Claim(_)
            | Command::UseClaim { .. }
            | Command::ReturnClaim { .. }
            | Command::ClaimsOf { .. }
            | Command::Coupons => self.coupon_command(command, now),
            Command::Balance { deposit, user } => self.balance(*deposit, *user, now),
        }
    }

    fn balance(&mut self, deposit: OrderId, user: UserId, now: Timestamp) -> Reply {
        let Some(d) = self.orders.get(&deposit).filter(|d| d.status.is_active()) else {
            return Reply::Inactive(deposit);
        };
        if d.user != user {
            return Reply::Refused(Refusal::UnknownOrder);
        }
        if let Some(b) = self.balance_of(deposit) {
            return Reply::Order {
                order: b.clone(),
                replayed: true,
            };
        }
        let Some(OrderPreSale::Deposit {
            balance_fen,
            balance_opens_at,
            balance_closes_at,
        }) = d.presale
        else {
            return Reply::Refused(Refusal::NotPreSale);
        };
        if d.status != OrderStatus::Paid {
            return Reply::Refused(Refusal::NotPreSale);
        }
        if now < balance_opens_at {
            return Reply::Refused(Refusal::BalanceNotOpen {
                opens_at: balance_opens_at,
            });
        }
        if now >= balance_closes_at {
            return Reply::Refused(Refusal::BalanceClosed {
                closes_at: balance_closes_at,
            });
        }
        let order = Order {
            id: OrderId::new(self.shard, self.next_seq),
            amount_fen: balance_fen,
            payment: PaymentMethod::Online,
            status: OrderStatus::AwaitingPayment,
            idempotency_key: None,
            request_fingerprint: 0,
            created_at: now,
            expires_at: Some(balance_closes_at),
            updated_at: now,
            presale: Some(OrderPreSale::Balance { deposit }),
            ..d.clone()
        };
        self.next_seq += 1;
        self.orders.insert(order.id, order.clone());
        Reply::Order {
            order,
            replayed: false,
        }
    }

    fn release_presale(&mut self, deposit: OrderId, by: Option<UserId>, now: Timestamp) -> Reply {
        let d = self.orders[&deposit].clone();
        let balance = self.balance_of(deposit).map(|b| (b.id, b.status));
        let balance_paid = balance.is_some_and(|(_, s)| s.is_sold());
        let status = match d.status {
            OrderStatus::AwaitingPayment => OrderStatus::Cancelled,
            OrderStatus::Paid if balance_paid || by.is_none() => OrderStatus::Cancelled,
            OrderStatus::Paid => OrderStatus::Forfeited,
            status => {
                return Reply::Refused(Refusal::InvalidTransition {
                    status,
                    action: "cancelled".into(),
                })
            }
        };
        let balance = balance.map(|(b, _)| Box::new(self.end(b, OrderStatus::Cancelled, now)));
        let deposit = Box::new(self.end(deposit, status, now));
        Reply::PreSale { deposit, balance }
    }
}

/// An item's price of one unit at `now`: its sale window's, else the list
/// price (the model's own reading of the rule).
fn price_at(item: &Item, now: Timestamp) -> Fen {
    item.sale_prices
        .iter()
        .find(|w| w.opens_at <= now && now < w.closes_at)
        .map_or(item.price_fen, |w| w.price_fen)
}
