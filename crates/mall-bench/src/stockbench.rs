//! `mall bench stock`: one flash-sale workload, side by side in one run, on
//! mall in-process, mall over HTTP, the Redis design peers use (a Lua script
//! checks stock and a per-user set, decrements and records the buyer, with
//! `appendfsync always`), and PostgreSQL (`UPDATE ... WHERE available >= q`
//! plus an order `INSERT`, durable commits). Same users, items, stock and
//! concurrency for each; each is checked for overselling afterwards.

use crate::peers::{pg_connect, postgres_target, PeerError, RedisServer, Resp, RespValue};
use hyper::Method;
use mall_core::{
    Category, Coupon, CouponId, Fen, Item, MerchantId, PaymentMethod, Quantity, Sku, Timestamp,
    UserId,
};
use mall_engine::{Engine, EngineConfig};
use mall_inventory::sim::Rng;
use mall_inventory::{ClaimCoupon, Command, Reply, Reserve};
use mall_rush::catalog::{pareto_stock, StockShape};
use mall_rush::http::{Conn, Target};
use mall_rush::plan::{sample_rank, zipf_cdf};
use mall_shard::{Clock, SystemClock};
use mall_sqlite::DataDir;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// One item, stock 10,000, every shopper wants it.
    Hot,
    /// 10,000 items, Zipf(1.1) popularity, long-tail stock.
    Zipf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    MallInProcess,
    /// The hot shape as a coupon claim rush, in-process.
    MallCouponsInProcess,
    MallHttp,
    /// The same, with every snap-up recorded in the event log (its cost).
    MallHttpEvents,
    /// The same server's `/healthz`: what the generator reaches on a trivial endpoint.
    TrivialHttp,
    Redis,
    Postgres,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::MallInProcess => "mall in-process",
            System::MallCouponsInProcess => "mall coupon claims in-proc",
            System::MallHttp => "mall HTTP",
            System::MallHttpEvents => "mall HTTP + event log",
            System::TrivialHttp => "mall HTTP /healthz",
            System::Redis => "Redis Lua (AOF always)",
            System::Postgres => "PostgreSQL",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub users: u64,
    pub attempts: u64,
    pub items: u32,
    pub hot_stock: u32,
    pub concurrency: usize,
    pub seconds_max: f64,
    pub shards: usize,
    pub redis_url: Option<String>,
    pub postgres_url: Option<String>,
    /// Allow `redis_url` / `postgres_url` to name a non-loopback host.
    pub allow_remote: bool,
    /// Also run mall over HTTP with the event log on (what recording costs).
    pub with_events: bool,
}

/// Refuses a peer URL that is not on this machine, unless allowed.
fn check_local(what: &str, host_port: &str, allow_remote: bool) -> Result<(), PeerError> {
    if allow_remote {
        return Ok(());
    }
    let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .map_err(|e| PeerError::Setup(format!("{what} {host_port}: {e}")))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(PeerError::Setup(format!(
            "{what} {host_port} is not a loopback address; pass --allow-remote to use it"
        )));
    }
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub shape: Shape,
    pub system: System,
    pub attempts: u64,
    pub orders: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// "ok" when the system sold at most its stock and its counts agree.
    pub verified: String,
}

/// The workload: stock per item and `(user, item)` attempts.
pub struct Workload {
    pub stock: Vec<u32>,
    pub attempts: Vec<(u32, u32)>,
}

impl Workload {
    pub fn new(shape: Shape, config: &Config, seed: u64) -> Workload {
        let mut rng = Rng::new(seed);
        let stock = match shape {
            Shape::Hot => vec![config.hot_stock],
            Shape::Zipf => (0..config.items)
                .map(|_| pareto_stock(&mut rng, StockShape::default()))
                .collect(),
        };
        let cdf = zipf_cdf(stock.len(), 1.1);
        let attempts = (0..config.attempts)
            .map(|i| {
                let user = if i < config.users {
                    i as u32
                } else {
                    rng.below(config.users) as u32
                };
                let item = if stock.len() == 1 {
                    0
                } else {
                    sample_rank(&cdf, &mut rng)
                };
                (user, item)
            })
            .collect::<Vec<_>>();
        Workload { stock, attempts }
    }
}

/// Closed-loop measurement: `concurrency` workers each take the next
/// attempt(s) and wait for the answer.
struct Meter {
    next: AtomicUsize,
    orders: AtomicU64,
    done: AtomicU64,
    deadline: Instant,
}

