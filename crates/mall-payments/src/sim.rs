//! The money simulator (VOPR-style): many shoppers and orders driven
//! through the payment [`core`](crate::core) with a simulated ledger (the
//! real `mall_ledger` state machine), inventory (the real `mall_inventory`
//! state machine and an order table) and payment providers, on simulated
//! time, from one seed. Deterministic: a seed replays exactly
//! (`MALL_SEED=<n>`, see `mall_core::seeds`).
//!
//! It injects lost, duplicated, reordered and late callbacks; provider
//! timeouts and errors (a timed-out create may still charge); ledger and
//! inventory failures; and crashes of the service at any step, after which
//! a new core recovers from what was durable (the ledger, the orders, the
//! providers' records). In-flight replies and answers die with the crash.
//!
//! After every step it checks the money invariants that must hold at all
//! times, and at the end of a run (faults off, time run out past every
//! timeout) the ones that must hold once things settle. See [`run`].

use crate::core::{
    Action, Answer, Core, CoreConfig, Input, IoReply, Now, ProviderCall, ProviderFault,
    ProviderStatus, ReqId,
};
use crate::errors::PayError;
use crate::views::{Method, PayStatus};
use crate::PayCounters;
use mall_core::rng::Rng;
use mall_core::{
    Category, Fen, Item, MerchantId, Order, OrderId, OrderStatus, PaymentMethod, Quantity, Sku,
    Timestamp, UserId,
};
use mall_inventory::{Board, Command as Inv, Effect as InvEffect, Inventory, InventoryConfig};
use mall_ledger::chart::{self, code};
use mall_ledger::{
    AccountKind, Command as Led, Effect as LedEffect, Ledger, LedgerConfig, Mode, PendingState,
    TransferId,
};
use mall_router::router::{ChannelConfig, PayMethod, Router, RouterConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How hard a run is.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Workload steps (requests and deliveries) before the run settles.
    pub steps: u64,
    pub shoppers: u64,
    pub items: u64,
    /// Crash chance per step.
    pub crash: f64,
    /// Chance of each injected fault, where it applies.
    pub fault: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            steps: 3_000,
            shoppers: 12,
            items: 6,
            crash: 0.002,
            fault: 0.04,
        }
    }
}

/// What a run did: steps taken and how often each kind of fault and
/// outcome was reached (for the coverage check).
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub steps: u64,
    pub coverage: BTreeMap<&'static str, u64>,
}

impl SimReport {
    pub fn add(&mut self, other: &SimReport) {
        self.steps += other.steps;
        for (k, v) in &other.coverage {
            *self.coverage.entry(k).or_default() += v;
        }
    }
}

/// Every kind of fault and outcome the workload must reach over a set of
/// seeds, so the simulation cannot pass vacuously.
pub const COVERAGE: &[&str] = &[
    "paid_by_channel",
    "paid_by_wallet",
    "topped_up",
    "answered_pending",
    "payment_declined",
    "hold_expired",
    "insufficient_funds",
    "payment_in_progress",
    "late_refund",
    "callback_lost",
    "callback_duplicated",
    "callback_late",
    "callback_replay_refused",
    "callback_busy",
    "create_timeout",
    "create_error",
    "status_error",
    "refund_error",
    "ledger_unavailable",
    "inventory_unavailable",
    "crash",
    "reconciled_pending",
    "watch_found_charge",
    "settled",
    "cod_collected",
    "refunded",
    "refund_answered",
    "refund_exceeds_paid",
    "cancelled",
    "cancel_refunded",
    "already_settled",
    "deposit_paid",
    "balance_paid",
    "balance_lapsed",
    "deposit_lapsed",
    "forfeited",
    "presale_cancelled",
    "checkout_paid",
    "checkout_partly_paid",
    "checkout_reconciled",
];

const CHANNELS: [(&str, &[PayMethod]); 3] = [
    ("unionpay", &[PayMethod::Card]),
    ("alipay", &[PayMethod::ThirdParty]),
    ("wechat", &[PayMethod::ThirdParty, PayMethod::Card]),
];
const HOLD_MS: i64 = 6_000;
const WATCH_MS: i64 = 20_000;
const START_WALL_MS: i64 = 1_762_790_400_000; // 2025-11-11 00:00 +08:00
/// The last item is a pre-sale: deposits until 3 s into the run, the
/// balance from 3 s to 9 s; unpaid then, the deposit is forfeited.
const BALANCE_OPENS_MS: i64 = 3_000;
const BALANCE_CLOSES_MS: i64 = 9_000;
/// Items only checkouts' lines take (plenty of stock, so that checkouts
/// of several lines are common).
const CART_ITEMS: u64 = 2;

#[derive(Clone, Debug)]
enum Event {
    /// A reply to the core incarnation `life`.
    Reply { life: u64, op: u64, reply: IoReply },
    /// A provider decides a payment it took.
    Decide { channel: usize, payment: u64 },
    /// A provider calls back (again, for `tries` > 0).
    Callback {
        channel: usize,
        payment: u64,
        tries: u32,
    },
    /// A cancelled order's money is refunded (a retry, or after a start).
    RefundCancelled { order: OrderId },
    /// After a start: every cancelled order that kept money is refunded
    /// (and every forfeited deposit paid to its merchant).
    RefundAllCancelled,
    /// A forfeited deposit's money to its merchant (the service's watch).
    Forfeit { order: OrderId },
    /// The next line of a checkout is held (lines are held a moment
    /// apart, so one line's hold can lapse before another's).
    CheckoutLine { checkout: usize, left: u32 },
}

#[derive(Clone, Debug)]
struct ProviderPayment {
    amount: u64,
    status: ProviderStatus,
}

#[derive(Default)]
struct Provider {
    payments: BTreeMap<u64, ProviderPayment>,
    /// refund id → (payment, amount)
    refunds: BTreeMap<u64, (u64, u64)>,
}

