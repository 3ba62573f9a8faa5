//! `ledger.db`: the ledger's record — accounts and every transfer. Balances
//! are not stored: they are recounted from the transfers at load (sums do
//! not depend on order), so a restart is exact by construction.

use crate::{migrate, open_connection, Error, Sync};
use mall_core::Timestamp;
use mall_engine::{LedgerRead, StoreError};
use mall_ledger::{
    Account, AccountId, AccountKind, Effect, Ledger, LedgerConfig, Limits, Mode, PendingState,
    Stored, Transfer, TransferId,
};
use mall_shard::{Journal, JournalError};
use rusqlite::{params, Connection, Row};
use std::path::{Path, PathBuf};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    debits_must_not_exceed_credits INTEGER NOT NULL,
    credits_must_not_exceed_debits INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    debit INTEGER NOT NULL,
    credit INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    mode TEXT NOT NULL,
    pending_id INTEGER,
    timeout_ms INTEGER,
    linked INTEGER NOT NULL,
    code INTEGER NOT NULL,
    user_data INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    state TEXT
);
-- Wallet statements: partial indexes hold only wallet accounts' rows
-- (ids 1 << 56 .. 2 << 56, see mall_ledger::chart), so other transfers
-- pay nothing for them.
CREATE INDEX IF NOT EXISTS transfers_wallet_debit ON transfers (debit, seq)
    WHERE debit >= 72057594037927936 AND debit < 144115188075855872;
CREATE INDEX IF NOT EXISTS transfers_wallet_credit ON transfers (credit, seq)
    WHERE credit >= 72057594037927936 AND credit < 144115188075855872;
";

fn open_ledger_db(path: &Path, sync: Sync) -> Result<Connection, Error> {
    let conn = open_connection(path, sync)?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    migrate(&conn, path, &[SCHEMA])?;
    Ok(conn)
}

fn bad(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
}

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    let kind: String = row.get(1)?;
    let limits = Limits {
        debits_must_not_exceed_credits: row.get(2)?,
        credits_must_not_exceed_debits: row.get(3)?,
    };
    let kind = AccountKind::parse(&kind).ok_or_else(|| bad(format!("account kind {kind}")))?;
    Ok(Account::new(
        AccountId(row.get::<_, i64>(0)? as u64),
        kind,
        limits,
    ))
}

fn stored_from_row(row: &Row<'_>) -> rusqlite::Result<Stored> {
    let mode: String = row.get(5)?;
    let pending = row.get::<_, Option<i64>>(6)?.map(|p| TransferId(p as u64));
    let mode = match (mode.as_str(), pending) {
        ("single", _) => Mode::Single,
        ("pending", _) => Mode::Pending {
            timeout_ms: row.get::<_, Option<i64>>(7)?.unwrap_or(0),
        },
        ("post", Some(p)) => Mode::Post { pending: p },
        ("void", Some(p)) => Mode::Void { pending: p },
        (m, _) => return Err(bad(format!("transfer mode {m}"))),
    };
    let state = row
        .get::<_, Option<String>>(12)?
        .map(|s| PendingState::parse(&s).ok_or_else(|| bad(format!("state {s}"))))
        .transpose()?;
    Ok(Stored {
        seq: row.get::<_, i64>(1)? as u64,
        transfer: Transfer {
            id: TransferId(row.get::<_, i64>(0)? as u64),
            debit: AccountId(row.get::<_, i64>(2)? as u64),
            credit: AccountId(row.get::<_, i64>(3)? as u64),
            amount: row.get::<_, i64>(4)? as u64,
            mode,
            linked: row.get(8)?,
            code: row.get(9)?,
            user_data: row.get::<_, i64>(10)? as u64,
        },
        created_at: Timestamp(row.get(11)?),
        state,
    })
}

const TRANSFER_COLUMNS: &str = "id, seq, debit, credit, amount, mode, pending_id, timeout_ms, linked, code, user_data, created_at_ms, state";

/// Everything recorded in a ledger store.
pub fn read_ledger(path: &Path) -> Result<(Vec<Account>, Vec<Stored>), Error> {
    if !path.exists() {
        // Never create an empty ledger where one was expected.
        return Err(Error::from(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no ledger at {}", path.display()),
        )));
    }
    let conn = open_ledger_db(path, Sync::Full)?;
    read(&conn)
}

fn read(conn: &Connection) -> Result<(Vec<Account>, Vec<Stored>), Error> {
    let mut stmt = conn.prepare("SELECT id, kind, debits_must_not_exceed_credits, credits_must_not_exceed_debits FROM accounts")?;
    let accounts = stmt
        .query_map([], account_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers ORDER BY seq"
    ))?;
    let transfers = stmt
        .query_map([], stored_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((accounts, transfers))
}

