//! `mall bench engine`: the inventory engine in-process, durability on
//! (real SQLite files, `synchronous=FULL`), on two shapes of the night:
//!
//! - `hot`: one SKU, stock 10,000, 1,000,000 attempts from 100,000 users;
//! - `spread`: 10,000 SKUs with Zipf(1.1) popularity and ample stock, every
//!   attempt succeeds and is durable.
//!
//! Clients submit envelopes of commands (as a load balancer batching
//! requests would); each command is still decided on its own, in arrival
//! order. Latency is per envelope, from submission to durable reply, and is
//! counted once per command in it.

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use mall_core::{Category, Fen, Item, MerchantId, PaymentMethod, Quantity, Sku, Timestamp, UserId};
use mall_engine::{Engine, EngineConfig};
use mall_inventory::sim::Rng;
use mall_inventory::{Command, Reply, Reserve};
use mall_shard::{Clock, SystemClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum Which {
    /// Snap-up latency at a steady rate, quiet and under a login flood and
    /// a connection flood (one run, a real server); memory after a login flood.
    Flood(crate::floodbench::FloodArgs),
    /// The request path of one node beside a plain axum handler and an
    /// axum service in front of Redis (Lua, AOF always), one run.
    Edge {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Shoppers (tokens) the mall requests cycle through.
        #[arg(long, default_value_t = 20_000)]
        shoppers: u64,
    },
    /// Throughput of 1, 2 and 3 nodes on this machine, and the cost of
    /// forwarding (load sent to each SKU's owner, then to nodes in turn).
    Cluster(crate::clusterbench::ClusterBenchArgs),
    /// Rate limiting: the server's limiter (governor's keyed GCRA) beside
    /// the house's former striped token buckets, same keys, same threads,
    /// in one run.
    Limits {
        /// Checks per thread.
        #[arg(long, default_value_t = 2_000_000)]
        checks: u64,
        /// Distinct keys (shoppers).
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// The inventory engine in-process, durable.
    Engine {
        #[arg(long, value_enum, default_value = "both")]
        shape: Shape,
        #[arg(long, default_value_t = 1_000_000)]
        attempts: u64,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Shards; default one per core.
        #[arg(long)]
        shards: Option<usize>,
        /// Commands per envelope. Commands in flight = clients x window x envelope
        /// (default 16,384: a crush of that many concurrent requests).
        #[arg(long, default_value_t = 1024)]
        envelope: usize,
        /// Client threads.
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Envelopes each client keeps in flight.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Run on PostgreSQL (a scratch database per shape, made on the
        /// server given and dropped after) instead of SQLite files.
        #[command(flatten)]
        store: crate::store::StoreArgs,
    },
    /// One flash-sale workload side by side: mall in-process, mall over
    /// HTTP, Redis (Lua, AOF always) and PostgreSQL (durable), checked for
    /// overselling. Starts throwaway servers (apt-installing them if
    /// missing) unless given URLs.
    Stock {
        #[arg(long, value_enum, default_value = "both")]
        shape: StockShape,
        /// Peers to run beside mall (comma-separated); none with an empty value.
        #[arg(long, value_enum, value_delimiter = ',', default_values = ["redis", "postgres"])]
        against: Vec<Peer>,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Attempts per shape (each of the first `users` is one shopper's).
        #[arg(long, default_value_t = 100_000)]
        attempts: u64,
        /// Items of the Zipf shape.
        #[arg(long, default_value_t = 10_000)]
        items: u32,
        /// Stock of the hot item.
        #[arg(long, default_value_t = 10_000)]
        hot_stock: u32,
        /// Requests in flight, the same for every system.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Each system stops after this many seconds, done or not.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        #[arg(long)]
        shards: Option<usize>,
        /// Use this Redis (host:port) instead of starting one.
        #[arg(long)]
        redis_url: Option<String>,
        /// Use this PostgreSQL (libpq key=value string) instead of starting one.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Allow --redis-url / --postgres-url to name a host that is not this machine.
        #[arg(long)]
        allow_remote: bool,
        /// Skip the second HTTP run with the event log on (what recording costs).
        #[arg(long)]
        no_events: bool,
        /// Also write the rows as JSON to this file (for scripts and tests).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Durable double-entry transfers/s: the ledger in-process beside
    /// PostgreSQL doing the same transfer (two balance UPDATEs with a
    /// non-negative check plus one INSERT, durable commits).
    Ledger {
        #[arg(long, default_value_t = 100_000)]
        wallets: u64,
        #[arg(long, default_value_t = 2_000_000)]
        transfers: u64,
        /// Transfers per command.
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        /// Commands in flight.
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        /// PostgreSQL sessions.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Each system stops after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Skip PostgreSQL.
        #[arg(long)]
        no_postgres: bool,
        #[arg(long)]
        postgres_url: Option<String>,
        /// Also write the rows as JSON to this file (for scripts and tests).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The event log's cost: CPU per event recorded (the request's share)
    /// and per event written and folded (the writer thread's), in-process.
    Events {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        #[arg(long, default_value_t = 2)]
        threads: u64,
    },
    /// Pricing: wall time of one price of a 5-line cart with 4 promotions
    /// and 2 coupons, in-process.
    Pricing {
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
    },
    /// Durable 3-line cart checkouts beside single-SKU snap-ups, on one
    /// engine (SQLite), in-process (the router called directly) and over
    /// HTTP on loopback; verified against the units held.
    Checkout {
        /// Requests of each kind in each mode.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        #[arg(long, default_value_t = 3_000)]
        items: u32,
        #[arg(long, default_value_t = 2_000)]
        users: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        shards: Option<usize>,
        /// Also write the rows as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The payment channel router: wall time per routing decision (a
    /// submit and its completion), in-process, by number of channels.
    Router {
        #[arg(long, default_value_t = 1_000_000)]
        decisions: u64,
        /// Channel counts to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [2usize, 3, 8, 32])]
        channels: Vec<usize>,
    },
}

/// Records a flash-sale mix of events (mostly refusals, some orders and
/// views) from `threads` threads into a real log on disk, and reports the
/// CPU it took: per event in the recording threads, and overall.
fn events_cost(events: u64, threads: u64) -> Result<()> {
    let base = tempfile_dir()?;
    let dir = base.join("events");
    let log = mall_events::EventLog::start(
        mall_events::LogConfig {
            dir: Some(dir.clone()),
            ..Default::default()
        },
        mall_events::live::LiveConfig::default(),
    )?;
    let cpu0 = mall_rush::run::cpu_seconds();
    let wall = std::time::Instant::now();
    let per = events / threads;
    let recorders: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let now = 1_762_790_400_000i64;
                for i in 0..per {
                    let kind = match i % 10 {
                        0 => mall_events::Kind::View,
                        1 | 2 => mall_events::Kind::Order,
                        _ => mall_events::Kind::Refusal,
                    };
                    let mut e = mall_events::Event::new(now + (i / 1000) as i64, kind);
                    (e.user, e.sku, e.latency_us) = (t * per + i, i % 997, 800);
                    if kind == mall_events::Kind::Refusal {
                        e.reason = Some("sold_out".into());
                    } else if kind == mall_events::Kind::Order {
                        (e.order, e.amount_fen) = (i, 19_900);
                    }
                    log.record(e);
                }
                started.elapsed()
            })
        })
        .collect();
    let record_wall: Vec<Duration> = recorders.into_iter().map(|h| h.join().unwrap()).collect();
    log.flush();
    let total_cpu = mall_rush::run::cpu_seconds() - cpu0;
    let wall = wall.elapsed().as_secs_f64();
    let recorded = log.written();
    let record_ns =
        record_wall.iter().map(Duration::as_secs_f64).sum::<f64>() / (per * threads) as f64 * 1e9;
    println!(
        "mall bench events: {recorded} events from {threads} threads into {} (views dropped: {})",
        dir.display(),
        log.dropped_views()
    );
    println!("  record(): {record_ns:.0} ns per event in the calling thread (wall, includes waiting for the lock)");
    println!("  all CPU (recording, JSON, writing, folding): {:.2} µs per event; {:.0} events/s over {wall:.2} s", total_cpu / recorded.max(1) as f64 * 1e6, recorded as f64 / wall);
    drop(log);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// Writes a benchmark's rows as JSON to `path`, if given.
fn write_json<T: serde::Serialize>(path: Option<&std::path::Path>, rows: &T) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn stock(
    shape: StockShape,
    against: &[Peer],
    config: &mall_bench::stockbench::Config,
    json: Option<&std::path::Path>,
) -> Result<()> {
    use mall_bench::stockbench::{Shape as S, System};
    let shapes: Vec<S> = match shape {
        StockShape::Hot => vec![S::Hot],
        StockShape::Zipf => vec![S::Zipf],
        StockShape::Both => vec![S::Hot, S::Zipf],
    };
    let peers: Vec<System> = against
        .iter()
        .map(|p| match p {
            Peer::Redis => System::Redis,
            Peer::Postgres => System::Postgres,
        })
        .collect();
    println!(
        "mall bench stock: {} attempts from {} users per shape, concurrency {}, at most {}s per system; hot: 1 item x {} stock; zipf: {} items, Zipf(1.1)",
        config.attempts, config.users, config.concurrency, config.seconds_max, config.hot_stock, config.items
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(mall_bench::stockbench::run(&shapes, &peers, config))?;
    mall_bench::stockbench::print(&rows);
    write_json(json, &rows)?;
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.verified != "ok" && r.verified != "n/a")
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "{} system(s) failed verification",
        bad.len()
    );
    Ok(())
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StockShape {
    Hot,
    Zipf,
    Both,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Peer {
    Redis,
    Postgres,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Shape {
    Hot,
    Spread,
    Both,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Flood(args) => crate::floodbench::flood(args),
        Which::Cluster(args) => crate::clusterbench::run(args),
        Which::Edge {
            seconds,
            connections,
            shoppers,
        } => {
            println!(
                "mall bench edge: {connections} keep-alive connections, closed loop, {seconds} s per row, servers and generator in one process ({} cores)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            );
            let config = mall_bench::edgebench::EdgeConfig {
                seconds,
                connections: connections.max(1),
                shoppers: shoppers.max(1),
            };
            let rows = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(mall_bench::edgebench::run(&config))?;
            mall_bench::edgebench::print(&rows);
            Ok(())
        }
        Which::Limits {
            checks,
            keys,
            threads,
        } => limits(checks, keys.max(1), threads.max(1)),
        Which::Events { events, threads } => events_cost(events, threads.max(1)),
        Which::Pricing { iterations } => {
            let per = mall_pricing::bench::cost(iterations.clamp(1, u64::from(u32::MAX)));
            let ns = per.as_secs_f64() * 1e9;
            println!("mall bench pricing: a 5-line cart from 2 merchants, 4 promotions, 2 coupons, {iterations} prices");
            println!(
                "  {ns:.0} ns a price ({:.0} prices/s on one core; target <= 5,000 ns)",
                1e9 / ns
            );
            Ok(())
        }
        Which::Checkout {
            requests,
            items,
            users,
            concurrency,
            shards,
            json,
        } => {
            anyhow::ensure!(items >= 3, "a checkout needs 3 items or more");
            let config = mall_bench::checkoutbench::Config {
                requests: requests.max(1),
                items,
                users: users.max(1),
                concurrency: concurrency.max(1),
                shards: shards
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            };
            println!(
                "mall bench checkout: {} requests of each kind per mode, {} items, {} shoppers, concurrency {}, {} shards (SQLite)",
                config.requests, config.items, config.users, config.concurrency, config.shards
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let rows = runtime.block_on(mall_bench::checkoutbench::run(&config))?;
            mall_bench::checkoutbench::print(&rows);
            write_json(json.as_deref(), &rows)?;
            let bad = rows.iter().filter(|r| r.verified != "ok").count();
            anyhow::ensure!(bad == 0, "{bad} row(s) failed verification");
            Ok(())
        }
        Which::Router {
            decisions,
            channels,
        } => {
            println!("mall bench router: {decisions} decisions per row (submit + complete, load at half of total capacity)");
            println!("  channels   ns/decision   decisions/s");
            for n in channels {
                anyhow::ensure!((1..=64).contains(&n), "channels must be 1 to 64");
                let per = mall_router::bench::decision_cost(n, decisions);
                let ns = per.as_secs_f64() * 1e9;
                println!("  {n:>8}   {ns:>11.0}   {:>11.0}", 1e9 / ns);
            }
            Ok(())
        }
        Which::Ledger {
            wallets,
            transfers,
            batch,
            in_flight,
            concurrency,
            seconds,
            no_postgres,
            postgres_url,
            json,
        } => {
            let config = mall_bench::ledgerbench::Config {
                wallets: wallets.max(1),
                transfers,
                batch: batch.max(1),
                in_flight: in_flight.max(1),
                concurrency: concurrency.max(1),
                seconds_max: seconds,
                postgres_url,
            };
            println!(
                "mall bench ledger: {} transfers from {} wallets into escrow, in commands of {}, {} in flight, durable (synchronous=FULL); PostgreSQL with {} sessions; at most {}s each",
                config.transfers, config.wallets, config.batch, config.in_flight, config.concurrency, config.seconds_max
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let rows = runtime.block_on(async {
                let mut rows = vec![mall_bench::ledgerbench::mall(&config).await?];
                if !no_postgres {
                    rows.push(mall_bench::ledgerbench::postgres(&config).await?);
                }
                Ok::<_, mall_bench::peers::PeerError>(rows)
            })?;
            mall_bench::ledgerbench::print(&rows);
            write_json(json.as_deref(), &rows)?;
            anyhow::ensure!(
                rows.iter().all(|r| r.verified == "ok"),
                "a system failed verification"
            );
            Ok(())
        }
        Which::Engine {
            shape,
            attempts,
            users,
            shards,
            envelope,
            clients,
            window,
            store,
        } => engine(
            shape, attempts, users, shards, envelope, clients, window, &store,
        ),
        Which::Stock {
            shape,
            against,
            users,
            attempts,
            items,
            hot_stock,
            concurrency,
            seconds,
            shards,
            redis_url,
            postgres_url,
            allow_remote,
            no_events,
            json,
        } => {
            let config = mall_bench::stockbench::Config {
                users,
                attempts,
                items,
                hot_stock,
                concurrency: concurrency.max(1),
                seconds_max: seconds,
                shards: shards
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                redis_url,
                postgres_url,
                allow_remote,
                with_events: !no_events,
            };
            stock(shape, &against, &config, json.as_deref())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn engine(
    shape: Shape,
    attempts: u64,
    users: u64,
    shards: Option<usize>,
    envelope: usize,
    clients: usize,
    window: usize,
    store: &crate::store::StoreArgs,
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let params = |shards: usize| Params {
        attempts,
        users,
        shards,
        envelope: envelope.max(1),
        clients: clients.max(1),
        window: window.max(1),
    };
    // On PostgreSQL the run also measures, on the same machine and in the
    // same run: the SQLite store, and PostgreSQL's own flash sale.
    let mut runs = Vec::new();
    if store.is_postgres() {
        runs.push((
            params(shards.unwrap_or(mall_postgres::DEFAULT_SHARDS)),
            store.clone(),
        ));
    }
    runs.push((
        params(shards.unwrap_or(cores)),
        crate::store::StoreArgs::default(),
    ));
    println!("mall bench engine: {attempts} attempts, {users} users, envelopes of {envelope}, {clients} client(s) x {window} in flight; durable: PostgreSQL synchronous_commit=on, SQLite synchronous=FULL");
    println!(
        "{:<11} {:>6} {:<8} {:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>8}",
        "store",
        "shards",
        "shape",
        "attempts",
        "orders",
        "decisions/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "audit"
    );
    let mut spread = Vec::new();
    for (params, store) in &runs {
        if matches!(shape, Shape::Hot | Shape::Both) {
            bench_shape(params, true, store)?;
        }
        if matches!(shape, Shape::Spread | Shape::Both) {
            spread.push(bench_shape(params, false, store)?);
        }
    }
    if store.is_postgres() && matches!(shape, Shape::Spread | Shape::Both) {
        let peer = postgres_peer_spread(&store.servers()[0])?;
        let ratio = spread[0] / peer.max(1e-9);
        println!("mall on PostgreSQL, spread: {:.0} durable orders/s = {ratio:.1}x PostgreSQL's own flash sale at its best concurrency ({peer:.0}/s), same server, same run", spread[0]);
    }
    Ok(())
}

/// PostgreSQL's usual flash sale on the spread shape (10,000 SKUs of
/// 1,000,000 units, Zipf popularity, every attempt succeeds): one
/// transaction per order, `UPDATE ... WHERE available >= 1` and an INSERT,
/// durable commits. Tried with 8, 16 and 64 sessions; the best rate.
fn postgres_peer_spread(url: &str) -> Result<f64> {
    use mall_bench::stockbench::{Config, Shape as StockShape, Workload};
    let mut rng = mall_core::rng::Rng::new(11);
    let cdf = mall_rush::plan::zipf_cdf(10_000, 1.1);
    // Enough attempts for 15 s at the best rate seen here (~2,300/s), each
    // a different shopper (the peer's table has one order per shopper and SKU).
    let workload = Arc::new(Workload {
        stock: vec![1_000_000; 10_000],
        attempts: (0..100_000u32)
            .map(|user| (user, mall_rush::plan::sample_rank(&cdf, &mut rng)))
            .collect(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut best: f64 = 0.0;
    for sessions in [8, 16, 64] {
        // The peer reads only its URL, concurrency and time bound; the
        // workload is the one above.
        let config = Config {
            users: workload.attempts.len() as u64,
            attempts: workload.attempts.len() as u64,
            items: 10_000,
            hot_stock: 0,
            concurrency: sessions,
            seconds_max: 15.0,
            shards: 1,
            redis_url: None,
            postgres_url: Some(url.to_string()),
            allow_remote: true,
            with_events: false,
        };
        let run_id = format!("e{}s{sessions}", std::process::id());
        let row = runtime
            .block_on(mall_bench::stockbench::postgres(
                StockShape::Zipf,
                &workload,
                &config,
                &run_id,
            ))
            .map_err(|e| anyhow::anyhow!("the PostgreSQL peer: {e}"))?;
        println!(
            "{:<11} {:>6} {:<8} {:>10} {:>10} {:>12.0} {:>9.3} {:>9.3} {:>9} {:>8}",
            "pg UPDATE",
            format!("{sessions}s"),
            "spread",
            row.attempts,
            row.orders,
            row.per_s,
            row.p50_ms,
            row.p99_ms,
            "-",
            row.verified
        );
        anyhow::ensure!(
            row.verified == "ok",
            "the PostgreSQL peer: {}",
            row.verified
        );
        best = best.max(row.per_s);
    }
    Ok(best)
}

struct Params {
    attempts: u64,
    users: u64,
    shards: usize,
    envelope: usize,
    clients: usize,
    window: usize,
}

/// One shape on a fresh store; its decisions/s.
fn bench_shape(p: &Params, hot: bool, store: &crate::store::StoreArgs) -> Result<f64> {
    let tmp = tempfile_dir()?;
    // Every shape starts from an empty store: a fresh directory, or a
    // scratch database dropped when the shape is done.
    let scratch = if store.is_postgres() {
        let name = format!(
            "mall_bench_{}_{}",
            std::process::id(),
            if hot { "hot" } else { "spread" }
        );
        Some(mall_postgres::Scratch::create(&store.servers(), &name)?)
    } else {
        None
    };
    let dir: Arc<dyn mall_engine::Store> = match &scratch {
        Some(scratch) => Arc::new(mall_postgres::PgStore::open(
            scratch.urls(),
            Some(p.shards),
            store.connections(),
        )?),
        None => Arc::new(mall_sqlite::DataDir::open(&tmp, Some(p.shards))?),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let mut config = EngineConfig::default();
    config.inventory.idempotency_keys_max = (p.attempts as usize).max(1);
    let engine = Arc::new(Engine::start(dir.clone(), config, clock)?);
    let (items_count, stock) = if hot {
        (1u64, 10_000u32)
    } else {
        (10_000u64, 1_000_000u32)
    };
    // Create the items.
    let items = (1..=items_count)
        .map(|sku| Item {
            sku: Sku(sku),
            merchant: MerchantId(1),
            title: format!("bench {sku}"),
            category: Category::Electronics,
            price_fen: Fen(9_900),
            stock_total: stock,
            per_user_limit: if hot { 1 } else { 1_000 },
            opens_at: now.plus_ms(-1_000),
            closes_at: now.plus_ms(3_600_000),
            shelf_life_hours: None,
            presale: None,
            sale_prices: vec![],
            floor_price_fen: mall_core::Fen(1),
        })
        .collect();
    engine.create_items_blocking(items)?;
    let cdf = Arc::new(mall_rush::plan::zipf_cdf(items_count as usize, 1.1));
    let per_client = p.attempts / p.clients as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..p.clients)
        .map(|c| {
            let (engine, cdf) = (engine.clone(), cdf.clone());
            let (users, envelope, window, shards) = (p.users, p.envelope, p.window, p.shards);
            std::thread::spawn(move || {
                client(
                    c as u64, per_client, users, envelope, window, shards, &engine, &cdf,
                )
            })
        })
        .collect();
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut orders = 0u64;
    for h in handles {
        let (o, hh) = h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        orders += o;
        hist.add(hh)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let engine = Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("engine still shared"))?;
    engine.shutdown();
    let report = mall_engine::audit(dir.as_ref())?;
    let expected_ok = if hot {
        orders == u64::from(stock)
    } else {
        orders == per_client * p.clients as u64
    };
    let audit = if report.is_clean() && expected_ok && report.orders as u64 == orders {
        "ok"
    } else {
        "FAILED"
    };
    let attempts = per_client * p.clients as u64;
    let rate = attempts as f64 / elapsed;
    println!(
        "{:<11} {:>6} {:<8} {:>10} {:>10} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>8}",
        if store.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        },
        p.shards,
        if hot { "hot" } else { "spread" },
        attempts,
        orders,
        rate,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        audit
    );
    if !hot {
        // A restart: every shard loaded again from the store.
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let started = Instant::now();
        let engine = Engine::start(dir.clone(), EngineConfig::default(), clock)?;
        let took = started.elapsed();
        engine.shutdown();
        println!(
            "{:<11} {:>6} restart: {} shard(s) with {orders} orders loaded in {:.2} s ({:.0} orders/s)",
            "",
            "",
            p.shards,
            took.as_secs_f64(),
            orders as f64 / took.as_secs_f64().max(1e-9)
        );
    }
    drop(dir);
    drop(scratch);
    let _ = std::fs::remove_dir_all(&tmp);
    anyhow::ensure!(
        audit == "ok",
        "audit failed: {:?} (orders {orders})",
        report.violations.iter().take(5).collect::<Vec<_>>()
    );
    Ok(rate)
}

type ClientResult = Result<(u64, hdrhistogram::Histogram<u64>)>;

#[allow(clippy::too_many_arguments)]
fn client(
    id: u64,
    attempts: u64,
    users: u64,
    envelope: usize,
    window: usize,
    shards: usize,
    engine: &Engine,
    cdf: &[f64],
) -> ClientResult {
    let mut rng = Rng::new(0xbe0c + id);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut in_flight = std::collections::VecDeque::new();
    let mut orders = 0u64;
    let mut sent = 0u64;
    let mut pending: Vec<Vec<Command>> = vec![Vec::new(); shards];
    let flush = |shard: usize,
                 cmds: Vec<Command>,
                 in_flight: &mut std::collections::VecDeque<_>|
     -> Result<()> {
        let n = cmds.len() as u64;
        let rx = engine
            .local(shard)
            .expect("every shard runs in a benchmark")
            .submit_many(cmds);
        in_flight.push_back((Instant::now(), n, rx));
        Ok(())
    };
    let mut drain_one = |in_flight: &mut std::collections::VecDeque<(
        Instant,
        u64,
        tokio::sync::oneshot::Receiver<Vec<Reply>>,
    )>|
     -> Result<()> {
        if let Some((at, n, rx)) = in_flight.pop_front() {
            let replies = rx.blocking_recv().context("reply dropped")?;
            let us = at.elapsed().as_micros().max(1) as u64;
            hist.record_n(us, n)?;
            orders += replies
                .iter()
                .filter(|r| matches!(r, Reply::Order { .. }))
                .count() as u64;
            if let Some(bad) = replies.iter().find(|r| matches!(r, Reply::Unavailable)) {
                anyhow::bail!("engine answered {bad:?}");
            }
        }
        Ok(())
    };
    while sent < attempts {
        let sku = Sku(u64::from(mall_rush::plan::sample_rank(cdf, &mut rng)) + 1);
        let user = UserId(1 + rng.below(users));
        sent += 1;
        let shard = (sku.0 % shards as u64) as usize;
        pending[shard].push(Command::Reserve(Reserve {
            user,
            sku,
            quantity: Quantity::new(1).expect("1 is a quantity"),
            payment: PaymentMethod::Online,
            address: "Bench Road 11".into(),
            idempotency_key: Some(format!("c{id}-{sent}").into()),
            fingerprint: sent,
            early_access: false,
            expected_total_fen: None,
            discount_fen: mall_core::Fen(0),
        }));
        if pending[shard].len() >= envelope {
            let cmds = std::mem::take(&mut pending[shard]);
            flush(shard, cmds, &mut in_flight)?;
            while in_flight.len() >= window {
                drain_one(&mut in_flight)?;
            }
        }
    }
    for (shard, cmds) in pending.into_iter().enumerate() {
        if !cmds.is_empty() {
            flush(shard, cmds, &mut in_flight)?;
        }
    }
    while !in_flight.is_empty() {
        drain_one(&mut in_flight)?;
    }
    Ok((orders, hist))
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let base = std::env::var_os("MALL_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!(
        "mall-bench-{}-{}",
        std::process::id(),
        Timestamp(SystemClock.now().0).0
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// ns per check of each limiter: `threads` threads, each making `checks`
/// checks on keys drawn uniformly from `keys`, at 50/s with a burst of 100
/// (the per-shopper default), so most checks are admitted and some refused.
fn limits(checks: u64, keys: u64, threads: usize) -> Result<()> {
    println!(
        "mall bench limits: {threads} threads x {checks} checks over {keys} keys, 50/s burst 100"
    );
    println!("  limiter                    ns/check   checks/s   admitted");
    let run = |check: &(dyn Fn(u64) -> bool + Sync)| {
        let started = Instant::now();
        let admitted: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let mut rng = Rng::new(t as u64 + 1);
                        (0..checks).filter(|_| check(rng.below(keys))).count() as u64
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a bench thread"))
                .sum()
        });
        let total = checks * threads as u64;
        let ns = started.elapsed().as_secs_f64() * 1e9 / total as f64;
        (ns, admitted as f64 / total as f64)
    };
    let house = StripedBuckets::new(1_000_000);
    let (house_ns, house_ok) = run(&|k| house.admit(k, 50.0, 100.0));
    // The server's own limiter (governor's keyed GCRA inside), as a
    // shopper's request meets it.
    let server = mall_http::limits::RateLimiter::new(mall_http::limits::RateConfig {
        user_rate_per_s: 50.0,
        user_burst: 100.0,
        ..Default::default()
    });
    let shopper = |k: u64| mall_http::auth::Principal {
        user: mall_core::UserId(k),
        role: mall_core::Role::Shopper,
        merchant: None,
    };
    let (gov_ns, gov_ok) = run(&|k| server.check_user(&shopper(k)).is_ok());
    for (name, ns, ok) in [
        ("former (striped buckets)", house_ns, house_ok),
        ("server (governor GCRA)", gov_ns, gov_ok),
    ] {
        println!(
            "  {name:<24} {ns:>9.0} {:>10.0} {:>9.1}%",
            1e9 / ns,
            ok * 100.0
        );
    }
    println!("  former / server time: {:.2}", house_ns / gov_ns);
    Ok(())
}

/// The token buckets the server used before governor (kept as the
/// benchmark's baseline): a bucket per key in 64 mutex-striped maps.
struct StripedBuckets {
    stripes: Vec<std::sync::Mutex<rustc_hash::FxHashMap<u64, (f64, Instant)>>>,
    buckets_max: usize,
}

impl StripedBuckets {
    const STRIPES: usize = 64;

    fn new(buckets_max: usize) -> StripedBuckets {
        StripedBuckets {
            stripes: (0..Self::STRIPES).map(|_| Default::default()).collect(),
            buckets_max,
        }
    }

    fn admit(&self, key: u64, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        let stripe = &self.stripes[(key as usize).wrapping_mul(0x9E37_79B9) % Self::STRIPES];
        let mut map = stripe.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.buckets_max / Self::STRIPES {
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
