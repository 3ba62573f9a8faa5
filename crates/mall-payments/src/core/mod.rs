//! The payment core: every decision about money, and no I/O.
//!
//! The core is a state machine in the style of the channel router (and of
//! quinn-proto): it takes [`Input`]s (a payment request, a provider's
//! callback, a ledger or inventory reply, a provider's answer) and the time
//! (`now`), and emits [`Action`]s (ledger commands, inventory commands,
//! order reads, provider calls, answers). It reads no clock, draws no OS
//! randomness (ids come from a seeded generator) and holds no lock; the
//! service around it ([`crate::Payments`]) only carries actions out and
//! feeds their results back, and the money simulator ([`crate::sim`])
//! does the same with simulated parts, deterministically.
//!
//! Where each part lives:
//! - [`attempts`]: a payment's tries at channels, from the request to the
//!   router, the ledger record and the provider, and retries across
//!   channels;
//! - [`decide`]: deciding a try's pending transfer under its claim, for a
//!   callback, a try given up, a late success or a restart;
//! - [`callbacks`]: a provider's callback, taken once;
//! - [`watch`]: tries given up whose provider may still charge, and
//!   provider refunds to re-send;
//! - [`wallet`]: payments from a shopper's wallet;
//! - [`recovery`]: the index rebuilt from the ledger at a start, and what
//!   a crash left pending.
//!
//! Every I/O the core starts is an *op* with an id; its reply comes back as
//! [`Input::Reply`] with that id. A reply for an op the core no longer
//! knows is ignored.

mod after_sale;
mod attempts;
mod callbacks;
mod decide;
mod recovery;
mod wallet;
mod watch;

use crate::errors::PayError;
use crate::views::{Method, PaymentView, RefundView};
use crate::PayCounters;
use mall_core::{Order, OrderId, Timestamp, UserId};
use mall_inventory::Command as Inv;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{
    AccountId, Command as Led, Mode, Reply as LedReply, Stored, Transfer, TransferId,
};
use mall_router::router::{PayMethod, Router};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub use after_sale::refund_id;
pub use decide::ProviderRefund;

/// The time, twice: `mono_us` (monotonic, for the router and timers) and
/// `wall` (the mall's clock, for holds and watches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono_us: i64,
    pub wall: Timestamp,
}

/// A request waiting for its answer.
pub type ReqId = u64;
/// An I/O the core started.
pub type OpId = u64;

/// What happens to the core.
#[derive(Clone, Debug)]
pub enum Input {
    /// Pay `order` (as the caller read it just before) for `user`.
    Pay {
        req: ReqId,
        user: UserId,
        order: OrderId,
        method: Method,
        read: Option<Order>,
    },
    /// Pay the line orders of checkout `checkout` (each as the caller read
    /// it just before) for `user`, with one provider payment.
    PayCheckout {
        req: ReqId,
        user: UserId,
        checkout: u64,
        method: Method,
        reads: Vec<(OrderId, Option<Order>)>,
    },
    /// Top up `user`'s wallet (amount checked by the caller).
    TopUp {
        req: ReqId,
        user: UserId,
        amount: u64,
        method: Method,
    },
    /// A provider's callback, its signature verified and its body read.
    Callback {
        req: ReqId,
        channel: usize,
        event: String,
        payment: u64,
        succeeded: bool,
        amount: u64,
    },
    /// Deliver and settle `order` (as read) to its merchant's account.
    Settle {
        req: ReqId,
        read: Option<Order>,
        merchant: AccountId,
    },
    /// A forfeited pre-sale deposit (as read): its money to its merchant.
    Forfeit {
        req: ReqId,
        read: Option<Order>,
        merchant: AccountId,
    },
    /// Pays `merchant` the platform's share `amount` of the discounts of a
    /// settled order (promotions → merchant), once.
    PlatformShare {
        req: ReqId,
        read: Option<Order>,
        merchant: AccountId,
        amount: u64,
    },
    /// The courier collected the cash of a COD order (as read).
    CodCollected { req: ReqId, read: Option<Order> },
    /// Refund `amount` (all that is left: `None`) of an order (as read),
    /// named by `key`. `held`: the caller holds the order already (a cancel).
    Refund {
        req: ReqId,
        read: Option<Order>,
        amount: Option<u64>,
        key: u64,
        merchant: AccountId,
        held: bool,
    },
    /// The reply to an op.
    Reply { op: OpId, reply: IoReply },
    /// At a start: every transfer of the ledger.
    Recover { transfers: Vec<Stored> },
}

