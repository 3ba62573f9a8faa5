//! The capacity plan: made from a forecast, round-tripped as TOML, and
//! refused with a clear message when it is wrong.

mod common;

use common::{tiny, TempDir};
use mall_forecast::forecast::{forecast, Forecast, SaleParams};
use mall_forecast::history::generate;
use mall_forecast::plan::{from_toml, plan, to_toml, CapacityPlan, PlanConfig};
use mall_forecast::Error;

fn a_forecast() -> Forecast {
    let dir = TempDir::new("plan");
    generate(&tiny(3), dir.path()).unwrap();
    forecast(
        dir.path(),
        SaleParams {
            draws: 20,
            ..SaleParams::default()
        },
    )
    .unwrap()
}

const CHANNELS: [(&str, f64); 3] = [("alipay", 600.0), ("wechat", 300.0), ("card", 100.0)];

#[test]
fn a_plan_follows_its_forecast_and_round_trips_as_toml() {
    let f = a_forecast();
    let p = plan(&f, &CHANNELS, &PlanConfig::default()).unwrap();
    assert!((p.peak_orders_per_s - f.peak_attempts_per_s.p50).abs() <= 0.005);
    assert_eq!(p.peak_at_s, f.peak_at_s.p50);
    assert_eq!(p.shards, 1, "a small shop's night fits one shard");
    let admit = p.admission.snapups_per_s_max as f64;
    assert!(
        admit >= 1.5 * f.peak_attempts_per_s.p90 && admit < 1.5 * f.peak_attempts_per_s.p90 + 1.0
    );
    // Payments shared by capacity, 6 : 3 : 1, rounded up to the hundredth.
    let need = 1.5 * f.peak_payments_per_s.p90;
    for (q, share) in p.payment_quotas.iter().zip([0.6, 0.3, 0.1]) {
        let exact = need * share;
        assert!(q.payments_per_s >= exact && q.payments_per_s < exact + 0.01 + 1e-9);
    }
    // Hot items: predicted sell-outs, hottest first.
    assert!(!p.hot_items.is_empty());
    assert!(p.hot_items.len() <= 20);
    let hottest: Vec<_> = f
        .items
        .iter()
        .filter(|i| i.sells_out)
        .map(|i| i.sku)
        .take(20)
        .collect();
    assert_eq!(
        p.hot_items.iter().map(|h| h.sku).collect::<Vec<_>>(),
        hottest
    );

    let text = to_toml(&p).unwrap();
    assert!(
        text.contains("[admission]") && text.contains("[[payment_quotas]]"),
        "{text}"
    );
    assert_eq!(from_toml(&text).unwrap(), p);
}

#[test]
fn the_shard_count_follows_the_peak() {
    let mut f = a_forecast();
    f.peak_attempts_per_s.p90 = 25_000.0;
    let p = plan(&f, &CHANNELS, &PlanConfig::default()).unwrap();
    assert_eq!(p.admission.snapups_per_s_max, 37_500);
    assert_eq!(p.shards, 4, "37,500/s over 10,000/s per shard");
    f.peak_attempts_per_s.p90 = 1e9;
    assert_eq!(
        plan(&f, &CHANNELS, &PlanConfig::default()).unwrap().shards,
        256
    );
    // Payments beyond every channel's capacity: each channel at its capacity.
    f.peak_payments_per_s.p90 = 10_000.0;
    let p = plan(&f, &CHANNELS, &PlanConfig::default()).unwrap();
    assert!(p
        .payment_quotas
        .iter()
        .all(|q| q.payments_per_s == q.capacity_per_s));
}

/// A valid plan with one line replaced.
fn edited(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in\n{base}");
    base.replacen(from, to, 1)
}

fn refused(text: &str) -> String {
    match from_toml(text) {
        Err(e @ (Error::PlanInvalid { .. } | Error::PlanParse(_))) => e.to_string(),
        other => panic!("accepted or wrong error: {other:?}\n{text}"),
    }
}

const PLAN: &str = r#"
peak_orders_per_s = 4.5
peak_at_s = 19.0
payments_peak_per_s = 3.0
shards = 2

