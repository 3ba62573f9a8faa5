//! Domain types shared by every mall crate.
//!
//! Everything here is plain data that cannot be invalid once constructed:
//! ids are newtypes, money is integer fen, quantities are bounded. Parsing
//! from the wire happens in the HTTP crate, which turns input into these
//! types or a clear error.

pub mod outcome;
pub mod rng;
pub mod seeds;

pub use outcome::Refusal;

/// An audit found a broken invariant; the message says which, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditFailure(pub String);

impl std::fmt::Display for AuditFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuditFailure {}

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Milliseconds since the Unix epoch (UTC). Time is always passed in, never
/// read inside a state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A stock-keeping unit: one flash-sale item.
    Sku
);
id_type!(
    /// An account: shopper, merchant or admin.
    UserId
);
id_type!(
    /// A merchant selling items.
    MerchantId
);
id_type!(
    /// An order. The low [`OrderId::SHARD_BITS`] bits name the shard that owns it.
    OrderId
);
id_type!(
    /// A coupon: a limited number of claims, decided on the shard
    /// `id % shards` like a SKU's stock.
    CouponId
);
id_type!(
    /// A shopper's claim of a coupon. Like an order id, its low
    /// [`OrderId::SHARD_BITS`] bits name the shard that owns it.
    ClaimId
);

impl ClaimId {
    pub fn new(shard: usize, seq: u64) -> ClaimId {
        ClaimId(OrderId::new(shard, seq).0)
    }

    pub fn shard(self) -> usize {
        OrderId(self.0).shard()
    }

    pub fn seq(self) -> u64 {
        OrderId(self.0).seq()
    }
}

impl OrderId {
    /// Bits of an order id that hold the owning shard's index.
    pub const SHARD_BITS: u32 = 8;
    /// Most shards an order id can name.
    pub const SHARDS_MAX: usize = 1 << Self::SHARD_BITS;

    pub fn new(shard: usize, seq: u64) -> OrderId {
        assert!(shard < Self::SHARDS_MAX);
        assert!(
            seq < (1 << (53 - Self::SHARD_BITS)),
            "order id must stay exact in JSON"
        );
        OrderId((seq << Self::SHARD_BITS) | shard as u64)
    }

    pub fn shard(self) -> usize {
        (self.0 & (Self::SHARDS_MAX as u64 - 1)) as usize
    }

    pub fn seq(self) -> u64 {
        self.0 >> Self::SHARD_BITS
    }
}

/// Most units one order may take.
pub const QUANTITY_MAX: u32 = 1_000;

/// A number of units in one order: `1..=QUANTITY_MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(#[serde(deserialize_with = "quantity_in_range")] u32);

/// A quantity from the wire is checked like any other.
fn quantity_in_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    Quantity::new(n)
        .map(Quantity::get)
        .ok_or_else(|| serde::de::Error::custom(format!("quantity {n} out of 1..={QUANTITY_MAX}")))
}

