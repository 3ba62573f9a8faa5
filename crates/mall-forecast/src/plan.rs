//! The capacity plan for the night, made from a forecast and written as TOML.
//!
//! - `admission.snapups_per_s_max`: the forecast's p90 peak of order
//!   attempts × `headroom` (1.5): the rate the front door lets through;
//! - `shards`: that rate over [`SHARD_SNAPUPS_PER_S`], the stated capacity
//!   of one inventory shard (one apply thread and one group-committing
//!   SQLite file; `scenarios/steady-25k.toml` sustains 25,000 snap-ups/s on
//!   two cores, so 10,000 per shard keeps a wide margin), rounded up;
//! - `admission.per_user_*`: a per-shopper token bucket against scripts;
//! - `payment_quotas`: the p90 payments peak × `headroom`, shared over the
//!   given channels in proportion to their capacities, never above one;
//! - `hot_items`: the items predicted to sell out, by demand over stock,
//!   to get extra shard capacity.
//!
//! ```toml
//! peak_orders_per_s = 4.3
//! peak_at_s = 19.0
//! payments_peak_per_s = 2.9
//! shards = 1
//!
//! [admission]
//! snapups_per_s_max = 8
//! per_user_per_s = 2.0
//! per_user_burst = 5
//!
//! [[payment_quotas]]
//! channel = "alipay"
//! payments_per_s = 3.1
//! capacity_per_s = 500.0
//!
//! [[hot_items]]
//! sku = 17
//! demand = 412.0
//! stock = 30
//! sellout_s = 95.0
//! ```
//!
//! [`from_toml`] is strict: unknown keys are refused and every value is
//! checked, each error naming its field.

use crate::forecast::Forecast;
use crate::Error;
use mall_core::{OrderId, Sku};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Snap-up decisions one shard is planned to sustain per second.
pub const SHARD_SNAPUPS_PER_S: f64 = 10_000.0;
/// Most hot items a plan lists.
pub const HOT_ITEMS_MAX: usize = 1_000;
/// Most payment channels a plan lists.
pub const CHANNELS_MAX: usize = 64;
/// Highest per-shopper burst.
pub const PER_USER_BURST_MAX: u32 = 1_000;

