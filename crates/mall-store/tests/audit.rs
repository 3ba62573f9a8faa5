//! `mall check`'s per-user rule judges each order by the limit it met:
//! lowering a limit later is no violation; exceeding one is.

use mall_core::{Category, Fen, Item, MerchantId, PaymentMethod, Quantity, Sku, Timestamp, UserId};
use mall_inventory::{Board, Command, InventoryConfig, Reply, Reserve};
use mall_shard::Journal;
use mall_store::{audit_data_dir, DataDir, ShardJournal, Sync};
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn item(limit: u32) -> Item {
    Item {
        sku: Sku(1),
        merchant: MerchantId(1),
        title: "tea".into(),
        category: Category::Fresh,
        price_fen: Fen(500),
        stock_total: 10,
        per_user_limit: limit,
        opens_at: T0,
        closes_at: T0.plus_ms(3_600_000),
        shelf_life_hours: Some(48),
    }
}

#[test]
fn a_lowered_limit_is_no_violation_but_an_exceeded_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path(), Some(1)).unwrap();
    let mut journal = ShardJournal::open(
        &data.shard_path(0),
        0,
        InventoryConfig::default(),
        Arc::new(Board::default()),
        Sync::Off,
    )
    .unwrap();
    let mut inv = journal.load(T0).unwrap();
    let mut effects = vec![];
    inv.apply(
        Command::PutItem {
            item: item(3),
            expected: None,
        },
        T0,
        &mut effects,
    );
    let reserve = Command::Reserve(Reserve {
        user: UserId(7),
        sku: Sku(1),
        quantity: Quantity::new(3).unwrap(),
        payment: PaymentMethod::Cod,
        address: "1 Road".into(),
        idempotency_key: None,
        fingerprint: 1,
        early_access: false,
    });
    assert!(matches!(
        inv.apply(reserve, T0, &mut effects),
        Reply::Order { .. }
    ));
    let lowered = inv.apply(
        Command::PutItem {
            item: item(1),
            expected: Some(item(3)),
        },
        T0,
        &mut effects,
    );
    assert!(matches!(lowered, Reply::Item(_)));
    journal.commit(&effects).unwrap();
    let report = audit_data_dir(&data).unwrap();
    assert!(report.is_clean(), "{:?}", report.violations);
    // An order that broke the limit it was made under is a violation.
    let conn = rusqlite::Connection::open(data.shard_path(0)).unwrap();
    conn.execute("UPDATE orders SET per_user_limit = 2", [])
        .unwrap();
    drop(conn);
    let report = audit_data_dir(&data).unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("over the per-user limit 2")),
        "{:?}",
        report.violations
    );
}
