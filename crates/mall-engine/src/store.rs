//! What a storage backend provides. The engine, the HTTP layer and the
//! payment service see only these traits; `mall-sqlite` and `mall-postgres`
//! implement them.

use crate::StoreError;
use mall_core::{Claim, Coupon, Item, MerchantId, Order, OrderId, Role, Sku, Timestamp, UserId};
use mall_inventory::{Board, Inventory, InventoryConfig};
use mall_ledger::{Account, AccountId, Ledger, LedgerConfig, Stored};
use mall_shard::Journal;
use std::sync::Arc;

/// The journal of one inventory shard, whatever stores it.
pub type ShardJournalBox = Box<dyn Journal<Machine = Inventory>>;
/// The ledger's journal, whatever stores it.
pub type LedgerJournalBox = Box<dyn Journal<Machine = Ledger>>;

/// A storage backend: where the shards' journals, the ledger and the
/// accounts live.
pub trait Store: Send + Sync + 'static {
    /// Where it is, for logs and reports (no password).
    fn describe(&self) -> String;

    /// Does a point read (an order by id) cost microseconds on this machine
    /// (SQLite: yes), rather than a round trip to a server? Callers on an
    /// async thread may do a local read in place; a remote one they hand to
    /// the blocking pool.
    fn reads_are_local(&self) -> bool {
        false
    }

    /// The number of inventory shards, fixed when the store was made.
    fn shard_count(&self) -> usize;

    /// The shard that owns a SKU.
    fn shard_of(&self, sku: Sku) -> usize {
        (sku.0 % self.shard_count() as u64) as usize
    }

    /// Opens shard `shard`'s journal. A backend that fences (PostgreSQL)
    /// takes the shard over here: any earlier opener's next commit fails.
    fn shard_journal(
        &self,
        shard: usize,
        config: InventoryConfig,
        board: Arc<Board>,
    ) -> Result<ShardJournalBox, StoreError>;

    /// Read access to shard `shard`'s orders for the API.
    fn order_reader(&self, shard: usize) -> Result<Arc<dyn OrderReader>, StoreError>;

    /// Opens the ledger's journal (fenced like a shard where the backend fences).
    fn ledger_journal(&self, config: LedgerConfig) -> Result<LedgerJournalBox, StoreError>;

    /// Read access to the ledger's transfers.
    fn ledger_reader(&self) -> Result<Arc<dyn LedgerRead>, StoreError>;

    /// Users, sessions, merchants and stored responses.
    fn accounts(&self) -> Result<Arc<dyn AccountStore>, StoreError>;

    /// Everything a shard stores, for the offline audit: its items, and its
    /// orders (an unreadable row as its error text).
    fn shard_contents(&self, shard: usize) -> Result<ShardContents, StoreError>;

    /// Everything the ledger stores (`mall ledger verify`). An error, not an
    /// empty ledger, where there is none.
    fn read_ledger(&self) -> Result<(Vec<Account>, Vec<Stored>), StoreError>;
}

/// A shard's durable contents, read whole.
#[derive(Debug, Default)]
pub struct ShardContents {
    pub items: Vec<Item>,
    pub orders: Vec<Result<Order, String>>,
    pub coupons: Vec<Coupon>,
    pub claims: Vec<Result<Claim, String>>,
}

/// A shard's orders as the API reads them. A committed order is visible
/// here before its reply leaves.
pub trait OrderReader: Send + Sync {
    fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError>;

