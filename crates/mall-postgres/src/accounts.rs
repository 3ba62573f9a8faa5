//! Accounts, merchants, sessions and the stored responses of idempotent
//! non-order requests, on the first server. Not on the snap-up hot path:
//! sessions are cached in memory by the HTTP layer.

use crate::pool::Pool;
use crate::{corrupt, Error};
use mall_core::Sku;
use mall_core::{MerchantId, Role, Timestamp, UserId};
use mall_engine::{
    AccountStore, CheckoutDone, CheckoutOp, CheckoutRow, CheckoutState, ListChange, ListOutcome,
    ListStep, MerchantRow, NewUser, PromotionRow, SessionEnd, SessionRow, ShopperList, StoreError,
    StoredResponse, UserRow,
};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::Row;
use std::sync::Arc;

const META_GET: &str = "SELECT value FROM mall_meta WHERE key = $1";
const META_SET: &str = "INSERT INTO mall_meta (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";
const CREATE_MERCHANT: &str =
    "INSERT INTO merchants (name, created_at_ms) VALUES ($1, $2) RETURNING id";
const MERCHANTS: &str = "SELECT id, name FROM merchants ORDER BY id";
const CREATE_USER: &str =
    "INSERT INTO users (username, role, merchant_id, password_hash, created_at_ms)
    VALUES ($1, $2, $3, $4, $5) RETURNING id";
const USER_BY_NAME: &str =
    "SELECT id, username, role, merchant_id, password_hash FROM users WHERE username = $1";
const USER_BY_ID: &str =
    "SELECT id, username, role, merchant_id, password_hash FROM users WHERE id = $1";
const SET_PASSWORD: &str = "UPDATE users SET password_hash = $2 WHERE id = $1";
/// Like SQLite's `INSERT OR REPLACE`: a token seen again takes the new values.
const INSERT_SESSION: &str =
    "INSERT INTO sessions (token_hash, user_id, expires_at_ms, created_at_ms)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (token_hash) DO UPDATE SET user_id = excluded.user_id,
        expires_at_ms = excluded.expires_at_ms, created_at_ms = excluded.created_at_ms";
/// Ending sessions is noted in `session_ends`, in the same statement, so
/// that every node of a cluster drops them from its cache.
const DELETE_SESSION: &str =
    "WITH gone AS (DELETE FROM sessions WHERE token_hash = $1 RETURNING 1),
    noted AS (INSERT INTO session_ends (token_hash) SELECT $1 WHERE EXISTS (SELECT 1 FROM gone))
    SELECT count(*) FROM gone";
const DELETE_SESSIONS_OF: &str =
    "WITH gone AS (DELETE FROM sessions WHERE user_id = $1 RETURNING 1),
    noted AS (INSERT INTO session_ends (user_id) VALUES ($1))
    SELECT count(*) FROM gone";
const SESSION: &str = "SELECT s.token_hash, s.user_id, u.role, u.merchant_id, s.expires_at_ms
    FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at_ms > $2";
const SESSION_ENDS: &str =
    "SELECT seq, token_hash, user_id FROM session_ends WHERE seq > $1 ORDER BY seq LIMIT 10000";
const DELETE_EXPIRED: &str = "DELETE FROM sessions WHERE expires_at_ms <= $1";
const LIVE_SESSIONS: &str = "SELECT s.token_hash, s.user_id, u.role, u.merchant_id, s.expires_at_ms
    FROM sessions s JOIN users u ON u.id = s.user_id";
/// A block of ids: the counter (text in `mall_meta`) moves to at least
/// `floor + count`; the new value is the block's end.
const RESERVE_IDS: &str = "INSERT INTO mall_meta (key, value) VALUES ($1, ($3::BIGINT + $2::BIGINT)::TEXT)
    ON CONFLICT (key) DO UPDATE SET value = (GREATEST(mall_meta.value::BIGINT, $3::BIGINT) + $2::BIGINT)::TEXT
    RETURNING value::BIGINT";