pub(crate) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Runs `concurrency` workers made by `make` to completion; returns the
/// elapsed seconds and their merged latency histogram.
async fn drive<F, Fut>(
    config: &Config,
    mut make: F,
) -> (f64, hdrhistogram::Histogram<u64>, Vec<String>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<hdrhistogram::Histogram<u64>, PeerError>>
        + Send
        + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|w| tokio::spawn(make(w)))
        .collect();
    let mut hist = histogram();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => {
                let _ = hist.add(h);
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(format!("worker panicked: {e}")),
        }
    }
    (started.elapsed().as_secs_f64(), hist, failures)
}

/// A row's verdict: a worker that failed mid-request makes the counts unsure.
fn verdict(verified: String, failures: &[String]) -> String {
    match failures.first() {
        Some(first) => format!("FAILED: {} worker(s) stopped: {first}", failures.len()),
        None => verified,
    }
}

fn row(
    shape: Shape,
    system: System,
    meter: &Meter,
    secs: f64,
    hist: &hdrhistogram::Histogram<u64>,
    verified: String,
) -> Row {
    let attempts = meter.done.load(Ordering::Relaxed);
    Row {
        shape,
        system,
        attempts,
        orders: meter.orders.load(Ordering::Relaxed),
        per_s: attempts as f64 / secs.max(1e-9),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        verified,
    }
}

fn meter(config: &Config) -> Arc<Meter> {
    Arc::new(Meter {
        next: AtomicUsize::new(0),
        orders: AtomicU64::new(0),
        done: AtomicU64::new(0),
        deadline: Instant::now() + Duration::from_secs_f64(config.seconds_max),
    })
}

/// Takes the next `n` attempts, or none when done or out of time.
fn take(meter: &Meter, total: usize, n: usize) -> Option<std::ops::Range<usize>> {
    if Instant::now() >= meter.deadline {
        return None;
    }
    let start = meter.next.fetch_add(n, Ordering::Relaxed);
    (start < total).then(|| start..(start + n).min(total))
}

/// The HTTP layer over `engine` as `mall serve` runs it, but with
/// per-shopper rate limits out of the way (a benchmark's few shoppers
/// send many requests each).
pub fn unlimited_state(engine: &Arc<Engine>) -> Result<mall_http::AppState, PeerError> {
    let accounts = engine
        .store()
        .accounts()
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let mut http = mall_http::HttpConfig::default();
    http.rate.user_rate_per_s = 1e9;
    http.rate.user_burst = 1e9;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    mall_http::AppState::new(engine.clone(), accounts, http, clock)
        .map_err(|e| PeerError::Setup(e.to_string()))
}

/// `n` shoppers' tokens, issued 10,000 at a time.
pub async fn shopper_tokens(
    state: &mall_http::AppState,
    prefix: &str,
    n: u64,
) -> Result<Vec<String>, PeerError> {
    let mut tokens = Vec::with_capacity(n as usize);
    while (tokens.len() as u64) < n {
        let count = (n - tokens.len() as u64).min(10_000) as u32;
        let view = mall_http::routes::accounts::issue_shoppers(
            state,
            prefix,
            tokens.len() as u64 + 1,
            count,
        )
        .await
        .map_err(|e| PeerError::Setup(e.message))?;
        tokens.extend(view.users.into_iter().map(|u| u.token));
    }
    Ok(tokens)
}

pub fn bench_item(sku: u64, stock: u32, now: Timestamp) -> Item {
    Item {
        sku: Sku(sku),
        merchant: MerchantId(1),
        title: format!("bench {sku}"),
        category: Category::Electronics,
        price_fen: Fen(9_900),
        stock_total: stock,
        per_user_limit: 1,
        opens_at: now.plus_ms(-1_000),
        closes_at: now.plus_ms(24 * 3_600_000),
        shelf_life_hours: None,
        presale: None,
        sale_prices: vec![],
        floor_price_fen: mall_core::Fen(1),
    }
}

