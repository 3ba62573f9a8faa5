//! The HTTP API of mall (axum). This is the only crate that knows HTTP and
//! JSON: requests are parsed here into domain types, handed to the engine,
//! and replies are turned back into JSON with stable error codes.
//!
//! Layout: [`routes`] has one module per resource, [`auth`] who is calling,
//! [`json`] strict body parsing, [`error`] the error body, [`limits`] rate
//! limits, [`metrics`] Prometheus, [`listener`] connection limits and
//! timeouts, [`client`] the client's address behind trusted proxies,
//! [`passwords`] bounded password hashing and login throttling.

pub mod auth;
pub mod carry;
pub mod client;
pub mod error;
pub mod json;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod passwords;
pub mod routes;

use auth::{Principal, SessionCache};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use mall_core::{Role, Timestamp, UserId};
use mall_engine::{AccountStore, Engine, NewUser};
use mall_shard::Clock;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use limits::RateConfig;

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted.
    pub body_bytes_max: usize,
    /// Connection limits and timeouts of the shoppers' listener.
    pub listener: listener::ListenerConfig,
    /// Lifetime of a shopper's or merchant's login, and of bulk-issued tokens.
    pub session_ttl_ms: i64,
    /// Lifetime of an admin's login (shorter: admin tokens are worth more).
    /// The bootstrap token (`MALL_ADMIN_TOKEN`) lasts until rotated or revoked.
    pub admin_session_ttl_ms: i64,
    /// Password hashing threads and queue.
    pub passwords: passwords::PasswordConfig,
    /// Failed logins per username.
    pub login_throttle: passwords::ThrottleConfig,
    /// How long stored responses of idempotent non-order requests are kept.
    pub idempotency_retention_ms: i64,
    pub rate: RateConfig,
    /// Proxies whose forwarded client addresses are believed.
    pub trusted_proxies: Vec<client::Cidr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_bytes_max: 64 * 1024,
            listener: listener::ListenerConfig::default(),
            session_ttl_ms: 24 * 3_600_000,
            admin_session_ttl_ms: 8 * 3_600_000,
            passwords: passwords::PasswordConfig::default(),
            login_throttle: passwords::ThrottleConfig::default(),
            idempotency_retention_ms: 24 * 3_600_000,
            rate: RateConfig::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub engine: Arc<Engine>,
    pub accounts: Arc<dyn AccountStore>,
    /// Blocking store calls allowed at once, on a remote store.
    pub store_calls: Option<tokio::sync::Semaphore>,
    pub sessions: SessionCache,
    pub config: HttpConfig,
    pub metrics: metrics::Metrics,
    pub limiter: limits::RateLimiter,
    pub clock: Arc<dyn Clock>,
    /// New SKUs.
    pub skus: routes::ids::IdSource,
    /// New coupon ids.
    pub coupon_ids: routes::ids::IdSource,
    /// The password hashing threads (bounded memory and queue).
    pub hasher: passwords::Hasher,
    /// Failed logins per username.
    pub login_throttle: passwords::LoginThrottle,
    /// Idempotency keys of non-order requests being executed now.
    pub in_flight_keys: Mutex<HashSet<(UserId, String)>>,
    /// The payment service, attached once it has started (see [`AppState::attach_payments`]).
    pub payments: std::sync::OnceLock<mall_payments::Payments>,
    /// The event stream (see [`AppState::attach_events`]); without it nothing is recorded.
    pub events: std::sync::OnceLock<mall_events::EventLog>,
    /// The forecast the dashboard compares with the night (`mall serve --forecast`).
    pub forecast: std::sync::OnceLock<serde_json::Value>,
    /// The listeners' connection counters, by name (for `/metrics`).
    pub listeners: Mutex<Vec<(&'static str, Arc<listener::ListenerStats>)>>,
    /// Shoppers' favourites and carts.
    pub wishlists: routes::wishlist::Wishlists,
    /// The checkouts' writer (their records, committed in batches).
    pub checkouts: routes::checkouts::Writer,
    /// Promotions running or to come.
    pub promotions: routes::promotions::Promotions,
    /// This node's cluster, when it is one of many (payments are carried
    /// to the node running the ledger; see `carry`).
    pub cluster: std::sync::OnceLock<Arc<mall_cluster::Node>>,
    /// On a cluster: the whole cluster's dashboard, refreshed by
    /// `routes::dashboard::follow_cluster`.
    pub cluster_dashboard: Mutex<Option<serde_json::Value>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Blocking calls to a remote store at once, at most (twice its share of
/// connections at the default: enough to keep them busy).
const STORE_CALLS_MAX: usize = 16;

impl AppState {
    pub fn new(
        engine: Arc<Engine>,
        accounts: Arc<dyn AccountStore>,
        config: HttpConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<AppState, mall_engine::StoreError> {
        let sessions = SessionCache::load(accounts.live_sessions(clock.now())?);
        let wishlists = routes::wishlist::Wishlists::start(accounts.clone(), clock.clone())?;
        let checkouts = routes::checkouts::Writer::start(accounts.clone())?;
        let next_sku = engine.board().max_sku().map_or(1, |s| s.0 + 1);
        let next_coupon = engine.board().max_coupon().map_or(1, |c| c.0 + 1);
        let store_calls = (!engine.store().reads_are_local())
            .then(|| tokio::sync::Semaphore::new(STORE_CALLS_MAX));
        let state = AppState {
            inner: Arc::new(Inner {
                store_calls,
                limiter: limits::RateLimiter::new(config.rate.clone()),
                hasher: passwords::Hasher::start(&config.passwords),
                login_throttle: passwords::LoginThrottle::new(config.login_throttle.clone()),
                engine,
                accounts,
                sessions,
                config,
                metrics: metrics::Metrics::default(),
                clock,
                skus: routes::ids::IdSource::new("next_sku", next_sku),
                coupon_ids: routes::ids::IdSource::new("next_coupon", next_coupon),
                in_flight_keys: Mutex::new(HashSet::new()),
                payments: std::sync::OnceLock::new(),
                events: std::sync::OnceLock::new(),
                forecast: std::sync::OnceLock::new(),
                wishlists,
                checkouts,
                promotions: Default::default(),
                listeners: Mutex::new(Vec::new()),
                cluster: std::sync::OnceLock::new(),
                cluster_dashboard: Mutex::new(None),
            }),
        };
        routes::promotions::load(&state)?;
        Ok(state)
    }

    /// Starts the payment service on this state's engine and attaches it
    /// (attach the events first to have payments recorded).
    pub async fn attach_payments(
        &self,
        config: mall_payments::PaymentsConfig,
    ) -> Result<(), mall_payments::PayError> {
        let payments = mall_payments::Payments::start(
            self.engine.clone(),
            config,
            self.clock.clone(),
            self.events.get().cloned(),
        )
        .await?;
        let _ = self.payments.set(payments);
        Ok(())
    }

    /// Shows a listener's connection counters in `/metrics` as `name`.
    pub fn watch_listener(&self, name: &'static str, stats: Arc<listener::ListenerStats>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, stats));
    }

    /// Records what shoppers do from now on.
    pub fn attach_events(&self, log: mall_events::EventLog) {
        let _ = self.events.set(log);
    }

    /// Records an event, if events are attached (never waits for I/O).
    pub fn record(&self, event: mall_events::Event) {
        if let Some(log) = self.events.get() {
            log.record(event);
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Opens a session for `principal` under `token` (already shown to its owner).
    pub fn open_session(
        &self,
        token: &str,
        principal: Principal,
        expires_at: Timestamp,
    ) -> Result<(), mall_engine::StoreError> {
        let hash = auth::hash_token(token);
        self.accounts
            .insert_session(&hash, principal.user, expires_at, self.now())?;
        self.sessions.insert(hash, principal, expires_at);
        Ok(())
    }

    /// Housekeeping, run about once a minute: drop expired sessions and old
    /// stored responses.
    pub fn housekeeping(&self) {
        let now = self.now();
        self.sessions.prune(now);
        let horizon = now.plus_ms(-self.config.idempotency_retention_ms);
        if let Err(e) = self.accounts.prune_responses(horizon) {
            tracing::warn!(error = %e, "pruning stored responses failed");
        }
    }
}

/// Makes sure the first admin exists. `token`: an operator-chosen admin
/// token (from the environment); `password`: an admin password for login.
/// With neither, and no admin yet, a token is generated and returned so the
/// caller can hand it over (it is never logged).
pub fn bootstrap_admin(
    state: &AppState,
    token: Option<&str>,
    password: Option<&str>,
) -> Result<Option<String>, BootstrapError> {
    let now = state.now();
    let admin = match state.accounts.user_by_name("admin")? {
        Some(u) if u.role == Role::Admin => u.id,
        Some(_) => {
            return Err(BootstrapError::Refused(
                "the username 'admin' belongs to a non-admin account".into(),
            ))
        }
        None => {
            let user = NewUser {
                username: "admin".into(),
                role: Role::Admin,
                merchant: None,
                password_hash: None,
                session: None,
            };
            match state.accounts.create_users(&[user], now) {
                Ok(ids) => ids[0],
                // Another node of a cluster, starting at the same moment, made it.
                Err(mall_engine::StoreError::UsernameTaken) => {
                    state
                        .accounts
                        .user_by_name("admin")?
                        .filter(|u| u.role == Role::Admin)
                        .ok_or_else(|| {
                            BootstrapError::Refused("the username 'admin' is taken".into())
                        })?
                        .id
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if let Some(password) = password {
        let hash = auth::hash_password(password)
            .ok_or_else(|| BootstrapError::Refused("hashing the admin password failed".into()))?;
        state.accounts.set_password_hash(admin, &hash)?;
    }
    let principal = Principal {
        user: admin,
        role: Role::Admin,
        merchant: None,
    };
    // The bootstrap token lasts until it is rotated or revoked.
    let forever = now.plus_ms(10 * 365 * 24 * 3_600_000);
    if let Some(token) = token {
        rotate_bootstrap_token(state, admin, auth::hash_token(token))?;
        state.open_session(token, principal, forever)?;
        return Ok(None);
    }
    if password.is_none() && state.accounts.meta_get("admin_token_issued")?.is_none() {
        let token = auth::new_token().map_err(|e| BootstrapError::Refused(e.message))?;
        rotate_bootstrap_token(state, admin, auth::hash_token(&token))?;
        state.open_session(&token, principal, forever)?;
        state.accounts.meta_set("admin_token_issued", "1")?;
        return Ok(Some(token));
    }
    Ok(None)
}

/// A new bootstrap token replaces the old one: the old one's session ends.
/// (A store from before bootstrap tokens were recorded has no record; then
/// every long-lived admin session, which only bootstrap tokens make, ends.)
fn rotate_bootstrap_token(
    state: &AppState,
    admin: UserId,
    new: [u8; 32],
) -> Result<(), BootstrapError> {
    const KEY: &str = "bootstrap_token_sha256";
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match state.accounts.meta_get(KEY)? {
        Some(old) if old == hex(&new) => return Ok(()),
        Some(old) => {
            let bytes: Option<Vec<u8>> = (0..old.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(old.get(i..i + 2)?, 16).ok())
                .collect();
            if let Some(Ok(old)) = bytes.map(<[u8; 32]>::try_from) {
                state.accounts.delete_session(&old)?;
                state.sessions.remove(&old);
            }
        }
        None => {
            let year_ahead = state.now().plus_ms(365 * 24 * 3_600_000);
            for old in state.accounts.live_sessions(state.now())? {
                if old.user == admin && old.expires_at > year_ahead {
                    state.accounts.delete_session(&old.token_hash)?;
                    state.sessions.remove(&old.token_hash);
                }
            }
        }
    }
    state.accounts.meta_set(KEY, &hex(&new))?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] mall_engine::StoreError),
    #[error("{0}")]
    Refused(String),
}

/// May a line about a refused request be logged now? At most 10 a second,
/// so a flood of bad logins or forged callbacks cannot flood the log.
pub(crate) fn log_gate() -> bool {
    use std::sync::atomic::Ordering;
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if WINDOW.swap(second, Ordering::Relaxed) != second {
        COUNT.store(0, Ordering::Relaxed);
    }
    COUNT.fetch_add(1, Ordering::Relaxed) < 10
}

/// Records latency and status class by matched route.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    state
        .metrics
        .record_request(method.as_str(), route, status, started.elapsed());
    response
}

/// The edge of every request: it is marked in flight on its connection
/// while it runs (so connection deadlines never cut it off); every answer
/// gets `X-Content-Type-Options: nosniff`, and pages may not be framed. Every error is JSON: an error that left a handler or extractor
/// as text (none should) is rewritten into the error shape, with a code
/// named after its status, so a client never has to parse text.
async fn harden(request: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue};
    use tracing::Instrument;
    let in_flight = listener::in_flight(&request);
    let request_id = request_id(&request);
    let span = tracing::info_span!("request", id = %request_id);
    let mut response = next.run(request).instrument(span).await;
    drop(in_flight);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = std::mem::take(response.body_mut());
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let message = String::from_utf8_lossy(&text).trim().to_string();
        let mut error = error::ApiError::new(status, error::code_for_status(status), message);
        error.retry_after_s = retry_after.and_then(|v| v.to_str().ok()?.parse().ok());
        response = axum::response::IntoResponse::into_response(error);
    }
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

const REQUEST_ID: &str = "x-request-id";

/// The request's id: the caller's `X-Request-Id` when it is 1 to 64
/// visible ASCII characters, else a new one (unique in this process). It
/// is on every log line of the request and returned in `X-Request-Id`.
fn request_id(request: &Request) -> String {
    use std::sync::atomic::Ordering;
    if let Some(id) = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
    {
        return id.to_string();
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        u32::from_le_bytes(b)
    });
    format!(
        "{prefix:08x}{:08x}",
        NEXT.fetch_add(1, Ordering::Relaxed) as u32
    )
}

/// The whole API (the shoppers' listener).
pub fn router(state: AppState) -> Router {
    layered(routes::routes(), state)
}

/// Operations and admin only (`--admin-addr`): health, metrics, the
/// dashboard and every admin route, on a listener with its own connections,
/// so a full shoppers' listener never locks the operators out.
pub fn admin_router(state: AppState) -> Router {
    layered(routes::admin_routes(), state)
}

fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            carry::carry,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(axum::middleware::from_fn(harden))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.body_bytes_max,
        ))
        .with_state(state)
}
