//! PostgreSQL storage: the same record as the SQLite backend (orders and
//! items are the shards' record, accounts and transfers the ledger's),
//! spread over one or more servers.
//!
//! - The first server holds the store's description (`mall_meta`: the
//!   shard count; `shard_placement`: which server holds each shard), the
//!   ledger, and the accounts, sessions, merchants and stored responses.
//! - Shards are placed round-robin over the servers given when the store is
//!   made; the placement is recorded, so later starts read it back and do
//!   not depend on the order or number of servers they are given beyond it.
//! - Each journal is *fenced*: opening a shard (or the ledger) takes it
//!   over by bumping its epoch, and every commit first checks, in the same
//!   transaction, that its epoch is still current. Two nodes that both
//!   believe they own a shard can never both write it.
//! - A commit is one transaction of a few bulk statements (`unnest` arrays),
//!   whatever the batch size; `synchronous_commit` stays on, so `Ok` means
//!   durable on the server.
//!
//! Connections are plain TCP (`NoTls`): run the servers on loopback or a
//! private network. TLS would need a connector crate and certificates; it
//! is not supported yet.

mod accounts;
pub mod cluster;
mod ledger;
mod pool;
mod schema;
mod scratch;
pub mod server;
mod shard;

pub use accounts::PgAccounts;
pub use ledger::{PgLedgerJournal, PgLedgerReader};
pub use scratch::Scratch;
pub use shard::{PgOrderReader, PgShardJournal};

use mall_engine::{
    AccountStore, LedgerJournalBox, LedgerRead, OrderReader, ShardContents, ShardJournalBox, Store,
    StoreError,
};
use mall_inventory::{Board, InventoryConfig};
use mall_ledger::{Account, LedgerConfig, Stored};
use pool::Pool;
use std::sync::Arc;

/// Shards a store is made with when the first start does not say.
pub const DEFAULT_SHARDS: usize = 64;

/// An error inside the PostgreSQL backend; callers of the [`Store`] traits
/// see it as a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres: {}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Did the connection fail (rather than the statement)? Then the same
    /// call may succeed on a new connection, later.
    pub(crate) fn is_connection(&self) -> bool {
        match self {
            Error::Pg(e) => is_connection_error(e),
            Error::Store(e) => e.is_unavailable(),
        }
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Pg(e) if is_connection_error(&e) => {
                StoreError::Unavailable(format!("postgres: {}", pg_message(&e)))
            }
            Error::Pg(e) => StoreError::Backend(format!("postgres: {}", pg_message(&e))),
            Error::Store(e) => e,
        }
    }
}

impl From<Error> for mall_shard::JournalError {
    fn from(e: Error) -> Self {
        mall_shard::JournalError(StoreError::from(e).to_string())
    }
}

pub(crate) fn corrupt(what: String) -> Error {
    Error::Store(StoreError::Corrupt(what))
}

/// The server's own words (code and message) where it spoke; otherwise the
/// client's error and its cause (the bare Display says only "db error" or
/// "error connecting to server").
fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}", db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            s.push_str(" (");
            s.push_str(detail);
            s.push(')');
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A lost or refused connection, as opposed to a statement the server
/// refused: io errors, a closed connection, a timeout, SQLSTATE class 08
/// (connection exception), 57P01-03 (the server shutting down or starting
/// up) and 53300 (too many connections).
fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    // Kind::Timeout has no cause and no public kind; its text is stable.
    e.to_string() == "timeout waiting for server"
}

/// `user@host:port/db` of a connection string, never its password.
fn label(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        port,
        config.get_dbname().unwrap_or("")
    )
}

