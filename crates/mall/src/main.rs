//! `mall`: the binary is glue over the library crates.

mod bench;
mod channels;
mod cluster;
mod clusterbench;
mod config;
mod floodbench;
mod forecast;
mod rush;
mod seed;
mod store;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mall_engine::Engine;
use mall_shard::{Clock, SystemClock};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mall",
    version,
    about = "The flash-sale platform for Singles' Day"
)]
struct Cli {
    /// Log lines as `text` (colours only on a terminal) or `json` (one
    /// object a line, for log shippers; a request's lines carry its id).
    #[arg(
        long,
        global = true,
        env = "MALL_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API on the embedded store.
    Serve(Box<ServeArgs>),
    /// Create a Singles' Day catalog (and shopper accounts) in a data directory.
    Seed(seed::SeedArgs),
    /// Audit a store offline (a data directory, or PostgreSQL with
    /// --store): exits non-zero on any violation.
    Check {
        #[arg(long, env = "MALL_DATA", default_value = "mall-data")]
        data: PathBuf,
        #[command(flatten)]
        store: store::StoreArgs,
    },
    /// Rehearse the night against a server (or the engine in-process), then audit it.
    Rush(rush::RushArgs),
    /// The first command to run: a fresh mall, a one-minute rehearsal of the night, its report; then keeps serving.
    Demo(rush::DemoArgs),
    /// Synthetic history of normal days (for forecasts).
    History {
        #[command(subcommand)]
        which: forecast::HistoryCmd,
    },
    /// Forecasts the night from a history (peak, sell-outs, payments, each
    /// with a band) and writes a capacity plan; `backtest` checks a forecast
    /// against what a rush produced.
    Forecast(forecast::ForecastArgs),
    /// The night's figures from the event log, printed and as an HTML page.
    Report {
        /// The event log directory (a server's is DATA/events); a cluster's
        /// night: every node's, comma-separated or the flag repeated.
        #[arg(long, default_value = "mall-data/events", value_delimiter = ',')]
        events: Vec<PathBuf>,
        /// Where the HTML page goes.
        #[arg(long, default_value = "night-report.html")]
        out: PathBuf,
    },
    /// Simulated payment providers on loopback ports, from a channels file.
    Channels(channels::ChannelsArgs),
    /// The ledger: `mall ledger verify --data DIR` audits its store.
    Ledger {
        #[command(subcommand)]
        which: LedgerCmd,
    },
    /// A cluster of nodes: `up` starts one on loopback, `status` shows one.
    Cluster {
        #[command(subcommand)]
        which: cluster::ClusterCmd,
    },
    /// Benchmarks that print numbers.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Recount the ledger from its transfers and check every rule: double
    /// entry balanced, limits held, every post or void matching its pending
    /// transfer. Exits non-zero on any violation.
    Verify {
        #[arg(long, env = "MALL_DATA", default_value = "mall-data")]
        data: PathBuf,
        #[command(flatten)]
        store: store::StoreArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with any of the settings below (flags and env win).
    #[arg(long, env = "MALL_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "MALL_ADDR")]
    addr: Option<SocketAddr>,
    /// The node's local files (event log, admin token) and, without
    /// --store, the SQLite store.
    #[arg(long, env = "MALL_DATA")]
    data: Option<PathBuf>,
    #[command(flatten)]
    store: store::StoreArgs,
    #[arg(long, env = "MALL_SHARDS")]
    shards: Option<usize>,
    /// How long an unpaid order holds its stock, e.g. "15m".
    #[arg(long, env = "MALL_HOLD_TIMEOUT", value_parser = humantime::parse_duration)]
    hold_timeout: Option<Duration>,
    #[arg(long, env = "MALL_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    #[arg(long, env = "MALL_BATCH_COMMANDS_MAX")]
    batch_commands_max: Option<usize>,
    /// Effects applied but not yet committed, per shard, at most.
    #[arg(long, env = "MALL_STAGED_EFFECTS_MAX")]
    staged_effects_max: Option<usize>,
    /// Idempotency keys of snap-ups remembered per shard, at most.
    #[arg(long, env = "MALL_IDEMPOTENCY_KEYS_MAX")]
    idempotency_keys_max: Option<usize>,
    /// How long a payment request waits for its outcome before answering 202, e.g. "5s".
    #[arg(long, env = "MALL_PAYMENT_WAIT", value_parser = humantime::parse_duration)]
    payment_wait: Option<Duration>,
    #[arg(long, env = "MALL_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    #[arg(long, env = "MALL_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    #[arg(long, env = "MALL_USER_RATE_PER_S")]
    user_rate_per_s: Option<f64>,
    #[arg(long, env = "MALL_USER_BURST")]
    user_burst: Option<f64>,
    /// Logins and registrations per second per client address.
    #[arg(long, env = "MALL_ANONYMOUS_RATE_PER_S")]
    anonymous_rate_per_s: Option<f64>,
    #[arg(long, env = "MALL_ANONYMOUS_BURST")]
    anonymous_burst: Option<f64>,
    /// The operators' listener: /healthz, /metrics, the dashboard and the
    /// admin routes, with its own connections (default: 127.0.0.1, the
    /// API's port + 1).
    #[arg(long, env = "MALL_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Open connections from one client address (IPv6: one /64), at most.
    #[arg(long, env = "MALL_CONNECTIONS_PER_ADDRESS_MAX")]
    connections_per_address_max: Option<usize>,
    /// A request's headers must arrive within this, e.g. "10s".
    #[arg(long, env = "MALL_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    header_read_timeout: Option<Duration>,
    /// An idle keep-alive connection is closed after this, e.g. "30s".
    #[arg(long, env = "MALL_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Proxies whose forwarded client addresses are believed, e.g. "10.0.0.0/8,::1".
    #[arg(long, env = "MALL_TRUSTED_PROXIES")]
    trusted_proxies: Option<String>,
    /// Lifetime of a shopper's login, e.g. "24h".
    #[arg(long, env = "MALL_SESSION_TTL", value_parser = humantime::parse_duration)]
    session_ttl: Option<Duration>,
    /// Lifetime of an admin's login, e.g. "8h".
    #[arg(long, env = "MALL_ADMIN_SESSION_TTL", value_parser = humantime::parse_duration)]
    admin_session_ttl: Option<Duration>,
    /// Threads hashing passwords (cores taken from order placement, at most).
    #[arg(long, env = "MALL_PASSWORD_HASH_THREADS")]
    password_hash_threads: Option<usize>,
    /// Accounts one client address may register per hour.
    #[arg(long, env = "MALL_REGISTRATIONS_PER_ADDRESS_PER_H")]
    registrations_per_address_per_h: Option<f64>,
    /// Payment channels (the file `mall channels` serves); without it only
    /// wallet payments work.
    #[arg(long, env = "MALL_CHANNELS")]
    channels: Option<PathBuf>,
    /// Where payment providers send their callbacks, e.g.
    /// "https://mall.example.com" (default: this server's own address). On
    /// a cluster, the load balancer's: a callback may land on any node.
    #[arg(long, env = "MALL_CALLBACK_BASE")]
    callback_base: Option<String>,
    /// A forecast (`mall forecast` writes one) to show beside the night on the dashboard.
    #[arg(long, env = "MALL_FORECAST")]
    forecast: Option<PathBuf>,
    /// A capacity plan (`mall forecast` writes one): shards of a new store,
    /// per-shopper admission, per-channel payment quotas.
    #[arg(long, env = "MALL_PLAN")]
    plan: Option<PathBuf>,
    /// Snap-ups admitted per second, all shoppers together (beyond: 503 overloaded).
    #[arg(long, env = "MALL_SNAPUPS_PER_S_MAX")]
    snapups_per_s_max: Option<f64>,
    /// Payments worked on at once (more wait their turn).
    #[arg(long, env = "MALL_PAYMENTS_IN_PROCESS_MAX")]
    payments_in_process_max: Option<usize>,
    /// Seed a Singles' Day catalog first if the store has no items.
    #[arg(long)]
    seed: bool,
    #[command(flatten)]
    seed_args: seed::CatalogArgs,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("MALL_LOG").unwrap_or_else(|_| "info".into())
    };
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
    match cli.command {
        Cmd::Serve(args) => serve(*args),
        Cmd::Seed(args) => seed::run(args),
        Cmd::Check { data, store } => check(&data, &store),
        Cmd::Rush(args) => rush::rush(args),
        Cmd::Demo(args) => rush::demo(args),
        Cmd::Ledger {
            which: LedgerCmd::Verify { data, store },
        } => ledger_verify(&data, &store),
        Cmd::Bench { which } => bench::run(which),
        Cmd::Cluster { which } => cluster::run(which),
        Cmd::Channels(args) => channels::run(args),
        Cmd::Report { events, out } => report(&events, &out),
        Cmd::History { which } => forecast::history(which),
        Cmd::Forecast(args) => forecast::forecast(args),
    }
}

