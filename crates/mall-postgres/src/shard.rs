//! One inventory shard's journal and reader. Orders are the record: the
//! shard's counters are recounted from them at load, as with SQLite.

use crate::pool::Pool;
use crate::{corrupt, Error, Fence};
use mall_core::{
    Category, Claim, ClaimId, ClaimStatus, Coupon, CouponId, Fen, Item, MerchantId, Order, OrderId,
    OrderStatus, PaymentMethod, Quantity, SalePrice, Sku, Timestamp, UserId,
};
use mall_engine::{OrderReader, ShardContents, StoreError};
use mall_inventory::{Board, Effect, Inventory, InventoryConfig, Snapshot};
use mall_shard::{Journal, JournalError};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Row;
use std::collections::HashMap;
use std::sync::Arc;

macro_rules! order_columns {
    () => {
        "id, shard, sku, user_id, quantity, unit_price_fen, amount_fen, payment, status, address, idempotency_key, request_fingerprint, per_user_limit, created_at_ms, expires_at_ms, updated_at_ms, list_price_fen, presale"
    };
}
macro_rules! item_columns {
    () => {
        "sku, shard, merchant_id, title, category, price_fen, stock_total, per_user_limit, opens_at_ms, closes_at_ms, shelf_life_hours, sale_prices, floor_price_fen, presale"
    };
}

/// A whole batch in one statement, so one round trip: the fence, then the
/// items, the new orders and the updates of older orders, each joined to
/// the fence's row so that under a stale epoch nothing is written. (Data
/// changes in one statement do not see each other: updates of orders made
/// in the same batch are folded into their inserted rows, see [`Batch`].)
/// It runs as its own transaction; a count of updated orders that is off
/// raises an error, which undoes it all.
const WRITE_BATCH: &str = concat!(
    "WITH fence AS (
        UPDATE shard_epochs SET epoch = epoch WHERE shard = $1 AND epoch = $2 RETURNING 1
    ), put_items AS (
        INSERT INTO items (",
    item_columns!(),
    ") SELECT u.* FROM unnest($3::bigint[], $4::int[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], $15::bigint[], $16::text[]) AS u, fence
        ON CONFLICT (sku) DO UPDATE SET shard = excluded.shard, merchant_id = excluded.merchant_id,
            title = excluded.title, category = excluded.category, price_fen = excluded.price_fen,
            stock_total = excluded.stock_total, per_user_limit = excluded.per_user_limit,
            opens_at_ms = excluded.opens_at_ms, closes_at_ms = excluded.closes_at_ms,
            shelf_life_hours = excluded.shelf_life_hours, sale_prices = excluded.sale_prices,
            floor_price_fen = excluded.floor_price_fen, presale = excluded.presale
    ), new_orders AS (
        INSERT INTO orders (",
    order_columns!(),
    ") SELECT u.* FROM unnest($17::bigint[], $18::int[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], $24::text[], $25::text[], $26::text[], $27::text[], $28::bigint[], $29::bigint[], $30::bigint[], $31::bigint[], $32::bigint[], $33::bigint[], $34::text[]) AS u, fence
    ), changed AS (
        UPDATE orders o SET status = u.status, expires_at_ms = NULL, updated_at_ms = u.updated_at_ms
        FROM unnest($35::bigint[], $36::text[], $37::bigint[]) AS u(id, status, updated_at_ms), fence
        WHERE o.shard = $1 AND o.id = u.id RETURNING 1
    )
    SELECT (SELECT count(*) FROM fence),
        CASE WHEN (SELECT count(*) FROM fence) = 1 AND (SELECT count(*) FROM changed) <> cardinality($35::bigint[])
            THEN mall_fail('mall: an order to update is missing') ELSE 0 END"
);
const ITEMS_OF_SHARD: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE shard = $1 ORDER BY sku"
);
/// What a load needs: the active orders, and those whose idempotency key
/// is still remembered (SQLite's snapshot query, for one shard).
const SNAPSHOT_ORDERS: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE shard = $1 AND (status IN ('awaiting_payment', 'paid', 'confirmed', 'delivered')
        OR (idempotency_key IS NOT NULL AND created_at_ms >= $2))"
);
const MAX_ID: &str = "SELECT MAX(id) FROM orders WHERE shard = $1";
const ALL_ORDERS: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE shard = $1");
const ORDER_BY_ID: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE shard = $1 AND id = $2"
);
const ORDERS_OF_USER: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE user_id = $1 AND shard = $2 AND (created_at_ms, id) < ($3, $4)
      ORDER BY created_at_ms DESC, id DESC LIMIT $5"
);

