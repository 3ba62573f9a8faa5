//! The payment service: every fen a shopper pays, tops up or gets back.
//!
//! Money moves only through the ledger (`mall-ledger`, run by the engine);
//! this crate decides which transfers to make and in what order, and talks
//! to payment providers through the channel router (`mall-pay`) and the
//! provider [`adapter`]s.
//!
//! **A payment attempt ("try") is a pending ledger transfer.** Before a
//! provider hears of a try, a pending transfer `channel clearing → escrow`
//! (or `→ wallet` for a top-up) with the try's id is durable. The
//! provider's signed callback then decides it: success confirms the order
//! (hold → sold) and posts the transfer; failure voids it and the payment
//! is retried on another eligible channel. The ledger is the record, so a
//! restart rebuilds everything from `ledger.db` and the orders, and asks
//! providers about tries still pending.
//!
//! **Never charged twice.** An order has at most one try in flight. A try
//! given up (timed out, refused) is voided before another starts; if its
//! provider charges anyway (a late success), the money is recorded and
//! handed back at once (`late_capture` + `late_refund`, and a provider
//! refund). The same happens to a success that arrives after the order's
//! hold expired: the order stays expired. Every transfer id that repeats
//! work (post, void, settle, refund of a cancel) is derived from what it is
//! for, so doing it twice is a ledger replay, not a second movement.
//!
//! **Wallet payments** are two-phase in the ledger: pending `wallet →
//! escrow` (the wallet's limit refuses an overdraft), confirm the order,
//! post (or void if the order could not be confirmed).

pub mod adapter;

use adapter::{AdapterError, Provider, ProviderStatus};
use mall_core::{Order, OrderId, OrderStatus, PaymentMethod, Refusal, Timestamp, UserId};
use mall_inventory::Command as Inv;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{
    Account, AccountId, Command as Led, Mode, Outcome as LedOutcome, PendingState,
    Refusal as LedRefusal, Reply as LedReply, Stored, Transfer, TransferId,
};
use mall_pay::router::{
    AttemptId, ChannelConfig, ChannelStatus, Decision, Event, Outcome, PayMethod, RouteRefusal,
    Router, RouterConfig,
};
use mall_pay::signature;
use mall_shard::Clock;
use mall_store::Engine;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// One payment channel as the mall sees it: where the provider is, its key,
/// and what the router may send it.
#[derive(Clone, Debug)]
pub struct ChannelSetup {
    pub name: String,
    pub addr: SocketAddr,
    pub secret: String,
    pub methods: Vec<PayMethod>,
    pub capacity_per_s: u32,
    pub max_concurrency: u32,
    pub fee_bp: u32,
    pub priority: u8,
}

#[derive(Clone, Debug)]
pub struct PaymentsConfig {
    pub channels: Vec<ChannelSetup>,
    pub router: RouterConfig,
    /// Where providers send callbacks: the server's root, e.g. `http://127.0.0.1:8080`.
    pub callback_base: String,
    /// How long a payment request waits for its outcome before answering "pending".
    pub wait_ms: u64,
    /// How long a provider may take to accept a payment.
    pub provider_timeout_ms: u64,
    /// Channels tried per payment, at most.
    pub tries_max: usize,
    /// Payments being *started* at once (reading the order, reserving the
    /// money in the ledger, handing the try to the router), at most; more
    /// wait their turn, first come, first served. A payment waiting for its
    /// provider holds no turn: how many are with providers is bounded by
    /// the router (each channel's capacity and concurrency, and its queue
    /// with deadlines), not by this.
    pub in_process_max: usize,
    /// How long tries given up are watched: their provider is asked now and
    /// then whether it charged after all (a callback may never come), and a
    /// charge is handed back.
    pub watch_ms: i64,
    /// Largest single top-up, in fen.
    pub top_up_max_fen: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            channels: Vec::new(),
            router: RouterConfig::default(),
            callback_base: "http://127.0.0.1:8080".into(),
            wait_ms: 5_000,
            in_process_max: 64,
            watch_ms: 15 * 60_000,
            provider_timeout_ms: 1_000,
            tries_max: 3,
            top_up_max_fen: 5_000_000,
        }
    }
}

/// How a shopper pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Wallet,
    Card,
    ThirdParty,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "wallet" => Some(Method::Wallet),
            "card" => Some(Method::Card),
            "third_party" => Some(Method::ThirdParty),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Wallet => "wallet",
            Method::Card => "card",
            Method::ThirdParty => "third_party",
        }
    }
    fn channel_method(self) -> Option<PayMethod> {
        match self {
            Method::Wallet => None,
            Method::Card => Some(PayMethod::Card),
            Method::ThirdParty => Some(PayMethod::ThirdParty),
        }
    }
}

