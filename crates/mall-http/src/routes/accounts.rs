//! Accounts: registration, login, admin-made accounts (single and bulk),
//! merchants.

use super::{blocking, check_text, idempotency, Segment};
use crate::auth::{self, CurrentToken, Principal};
use crate::client::ClientAddr;
use crate::error::{ApiError, ApiResult};
use crate::json::StrictJson;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use mall_core::{MerchantId, Role, UserId};
use mall_engine::{NewUser, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most accounts one bulk request may create.
pub const BULK_USERS_MAX: u32 = 10_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// 3 to 32 characters: lower-case letters, digits, `_`, `-`, `.`.
    #[schema(min_length = 3, max_length = 32, pattern = "^[a-z0-9_.-]{3,32}$")]
    pub username: String,
    /// 8 to 128 characters, not only white space, not a common password.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateUser {
    pub username: String,
    pub password: String,
    /// `shopper`, `merchant` or `admin`.
    pub role: String,
    /// Required for merchant accounts: the merchant they act for.
    pub merchant_id: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: u64,
    pub username: String,
    pub role: String,
    pub merchant_id: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// Bearer token; shown once, stored only as a hash.
    pub token: String,
    pub expires_at_ms: i64,
    pub user: UserView,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUsersRequest {
    /// 1 to 10,000 shopper accounts.
    pub count: u32,
    /// Usernames are `<prefix>-<n>`; default `shopper`.
    pub prefix: Option<String>,
    /// First number of the usernames; default 1.
    pub start: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkUser {
    pub id: u64,
    pub username: String,
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct BulkUsersView {
    pub users: Vec<BulkUser>,
    pub expires_at_ms: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct MerchantView {
    pub id: u64,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct MerchantsView {
    pub merchants: Vec<MerchantView>,
}

fn check_username(name: &str) -> ApiResult<()> {
    let ok = (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "username must be 3 to 32 characters: a-z, 0-9, '_', '-', '.'",
        ))
    }
}

/// The common passwords refused at registration (one a line, `#` comments).
const COMMON_PASSWORDS: &str = include_str!("../common-passwords.txt");

/// 8 to 128 characters (else 422 `invalid_request`), not only white space,
/// and not one of the most common passwords (compared case-insensitively;
/// else 422 `weak_password`).
pub fn check_password(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if !(8..=128).contains(&n) {
        return Err(ApiError::invalid(
            "password must be 8 to 128 characters long",
        ));
    }
    if password.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "password must not be only white space",
        ));
    }
    let lower = password.to_lowercase();
    let common = COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.trim() == lower);
    if common {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "that password is one of the most common ones; choose another",
        ));
    }
    Ok(())
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::UsernameTaken => ApiError::conflict("username_taken", "that username is taken"),
        StoreError::MerchantNameTaken => {
            ApiError::conflict("merchant_name_taken", "that merchant name is taken")
        }
        other => ApiError::store("accounts store", other),
    }
}

async fn create_account(
    state: &AppState,
    username: String,
    password: String,
    role: Role,
    merchant: Option<MerchantId>,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let hash = state.hasher.hash(password).await?;
    let (accounts, now) = (state.accounts.clone(), state.now());
    let name = username.clone();
    let ids = blocking(state, move || {
        let user = NewUser {
            username: name,
            role,
            merchant,
            password_hash: Some(hash),
            session: None,
        };
        accounts.create_users(&[user], now)
    })
    .await
    .map_err(store_error)?;
    let view = UserView {
        id: ids[0].0,
        username,
        role: role.as_str().into(),
        merchant_id: merchant.map(|m| m.0),
    };
    super::json_answer(StatusCode::CREATED, &view)
}

