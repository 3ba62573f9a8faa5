//! The house's one seeded random generator: SplitMix64. Tiny and fast, so a
//! simulation or a simulator run is reproducible from its seed. Not for
//! secrets (those come from the OS).
//!
//! Its probabilities are fractions: `chance(p)` is true with probability
//! `p` in `[0, 1]`, exactly never at 0 and always at 1. Every simulation,
//! property test, simulator and generator of the house draws from it.

/// z-score of the 99th percentile of the standard normal distribution.
const Z_P99: f64 = 2.326_347_874_040_841;

#[derive(Clone, Debug)]
pub struct Rng {
    /// The whole state: advanced by the golden-ratio increment per draw.
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator for a sub-stream, so that adding draws to one part of a
    /// generation does not shift the draws of another.
    pub fn fork(&mut self, stream: u64) -> Rng {
        Rng::new(self.next_u64() ^ stream.wrapping_mul(0xd6e8_feb8_6659_fd93))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no value to draw");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo).saturating_add(1).max(1)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (0: never, 1: always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }

    /// An index drawn from a cumulative weight table (last entry = total;
    /// see [`cumulative`]).
    pub fn pick_weighted(&mut self, cumulative: &[f64]) -> usize {
        assert!(!cumulative.is_empty());
        let total = cumulative[cumulative.len() - 1];
        let x = self.next_f64() * total;
        cumulative
            .partition_point(|&c| c <= x)
            .min(cumulative.len() - 1)
    }

    /// Log-normal with the given median and log-space standard deviation.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }

    /// Poisson with mean `lambda`: exact by multiplication below 30, a
    /// rounded normal above.
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut product = self.next_f64();
            let mut n = 0;
            while product > limit {
                product *= self.next_f64();
                n += 1;
            }
            return n;
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
    }

    /// Standard normal, by Box-Muller (one of the pair is thrown away).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and 99th percentile, in ms,
    /// bounded by `max_ms`.
    pub fn log_normal_ms(&mut self, median_ms: u64, p99_ms: u64, max_ms: u64) -> u64 {
        assert!(median_ms >= 1 && p99_ms >= median_ms);
        let mu = (median_ms as f64).ln();
        let sigma = ((p99_ms as f64).ln() - mu) / Z_P99;
        let ms = (mu + sigma * self.normal()).exp();
        (ms.round() as u64).min(max_ms)
    }
}

/// Running sums of `weights`, for [`Rng::pick_weighted`].
pub fn cumulative(weights: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            assert!(*w >= 0.0 && w.is_finite(), "weights are finite and >= 0");
            acc += w;
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let x: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let y: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(x, y);
        assert_ne!(x[0], Rng::new(8).next_u64());
        // The reference output of SplitMix64 for seed 0.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = Rng::new(3);
        let n = 40_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        assert!((mean(&mut || rng.next_f64()) - 0.5).abs() < 0.01);
        assert!(mean(&mut || rng.normal()).abs() < 0.02);
        assert!((mean(&mut || rng.exponential(3.0)) - 3.0).abs() < 0.1);
        assert!((mean(&mut || rng.poisson(4.0) as f64) - 4.0).abs() < 0.05);
        assert!((mean(&mut || rng.poisson(400.0) as f64) - 400.0).abs() < 0.5);
        let table = cumulative(&[1.0, 0.0, 3.0]);
        let picks: Vec<usize> = (0..n).map(|_| rng.pick_weighted(&table)).collect();
        assert!(!picks.contains(&1));
        let share = picks.iter().filter(|&&i| i == 2).count() as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.01);
    }

    #[test]
    fn chance_is_exact_at_the_ends() {
        let mut r = Rng::new(1);
        assert!((0..10_000).all(|_| !r.chance(0.0)));
        assert!((0..10_000).all(|_| r.chance(1.0)));
        let hits = (0..100_000).filter(|_| r.chance(0.25)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
    }

    #[test]
    fn below_and_between_stay_in_range() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            assert!((5..=9).contains(&r.between(5, 9)));
        }
        assert_eq!(r.between(4, 4), 4);
    }
}
