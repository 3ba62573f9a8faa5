//! Durable before acknowledged, through the shard runtime: when a batch
//! cannot be committed, none of its successes is answered as one. Every
//! kind of success the inventory answers is tried (an order, an item, a
//! coupon, a claim, a list of claims).

use mall_core::{
    Category, Claim, Coupon, CouponId, Fen, Item, MerchantId, Order, PaymentMethod, Quantity, Sku,
    Timestamp, UserId,
};
use mall_inventory::{
    Board, ClaimCoupon, Command, Effect, Inventory, InventoryConfig, Reply, Reserve, Snapshot,
};
use mall_shard::{Clock, Journal, JournalError, RuntimeConfig, Shard, SystemClock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Keeps what was committed in memory; fails every commit while `fail`.
struct Flaky {
    fail: Arc<AtomicBool>,
    kept: Arc<Mutex<Kept>>,
    board: Arc<Board>,
}

#[derive(Default)]
struct Kept {
    items: Vec<Item>,
    orders: Vec<Order>,
    coupons: Vec<Coupon>,
    claims: Vec<Claim>,
}

impl Journal for Flaky {
    type Machine = Inventory;

    fn commit(&mut self, effects: &[Effect]) -> Result<(), JournalError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(JournalError("the disk is gone".into()));
        }
        let mut kept = self.kept.lock().unwrap();
        for e in effects {
            match e {
                Effect::PutItem(i) => kept.items.push(i.clone()),
                Effect::InsertOrder(o) => kept.orders.push(o.clone()),
                Effect::PutCoupon(c) => kept.coupons.push(c.clone()),
                Effect::InsertClaim(c) => kept.claims.push(c.clone()),
                Effect::UpdateOrder { .. } | Effect::UpdateClaim { .. } => {}
            }
        }
        Ok(())
    }

    fn load(&mut self, now: Timestamp) -> Result<Inventory, JournalError> {
        let kept = self.kept.lock().unwrap();
        let snapshot = Snapshot {
            items: kept.items.clone(),
            orders: kept.orders.clone(),
            last_seq: kept.orders.iter().map(|o| o.id.seq()).max().unwrap_or(0),
            coupons: kept.coupons.clone(),
            claims: kept.claims.clone(),
        };
        Ok(Inventory::restore(
            0,
            InventoryConfig::default(),
            self.board.clone(),
            snapshot,
            now,
        ))
    }
}

#[test]
fn no_success_is_answered_for_a_batch_that_was_not_committed() {
    let fail = Arc::new(AtomicBool::new(false));
    let kept = Arc::new(Mutex::new(Kept::default()));
    let journal = Flaky {
        fail: fail.clone(),
        kept: kept.clone(),
        board: Arc::new(Board::default()),
    };
    let shard = Shard::start(
        "durable".into(),
        journal,
        SystemClock,
        RuntimeConfig::default(),
    )
    .unwrap();
    let handle = shard.handle();
    let now = SystemClock.now();
    let ask = |command: Command| handle.submit(command).blocking_recv().unwrap();
    let item = Item {
        sku: Sku(1),
        merchant: MerchantId(1),
        title: "tea".into(),
        category: Category::Home,
        price_fen: Fen(100),
        sale_prices: vec![],
        floor_price_fen: Fen(1),
        stock_total: 10,
        per_user_limit: 5,
        opens_at: now.plus_ms(-1_000),
        closes_at: now.plus_ms(3_600_000),
        shelf_life_hours: None,
        presale: None,
    };
    let coupon = |id: u64| Coupon {
        id: CouponId(id),
        merchant: None,
        title: "off".into(),
        spec: "{}".into(),
        quantity: 10,
        per_user_limit: 5,
        claim_opens_at: now.plus_ms(-1_000),
        claim_closes_at: now.plus_ms(3_600_000),
        valid_until: now.plus_ms(3_600_000),
    };
    let reserve = || {
        Command::Reserve(Reserve::new(
            UserId(7),
            Sku(1),
            Quantity::new(1).unwrap(),
            PaymentMethod::Online,
            "1 Road".into(),
            None,
            false,
        ))
    };
    let claim = || Command::Claim(ClaimCoupon::new(UserId(7), CouponId(1), None));
    assert!(matches!(
        ask(Command::PutItem {
            item: item.clone(),
            expected: None
        }),
        Reply::Item(_)
    ));
    assert!(matches!(
        ask(Command::PutCoupon {
            coupon: coupon(1),
            expected: None
        }),
        Reply::Coupon(_)
    ));

    // The disk goes: every success of these batches is answered unavailable.
    fail.store(true, Ordering::SeqCst);
    for command in [
        reserve(),
        claim(),
        Command::PutCoupon {
            coupon: coupon(2),
            expected: None,
        },
        Command::PutItem {
            item: Item {
                sku: Sku(2),
                ..item.clone()
            },
            expected: None,
        },
    ] {
        let reply = ask(command.clone());
        assert_eq!(
            reply,
            Reply::Unavailable,
            "{command:?} answered {reply:?} with nothing committed"
        );
    }
    // A read after a failed batch is never answered from what was lost.
    match ask(Command::ClaimsOf { user: UserId(7) }) {
        Reply::Claims { claims, .. } => {
            assert!(claims.is_empty(), "a lost claim was listed: {claims:?}")
        }
        Reply::Unavailable => {}
        other => panic!("{other:?}"),
    }

    // Back: the shard carries on from what was committed.
    fail.store(false, Ordering::SeqCst);
    let reply = (0..200)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            ask(claim())
        })
        .find(|r| *r != Reply::Unavailable)
        .expect("the shard reloads and takes claims again");
    assert!(
        matches!(
            reply,
            Reply::Claim {
                replayed: false,
                ..
            }
        ),
        "{reply:?}"
    );
    let kept = kept.lock().unwrap();
    assert_eq!(
        (kept.claims.len(), kept.orders.len(), kept.coupons.len()),
        (1, 0, 1)
    );
}
