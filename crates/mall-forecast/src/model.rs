//! The sale model: how the night unfolds once the demand of every item is
//! known. Pure arithmetic, shared by the generator (which computes the
//! truth with the true parameters) and the forecast (which computes it for
//! each Monte Carlo draw of the uncertain ones).
//!
//! # The arrival profile
//!
//! Every shopper who wants an item tries once (`attempts_per_wanter`
//! attempts, 1 by default), at a time drawn from one profile shared by all
//! items: an opening ramp (shoppers' pages refresh onto the opening; time
//! constant `ramp_s`) times a mix of two exponential decays, the opening
//! rush (`rush_share` of the night's attempts, time constant `rush_s`) and
//! the long tail (the rest, `tail_s`):
//!
//! ```text
//! f(t) = (1 - e^(-t/ramp)) · [ w·c_r·e^(-t/rush)/rush + (1-w)·c_t·e^(-t/tail)/tail ]
//! ```
//!
//! with `c_x = (ramp + x)/x` so that each part integrates to 1. The CDF has
//! a closed form, so sell-out times are exact inversions.
//!
//! # The fluid sale
//!
//! Attempts are treated as a fluid (the expected arrivals): item `i` with
//! demand `D_i` attempts and `S_i` units sells out at `T_i = F⁻¹(S_i/D_i)`
//! when `D_i > S_i` (one unit per attempt; the first `S_i` attempts win).
//! Per second `k` (the window `[k, k+1)` after opening), attempts are
//! `Σ D_i · (F(k+1) − F(k))`, accepted orders the same over items not yet
//! sold out (an item selling out inside the second contributes what was
//! left), and payments are accepted orders × the paying share, spread by
//! the order-to-payment delay distribution. The peak is the busiest whole
//! second. The fluid is the expectation of the sampled night; with a few
//! attempts per second, one sampled night's busiest second is noisier.

use serde::{Deserialize, Serialize};

/// Seconds after opening that the per-second series cover: the peaks of
/// attempts, accepted orders and payments all fall well inside it (the
/// ramp is bounded to a minute and payments to the hold time).
pub const HORIZON_S: usize = 3_600;
/// Longest opening ramp a profile may have.
pub const RAMP_S_MAX: f64 = 60.0;
/// Points of a payment-delay kernel (equal masses at its quantiles).
pub const KERNEL_POINTS: usize = 50;

/// The stated assumptions that turn pre-sale intent into the night. There
/// is no past sale in a history, so these are not fitted: they are what
/// last year's sale is assumed to have shown (on the synthetic history they
/// are the generator's own values, drawn with the stated noise).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleModel {
    /// Days before the opening whose favourites and carts count as intent
    /// (deposits count whenever they were paid).
    pub intent_window_days: u32,
    /// Share of the night's shoppers who leave each signal in the window.
    pub signal_share: SignalShares,
    /// Order attempts per shopper who wants an item.
    pub attempts_per_wanter: f64,
    /// When the attempts come.
    pub profile: Profile,
    /// Uncertainty of `signal_share`: log-sd of one factor common to all
    /// three shares and all items (this year's shoppers may signal more or
    /// less than last year's).
    pub share_sigma: f64,
    /// Uncertainty of each `profile` parameter: log-sd of independent factors.
    pub profile_sigma: f64,
}

impl Default for SaleModel {
    fn default() -> Self {
        SaleModel {
            intent_window_days: 3,
            signal_share: SignalShares::default(),
            attempts_per_wanter: 1.0,
            profile: Profile::default(),
            share_sigma: 0.05,
            profile_sigma: 0.05,
        }
    }
}