/// The result of an op.
#[derive(Clone, Debug)]
pub enum IoReply {
    /// `Err`: `Unavailable` or `Overloaded` (nothing was done).
    Ledger(Result<LedReply, PayError>),
    Inventory(Result<InvReply, PayError>),
    Order(Result<Option<Order>, PayError>),
    /// A create (`Ok(Pending)`: taken), a status query or a refund (`Ok`: done).
    Provider(Result<ProviderStatus, ProviderFault>),
}

/// What a provider says about one payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    Pending,
    Succeeded,
    Failed,
    Unknown,
}

/// A provider call that did not go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderFault {
    /// No answer in time: it may or may not have acted.
    Timeout,
    /// Refused, unreachable or garbled.
    Failed,
}

/// A call to a payment provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderCall {
    Create {
        payment: u64,
        amount: u64,
        method: Method,
    },
    Status {
        payment: u64,
    },
    Refund {
        refund: u64,
        payment: u64,
        amount: u64,
    },
}

/// What the core asks for.
#[derive(Clone, Debug)]
pub enum Action {
    Ledger {
        op: OpId,
        command: Led,
    },
    Inventory {
        op: OpId,
        order: OrderId,
        command: Inv,
    },
    /// Read an order as stored.
    ReadOrder {
        op: OpId,
        order: OrderId,
    },
    Provider {
        op: OpId,
        channel: usize,
        call: ProviderCall,
    },
    Answer {
        req: ReqId,
        answer: Answer,
    },
    /// An order was paid (for the event log).
    Paid {
        order: Order,
        amount: u64,
        channel: String,
    },
    /// A refund was made (for the event log).
    Refunded {
        order: Order,
        amount: u64,
    },
    /// What the start found pending is decided.
    Recovered,
}

#[derive(Clone, Debug)]
pub enum Answer {
    Payment(Result<PaymentView, PayError>),
    Callback(Result<(), PayError>),
    /// A settlement or a COD collection: the amount moved.
    Amount(Result<u64, PayError>),
    Refund(Result<RefundView, PayError>),
}

impl Answer {
    /// The answer to a payment or top-up.
    pub fn payment(self) -> Result<PaymentView, PayError> {
        match self {
            Answer::Payment(result) => result,
            _ => Err(PayError::Unavailable),
        }
    }

    /// The answer to a callback.
    pub fn callback(self) -> Result<(), PayError> {
        match self {
            Answer::Callback(result) => result,
            _ => Err(PayError::Unavailable),
        }
    }

    /// The answer to a settlement or a COD collection.
    pub fn amount(self) -> Result<u64, PayError> {
        match self {
            Answer::Amount(result) => result,
            _ => Err(PayError::Unavailable),
        }
    }

    /// The answer to a refund.
    pub fn refund(self) -> Result<RefundView, PayError> {
        match self {
            Answer::Refund(result) => result,
            _ => Err(PayError::Unavailable),
        }
    }
}

/// What the core needs to know of the setup.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Per channel, by index: its name and the methods it takes.
    pub channels: Vec<(String, Vec<PayMethod>)>,
    pub wait_ms: u64,
    pub tries_max: usize,
    pub watch_ms: i64,
}

/// Where a try's money is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Purpose {
    Order(OrderId),
    /// A checkout's line orders, paid as a whole (each line order is held
    /// by the checkout's try too).
    Checkout(u64),
    /// A top-up, named by its first try.
    TopUp(u64),
}

