//! The PostgreSQL store against a real throwaway server: one cluster for the
//! whole binary (a database per test), stopped and removed at the end.
//!
//! Its own small runner (`harness = false`): a cluster shared through a
//! `static` would never be dropped, and would outlive the tests as a stray
//! server and temp directory. Tests run one after another (one of them
//! stops and restarts the cluster). `cargo test -p mall-postgres -- fencing`
//! runs the tests whose name contains `fencing`. Without PostgreSQL (and no
//! apt to install it) every test fails, loudly.

use mall_core::{
    Category, Fen, Item, MerchantId, OrderId, OrderStatus, PaymentMethod, Quantity, Sku, Timestamp,
    UserId,
};
use mall_engine::{Engine, EngineConfig, Store, StoreError};
use mall_inventory::{Board, Command, Effect, Inventory, InventoryConfig, Reply, Reserve};
use mall_ledger::{chart, Account, AccountId, LedgerConfig, Mode, Transfer, TransferId};
use mall_postgres::server::{PostgresServer, Runner};
use mall_postgres::PgStore;
use mall_shard::Journal;
use std::sync::Arc;
use std::time::Instant;

const T0: Timestamp = Timestamp(1_700_000_000_000);

type Test = fn(&PostgresServer);

fn main() {
    let tests: &[(&str, Test)] = &[
        ("shard_commits_round_trip", shard_commits_round_trip),
        ("fencing_stops_the_old_owner", fencing_stops_the_old_owner),
        (
            "ledger_round_trip_and_fencing",
            ledger_round_trip_and_fencing,
        ),
        ("two_servers_placement", two_servers_placement),
        ("shards_share_connections", shards_share_connections),
        ("schema_too_new_is_refused", schema_too_new_is_refused),
        ("an_older_store_is_migrated", an_older_store_is_migrated),
        (
            "a_batch_that_does_not_fit_writes_nothing",
            a_batch_that_does_not_fit_writes_nothing,
        ),
        ("engine_runs_on_postgres", engine_runs_on_postgres),
        (
            "scratch_databases_come_and_go",
            scratch_databases_come_and_go,
        ),
        ("connection_cut_and_back", connection_cut_and_back),
    ];
    let (chosen, mut runner) = Runner::choose(tests);
    if chosen.is_empty() {
        println!("running 0 tests");
        return;
    }
    let started = Instant::now();
    let server = PostgresServer::start().unwrap_or_else(|e| {
        panic!("these tests need PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql): {e}")
    });
    println!(
        "running {} tests (PostgreSQL on port {}, up in {} ms)",
        chosen.len(),
        server.port,
        started.elapsed().as_millis()
    );
    for (name, test) in chosen {
        runner.run(name, || test(&server));
    }
    drop(server);
    runner.finish();
}

fn open(urls: &[String], shards: Option<usize>) -> PgStore {
    PgStore::open(urls, shards, 4).expect("open store")
}

fn fresh(server: &PostgresServer, db: &str, shards: Option<usize>) -> (String, PgStore) {
    let url = server.create_database(db).expect("create database");
    let store = open(std::slice::from_ref(&url), shards);
    (url, store)
}

fn item(sku: u64, stock: u32) -> Item {
    Item {
        sku: Sku(sku),
        merchant: MerchantId(1),
        title: format!("item {sku}"),
        category: Category::Fresh,
        price_fen: Fen(990),
        stock_total: stock,
        per_user_limit: 5,
        opens_at: T0,
        closes_at: T0.plus_ms(3_600_000),
        shelf_life_hours: Some(48),
        presale: None,
        sale_prices: vec![],
        floor_price_fen: mall_core::Fen(1),
    }
}

fn put(inv: &mut Inventory, item: Item, effects: &mut Vec<Effect>) {
    let expected = inv.item(item.sku).cloned();
    let reply = inv.apply(Command::PutItem { item, expected }, T0, effects);
    assert!(matches!(reply, Reply::Item(_)), "{reply:?}");
}

