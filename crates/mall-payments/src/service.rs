//! The payment service: the I/O around the [`crate::core`]. It carries the
//! core's actions out (the engine's ledger and inventory, order reads,
//! provider calls), feeds their results back, answers the callers, and
//! drives the core's time. It decides nothing about money itself, apart
//! from the after-sale operations ([`crate::after_sale`]).

use crate::adapter::{AdapterError, Provider};
use crate::config::PaymentsConfig;
use crate::core::{
    Action, Answer, Core, CoreConfig, Input, IoReply, Now, ProviderCall, ProviderFault, ReqId,
};
use crate::errors::PayError;
use crate::views::{Method, PayStatus, PaymentView, StatementLine, WalletView};
use crate::PayCounters;
use mall_core::{Order, OrderId, OrderStatus, UserId};
use mall_engine::Engine;
use mall_inventory::Reply as InvReply;
use mall_ledger::chart::{self, code};
use mall_ledger::{Account, AccountId, Command as Led, Mode, PendingState, Reply as LedReply};
use mall_router::router::{ChannelStatus, Router};
use mall_router::signature;
use mall_shard::Clock;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: PaymentsConfig,
    pub(crate) providers: Vec<Provider>,
    pub(crate) core: Mutex<Core>,
    wake: Notify,
    epoch: Instant,
    pub(crate) counters: Arc<PayCounters>,
    admission: tokio::sync::Semaphore,
    pub(crate) events: Option<mall_events::EventLog>,
    waiting: Mutex<FxHashMap<ReqId, oneshot::Sender<Answer>>>,
    next_req: AtomicU64,
    /// Told when the start's pending transfers are decided.
    recovered: Mutex<Option<oneshot::Sender<()>>>,
    /// When the driver wakes next (monotonic µs): an input that makes the
    /// core's next wake earlier wakes it; others leave it asleep.
    driver_wakes_at: std::sync::atomic::AtomicI64,
    /// Paid pre-sale deposits whose balance is not known paid: their
    /// balance window's end, and how many rounds of the watch to skip
    /// before looking again (see `after_sale`).
    pub(crate) deposits: Mutex<std::collections::BTreeMap<OrderId, (mall_core::Timestamp, u32)>>,
    /// Orders with money the deposit watch has looked at (each is read
    /// once: a payment recorded by any path is found, not only a fresh one).
    pub(crate) looked_at: Mutex<rustc_hash::FxHashSet<OrderId>>,
}

/// The payment service. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    pub(crate) shared: Arc<Shared>,
}

/// An order held still for a cancel (see [`Payments::hold_for_cancel`]):
/// released when dropped.
pub struct CancelHold {
    shared: Arc<Shared>,
    order: OrderId,
}

impl Drop for CancelHold {
    fn drop(&mut self) {
        lock(&self.shared.core).release_cancel(self.order);
    }
}

/// The payment service's own runtime: one thread at a lower CPU priority
/// (nice 10), so payment work takes at most one core, and when the CPU is
/// short, order placement and its refusals go first and payment work
/// yields, without being refused. (Two threads measured no better on
/// payments-3k: 2,250 and 1,961 paid/s against 1,840 and 1,955 with one,
/// in alternating runs; a profile shows this thread at 8% of the server's
/// CPU.) Shared by every `Payments` of the process; never dropped.
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
pub(crate) fn spawn<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(work)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS has randomness");
    u64::from_le_bytes(b)
}

/// How long past its own wait a request waits for the core's answer before
/// giving up (a safety net: the core answers every request it takes).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

