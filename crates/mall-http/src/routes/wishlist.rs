//! What shoppers do before a sale: favourite items and fill a cart. Each
//! action is an event (the funnel and the forecast read them); the lists
//! themselves live in memory, bounded per shopper, and are not kept across
//! a restart (the event log keeps the history).

use super::{parse_id, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use mall_core::{Sku, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use utoipa::ToSchema;

pub const FAVORITES_MAX: usize = 200;
pub const CART_LINES_MAX: usize = 100;
pub const CART_QUANTITY_MAX: i64 = 99;

/// Favourites and carts of every shopper.
#[derive(Default)]
pub struct Wishlists {
    favorites: Mutex<HashMap<UserId, BTreeSet<u64>>>,
    carts: Mutex<HashMap<UserId, BTreeMap<u64, u32>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize, ToSchema)]
pub struct FavoritesView {
    pub skus: Vec<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct CartLine {
    pub sku: u64,
    pub quantity: u32,
}

#[derive(Serialize, ToSchema)]
pub struct CartView {
    pub lines: Vec<CartLine>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartChange {
    pub sku: u64,
    /// 0 to 99; 0 takes the item out of the cart.
    pub quantity: i64,
}

fn known_item(state: &AppState, raw: u64) -> ApiResult<Sku> {
    let sku = Sku(raw);
    state
        .engine
        .board()
        .get(sku)
        .map(|_| sku)
        .ok_or_else(|| ApiError::from_refusal(&mall_core::Refusal::UnknownItem))
}

fn record(state: &AppState, kind: mall_events::Kind, p: &Principal, sku: Sku, q: u32) {
    let mut e = mall_events::Event::new(state.now().0, kind);
    (e.user, e.sku, e.quantity) = (p.user.0, sku.0, q.max(1));
    state.record(e);
}

fn favorites_of(state: &AppState, user: UserId) -> FavoritesView {
    FavoritesView {
        skus: lock(&state.wishlists.favorites)
            .get(&user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default(),
    }
}

/// Favourite an item (again: no change).
#[utoipa::path(post, path = "/v1/items/{sku}/favorite", tag = "items", security(("bearer" = [])),
    params(("sku" = u64, Path, description = "SKU")),
    responses((status = 200, body = FavoritesView), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "favorites_full", body = crate::error::ErrorBody)))]
pub async fn favorite(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<FavoritesView>> {
    let sku = known_item(&state, parse_id(&raw, "sku")?)?;
    let added = {
        let mut all = lock(&state.wishlists.favorites);
        let mine = all.entry(principal.user).or_default();
        if !mine.contains(&sku.0) && mine.len() >= FAVORITES_MAX {
            return Err(ApiError::conflict(
                "favorites_full",
                format!("at most {FAVORITES_MAX} favourites; remove one first"),
            ));
        }
        mine.insert(sku.0)
    };
    if added {
        record(&state, mall_events::Kind::Favorite, &principal, sku, 1);
    }
    Ok(Json(favorites_of(&state, principal.user)))
}

/// Stop favouriting an item.
#[utoipa::path(delete, path = "/v1/items/{sku}/favorite", tag = "items", security(("bearer" = [])),
    params(("sku" = u64, Path, description = "SKU")), responses((status = 200, body = FavoritesView)))]
pub async fn unfavorite(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<FavoritesView>> {
    let sku = parse_id(&raw, "sku")?;
    if let Some(mine) = lock(&state.wishlists.favorites).get_mut(&principal.user) {
        mine.remove(&sku);
    }
    Ok(Json(favorites_of(&state, principal.user)))
}

/// Your favourites, by SKU.
#[utoipa::path(get, path = "/v1/favorites", tag = "items", security(("bearer" = [])),
    responses((status = 200, body = FavoritesView)))]
pub async fn favorites(State(state): State<AppState>, principal: Principal) -> Json<FavoritesView> {
    Json(favorites_of(&state, principal.user))
}

fn cart_of(state: &AppState, user: UserId) -> CartView {
    CartView {
        lines: lock(&state.wishlists.carts)
            .get(&user)
            .map(|c| {
                c.iter()
                    .map(|(sku, q)| CartLine {
                        sku: *sku,
                        quantity: *q,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Put an item in your cart (or change its quantity; 0 takes it out).
#[utoipa::path(post, path = "/v1/cart", request_body = CartChange, tag = "items", security(("bearer" = [])),
    responses((status = 200, body = CartView), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "cart_full", body = crate::error::ErrorBody)))]
pub async fn put_in_cart(
    State(state): State<AppState>,
    principal: Principal,
    StrictJson(change): StrictJson<CartChange>,
) -> ApiResult<Json<CartView>> {
    if !(0..=CART_QUANTITY_MAX).contains(&change.quantity) {
        return Err(ApiError::invalid(format!(
            "quantity must be 0 to {CART_QUANTITY_MAX}"
        )));
    }
    let sku = known_item(&state, change.sku)?;
    let q = change.quantity as u32;
    let grew = {
        let mut all = lock(&state.wishlists.carts);
        let mine = all.entry(principal.user).or_default();
        if q == 0 {
            mine.remove(&sku.0);
            false
        } else {
            if !mine.contains_key(&sku.0) && mine.len() >= CART_LINES_MAX {
                return Err(ApiError::conflict(
                    "cart_full",
                    format!("at most {CART_LINES_MAX} items in a cart"),
                ));
            }
            mine.insert(sku.0, q).is_none_or(|before| before < q)
        }
    };
    if grew {
        record(&state, mall_events::Kind::Cart, &principal, sku, q);
    }
    Ok(Json(cart_of(&state, principal.user)))
}

/// Your cart.
#[utoipa::path(get, path = "/v1/cart", tag = "items", security(("bearer" = [])),
    responses((status = 200, body = CartView)))]
pub async fn cart(State(state): State<AppState>, principal: Principal) -> Json<CartView> {
    Json(cart_of(&state, principal.user))
}
