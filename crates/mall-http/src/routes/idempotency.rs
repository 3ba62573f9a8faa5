//! Idempotency for state-changing requests other than snap-ups (those are
//! idempotent inside the inventory engine). The first response to a key is
//! stored; a retry with the same key and request gets it back unchanged; the
//! same key with another request is refused with 422.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mall_core::UserId;
use mall_engine::StoredResponse;
use std::future::Future;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";
pub const KEY_LEN_MAX: usize = 64;

/// The `Idempotency-Key` header, if sent: 1 to 64 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().ok().filter(|k| {
        !k.is_empty() && k.len() <= KEY_LEN_MAX && k.bytes().all(|b| b.is_ascii_graphic())
    });
    match key {
        Some(k) => Ok(Some(k.to_string())),
        None => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {KEY_LEN_MAX} visible ASCII characters"),
        )),
    }
}

pub fn replayed_header(response: &mut Response) {
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
}

/// Runs `action` at most once per `(owner, key)`. Responses with 5xx or 429
/// are not stored: those are worth retrying for real. `redact` removes
/// secrets from the body before it is stored (a replay shows the rest).
/// A 202 (an outcome still open) is stored too and replayed as it was.
pub async fn run<F, Fut>(
    state: &AppState,
    owner: UserId,
    key: Option<String>,
    fingerprint: u64,
    redact: fn(&mut serde_json::Value),
    action: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ApiResult<(StatusCode, serde_json::Value)>>,
{
    run_with(
        state,
        owner,
        key,
        fingerprint,
        redact,
        Pending::Replay,
        action,
    )
    .await
}

/// What a retry meets when the first answer was 202 (still open).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// The stored 202 is the answer (e.g. a top-up: never start another).
    Replay,
    /// The action runs again to see how it ended (a payment of an order:
    /// the order says), and its final answer replaces the 202.
    Resume,
}

/// [`run`], choosing what a stored 202 means.
pub async fn run_with<F, Fut>(
    state: &AppState,
    owner: UserId,
    key: Option<String>,
    fingerprint: u64,
    redact: fn(&mut serde_json::Value),
    pending: Pending,
    action: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ApiResult<(StatusCode, serde_json::Value)>>,
{
    let Some(key) = key else {
        return into_response(action().await);
    };
    if let Some(replay) = replay(state, owner, &key, fingerprint, pending).await {
        return replay;
    }
    let Some(_slot) = InFlight::take(state, owner, &key) else {
        return ApiError::conflict(
            "request_in_progress",
            "a request with this Idempotency-Key is still running",
        )
        .into_response();
    };
    // A request with the same key may have finished between the first look
    // and taking the slot.
    if let Some(replay) = replay(state, owner, &key, fingerprint, pending).await {
        return replay;
    }
    let outcome = action().await;
    let to_store = match &outcome {
        Ok((status, body)) => Some((*status, body.clone())),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::TOO_MANY_REQUESTS => {
            let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
            Some((e.status, body))
        }
        Err(_) => None,
    };
    if let Some((status, mut body)) = to_store {
        redact(&mut body);
        let stored = StoredResponse {
            fingerprint,
            status: status.as_u16(),
            body: body.to_string(),
        };
        let (accounts, now) = (state.accounts.clone(), state.now());
        if let Err(e) = super::blocking(state, move || {
            accounts.store_response(owner, &key, &stored, now)
        })
        .await
        {
            tracing::warn!(error = %e, "storing an idempotent response failed");
        }
    }
    into_response(outcome)
}

/// The stored first response to `key`, if any (whatever its request).
pub async fn stored(
    state: &AppState,
    owner: UserId,
    key: &str,
) -> ApiResult<Option<StoredResponse>> {
    let (accounts, key) = (state.accounts.clone(), key.to_string());
    super::blocking(state, move || accounts.stored_response(owner, &key))
        .await
        .map_err(|e| ApiError::store("idempotency lookup", e))
}

/// Stores nothing secret: the default for [`run`].
pub fn keep(_: &mut serde_json::Value) {}

/// The stored first response to `key`, as a replay; a 422 if the key was
/// used for another request.
async fn replay(
    state: &AppState,
    owner: UserId,
    key: &str,
    fingerprint: u64,
    pending: Pending,
) -> Option<Response> {
    let lookup = {
        let (accounts, key) = (state.accounts.clone(), key.to_string());
        super::blocking(state, move || accounts.stored_response(owner, &key)).await
    };
    match lookup {
        Err(e) => Some(ApiError::store("idempotency lookup", e).into_response()),
        Ok(Some(stored)) if stored.fingerprint != fingerprint => {
            Some(ApiError::from_refusal(&mall_core::Refusal::IdempotencyKeyReused).into_response())
        }
        Ok(Some(stored)) if stored.status == 202 && pending == Pending::Resume => None,
        Ok(Some(stored)) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let body: serde_json::Value =
                serde_json::from_str(&stored.body).unwrap_or(serde_json::Value::Null);
            let mut response = (status, axum::Json(body)).into_response();
            replayed_header(&mut response);
            Some(response)
        }
        Ok(None) => None,
    }
}

/// A key being executed now. Released on drop, so a request abandoned
/// mid-way (client gone, task cancelled) never leaves its key stuck.
struct InFlight {
    state: AppState,
    slot: (UserId, String),
}

impl InFlight {
    fn take(state: &AppState, owner: UserId, key: &str) -> Option<InFlight> {
        let slot = (owner, key.to_string());
        let fresh = state
            .in_flight_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot.clone());
        fresh.then(|| InFlight {
            state: state.clone(),
            slot,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state
            .in_flight_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.slot);
    }
}

fn into_response(outcome: ApiResult<(StatusCode, serde_json::Value)>) -> Response {
    match outcome {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}