fn get<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, String> {
    row.try_get(i).map_err(|e| format!("column {i}: {e}"))
}

fn u32_of(v: i64, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v}"))
}

fn order_from_row(row: &Row) -> Result<Order, String> {
    let id = OrderId(get::<i64>(row, 0)? as u64);
    let bad = |e: String| format!("order {id}: {e}");
    (|| {
        let quantity = u32_of(get(row, 4)?, "quantity")?;
        let payment: &str = get(row, 7)?;
        let status: &str = get(row, 8)?;
        Ok(Order {
            id,
            sku: Sku(get::<i64>(row, 2)? as u64),
            user: UserId(get::<i64>(row, 3)? as u64),
            quantity: Quantity::new(quantity).ok_or_else(|| format!("quantity {quantity}"))?,
            unit_price_fen: Fen(get(row, 5)?),
            amount_fen: Fen(get(row, 6)?),
            payment: PaymentMethod::parse(payment).ok_or_else(|| format!("payment {payment}"))?,
            status: OrderStatus::parse(status).ok_or_else(|| format!("status {status}"))?,
            address: get::<&str>(row, 9)?.into(),
            idempotency_key: get::<Option<&str>>(row, 10)?.map(Into::into),
            request_fingerprint: get::<i64>(row, 11)? as u64,
            per_user_limit: u32_of(get(row, 12)?, "per_user_limit")?,
            created_at: Timestamp(get(row, 13)?),
            expires_at: get::<Option<i64>>(row, 14)?.map(Timestamp),
            updated_at: Timestamp(get(row, 15)?),
            list_price_fen: Fen(get(row, 16)?),
            presale: {
                let text: &str = get(row, 17)?;
                mall_core::OrderPreSale::decode(text)?
            },
        })
    })()
    .map_err(bad)
}

fn coupon_from_row(row: &Row) -> Result<Coupon, String> {
    let id = CouponId(get::<i64>(row, 0)? as u64);
    (|| {
        Ok(Coupon {
            id,
            merchant: get::<Option<i64>>(row, 1)?.map(|m| MerchantId(m as u64)),
            title: get(row, 2)?,
            spec: get(row, 3)?,
            quantity: u32_of(get(row, 4)?, "quantity")?,
            per_user_limit: u32_of(get(row, 5)?, "per_user_limit")?,
            claim_opens_at: Timestamp(get(row, 6)?),
            claim_closes_at: Timestamp(get(row, 7)?),
            valid_until: Timestamp(get(row, 8)?),
        })
    })()
    .map_err(|e: String| format!("coupon {id}: {e}"))
}

fn claim_from_row(row: &Row) -> Result<Claim, String> {
    let id = ClaimId(get::<i64>(row, 0)? as u64);
    (|| {
        let status: &str = get(row, 3)?;
        Ok(Claim {
            id,
            coupon: CouponId(get::<i64>(row, 1)? as u64),
            user: UserId(get::<i64>(row, 2)? as u64),
            status: ClaimStatus::parse(status).ok_or_else(|| format!("status {status}"))?,
            order: get::<Option<i64>>(row, 4)?.map(|o| OrderId(o as u64)),
            idempotency_key: get::<Option<&str>>(row, 5)?.map(Into::into),
            request_fingerprint: get::<i64>(row, 6)? as u64,
            created_at: Timestamp(get(row, 7)?),
            updated_at: Timestamp(get(row, 8)?),
        })
    })()
    .map_err(|e: String| format!("claim {id}: {e}"))
}