impl SaleModel {
    /// Checks the values serde cannot (ranges, consistency).
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.check().map_err(crate::Error::InvalidParams)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !(1..=30).contains(&self.intent_window_days) {
            return Err(format!(
                "intent_window_days must be in 1..=30, got {}",
                self.intent_window_days
            ));
        }
        let s = self.signal_share;
        for (name, v) in [
            ("favorite", s.favorite),
            ("cart", s.cart),
            ("deposit", s.deposit),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("signal_share.{name} must be in (0, 1], got {v}"));
            }
        }
        if !(self.attempts_per_wanter.is_finite() && self.attempts_per_wanter > 0.0) {
            return Err("attempts_per_wanter must be positive".into());
        }
        for (name, v) in [
            ("share_sigma", self.share_sigma),
            ("profile_sigma", self.profile_sigma),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        self.profile.check().map_err(|e| format!("profile: {e}"))
    }
}

/// Per signal, the share of the night's shoppers of an item who left it in
/// the intent window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalShares {
    pub favorite: f64,
    pub cart: f64,
    pub deposit: f64,
}

impl Default for SignalShares {
    fn default() -> Self {
        SignalShares {
            favorite: 0.55,
            cart: 0.45,
            deposit: 0.25,
        }
    }
}

impl SignalShares {
    pub fn scaled(self, factor: f64) -> SignalShares {
        SignalShares {
            favorite: (self.favorite * factor).min(1.0),
            cart: (self.cart * factor).min(1.0),
            deposit: (self.deposit * factor).min(1.0),
        }
    }
}

/// The shape of the night's attempts over time (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Time constant of the opening ramp, seconds.
    pub ramp_s: f64,
    /// Time constant of the opening rush's decay, seconds.
    pub rush_s: f64,
    /// Share of all attempts in the opening rush, in (0, 1).
    pub rush_share: f64,
    /// Time constant of the long tail's decay, seconds.
    pub tail_s: f64,
}

impl Default for Profile {
    /// Stated assumptions: a 3 s ramp, 30 % of the night in an opening rush
    /// decaying over 30 min, the rest over 8 h. With these the busiest second
    /// holds about 1/5,200 of the night's attempts, at about 20 s.
    fn default() -> Self {
        Profile {
            ramp_s: 3.0,
            rush_s: 1_800.0,
            rush_share: 0.3,
            tail_s: 28_800.0,
        }
    }
}

impl Profile {
    /// Checks the values serde cannot (ranges, consistency).
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.check().map_err(crate::Error::InvalidParams)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let p = self;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !(positive(p.ramp_s) && p.ramp_s <= RAMP_S_MAX) {
            return Err(format!(
                "ramp_s must be in (0, {RAMP_S_MAX}], got {}",
                p.ramp_s
            ));
        }
        if !(positive(p.rush_s) && p.rush_s >= 10.0 * p.ramp_s) {
            return Err(format!(
                "rush_s must be at least 10 × ramp_s, got {}",
                p.rush_s
            ));
        }
        if !(positive(p.tail_s) && p.tail_s >= p.rush_s) {
            return Err(format!("tail_s must be at least rush_s, got {}", p.tail_s));
        }
        if !(p.rush_share > 0.0 && p.rush_share < 1.0) {
            return Err(format!(
                "rush_share must be in (0, 1), got {}",
                p.rush_share
            ));
        }
        Ok(())
    }

    /// Share of the night's attempts made by `t_s` seconds after opening.
    pub fn cdf(&self, t_s: f64) -> f64 {
        if t_s <= 0.0 {
            return 0.0;
        }
        let w = self.rush_share;
        w * part_cdf(self.ramp_s, self.rush_s, t_s)
            + (1.0 - w) * part_cdf(self.ramp_s, self.tail_s, t_s)
    }

    /// Attempts density (share per second) at `t_s`.
    pub fn density(&self, t_s: f64) -> f64 {
        if t_s <= 0.0 {
            return 0.0;
        }
        let ramp = -(-t_s / self.ramp_s).exp_m1();
        let part = |tau: f64| (self.ramp_s + tau) / tau * (-t_s / tau).exp() / tau;
        ramp * (self.rush_share * part(self.rush_s) + (1.0 - self.rush_share) * part(self.tail_s))
    }

    /// When the share `u` of attempts has arrived; `None` for `u >= 1`.
    pub fn quantile(&self, u: f64) -> Option<f64> {
        if u >= 1.0 {
            return None;
        }
        if u <= 0.0 {
            return Some(0.0);
        }
        let mut hi = self.tail_s;
        while self.cdf(hi) < u {
            hi *= 2.0;
            if !hi.is_finite() {
                return None;
            }
        }
        let mut lo = 0.0;
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if self.cdf(mid) < u {
                lo = mid;
            } else {
                hi = mid;
            }
            if hi - lo < 1e-6 * hi.max(1.0) {
                break;
            }
        }
        Some(0.5 * (lo + hi))
    }

    /// This profile with each parameter scaled by an independent log-normal
    /// factor of log-sd `sigma` (the rush share kept inside (0.01, 0.99)).
    pub fn perturbed(&self, rng: &mut crate::rng::Rng, sigma: f64) -> Profile {
        let mut factor = || (sigma * rng.normal()).exp();
        let ramp_s = (self.ramp_s * factor()).min(RAMP_S_MAX);
        let rush_s = (self.rush_s * factor()).max(10.0 * ramp_s);
        let tail_s = (self.tail_s * factor()).max(rush_s);
        let rush_share = (self.rush_share * factor()).clamp(0.01, 0.99);
        Profile {
            ramp_s,
            rush_s,
            rush_share,
            tail_s,
        }
    }
}

