//! SQLite storage, the embedded system of record.
//!
//! A data directory holds `mall.db` (accounts, merchants, sessions,
//! idempotency records of non-order requests) and one `shard-NNN.db` per
//! inventory shard (its items and orders). One file per shard lets shards
//! commit in parallel: SQLite allows one writer per database.
//!
//! Every database runs in WAL mode with `synchronous=FULL`: a committed
//! transaction survives a crash of the process or the machine.

pub mod accounts;
pub mod audit;
pub mod engine;
pub mod ledger;
pub mod shard;

pub use accounts::{Accounts, MerchantRow, NewUser, SessionRow, StoredResponse, UserRow};
pub use audit::{audit_data_dir, AuditReport};
pub use engine::{Engine, EngineConfig};
pub use ledger::{LedgerJournal, LedgerReader};
pub use shard::{ShardJournal, ShardReader};

use rusqlite::Connection;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the data directory {dir} was made with {stored} shard(s), not {asked}; start with --shards {stored} (resharding is not supported yet)")]
    ShardCountMismatch {
        dir: PathBuf,
        stored: usize,
        asked: usize,
    },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("username already taken")]
    UsernameTaken,
    #[error("merchant name already taken")]
    MerchantNameTaken,
    #[error("the engine refused: {0}")]
    Rejected(String),
}

impl From<StoreError> for mall_shard::JournalError {
    fn from(e: StoreError) -> Self {
        mall_shard::JournalError(e.to_string())
    }
}

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// `synchronous=FULL`: durable across power loss. The only mode `mall serve` uses.
    Full,
    /// `synchronous=OFF`: for simulations that crash the process model, not the disk.
    Off,
}

/// Creates `path` (and its parents) readable by the owner only (0700), and
/// tightens it if it exists: a data directory holds password and token
/// hashes and shoppers' addresses.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Makes a database file (and its WAL and shared-memory files, which SQLite
/// creates with the database's mode) readable by the owner only (0600).
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

pub(crate) fn open_connection(path: &Path, sync: Sync) -> Result<Connection, StoreError> {
    private_file(path)?;
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync == Sync::Full { "FULL" } else { "OFF" },
    )?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// The files of a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub shards: usize,
}

impl DataDir {
    /// Opens (creating if needed) a data directory. `shards` is the count
    /// asked for; a directory remembers the count it was made with.
    pub fn open(path: &Path, shards: Option<usize>) -> Result<DataDir, StoreError> {
        private_dir(path)?;
        let accounts = Accounts::open(&path.join("mall.db"))?;
        let stored = accounts
            .meta_get("shards")?
            .and_then(|s| s.parse::<usize>().ok());
        let shards = match (stored, shards) {
            (Some(stored), Some(asked)) if stored != asked => {
                return Err(StoreError::ShardCountMismatch {
                    dir: path.into(),
                    stored,
                    asked,
                })
            }
            (Some(stored), _) => stored,
            (None, asked) => {
                let n = asked.unwrap_or(1).clamp(1, mall_core::OrderId::SHARDS_MAX);
                accounts.meta_set("shards", &n.to_string())?;
                n
            }
        };
        Ok(DataDir {
            path: path.into(),
            shards,
        })
    }

    /// Opens a data directory that must exist already (for audits).
    pub fn open_existing(path: &Path) -> Result<DataDir, StoreError> {
        if !path.join("mall.db").exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is not a mall data directory (no mall.db)",
                    path.display()
                ),
            )));
        }
        DataDir::open(path, None)
    }

    pub fn accounts_path(&self) -> PathBuf {
        self.path.join("mall.db")
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.path.join("ledger.db")
    }

    pub fn shard_path(&self, shard: usize) -> PathBuf {
        self.path.join(format!("shard-{shard:03}.db"))
    }

    /// The shard that owns a SKU.
    pub fn shard_of(&self, sku: mall_core::Sku) -> usize {
        (sku.0 % self.shards as u64) as usize
    }
}
