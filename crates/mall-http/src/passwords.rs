//! Password hashing and login throttling.
//!
//! Argon2id with the parameters OWASP recommends and the `argon2` crate
//! defaults to: 19 MiB of memory, 2 passes, 1 lane (~20–40 ms on one core
//! here). Hashing runs on `threads` dedicated threads (default 1, so order
//! placement always keeps the other cores), each reusing **one** 19 MiB
//! buffer for every hash: memory for passwords is bounded by
//! `threads × 19 MiB`, whatever the login rate. (Before, every hash
//! allocated its 19 MiB on a blocking-pool thread, and the allocator kept
//! those pages: a login flood grew the process by gigabytes.) At most
//! `queue_max` hashes wait for a thread; beyond that a login or
//! registration is answered 503 `busy` with `Retry-After` at once.
//!
//! [`LoginThrottle`] slows guessing one username from many addresses: after
//! a few failures each further attempt must wait twice as long as the last,
//! up to a minute, so the real user is never locked out for long.

use crate::error::ApiError;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use axum::http::StatusCode;
use rustc_hash::FxHashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
pub struct PasswordConfig {
    /// Threads that hash passwords (each holds one 19 MiB buffer).
    pub threads: usize,
    /// Hashes waiting for a thread, at most; beyond, 503 `busy`.
    pub queue_max: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            threads: 1,
            queue_max: 16,
        }
    }
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Option<String>>,
    },
    /// Verify against `phc`; with `None` (no such account) burn the same
    /// work and answer false, so timing does not tell which accounts exist.
    Verify {
        password: String,
        phc: Option<String>,
        reply: oneshot::Sender<bool>,
    },
}

/// The hashing threads and their queue. Cheap to share (`Arc` inside).
pub struct Hasher {
    jobs: SyncSender<Job>,
}

fn busy() -> ApiError {
    ApiError {
        retry_after_s: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many logins and registrations at once; retry in a second",
        )
    }
}

impl Hasher {
    pub fn start(config: &PasswordConfig) -> Hasher {
        let (jobs, rx) = sync_channel::<Job>(config.queue_max.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("mall-password-{i}"))
                .spawn(move || work(&rx))
                .expect("spawn a password thread");
        }
        Hasher { jobs }
    }

    fn submit(&self, job: Job) -> Result<(), ApiError> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(busy()),
            Err(TrySendError::Disconnected(_)) => Err(ApiError::internal(
                "password threads",
                "the hashing threads stopped",
            )),
        }
    }

    /// A PHC string of `password` (Argon2id, a fresh salt).
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        rx.await
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::internal("password hash", "hashing failed"))
    }

    /// Does `password` match `phc`? (`None`: no account; costs the same.)
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            phc,
            reply,
        })?;
        rx.await
            .map_err(|_| ApiError::internal("password verify", "the hashing thread went away"))
    }
}

/// One hashing thread: takes jobs until the queue's sender is gone.
fn work(rx: &Mutex<Receiver<Job>>) {
    let mut memory = Memory::default();
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(memory.hash(&password));
            }
            Job::Verify {
                password,
                phc,
                reply,
            } => {
                let ok = match phc.as_deref() {
                    Some(phc) => memory.verify(&password, phc),
                    None => {
                        let _ = memory.hash(&password);
                        false
                    }
                };
                let _ = reply.send(ok);
            }
        }
    }
}

/// Argon2's working memory, allocated once per thread and reused.
#[derive(Default)]
pub struct Memory {
    blocks: Vec<Block>,
}

/// The most memory a stored hash may ask for (64 MiB): a PHC string with
/// more is refused rather than obeyed.
const BLOCKS_MAX: usize = 64 * 1024;

impl Memory {
    fn blocks(&mut self, params: &Params) -> Option<&mut [Block]> {
        let n = params.block_count();
        if n > BLOCKS_MAX {
            return None;
        }
        if self.blocks.len() < n {
            self.blocks.resize(n, Block::default());
        }
        Some(&mut self.blocks[..n])
    }

    /// A PHC string of `password` with a fresh salt and the default parameters.
    pub fn hash(&mut self, password: &str) -> Option<String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).ok()?;
        let params = Params::DEFAULT;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        argon
            .hash_password_into_with_memory(
                password.as_bytes(),
                &salt,
                &mut out,
                self.blocks(&params)?,
            )
            .ok()?;
        let salt = SaltString::encode_b64(&salt).ok()?;
        let hash = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: (&params).try_into().ok()?,
            salt: Some(salt.as_salt()),
            hash: Some(argon2::password_hash::Output::new(&out).ok()?),
        };
        Some(hash.to_string())
    }

    /// Does `password` match the PHC string `phc`?
    pub fn verify(&mut self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Ok(params), Some(salt), Some(expected)) =
            (Params::try_from(&parsed), parsed.salt, parsed.hash)
        else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = parsed
            .version
            .and_then(|v| Version::try_from(v).ok())
            .unwrap_or_default();
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let salt = salt.to_vec();
        let mut out = vec![0u8; expected.len()];
        let argon = Argon2::new(algorithm, version, params.clone());
        let Some(blocks) = self.blocks(&params) else {
            return false;
        };
        if argon
            .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
            .is_err()
        {
            return false;
        }
        // Constant time: every byte is compared.
        let diff = out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0 && out.len() == expected.len()
    }
}