/// Register a shopper account.
#[utoipa::path(post, path = "/v1/users", request_body = Credentials, tag = "accounts",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key, scoped by the username: a retry with the same username and password returns the first answer")),
    responses((status = 201, body = UserView), (status = 409, description = "username_taken", body = crate::error::ErrorBody),
              (status = 422, description = "invalid_request, weak_password, idempotency_key_reused", body = crate::error::ErrorBody),
              (status = 429, description = "rate_limited, registration_limited (Retry-After)", body = crate::error::ErrorBody),
              (status = 503, description = "busy (Retry-After)", body = crate::error::ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    StrictJson(body): StrictJson<Credentials>,
) -> Result<Response, ApiError> {
    state.limiter.check_address(addr)?;
    check_username(&body.username)?;
    check_password(&body.password)?;
    // Anonymous keys are scoped by the request's identity, the username:
    // one client's key never answers for another's registration.
    let key = idempotency::key_from(&headers)?.map(|k| format!("{}/{k}", body.username));
    let fp = mall_core::fingerprint(&[b"register", body.username.as_bytes()]);
    let replay = match &key {
        Some(k) => idempotency::stored(&state, UserId(0), k).await?.is_some(),
        None => false,
    };
    if replay {
        // A replay must also carry the same password (fingerprints never
        // hold passwords, so it is checked against the account's hash).
        let accounts = state.accounts.clone();
        let name = body.username.clone();
        let phc = blocking(&state, move || accounts.user_by_name(&name))
            .await
            .map_err(store_error)?
            .and_then(|u| u.password_hash);
        if !state.hasher.verify(body.password.clone(), phc).await? {
            return Err(ApiError::from_refusal(
                &mall_core::Refusal::IdempotencyKeyReused,
            ));
        }
    } else {
        state.limiter.check_registration(addr)?;
    }
    Ok(
        idempotency::run(&state, UserId(0), key, fp, idempotency::keep, || {
            create_account(&state, body.username, body.password, Role::Shopper, None)
        })
        .await,
    )
}

fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad_credentials",
        "unknown username or wrong password",
    )
}

/// Log in: returns a bearer token. Shoppers' and merchants' sessions last
/// `session_ttl` (24 h), admins' `admin_session_ttl` (8 h).
#[utoipa::path(post, path = "/v1/sessions", request_body = Credentials, tag = "accounts",
    responses((status = 201, body = SessionView), (status = 401, description = "bad_credentials", body = crate::error::ErrorBody),
              (status = 429, description = "rate_limited, login_throttled (Retry-After)", body = crate::error::ErrorBody),
              (status = 503, description = "busy (Retry-After)", body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    StrictJson(body): StrictJson<Credentials>,
) -> ApiResult<(StatusCode, Json<SessionView>)> {
    state.limiter.check_address(addr)?;
    if body.username.len() > 32 || body.password.len() > 512 {
        return Err(bad_credentials());
    }
    let started = std::time::Instant::now();
    state.login_throttle.check(&body.username, started)?;
    let accounts = state.accounts.clone();
    let name = body.username.clone();
    let user = blocking(&state, move || accounts.user_by_name(&name))
        .await
        .map_err(store_error)?;
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    // Unknown users cost a hash too, so timing does not tell which exist.
    let ok = state.hasher.verify(body.password, phc).await?;
    let Some(user) = user.filter(|_| ok) else {
        state.login_throttle.failed(&body.username, started);
        if crate::log_gate() {
            tracing::warn!(username = %body.username, client = %addr, "failed login");
        }
        return Err(bad_credentials());
    };
    state.login_throttle.succeeded(&body.username);
    let token = auth::new_token()?;
    let ttl = if user.role == Role::Admin {
        state.config.admin_session_ttl_ms
    } else {
        state.config.session_ttl_ms
    };
    let expires_at = state.now().plus_ms(ttl);
    let principal = Principal {
        user: user.id,
        role: user.role,
        merchant: user.merchant,
    };
    let session_state = state.clone();
    let t = token.clone();
    blocking(&state, move || {
        session_state.open_session(&t, principal, expires_at)
    })
    .await
    .map_err(store_error)?;
    let view = SessionView {
        token,
        expires_at_ms: expires_at.0,
        user: UserView {
            id: user.id.0,
            username: user.username,
            role: user.role.as_str().into(),
            merchant_id: user.merchant.map(|m| m.0),
        },
    };
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Serialize, ToSchema)]
pub struct LoggedOut {
    /// Always true: the token no longer works.
    pub logged_out: bool,
}

