//! `mall report`: the night's figures from the event log, printed and as a
//! self-contained HTML page (inline SVG charts, nothing fetched).

use crate::chart::{chart, escape};
use crate::live::{Live, LiveConfig, Snapshot};
use crate::{Event, Kind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The night in figures.
#[derive(Clone, Debug, Serialize)]
pub struct Night {
    pub events: u64,
    pub bad_lines: u64,
    pub from_ms: i64,
    pub to_ms: i64,
    pub snapshot: Snapshot,
    /// Most orders in one second, and which second.
    pub peak_orders_per_s: u64,
    pub peak_orders_at_ms: i64,
    pub peak_paid_per_s: u64,
    pub peak_refusals_per_s: u64,
    /// Payments per channel over the night.
    pub paid_by_channel: BTreeMap<String, u64>,
}

/// Reads an event log directory and adds it up.
/// The night of a cluster: every node's event log, together (each node
/// records the requests it answered, so nothing is counted twice).
pub fn night_of(dirs: &[&Path]) -> std::io::Result<Night> {
    let mut events = Vec::new();
    let mut bad = 0;
    for dir in dirs {
        let (mut e, b) = crate::read_dir(dir)?;
        events.append(&mut e);
        bad += b;
    }
    events.sort_by_key(|e| e.at_ms);
    Ok(of_events(&events, bad))
}

pub fn night(dir: &Path) -> std::io::Result<Night> {
    let (events, bad) = crate::read_dir(dir)?;
    Ok(of_events(&events, bad))
}

pub fn of_events(events: &[Event], bad_lines: u64) -> Night {
    let from_ms = events.first().map_or(0, |e| e.at_ms);
    let to_ms = events.last().map_or(0, |e| e.at_ms);
    let span_s = ((to_ms - from_ms) / 1000 + 2).clamp(1, 7 * 86_400) as usize;
    let live = Live::new(LiveConfig {
        window_s: span_s,
        top_items: 20,
    });
    live.fold(events);
    let snapshot = live.snapshot(to_ms, span_s);
    let s = &snapshot.series;
    let (peak_i, peak) = s
        .orders
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
        .map_or((0, 0), |(i, n)| (i, *n));
    let mut paid_by_channel = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Pay) {
        *paid_by_channel
            .entry(e.channel.clone().unwrap_or_else(|| "wallet".into()))
            .or_default() += 1;
    }
    Night {
        events: events.len() as u64,
        bad_lines,
        from_ms,
        to_ms,
        peak_orders_per_s: peak,
        peak_orders_at_ms: s.t_ms.get(peak_i).copied().unwrap_or(0),
        peak_paid_per_s: s.paid.iter().copied().max().unwrap_or(0),
        peak_refusals_per_s: s.refusals.iter().copied().max().unwrap_or(0),
        paid_by_channel,
        snapshot,
    }
}

fn yuan(fen: i64) -> String {
    format!("¥{}.{:02}", fen / 100, (fen % 100).abs())
}

/// The night as text.
pub fn print(n: &Night) -> String {
    let t = &n.snapshot.totals;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "the night: {} events over {:.0} s ({} unreadable lines)",
        n.events,
        (n.to_ms - n.from_ms) as f64 / 1000.0,
        n.bad_lines
    );
    let _ = writeln!(
        out,
        "GMV {}; orders {}, paid {}, refusals {}, cancels {}, refunds {} ({})",
        yuan(t.gmv_fen),
        t.orders,
        t.paid,
        t.refusals,
        t.cancels,
        t.refunds,
        yuan(t.refunded_fen)
    );
    let _ = writeln!(
        out,
        "peak: {} orders/s at +{:.0} s; {} payments/s; {} refusals/s",
        n.peak_orders_per_s,
        (n.peak_orders_at_ms - n.from_ms) as f64 / 1000.0,
        n.peak_paid_per_s,
        n.peak_refusals_per_s
    );
    let f = &n.snapshot.funnel;
    let _ = writeln!(
        out,
        "funnel: view {} → favourite {} → cart {} → order {} → paid {}",
        f.view, f.favorite, f.cart, f.order, f.paid
    );
    let reasons: Vec<String> = n
        .snapshot
        .refusals
        .iter()
        .map(|(r, c)| format!("{r} {c}"))
        .collect();
    let _ = writeln!(out, "refusals: {}", reasons.join(", "));
    let channels: Vec<String> = n
        .paid_by_channel
        .iter()
        .map(|(c, k)| format!("{c} {k}"))
        .collect();
    let _ = writeln!(out, "payments by channel: {}", channels.join(", "));
    let _ = writeln!(out, "top items (sku: orders, GMV):");
    for i in n.snapshot.top_items.iter().take(10) {
        let _ = writeln!(out, "  {:>8}: {:>7}  {}", i.sku, i.orders, yuan(i.gmv_fen));
    }
    out
}

