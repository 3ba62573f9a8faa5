//! Running a plan: set up the catalog and shoppers, then send every request
//! at its intended time (open loop: a request leaves on schedule whether or
//! not earlier ones returned), over a bounded pool of keep-alive
//! connections, or straight into the engine in-process. Latency is measured
//! from the intended send time, so a slow server cannot hide its queueing
//! (no coordinated omission).

use crate::http::{Conn, HttpError, Target};
use crate::plan::{FollowUp, Plan, PLAN_MERCHANTS};
use hyper::{Method, StatusCode};
use mall_core::{MerchantId, OrderId, Quantity, Sku, Timestamp, UserId};
use mall_engine::Engine;
use mall_inventory::{Command, Reply, Reserve};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// Where the rush goes.
#[derive(Clone)]
pub enum Backend {
    Http { target: Target, admin_token: String },
    InProcess { engine: Arc<Engine> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Browse,
    SnapUp,
    Pay,
    Cancel,
    LatePay,
    /// A claim of the night's coupon (the claim rush before the sale).
    Claim,
    /// A cart checkout (all or nothing).
    Checkout,
    /// A pre-sale deposit (a snap-up of the pre-sale item, before the night).
    Deposit,
    /// A pre-sale's balance asked (its payment is a `Pay`).
    Balance,
    /// A reserved checkout's lines paid with one payment.
    CheckoutPay,
}

/// What one request met.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    pub kind: Kind,
    pub rank: u32,
    pub user: u32,
    /// Intended send time, µs from the opening.
    pub at_us: i64,
    /// When the answer arrived, µs from the opening.
    pub done_us: i64,
    /// `created`/`ok`, a refusal code, or `timeout`/`transport_error`.
    pub code: String,
    pub order: Option<u64>,
    /// Status of the order in the answer.
    pub order_status: Option<String>,
    /// Snap-ups: the attempt (and so the idempotency key) it belongs to.
    pub attempt: Option<u32>,
    pub retries: u32,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.code == "created" || self.code == "ok"
    }
    pub fn latency_us(&self) -> i64 {
        (self.done_us - self.at_us).max(0)
    }
}

/// The result of a run, before summary and audit.
pub struct Outcome {
    pub plan: Plan,
    /// SKU of each item, by rank.
    pub skus: Vec<Sku>,
    /// Server id of each shopper, by index.
    pub user_ids: Vec<u64>,
    pub records: Vec<Record>,
    /// Opening of the sale, wall-clock ms.
    pub opening_ms: i64,
    /// Requests planned but not sent (limits reached).
    pub not_sent: u64,
    pub wall_s: f64,
    /// CPU time of this process over wall time, during the rush (2.0 = two cores).
    pub cpu_cores_used: f64,
    /// The same over the busiest second.
    pub cpu_cores_peak: f64,
    /// Late payments skipped because the hold outlives the run.
    pub late_pays_skipped: u64,
    /// The claim rush's coupon, if the scenario has one.
    pub coupon: Option<u64>,
}

#[derive(Clone, Debug)]
enum Job {
    Browse {
        rank: u32,
        user: u32,
    },
    SnapUp {
        index: u32,
    },
    Pay {
        order: u64,
        rank: u32,
        user: u32,
        late: bool,
        /// The plan's deposit this pays, whose balance follows once paid.
        deposit: Option<u32>,
    },
    Cancel {
        order: u64,
        rank: u32,
        user: u32,
    },
    Claim {
        user: u32,
    },
    /// The plan's checkout `index` (reserved as `checkout`) paid as a whole.
    PayCheckout {
        index: u32,
        checkout: u64,
    },
    /// The plan's checkout `index`.
    Checkout {
        index: u32,
    },
    /// The plan's deposit `index`.
    Deposit {
        index: u32,
    },
    /// The balance of the plan's deposit `index`, order `order`.
    Balance {
        index: u32,
        order: u64,
    },
}

struct Scheduled {
    job: Job,
    /// Intended send time, µs from the opening.
    at_us: i64,
}

/// The answer to one request, whatever the backend.
struct Answer {
    code: String,
    order: Option<(u64, String, Option<i64>)>,
}

struct Shared {
    plan: Plan,
    skus: Vec<Sku>,
    tokens: Vec<String>,
    backend: Backend,
    run_id: String,
    opening: Instant,
    opening_ms: i64,
    deadline: Instant,
    timeout: Duration,
    retries: u32,
    /// Jobs scheduled and not yet finished.
    outstanding: AtomicI64,
    sent: AtomicU64,
    ok: AtomicU64,
    late_pays_skipped: AtomicU64,
    not_sent: AtomicU64,
    tx: mpsc::UnboundedSender<Scheduled>,
    /// Follow-ups (pay, cancel) go out on connections of their own: a
    /// shopper's app pays on its own connection, not in the crowd's queue.
    follow_tx: mpsc::UnboundedSender<Scheduled>,
    /// Records handed back by the workers.
    records: std::sync::Mutex<Vec<Record>>,
    /// Server ids of the shoppers, by index.
    user_ids: Vec<u64>,
    /// The claim rush's coupon.
    coupon: Option<u64>,
}

pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

