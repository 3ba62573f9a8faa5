//! `mall serve --node NAME`: this process as one node of a cluster.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Lease length by default: a dead node's shards move within about this
/// plus one heartbeat and a shard's load.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(2);

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Serve as this node of a cluster: nodes sharing one --store split its
    /// shards among them, forward requests to each other and take over
    /// the shards of a node that dies. The secret the nodes share comes
    /// from MALL_CLUSTER_SECRET (at least 32 characters).
    #[arg(long, env = "MALL_NODE")]
    pub node: Option<String>,
    /// Where clients reach this node, as other nodes and `mall cluster
    /// status` show it (default: --addr).
    #[arg(long, env = "MALL_ADVERTISE")]
    pub advertise: Option<String>,
    /// The internal port the other nodes reach this node on (default: the
    /// API's address, port + 2). Not for clients.
    #[arg(long, env = "MALL_INTERNAL_ADDR")]
    pub internal_addr: Option<SocketAddr>,
    /// How long a node's shard leases last without a heartbeat, e.g. "2s".
    #[arg(long, env = "MALL_LEASE", value_parser = humantime::parse_duration)]
    pub lease: Option<Duration>,
}

/// The cluster secret, from the environment only (a flag would show in `ps`).
pub fn secret() -> Result<Vec<u8>> {
    let secret = std::env::var("MALL_CLUSTER_SECRET").unwrap_or_default();
    anyhow::ensure!(
        secret.len() >= 32,
        "a node of a cluster needs MALL_CLUSTER_SECRET, at least 32 characters, the same on every node"
    );
    Ok(secret.into_bytes())
}

pub fn node_config(
    args: &ClusterArgs,
    name: &str,
    api: SocketAddr,
) -> Result<mall_cluster::NodeConfig> {
    anyhow::ensure!(
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
        "--node must be 1 to 64 letters, digits, '-', '_' or '.'"
    );
    let lease = args.lease.unwrap_or(LEASE_DEFAULT);
    anyhow::ensure!(
        (Duration::from_millis(200)..=Duration::from_secs(60)).contains(&lease),
        "--lease must be 200ms to 60s"
    );
    let internal = args.internal_addr.unwrap_or_else(|| {
        let mut a = api;
        a.set_port(api.port().wrapping_add(2));
        a
    });
    Ok(mall_cluster::NodeConfig {
        name: name.to_string(),
        api: args.advertise.clone().unwrap_or_else(|| api.to_string()),
        internal,
        secret: secret()?,
        lease,
        wait: Duration::from_secs(3),
    })
}

/// Runs carried payment requests through this node's API.
pub fn handle_carried(node: &mall_cluster::Node, router: axum::Router) {
    node.set_http_handler(Arc::new(move |ask| {
        let router = router.clone();
        Box::pin(mall_http::carry::run_carried(router, ask))
    }));
}

/// Starts the payment service whenever the ledger comes to this node.
pub fn payments_follow_ledger(
    node: &mall_cluster::Node,
    state: mall_http::AppState,
    payments: mall_payments::PaymentsConfig,
    runtime: tokio::runtime::Handle,
) {
    node.on_ledger(move || {
        let (state, payments) = (state.clone(), payments.clone());
        runtime.spawn(async move {
            match state.attach_payments(payments).await {
                Ok(()) => tracing::info!("the ledger runs here: payments started"),
                Err(e) => tracing::error!(error = %e, "starting payments failed"),
            }
        });
    });
}

/// SIGTERM on a node: hand every shard to the other nodes while still
/// answering (requests are forwarded), then let the listener close.
pub async fn drain_shards(
    node: Arc<mall_cluster::Node>,
    membership: Arc<mall_postgres::cluster::Membership>,
) {
    let started = std::time::Instant::now();
    let moved = tokio::task::spawn_blocking(move || node.drain_shards(&membership))
        .await
        .unwrap_or(0);
    tracing::info!(
        moved,
        took_ms = started.elapsed().as_millis() as u64,
        "drained: shards handed over"
    );
}

/// After the listener closed: the ledger goes too, and the node leaves.
pub fn leave(
    node: &mall_cluster::Node,
    membership: &mall_postgres::cluster::Membership,
) -> Result<()> {
    if node.drain_ledger(membership) {
        tracing::info!("the ledger was handed over");
    }
    node.leave(membership);
    Ok(())
}

