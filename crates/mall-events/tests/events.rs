//! The event log and its live aggregates: what the dashboard shows agrees
//! with a brute-force recount of what was written, and a full buffer drops
//! only views (counted), never an order or a payment.

use mall_events::live::LiveConfig;
use mall_events::{read_dir, Event, EventLog, Kind, LogConfig};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mall_core::rng::Rng;

const T0: i64 = 1_762_790_400_000; // 2025-11-10T16:00:00Z = 11.11 00:00 in China

fn random_event(rng: &mut Rng, t: i64) -> Event {
    let kinds = [
        Kind::View,
        Kind::View,
        Kind::Favorite,
        Kind::Cart,
        Kind::Order,
        Kind::Refusal,
        Kind::Refusal,
        Kind::Pay,
        Kind::Cancel,
        Kind::Refund,
        Kind::Deposit,
    ];
    let k = kinds[rng.below(kinds.len() as u64) as usize];
    let mut e = Event::new(t, k);
    e.user = rng.below(1000) + 1;
    e.sku = rng.below(20) + 1;
    match k {
        Kind::Order => {
            e.order = rng.next_u64() >> 12;
            e.amount_fen = (rng.below(1000) as i64 + 1) * 100;
            e.cod = rng.below(5) == 0;
            e.latency_us = rng.below(20_000) as u32 + 50;
        }
        Kind::Refusal => {
            e.reason =
                Some(["sold_out", "limit_reached", "sale_not_open"][rng.below(3) as usize].into());
            e.latency_us = rng.below(5_000) as u32 + 20;
        }
        Kind::Pay => {
            e.amount_fen = (rng.below(1000) as i64 + 1) * 100;
            e.channel = Some(["alipay", "wechat", "wallet"][rng.below(3) as usize].into());
        }
        Kind::Refund => e.amount_fen = rng.below(5000) as i64 + 1,
        _ => {}
    }
    e
}

#[test]
fn aggregates_agree_with_a_recount_of_the_log() {
    for seed in 0..5u64 {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::start(
            LogConfig {
                dir: Some(dir.path().to_path_buf()),
                segment_bytes: 64 * 1024, // several segments
                views_buffered_max: 1_000_000,
                drain_every: Duration::from_millis(5),
            },
            LiveConfig {
                window_s: 900,
                top_items: 5,
            },
        )
        .unwrap();
        let mut rng = Rng::new(seed);
        // 120 s of traffic, with a spike at the opening; a few events
        // arrive a little out of order (recorded late by their request).
        let mut t = T0;
        for i in 0..20_000u64 {
            t += if i < 10_000 {
                rng.below(2) as i64
            } else {
                rng.below(20) as i64
            };
            let late = if rng.below(50) == 0 {
                rng.below(3_000) as i64
            } else {
                0
            };
            log.record(random_event(&mut rng, t - late));
        }
        log.flush();
        let (events, bad) = read_dir(dir.path()).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(events.len(), 20_000, "every event written");
        assert!(
            mall_events::segments(dir.path()).unwrap().len() > 1,
            "segments rotate"
        );
        let now = t;
        let snap = log.live().snapshot(now, 300);

        // The recount, by brute force.
        let count = |k: Kind| events.iter().filter(|e| e.kind == k).count() as u64;
        let gmv: i64 = events
            .iter()
            .filter(|e| e.kind == Kind::Pay || (e.kind == Kind::Order && e.cod))
            .map(|e| e.amount_fen)
            .sum();
        assert_eq!(snap.totals.orders, count(Kind::Order));
        assert_eq!(snap.totals.paid, count(Kind::Pay));
        assert_eq!(snap.totals.refusals, count(Kind::Refusal));
        assert_eq!(snap.totals.views, count(Kind::View));
        assert_eq!(snap.totals.deposits, count(Kind::Deposit));
        assert_eq!(snap.totals.gmv_fen, gmv);
        assert_eq!(
            snap.totals.refunded_fen,
            events
                .iter()
                .filter(|e| e.kind == Kind::Refund)
                .map(|e| e.amount_fen)
                .sum::<i64>()
        );
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == Kind::Refusal) {
            *reasons.entry(e.reason.clone().unwrap()).or_default() += 1;
        }
        assert_eq!(snap.refusals, reasons);
        assert_eq!(snap.funnel.cart, count(Kind::Cart));
        // Per second, over the last 300 s.
        assert_eq!(snap.series.t_ms.len(), 300);
        for (i, t_ms) in snap.series.t_ms.iter().enumerate() {
            let in_s = |e: &&Event| e.at_ms.div_euclid(1000) * 1000 == *t_ms;
            let orders = events
                .iter()
                .filter(in_s)
                .filter(|e| e.kind == Kind::Order)
                .count() as u64;
            let paid = events
                .iter()
                .filter(in_s)
                .filter(|e| e.kind == Kind::Pay)
                .count() as u64;
            let gmv: i64 = events
                .iter()
                .filter(in_s)
                .filter(|e| e.kind == Kind::Pay || (e.kind == Kind::Order && e.cod))
                .map(|e| e.amount_fen)
                .sum();
            assert_eq!(snap.series.orders[i], orders, "orders at {t_ms}");
            assert_eq!(snap.series.paid[i], paid, "paid at {t_ms}");
            assert_eq!(snap.series.gmv_fen[i], gmv, "gmv at {t_ms}");
            for (c, per_s) in &snap.series.payments_by_channel {
                let n = events
                    .iter()
                    .filter(in_s)
                    .filter(|e| e.kind == Kind::Pay && e.channel.as_deref() == Some(c))
                    .count() as u64;
                assert_eq!(per_s[i], n, "{c} at {t_ms}");
            }
            // p99 is a bucket bound at or above the true p99 (within 25%).
            let mut lat: Vec<u32> = events
                .iter()
                .filter(in_s)
                .filter(|e| matches!(e.kind, Kind::Order | Kind::Refusal))
                .map(|e| e.latency_us)
                .collect();
            lat.sort_unstable();
            match snap.series.p99_ms[i] {
                None => assert!(lat.is_empty()),
                Some(p99) => {
                    let truth =
                        lat[((lat.len() as f64 * 0.99).ceil() as usize).max(1) - 1] as f64 / 1000.0;
                    assert!(
                        p99 >= truth && p99 <= truth * 1.25 + 0.002,
                        "p99 {p99} vs {truth} at {t_ms}"
                    );
                }
            }
        }
        // Per minute: the window's GMV and orders, minute by minute.
        let window_from = events.last().unwrap().at_ms.div_euclid(1000) - 899;
        for m in &snap.minutes {
            let in_m = |e: &&Event| {
                e.at_ms.div_euclid(60_000) * 60_000 == m.t_ms
                    && e.at_ms.div_euclid(1000) >= window_from
            };
            let gmv: i64 = events
                .iter()
                .filter(in_m)
                .filter(|e| e.kind == Kind::Pay || (e.kind == Kind::Order && e.cod))
                .map(|e| e.amount_fen)
                .sum();
            let orders = events
                .iter()
                .filter(in_m)
                .filter(|e| e.kind == Kind::Order)
                .count() as u64;
            assert_eq!((m.gmv_fen, m.orders), (gmv, orders), "minute {}", m.t_ms);
        }
        assert!(snap.minutes.len() >= 2, "the traffic spans minutes");
        // Top items by orders.
        let mut by_sku: HashMap<u64, u64> = HashMap::new();
        for e in events.iter().filter(|e| e.kind == Kind::Order) {
            *by_sku.entry(e.sku).or_default() += 1;
        }
        let mut expected: Vec<(u64, u64)> = by_sku.into_iter().collect();
        expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let got: Vec<(u64, u64)> = snap.top_items.iter().map(|t| (t.sku, t.orders)).collect();
        assert_eq!(got, expected[..5].to_vec());
    }
}

