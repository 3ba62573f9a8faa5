//! `mall rush` and `mall demo`: glue over `mall-rush`.

use anyhow::{Context, Result};
use clap::Args;
use mall_engine::{Engine, EngineConfig};
use mall_rush::audit::audit;
use mall_rush::http::Target;
use mall_rush::plan::Plan;
use mall_rush::run::{run, Backend};
use mall_rush::scenario::Scenario;
use mall_rush::summary::{print, summarize};
use mall_shard::{Clock, SystemClock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct RushArgs {
    /// The server to rush (loopback only, unless --allow-remote).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Run against the engine in this process instead, with no HTTP.
    #[arg(long)]
    in_process: bool,
    /// A built-in scenario (double11, smoke) or a TOML file.
    #[arg(long, default_value = "double11")]
    scenario: String,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Shrink the scenario's shoppers and items by this factor (0 to 1).
    #[arg(long)]
    scale: Option<f64>,
    /// Admin token of the target (default: MALL_ADMIN_TOKEN, then DATA/admin-token).
    #[arg(long, env = "MALL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The target's data directory, to read its generated admin token.
    #[arg(long, default_value = "mall-data")]
    data: PathBuf,
    #[arg(long)]
    allow_remote: bool,
    /// Where the JSON and HTML reports go.
    #[arg(long, default_value = "rush-report")]
    out: PathBuf,
    /// In-process only: shards (default one per core; 64 in a new
    /// PostgreSQL store) and hold timeout.
    #[arg(long)]
    shards: Option<usize>,
    /// In-process only: the store to rush (default a throwaway data directory).
    #[command(flatten)]
    store: crate::store::StoreArgs,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    hold_timeout: Duration,
}

fn scenario_of(name: &str, seed: Option<u64>, scale: Option<f64>) -> Result<Scenario> {
    let mut s = Scenario::load(name)?;
    if let Some(f) = scale {
        anyhow::ensure!(f > 0.0 && f <= 1.0, "--scale must be in (0, 1]");
        s = s.scaled(f);
    }
    if let Some(seed) = seed {
        s.seed = seed;
    }
    s.validate()?;
    Ok(s)
}

/// Summarizes, audits and reports a finished run; false when the audit failed.
async fn finish(
    outcome: mall_rush::run::Outcome,
    backend: &Backend,
    name: &str,
    out: &Path,
) -> Result<bool> {
    let summary = summarize(&outcome, name);
    print(&summary);
    println!(
        "auditing {} acknowledged orders against the server...",
        outcome
            .records
            .iter()
            .filter(|r| r.code == "created")
            .count()
    );
    let report = audit(&outcome, backend).await;
    if report.passed() {
        println!("AUDIT PASSED: {} orders, {} items, {} coupon claims, {} checkouts ({} paid with one payment) and {} pre-sale deposits ({} balances paid, {} forfeited) checked; nothing lost, nothing doubled, nothing oversold or over-issued, no checkout half held, every unpaid balance forfeited", report.orders_checked, report.items_checked, report.claims_checked, report.checkouts_checked, report.checkouts_paid, report.deposits_checked, report.balances_paid, report.deposits_forfeited);
    } else {
        println!("AUDIT FAILED: {} violation(s)", report.violations.len());
        for v in report.violations.iter().take(30) {
            println!("  - {v}");
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let base = out.join(format!("rush-{}", summary.scenario));
    mall_rush::report::write_json(&base.with_extension("json"), &summary, &report)?;
    mall_rush::report::write_html(&base.with_extension("html"), &summary, &report)?;
    println!(
        "reports: {} and {}",
        base.with_extension("json").display(),
        base.with_extension("html").display()
    );
    Ok(report.passed())
}

pub fn rush(args: RushArgs) -> Result<()> {
    let scenario = scenario_of(&args.scenario, args.seed, args.scale)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let passed = if args.in_process {
        let dir = std::env::temp_dir().join(format!("mall-rush-{}", std::process::id()));
        // A throwaway data directory, or the PostgreSQL store given.
        let store = args.store.open(&dir, args.shards)?;
        let shards = store.shard_count();
        let mut config = EngineConfig::default();
        config.inventory.hold_timeout_ms = args.hold_timeout.as_millis() as i64;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = Arc::new(Engine::start(store.clone(), config, clock)?);
        let backend = Backend::InProcess {
            engine: engine.clone(),
        };
        println!(
            "mall rush: scenario {} in-process ({} shards, store {})",
            scenario.name,
            shards,
            store.describe()
        );
        let passed = runtime.block_on(async {
            let outcome = run(Plan::new(&scenario), backend.clone(), true).await?;
            finish(outcome, &backend, "in-process", &args.out).await
        });
        drop(backend);
        drop(runtime);
        if let Ok(engine) = Arc::try_unwrap(engine) {
            engine.shutdown();
        }
        // The throwaway store goes, whatever the outcome.
        let _ = std::fs::remove_dir_all(&dir);
        return match passed {
            Ok(true) => Ok(()),
            Ok(false) => Err(anyhow::anyhow!("the consistency audit failed")),
            Err(e) => Err(e),
        };
    } else {
        let target = Target::parse(&args.target, args.allow_remote)?;
        let token = match args.admin_token {
            Some(t) => t,
            None => std::fs::read_to_string(args.data.join("admin-token"))
                .map(|t| t.trim().to_string())
                .context("no admin token: pass --admin-token, set MALL_ADMIN_TOKEN, or point --data at the server's data directory")?,
        };
        let backend = Backend::Http {
            target,
            admin_token: token,
        };
        println!(
            "mall rush: scenario {} against {}",
            scenario.name, args.target
        );
        runtime.block_on(async {
            let outcome = run(Plan::new(&scenario), backend.clone(), true).await?;
            finish(outcome, &backend, "http", &args.out).await
        })?
    };
    anyhow::ensure!(passed, "the consistency audit failed");
    Ok(())
}

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// A fresh data directory for the demo (wiped at start if the demo made it).
    #[arg(long, default_value = "mall-demo-data")]
    data: PathBuf,
    /// Share of the full double11 night to rehearse.
    #[arg(long, default_value_t = 0.2)]
    scale: f64,
    #[arg(long, default_value = "rush-report")]
    out: PathBuf,
    /// Rehearse on a local cluster of this many nodes (a throwaway
    /// PostgreSQL; one node is killed in the middle of the spike).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

/// The newcomer's first command: a fresh mall, a rehearsal of the night
/// against it, the figures and the audit, then the mall keeps serving.
pub fn demo(args: DemoArgs) -> Result<()> {
    if args.nodes > 1 {
        return demo_cluster(args);
    }
    const MARKER: &str = "MADE-BY-MALL-DEMO";
    if args.data.exists() {
        anyhow::ensure!(
            args.data.join(MARKER).exists(),
            "{} exists and was not made by mall demo; pass another --data",
            args.data.display()
        );
        std::fs::remove_dir_all(&args.data)?;
    }
    mall_sqlite::private_dir(&args.data)?;
    std::fs::write(args.data.join(MARKER), "")?;
    let _lock = crate::lock_data_dir(&args.data)?;
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = mall_sqlite::DataDir::open(&args.data, Some(shards))?;
    let store: Arc<dyn mall_engine::Store> = Arc::new(dir.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = EngineConfig::default();
    // A short hold, so unpaid orders expire and late payments are refused within the minute.
    config.inventory.hold_timeout_ms = 20_000;
    let engine = Arc::new(Engine::start(store.clone(), config, clock.clone())?);
    let accounts = store.accounts()?;
    let mut http = mall_http::HttpConfig::default();
    http.rate.user_rate_per_s = 1_000.0;
    let state = mall_http::AppState::new(engine.clone(), accounts, http, clock)?;
    state.attach_events(crate::start_events(&dir.path)?);
    let token = mall_http::bootstrap_admin(&state, None, None)?
        .context("the fresh demo store has an admin token")?;
    crate::write_secret(&dir.path.join("admin-token"), &token)?;
    let scenario = scenario_of("double11", None, Some(args.scale))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        // Simulated payment providers, in this process, on free ports; one
        // of them has an outage half-way through the rehearsal.
        let channels = mall_provider_sim::config::parse(crate::channels::EXAMPLE)?;
        let (_simulator, setups) = mall_provider_sim::Simulator::on_free_ports(channels, 11).await?;
        let payments = mall_payments::PaymentsConfig::for_server(listener.local_addr()?, setups);
        state
            .attach_payments(payments)
            .await
            .map_err(|e| anyhow::anyhow!("starting payments: {e}"))?;
        let status_state = state.clone();
        let app = mall_http::router(state)
            .into_make_service_with_connect_info::<mall_http::listener::Peer>();
        let listener = mall_http::listener::LimitedListener::new(
            listener,
            mall_http::listener::ListenerConfig::default(),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(crate::shutdown_signal())
                .await
        });
        println!(
            "mall demo: serving http://{} from {}",
            args.addr,
            dir.path.display()
        );
        println!(
            "rehearsing the night: {} shoppers, {} items, sale opening in a few seconds",
            scenario.users, scenario.items
        );
        let backend = Backend::Http {
            target: Target::parse(&format!("http://{}", args.addr), false)?,
            admin_token: token.clone(),
        };
        let outcome = run(Plan::new(&scenario), backend.clone(), true).await?;
        let passed = finish(outcome, &backend, "http (demo)", &args.out).await?;
        if let Some(p) = status_state.payments.get() {
            crate::channels::print_channels(p);
        }
        let (accounts, transfers) = store.read_ledger()?;
        let ledger = mall_engine::verify_mall_ledger(accounts, transfers);
        match ledger.as_slice() {
            [] => {
                println!("ledger verify: ok (double entry balanced, every wallet at or above zero, every transfer between the accounts its code allows)")
            }
            v => println!("ledger verify: {} violation(s): {}", v.len(), v.join("; ")),
        }
        let passed = passed && ledger.is_empty();
        println!();
        println!(
            "mall keeps serving at http://{} — admin token in {}; Ctrl-C to stop.",
            args.addr,
            dir.path.join("admin-token").display()
        );
        println!(
            "the live dashboard: http://{}/ (it asks for the admin token; or open http://{}/#token=<the token>)",
            args.addr, args.addr
        );
        if !passed {
            println!("(the audit failed: see above)");
        }
        let _ = server.await;
        anyhow::Ok(())
    })?;
    drop(runtime);
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown();
    }
    Ok(())
}

