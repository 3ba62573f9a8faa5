//! Money: paying an order, wallets (top-up, balance, statement), refunds,
//! settlement to merchants on delivery, cash-on-delivery collection,
//! providers' signed callbacks, and the channels' live state. The work is
//! `mall-payments`'; this module parses, authorizes and answers.

use super::orders::OrderView;
use super::{idempotency, parse_id, QueryOf, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mall_core::{OrderId, Role};
use mall_payments::{Method, PayError, PayStatus, PaymentView, Payments};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const STATEMENT_PAGE_MAX: usize = 100;

impl From<PayError> for ApiError {
    fn from(e: PayError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        ApiError {
            retry_after_s: retry,
            ..ApiError::new(status, e.code(), e.to_string())
        }
    }
}

pub(crate) fn payments(state: &AppState) -> ApiResult<&Payments> {
    state.payments.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments_unavailable",
            "the payment service is not running on this server",
        )
    })
}

pub(super) fn parse_method(raw: &str) -> ApiResult<Method> {
    Method::parse(raw).ok_or_else(|| {
        ApiError::invalid(format!(
            "method must be wallet, card or third_party, not {raw:?}"
        ))
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// `wallet` (settles at once), `card` or `third_party` (through a channel).
    pub method: String,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentInfo {
    /// `succeeded`, or `pending` while a provider has not answered yet.
    pub status: String,
    pub method: String,
    pub amount_fen: u64,
    /// The ledger transfer of the (last) attempt.
    pub attempt: u64,
    pub channel: Option<String>,
}

/// 200 when the payment is done, 202 while a provider has not answered.
pub(super) fn http_status(view: &PaymentView) -> StatusCode {
    match view.status {
        PayStatus::Succeeded => StatusCode::OK,
        PayStatus::Pending => StatusCode::ACCEPTED,
    }
}

impl From<&PaymentView> for PaymentInfo {
    fn from(p: &PaymentView) -> PaymentInfo {
        PaymentInfo {
            status: p.status.as_str().into(),
            method: p.method.as_str().into(),
            amount_fen: p.amount_fen,
            attempt: p.attempt,
            channel: p.channel.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PaymentAnswer {
    pub payment: PaymentInfo,
    pub order: OrderView,
}

/// Pay an order awaiting payment. Wallet payments settle at once; card and
/// third-party payments go through the channel scheduler to a provider and
/// the answer waits a few seconds for its outcome (202 if still pending).
#[utoipa::path(post, path = "/v1/orders/{id}/payments", request_body = PayRequest, tag = "payments",
    security(("bearer" = [])),
    params(("id" = u64, Path, description = "order id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 200, body = PaymentAnswer), (status = 202, body = PaymentAnswer),
              (status = 402, description = "insufficient_funds, payment_declined", body = crate::error::ErrorBody),
              (status = 409, description = "hold_expired, invalid_order_status, payment_in_progress", body = crate::error::ErrorBody),
              (status = 503, description = "payment_queue_full, payment_queue_timeout", body = crate::error::ErrorBody)))]
pub async fn pay(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Segment(raw): Segment,
    StrictJson(body): StrictJson<PayRequest>,
) -> Result<Response, ApiError> {
    let id = OrderId(parse_id(&raw, "order id")?);
    let method = parse_method(&body.method)?;
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[b"pay", &id.0.to_le_bytes(), body.method.as_bytes()]);
    // Run to completion even if the client goes away: the payment goes on
    // without it, and its answer must be stored for the retry to find.
    to_completion(async move {
        idempotency::run_with(
            &state,
            principal.user,
            key.clone(),
            fp,
            idempotency::keep,
            idempotency::Pending::Resume,
            || async {
                match payments(&state)?.pay(principal.user, id, method).await {
                    Ok((view, order)) => super::json_answer(
                        http_status(&view),
                        &PaymentAnswer {
                            payment: PaymentInfo::from(&view),
                            order: OrderView::new(&order, state.engine.board()),
                        },
                    ),
                    Err(PayError::NotPayable(status)) => {
                        // A retry of a payment first answered 202: the same
                        // payment, whose outcome the order shows. An answer
                        // never contradicts it.
                        match first_pending(&state, principal.user, &key, fp).await? {
                            Some(first) => resumed_answer(&state, id, Some(&first)).await,
                            None => Err(PayError::NotPayable(status).into()),
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

/// The first answer under `key`, if it was 202 (pending) to this same
/// request: read under the key's slot, so it is stored by now. A retry that
/// finds the payment has moved on answers with its outcome instead.
pub(super) async fn first_pending(
    state: &AppState,
    user: mall_core::UserId,
    key: &Option<String>,
    fp: u64,
) -> ApiResult<Option<mall_engine::StoredResponse>> {
    match key {
        Some(k) => Ok(idempotency::stored(state, user, k)
            .await?
            .filter(|s| s.status == 202 && s.fingerprint == fp)),
        None => Ok(None),
    }
}

/// Runs a request's work in its own task, so that a client that hangs up
/// (a timeout, a dropped connection) never cuts it off half-way: what it
/// started finishes, and its answer is stored for the retry.
pub(super) async fn to_completion(
    work: impl std::future::Future<Output = Response> + Send + 'static,
) -> Result<Response, ApiError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ApiError::internal("request task", e))
}

/// The answer to a retried payment whose first answer was 202 and whose
/// order has moved on since: paid (200, the payment succeeded), or what
/// the order is now.
async fn resumed_answer(
    state: &AppState,
    id: OrderId,
    first: Option<&mall_engine::StoredResponse>,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let order = super::orders::stored_order(state, id)
        .await?
        .ok_or_else(|| ApiError::from(PayError::UnknownOrder))?;
    if !matches!(
        order.status,
        mall_core::OrderStatus::Paid | mall_core::OrderStatus::Delivered
    ) {
        return Err(PayError::NotPayable(order.status.as_str()).into());
    }
    let mut payment: serde_json::Value = first
        .and_then(|f| serde_json::from_str::<serde_json::Value>(&f.body).ok())
        .map(|b| b["payment"].clone())
        .unwrap_or_default();
    payment["status"] = "succeeded".into();
    let mut body = serde_json::json!({ "order": OrderView::new(&order, state.engine.board()) });
    body["payment"] = payment;
    Ok((StatusCode::OK, body))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    /// Fen, 1 to the configured maximum (¥50,000 by default).
    pub amount_fen: i64,
    /// `card` or `third_party`.
    pub method: String,
}

#[derive(Serialize, ToSchema)]
pub struct WalletAnswer {
    /// Posted credits minus posted debits, in fen.
    pub balance_fen: i64,
    /// Reserved by payments under way.
    pub pending_out_fen: u64,
    /// Top-ups under way.
    pub pending_in_fen: u64,
}

#[derive(Serialize, ToSchema)]
pub struct TopUpAnswer {
    pub payment: PaymentInfo,
    pub wallet: WalletAnswer,
}

async fn wallet_answer(state: &AppState, principal: &Principal) -> ApiResult<WalletAnswer> {
    let w = payments(state)?.wallet(principal.user).await?;
    Ok(WalletAnswer {
        balance_fen: i64::try_from(w.balance_fen).unwrap_or(i64::MAX),
        pending_out_fen: w.pending_out_fen,
        pending_in_fen: w.pending_in_fen,
    })
}

/// Top up your wallet through a payment channel.
#[utoipa::path(post, path = "/v1/wallet/top-ups", request_body = TopUpRequest, tag = "payments",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 200, body = TopUpAnswer), (status = 202, body = TopUpAnswer),
              (status = 422, description = "invalid_amount, no_channel_for_method", body = crate::error::ErrorBody)))]
pub async fn top_up(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<TopUpRequest>,
) -> Result<Response, ApiError> {
    let method = parse_method(&body.method)?;
    let amount = u64::try_from(body.amount_fen)
        .map_err(|_| ApiError::invalid("amount_fen must be positive"))?;
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[b"top-up", &amount.to_le_bytes(), body.method.as_bytes()]);
    to_completion(async move {
        idempotency::run(
            &state,
            principal.user,
            key,
            fp,
            idempotency::keep,
            || async {
                let view = payments(&state)?
                    .top_up(principal.user, amount, method)
                    .await?;
                super::json_answer(
                    http_status(&view),
                    &TopUpAnswer {
                        payment: PaymentInfo::from(&view),
                        wallet: wallet_answer(&state, &principal).await?,
                    },
                )
            },
        )
        .await
    })
    .await
}

/// Your wallet's balance.
#[utoipa::path(get, path = "/v1/wallet", tag = "payments", security(("bearer" = [])),
    responses((status = 200, body = WalletAnswer)))]
pub async fn wallet(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<WalletAnswer>> {
    Ok(Json(wallet_answer(&state, &principal).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// Lines older than this `seq` (from the previous page's `next_before`).
    pub before: Option<String>,
    /// 1 to 100, default 50.
    pub limit: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StatementLineView {
    pub seq: u64,
    pub transfer: u64,
    /// top_up, wallet_payment, refund, late_refund, ...
    pub kind: String,
    /// single, pending, post or void.
    pub mode: String,
    /// Positive into the wallet, negative out of it.
    pub amount_fen: i64,
    /// For pending transfers: pending, posted, voided or expired.
    pub state: Option<String>,
    /// The order (or shopper, for top-ups) the transfer is for.
    pub reference: u64,
    pub at_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct StatementPage {
    pub lines: Vec<StatementLineView>,
    pub next_before: Option<String>,
}

/// Your wallet's statement, newest first.
#[utoipa::path(get, path = "/v1/wallet/statement", tag = "payments", security(("bearer" = [])),
    params(StatementQuery), responses((status = 200, body = StatementPage)))]
pub async fn statement(
    State(state): State<AppState>,
    principal: Principal,
    QueryOf(q): QueryOf<StatementQuery>,
) -> ApiResult<Json<StatementPage>> {
    let before = q.before.map(|b| parse_id(&b, "before")).transpose()?;
    let limit = match q.limit {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=STATEMENT_PAGE_MAX).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be 1 to {STATEMENT_PAGE_MAX}"),
                )
            })?,
    };
    let lines = payments(&state)?
        .statement(principal.user, before, limit)
        .await?;
    let next_before = (lines.len() == limit)
        .then(|| lines.last().map(|l| l.seq.to_string()))
        .flatten();
    Ok(Json(StatementPage {
        lines: lines
            .into_iter()
            .map(|l| StatementLineView {
                seq: l.seq,
                transfer: l.transfer,
                kind: l.kind.into(),
                mode: l.mode.into(),
                amount_fen: i64::try_from(l.amount_fen).unwrap_or(0),
                state: l.state.map(Into::into),
                reference: l.reference,
                at_ms: l.at_ms,
            })
            .collect(),
        next_before,
    }))
}

/// Admins act on every order; a merchant on orders of its own items.
async fn require_order_manager(
    state: &AppState,
    principal: &Principal,
    id: OrderId,
) -> ApiResult<()> {
    if principal.is_admin() {
        return Ok(());
    }
    let owns = match (principal.role, principal.merchant) {
        (Role::Merchant, Some(m)) => super::orders::stored_order(state, id)
            .await?
            .and_then(|o| state.engine.board().get(o.sku))
            .is_some_and(|e| e.item.merchant == m),
        _ => false,
    };
    if owns {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only an admin or the item's merchant may do this",
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Fen; omit to refund everything not yet refunded.
    pub amount_fen: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct RefundAnswer {
    pub refund: u64,
    pub amount_fen: u64,
    pub refunded_total_fen: u64,
    pub paid_fen: u64,
}

/// Refund a paid order, in full or in part, back the way the money came.
/// Needs an Idempotency-Key: the key names the refund.
#[utoipa::path(post, path = "/v1/orders/{id}/refunds", request_body = RefundRequest, tag = "payments",
    security(("bearer" = [])),
    params(("id" = u64, Path, description = "order id"),
           ("Idempotency-Key" = String, Header, description = "Names the refund; required")),
    responses((status = 200, body = RefundAnswer),
              (status = 409, description = "refund_exceeds_paid, not_paid", body = crate::error::ErrorBody)))]
pub async fn refund(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Segment(raw): Segment,
    StrictJson(body): StrictJson<RefundRequest>,
) -> Result<Response, ApiError> {
    let id = OrderId(parse_id(&raw, "order id")?);
    let amount = body
        .amount_fen
        .map(|a| u64::try_from(a).ok().filter(|a| *a > 0))
        .map(|a| a.ok_or_else(|| ApiError::invalid("amount_fen must be positive")))
        .transpose()?;
    let key = idempotency::key_from(&headers)?.ok_or_else(|| {
        ApiError::bad_request(
            "idempotency_key_required",
            "a refund needs an Idempotency-Key header",
        )
    })?;
    require_order_manager(&state, &principal, id).await?;
    let refund_key = mall_core::fingerprint(&[b"refund", key.as_bytes()]);
    let fp = mall_core::fingerprint(&[
        b"refund",
        &id.0.to_le_bytes(),
        &body.amount_fen.unwrap_or(0).to_le_bytes(),
    ]);
    Ok(idempotency::run(
        &state,
        principal.user,
        Some(key),
        fp,
        idempotency::keep,
        || async {
            let r = payments(&state)?.refund(id, amount, refund_key).await?;
            super::json_answer(
                StatusCode::OK,
                &RefundAnswer {
                    refund: r.refund,
                    amount_fen: r.amount_fen,
                    refunded_total_fen: r.refunded_total_fen,
                    paid_fen: r.paid_fen,
                },
            )
        },
    )
    .await)
}

#[derive(Serialize, ToSchema)]
pub struct SettledAnswer {
    pub order: u64,
    /// Fen moved (out of escrow, or from the courier's collection).
    pub amount_fen: u64,
    /// Delivery: the platform's share of the order's discounts, paid to the
    /// merchant with the settlement (a cart checkout's line with a
    /// platform promotion or coupon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_share_fen: Option<u64>,
}

/// The order was delivered: its escrowed money, less refunds, goes to the merchant.
#[utoipa::path(post, path = "/v1/admin/orders/{id}/deliver", tag = "admin", security(("bearer" = [])),
    params(("id" = u64, Path, description = "order id")),
    responses((status = 200, body = SettledAnswer),
              (status = 409, description = "not_paid, already_settled", body = crate::error::ErrorBody)))]
pub async fn deliver(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<SettledAnswer>> {
    let id = OrderId(parse_id(&raw, "order id")?);
    require_order_manager(&state, &principal, id).await?;
    let order = super::orders::stored_order(&state, id).await?;
    // The platform's share, read first: a checkout that cannot be read
    // refuses the delivery before anything moves.
    let share = match &order {
        Some(o) => super::checkouts::platform_share(&state, o).await?,
        None => 0,
    };
    let settled = match &order {
        Some(o) if o.presale.is_some() => super::presale::deliver(&state, o).await,
        _ => payments(&state)?.settle(id).await.map_err(ApiError::from),
    };
    // The platform's share of the discounts goes with the settlement (a
    // repeat of a delivery that was cut off half-way finishes it); none
    // for a line refunded in full.
    let settled_now =
        settled.is_ok() || settled.as_ref().is_err_and(|e| e.code == "already_settled");
    let platform_share_fen = if share > 0 && settled_now {
        match payments(&state)?.pay_platform_share(id, share).await {
            Ok(paid) => Some(paid),
            Err(mall_payments::PayError::NotPaid) => Some(0),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    Ok(Json(SettledAnswer {
        order: id.0,
        amount_fen: settled?,
        platform_share_fen,
    }))
}

/// Admin (courier desk): cash was collected for a cash-on-delivery order.
#[utoipa::path(post, path = "/v1/admin/orders/{id}/cod-collected", tag = "admin", security(("bearer" = [])),
    params(("id" = u64, Path, description = "order id")),
    responses((status = 200, body = SettledAnswer),
              (status = 409, description = "invalid_order_status", body = crate::error::ErrorBody)))]
pub async fn cod_collected(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<SettledAnswer>> {
    principal.require_admin()?;
    let id = OrderId(parse_id(&raw, "order id")?);
    let amount = payments(&state)?.cod_collected(id).await?;
    Ok(Json(SettledAnswer {
        order: id.0,
        amount_fen: amount,
        platform_share_fen: None,
    }))
}

/// A provider's signed callback. Authenticated by its HMAC-SHA256
/// signature (header `X-Mall-Signature`), not by a bearer token.
#[utoipa::path(post, path = "/v1/channels/{name}/callback", tag = "payments",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, description = "taken"),
              (status = 401, description = "signature_missing, signature_mismatch, signature_stale", body = crate::error::ErrorBody),
              (status = 409, description = "callback_replayed", body = crate::error::ErrorBody)))]