fn reserve(
    inv: &mut Inventory,
    user: u64,
    sku: u64,
    payment: PaymentMethod,
    key: Option<&str>,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) -> OrderId {
    let command = Command::Reserve(Reserve::new(
        UserId(user),
        Sku(sku),
        Quantity::new(1).unwrap(),
        payment,
        "1 Bund Road".into(),
        key.map(Into::into),
        false,
    ));
    match inv.apply(command, now, effects) {
        Reply::Order { order, .. } => order.id,
        other => panic!("reserve: {other:?}"),
    }
}

fn shard_journal(store: &PgStore, shard: usize) -> mall_engine::ShardJournalBox {
    store
        .shard_journal(
            shard,
            InventoryConfig::default(),
            Arc::new(Board::default()),
        )
        .expect("open shard journal")
}

/// Items, counters and active orders, as a reload must bring them back.
fn same_inventory(a: &Inventory, b: &Inventory) {
    let mut skus: Vec<_> = a.skus().collect();
    skus.sort();
    let mut other: Vec<_> = b.skus().collect();
    other.sort();
    assert_eq!(skus, other);
    for sku in skus {
        assert_eq!(a.item(sku), b.item(sku));
        assert_eq!(a.counters(sku), b.counters(sku), "counters of {sku}");
    }
    let mut x: Vec<_> = a.active_orders().cloned().collect();
    let mut y: Vec<_> = b.active_orders().cloned().collect();
    x.sort_by_key(|o| o.id);
    y.sort_by_key(|o| o.id);
    assert_eq!(x, y);
}

fn is_fenced(e: &mall_shard::JournalError) -> bool {
    e.0.contains("is fenced")
}

fn shard_commits_round_trip(server: &PostgresServer) {
    let (_, store) = fresh(server, "round_trip", Some(4));
    assert_eq!(store.shard_count(), 4);
    let mut journal = shard_journal(&store, 1);
    let mut inv = journal.load(T0).unwrap();
    let mut effects = Vec::new();
    // One batch: an item written twice, orders inserted, one of them
    // updated in the same batch.
    put(&mut inv, item(5, 10), &mut effects);
    put(&mut inv, item(9, 3), &mut effects);
    put(&mut inv, item(5, 12), &mut effects);
    let a = reserve(
        &mut inv,
        7,
        5,
        PaymentMethod::Online,
        Some("k-a"),
        T0,
        &mut effects,
    );
    let b = reserve(
        &mut inv,
        7,
        9,
        PaymentMethod::Cod,
        None,
        T0.plus_ms(1),
        &mut effects,
    );
    let c = reserve(
        &mut inv,
        8,
        5,
        PaymentMethod::Online,
        None,
        T0.plus_ms(2),
        &mut effects,
    );
    inv.apply(Command::Confirm { order: a }, T0.plus_ms(3), &mut effects);
    journal.commit(&effects).unwrap();
    effects.clear();
    // A second batch: updates of orders already stored, more inserts.
    inv.apply(
        Command::Release { order: c, by: None },
        T0.plus_ms(4),
        &mut effects,
    );
    inv.apply(Command::Deliver { order: a }, T0.plus_ms(5), &mut effects);
    let d = reserve(
        &mut inv,
        7,
        5,
        PaymentMethod::Online,
        Some("k-d"),
        T0.plus_ms(6),
        &mut effects,
    );
    journal.commit(&effects).unwrap();
    effects.clear();

    // Reloaded by the same journal, and by a new opener.
    let now = T0.plus_ms(10);
    same_inventory(&inv, &journal.load(now).unwrap());
    let mut other = shard_journal(&store, 1);
    let reloaded = other.load(now).unwrap();
    same_inventory(&inv, &reloaded);
    // The next order continues the sequence.
    let mut inv = reloaded;
    let e = reserve(
        &mut inv,
        9,
        9,
        PaymentMethod::Online,
        None,
        now,
        &mut effects,
    );
    assert!(e.seq() > d.seq() && e.shard() == 1);
    other.commit(&effects).unwrap();

    // The API's reads.
    let reader = store.order_reader(1).unwrap();
    let got = reader.order(a).unwrap().expect("order a");
    assert_eq!(got.status, OrderStatus::Delivered);
    assert_eq!(got.idempotency_key.as_deref(), Some("k-a"));
    assert_eq!(
        reader.order(c).unwrap().unwrap().status,
        OrderStatus::Cancelled
    );
    assert_eq!(reader.order(OrderId::new(1, 999)).unwrap(), None);
    assert_eq!(
        store.order_reader(2).unwrap().order(a).unwrap(),
        None,
        "other shard"
    );
    let mine: Vec<_> = reader
        .orders_of_user(UserId(7), None, 10)
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(mine, vec![d, b, a], "newest first");
    let first = reader.orders_of_user(UserId(7), None, 2).unwrap();
    let last = first.last().unwrap();
    let rest = reader
        .orders_of_user(UserId(7), Some((last.created_at, last.id)), 2)
        .unwrap();
    assert_eq!(rest.iter().map(|o| o.id).collect::<Vec<_>>(), vec![a]);

    // The audit's view.
    let contents = store.shard_contents(1).unwrap();
    assert_eq!(contents.items.len(), 2);
    assert_eq!(
        contents.items[0],
        item(5, 12),
        "the last write of an item wins"
    );
    assert_eq!(contents.orders.len(), 5);
    assert!(contents.orders.iter().all(Result::is_ok));
    assert!(store.shard_contents(0).unwrap().orders.is_empty());
    let report = mall_engine::audit(&store).unwrap();
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!(report.orders, 5);
}

