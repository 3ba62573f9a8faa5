//! Live aggregates folded from the event stream: totals, a per-second
//! series (orders, payments, GMV, refusals, snap-up latency, payments per
//! channel) over a sliding window, refusals by reason, the funnel, and the
//! top items. The dashboard reads a [`Snapshot`] a few times a second.
//!
//! GMV counts money actually committed: successful payments, and cash-on-
//! delivery orders when they are placed.

use crate::{Event, Kind};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Seconds of per-second series kept.
    pub window_s: usize,
    /// Top items reported.
    pub top_items: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            window_s: 900,
            top_items: 10,
        }
    }
}

/// Latency histogram buckets: bucket `i` holds values up to `1.25^i` µs.
const BUCKETS: usize = 96;

fn bucket_of(us: u32) -> usize {
    if us <= 1 {
        return 0;
    }
    ((f64::from(us).ln() / 1.25f64.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_ms(i: usize) -> f64 {
    1.25f64.powi(i as i32) / 1000.0
}

#[derive(Clone, Debug)]
struct Second {
    orders: u64,
    paid: u64,
    gmv_fen: i64,
    refusals: u64,
    latency: [u32; BUCKETS],
    by_channel: BTreeMap<String, u64>,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            orders: 0,
            paid: 0,
            gmv_fen: 0,
            refusals: 0,
            latency: [0; BUCKETS],
            by_channel: BTreeMap::new(),
        }
    }
}

impl Second {
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n: u64 = self.latency.iter().map(|c| u64::from(*c)).sum();
        if n == 0 {
            return None;
        }
        let want = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= want {
                return Some(bucket_ms(i));
            }
        }
        Some(bucket_ms(BUCKETS - 1))
    }
}