/// CDF of one part, `(1 - e^(-t/r)) e^(-t/τ)/τ` normalized, at `t > 0`.
fn part_cdf(ramp: f64, tau: f64, t: f64) -> f64 {
    // ∫ (1 - e^(-s/r)) e^(-s/τ)/τ ds = (1 - e^(-t/τ)) - (τ'/τ)(1 - e^(-t/τ')),
    // τ' = rτ/(r+τ); the whole integral is τ/(r+τ).
    let tau_both = ramp * tau / (ramp + tau);
    let raw = -(-t / tau).exp_m1() - tau_both / tau * -(-t / tau_both).exp_m1();
    (raw * (ramp + tau) / tau).clamp(0.0, 1.0)
}

/// The profile's CDF at whole seconds `0..=HORIZON_S` and at whole minutes
/// up to [`TAIL_MINUTES`], for fast lookups.
#[derive(Clone, Debug)]
pub struct Grid {
    pub profile: Profile,
    /// `cdf[k] = F(k s)`.
    pub cdf: Vec<f64>,
    /// `tail[m] = F(m min)`.
    pub tail: Vec<f64>,
}

/// Minutes the coarse part of a [`Grid`] covers (two days).
pub const TAIL_MINUTES: usize = 2 * 24 * 60;

impl Grid {
    pub fn new(profile: Profile) -> Grid {
        let cdf = (0..=HORIZON_S).map(|k| profile.cdf(k as f64)).collect();
        let tail = (0..=TAIL_MINUTES)
            .map(|m| profile.cdf(60.0 * m as f64))
            .collect();
        Grid { profile, cdf, tail }
    }

    /// Share of attempts in second `k` (`[k, k+1)`).
    pub fn share(&self, k: usize) -> f64 {
        self.cdf[k + 1] - self.cdf[k]
    }

    /// The sell-out time of an item: when `stock / demand` of its attempts
    /// have arrived; `None` if its demand does not exceed its stock.
    pub fn sellout_s(&self, demand: f64, stock: f64) -> Option<f64> {
        if demand <= stock || demand <= 0.0 {
            return None;
        }
        let u = (stock / demand).max(0.0);
        if u <= self.cdf[HORIZON_S] {
            let t = lookup(&self.cdf, u, 1.0);
            if t > RAMP_S_MAX {
                return Some(t);
            }
            // Inside the ramp the CDF bends within a second (the hottest
            // items sell out there): two Newton steps from the table.
            let mut t = t;
            for _ in 0..2 {
                let f = self.profile.density(t);
                if f > 0.0 {
                    t = (t - (self.profile.cdf(t) - u) / f).max(0.0);
                }
            }
            return Some(t);
        }
        if u <= self.tail[TAIL_MINUTES] {
            // Minutes are fine enough past the first hour: the tail's
            // curvature over a minute is far below the model's own error.
            return Some(lookup(&self.tail, u, 60.0));
        }
        self.profile.quantile(u)
    }
}

