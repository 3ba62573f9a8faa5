//! SplitMix64: a tiny seeded generator, so a simulator run is reproducible
//! from its seed (given the same order of requests). Not for secrets.

/// z-score of the 99th percentile of the standard normal distribution.
const Z_P99: f64 = 2.326_347_874_040_841;

#[derive(Clone, Debug)]
pub struct SplitMix64 {
    /// The whole state: advanced by the golden-ratio increment per draw.
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (0 never, 1 always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
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
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut c = SplitMix64::new(8);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        // The reference value of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn log_normal_hits_its_median_and_p99() {
        let mut rng = SplitMix64::new(42);
        let mut draws: Vec<u64> = (0..20_000)
            .map(|_| rng.log_normal_ms(40, 400, 600_000))
            .collect();
        draws.sort_unstable();
        let median = draws[draws.len() / 2];
        let p99 = draws[draws.len() * 99 / 100];
        assert!((36..=44).contains(&median), "median {median}");
        assert!((330..=480).contains(&p99), "p99 {p99}");
        assert!(draws.iter().all(|&d| d <= 600_000));
        let mut flat = SplitMix64::new(1);
        assert!((0..100).all(|_| flat.log_normal_ms(25, 25, 1000) == 25));
    }

    #[test]
    fn chance_is_exact_at_the_ends() {
        let mut rng = SplitMix64::new(3);
        assert!((0..1000).all(|_| rng.chance(1.0)));
        assert!((0..1000).all(|_| !rng.chance(0.0)));
    }
}