pub fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux); 0 where unavailable.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// How long after [`run`] is called the sale opens: time for setup (items
/// and accounts at a modest rate), then the scenario's own wait.
pub fn opening_after_ms(s: &crate::scenario::Scenario) -> i64 {
    let setup_allowance_ms = 3_000 + i64::from(s.items) / 2 + i64::from(s.users) / 20;
    setup_allowance_ms + (s.opens_in_s * 1000.0) as i64
}

/// Sets up the scenario on the backend and runs it. `progress`: print a
/// progress line (a bar on a terminal) every second.
pub async fn run(plan: Plan, backend: Backend, progress: bool) -> Result<Outcome, RunError> {
    let s = plan.scenario.clone();
    let run_id = format!("r{}x{}", s.seed, wall_ms() % 1_000_000_000);
    let opening_ms = wall_ms() + opening_after_ms(&s);
    let (skus, tokens, user_ids, coupon) =
        setup(&plan, &backend, &run_id, Timestamp(opening_ms)).await?;
    let now_ms = wall_ms();
    if now_ms > opening_ms {
        return Err(RunError::Setup(format!(
            "setup took {} ms too long; the sale opened before it ended",
            now_ms - opening_ms
        )));
    }
    let opening = Instant::now() + Duration::from_millis((opening_ms - now_ms) as u64);
    let deadline = opening + Duration::from_secs_f64(s.duration_max_s);
    let (tx, rx) = mpsc::unbounded_channel();
    let (follow_tx, follow_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        plan,
        skus,
        tokens,
        backend,
        run_id,
        opening,
        opening_ms,
        deadline,
        timeout: Duration::from_millis(s.timeout_ms),
        retries: s.retries,
        outstanding: AtomicI64::new(0),
        sent: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        late_pays_skipped: AtomicU64::new(0),
        not_sent: AtomicU64::new(0),
        tx,
        follow_tx,
        records: std::sync::Mutex::new(Vec::new()),
        user_ids,
        coupon,
    });
    let cpu_before = cpu_seconds();
    let wall_before = Instant::now();
    let (rx, follow_rx) = (Arc::new(Mutex::new(rx)), Arc::new(Mutex::new(follow_rx)));
    let workers: Vec<_> = (0..s.connections)
        .flat_map(|_| [rx.clone(), follow_rx.clone()])
        .map(|rx| {
            let shared = shared.clone();
            tokio::spawn(async move { worker(shared, rx).await })
        })
        .collect();
    let dispatcher = tokio::spawn(dispatch(shared.clone()));
    let ticker = progress.then(|| tokio::spawn(report_progress(shared.clone())));
    let peak_millicores = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak_millicores.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await; // the first tick is immediate
            let mut last = (Instant::now(), cpu_seconds());
            loop {
                every.tick().await;
                let now = (Instant::now(), cpu_seconds());
                let cores = (now.1 - last.1) / now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                peak.fetch_max((cores * 1000.0) as u64, Ordering::Relaxed);
                last = now;
            }
        })
    };
    let _ = dispatcher.await;
    // Wait for the scheduled work, or the deadline.
    while shared.outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < shared.deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leftover = shared.outstanding.load(Ordering::SeqCst).max(0) as u64;
    sampler.abort();
    if let Some(t) = ticker {
        t.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!();
        }
    }
    for w in workers {
        w.abort();
    }
    let mut records =
        std::mem::take(&mut *shared.records.lock().unwrap_or_else(|p| p.into_inner()));
    let wall_s = wall_before.elapsed().as_secs_f64();
    let cpu_cores_used = (cpu_seconds() - cpu_before) / wall_s.max(1e-9);
    // Follow-ups still sleeping past the deadline hold the state: copy out.
    let (plan, skus, user_ids) = (
        shared.plan.clone(),
        shared.skus.clone(),
        shared.user_ids.clone(),
    );
    let late = shared.late_pays_skipped.load(Ordering::Relaxed);
    let not_sent = shared.not_sent.load(Ordering::Relaxed);
    records.sort_by_key(|r| (r.at_us, r.done_us));
    Ok(Outcome {
        plan,
        skus,
        user_ids,
        records,
        opening_ms,
        not_sent: not_sent + leftover,
        wall_s,
        cpu_cores_used,
        cpu_cores_peak: peak_millicores.load(Ordering::Relaxed) as f64 / 1000.0,
        late_pays_skipped: late,
        coupon: shared.coupon,
    })
}

/// A claim of the rush's coupon, straight into the engine (the same
/// command and fingerprint as the HTTP layer makes).
async fn claim_local(shared: &Shared, engine: &Engine, user: u32) -> Answer {
    let coupon = mall_core::CouponId(shared.coupon.unwrap_or(0));
    let key: Arc<str> = format!("{}-k{user}", shared.run_id).into();
    let claim = mall_inventory::ClaimCoupon::new(local_user_id(user), coupon, Some(key));
    let Ok(rx) = engine.try_submit_for_coupon(coupon, Command::Claim(claim)) else {
        return Answer {
            code: "overloaded".into(),
            order: None,
        };
    };
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Claim { claim, replayed } => Answer {
            code: if replayed { "ok" } else { "created" }.into(),
            order: Some((claim.id.0, claim.status.as_str().into(), None)),
        },
        Reply::Refused(r) => Answer {
            code: r.code().into(),
            order: None,
        },
        _ => Answer {
            code: "store_unavailable".into(),
            order: None,
        },
    }
}

