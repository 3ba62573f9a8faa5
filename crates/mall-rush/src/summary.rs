//! The figures of a run: counts by kind and outcome, throughput and latency
//! over time, sell-out of the hottest items, and fairness.

use crate::run::{Kind, Outcome, Record};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize, Default, Debug)]
pub struct KindStats {
    pub sent: u64,
    pub ok: u64,
    /// Answers by code (`created`, `sold_out`, `timeout`, ...).
    pub codes: BTreeMap<String, u64>,
}

#[derive(Serialize, Debug)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Debug)]
pub struct Second {
    /// Seconds from the opening (by intended send time).
    pub t: i64,
    pub sent: u64,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize, Debug)]
pub struct HotItem {
    pub rank: u32,
    pub sku: u64,
    pub stock: u32,
    pub attempts: u64,
    pub orders: u64,
    /// When a shopper was first told it was sold out (ms from the
    /// opening); absent if it never sold out.
    pub sold_out_at_ms: Option<f64>,
    /// Cumulative orders over time: `(ms from the opening, orders)`.
    pub curve: Vec<(f64, u64)>,
}

#[derive(Serialize, Debug)]
pub struct Fairness {
    /// `sold_out` answers on items whose stock never came back (no cancel
    /// or expiry on them during the run).
    pub sold_out_answers: u64,
    /// Of those, answers to requests meant to leave earlier than a request
    /// that got an order on the same item.
    pub lost_to_later: u64,
}

#[derive(Serialize, Debug)]
pub struct Summary {
    pub scenario: String,
    pub backend: String,
    /// When the sale opened (ms since the epoch): the `t` of the timeline
    /// counts from it (a night forecast reads it).
    pub opening_ms: i64,
    pub users: u32,
    pub items: u32,
    pub wall_s: f64,
    pub generator_cpu_cores: f64,
    /// Over the busiest second.
    pub generator_cpu_cores_peak: f64,
    pub requests: u64,
    pub not_sent: u64,
    pub late_pays_skipped: u64,
    pub by_kind: BTreeMap<String, KindStats>,
    pub snapup_latency: Percentiles,
    /// Snap-ups answered per second over the snap-up window.
    pub snapups_per_s: f64,
    /// Payments in time (not late ones), from intended send to answer.
    pub pay_latency: Percentiles,
    /// The coupon claim rush (claims answered, whatever the answer), from
    /// intended send to answer; `None` without a claim rush.
    pub claim_latency: Option<Percentiles>,
    /// Cart checkouts (answered, whatever the answer), from intended send
    /// to answer; `None` without checkouts.
    pub checkout_latency: Option<Percentiles>,
    /// Payments answered paid, per second, from the first sent to the last answered.
    pub paid_per_s: f64,
    /// Most payments answered paid in one second.
    pub paid_peak_per_s: u64,
    pub peak_requests_per_s: u64,
    pub timeline: Vec<Second>,
    pub hottest: Vec<HotItem>,
    pub fairness: Fairness,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Browse => "browse",
        Kind::SnapUp => "snap_up",
        Kind::Pay => "pay",
        Kind::Cancel => "cancel",
        Kind::LatePay => "late_pay",
        Kind::Claim => "claim",
        Kind::Checkout => "checkout",
        Kind::Deposit => "deposit",
        Kind::Balance => "balance",
        Kind::CheckoutPay => "checkout_pay",
    }
}

fn is_error(code: &str) -> bool {
    matches!(
        code,
        "timeout" | "transport_error" | "store_unavailable" | "internal" | "unanswered"
    ) || code.starts_with("http_5")
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
    }
}

