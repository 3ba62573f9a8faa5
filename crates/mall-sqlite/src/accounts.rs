//! `mall.db`: accounts, merchants, sessions and the stored responses of
//! idempotent non-order requests. Not on the snap-up hot path: sessions are
//! cached in memory by the HTTP layer.

use crate::{migrate, open_connection, Error, Sync};
use mall_core::Sku;
use mall_core::{MerchantId, Role, Timestamp, UserId};
use mall_engine::{
    AccountStore, CheckoutDone, CheckoutOp, CheckoutRow, CheckoutState, ListChange, ListOutcome,
    ListStep, MerchantRow, NewUser, PromotionRow, SessionRow, ShopperList, StoreError,
    StoredResponse, UserRow,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merchants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    merchant_id INTEGER REFERENCES merchants(id),
    password_hash TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    expires_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    user_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
";

/// Version 2: shoppers' favourites and carts, and favourites per item.
const LISTS: &str = "
CREATE TABLE shopper_lists (
    list INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    sku INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (list, user_id, sku)
) WITHOUT ROWID;
CREATE TABLE favorite_counts (sku INTEGER PRIMARY KEY, shoppers INTEGER NOT NULL);
";

/// Version 3: promotions (their offer as JSON).
const PROMOTIONS: &str = "
CREATE TABLE promotions (
    id INTEGER PRIMARY KEY,
    merchant_id INTEGER,
    spec TEXT NOT NULL,
    starts_at_ms INTEGER NOT NULL,
    ends_at_ms INTEGER NOT NULL
);
";

/// Version 4: checkouts (their plan and outcome as JSON).
const CHECKOUTS: &str = "
CREATE TABLE checkouts (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    idempotency_key TEXT,
    request_fingerprint INTEGER NOT NULL,
    state TEXT NOT NULL,
    plan TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    coupons_pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX checkouts_coupons_pending ON checkouts (updated_at_ms)
    WHERE state = 'reserved' AND coupons_pending = 1;
CREATE UNIQUE INDEX checkouts_by_key ON checkouts (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX checkouts_by_user ON checkouts (user_id, id);
CREATE INDEX checkouts_unfinished ON checkouts (updated_at_ms)
    WHERE state IN ('open', 'releasing');
";

/// Version 5: limited-quantity promotions.
const LIMITED: &str = "
ALTER TABLE promotions ADD COLUMN quantity INTEGER;
ALTER TABLE promotions ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
";

const CHECKOUT_COLUMNS: &str = "id, user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending";

fn checkout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckoutRow> {
    let state: String = r.get(4)?;
    Ok(CheckoutRow {
        id: r.get::<_, i64>(0)? as u64,
        user: UserId(r.get::<_, i64>(1)? as u64),
        key: r.get(2)?,
        fingerprint: r.get::<_, i64>(3)? as u64,
        state: CheckoutState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("checkout state {state}").into(),
            )
        })?,
        plan: r.get(5)?,
        outcome: r.get(6)?,
        created_at: Timestamp(r.get(7)?),
        updated_at: Timestamp(r.get(8)?),
        coupons_pending: r.get::<_, i64>(9)? != 0,
    })
}

pub struct Accounts {
    conn: Mutex<Connection>,
}

fn role_of(s: String) -> rusqlite::Result<Role> {
    Role::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("role {s}").into(),
        )
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Runs a body that speaks SQLite and answers in the backend-neutral error.
fn sql<T>(body: impl FnOnce() -> Result<T, Error>) -> Result<T, StoreError> {
    Ok(body()?)
}