#[derive(Default)]
struct Agg {
    /// `seconds[i]` is second `first_s + i` (seconds since the epoch).
    first_s: i64,
    seconds: VecDeque<Second>,
    totals: Totals,
    refusals: BTreeMap<String, u64>,
    /// sku → (orders, gmv fen)
    items: HashMap<u64, (u64, i64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub gmv_fen: i64,
    pub orders: u64,
    pub paid: u64,
    pub refusals: u64,
    pub cancels: u64,
    pub refunds: u64,
    pub refunded_fen: i64,
    pub views: u64,
    pub favorites: u64,
    pub carts: u64,
    /// Pre-sale deposits made (their units held until the balance window).
    pub deposits: u64,
}

pub struct Live {
    config: LiveConfig,
    agg: Mutex<Agg>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Series {
    pub t_ms: Vec<i64>,
    pub orders: Vec<u64>,
    pub paid: Vec<u64>,
    pub gmv_fen: Vec<i64>,
    pub refusals: Vec<u64>,
    /// Snap-up latency (server side) of the second; `null` with no snap-ups.
    pub p50_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
    pub payments_by_channel: BTreeMap<String, Vec<u64>>,
}

/// One minute of the night (minutes since the epoch, whole ones).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Minute {
    pub t_ms: i64,
    pub orders: u64,
    pub paid: u64,
    pub gmv_fen: i64,
    pub refusals: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopItem {
    pub sku: u64,
    pub orders: u64,
    pub gmv_fen: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Funnel {
    pub view: u64,
    pub favorite: u64,
    pub cart: u64,
    pub order: u64,
    pub paid: u64,
}

/// What the dashboard shows of the events.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub totals: Totals,
    pub series: Series,
    /// Per minute, over the whole window kept (15 minutes by default).
    pub minutes: Vec<Minute>,
    pub refusals: BTreeMap<String, u64>,
    pub funnel: Funnel,
    pub top_items: Vec<TopItem>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    pub fn new(config: LiveConfig) -> Live {
        Live {
            config,
            agg: Mutex::new(Agg::default()),
        }
    }

    /// Folds events in (any order; an event older than the window counts
    /// in the totals but not in the series).
    pub fn fold(&self, events: &[Event]) {
        let mut agg = lock(&self.agg);
        for e in events {
            agg.fold(e, self.config.window_s);
        }
    }

    /// Totals, and the series of the last `last_s` seconds up to `now_ms`
    /// (zeros where nothing happened).
    pub fn snapshot(&self, now_ms: i64, last_s: usize) -> Snapshot {
        let agg = lock(&self.agg);
        let now_s = now_ms.div_euclid(1000);
        let from_s = now_s - last_s as i64 + 1;
        let mut series = Series::default();
        let channels: Vec<String> = agg
            .seconds
            .iter()
            .flat_map(|s| s.by_channel.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for c in &channels {
            series.payments_by_channel.insert(c.clone(), Vec::new());
        }
        let empty = Second::default();
        for t in from_s..=now_s {
            let i = t - agg.first_s;
            let s = if i >= 0 && (i as usize) < agg.seconds.len() {
                &agg.seconds[i as usize]
            } else {
                &empty
            };
            series.t_ms.push(t * 1000);
            series.orders.push(s.orders);
            series.paid.push(s.paid);
            series.gmv_fen.push(s.gmv_fen);
            series.refusals.push(s.refusals);
            series.p50_ms.push(s.quantile_ms(0.5));
            series.p99_ms.push(s.quantile_ms(0.99));
            for c in &channels {
                series
                    .payments_by_channel
                    .get_mut(c)
                    .expect("inserted above")
                    .push(s.by_channel.get(c).copied().unwrap_or(0));
            }
        }
        let mut top: Vec<TopItem> = agg
            .items
            .iter()
            .map(|(sku, (orders, gmv))| TopItem {
                sku: *sku,
                orders: *orders,
                gmv_fen: *gmv,
            })
            .collect();
        let mut minutes: Vec<Minute> = Vec::new();
        for (i, s) in agg.seconds.iter().enumerate() {
            let t_ms = (agg.first_s + i as i64).div_euclid(60) * 60_000;
            if minutes.last().is_none_or(|m| m.t_ms != t_ms) {
                minutes.push(Minute {
                    t_ms,
                    ..Minute::default()
                });
            }
            let m = minutes.last_mut().expect("pushed above");
            m.orders += s.orders;
            m.paid += s.paid;
            m.gmv_fen += s.gmv_fen;
            m.refusals += s.refusals;
        }
        top.sort_by(|a, b| b.orders.cmp(&a.orders).then(a.sku.cmp(&b.sku)));
        top.truncate(self.config.top_items);
        let t = &agg.totals;
        Snapshot {
            funnel: Funnel {
                view: t.views,
                favorite: t.favorites,
                cart: t.carts,
                order: t.orders,
                paid: t.paid,
            },
            totals: t.clone(),
            series,
            minutes,
            refusals: agg.refusals.clone(),
            top_items: top,
        }
    }
}

impl Agg {
    /// The bucket of second `t_s`, growing the window forward as needed;
    /// `None` if it fell out of the window.
    fn second(&mut self, t_s: i64, window_s: usize) -> Option<&mut Second> {
        if self.seconds.is_empty() {
            self.first_s = t_s;
        }
        if t_s < self.first_s {
            // Late, but still inside the window: grow backwards.
            let back = (self.first_s - t_s) as usize;
            if back + self.seconds.len() > window_s {
                return None;
            }
            for _ in 0..back {
                self.seconds.push_front(Second::default());
            }
            self.first_s = t_s;
        }
        let i = (t_s - self.first_s) as usize;
        while self.seconds.len() <= i {
            self.seconds.push_back(Second::default());
        }
        while self.seconds.len() > window_s {
            self.seconds.pop_front();
            self.first_s += 1;
        }
        let i = (t_s - self.first_s) as usize;
        self.seconds.get_mut(i)
    }

    fn fold(&mut self, e: &Event, window_s: usize) {
        let t_s = e.at_ms.div_euclid(1000);
        let mut gmv = 0;
        let totals = &mut self.totals;
        match e.kind {
            Kind::View => totals.views += 1,
            Kind::Favorite => totals.favorites += 1,
            Kind::Cart => totals.carts += 1,
            Kind::Order => {
                totals.orders += 1;
                if e.cod {
                    gmv = e.amount_fen;
                }
                self.items.entry(e.sku).or_default().0 += 1;
            }
            Kind::Pay => {
                totals.paid += 1;
                gmv = e.amount_fen;
            }
            Kind::Refusal => {
                totals.refusals += 1;
                let reason = e.reason.clone().unwrap_or_else(|| "unknown".into());
                *self.refusals.entry(reason).or_default() += 1;
            }
            Kind::Cancel => totals.cancels += 1,
            Kind::Refund => {
                totals.refunds += 1;
                totals.refunded_fen += e.amount_fen;
            }
            Kind::Deposit => totals.deposits += 1,
        }
        self.totals.gmv_fen += gmv;
        if gmv != 0 {
            self.items.entry(e.sku).or_default().1 += gmv;
        }
        let Some(s) = self.second(t_s, window_s) else {
            return;
        };
        match e.kind {
            Kind::Order => s.orders += 1,
            Kind::Pay => {
                s.paid += 1;
                *s.by_channel
                    .entry(e.channel.clone().unwrap_or_else(|| "wallet".into()))
                    .or_default() += 1;
            }
            Kind::Refusal => s.refusals += 1,
            _ => {}
        }
        s.gmv_fen += gmv;
        if matches!(e.kind, Kind::Order | Kind::Refusal) && e.latency_us > 0 {
            s.latency[bucket_of(e.latency_us)] += 1;
        }
    }
}
