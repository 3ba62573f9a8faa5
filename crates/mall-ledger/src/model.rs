//! A reference model of the ledger, written for obviousness: it keeps every
//! accepted transfer and recomputes balances from scratch, and applies a
//! linked chain on a copy of itself that replaces it only if every member
//! succeeds. Property tests check [`crate::Ledger`] against it.

use crate::{
    Account, AccountId, Command, Limits, Mode, Outcome, PendingState, Refusal, Reply, Stored,
    Transfer, TransferId,
};
use mall_core::Timestamp;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub accounts: BTreeMap<AccountId, Account>,
    /// Accepted transfers in order, with their creation time and state.
    pub transfers: Vec<(Transfer, Timestamp, Option<PendingState>)>,
}

impl Model {
    /// `(debits_pending, debits_posted, credits_pending, credits_posted)`.
    pub fn balances(&self, id: AccountId) -> (u64, u64, u64, u64) {
        let (mut dp, mut dq, mut cp, mut cq) = (0u64, 0u64, 0u64, 0u64);
        for (t, _, state) in &self.transfers {
            let posted = match t.mode {
                Mode::Single | Mode::Post { .. } => Some(true),
                Mode::Pending { .. } if *state == Some(PendingState::Pending) => Some(false),
                _ => None,
            };
            let Some(posted) = posted else { continue };
            if t.debit == id {
                if posted {
                    dq += t.amount
                } else {
                    dp += t.amount
                }
            }
            if t.credit == id {
                if posted {
                    cq += t.amount
                } else {
                    cp += t.amount
                }
            }
        }
        (dp, dq, cp, cq)
    }

    fn find(&self, id: TransferId) -> Option<usize> {
        self.transfers.iter().position(|(t, _, _)| t.id == id)
    }

    pub fn tick(&mut self, now: Timestamp) {
        for (t, at, state) in &mut self.transfers {
            if let Mode::Pending { timeout_ms } = t.mode {
                if timeout_ms > 0
                    && *state == Some(PendingState::Pending)
                    && at.plus_ms(timeout_ms) <= now
                {
                    *state = Some(PendingState::Expired);
                }
            }
        }
    }

    fn one(&mut self, t: &Transfer, now: Timestamp) -> Result<Outcome, Refusal> {
        if t.id.0 == 0 {
            return Err(Refusal::IdZero);
        }
        if let Some(i) = self.find(t.id) {
            return if self.transfers[i].0 == *t {
                Ok(Outcome::Replayed)
            } else {
                Err(Refusal::ExistsWithDifferentFields)
            };
        }
        match t.mode {
            Mode::Single | Mode::Pending { .. } => {
                if t.amount == 0 {
                    return Err(Refusal::AmountZero);
                }
                if t.debit == t.credit {
                    return Err(Refusal::AccountsMustBeDifferent);
                }
                let (Some(d), Some(c)) =
                    (self.accounts.get(&t.debit), self.accounts.get(&t.credit))
                else {
                    return Err(if self.accounts.contains_key(&t.debit) {
                        Refusal::CreditAccountNotFound
                    } else {
                        Refusal::DebitAccountNotFound
                    });
                };
                let (dl, cl): (Limits, Limits) = (d.limits, c.limits);
                let (dp, dq, _, dcq) = self.balances(t.debit);
                if dl.debits_must_not_exceed_credits
                    && u128::from(dp) + u128::from(dq) + u128::from(t.amount) > u128::from(dcq)
                {
                    return Err(Refusal::ExceedsCredits);
                }
                let (_, cdq, cp, cq) = self.balances(t.credit);
                if cl.credits_must_not_exceed_debits
                    && u128::from(cp) + u128::from(cq) + u128::from(t.amount) > u128::from(cdq)
                {
                    return Err(Refusal::ExceedsDebits);
                }
                let state = matches!(t.mode, Mode::Pending { .. }).then_some(PendingState::Pending);
                self.transfers.push((t.clone(), now, state));
                Ok(Outcome::Created)
            }
            Mode::Post { pending } | Mode::Void { pending } => {
                let posting = matches!(t.mode, Mode::Post { .. });
                let i = self.find(pending).ok_or(Refusal::PendingNotFound)?;
                let (p, _, state) = &self.transfers[i];
                match state {
                    None => return Err(Refusal::PendingNotPending),
                    Some(PendingState::Posted) => return Err(Refusal::PendingAlreadyPosted),
                    Some(PendingState::Voided) => return Err(Refusal::PendingAlreadyVoided),
                    Some(PendingState::Expired) => return Err(Refusal::PendingExpired),
                    Some(PendingState::Pending) => {}
                }
                if t.debit != p.debit || t.credit != p.credit {
                    return Err(Refusal::PendingAccountsMismatch);
                }
                if posting && t.amount == 0 {
                    return Err(Refusal::AmountZero);
                }
                if t.amount > p.amount || (!posting && t.amount != 0) {
                    return Err(Refusal::ExceedsPendingAmount);
                }
                self.transfers[i].2 = Some(if posting {
                    PendingState::Posted
                } else {
                    PendingState::Voided
                });
                self.transfers.push((t.clone(), now, None));
                Ok(Outcome::Created)
            }
        }
    }