/// A fresh engine in a temp directory, with the workload's items.
async fn mall_engine(
    workload: &Workload,
    config: &Config,
) -> Result<(Arc<Engine>, std::path::PathBuf), PeerError> {
    let dir = std::env::temp_dir().join(format!(
        "mall-stockbench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(SystemClock.now().0 as u64)
    ));
    let data =
        DataDir::open(&dir, Some(config.shards)).map_err(|e| PeerError::Setup(e.to_string()))?;
    let mut engine_config = EngineConfig::default();
    engine_config.inventory.idempotency_keys_max = (config.attempts as usize).max(1);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let engine = Arc::new(
        Engine::start(Arc::new(data), engine_config, clock)
            .map_err(|e| PeerError::Setup(e.to_string()))?,
    );
    let items = workload
        .stock
        .iter()
        .enumerate()
        .map(|(i, &stock)| bench_item(i as u64 + 1, stock, now))
        .collect();
    engine
        .create_items(items)
        .await
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    Ok((engine, dir))
}

fn verify_mall(engine: &Engine, workload: &Workload, orders: u64) -> String {
    let mut sold = 0u64;
    for (i, &stock) in workload.stock.iter().enumerate() {
        let Some(entry) = engine.board().get(Sku(i as u64 + 1)) else {
            return format!("item {} missing", i + 1);
        };
        let (available, held, s) = entry.live.load();
        if u64::from(available) + u64::from(held) + u64::from(s) != u64::from(stock)
            || held + s > stock
        {
            return format!("OVERSOLD item {}", i + 1);
        }
        sold += u64::from(held + s);
    }
    if sold != orders {
        return format!("MISMATCH: {orders} orders acknowledged, {sold} units held or sold");
    }
    "ok".into()
}

fn reserve(user: u32, item: u32, key: u64) -> Command {
    let sku = Sku(u64::from(item) + 1);
    Command::Reserve(Reserve {
        user: UserId(u64::from(user) + 1),
        sku,
        quantity: Quantity::new(1).expect("1 is a quantity"),
        payment: PaymentMethod::Online,
        address: "Bench Road".into(),
        idempotency_key: Some(format!("b{key}").into()),
        fingerprint: sku.0,
        early_access: false,
        expected_total_fen: None,
        discount_fen: mall_core::Fen(0),
    })
}

async fn mall_in_process(
    shape: Shape,
    workload: &Arc<Workload>,
    config: &Config,
) -> Result<Row, PeerError> {
    let (engine, dir) = mall_engine(workload, config).await?;
    let (m, secs, hist, failed) =
        in_process(&engine, workload, config, |engine, user, item, key| {
            let sku = Sku(u64::from(item) + 1);
            (engine.shard_of_sku(sku), reserve(user, item, key))
        })
        .await;
    let verified = verify_mall(&engine, workload, m.orders.load(Ordering::Relaxed));
    shutdown(engine, &dir);
    Ok(row(
        shape,
        System::MallInProcess,
        &m,
        secs,
        &hist,
        verdict(verified, &failed),
    ))
}

/// The coupon this benchmark's claim rush is for.
const BENCH_COUPON: CouponId = CouponId(1);

/// The hot shape as a coupon claim rush: one coupon with the hot item's
/// stock as its quantity, one claim each, the same attempts.
async fn mall_coupons_in_process(
    workload: &Arc<Workload>,
    config: &Config,
) -> Result<Row, PeerError> {
    let (engine, dir) = mall_engine(workload, config).await?;
    let now = SystemClock.now();
    let coupon = Coupon {
        id: BENCH_COUPON,
        merchant: None,
        title: "bench".into(),
        spec: "{}".into(),
        quantity: workload.stock[0],
        per_user_limit: 1,
        claim_opens_at: now.plus_ms(-1_000),
        claim_closes_at: now.plus_ms(3_600_000),
        valid_until: now.plus_ms(86_400_000),
    };
    let put = Command::PutCoupon {
        coupon,
        expected: None,
    };
    match engine.try_submit_for_coupon(BENCH_COUPON, put) {
        Ok(rx) => match rx.await {
            Ok(Reply::Coupon(_)) => {}
            other => return Err(PeerError::Setup(format!("coupon not made: {other:?}"))),
        },
        Err(_) => return Err(PeerError::Setup("coupon not made: busy".into())),
    }
    let (m, secs, hist, failed) = in_process(&engine, workload, config, |engine, user, _, key| {
        let claim = ClaimCoupon::new(
            UserId(u64::from(user) + 1),
            BENCH_COUPON,
            Some(format!("c{key}").into()),
        );
        (engine.shard_of_coupon(BENCH_COUPON), Command::Claim(claim))
    })
    .await;
    let claims = m.orders.load(Ordering::Relaxed);
    let verified = match engine
        .coupon(BENCH_COUPON)
        .await
        .ok()
        .flatten()
        .map(|c| c.claims)
    {
        Some(made) if made > workload.stock[0] => "OVER-ISSUED".to_string(),
        Some(made) if u64::from(made) != claims => {
            format!("MISMATCH: {claims} claims acknowledged, {made} made")
        }
        Some(_) => "ok".to_string(),
        None => "coupon missing".to_string(),
    };
    shutdown(engine, &dir);
    Ok(row(
        Shape::Hot,
        System::MallCouponsInProcess,
        &m,
        secs,
        &hist,
        verdict(verified, &failed),
    ))
}

