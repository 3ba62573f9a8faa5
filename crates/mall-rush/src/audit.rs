//! The consistency audit: after a run, ask the server about everything the
//! client was told, and check the server's own counters.
//!
//! - every order acknowledged to the client exists, on the right item and
//!   shopper, in a status consistent with what the client was last told;
//! - one idempotency key never made two orders;
//! - for every item: `available + held + sold == stock_total`, nothing sold
//!   beyond stock, and the server counts at least the sales the client was
//!   told about.

use crate::http::Conn;
use crate::run::{Backend, Kind, Outcome, Record};
use hyper::{Method, StatusCode};
use mall_core::OrderId;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

#[derive(Serialize, Debug, Default)]
pub struct AuditReport {
    pub orders_checked: u64,
    pub items_checked: u64,
    /// Coupon claims acknowledged to the client and found on the server.
    pub claims_checked: u64,
    /// Checkouts read back: every acknowledged one reserved whole, every
    /// one decided, none released with a line still held.
    pub checkouts_checked: u64,
    /// Of those, paid with one payment the client was told paid every
    /// line of, every line paid on the server.
    pub checkouts_paid: u64,
    /// Pre-sale deposits acknowledged and read back with their balances.
    pub deposits_checked: u64,
    /// Of those, balances told paid, and deposits forfeited (never paid).
    pub balances_paid: u64,
    pub deposits_forfeited: u64,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What the client knows of one order.
#[derive(Debug, Clone)]
struct Known {
    rank: u32,
    user: u32,
    /// The status in the last successful answer about it.
    status: String,
    /// A payment or cancel was sent for it.
    followed_up: bool,
    /// A payment or cancel got no definite answer (timeout, run's end):
    /// it may or may not have been applied.
    uncertain: bool,
}

/// Answers that say nothing about whether the request was applied: no
/// answer, or "the same request is still running" (asked again until the
/// run's end and still running).
fn indefinite(code: &str) -> bool {
    matches!(
        code,
        "timeout" | "transport_error" | "unanswered" | "store_unavailable" | "request_in_progress"
    ) || code.starts_with("http_5")
}

/// Users whose orders are listed to look for doubles: those whose snap-ups
/// were retried, and a sample of the others.
const DOUBLES_SAMPLE: usize = 2_000;

/// An order or item as the server reports it.
#[derive(Debug, Clone)]
struct ServerOrder {
    sku: u64,
    user: u64,
    status: String,
}

#[derive(Debug, Clone, Copy)]
struct ServerItem {
    stock_total: u64,
    available: u64,
    held: u64,
    sold: u64,
}

pub async fn audit(outcome: &Outcome, backend: &Backend) -> AuditReport {
    let mut report = AuditReport::default();
    let known = acknowledged(outcome, &mut report);
    let ids: Vec<u64> = known.keys().copied().collect();
    let orders = fetch_orders(backend, &ids).await;
    let mut items = fetch_items(backend, &outcome.skus).await;
    // Counters are read while the server may still settle the run's last
    // requests and expire holds: re-read any item that looks off.
    for _ in 0..3 {
        let off: Vec<mall_core::Sku> = outcome
            .skus
            .iter()
            .filter(|s| {
                let settled = |i: ServerItem| i.available + i.held + i.sold == i.stock_total;
                items
                    .get(&s.0)
                    .copied()
                    .flatten()
                    .is_none_or(|i| !settled(i))
            })
            .copied()
            .collect();
        if off.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        items.extend(fetch_items(backend, &off).await);
    }
    doubles(outcome, backend, &mut report).await;
    claims(outcome, backend, &mut report).await;
    checkouts(outcome, backend, &mut report).await;
    presales(outcome, backend, &mut report).await;
    let v = &mut report.violations;
    for (id, k) in &known {
        report.orders_checked += 1;
        let Some(server) = orders.get(id) else {
            v.push(format!(
                "order {id}: acknowledged to the client but missing on the server"
            ));
            continue;
        };
        let Some(server) = server else {
            v.push(format!("order {id}: could not be read back"));
            continue;
        };
        let sku = outcome.skus[k.rank as usize].0;
        if server.sku != sku || server.user != outcome.user_ids[k.user as usize] {
            v.push(format!(
                "order {id}: server has sku {} user {}, the client was told sku {sku} user {}",
                server.sku, server.user, outcome.user_ids[k.user as usize]
            ));
        }
        let st = server.status.as_str();
        let consistent = k.uncertain
            || match k.status.as_str() {
                "cancelled" => st == "cancelled",
                "paid" => st == "paid",
                // A payment still with its provider when the answer left.
                "pay_pending" => matches!(st, "paid" | "awaiting_payment" | "expired"),
                "confirmed" => st == "confirmed",
                // Unpaid and left alone: still held, or expired.
                "awaiting_payment" if !k.followed_up => st == "awaiting_payment" || st == "expired",
                // Unpaid, followed up and refused (a late payment): expired.
                _ => st == "expired" || st == "awaiting_payment",
            };
        if !consistent {
            v.push(format!(
                "order {id}: the client was told {}, the server says {}",
                k.status, server.status
            ));
        }
    }
    // Sales the client was told about, per item.
    let mut told_sold: HashMap<u32, u64> = HashMap::new();
    for k in known.values() {
        if !k.uncertain && (k.status == "paid" || k.status == "confirmed") {
            *told_sold.entry(k.rank).or_default() += 1;
        }
    }
    for (rank, sku) in outcome.skus.iter().enumerate() {
        report.items_checked += 1;
        let Some(Some(item)) = items.get(&sku.0) else {
            v.push(format!("item {sku}: could not be read back"));
            continue;
        };
        if item.available + item.held + item.sold != item.stock_total {
            v.push(format!(
                "item {sku}: available {} + held {} + sold {} != stock {}",
                item.available, item.held, item.sold, item.stock_total
            ));
        }
        if item.held + item.sold > item.stock_total {
            v.push(format!(
                "item {sku}: oversold: {} held or sold of {}",
                item.held + item.sold,
                item.stock_total
            ));
        }
        let told = told_sold.get(&(rank as u32)).copied().unwrap_or(0);
        if told > item.stock_total {
            v.push(format!(
                "item {sku}: the client was told of {told} sales, stock is {}",
                item.stock_total
            ));
        }
        if item.sold < told {
            v.push(format!(
                "item {sku}: the server counts {} sold, the client was told of {told} sales",
                item.sold
            ));
        }
    }
    report
}

/// Orders acknowledged to the client, with what it was last told.
fn acknowledged(outcome: &Outcome, report: &mut AuditReport) -> BTreeMap<u64, Known> {
    let mut known: BTreeMap<u64, Known> = BTreeMap::new();
    for r in outcome
        .records
        .iter()
        .filter(|r| r.kind == Kind::SnapUp && r.ok())
    {
        let Some(id) = r.order else {
            report.violations.push(format!(
                "snap-up of shopper {} answered {} without an order id",
                r.user, r.code
            ));
            continue;
        };
        let status = r.order_status.clone().unwrap_or_default();
        known.entry(id).or_insert(Known {
            rank: r.rank,
            user: r.user,
            status,
            followed_up: false,
            uncertain: false,
        });
    }
    // Follow-ups carry the order id only in a successful answer; match the
    // others to their order through the (item, shopper) of the snap-up.
    let by_snap: HashMap<(u32, u32), u64> = known
        .iter()
        .map(|(id, k)| ((k.rank, k.user), *id))
        .collect();
    for r in outcome
        .records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Pay | Kind::Cancel | Kind::LatePay))
    {
        let id = r.order.or_else(|| by_snap.get(&(r.rank, r.user)).copied());
        if let Some(k) = id.and_then(|id| known.get_mut(&id)) {
            k.followed_up = true;
            k.uncertain |= indefinite(&r.code);
        }
    }
    let mut follow: Vec<_> = outcome
        .records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Pay | Kind::Cancel | Kind::LatePay) && r.ok())
        .collect();
    follow.sort_by_key(|r| r.done_us);
    for r in follow {
        if let (Some(id), Some(status)) = (r.order, &r.order_status) {
            if let Some(k) = known.get_mut(&id) {
                k.status = status.clone();
            }
        }
    }
    known
}

