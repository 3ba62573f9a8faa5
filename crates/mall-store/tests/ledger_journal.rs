//! The ledger over its real SQLite journal: random work committed batch by
//! batch, reloaded at random points, must come back exactly; `verify`
//! passes a good store and catches a tampered one.

use mall_core::rng::Rng;
use mall_core::Timestamp;
use mall_ledger::{
    Account, AccountId, AccountKind, Command, LedgerConfig, Limits, Mode, Transfer, TransferId,
};
use mall_shard::{Journal, StateMachine};
use mall_store::ledger::{verify_ledger, LedgerJournal};
use mall_store::Sync;

const T0: Timestamp = Timestamp(1_700_000_000_000);

#[test]
fn ledger_survives_reloads_exactly_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut journal = LedgerJournal::open(&path, LedgerConfig::default(), Sync::Off).unwrap();
    let mut ledger = journal.load(T0).unwrap();
    let wallet = Limits {
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: false,
    };
    let mut effects = vec![];
    let mut accounts = vec![Account::new(
        AccountId(1),
        AccountKind::ChannelClearing,
        Limits::default(),
    )];
    accounts.extend((2..=20).map(|id| Account::new(AccountId(id), AccountKind::Wallet, wallet)));
    accounts.push(Account::new(
        AccountId(21),
        AccountKind::PlatformEscrow,
        Limits::default(),
    ));
    ledger.apply(Command::CreateAccounts(accounts), T0, &mut effects);
    journal.commit(&effects).unwrap();
    let mut rng = Rng::new(42);
    let mut next = 0u64;
    let mut pendings = Vec::new();
    let mut now = T0;
    for step in 0..300 {
        now = now.plus_ms(rng.below(5_000) as i64);
        let mut effects = vec![];
        ledger.tick(now, &mut effects);
        let mut batch = Vec::new();
        for _ in 0..1 + rng.below(8) {
            next += 1;
            let wallet = AccountId(2 + rng.below(19));
            let t = match rng.below(6) {
                0 | 1 => Transfer {
                    id: TransferId(next),
                    debit: AccountId(1),
                    credit: wallet,
                    amount: 1 + rng.below(10_000),
                    mode: Mode::Single,
                    linked: false,
                    code: 1,
                    user_data: 0,
                },
                2 => {
                    pendings.push((TransferId(next), wallet));
                    Transfer {
                        id: TransferId(next),
                        debit: wallet,
                        credit: AccountId(21),
                        amount: 1 + rng.below(3_000),
                        mode: Mode::Pending { timeout_ms: 20_000 },
                        linked: false,
                        code: 2,
                        user_data: 0,
                    }
                }
                3 if !pendings.is_empty() => {
                    let (p, w) = pendings[rng.below(pendings.len() as u64) as usize];
                    Transfer {
                        id: TransferId(next),
                        debit: w,
                        credit: AccountId(21),
                        amount: 1 + rng.below(100),
                        mode: Mode::Post { pending: p },
                        linked: false,
                        code: 3,
                        user_data: 0,
                    }
                }
                4 if !pendings.is_empty() => {
                    let (p, w) = pendings[rng.below(pendings.len() as u64) as usize];
                    Transfer {
                        id: TransferId(next),
                        debit: w,
                        credit: AccountId(21),
                        amount: 0,
                        mode: Mode::Void { pending: p },
                        linked: false,
                        code: 4,
                        user_data: 0,
                    }
                }
                _ => Transfer {
                    id: TransferId(next),
                    debit: wallet,
                    credit: AccountId(21),
                    amount: 1 + rng.below(2_000),
                    mode: Mode::Single,
                    linked: rng.chance(0.30),
                    code: 5,
                    user_data: 0,
                },
            };
            batch.push(t);
        }
        ledger.apply(Command::CreateTransfers(batch), now, &mut effects);
        ledger.check_invariants();
        journal.commit(&effects).unwrap();
        if step % 37 == 0 {
            journal = LedgerJournal::open(&path, LedgerConfig::default(), Sync::Off).unwrap();
            let reloaded = journal.load(now).unwrap();
            for id in 1..=21 {
                assert_eq!(
                    reloaded.account(AccountId(id)),
                    ledger.account(AccountId(id)),
                    "step {step}: account {id} after reload"
                );
            }
            assert_eq!(reloaded.totals(), ledger.totals());
            ledger = reloaded;
        }
    }
    ledger.audit().unwrap();
    assert!(ledger.totals().debits_posted > 0);
    assert_eq!(verify_ledger(&path).unwrap(), Vec::<String>::new());
    // Tamper: a transfer from an account nobody has; a post of a missing pending.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("INSERT INTO transfers (id, seq, debit, credit, amount, mode, pending_id, linked, code, user_data, created_at_ms) VALUES (999999, 999999, 2, 21, 5, 'post', 888888, 0, 0, 0, 0)", []).unwrap();
    drop(conn);
    // And a posted reservation relabelled voided: its post would move money for a void.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let posted: i64 = conn
        .query_row(
            "SELECT id FROM transfers WHERE state = 'posted' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE transfers SET state = 'voided' WHERE id = ?1",
        [posted],
    )
    .unwrap();
    drop(conn);
    let violations = verify_ledger(&path).unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v.contains("missing pending transfer 888888")),
        "{violations:?}"
    );
    let relabelled =
        format!("pending transfer {posted} is Some(Voided) but resolved by [\"post\"]");
    assert!(
        violations.iter().any(|v| v.contains(&relabelled)),
        "{violations:?}"
    );
    assert!(
        verify_ledger(&dir.path().join("typo.db")).is_err(),
        "a missing ledger is an error, not a clean one"
    );
}