/// Log out: the calling token stops working at once.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = LoggedOut), (status = 401, description = "unauthenticated, invalid_token", body = crate::error::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    _principal: Principal,
    CurrentToken(hash): CurrentToken,
) -> ApiResult<Json<LoggedOut>> {
    let accounts = state.accounts.clone();
    blocking(&state, move || accounts.delete_session(&hash))
        .await
        .map_err(store_error)?;
    state.sessions.remove(&hash);
    Ok(Json(LoggedOut { logged_out: true }))
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub user_id: u64,
    /// Sessions (tokens) that stopped working.
    pub sessions_ended: u64,
}

/// Admin: end every session of a user (a stolen token, a departed
/// operator). Their tokens stop working at once; passwords still log in.
#[utoipa::path(delete, path = "/v1/admin/users/{id}/sessions", tag = "admin", security(("bearer" = [])),
    params(("id" = u64, Path, description = "user id")),
    responses((status = 200, body = Revoked), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "user_not_found", body = crate::error::ErrorBody)))]
pub async fn revoke_sessions(
    State(state): State<AppState>,
    principal: Principal,
    Segment(raw): Segment,
) -> ApiResult<Json<Revoked>> {
    principal.require_admin()?;
    let user = UserId(super::parse_id(&raw, "user id")?);
    let accounts = state.accounts.clone();
    let ended = blocking(&state, move || {
        Ok(match accounts.user_by_id(user)? {
            Some(_) => Some(accounts.delete_sessions_of(user)?),
            None => None,
        })
    })
    .await
    .map_err(store_error)?
    .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    state.sessions.remove_user(user);
    Ok(Json(Revoked {
        user_id: user.0,
        sessions_ended: ended as u64,
    }))
}

/// Admin: create an account of any role.
#[utoipa::path(post, path = "/v1/admin/users", request_body = AdminCreateUser, tag = "admin",
    security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "merchant_not_found", body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)))]
pub async fn admin_create_user(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<AdminCreateUser>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    check_username(&body.username)?;
    check_password(&body.password)?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::invalid("role must be shopper, merchant or admin"))?;
    let merchant = match (role, body.merchant_id) {
        (Role::Merchant, Some(id)) => {
            let accounts = state.accounts.clone();
            let known = blocking(&state, move || accounts.merchants())
                .await
                .map_err(store_error)?;
            if !known.iter().any(|m| m.id.0 == id) {
                return Err(ApiError::not_found(
                    "merchant_not_found",
                    "no such merchant",
                ));
            }
            Some(MerchantId(id))
        }
        (Role::Merchant, None) => {
            return Err(ApiError::invalid("a merchant account needs merchant_id"))
        }
        (_, Some(_)) => return Err(ApiError::invalid("only merchant accounts take merchant_id")),
        (_, None) => None,
    };
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[
        b"admin-user",
        body.username.as_bytes(),
        body.role.as_bytes(),
        &body.merchant_id.unwrap_or(0).to_le_bytes(),
    ]);
    Ok(
        idempotency::run(&state, principal.user, key, fp, idempotency::keep, || {
            create_account(&state, body.username, body.password, role, merchant)
        })
        .await,
    )
}

/// Admin: create shopper accounts in bulk, each with a token (no password:
/// load tests need many users without many password hashes).
#[utoipa::path(post, path = "/v1/admin/users/bulk", request_body = BulkUsersRequest, tag = "admin",
    security(("bearer" = [])),
    responses((status = 201, body = BulkUsersView), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn bulk_create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<BulkUsersRequest>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    if !(1..=BULK_USERS_MAX).contains(&body.count) {
        return Err(ApiError::invalid(format!(
            "count must be 1 to {BULK_USERS_MAX}"
        )));
    }
    let prefix = body.prefix.unwrap_or_else(|| "shopper".into());
    let start = body.start.unwrap_or(1);
    if start
        .checked_add(u64::from(body.count))
        .is_none_or(|end| end > 1 << 53)
    {
        return Err(ApiError::invalid("start + count must stay below 2^53"));
    }
    check_username(&format!("{prefix}-{start}"))?;
    check_username(&format!(
        "{prefix}-{}",
        start.saturating_add(u64::from(body.count))
    ))?;
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[
        b"bulk",
        prefix.as_bytes(),
        &start.to_le_bytes(),
        &body.count.to_le_bytes(),
    ]);
    let count = body.count;
    Ok(
        idempotency::run(&state, principal.user, key, fp, redact_tokens, || async {
            let view = issue_shoppers(&state, &prefix, start, count).await?;
            super::json_answer(StatusCode::CREATED, &view)
        })
        .await,
    )
}

