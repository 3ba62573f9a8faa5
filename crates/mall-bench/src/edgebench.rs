//! `mall bench edge`: the request path of one node, side by side in one
//! run with the same generator (keep-alive connections, closed loop): a bare
//! axum handler, mall's `/healthz`, a sold-out snap-up on mall, a
//! successful snap-up on mall, and the same successful snap-up on an axum
//! service in front of Redis ([`crate::axumredis`]). mall runs with every
//! defence of `mall serve` on: its listener, request ids, limits (set high),
//! authentication, durable group commit (SQLite).

use crate::peers::{PeerError, RedisServer, Resp};
use crate::stockbench::bench_item;
use axum::http::Method;
use mall_engine::{Engine, EngineConfig};
use mall_rush::http::{Conn, Target};
use mall_shard::{Clock, SystemClock};
use mall_sqlite::DataDir;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub seconds: f64,
    pub connections: usize,
    pub shoppers: u64,
}

#[derive(Clone, Debug)]
pub struct EdgeRow {
    pub name: &'static str,
    pub per_s: f64,
    /// Answers with the expected status, of all.
    pub expected: f64,
    pub p99_ms: f64,
}

/// A request of the run: method, path, body, bearer token.
type MakeRequest =
    Arc<dyn Fn(u64) -> (Method, String, Option<serde_json::Value>, Option<String>) + Send + Sync>;

async fn load(
    url: &str,
    expect: u16,
    make: MakeRequest,
    config: &EdgeConfig,
) -> Result<(f64, f64, f64), PeerError> {
    let target = Target::parse(url, false).map_err(|e| PeerError::Setup(e.to_string()))?;
    let next = Arc::new(AtomicU64::new(0));
    let good = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(config.seconds);
    let mut tasks = Vec::new();
    for _ in 0..config.connections {
        let (target, next, good, make) = (target.clone(), next.clone(), good.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("a histogram");
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (method, path, body, token) = make(i);
                let started = Instant::now();
                let answer = conn
                    .send(
                        method,
                        &path,
                        token.as_deref(),
                        None,
                        body.as_ref(),
                        Duration::from_secs(10),
                    )
                    .await;
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                if matches!(answer, Ok((s, _)) if s.as_u16() == expect) {
                    good.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("a histogram");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    let total = next.load(Ordering::Relaxed).max(1);
    Ok((
        total as f64 / config.seconds,
        good.load(Ordering::Relaxed) as f64 / total as f64,
        hist.value_at_quantile(0.99) as f64 / 1e3,
    ))
}

async fn serve(router: axum::Router) -> Result<String, PeerError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

pub async fn run(config: &EdgeConfig) -> Result<Vec<EdgeRow>, PeerError> {
    // mall, as `mall serve` runs it, on SQLite.
    let dir = std::env::temp_dir().join(format!("mall-edgebench-{}", std::process::id()));
    let data = DataDir::open(&dir, Some(2)).map_err(|e| PeerError::Setup(e.to_string()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let engine = Arc::new(
        Engine::start(Arc::new(data), EngineConfig::default(), clock.clone())
            .map_err(|e| PeerError::Setup(e.to_string()))?,
    );
    let mut plenty = bench_item(1, 100_000_000, now);
    plenty.per_user_limit = 1_000;
    let gone = bench_item(2, 0, now);
    engine
        .create_items(vec![plenty, gone])
        .await
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let state = crate::stockbench::unlimited_state(&engine)?;
    let tokens =
        Arc::new(crate::stockbench::shopper_tokens(&state, "edge", config.shoppers).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mall = format!("http://{}", listener.local_addr()?);
    let listener =
        mall_http::listener::LimitedListener::new(listener, state.config.listener.clone());
    let app =
        mall_http::router(state).into_make_service_with_connect_info::<mall_http::listener::Peer>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The peer: axum in front of Redis (AOF, fsync always).
    let redis = RedisServer::start()?;
    let mut admin = Resp::connect(&redis.addr()).await?;
    admin
        .call(&[b"MSET", b"stock:1", b"100000000", b"stock:2", b"0"])
        .await?;
    let peer = serve(crate::axumredis::router(&redis.addr()).await?).await?;
    let bare = serve(axum::Router::new().route("/", axum::routing::get(|| async { "ok" }))).await?;

    let order = |sku: u64| serde_json::json!({"sku": sku, "quantity": 1, "payment": "online", "address": "1 Edge Road"});
    let mall_order = |sku: u64| -> MakeRequest {
        let tokens = tokens.clone();
        Arc::new(move |i| {
            (
                Method::POST,
                "/v1/orders".into(),
                Some(order(sku)),
                Some(tokens[(i % tokens.len() as u64) as usize].clone()),
            )
        })
    };
    // Every request a new shopper: the Lua script's per-user set refuses a second order.
    let redis_order = |sku: u64| -> MakeRequest {
        Arc::new(move |i| {
            (
                Method::POST,
                "/v1/orders".into(),
                Some(order(sku)),
                Some((i + 1).to_string()),
            )
        })
    };
    let get = |path: &'static str| -> MakeRequest {
        Arc::new(move |_| (Method::GET, path.into(), None, None))
    };
    let runs: Vec<(&'static str, &str, u16, MakeRequest)> = vec![
        ("bare axum handler (GET /)", &bare, 200, get("/")),
        ("mall /healthz", &mall, 200, get("/healthz")),
        ("mall snap-up, sold out (409)", &mall, 409, mall_order(2)),
        ("mall snap-up, success (201)", &mall, 201, mall_order(1)),
        (
            "axum + Redis Lua, success (201)",
            &peer,
            201,
            redis_order(1),
        ),
        (
            "axum + Redis Lua, sold out (409)",
            &peer,
            409,
            redis_order(2),
        ),
    ];
    let mut rows = Vec::new();
    for (name, url, expect, make) in runs {
        let (per_s, expected, p99_ms) = load(url, expect, make, config).await?;
        rows.push(EdgeRow {
            name,
            per_s,
            expected,
            p99_ms,
        });
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

pub fn print(rows: &[EdgeRow]) {
    println!(
        "  {:<34} {:>10} {:>9} {:>9}",
        "", "answers/s", "expected", "p99 ms"
    );
    for r in rows {
        println!(
            "  {:<34} {:>10.0} {:>8.1}% {:>9.2}",
            r.name,
            r.per_s,
            r.expected * 100.0,
            r.p99_ms
        );
    }
    let rate = |name: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(name))
            .map_or(f64::NAN, |r| r.per_s)
    };
    let bare = rate("bare axum");
    println!("  targets (one run, one machine):");
    println!(
        "    successful snap-up vs axum + Redis: {:.2}x (target >= 1.5x)",
        rate("mall snap-up, success") / rate("axum + Redis Lua, success")
    );
    println!(
        "    sold-out snap-up vs bare axum:      {:.0}% (target >= 75%)",
        rate("mall snap-up, sold out") / bare * 100.0
    );
    println!(
        "    /healthz vs bare axum:              {:.0}% (target >= 90%)",
        rate("mall /healthz") / bare * 100.0
    );
}
