//! The inventory engine's core: one shard's state machine.
//!
//! It owns, for the SKUs of its shard, the stock counters, the holds (orders
//! awaiting payment), per-user purchase counts and idempotency keys. It is
//! sans-IO: commands and `now` go in, replies and [`Effect`]s come out. The
//! group-commit runtime (`mall-shard`) makes the effects durable before any
//! success reply leaves.
//!
//! Architecture invariant: for every SKU, at every moment,
//! `available + held + sold == stock_total`, and `available >= 0` (it is
//! unsigned). Checked with `assert!` for every SKU a batch touched, and in
//! full by [`Inventory::audit`].

pub mod board;
pub mod model;
pub mod sim;

pub use board::{Board, BoardEntry, Live};

mod coupons;
pub use coupons::{ClaimCoupon, CouponCounts};

use mall_core::{
    Claim, ClaimId, ClaimStatus, Coupon, CouponId, Fen, Item, Order, OrderId, OrderPreSale,
    OrderStatus, PaymentMethod, Quantity, Refusal, Sku, Timestamp, UserId,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct InventoryConfig {
    /// How long an unpaid online order holds its stock.
    pub hold_timeout_ms: i64,
    /// Idempotency keys remembered per shard, at most (oldest forgotten first).
    pub idempotency_keys_max: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_retention_ms: i64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            hold_timeout_ms: 15 * 60 * 1000,
            idempotency_keys_max: 4_000_000,
            idempotency_retention_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// A snap-up: hold `quantity` units of `sku` for `user`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reserve {
    pub user: UserId,
    pub sku: Sku,
    pub quantity: Quantity,
    pub payment: PaymentMethod,
    pub address: Arc<str>,
    pub idempotency_key: Option<Arc<str>>,
    /// Fingerprint of the request fields (see `mall_core::fingerprint`).
    pub fingerprint: u64,
    /// Admins may buy before the sale opens (the ceremonial first order).
    pub early_access: bool,
    /// The total the client expects to pay; if the price is not that now,
    /// the reservation is refused `price_changed` and nothing is held. Not
    /// part of the fingerprint: a retry is the same request whatever it
    /// expected.
    #[serde(default)]
    pub expected_total_fen: Option<Fen>,
    /// This line's share of a checkout's promotions and coupons, taken off
    /// its amount (`0` for a snap-up). Refused `price_changed` if it would
    /// take a unit below the item's floor price.
    #[serde(default)]
    pub discount_fen: Fen,
}

impl Reserve {
    /// A snap-up as a shopper asks it, its fingerprint computed from the
    /// request's fields: the one way the HTTP layer and the in-process
    /// rehearsal make it, so a retry under the same key is the same request.
    pub fn new(
        user: UserId,
        sku: Sku,
        quantity: Quantity,
        payment: PaymentMethod,
        address: Arc<str>,
        idempotency_key: Option<Arc<str>>,
        early_access: bool,
    ) -> Reserve {
        let fingerprint = mall_core::fingerprint(&[
            &sku.0.to_le_bytes(),
            &quantity.get().to_le_bytes(),
            payment.as_str().as_bytes(),
            address.as_bytes(),
        ]);
        Reserve {
            user,
            sku,
            quantity,
            payment,
            address,
            idempotency_key,
            fingerprint,
            early_access,
            expected_total_fen: None,
            discount_fen: Fen(0),
        }
    }

    /// The same snap-up, refused unless its total is `expected` fen.
    pub fn expecting(mut self, expected: Option<Fen>) -> Reserve {
        self.expected_total_fen = expected;
        self
    }

    /// The same line with `discount` off its amount (a checkout's share).
    pub fn discounted(mut self, discount: Fen) -> Reserve {
        self.discount_fen = discount;
        self
    }
}

/// Commands and replies also travel between the nodes of a cluster (serde).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    Reserve(Reserve),
    /// Payment landed: the hold becomes a sale.
    Confirm {
        order: OrderId,
    },
    /// Cancel an order: held or COD-sold stock goes back on sale. `by` is the
    /// shopper asking, or `None` for an admin. Refused once delivered.
    Release {
        order: OrderId,
        by: Option<UserId>,
    },
    /// The order reached the shopper (paid and delivered, or cash on
    /// delivery collected): `paid | confirmed → delivered`. Its stock stays
    /// sold for good.
    Deliver {
        order: OrderId,
    },
    /// Create an item (`expected: None`) or replace one that is exactly
    /// `expected` now (compare-and-swap: concurrent edits never undo each
    /// other). Stock may not drop below what is held or sold.
    PutItem {
        item: Item,
        expected: Option<Item>,
    },
    /// Create a coupon (`expected: None`) or replace one that is exactly
    /// `expected` now. Its quantity may not drop below the claims made.
    PutCoupon {
        coupon: Coupon,
        expected: Option<Coupon>,
    },
    /// A shopper claims a coupon (see `coupons`).
    Claim(ClaimCoupon),
    /// Put a claim on an order: `claimed → used`.
    UseClaim {
        claim: ClaimId,
        user: UserId,
        order: OrderId,
    },
    /// Give a claim back from an order cancelled before payment.
    ReturnClaim {
        claim: ClaimId,
        order: OrderId,
    },
    /// A shopper's claims on this shard, by id, with their coupons (a
    /// read: answered once everything applied before it is committed).
    ClaimsOf {
        user: UserId,
    },
    /// The shard's coupons with their counters, by id (a read, likewise).
    Coupons,
    /// The shopper asks for the balance of their paid pre-sale deposit:
    /// its balance order, made once (a repeat answers the same order),
    /// in the balance window. It holds no stock: the deposit's units are
    /// the goods.
    Balance {
        deposit: OrderId,
        user: UserId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// The order as it stands now. `replayed`: an earlier request with the
    /// same idempotency key made it.
    Order {
        order: Order,
        replayed: bool,
    },
    /// A replay of an order that has left memory (cancelled or expired);
    /// read it from the store.
    StoredOrder(OrderId),
    Item(Item),
    Coupon(Coupon),
    /// The claim as it stands now; `replayed`: nothing changed (an earlier
    /// request made it so).
    Claim {
        claim: Claim,
        replayed: bool,
    },
    /// A shopper's claims, and the coupons they are of.
    Claims {
        claims: Vec<Claim>,
        coupons: Vec<Coupon>,
    },
    Coupons(Vec<CouponCounts>),
    /// A pre-sale cancelled as a whole: its deposit order and its balance
    /// order (if one was asked), as they stand now. A cancel by the
    /// shopper before the balance is paid forfeits the deposit.
    PreSale {
        deposit: Box<Order>,
        balance: Option<Box<Order>>,
    },
    /// The order is not active here (cancelled, expired, or unknown).
    /// Answered only after everything applied before it is committed, so a
    /// read of the store then sees its latest state.
    Inactive(OrderId),
    Refused(Refusal),
    /// The batch could not be committed; nothing is acknowledged. Retry with
    /// the same idempotency key.
    Unavailable,
}

/// What must become durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    InsertOrder(Order),
    UpdateOrder {
        id: OrderId,
        status: OrderStatus,
        updated_at: Timestamp,
    },
    PutItem(Item),
    PutCoupon(Coupon),
    InsertClaim(Claim),
    UpdateClaim {
        id: ClaimId,
        status: ClaimStatus,
        order: Option<OrderId>,
        updated_at: Timestamp,
    },
}