fn item_from_row(row: &Row) -> Result<Item, String> {
    let sku = Sku(get::<i64>(row, 0)? as u64);
    (|| {
        let category: &str = get(row, 4)?;
        Ok(Item {
            sku,
            merchant: MerchantId(get::<i64>(row, 2)? as u64),
            title: get(row, 3)?,
            category: Category::parse(category).ok_or_else(|| format!("category {category}"))?,
            price_fen: Fen(get(row, 5)?),
            stock_total: u32_of(get(row, 6)?, "stock_total")?,
            per_user_limit: u32_of(get(row, 7)?, "per_user_limit")?,
            opens_at: Timestamp(get(row, 8)?),
            closes_at: Timestamp(get(row, 9)?),
            shelf_life_hours: get::<Option<i64>>(row, 10)?
                .map(|h| u32_of(h, "shelf_life_hours"))
                .transpose()?,
            sale_prices: {
                let text: &str = get(row, 11)?;
                SalePrice::decode_all(text).ok_or_else(|| format!("sale prices {text:?}"))?
            },
            floor_price_fen: Fen(get(row, 12)?),
            presale: {
                let text: &str = get(row, 13)?;
                mall_core::PreSale::decode(text)?
            },
        })
    })()
    .map_err(|e: String| format!("item {sku}: {e}"))
}

/// A batch's effects as column arrays for [`WRITE_BATCH`].
#[derive(Default)]
struct Batch<'a> {
    /// Last write of each SKU (one upsert may not touch a row twice).
    items: Vec<&'a Item>,
    /// New orders, with any update of the same batch already applied.
    orders: Vec<Order>,
    /// Last update of each order made before this batch: `(id, status, updated_at)`.
    updates: Vec<(OrderId, OrderStatus, Timestamp)>,
    /// Last write of each coupon.
    coupons: Vec<&'a Coupon>,
    /// New claims, with any update of the same batch already applied.
    claims: Vec<Claim>,
    /// Last update of each claim made before this batch.
    claim_updates: Vec<(ClaimId, ClaimStatus, Option<OrderId>, Timestamp)>,
}

impl<'a> Batch<'a> {
    fn of(effects: &'a [Effect]) -> Batch<'a> {
        let mut batch = Batch::default();
        let mut item_at: HashMap<Sku, usize> = HashMap::new();
        let mut update_at: HashMap<OrderId, usize> = HashMap::new();
        let mut inserted_at: HashMap<OrderId, usize> = HashMap::new();
        let mut coupon_at: HashMap<CouponId, usize> = HashMap::new();
        let mut claim_inserted_at: HashMap<ClaimId, usize> = HashMap::new();
        let mut claim_update_at: HashMap<ClaimId, usize> = HashMap::new();
        for effect in effects {
            match effect {
                Effect::PutItem(item) => keep_last(&mut item_at, &mut batch.items, item.sku, item),
                Effect::InsertOrder(order) => {
                    inserted_at.insert(order.id, batch.orders.len());
                    batch.orders.push(order.clone());
                }
                Effect::UpdateOrder {
                    id,
                    status,
                    updated_at,
                } => {
                    if let Some(&i) = inserted_at.get(id) {
                        // What the SQL update does, on the row to insert.
                        let order = &mut batch.orders[i];
                        order.status = *status;
                        order.expires_at = None;
                        order.updated_at = *updated_at;
                        continue;
                    }
                    let update = (*id, *status, *updated_at);
                    keep_last(&mut update_at, &mut batch.updates, *id, update);
                }
                Effect::PutCoupon(coupon) => {
                    keep_last(&mut coupon_at, &mut batch.coupons, coupon.id, coupon)
                }
                Effect::InsertClaim(claim) => {
                    claim_inserted_at.insert(claim.id, batch.claims.len());
                    batch.claims.push(claim.clone());
                }
                Effect::UpdateClaim {
                    id,
                    status,
                    order,
                    updated_at,
                } => {
                    if let Some(&i) = claim_inserted_at.get(id) {
                        let claim = &mut batch.claims[i];
                        (claim.status, claim.order, claim.updated_at) =
                            (*status, *order, *updated_at);
                        continue;
                    }
                    let update = (*id, *status, *order, *updated_at);
                    keep_last(&mut claim_update_at, &mut batch.claim_updates, *id, update);
                }
            }
        }
        batch
    }
}

/// Puts `value` in `list` under `key`, replacing an earlier one of the same
/// key in its place (one statement may not touch a row twice).
fn keep_last<K: std::hash::Hash + Eq, V>(
    at: &mut HashMap<K, usize>,
    list: &mut Vec<V>,
    key: K,
    value: V,
) {
    match at.get(&key) {
        Some(&i) => list[i] = value,
        None => {
            at.insert(key, list.len());
            list.push(value);
        }
    }
}

impl Batch<'_> {
    fn has_coupons(&self) -> bool {
        !(self.coupons.is_empty() && self.claims.is_empty() && self.claim_updates.is_empty())
    }
}

