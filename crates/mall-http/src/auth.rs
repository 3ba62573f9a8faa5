//! Who is calling: bearer tokens, sessions, password hashes.
//!
//! A token is 32 random bytes shown once (hex); only its SHA-256 is stored.
//! Live sessions are cached in memory so the hot path costs one hash and one
//! map lookup. Passwords are hashed with Argon2id off the async threads, a
//! bounded number at a time.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use mall_core::{MerchantId, Role, Timestamp, UserId};
use mall_engine::SessionRow;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::sync::RwLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user: UserId,
    pub role: Role,
    pub merchant: Option<MerchantId>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an admin account"))
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct CachedSession {
    principal: Principal,
    expires_at: Timestamp,
}

/// Live sessions by token hash. Bounded by the sessions in the store, which
/// only admins (bulk) and logins create, both rate limited.
#[derive(Default)]
pub struct SessionCache {
    by_hash: RwLock<FxHashMap<[u8; 32], CachedSession>>,
}

impl SessionCache {
    pub fn load(rows: Vec<SessionRow>) -> SessionCache {
        let cache = SessionCache::default();
        for row in rows {
            cache.insert(
                row.token_hash,
                Principal {
                    user: row.user,
                    role: row.role,
                    merchant: row.merchant,
                },
                row.expires_at,
            );
        }
        cache
    }

    pub fn insert(&self, hash: [u8; 32], principal: Principal, expires_at: Timestamp) {
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                hash,
                CachedSession {
                    principal,
                    expires_at,
                },
            );
    }

    fn lookup(&self, hash: &[u8; 32], now: Timestamp) -> Option<Principal> {
        let map = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
        map.get(hash)
            .filter(|s| s.expires_at > now)
            .map(|s| s.principal)
    }

    /// Forgets one session (log out).
    pub fn remove(&self, hash: &[u8; 32]) {
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
    }

    /// Forgets every session of `user` (revocation).
    pub fn remove_user(&self, user: UserId) {
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.principal.user != user);
    }

    /// Drops the sessions other nodes ended (log-outs, revocations), every
    /// `every`, for as long as the runtime runs: a revoked token stops
    /// working on every node within about that.
    pub fn follow_ends(state: AppState, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut after = 0i64;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let accounts = state.accounts.clone();
                let read =
                    tokio::task::spawn_blocking(move || accounts.session_ends_since(after)).await;
                let Ok(Ok((ends, next))) = read else {
                    continue;
                };
                after = next;
                for end in ends {
                    match end {
                        mall_engine::SessionEnd::Token(hash) => state.sessions.remove(&hash),
                        mall_engine::SessionEnd::User(user) => state.sessions.remove_user(user),
                    }
                }
            }
        })
    }

    pub fn prune(&self, now: Timestamp) {
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.expires_at > now);
    }

    pub fn len(&self) -> usize {
        self.by_hash.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token: 32 bytes from the OS, as 64 hex digits.
pub fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal("random token", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A PHC string of `password` (Argon2id, see [`crate::passwords`]), on
/// this thread: for start-up; requests go through the hashing threads.
pub fn hash_password(password: &str) -> Option<String> {
    crate::passwords::Memory::default().hash(password)
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthenticated(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The caller's bearer token, hashed: the session a log-out ends.
pub struct CurrentToken(pub [u8; 32]);

impl FromRequestParts<AppState> for CurrentToken {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .map(|t| CurrentToken(hash_token(t)))
            .ok_or_else(|| unauthenticated("unauthenticated", "send Authorization: Bearer <token>"))
    }
}

fn invalid_token() -> ApiError {
    unauthenticated(
        "invalid_token",
        "the token is unknown or expired; log in again",
    )
}

/// A session this node has not seen (a node of a cluster), read from the
/// store and cached. Log-outs and revocations reach every node's cache
/// through [`SessionCache::follow_ends`].
async fn session_from_store(state: &AppState, hash: [u8; 32]) -> Result<Principal, ApiError> {
    let (accounts, now) = (state.accounts.clone(), state.now());
    let row = crate::routes::blocking(state, move || accounts.session(&hash, now))
        .await
        .map_err(|e| ApiError::store("reading a session", e))?
        .ok_or_else(invalid_token)?;
    let principal = Principal {
        user: row.user,
        role: row.role,
        merchant: row.merchant,
    };
    state.sessions.insert(hash, principal, row.expires_at);
    Ok(principal)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthenticated("unauthenticated", "send Authorization: Bearer <token>")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| {
                unauthenticated("unauthenticated", "send Authorization: Bearer <token>")
            })?;
        let hash = hash_token(token);
        let principal = match state.sessions.lookup(&hash, state.now()) {
            Some(principal) => principal,
            // On a cluster, another node may have issued it.
            None if state.cluster.get().is_some() => session_from_store(state, hash).await?,
            None => return Err(invalid_token()),
        };
        state.limiter.check_user(&principal)?;
        Ok(principal)
    }
}