/// The id the in-process backend gives shopper `user`.
pub fn local_user_id(user: u32) -> UserId {
    UserId(1_000_000_000 + u64::from(user))
}

type Setup = (Vec<Sku>, Vec<String>, Vec<u64>, Option<u64>);

/// The claim rush's coupon: a platform coupon, ¥20 off ¥200, one each,
/// claimed from the start of the run until a day after the opening.
fn rush_coupon(plan: &Plan, opens_at: Timestamp) -> Option<Value> {
    let quantity = plan.scenario.coupon_quantity();
    (quantity > 0).then(|| {
        json!({"title": "¥20 off ¥200", "rule": {"kind": "amount_off", "off_fen": 2000, "min_spend_fen": 20000},
               "quantity": quantity, "per_user_limit": 1,
               "claim_opens_at_ms": opens_at.0 - 3_600_000 - (plan.scenario.opens_in_s * 1000.0) as i64,
               "claim_closes_at_ms": opens_at.0 + 86_400_000,
               "valid_until_ms": opens_at.0 + 86_400_000})
    })
}

async fn setup(
    plan: &Plan,
    backend: &Backend,
    run_id: &str,
    opens_at: Timestamp,
) -> Result<Setup, RunError> {
    let s = &plan.scenario;
    let now = Timestamp(wall_ms());
    match backend {
        Backend::InProcess { engine } => {
            let first = engine.board().max_sku().map_or(1, |s| s.0 + 1);
            let items: Vec<_> = plan
                .items
                .iter()
                .enumerate()
                .map(|(rank, _)| {
                    let mut item = plan.item_at(rank, opens_at, now);
                    item.sku = Sku(first + rank as u64);
                    item
                })
                .collect();
            let skus = items.iter().map(|i| i.sku).collect();
            engine
                .create_items(items)
                .await
                .map_err(|e| RunError::Setup(e.to_string()))?;
            let ids = (0..s.users).map(|u| local_user_id(u).0).collect();
            let coupon = match rush_coupon(plan, opens_at) {
                None => None,
                Some(spec) => {
                    let id =
                        mall_core::CouponId(engine.board().max_coupon().map_or(1, |c| c.0 + 1));
                    let coupon = mall_core::Coupon {
                        id,
                        merchant: None,
                        title: spec["title"].as_str().unwrap_or_default().into(),
                        spec: json!({"rule": spec["rule"]}).to_string(),
                        quantity: s.coupon_quantity(),
                        per_user_limit: 1,
                        claim_opens_at: Timestamp(spec["claim_opens_at_ms"].as_i64().unwrap_or(0)),
                        claim_closes_at: Timestamp(
                            spec["claim_closes_at_ms"].as_i64().unwrap_or(0),
                        ),
                        valid_until: Timestamp(spec["valid_until_ms"].as_i64().unwrap_or(0)),
                    };
                    let put = Command::PutCoupon {
                        coupon,
                        expected: None,
                    };
                    let rx = engine
                        .try_submit_for_coupon(id, put)
                        .map_err(|_| RunError::Setup("creating the coupon: busy".into()))?;
                    match rx.await {
                        Ok(Reply::Coupon(_)) => Some(id.0),
                        other => {
                            return Err(RunError::Setup(format!("creating the coupon: {other:?}")))
                        }
                    }
                }
            };
            Ok((skus, Vec::new(), ids, coupon))
        }
        Backend::Http {
            target,
            admin_token,
        } => {
            let timeout = Duration::from_secs(30);
            let mut conn = Conn::new(target.clone());
            let mut merchants = Vec::new();
            for i in 0..PLAN_MERCHANTS.min(s.items) {
                let name = format!("{run_id} {}", crate::catalog::merchant_name(i));
                let (status, body) = conn
                    .send(
                        Method::POST,
                        "/v1/admin/merchants",
                        Some(admin_token),
                        None,
                        Some(&json!({ "name": name })),
                        timeout,
                    )
                    .await?;
                let v = expect(status, &body, StatusCode::CREATED, "create merchant")?;
                merchants.push(MerchantId(v["id"].as_u64().unwrap_or(0)));
            }
            // Items, a few connections at a time.
            let items: Vec<Value> = (0..plan.items.len())
                .map(|rank| {
                    let i = plan.item_at(rank, opens_at, now);
                    let presale = i.presale.map(|p| {
                        json!({"deposit_fen": p.deposit_fen.0, "worth_fen": p.worth_fen.0,
                               "balance_opens_at_ms": p.balance_opens_at.0,
                               "balance_closes_at_ms": p.balance_closes_at.0})
                    });
                    json!({
                        "merchant_id": merchants[(i.merchant.0 as usize - 1) % merchants.len()].0,
                        "title": i.title, "category": i.category.as_str(), "price_fen": i.price_fen.0,
                        "stock": i.stock_total, "per_user_limit": i.per_user_limit,
                        "opens_at_ms": i.opens_at.0, "closes_at_ms": i.closes_at.0,
                        "shelf_life_hours": i.shelf_life_hours, "presale": presale,
                    })
                })
                .collect();
            let items = Arc::new(items);
            let lanes = 16usize.min(items.len().max(1));
            let mut tasks = Vec::new();
            for lane in 0..lanes {
                let (items, target, token) = (items.clone(), target.clone(), admin_token.clone());
                tasks.push(tokio::spawn(async move {
                    let mut conn = Conn::new(target);
                    let mut out = Vec::new();
                    for rank in (lane..items.len()).step_by(lanes) {
                        let (status, body) = conn
                            .send(
                                Method::POST,
                                "/v1/admin/items",
                                Some(&token),
                                None,
                                Some(&items[rank]),
                                timeout,
                            )
                            .await?;
                        let v = expect(status, &body, StatusCode::CREATED, "create item")?;
                        out.push((rank, Sku(v["sku"].as_u64().unwrap_or(0))));
                    }
                    Ok::<_, RunError>(out)
                }));
            }
            let mut skus = vec![Sku(0); items.len()];
            for t in tasks {
                for (rank, sku) in t.await.map_err(|e| RunError::Setup(e.to_string()))?? {
                    skus[rank] = sku;
                }
            }
            let mut tokens = Vec::with_capacity(s.users as usize);
            let mut ids = Vec::with_capacity(s.users as usize);
            let mut start = 1u64;
            while tokens.len() < s.users as usize {
                let count = (s.users as usize - tokens.len()).min(10_000);
                let body = json!({"count": count, "prefix": run_id, "start": start});
                let (status, bytes) = conn
                    .send(
                        Method::POST,
                        "/v1/admin/users/bulk",
                        Some(admin_token),
                        None,
                        Some(&body),
                        timeout,
                    )
                    .await?;
                let v = expect(status, &bytes, StatusCode::CREATED, "create shoppers")?;
                let made = v["users"].as_array().map_or(0, Vec::len);
                if made != count {
                    return Err(RunError::Setup(format!(
                        "asked for {count} shoppers, the server made {made}"
                    )));
                }
                for u in v["users"].as_array().into_iter().flatten() {
                    tokens.push(u["token"].as_str().unwrap_or_default().to_string());
                    ids.push(u["id"].as_u64().unwrap_or(0));
                }
                start += count as u64;
            }
            let coupon = match rush_coupon(plan, opens_at) {
                None => None,
                Some(body) => {
                    let (status, bytes) = conn
                        .send(
                            Method::POST,
                            "/v1/coupons",
                            Some(admin_token),
                            None,
                            Some(&body),
                            timeout,
                        )
                        .await?;
                    let v = expect(status, &bytes, StatusCode::CREATED, "create the coupon")?;
                    v["id"].as_u64()
                }
            };
            Ok((skus, tokens, ids, coupon))
        }
    }
}