/// `mall demo --nodes N`: the night on a local cluster; one node is killed
/// (-9) in the middle of the spike, and the summary and the audit show
/// that nothing was lost.
fn demo_cluster(args: DemoArgs) -> Result<()> {
    anyhow::ensure!(args.nodes >= 2, "a cluster demo needs 2 nodes or more");
    let dir = std::env::temp_dir().join(format!("mall-demo-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let channels = dir.join("channels.toml");
    std::fs::write(&channels, crate::channels::EXAMPLE)?;
    let mut simulator = std::process::Command::new(std::env::current_exe()?)
        .args(["channels", "--config"])
        .arg(&channels)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the payment simulator")?;
    let extra: Vec<String> = [
        "--channels",
        &channels.to_string_lossy(),
        "--hold-timeout",
        "20s",
        "--user-rate-per-s",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let port = args.addr.port();
    let result = (|| -> Result<bool> {
        let cluster = crate::cluster::LocalCluster::start(
            args.nodes,
            &crate::store::StoreArgs::default(),
            port,
            64,
            &dir.join("nodes"),
            &extra,
            None,
        )?;
        let scenario = scenario_of("double11", None, Some(args.scale))?;
        println!(
            "mall demo: a cluster of {} nodes on one PostgreSQL",
            args.nodes
        );
        for (name, url, _) in &cluster.nodes {
            println!("  {name:<8} {url}");
        }
        println!(
            "rehearsing the night over every node: {} shoppers, {} items; node2 is killed in the middle of the spike",
            scenario.users, scenario.items
        );
        let kill_after = Duration::from_millis(
            (mall_rush::run::opening_after_ms(&scenario) as f64 + scenario.spike_s * 500.0) as u64,
        );
        let victim = cluster.nodes[1].2.id();
        let store = cluster.store.clone();
        let killer = std::thread::spawn(move || -> Option<Duration> {
            std::thread::sleep(kill_after);
            let _ = std::process::Command::new("kill")
                .args(["-9", &victim.to_string()])
                .status();
            let killed = std::time::Instant::now();
            println!("\n*** node2 killed (-9) in the middle of the spike ***\n");
            // Failover: until every shard has a live owner again.
            let pg = mall_postgres::PgStore::open_existing(&crate::store::split_stores(&store), 1)
                .ok()?;
            let membership = pg.membership("demo", crate::cluster::LEASE_DEFAULT);
            while killed.elapsed() < Duration::from_secs(60) {
                if let Ok(view) = membership.view() {
                    let moved = view.leases.iter().filter(|l| l.key >= -1).all(|l| {
                        l.owner.as_deref() != Some("node2")
                            && l.owner.is_some()
                            && l.expires_in_ms > 0
                    });
                    if moved {
                        return Some(killed.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let backend = Backend::Http {
            target: Target::parse(&cluster.urls(), false)?,
            admin_token: cluster.admin_token.clone(),
        };
        let passed = runtime.block_on(async {
            let outcome = run(Plan::new(&scenario), backend.clone(), true).await?;
            finish(outcome, &backend, "http (cluster demo)", &args.out).await
        })?;
        match killer.join().ok().flatten() {
            Some(t) => println!(
                "failover: every shard of node2 served by the survivors {:.2} s after the kill",
                t.as_secs_f64()
            ),
            None => println!("failover: not measured (the store could not be read)"),
        }
        let pg =
            mall_postgres::PgStore::open_existing(&crate::store::split_stores(&cluster.store), 2)?;
        let report = mall_engine::audit(&pg)?;
        let (accounts, transfers) = mall_engine::Store::read_ledger(&pg)?;
        let ledger = mall_engine::verify_mall_ledger(accounts, transfers);
        println!(
            "mall check: {} orders over {} items, {}; ledger verify: {}",
            report.orders,
            report.items,
            if report.violations.is_empty() {
                "no violation".to_string()
            } else {
                format!("{} violation(s)", report.violations.len())
            },
            if ledger.is_empty() {
                "ok".to_string()
            } else {
                format!("{} violation(s)", ledger.len())
            }
        );
        Ok(passed && report.violations.is_empty() && ledger.is_empty())
    })();
    let _ = simulator.kill();
    let _ = simulator.wait();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(result?, "the consistency audit failed");
    Ok(())
}