fn fencing_stops_the_old_owner(server: &PostgresServer) {
    let (url, store_a) = fresh(server, "fencing", Some(2));
    let mut a = shard_journal(&store_a, 0);
    let mut inv_a = a.load(T0).unwrap();
    let mut effects = Vec::new();
    put(&mut inv_a, item(2, 10), &mut effects);
    a.commit(&effects).unwrap();
    effects.clear();
    let mut a1 = shard_journal(&store_a, 1);
    let mut inv_a1 = a1.load(T0).unwrap();

    // Another node opens shard 0.
    let store_b = open(std::slice::from_ref(&url), None);
    let mut b = shard_journal(&store_b, 0);
    let mut inv_b = b.load(T0).unwrap();
    same_inventory(&inv_a, &inv_b);

    reserve(
        &mut inv_a,
        1,
        2,
        PaymentMethod::Online,
        None,
        T0,
        &mut effects,
    );
    let err = a.commit(&effects).unwrap_err();
    assert!(is_fenced(&err), "{err}");
    assert!(
        store_b.shard_contents(0).unwrap().orders.is_empty(),
        "nothing of a fenced commit is stored"
    );
    let Err(err) = a.load(T0) else {
        panic!("a fenced journal does not load")
    };
    assert!(is_fenced(&err), "{err}");
    let err = a.commit(&effects).unwrap_err();
    assert!(is_fenced(&err), "fenced for good: {err}");
    effects.clear();

    // The new owner writes; the old one never bumped the epoch back.
    reserve(
        &mut inv_b,
        1,
        2,
        PaymentMethod::Online,
        None,
        T0,
        &mut effects,
    );
    b.commit(&effects).unwrap();
    effects.clear();
    assert_eq!(store_b.shard_contents(0).unwrap().orders.len(), 1);
    same_inventory(&inv_b, &b.load(T0).unwrap());

    // Fencing is per shard: A still owns shard 1.
    put(&mut inv_a1, item(3, 1), &mut effects);
    a1.commit(&effects).unwrap();
}