/// The money of one paid order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderMoney {
    pub payer: AccountId,
    /// The try's pending transfer that paid it.
    pub paid_by: TransferId,
    /// The provider's payment it came through (for refunds): the try's
    /// id, also for a line of a checkout paid as a whole.
    pub payment: u64,
    pub paid: u64,
    pub refunded: u64,
    pub settled: bool,
    /// The payment's money is posted (a paid order's post may still be on
    /// its way: refunds and settlement wait for it).
    pub posted: bool,
}

type Final = Result<(u64, Option<usize>), PayError>;

/// What an op's reply is for.
#[derive(Clone, Debug)]
enum Op {
    /// A top-up's wallet account, before its try is recorded.
    TryAccounts(u64),
    /// A try's pending transfer.
    Record(u64),
    /// A try handed to its provider.
    Create(u64),
    /// The current step of the decision holding this claim.
    Decide(u64),
    /// One line's read or confirm in the current step of a decision:
    /// `(try, line, round)` (a reply of an earlier round is dropped).
    DecideLine(u64, usize, u64),
    /// The current step of a wallet payment.
    Wallet(ReqId),
    /// The current step of a settlement, collection or refund.
    AfterSale(ReqId),
    /// A paid order's posting, retried until it lands.
    PostPaid(Stored),
    ProviderRefund(ProviderRefund),
    /// A watched try's status: `(try, channel, until_ms)`.
    Status(u64, usize, i64),
}

/// What a timer does when it fires.
#[derive(Clone, Debug)]
enum Timer {
    /// A request waited `wait_ms`: it is answered "pending".
    Waiter {
        req: ReqId,
        purpose: Purpose,
    },
    /// A decision's ledger step, again.
    DecideAgain(u64),
    /// A try given up whose decision failed: give it up again.
    AbandonAgain(u64, Option<usize>),
    /// A pending transfer a start found, decided again.
    ReconcileAgain(Vec<Stored>),
    PostPaidAgain(Stored),
    Sweep,
}

/// Tries watched at most; beyond, the oldest are dropped.
const WATCH_MAX: usize = 500_000;
/// Provider status queries per sweep, at most.
const SWEEP_QUERIES_MAX: usize = 2_000;
/// Status queries in flight at once, at most.
const STATUS_IN_FLIGHT_MAX: usize = 64;
const SWEEP_EVERY_US: i64 = 2_000_000;
const EVENTS_REMEMBERED: usize = 200_000;
/// Requests waiting on one payment's outcome, at most.
const WAITERS_PER_PAYMENT_MAX: usize = 16;
/// Ledger steps of a decision tried, at most, 50 ms apart.
const LEDGER_TRIES: u8 = 5;
const LEDGER_RETRY_US: i64 = 50_000;
const AGAIN_US: i64 = 1_000_000;
const ID_MASK: u64 = (1 << 53) - 1; // ids stay exact in JSON numbers
/// A checkout's try has an id with these bits clear; line `k`'s pending
/// transfer is `try + k + 1`. Every other try's id has some of them set.
pub(crate) const LINE_MASK: u64 = 63;
/// Line orders of one checkout payment, at most.
pub const CHECKOUT_PAY_LINES_MAX: usize = LINE_MASK as usize;

/// The provider payment a pending transfer belongs to.
pub(crate) fn payment_of(t: &Transfer) -> u64 {
    if t.code == code::CHECKOUT_PAYMENT {
        t.id.0 & !LINE_MASK
    } else {
        t.id.0
    }
}

/// The ids a try's pending transfers may have: its own (a single order or
/// a top-up), or its lines' (a checkout's try).
pub(crate) fn try_transfer_ids(id: u64) -> Vec<TransferId> {
    let mut ids = vec![TransferId(id)];
    if id & LINE_MASK == 0 {
        ids.extend((1..=LINE_MASK).map(|k| TransferId(id + k)));
    }
    ids
}

