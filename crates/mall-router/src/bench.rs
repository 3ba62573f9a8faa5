//! A micro-benchmark of the router's hot path, for the report and for
//! spotting regressions by eye: the wall time of one routing decision
//! (`submit` plus the `complete` of an attempt) with healthy channels and
//! virtual time advancing fast enough that capacity is never the limit.
//!
//! The only place in the crate that reads a clock ([`Instant`]); the router
//! itself stays clock-free.

use crate::router::{
    AttemptId, ChannelConfig, Decision, Event, Outcome, PayMethod, Router, RouterConfig,
};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Attempts kept in flight while measuring, so the in-flight map is not
/// trivially empty.
const PIPELINE_DEPTH: usize = 32;
/// `poll` is called once per this many decisions (timeouts, refresh).
const POLL_EVERY: u64 = 64;
const CAPACITY_PER_S: u32 = 50_000;

/// Average wall time per routing decision with `channels` healthy channels
/// (1..=64), over `decisions` decisions (≥ 1). The offered load is half the
/// total capacity.
pub fn decision_cost(channels: usize, decisions: u64) -> Duration {
    assert!((1..=crate::router::CHANNELS_MAX).contains(&channels));
    assert!(decisions >= 1);
    let configs = (0..channels)
        .map(|i| ChannelConfig {
            name: format!("bench-{i}"),
            methods: PayMethod::ALL.to_vec(),
            capacity_per_s: CAPACITY_PER_S,
            max_concurrency: 1_000,
            fee_bp: 60 + (i as u32 % 4) * 5,
            priority: (i % 2) as u8,
        })
        .collect();
    let mut router = Router::new(configs, RouterConfig::default(), 0);
    // Half the total capacity: 2 s / (total per second) between decisions.
    let step_us = (2_000_000 / (u64::from(CAPACITY_PER_S) * channels as u64)).max(1) as i64;
    let mut pipeline: VecDeque<AttemptId> = VecDeque::with_capacity(PIPELINE_DEPTH + 64);
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut now_us = 0i64;

    let start = Instant::now();
    for i in 0..decisions {
        now_us += step_us;
        let attempt = AttemptId(i);
        let method = PayMethod::ALL[(i % 2) as usize];
        match router.submit(attempt, method, &[], now_us) {
            Decision::Dispatch { .. } => pipeline.push_back(attempt),
            Decision::Queued | Decision::Refused(_) => {}
        }
        if pipeline.len() > PIPELINE_DEPTH {
            let done = pipeline.pop_front().expect("not empty");
            black_box(router.complete(done, Outcome::Succeeded, now_us));
        }
        if i % POLL_EVERY == 0 {
            router.poll(now_us, &mut events);
            for e in events.drain(..) {
                if let Event::Dispatch { attempt, .. } = e {
                    pipeline.push_back(attempt);
                }
            }
        }
    }
    let elapsed = start.elapsed();
    black_box(&router);
    Duration::from_nanos((elapsed.as_nanos() / u128::from(decisions)) as u64)
}