/// What a request was, to judge its answer.
#[derive(Clone, Debug)]
enum Request {
    Pay {
        order: OrderId,
        method: Method,
    },
    TopUp,
    Callback {
        channel: usize,
        payment: u64,
        tries: u32,
    },
    Settle,
    Cod,
    Refund {
        order: OrderId,
    },
    /// The refund of a cancel, under the cancel's hold (`held`) or not.
    CancelRefund {
        order: OrderId,
        held: bool,
    },
    Forfeit {
        order: OrderId,
    },
    /// A checkout's line orders paid as a whole.
    PayCheckout {
        orders: Vec<OrderId>,
    },
}

struct World {
    config: SimConfig,
    rng: Rng,
    now_us: i64,
    ledger: Ledger,
    transfers: Vec<TransferId>,
    inventory: Inventory,
    orders: BTreeMap<OrderId, Order>,
    providers: Vec<Provider>,
    core: Core,
    /// The core's incarnation: replies to an earlier one died with it.
    life: u64,
    queue: BTreeMap<(i64, u64), Event>,
    seq: u64,
    requests: BTreeMap<ReqId, (u64, Request)>,
    next_req: ReqId,
    /// Posted payments per order.
    paid: BTreeMap<OrderId, u32>,
    /// Checkouts: their shopper and line orders, and whether every line
    /// has been held (asked, at least).
    checkouts: Vec<(UserId, Vec<OrderId>, bool)>,
    faults_on: bool,
    report: SimReport,
    /// `MALL_SIM_TRACE=1`: every input and action on stderr (for a replay).
    trace: bool,
}

fn now_of(us: i64) -> Now {
    Now {
        mono_us: us,
        wall: Timestamp(START_WALL_MS + us / 1_000),
    }
}

fn new_core(seed: u64, now_us: i64) -> Core {
    let channels: Vec<ChannelConfig> = CHANNELS
        .iter()
        .map(|(name, methods)| ChannelConfig {
            name: name.to_string(),
            methods: methods.to_vec(),
            capacity_per_s: 400,
            max_concurrency: 24,
            fee_bp: 60,
            priority: 0,
        })
        .collect();
    let router = Router::new(channels, RouterConfig::default(), now_us);
    let config = CoreConfig {
        channels: CHANNELS
            .iter()
            .map(|(n, m)| (n.to_string(), m.to_vec()))
            .collect(),
        wait_ms: 2_000,
        tries_max: 3,
        watch_ms: WATCH_MS,
    };
    Core::new(
        config,
        router,
        seed,
        now_of(now_us),
        Arc::new(PayCounters::default()),
    )
}

/// Runs one seed. Panics, naming the broken invariant, if money went wrong.
pub fn run(seed: u64, config: &SimConfig) -> SimReport {
    let mut w = World::new(seed, config.clone());
    w.recover();
    let mut step = 0;
    while step < config.steps {
        w.step(true);
        step += 1;
        if step % 250 == 0 {
            w.audit();
        }
    }
    // Settle: no new work, no faults, time runs past every timeout.
    w.faults_on = false;
    let settle_until = w.now_us + (WATCH_MS + 10_000) * 1_000;
    while w.now_us < settle_until {
        if !w.step(false) {
            break;
        }
        step += 1;
    }
    w.audit();
    w.check_settled();
    w.count_partial_checkouts();
    w.report.steps = step;
    w.report
}

impl World {
    fn new(seed: u64, config: SimConfig) -> World {
        let mut rng = Rng::new(seed);
        let mut ledger = Ledger::new(LedgerConfig::default());
        let mut fixed = vec![chart::ESCROW, chart::COD];
        fixed.extend((0..CHANNELS.len()).map(chart::clearing));
        let accounts = fixed.iter().filter_map(|id| chart::account(*id)).collect();
        ledger.apply(
            Led::CreateAccounts(accounts),
            Timestamp(START_WALL_MS),
            &mut Vec::new(),
        );
        let inv_config = InventoryConfig {
            hold_timeout_ms: HOLD_MS,
            ..InventoryConfig::default()
        };
        let mut inventory = Inventory::new(0, inv_config, Arc::new(Board::default()));
        let start = Timestamp(START_WALL_MS);
        // After the items: CART_ITEMS plentiful ones, for checkouts' lines.
        for i in 0..config.items + CART_ITEMS {
            let cart = i >= config.items;
            let presale = (i + 1 == config.items).then_some(mall_core::PreSale {
                deposit_fen: Fen(50),
                worth_fen: Fen(80),
                balance_opens_at: start.plus_ms(BALANCE_OPENS_MS),
                balance_closes_at: start.plus_ms(BALANCE_CLOSES_MS),
            });
            let item = Item {
                sku: Sku(i + 1),
                merchant: MerchantId(1),
                title: format!("item {i}"),
                category: Category::ALL[0],
                price_fen: Fen(100 + rng.below(20_000) as i64),
                stock_total: if cart {
                    1_000_000
                } else {
                    3 + rng.below(6) as u32
                },
                per_user_limit: if cart { 1_000_000 } else { 2 },
                opens_at: start.plus_ms(-60_000),
                closes_at: match presale {
                    Some(p) => p.balance_opens_at,
                    None => start.plus_ms(24 * 3_600_000),
                },
                shelf_life_hours: None,
                presale,
                sale_prices: vec![],
                floor_price_fen: mall_core::Fen(1),
            };
            inventory.apply(
                Inv::PutItem {
                    item,
                    expected: None,
                },
                start,
                &mut Vec::new(),
            );
        }
        let core = new_core(rng.next_u64(), 0);
        World {
            config,
            rng,
            now_us: 0,
            ledger,
            transfers: Vec::new(),
            inventory,
            orders: BTreeMap::new(),
            providers: (0..CHANNELS.len()).map(|_| Provider::default()).collect(),
            core,
            life: 0,
            queue: BTreeMap::new(),
            seq: 0,
            requests: BTreeMap::new(),
            next_req: 1,
            paid: BTreeMap::new(),
            checkouts: Vec::new(),
            faults_on: true,
            report: SimReport::default(),
            trace: std::env::var_os("MALL_SIM_TRACE").is_some(),
        }
    }

