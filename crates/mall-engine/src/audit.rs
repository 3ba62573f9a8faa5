//! Offline audit of a store (`mall check`): recounts every SKU from its
//! orders and every coupon from its claims, and checks the invariants the
//! engine promises, on any backend.

use crate::{Store, StoreError};
use mall_core::{OrderStatus, Sku, UserId};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Default)]
pub struct AuditReport {
    pub shards: usize,
    pub items: usize,
    pub orders: usize,
    pub orders_by_status: BTreeMap<&'static str, usize>,
    pub units_held: u64,
    pub units_sold: u64,
    pub coupons: usize,
    pub claims: usize,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Default)]
struct Count {
    held: u64,
    sold: u64,
}

pub fn audit(store: &dyn Store) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport {
        shards: store.shard_count(),
        ..Default::default()
    };
    for shard in 0..store.shard_count() {
        let contents = store.shard_contents(shard)?;
        let items: BTreeMap<Sku, _> = contents.items.into_iter().map(|i| (i.sku, i)).collect();
        report.items += items.len();
        let mut counts: BTreeMap<Sku, Count> = BTreeMap::new();
        // Active units per shopper and item, and the highest per-user limit
        // any of those orders met when it was made (a limit lowered later
        // does not make earlier orders wrong).
        let mut per_user: BTreeMap<(UserId, Sku), (u64, u32)> = BTreeMap::new();
        let mut keys: HashSet<(UserId, String)> = HashSet::new();
        for row in contents.orders {
            let o = match row {
                Ok(o) => o,
                Err(e) => {
                    report
                        .violations
                        .push(format!("shard {shard}: unreadable order row: {e}"));
                    continue;
                }
            };
            report.orders += 1;
            *report
                .orders_by_status
                .entry(o.status.as_str())
                .or_default() += 1;
            let v = &mut report.violations;
            if o.id.shard() != shard {
                v.push(format!(
                    "order {}: stored in shard {shard} but its id names shard {}",
                    o.id,
                    o.id.shard()
                ));
            }
            if store.shard_of(o.sku) != shard {
                v.push(format!(
                    "order {}: SKU {} belongs to shard {}",
                    o.id,
                    o.sku,
                    store.shard_of(o.sku)
                ));
            }
            if !items.contains_key(&o.sku) {
                v.push(format!("order {}: unknown SKU {}", o.id, o.sku));
                continue;
            }
            // A checkout's line pays less than the unit price by its share
            // of the discounts, never less than 1 fen a unit.
            let gross = o.unit_price_fen.0 * i64::from(o.quantity.get());
            if o.amount_fen.0 > gross || o.amount_fen.0 < i64::from(o.quantity.get()) {
                v.push(format!(
                    "order {}: amount {} outside 1 fen a unit .. {} x {}",
                    o.id,
                    o.amount_fen.0,
                    o.unit_price_fen.0,
                    o.quantity.get()
                ));
            }
            if (o.status == OrderStatus::AwaitingPayment) != o.expires_at.is_some() {
                v.push(format!(
                    "order {}: {} with expiry {:?}",
                    o.id,
                    o.status.as_str(),
                    o.expires_at
                ));
            }
            if let Some(key) = &o.idempotency_key {
                if !keys.insert((o.user, key.to_string())) {
                    v.push(format!(
                        "order {}: idempotency key {key:?} of user {} made two orders",
                        o.id, o.user
                    ));
                }
            }
            // A pre-sale's balance order holds no stock: its deposit's
            // units are the goods.
            if o.status.is_active() && !o.is_balance() {
                let c = counts.entry(o.sku).or_default();
                let q = u64::from(o.quantity.get());
                if o.status.is_sold() {
                    c.sold += q
                } else {
                    c.held += q
                }
                let entry = per_user.entry((o.user, o.sku)).or_default();
                entry.0 += q;
                entry.1 = entry.1.max(o.per_user_limit);
            }
        }
        for (sku, c) in &counts {
            let item = &items[sku];
            report.units_held += c.held;
            report.units_sold += c.sold;
            if c.held + c.sold > u64::from(item.stock_total) {
                report.violations.push(format!(
                    "SKU {sku}: oversold: held {} + sold {} > stock {}",
                    c.held, c.sold, item.stock_total
                ));
            }
        }
        for ((user, sku), (units, limit)) in &per_user {
            if *units > u64::from(*limit) {
                report.violations.push(format!(
                    "user {user}: holds {units} of SKU {sku}, over the per-user limit {limit}"
                ));
            }
        }
        coupons(shard, contents.coupons, contents.claims, &mut report);
    }
    Ok(report)
}

/// A shard's coupons against their claims: never more claims than the
/// quantity, nor per shopper than the limit; a used claim is on an order;
/// a key made one claim.
fn coupons(
    shard: usize,
    coupons: Vec<mall_core::Coupon>,
    claims: Vec<Result<mall_core::Claim, String>>,
    report: &mut AuditReport,
) {
    let coupons: BTreeMap<mall_core::CouponId, mall_core::Coupon> =
        coupons.into_iter().map(|c| (c.id, c)).collect();
    report.coupons += coupons.len();
    let mut made: BTreeMap<mall_core::CouponId, u64> = BTreeMap::new();
    let mut per_user: BTreeMap<(UserId, mall_core::CouponId), u64> = BTreeMap::new();
    let mut keys: HashSet<(UserId, mall_core::CouponId, String)> = HashSet::new();
    let v = &mut report.violations;
    for row in claims {
        let c = match row {
            Ok(c) => c,
            Err(e) => {
                v.push(format!("shard {shard}: unreadable claim row: {e}"));
                continue;
            }
        };
        report.claims += 1;
        if c.id.shard() != shard {
            v.push(format!(
                "claim {}: stored in shard {shard} but its id names shard {}",
                c.id,
                c.id.shard()
            ));
        }
        if !coupons.contains_key(&c.coupon) {
            v.push(format!("claim {}: unknown coupon {}", c.id, c.coupon));
            continue;
        }
        if (c.status == mall_core::ClaimStatus::Used) != c.order.is_some() {
            v.push(format!(
                "claim {}: {} with order {:?}",
                c.id,
                c.status.as_str(),
                c.order
            ));
        }
        if let Some(key) = &c.idempotency_key {
            if !keys.insert((c.user, c.coupon, key.to_string())) {
                v.push(format!(
                    "claim {}: idempotency key {key:?} of user {} made two claims",
                    c.id, c.user
                ));
            }
        }
        *made.entry(c.coupon).or_default() += 1;
        *per_user.entry((c.user, c.coupon)).or_default() += 1;
    }
    for (id, n) in &made {
        let coupon = &coupons[id];
        if *n > u64::from(coupon.quantity) {
            v.push(format!(
                "coupon {id}: over-issued: {n} claims of {}",
                coupon.quantity
            ));
        }
    }
    for ((user, id), n) in &per_user {
        let limit = coupons[id].per_user_limit;
        if *n > u64::from(limit) {
            v.push(format!(
                "user {user}: {n} claims of coupon {id}, over the limit {limit}"
            ));
        }
    }
}