/// Each shopper tries each item once, under one idempotency key: more than
/// one order of a shopper on an item is a doubled order.
async fn doubles(outcome: &Outcome, backend: &Backend, report: &mut AuditReport) {
    let mut users: Vec<u32> = outcome
        .records
        .iter()
        .filter(|r| r.kind == Kind::SnapUp && r.retries > 0)
        .map(|r| r.user)
        .collect();
    users.extend(0..(outcome.user_ids.len().min(DOUBLES_SAMPLE)) as u32);
    users.sort_unstable();
    users.dedup();
    let ours: HashSet<u64> = outcome.skus.iter().map(|s| s.0).collect();
    let mut per: HashMap<(u64, u64), u32> = HashMap::new();
    match backend {
        Backend::InProcess { engine } => {
            for &u in &users {
                let id = mall_core::UserId(outcome.user_ids[u as usize]);
                for reader in engine.readers() {
                    for o in reader.orders_of_user(id, None, 1_000).unwrap_or_default() {
                        if !is_checkout_line(o.idempotency_key.as_deref()) && !o.is_balance() {
                            *per.entry((id.0, o.sku.0)).or_default() += 1;
                        }
                    }
                }
            }
        }
        Backend::Http {
            target,
            admin_token,
        } => {
            let paths = users
                .iter()
                .map(|&u| {
                    let id = outcome.user_ids[u as usize];
                    (id, format!("/v1/orders?user_id={id}&limit=100"))
                })
                .collect();
            for (user, got) in http_get_all(target, admin_token, paths).await {
                match got {
                    Some((StatusCode::OK, v)) => {
                        // A checkout's lines are audited with their checkout;
                        // a pre-sale's balance order is its deposit's second.
                        for o in v["orders"].as_array().into_iter().flatten() {
                            if o["checkout_id"].is_null() && o["presale"]["part"] != "balance" {
                                *per.entry((user, o["sku"].as_u64().unwrap_or(0)))
                                    .or_default() += 1;
                            }
                        }
                    }
                    _ => report
                        .violations
                        .push(format!("orders of user {user} could not be read back")),
                }
            }
        }
    }
    for ((user, sku), n) in per {
        if n > 1 && ours.contains(&sku) {
            report.violations.push(format!(
                "user {user} has {n} orders of item {sku} from one attempt: doubled"
            ));
        }
    }
}