#[test]
fn a_full_buffer_drops_views_only_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::start(
        LogConfig {
            dir: Some(dir.path().to_path_buf()),
            segment_bytes: 1 << 30,
            views_buffered_max: 10, // forced full almost at once
            drain_every: Duration::from_millis(50),
        },
        LiveConfig::default(),
    )
    .unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let mut view = Event::new(T0 + i as i64, Kind::View);
                    view.user = w;
                    log.record(view);
                    if i % 4 == 0 {
                        let mut order = Event::new(T0 + i as i64, Kind::Order);
                        order.order = w << 32 | i;
                        order.amount_fen = 100;
                        log.record(order);
                        let mut pay = Event::new(T0 + i as i64, Kind::Pay);
                        pay.order = w << 32 | i;
                        pay.amount_fen = 100;
                        log.record(pay);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    log.flush();
    let (events, _) = read_dir(dir.path()).unwrap();
    let orders = events.iter().filter(|e| e.kind == Kind::Order).count();
    let pays = events.iter().filter(|e| e.kind == Kind::Pay).count();
    let views = events.iter().filter(|e| e.kind == Kind::View).count() as u64;
    assert_eq!(orders, 4 * 5_000, "no order event lost");
    assert_eq!(pays, 4 * 5_000, "no payment event lost");
    assert!(log.dropped_views() > 0, "the buffer was full");
    assert_eq!(
        views + log.dropped_views(),
        4 * 20_000,
        "every view written or counted as dropped"
    );
    let snap = log.live().snapshot(T0 + 20_000, 60);
    assert_eq!(snap.totals.orders, 20_000);
    assert_eq!(snap.totals.views, views);
}

#[test]
fn malformed_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x.jsonl"),
        "{\"t\":1,\"k\":\"order\",\"s\":3,\"a\":5}\nnot json\n{\"t\":2,\"k\":\"teleport\"}\n\n{\"t\":0,\"k\":\"view\"}\n",
    )
    .unwrap();
    let (events, bad) = read_dir(dir.path()).unwrap();
    assert_eq!(bad, 2);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, Kind::View, "sorted by time");
    assert_eq!(
        (events[1].sku, events[1].amount_fen, events[1].quantity),
        (3, 5, 1)
    );
}