/// Holds the data directory's lock: one process writes a store at a time.
pub struct DirLock(#[allow(dead_code)] std::fs::File);

pub fn lock_data_dir(path: &Path) -> Result<DirLock> {
    mall_sqlite::private_dir(path).with_context(|| format!("creating {}", path.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join("LOCK"))
        .context("opening the data directory's lock file")?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "{} is in use by another mall process (serve, seed or bench)",
            path.display()
        )
    })?;
    Ok(DirLock(file))
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = config::Config::load(args.config.as_deref())?;
    macro_rules! over {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { config.$field = v; } )* };
    }
    over!(
        addr,
        data,
        hold_timeout,
        queue_capacity,
        batch_commands_max,
        body_bytes_max,
        connections_max,
        user_rate_per_s,
        payments_in_process_max,
        user_burst,
        anonymous_rate_per_s,
        anonymous_burst,
        connections_per_address_max,
        header_read_timeout,
        idle_timeout,
        trusted_proxies,
        session_ttl,
        admin_session_ttl,
        password_hash_threads,
        registrations_per_address_per_h,
        staged_effects_max,
        idempotency_keys_max,
        payment_wait
    );
    if args.admin_addr.is_some() {
        config.admin_addr = args.admin_addr;
    }
    if args.shards.is_some() {
        config.shards = args.shards;
    }
    if args.channels.is_some() {
        config.channels = args.channels;
    }
    if args.snapups_per_s_max.is_some() {
        config.snapups_per_s_max = args.snapups_per_s_max;
    }
    if args.store.is_postgres() {
        config.store = args.store.servers();
    }
    if args.store.store_connections.is_some() {
        config.store_connections = args.store.store_connections;
    }
    let channels_file = config.channels.as_deref().map(channels::load).transpose()?;
    let plan = args
        .plan
        .as_deref()
        .map(|p| -> Result<_> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            mall_forecast::plan::from_toml(&text).with_context(|| format!("plan {}", p.display()))
        })
        .transpose()?;
    if let Some(plan) = &plan {
        // The plan's admission and shards, unless set explicitly.
        if args.user_rate_per_s.is_none() {
            config.user_rate_per_s = plan.admission.per_user_per_s;
            config.user_burst = f64::from(plan.admission.per_user_burst);
        }
        if config.shards.is_none() {
            config.shards = Some(plan.shards as usize);
        }
        if config.snapups_per_s_max.is_none() {
            config.snapups_per_s_max = Some((plan.admission.snapups_per_s_max as f64).max(1.0));
        }
        let hot: Vec<String> = plan.hot_items.iter().map(|h| h.sku.0.to_string()).collect();
        tracing::info!(shards = plan.shards, peak_orders_per_s = plan.peak_orders_per_s, hot_items = %hot.join(","), "capacity plan loaded");
    }
    config.check()?;
    let _lock = lock_data_dir(&config.data)?;
    let data = config.data.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // A node of a cluster: PostgreSQL, and no shard until its leases say.
    let node = match &args.cluster.node {
        Some(name) => {
            anyhow::ensure!(
                !args.seed,
                "--seed is for one node; seed a cluster's store first with `mall seed --store URL`"
            );
            let node_config = cluster::node_config(&args.cluster, name, config.addr)?;
            let pg = cluster::open_store(&config.store_args(), config.shards)?;
            Some((
                mall_cluster::Node::new(node_config, runtime.handle().clone()),
                pg,
            ))
        }
        None => None,
    };
    let store: Arc<dyn mall_engine::Store> = match &node {
        Some((_, pg)) => pg.clone(),
        None => config.store_args().open(&data, config.shards)?,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let accounts = store.accounts()?;
    let started = std::time::Instant::now();
    let engine = Arc::new(match &node {
        Some((node, _)) => Engine::start_empty(
            store.clone(),
            config.engine(),
            clock.clone(),
            Some(node.clone() as Arc<dyn mall_engine::Elsewhere>),
        )?,
        None => Engine::start(store.clone(), config.engine(), clock.clone())?,
    });
    tracing::info!(
        store = %store.describe(),
        shards = store.shard_count(),
        items = engine.board().len(),
        took_ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    if args.seed && engine.board().is_empty() {
        seed::seed_catalog(&engine, &*accounts, &args.seed_args, clock.now())?;
    }
    let state = mall_http::AppState::new(engine.clone(), accounts, config.http()?, clock)?;
    state.attach_events(start_events(&data)?);
    if let Some(path) = &args.forecast {
        let f = mall_forecast::forecast::load(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let _ = state.forecast.set(forecast::for_dashboard(&f));
    }
    let admin_token = std::env::var("MALL_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(t) = &admin_token {
        anyhow::ensure!(
            t.len() >= 32,
            "MALL_ADMIN_TOKEN must be at least 32 characters"
        );
    }
    let admin_password = std::env::var("MALL_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(token) =
        mall_http::bootstrap_admin(&state, admin_token.as_deref(), admin_password.as_deref())?
    {
        let path = data.join("admin-token");
        write_secret(&path, &token)?;
        tracing::info!(path = %path.display(), "first start: an admin token was generated and written to this file");
    }

    if let Some((node, _)) = &node {
        let _ = state.cluster.set(node.clone());
    }
    let handle = runtime.handle().clone();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let local = listener.local_addr()?;
        let setups = match &channels_file {
            Some(file) => file.setups(&[])?,
            None => Vec::new(),
        };
        let mut payments = mall_payments::PaymentsConfig::for_server(local, setups);
        payments.in_process_max = config.payments_in_process_max;
        // The plan's quotas are what each channel should take at the peak;
        // a quota above a channel's capacity is a warning, not a cap (the
        // router never sends more than the capacity anyway).
        for quota in plan.iter().flat_map(|p| &p.payment_quotas) {
            match payments.channels.iter().find(|c| c.route.name == quota.channel) {
                Some(c) if f64::from(c.route.capacity_per_s) < quota.payments_per_s => tracing::warn!(
                    channel = %quota.channel, quota = quota.payments_per_s, capacity = c.route.capacity_per_s,
                    "the plan expects more payments/s at the peak than this channel takes; the queue will shave the excess"
                ),
                Some(_) => {}
                None => tracing::warn!(channel = %quota.channel, "the plan names a channel that is not configured"),
            }
        }
        payments.wait_ms = config.payment_wait.as_millis() as u64;
        if let Some(base) = &args.callback_base {
            anyhow::ensure!(
                base.starts_with("http://") || base.starts_with("https://"),
                "--callback-base must be an http:// or https:// URL"
            );
            payments.callback_base = base.trim_end_matches('/').to_string();
        }
        let channel_count = payments.channels.len();
        let mut leaving = None;
        match &node {
            // Payments start wherever the ledger runs, and follow it.
            Some((node, pg)) => {
                cluster::payments_follow_ledger(node, state.clone(), payments, handle.clone());
                cluster::handle_carried(node, mall_http::router(state.clone()));
                let lease = node.config().lease;
                node.start(
                    engine.clone(),
                    pg.membership(node.name(), lease),
                    pg.membership(node.name(), lease),
                )
                .with_context(|| format!("binding the internal port {}", node.config().internal))?;
                tracing::info!(node = %node.name(), internal = %node.config().internal, "joined the cluster");
                mall_http::auth::SessionCache::follow_ends(state.clone(), Duration::from_millis(250));
                // Other nodes favourite items too: their counts, every 2 s.
                mall_http::routes::wishlist::follow_counts(state.clone(), Duration::from_secs(2));
                mall_http::routes::promotions::follow(state.clone(), Duration::from_secs(2));
                let figures = state.clone();
                node.set_dashboard(move || mall_http::routes::dashboard::local_snapshot(&figures).to_string());
                mall_http::routes::dashboard::follow_cluster(state.clone(), Duration::from_millis(500));
                leaving = Some((node.clone(), Arc::new(pg.membership(node.name(), lease))));
            }
            None => state
                .attach_payments(payments)
                .await
                .map_err(|e| anyhow::anyhow!("starting payments: {e}"))?,
        }
        // Checkouts a crash left half made are released before anything
        // is served on one node (whatever is unfinished died with the last
        // process); on a cluster, another node may be making one now, so
        // only those abandoned for a while are, by any node, every few
        // seconds (the moves are compare-and-set).
        if node.is_none() {
            match mall_http::routes::checkouts::recover(&state, mall_core::Timestamp(i64::MAX)).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(released = n, "released checkouts the last process left unfinished"),
                Err(e) => tracing::warn!(code = e.code, "releasing unfinished checkouts failed; retrying in the background"),
            }
        }
        let recovery = mall_http::routes::checkouts::recover_forever(state.clone());
        tracing::info!(addr = %local, data = %data.display(), store = %store.describe(), channels = channel_count, "mall is serving");
        let housekeeping = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    let s = state.clone();
                    let _ = tokio::task::spawn_blocking(move || s.housekeeping()).await;
                }
            })
        };
        let state_for_metrics = state.clone();
        let admin = serve_admin(&config, state.clone()).await?;
        let http = config.http()?;
        let app = mall_http::router(state)
            .into_make_service_with_connect_info::<mall_http::listener::Peer>();
        let listener = mall_http::listener::LimitedListener::new(listener, http.listener);
        state_for_metrics.watch_listener("api", listener.stats());
        let drain = leaving.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                if let Some((node, membership)) = drain {
                    cluster::drain_shards(node, membership).await;
                }
            })
            .await?;
        if let Some((node, membership)) = leaving {
            tokio::task::spawn_blocking(move || cluster::leave(&node, &membership)).await??;
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        housekeeping.abort();
        recovery.abort();
        anyhow::Ok(())
    })?;
    drop(runtime);
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown(),
        Err(_) => tracing::warn!("requests still in flight at shutdown; committed work is safe"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The operators' listener, with its own connection pool. A default
/// address that is taken is a warning (the API still serves admin routes);
/// an explicit one must bind.
async fn serve_admin(
    config: &config::Config,
    state: mall_http::AppState,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let addr = config.admin_addr();
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if config.admin_addr.is_none() => {
            tracing::warn!(%addr, error = %e, "the operators' listener could not bind; set --admin-addr");
            return Ok(None);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("binding {addr}"))),
    };
    tracing::info!(admin_addr = %listener.local_addr()?, "operators' listener (health, metrics, dashboard, admin)");
    let limits = mall_http::listener::ListenerConfig {
        connections_max: 256,
        connections_per_address_max: 256,
        ..config.http()?.listener
    };
    let listener = mall_http::listener::LimitedListener::new(listener, limits);
    state.watch_listener("admin", listener.stats());
    let app = mall_http::admin_router(state)
        .into_make_service_with_connect_info::<mall_http::listener::Peer>();
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the operators' listener stopped");
        }
    })))
}