const PUT_COUPONS: &str = "INSERT INTO coupons (id, shard, merchant_id, title, spec, quantity,
        per_user_limit, claim_opens_at_ms, claim_closes_at_ms, valid_until_ms)
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
    ON CONFLICT (id) DO UPDATE SET shard = excluded.shard, merchant_id = excluded.merchant_id,
        title = excluded.title, spec = excluded.spec, quantity = excluded.quantity,
        per_user_limit = excluded.per_user_limit, claim_opens_at_ms = excluded.claim_opens_at_ms,
        claim_closes_at_ms = excluded.claim_closes_at_ms, valid_until_ms = excluded.valid_until_ms";
const INSERT_CLAIMS: &str = "INSERT INTO coupon_claims (shard, id, coupon_id, user_id, status,
        order_id, idempotency_key, request_fingerprint, created_at_ms, updated_at_ms)
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
        $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[])";
const UPDATE_CLAIMS: &str = "UPDATE coupon_claims c SET status = u.status, order_id = u.order_id,
        updated_at_ms = u.updated_at_ms
    FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) AS u(id, status, order_id, updated_at_ms)
    WHERE c.shard = $1 AND c.id = u.id";
const COUPONS_OF_SHARD: &str = "SELECT id, merchant_id, title, spec, quantity, per_user_limit,
    claim_opens_at_ms, claim_closes_at_ms, valid_until_ms FROM coupons WHERE shard = $1 ORDER BY id";
const CLAIMS_OF_SHARD: &str = "SELECT id, coupon_id, user_id, status, order_id, idempotency_key,
    request_fingerprint, created_at_ms, updated_at_ms FROM coupon_claims WHERE shard = $1 ORDER BY id";

/// A batch's coupon writes: in the batch's transaction, after its fence
/// (which holds the shard's epoch row until the commit).
struct CouponStatements {
    put: postgres::Statement,
    insert: postgres::Statement,
    update: postgres::Statement,
}

impl CouponStatements {
    fn prepare(conn: &mut crate::pool::Conn) -> Result<CouponStatements, Error> {
        Ok(CouponStatements {
            put: conn.prepare(PUT_COUPONS)?,
            insert: conn.prepare(INSERT_CLAIMS)?,
            update: conn.prepare(UPDATE_CLAIMS)?,
        })
    }