/// Drives the workload's attempts through the engine in envelopes of 64
/// commands per shard, as `command(engine, user, item, key)` makes them
/// (with the shard to send each to); counts orders and claims made.
async fn in_process(
    engine: &Arc<Engine>,
    workload: &Arc<Workload>,
    config: &Config,
    command: fn(&Engine, u32, u32, u64) -> (usize, Command),
) -> (Arc<Meter>, f64, hdrhistogram::Histogram<u64>, Vec<String>) {
    let m = meter(config);
    const ENVELOPE: usize = 64;
    let (secs, hist, failed_secs) = drive(config, |_| {
        let (engine, workload, m) = (engine.clone(), workload.clone(), m.clone());
        async move {
            let mut hist = histogram();
            while let Some(range) = take(&m, workload.attempts.len(), ENVELOPE) {
                let mut per_shard: Vec<Vec<Command>> = vec![Vec::new(); engine.shard_count()];
                for i in range.clone() {
                    let (user, item) = workload.attempts[i];
                    let (shard, cmd) = command(&engine, user, item, i as u64);
                    per_shard[shard].push(cmd);
                }
                let started = Instant::now();
                let mut rxs = Vec::new();
                for (shard, cmds) in per_shard
                    .into_iter()
                    .enumerate()
                    .filter(|(_, c)| !c.is_empty())
                {
                    rxs.push(
                        engine
                            .local(shard)
                            .expect("every shard runs in a benchmark")
                            .submit_many(cmds),
                    );
                }
                for rx in rxs {
                    let replies = rx.await.map_err(|e| PeerError::Setup(e.to_string()))?;
                    let ok = replies
                        .iter()
                        .filter(|r| matches!(r, Reply::Order { .. } | Reply::Claim { .. }))
                        .count();
                    m.orders.fetch_add(ok as u64, Ordering::Relaxed);
                }
                let us = started.elapsed().as_micros().max(1) as u64;
                let _ = hist.record_n(us, range.len() as u64);
                m.done.fetch_add(range.len() as u64, Ordering::Relaxed);
            }
            Ok(hist)
        }
    })
    .await;
    (m, secs, hist, failed_secs)
}

fn shutdown(engine: Arc<Engine>, dir: &std::path::Path) {
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown();
    }
    let _ = std::fs::remove_dir_all(dir);
}

const ADMIN: &str = "stock-bench-admin-token-0123456789abcdef";