fn report(events: &[PathBuf], out: &Path) -> Result<()> {
    let dirs: Vec<&Path> = events.iter().map(PathBuf::as_path).collect();
    let shown = || {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let night = mall_events::night::night_of(&dirs)
        .with_context(|| format!("reading the event log in {}", shown()))?;
    anyhow::ensure!(night.events > 0, "no events in {}", shown());
    print!("{}", mall_events::night::print(&night));
    std::fs::write(out, mall_events::night::html(&night))
        .with_context(|| format!("writing {}", out.display()))?;
    println!("report: {}", out.display());
    Ok(())
}

/// The event log of a data directory: `DATA/events/events-NNNNNN.jsonl`.
pub fn start_events(data: &Path) -> Result<mall_events::EventLog> {
    mall_events::EventLog::start(
        mall_events::LogConfig {
            dir: Some(data.join("events")),
            ..Default::default()
        },
        mall_events::live::LiveConfig::default(),
    )
    .context("starting the event log")
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Writes a secret readable by the owner only.
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(())
}

fn ledger_verify(data: &Path, store: &store::StoreArgs) -> Result<()> {
    let store = store.open_existing(data)?;
    let (accounts, transfers) = store.read_ledger()?;
    println!(
        "mall ledger verify {}: {} accounts, {} transfers",
        store.describe(),
        accounts.len(),
        transfers.len()
    );
    let violations = mall_engine::verify_mall_ledger(accounts, transfers);
    if violations.is_empty() {
        println!("OK: debits equal credits (posted and pending), every limit holds, every post and void matches its pending transfer, every transfer moves money the way its code says");
        Ok(())
    } else {
        println!("FAILED: {} violation(s)", violations.len());
        for v in violations.iter().take(100) {
            println!("  - {v}");
        }
        std::process::exit(1);
    }
}

fn check(data: &Path, store: &store::StoreArgs) -> Result<()> {
    let store = store.open_existing(data)?;
    let report = mall_engine::audit(store.as_ref())?;
    println!("mall check {}", store.describe());
    println!(
        "  shards {}  items {}  orders {}",
        report.shards, report.items, report.orders
    );
    for (status, n) in &report.orders_by_status {
        println!("  {status:<17} {n}");
    }
    println!(
        "  units held {}  units sold {}",
        report.units_held, report.units_sold
    );
    println!("  coupons {}  claims {}", report.coupons, report.claims);
    if report.is_clean() {
        println!("OK: conservation holds for every SKU, no order counted twice, per-user limits respected; no coupon over-issued");
        Ok(())
    } else {
        println!("FAILED: {} violation(s)", report.violations.len());
        for v in report.violations.iter().take(100) {
            println!("  - {v}");
        }
        std::process::exit(1);
    }
}
