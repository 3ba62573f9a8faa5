//! The live dashboard: the page at `/` (embedded in the binary), the
//! snapshot it shows (`GET /v1/dashboard`) and a stream of snapshots
//! (`GET /v1/dashboard/stream`, Server-Sent Events, twice a second).
//! Snapshots are for operators: admin token.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use mall_core::Sku;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

const PAGE: &str = include_str!("../dashboard/index.html");
/// Seconds of per-second series in a snapshot.
pub const SERIES_S: usize = 300;
/// How often the stream sends a snapshot.
pub const STREAM_EVERY: Duration = Duration::from_millis(500);

/// The dashboard page: self-contained (no external resources).
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// Everything the dashboard shows, now.
pub fn snapshot(state: &AppState) -> Value {
    let now = state.now().0;
    let engine = &state.engine;
    let mut queues = serde_json::Map::new();
    for shard in 0..engine.shard_count() {
        if let Some(handle) = engine.local(shard) {
            queues.insert(format!("shard-{shard}"), json!(handle.queue_depth()));
        }
    }
    if let Some(ledger) = engine.ledger() {
        queues.insert("ledger".into(), json!(ledger.queue_depth()));
    }
    let channels: Vec<Value> = state.payments.get().map_or_else(Vec::new, |p| {
        queues.insert("payments".into(), json!(p.queue_depth()));
        p.channels()
            .into_iter()
            .map(|c| {
                json!({"name": c.name, "circuit": c.circuit.as_str(), "rate_per_s": c.rate_per_s,
                       "success_rate": c.success_rate, "p99_latency_ms": c.p99_latency_ms,
                       "in_flight": c.in_flight, "capacity_per_s": c.capacity_per_s,
                       "timeouts": c.timeouts})
            })
            .collect()
    });
    let Some(log) = state.events.get() else {
        return json!({"now_ms": now, "channels": channels, "queues": queues, "events": false});
    };
    let live = log.live().snapshot(now, SERIES_S);
    let board = engine.board();
    let title = |sku: u64| board.get(Sku(sku)).map(|e| e.item.title.clone());
    let top_items: Vec<Value> = live
        .top_items
        .iter()
        .map(|t| json!({"sku": t.sku, "title": title(t.sku), "orders": t.orders, "gmv_fen": t.gmv_fen}))
        .collect();
    // The hottest items (most orders) and how far they have sold out.
    let hot_items: Vec<Value> = live
        .top_items
        .iter()
        .filter_map(|t| board.get(Sku(t.sku)))
        .map(|e| {
            let (available, held, sold) = e.live.load();
            json!({"sku": e.item.sku.0, "title": e.item.title, "stock": e.item.stock_total,
                   "sold": sold, "held": held, "available": available})
        })
        .collect();
    json!({
        "now_ms": now,
        "gmv_fen_total": live.totals.gmv_fen,
        "orders_total": live.totals.orders,
        "paid_total": live.totals.paid,
        "refusals_total": live.totals.refusals,
        "series": live.series,
        "minutes": live.minutes,
        "refusals": live.refusals,
        "funnel": live.funnel,
        "top_items": top_items,
        "hot_items": hot_items,
        "channels": channels,
        "queues": queues,
        "events_dropped": log.dropped_views(),
        "forecast": state.forecast.get(),
    })
}

/// Admin: the dashboard's figures now.
#[utoipa::path(get, path = "/v1/dashboard", tag = "ops", security(("bearer" = [])),
    responses((status = 200, description = "the snapshot the dashboard shows")))]
pub async fn current(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    principal.require_admin()?;
    Ok(Json(snapshot(&state)))
}

/// Admin: a snapshot twice a second, as Server-Sent Events (`event: snapshot`).
#[utoipa::path(get, path = "/v1/dashboard/stream", tag = "ops", security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", description = "snapshots")))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<impl IntoResponse> {
    principal.require_admin()?;
    let mut every = tokio::time::interval(STREAM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    Ok(Sse::new(Snapshots { state, every }).keep_alive(KeepAlive::default()))
}

/// A snapshot at every tick, for as long as the client listens.
struct Snapshots {
    state: AppState,
    every: tokio::time::Interval,
}

impl futures_core::Stream for Snapshots {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.every.poll_tick(cx) {
            std::task::Poll::Ready(_) => {
                let data = snapshot(&self.state).to_string();
                std::task::Poll::Ready(Some(Ok(SseEvent::default().event("snapshot").data(data))))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