/// Per-username failed-login state.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    /// No attempt before this.
    next_allowed: Instant,
    last: Instant,
}

#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// Failures allowed before attempts are spaced out.
    pub free_failures: u32,
    /// The first wait; it doubles with each further failure.
    pub delay_first: Duration,
    /// The longest wait: the real user is never locked out for longer.
    pub delay_max: Duration,
    /// Usernames remembered, at most.
    pub usernames_max: usize,
    /// Failures are forgotten after this long without one.
    pub forget_after: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            delay_first: Duration::from_secs(1),
            delay_max: Duration::from_secs(60),
            usernames_max: 100_000,
            forget_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Slows password guessing per username, wherever the guesses come from.
pub struct LoginThrottle {
    config: ThrottleConfig,
    by_name: Mutex<FxHashMap<String, Failures>>,
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            by_name: Mutex::new(FxHashMap::default()),
        }
    }

    /// May `username` try now? Refused: 429 `login_throttled` with the
    /// seconds to wait, before any hashing is spent.
    pub fn check(&self, username: &str, now: Instant) -> Result<(), ApiError> {
        let map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(username) {
            Some(f) if f.next_allowed > now => {
                let wait = f.next_allowed - now;
                Err(ApiError {
                    retry_after_s: Some(wait.as_secs_f64().ceil().max(1.0) as u32),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "login_throttled",
                        format!(
                            "too many failed logins for this account; wait {} s",
                            wait.as_secs_f64().ceil().max(1.0)
                        ),
                    )
                })
            }
            _ => Ok(()),
        }
    }

    /// A failed attempt: past the free ones, the next must wait
    /// `delay_first × 2^(extra failures)`, at most `delay_max`.
    pub fn failed(&self, username: &str, now: Instant) {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.config.usernames_max && !map.contains_key(username) {
            let horizon = self.config.forget_after;
            map.retain(|_, f| now.duration_since(f.last) < horizon && f.next_allowed > now);
            if map.len() >= self.config.usernames_max {
                return; // full of live throttles: the per-address limit still holds
            }
        }
        let f = map.entry(username.to_string()).or_insert(Failures {
            count: 0,
            next_allowed: now,
            last: now,
        });
        if now.duration_since(f.last) >= self.config.forget_after {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count > self.config.free_failures {
            let doublings = (f.count - self.config.free_failures - 1).min(30);
            let delay = self
                .config
                .delay_first
                .saturating_mul(1u32 << doublings)
                .min(self.config.delay_max);
            f.next_allowed = now + delay;
        }
    }

    /// A successful login clears the username's failures.
    pub fn succeeded(&self, username: &str) {
        self.by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_with_reused_memory_and_match_the_crate() {
        let mut m = Memory::default();
        let phc = m.hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(m.verify("correct horse battery", &phc));
        assert!(!m.verify("correct horse battery!", &phc));
        assert!(!m.verify("x", "not a phc string"));
        // Hashes made by the crate's own API verify here, and ours there.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"hello world 42", &salt)
            .unwrap()
            .to_string();
        assert!(m.verify("hello world 42", &theirs));
        let ours = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &ours)
            .is_ok());
        // One buffer of 19 MiB, reused.
        assert_eq!(m.blocks.len(), Params::DEFAULT.block_count());
    }

    #[test]
    fn throttle_doubles_the_wait_and_caps_it() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(t.check("li", t0).is_ok());
            t.failed("li", t0);
        }
        assert!(t.check("li", t0).is_ok(), "five failures are free");
        t.failed("li", t0);
        let e = t.check("li", t0).unwrap_err();
        assert_eq!((e.code, e.retry_after_s), ("login_throttled", Some(1)));
        assert!(t.check("li", t0 + Duration::from_secs(1)).is_ok());
        t.failed("li", t0);
        assert_eq!(t.check("li", t0).unwrap_err().retry_after_s, Some(2));
        for _ in 0..20 {
            t.failed("li", t0);
        }
        assert_eq!(t.check("li", t0).unwrap_err().retry_after_s, Some(60));
        // Other usernames are not affected; success clears.
        assert!(t.check("han", t0).is_ok());
        t.succeeded("li");
        assert!(t.check("li", t0).is_ok());
    }
}
