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
use std::collections::BTreeMap;
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

/// Everything the dashboard shows, now: on a cluster, the whole cluster's
/// figures (see [`follow_cluster`]), else this server's.
pub fn snapshot(state: &AppState) -> Value {
    if state.cluster.get().is_some() {
        if let Some(merged) = state
            .cluster_dashboard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return merged;
        }
    }
    local_snapshot(state)
}

/// On a cluster, every `every` this node gathers every node's own figures
/// over the internal connections and keeps their sum, so any node shows
/// the whole cluster (each node records the events of the requests it
/// answered; summed, nothing is counted twice).
pub fn follow_cluster(state: AppState, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(node) = state.cluster.get() else {
                continue;
            };
            let mut parts = vec![(node.name().to_string(), local_snapshot(&state))];
            for (name, text) in node.gather_dashboards().await {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    parts.push((name, v));
                }
            }
            let merged = merge(parts);
            *state
                .cluster_dashboard
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(merged);
        }
    })
}

fn add(into: &mut Value, from: &Value) {
    match (into.as_i64(), from.as_i64()) {
        (Some(a), Some(b)) => *into = json!(a + b),
        _ => {
            if into.is_null() {
                *into = from.clone();
            }
        }
    }
}

/// Sums arrays of per-second (or per-minute) figures by their time.
fn merge_series(parts: &[&Value]) -> Value {
    let mut times: Vec<i64> = parts
        .iter()
        .flat_map(|p| {
            p["t_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
        })
        .collect();
    times.sort_unstable();
    times.dedup();
    let at: BTreeMap<i64, usize> = times.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut out = serde_json::Map::new();
    out.insert("t_ms".into(), json!(times));
    for part in parts {
        let Some(obj) = part.as_object() else {
            continue;
        };
        let part_times: Vec<i64> = obj["t_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        for (key, values) in obj {
            if key == "t_ms" {
                continue;
            }
            if let Some(by_channel) = values.as_object() {
                let merged = out
                    .entry(key.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("an object");
                for (channel, values) in by_channel {
                    let column = merged
                        .entry(channel.clone())
                        .or_insert_with(|| json!(vec![0; times.len()]));
                    for (i, v) in values.as_array().into_iter().flatten().enumerate() {
                        if let Some(&j) = part_times.get(i).and_then(|t| at.get(t)) {
                            add(&mut column[j], v);
                        }
                    }
                }
                continue;
            }
            // Latency percentiles do not add up: the worst node's is shown.
            let worst = key.ends_with("_ms");
            let column = out.entry(key.clone()).or_insert_with(|| {
                json!(vec![
                    if worst { Value::Null } else { json!(0) };
                    times.len()
                ])
            });
            for (i, v) in values.as_array().into_iter().flatten().enumerate() {
                let Some(&j) = part_times.get(i).and_then(|t| at.get(t)) else {
                    continue;
                };
                if worst {
                    if v.as_f64() > column[j].as_f64() {
                        column[j] = v.clone();
                    }
                } else {
                    add(&mut column[j], v);
                }
            }
        }
    }
    Value::Object(out)
}

/// The whole cluster's figures from each node's own: totals, series,
/// refusals and the funnel summed; latency the worst node's; the channels
/// from the node running payments; queues per node.
pub fn merge(parts: Vec<(String, Value)>) -> Value {
    let Some((_, first)) = parts.first() else {
        return Value::Null;
    };
    let mut out = first.clone();
    let values: Vec<&Value> = parts.iter().map(|(_, v)| v).collect();
    for key in [
        "gmv_fen_total",
        "orders_total",
        "paid_total",
        "refusals_total",
        "events_dropped",
    ] {
        let mut total = json!(0);
        for v in &values {
            add(&mut total, &v[key]);
        }
        out[key] = total;
    }
    for key in ["refusals", "funnel"] {
        let mut sum = serde_json::Map::new();
        for v in &values {
            for (k, n) in v[key].as_object().into_iter().flatten() {
                add(sum.entry(k.clone()).or_insert(json!(0)), n);
            }
        }
        out[key] = Value::Object(sum);
    }
    let series: Vec<&Value> = values.iter().map(|v| &v["series"]).collect();
    out["series"] = merge_series(&series);
    // Minutes: an array of objects with t_ms, summed by minute.
    let mut minutes: BTreeMap<i64, Value> = BTreeMap::new();
    for v in &values {
        for m in v["minutes"].as_array().into_iter().flatten() {
            let Some(t) = m["t_ms"].as_i64() else {
                continue;
            };
            let entry = minutes.entry(t).or_insert_with(|| json!({"t_ms": t}));
            for (k, n) in m.as_object().into_iter().flatten() {
                if k != "t_ms" {
                    add(&mut entry[k.as_str()], n);
                }
            }
        }
    }
    out["minutes"] = json!(minutes.into_values().collect::<Vec<_>>());
    let mut top: BTreeMap<u64, Value> = BTreeMap::new();
    for v in &values {
        for t in v["top_items"].as_array().into_iter().flatten() {
            let Some(sku) = t["sku"].as_u64() else {
                continue;
            };
            let entry = top.entry(sku).or_insert_with(
                || json!({"sku": sku, "title": t["title"], "orders": 0, "gmv_fen": 0}),
            );
            add(&mut entry["orders"], &t["orders"]);
            add(&mut entry["gmv_fen"], &t["gmv_fen"]);
        }
    }
    let mut top: Vec<Value> = top.into_values().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t["orders"].as_u64().unwrap_or(0)));
    top.truncate(
        first["top_items"]
            .as_array()
            .map_or(10, |a| a.len().max(10)),
    );
    out["top_items"] = json!(top);
    if let Some(with_channels) = values
        .iter()
        .find(|v| v["channels"].as_array().is_some_and(|c| !c.is_empty()))
    {
        out["channels"] = with_channels["channels"].clone();
    }
    let mut queues = serde_json::Map::new();
    for (name, v) in &parts {
        for (k, n) in v["queues"].as_object().into_iter().flatten() {
            queues.insert(format!("{name}/{k}"), n.clone());
        }
    }
    out["queues"] = Value::Object(queues);
    out["nodes"] = json!(parts
        .iter()
        .map(|(name, v)| json!({"name": name, "orders_total": v["orders_total"], "paid_total": v["paid_total"]}))
        .collect::<Vec<_>>());
    out
}

