//! Deterministic simulations of the payment router on virtual time.
//!
//! A `Sim` drives one `Router` with seeded arrivals and simulated channels
//! (latency, failures, outages that fail, go silent or answer late) and
//! checks every reply against what it knows: each attempt id has exactly
//! one fate, is dispatched at most once and never to an excluded or
//! unsupporting channel, concurrency never exceeds a channel's limit, a late
//! answer changes nothing, and at the end no channel was sent more than its
//! capacity in any sliding 1 s window. A failing property seed is printed;
//! `MALL_SEED=<n>` replays that one seed (see `mall_core::seeds`).

use mall_router::bench;
use mall_router::router::{
    AttemptId, ChannelConfig, ChannelStatus, Circuit, Decision, Event, Outcome, PayMethod,
    RouteRefusal, Router, RouterConfig,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

const S: i64 = 1_000_000;
const MS: i64 = 1_000;

use mall_core::rng::Rng;

/// Uniform in `lo..=hi` (both ≥ 0), from the house's generator.
trait Range {
    fn range(&mut self, lo: i64, hi: i64) -> i64;
}

impl Range for Rng {
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        self.between(lo as u64, hi as u64) as i64
    }
}

/// How a simulated channel answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// After a random latency; fails with the model's probability.
    Healthy,
    /// Fails every attempt, after a random latency.
    Failing,
    /// Never answers.
    Silent,
    /// Succeeds, but after `LATE_US` (past the attempt timeout).
    Late,
}

const LATE_US: i64 = 2_500 * MS;

#[derive(Clone, Debug)]
struct Model {
    latency_min_us: i64,
    latency_max_us: i64,
    fail_p: f64,
    /// From `.0` until `.1`, the channel behaves as `.2`.
    outage: Option<(i64, i64, Mode)>,
}

impl Model {
    fn healthy(latency_min_us: i64, latency_max_us: i64) -> Model {
        Model {
            latency_min_us,
            latency_max_us,
            fail_p: 0.0,
            outage: None,
        }
    }

    fn mode_at(&self, t: i64) -> Mode {
        match self.outage {
            Some((start, end, mode)) if start <= t && t < end => mode,
            _ => Mode::Healthy,
        }
    }
}

