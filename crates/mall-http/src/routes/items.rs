//! Items: browsing (from the board, no queueing) and admin create/update
//! (through the owning shard, durable before the reply).

use super::{blocking, check_text, idempotency, parse_id, QueryOf, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use mall_core::{
    Category, Fen, Item, MerchantId, SalePrice, Sku, Timestamp, PER_USER_LIMIT_MAX, PRICE_MAX_FEN,
    STOCK_MAX,
};
use mall_inventory::{BoardEntry, Command, Reply};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const PAGE_MAX: usize = 500;

#[derive(Serialize, ToSchema)]
pub struct ItemView {
    pub sku: u64,
    pub merchant_id: u64,
    pub title: String,
    pub category: String,
    /// The list price of one unit.
    pub price_fen: i64,
    /// What one unit costs now: the sale price inside a sale window, else
    /// the list price.
    pub price_now_fen: i64,
    /// Sale prices by window.
    pub sale_prices: Vec<SalePriceBody>,
    /// No discount takes one unit below this.
    pub floor_price_fen: i64,
    pub stock_total: u32,
    pub per_user_limit: u32,
    pub opens_at_ms: i64,
    pub closes_at_ms: i64,
    pub shelf_life_hours: Option<u32>,
    /// Sold as a pre-sale: a deposit in the sale window, the balance later.
    pub presale: Option<PreSaleBody>,
    /// Live counters: `available + held + sold = stock_total`.
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    /// `upcoming`, `open` or `closed`.
    pub sale: String,
    /// How many shoppers favourite it (the night's demand signal).
    pub favorites: u64,
}

impl ItemView {
    pub fn new(entry: &BoardEntry, now: Timestamp, favorites: u64) -> ItemView {
        let i = &entry.item;
        let (available, held, sold) = entry.live.load();
        let sale = if now < i.opens_at {
            "upcoming"
        } else if now < i.closes_at {
            "open"
        } else {
            "closed"
        };
        ItemView {
            sku: i.sku.0,
            merchant_id: i.merchant.0,
            title: i.title.clone(),
            category: i.category.as_str().into(),
            price_fen: i.price_fen.0,
            price_now_fen: i.price_at(now).0,
            sale_prices: i.sale_prices.iter().map(SalePriceBody::from).collect(),
            floor_price_fen: i.floor_price_fen.0,
            stock_total: i.stock_total,
            per_user_limit: i.per_user_limit,
            opens_at_ms: i.opens_at.0,
            closes_at_ms: i.closes_at.0,
            shelf_life_hours: i.shelf_life_hours,
            presale: i.presale.as_ref().map(PreSaleBody::from),
            available,
            held,
            sold,
            sale: sale.into(),
            favorites,
        }
    }
}

/// A pre-sale's terms, per unit. The item's sale window is the deposit
/// window; a deposit holds a unit until the balance is paid in
/// `[balance_opens_at_ms, balance_closes_at_ms)`, or the deposit is
/// forfeited to the merchant. The final price is the item's price at the
/// balance window's opening; the balance is that less `worth_fen`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct PreSaleBody {
    /// What the shopper pays first (1 to 100,000,000).
    pub deposit_fen: i64,
    /// What the deposit counts for against the final price (at least the deposit).
    pub worth_fen: i64,
    /// Not before the sale (deposit) window closes.
    pub balance_opens_at_ms: i64,
    pub balance_closes_at_ms: i64,
}

impl From<&mall_core::PreSale> for PreSaleBody {
    fn from(p: &mall_core::PreSale) -> PreSaleBody {
        PreSaleBody {
            deposit_fen: p.deposit_fen.0,
            worth_fen: p.worth_fen.0,
            balance_opens_at_ms: p.balance_opens_at.0,
            balance_closes_at_ms: p.balance_closes_at.0,
        }
    }
}

impl PreSaleBody {
    fn terms(&self) -> ApiResult<mall_core::PreSale> {
        in_range(self.deposit_fen, "presale.deposit_fen", 1, PRICE_MAX_FEN)?;
        in_range(self.worth_fen, "presale.worth_fen", 1, PRICE_MAX_FEN)?;
        in_range(
            self.balance_opens_at_ms,
            "presale.balance_opens_at_ms",
            0,
            i64::MAX / 2,
        )?;
        in_range(
            self.balance_closes_at_ms,
            "presale.balance_closes_at_ms",
            0,
            i64::MAX / 2,
        )?;
        Ok(mall_core::PreSale {
            deposit_fen: Fen(self.deposit_fen),
            worth_fen: Fen(self.worth_fen),
            balance_opens_at: Timestamp(self.balance_opens_at_ms),
            balance_closes_at: Timestamp(self.balance_closes_at_ms),
        })
    }
}

