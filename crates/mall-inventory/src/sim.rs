//! Seeded workload generation for simulations and property tests: a small
//! world of items, shoppers and orders where collisions are frequent.
//! Deterministic: the same seed gives the same commands.

use crate::{Command, Reserve};
use mall_core::{
    Category, Fen, Item, MerchantId, OrderId, PaymentMethod, Quantity, Sku, Timestamp, UserId,
};
use std::sync::Arc;

/// The house's seeded generator (probabilities as fractions).
pub use mall_core::rng::Rng;

/// Generates commands for one shard of a small, crowded world.
pub struct Workload {
    pub rng: Rng,
    pub shard: usize,
    pub shards: usize,
    pub users: u64,
    /// SKUs created so far (owned by `shard`).
    pub skus: Vec<Sku>,
    /// Order ids seen in replies, to confirm and release.
    pub orders: Vec<OrderId>,
    /// Whose each order seen is, and the deposits among them (for asking
    /// balances).
    pub owners: std::collections::BTreeMap<OrderId, UserId>,
    pub deposits: Vec<OrderId>,
    /// Reserve requests sent with a key, to replay or reuse.
    pub keyed: Vec<Reserve>,
    /// Items as last acknowledged: the expectation of the next change.
    pub items: std::collections::BTreeMap<Sku, Item>,
    /// Coupons as last acknowledged.
    pub coupons: std::collections::BTreeMap<mall_core::CouponId, mall_core::Coupon>,
    /// Claims seen in replies, to use and return.
    pub claims: Vec<mall_core::ClaimId>,
    /// Claim requests sent with a key, to replay or reuse.
    pub keyed_claims: Vec<crate::ClaimCoupon>,
    next_coupon: u64,
    next_key: u64,
    next_sku: u64,
}

impl Workload {
    pub fn new(seed: u64, shard: usize, shards: usize) -> Workload {
        Workload {
            rng: Rng::new(seed),
            shard,
            shards,
            users: 8,
            skus: Vec::new(),
            orders: Vec::new(),
            owners: std::collections::BTreeMap::new(),
            deposits: Vec::new(),
            keyed: Vec::new(),
            items: std::collections::BTreeMap::new(),
            coupons: std::collections::BTreeMap::new(),
            claims: Vec::new(),
            keyed_claims: Vec::new(),
            next_coupon: 0,
            next_key: 0,
            next_sku: 0,
        }
    }

    /// A new item of this shard whose sale window is open around `now`
    /// (mostly), not yet open, or closed.
    pub fn new_item(&mut self, now: Timestamp) -> Item {
        let sku = loop {
            self.next_sku += 1;
            if self.next_sku as usize % self.shards == self.shard {
                break Sku(self.next_sku);
            }
        };
        let (opens_at, closes_at) = match self.rng.below(10) {
            0 => (now.plus_ms(30 * 60_000), now.plus_ms(90 * 60_000)),
            1 => (now.plus_ms(-90 * 60_000), now.plus_ms(20 * 60_000)),
            _ => (now.plus_ms(-60_000), now.plus_ms(24 * 3_600_000)),
        };
        let price = 100 + self.rng.below(100_000) as i64;
        // Half the items are on sale for a while around now.
        let sale_prices = if self.rng.chance(0.5) {
            vec![mall_core::SalePrice {
                opens_at: now.plus_ms(-(self.rng.below(600_000) as i64)),
                closes_at: now.plus_ms(self.rng.below(600_000) as i64 + 1),
                price_fen: Fen(1 + self.rng.below(price as u64) as i64),
            }]
        } else {
            vec![]
        };
        let mut item = Item {
            sku,
            merchant: MerchantId(1 + self.rng.below(3)),
            title: format!("item {}", sku.0),
            category: Category::ALL[self.rng.below(Category::ALL.len() as u64) as usize],
            price_fen: Fen(price),
            sale_prices,
            floor_price_fen: Fen(1),
            stock_total: 1 + self.rng.below(5) as u32,
            per_user_limit: 1 + self.rng.below(3) as u32,
            opens_at,
            closes_at,
            shelf_life_hours: None,
            presale: None,
        };
        // A fifth are pre-sales: deposits for the next 20 minutes, the
        // balance for the 40 after (terms as the edge would accept them).
        if self.rng.chance(0.2) {
            item.opens_at = now.plus_ms(-60_000);
            item.closes_at = now.plus_ms(20 * 60_000);
            let final_price = item.price_at(item.closes_at).0;
            let deposit = 1 + self.rng.below((final_price as u64 / 2).max(1)) as i64;
            let worth = (deposit + self.rng.below(deposit as u64 + 1) as i64).min(final_price - 1);
            if worth >= deposit {
                item.presale = Some(mall_core::PreSale {
                    deposit_fen: Fen(deposit),
                    worth_fen: Fen(worth),
                    balance_opens_at: item.closes_at,
                    balance_closes_at: item.closes_at.plus_ms(40 * 60_000),
                });
            }
        }
        item
    }