fn expect(
    status: StatusCode,
    body: &[u8],
    want: StatusCode,
    what: &str,
) -> Result<Value, RunError> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if status != want {
        return Err(RunError::Setup(format!("{what}: {status} {v}")));
    }
    Ok(v)
}

/// Puts every planned request on the queue at its intended time.
async fn dispatch(shared: Arc<Shared>) {
    let plan = &shared.plan;
    let max = plan.scenario.requests_max;
    // Before the opening: browsing and the claim rush, in time order.
    let mut early: Vec<(i64, Job)> = plan
        .browses
        .iter()
        .map(|b| {
            (
                b.at_us,
                Job::Browse {
                    rank: b.rank,
                    user: b.user,
                },
            )
        })
        .chain(
            plan.claims
                .iter()
                .filter(|_| shared.coupon.is_some())
                .map(|&(at_us, user)| (at_us, Job::Claim { user })),
        )
        // Pre-sale deposits (over HTTP: the balance is the HTTP layer's).
        .chain(
            plan.deposits
                .iter()
                .enumerate()
                .filter(|_| matches!(shared.backend, Backend::Http { .. }))
                .map(|(i, d)| (d.at_us, Job::Deposit { index: i as u32 })),
        )
        .collect();
    early.sort_by_key(|(at_us, _)| *at_us);
    let mut browses = early.into_iter().peekable();
    // From the opening: snap-ups, and cart checkouts (over HTTP: the
    // checkout is the HTTP layer's), in time order.
    let over_http = matches!(shared.backend, Backend::Http { .. });
    let mut later: Vec<(i64, Job)> = plan
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| (a.at_us, Job::SnapUp { index: i as u32 }))
        .chain(
            plan.checkouts
                .iter()
                .enumerate()
                .filter(|_| over_http)
                .map(|(i, c)| (c.at_us, Job::Checkout { index: i as u32 })),
        )
        .collect();
    later.sort_by_key(|(at_us, _)| *at_us);
    let mut attempts = later.into_iter().peekable();
    let mut scheduled = 0u64;
    loop {
        let next_browse = browses.peek().map(|(at_us, _)| *at_us);
        let next_attempt = attempts.peek().map(|(at_us, _)| *at_us);
        let (at_us, job) = match (next_browse, next_attempt) {
            (None, None) => break,
            (Some(b), a) if a.is_none_or(|a| b <= a) => browses.next().expect("peeked"),
            _ => attempts.next().expect("peeked"),
        };
        if scheduled >= max || instant_at(&shared, at_us) >= shared.deadline {
            shared.not_sent.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let when = instant_at(&shared, at_us);
        if when > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(when.into()).await;
        }
        scheduled += 1;
        shared.outstanding.fetch_add(1, Ordering::SeqCst);
        let _ = shared.tx.send(Scheduled { job, at_us });
    }
}