fn channel(name: &str, capacity_per_s: u32, max_concurrency: u32) -> ChannelConfig {
    ChannelConfig {
        name: name.into(),
        methods: vec![PayMethod::Card, PayMethod::ThirdParty],
        capacity_per_s,
        max_concurrency,
        fee_bp: 60,
        priority: 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Queued,
    InFlight(usize),
    Succeeded,
    Failed,
    TimedOut,
    Refused(RouteRefusal),
    Expired,
}

impl Fate {
    fn is_terminal(self) -> bool {
        !matches!(self, Fate::Queued | Fate::InFlight(_))
    }
}

struct Attempt {
    payment: usize,
    method: PayMethod,
    exclude: Vec<usize>,
    submitted_at_us: i64,
    dispatched_at_us: i64,
    dispatches: u32,
    fate: Fate,
}

struct Payment {
    method: PayMethod,
    tried: Vec<usize>,
    attempts: u32,
    succeeded: u32,
}

struct Sim {
    router: Router,
    config: RouterConfig,
    rng: Rng,
    models: Vec<Model>,
    channels: Vec<ChannelConfig>,
    now_us: i64,
    /// Answers on their way: (time, order, attempt, outcome code).
    answers: BinaryHeap<Reverse<(i64, u64, u64, u8)>>,
    answers_sent: u64,
    attempts: HashMap<AttemptId, Attempt>,
    payments: Vec<Payment>,
    next_attempt: u64,
    /// Attempts of one payment, at most (1: no retries).
    tries_max: u32,
    /// Per channel: dispatch times, in order.
    sent: Vec<Vec<i64>>,
    /// Per channel: attempts in flight, as the simulation counts them.
    in_flight: Vec<u32>,
    queued: usize,
    /// Per method: attempts queued (no overtaking: a direct dispatch only
    /// when none of its method wait).
    queued_by_method: [usize; 2],
    /// Attempts that left the queue, in order.
    released: Vec<AttemptId>,
    /// The watched channel's dispatches: (time, its circuit right after).
    watch: Option<usize>,
    watched: Vec<(i64, Circuit)>,
    late_answers: u64,
    steps: u64,
    events: Vec<Event>,
}

impl Sim {
    fn new(
        channels: Vec<ChannelConfig>,
        models: Vec<Model>,
        config: RouterConfig,
        seed: u64,
    ) -> Sim {
        assert_eq!(channels.len(), models.len());
        let n = channels.len();
        Sim {
            router: Router::new(channels.clone(), config.clone(), 0),
            config,
            rng: Rng::new(seed),
            models,
            channels,
            now_us: 0,
            answers: BinaryHeap::new(),
            answers_sent: 0,
            attempts: HashMap::new(),
            payments: Vec::new(),
            next_attempt: 1,
            tries_max: 1,
            sent: vec![Vec::new(); n],
            in_flight: vec![0; n],
            queued: 0,
            queued_by_method: [0; 2],
            released: Vec::new(),
            watch: None,
            watched: Vec::new(),
            late_answers: 0,
            steps: 0,
            events: Vec::new(),
        }
    }

    /// Runs arrivals at `rate_per_s(t)` (methods from `method`) and
    /// everything else until `until_us`.
    fn run(
        &mut self,
        until_us: i64,
        rate_per_s: &dyn Fn(i64) -> f64,
        method: &dyn Fn(&mut Rng) -> PayMethod,
    ) {
        let mut next_arrival = self.now_us + self.gap(rate_per_s(self.now_us));
        loop {
            let arrival = (next_arrival < until_us).then_some(next_arrival);
            let Some(t) = [arrival, self.next_answer(), self.router.next_wake()]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if arrival.is_none() && t >= until_us {
                break;
            }
            self.step(t);
            if arrival == Some(t) {
                let m = method(&mut self.rng);
                self.payments.push(Payment {
                    method: m,
                    tried: Vec::new(),
                    attempts: 0,
                    succeeded: 0,
                });
                self.submit(self.payments.len() - 1);
                next_arrival = t + self.gap(rate_per_s(t));
            }
            self.poll_due();
        }
        self.now_us = self.now_us.max(until_us);
    }

    /// No more arrivals: runs until nothing is queued, in flight or on its way.
    fn drain(&mut self) {
        while self.router.in_flight() > 0
            || self.router.queue_depth() > 0
            || !self.answers.is_empty()
        {
            let t = [self.next_answer(), self.router.next_wake()]
                .into_iter()
                .flatten()
                .min()
                .expect("work left, so something is due");
            self.step(t);
            self.poll_due();
        }
    }

    fn gap(&mut self, rate_per_s: f64) -> i64 {
        if rate_per_s <= 0.0 {
            return 10 * MS;
        }
        let u = self.rng.next_f64();
        ((-(1.0 - u).ln() * 1e6 / rate_per_s) as i64).max(1)
    }

    fn next_answer(&self) -> Option<i64> {
        self.answers.peek().map(|Reverse((t, ..))| *t)
    }

    /// Moves to `t` and delivers the answers due.
    fn step(&mut self, t: i64) {
        assert!(t >= self.now_us);
        self.now_us = t;
        self.steps += 1;
        while let Some(&Reverse((at, _, id, code))) = self.answers.peek() {
            if at > t {
                break;
            }
            self.answers.pop();
            let outcome = [Outcome::Succeeded, Outcome::Failed, Outcome::TimedOut][code as usize];
            self.answer(AttemptId(id), outcome);
        }
        self.check_counts();
    }

    fn poll_due(&mut self) {
        let mut polls = 0;
        while self.router.next_wake().is_some_and(|w| w <= self.now_us) {
            self.poll();
            polls += 1;
            assert!(polls < 100, "poll does not settle at {}", self.now_us);
        }
    }

    fn poll(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        self.router.poll(self.now_us, &mut events);
        for e in events.drain(..) {
            self.on_event(e);
        }
        self.events = events;
        self.check_counts();
    }

    fn submit(&mut self, payment: usize) {
        let id = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        let p = &mut self.payments[payment];
        p.attempts += 1;
        let exclude = p.tried.clone();
        let method = p.method;
        let decision = self.router.submit(id, method, &exclude, self.now_us);
        let fate = match decision {
            Decision::Queued => {
                self.queued += 1;
                self.queued_by_method[method_index(method)] += 1;
                Fate::Queued
            }
            Decision::Dispatch { .. } => {
                assert_eq!(self.queued_by_method[method_index(method)], 0, "overtaking");
                Fate::Queued // set by on_dispatch
            }
            Decision::Refused(r) => Fate::Refused(r),
        };
        self.attempts.insert(
            id,
            Attempt {
                payment,
                method,
                exclude,
                submitted_at_us: self.now_us,
                dispatched_at_us: 0,
                dispatches: 0,
                fate,
            },
        );
        match decision {
            Decision::Dispatch { channel } => self.on_dispatch(id, channel),
            Decision::Refused(RouteRefusal::NoChannelForMethod) => {
                let a = &self.attempts[&id];
                assert!(self
                    .channels
                    .iter()
                    .enumerate()
                    .all(|(i, c)| !c.methods.contains(&method) || a.exclude.contains(&i)));
            }
            Decision::Refused(RouteRefusal::QueueFull) => {
                assert_eq!(self.router.queue_depth(), self.config.queue_max);
            }
            Decision::Queued => {}
        }
    }

    fn on_dispatch(&mut self, id: AttemptId, ch: usize) {
        let a = self.attempts.get_mut(&id).expect("known attempt");
        assert_eq!(a.fate, Fate::Queued, "{id:?} dispatched from {:?}", a.fate);
        assert_eq!(a.dispatches, 0, "{id:?} dispatched twice");
        assert!(!a.exclude.contains(&ch), "{id:?} sent to excluded {ch}");
        assert!(self.channels[ch].methods.contains(&a.method));
        a.dispatches += 1;
        a.fate = Fate::InFlight(ch);
        a.dispatched_at_us = self.now_us;
        let payment = a.payment;
        self.payments[payment].tried.push(ch);
        self.in_flight[ch] += 1;
        assert!(self.in_flight[ch] <= self.channels[ch].max_concurrency);
        self.sent[ch].push(self.now_us);
        assert_eq!(self.router.channel_of(id), Some(ch));
        if self.watch == Some(ch) {
            let circuit = self.router.channels()[ch].circuit;
            self.watched.push((self.now_us, circuit));
        }
        let model = &self.models[ch];
        let latency = self.rng.range(model.latency_min_us, model.latency_max_us);
        let answer = match model.mode_at(self.now_us) {
            Mode::Healthy if self.rng.chance(model.fail_p) => Some((latency, Outcome::Failed)),
            Mode::Healthy => Some((latency, Outcome::Succeeded)),
            Mode::Failing => Some((latency, Outcome::Failed)),
            Mode::Silent => None,
            Mode::Late => Some((LATE_US, Outcome::Succeeded)),
        };
        if let Some((latency, outcome)) = answer {
            let code = match outcome {
                Outcome::Succeeded => 0,
                Outcome::Failed => 1,
                Outcome::TimedOut => 2,
            };
            self.answers_sent += 1;
            self.answers.push(Reverse((
                self.now_us + latency,
                self.answers_sent,
                id.0,
                code,
            )));
        }
    }

    fn answer(&mut self, id: AttemptId, outcome: Outcome) {
        let fate = self.attempts[&id].fate;
        let Fate::InFlight(ch) = fate else {
            // A late answer: bring the router to now, then it must change
            // nothing.
            assert_eq!(fate, Fate::TimedOut);
            self.poll();
            let before = self.router.channels();
            assert!(!self.router.complete(id, outcome, self.now_us));
            assert_eq!(self.router.channels(), before);
            self.late_answers += 1;
            return;
        };
        assert!(self.router.complete(id, outcome, self.now_us));
        assert!(
            !self.router.complete(id, outcome, self.now_us),
            "answered twice"
        );
        self.in_flight[ch] -= 1;
        self.finish(
            id,
            match outcome {
                Outcome::Succeeded => Fate::Succeeded,
                Outcome::Failed => Fate::Failed,
                Outcome::TimedOut => Fate::TimedOut,
            },
        );
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Dispatch { attempt, channel } => {
                let a = &self.attempts[&attempt];
                assert!(self.now_us - a.submitted_at_us < self.config.queue_deadline_us);
                self.queued -= 1;
                self.queued_by_method[method_index(a.method)] -= 1;
                self.released.push(attempt);
                self.on_dispatch(attempt, channel);
            }
            Event::QueueExpired { attempt } => {
                let a = self.attempts.get_mut(&attempt).expect("known attempt");
                assert_eq!(a.fate, Fate::Queued);
                assert!(self.now_us - a.submitted_at_us >= self.config.queue_deadline_us);
                a.fate = Fate::Expired;
                self.queued -= 1;
                self.queued_by_method[method_index(a.method)] -= 1;
            }
            Event::TimedOut { attempt, channel } => {
                let a = &self.attempts[&attempt];
                assert_eq!(a.fate, Fate::InFlight(channel));
                assert!(self.now_us - a.dispatched_at_us >= self.config.attempt_timeout_us);
                self.in_flight[channel] -= 1;
                self.finish(attempt, Fate::TimedOut);
            }
        }
    }

    /// An attempt left flight with `fate`; a failed payment tries again.
    fn finish(&mut self, id: AttemptId, fate: Fate) {
        let a = self.attempts.get_mut(&id).expect("known attempt");
        a.fate = fate;
        let payment = a.payment;
        let p = &mut self.payments[payment];
        if fate == Fate::Succeeded {
            p.succeeded += 1;
            assert_eq!(p.succeeded, 1, "payment {payment} charged twice");
        } else if p.attempts < self.tries_max {
            self.submit(payment);
        }
    }

    fn check_counts(&self) {
        let in_flight: u32 = self.in_flight.iter().sum();
        assert_eq!(self.router.in_flight(), in_flight as usize);
        assert_eq!(self.router.queue_depth(), self.queued);
        assert!(self.queued <= self.config.queue_max);
        if self.steps & 63 == 0 {
            let status = self.router.channels();
            for (s, &n) in status.iter().zip(&self.in_flight) {
                assert_eq!(s.in_flight, n);
            }
        }
    }

    /// At the end: every attempt has one terminal fate and no channel was
    /// sent more than its capacity in any window of 1 s.
    fn check_end(&self) -> Tally {
        let mut tally = Tally::default();
        for (id, a) in &self.attempts {
            assert!(a.fate.is_terminal(), "{id:?} left as {:?}", a.fate);
            assert!(a.dispatches <= 1);
            match a.fate {
                Fate::Succeeded => tally.succeeded += 1,
                Fate::Failed => tally.failed += 1,
                Fate::TimedOut => tally.timed_out += 1,
                Fate::Refused(_) => tally.refused += 1,
                Fate::Expired => tally.expired += 1,
                Fate::Queued | Fate::InFlight(_) => unreachable!(),
            }
            tally.dispatched += u64::from(a.dispatches);
        }
        tally.attempts = self.attempts.len() as u64;
        assert_eq!(
            tally.attempts,
            tally.succeeded + tally.failed + tally.timed_out + tally.refused + tally.expired
        );
        assert_eq!(
            tally.dispatched,
            tally.succeeded + tally.failed + tally.timed_out
        );
        for (ch, sent) in self.sent.iter().enumerate() {
            assert!(
                max_in_window(sent) <= self.channels[ch].capacity_per_s as usize,
                "channel {ch} over capacity"
            );
        }
        let status = self.router.channels();
        for (ch, s) in status.iter().enumerate() {
            assert_eq!(s.dispatched_total, self.sent[ch].len() as u64);
            assert_eq!(s.in_flight, 0);
        }
        tally
    }

    fn sent_between(&self, ch: usize, from_us: i64, to_us: i64) -> usize {
        self.sent[ch]
            .iter()
            .filter(|&&t| from_us <= t && t < to_us)
            .count()
    }

    fn submitted_between(&self, from_us: i64, to_us: i64) -> usize {
        self.attempts
            .values()
            .filter(|a| from_us <= a.submitted_at_us && a.submitted_at_us < to_us)
            .count()
    }
}

