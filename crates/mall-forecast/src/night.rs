//! A night forecast fitted from a past night, instead of stated.
//!
//! A past night (last year's sale, or an earlier rehearsal) gives two
//! things the normal days cannot:
//! - **how many requests the night's intent turns into**: the requests
//!   attempted from the opening over the intent signals left before it
//!   (favourites, carts and pre-sale deposits): `attempts_per_signal`;
//! - **the arrival profile**: the share of those attempts in each second
//!   after the opening, and so the peak's share and when it comes.
//!
//! The night to come is then its own signals (read before its opening)
//! times `attempts_per_signal`, spread by the past night's profile. The
//! peak compared in a backtest is the peak of *attempted* requests (what
//! the clients sent, by intended send time), not what the server served:
//! the server clips a crush it cannot take.
//!
//! The signals are counted at the aggregate: per-item shares are not
//! needed for the peak, and the aggregate's noise is far smaller.

use crate::event::{read_dir, Kind};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Intent left before an opening.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    pub favorites: u64,
    pub carts: u64,
    pub deposits: u64,
}

impl Signals {
    pub fn total(&self) -> u64 {
        self.favorites + self.carts + self.deposits
    }
}

/// The signals in an event log in `[since_ms, opens_at_ms)`.
pub fn signals(events_dir: &Path, since_ms: i64, opens_at_ms: i64) -> Result<Signals, Error> {
    let mut s = Signals::default();
    read_dir(events_dir, |e| {
        if e.t_ms < since_ms || e.t_ms >= opens_at_ms {
            return;
        }
        match e.kind {
            Kind::Favorite => s.favorites += 1,
            Kind::Cart => s.carts += 1,
            Kind::Deposit => s.deposits += u64::from(e.quantity),
            _ => {}
        }
    })?;
    Ok(s)
}

/// What a past night was: its signals, and the requests attempted in each
/// second from its opening (`attempted[i]`: second `i`).
#[derive(Clone, Debug, PartialEq)]
pub struct PastNight {
    pub signals: Signals,
    pub attempted: Vec<u64>,
}

/// The fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NightFit {
    pub attempts_per_signal: f64,
    /// The busiest second's share of all attempts.
    pub peak_share: f64,
    /// Its second after the opening.
    pub peak_at_s: u32,
    /// Each second's share of the attempts, from the opening.
    pub profile: Vec<f64>,
}

/// A night forecast from a fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NightForecast {
    pub signals: Signals,
    pub attempts: f64,
    /// Requests attempted in the busiest second.
    pub peak_per_s: f64,
    pub peak_at_s: u32,
}

impl NightFit {
    pub fn fit(past: &PastNight) -> Result<NightFit, Error> {
        let attempts: u64 = past.attempted.iter().sum();
        if past.signals.total() == 0 || attempts == 0 {
            return Err(Error::HistoryTooShort {
                reason: format!(
                    "the past night has {} signals before its opening and {attempts} attempts after it",
                    past.signals.total()
                ),
            });
        }
        let (peak_at, peak) = past
            .attempted
            .iter()
            .enumerate()
            .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
            .map(|(i, n)| (i as u32, *n))
            .unwrap_or_default();
        let total = attempts as f64;
        Ok(NightFit {
            attempts_per_signal: total / past.signals.total() as f64,
            peak_share: peak as f64 / total,
            peak_at_s: peak_at,
            profile: past.attempted.iter().map(|n| *n as f64 / total).collect(),
        })
    }

    pub fn forecast(&self, signals: Signals) -> NightForecast {
        let attempts = signals.total() as f64 * self.attempts_per_signal;
        NightForecast {
            signals,
            attempts,
            peak_per_s: attempts * self.peak_share,
            peak_at_s: self.peak_at_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fit_carries_the_past_nights_ratio_and_profile() {
        let past = PastNight {
            signals: Signals {
                favorites: 600,
                carts: 300,
                deposits: 100,
            },
            attempted: vec![4_000, 6_000, 2_000, 1_000, 0, 0],
        };
        let fit = NightFit::fit(&past).unwrap();
        assert_eq!(fit.attempts_per_signal, 13.0);
        assert_eq!((fit.peak_at_s, fit.peak_share), (1, 6.0 / 13.0));
        assert!((fit.profile.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Twice the intent: twice the night, the same shape.
        let f = fit.forecast(Signals {
            favorites: 1_200,
            carts: 600,
            deposits: 200,
        });
        assert_eq!(
            (f.attempts, f.peak_per_s, f.peak_at_s),
            (26_000.0, 12_000.0, 1)
        );
        // Nothing to fit from.
        let empty = PastNight {
            signals: Signals::default(),
            attempted: vec![5],
        };
        assert!(NightFit::fit(&empty).is_err());
    }
}
