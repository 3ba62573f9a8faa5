//! The forecast of the night from the history alone (never `truth.json`).
//!
//! # Method
//!
//! 1. **Normal days.** The average order rate `R` is the history's orders
//!    over its seconds (from the first event's local midnight to the
//!    opening); the daily profile (orders per hour of day), the weekend
//!    factor and the daily growth are reported beside it. `R` is the
//!    yardstick of the peak's multiple.
//! 2. **Intent per item.** In the intent window (the last
//!    `intent_window_days` before the opening) an item's favourites and carts
//!    are its normal background plus the signals of its night's shoppers.
//!    The background is the item's count before the window times the
//!    window's expected share: each signal's daily totals before the window
//!    are fitted log-linearly (the orders' daily growth, the signal's own
//!    weekend effect, since segments that favourite and segments that buy
//!    keep different weekends) and carried over the window's days; without
//!    enough days to fit, orders in the window over orders before it. What
//!    exceeds the background, over the assumed share of shoppers who leave
//!    that signal, estimates the item's wanters `W`. Deposits have no
//!    background (all count). The three estimates are combined with
//!    inverse-variance weights (binomial for the signals, Poisson for the
//!    background and its estimate), the weights taken at the item's
//!    popularity (views before the window) rather than at its own noisy
//!    signals, which would bias the combination upward.
//! 3. **Intent to the night** is the [`SaleModel`]: each wanter makes
//!    `attempts_per_wanter` attempts with the arrival
//!    [`Profile`](crate::model::Profile). When the history holds last
//!    year's night (`past/`), the signal shares and the profile are fitted
//!    from it ([`crate::past`]); otherwise they are the stated ones. Either
//!    way they are uncertain with the stated log-sds.
//! 4. **Uncertainty** by Monte Carlo: each draw takes one common factor on
//!    the signal shares, one perturbed profile, and per item `W` from a
//!    normal with the estimate's variance; the night is then computed by the
//!    fluid model ([`crate::model::FluidSale`]) and payments by the
//!    history's paying share and order-to-payment delays. Bands are the
//!    draws' 10th, 50th and 90th percentiles.
//!
//! Payments: the paying share is (online orders / orders) × (online orders
//! paid / online orders) and the delay distribution is the one between an
//! order and its payment, both measured on the normal days and assumed
//! unchanged on the night.

use crate::calendar::{china_day, china_hour, DAY_MS};
use crate::catalog::Catalog;
use crate::event::{read_dir, Kind, ReadStats};
use crate::model::{
    kernel_from_delays, payments, peak, quantile_sorted, FluidSale, Grid, ItemDemand, Kernel,
    SaleModel, HORIZON_S,
};
use crate::rng::Rng;
use crate::Error;
use mall_core::Sku;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Most Monte Carlo draws.
pub const DRAWS_MAX: u32 = 10_000;
/// Most items × draws kept (two `f64` each: demand and sell-out time).
pub const DRAW_CELLS_MAX: usize = 10_000_000;
/// Longest forecast curve, minutes (the per-second series' horizon).
pub const CURVE_MINUTES_MAX: u32 = (HORIZON_S / 60) as u32;
/// Paying share assumed when the history has no payments to measure.
pub const PAY_SHARE_DEFAULT: f64 = 0.75;
/// Payment delay assumed when the history has none, seconds.
pub const PAY_DELAY_DEFAULT_S: f64 = 60.0;

/// What the forecast is asked, and the assumptions it makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleParams {
    /// When the sale opens; `None`: the catalog's `opens_at_ms`.
    pub opens_at_ms: Option<i64>,
    pub model: SaleModel,
    /// Minutes after opening the per-second curve covers.
    pub curve_minutes: u32,
    /// Monte Carlo draws.
    pub draws: u32,
    /// Seed of the draws: the same history and seed give the same forecast.
    pub seed: u64,
}

impl Default for SaleParams {
    fn default() -> Self {
        SaleParams {
            opens_at_ms: None,
            model: SaleModel::default(),
            curve_minutes: 10,
            draws: 200,
            seed: 1,
        }
    }
}

impl SaleParams {
    /// Checks the values serde cannot (ranges, consistency).
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.check().map_err(crate::Error::InvalidParams)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !(1..=CURVE_MINUTES_MAX).contains(&self.curve_minutes) {
            return Err(format!("curve_minutes must be in 1..={CURVE_MINUTES_MAX}"));
        }
        if !(10..=DRAWS_MAX).contains(&self.draws) {
            return Err(format!("draws must be in 10..={DRAWS_MAX}"));
        }
        self.model.check()
    }
}

/// The 10th, 50th and 90th percentiles of a forecast quantity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

impl Band {
    /// Percentiles of `samples` (sorted in place); all zero when empty.
    pub fn of(samples: &mut [f64]) -> Band {
        if samples.is_empty() {
            return Band {
                p10: 0.0,
                p50: 0.0,
                p90: 0.0,
            };
        }
        samples.sort_by(f64::total_cmp);
        Band {
            p10: quantile_sorted(samples, 0.1),
            p50: quantile_sorted(samples, 0.5),
            p90: quantile_sorted(samples, 0.9),
        }
    }