#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    dispatched: u64,
    succeeded: u64,
    failed: u64,
    timed_out: u64,
    refused: u64,
    expired: u64,
}

/// The most dispatches in any half-open window `(t - 1 s, t]`.
fn max_in_window(sent: &[i64]) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (i, &t) in sent.iter().enumerate() {
        while sent[first] <= t - S {
            first += 1;
        }
        most = most.max(i + 1 - first);
    }
    most
}

fn method_index(m: PayMethod) -> usize {
    PayMethod::ALL
        .iter()
        .position(|&x| x == m)
        .expect("a method")
}

fn card(_: &mut Rng) -> PayMethod {
    PayMethod::Card
}

fn any_method(rng: &mut Rng) -> PayMethod {
    PayMethod::ALL[(rng.next_u64() % 2) as usize]
}

/// Three channels of 1000/s under 1500/s; channel 2 behaves as `mode` from
/// 5 s until `outage_end_us`.
fn outage_sim(mode: Mode, outage_end_us: i64, seed: u64) -> Sim {
    let channels = vec![
        channel("a", 1_000, 400),
        channel("b", 1_000, 400),
        channel("c", 1_000, 400),
    ];
    let mut models = vec![Model::healthy(20 * MS, 200 * MS); 3];
    for m in &mut models {
        m.fail_p = 0.01;
    }
    models[2].outage = Some((5 * S, outage_end_us, mode));
    let mut sim = Sim::new(channels, models, RouterConfig::default(), seed);
    sim.tries_max = 3;
    sim.watch = Some(2);
    sim
}