/// Whether a stored transfer is one of try `id`'s.
pub(crate) fn of_try(id: u64, t: &Transfer) -> bool {
    t.id.0 == id || (t.code == code::CHECKOUT_PAYMENT && t.id.0 & !LINE_MASK == id)
}

/// A transfer id derived from what it does, so doing it again is a replay.
pub(crate) fn derived(tag: &str, id: u64) -> TransferId {
    transfer_id(&[tag.as_bytes(), &id.to_le_bytes()])
}

/// A transfer id that is a fingerprint of `parts` (exact in JSON, never 0).
fn transfer_id(parts: &[&[u8]]) -> TransferId {
    TransferId((mall_core::fingerprint(parts) & ID_MASK).max(1))
}

pub(crate) fn single(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    amount: u64,
    code: u16,
    user_data: u64,
) -> Transfer {
    Transfer {
        id,
        debit,
        credit,
        amount,
        mode: Mode::Single,
        linked: false,
        code,
        user_data,
    }
}

/// A pending transfer this core made, as the ledger would store it
/// (without reading it back).
pub(crate) fn pending(transfer: Transfer, created_at: Timestamp) -> Stored {
    Stored {
        seq: 0,
        transfer,
        created_at,
        state: Some(mall_ledger::PendingState::Pending),
    }
}

/// The post (in full) or void of a pending transfer; derived ids, so a
/// repeat is a replay.
pub(crate) fn resolution(pending: &Transfer, post: bool) -> Transfer {
    let (id, mode, amount) = if post {
        (
            derived("post", pending.id.0),
            Mode::Post {
                pending: pending.id,
            },
            pending.amount,
        )
    } else {
        (
            derived("void", pending.id.0),
            Mode::Void {
                pending: pending.id,
            },
            0,
        )
    };
    Transfer {
        id,
        debit: pending.debit,
        credit: pending.credit,
        amount,
        mode,
        linked: false,
        code: pending.code,
        user_data: pending.user_data,
    }
}

/// The payment core. See the module documentation.
pub struct Core {
    config: CoreConfig,
    router: Router,
    rng: mall_core::rng::Rng,
    now: Now,
    counters: Arc<PayCounters>,
    /// Tries queued or with a provider.
    tries: FxHashMap<u64, attempts::Try>,
    /// The live try of each purpose (an order has at most one); 0 marks a
    /// wallet payment or a cancel holding the order.
    live: FxHashMap<Purpose, u64>,
    waiters: FxHashMap<Purpose, Vec<ReqId>>,
    /// Tries (and orders, by id with the top bit) someone is deciding now.
    claims: FxHashSet<u64>,
    decisions: FxHashMap<u64, decide::Decision>,
    /// Rounds of per-line I/O started by decisions (see [`Op::DecideLine`]).
    rounds: u64,
    wallets: FxHashMap<ReqId, wallet::WalletPay>,
    after: FxHashMap<ReqId, after_sale::AfterSale>,
    orders: FxHashMap<OrderId, OrderMoney>,
    /// Callback events taken, oldest first (bounded).
    events_seen: FxHashSet<String>,
    events_order: VecDeque<String>,
    /// Ledger accounts known to exist.
    accounts: FxHashSet<AccountId>,
    /// Tries given up whose provider may still charge: `(try, channel, until_ms)`.
    watch: VecDeque<(u64, usize, i64)>,
    statuses_in_flight: usize,
    /// Provider refunds to re-send (recorded in the ledger already).
    provider_refunds: VecDeque<ProviderRefund>,
    /// Pending transfers of the start not decided yet.
    reconciling: usize,
    ops: FxHashMap<OpId, Op>,
    next_op: OpId,
    timers: BTreeMap<(i64, u64), Timer>,
    next_timer: u64,
    actions: Vec<Action>,
}