/// Read access to a running ledger's store (a WAL reader beside the writer).
pub struct LedgerReader {
    conn: std::sync::Mutex<Connection>,
}

impl LedgerReader {
    pub fn open(path: &Path) -> Result<LedgerReader, Error> {
        Ok(LedgerReader {
            conn: std::sync::Mutex::new(open_ledger_db(path, Sync::Full)?),
        })
    }

    fn statement(
        &self,
        wallet: AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, Error> {
        assert_eq!(
            mall_ledger::chart::kind_of(wallet),
            Some(AccountKind::Wallet),
            "statements are for wallets"
        );
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // The literal bounds let SQLite use the partial indexes.
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id IN (
                SELECT id FROM transfers WHERE debit = ?1
                    AND debit >= 72057594037927936 AND debit < 144115188075855872 AND seq < ?2
                UNION ALL
                SELECT id FROM transfers WHERE credit = ?1
                    AND credit >= 72057594037927936 AND credit < 144115188075855872 AND seq < ?2)
             ORDER BY seq DESC LIMIT ?3"
        ))?;
        let rows = stmt
            .query_map(
                params![
                    wallet.0 as i64,
                    before_seq.map_or(i64::MAX, |s| s as i64),
                    limit as i64
                ],
                stored_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn transfers(&self) -> Result<Vec<Stored>, Error> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(read(&conn)?.1)
    }
}

pub struct LedgerJournal {
    path: PathBuf,
    sync: Sync,
    conn: Connection,
    config: LedgerConfig,
}

impl LedgerJournal {
    pub fn open(path: &Path, config: LedgerConfig, sync: Sync) -> Result<LedgerJournal, Error> {
        Ok(LedgerJournal {
            path: path.into(),
            sync,
            conn: open_ledger_db(path, sync)?,
            config,
        })
    }

    fn write(&mut self, effects: &[Effect]) -> Result<(), Error> {
        let tx = self.conn.transaction()?;
        {
            let mut account = tx.prepare_cached("INSERT INTO accounts (id, kind, debits_must_not_exceed_credits, credits_must_not_exceed_debits) VALUES (?1, ?2, ?3, ?4)")?;
            let mut transfer = tx.prepare_cached(&format!("INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"))?;
            let mut state = tx.prepare_cached("UPDATE transfers SET state = ?2 WHERE id = ?1")?;
            for e in effects {
                match e {
                    Effect::InsertAccount(a) => {
                        account.execute(params![
                            a.id.0 as i64,
                            a.kind.as_str(),
                            a.limits.debits_must_not_exceed_credits,
                            a.limits.credits_must_not_exceed_debits
                        ])?;
                    }
                    Effect::InsertTransfer(s) => {
                        let t = &s.transfer;
                        let (mode, pending, timeout) = match t.mode {
                            Mode::Single => ("single", None, None),
                            Mode::Pending { timeout_ms } => ("pending", None, Some(timeout_ms)),
                            Mode::Post { pending } => ("post", Some(pending.0 as i64), None),
                            Mode::Void { pending } => ("void", Some(pending.0 as i64), None),
                        };
                        transfer.execute(params![
                            t.id.0 as i64,
                            s.seq as i64,
                            t.debit.0 as i64,
                            t.credit.0 as i64,
                            t.amount as i64,
                            mode,
                            pending,
                            timeout,
                            t.linked,
                            t.code,
                            t.user_data as i64,
                            s.created_at.0,
                            s.state.map(PendingState::as_str),
                        ])?;
                    }
                    Effect::SetPendingState { id, state: s } => {
                        if state.execute(params![id.0 as i64, s.as_str()])? != 1 {
                            return Err(crate::corrupt(format!(
                                "pending transfer {} to update is missing",
                                id.0
                            )));
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Journal for LedgerJournal {
    type Machine = Ledger;

    fn commit(&mut self, effects: &[Effect]) -> Result<(), JournalError> {
        Ok(self.write(effects)?)
    }

    fn load(&mut self, _now: Timestamp) -> Result<Ledger, JournalError> {
        // A fresh connection: a failed commit may have left the old one mid-transaction.
        self.conn = open_ledger_db(&self.path, self.sync)?;
        let (accounts, transfers) = read(&self.conn)?;
        Ok(Ledger::restore(self.config.clone(), accounts, transfers))
    }
}

impl LedgerRead for LedgerReader {
    fn wallet_statement(
        &self,
        wallet: AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        Ok(self.statement(wallet, before_seq, limit)?)
    }

    fn all_transfers(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(self.transfers()?)
    }
}
