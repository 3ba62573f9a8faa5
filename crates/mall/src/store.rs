//! Which store a command runs on: the SQLite data directory (the embedded
//! default) or PostgreSQL servers (`--store`).

use anyhow::{Context, Result};
use mall_engine::Store;
use std::path::Path;
use std::sync::Arc;

/// Connections a node opens per PostgreSQL server, at most, by default:
/// three nodes on one server (90) stay inside its default
/// `max_connections` of 100.
pub const CONNECTIONS_DEFAULT: usize = 30;

/// Where the store is, as every command that opens one takes it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// PostgreSQL servers to keep everything durable in, e.g.
    /// postgres://mall@10.0.0.5/mall (repeat the flag or separate with
    /// commas; the first holds the ledger, the accounts and the shards'
    /// placement). Without it, the SQLite files of the data directory.
    #[arg(
        long = "store",
        env = "MALL_STORE",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub store: Vec<String>,
    /// Connections this process opens per PostgreSQL server, at most.
    #[arg(long, env = "MALL_STORE_CONNECTIONS")]
    pub store_connections: Option<usize>,
}

impl StoreArgs {
    pub fn is_postgres(&self) -> bool {
        !self.store.is_empty()
    }

    pub fn connections(&self) -> usize {
        self.store_connections.unwrap_or(CONNECTIONS_DEFAULT)
    }

    /// Opens (creating if needed) the store. `shards` is the count asked
    /// for; a store keeps the count it was made with. The default: one per
    /// core in a new data directory, 64 in a new PostgreSQL store.
    pub fn open(&self, data: &Path, shards: Option<usize>) -> Result<Arc<dyn Store>> {
        if self.is_postgres() {
            anyhow::ensure!(
                (1..=1_000).contains(&self.connections()),
                "store_connections must be 1 to 1000"
            );
            let store = mall_postgres::PgStore::open(&self.store, shards, self.connections())
                .context("opening the PostgreSQL store")?;
            Ok(Arc::new(store))
        } else {
            let shards = shards.or_else(|| {
                (!data.join("mall.db").exists())
                    .then(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            });
            Ok(Arc::new(mall_sqlite::DataDir::open(data, shards)?))
        }
    }

    /// Opens a store that must exist already (audits, verification): a
    /// data directory without `mall.db` is an error, not a new store.
    pub fn open_existing(&self, data: &Path) -> Result<Arc<dyn Store>> {
        if self.is_postgres() {
            let store = mall_postgres::PgStore::open_existing(&self.store, self.connections())
                .context("opening the PostgreSQL store")?;
            Ok(Arc::new(store))
        } else {
            Ok(Arc::new(mall_sqlite::DataDir::open_existing(data)?))
        }
    }
}