    pub fn apply(&mut self, command: &Command, now: Timestamp) -> Reply {
        match command {
            Command::CreateAccounts(accounts) => Reply::Accounts(
                accounts
                    .iter()
                    .map(|a| {
                        if a.id.0 == 0 {
                            return Err(Refusal::IdZero);
                        }
                        if a.limits.debits_must_not_exceed_credits
                            && a.limits.credits_must_not_exceed_debits
                        {
                            return Err(Refusal::FlagsMutuallyExclusive);
                        }
                        match self.accounts.get(&a.id) {
                            Some(e) if e.kind == a.kind && e.limits == a.limits => {
                                Ok(Outcome::Replayed)
                            }
                            Some(_) => Err(Refusal::AccountExists),
                            None => {
                                self.accounts
                                    .insert(a.id, Account::new(a.id, a.kind, a.limits));
                                Ok(Outcome::Created)
                            }
                        }
                    })
                    .collect(),
            ),
            Command::LookupAccounts(ids) => Reply::Lookup(
                ids.iter()
                    .map(|id| {
                        self.accounts.get(id).map(|a| {
                            let (dp, dq, cp, cq) = self.balances(*id);
                            Account {
                                debits_pending: dp,
                                debits_posted: dq,
                                credits_pending: cp,
                                credits_posted: cq,
                                ..a.clone()
                            }
                        })
                    })
                    .collect(),
            ),
            Command::LookupTransfers(ids) => Reply::TransferLookup(
                ids.iter()
                    .map(|id| {
                        self.transfers
                            .iter()
                            .enumerate()
                            .find(|(_, (t, _, _))| t.id == *id)
                            .map(|(i, (t, at, state))| Stored {
                                seq: i as u64 + 1,
                                transfer: t.clone(),
                                created_at: *at,
                                state: *state,
                            })
                    })
                    .collect(),
            ),
            Command::CreateTransfers(transfers) => {
                let mut results = Vec::new();
                let mut i = 0;
                while i < transfers.len() {
                    // The chain: up to and including the first unlinked transfer.
                    let end = (i..transfers.len())
                        .find(|&j| !transfers[j].linked)
                        .map_or(transfers.len(), |j| j + 1);
                    let chain = &transfers[i..end];
                    let open = chain.last().is_some_and(|t| t.linked);
                    if chain.len() == 1 && !open {
                        results.push(self.one(&chain[0], now));
                    } else {
                        let mut copy = self.clone();
                        let mut rs = Vec::new();
                        let mut failed = None;
                        for (k, t) in chain.iter().enumerate() {
                            let r = if open && k + 1 == chain.len() {
                                Err(Refusal::LinkedChainOpen)
                            } else {
                                copy.one(t, now)
                            };
                            if r.is_err() {
                                failed = Some((k, r));
                                break;
                            }
                            rs.push(r);
                        }
                        match failed {
                            None => {
                                *self = copy;
                                results.extend(rs);
                            }
                            Some((k, r)) => {
                                for j in 0..chain.len() {
                                    results.push(if j == k {
                                        r
                                    } else {
                                        Err(Refusal::LinkedEventFailed)
                                    });
                                }
                            }
                        }
                    }
                    i = end;
                }
                Reply::Transfers(results)
            }
        }
    }
}