/// Tokens are shown once: a replay of a bulk creation lists the accounts
/// without them (only their hashes are stored).
fn redact_tokens(body: &mut serde_json::Value) {
    if let Some(users) = body.get_mut("users").and_then(|u| u.as_array_mut()) {
        for user in users {
            user["token"] = serde_json::Value::Null;
        }
    }
}

/// Creates `count` token-only shopper accounts named `<prefix>-<n>`.
pub async fn issue_shoppers(
    state: &AppState,
    prefix: &str,
    start: u64,
    count: u32,
) -> ApiResult<BulkUsersView> {
    let now = state.now();
    let expires_at = now.plus_ms(state.config.session_ttl_ms);
    let mut tokens = Vec::with_capacity(count as usize);
    let mut users = Vec::with_capacity(count as usize);
    for n in start..start + u64::from(count) {
        let token = auth::new_token()?;
        users.push(NewUser {
            username: format!("{prefix}-{n}"),
            role: Role::Shopper,
            merchant: None,
            password_hash: None,
            session: Some((auth::hash_token(&token), expires_at)),
        });
        tokens.push(token);
    }
    let accounts = state.accounts.clone();
    let (ids, users) = blocking(state, move || {
        accounts.create_users(&users, now).map(|ids| (ids, users))
    })
    .await
    .map_err(store_error)?;
    let mut out = Vec::with_capacity(ids.len());
    for ((id, user), token) in ids.into_iter().zip(users).zip(tokens) {
        let (hash, _) = user.session.expect("made with a session");
        state.sessions.insert(
            hash,
            Principal {
                user: id,
                role: Role::Shopper,
                merchant: None,
            },
            expires_at,
        );
        out.push(BulkUser {
            id: id.0,
            username: user.username,
            token,
        });
    }
    Ok(BulkUsersView {
        users: out,
        expires_at_ms: expires_at.0,
    })
}

/// Admin: create a merchant.
#[utoipa::path(post, path = "/v1/admin/merchants", request_body = CreateMerchant, tag = "admin",
    security(("bearer" = [])),
    responses((status = 201, body = MerchantView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_merchant(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    StrictJson(body): StrictJson<CreateMerchant>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    check_text(&body.name, "name", 1, 100)?;
    let key = idempotency::key_from(&headers)?;
    let fp = mall_core::fingerprint(&[b"merchant", body.name.as_bytes()]);
    Ok(idempotency::run(
        &state,
        principal.user,
        key,
        fp,
        idempotency::keep,
        || async {
            let (accounts, now, name) = (state.accounts.clone(), state.now(), body.name.clone());
            let id = blocking(&state, move || accounts.create_merchant(&name, now))
                .await
                .map_err(store_error)?;
            super::json_answer(
                StatusCode::CREATED,
                &MerchantView {
                    id: id.0,
                    name: body.name,
                },
            )
        },
    )
    .await)
}

/// Admin: list merchants.
#[utoipa::path(get, path = "/v1/admin/merchants", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = MerchantsView)))]
pub async fn list_merchants(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<MerchantsView>> {
    principal.require_admin()?;
    let accounts = state.accounts.clone();
    let rows = blocking(&state, move || accounts.merchants())
        .await
        .map_err(store_error)?;
    Ok(Json(MerchantsView {
        merchants: rows
            .into_iter()
            .map(|m| MerchantView {
                id: m.id.0,
                name: m.name,
            })
            .collect(),
    }))
}
