//! Paying a checkout as a whole: one payment, by card or third party, for
//! every line order of a reserved online checkout (the payment core's
//! checkout try: one provider payment, each line's money its own order's).
//!
//! The answer is the payment and the checkout with its line orders as
//! they are now. A success normally pays every line; a line whose hold
//! lapsed before its confirm is not paid (its part of the charge goes back
//! to the shopper), and the checkout shows it expired. The lines can
//! still be paid one by one (`POST /v1/orders/{id}/payments`), but not
//! while the checkout's payment is under way.

use super::checkouts::{parse_outcome, parse_plan, view, CheckoutView};
use super::payments::PayRequest;
use super::payments::PaymentInfo;
use super::payments::{first_pending, http_status, parse_method, payments, to_completion};
use super::{blocking, idempotency, parse_id, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use mall_core::{OrderId, OrderStatus, PaymentMethod};
use mall_engine::{CheckoutRow, CheckoutState};
use mall_payments::{Method, PayError};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct CheckoutPaymentAnswer {
    pub payment: PaymentInfo,
    /// The checkout, its line orders as they are after the payment.
    pub checkout: CheckoutView,
}

/// The caller's reserved online checkout, and its line orders.
async fn payable(
    state: &AppState,
    principal: &Principal,
    id: u64,
) -> ApiResult<(CheckoutRow, Vec<OrderId>)> {
    let accounts = state.accounts.clone();
    let row = blocking(state, move || accounts.checkout(id))
        .await
        .map_err(|e| ApiError::store("reading a checkout", e))?
        .filter(|row| row.user == principal.user)
        .ok_or_else(|| {
            ApiError::not_found("checkout_not_found", format!("no checkout {id} of yours"))
        })?;
    if row.state != CheckoutState::Reserved {
        return Err(ApiError::conflict(
            "checkout_not_reserved",
            format!(
                "checkout {id} is {}: only a reserved checkout is paid",
                row.state.as_str()
            ),
        ));
    }
    if parse_plan(&row)?.payment != PaymentMethod::Online {
        return Err(ApiError::conflict(
            "invalid_order_status",
            "a cash-on-delivery checkout is paid to the courier, not online",
        ));
    }
    let orders = parse_outcome(&row)
        .orders
        .into_iter()
        .map(OrderId)
        .collect();
    Ok((row, orders))
}

/// Pay a reserved checkout with one payment. Card and third-party payments
/// go through the channel scheduler to one provider for the whole amount;
/// the answer waits a few seconds for the outcome (202 if still pending).
/// A wallet pays orders one by one. Takes an `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/checkouts/{id}/payments", request_body = PayRequest, tag = "payments",
    security(("bearer" = [])),
    params(("id" = u64, Path, description = "checkout id"),
           ("Idempotency-Key" = Option<String>, Header, description = "the same key is the same payment")),
    responses((status = 200, description = "paid", body = CheckoutPaymentAnswer),
              (status = 202, description = "a provider has not answered yet", body = CheckoutPaymentAnswer),
              (status = 404, description = "checkout_not_found", body = crate::error::ErrorBody),
              (status = 409, description = "checkout_not_reserved, invalid_order_status, hold_expired, payment_in_progress", body = crate::error::ErrorBody),
              (status = 422, description = "wallet_not_for_checkouts, no_channel_for_method", body = crate::error::ErrorBody)))]
pub async fn pay(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Segment(raw): Segment,
    StrictJson(body): StrictJson<PayRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw, "checkout id")?;
    let method = parse_method(&body.method)?;
    if method == Method::Wallet {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "wallet_not_for_checkouts",
            "a checkout is paid as a whole by card or third_party; \
             from a wallet, pay its orders one by one",
        ));
    }
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[b"pay checkout", &id.to_le_bytes(), body.method.as_bytes()]);
    // Run to completion even if the client goes away (see `payments::pay`).
    to_completion(async move {
        idempotency::run_with(
            &state,
            principal.user,
            key.clone(),
            fp,
            idempotency::keep,
            idempotency::Pending::Resume,
            || async {
                let (row, orders) = payable(&state, &principal, id).await?;
                let paying = payments(&state)?.pay_checkout(principal.user, id, orders, method);
                match paying.await {
                    Ok(payment) => {
                        let answer = CheckoutPaymentAnswer {
                            payment: PaymentInfo::from(&payment),
                            checkout: view(&state, &row).await?,
                        };
                        super::json_answer(http_status(&payment), &answer)
                    }
                    Err(e @ (PayError::NotPayable(_) | PayError::HoldExpired)) => {
                        // A retry of a payment first answered 202, whose
                        // lines have moved on since: paid if any line is.
                        match first_pending(&state, principal.user, &key, fp).await? {
                            Some(first) => resumed(&state, &row, &first).await,
                            None => Err(e.into()),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            },
        )
        .await
    })
    .await
}

/// The answer to a retried checkout payment first answered 202: 200 with
/// the payment succeeded if any of its lines is paid now, else why not.
async fn resumed(
    state: &AppState,
    row: &CheckoutRow,
    first: &mall_engine::StoredResponse,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let checkout = view(state, row).await?;
    let paid = checkout.children.iter().flat_map(|c| &c.orders).any(|o| {
        o.status == OrderStatus::Paid.as_str() || o.status == OrderStatus::Delivered.as_str()
    });
    if !paid {
        return Err(PayError::NotPayable("no line of it is paid").into());
    }
    let mut payment: serde_json::Value = serde_json::from_str::<serde_json::Value>(&first.body)
        .map(|b| b["payment"].clone())
        .unwrap_or_default();
    payment["status"] = "succeeded".into();
    let mut body = serde_json::json!({ "checkout": checkout });
    body["payment"] = payment;
    Ok((StatusCode::OK, body))
}