    pub fn contains(&self, x: f64) -> bool {
        self.p10 <= x && x <= self.p90
    }
}

/// Percentiles of a time that may never come (an item that does not sell
/// out in some draws): `None` where the draw at that percentile never sold out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeBand {
    pub p10: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
}

impl TimeBand {
    /// From samples where `f64::INFINITY` means never.
    fn of(samples: &mut [f64]) -> TimeBand {
        samples.sort_by(f64::total_cmp);
        let at = |p| Some(quantile_sorted(samples, p)).filter(|t: &f64| t.is_finite());
        TimeBand {
            p10: at(0.1),
            p50: at(0.5),
            p90: at(0.9),
        }
    }
}

/// The normal days, as measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalDays {
    /// Days from the first event's local midnight to the opening.
    pub days: f64,
    pub orders: u64,
    /// `R`: orders over the history's seconds.
    pub orders_per_s: f64,
    /// Average orders/s per China-local hour of day, 0..24.
    pub orders_per_s_by_hour: Vec<f64>,
    /// Weekend days' orders over weekdays' (1 when either is missing).
    pub weekend_factor: f64,
    /// Daily growth of orders (log-linear fit over whole days).
    pub growth_per_day: f64,
}

/// How the night's payments are modelled, as measured on the normal days.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentModel {
    /// Orders not cash on delivery.
    pub online_share: f64,
    /// Online orders paid.
    pub paid_share: f64,
    /// Orders to payments: the product of the two.
    pub pay_share: f64,
    pub delay_p50_s: f64,
    pub delay_p90_s: f64,
    /// Whether the history had payments to measure (else the defaults).
    pub measured: bool,
}

/// One item's forecast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemForecast {
    pub sku: Sku,
    pub stock: u32,
    /// Signals in the intent window and their estimated background.
    pub favorites: u64,
    pub favorites_background: f64,
    pub carts: u64,
    pub carts_background: f64,
    pub deposits: u64,
    /// Order attempts on the night (clamped at 0).
    pub demand: Band,
    /// Share of the draws in which it sells out.
    pub sellout_probability: f64,
    /// Sells out in at least half the draws.
    pub sells_out: bool,
    /// Seconds after opening.
    pub sellout_s: TimeBand,
}

/// One second of the forecast curve: `[t_s, t_s + 1)` after opening.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurvePoint {
    pub t_s: u32,
    pub attempts: Band,
    pub accepted: Band,
    pub payments: Band,
}

/// The forecast of the night.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forecast {
    pub opens_at_ms: i64,
    pub params: SaleParams,
    pub read: ReadStats,
    pub normal: NormalDays,
    pub payment: PaymentModel,
    /// Order attempts over the whole night.
    pub attempts_total: Band,
    /// Attempts in the busiest second.
    pub peak_attempts_per_s: Band,
    /// Start of the busiest second, seconds after opening.
    pub peak_at_s: Band,
    /// `peak_attempts_per_s / normal.orders_per_s`.
    pub peak_multiple: Band,
    pub peak_accepted_per_s: Band,
    pub peak_payments_per_s: Band,
    pub peak_payments_at_s: Band,
    /// Items predicted to sell out (in at least half the draws).
    pub sellouts: usize,
    /// Every catalog item, hottest first (demand over stock).
    pub items: Vec<ItemForecast>,
    /// Per second for the first `curve_minutes`.
    pub curve: Vec<CurvePoint>,
    /// The signal shares and profile fitted from last year's night, when
    /// the history holds one (`params.model` then carries them).
    #[serde(default)]
    pub past_fit: Option<crate::past::PastFit>,
}

/// Forecasts the night from the history in `history_dir` (its `*.jsonl`
/// events and `catalog.json`).
pub fn forecast(history_dir: &Path, sale: SaleParams) -> Result<Forecast, Error> {
    sale.validate()?;
    let catalog = Catalog::load(history_dir)?;
    forecast_from(&catalog, history_dir, &[], sale)
}