impl Payments {
    /// Creates the mall's own accounts, rebuilds the payments index from
    /// the ledger, settles what a crash left pending, and starts the
    /// core's driver.
    pub async fn start(
        engine: Arc<Engine>,
        config: PaymentsConfig,
        clock: Arc<dyn Clock>,
        events: Option<mall_events::EventLog>,
    ) -> Result<Payments, PayError> {
        let providers: Vec<Provider> = config
            .channels
            .iter()
            .map(|c| {
                Provider::new(
                    c.route.name.clone(),
                    c.addr,
                    c.secret.clone(),
                    Duration::from_millis(config.provider_timeout_ms),
                )
            })
            .collect();
        let channels = config.channels.iter().map(|c| c.route.clone()).collect();
        let router = Router::new(channels, config.router.clone(), 0);
        let core_config = CoreConfig {
            channels: config
                .channels
                .iter()
                .map(|c| (c.route.name.clone(), c.route.methods.clone()))
                .collect(),
            wait_ms: config.wait_ms,
            tries_max: config.tries_max,
            watch_ms: config.watch_ms,
        };
        let counters = Arc::new(PayCounters::default());
        let now = Now {
            mono_us: 0,
            wall: clock.now(),
        };
        let core = Core::new(core_config, router, random_seed(), now, counters.clone());
        let payments = Payments {
            shared: Arc::new(Shared {
                engine,
                clock,
                providers,
                core: Mutex::new(core),
                wake: Notify::new(),
                epoch: Instant::now(),
                counters,
                admission: tokio::sync::Semaphore::new(config.in_process_max.max(1)),
                events,
                waiting: Mutex::new(FxHashMap::default()),
                next_req: AtomicU64::new(1),
                recovered: Mutex::new(None),
                driver_wakes_at: std::sync::atomic::AtomicI64::new(0),
                deposits: Mutex::new(Default::default()),
                looked_at: Mutex::new(Default::default()),
                config,
            }),
        };
        let mut fixed = vec![chart::ESCROW, chart::COD, chart::PROMOTIONS];
        fixed.extend((0..payments.shared.providers.len()).map(chart::clearing));
        payments.ensure_accounts(&fixed).await?;
        let engine = payments.shared.engine.clone();
        let transfers = tokio::task::spawn_blocking(move || engine.ledger_reader().all_transfers())
            .await
            .map_err(|_| PayError::Unavailable)?
            .map_err(|e| {
                tracing::error!(error = %e, "reading the ledger");
                PayError::Unavailable
            })?;
        let driver = payments.clone();
        spawn(async move { driver.drive().await });
        // The start's pending transfers are decided before anything else.
        let (tx, rx) = oneshot::channel();
        *lock(&payments.shared.recovered) = Some(tx);
        let recovering = payments.clone();
        spawn(async move { recovering.run(Input::Recover { transfers }) })
            .await
            .map_err(|_| PayError::Unavailable)?;
        let _ = rx.await;
        payments.sweep_at_start().await;
        let watch = payments.clone();
        spawn(async move { watch.watch_deposits().await });
        Ok(payments)
    }

    pub fn counters(&self) -> &PayCounters {
        &self.shared.counters
    }

    pub fn channels(&self) -> Vec<ChannelStatus> {
        lock(&self.shared.core).router().channels()
    }

    pub fn queue_depth(&self) -> usize {
        lock(&self.shared.core).router().queue_depth()
    }

    fn now(&self) -> Now {
        Now {
            mono_us: self.shared.epoch.elapsed().as_micros() as i64,
            wall: self.shared.clock.now(),
        }
    }

    // ---- carrying the core's actions out ------------------------------