/// One shopper's lists are changed one writer at a time (nodes of a
/// cluster included), so the bound on lines holds: a transaction-scoped
/// advisory lock on (this key, the user).
const LOCK_LISTS: &str = "SELECT pg_advisory_xact_lock(1818, ($1::BIGINT % 2147483647)::INT)";
const LIST_LINE: &str =
    "SELECT quantity FROM shopper_lists WHERE list = $1 AND user_id = $2 AND sku = $3";
const LIST_LINES: &str = "SELECT count(*) FROM shopper_lists WHERE list = $1 AND user_id = $2";
const PUT_LINE: &str = "INSERT INTO shopper_lists (list, user_id, sku, quantity, updated_at_ms)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (list, user_id, sku) DO UPDATE SET quantity = excluded.quantity,
        updated_at_ms = excluded.updated_at_ms";
const REMOVE_LINE: &str = "DELETE FROM shopper_lists WHERE list = $1 AND user_id = $2 AND sku = $3";
const COUNT_FAVORITE: &str = "INSERT INTO favorite_counts (sku, shoppers) VALUES ($1, $2)
    ON CONFLICT (sku) DO UPDATE SET shoppers = favorite_counts.shoppers + excluded.shoppers";
const LIST_OF: &str =
    "SELECT sku, quantity FROM shopper_lists WHERE list = $1 AND user_id = $2 ORDER BY sku";
const FAVORITE_COUNTS: &str = "SELECT sku, shoppers FROM favorite_counts WHERE shoppers > 0";
const CREATE_PROMOTION: &str =
    "INSERT INTO promotions (merchant_id, spec, starts_at_ms, ends_at_ms, quantity)
    VALUES ($1, $2, $3, $4, $5) RETURNING id";
const TAKE_PROMOTION: &str = "UPDATE promotions SET used = used + 1
    WHERE id = $1 AND quantity IS NOT NULL AND used < quantity";
const GIVE_PROMOTION: &str = "UPDATE promotions SET used = used - 1 WHERE id = $1 AND used > 0";
const PROMOTIONS: &str =
    "SELECT id, merchant_id, spec, starts_at_ms, ends_at_ms, quantity, used FROM promotions
    WHERE ends_at_ms > $1 ORDER BY id";
const END_PROMOTION: &str =
    "UPDATE promotions SET ends_at_ms = $2 WHERE id = $1 AND ends_at_ms > $2";
const BEGIN_CHECKOUT: &str = "INSERT INTO checkouts (user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending)
    VALUES ($1, $2, $3, 'open', $4, $5, $6, $6, $7)
    ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id";
const CHECKOUT_BY_KEY: &str = "SELECT id, user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending
    FROM checkouts WHERE user_id = $1 AND idempotency_key = $2";
const MOVE_CHECKOUT: &str = "UPDATE checkouts SET state = $3, outcome = $4, updated_at_ms = $5,
        idempotency_key = CASE WHEN $6 THEN NULL ELSE idempotency_key END
    WHERE id = $1 AND state = $2";
const CHECKOUT: &str = "SELECT id, user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending
    FROM checkouts WHERE id = $1";
const CHECKOUTS_OF: &str = "SELECT id, user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending
    FROM checkouts WHERE user_id = $1 ORDER BY id DESC LIMIT $2";
const UNFINISHED_CHECKOUTS: &str = "SELECT id, user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending
    FROM checkouts WHERE state IN ('open', 'releasing') AND updated_at_ms < $1
    ORDER BY updated_at_ms LIMIT $2";
const CHECKOUTS_WITH_COUPONS: &str = "SELECT id, user_id, idempotency_key, request_fingerprint, state, plan, outcome, created_at_ms, updated_at_ms, coupons_pending
    FROM checkouts WHERE state = 'reserved' AND coupons_pending AND updated_at_ms < $1
    ORDER BY updated_at_ms LIMIT $2";
const SETTLE_COUPONS: &str =
    "UPDATE checkouts SET coupons_pending = FALSE WHERE id = $1 AND coupons_pending";
const STORED_RESPONSE: &str =
    "SELECT fingerprint, status, body FROM idempotency WHERE user_id = $1 AND key = $2";