/// Runs `f` where the sync client may block. It drives its connection on a
/// runtime of its own, which tokio forbids on a thread that drives another
/// runtime: called from async code (the payment service, tests), `f` runs
/// on a thread of its own while the caller blocks, as it chose to.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => return f(),
        // The worker hands its other tasks on while this one blocks (on a
        // blocking-pool thread it just runs).
        Ok(RuntimeFlavor::MultiThread) => return tokio::task::block_in_place(f),
        Ok(_) => {}
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The PostgreSQL store: its servers and where each shard lives.
///
/// Each server has two pools out of the connections allowed: most for the
/// journals (the shards' and the ledger's commits and loads), a quarter for
/// the API's reads and the accounts. A crowd of API calls then never makes
/// a commit wait for a connection, and so never slows the snap-ups.
pub struct PgStore {
    servers: Vec<Arc<Pool>>,
    /// Per server, the pool of the readers and the accounts store (the
    /// journals' pool itself when too few connections are allowed to split).
    api: Vec<Arc<Pool>>,
    /// `placement[shard]`: the index in `servers` of the server holding it.
    placement: Vec<usize>,
}

/// Serializes the first start's creation of the store description.
const CREATE_LOCK: i64 = 0x6d61_6c6c_0002; // "mall" 2

impl PgStore {
    /// Connects to the servers (connection strings as `postgres::Config`
    /// parses them: `postgres://user@host:port/db` or `host=... port=...`),
    /// migrates each, and makes the store on the first one if it is new:
    /// `shards` shards (default [`DEFAULT_SHARDS`]) placed round-robin over
    /// `urls`. An existing store keeps its count (asking for another is an
    /// error) and its placement: its servers must be given again, in the
    /// same order, first. At most `pool_size` connections per server.
    pub fn open(
        urls: &[String],
        shards: Option<usize>,
        pool_size: usize,
    ) -> Result<PgStore, StoreError> {
        Ok(PgStore::open_inner(urls, shards, pool_size, false)?)
    }

    /// [`PgStore::open`] for a store that must exist already (audits,
    /// verification): a server with no mall store is an error, and nothing
    /// is created on it.
    pub fn open_existing(urls: &[String], pool_size: usize) -> Result<PgStore, StoreError> {
        Ok(PgStore::open_inner(urls, None, pool_size, true)?)
    }

    fn open_inner(
        urls: &[String],
        shards: Option<usize>,
        pool_size: usize,
        must_exist: bool,
    ) -> Result<PgStore, Error> {
        if urls.is_empty() {
            return Err(Error::Store(StoreError::Backend(
                "no PostgreSQL server given".into(),
            )));
        }
        let mut servers = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            // The parse error never quotes the string (it may hold a password).
            let config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
                StoreError::Backend(format!("PostgreSQL server #{i}: {}", pg_message(&e)))
            })?;
            let label = label(&config);
            servers.push(Arc::new(Pool::new(config, label, pool_size)));
        }
        if must_exist {
            let made = servers[0].with(|conn| {
                let row = conn
                    .client
                    .query_one("SELECT to_regclass('mall_meta') IS NOT NULL", &[])?;
                Ok(row.try_get::<_, bool>(0)?)
            })?;
            let made = made
                && servers[0].with(|conn| {
                    Ok(conn
                        .client
                        .query_opt("SELECT 1 FROM mall_meta WHERE key = 'shards'", &[])?
                        .is_some())
                })?;
            if !made {
                return Err(Error::Store(StoreError::Backend(format!(
                    "{} holds no mall store",
                    servers[0].label
                ))));
            }
        }
        for pool in &servers {
            schema::migrate(pool)?;
        }
        let described = describe_store(&servers, shards)?;
        let (count, recorded) = (described.placement.len(), described.servers);
        if recorded > servers.len() {
            return Err(Error::Store(StoreError::Backend(format!(
                "the store at {} places its {count} shards on {recorded} servers, but {} given; give all of them, in the order the store was made with",
                servers[0].label,
                servers.len()
            ))));
        }
        if servers.len() > recorded {
            tracing::warn!(
                recorded,
                given = servers.len(),
                "more PostgreSQL servers given than the store uses; the extra ones hold nothing"
            );
        }
        for (i, pool) in servers.iter().enumerate().take(recorded) {
            claim_server(pool, i, &described.store_id, !described.claimed)?;
        }
        if !described.claimed {
            servers[0].with(|conn| {
                conn.client.execute(
                    "INSERT INTO mall_meta (key, value) VALUES ('claimed', 'true') ON CONFLICT DO NOTHING",
                    &[],
                )?;
                Ok(())
            })?;
        }
        servers.truncate(recorded);
        let api = servers
            .iter()
            .map(|pool| pool.split(pool_size / 4))
            .collect();
        tracing::info!(
            shards = count,
            servers = recorded,
            at = %servers[0].label,
            "postgres store open"
        );
        Ok(PgStore {
            servers,
            api,
            placement: described.placement,
        })
    }

    /// The server holding `shard`.
    fn pool_of(&self, shard: usize) -> Result<&Arc<Pool>, StoreError> {
        self.placement
            .get(shard)
            .map(|&s| &self.servers[s])
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "no shard {shard}: the store has {}",
                    self.placement.len()
                ))
            })
    }

    /// Where each shard lives: `placement()[shard]` is an index into the
    /// server list the store was opened with.
    pub fn placement(&self) -> &[usize] {
        &self.placement
    }

    fn first(&self) -> &Arc<Pool> {
        &self.servers[0]
    }

    /// The API's pool on the server holding `shard`.
    fn api_of(&self, shard: usize) -> Result<&Arc<Pool>, StoreError> {
        self.pool_of(shard)?;
        Ok(&self.api[self.placement[shard]])
    }
}

