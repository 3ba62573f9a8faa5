//! The backtest: a forecast against what a rush actually produced, read
//! from its event log (the same JSON lines as the history).
//!
//! Definitions (seconds are whole-second windows `[k, k+1)` after the
//! opening; events before the opening are left out):
//!
//! - an **attempt** is an `order` (accepted) or a `refusal` event; the
//!   **peak** is the second with the most attempts (the first, on ties);
//!   payments likewise with `pay` events;
//! - an item **sold out** when its accepted units (`q`) reached its stock,
//!   if the forecast knows the item's stock; otherwise when it got a
//!   refusal with `r = "sold_out"`. Its **sell-out time** is the time of its
//!   last accepted order after the opening;
//! - **relative errors** are `(predicted − actual) / actual`, with the
//!   forecast's p50; for sell-out times the divisor is at least 1 s, so an
//!   item gone in the first instant does not divide by nearly zero. The
//!   **share within ±30 %** is over the items that actually sold out; one
//!   the forecast did not see selling out counts as a miss.

use crate::event::{read_dir, Event, Kind, ReadStats};
use crate::forecast::{Band, Forecast};
use crate::Error;
use mall_core::Sku;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// The share of sell-out times that counts as close enough.
pub const SELLOUT_TOLERANCE: f64 = 0.3;
/// Seconds after the opening read; later events are left out (counted).
pub const SECONDS_MAX: u64 = 7 * 86_400;
/// Most distinct SKUs followed; events of further SKUs still count as
/// attempts, but their sell-outs are not judged (counted).
pub const SKUS_MAX: usize = 1_000_000;

/// A peak, forecast against actual.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeakCheck {
    /// Events in the busiest second (0 when there were none).
    pub actual: u64,
    /// That second, after the opening.
    pub actual_at_s: u64,
    pub predicted: Band,
    pub predicted_at_s: f64,
    /// `(predicted p50 − actual) / actual`; `None` without events.
    pub rel_err: Option<f64>,
    /// `predicted_at_s − actual_at_s`, seconds.
    pub at_err_s: f64,
    pub in_band: bool,
}

/// One item that sold out, actually or in the forecast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelloutCheck {
    pub sku: Sku,
    /// Stock as the forecast knows it.
    pub stock: Option<u32>,
    /// Units accepted after the opening.
    pub sold_units: u64,
    /// Seconds after opening, if it sold out.
    pub actual_s: Option<f64>,
    /// The forecast's p50, if it predicted a sell-out.
    pub predicted_s: Option<f64>,
    pub rel_err: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backtest {
    pub opens_at_ms: i64,
    pub read: ReadStats,
    /// Events dated before the opening, left out.
    pub before_opening: u64,
    /// Events dated more than `SECONDS_MAX` after it, left out.
    pub after_window: u64,
    /// Events of SKUs beyond the first `SKUS_MAX`, not judged for sell-outs.
    pub skus_untracked: u64,
    pub attempts: u64,
    pub accepted: u64,
    pub payments: u64,
    pub peak: PeakCheck,
    pub payments_peak: PeakCheck,
    /// Items sold out actually or in the forecast, by actual sell-out time
    /// (predicted-only items last).
    pub items: Vec<SelloutCheck>,
    pub sellouts_actual: usize,
    pub sellouts_predicted: usize,
    /// Sold out actually and in the forecast.
    pub sellouts_both: usize,
    /// Median of `|rel_err|` over the items sold out in both.
    pub sellout_abs_rel_err_median: Option<f64>,
    /// Median of the signed `rel_err` (> 0: the forecast is late).
    pub sellout_rel_err_median: Option<f64>,
    /// Share of the actual sell-outs predicted within ±30 %.
    pub sellout_within_30pct: Option<f64>,
}

/// Per item, what the log shows after the opening.
#[derive(Default)]
struct ItemLog {
    units: u64,
    last_order_ms: Option<i64>,
    refused_sold_out: bool,
}