/// A final answer replaces a stored 202 (an outcome that was still open) of
/// the same request; a final answer is never replaced.
const STORE_RESPONSE: &str =
    "INSERT INTO idempotency (user_id, key, fingerprint, status, body, created_at_ms)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (user_id, key) DO UPDATE SET status = excluded.status, body = excluded.body
    WHERE idempotency.status = 202 AND idempotency.fingerprint = excluded.fingerprint";
const PRUNE_RESPONSES: &str = "DELETE FROM idempotency WHERE created_at_ms < $1";

/// The accounts store on the first server's pool.
pub struct PgAccounts {
    pool: Arc<Pool>,
}

/// A unique violation of `constraint` (a clash of session tokens, say, is
/// no taken name).
fn violates(e: &Error, constraint: &str) -> bool {
    matches!(e, Error::Pg(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error().and_then(|d| d.constraint()) == Some(constraint))
}

fn user_from_row(row: &Row) -> Result<UserRow, Error> {
    let role: &str = row.try_get(2)?;
    Ok(UserRow {
        id: UserId(row.try_get::<_, i64>(0)? as u64),
        username: row.try_get(1)?,
        role: Role::parse(role).ok_or_else(|| corrupt(format!("role {role}")))?,
        merchant: row
            .try_get::<_, Option<i64>>(3)?
            .map(|m| MerchantId(m as u64)),
        password_hash: row.try_get(4)?,
    })
}

fn checkout_from_row(row: &Row) -> Result<CheckoutRow, Error> {
    let state: &str = row.try_get(4)?;
    Ok(CheckoutRow {
        id: row.try_get::<_, i64>(0)? as u64,
        user: UserId(row.try_get::<_, i64>(1)? as u64),
        key: row.try_get(2)?,
        fingerprint: row.try_get::<_, i64>(3)? as u64,
        state: CheckoutState::parse(state)
            .ok_or_else(|| corrupt(format!("checkout state {state}")))?,
        plan: row.try_get(5)?,
        outcome: row.try_get(6)?,
        created_at: Timestamp(row.try_get(7)?),
        updated_at: Timestamp(row.try_get(8)?),
        coupons_pending: row.try_get(9)?,
    })
}

fn session_from_row(row: &Row) -> Result<SessionRow, Error> {
    let hash: &[u8] = row.try_get(0)?;
    let role: &str = row.try_get(2)?;
    Ok(SessionRow {
        token_hash: hash
            .try_into()
            .map_err(|_| corrupt(format!("token hash of {} bytes", hash.len())))?,
        user: UserId(row.try_get::<_, i64>(1)? as u64),
        role: Role::parse(role).ok_or_else(|| corrupt(format!("role {role}")))?,
        merchant: row
            .try_get::<_, Option<i64>>(3)?
            .map(|m| MerchantId(m as u64)),
        expires_at: Timestamp(row.try_get(4)?),
    })
}

impl PgAccounts {
    pub(crate) fn new(pool: Arc<Pool>) -> PgAccounts {
        PgAccounts { pool }
    }

    fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.pool.with(|conn| {
            let stmt = conn.prepare(sql)?;
            Ok(conn.client.execute(&stmt, params)?)
        })
    }

    fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.pool.with(|conn| {
            let stmt = conn.prepare(sql)?;
            Ok(conn.client.query(&stmt, params)?)
        })
    }

    /// A query that only reads (retried once on a lost connection).
    fn select(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.pool.read(|conn| {
            let stmt = conn.prepare(sql)?;
            Ok(conn.client.query(&stmt, params)?)
        })
    }

    fn user_where(
        &self,
        sql: &'static str,
        param: &(dyn ToSql + Sync),
    ) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .select(sql, &[param])?
            .first()
            .map(user_from_row)
            .transpose()?)
    }
}

