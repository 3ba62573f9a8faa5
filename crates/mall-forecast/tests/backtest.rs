//! The backtest on a tiny hand-made rush whose figures are known exactly.

mod common;

use common::{tiny, TempDir};
use mall_core::Sku;
use mall_forecast::backtest::{backtest, print};
use mall_forecast::event::ReadStats;
use mall_forecast::forecast::{
    forecast, Band, Forecast, ItemForecast, NormalDays, PaymentModel, SaleParams, TimeBand,
};
use mall_forecast::history::generate;

const OPENS: i64 = 1_762_790_400_000;

fn band(p10: f64, p50: f64, p90: f64) -> Band {
    Band { p10, p50, p90 }
}

fn item(sku: u64, stock: u32, sellout_s: Option<f64>) -> ItemForecast {
    ItemForecast {
        sku: Sku(sku),
        stock,
        favorites: 0,
        favorites_background: 0.0,
        carts: 0,
        carts_background: 0.0,
        deposits: 0,
        demand: band(1.0, 2.0, 3.0),
        sellout_probability: if sellout_s.is_some() { 0.9 } else { 0.1 },
        sells_out: sellout_s.is_some(),
        sellout_s: TimeBand {
            p10: sellout_s,
            p50: sellout_s,
            p90: sellout_s,
        },
    }
}

fn fixture() -> Forecast {
    Forecast {
        opens_at_ms: OPENS,
        params: SaleParams::default(),
        read: ReadStats::default(),
        normal: NormalDays {
            days: 14.0,
            orders: 100,
            orders_per_s: 0.05,
            orders_per_s_by_hour: vec![0.05; 24],
            weekend_factor: 1.0,
            growth_per_day: 0.0,
        },
        payment: PaymentModel {
            online_share: 0.8,
            paid_share: 0.9,
            pay_share: 0.72,
            delay_p50_s: 45.0,
            delay_p90_s: 150.0,
            measured: true,
        },
        attempts_total: band(10.0, 20.0, 30.0),
        peak_attempts_per_s: band(4.0, 6.0, 8.0),
        peak_at_s: band(1.0, 2.0, 3.0),
        peak_multiple: band(80.0, 120.0, 160.0),
        peak_accepted_per_s: band(3.0, 4.0, 5.0),
        peak_payments_per_s: band(1.0, 1.5, 3.0),
        peak_payments_at_s: band(3.0, 4.0, 5.0),
        sellouts: 5,
        items: vec![
            item(1, 3, Some(1.2)),
            item(5, 1, Some(0.5)),
            item(2, 2, Some(20.0)),
            item(3, 5, Some(4.0)),
            item(4, 1, Some(30.0)),
            item(6, 9, None),
        ],
        curve: Vec::new(),
        past_fit: None,
    }
}

/// One JSON line of the event log.
fn line(dt_ms: i64, kind: &str, sku: u64, extra: &str) -> String {
    format!(
        "{{\"t\":{},\"k\":\"{kind}\",\"u\":7,\"s\":{sku}{extra}}}\n",
        OPENS + dt_ms
    )
}

/// The rush, second by second (attempts = orders + refusals):
/// s0: 2 (sku 1, sku 5); s1: 5 (the peak); s2: 3; s3: 5 (a tie, later);
/// s10: 1. Payments: s5: 2 (the peak), s7: 1, s12: 1.
fn rush(dir: &TempDir) {
    let sold_out = ",\"r\":\"sold_out\"";
    let mut a = String::new();
    // Written out of time order on purpose.
    a += &line(1_500, "order", 1, ",\"o\":3");
    a += &line(200, "order", 1, ",\"o\":1");
    a += &line(400, "order", 5, ",\"o\":2");
    a += &line(1_100, "order", 1, ",\"o\":4");
    a += &line(1_200, "order", 3, ",\"o\":5");
    a += &line(1_600, "refusal", 1, sold_out);
    a += &line(1_700, "refusal", 1, sold_out);
    a += &line(2_100, "refusal", 1, sold_out);
    a += &line(-5_000, "order", 3, ",\"o\":99");
    a += &line(-4_000, "pay", 3, ",\"o\":99");
    a += "this line is not JSON\n";
    a += &line(2_000, "wishlist", 1, "");
    let mut b = String::new();
    b += &line(2_500, "order", 9, ",\"o\":6");
    b += &line(2_600, "refusal", 9, sold_out);
    b += &line(3_000, "order", 3, ",\"o\":7");
    b += &line(3_100, "order", 3, ",\"o\":8");
    b += &line(3_200, "order", 3, ",\"o\":9");
    b += &line(3_300, "refusal", 3, ",\"r\":\"limit_reached\"");
    b += &line(3_900, "refusal", 1, sold_out);
    b += &line(
        10_000,
        "order",
        2,
        ",\"o\":10,\"q\":2,\"c\":\"online\",\"l\":1500",
    );
    b += &line(5_000, "pay", 1, ",\"o\":1,\"c\":\"alipay\"");
    b += &line(5_200, "pay", 5, ",\"o\":2,\"c\":\"wechat\"");
    b += &line(7_000, "pay", 1, ",\"o\":4");
    b += &line(12_000, "pay", 2, ",\"o\":10");
    b += &line(4_000, "view", 1, "");
    dir.write("rush-a.jsonl", &a);
    dir.write("rush-b.jsonl", &b);
    dir.write("notes.txt", "not an event file\n");
}

