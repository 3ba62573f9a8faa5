//! Prometheus metrics: request counts and latency by route, orders,
//! refusals by reason, the engine's queue depths, batch sizes and commit
//! latency, payment channels and the payment service, and the listeners.
//!
//! The hot path counts in atomics; a scrape reads them into metric
//! families and the maintained client library (`prometheus-client`)
//! encodes them (OpenMetrics text: names, types, help, escaping).

use mall_engine::Engine;
use mall_shard::stats::LATENCY_BOUNDS_S;
use mall_shard::{Histogram, ShardStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads one counter of a shard's stats.
type ShardCounter = fn(&ShardStats) -> u64;

/// A series' labels.
type Labels = Vec<(&'static str, String)>;

/// One value as read at a scrape.
#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
    /// `(sum, count, cumulative buckets with +Inf last)`.
    Histogram(f64, u64, Vec<(f64, u64)>),
}

/// One metric family as read at a scrape. Counter names end in `_total`
/// here, as exposed.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            series: Vec::new(),
        }
    }

    fn with(mut self, labels: Labels, value: Value) -> Family {
        self.series.push((labels, value));
        self
    }

    fn histogram(h: &Histogram) -> Value {
        let (sum, count, buckets) = h.snapshot();
        Value::Histogram(sum, count, buckets)
    }
}

fn put(series: &mut MetricEncoder, value: &Value) -> Result<(), std::fmt::Error> {
    match value {
        Value::Counter(n) => series.encode_counter::<NoLabelSet, _, u64>(n, None),
        Value::Gauge(g) => series.encode_gauge(g),
        Value::Histogram(sum, count, buckets) => {
            series.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
        }
    }
}

/// Everything one scrape read, for the library to encode.
#[derive(Debug, Default)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let Some((_, first)) = f.series.first() else {
                continue;
            };
            let (name, kind) = match first {
                // The library adds the `_total` of a counter's samples.
                Value::Counter(_) => (
                    f.name.strip_suffix("_total").unwrap_or(f.name),
                    MetricType::Counter,
                ),
                Value::Gauge(_) => (f.name, MetricType::Gauge),
                Value::Histogram(..) => (f.name, MetricType::Histogram),
            };
            let mut family = encoder.encode_descriptor(name, f.help, None, kind)?;
            for (labels, value) in &f.series {
                // A series without labels is written bare (`name 1`, not `name{} 1`).
                if labels.is_empty() {
                    put(&mut family, value)?;
                } else {
                    put(&mut family.encode_family(labels)?, value)?;
                }
            }
        }
        Ok(())
    }
}

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
    "price_changed",
    "coupon_not_found",
    "coupon_not_usable",
    "promotion_sold_out",
    "presale_online_only",
    "balance_not_open",
    "balance_closed",
    "not_a_presale",
    "balance_not_paid",
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

    /// The families this process counts itself, and the engine's.
    fn families(&self, engine: &Engine, sessions: usize, out: &mut Vec<Family>) {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let route = |method: &str, route: &str| {
            vec![("method", method.to_string()), ("route", route.to_string())]
        };
        let mut latency = Family::new(
            "mall_http_request_duration_seconds",
            "Request latency by route.",
        );
        let mut responses = Family::new(
            "mall_http_responses_total",
            "Responses by route and status class.",
        );
        for (method, path, stats) in &routes {
            latency = latency.with(route(method, path), Family::histogram(&stats.latency));
            for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let mut labels = route(method, path);
                labels.push(("class", class.to_string()));
                let n = stats.by_class[i].load(Ordering::Relaxed);
                responses = responses.with(labels, Value::Counter(n));
            }
        }
        out.push(latency);
        out.push(responses);
        out.push(
            Family::new("mall_orders_total", "Orders created, by payment method.")
                .with(
                    vec![("payment", "online".into())],
                    Value::Counter(self.orders_online.load(Ordering::Relaxed)),
                )
                .with(
                    vec![("payment", "cod".into())],
                    Value::Counter(self.orders_cod.load(Ordering::Relaxed)),
                ),
        );
        let mut refusals = Family::new("mall_refusals_total", "Refused requests by reason.");
        for (i, code) in REFUSAL_CODES.iter().enumerate() {
            let n = self.refusals[i].load(Ordering::Relaxed);
            refusals = refusals.with(vec![("reason", code.to_string())], Value::Counter(n));
        }
        out.push(refusals);
        // The shards running on this node (a node of a cluster runs some).
        let here: Vec<(usize, mall_shard::ShardHandle<mall_inventory::Inventory>)> = (0..engine
            .shard_count())
            .filter_map(|i| engine.local(i).map(|h| (i, h)))
            .collect();
        let shard = |i: usize| vec![("shard", i.to_string())];
        let mut depth = Family::new(
            "mall_shard_queue_depth",
            "Commands waiting in each shard's queue.",
        );
        for (i, handle) in &here {
            let (i, d) = (*i, handle.queue_depth() as f64);
            depth = depth.with(shard(i), Value::Gauge(d));
        }
        out.push(depth);
        type ShardHistogram = fn(&ShardStats) -> &Histogram;
        let histograms: [(&'static str, &'static str, ShardHistogram); 3] = [
            (
                "mall_shard_apply_batch_commands",
                "Commands applied per batch.",
                |s| &s.apply_batch_commands,
            ),
            (
                "mall_shard_commit_batch_effects",
                "Effects per committed batch (one transaction).",
                |s| &s.commit_batch_effects,
            ),
            (
                "mall_shard_commit_seconds",
                "Time to commit one batch.",
                |s| &s.commit_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            let mut f = Family::new(name, help);
            for (i, handle) in &here {
                f = f.with(shard(*i), Family::histogram(histogram(handle.stats())));
            }
            out.push(f);
        }
        let counters: [(&'static str, &'static str, ShardCounter); 2] = [
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
            let mut f = Family::new(name, help);
            for (i, handle) in &here {
                f = f.with(shard(*i), Value::Counter(value(handle.stats())));
            }
            out.push(f);
        }
        out.push(
            Family::new("mall_items", "Items on sale.")
                .with(vec![], Value::Gauge(engine.board().len() as f64)),
        );
        out.push(
            Family::new("mall_sessions", "Live sessions.")
                .with(vec![], Value::Gauge(sessions as f64)),
        );
    }
}

