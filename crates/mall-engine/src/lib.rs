//! The engine of mall, whatever stores it: one running inventory shard per
//! virtual shard of the store, the board they publish to, read access to
//! their orders, and the ledger, all run by the group-commit runtime of
//! `mall-shard`. The storage backends (`mall-sqlite`, the embedded default,
//! and `mall-postgres`) implement the traits of [`store`].

pub mod audit;
pub mod engine;
pub mod store;
pub mod verify;

pub use audit::{audit, AuditReport};
pub use engine::{Elsewhere, Engine, EngineConfig};
pub use store::{
    AccountStore, CheckoutDone, CheckoutOp, CheckoutRow, CheckoutState, LedgerJournalBox,
    LedgerRead, ListChange, ListOutcome, ListStep, MerchantRow, NewUser, OrderReader, PromotionRow,
    SessionEnd, SessionRow, ShardContents, ShardJournalBox, ShopperList, Store, StoredResponse,
    UserRow,
};
pub use verify::{verify_ledger, verify_mall_ledger};

/// Why a store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (not a lost connection).
    #[error("store: {0}")]
    Backend(String),
    /// The database cannot be reached; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another process opened this shard (or ledger) after us: we may no
    /// longer write it.
    #[error("{what} is fenced: another process opened it (epoch {ours} is no longer current)")]
    Fenced { what: String, ours: i64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the store {at} was made with {stored} shard(s), not {asked}; start with --shards {stored} (resharding is not supported yet)")]
    ShardCountMismatch {
        at: String,
        stored: usize,
        asked: usize,
    },
    #[error("the store {at} has schema version {stored}, newer than this mall knows ({known}); run a newer mall")]
    SchemaTooNew { at: String, stored: i64, known: i64 },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("username already taken")]
    UsernameTaken,
    #[error("merchant name already taken")]
    MerchantNameTaken,
    #[error("the engine refused: {0}")]
    Rejected(String),
}

impl StoreError {
    /// Would the same call succeed later, once the store is back?
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<StoreError> for mall_shard::JournalError {
    fn from(e: StoreError) -> Self {
        mall_shard::JournalError(e.to_string())
    }
}
