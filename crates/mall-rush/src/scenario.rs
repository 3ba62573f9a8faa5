//! Scenarios: the shape of a night, as a TOML file. `double11` (the night)
//! and `smoke` (small, for CI) ship in the binary.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Random seed: the same seed gives the same run plan.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Shoppers.
    pub users: u32,
    /// Flash-sale items the scenario creates.
    pub items: u32,
    /// Zipf exponent of item popularity (rank 1 is the hottest).
    pub zipf_s: f64,
    /// Items on each shopper's wish list (distinct, drawn by popularity).
    pub wish_list: u32,
    pub stock_min: u32,
    pub stock_max: u32,
    /// Pareto tail index of stock (smaller: longer tail).
    pub stock_alpha: f64,
    /// Every item's per-user limit; absent: mostly 1, some 2 or 5.
    pub per_user_limit: Option<u32>,
    /// Share of shoppers who browse their wish list before the sale.
    pub browse_share: f64,
    /// A coupon claim rush before the sale: share of shoppers who try to
    /// claim the night's platform coupon (0: no claim rush).
    #[serde(default)]
    pub coupon_claim_share: f64,
    /// The coupon's quantity, as a share of shoppers (one each).
    #[serde(default)]
    pub coupon_quantity_share: f64,
    /// Share of shoppers who also check out a cart of
    /// [`CHECKOUT_LINES`] items off their wish list, after the spike, all or
    /// nothing (over HTTP only).
    #[serde(default)]
    pub checkout_share: f64,
    /// Share of shoppers who pay a pre-sale deposit in the days before the
    /// night (compressed into the wait before the opening), on the night's
    /// one pre-sale item (over HTTP only; 0: no pre-sale).
    #[serde(default)]
    pub presale_share: f64,
    /// Share of depositors who never pay the balance (forfeited).
    #[serde(default)]
    pub presale_unpaid_share: f64,
    /// The sale opens this long after setup; browsing happens before.
    pub opens_in_s: f64,
    /// Share of snap-up attempts in the spike right at the opening.
    pub spike_share: f64,
    /// Length of the spike.
    pub spike_s: f64,
    /// The long tail after the spike: attempts spread (exponentially
    /// decaying) over this long.
    pub tail_s: f64,
    /// Share of orders paid cash on delivery.
    pub cod_share: f64,
    /// Share of online orders cancelled by the shopper.
    pub cancel_share: f64,
    /// Share of online orders paid in time.
    pub pay_share: f64,
    /// Share of online orders paid late: after their hold expired (only
    /// when the server's hold timeout ends within the run).
    pub late_pay_share: f64,
    /// How shoppers pay online orders: `third_party`, `card`, `wallet`
    /// (wallets must be topped up first), or `mixed` (a quarter by card,
    /// the rest third party, as the night's channels are sized).
    #[serde(default = "default_pay_method")]
    pub pay_method: String,
    /// Connections to the server (keep-alive, reused) for browsing and
    /// snap-ups; as many again carry payments and cancels.
    pub connections: u32,
    /// A request not answered in this time is retried with the same key.
    pub timeout_ms: u64,
    pub retries: u32,
    /// The run stops by itself after this long, sent or not.
    pub duration_max_s: f64,
    /// Requests at most (snap-ups, follow-ups, browsing).
    pub requests_max: u64,
}

fn default_pay_method() -> String {
    "third_party".into()
}

fn default_seed() -> u64 {
    11
}

impl Scenario {
    /// The claim rush's coupon quantity (0: no claim rush).
    pub fn coupon_quantity(&self) -> u32 {
        if self.coupon_claim_share == 0.0 {
            return 0;
        }
        (f64::from(self.users) * self.coupon_quantity_share).ceil() as u32
    }
}

/// Items in a rehearsal's cart checkout.
pub const CHECKOUT_LINES: u32 = 3;

pub const DOUBLE11: &str = include_str!("../../../scenarios/double11.toml");
pub const SMOKE: &str = include_str!("../../../scenarios/smoke.toml");

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    /// A built-in scenario by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        let text = match name_or_path {
            "double11" => DOUBLE11.to_string(),
            "smoke" => SMOKE.to_string(),
            path => std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
                path: path.into(),
                source,
            })?,
        };
        let scenario: Scenario = toml::from_str(&text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: &str| Err(ScenarioError::Invalid(m.into()));
        let share = |x: f64| (0.0..=1.0).contains(&x);
        if self.users == 0 || self.items == 0 {
            return bad("users and items must be positive");
        }
        if self.wish_list == 0 || self.wish_list > self.items.min(100) {
            return bad("wish_list must be 1 to min(items, 100)");
        }
        if self.checkout_share > 0.0 && self.items < self.wish_list + CHECKOUT_LINES {
            return bad("cart checkouts need items beyond a wish list");
        }
        if !(self.zipf_s > 0.0 && self.zipf_s < 10.0) {
            return bad("zipf_s must be in (0, 10)");
        }
        if self.stock_min == 0 || self.stock_min > self.stock_max || self.stock_alpha <= 0.0 {
            return bad("stock needs 1 <= stock_min <= stock_max and stock_alpha > 0");
        }
        for (name, x) in [
            ("browse_share", self.browse_share),
            ("coupon_claim_share", self.coupon_claim_share),
            ("coupon_quantity_share", self.coupon_quantity_share),
            ("checkout_share", self.checkout_share),
            ("presale_share", self.presale_share),
            ("presale_unpaid_share", self.presale_unpaid_share),
            ("spike_share", self.spike_share),
            ("cod_share", self.cod_share),
            ("cancel_share", self.cancel_share),
            ("pay_share", self.pay_share),
            ("late_pay_share", self.late_pay_share),
        ] {
            if !share(x) {
                return Err(ScenarioError::Invalid(format!("{name} must be 0 to 1")));
            }
        }
        if !["third_party", "card", "wallet", "mixed"].contains(&self.pay_method.as_str()) {
            return bad("pay_method must be third_party, card, wallet or mixed");
        }
        if self.cancel_share + self.pay_share + self.late_pay_share > 1.0 {
            return bad("cancel_share + pay_share + late_pay_share must be at most 1");
        }
        if self.opens_in_s < 0.0
            || self.spike_s <= 0.0
            || self.tail_s < 0.0
            || self.duration_max_s <= 0.0
        {
            return bad("times must be positive");
        }
        if self.connections == 0 || self.connections > 10_000 {
            return bad("connections must be 1 to 10,000 (mind open files and ephemeral ports)");
        }
        if self.timeout_ms == 0 || self.requests_max == 0 {
            return bad("timeout_ms and requests_max must be positive");
        }
        Ok(())
    }

    /// The same night, shrunk: fewer users and items, shorter phases.
    pub fn scaled(&self, factor: f64) -> Scenario {
        let f = factor.clamp(0.0001, 1.0);
        let mut s = self.clone();
        s.users = ((f64::from(self.users) * f) as u32).max(10);
        s.items = ((f64::from(self.items) * f) as u32).max(self.wish_list.max(2));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_scenarios_parse_and_validate() {
        let night = Scenario::load("double11").unwrap();
        assert_eq!(night.users, 100_000);
        assert_eq!(night.items, 10_000);
        let smoke = Scenario::load("smoke").unwrap();
        assert!(smoke.users <= 5_000 && smoke.duration_max_s <= 60.0);
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let mut s = Scenario::load("smoke").unwrap();
        s.cod_share = 1.5;
        assert!(s.validate().unwrap_err().to_string().contains("cod_share"));
        assert!(toml::from_str::<Scenario>("name = 'x'\nbogus = 1").is_err());
    }
}
