//! The sale model fitted from last year's night, when a history holds one
//! (`past/`: that year's days and catalog, and `past/night.json`, the order
//! attempts the mall saw per item and per second; see [`crate::history`]).
//!
//! - **Signal shares.** Last year's intent window, read exactly as this
//!   year's is (each signal's count over its normal background), gives the
//!   signals the night's shoppers left; last year's night gives how many
//!   shoppers there were: its attempts over `attempts_per_wanter`. Each
//!   share is the signal's excess over all items over those shoppers.
//!   Summed over items, the background's errors and the binomial noise
//!   mostly cancel; per item they would not.
//! - **Profile.** The four parameters of [`Profile`] that make its CDF
//!   closest to the night's observed one over its first hour (squared
//!   errors of the log-CDF at log-spaced seconds, with the hour's share of
//!   the whole night), by a pattern search in log-parameters from the
//!   stated profile.
//!
//! What stays stated: `attempts_per_wanter` (it cancels: the shares are
//! per wanter as the night counts them), and the uncertainties (log-sds),
//! which now cover a year-on-year change of habits rather than ignorance.

use crate::catalog::Catalog;
use crate::history::{PastNightLog, PAST_DIR, PAST_NIGHT_FILE};
use crate::model::{Profile, SaleModel, SignalShares, RAMP_S_MAX};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What was fitted, and from what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PastFit {
    /// Last year's opening.
    pub opens_at_ms: i64,
    /// Last year's order attempts, and its shoppers (attempts over
    /// `attempts_per_wanter`).
    pub attempts: f64,
    pub wanters: f64,
    /// Last year's favourites, carts and deposits over their background.
    pub excess: [f64; 3],
    pub signal_share: SignalShares,
    pub profile: Profile,
    /// Root mean square error of the fitted log-CDF at the points fitted.
    pub profile_rmse: f64,
}

/// Shares are kept inside these bounds (a share of 0 would divide by 0).
const SHARE_MIN: f64 = 1e-3;
const SHARE_MAX: f64 = 0.98;

