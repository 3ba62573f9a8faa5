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
pub mod ledger;
pub mod shard;

pub use accounts::Accounts;
pub use ledger::{LedgerJournal, LedgerReader};
pub use shard::{ShardJournal, ShardReader};

use mall_engine::{
    AccountStore, LedgerJournalBox, LedgerRead, OrderReader, ShardContents, ShardJournalBox, Store,
    StoreError,
};
use mall_inventory::{Board, InventoryConfig};
use mall_ledger::{Account, LedgerConfig, Stored};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An error inside the SQLite backend; callers of the [`Store`] traits see
/// it as a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Store(StoreError::Io(e))
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Sqlite(e) => StoreError::Backend(format!("sqlite: {e}")),
            Error::Store(e) => e,
        }
    }
}

impl From<Error> for mall_shard::JournalError {
    fn from(e: Error) -> Self {
        mall_shard::JournalError(e.to_string())
    }
}

fn corrupt(what: String) -> Error {
    Error::Store(StoreError::Corrupt(what))
}

/// Brings a database file's schema to the newest version this mall knows:
/// `migrations[i]` takes it from version `i` to `i + 1` (SQLite's
/// `user_version`). Files made before versioning hold version 0 and the
/// first migration's tables already; its `IF NOT EXISTS` makes it a no-op
/// for them. A file newer than the binary is refused.
pub(crate) fn migrate(conn: &Connection, path: &Path, migrations: &[&str]) -> Result<(), Error> {
    let known = migrations.len() as i64;
    let stored: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if stored > known {
        return Err(Error::Store(StoreError::SchemaTooNew {
            at: path.display().to_string(),
            stored,
            known,
        }));
    }
    for (version, sql) in migrations.iter().enumerate().skip(stored as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            version + 1
        ))?;
    }
    Ok(())
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

pub(crate) fn open_connection(path: &Path, sync: Sync) -> Result<Connection, Error> {
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

/// A data directory: the SQLite store.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub shards: usize,
    sync: Sync,
}

impl DataDir {
    /// Opens (creating if needed) a data directory. `shards` is the count
    /// asked for; a directory remembers the count it was made with.
    pub fn open(path: &Path, shards: Option<usize>) -> Result<DataDir, StoreError> {
        Ok(DataDir::open_inner(path, shards)?)
    }

    fn open_inner(path: &Path, shards: Option<usize>) -> Result<DataDir, Error> {
        private_dir(path)?;
        let accounts = Accounts::open(&path.join("mall.db"))?;
        let stored = accounts
            .meta_get("shards")?
            .and_then(|s| s.parse::<usize>().ok());
        let shards = match (stored, shards) {
            (Some(stored), Some(asked)) if stored != asked => {
                return Err(Error::Store(StoreError::ShardCountMismatch {
                    at: path.display().to_string(),
                    stored,
                    asked,
                }))
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
            sync: Sync::Full,
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

    /// The same directory with commits that do not wait for the disk
    /// (`synchronous=OFF`): for simulations that crash the process model,
    /// never for a store that must survive power loss.
    pub fn unsynced(mut self) -> DataDir {
        self.sync = Sync::Off;
        self
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

impl Store for DataDir {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn shard_count(&self) -> usize {
        self.shards
    }

    fn reads_are_local(&self) -> bool {
        true // a WAL reader of a file on this machine
    }

    fn shard_journal(
        &self,
        shard: usize,
        config: InventoryConfig,
        board: Arc<Board>,
    ) -> Result<ShardJournalBox, StoreError> {
        let journal = ShardJournal::open(&self.shard_path(shard), shard, config, board, self.sync)?;
        Ok(Box::new(journal))
    }

    fn order_reader(&self, shard: usize) -> Result<Arc<dyn OrderReader>, StoreError> {
        Ok(Arc::new(ShardReader::open(&self.shard_path(shard))?))
    }

    fn ledger_journal(&self, config: LedgerConfig) -> Result<LedgerJournalBox, StoreError> {
        Ok(Box::new(LedgerJournal::open(
            &self.ledger_path(),
            config,
            self.sync,
        )?))
    }

    fn ledger_reader(&self) -> Result<Arc<dyn LedgerRead>, StoreError> {
        Ok(Arc::new(LedgerReader::open(&self.ledger_path())?))
    }

    fn accounts(&self) -> Result<Arc<dyn AccountStore>, StoreError> {
        Ok(Arc::new(Accounts::open(&self.accounts_path())?))
    }

    fn shard_contents(&self, shard: usize) -> Result<ShardContents, StoreError> {
        let path = self.shard_path(shard);
        if !path.exists() {
            return Ok(ShardContents::default()); // never took an item or order
        }
        Ok(shard::contents(&path)?)
    }

    fn read_ledger(&self) -> Result<(Vec<Account>, Vec<Stored>), StoreError> {
        Ok(ledger::read_ledger(&self.ledger_path())?)
    }
}
