//! Pre-sales on the shard state machine, on a manual clock: a deposit
//! holds a unit; its balance order holds none; the balance paid, unpaid
//! (forfeit), a shopper's cancel (forfeit) and an admin's (cancelled), and
//! a restart from what a journal would hold, at every step. Conservation
//! and the recount (`audit`) are checked after every command.

use mall_core::{
    Category, Fen, Item, MerchantId, Order, OrderId, OrderPreSale, OrderStatus, PaymentMethod,
    PreSale, Quantity, Refusal, Sku, Timestamp, UserId,
};
use mall_inventory::{
    Board, Command, Effect, Inventory, InventoryConfig, Reply, Reserve, Snapshot,
};
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const HOUR: i64 = 3_600_000;
const HOLD_MS: i64 = 15 * 60_000;
const SKU: Sku = Sku(7);
/// Deposit window [T0, T0+10h); balance window [T0+24h, T0+48h).
const BALANCE_OPENS: Timestamp = Timestamp(T0.0 + 24 * HOUR);
const BALANCE_CLOSES: Timestamp = Timestamp(T0.0 + 48 * HOUR);

fn presale_item() -> Item {
    Item {
        sku: SKU,
        merchant: MerchantId(3),
        title: "pre-sale fridge".into(),
        category: Category::Appliances,
        price_fen: Fen(4_500_000),
        // The final price: the sale price in the balance window.
        sale_prices: vec![mall_core::SalePrice {
            opens_at: BALANCE_OPENS,
            closes_at: BALANCE_CLOSES,
            price_fen: Fen(3_888_800),
        }],
        floor_price_fen: Fen(1),
        stock_total: 3,
        per_user_limit: 2,
        opens_at: T0,
        closes_at: T0.plus_ms(10 * HOUR),
        shelf_life_hours: None,
        presale: Some(PreSale {
            deposit_fen: Fen(10_000),
            worth_fen: Fen(15_000),
            balance_opens_at: BALANCE_OPENS,
            balance_closes_at: BALANCE_CLOSES,
        }),
    }
}

/// The shard and a journal of what it made durable (the orders table as
/// both stores keep it: an update sets the status and clears the expiry).
struct Shard {
    inv: Inventory,
    orders: BTreeMap<OrderId, Order>,
    items: Vec<Item>,
}

impl Shard {
    fn new() -> Shard {
        let config = InventoryConfig {
            hold_timeout_ms: HOLD_MS,
            ..Default::default()
        };
        let mut shard = Shard {
            inv: Inventory::new(0, config, Arc::new(Board::default())),
            orders: BTreeMap::new(),
            items: vec![],
        };
        let reply = shard.run(
            Command::PutItem {
                item: presale_item(),
                expected: None,
            },
            T0,
        );
        assert!(matches!(reply, Reply::Item(_)), "{reply:?}");
        shard
    }

    fn run(&mut self, cmd: Command, now: Timestamp) -> Reply {
        let mut effects = vec![];
        self.inv.tick(now, &mut effects);
        let reply = self.inv.apply(cmd, now, &mut effects);
        self.inv.check_touched();
        self.inv.audit().unwrap();
        self.journal(effects);
        reply
    }

    fn tick(&mut self, now: Timestamp) {
        let mut effects = vec![];
        self.inv.tick(now, &mut effects);
        self.inv.check_touched();
        self.inv.audit().unwrap();
        self.journal(effects);
    }

    fn journal(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::InsertOrder(o) => {
                    assert!(
                        self.orders.insert(o.id, o).is_none(),
                        "an order inserted twice"
                    );
                }
                Effect::UpdateOrder {
                    id,
                    status,
                    updated_at,
                } => {
                    let o = self
                        .orders
                        .get_mut(&id)
                        .expect("an update of a known order");
                    (o.status, o.expires_at, o.updated_at) = (status, None, updated_at);
                }
                Effect::PutItem(i) => self.items.push(i),
                _ => {}
            }
        }
    }

    /// A restart: the shard rebuilt from its journal alone.
    fn restart(&mut self, now: Timestamp) {
        let snapshot = Snapshot {
            items: vec![self.items.last().unwrap().clone()],
            orders: self.orders.values().cloned().collect(),
            last_seq: self.orders.keys().map(|id| id.seq()).max().unwrap_or(0),
            coupons: vec![],
            claims: vec![],
        };
        let before = self.inv.counters(SKU);
        let config = InventoryConfig {
            hold_timeout_ms: HOLD_MS,
            ..Default::default()
        };
        self.inv = Inventory::restore(0, config, Arc::new(Board::default()), snapshot, now);
        self.inv.audit().unwrap();
        assert_eq!(
            self.inv.counters(SKU),
            before,
            "a restart changed the counters"
        );
    }

    fn counters(&self) -> (u32, u32, u32) {
        self.inv.counters(SKU).unwrap()
    }
}