/// Why a payment operation was refused. Stable codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("no such order")]
    UnknownOrder,
    #[error("the order is {0}; only orders awaiting payment can be paid")]
    NotPayable(&'static str),
    #[error("the order's hold expired before payment; it was not charged")]
    HoldExpired,
    #[error("the wallet balance is too low for this payment")]
    InsufficientFunds,
    #[error("a payment of this order is already under way; wait for it")]
    InProgress,
    #[error("every channel declined or failed this payment; nothing was charged")]
    Declined,
    #[error("no payment channel serves {0}")]
    NoChannel(&'static str),
    #[error("payments are queued beyond capacity; retry shortly (the order stays payable until its hold expires)")]
    QueueFull,
    #[error("the payment waited too long for a free channel and was not made; retry (the order stays payable until its hold expires)")]
    QueueTimeout,
    #[error("the ledger could not make this durable; nothing was acknowledged; retry")]
    Unavailable,
    #[error("the mall is at capacity; retry in a second")]
    Overloaded,
    #[error("the order was not paid, so there is nothing to refund or settle")]
    NotPaid,
    #[error("refunds would exceed what was paid ({remaining} fen left to refund)")]
    RefundExceedsPaid { remaining: u64 },
    #[error("the order was settled to its merchant already")]
    AlreadySettled,
    #[error("the order is {0}; it cannot be settled")]
    NotSettleable(&'static str),
    #[error("amount must be 1 to {max} fen")]
    BadAmount { max: u64 },
    #[error("no payment channel named {0}")]
    UnknownChannel(String),
    #[error("callback signature: {0}")]
    Signature(&'static str),
    #[error("callback already taken")]
    CallbackReplayed,
    #[error("callback body: {0}")]
    BadCallback(String),
    #[error("the callback names a payment this channel was not asked for")]
    UnknownPayment,
    #[error("that payment is being settled right now; retry")]
    Busy,
}

impl PayError {
    pub fn code(&self) -> &'static str {
        match self {
            PayError::UnknownOrder => "order_not_found",
            PayError::NotPayable(_) => "invalid_order_status",
            PayError::HoldExpired => "hold_expired",
            PayError::InsufficientFunds => "insufficient_funds",
            PayError::InProgress => "payment_in_progress",
            PayError::Declined => "payment_declined",
            PayError::NoChannel(_) => "no_channel_for_method",
            PayError::QueueFull => "payment_queue_full",
            PayError::QueueTimeout => "payment_queue_timeout",
            PayError::Unavailable => "store_unavailable",
            PayError::Overloaded => "overloaded",
            PayError::NotPaid => "not_paid",
            PayError::RefundExceedsPaid { .. } => "refund_exceeds_paid",
            PayError::AlreadySettled => "already_settled",
            PayError::NotSettleable(_) => "invalid_order_status",
            PayError::BadAmount { .. } => "invalid_amount",
            PayError::UnknownChannel(_) => "unknown_channel",
            PayError::Signature(c) => c,
            PayError::CallbackReplayed => "callback_replayed",
            PayError::BadCallback(_) => "invalid_callback",
            PayError::UnknownPayment => "unknown_payment",
            PayError::Busy => "busy",
        }
    }

    /// The HTTP status this refusal maps to.
    pub fn status(&self) -> u16 {
        match self {
            PayError::UnknownOrder | PayError::UnknownChannel(_) | PayError::UnknownPayment => 404,
            PayError::NotPayable(_)
            | PayError::HoldExpired
            | PayError::InProgress
            | PayError::RefundExceedsPaid { .. }
            | PayError::AlreadySettled
            | PayError::NotSettleable(_)
            | PayError::NotPaid
            | PayError::CallbackReplayed => 409,
            PayError::InsufficientFunds | PayError::Declined => 402,
            PayError::NoChannel(_) | PayError::BadAmount { .. } => 422,
            PayError::Signature(_) => 401,
            PayError::BadCallback(_) => 400,
            PayError::QueueFull
            | PayError::QueueTimeout
            | PayError::Unavailable
            | PayError::Overloaded
            | PayError::Busy => 503,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayStatus {
    Succeeded,
    /// Still with a provider (or queued for one) when the wait ended.
    Pending,
}

impl PayStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PayStatus::Succeeded => "succeeded",
            PayStatus::Pending => "pending",
        }
    }
}

/// The answer to a payment or top-up.
#[derive(Clone, Debug)]
pub struct PaymentView {
    pub status: PayStatus,
    pub method: Method,
    pub amount_fen: u64,
    /// The ledger transfer of the (last) try.
    pub attempt: u64,
    pub channel: Option<String>,
}

/// A wallet as its owner sees it.
#[derive(Clone, Debug)]
pub struct WalletView {
    pub balance_fen: i128,
    /// Reserved by payments under way.
    pub pending_out_fen: u64,
    /// Top-ups under way.
    pub pending_in_fen: u64,
}

/// One line of a wallet statement.
#[derive(Clone, Debug)]
pub struct StatementLine {
    pub seq: u64,
    pub transfer: u64,
    pub kind: &'static str,
    pub mode: &'static str,
    /// Positive: into the wallet.
    pub amount_fen: i128,
    pub state: Option<&'static str>,
    pub reference: u64,
    pub at_ms: i64,
}

/// What a refund did.
#[derive(Clone, Debug)]
pub struct RefundView {
    pub refund: u64,
    pub amount_fen: u64,
    pub refunded_total_fen: u64,
    pub paid_fen: u64,
}

/// Where a try's money is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Purpose {
    Order(OrderId),
    /// A top-up, named by its first try.
    TopUp(u64),
}

#[derive(Clone, Debug)]
struct Try {
    purpose: Purpose,
    user: UserId,
    amount: u64,
    method: Method,
    channel: Option<usize>,
    tried: Vec<usize>,
    /// The router gave it up while someone else held its claim.
    abandon_requested: bool,
    /// Where its pending transfer stands, as far as this process made it
    /// (changed only under the try's claim).
    ledger: TryLedger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TryLedger {
    /// Not recorded (queued, or being recorded under the claim).
    None,
    Pending,
    Voided,
}

/// The money of one paid order.
#[derive(Clone, Copy, Debug)]
struct OrderMoney {
    payer: AccountId,
    /// The try (pending transfer) that paid it; for refunds through its provider.
    paid_by: TransferId,
    paid: u64,
    refunded: u64,
    settled: bool,
}

type Final = Result<(u64, Option<usize>), PayError>;

#[derive(Default)]
struct State {
    /// Tries queued or with a provider.
    tries: FxHashMap<u64, Try>,
    /// The live try of each purpose (an order has at most one).
    live: FxHashMap<Purpose, u64>,
    waiters: FxHashMap<Purpose, Vec<oneshot::Sender<Final>>>,
    /// Tries (and orders, by id) someone is settling right now.
    claims: FxHashSet<u64>,
    orders: FxHashMap<OrderId, OrderMoney>,
    /// Callback events taken, oldest first (bounded).
    events_seen: FxHashSet<String>,
    events_order: VecDeque<String>,
    /// Ledger accounts known to exist (created here or found at start).
    accounts: FxHashSet<AccountId>,
    /// Tries given up whose provider may still charge: `(try, channel, until_ms)`.
    watch: VecDeque<(u64, usize, i64)>,
    /// Provider refunds to re-send (recorded in the ledger already).
    provider_refunds: VecDeque<ProviderRefund>,
}

#[derive(Clone, Copy, Debug)]
struct ProviderRefund {
    channel: usize,
    refund: u64,
    payment: u64,
    amount: u64,
}

/// Tries watched at most; beyond, the oldest are dropped (and logged).
const WATCH_MAX: usize = 500_000;
/// Provider status queries per sweep, at most.
const SWEEP_QUERIES_MAX: usize = 2_000;

const EVENTS_REMEMBERED: usize = 200_000;
/// Requests waiting on one payment's outcome, at most.
const WAITERS_PER_PAYMENT_MAX: usize = 16;
const ID_MASK: u64 = (1 << 53) - 1; // ids stay exact in JSON numbers

/// A transfer id derived from what it does, so doing it again is a replay.
fn derived(tag: &str, id: u64) -> TransferId {
    TransferId((mall_core::fingerprint(&[tag.as_bytes(), &id.to_le_bytes()]) & ID_MASK).max(1))
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS has randomness");
    (u64::from_le_bytes(b) & ID_MASK).max(1)
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct PayCounters {
    pub succeeded: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub late_refunds: std::sync::atomic::AtomicU64,
    pub refunds: std::sync::atomic::AtomicU64,
    pub callbacks_refused: std::sync::atomic::AtomicU64,
}

struct Shared {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    config: PaymentsConfig,
    providers: Vec<Provider>,
    router: Mutex<Router>,
    wake: Notify,
    epoch: Instant,
    state: Mutex<State>,
    counters: PayCounters,
    admission: tokio::sync::Semaphore,
    events: Option<mall_events::EventLog>,
}

/// The payment service. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    shared: Arc<Shared>,
}

/// Releases a claim (or a wallet payment's mark on its order) when
/// dropped, so a request abandoned half-way (the client went away) never
/// leaves it held.
struct Held {
    shared: Arc<Shared>,
    what: HeldWhat,
}

enum HeldWhat {
    Claim(u64),
    Live(Purpose),
}

/// An order held still for a cancel (see [`Payments::hold_for_cancel`]):
/// released when dropped.
pub struct CancelHold {
    _live: Held,
    _claim: Held,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        match self.what {
            HeldWhat::Claim(id) => {
                state.claims.remove(&id);
            }
            HeldWhat::Live(purpose) => {
                state.live.remove(&purpose);
            }
        }
    }
}

/// The payment service's own runtime: one thread at a lower CPU priority
/// (nice 10), so payment work takes at most one core, and when the CPU is
/// short, order placement and its refusals go first and payment work
/// yields, without being refused. (In one run each of payments-3k, one such thread carried more
/// paid orders/s than two, at the same snap-up latency.) Shared by every
/// `Payments` of the process; never dropped.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mall-payments")
            .on_thread_start(|| {
                // SAFETY: setpriority on the calling thread (Linux: a thread
                // is a task; who = 0 is this one); it reads no memory of ours.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                }
            })
            .enable_all()
            .build()
            .expect("the payment runtime starts")
    })
}