/// The time at which a tabulated CDF (step `step_s`) reaches `u`, linear
/// between the steps; `u` must not exceed the table's last value.
fn lookup(table: &[f64], u: f64, step_s: f64) -> f64 {
    let k = table.partition_point(|&c| c < u);
    if k == 0 {
        return 0.0;
    }
    let (lo, hi) = (table[k - 1], table[k]);
    let frac = if hi > lo { (u - lo) / (hi - lo) } else { 0.0 };
    ((k - 1) as f64 + frac) * step_s
}

/// One item as the fluid sale sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ItemDemand {
    /// Attempts the item will get (may be fractional: an expectation).
    pub demand: f64,
    /// Units for sale.
    pub stock: f64,
}

/// The fluid night, per second after opening (`HORIZON_S` seconds).
#[derive(Clone, Debug)]
pub struct FluidSale {
    /// Order attempts (accepted + refused) per second.
    pub attempts: Vec<f64>,
    /// Accepted orders per second.
    pub accepted: Vec<f64>,
    /// Per item (same order as the input): seconds to sell out, if it does.
    pub sellout_s: Vec<Option<f64>>,
}

impl FluidSale {
    pub fn new(grid: &Grid, items: &[ItemDemand]) -> FluidSale {
        let sellout_s: Vec<Option<f64>> = items
            .iter()
            .map(|i| grid.sellout_s(i.demand, i.stock))
            .collect();
        let total: f64 = items.iter().map(|i| i.demand).sum();
        let mut order: Vec<(f64, usize)> = sellout_s
            .iter()
            .enumerate()
            .filter_map(|(n, t)| t.map(|t| (t, n)))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut attempts = Vec::with_capacity(HORIZON_S);
        let mut accepted = Vec::with_capacity(HORIZON_S);
        // Demand of items still on sale at the start of the second.
        let mut alive = total;
        let mut next = 0;
        for k in 0..HORIZON_S {
            let share = grid.share(k);
            attempts.push(total * share);
            let mut leftover = 0.0;
            while next < order.len() && order[next].0 < (k + 1) as f64 {
                let item = items[order[next].1];
                alive -= item.demand;
                // What was left of its stock at the start of this second.
                leftover += (item.stock - item.demand * grid.cdf[k]).max(0.0);
                next += 1;
            }
            accepted.push((alive * share + leftover).max(0.0));
        }
        FluidSale {
            attempts,
            accepted,
            sellout_s,
        }
    }
}

/// A payment-delay distribution as equal masses at whole seconds.
pub type Kernel = Vec<(usize, f64)>;

/// A kernel from sample delays (seconds): [`KERNEL_POINTS`] equal masses
/// at the sample's quantiles.
pub fn kernel_from_delays(delays_s: &mut [f64]) -> Kernel {
    assert!(!delays_s.is_empty());
    delays_s.sort_by(f64::total_cmp);
    let mass = 1.0 / KERNEL_POINTS as f64;
    (0..KERNEL_POINTS)
        .map(|j| {
            let p = (j as f64 + 0.5) / KERNEL_POINTS as f64;
            let d = quantile_sorted(delays_s, p).max(0.0).round() as usize;
            (d, mass)
        })
        .collect()
}

/// Payments per second: accepted orders × `pay_share`, each paid after a
/// delay drawn from `kernel`.
pub fn payments(accepted: &[f64], pay_share: f64, kernel: &Kernel) -> Vec<f64> {
    let mut out = vec![0.0; accepted.len()];
    for &(delay, mass) in kernel {
        for (k, a) in accepted.iter().enumerate() {
            let Some(slot) = out.get_mut(k + delay) else {
                break;
            };
            *slot += a * pay_share * mass;
        }
    }
    out
}

/// The busiest second and its value (the first, on ties).
pub fn peak(series: &[f64]) -> (usize, f64) {
    series
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (k, &v)| {
            if v > best.1 {
                (k, v)
            } else {
                best
            }
        })
}