/// This server's own figures (on a cluster: this node's part).
pub fn local_snapshot(state: &AppState) -> Value {
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

#[cfg(test)]
mod tests {
    use super::merge;
    use serde_json::json;

    #[test]
    fn a_clusters_figures_are_the_sum_of_its_nodes() {
        let a = json!({"orders_total": 3, "paid_total": 1, "gmv_fen_total": 300, "refusals_total": 5, "events_dropped": 0,
            "refusals": {"sold_out": 5}, "funnel": {"view": 10, "order": 3},
            "series": {"t_ms": [1000, 2000], "orders": [1, 2], "p99_ms": [5.0, null], "payments_by_channel": {"alipay": [0, 1]}},
            "minutes": [{"t_ms": 0, "orders": 3}], "top_items": [{"sku": 7, "title": "x", "orders": 3, "gmv_fen": 300}],
            "channels": [], "queues": {"shard-0": 1}});
        let b = json!({"orders_total": 4, "paid_total": 2, "gmv_fen_total": 400, "refusals_total": 1, "events_dropped": 2,
            "refusals": {"sold_out": 1, "limit_reached": 2}, "funnel": {"view": 1, "order": 4},
            "series": {"t_ms": [2000, 3000], "orders": [3, 1], "p99_ms": [9.0, 1.0], "payments_by_channel": {"alipay": [2, 2]}},
            "minutes": [{"t_ms": 0, "orders": 4}], "top_items": [{"sku": 7, "title": "x", "orders": 4, "gmv_fen": 400}],
            "channels": [{"name": "alipay"}], "queues": {"shard-1": 2}});
        let m = merge(vec![("n1".into(), a), ("n2".into(), b)]);
        assert_eq!(m["orders_total"], 7);
        assert_eq!(m["gmv_fen_total"], 700);
        assert_eq!(m["events_dropped"], 2);
        assert_eq!(m["refusals"], json!({"sold_out": 6, "limit_reached": 2}));
        assert_eq!(m["funnel"]["order"], 7);
        assert_eq!(m["series"]["t_ms"], json!([1000, 2000, 3000]));
        assert_eq!(m["series"]["orders"], json!([1, 5, 1]));
        assert_eq!(m["series"]["p99_ms"], json!([5.0, 9.0, 1.0]));
        assert_eq!(
            m["series"]["payments_by_channel"]["alipay"],
            json!([0, 3, 2])
        );
        assert_eq!(m["minutes"], json!([{"t_ms": 0, "orders": 7}]));
        assert_eq!(m["top_items"][0]["orders"], 7);
        assert_eq!(m["channels"][0]["name"], "alipay");
        assert_eq!(m["queues"], json!({"n1/shard-0": 1, "n2/shard-1": 2}));
        assert_eq!(m["nodes"].as_array().unwrap().len(), 2);
    }
}