fn deposit(user: u64, qty: u32, payment: PaymentMethod) -> Command {
    let mut r = Reserve::new(
        UserId(user),
        SKU,
        Quantity::new(qty).unwrap(),
        payment,
        "addr".into(),
        None,
        false,
    );
    r.expected_total_fen = Some(Fen(10_000 * i64::from(qty)));
    Command::Reserve(r)
}

fn order(reply: Reply) -> Order {
    match reply {
        Reply::Order { order, .. } => order,
        other => panic!("expected an order, got {other:?}"),
    }
}

/// A deposit made and paid: the order and its shard.
fn paid_deposit(shard: &mut Shard, user: u64) -> Order {
    let d = order(shard.run(deposit(user, 1, PaymentMethod::Online), T0.plus_ms(HOUR)));
    let d = order(shard.run(Command::Confirm { order: d.id }, T0.plus_ms(HOUR + 1_000)));
    assert_eq!(d.status, OrderStatus::Paid);
    d
}

#[test]
fn a_deposit_holds_a_unit_at_the_final_price_and_its_balance_holds_none() {
    let mut s = Shard::new();
    let d = order(s.run(deposit(1, 1, PaymentMethod::Online), T0.plus_ms(HOUR)));
    assert_eq!(
        d.amount_fen,
        Fen(10_000),
        "the order's amount is the deposit"
    );
    assert_eq!(
        d.unit_price_fen,
        Fen(3_888_800),
        "the unit's price is the final one"
    );
    assert_eq!(
        d.presale,
        Some(OrderPreSale::Deposit {
            balance_fen: Fen(3_888_800 - 15_000),
            balance_opens_at: BALANCE_OPENS,
            balance_closes_at: BALANCE_CLOSES,
        })
    );
    assert_eq!(d.expires_at, Some(T0.plus_ms(HOUR + HOLD_MS)));
    assert_eq!(s.counters(), (2, 1, 0));
    let d = order(s.run(Command::Confirm { order: d.id }, T0.plus_ms(HOUR + 60_000)));
    assert_eq!(d.status, OrderStatus::Paid);
    assert_eq!(s.counters(), (2, 0, 1));
    s.restart(T0.plus_ms(3 * HOUR));

    // The balance: not before its window.
    let early = s.run(
        Command::Balance {
            deposit: d.id,
            user: UserId(1),
        },
        T0.plus_ms(3 * HOUR),
    );
    assert_eq!(
        early,
        Reply::Refused(Refusal::BalanceNotOpen {
            opens_at: BALANCE_OPENS
        })
    );
    // Nobody else's.
    let other = s.run(
        Command::Balance {
            deposit: d.id,
            user: UserId(2),
        },
        BALANCE_OPENS,
    );
    assert_eq!(other, Reply::Refused(Refusal::UnknownOrder));
    let b = order(s.run(
        Command::Balance {
            deposit: d.id,
            user: UserId(1),
        },
        BALANCE_OPENS,
    ));
    assert_eq!(b.amount_fen, Fen(3_888_800 - 15_000));
    assert_eq!(b.status, OrderStatus::AwaitingPayment);
    assert_eq!(b.expires_at, Some(BALANCE_CLOSES));
    assert_eq!(b.presale, Some(OrderPreSale::Balance { deposit: d.id }));
    assert_eq!(s.counters(), (2, 0, 1), "the balance order holds no stock");
    // Asked again: the same balance order.
    let again = s.run(
        Command::Balance {
            deposit: d.id,
            user: UserId(1),
        },
        BALANCE_OPENS.plus_ms(5),
    );
    assert_eq!(order(again).id, b.id);
    s.restart(BALANCE_OPENS.plus_ms(10));
    assert_eq!(
        order(s.run(
            Command::Balance {
                deposit: d.id,
                user: UserId(1),
            },
            BALANCE_OPENS.plus_ms(11),
        ))
        .id,
        b.id,
        "a restart keeps the one balance order"
    );

    // Delivered only once the balance is paid.
    assert_eq!(
        s.run(Command::Deliver { order: d.id }, BALANCE_OPENS.plus_ms(20)),
        Reply::Refused(Refusal::BalanceNotPaid)
    );
    let b = order(s.run(Command::Confirm { order: b.id }, BALANCE_OPENS.plus_ms(30)));
    assert_eq!(b.status, OrderStatus::Paid);
    assert_eq!(s.counters(), (2, 0, 1));
    // The window's end changes nothing once the balance is paid.
    s.tick(BALANCE_CLOSES.plus_ms(1));
    assert_eq!(s.counters(), (2, 0, 1));
    s.restart(BALANCE_CLOSES.plus_ms(2));
    let d = order(s.run(Command::Deliver { order: d.id }, BALANCE_CLOSES.plus_ms(3)));
    assert_eq!(d.status, OrderStatus::Delivered);
    assert_eq!(
        s.orders[&b.id].status,
        OrderStatus::Delivered,
        "delivered with its deposit"
    );
    // The balance order's own delivery is a replay (its settlement asks it).
    let b = order(s.run(Command::Deliver { order: b.id }, BALANCE_CLOSES.plus_ms(4)));
    assert_eq!(b.status, OrderStatus::Delivered);
    s.restart(BALANCE_CLOSES.plus_ms(5));
    assert_eq!(s.counters(), (2, 0, 1));
}

