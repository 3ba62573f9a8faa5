//! Pre-sales over HTTP. A deposit is a snap-up of a pre-sale item
//! (`POST /v1/orders`: the order's amount is the deposit, and it holds
//! its units until the balance window ends). In the balance window the
//! shopper asks for the balance (`POST /v1/orders/{id}/balance`): one
//! balance order per deposit, paid like any order. Delivery delivers both
//! and settles both to the merchant. A cancel names either order and
//! cancels the pre-sale as a whole: by its shopper before the balance is
//! paid, the deposit is forfeited to the merchant; by the merchant or an
//! admin, it is refunded.

use super::orders::{order_command, stored_order};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_id, Segment};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mall_core::{Order, OrderId, OrderPreSale, OrderStatus, Refusal};
use mall_inventory::{Command, Reply};
use serde::Serialize;
use utoipa::ToSchema;

/// An order's part in a pre-sale.
#[derive(Serialize, ToSchema)]
pub struct PreSaleView {
    /// `deposit` (this order holds the units; its amount is the deposit)
    /// or `balance` (the rest of the price; it holds no stock).
    pub part: String,
    /// Deposit: what the balance costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_fen: Option<i64>,
    /// Deposit: the balance is paid in `[balance_opens_at_ms, balance_closes_at_ms)`;
    /// unpaid then, the deposit is forfeited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_opens_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_closes_at_ms: Option<i64>,
    /// Balance: its deposit order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deposit_order: Option<u64>,
}

impl From<&OrderPreSale> for PreSaleView {
    fn from(p: &OrderPreSale) -> PreSaleView {
        match *p {
            OrderPreSale::Deposit {
                balance_fen,
                balance_opens_at,
                balance_closes_at,
            } => PreSaleView {
                part: "deposit".into(),
                balance_fen: Some(balance_fen.0),
                balance_opens_at_ms: Some(balance_opens_at.0),
                balance_closes_at_ms: Some(balance_closes_at.0),
                deposit_order: None,
            },
            OrderPreSale::Balance { deposit } => PreSaleView {
                part: "balance".into(),
                balance_fen: None,
                balance_opens_at_ms: None,
                balance_closes_at_ms: None,
                deposit_order: Some(deposit.0),
            },
        }
    }
}

/// The balance order of a deposit that has one (asked, never made here:
/// only for a deposit delivered or past its window, which cannot make one).
async fn existing_balance(state: &AppState, deposit: &Order) -> ApiResult<Option<Order>> {
    let ask = Command::Balance {
        deposit: deposit.id,
        user: deposit.user,
    };
    match order_command(state, deposit.id, ask).await? {
        Reply::Order { order, .. } if order.is_balance() => Ok(Some(order)),
        Reply::Order { .. } | Reply::Refused(_) | Reply::Inactive(_) => Ok(None),
        _ => Err(ApiError::unavailable()),
    }
}

/// Ask for the balance of your paid pre-sale deposit: its balance order
/// (made once; asked again, the same order), payable like any order
/// (`POST /v1/orders/{id}/payments`) until the balance window closes.
#[utoipa::path(post, path = "/v1/orders/{id}/balance", tag = "orders", security(("bearer" = [])),
    params(("id" = u64, Path, description = "the deposit order's id")),
    responses((status = 201, description = "the balance order, made now", body = super::orders::OrderView),
              (status = 200, description = "the balance order, made before", body = super::orders::OrderView),
              (status = 403, description = "balance_not_open, balance_closed (the deposit was forfeited)", body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "not_a_presale (not a paid pre-sale deposit)", body = crate::error::ErrorBody),
              (status = 503, description = "overloaded, store_unavailable", body = crate::error::ErrorBody)))]
pub async fn balance(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> Result<Response, ApiError> {
    let id = OrderId(parse_id(&raw, "order id")?);
    let ask = Command::Balance {
        deposit: id,
        user: principal.user,
    };
    match order_command(&state, id, ask).await? {
        Reply::Order { order, replayed } => {
            let status = if replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let view = super::orders::OrderView::new(&order, state.engine.board());
            Ok((status, Json(view)).into_response())
        }
        Reply::Refused(r) => Err(ApiError::from_refusal(&r)),
        // No longer active: say why, from the store.
        Reply::Inactive(_) => match stored_order(&state, id).await? {
            Some(o) if o.user == principal.user => Err(ApiError::from_refusal(&match o.presale {
                Some(OrderPreSale::Deposit {
                    balance_closes_at, ..
                }) if o.status == OrderStatus::Forfeited => Refusal::BalanceClosed {
                    closes_at: balance_closes_at,
                },
                _ => Refusal::NotPreSale,
            })),
            _ => Err(ApiError::from_refusal(&Refusal::UnknownOrder)),
        },
        _ => Err(ApiError::unavailable()),
    }
}

/// Delivers a pre-sale named by either of its orders: the deposit order
/// (and with it the balance order) is delivered, then each one's money is
/// settled to the merchant. Refused `balance_not_paid` before the balance
/// is paid. Repeatable: what was settled before is not settled again.
pub(crate) async fn deliver(state: &AppState, named: &Order) -> ApiResult<u64> {
    let payments = super::payments::payments(state)?;
    let deposit = match named.presale {
        Some(OrderPreSale::Balance { deposit }) => stored_order(state, deposit)
            .await?
            .ok_or_else(|| ApiError::internal("deliver", "a balance order without its deposit"))?,
        _ => named.clone(),
    };
    let mut moved = 0;
    match payments.settle(deposit.id).await {
        Ok(amount) => moved += amount,
        Err(mall_payments::PayError::AlreadySettled) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(balance) = existing_balance(state, &deposit).await? else {
        return Err(ApiError::from_refusal(&Refusal::BalanceNotPaid));
    };
    match payments.settle(balance.id).await {
        Ok(amount) => moved += amount,
        // Both settled before: a repeat of the whole delivery.
        Err(mall_payments::PayError::AlreadySettled) if moved == 0 => {
            return Err(mall_payments::PayError::AlreadySettled.into())
        }
        Err(mall_payments::PayError::AlreadySettled) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(moved)
}
