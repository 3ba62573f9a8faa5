//! Prometheus metrics: request counts and latency by route, orders,
//! refusals by reason, and the engine's queue depths, batch sizes and
//! commit latency.

use mall_shard::stats::LATENCY_BOUNDS_S;
use mall_shard::{Histogram, ShardStats};
use mall_store::Engine;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Reads one counter of a shard's stats.
type ShardCounter = fn(&ShardStats) -> u64;

/// Every refusal code the API can answer with, for a fixed counter array.
pub const REFUSAL_CODES: &[&str] = &[
    "sold_out",
    "insufficient_stock",
    "limit_reached",
    "sale_not_open",
    "sale_closed",
    "item_not_found",
    "order_not_found",
    "invalid_order_status",
    "hold_expired",
    "idempotency_key_reused",
    "stock_below_committed",
    "overloaded",
    "store_unavailable",
    "rate_limited",
];

struct RouteStats {
    latency: Histogram,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    by_class: [AtomicU64; 4],
}

pub struct Metrics {
    /// Per `(method, route)`; routes are the matched templates, a small
    /// bounded set (plus "unmatched"), kept sorted for the exposition.
    routes: RwLock<Vec<(String, String, std::sync::Arc<RouteStats>)>>,
    orders_online: AtomicU64,
    orders_cod: AtomicU64,
    refusals: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: RwLock::new(Vec::new()),
            orders_online: AtomicU64::new(0),
            orders_cod: AtomicU64::new(0),
            refusals: REFUSAL_CODES.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Metrics {
    pub fn record_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        // The hot path: a read lock and a short scan, no allocation.
        let found = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            routes
                .iter()
                .find(|(m, r, _)| m == method && r == route)
                .map(|(_, _, s)| s.clone())
        };
        let stats = found.unwrap_or_else(|| {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            if let Some((_, _, s)) = routes.iter().find(|(m, r, _)| m == method && r == route) {
                return s.clone();
            }
            let stats = std::sync::Arc::new(RouteStats {
                latency: Histogram::new(LATENCY_BOUNDS_S),
                by_class: Default::default(),
            });
            routes.push((method.to_string(), route.to_string(), stats.clone()));
            routes.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
            stats
        });
        stats.latency.observe_duration(took);
        let class = (usize::from(status / 100)).clamp(2, 5) - 2;
        stats.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_order(&self, payment: mall_core::PaymentMethod) {
        let counter = match payment {
            mall_core::PaymentMethod::Online => &self.orders_online,
            mall_core::PaymentMethod::Cod => &self.orders_cod,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_refusal(&self, code: &str) {
        if let Some(i) = REFUSAL_CODES.iter().position(|c| *c == code) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self, engine: &Engine, sessions: usize) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP mall_http_request_duration_seconds Request latency by route.\n# TYPE mall_http_request_duration_seconds histogram\n");
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (method, route, stats) in &routes {
            stats.latency.write_prometheus(
                &mut out,
                "mall_http_request_duration_seconds",
                &format!("method=\"{method}\",route=\"{route}\""),
            );
        }
        out.push_str("# HELP mall_http_responses_total Responses by route and status class.\n# TYPE mall_http_responses_total counter\n");
        for (method, route, stats) in &routes {
            for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let n = stats.by_class[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "mall_http_responses_total{{method=\"{method}\",route=\"{route}\",class=\"{class}\"}} {n}");
            }
        }
        out.push_str("# HELP mall_orders_total Orders created, by payment method.\n# TYPE mall_orders_total counter\n");
        let _ = writeln!(
            out,
            "mall_orders_total{{payment=\"online\"}} {}",
            self.orders_online.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "mall_orders_total{{payment=\"cod\"}} {}",
            self.orders_cod.load(Ordering::Relaxed)
        );
        out.push_str("# HELP mall_refusals_total Refused requests by reason.\n# TYPE mall_refusals_total counter\n");
        for (i, code) in REFUSAL_CODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "mall_refusals_total{{reason=\"{code}\"}} {}",
                self.refusals[i].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP mall_shard_queue_depth Commands waiting in each shard's queue.\n# TYPE mall_shard_queue_depth gauge\n");
        for shard in 0..engine.shard_count() {
            let _ = writeln!(
                out,
                "mall_shard_queue_depth{{shard=\"{shard}\"}} {}",
                engine.handle(shard).queue_depth()
            );
        }
        out.push_str("# HELP mall_shard_apply_batch_commands Commands applied per batch.\n# TYPE mall_shard_apply_batch_commands histogram\n");
        for shard in 0..engine.shard_count() {
            let s = engine.handle(shard).stats();
            s.apply_batch_commands.write_prometheus(
                &mut out,
                "mall_shard_apply_batch_commands",
                &format!("shard=\"{shard}\""),
            );
        }
        out.push_str("# HELP mall_shard_commit_batch_effects Effects per committed batch (one transaction).\n# TYPE mall_shard_commit_batch_effects histogram\n");
        for shard in 0..engine.shard_count() {
            let s = engine.handle(shard).stats();
            s.commit_batch_effects.write_prometheus(
                &mut out,
                "mall_shard_commit_batch_effects",
                &format!("shard=\"{shard}\""),
            );
        }
        out.push_str("# HELP mall_shard_commit_seconds Time to commit one batch.\n# TYPE mall_shard_commit_seconds histogram\n");
        for shard in 0..engine.shard_count() {
            let s = engine.handle(shard).stats();
            s.commit_seconds.write_prometheus(
                &mut out,
                "mall_shard_commit_seconds",
                &format!("shard=\"{shard}\""),
            );
        }
        let counters: [(&str, &str, ShardCounter); 2] = [
            ("mall_shard_commit_failures_total", "Failed commits.", |s| {
                s.commit_failures.load(Ordering::Relaxed)
            }),
            (
                "mall_shard_reloads_total",
                "Times a shard was rebuilt from its store after a failed commit.",
                |s| s.reloads.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for shard in 0..engine.shard_count() {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{shard}\"}} {}",
                    value(engine.handle(shard).stats())
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mall_items Items on sale.\n# TYPE mall_items gauge\nmall_items {}",
            engine.board().len()
        );
        let _ = writeln!(out, "# HELP mall_sessions Live sessions.\n# TYPE mall_sessions gauge\nmall_sessions {sessions}");
        out
    }
}

/// Payment channels and the payment service, in Prometheus text format.
/// The connection limits of each listener (`api`, `admin`).
pub fn render_listeners(out: &mut String, listeners: &[(&str, &crate::listener::ListenerStats)]) {
    use crate::listener::ListenerStats;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// `(metric, type, help, which counter)`.
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ListenerStats) -> &AtomicU64,
    );
    let families: [Family; 3] = [
        ("mall_connections_open", "gauge", "Open connections.", |s| {
            &s.open
        }),
        (
            "mall_connections_refused_per_address_total",
            "counter",
            "Connections refused: too many from one address.",
            |s| &s.refused_per_address,
        ),
        (
            "mall_connections_timed_out_total",
            "counter",
            "Connections closed by the header-read or idle timeout.",
            |s| &s.timed_out,
        ),
    ];
    for (metric, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, s) in listeners {
            let _ = writeln!(
                out,
                "{metric}{{listener=\"{name}\"}} {}",
                value(s).load(Relaxed)
            );
        }
    }
}