fn ledger_round_trip_and_fencing(server: &PostgresServer) {
    let (url, store) = fresh(server, "ledger", Some(1));
    let mut journal = store.ledger_journal(LedgerConfig::default()).unwrap();
    let mut ledger = journal.load(T0).unwrap();
    let wallets: Vec<AccountId> = (1..=4).map(|u| chart::wallet(UserId(u))).collect();
    let clearing = chart::clearing(0);
    let mut accounts: Vec<Account> = wallets
        .iter()
        .map(|&w| chart::account(w).unwrap())
        .collect();
    accounts.push(chart::account(chart::ESCROW).unwrap());
    accounts.push(chart::account(clearing).unwrap());
    let mut effects = Vec::new();
    ledger.apply(
        mall_ledger::Command::CreateAccounts(accounts),
        T0,
        &mut effects,
    );
    let transfer = |id: u64, debit, credit, amount, mode| Transfer {
        id: TransferId(id),
        debit,
        credit,
        amount,
        mode,
        linked: false,
        code: chart::code::TOP_UP,
        user_data: id,
    };
    let mut batch: Vec<Transfer> = wallets
        .iter()
        .enumerate()
        .map(|(i, &w)| transfer(1 + i as u64, clearing, w, 10_000, Mode::Single))
        .collect();
    // A pending transfer posted in the same batch, another left pending.
    batch.push(transfer(
        10,
        wallets[0],
        chart::ESCROW,
        3_000,
        Mode::Pending { timeout_ms: 0 },
    ));
    batch.push(transfer(
        11,
        wallets[0],
        chart::ESCROW,
        3_000,
        Mode::Post {
            pending: TransferId(10),
        },
    ));
    batch.push(transfer(
        12,
        wallets[1],
        chart::ESCROW,
        2_000,
        Mode::Pending { timeout_ms: 0 },
    ));
    ledger.apply(
        mall_ledger::Command::CreateTransfers(batch),
        T0,
        &mut effects,
    );
    journal.commit(&effects).unwrap();
    effects.clear();
    let void = transfer(
        13,
        wallets[1],
        chart::ESCROW,
        0,
        Mode::Void {
            pending: TransferId(12),
        },
    );
    ledger.apply(
        mall_ledger::Command::CreateTransfers(vec![void]),
        T0.plus_ms(1),
        &mut effects,
    );
    journal.commit(&effects).unwrap();
    effects.clear();

    let same = |a: &mall_ledger::Ledger, b: &mall_ledger::Ledger| {
        for id in wallets.iter().chain([&chart::ESCROW, &clearing]) {
            assert_eq!(a.account(*id), b.account(*id), "account {}", id.0);
        }
        for t in 1..=13 {
            assert_eq!(
                a.transfer(TransferId(t)),
                b.transfer(TransferId(t)),
                "transfer {t}"
            );
        }
    };
    same(&ledger, &journal.load(T0).unwrap());

    let (read_accounts, transfers) = store.read_ledger().unwrap();
    assert_eq!(read_accounts.len(), 6);
    assert_eq!(transfers.len(), 8);
    assert!(transfers.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(mall_engine::verify_ledger(read_accounts, transfers.clone()).is_empty());
    let reader = store.ledger_reader().unwrap();
    assert_eq!(reader.all_transfers().unwrap(), transfers);
    let statement = reader.wallet_statement(wallets[0], None, 2).unwrap();
    let ids: Vec<u64> = statement.iter().map(|s| s.transfer.id.0).collect();
    assert_eq!(ids, vec![11, 10], "newest first");
    let older = reader
        .wallet_statement(wallets[0], Some(statement[1].seq), 10)
        .unwrap();
    assert_eq!(
        older.iter().map(|s| s.transfer.id.0).collect::<Vec<_>>(),
        vec![1]
    );

    // A second node takes the ledger over.
    let other = open(std::slice::from_ref(&url), None);
    let mut taken = other.ledger_journal(LedgerConfig::default()).unwrap();
    let mut ledger_b = taken.load(T0).unwrap();
    same(&ledger, &ledger_b);
    let top_up = transfer(20, clearing, wallets[2], 5, Mode::Single);
    ledger.apply(
        mall_ledger::Command::CreateTransfers(vec![top_up.clone()]),
        T0,
        &mut effects,
    );
    let err = journal.commit(&effects).unwrap_err();
    assert!(is_fenced(&err), "{err}");
    assert!(journal.load(T0).is_err());
    effects.clear();
    ledger_b.apply(
        mall_ledger::Command::CreateTransfers(vec![top_up]),
        T0,
        &mut effects,
    );
    taken.commit(&effects).unwrap();
    assert_eq!(other.read_ledger().unwrap().1.len(), 9);
}

fn two_servers_placement(server: &PostgresServer) {
    // Two real servers (two clusters on loopback; one disk here, so this
    // is about placement and correctness, not capacity).
    let second = PostgresServer::start().expect("a second PostgreSQL");
    let one = server.create_database("placed_one").unwrap();
    let two = second.create_database("placed_two").unwrap();
    let urls = vec![one.clone(), two.clone()];
    let store = open(&urls, Some(4));
    assert_eq!(store.placement(), &[0, 1, 0, 1]);
    let mut effects = Vec::new();
    for shard in 0..4 {
        let mut journal = shard_journal(&store, shard);
        let mut inv = journal.load(T0).unwrap();
        put(&mut inv, item(shard as u64 + 4, 1), &mut effects);
        reserve(
            &mut inv,
            1,
            shard as u64 + 4,
            PaymentMethod::Cod,
            None,
            T0,
            &mut effects,
        );
        journal.commit(&effects).unwrap();
        effects.clear();
    }
    let count = |url: &str, table: &str| -> Vec<i32> {
        let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
        client
            .query(&format!("SELECT shard FROM {table} ORDER BY shard"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(count(&one, "items"), vec![0, 2]);
    assert_eq!(count(&two, "items"), vec![1, 3]);
    assert_eq!(count(&two, "orders"), vec![1, 3]);
    assert!(
        count(&two, "shard_placement").is_empty(),
        "the placement lives on the first"
    );

    // Reopened with the same list: the recorded placement, the same data.
    let again = open(&urls, None);
    assert_eq!(again.placement(), &[0, 1, 0, 1]);
    for shard in 0..4 {
        let contents = again.shard_contents(shard).unwrap();
        assert_eq!(contents.items, vec![item(shard as u64 + 4, 1)]);
        assert_eq!(contents.orders.len(), 1);
    }
    let describe = again.describe();
    assert!(
        describe.contains("placed_one") && describe.contains("placed_two"),
        "{describe}"
    );

    // Refused clearly: too few servers, the wrong order, another count.
    let err = PgStore::open(std::slice::from_ref(&one), None, 2)
        .err()
        .unwrap();
    assert!(err.to_string().contains("on 2 servers"), "{err}");
    let err = PgStore::open(&[two.clone(), one.clone()], None, 2)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("another mall store") || err.to_string().contains("order"),
        "{err}"
    );
    let empty = server.create_database("placed_empty").unwrap();
    let err = PgStore::open(&[one.clone(), empty], None, 2).err().unwrap();
    assert!(err.to_string().contains("no part of this store"), "{err}");
    let err = PgStore::open(&urls, Some(8), 2).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::ShardCountMismatch {
                stored: 4,
                asked: 8,
                ..
            }
        ),
        "{err}"
    );

    // A password never shows (the test cluster trusts loopback and ignores it).
    let with_password = format!(
        "postgres://mall:s3cret@127.0.0.1:{}/placed_one",
        server.port
    );
    let store = open(&[with_password, two], None);
    assert!(!store.describe().contains("s3cret"), "{}", store.describe());
}

fn shards_share_connections(server: &PostgresServer) {
    let url = server.create_database("shared").unwrap();
    // One connection for everything, the store's creation included.
    let store = PgStore::open(std::slice::from_ref(&url), None, 1).unwrap();
    assert_eq!(store.shard_count(), mall_postgres::DEFAULT_SHARDS);
    let mut journals: Vec<_> = (0..store.shard_count())
        .map(|s| shard_journal(&store, s))
        .collect();
    let mut effects = Vec::new();
    for (shard, journal) in journals.iter_mut().enumerate() {
        let mut inv = journal.load(T0).unwrap();
        put(&mut inv, item(shard as u64, 1), &mut effects);
        journal.commit(&effects).unwrap();
        effects.clear();
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shared' AND application_name = 'mall'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "connections for 64 shards");
}

fn schema_too_new_is_refused(server: &PostgresServer) {
    let (url, store) = fresh(server, "too_new", Some(1));
    drop(store);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute("UPDATE mall_schema SET version = 99", &[])
        .unwrap();
    let err = PgStore::open(&[url], None, 1).err().unwrap();
    assert!(
        matches!(err, StoreError::SchemaTooNew { stored: 99, .. }),
        "{err}"
    );
}

/// A store made by a mall that knew only the first migration is brought
/// to the newest version at start, its data untouched.
fn an_older_store_is_migrated(server: &PostgresServer) {
    let (url, store) = fresh(server, "older", Some(1));
    let mut journal = shard_journal(&store, 0);
    let mut inv = journal.load(T0).unwrap();
    let mut effects = Vec::new();
    put(&mut inv, item(1, 10), &mut effects);
    journal.commit(&effects).unwrap();
    drop(journal);
    drop(store);
    // Back to version 1: what the first release of this store left.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "DROP FUNCTION mall_fail(TEXT); DROP TABLE cluster_nodes, shard_leases, session_ends;
             ALTER TABLE items DROP COLUMN sale_prices, DROP COLUMN floor_price_fen, DROP COLUMN presale;
             ALTER TABLE orders DROP COLUMN list_price_fen, DROP COLUMN presale;
             DROP TABLE shopper_lists, favorite_counts, promotions, coupons, coupon_claims, checkouts;
             UPDATE mall_schema SET version = 1",
        )
        .unwrap();
    let store = open(std::slice::from_ref(&url), None);
    let version: i64 = client
        .query_one("SELECT version FROM mall_schema", &[])
        .unwrap()
        .get(0);
    assert!(version >= 2, "migrated to {version}");
    let functions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE proname = 'mall_fail'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(functions, 1, "the second migration ran");
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('cluster_nodes', 'shard_leases', 'session_ends')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 3, "the third migration ran");
    let lists: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('shopper_lists', 'favorite_counts')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(lists, 2, "the fifth migration ran");
    let later: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('promotions', 'coupons', 'coupon_claims', 'checkouts')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(later, 4, "the sixth to eighth migrations ran");
    assert_eq!(store.shard_contents(0).unwrap().items, vec![item(1, 10)]);
}