impl Quantity {
    pub fn new(n: u32) -> Option<Quantity> {
        (1..=QUANTITY_MAX).contains(&n).then_some(Quantity(n))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Money in fen (1 yuan = 100 fen). Never a float.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Fen(pub i64);

impl Fen {
    /// One fen: the default floor, so no unit is ever free.
    pub fn one() -> Fen {
        Fen(1)
    }
}

/// Highest price of one unit: ¥1,000,000.
pub const PRICE_MAX_FEN: i64 = 100_000_000;
/// Most units of flash-sale stock one item may carry.
pub const STOCK_MAX: u32 = 100_000_000;
/// Highest per-user purchase limit.
pub const PER_USER_LIMIT_MAX: u32 = QUANTITY_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Fresh,
    Appliances,
    Clothing,
    Books,
    Electronics,
    Beauty,
    Home,
    Toys,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Fresh,
        Category::Appliances,
        Category::Clothing,
        Category::Books,
        Category::Electronics,
        Category::Beauty,
        Category::Home,
        Category::Toys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Fresh => "fresh",
            Category::Appliances => "appliances",
            Category::Clothing => "clothing",
            Category::Books => "books",
            Category::Electronics => "electronics",
            Category::Beauty => "beauty",
            Category::Home => "home",
            Category::Toys => "toys",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// Paid online after the snap-up; the stock is held until then.
    Online,
    /// Cash on delivery: the stock counts as sold at once.
    Cod,
}

impl PaymentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Online => "online",
            PaymentMethod::Cod => "cod",
        }
    }
    pub fn parse(s: &str) -> Option<PaymentMethod> {
        match s {
            "online" => Some(PaymentMethod::Online),
            "cod" => Some(PaymentMethod::Cod),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Online order whose stock is held until payment or expiry.
    AwaitingPayment,
    /// Online order paid: stock sold.
    Paid,
    /// Cash-on-delivery order: stock sold, money collected on delivery.
    Confirmed,
    /// Cancelled by the shopper or an admin: stock returned.
    Cancelled,
    /// Hold expired unpaid: stock returned.
    Expired,
    /// Handed to the shopper (a paid order delivered, or a cash-on-delivery
    /// order whose cash was collected). Stock stays sold for good: money
    /// goes back only by an after-sale refund, never by a cancel.
    Delivered,
    /// A pre-sale deposit whose balance was not paid in its window, or
    /// that its shopper cancelled: stock returned, the deposit goes to
    /// the merchant.
    Forfeited,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::AwaitingPayment,
        OrderStatus::Paid,
        OrderStatus::Confirmed,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Delivered,
        OrderStatus::Forfeited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Forfeited => "forfeited",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Does an order in this status hold stock (as held or sold)?
    pub fn is_active(self) -> bool {
        matches!(
            self,
            OrderStatus::AwaitingPayment
                | OrderStatus::Paid
                | OrderStatus::Confirmed
                | OrderStatus::Delivered
        )
    }

    /// Does an order in this status count as sold?
    pub fn is_sold(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid | OrderStatus::Confirmed | OrderStatus::Delivered
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Shopper,
    Merchant,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Shopper => "shopper",
            Role::Merchant => "merchant",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "shopper" => Some(Role::Shopper),
            "merchant" => Some(Role::Merchant),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A flash-sale item as the inventory engine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: Sku,
    pub merchant: MerchantId,
    pub title: String,
    pub category: Category,
    /// The list price of one unit.
    pub price_fen: Fen,
    /// Sale prices by window: inside `[opens_at, closes_at)` of one, a unit
    /// costs its `price_fen`. Windows never overlap; outside them the list
    /// price holds.
    #[serde(default)]
    pub sale_prices: Vec<SalePrice>,
    /// No discount takes one unit below this (a sale price, a promotion, a
    /// coupon): the merchant's floor.
    #[serde(default = "Fen::one")]
    pub floor_price_fen: Fen,
    /// Units of flash-sale stock in all: available + held + sold.
    pub stock_total: u32,
    /// Most units one shopper may hold or buy (active orders).
    pub per_user_limit: u32,
    /// The sale window: orders accepted in `[opens_at, closes_at)`.
    pub opens_at: Timestamp,
    pub closes_at: Timestamp,
    /// Fresh goods: hours they keep.
    pub shelf_life_hours: Option<u32>,
    /// Sold as a pre-sale: a deposit in the sale window, the balance later.
    #[serde(default)]
    pub presale: Option<PreSale>,
}

/// The terms of a pre-sale item, per unit. Its sale window
/// (`opens_at..closes_at`) is the deposit window; a deposit holds a unit,
/// on the engine, until the balance is paid or its window ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreSale {
    /// What the shopper pays first.
    pub deposit_fen: Fen,
    /// What the deposit counts for against the final price (at least the
    /// deposit: "pay 100, worth 150").
    pub worth_fen: Fen,
    /// The balance is paid in `[balance_opens_at, balance_closes_at)`;
    /// unpaid at its end, the deposit is forfeited.
    pub balance_opens_at: Timestamp,
    pub balance_closes_at: Timestamp,
}

impl PreSale {
    /// As both stores keep it: `deposit:worth:opens:closes` (empty: none).
    pub fn encode(terms: Option<&PreSale>) -> String {
        terms.map_or(String::new(), |t| {
            format!(
                "{}:{}:{}:{}",
                t.deposit_fen.0, t.worth_fen.0, t.balance_opens_at.0, t.balance_closes_at.0
            )
        })
    }

    /// The reverse of [`PreSale::encode`]; `Err` if it is not that.
    pub fn decode(text: &str) -> Result<Option<PreSale>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        let n: Vec<i64> = text
            .split(':')
            .map(|n| n.parse::<i64>().map_err(|_| format!("pre-sale {text:?}")))
            .collect::<Result<_, _>>()?;
        match n[..] {
            [d, w, o, c] => Ok(Some(PreSale {
                deposit_fen: Fen(d),
                worth_fen: Fen(w),
                balance_opens_at: Timestamp(o),
                balance_closes_at: Timestamp(c),
            })),
            _ => Err(format!("pre-sale {text:?}")),
        }
    }
}