    /// A user's orders created before `before` (`(created_at, id)`), newest first.
    fn orders_of_user(
        &self,
        user: UserId,
        before: Option<(Timestamp, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError>;
}

/// The ledger's transfers as the API and the payment service read them.
pub trait LedgerRead: Send + Sync {
    /// A wallet's transfers, newest first: at most `limit`, before `before_seq`.
    fn wallet_statement(
        &self,
        wallet: AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Every transfer, in order (for rebuilding the payments index at start).
    fn all_transfers(&self) -> Result<Vec<Stored>, StoreError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub merchant: Option<MerchantId>,
    /// PHC string; `None` for accounts that log in by issued token only.
    pub password_hash: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: [u8; 32],
    pub user: UserId,
    pub role: Role,
    pub merchant: Option<MerchantId>,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerchantRow {
    pub id: MerchantId,
    pub name: String,
}

/// A session that ended, as other nodes learn it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    Token([u8; 32]),
    /// Every session of the user (a revocation).
    User(UserId),
}

/// The first response to an idempotent request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub fingerprint: u64,
    pub status: u16,
    pub body: String,
}

/// A shopper's list: favourites or the cart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShopperList {
    Favorites,
    Cart,
}

impl ShopperList {
    /// Its number in the stores' `shopper_lists` table.
    pub fn code(self) -> i64 {
        match self {
            ShopperList::Favorites => 1,
            ShopperList::Cart => 2,
        }
    }
}

/// One change of a shopper's list, for [`AccountStore::change_lists`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListChange {
    pub list: ShopperList,
    pub user: UserId,
    pub sku: Sku,
    /// The line's new quantity (favourites: 1); 0 takes it out.
    pub quantity: u32,
    /// A new line beyond this many is refused.
    pub lines_max: usize,
}

/// What a store does for one [`ListChange`]: the decision both stores
/// share (they only speak SQL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStep {
    /// A new line, and the list is full: nothing changes.
    Full,
    /// Writes the line with its new quantity.
    Put,
    /// Takes the line out.
    Remove,
}

impl ListChange {
    /// The step for this change, given the line's quantity now (`was`, 0
    /// if absent) and, asked only for a new line, how many lines the list
    /// holds; and how the item's favourite count moves (−1, 0 or +1).
    pub fn decide<E>(
        &self,
        was: u32,
        lines: impl FnOnce() -> Result<usize, E>,
    ) -> Result<(ListStep, i64), E> {
        if was == 0 && self.quantity > 0 && lines()? >= self.lines_max {
            return Ok((ListStep::Full, 0));
        }
        let favorite = match (self.list, was, self.quantity) {
            (ShopperList::Favorites, 0, q) if q > 0 => 1,
            (ShopperList::Favorites, w, 0) if w > 0 => -1,
            _ => 0,
        };
        let step = if self.quantity > 0 {
            ListStep::Put
        } else {
            ListStep::Remove
        };
        Ok((step, favorite))
    }
}

/// What a [`ListChange`] met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListOutcome {
    /// Done; the line's quantity before (0: it was not there).
    Before(u32),
    /// A new line, and the list already held `lines_max`: nothing changed.
    Full,
}

/// A promotion as stored: who funds it, its offer (JSON the HTTP layer
/// reads: rule, SKUs, maximum, group) and its window `[starts_at, ends_at)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotionRow {
    pub id: u64,
    /// The merchant that funds it; `None`: the platform.
    pub merchant: Option<MerchantId>,
    pub spec: String,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Limited: at most this many checkouts use it (`None`: no limit).
    pub quantity: Option<u64>,
    /// Checkouts holding one of its units (reserved, or being decided).
    pub used: u64,
}

/// Where a checkout stands. `Open`: its holds are being made (nothing
/// acknowledged yet); `Reserved`: every line held and every coupon used,
/// acknowledged; `Releasing`: failed or abandoned, its holds and coupons
/// being handed back; `Released`: nothing of it is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckoutState {
    Open,
    Reserved,
    Releasing,
    Released,
}

