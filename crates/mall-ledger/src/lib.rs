//! The ledger: double-entry bookkeeping for every fen that moves, modelled
//! on TigerBeetle's data model.
//!
//! Accounts carry posted and pending debits and credits. Transfers are
//! immutable, have client-chosen ids (a replay answers like the first time;
//! the same id with another body is refused), may be two-phase (pending,
//! then post — in full or in part — or void, or expire), may be linked
//! (a chain succeeds or fails as a whole), and respect balance limits (a
//! wallet's debits never exceed its credits, so it never goes below zero).
//!
//! Sans-IO: commands and `now` in, results and [`Effect`]s out. The
//! `mall-shard` runtime group-commits the effects before any success leaves.
//!
//! Architecture invariant, asserted after every batch: the sum of all
//! accounts' posted debits equals the sum of their posted credits, and the
//! same for pending amounts.

pub mod chart;
pub mod model;

use mall_core::Timestamp;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

/// What an account is for (TigerBeetle's `code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// A shopper's wallet: debits may not exceed credits (never below zero).
    Wallet,
    MerchantReceivable,
    PlatformEscrow,
    ChannelClearing,
    CodReceivable,
    /// The platform's own money for the discounts it funds.
    PlatformPromotions,
}

impl AccountKind {
    pub const ALL: [AccountKind; 6] = [
        AccountKind::Wallet,
        AccountKind::MerchantReceivable,
        AccountKind::PlatformEscrow,
        AccountKind::ChannelClearing,
        AccountKind::CodReceivable,
        AccountKind::PlatformPromotions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Wallet => "wallet",
            AccountKind::MerchantReceivable => "merchant_receivable",
            AccountKind::PlatformEscrow => "platform_escrow",
            AccountKind::ChannelClearing => "channel_clearing",
            AccountKind::CodReceivable => "cod_receivable",
            AccountKind::PlatformPromotions => "platform_promotions",
        }
    }

    pub fn parse(s: &str) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Balance limits of an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Debits (pending + posted) may not exceed posted credits.
    pub debits_must_not_exceed_credits: bool,
    /// Credits (pending + posted) may not exceed posted debits.
    pub credits_must_not_exceed_debits: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub kind: AccountKind,
    pub limits: Limits,
    pub debits_pending: u64,
    pub debits_posted: u64,
    pub credits_pending: u64,
    pub credits_posted: u64,
}

impl Account {
    pub fn new(id: AccountId, kind: AccountKind, limits: Limits) -> Account {
        Account {
            id,
            kind,
            limits,
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
        }
    }

    /// Posted credits minus posted debits (a wallet's balance), in fen.
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }
}

/// How a transfer moves money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Posted at once.
    Single,
    /// Reserved: pending until posted, voided, or `timeout_ms` passes (0: never).
    Pending { timeout_ms: i64 },
    /// Posts a pending transfer, in full or in part (`amount` <= pending).
    Post { pending: TransferId },
    /// Releases a pending transfer.
    Void { pending: TransferId },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub id: TransferId,
    pub debit: AccountId,
    pub credit: AccountId,
    /// Fen. For a void, 0 (the pending amount is released).
    pub amount: u64,
    pub mode: Mode,
    /// Linked to the next transfer of the same command: all or none.
    pub linked: bool,
    /// What the transfer is for (payment, refund, top-up, ...): the caller's.
    pub code: u16,
    /// The caller's reference, e.g. an order id.
    pub user_data: u64,
}

