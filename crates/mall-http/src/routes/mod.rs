//! One module per resource; [`routes`] wires them and [`ops::ApiDoc`]
//! describes them (OpenAPI, generated from the handlers' annotations).

pub mod accounts;
pub mod checkout_pay;
pub mod checkouts;
pub mod coupons;
pub mod dashboard;
pub mod idempotency;
pub mod ids;
pub mod items;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod presale;
pub mod price;
pub mod promotions;
pub mod wishlist;

use crate::AppState;
use axum::routing::{get, post};
use axum::Router;

/// Every route: the shoppers' listener serves them all.
pub fn routes() -> Router<AppState> {
    operators()
        .route("/v1/users", post(accounts::register))
        .route("/v1/items", get(items::list))
        .route("/v1/items/{sku}", get(items::get_one))
        .route(
            "/v1/items/{sku}/favorite",
            post(wishlist::favorite).delete(wishlist::unfavorite),
        )
        .route("/v1/favorites", get(wishlist::favorites))
        .route("/v1/cart", post(wishlist::put_in_cart).get(wishlist::cart))
        .route(
            "/v1/promotions",
            post(promotions::create).get(promotions::list),
        )
        .route(
            "/v1/promotions/{id}",
            axum::routing::delete(promotions::end),
        )
        .route("/v1/quotes", post(promotions::quote))
        .route("/v1/coupons", post(coupons::create).get(coupons::list))
        .route("/v1/coupons/{id}", get(coupons::get_one))
        .route("/v1/coupons/{id}/claims", post(coupons::claim))
        .route("/v1/claims", get(coupons::mine))
        .route("/v1/orders", post(orders::create).get(orders::list_mine))
        .route(
            "/v1/checkouts",
            post(checkouts::create).get(checkouts::list_mine),
        )
        .route("/v1/checkouts/{id}", get(checkouts::get_one))
        .route("/v1/checkouts/{id}/payments", post(checkout_pay::pay))
        .route("/v1/orders/{id}", get(orders::get_one))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/balance", post(presale::balance))
        .route("/v1/orders/{id}/payments", post(payments::pay))
        .route("/v1/wallet", get(payments::wallet))
        .route("/v1/wallet/top-ups", post(payments::top_up))
        .route("/v1/wallet/statement", get(payments::statement))
        .route("/v1/channels/{name}/callback", post(payments::callback))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
}

/// The operators' listener (`--admin-addr`): health, metrics, the
/// dashboard, logging in and out, and the admin routes. Shopper routes are
/// not served there.
pub fn admin_routes() -> Router<AppState> {
    operators()
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
}

/// What both listeners serve.
fn operators() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/v1/dashboard", get(dashboard::current))
        .route("/v1/dashboard/stream", get(dashboard::stream))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/v1/sessions", post(accounts::login))
        .route(
            "/v1/sessions/current",
            axum::routing::delete(accounts::logout),
        )
        .route("/v1/admin/users", post(accounts::admin_create_user))
        .route("/v1/admin/users/bulk", post(accounts::bulk_create))
        .route(
            "/v1/admin/users/{id}/sessions",
            axum::routing::delete(accounts::revoke_sessions),
        )
        .route(
            "/v1/admin/merchants",
            post(accounts::create_merchant).get(accounts::list_merchants),
        )
        .route("/v1/admin/items", post(items::create))
        .route("/v1/admin/items/{sku}", axum::routing::patch(items::update))
        .route("/v1/admin/channels", get(payments::channels))
        .route("/v1/admin/orders/{id}/deliver", post(payments::deliver))
        .route(
            "/v1/admin/orders/{id}/cod-collected",
            post(payments::cod_collected),
        )
        .route("/v1/orders/{id}/refunds", post(payments::refund))
}

/// One path segment as text. A segment that is not valid UTF-8 (`%FF`) is
/// refused with 400 `invalid_path` in the JSON error shape, not axum's text.
pub struct Segment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = crate::error::ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(s)) => Ok(Segment(s)),
            Err(e) => Err(crate::error::ApiError::bad_request(
                "invalid_path",
                format!("the path is not valid: {}", e.body_text()),
            )),
        }
    }
}

/// A query string parsed into `T`; each way it can be wrong (a repeated or
/// unknown parameter, a wrong type) is 400 `invalid_query`.
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for QueryOf<T>
{
    type Rejection = crate::error::ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(QueryOf(q)),
            Err(e) => Err(crate::error::ApiError::bad_request(
                "invalid_query",
                e.body_text(),
            )),
        }
    }
}

/// Parses a numeric path segment with a clear error instead of axum's text.
pub(crate) fn parse_id(raw: &str, what: &'static str) -> Result<u64, crate::error::ApiError> {
    raw.parse::<u64>().map_err(|_| {
        crate::error::ApiError::bad_request(
            "invalid_id",
            format!("{what} must be a positive integer, not {raw:?}"),
        )
    })
}

/// Validates free text: length in characters and no control characters.
pub(crate) fn check_text(
    value: &str,
    field: &str,
    min: usize,
    max: usize,
) -> Result<(), crate::error::ApiError> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(crate::error::ApiError::invalid(format!(
            "{field} must be {min} to {max} characters long"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(crate::error::ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// Runs blocking store work off the async threads. On a remote store
/// (PostgreSQL) at most `AppState::store_calls` at once: beyond, callers
/// wait here as tasks rather than as hundreds of threads queued for a
/// database connection. A local store (SQLite) answers in microseconds and
/// is not limited.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &crate::AppState,
    f: impl FnOnce() -> Result<T, mall_engine::StoreError> + Send + 'static,
) -> Result<T, mall_engine::StoreError> {
    let _turn = match &state.store_calls {
        Some(calls) => Some(calls.acquire().await),
        None => None,
    };
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(mall_engine::StoreError::Corrupt(format!(
            "store task failed: {e}"
        )))
    })
}

/// A value as the JSON body of an answer (stored as such by idempotency).
pub(crate) fn json_answer<T: serde::Serialize>(
    status: axum::http::StatusCode,
    value: &T,
) -> Result<(axum::http::StatusCode, serde_json::Value), crate::error::ApiError> {
    serde_json::to_value(value)
        .map(|v| (status, v))
        .map_err(|e| crate::error::ApiError::internal("serialize", e))
}

/// A writer's next batch: waits for one job, then takes whatever else has
/// queued, up to `max`; `None` once every sender is gone.
pub(crate) fn next_batch<T>(queue: &std::sync::mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = queue.recv().ok()?;
    let mut jobs = vec![first];
    while jobs.len() < max {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// A store error told to each of a batch's waiters (503 stays 503).
pub(crate) fn error_for_each(e: &mall_engine::StoreError) -> mall_engine::StoreError {
    if e.is_unavailable() {
        mall_engine::StoreError::Unavailable(e.to_string())
    } else {
        mall_engine::StoreError::Backend(e.to_string())
    }
}