impl Core {
    /// A core with no state yet; `seed` draws its ids (a fresh one each start).
    pub fn new(
        config: CoreConfig,
        router: Router,
        seed: u64,
        now: Now,
        counters: Arc<PayCounters>,
    ) -> Core {
        let mut core = Core {
            config,
            router,
            rng: mall_core::rng::Rng::new(seed),
            now,
            counters,
            tries: FxHashMap::default(),
            live: FxHashMap::default(),
            waiters: FxHashMap::default(),
            claims: FxHashSet::default(),
            decisions: FxHashMap::default(),
            rounds: 0,
            wallets: FxHashMap::default(),
            after: FxHashMap::default(),
            orders: FxHashMap::default(),
            events_seen: FxHashSet::default(),
            events_order: VecDeque::new(),
            accounts: FxHashSet::default(),
            watch: VecDeque::new(),
            statuses_in_flight: 0,
            provider_refunds: VecDeque::new(),
            reconciling: 0,
            ops: FxHashMap::default(),
            next_op: 1,
            timers: BTreeMap::new(),
            next_timer: 0,
            actions: Vec::new(),
        };
        core.at(now.mono_us + SWEEP_EVERY_US, Timer::Sweep);
        core
    }

    /// Takes one input at `now`; the actions it leads to are in [`Core::take_actions`].
    pub fn handle(&mut self, now: Now, input: Input) {
        self.advance(now);
        match input {
            Input::Pay {
                req,
                user,
                order,
                method,
                read,
            } => self.pay(req, user, order, method, read),
            Input::PayCheckout {
                req,
                user,
                checkout,
                method,
                reads,
            } => self.pay_checkout(req, user, checkout, method, reads),
            Input::TopUp {
                req,
                user,
                amount,
                method,
            } => self.top_up(req, user, amount, method),
            Input::Callback {
                req,
                channel,
                event,
                payment,
                succeeded,
                amount,
            } => self.callback(req, channel, event, payment, succeeded, amount),
            Input::Settle {
                req,
                read,
                merchant,
            } => self.settle(req, read, merchant),
            Input::Forfeit {
                req,
                read,
                merchant,
            } => self.forfeit(req, read, merchant),
            Input::PlatformShare {
                req,
                read,
                merchant,
                amount,
            } => self.platform_share(req, read, merchant, amount),
            Input::CodCollected { req, read } => self.cod_collected(req, read),
            Input::Refund {
                req,
                read,
                amount,
                key,
                merchant,
                held,
            } => self.refund(req, read, amount, key, merchant, held),
            Input::Reply { op, reply } => self.reply(op, reply),
            Input::Recover { transfers } => self.recover(transfers),
        }
    }

    /// Lets time pass: the router's timeouts, queue deadlines and releases,
    /// and due timers.
    pub fn tick(&mut self, now: Now) {
        self.advance(now);
        let mut events = Vec::new();
        self.router.poll(self.now.mono_us, &mut events);
        for event in events {
            self.router_event(event);
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > self.now.mono_us {
                break;
            }
            let timer = entry.remove();
            self.fire(timer);
        }
    }

