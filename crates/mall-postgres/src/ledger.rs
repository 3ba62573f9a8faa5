//! The ledger's record on the first server: accounts and every transfer.
//! Balances are not stored: they are recounted from the transfers at load,
//! as with SQLite.

use crate::pool::Pool;
use crate::{corrupt, Error, Fence};
use mall_core::Timestamp;
use mall_engine::{LedgerRead, StoreError};
use mall_ledger::{
    Account, AccountId, AccountKind, Effect, Ledger, LedgerConfig, Limits, Mode, PendingState,
    Stored, Transfer, TransferId,
};
use mall_shard::{Journal, JournalError};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use std::collections::HashMap;
use std::sync::Arc;

/// The ledger's row in `shard_epochs`.
const LEDGER_FENCE: i32 = -1;

macro_rules! transfer_columns {
    () => {
        "id, seq, debit, credit, amount, mode, pending_id, timeout_ms, linked, code, user_data, created_at_ms, state"
    };
}

/// A whole batch in one statement, one round trip, as for a shard (see
/// `shard::WRITE_BATCH`): the fence, the accounts, the transfers (states
/// set in the same batch folded in), the states of older pending
/// transfers; an off count undoes it all.
const WRITE_BATCH: &str = concat!(
    "WITH fence AS (
        UPDATE shard_epochs SET epoch = epoch WHERE shard = $1 AND epoch = $2 RETURNING 1
    ), new_accounts AS (
        INSERT INTO accounts (id, kind, debits_must_not_exceed_credits, credits_must_not_exceed_debits)
        SELECT u.* FROM unnest($3::bigint[], $4::text[], $5::bool[], $6::bool[]) AS u, fence
    ), new_transfers AS (
        INSERT INTO transfers (",
    transfer_columns!(),
    ") SELECT u.* FROM unnest($7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[], $14::bigint[], $15::bool[], $16::bigint[], $17::bigint[], $18::bigint[], $19::text[]) AS u, fence
    ), changed AS (
        UPDATE transfers t SET state = u.state
        FROM unnest($20::bigint[], $21::text[]) AS u(id, state), fence WHERE t.id = u.id RETURNING 1
    )
    SELECT (SELECT count(*) FROM fence),
        CASE WHEN (SELECT count(*) FROM fence) = 1 AND (SELECT count(*) FROM changed) <> cardinality($20::bigint[])
            THEN mall_fail('mall: a pending transfer to update is missing') ELSE 0 END"
);
const ALL_ACCOUNTS: &str =
    "SELECT id, kind, debits_must_not_exceed_credits, credits_must_not_exceed_debits FROM accounts";
const ALL_TRANSFERS: &str = concat!(
    "SELECT ",
    transfer_columns!(),
    " FROM transfers ORDER BY seq"
);
/// Each side newest first and cut at the limit, then merged: the literal
/// bounds let the planner use the partial wallet indexes.
const WALLET_STATEMENT: &str = concat!(
    "SELECT * FROM (
        (SELECT ",
    transfer_columns!(),
    " FROM transfers WHERE debit = $1
            AND debit >= 72057594037927936 AND debit < 144115188075855872 AND seq < $2
            ORDER BY seq DESC LIMIT $3)
        UNION ALL
        (SELECT ",
    transfer_columns!(),
    " FROM transfers WHERE credit = $1
            AND credit >= 72057594037927936 AND credit < 144115188075855872 AND seq < $2
            ORDER BY seq DESC LIMIT $3)
    ) AS t ORDER BY seq DESC LIMIT $3"
);

fn get<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, String> {
    row.try_get(i).map_err(|e| format!("column {i}: {e}"))
}

fn account_from_row(row: &Row) -> Result<Account, String> {
    let kind: &str = get(row, 1)?;
    let kind = AccountKind::parse(kind).ok_or_else(|| format!("account kind {kind}"))?;
    Ok(Account::new(
        AccountId(get::<i64>(row, 0)? as u64),
        kind,
        Limits {
            debits_must_not_exceed_credits: get(row, 2)?,
            credits_must_not_exceed_debits: get(row, 3)?,
        },
    ))
}

