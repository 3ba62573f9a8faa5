//! The forecast against the generated truth, over several seeds.

mod common;

use common::{small, tiny, TempDir};
use mall_forecast::forecast::{forecast, load, print, save, Forecast, SaleParams};
use mall_forecast::history::{generate, Truth};
use mall_forecast::Error;
use std::collections::HashMap;

/// Fewer draws than the default keep the debug build fast; the bands'
/// percentiles move by a percent or so.
fn params() -> SaleParams {
    SaleParams {
        draws: 100,
        ..SaleParams::default()
    }
}

/// The accuracy figures of one forecast against its truth.
struct Accuracy {
    peak_rel_err: f64,
    peak_in_band: bool,
    peak_at_err_s: f64,
    payments_rel_err: f64,
    sold_out: usize,
    sellout_within_30pct: f64,
}

fn accuracy(f: &Forecast, truth: &Truth) -> Accuracy {
    let by_sku: HashMap<_, _> = f.items.iter().map(|i| (i.sku, i)).collect();
    let sold: Vec<_> = truth
        .items
        .iter()
        .filter(|i| i.sellout_s.is_some())
        .collect();
    let within = sold
        .iter()
        .filter(|t| {
            let actual = t.sellout_s.unwrap();
            by_sku[&t.sku]
                .sellout_s
                .p50
                .is_some_and(|p| ((p - actual) / actual).abs() <= 0.3)
        })
        .count();
    Accuracy {
        peak_rel_err: f.peak_attempts_per_s.p50 / truth.peak_attempts_per_s - 1.0,
        peak_in_band: f.peak_attempts_per_s.contains(truth.peak_attempts_per_s),
        peak_at_err_s: f.peak_at_s.p50 - truth.peak_at_s as f64,
        payments_rel_err: f.peak_payments_per_s.p50 / truth.peak_payments_per_s - 1.0,
        sold_out: sold.len(),
        sellout_within_30pct: within as f64 / sold.len() as f64,
    }
}

#[test]
fn peak_and_sellouts_are_forecast_within_tolerance_on_several_seeds() {
    let mut in_band = 0;
    for seed in 1..=4 {
        let dir = TempDir::new("accuracy");
        generate(&small(seed), dir.path()).unwrap();
        let f = forecast(dir.path(), params()).unwrap();
        let truth = Truth::load(dir.path()).unwrap();
        let a = accuracy(&f, &truth);
        eprintln!(
            "seed {seed}: peak {:.3}/s truth {:.3}/s ({:+.1}%, in p10-p90: {}), at {:+.0} s; \
             payments peak {:+.1}%; sell-outs within ±30%: {:.0}% of {}",
            f.peak_attempts_per_s.p50,
            truth.peak_attempts_per_s,
            100.0 * a.peak_rel_err,
            a.peak_in_band,
            a.peak_at_err_s,
            100.0 * a.payments_rel_err,
            100.0 * a.sellout_within_30pct,
            a.sold_out
        );
        assert!(
            a.peak_rel_err.abs() <= 0.2,
            "seed {seed}: peak off by {:.3}",
            a.peak_rel_err
        );
        assert!(
            a.peak_at_err_s.abs() <= 3.0,
            "seed {seed}: peak second off by {}",
            a.peak_at_err_s
        );
        assert!(
            a.payments_rel_err.abs() <= 0.25,
            "seed {seed}: payments off by {:.3}",
            a.payments_rel_err
        );
        assert!(
            a.sold_out >= 20,
            "seed {seed}: only {} items sell out",
            a.sold_out
        );
        assert!(
            a.sellout_within_30pct >= 0.6,
            "seed {seed}: {:.2} of sell-outs within ±30%",
            a.sellout_within_30pct
        );
        in_band += usize::from(a.peak_in_band);
        // The forecast's own consistency.
        assert!(
            (f.peak_multiple.p50 - f.peak_attempts_per_s.p50 / f.normal.orders_per_s).abs()
                < 1e-6 * f.peak_multiple.p50
        );
        assert!((60.0..160.0).contains(&f.peak_multiple.p50));
        assert_eq!(f.curve.len(), 600);
        assert!(f.items.windows(2).all(|w| {
            w[0].demand.p50 / f64::from(w[0].stock) >= w[1].demand.p50 / f64::from(w[1].stock)
        }));
    }
    assert!(
        in_band >= 2,
        "the p10-p90 band held the true peak in {in_band} of 4 seeds"
    );
}