/// Linear-interpolated quantile `p` of sorted data.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty());
    let x = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = x.floor() as usize;
    let hi = x.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_a_distribution() {
        let p = Profile::default();
        p.validate().unwrap();
        assert_eq!(p.cdf(0.0), 0.0);
        assert!((p.cdf(1e9) - 1.0).abs() < 1e-9);
        // The density integrates to the CDF (trapezoids over the first hour).
        let mut sum = 0.0;
        let dt = 0.05;
        let mut t = 0.0;
        while t < 3_600.0 {
            sum += 0.5 * (p.density(t) + p.density(t + dt)) * dt;
            t += dt;
        }
        assert!(
            (sum - p.cdf(3_600.0)).abs() < 1e-6,
            "{sum} vs {}",
            p.cdf(3_600.0)
        );
        for u in [0.001, 0.1, 0.5, 0.99] {
            let t = p.quantile(u).unwrap();
            assert!((p.cdf(t) - u).abs() < 1e-6);
        }
        assert_eq!(p.quantile(1.0), None);
    }

    #[test]
    fn the_peak_second_is_early_and_about_one_in_five_thousand() {
        let grid = Grid::new(Profile::default());
        let shares: Vec<f64> = (0..HORIZON_S).map(|k| grid.share(k)).collect();
        let (at, share) = peak(&shares);
        assert!((10..40).contains(&at), "peak at {at}");
        assert!((1.0 / share - 5_200.0).abs() < 300.0, "1/{}", 1.0 / share);
    }

    #[test]
    fn grid_lookups_agree_with_the_exact_inverse() {
        let grid = Grid::new(Profile::default());
        for ratio in [
            0.0001, 0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.999, 0.999_999,
        ] {
            let exact = grid.profile.quantile(ratio).unwrap();
            let fast = grid.sellout_s(1.0 / ratio, 1.0).unwrap();
            assert!(
                (fast - exact).abs() <= 1e-4 * exact.max(1.0),
                "{ratio}: {fast} vs {exact}"
            );
        }
        assert_eq!(grid.sellout_s(10.0, 10.0), None);
        assert_eq!(grid.sellout_s(-3.0, 1.0), None);
    }

    #[test]
    fn fluid_sale_conserves_stock_and_attempts() {
        let grid = Grid::new(Profile::default());
        let items = [
            ItemDemand {
                demand: 1_000.0,
                stock: 50.0,
            },
            ItemDemand {
                demand: 100.0,
                stock: 60.0,
            },
            ItemDemand {
                demand: 10.0,
                stock: 20.0,
            },
        ];
        let sale = FluidSale::new(&grid, &items);
        let t0 = sale.sellout_s[0].unwrap();
        assert!((grid.profile.cdf(t0) - 0.05).abs() < 1e-6);
        assert!(sale.sellout_s[1].unwrap() > t0);
        assert_eq!(sale.sellout_s[2], None);
        // Within the horizon: item 0 sells all 50, the others their arrivals.
        let f = grid.cdf[HORIZON_S];
        let t1 = sale.sellout_s[1].unwrap();
        let sold1 = if t1 < HORIZON_S as f64 {
            60.0
        } else {
            100.0 * f
        };
        let want = 50.0 + sold1 + 10.0 * f;
        let got: f64 = sale.accepted.iter().sum();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let attempts: f64 = sale.attempts.iter().sum();
        assert!((attempts - 1_110.0 * f).abs() < 1e-6);
    }

    #[test]
    fn payments_follow_orders_by_the_delay() {
        let mut accepted = vec![0.0; 100];
        accepted[10] = 8.0;
        let kernel = vec![(5, 0.5), (20, 0.5)];
        let paid = payments(&accepted, 0.5, &kernel);
        assert_eq!(paid[15], 2.0);
        assert_eq!(paid[30], 2.0);
        assert_eq!(paid.iter().sum::<f64>(), 4.0);
        let mut delays = vec![3.0; 10];
        assert!(kernel_from_delays(&mut delays).iter().all(|&(d, _)| d == 3));
    }
}
