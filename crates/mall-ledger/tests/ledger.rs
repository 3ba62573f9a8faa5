//! Property tests of the ledger against its reference model: random
//! accounts, transfers, pending/post/void/expiry and linked chains keep
//! every invariant, limits hold, and replays are idempotent.

use mall_core::rng::Rng;
use mall_core::Timestamp;
use mall_ledger::model::Model;
use mall_ledger::*;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn account(id: u64, rng: &mut Rng) -> Account {
    let kind = AccountKind::ALL[rng.below(5) as usize];
    let limits = Limits {
        debits_must_not_exceed_credits: kind == AccountKind::Wallet,
        credits_must_not_exceed_debits: false,
    };
    Account::new(AccountId(id), kind, limits)
}

fn random_transfer(
    rng: &mut Rng,
    next_id: &mut u64,
    known: &[Transfer],
    accounts: u64,
) -> Transfer {
    if !known.is_empty() && rng.chance(0.08) {
        let mut t = rng.pick(known).cloned().unwrap();
        if rng.chance(0.40) {
            t.amount += 1; // same id, other body
        }
        t.linked = false;
        return t;
    }
    *next_id += 1;
    let id = TransferId(*next_id);
    let pendings: Vec<&Transfer> = known
        .iter()
        .filter(|t| matches!(t.mode, Mode::Pending { .. }))
        .collect();
    let (debit, credit) = (
        AccountId(1 + rng.below(accounts)),
        AccountId(1 + rng.below(accounts)),
    );
    let amount = match rng.below(10) {
        0 => 0,
        _ => 1 + rng.below(5_000),
    };
    let mode = match rng.below(10) {
        0..=3 => Mode::Single,
        4..=5 => Mode::Pending {
            timeout_ms: if rng.chance(0.50) {
                0
            } else {
                1 + rng.below(120_000) as i64
            },
        },
        6..=7 if !pendings.is_empty() => {
            let p = rng.pick(&pendings).unwrap();
            let amount = if rng.chance(0.70) {
                1 + rng.below(p.amount.max(1))
            } else {
                p.amount + 1
            };
            return Transfer {
                id,
                debit: p.debit,
                credit: p.credit,
                amount,
                mode: Mode::Post { pending: p.id },
                linked: rng.chance(0.20),
                code: 2,
                user_data: 0,
            };
        }
        8 if !pendings.is_empty() => {
            let p = rng.pick(&pendings).unwrap();
            return Transfer {
                id,
                debit: p.debit,
                credit: p.credit,
                amount: 0,
                mode: Mode::Void { pending: p.id },
                linked: rng.chance(0.20),
                code: 3,
                user_data: 0,
            };
        }
        _ => Mode::Single,
    };
    Transfer {
        id,
        debit,
        credit,
        amount,
        mode,
        linked: rng.chance(0.25),
        code: 1,
        user_data: rng.below(100),
    }
}

fn check_seed(seed: u64) -> std::collections::BTreeSet<String> {
    let mut kinds = std::collections::BTreeSet::new();
    let mut rng = Rng::new(seed);
    let mut ledger = Ledger::new(LedgerConfig::default());
    let mut model = Model::default();
    let accounts = 6;
    let mut now = T0;
    // Accounts, and a funding source with no limit so wallets get credits.
    let mut all: Vec<Account> = (1..=accounts).map(|id| account(id, &mut rng)).collect();
    all[0] = Account::new(
        AccountId(1),
        AccountKind::ChannelClearing,
        Limits::default(),
    );
    let cmd = Command::CreateAccounts(all);
    assert_eq!(
        ledger.apply(cmd.clone(), now, &mut vec![]),
        model.apply(&cmd, now)
    );
    let mut known: Vec<Transfer> = Vec::new();
    let mut next_id = 0;
    for step in 0..150 {
        now = now.plus_ms(rng.below(30_000) as i64);
        let mut effects = vec![];
        ledger.tick(now, &mut effects);
        model.tick(now);
        let n = 1 + rng.below(6) as usize;
        let transfers: Vec<Transfer> = (0..n)
            .map(|_| random_transfer(&mut rng, &mut next_id, &known, accounts))
            .collect();
        let cmd = Command::CreateTransfers(transfers.clone());
        let got = ledger.apply(cmd.clone(), now, &mut effects);
        let want = model.apply(&cmd, now);
        assert_eq!(got, want, "seed {seed} step {step}: {transfers:?}");
        if let Reply::Transfers(rs) = &got {
            for (t, r) in transfers.iter().zip(rs) {
                kinds.insert(match r {
                    Ok(o) => format!("{o:?}"),
                    Err(e) => e.code().to_string(),
                });
                if r == &Ok(Outcome::Created) {
                    known.push(t.clone());
                }
            }
        }
        ledger.check_totals();
        ledger
            .audit()
            .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
        for id in 1..=accounts {
            let a = ledger.account(AccountId(id)).unwrap();
            assert_eq!(
                (
                    a.debits_pending,
                    a.debits_posted,
                    a.credits_pending,
                    a.credits_posted
                ),
                model.balances(AccountId(id)),
                "seed {seed} step {step} account {id}"
            );
            if a.kind == AccountKind::Wallet {
                assert!(a.balance() >= 0, "a wallet went below zero");
            }
        }
    }
    kinds
}