    fn hit(&mut self, what: &'static str) {
        *self.report.coverage.entry(what).or_default() += 1;
    }

    fn fault(&mut self, what: &'static str) -> bool {
        let p = self.config.fault;
        if self.faults_on && self.rng.chance(p) {
            self.hit(what);
            return true;
        }
        false
    }

    fn wall(&self) -> Timestamp {
        now_of(self.now_us).wall
    }

    fn schedule(&mut self, after_us: i64, event: Event) {
        self.seq += 1;
        self.queue
            .insert((self.now_us + after_us.max(0), self.seq), event);
    }

    fn reply_in(&mut self, after_us: i64, op: u64, reply: IoReply) {
        let life = self.life;
        self.schedule(after_us, Event::Reply { life, op, reply });
    }

    /// One step: the next thing to happen. `work`: new requests may come.
    /// `false` when nothing is left to happen.
    fn step(&mut self, work: bool) -> bool {
        let next_event = self.queue.keys().next().map(|k| k.0);
        let next_wake = self.core.next_wake();
        let gap = 200 + self.rng.below(8_000) as i64;
        let next_work = work.then_some(self.now_us + gap);
        let Some(at) = [next_event, next_wake, next_work]
            .into_iter()
            .flatten()
            .min()
        else {
            return false;
        };
        self.now_us = self.now_us.max(at);
        let mut effects = Vec::new();
        self.inventory.tick(self.wall(), &mut effects);
        for e in &effects {
            if let InvEffect::UpdateOrder {
                status: OrderStatus::Forfeited,
                ..
            } = e
            {
                self.hit("deposit_lapsed");
            }
        }
        self.store_orders(effects);
        if next_event == Some(at) {
            let key = *self.queue.keys().next().expect("an event");
            let event = self.queue.remove(&key).expect("an event");
            self.event(event);
        } else if next_wake == Some(at) {
            self.core.tick(now_of(self.now_us));
            self.carry_out();
        } else {
            self.work();
        }
        self.check_now();
        true
    }

    fn work(&mut self) {
        if self.faults_on && self.rng.chance(self.config.crash) {
            return self.crash();
        }
        let user = UserId(1 + self.rng.below(self.config.shoppers));
        match self.rng.below(15) {
            0..=3 => {
                self.reserve(user, None);
            }
            12 => self.ask_balance(),
            13 => {
                self.checkouts.push((user, Vec::new(), false));
                let checkout = self.checkouts.len() - 1;
                let left = 2 + self.rng.below(2) as u32;
                self.checkout_line(checkout, left);
            }
            14 => self.pay_checkout(),
            9 | 10 => self.after_sale(),
            4..=8 => {
                // Now and then a checkout's line alone.
                let lines_too = self.rng.chance(0.25);
                let items = self.config.items;
                let candidates: Vec<OrderId> = self
                    .orders
                    .values()
                    .rev()
                    .filter(|o| lines_too || o.sku.0 <= items)
                    .take(40)
                    .map(|o| o.id)
                    .collect();
                let Some(order) = self.rng.pick(&candidates).copied() else {
                    self.reserve(user, None);
                    return;
                };
                let method = match self.rng.below(10) {
                    0..=2 => Method::Wallet,
                    3..=6 => Method::Card,
                    _ => Method::ThirdParty,
                };
                let owner = self.orders[&order].user;
                let req = self.request(Request::Pay { order, method });
                let read = self.orders.get(&order).cloned();
                self.input(Input::Pay {
                    req,
                    user: owner,
                    order,
                    method,
                    read,
                });
            }
            _ => {
                let req = self.request(Request::TopUp);
                let amount = 1_000 + self.rng.below(40_000);
                let method = if self.rng.chance(0.5) {
                    Method::Card
                } else {
                    Method::ThirdParty
                };
                self.input(Input::TopUp {
                    req,
                    user,
                    amount,
                    method,
                });
            }
        }
    }

    /// Holds a unit for `user`; `sku`: of this (non pre-sale) item, online
    /// (a checkout's line).
    fn reserve(&mut self, user: UserId, sku: Option<Sku>) -> Option<OrderId> {
        let line = sku.is_some();
        let sku = sku.unwrap_or_else(|| Sku(1 + self.rng.below(self.config.items)));
        let presale = sku.0 == self.config.items;
        let reserve = mall_inventory::Reserve {
            user,
            sku,
            quantity: Quantity::new(1).expect("1"),
            payment: if !presale && !line && self.rng.chance(0.15) {
                PaymentMethod::Cod
            } else {
                PaymentMethod::Online
            },
            address: "1 Sim Road".into(),
            idempotency_key: None,
            fingerprint: 0,
            early_access: false,
            expected_total_fen: None,
            discount_fen: mall_core::Fen(0),
        };
        let mut effects = Vec::new();
        let reply = self
            .inventory
            .apply(Inv::Reserve(reserve), self.wall(), &mut effects);
        self.store_orders(effects);
        match reply {
            mall_inventory::Reply::Order { order, .. } => Some(order.id),
            _ => None,
        }
    }

    /// Holds one more line of a checkout, and the next a moment later.
    fn checkout_line(&mut self, checkout: usize, left: u32) {
        let user = self.checkouts[checkout].0;
        let sku = Sku(1 + self.config.items + self.rng.below(CART_ITEMS));
        if let Some(order) = self.reserve(user, Some(sku)) {
            self.checkouts[checkout].1.push(order);
        }
        self.checkouts[checkout].2 = left <= 1;
        if left > 1 {
            let later = 1_000_000 + self.rng.below(3_500_000) as i64;
            let left = left - 1;
            self.schedule(later, Event::CheckoutLine { checkout, left });
        }
    }

