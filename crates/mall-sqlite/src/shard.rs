//! One inventory shard's database: its items and orders.
//!
//! Orders are the record: a shard's counters are recounted from them at
//! load, so conservation after a restart holds by construction and is then
//! asserted by the engine.

use crate::{migrate, open_connection, Error, Sync};
use mall_core::{
    Category, Claim, ClaimId, ClaimStatus, Coupon, CouponId, Fen, Item, MerchantId, Order, OrderId,
    OrderStatus, PaymentMethod, Quantity, SalePrice, Sku, Timestamp, UserId,
};
use mall_engine::{OrderReader, ShardContents, StoreError};
use mall_inventory::{Board, Effect, Inventory, InventoryConfig, Snapshot};
use mall_shard::{Journal, JournalError};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    sku INTEGER PRIMARY KEY,
    merchant_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    category TEXT NOT NULL,
    price_fen INTEGER NOT NULL,
    stock_total INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    opens_at_ms INTEGER NOT NULL,
    closes_at_ms INTEGER NOT NULL,
    shelf_life_hours INTEGER
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    sku INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_fen INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    payment TEXT NOT NULL,
    status TEXT NOT NULL,
    address TEXT NOT NULL,
    idempotency_key TEXT,
    request_fingerprint INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, created_at_ms);
";

/// Version 2: list and sale prices. Items get their sale windows and
/// floor; orders their unit list price (older orders: the price they paid).
const PRICES: &str = "
ALTER TABLE items ADD COLUMN sale_prices TEXT NOT NULL DEFAULT '';
ALTER TABLE items ADD COLUMN floor_price_fen INTEGER NOT NULL DEFAULT 1;
ALTER TABLE orders ADD COLUMN list_price_fen INTEGER;
UPDATE orders SET list_price_fen = unit_price_fen;
";

/// Version 3: coupons and their claims.
const COUPONS: &str = "
CREATE TABLE coupons (
    id INTEGER PRIMARY KEY,
    merchant_id INTEGER,
    title TEXT NOT NULL,
    spec TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    claim_opens_at_ms INTEGER NOT NULL,
    claim_closes_at_ms INTEGER NOT NULL,
    valid_until_ms INTEGER NOT NULL
);
CREATE TABLE coupon_claims (
    id INTEGER PRIMARY KEY,
    coupon_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    order_id INTEGER,
    idempotency_key TEXT,
    request_fingerprint INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX coupon_claims_by_user ON coupon_claims (user_id, id);
";

/// Version 4: pre-sales. An item's terms, an order's part (both as
/// `mall_core` encodes them; empty: none).
const PRESALES: &str = "
ALTER TABLE items ADD COLUMN presale TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN presale TEXT NOT NULL DEFAULT '';
";

pub(crate) const COUPON_COLUMNS: &str = "id, merchant_id, title, spec, quantity, per_user_limit, claim_opens_at_ms, claim_closes_at_ms, valid_until_ms";
pub(crate) const CLAIM_COLUMNS: &str = "id, coupon_id, user_id, status, order_id, idempotency_key, request_fingerprint, created_at_ms, updated_at_ms";

pub(crate) fn coupon_from_row(row: &Row<'_>) -> rusqlite::Result<Coupon> {
    Ok(Coupon {
        id: CouponId(row.get::<_, i64>(0)? as u64),
        merchant: row.get::<_, Option<i64>>(1)?.map(|m| MerchantId(m as u64)),
        title: row.get(2)?,
        spec: row.get(3)?,
        quantity: row.get(4)?,
        per_user_limit: row.get(5)?,
        claim_opens_at: Timestamp(row.get(6)?),
        claim_closes_at: Timestamp(row.get(7)?),
        valid_until: Timestamp(row.get(8)?),
    })
}

pub(crate) fn claim_from_row(row: &Row<'_>) -> rusqlite::Result<Claim> {
    let status: String = row.get(3)?;
    Ok(Claim {
        id: ClaimId(row.get::<_, i64>(0)? as u64),
        coupon: CouponId(row.get::<_, i64>(1)? as u64),
        user: UserId(row.get::<_, i64>(2)? as u64),
        status: ClaimStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("claim status {status}")))?,
        order: row.get::<_, Option<i64>>(4)?.map(|o| OrderId(o as u64)),
        idempotency_key: row.get::<_, Option<String>>(5)?.map(Into::into),
        request_fingerprint: row.get::<_, i64>(6)? as u64,
        created_at: Timestamp(row.get(7)?),
        updated_at: Timestamp(row.get(8)?),
    })
}