#[test]
fn property_random_transfers_match_the_model_and_keep_every_invariant() {
    let kinds: std::collections::BTreeSet<_> = mall_core::seeds::for_each_seed(
        "-p mall-ledger --test ledger property_random_transfers",
        0,
        150,
        check_seed,
    )
    .into_iter()
    .flatten()
    .collect();
    for kind in [
        "Created",
        "Replayed",
        "amount_zero",
        "exceeds_credits",
        "exists_with_different_fields",
        "linked_event_failed",
        "linked_event_chain_open",
        "pending_transfer_already_posted",
        "exceeds_pending_transfer_amount",
        "accounts_must_be_different",
    ] {
        assert!(
            kinds.contains(kind),
            "the workload never produced {kind}: {kinds:?}"
        );
    }
}

fn wallet_world() -> (Ledger, Vec<Effect>) {
    let mut l = Ledger::new(LedgerConfig::default());
    let mut e = vec![];
    let wallet = Limits {
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: false,
    };
    l.apply(
        Command::CreateAccounts(vec![
            Account::new(
                AccountId(1),
                AccountKind::ChannelClearing,
                Limits::default(),
            ),
            Account::new(AccountId(2), AccountKind::Wallet, wallet),
            Account::new(AccountId(3), AccountKind::PlatformEscrow, Limits::default()),
        ]),
        T0,
        &mut e,
    );
    (l, e)
}

fn t(id: u64, debit: u64, credit: u64, amount: u64, mode: Mode, linked: bool) -> Transfer {
    Transfer {
        id: TransferId(id),
        debit: AccountId(debit),
        credit: AccountId(credit),
        amount,
        mode,
        linked,
        code: 1,
        user_data: 0,
    }
}

#[test]
fn a_wallet_never_goes_below_zero_and_chains_are_all_or_none() {
    let (mut l, _) = wallet_world();
    let mut e = vec![];
    // Top up 100, then a chain that would overdraw in its second leg.
    l.apply(
        Command::CreateTransfers(vec![t(1, 1, 2, 100, Mode::Single, false)]),
        T0,
        &mut e,
    );
    let r = l.apply(
        Command::CreateTransfers(vec![
            t(2, 2, 3, 60, Mode::Single, true),
            t(3, 2, 3, 60, Mode::Single, false),
        ]),
        T0,
        &mut e,
    );
    assert_eq!(
        r,
        Reply::Transfers(vec![
            Err(Refusal::LinkedEventFailed),
            Err(Refusal::ExceedsCredits)
        ])
    );
    assert_eq!(
        l.account(AccountId(2)).unwrap().balance(),
        100,
        "the chain left no trace"
    );
    assert!(l.transfer(TransferId(2)).is_none());
    l.audit().unwrap();
}