    /// Pays one of the latest checkouts as a whole.
    fn pay_checkout(&mut self) {
        let ready: Vec<usize> = (0..self.checkouts.len())
            .rev()
            .filter(|c| self.checkouts[*c].2)
            .take(8)
            .collect();
        let Some(checkout) = self.rng.pick(&ready).copied() else {
            return;
        };
        let (user, orders, _) = self.checkouts[checkout].clone();
        let method = if self.rng.chance(0.5) {
            Method::Card
        } else {
            Method::ThirdParty
        };
        let reads = orders
            .iter()
            .map(|o| (*o, self.orders.get(o).cloned()))
            .collect();
        let req = self.request(Request::PayCheckout { orders });
        self.input(Input::PayCheckout {
            req,
            user,
            checkout: checkout as u64,
            method,
            reads,
        });
    }

    /// A shopper asks the balance of one of the latest paid deposits.
    fn ask_balance(&mut self) {
        let deposits: Vec<&Order> = self
            .orders
            .values()
            .rev()
            .filter(|o| {
                matches!(o.presale, Some(mall_core::OrderPreSale::Deposit { .. }))
                    && o.status == OrderStatus::Paid
            })
            .take(8)
            .collect();
        let Some(d) = self.rng.pick(&deposits).copied() else {
            return;
        };
        let ask = Inv::Balance {
            deposit: d.id,
            user: d.user,
        };
        let mut effects = Vec::new();
        self.inventory.apply(ask, self.wall(), &mut effects);
        self.store_orders(effects);
    }

    fn store_orders(&mut self, effects: Vec<InvEffect>) {
        for e in effects {
            match e {
                InvEffect::InsertOrder(o) => {
                    self.orders.insert(o.id, o);
                }
                InvEffect::UpdateOrder {
                    id,
                    status,
                    updated_at,
                } => {
                    // The service's watch: a forfeited deposit's money goes
                    // to its merchant a moment later.
                    if status == OrderStatus::Forfeited {
                        let later = 100_000 + self.rng.below(900_000) as i64;
                        self.schedule(later, Event::Forfeit { order: id });
                    }
                    if status == OrderStatus::Expired && self.orders[&id].is_balance() {
                        self.hit("balance_lapsed");
                    }
                    let o = self.orders.get_mut(&id).expect("an order updated exists");
                    o.status = status;
                    o.updated_at = updated_at;
                    if status != OrderStatus::AwaitingPayment {
                        o.expires_at = None;
                    }
                }
                // The money simulator makes no coupons.
                InvEffect::PutItem(_)
                | InvEffect::PutCoupon(_)
                | InvEffect::InsertClaim(_)
                | InvEffect::UpdateClaim { .. } => {}
            }
        }
    }

    /// Settle, collect, refund or cancel one of the latest orders.
    fn after_sale(&mut self) {
        let candidates: Vec<OrderId> = self.orders.values().rev().take(16).map(|o| o.id).collect();
        let Some(order) = self.rng.pick(&candidates).copied() else {
            return;
        };
        let read = self.orders.get(&order).cloned();
        let merchant = chart::merchant(MerchantId(1));
        let o = read.clone().expect("a stored order");
        match self.rng.below(10) {
            0..=2 if o.payment == PaymentMethod::Cod => {
                let req = self.request(Request::Cod);
                self.input(Input::CodCollected { req, read });
            }
            0..=2 => {
                let req = self.request(Request::Settle);
                self.input(Input::Settle {
                    req,
                    read,
                    merchant,
                });
            }
            3..=6 => {
                // A few keys per order: some requests are replays.
                let key = self.rng.below(3);
                let amount = match self.rng.below(3) {
                    0 => None,
                    _ => Some(1 + self.rng.below(o.amount_fen.0.max(1) as u64 / 2 + 1)),
                };
                let req = self.request(Request::Refund { order });
                self.input(Input::Refund {
                    req,
                    read,
                    amount,
                    key,
                    merchant,
                    held: false,
                });
            }
            _ => self.cancel(o),
        }
    }

    /// A cancel as the HTTP layer does it: hold the order, release it in
    /// the inventory, refund under the hold.
    fn cancel(&mut self, o: Order) {
        if self.core.hold_for_cancel(o.id).is_err() {
            return self.hit("cancel_waits");
        }
        let mut effects = Vec::new();
        let release = Inv::Release {
            order: o.id,
            by: Some(o.user),
        };
        let reply = self.inventory.apply(release, self.wall(), &mut effects);
        self.store_orders(effects);
        match reply {
            // A pre-sale cancelled as a whole (held by the order named): a
            // cancelled part's money back (the balance order's, unheld, as
            // the HTTP layer does), a forfeited deposit's to the merchant
            // (by the watch, scheduled above).
            mall_inventory::Reply::PreSale { deposit, balance } => {
                self.hit("presale_cancelled");
                self.core.release_cancel(o.id);
                for part in [Some(*deposit), balance.map(|b| *b)].into_iter().flatten() {
                    if part.status == OrderStatus::Cancelled {
                        self.schedule(1_000, Event::RefundCancelled { order: part.id });
                    }
                }
            }
            mall_inventory::Reply::Order { order, .. } => {
                self.hit("cancelled");
                let req = self.request(Request::CancelRefund {
                    order: o.id,
                    held: true,
                });
                self.input(Input::Refund {
                    req,
                    read: Some(order),
                    amount: None,
                    key: crate::core::derived("cancel", o.id.0).0,
                    merchant: chart::merchant(MerchantId(1)),
                    held: true,
                });
            }
            _ => self.core.release_cancel(o.id),
        }
    }