    /// When [`Core::tick`] should next be called (monotonic µs).
    pub fn next_wake(&self) -> Option<i64> {
        let timer = self.timers.keys().next().map(|k| k.0);
        match (self.router.next_wake(), timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The actions emitted since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Ops started and not answered yet (the simulator checks none is lost).
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Nothing in hand: no try, decision, wallet payment, op or waiter.
    pub fn is_idle(&self) -> bool {
        self.tries.is_empty()
            && self.decisions.is_empty()
            && self.wallets.is_empty()
            && self.after.is_empty()
            && self.ops.is_empty()
            && self.waiters.values().all(Vec::is_empty)
            && self.provider_refunds.is_empty()
    }

    fn advance(&mut self, now: Now) {
        self.now = Now {
            mono_us: now.mono_us.max(self.now.mono_us),
            wall: now.wall,
        };
    }

    /// A fresh id (for a try other than a checkout's: some of [`LINE_MASK`] set).
    fn random_id(&mut self) -> u64 {
        (self.rng.next_u64() & ID_MASK) | 1
    }

    fn op(&mut self, op: Op) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(id, op);
        id
    }

    fn at(&mut self, mono_us: i64, timer: Timer) {
        self.next_timer += 1;
        self.timers.insert((mono_us, self.next_timer), timer);
    }

    fn ledger(&mut self, op: Op, command: Led) {
        let op = self.op(op);
        self.actions.push(Action::Ledger { op, command });
    }

    fn transfers(&mut self, op: Op, transfers: Vec<Transfer>) {
        self.ledger(op, Led::CreateTransfers(transfers));
    }

    fn inventory(&mut self, op: Op, order: OrderId, command: Inv) {
        let op = self.op(op);
        self.actions.push(Action::Inventory { op, order, command });
    }

    fn read_order(&mut self, op: Op, order: OrderId) {
        let op = self.op(op);
        self.actions.push(Action::ReadOrder { op, order });
    }

    fn provider(&mut self, op: Op, channel: usize, call: ProviderCall) {
        let op = self.op(op);
        self.actions.push(Action::Provider { op, channel, call });
    }

    fn answer(&mut self, req: ReqId, answer: Answer) {
        self.actions.push(Action::Answer { req, answer });
    }

    fn channel_name(&self, channel: usize) -> String {
        self.config
            .channels
            .get(channel)
            .map_or_else(|| format!("#{channel}"), |c| c.0.clone())
    }

    fn reply(&mut self, op: OpId, reply: IoReply) {
        let Some(what) = self.ops.remove(&op) else {
            return;
        };
        match what {
            Op::TryAccounts(id) => self.try_accounts_made(id, reply),
            Op::Record(id) => self.recorded(id, reply),
            Op::Create(id) => self.created(id, reply),
            Op::Decide(id) => self.decide_reply(id, reply),
            Op::DecideLine(id, line, round) => self.decide_line_reply(id, line, round, reply),
            Op::Wallet(req) => self.wallet_reply(req, reply),
            Op::AfterSale(req) => self.after_reply(req, reply),
            Op::PostPaid(pending) => match reply {
                IoReply::Ledger(Ok(LedReply::Transfers(r))) if r.iter().all(Result::is_ok) => {
                    self.record_paid(&pending.transfer, true);
                }
                other => {
                    tracing::warn!(?other, "posting a paid order's money; retrying");
                    self.at(self.now.mono_us + AGAIN_US, Timer::PostPaidAgain(pending));
                }
            },
            Op::ProviderRefund(r) => self.provider_refunded(r, reply),
            Op::Status(id, channel, until) => self.status_reply(id, channel, until, reply),
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Waiter { req, purpose } => self.waiter_due(req, purpose),
            Timer::DecideAgain(id) => self.decide_step_again(id),
            Timer::AbandonAgain(id, channel) => {
                self.decide_start(id, channel, decide::Why::Abandon, Vec::new())
            }
            Timer::ReconcileAgain(p) => self.reconcile_one(p, false),
            Timer::PostPaidAgain(p) => self.post_paid(p),
            Timer::Sweep => {
                self.sweep();
                self.at(self.now.mono_us + SWEEP_EVERY_US, Timer::Sweep);
            }
        }
    }

    /// Posts a confirmed order's pending transfer, retrying until the
    /// ledger takes it: a paid order always has its money.
    fn post_paid(&mut self, pending: Stored) {
        let post = resolution(&pending.transfer, true);
        self.transfers(Op::PostPaid(pending), vec![post]);
    }

    /// The order of pending transfer `t` is paid by it; `posted`: its
    /// money is posted already.
    fn record_paid(&mut self, t: &Transfer, posted: bool) {
        let payment = payment_of(t);
        self.record_money(
            OrderId(t.user_data),
            t.debit,
            t.id,
            payment,
            t.amount,
            posted,
        )
    }

    fn record_money(
        &mut self,
        order: OrderId,
        payer: AccountId,
        paid_by: TransferId,
        payment: u64,
        amount: u64,
        posted: bool,
    ) {
        let m = self.orders.entry(order).or_insert(OrderMoney {
            payer,
            paid_by,
            payment,
            paid: amount,
            refunded: 0,
            settled: false,
            posted,
        });
        if m.paid_by == paid_by {
            m.posted |= posted;
        }
    }

    fn claim(&mut self, id: u64) -> bool {
        self.claims.insert(id)
    }

    // ---- the order-money index and claims -----------------------------

    /// The money of a paid order.
    pub fn order_money(&self, order: OrderId) -> Option<OrderMoney> {
        self.orders.get(&order).copied()
    }

    /// Takes the claim on an order's money (refunds, settlement,
    /// collection): one at a time. Order claims carry the top bit; try ids
    /// stay below 2^53.
    pub(super) fn claim_order(&mut self, order: OrderId) -> bool {
        self.claim(order_claim(order))
    }

    pub(super) fn release_order(&mut self, order: OrderId) {
        self.claims.remove(&order_claim(order));
    }

    /// Holds an order still for a cancel: no payment of it is live or can
    /// start, and its money is claimed. `Err(true)`: a payment is live;
    /// `Err(false)`: its money is claimed by someone else.
    pub fn hold_for_cancel(&mut self, order: OrderId) -> Result<(), bool> {
        let purpose = Purpose::Order(order);
        if self.live.contains_key(&purpose) {
            return Err(true);
        }
        if !self.claim_order(order) {
            return Err(false);
        }
        self.live.insert(purpose, 0);
        Ok(())
    }

    pub fn release_cancel(&mut self, order: OrderId) {
        self.release_order(order);
        self.live.remove(&Purpose::Order(order));
    }

    /// A payment of the order is live (or a cancel holds it).
    pub fn payment_live(&self, order: OrderId) -> bool {
        self.live.contains_key(&Purpose::Order(order))
    }

    pub(super) fn set_settled(&mut self, order: OrderId) {
        if let Some(m) = self.orders.get_mut(&order) {
            m.settled = true;
        }
    }

    /// Adds a refund; the order's total refunded.
    pub(super) fn add_refunded(&mut self, order: OrderId, amount: u64) -> u64 {
        let m = self
            .orders
            .get_mut(&order)
            .expect("refunds are of paid orders");
        m.refunded += amount;
        m.refunded
    }

    /// Cash collected for a COD order by transfer `id`.
    pub(super) fn record_cod(&mut self, order: OrderId, id: TransferId, amount: u64) {
        self.record_money(order, chart::COD, id, id.0, amount, true);
    }

    /// Orders holding money not refunded (a start refunds cancelled ones).
    pub fn orders_with_money(&self) -> Vec<OrderId> {
        self.orders
            .iter()
            .filter(|(_, m)| m.paid > m.refunded)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Accounts known to exist.
    pub(super) fn account_known(&self, id: AccountId) -> bool {
        self.accounts.contains(&id)
    }

    pub fn accounts_made(&mut self, ids: &[AccountId]) {
        self.accounts.extend(ids.iter().copied());
    }

    /// A provider refund that did not go through, to re-send.
    pub(super) fn refund_later(&mut self, r: ProviderRefund) {
        if self.provider_refunds.len() < WATCH_MAX {
            self.provider_refunds.push_back(r);
        }
    }
}

fn order_claim(order: OrderId) -> u64 {
    order.0 | (1 << 63)
}

/// The accounts of a transfer that may need creating (wallets, merchants).
pub(crate) fn missing_accounts(core: &Core, ids: &[AccountId]) -> Vec<mall_ledger::Account> {
    ids.iter()
        .filter(|id| !core.account_known(**id))
        .filter_map(|id| chart::account(*id))
        .collect()
}

/// Whether a pending transfer of this code pays an order.
pub(crate) fn pays_order(code: u16) -> bool {
    matches!(
        code,
        code::CHANNEL_PAYMENT | code::WALLET_PAYMENT | code::CHECKOUT_PAYMENT
    )
}