/// Forecasts the night of `catalog` from the event log in `events_dir`
/// and `more` events besides (a live store's pre-sale deposits, read from
/// its orders: the log's own deposit events are then left out, so none
/// counts twice).
pub fn forecast_from(
    catalog: &Catalog,
    events_dir: &Path,
    more: &[crate::event::Event],
    sale: SaleParams,
) -> Result<Forecast, Error> {
    sale.validate()?;
    catalog
        .check()
        .map_err(|reason| Error::InvalidParams(format!("the catalog: {reason}")))?;
    let cells = catalog.items.len().saturating_mul(sale.draws as usize);
    if cells > DRAW_CELLS_MAX {
        return Err(Error::InvalidParams(format!(
            "{} items × {} draws is more than {DRAW_CELLS_MAX}; use fewer draws",
            catalog.items.len(),
            sale.draws
        )));
    }
    let opens_at_ms = sale.opens_at_ms.unwrap_or(catalog.opens_at_ms);
    // Last year's night, if the history holds one, replaces the stated
    // signal shares and profile with fitted ones.
    let past_fit = crate::past::fit(events_dir, &sale.model)?;
    let mut sale = sale;
    if let Some(fit) = &past_fit {
        sale.model.signal_share = fit.signal_share;
        sale.model.profile = fit.profile;
    }
    let mut scan = Scan::new(catalog, opens_at_ms, sale.model.intent_window_days);
    let deposits_given = more.iter().any(|e| e.kind == Kind::Deposit);
    let read = read_dir(events_dir, |e| {
        if !(deposits_given && e.kind == Kind::Deposit) {
            scan.add(e)
        }
    })?;
    for e in more {
        scan.add(e);
    }
    let normal = scan.normal_days()?;
    let payment = scan.payment_model();
    let intent = scan.intent(&sale.model);
    let draws = Draws::run(&sale, &intent, &payment, catalog);
    let mut forecast = draws.summarize(opens_at_ms, sale, read, normal, payment, &intent);
    forecast.past_fit = past_fit;
    Ok(forecast)
}

/// Over every item of `catalog`, what its favourites, carts and deposits
/// in the intent window before `opens_at_ms` exceed their normal
/// background by (the numerators of the intent estimate), from the history
/// in `dir`.
pub(crate) fn signal_excess(
    catalog: &Catalog,
    dir: &Path,
    opens_at_ms: i64,
    window_days: u32,
) -> Result<[f64; 3], Error> {
    let mut scan = Scan::new(catalog, opens_at_ms, window_days);
    read_dir(dir, |e| scan.add(e))?;
    scan.normal_days()?;
    let orders = scan.orders_fit();
    let scale = [1, 2].map(|k| scan.background_scale(k, &orders));
    let mut total = [0.0; 3];
    for c in &scan.items {
        total[0] += Signal::new(c.favorites, scale[0], 1.0).excess();
        total[1] += Signal::new(c.carts, scale[1], 1.0).excess();
        total[2] += c.deposits as f64;
    }
    Ok(total)
}

/// Serializes a forecast (JSON) for `mall forecast backtest --forecast F`.
pub fn save(forecast: &Forecast, path: &Path) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(forecast).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load(path: &Path) -> Result<Forecast, Error> {
    crate::read_json(path)
}

/// Most whole days before the opening read; older events are skipped.
pub const HISTORY_DAYS_MAX: usize = 400;
/// Most orders and payments remembered to measure payment delays (a
/// sample this large measures them as well as all would).
pub const PAYMENTS_MATCHED_MAX: usize = 2_000_000;
/// A day enters the background's seasonal fit with at least this many of
/// the signal; with fewer, the background is scaled by orders instead.
const BACKGROUND_DAY_MIN: u64 = 10;

/// Counts per item: `[before the window, in the window]`.
#[derive(Clone, Copy, Default)]
struct ItemCounts {
    /// Views before the window: the item's normal popularity.
    views: u64,
    favorites: [u64; 2],
    carts: [u64; 2],
    deposits: u64,
}

/// Totals of one day slot: orders, favourites, carts.
type SlotCounts = [u64; 3];

/// What one pass over the history gathers.
struct Scan {
    opens_at_ms: i64,
    /// Day slots of the intent window (slot 0 is the last 24 h).
    window_days: usize,
    /// Catalog index per SKU.
    index: HashMap<Sku, usize>,
    /// Per catalog item.
    items: Vec<ItemCounts>,
    first_ms: Option<i64>,
    /// Per day slot before the opening (`HISTORY_DAYS_MAX` of them).
    slots: Vec<SlotCounts>,
    orders_by_hour: [u64; 24],
    cod_orders: u64,
    /// Online orders' times by order id (at most `PAYMENTS_MATCHED_MAX`).
    online_orders: HashMap<u64, i64>,
    /// Payments' times by order id, the first of each order (at most
    /// `PAYMENTS_MATCHED_MAX`).
    pays: HashMap<u64, i64>,
}

impl Scan {
    fn new(catalog: &Catalog, opens_at_ms: i64, window_days: u32) -> Scan {
        Scan {
            opens_at_ms,
            window_days: window_days as usize,
            index: catalog
                .items
                .iter()
                .enumerate()
                .map(|(n, i)| (i.sku, n))
                .collect(),
            items: vec![ItemCounts::default(); catalog.items.len()],
            first_ms: None,
            slots: vec![[0; 3]; HISTORY_DAYS_MAX],
            orders_by_hour: [0; 24],
            cod_orders: 0,
            online_orders: HashMap::new(),
            pays: HashMap::new(),
        }
    }

