//! The store conformance suite: one body per test, run against every
//! backend (SQLite files, and a real PostgreSQL). Whatever the engine, the
//! HTTP layer and the payment service expect of a store is here.
//!
//! Its own runner (`harness = false`): the PostgreSQL cluster is one for the
//! whole binary (a database per test) and is stopped at the end, which a
//! `static` would never be. `MALL_TEST_PG` (a connection string to a
//! server whose user may create databases, as `./scripts/test.sh` starts
//! one) is used when set; otherwise a throwaway cluster is started here.
//! `cargo test -p mall-engine --test conformance -- ledger` runs the tests
//! whose name contains `ledger`. Without PostgreSQL every PostgreSQL run
//! fails, loudly.

use mall_core::rng::Rng;
use mall_core::{
    Category, Fen, Item, MerchantId, OrderId, OrderStatus, PaymentMethod, Quantity, Role, Sku,
    Timestamp, UserId,
};
use mall_engine::{NewUser, Store, StoreError, StoredResponse};
use mall_inventory::model::Model;
use mall_inventory::sim::Workload;
use mall_inventory::{Board, Command, Inventory, InventoryConfig, Reply, Reserve};
use mall_ledger::{
    Account, AccountId, AccountKind, LedgerConfig, Limits, Mode, Transfer, TransferId,
};
use mall_shard::{Journal, StateMachine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const HOLD_MS: i64 = 10 * 60_000;

/// Where a test's store lives.
enum Backend<'a> {
    Sqlite(tempfile::TempDir),
    Postgres {
        scratch: mall_postgres::Scratch,
        db: String,
        base: &'a str,
    },
}

/// What each test gets: its own empty store, opened as often as it likes
/// (each open is what a restart does).
struct Harness<'a> {
    backend: Backend<'a>,
}

/// Where raw SQL goes in [`Harness::tamper`].
enum Target {
    Shard(usize),
    Ledger,
}

impl<'a> Harness<'a> {
    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// An empty store: SQLite files in a temporary directory, or a
    /// scratch database `db` on the PostgreSQL at `base`.
    fn new(postgres: Option<(&'a str, String)>) -> Harness<'a> {
        let backend = match postgres {
            None => Backend::Sqlite(tempfile::tempdir().unwrap()),
            Some((base, db)) => Backend::Postgres {
                scratch: mall_postgres::Scratch::create(&[base.to_string()], &db)
                    .unwrap_or_else(|e| panic!("creating database {db}: {e}")),
                db,
                base,
            },
        };
        Harness { backend }
    }

    /// Another empty store of the same backend (one per simulated seed).
    fn fresh(&self, n: u64) -> Harness<'a> {
        Harness::new(match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres { db, base, .. } => Some((*base, format!("{db}_{n}"))),
        })
    }

    /// Opens the store (a new open each call, as after a restart).
    fn open(&self, shards: usize) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite(dir) => Arc::new(
                mall_sqlite::DataDir::open(dir.path(), Some(shards))
                    .expect("open sqlite")
                    .unsynced(),
            ),
            Backend::Postgres { scratch, .. } => Arc::new(
                mall_postgres::PgStore::open(scratch.urls(), Some(shards), 4)
                    .expect("open postgres"),
            ),
        }
    }

    /// Runs SQL behind the store's back (tampering, for the audits to catch).
    fn tamper(&self, target: Target, sql: &str) {
        match &self.backend {
            Backend::Sqlite(dir) => {
                let file = match target {
                    Target::Shard(n) => format!("shard-{n:03}.db"),
                    Target::Ledger => "ledger.db".into(),
                };
                let conn = rusqlite::Connection::open(dir.path().join(file)).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Backend::Postgres { scratch, .. } => {
                let mut client =
                    postgres::Client::connect(&scratch.urls()[0], postgres::NoTls).unwrap();
                client.batch_execute(sql).unwrap();
            }
        }
    }

    /// Cuts every connection the store has open (PostgreSQL only: a file
    /// has no connection to cut). True if it did.
    fn cut_connections(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres { db, base, .. } => {
                let mut client = postgres::Client::connect(base, postgres::NoTls).unwrap();
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                        &[db],
                    )
                    .unwrap();
                true
            }
        }
    }
}

type Test = fn(&Harness);

fn main() {
    let tests: &[(&str, Test)] = &[
        ("shard_journal_simulation", shard_journal_simulation),
        (
            "audit_judges_each_order_by_its_limit",
            audit_judges_each_order_by_its_limit,
        ),
        (
            "ledger_reloads_exactly_and_verifies",
            ledger_reloads_exactly_and_verifies,
        ),
        ("accounts_and_sessions", accounts_and_sessions),
        ("stored_responses", stored_responses),
        ("order_readers", order_readers),
        ("shopper_lists", shopper_lists),
        ("promotions", promotions),
        ("checkouts", checkouts),
        ("audit_counts_claims", audit_counts_claims),
        ("presales", presales),
    ];
    let (chosen, mut runner) = mall_postgres::server::Runner::choose(tests);
    if chosen.is_empty() {
        println!("running 0 tests");
        return;
    }
    let (server, base) = match std::env::var("MALL_TEST_PG") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let server = mall_postgres::server::PostgresServer::start().unwrap_or_else(|e| {
                panic!("the PostgreSQL runs need PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql): {e}")
            });
            let url = server.url();
            (Some(server), url)
        }
    };
    println!("running {} tests on sqlite and postgres", chosen.len());
    for (n, (name, test)) in chosen.iter().enumerate() {
        for pg in [false, true] {
            let harness = Harness::new(pg.then(|| {
                (
                    base.as_str(),
                    format!("conformance_{}_{n}", std::process::id()),
                )
            }));
            runner.run(&format!("{name} [{}]", harness.name()), || test(&harness));
        }
    }
    drop(server); // before exit, which runs no destructor
    runner.finish();
}