fn channel_is_cut_off_within_two_seconds(mode: Mode) {
    let mut sim = outage_sim(mode, i64::MAX, 1);
    sim.run(20 * S, &|_| 1_500.0, &card);
    sim.drain();
    let tally = sim.check_end();

    // Before: it had its share.
    let before = sim.sent_between(2, S, 5 * S);
    assert!(before > 1_500, "{before}");
    // From 2 s after the outage began, only half-open probes went there, at
    // most `half_open_probes` per open period (3 s + the time to fail).
    let probes: Vec<i64> = sim
        .watched
        .iter()
        .filter(|(t, _)| *t >= 7 * S)
        .map(|&(t, circuit)| {
            assert_eq!(circuit, Circuit::HalfOpen, "regular traffic at {t}");
            t
        })
        .collect();
    assert!(!probes.is_empty(), "the breaker probes");
    assert!(probes.len() <= 3 * 5, "{}", probes.len());
    // The others took its share: everything submitted from 7 s went out.
    let submitted = sim.submitted_between(7 * S, 20 * S);
    let others = sim.sent_between(0, 7 * S, 20 * S) + sim.sent_between(1, 7 * S, 20 * S);
    assert!(others + probes.len() >= submitted, "{others} {submitted}");
    assert_eq!(tally.expired, 0);
    assert_eq!(tally.refused, 0);
    let status = sim.router.channels();
    assert_ne!(status[2].circuit, Circuit::Closed);
}

#[test]
fn failing_channel_gets_no_traffic_two_seconds_after_it_starts_failing() {
    channel_is_cut_off_within_two_seconds(Mode::Failing);
}

#[test]
fn silent_channel_gets_no_traffic_two_seconds_after_it_goes_silent() {
    channel_is_cut_off_within_two_seconds(Mode::Silent);
}

#[test]
fn capacity_and_concurrency_hold_on_a_long_run() {
    let channels = vec![
        channel("a", 200, 50),
        channel("b", 500, 100),
        channel("c", 1_000, 400),
        channel("d", 50, 5),
    ];
    let mut models = vec![
        Model::healthy(MS, 400 * MS),
        Model::healthy(10 * MS, 1_200 * MS),
        Model::healthy(5 * MS, 100 * MS),
        Model::healthy(50 * MS, 900 * MS),
    ];
    for m in &mut models {
        m.fail_p = 0.05;
    }
    let mut sim = Sim::new(channels, models, RouterConfig::default(), 7);
    sim.tries_max = 3;
    // Alternating 3 s at twice the capacity and 3 s at a fifth of it.
    sim.run(
        60 * S,
        &|t| {
            if (t / (3 * S)) % 2 == 0 {
                3_500.0
            } else {
                350.0
            }
        },
        &any_method,
    );
    sim.drain();
    let tally = sim.check_end();
    assert!(tally.dispatched > 50_000, "{tally:?}");
    // The limits were reached, so the checks above mean something.
    assert_eq!(max_in_window(&sim.sent[2]), 1_000);
    assert!(sim.late_answers > 0 || tally.timed_out > 0);
}