    fn add(&mut self, e: &crate::event::Event) {
        if e.t_ms >= self.opens_at_ms {
            return;
        }
        let slot = ((self.opens_at_ms - 1 - e.t_ms) / DAY_MS) as usize;
        if slot >= HISTORY_DAYS_MAX {
            return;
        }
        self.first_ms = Some(self.first_ms.map_or(e.t_ms, |f| f.min(e.t_ms)));
        let w = usize::from(slot < self.window_days);
        let item = self.index.get(&e.sku).map(|&n| &mut self.items[n]);
        match e.kind {
            Kind::View => {
                if let (Some(i), 0) = (item, w) {
                    i.views += 1;
                }
            }
            Kind::Favorite => {
                self.slots[slot][1] += 1;
                if let Some(i) = item {
                    i.favorites[w] += 1;
                }
            }
            Kind::Cart => {
                self.slots[slot][2] += 1;
                if let Some(i) = item {
                    i.carts[w] += 1;
                }
            }
            Kind::Deposit => {
                if let Some(i) = item {
                    i.deposits += 1;
                }
            }
            Kind::Order => {
                self.slots[slot][0] += 1;
                self.orders_by_hour[china_hour(e.t_ms)] += 1;
                if e.cod {
                    self.cod_orders += 1;
                } else if let Some(o) = e.order {
                    if self.online_orders.len() < PAYMENTS_MATCHED_MAX {
                        self.online_orders.insert(o.0, e.t_ms);
                    }
                }
            }
            Kind::Pay => {
                if let Some(o) = e.order {
                    if let Some(t) = self.pays.get_mut(&o.0) {
                        *t = (*t).min(e.t_ms);
                    } else if self.pays.len() < PAYMENTS_MATCHED_MAX {
                        self.pays.insert(o.0, e.t_ms);
                    }
                }
            }
            _ => {}
        }
    }

    /// The start of the history: the first event's local midnight.
    fn start_ms(&self) -> Option<i64> {
        self.first_ms
            .map(|f| crate::calendar::Date::from_days(china_day(f)).china_midnight_ms())
    }

    /// Whole day slots inside the history.
    fn full_slots(&self) -> usize {
        self.start_ms()
            .map_or(0, |s| ((self.opens_at_ms - s) / DAY_MS) as usize)
            .min(HISTORY_DAYS_MAX)
    }

    /// Whether a day slot is mostly a weekend day, China time.
    fn weekend(&self, slot: usize) -> bool {
        let mid = self.opens_at_ms - slot as i64 * DAY_MS - DAY_MS / 2;
        crate::calendar::Date::from_days(china_day(mid)).is_weekend()
    }

    /// Orders of whole days: log-linear in the day with a weekend term.
    fn orders_fit(&self) -> Seasonal {
        let points: Vec<(f64, bool, f64)> = (0..self.full_slots())
            .filter(|&j| self.slots[j][0] > 0)
            .map(|j| (-(j as f64), self.weekend(j), (self.slots[j][0] as f64).ln()))
            .collect();
        Seasonal::fit(&points)
    }

    fn normal_days(&self) -> Result<NormalDays, Error> {
        let Some(start) = self.start_ms() else {
            return Err(Error::HistoryTooShort {
                reason: "no events before the opening".into(),
            });
        };
        if self.full_slots() <= self.window_days {
            return Err(Error::HistoryTooShort {
                reason: format!(
                    "{} whole days before the opening; the {}-day intent window needs more",
                    self.full_slots(),
                    self.window_days
                ),
            });
        }
        let seconds = (self.opens_at_ms - start) as f64 / 1_000.0;
        let days = seconds / 86_400.0;
        let orders: u64 = self.slots.iter().map(|s| s[0]).sum();
        let by_hour = self
            .orders_by_hour
            .iter()
            .map(|&n| n as f64 / (days * 3_600.0))
            .collect();
        let fit = self.orders_fit();
        Ok(NormalDays {
            days,
            orders,
            orders_per_s: orders as f64 / seconds,
            orders_per_s_by_hour: by_hour,
            weekend_factor: fit.weekend.exp(),
            growth_per_day: fit.growth.exp_m1(),
        })
    }

