//! The forecast's draws come from the house's one generator,
//! [`mall_core::rng::Rng`] (SplitMix64: the same stream for the same seed on
//! every platform, which is all a reproducible synthetic history and a
//! reproducible Monte Carlo need).

pub use mall_core::rng::{cumulative, Rng};