/// Where a pending transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PendingState {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl PendingState {
    pub fn as_str(self) -> &'static str {
        match self {
            PendingState::Pending => "pending",
            PendingState::Posted => "posted",
            PendingState::Voided => "voided",
            PendingState::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<PendingState> {
        [
            PendingState::Pending,
            PendingState::Posted,
            PendingState::Voided,
            PendingState::Expired,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A transfer as recorded: its order in the ledger and, if pending, its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub transfer: Transfer,
    pub created_at: Timestamp,
    /// Pending transfers only.
    pub state: Option<PendingState>,
}

/// Why a transfer (or account) was refused. Stable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    IdZero,
    AmountZero,
    AccountsMustBeDifferent,
    DebitAccountNotFound,
    CreditAccountNotFound,
    ExceedsCredits,
    ExceedsDebits,
    ExistsWithDifferentFields,
    PendingNotFound,
    PendingNotPending,
    PendingAlreadyPosted,
    PendingAlreadyVoided,
    PendingExpired,
    PendingAccountsMismatch,
    ExceedsPendingAmount,
    Overflow,
    LinkedEventFailed,
    LinkedChainOpen,
    LedgerFull,
    AccountExists,
    /// An account cannot limit both its debits and its credits.
    FlagsMutuallyExclusive,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::IdZero => "id_zero",
            Refusal::AmountZero => "amount_zero",
            Refusal::AccountsMustBeDifferent => "accounts_must_be_different",
            Refusal::DebitAccountNotFound => "debit_account_not_found",
            Refusal::CreditAccountNotFound => "credit_account_not_found",
            Refusal::ExceedsCredits => "exceeds_credits",
            Refusal::ExceedsDebits => "exceeds_debits",
            Refusal::ExistsWithDifferentFields => "exists_with_different_fields",
            Refusal::PendingNotFound => "pending_transfer_not_found",
            Refusal::PendingNotPending => "pending_transfer_not_pending",
            Refusal::PendingAlreadyPosted => "pending_transfer_already_posted",
            Refusal::PendingAlreadyVoided => "pending_transfer_already_voided",
            Refusal::PendingExpired => "pending_transfer_expired",
            Refusal::PendingAccountsMismatch => "pending_transfer_accounts_mismatch",
            Refusal::ExceedsPendingAmount => "exceeds_pending_transfer_amount",
            Refusal::Overflow => "overflow",
            Refusal::LinkedEventFailed => "linked_event_failed",
            Refusal::LinkedChainOpen => "linked_event_chain_open",
            Refusal::LedgerFull => "ledger_full",
            Refusal::AccountExists => "account_exists_with_different_fields",
            Refusal::FlagsMutuallyExclusive => "flags_are_mutually_exclusive",
        }
    }
}

/// The outcome of one transfer: created now, or a replay of the first
/// (identical) request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Replayed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateAccounts(Vec<Account>),
    /// Applied in order; runs of `linked` transfers are all-or-none chains.
    CreateTransfers(Vec<Transfer>),
    LookupAccounts(Vec<AccountId>),
    LookupTransfers(Vec<TransferId>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Accounts(Vec<Result<Outcome, Refusal>>),
    Transfers(Vec<Result<Outcome, Refusal>>),
    Lookup(Vec<Option<Account>>),
    TransferLookup(Vec<Option<Stored>>),
    /// The batch could not be committed; retry with the same ids.
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    InsertAccount(Account),
    InsertTransfer(Stored),
    SetPendingState { id: TransferId, state: PendingState },
}

#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Transfers remembered, at most (ids are never forgotten: a replay of
    /// a forgotten id could move money twice). Beyond it: `ledger_full`.
    pub transfers_max: usize,
    pub accounts_max: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            transfers_max: 50_000_000,
            accounts_max: 10_000_000,
        }
    }
}

/// Undo record of a chain in progress.
enum Undo {
    Account(Account),
    Transfer(TransferId),
    State(TransferId, PendingState),
}

/// Sums over all accounts, kept in step with every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

pub struct Ledger {
    config: LedgerConfig,
    accounts: FxHashMap<AccountId, Account>,
    transfers: FxHashMap<TransferId, Stored>,
    /// Pending transfers with a timeout, by expiry; stale entries skipped.
    expiry: BinaryHeap<Reverse<(Timestamp, TransferId)>>,
    next_seq: u64,
    totals: Totals,
    /// Undo log of the chain being applied.
    undo: Vec<Undo>,
    /// Expiries of the chain being applied: into `expiry` only if it holds,
    /// so undone transfers leave nothing behind.
    chain_expiries: Vec<Reverse<(Timestamp, TransferId)>>,
}

impl Ledger {
    pub fn new(config: LedgerConfig) -> Ledger {
        Ledger {
            config,
            accounts: FxHashMap::default(),
            transfers: FxHashMap::default(),
            expiry: BinaryHeap::new(),
            next_seq: 1,
            totals: Totals::default(),
            undo: Vec::new(),
            chain_expiries: Vec::new(),
        }
    }