fn shard_journal(store: &Arc<dyn Store>, board: &Arc<Board>) -> mall_engine::ShardJournalBox {
    let config = InventoryConfig {
        hold_timeout_ms: HOLD_MS,
        ..Default::default()
    };
    store
        .shard_journal(0, config, board.clone())
        .expect("open journal")
}

/// Compares everything the engine holds with the model.
fn same_state(inv: &Inventory, model: &Model) -> Result<(), String> {
    inv.audit().map_err(|e| e.to_string())?;
    let skus: Vec<_> = inv.skus().collect();
    if skus.len() != model.items.len() {
        return Err(format!(
            "item count {} != {}",
            skus.len(),
            model.items.len()
        ));
    }
    for sku in skus {
        if inv.item(sku) != model.items.get(&sku) {
            return Err(format!("item {sku}"));
        }
        if inv.counters(sku) != Some(model.counters(sku)) {
            return Err(format!("counters of {sku}"));
        }
    }
    let mut active: Vec<_> = inv.active_orders().cloned().collect();
    active.sort_by_key(|o| o.id);
    let want: Vec<_> = model
        .orders
        .values()
        .filter(|o| o.status.is_active())
        .cloned()
        .collect();
    if active != want {
        return Err("active orders differ".into());
    }
    for (id, coupon) in &model.coupons {
        if inv.coupon(*id) != Some(coupon) {
            return Err(format!("coupon {id}"));
        }
        if inv.coupon_counters(*id) != Some(model.coupon_counters(*id)) {
            return Err(format!("counters of coupon {id}"));
        }
    }
    let mut claims: Vec<_> = inv.claims().cloned().collect();
    claims.sort_by_key(|c| c.id);
    let mut want = model.claims.clone();
    want.sort_by_key(|c| c.id);
    if claims != want {
        return Err("claims differ".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The commit fails and nothing was written.
    FailBefore,
    /// The commit was written but the caller hears a failure (ambiguous outcome).
    FailAfter,
    /// The process dies; the batch may or may not have reached the store.
    Crash {
        written: bool,
    },
    /// The store's connections are cut, before the commit or while it runs
    /// (PostgreSQL): the outcome is whatever the store says it is.
    Cut {
        during: bool,
    },
}

/// One inventory shard over the backend's real journal, failing, crashing
/// and (PostgreSQL) losing its connections at random points, checked reply
/// by reply against the reference model. Replay a seed with `MALL_SEED`.
fn shard_journal_simulation(h: &Harness) {
    let (seeds, steps) = if h.is_postgres() { (6, 120) } else { (30, 250) };
    CUT_FAILURES.store(0, Ordering::Relaxed);
    mall_core::seeds::for_each_seed(
        "-p mall-engine --test conformance -- simulation",
        0x5eed,
        seeds,
        |seed| simulate(h, seed, steps),
    );
    if h.is_postgres() && std::env::var_os(mall_core::seeds::SEED_VAR).is_none() {
        let failed = CUT_FAILURES.load(Ordering::Relaxed);
        println!("  {failed} commit(s) failed by a cut connection, each reloaded and checked");
        assert!(
            failed > 0,
            "no cut ever failed a commit: the fault is not exercised"
        );
    }
}

/// Commits a cut connection made fail (the simulation must see some).
static CUT_FAILURES: AtomicUsize = AtomicUsize::new(0);

fn simulate(h: &Harness, seed: u64, steps: usize) {
    let h = &h.fresh(seed);
    let board = Arc::new(Board::default());
    let mut store = h.open(1);
    let mut journal = shard_journal(&store, &board);
    let mut inv = journal.load(T0).expect("load empty");
    let mut model = Model::new(0, HOLD_MS);
    let mut work = Workload::new(seed, 0, 1);
    let mut now = T0;
    for step in 0..steps {
        now = now.plus_ms(work.rng.below(90_000) as i64);
        let before = model.clone();
        let mut effects = vec![];
        inv.tick(now, &mut effects);
        model.tick(now);
        for _ in 0..1 + work.rng.below(12) {
            let cmd = work.command(now);
            let got = inv.apply(cmd.clone(), now, &mut effects);
            let want = model.apply(&cmd, now);
            assert_eq!(got, want, "seed {seed} step {step}: {cmd:?}");
            work.observe(&got);
        }
        inv.check_touched();
        let fault = match work.rng.below(100) {
            0..=5 => Fault::FailBefore,
            6..=9 => Fault::FailAfter,
            10..=14 => Fault::Crash {
                written: work.rng.chance(0.50),
            },
            15..=19 if h.is_postgres() => Fault::Cut {
                during: work.rng.chance(0.50),
            },
            _ => Fault::None,
        };
        // Some(true): the batch is stored; Some(false): it is not; None: the
        // store cannot say (a connection cut mid-commit): either may be.
        let written = match fault {
            Fault::None | Fault::FailAfter | Fault::Crash { written: true } => {
                journal.commit(&effects).expect("commit");
                Some(true)
            }
            Fault::FailBefore | Fault::Crash { written: false } => Some(false),
            Fault::Cut { during: false } => {
                // The pool may notice and connect anew, or fail the commit.
                assert!(h.cut_connections());
                let r = journal.commit(&effects);
                if r.is_err() {
                    CUT_FAILURES.fetch_add(1, Ordering::Relaxed);
                }
                r.ok().map(|()| true)
            }
            Fault::Cut { during: true } => {
                let cutter = {
                    let delay = work.rng.below(3_000);
                    let h: &Harness = h;
                    std::thread::scope(|s| {
                        let t = s.spawn(move || {
                            std::thread::sleep(std::time::Duration::from_micros(delay));
                            h.cut_connections()
                        });
                        let r = journal.commit(&effects);
                        t.join().unwrap();
                        r
                    })
                };
                match cutter {
                    Ok(()) => Some(true),
                    Err(_) => {
                        CUT_FAILURES.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }
        };
        let after = model.clone();
        if written == Some(false) {
            model = before.clone(); // nothing of the batch survived
        }
        match fault {
            Fault::None => {}
            Fault::Crash { .. } => {
                drop(inv);
                drop(journal);
                store = h.open(1);
                journal = shard_journal(&store, &board);
                inv = journal.load(now).expect("restart");
            }
            _ => {
                // What the runtime does on a failed commit: rebuild from the
                // store, retrying while it is away (a cut pool may hand out
                // a connection that died with the others once).
                inv = (0..5).find_map(|_| journal.load(now).ok()).expect("reload");
            }
        }
        if written.is_none() {
            // Ambiguous: the store holds the batch or it does not, never half.
            model = if same_state(&inv, &after).is_ok() {
                after
            } else {
                before
            };
        }
        if fault != Fault::None || step % 25 == 0 {
            if let Err(e) = same_state(&inv, &model) {
                panic!("seed {seed} step {step} after {fault:?}: {e}");
            }
        }
        // Replies after a reload must still match: the idempotency keys of
        // committed orders survive, so a retry finds its order.
        if fault != Fault::None {
            if let Some(r) = work.keyed.last().cloned() {
                let cmd = Command::Reserve(r);
                let mut effects = vec![];
                let got = inv.apply(cmd.clone(), now, &mut effects);
                let want = model.apply(&cmd, now);
                assert_eq!(got, want, "seed {seed} step {step}: retry after {fault:?}");
                if !matches!(got, Reply::Refused(_)) {
                    journal.commit(&effects).expect("commit retry");
                }
                inv.check_touched();
            }
        }
    }
    if let Err(e) = same_state(&inv, &model) {
        panic!("seed {seed} at the end: {e}");
    }
}

fn item(sku: u64, stock: u32, limit: u32) -> Item {
    Item {
        sku: Sku(sku),
        merchant: MerchantId(1),
        title: "tea".into(),
        category: Category::Fresh,
        price_fen: Fen(500),
        stock_total: stock,
        per_user_limit: limit,
        opens_at: T0,
        closes_at: T0.plus_ms(3_600_000),
        shelf_life_hours: Some(48),
        presale: None,
        // On sale at 4.00 for the first half hour; never below 1.00.
        sale_prices: vec![mall_core::SalePrice {
            opens_at: T0,
            closes_at: T0.plus_ms(1_800_000),
            price_fen: Fen(400),
        }],
        floor_price_fen: Fen(100),
    }
}

fn reserve(user: u64, sku: u64, quantity: u32) -> Command {
    Command::Reserve(Reserve {
        user: UserId(user),
        sku: Sku(sku),
        quantity: Quantity::new(quantity).unwrap(),
        payment: PaymentMethod::Cod,
        address: "1 Road".into(),
        idempotency_key: None,
        fingerprint: 1,
        early_access: false,
        expected_total_fen: None,
        discount_fen: mall_core::Fen(0),
    })
}

/// `mall check`'s per-user rule judges each order by the limit it met:
/// lowering a limit later is no violation; exceeding one is.
fn audit_judges_each_order_by_its_limit(h: &Harness) {
    let store = h.open(1);
    let mut journal = shard_journal(&store, &Arc::new(Board::default()));
    let mut inv = journal.load(T0).unwrap();
    let mut effects = vec![];
    inv.apply(
        Command::PutItem {
            item: item(1, 10, 3),
            expected: None,
        },
        T0,
        &mut effects,
    );
    assert!(matches!(
        inv.apply(reserve(7, 1, 3), T0, &mut effects),
        Reply::Order { .. }
    ));
    let lowered = inv.apply(
        Command::PutItem {
            item: item(1, 10, 1),
            expected: Some(item(1, 10, 3)),
        },
        T0,
        &mut effects,
    );
    assert!(matches!(lowered, Reply::Item(_)));
    journal.commit(&effects).unwrap();
    let report = mall_engine::audit(store.as_ref()).unwrap();
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!((report.items, report.orders, report.units_sold), (1, 1, 3));
    // An order that broke the limit it was made under is a violation.
    h.tamper(Target::Shard(0), "UPDATE orders SET per_user_limit = 2");
    let report = mall_engine::audit(store.as_ref()).unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("over the per-user limit 2")),
        "{:?}",
        report.violations
    );
    // So is an oversold SKU.
    h.tamper(
        Target::Shard(0),
        "UPDATE orders SET per_user_limit = 3; UPDATE items SET stock_total = 2",
    );
    let report = mall_engine::audit(store.as_ref()).unwrap();
    assert!(
        report.violations.iter().any(|v| v.contains("oversold")),
        "{:?}",
        report.violations
    );
}

/// The ledger over its real journal: random work committed batch by
/// batch, reloaded (through a new open) at random points, must come back
/// exactly; `verify` passes a good store and catches a tampered one.
fn ledger_reloads_exactly_and_verifies(h: &Harness) {
    let mut store = h.open(1);
    let mut journal = store.ledger_journal(LedgerConfig::default()).unwrap();
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
    ledger.apply(
        mall_ledger::Command::CreateAccounts(accounts),
        T0,
        &mut effects,
    );
    journal.commit(&effects).unwrap();
    let mut rng = Rng::new(42);
    let mut next = 0u64;
    let mut pendings = Vec::new();
    let mut now = T0;
    let steps = if h.is_postgres() { 120 } else { 300 };
    for step in 0..steps {
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
        ledger.apply(
            mall_ledger::Command::CreateTransfers(batch),
            now,
            &mut effects,
        );
        ledger.check_invariants();
        journal.commit(&effects).unwrap();
        if step % 37 == 0 {
            drop(journal);
            store = h.open(1);
            journal = store.ledger_journal(LedgerConfig::default()).unwrap();
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
    let verify = |store: &Arc<dyn Store>| {
        let (accounts, transfers) = store.read_ledger().unwrap();
        mall_engine::verify_ledger(accounts, transfers)
    };
    assert_eq!(verify(&store), Vec::<String>::new());
    // The reader sees what the ledger's record holds, in order.
    let statement = store.ledger_reader().unwrap().all_transfers().unwrap();
    assert_eq!(statement, store.read_ledger().unwrap().1);
    assert!(statement.windows(2).all(|w| w[0].seq < w[1].seq));
    // Tamper: a post of a missing pending transfer; and a posted
    // reservation relabelled voided (its post would move money for a void).
    h.tamper(Target::Ledger, "INSERT INTO transfers (id, seq, debit, credit, amount, mode, pending_id, linked, code, user_data, created_at_ms) VALUES (999999, 999999, 2, 21, 5, 'post', 888888, FALSE, 0, 0, 0)");
    let posted = statement
        .iter()
        .find(|s| s.state == Some(mall_ledger::PendingState::Posted))
        .expect("a posted reservation")
        .transfer
        .id
        .0;
    h.tamper(
        Target::Ledger,
        &format!("UPDATE transfers SET state = 'voided' WHERE id = {posted}"),
    );
    let violations = verify(&store);
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
}

fn new_user(name: &str, session: Option<([u8; 32], Timestamp)>) -> NewUser {
    NewUser {
        username: name.into(),
        role: Role::Shopper,
        merchant: None,
        password_hash: Some("$argon2id$hash".into()),
        session,
    }
}

fn accounts_and_sessions(h: &Harness) {
    let store = h.open(1);
    let accounts = store.accounts().unwrap();
    assert_eq!(accounts.meta_get("k").unwrap(), None);
    accounts.meta_set("k", "1").unwrap();
    accounts.meta_set("k", "2").unwrap();
    assert_eq!(accounts.meta_get("k").unwrap().as_deref(), Some("2"));

    let m = accounts.create_merchant("tea house", T0).unwrap();
    assert!(matches!(
        accounts.create_merchant("tea house", T0),
        Err(StoreError::MerchantNameTaken)
    ));
    assert_eq!(accounts.merchants().unwrap().len(), 1);
    assert_eq!(accounts.merchants().unwrap()[0].id, m);

    let ids = accounts
        .create_users(
            &[
                new_user("ann", Some(([1; 32], T0.plus_ms(1_000)))),
                new_user("bob", Some(([2; 32], T0.plus_ms(60_000)))),
            ],
            T0,
        )
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    // All or none: one taken name, and nobody of the batch is made.
    assert!(matches!(
        accounts.create_users(&[new_user("cat", None), new_user("ann", None)], T0),
        Err(StoreError::UsernameTaken)
    ));
    assert_eq!(accounts.user_by_name("cat").unwrap(), None);
    let ann = accounts.user_by_name("ann").unwrap().unwrap();
    assert_eq!((ann.id, ann.role), (ids[0], Role::Shopper));
    assert_eq!(
        accounts.user_by_id(ids[1]).unwrap().unwrap().username,
        "bob"
    );
    assert_eq!(accounts.user_by_id(UserId(999_999)).unwrap(), None);
    accounts.set_password_hash(ids[0], "$argon2id$new").unwrap();
    assert_eq!(
        accounts
            .user_by_id(ids[0])
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$new")
    );
    let merchant_user = NewUser {
        username: "shopkeeper".into(),
        role: Role::Merchant,
        merchant: Some(m),
        password_hash: None,
        session: None,
    };
    let keeper = accounts.create_users(&[merchant_user], T0).unwrap()[0];
    assert_eq!(
        accounts.user_by_id(keeper).unwrap().unwrap().merchant,
        Some(m)
    );

    // Sessions: expired ones are gone from the live list (and the store).
    accounts
        .insert_session(&[3; 32], ids[0], T0.plus_ms(120_000), T0)
        .unwrap();
    let live = accounts.live_sessions(T0.plus_ms(2_000)).unwrap();
    let mut hashes: Vec<_> = live.iter().map(|s| s.token_hash[0]).collect();
    hashes.sort();
    assert_eq!(hashes, vec![2, 3]);
    assert!(accounts.delete_session(&[2; 32]).unwrap());
    assert!(!accounts.delete_session(&[2; 32]).unwrap());
    assert_eq!(accounts.delete_sessions_of(ids[0]).unwrap(), 1);
    assert!(accounts.live_sessions(T0).unwrap().is_empty());
    // A reopen (a restart) sees the same accounts.
    drop(accounts);
    let again = h.open(1).accounts().unwrap();
    assert_eq!(again.user_by_name("bob").unwrap().unwrap().id, ids[1]);
    assert_eq!(again.meta_get("k").unwrap().as_deref(), Some("2"));
}

fn stored_responses(h: &Harness) {
    let accounts = h.open(1).accounts().unwrap();
    let user = UserId(5);
    let open = StoredResponse {
        fingerprint: 9,
        status: 202,
        body: "{\"status\":\"pending\"}".into(),
    };
    assert_eq!(accounts.stored_response(user, "k1").unwrap(), None);
    accounts.store_response(user, "k1", &open, T0).unwrap();
    assert_eq!(
        accounts.stored_response(user, "k1").unwrap(),
        Some(open.clone())
    );
    // A final answer replaces a stored 202 of the same request...
    let paid = StoredResponse {
        fingerprint: 9,
        status: 200,
        body: "{\"status\":\"paid\"}".into(),
    };
    accounts.store_response(user, "k1", &paid, T0).unwrap();
    assert_eq!(
        accounts.stored_response(user, "k1").unwrap(),
        Some(paid.clone())
    );
    // ...but a final answer is never replaced, nor by another request's.
    let other = StoredResponse {
        fingerprint: 9,
        status: 409,
        body: "{}".into(),
    };
    accounts.store_response(user, "k1", &other, T0).unwrap();
    assert_eq!(accounts.stored_response(user, "k1").unwrap(), Some(paid));
    accounts.store_response(user, "k2", &open, T0).unwrap();
    let foreign = StoredResponse {
        fingerprint: 10,
        ..other
    };
    accounts.store_response(user, "k2", &foreign, T0).unwrap();
    assert_eq!(accounts.stored_response(user, "k2").unwrap(), Some(open));
    // Keys are per user.
    assert_eq!(accounts.stored_response(UserId(6), "k1").unwrap(), None);
    // Pruning forgets what is older than the horizon, only that.
    accounts
        .store_response(user, "late", &foreign, T0.plus_ms(10))
        .unwrap();
    assert_eq!(accounts.prune_responses(T0.plus_ms(5)).unwrap(), 2);
    assert_eq!(accounts.stored_response(user, "k1").unwrap(), None);
    assert!(accounts.stored_response(user, "late").unwrap().is_some());
}

/// The API's reads of committed orders: by id, and a user's newest first,
/// page by page.
fn order_readers(h: &Harness) {
    let store = h.open(1);
    let mut journal = shard_journal(&store, &Arc::new(Board::default()));
    let mut inv = journal.load(T0).unwrap();
    let mut effects = vec![];
    inv.apply(
        Command::PutItem {
            item: item(1, 100, 100),
            expected: None,
        },
        T0,
        &mut effects,
    );
    let mut mine = Vec::new();
    for n in 0..7 {
        let at = T0.plus_ms(n);
        match inv.apply(reserve(if n == 3 { 8 } else { 7 }, 1, 1), at, &mut effects) {
            Reply::Order { order, .. } if n != 3 => mine.push(order.id),
            Reply::Order { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    journal.commit(&effects).unwrap();
    let reader = store.order_reader(0).unwrap();
    let first = reader.order(mine[0]).unwrap().unwrap();
    assert_eq!(
        (first.user, first.sku, first.quantity.get()),
        (UserId(7), Sku(1), 1)
    );
    // Bought in the sale window: the sale price paid, the list price kept.
    assert_eq!(
        (first.list_price_fen, first.unit_price_fen, first.amount_fen),
        (Fen(500), Fen(400), Fen(400))
    );
    // The item's windows and floor come back as they were written.
    let (items, _) = {
        let again = journal.load(T0).unwrap();
        (again.item(Sku(1)).cloned(), ())
    };
    assert_eq!(items, Some(item(1, 100, 100)));
    assert_eq!(reader.order(OrderId::new(0, 999)).unwrap(), None);
    let page = reader.orders_of_user(UserId(7), None, 4).unwrap();
    let ids: Vec<_> = page.iter().map(|o| o.id).collect();
    assert_eq!(ids, mine.iter().rev().take(4).copied().collect::<Vec<_>>());
    let last = page.last().unwrap();
    let rest = reader
        .orders_of_user(UserId(7), Some((last.created_at, last.id)), 4)
        .unwrap();
    let ids: Vec<_> = rest.iter().map(|o| o.id).collect();
    assert_eq!(ids, mine.iter().rev().skip(4).copied().collect::<Vec<_>>());
    assert_eq!(reader.orders_of_user(UserId(8), None, 10).unwrap().len(), 1);
}

/// Favourites and carts: bounded per shopper, changes applied in order in
/// one transaction, favourite counts moved with them, all kept across a
/// reopen.
fn shopper_lists(h: &Harness) {
    use mall_engine::{ListChange, ListOutcome, ShopperList};
    let change = |list, user, sku, quantity| ListChange {
        list,
        user: UserId(user),
        sku: Sku(sku),
        quantity,
        lines_max: 2,
    };
    let (fav, cart) = (ShopperList::Favorites, ShopperList::Cart);
    {
        let store = h.open(1);
        let accounts = store.accounts().unwrap();
        let outcomes = accounts
            .change_lists(
                &[
                    change(fav, 7, 1, 1),
                    change(fav, 7, 1, 1), // again: no change
                    change(fav, 7, 2, 1),
                    change(fav, 7, 3, 1), // a third line: full
                    change(fav, 8, 1, 1),
                    change(cart, 7, 5, 2), // the cart is its own list
                    change(cart, 7, 5, 4),
                    change(cart, 7, 6, 1),
                    change(cart, 7, 9, 1), // full
                    change(cart, 7, 6, 0), // out
                ],
                T0,
            )
            .unwrap();
        use ListOutcome::{Before, Full};
        assert_eq!(
            outcomes,
            vec![
                Before(0),
                Before(1),
                Before(0),
                Full,
                Before(0),
                Before(0),
                Before(2),
                Before(0),
                Full,
                Before(1)
            ]
        );
        // Un-favouriting moves the count back; un-favouriting what was not
        // favoured moves nothing.
        let outcomes = accounts
            .change_lists(&[change(fav, 8, 1, 0), change(fav, 8, 1, 0)], T0)
            .unwrap();
        assert_eq!(outcomes, vec![Before(1), Before(0)]);
    }
    let store = h.open(1);
    let accounts = store.accounts().unwrap();
    assert_eq!(
        accounts.list_of(fav, UserId(7)).unwrap(),
        vec![(Sku(1), 1), (Sku(2), 1)]
    );
    assert_eq!(
        accounts.list_of(cart, UserId(7)).unwrap(),
        vec![(Sku(5), 4)]
    );
    assert_eq!(accounts.list_of(fav, UserId(8)).unwrap(), vec![]);
    let mut counts = accounts.favorite_counts().unwrap();
    counts.sort();
    assert_eq!(counts, vec![(Sku(1), 1), (Sku(2), 1)]);
}

/// Promotions are kept with their funder, offer and window; ending one
/// takes it out of what runs from then on; all of it across a reopen.
fn promotions(h: &Harness) {
    use mall_engine::PromotionRow;
    let row = |merchant: Option<u64>, spec: &str, ends: i64| PromotionRow {
        id: 0,
        merchant: merchant.map(MerchantId),
        spec: spec.into(),
        starts_at: T0,
        ends_at: T0.plus_ms(ends),
        quantity: None,
        used: 0,
    };
    let (first, second) = {
        let store = h.open(1);
        let accounts = store.accounts().unwrap();
        let first = accounts
            .create_promotion(&row(Some(3), "{\"a\":1}", 60_000))
            .unwrap();
        let second = accounts
            .create_promotion(&row(None, "{\"b\":2}", 120_000))
            .unwrap();
        assert_ne!(first, second);
        (first, second)
    };
    let store = h.open(1);
    let accounts = store.accounts().unwrap();
    let all = accounts.promotions(T0).unwrap();
    assert_eq!(
        all,
        vec![
            PromotionRow {
                id: first,
                ..row(Some(3), "{\"a\":1}", 60_000)
            },
            PromotionRow {
                id: second,
                ..row(None, "{\"b\":2}", 120_000)
            },
        ]
    );
    // Over at its end.
    assert_eq!(accounts.promotions(T0.plus_ms(60_000)).unwrap().len(), 1);
    // Ended early: once only.
    assert!(accounts.end_promotion(second, T0.plus_ms(10)).unwrap());
    assert!(!accounts.end_promotion(second, T0.plus_ms(20)).unwrap());
    assert!(!accounts.end_promotion(999, T0).unwrap());
    let left: Vec<u64> = accounts
        .promotions(T0.plus_ms(10))
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, vec![first]);
}

/// Checkouts: one per shopper and key (a second begin gives the first
/// back), moved only from the state they are in, found unfinished by age,
/// and kept across a reopen.
fn checkouts(h: &Harness) {
    use mall_engine::{CheckoutRow, CheckoutState};
    let row = |user: u64, key: Option<&str>, at: i64| CheckoutRow {
        id: 0,
        user: UserId(user),
        key: key.map(Into::into),
        fingerprint: 77 + user,
        state: CheckoutState::Released, // ignored: a checkout begins open
        plan: format!("{{\"user\":{user}}}"),
        outcome: "{}".into(),
        created_at: T0.plus_ms(at),
        updated_at: T0.plus_ms(at),
        coupons_pending: user == 1,
    };
    let (a, b, c) = {
        let store = h.open(1);
        let accounts = store.accounts().unwrap();
        let a = accounts
            .begin_checkout(&row(1, Some("k"), 0))
            .unwrap()
            .unwrap();
        // The same shopper and key: the first, untouched.
        let again = accounts
            .begin_checkout(&row(1, Some("k"), 5))
            .unwrap()
            .unwrap_err();
        assert_eq!((again.id, again.state), (a, CheckoutState::Open));
        assert_eq!(again.created_at, T0);
        // Another shopper's same key, and no key at all (twice), are new.
        let b = accounts
            .begin_checkout(&row(2, Some("k"), 10))
            .unwrap()
            .unwrap();
        let c = accounts.begin_checkout(&row(1, None, 20)).unwrap().unwrap();
        let d = accounts.begin_checkout(&row(1, None, 30)).unwrap().unwrap();
        assert_eq!(
            [a, b, c, d]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            4
        );
        // Moved only from where it is.
        assert!(accounts
            .move_checkout(
                a,
                CheckoutState::Open,
                CheckoutState::Reserved,
                "{\"orders\":[1]}",
                T0.plus_ms(40)
            )
            .unwrap());
        assert!(!accounts
            .move_checkout(
                a,
                CheckoutState::Open,
                CheckoutState::Releasing,
                "{}",
                T0.plus_ms(41)
            )
            .unwrap());
        assert!(accounts
            .move_checkout(
                d,
                CheckoutState::Open,
                CheckoutState::Releasing,
                "{\"failed\":0}",
                T0.plus_ms(50)
            )
            .unwrap());
        (a, b, c)
    };
    let store = h.open(1);
    let accounts = store.accounts().unwrap();
    let got = accounts.checkout(a).unwrap().unwrap();
    assert_eq!(got.state, CheckoutState::Reserved);
    assert_eq!(got.outcome, "{\"orders\":[1]}");
    assert_eq!(got.plan, "{\"user\":1}");
    assert_eq!((got.key.as_deref(), got.fingerprint), (Some("k"), 78));
    assert_eq!(got.updated_at, T0.plus_ms(40));
    assert!(accounts.checkout(999_999).unwrap().is_none());
    assert_eq!(
        accounts
            .checkout_by_key(UserId(1), "k")
            .unwrap()
            .map(|r| r.id),
        Some(a)
    );
    assert_eq!(
        accounts
            .checkout_by_key(UserId(2), "k")
            .unwrap()
            .map(|r| r.id),
        Some(b)
    );
    assert!(accounts.checkout_by_key(UserId(3), "k").unwrap().is_none());
    // Newest first, the shopper's own.
    let mine: Vec<u64> = accounts
        .checkouts_of(UserId(1), 10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(mine.len(), 3);
    assert_eq!(mine[2], a);
    assert!(!mine.contains(&b));
    assert_eq!(accounts.checkouts_of(UserId(1), 1).unwrap().len(), 1);
    // Unfinished (open or releasing) by age: b (10), c (20), then d (50).
    let unfinished = |before: i64| -> Vec<(u64, CheckoutState)> {
        accounts
            .unfinished_checkouts(T0.plus_ms(before), 10)
            .unwrap()
            .iter()
            .map(|r| (r.id, r.state))
            .collect()
    };
    assert_eq!(unfinished(15), vec![(b, CheckoutState::Open)]);
    let all = unfinished(1_000);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(
        &all[..2],
        &[(b, CheckoutState::Open), (c, CheckoutState::Open)]
    );
    assert_eq!(all[2].1, CheckoutState::Releasing);
    assert_eq!(
        accounts
            .unfinished_checkouts(T0.plus_ms(1_000), 1)
            .unwrap()
            .len(),
        1
    );
    // A batch is one transaction, applied in order: two begins under one
    // key (the second gets the first back), a move of an earlier one.
    use mall_engine::{CheckoutDone, CheckoutOp};
    let step = |to: CheckoutState, at: i64| CheckoutOp::Move {
        id: c,
        from: CheckoutState::Open,
        to,
        outcome: "{}".into(),
        now: T0.plus_ms(at),
        give_back: Vec::new(),
        forget_key: false,
    };
    let begin = |row: CheckoutRow, promotions: Vec<u64>| CheckoutOp::Begin { row, promotions };
    let done = accounts
        .apply_checkouts(&[
            begin(row(5, Some("same"), 60), vec![]),
            begin(row(5, Some("same"), 61), vec![]),
            step(CheckoutState::Reserved, 62),
            step(CheckoutState::Released, 63),
        ])
        .unwrap();
    let CheckoutDone::Begun(Ok(first)) = done[0] else {
        panic!("{done:?}")
    };
    assert!(matches!(&done[1], CheckoutDone::Begun(Err(r)) if r.id == first));
    assert_eq!(
        &done[2..],
        &[CheckoutDone::Moved(true), CheckoutDone::Moved(false)]
    );
    assert_eq!(
        accounts.checkout(c).unwrap().unwrap().state,
        CheckoutState::Reserved
    );
    // Reserved with coupons pending (user 1's): found until settled, once.
    let pending = |accounts: &dyn mall_engine::AccountStore| -> Vec<u64> {
        accounts
            .checkouts_with_coupons(T0.plus_ms(1_000_000), 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(pending(&*accounts), vec![a, c]);
    let settle = accounts
        .apply_checkouts(&[
            CheckoutOp::SettleCoupons {
                id: a,
                give_back: vec![],
            },
            CheckoutOp::SettleCoupons {
                id: a,
                give_back: vec![],
            },
        ])
        .unwrap();
    assert_eq!(
        settle,
        vec![CheckoutDone::Moved(true), CheckoutDone::Moved(false)]
    );
    assert_eq!(pending(&*accounts), vec![c]);
    assert!(!accounts.checkout(a).unwrap().unwrap().coupons_pending);
    // A limited promotion of 1: the first begin takes its unit; the next
    // is refused whole (nothing written, an unlimited one given back); a
    // replay takes nothing; a release gives the unit back.
    let limited = accounts
        .create_promotion(&mall_engine::PromotionRow {
            id: 0,
            merchant: None,
            spec: "{}".into(),
            starts_at: T0,
            ends_at: T0.plus_ms(1_000_000),
            quantity: Some(1),
            used: 0,
        })
        .unwrap();
    let used = |accounts: &dyn mall_engine::AccountStore| {
        accounts
            .promotions(T0)
            .unwrap()
            .iter()
            .find(|p| p.id == limited)
            .map(|p| (p.quantity, p.used))
    };
    assert_eq!(used(&*accounts), Some((Some(1), 0)));
    let done = accounts
        .apply_checkouts(&[
            begin(row(6, Some("p1"), 70), vec![limited]),
            begin(row(7, Some("p2"), 71), vec![limited]),
            begin(row(6, Some("p1"), 72), vec![limited]),
        ])
        .unwrap();
    let CheckoutDone::Begun(Ok(holder)) = done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(done[1], CheckoutDone::PromotionGone(limited));
    assert!(matches!(&done[2], CheckoutDone::Begun(Err(r)) if r.id == holder));
    assert!(accounts.checkout_by_key(UserId(7), "p2").unwrap().is_none());
    assert_eq!(used(&*accounts), Some((Some(1), 1)));
    let release = |from: CheckoutState, to: CheckoutState| CheckoutOp::Move {
        id: holder,
        from,
        to,
        outcome: "{}".into(),
        now: T0.plus_ms(80),
        give_back: vec![limited],
        // Released for a reason worth retrying: its key is let go.
        forget_key: true,
    };
    let done = accounts
        .apply_checkouts(&[
            release(CheckoutState::Open, CheckoutState::Released),
            // Moved already: gives nothing back twice.
            release(CheckoutState::Open, CheckoutState::Released),
        ])
        .unwrap();
    assert_eq!(
        done,
        vec![CheckoutDone::Moved(true), CheckoutDone::Moved(false)]
    );
    assert_eq!(used(&*accounts), Some((Some(1), 0)));
    assert!(accounts.checkout_by_key(UserId(6), "p1").unwrap().is_none());
    assert_eq!(
        accounts.checkout(holder).unwrap().unwrap().state,
        CheckoutState::Released
    );
}

/// `mall check` recounts every coupon from its claims: clean as the engine
/// wrote them, over-issued once a claim is forged behind its back.
fn audit_counts_claims(h: &Harness) {
    let store = h.open(1);
    let mut journal = shard_journal(&store, &Arc::new(Board::default()));
    let mut inv = journal.load(T0).unwrap();
    let mut effects = vec![];
    let coupon = mall_core::Coupon {
        id: mall_core::CouponId(4),
        merchant: None,
        title: "off".into(),
        spec: "{}".into(),
        quantity: 2,
        per_user_limit: 1,
        claim_opens_at: T0,
        claim_closes_at: T0.plus_ms(60_000),
        valid_until: T0.plus_ms(60_000),
    };
    inv.apply(
        Command::PutCoupon {
            coupon,
            expected: None,
        },
        T0,
        &mut effects,
    );
    for user in [7, 8, 9] {
        let claim = mall_inventory::ClaimCoupon::new(UserId(user), mall_core::CouponId(4), None);
        inv.apply(Command::Claim(claim), T0, &mut effects);
    }
    journal.commit(&effects).unwrap();
    let report = mall_engine::audit(store.as_ref()).unwrap();
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!(
        (report.coupons, report.claims),
        (1, 2),
        "two of three claimed"
    );
    // A third claim forged in the store: over-issued, and user 7 twice.
    let (columns, values) = if h.is_postgres() {
        ("shard, ", "0, ")
    } else {
        ("", "")
    };
    h.tamper(
        Target::Shard(0),
        &format!(
            "INSERT INTO coupon_claims ({columns}id, coupon_id, user_id, status, request_fingerprint, created_at_ms, updated_at_ms)
             VALUES ({values}99 * 256, 4, 7, 'claimed', 0, 0, 0)"
        ),
    );
    let report = mall_engine::audit(store.as_ref()).unwrap();
    let text = report.violations.join("; ");
    assert!(text.contains("over-issued: 3 claims of 2"), "{text}");
    assert!(text.contains("over the limit 1"), "{text}");
}

/// Pre-sales in a store: an item's terms and its orders' parts come back
/// as written; a reload counts a paid deposit's unit (its balance order
/// none) and still forfeits it at its window's end; `mall check` agrees.
fn presales(h: &Harness) {
    let store = h.open(1);
    let board = Arc::new(Board::default());
    let mut journal = shard_journal(&store, &board);
    let mut inv = journal.load(T0).unwrap();
    let opens = T0.plus_ms(24 * 3_600_000);
    let closes = T0.plus_ms(48 * 3_600_000);
    let presale = Item {
        category: Category::Books,
        shelf_life_hours: None,
        presale: Some(mall_core::PreSale {
            deposit_fen: Fen(50),
            worth_fen: Fen(80),
            balance_opens_at: opens,
            balance_closes_at: closes,
        }),
        ..item(1, 5, 2)
    };
    let mut effects = vec![];
    let mut run = |inv: &mut Inventory, cmd: Command, now: Timestamp| {
        let mut effects = vec![];
        inv.tick(now, &mut effects);
        let reply = inv.apply(cmd, now, &mut effects);
        journal.commit(&effects).unwrap();
        reply
    };
    run(
        &mut inv,
        Command::PutItem {
            item: presale.clone(),
            expected: None,
        },
        T0,
    );
    let online = |user: u64| {
        let Command::Reserve(mut r) = reserve(user, 1, 1) else {
            unreachable!()
        };
        r.payment = PaymentMethod::Online;
        Command::Reserve(r)
    };
    let order = |r: Reply| match r {
        Reply::Order { order, .. } => order,
        other => panic!("{other:?}"),
    };
    let d1 = order(run(&mut inv, online(1), T0));
    let d2 = order(run(&mut inv, online(2), T0));
    for d in [&d1, &d2] {
        order(run(
            &mut inv,
            Command::Confirm { order: d.id },
            T0.plus_ms(1),
        ));
    }
    let b1 = order(run(
        &mut inv,
        Command::Balance {
            deposit: d1.id,
            user: UserId(1),
        },
        opens,
    ));
    order(run(
        &mut inv,
        Command::Confirm { order: b1.id },
        opens.plus_ms(1),
    ));
    effects.clear();
    // Reloaded: the same terms and parts, the same counters.
    let mut journal = shard_journal(&store, &board);
    let mut inv = journal.load(opens.plus_ms(2)).unwrap();
    inv.audit().unwrap();
    assert_eq!(inv.item(Sku(1)).unwrap().presale, presale.presale);
    assert_eq!(inv.counters(Sku(1)), Some((3, 0, 2)));
    let reader = store.order_reader(0).unwrap();
    let read = |id| reader.order(id).unwrap().unwrap();
    assert_eq!(read(d1.id).presale, d1.presale);
    assert_eq!(
        read(b1.id).presale,
        Some(mall_core::OrderPreSale::Balance { deposit: d1.id })
    );
    // The window's end, after the reload: the unpaid one is forfeited.
    inv.tick(closes, &mut effects);
    journal.commit(&effects).unwrap();
    assert_eq!(inv.counters(Sku(1)), Some((4, 0, 1)));
    assert_eq!(read(d2.id).status, OrderStatus::Forfeited);
    assert_eq!(read(b1.id).status, OrderStatus::Paid);
    let report = mall_engine::audit(store.as_ref()).unwrap();
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!(report.units_sold, 1, "the balance order is not a unit sold");
}
