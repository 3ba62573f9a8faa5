//! The payment channel scheduler ("peak shaving, valley filling"): which
//! payment channel (provider) each online payment attempt goes to, and when.
//!
//! Providers have hard limits (a rate per second, a number of requests in
//! flight) and fail: they refuse, or go silent. At a flash sale the payment
//! wave is many times what the channels take, and it lasts seconds. The
//! router keeps every channel at or under its limits, spreads the load over
//! the healthy channels in proportion to what each can take, cuts a failing
//! channel off quickly (a circuit breaker), and holds the peak in a bounded
//! FIFO queue with a deadline per entry, releasing it at the channels' pace
//! as capacity frees ("peak shaving, valley filling").
//!
//! Sans-IO and deterministic: no clock (every method takes `now_us`, virtual
//! time in microseconds; a time earlier than one already seen is taken as
//! that one), no randomness (weighted choice is nginx's smooth weighted
//! round-robin), no I/O. The caller sends the requests: [`Router::submit`]
//! answers at once, [`Router::complete`] feeds outcomes back,
//! [`Router::poll`] hands out what time made happen ([`Event`]s) and
//! [`Router::next_wake`] says when to call it next.
//!
//! An [`AttemptId`] names one try of a payment at one channel. A retry after
//! a failure or [`Event::TimedOut`] takes a fresh id (and `exclude`s the
//! channels already tried): a late answer to the old try then cannot be
//! mistaken for an answer to the new one. Submitting an id that is still
//! queued or in flight is a bug of the caller and is asserted (before any
//! state changes).
//!
//! How a channel is paced: two checks, both must pass. (1) GCRA at
//! `capacity_per_s` with a burst tolerance of `pace_burst_us` smooths the
//! flow. (2) An exact sliding log of the channel's dispatch times in the
//! last second (at most `capacity_per_s` entries) refuses a dispatch that
//! would make `capacity_per_s + 1` in any window of 1 s; GCRA alone with a
//! burst could exceed that by the burst.
//!
//! How a channel is chosen among those that may take an attempt now: smooth
//! weighted round-robin over `capacity_per_s × health × latency × cost ×
//! priority × headroom`, where health is the squared (smoothed) success
//! rate in the window, latency a penalty when the channel's p99 is over
//! twice the others' median, cost `((min fee + 50) / (fee + 50))²` in basis
//! points, priority `1 / (1 + priority)`, and headroom the smaller of the
//! unused shares of this second's capacity and of the concurrency. The
//! health and latency factors are refreshed every `refresh_us`; headroom is
//! read at each decision. A half-open channel with a probe slot free is
//! chosen before any other (lowest index first): its weight still carries
//! the failures that opened it, and recovery should not wait on it.
//!
//! Circuit breaker per channel: Closed → Open when the window holds at least
//! `breaker_min_samples` outcomes and failed + timed out ≥
//! `breaker_failure_ratio` of them, or after `breaker_consecutive_failures`
//! failures or timeouts in a row; Open → HalfOpen after
//! `breaker_open_for_us`; HalfOpen admits `half_open_probes` probes: all
//! succeed → Closed with a fresh window, any fails → Open again. Only
//! outcomes of attempts sent in the current breaker period move the
//! breaker (a late success of an attempt sent before the trip is no probe).
//!
//! The queue: one FIFO per (method, `exclude` set), in submission order,
//! one deadline per entry, so an entry waits only behind entries that want
//! the same channels: a retry that may only go to a channel whose breaker
//! is open never holds back attempts another channel could take now (the
//! head-of-line blocking that once stalled the night's payments). While a
//! method has entries queued, a new attempt of that method is queued too
//! (no overtaking at submission). The release takes, over all queues, the
//! oldest head that a channel free now may serve.
//!
//! Architecture invariants (asserted at the end of every `poll`, and the
//! per-channel ones at every dispatch):
//! - no channel is sent more than `capacity_per_s` attempts in any window
//!   of 1 s, nor has more than `max_concurrency` in flight;
//! - every submitted attempt ends as exactly one of: dispatched (then
//!   completed, or timed out), refused at submission, or expired in the
//!   queue; an attempt id is queued or in flight at most once at a time;
//! - everything is bounded by the configuration: in flight ≤ Σ
//!   `max_concurrency`, queued ≤ `queue_max`, the sliding logs ≤ Σ
//!   `capacity_per_s` timestamps, all allocated in `Router::new`; `submit`,
//!   `complete` and `poll` do not allocate (bar the caller's event vector;
//!   the attempt map is reserved at twice its bound, so its tombstones are
//!   cleared by rehashing in place).

use std::collections::{HashMap, VecDeque};
use std::fmt;

/// Channels a router holds, at most (channel sets are `u64` bit masks).
pub const CHANNELS_MAX: usize = 64;
/// Largest `capacity_per_s`: the sliding log takes 8 bytes per unit.
pub const CAPACITY_PER_S_MAX: u32 = 100_000;
/// Largest `max_concurrency` of a channel.
pub const CONCURRENCY_MAX: u32 = 100_000;
/// Largest `queue_max`.
pub const QUEUE_MAX_MAX: usize = 1_000_000;
/// The health window is cut into this many buckets.
pub const WINDOW_BUCKETS: usize = 10;
/// Latency histogram bins: two per power of two of microseconds, the last
/// one open-ended (from 2^23.5 µs ≈ 11.9 s).
const LATENCY_BINS: usize = 48;
const SECOND_US: i64 = 1_000_000;
const NIL: u32 = u32::MAX;

const _: () = assert!(CHANNELS_MAX <= u64::BITS as usize);
// Slot indices are u32 with NIL reserved.
const _: () = assert!((CHANNELS_MAX as u64) * (CONCURRENCY_MAX as u64) < NIL as u64);