/// A batch is one statement: when part of it cannot be written (an update
/// of an order the store does not have), none of it is, and the journal
/// says so.
fn a_batch_that_does_not_fit_writes_nothing(server: &PostgresServer) {
    let (_, store) = fresh(server, "misfit", Some(1));
    let mut journal = shard_journal(&store, 0);
    let mut inv = journal.load(T0).unwrap();
    let mut effects = Vec::new();
    put(&mut inv, item(1, 10), &mut effects);
    let id = reserve(
        &mut inv,
        7,
        1,
        PaymentMethod::Online,
        None,
        T0,
        &mut effects,
    );
    journal.commit(&effects).unwrap();
    effects.clear();
    put(&mut inv, item(2, 5), &mut effects);
    reserve(
        &mut inv,
        8,
        1,
        PaymentMethod::Online,
        None,
        T0,
        &mut effects,
    );
    effects.push(Effect::UpdateOrder {
        id: OrderId::new(0, 999),
        status: OrderStatus::Paid,
        updated_at: T0,
    });
    effects.push(Effect::UpdateOrder {
        id,
        status: OrderStatus::Paid,
        updated_at: T0,
    });
    let err = journal.commit(&effects).unwrap_err();
    assert!(err.0.contains("missing"), "{err}");
    let contents = store.shard_contents(0).unwrap();
    assert_eq!(contents.items, vec![item(1, 10)], "no item of the batch");
    assert_eq!(contents.orders.len(), 1, "no order of the batch");
    let stored = contents.orders[0].as_ref().unwrap();
    assert_eq!(
        stored.status,
        OrderStatus::AwaitingPayment,
        "no update of the batch"
    );

    // The ledger's batch too: an account and the state of a pending
    // transfer the store does not have; neither is written.
    let mut journal = store.ledger_journal(LedgerConfig::default()).unwrap();
    let mut ledger = journal.load(T0).unwrap();
    let mut effects = Vec::new();
    let wallet = chart::wallet(UserId(1));
    ledger.apply(
        mall_ledger::Command::CreateAccounts(vec![chart::account(wallet).unwrap()]),
        T0,
        &mut effects,
    );
    effects.push(mall_ledger::Effect::SetPendingState {
        id: TransferId(424242),
        state: mall_ledger::PendingState::Posted,
    });
    let err = journal.commit(&effects).unwrap_err();
    assert!(err.0.contains("missing"), "{err}");
    assert!(
        store.read_ledger().unwrap().0.is_empty(),
        "no account of the batch"
    );
}