/// A sale price and its window `[opens_at_ms, closes_at_ms)`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct SalePriceBody {
    pub opens_at_ms: i64,
    pub closes_at_ms: i64,
    /// From the floor price to the list price.
    pub price_fen: i64,
}

impl From<&SalePrice> for SalePriceBody {
    fn from(w: &SalePrice) -> SalePriceBody {
        SalePriceBody {
            opens_at_ms: w.opens_at.0,
            closes_at_ms: w.closes_at.0,
            price_fen: w.price_fen.0,
        }
    }
}

impl From<SalePriceBody> for SalePrice {
    fn from(w: SalePriceBody) -> SalePrice {
        SalePrice {
            opens_at: Timestamp(w.opens_at_ms),
            closes_at: Timestamp(w.closes_at_ms),
            price_fen: Fen(w.price_fen),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ItemsPage {
    pub items: Vec<ItemView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this category.
    pub category: Option<String>,
    /// Items with a SKU greater than this.
    pub after: Option<u64>,
    /// 1 to 500; default 100.
    pub limit: Option<usize>,
}

/// Browse items, in SKU order.
#[utoipa::path(get, path = "/v1/items", params(ListQuery), tag = "items",
    responses((status = 200, body = ItemsPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    QueryOf(q): QueryOf<ListQuery>,
) -> ApiResult<Json<ItemsPage>> {
    let category = match q.category.as_deref() {
        None => None,
        Some(c) => Some(Category::parse(c).ok_or_else(|| {
            let all: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
            ApiError::bad_request(
                "invalid_query",
                format!("unknown category {c:?}; one of {}", all.join(", ")),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {PAGE_MAX}"),
        ));
    }
    let now = state.now();
    let entries = state
        .engine
        .board()
        .list(q.after.map(Sku), category, limit + 1);
    let more = entries.len() > limit;
    let items: Vec<ItemView> = entries
        .iter()
        .take(limit)
        .map(|e| ItemView::new(e, now, state.wishlists.favorites_of(e.item.sku)))
        .collect();
    let next_after = if more {
        items.last().map(|i| i.sku)
    } else {
        None
    };
    Ok(Json(ItemsPage { items, next_after }))
}

/// One item with its live stock and sale window.
#[utoipa::path(get, path = "/v1/items/{sku}", tag = "items",
    params(("sku" = u64, Path, description = "SKU")),
    responses((status = 200, body = ItemView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Segment(raw): Segment,
) -> ApiResult<Json<ItemView>> {
    let sku = Sku(parse_id(&raw, "sku")?);
    let entry = state
        .engine
        .board()
        .get(sku)
        .ok_or_else(|| ApiError::from_refusal(&mall_core::Refusal::UnknownItem))?;
    let mut view = mall_events::Event::new(state.now().0, mall_events::Kind::View);
    view.sku = sku.0;
    state.record(view);
    Ok(Json(ItemView::new(
        &entry,
        state.now(),
        state.wishlists.favorites_of(entry.item.sku),
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateItem {
    pub merchant_id: u64,
    pub title: String,
    /// fresh, appliances, clothing, books, electronics, beauty, home, toys.
    pub category: String,
    /// List price of one unit in fen (1 to 100,000,000).
    pub price_fen: i64,
    /// Sale prices by window (at most 16, in order, not overlapping), each
    /// from the floor to the list price.
    #[serde(default)]
    pub sale_prices: Vec<SalePriceBody>,
    /// No discount takes one unit below this (0 to the list price;
    /// default 1 fen).
    pub floor_price_fen: Option<i64>,
    /// Flash-sale stock (0 to 100,000,000).
    pub stock: i64,
    /// Default 1.
    pub per_user_limit: Option<i64>,
    pub opens_at_ms: i64,
    pub closes_at_ms: i64,
    /// Fresh goods only: hours they keep (1 to 8,760).
    pub shelf_life_hours: Option<i64>,
    /// Sell it as a pre-sale (online payment only; not in cart checkouts).
    pub presale: Option<PreSaleBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItem {
    pub title: Option<String>,
    pub price_fen: Option<i64>,
    /// Replaces every sale price (`[]` removes them).
    pub sale_prices: Option<Vec<SalePriceBody>>,
    pub floor_price_fen: Option<i64>,
    /// New stock total; may not go below units held or sold.
    pub stock: Option<i64>,
    pub per_user_limit: Option<i64>,
    pub opens_at_ms: Option<i64>,
    pub closes_at_ms: Option<i64>,
}

pub(crate) fn in_range(value: i64, field: &str, min: i64, max: i64) -> ApiResult<i64> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!("{field} must be {min} to {max}")))
    }
}

/// Checks an item as a whole before it goes to the engine.
pub fn validate_item(item: &Item) -> ApiResult<()> {
    check_text(&item.title, "title", 1, 200)?;
    in_range(item.price_fen.0, "price_fen", 1, PRICE_MAX_FEN)?;
    item.check_prices().map_err(ApiError::invalid)?;
    in_range(
        i64::from(item.stock_total),
        "stock",
        0,
        i64::from(STOCK_MAX),
    )?;
    in_range(
        i64::from(item.per_user_limit),
        "per_user_limit",
        1,
        i64::from(PER_USER_LIMIT_MAX),
    )?;
    if item.opens_at.0 < 0 || item.opens_at >= item.closes_at {
        return Err(ApiError::invalid(
            "opens_at_ms must be before closes_at_ms (and not negative)",
        ));
    }
    match (item.category, item.shelf_life_hours) {
        (Category::Fresh, None) => Err(ApiError::invalid("fresh items need shelf_life_hours")),
        (Category::Fresh, Some(h)) => {
            in_range(i64::from(h), "shelf_life_hours", 1, 8_760).map(|_| ())
        }
        (_, Some(_)) => Err(ApiError::invalid("only fresh items take shelf_life_hours")),
        (_, None) => Ok(()),
    }
}

async fn put(state: &AppState, item: Item, expected: Option<Item>) -> ApiResult<ItemView> {
    let rx = state
        .engine
        .try_submit_for_sku(item.sku, Command::PutItem { item, expected })
        .map_err(|_| ApiError::overloaded())?;
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Item(item) => {
            // On a cluster the item's shard may run on another node, whose
            // board reaches this one a moment later: answer from the reply.
            let entry = match state.engine.board().get(item.sku) {
                Some(entry) if entry.item == item => entry,
                known => {
                    let live = mall_inventory::Live::default();
                    let (_, held, sold) = known.map_or((0, 0, 0), |e| e.live.load());
                    let committed = held + sold;
                    live.store(item.stock_total.saturating_sub(committed), held, sold);
                    std::sync::Arc::new(mall_inventory::BoardEntry {
                        shard: state.engine.shard_of_sku(item.sku),
                        item,
                        live: std::sync::Arc::new(live),
                    })
                }
            };
            Ok(ItemView::new(
                &entry,
                state.now(),
                state.wishlists.favorites_of(entry.item.sku),
            ))
        }
        Reply::Refused(r) => Err(ApiError::from_refusal(&r)),
        _ => Err(ApiError::unavailable()),
    }
}

/// The SKU for a new item (see `ids`).
async fn next_sku(state: &AppState) -> ApiResult<Sku> {
    let above = state.engine.board().max_sku().map_or(1, |s| s.0 + 1);
    Ok(Sku(state.skus.next(state, above).await?))
}

/// Admin: create an item (a SKU is assigned).
#[utoipa::path(post, path = "/v1/admin/items", request_body = CreateItem, tag = "admin",
    security(("bearer" = [])),
    responses((status = 201, body = ItemView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "merchant_not_found", body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<CreateItem>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let category = Category::parse(&body.category)
        .ok_or_else(|| ApiError::invalid(format!("unknown category {:?}", body.category)))?;
    let stock = in_range(body.stock, "stock", 0, i64::from(STOCK_MAX))? as u32;
    let limit = in_range(
        body.per_user_limit.unwrap_or(1),
        "per_user_limit",
        1,
        i64::from(PER_USER_LIMIT_MAX),
    )? as u32;
    let shelf = body
        .shelf_life_hours
        .map(|h| in_range(h, "shelf_life_hours", 1, 8_760))
        .transpose()?
        .map(|h| h as u32);
    let mut item = Item {
        sku: Sku(0),
        merchant: MerchantId(body.merchant_id),
        title: body.title.clone(),
        category,
        price_fen: Fen(body.price_fen),
        stock_total: stock,
        per_user_limit: limit,
        opens_at: Timestamp(body.opens_at_ms),
        closes_at: Timestamp(body.closes_at_ms),
        shelf_life_hours: shelf,
        presale: body.presale.as_ref().map(PreSaleBody::terms).transpose()?,
        sale_prices: body.sale_prices.iter().map(|&w| w.into()).collect(),
        floor_price_fen: Fen(body.floor_price_fen.unwrap_or(1)),
    };
    validate_item(&item)?;
    let accounts = state.accounts.clone();
    let merchants = blocking(&state, move || accounts.merchants())
        .await
        .map_err(|e| ApiError::store("merchants", e))?;
    if !merchants.iter().any(|m| m.id == item.merchant) {
        return Err(ApiError::not_found(
            "merchant_not_found",
            "no such merchant",
        ));
    }
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[
        b"item",
        &body.merchant_id.to_le_bytes(),
        body.title.as_bytes(),
        category.as_str().as_bytes(),
        &body.price_fen.to_le_bytes(),
        &stock.to_le_bytes(),
        &limit.to_le_bytes(),
        &body.opens_at_ms.to_le_bytes(),
        &body.closes_at_ms.to_le_bytes(),
        &shelf.unwrap_or(0).to_le_bytes(),
        &item.floor_price_fen.0.to_le_bytes(),
        &sale_fingerprint(&item.sale_prices).to_le_bytes(),
        mall_core::PreSale::encode(item.presale.as_ref()).as_bytes(),
    ]);
    Ok(idempotency::run(
        &state,
        principal.user,
        key,
        fp,
        idempotency::keep,
        || async {
            // On a cluster another node may have handed out the same SKU
            // (it knew fewer items when it started): skip past every item
            // known, and past a taken SKU, a few times.
            let mut tries = 0;
            loop {
                item.sku = next_sku(&state).await?;
                match put(&state, item.clone(), None).await {
                    Err(e) if e.code == "item_changed" && tries < 8 => tries += 1,
                    answer => break super::json_answer(StatusCode::CREATED, &answer?),
                }
            }
        },
    )
    .await)
}

/// Admin: change an item's title, price, stock, limit or sale window.
#[utoipa::path(patch, path = "/v1/admin/items/{sku}", request_body = UpdateItem, tag = "admin",
    security(("bearer" = [])), params(("sku" = u64, Path, description = "SKU")),
    responses((status = 200, body = ItemView), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "stock_below_committed", body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
    StrictJson(body): StrictJson<UpdateItem>,
) -> ApiResult<Json<ItemView>> {
    principal.require_admin()?;
    let sku = Sku(parse_id(&raw, "sku")?);
    // Read, change, compare-and-swap: a concurrent edit makes the swap
    // fail, and the change is made again on the newer item.
    for _ in 0..ITEM_CAS_TRIES {
        let entry = state
            .engine
            .board()
            .get(sku)
            .ok_or_else(|| ApiError::from_refusal(&mall_core::Refusal::UnknownItem))?;
        let item = changed(&entry.item, &body)?;
        match put(&state, item, Some(entry.item.clone())).await {
            Err(e) if e.code == "item_changed" => continue,
            other => return other.map(Json),
        }
    }
    Err(ApiError::conflict(
        "item_changed",
        "the item kept changing; try again",
    ))
}

/// The sale prices as one number of the create's fingerprint.
fn sale_fingerprint(windows: &[SalePrice]) -> u64 {
    let bytes: Vec<u8> = windows
        .iter()
        .flat_map(|w| [w.opens_at.0, w.closes_at.0, w.price_fen.0])
        .flat_map(i64::to_le_bytes)
        .collect();
    mall_core::fingerprint(&[&bytes])
}

/// Attempts of a PATCH against concurrent edits.
const ITEM_CAS_TRIES: usize = 5;

/// `current` with the PATCH's fields applied, validated.
fn changed(current: &Item, body: &UpdateItem) -> ApiResult<Item> {
    let mut item = current.clone();
    if let Some(t) = &body.title {
        item.title = t.clone();
    }
    if let Some(p) = body.price_fen {
        item.price_fen = Fen(p);
    }
    if let Some(w) = &body.sale_prices {
        item.sale_prices = w.iter().map(|&w| w.into()).collect();
    }
    if let Some(f) = body.floor_price_fen {
        item.floor_price_fen = Fen(f);
    }
    if let Some(s) = body.stock {
        item.stock_total = in_range(s, "stock", 0, i64::from(STOCK_MAX))? as u32;
    }
    if let Some(l) = body.per_user_limit {
        item.per_user_limit =
            in_range(l, "per_user_limit", 1, i64::from(PER_USER_LIMIT_MAX))? as u32;
    }
    if let Some(o) = body.opens_at_ms {
        item.opens_at = Timestamp(o);
    }
    if let Some(c) = body.closes_at_ms {
        item.closes_at = Timestamp(c);
    }
    validate_item(&item)?;
    Ok(item)
}