fn burst_sim(queue_max: usize, queue_deadline_us: i64) -> Sim {
    let channels = vec![channel("a", 1_000, 500), channel("b", 1_000, 500)];
    let models = vec![Model::healthy(10 * MS, 100 * MS); 2];
    let config = RouterConfig {
        queue_max,
        queue_deadline_us,
        ..RouterConfig::default()
    };
    let mut sim = Sim::new(channels, models, config, 3);
    // 3 s at three times the total capacity, then nothing.
    sim.run(3 * S, &|_| 6_000.0, &card);
    sim.drain();
    sim
}

#[test]
fn burst_of_three_times_capacity_is_queued_and_drained_without_loss() {
    let sim = burst_sim(20_000, 60 * S);
    let tally = sim.check_end();
    assert!(tally.attempts > 17_000, "{tally:?}");
    assert_eq!(tally.succeeded, tally.attempts, "{tally:?}");
    // Released in submission order.
    assert!(sim.released.len() > 10_000);
    assert!(sim.released.windows(2).all(|w| w[0] < w[1]));
    // At the channels' pace: ~2000/s, so done within ~9 s of the start
    // (plus the last answers).
    assert!(sim.now_us < 11 * S, "{}", sim.now_us);
    assert!(sim.now_us > 8 * S, "{}", sim.now_us);
}

#[test]
fn burst_with_short_deadline_expires_cleanly() {
    let sim = burst_sim(20_000, 2 * S);
    let tally = sim.check_end();
    assert!(tally.expired > 5_000, "{tally:?}");
    assert!(tally.succeeded > 5_000, "{tally:?}");
    assert_eq!(tally.refused, 0, "{tally:?}");
    assert_eq!(tally.succeeded + tally.expired, tally.attempts);

    let sim = burst_sim(1_000, 5 * S);
    let tally = sim.check_end();
    assert!(tally.refused > 5_000, "{tally:?}");
    assert_eq!(
        tally.succeeded + tally.refused + tally.expired,
        tally.attempts
    );
}

#[test]
fn an_attempt_is_dispatched_at_most_once_at_a_time() {
    let config = RouterConfig {
        pace_burst_us: 0,
        ..RouterConfig::default()
    };
    let mut r = Router::new(vec![channel("a", 1, 1)], config, 0);
    let a = AttemptId(1);
    let b = AttemptId(2);
    assert_eq!(
        r.submit(a, PayMethod::Card, &[], 0),
        Decision::Dispatch { channel: 0 }
    );
    // Submitting an id that is in flight or queued is a caller bug: it
    // panics before any state changes.
    let twice = |r: &mut Router, id, now| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.submit(id, PayMethod::Card, &[], now)
        }))
        .is_err()
    };
    assert!(twice(&mut r, a, 1));
    assert_eq!(r.submit(b, PayMethod::Card, &[], 2), Decision::Queued);
    assert!(twice(&mut r, b, 3));
    assert_eq!((r.in_flight(), r.queue_depth()), (1, 1));
    assert!(
        !r.complete(b, Outcome::Succeeded, 4),
        "queued, not in flight"
    );
    assert!(r.complete(a, Outcome::Succeeded, 5));
    assert!(!r.complete(a, Outcome::Succeeded, 6), "answered already");
    // b goes when the pace allows (1/s), and only once.
    let mut events = Vec::new();
    r.poll(10, &mut events);
    assert!(events.is_empty());
    assert_eq!(r.next_wake(), Some(S));
    r.poll(S, &mut events);
    assert_eq!(
        events,
        vec![Event::Dispatch {
            attempt: b,
            channel: 0
        }]
    );
    events.clear();
    // It times out at 2 s; its late answer is ignored and changes nothing.
    assert_eq!(r.next_wake(), Some(2 * S));
    r.poll(2 * S, &mut events);
    assert_eq!(
        events,
        vec![Event::TimedOut {
            attempt: b,
            channel: 0
        }]
    );
    let before = r.channels();
    assert!(!r.complete(b, Outcome::Succeeded, 2 * S));
    assert_eq!(r.channels(), before);
    assert_eq!(before[0].timed_out_total, 1);
    assert_eq!(before[0].succeeded_total, 1);
    assert_eq!(r.next_wake(), None);
}

#[test]
fn exclude_is_honoured_and_refusals_are_precise() {
    let mut third_party_only = channel("c", 1_000, 100);
    third_party_only.methods = vec![PayMethod::ThirdParty];
    let mut r = Router::new(
        vec![
            channel("a", 1_000, 100),
            channel("b", 1_000, 100),
            third_party_only,
        ],
        RouterConfig::default(),
        0,
    );
    let mut events = Vec::new();
    for i in 0..500u64 {
        let now = i as i64 * 3 * MS;
        match r.submit(AttemptId(i), PayMethod::ThirdParty, &[0, 2], now) {
            Decision::Dispatch { channel } => assert_eq!(channel, 1),
            d => panic!("{d:?}"),
        }
        assert!(r.complete(AttemptId(i), Outcome::Succeeded, now));
        r.poll(now, &mut events);
    }
    assert!(events.is_empty());
    assert_eq!(
        r.submit(AttemptId(1_000), PayMethod::Card, &[0, 1], 0),
        Decision::Refused(RouteRefusal::NoChannelForMethod)
    );
    assert_eq!(
        r.submit(AttemptId(1_001), PayMethod::ThirdParty, &[0, 1, 2, 99], 0),
        Decision::Refused(RouteRefusal::NoChannelForMethod)
    );
    let mut r = Router::new(
        vec![channel("c", 10, 10)]
            .into_iter()
            .map(|mut c| {
                c.methods = vec![PayMethod::ThirdParty];
                c
            })
            .collect(),
        RouterConfig::default(),
        0,
    );
    let refusal = RouteRefusal::NoChannelForMethod;
    assert_eq!(
        r.submit(AttemptId(1), PayMethod::Card, &[], 0),
        Decision::Refused(refusal)
    );
    assert_eq!(refusal.code(), "no_channel_for_method");
    assert_eq!(r.channel_index("c"), Some(0));
    assert_eq!(r.channel_index("z"), None);
}