fn engine_runs_on_postgres(server: &PostgresServer) {
    let (url, store) = fresh(server, "engine", Some(2));
    let clock = Arc::new(mall_shard::SystemClock);
    let engine = Engine::start(Arc::new(store), EngineConfig::default(), clock.clone()).unwrap();
    let far = Timestamp(i64::MAX / 2);
    let items: Vec<Item> = (1..=4)
        .map(|sku| Item {
            closes_at: far,
            ..item(sku, 5)
        })
        .collect();
    engine.create_items_blocking(items.clone()).unwrap();
    engine.shutdown();
    let engine =
        Engine::start(Arc::new(open(&[url], None)), EngineConfig::default(), clock).unwrap();
    let mut stored: Vec<Item> = (0..2)
        .flat_map(|s| engine.store().shard_contents(s).unwrap().items)
        .collect();
    stored.sort_by_key(|i| i.sku);
    assert_eq!(stored, items);
    engine.shutdown();
}

fn scratch_databases_come_and_go(server: &PostgresServer) {
    let databases = || -> Vec<String> {
        let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
        client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'scratch%' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // Two connection strings naming one cluster still get a database each.
    let scratch = mall_postgres::Scratch::create(&[server.url(), server.url()], "scratch").unwrap();
    assert_eq!(databases(), vec!["scratch_0", "scratch_1"]);
    let store = open(scratch.urls(), Some(2));
    assert_eq!(store.placement(), &[0, 1]);
    drop(store);
    drop(scratch);
    assert!(databases().is_empty());
}

fn connection_cut_and_back(server: &PostgresServer) {
    let (_, store) = fresh(server, "cut", Some(1));
    let mut journal = shard_journal(&store, 0);
    let mut inv = journal.load(T0).unwrap();
    let mut effects = Vec::new();
    put(&mut inv, item(1, 10), &mut effects);
    journal.commit(&effects).unwrap();
    effects.clear();
    let reader = store.order_reader(0).unwrap();
    assert!(reader
        .orders_of_user(UserId(1), None, 10)
        .unwrap()
        .is_empty());

    server.stop_immediate().unwrap();
    reserve(
        &mut inv,
        1,
        1,
        PaymentMethod::Online,
        None,
        T0,
        &mut effects,
    );
    let err = journal.commit(&effects).unwrap_err();
    assert!(err.0.contains("unavailable"), "{err}");
    let err = reader.order(OrderId::new(0, 1)).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    effects.clear();

    server.start_again().unwrap();
    // The same journal reloads (memory was ahead of the disk) and goes on.
    let mut inv = journal.load(T0).unwrap();
    assert_eq!(
        inv.counters(Sku(1)),
        Some((10, 0, 0)),
        "the failed batch left nothing"
    );
    let id = reserve(
        &mut inv,
        1,
        1,
        PaymentMethod::Online,
        None,
        T0,
        &mut effects,
    );
    journal.commit(&effects).unwrap();
    assert_eq!(reader.order(id).unwrap().unwrap().id, id);
}