pub async fn callback(
    State(state): State<AppState>,
    Segment(name): Segment,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(crate::json::body_rejection)?;
    let signature = headers
        .get(mall_router::signature::HEADER)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = payments(&state)?.callback(&name, signature, &body).await {
        if crate::log_gate() {
            tracing::warn!(channel = %name, code = e.code(), "refused a provider callback");
        }
        return Err(e.into());
    }
    Ok((StatusCode::OK, Json(serde_json::json!({"ok": true}))).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct ChannelView {
    pub name: String,
    /// closed, open or half_open.
    pub circuit: String,
    pub capacity_per_s: u32,
    pub max_concurrency: u32,
    pub in_flight: u32,
    pub rate_per_s: f64,
    pub success_rate: f64,
    pub p99_latency_ms: f64,
    pub timeouts: u64,
    pub dispatched_total: u64,
    pub succeeded_total: u64,
    pub failed_total: u64,
    pub timed_out_total: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelsAnswer {
    pub channels: Vec<ChannelView>,
    /// Payments waiting for a channel with room.
    pub queue_depth: usize,
}

pub fn channel_views(p: &Payments) -> ChannelsAnswer {
    ChannelsAnswer {
        channels: p
            .channels()
            .into_iter()
            .map(|c| ChannelView {
                name: c.name,
                circuit: c.circuit.as_str().into(),
                capacity_per_s: c.capacity_per_s,
                max_concurrency: c.max_concurrency,
                in_flight: c.in_flight,
                rate_per_s: c.rate_per_s,
                success_rate: c.success_rate,
                p99_latency_ms: c.p99_latency_ms,
                timeouts: c.timeouts,
                dispatched_total: c.dispatched_total,
                succeeded_total: c.succeeded_total,
                failed_total: c.failed_total,
                timed_out_total: c.timed_out_total,
            })
            .collect(),
        queue_depth: p.queue_depth(),
    }
}

/// Admin: each payment channel's live rate, health, circuit and the queue.
#[utoipa::path(get, path = "/v1/admin/channels", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = ChannelsAnswer)))]
pub async fn channels(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<ChannelsAnswer>> {
    principal.require_admin()?;
    Ok(Json(channel_views(payments(&state)?)))
}
