//! The rush end to end: against the real server (HTTP, in this process),
//! in-process against the engine, and against deliberately broken servers
//! that the audit must catch.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use mall_engine::{AccountStore, Engine, EngineConfig, Store};
use mall_rush::audit::audit;
use mall_rush::http::Target;
use mall_rush::plan::Plan;
use mall_rush::run::{run, Backend};
use mall_rush::scenario::Scenario;
use mall_rush::summary::summarize;
use mall_shard::{Clock, SystemClock};
use mall_sqlite::DataDir;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const ADMIN: &str = "rush-test-admin-token-0123456789abcdef";

fn small() -> Scenario {
    let mut s = Scenario::load("smoke").unwrap();
    s.users = 400;
    s.items = 6;
    s.stock_max = 30;
    s.opens_in_s = 0.5;
    s.spike_s = 0.5;
    s.tail_s = 1.0;
    s.duration_max_s = 10.0;
    s.connections = 8;
    s
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn engine(dir: &std::path::Path, hold_timeout_ms: i64) -> (Arc<Engine>, Arc<dyn AccountStore>) {
    let data = Arc::new(DataDir::open(dir, Some(2)).unwrap());
    let mut config = EngineConfig::default();
    config.inventory.hold_timeout_ms = hold_timeout_ms;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let accounts = data.accounts().unwrap();
    (
        Arc::new(Engine::start(data, config, clock).unwrap()),
        accounts,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_rush_against_the_real_server_passes_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, accounts) = engine(dir.path(), 1_500);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut http = mall_http::HttpConfig::default();
    http.rate.user_rate_per_s = 1_000.0;
    let state = mall_http::AppState::new(engine, accounts, http, clock).unwrap();
    mall_http::bootstrap_admin(&state, Some(ADMIN), None).unwrap();
    let url = serve(mall_http::router(state.clone())).await;
    // Payments go to a simulated provider in this process.
    let channels = mall_provider_sim::config::parse(
        "[[channel]]\nname = \"sim\"\nport = 0\nsecret = \"sim-secret-0123456789\"\n\
         methods = [\"third_party\"]\ncapacity_per_s = 5000\nmax_concurrency = 1000\n\
         latency_ms = { median = 5, p99 = 30 }\n",
    )
    .unwrap();
    let server = url.trim_start_matches("http://").parse().unwrap();
    let (_simulator, setups) = mall_provider_sim::Simulator::on_free_ports(channels, 1)
        .await
        .unwrap();
    let payments = mall_payments::PaymentsConfig::for_server(server, setups);
    state.attach_payments(payments).await.unwrap();
    let backend = Backend::Http {
        target: Target::parse(&url, false).unwrap(),
        admin_token: ADMIN.into(),
    };
    let mut scenario = Scenario::load("smoke").unwrap();
    scenario.opens_in_s = 0.5;
    let outcome = run(Plan::new(&scenario), backend.clone(), false)
        .await
        .unwrap();
    let summary = summarize(&outcome, "http");
    let snap = &summary.by_kind["snap_up"];
    assert_eq!(
        snap.sent,
        Plan::new(&scenario).attempts.len() as u64,
        "every planned snap-up was sent"
    );
    assert!(
        snap.codes.get("created").copied().unwrap_or(0) > 100,
        "{:?}",
        snap.codes
    );
    assert!(
        snap.codes.get("sold_out").copied().unwrap_or(0) > 100,
        "{:?}",
        snap.codes
    );
    assert!(
        !snap.codes.contains_key("timeout") && !snap.codes.contains_key("transport_error"),
        "{:?}",
        snap.codes
    );
    // The 1.5 s hold lapses inside the run: late payments are refused.
    assert!(
        summary
            .by_kind
            .get("late_pay")
            .is_some_and(|k| k.codes.contains_key("hold_expired")),
        "{:?}",
        summary.by_kind
    );
    // Payments in time go through the channel and succeed.
    let pay = &summary.by_kind["pay"];
    assert!(
        pay.codes.get("ok").copied().unwrap_or(0) > 0,
        "{:?}",
        pay.codes
    );
    let report = audit(&outcome, &backend).await;
    assert!(report.passed(), "{:?}", report.violations);
    assert_eq!(report.orders_checked, snap.codes["created"]);
    // The claim rush ran, oversubscribed: every claim issued was checked.
    let claims = &summary.by_kind["claim"];
    assert_eq!(report.claims_checked, claims.codes["created"]);
    assert!(
        claims.codes.get("sold_out").copied().unwrap_or(0) > 0,
        "{:?}",
        claims.codes
    );
    assert!(summary.claim_latency.is_some(), "claim latency measured");
    // Cart checkouts ran: each acknowledged one was read back whole.
    let checkouts = &summary.by_kind["checkout"];
    assert_eq!(
        checkouts.sent,
        Plan::new(&scenario).checkouts.len() as u64,
        "every planned checkout was sent"
    );
    let made = checkouts.codes.get("created").copied().unwrap_or(0);
    assert!(made > 0, "{:?}", checkouts.codes);
    assert_eq!(report.checkouts_checked, made);
    // Online checkouts were paid, each with one payment, every line paid.
    let paid = &summary.by_kind["checkout_pay"];
    assert!(
        paid.codes.get("ok").copied().unwrap_or(0) > 0,
        "{:?}",
        paid.codes
    );
    assert!(report.checkouts_paid > 0, "{report:?}");
    assert!(
        summary.checkout_latency.is_some(),
        "checkout latency measured"
    );
    // Pre-sale deposits before the opening, balances after it, and some
    // never paid: each acknowledged deposit read back, balances paid and
    // deposits forfeited both reached.
    let deposits = &summary.by_kind["deposit"];
    let made = deposits.codes.get("created").copied().unwrap_or(0);
    assert!(made > 10, "{:?}", deposits.codes);
    assert_eq!(report.deposits_checked, made);
    assert!(
        report.balances_paid > 0 && report.deposits_forfeited > 0,
        "{report:?}"
    );
    // Each deposit paid its balance or was forfeited (a few may have met an
    // answer the audit cannot judge, such as a timeout).
    let decided = report.balances_paid + report.deposits_forfeited;
    assert!(
        decided <= made && decided * 10 >= made * 9,
        "{decided} of {made} deposits paid their balance or were forfeited: {:?}",
        summary.by_kind.get("balance")
    );
    let html = mall_rush::report::html(&summary, &report);
    assert!(
        html.contains("<svg")
            && html.contains("Audit passed")
            && !html.contains("http://")
            && !html.contains("<script")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_rush_passes_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = engine(dir.path(), 60_000);
    let backend = Backend::InProcess { engine };
    let outcome = run(Plan::new(&small()), backend.clone(), false)
        .await
        .unwrap();
    let report = audit(&outcome, &backend).await;
    assert!(report.passed(), "{:?}", report.violations);
    assert!(report.orders_checked > 20);
    assert_eq!(
        report.claims_checked,
        u64::from(outcome.plan.scenario.coupon_quantity()),
        "an oversubscribed claim rush issues every coupon"
    );
}

/// A server that speaks the API but breaks a promise.
#[derive(Clone, Copy, PartialEq)]
enum Broken {
    /// Never refuses: sells past the stock.
    Oversells,
    /// Acknowledges orders, then loses every third one.
    Forgets,
    /// Makes two orders for every request, and shows the client one.
    Doubles,
    /// Takes pre-sale deposits and their balances, says each is paid, and
    /// then has every deposit forfeited.
    ForfeitsPaidBalances,
    /// Says a checkout's one payment paid every line, and leaves them unpaid.
    TellsCheckoutsPaid,
}

#[derive(Default)]
struct Fake {
    next: u64,
    /// sku -> (stock, sold)
    items: HashMap<u64, (u64, u64)>,
    /// id -> (sku, user, status)
    orders: HashMap<u64, (u64, u64, String)>,
    /// Claims made of the coupon.
    claims: u64,
    /// Checkouts acknowledged: id -> user (it keeps two lines of three).
    checkouts: HashMap<u64, u64>,
}

type Shared = Arc<(Broken, Mutex<Fake>)>;

fn user_of(headers: &HeaderMap) -> u64 {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer t"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fake_app(mode: Broken) -> Router {
    let shared: Shared = Arc::new((mode, Mutex::new(Fake::default())));
    Router::new()
        .route("/v1/admin/merchants", post(|State(s): State<Shared>| async move {
            let mut f = s.1.lock().unwrap();
            f.next += 1;
            (StatusCode::CREATED, Json(json!({"id": f.next})))
        }))
        .route("/v1/admin/items", post(|State(s): State<Shared>, Json(b): Json<Value>| async move {
            let mut f = s.1.lock().unwrap();
            f.next += 1;
            let sku = f.next;
            f.items.insert(sku, (b["stock"].as_u64().unwrap(), 0));
            (StatusCode::CREATED, Json(json!({"sku": sku})))
        }))
        .route("/v1/admin/users/bulk", post(|State(s): State<Shared>, Json(b): Json<Value>| async move {
            let mut f = s.1.lock().unwrap();
            let users: Vec<Value> = (0..b["count"].as_u64().unwrap()).map(|_| {
                f.next += 1;
                json!({"id": f.next, "token": format!("t{}", f.next)})
            }).collect();
            (StatusCode::CREATED, Json(json!({"users": users})))
        }))
        .route("/v1/items/{sku}", get(|State(s): State<Shared>, Path(sku): Path<u64>| async move {
            let f = s.1.lock().unwrap();
            let (stock, sold) = f.items[&sku];
            let sold = sold.min(stock); // it hides the oversell in its counters
            Json(json!({"stock_total": stock, "available": stock - sold, "held": 0, "sold": sold}))
        }))
        .route("/v1/orders", post(|State(s): State<Shared>, headers: HeaderMap, Json(b): Json<Value>| async move {
            let mut f = s.1.lock().unwrap();
            let sku = b["sku"].as_u64().unwrap();
            let (stock, sold) = f.items[&sku];
            if s.0 == Broken::Forgets && sold >= stock {
                return (StatusCode::CONFLICT, Json(json!({"error": {"code": "sold_out", "message": "sold out"}})));
            }
            f.items.get_mut(&sku).unwrap().1 += 1;
            let deposit = b["address"].as_str().is_some_and(|a| a.contains("Pre-sale"));
            if s.0 == Broken::ForfeitsPaidBalances && deposit {
                f.next += 1;
                let id = f.next;
                f.orders.insert(id, (sku, user_of(&headers), "forfeited".into()));
                return (StatusCode::CREATED, Json(json!({"id": id, "status": "awaiting_payment"})));
            }
            if s.0 == Broken::Doubles {
                f.next += 1;
                let extra = f.next;
                f.orders.insert(extra, (sku, user_of(&headers), "confirmed".into()));
            }
            f.next += 1;
            let id = f.next;
            f.orders.insert(id, (sku, user_of(&headers), "confirmed".into()));
            (StatusCode::CREATED, Json(json!({"id": id, "status": "confirmed"})))
        }))
        .route("/v1/orders", get(|State(s): State<Shared>, axum::extract::Query(q): axum::extract::Query<HashMap<String, u64>>| async move {
            let f = s.1.lock().unwrap();
            let user = q.get("user_id").copied().unwrap_or(0);
            let orders: Vec<Value> = f.orders.values().filter(|o| o.1 == user).map(|o| json!({"sku": o.0, "status": o.2})).collect();
            Json(json!({"orders": orders}))
        }))
        .route("/v1/orders/{id}", get(|State(s): State<Shared>, Path(id): Path<u64>| async move {
            let f = s.1.lock().unwrap();
            match f.orders.get(&id) {
                Some((sku, user, status)) if !(s.0 == Broken::Forgets && id % 3 == 0) => {
                    (StatusCode::OK, Json(json!({"sku": sku, "user_id": user, "status": status})))
                }
                _ => (StatusCode::NOT_FOUND, Json(json!({"error": {"code": "order_not_found", "message": "no"}}))),
            }
        }))
        // Its coupon never runs out, and it keeps no claim.
        .route("/v1/coupons", post(|| async { (StatusCode::CREATED, Json(json!({"id": 1}))) }))
        .route("/v1/coupons/{id}/claims", post(|State(s): State<Shared>| async move {
            let mut f = s.1.lock().unwrap();
            f.claims += 1;
            f.next += 1;
            (StatusCode::CREATED, Json(json!({"id": f.next, "status": "claimed"})))
        }))
        .route("/v1/coupons/{id}", get(|State(s): State<Shared>| async move {
            Json(json!({"claimed": s.1.lock().unwrap().claims}))
        }))
        .route("/v1/claims", get(|| async { Json(json!({"claims": []})) }))
        // It acknowledges every checkout, and holds two of its three lines.
        .route("/v1/checkouts", post(|State(s): State<Shared>, headers: HeaderMap| async move {
            let mut f = s.1.lock().unwrap();
            f.next += 1;
            let id = f.next;
            f.checkouts.insert(id, user_of(&headers));
            (StatusCode::CREATED, Json(json!({"id": id, "state": "reserved"})))
        }))
        .route("/v1/checkouts", get(|State(s): State<Shared>, axum::extract::Query(q): axum::extract::Query<HashMap<String, u64>>| async move {
            let f = s.1.lock().unwrap();
            let user = q.get("user_id").copied().unwrap_or(0);
            let line = json!({"id": 1, "status": "awaiting_payment"});
            let checkouts: Vec<Value> = f.checkouts.iter().filter(|(_, u)| **u == user)
                .map(|(id, _)| json!({"id": id, "state": "reserved", "children": [{"orders": [line, line]}]}))
                .collect();
            Json(json!({"checkouts": checkouts}))
        }))
        .route("/v1/checkouts/{id}/payments", post(|State(s): State<Shared>, Path(id): Path<u64>| async move {
            if s.0 == Broken::TellsCheckoutsPaid {
                let line = json!({"id": 1, "status": "paid"});
                let checkout = json!({"id": id, "state": "reserved", "children": [{"orders": [line, line]}]});
                return (StatusCode::OK, Json(json!({"payment": {"status": "succeeded"}, "checkout": checkout})));
            }
            (StatusCode::CONFLICT, Json(json!({"error": {"code": "invalid_order_status", "message": "no"}})))
        }))
        .route("/v1/orders/{id}/cancel", post(|| async { (StatusCode::CONFLICT, Json(json!({"error": {"code": "invalid_order_status", "message": "no"}}))) }))
        .route("/v1/orders/{id}/payments", post(|State(s): State<Shared>, Path(id): Path<u64>| async move {
            if s.0 == Broken::ForfeitsPaidBalances {
                return (StatusCode::OK, Json(json!({"order": {"id": id, "status": "paid"}})));
            }
            (StatusCode::CONFLICT, Json(json!({"error": {"code": "invalid_order_status", "message": "no"}})))
        }))
        .route("/v1/orders/{id}/balance", post(|State(s): State<Shared>, Path(id): Path<u64>| async move {
            let mut f = s.1.lock().unwrap();
            let (sku, user, _) = f.orders[&id].clone();
            f.next += 1;
            let b = f.next;
            f.orders.insert(b, (sku, user, "expired".into()));
            (StatusCode::CREATED, Json(json!({"id": b, "status": "awaiting_payment"})))
        }))
        .with_state(shared)
}

async fn audit_of(mode: Broken) -> Vec<String> {
    let url = serve(fake_app(mode)).await;
    let backend = Backend::Http {
        target: Target::parse(&url, false).unwrap(),
        admin_token: ADMIN.into(),
    };
    let mut s = small();
    // Every order a sale the client is told about; but checkouts to pay.
    s.cod_share = if mode == Broken::TellsCheckoutsPaid {
        0.0
    } else {
        1.0
    };
    let outcome = run(Plan::new(&s), backend.clone(), false).await.unwrap();
    audit(&outcome, &backend).await.violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_an_overselling_server() {
    let violations = audit_of(Broken::Oversells).await;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("client was told of") && v.contains("stock is")),
        "{violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_a_server_that_forgets_acknowledged_orders() {
    let violations = audit_of(Broken::Forgets).await;
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("checkout ") && v.contains("with 2 of 3 lines")),
        "a checkout acknowledged but half held: {violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("order ") && v.contains("missing on the server")),
        "{violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_a_server_that_over_issues_and_forgets_claims() {
    let violations = audit_of(Broken::Doubles).await;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("claims acknowledged, the coupon has")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("claim ") && v.contains("missing on the server")),
        "{violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_a_server_that_forfeits_paid_balances() {
    let violations = audit_of(Broken::ForfeitsPaidBalances).await;
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("pre-sale ") && v.contains("its balance was told paid")),
        "{violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_a_server_that_tells_a_checkout_paid_and_leaves_its_lines_unpaid() {
    let violations = audit_of(Broken::TellsCheckoutsPaid).await;
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("checkout ") && v.contains("was told paid")),
        "{violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_a_server_that_doubles_orders() {
    let violations = audit_of(Broken::Doubles).await;
    assert!(
        violations.iter().any(|v| v.contains("doubled")),
        "{violations:?}"
    );
}