/// How an online payment is made at a provider: the one list of methods,
/// shared by the router, the payment service, the channels file and the
/// provider simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayMethod {
    Card,
    ThirdParty,
}

impl PayMethod {
    pub const ALL: [PayMethod; 2] = [PayMethod::Card, PayMethod::ThirdParty];

    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::Card => "card",
            PayMethod::ThirdParty => "third_party",
        }
    }

    pub fn parse(s: &str) -> Option<PayMethod> {
        PayMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }

    fn index(self) -> usize {
        match self {
            PayMethod::Card => 0,
            PayMethod::ThirdParty => 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// Unique among the router's channels.
    pub name: String,
    /// Not empty.
    pub methods: Vec<PayMethod>,
    /// Dispatches in any window of 1 s, at most. 1..=CAPACITY_PER_S_MAX.
    pub capacity_per_s: u32,
    /// Attempts in flight, at most. 1..=CONCURRENCY_MAX.
    pub max_concurrency: u32,
    /// The channel's fee in basis points of the amount (≤ 10_000).
    pub fee_bp: u32,
    /// 0 = most preferred.
    pub priority: u8,
}

#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Attempts waiting in the queue, at most (over all methods).
    pub queue_max: usize,
    /// An attempt queued this long without a channel expires.
    pub queue_deadline_us: i64,
    /// An attempt in flight this long without an outcome times out.
    pub attempt_timeout_us: i64,
    /// The health window (success, failure, timeout counts and latency),
    /// in `WINDOW_BUCKETS` buckets.
    pub window_us: i64,
    /// GCRA burst tolerance: a channel idle for a while may take
    /// `1 + capacity_per_s × pace_burst_us / 1 s` attempts back to back.
    /// 0..=1 s.
    pub pace_burst_us: i64,
    /// Outcomes in the window before the failure ratio may open a breaker.
    pub breaker_min_samples: u32,
    /// (failed + timed out) / outcomes in the window that opens a breaker.
    /// In (0, 1].
    pub breaker_failure_ratio: f64,
    /// Failures or timeouts in a row that open a breaker.
    pub breaker_consecutive_failures: u32,
    /// How long an open breaker refuses all traffic before probing.
    pub breaker_open_for_us: i64,
    /// Probes a half-open breaker sends; all must succeed to close it.
    pub half_open_probes: u32,
    /// The health and latency factors of the weights are recomputed at
    /// least this often.
    pub refresh_us: i64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            queue_max: 10_000,
            queue_deadline_us: 5 * SECOND_US,
            attempt_timeout_us: SECOND_US,
            window_us: 10 * SECOND_US,
            pace_burst_us: 100_000,
            breaker_min_samples: 5,
            breaker_failure_ratio: 0.5,
            breaker_consecutive_failures: 5,
            breaker_open_for_us: 3 * SECOND_US,
            half_open_probes: 3,
            refresh_us: SECOND_US,
        }
    }
}

/// A configuration the router cannot run with (an operating error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    TooManyChannels {
        count: usize,
    },
    DuplicateChannel {
        name: String,
    },
    Channel {
        name: String,
        reason: &'static str,
    },
    Router {
        field: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::TooManyChannels { count } => {
                write!(f, "{count} payment channels, at most {CHANNELS_MAX}")
            }
            ConfigError::DuplicateChannel { name } => {
                write!(f, "payment channel {name:?} is configured twice")
            }
            ConfigError::Channel { name, reason } => {
                write!(f, "payment channel {name:?}: {reason}")
            }
            ConfigError::Router { field, reason } => write!(f, "payment router {field}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One try of a payment at one channel. Chosen by the caller; a retry takes
/// a fresh id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

/// What a channel answered, as a measure of the channel's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The channel did its work. A payment the shopper's bank declines
    /// (no funds, wrong card) is a success of the channel: report it so,
    /// or declines at a sale would open the breakers of healthy channels.
    Succeeded,
    /// The channel failed: an error, an outage, a refusal for the
    /// channel's own reasons (overloaded, misconfigured).
    Failed,
    /// The provider answered that it timed out.
    TimedOut,
}

/// The answer to [`Router::submit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Send it to this channel now; it counts as in flight there.
    Dispatch {
        channel: usize,
    },
    /// Wait: it comes out of [`Router::poll`] as [`Event::Dispatch`] or
    /// [`Event::QueueExpired`].
    Queued,
    Refused(RouteRefusal),
}

/// Why an attempt was refused at once. Stable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteRefusal {
    /// The queue is at `queue_max`.
    QueueFull,
    /// No configured channel supports the method, apart from those in
    /// `exclude` (the payment has tried them all).
    NoChannelForMethod,
}

impl RouteRefusal {
    pub fn code(self) -> &'static str {
        match self {
            RouteRefusal::QueueFull => "payment_queue_full",
            RouteRefusal::NoChannelForMethod => "no_channel_for_method",
        }
    }
}

/// What time made happen, out of [`Router::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A queued attempt goes now to `channel` (it counts as in flight).
    Dispatch { attempt: AttemptId, channel: usize },
    /// A queued attempt waited past its deadline: fail it cleanly.
    QueueExpired { attempt: AttemptId },
    /// In flight past `attempt_timeout_us`: counted as a failure of the
    /// channel; the caller abandons it (a later answer is ignored) and may
    /// retry with a fresh id, excluding `channel`.
    TimedOut { attempt: AttemptId, channel: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// A channel as seen at the router's latest time.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStatus {
    pub name: String,
    pub circuit: Circuit,
    pub in_flight: u32,
    pub capacity_per_s: u32,
    pub max_concurrency: u32,
    /// Dispatches in the last second.
    pub rate_per_s: f64,
    /// Succeeded / outcomes in the window (1 with no outcomes).
    pub success_rate: f64,
    /// p99 of latency in the window (upper bound of its histogram bin; 0
    /// with no outcomes); timeouts count at their age.
    pub p99_latency_ms: f64,
    /// Timeouts in the window.
    pub timeouts: u64,
    pub dispatched_total: u64,
    pub succeeded_total: u64,
    pub failed_total: u64,
    pub timed_out_total: u64,
}