#[test]
fn late_answers_after_timeout_change_nothing_and_nothing_is_charged_twice() {
    let channels = vec![channel("late", 500, 200), channel("ok", 500, 200)];
    let mut models = vec![Model::healthy(10 * MS, 50 * MS); 2];
    models[0].outage = Some((0, 6 * S, Mode::Late));
    let mut sim = Sim::new(channels, models, RouterConfig::default(), 11);
    sim.tries_max = 2;
    sim.run(12 * S, &|_| 300.0, &card);
    sim.drain();
    let tally = sim.check_end();
    // The harness checked each late answer: `complete` said false and the
    // router's view did not move; each payment succeeded at most once
    // (counted by the router, which never saw the late successes).
    assert!(sim.late_answers > 5, "{}", sim.late_answers);
    assert!(tally.timed_out > 5, "{tally:?}");
    assert!(sim.payments.iter().all(|p| p.succeeded <= 1));
    // Retries went elsewhere.
    for a in sim.attempts.values() {
        if !a.exclude.is_empty() {
            assert_eq!(a.exclude, vec![0]);
        }
    }
}

fn channel_recovers(mode: Mode) {
    let mut sim = outage_sim(mode, 10 * S, 5);
    sim.run(25 * S, &|_| 1_500.0, &card);
    sim.drain();
    sim.check_end();
    let status = sim.router.channels();
    assert_eq!(status[2].circuit, Circuit::Closed);
    // Back to regular traffic after the outage, and to about its share.
    assert!(sim
        .watched
        .iter()
        .any(|&(t, c)| t >= 10 * S && c == Circuit::Closed));
    let c = sim.sent_between(2, 18 * S, 25 * S);
    let all: usize = (0..3).map(|ch| sim.sent_between(ch, 18 * S, 25 * S)).sum();
    assert!(c * 4 > all, "{c} of {all}");
}

#[test]
fn failing_channel_recovers_through_half_open_probes() {
    channel_recovers(Mode::Failing);
}

#[test]
fn silent_channel_recovers_through_half_open_probes() {
    channel_recovers(Mode::Silent);
}

#[test]
fn traffic_follows_capacity() {
    let channels = vec![channel("small", 1_000, 1_000), channel("big", 3_000, 3_000)];
    let models = vec![Model::healthy(20 * MS, 80 * MS); 2];
    let mut sim = Sim::new(channels, models, RouterConfig::default(), 13);
    // Half the total capacity (where pacing alone would not split it 1:3),
    // then near all of it.
    sim.run(
        24 * S,
        &|t| if t < 12 * S { 2_000.0 } else { 3_800.0 },
        &card,
    );
    sim.drain();
    let tally = sim.check_end();
    assert_eq!(tally.succeeded, tally.attempts);
    for (from, to) in [(2 * S, 12 * S), (14 * S, 24 * S)] {
        let small = sim.sent_between(0, from, to) as f64;
        let big = sim.sent_between(1, from, to) as f64;
        let ratio = big / small;
        assert!((2.7..=3.3).contains(&ratio), "{ratio} in {from}..{to}");
    }
}

#[test]
fn an_expensive_channel_gets_less_while_others_have_headroom() {
    let mut channels = vec![
        channel("cheap", 3_000, 1_000),
        channel("dear", 3_000, 1_000),
    ];
    channels[1].fee_bp = 300;
    let models = vec![Model::healthy(20 * MS, 80 * MS); 2];
    let mut sim = Sim::new(channels, models, RouterConfig::default(), 17);
    sim.run(
        20 * S,
        &|t| if t < 10 * S { 2_000.0 } else { 5_500.0 },
        &card,
    );
    sim.drain();
    let tally = sim.check_end();
    assert_eq!(tally.refused + tally.expired, 0, "{tally:?}");
    let share = |from, to| {
        let dear = sim.sent_between(1, from, to) as f64;
        dear / (dear + sim.sent_between(0, from, to) as f64)
    };
    let calm = share(2 * S, 10 * S);
    assert!(calm < 0.25, "{calm}");
    // Near total capacity it takes the overflow.
    let peak = share(12 * S, 20 * S);
    assert!(peak > 0.4, "{peak}");
}

