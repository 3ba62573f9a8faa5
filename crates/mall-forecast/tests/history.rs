//! The synthetic history: deterministic, well-formed, and shaped like a
//! shop (daily rhythm, segments, intent growing toward the sale).

mod common;

use common::TempDir;
use mall_forecast::calendar::{china_day, china_hour, Date};
use mall_forecast::catalog::Catalog;
use mall_forecast::event::{read_dir, Event, Kind};
use mall_forecast::history::{generate, GenerateParams, Truth};
use mall_forecast::Error;
use std::collections::HashMap;

fn params(seed: u64) -> GenerateParams {
    GenerateParams {
        days: 8,
        items: 100,
        shoppers: 8_000,
        seed,
        ..GenerateParams::default()
    }
}

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn events(dir: &std::path::Path) -> Vec<Event> {
    let mut all = Vec::new();
    let stats = read_dir(dir, |e| all.push(e.clone())).unwrap();
    assert_eq!(stats.malformed, 0, "{:?}", stats.malformed_examples);
    assert_eq!(stats.unknown_kinds, 0);
    all
}

#[test]
fn the_same_seed_writes_the_same_bytes_and_another_seed_other_ones() {
    let (a, b, c) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
    let sa = generate(&params(7), a.path()).unwrap();
    let sb = generate(&params(7), b.path()).unwrap();
    generate(&params(8), c.path()).unwrap();
    assert_eq!(files(a.path()), files(b.path()));
    assert_eq!(sa.events, sb.events);
    let (fa, fc) = (files(a.path()), files(c.path()));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fc.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_ne!(fa, fc);
}

#[test]
fn the_files_parse_and_match_the_summary() {
    let dir = TempDir::new("parse");
    let p = params(1);
    let summary = generate(&p, dir.path()).unwrap();
    let names: Vec<String> = files(dir.path()).into_iter().map(|f| f.0).collect();
    let mut want: Vec<String> = (1..=8)
        .map(|d| format!("day-{}.jsonl", p.sale_day.plus_days(-d).compact()))
        .collect();
    want.extend(["catalog.json".into(), "truth.json".into()]);
    want.sort();
    assert_eq!(names, want);
    assert_eq!(names[0], "catalog.json");
    assert_eq!(names[1], "day-20251103.jsonl");

    let all = events(dir.path());
    assert_eq!(all.len() as u64, summary.events);
    let opens = Date::new(2025, 11, 11).unwrap().china_midnight_ms();
    assert_eq!(summary.opens_at_ms, opens);
    assert!(all.iter().all(|e| e.t_ms < opens));
    assert!(all.iter().all(|e| (1..=100).contains(&e.sku.0)));
    assert!(all.iter().all(|e| (1..=8_000).contains(&e.user.0)));
    for kind in Kind::ALL {
        assert!(all.iter().any(|e| e.kind == kind), "no {kind:?} events");
    }
    let orders = all.iter().filter(|e| e.kind == Kind::Order).count() as u64;
    assert_eq!(orders, summary.orders);

    let catalog = Catalog::load(dir.path()).unwrap();
    assert_eq!(catalog.items.len(), 100);
    assert_eq!(catalog.opens_at_ms, opens);
    assert!(catalog
        .items
        .iter()
        .all(|i| i.opens_at_ms == opens && i.stock >= 1));
    let truth = Truth::load(dir.path()).unwrap();
    assert_eq!(truth.items.len(), 100);
    let stock: HashMap<_, _> = catalog.items.iter().map(|i| (i.sku, i.stock)).collect();
    for item in &truth.items {
        assert_eq!(item.stock, stock[&item.sku]);
        assert_eq!(
            item.sellout_s.is_some(),
            item.demand > f64::from(item.stock)
        );
    }
    assert!(truth.items.iter().filter(|i| i.sellout_s.is_some()).count() >= 5);
    // The night is about a hundred times a normal day, noise aside.
    assert!(
        (50.0..200.0).contains(&truth.peak_multiple),
        "{}",
        truth.peak_multiple
    );
    assert!(
        (truth.peak_attempts_per_s / truth.normal_orders_per_s - truth.peak_multiple).abs() < 1e-9
    );
    assert!(truth.peak_payments_per_s < truth.peak_attempts_per_s);
}

