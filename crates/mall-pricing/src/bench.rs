//! A micro-benchmark of [`crate::price`] on the shape: a 5-line
//! cart from two merchants, 4 promotions (two store, two platform) and 2
//! coupons, every rule kind among them. The only place in the crate that
//! reads a clock.

use crate::{price, Funder, Line, Offer, OfferKind, Policy, Rule};
use mall_core::{MerchantId, Sku};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The benchmark's cart, offers and policy.
pub fn shape() -> (Vec<Line>, Vec<Offer>, Policy) {
    let line = |sku: u64, merchant: u64, quantity: u32, list: i64, sale: i64| Line {
        sku: Sku(sku),
        merchant: MerchantId(merchant),
        quantity,
        list_unit_fen: list,
        sale_unit_fen: sale,
        floor_unit_fen: list / 2,
    };
    let lines = vec![
        line(1, 1, 1, 4_500_000, 3_888_800),
        line(2, 1, 2, 9_900, 9_900),
        line(3, 1, 1, 59_900, 49_900),
        line(4, 2, 3, 15_000, 12_800),
        line(5, 2, 1, 129_900, 129_900),
    ];
    let offer = |id, kind, funder, rule, group| Offer {
        id,
        kind,
        funder,
        rule,
        skus: vec![],
        max_off_fen: None,
        group,
    };
    let (m1, m2) = (
        Funder::Merchant(MerchantId(1)),
        Funder::Merchant(MerchantId(2)),
    );
    let offers = vec![
        offer(
            1,
            OfferKind::Promotion,
            m1,
            Rule::SpendSave {
                every_fen: 30_000,
                save_fen: 4_000,
                repeat: true,
            },
            None,
        ),
        offer(
            2,
            OfferKind::Promotion,
            m2,
            Rule::PercentOff { basis_points: 500 },
            None,
        ),
        offer(
            3,
            OfferKind::Promotion,
            Funder::Platform,
            Rule::SpendSave {
                every_fen: 100_000,
                save_fen: 5_000,
                repeat: false,
            },
            Some(1),
        ),
        offer(
            4,
            OfferKind::Promotion,
            Funder::Platform,
            Rule::PercentOff { basis_points: 300 },
            Some(1),
        ),
        offer(
            5,
            OfferKind::Coupon,
            m2,
            Rule::AmountOff {
                off_fen: 1_000,
                min_spend_fen: 10_000,
            },
            None,
        ),
        offer(
            6,
            OfferKind::Coupon,
            Funder::Platform,
            Rule::AmountOff {
                off_fen: 2_000,
                min_spend_fen: 20_000,
            },
            None,
        ),
    ];
    (
        lines,
        offers,
        Policy {
            order_cap_fen: Some(1_000_000),
        },
    )
}

/// Average wall time of one price of [`shape`], over `iterations` (≥ 1).
pub fn cost(iterations: u64) -> Duration {
    let (lines, offers, policy) = shape();
    let start = Instant::now();
    for _ in 0..iterations.max(1) {
        black_box(price(black_box(&lines), black_box(&offers), &policy).expect("a valid cart"));
    }
    start.elapsed() / iterations.max(1) as u32
}