pub(crate) const ORDER_COLUMNS: &str = "id, sku, user_id, quantity, unit_price_fen, amount_fen, payment, status, address, idempotency_key, request_fingerprint, created_at_ms, expires_at_ms, updated_at_ms, per_user_limit, list_price_fen, presale";
pub(crate) const ITEM_COLUMNS: &str = "sku, merchant_id, title, category, price_fen, stock_total, per_user_limit, opens_at_ms, closes_at_ms, shelf_life_hours, sale_prices, floor_price_fen, presale";

pub(crate) fn open_shard_db(path: &Path, sync: Sync) -> Result<Connection, Error> {
    let conn = open_connection(path, sync)?;
    // A page cache big enough that a batch's dirty pages never spill
    // mid-transaction, and fewer, larger checkpoints.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    migrate(&conn, path, &[SCHEMA, PRICES, COUPONS, PRESALES])?;
    Ok(conn)
}

/// Page cache per shard connection, in KiB.
const CACHE_KIB: i64 = 64 * 1024;
/// WAL pages before SQLite checkpoints (default 1,000).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

fn corrupt(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
}

pub(crate) fn order_from_row(row: &Row<'_>) -> rusqlite::Result<Order> {
    let quantity: u32 = row.get(3)?;
    let payment: String = row.get(6)?;
    let status: String = row.get(7)?;
    let address: String = row.get(8)?;
    let key: Option<String> = row.get(9)?;
    Ok(Order {
        id: OrderId(row.get::<_, i64>(0)? as u64),
        sku: Sku(row.get::<_, i64>(1)? as u64),
        user: UserId(row.get::<_, i64>(2)? as u64),
        quantity: Quantity::new(quantity).ok_or_else(|| corrupt(format!("quantity {quantity}")))?,
        unit_price_fen: Fen(row.get(4)?),
        amount_fen: Fen(row.get(5)?),
        payment: PaymentMethod::parse(&payment)
            .ok_or_else(|| corrupt(format!("payment {payment}")))?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        address: address.into(),
        idempotency_key: key.map(Into::into),
        request_fingerprint: row.get::<_, i64>(10)? as u64,
        per_user_limit: row.get(14)?,
        created_at: Timestamp(row.get(11)?),
        expires_at: row.get::<_, Option<i64>>(12)?.map(Timestamp),
        updated_at: Timestamp(row.get(13)?),
        // NULL: a row written without it means the price paid (as the
        // migration set it for older orders).
        list_price_fen: Fen(row.get::<_, Option<i64>>(15)?.unwrap_or(row.get(4)?)),
        presale: {
            let text: String = row.get(16)?;
            mall_core::OrderPreSale::decode(&text).map_err(corrupt)?
        },
    })
}

pub(crate) fn item_from_row(row: &Row<'_>) -> rusqlite::Result<Item> {
    let category: String = row.get(3)?;
    Ok(Item {
        sku: Sku(row.get::<_, i64>(0)? as u64),
        merchant: MerchantId(row.get::<_, i64>(1)? as u64),
        title: row.get(2)?,
        category: Category::parse(&category)
            .ok_or_else(|| corrupt(format!("category {category}")))?,
        price_fen: Fen(row.get(4)?),
        stock_total: row.get(5)?,
        per_user_limit: row.get(6)?,
        opens_at: Timestamp(row.get(7)?),
        closes_at: Timestamp(row.get(8)?),
        shelf_life_hours: row.get(9)?,
        presale: {
            let text: String = row.get(12)?;
            mall_core::PreSale::decode(&text).map_err(corrupt)?
        },
        sale_prices: {
            let text: String = row.get(10)?;
            SalePrice::decode_all(&text).ok_or_else(|| corrupt(format!("sale prices {text:?}")))?
        },
        floor_price_fen: Fen(row.get(11)?),
    })
}