    fn write(
        &self,
        tx: &mut postgres::Transaction<'_>,
        shard: i32,
        batch: &Batch<'_>,
    ) -> Result<(), Error> {
        let c = &batch.coupons;
        if !c.is_empty() {
            tx.execute(
                &self.put,
                &[
                    &c.iter().map(|c| c.id.0 as i64).collect::<Vec<_>>(),
                    &vec![shard; c.len()],
                    &c.iter()
                        .map(|c| c.merchant.map(|m| m.0 as i64))
                        .collect::<Vec<_>>(),
                    &c.iter().map(|c| c.title.as_str()).collect::<Vec<_>>(),
                    &c.iter().map(|c| c.spec.as_str()).collect::<Vec<_>>(),
                    &c.iter().map(|c| i64::from(c.quantity)).collect::<Vec<_>>(),
                    &c.iter()
                        .map(|c| i64::from(c.per_user_limit))
                        .collect::<Vec<_>>(),
                    &c.iter().map(|c| c.claim_opens_at.0).collect::<Vec<_>>(),
                    &c.iter().map(|c| c.claim_closes_at.0).collect::<Vec<_>>(),
                    &c.iter().map(|c| c.valid_until.0).collect::<Vec<_>>(),
                ],
            )?;
        }
        let n = &batch.claims;
        if !n.is_empty() {
            tx.execute(
                &self.insert,
                &[
                    &vec![shard; n.len()],
                    &n.iter().map(|c| c.id.0 as i64).collect::<Vec<_>>(),
                    &n.iter().map(|c| c.coupon.0 as i64).collect::<Vec<_>>(),
                    &n.iter().map(|c| c.user.0 as i64).collect::<Vec<_>>(),
                    &n.iter().map(|c| c.status.as_str()).collect::<Vec<_>>(),
                    &n.iter()
                        .map(|c| c.order.map(|o| o.0 as i64))
                        .collect::<Vec<_>>(),
                    &n.iter()
                        .map(|c| c.idempotency_key.as_deref())
                        .collect::<Vec<_>>(),
                    &n.iter()
                        .map(|c| c.request_fingerprint as i64)
                        .collect::<Vec<_>>(),
                    &n.iter().map(|c| c.created_at.0).collect::<Vec<_>>(),
                    &n.iter().map(|c| c.updated_at.0).collect::<Vec<_>>(),
                ],
            )?;
        }
        let u = &batch.claim_updates;
        if !u.is_empty() {
            let updated = tx.execute(
                &self.update,
                &[
                    &shard,
                    &u.iter().map(|u| u.0 .0 as i64).collect::<Vec<_>>(),
                    &u.iter().map(|u| u.1.as_str()).collect::<Vec<_>>(),
                    &u.iter()
                        .map(|u| u.2.map(|o| o.0 as i64))
                        .collect::<Vec<_>>(),
                    &u.iter().map(|u| u.3 .0).collect::<Vec<_>>(),
                ],
            )?;
            if updated as usize != u.len() {
                return Err(corrupt(format!(
                    "shard {shard}: a claim to update is missing"
                )));
            }
        }
        Ok(())
    }
}

/// The journal of one inventory shard on its server.
///
/// Opening it takes the shard over (see the crate docs on fencing). A
/// reload after a failed commit checks the epoch rather than bumping it
/// again: the journal is still the owner, and a bump whose commit was lost
/// would leave it unsure of its own epoch and fence it by mistake.
pub struct PgShardJournal {
    pool: Arc<Pool>,
    shard: usize,
    config: InventoryConfig,
    board: Arc<Board>,
    fence: Fence,
}

impl PgShardJournal {
    pub(crate) fn open(
        pool: Arc<Pool>,
        shard: usize,
        config: InventoryConfig,
        board: Arc<Board>,
    ) -> Result<PgShardJournal, Error> {
        let fence = Fence::take_over(&pool, shard as i32, format!("shard {shard}"))?;
        Ok(PgShardJournal {
            pool,
            shard,
            config,
            board,
            fence,
        })
    }

