//! Cart checkout: several SKUs, from several merchants, with coupons, held
//! all or nothing.
//!
//! A checkout is written to the store (`Open`, with its plan: every line's
//! SKU, quantity, price and share of the discounts, the coupons) before
//! anything is held. Then every line is held on its shard as a snap-up
//! whose idempotency key names the checkout and the line (`checkout <id>
//! <line>`, a key no client can send: it has spaces), and every coupon is
//! used on the checkout's first line. Only when all of them are, the
//! checkout moves `Open → Reserved` (compare-and-set) and is acknowledged.
//! If any line or coupon is refused, it moves `Open → Releasing`, what was
//! held is cancelled and the coupons are given back, then `Released`; the
//! answer names the line (or coupon) and why.
//!
//! A checkout that a crash (or a lost request) left `Open` or `Releasing`
//! is released by [`recover`]: at a start, and every few seconds for the
//! ones older than [`ABANDONED_AFTER_MS`]. Its lines are found again by
//! replaying their snap-ups under the same keys (a replay gives the order
//! back; a line that was never held is held and cancelled at once), so a
//! checkout is never half held: acknowledged means every line and coupon
//! is, released means none is. The moves are compare-and-set, so a
//! request still running and a recovery (on any node) never both win.
//!
//! The lines are ordinary orders: each is cancelled, refunded and delivered
//! on its own; they are paid together with one payment
//! ([`super::checkout_pay`]) or each alone; the checkout shows them grouped
//! by merchant (one child order per merchant).

use super::orders::{release_order, OrderView};
use super::price::PriceBreakdown;
use super::promotions::{lines_at, QuoteLine};
use super::{blocking, check_text, idempotency, parse_id, QueryOf, Segment};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mall_core::{
    ClaimId, Fen, Order, OrderId, PaymentMethod, Quantity, Refusal, Sku, Timestamp, UserId,
};
use mall_engine::{
    AccountStore, CheckoutDone, CheckoutOp, CheckoutRow, CheckoutState, ListChange, ShopperList,
    StoreError,
};
use mall_inventory::{Command, Reply, Reserve};
use mall_pricing::{Policy, Priced};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// A checkout still `Open` or `Releasing` this long after its last move
/// is abandoned (its request died): recovery releases it. Far beyond any
/// request's life (a snap-up waits seconds at most).
pub const ABANDONED_AFTER_MS: i64 = 30_000;
/// How often recovery looks for abandoned checkouts.
pub const RECOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Checkouts released per recovery pass, at most.
const RECOVERY_BATCH: usize = 64;
/// Checkouts listed at most (each reads its line orders back).
const LIST_MAX: usize = 20;
/// Lines of one checkout, at most.
pub const CHECKOUT_LINES_MAX: usize = 50;
/// Checkout steps waiting for the writer, at most (then 503 `overloaded`).
const QUEUE_MAX: usize = 8_192;
/// Checkout steps in one transaction, at most.
const BATCH_MAX: usize = 512;

type Job = (
    CheckoutOp,
    tokio::sync::oneshot::Sender<Result<CheckoutDone, StoreError>>,
);

