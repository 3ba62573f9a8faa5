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
    /// Reserve requests sent with a key, to replay or reuse.
    pub keyed: Vec<Reserve>,
    /// Items as last acknowledged: the expectation of the next change.
    pub items: std::collections::BTreeMap<Sku, Item>,
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
            keyed: Vec::new(),
            items: std::collections::BTreeMap::new(),
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
        Item {
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
        }
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
        };
        if r.idempotency_key.is_some() {
            self.keyed.push(r.clone());
        }
        Command::Reserve(r)
    }

    /// One random command.
    pub fn command(&mut self, now: Timestamp) -> Command {
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
            crate::Reply::Order { order, .. } => self.orders.push(order.id),
            crate::Reply::Item(item) => {
                self.items.insert(item.sku, item.clone());
            }
            _ => {}
        }
    }
}
