//! What shoppers do before a sale: favourite items and fill a cart. Both
//! lists are durable (the store's `shopper_lists`) and bounded per
//! shopper; each change is also an event (the funnel and the forecast read
//! them). Changes go through one writer thread that commits whatever has
//! queued as one transaction (one flush for the lot, as the shards do), and
//! a change is answered only once committed. How many shoppers favourite
//! each item is kept with the lists, in the same transaction, and shown
//! with the item from memory.

use super::{parse_id, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use mall_core::{Sku, UserId};
use mall_engine::{AccountStore, ListChange, ListOutcome, ShopperList, StoreError};
use mall_shard::Clock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;
use utoipa::ToSchema;

pub const FAVORITES_MAX: usize = 200;
pub const CART_LINES_MAX: usize = 100;
pub const CART_QUANTITY_MAX: i64 = 99;
/// Changes waiting for the writer, at most (then 503 `overloaded`).
const QUEUE_MAX: usize = 4_096;
/// Changes in one transaction, at most.
const BATCH_MAX: usize = 512;

type Job = (ListChange, oneshot::Sender<Result<ListOutcome, StoreError>>);

/// Favourites and carts: the writer's queue, and favourites per item.
pub struct Wishlists {
    jobs: SyncSender<Job>,
    counts: Arc<RwLock<HashMap<Sku, u64>>>,
}

impl Wishlists {
    /// Starts the writer on `accounts`; favourite counts start from the store.
    pub fn start(
        accounts: Arc<dyn AccountStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Wishlists, StoreError> {
        let counts = Arc::new(RwLock::new(
            accounts.favorite_counts()?.into_iter().collect(),
        ));
        let (jobs, queue) = sync_channel(QUEUE_MAX);
        let writer_counts = counts.clone();
        std::thread::Builder::new()
            .name("mall-lists".into())
            .spawn(move || write_lists(queue, accounts, clock, writer_counts))
            .map_err(|e| StoreError::Unavailable(format!("starting the lists writer: {e}")))?;
        Ok(Wishlists { jobs, counts })
    }

    /// How many shoppers favourite `sku`.
    pub fn favorites_of(&self, sku: Sku) -> u64 {
        read(&self.counts).get(&sku).copied().unwrap_or(0)
    }

    /// Replaces the counts with the store's (a cluster's other nodes
    /// change them too).
    pub fn set_counts(&self, counts: Vec<(Sku, u64)>) {
        *self.counts.write().unwrap_or_else(|p| p.into_inner()) = counts.into_iter().collect();
    }

    pub(crate) async fn change(&self, change: ListChange) -> ApiResult<ListOutcome> {
        let (tx, rx) = oneshot::channel();
        match self.jobs.try_send((change, tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ApiError::overloaded()),
            Err(TrySendError::Disconnected(_)) => return Err(ApiError::unavailable()),
        }
        match rx.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(ApiError::store("saving a list", e)),
            Err(_) => Err(ApiError::unavailable()),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// The writer: takes what has queued (up to [`BATCH_MAX`]), commits it as
/// one transaction, then answers each change and moves the counts. Ends
/// when the state is dropped.
fn write_lists(
    queue: Receiver<Job>,
    accounts: Arc<dyn AccountStore>,
    clock: Arc<dyn Clock>,
    counts: Arc<RwLock<HashMap<Sku, u64>>>,
) {
    while let Some(jobs) = super::next_batch(&queue, BATCH_MAX) {
        let changes: Vec<ListChange> = jobs.iter().map(|(c, _)| *c).collect();
        match accounts.change_lists(&changes, clock.now()) {
            Ok(outcomes) => {
                let mut counts = counts.write().unwrap_or_else(|p| p.into_inner());
                for ((change, reply), outcome) in jobs.into_iter().zip(outcomes) {
                    if let (ShopperList::Favorites, ListOutcome::Before(was)) =
                        (change.list, outcome)
                    {
                        let count = counts.entry(change.sku).or_default();
                        match (was, change.quantity) {
                            (0, q) if q > 0 => *count += 1,
                            (w, 0) if w > 0 => *count = count.saturating_sub(1),
                            _ => {}
                        }
                    }
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for (_, reply) in jobs {
                    let _ = reply.send(Err(super::error_for_each(&e)));
                }
            }
        }
    }
}

/// Every few seconds, the favourite counts from the store (on a cluster,
/// where other nodes change them too).
pub fn follow_counts(state: AppState, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let accounts = state.accounts.clone();
            if let Ok(Ok(counts)) =
                tokio::task::spawn_blocking(move || accounts.favorite_counts()).await
            {
                state.wishlists.set_counts(counts);
            }
        }
    })
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

async fn list_of(state: &AppState, list: ShopperList, user: UserId) -> ApiResult<Vec<(Sku, u32)>> {
    let accounts = state.accounts.clone();
    super::blocking(state, move || accounts.list_of(list, user))
        .await
        .map_err(|e| ApiError::store("reading a list", e))
}

async fn favorites_view(state: &AppState, user: UserId) -> ApiResult<FavoritesView> {
    let skus = list_of(state, ShopperList::Favorites, user).await?;
    Ok(FavoritesView {
        skus: skus.into_iter().map(|(sku, _)| sku.0).collect(),
    })
}

async fn cart_view(state: &AppState, user: UserId) -> ApiResult<CartView> {
    let lines = list_of(state, ShopperList::Cart, user).await?;
    Ok(CartView {
        lines: lines
            .into_iter()
            .map(|(sku, quantity)| CartLine {
                sku: sku.0,
                quantity,
            })
            .collect(),
    })
}

/// Favourite an item (again: no change).
#[utoipa::path(post, path = "/v1/items/{sku}/favorite", tag = "items", security(("bearer" = [])),
    params(("sku" = u64, Path, description = "SKU")),
    responses((status = 200, body = FavoritesView), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "favorites_full", body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn favorite(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<FavoritesView>> {
    let sku = known_item(&state, parse_id(&raw, "sku")?)?;
    let change = ListChange {
        list: ShopperList::Favorites,
        user: principal.user,
        sku,
        quantity: 1,
        lines_max: FAVORITES_MAX,
    };
    match state.wishlists.change(change).await? {
        ListOutcome::Full => {
            return Err(ApiError::conflict(
                "favorites_full",
                format!("at most {FAVORITES_MAX} favourites; remove one first"),
            ))
        }
        ListOutcome::Before(0) => record(&state, mall_events::Kind::Favorite, &principal, sku, 1),
        ListOutcome::Before(_) => {}
    }
    Ok(Json(favorites_view(&state, principal.user).await?))
}

/// Stop favouriting an item.
#[utoipa::path(delete, path = "/v1/items/{sku}/favorite", tag = "items", security(("bearer" = [])),
    params(("sku" = u64, Path, description = "SKU")), responses((status = 200, body = FavoritesView)))]
pub async fn unfavorite(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<FavoritesView>> {
    let sku = Sku(parse_id(&raw, "sku")?);
    let change = ListChange {
        list: ShopperList::Favorites,
        user: principal.user,
        sku,
        quantity: 0,
        lines_max: FAVORITES_MAX,
    };
    state.wishlists.change(change).await?;
    Ok(Json(favorites_view(&state, principal.user).await?))
}

/// Your favourites, by SKU.
#[utoipa::path(get, path = "/v1/favorites", tag = "items", security(("bearer" = [])),
    responses((status = 200, body = FavoritesView)))]
pub async fn favorites(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<FavoritesView>> {
    Ok(Json(favorites_view(&state, principal.user).await?))
}

/// Put an item in your cart (or change its quantity; 0 takes it out).
#[utoipa::path(post, path = "/v1/cart", request_body = CartChange, tag = "items", security(("bearer" = [])),
    responses((status = 200, body = CartView), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "cart_full", body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
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
    let q = change.quantity as u32;
    // Taking out needs no known item (it may be gone from the catalogue).
    let sku = if q == 0 {
        Sku(change.sku)
    } else {
        known_item(&state, change.sku)?
    };
    let line = ListChange {
        list: ShopperList::Cart,
        user: principal.user,
        sku,
        quantity: q,
        lines_max: CART_LINES_MAX,
    };
    match state.wishlists.change(line).await? {
        ListOutcome::Full => {
            return Err(ApiError::conflict(
                "cart_full",
                format!("at most {CART_LINES_MAX} items in a cart"),
            ))
        }
        ListOutcome::Before(was) if was < q => {
            record(&state, mall_events::Kind::Cart, &principal, sku, q)
        }
        ListOutcome::Before(_) => {}
    }
    Ok(Json(cart_view(&state, principal.user).await?))
}

/// Your cart.
#[utoipa::path(get, path = "/v1/cart", tag = "items", security(("bearer" = [])),
    responses((status = 200, body = CartView)))]
pub async fn cart(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<CartView>> {
    Ok(Json(cart_view(&state, principal.user).await?))
}