/// Checks `forecast` against the event log in `events_dir` of a sale that
/// opened at `opens_at_ms`.
pub fn backtest(
    forecast: &Forecast,
    events_dir: &Path,
    opens_at_ms: i64,
) -> Result<Backtest, Error> {
    let mut attempts_by_s: HashMap<u64, u64> = HashMap::new();
    let mut pays_by_s: HashMap<u64, u64> = HashMap::new();
    let mut items: HashMap<Sku, ItemLog> = HashMap::new();
    let (mut before, mut after, mut untracked) = (0, 0, 0);
    let (mut attempts, mut accepted, mut payments) = (0, 0, 0);
    let read = read_dir(events_dir, |e: &Event| {
        if e.t_ms < opens_at_ms {
            before += 1;
            return;
        }
        let second = ((e.t_ms - opens_at_ms) / 1_000) as u64;
        if second >= SECONDS_MAX {
            after += 1;
            return;
        }
        match e.kind {
            Kind::Order => {
                attempts += 1;
                accepted += 1;
                *attempts_by_s.entry(second).or_default() += 1;
                if let Some(item) = tracked(&mut items, e.sku, &mut untracked) {
                    item.units += u64::from(e.quantity);
                    item.last_order_ms = Some(item.last_order_ms.map_or(e.t_ms, |t| t.max(e.t_ms)));
                }
            }
            Kind::Refusal => {
                attempts += 1;
                *attempts_by_s.entry(second).or_default() += 1;
                if e.reason.as_deref() == Some("sold_out") {
                    if let Some(item) = tracked(&mut items, e.sku, &mut untracked) {
                        item.refused_sold_out = true;
                    }
                }
            }
            Kind::Pay => {
                payments += 1;
                *pays_by_s.entry(second).or_default() += 1;
            }
            _ => {}
        }
    })?;
    let peak = check_peak(
        &attempts_by_s,
        &forecast.peak_attempts_per_s,
        forecast.peak_at_s.p50,
    );
    let payments_peak = check_peak(
        &pays_by_s,
        &forecast.peak_payments_per_s,
        forecast.peak_payments_at_s.p50,
    );
    let checks = check_sellouts(forecast, &items, opens_at_ms);
    let sellouts_actual = checks.iter().filter(|c| c.actual_s.is_some()).count();
    let sellouts_predicted = checks.iter().filter(|c| c.predicted_s.is_some()).count();
    let mut errors: Vec<f64> = checks.iter().filter_map(|c| c.rel_err).collect();
    let within = errors
        .iter()
        .filter(|e| e.abs() <= SELLOUT_TOLERANCE)
        .count();
    let signed = median(&mut errors.clone());
    let mut abs: Vec<f64> = errors.iter_mut().map(|e| e.abs()).collect();
    Ok(Backtest {
        opens_at_ms,
        read,
        before_opening: before,
        after_window: after,
        skus_untracked: untracked,
        attempts,
        accepted,
        payments,
        peak,
        payments_peak,
        sellouts_actual,
        sellouts_predicted,
        sellouts_both: errors.len(),
        sellout_abs_rel_err_median: median(&mut abs),
        sellout_rel_err_median: signed,
        sellout_within_30pct: (sellouts_actual > 0).then(|| within as f64 / sellouts_actual as f64),
        items: checks,
    })
}

/// The SKU's log, unless `SKUS_MAX` others are followed already.
fn tracked<'m>(
    items: &'m mut HashMap<Sku, ItemLog>,
    sku: Sku,
    untracked: &mut u64,
) -> Option<&'m mut ItemLog> {
    if items.len() >= SKUS_MAX && !items.contains_key(&sku) {
        *untracked += 1;
        return None;
    }
    Some(items.entry(sku).or_default())
}

fn check_peak(by_second: &HashMap<u64, u64>, predicted: &Band, predicted_at_s: f64) -> PeakCheck {
    let (at, actual) = by_second
        .iter()
        .map(|(&s, &n)| (s, n))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .unwrap_or((0, 0));
    PeakCheck {
        actual,
        actual_at_s: at,
        predicted: *predicted,
        predicted_at_s,
        rel_err: (actual > 0).then(|| (predicted.p50 - actual as f64) / actual as f64),
        at_err_s: predicted_at_s - at as f64,
        in_band: predicted.contains(actual as f64),
    }
}