pub fn summarize(outcome: &Outcome, backend: &str) -> Summary {
    let records = &outcome.records;
    let plan = &outcome.plan;
    let mut by_kind: BTreeMap<String, KindStats> = BTreeMap::new();
    let mut latency = histogram();
    let mut seconds: BTreeMap<i64, (u64, u64, u64, u64, hdrhistogram::Histogram<u64>)> =
        BTreeMap::new();
    for r in records {
        let k = by_kind.entry(kind_name(r.kind).into()).or_default();
        k.sent += 1;
        k.ok += u64::from(r.ok());
        *k.codes.entry(r.code.clone()).or_default() += 1;
        let t = r.at_us.div_euclid(1_000_000);
        let s = seconds
            .entry(t)
            .or_insert_with(|| (0, 0, 0, 0, histogram()));
        s.0 += 1;
        if r.ok() {
            s.1 += 1;
        } else if is_error(&r.code) {
            s.3 += 1;
        } else {
            s.2 += 1;
        }
        let l = r.latency_us().max(1) as u64;
        let _ = s.4.record(l);
        if r.kind == Kind::SnapUp {
            let _ = latency.record(l);
        }
    }
    let timeline: Vec<Second> = seconds
        .into_iter()
        .map(|(t, (sent, ok, refused, errors, h))| Second {
            t,
            sent,
            ok,
            refused,
            errors,
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        })
        .collect();
    let snapups: Vec<&Record> = records.iter().filter(|r| r.kind == Kind::SnapUp).collect();
    let window_s = match (
        snapups.iter().map(|r| r.at_us).min(),
        snapups.iter().map(|r| r.done_us).max(),
    ) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
        _ => 1.0,
    };
    let mut claim_latency = hdrhistogram::Histogram::<u64>::new(3).expect("valid histogram");
    for r in records
        .iter()
        .filter(|r| r.kind == Kind::Claim && !is_error(&r.code))
    {
        let _ = claim_latency.record(r.latency_us().max(0) as u64);
    }
    let mut checkout_latency = hdrhistogram::Histogram::<u64>::new(3).expect("valid histogram");
    for r in records
        .iter()
        .filter(|r| r.kind == Kind::Checkout && !is_error(&r.code))
    {
        let _ = checkout_latency.record(r.latency_us().max(0) as u64);
    }
    // A checkout paid as a whole is one payment.
    let pays: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Pay | Kind::CheckoutPay))
        .collect();
    let mut pay_latency = hdrhistogram::Histogram::<u64>::new(3).expect("valid histogram");
    let mut paid_by_second: BTreeMap<i64, u64> = BTreeMap::new();
    for r in pays.iter().filter(|r| r.ok()) {
        let _ = pay_latency.record(r.latency_us().max(0) as u64);
        *paid_by_second
            .entry(r.done_us.div_euclid(1_000_000))
            .or_default() += 1;
    }
    let paid = paid_by_second.values().sum::<u64>();
    let paid_window_s = match (
        pays.iter().map(|r| r.at_us).min(),
        pays.iter().filter(|r| r.ok()).map(|r| r.done_us).max(),
    ) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
        _ => 1.0,
    };
    // Items whose stock came back during the run (cancel, expiry) make
    // "later won" legitimate; fairness looks at the others.
    let mut restocked = std::collections::HashSet::new();
    for r in records {
        if (r.kind == Kind::Cancel && r.ok()) || r.code == "hold_expired" {
            restocked.insert(r.rank);
        }
    }
    if plan.scenario.late_pay_share > 0.0
        || plan.scenario.pay_share + plan.scenario.cancel_share < 1.0
    {
        // Unpaid holds expire too; a rank with unpaid online orders may restock.
        for r in &snapups {
            if r.code == "created" && r.order_status.as_deref() == Some("awaiting_payment") {
                let a = &plan.attempts[r.attempt.unwrap_or(0) as usize];
                if matches!(
                    a.follow,
                    crate::plan::FollowUp::Nothing | crate::plan::FollowUp::LatePay
                ) {
                    restocked.insert(r.rank);
                }
            }
        }
    }
    let mut per_rank: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    for r in &snapups {
        per_rank.entry(r.rank).or_default().push(r);
    }
    let mut fairness = Fairness {
        sold_out_answers: 0,
        lost_to_later: 0,
    };
    for (rank, rs) in &per_rank {
        if restocked.contains(rank) {
            continue;
        }
        let last_win = rs
            .iter()
            .filter(|r| r.code == "created")
            .map(|r| r.at_us)
            .max();
        for r in rs.iter().filter(|r| r.code == "sold_out") {
            fairness.sold_out_answers += 1;
            if last_win.is_some_and(|w| r.at_us < w) {
                fairness.lost_to_later += 1;
            }
        }
    }
    let hottest = (0..plan.items.len().min(5) as u32)
        .map(|rank| {
            let rs = per_rank.get(&rank).cloned().unwrap_or_default();
            let mut wins: Vec<f64> = rs
                .iter()
                .filter(|r| r.code == "created")
                .map(|r| r.done_us as f64 / 1000.0)
                .collect();
            wins.sort_by(f64::total_cmp);
            // The first time a shopper was told "sold out": the time to sell
            // out. (Cancels and expired holds may put units back later.)
            let sold_out_at_ms = rs
                .iter()
                .filter(|r| r.code == "sold_out")
                .map(|r| r.done_us as f64 / 1000.0)
                .reduce(f64::min);
            let step = (wins.len() / 200).max(1);
            let curve = wins
                .iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i + 1 == wins.len())
                .map(|(i, &t)| (t, i as u64 + 1))
                .collect();
            HotItem {
                rank,
                sku: outcome.skus.get(rank as usize).map_or(0, |s| s.0),
                stock: plan.items[rank as usize].stock_total,
                attempts: rs.len() as u64,
                orders: wins.len() as u64,
                sold_out_at_ms,
                curve,
            }
        })
        .collect();
    Summary {
        scenario: plan.scenario.name.clone(),
        backend: backend.into(),
        opening_ms: outcome.opening_ms,
        users: plan.scenario.users,
        items: plan.scenario.items,
        wall_s: outcome.wall_s,
        generator_cpu_cores: outcome.cpu_cores_used,
        generator_cpu_cores_peak: outcome.cpu_cores_peak,
        requests: records.len() as u64,
        not_sent: outcome.not_sent,
        late_pays_skipped: outcome.late_pays_skipped,
        by_kind,
        snapup_latency: percentiles(&latency),
        claim_latency: (!claim_latency.is_empty()).then(|| percentiles(&claim_latency)),
        checkout_latency: (!checkout_latency.is_empty()).then(|| percentiles(&checkout_latency)),
        snapups_per_s: snapups.len() as f64 / window_s,
        pay_latency: percentiles(&pay_latency),
        paid_per_s: paid as f64 / paid_window_s,
        paid_peak_per_s: paid_by_second.values().copied().max().unwrap_or(0),
        peak_requests_per_s: timeline.iter().map(|s| s.sent).max().unwrap_or(0),
        timeline,
        hottest,
        fairness,
    }
}

