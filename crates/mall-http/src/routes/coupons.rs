//! Coupons: a merchant's (on its own items, which it funds) or the
//! platform's, with a limited quantity and a per-shopper limit, claimed in
//! a window. A claim is decided on the coupon's shard like a snap-up
//! (`mall_inventory::coupons`): never more claims than the quantity,
//! idempotent, acknowledged only once committed.

use super::items::in_range;
use super::promotions::{funded_by, funder_for, offer_spec};
use super::{idempotency, parse_id, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mall_core::{Claim, Coupon, CouponId, Refusal, Timestamp};
use mall_inventory::{ClaimCoupon, Command, Reply};
use mall_pricing::Rule;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Claims one shopper may make of one coupon, at most.
pub const COUPON_PER_USER_MAX: u32 = 100;
/// One coupon's quantity, at most (every claim is kept in its shard's
/// memory).
pub const COUPON_QUANTITY_MAX: u32 = 1_000_000;
/// Coupons open for claims on one shard, at most.
pub const COUPONS_PER_SHARD_MAX: usize = 256;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCoupon {
    /// The merchant that funds it. Merchants: their own (the default).
    /// Admins: any merchant, or none for a platform coupon.
    pub merchant_id: Option<u64>,
    /// 1 to 200 characters.
    pub title: String,
    /// As a promotion's rule (`percent_off`, `amount_off`, `spend_save`).
    #[schema(value_type = Object)]
    pub rule: Rule,
    #[serde(default)]
    pub skus: Vec<u64>,
    pub max_off_fen: Option<i64>,
    pub group: Option<u32>,
    /// Claims in all (0 to 1,000,000): never more are issued.
    pub quantity: i64,
    /// Claims one shopper may make (1 to 100; default 1).
    pub per_user_limit: Option<i64>,
    /// Claims are taken in `[claim_opens_at_ms, claim_closes_at_ms)`.
    pub claim_opens_at_ms: i64,
    pub claim_closes_at_ms: i64,
    /// A claimed coupon may be used until then (not before the claims close).
    pub valid_until_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CouponView {
    pub id: u64,
    pub title: String,
    /// `merchant` or `platform`.
    pub funded_by: &'static str,
    pub merchant_id: Option<u64>,
    #[schema(value_type = Object)]
    pub rule: serde_json::Value,
    pub quantity: u32,
    /// Claims made so far, and of them on an order now.
    pub claimed: u32,
    pub used: u32,
    /// What is left to claim.
    pub remaining: u32,
    pub per_user_limit: u32,
    pub claim_opens_at_ms: i64,
    pub claim_closes_at_ms: i64,
    pub valid_until_ms: i64,
}

impl CouponView {
    fn new(coupon: &Coupon, claimed: u32, used: u32) -> CouponView {
        let spec: serde_json::Value = serde_json::from_str(&coupon.spec).unwrap_or_default();
        CouponView {
            id: coupon.id.0,
            title: coupon.title.clone(),
            funded_by: funded_by(coupon.merchant),
            merchant_id: coupon.merchant.map(|m| m.0),
            rule: spec,
            quantity: coupon.quantity,
            claimed,
            used,
            remaining: coupon.quantity.saturating_sub(claimed),
            per_user_limit: coupon.per_user_limit,
            claim_opens_at_ms: coupon.claim_opens_at.0,
            claim_closes_at_ms: coupon.claim_closes_at.0,
            valid_until_ms: coupon.valid_until.0,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CouponsPage {
    pub coupons: Vec<CouponView>,
}

#[derive(Serialize, ToSchema)]
pub struct ClaimView {
    pub id: u64,
    pub coupon_id: u64,
    pub user_id: u64,
    /// `claimed` (usable) or `used` (on an order).
    pub status: &'static str,
    pub order_id: Option<u64>,
    pub created_at_ms: i64,
}

impl From<&Claim> for ClaimView {
    fn from(c: &Claim) -> ClaimView {
        ClaimView {
            id: c.id.0,
            coupon_id: c.coupon.0,
            user_id: c.user.0,
            status: c.status.as_str(),
            order_id: c.order.map(|o| o.0),
            created_at_ms: c.created_at.0,
        }
    }
}

/// Create a coupon: a merchant's on its own items, or (admins) a
/// platform one.
#[utoipa::path(post, path = "/v1/coupons", request_body = CreateCoupon, tag = "coupons",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 201, body = CouponView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "merchant_not_found, item_not_found", body = crate::error::ErrorBody),
              (status = 409, description = "coupons_full", body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<CreateCoupon>,
) -> Result<Response, ApiError> {
    let merchant = funder_for(&principal, body.merchant_id)?;
    super::check_text(&body.title, "title", 1, 200)?;
    let quantity = in_range(body.quantity, "quantity", 0, i64::from(COUPON_QUANTITY_MAX))? as u32;
    let per_user = in_range(
        body.per_user_limit.unwrap_or(1),
        "per_user_limit",
        1,
        i64::from(COUPON_PER_USER_MAX),
    )? as u32;
    if body.claim_opens_at_ms < 0
        || body.claim_opens_at_ms >= body.claim_closes_at_ms
        || body.valid_until_ms < body.claim_closes_at_ms
    {
        return Err(ApiError::invalid(
            "claim_opens_at_ms must be before claim_closes_at_ms (and not negative), and valid_until_ms not before claim_closes_at_ms",
        ));
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
    let mut coupon = Coupon {
        id: CouponId(0),
        merchant,
        title: body.title.clone(),
        spec,
        quantity,
        per_user_limit: per_user,
        claim_opens_at: Timestamp(body.claim_opens_at_ms),
        claim_closes_at: Timestamp(body.claim_closes_at_ms),
        valid_until: Timestamp(body.valid_until_ms),
    };
    let key = idempotency::key_from(&headers)?;
    let fingerprint = mall_core::fingerprint(&[
        b"coupon",
        &merchant.map_or(0, |m| m.0).to_le_bytes(),
        coupon.title.as_bytes(),
        coupon.spec.as_bytes(),
        &quantity.to_le_bytes(),
        &per_user.to_le_bytes(),
        &coupon.claim_opens_at.0.to_le_bytes(),
        &coupon.claim_closes_at.0.to_le_bytes(),
        &coupon.valid_until.0.to_le_bytes(),
    ]);
    Ok(idempotency::run(
        &state,
        principal.user,
        key,
        fingerprint,
        idempotency::keep,
        || async {
            // On a cluster another node may have handed out the same id:
            // skip past a taken one, a few times.
            let mut tries = 0;
            loop {
                let above = state.engine.board().max_coupon().map_or(1, |c| c.0 + 1);
                coupon.id = CouponId(state.coupon_ids.next(&state, above).await?);
                // Every claim lives in its shard's memory: a shard keeps at
                // most so many coupons whose claims are still open.
                let rx = state
                    .engine
                    .try_submit_for_coupon(coupon.id, Command::Coupons)
                    .map_err(|_| ApiError::overloaded())?;
                let open = match rx.await.unwrap_or(Reply::Unavailable) {
                    Reply::Coupons(all) => all
                        .iter()
                        .filter(|c| c.coupon.claim_closes_at > state.now())
                        .count(),
                    _ => return Err(ApiError::unavailable()),
                };
                if open >= COUPONS_PER_SHARD_MAX {
                    return Err(ApiError::conflict(
                        "coupons_full",
                        format!(
                            "at most {COUPONS_PER_SHARD_MAX} coupons open for claims on one shard; try again after some close"
                        ),
                    ));
                }
                let command = Command::PutCoupon {
                    coupon: coupon.clone(),
                    expected: None,
                };
                let rx = state
                    .engine
                    .try_submit_for_coupon(coupon.id, command)
                    .map_err(|_| ApiError::overloaded())?;
                match rx.await.unwrap_or(Reply::Unavailable) {
                    Reply::Coupon(c) => {
                        break super::json_answer(StatusCode::CREATED, &CouponView::new(&c, 0, 0))
                    }
                    Reply::Refused(Refusal::ItemChanged) if tries < 8 => tries += 1,
                    Reply::Refused(r) => break Err(ApiError::from_refusal(&r)),
                    _ => break Err(ApiError::unavailable()),
                }
            }
        },
    )
    .await)
}

/// Coupons, by id, with what is left to claim.
#[utoipa::path(get, path = "/v1/coupons", tag = "coupons",
    responses((status = 200, body = CouponsPage),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<CouponsPage>> {
    let coupons = state
        .engine
        .coupons()
        .await
        .map_err(shard_error)?
        .iter()
        .map(|c| CouponView::new(&c.coupon, c.claims, c.used))
        .collect();
    Ok(Json(CouponsPage { coupons }))
}

/// Claim a coupon. A retry under the same `Idempotency-Key` gets the same
/// claim back.
#[utoipa::path(post, path = "/v1/coupons/{id}/claims", tag = "coupons", security(("bearer" = [])),
    params(("id" = u64, Path, description = "coupon id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key: the same key returns the first claim")),
    responses((status = 201, body = ClaimView),
              (status = 403, description = "sale_not_open, sale_closed (the claim window)", body = crate::error::ErrorBody),
              (status = 404, description = "coupon_not_found", body = crate::error::ErrorBody),
              (status = 409, description = "sold_out (all claimed), limit_reached", body = crate::error::ErrorBody),
              (status = 422, description = "idempotency_key_reused", body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Segment(raw): Segment,
) -> Result<Response, ApiError> {
    let coupon = CouponId(parse_id(&raw, "coupon id")?);
    state.limiter.admit_snapup(&principal).inspect_err(|_| {
        state.metrics.record_refusal("overloaded");
    })?;
    let key = idempotency::key_from(&headers)?;
    let command = Command::Claim(ClaimCoupon::new(
        principal.user,
        coupon,
        key.map(Into::into),
    ));
    let rx = state
        .engine
        .try_submit_for_coupon(coupon, command)
        .map_err(|_| {
            state.metrics.record_refusal("overloaded");
            ApiError::overloaded()
        })?;
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Claim { claim, replayed } => {
            let mut response = (StatusCode::CREATED, Json(ClaimView::from(&claim))).into_response();
            if replayed {
                idempotency::replayed_header(&mut response);
            }
            Ok(response)
        }
        Reply::Refused(r) => {
            state.metrics.record_refusal(r.code());
            let mut error = ApiError::from_refusal(&r);
            // The shard's words are about items; a coupon's are its own.
            error.message = match r {
                Refusal::SoldOut => "every coupon of this kind has been claimed".into(),
                Refusal::LimitReached { limit, .. } => {
                    format!("you have claimed this coupon the most times allowed ({limit})")
                }
                Refusal::SaleNotOpen { opens_at } => {
                    format!("claims open at {} (ms since epoch)", opens_at.0)
                }
                Refusal::SaleClosed { closes_at } => {
                    format!("claims closed at {} (ms since epoch)", closes_at.0)
                }
                _ => error.message,
            };
            Err(error)
        }
        _ => Err(ApiError::unavailable()),
    }
}

/// One coupon, with what is left to claim.
#[utoipa::path(get, path = "/v1/coupons/{id}", tag = "coupons",
    params(("id" = u64, Path, description = "coupon id")),
    responses((status = 200, body = CouponView), (status = 404, body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Segment(raw): Segment,
) -> ApiResult<Json<CouponView>> {
    let id = CouponId(parse_id(&raw, "coupon id")?);
    match state.engine.coupon(id).await {
        Ok(Some(c)) => Ok(Json(CouponView::new(&c.coupon, c.claims, c.used))),
        Ok(None) => Err(ApiError::from_refusal(&Refusal::UnknownCoupon)),
        Err(e) => Err(shard_error(e)),
    }
}

#[derive(Serialize, ToSchema)]
pub struct ClaimsPage {
    pub claims: Vec<ClaimView>,
}

/// The API's answer when a shard could not: busy (503 `overloaded`) or
/// unable (503 `store_unavailable`).
fn shard_error(reply: Option<Reply>) -> ApiError {
    match reply {
        None => ApiError::overloaded(),
        Some(_) => ApiError::unavailable(),
    }
}

/// A shopper's claims and the coupons they are of, from every shard.
pub(crate) async fn claims_of(
    state: &AppState,
    user: mall_core::UserId,
) -> ApiResult<(Vec<Claim>, Vec<Coupon>)> {
    state.engine.claims_of(user).await.map_err(shard_error)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClaimsQuery {
    /// Admins only: whose claims.
    pub user_id: Option<u64>,
}

/// Your claims: `claimed` ones may go on an order (admins: anyone's).
#[utoipa::path(get, path = "/v1/claims", tag = "coupons", security(("bearer" = [])), params(ClaimsQuery),
    responses((status = 200, body = ClaimsPage), (status = 403, body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn mine(
    State(state): State<AppState>,
    principal: Principal,
    super::QueryOf(q): super::QueryOf<ClaimsQuery>,
) -> ApiResult<Json<ClaimsPage>> {
    let user = match q.user_id {
        Some(u) if principal.is_admin() => mall_core::UserId(u),
        Some(_) => return Err(ApiError::forbidden("only admins read another's claims")),
        None => principal.user,
    };
    state.limiter.admit_snapup(&principal)?;
    let (claims, _) = claims_of(&state, user).await?;
    Ok(Json(ClaimsPage {
        claims: claims.iter().map(ClaimView::from).collect(),
    }))
}

/// The offers of the caller's claims `ids` at `now`: each must be the
/// caller's, `claimed`, valid, and of a different coupon.
pub(crate) async fn offers_of_claims(
    state: &AppState,
    user: mall_core::UserId,
    ids: &[u64],
    now: Timestamp,
) -> ApiResult<Vec<mall_pricing::Offer>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    if ids.len() > CLAIMS_PER_ORDER_MAX {
        return Err(ApiError::invalid(format!(
            "at most {CLAIMS_PER_ORDER_MAX} coupons on one order"
        )));
    }
    let (mine, coupons) = claims_of(state, user).await?;
    let mut offers: Vec<mall_pricing::Offer> = Vec::with_capacity(ids.len());
    for &id in ids {
        let claim = mine
            .iter()
            .find(|c| c.id.0 == id)
            .ok_or_else(|| ApiError::from_refusal(&Refusal::UnknownCoupon))?;
        let coupon = coupons
            .iter()
            .find(|c| c.id == claim.coupon)
            .ok_or_else(|| ApiError::from_refusal(&Refusal::UnknownCoupon))?;
        if claim.status != mall_core::ClaimStatus::Claimed || now >= coupon.valid_until {
            return Err(ApiError::from_refusal(&Refusal::ClaimNotUsable));
        }
        if offers.iter().any(|o| o.id == claim.coupon.0) {
            return Err(ApiError::invalid("one claim of each coupon per order"));
        }
        let spec: super::promotions::Spec =
            serde_json::from_str(&coupon.spec).map_err(|e| ApiError::internal("coupon spec", e))?;
        offers.push(mall_pricing::Offer {
            id: claim.coupon.0,
            kind: mall_pricing::OfferKind::Coupon,
            funder: coupon.merchant.map_or(
                mall_pricing::Funder::Platform,
                mall_pricing::Funder::Merchant,
            ),
            rule: spec.rule,
            skus: spec.skus,
            max_off_fen: spec.max_off_fen,
            group: spec.group,
        });
    }
    Ok(offers)
}

/// Coupons one order may carry, at most.
pub const CLAIMS_PER_ORDER_MAX: usize = 8;