/// An order's part in a pre-sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderPreSale {
    /// The deposit: this order holds the units (its amount is the
    /// deposit). Its balance order costs `balance_fen`, payable in the
    /// window; unpaid at its end, this order is forfeited.
    Deposit {
        balance_fen: Fen,
        balance_opens_at: Timestamp,
        balance_closes_at: Timestamp,
    },
    /// The balance of the deposit order `deposit`: it holds no stock of
    /// its own (the deposit's units are the goods), only money.
    Balance { deposit: OrderId },
}

impl OrderPreSale {
    /// As both stores keep it: `d:balance:opens:closes` or `b:deposit`
    /// (empty: none).
    pub fn encode(p: Option<&OrderPreSale>) -> String {
        match p {
            None => String::new(),
            Some(OrderPreSale::Deposit {
                balance_fen,
                balance_opens_at,
                balance_closes_at,
            }) => format!(
                "d:{}:{}:{}",
                balance_fen.0, balance_opens_at.0, balance_closes_at.0
            ),
            Some(OrderPreSale::Balance { deposit }) => format!("b:{}", deposit.0),
        }
    }

    /// The reverse of [`OrderPreSale::encode`]; `Err` if it is not that.
    pub fn decode(text: &str) -> Result<Option<OrderPreSale>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        let mut parts = text.split(':');
        let bad = || format!("order pre-sale {text:?}");
        let kind = parts.next().ok_or_else(bad)?;
        let n: Vec<i64> = parts
            .map(|n| n.parse::<i64>().map_err(|_| format!("pre-sale {text:?}")))
            .collect::<Result<_, _>>()?;
        match (kind, &n[..]) {
            ("d", [b, o, c]) => Ok(Some(OrderPreSale::Deposit {
                balance_fen: Fen(*b),
                balance_opens_at: Timestamp(*o),
                balance_closes_at: Timestamp(*c),
            })),
            ("b", [d]) => Ok(Some(OrderPreSale::Balance {
                deposit: OrderId(u64::try_from(*d).map_err(|_| bad())?),
            })),
            _ => Err(bad()),
        }
    }
}

/// A sale price and its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalePrice {
    pub opens_at: Timestamp,
    pub closes_at: Timestamp,
    pub price_fen: Fen,
}

impl SalePrice {
    /// Windows as stored by both stores: `opens:closes:price` joined by
    /// `;` (empty: none).
    pub fn encode_all(windows: &[SalePrice]) -> String {
        windows
            .iter()
            .map(|w| format!("{}:{}:{}", w.opens_at.0, w.closes_at.0, w.price_fen.0))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The reverse of [`SalePrice::encode_all`]; `None` if it is not that.
    pub fn decode_all(text: &str) -> Option<Vec<SalePrice>> {
        if text.is_empty() {
            return Some(Vec::new());
        }
        text.split(';')
            .map(|w| {
                let mut parts = w.split(':').map(|n| n.parse::<i64>().ok());
                let (o, c, p) = (parts.next()??, parts.next()??, parts.next()??);
                parts.next().is_none().then_some(SalePrice {
                    opens_at: Timestamp(o),
                    closes_at: Timestamp(c),
                    price_fen: Fen(p),
                })
            })
            .collect()
    }
}

/// Most sale windows one item may have.
pub const SALE_PRICES_MAX: usize = 16;

impl Item {
    /// The least one unit may cost after discounts: the floor price, at
    /// least 1 fen and at most the list price.
    pub fn floor_unit(&self) -> Fen {
        Fen(self.floor_price_fen.0.max(1).min(self.price_fen.0.max(1)))
    }

