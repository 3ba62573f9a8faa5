//! Lock-free counters and histograms, cheap enough for the hot path, read by
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed upper bounds (Prometheus style, cumulative on read).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, plus one for +Inf.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

/// Seconds, for latencies: 50 µs to 10 s.
pub const LATENCY_BOUNDS_S: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Counts, for batch sizes: 1 to 65,536.
pub const SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// `(sum, count, buckets)`: the buckets cumulative, `(upper bound,
    /// observations at or below it)`, the last one +Inf.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, cumulative));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, cumulative, buckets)
    }
}

/// What one shard's runtime counts.
#[derive(Debug)]
pub struct ShardStats {
    /// Commands per apply batch.
    pub apply_batch_commands: Histogram,
    /// Effects per committed batch.
    pub commit_batch_effects: Histogram,
    /// Time to commit one batch (one transaction, one fsync).
    pub commit_seconds: Histogram,
    pub commit_failures: AtomicU64,
    pub reloads: AtomicU64,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            apply_batch_commands: Histogram::new(SIZE_BOUNDS),
            commit_batch_effects: Histogram::new(SIZE_BOUNDS),
            commit_seconds: Histogram::new(LATENCY_BOUNDS_S),
            commit_failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        }
    }
}

impl ShardStats {
    pub(crate) fn record_apply(&self, commands: usize) {
        if commands > 0 {
            self.apply_batch_commands.observe(commands as f64);
        }
    }

    pub(crate) fn record_commit(&self, effects: usize, took: Duration) {
        self.commit_batch_effects.observe(effects as f64);
        self.commit_seconds.observe_duration(took);
    }
}
