//! The money simulator on many seeds. A failing seed prints the line that
//! replays it (`MALL_SEED=<n>`); `MALL_SEEDS=<count>` runs more.

use mall_core::seeds::for_each_seed;
use mall_payments::sim::{self, SimConfig, SimReport, COVERAGE};

fn run_seeds(first: u64, count: u64, what: &str) -> SimReport {
    let config = SimConfig::default();
    let started = std::time::Instant::now();
    let reports = for_each_seed(what, first, count, |seed| sim::run(seed, &config));
    let mut total = SimReport::default();
    for r in &reports {
        total.add(r);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "money simulator: {} seeds, {} steps in {secs:.1} s ({:.1} seeds/s, {:.0} steps/s)",
        reports.len(),
        total.steps,
        reports.len() as f64 / secs,
        total.steps as f64 / secs
    );
    for (k, v) in &total.coverage {
        println!("  {k:<26} {v}");
    }
    total
}

/// Every money invariant holds on 500 seeds, and together they reach every
/// kind of fault and outcome (so the run cannot pass vacuously). With
/// `MALL_SEED` (one seed, a replay) only the invariants are checked.
#[test]
fn money_invariants_hold_under_faults_and_crashes() {
    let total = run_seeds(1, 500, "-p mall-payments --test money money_invariants");
    if std::env::var(mall_core::seeds::SEED_VAR).is_err() {
        let missing: Vec<&str> = COVERAGE
            .iter()
            .copied()
            .filter(|k| total.coverage.get(k).copied().unwrap_or(0) == 0)
            .collect();
        assert!(missing.is_empty(), "never reached: {missing:?}");
    }
}

/// The long run before a release: `cargo test --release -p mall-payments
/// --test money -- --ignored` (10,000 seeds; `MALL_SEEDS` for more).
#[test]
#[ignore]
fn money_invariants_long_run() {
    run_seeds(
        1_000_000,
        10_000,
        "--release -p mall-payments --test money -- --ignored",
    );
}