    /// A cancelled order's money back, unless a payment of it is still
    /// being decided (then later).
    fn refund_cancelled(&mut self, order: OrderId) {
        let owes = self
            .core
            .order_money(order)
            .is_some_and(|m| m.paid > m.refunded);
        if !owes {
            return;
        }
        if self.core.payment_live(order) {
            let later = 200_000 + self.rng.below(800_000) as i64;
            return self.schedule(later, Event::RefundCancelled { order });
        }
        let req = self.request(Request::CancelRefund { order, held: false });
        let read = self.orders.get(&order).cloned();
        self.input(Input::Refund {
            req,
            read,
            amount: None,
            key: crate::core::derived("cancel", order.0).0,
            merchant: chart::merchant(MerchantId(1)),
            held: false,
        });
    }

    /// A forfeited deposit's money to its merchant.
    fn forfeit(&mut self, order: OrderId) {
        let req = self.request(Request::Forfeit { order });
        let read = self.orders.get(&order).cloned();
        self.input(Input::Forfeit {
            req,
            read,
            merchant: chart::merchant(MerchantId(1)),
        });
    }

    fn request(&mut self, r: Request) -> ReqId {
        let req = self.next_req;
        self.next_req += 1;
        self.requests.insert(req, (self.life, r));
        req
    }

    fn input(&mut self, input: Input) {
        if self.trace {
            eprintln!("{:>10} life {} in  {input:?}", self.now_us, self.life);
        }
        self.core.handle(now_of(self.now_us), input);
        self.carry_out();
    }

    /// The service dies: everything in memory and in flight to it is lost;
    /// a new one recovers from the ledger.
    fn crash(&mut self) {
        self.hit("crash");
        if self.trace {
            eprintln!("{:>10} CRASH", self.now_us);
        }
        self.life += 1;
        let seed = self.rng.next_u64();
        self.core = new_core(seed, self.now_us);
        self.recover();
    }