#[test]
fn an_unpaid_balance_forfeits_the_deposit_and_the_unit_comes_back() {
    let mut s = Shard::new();
    let d = paid_deposit(&mut s, 1);
    // One shopper never asks for the balance; another asks and never pays.
    let d2 = paid_deposit(&mut s, 2);
    let b2 = order(s.run(
        Command::Balance {
            deposit: d2.id,
            user: UserId(2),
        },
        BALANCE_OPENS.plus_ms(1),
    ));
    assert_eq!(s.counters(), (1, 0, 2));
    // A third, paid after the other two, lapses without a restart between.
    let d3 = paid_deposit(&mut s, 3);
    assert_eq!(s.counters(), (0, 0, 3));
    s.tick(BALANCE_CLOSES);
    assert_eq!(
        s.orders[&d3.id].status,
        OrderStatus::Forfeited,
        "forfeited by the tick alone"
    );
    assert_eq!(s.counters(), (3, 0, 0));
    assert_eq!(s.orders[&d.id].status, OrderStatus::Forfeited);
    assert_eq!(s.orders[&d2.id].status, OrderStatus::Forfeited);
    assert_eq!(s.orders[&b2.id].status, OrderStatus::Expired);
    // Again, with a restart just before the window's end.
    let mut s = Shard::new();
    let d = paid_deposit(&mut s, 1);
    let d2 = paid_deposit(&mut s, 2);
    let b2 = order(s.run(
        Command::Balance {
            deposit: d2.id,
            user: UserId(2),
        },
        BALANCE_OPENS.plus_ms(1),
    ));
    s.restart(BALANCE_CLOSES.plus_ms(-1));
    s.tick(BALANCE_CLOSES.plus_ms(-1));
    assert_eq!(s.counters(), (1, 0, 2), "not before the window's end");
    // Asked at the window's end before the shard ticked: closed.
    let late = s.inv.apply(
        Command::Balance {
            deposit: d.id,
            user: UserId(1),
        },
        BALANCE_CLOSES,
        &mut vec![],
    );
    assert_eq!(
        late,
        Reply::Refused(Refusal::BalanceClosed {
            closes_at: BALANCE_CLOSES
        })
    );
    s.tick(BALANCE_CLOSES);
    assert_eq!(s.counters(), (3, 0, 0));
    assert_eq!(s.orders[&d.id].status, OrderStatus::Forfeited);
    assert_eq!(s.orders[&d2.id].status, OrderStatus::Forfeited);
    assert_eq!(s.orders[&b2.id].status, OrderStatus::Expired);
    // Too late now, and a payment of the lapsed balance is refused.
    assert!(matches!(
        s.run(
            Command::Balance {
                deposit: d2.id,
                user: UserId(2)
            },
            BALANCE_CLOSES.plus_ms(5)
        ),
        Reply::Inactive(_)
    ));
    assert!(matches!(
        s.run(Command::Confirm { order: b2.id }, BALANCE_CLOSES.plus_ms(6)),
        Reply::Inactive(_)
    ));
    s.restart(BALANCE_CLOSES.plus_ms(7));
    assert_eq!(s.counters(), (3, 0, 0));
}