    fn write(&mut self, effects: &[Effect]) -> Result<(), Error> {
        self.fence.check()?;
        if effects.is_empty() {
            return Ok(());
        }
        let batch = Batch::of(effects);
        let shard = self.shard as i32;
        let fence = &self.fence;
        let (key, epoch) = fence.key_and_epoch();
        let result = self.pool.with(|conn| {
            let stmt = conn.prepare(WRITE_BATCH)?;
            let i = &batch.items;
            let o = &batch.orders;
            let u = &batch.updates;
            let params: [&(dyn postgres::types::ToSql + Sync); 37] = [
                &key,
                &epoch,
                &i.iter().map(|i| i.sku.0 as i64).collect::<Vec<_>>(),
                &vec![shard; i.len()],
                &i.iter().map(|i| i.merchant.0 as i64).collect::<Vec<_>>(),
                &i.iter().map(|i| i.title.as_str()).collect::<Vec<_>>(),
                &i.iter().map(|i| i.category.as_str()).collect::<Vec<_>>(),
                &i.iter().map(|i| i.price_fen.0).collect::<Vec<_>>(),
                &i.iter()
                    .map(|i| i64::from(i.stock_total))
                    .collect::<Vec<_>>(),
                &i.iter()
                    .map(|i| i64::from(i.per_user_limit))
                    .collect::<Vec<_>>(),
                &i.iter().map(|i| i.opens_at.0).collect::<Vec<_>>(),
                &i.iter().map(|i| i.closes_at.0).collect::<Vec<_>>(),
                &i.iter()
                    .map(|i| i.shelf_life_hours.map(i64::from))
                    .collect::<Vec<_>>(),
                &i.iter()
                    .map(|i| SalePrice::encode_all(&i.sale_prices))
                    .collect::<Vec<_>>(),
                &i.iter().map(|i| i.floor_price_fen.0).collect::<Vec<_>>(),
                &i.iter()
                    .map(|i| mall_core::PreSale::encode(i.presale.as_ref()))
                    .collect::<Vec<_>>(),
                &o.iter().map(|o| o.id.0 as i64).collect::<Vec<_>>(),
                &o.iter().map(|o| o.id.shard() as i32).collect::<Vec<_>>(),
                &o.iter().map(|o| o.sku.0 as i64).collect::<Vec<_>>(),
                &o.iter().map(|o| o.user.0 as i64).collect::<Vec<_>>(),
                &o.iter()
                    .map(|o| i64::from(o.quantity.get()))
                    .collect::<Vec<_>>(),
                &o.iter().map(|o| o.unit_price_fen.0).collect::<Vec<_>>(),
                &o.iter().map(|o| o.amount_fen.0).collect::<Vec<_>>(),
                &o.iter().map(|o| o.payment.as_str()).collect::<Vec<_>>(),
                &o.iter().map(|o| o.status.as_str()).collect::<Vec<_>>(),
                &o.iter().map(|o| &*o.address).collect::<Vec<_>>(),
                &o.iter()
                    .map(|o| o.idempotency_key.as_deref())
                    .collect::<Vec<_>>(),
                &o.iter()
                    .map(|o| o.request_fingerprint as i64)
                    .collect::<Vec<_>>(),
                &o.iter()
                    .map(|o| i64::from(o.per_user_limit))
                    .collect::<Vec<_>>(),
                &o.iter().map(|o| o.created_at.0).collect::<Vec<_>>(),
                &o.iter()
                    .map(|o| o.expires_at.map(|t| t.0))
                    .collect::<Vec<_>>(),
                &o.iter().map(|o| o.updated_at.0).collect::<Vec<_>>(),
                &o.iter().map(|o| o.list_price_fen.0).collect::<Vec<_>>(),
                &o.iter()
                    .map(|o| mall_core::OrderPreSale::encode(o.presale.as_ref()))
                    .collect::<Vec<_>>(),
                &u.iter().map(|u| u.0 .0 as i64).collect::<Vec<_>>(),
                &u.iter().map(|u| u.1.as_str()).collect::<Vec<_>>(),
                &u.iter().map(|u| u.2 .0).collect::<Vec<_>>(),
            ];
            let row = if batch.has_coupons() {
                let coupons = CouponStatements::prepare(conn)?;
                let mut tx = conn.client.transaction()?;
                let row = tx.query_one(&stmt, &params);
                if let Ok(r) = &row {
                    if r.try_get::<_, i64>(0)? == 1 {
                        coupons.write(&mut tx, shard, &batch)?;
                        tx.commit()?;
                    }
                }
                row
            } else {
                conn.client.query_one(&stmt, &params)
            };
            match row {
                Ok(row) if row.try_get::<_, i64>(0)? == 1 => Ok(()),
                Ok(_) => Err(fence.error()),
                Err(e)
                    if e.to_string()
                        .contains("mall: an order to update is missing") =>
                {
                    Err(corrupt(format!(
                        "shard {shard}: an order to update is missing"
                    )))
                }
                Err(e) => Err(e.into()),
            }
        });
        self.fence.observe(result)
    }