/// A node of a cluster: its name, what it runs, and its part in forwarding
/// and handovers (each node's `/metrics` is its own; sum them for the
/// cluster, by the `node` label).
fn cluster_families(node: &mall_cluster::Node, engine: &Engine, out: &mut Vec<Family>) {
    use std::sync::atomic::Ordering::Relaxed;
    let me = || vec![("node", node.name().to_string())];
    out.push(
        Family::new("mall_node", "This node of the cluster (always 1).")
            .with(me(), Value::Gauge(1.0)),
    );
    out.push(
        Family::new("mall_node_shards", "Shards running on this node.")
            .with(me(), Value::Gauge(engine.shards_here().len() as f64)),
    );
    let stats = &node.stats;
    let counters: [(&str, &str, u64); 6] = [
        (
            "mall_node_refused_here_total",
            "Snap-ups of items sold out on another node refused here, without a hop.",
            stats.refused_here.load(Relaxed),
        ),
        (
            "mall_node_forwarded_total",
            "Commands sent to the node owning their shard.",
            stats.forwarded.load(Relaxed),
        ),
        (
            "mall_node_served_total",
            "Commands other nodes sent here.",
            stats.served.load(Relaxed),
        ),
        (
            "mall_node_handovers_total",
            "Shards handed over from here (planned moves).",
            stats.handovers.load(Relaxed),
        ),
        (
            "mall_node_opened_total",
            "Shards (or the ledger) opened here.",
            stats.opened.load(Relaxed),
        ),
        (
            "mall_node_dropped_total",
            "Shards dropped here because their lease was lost.",
            stats.dropped.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        out.push(Family::new(name, help).with(me(), Value::Counter(value)));
    }
    out.push(
        Family::new(
            "mall_node_handover_pause_max_seconds",
            "The longest a shard was closed by a handover here.",
        )
        .with(
            me(),
            Value::Gauge(stats.handover_pause_max_us.load(Relaxed) as f64 / 1e6),
        ),
    );
}

/// The whole `/metrics` text: this process's counters, the engine's, the
/// payment service's (if any) and the listeners'.
pub fn render(
    metrics: &Metrics,
    engine: &Engine,
    sessions: usize,
    payments: Option<&mall_payments::Payments>,
    listeners: &[(&str, &crate::listener::ListenerStats)],
    node: Option<&mall_cluster::Node>,
) -> String {
    let mut families = Vec::new();
    metrics.families(engine, sessions, &mut families);
    if let Some(node) = node {
        cluster_families(node, engine, &mut families);
    }
    if let Some(p) = payments {
        payment_families(p, &mut families);
    }
    listener_families(listeners, &mut families);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::with_capacity(32 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The connection limits of each listener (`api`, `admin`).
fn listener_families(listeners: &[(&str, &crate::listener::ListenerStats)], out: &mut Vec<Family>) {
    use crate::listener::ListenerStats;
    type Read = fn(&ListenerStats) -> Value;
    let families: [(&'static str, &'static str, Read); 3] = [
        ("mall_connections_open", "Open connections.", |s| {
            Value::Gauge(s.open.load(Ordering::Relaxed) as f64)
        }),
        (
            "mall_connections_refused_per_address_total",
            "Connections refused: too many from one address.",
            |s| Value::Counter(s.refused_per_address.load(Ordering::Relaxed)),
        ),
        (
            "mall_connections_timed_out_total",
            "Connections closed by the header-read or idle timeout.",
            |s| Value::Counter(s.timed_out.load(Ordering::Relaxed)),
        ),
    ];
    for (name, help, read) in families {
        let mut f = Family::new(name, help);
        for (listener, s) in listeners {
            f = f.with(vec![("listener", listener.to_string())], read(s));
        }
        out.push(f);
    }
}

/// Payment channels (as the router sees them) and the payment service.
fn payment_families(p: &mall_payments::Payments, out: &mut Vec<Family>) {
    let channels = p.channels();
    type Read = fn(&mall_router::router::ChannelStatus) -> Value;
    let families: [(&'static str, &'static str, Read); 7] = [
        (
            "mall_channel_rate_per_second",
            "Dispatches over the last second.",
            |c| Value::Gauge(c.rate_per_s),
        ),
        (
            "mall_channel_success_ratio",
            "Successes over outcomes in the health window.",
            |c| Value::Gauge(c.success_rate),
        ),
        (
            "mall_channel_latency_p99_seconds",
            "p99 time from dispatch to outcome, health window.",
            |c| Value::Gauge(c.p99_latency_ms / 1e3),
        ),
        (
            "mall_channel_in_flight",
            "Payments with the provider now.",
            |c| Value::Gauge(f64::from(c.in_flight)),
        ),
        (
            "mall_channel_timeouts",
            "Timeouts in the health window.",
            |c| Value::Gauge(c.timeouts as f64),
        ),
        (
            "mall_channel_circuit_open",
            "1 when the circuit is open, 0.5 half-open, 0 closed.",
            |c| {
                Value::Gauge(match c.circuit.as_str() {
                    "open" => 1.0,
                    "half_open" => 0.5,
                    _ => 0.0,
                })
            },
        ),
        (
            "mall_channel_dispatched_total",
            "Payments dispatched since start.",
            |c| Value::Counter(c.dispatched_total),
        ),
    ];
    for (name, help, read) in families {
        let mut f = Family::new(name, help);
        for c in &channels {
            f = f.with(vec![("channel", c.name.clone())], read(c));
        }
        out.push(f);
    }
    out.push(
        Family::new(
            "mall_payment_queue_depth",
            "Payments waiting for a channel.",
        )
        .with(vec![], Value::Gauge(p.queue_depth() as f64)),
    );
    let k = p.counters();
    let totals: [(&'static str, &'static str, &AtomicU64); 5] = [
        (
            "mall_payments_succeeded_total",
            "Payments and top-ups that succeeded.",
            &k.succeeded,
        ),
        (
            "mall_payments_failed_total",
            "Payments and top-ups that failed.",
            &k.failed,
        ),
        (
            "mall_payments_late_refunds_total",
            "Charges that came after their try was given up, handed back.",
            &k.late_refunds,
        ),
        ("mall_payments_refunds_total", "Refunds made.", &k.refunds),
        (
            "mall_payments_callbacks_refused_total",
            "Provider callbacks refused (signature, replay, body, unknown payment).",
            &k.callbacks_refused,
        ),
    ];
    for (name, help, c) in totals {
        out.push(Family::new(name, help).with(vec![], Value::Counter(c.load(Ordering::Relaxed))));
    }
}