#[test]
fn the_backtest_measures_a_known_rush_exactly() {
    let dir = TempDir::new("rush");
    rush(&dir);
    let b = backtest(&fixture(), dir.path(), OPENS).unwrap();
    assert_eq!(b.read.files, 2);
    assert_eq!(b.read.malformed, 1);
    assert_eq!(b.read.unknown_kinds, 1);
    assert_eq!(b.read.events, 23);
    assert_eq!(b.before_opening, 2);
    assert_eq!((b.attempts, b.accepted, b.payments), (16, 10, 4));

    // The peak: 5 attempts in second 1 (second 3 ties, later); forecast 6 at 2.
    assert_eq!((b.peak.actual, b.peak.actual_at_s), (5, 1));
    assert_eq!(b.peak.rel_err, Some(0.2));
    assert_eq!(b.peak.at_err_s, 1.0);
    assert!(b.peak.in_band);
    // Payments: 2 in second 5; forecast 1.5 at 4.
    assert_eq!(
        (b.payments_peak.actual, b.payments_peak.actual_at_s),
        (2, 5)
    );
    assert_eq!(b.payments_peak.rel_err, Some(-0.25));
    assert_eq!(b.payments_peak.at_err_s, -1.0);
    assert!(b.payments_peak.in_band);

    // Sell-outs: by stock for known items, by refusal for sku 9.
    type Row = (u64, Option<f64>, Option<f64>, Option<f64>);
    let rows: Vec<Row> = b
        .items
        .iter()
        .map(|c| (c.sku.0, c.actual_s, c.predicted_s, c.rel_err))
        .collect();
    let close = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() < 1e-12);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        [5, 1, 9, 2, 3, 4]
    );
    // sku 5: gone at 0.4 s, forecast 0.5 s: the 1 s floor makes it +10 %.
    assert_eq!(rows[0].1, Some(0.4));
    assert!(close(rows[0].3, 0.1));
    // sku 1: the third unit at 1.5 s, forecast 1.2 s: -20 %.
    assert_eq!(rows[1].1, Some(1.5));
    assert!(close(rows[1].3, -0.2));
    // sku 9: not in the forecast; sold out by its refusal at 2.5 s.
    assert_eq!(
        (rows[2].1, rows[2].2, b.items[2].stock),
        (Some(2.5), None, None)
    );
    // sku 2: two units in one order at 10 s, forecast 20 s: +100 %.
    assert_eq!(rows[3].1, Some(10.0));
    assert!(close(rows[3].3, 1.0));
    // sku 3 sold 4 of 5 and sku 4 nothing: forecast only.
    assert_eq!(
        (rows[4].1, rows[4].2, b.items[4].sold_units),
        (None, Some(4.0), 4)
    );
    assert_eq!(
        (rows[5].1, rows[5].2, b.items[5].sold_units),
        (None, Some(30.0), 0)
    );

    assert_eq!(
        (b.sellouts_actual, b.sellouts_predicted, b.sellouts_both),
        (4, 5, 3)
    );
    assert!(close(b.sellout_abs_rel_err_median, 0.2));
    assert!(close(b.sellout_rel_err_median, 0.1));
    assert_eq!(b.sellout_within_30pct, Some(0.5));

    let text = print(&b);
    for needle in [
        "peak attempts/s: actual 5 at 1 s",
        "+20.0%",
        "within ±30%: 50%",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

#[test]
fn an_empty_rush_has_no_errors_to_report() {
    let dir = TempDir::new("empty-rush");
    dir.write("rush.jsonl", &line(-10, "order", 1, ""));
    let b = backtest(&fixture(), dir.path(), OPENS).unwrap();
    assert_eq!((b.attempts, b.peak.actual, b.peak.rel_err), (0, 0, None));
    assert_eq!(b.sellouts_actual, 0);
    assert_eq!(b.sellout_within_30pct, None);
    assert_eq!(b.sellouts_predicted, 5);
    assert!(print(&b).contains("sell-outs: 0 actual"));
}

#[test]
fn a_forecast_can_be_backtested_against_a_log_of_its_own_format() {
    // End to end: a generated history's own days as the "rush" log, with
    // the opening moved to the history's last day, runs through.
    let dir = TempDir::new("own");
    generate(&tiny(4), dir.path()).unwrap();
    let f = forecast(
        dir.path(),
        SaleParams {
            draws: 20,
            ..SaleParams::default()
        },
    )
    .unwrap();
    let b = backtest(&f, dir.path(), f.opens_at_ms - 86_400_000).unwrap();
    assert!(b.attempts > 0 && b.payments > 0 && b.before_opening > 0);
    assert_eq!(b.read.malformed, 0);
    assert!(b.peak.rel_err.is_some());
}