#[derive(Debug)]
struct SkuState {
    item: Item,
    available: u32,
    held: u32,
    sold: u32,
    /// Published copy of the counters, read by the HTTP layer.
    live: Arc<Live>,
}

impl SkuState {
    /// A new item: all its stock available, published.
    fn new(item: Item) -> SkuState {
        let state = SkuState {
            available: item.stock_total,
            held: 0,
            sold: 0,
            live: Arc::new(Live::default()),
            item,
        };
        state.publish();
        state
    }

    fn publish(&self) {
        self.live.store(self.available, self.held, self.sold);
    }
}

#[derive(Debug)]
struct KeyEntry {
    fingerprint: u64,
    order: OrderId,
}

/// One shard's inventory state machine.
#[derive(Debug)]
pub struct Inventory {
    shard: usize,
    config: InventoryConfig,
    board: Arc<Board>,
    /// The shard's SKUs and their counters.
    skus: FxHashMap<Sku, SkuState>,
    /// Active orders (awaiting payment, paid, COD-confirmed); bounded by
    /// the shard's total stock, since each holds at least one unit.
    orders: FxHashMap<OrderId, Order>,
    /// Units held or bought by a user per SKU, counting active orders only.
    per_user: FxHashMap<(UserId, Sku), u32>,
    /// Remembered idempotency keys; bounded by `idempotency_keys_max`.
    keys: FxHashMap<(UserId, Arc<str>), KeyEntry>,
    /// The keys in arrival order with their time, for forgetting the oldest.
    keys_fifo: VecDeque<(UserId, Arc<str>, Timestamp)>,
    /// Hold expiry times; entries whose order has moved on are skipped.
    expiry: BinaryHeap<Reverse<(Timestamp, OrderId)>>,
    /// Sequence number of the next order id.
    next_seq: u64,
    /// SKUs changed since the last invariant check.
    touched: FxHashSet<Sku>,
    /// The shard's coupons and their counters.
    coupons: FxHashMap<CouponId, coupons::CouponState>,
    /// Every claim of the shard's coupons (bounded by their quantities).
    claims: FxHashMap<ClaimId, Claim>,
    /// Claims a user made per coupon.
    claims_per_user: FxHashMap<(UserId, CouponId), u32>,
    /// Each user's claims, in the order made (their list is read by id).
    claims_by_user: FxHashMap<UserId, Vec<ClaimId>>,
    /// Idempotency keys of claims (one a claim at most).
    claim_keys: FxHashMap<(UserId, Arc<str>), (u64, ClaimId)>,
    /// Sequence number of the next claim id.
    next_claim_seq: u64,
    /// Coupons changed since the last invariant check.
    touched_coupons: FxHashSet<CouponId>,
    /// Active pre-sale deposits' balance orders: deposit → balance.
    balances: FxHashMap<OrderId, OrderId>,
}