    /// Expected background of signal `k` (1: favourites, 2: carts) in the
    /// window over its count before the window: the signal's own daily
    /// totals before the window, fitted log-linearly with the orders'
    /// growth and its own weekend effect (the orders' when the days before
    /// the window hold no weekend), carried over the window's days.
    fn background_scale(&self, k: usize, orders: &Seasonal) -> f64 {
        let window = self.window_days;
        let before: u64 = self.slots[window..].iter().map(|s| s[k]).sum();
        let fit_days: Vec<usize> = (window..self.full_slots()).collect();
        if before == 0
            || fit_days
                .iter()
                .any(|&j| self.slots[j][k] < BACKGROUND_DAY_MIN)
        {
            let orders_in =
                |r: std::ops::Range<usize>| self.slots[r].iter().map(|s| s[0]).sum::<u64>();
            let (w, b) = (orders_in(0..window), orders_in(window..HISTORY_DAYS_MAX));
            return if b > 0 { w as f64 / b as f64 } else { 0.0 };
        }
        // Residuals with the growth taken out.
        let residual = |j: usize| (self.slots[j][k] as f64).ln() + orders.growth * j as f64;
        let mean = |weekend: bool| {
            let r: Vec<f64> = fit_days
                .iter()
                .filter(|&&j| self.weekend(j) == weekend)
                .map(|&j| residual(j))
                .collect();
            (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
        };
        let weekend = match (mean(true), mean(false)) {
            (Some(a), Some(b)) => a - b,
            _ => orders.weekend,
        };
        let level = fit_days
            .iter()
            .map(|&j| residual(j) - weekend * f64::from(u8::from(self.weekend(j))))
            .sum::<f64>()
            / fit_days.len() as f64;
        let expected: f64 = (0..window)
            .map(|j| {
                let wk = f64::from(u8::from(self.weekend(j)));
                (level - orders.growth * j as f64 + weekend * wk).exp()
            })
            .sum();
        expected / before as f64
    }

    fn payment_model(&self) -> PaymentModel {
        let orders: u64 = self.slots.iter().map(|s| s[0]).sum();
        let mut delays = self.pay_delays_s();
        if orders == 0 || delays.is_empty() {
            return PaymentModel {
                online_share: 1.0,
                paid_share: PAY_SHARE_DEFAULT,
                pay_share: PAY_SHARE_DEFAULT,
                delay_p50_s: PAY_DELAY_DEFAULT_S,
                delay_p90_s: PAY_DELAY_DEFAULT_S,
                measured: false,
            };
        }
        let online_share = 1.0 - self.cod_orders as f64 / orders as f64;
        let paid_share = (delays.len() as f64 / self.online_orders.len().max(1) as f64).min(1.0);
        delays.sort_by(f64::total_cmp);
        PaymentModel {
            online_share,
            paid_share,
            pay_share: online_share * paid_share,
            delay_p50_s: quantile_sorted(&delays, 0.5),
            delay_p90_s: quantile_sorted(&delays, 0.9),
            measured: true,
        }
    }

    /// Seconds from each online order to its first payment.
    fn pay_delays_s(&self) -> Vec<f64> {
        self.pays
            .iter()
            .filter_map(|(o, &paid)| {
                let ordered = *self.online_orders.get(o)?;
                (paid >= ordered).then(|| (paid - ordered) as f64 / 1_000.0)
            })
            .collect()
    }

    /// The payment-delay kernel (measured, else the default delay).
    fn kernel(&self) -> Kernel {
        let mut delays = self.pay_delays_s();
        if delays.is_empty() {
            delays.push(PAY_DELAY_DEFAULT_S);
        }
        kernel_from_delays(&mut delays)
    }

    /// Per item: estimated wanters and the estimate's standard deviation.
    fn intent(&self, model: &SaleModel) -> Intent {
        let orders = self.orders_fit();
        let scale = [1, 2].map(|k| self.background_scale(k, &orders));
        let share = model.signal_share;
        let signals: Vec<[Signal; 3]> = self
            .items
            .iter()
            .map(|c| {
                [
                    Signal::new(c.favorites, scale[0], share.favorite),
                    Signal::new(c.carts, scale[1], share.cart),
                    Signal::new([0, c.deposits], 0.0, share.deposit),
                ]
            })
            .collect();
        let pooled = |s: &[Signal; 3]| {
            s.iter().map(Signal::excess).sum::<f64>() / s.iter().map(|s| s.share).sum::<f64>()
        };
        // The weights need the item's wanters, which are being estimated.
        // Taken from the item's own signals they would lean toward whichever
        // signal is high by chance (a bias upward); so they come from its
        // normal popularity instead: views before the window, scaled to the
        // pooled estimate of all items.
        let views: f64 = self.items.iter().map(|c| c.views as f64).sum();
        let total: f64 = signals.iter().map(pooled).sum();
        let guide = |n: usize| {
            if views > 0.0 {
                total.max(0.0) * self.items[n].views as f64 / views
            } else {
                pooled(&signals[n])
            }
        };
        let items = signals
            .iter()
            .enumerate()
            .map(|(n, s)| {
                let w0 = guide(n).max(1.0);
                let (mut num, mut den) = (0.0, 0.0);
                for signal in s {
                    let var = signal.variance(w0);
                    num += signal.excess() / signal.share / var;
                    den += 1.0 / var;
                }
                ItemIntent {
                    counts: self.items[n],
                    background: [s[0].background, s[1].background],
                    wanters: num / den,
                    sd: den.recip().sqrt(),
                }
            })
            .collect();
        Intent {
            items,
            kernel: self.kernel(),
        }
    }
}

/// One signal of one item in the intent window.
#[derive(Clone, Copy)]
struct Signal {
    /// In the window.
    count: f64,
    /// Expected background in the window.
    background: f64,
    /// Variance of the background's estimate.
    background_var: f64,
    /// Assumed share of wanters who leave it.
    share: f64,
}

impl Signal {
    fn new(counts: [u64; 2], scale: f64, share: f64) -> Signal {
        let before = counts[0] as f64;
        Signal {
            count: counts[1] as f64,
            background: before * scale,
            background_var: before * scale * scale,
            share,
        }
    }