    /// The price of one unit at `now`: its sale window's price, or the list
    /// price outside every window (never below the floor).
    pub fn price_at(&self, now: Timestamp) -> Fen {
        self.sale_prices
            .iter()
            .find(|w| w.opens_at <= now && now < w.closes_at)
            .map_or(self.price_fen, |w| w.price_fen)
            .max(self.floor_price_fen.min(self.price_fen))
    }

    /// Why the item's prices cannot stand, if they cannot: windows in
    /// order, not overlapping, each price from the floor to the list price.
    pub fn check_prices(&self) -> Result<(), String> {
        if !(0..=self.price_fen.0).contains(&self.floor_price_fen.0) {
            return Err("floor_price_fen must be 0 to the list price".into());
        }
        if self.sale_prices.len() > SALE_PRICES_MAX {
            return Err(format!("at most {SALE_PRICES_MAX} sale prices"));
        }
        for (i, w) in self.sale_prices.iter().enumerate() {
            if w.opens_at >= w.closes_at {
                return Err(format!(
                    "sale_prices[{i}]: opens_at must be before closes_at"
                ));
            }
            if !(self.floor_price_fen.0.max(1)..=self.price_fen.0).contains(&w.price_fen.0) {
                return Err(format!(
                    "sale_prices[{i}]: price_fen must be from the floor ({}) to the list price ({})",
                    self.floor_price_fen.0.max(1),
                    self.price_fen.0
                ));
            }
            if i > 0 && self.sale_prices[i - 1].closes_at > w.opens_at {
                return Err(format!(
                    "sale_prices[{i}]: windows must be in order and must not overlap"
                ));
            }
        }
        if let Some(p) = &self.presale {
            if p.deposit_fen.0 < 1 {
                return Err("presale.deposit_fen must be at least 1".into());
            }
            if p.worth_fen < p.deposit_fen {
                return Err("presale.worth_fen must be at least the deposit".into());
            }
            if p.balance_opens_at < self.closes_at {
                return Err(
                    "presale.balance_opens_at must not come before the deposit window (the sale window) ends"
                        .into(),
                );
            }
            if p.balance_opens_at >= p.balance_closes_at {
                return Err("presale.balance_opens_at must be before balance_closes_at".into());
            }
            let final_price = self.price_at(p.balance_opens_at);
            if final_price.0 - p.worth_fen.0 < 1 {
                return Err(format!(
                    "presale.worth_fen must leave a balance of at least 1 fen of the final price ({})",
                    final_price.0
                ));
            }
        }
        Ok(())
    }

    /// A pre-sale deposit of `quantity` units made at `now`: what it costs
    /// now and what its balance will cost (the final price is the price at
    /// the balance window's opening, less what the deposit is worth).
    pub fn deposit_terms(&self, quantity: u32) -> Option<(Fen, OrderPreSale)> {
        let p = self.presale?;
        let q = i64::from(quantity);
        let final_price = self.price_at(p.balance_opens_at);
        Some((
            Fen(p.deposit_fen.0 * q),
            OrderPreSale::Deposit {
                balance_fen: Fen((final_price.0 - p.worth_fen.0) * q),
                balance_opens_at: p.balance_opens_at,
                balance_closes_at: p.balance_closes_at,
            },
        ))
    }
}

/// A coupon: who funds it, what it takes off (`spec`, JSON that pricing
/// reads), how many may be claimed and by whom, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub id: CouponId,
    /// The merchant that funds it (on its own items); `None`: the platform.
    pub merchant: Option<MerchantId>,
    pub title: String,
    pub spec: String,
    /// Claims in all: never more are issued.
    pub quantity: u32,
    /// Claims one shopper may make.
    pub per_user_limit: u32,
    /// Claims are taken in `[claim_opens_at, claim_closes_at)`.
    pub claim_opens_at: Timestamp,
    pub claim_closes_at: Timestamp,
    /// A claimed coupon may be used until this time.
    pub valid_until: Timestamp,
}