[admission]
snapups_per_s_max = 8
per_user_per_s = 2.0
per_user_burst = 5

[[payment_quotas]]
channel = "alipay"
payments_per_s = 3.0
capacity_per_s = 500.0

[[payment_quotas]]
channel = "wechat"
payments_per_s = 1.5
capacity_per_s = 250.0

[[hot_items]]
sku = 17
demand = 412.0
stock = 30
sellout_s = 95.0

[[hot_items]]
sku = 18
demand = 80.0
stock = 10
"#;

#[test]
fn bad_plans_are_refused_with_the_field_named() {
    let plan: CapacityPlan = from_toml(PLAN).unwrap();
    assert_eq!(plan.hot_items[1].sellout_s, None);
    let cases = [
        (
            "shards = 2",
            "shards = 0",
            "shards: must be in 1..=256, got 0",
        ),
        (
            "shards = 2",
            "shards = 300",
            "shards: must be in 1..=256, got 300",
        ),
        ("shards = 2", "shards = -1", "plan: "),
        (
            "shards = 2",
            "shards = 2\nreplicas = 3",
            "unknown field `replicas`",
        ),
        (
            "per_user_burst = 5",
            "per_user_burst = 5\nburst = 1",
            "unknown field `burst`",
        ),
        (
            "peak_at_s = 19.0",
            "peak_at_s = nan",
            "peak_at_s: must be a finite number >= 0, got NaN",
        ),
        (
            "peak_orders_per_s = 4.5",
            "peak_orders_per_s = -1.0",
            "peak_orders_per_s: must be a finite number >= 0",
        ),
        (
            "snapups_per_s_max = 8",
            "snapups_per_s_max = 0",
            "admission.snapups_per_s_max: must be at least 1",
        ),
        (
            "per_user_per_s = 2.0",
            "per_user_per_s = 0.0",
            "admission.per_user_per_s: must be a finite number > 0",
        ),
        (
            "per_user_burst = 5",
            "per_user_burst = 0",
            "admission.per_user_burst: must be in 1..=1000",
        ),
        (
            "payments_per_s = 3.0",
            "payments_per_s = 900.0",
            "payment_quotas[0].payments_per_s: 900 exceeds the channel's capacity 500",
        ),
        (
            "channel = \"wechat\"",
            "channel = \"alipay\"",
            "payment_quotas[1].channel: \"alipay\" is listed twice",
        ),
        (
            "channel = \"wechat\"",
            "channel = \"We Chat\"",
            "payment_quotas[1].channel: \"We Chat\" must be 1 to 32 of a-z",
        ),
        (
            "capacity_per_s = 250.0",
            "capacity_per_s = 0.0",
            "payment_quotas[1].capacity_per_s: must be a finite number > 0",
        ),
        (
            "sku = 18",
            "sku = 17",
            "hot_items[1].sku: 17 is listed twice",
        ),
        (
            "stock = 10",
            "stock = 0",
            "hot_items[1].stock: must be at least 1",
        ),
        (
            "sellout_s = 95.0",
            "sellout_s = -5.0",
            "hot_items[0].sellout_s: must be a finite number >= 0",
        ),
        ("[admission]", "[admision]", "unknown field `admision`"),
    ];
    for (from, to, want) in cases {
        let message = refused(&edited(PLAN, from, to));
        assert!(message.contains(want), "{to:?}: {message:?} lacks {want:?}");
    }
    let missing = refused(&PLAN.replacen("shards = 2\n", "", 1));
    assert!(missing.contains("missing field `shards`"), "{missing}");
}

#[test]
fn plan_refuses_impossible_inputs() {
    let f = a_forecast();
    let err = plan(
        &f,
        &[("alipay", 10.0), ("alipay", 5.0)],
        &PlanConfig::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    let err = plan(&f, &[("alipay", -1.0)], &PlanConfig::default()).unwrap_err();
    assert!(err.to_string().contains("capacity_per_s"), "{err}");
    let config = PlanConfig {
        headroom: 0.5,
        ..PlanConfig::default()
    };
    assert!(matches!(
        plan(&f, &CHANNELS, &config),
        Err(Error::InvalidParams(_))
    ));
}