    fn excess(&self) -> f64 {
        self.count - self.background
    }

    /// Variance of `excess / share` when the item has `wanters` wanters:
    /// binomial signals plus Poisson background plus the background's estimate.
    fn variance(&self, wanters: f64) -> f64 {
        let p = self.share.min(0.999);
        (wanters * p * (1.0 - p) + self.background + self.background_var) / (p * p)
    }
}

struct ItemIntent {
    counts: ItemCounts,
    background: [f64; 2],
    /// Estimated wanters under the nominal signal shares (may be negative:
    /// kept so that sums over items stay unbiased).
    wanters: f64,
    sd: f64,
}

struct Intent {
    items: Vec<ItemIntent>,
    kernel: Kernel,
}

/// The Monte Carlo draws.
struct Draws {
    attempts_total: Vec<f64>,
    peak: Vec<f64>,
    peak_at: Vec<f64>,
    accepted_peak: Vec<f64>,
    pay_peak: Vec<f64>,
    pay_at: Vec<f64>,
    /// Per item, per draw.
    demand: Vec<Vec<f64>>,
    /// Per item, per draw (`INFINITY`: never).
    sellout: Vec<Vec<f64>>,
    /// Per curve second, per draw: attempts, accepted, payments.
    curve: Vec<[Vec<f64>; 3]>,
    stock: Vec<u32>,
    skus: Vec<Sku>,
}

impl Draws {
    fn run(sale: &SaleParams, intent: &Intent, payment: &PaymentModel, catalog: &Catalog) -> Draws {
        let n = intent.items.len();
        let draws = sale.draws as usize;
        let curve_s = sale.curve_minutes as usize * 60;
        let model = &sale.model;
        let mut rng = Rng::new(sale.seed);
        let mut out = Draws {
            attempts_total: Vec::with_capacity(draws),
            peak: Vec::with_capacity(draws),
            peak_at: Vec::with_capacity(draws),
            accepted_peak: Vec::with_capacity(draws),
            pay_peak: Vec::with_capacity(draws),
            pay_at: Vec::with_capacity(draws),
            demand: vec![Vec::with_capacity(draws); n],
            sellout: vec![Vec::with_capacity(draws); n],
            curve: (0..curve_s)
                .map(|_| std::array::from_fn(|_| Vec::with_capacity(draws)))
                .collect(),
            stock: catalog.items.iter().map(|i| i.stock).collect(),
            skus: catalog.items.iter().map(|i| i.sku).collect(),
        };
        let mut demands = Vec::with_capacity(n);
        for _ in 0..draws {
            let factor = (model.share_sigma * rng.normal()).exp();
            let grid = Grid::new(model.profile.perturbed(&mut rng, model.profile_sigma));
            demands.clear();
            for (item, &stock) in intent.items.iter().zip(&out.stock) {
                let wanters = item.wanters + item.sd * rng.normal();
                demands.push(ItemDemand {
                    demand: wanters * model.attempts_per_wanter / factor,
                    stock: f64::from(stock),
                });
            }
            let night = FluidSale::new(&grid, &demands);
            let paid = payments(&night.accepted, payment.pay_share, &intent.kernel);
            let (at, top) = peak(&night.attempts);
            out.attempts_total
                .push(demands.iter().map(|d| d.demand).sum::<f64>().max(0.0));
            out.peak.push(top);
            out.peak_at.push(at as f64);
            out.accepted_peak.push(peak(&night.accepted).1);
            let (pay_at, pay_top) = peak(&paid);
            out.pay_peak.push(pay_top);
            out.pay_at.push(pay_at as f64);
            for (i, d) in demands.iter().enumerate() {
                out.demand[i].push(d.demand.max(0.0));
                out.sellout[i].push(night.sellout_s[i].unwrap_or(f64::INFINITY));
            }
            for (k, point) in out.curve.iter_mut().enumerate() {
                point[0].push(night.attempts[k]);
                point[1].push(night.accepted[k]);
                point[2].push(paid[k]);
            }
        }
        out
    }