#[test]
fn the_shopper_forfeits_by_cancelling_and_the_merchant_cancels_with_a_refund() {
    let mut s = Shard::new();
    let mine = paid_deposit(&mut s, 1);
    let theirs = paid_deposit(&mut s, 2);
    let b = order(s.run(
        Command::Balance {
            deposit: theirs.id,
            user: UserId(2),
        },
        BALANCE_OPENS,
    ));
    // The shopper cancels their paid deposit through its balance order
    // or itself: forfeited, the unit back.
    match s.run(
        Command::Release {
            order: mine.id,
            by: Some(UserId(1)),
        },
        BALANCE_OPENS.plus_ms(1),
    ) {
        Reply::PreSale { deposit, balance } => {
            assert_eq!(deposit.status, OrderStatus::Forfeited);
            assert_eq!(balance, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.counters(), (2, 0, 1));
    // An admin (or the merchant) cancels the other, named by its balance
    // order: both cancelled (the deposit is refunded by payments).
    match s.run(
        Command::Release {
            order: b.id,
            by: None,
        },
        BALANCE_OPENS.plus_ms(2),
    ) {
        Reply::PreSale { deposit, balance } => {
            assert_eq!(deposit.status, OrderStatus::Cancelled);
            assert_eq!(balance.unwrap().status, OrderStatus::Cancelled);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.counters(), (3, 0, 0));
    s.restart(BALANCE_OPENS.plus_ms(3));
}

#[test]
fn a_fully_paid_pre_sale_cancelled_by_its_shopper_is_refunded_not_forfeited() {
    let mut s = Shard::new();
    let d = paid_deposit(&mut s, 1);
    let b = order(s.run(
        Command::Balance {
            deposit: d.id,
            user: UserId(1),
        },
        BALANCE_OPENS,
    ));
    order(s.run(Command::Confirm { order: b.id }, BALANCE_OPENS.plus_ms(1)));
    match s.run(
        Command::Release {
            order: d.id,
            by: Some(UserId(1)),
        },
        BALANCE_OPENS.plus_ms(2),
    ) {
        Reply::PreSale { deposit, balance } => {
            assert_eq!(deposit.status, OrderStatus::Cancelled);
            assert_eq!(balance.unwrap().status, OrderStatus::Cancelled);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.counters(), (3, 0, 0));
}

#[test]
fn deposits_are_online_only_and_an_unpaid_deposit_lapses_like_any_hold() {
    let mut s = Shard::new();
    assert_eq!(
        s.run(deposit(1, 1, PaymentMethod::Cod), T0.plus_ms(HOUR)),
        Reply::Refused(Refusal::PreSaleOnlineOnly)
    );
    let mut discounted = Reserve::new(
        UserId(1),
        SKU,
        Quantity::new(1).unwrap(),
        PaymentMethod::Online,
        "addr".into(),
        None,
        false,
    );
    discounted.discount_fen = Fen(100);
    assert_eq!(
        s.run(Command::Reserve(discounted), T0.plus_ms(HOUR)),
        Reply::Refused(Refusal::PreSaleOnlineOnly)
    );
    let d = order(s.run(deposit(1, 2, PaymentMethod::Online), T0.plus_ms(HOUR)));
    assert_eq!(d.amount_fen, Fen(20_000));
    // The balance of an unpaid deposit cannot be asked.
    assert_eq!(
        s.run(
            Command::Balance {
                deposit: d.id,
                user: UserId(1)
            },
            T0.plus_ms(HOUR + 1)
        ),
        Reply::Refused(Refusal::NotPreSale)
    );
    s.tick(T0.plus_ms(HOUR + HOLD_MS));
    assert_eq!(s.orders[&d.id].status, OrderStatus::Expired);
    assert_eq!(s.counters(), (3, 0, 0));
    // An ordinary item's order has no balance.
    assert!(Item {
        presale: None,
        ..presale_item()
    }
    .deposit_terms(1)
    .is_none());
}

#[test]
fn pre_sale_terms_are_checked_and_survive_their_encoding() {
    let good = presale_item();
    good.check_prices().unwrap();
    let p = good.presale.unwrap();
    let bad = |f: &dyn Fn(&mut PreSale)| {
        let mut i = presale_item();
        f(i.presale.as_mut().unwrap());
        i.check_prices().unwrap_err()
    };
    assert!(bad(&|p| p.deposit_fen = Fen(0)).contains("deposit_fen"));
    assert!(bad(&|p| p.worth_fen = Fen(1)).contains("worth_fen"));
    assert!(bad(&|p| p.balance_opens_at = T0).contains("balance_opens_at"));
    assert!(bad(&|p| p.balance_closes_at = BALANCE_OPENS).contains("balance_closes_at"));
    assert!(bad(&|p| p.worth_fen = Fen(3_888_800)).contains("balance of at least 1 fen"));
    assert_eq!(PreSale::decode(&PreSale::encode(Some(&p))), Ok(Some(p)));
    assert_eq!(PreSale::decode(""), Ok(None));
    assert!(PreSale::decode("1:2:3").is_err());
    for o in [
        OrderPreSale::Deposit {
            balance_fen: Fen(5),
            balance_opens_at: Timestamp(6),
            balance_closes_at: Timestamp(7),
        },
        OrderPreSale::Balance {
            deposit: OrderId(99),
        },
    ] {
        assert_eq!(
            OrderPreSale::decode(&OrderPreSale::encode(Some(&o))),
            Ok(Some(o))
        );
    }
    assert!(OrderPreSale::decode("x:1").is_err());
    assert!(OrderPreSale::decode("b:-1").is_err());
}