impl CheckoutState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutState::Open => "open",
            CheckoutState::Reserved => "reserved",
            CheckoutState::Releasing => "releasing",
            CheckoutState::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<CheckoutState> {
        [
            CheckoutState::Open,
            CheckoutState::Reserved,
            CheckoutState::Releasing,
            CheckoutState::Released,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// A checkout as stored: whose, its idempotency key and request
/// fingerprint, where it stands, its plan (JSON the HTTP layer reads:
/// lines with their discounts, coupons, payment, address, price) and its
/// outcome (JSON: the line orders, or why it failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRow {
    pub id: u64,
    pub user: UserId,
    pub key: Option<String>,
    pub fingerprint: u64,
    pub state: CheckoutState,
    pub plan: String,
    pub outcome: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// It uses coupons that come back if every line ends unpaid, and that
    /// is not settled yet.
    pub coupons_pending: bool,
}

/// A step of a checkout for [`AccountStore::apply_checkouts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckoutOp {
    /// Record a new checkout (see [`AccountStore::begin_checkout`]),
    /// taking one unit of each limited promotion in `promotions` first:
    /// all of them, or (one used up) none and no checkout.
    Begin {
        row: CheckoutRow,
        promotions: Vec<u64>,
    },
    /// Move one (see [`AccountStore::move_checkout`]); if it moved, one
    /// unit of each promotion in `give_back` is given back, and with
    /// `forget_key` its idempotency key is let go (a retry under it begins
    /// anew: the checkout failed for a reason worth retrying).
    Move {
        id: u64,
        from: CheckoutState,
        to: CheckoutState,
        outcome: String,
        now: Timestamp,
        give_back: Vec<u64>,
        forget_key: bool,
    },
    /// What it took is settled (kept, or given back): `coupons_pending`
    /// goes to false, once (`Moved(false)` if it was already); if it did,
    /// one unit of each promotion in `give_back` is given back.
    SettleCoupons { id: u64, give_back: Vec<u64> },
}

/// What a [`CheckoutOp`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckoutDone {
    /// The new id, or the checkout already under that key.
    Begun(Result<u64, CheckoutRow>),
    /// Whether it was in `from` (and so moved).
    Moved(bool),
    /// Nothing was written: this limited promotion is used up (or gone).
    PromotionGone(u64),
}

/// A new account for [`AccountStore::create_users`].
pub struct NewUser {
    pub username: String,
    pub role: Role,
    pub merchant: Option<MerchantId>,
    pub password_hash: Option<String>,
    /// A session to open with it: `(token hash, expiry)`.
    pub session: Option<([u8; 32], Timestamp)>,
}

