//! The run plan: everything a rush will send, decided up front from the
//! scenario and its seed, so the same seed gives the same requests. Times
//! are microseconds relative to the sale's opening (browsing is negative).

use crate::catalog::{make_item, unit, CatalogShape, StockShape};
use crate::scenario::Scenario;
use mall_core::{Item, MerchantId, PaymentMethod, Sku, Timestamp};
use mall_inventory::sim::Rng;

/// What a shopper does after a successful online snap-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowUp {
    /// Leaves it unpaid: the hold expires.
    Nothing,
    /// Pays this long after the order.
    Pay { after_us: i64 },
    /// Cancels this long after the order.
    Cancel { after_us: i64 },
    /// Pays after the hold expired (refused, stock already back on sale).
    LatePay,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Intended send time.
    pub at_us: i64,
    pub user: u32,
    /// Popularity rank of the item (0 is the hottest).
    pub rank: u32,
    pub payment: PaymentMethod,
    pub follow: FollowUp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Browse {
    pub at_us: i64,
    pub user: u32,
    pub rank: u32,
}

/// A cart checkout: items off the shopper's wish list, all or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartCheckout {
    pub at_us: i64,
    pub user: u32,
    /// Popularity ranks of its items, distinct.
    pub ranks: Vec<u32>,
    pub payment: PaymentMethod,
    /// Online: its lines are paid this long after the checkout's answer
    /// (`None`: left unpaid, to lapse).
    pub pay_after_us: Option<i64>,
}

/// A pre-sale deposit, paid before the night; its balance after midnight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deposit {
    /// Before the opening (the days before, compressed).
    pub at_us: i64,
    pub user: u32,
    /// The deposit is paid this long after its order.
    pub pay_after_us: i64,
    /// When the balance is asked and paid (µs from the opening, inside the
    /// balance window); `None`: never (the deposit is forfeited).
    pub balance_at_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub scenario: Scenario,
    /// Items by rank; their SKUs are placeholders until created.
    pub items: Vec<Item>,
    /// Sorted by time.
    pub browses: Vec<Browse>,
    /// The coupon claim rush: `(at_us, user)`, sorted by time, all before
    /// the opening.
    pub claims: Vec<(i64, u32)>,
    /// Sorted by time.
    pub attempts: Vec<Attempt>,
    /// Cart checkouts, sorted by time, after the spike.
    pub checkouts: Vec<CartCheckout>,
    /// Pre-sale deposits, sorted by time, before the opening, on the item
    /// ranked `presale_rank` (the last; none of the wish lists).
    pub deposits: Vec<Deposit>,
    pub presale_rank: Option<u32>,
}

fn balance_window_us(s: &Scenario) -> i64 {
    ((s.spike_s + s.tail_s) * 1e6) as i64
}

/// Pre-sale terms a unit: a tenth of the price down, worth a fifth.
pub fn presale_terms(price_fen: i64) -> (i64, i64) {
    ((price_fen / 10).max(1), (price_fen / 5).max(1))
}

impl Plan {
    /// The balance window's length after the opening: the spike and the
    /// tail, so the window ends (and unpaid deposits are forfeited) inside
    /// the run, and a balance asked in its first half has the other half
    /// to get through the night's payment queue.
    pub fn balance_window_us(&self) -> i64 {
        balance_window_us(&self.scenario)
    }

    /// Item `rank` as the server gets it, for a sale opening at `opening`:
    /// on sale from the opening for a day; the pre-sale item takes
    /// deposits from `now` to the opening and its balance in the balance
    /// window.
    pub fn item_at(&self, rank: usize, opening: Timestamp, now: Timestamp) -> Item {
        let mut item = self.items[rank].clone();
        if Some(rank as u32) == self.presale_rank {
            let (deposit, worth) = presale_terms(item.price_fen.0);
            item.opens_at = now.plus_ms(-1_000).min(opening.plus_ms(-1));
            item.closes_at = opening;
            item.presale = Some(mall_core::PreSale {
                deposit_fen: mall_core::Fen(deposit),
                worth_fen: mall_core::Fen(worth),
                balance_opens_at: opening,
                balance_closes_at: opening.plus_ms(self.balance_window_us() / 1_000),
            });
        } else {
            item.opens_at = opening;
            item.closes_at = opening.plus_ms(24 * 3_600_000);
        }
        item
    }
}

/// Cumulative Zipf(s) over `n` ranks, normalized, for sampling by search.
pub fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

pub fn sample_rank(cdf: &[f64], rng: &mut Rng) -> u32 {
    let u = unit(rng);
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u32
}

/// Merchants a plan's catalog spreads over.
pub const PLAN_MERCHANTS: u32 = 60;