/// The summary as a table for the terminal.
pub fn print(summary: &Summary) {
    println!(
        "\n== mall rush: {} ({}) — {} shoppers, {} items ==",
        summary.scenario, summary.backend, summary.users, summary.items
    );
    println!("{:<10} {:>9} {:>9}  answers", "kind", "sent", "ok");
    for (kind, k) in &summary.by_kind {
        let codes: Vec<String> = k.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("{kind:<10} {:>9} {:>9}  {}", k.sent, k.ok, codes.join(", "));
    }
    let l = &summary.snapup_latency;
    println!(
        "snap-up latency from intended send: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    println!(
        "snap-ups {:.0}/s over their window; peak {} requests in one second; this process used {:.2} cores on average, {:.2} in its busiest second (the generator; plus the server in demo and in-process runs); {} not sent; {} late payments skipped (hold outlives the run)",
        summary.snapups_per_s, summary.peak_requests_per_s, summary.generator_cpu_cores, summary.generator_cpu_cores_peak, summary.not_sent, summary.late_pays_skipped
    );
    if let Some(l) = &summary.claim_latency {
        println!(
            "coupon claims from intended send: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    if let Some(l) = &summary.checkout_latency {
        println!(
            "cart checkouts from intended send: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    if summary.paid_per_s > 0.0 {
        let l = &summary.pay_latency;
        println!(
            "payments: {:.0} paid orders/s from the first sent to the last paid, {} at most in one second; latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            summary.paid_per_s, summary.paid_peak_per_s, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    println!("throughput (by intended second): t  sent  ok  refused  errors  p50ms  p99ms");
    for s in summary.timeline.iter().filter(|s| s.t >= -1).take(40) {
        println!(
            "  {:>4}s {:>7} {:>7} {:>7} {:>6} {:>7.2} {:>7.2}",
            s.t, s.sent, s.ok, s.refused, s.errors, s.p50_ms, s.p99_ms
        );
    }
    println!("hottest items: rank sku stock attempts orders sold-out-at");
    for h in &summary.hottest {
        let at = h
            .sold_out_at_ms
            .map_or("not sold out".to_string(), |ms| format!("{ms:.0} ms"));
        println!(
            "  #{:<3} {:>6} {:>6} {:>8} {:>6}  {at}",
            h.rank + 1,
            h.sku,
            h.stock,
            h.attempts,
            h.orders
        );
    }
    let f = &summary.fairness;
    let share = if f.sold_out_answers > 0 {
        100.0 * f.lost_to_later as f64 / f.sold_out_answers as f64
    } else {
        0.0
    };
    println!(
        "fairness: {} of {} sold-out answers ({share:.2}%) went to a request meant to leave before a later winner",
        f.lost_to_later, f.sold_out_answers
    );
}