#[test]
fn a_slow_channel_gets_less() {
    let channels = vec![channel("fast", 1_000, 1_000), channel("slow", 1_000, 1_000)];
    let models = vec![
        Model::healthy(20 * MS, 50 * MS),
        Model::healthy(600 * MS, 900 * MS),
    ];
    let mut sim = Sim::new(channels, models, RouterConfig::default(), 19);
    sim.run(15 * S, &|_| 800.0, &card);
    sim.drain();
    sim.check_end();
    let fast = sim.sent_between(0, 3 * S, 15 * S) as f64;
    let slow = sim.sent_between(1, 3 * S, 15 * S) as f64;
    assert!(slow < 0.6 * fast, "{slow} vs {fast}");
}

#[test]
fn priority_orders_equal_channels() {
    let mut channels = vec![
        channel("first", 2_000, 1_000),
        channel("second", 2_000, 1_000),
    ];
    channels[1].priority = 2;
    let models = vec![Model::healthy(20 * MS, 80 * MS); 2];
    let mut sim = Sim::new(channels, models, RouterConfig::default(), 23);
    sim.run(10 * S, &|_| 1_000.0, &card);
    sim.drain();
    sim.check_end();
    let first = sim.sent_between(0, S, 10 * S);
    let second = sim.sent_between(1, S, 10 * S);
    assert!(second * 2 < first, "{second} vs {first}");
}

#[test]
fn breaker_opens_probes_first_and_closes() {
    let mut r = Router::new(
        vec![channel("a", 1_000, 100), channel("b", 1_000, 100)],
        RouterConfig::default(),
        0,
    );
    let circuit = |r: &Router| r.channels()[0].circuit;
    let mut id = 0;
    let mut send = |r: &mut Router, exclude: &[usize], now: i64| {
        id += 1;
        match r.submit(AttemptId(id), PayMethod::Card, exclude, now) {
            Decision::Dispatch { channel } => (AttemptId(id), channel),
            d => panic!("{d:?}"),
        }
    };
    // Five failures in a row open it (the window holds 5 ≥ min samples).
    for i in 0..5 {
        let now = i * 10 * MS;
        assert_eq!(circuit(&r), Circuit::Closed);
        let (a, ch) = send(&mut r, &[1], now);
        assert_eq!(ch, 0);
        assert!(r.complete(a, Outcome::Failed, now + MS));
    }
    assert_eq!(circuit(&r), Circuit::Open);
    // It wakes for the refresh of the weights (each 1 s), and for the
    // breaker.
    assert_eq!(r.next_wake(), Some(S));
    let mut events = Vec::new();
    r.poll(S, &mut events);
    assert_eq!(r.next_wake(), Some(2 * S));
    r.poll(2 * S, &mut events);
    r.poll(3 * S, &mut events);
    assert_eq!(r.next_wake(), Some(41 * MS + 3 * S));
    assert!(events.is_empty());
    // Open: nothing goes there, and a payment that excludes b waits.
    for i in 0..20 {
        let (a, ch) = send(&mut r, &[], 3 * S + i * 2 * MS);
        assert_eq!(ch, 1);
        assert!(r.complete(a, Outcome::Succeeded, 3 * S + i * 2 * MS + MS));
    }
    assert_eq!(
        r.submit(AttemptId(999), PayMethod::Card, &[1], 3_040 * MS),
        Decision::Queued
    );
    // At 3.041 s it goes half-open, and the waiting payment is its probe.
    r.poll(3_041 * MS, &mut events);
    assert_eq!(
        events,
        vec![Event::Dispatch {
            attempt: AttemptId(999),
            channel: 0
        }]
    );
    assert!(r.complete(AttemptId(999), Outcome::Failed, 3_050 * MS));
    assert_eq!(circuit(&r), Circuit::Open);
    // Half-open again at 6.05 s: even at a trickle of traffic the next
    // attempt is a probe. Three probes, all succeed: closed, fresh window.
    let mut probes = Vec::new();
    for i in 0..3 {
        let (p, ch) = send(&mut r, &[], 6_200 * MS + i * MS);
        assert_eq!((ch, circuit(&r)), (0, Circuit::HalfOpen));
        probes.push(p);
    }
    // All probe slots taken: the rest goes to b meanwhile.
    let (other, ch) = send(&mut r, &[], 6_210 * MS);
    assert_eq!(ch, 1);
    assert!(r.complete(other, Outcome::Succeeded, 6_211 * MS));
    for p in probes {
        assert_eq!(circuit(&r), Circuit::HalfOpen);
        assert!(r.complete(p, Outcome::Succeeded, 6_300 * MS));
    }
    let status = &r.channels()[0];
    assert_eq!(status.circuit, Circuit::Closed);
    assert_eq!(status.success_rate, 1.0);
    assert_eq!(status.timeouts, 0);
    assert_eq!(status.failed_total, 6);
    assert_eq!(status.succeeded_total, 3);
    assert_eq!(status.dispatched_total, 9);
}