/// How a plan is made from a forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanConfig {
    /// Snap-ups one shard sustains per second.
    pub shard_snapups_per_s: f64,
    /// Factor over the forecast's p90 peaks.
    pub headroom: f64,
    /// Per-shopper sustained snap-ups per second.
    pub per_user_per_s: f64,
    /// Per-shopper burst.
    pub per_user_burst: u32,
    /// Most hot items listed.
    pub hot_items_max: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            shard_snapups_per_s: SHARD_SNAPUPS_PER_S,
            headroom: 1.5,
            per_user_per_s: 2.0,
            per_user_burst: 5,
            hot_items_max: 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityPlan {
    /// The forecast's p50 peak of order attempts per second.
    pub peak_orders_per_s: f64,
    /// Its second after opening (p50).
    pub peak_at_s: f64,
    /// The forecast's p50 peak of payments per second.
    pub payments_peak_per_s: f64,
    /// Inventory shards.
    pub shards: u32,
    pub admission: Admission,
    pub payment_quotas: Vec<PaymentQuota>,
    pub hot_items: Vec<HotItem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// Most snap-ups admitted per second, all shoppers together.
    pub snapups_per_s_max: u64,
    /// Per shopper: sustained snap-ups per second and burst.
    pub per_user_per_s: f64,
    pub per_user_burst: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentQuota {
    pub channel: String,
    /// Payments per second to send this channel at the peak.
    pub payments_per_s: f64,
    /// What the channel can take, as given.
    pub capacity_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotItem {
    pub sku: Sku,
    /// Predicted order attempts (p50).
    pub demand: f64,
    pub stock: u32,
    /// Predicted sell-out, seconds after opening (p50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sellout_s: Option<f64>,
}

/// The plan for `forecast`, paying through `channels` (`(name,
/// capacity per second)`).
pub fn plan(
    forecast: &Forecast,
    channels: &[(&str, f64)],
    config: &PlanConfig,
) -> Result<CapacityPlan, Error> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !(positive(config.shard_snapups_per_s)
        && config.headroom >= 1.0
        && config.headroom.is_finite())
    {
        return Err(Error::InvalidParams(
            "shard_snapups_per_s must be positive and headroom at least 1".into(),
        ));
    }
    let admit = (forecast.peak_attempts_per_s.p90 * config.headroom)
        .ceil()
        .max(1.0);
    let shards = (admit / config.shard_snapups_per_s)
        .ceil()
        .clamp(1.0, OrderId::SHARDS_MAX as f64) as u32;
    let need = forecast.peak_payments_per_s.p90 * config.headroom;
    // Rates to the hundredth (quotas up, so they cover the need), demand and
    // times to the tenth: a plan is read by people.
    let hundredths = |x: f64| (x * 100.0).round() / 100.0;
    let tenths = |x: f64| (x * 10.0).round() / 10.0;
    let capacity: f64 = channels.iter().map(|c| c.1).sum();
    let payment_quotas = channels
        .iter()
        .map(|&(name, cap)| PaymentQuota {
            channel: name.to_string(),
            payments_per_s: if capacity > 0.0 {
                ((need * cap / capacity * 100.0).ceil() / 100.0).min(cap)
            } else {
                0.0
            },
            capacity_per_s: cap,
        })
        .collect();
    let hot_items = forecast
        .items
        .iter()
        .filter(|i| i.sells_out)
        .take(config.hot_items_max.min(HOT_ITEMS_MAX))
        .map(|i| HotItem {
            sku: i.sku,
            demand: tenths(i.demand.p50),
            stock: i.stock,
            sellout_s: i.sellout_s.p50.map(tenths),
        })
        .collect();
    let plan = CapacityPlan {
        peak_orders_per_s: hundredths(forecast.peak_attempts_per_s.p50),
        peak_at_s: forecast.peak_at_s.p50,
        payments_peak_per_s: hundredths(forecast.peak_payments_per_s.p50),
        shards,
        admission: Admission {
            snapups_per_s_max: admit as u64,
            per_user_per_s: config.per_user_per_s,
            per_user_burst: config.per_user_burst,
        },
        payment_quotas,
        hot_items,
    };
    plan.validate()?;
    Ok(plan)
}

pub fn to_toml(plan: &CapacityPlan) -> Result<String, Error> {
    plan.validate()?;
    toml::to_string(plan).map_err(|e| Error::PlanParse(e.to_string()))
}

/// Parses and checks a plan; unknown keys are refused.
pub fn from_toml(text: &str) -> Result<CapacityPlan, Error> {
    let plan: CapacityPlan = toml::from_str(text).map_err(|e| Error::PlanParse(e.to_string()))?;
    plan.validate()?;
    Ok(plan)
}

impl CapacityPlan {
    /// Every value in range; the first problem found, naming its field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: String, reason: String| Err(Error::PlanInvalid { field, reason });
        let rate = |x: f64| x.is_finite() && x >= 0.0;
        for (field, value) in [
            ("peak_orders_per_s", self.peak_orders_per_s),
            ("peak_at_s", self.peak_at_s),
            ("payments_peak_per_s", self.payments_peak_per_s),
        ] {
            if !rate(value) {
                return bad(
                    field.into(),
                    format!("must be a finite number >= 0, got {value}"),
                );
            }
        }
        if !(1..=OrderId::SHARDS_MAX as u32).contains(&self.shards) {
            return bad(
                "shards".into(),
                format!(
                    "must be in 1..={}, got {}",
                    OrderId::SHARDS_MAX,
                    self.shards
                ),
            );
        }
        let a = &self.admission;
        if a.snapups_per_s_max == 0 {
            return bad(
                "admission.snapups_per_s_max".into(),
                "must be at least 1".into(),
            );
        }
        if !(a.per_user_per_s.is_finite() && a.per_user_per_s > 0.0) {
            return bad(
                "admission.per_user_per_s".into(),
                format!("must be a finite number > 0, got {}", a.per_user_per_s),
            );
        }
        if !(1..=PER_USER_BURST_MAX).contains(&a.per_user_burst) {
            return bad(
                "admission.per_user_burst".into(),
                format!(
                    "must be in 1..={PER_USER_BURST_MAX}, got {}",
                    a.per_user_burst
                ),
            );
        }
        if self.payment_quotas.len() > CHANNELS_MAX {
            return bad(
                "payment_quotas".into(),
                format!("at most {CHANNELS_MAX} channels"),
            );
        }
        let mut names = HashSet::new();
        for (n, q) in self.payment_quotas.iter().enumerate() {
            let field = |f: &str| format!("payment_quotas[{n}].{f}");
            let name_ok = (1..=32).contains(&q.channel.len())
                && q.channel.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !name_ok {
                return bad(
                    field("channel"),
                    format!("{:?} must be 1 to 32 of a-z, 0-9, '_' and '-'", q.channel),
                );
            }
            if !names.insert(q.channel.as_str()) {
                return bad(field("channel"), format!("{:?} is listed twice", q.channel));
            }
            if !(q.capacity_per_s.is_finite() && q.capacity_per_s > 0.0) {
                return bad(
                    field("capacity_per_s"),
                    format!("must be a finite number > 0, got {}", q.capacity_per_s),
                );
            }
            if !rate(q.payments_per_s) {
                return bad(
                    field("payments_per_s"),
                    format!("must be a finite number >= 0, got {}", q.payments_per_s),
                );
            }
            if q.payments_per_s > q.capacity_per_s {
                return bad(
                    field("payments_per_s"),
                    format!(
                        "{} exceeds the channel's capacity {}",
                        q.payments_per_s, q.capacity_per_s
                    ),
                );
            }
        }
        if self.hot_items.len() > HOT_ITEMS_MAX {
            return bad("hot_items".into(), format!("at most {HOT_ITEMS_MAX} items"));
        }
        let mut skus = HashSet::new();
        for (n, h) in self.hot_items.iter().enumerate() {
            let field = |f: &str| format!("hot_items[{n}].{f}");
            if !skus.insert(h.sku) {
                return bad(field("sku"), format!("{} is listed twice", h.sku));
            }
            if h.stock == 0 {
                return bad(field("stock"), "must be at least 1".into());
            }
            if !rate(h.demand) {
                return bad(
                    field("demand"),
                    format!("must be a finite number >= 0, got {}", h.demand),
                );
            }
            if let Some(t) = h.sellout_s {
                if !rate(t) {
                    return bad(
                        field("sellout_s"),
                        format!("must be a finite number >= 0, got {t}"),
                    );
                }
            }
        }
        Ok(())
    }
}
