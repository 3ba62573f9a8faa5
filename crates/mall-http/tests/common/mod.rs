//! What the HTTP tests share: the API on a temporary store and a manual
//! clock, and one-line calls.
#![allow(dead_code)] // each test file uses its own part

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mall_core::Timestamp;
use mall_engine::{Engine, EngineConfig, Store};
use mall_shard::{Clock, ManualClock};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

pub const T0: i64 = 1_800_000_000_000;
pub const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";

pub struct Api {
    pub app: axum::Router,
    pub clock: Arc<ManualClock>,
    pub state: mall_http::AppState,
    pub _dir: tempfile::TempDir,
    pub _scratch: Option<mall_postgres::Scratch>,
}

/// The store a test runs on: SQLite files in `dir` (the default), or with
/// `MALL_TEST_STORE=postgres` a database of its own on the PostgreSQL at
/// `MALL_TEST_PG` (`./scripts/test.sh` runs these tests both ways). The
/// scratch database lives as long as the guard.
pub fn test_store(dir: &Path, shards: usize) -> (Arc<dyn Store>, Option<mall_postgres::Scratch>) {
    if std::env::var("MALL_TEST_STORE").as_deref() != Ok("postgres") {
        return (
            Arc::new(mall_sqlite::DataDir::open(dir, Some(shards)).unwrap()),
            None,
        );
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let base = std::env::var("MALL_TEST_PG")
        .expect("MALL_TEST_STORE=postgres needs MALL_TEST_PG, a PostgreSQL connection string");
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch =
        mall_postgres::Scratch::create(&[base], &format!("http_{}_{n}", std::process::id()))
            .expect("a scratch database");
    let store = mall_postgres::PgStore::open(scratch.urls(), Some(shards), 4).unwrap();
    (Arc::new(store), Some(scratch))
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub replayed: bool,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub fn new() -> Api {
        Api::with_config(mall_http::HttpConfig::default())
    }

    pub fn with_config(config: mall_http::HttpConfig) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let (data, scratch) = test_store(dir.path(), 2);
        let clock = Arc::new(ManualClock::new(Timestamp(T0)));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let accounts = data.accounts().unwrap();
        let mut engine_config = EngineConfig::default();
        engine_config.inventory.hold_timeout_ms = 60_000;
        engine_config.runtime.tick_interval = std::time::Duration::from_millis(5);
        let engine = Arc::new(Engine::start(data, engine_config, dyn_clock.clone()).unwrap());
        let state = mall_http::AppState::new(engine, accounts, config, dyn_clock).unwrap();
        assert_eq!(
            mall_http::bootstrap_admin(&state, Some(ADMIN), None).unwrap(),
            None
        );
        Api {
            app: mall_http::router(state.clone()),
            clock,
            state,
            _dir: dir,
            _scratch: scratch,
        }
    }

    /// With one simulated payment channel ("sim", third party) in this
    /// process, and the API also on a real loopback port for its callbacks.
    pub async fn with_channel() -> (Api, mall_provider_sim::Simulator) {
        Api::with_channel_and(Api::new(), 5_000).await
    }

    /// `api` with the simulated channel (see [`Api::with_channel`]); a
    /// payment request waits `wait_ms` for its outcome before answering 202.
    pub async fn with_channel_and(api: Api, wait_ms: u64) -> (Api, mall_provider_sim::Simulator) {
        let file = mall_provider_sim::config::parse(
            "[[channel]]\nname = \"sim\"\nport = 0\nsecret = \"sim-secret-0123456789\"\n\
             methods = [\"third_party\"]\ncapacity_per_s = 1000\nmax_concurrency = 100\n\
             latency_ms = { median = 5, p99 = 20 }\n",
        )
        .unwrap();
        let sim = mall_provider_sim::Simulator::start(file, 1).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = api.app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = mall_payments::PaymentsConfig {
            channels: vec![mall_payments::ChannelSetup {
                route: mall_router::router::ChannelConfig {
                    name: "sim".into(),
                    methods: vec![mall_router::router::PayMethod::ThirdParty],
                    capacity_per_s: 1000,
                    max_concurrency: 100,
                    fee_bp: 0,
                    priority: 0,
                },
                addr: sim.addr("sim").unwrap(),
                secret: "sim-secret-0123456789".into(),
            }],
            callback_base: format!("http://{addr}"),
            wait_ms,
            ..Default::default()
        };
        api.state.attach_payments(config).await.unwrap();
        (api, sim)
    }

    pub async fn raw(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        if status.is_client_error() || status.is_server_error() {
            assert!(
                body["error"]["code"].is_string(),
                "error without a code: {status} {body}"
            );
            assert!(
                body["error"]["message"].is_string(),
                "error without a message: {status} {body}"
            );
        }
        Reply {
            status,
            body,
            replayed,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.raw(req.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, token, None, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call("POST", path, token, Some(body), None).await
    }

    /// A merchant and an item; returns the SKU.
    pub async fn item(&self, stock: i64, limit: i64, opens_in_ms: i64) -> u64 {
        let m = self
            .post(
                "/v1/admin/merchants",
                Some(ADMIN),
                json!({"name": format!("m{stock}-{limit}-{opens_in_ms}")}),
            )
            .await;
        assert_eq!(m.status, StatusCode::CREATED, "{}", m.body);
        let r = self
            .post(
                "/v1/admin/items",
                Some(ADMIN),
                json!({"merchant_id": m.body["id"], "title": "Rice cooker", "category": "appliances", "price_fen": 29900,
                       "stock": stock, "per_user_limit": limit, "opens_at_ms": T0 + opens_in_ms, "closes_at_ms": T0 + 86_400_000}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["sku"].as_u64().unwrap()
    }

    /// A merchant account of merchant `merchant` (`username`), logged in:
    /// its token.
    pub async fn seller(&self, merchant: u64, username: &str) -> String {
        let password = "sells fine goods";
        let r = self
            .post(
                "/v1/admin/users",
                Some(ADMIN),
                json!({"username": username, "password": password, "role": "merchant", "merchant_id": merchant}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self
            .post(
                "/v1/sessions",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        r.body["token"].as_str().unwrap().to_string()
    }

    /// `n` shopper tokens.
    pub async fn shoppers(&self, n: u32, prefix: &str) -> Vec<String> {
        let r = self
            .post(
                "/v1/admin/users/bulk",
                Some(ADMIN),
                json!({"count": n, "prefix": prefix}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["token"].as_str().unwrap().to_string())
            .collect()
    }

    /// Each `(field, value)` set in `base` and posted to `path` by an
    /// admin is refused 422, naming the field on failure.
    pub async fn each_invalid(&self, path: &str, base: &Value, cases: &[(&str, Value)]) {
        for (field, value) in cases {
            let mut bad = base.clone();
            bad[*field] = value.clone();
            let r = self.post(path, Some(ADMIN), bad).await;
            assert_eq!(
                r.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{field}: {}",
                r.body
            );
        }
    }

    pub async fn order(&self, token: &str, sku: u64, qty: i64, key: Option<&str>) -> Reply {
        let body = json!({"sku": sku, "quantity": qty, "payment": "online", "address": "1 Nanjing Road, Shanghai"});
        self.call("POST", "/v1/orders", Some(token), Some(body), key)
            .await
    }
}