/// What the first server says of the store.
struct Described {
    /// `placement[shard]`: the server holding it (the shard count is its length).
    placement: Vec<usize>,
    /// Servers the store was made with.
    servers: usize,
    /// Written on each server the store uses, to recognise it.
    store_id: String,
    /// Has every server been marked as the store's? Until then (a first
    /// start that stopped halfway) an unmarked server is marked; after, an
    /// unmarked server is a wrong one (an empty database in place of one
    /// holding shards).
    claimed: bool,
}

/// Reads (making it on the first start) the store's description on its
/// first server.
fn describe_store(servers: &[Arc<Pool>], asked: Option<usize>) -> Result<Described, Error> {
    let first = &servers[0];
    let given = servers.len();
    first.with(|conn| {
        let mut tx = conn.client.transaction()?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({CREATE_LOCK})"))?;
        let meta = |tx: &mut postgres::Transaction<'_>, key: &str| -> Result<Option<String>, Error> {
            Ok(tx
                .query_opt("SELECT value FROM mall_meta WHERE key = $1", &[&key])?
                .map(|r| r.try_get(0))
                .transpose()?)
        };
        let stored = meta(&mut tx, "shards")?;
        let count = match (stored, asked) {
            (Some(stored), asked) => {
                let stored: usize = stored
                    .parse()
                    .map_err(|_| corrupt(format!("mall_meta shards = {stored:?}")))?;
                if let Some(asked) = asked.filter(|&a| a != stored) {
                    return Err(Error::Store(StoreError::ShardCountMismatch {
                        at: first.label.clone(),
                        stored,
                        asked,
                    }));
                }
                stored
            }
            (None, asked) => {
                // A server already claimed by a store would be written
                // over: refuse before anything is made.
                // (The first through this transaction: its pool may have
                // no second connection to give.)
                let mut claimed = vec![meta(&mut tx, "server_index")?];
                for pool in &servers[1..] {
                    claimed.push(server_index(pool)?);
                }
                for (i, (pool, at)) in servers.iter().zip(claimed).enumerate() {
                    if let Some(at) = at {
                        return Err(Error::Store(StoreError::Backend(format!(
                            "PostgreSQL server #{i} ({}) is server #{at} of a mall store already; give the servers in the order the store was made with, first server first",
                            pool.label
                        ))));
                    }
                }
                let n = asked
                    .unwrap_or(DEFAULT_SHARDS)
                    .clamp(1, mall_core::OrderId::SHARDS_MAX);
                tx.execute(
                    "INSERT INTO mall_meta (key, value) VALUES
                        ('shards', $1), ('servers', $2),
                        ('store_id', md5(random()::text || clock_timestamp()::text))",
                    &[&n.to_string(), &given.to_string()],
                )?;
                tx.execute(
                    "INSERT INTO shard_placement (shard, server)
                     SELECT s, s % $2 FROM generate_series(0, $1 - 1) AS s",
                    &[&(n as i32), &(given as i32)],
                )?;
                tracing::info!(shards = n, servers = given, at = %first.label, "postgres store created");
                n
            }
        };
        let servers: usize = meta(&mut tx, "servers")?
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("mall_meta servers missing".into()))?;
        let store_id =
            meta(&mut tx, "store_id")?.ok_or_else(|| corrupt("mall_meta store_id missing".into()))?;
        let claimed = meta(&mut tx, "claimed")?.is_some();
        let rows = tx.query("SELECT shard, server FROM shard_placement ORDER BY shard", &[])?;
        tx.commit()?;
        let mut placement = Vec::with_capacity(count);
        for row in rows {
            let (shard, server): (i32, i32) = (row.try_get(0)?, row.try_get(1)?);
            if shard as usize != placement.len() || server < 0 || server as usize >= servers {
                return Err(corrupt(format!(
                    "shard_placement row ({shard}, {server}) (shards {count}, servers {servers})"
                )));
            }
            placement.push(server as usize);
        }
        if placement.len() != count {
            return Err(corrupt(format!(
                "shard_placement has {} rows for {count} shards",
                placement.len()
            )));
        }
        Ok(Described {
            placement,
            servers,
            store_id,
            claimed,
        })
    })
}

