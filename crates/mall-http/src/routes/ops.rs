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
        super::accounts::register, super::accounts::login, super::accounts::admin_create_user,
        super::accounts::bulk_create, super::accounts::create_merchant, super::accounts::list_merchants,
        super::items::list, super::items::get_one, super::items::create, super::items::update,
        super::orders::create, super::orders::list_mine, super::orders::get_one, super::orders::cancel,
        super::wishlist::favorite, super::wishlist::unfavorite, super::wishlist::favorites,
        super::wishlist::put_in_cart, super::wishlist::cart,
        super::payments::pay, super::payments::top_up, super::payments::wallet,
        super::payments::statement, super::payments::refund, super::payments::deliver,
        super::payments::cod_collected, super::payments::callback, super::payments::channels,
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

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

/// Prometheus metrics (admin token).
#[utoipa::path(get, path = "/metrics", tag = "ops", security(("bearer" = [])),
    responses((status = 200, content_type = "text/plain", body = String), (status = 403, body = crate::error::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<impl IntoResponse> {
    principal.require_admin()?;
    let mut body = state.metrics.render(&state.engine, state.sessions.len());
    if let Some(p) = state.payments.get() {
        crate::metrics::render_payments(&mut body, p);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
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
