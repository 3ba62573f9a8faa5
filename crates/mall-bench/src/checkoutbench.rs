//! `mall bench checkout`: durable 3-line cart checkouts beside single-SKU
//! snap-ups, in the same run, on the same engine and store (SQLite, group
//! commit), twice: in-process (the HTTP router called directly, no socket)
//! and over HTTP on loopback. Every request succeeds (ample stock), so the
//! rates are of durable work: a snap-up is one hold; a checkout is its
//! record, three holds on up to three shards, and its move to reserved.
//! Afterwards the units held must be exactly the orders acknowledged.

use crate::peers::PeerError;
use crate::stockbench::{bench_item, histogram, shopper_tokens, unlimited_state};
use axum::body::Body;
use hyper::Method;
use mall_core::Sku;
use mall_engine::{Engine, EngineConfig};
use mall_rush::http::{Conn, Target};
use mall_shard::{Clock, SystemClock};
use mall_sqlite::DataDir;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

#[derive(Clone, Debug)]
pub struct Config {
    /// Requests of each kind in each mode.
    pub requests: u64,
    pub items: u32,
    pub users: u64,
    pub concurrency: usize,
    pub shards: usize,
}

/// Lines of a checkout.
pub const LINES: usize = 3;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// `in-process` or `HTTP`.
    pub mode: &'static str,
    /// `snap-up` or `3-line checkout`.
    pub kind: &'static str,
    pub requests: u64,
    /// Line orders acknowledged.
    pub orders: u64,
    pub per_s: f64,
    pub orders_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// "ok" when every request succeeded and the units held are exactly
    /// the orders acknowledged.
    pub verified: String,
}

/// One request: a snap-up of one SKU, or a checkout of three.
fn body(kind: Kind, i: u64, items: u32) -> serde_json::Value {
    let sku = |k: u64| (i * 7 + k * 101) % u64::from(items) + 1;
    match kind {
        Kind::Snapup => {
            serde_json::json!({"sku": sku(0), "quantity": 1, "payment": "online", "address": "Bench Road"})
        }
        Kind::Checkout => serde_json::json!({
            "lines": (0..LINES as u64).map(|k| serde_json::json!({"sku": sku(k), "quantity": 1})).collect::<Vec<_>>(),
            "payment": "online", "address": "Bench Road"}),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Snapup,
    Checkout,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Snapup => "/v1/orders",
            Kind::Checkout => "/v1/checkouts",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Snapup => "snap-up",
            Kind::Checkout => "3-line checkout",
        }
    }

    fn lines(self) -> u64 {
        match self {
            Kind::Snapup => 1,
            Kind::Checkout => LINES as u64,
        }
    }
}