#[test]
fn the_forecast_is_deterministic_and_round_trips_as_json() {
    let dir = TempDir::new("determinism");
    generate(&tiny(5), dir.path()).unwrap();
    let quick = SaleParams {
        draws: 20,
        ..SaleParams::default()
    };
    let a = forecast(dir.path(), quick.clone()).unwrap();
    let b = forecast(dir.path(), quick).unwrap();
    assert_eq!(a, b);
    let path = dir.path().join("forecast.json");
    save(&a, &path).unwrap();
    // serde_json parses floats to within an ulp, not always exactly.
    let back = load(&path).unwrap();
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
    assert!(close(
        back.peak_attempts_per_s.p50,
        a.peak_attempts_per_s.p50
    ));
    assert!(close(
        back.peak_payments_per_s.p90,
        a.peak_payments_per_s.p90
    ));
    assert_eq!(back.items.len(), a.items.len());
    for (x, y) in back.items.iter().zip(&a.items) {
        assert_eq!((x.sku, x.stock, x.sells_out), (y.sku, y.stock, y.sells_out));
        assert!(close(x.demand.p50, y.demand.p50));
    }
    assert_eq!(back.curve.len(), a.curve.len());
    let text = print(&a);
    for needle in [
        "peak attempts/s",
        "x normal day",
        "peak payments/s",
        "hottest items",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // The normal days as generated: 5 days, weekends busier for most segments.
    assert!((a.normal.days - 5.0).abs() < 1e-9);
    assert!(a.payment.measured);
    assert!(a.payment.online_share > 0.7 && a.payment.online_share < 0.95);
    assert!(a.payment.delay_p50_s > 20.0 && a.payment.delay_p50_s < 90.0);
}

#[test]
fn a_history_shorter_than_the_intent_window_is_refused() {
    let dir = TempDir::new("short");
    generate(&tiny(1), dir.path()).unwrap();
    let long_window = SaleParams {
        model: mall_forecast::model::SaleModel {
            intent_window_days: 5,
            ..Default::default()
        },
        ..params()
    };
    let err = forecast(dir.path(), long_window).unwrap_err();
    assert!(matches!(err, Error::HistoryTooShort { .. }), "{err}");
    assert!(err.to_string().contains("5-day intent window"), "{err}");
    let empty = TempDir::new("empty");
    std::fs::copy(
        dir.path().join("catalog.json"),
        empty.path().join("catalog.json"),
    )
    .unwrap();
    assert!(matches!(
        forecast(empty.path(), params()).unwrap_err(),
        Error::NoEventFiles { .. }
    ));
}

#[test]
fn stated_assumptions_drive_the_forecast() {
    // Assuming half again as many shoppers signal means a third less demand.
    let dir = TempDir::new("assumptions");
    generate(&tiny(2), dir.path()).unwrap();
    let base = SaleParams {
        draws: 20,
        ..SaleParams::default()
    };
    let mut more = base.clone();
    more.model.signal_share = more.model.signal_share.scaled(1.5);
    let a = forecast(dir.path(), base).unwrap();
    let b = forecast(dir.path(), more).unwrap();
    let ratio = b.attempts_total.p50 / a.attempts_total.p50;
    assert!((ratio - 2.0 / 3.0).abs() < 0.03, "{ratio}");
    let ratio = b.peak_attempts_per_s.p50 / a.peak_attempts_per_s.p50;
    assert!((ratio - 2.0 / 3.0).abs() < 0.03, "{ratio}");
}

/// A world whose shoppers' habits (signal shares, arrival profile) stray
/// far from the stated ones (log-sd 0.4), with last year's night in its
/// history: the forecast fits them from that night and finds this year's
/// peak within ±20%, while the stated assumptions miss it by more on
/// average. The fitted shares are last year's signals over last year's
/// shoppers, close to the world's true ones.
#[test]
fn last_years_night_fits_the_shares_and_profile() {
    let (mut fitted_err, mut stated_err) = (0.0, 0.0);
    for seed in 1..=3 {
        let dir = TempDir::new("past-night");
        let mut world = small(seed);
        world.past_night = true;
        world.model.share_sigma = 0.4;
        world.model.profile_sigma = 0.4;
        generate(&world, dir.path()).unwrap();
        let truth = Truth::load(dir.path()).unwrap();
        let f = forecast(dir.path(), params()).unwrap();
        let fit = f
            .past_fit
            .clone()
            .expect("the history holds last year's night");
        assert_eq!(f.params.model.signal_share, fit.signal_share);
        assert_eq!(f.params.model.profile, fit.profile);
        let share_err = fit.signal_share.cart / truth.signal_share.cart - 1.0;
        assert!(
            share_err.abs() < 0.15,
            "seed {seed}: cart share off by {share_err:.3}"
        );
        // The same history without last year: the stated assumptions.
        let past = dir.path().join(mall_forecast::history::PAST_DIR);
        std::fs::rename(&past, dir.path().join("last-year-hidden")).unwrap();
        let stated = forecast(dir.path(), params()).unwrap();
        assert!(stated.past_fit.is_none());
        let a = accuracy(&f, &truth);
        let b = accuracy(&stated, &truth);
        eprintln!(
            "seed {seed}: truth {:.3}/s; fitted {:.3}/s ({:+.1}%), stated {:.3}/s ({:+.1}%)",
            truth.peak_attempts_per_s,
            f.peak_attempts_per_s.p50,
            100.0 * a.peak_rel_err,
            stated.peak_attempts_per_s.p50,
            100.0 * b.peak_rel_err
        );
        assert!(
            a.peak_rel_err.abs() <= 0.2,
            "seed {seed}: the fitted peak is off by {:.3}",
            a.peak_rel_err
        );
        fitted_err += a.peak_rel_err.abs();
        stated_err += b.peak_rel_err.abs();
    }
    assert!(
        fitted_err < stated_err,
        "fitted peaks off by {fitted_err:.3} in all, stated by {stated_err:.3}"
    );
}