    fn summarize(
        mut self,
        opens_at_ms: i64,
        params: SaleParams,
        read: ReadStats,
        normal: NormalDays,
        payment: PaymentModel,
        intent: &Intent,
    ) -> Forecast {
        let rate = normal.orders_per_s.max(f64::MIN_POSITIVE);
        let mut multiple: Vec<f64> = self.peak.iter().map(|p| p / rate).collect();
        let draws = params.draws as f64;
        let mut items: Vec<ItemForecast> = (0..self.skus.len())
            .map(|i| {
                let sells = self.sellout[i].iter().filter(|t| t.is_finite()).count();
                let probability = sells as f64 / draws;
                let it = &intent.items[i];
                ItemForecast {
                    sku: self.skus[i],
                    stock: self.stock[i],
                    favorites: it.counts.favorites[1],
                    favorites_background: it.background[0],
                    carts: it.counts.carts[1],
                    carts_background: it.background[1],
                    deposits: it.counts.deposits,
                    demand: Band::of(&mut self.demand[i]),
                    sellout_probability: probability,
                    sells_out: probability >= 0.5,
                    sellout_s: TimeBand::of(&mut self.sellout[i]),
                }
            })
            .collect();
        items.sort_by(|a, b| {
            let heat = |i: &ItemForecast| i.demand.p50 / f64::from(i.stock);
            heat(b).total_cmp(&heat(a)).then(a.sku.cmp(&b.sku))
        });
        let curve = self
            .curve
            .iter_mut()
            .enumerate()
            .map(|(k, [a, b, c])| CurvePoint {
                t_s: k as u32,
                attempts: Band::of(a),
                accepted: Band::of(b),
                payments: Band::of(c),
            })
            .collect();
        Forecast {
            opens_at_ms,
            params,
            read,
            normal,
            payment,
            attempts_total: Band::of(&mut self.attempts_total),
            peak_attempts_per_s: Band::of(&mut self.peak),
            peak_at_s: Band::of(&mut self.peak_at),
            peak_multiple: Band::of(&mut multiple),
            peak_accepted_per_s: Band::of(&mut self.accepted_peak),
            peak_payments_per_s: Band::of(&mut self.pay_peak),
            peak_payments_at_s: Band::of(&mut self.pay_at),
            sellouts: items.iter().filter(|i| i.sells_out).count(),
            items,
            curve,
            past_fit: None,
        }
    }
}

/// A log-linear daily series: `ln y = level + growth·day + weekend·[weekend day]`.
#[derive(Clone, Copy, Debug, Default)]
struct Seasonal {
    growth: f64,
    weekend: f64,
}

impl Seasonal {
    /// Least squares over `(day, is weekend, ln y)`; the weekend term only
    /// when both kinds of day are present, the growth only with two days.
    fn fit(points: &[(f64, bool, f64)]) -> Seasonal {
        let has = |w: bool| points.iter().any(|p| p.1 == w);
        let with_weekend = has(true) && has(false);
        let rows: Vec<Vec<f64>> = points
            .iter()
            .map(|&(x, w, _)| {
                let mut r = vec![1.0, x];
                if with_weekend {
                    r.push(f64::from(u8::from(w)));
                }
                r
            })
            .collect();
        let ys: Vec<f64> = points.iter().map(|p| p.2).collect();
        match least_squares(&rows, &ys) {
            Some(beta) => Seasonal {
                growth: beta[1],
                weekend: beta.get(2).copied().unwrap_or(0.0),
            },
            None => Seasonal::default(),
        }
    }
}

/// Ordinary least squares by the normal equations (tiny systems only);
/// `None` when they are singular.
fn least_squares(rows: &[Vec<f64>], ys: &[f64]) -> Option<Vec<f64>> {
    let n = rows.first()?.len();
    if rows.len() < n {
        return None;
    }
    // Augmented [XᵀX | Xᵀy], then Gauss-Jordan with partial pivoting.
    let mut m = vec![vec![0.0; n + 1]; n];
    for (r, &y) in rows.iter().zip(ys) {
        for i in 0..n {
            for j in 0..n {
                m[i][j] += r[i] * r[j];
            }
            m[i][n] += r[i] * y;
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..n).map(|i| m[i][n] / m[i][i]).collect())
}

/// The forecast as text for a terminal: the headline figures, the hottest
/// items and the first minutes' curve.
pub fn print(f: &Forecast) -> String {
    let mut out = String::new();
    let band = |b: &Band, digits: usize| {
        format!(
            "{:.d$} (p10 {:.d$} .. p90 {:.d$})",
            b.p50,
            b.p10,
            b.p90,
            d = digits
        )
    };
    let n = &f.normal;
    let _ = writeln!(
        out,
        "history: {} files, {} events, {} malformed lines skipped",
        f.read.files, f.read.events, f.read.malformed
    );
    let _ = writeln!(
        out,
        "normal days: {:.1} days, {} orders, {:.4} orders/s on average; weekend x{:.2}; growth {:+.1}%/day",
        n.days,
        n.orders,
        n.orders_per_s,
        n.weekend_factor,
        100.0 * n.growth_per_day
    );
    if let Some((busiest, rate)) = n
        .orders_per_s_by_hour
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
    {
        let (quietest, low) = n
            .orders_per_s_by_hour
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        let _ = writeln!(
            out,
            "  busiest hour {busiest:02}:00 ({rate:.4}/s), quietest {quietest:02}:00 ({low:.4}/s), China time"
        );
    }
    match &f.past_fit {
        Some(p) => {
            let (s, pr) = (&p.signal_share, &p.profile);
            let _ = writeln!(
                out,
                "fitted from last year's night ({:.0} attempts, {:.0} shoppers): signal shares {:.1}% / {:.1}% / {:.1}% (favourite / cart / deposit); profile: ramp {:.1} s, {:.0}% in a rush over {:.0} s, the rest over {:.0} s (log-CDF rmse {:.4})",
                p.attempts,
                p.wanters,
                100.0 * s.favorite,
                100.0 * s.cart,
                100.0 * s.deposit,
                pr.ramp_s,
                100.0 * pr.rush_share,
                pr.rush_s,
                pr.tail_s,
                p.profile_rmse
            );
        }
        None => {
            let _ = writeln!(
                out,
                "no past night in the history: the signal shares and profile are the stated ones"
            );
        }
    }
    let _ = writeln!(out, "the night (opens at {} ms):", f.opens_at_ms);
    let _ = writeln!(out, "  order attempts:     {}", band(&f.attempts_total, 0));
    let _ = writeln!(
        out,
        "  peak attempts/s:    {}",
        band(&f.peak_attempts_per_s, 2)
    );
    let _ = writeln!(out, "  peak at second:     {}", band(&f.peak_at_s, 0));
    let _ = writeln!(out, "  x normal day:       {}", band(&f.peak_multiple, 1));
    let _ = writeln!(
        out,
        "  peak accepted/s:    {}",
        band(&f.peak_accepted_per_s, 2)
    );
    let _ = writeln!(
        out,
        "  peak payments/s:    {}",
        band(&f.peak_payments_per_s, 2)
    );
    let _ = writeln!(
        out,
        "  payments peak at s: {}",
        band(&f.peak_payments_at_s, 0)
    );
    let p = &f.payment;
    let _ = writeln!(
        out,
        "  payments: {:.0}% online x {:.0}% paid, delay p50 {:.0} s p90 {:.0} s{}",
        100.0 * p.online_share,
        100.0 * p.paid_share,
        p.delay_p50_s,
        p.delay_p90_s,
        if p.measured {
            ""
        } else {
            " (assumed: no payments in the history)"
        }
    );
    let _ = writeln!(
        out,
        "  items selling out: {} of {}",
        f.sellouts,
        f.items.len()
    );
    let _ = writeln!(out, "hottest items:");
    let _ = writeln!(
        out,
        "  {:>8} {:>7} {:>21} {:>6} {:>26}",
        "sku", "stock", "demand p50 (p10..p90)", "P(out)", "sells out at s (p10..p90)"
    );
    let time = |t: Option<f64>| t.map_or("never".into(), |t| format!("{t:.0}"));
    for i in f.items.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:>8} {:>7} {:>21} {:>6.2} {:>26}",
            i.sku.0,
            i.stock,
            format!(
                "{:.0} ({:.0}..{:.0})",
                i.demand.p50, i.demand.p10, i.demand.p90
            ),
            i.sellout_probability,
            format!(
                "{} ({}..{})",
                time(i.sellout_s.p50),
                time(i.sellout_s.p10),
                time(i.sellout_s.p90)
            ),
        );
    }
    let _ = writeln!(out, "attempts/s, accepted/s, payments/s (p50) by second:");
    for point in f.curve.iter().filter(|c| c.t_s % 30 == 0 || c.t_s < 5) {
        let _ = writeln!(
            out,
            "  {:>5} s {:>10.3} {:>10.3} {:>10.3}",
            point.t_s, point.attempts.p50, point.accepted.p50, point.payments.p50
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seasonal_fit_recovers_growth_and_weekends() {
        // ln y = 5 + 0.02 day + 0.3 weekend.
        let points: Vec<(f64, bool, f64)> = (0..14)
            .map(|d| {
                let weekend = d % 7 >= 5;
                (
                    f64::from(d),
                    weekend,
                    5.0 + 0.02 * f64::from(d) + if weekend { 0.3 } else { 0.0 },
                )
            })
            .collect();
        let fit = Seasonal::fit(&points);
        assert!((fit.growth - 0.02).abs() < 1e-9 && (fit.weekend - 0.3).abs() < 1e-9);
        // Without weekends, no weekend term; with one day, nothing.
        let weekdays: Vec<_> = points.iter().copied().filter(|p| !p.1).collect();
        assert!((Seasonal::fit(&weekdays).growth - 0.02).abs() < 1e-9);
        assert_eq!(Seasonal::fit(&points[..1]).growth, 0.0);
    }

    #[test]
    fn signals_estimate_wanters_above_their_background() {
        // 40 favourites before the window, half as much activity in it: a
        // background of 20; 75 seen, so 55 / 0.55 = 100 wanters.
        let s = Signal::new([40, 75], 0.5, 0.55);
        assert!((s.excess() / s.share - 100.0).abs() < 1e-9);
        // Binomial signals plus the Poisson background and its estimate.
        let want = (100.0 * 0.55 * 0.45 + 20.0 + 10.0) / (0.55 * 0.55);
        assert!((s.variance(100.0) - want).abs() < 1e-9);
    }
}