/// The night as a self-contained HTML page.
pub fn html(n: &Night) -> String {
    let s = &n.snapshot.series;
    let x = |i: usize| (s.t_ms[i] - n.from_ms) as f64 / 1000.0;
    let line = |v: &[u64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, y)| (x(i), *y as f64))
            .collect()
    };
    let mut gmv = 0i64;
    let cumulative: Vec<(f64, f64)> = s
        .gmv_fen
        .iter()
        .enumerate()
        .map(|(i, g)| {
            gmv += g;
            (x(i), gmv as f64 / 100.0)
        })
        .collect();
    let latency = |v: &[Option<f64>]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .filter_map(|(i, y)| y.map(|y| (x(i), y)))
            .collect()
    };
    let by_channel: Vec<(&str, Vec<(f64, f64)>)> = s
        .payments_by_channel
        .iter()
        .map(|(c, v)| (c.as_str(), line(v)))
        .collect();
    let mut page = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>mall: the night</title><style>body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;padding:0 1em}figure{margin:1.5em 0}table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}pre{white-space:pre-wrap}</style></head><body><h1>The night, from the event log</h1>");
    let _ = write!(page, "<pre>{}</pre>", escape(&print(n)));
    page.push_str(&chart(
        "Orders and payments per second",
        "seconds from the first event",
        "per second",
        &[
            ("orders", line(&s.orders)),
            ("paid", line(&s.paid)),
            ("refusals", line(&s.refusals)),
        ],
    ));
    page.push_str(&chart(
        "GMV, cumulative",
        "seconds",
        "yuan",
        &[("GMV", cumulative)],
    ));
    if !by_channel.is_empty() {
        page.push_str(&chart(
            "Payments per second by channel",
            "seconds",
            "per second",
            &by_channel,
        ));
    }
    page.push_str(&chart(
        "Snap-up latency at the server",
        "seconds",
        "ms",
        &[("p50", latency(&s.p50_ms)), ("p99", latency(&s.p99_ms))],
    ));
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_night_adds_up_and_renders() {
        let mut events = Vec::new();
        let t0 = 1_000_000;
        for s in 0..10i64 {
            for i in 0..(10 - s) {
                let mut o = Event::new(t0 + s * 1000 + i, Kind::Order);
                o.sku = 7;
                events.push(o);
            }
            let mut p = Event::new(t0 + s * 1000 + 500, Kind::Pay);
            (p.sku, p.amount_fen, p.channel) = (7, 250, Some("alipay".into()));
            events.push(p);
        }
        let mut r = Event::new(t0 + 100, Kind::Refusal);
        r.reason = Some("sold_out".into());
        events.push(r);
        events.sort_by_key(|e| e.at_ms);
        let n = of_events(&events, 3);
        assert_eq!(n.snapshot.totals.orders, 55);
        assert_eq!(n.snapshot.totals.gmv_fen, 2_500);
        assert_eq!((n.peak_orders_per_s, n.peak_orders_at_ms), (10, t0));
        assert_eq!(n.paid_by_channel["alipay"], 10);
        let text = print(&n);
        assert!(
            text.contains("GMV ¥25.00")
                && text.contains("sold_out 1")
                && text.contains("3 unreadable"),
            "{text}"
        );
        let page = html(&n);
        assert!(page.contains("<svg") && !page.contains("<script"));
    }
}