/// Counts of one bucket of the health window.
#[derive(Clone, Copy)]
struct Bucket {
    /// `time / bucket_us` of the counts; `i64::MIN`: empty.
    epoch: i64,
    succeeded: u32,
    failed: u32,
    timed_out: u32,
    latency: [u32; LATENCY_BINS],
}

const EMPTY_BUCKET: Bucket = Bucket {
    epoch: i64::MIN,
    succeeded: 0,
    failed: 0,
    timed_out: 0,
    latency: [0; LATENCY_BINS],
};

/// The health window: a ring of `WINDOW_BUCKETS` buckets, a bucket reused
/// when its epoch has left the window.
struct Window {
    bucket_us: i64,
    buckets: [Bucket; WINDOW_BUCKETS],
}

#[derive(Clone, Copy, Default)]
struct Counts {
    succeeded: u64,
    failed: u64,
    timed_out: u64,
}

impl Counts {
    fn total(self) -> u64 {
        self.succeeded + self.failed + self.timed_out
    }

    fn success_rate(self) -> f64 {
        if self.total() == 0 {
            1.0
        } else {
            self.succeeded as f64 / self.total() as f64
        }
    }
}

impl Window {
    fn new(window_us: i64) -> Window {
        Window {
            bucket_us: window_us / WINDOW_BUCKETS as i64,
            buckets: [EMPTY_BUCKET; WINDOW_BUCKETS],
        }
    }

    fn reset(&mut self) {
        self.buckets = [EMPTY_BUCKET; WINDOW_BUCKETS];
    }

    fn epoch(&self, now_us: i64) -> i64 {
        now_us.div_euclid(self.bucket_us)
    }

    fn record(&mut self, now_us: i64, outcome: Outcome, latency_us: i64) {
        let epoch = self.epoch(now_us);
        let bucket = &mut self.buckets[epoch.rem_euclid(WINDOW_BUCKETS as i64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..EMPTY_BUCKET
            };
        }
        match outcome {
            Outcome::Succeeded => bucket.succeeded += 1,
            Outcome::Failed => bucket.failed += 1,
            Outcome::TimedOut => bucket.timed_out += 1,
        }
        bucket.latency[latency_bin(latency_us)] += 1;
    }

    fn live(&self, now_us: i64) -> impl Iterator<Item = &Bucket> {
        let epoch = self.epoch(now_us);
        self.buckets
            .iter()
            .filter(move |b| b.epoch <= epoch && b.epoch > epoch - WINDOW_BUCKETS as i64)
    }

    fn counts(&self, now_us: i64) -> Counts {
        let mut c = Counts::default();
        for b in self.live(now_us) {
            c.succeeded += u64::from(b.succeeded);
            c.failed += u64::from(b.failed);
            c.timed_out += u64::from(b.timed_out);
        }
        c
    }

    /// p99 latency in µs (upper edge of its bin), `None` with no outcomes.
    fn p99_us(&self, now_us: i64) -> Option<i64> {
        let mut hist = [0u64; LATENCY_BINS];
        for b in self.live(now_us) {
            for (h, n) in hist.iter_mut().zip(b.latency) {
                *h += u64::from(n);
            }
        }
        let total: u64 = hist.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100; // ceil(0.99 × total) for total ≥ 1
        let mut seen = 0;
        for (bin, n) in hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(latency_bin_upper_us(bin));
            }
        }
        unreachable!("the ranks add up to the total")
    }
}

/// Bin of a latency: 0 for < 2 µs, then two bins per power of two.
fn latency_bin(latency_us: i64) -> usize {
    let v = latency_us.max(0) as u64;
    if v < 2 {
        return 0;
    }
    let msb = 63 - v.leading_zeros() as usize;
    let half = ((v >> (msb - 1)) & 1) as usize;
    (2 * msb + half).min(LATENCY_BINS - 1)
}