struct Counts {
    next: AtomicUsize,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Sends `config.requests` of `kind` with `concurrency` workers, each
/// sending one request at a time through `send` (its status back).
async fn measure<S, F>(
    config: &Config,
    kind: Kind,
    tokens: &Arc<Vec<String>>,
    send: S,
) -> (f64, u64, u64, hdrhistogram::Histogram<u64>)
where
    S: Fn(usize, String, String, serde_json::Value) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = u16> + Send,
{
    let counts = Arc::new(Counts {
        next: AtomicUsize::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let started = Instant::now();
    let total = config.requests as usize;
    let items = config.items;
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|w| {
            let (counts, tokens, send) = (counts.clone(), tokens.clone(), send.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                loop {
                    let i = counts.next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return hist;
                    }
                    let token = tokens[i % tokens.len()].clone();
                    let at = Instant::now();
                    let status = send(w, token, format!("k{i}"), body(kind, i as u64, items)).await;
                    let _ = hist.record(at.elapsed().as_micros().max(1) as u64);
                    if status == 201 {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut hist = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    (
        started.elapsed().as_secs_f64(),
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        hist,
    )
}

/// Units held over every item.
fn held(engine: &Engine, items: u32) -> u64 {
    (1..=u64::from(items))
        .filter_map(|sku| engine.board().get(Sku(sku)))
        .map(|e| u64::from(e.live.load().1))
        .sum()
}

/// One mode's two rows on a fresh engine.
async fn mode(config: &Config, over_http: bool) -> Result<Vec<Row>, PeerError> {
    let dir = std::env::temp_dir().join(format!(
        "mall-checkoutbench-{}-{}",
        std::process::id(),
        SystemClock.now().0
    ));
    let data =
        DataDir::open(&dir, Some(config.shards)).map_err(|e| PeerError::Setup(e.to_string()))?;
    let mut engine_config = EngineConfig::default();
    engine_config.inventory.idempotency_keys_max = (config.requests as usize * 4).max(1);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let engine = Arc::new(
        Engine::start(Arc::new(data), engine_config, clock)
            .map_err(|e| PeerError::Setup(e.to_string()))?,
    );
    let items = (1..=config.items)
        .map(|sku| {
            let mut item = bench_item(u64::from(sku), 1_000_000, now);
            item.per_user_limit = 1_000;
            item
        })
        .collect();
    engine
        .create_items(items)
        .await
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let state = unlimited_state(&engine)?;
    let tokens = Arc::new(shopper_tokens(&state, "checkout", config.users).await?);
    let app = mall_http::router(state);
    let mut rows = Vec::new();
    let mut orders_before = 0u64;
    let (stop, server) = if over_http {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = app.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        (Some((stop, addr)), Some(server))
    } else {
        (None, None)
    };
    for kind in [Kind::Snapup, Kind::Checkout] {
        let (secs, ok, failed, hist) = match &stop {
            Some((_, addr)) => {
                let target = Target::parse(&format!("http://{addr}"), false)
                    .map_err(|e| PeerError::Setup(e.to_string()))?;
                let conns: Arc<Vec<tokio::sync::Mutex<Conn>>> = Arc::new(
                    (0..config.concurrency)
                        .map(|_| tokio::sync::Mutex::new(Conn::new(target.clone())))
                        .collect(),
                );
                measure(config, kind, &tokens, move |w, token, key, body| {
                    let conns = conns.clone();
                    async move {
                        let mut conn = conns[w].lock().await;
                        conn.send(
                            Method::POST,
                            kind.path(),
                            Some(&token),
                            Some(&key),
                            Some(&body),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_or(0, |(s, _)| s.as_u16())
                    }
                })
                .await
            }
            None => {
                let app = app.clone();
                measure(config, kind, &tokens, move |_, token, key, body| {
                    let app = app.clone();
                    async move {
                        let request = axum::http::Request::builder()
                            .method("POST")
                            .uri(kind.path())
                            .header("authorization", format!("Bearer {token}"))
                            .header("idempotency-key", key)
                            .header("content-type", "application/json")
                            .body(Body::from(body.to_string()))
                            .expect("a valid request");
                        app.oneshot(request)
                            .await
                            .map_or(0, |r| r.status().as_u16())
                    }
                })
                .await
            }
        };
        let orders = ok * kind.lines();
        let now_held = held(&engine, config.items);
        let verified = if failed > 0 {
            format!("FAILED: {failed} request(s) refused")
        } else if now_held != orders_before + orders {
            format!(
                "FAILED: {now_held} units held for {} orders",
                orders_before + orders
            )
        } else {
            "ok".into()
        };
        orders_before += orders;
        rows.push(Row {
            mode: if over_http { "HTTP" } else { "in-process" },
            kind: kind.name(),
            requests: ok + failed,
            orders,
            per_s: (ok + failed) as f64 / secs.max(1e-9),
            orders_per_s: orders as f64 / secs.max(1e-9),
            p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
            verified,
        });
    }
    if let (Some((stop, _)), Some(server)) = (stop, server) {
        let _ = stop.send(());
        let _ = server.await;
    }
    drop(app);
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Both modes, in-process first.
pub async fn run(config: &Config) -> Result<Vec<Row>, PeerError> {
    let mut rows = mode(config, false).await?;
    rows.extend(mode(config, true).await?);
    Ok(rows)
}

/// The table, with each checkout row's rate against the snap-ups' of its mode.
pub fn print(rows: &[Row]) {
    println!(
        "{:<11} {:<16} {:>9} {:>8} {:>10} {:>10} {:>8} {:>8} {:>12}  verified",
        "mode",
        "kind",
        "requests",
        "orders",
        "requests/s",
        "orders/s",
        "p50 ms",
        "p99 ms",
        "vs snap-ups"
    );
    for r in rows {
        let snapups = rows
            .iter()
            .find(|s| s.mode == r.mode && s.kind == Kind::Snapup.name())
            .map_or(1.0, |s| s.per_s);
        println!(
            "{:<11} {:<16} {:>9} {:>8} {:>10.0} {:>10.0} {:>8.3} {:>8.3} {:>11.2}x  {}",
            r.mode,
            r.kind,
            r.requests,
            r.orders,
            r.per_s,
            r.orders_per_s,
            r.p50_ms,
            r.p99_ms,
            r.per_s / snapups.max(1e-9),
            r.verified
        );
    }
}