/// The fit from `history_dir`'s last year, or `None` if it holds none.
pub fn fit(history_dir: &Path, model: &SaleModel) -> Result<Option<PastFit>, Error> {
    let dir = history_dir.join(PAST_DIR);
    let path = dir.join(PAST_NIGHT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let log = PastNightLog::load(&path)?;
    let catalog = Catalog::load(&dir)?;
    let attempts: f64 = log.items.iter().map(|i| i.attempts.max(0.0)).sum();
    let seen: f64 = log.attempts_per_s.iter().sum();
    if !(attempts > 0.0 && seen > 0.0 && seen <= attempts * (1.0 + 1e-9)) {
        return Err(Error::InvalidParams(format!(
            "{}: {attempts} attempts in all, {seen} in its first hour: not a night to fit",
            path.display()
        )));
    }
    let excess =
        crate::forecast::signal_excess(&catalog, &dir, log.opens_at_ms, model.intent_window_days)?;
    let wanters = attempts / model.attempts_per_wanter;
    let share = |k: usize| (excess[k] / wanters).clamp(SHARE_MIN, SHARE_MAX);
    let (profile, profile_rmse) = fit_profile(&log.attempts_per_s, attempts, model.profile);
    Ok(Some(PastFit {
        opens_at_ms: log.opens_at_ms,
        attempts,
        wanters,
        excess,
        signal_share: SignalShares {
            favorite: share(0),
            cart: share(1),
            deposit: share(2),
        },
        profile,
        profile_rmse,
    }))
}

/// The profile whose CDF best matches the observed one: `per_s[k]`
/// attempts in second `k` of `total`.
fn fit_profile(per_s: &[f64], total: f64, start: Profile) -> (Profile, f64) {
    // The observed CDF at 1, 2, ... 10 s, then every 12 % up to the hour.
    let mut cdf = Vec::with_capacity(per_s.len() + 1);
    let mut sum = 0.0;
    cdf.push(0.0);
    for a in per_s {
        sum += a;
        cdf.push(sum / total);
    }
    let mut times: Vec<usize> = (1..=10).collect();
    let mut t = 10.0_f64;
    while (t as usize) < per_s.len() {
        t *= 1.12;
        times.push((t as usize).min(per_s.len()));
    }
    times.dedup();
    let points: Vec<(f64, f64)> = times
        .into_iter()
        .filter(|&t| cdf[t] > 0.0)
        .map(|t| (t as f64, cdf[t].ln()))
        .collect();
    let loss = |p: &Profile| -> f64 {
        if p.check().is_err() {
            return f64::INFINITY;
        }
        points
            .iter()
            .map(|(t, obs)| {
                let m = p.cdf(*t);
                if m > 0.0 {
                    (m.ln() - obs).powi(2)
                } else {
                    1e6
                }
            })
            .sum()
    };
    // Log-parameters: ramp, rush, the rush share's logit, tail.
    let to = |p: &Profile| {
        [
            p.ramp_s.ln(),
            p.rush_s.ln(),
            (p.rush_share / (1.0 - p.rush_share)).ln(),
            p.tail_s.ln(),
        ]
    };
    let from = |x: &[f64; 4]| Profile {
        ramp_s: x[0].exp().min(RAMP_S_MAX),
        rush_s: x[1].exp(),
        rush_share: 1.0 / (1.0 + (-x[2]).exp()),
        tail_s: x[3].exp(),
    };
    let f = |x: &[f64; 4]| loss(&from(x));
    // Nelder-Mead, restarted from its own best until it stops improving.
    let mut x = to(&start);
    let mut best = f(&x);
    for _ in 0..8 {
        let (y, l) = nelder_mead(&f, x, 0.5, 2_000);
        let improved = l < best * (1.0 - 1e-9);
        if l < best {
            (x, best) = (y, l);
        }
        if !improved {
            break;
        }
    }
    let rmse = (best / points.len().max(1) as f64).sqrt();
    (from(&x), rmse)
}

/// Minimizes `f` from `x0` (initial simplex steps `step`), at most `iters`
/// iterations: the point and its value.
fn nelder_mead(
    f: &impl Fn(&[f64; 4]) -> f64,
    x0: [f64; 4],
    step: f64,
    iters: usize,
) -> ([f64; 4], f64) {
    let mut simplex: Vec<([f64; 4], f64)> = (0..5)
        .map(|i| {
            let mut x = x0;
            if i > 0 {
                x[i - 1] += step;
            }
            (x, f(&x))
        })
        .collect();
    let at = |a: &[f64; 4], b: &[f64; 4], t: f64| -> [f64; 4] {
        std::array::from_fn(|k| a[k] + t * (b[k] - a[k]))
    };
    for _ in 0..iters {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let spread = simplex[4].1 - simplex[0].1;
        if spread.abs() <= 1e-14 * simplex[0].1.abs().max(1e-300) {
            break;
        }
        let centroid: [f64; 4] =
            std::array::from_fn(|k| simplex[..4].iter().map(|p| p.0[k]).sum::<f64>() / 4.0);
        let worst = simplex[4];
        let reflected = at(&centroid, &worst.0, -1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = at(&centroid, &worst.0, -2.0);
            let fe = f(&expanded);
            simplex[4] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[3].1 {
            simplex[4] = (reflected, fr);
        } else {
            let contracted = at(&centroid, &worst.0, 0.5);
            let fc = f(&contracted);
            if fc < worst.1 {
                simplex[4] = (contracted, fc);
            } else {
                let best = simplex[0].0;
                for p in simplex.iter_mut().skip(1) {
                    p.0 = at(&best, &p.0, 0.5);
                    p.1 = f(&p.0);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Grid;

    /// A night drawn from a known profile is fitted back to it.
    #[test]
    fn a_profile_is_recovered_from_its_first_hour() {
        let truth = Profile {
            ramp_s: 5.0,
            rush_s: 900.0,
            rush_share: 0.45,
            tail_s: 20_000.0,
        };
        let grid = Grid::new(truth);
        let total = 1e6;
        let per_s: Vec<f64> = (0..3_600).map(|k| total * grid.share(k)).collect();
        let (fitted, rmse) = fit_profile(&per_s, total, Profile::default());
        assert!(rmse < 1e-3, "{rmse} {fitted:?}");
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 0.05;
        assert!(close(fitted.ramp_s, truth.ramp_s), "{fitted:?}");
        assert!(close(fitted.rush_s, truth.rush_s), "{fitted:?}");
        assert!(close(fitted.rush_share, truth.rush_share), "{fitted:?}");
        assert!(close(fitted.tail_s, truth.tail_s), "{fitted:?}");
    }
}