fn check_sellouts(
    forecast: &Forecast,
    log: &HashMap<Sku, ItemLog>,
    opens_at_ms: i64,
) -> Vec<SelloutCheck> {
    let known: HashMap<Sku, &crate::forecast::ItemForecast> =
        forecast.items.iter().map(|i| (i.sku, i)).collect();
    let mut checks: Vec<SelloutCheck> = Vec::new();
    for (&sku, item) in log {
        let stock = known.get(&sku).map(|i| i.stock);
        let sold_out = match stock {
            Some(stock) => item.units >= u64::from(stock),
            None => item.refused_sold_out,
        };
        let actual_s = item
            .last_order_ms
            .filter(|_| sold_out)
            .map(|t| (t - opens_at_ms) as f64 / 1_000.0);
        let predicted_s = known
            .get(&sku)
            .filter(|i| i.sells_out)
            .and_then(|i| i.sellout_s.p50);
        if actual_s.is_none() && predicted_s.is_none() {
            continue;
        }
        checks.push(SelloutCheck {
            sku,
            stock,
            sold_units: item.units,
            actual_s,
            predicted_s,
            rel_err: relative(predicted_s, actual_s),
        });
    }
    // Predicted sell-outs that the log never mentions.
    for i in forecast
        .items
        .iter()
        .filter(|i| i.sells_out && !log.contains_key(&i.sku))
    {
        checks.push(SelloutCheck {
            sku: i.sku,
            stock: Some(i.stock),
            sold_units: 0,
            actual_s: None,
            predicted_s: i.sellout_s.p50,
            rel_err: None,
        });
    }
    checks.sort_by(|a, b| {
        let key = |c: &SelloutCheck| c.actual_s.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then(a.sku.cmp(&b.sku))
    });
    checks
}

fn relative(predicted: Option<f64>, actual: Option<f64>) -> Option<f64> {
    let (p, a) = (predicted?, actual?);
    Some((p - a) / a.max(1.0))
}

fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(crate::model::quantile_sorted(xs, 0.5))
}

/// The backtest as text for a terminal.
pub fn print(b: &Backtest) -> String {
    let mut out = String::new();
    let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:+.1}%", 100.0 * x));
    let _ = writeln!(
        out,
        "events: {} files, {} events, {} malformed lines skipped, {} before the opening",
        b.read.files, b.read.events, b.read.malformed, b.before_opening
    );
    let _ = writeln!(
        out,
        "attempts {}, accepted {}, payments {}",
        b.attempts, b.accepted, b.payments
    );
    for (name, p) in [("attempts/s", &b.peak), ("payments/s", &b.payments_peak)] {
        let _ = writeln!(
            out,
            "peak {name}: actual {} at {} s; forecast {:.2} (p10 {:.2} .. p90 {:.2}) at {:.0} s; error {} ({}), {:+.0} s",
            p.actual,
            p.actual_at_s,
            p.predicted.p50,
            p.predicted.p10,
            p.predicted.p90,
            p.predicted_at_s,
            pct(p.rel_err),
            if p.in_band { "in band" } else { "outside band" },
            p.at_err_s
        );
    }
    let _ = writeln!(
        out,
        "sell-outs: {} actual, {} forecast, {} both; |error| median {}, bias {}, within ±30%: {}",
        b.sellouts_actual,
        b.sellouts_predicted,
        b.sellouts_both,
        b.sellout_abs_rel_err_median
            .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
        pct(b.sellout_rel_err_median),
        b.sellout_within_30pct
            .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x)),
    );
    let time = |t: Option<f64>| t.map_or("-".into(), |t| format!("{t:.1}"));
    let _ = writeln!(
        out,
        "  {:>8} {:>7} {:>7} {:>10} {:>10} {:>8}",
        "sku", "stock", "sold", "actual s", "forecast s", "error"
    );
    for c in b.items.iter().take(20) {
        let _ = writeln!(
            out,
            "  {:>8} {:>7} {:>7} {:>10} {:>10} {:>8}",
            c.sku.0,
            c.stock.map_or("-".into(), |s| s.to_string()),
            c.sold_units,
            time(c.actual_s),
            time(c.predicted_s),
            pct(c.rel_err)
        );
    }
    out
}
