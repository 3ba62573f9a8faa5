//! `mall ledger verify`: recounts a ledger's record, read from any backend,
//! and checks every rule.

use mall_ledger::{
    Account, AccountId, Ledger, LedgerConfig, Mode, PendingState, Stored, TransferId,
};

/// `mall ledger verify` on the mall's own ledger: [`verify_ledger`], and
/// every transfer moves money the way its code says (top-ups, payments,
/// settlements, forfeits, collections, refunds, late charges handed back:
/// `mall_ledger::chart::check`).
pub fn verify_mall_ledger(accounts: Vec<Account>, transfers: Vec<Stored>) -> Vec<String> {
    let mut violations: Vec<String> = transfers
        .iter()
        .filter_map(|s| mall_ledger::chart::check(&s.transfer).err())
        .collect();
    violations.extend(verify_ledger(accounts, transfers));
    violations
}

/// Recounts a ledger store and checks every rule of double entry.
pub fn verify_ledger(accounts: Vec<Account>, transfers: Vec<Stored>) -> Vec<String> {
    let mut violations = Vec::new();
    let by_id: std::collections::HashMap<TransferId, &Stored> =
        transfers.iter().map(|s| (s.transfer.id, s)).collect();
    let mut resolutions: std::collections::HashMap<TransferId, Vec<&Stored>> =
        std::collections::HashMap::new();
    for s in &transfers {
        if let Mode::Post { pending } | Mode::Void { pending } = s.transfer.mode {
            resolutions.entry(pending).or_default().push(s);
            match by_id.get(&pending) {
                None => violations.push(format!(
                    "transfer {} resolves missing pending transfer {}",
                    s.transfer.id.0, pending.0
                )),
                Some(p) => {
                    if p.transfer.debit != s.transfer.debit
                        || p.transfer.credit != s.transfer.credit
                    {
                        violations.push(format!(
                            "transfer {} resolves {} with other accounts",
                            s.transfer.id.0, pending.0
                        ));
                    }
                    if s.transfer.amount > p.transfer.amount {
                        violations.push(format!(
                            "transfer {} posts more than pending {}",
                            s.transfer.id.0, pending.0
                        ));
                    }
                }
            }
        }
    }
    for s in &transfers {
        let t = &s.transfer;
        let is_pending = matches!(t.mode, Mode::Pending { .. });
        if is_pending != s.state.is_some() {
            violations.push(format!(
                "transfer {}: state {:?} does not fit its mode",
                t.id.0, s.state
            ));
        }
        if t.debit == t.credit {
            violations.push(format!(
                "transfer {}: debit and credit are the same account",
                t.id.0
            ));
        }
        match t.mode {
            Mode::Void { .. } if t.amount != 0 => {
                violations.push(format!("void {} carries an amount", t.id.0))
            }
            Mode::Single | Mode::Pending { .. } | Mode::Post { .. } if t.amount == 0 => {
                violations.push(format!("transfer {} moves nothing", t.id.0))
            }
            _ => {}
        }
        let resolved_by = resolutions
            .get(&t.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let expected = match s.state {
            Some(PendingState::Posted) => Some("post"),
            Some(PendingState::Voided) => Some("void"),
            _ => None,
        };
        let kinds: Vec<&str> = resolved_by
            .iter()
            .map(|r| {
                if matches!(r.transfer.mode, Mode::Post { .. }) {
                    "post"
                } else {
                    "void"
                }
            })
            .collect();
        if kinds != expected.into_iter().collect::<Vec<_>>() {
            violations.push(format!(
                "pending transfer {} is {:?} but resolved by {kinds:?}",
                t.id.0, s.state
            ));
        }
        for r in resolved_by {
            if r.seq < s.seq {
                violations.push(format!(
                    "transfer {} resolves {} before it existed",
                    r.transfer.id.0, t.id.0
                ));
            }
        }
    }
    let known: std::collections::HashSet<AccountId> = accounts.iter().map(|a| a.id).collect();
    for s in &transfers {
        for side in [s.transfer.debit, s.transfer.credit] {
            if !known.contains(&side) {
                violations.push(format!(
                    "transfer {} names missing account {}",
                    s.transfer.id.0, side.0
                ));
            }
        }
    }
    if !violations.is_empty() {
        return violations; // balances cannot be recounted
    }
    let ledger = Ledger::restore(LedgerConfig::default(), accounts, transfers);
    if let Err(e) = ledger.audit() {
        violations.push(e.0);
    }
    let t = ledger.totals();
    if t.debits_posted != t.credits_posted || t.debits_pending != t.credits_pending {
        violations.push(format!("unbalanced totals: {t:?}"));
    }
    violations
}