/// One random scenario: random channels, limits, models, outages, load and
/// configuration; all invariants checked by the harness.
fn random_scenario(seed: u64) -> Tally {
    let mut rng = Rng::new(seed);
    let n = rng.range(1, 5) as usize;
    let mut channels = Vec::new();
    let mut models = Vec::new();
    for i in 0..n {
        let methods = match rng.range(0, 2) {
            0 => vec![PayMethod::Card],
            1 => vec![PayMethod::ThirdParty],
            _ => PayMethod::ALL.to_vec(),
        };
        channels.push(ChannelConfig {
            name: format!("ch{i}"),
            methods,
            capacity_per_s: rng.range(20, 800) as u32,
            max_concurrency: rng.range(2, 200) as u32,
            fee_bp: rng.range(30, 300) as u32,
            priority: rng.range(0, 3) as u8,
        });
        let latency_min_us = rng.range(MS, 100 * MS);
        let outage = if rng.chance(0.5) {
            let start = rng.range(0, 5 * S);
            let mode = [Mode::Failing, Mode::Silent, Mode::Late][rng.range(0, 2) as usize];
            Some((start, start + rng.range(S / 2, 5 * S), mode))
        } else {
            None
        };
        models.push(Model {
            latency_min_us,
            // Most channels answer well inside the timeout, some do not.
            latency_max_us: latency_min_us
                + if rng.chance(0.25) {
                    rng.range(0, 1_500 * MS)
                } else {
                    rng.range(0, 300 * MS)
                },
            fail_p: rng.next_f64() * 0.15,
            outage,
        });
    }
    let config = RouterConfig {
        queue_max: rng.range(0, 2_000) as usize,
        queue_deadline_us: rng.range(100 * MS, 5 * S),
        attempt_timeout_us: rng.range(300 * MS, 2 * S),
        window_us: rng.range(S, 20 * S),
        pace_burst_us: rng.range(0, 500 * MS),
        breaker_min_samples: rng.range(1, 20) as u32,
        breaker_failure_ratio: 0.2 + rng.next_f64() * 0.8,
        breaker_consecutive_failures: rng.range(2, 8) as u32,
        breaker_open_for_us: rng.range(S / 2, 4 * S),
        half_open_probes: rng.range(1, 4) as u32,
        refresh_us: rng.range(100 * MS, 2 * S),
    };
    let capacity: u32 = channels.iter().map(|c| c.capacity_per_s).sum();
    let load = f64::from(capacity) * (0.2 + rng.next_f64() * 2.8);
    let burst_start = rng.range(0, 5 * S);
    let burst_end = burst_start + rng.range(0, 2 * S);
    let tries_max = rng.range(1, 3) as u32;
    let mut sim = Sim::new(channels, models, config, rng.next_u64());
    sim.tries_max = tries_max;
    sim.run(
        6 * S,
        &|t| {
            if burst_start <= t && t < burst_end {
                load * 3.0
            } else {
                load
            }
        },
        &any_method,
    );
    sim.drain();
    sim.check_end()
}

#[test]
fn invariants_hold_for_random_configurations_and_loads() {
    let tallies = mall_core::seeds::for_each_seed(
        "-p mall-router --test router invariants_hold",
        0,
        100,
        random_scenario,
    );
    let mut total = Tally::default();
    for t in tallies {
        total.attempts += t.attempts;
        total.dispatched += t.dispatched;
        total.expired += t.expired;
        total.refused += t.refused;
        total.timed_out += t.timed_out;
    }
    // The scenarios reach every fate.
    assert!(
        total.expired > 0 && total.refused > 0 && total.timed_out > 0,
        "{total:?}"
    );
    eprintln!("{total:?}");
}

#[test]
fn same_seed_same_run() {
    let a = random_scenario(42);
    let b = random_scenario(42);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn decision_cost_is_reported() {
    for channels in [2, 8, 32] {
        let cost = bench::decision_cost(channels, 200_000);
        println!("router decision cost, {channels} channels: {cost:?} per submit + complete");
    }
}

#[allow(dead_code)]
fn print_status(status: &[ChannelStatus]) {
    for s in status {
        eprintln!("{s:?}");
    }
}

/// Retries that may only go to a channel whose breaker is open wait for it
/// on their own FIFO: they never hold back attempts another channel can
/// take now. (With one FIFO per method and a bounded look-ahead, 40 such
/// retries at the head stalled every payment behind them until their
/// deadlines: the night's payments collapsed that way.)
#[test]
fn retries_waiting_for_an_open_channel_never_block_the_queue() {
    let mut r = Router::new(
        vec![channel("a", 10_000, 1_000), channel("b", 10_000, 1_000)],
        RouterConfig::default(),
        0,
    );
    let mut events = Vec::new();
    // b fails five times in a row: its breaker opens.
    for i in 0..5u64 {
        assert_eq!(
            r.submit(AttemptId(i), PayMethod::ThirdParty, &[0], i as i64),
            Decision::Dispatch { channel: 1 }
        );
        assert!(r.complete(AttemptId(i), Outcome::Failed, i as i64 + 1));
    }
    r.poll(10, &mut events);
    assert_eq!(r.channels()[1].circuit, Circuit::Open);
    // 40 retries that already failed on a: only b may take them.
    for i in 100..140u64 {
        assert_eq!(
            r.submit(AttemptId(i), PayMethod::ThirdParty, &[0], 20),
            Decision::Queued
        );
    }
    // Fresh attempts queue behind them (no overtaking at submission), but
    // the release sends them to a at once.
    for i in 200..300u64 {
        r.submit(AttemptId(i), PayMethod::ThirdParty, &[], 30);
    }
    r.poll(31, &mut events);
    let sent: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Dispatch { attempt, channel } => {
                assert_eq!(*channel, 0, "only a is free");
                Some(attempt.0)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        (200..300).collect::<Vec<_>>(),
        "oldest first, none blocked"
    );
    assert_eq!(r.queue_depth(), 40, "the retries wait for b");
}