    /// Rebuilds a ledger from its record: accounts (balances zero) and
    /// every transfer. Balances are recounted: sums do not depend on order.
    pub fn restore(
        config: LedgerConfig,
        accounts: Vec<Account>,
        mut transfers: Vec<Stored>,
    ) -> Ledger {
        let mut l = Ledger::new(config);
        for mut a in accounts {
            a.debits_pending = 0;
            a.debits_posted = 0;
            a.credits_pending = 0;
            a.credits_posted = 0;
            l.accounts.insert(a.id, a);
        }
        transfers.sort_by_key(|s| s.seq);
        for s in &transfers {
            let t = &s.transfer;
            match t.mode {
                Mode::Single => l.add(t.debit, t.credit, t.amount, false),
                Mode::Post { .. } => l.add(t.debit, t.credit, t.amount, false),
                Mode::Pending { timeout_ms } => {
                    if s.state == Some(PendingState::Pending) {
                        l.add(t.debit, t.credit, t.amount, true);
                        if timeout_ms > 0 {
                            l.expiry
                                .push(Reverse((s.created_at.plus_ms(timeout_ms), t.id)));
                        }
                    }
                }
                Mode::Void { .. } => {}
            }
            l.next_seq = l.next_seq.max(s.seq + 1);
        }
        for s in transfers {
            l.transfers.insert(s.transfer.id, s);
        }
        l.undo.clear();
        l.check_totals();
        l
    }

    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id)
    }

    pub fn transfer(&self, id: TransferId) -> Option<&Stored> {
        self.transfers.get(&id)
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn apply(&mut self, command: Command, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        match command {
            Command::CreateAccounts(accounts) => Reply::Accounts(
                accounts
                    .into_iter()
                    .map(|a| self.create_account(a, effects))
                    .collect(),
            ),
            Command::CreateTransfers(transfers) => {
                Reply::Transfers(self.create_transfers(transfers, now, effects))
            }
            Command::LookupAccounts(ids) => Reply::Lookup(
                ids.iter()
                    .map(|id| self.accounts.get(id).cloned())
                    .collect(),
            ),
            Command::LookupTransfers(ids) => Reply::TransferLookup(
                ids.iter()
                    .map(|id| self.transfers.get(id).cloned())
                    .collect(),
            ),
        }
    }

    fn create_account(
        &mut self,
        a: Account,
        effects: &mut Vec<Effect>,
    ) -> Result<Outcome, Refusal> {
        if a.id.0 == 0 {
            return Err(Refusal::IdZero);
        }
        if a.limits.debits_must_not_exceed_credits && a.limits.credits_must_not_exceed_debits {
            return Err(Refusal::FlagsMutuallyExclusive);
        }
        if let Some(existing) = self.accounts.get(&a.id) {
            return if existing.kind == a.kind && existing.limits == a.limits {
                Ok(Outcome::Replayed)
            } else {
                Err(Refusal::AccountExists)
            };
        }
        if self.accounts.len() >= self.config.accounts_max {
            return Err(Refusal::LedgerFull);
        }
        let a = Account::new(a.id, a.kind, a.limits);
        effects.push(Effect::InsertAccount(a.clone()));
        self.accounts.insert(a.id, a);
        Ok(Outcome::Created)
    }

    fn create_transfers(
        &mut self,
        transfers: Vec<Transfer>,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Vec<Result<Outcome, Refusal>> {
        let mut results: Vec<Result<Outcome, Refusal>> = Vec::with_capacity(transfers.len());
        let n = transfers.len();
        // The chain being applied: where it starts, its effects so far, and
        // whether a member failed (then the rest fail with it).
        let mut chain_start = 0;
        let mut chain_effects: Vec<Effect> = Vec::new();
        let mut chain_failed = false;
        for (i, t) in transfers.into_iter().enumerate() {
            let in_chain = t.linked || i > chain_start;
            let result = if chain_failed {
                Err(Refusal::LinkedEventFailed)
            } else if t.linked && i + 1 == n {
                Err(Refusal::LinkedChainOpen)
            } else {
                let mark = self.undo.len();
                let effects_mark = chain_effects.len();
                let r = self.create_transfer(t.clone(), now, &mut chain_effects);
                if r.is_err() {
                    // A transfer that failed half-way leaves no trace.
                    self.rollback_to(mark);
                    chain_effects.truncate(effects_mark);
                }
                r
            };
            if result.is_err() && in_chain && !chain_failed {
                // Undo what the chain did; its other members fail with it.
                chain_failed = true;
                self.rollback_to(0);
                self.chain_expiries.clear();
                chain_effects.clear();
                for r in &mut results[chain_start..i] {
                    *r = Err(Refusal::LinkedEventFailed);
                }
            }
            results.push(result);
            if !t.linked {
                effects.append(&mut chain_effects);
                self.expiry.extend(self.chain_expiries.drain(..));
                self.undo.clear();
                chain_failed = false;
                chain_start = i + 1;
            }
        }
        self.rollback_to(0);
        self.chain_expiries.clear();
        results
    }

    /// Undoes changes back to undo-log length `mark`, newest first.
    fn rollback_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            match self.undo.pop().expect("longer than mark") {
                Undo::Account(old) => {
                    let current = self.accounts.get(&old.id).expect("undo of a known account");
                    let t = &mut self.totals;
                    t.debits_pending = t.debits_pending + u128::from(old.debits_pending)
                        - u128::from(current.debits_pending);
                    t.debits_posted = t.debits_posted + u128::from(old.debits_posted)
                        - u128::from(current.debits_posted);
                    t.credits_pending = t.credits_pending + u128::from(old.credits_pending)
                        - u128::from(current.credits_pending);
                    t.credits_posted = t.credits_posted + u128::from(old.credits_posted)
                        - u128::from(current.credits_posted);
                    self.accounts.insert(old.id, old);
                }
                Undo::Transfer(id) => {
                    self.transfers.remove(&id);
                    self.next_seq -= 1;
                }
                Undo::State(id, state) => {
                    if let Some(s) = self.transfers.get_mut(&id) {
                        s.state = Some(state);
                    }
                }
            }
        }
    }

    /// Validates and applies one transfer (pushing its effects and undo records).
    fn create_transfer(
        &mut self,
        t: Transfer,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Result<Outcome, Refusal> {
        if t.id.0 == 0 {
            return Err(Refusal::IdZero);
        }
        if let Some(existing) = self.transfers.get(&t.id) {
            return if existing.transfer == t {
                Ok(Outcome::Replayed)
            } else {
                Err(Refusal::ExistsWithDifferentFields)
            };
        }
        if self.transfers.len() >= self.config.transfers_max {
            return Err(Refusal::LedgerFull);
        }
        match t.mode {
            Mode::Single | Mode::Pending { .. } => {
                if t.amount == 0 {
                    return Err(Refusal::AmountZero);
                }
                self.check_accounts(&t)?;
                let pending = matches!(t.mode, Mode::Pending { .. });
                self.check_limits(t.debit, t.credit, t.amount)?;
                self.change(t.debit, t.credit, t.amount, pending)?;
                let state = pending.then_some(PendingState::Pending);
                if let Mode::Pending { timeout_ms } = t.mode {
                    if timeout_ms > 0 {
                        // Into the heap only once the chain holds (see create_transfers).
                        self.chain_expiries
                            .push(Reverse((now.plus_ms(timeout_ms), t.id)));
                    }
                }
                self.record(t, now, state, effects);
                Ok(Outcome::Created)
            }
            Mode::Post { pending } | Mode::Void { pending } => {
                let posting = matches!(t.mode, Mode::Post { .. });
                let p = self
                    .transfers
                    .get(&pending)
                    .ok_or(Refusal::PendingNotFound)?;
                let (pd, pc, pamount) = (p.transfer.debit, p.transfer.credit, p.transfer.amount);
                match p.state {
                    None => return Err(Refusal::PendingNotPending),
                    Some(PendingState::Posted) => return Err(Refusal::PendingAlreadyPosted),
                    Some(PendingState::Voided) => return Err(Refusal::PendingAlreadyVoided),
                    Some(PendingState::Expired) => return Err(Refusal::PendingExpired),
                    Some(PendingState::Pending) => {}
                }
                if t.debit != pd || t.credit != pc {
                    return Err(Refusal::PendingAccountsMismatch);
                }
                if posting && t.amount == 0 {
                    return Err(Refusal::AmountZero);
                }
                if t.amount > pamount || (!posting && t.amount != 0) {
                    return Err(Refusal::ExceedsPendingAmount);
                }
                // Release the whole pending amount; post what is posted.
                self.release(pd, pc, pamount);
                if posting {
                    self.change(pd, pc, t.amount, false)?;
                }
                let new_state = if posting {
                    PendingState::Posted
                } else {
                    PendingState::Voided
                };
                self.set_state(pending, new_state, effects);
                self.record(t, now, None, effects);
                Ok(Outcome::Created)
            }
        }
    }

    fn check_accounts(&self, t: &Transfer) -> Result<(), Refusal> {
        if t.debit == t.credit {
            return Err(Refusal::AccountsMustBeDifferent);
        }
        if !self.accounts.contains_key(&t.debit) {
            return Err(Refusal::DebitAccountNotFound);
        }
        if !self.accounts.contains_key(&t.credit) {
            return Err(Refusal::CreditAccountNotFound);
        }
        Ok(())
    }

    fn check_limits(
        &self,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    ) -> Result<(), Refusal> {
        let d = &self.accounts[&debit];
        if d.limits.debits_must_not_exceed_credits {
            let debits =
                u128::from(d.debits_pending) + u128::from(d.debits_posted) + u128::from(amount);
            if debits > u128::from(d.credits_posted) {
                return Err(Refusal::ExceedsCredits);
            }
        }
        let c = &self.accounts[&credit];
        if c.limits.credits_must_not_exceed_debits {
            let credits =
                u128::from(c.credits_pending) + u128::from(c.credits_posted) + u128::from(amount);
            if credits > u128::from(c.debits_posted) {
                return Err(Refusal::ExceedsDebits);
            }
        }
        Ok(())
    }

    /// Adds `amount` to the debit side of `debit` and the credit side of
    /// `credit` (pending or posted), with undo records.
    fn change(
        &mut self,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
        pending: bool,
    ) -> Result<(), Refusal> {
        let d = &self.accounts[&debit];
        let c = &self.accounts[&credit];
        let (dv, cv) = if pending {
            (d.debits_pending, c.credits_pending)
        } else {
            (d.debits_posted, c.credits_posted)
        };
        if dv.checked_add(amount).is_none() || cv.checked_add(amount).is_none() {
            return Err(Refusal::Overflow);
        }
        self.undo.push(Undo::Account(d.clone()));
        self.undo.push(Undo::Account(c.clone()));
        self.add(debit, credit, amount, pending);
        Ok(())
    }

    fn add(&mut self, debit: AccountId, credit: AccountId, amount: u64, pending: bool) {
        let d = self.accounts.get_mut(&debit).expect("checked");
        if pending {
            d.debits_pending += amount
        } else {
            d.debits_posted += amount
        }
        let c = self.accounts.get_mut(&credit).expect("checked");
        if pending {
            c.credits_pending += amount
        } else {
            c.credits_posted += amount
        }
        let a = u128::from(amount);
        if pending {
            self.totals.debits_pending += a;
            self.totals.credits_pending += a;
        } else {
            self.totals.debits_posted += a;
            self.totals.credits_posted += a;
        }
    }

    /// Takes a pending amount off both accounts (post, void, expiry).
    fn release(&mut self, debit: AccountId, credit: AccountId, amount: u64) {
        let (d, c) = (
            self.accounts[&debit].clone(),
            self.accounts[&credit].clone(),
        );
        self.undo.push(Undo::Account(d));
        self.undo.push(Undo::Account(c));
        let d = self.accounts.get_mut(&debit).expect("pending's account");
        d.debits_pending -= amount;
        let c = self.accounts.get_mut(&credit).expect("pending's account");
        c.credits_pending -= amount;
        self.totals.debits_pending -= u128::from(amount);
        self.totals.credits_pending -= u128::from(amount);
    }

    fn set_state(&mut self, id: TransferId, state: PendingState, effects: &mut Vec<Effect>) {
        let s = self.transfers.get_mut(&id).expect("pending exists");
        self.undo
            .push(Undo::State(id, s.state.expect("a pending transfer")));
        s.state = Some(state);
        effects.push(Effect::SetPendingState { id, state });
    }

    fn record(
        &mut self,
        t: Transfer,
        now: Timestamp,
        state: Option<PendingState>,
        effects: &mut Vec<Effect>,
    ) {
        let stored = Stored {
            seq: self.next_seq,
            transfer: t,
            created_at: now,
            state,
        };
        self.next_seq += 1;
        self.undo.push(Undo::Transfer(stored.transfer.id));
        effects.push(Effect::InsertTransfer(stored.clone()));
        self.transfers.insert(stored.transfer.id, stored);
    }

    /// Expires pending transfers whose timeout has passed.
    pub fn tick(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        while let Some(&Reverse((at, id))) = self.expiry.peek() {
            if at > now {
                break;
            }
            self.expiry.pop();
            // Skip entries whose transfer moved on (or was undone and made anew).
            let due = self
                .transfers
                .get(&id)
                .filter(|s| s.state == Some(PendingState::Pending))
                .filter(|s| matches!(s.transfer.mode, Mode::Pending { timeout_ms } if s.created_at.plus_ms(timeout_ms) == at))
                .map(|s| (s.transfer.debit, s.transfer.credit, s.transfer.amount));
            if let Some((d, c, amount)) = due {
                self.release(d, c, amount);
                self.set_state(id, PendingState::Expired, effects);
            }
        }
        self.undo.clear();
    }

    /// Asserts the double-entry invariant on the running totals.
    pub fn check_totals(&self) {
        assert_eq!(
            self.totals.debits_posted, self.totals.credits_posted,
            "posted debits != posted credits"
        );
        assert_eq!(
            self.totals.debits_pending, self.totals.credits_pending,
            "pending debits != pending credits"
        );
    }
    /// Recounts everything and checks every invariant; a failure says
    /// which one broke, and where.
    pub fn audit(&self) -> Result<(), mall_core::AuditFailure> {
        self.find_faults().map_err(mall_core::AuditFailure)
    }

    /// Recounts everything from the accounts and transfers. For tests and audits.
    fn find_faults(&self) -> Result<(), String> {
        let mut sum = Totals::default();
        for a in self.accounts.values() {
            sum.debits_pending += u128::from(a.debits_pending);
            sum.debits_posted += u128::from(a.debits_posted);
            sum.credits_pending += u128::from(a.credits_pending);
            sum.credits_posted += u128::from(a.credits_posted);
            if a.limits.debits_must_not_exceed_credits
                && a.debits_pending + a.debits_posted > a.credits_posted
            {
                return Err(format!("account {:?} exceeds its credits", a.id));
            }
            if a.limits.credits_must_not_exceed_debits
                && a.credits_pending + a.credits_posted > a.debits_posted
            {
                return Err(format!("account {:?} exceeds its debits", a.id));
            }
        }
        if sum != self.totals {
            return Err(format!(
                "totals {:?} but accounts sum to {sum:?}",
                self.totals
            ));
        }
        if sum.debits_posted != sum.credits_posted || sum.debits_pending != sum.credits_pending {
            return Err(format!("unbalanced: {sum:?}"));
        }
        let recounted = Ledger::restore(
            self.config.clone(),
            self.accounts.values().cloned().collect(),
            self.transfers.values().cloned().collect(),
        );
        for a in self.accounts.values() {
            if recounted.accounts.get(&a.id) != Some(a) {
                return Err(format!("account {:?} disagrees with its transfers", a.id));
            }
        }
        Ok(())
    }
}

impl mall_shard::StateMachine for Ledger {
    type Command = Command;
    type Reply = Reply;
    type Effect = Effect;

    fn apply(&mut self, command: Command, now: Timestamp, effects: &mut Vec<Effect>) -> Reply {
        Ledger::apply(self, command, now, effects)
    }

    fn needs_commit(reply: &Reply) -> bool {
        match reply {
            Reply::Accounts(r) | Reply::Transfers(r) => r.iter().any(Result::is_ok),
            // Balances read may include effects not yet committed.
            Reply::Lookup(_) | Reply::TransferLookup(_) => true,
            Reply::Unavailable => false,
        }
    }

    fn tick(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        Ledger::tick(self, now, effects)
    }

    fn check_invariants(&mut self) {
        self.check_totals()
    }

    fn unavailable() -> Reply {
        Reply::Unavailable
    }
}