/// The durable state a shard is rebuilt from: its items and orders.
pub struct Snapshot {
    pub items: Vec<Item>,
    /// Every order that is active, or carries an idempotency key younger
    /// than the retention. Any order order is fine.
    pub orders: Vec<Order>,
    /// Highest order sequence number ever used by the shard (0 if none).
    pub last_seq: u64,
    /// The shard's coupons, and every claim of them.
    pub coupons: Vec<Coupon>,
    pub claims: Vec<Claim>,
}

impl Inventory {
    pub fn new(shard: usize, config: InventoryConfig, board: Arc<Board>) -> Inventory {
        assert!(shard < OrderId::SHARDS_MAX);
        assert!(config.hold_timeout_ms > 0);
        assert!(config.idempotency_keys_max > 0);
        Inventory {
            shard,
            config,
            board,
            skus: FxHashMap::default(),
            orders: FxHashMap::default(),
            per_user: FxHashMap::default(),
            keys: FxHashMap::default(),
            keys_fifo: VecDeque::new(),
            expiry: BinaryHeap::new(),
            next_seq: 1,
            touched: FxHashSet::default(),
            coupons: FxHashMap::default(),
            claims: FxHashMap::default(),
            claims_per_user: FxHashMap::default(),
            claims_by_user: FxHashMap::default(),
            claim_keys: FxHashMap::default(),
            next_claim_seq: 1,
            touched_coupons: FxHashSet::default(),
            balances: FxHashMap::default(),
        }
    }

    /// Rebuilds a shard from durable state. Holds that lapsed while the
    /// shard was down expire at the first tick.
    pub fn restore(
        shard: usize,
        config: InventoryConfig,
        board: Arc<Board>,
        mut snapshot: Snapshot,
        now: Timestamp,
    ) -> Inventory {
        let mut inv = Inventory::new(shard, config, board);
        // Built aside, counted, then swapped onto the board in one step, so
        // browsing never sees a reloading shard's items missing or unsold.
        for item in snapshot.items {
            let state = SkuState::new(item);
            inv.skus.insert(state.item.sku, state);
        }
        snapshot.orders.sort_by_key(|o| o.id.seq());
        let key_horizon = now.plus_ms(-inv.config.idempotency_retention_ms);
        for order in snapshot.orders {
            assert_eq!(order.id.shard(), shard, "order stored in the wrong shard");
            // A retry may replay any order still remembered: its shopper
            // is a buyer (see `Live::add_buyer`).
            if order.status.is_active() || order.created_at >= key_horizon {
                if let Some(sku) = inv.skus.get(&order.sku) {
                    sku.live.add_buyer(order.user.0);
                }
            }
            if let Some(key) = &order.idempotency_key {
                if order.created_at >= key_horizon {
                    inv.remember_key(
                        order.user,
                        key.clone(),
                        order.request_fingerprint,
                        order.id,
                        order.created_at,
                    );
                }
            }
            if !order.status.is_active() {
                continue;
            }
            if let Some(OrderPreSale::Balance { deposit }) = order.presale {
                // Money only: the deposit's units are counted with it.
                inv.balances.insert(deposit, order.id);
                if let Some(at) = order.expires_at {
                    inv.expiry.push(Reverse((at, order.id)));
                }
                inv.orders.insert(order.id, order);
                continue;
            }
            if let Some(at) = balance_deadline_paid(&order) {
                inv.expiry.push(Reverse((at, order.id)));
            }
            let sku = inv
                .skus
                .get_mut(&order.sku)
                .expect("order for an unknown item");
            let q = order.quantity.get();
            sku.available = sku
                .available
                .checked_sub(q)
                .expect("stored orders exceed stock");
            if order.status.is_sold() {
                sku.sold += q;
            } else {
                sku.held += q;
                let at = order.expires_at.expect("a hold has an expiry");
                inv.expiry.push(Reverse((at, order.id)));
            }
            *inv.per_user.entry((order.user, order.sku)).or_default() += q;
            inv.touched.insert(order.sku);
            inv.orders.insert(order.id, order);
        }
        inv.next_seq = snapshot.last_seq + 1;
        for sku in inv.skus.values() {
            sku.publish();
        }
        let entries = inv
            .skus
            .values()
            .map(|s| (s.item.clone(), s.live.clone()))
            .collect();
        inv.board.replace_shard(shard, entries);
        inv.restore_coupons(snapshot.coupons, snapshot.claims);
        inv.check_touched();
        inv
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn item(&self, sku: Sku) -> Option<&Item> {
        self.skus.get(&sku).map(|s| &s.item)
    }

    /// `(available, held, sold)` of a SKU.
    pub fn counters(&self, sku: Sku) -> Option<(u32, u32, u32)> {
        self.skus.get(&sku).map(|s| (s.available, s.held, s.sold))
    }

    pub fn active_orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }

    pub fn skus(&self) -> impl Iterator<Item = Sku> + '_ {
        self.skus.keys().copied()
    }

    pub fn apply(&mut self, command: Command, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        match command {
            Command::Reserve(r) => self.reserve(r, now, effects),
            Command::Confirm { order } => self.confirm(order, now, effects),
            Command::Release { order, by } => self.release(order, by, now, effects),
            Command::Deliver { order } => self.deliver(order, now, effects),
            Command::PutItem { item, expected } => self.put_item(item, expected, effects),
            Command::PutCoupon { coupon, expected } => self.put_coupon(coupon, expected, effects),
            Command::Claim(c) => self.claim(c, now, effects),
            Command::UseClaim { claim, user, order } => {
                self.use_claim(claim, user, order, now, effects)
            }
            Command::ReturnClaim { claim, order } => self.return_claim(claim, order, now, effects),
            Command::ClaimsOf { user } => self.claims_of(user),
            Command::Coupons => Reply::Coupons(self.coupon_counts()),
            Command::Balance { deposit, user } => self.balance(deposit, user, now, effects),
        }
    }

    fn reserve(&mut self, r: Reserve, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        if let Some(key) = &r.idempotency_key {
            if let Some(entry) = self.keys.get(&(r.user, key.clone())) {
                if entry.fingerprint != r.fingerprint {
                    return Reply::Refused(Refusal::IdempotencyKeyReused);
                }
                return match self.orders.get(&entry.order) {
                    Some(order) => Reply::Order {
                        order: order.clone(),
                        replayed: true,
                    },
                    None => Reply::StoredOrder(entry.order),
                };
            }
        }
        let Some(sku) = self.skus.get_mut(&r.sku) else {
            return Reply::Refused(Refusal::UnknownItem);
        };
        if !r.early_access {
            if now < sku.item.opens_at {
                return Reply::Refused(Refusal::SaleNotOpen {
                    opens_at: sku.item.opens_at,
                });
            }
            if now >= sku.item.closes_at {
                return Reply::Refused(Refusal::SaleClosed {
                    closes_at: sku.item.closes_at,
                });
            }
        }
        let q = r.quantity.get();
        // Sold out first: on a hot item almost every request ends here, and
        // it needs no per-user lookup.
        if sku.available == 0 {
            return Reply::Refused(Refusal::SoldOut);
        }
        let presale = sku.item.deposit_terms(q);
        if presale.is_some() && (r.payment != PaymentMethod::Online || r.discount_fen.0 != 0) {
            return Reply::Refused(Refusal::PreSaleOnlineOnly);
        }
        let (unit_price, amount) = match presale {
            // A deposit: the unit's price is the final one (at the balance
            // window's opening); the order's amount is the deposit.
            Some((
                deposit,
                OrderPreSale::Deposit {
                    balance_opens_at, ..
                },
            )) => (sku.item.price_at(balance_opens_at), deposit),
            _ => {
                let unit_price = sku.item.price_at(now);
                (unit_price, mall_core::Fen(unit_price.0 * i64::from(q)))
            }
        };
        // (A deposit is no price: the floor binds the final one, checked
        // with the item's terms.)
        if r.expected_total_fen.is_some_and(|e| e != amount)
            || r.discount_fen.0 < 0
            || (presale.is_none()
                && amount.0 - r.discount_fen.0 < sku.item.floor_unit().0 * i64::from(q))
        {
            return Reply::Refused(Refusal::PriceChanged {
                list_price_fen: sku.item.price_fen,
                unit_price_fen: unit_price,
                amount_fen: amount,
            });
        }
        let amount = mall_core::Fen(amount.0 - r.discount_fen.0);
        let active = self.per_user.get(&(r.user, r.sku)).copied().unwrap_or(0);
        if active + q > sku.item.per_user_limit {
            return Reply::Refused(Refusal::LimitReached {
                limit: sku.item.per_user_limit,
                active,
            });
        }
        if sku.available < q {
            return Reply::Refused(Refusal::InsufficientStock {
                available: sku.available,
            });
        }

        sku.available -= q;
        let presale = presale.map(|(_, p)| p);
        let (status, expires_at) = match r.payment {
            PaymentMethod::Online => {
                sku.held += q;
                let mut until = now.plus_ms(self.config.hold_timeout_ms);
                // A deposit paid after its balance window would be lost at once.
                if let Some(OrderPreSale::Deposit {
                    balance_closes_at, ..
                }) = presale
                {
                    until = until.min(balance_closes_at);
                }
                (OrderStatus::AwaitingPayment, Some(until))
            }
            PaymentMethod::Cod => {
                sku.sold += q;
                (OrderStatus::Confirmed, None)
            }
        };
        sku.live.add_buyer(r.user.0);
        sku.publish();
        let (list_price, limit) = (sku.item.price_fen, sku.item.per_user_limit);
        let id = OrderId::new(self.shard, self.next_seq);
        self.next_seq += 1;
        let order = Order {
            id,
            sku: r.sku,
            user: r.user,
            quantity: r.quantity,
            list_price_fen: list_price,
            unit_price_fen: unit_price,
            amount_fen: amount,
            payment: r.payment,
            status,
            address: r.address,
            idempotency_key: r.idempotency_key.clone(),
            request_fingerprint: r.fingerprint,
            per_user_limit: limit,
            created_at: now,
            expires_at,
            updated_at: now,
            presale,
        };
        *self.per_user.entry((r.user, r.sku)).or_default() += q;
        if let Some(at) = expires_at {
            self.expiry.push(Reverse((at, id)));
        }
        if let Some(key) = r.idempotency_key {
            self.remember_key(r.user, key, r.fingerprint, id, now);
        }
        self.touched.insert(r.sku);
        self.orders.insert(id, order.clone());
        effects.push(Effect::InsertOrder(order.clone()));
        Reply::Order {
            order,
            replayed: false,
        }
    }

    fn confirm(&mut self, id: OrderId, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        let Some(order) = self.orders.get(&id) else {
            return Reply::Inactive(id);
        };
        match order.status {
            // Paid already (and perhaps delivered since): a replay.
            OrderStatus::Paid => Reply::Order {
                order: order.clone(),
                replayed: true,
            },
            OrderStatus::Delivered if order.payment == PaymentMethod::Online => Reply::Order {
                order: order.clone(),
                replayed: true,
            },
            OrderStatus::AwaitingPayment => {
                if order.expires_at.is_some_and(|at| at <= now) {
                    self.end_hold(id, OrderStatus::Expired, now, effects);
                    return Reply::Refused(Refusal::HoldExpired);
                }
                let (sku, q) = (order.sku, order.quantity.get());
                if !order.is_balance() {
                    let state = self.skus.get_mut(&sku).expect("active order's item exists");
                    state.held -= q;
                    state.sold += q;
                    state.publish();
                    self.touched.insert(sku);
                }
                let order = self.orders.get_mut(&id).expect("looked up above");
                order.expires_at = None;
                let reply = move_on(order, OrderStatus::Paid, now, effects);
                // A paid deposit holds its units until its balance window ends.
                if let Some(at) = balance_deadline_paid(order) {
                    self.expiry.push(Reverse((at, id)));
                }
                reply
            }
            status => Reply::Refused(Refusal::InvalidTransition {
                status,
                action: "paid".into(),
            }),
        }
    }

    fn release(
        &mut self,
        id: OrderId,
        by: Option<UserId>,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let Some(order) = self.orders.get(&id) else {
            return Reply::Inactive(id);
        };
        if by.is_some_and(|user| user != order.user) {
            return Reply::Refused(Refusal::UnknownOrder);
        }
        if let Some(deposit) = order.presale_deposit() {
            return self.release_presale(deposit, by, now, effects);
        }
        match order.status {
            // A paid order's money is refunded by the payment service.
            OrderStatus::AwaitingPayment | OrderStatus::Confirmed | OrderStatus::Paid => {
                let order = self.end_hold(id, OrderStatus::Cancelled, now, effects);
                Reply::Order {
                    order,
                    replayed: false,
                }
            }
            // Delivered: the goods are with the shopper. Money goes back
            // only by an after-sale refund; stock never returns by itself.
            status => Reply::Refused(Refusal::InvalidTransition {
                status,
                action: "cancelled".into(),
            }),
        }
    }

    fn deliver(&mut self, id: OrderId, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        let Some(order) = self.orders.get(&id) else {
            return Reply::Inactive(id);
        };
        match order.status {
            OrderStatus::Delivered => Reply::Order {
                order: order.clone(),
                replayed: true,
            },
            OrderStatus::Paid | OrderStatus::Confirmed => {
                match order.presale {
                    // A pre-sale's goods leave once its balance is paid; the
                    // balance order is delivered with its deposit order.
                    Some(OrderPreSale::Deposit { .. }) => {
                        let balance = self.balances.get(&id).copied();
                        let Some(b) = balance.and_then(|b| self.orders.get_mut(&b)) else {
                            return Reply::Refused(Refusal::BalanceNotPaid);
                        };
                        match b.status {
                            OrderStatus::Paid => {
                                move_on(b, OrderStatus::Delivered, now, effects);
                            }
                            OrderStatus::Delivered => {}
                            _ => return Reply::Refused(Refusal::BalanceNotPaid),
                        }
                    }
                    Some(OrderPreSale::Balance { .. }) => {
                        return Reply::Refused(Refusal::InvalidTransition {
                            status: order.status,
                            action: "delivered apart from its deposit order".into(),
                        })
                    }
                    None => {}
                }
                let order = self.orders.get_mut(&id).expect("looked up above");
                // Sold before and after: no counter moves.
                move_on(order, OrderStatus::Delivered, now, effects)
            }
            status => Reply::Refused(Refusal::InvalidTransition {
                status,
                action: "delivered".into(),
            }),
        }
    }

    /// Ends an active order that holds or COD-sold stock (cancel or expiry):
    /// the stock goes back on sale and the order leaves memory.
    fn end_hold(
        &mut self,
        id: OrderId,
        status: OrderStatus,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Order {
        assert!(!status.is_active());
        let order = self.orders.remove(&id).expect("ending an active order");
        if let Some(OrderPreSale::Balance { deposit }) = order.presale {
            // Money only: no stock moves.
            self.balances.remove(&deposit);
            return finish(order, status, now, effects);
        }
        let q = order.quantity.get();
        let state = self
            .skus
            .get_mut(&order.sku)
            .expect("active order's item exists");
        match order.status {
            OrderStatus::AwaitingPayment => state.held -= q,
            OrderStatus::Confirmed | OrderStatus::Paid => state.sold -= q,
            other => panic!("cannot end an order that is {}", other.as_str()),
        }
        state.available += q;
        state.publish();
        let key = (order.user, order.sku);
        let units = self
            .per_user
            .get_mut(&key)
            .expect("active order counted per user");
        *units -= q;
        if *units == 0 {
            self.per_user.remove(&key);
        }
        self.touched.insert(order.sku);
        finish(order, status, now, effects)
    }

    /// Whether a deposit's balance order is paid (or delivered).
    fn balance_paid(&self, deposit: OrderId) -> bool {
        self.balances
            .get(&deposit)
            .and_then(|b| self.orders.get(b))
            .is_some_and(|b| b.status.is_sold())
    }

    /// A pre-sale's balance order, made once per deposit.
    fn balance(
        &mut self,
        deposit: OrderId,
        user: UserId,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let Some(d) = self.orders.get(&deposit) else {
            return Reply::Inactive(deposit);
        };
        if d.user != user {
            return Reply::Refused(Refusal::UnknownOrder);
        }
        if let Some(b) = self.balances.get(&deposit) {
            return Reply::Order {
                order: self.orders[b].clone(),
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
        let id = OrderId::new(self.shard, self.next_seq);
        self.next_seq += 1;
        let order = Order {
            id,
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
        self.expiry.push(Reverse((balance_closes_at, id)));
        self.balances.insert(deposit, id);
        self.orders.insert(id, order.clone());
        effects.push(Effect::InsertOrder(order.clone()));
        Reply::Order {
            order,
            replayed: false,
        }
    }

    /// Cancels a pre-sale as a whole. Its deposit unpaid: an ordinary
    /// cancel. Paid, with the balance paid too: both cancelled (refunded).
    /// Paid, the balance not: the shopper forfeits the deposit, an admin or
    /// the merchant cancels it (refunded); an open balance order is
    /// cancelled with it.
    fn release_presale(
        &mut self,
        deposit: OrderId,
        by: Option<UserId>,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let Some(d) = self.orders.get(&deposit) else {
            // A balance order outlives its deposit never: only a bug.
            return Reply::Inactive(deposit);
        };
        let balance = self.balances.get(&deposit).copied();
        let balance_paid = self.balance_paid(deposit);
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
        let balance =
            balance.map(|b| Box::new(self.end_hold(b, OrderStatus::Cancelled, now, effects)));
        let deposit = Box::new(self.end_hold(deposit, status, now, effects));
        Reply::PreSale { deposit, balance }
    }

    fn put_item(&mut self, item: Item, expected: Option<Item>, effects: &mut Vec<Effect>) -> Reply {
        assert!(
            item.opens_at < item.closes_at,
            "the edge validates the sale window"
        );
        match (self.skus.get_mut(&item.sku), expected) {
            (None, None) => {
                self.insert_item(item.clone());
                self.touched.insert(item.sku);
                effects.push(Effect::PutItem(item.clone()));
                Reply::Item(item)
            }
            (Some(state), Some(expected)) if state.item == expected => {
                let committed = state.held + state.sold;
                if item.stock_total < committed {
                    return Reply::Refused(Refusal::StockBelowCommitted { committed });
                }
                state.available = item.stock_total - committed;
                state.item = item.clone();
                state.publish();
                self.board.put(self.shard, item.clone(), state.live.clone());
                self.touched.insert(item.sku);
                effects.push(Effect::PutItem(item.clone()));
                Reply::Item(item)
            }
            _ => Reply::Refused(Refusal::ItemChanged),
        }
    }

    fn insert_item(&mut self, item: Item) {
        let state = SkuState::new(item);
        self.board
            .put(self.shard, state.item.clone(), state.live.clone());
        self.skus.insert(state.item.sku, state);
    }

    fn remember_key(
        &mut self,
        user: UserId,
        key: Arc<str>,
        fingerprint: u64,
        order: OrderId,
        at: Timestamp,
    ) {
        if let Some(entry) = self.keys.get_mut(&(user, key.clone())) {
            // Only after a key was forgotten (too many keys) and reused: the
            // newest order answers for it from now on.
            *entry = KeyEntry { fingerprint, order };
            return;
        }
        if self.keys.len() >= self.config.idempotency_keys_max {
            self.forget_oldest_key();
        }
        self.keys
            .insert((user, key.clone()), KeyEntry { fingerprint, order });
        self.keys_fifo.push_back((user, key, at));
    }

    fn forget_oldest_key(&mut self) {
        if let Some((user, key, _)) = self.keys_fifo.pop_front() {
            self.keys.remove(&(user, key));
        }
    }

    /// Expires lapsed holds and forgets idempotency keys past retention.
    pub fn tick(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        while let Some(&Reverse((at, id))) = self.expiry.peek() {
            if at > now {
                break;
            }
            self.expiry.pop();
            let Some(o) = self.orders.get(&id) else {
                continue;
            };
            if o.status == OrderStatus::AwaitingPayment && o.expires_at == Some(at) {
                self.end_hold(id, OrderStatus::Expired, now, effects);
            } else if balance_deadline_paid(o) == Some(at) {
                // A paid deposit at its balance window's end: kept if the
                // balance is paid, else forfeited (an open balance lapses).
                if !self.balance_paid(id) {
                    if let Some(b) = self.balances.get(&id).copied() {
                        self.end_hold(b, OrderStatus::Expired, now, effects);
                    }
                    self.end_hold(id, OrderStatus::Forfeited, now, effects);
                }
            }
        }
        let horizon = now.plus_ms(-self.config.idempotency_retention_ms);
        while self
            .keys_fifo
            .front()
            .is_some_and(|(_, _, at)| *at < horizon)
        {
            self.forget_oldest_key();
        }
    }

    /// Asserts conservation for every SKU changed since the last check.
    pub fn check_touched(&mut self) {
        for sku in self.touched.drain() {
            let s = &self.skus[&sku];
            let total = u64::from(s.available) + u64::from(s.held) + u64::from(s.sold);
            assert_eq!(
                total,
                u64::from(s.item.stock_total),
                "conservation broken for SKU {sku}"
            );
        }
        assert!(self.keys.len() <= self.config.idempotency_keys_max);
        assert_eq!(self.keys.len(), self.keys_fifo.len());
        self.check_coupons();
    }
    /// Recounts everything and checks every invariant; a failure says
    /// which one broke, and where.
    pub fn audit(&self) -> Result<(), mall_core::AuditFailure> {
        self.find_faults().map_err(mall_core::AuditFailure)
    }

    /// Recounts everything from the active orders and compares with the
    /// counters. Costs a pass over all orders: for tests and audits.
    fn find_faults(&self) -> Result<(), String> {
        let mut held: FxHashMap<Sku, u32> = FxHashMap::default();
        let mut sold: FxHashMap<Sku, u32> = FxHashMap::default();
        let mut per_user: FxHashMap<(UserId, Sku), u32> = FxHashMap::default();
        for o in self.orders.values() {
            if !o.status.is_active() {
                return Err(format!(
                    "order {} is {} but still in memory",
                    o.id,
                    o.status.as_str()
                ));
            }
            if let Some(OrderPreSale::Balance { deposit }) = o.presale {
                let d = self.orders.get(&deposit);
                if !d.is_some_and(|d| d.status.is_sold())
                    || self.balances.get(&deposit) != Some(&o.id)
                {
                    return Err(format!(
                        "balance order {} is active without its paid deposit {deposit}",
                        o.id
                    ));
                }
                continue;
            }
            let bucket = if o.status.is_sold() {
                &mut sold
            } else {
                &mut held
            };
            *bucket.entry(o.sku).or_default() += o.quantity.get();
            *per_user.entry((o.user, o.sku)).or_default() += o.quantity.get();
        }
        for (sku, s) in &self.skus {
            let (h, so) = (
                held.get(sku).copied().unwrap_or(0),
                sold.get(sku).copied().unwrap_or(0),
            );
            if s.held != h || s.sold != so {
                return Err(format!(
                    "SKU {sku}: counters held={} sold={} but orders say held={h} sold={so}",
                    s.held, s.sold
                ));
            }
            if u64::from(s.available) + u64::from(h) + u64::from(so)
                != u64::from(s.item.stock_total)
            {
                return Err(format!(
                    "SKU {sku}: available {} + held {h} + sold {so} != stock {}",
                    s.available, s.item.stock_total
                ));
            }
            if s.live.load() != (s.available, s.held, s.sold) {
                return Err(format!("SKU {sku}: published counters are stale"));
            }
        }
        if per_user != self.per_user {
            return Err("per-user counts disagree with the orders".into());
        }
        self.coupon_faults()
    }
}

/// An order leaves memory in `status` (not active), durably.
fn finish(
    mut order: Order,
    status: OrderStatus,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) -> Order {
    order.expires_at = None;
    set_status(&mut order, status, now, effects);
    order
}

/// An order's status changes, durably.
fn set_status(order: &mut Order, status: OrderStatus, now: Timestamp, effects: &mut Vec<Effect>) {
    order.status = status;
    order.updated_at = now;
    effects.push(Effect::UpdateOrder {
        id: order.id,
        status,
        updated_at: now,
    });
}

/// When a paid pre-sale deposit's balance window ends.
fn balance_deadline_paid(order: &Order) -> Option<Timestamp> {
    match order.presale {
        Some(OrderPreSale::Deposit {
            balance_closes_at, ..
        }) if order.status == OrderStatus::Paid => Some(balance_closes_at),
        _ => None,
    }
}

/// An active order moves to `status`, durably: the reply for it.
fn move_on(
    order: &mut Order,
    status: OrderStatus,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) -> Reply {
    set_status(order, status, now, effects);
    Reply::Order {
        order: order.clone(),
        replayed: false,
    }
}

impl mall_shard::StateMachine for Inventory {
    type Command = Command;
    type Reply = Reply;
    type Effect = Effect;

    fn apply(&mut self, command: Command, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        Inventory::apply(self, command, now, effects)
    }

    /// Every reply is named here, no wildcard: a new kind of reply must
    /// be decided (a success waits for its commit; a refusal claims nothing).
    fn needs_commit(reply: &Reply) -> bool {
        match reply {
            Reply::Order { .. }
            | Reply::StoredOrder(_)
            | Reply::Item(_)
            | Reply::Coupon(_)
            | Reply::Claim { .. }
            | Reply::Claims { .. }
            | Reply::Coupons(_)
            | Reply::PreSale { .. }
            | Reply::Inactive(_) => true,
            Reply::Refused(_) | Reply::Unavailable => false,
        }
    }

    fn tick(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        Inventory::tick(self, now, effects)
    }

    fn check_invariants(&mut self) {
        self.check_touched()
    }

    fn unavailable() -> Reply {
        Reply::Unavailable
    }
}