/// Where a claim stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStatus {
    /// Claimed, not used: it may go on an order.
    Claimed,
    /// On an order (`Claim::order`); back to `Claimed` if that order is
    /// cancelled before it is paid.
    Used,
}

impl ClaimStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimStatus::Claimed => "claimed",
            ClaimStatus::Used => "used",
        }
    }
    pub fn parse(s: &str) -> Option<ClaimStatus> {
        match s {
            "claimed" => Some(ClaimStatus::Claimed),
            "used" => Some(ClaimStatus::Used),
            _ => None,
        }
    }
}

/// A shopper's claim of a coupon, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub id: ClaimId,
    pub coupon: CouponId,
    pub user: UserId,
    pub status: ClaimStatus,
    /// The order it is used on (`Used` only).
    pub order: Option<OrderId>,
    pub idempotency_key: Option<Arc<str>>,
    pub request_fingerprint: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An order as recorded. `address` and `idempotency_key` are shared with the
/// engine's in-memory copy, so cloning an order is cheap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub sku: Sku,
    pub user: UserId,
    pub quantity: Quantity,
    /// The list price of one unit when the order was made.
    pub list_price_fen: Fen,
    /// The price of one unit paid: the sale price then, or the list price.
    pub unit_price_fen: Fen,
    pub amount_fen: Fen,
    pub payment: PaymentMethod,
    pub status: OrderStatus,
    pub address: Arc<str>,
    pub idempotency_key: Option<Arc<str>>,
    /// Fingerprint of the request that made the order, to tell a replay
    /// (same key, same request) from a reused key (same key, other request).
    pub request_fingerprint: u64,
    /// The item's per-user limit when the order was made (an admin may
    /// lower it later; audits judge each order by the limit it met).
    pub per_user_limit: u32,
    pub created_at: Timestamp,
    /// When an unpaid hold lapses; `None` once the order is no longer awaiting payment.
    pub expires_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Its part in a pre-sale, if it has one.
    #[serde(default)]
    pub presale: Option<OrderPreSale>,
}

impl Order {
    /// A pre-sale's balance order: money only, no stock of its own.
    pub fn is_balance(&self) -> bool {
        matches!(self.presale, Some(OrderPreSale::Balance { .. }))
    }

    /// The pre-sale deposit order this order belongs to (itself for a
    /// deposit), if it is part of a pre-sale.
    pub fn presale_deposit(&self) -> Option<OrderId> {
        match self.presale {
            Some(OrderPreSale::Deposit { .. }) => Some(self.id),
            Some(OrderPreSale::Balance { deposit }) => Some(deposit),
            None => None,
        }
    }
}

/// A stable 64-bit FNV-1a fingerprint of request fields. Stable across
/// builds and versions, because fingerprints are stored with orders.
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

// Relations between limits, checked when the code compiles.
const _: () = assert!(
    PER_USER_LIMIT_MAX <= QUANTITY_MAX,
    "a limit above the largest order is meaningless"
);
const _: () = assert!(
    (STOCK_MAX as u64) < u32::MAX as u64,
    "available + held + sold = stock fits the u32 counters"
);
const _: () = assert!(
    (PRICE_MAX_FEN as i128) * (QUANTITY_MAX as i128) < i64::MAX as i128,
    "an order's amount fits in i64"
);
const _: () = assert!(
    OrderId::SHARDS_MAX <= 256,
    "the shard index fits in an order id's low byte"
);