impl PgAccounts {
    fn apply_checkouts_once(&self, ops: &[CheckoutOp]) -> Result<Vec<CheckoutDone>, Error> {
        self.pool.with(|conn| {
            let begin = conn.prepare(BEGIN_CHECKOUT)?;
            let by_key = conn.prepare(CHECKOUT_BY_KEY)?;
            let step = conn.prepare(MOVE_CHECKOUT)?;
            let take = conn.prepare(TAKE_PROMOTION)?;
            let give = conn.prepare(GIVE_PROMOTION)?;
            let settle = conn.prepare(SETTLE_COUPONS)?;
            let mut tx = conn.client.transaction()?;
            let mut done = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    CheckoutOp::Begin { row, promotions } => {
                        let (user, fingerprint) = (row.user.0 as i64, row.fingerprint as i64);
                        // A key seen before: that checkout, nothing taken.
                        if row.key.is_some() {
                            if let Some(existing) = tx.query_opt(&by_key, &[&user, &row.key])? {
                                done.push(CheckoutDone::Begun(Err(checkout_from_row(&existing)?)));
                                continue;
                            }
                        }
                        let mut taken = Vec::with_capacity(promotions.len());
                        let mut gone = None;
                        for &p in promotions {
                            if tx.execute(&take, &[&(p as i64)])? == 1 {
                                taken.push(p);
                            } else {
                                gone = Some(p);
                                break;
                            }
                        }
                        let give_back = |tx: &mut postgres::Transaction<'_>| -> Result<(), Error> {
                            for &t in &taken {
                                tx.execute(&give, &[&(t as i64)])?;
                            }
                            Ok(())
                        };
                        if let Some(p) = gone {
                            give_back(&mut tx)?;
                            done.push(CheckoutDone::PromotionGone(p));
                            continue;
                        }
                        let made = tx.query_opt(
                            &begin,
                            &[
                                &user,
                                &row.key,
                                &fingerprint,
                                &row.plan,
                                &row.outcome,
                                &row.created_at.0,
                                &row.coupons_pending,
                            ],
                        )?;
                        done.push(CheckoutDone::Begun(match made {
                            Some(made) => Ok(made.try_get::<_, i64>(0)? as u64),
                            None => {
                                // The key was taken: that checkout, nothing taken.
                                give_back(&mut tx)?;
                                let existing = tx
                                    .query_opt(&by_key, &[&user, &row.key])?
                                    .ok_or_else(|| {
                                        corrupt("a checkout key clashed with no checkout".into())
                                    })?;
                                Err(checkout_from_row(&existing)?)
                            }
                        }));
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
                        let n = tx.execute(
                            &step,
                            &[
                                &(*id as i64),
                                &from.as_str(),
                                &to.as_str(),
                                outcome,
                                &now.0,
                                forget_key,
                            ],
                        )?;
                        if n == 1 {
                            for &p in give_back {
                                tx.execute(&give, &[&(p as i64)])?;
                            }
                        }
                        done.push(CheckoutDone::Moved(n == 1));
                    }
                    CheckoutOp::SettleCoupons { id, give_back } => {
                        let settled = tx.execute(&settle, &[&(*id as i64)])? == 1;
                        if settled {
                            for &p in give_back {
                                tx.execute(&give, &[&(p as i64)])?;
                            }
                        }
                        done.push(CheckoutDone::Moved(settled));
                    }
                }
            }
            tx.commit()?;
            Ok(done)
        })
    }
}