fn stored_from_row(row: &Row) -> Result<Stored, String> {
    let id = TransferId(get::<i64>(row, 0)? as u64);
    (|| {
        let mode: &str = get(row, 5)?;
        let pending = get::<Option<i64>>(row, 6)?.map(|p| TransferId(p as u64));
        let mode = match (mode, pending) {
            ("single", _) => Mode::Single,
            ("pending", _) => Mode::Pending {
                timeout_ms: get::<Option<i64>>(row, 7)?.unwrap_or(0),
            },
            ("post", Some(p)) => Mode::Post { pending: p },
            ("void", Some(p)) => Mode::Void { pending: p },
            (m, _) => return Err(format!("mode {m}")),
        };
        let state = get::<Option<&str>>(row, 12)?
            .map(|s| PendingState::parse(s).ok_or_else(|| format!("state {s}")))
            .transpose()?;
        let code: i64 = get(row, 9)?;
        Ok(Stored {
            seq: get::<i64>(row, 1)? as u64,
            transfer: Transfer {
                id,
                debit: AccountId(get::<i64>(row, 2)? as u64),
                credit: AccountId(get::<i64>(row, 3)? as u64),
                amount: get::<i64>(row, 4)? as u64,
                mode,
                linked: get(row, 8)?,
                code: u16::try_from(code).map_err(|_| format!("code {code}"))?,
                user_data: get::<i64>(row, 10)? as u64,
            },
            created_at: Timestamp(get(row, 11)?),
            state,
        })
    })()
    .map_err(|e: String| format!("transfer {}: {e}", id.0))
}

