//! Seeds of the house's deterministic simulations and property tests: one
//! variable and one replay habit for all of them.
//!
//! - `MALL_SEED=<n>` runs only seed `n` (the replay of a failure);
//! - `MALL_SEEDS=<count>` runs that many seeds instead of the test's own
//!   number (a long run before a release, a short one while debugging).
//!
//! A failing seed is reported as `replay: MALL_SEED=<n> cargo test ...`.

/// The variable that replays one seed.
pub const SEED_VAR: &str = "MALL_SEED";
/// The variable that sets how many seeds run.
pub const SEEDS_VAR: &str = "MALL_SEEDS";

fn var(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {raw:?}")),
    )
}

/// The seeds to run: `MALL_SEED` alone if set, else `first..first + count`
/// where `count` is `MALL_SEEDS` or `default_count`.
pub fn seeds(first: u64, default_count: u64) -> Vec<u64> {
    if let Some(seed) = var(SEED_VAR) {
        return vec![seed];
    }
    let count = var(SEEDS_VAR).unwrap_or(default_count);
    (first..first.saturating_add(count)).collect()
}

/// Runs `check` on every seed of [`seeds`]; the first seed that panics
/// fails the test with the line that replays it (`what` names the test,
/// e.g. `-p mall-router --test router invariants`).
pub fn for_each_seed<T>(
    what: &str,
    first: u64,
    default_count: u64,
    check: impl Fn(u64) -> T + std::panic::RefUnwindSafe,
) -> Vec<T> {
    seeds(first, default_count)
        .into_iter()
        .map(|seed| match std::panic::catch_unwind(|| check(seed)) {
            Ok(t) => t,
            Err(_) => panic!("seed {seed} failed; replay: {SEED_VAR}={seed} cargo test {what}"),
        })
        .collect()
}
