//! The accuracy figures over many seeds, for the record (slow: ignored by
//! default). Run in release:
//!
//! ```sh
//! cargo test --release -p mall-forecast --test sweep -- --ignored --nocapture
//! ```
//!
//! `DRAWS=n` sets the Monte Carlo draws of the small world's forecasts.

mod common;

use common::{small, TempDir};
use mall_forecast::forecast::{forecast, SaleParams};
use mall_forecast::history::{generate, GenerateParams, Truth};
use std::collections::HashMap;

struct Figures {
    peak_rel_err: f64,
    peak_in_band: bool,
    peak_at_err_s: f64,
    payments_rel_err: f64,
    payments_in_band: bool,
    sold_out: usize,
    within_30pct: f64,
    sellout_in_band: f64,
}

fn figures(params: &GenerateParams, sale: SaleParams) -> Figures {
    let dir = TempDir::new("sweep");
    generate(params, dir.path()).unwrap();
    let f = forecast(dir.path(), sale).unwrap();
    let truth = Truth::load(dir.path()).unwrap();
    let by_sku: HashMap<_, _> = f.items.iter().map(|i| (i.sku, i)).collect();
    let sold: Vec<_> = truth
        .items
        .iter()
        .filter(|i| i.sellout_s.is_some())
        .collect();
    let (mut within, mut in_band) = (0, 0);
    for t in &sold {
        let actual = t.sellout_s.unwrap();
        let band = by_sku[&t.sku].sellout_s;
        within += usize::from(
            band.p50
                .is_some_and(|p| ((p - actual) / actual).abs() <= 0.3),
        );
        let lo = band.p10.unwrap_or(f64::INFINITY);
        let hi = band.p90.unwrap_or(f64::INFINITY);
        in_band += usize::from(lo <= actual && actual <= hi);
    }
    Figures {
        peak_rel_err: f.peak_attempts_per_s.p50 / truth.peak_attempts_per_s - 1.0,
        peak_in_band: f.peak_attempts_per_s.contains(truth.peak_attempts_per_s),
        peak_at_err_s: f.peak_at_s.p50 - truth.peak_at_s as f64,
        payments_rel_err: f.peak_payments_per_s.p50 / truth.peak_payments_per_s - 1.0,
        payments_in_band: f.peak_payments_per_s.contains(truth.peak_payments_per_s),
        sold_out: sold.len(),
        within_30pct: within as f64 / sold.len().max(1) as f64,
        sellout_in_band: in_band as f64 / sold.len().max(1) as f64,
    }
}

/// Prints the figures over `seeds` seeds and returns (share of seeds with
/// the peak within ±20 %, share with >= 60 % of sell-outs within ±30 %).
fn sweep(
    name: &str,
    params: impl Fn(u64) -> GenerateParams,
    seeds: u64,
    sale: SaleParams,
) -> (f64, f64) {
    let all: Vec<Figures> = (1..=seeds)
        .map(|s| figures(&params(s), sale.clone()))
        .collect();
    let n = all.len() as f64;
    let count = |f: &dyn Fn(&Figures) -> bool| all.iter().filter(|x| f(x)).count();
    let rms =
        |f: &dyn Fn(&Figures) -> f64| (all.iter().map(|x| f(x).powi(2)).sum::<f64>() / n).sqrt();
    let mean = |f: &dyn Fn(&Figures) -> f64| all.iter().map(f).sum::<f64>() / n;
    let mut within: Vec<f64> = all.iter().map(|x| x.within_30pct).collect();
    within.sort_by(f64::total_cmp);
    eprintln!("{name}, {seeds} seeds:");
    eprintln!(
        "  peak attempts/s: within ±20% in {}/{seeds}; error mean {:+.1}%, rms {:.1}%, worst {:.1}%; p10-p90 held the truth in {}/{seeds}",
        count(&|x| x.peak_rel_err.abs() <= 0.2),
        100.0 * mean(&|x| x.peak_rel_err),
        100.0 * rms(&|x| x.peak_rel_err),
        100.0 * all.iter().map(|x| x.peak_rel_err.abs()).fold(0.0, f64::max),
        count(&|x| x.peak_in_band),
    );
    eprintln!(
        "  peak second: worst error {:.0} s; payments peak: rms {:.1}%, in band {}/{seeds}",
        all.iter()
            .map(|x| x.peak_at_err_s.abs())
            .fold(0.0, f64::max),
        100.0 * rms(&|x| x.payments_rel_err),
        count(&|x| x.payments_in_band),
    );
    eprintln!(
        "  sell-outs ({:.0} items a seed): within ±30%: min {:.0}%, median {:.0}%, >= 60% in {}/{seeds}; truth inside p10-p90: {:.0}% on average",
        mean(&|x| x.sold_out as f64),
        100.0 * within[0],
        100.0 * within[within.len() / 2],
        count(&|x| x.within_30pct >= 0.6),
        100.0 * mean(&|x| x.sellout_in_band),
    );
    (
        count(&|x| x.peak_rel_err.abs() <= 0.2) as f64 / n,
        count(&|x| x.within_30pct >= 0.6) as f64 / n,
    )
}

#[test]
#[ignore]
fn accuracy_over_seeds() {
    let quick = SaleParams {
        draws: std::env::var("DRAWS").map_or(100, |d| d.parse().unwrap()),
        ..SaleParams::default()
    };
    let (peaks, sellouts) = sweep(
        "the tests' world (10 days, 200 items, 20,000 shoppers)",
        small,
        30,
        quick,
    );
    // The stated uncertainty makes about one seed in fifty miss by more.
    assert!(peaks >= 0.9 && sellouts >= 0.9, "{peaks} {sellouts}");
    let (peaks, _) = sweep(
        "the default world (14 days, 2,000 items, 50,000 shoppers)",
        |seed| GenerateParams {
            seed,
            ..GenerateParams::default()
        },
        8,
        SaleParams::default(),
    );
    // Per item, the default world's many sell-outs of a handful of units
    // are only as good as their dozen signals: reported, not asserted.
    assert!(peaks >= 0.9, "{peaks}");
}
