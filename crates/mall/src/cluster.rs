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
        mall_postgres::PgStore::open(&store.store, shards, store.connections())
            .context("opening the PostgreSQL store")?,
    ))
}
