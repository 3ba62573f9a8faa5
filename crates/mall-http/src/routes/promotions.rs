//! Promotions and quotes. A merchant creates promotions on its own items
//! (it funds them); an admin creates platform-wide ones (the platform
//! funds them) or any merchant's. A quote prices the cart, or given lines,
//! with every promotion running now, by the one pricing function
//! (`mall_pricing`): what a checkout will charge.
//!
//! Promotions live in the store (`promotions`) and in memory, reloaded
//! after each change here and every 2 s on a cluster.

use super::price::PriceBreakdown;
use super::{idempotency, parse_id, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use mall_core::{MerchantId, Sku, Timestamp, QUANTITY_MAX};
use mall_engine::{PromotionRow, ShopperList, StoreError};
use mall_pricing::{Funder, Line, Offer, OfferKind, Policy, Rule};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use utoipa::ToSchema;

/// Promotions running or to come, at most (a create beyond it is refused).
pub const PROMOTIONS_MAX: usize = 10_000;
/// Of them, one merchant's at most.
pub const PROMOTIONS_PER_MERCHANT_MAX: usize = 16;
/// Of them, the platform's at most.
pub const PLATFORM_PROMOTIONS_MAX: usize = 32;
/// SKUs one promotion may name, at most.
pub const PROMOTION_SKUS_MAX: usize = 100;
/// Exclusivity groups are numbered 1 to this.
pub const GROUP_MAX: u32 = 1_000;

/// What is stored as a promotion's or a coupon's `spec`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) rule: Rule,
    #[serde(default)]
    pub(crate) skus: Vec<Sku>,
    pub(crate) max_off_fen: Option<i64>,
    pub(crate) group: Option<u32>,
}

/// A limited promotion's quantity, at most.
pub const PROMOTION_QUANTITY_MAX: i64 = 10_000_000;

/// A promotion in memory.
#[derive(Clone, Debug)]
pub struct Promotion {
    pub row: PromotionRow,
    pub offer: Offer,
    /// Units of a limited promotion taken, as this node knows (the store
    /// decides; reloaded from it).
    pub used: Arc<std::sync::atomic::AtomicU64>,
}

impl Promotion {
    fn from_row(row: PromotionRow) -> Result<Promotion, StoreError> {
        let spec: Spec = serde_json::from_str(&row.spec)
            .map_err(|e| StoreError::Corrupt(format!("promotion {}: {e}", row.id)))?;
        let offer = Offer {
            id: row.id,
            kind: OfferKind::Promotion,
            funder: row.merchant.map_or(Funder::Platform, Funder::Merchant),
            rule: spec.rule,
            skus: spec.skus,
            max_off_fen: spec.max_off_fen,
            group: spec.group,
        };
        let used = Arc::new(std::sync::atomic::AtomicU64::new(row.used));
        Ok(Promotion { row, offer, used })
    }

    fn runs_at(&self, now: Timestamp) -> bool {
        self.row.starts_at <= now && now < self.row.ends_at
    }

    /// Units left of a limited promotion (`None`: no limit).
    pub fn remaining(&self) -> Option<u64> {
        let used = self.used.load(std::sync::atomic::Ordering::Relaxed);
        self.row.quantity.map(|q| q.saturating_sub(used))
    }
}

/// The promotions not yet over, as last read from the store.
#[derive(Default)]
pub struct Promotions(RwLock<Arc<Vec<Promotion>>>);

impl Promotions {
    /// Every promotion not yet over (running or to come).
    pub fn all(&self) -> Arc<Vec<Promotion>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The offers running at `now` (a limited one used up is not).
    pub fn offers_at(&self, now: Timestamp) -> Vec<Offer> {
        self.all()
            .iter()
            .filter(|p| p.runs_at(now) && p.remaining() != Some(0))
            .map(|p| p.offer.clone())
            .collect()
    }

    /// Of these promotion ids, the limited ones.
    pub fn limited(&self, ids: impl Iterator<Item = u64>) -> Vec<u64> {
        let all = self.all();
        ids.filter(|id| {
            all.iter()
                .any(|p| p.row.id == *id && p.row.quantity.is_some())
        })
        .collect()
    }