fn latency_bin_upper_us(bin: usize) -> i64 {
    if bin < 2 {
        return 2;
    }
    let msb = bin / 2;
    let half = bin % 2;
    (1i64 << msb) + (half as i64 + 1) * (1i64 << (msb - 1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open {
        until_us: i64,
    },
    /// `sent` probes dispatched, `succeeded` of them answered success.
    HalfOpen {
        sent: u32,
        succeeded: u32,
    },
}

struct Channel {
    config: ChannelConfig,
    /// Dispatch times, oldest first, trimmed lazily of those older than 1 s.
    /// At most `capacity_per_s` entries (allocated up front).
    sent_log: VecDeque<i64>,
    /// GCRA theoretical arrival time, in µs × `capacity_per_s`.
    tat: i128,
    /// GCRA burst tolerance, in µs × `capacity_per_s`.
    tau: i128,
    /// Attempts in flight here; ≤ `max_concurrency`.
    in_flight: u32,
    breaker: Breaker,
    /// Bumped at every breaker transition; an attempt remembers the period
    /// it was sent in, and only outcomes of the current period move the
    /// breaker.
    breaker_epoch: u32,
    /// Failures and timeouts in a row (current period).
    consecutive_failures: u32,
    window: Window,
    /// Smooth weighted round-robin: the running weight.
    current_weight: f64,
    /// Cost × priority factor, fixed at construction.
    static_weight: f64,
    /// `static_weight` × health × latency penalty, refreshed every
    /// `refresh_us`.
    base_weight: f64,
    dispatched_total: u64,
    succeeded_total: u64,
    failed_total: u64,
    timed_out_total: u64,
}

impl Channel {
    fn circuit(&self) -> Circuit {
        match self.breaker {
            Breaker::Closed => Circuit::Closed,
            Breaker::Open { .. } => Circuit::Open,
            Breaker::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }

    /// Closed, or half-open with a probe left to send.
    fn circuit_admits(&self, probes: u32) -> bool {
        match self.breaker {
            Breaker::Closed => true,
            Breaker::Open { .. } => false,
            Breaker::HalfOpen { sent, .. } => sent < probes,
        }
    }

    /// Earliest time both pacing checks pass.
    fn pace_ready_at_us(&self) -> i64 {
        let cap = i128::from(self.config.capacity_per_s);
        let gcra = ceil_div(self.tat - self.tau, cap);
        let gcra = gcra.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let log = if self.sent_log.len() < self.config.capacity_per_s as usize {
            i64::MIN
        } else {
            self.sent_log[0].saturating_add(SECOND_US)
        };
        gcra.max(log)
    }

    fn trim_log(&mut self, now_us: i64) {
        while self
            .sent_log
            .front()
            .is_some_and(|&t| t <= now_us - SECOND_US)
        {
            self.sent_log.pop_front();
        }
    }

    /// The weight of this channel in a decision now. `sent_log` is trimmed.
    fn weight(&self) -> f64 {
        let cap = f64::from(self.config.capacity_per_s);
        let rate_headroom = 1.0 - self.sent_log.len() as f64 / cap;
        let max = f64::from(self.config.max_concurrency);
        let concurrency_headroom = 1.0 - f64::from(self.in_flight) / max;
        cap * self.base_weight * rate_headroom.min(concurrency_headroom)
    }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    debug_assert!(b > 0);
    -((-a).div_euclid(b))
}

/// Where a known attempt is.
#[derive(Clone, Copy, Debug)]
enum Active {
    Queued,
    InFlight { slot: u32 },
}

/// An attempt in flight; slots form a list in dispatch order (= timeout
/// order), so timeouts are found at the head.
#[derive(Clone, Copy)]
struct Slot {
    attempt: AttemptId,
    channel: u32,
    dispatched_at_us: i64,
    breaker_epoch: u32,
    prev: u32,
    next: u32,
}

/// The attempts of one method that may go to the same channels.
struct SubQueue {
    method: usize,
    exclude: u64,
    entries: VecDeque<QueueEntry>,
}

#[derive(Clone, Copy)]
struct QueueEntry {
    attempt: AttemptId,
    /// Submission order over all methods.
    seq: u64,
    expires_at_us: i64,
}

pub struct Router {
    config: RouterConfig,
    channels: Vec<Channel>,
    /// Per method (by `PayMethod::index`): the channels that support it.
    method_mask: [u64; PayMethod::ALL.len()],
    /// All channels.
    all_mask: u64,
    /// Every attempt queued or in flight. ≤ `queue_max` + Σ
    /// `max_concurrency` entries (capacity reserved up front).
    active: HashMap<AttemptId, Active>,
    /// In-flight attempts; `slots.len()` ≤ Σ `max_concurrency` (reserved).
    slots: Vec<Slot>,
    /// Unused indices into `slots`.
    free_slots: Vec<u32>,
    /// Oldest and newest in-flight slots (NIL when none).
    oldest: u32,
    newest: u32,
    /// Per method: the FIFO of waiting attempts, in `seq` (and so deadline)
    /// order. Together ≤ `queue_max` entries (each reserved to it).
    /// The waiting attempts, one FIFO per (method, exclude set); never an
    /// empty one, so there are at most `queue_len` of them.
    queues: Vec<SubQueue>,
    queue_len: usize,
    next_seq: u64,
    /// The latest time seen.
    now_us: i64,
    next_refresh_us: i64,
    /// Something changed since the last release pass that may let a queued
    /// attempt go (a slot freed, a breaker moved, an entry queued).
    release_due: bool,
}

impl Router {
    /// Panics on an invalid configuration; see [`Router::try_new`].
    pub fn new(channels: Vec<ChannelConfig>, config: RouterConfig, now_us: i64) -> Router {
        match Router::try_new(channels, config, now_us) {
            Ok(router) => router,
            Err(e) => panic!("invalid payment router configuration: {e}"),
        }
    }

    pub fn try_new(
        channels: Vec<ChannelConfig>,
        config: RouterConfig,
        now_us: i64,
    ) -> Result<Router, ConfigError> {
        validate(&channels, &config)?;
        let fee_min = channels.iter().map(|c| c.fee_bp).min().unwrap_or(0);
        let mut method_mask = [0u64; PayMethod::ALL.len()];
        for (i, c) in channels.iter().enumerate() {
            for m in &c.methods {
                method_mask[m.index()] |= 1 << i;
            }
        }
        let concurrency_sum: usize = channels.iter().map(|c| c.max_concurrency as usize).sum();
        let channels: Vec<Channel> = channels
            .into_iter()
            .map(|config_channel| {
                let cap = i128::from(config_channel.capacity_per_s);
                let cost = f64::from(fee_min + 50) / f64::from(config_channel.fee_bp + 50);
                let static_weight = cost * cost / (1.0 + f64::from(config_channel.priority));
                Channel {
                    sent_log: VecDeque::with_capacity(config_channel.capacity_per_s as usize),
                    tat: i128::from(now_us) * cap,
                    tau: i128::from(config.pace_burst_us) * cap,
                    in_flight: 0,
                    breaker: Breaker::Closed,
                    breaker_epoch: 0,
                    consecutive_failures: 0,
                    window: Window::new(config.window_us),
                    current_weight: 0.0,
                    static_weight,
                    base_weight: static_weight,
                    dispatched_total: 0,
                    succeeded_total: 0,
                    failed_total: 0,
                    timed_out_total: 0,
                    config: config_channel,
                }
            })
            .collect();
        let queues = Vec::new();
        let all_mask = u64::MAX
            .checked_shr(CHANNELS_MAX as u32 - channels.len() as u32)
            .unwrap_or(0);
        // Twice the bound (see the module invariants).
        let active_max = config.queue_max + concurrency_sum;
        Ok(Router {
            active: HashMap::with_capacity(2 * active_max + 2),
            all_mask,
            slots: Vec::with_capacity(concurrency_sum),
            free_slots: Vec::with_capacity(concurrency_sum),
            oldest: NIL,
            newest: NIL,
            queues,
            queue_len: 0,
            next_seq: 0,
            now_us,
            next_refresh_us: now_us + config.refresh_us,
            release_due: false,
            channels,
            method_mask,
            config,
        })
    }

    /// Routes a new attempt. `exclude`: channels this payment already tried
    /// (out-of-range indices are ignored). Panics if `attempt` is queued or
    /// in flight already.
    pub fn submit(
        &mut self,
        attempt: AttemptId,
        method: PayMethod,
        exclude: &[usize],
        now_us: i64,
    ) -> Decision {
        assert!(
            !self.active.contains_key(&attempt),
            "{attempt:?} is already queued or in flight: a retry takes a fresh id"
        );
        let now = self.advance(now_us);
        let exclude = exclude_mask(exclude);
        let serving = self.method_mask[method.index()] & !exclude;
        if serving == 0 {
            return Decision::Refused(RouteRefusal::NoChannelForMethod);
        }
        let m = method.index();
        // No overtaking: with anything of its method queued, it queues too
        // (and the release, in this same poll, may send it at once on its
        // own FIFO).
        let behind = self.queues.iter().any(|q| q.method == m);
        if !behind {
            let candidates = self.free_mask(serving, now);
            if candidates != 0 {
                let channel = self.pick(candidates);
                self.dispatch(channel, attempt, now);
                return Decision::Dispatch { channel };
            }
        }
        if self.queue_len >= self.config.queue_max {
            return Decision::Refused(RouteRefusal::QueueFull);
        }
        let entry = QueueEntry {
            attempt,
            seq: self.next_seq,
            expires_at_us: now.saturating_add(self.config.queue_deadline_us),
        };
        self.next_seq += 1;
        match self
            .queues
            .iter_mut()
            .find(|q| q.method == m && q.exclude == exclude)
        {
            Some(q) => q.entries.push_back(entry),
            None => self.queues.push(SubQueue {
                method: m,
                exclude,
                entries: VecDeque::from([entry]),
            }),
        }
        self.queue_len += 1;
        self.active.insert(attempt, Active::Queued);
        self.release_due = true;
        Decision::Queued
    }

    /// The outcome of an in-flight attempt. `false` (and nothing changes)
    /// if it is not in flight: unknown, still queued, or already timed out.
    pub fn complete(&mut self, attempt: AttemptId, outcome: Outcome, now_us: i64) -> bool {
        let now = self.advance(now_us);
        let slot = match self.active.get(&attempt) {
            Some(Active::InFlight { slot }) => *slot,
            _ => return false,
        };
        self.active.remove(&attempt);
        let s = self.release_slot(slot);
        self.finish(s, outcome, now);
        true
    }

    /// Advances time: breakers and weights, timeouts, queue deadlines, then
    /// releases queued attempts. Events are appended to `events`.
    pub fn poll(&mut self, now_us: i64, events: &mut Vec<Event>) {
        let now = self.advance(now_us);
        self.time_out(now, events);
        self.expire(now, events);
        self.release(now, events);
        self.check_invariants();
    }

    /// When `poll` should next be called, or `None` if nothing is pending.
    /// A time not after the latest one seen means "now".
    pub fn next_wake(&self) -> Option<i64> {
        let mut wake: Option<i64> = None;
        let mut at = |t: i64| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.oldest != NIL {
            let s = &self.slots[self.oldest as usize];
            at(s.dispatched_at_us
                .saturating_add(self.config.attempt_timeout_us));
        }
        for c in &self.channels {
            if let Breaker::Open { until_us } = c.breaker {
                at(until_us);
            }
        }
        if self.queue_len > 0 {
            let mut serving = 0;
            for q in &self.queues {
                if let Some(head) = q.entries.front() {
                    at(head.expires_at_us);
                    serving |= self.method_mask[q.method] & !q.exclude;
                }
            }
            if self.release_due {
                at(self.now_us);
            }
            // Channels that will have a pace token: a channel free now was
            // already offered to the queue by the last release pass.
            for_each_bit(serving, |i| {
                let c = &self.channels[i];
                if c.circuit_admits(self.config.half_open_probes)
                    && c.in_flight < c.config.max_concurrency
                {
                    let ready = c.pace_ready_at_us();
                    if ready > self.now_us {
                        at(ready);
                    }
                }
            });
        }
        // Not idle: keep the weights fresh too.
        wake.map(|w| w.min(self.next_refresh_us).max(self.now_us))
    }

    pub fn channels(&self) -> Vec<ChannelStatus> {
        let now = self.now_us;
        self.channels
            .iter()
            .map(|c| {
                let counts = c.window.counts(now);
                let in_last_second =
                    c.sent_log.len() - c.sent_log.partition_point(|&t| t <= now - SECOND_US);
                ChannelStatus {
                    name: c.config.name.clone(),
                    circuit: c.circuit(),
                    in_flight: c.in_flight,
                    capacity_per_s: c.config.capacity_per_s,
                    max_concurrency: c.config.max_concurrency,
                    rate_per_s: in_last_second as f64,
                    success_rate: counts.success_rate(),
                    p99_latency_ms: c.window.p99_us(now).map_or(0.0, |us| us as f64 / 1000.0),
                    timeouts: counts.timed_out,
                    dispatched_total: c.dispatched_total,
                    succeeded_total: c.succeeded_total,
                    failed_total: c.failed_total,
                    timed_out_total: c.timed_out_total,
                }
            })
            .collect()
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_len
    }

    /// Attempts in flight, over all channels.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// The channel `attempt` is in flight at, if it is.
    pub fn channel_of(&self, attempt: AttemptId) -> Option<usize> {
        match self.active.get(&attempt) {
            Some(Active::InFlight { slot }) => Some(self.slots[*slot as usize].channel as usize),
            _ => None,
        }
    }

    pub fn channel_index(&self, name: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.config.name == name)
    }

    /// Takes `now_us` (never going back), moves open breakers whose time is
    /// up to half-open, and refreshes the weights when due.
    fn advance(&mut self, now_us: i64) -> i64 {
        let now = now_us.max(self.now_us);
        self.now_us = now;
        for c in &mut self.channels {
            if let Breaker::Open { until_us } = c.breaker {
                if until_us <= now {
                    c.breaker = Breaker::HalfOpen {
                        sent: 0,
                        succeeded: 0,
                    };
                    c.breaker_epoch += 1;
                    c.current_weight = 0.0;
                    self.release_due = true;
                }
            }
        }
        if now >= self.next_refresh_us {
            self.refresh(now);
        }
        now
    }

    /// Recomputes each channel's health × latency factor from its window.
    fn refresh(&mut self, now: i64) {
        self.next_refresh_us = now.saturating_add(self.config.refresh_us);
        let min_samples = u64::from(self.config.breaker_min_samples);
        let mut p99s = [0i64; CHANNELS_MAX];
        let mut n = 0;
        for c in &self.channels {
            if c.window.counts(now).total() >= min_samples {
                if let Some(p99) = c.window.p99_us(now) {
                    p99s[n] = p99;
                    n += 1;
                }
            }
        }
        p99s[..n].sort_unstable();
        let reference_us = if n >= 2 {
            Some(p99s[(n - 1) / 2])
        } else {
            None
        };
        for c in &mut self.channels {
            let counts = c.window.counts(now);
            // Smoothed so that a few outcomes do not swing the weight.
            let success = (counts.succeeded as f64 + 1.0) / (counts.total() as f64 + 1.0);
            let mut latency = 1.0;
            if let (Some(reference), true) = (reference_us, counts.total() >= min_samples) {
                if let Some(p99) = c.window.p99_us(now) {
                    if p99 > 2 * reference {
                        latency = (2.0 * reference as f64 / p99 as f64).clamp(0.1, 1.0);
                    }
                }
            }
            c.base_weight = c.static_weight * success * success * latency;
        }
    }

    /// Channels among `candidates` that may take an attempt now (circuit,
    /// concurrency, pace). Trims their sent logs.
    fn free_mask(&mut self, candidates: u64, now: i64) -> u64 {
        let probes = self.config.half_open_probes;
        let mut free = 0;
        for_each_bit(candidates, |i| {
            let c = &mut self.channels[i];
            if c.circuit_admits(probes)
                && c.in_flight < c.config.max_concurrency
                && c.pace_ready_at_us() <= now
            {
                c.trim_log(now);
                free |= 1 << i;
            }
        });
        free
    }

    /// Among `candidates` (free now, not empty, logs trimmed): a half-open
    /// channel if any (it has a probe slot free), else smooth weighted
    /// round-robin.
    fn pick(&mut self, candidates: u64) -> usize {
        assert!(candidates != 0);
        let mut probing = None;
        for_each_bit(candidates, |i| {
            if probing.is_none() && matches!(self.channels[i].breaker, Breaker::HalfOpen { .. }) {
                probing = Some(i);
            }
        });
        if let Some(i) = probing {
            return i;
        }
        let mut total = 0.0;
        let mut best = usize::MAX;
        let mut best_current = f64::NEG_INFINITY;
        for_each_bit(candidates, |i| {
            let c = &mut self.channels[i];
            let w = c.weight();
            c.current_weight += w;
            total += w;
            if c.current_weight > best_current {
                best = i;
                best_current = c.current_weight;
            }
        });
        self.channels[best].current_weight -= total;
        best
    }

    fn dispatch(&mut self, channel: usize, attempt: AttemptId, now: i64) {
        let c = &mut self.channels[channel];
        assert!(c.pace_ready_at_us() <= now);
        c.trim_log(now);
        assert!(c.sent_log.len() < c.config.capacity_per_s as usize);
        c.sent_log.push_back(now);
        let cap = i128::from(c.config.capacity_per_s);
        c.tat = c.tat.max(i128::from(now) * cap) + i128::from(SECOND_US);
        assert!(c.in_flight < c.config.max_concurrency);
        c.in_flight += 1;
        match &mut c.breaker {
            Breaker::Closed => {}
            Breaker::HalfOpen { sent, .. } => {
                assert!(*sent < self.config.half_open_probes);
                *sent += 1;
            }
            Breaker::Open { .. } => unreachable!("an open channel takes nothing"),
        }
        c.dispatched_total += 1;
        let slot = Slot {
            attempt,
            channel: channel as u32,
            dispatched_at_us: now,
            breaker_epoch: c.breaker_epoch,
            prev: self.newest,
            next: NIL,
        };
        let index = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                assert!(self.slots.len() < self.slots.capacity());
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if self.newest == NIL {
            self.oldest = index;
        } else {
            self.slots[self.newest as usize].next = index;
        }
        self.newest = index;
        self.active
            .insert(attempt, Active::InFlight { slot: index });
    }

    /// Unlinks an in-flight slot and frees it.
    fn release_slot(&mut self, index: u32) -> Slot {
        let s = self.slots[index as usize];
        if s.prev == NIL {
            self.oldest = s.next;
        } else {
            self.slots[s.prev as usize].next = s.next;
        }
        if s.next == NIL {
            self.newest = s.prev;
        } else {
            self.slots[s.next as usize].prev = s.prev;
        }
        self.free_slots.push(index);
        s
    }

    /// Accounts the outcome of an attempt that has left flight.
    fn finish(&mut self, s: Slot, outcome: Outcome, now: i64) {
        let config = &self.config;
        let c = &mut self.channels[s.channel as usize];
        assert!(c.in_flight > 0);
        c.in_flight -= 1;
        match outcome {
            Outcome::Succeeded => c.succeeded_total += 1,
            Outcome::Failed => c.failed_total += 1,
            Outcome::TimedOut => c.timed_out_total += 1,
        }
        c.window.record(now, outcome, now - s.dispatched_at_us);
        self.release_due = true;
        if s.breaker_epoch != c.breaker_epoch {
            return; // sent before the breaker last moved
        }
        let success = outcome == Outcome::Succeeded;
        match c.breaker {
            Breaker::Closed if success => c.consecutive_failures = 0,
            Breaker::Closed => {
                c.consecutive_failures += 1;
                let counts = c.window.counts(now);
                let ratio_trips = counts.total() >= u64::from(config.breaker_min_samples)
                    && (counts.failed + counts.timed_out) as f64
                        >= config.breaker_failure_ratio * counts.total() as f64;
                if ratio_trips || c.consecutive_failures >= config.breaker_consecutive_failures {
                    open(c, now, config);
                }
            }
            Breaker::HalfOpen { sent, succeeded } if success => {
                if succeeded + 1 >= config.half_open_probes {
                    c.breaker = Breaker::Closed;
                    c.breaker_epoch += 1;
                    c.consecutive_failures = 0;
                    c.window.reset();
                    c.base_weight = c.static_weight;
                    c.current_weight = 0.0;
                } else {
                    c.breaker = Breaker::HalfOpen {
                        sent,
                        succeeded: succeeded + 1,
                    };
                }
            }
            Breaker::HalfOpen { .. } => open(c, now, config),
            Breaker::Open { .. } => unreachable!("nothing is sent while open"),
        }
    }

    fn time_out(&mut self, now: i64, events: &mut Vec<Event>) {
        while self.oldest != NIL {
            let s = self.slots[self.oldest as usize];
            if s.dispatched_at_us
                .saturating_add(self.config.attempt_timeout_us)
                > now
            {
                break;
            }
            self.active.remove(&s.attempt);
            self.release_slot(self.oldest);
            self.finish(s, Outcome::TimedOut, now);
            events.push(Event::TimedOut {
                attempt: s.attempt,
                channel: s.channel as usize,
            });
        }
    }

    fn expire(&mut self, now: i64, events: &mut Vec<Event>) {
        for q in &mut self.queues {
            while let Some(head) = q.entries.front() {
                if head.expires_at_us > now {
                    break;
                }
                let attempt = head.attempt;
                q.entries.pop_front();
                self.queue_len -= 1;
                self.active.remove(&attempt);
                events.push(Event::QueueExpired { attempt });
            }
        }
        self.queues.retain(|q| !q.entries.is_empty());
    }

    /// Releases queued attempts, oldest first, while a free channel may
    /// serve one.
    fn release(&mut self, now: i64, events: &mut Vec<Event>) {
        while self.queue_len > 0 {
            let free = self.free_mask(self.all_mask, now);
            if free == 0 {
                break;
            }
            // The oldest head a free channel may serve: (seq, queue, candidates).
            let mut best: Option<(u64, usize, u64)> = None;
            for (i, q) in self.queues.iter().enumerate() {
                let serving = free & self.method_mask[q.method] & !q.exclude;
                let Some(head) = q.entries.front() else {
                    continue;
                };
                if serving != 0 && best.is_none_or(|b| head.seq < b.0) {
                    best = Some((head.seq, i, serving));
                }
            }
            let Some((_, i, candidates)) = best else {
                break;
            };
            let entry = self.queues[i]
                .entries
                .pop_front()
                .expect("the head was just found");
            if self.queues[i].entries.is_empty() {
                self.queues.swap_remove(i);
            }
            self.queue_len -= 1;
            let channel = self.pick(candidates);
            self.dispatch(channel, entry.attempt, now);
            events.push(Event::Dispatch {
                attempt: entry.attempt,
                channel,
            });
        }
        self.release_due = false;
    }

    fn check_invariants(&self) {
        let in_flight: usize = self.channels.iter().map(|c| c.in_flight as usize).sum();
        assert_eq!(in_flight, self.in_flight());
        let queued: usize = self.queues.iter().map(|q| q.entries.len()).sum();
        assert_eq!(queued, self.queue_len);
        assert!(self.queues.iter().all(|q| !q.entries.is_empty()));
        assert!(self.queues.len() <= self.queue_len);
        assert!(self.queue_len <= self.config.queue_max);
        assert_eq!(self.active.len(), self.queue_len + in_flight);
        for c in &self.channels {
            assert!(c.in_flight <= c.config.max_concurrency);
            assert!(c.sent_log.len() <= c.config.capacity_per_s as usize);
            if let Breaker::HalfOpen { sent, succeeded } = c.breaker {
                assert!(succeeded <= sent);
                assert!(sent <= self.config.half_open_probes);
            }
        }
    }
}

fn open(c: &mut Channel, now: i64, config: &RouterConfig) {
    c.breaker = Breaker::Open {
        until_us: now.saturating_add(config.breaker_open_for_us),
    };
    c.breaker_epoch += 1;
    c.consecutive_failures = 0;
}

fn exclude_mask(exclude: &[usize]) -> u64 {
    exclude
        .iter()
        .filter(|&&i| i < CHANNELS_MAX)
        .fold(0, |mask, &i| mask | 1 << i)
}

fn for_each_bit(mut mask: u64, mut f: impl FnMut(usize)) {
    while mask != 0 {
        f(mask.trailing_zeros() as usize);
        mask &= mask - 1;
    }
}

fn validate(channels: &[ChannelConfig], config: &RouterConfig) -> Result<(), ConfigError> {
    if channels.len() > CHANNELS_MAX {
        return Err(ConfigError::TooManyChannels {
            count: channels.len(),
        });
    }
    for (i, c) in channels.iter().enumerate() {
        let bad = |reason| ConfigError::Channel {
            name: c.name.clone(),
            reason,
        };
        if c.name.is_empty() {
            return Err(bad("name is empty"));
        }
        if channels[..i].iter().any(|o| o.name == c.name) {
            return Err(ConfigError::DuplicateChannel {
                name: c.name.clone(),
            });
        }
        if c.methods.is_empty() {
            return Err(bad("methods is empty"));
        }
        if !(1..=CAPACITY_PER_S_MAX).contains(&c.capacity_per_s) {
            return Err(bad("capacity_per_s must be in 1..=100000"));
        }
        if !(1..=CONCURRENCY_MAX).contains(&c.max_concurrency) {
            return Err(bad("max_concurrency must be in 1..=100000"));
        }
        if c.fee_bp > 10_000 {
            return Err(bad("fee_bp must be at most 10000"));
        }
    }
    let bad = |field, reason| Err(ConfigError::Router { field, reason });
    if config.queue_max > QUEUE_MAX_MAX {
        return bad("queue_max", "must be at most 1000000");
    }
    if config.queue_deadline_us <= 0 {
        return bad("queue_deadline_us", "must be positive");
    }
    if config.attempt_timeout_us <= 0 {
        return bad("attempt_timeout_us", "must be positive");
    }
    if config.window_us < WINDOW_BUCKETS as i64 {
        return bad("window_us", "must be at least 10");
    }
    if !(0..=SECOND_US).contains(&config.pace_burst_us) {
        return bad("pace_burst_us", "must be in 0..=1000000");
    }
    if config.breaker_min_samples == 0 {
        return bad("breaker_min_samples", "must be positive");
    }
    if !(config.breaker_failure_ratio > 0.0 && config.breaker_failure_ratio <= 1.0) {
        return bad("breaker_failure_ratio", "must be in (0, 1]");
    }
    if config.breaker_consecutive_failures == 0 {
        return bad("breaker_consecutive_failures", "must be positive");
    }
    if config.breaker_open_for_us <= 0 {
        return bad("breaker_open_for_us", "must be positive");
    }
    if config.half_open_probes == 0 {
        return bad("half_open_probes", "must be positive");
    }
    if config.refresh_us <= 0 {
        return bad("refresh_us", "must be positive");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bins_are_ordered_and_bounded() {
        let mut last = 0;
        for v in [0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1_000, 999_999, 1 << 40] {
            let bin = latency_bin(v);
            assert!(bin >= last);
            assert!(bin < LATENCY_BINS);
            if bin < LATENCY_BINS - 1 {
                assert!(v < latency_bin_upper_us(bin), "{v} {bin}");
            }
            last = bin;
        }
        assert_eq!(latency_bin(2), 2);
        assert_eq!(latency_bin_upper_us(2), 3);
        assert_eq!(latency_bin(3), 3);
        assert_eq!(latency_bin_upper_us(3), 4);
    }

    #[test]
    fn codes_and_names_round_trip() {
        for m in PayMethod::ALL {
            assert_eq!(PayMethod::parse(m.as_str()), Some(m));
        }
        assert_eq!(PayMethod::parse("cash"), None);
        assert_eq!(RouteRefusal::QueueFull.code(), "payment_queue_full");
        assert_eq!(
            RouteRefusal::NoChannelForMethod.code(),
            "no_channel_for_method"
        );
        assert_eq!(Circuit::HalfOpen.as_str(), "half_open");
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let channel = ChannelConfig {
            name: "a".into(),
            methods: vec![PayMethod::Card],
            capacity_per_s: 10,
            max_concurrency: 10,
            fee_bp: 60,
            priority: 0,
        };
        let check = |channels: Vec<ChannelConfig>, config: RouterConfig| {
            Router::try_new(channels, config, 0).err()
        };
        assert_eq!(check(vec![channel.clone()], RouterConfig::default()), None);
        assert!(matches!(
            check(
                vec![channel.clone(), channel.clone()],
                RouterConfig::default()
            ),
            Some(ConfigError::DuplicateChannel { .. })
        ));
        let zero = ChannelConfig {
            capacity_per_s: 0,
            ..channel.clone()
        };
        assert!(matches!(
            check(vec![zero], RouterConfig::default()),
            Some(ConfigError::Channel { .. })
        ));
        let no_probes = RouterConfig {
            half_open_probes: 0,
            ..RouterConfig::default()
        };
        assert!(matches!(
            check(vec![channel], no_probes),
            Some(ConfigError::Router {
                field: "half_open_probes",
                ..
            })
        ));
    }
}