impl Accounts {
    pub fn open(path: &Path) -> Result<Accounts, Error> {
        let conn = open_connection(path, Sync::Full)?;
        migrate(
            &conn,
            path,
            &[SCHEMA, LISTS, PROMOTIONS, CHECKOUTS, LIMITED],
        )?;
        Ok(Accounts {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checkouts `WHERE <filter>` (with its `?1`, `?2` bound to `a`, `b`).
    fn checkout_rows(&self, filter: &str, a: i64, b: i64) -> Result<Vec<CheckoutRow>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE {filter}"
            ))?;
            let rows = stmt.query_map(params![a, b], checkout_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}

impl AccountStore for Accounts {
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        sql(|| {
            Ok(self
                .conn()
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        })
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sql(|| {
            self.conn().execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )?;
            Ok(())
        })
    }

    fn create_merchant(&self, name: &str, now: Timestamp) -> Result<MerchantId, StoreError> {
        sql(|| {
            let conn = self.conn();
            match conn.execute(
                "INSERT INTO merchants (name, created_at_ms) VALUES (?1, ?2)",
                params![name, now.0],
            ) {
                Ok(_) => Ok(MerchantId(conn.last_insert_rowid() as u64)),
                Err(e) if is_unique_violation(&e) => Err(StoreError::MerchantNameTaken.into()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn merchants(&self) -> Result<Vec<MerchantRow>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT id, name FROM merchants ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok(MerchantRow {
                    id: MerchantId(r.get::<_, i64>(0)? as u64),
                    name: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Creates accounts (and their sessions) in one transaction: all or none.
    fn create_users(&self, users: &[NewUser], now: Timestamp) -> Result<Vec<UserId>, StoreError> {
        sql(|| {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let mut ids = Vec::with_capacity(users.len());
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO users (username, role, merchant_id, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut session = tx.prepare_cached(
                    "INSERT INTO sessions (token_hash, user_id, expires_at_ms, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for u in users {
                    let inserted = insert.execute(params![
                        u.username,
                        u.role.as_str(),
                        u.merchant.map(|m| m.0 as i64),
                        u.password_hash,
                        now.0
                    ]);
                    match inserted {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => {
                            return Err(StoreError::UsernameTaken.into())
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let id = tx.last_insert_rowid();
                    if let Some((hash, expires)) = &u.session {
                        session.execute(params![&hash[..], id, expires.0, now.0])?;
                    }
                    ids.push(UserId(id as u64));
                }
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT id, username, role, merchant_id, password_hash FROM users WHERE username = ?1",
            )?;
            let row = stmt
                .query_row([username], |r| {
                    Ok(UserRow {
                        id: UserId(r.get::<_, i64>(0)? as u64),
                        username: r.get(1)?,
                        role: role_of(r.get(2)?)?,
                        merchant: r.get::<_, Option<i64>>(3)?.map(|m| MerchantId(m as u64)),
                        password_hash: r.get(4)?,
                    })
                })
                .optional()?;
            Ok(row)
        })
    }

    fn set_password_hash(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        sql(|| {
            self.conn().execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![user.0 as i64, hash],
            )?;
            Ok(())
        })
    }

    fn insert_session(
        &self,
        token_hash: &[u8; 32],
        user: UserId,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sql(|| {
            self.conn().execute(
                "INSERT OR REPLACE INTO sessions (token_hash, user_id, expires_at_ms, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![&token_hash[..], user.0 as i64, expires_at.0, now.0],
            )?;
            Ok(())
        })
    }

    /// Ends one session (log out, or a rotated bootstrap token).
    fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        sql(|| {
            let n = self.conn().execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                params![&token_hash[..]],
            )?;
            Ok(n > 0)
        })
    }

    fn session(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<SessionRow>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT s.user_id, u.role, u.merchant_id, s.expires_at_ms FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1 AND s.expires_at_ms > ?2",
            )?;
            let mut rows = stmt.query(params![&token_hash[..], now.0])?;
            let Some(r) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(SessionRow {
                token_hash: *token_hash,
                user: UserId(r.get::<_, i64>(0)? as u64),
                role: role_of(r.get(1)?)?,
                merchant: r.get::<_, Option<i64>>(2)?.map(|m| MerchantId(m as u64)),
                expires_at: Timestamp(r.get(3)?),
            }))
        })
    }

    /// Ends every session of `user` (an admin's revocation); how many.
    fn delete_sessions_of(&self, user: UserId) -> Result<usize, StoreError> {
        sql(|| {
            Ok(self.conn().execute(
                "DELETE FROM sessions WHERE user_id = ?1",
                params![user.0 as i64],
            )?)
        })
    }

    /// The account with id `user`, if any.
    fn user_by_id(&self, user: UserId) -> Result<Option<UserRow>, StoreError> {
        sql(|| {
            let name: Option<String> = self
                .conn()
                .query_row(
                    "SELECT username FROM users WHERE id = ?1",
                    params![user.0 as i64],
                    |r| r.get(0),
                )
                .optional()?;
            match name {
                Some(name) => Ok(self.user_by_name(&name)?),
                None => Ok(None),
            }
        })
    }

    /// Sessions still valid at `now`, with their user's role. Expired ones are deleted.
    fn live_sessions(&self, now: Timestamp) -> Result<Vec<SessionRow>, StoreError> {
        sql(|| {
            let conn = self.conn();
            conn.execute("DELETE FROM sessions WHERE expires_at_ms <= ?1", [now.0])?;
            let mut stmt = conn.prepare(
                "SELECT s.token_hash, s.user_id, u.role, u.merchant_id, s.expires_at_ms FROM sessions s JOIN users u ON u.id = s.user_id",
            )?;
            let rows = stmt.query_map([], |r| {
                let hash: Vec<u8> = r.get(0)?;
                let token_hash: [u8; 32] = hash.try_into().map_err(|_| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Blob,
                        "token hash length".into(),
                    )
                })?;
                Ok(SessionRow {
                    token_hash,
                    user: UserId(r.get::<_, i64>(1)? as u64),
                    role: role_of(r.get(2)?)?,
                    merchant: r.get::<_, Option<i64>>(3)?.map(|m| MerchantId(m as u64)),
                    expires_at: Timestamp(r.get(4)?),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn stored_response(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT fingerprint, status, body FROM idempotency WHERE user_id = ?1 AND key = ?2",
            )?;
            let row = stmt
                .query_row(params![user.0 as i64, key], |r| {
                    Ok(StoredResponse {
                        fingerprint: r.get::<_, i64>(0)? as u64,
                        status: r.get(1)?,
                        body: r.get(2)?,
                    })
                })
                .optional()?;
            Ok(row)
        })
    }

    fn store_response(
        &self,
        user: UserId,
        key: &str,
        response: &StoredResponse,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sql(|| {
            self.conn().execute(
                // A final answer replaces a stored 202 (an outcome that was
                // still open); a final answer is never replaced.
                "INSERT INTO idempotency (user_id, key, fingerprint, status, body, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id, key) DO UPDATE SET status = excluded.status, body = excluded.body
                 WHERE idempotency.status = 202 AND idempotency.fingerprint = excluded.fingerprint",
                params![user.0 as i64, key, response.fingerprint as i64, response.status, response.body, now.0],
            )?;
            Ok(())
        })
    }

    /// Forgets stored responses older than `horizon`.
    fn prune_responses(&self, horizon: Timestamp) -> Result<usize, StoreError> {
        sql(|| {
            Ok(self.conn().execute(
                "DELETE FROM idempotency WHERE created_at_ms < ?1",
                [horizon.0],
            )?)
        })
    }

    fn change_lists(
        &self,
        changes: &[ListChange],
        now: Timestamp,
    ) -> Result<Vec<ListOutcome>, StoreError> {
        sql(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(changes.len());
            {
                let mut before = tx.prepare_cached(
                    "SELECT quantity FROM shopper_lists WHERE list = ?1 AND user_id = ?2 AND sku = ?3",
                )?;
                let mut lines = tx.prepare_cached(
                    "SELECT count(*) FROM shopper_lists WHERE list = ?1 AND user_id = ?2",
                )?;
                let mut put = tx.prepare_cached(
                    "INSERT INTO shopper_lists (list, user_id, sku, quantity, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (list, user_id, sku) DO UPDATE SET quantity = excluded.quantity, updated_at_ms = excluded.updated_at_ms",
                )?;
                let mut remove = tx.prepare_cached(
                    "DELETE FROM shopper_lists WHERE list = ?1 AND user_id = ?2 AND sku = ?3",
                )?;
                let mut count = tx.prepare_cached(
                    "INSERT INTO favorite_counts (sku, shoppers) VALUES (?1, ?2)
                     ON CONFLICT (sku) DO UPDATE SET shoppers = shoppers + excluded.shoppers",
                )?;
                for c in changes {
                    let key = params![c.list.code(), c.user.0 as i64, c.sku.0 as i64];
                    let was: u32 = before.query_row(key, |r| r.get(0)).optional()?.unwrap_or(0);
                    let (step, favorite) = c.decide(was, || {
                        lines
                            .query_row(params![c.list.code(), c.user.0 as i64], |r| {
                                r.get::<_, i64>(0)
                            })
                            .map(|n| n as usize)
                    })?;
                    if step == ListStep::Full {
                        outcomes.push(ListOutcome::Full);
                        continue;
                    }
                    if step == ListStep::Put {
                        put.execute(params![
                            c.list.code(),
                            c.user.0 as i64,
                            c.sku.0 as i64,
                            c.quantity,
                            now.0
                        ])?;
                    } else {
                        remove.execute(key)?;
                    }
                    if favorite != 0 {
                        count.execute(params![c.sku.0 as i64, favorite])?;
                    }
                    outcomes.push(ListOutcome::Before(was));
                }
            }
            tx.commit()?;
            Ok(outcomes)
        })
    }

    fn list_of(&self, list: ShopperList, user: UserId) -> Result<Vec<(Sku, u32)>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT sku, quantity FROM shopper_lists WHERE list = ?1 AND user_id = ?2 ORDER BY sku",
            )?;
            let rows = stmt.query_map(params![list.code(), user.0 as i64], |r| {
                Ok((Sku(r.get::<_, i64>(0)? as u64), r.get(1)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn favorite_counts(&self) -> Result<Vec<(Sku, u64)>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached("SELECT sku, shoppers FROM favorite_counts WHERE shoppers > 0")?;
            let rows = stmt.query_map([], |r| {
                Ok((Sku(r.get::<_, i64>(0)? as u64), r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn create_promotion(&self, row: &PromotionRow) -> Result<u64, StoreError> {
        sql(|| {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO promotions (merchant_id, spec, starts_at_ms, ends_at_ms, quantity) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.merchant.map(|m| m.0 as i64), row.spec, row.starts_at.0, row.ends_at.0, row.quantity.map(|q| q as i64)],
            )?;
            Ok(conn.last_insert_rowid() as u64)
        })
    }

    fn promotions(&self, now: Timestamp) -> Result<Vec<PromotionRow>, StoreError> {
        sql(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT id, merchant_id, spec, starts_at_ms, ends_at_ms, quantity, used FROM promotions WHERE ends_at_ms > ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([now.0], |r| {
                Ok(PromotionRow {
                    id: r.get::<_, i64>(0)? as u64,
                    merchant: r.get::<_, Option<i64>>(1)?.map(|m| MerchantId(m as u64)),
                    spec: r.get(2)?,
                    starts_at: Timestamp(r.get(3)?),
                    ends_at: Timestamp(r.get(4)?),
                    quantity: r.get::<_, Option<i64>>(5)?.map(|q| q as u64),
                    used: r.get::<_, i64>(6)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn end_promotion(&self, id: u64, now: Timestamp) -> Result<bool, StoreError> {
        sql(|| {
            let n = self.conn().execute(
                "UPDATE promotions SET ends_at_ms = ?2 WHERE id = ?1 AND ends_at_ms > ?2",
                params![id as i64, now.0],
            )?;
            Ok(n == 1)
        })
    }

    fn apply_checkouts(&self, ops: &[CheckoutOp]) -> Result<Vec<CheckoutDone>, StoreError> {
        sql(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut done = Vec::with_capacity(ops.len());
            {
                let mut begin = tx.prepare_cached(
                    "INSERT INTO checkouts (user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending)
                     VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?6, ?6, ?7)",
                )?;
                let mut by_key = tx.prepare_cached(&format!(
                    "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE user_id = ?1 AND idempotency_key = ?2"
                ))?;
                let mut step = tx.prepare_cached(
                    "UPDATE checkouts SET state = ?3, outcome = ?4, updated_at_ms = ?5,
                         idempotency_key = CASE WHEN ?6 THEN NULL ELSE idempotency_key END
                     WHERE id = ?1 AND state = ?2",
                )?;
                let mut take = tx.prepare_cached(
                    "UPDATE promotions SET used = used + 1 WHERE id = ?1 AND quantity IS NOT NULL AND used < quantity",
                )?;
                let mut settle = tx.prepare_cached(
                    "UPDATE checkouts SET coupons_pending = 0 WHERE id = ?1 AND coupons_pending = 1",
                )?;
                let mut give = tx.prepare_cached(
                    "UPDATE promotions SET used = used - 1 WHERE id = ?1 AND used > 0",
                )?;
                for op in ops {
                    match op {
                        CheckoutOp::Begin { row, promotions } => {
                            // A key seen before: that checkout, nothing taken.
                            if row.key.is_some() {
                                let existing = by_key
                                    .query_row(params![row.user.0 as i64, row.key], checkout_row)
                                    .optional()?;
                                if let Some(existing) = existing {
                                    done.push(CheckoutDone::Begun(Err(existing)));
                                    continue;
                                }
                            }
                            let mut taken = Vec::with_capacity(promotions.len());
                            let mut gone = None;
                            for &p in promotions {
                                if take.execute([p as i64])? == 1 {
                                    taken.push(p);
                                } else {
                                    gone = Some(p);
                                    break;
                                }
                            }
                            if let Some(p) = gone {
                                for &t in &taken {
                                    give.execute([t as i64])?;
                                }
                                done.push(CheckoutDone::PromotionGone(p));
                                continue;
                            }
                            begin.execute(params![
                                row.user.0 as i64,
                                row.key,
                                row.fingerprint as i64,
                                row.plan,
                                row.outcome,
                                row.created_at.0,
                                i64::from(row.coupons_pending)
                            ])?;
                            done.push(CheckoutDone::Begun(Ok(tx.last_insert_rowid() as u64)));
                        }
                        CheckoutOp::Move {
                            id,
                            from,
                            to,
                            outcome,
                            now,
                            give_back,
                            forget_key,
                        } => {
                            let n = step.execute(params![
                                *id as i64,
                                from.as_str(),
                                to.as_str(),
                                outcome,
                                now.0,
                                *forget_key
                            ])?;
                            if n == 1 {
                                for &p in give_back {
                                    give.execute([p as i64])?;
                                }
                            }
                            done.push(CheckoutDone::Moved(n == 1));
                        }
                        CheckoutOp::SettleCoupons { id, give_back } => {
                            let settled = settle.execute([*id as i64])? == 1;
                            if settled {
                                for &p in give_back {
                                    give.execute([p as i64])?;
                                }
                            }
                            done.push(CheckoutDone::Moved(settled));
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(done)
        })
    }

    fn checkout(&self, id: u64) -> Result<Option<CheckoutRow>, StoreError> {
        sql(|| {
            Ok(self
                .conn()
                .query_row(
                    &format!("SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE id = ?1"),
                    [id as i64],
                    checkout_row,
                )
                .optional()?)
        })
    }

    fn checkout_by_key(&self, user: UserId, key: &str) -> Result<Option<CheckoutRow>, StoreError> {
        sql(|| {
            Ok(self
                .conn()
                .query_row(
                    &format!("SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE user_id = ?1 AND idempotency_key = ?2"),
                    params![user.0 as i64, key],
                    checkout_row,
                )
                .optional()?)
        })
    }

    fn checkouts_of(&self, user: UserId, limit: usize) -> Result<Vec<CheckoutRow>, StoreError> {
        self.checkout_rows(
            "user_id = ?1 ORDER BY id DESC LIMIT ?2",
            user.0 as i64,
            limit as i64,
        )
    }

    fn checkouts_with_coupons(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<CheckoutRow>, StoreError> {
        self.checkout_rows(
            "state = 'reserved' AND coupons_pending = 1 AND updated_at_ms < ?1 ORDER BY updated_at_ms LIMIT ?2",
            before.0,
            limit as i64,
        )
    }

    fn unfinished_checkouts(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<CheckoutRow>, StoreError> {
        self.checkout_rows(
            "state IN ('open', 'releasing') AND updated_at_ms < ?1 ORDER BY updated_at_ms LIMIT ?2",
            before.0,
            limit as i64,
        )
    }
}