impl AccountStore for PgAccounts {
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self.select(META_GET, &[&key])?;
        Ok(rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(Error::from)?)
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.execute(META_SET, &[&key, &value])?;
        Ok(())
    }

    fn reserve_ids(&self, key: &str, count: u64, floor: u64) -> Result<u64, StoreError> {
        let (count, floor) = (count as i64, floor as i64);
        let rows = self.query(RESERVE_IDS, &[&key, &count, &floor])?;
        let end: i64 = rows
            .first()
            .ok_or_else(|| corrupt("no block returned".into()))?
            .try_get(0)
            .map_err(Error::from)?;
        Ok((end - count) as u64)
    }

    fn create_merchant(&self, name: &str, now: Timestamp) -> Result<MerchantId, StoreError> {
        match self.query(CREATE_MERCHANT, &[&name, &now.0]) {
            Ok(rows) => {
                let id: i64 = rows
                    .first()
                    .ok_or_else(|| corrupt("no id returned".into()))?
                    .try_get(0)
                    .map_err(Error::from)?;
                Ok(MerchantId(id as u64))
            }
            Err(e) if violates(&e, "merchants_name_key") => Err(StoreError::MerchantNameTaken),
            Err(e) => Err(e.into()),
        }
    }

    fn merchants(&self) -> Result<Vec<MerchantRow>, StoreError> {
        let rows = self.select(MERCHANTS, &[])?;
        let merchant = |r: &Row| -> Result<MerchantRow, Error> {
            Ok(MerchantRow {
                id: MerchantId(r.try_get::<_, i64>(0)? as u64),
                name: r.try_get(1)?,
            })
        };
        Ok(rows.iter().map(merchant).collect::<Result<_, _>>()?)
    }

    /// Creates accounts (and their sessions) in one transaction: all or none.
    fn create_users(&self, users: &[NewUser], now: Timestamp) -> Result<Vec<UserId>, StoreError> {
        let created = self.pool.with(|conn| {
            let insert = conn.prepare(CREATE_USER)?;
            let session = conn.prepare(INSERT_SESSION)?;
            let mut tx = conn.client.transaction()?;
            let mut ids = Vec::with_capacity(users.len());
            for u in users {
                let row = tx.query_one(
                    &insert,
                    &[
                        &u.username,
                        &u.role.as_str(),
                        &u.merchant.map(|m| m.0 as i64),
                        &u.password_hash,
                        &now.0,
                    ],
                )?;
                let id: i64 = row.try_get(0)?;
                if let Some((hash, expires)) = &u.session {
                    tx.execute(&session, &[&&hash[..], &id, &expires.0, &now.0])?;
                }
                ids.push(UserId(id as u64));
            }
            tx.commit()?;
            Ok(ids)
        });
        match created {
            Err(e) if violates(&e, "users_username_key") => Err(StoreError::UsernameTaken),
            other => Ok(other?),
        }
    }

    fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        self.user_where(USER_BY_NAME, &username)
    }

    fn user_by_id(&self, user: UserId) -> Result<Option<UserRow>, StoreError> {
        self.user_where(USER_BY_ID, &(user.0 as i64))
    }

    fn set_password_hash(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        self.execute(SET_PASSWORD, &[&(user.0 as i64), &hash])?;
        Ok(())
    }

    fn insert_session(
        &self,
        token_hash: &[u8; 32],
        user: UserId,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.execute(
            INSERT_SESSION,
            &[&&token_hash[..], &(user.0 as i64), &expires_at.0, &now.0],
        )?;
        Ok(())
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let rows = self.query(DELETE_SESSION, &[&&token_hash[..]])?;
        Ok(rows[0].try_get::<_, i64>(0).map_err(Error::from)? > 0)
    }

    fn delete_sessions_of(&self, user: UserId) -> Result<usize, StoreError> {
        let rows = self.query(DELETE_SESSIONS_OF, &[&(user.0 as i64)])?;
        Ok(rows[0].try_get::<_, i64>(0).map_err(Error::from)? as usize)
    }

    fn session(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<SessionRow>, StoreError> {
        let rows = self.select(SESSION, &[&&token_hash[..], &now.0])?;
        Ok(rows.first().map(session_from_row).transpose()?)
    }

    fn session_ends_since(&self, after: i64) -> Result<(Vec<SessionEnd>, i64), StoreError> {
        let rows = self.select(SESSION_ENDS, &[&after])?;
        let mut last = after;
        let mut ends = Vec::with_capacity(rows.len());
        for row in &rows {
            last = row.try_get(0).map_err(Error::from)?;
            let token: Option<&[u8]> = row.try_get(1).map_err(Error::from)?;
            let user: Option<i64> = row.try_get(2).map_err(Error::from)?;
            match (token, user) {
                (Some(hash), _) => ends
                    .push(SessionEnd::Token(hash.try_into().map_err(|_| {
                        corrupt(format!("token hash of {} bytes", hash.len()))
                    })?)),
                (None, Some(user)) => ends.push(SessionEnd::User(UserId(user as u64))),
                (None, None) => {}
            }
        }
        Ok((ends, last))
    }

    fn live_sessions(&self, now: Timestamp) -> Result<Vec<SessionRow>, StoreError> {
        let rows = self.pool.with(|conn| {
            let delete = conn.prepare(DELETE_EXPIRED)?;
            let live = conn.prepare(LIVE_SESSIONS)?;
            conn.client.execute(&delete, &[&now.0])?;
            Ok(conn.client.query(&live, &[])?)
        })?;
        Ok(rows
            .iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()?)
    }

    fn stored_response(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let rows = self.select(STORED_RESPONSE, &[&(user.0 as i64), &key])?;
        let response = |r: &Row| -> Result<StoredResponse, Error> {
            let status: i64 = r.try_get(1)?;
            Ok(StoredResponse {
                fingerprint: r.try_get::<_, i64>(0)? as u64,
                status: u16::try_from(status)
                    .map_err(|_| corrupt(format!("stored status {status}")))?,
                body: r.try_get(2)?,
            })
        };
        Ok(rows.first().map(response).transpose()?)
    }

    fn store_response(
        &self,
        user: UserId,
        key: &str,
        response: &StoredResponse,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.execute(
            STORE_RESPONSE,
            &[
                &(user.0 as i64),
                &key,
                &(response.fingerprint as i64),
                &i64::from(response.status),
                &response.body,
                &now.0,
            ],
        )?;
        Ok(())
    }

    fn prune_responses(&self, horizon: Timestamp) -> Result<usize, StoreError> {
        Ok(self.execute(PRUNE_RESPONSES, &[&horizon.0])? as usize)
    }

    fn change_lists(
        &self,
        changes: &[ListChange],
        now: Timestamp,
    ) -> Result<Vec<ListOutcome>, StoreError> {
        // Locks are taken in user order, so two batches never wait on
        // each other in a circle.
        let mut users: Vec<i64> = changes.iter().map(|c| c.user.0 as i64).collect();
        users.sort_unstable();
        users.dedup();
        Ok(self.pool.with(|conn| {
            let lock = conn.prepare(LOCK_LISTS)?;
            let line = conn.prepare(LIST_LINE)?;
            let lines = conn.prepare(LIST_LINES)?;
            let put = conn.prepare(PUT_LINE)?;
            let remove = conn.prepare(REMOVE_LINE)?;
            let count = conn.prepare(COUNT_FAVORITE)?;
            let mut tx = conn.client.transaction()?;
            for user in &users {
                tx.execute(&lock, &[user])?;
            }
            let mut outcomes = Vec::with_capacity(changes.len());
            for c in changes {
                let (list, user, sku) = (c.list.code() as i32, c.user.0 as i64, c.sku.0 as i64);
                let was: i64 = tx
                    .query_opt(&line, &[&list, &user, &sku])?
                    .map(|r| r.try_get(0))
                    .transpose()?
                    .unwrap_or(0);
                let (step, favorite) = c.decide(was as u32, || {
                    let n: Result<i64, postgres::Error> =
                        tx.query_one(&lines, &[&list, &user])?.try_get(0);
                    n.map(|n| n as usize)
                })?;
                match step {
                    ListStep::Full => {
                        outcomes.push(ListOutcome::Full);
                        continue;
                    }
                    ListStep::Put => {
                        tx.execute(&put, &[&list, &user, &sku, &i64::from(c.quantity), &now.0])?;
                    }
                    ListStep::Remove => {
                        tx.execute(&remove, &[&list, &user, &sku])?;
                    }
                }
                if favorite != 0 {
                    tx.execute(&count, &[&sku, &favorite])?;
                }
                outcomes.push(ListOutcome::Before(was as u32));
            }
            tx.commit()?;
            Ok(outcomes)
        })?)
    }

    fn list_of(&self, list: ShopperList, user: UserId) -> Result<Vec<(Sku, u32)>, StoreError> {
        let rows = self.select(LIST_OF, &[&(list.code() as i32), &(user.0 as i64)])?;
        let line = |r: &Row| -> Result<(Sku, u32), Error> {
            Ok((
                Sku(r.try_get::<_, i64>(0)? as u64),
                r.try_get::<_, i64>(1)? as u32,
            ))
        };
        Ok(rows.iter().map(line).collect::<Result<_, _>>()?)
    }

    fn favorite_counts(&self) -> Result<Vec<(Sku, u64)>, StoreError> {
        let rows = self.select(FAVORITE_COUNTS, &[])?;
        let count = |r: &Row| -> Result<(Sku, u64), Error> {
            Ok((
                Sku(r.try_get::<_, i64>(0)? as u64),
                r.try_get::<_, i64>(1)? as u64,
            ))
        };
        Ok(rows.iter().map(count).collect::<Result<_, _>>()?)
    }

    fn create_promotion(&self, row: &PromotionRow) -> Result<u64, StoreError> {
        let merchant = row.merchant.map(|m| m.0 as i64);
        let rows = self.query(
            CREATE_PROMOTION,
            &[
                &merchant,
                &row.spec,
                &row.starts_at.0,
                &row.ends_at.0,
                &row.quantity.map(|q| q as i64),
            ],
        )?;
        let id: i64 = rows
            .first()
            .ok_or_else(|| corrupt("no id returned".into()))?
            .try_get(0)
            .map_err(Error::from)?;
        Ok(id as u64)
    }

    fn promotions(&self, now: Timestamp) -> Result<Vec<PromotionRow>, StoreError> {
        let rows = self.select(PROMOTIONS, &[&now.0])?;
        let row = |r: &Row| -> Result<PromotionRow, Error> {
            Ok(PromotionRow {
                id: r.try_get::<_, i64>(0)? as u64,
                merchant: r
                    .try_get::<_, Option<i64>>(1)?
                    .map(|m| MerchantId(m as u64)),
                spec: r.try_get(2)?,
                starts_at: Timestamp(r.try_get(3)?),
                ends_at: Timestamp(r.try_get(4)?),
                quantity: r.try_get::<_, Option<i64>>(5)?.map(|q| q as u64),
                used: r.try_get::<_, i64>(6)? as u64,
            })
        };
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    fn end_promotion(&self, id: u64, now: Timestamp) -> Result<bool, StoreError> {
        Ok(self.execute(END_PROMOTION, &[&(id as i64), &now.0])? == 1)
    }

    fn apply_checkouts(&self, ops: &[CheckoutOp]) -> Result<Vec<CheckoutDone>, StoreError> {
        // Batches of several nodes may lock the same promotions in another
        // order: a deadlock (or a serialization failure) rolls the batch
        // back whole, and it is applied again.
        let mut tries = 0;
        loop {
            let applied = self.apply_checkouts_once(ops);
            match &applied {
                Err(Error::Pg(e))
                    if tries < 3
                        && matches!(
                            e.code(),
                            Some(&SqlState::T_R_DEADLOCK_DETECTED)
                                | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                        ) =>
                {
                    tries += 1;
                }
                _ => return Ok(applied?),
            }
        }
    }

    fn checkout(&self, id: u64) -> Result<Option<CheckoutRow>, StoreError> {
        let rows = self.select(CHECKOUT, &[&(id as i64)])?;
        Ok(rows.first().map(checkout_from_row).transpose()?)
    }

    fn checkout_by_key(&self, user: UserId, key: &str) -> Result<Option<CheckoutRow>, StoreError> {
        let rows = self.select(CHECKOUT_BY_KEY, &[&(user.0 as i64), &key])?;
        Ok(rows.first().map(checkout_from_row).transpose()?)
    }

    fn checkouts_of(&self, user: UserId, limit: usize) -> Result<Vec<CheckoutRow>, StoreError> {
        let rows = self.select(CHECKOUTS_OF, &[&(user.0 as i64), &(limit as i64)])?;
        Ok(rows
            .iter()
            .map(checkout_from_row)
            .collect::<Result<_, _>>()?)
    }

    fn checkouts_with_coupons(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<CheckoutRow>, StoreError> {
        let rows = self.select(CHECKOUTS_WITH_COUPONS, &[&before.0, &(limit as i64)])?;
        Ok(rows
            .iter()
            .map(checkout_from_row)
            .collect::<Result<_, _>>()?)
    }

    fn unfinished_checkouts(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<CheckoutRow>, StoreError> {
        let rows = self.select(UNFINISHED_CHECKOUTS, &[&before.0, &(limit as i64)])?;
        Ok(rows
            .iter()
            .map(checkout_from_row)
            .collect::<Result<_, _>>()?)
    }
}