    /// Notes that a limited promotion is used up (the store said so).
    pub fn used_up(&self, id: u64) {
        let all = self.all();
        for p in all.iter().filter(|p| p.row.id == id) {
            if let Some(q) = p.row.quantity {
                p.used.fetch_max(q, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Notes units of limited promotions taken (`+1` each) or given back.
    pub fn note_used(&self, ids: &[u64], taken: bool) {
        let all = self.all();
        for p in all.iter().filter(|p| ids.contains(&p.row.id)) {
            if taken {
                p.used.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                let _ = p.used.fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |u| Some(u.saturating_sub(1)),
                );
            }
        }
    }

    fn set(&self, rows: Vec<PromotionRow>) -> Result<(), StoreError> {
        let all = rows
            .into_iter()
            .map(Promotion::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
        Ok(())
    }
}

/// Reads the promotions again from the store.
pub async fn reload(state: &AppState) -> ApiResult<()> {
    let (accounts, now) = (state.accounts.clone(), state.now());
    let rows = super::blocking(state, move || accounts.promotions(now))
        .await
        .map_err(|e| ApiError::store("reading promotions", e))?;
    state
        .promotions
        .set(rows)
        .map_err(|e| ApiError::internal("promotions", e))
}

/// Loads the promotions at start.
pub fn load(state: &AppState) -> Result<(), StoreError> {
    state
        .promotions
        .set(state.accounts.promotions(state.now())?)
}

/// On a cluster, the promotions other nodes change: read every `every`.
pub fn follow(state: AppState, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let _ = reload(&state).await;
        }
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePromotion {
    /// The merchant that funds it. Merchants: their own (the default).
    /// Admins: any merchant, or none for a platform promotion.
    pub merchant_id: Option<u64>,
    /// `{"kind": "percent_off", "basis_points": 1500}` (15 % off),
    /// `{"kind": "amount_off", "off_fen": 2000, "min_spend_fen": 10000}`,
    /// `{"kind": "spend_save", "every_fen": 30000, "save_fen": 4000, "repeat": true}`.
    #[schema(value_type = Object)]
    pub rule: Rule,
    /// Only these items (a merchant's: its own); empty or absent: every
    /// item it covers.
    #[serde(default)]
    pub skus: Vec<u64>,
    /// Most it takes off one order.
    pub max_off_fen: Option<i64>,
    /// Exclusivity group (1 to 1,000): of the offers sharing one, only the
    /// first that applies counts.
    pub group: Option<u32>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// Limited: at most this many checkouts use it (1 to 10,000,000; each
    /// checkout it applies to takes one, and a released checkout gives it
    /// back). Absent: no limit.
    pub quantity: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct PromotionView {
    pub id: u64,
    /// `merchant` or `platform`.
    pub funded_by: &'static str,
    pub merchant_id: Option<u64>,
    #[schema(value_type = Object)]
    pub rule: Rule,
    pub skus: Vec<u64>,
    pub max_off_fen: Option<i64>,
    pub group: Option<u32>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// Running now.
    pub running: bool,
    /// Limited: its quantity, and what is left of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

impl PromotionView {
    fn new(p: &Promotion, now: Timestamp) -> PromotionView {
        PromotionView {
            id: p.row.id,
            funded_by: funded_by(p.row.merchant),
            merchant_id: p.row.merchant.map(|m| m.0),
            rule: p.offer.rule,
            skus: p.offer.skus.iter().map(|s| s.0).collect(),
            max_off_fen: p.offer.max_off_fen,
            group: p.offer.group,
            starts_at_ms: p.row.starts_at.0,
            ends_at_ms: p.row.ends_at.0,
            running: p.runs_at(now),
            quantity: p.row.quantity,
            remaining: p.remaining(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PromotionsPage {
    pub promotions: Vec<PromotionView>,
}

/// Checks an offer (a promotion's or a coupon's) of `merchant` (`None`:
/// the platform) and gives its stored spec: the rule in range, the
/// merchant known, the SKUs known and the merchant's own.
pub(crate) async fn offer_spec(
    state: &AppState,
    merchant: Option<MerchantId>,
    rule: Rule,
    skus: &[u64],
    max_off_fen: Option<i64>,
    group: Option<u32>,
) -> ApiResult<String> {
    rule.check()
        .map_err(|e| ApiError::invalid(format!("rule: {e}")))?;
    if skus.len() > PROMOTION_SKUS_MAX {
        return Err(ApiError::invalid(format!(
            "at most {PROMOTION_SKUS_MAX} skus"
        )));
    }
    if max_off_fen.is_some_and(|m| !(1..=mall_core::PRICE_MAX_FEN).contains(&m)) {
        return Err(ApiError::invalid("max_off_fen must be 1 to 100,000,000"));
    }
    if group.is_some_and(|g| !(1..=GROUP_MAX).contains(&g)) {
        return Err(ApiError::invalid(format!("group must be 1 to {GROUP_MAX}")));
    }
    if let Some(m) = merchant {
        let accounts = state.accounts.clone();
        let merchants = super::blocking(state, move || accounts.merchants())
            .await
            .map_err(|e| ApiError::store("merchants", e))?;
        if !merchants.iter().any(|row| row.id == m) {
            return Err(ApiError::not_found(
                "merchant_not_found",
                "no such merchant",
            ));
        }
    }
    let board = state.engine.board();
    for &sku in skus {
        match board.get(Sku(sku)) {
            None => {
                return Err(ApiError::not_found(
                    "item_not_found",
                    format!("no item {sku}"),
                ))
            }
            Some(e) if merchant.is_some_and(|m| e.item.merchant != m) => {
                return Err(ApiError::forbidden(format!(
                    "item {sku} is not this merchant's"
                )))
            }
            Some(_) => {}
        }
    }
    let mut skus: Vec<Sku> = skus.iter().map(|&s| Sku(s)).collect();
    skus.sort_unstable();
    skus.dedup();
    let spec = Spec {
        rule,
        skus,
        max_off_fen,
        group,
    };
    serde_json::to_string(&spec).map_err(|e| ApiError::internal("offer", e))
}

/// `merchant` or `platform`: who funds an offer, as the API says it.
pub(crate) fn funded_by(merchant: Option<MerchantId>) -> &'static str {
    if merchant.is_some() {
        "merchant"
    } else {
        "platform"
    }
}

/// Who funds a new promotion or coupon, as the caller may ask.
pub(crate) fn funder_for(
    principal: &Principal,
    asked: Option<u64>,
) -> ApiResult<Option<MerchantId>> {
    match (principal.is_admin(), principal.merchant, asked) {
        (true, _, asked) => Ok(asked.map(MerchantId)),
        (false, Some(mine), None) => Ok(Some(mine)),
        (false, Some(mine), Some(m)) if m == mine.0 => Ok(Some(mine)),
        (false, Some(_), Some(_)) => Err(ApiError::forbidden(
            "a merchant creates promotions and coupons on its own items only",
        )),
        (false, None, _) => Err(ApiError::forbidden(
            "only merchants and admins create promotions and coupons",
        )),
    }
}

/// Create a promotion: a merchant's on its own items, or (admins) a
/// platform-wide one.
#[utoipa::path(post, path = "/v1/promotions", request_body = CreatePromotion, tag = "promotions",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 201, body = PromotionView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "merchant_not_found, item_not_found", body = crate::error::ErrorBody),
              (status = 409, description = "promotions_full", body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<CreatePromotion>,
) -> Result<Response, ApiError> {
    let merchant = funder_for(&principal, body.merchant_id)?;
    if body.starts_at_ms < 0 || body.starts_at_ms >= body.ends_at_ms {
        return Err(ApiError::invalid(
            "starts_at_ms must be before ends_at_ms (and not negative)",
        ));
    }
    if body
        .quantity
        .is_some_and(|q| !(1..=PROMOTION_QUANTITY_MAX).contains(&q))
    {
        return Err(ApiError::invalid("quantity must be 1 to 10,000,000"));
    }
    let spec = offer_spec(
        &state,
        merchant,
        body.rule,
        &body.skus,
        body.max_off_fen,
        body.group,
    )
    .await?;
    let row = PromotionRow {
        id: 0,
        merchant,
        spec,
        starts_at: Timestamp(body.starts_at_ms),
        ends_at: Timestamp(body.ends_at_ms),
        quantity: body.quantity.map(|q| q as u64),
        used: 0,
    };
    let key = idempotency::key_from(&headers)?;
    let fingerprint = mall_core::fingerprint(&[
        b"promotion",
        &merchant.map_or(0, |m| m.0).to_le_bytes(),
        row.spec.as_bytes(),
        &row.starts_at.0.to_le_bytes(),
        &row.ends_at.0.to_le_bytes(),
        &row.quantity.unwrap_or(0).to_le_bytes(),
    ]);
    Ok(idempotency::run(
        &state,
        principal.user,
        key,
        fingerprint,
        idempotency::keep,
        || async {
            let all = state.promotions.all();
            let theirs = all.iter().filter(|p| p.row.merchant == merchant).count();
            let most = if merchant.is_some() {
                PROMOTIONS_PER_MERCHANT_MAX
            } else {
                PLATFORM_PROMOTIONS_MAX
            };
            if all.len() >= PROMOTIONS_MAX || theirs >= most {
                return Err(ApiError::conflict(
                    "promotions_full",
                    format!(
                        "at most {most} promotions running or to come here \
                         ({PROMOTIONS_PER_MERCHANT_MAX} a merchant, {PLATFORM_PROMOTIONS_MAX} the platform)"
                    ),
                ));
            }
            let accounts = state.accounts.clone();
            let stored = row.clone();
            let id = super::blocking(&state, move || accounts.create_promotion(&stored))
                .await
                .map_err(|e| ApiError::store("saving a promotion", e))?;
            reload(&state).await?;
            let promotion = Promotion::from_row(PromotionRow { id, ..row })
                .map_err(|e| ApiError::internal("promotion", e))?;
            super::json_answer(
                StatusCode::CREATED,
                &PromotionView::new(&promotion, state.now()),
            )
        },
    )
    .await)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PromotionsQuery {
    /// Only this merchant's.
    pub merchant_id: Option<u64>,
}

/// Promotions running or to come, by id.
#[utoipa::path(get, path = "/v1/promotions", params(PromotionsQuery), tag = "promotions",
    responses((status = 200, body = PromotionsPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    super::QueryOf(q): super::QueryOf<PromotionsQuery>,
) -> Json<PromotionsPage> {
    let now = state.now();
    let promotions = state
        .promotions
        .all()
        .iter()
        .filter(|p| p.row.ends_at > now)
        .filter(|p| {
            q.merchant_id
                .is_none_or(|m| p.row.merchant == Some(MerchantId(m)))
        })
        .map(|p| PromotionView::new(p, now))
        .collect();
    Json(PromotionsPage { promotions })
}

/// End a promotion now (its merchant, or an admin).
#[utoipa::path(delete, path = "/v1/promotions/{id}", tag = "promotions", security(("bearer" = [])),
    params(("id" = u64, Path, description = "promotion id")),
    responses((status = 200, body = PromotionView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "promotion_not_found", body = crate::error::ErrorBody)))]
pub async fn end(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<PromotionView>> {
    let id = parse_id(&raw, "promotion id")?;
    let now = state.now();
    let not_found = || {
        ApiError::not_found(
            "promotion_not_found",
            "no such promotion running or to come",
        )
    };
    let found = state
        .promotions
        .all()
        .iter()
        .find(|p| p.row.id == id && p.row.ends_at > now)
        .cloned();
    let Some(mut promotion) = found else {
        return Err(not_found());
    };
    let allowed = principal.is_admin()
        || (principal.merchant.is_some() && principal.merchant == promotion.row.merchant);
    if !allowed {
        return Err(ApiError::forbidden(
            "only its merchant or an admin ends a promotion",
        ));
    }
    let accounts = state.accounts.clone();
    let ended = super::blocking(&state, move || accounts.end_promotion(id, now))
        .await
        .map_err(|e| ApiError::store("ending a promotion", e))?;
    reload(&state).await?;
    if !ended {
        return Err(not_found());
    }
    promotion.row.ends_at = now;
    Ok(Json(PromotionView::new(&promotion, now)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteLine {
    pub sku: u64,
    /// 1 to 1,000.
    pub quantity: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    /// The lines to price; absent: the caller's cart.
    pub lines: Option<Vec<QuoteLine>>,
    /// Claims of yours to apply (`claimed`, valid, one per coupon; at
    /// most 8).
    #[serde(default)]
    pub claims: Vec<u64>,
}

/// The price of the caller's cart (or of the lines given) now: sale
/// prices, every promotion running and the coupons of the claims given, in
/// the documented order. Nothing is reserved: a quote shows what the
/// discounts come to (orders are single-SKU snap-ups at the sale price
/// until carts check out).
#[utoipa::path(post, path = "/v1/quotes", request_body = QuoteRequest, tag = "promotions",
    security(("bearer" = [])),
    responses((status = 200, body = PriceBreakdown),
              (status = 404, description = "item_not_found, coupon_not_found (a claim that is not yours)", body = crate::error::ErrorBody),
              (status = 409, description = "coupon_not_usable (used, or expired)", body = crate::error::ErrorBody),
              (status = 422, description = "invalid_request (no line, too many, a bad quantity)", body = crate::error::ErrorBody)))]
pub async fn quote(
    State(state): State<AppState>,
    principal: Principal,
    StrictJson(body): StrictJson<QuoteRequest>,
) -> ApiResult<Json<PriceBreakdown>> {
    let wanted: Vec<(Sku, i64)> = match body.lines {
        Some(lines) => lines.iter().map(|l| (Sku(l.sku), l.quantity)).collect(),
        None => {
            let accounts = state.accounts.clone();
            let user = principal.user;
            super::blocking(&state, move || accounts.list_of(ShopperList::Cart, user))
                .await
                .map_err(|e| ApiError::store("reading the cart", e))?
                .into_iter()
                .map(|(sku, q)| (sku, i64::from(q)))
                .collect()
        }
    };
    let now = state.now();
    let lines = lines_at(&state, &wanted, now)?;
    if !body.claims.is_empty() {
        state.limiter.admit_snapup(&principal)?;
    }
    let mut offers = state.promotions.offers_at(now);
    offers
        .extend(super::coupons::offers_of_claims(&state, principal.user, &body.claims, now).await?);
    // Only offers that touch the cart weigh on it; beyond what one price
    // weighs, the first in the order of application (documented).
    offers.retain(|o| lines.iter().any(|l| o.covers(l)));
    offers.sort_by_key(|o| o.rank());
    offers.truncate(mall_pricing::OFFERS_MAX);
    let priced = mall_pricing::price(&lines, &offers, &Policy::default())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(PriceBreakdown::from(&priced)))
}

/// The cart's lines as pricing takes them: each item's list, sale (now)
/// and floor prices from the board.
pub fn lines_at(state: &AppState, wanted: &[(Sku, i64)], now: Timestamp) -> ApiResult<Vec<Line>> {
    if wanted.is_empty() || wanted.len() > mall_pricing::LINES_MAX {
        return Err(ApiError::invalid(format!(
            "a quote takes 1 to {} lines",
            mall_pricing::LINES_MAX
        )));
    }
    let board = state.engine.board();
    wanted
        .iter()
        .map(|&(sku, quantity)| {
            let quantity = u32::try_from(quantity)
                .ok()
                .filter(|q| (1..=QUANTITY_MAX).contains(q))
                .ok_or_else(|| {
                    ApiError::invalid(format!("quantity must be 1 to {QUANTITY_MAX}"))
                })?;
            let entry = board
                .get(sku)
                .ok_or_else(|| ApiError::not_found("item_not_found", format!("no item {sku}")))?;
            let item = &entry.item;
            Ok(Line {
                sku,
                merchant: item.merchant,
                quantity,
                list_unit_fen: item.price_fen.0,
                sale_unit_fen: item.price_at(now).0,
                floor_unit_fen: item.floor_unit().0,
            })
        })
        .collect()
}