    fn recover(&mut self) {
        let transfers: Vec<_> = self
            .transfers
            .iter()
            .filter_map(|id| self.ledger.transfer(*id).cloned())
            .collect();
        let pending = transfers
            .iter()
            .filter(|s| s.state == Some(PendingState::Pending))
            .count();
        for _ in 0..pending {
            self.hit("reconciled_pending");
        }
        let lines = transfers
            .iter()
            .filter(|s| {
                s.state == Some(PendingState::Pending) && s.transfer.code == code::CHECKOUT_PAYMENT
            })
            .count();
        if lines > 0 {
            self.hit("checkout_reconciled");
        }
        self.input(Input::Recover { transfers });
        self.schedule(1_000, Event::RefundAllCancelled);
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::RefundAllCancelled => {
                let cancelled: Vec<OrderId> = self
                    .orders
                    .values()
                    .filter(|o| o.status == OrderStatus::Cancelled)
                    .map(|o| o.id)
                    .collect();
                for order in cancelled {
                    self.refund_cancelled(order);
                }
                let forfeited: Vec<OrderId> = self
                    .orders
                    .values()
                    .filter(|o| o.status == OrderStatus::Forfeited)
                    .map(|o| o.id)
                    .collect();
                for order in forfeited {
                    self.forfeit(order);
                }
            }
            Event::Forfeit { order } => self.forfeit(order),
            Event::CheckoutLine { checkout, left } => self.checkout_line(checkout, left),
            Event::RefundCancelled { order } => self.refund_cancelled(order),
            Event::Reply { life, op, reply } => {
                if life == self.life {
                    self.input(Input::Reply { op, reply });
                }
            }
            Event::Decide { channel, payment } => {
                let succeeded = self.rng.chance(0.85);
                let p = self.providers[channel]
                    .payments
                    .get_mut(&payment)
                    .expect("decides a payment it took");
                p.status = if succeeded {
                    ProviderStatus::Succeeded
                } else {
                    ProviderStatus::Failed
                };
                if self.fault("callback_lost") {
                    return;
                }
                let delay = if self.fault("callback_late") {
                    2_000_000 + self.rng.below(4_000_000) as i64
                } else {
                    1_000 + self.rng.below(50_000) as i64
                };
                let callback = Event::Callback {
                    channel,
                    payment,
                    tries: 0,
                };
                self.schedule(delay, callback.clone());
                if self.fault("callback_duplicated") {
                    let again = self.rng.below(2_000_000) as i64;
                    self.schedule(again, callback);
                }
            }
            Event::Callback {
                channel,
                payment,
                tries,
            } => {
                let p = &self.providers[channel].payments[&payment];
                let (succeeded, amount) = (p.status == ProviderStatus::Succeeded, p.amount);
                let req = self.request(Request::Callback {
                    channel,
                    payment,
                    tries,
                });
                self.input(Input::Callback {
                    req,
                    channel,
                    event: format!("{channel}-{payment}"),
                    payment,
                    succeeded,
                    amount,
                });
            }
        }
    }

    fn carry_out(&mut self) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.action(action);
            }
        }
    }

    fn action(&mut self, action: Action) {
        if self.trace {
            eprintln!("{:>10} life {} out {action:?}", self.now_us, self.life);
        }
        match action {
            Action::Ledger { op, command } => {
                if self.fault("ledger_unavailable") {
                    let delay = self.rng.below(5_000) as i64;
                    return self.reply_in(delay, op, IoReply::Ledger(Err(PayError::Unavailable)));
                }
                let mut effects = Vec::new();
                let reply = self.ledger.apply(command, self.wall(), &mut effects);
                self.ledger_effects(effects);
                let delay = 500 + self.rng.below(10_000) as i64;
                self.reply_in(delay, op, IoReply::Ledger(Ok(reply)));
            }
            Action::Inventory { op, command, .. } => {
                if self.fault("inventory_unavailable") {
                    let delay = self.rng.below(5_000) as i64;
                    let reply = IoReply::Inventory(Err(PayError::Unavailable));
                    return self.reply_in(delay, op, reply);
                }
                let mut effects = Vec::new();
                let reply = self.inventory.apply(command, self.wall(), &mut effects);
                self.store_orders(effects);
                let delay = 500 + self.rng.below(5_000) as i64;
                self.reply_in(delay, op, IoReply::Inventory(Ok(reply)));
            }
            Action::ReadOrder { op, order } => {
                let read = self.orders.get(&order).cloned();
                self.input(Input::Reply {
                    op,
                    reply: IoReply::Order(Ok(read)),
                });
            }
            Action::Provider { op, channel, call } => self.provider_call(op, channel, call),
            Action::Answer { req, answer } => self.answered(req, answer),
            Action::Paid { order, .. } => {
                match order.presale {
                    Some(mall_core::OrderPreSale::Deposit { .. }) => self.hit("deposit_paid"),
                    Some(mall_core::OrderPreSale::Balance { .. }) => self.hit("balance_paid"),
                    None => {}
                }
                // Confirmed: paid. A pre-sale's part may have moved on before
                // the confirm's reply came (its deposit delivered or cancelled
                // with it, or forfeited at its window's end).
                let stored = &self.orders[&order.id];
                let moved_on = order.presale.is_some()
                    && matches!(
                        stored.status,
                        OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Forfeited
                    );
                assert!(
                    stored.status == OrderStatus::Paid || moved_on,
                    "order {} reported paid but is {}",
                    order.id,
                    stored.status.as_str()
                );
            }
            Action::Recovered => {}
            Action::Refunded { .. } => self.hit("refunded"),
        }
    }

    fn ledger_effects(&mut self, effects: Vec<LedEffect>) {
        for e in effects {
            if let LedEffect::InsertTransfer(s) = e {
                let t = &s.transfer;
                self.transfers.push(t.id);
                if let Mode::Post { .. } = t.mode {
                    if crate::core::pays_order(t.code) {
                        let n = self.paid.entry(OrderId(t.user_data)).or_default();
                        *n += 1;
                        assert!(*n <= 1, "order {} is paid twice", t.user_data);
                    }
                }
                if t.code == code::LATE_REFUND {
                    self.hit("late_refund");
                }
                for id in [t.debit, t.credit] {
                    if chart::kind_of(id) == Some(AccountKind::Wallet) {
                        let a = self.ledger.account(id).expect("a wallet in a transfer");
                        assert!(
                            a.debits_pending + a.debits_posted <= a.credits_posted,
                            "wallet {id:?} below zero"
                        );
                    }
                }
            }
        }
    }

    fn provider_call(&mut self, op: u64, channel: usize, call: ProviderCall) {
        let latency = 2_000 + self.rng.below(30_000) as i64;
        match call {
            ProviderCall::Create {
                payment, amount, ..
            } => {
                if self.fault("create_error") {
                    return self.reply_in(
                        latency,
                        op,
                        IoReply::Provider(Err(ProviderFault::Failed)),
                    );
                }
                let timeout = self.fault("create_timeout");
                let taken = !timeout || self.rng.chance(0.5);
                if taken {
                    let known = self.providers[channel].payments.insert(
                        payment,
                        ProviderPayment {
                            amount,
                            status: ProviderStatus::Pending,
                        },
                    );
                    assert!(
                        known.is_none(),
                        "payment {payment} created twice at a provider"
                    );
                    let decide_in = if self.rng.chance(0.05) {
                        1_000_000 + self.rng.below(4_000_000) as i64
                    } else {
                        10_000 + self.rng.below(150_000) as i64
                    };
                    self.schedule(decide_in, Event::Decide { channel, payment });
                }
                let reply = if timeout {
                    Err(ProviderFault::Timeout)
                } else {
                    Ok(ProviderStatus::Pending)
                };
                let delay = if timeout { 1_000_000 } else { latency };
                self.reply_in(delay, op, IoReply::Provider(reply));
            }
            ProviderCall::Status { payment } => {
                if self.fault("status_error") {
                    return self.reply_in(
                        latency,
                        op,
                        IoReply::Provider(Err(ProviderFault::Failed)),
                    );
                }
                let status = self.providers[channel]
                    .payments
                    .get(&payment)
                    .map_or(ProviderStatus::Unknown, |p| p.status);
                if status == ProviderStatus::Succeeded {
                    self.hit("watch_found_charge");
                }
                self.reply_in(latency, op, IoReply::Provider(Ok(status)));
            }
            ProviderCall::Refund {
                refund,
                payment,
                amount,
            } => {
                if self.fault("refund_error") {
                    return self.reply_in(
                        latency,
                        op,
                        IoReply::Provider(Err(ProviderFault::Failed)),
                    );
                }
                let p = &mut self.providers[channel];
                let charged = p
                    .payments
                    .get(&payment)
                    .filter(|p| p.status == ProviderStatus::Succeeded)
                    .map(|p| p.amount);
                assert!(
                    charged.is_some(),
                    "refund {refund} of payment {payment} that {} never charged",
                    CHANNELS[channel].0
                );
                if let Some(&(was_payment, was_amount)) = p.refunds.get(&refund) {
                    assert_eq!(
                        (was_payment, was_amount),
                        (payment, amount),
                        "refund {refund} re-sent with other fields"
                    );
                } else {
                    p.refunds.insert(refund, (payment, amount));
                    let refunded: u64 = p
                        .refunds
                        .values()
                        .filter(|r| r.0 == payment)
                        .map(|r| r.1)
                        .sum();
                    assert!(
                        Some(refunded) <= charged,
                        "payment {payment} refunded {refunded} of {charged:?}"
                    );
                }
                self.reply_in(
                    latency,
                    op,
                    IoReply::Provider(Ok(ProviderStatus::Succeeded)),
                );
            }
        }
    }

    fn answered(&mut self, req: ReqId, answer: Answer) {
        let (life, request) = self.requests.remove(&req).expect("an answer to a request");
        assert_eq!(life, self.life, "an answer from a core that crashed");
        match (request, answer) {
            (Request::Pay { order, method }, Answer::Payment(result)) => match result {
                Ok(view) if view.status == PayStatus::Succeeded => {
                    let o = &self.orders[&order];
                    let moved_on = o.presale.is_some()
                        && matches!(
                            o.status,
                            OrderStatus::Delivered
                                | OrderStatus::Cancelled
                                | OrderStatus::Forfeited
                        );
                    assert!(
                        o.status == OrderStatus::Paid || moved_on,
                        "order {order} answered paid but is {}",
                        o.status.as_str()
                    );
                    self.hit(if method == Method::Wallet {
                        "paid_by_wallet"
                    } else {
                        "paid_by_channel"
                    });
                }
                Ok(_) => self.hit("answered_pending"),
                Err(e) => self.hit(e.code()),
            },
            (Request::PayCheckout { orders }, Answer::Payment(result)) => match result {
                Ok(view) if view.status == PayStatus::Succeeded => {
                    // Every line was paid, but a line whose hold lapsed
                    // before its confirm (its money handed back).
                    let mut paid = 0;
                    for order in &orders {
                        let o = &self.orders[order];
                        match o.status {
                            OrderStatus::Paid => paid += 1,
                            OrderStatus::Expired => {}
                            s => {
                                panic!("checkout line {order} answered paid but is {}", s.as_str())
                            }
                        }
                    }
                    assert!(paid > 0, "a checkout answered paid with no line paid");
                    self.hit("checkout_paid");
                }
                Ok(_) => self.hit("answered_pending"),
                Err(e) => self.hit(e.code()),
            },
            (Request::TopUp, Answer::Payment(result)) => match result {
                Ok(view) if view.status == PayStatus::Succeeded => self.hit("topped_up"),
                Ok(_) => self.hit("answered_pending"),
                Err(e) => self.hit(e.code()),
            },
            (
                Request::Callback {
                    channel,
                    payment,
                    tries,
                },
                Answer::Callback(result),
            ) => match result {
                Ok(()) | Err(PayError::UnknownPayment) => {}
                Err(PayError::CallbackReplayed) => self.hit("callback_replay_refused"),
                // The provider calls again later.
                Err(_) => {
                    self.hit("callback_busy");
                    let again = 100_000 + self.rng.below(900_000) as i64;
                    let tries = tries + 1;
                    self.schedule(
                        again,
                        Event::Callback {
                            channel,
                            payment,
                            tries,
                        },
                    );
                }
            },
            (Request::Settle, Answer::Amount(result)) => match result {
                Ok(_) => self.hit("settled"),
                Err(e) => self.hit(e.code()),
            },
            (Request::Forfeit { order }, Answer::Amount(result)) => match result {
                Ok(_) => self.hit("forfeited"),
                Err(PayError::AlreadySettled) => {}
                Err(PayError::NotPaid) => panic!("forfeited deposit {order} was never paid"),
                // Busy (its post on the way) or a store away: the watch asks again.
                Err(e) => {
                    self.hit(e.code());
                    let later = 200_000 + self.rng.below(800_000) as i64;
                    self.schedule(later, Event::Forfeit { order });
                }
            },
            (Request::Cod, Answer::Amount(result)) => match result {
                Ok(_) => self.hit("cod_collected"),
                Err(e) => self.hit(e.code()),
            },
            (Request::Refund { order }, Answer::Refund(result)) => match result {
                Ok(view) => {
                    assert!(
                        view.refunded_total_fen <= view.paid_fen,
                        "order {order}: refunded {} of {}",
                        view.refunded_total_fen,
                        view.paid_fen
                    );
                    self.hit("refund_answered");
                }
                Err(e) => self.hit(e.code()),
            },
            (Request::CancelRefund { order, held }, Answer::Refund(result)) => {
                if held {
                    self.core.release_cancel(order);
                }
                match result {
                    Ok(_) => self.hit("cancel_refunded"),
                    Err(PayError::NotPaid) => {}
                    Err(e) => {
                        self.hit(e.code());
                        let later = 200_000 + self.rng.below(800_000) as i64;
                        self.schedule(later, Event::RefundCancelled { order });
                    }
                }
            }
            (request, answer) => panic!("{request:?} was answered {answer:?}"),
        }
    }

    /// Checkout payments that paid some lines and handed the others back
    /// (a line's hold lapsed before its confirm).
    fn count_partial_checkouts(&mut self) {
        let mut tries: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
        for id in &self.transfers {
            let s = self.ledger.transfer(*id).expect("recorded");
            if s.transfer.code != code::CHECKOUT_PAYMENT || s.state.is_none() {
                continue;
            }
            let t = tries
                .entry(crate::core::payment_of(&s.transfer))
                .or_default();
            t.0 |= s.state == Some(PendingState::Posted);
            t.1 |= s.state == Some(PendingState::Voided);
        }
        for (posted, voided) in tries.into_values() {
            if posted && voided {
                self.hit("checkout_partly_paid");
            }
        }
    }

    /// Invariants at every step.
    fn check_now(&self) {
        self.ledger.check_totals();
    }

    fn audit(&self) {
        if let Err(e) = self.ledger.audit() {
            panic!("ledger audit: {e}");
        }
        if let Err(e) = self.inventory.audit() {
            panic!("inventory audit: {e}");
        }
        // Refunds never exceed payments.
        let mut per_order: BTreeMap<u64, (u64, u64, u64, u64)> = BTreeMap::new();
        for id in &self.transfers {
            let s = self.ledger.transfer(*id).expect("recorded");
            let t = &s.transfer;
            let e = per_order.entry(t.user_data).or_default();
            match (t.code, t.mode) {
                (c, Mode::Post { .. }) if crate::core::pays_order(c) => e.0 += t.amount,
                (code::COD_COLLECTION, _) => e.0 += t.amount,
                (code::REFUND, _) => e.1 += t.amount,
                (code::LATE_CAPTURE, _) => e.2 += t.amount,
                (code::LATE_REFUND, _) => e.3 += t.amount,
                _ => {}
            }
        }
        for (order, (paid, refunded, captured, returned)) in per_order {
            assert!(
                refunded <= paid,
                "order {order}: refunded {refunded} of {paid}"
            );
            assert_eq!(
                captured, returned,
                "order {order}: late charges not all returned"
            );
        }
    }

    /// Once settled: nothing pending, every charge matched, every order's
    /// status agrees with its money, the core idle.
    fn check_settled(&self) {
        assert!(
            self.core.is_idle(),
            "the core is not idle after settling ({} ops in flight)",
            self.core.ops_in_flight()
        );
        let stuck: Vec<u64> = self
            .transfers
            .iter()
            .filter(|id| {
                self.ledger.transfer(**id).expect("recorded").state == Some(PendingState::Pending)
            })
            .map(|id| id.0)
            .collect();
        assert!(stuck.is_empty(), "money stuck pending: transfers {stuck:?}");
        for (c, p) in self.providers.iter().enumerate() {
            for (payment, pp) in &p.payments {
                if pp.status != ProviderStatus::Succeeded {
                    continue;
                }
                // The payment's transfers: its own, or a checkout's lines.
                let lines: Vec<_> = crate::core::try_transfer_ids(*payment)
                    .into_iter()
                    .filter_map(|id| self.ledger.transfer(id))
                    .filter(|s| crate::core::of_try(*payment, &s.transfer))
                    .collect();
                let total: u64 = lines.iter().map(|s| s.transfer.amount).sum();
                assert_eq!(
                    total, pp.amount,
                    "payment {payment}: its transfers' amounts"
                );
                for s in lines {
                    let line = &s.transfer;
                    let posted = s.state == Some(PendingState::Posted);
                    let refund_id = crate::core::derived("late_refund", line.id.0);
                    let returned = self.ledger.transfer(refund_id).is_some()
                        && p.refunds.get(&refund_id.0) == Some(&(*payment, line.amount));
                    assert!(
                        posted || returned,
                        "{} charged payment {payment} ({} fen): transfer {} neither paid for anything nor handed back",
                        CHANNELS[c].0,
                        line.amount,
                        line.id.0
                    );
                    assert!(
                        !(posted && returned),
                        "payment {payment}: transfer {} both posted and handed back",
                        line.id.0
                    );
                }
            }
            for refund in p.refunds.keys() {
                let s = self.ledger.transfer(TransferId(*refund));
                assert!(
                    s.is_some_and(|s| matches!(s.transfer.code, code::REFUND | code::LATE_REFUND)),
                    "provider refund {refund} has no ledger refund"
                );
            }
        }
        let mut money: BTreeMap<u64, Money> = BTreeMap::new();
        for id in &self.transfers {
            let t = &self.ledger.transfer(*id).expect("recorded").transfer;
            let m = money.entry(t.user_data).or_default();
            match (t.code, t.mode) {
                (c, Mode::Post { .. }) if crate::core::pays_order(c) => m.paid += t.amount,
                (code::COD_COLLECTION, _) => m.paid += t.amount,
                (code::REFUND, _) if t.debit == chart::ESCROW => m.from_escrow += t.amount,
                (code::REFUND, _) => m.from_merchant += t.amount,
                (code::SETTLEMENT, _) => m.settled = Some(t.amount),
                (code::FORFEIT, _) => m.forfeited = Some(t.amount),
                _ => {}
            }
        }
        for o in self.orders.values() {
            let paid = self.paid.get(&o.id).copied().unwrap_or(0);
            let m = money.get(&o.id.0).copied().unwrap_or_default();
            let online = o.payment == PaymentMethod::Online;
            let ok = match o.status {
                OrderStatus::Paid => paid == 1,
                OrderStatus::Delivered if online => paid == 1,
                OrderStatus::AwaitingPayment | OrderStatus::Expired => paid == 0,
                // Paid and cancelled: all of it handed back.
                OrderStatus::Cancelled => paid == 0 || m.from_escrow + m.from_merchant == m.paid,
                // A forfeited deposit: paid, and what was not refunded went
                // to the merchant.
                OrderStatus::Forfeited => {
                    paid == 1
                        && m.forfeited.unwrap_or(0) == m.paid - m.from_escrow
                        && m.settled.is_none()
                }
                _ => paid == 0,
            };
            assert!(
                ok,
                "order {} is {} with {paid} posted payments and {m:?}",
                o.id,
                o.status.as_str()
            );
            let in_escrow = m.paid as i128
                - m.from_escrow as i128
                - i128::from(m.settled.unwrap_or(0))
                - i128::from(m.forfeited.unwrap_or(0));
            assert!(in_escrow >= 0, "order {}: escrow short ({m:?})", o.id);
            if let Some(settled) = m.settled {
                assert_eq!(
                    in_escrow, 0,
                    "order {}: settled, money left in escrow ({m:?})",
                    o.id
                );
                assert!(
                    m.from_merchant <= settled,
                    "order {}: the merchant refunded more than it got ({m:?})",
                    o.id
                );
            }
        }
    }
}

/// An order's money as the ledger has it.
#[derive(Clone, Copy, Debug, Default)]
struct Money {
    paid: u64,
    from_escrow: u64,
    from_merchant: u64,
    settled: Option<u64>,
    forfeited: Option<u64>,
}