/// The checkouts' writer: one thread commits whatever steps (begins and
/// moves) have queued as one transaction, and answers each once
/// committed, so a crush of checkouts shares its flushes.
pub struct Writer {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Writer {
    pub fn start(accounts: Arc<dyn AccountStore>) -> Result<Writer, StoreError> {
        let (jobs, queue) = std::sync::mpsc::sync_channel(QUEUE_MAX);
        std::thread::Builder::new()
            .name("mall-checkouts".into())
            .spawn(move || write_checkouts(queue, accounts))
            .map_err(|e| StoreError::Unavailable(format!("starting the checkouts writer: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Applies one step once it is committed.
    async fn apply(&self, op: CheckoutOp) -> ApiResult<CheckoutDone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.jobs.try_send((op, tx)) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => return Err(ApiError::overloaded()),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(ApiError::unavailable())
            }
        }
        match rx.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(ApiError::store("saving a checkout", e)),
            Err(_) => Err(ApiError::unavailable()),
        }
    }
}

/// The writer's loop: takes what has queued (up to [`BATCH_MAX`]), commits
/// it, answers each. Ends when the state is dropped.
fn write_checkouts(queue: std::sync::mpsc::Receiver<Job>, accounts: Arc<dyn AccountStore>) {
    while let Some(jobs) = super::next_batch(&queue, BATCH_MAX) {
        let ops: Vec<CheckoutOp> = jobs.iter().map(|(op, _)| op.clone()).collect();
        match accounts.apply_checkouts(&ops) {
            Ok(done) => {
                for ((_, reply), d) in jobs.into_iter().zip(done) {
                    let _ = reply.send(Ok(d));
                }
            }
            Err(e) => {
                for (_, reply) in jobs {
                    let _ = reply.send(Err(super::error_for_each(&e)));
                }
            }
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckout {
    /// The lines to buy, each SKU once; absent: the caller's cart (whose
    /// lines leave the cart once the checkout is reserved).
    pub lines: Option<Vec<QuoteLine>>,
    /// Claims of yours to use (`claimed`, valid, one per coupon; at most 8).
    #[serde(default)]
    pub claims: Vec<u64>,
    /// `online` (every line is held until paid) or `cod` (sold at once).
    pub payment: String,
    /// Delivery address, 1 to 200 characters.
    pub address: String,
    /// The total the client expects to pay (fen), as quoted. If the price
    /// is not that now, the answer is 409 `price_changed` with the price as
    /// it stands, and nothing is held.
    #[serde(default)]
    pub expected_total_fen: Option<i64>,
}

/// What a checkout will hold, as stored with it (the plan recovery reads).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(super) struct Plan {
    lines: Vec<PlanLine>,
    claims: Vec<u64>,
    pub(super) payment: PaymentMethod,
    address: String,
    from_cart: bool,
    price: Priced,
    /// The limited promotions it takes a unit of.
    #[serde(default)]
    limited: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct PlanLine {
    sku: u64,
    merchant: u64,
    quantity: u32,
    /// The sale price × quantity the line is held at (else `price_changed`).
    gross_fen: i64,
    /// Its share of the promotions and coupons.
    discount_fen: i64,
}

/// How a checkout ended, as stored with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(super) struct Outcome {
    /// Reserved: each line's order, by line.
    #[serde(default)]
    pub(super) orders: Vec<u64>,
    #[serde(default)]
    failure: Option<Failure>,
    /// Released by a recovery (not by its own request).
    #[serde(default)]
    recovered: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct Failure {
    /// The line refused (index into the lines), if a line was.
    pub line: Option<usize>,
    /// The claim refused, if a coupon was.
    pub claim_id: Option<u64>,
    /// The refusal's code (`sold_out`, `limit_reached`, `coupon_not_usable`, ...).
    pub code: String,
    pub message: String,
    /// The HTTP status it was answered with.
    #[serde(default)]
    pub status: u16,
}

impl Failure {
    /// Worth retrying under the same key (overloaded, the store away):
    /// the key is let go with it.
    fn retryable(&self) -> bool {
        self.status >= 500 || self.status == 429
    }
}

#[derive(Serialize, ToSchema)]
pub struct ChildOrder {
    pub merchant_id: u64,
    /// What this merchant's lines come to, after every discount.
    pub amount_fen: i64,
    /// One order per line (each paid, cancelled and refunded on its own).
    pub orders: Vec<OrderView>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckoutView {
    pub id: u64,
    /// `open`, `reserved`, `releasing` or `released`.
    pub state: &'static str,
    pub payment: &'static str,
    pub address: String,
    /// The whole checkout: lines, every discount with its source and
    /// funder, the total.
    pub price: PriceBreakdown,
    pub total_fen: i64,
    /// The coupons it uses.
    pub claims: Vec<u64>,
    /// Reserved: one child order per merchant.
    pub children: Vec<ChildOrder>,
    /// Released: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CheckoutsPage {
    pub checkouts: Vec<CheckoutView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckoutsQuery {
    /// Admins only: whose checkouts.
    pub user_id: Option<u64>,
}

/// The idempotency key of a checkout's line (spaces: no client sends it).
fn line_key(checkout: u64, line: usize) -> Arc<str> {
    format!("checkout {checkout} {line}").into()
}

/// The checkout a line order belongs to, from its idempotency key.
pub fn checkout_of(order: &Order) -> Option<u64> {
    let key = order.idempotency_key.as_deref()?;
    let rest = key.strip_prefix("checkout ")?;
    rest.split_once(' ')?.0.parse().ok()
}

fn reserve_of(user: UserId, checkout: u64, plan: &Plan, i: usize) -> Command {
    let l = &plan.lines[i];
    let quantity = Quantity::new(l.quantity).expect("a planned quantity is valid");
    Command::Reserve(
        Reserve::new(
            user,
            Sku(l.sku),
            quantity,
            plan.payment,
            plan.address.as_str().into(),
            Some(line_key(checkout, i)),
            false,
        )
        .expecting(Some(Fen(l.gross_fen)))
        .discounted(Fen(l.discount_fen)),
    )
}

fn failure(line: Option<usize>, claim: Option<u64>, e: &ApiError) -> Failure {
    Failure {
        line,
        claim_id: claim,
        code: e.code.to_string(),
        message: e.message.clone(),
        status: e.status.as_u16(),
    }
}

/// The failure as the error it answers.
fn failure_error(f: &Failure) -> ApiError {
    let what = match (f.line, f.claim_id) {
        (Some(line), _) => format!("line {line}: "),
        (None, Some(claim)) => format!("claim {claim}: "),
        _ => String::new(),
    };
    let code = crate::error::static_code(&f.code);
    let mut e = ApiError::new(
        StatusCode::from_u16(f.status).unwrap_or(StatusCode::CONFLICT),
        code,
        format!("{what}{}; nothing of the checkout is held", f.message),
    );
    e.line = f.line;
    e
}

/// The answer of one line's snap-up: its order, or why not.
async fn line_answer(
    state: &AppState,
    submitted: Result<tokio::sync::oneshot::Receiver<Reply>, mall_shard::Busy>,
) -> Result<Order, ApiError> {
    let rx = submitted.map_err(|_| ApiError::overloaded())?;
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Order { order, .. } => Ok(order),
        Reply::StoredOrder(id) => super::orders::stored_order(state, id)
            .await?
            .ok_or_else(|| ApiError::internal("checkout", "replayed line missing from store")),
        Reply::Refused(r) => Err(ApiError::from_refusal(&r)),
        _ => Err(ApiError::unavailable()),
    }
}

/// Every line's snap-up, all queued at once (each waits only for its own
/// shard), answered by line.
async fn hold_lines(
    state: &AppState,
    user: UserId,
    id: u64,
    plan: &Plan,
) -> Vec<Result<Order, ApiError>> {
    let submitted: Vec<_> = (0..plan.lines.len())
        .map(|i| {
            state
                .engine
                .try_submit_for_sku(Sku(plan.lines[i].sku), reserve_of(user, id, plan, i))
        })
        .collect();
    let mut answers = Vec::with_capacity(submitted.len());
    for s in submitted {
        answers.push(line_answer(state, s).await);
    }
    answers
}

/// Uses (`anchor: Some`) or gives back a claim on the checkout's first line.
async fn claim_step(
    state: &AppState,
    user: UserId,
    claim: u64,
    anchor: OrderId,
    give_back: bool,
) -> Result<(), ApiError> {
    let id = ClaimId(claim);
    let command = if give_back {
        Command::ReturnClaim {
            claim: id,
            order: anchor,
        }
    } else {
        Command::UseClaim {
            claim: id,
            user,
            order: anchor,
        }
    };
    let rx = state
        .engine
        .try_submit_for_claim(id, command)
        .ok_or_else(|| ApiError::from_refusal(&Refusal::UnknownCoupon))?
        .map_err(|_| ApiError::overloaded())?;
    match rx.await.unwrap_or(Reply::Unavailable) {
        Reply::Claim { .. } => Ok(()),
        Reply::Refused(r) => Err(ApiError::from_refusal(&r)),
        _ => Err(ApiError::unavailable()),
    }
}

/// Holds every line, then uses every coupon: the orders by line, or the
/// first refusal with the orders held so far (to be released).
async fn hold_all(
    state: &AppState,
    user: UserId,
    id: u64,
    plan: &Plan,
) -> Result<Vec<Order>, Refused> {
    let replies = hold_lines(state, user, id, plan).await;
    let mut held = Vec::with_capacity(replies.len());
    let mut refused = None;
    let mut uncertain = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        match reply {
            Ok(order) => held.push(order),
            Err(e) => {
                // A server error may hide a hold (a lost answer): found
                // again by its key before the checkout is released.
                if !e.status.is_client_error() {
                    uncertain.push(i);
                }
                if refused.is_none() {
                    refused = Some(failure(Some(i), None, &e));
                }
            }
        }
    }
    if let Some(failure) = refused {
        return Err(Refused {
            failure,
            held,
            uncertain,
        });
    }
    let anchor = held[0].id;
    for &claim in &plan.claims {
        if let Err(e) = claim_step(state, user, claim, anchor, false).await {
            return Err(Refused {
                failure: failure(None, Some(claim), &e),
                held,
                uncertain,
            });
        }
    }
    Ok(held)
}

/// Why a checkout's holds failed, and what they left.
struct Refused {
    failure: Failure,
    /// The line orders held.
    held: Vec<Order>,
    /// Lines whose answer was a server error: held or not, unknown.
    uncertain: Vec<usize>,
}

/// Hands back what a checkout holds: its lines' orders cancelled, its
/// coupons given back. Every step is safe to repeat.
async fn give_back(
    state: &AppState,
    user: UserId,
    plan: &Plan,
    held: &[Order],
) -> Result<(), ApiError> {
    for order in held {
        match release_order(state, order.id, None).await {
            Ok(_) => {}
            // Delivered meanwhile, say: nothing a retry would change.
            Err(e) if e.status.is_client_error() => tracing::warn!(
                order = order.id.0,
                code = e.code,
                "a checkout's line could not be cancelled"
            ),
            Err(e) => return Err(e),
        }
    }
    if let Some(anchor) = held.first().filter(|o| o.sku.0 == plan.lines[0].sku) {
        for &claim in &plan.claims {
            match claim_step(state, user, claim, anchor.id, true).await {
                Ok(()) => {}
                // Not used by this checkout (or gone): nothing to give back.
                Err(e) if e.status.is_client_error() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn outcome_json(o: &Outcome) -> String {
    serde_json::to_string(o).expect("an outcome serializes")
}

/// Moves a checkout in the store (compare-and-set), through the writer;
/// once `Released`, its limited promotions' units are given back.
async fn move_to(
    state: &AppState,
    id: u64,
    from: CheckoutState,
    to: CheckoutState,
    outcome: &Outcome,
    plan: &Plan,
) -> ApiResult<bool> {
    let give_back = if to == CheckoutState::Released {
        plan.limited.clone()
    } else {
        Vec::new()
    };
    // A released checkout that failed for a reason worth retrying lets its
    // key go: a retry under it is a new checkout.
    let forget_key =
        to == CheckoutState::Released && outcome.failure.as_ref().is_some_and(Failure::retryable);
    let step = CheckoutOp::Move {
        id,
        from,
        to,
        outcome: outcome_json(outcome),
        now: state.now(),
        give_back: give_back.clone(),
        forget_key,
    };
    match state.checkouts.apply(step).await? {
        CheckoutDone::Moved(moved) => {
            if moved && !give_back.is_empty() {
                state.promotions.note_used(&give_back, false);
            }
            Ok(moved)
        }
        other => Err(ApiError::internal(
            "checkout",
            format!("a move answered {other:?}"),
        )),
    }
}

/// Releases a checkout whose request failed: `Open → Releasing`, what it
/// held handed back, then `Released`.
async fn release(
    state: &AppState,
    row: &CheckoutRow,
    plan: &Plan,
    refused: &Refused,
    outcome: &Outcome,
) -> ApiResult<()> {
    if row.state == CheckoutState::Open
        && !move_to(
            state,
            row.id,
            CheckoutState::Open,
            CheckoutState::Releasing,
            outcome,
            plan,
        )
        .await?
    {
        // Someone else (a recovery) took it over.
        return Ok(());
    }
    // Lines whose answer was lost are found again by their keys; one still
    // unknown leaves the checkout `Releasing` for recovery to finish.
    let mut held = refused.held.clone();
    for &i in &refused.uncertain {
        let line = Sku(plan.lines[i].sku);
        let again = state
            .engine
            .try_submit_for_sku(line, reserve_of(row.user, row.id, plan, i));
        match line_answer(state, again).await {
            Ok(order) => held.push(order),
            Err(e) if e.status.is_client_error() => {}
            Err(e) => {
                give_back(state, row.user, plan, &held).await?;
                return Err(e);
            }
        }
    }
    give_back(state, row.user, plan, &held).await?;
    move_to(
        state,
        row.id,
        CheckoutState::Releasing,
        CheckoutState::Released,
        outcome,
        plan,
    )
    .await?;
    Ok(())
}

pub(super) fn parse_plan(row: &CheckoutRow) -> ApiResult<Plan> {
    serde_json::from_str(&row.plan).map_err(|e| ApiError::internal("checkout plan", e))
}

pub(super) fn parse_outcome(row: &CheckoutRow) -> Outcome {
    serde_json::from_str(&row.outcome).unwrap_or_default()
}

/// Releases one checkout a crash or a lost request left `Open` or
/// `Releasing`: its lines found again by replaying their snap-ups, what
/// they hold cancelled, its coupons given back. Logged.
async fn recover_one(state: &AppState, row: CheckoutRow) -> ApiResult<()> {
    let plan = parse_plan(&row)?;
    let mut outcome = parse_outcome(&row);
    outcome.recovered = true;
    if row.state == CheckoutState::Open
        && !move_to(
            state,
            row.id,
            CheckoutState::Open,
            CheckoutState::Releasing,
            &outcome,
            &plan,
        )
        .await?
    {
        return Ok(()); // finished meanwhile
    }
    let mut held = Vec::new();
    for answer in hold_lines(state, row.user, row.id, &plan).await {
        match answer {
            Ok(order) => held.push(order),
            // Never held (and not holdable now): nothing to hand back.
            Err(e) if e.status.is_client_error() => {}
            Err(e) => return Err(e),
        }
    }
    give_back(state, row.user, &plan, &held).await?;
    move_to(
        state,
        row.id,
        CheckoutState::Releasing,
        CheckoutState::Released,
        &outcome,
        &plan,
    )
    .await?;
    tracing::warn!(
        checkout = row.id,
        user = row.user.0,
        lines = plan.lines.len(),
        "recovery released an unfinished checkout: its holds are cancelled and its coupons given back"
    );
    Ok(())
}

/// Releases every checkout left unfinished before `before`; the number
/// released.
pub async fn recover(state: &AppState, before: Timestamp) -> ApiResult<usize> {
    let mut done = 0;
    loop {
        let accounts = state.accounts.clone();
        let rows = blocking(state, move || {
            accounts.unfinished_checkouts(before, RECOVERY_BATCH)
        })
        .await
        .map_err(|e| ApiError::store("unfinished checkouts", e))?;
        let n = rows.len();
        let mut failed = 0;
        for row in rows {
            let id = row.id;
            match recover_one(state, row).await {
                Ok(()) => done += 1,
                // One that cannot be finished now blocks no other; it is
                // asked again on the next pass.
                Err(e) => {
                    failed += 1;
                    tracing::warn!(
                        checkout = id,
                        code = e.code,
                        "releasing an unfinished checkout failed; retrying later"
                    );
                }
            }
        }
        if n < RECOVERY_BATCH || failed == n {
            return Ok(done);
        }
    }
}

/// Settles what a reserved checkout took (its coupons, and units of
/// limited promotions): kept once any line was paid (or is being paid, or
/// its cash collected); given back once every line ended unpaid
/// (cancelled, or its hold lapsed); else looked at again later. Only where
/// payments run (they know what was paid).
async fn settle_coupons(state: &AppState, row: &CheckoutRow) -> ApiResult<()> {
    let Some(payments) = state.payments.get() else {
        return Ok(());
    };
    let plan = parse_plan(row)?;
    let outcome = parse_outcome(row);
    let mut open = false;
    let mut paid = false;
    for &id in &outcome.orders {
        let id = OrderId(id);
        if payments.paid_or_paying(id) {
            paid = true;
            break;
        }
        match super::orders::stored_order(state, id)
            .await?
            .map(|o| o.status)
        {
            // Held until paid, or sold for cash not yet collected.
            Some(mall_core::OrderStatus::AwaitingPayment | mall_core::OrderStatus::Confirmed) => {
                open = true
            }
            Some(mall_core::OrderStatus::Paid | mall_core::OrderStatus::Delivered) => paid = true,
            _ => {}
        }
    }
    if !paid && open {
        // Still to be paid: looked at again later.
        move_to(
            state,
            row.id,
            CheckoutState::Reserved,
            CheckoutState::Reserved,
            &outcome,
            &plan,
        )
        .await?;
        return Ok(());
    }
    if !paid {
        if let Some(&anchor) = outcome.orders.first() {
            for &claim in &plan.claims {
                match claim_step(state, row.user, claim, OrderId(anchor), true).await {
                    Ok(()) => {}
                    Err(e) if e.status.is_client_error() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Unpaid: the limited promotions' units come back with the coupons.
    let give_back = if paid {
        Vec::new()
    } else {
        plan.limited.clone()
    };
    let settled = state
        .checkouts
        .apply(CheckoutOp::SettleCoupons {
            id: row.id,
            give_back: give_back.clone(),
        })
        .await?;
    if settled == CheckoutDone::Moved(true) && !paid {
        state.promotions.note_used(&give_back, false);
        tracing::info!(
            checkout = row.id,
            "every line ended unpaid: the checkout's coupons and limited promotions are given back"
        );
    }
    Ok(())
}

/// Settles the coupons of checkouts reserved before `before` (see
/// [`settle_coupons`]); the number looked at.
pub async fn settle_all_coupons(state: &AppState, before: Timestamp) -> ApiResult<usize> {
    let accounts = state.accounts.clone();
    let rows = blocking(state, move || {
        accounts.checkouts_with_coupons(before, RECOVERY_BATCH)
    })
    .await
    .map_err(|e| ApiError::store("checkouts with coupons", e))?;
    for row in &rows {
        if let Err(e) = settle_coupons(state, row).await {
            tracing::warn!(
                checkout = row.id,
                code = e.code,
                "settling a checkout's coupons failed; retrying later"
            );
        }
    }
    Ok(rows.len())
}

/// The platform's share of a checkout line's discounts (what the platform
/// pays its merchant at settlement), from the checkout's price; 0 for an
/// order that is no checkout's line.
pub(crate) async fn platform_share(state: &AppState, order: &Order) -> ApiResult<u64> {
    let Some(id) = checkout_of(order) else {
        return Ok(0);
    };
    let line: Option<usize> = order
        .idempotency_key
        .as_deref()
        .and_then(|k| k.rsplit(' ').next())
        .and_then(|l| l.parse().ok());
    let accounts = state.accounts.clone();
    let row = blocking(state, move || accounts.checkout(id))
        .await
        .map_err(|e| ApiError::store("reading a checkout", e))?
        .ok_or_else(|| ApiError::internal("platform share", "a line's checkout is missing"))?;
    let plan = parse_plan(&row)?;
    let share = line
        .and_then(|l| plan.price.lines.get(l))
        .filter(|l| l.sku.0 == order.sku.0)
        .map_or(0, |l| l.platform_funded_fen);
    Ok(u64::try_from(share).unwrap_or(0))
}

/// Settles a checkout's coupons now, if `order` is one of its lines (a
/// line was just cancelled).
pub(crate) async fn line_cancelled(state: &AppState, order: &Order) {
    let Some(id) = checkout_of(order) else {
        return;
    };
    let accounts = state.accounts.clone();
    let row = blocking(state, move || accounts.checkout(id)).await;
    if let Ok(Some(row)) = row {
        if row.state == CheckoutState::Reserved && row.coupons_pending {
            if let Err(e) = settle_coupons(state, &row).await {
                tracing::warn!(
                    code = e.code,
                    checkout = id,
                    "settling a checkout's coupons failed; retrying later"
                );
            }
        }
    }
}

/// Releases abandoned checkouts, and settles the coupons of checkouts
/// whose lines ended, every [`RECOVERY_EVERY`], for good.
pub fn recover_forever(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RECOVERY_EVERY).await;
            let before = Timestamp(state.now().0 - ABANDONED_AFTER_MS);
            if let Err(e) = recover(&state, before).await {
                tracing::warn!(
                    code = e.code,
                    "checkout recovery failed; trying again later"
                );
            }
            // A checkout still to be paid is looked at again a minute later.
            let looked_before = Timestamp(state.now().0 - 60_000);
            if let Err(e) = settle_all_coupons(&state, looked_before).await {
                tracing::warn!(
                    code = e.code,
                    "settling checkouts' coupons failed; trying again later"
                );
            }
        }
    })
}

/// A stored checkout as the API shows it (its line orders read back).
pub(super) async fn view(state: &AppState, row: &CheckoutRow) -> ApiResult<CheckoutView> {
    let plan = parse_plan(row)?;
    let outcome = parse_outcome(row);
    let mut orders = Vec::with_capacity(outcome.orders.len());
    if row.state == CheckoutState::Reserved {
        for &id in &outcome.orders {
            orders.push(
                super::orders::stored_order(state, OrderId(id))
                    .await?
                    .ok_or_else(|| {
                        ApiError::internal("checkout", format!("line order {id} missing"))
                    })?,
            );
        }
    }
    Ok(view_of(state, row, &plan, outcome.failure, &orders))
}

/// A checkout as the API shows it, its line orders (by line) in hand:
/// grouped into one child order per merchant.
fn view_of(
    state: &AppState,
    row: &CheckoutRow,
    plan: &Plan,
    failure: Option<Failure>,
    orders: &[Order],
) -> CheckoutView {
    let mut children: Vec<ChildOrder> = Vec::new();
    for (line, order) in plan.lines.iter().zip(orders) {
        let view = OrderView::new(order, state.engine.board());
        match children.iter_mut().find(|c| c.merchant_id == line.merchant) {
            Some(child) => {
                child.amount_fen += order.amount_fen.0;
                child.orders.push(view);
            }
            None => children.push(ChildOrder {
                merchant_id: line.merchant,
                amount_fen: order.amount_fen.0,
                orders: vec![view],
            }),
        }
    }
    CheckoutView {
        id: row.id,
        state: row.state.as_str(),
        payment: plan.payment.as_str(),
        address: plan.address.clone(),
        price: PriceBreakdown::from(&plan.price),
        total_fen: plan.price.total_fen,
        claims: plan.claims.clone(),
        children,
        failure,
        created_at_ms: row.created_at.0,
        updated_at_ms: row.updated_at.0,
    }
}

/// The answer to a checkout request that met one stored under its key.
async fn replay(state: &AppState, row: &CheckoutRow) -> Result<Response, ApiError> {
    match row.state {
        CheckoutState::Reserved => {
            let mut response = (StatusCode::CREATED, Json(view(state, row).await?)).into_response();
            idempotency::replayed_header(&mut response);
            Ok(response)
        }
        CheckoutState::Released => match parse_outcome(row).failure {
            Some(f) => Err(failure_error(&f)),
            None => Err(ApiError::conflict(
                "checkout_released",
                "this checkout was released before it was acknowledged; nothing of it is held",
            )),
        },
        CheckoutState::Open | CheckoutState::Releasing => Err(ApiError {
            retry_after_s: Some(1),
            ..ApiError::conflict(
                "checkout_in_progress",
                "a checkout under this key is still being decided; ask again shortly",
            )
        }),
    }
}

fn parse_payment(raw: &str) -> ApiResult<PaymentMethod> {
    PaymentMethod::parse(raw).ok_or_else(|| {
        ApiError::invalid(format!(
            "payment must be \"online\" or \"cod\", not {raw:?}"
        ))
    })
}

/// Check out a cart (or the lines given) of items from any merchants,
/// with coupons: every line is held (online) or sold (cod), and every
/// coupon used, or none is. The answer is one checkout split into one child
/// order per merchant; each line is an order paid, cancelled and refunded
/// on its own. A refusal names the line (`error.line`) or claim and why.
#[utoipa::path(post, path = "/v1/checkouts", request_body = CreateCheckout, tag = "orders",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key: the same key answers as the first checkout did")),
    responses(
        (status = 201, body = CheckoutView),
        (status = 403, description = "sale_not_open, sale_closed, own_item", body = crate::error::ErrorBody),
        (status = 404, description = "item_not_found, coupon_not_found", body = crate::error::ErrorBody),
        (status = 409, description = "sold_out, limit_reached, insufficient_stock, coupon_not_usable, price_changed (with `price`), checkout_in_progress, checkout_released; `error.line` names the line refused", body = crate::error::ErrorBody),
        (status = 422, description = "invalid_request (no line, a SKU twice, a bad quantity), idempotency_key_reused", body = crate::error::ErrorBody),
        (status = 503, description = "overloaded, store_unavailable (Retry-After)", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<CreateCheckout>,
) -> Result<Response, ApiError> {
    let payment = parse_payment(&body.payment)?;
    check_text(
        &body.address,
        "address",
        1,
        super::orders::ADDRESS_CHARS_MAX,
    )?;
    let key = idempotency::key_from(&headers)?;
    let user = principal.user;
    let from_cart = body.lines.is_none();
    if body
        .lines
        .as_ref()
        .is_some_and(|l| l.len() > CHECKOUT_LINES_MAX)
    {
        return Err(ApiError::invalid(format!(
            "a checkout takes at most {CHECKOUT_LINES_MAX} lines"
        )));
    }
    // The request as sent (the cart's contents change once it is checked
    // out: a retry of a cart checkout is the same request).
    let mut claims = body.claims.clone();
    claims.sort_unstable();
    let sent: Vec<u8> = match &body.lines {
        Some(lines) => lines
            .iter()
            .flat_map(|l| [l.sku.to_le_bytes(), l.quantity.to_le_bytes()])
            .flatten()
            .collect(),
        None => b"cart".to_vec(),
    };
    let fingerprint = mall_core::fingerprint(&[
        b"checkout",
        &sent,
        &claims
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect::<Vec<u8>>(),
        payment.as_str().as_bytes(),
        body.address.as_bytes(),
    ]);
    // A retry under the same key answers as the first did, whatever the
    // prices, coupons and cart are now.
    if let Some(key) = &key {
        let accounts = state.accounts.clone();
        let k = key.clone();
        let found = blocking(&state, move || accounts.checkout_by_key(user, &k))
            .await
            .map_err(|e| ApiError::store("reading a checkout", e))?;
        if let Some(row) = found {
            if row.fingerprint != fingerprint {
                return Err(ApiError::from_refusal(&Refusal::IdempotencyKeyReused));
            }
            return replay(&state, &row).await;
        }
    }
    let wanted: Vec<(Sku, i64)> = match &body.lines {
        Some(lines) => lines.iter().map(|l| (Sku(l.sku), l.quantity)).collect(),
        None => {
            let accounts = state.accounts.clone();
            blocking(&state, move || accounts.list_of(ShopperList::Cart, user))
                .await
                .map_err(|e| ApiError::store("reading the cart", e))?
                .into_iter()
                .map(|(sku, q)| (sku, i64::from(q)))
                .collect()
        }
    };
    if wanted.is_empty() {
        return Err(ApiError::invalid(if from_cart {
            "the cart is empty"
        } else {
            "a checkout takes 1 or more lines"
        }));
    }
    if wanted.len() > CHECKOUT_LINES_MAX {
        return Err(ApiError::invalid(format!(
            "a checkout takes at most {CHECKOUT_LINES_MAX} lines; the cart has {}",
            wanted.len()
        )));
    }
    let mut skus: Vec<u64> = wanted.iter().map(|w| w.0 .0).collect();
    skus.sort_unstable();
    if skus.windows(2).any(|w| w[0] == w[1]) {
        return Err(ApiError::invalid("each SKU once per checkout"));
    }
    let now = state.now();
    let lines = lines_at(&state, &wanted, now)?;
    // A pre-sale item is bought by its deposit, alone.
    if let Some(l) = lines.iter().find(|l| {
        state
            .engine
            .board()
            .get(l.sku)
            .is_some_and(|e| e.item.presale.is_some())
    }) {
        let mut e = ApiError::from_refusal(&Refusal::PreSaleOnlineOnly);
        e.message = format!(
            "item {} is a pre-sale: pay its deposit with POST /v1/orders, not in a cart checkout",
            l.sku
        );
        return Err(e);
    }
    if let Some(merchant) = principal.merchant {
        if lines.iter().any(|l| l.merchant == merchant) {
            return Err(ApiError::forbidden_code(
                "own_item",
                "a merchant account cannot buy its own merchant's items",
            ));
        }
    }
    // Each line is a snap-up to the global admission.
    for _ in &lines {
        state.limiter.admit_snapup(&principal).inspect_err(|_| {
            state.metrics.record_refusal("overloaded");
        })?;
    }
    let mut offers = state.promotions.offers_at(now);
    let coupons = super::coupons::offers_of_claims(&state, user, &body.claims, now).await?;
    // Claim → coupon, in the order given (one offer per claim).
    let claim_coupons: Vec<(u64, u64)> = body
        .claims
        .iter()
        .copied()
        .zip(coupons.iter().map(|o| o.id))
        .collect();
    offers.extend(coupons);
    offers.retain(|o| lines.iter().any(|l| o.covers(l)));
    offers.sort_by_key(|o| o.rank());
    offers.truncate(mall_pricing::OFFERS_MAX);
    let priced = mall_pricing::price(&lines, &offers, &Policy::default())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(expected) = body.expected_total_fen {
        if expected != priced.total_fen {
            let mut e = ApiError::from_refusal(&Refusal::PriceChanged {
                list_price_fen: Fen(priced.list_fen),
                unit_price_fen: Fen(priced.total_fen),
                amount_fen: Fen(priced.total_fen),
            });
            e.message = format!(
                "the checkout costs {} fen now, not {expected}; nothing is held",
                priced.total_fen
            );
            e.price = Some(Box::new(PriceBreakdown::from(&priced)));
            return Err(e);
        }
    }
    // The limited promotions that took something off: a unit of each is
    // taken with the checkout's record, or the checkout is refused.
    let limited = state
        .promotions
        .limited(priced.offers_used().filter_map(|s| match s {
            mall_pricing::Source::Promotion(id) => Some(id),
            _ => None,
        }));
    let plan = Plan {
        lines: lines
            .iter()
            .zip(&priced.lines)
            .map(|(l, p)| {
                let gross = l.sale_unit_fen * i64::from(l.quantity);
                PlanLine {
                    sku: l.sku.0,
                    merchant: l.merchant.0,
                    quantity: l.quantity,
                    gross_fen: gross,
                    discount_fen: gross - p.net_fen,
                }
            })
            .collect(),
        // Only the coupons that took something off are used.
        claims: claim_coupons
            .iter()
            .filter(|(_, coupon)| {
                priced
                    .offers_used()
                    .any(|s| s == mall_pricing::Source::Coupon(*coupon))
            })
            .map(|(claim, _)| *claim)
            .collect(),
        payment,
        address: body.address.clone(),
        from_cart,
        price: priced,
        limited,
    };
    let mut row = CheckoutRow {
        id: 0,
        user,
        key: key.clone(),
        fingerprint,
        state: CheckoutState::Open,
        plan: serde_json::to_string(&plan).map_err(|e| ApiError::internal("checkout plan", e))?,
        outcome: outcome_json(&Outcome::default()),
        created_at: now,
        updated_at: now,
        // Coupons and limited promotions come back if no line is paid.
        coupons_pending: !plan.claims.is_empty() || !plan.limited.is_empty(),
    };
    let begin = CheckoutOp::Begin {
        row: row.clone(),
        promotions: plan.limited.clone(),
    };
    let begun = match state.checkouts.apply(begin).await? {
        CheckoutDone::Begun(begun) => begun,
        CheckoutDone::PromotionGone(id) => {
            // Someone took its last unit since the price was made: nothing
            // is written or held.
            state.promotions.used_up(id);
            return Err(ApiError::conflict(
                "promotion_sold_out",
                format!("promotion {id} is used up; quote again and check out at the new price"),
            ));
        }
        other => {
            return Err(ApiError::internal(
                "checkout",
                format!("a begin answered {other:?}"),
            ))
        }
    };
    row.id = match begun {
        Ok(id) => {
            state.promotions.note_used(&plan.limited, true);
            id
        }
        // The same key, raced: answer as that one does.
        Err(existing) if existing.fingerprint == fingerprint => {
            return replay(&state, &existing).await
        }
        Err(_) => return Err(ApiError::from_refusal(&Refusal::IdempotencyKeyReused)),
    };
    match hold_all(&state, user, row.id, &plan).await {
        Ok(held) => {
            let outcome = Outcome {
                orders: held.iter().map(|o| o.id.0).collect(),
                ..Outcome::default()
            };
            if !move_to(
                &state,
                row.id,
                CheckoutState::Open,
                CheckoutState::Reserved,
                &outcome,
                &plan,
            )
            .await?
            {
                // A recovery took it over meanwhile (this request was slow):
                // not acknowledged. What this request holds is handed back
                // too (every step repeats safely), so nothing it made after
                // the recovery's look stays held.
                give_back(&state, user, &plan, &held).await?;
                return Err(ApiError::unavailable());
            }
            row.state = CheckoutState::Reserved;
            row.outcome = outcome_json(&outcome);
            for order in &held {
                state.metrics.record_order(order.payment);
                let mut e = mall_events::Event::new(state.now().0, mall_events::Kind::Order);
                (e.user, e.sku, e.order, e.amount_fen, e.quantity) = (
                    user.0,
                    order.sku.0,
                    order.id.0,
                    order.amount_fen.0,
                    order.quantity.get(),
                );
                e.cod = order.payment == PaymentMethod::Cod;
                state.record(e);
            }
            if from_cart {
                empty_cart(&state, user, &plan).await;
            }
            let mut out = view_of(&state, &row, &plan, None, &held);
            out.updated_at_ms = state.now().0;
            Ok((StatusCode::CREATED, Json(out)).into_response())
        }
        Err(refused) => {
            let f = refused.failure.clone();
            state.metrics.record_refusal(&f.code);
            let outcome = Outcome {
                failure: Some(f.clone()),
                ..Outcome::default()
            };
            release(&state, &row, &plan, &refused, &outcome).await?;
            Err(failure_error(&f))
        }
    }
}

/// The cart's lines that were checked out leave it (best effort: the
/// checkout stands whatever happens here).
async fn empty_cart(state: &AppState, user: UserId, plan: &Plan) {
    for line in &plan.lines {
        let change = ListChange {
            list: ShopperList::Cart,
            user,
            sku: Sku(line.sku),
            quantity: 0,
            lines_max: super::wishlist::CART_LINES_MAX,
        };
        if let Err(e) = state.wishlists.change(change).await {
            tracing::warn!(code = e.code, "a checked-out line stayed in the cart");
        }
    }
}

/// One checkout: the caller's own (admins: any).
#[utoipa::path(get, path = "/v1/checkouts/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = u64, Path, description = "checkout id")),
    responses((status = 200, body = CheckoutView),
              (status = 404, description = "checkout_not_found", body = crate::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<CheckoutView>> {
    let id = parse_id(&raw, "checkout id")?;
    let accounts = state.accounts.clone();
    let row = blocking(&state, move || accounts.checkout(id))
        .await
        .map_err(|e| ApiError::store("reading a checkout", e))?;
    match row {
        Some(row) if principal.is_admin() || row.user == principal.user => {
            Ok(Json(view(&state, &row).await?))
        }
        _ => Err(ApiError::not_found(
            "checkout_not_found",
            format!("no checkout {id} of yours"),
        )),
    }
}

/// Your checkouts, newest first (at most 50; admins: `?user_id=`).
#[utoipa::path(get, path = "/v1/checkouts", tag = "orders", security(("bearer" = [])),
    params(CheckoutsQuery),
    responses((status = 200, body = CheckoutsPage), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_mine(
    State(state): State<AppState>,
    principal: Principal,
    QueryOf(q): QueryOf<CheckoutsQuery>,
) -> ApiResult<Json<CheckoutsPage>> {
    let user = match q.user_id {
        Some(u) if principal.is_admin() => UserId(u),
        Some(_) => {
            return Err(ApiError::forbidden(
                "only admins may read another user's checkouts",
            ))
        }
        None => principal.user,
    };
    let accounts = state.accounts.clone();
    let rows = blocking(&state, move || accounts.checkouts_of(user, LIST_MAX))
        .await
        .map_err(|e| ApiError::store("reading checkouts", e))?;
    let mut checkouts = Vec::with_capacity(rows.len());
    for row in &rows {
        checkouts.push(view(&state, row).await?);
    }
    Ok(Json(CheckoutsPage { checkouts }))
}