/// The index a server was given in its store, if it belongs to one.
fn server_index(pool: &Pool) -> Result<Option<String>, Error> {
    pool.with(|conn| {
        Ok(conn
            .client
            .query_opt(
                "SELECT value FROM mall_meta WHERE key = 'server_index'",
                &[],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
    })
}

/// Marks server `index` as this store's (on its first use) or checks it is:
/// a list given in another order, or a server of another store, would put
/// shards where their data is not.
fn claim_server(pool: &Pool, index: usize, store_id: &str, may_claim: bool) -> Result<(), Error> {
    pool.with(|conn| {
        let mut tx = conn.client.transaction()?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({CREATE_LOCK})"))?;
        if may_claim {
            tx.execute(
                "INSERT INTO mall_meta (key, value) VALUES ('store_id', $1), ('server_index', $2)
                 ON CONFLICT (key) DO NOTHING",
                &[&store_id, &index.to_string()],
            )?;
        }
        let rows = tx.query(
            "SELECT key, value FROM mall_meta WHERE key IN ('store_id', 'server_index')",
            &[],
        )?;
        tx.commit()?;
        let mut id = String::new();
        let mut at = String::new();
        for row in rows {
            let (key, value): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if key == "store_id" {
                id = value;
            } else {
                at = value;
            }
        }
        if id.is_empty() {
            return Err(Error::Store(StoreError::Backend(format!(
                "PostgreSQL server #{index} ({}) holds no part of this store; give the servers the store was made with, in that order",
                pool.label
            ))));
        }
        if id != store_id {
            return Err(Error::Store(StoreError::Backend(format!(
                "PostgreSQL server #{index} ({}) belongs to another mall store",
                pool.label
            ))));
        }
        if at != index.to_string() {
            return Err(Error::Store(StoreError::Backend(format!(
                "PostgreSQL server #{index} ({}) is server #{at} of this store; give the servers in the order the store was made with",
                pool.label
            ))));
        }
        Ok(())
    })
}

impl Store for PgStore {
    fn describe(&self) -> String {
        let labels: Vec<&str> = self.servers.iter().map(|p| p.label.as_str()).collect();
        format!("postgres:{}", labels.join(","))
    }

    fn shard_count(&self) -> usize {
        self.placement.len()
    }

    fn shard_journal(
        &self,
        shard: usize,
        config: InventoryConfig,
        board: Arc<Board>,
    ) -> Result<ShardJournalBox, StoreError> {
        let pool = self.pool_of(shard)?.clone();
        Ok(Box::new(PgShardJournal::open(pool, shard, config, board)?))
    }

    fn order_reader(&self, shard: usize) -> Result<Arc<dyn OrderReader>, StoreError> {
        Ok(Arc::new(PgOrderReader::new(
            self.api_of(shard)?.clone(),
            shard,
        )))
    }

    fn ledger_journal(&self, config: LedgerConfig) -> Result<LedgerJournalBox, StoreError> {
        Ok(Box::new(PgLedgerJournal::open(
            self.first().clone(),
            config,
        )?))
    }

    fn ledger_reader(&self) -> Result<Arc<dyn LedgerRead>, StoreError> {
        Ok(Arc::new(PgLedgerReader::new(self.api[0].clone())))
    }

    fn accounts(&self) -> Result<Arc<dyn AccountStore>, StoreError> {
        Ok(Arc::new(PgAccounts::new(self.api[0].clone())))
    }

    fn shard_contents(&self, shard: usize) -> Result<ShardContents, StoreError> {
        Ok(shard::contents(self.pool_of(shard)?, shard)?)
    }

    fn read_ledger(&self) -> Result<(Vec<Account>, Vec<Stored>), StoreError> {
        // The tables exist once the store is open; an empty ledger is a
        // ledger that never took an account.
        Ok(self.first().with(|conn| {
            let mut tx = crate::read_snapshot(&mut conn.client)?;
            let read = ledger::read(&mut tx)?;
            tx.commit()?;
            Ok(read)
        })?)
    }
}

/// A read-only transaction that sees one snapshot throughout, so reads of
/// several tables agree with each other.
pub(crate) fn read_snapshot(
    client: &mut postgres::Client,
) -> Result<postgres::Transaction<'_>, Error> {
    Ok(client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?)
}

/// Fencing of one journal: the epoch it took the shard (or ledger) over
/// with, checked by every transaction it writes or loads in.
pub(crate) struct Fence {
    /// The `shard_epochs` key: the shard, or -1 for the ledger.
    key: i32,
    what: String,
    epoch: i64,
    /// Set when a check found a newer epoch: from then on every commit and
    /// load fails, and the epoch is never bumped back.
    fenced: bool,
}

const TAKE_OVER: &str = "INSERT INTO shard_epochs (shard, epoch) VALUES ($1, 1)
    ON CONFLICT (shard) DO UPDATE SET epoch = shard_epochs.epoch + 1 RETURNING epoch";
/// Locks the epoch row until the transaction ends: a takeover waits for an
/// owner's commit in flight, and every commit after the takeover sees the
/// new epoch.
const HOLD: &str = "UPDATE shard_epochs SET epoch = epoch WHERE shard = $1 AND epoch = $2";

impl Fence {
    /// Takes `key` over: every earlier opener's next commit fails.
    pub(crate) fn take_over(pool: &Pool, key: i32, what: String) -> Result<Fence, Error> {
        let epoch = pool.with(|conn| {
            let stmt = conn.prepare(TAKE_OVER)?;
            Ok(conn
                .client
                .query_one(&stmt, &[&key])?
                .try_get::<_, i64>(0)?)
        })?;
        tracing::debug!(%what, epoch, at = %pool.label, "taken over");
        Ok(Fence {
            key,
            what,
            epoch,
            fenced: false,
        })
    }

    /// The `shard_epochs` key and the epoch this journal holds, for a
    /// statement that checks the fence itself.
    pub(crate) fn key_and_epoch(&self) -> (i32, i64) {
        (self.key, self.epoch)
    }

    pub(crate) fn error(&self) -> Error {
        Error::Store(StoreError::Fenced {
            what: self.what.clone(),
            ours: self.epoch,
        })
    }

    /// Fails at once once fenced.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.fenced {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    /// The statement that [`Fence::hold`] runs, to prepare before the transaction.
    pub(crate) fn prepare(conn: &mut pool::Conn) -> Result<postgres::Statement, Error> {
        conn.prepare(HOLD)
    }

    /// First statement of every transaction: holds the epoch row, or fails
    /// (and the transaction must roll back) if another opener took over.
    pub(crate) fn hold(
        &self,
        tx: &mut postgres::Transaction<'_>,
        stmt: &postgres::Statement,
    ) -> Result<(), Error> {
        if tx.execute(stmt, &[&self.key, &self.epoch])? == 1 {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// Notes a fencing error from a transaction: fenced for good.
    pub(crate) fn observe<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Store(StoreError::Fenced { .. })) = &result {
            if !self.fenced {
                tracing::error!(what = %self.what, epoch = self.epoch, "fenced: another process opened it; no more writes");
            }
            self.fenced = true;
        }
        result
    }
}
