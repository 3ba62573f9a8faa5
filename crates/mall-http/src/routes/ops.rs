//! Operations: health, metrics, the OpenAPI document, and the answers for
//! unknown routes.

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "mall", description = "The flash-sale platform for Singles' Day. Errors are `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        healthz, metrics, super::dashboard::current, super::dashboard::stream,
        super::accounts::register, super::accounts::login, super::accounts::logout,
        super::accounts::revoke_sessions, super::accounts::admin_create_user,
        super::accounts::bulk_create, super::accounts::create_merchant, super::accounts::list_merchants,
        super::items::list, super::items::get_one, super::items::create, super::items::update,
        super::orders::create, super::orders::list_mine, super::orders::get_one, super::orders::cancel, super::presale::balance,
        super::checkouts::create, super::checkouts::list_mine, super::checkouts::get_one,
        super::checkout_pay::pay,
        super::wishlist::favorite, super::wishlist::unfavorite, super::wishlist::favorites,
        super::wishlist::put_in_cart, super::wishlist::cart,
        super::promotions::create, super::promotions::list, super::promotions::end,
        super::promotions::quote, super::coupons::create, super::coupons::list,
        super::coupons::get_one, super::coupons::claim, super::coupons::mine,
        super::payments::pay, super::payments::top_up, super::payments::wallet,
        super::payments::statement, super::payments::refund, super::payments::deliver,
        super::payments::cod_collected, super::payments::callback, super::payments::channels,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth, &CommonResponses),
)]
pub struct ApiDoc;

/// The answers every route of a kind can give, added to each operation
/// that does not document them itself: who is calling (401, 403, 429 for
/// token routes), what was sent (400 for paths, queries and bodies; 413,
/// 415 and 422 for JSON bodies), and the server's state (503). Each is the
/// JSON error shape.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_params = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ]
            .into_iter()
            .flatten()
            {
                let bearer = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = op.request_body.is_some();
                let has_query = op.parameters.as_ref().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query)
                    })
                });
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                };
                if bearer {
                    add("401", "unauthenticated, invalid_token");
                    add("403", "forbidden: the caller's role may not do this");
                    add("429", "rate_limited (Retry-After)");
                }
                if has_path_params || has_query || has_body {
                    add(
                        "400",
                        "invalid_path, invalid_query, invalid_id, malformed_json, unreadable_body, invalid_idempotency_key",
                    );
                }
                if has_body {
                    add("413", "body_too_large");
                    add("415", "unsupported_media_type: send application/json");
                    add("422", "invalid_request: the body does not fit the schema");
                }
                if has_path_params {
                    add("404", "not found");
                }
                add(
                    "503",
                    "overloaded, store_unavailable, busy, payments_unavailable (Retry-After)",
                );
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub shards: usize,
    pub items: usize,
}

/// Liveness: the server answers and its shards are running.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        shards: state.engine.shard_count(),
        items: state.engine.board().len(),
    })
}

/// Prometheus metrics (admin token), in OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(("bearer" = [])),
    responses((status = 200, content_type = "application/openmetrics-text", body = String), (status = 403, body = crate::error::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<impl IntoResponse> {
    principal.require_admin()?;
    let listeners = state.listeners.lock().unwrap_or_else(|p| p.into_inner());
    let named: Vec<_> = listeners.iter().map(|(n, s)| (*n, s.as_ref())).collect();
    let body = crate::metrics::render(
        &state.metrics,
        &state.engine,
        state.sessions.len(),
        state.payments.get(),
        &named,
        state.cluster.get().map(|n| n.as_ref()),
    );
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body))
}

pub async fn openapi() -> impl IntoResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::internal("openapi", e).into_response(),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route; see /v1/openapi.json")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