/// Accounts, merchants, sessions and the stored responses of idempotent
/// non-order requests. Not on the snap-up hot path: the HTTP layer caches
/// sessions in memory. Every call is blocking (run it off the async workers).
pub trait AccountStore: Send + Sync {
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Reserves `count` ids of the sequence `key` for this process: the
    /// first of a block no other caller gets, at least `floor` (the nodes
    /// of a cluster hand out SKUs from such blocks). A store only one
    /// process uses need not support it.
    fn reserve_ids(&self, key: &str, count: u64, floor: u64) -> Result<u64, StoreError> {
        let _ = (key, count, floor);
        Err(StoreError::Backend(
            "id blocks are for a cluster's store".into(),
        ))
    }
    /// `MerchantNameTaken` when the name is in use.
    fn create_merchant(&self, name: &str, now: Timestamp) -> Result<MerchantId, StoreError>;
    fn merchants(&self) -> Result<Vec<MerchantRow>, StoreError>;
    /// Creates accounts (and their sessions) in one transaction: all or
    /// none; `UsernameTaken` when a name is in use.
    fn create_users(&self, users: &[NewUser], now: Timestamp) -> Result<Vec<UserId>, StoreError>;
    fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError>;
    fn user_by_id(&self, user: UserId) -> Result<Option<UserRow>, StoreError>;
    fn set_password_hash(&self, user: UserId, hash: &str) -> Result<(), StoreError>;
    fn insert_session(
        &self,
        token_hash: &[u8; 32],
        user: UserId,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Ends one session (log out, or a rotated bootstrap token).
    fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Ends every session of `user` (an admin's revocation); how many.
    fn delete_sessions_of(&self, user: UserId) -> Result<usize, StoreError>;
    /// Sessions still valid at `now`, with their user's role. Expired ones are deleted.
    fn live_sessions(&self, now: Timestamp) -> Result<Vec<SessionRow>, StoreError>;
    /// One session, if valid at `now` (a node of a cluster meeting a token
    /// another node issued).
    fn session(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<SessionRow>, StoreError>;
    /// Sessions ended (log-outs, revocations) after position `after`, and
    /// the position to ask from next: every node of a cluster drops them
    /// from its cache. A store only one process uses records none.
    fn session_ends_since(&self, after: i64) -> Result<(Vec<SessionEnd>, i64), StoreError> {
        Ok((Vec::new(), after))
    }
    fn stored_response(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError>;
    /// Stores a response. A final answer replaces a stored 202 (an outcome
    /// that was still open) of the same request; a final answer is never replaced.
    fn store_response(
        &self,
        user: UserId,
        key: &str,
        response: &StoredResponse,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Forgets stored responses older than `horizon`.
    fn prune_responses(&self, horizon: Timestamp) -> Result<usize, StoreError>;

    /// Applies changes of shoppers' lists in order, in one transaction
    /// (one flush for the lot), and says what each met. Favourite counts
    /// per item move in the same transaction.
    fn change_lists(
        &self,
        changes: &[ListChange],
        now: Timestamp,
    ) -> Result<Vec<ListOutcome>, StoreError>;
    /// A shopper's list, by SKU.
    fn list_of(&self, list: ShopperList, user: UserId) -> Result<Vec<(Sku, u32)>, StoreError>;
    /// How many shoppers favourite each item (items with none are left out).
    fn favorite_counts(&self) -> Result<Vec<(Sku, u64)>, StoreError>;

    /// Records a promotion (its id is given back in `row.id`, ignored on input).
    fn create_promotion(&self, row: &PromotionRow) -> Result<u64, StoreError>;
    /// Promotions that end after `now`, by id.
    fn promotions(&self, now: Timestamp) -> Result<Vec<PromotionRow>, StoreError>;
    /// Ends a promotion at `now` (if it ends later); false if there is none
    /// such, or it had ended.
    fn end_promotion(&self, id: u64, now: Timestamp) -> Result<bool, StoreError>;

    /// Applies checkout steps in order, in one transaction (one flush for
    /// the lot), and says what each did.
    fn apply_checkouts(&self, ops: &[CheckoutOp]) -> Result<Vec<CheckoutDone>, StoreError>;
    /// Records a new checkout, `Open` (its id is given back; `row.id` and
    /// `row.state` are ignored). If the shopper has one under the same key
    /// already, nothing is written and that one is given back.
    fn begin_checkout(&self, row: &CheckoutRow) -> Result<Result<u64, CheckoutRow>, StoreError> {
        let begin = CheckoutOp::Begin {
            row: row.clone(),
            promotions: Vec::new(),
        };
        match self.apply_checkouts(&[begin])?.pop() {
            Some(CheckoutDone::Begun(begun)) => Ok(begun),
            other => Err(StoreError::Backend(format!("a begin answered {other:?}"))),
        }
    }
    /// Moves a checkout from `from` to `to` with `outcome`, if it is in
    /// `from` now (compare-and-set): false if it is not.
    fn move_checkout(
        &self,
        id: u64,
        from: CheckoutState,
        to: CheckoutState,
        outcome: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let step = CheckoutOp::Move {
            id,
            from,
            to,
            outcome: outcome.to_string(),
            now,
            give_back: Vec::new(),
            forget_key: false,
        };
        match self.apply_checkouts(&[step])?.pop() {
            Some(CheckoutDone::Moved(moved)) => Ok(moved),
            other => Err(StoreError::Backend(format!("a move answered {other:?}"))),
        }
    }
    fn checkout(&self, id: u64) -> Result<Option<CheckoutRow>, StoreError>;
    /// The shopper's checkout under `key`, if any.
    fn checkout_by_key(&self, user: UserId, key: &str) -> Result<Option<CheckoutRow>, StoreError>;
    /// A shopper's checkouts, newest first, at most `limit`.
    fn checkouts_of(&self, user: UserId, limit: usize) -> Result<Vec<CheckoutRow>, StoreError>;
    /// Checkouts `Reserved` with coupons pending, last changed before
    /// `before`, oldest first, at most `limit`.
    fn checkouts_with_coupons(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<CheckoutRow>, StoreError>;
    /// Checkouts `Open` or `Releasing` last changed before `before`, oldest
    /// first, at most `limit`: what a crash or a lost request left.
    fn unfinished_checkouts(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<CheckoutRow>, StoreError>;
}