fn instant_at(shared: &Shared, at_us: i64) -> Instant {
    if at_us >= 0 {
        shared.opening + Duration::from_micros(at_us as u64)
    } else {
        shared
            .opening
            .checked_sub(Duration::from_micros(at_us.unsigned_abs()))
            .unwrap_or_else(Instant::now)
    }
}

fn now_us(shared: &Shared) -> i64 {
    let now = Instant::now();
    if now >= shared.opening {
        now.duration_since(shared.opening).as_micros() as i64
    } else {
        -(shared.opening.duration_since(now).as_micros() as i64)
    }
}

/// A checkout the plan pays (reserved as `v`): paid as a whole, with one
/// payment, `pay_after_us` from now, as a shopper pays a snap-up.
fn pay_checkout_later(shared: &Arc<Shared>, index: u32, v: &Value) {
    let c = &shared.plan.checkouts[index as usize];
    let (Some(after_us), Some(checkout)) = (c.pay_after_us, v["id"].as_u64()) else {
        return;
    };
    let at_us = now_us(shared) + after_us;
    schedule(shared, Job::PayCheckout { index, checkout }, at_us);
}

/// Schedules a follow-up at `at_us` (µs from the opening), unless past the deadline.
fn schedule(shared: &Arc<Shared>, job: Job, at_us: i64) -> bool {
    let when = instant_at(shared, at_us);
    if when >= shared.deadline
        || shared.sent.load(Ordering::Relaxed) >= shared.plan.scenario.requests_max
    {
        return false;
    }
    shared.outstanding.fetch_add(1, Ordering::SeqCst);
    let shared2 = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(when.into()).await;
        let _ = shared2.follow_tx.send(Scheduled { job, at_us });
    });
    true
}

