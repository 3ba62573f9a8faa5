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
        hide_env_values = true,
        value_parser = parse_stores
    )]
    pub store: Vec<Stores>,
    /// Connections this process opens per PostgreSQL server, at most.
    #[arg(long, env = "MALL_STORE_CONNECTIONS")]
    pub store_connections: Option<usize>,
}

/// One `--store` value: one or more connection strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stores(pub Vec<String>);

fn parse_stores(text: &str) -> Result<Stores, String> {
    Ok(Stores(split_stores(text)))
}

/// Splits "A,B" into the servers A and B, but keeps one server's own
/// commas: a multi-host connection string (a primary and its standby,
/// `host=h1,h2 port=p1,p2 ...` or `postgresql://h1:p1,h2:p2/db`) is one
/// server. A new server starts at a comma followed by `postgres://`,
/// `postgresql://`, or a `key=value` pair.
pub fn split_stores(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in text.split(',') {
        let trimmed = piece.trim_start();
        let first_word = trimmed.split_whitespace().next().unwrap_or("");
        let starts_new = trimmed.starts_with("postgres://")
            || trimmed.starts_with("postgresql://")
            || first_word.split_once('=').is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        match out.last_mut() {
            Some(last) if !starts_new => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl StoreArgs {
    /// The servers, in order.
    pub fn servers(&self) -> Vec<String> {
        self.store
            .iter()
            .flat_map(|s| s.0.iter().cloned())
            .collect()
    }

    pub fn is_postgres(&self) -> bool {
        !self.servers().is_empty()
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
            let store = mall_postgres::PgStore::open(&self.servers(), shards, self.connections())
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
            let store = mall_postgres::PgStore::open_existing(&self.servers(), self.connections())
                .context("opening the PostgreSQL store")?;
            Ok(Arc::new(store))
        } else {
            Ok(Arc::new(mall_sqlite::DataDir::open_existing(data)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_stores;

    #[test]
    fn servers_split_at_commas_but_a_multi_host_string_stays_one() {
        assert_eq!(
            split_stores("postgres://a/m,postgres://b/m"),
            vec!["postgres://a/m", "postgres://b/m"]
        );
        assert_eq!(
            split_stores("host=a port=1 user=m, host=b port=2 user=m"),
            vec!["host=a port=1 user=m", "host=b port=2 user=m"]
        );
        assert_eq!(
            split_stores("host=h1,h2 port=1,2 user=m target_session_attrs=read-write"),
            vec!["host=h1,h2 port=1,2 user=m target_session_attrs=read-write"]
        );
        assert_eq!(
            split_stores(
                "postgresql://m@h1:1,h2:2/db?target_session_attrs=read-write,postgres://c/m"
            ),
            vec![
                "postgresql://m@h1:1,h2:2/db?target_session_attrs=read-write",
                "postgres://c/m"
            ]
        );
        assert!(split_stores("").is_empty());
    }
}