#[test]
fn days_have_a_rhythm_and_intent_grows_toward_the_sale() {
    let dir = TempDir::new("rhythm");
    let p = params(2);
    generate(&p, dir.path()).unwrap();
    let all = events(dir.path());
    let mut by_hour = [0u64; 24];
    for e in all.iter().filter(|e| e.kind == Kind::View) {
        by_hour[china_hour(e.t_ms)] += 1;
    }
    let night = by_hour[3] + by_hour[4];
    let evening = by_hour[20] + by_hour[21];
    let morning = by_hour[10] + by_hour[11];
    assert!(3 * night < evening, "{by_hour:?}");
    assert!(3 * night < morning, "{by_hour:?}");

    // Favourites, carts and deposits per day: the last day far above the first.
    let first = p.sale_day.days() - i64::from(p.days);
    let mut intent = vec![0u64; p.days as usize];
    for e in &all {
        if matches!(e.kind, Kind::Favorite | Kind::Cart | Kind::Deposit) {
            intent[(china_day(e.t_ms) - first) as usize] += 1;
        }
    }
    assert!(intent[7] > 3 * intent[0], "{intent:?}");
    // Deposits only in the intent window (the last three days).
    let window_start = p.sale_day.plus_days(-3).china_midnight_ms();
    assert!(all
        .iter()
        .filter(|e| e.kind == Kind::Deposit)
        .all(|e| e.t_ms >= window_start && e.amount.is_some()));
}

#[test]
fn segments_differ_in_conversion() {
    let dir = TempDir::new("segments");
    generate(&params(3), dir.path()).unwrap();
    let truth = Truth::load(dir.path()).unwrap();
    let segment: HashMap<u64, &str> = truth
        .segments
        .iter()
        .flat_map(|s| s.users.iter().map(move |&u| (u, s.name.as_str())))
        .collect();
    assert_eq!(segment.len(), 8_000);
    // Normal days only: before the intent window.
    let window_start = Date::new(2025, 11, 8).unwrap().china_midnight_ms();
    let mut counts: HashMap<&str, [f64; 5]> = HashMap::new();
    for e in events(dir.path()).iter().filter(|e| e.t_ms < window_start) {
        let c = counts.entry(segment[&e.user.0]).or_default();
        match e.kind {
            Kind::View => {
                c[0] += 1.0;
                // Views from 22:00 to 02:00.
                if matches!(china_hour(e.t_ms), 22 | 23 | 0 | 1) {
                    c[3] += 1.0;
                }
            }
            Kind::Favorite => c[1] += 1.0,
            Kind::Order => c[2] += 1.0,
            _ => {}
        }
    }
    let per_view = |s: &str, k: usize| counts[s][k] / counts[s][0];
    // Loyal shoppers convert far better than bargain hunters and casuals,
    // bargain hunters favourite far more.
    assert!(per_view("loyal", 2) > 5.0 * per_view("bargain_hunter", 2));
    assert!(per_view("loyal", 2) > 2.0 * per_view("casual", 2));
    assert!(per_view("bargain_hunter", 1) > 2.0 * per_view("loyal", 1));
    // Night owls browse around midnight.
    assert!(per_view("night_owl", 3) > 2.0 * per_view("casual", 3));
}

#[test]
fn bad_parameters_and_a_used_directory_are_refused() {
    let dir = TempDir::new("bad");
    let short = GenerateParams {
        days: 3,
        ..params(1)
    };
    let err = generate(&short, dir.path()).unwrap_err();
    assert!(matches!(err, Error::InvalidParams(_)));
    assert!(err.to_string().contains("days must be in 4..="), "{err}");
    let none = GenerateParams {
        items: 0,
        ..params(1)
    };
    assert!(generate(&none, dir.path())
        .unwrap_err()
        .to_string()
        .contains("items"));
    generate(&params(1), dir.path()).unwrap();
    let again = generate(&params(1), dir.path()).unwrap_err();
    assert!(
        again.to_string().contains("already holds event files"),
        "{again}"
    );
}