pub fn render_payments(out: &mut String, p: &mall_payments::Payments) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let channels = p.channels();
    type Gauge = (
        &'static str,
        &'static str,
        fn(&mall_router::router::ChannelStatus) -> f64,
    );
    let gauges: [Gauge; 7] = [
        (
            "mall_channel_rate_per_second",
            "Dispatches over the last second.",
            |c| c.rate_per_s,
        ),
        (
            "mall_channel_success_ratio",
            "Successes over outcomes in the health window.",
            |c| c.success_rate,
        ),
        (
            "mall_channel_latency_p99_seconds",
            "p99 time from dispatch to outcome, health window.",
            |c| c.p99_latency_ms / 1e3,
        ),
        (
            "mall_channel_in_flight",
            "Payments with the provider now.",
            |c| f64::from(c.in_flight),
        ),
        (
            "mall_channel_timeouts",
            "Timeouts in the health window.",
            |c| c.timeouts as f64,
        ),
        (
            "mall_channel_circuit_open",
            "1 when the circuit is open, 0.5 half-open, 0 closed.",
            |c| match c.circuit.as_str() {
                "open" => 1.0,
                "half_open" => 0.5,
                _ => 0.0,
            },
        ),
        (
            "mall_channel_dispatched_total",
            "Payments dispatched since start.",
            |c| c.dispatched_total as f64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for c in &channels {
            let _ = writeln!(out, "{name}{{channel=\"{}\"}} {}", c.name, value(c));
        }
    }
    let _ = writeln!(out, "# HELP mall_payment_queue_depth Payments waiting for a channel.\n# TYPE mall_payment_queue_depth gauge\nmall_payment_queue_depth {}", p.queue_depth());
    let k = p.counters();
    for (name, c) in [
        ("succeeded", &k.succeeded),
        ("failed", &k.failed),
        ("late_refunds", &k.late_refunds),
        ("refunds", &k.refunds),
        ("callbacks_refused", &k.callbacks_refused),
    ] {
        let _ = writeln!(out, "mall_payments_{name}_total {}", c.load(Relaxed));
    }
}