/// Every account and transfer, in one transaction.
pub(crate) fn read(
    tx: &mut postgres::Transaction<'_>,
) -> Result<(Vec<Account>, Vec<Stored>), Error> {
    let accounts = tx
        .query(ALL_ACCOUNTS, &[])?
        .iter()
        .map(account_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    Ok((accounts, read_transfers(tx)?))
}

/// Every transfer in order, streamed rather than buffered as rows.
fn read_transfers(client: &mut impl GenericClient) -> Result<Vec<Stored>, Error> {
    let mut transfers = Vec::new();
    let mut rows = client.query_raw(ALL_TRANSFERS, std::iter::empty::<&dyn ToSql>())?;
    while let Some(row) = rows.next()? {
        transfers.push(stored_from_row(&row).map_err(corrupt)?);
    }
    Ok(transfers)
}

/// The ledger's journal on the first server, fenced like a shard's (its
/// row is `shard = -1`).
pub struct PgLedgerJournal {
    pool: Arc<Pool>,
    config: LedgerConfig,
    fence: Fence,
}

impl PgLedgerJournal {
    pub(crate) fn open(pool: Arc<Pool>, config: LedgerConfig) -> Result<PgLedgerJournal, Error> {
        let fence = Fence::take_over(&pool, LEDGER_FENCE, "the ledger".into())?;
        Ok(PgLedgerJournal {
            pool,
            config,
            fence,
        })
    }

    fn write(&mut self, effects: &[Effect]) -> Result<(), Error> {
        self.fence.check()?;
        if effects.is_empty() {
            return Ok(());
        }
        let mut accounts = Vec::new();
        let mut transfers: Vec<Stored> = Vec::new();
        let mut inserted_at: HashMap<TransferId, usize> = HashMap::new();
        // Last state of each pending transfer stored before this batch
        // (effects are in order; one inserted in this batch takes its
        // state on its row: the statement's parts do not see each other).
        let mut states: Vec<(TransferId, PendingState)> = Vec::new();
        let mut state_at: HashMap<TransferId, usize> = HashMap::new();
        for e in effects {
            match e {
                Effect::InsertAccount(a) => accounts.push(a),
                Effect::InsertTransfer(s) => {
                    inserted_at.insert(s.transfer.id, transfers.len());
                    transfers.push(s.clone());
                }
                Effect::SetPendingState { id, state } if inserted_at.contains_key(id) => {
                    transfers[inserted_at[id]].state = Some(*state);
                }
                Effect::SetPendingState { id, state } => match state_at.get(id) {
                    Some(&i) => states[i].1 = *state,
                    None => {
                        state_at.insert(*id, states.len());
                        states.push((*id, *state));
                    }
                },
            }
        }
        let fence = &self.fence;
        let (key, epoch) = fence.key_and_epoch();
        let result = self.pool.with(|conn| {
            let stmt = conn.prepare(WRITE_BATCH)?;
            let a = &accounts;
            let s = &transfers;
            let modes: Vec<(&str, Option<i64>, Option<i64>)> = s
                .iter()
                .map(|s| match s.transfer.mode {
                    Mode::Single => ("single", None, None),
                    Mode::Pending { timeout_ms } => ("pending", None, Some(timeout_ms)),
                    Mode::Post { pending } => ("post", Some(pending.0 as i64), None),
                    Mode::Void { pending } => ("void", Some(pending.0 as i64), None),
                })
                .collect();
            let row = conn.client.query_one(
                &stmt,
                &[
                    &key,
                    &epoch,
                    &a.iter().map(|a| a.id.0 as i64).collect::<Vec<_>>(),
                    &a.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
                    &a.iter()
                        .map(|a| a.limits.debits_must_not_exceed_credits)
                        .collect::<Vec<_>>(),
                    &a.iter()
                        .map(|a| a.limits.credits_must_not_exceed_debits)
                        .collect::<Vec<_>>(),
                    &s.iter().map(|s| s.transfer.id.0 as i64).collect::<Vec<_>>(),
                    &s.iter().map(|s| s.seq as i64).collect::<Vec<_>>(),
                    &s.iter()
                        .map(|s| s.transfer.debit.0 as i64)
                        .collect::<Vec<_>>(),
                    &s.iter()
                        .map(|s| s.transfer.credit.0 as i64)
                        .collect::<Vec<_>>(),
                    &s.iter()
                        .map(|s| s.transfer.amount as i64)
                        .collect::<Vec<_>>(),
                    &modes.iter().map(|m| m.0).collect::<Vec<_>>(),
                    &modes.iter().map(|m| m.1).collect::<Vec<_>>(),
                    &modes.iter().map(|m| m.2).collect::<Vec<_>>(),
                    &s.iter().map(|s| s.transfer.linked).collect::<Vec<_>>(),
                    &s.iter()
                        .map(|s| i64::from(s.transfer.code))
                        .collect::<Vec<_>>(),
                    &s.iter()
                        .map(|s| s.transfer.user_data as i64)
                        .collect::<Vec<_>>(),
                    &s.iter().map(|s| s.created_at.0).collect::<Vec<_>>(),
                    &s.iter()
                        .map(|s| s.state.map(PendingState::as_str))
                        .collect::<Vec<_>>(),
                    &states.iter().map(|s| s.0 .0 as i64).collect::<Vec<_>>(),
                    &states.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
                ],
            );
            match row {
                Ok(row) if row.try_get::<_, i64>(0)? == 1 => Ok(()),
                Ok(_) => Err(fence.error()),
                Err(e)
                    if e.to_string()
                        .contains("mall: a pending transfer to update is missing") =>
                {
                    Err(corrupt(format!(
                        "{} pending transfers to update, some missing",
                        states.len()
                    )))
                }
                Err(e) => Err(e.into()),
            }
        });
        self.fence.observe(result)
    }

    fn read_checked(&mut self) -> Result<(Vec<Account>, Vec<Stored>), Error> {
        self.fence.check()?;
        let fence = &self.fence;
        let result = self.pool.with(|conn| {
            let hold = Fence::prepare(conn)?;
            let mut tx = conn.client.transaction()?;
            fence.hold(&mut tx, &hold)?;
            let read = read(&mut tx)?;
            tx.commit()?;
            Ok(read)
        });
        self.fence.observe(result)
    }
}

impl Journal for PgLedgerJournal {
    type Machine = Ledger;

    fn commit(&mut self, effects: &[Effect]) -> Result<(), JournalError> {
        Ok(self.write(effects)?)
    }

    fn load(&mut self, _now: Timestamp) -> Result<Ledger, JournalError> {
        let (accounts, transfers) = self.read_checked()?;
        Ok(Ledger::restore(self.config.clone(), accounts, transfers))
    }
}

/// Read access to the ledger's transfers, on the first server's pool.
pub struct PgLedgerReader {
    pool: Arc<Pool>,
}

impl PgLedgerReader {
    pub(crate) fn new(pool: Arc<Pool>) -> PgLedgerReader {
        PgLedgerReader { pool }
    }
}

impl LedgerRead for PgLedgerReader {
    fn wallet_statement(
        &self,
        wallet: AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        assert_eq!(
            mall_ledger::chart::kind_of(wallet),
            Some(AccountKind::Wallet),
            "statements are for wallets"
        );
        let params: [&(dyn ToSql + Sync); 3] = [
            &(wallet.0 as i64),
            &before_seq.map_or(i64::MAX, |s| s as i64),
            &(limit.min(i64::MAX as usize) as i64),
        ];
        Ok(self.pool.read(|conn| {
            let stmt = conn.prepare(WALLET_STATEMENT)?;
            conn.client
                .query(&stmt, &params)?
                .iter()
                .map(|r| stored_from_row(r).map_err(corrupt))
                .collect()
        })?)
    }

    fn all_transfers(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(self.pool.read(|conn| read_transfers(&mut conn.client))?)
    }
}
