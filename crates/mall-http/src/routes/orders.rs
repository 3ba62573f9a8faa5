//! Orders: the snap-up (the hot path), history and cancel (a paid order's
//! money is refunded on cancel). Paying is in `payments`.

use super::price::{self, PriceBreakdown};
use super::{blocking, check_text, idempotency, parse_id, QueryOf, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mall_core::{
    MerchantId, Order, OrderId, OrderStatus, PaymentMethod, Quantity, Refusal, Sku, Timestamp,
    UserId, QUANTITY_MAX,
};
use mall_inventory::{Board, Command, Reply, Reserve};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const ADDRESS_CHARS_MAX: usize = 200;
pub const HISTORY_PAGE_MAX: usize = 100;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    pub sku: u64,
    /// 1 to 1,000, and within the item's per-user limit.
    pub quantity: i64,
    /// `online` (pay later; stock is held) or `cod` (cash on delivery; sold at once).
    pub payment: String,
    /// Delivery address, 1 to 200 characters.
    pub address: String,
    /// The total the client expects to pay (fen), as shown to the shopper.
    /// If the price is not that now, the answer is 409 `price_changed`
    /// with the price as it stands, and nothing is reserved.
    #[serde(default)]
    pub expected_total_fen: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub id: u64,
    pub sku: u64,
    pub user_id: u64,
    pub quantity: u32,
    /// The list price of one unit when the order was made.
    pub list_price_fen: i64,
    /// The price of one unit paid (the sale price then, or the list price).
    pub unit_price_fen: i64,
    pub amount_fen: i64,
    /// Lines, discounts with their source and funder, and the total.
    pub price: PriceBreakdown,
    /// The checkout this order is a line of, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkout_id: Option<u64>,
    /// Its part in a pre-sale, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presale: Option<super::presale::PreSaleView>,
    pub payment: String,
    /// awaiting_payment, paid, confirmed, cancelled, expired, delivered, or
    /// forfeited (a pre-sale deposit whose balance was not paid in time,
    /// or that its shopper cancelled).
    pub status: String,
    pub address: String,
    pub created_at_ms: i64,
    /// When an unpaid hold lapses (awaiting_payment only).
    pub expires_at_ms: Option<i64>,
    pub updated_at_ms: i64,
}

impl OrderView {
    /// The order as the API shows it; `board` names its item's merchant.
    pub fn new(o: &Order, board: &Board) -> OrderView {
        let merchant = board.get(o.sku).map_or(MerchantId(0), |e| e.item.merchant);
        OrderView {
            id: o.id.0,
            sku: o.sku.0,
            user_id: o.user.0,
            quantity: o.quantity.get(),
            list_price_fen: o.list_price_fen.0,
            unit_price_fen: o.unit_price_fen.0,
            amount_fen: o.amount_fen.0,
            price: price::of_order(o, merchant),
            checkout_id: super::checkouts::checkout_of(o),
            presale: o.presale.as_ref().map(super::presale::PreSaleView::from),
            payment: o.payment.as_str().into(),
            status: o.status.as_str().into(),
            address: o.address.to_string(),
            created_at_ms: o.created_at.0,
            expires_at_ms: o.expires_at.map(|t| t.0),
            updated_at_ms: o.updated_at.0,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrdersPage {
    pub orders: Vec<OrderView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Cursor from `next_before`.
    pub before: Option<String>,
    /// 1 to 100; default 50.
    pub limit: Option<usize>,
    /// Admins only: whose orders.
    pub user_id: Option<u64>,
}

fn parse_order(body: &CreateOrder) -> ApiResult<(Sku, Quantity, PaymentMethod)> {
    let quantity = u32::try_from(body.quantity)
        .ok()
        .and_then(Quantity::new)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_quantity",
                format!("quantity must be 1 to {QUANTITY_MAX}"),
            )
        })?;
    let payment = PaymentMethod::parse(&body.payment).ok_or_else(|| {
        ApiError::invalid(format!(
            "payment must be \"online\" or \"cod\", not {:?}",
            body.payment
        ))
    })?;
    check_text(&body.address, "address", 1, ADDRESS_CHARS_MAX)?;
    Ok((Sku(body.sku), quantity, payment))
}

pub(crate) async fn stored_order(state: &AppState, id: OrderId) -> ApiResult<Option<Order>> {
    let Some(_) = state.engine.reader_for_order(id) else {
        return Ok(None);
    };
    let engine = state.engine.clone();
    blocking(state, move || {
        engine
            .reader_for_order(id)
            .map_or(Ok(None), |r| r.order(id))
    })
    .await
    .map_err(|e| ApiError::store("read order", e))
}