pub fn open_store(
    store: &crate::store::StoreArgs,
    shards: Option<usize>,
) -> Result<Arc<mall_postgres::PgStore>> {
    anyhow::ensure!(
        store.is_postgres(),
        "a node of a cluster needs --store (PostgreSQL)"
    );
    Ok(Arc::new(
        mall_postgres::PgStore::open(&store.servers(), shards, store.connections())
            .context("opening the PostgreSQL store")?,
    ))
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// A local cluster on loopback for trying it out: N `mall serve --node`
    /// processes on one PostgreSQL (a throwaway one without --store).
    /// Prints the nodes' URLs and the admin token; Ctrl-C stops everything.
    Up(UpArgs),
    /// Nodes, shards, owners, epochs, lease ages and load, from the store.
    Status {
        #[command(flatten)]
        store: crate::store::StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct UpArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[command(flatten)]
    pub store: crate::store::StoreArgs,
    /// The first node's API port; node i listens on port + 10·i (its
    /// operators' listener on + 1, its internal port on + 2).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Shards of a new store.
    #[arg(long, default_value_t = 64)]
    pub shards: usize,
    /// Where the nodes keep their local files.
    #[arg(long, default_value = "mall-cluster")]
    pub data: std::path::PathBuf,
    /// Seed a Singles' Day catalog first if the store has no items.
    #[arg(long)]
    pub seed: bool,
    /// Extra flags for every node's `mall serve` (e.g. "--channels file").
    #[arg(long, allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

pub fn run(which: ClusterCmd) -> Result<()> {
    match which {
        ClusterCmd::Up(args) => up(args),
        ClusterCmd::Status { store } => status(&store),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the OS gives random bytes");
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A local cluster as `mall cluster up` and `mall demo --nodes` start it.
pub struct LocalCluster {
    pub nodes: Vec<(String, String, std::process::Child)>,
    pub admin_token: String,
    pub store: String,
    /// How to start node i again (`restart`).
    commands: Vec<Vec<String>>,
    secret: String,
    /// Each node's log, when asked for (`log_to`).
    logs: Option<std::path::PathBuf>,
    _postgres: Option<mall_postgres::server::PostgresServer>,
}

impl LocalCluster {
    pub fn start(
        nodes: usize,
        store: &crate::store::StoreArgs,
        port: u16,
        shards: usize,
        data: &std::path::Path,
        extra: &[String],
        logs: Option<&std::path::Path>,
    ) -> Result<LocalCluster> {
        anyhow::ensure!((1..=16).contains(&nodes), "--nodes must be 1 to 16");
        let (url, postgres) = if store.is_postgres() {
            (store.servers().join(","), None)
        } else {
            let pg = mall_postgres::server::PostgresServer::start()
                .context("starting a throwaway PostgreSQL (or pass --store)")?;
            let url = pg.create_database("mall_cluster")?;
            (url, Some(pg))
        };
        let admin_token = std::env::var("MALL_ADMIN_TOKEN").unwrap_or_else(|_| random_hex(24));
        let secret = std::env::var("MALL_CLUSTER_SECRET").unwrap_or_else(|_| random_hex(24));
        // Created once, before the nodes race to make it.
        mall_postgres::PgStore::open(&crate::store::split_stores(&url), Some(shards), 2)
            .context("making the store")?;
        let mut commands = Vec::new();
        for i in 0..nodes {
            let name = format!("node{}", i + 1);
            let api = port + 10 * i as u16;
            let mut args: Vec<String> = vec![
                "serve".into(),
                "--node".into(),
                name.clone(),
                "--addr".into(),
                format!("127.0.0.1:{api}"),
                "--admin-addr".into(),
                format!("127.0.0.1:{}", api + 1),
                "--internal-addr".into(),
                format!("127.0.0.1:{}", api + 2),
                "--store-connections".into(),
                "20".into(),
                "--data".into(),
                data.join(&name).to_string_lossy().into_owned(),
            ];
            args.extend(extra.iter().cloned());
            commands.push(args);
        }
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            admin_token,
            store: url,
            commands,
            secret,
            logs: logs.map(std::path::Path::to_path_buf),
            _postgres: postgres,
        };
        for i in 0..nodes {
            let child = cluster.spawn(i)?;
            let api = port + 10 * i as u16;
            cluster.nodes.push((
                format!("node{}", i + 1),
                format!("http://127.0.0.1:{api}"),
                child,
            ));
        }
        for (name, url, _) in &cluster.nodes {
            wait_healthy(url, name)?;
        }
        Ok(cluster)
    }

    fn spawn(&self, i: usize) -> Result<std::process::Child> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args(&self.commands[i])
            .env("MALL_STORE", &self.store)
            .env("MALL_CLUSTER_SECRET", &self.secret)
            .env("MALL_ADMIN_TOKEN", &self.admin_token);
        if let Some(dir) = &self.logs {
            std::fs::create_dir_all(dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("node{}.log", i + 1)))?;
            command.stderr(log).env("MALL_LOG", "info");
        }
        command
            .spawn()
            .with_context(|| format!("starting node{}", i + 1))
    }

    /// Kills node i (-9) and returns at once.
    pub fn kill(&mut self, i: usize) {
        let _ = self.nodes[i].2.kill();
        let _ = self.nodes[i].2.wait();
    }

    /// Starts node i again, as it was started, and waits for it.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.nodes[i].2 = self.spawn(i)?;
        wait_healthy(&self.nodes[i].1.clone(), &self.nodes[i].0.clone())
    }

    /// SIGTERM to every node still running (each drains), then waits.
    pub fn stop(&mut self) {
        for (_, _, child) in &mut self.nodes {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (_, _, child) in &mut self.nodes {
            let _ = child.wait();
        }
    }

    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, u, _)| u.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until a node listens on its API port.
fn wait_healthy(url: &str, name: &str) -> Result<()> {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("a node's URL names its port")?;
    mall_postgres::server::wait_for_port(port, name)
        .map_err(|e| anyhow::anyhow!("{name} did not come up: {e}"))
}

fn up(args: UpArgs) -> Result<()> {
    let mut cluster = LocalCluster::start(
        args.nodes,
        &args.store,
        args.port,
        args.shards,
        &args.data,
        &args.serve_args,
        None,
    )?;
    if args.seed {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["seed", "--data"])
            .arg(args.data.join("seed"))
            .env("MALL_STORE", &cluster.store)
            .status()?;
        anyhow::ensure!(out.success(), "seeding failed");
    }
    println!(
        "mall cluster: {} nodes on one PostgreSQL store",
        cluster.nodes.len()
    );
    for (name, url, _) in &cluster.nodes {
        println!("  {name:<8} {url}");
    }
    println!("admin token: {}", cluster.admin_token);
    println!(
        "rehearse it: MALL_ADMIN_TOKEN=<token> mall rush --target {}",
        cluster.urls()
    );
    println!(
        "status:      MALL_STORE='{}' mall cluster status",
        cluster.store
    );
    println!("Ctrl-C stops every node and the store this started.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::shutdown_signal());
    cluster.stop();
    Ok(())
}

fn status(store: &crate::store::StoreArgs) -> Result<()> {
    anyhow::ensure!(
        store.is_postgres(),
        "a cluster's store is PostgreSQL: pass --store (or MALL_STORE)"
    );
    let pg = mall_postgres::PgStore::open_existing(&store.servers(), 2)
        .context("opening the PostgreSQL store")?;
    let view = pg.membership("status", LEASE_DEFAULT).view()?;
    use mall_postgres::cluster::{LEDGER, REBALANCER};
    println!(
        "{:<10} {:<22} {:<22} {:>9} {:>7} {:>9}",
        "node", "api", "internal", "heartbeat", "shards", "load"
    );
    for n in &view.nodes {
        let shards = view
            .leases
            .iter()
            .filter(|l| l.key >= 0 && l.owner.as_deref() == Some(&n.name) && l.expires_in_ms > 0)
            .count();
        let state = if n.draining { " draining" } else { "" };
        println!(
            "{:<10} {:<22} {:<22} {:>7}ms {:>7} {:>9.0}{state}",
            n.name, n.api, n.internal, n.heartbeat_age_ms, shards, n.load
        );
    }
    println!();
    println!(
        "{:<10} {:<10} {:>6} {:>12} {:>6}  moving to",
        "shard", "owner", "epoch", "lease left", "moves"
    );
    for l in &view.leases {
        let key = match l.key {
            LEDGER => "ledger".to_string(),
            REBALANCER => "rebalancer".to_string(),
            k => k.to_string(),
        };
        println!(
            "{:<10} {:<10} {:>6} {:>10}ms {:>6}  {}",
            key,
            l.owner.as_deref().unwrap_or("-"),
            l.epoch,
            l.expires_in_ms,
            l.moves,
            l.handoff_to.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