    /// Reads the durable state the shard is rebuilt from, in a transaction
    /// of its own that first checks the shard is still ours.
    fn snapshot(&mut self, now: Timestamp) -> Result<Snapshot, Error> {
        self.fence.check()?;
        let shard = self.shard as i32;
        let horizon = now.0.saturating_sub(self.config.idempotency_retention_ms);
        let fence = &self.fence;
        let result = self.pool.with(|conn| {
            let hold = Fence::prepare(conn)?;
            let items_stmt = conn.prepare(ITEMS_OF_SHARD)?;
            let orders_stmt = conn.prepare(SNAPSHOT_ORDERS)?;
            let max_stmt = conn.prepare(MAX_ID)?;
            let coupons_stmt = conn.prepare(COUPONS_OF_SHARD)?;
            let claims_stmt = conn.prepare(CLAIMS_OF_SHARD)?;
            let mut tx = conn.client.transaction()?;
            fence.hold(&mut tx, &hold)?;
            let items = tx
                .query(&items_stmt, &[&shard])?
                .iter()
                .map(item_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?;
            let mut orders = Vec::new();
            let mut rows = tx.query_raw(
                &orders_stmt,
                [&shard as &dyn postgres::types::ToSql, &horizon],
            )?;
            while let Some(row) = rows.next()? {
                orders.push(order_from_row(&row).map_err(corrupt)?);
            }
            drop(rows);
            let max_id: Option<i64> = tx.query_one(&max_stmt, &[&shard])?.try_get(0)?;
            let coupons = tx
                .query(&coupons_stmt, &[&shard])?
                .iter()
                .map(coupon_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?;
            let claims = tx
                .query(&claims_stmt, &[&shard])?
                .iter()
                .map(claim_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?;
            tx.commit()?;
            Ok(Snapshot {
                items,
                orders,
                last_seq: max_id.map_or(0, |id| OrderId(id as u64).seq()),
                coupons,
                claims,
            })
        });
        self.fence.observe(result)
    }
}

/// The statements a batch needs, prepared before its transaction opens.
impl Journal for PgShardJournal {
    type Machine = Inventory;

    fn commit(&mut self, effects: &[Effect]) -> Result<(), JournalError> {
        Ok(self.write(effects)?)
    }

    fn load(&mut self, now: Timestamp) -> Result<Inventory, JournalError> {
        let snapshot = self.snapshot(now)?;
        Ok(Inventory::restore(
            self.shard,
            self.config.clone(),
            self.board.clone(),
            snapshot,
            now,
        ))
    }
}

/// Read access to one shard's orders for the API, on the shared pool of
/// its server. A committed order is visible here before its reply leaves.
pub struct PgOrderReader {
    pool: Arc<Pool>,
    shard: usize,
}

impl PgOrderReader {
    pub(crate) fn new(pool: Arc<Pool>, shard: usize) -> PgOrderReader {
        PgOrderReader { pool, shard }
    }

    fn orders(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Order>, Error> {
        self.pool.read(|conn| {
            let stmt = conn.prepare(sql)?;
            conn.client
                .query(&stmt, params)?
                .iter()
                .map(|r| order_from_row(r).map_err(corrupt))
                .collect()
        })
    }
}

impl OrderReader for PgOrderReader {
    fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let found = self.orders(ORDER_BY_ID, &[&(self.shard as i32), &(id.0 as i64)])?;
        Ok(found.into_iter().next())
    }

    fn orders_of_user(
        &self,
        user: UserId,
        before: Option<(Timestamp, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        let (at, id) = before.map_or((i64::MAX, i64::MAX), |(t, o)| (t.0, o.0 as i64));
        Ok(self.orders(
            ORDERS_OF_USER,
            &[
                &(user.0 as i64),
                &(self.shard as i32),
                &at,
                &id,
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )?)
    }
}

/// Everything one shard stores (the offline audit).
pub(crate) fn contents(pool: &Pool, shard: usize) -> Result<ShardContents, Error> {
    let shard = shard as i32;
    pool.with(|conn| {
        let items_stmt = conn.prepare(ITEMS_OF_SHARD)?;
        let orders_stmt = conn.prepare(ALL_ORDERS)?;
        let coupons_stmt = conn.prepare(COUPONS_OF_SHARD)?;
        let claims_stmt = conn.prepare(CLAIMS_OF_SHARD)?;
        let mut tx = crate::read_snapshot(&mut conn.client)?;
        let items = tx
            .query(&items_stmt, &[&shard])?
            .iter()
            .map(item_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let mut orders = Vec::new();
        let mut rows = tx.query_raw(&orders_stmt, [&shard])?;
        while let Some(row) = rows.next()? {
            orders.push(order_from_row(&row));
        }
        drop(rows);
        let coupons = tx
            .query(&coupons_stmt, &[&shard])?
            .iter()
            .map(coupon_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let claims = tx
            .query(&claims_stmt, &[&shard])?
            .iter()
            .map(claim_from_row)
            .collect();
        tx.commit()?;
        Ok(ShardContents {
            items,
            orders,
            coupons,
            claims,
        })
    })
}