/// Whether an order's idempotency key is a checkout line's (the HTTP
/// layer's `checkout <id> <line>`, which no client can send).
fn is_checkout_line(key: Option<&str>) -> bool {
    key.is_some_and(|k| k.starts_with("checkout "))
}

/// Cart checkouts: every one the client was told of is reserved with all
/// its lines (none cancelled); every checkout of every shopper who tried
/// is decided (reserved or released: none left half made); a released
/// checkout has no line order that is not cancelled.
async fn checkouts(outcome: &Outcome, backend: &Backend, report: &mut AuditReport) {
    let Backend::Http {
        target,
        admin_token,
    } = backend
    else {
        return;
    };
    let tried: Vec<&Record> = outcome
        .records
        .iter()
        .filter(|r| r.kind == Kind::Checkout)
        .collect();
    if tried.is_empty() {
        return;
    }
    let lines = crate::scenario::CHECKOUT_LINES as usize;
    let mut users: Vec<u64> = tried
        .iter()
        .map(|r| outcome.user_ids[r.user as usize])
        .collect();
    users.sort_unstable();
    users.dedup();
    // Every checkout of those shoppers, as the server has it (a checkout
    // still being decided when the run ended is asked again).
    let mut server: HashMap<u64, Value> = HashMap::new();
    for round in 0..10 {
        let paths = users
            .iter()
            .map(|&u| (u, format!("/v1/checkouts?user_id={u}")))
            .collect();
        server.clear();
        for (user, got) in http_get_all(target, admin_token, paths).await {
            match got {
                Some((StatusCode::OK, v)) => {
                    for c in v["checkouts"].as_array().into_iter().flatten() {
                        server.insert(c["id"].as_u64().unwrap_or(0), c.clone());
                    }
                }
                _ => report
                    .violations
                    .push(format!("checkouts of user {user} could not be read back")),
            }
        }
        let undecided = server
            .values()
            .any(|c| !matches!(c["state"].as_str(), Some("reserved" | "released")));
        if !undecided || round == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Line orders the client was told are paid (alone), and checkouts
    // whose every line it was told is paid (with one payment).
    let told_paid: HashSet<u64> = outcome
        .records
        .iter()
        .filter(|r| r.kind == Kind::Pay && r.ok() && r.order_status.as_deref() == Some("paid"))
        .filter_map(|r| r.order)
        .collect();
    let told_all_paid: HashSet<u64> = outcome
        .records
        .iter()
        .filter(|r| {
            r.kind == Kind::CheckoutPay && r.ok() && r.order_status.as_deref() == Some("paid")
        })
        .filter_map(|r| r.order)
        .collect();
    let v = &mut report.violations;
    for r in tried.iter().filter(|r| r.ok()) {
        let Some(id) = r.order else {
            v.push(format!(
                "checkout of shopper {} answered without an id",
                r.user
            ));
            continue;
        };
        report.checkouts_checked += 1;
        let Some(c) = server.get(&id) else {
            v.push(format!(
                "checkout {id}: acknowledged to the client but missing on the server"
            ));
            continue;
        };
        let orders: Vec<&Value> = c["children"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|ch| ch["orders"].as_array().into_iter().flatten())
            .collect();
        if c["state"] != "reserved" || orders.len() != lines {
            v.push(format!(
                "checkout {id}: acknowledged, but the server has it {} with {} of {lines} lines",
                c["state"],
                orders.len()
            ));
        }
        let mut whole = true;
        for o in &orders {
            if o["status"] == "cancelled" {
                v.push(format!(
                    "checkout {id}: acknowledged, but its line order {} is cancelled",
                    o["id"]
                ));
            }
            let paid = matches!(o["status"].as_str(), Some("paid" | "delivered"));
            let told = o["id"].as_u64().is_some_and(|l| told_paid.contains(&l))
                || told_all_paid.contains(&id);
            whole &= paid;
            if told && !paid {
                v.push(format!(
                    "checkout {id}: its line order {} was told paid, the server says {}",
                    o["id"], o["status"]
                ));
            }
        }
        if told_all_paid.contains(&id) && whole {
            report.checkouts_paid += 1;
        }
    }
    let released: HashSet<u64> = server
        .iter()
        .filter(|(_, c)| c["state"] == "released")
        .map(|(id, _)| *id)
        .collect();
    for (id, c) in &server {
        match c["state"].as_str() {
            Some("reserved" | "released") => {}
            other => v.push(format!("checkout {id}: left {other:?} after the run")),
        }
    }
    // No line of a released checkout is held or sold.
    let paths = users
        .iter()
        .map(|&u| (u, format!("/v1/orders?user_id={u}&limit=100")))
        .collect();
    for (user, got) in http_get_all(target, admin_token, paths).await {
        let Some((StatusCode::OK, body)) = got else {
            v.push(format!("orders of user {user} could not be read back"));
            continue;
        };
        for o in body["orders"].as_array().into_iter().flatten() {
            let of = o["checkout_id"].as_u64();
            // Cancelled by the release, or lapsed before it: not held.
            let free = o["status"] == "cancelled" || o["status"] == "expired";
            if of.is_some_and(|c| released.contains(&c)) && !free {
                v.push(format!(
                    "order {} of released checkout {}: {}",
                    o["id"],
                    of.unwrap_or(0),
                    o["status"]
                ));
            }
        }
    }
}

/// What the client was told of one pre-sale (one deposit a shopper).
#[derive(Default, Debug)]
struct ToldPresale {
    deposit: Option<u64>,
    deposit_paid: bool,
    balance: Option<u64>,
    balance_paid: bool,
    /// A payment answered 202 (still with its provider).
    pending: bool,
    /// A request got no definite answer.
    uncertain: bool,
}

/// Pre-sales: every deposit the client was told of exists; once the
/// balance window has closed, a deposit whose balance was told paid is paid
/// (or delivered) with its balance, and a paid deposit whose balance was
/// never paid is forfeited (its balance order, if asked, expired); the
/// pre-sale item sold at least the balances told paid.
async fn presales(outcome: &Outcome, backend: &Backend, report: &mut AuditReport) {
    let plan = &outcome.plan;
    let Some(rank) = plan.presale_rank else {
        return;
    };
    let mut told: BTreeMap<u32, ToldPresale> = BTreeMap::new();
    for r in outcome.records.iter().filter(|r| r.rank == rank) {
        let t = told.entry(r.user).or_default();
        t.uncertain |= indefinite(&r.code);
        let paid = r.ok() && r.order_status.as_deref() == Some("paid");
        t.pending |= r.order_status.as_deref() == Some("pay_pending");
        match r.kind {
            Kind::Deposit if r.ok() => t.deposit = r.order,
            Kind::Balance if r.ok() => t.balance = r.order,
            Kind::Pay if paid && r.order.is_some() && r.order == t.deposit => t.deposit_paid = true,
            Kind::Pay if paid && r.order.is_some() && r.order == t.balance => t.balance_paid = true,
            _ => {}
        }
    }
    // Records are in send order: a balance's payment may be matched before
    // its balance record; match paid orders again now that all are known.
    let paid_orders: HashSet<u64> = outcome
        .records
        .iter()
        .filter(|r| r.kind == Kind::Pay && r.ok() && r.order_status.as_deref() == Some("paid"))
        .filter_map(|r| r.order)
        .collect();
    for t in told.values_mut() {
        t.deposit_paid |= t.deposit.is_some_and(|d| paid_orders.contains(&d));
        t.balance_paid |= t.balance.is_some_and(|b| paid_orders.contains(&b));
    }
    if told.values().all(|t| t.deposit.is_none()) {
        return;
    }
    // Until the balance window has closed and its forfeits are made.
    let closes_ms = outcome.opening_ms + plan.balance_window_us() / 1_000;
    let wait_ms = closes_ms + 1_500 - crate::run::wall_ms();
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
    let ids: Vec<u64> = told
        .values()
        .flat_map(|t| [t.deposit, t.balance])
        .flatten()
        .collect();
    let mut server = fetch_orders(backend, &ids).await;
    for _ in 0..10 {
        // A paid deposit without a balance told paid: forfeited shortly.
        let waiting = told.values().any(|t| {
            t.deposit_paid
                && !t.balance_paid
                && !t.pending
                && !t.uncertain
                && t.deposit
                    .and_then(|d| server.get(&d).cloned().flatten())
                    .is_some_and(|o| o.status == "paid")
        });
        if !waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        server = fetch_orders(backend, &ids).await;
    }
    let sku = outcome.skus[rank as usize].0;
    let status = |id: Option<u64>| {
        id.and_then(|id| server.get(&id).cloned().flatten())
            .map(|o| o.status)
    };
    let v = &mut report.violations;
    for (user, t) in &told {
        let Some(d) = t.deposit else { continue };
        report.deposits_checked += 1;
        match server.get(&d) {
            None => {
                v.push(format!(
                    "deposit {d}: acknowledged to the client but missing on the server"
                ));
                continue;
            }
            Some(None) => {
                v.push(format!("deposit {d}: could not be read back"));
                continue;
            }
            Some(Some(o)) if o.sku != sku || o.user != outcome.user_ids[*user as usize] => {
                v.push(format!("deposit {d}: on another item or shopper"));
            }
            Some(Some(_)) => {}
        }
        let (ds, bs) = (status(Some(d)).unwrap_or_default(), status(t.balance));
        if t.balance_paid {
            report.balances_paid += 1;
            let whole = matches!(ds.as_str(), "paid" | "delivered")
                && matches!(bs.as_deref(), Some("paid" | "delivered"));
            if !whole {
                v.push(format!(
                    "pre-sale {d}: its balance was told paid, the server has the deposit {ds} and the balance {bs:?}"
                ));
            }
        } else if t.deposit_paid && !t.pending && !t.uncertain {
            if ds == "forfeited" {
                report.deposits_forfeited += 1;
            } else {
                v.push(format!(
                    "deposit {d}: paid, its balance never paid, the window closed: the server says {ds}, not forfeited"
                ));
            }
            if t.balance.is_some() && bs.as_deref() != Some("expired") {
                v.push(format!(
                    "balance of {d}: never paid, the server says {bs:?}"
                ));
            }
        } else if !t.deposit_paid
            && !t.pending
            && !t.uncertain
            && !matches!(ds.as_str(), "awaiting_payment" | "expired")
        {
            v.push(format!(
                "deposit {d}: never told paid, the server says {ds}"
            ));
        }
    }
    if let Some(Some(item)) = fetch_items(backend, &[outcome.skus[rank as usize]])
        .await
        .get(&sku)
    {
        let told_sold = told.values().filter(|t| t.balance_paid).count() as u64;
        if item.sold < told_sold {
            v.push(format!(
                "pre-sale item {sku}: sold {}, but {told_sold} balances were told paid",
                item.sold
            ));
        }
    }
}

const AUDIT_LANES: usize = 16;

/// The claim rush: every claim the client was told of exists for its
/// shopper, no claim was told to two shoppers or twice to one (one each),
/// and the coupon never issued more than its quantity.
async fn claims(outcome: &Outcome, backend: &Backend, report: &mut AuditReport) {
    let Some(coupon) = outcome.coupon else {
        return;
    };
    let quantity = u64::from(outcome.plan.scenario.coupon_quantity());
    let mut told: BTreeMap<u64, u32> = BTreeMap::new();
    let mut per_user: HashMap<u32, u64> = HashMap::new();
    for r in outcome
        .records
        .iter()
        .filter(|r| r.kind == Kind::Claim && r.ok())
    {
        let Some(id) = r.order else {
            report.violations.push(format!(
                "claim of shopper {} answered without an id",
                r.user
            ));
            continue;
        };
        if let Some(&other) = told.get(&id) {
            if other != r.user {
                report.violations.push(format!(
                    "claim {id} was told to shoppers {other} and {}",
                    r.user
                ));
            }
        }
        told.insert(id, r.user);
        if let Some(before) = per_user.insert(r.user, id) {
            if before != id {
                report.violations.push(format!(
                    "shopper {} was told of claims {before} and {id}, one each",
                    r.user
                ));
            }
        }
    }
    if told.len() as u64 > quantity {
        report.violations.push(format!(
            "{} claims acknowledged, the coupon has {quantity}",
            told.len()
        ));
    }
    let users: Vec<u32> = per_user.keys().copied().collect();
    let server = fetch_claims(backend, outcome, &users).await;
    for (&id, &user) in &told {
        match server.get(&user) {
            Some(Some(claims)) if claims.contains(&(id, coupon)) => report.claims_checked += 1,
            Some(Some(_)) => report.violations.push(format!(
                "claim {id}: acknowledged to shopper {user} but missing on the server"
            )),
            _ => report.violations.push(format!(
                "the claims of shopper {user} could not be read back"
            )),
        }
    }
    match fetch_coupon(backend, coupon).await {
        Some(claimed) if claimed > quantity => report.violations.push(format!(
            "coupon {coupon}: {claimed} claims made of {quantity}"
        )),
        Some(claimed) if claimed < told.len() as u64 => report.violations.push(format!(
            "coupon {coupon}: the server counts {claimed} claims, the client was told of {}",
            told.len()
        )),
        Some(_) => {}
        None => report
            .violations
            .push(format!("coupon {coupon}: could not be read back")),
    }
}

/// Each shopper's claims as `(claim, coupon)`, or `None` if unreadable.
async fn fetch_claims(
    backend: &Backend,
    outcome: &Outcome,
    users: &[u32],
) -> HashMap<u32, Option<HashSet<(u64, u64)>>> {
    let mut out = HashMap::new();
    match backend {
        Backend::InProcess { engine } => {
            for &user in users {
                let id = mall_core::UserId(outcome.user_ids[user as usize]);
                let mine = engine
                    .claims_of(id)
                    .await
                    .ok()
                    .map(|(claims, _)| claims.iter().map(|c| (c.id.0, c.coupon.0)).collect());
                out.insert(user, mine);
            }
        }
        Backend::Http {
            target,
            admin_token,
        } => {
            let paths: Vec<(u64, String)> = users
                .iter()
                .map(|&u| {
                    (
                        u64::from(u),
                        format!("/v1/claims?user_id={}", outcome.user_ids[u as usize]),
                    )
                })
                .collect();
            for (user, got) in http_get_all(target, admin_token, paths).await {
                let claims = match got {
                    Some((StatusCode::OK, v)) => Some(
                        v["claims"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| {
                                (
                                    c["id"].as_u64().unwrap_or(0),
                                    c["coupon_id"].as_u64().unwrap_or(0),
                                )
                            })
                            .collect(),
                    ),
                    _ => None,
                };
                out.insert(user as u32, claims);
            }
        }
    }
    out
}

/// Claims the server counts for `coupon`.
async fn fetch_coupon(backend: &Backend, coupon: u64) -> Option<u64> {
    match backend {
        Backend::InProcess { engine } => engine
            .coupon(mall_core::CouponId(coupon))
            .await
            .ok()
            .flatten()
            .map(|c| u64::from(c.claims)),
        Backend::Http {
            target,
            admin_token,
        } => {
            let got = http_get_all(
                target,
                admin_token,
                vec![(coupon, format!("/v1/coupons/{coupon}"))],
            )
            .await;
            match got.into_iter().next() {
                Some((_, Some((StatusCode::OK, v)))) => v["claimed"].as_u64(),
                _ => None,
            }
        }
    }
}

async fn fetch_orders(backend: &Backend, ids: &[u64]) -> HashMap<u64, Option<ServerOrder>> {
    let mut out = HashMap::new();
    match backend {
        Backend::InProcess { engine } => {
            for &id in ids {
                let got = engine
                    .reader_for_order(OrderId(id))
                    .and_then(|r| r.order(OrderId(id)).ok().flatten());
                if let Some(o) = got {
                    out.insert(
                        id,
                        Some(ServerOrder {
                            sku: o.sku.0,
                            user: o.user.0,
                            status: o.status.as_str().into(),
                        }),
                    );
                }
            }
        }
        Backend::Http {
            target,
            admin_token,
        } => {
            let paths: Vec<(u64, String)> = ids
                .iter()
                .map(|id| (*id, format!("/v1/orders/{id}")))
                .collect();
            for (id, got) in http_get_all(target, admin_token, paths).await {
                match got {
                    Some((StatusCode::OK, v)) => {
                        let o = ServerOrder {
                            sku: v["sku"].as_u64().unwrap_or(0),
                            user: v["user_id"].as_u64().unwrap_or(0),
                            status: v["status"].as_str().unwrap_or("").into(),
                        };
                        out.insert(id, Some(o));
                    }
                    Some((StatusCode::NOT_FOUND, _)) => {}
                    _ => {
                        out.insert(id, None);
                    }
                }
            }
        }
    }
    out
}

async fn fetch_items(
    backend: &Backend,
    skus: &[mall_core::Sku],
) -> HashMap<u64, Option<ServerItem>> {
    let mut out = HashMap::new();
    match backend {
        Backend::InProcess { engine } => {
            for sku in skus {
                let got = engine.board().get(*sku).map(|e| {
                    let (available, held, sold) = e.live.load();
                    ServerItem {
                        stock_total: u64::from(e.item.stock_total),
                        available: available.into(),
                        held: held.into(),
                        sold: sold.into(),
                    }
                });
                out.insert(sku.0, got);
            }
        }
        Backend::Http {
            target,
            admin_token,
        } => {
            let paths: Vec<(u64, String)> = skus
                .iter()
                .map(|s| (s.0, format!("/v1/items/{}", s.0)))
                .collect();
            for (sku, got) in http_get_all(target, admin_token, paths).await {
                let item = got.filter(|(s, _)| *s == StatusCode::OK).map(|(_, v)| {
                    let n = |f: &str| v[f].as_u64().unwrap_or(0);
                    ServerItem {
                        stock_total: n("stock_total"),
                        available: n("available"),
                        held: n("held"),
                        sold: n("sold"),
                    }
                });
                out.insert(sku, item);
            }
        }
    }
    out
}

/// GETs every path over a few connections, with retries.
async fn http_get_all(
    target: &crate::http::Target,
    token: &str,
    paths: Vec<(u64, String)>,
) -> Vec<(u64, Option<(StatusCode, Value)>)> {
    let paths = std::sync::Arc::new(paths);
    let mut tasks = Vec::new();
    for lane in 0..AUDIT_LANES {
        let (paths, target, token) = (paths.clone(), target.clone(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut out = Vec::new();
            for i in (lane..paths.len()).step_by(AUDIT_LANES) {
                let (key, path) = &paths[i];
                let mut got = None;
                for _ in 0..3 {
                    if let Ok((status, bytes)) = conn
                        .send(
                            Method::GET,
                            path,
                            Some(&token),
                            None,
                            None,
                            Duration::from_secs(10),
                        )
                        .await
                    {
                        got = Some((
                            status,
                            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                        ));
                        break;
                    }
                }
                out.push((*key, got));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(part) = t.await {
            all.extend(part);
        }
    }
    all
}