/// Spawns payment work on the payment runtime.
fn spawn<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(work)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Payments {
    /// Creates the mall's own accounts, rebuilds the payments index from
    /// the ledger, settles what a crash left pending, and starts the
    /// router's driver.
    pub async fn start(
        engine: Arc<Engine>,
        config: PaymentsConfig,
        clock: Arc<dyn Clock>,
        events: Option<mall_events::EventLog>,
    ) -> Result<Payments, PayError> {
        let providers = config
            .channels
            .iter()
            .map(|c| {
                Provider::new(
                    c.name.clone(),
                    c.addr,
                    c.secret.clone(),
                    Duration::from_millis(config.provider_timeout_ms),
                )
            })
            .collect();
        let channels = config
            .channels
            .iter()
            .map(|c| ChannelConfig {
                name: c.name.clone(),
                methods: c.methods.clone(),
                capacity_per_s: c.capacity_per_s,
                max_concurrency: c.max_concurrency,
                fee_bp: c.fee_bp,
                priority: c.priority,
            })
            .collect();
        let router = Router::new(channels, config.router.clone(), 0);
        let payments = Payments {
            shared: Arc::new(Shared {
                engine,
                clock,
                providers,
                router: Mutex::new(router),
                wake: Notify::new(),
                epoch: Instant::now(),
                state: Mutex::new(State::default()),
                counters: PayCounters::default(),
                admission: tokio::sync::Semaphore::new(config.in_process_max.max(1)),
                events,
                config,
            }),
        };
        let mut fixed = vec![chart::ESCROW, chart::COD];
        fixed.extend((0..payments.shared.providers.len()).map(chart::clearing));
        payments.ensure_accounts(&fixed).await?;
        let pending = payments.rebuild_index().await?;
        payments.reconcile(pending).await;
        let driver = payments.clone();
        spawn(async move { driver.drive().await });
        let sweeper = payments.clone();
        spawn(async move { sweeper.sweep_forever().await });
        Ok(payments)
    }

    pub fn counters(&self) -> &PayCounters {
        &self.shared.counters
    }

    pub fn channels(&self) -> Vec<ChannelStatus> {
        lock(&self.shared.router).channels()
    }

    pub fn queue_depth(&self) -> usize {
        lock(&self.shared.router).queue_depth()
    }

    fn now_us(&self) -> i64 {
        self.shared.epoch.elapsed().as_micros() as i64
    }

    fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    // ---- ledger and inventory calls ------------------------------------

    async fn ledger(&self, command: Led) -> Result<LedReply, PayError> {
        let rx = self
            .shared
            .engine
            .ledger()
            .try_submit(command)
            .map_err(|_| PayError::Overloaded)?;
        match rx.await {
            Ok(LedReply::Unavailable) | Err(_) => Err(PayError::Unavailable),
            Ok(reply) => Ok(reply),
        }
    }

    /// Makes transfers; one result per transfer.
    async fn transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<Result<LedOutcome, LedRefusal>>, PayError> {
        match self.ledger(Led::CreateTransfers(transfers)).await? {
            LedReply::Transfers(r) => Ok(r),
            other => unreachable!("transfers answered {other:?}"),
        }
    }

    async fn transfer(&self, t: Transfer) -> Result<Result<LedOutcome, LedRefusal>, PayError> {
        Ok(self.transfers(vec![t]).await?.remove(0))
    }

    async fn lookup_transfer(&self, id: u64) -> Result<Option<Stored>, PayError> {
        match self
            .ledger(Led::LookupTransfers(vec![TransferId(id)]))
            .await?
        {
            LedReply::TransferLookup(mut r) => Ok(r.remove(0)),
            other => unreachable!("lookup answered {other:?}"),
        }
    }

    /// Creates the accounts that do not exist yet (creation is idempotent;
    /// the ones known to exist cost nothing).
    async fn ensure_accounts(&self, ids: &[AccountId]) -> Result<(), PayError> {
        let accounts: Vec<Account> = {
            let state = lock(&self.shared.state);
            ids.iter()
                .filter(|id| !state.accounts.contains(id))
                .filter_map(|id| chart::account(*id))
                .collect()
        };
        if accounts.is_empty() {
            return Ok(());
        }
        let created: Vec<AccountId> = accounts.iter().map(|a| a.id).collect();
        match self.ledger(Led::CreateAccounts(accounts)).await? {
            LedReply::Accounts(r) if r.iter().all(Result::is_ok) => {
                lock(&self.shared.state).accounts.extend(created);
                Ok(())
            }
            other => {
                tracing::error!(?other, "creating ledger accounts");
                Err(PayError::Unavailable)
            }
        }
    }

    async fn inventory(&self, order: OrderId, command: Inv) -> Result<InvReply, PayError> {
        let rx = self
            .shared
            .engine
            .try_submit_for_order(order, command)
            .ok_or(PayError::UnknownOrder)?
            .map_err(|_| PayError::Overloaded)?;
        match rx.await {
            Ok(InvReply::Unavailable) | Err(_) => Err(PayError::Unavailable),
            Ok(reply) => Ok(reply),
        }
    }

    /// The order as stored. A point read by primary key on the shard's WAL
    /// reader, tens of microseconds: done on this thread, as a hop to the
    /// blocking pool would cost more than the read (a payment does one).
    async fn stored_order(&self, id: OrderId) -> Result<Option<Order>, PayError> {
        self.shared
            .engine
            .reader_for_order(id)
            .map_or(Ok(None), |r| r.order(id))
            .map_err(|e| {
                tracing::error!(error = %e, "reading an order");
                PayError::Unavailable
            })
    }

    fn single(
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

    /// Posts (in full) or voids a pending transfer; a replay is success.
    async fn resolve_pending(&self, pending: &Stored, post: bool) -> Result<(), PayError> {
        let p = &pending.transfer;
        let (id, mode, amount) = if post {
            (
                derived("post", p.id.0),
                Mode::Post { pending: p.id },
                p.amount,
            )
        } else {
            (derived("void", p.id.0), Mode::Void { pending: p.id }, 0)
        };
        let t = Transfer {
            id,
            debit: p.debit,
            credit: p.credit,
            amount,
            mode,
            linked: false,
            code: p.code,
            user_data: p.user_data,
        };
        for _ in 0..5 {
            match self.transfer(t.clone()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(r)) => {
                    tracing::error!(
                        transfer = p.id.0,
                        refusal = r.code(),
                        post,
                        "resolving a pending transfer was refused"
                    );
                    return Err(PayError::Unavailable);
                }
                Err(PayError::Overloaded | PayError::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e),
            }
        }
        Err(PayError::Unavailable)
    }

    // ---- paying an order ------------------------------------------------

    /// Pays `order` for `user`. Wallet payments settle at once; others go
    /// to a channel and the answer waits up to `wait_ms` for the outcome.
    pub async fn pay(
        &self,
        user: UserId,
        order: OrderId,
        method: Method,
    ) -> Result<(PaymentView, Order), PayError> {
        let me = self.clone();
        spawn(async move { me.pay_here(user, order, method).await })
            .await
            .unwrap_or(Err(PayError::Unavailable))
    }

    async fn pay_here(
        &self,
        user: UserId,
        order: OrderId,
        method: Method,
    ) -> Result<(PaymentView, Order), PayError> {
        // A turn covers the work of starting a payment (reads, the ledger,
        // the router), not the wait for the provider: a payment waiting for
        // its callback costs a waiter's memory, nothing more.
        let turn = self.turn().await?;
        let read = self.stored_order(order).await?;
        let view = self
            .pay_read(user, order, method, read.as_ref(), turn)
            .await?;
        let mut o = read.expect("a paid order was read");
        if view.status == PayStatus::Succeeded {
            o.status = OrderStatus::Paid;
            o.expires_at = None;
            o.updated_at = self.now();
        }
        Ok((view, o))
    }

    /// A turn to start a payment (see `PaymentsConfig::in_process_max`).
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PayError> {
        self.shared
            .admission
            .acquire()
            .await
            .map_err(|_| PayError::Unavailable)
    }

    async fn pay_read(
        &self,
        user: UserId,
        order: OrderId,
        method: Method,
        o: Option<&Order>,
        turn: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<PaymentView, PayError> {
        let o = o.filter(|o| o.user == user).ok_or(PayError::UnknownOrder)?;
        match (o.status, o.payment) {
            (OrderStatus::AwaitingPayment, PaymentMethod::Online) => {}
            (OrderStatus::Expired, _) => return Err(PayError::HoldExpired),
            (status, _) => return Err(PayError::NotPayable(status.as_str())),
        }
        if o.expires_at.is_some_and(|at| at <= self.now()) {
            return Err(PayError::HoldExpired);
        }
        let amount = u64::try_from(o.amount_fen.0).map_err(|_| PayError::NotPayable("free"))?;
        let purpose = Purpose::Order(order);
        match method {
            Method::Wallet => {
                let _live = self.claim_purpose(purpose)?;
                self.pay_from_wallet(user, o, amount).await
            }
            _ => {
                self.pay_through_channel(purpose, user, amount, method, turn)
                    .await
            }
        }
    }

    /// Marks `purpose` as having a live try; refuses if it has one already.
    fn claim_purpose(&self, purpose: Purpose) -> Result<Held, PayError> {
        let mut state = lock(&self.shared.state);
        if state.live.contains_key(&purpose) {
            return Err(PayError::InProgress);
        }
        state.live.insert(purpose, 0);
        Ok(Held {
            shared: self.shared.clone(),
            what: HeldWhat::Live(purpose),
        })
    }

    async fn pay_from_wallet(
        &self,
        user: UserId,
        o: &Order,
        amount: u64,
    ) -> Result<PaymentView, PayError> {
        let wallet = chart::wallet(user);
        self.ensure_accounts(&[wallet]).await?;
        let id = TransferId(random_id());
        let pending = Transfer {
            id,
            debit: wallet,
            credit: chart::ESCROW,
            amount,
            mode: Mode::Pending { timeout_ms: 0 },
            linked: false,
            code: code::WALLET_PAYMENT,
            user_data: o.id.0,
        };
        match self.transfer(pending.clone()).await? {
            Ok(_) => {}
            Err(LedRefusal::ExceedsCredits) => return Err(PayError::InsufficientFunds),
            Err(r) => {
                tracing::error!(refusal = r.code(), "wallet payment refused by the ledger");
                return Err(PayError::Unavailable);
            }
        }
        let stored = Stored {
            seq: 0,
            transfer: pending,
            created_at: self.now(),
            state: Some(PendingState::Pending),
        };
        let confirmed = self.inventory(o.id, Inv::Confirm { order: o.id }).await;
        match confirmed {
            Ok(InvReply::Order { .. }) => {
                // Confirmed: the money must follow, now or by a retry.
                self.post_or_retry(stored, o.id);
                self.record_pay(o, amount, "wallet");
                bump(&self.shared.counters.succeeded);
                Ok(PaymentView {
                    status: PayStatus::Succeeded,
                    method: Method::Wallet,
                    amount_fen: amount,
                    attempt: id.0,
                    channel: None,
                })
            }
            Ok(reply) => {
                self.resolve_pending(&stored, false).await?;
                Err(match reply {
                    InvReply::Refused(Refusal::HoldExpired) => PayError::HoldExpired,
                    InvReply::Refused(Refusal::InvalidTransition { status, .. }) => {
                        PayError::NotPayable(status.as_str())
                    }
                    _ => PayError::NotPayable("no longer active"),
                })
            }
            // Not confirmed (the shard was full or could not commit): the
            // order decides where the reserved money goes.
            Err(e) => {
                if let Err(again) = self.settle_order_try(&stored).await {
                    tracing::warn!(error = %again, "a wallet reservation stays pending until the next start");
                }
                Err(e)
            }
        }
    }

    /// Posts a confirmed order's pending transfer, retrying in the
    /// background until the ledger takes it: a paid order always has its
    /// money.
    fn post_or_retry(&self, pending: Stored, order: OrderId) {
        let me = self.clone();
        let t = &pending.transfer;
        me.record_paid(order, t.debit, t.id, t.amount);
        spawn(async move {
            while let Err(e) = me.resolve_pending(&pending, true).await {
                tracing::warn!(error = %e, "posting a paid order's money; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A pending payment transfer of an order, undecided: post it if the
    /// order was paid by it, void it otherwise. `Ok(true)`: posted.
    async fn settle_order_try(&self, p: &Stored) -> Result<bool, PayError> {
        let t = &p.transfer;
        let order = OrderId(t.user_data);
        let paid = self
            .stored_order(order)
            .await?
            .is_some_and(|o| o.status == OrderStatus::Paid);
        let ours = paid
            && lock(&self.shared.state)
                .orders
                .get(&order)
                .is_none_or(|m| m.paid_by == t.id);
        self.resolve_pending(p, ours).await?;
        if ours {
            self.record_paid(order, t.debit, t.id, t.amount);
        }
        Ok(ours)
    }

    /// The event of a payment that succeeded.
    fn record_pay(&self, o: &Order, amount: u64, channel: &str) {
        if let Some(log) = &self.shared.events {
            let mut e = mall_events::Event::new(self.now().0, mall_events::Kind::Pay);
            (e.u, e.s, e.o, e.a) = (o.user.0, o.sku.0, o.id.0, amount as i64);
            e.c = Some(channel.to_string());
            log.record(e);
        }
    }

    fn record_paid(&self, order: OrderId, payer: AccountId, paid_by: TransferId, amount: u64) {
        lock(&self.shared.state)
            .orders
            .entry(order)
            .or_insert(OrderMoney {
                payer,
                paid_by,
                paid: amount,
                refunded: 0,
                settled: false,
            });
    }

    async fn pay_through_channel(
        &self,
        purpose: Purpose,
        user: UserId,
        amount: u64,
        method: Method,
        turn: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<PaymentView, PayError> {
        let pm = method.channel_method().expect("a channel method");
        let supported = self
            .shared
            .config
            .channels
            .iter()
            .any(|c| c.methods.contains(&pm));
        if !supported {
            return Err(PayError::NoChannel(method.as_str()));
        }
        let rx = {
            let mut state = lock(&self.shared.state);
            if state.live.get(&purpose) == Some(&0) {
                return Err(PayError::InProgress); // a wallet payment
            }
            let (tx, rx) = oneshot::channel();
            let waiting = state.waiters.entry(purpose).or_default();
            // Those who stopped waiting (timed out, went away) leave.
            waiting.retain(|w| !w.is_closed());
            if waiting.len() >= WAITERS_PER_PAYMENT_MAX {
                return Err(PayError::InProgress);
            }
            waiting.push(tx);
            if let std::collections::hash_map::Entry::Vacant(live) = state.live.entry(purpose) {
                let id = match purpose {
                    Purpose::TopUp(id) => id,
                    Purpose::Order(_) => random_id(),
                };
                live.insert(id);
                let t = Try {
                    purpose,
                    user,
                    amount,
                    method,
                    channel: None,
                    tried: Vec::new(),
                    abandon_requested: false,
                    ledger: TryLedger::None,
                };
                state.tries.insert(id, t);
                drop(state);
                self.route(id);
            }
            rx
        };
        drop(turn);
        let waited =
            tokio::time::timeout(Duration::from_millis(self.shared.config.wait_ms), rx).await;
        let (attempt, channel) = {
            let state = lock(&self.shared.state);
            let id = state.live.get(&purpose).copied().unwrap_or(0);
            (id, state.tries.get(&id).and_then(|t| t.channel))
        };
        let name = |c: Option<usize>| c.map(|c| self.shared.config.channels[c].name.clone());
        match waited {
            Ok(Ok(Ok((attempt, channel)))) => Ok(PaymentView {
                status: PayStatus::Succeeded,
                method,
                amount_fen: amount,
                attempt,
                channel: name(channel),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(PayError::Unavailable),
            Err(_) => Ok(PaymentView {
                status: PayStatus::Pending,
                method,
                amount_fen: amount,
                attempt,
                channel: name(channel),
            }),
        }
    }

    /// Hands a try to the router.
    fn route(&self, id: u64) {
        let (method, exclude) = {
            let state = lock(&self.shared.state);
            let Some(t) = state.tries.get(&id) else {
                return;
            };
            (
                t.method.channel_method().expect("channel try"),
                t.tried.clone(),
            )
        };
        let decision =
            lock(&self.shared.router).submit(AttemptId(id), method, &exclude, self.now_us());
        match decision {
            Decision::Dispatch { channel } => {
                let me = self.clone();
                spawn(async move { me.dispatch(id, channel).await });
            }
            Decision::Queued => self.shared.wake.notify_one(),
            Decision::Refused(r) => {
                let e = match r {
                    RouteRefusal::QueueFull => PayError::QueueFull,
                    // Also when every channel of the method was tried.
                    RouteRefusal::NoChannelForMethod => PayError::Declined,
                };
                self.finish_try(id, Err(e));
            }
        }
    }

    /// Ends a try's purpose: tells every waiter and forgets the try.
    fn finish_try(&self, id: u64, result: Final) {
        let mut state = lock(&self.shared.state);
        let Some(t) = state.tries.remove(&id) else {
            return;
        };
        if state.live.get(&t.purpose) != Some(&id) {
            return; // an old try of a payment that has moved on
        }
        state.live.remove(&t.purpose);
        let waiters = state.waiters.remove(&t.purpose).unwrap_or_default();
        drop(state);
        match &result {
            Ok(_) => bump(&self.shared.counters.succeeded),
            Err(_) => bump(&self.shared.counters.failed),
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    /// A try has a channel: record it in the ledger, then ask the provider.
    ///
    /// The pending transfer is made under the try's claim, so a timeout
    /// cannot void a try whose transfer is about to appear; a timeout that
    /// comes meanwhile is acted on right after.
    async fn dispatch(&self, id: u64, channel: usize) {
        let Some(held) = self.claim(id) else {
            return;
        };
        // A try given up meanwhile (the dispatch ran late) is not made.
        let t = {
            let mut state = lock(&self.shared.state);
            state
                .tries
                .get_mut(&id)
                .filter(|t| t.ledger == TryLedger::None && !t.abandon_requested)
                .map(|t| {
                    t.channel = Some(channel);
                    t.tried.push(channel);
                    t.clone()
                })
        };
        let Some(t) = t else {
            return;
        };
        let recorded = self.record_try(id, channel, &t).await;
        drop(held);
        if let Err(e) = recorded {
            lock(&self.shared.router).complete(AttemptId(id), Outcome::Failed, self.now_us());
            return self.finish_try(id, Err(e));
        }
        let requested = lock(&self.shared.state)
            .tries
            .get(&id)
            .is_some_and(|t| t.abandon_requested);
        if requested {
            return self.abandon(id).await;
        }
        let Some(provider) = self.shared.providers.get(channel) else {
            return self.abandon(id).await;
        };
        let callback = format!(
            "{}/v1/channels/{}/callback",
            self.shared.config.callback_base, provider.name
        );
        if let Err(e) = provider
            .create(id, t.amount, t.method.as_str(), &callback)
            .await
        {
            // Given up now; should the provider charge anyway, the late
            // success is handed back.
            let outcome = if matches!(e, AdapterError::Timeout(_)) {
                Outcome::TimedOut
            } else {
                Outcome::Failed
            };
            tracing::debug!(error = %e, "provider did not take a payment");
            if lock(&self.shared.router).complete(AttemptId(id), outcome, self.now_us()) {
                self.abandon(id).await;
            }
        }
    }

    /// The try's pending transfer: from the channel's clearing account to
    /// escrow (a payment) or to the shopper's wallet (a top-up).
    fn try_transfer(id: u64, channel: usize, t: &Try) -> Transfer {
        let (credit, code, user_data) = match t.purpose {
            Purpose::Order(o) => (chart::ESCROW, code::CHANNEL_PAYMENT, o.0),
            Purpose::TopUp(_) => (chart::wallet(t.user), code::TOP_UP, t.user.0),
        };
        Transfer {
            id: TransferId(id),
            debit: chart::clearing(channel),
            credit,
            amount: t.amount,
            mode: Mode::Pending { timeout_ms: 0 },
            linked: false,
            code,
            user_data,
        }
    }

    /// A try this process recorded and has not resolved, as stored (holding
    /// its claim); `None` if its state must be read from the ledger.
    fn known_pending(&self, id: u64, channel: usize, amount: Option<u64>) -> Option<Stored> {
        let state = lock(&self.shared.state);
        let t = state.tries.get(&id)?;
        let fits = t.ledger == TryLedger::Pending
            && t.channel == Some(channel)
            && amount.is_none_or(|a| a == t.amount);
        fits.then(|| Stored {
            seq: 0,
            transfer: Self::try_transfer(id, channel, t),
            created_at: Timestamp(0),
            state: Some(PendingState::Pending),
        })
    }

    fn set_try_ledger(&self, id: u64, ledger: TryLedger) {
        if let Some(t) = lock(&self.shared.state).tries.get_mut(&id) {
            t.ledger = ledger;
        }
    }

    /// Records the try (holding its claim).
    async fn record_try(&self, id: u64, channel: usize, t: &Try) -> Result<(), PayError> {
        let transfer = Self::try_transfer(id, channel, t);
        if let Purpose::TopUp(_) = t.purpose {
            self.ensure_accounts(&[transfer.credit]).await?;
        }
        match self.transfer(transfer).await? {
            Ok(_) => {
                self.set_try_ledger(id, TryLedger::Pending);
                Ok(())
            }
            Err(r) => {
                tracing::error!(refusal = r.code(), "recording a payment try was refused");
                Err(PayError::Unavailable)
            }
        }
    }

    /// Gives up a try (refused, failed or timed out): voids its pending
    /// transfer and retries the payment on another channel if any is left.
    async fn abandon(&self, id: u64) {
        loop {
            let Some(held) = self.claim(id) else {
                // Someone is deciding it; they act on the request when done.
                if let Some(t) = lock(&self.shared.state).tries.get_mut(&id) {
                    t.abandon_requested = true;
                }
                return;
            };
            let result = self.void_try(id).await;
            drop(held);
            match result {
                // Paid by this try after all (a confirm whose post was lost).
                Ok(true) => return self.finish_try(id, Ok((id, None))),
                Ok(false) => return self.retry_or_fail(id).await,
                // The try stays live (so no other starts) until it is decided.
                Err(e) => {
                    tracing::warn!(error = %e, "giving up a payment try failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// After a decision: a timeout the router sent meanwhile is acted on.
    async fn after_decision(&self, id: u64) {
        let requested = lock(&self.shared.state)
            .tries
            .get(&id)
            .is_some_and(|t| t.abandon_requested);
        if requested {
            self.abandon(id).await;
        }
    }

    /// Voids a try's pending transfer, if it has one (holding its claim);
    /// `Ok(true)` if the order turned out paid by this very try (its
    /// confirm landed, its post did not), which is then posted instead.
    async fn void_try(&self, id: u64) -> Result<bool, PayError> {
        let channel = lock(&self.shared.state)
            .tries
            .get(&id)
            .and_then(|t| t.channel);
        let known = channel.and_then(|c| self.known_pending(id, c, None));
        let pending = match known {
            Some(p) => Some(p),
            None => self
                .lookup_transfer(id)
                .await?
                .filter(|s| s.state == Some(PendingState::Pending)),
        };
        if let Some(p) = pending {
            let posted = if p.transfer.code == code::CHANNEL_PAYMENT {
                self.settle_order_try(&p).await?
            } else {
                self.resolve_pending(&p, false).await?;
                false
            };
            if posted {
                return Ok(true);
            }
            if let Some(c) = channel {
                self.watch(id, c);
            }
        }
        self.set_try_ledger(id, TryLedger::Voided);
        Ok(false)
    }

    /// Watches a try given up: should its provider have charged after all,
    /// the sweep hands the money back.
    fn watch(&self, id: u64, channel: usize) {
        let until = self.now().0 + self.shared.config.watch_ms;
        let mut state = lock(&self.shared.state);
        if state.watch.len() >= WATCH_MAX {
            state.watch.pop_front();
            tracing::warn!("too many tries given up at once; the oldest is no longer watched");
        }
        state.watch.push_back((id, channel, until));
    }

    async fn sweep_forever(&self) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.sweep().await;
        }
    }

    /// Asks providers about watched tries, many at a time: a charge is
    /// handed back, a failure or an unknown payment ends the watch, a
    /// pending one is asked again next time. Then re-sends provider refunds
    /// that did not go through.
    async fn sweep(&self) {
        const AT_ONCE: usize = 64;
        let due: Vec<(u64, usize, i64)> = {
            let mut state = lock(&self.shared.state);
            let n = state.watch.len().min(SWEEP_QUERIES_MAX);
            state.watch.drain(..n).collect()
        };
        let now = self.now().0;
        let mut running = tokio::task::JoinSet::new();
        for (id, channel, until) in due {
            if now > until || channel >= self.shared.providers.len() {
                continue;
            }
            while running.len() >= AT_ONCE {
                running.join_next().await;
            }
            let me = self.clone();
            running.spawn(async move {
                let keep = match me.shared.providers[channel].status(id).await {
                    Ok(ProviderStatus::Succeeded) => me.late_success(id, channel).await.is_err(),
                    Ok(ProviderStatus::Failed | ProviderStatus::Unknown) => false,
                    Ok(ProviderStatus::Pending) | Err(_) => true,
                };
                if keep {
                    lock(&me.shared.state).watch.push_back((id, channel, until));
                }
            });
        }
        while running.join_next().await.is_some() {}
        let refunds: Vec<ProviderRefund> = {
            let mut state = lock(&self.shared.state);
            let n = state.provider_refunds.len().min(SWEEP_QUERIES_MAX);
            state.provider_refunds.drain(..n).collect()
        };
        for r in refunds {
            self.provider_refund(r).await;
        }
    }

    /// Sends a refund to a provider; one that does not go through is
    /// re-sent by the sweep (refund ids are idempotent at the provider).
    async fn provider_refund(&self, r: ProviderRefund) -> bool {
        let Some(provider) = self.shared.providers.get(r.channel) else {
            tracing::error!(
                channel = r.channel,
                "a refund names a channel no longer configured"
            );
            return false;
        };
        match provider.refund(r.refund, r.payment, r.amount).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "provider refund failed; it will be re-sent");
                let mut state = lock(&self.shared.state);
                if state.provider_refunds.len() < WATCH_MAX {
                    state.provider_refunds.push_back(r);
                }
                false
            }
        }
    }

    /// The provider charged for a try: hand the money back if the try was
    /// given up. `Err` to be asked again.
    async fn late_success(&self, id: u64, channel: usize) -> Result<(), PayError> {
        let _held = self.claim(id).ok_or(PayError::Busy)?;
        match self.lookup_transfer(id).await? {
            Some(p) if matches!(p.state, Some(PendingState::Voided | PendingState::Expired)) => {
                self.late_refund(&p, channel).await
            }
            Some(p) if p.state == Some(PendingState::Pending) => Err(PayError::Busy),
            _ => Ok(()), // posted: it paid
        }
    }

    async fn retry_or_fail(&self, id: u64) {
        let next = {
            let mut state = lock(&self.shared.state);
            let Some(mut t) = state.tries.remove(&id) else {
                return;
            };
            let channels_for_method = self
                .shared
                .config
                .channels
                .iter()
                .filter(|c| {
                    c.methods
                        .contains(&t.method.channel_method().expect("channel try"))
                })
                .count();
            if t.tried.len() >= self.shared.config.tries_max.min(channels_for_method) {
                state.tries.insert(id, t);
                None
            } else {
                let next = random_id();
                t.channel = None;
                t.abandon_requested = false;
                t.ledger = TryLedger::None;
                state.live.insert(t.purpose, next);
                state.tries.insert(next, t);
                Some(next)
            }
        };
        match next {
            Some(next) => self.route(next),
            None => self.finish_try(id, Err(PayError::Declined)),
        }
    }

    /// Takes the claim on a try (or, with the top bit set, an order):
    /// whoever holds it alone decides it.
    fn claim(&self, id: u64) -> Option<Held> {
        lock(&self.shared.state).claims.insert(id).then(|| Held {
            shared: self.shared.clone(),
            what: HeldWhat::Claim(id),
        })
    }

    // ---- the router's driver -------------------------------------------

    async fn drive(&self) {
        let mut events = Vec::new();
        loop {
            let refresh = self.now_us() + self.shared.config.router.refresh_us.max(1_000);
            let wake = {
                let mut router = lock(&self.shared.router);
                router.poll(self.now_us(), &mut events);
                router.next_wake().unwrap_or(refresh).min(refresh)
            };
            for event in events.drain(..) {
                let me = self.clone();
                match event {
                    Event::Dispatch { attempt, channel } => {
                        spawn(async move { me.dispatch(attempt.0, channel).await });
                    }
                    Event::QueueExpired { attempt } => {
                        me.finish_try(attempt.0, Err(PayError::QueueTimeout))
                    }
                    Event::TimedOut { attempt, .. } => {
                        spawn(async move { me.abandon(attempt.0).await });
                    }
                }
            }
            let delay = Duration::from_micros((wake - self.now_us()).max(200) as u64);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    // ---- callbacks ---------------------------------------------------------

    /// A provider's callback: `Ok` when taken (or already taken earlier).
    pub async fn callback(
        &self,
        channel_name: &str,
        signature_header: Option<&str>,
        body: &[u8],
    ) -> Result<(), PayError> {
        let (me, name, signature, body) = (
            self.clone(),
            channel_name.to_string(),
            signature_header.map(str::to_string),
            body.to_vec(),
        );
        let result =
            spawn(async move { me.callback_inner(&name, signature.as_deref(), &body).await })
                .await
                .unwrap_or(Err(PayError::Unavailable));
        if matches!(
            result,
            Err(PayError::Signature(_)
                | PayError::CallbackReplayed
                | PayError::BadCallback(_)
                | PayError::UnknownPayment)
        ) {
            bump(&self.shared.counters.callbacks_refused);
        }
        result
    }

    async fn callback_inner(
        &self,
        channel_name: &str,
        signature_header: Option<&str>,
        body: &[u8],
    ) -> Result<(), PayError> {
        let channel = self
            .shared
            .providers
            .iter()
            .position(|p| p.name == channel_name)
            .ok_or_else(|| PayError::UnknownChannel(channel_name.into()))?;
        let provider = &self.shared.providers[channel];
        let header = signature_header.ok_or(PayError::Signature("signature_missing"))?;
        // Providers sign with the wall clock, whatever clock the mall runs on.
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        signature::verify(provider.secret(), header, body, wall_ms)
            .map_err(|e| PayError::Signature(e.code()))?;
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| PayError::BadCallback(e.to_string()))?;
        let event = v["event_id"]
            .as_str()
            .ok_or_else(|| PayError::BadCallback("event_id missing".into()))?
            .to_string();
        let id: u64 = v["payment_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| PayError::BadCallback("payment_id must be a decimal string".into()))?;
        let succeeded = match v["status"].as_str() {
            Some("succeeded") => true,
            Some("failed") => false,
            _ => {
                return Err(PayError::BadCallback(
                    "status must be succeeded or failed".into(),
                ))
            }
        };
        if v["channel"].as_str() != Some(channel_name) {
            return Err(PayError::BadCallback(
                "channel does not match the callback address".into(),
            ));
        }
        if lock(&self.shared.state).events_seen.contains(&event) {
            return Err(PayError::CallbackReplayed);
        }
        let amount = v["amount_fen"]
            .as_u64()
            .ok_or_else(|| PayError::BadCallback("amount_fen must be a positive integer".into()))?;
        let held = self.claim(id).ok_or(PayError::Busy)?; // the provider retries
                                                          // Read under the claim: nobody else decides this try meanwhile. A
                                                          // try this process has in hand needs no ledger read.
        let stored = match self.known_pending(id, channel, Some(amount)) {
            Some(known) => known,
            None => self
                .lookup_transfer(id)
                .await?
                .filter(|s| {
                    s.transfer.debit == chart::clearing(channel)
                        && matches!(s.transfer.mode, Mode::Pending { .. })
                        && s.transfer.amount == amount
                })
                .ok_or(PayError::UnknownPayment)?,
        };
        self.decide(&stored, channel, succeeded).await?;
        drop(held);
        self.after_decision(id).await;
        let mut state = lock(&self.shared.state);
        if state.events_seen.insert(event.clone()) {
            state.events_order.push_back(event);
            while state.events_order.len() > EVENTS_REMEMBERED {
                if let Some(old) = state.events_order.pop_front() {
                    state.events_seen.remove(&old);
                }
            }
        }
        Ok(())
    }

    /// A provider's final word on a try (holding its claim).
    ///
    /// The router hears the outcome only once the decision is durable: if
    /// it fails half-way, the router's timeout gives the try up (the
    /// abandon path decides it from the order's status), so nothing is left
    /// hanging.
    async fn decide(
        &self,
        current: &Stored,
        channel: usize,
        succeeded: bool,
    ) -> Result<(), PayError> {
        let id = current.transfer.id.0;
        let result = match (current.state, succeeded) {
            (Some(PendingState::Pending), true) => self.capture(current, channel).await,
            (Some(PendingState::Pending), false) => {
                let posted = self.settle_order_try_or_void(current).await?;
                if !posted {
                    self.set_try_ledger(id, TryLedger::Voided);
                    if lock(&self.shared.state).tries.contains_key(&id) {
                        let me = self.clone();
                        spawn(async move { me.retry_or_fail(id).await });
                    }
                }
                Ok(())
            }
            (Some(PendingState::Posted), _) | (_, false) => Ok(()),
            (_, true) => self.late_refund(current, channel).await,
        };
        if result.is_ok() {
            let outcome = if succeeded {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            lock(&self.shared.router).complete(AttemptId(id), outcome, self.now_us());
        }
        result
    }

    /// A failed try: void it, unless its order turned out paid by it.
    async fn settle_order_try_or_void(&self, p: &Stored) -> Result<bool, PayError> {
        if p.transfer.code == code::CHANNEL_PAYMENT {
            self.settle_order_try(p).await
        } else {
            self.resolve_pending(p, false).await.map(|()| false)
        }
    }

    /// A success for a pending try: confirm the order, then post; if the
    /// order cannot be confirmed any more, void and hand the money back.
    async fn capture(&self, p: &Stored, channel: usize) -> Result<(), PayError> {
        let t = &p.transfer;
        if t.code == code::TOP_UP {
            self.resolve_pending(p, true).await?;
            self.finish_try(t.id.0, Ok((t.id.0, Some(channel))));
            return Ok(());
        }
        let order = OrderId(t.user_data);
        let reply = self.inventory(order, Inv::Confirm { order }).await?;
        // A replayed confirm is this try's only if no other transfer paid the order.
        let ours = match &reply {
            InvReply::Order { replayed, .. } => {
                !replayed
                    || lock(&self.shared.state)
                        .orders
                        .get(&order)
                        .is_none_or(|m| m.paid_by == t.id)
            }
            _ => false,
        };
        match reply {
            InvReply::Order { order: o, .. } if ours => {
                self.resolve_pending(p, true).await?;
                self.record_paid(order, t.debit, t.id, t.amount);
                if let Some(provider) = self.shared.providers.get(channel) {
                    self.record_pay(&o, t.amount, &provider.name);
                }
                self.finish_try(t.id.0, Ok((t.id.0, Some(channel))));
                Ok(())
            }
            reply => {
                self.resolve_pending(p, false).await?;
                self.late_refund(p, channel).await?;
                let e = match reply {
                    InvReply::Refused(Refusal::HoldExpired) => PayError::HoldExpired,
                    _ => PayError::NotPayable("no longer awaiting payment"),
                };
                self.finish_try(t.id.0, Err(e));
                Ok(())
            }
        }
    }

    /// The provider charged for a try the mall no longer wants: record the
    /// charge and its return (linked: both or neither), and refund.
    async fn late_refund(&self, p: &Stored, channel: usize) -> Result<(), PayError> {
        let t = &p.transfer;
        let refund_id = derived("late_refund", t.id.0);
        let mut capture = Self::single(
            derived("late_capture", t.id.0),
            t.debit,
            chart::ESCROW,
            t.amount,
            code::LATE_CAPTURE,
            t.user_data,
        );
        capture.linked = true;
        let back = Self::single(
            refund_id,
            chart::ESCROW,
            t.debit,
            t.amount,
            code::LATE_REFUND,
            t.user_data,
        );
        let results = self.transfers(vec![capture, back]).await?;
        if results.iter().any(Result::is_err) {
            tracing::error!(?results, "recording a late refund was refused");
            return Err(PayError::Unavailable);
        }
        if results.iter().all(|r| *r == Ok(LedOutcome::Created)) {
            bump(&self.shared.counters.late_refunds);
        }
        self.provider_refund(ProviderRefund {
            channel,
            refund: refund_id.0,
            payment: t.id.0,
            amount: t.amount,
        })
        .await;
        Ok(())
    }

    // ---- top-ups, wallets -------------------------------------------------

    /// Tops up a wallet through a channel.
    pub async fn top_up(
        &self,
        user: UserId,
        amount: u64,
        method: Method,
    ) -> Result<PaymentView, PayError> {
        let max = self.shared.config.top_up_max_fen;
        if amount == 0 || amount > max {
            return Err(PayError::BadAmount { max });
        }
        if method == Method::Wallet {
            return Err(PayError::NoChannel("wallet"));
        }
        let turn = self.turn().await?;
        self.pay_through_channel(Purpose::TopUp(random_id()), user, amount, method, turn)
            .await
    }

    pub async fn wallet(&self, user: UserId) -> Result<WalletView, PayError> {
        let id = chart::wallet(user);
        match self.ledger(Led::LookupAccounts(vec![id])).await? {
            LedReply::Lookup(mut r) => Ok(r.remove(0).map_or(
                WalletView {
                    balance_fen: 0,
                    pending_out_fen: 0,
                    pending_in_fen: 0,
                },
                |a| WalletView {
                    balance_fen: a.balance(),
                    pending_out_fen: a.debits_pending,
                    pending_in_fen: a.credits_pending,
                },
            )),
            other => unreachable!("lookup answered {other:?}"),
        }
    }

    pub async fn statement(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StatementLine>, PayError> {
        let wallet = chart::wallet(user);
        let engine = self.shared.engine.clone();
        let rows = tokio::task::spawn_blocking(move || {
            engine
                .ledger_reader()
                .wallet_statement(wallet, before, limit)
        })
        .await
        .map_err(|_| PayError::Unavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "reading a statement");
            PayError::Unavailable
        })?;
        Ok(rows
            .into_iter()
            .map(|s| {
                let t = &s.transfer;
                let amount = i128::from(t.amount);
                StatementLine {
                    seq: s.seq,
                    transfer: t.id.0,
                    kind: code::name(t.code),
                    mode: match t.mode {
                        Mode::Single => "single",
                        Mode::Pending { .. } => "pending",
                        Mode::Post { .. } => "post",
                        Mode::Void { .. } => "void",
                    },
                    amount_fen: if t.credit == wallet { amount } else { -amount },
                    state: s.state.map(PendingState::as_str),
                    reference: t.user_data,
                    at_ms: s.created_at.0,
                }
            })
            .collect())
    }

    // ---- after payment: settle, COD, refunds ---------------------------

    /// The claim on an order's money (refunds, settlement, collection):
    /// one at a time. Order claims carry the top bit; try ids stay below 2^53.
    fn claim_order(&self, order: OrderId) -> Result<Held, PayError> {
        self.claim(order.0 | (1 << 63)).ok_or(PayError::Busy)
    }

    async fn merchant_of(&self, order: &Order) -> AccountId {
        let merchant = self
            .shared
            .engine
            .board()
            .get(order.sku)
            .map(|e| e.item.merchant)
            .expect("an order's item exists");
        chart::merchant(merchant)
    }

    /// The order was delivered: it becomes `delivered` (it can no longer be
    /// cancelled), then its escrowed money (less refunds) goes to the
    /// merchant. Delivery comes first and is idempotent, so a settlement cut
    /// off half-way is finished by calling this again.
    pub async fn settle(&self, order: OrderId) -> Result<u64, PayError> {
        let o = self
            .stored_order(order)
            .await?
            .ok_or(PayError::UnknownOrder)?;
        if !matches!(
            o.status,
            OrderStatus::Paid | OrderStatus::Confirmed | OrderStatus::Delivered
        ) {
            return Err(PayError::NotSettleable(o.status.as_str()));
        }
        let _held = self.claim_order(order)?;
        // Refusals first, so a refused delivery changes nothing.
        match lock(&self.shared.state).orders.get(&order) {
            None => return Err(PayError::NotPaid),
            Some(m) if m.settled => return Err(PayError::AlreadySettled),
            Some(_) => {}
        }
        let o = self.deliver(order).await?;
        self.settle_claimed(&o).await
    }

    /// `paid | confirmed → delivered` in the inventory (a replay if it is
    /// delivered already). The caller holds the order's claim.
    async fn deliver(&self, order: OrderId) -> Result<Order, PayError> {
        match self.inventory(order, Inv::Deliver { order }).await? {
            InvReply::Order { order, .. } => Ok(order),
            InvReply::Refused(Refusal::InvalidTransition { status, .. }) => {
                Err(PayError::NotSettleable(status.as_str()))
            }
            InvReply::Refused(Refusal::UnknownOrder) => Err(PayError::UnknownOrder),
            _ => {
                // Inactive: cancelled or expired meanwhile.
                let now = self.stored_order(order).await?;
                Err(PayError::NotSettleable(
                    now.map_or("unknown", |o| o.status.as_str()),
                ))
            }
        }
    }

    async fn settle_claimed(&self, o: &Order) -> Result<u64, PayError> {
        let money = lock(&self.shared.state)
            .orders
            .get(&o.id)
            .copied()
            .ok_or(PayError::NotPaid)?;
        if money.settled {
            return Err(PayError::AlreadySettled);
        }
        let merchant = self.merchant_of(o).await;
        self.ensure_accounts(&[merchant]).await?;
        let amount = money.paid.saturating_sub(money.refunded);
        if amount > 0 {
            let t = Self::single(
                derived("settle", o.id.0),
                chart::ESCROW,
                merchant,
                amount,
                code::SETTLEMENT,
                o.id.0,
            );
            if let Err(r) = self.transfer(t).await? {
                tracing::error!(refusal = r.code(), "settlement refused");
                return Err(PayError::Unavailable);
            }
        }
        if let Some(m) = lock(&self.shared.state).orders.get_mut(&o.id) {
            m.settled = true;
        }
        Ok(amount)
    }

    /// The courier collected cash for a COD order: the order is delivered
    /// (it can no longer be cancelled) and the cash is booked into escrow.
    /// Idempotent: a repeat books nothing twice.
    pub async fn cod_collected(&self, order: OrderId) -> Result<u64, PayError> {
        let o = self
            .stored_order(order)
            .await?
            .ok_or(PayError::UnknownOrder)?;
        if o.payment != PaymentMethod::Cod
            || !matches!(o.status, OrderStatus::Confirmed | OrderStatus::Delivered)
        {
            return Err(PayError::NotSettleable(o.status.as_str()));
        }
        let amount = u64::try_from(o.amount_fen.0)
            .ok()
            .filter(|a| *a > 0)
            .ok_or(PayError::NotSettleable("free"))?;
        let _held = self.claim_order(order)?;
        self.deliver(order).await?;
        let id = derived("cod", order.0);
        if let Err(r) = self
            .transfer(Self::single(
                id,
                chart::COD,
                chart::ESCROW,
                amount,
                code::COD_COLLECTION,
                order.0,
            ))
            .await?
        {
            tracing::error!(refusal = r.code(), "COD collection refused");
            return Err(PayError::Unavailable);
        }
        let mut state = lock(&self.shared.state);
        state.orders.entry(order).or_insert(OrderMoney {
            payer: chart::COD,
            paid_by: id,
            paid: amount,
            refunded: 0,
            settled: false,
        });
        Ok(amount)
    }

    /// Refunds `amount` (all that is left if `None`) of a paid order, back
    /// the way it came. `key` names the refund: the same key is the same
    /// refund (a replay moves nothing).
    pub async fn refund(
        &self,
        order: OrderId,
        amount: Option<u64>,
        key: u64,
    ) -> Result<RefundView, PayError> {
        let o = self
            .stored_order(order)
            .await?
            .ok_or(PayError::UnknownOrder)?;
        let _held = self.claim_order(order)?;
        self.refund_claimed(&o, amount, key).await
    }

    async fn refund_claimed(
        &self,
        o: &Order,
        amount: Option<u64>,
        key: u64,
    ) -> Result<RefundView, PayError> {
        let id = TransferId(
            (mall_core::fingerprint(&[b"refund", &o.id.0.to_le_bytes(), &key.to_le_bytes()])
                & ID_MASK)
                .max(1),
        );
        let money = lock(&self.shared.state)
            .orders
            .get(&o.id)
            .copied()
            .ok_or(PayError::NotPaid)?;
        if let Some(done) = self.lookup_transfer(id.0).await? {
            if done.transfer.code != code::REFUND || done.transfer.user_data != o.id.0 {
                tracing::error!(id = id.0, "a refund id collides with another transfer");
                return Err(PayError::Unavailable);
            }
            // A replay: answer as the first time (and make sure the
            // provider heard of it).
            if let Some(channel) = chart::channel_of(money.payer) {
                self.provider_refund(ProviderRefund {
                    channel,
                    refund: id.0,
                    payment: money.paid_by.0,
                    amount: done.transfer.amount,
                })
                .await;
            }
            return Ok(RefundView {
                refund: id.0,
                amount_fen: done.transfer.amount,
                refunded_total_fen: money.refunded,
                paid_fen: money.paid,
            });
        }
        let remaining = money.paid.saturating_sub(money.refunded);
        let amount = amount.unwrap_or(remaining);
        if amount == 0 || amount > remaining {
            return Err(PayError::RefundExceedsPaid { remaining });
        }
        let source = if money.settled {
            self.merchant_of(o).await
        } else {
            chart::ESCROW
        };
        let t = Self::single(id, source, money.payer, amount, code::REFUND, o.id.0);
        match self.transfer(t).await? {
            Ok(LedOutcome::Created) => {}
            Ok(LedOutcome::Replayed) => {}
            Err(r) => {
                tracing::error!(refusal = r.code(), "refund refused by the ledger");
                return Err(PayError::Unavailable);
            }
        }
        let total = {
            let mut state = lock(&self.shared.state);
            let m = state.orders.get_mut(&o.id).expect("paid order indexed");
            m.refunded += amount;
            m.refunded
        };
        bump(&self.shared.counters.refunds);
        if let Some(log) = &self.shared.events {
            let mut e = mall_events::Event::new(self.now().0, mall_events::Kind::Refund);
            (e.u, e.s, e.o, e.a) = (o.user.0, o.sku.0, o.id.0, amount as i64);
            log.record(e);
        }
        if let Some(channel) = chart::channel_of(money.payer) {
            self.provider_refund(ProviderRefund {
                channel,
                refund: id.0,
                payment: money.paid_by.0,
                amount,
            })
            .await;
        }
        Ok(RefundView {
            refund: id.0,
            amount_fen: amount,
            refunded_total_fen: total,
            paid_fen: money.paid,
        })
    }

    /// Holds an order still for a cancel, before anything changes: no
    /// payment of it is live or can start, and no refund or settlement of
    /// it runs, until the hold is dropped. Waits up to `payment_wait` for a
    /// live payment or another claim to end; past that, refuses
    /// (`payment_in_progress` or `busy`) with nothing changed.
    pub async fn hold_for_cancel(&self, order: OrderId) -> Result<CancelHold, PayError> {
        let deadline = Instant::now() + Duration::from_millis(self.shared.config.wait_ms);
        loop {
            {
                let mut state = lock(&self.shared.state);
                let purpose = Purpose::Order(order);
                let claim = order.0 | (1 << 63);
                let live = state.live.contains_key(&purpose);
                if !live && !state.claims.contains(&claim) {
                    state.live.insert(purpose, 0);
                    state.claims.insert(claim);
                    drop(state);
                    return Ok(CancelHold {
                        _live: Held {
                            shared: self.shared.clone(),
                            what: HeldWhat::Live(purpose),
                        },
                        _claim: Held {
                            shared: self.shared.clone(),
                            what: HeldWhat::Claim(claim),
                        },
                    });
                }
                if Instant::now() >= deadline {
                    return Err(if live {
                        PayError::InProgress
                    } else {
                        PayError::Busy
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The order was cancelled under `hold`: refund what is left of its
    /// payment, back the way it came. Should the refund fail (the ledger is
    /// down), it is retried in the background until it lands, and a start
    /// refunds any cancelled order that kept money; the cancel stands.
    pub async fn refund_cancelled(&self, hold: CancelHold, order: &Order) -> Option<RefundView> {
        let key = derived("cancel", order.id.0).0;
        let paid = lock(&self.shared.state)
            .orders
            .get(&order.id)
            .is_some_and(|m| m.paid > m.refunded);
        if !paid {
            return None;
        }
        match self.refund_claimed(order, None, key).await {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(order = order.id.0, error = %e, "refund of a cancelled order failed; retrying in the background");
                drop(hold);
                let me = self.clone();
                let id = order.id;
                spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match me.on_cancelled(id).await {
                            Ok(_) => return,
                            Err(e) => {
                                tracing::warn!(order = id.0, error = %e, "refund of a cancelled order; retrying")
                            }
                        }
                    }
                });
                None
            }
        }
    }

    /// An order was cancelled: refund what is left of its payment, if any.
    /// `Busy` while a payment of the order is still being decided (the
    /// caller retries; a start refunds whatever a cancelled order kept).
    pub async fn on_cancelled(&self, order: OrderId) -> Result<Option<RefundView>, PayError> {
        let paid = {
            let state = lock(&self.shared.state);
            if state.live.contains_key(&Purpose::Order(order)) {
                return Err(PayError::Busy);
            }
            state
                .orders
                .get(&order)
                .is_some_and(|m| m.paid > m.refunded)
        };
        if !paid {
            return Ok(None);
        }
        self.refund(order, None, derived("cancel", order.0).0)
            .await
            .map(Some)
    }

    // ---- start: the index and reconciliation ---------------------------

    /// Rebuilds the money of every paid order; returns the tries a crash
    /// left pending.
    async fn rebuild_index(&self) -> Result<Vec<Stored>, PayError> {
        let engine = self.shared.engine.clone();
        let transfers = tokio::task::spawn_blocking(move || engine.ledger_reader().all_transfers())
            .await
            .map_err(|_| PayError::Unavailable)?
            .map_err(|e| {
                tracing::error!(error = %e, "reading the ledger");
                PayError::Unavailable
            })?;
        let now = self.now().0;
        let mut state = lock(&self.shared.state);
        let mut pending = Vec::new();
        for s in transfers {
            let t = &s.transfer;
            let order = OrderId(t.user_data);
            match (t.code, t.mode) {
                (code::WALLET_PAYMENT | code::CHANNEL_PAYMENT, Mode::Post { pending }) => {
                    state.orders.insert(
                        order,
                        OrderMoney {
                            payer: t.debit,
                            paid_by: pending,
                            paid: t.amount,
                            refunded: 0,
                            settled: false,
                        },
                    );
                }
                (code::COD_COLLECTION, _) => {
                    state.orders.insert(
                        order,
                        OrderMoney {
                            payer: t.debit,
                            paid_by: t.id,
                            paid: t.amount,
                            refunded: 0,
                            settled: false,
                        },
                    );
                }
                (code::REFUND, _) => {
                    if let Some(m) = state.orders.get_mut(&order) {
                        m.refunded += t.amount;
                    }
                }
                (code::SETTLEMENT, _) => {
                    if let Some(m) = state.orders.get_mut(&order) {
                        m.settled = true;
                    }
                }
                (code::CHANNEL_PAYMENT | code::TOP_UP, Mode::Pending { .. })
                    if s.state == Some(PendingState::Voided)
                        && s.created_at.0 + self.shared.config.watch_ms > now =>
                {
                    if let Some(c) =
                        chart::channel_of(t.debit).filter(|c| *c < self.shared.providers.len())
                    {
                        state.watch.push_back((
                            t.id.0,
                            c,
                            s.created_at.0 + self.shared.config.watch_ms,
                        ));
                    }
                }
                (_, Mode::Pending { .. }) if s.state == Some(PendingState::Pending) => {
                    pending.push(s.clone())
                }
                _ => {}
            }
        }
        Ok(pending)
    }

    /// Decides what a crash left undecided: pending tries (by the order's
    /// status or the provider's word) and refunds of cancelled paid orders.
    async fn reconcile(&self, pending: Vec<Stored>) {
        for p in pending {
            let t = &p.transfer;
            let channel = chart::channel_of(t.debit).filter(|c| *c < self.shared.providers.len());
            let result = match (t.code, channel) {
                // A wallet payment: the order's status decides.
                (code::WALLET_PAYMENT, _) => self.settle_order_try(&p).await.map(drop),
                (_, Some(c)) => match self.shared.providers[c].status(t.id.0).await {
                    Ok(ProviderStatus::Succeeded) => self.capture(&p, c).await,
                    // Failed, unknown or still pending: the order's status
                    // decides (a confirm may have landed before the crash);
                    // a try voided is watched and a late charge handed back.
                    _ => match self.settle_order_try_or_void(&p).await {
                        Ok(false) => {
                            self.watch(t.id.0, c);
                            Ok(())
                        }
                        other => other.map(drop),
                    },
                },
                (_, None) => self.settle_order_try_or_void(&p).await.map(drop),
            };
            if let Err(e) = result {
                tracing::warn!(transfer = t.id.0, error = %e, "reconciling a pending payment failed; it stays pending");
            }
        }
        let paid: Vec<OrderId> = lock(&self.shared.state)
            .orders
            .iter()
            .filter(|(_, m)| m.paid > m.refunded)
            .map(|(id, _)| *id)
            .collect();
        for order in paid {
            if let Ok(Some(o)) = self.stored_order(order).await {
                if o.status == OrderStatus::Cancelled {
                    if let Err(e) = self.on_cancelled(order).await {
                        tracing::warn!(order = order.0, error = %e, "refund of a cancelled order failed");
                    }
                }
            }
        }
    }
}

fn method(m: mall_channels::config::PayMethod) -> PayMethod {
    match m {
        mall_channels::config::PayMethod::Card => PayMethod::Card,
        mall_channels::config::PayMethod::ThirdParty => PayMethod::ThirdParty,
    }
}

/// The payment service's settings for a server listening on `server`:
/// channels from a channels file (the one `mall channels` serves; none:
/// wallet payments only), at the addresses given (`addrs` overrides the
/// file's ports, for simulators on free ports).
pub fn config_from_file(
    file: Option<&mall_channels::config::ChannelsFile>,
    addrs: &[(String, SocketAddr)],
    server: SocketAddr,
) -> Result<PaymentsConfig, String> {
    // Providers call back on loopback; a server on every address is also there.
    let callback = if server.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], server.port()))
    } else {
        server
    };
    let mut config = PaymentsConfig {
        callback_base: format!("http://{callback}"),
        ..PaymentsConfig::default()
    };
    for spec in file.map(|f| f.channel.as_slice()).unwrap_or_default() {
        let addr = match addrs.iter().find(|(n, _)| *n == spec.name) {
            Some((_, a)) => *a,
            None => SocketAddr::new(file.expect("specs come from a file").host, spec.port),
        };
        if addr.port() == 0 {
            return Err(format!(
                "channel {} has port 0; give it a port to reach it",
                spec.name
            ));
        }
        config.channels.push(ChannelSetup {
            name: spec.name.clone(),
            addr,
            secret: spec.secret.clone(),
            methods: spec.methods.iter().copied().map(method).collect(),
            capacity_per_s: spec.capacity_per_s,
            max_concurrency: spec.max_concurrency,
            fee_bp: spec.fee_bp,
            priority: spec.priority.min(255) as u8,
        });
    }
    Ok(config)
}

/// Simulated providers for `file`'s channels in this process, on free
/// ports, and the settings that route to them (demos and tests).
pub async fn simulated_channels(
    mut file: mall_channels::config::ChannelsFile,
    seed: u64,
    server: SocketAddr,
) -> Result<(mall_channels::Simulator, PaymentsConfig), String> {
    for c in &mut file.channel {
        c.port = 0;
    }
    let simulator = mall_channels::Simulator::start(file.clone(), seed)
        .await
        .map_err(|e| format!("starting simulated channels: {e:#}"))?;
    let config = config_from_file(Some(&file), &simulator.addrs(), server)?;
    Ok((simulator, config))
}