fn order_response(state: &AppState, status: StatusCode, order: &Order, replayed: bool) -> Response {
    let mut response = (status, Json(OrderView::new(order, state.engine.board()))).into_response();
    if replayed {
        idempotency::replayed_header(&mut response);
    }
    response
}

/// Snap up an item: holds stock for an online order, or sells it for cash on delivery.
#[utoipa::path(post, path = "/v1/orders", request_body = CreateOrder, tag = "orders",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key: the same key returns the first order")),
    responses(
        (status = 201, body = OrderView),
        (status = 403, description = "sale_not_open, sale_closed, own_item", body = crate::error::ErrorBody),
        (status = 404, description = "item_not_found", body = crate::error::ErrorBody),
        (status = 409, description = "sold_out, limit_reached, insufficient_stock, price_changed (with `price`, the price as it stands)", body = crate::error::ErrorBody),
        (status = 422, description = "invalid_quantity, invalid_request, idempotency_key_reused", body = crate::error::ErrorBody),
        (status = 503, description = "overloaded, store_unavailable (Retry-After)", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<CreateOrder>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let (sku, quantity, payment) = parse_order(&body)?;
    let expected = body
        .expected_total_fen
        .map(|t| {
            (1..=mall_core::PRICE_MAX_FEN * i64::from(QUANTITY_MAX))
                .contains(&t)
                .then_some(mall_core::Fen(t))
                .ok_or_else(|| {
                    ApiError::invalid("expected_total_fen must be a positive amount in fen")
                })
        })
        .transpose()?;
    state.limiter.admit_snapup(&principal).inspect_err(|_| {
        state.metrics.record_refusal("overloaded");
    })?;
    // A merchant buying its own items would fake sales.
    if let Some(merchant) = principal.merchant {
        if state
            .engine
            .board()
            .get(sku)
            .is_some_and(|e| e.item.merchant == merchant)
        {
            return Err(ApiError::forbidden_code(
                "own_item",
                "a merchant account cannot buy its own merchant's items",
            ));
        }
    }
    let key = idempotency::key_from(&headers)?;
    let command = Command::Reserve(
        Reserve::new(
            principal.user,
            sku,
            quantity,
            payment,
            body.address.into(),
            key.map(Into::into),
            principal.is_admin(),
        )
        .expecting(expected),
    );
    let rx = state.engine.try_submit_for_sku(sku, command).map_err(|_| {
        state.metrics.record_refusal("overloaded");
        ApiError::overloaded()
    })?;
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Order { order, replayed } => {
            if !replayed {
                state.metrics.record_order(order.payment);
                // A pre-sale deposit is intent for the night (the forecast's
                // strongest signal), not a normal day's order.
                let kind = match order.presale {
                    Some(mall_core::OrderPreSale::Deposit { .. }) => mall_events::Kind::Deposit,
                    _ => mall_events::Kind::Order,
                };
                let mut e = event(&state, kind, &principal, sku, started);
                e.order = order.id.0;
                e.amount_fen = order.amount_fen.0;
                e.quantity = order.quantity.get();
                e.cod = order.payment == PaymentMethod::Cod;
                state.record(e);
            }
            Ok(order_response(
                &state,
                StatusCode::CREATED,
                &order,
                replayed,
            ))
        }
        Reply::StoredOrder(id) => {
            let order = stored_order(&state, id)
                .await?
                .ok_or_else(|| ApiError::internal("replay", "replayed order missing from store"))?;
            Ok(order_response(&state, StatusCode::CREATED, &order, true))
        }
        Reply::Refused(r) => {
            state.metrics.record_refusal(r.code());
            let mut e = event(&state, mall_events::Kind::Refusal, &principal, sku, started);
            e.reason = Some(r.code().to_string());
            state.record(e);
            let mut error = ApiError::from_refusal(&r);
            if let Refusal::PriceChanged {
                list_price_fen,
                unit_price_fen,
                ..
            } = r
            {
                let merchant = state
                    .engine
                    .board()
                    .get(sku)
                    .map_or(MerchantId(0), |e| e.item.merchant);
                error.price = Some(Box::new(price::single(
                    sku,
                    merchant,
                    quantity.get(),
                    list_price_fen.0,
                    unit_price_fen.0,
                )));
            }
            Err(error)
        }
        Reply::Item(_)
        | Reply::Coupon(_)
        | Reply::Claim { .. }
        | Reply::Claims { .. }
        | Reply::Coupons(_)
        | Reply::PreSale { .. }
        | Reply::Inactive(_)
        | Reply::Unavailable => {
            state.metrics.record_refusal("store_unavailable");
            Err(ApiError::unavailable())
        }
    }
}

