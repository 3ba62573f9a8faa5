//! The house's one seeded random generator: SplitMix64. Tiny and fast, so a
//! simulation or a simulator run is reproducible from its seed. Not for
//! secrets (those come from the OS).
//!
//! Its probabilities are fractions: `chance(p)` is true with probability
//! `p` in `[0, 1]`, exactly never at 0 and always at 1.

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
