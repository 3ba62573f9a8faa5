//! Reports: the summary and audit as JSON, and a self-contained HTML page
//! (inline SVG charts, no scripts or fonts from anywhere) that opens in a
//! browser with no network.

use crate::audit::AuditReport;
use crate::summary::Summary;
use mall_events::chart::{chart, escape};
use std::fmt::Write;
use std::path::Path;

#[derive(serde::Serialize)]
struct Both<'a> {
    summary: &'a Summary,
    audit: &'a AuditReport,
}

pub fn write_json(path: &Path, summary: &Summary, audit: &AuditReport) -> std::io::Result<()> {
    let text =
        serde_json::to_string_pretty(&Both { summary, audit }).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

pub fn html(summary: &Summary, audit: &AuditReport) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>mall rush: {name}</title><style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}th{{background:#f4f4f4}}\
         .ok{{color:#2a7a2a}}.bad{{color:#b00}}figure{{margin:1.5em 0}}figcaption{{font-weight:600}}</style></head><body>\
         <h1>mall rush: {name}</h1><p>{backend}; {users} shoppers, {items} items; {wall:.1} s; this process used {cpu:.2} cores on average, {peak:.2} in its busiest second.</p>",
        name = escape(&summary.scenario),
        backend = escape(&summary.backend),
        users = summary.users,
        items = summary.items,
        wall = summary.wall_s,
        cpu = summary.generator_cpu_cores,
        peak = summary.generator_cpu_cores_peak
    );
    let verdict = if audit.passed() {
        "<p class=\"ok\"><b>Audit passed</b>"
    } else {
        "<p class=\"bad\"><b>Audit FAILED</b>"
    };
    let _ = write!(
        page,
        "{verdict}: {} orders, {} items, {} coupon claims, {} checkouts ({} paid with one payment) and {} pre-sale deposits ({} balances paid, {} forfeited) checked.</p>",
        audit.orders_checked,
        audit.items_checked,
        audit.claims_checked,
        audit.checkouts_checked,
        audit.checkouts_paid,
        audit.deposits_checked,
        audit.balances_paid,
        audit.deposits_forfeited
    );
    if !audit.passed() {
        page.push_str("<ul class=\"bad\">");
        for v in audit.violations.iter().take(50) {
            let _ = write!(page, "<li>{}</li>", escape(v));
        }
        page.push_str("</ul>");
    }
    page.push_str("<table><tr><th>kind</th><th>sent</th><th>ok</th><th style=\"text-align:left\">answers</th></tr>");
    for (kind, k) in &summary.by_kind {
        let codes: Vec<String> = k
            .codes
            .iter()
            .map(|(c, n)| format!("{} {n}", escape(c)))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{kind}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            k.sent,
            k.ok,
            codes.join(", ")
        );
    }
    page.push_str("</table>");
    let l = &summary.snapup_latency;
    let _ = write!(
        page,
        "<p>Snap-up latency from the intended send time: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms. \
         {:.0} snap-ups/s over their window; peak {} requests in one second.</p>",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, summary.snapups_per_s, summary.peak_requests_per_s
    );
    let tl = &summary.timeline;
    let pts = |f: &dyn Fn(&crate::summary::Second) -> f64| {
        tl.iter().map(|s| (s.t as f64, f(s))).collect::<Vec<_>>()
    };
    page.push_str(&chart(
        "Throughput over time",
        "seconds from the opening",
        "requests per second",
        &[
            ("sent", pts(&|s| s.sent as f64)),
            ("ok", pts(&|s| s.ok as f64)),
            ("refused", pts(&|s| s.refused as f64)),
            ("errors", pts(&|s| s.errors as f64)),
        ],
    ));
    page.push_str(&chart(
        "Latency over time",
        "seconds from the opening",
        "ms",
        &[("p50", pts(&|s| s.p50_ms)), ("p99", pts(&|s| s.p99_ms))],
    ));
    let curves: Vec<(String, Vec<(f64, f64)>)> = summary
        .hottest
        .iter()
        .map(|h| {
            (
                format!("#{} (stock {})", h.rank + 1, h.stock),
                h.curve.iter().map(|&(t, n)| (t, n as f64)).collect(),
            )
        })
        .collect();
    let named: Vec<(&str, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(n, c)| (n.as_str(), c.clone()))
        .collect();
    page.push_str(&chart(
        "Sell-out of the hottest items",
        "ms from the opening",
        "orders",
        &named,
    ));
    page.push_str("<table><tr><th>rank</th><th>sku</th><th>stock</th><th>attempts</th><th>orders</th><th>sold out at</th></tr>");
    for h in &summary.hottest {
        let at = h
            .sold_out_at_ms
            .map_or("—".to_string(), |ms| format!("{ms:.0} ms"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{at}</td></tr>",
            h.rank + 1,
            h.sku,
            h.stock,
            h.attempts,
            h.orders
        );
    }
    page.push_str("</table>");
    let f = &summary.fairness;
    let _ = write!(
        page,
        "<p>Fairness: {} of {} sold-out answers went to a request meant to leave before a later winner.</p></body></html>",
        f.lost_to_later, f.sold_out_answers
    );
    page
}

pub fn write_html(path: &Path, summary: &Summary, audit: &AuditReport) -> std::io::Result<()> {
    std::fs::write(path, html(summary, audit))
}
