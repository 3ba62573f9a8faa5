//! A small seeded random number generator (SplitMix64) and the few
//! distributions the generator and the forecast's draws need.
//!
//! SplitMix64 is not cryptographic; it is fast, passes BigCrush, and gives
//! the same stream for the same seed on every platform, which is all a
//! reproducible synthetic history and a reproducible Monte Carlo need.

/// SplitMix64 (Steele, Lea, Flood 2014). Same seed, same stream.
#[derive(Clone, Debug)]
pub struct Rng {
    /// The generator's whole state; advanced by a fixed odd constant per draw.
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
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; `n` must be positive. The modulo bias is below
    /// 2^-40 for the sizes used here.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box-Muller; one of the pair is dropped for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and log-space standard deviation.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Poisson with mean `lambda`: exact by multiplication below 30, a
    /// rounded normal above (its error is far below the model's own noise).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut product = self.unit();
            let mut n = 0;
            while product > limit {
                product *= self.unit();
                n += 1;
            }
            return n;
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
    }

    /// An index drawn from a cumulative weight table (last entry = total).
    pub fn pick(&mut self, cumulative: &[f64]) -> usize {
        assert!(!cumulative.is_empty());
        let total = cumulative[cumulative.len() - 1];
        let x = self.unit() * total;
        cumulative
            .partition_point(|&c| c <= x)
            .min(cumulative.len() - 1)
    }
}

/// Running sums of `weights`, for [`Rng::pick`].
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
    fn same_seed_same_stream() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        // The reference output of SplitMix64 for seed 0.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = Rng::new(3);
        let n = 40_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        assert!((mean(&mut || rng.unit()) - 0.5).abs() < 0.01);
        assert!(mean(&mut || rng.normal()).abs() < 0.02);
        assert!((mean(&mut || rng.exponential(3.0)) - 3.0).abs() < 0.1);
        assert!((mean(&mut || rng.poisson(4.0) as f64) - 4.0).abs() < 0.05);
        assert!((mean(&mut || rng.poisson(400.0) as f64) - 400.0).abs() < 0.5);
        let table = cumulative(&[1.0, 0.0, 3.0]);
        let picks: Vec<usize> = (0..n).map(|_| rng.pick(&table)).collect();
        assert!(!picks.contains(&1));
        let share = picks.iter().filter(|&&i| i == 2).count() as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.01);
    }
}
