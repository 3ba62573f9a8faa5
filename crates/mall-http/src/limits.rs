//! Request-rate limits: a token bucket per shopper (authenticated routes)
//! and per client address (login and registration), and optionally one for
//! all snap-ups together (a capacity plan's admission). Admins are not
//! limited.

use crate::auth::Principal;
use crate::error::ApiError;
use axum::http::StatusCode;
use rustc_hash::FxHashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RateConfig {
    /// Sustained requests per second per shopper.
    pub user_rate_per_s: f64,
    /// Burst allowance per shopper.
    pub user_burst: f64,
    /// Sustained login/registration attempts per second per client address.
    pub anonymous_rate_per_s: f64,
    pub anonymous_burst: f64,
    /// Buckets remembered, at most; full buckets are forgotten first.
    pub buckets_max: usize,
    /// Accounts one client address may register per hour (burst: the same).
    pub registrations_per_address_per_h: f64,
    /// Snap-ups admitted per second, all shoppers together (burst: one
    /// second's worth); `None`: only the shards' queues bound them.
    pub snapups_per_s_max: Option<f64>,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            user_rate_per_s: 50.0,
            user_burst: 100.0,
            anonymous_rate_per_s: 20.0,
            anonymous_burst: 200.0,
            buckets_max: 1_000_000,
            registrations_per_address_per_h: 10.0,
            snapups_per_s_max: None,
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

const STRIPES: usize = 64;

pub struct RateLimiter {
    config: RateConfig,
    /// Buckets by key, striped to keep lock contention low.
    stripes: Vec<Mutex<FxHashMap<u64, Bucket>>>,
}

impl RateLimiter {
    pub fn new(config: RateConfig) -> RateLimiter {
        RateLimiter {
            config,
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
        }
    }

    pub fn check_user(&self, p: &Principal) -> Result<(), ApiError> {
        if p.is_admin() {
            return Ok(());
        }
        self.take(
            p.user.0,
            self.config.user_rate_per_s,
            self.config.user_burst,
        )
    }

    /// Logins and registrations per client address (IPv6: per /64).
    pub fn check_address(&self, addr: std::net::IpAddr) -> Result<(), ApiError> {
        self.take(
            crate::client::address_key(addr) | (1 << 63),
            self.config.anonymous_rate_per_s,
            self.config.anonymous_burst,
        )
    }

    /// Registrations per client address per hour: many accounts from one
    /// address in a minute is one buyer dodging per-shopper limits.
    pub fn check_registration(&self, addr: std::net::IpAddr) -> Result<(), ApiError> {
        let per_h = self.config.registrations_per_address_per_h;
        self.take(
            crate::client::address_key(addr) | (1 << 63) | (1 << 61),
            per_h / 3600.0,
            per_h.max(1.0),
        )
        .map_err(|mut e| {
            e.code = "registration_limited";
            e.message =
                format!("at most {per_h} accounts may be registered from one address per hour");
            e.retry_after_s = Some((3600.0 / per_h.max(1e-3)).ceil().min(3600.0) as u32);
            e
        })
    }

    /// Admits a snap-up under the global admission limit, if any: beyond
    /// it, 503 `overloaded` with `Retry-After`, as a full shard queue.
    pub fn admit_snapup(&self, p: &Principal) -> Result<(), ApiError> {
        match self.config.snapups_per_s_max {
            Some(rate) if !p.is_admin() => self
                .take(u64::MAX, rate, rate.max(1.0))
                .map_err(|_| ApiError::overloaded()),
            _ => Ok(()),
        }
    }

    fn take(&self, key: u64, rate: f64, burst: f64) -> Result<(), ApiError> {
        let now = Instant::now();
        let stripe = &self.stripes[(key as usize).wrapping_mul(0x9E37_79B9) % STRIPES];
        let mut map = stripe.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.config.buckets_max / STRIPES {
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests; slow down",
                )
            })
        }
    }
}