async fn worker(shared: Arc<Shared>, rx: Arc<Mutex<mpsc::UnboundedReceiver<Scheduled>>>) {
    let mut conn = match &shared.backend {
        Backend::Http { target, .. } => Some(Conn::new(target.clone())),
        Backend::InProcess { .. } => None,
    };
    if let Some(conn) = conn.as_mut() {
        // Shoppers' apps hold their connections before the sale opens; a
        // failure here is retried on the first request.
        let _ = conn.warm_up().await;
    }
    loop {
        let next = rx.lock().await.recv().await;
        let Some(scheduled) = next else { break };
        let record = if Instant::now() >= shared.deadline {
            // Due, but no connection freed up before the run's end: it
            // counts, with the deadline as a lower bound of its latency.
            let (kind, rank, user, attempt) = job_meta(&shared, &scheduled.job);
            Record {
                kind,
                rank,
                user,
                at_us: scheduled.at_us,
                done_us: now_us(&shared),
                code: "unanswered".into(),
                order: None,
                order_status: None,
                attempt,
                retries: 0,
            }
        } else {
            execute(&shared, &mut conn, scheduled).await
        };
        shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
        shared.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `(kind, rank, user, attempt)` of a job.
fn job_meta(shared: &Shared, job: &Job) -> (Kind, u32, u32, Option<u32>) {
    match job {
        Job::Browse { rank, user } => (Kind::Browse, *rank, *user, None),
        Job::SnapUp { index } => {
            let a = &shared.plan.attempts[*index as usize];
            (Kind::SnapUp, a.rank, a.user, Some(*index))
        }
        Job::Pay {
            rank,
            user,
            late,
            deposit,
            ..
        } => (
            if *late { Kind::LatePay } else { Kind::Pay },
            *rank,
            *user,
            *deposit,
        ),
        Job::Cancel { rank, user, .. } => (Kind::Cancel, *rank, *user, None),
        Job::Claim { user } => (Kind::Claim, 0, *user, None),
        Job::Checkout { index } => {
            let c = &shared.plan.checkouts[*index as usize];
            (Kind::Checkout, c.ranks[0], c.user, Some(*index))
        }
        Job::PayCheckout { index, .. } => {
            let c = &shared.plan.checkouts[*index as usize];
            (Kind::CheckoutPay, c.ranks[0], c.user, Some(*index))
        }
        Job::Deposit { index } | Job::Balance { index, .. } => {
            let d = &shared.plan.deposits[*index as usize];
            let rank = shared.plan.presale_rank.unwrap_or(0);
            let kind = if matches!(job, Job::Deposit { .. }) {
                Kind::Deposit
            } else {
                Kind::Balance
            };
            (kind, rank, d.user, Some(*index))
        }
    }
}

/// How often a request answered `request_in_progress` is asked again
/// (every 250 ms: 15 s at most; the server's payment wait is 5 s).
const IN_PROGRESS_ASKS_MAX: u32 = 60;

async fn execute(shared: &Arc<Shared>, conn: &mut Option<Conn>, scheduled: Scheduled) -> Record {
    let Scheduled { job, at_us } = scheduled;
    shared.sent.fetch_add(1, Ordering::Relaxed);
    let (kind, rank, user, attempt) = job_meta(shared, &job);
    let mut retries = 0;
    let mut in_progress_asks = 0;
    let answer = loop {
        let answer = match (&shared.backend, conn.as_mut()) {
            (Backend::Http { .. }, Some(conn)) => send_http(shared, conn, &job).await,
            (Backend::InProcess { engine }, _) => send_local(shared, engine, &job).await,
            (Backend::Http { .. }, None) => unreachable!("HTTP workers own a connection"),
        };
        // The same request (same key) still running on the server, after a
        // timeout here: not an answer. Ask again, as an app should, until
        // it answers or the run ends.
        if answer.code == "request_in_progress"
            && in_progress_asks < IN_PROGRESS_ASKS_MAX
            && Instant::now() < shared.deadline
        {
            in_progress_asks += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let retry = (answer.code == "timeout"
            || answer.code == "transport_error"
            || answer.code == "overloaded")
            && retries < shared.retries
            && Instant::now() < shared.deadline;
        if !retry {
            break answer;
        }
        retries += 1;
        if answer.code == "overloaded" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let done_us = now_us(shared);
    let ok = answer.code == "created" || answer.code == "ok";
    if ok {
        shared.ok.fetch_add(1, Ordering::Relaxed);
    }
    // Follow-ups of a fresh order: an unpaid one may be paid (in time or
    // late) or cancelled; a cash-on-delivery one may be cancelled.
    if let (Job::SnapUp { index }, Some((order, status, expires_at)), "created") =
        (&job, &answer.order, answer.code.as_str())
    {
        let order = *order;
        let unpaid = status == "awaiting_payment";
        let follow = match shared.plan.attempts[*index as usize].follow {
            FollowUp::Cancel { after_us } => {
                Some((Job::Cancel { order, rank, user }, done_us + after_us))
            }
            FollowUp::Pay { after_us } if unpaid => Some((
                Job::Pay {
                    order,
                    rank,
                    user,
                    late: false,
                    deposit: None,
                },
                done_us + after_us,
            )),
            FollowUp::LatePay if unpaid => {
                let at_us = expires_at.map_or(i64::MAX / 2, |e| {
                    e.saturating_sub(shared.opening_ms)
                        .saturating_add(500)
                        .saturating_mul(1000)
                });
                Some((
                    Job::Pay {
                        order,
                        rank,
                        user,
                        late: true,
                        deposit: None,
                    },
                    at_us,
                ))
            }
            _ => None,
        };
        if let Some((job, at_us)) = follow {
            let late = matches!(job, Job::Pay { late: true, .. });
            if !schedule(shared, job, at_us) && late {
                shared.late_pays_skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    presale_follow_up(shared, &job, &answer, done_us);
    let (order, order_status) = match answer.order {
        Some((id, status, _)) => (Some(id), Some(status)),
        None => (None, None),
    };
    Record {
        kind,
        rank,
        user,
        at_us,
        done_us,
        code: answer.code,
        order,
        order_status,
        attempt,
        retries,
    }
}

/// A pre-sale's next step: a deposit made is paid; a deposit paid has its
/// balance asked at its planned time; a balance asked is paid.
fn presale_follow_up(shared: &Arc<Shared>, job: &Job, answer: &Answer, done_us: i64) {
    let ok = answer.code == "created" || answer.code == "ok";
    let Some((order, status, _)) = answer.order.as_ref().filter(|_| ok) else {
        return;
    };
    let rank = shared.plan.presale_rank.unwrap_or(0);
    // The shopper of deposit `index` pays `order`.
    let pay = |index: u32, deposit: Option<u32>| Job::Pay {
        order: *order,
        rank,
        user: shared.plan.deposits[index as usize].user,
        late: false,
        deposit,
    };
    let next = match *job {
        Job::Deposit { index } if status == "awaiting_payment" => {
            let after = shared.plan.deposits[index as usize].pay_after_us;
            Some((pay(index, Some(index)), done_us + after))
        }
        Job::Pay {
            deposit: Some(index),
            order,
            ..
        } if status == "paid" => {
            let d = &shared.plan.deposits[index as usize];
            d.balance_at_us
                .map(|at_us| (Job::Balance { index, order }, at_us.max(done_us)))
        }
        Job::Balance { index, .. } if status == "awaiting_payment" => {
            Some((pay(index, None), done_us + 100_000))
        }
        _ => None,
    };
    if let Some((job, at_us)) = next {
        schedule(shared, job, at_us);
    }
}

/// The method an order is paid with: the scenario's, or for `mixed` a
/// quarter by card (drawn from the order id, so a retry pays the same way).
fn pay_method(scenario: &str, order: u64) -> &str {
    match scenario {
        "mixed" if mall_core::fingerprint(&[&order.to_le_bytes()]).is_multiple_of(4) => "card",
        "mixed" => "third_party",
        other => other,
    }
}

async fn send_http(shared: &Arc<Shared>, conn: &mut Conn, job: &Job) -> Answer {
    let token = |user: u32| shared.tokens.get(user as usize).map(String::as_str);
    let (method, path, token, key, body) = match job {
        // Before the sale shoppers look, and some favourite an item or put
        // it in their cart (a quarter each).
        Job::Browse { rank, user } => {
            let sku = shared.skus[*rank as usize].0;
            match (rank + user) % 4 {
                0 => (
                    Method::POST,
                    format!("/v1/items/{sku}/favorite"),
                    token(*user),
                    None,
                    None,
                ),
                1 => (
                    Method::POST,
                    "/v1/cart".to_string(),
                    token(*user),
                    None,
                    Some(json!({"sku": sku, "quantity": 1})),
                ),
                _ => (Method::GET, format!("/v1/items/{sku}"), None, None, None),
            }
        }
        Job::SnapUp { index } => {
            let a = &shared.plan.attempts[*index as usize];
            let body = json!({"sku": shared.skus[a.rank as usize].0, "quantity": 1, "payment": a.payment.as_str(), "address": format!("{} Singles Road", a.user + 1)});
            (
                Method::POST,
                "/v1/orders".to_string(),
                token(a.user),
                Some(format!("{}-{index}", shared.run_id)),
                Some(body),
            )
        }
        Job::Pay {
            order, late, user, ..
        } => {
            let key = format!("{}-p{order}{}", shared.run_id, if *late { "l" } else { "" });
            (
                Method::POST,
                format!("/v1/orders/{order}/payments"),
                token(*user),
                Some(key),
                Some(json!({"method": pay_method(&shared.plan.scenario.pay_method, *order)})),
            )
        }
        Job::Cancel { order, user, .. } => (
            Method::POST,
            format!("/v1/orders/{order}/cancel"),
            token(*user),
            Some(format!("{}-c{order}", shared.run_id)),
            None,
        ),
        Job::Claim { user } => (
            Method::POST,
            format!("/v1/coupons/{}/claims", shared.coupon.unwrap_or(0)),
            token(*user),
            Some(format!("{}-k{user}", shared.run_id)),
            None,
        ),
        Job::Deposit { index } => {
            let d = &shared.plan.deposits[*index as usize];
            let sku = shared.skus[shared.plan.presale_rank.unwrap_or(0) as usize].0;
            (
                Method::POST,
                "/v1/orders".to_string(),
                token(d.user),
                Some(format!("{}-d{index}", shared.run_id)),
                Some(
                    json!({"sku": sku, "quantity": 1, "payment": "online", "address": format!("{} Pre-sale Road", d.user + 1)}),
                ),
            )
        }
        Job::Balance { index, order } => {
            let d = &shared.plan.deposits[*index as usize];
            (
                Method::POST,
                format!("/v1/orders/{order}/balance"),
                token(d.user),
                None,
                None,
            )
        }
        Job::PayCheckout { index, checkout } => {
            let c = &shared.plan.checkouts[*index as usize];
            // A wallet pays orders one by one: a checkout goes by card or third party.
            let method = match pay_method(&shared.plan.scenario.pay_method, *checkout) {
                "wallet" => "third_party",
                m => m,
            };
            (
                Method::POST,
                format!("/v1/checkouts/{checkout}/payments"),
                token(c.user),
                Some(format!("{}-xp{index}", shared.run_id)),
                Some(json!({ "method": method })),
            )
        }
        Job::Checkout { index } => {
            let c = &shared.plan.checkouts[*index as usize];
            let lines: Vec<Value> = c
                .ranks
                .iter()
                .map(|&r| json!({"sku": shared.skus[r as usize].0, "quantity": 1}))
                .collect();
            (
                Method::POST,
                "/v1/checkouts".to_string(),
                token(c.user),
                Some(format!("{}-x{index}", shared.run_id)),
                Some(
                    json!({"lines": lines, "payment": c.payment.as_str(), "address": "Singles Road"}),
                ),
            )
        }
    };
    match conn
        .send(
            method,
            &path,
            token,
            key.as_deref(),
            body.as_ref(),
            shared.timeout,
        )
        .await
    {
        Err(HttpError::Timeout) => Answer {
            code: "timeout".into(),
            order: None,
        },
        Err(_) => Answer {
            code: "transport_error".into(),
            order: None,
        },
        Ok((status, bytes)) => {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                // A payment answers `{payment, order}`, a checkout's
                // `{payment, checkout}`: paid if every line is.
                let v = if v["order"].is_object() {
                    &v["order"]
                } else if v["checkout"].is_object() {
                    &v["checkout"]
                } else {
                    &v
                };
                let lines_paid = || {
                    let lines: Vec<&Value> = v["children"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|c| c["orders"].as_array().into_iter().flatten())
                        .collect();
                    if !lines.is_empty() && lines.iter().all(|o| o["status"] == "paid") {
                        "paid"
                    } else {
                        "partly_paid"
                    }
                };
                let order = v["id"]
                    .as_u64()
                    .filter(|_| !matches!(job, Job::Browse { .. }))
                    .map(|id| {
                        (
                            id,
                            if status == StatusCode::ACCEPTED {
                                // Still with a provider: it may end paid or not.
                                "pay_pending".to_string()
                            } else if matches!(job, Job::Checkout { .. }) {
                                v["state"].as_str().unwrap_or("").to_string()
                            } else if matches!(job, Job::PayCheckout { .. }) {
                                lines_paid().to_string()
                            } else {
                                v["status"].as_str().unwrap_or("").to_string()
                            },
                            v["expires_at_ms"].as_i64(),
                        )
                    });
                if let Job::Checkout { index } = job {
                    pay_checkout_later(shared, *index, v);
                }
                let code = if status == StatusCode::CREATED {
                    "created"
                } else {
                    "ok"
                };
                Answer {
                    code: code.into(),
                    order,
                }
            } else {
                let code = v["error"]["code"]
                    .as_str()
                    .map_or_else(|| format!("http_{}", status.as_u16()), str::to_string);
                Answer { code, order: None }
            }
        }
    }
}

async fn send_local(shared: &Shared, engine: &Engine, job: &Job) -> Answer {
    let user_id = local_user_id;
    let (sku_or_order, command) = match job {
        Job::Browse { rank, .. } => {
            return match engine.board().get(shared.skus[*rank as usize]) {
                Some(_) => Answer {
                    code: "ok".into(),
                    order: None,
                },
                None => Answer {
                    code: "item_not_found".into(),
                    order: None,
                },
            };
        }
        Job::SnapUp { index } => {
            let a = &shared.plan.attempts[*index as usize];
            let sku = shared.skus[a.rank as usize];
            let key: Arc<str> = format!("{}-{index}", shared.run_id).into();
            // The same command and fingerprint as the HTTP layer makes.
            let command = Command::Reserve(Reserve::new(
                user_id(a.user),
                sku,
                Quantity::new(1).expect("1 is a quantity"),
                a.payment,
                "Singles Road".into(),
                Some(key),
                false,
            ));
            (Ok(sku), command)
        }
        Job::Pay { order, .. } => (
            Err(OrderId(*order)),
            Command::Confirm {
                order: OrderId(*order),
            },
        ),
        Job::Cancel { order, user, .. } => (
            Err(OrderId(*order)),
            Command::Release {
                order: OrderId(*order),
                by: Some(user_id(*user)),
            },
        ),
        Job::Claim { user } => return claim_local(shared, engine, *user).await,
        // Never dispatched in-process (checkouts and pre-sale balances are
        // the HTTP layer's).
        Job::Checkout { .. }
        | Job::PayCheckout { .. }
        | Job::Deposit { .. }
        | Job::Balance { .. } => {
            return Answer {
                code: "not_in_process".into(),
                order: None,
            }
        }
    };
    let submitted = match sku_or_order {
        Ok(sku) => Some(engine.try_submit_for_sku(sku, command)),
        Err(order) => engine.try_submit_for_order(order, command),
    };
    let rx = match submitted {
        None => {
            return Answer {
                code: "order_not_found".into(),
                order: None,
            }
        }
        Some(Err(_)) => {
            return Answer {
                code: "overloaded".into(),
                order: None,
            }
        }
        Some(Ok(rx)) => rx,
    };
    let created = matches!(job, Job::SnapUp { .. });
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Order { order, replayed } => Answer {
            code: if created && !replayed {
                "created"
            } else {
                "ok"
            }
            .into(),
            order: Some((
                order.id.0,
                order.status.as_str().to_string(),
                order.expires_at.map(|t| t.0),
            )),
        },
        Reply::StoredOrder(id) => Answer {
            code: "created".into(),
            order: Some((id.0, String::new(), None)),
        },
        Reply::Inactive(id) => {
            // Expired or cancelled: what the HTTP layer answers, from the store.
            let stored = engine
                .reader_for_order(id)
                .and_then(|r| r.order(id).ok().flatten());
            let code = match (job, stored.map(|o| o.status)) {
                (Job::Pay { .. }, Some(mall_core::OrderStatus::Expired)) => "hold_expired",
                (Job::Cancel { .. }, Some(mall_core::OrderStatus::Cancelled)) => "ok",
                (_, Some(_)) => "invalid_order_status",
                (_, None) => "order_not_found",
            };
            Answer {
                code: code.into(),
                order: None,
            }
        }
        Reply::Item(_)
        | Reply::Coupon(_)
        | Reply::Claim { .. }
        | Reply::Claims { .. }
        | Reply::PreSale { .. }
        | Reply::Coupons(_) => Answer {
            code: "ok".into(),
            order: None,
        },
        Reply::Refused(r) => Answer {
            code: r.code().into(),
            order: None,
        },
        Reply::Unavailable => Answer {
            code: "store_unavailable".into(),
            order: None,
        },
    }
}

async fn report_progress(shared: Arc<Shared>) {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let total = (shared.plan.attempts.len() + shared.plan.browses.len()) as f64;
    let mut last = 0u64;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    loop {
        every.tick().await;
        let sent = shared.sent.load(Ordering::Relaxed);
        let ok = shared.ok.load(Ordering::Relaxed);
        let rate = sent - last;
        last = sent;
        let t = now_us(&shared) as f64 / 1e6;
        let pct = (sent as f64 / total.max(1.0) * 100.0).min(100.0);
        if tty {
            let filled = (pct / 5.0) as usize;
            print!(
                "\r[{}{}] {pct:5.1}%  t={t:+6.1}s  sent {sent}  ok {ok}  {rate}/s   ",
                "#".repeat(filled),
                ".".repeat(20 - filled.min(20))
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("rush t={t:+.1}s sent={sent} ok={ok} rate={rate}/s ({pct:.0}% of planned)");
        }
    }
}