async fn mall_http(
    shape: Shape,
    workload: &Arc<Workload>,
    config: &Config,
    events: bool,
) -> Result<Vec<Row>, PeerError> {
    let (engine, dir) = mall_engine(workload, config).await?;
    let state = unlimited_state(&engine)?;
    mall_http::bootstrap_admin(&state, Some(ADMIN), None)
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    if events {
        let log = mall_events::EventLog::start(
            mall_events::LogConfig {
                dir: Some(dir.join("events")),
                ..Default::default()
            },
            mall_events::live::LiveConfig::default(),
        )
        .map_err(|e| PeerError::Setup(format!("event log: {e}")))?;
        state.attach_events(log);
    }
    let tokens = Arc::new(shopper_tokens(&state, "bench", config.users).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = Target::parse(&format!("http://{}", listener.local_addr()?), false)
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let app = mall_http::router(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    // The trivial endpoint first: what this generator reaches on this server.
    let trivial = meter(config);
    let total = workload.attempts.len();
    let (tsecs, thist, failed_tsecs) = drive(config, |_| {
        let (target, m) = (target.clone(), trivial.clone());
        async move {
            let mut conn = Conn::new(target);
            let mut hist = histogram();
            while take(&m, total, 1).is_some() {
                let started = Instant::now();
                conn.send(
                    Method::GET,
                    "/healthz",
                    None,
                    None,
                    None,
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| PeerError::Setup(e.to_string()))?;
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                m.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hist)
        }
    })
    .await;
    let m = meter(config);
    let (secs, hist, failed_secs) = drive(config, |_| {
        let (target, m, workload, tokens) = (target.clone(), m.clone(), workload.clone(), tokens.clone());
        async move {
            let mut conn = Conn::new(target);
            let mut hist = histogram();
            while let Some(range) = take(&m, workload.attempts.len(), 1) {
                let i = range.start;
                let (user, item) = workload.attempts[i];
                let body = serde_json::json!({"sku": item + 1, "quantity": 1, "payment": "online", "address": "Bench Road"});
                let key = format!("b{i}");
                let started = Instant::now();
                let (status, _) = conn
                    .send(Method::POST, "/v1/orders", Some(&tokens[user as usize]), Some(&key), Some(&body), Duration::from_secs(10))
                    .await
                    .map_err(|e| PeerError::Setup(e.to_string()))?;
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                if status == hyper::StatusCode::CREATED {
                    m.orders.fetch_add(1, Ordering::Relaxed);
                }
                m.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hist)
        }
    })
    .await;
    // A graceful stop: the connections close and the state (and with it
    // the engine) is released, so the engine can shut down cleanly.
    let _ = stop.send(());
    let _ = server.await;
    let verified = verify_mall(&engine, workload, m.orders.load(Ordering::Relaxed));
    shutdown(engine, &dir);
    if events {
        return Ok(vec![row(
            shape,
            System::MallHttpEvents,
            &m,
            secs,
            &hist,
            verdict(verified, &failed_secs),
        )]);
    }
    Ok(vec![
        row(
            shape,
            System::TrivialHttp,
            &trivial,
            tsecs,
            &thist,
            verdict("n/a".into(), &failed_tsecs),
        ),
        row(
            shape,
            System::MallHttp,
            &m,
            secs,
            &hist,
            verdict(verified, &failed_secs),
        ),
    ])
}

/// Checks stock, refuses a repeat buyer, decrements and records the buyer.
const LUA: &str = "if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -2 end \
local s = tonumber(redis.call('GET', KEYS[1]) or '0') \
if s < tonumber(ARGV[2]) then return -1 end \
redis.call('DECRBY', KEYS[1], ARGV[2]) redis.call('SADD', KEYS[2], ARGV[1]) return 1";

async fn redis(
    shape: Shape,
    workload: &Arc<Workload>,
    config: &Config,
    run_id: &str,
) -> Result<Row, PeerError> {
    let own = match &config.redis_url {
        Some(_) => None,
        None => Some(RedisServer::start()?),
    };
    let addr = match (&config.redis_url, &own) {
        (Some(url), _) => url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_string(),
        (None, Some(s)) => s.addr(),
        (None, None) => unreachable!("a server was started"),
    };
    let mut admin = Resp::connect(&addr).await?;
    let sha = match admin.call(&[b"SCRIPT", b"LOAD", LUA.as_bytes()]).await? {
        RespValue::Bulk(Some(s)) => String::from_utf8_lossy(&s).to_string(),
        other => return Err(PeerError::Redis(format!("SCRIPT LOAD: {other:?}"))),
    };
    for (chunk_i, chunk) in workload.stock.chunks(1_000).enumerate() {
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for (j, s) in chunk.iter().enumerate() {
            args.push(format!("{run_id}:stock:{}", chunk_i * 1_000 + j).into_bytes());
            args.push(s.to_string().into_bytes());
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        admin.call(&refs).await?;
    }
    let m = meter(config);
    let run_id2 = run_id.to_string();
    let (secs, hist, failed_secs) = drive(config, |_| {
        let (addr, m, workload, sha, run_id) = (
            addr.clone(),
            m.clone(),
            workload.clone(),
            sha.clone(),
            run_id2.clone(),
        );
        async move {
            let mut conn = Resp::connect(&addr).await?;
            let mut hist = histogram();
            while let Some(range) = take(&m, workload.attempts.len(), 1) {
                let (user, item) = workload.attempts[range.start];
                let (stock_key, buyers_key) = (
                    format!("{run_id}:stock:{item}"),
                    format!("{run_id}:buyers:{item}"),
                );
                let user = user.to_string();
                let started = Instant::now();
                let reply = conn
                    .call(&[
                        b"EVALSHA",
                        sha.as_bytes(),
                        b"2",
                        stock_key.as_bytes(),
                        buyers_key.as_bytes(),
                        user.as_bytes(),
                        b"1",
                    ])
                    .await?;
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                if reply == RespValue::Int(1) {
                    m.orders.fetch_add(1, Ordering::Relaxed);
                }
                m.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hist)
        }
    })
    .await;
    // Verify: no negative stock, and the buyers recorded match the decrements.
    let mut sold = 0u64;
    let mut verified = "ok".to_string();
    for (i, &initial) in workload.stock.iter().enumerate() {
        let left = match admin
            .call(&[b"GET", format!("{run_id}:stock:{i}").as_bytes()])
            .await?
        {
            RespValue::Bulk(Some(v)) => String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(-1),
            _ => -1,
        };
        let buyers = match admin
            .call(&[b"SCARD", format!("{run_id}:buyers:{i}").as_bytes()])
            .await?
        {
            RespValue::Int(n) => n,
            _ => -1,
        };
        if left < 0 || i64::from(initial) - left != buyers {
            verified = format!(
                "OVERSOLD or inconsistent item {i}: left {left}, buyers {buyers}, stock {initial}"
            );
            break;
        }
        sold += buyers as u64;
    }
    if verified == "ok" && sold != m.orders.load(Ordering::Relaxed) {
        verified = format!(
            "MISMATCH: {} successes, {sold} buyers",
            m.orders.load(Ordering::Relaxed)
        );
    }
    drop(own);
    Ok(row(
        shape,
        System::Redis,
        &m,
        secs,
        &hist,
        verdict(verified, &failed_secs),
    ))
}

/// PostgreSQL's usual flash sale: one transaction per attempt, `UPDATE ... WHERE
/// available >= 1` and an INSERT, durable commits.
pub async fn postgres(
    shape: Shape,
    workload: &Arc<Workload>,
    config: &Config,
    run_id: &str,
) -> Result<Row, PeerError> {
    let (own, url) = postgres_target(config.postgres_url.as_deref())?;
    let connect = |url: String| async move { pg_connect(&url).await };
    let admin = connect(url.clone()).await?;
    let (stock_t, orders_t) = (format!("stock_{run_id}"), format!("orders_{run_id}"));
    admin
        .batch_execute(&format!(
            "CREATE TABLE {stock_t} (sku int PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
             CREATE TABLE {orders_t} (id bigserial PRIMARY KEY, sku int NOT NULL, user_id bigint NOT NULL, quantity int NOT NULL, UNIQUE (sku, user_id));"
        ))
        .await?;
    for (c, chunk) in workload.stock.chunks(1_000).enumerate() {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(j, s)| format!("({}, {s})", c * 1_000 + j))
            .collect();
        admin
            .batch_execute(&format!(
                "INSERT INTO {stock_t} VALUES {}",
                values.join(",")
            ))
            .await?;
    }
    let m = meter(config);
    let (st, ot) = (stock_t.clone(), orders_t.clone());
    let (secs, hist, failed_secs) = drive(config, |_| {
        let (url, m, workload, st, ot) = (
            url.clone(),
            m.clone(),
            workload.clone(),
            st.clone(),
            ot.clone(),
        );
        async move {
            let mut client = connect(url).await?;
            let update = client
                .prepare(&format!(
                    "UPDATE {st} SET available = available - 1 WHERE sku = $1 AND available >= 1"
                ))
                .await?;
            let insert = client
                .prepare(&format!(
                    "INSERT INTO {ot} (sku, user_id, quantity) VALUES ($1, $2, 1)"
                ))
                .await?;
            let mut hist = histogram();
            while let Some(range) = take(&m, workload.attempts.len(), 1) {
                let (user, item) = workload.attempts[range.start];
                let started = Instant::now();
                let tx = client.transaction().await?;
                let updated = tx.execute(&update, &[&(item as i32)]).await?;
                let won = if updated == 1 {
                    match tx
                        .execute(&insert, &[&(item as i32), &i64::from(user)])
                        .await
                    {
                        Ok(_) => {
                            tx.commit().await?;
                            true
                        }
                        Err(_) => false, // a repeat buyer: the transaction rolls back on drop
                    }
                } else {
                    tx.rollback().await?;
                    false
                };
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                if won {
                    m.orders.fetch_add(1, Ordering::Relaxed);
                }
                m.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hist)
        }
    })
    .await;
    let mut verified = "ok".to_string();
    let rows = admin
        .query(&format!("SELECT s.sku, s.available, (SELECT count(*) FROM {orders_t} o WHERE o.sku = s.sku) FROM {stock_t} s ORDER BY s.sku"), &[])
        .await?;
    let mut sold = 0i64;
    for r in rows {
        let (sku, available, orders): (i32, i32, i64) = (r.get(0), r.get(1), r.get(2));
        let initial = i64::from(workload.stock[sku as usize]);
        if available < 0 || initial - i64::from(available) != orders {
            verified = format!("OVERSOLD or inconsistent item {sku}");
            break;
        }
        sold += orders;
    }
    if verified == "ok" && sold as u64 != m.orders.load(Ordering::Relaxed) {
        verified = format!(
            "MISMATCH: {} successes, {sold} orders",
            m.orders.load(Ordering::Relaxed)
        );
    }
    let _ = admin
        .batch_execute(&format!("DROP TABLE {stock_t}; DROP TABLE {orders_t};"))
        .await;
    drop(admin);
    drop(own);
    Ok(row(
        shape,
        System::Postgres,
        &m,
        secs,
        &hist,
        verdict(verified, &failed_secs),
    ))
}

/// Runs the shapes on mall and the peers asked for; one row per system.
pub async fn run(
    shapes: &[Shape],
    peers: &[System],
    config: &Config,
) -> Result<Vec<Row>, PeerError> {
    if let Some(url) = &config.redis_url {
        check_local(
            "redis",
            url.trim_start_matches("redis://").trim_end_matches('/'),
            config.allow_remote,
        )?;
    }
    if let Some(url) = &config.postgres_url {
        let field = |key: &str| {
            url.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .map(str::to_string)
        };
        let host = field("host=").unwrap_or_else(|| "localhost".into());
        let port = field("port=").unwrap_or_else(|| "5432".into());
        check_local("postgres", &format!("{host}:{port}"), config.allow_remote)?;
    }
    let mut rows = Vec::new();
    let run_id = format!("b{}", SystemClock.now().0 % 1_000_000_000);
    for &shape in shapes {
        let workload = Arc::new(Workload::new(shape, config, 11));
        let run_id = format!("{run_id}{}", if shape == Shape::Hot { "h" } else { "z" });
        rows.push(mall_in_process(shape, &workload, config).await?);
        if shape == Shape::Hot {
            rows.push(mall_coupons_in_process(&workload, config).await?);
        }
        rows.extend(mall_http(shape, &workload, config, false).await?);
        if config.with_events {
            rows.extend(mall_http(shape, &workload, config, true).await?);
        }
        if peers.contains(&System::Redis) {
            rows.push(redis(shape, &workload, config, &run_id).await?);
        }
        if peers.contains(&System::Postgres) {
            rows.push(postgres(shape, &workload, config, &run_id).await?);
        }
    }
    Ok(rows)
}

/// The table: each system's rate, p99, and how many times mall (in-process,
/// and over HTTP) is faster than it.
pub fn print(rows: &[Row]) {
    println!(
        "{:<6} {:<24} {:>9} {:>8} {:>11} {:>8} {:>8} {:>9} {:>9}  verified",
        "shape",
        "system",
        "attempts",
        "orders",
        "attempts/s",
        "p50 ms",
        "p99 ms",
        "in-proc x",
        "HTTP x"
    );
    for r in rows {
        let base = |sys: System| {
            rows.iter()
                .find(|b| b.shape == r.shape && b.system == sys)
                .map(|b| b.per_s / r.per_s.max(1e-9))
        };
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
        println!(
            "{:<6} {:<24} {:>9} {:>8} {:>11.0} {:>8.3} {:>8.3} {:>9} {:>9}  {}",
            if r.shape == Shape::Hot { "hot" } else { "zipf" },
            r.system.name(),
            r.attempts,
            r.orders,
            r.per_s,
            r.p50_ms,
            r.p99_ms,
            fmt(base(System::MallInProcess)),
            fmt(base(System::MallHttp)),
            r.verified
        );
    }
}