/// An event of a snap-up, with its server latency so far.
fn event(
    state: &AppState,
    kind: mall_events::Kind,
    principal: &Principal,
    sku: Sku,
    started: std::time::Instant,
) -> mall_events::Event {
    let mut e = mall_events::Event::new(state.now().0, kind);
    e.user = principal.user.0;
    e.sku = sku.0;
    e.latency_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    e
}

fn visible(order: &Order, principal: &Principal) -> bool {
    principal.is_admin() || order.user == principal.user
}

/// The caller is the merchant of the order's item.
fn merchant_of_item(state: &AppState, order: &Order, principal: &Principal) -> bool {
    principal.role == mall_core::Role::Merchant
        && principal.merchant.is_some_and(|m| {
            state
                .engine
                .board()
                .get(order.sku)
                .is_some_and(|e| e.item.merchant == m)
        })
}

/// One order: the caller's own (admins: any).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = u64, Path, description = "order id")),
    responses((status = 200, body = OrderView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<OrderView>> {
    let id = OrderId(parse_id(&raw, "order id")?);
    match stored_order(&state, id).await? {
        Some(order) if visible(&order, &principal) => {
            Ok(Json(OrderView::new(&order, state.engine.board())))
        }
        _ => Err(ApiError::from_refusal(&Refusal::UnknownOrder)),
    }
}

fn parse_cursor(raw: &str) -> ApiResult<(Timestamp, OrderId)> {
    let bad = || ApiError::bad_request("invalid_query", "before must be a cursor from next_before");
    let (t, id) = raw.split_once('.').ok_or_else(bad)?;
    Ok((
        Timestamp(t.parse().map_err(|_| bad())?),
        OrderId(id.parse().map_err(|_| bad())?),
    ))
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", security(("bearer" = [])), params(HistoryQuery),
    responses((status = 200, body = OrdersPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_mine(
    State(state): State<AppState>,
    principal: Principal,
    QueryOf(q): QueryOf<HistoryQuery>,
) -> ApiResult<Json<OrdersPage>> {
    let user = match q.user_id {
        Some(u) if principal.is_admin() => UserId(u),
        Some(_) => {
            return Err(ApiError::forbidden(
                "only admins may read another user's orders",
            ))
        }
        None => principal.user,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {HISTORY_PAGE_MAX}"),
        ));
    }
    let before = q.before.as_deref().map(parse_cursor).transpose()?;
    let engine = state.engine.clone();
    let mut orders = blocking(&state, move || {
        let mut all = Vec::new();
        for reader in engine.readers() {
            all.extend(reader.orders_of_user(user, before, limit + 1)?);
        }
        Ok(all)
    })
    .await
    .map_err(|e| ApiError::store("order history", e))?;
    orders.sort_by_key(|o| std::cmp::Reverse((o.created_at, o.id)));
    let more = orders.len() > limit;
    orders.truncate(limit);
    let next_before = if more {
        orders
            .last()
            .map(|o| format!("{}.{}", o.created_at.0, o.id.0))
    } else {
        None
    };
    Ok(Json(OrdersPage {
        orders: orders
            .iter()
            .map(|o| OrderView::new(o, state.engine.board()))
            .collect(),
        next_before,
    }))
}

/// Runs a command on the order's shard and maps the reply.
pub(crate) async fn order_command(
    state: &AppState,
    id: OrderId,
    command: Command,
) -> ApiResult<Reply> {
    let rx = state
        .engine
        .try_submit_for_order(id, command)
        .ok_or_else(|| ApiError::from_refusal(&Refusal::UnknownOrder))?
        .map_err(|_| ApiError::overloaded())?;
    Ok(rx.await.unwrap_or(Reply::Unavailable))
}

fn order_json(state: &AppState, order: &Order) -> ApiResult<(StatusCode, serde_json::Value)> {
    super::json_answer(StatusCode::OK, &OrderView::new(order, state.engine.board()))
}

/// Hands back what a cancelled order had paid (nothing if it was unpaid).
/// Should this fail, the order is cancelled all the same and the refund is
/// made by a retry of the cancel or at the next start.
async fn refund_cancelled(state: &AppState, id: OrderId) -> ApiResult<()> {
    if let Some(p) = state.payments.get() {
        p.on_cancelled(id).await?;
    }
    Ok(())
}

async fn cancel_once(
    state: &AppState,
    principal: Principal,
    id: OrderId,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    // Another's order is unknown to the caller, and is never held for them.
    // The item's merchant cancels as an admin does (a pre-sale deposit is
    // then refunded, not forfeited).
    let by = match stored_order(state, id).await? {
        Some(o) if visible(&o, &principal) => (!principal.is_admin()).then_some(principal.user),
        Some(o) if merchant_of_item(state, &o, &principal) => None,
        _ => return Err(ApiError::from_refusal(&Refusal::UnknownOrder)),
    };
    match release_order(state, id, by).await? {
        Some(order) => order_json(state, &order),
        None => {
            // Not active: cancelled already (answer as done), expired, or unknown.
            match stored_order(state, id).await? {
                Some(o) if o.status == OrderStatus::Cancelled => {
                    // A retry after a refund failed half-way finishes it.
                    refund_cancelled(state, id).await?;
                    order_json(state, &o)
                }
                // A forfeited deposit: cancelled by its shopper already (or
                // lapsed); a retry makes sure its merchant was paid.
                Some(o) if o.status == OrderStatus::Forfeited => {
                    if let Some(p) = state.payments.get() {
                        p.forfeit_soon(id);
                    }
                    order_json(state, &o)
                }
                Some(o) => Err(ApiError::from_refusal(&Refusal::InvalidTransition {
                    status: o.status,
                    action: "cancelled".into(),
                })),
                _ => Err(ApiError::from_refusal(&Refusal::UnknownOrder)),
            }
        }
    }
}

/// Cancels an order for `by` (`None`: an admin, or the mall itself),
/// anything paid handed back the way it came: `Some(order)` cancelled now,
/// `None` if it was not active (cancelled, expired or unknown).
pub(crate) async fn release_order(
    state: &AppState,
    id: OrderId,
    by: Option<UserId>,
) -> ApiResult<Option<Order>> {
    // Held still before anything changes: a payment under way is waited
    // for, and none starts meanwhile, so an error answer means nothing
    // changed and a success answer says how the money went.
    let hold = match state.payments.get() {
        Some(p) => Some(p.hold_for_cancel(id).await?),
        None => None,
    };
    match order_command(state, id, Command::Release { order: id, by }).await? {
        Reply::Order { order, .. } => {
            let mut e = mall_events::Event::new(state.now().0, mall_events::Kind::Cancel);
            (e.user, e.sku, e.order, e.amount_fen) =
                (order.user.0, order.sku.0, order.id.0, order.amount_fen.0);
            state.record(e);
            if let (Some(p), Some(hold)) = (state.payments.get(), hold) {
                p.refund_cancelled(hold, &order).await;
            }
            // A checkout's line: its coupons may come back now.
            super::checkouts::line_cancelled(state, &order).await;
            Ok(Some(order))
        }
        // A pre-sale cancelled as a whole: each part's money goes back, or a
        // forfeited deposit's to its merchant.
        Reply::PreSale { deposit, balance } => {
            let mut hold = hold;
            let mut named = None;
            for part in [Some(*deposit), balance.map(|b| *b)].into_iter().flatten() {
                let mut e = mall_events::Event::new(state.now().0, mall_events::Kind::Cancel);
                (e.user, e.sku, e.order, e.amount_fen) =
                    (part.user.0, part.sku.0, part.id.0, part.amount_fen.0);
                state.record(e);
                if let Some(p) = state.payments.get() {
                    match part.status {
                        OrderStatus::Cancelled if part.id == id => {
                            if let Some(hold) = hold.take() {
                                p.refund_cancelled(hold, &part).await;
                            }
                        }
                        OrderStatus::Cancelled => p.refund_cancelled_soon(part.id),
                        OrderStatus::Forfeited => p.forfeit_soon(part.id),
                        _ => {}
                    }
                }
                if part.id == id {
                    named = Some(part);
                }
            }
            named
                .map(Some)
                .ok_or_else(|| ApiError::internal("cancel", "a pre-sale cancel lost its order"))
        }
        Reply::Inactive(_) => Ok(None),
        Reply::Refused(r) => Err(ApiError::from_refusal(&r)),
        _ => Err(ApiError::unavailable()),
    }
}

/// Cancel an order not yet delivered (awaiting payment, paid, or cash on
/// delivery): its stock goes back on sale and anything paid is refunded the
/// way it came. A delivered order is refused (`already_delivered`): after
/// delivery, money goes back only by an after-sale refund. A cancel that
/// meets a payment under way waits for it; past `payment_wait` it is
/// refused (`payment_in_progress`) with nothing changed.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = u64, Path, description = "order id")),
    responses((status = 200, body = OrderView), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "invalid_order_status, already_delivered, payment_in_progress", body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Segment(raw): Segment,
) -> Result<Response, ApiError> {
    let id = OrderId(parse_id(&raw, "order id")?);
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[b"cancel", &id.0.to_le_bytes()]);
    Ok(
        idempotency::run(&state, principal.user, key, fp, idempotency::keep, || {
            cancel_once(&state, principal, id)
        })
        .await,
    )
}
