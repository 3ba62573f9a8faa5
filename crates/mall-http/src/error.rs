//! API errors: every failure leaves as the right status with a JSON body
//! `{"error": {"code": "...", "message": "..."}}` and changes nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mall_core::Refusal;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine code, part of the API contract.
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before retrying (503, 429).
    pub retry_after_s: Option<u32>,
    /// The price as it stands (409 `price_changed`).
    pub price: Option<Box<crate::routes::price::PriceBreakdown>>,
    /// A checkout's line that was refused (index into its lines).
    pub line: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `sold_out`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// `price_changed` only: the price as it stands now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<Box<crate::routes::price::PriceBreakdown>>,
    /// A checkout refused: the line (index into its lines) that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            price: None,
            line: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn forbidden_code(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn overloaded() -> ApiError {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the mall is at capacity; try again in a second",
            )
        }
    }

    pub fn unavailable() -> ApiError {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the request could not be made durable and was not acknowledged; retry with the same Idempotency-Key",
            )
        }
    }

    /// A store that failed: 503 `store_unavailable` (with Retry-After) when
    /// it is away, which a retry survives; otherwise an operating error.
    pub fn store(context: &str, error: mall_engine::StoreError) -> ApiError {
        if error.is_unavailable() {
            tracing::warn!(%error, "{context}: the store is unavailable");
            ApiError::unavailable()
        } else {
            ApiError::internal(context, error)
        }
    }

    /// An operating error: logged here, where it is handled; the client
    /// learns only that the server failed.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    pub fn from_refusal(r: &Refusal) -> ApiError {
        let status = match r {
            Refusal::SoldOut
            | Refusal::PriceChanged { .. }
            | Refusal::InsufficientStock { .. }
            | Refusal::LimitReached { .. }
            | Refusal::InvalidTransition { .. }
            | Refusal::HoldExpired
            | Refusal::StockBelowCommitted { .. }
            | Refusal::ItemChanged
            | Refusal::ClaimNotUsable
            | Refusal::NotPreSale
            | Refusal::PreSaleOnlineOnly
            | Refusal::BalanceNotPaid => StatusCode::CONFLICT,
            Refusal::SaleNotOpen { .. }
            | Refusal::SaleClosed { .. }
            | Refusal::BalanceNotOpen { .. }
            | Refusal::BalanceClosed { .. } => StatusCode::FORBIDDEN,
            Refusal::UnknownItem | Refusal::UnknownOrder | Refusal::UnknownCoupon => {
                StatusCode::NOT_FOUND
            }
            Refusal::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, r.code(), r.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                price: self.price,
                line: self.line,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// A code stored as text (a checkout's failure) as the stable code it
/// was: one of the refusal codes the API counts.
pub fn static_code(code: &str) -> &'static str {
    crate::metrics::REFUSAL_CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("checkout_refused")
}

/// The code of an error that carries only its status (see `harden`).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "route_not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid_request",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