    /// The price of one unit of `sku` at `now`, as last acknowledged.
    fn item_price(&self, sku: Sku, now: Timestamp) -> Option<Fen> {
        self.items.get(&sku).map(|i| i.price_at(now))
    }

    pub fn reserve(&mut self, now: Timestamp) -> Command {
        if !self.keyed.is_empty() && self.rng.chance(0.10) {
            let mut again = self.rng.pick(&self.keyed).cloned().expect("not empty");
            if self.rng.chance(0.30) {
                // Same key, different request: must be refused.
                again.fingerprint ^= 1;
                again.quantity = Quantity::new(again.quantity.get() % 3 + 1).expect("1..=3");
            }
            return Command::Reserve(again);
        }
        let sku = match self.rng.pick(&self.skus) {
            Some(s) if !self.rng.chance(0.03) => *s,
            _ => Sku(10_000 + self.rng.below(5)), // unknown item
        };
        let quantity = Quantity::new(1 + self.rng.below(2) as u32).expect("1..=2");
        let payment = if self.rng.chance(0.25) {
            PaymentMethod::Cod
        } else {
            PaymentMethod::Online
        };
        let key = self.rng.chance(0.70).then(|| {
            self.next_key += 1;
            Arc::<str>::from(format!("k{}", self.next_key))
        });
        let r = Reserve {
            user: UserId(1 + self.rng.below(self.users)),
            sku,
            quantity,
            payment,
            address: "1 Test Road".into(),
            fingerprint: mall_core::fingerprint(&[
                &sku.0.to_le_bytes(),
                &quantity.get().to_le_bytes(),
                payment.as_str().as_bytes(),
            ]),
            idempotency_key: key,
            early_access: self.rng.chance(0.03),
            // Some clients send the total they expect: often right, now
            // and then stale or wrong.
            expected_total_fen: self.rng.chance(0.2).then(|| {
                let unit = self
                    .item_price(sku, now)
                    .unwrap_or(Fen(1 + self.rng.below(1_000) as i64));
                let off = if self.rng.chance(0.2) { 1 } else { 0 };
                Fen(unit.0 * i64::from(quantity.get()) + off)
            }),
            // A checkout's line now and then: its share of the discounts,
            // sometimes more than the floor leaves.
            discount_fen: Fen(if self.rng.chance(0.1) {
                self.rng.below(2_000) as i64
            } else {
                0
            }),
        };
        if r.idempotency_key.is_some() {
            self.keyed.push(r.clone());
        }
        Command::Reserve(r)
    }

    /// A coupon of this shard: few claims, a claim window mostly open
    /// around `now`, valid for a while.
    pub fn new_coupon(&mut self, now: Timestamp) -> mall_core::Coupon {
        let id = mall_core::CouponId(self.next_coupon * self.shards as u64 + self.shard as u64);
        self.next_coupon += 1;
        let (opens, closes) = match self.rng.below(8) {
            0 => (now.plus_ms(60_000), now.plus_ms(120_000)),
            1 => (now.plus_ms(-120_000), now.plus_ms(-1)),
            _ => (now.plus_ms(-1_000), now.plus_ms(3_600_000)),
        };
        mall_core::Coupon {
            id,
            merchant: self.rng.chance(0.5).then_some(MerchantId(1)),
            title: format!("coupon {}", id.0),
            spec: "{}".into(),
            quantity: self.rng.below(6) as u32,
            per_user_limit: 1 + self.rng.below(2) as u32,
            claim_opens_at: opens,
            claim_closes_at: closes,
            valid_until: now.plus_ms(self.rng.between(1, 1_200_000) as i64),
        }
    }