    /// A request id and where its answer arrives.
    fn request(&self) -> (ReqId, oneshot::Receiver<Answer>) {
        let req = self.shared.next_req.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.waiting).insert(req, tx);
        (req, rx)
    }

    /// Hands `input` to the core and carries out what follows, until only
    /// I/O in flight is left.
    fn run(&self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        let mut wake = None;
        while let Some(input) = inputs.pop_front() {
            let actions = {
                let mut core = lock(&self.shared.core);
                core.handle(self.now(), input);
                wake = core.next_wake();
                core.take_actions()
            };
            for action in actions {
                self.carry_out(action, &mut inputs);
            }
        }
        if wake.is_some_and(|w| w < self.shared.driver_wakes_at.load(Relaxed)) {
            self.shared.wake.notify_one();
        }
    }

    fn carry_out(&self, action: Action, inputs: &mut VecDeque<Input>) {
        match action {
            // A point read by primary key: tens of microseconds on a local
            // store (SQLite), done here, as a hop would cost more; a round
            // trip on a remote one (PostgreSQL), which must not block this
            // thread: the blocking pool does it and the answer comes back
            // as an input.
            Action::ReadOrder { op, order } if self.shared.engine.store().reads_are_local() => {
                inputs.push_back(Input::Reply {
                    op,
                    reply: IoReply::Order(self.stored_order(order)),
                })
            }
            Action::ReadOrder { op, order } => {
                let me = self.clone();
                let (tx, rx) = oneshot::channel();
                runtime().spawn_blocking(move || drop(tx.send(me.stored_order(order))));
                self.reply_later(op, Some(Ok(rx)), inputs, |r| {
                    IoReply::Order(r.and_then(|r| r))
                });
            }
            Action::Ledger { op, command } => {
                let submitted = self.shared.engine.try_submit_ledger(command);
                self.reply_later(op, Some(submitted), inputs, |r| {
                    IoReply::Ledger(r.and_then(|r| match r {
                        LedReply::Unavailable => Err(PayError::Unavailable),
                        reply => Ok(reply),
                    }))
                });
            }
            Action::Inventory { op, order, command } => {
                let submitted = self.shared.engine.try_submit_for_order(order, command);
                self.reply_later(op, submitted, inputs, |r| {
                    IoReply::Inventory(r.and_then(|r| match r {
                        InvReply::Unavailable => Err(PayError::Unavailable),
                        reply => Ok(reply),
                    }))
                });
            }
            Action::Provider { op, channel, call } => {
                let me = self.clone();
                spawn(async move {
                    let reply = IoReply::Provider(me.call_provider(channel, call).await);
                    me.run(Input::Reply { op, reply });
                });
            }
            Action::Answer { req, answer } => {
                if let Some(tx) = lock(&self.shared.waiting).remove(&req) {
                    let _ = tx.send(answer);
                }
            }
            Action::Paid {
                order,
                amount,
                channel,
            } => {
                self.note_presale_paid(&order);
                self.record_pay(&order, amount, &channel)
            }
            Action::Refunded { order, amount } => {
                if let Some(log) = &self.shared.events {
                    let now = self.now().wall.0;
                    let mut e = mall_events::Event::new(now, mall_events::Kind::Refund);
                    (e.user, e.sku, e.order, e.amount_fen) =
                        (order.user.0, order.sku.0, order.id.0, amount as i64);
                    log.record(e);
                }
            }
            Action::Recovered => {
                if let Some(tx) = lock(&self.shared.recovered).take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Feeds the core the reply of a command submitted to the engine:
    /// `None`, no shard has the order; a full queue is `Overloaded` now; a
    /// reply, when it comes (a batch not committed: `Unavailable`).
    fn reply_later<R: Send + 'static>(
        &self,
        op: crate::core::OpId,
        submitted: Option<Result<oneshot::Receiver<R>, mall_shard::Busy>>,
        inputs: &mut VecDeque<Input>,
        reply: fn(Result<R, PayError>) -> IoReply,
    ) {
        let rx = match submitted {
            None => Err(PayError::UnknownOrder),
            Some(Err(_)) => Err(PayError::Overloaded),
            Some(Ok(rx)) => Ok(rx),
        };
        match rx {
            Err(e) => inputs.push_back(Input::Reply {
                op,
                reply: reply(Err(e)),
            }),
            Ok(rx) => {
                let me = self.clone();
                spawn(async move {
                    let reply = reply(rx.await.map_err(|_| PayError::Unavailable));
                    me.run(Input::Reply { op, reply });
                });
            }
        }
    }

    async fn call_provider(
        &self,
        channel: usize,
        call: ProviderCall,
    ) -> Result<crate::core::ProviderStatus, ProviderFault> {
        let Some(provider) = self.shared.providers.get(channel) else {
            return Err(ProviderFault::Failed);
        };
        let fault = |e: AdapterError| {
            tracing::debug!(error = %e, "provider call failed");
            match e {
                AdapterError::Timeout(_) => ProviderFault::Timeout,
                _ => ProviderFault::Failed,
            }
        };
        match call {
            ProviderCall::Create {
                payment,
                amount,
                method,
            } => {
                let callback = format!(
                    "{}/v1/channels/{}/callback",
                    self.shared.config.callback_base, provider.name
                );
                provider
                    .create(payment, amount, method.as_str(), &callback)
                    .await
                    .map(|()| crate::core::ProviderStatus::Pending)
                    .map_err(fault)
            }
            ProviderCall::Status { payment } => provider.status(payment).await.map_err(fault),
            ProviderCall::Refund {
                refund,
                payment,
                amount,
            } => provider
                .refund(refund, payment, amount)
                .await
                .map(|()| crate::core::ProviderStatus::Succeeded)
                .map_err(fault),
        }
    }

    /// Drives the core's time: the router's timeouts and releases, and
    /// the core's timers.
    async fn drive(&self) {
        loop {
            // Awake: any input that brings the next wake earlier notifies
            // (the permit is kept), so none is missed before the sleep.
            self.shared.driver_wakes_at.store(i64::MAX, Relaxed);
            let refresh = self.now().mono_us + self.shared.config.router.refresh_us.max(1_000);
            let (actions, wake) = {
                let mut core = lock(&self.shared.core);
                core.tick(self.now());
                (core.take_actions(), core.next_wake())
            };
            let mut inputs = VecDeque::new();
            for action in actions {
                self.carry_out(action, &mut inputs);
            }
            for input in inputs {
                self.run(input);
            }
            let wake = wake.unwrap_or(refresh).min(refresh);
            self.shared.driver_wakes_at.store(wake, Relaxed);
            let delay = Duration::from_micros((wake - self.now().mono_us).max(200) as u64);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// Submits a request to the core and waits for its answer. `turn`
    /// (if any) is given back once the core has taken the request.
    pub(crate) async fn ask(
        &self,
        make: impl FnOnce(ReqId) -> Input,
        turn: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Result<Answer, PayError> {
        let (req, rx) = self.request();
        self.run(make(req));
        drop(turn);
        let wait = Duration::from_millis(self.shared.config.wait_ms) + ANSWER_GRACE;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                lock(&self.shared.waiting).remove(&req);
                tracing::error!(req, "the payment core did not answer a request");
                Err(PayError::Unavailable)
            }
        }
    }

    // ---- the I/O the after-sale operations share ------------------------

    pub(crate) async fn ledger(&self, command: Led) -> Result<LedReply, PayError> {
        let rx = self
            .shared
            .engine
            .try_submit_ledger(command)
            .map_err(|_| PayError::Overloaded)?;
        match rx.await {
            Ok(LedReply::Unavailable) | Err(_) => Err(PayError::Unavailable),
            Ok(reply) => Ok(reply),
        }
    }

    /// Creates the accounts that do not exist yet (creation is idempotent;
    /// the ones known to exist cost nothing).
    pub(crate) async fn ensure_accounts(&self, ids: &[AccountId]) -> Result<(), PayError> {
        let accounts: Vec<Account> = crate::core::missing_accounts(&lock(&self.shared.core), ids);
        if accounts.is_empty() {
            return Ok(());
        }
        let created: Vec<AccountId> = accounts.iter().map(|a| a.id).collect();
        match self.ledger(Led::CreateAccounts(accounts)).await? {
            LedReply::Accounts(r) if r.iter().all(Result::is_ok) => {
                lock(&self.shared.core).accounts_made(&created);
                Ok(())
            }
            other => {
                tracing::error!(?other, "creating ledger accounts");
                Err(PayError::Unavailable)
            }
        }
    }

    /// The order as stored (a point read on the shard's WAL reader).
    pub(crate) fn stored_order(&self, id: OrderId) -> Result<Option<Order>, PayError> {
        self.shared
            .engine
            .reader_for_order(id)
            .map_or(Ok(None), |r| r.order(id))
            .map_err(|e| {
                tracing::error!(error = %e, "reading an order");
                PayError::Unavailable
            })
    }

    /// The event of a payment that succeeded.
    fn record_pay(&self, o: &Order, amount: u64, channel: &str) {
        if let Some(log) = &self.shared.events {
            let mut e = mall_events::Event::new(self.now().wall.0, mall_events::Kind::Pay);
            (e.user, e.sku, e.order, e.amount_fen) = (o.user.0, o.sku.0, o.id.0, amount as i64);
            e.channel = Some(channel.to_string());
            log.record(e);
        }
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
        // A turn covers the work of starting a payment (the read and the
        // core's decision), not the wait for the provider: a payment
        // waiting for its callback costs a waiter's memory, nothing more.
        let turn = self.turn().await?;
        let read = self.stored_order(order)?;
        let pay = |req| Input::Pay {
            req,
            user,
            order,
            method,
            read: read.clone(),
        };
        let view = self.ask(pay, Some(turn)).await?.payment()?;
        let mut o = read.expect("a paid order was read");
        if view.status == PayStatus::Succeeded {
            o.status = OrderStatus::Paid;
            o.expires_at = None;
            o.updated_at = self.now().wall;
        }
        Ok((view, o))
    }

    /// Pays the line orders of checkout `checkout` for `user` with one
    /// provider payment (card or third party). The answer waits up to
    /// `wait_ms` for the outcome, as [`Payments::pay`]'s does; a success
    /// may have paid only some lines (a line whose hold lapsed before its
    /// confirm is handed back): the lines' orders tell.
    pub async fn pay_checkout(
        &self,
        user: UserId,
        checkout: u64,
        orders: Vec<OrderId>,
        method: Method,
    ) -> Result<PaymentView, PayError> {
        let me = self.clone();
        spawn(async move {
            let turn = me.turn().await?;
            let mut reads = Vec::with_capacity(orders.len());
            for order in orders {
                reads.push((order, me.stored_order(order)?));
            }
            let pay = |req| Input::PayCheckout {
                req,
                user,
                checkout,
                method,
                reads,
            };
            me.ask(pay, Some(turn)).await?.payment()
        })
        .await
        .unwrap_or(Err(PayError::Unavailable))
    }

    /// A turn to start a payment (see `PaymentsConfig::in_process_max`).
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PayError> {
        self.shared
            .admission
            .acquire()
            .await
            .map_err(|_| PayError::Unavailable)
    }

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
        let me = self.clone();
        spawn(async move {
            let turn = me.turn().await?;
            let top_up = |req| Input::TopUp {
                req,
                user,
                amount,
                method,
            };
            me.ask(top_up, Some(turn)).await?.payment()
        })
        .await
        .unwrap_or(Err(PayError::Unavailable))
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
            spawn(async move { me.callback_here(&name, signature.as_deref(), &body).await })
                .await
                .unwrap_or(Err(PayError::Unavailable));
        if matches!(
            result,
            Err(PayError::Signature(_)
                | PayError::CallbackReplayed
                | PayError::BadCallback(_)
                | PayError::UnknownPayment)
        ) {
            self.shared.counters.callbacks_refused.fetch_add(1, Relaxed);
        }
        result
    }

    async fn callback_here(
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
        let payment: u64 = v["payment_id"]
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
        let amount = v["amount_fen"]
            .as_u64()
            .ok_or_else(|| PayError::BadCallback("amount_fen must be a positive integer".into()))?;
        let callback = |req| Input::Callback {
            req,
            channel,
            event,
            payment,
            succeeded,
            amount,
        };
        self.ask(callback, None).await?.callback()
    }

    // ---- wallets -----------------------------------------------------------

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

    /// Whether money was ever taken for `order`, or a payment of it is under
    /// way (a checkout's coupons are kept then).
    pub fn paid_or_paying(&self, order: OrderId) -> bool {
        let core = lock(&self.shared.core);
        core.order_money(order).is_some() || core.payment_live(order)
    }

    /// Holds an order still for a cancel, before anything changes: no
    /// payment of it is live or can start, and no refund or settlement of
    /// it runs, until the hold is dropped. Waits up to `payment_wait` for a
    /// live payment or another claim to end; past that, refuses
    /// (`payment_in_progress` or `busy`) with nothing changed.
    pub async fn hold_for_cancel(&self, order: OrderId) -> Result<CancelHold, PayError> {
        let deadline = Instant::now() + Duration::from_millis(self.shared.config.wait_ms);
        loop {
            let held = lock(&self.shared.core).hold_for_cancel(order);
            match held {
                Ok(()) => {
                    return Ok(CancelHold {
                        shared: self.shared.clone(),
                        order,
                    })
                }
                Err(live) if Instant::now() >= deadline => {
                    return Err(if live {
                        PayError::InProgress
                    } else {
                        PayError::Busy
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}