pub(crate) fn load_items(conn: &Connection) -> rusqlite::Result<Vec<Item>> {
    let mut stmt = conn.prepare(&format!("SELECT {ITEM_COLUMNS} FROM items ORDER BY sku"))?;
    let items = stmt.query_map([], item_from_row)?.collect();
    items
}

/// The journal of one inventory shard: writes its effects, rebuilds it.
pub struct ShardJournal {
    shard: usize,
    path: std::path::PathBuf,
    sync: Sync,
    conn: Connection,
    config: InventoryConfig,
    board: Arc<Board>,
}

impl ShardJournal {
    pub fn open(
        path: &Path,
        shard: usize,
        config: InventoryConfig,
        board: Arc<Board>,
        sync: Sync,
    ) -> Result<ShardJournal, Error> {
        let conn = open_shard_db(path, sync)?;
        Ok(ShardJournal {
            shard,
            path: path.into(),
            sync,
            conn,
            config,
            board,
        })
    }

    fn write(&mut self, effects: &[Effect]) -> Result<(), Error> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ))?;
            let mut update = tx.prepare_cached(
                "UPDATE orders SET status = ?2, expires_at_ms = NULL, updated_at_ms = ?3 WHERE id = ?1",
            )?;
            let mut put_item = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO items ({ITEM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))?;
            let mut put_coupon = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO coupons ({COUPON_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?;
            let mut insert_claim = tx.prepare_cached(&format!(
                "INSERT INTO coupon_claims ({CLAIM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?;
            let mut update_claim = tx.prepare_cached(
                "UPDATE coupon_claims SET status = ?2, order_id = ?3, updated_at_ms = ?4 WHERE id = ?1",
            )?;
            for effect in effects {
                match effect {
                    Effect::PutCoupon(c) => {
                        put_coupon.execute(params![
                            c.id.0 as i64,
                            c.merchant.map(|m| m.0 as i64),
                            c.title,
                            c.spec,
                            c.quantity,
                            c.per_user_limit,
                            c.claim_opens_at.0,
                            c.claim_closes_at.0,
                            c.valid_until.0,
                        ])?;
                    }
                    Effect::InsertClaim(c) => {
                        insert_claim.execute(params![
                            c.id.0 as i64,
                            c.coupon.0 as i64,
                            c.user.0 as i64,
                            c.status.as_str(),
                            c.order.map(|o| o.0 as i64),
                            c.idempotency_key.as_deref(),
                            c.request_fingerprint as i64,
                            c.created_at.0,
                            c.updated_at.0,
                        ])?;
                    }
                    Effect::UpdateClaim {
                        id,
                        status,
                        order,
                        updated_at,
                    } => {
                        let n = update_claim.execute(params![
                            id.0 as i64,
                            status.as_str(),
                            order.map(|o| o.0 as i64),
                            updated_at.0
                        ])?;
                        if n != 1 {
                            return Err(crate::corrupt(format!("claim {id} to update is missing")));
                        }
                    }
                    Effect::InsertOrder(o) => {
                        insert.execute(params![
                            o.id.0 as i64,
                            o.sku.0 as i64,
                            o.user.0 as i64,
                            o.quantity.get(),
                            o.unit_price_fen.0,
                            o.amount_fen.0,
                            o.payment.as_str(),
                            o.status.as_str(),
                            &*o.address,
                            o.idempotency_key.as_deref(),
                            o.request_fingerprint as i64,
                            o.created_at.0,
                            o.expires_at.map(|t| t.0),
                            o.updated_at.0,
                            o.per_user_limit,
                            o.list_price_fen.0,
                            mall_core::OrderPreSale::encode(o.presale.as_ref()),
                        ])?;
                    }
                    Effect::UpdateOrder {
                        id,
                        status,
                        updated_at,
                    } => {
                        let n =
                            update.execute(params![id.0 as i64, status.as_str(), updated_at.0])?;
                        if n != 1 {
                            return Err(crate::corrupt(format!("order {id} to update is missing")));
                        }
                    }
                    Effect::PutItem(i) => {
                        put_item.execute(params![
                            i.sku.0 as i64,
                            i.merchant.0 as i64,
                            i.title,
                            i.category.as_str(),
                            i.price_fen.0,
                            i.stock_total,
                            i.per_user_limit,
                            i.opens_at.0,
                            i.closes_at.0,
                            i.shelf_life_hours,
                            SalePrice::encode_all(&i.sale_prices),
                            i.floor_price_fen.0,
                            mall_core::PreSale::encode(i.presale.as_ref()),
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Reads the durable state the shard is rebuilt from.
    pub fn snapshot(&self, now: Timestamp) -> Result<Snapshot, Error> {
        let items = load_items(&self.conn)?;
        let horizon = now.0.saturating_sub(self.config.idempotency_retention_ms);
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE status IN ('awaiting_payment', 'paid', 'confirmed', 'delivered')
             OR (idempotency_key IS NOT NULL AND created_at_ms >= ?1)"
        ))?;
        let orders = stmt
            .query_map([horizon], order_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let max_id: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM orders", [], |r| r.get(0))?;
        let last_seq = max_id.map_or(0, |id| OrderId(id as u64).seq());
        let coupons = {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT {COUPON_COLUMNS} FROM coupons ORDER BY id"))?;
            let rows = stmt.query_map([], coupon_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let claims = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {CLAIM_COLUMNS} FROM coupon_claims ORDER BY id"
            ))?;
            let rows = stmt.query_map([], claim_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        Ok(Snapshot {
            items,
            orders,
            last_seq,
            coupons,
            claims,
        })
    }
}

impl Journal for ShardJournal {
    type Machine = Inventory;

    fn commit(&mut self, effects: &[Effect]) -> Result<(), JournalError> {
        Ok(self.write(effects)?)
    }

    fn load(&mut self, now: Timestamp) -> Result<Inventory, JournalError> {
        // A fresh connection: after a failed commit the old one may hold a
        // transaction that did not roll back, and must not be read from.
        self.conn = open_shard_db(&self.path, self.sync)?;
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

/// Read access to one shard's orders for the API (WAL: readers never block
/// the writer). A committed order is visible here before its reply leaves.
pub struct ShardReader {
    conn: Mutex<Connection>,
}

impl ShardReader {
    pub fn open(path: &Path) -> Result<ShardReader, Error> {
        Ok(ShardReader {
            conn: Mutex::new(open_shard_db(path, Sync::Full)?),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, id: OrderId) -> Result<Option<Order>, Error> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?;
        Ok(stmt.query_row([id.0 as i64], order_from_row).optional()?)
    }

    /// A user's orders created before `before` (`(created_at, id)`), newest first.
    fn of_user(
        &self,
        user: UserId,
        before: Option<(Timestamp, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>, Error> {
        let (at, id) = before.map_or((i64::MAX, i64::MAX), |(t, o)| (t.0, o.0 as i64));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ?1 AND (created_at_ms < ?2 OR (created_at_ms = ?2 AND id < ?3))
             ORDER BY created_at_ms DESC, id DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![user.0 as i64, at, id, limit as i64], order_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl OrderReader for ShardReader {
    fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.find(id)?)
    }

    fn orders_of_user(
        &self,
        user: UserId,
        before: Option<(Timestamp, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        Ok(self.of_user(user, before, limit)?)
    }
}

/// Everything a shard file stores (the offline audit).
pub(crate) fn contents(path: &Path) -> Result<ShardContents, Error> {
    let conn = open_shard_db(path, Sync::Full)?;
    let items = load_items(&conn)?;
    let mut stmt = conn.prepare(&format!("SELECT {ORDER_COLUMNS} FROM orders"))?;
    let orders = stmt
        .query_map([], |row| Ok(order_from_row(row).map_err(|e| e.to_string())))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(&format!("SELECT {COUPON_COLUMNS} FROM coupons ORDER BY id"))?;
    let coupons = stmt
        .query_map([], coupon_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {CLAIM_COLUMNS} FROM coupon_claims ORDER BY id"
    ))?;
    let claims = stmt
        .query_map([], |row| Ok(claim_from_row(row).map_err(|e| e.to_string())))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ShardContents {
        items,
        orders,
        coupons,
        claims,
    })
}