impl Plan {
    pub fn new(scenario: &Scenario) -> Plan {
        let s = scenario;
        let mut rng = Rng::new(s.seed);
        let merchants: Vec<MerchantId> = (1..=u64::from(PLAN_MERCHANTS.min(s.items.max(1))))
            .map(MerchantId)
            .collect();
        let shape = CatalogShape {
            stock: StockShape {
                min: s.stock_min,
                max: s.stock_max,
                alpha: s.stock_alpha,
            },
            per_user_limit: s.per_user_limit,
        };
        let window = (Timestamp(0), Timestamp(1));
        let items: Vec<Item> = (0..s.items)
            .map(|n| {
                make_item(
                    &mut rng,
                    Sku(u64::from(n) + 1),
                    n,
                    &merchants,
                    window,
                    &shape,
                )
            })
            .collect();
        let cdf = zipf_cdf(s.items as usize, s.zipf_s);
        let spike_us = (s.spike_s * 1e6) as i64;
        let tail_us = s.tail_s * 1e6;
        let tail_mean_us = (tail_us / 4.0).max(1.0);
        let mut attempts = Vec::with_capacity((s.users * s.wish_list) as usize);
        let mut browses = Vec::new();
        let mut claims = Vec::new();
        let mut checkouts = Vec::new();
        let mut deposits = Vec::new();
        let balance_us = balance_window_us(s);
        // The claim rush: a one-second burst half way to the opening.
        let claims_open_us = -((s.opens_in_s * 1e6) as i64) / 2 - 1_000_000;
        let mut wish = Vec::with_capacity(s.wish_list as usize);
        for user in 0..s.users {
            wish.clear();
            let mut tries = 0;
            while wish.len() < s.wish_list as usize {
                let rank = if tries < 1_000 {
                    sample_rank(&cdf, &mut rng)
                } else {
                    (tries % s.items as usize) as u32
                };
                tries += 1;
                if !wish.contains(&rank) {
                    wish.push(rank);
                }
            }
            if unit(&mut rng) < s.browse_share {
                let at_us = -((unit(&mut rng) * s.opens_in_s * 1e6) as i64) - 1;
                browses.push(Browse {
                    at_us,
                    user,
                    rank: wish[0],
                });
            }
            if s.coupon_claim_share > 0.0 && unit(&mut rng) < s.coupon_claim_share {
                claims.push((claims_open_us + (unit(&mut rng) * 1e6) as i64, user));
            }
            if s.checkout_share > 0.0 && unit(&mut rng) < s.checkout_share {
                let mut ranks: Vec<u32> = Vec::new();
                let mut tries = 0;
                // From the long tail (the less popular half), where stock
                // is left after the spike.
                let tail_from = s.items / 2;
                while ranks.len() < crate::scenario::CHECKOUT_LINES as usize {
                    let rank = if tries < 1_000 {
                        tail_from + (unit(&mut rng) * f64::from(s.items - tail_from)) as u32
                    } else {
                        (tries % s.items as usize) as u32
                    };
                    let rank = rank.min(s.items - 1);
                    tries += 1;
                    if !wish.contains(&rank) && !ranks.contains(&rank) {
                        ranks.push(rank);
                    }
                }
                let at_us = spike_us + (unit(&mut rng) * tail_us.max(1e6)) as i64;
                let payment = if unit(&mut rng) < s.cod_share {
                    PaymentMethod::Cod
                } else {
                    PaymentMethod::Online
                };
                let pay_after_us = (payment == PaymentMethod::Online
                    && unit(&mut rng) < s.pay_share)
                    .then(|| 200_000 + (unit(&mut rng) * 2_800_000.0) as i64);
                checkouts.push(CartCheckout {
                    at_us,
                    user,
                    ranks,
                    payment,
                    pay_after_us,
                });
            }
            if s.presale_share > 0.0 && unit(&mut rng) < s.presale_share {
                let opens_in_us = s.opens_in_s * 1e6;
                deposits.push(Deposit {
                    // Before the claim rush's second and the opening.
                    at_us: -((0.1 + unit(&mut rng) * 0.85) * opens_in_us) as i64 - 1,
                    user,
                    pay_after_us: 100_000 + (unit(&mut rng) * 400_000.0) as i64,
                    balance_at_us: (unit(&mut rng) >= s.presale_unpaid_share)
                        .then(|| ((0.05 + unit(&mut rng) * 0.45) * balance_us as f64) as i64),
                });
            }
            for &rank in &wish {
                let at_us = if unit(&mut rng) < s.spike_share || tail_us <= 0.0 {
                    (unit(&mut rng) * spike_us as f64) as i64
                } else {
                    // Truncated exponential over the tail.
                    let u = unit(&mut rng);
                    let t =
                        -tail_mean_us * (1.0 - u * (1.0 - (-tail_us / tail_mean_us).exp())).ln();
                    spike_us + t as i64
                };
                let payment = if unit(&mut rng) < s.cod_share {
                    PaymentMethod::Cod
                } else {
                    PaymentMethod::Online
                };
                let r = unit(&mut rng);
                let after_us = 200_000 + (unit(&mut rng) * 2_800_000.0) as i64;
                let follow = if r < s.cancel_share {
                    FollowUp::Cancel { after_us }
                } else if r < s.cancel_share + s.pay_share {
                    FollowUp::Pay { after_us }
                } else if r < s.cancel_share + s.pay_share + s.late_pay_share {
                    FollowUp::LatePay
                } else {
                    FollowUp::Nothing
                };
                attempts.push(Attempt {
                    at_us,
                    user,
                    rank,
                    payment,
                    follow,
                });
            }
        }
        attempts.sort_by_key(|a| (a.at_us, a.user, a.rank));
        browses.sort_by_key(|b| (b.at_us, b.user));
        claims.sort_unstable();
        checkouts.sort_by_key(|c| (c.at_us, c.user));
        deposits.sort_by_key(|d| (d.at_us, d.user));
        // The pre-sale item: one more, last, its stock a little short of
        // the deposits (some are refused sold out).
        let mut items = items;
        let presale_rank = (!deposits.is_empty()).then(|| {
            let rank = items.len() as u32;
            let mut item = make_item(
                &mut rng,
                Sku(u64::from(rank) + 1),
                rank,
                &merchants,
                window,
                &shape,
            );
            item.title = format!("Pre-sale {}", item.title);
            item.stock_total = (deposits.len() as u32 * 9 / 10).max(1);
            item.per_user_limit = 1;
            item.shelf_life_hours = None;
            if item.category == mall_core::Category::Fresh {
                item.category = mall_core::Category::Appliances;
            }
            items.push(item);
            rank
        });
        Plan {
            scenario: s.clone(),
            items,
            browses,
            claims,
            attempts,
            checkouts,
            deposits,
            presale_rank,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        let mut s = Scenario::load("smoke").unwrap();
        s.users = 20_000;
        s.items = 500;
        s
    }

    #[test]
    fn same_seed_same_plan_and_another_seed_another() {
        let s = scenario();
        assert_eq!(Plan::new(&s), Plan::new(&s));
        let mut other = s.clone();
        other.seed += 1;
        assert_ne!(Plan::new(&s).attempts, Plan::new(&other).attempts);
    }

    #[test]
    fn popularity_follows_zipf() {
        let mut s = scenario();
        s.wish_list = 1;
        let plan = Plan::new(&s);
        let n = plan.attempts.len() as f64;
        let cdf = zipf_cdf(s.items as usize, s.zipf_s);
        for rank in [0u32, 1, 9] {
            let want = cdf[rank as usize]
                - if rank == 0 {
                    0.0
                } else {
                    cdf[rank as usize - 1]
                };
            let got = plan.attempts.iter().filter(|a| a.rank == rank).count() as f64 / n;
            assert!(
                (got - want).abs() < want * 0.1 + 0.002,
                "rank {rank}: {got:.4} vs {want:.4}"
            );
        }
    }

    #[test]
    fn arrivals_spike_at_the_opening_then_tail_off() {
        let s = scenario();
        let plan = Plan::new(&s);
        let n = plan.attempts.len() as f64;
        let spike_us = (s.spike_s * 1e6) as i64;
        let in_spike = plan.attempts.iter().filter(|a| a.at_us < spike_us).count() as f64 / n;
        // The spike holds its share plus the (few) tail draws that land early: none here.
        assert!(
            (in_spike - s.spike_share).abs() < 0.02,
            "spike share {in_spike}"
        );
        let end = spike_us + (s.tail_s * 1e6) as i64;
        assert!(plan.attempts.iter().all(|a| (0..=end).contains(&a.at_us)));
        // The tail decays: its first half holds more than its second.
        let half = spike_us + (s.tail_s * 0.5e6) as i64;
        let early = plan
            .attempts
            .iter()
            .filter(|a| a.at_us >= spike_us && a.at_us < half)
            .count();
        let late = plan.attempts.iter().filter(|a| a.at_us >= half).count();
        assert!(early > 2 * late, "tail {early} vs {late}");
        assert!(plan.attempts.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert!(plan.browses.iter().all(|b| b.at_us < 0));
    }

    #[test]
    fn payment_mix_and_follow_ups_match_the_shares() {
        let s = scenario();
        let plan = Plan::new(&s);
        let n = plan.attempts.len() as f64;
        let share =
            |f: &dyn Fn(&Attempt) -> bool| plan.attempts.iter().filter(|a| f(a)).count() as f64 / n;
        assert!((share(&|a| a.payment == PaymentMethod::Cod) - s.cod_share).abs() < 0.02);
        assert!(
            (share(&|a| matches!(a.follow, FollowUp::Cancel { .. })) - s.cancel_share).abs() < 0.02
        );
        assert!((share(&|a| matches!(a.follow, FollowUp::Pay { .. })) - s.pay_share).abs() < 0.02);
        assert!((share(&|a| a.follow == FollowUp::LatePay) - s.late_pay_share).abs() < 0.02);
        // Wish lists are distinct per shopper.
        let mut seen = std::collections::HashSet::new();
        assert!(plan.attempts.iter().all(|a| seen.insert((a.user, a.rank))));
    }
}