    /// A coupon command: create or change one, claim (with keys, replays
    /// and reused keys), use a claim on an order, give one back.
    pub fn coupon_command(&mut self, now: Timestamp) -> Command {
        let known: Vec<mall_core::CouponId> = self.coupons.keys().copied().collect();
        match self.rng.below(10) {
            0 if !known.is_empty() => {
                let id = *self.rng.pick(&known).expect("not empty");
                let mut coupon = self.new_coupon(now);
                coupon.id = id;
                let mut expected = self.coupons.get(&id).cloned();
                if self.rng.chance(0.2) {
                    if let Some(e) = &mut expected {
                        e.title.push_str(" (stale)");
                    }
                }
                Command::PutCoupon { coupon, expected }
            }
            0 | 1 => Command::PutCoupon {
                coupon: self.new_coupon(now),
                expected: None,
            },
            2..=5 => {
                if !self.keyed_claims.is_empty() && self.rng.chance(0.15) {
                    let mut again = self
                        .rng
                        .pick(&self.keyed_claims)
                        .cloned()
                        .expect("not empty");
                    if self.rng.chance(0.3) {
                        again.fingerprint ^= 1;
                    }
                    return Command::Claim(again);
                }
                let coupon = match self.rng.pick(&known) {
                    Some(c) if !self.rng.chance(0.05) => *c,
                    _ => mall_core::CouponId(1_000_000 + self.rng.below(3)),
                };
                let key = self.rng.chance(0.6).then(|| {
                    self.next_key += 1;
                    Arc::<str>::from(format!("c{}", self.next_key))
                });
                let claim =
                    crate::ClaimCoupon::new(UserId(1 + self.rng.below(self.users)), coupon, key);
                if claim.idempotency_key.is_some() {
                    self.keyed_claims.push(claim.clone());
                }
                Command::Claim(claim)
            }
            6 if self.rng.chance(0.3) => Command::ClaimsOf {
                user: UserId(1 + self.rng.below(self.users)),
            },
            6 if self.rng.chance(0.2) => Command::Coupons,
            6..=8 => Command::UseClaim {
                claim: self.some_claim(),
                user: UserId(1 + self.rng.below(self.users)),
                order: OrderId::new(self.shard, 1 + self.rng.below(3)),
            },
            _ => Command::ReturnClaim {
                claim: self.some_claim(),
                order: OrderId::new(self.shard, 1 + self.rng.below(3)),
            },
        }
    }

    fn some_claim(&mut self) -> mall_core::ClaimId {
        match self.rng.pick(&self.claims) {
            Some(c) if !self.rng.chance(0.05) => *c,
            _ => mall_core::ClaimId::new(self.shard, 999_999),
        }
    }

    /// One random command.
    pub fn command(&mut self, now: Timestamp) -> Command {
        if self.rng.chance(0.25) {
            return self.coupon_command(now);
        }
        let order = self.rng.pick(&self.orders).copied();
        match self.rng.below(100) {
            0..=64 => self.reserve(now),
            65..=79 => Command::Confirm {
                order: order.unwrap_or(OrderId::new(self.shard, 999_999)),
            },
            88..=91 => Command::Deliver {
                order: order.unwrap_or(OrderId::new(self.shard, 999_997)),
            },
            80..=87 => {
                let by = match self.rng.below(10) {
                    0 => None,
                    _ => Some(UserId(1 + self.rng.below(self.users))),
                };
                Command::Release {
                    order: order.unwrap_or(OrderId::new(self.shard, 999_998)),
                    by,
                }
            }
            97 | 98 => {
                // Mostly a deposit's own shopper; sometimes anyone's order.
                let deposit = match self.rng.pick(&self.deposits).copied() {
                    Some(d) if self.rng.chance(0.8) => d,
                    _ => order.unwrap_or(OrderId::new(self.shard, 999_996)),
                };
                let user = match self.owners.get(&deposit) {
                    Some(u) if self.rng.chance(0.9) => *u,
                    _ => UserId(1 + self.rng.below(self.users)),
                };
                Command::Balance { deposit, user }
            }
            92..=96 if !self.skus.is_empty() => {
                let sku = *self.rng.pick(&self.skus).expect("not empty");
                let mut item = self.new_item(now);
                item.sku = sku;
                // Mostly the right expectation; sometimes a stale one.
                let mut expected = self.items.get(&sku).cloned();
                if self.rng.chance(0.20) {
                    if let Some(e) = &mut expected {
                        e.title.push_str(" (stale)");
                    }
                }
                Command::PutItem { item, expected }
            }
            _ => {
                let item = self.new_item(now);
                self.skus.push(item.sku);
                Command::PutItem {
                    item,
                    expected: None,
                }
            }
        }
    }

    /// Learns order ids from a reply so later commands can name them.
    pub fn observe(&mut self, reply: &crate::Reply) {
        match reply {
            crate::Reply::Order { order, .. } => {
                self.orders.push(order.id);
                self.owners.insert(order.id, order.user);
                if matches!(order.presale, Some(mall_core::OrderPreSale::Deposit { .. })) {
                    self.deposits.push(order.id);
                }
            }
            crate::Reply::Item(item) => {
                self.items.insert(item.sku, item.clone());
            }
            crate::Reply::Coupon(coupon) => {
                self.coupons.insert(coupon.id, coupon.clone());
            }
            crate::Reply::Claim { claim, .. } => self.claims.push(claim.id),
            _ => {}
        }
    }
}