#[test]
fn two_phase_post_partially_void_and_expire() {
    let (mut l, _) = wallet_world();
    let mut e = vec![];
    l.apply(
        Command::CreateTransfers(vec![t(1, 1, 2, 100, Mode::Single, false)]),
        T0,
        &mut e,
    );
    l.apply(
        Command::CreateTransfers(vec![t(2, 2, 3, 80, Mode::Pending { timeout_ms: 0 }, false)]),
        T0,
        &mut e,
    );
    // 80 is reserved: only 20 can move now.
    let r = l.apply(
        Command::CreateTransfers(vec![t(3, 2, 3, 30, Mode::Single, false)]),
        T0,
        &mut e,
    );
    assert_eq!(r, Reply::Transfers(vec![Err(Refusal::ExceedsCredits)]));
    // Post 50 of the 80: the other 30 come back.
    let r = l.apply(
        Command::CreateTransfers(vec![t(
            4,
            2,
            3,
            50,
            Mode::Post {
                pending: TransferId(2),
            },
            false,
        )]),
        T0,
        &mut e,
    );
    assert_eq!(r, Reply::Transfers(vec![Ok(Outcome::Created)]));
    let w = l.account(AccountId(2)).unwrap();
    assert_eq!(
        (w.debits_pending, w.debits_posted, w.balance()),
        (0, 50, 50)
    );
    let r = l.apply(
        Command::CreateTransfers(vec![t(
            5,
            2,
            3,
            0,
            Mode::Void {
                pending: TransferId(2),
            },
            false,
        )]),
        T0,
        &mut e,
    );
    assert_eq!(
        r,
        Reply::Transfers(vec![Err(Refusal::PendingAlreadyPosted)])
    );
    // A pending transfer with a timeout expires and releases its amount.
    l.apply(
        Command::CreateTransfers(vec![t(
            6,
            2,
            3,
            40,
            Mode::Pending { timeout_ms: 1_000 },
            false,
        )]),
        T0,
        &mut e,
    );
    assert_eq!(l.account(AccountId(2)).unwrap().debits_pending, 40);
    let mut effects = vec![];
    l.tick(T0.plus_ms(1_000), &mut effects);
    assert!(effects.contains(&Effect::SetPendingState {
        id: TransferId(6),
        state: PendingState::Expired
    }));
    assert_eq!(l.account(AccountId(2)).unwrap().debits_pending, 0);
    let r = l.apply(
        Command::CreateTransfers(vec![t(
            7,
            2,
            3,
            40,
            Mode::Post {
                pending: TransferId(6),
            },
            false,
        )]),
        T0,
        &mut e,
    );
    assert_eq!(r, Reply::Transfers(vec![Err(Refusal::PendingExpired)]));
    l.audit().unwrap();
}

#[test]
fn replays_answer_like_the_first_time_and_changed_bodies_are_refused() {
    let (mut l, _) = wallet_world();
    let mut e = vec![];
    let top_up = t(1, 1, 2, 100, Mode::Single, false);
    assert_eq!(
        l.apply(Command::CreateTransfers(vec![top_up.clone()]), T0, &mut e),
        Reply::Transfers(vec![Ok(Outcome::Created)])
    );
    let mut e2 = vec![];
    assert_eq!(
        l.apply(Command::CreateTransfers(vec![top_up.clone()]), T0, &mut e2),
        Reply::Transfers(vec![Ok(Outcome::Replayed)])
    );
    assert!(e2.is_empty(), "a replay writes nothing");
    let mut other = top_up;
    other.amount = 99;
    assert_eq!(
        l.apply(Command::CreateTransfers(vec![other]), T0, &mut e2),
        Reply::Transfers(vec![Err(Refusal::ExistsWithDifferentFields)])
    );
    assert_eq!(l.account(AccountId(2)).unwrap().balance(), 100);
}

#[test]
fn an_account_cannot_limit_both_sides() {
    let mut l = Ledger::new(LedgerConfig::default());
    let both = Limits {
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: true,
    };
    let r = l.apply(
        Command::CreateAccounts(vec![Account::new(AccountId(9), AccountKind::Wallet, both)]),
        T0,
        &mut vec![],
    );
    assert_eq!(
        r,
        Reply::Accounts(vec![Err(Refusal::FlagsMutuallyExclusive)])
    );
    assert!(l.account(AccountId(9)).is_none());
}
