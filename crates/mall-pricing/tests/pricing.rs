//! Property tests of pricing: random carts, promotions and coupons priced
//! by the crate and by an independent reference model written here from the
//! rules in the crate's documentation (plain loops, exact fractions compared
//! by cross-multiplication, ranks counted instead of sorted). Both must
//! agree to the fen, and the answer must keep the invariants whatever the
//! model says. The workload must reach every rule, so the test cannot pass
//! vacuously. Replay a seed with `MALL_SEED=<n>`.

use mall_core::rng::Rng;
use mall_core::seeds::for_each_seed;
use mall_core::{MerchantId, Sku};
use mall_pricing::{
    price, Funder, Line, Offer, OfferKind, Policy, Priced, PricingError, Rule, Source, Stage,
};
use std::collections::BTreeMap;

/// What the workload reached, over all seeds.
#[derive(Default, Debug, Clone)]
struct Reached(BTreeMap<&'static str, u64>);

impl Reached {
    fn hit(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
}

const MUST_REACH: &[&str] = &[
    "sale_price",
    "percent_off",
    "amount_off",
    "spend_save_once",
    "spend_save_repeat",
    "store_promotion",
    "platform_promotion",
    "merchant_coupon",
    "platform_coupon",
    "sku_scoped",
    "threshold_not_met",
    "max_off_bit",
    "order_cap_bit",
    "floor_bit",
    "exclusive_skipped",
    "remainder_spread",
    "several_merchants",
    "zero_room",
];

fn cart(rng: &mut Rng) -> (Vec<Line>, Vec<Offer>, Policy) {
    let merchants = rng.between(1, 3);
    let n = rng.between(1, 6) as usize;
    let lines: Vec<Line> = (0..n)
        .map(|i| {
            let list = match rng.below(3) {
                0 => rng.between(1, 100) as i64,
                1 => rng.between(100, 50_000) as i64,
                _ => rng.between(50_000, 5_000_000) as i64,
            };
            let sale = if rng.chance(0.5) {
                rng.between(1, list as u64) as i64
            } else {
                list
            };
            let floor = match rng.below(4) {
                0 => 0,
                1 => rng.between(0, list as u64) as i64,
                2 => list,
                _ => (list / 2).max(1),
            };
            Line {
                sku: Sku(100 + i as u64 % 4),
                merchant: MerchantId(rng.between(1, merchants)),
                quantity: if rng.chance(0.7) {
                    1
                } else {
                    rng.between(1, 20) as u32
                },
                list_unit_fen: list,
                sale_unit_fen: sale,
                floor_unit_fen: floor,
            }
        })
        .collect();
    let offers = (0..rng.between(0, 7))
        .map(|_| {
            let funder = if rng.chance(0.5) {
                Funder::Platform
            } else {
                Funder::Merchant(MerchantId(rng.between(1, merchants)))
            };
            let rule = match rng.below(3) {
                0 => Rule::PercentOff {
                    basis_points: rng.between(1, 9_999) as u32,
                },
                1 => Rule::AmountOff {
                    off_fen: rng.between(1, 200_000) as i64,
                    min_spend_fen: if rng.chance(0.5) {
                        0
                    } else {
                        rng.between(1, 1_000_000) as i64
                    },
                },
                _ => {
                    let every = rng.between(2, 500_000) as i64;
                    Rule::SpendSave {
                        every_fen: every,
                        save_fen: rng.between(1, every as u64 - 1) as i64,
                        repeat: rng.chance(0.5),
                    }
                }
            };
            Offer {
                id: rng.between(1, 40),
                kind: if rng.chance(0.5) {
                    OfferKind::Promotion
                } else {
                    OfferKind::Coupon
                },
                funder,
                rule,
                skus: if rng.chance(0.25) {
                    vec![Sku(100 + rng.below(4))]
                } else {
                    vec![]
                },
                max_off_fen: rng.chance(0.3).then(|| rng.between(1, 100_000) as i64),
                group: rng.chance(0.4).then(|| rng.between(1, 2) as u32),
            }
        })
        .collect();
    let policy = Policy {
        order_cap_fen: rng.chance(0.3).then(|| rng.between(0, 300_000) as i64),
    };
    (lines, offers, policy)
}

// ---- The reference model ----

/// Largest remainder, written as ranks: line i gets floor(fen·room_i/H),
/// plus one fen if fewer than `left` lines rank above it (a larger
/// remainder, or an equal one earlier).
fn model_apportion(fen: i64, rooms: &[i64], reached: &mut Reached) -> Vec<i64> {
    let h: i128 = rooms.iter().map(|&r| i128::from(r)).sum();
    if h == 0 {
        return vec![0; rooms.len()];
    }
    let base: Vec<i64> = rooms
        .iter()
        .map(|&r| (i128::from(fen) * i128::from(r) / h) as i64)
        .collect();
    let rem: Vec<i128> = rooms
        .iter()
        .map(|&r| i128::from(fen) * i128::from(r) % h)
        .collect();
    let left = fen - base.iter().sum::<i64>();
    if left > 0 && rooms.iter().filter(|&&r| r > 0).count() > 1 {
        reached.hit("remainder_spread");
    }
    (0..rooms.len())
        .map(|i| {
            let above = (0..rooms.len())
                .filter(|&j| rem[j] > rem[i] || (rem[j] == rem[i] && j < i))
                .count() as i64;
            base[i] + i64::from(above < left)
        })
        .collect()
}

/// (source, funder, fen, shares by line) per discount, and net per line.
type ModelAnswer = (Vec<(Source, Funder, i64, Vec<i64>)>, Vec<i64>);

fn model(lines: &[Line], offers: &[Offer], policy: &Policy, reached: &mut Reached) -> ModelAnswer {
    let mut net: Vec<i64> = lines
        .iter()
        .map(|l| l.list_unit_fen * i64::from(l.quantity))
        .collect();
    let floor: Vec<i64> = lines
        .iter()
        .map(|l| l.floor_unit_fen * i64::from(l.quantity))
        .collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let unit = std::cmp::max(l.sale_unit_fen, l.floor_unit_fen);
        if unit < l.list_unit_fen {
            let fen = (l.list_unit_fen - unit) * i64::from(l.quantity);
            net[i] -= fen;
            let mut shares = vec![0; lines.len()];
            shares[i] = fen;
            out.push((Source::SalePrice, Funder::Merchant(l.merchant), fen, shares));
        }
    }
    // Store promotions, platform promotions, coupons; each by id.
    let mut stages: Vec<Vec<&Offer>> = vec![vec![], vec![], vec![]];
    for o in offers {
        let s = match (o.kind, o.funder) {
            (OfferKind::Promotion, Funder::Merchant(_)) => 0,
            (OfferKind::Promotion, Funder::Platform) => 1,
            (OfferKind::Coupon, _) => 2,
        };
        stages[s].push(o);
    }
    let mut cap = policy.order_cap_fen.map(|c| c.max(0));
    let mut used_groups: Vec<(Funder, u32)> = vec![];
    for mut stage in stages {
        stage.sort_by_key(|o| o.id);
        for o in stage {
            if let Some(g) = o.group {
                if used_groups.contains(&(o.funder, g)) {
                    continue;
                }
            }
            let eligible: Vec<usize> = (0..lines.len())
                .filter(|&i| {
                    let mine = match o.funder {
                        Funder::Platform => true,
                        Funder::Merchant(m) => lines[i].merchant == m,
                    };
                    mine && (o.skus.is_empty() || o.skus.iter().any(|s| *s == lines[i].sku))
                })
                .collect();
            let base: i64 = eligible.iter().map(|&i| net[i]).sum();
            let mut fen = if base <= 0 {
                0
            } else {
                match o.rule {
                    Rule::PercentOff { basis_points } => {
                        // The largest d with d·10,000 ≤ base·bp.
                        let mut d = (base as f64 * f64::from(basis_points) / 10_000.0) as i64;
                        while i128::from(d + 1) * 10_000
                            <= i128::from(base) * i128::from(basis_points)
                        {
                            d += 1;
                        }
                        while i128::from(d) * 10_000 > i128::from(base) * i128::from(basis_points) {
                            d -= 1;
                        }
                        d
                    }
                    Rule::AmountOff {
                        off_fen,
                        min_spend_fen,
                    } => {
                        if base < min_spend_fen {
                            0
                        } else {
                            off_fen
                        }
                    }
                    Rule::SpendSave {
                        every_fen,
                        save_fen,
                        repeat,
                    } => {
                        let mut times = 0;
                        while (times + 1) * every_fen <= base && (repeat || times == 0) {
                            times += 1;
                        }
                        times * save_fen
                    }
                }
            };
            if let Some(m) = o.max_off_fen {
                fen = fen.min(m);
            }
            if let Some(c) = cap {
                fen = fen.min(c);
            }
            let rooms: Vec<i64> = eligible.iter().map(|&i| net[i] - floor[i]).collect();
            fen = fen.min(rooms.iter().sum());
            if fen <= 0 {
                continue;
            }
            let parts = model_apportion(fen, &rooms, reached);
            let mut shares = vec![0; lines.len()];
            for (k, &i) in eligible.iter().enumerate() {
                shares[i] = parts[k];
                net[i] -= parts[k];
            }
            if let Some(c) = cap.as_mut() {
                *c -= fen;
            }
            if let Some(g) = o.group {
                used_groups.push((o.funder, g));
            }
            let source = match o.kind {
                OfferKind::Promotion => Source::Promotion(o.id),
                OfferKind::Coupon => Source::Coupon(o.id),
            };
            out.push((source, o.funder, fen, shares));
        }
    }
    (out, net)
}

// ---- Invariants of any answer ----

fn check_invariants(lines: &[Line], offers: &[Offer], policy: &Policy, p: &Priced) {
    assert_eq!(p.lines.len(), lines.len());
    assert!(p.total_fen >= 0, "a negative total");
    assert_eq!(p.total_fen, p.lines.iter().map(|l| l.net_fen).sum::<i64>());
    let off: i64 = p.discounts.iter().map(|d| d.fen).sum();
    assert_eq!(p.list_fen - p.total_fen, off, "discounts add up");
    for (i, (l, pl)) in lines.iter().zip(&p.lines).enumerate() {
        assert!(
            pl.net_fen >= l.floor_unit_fen * i64::from(l.quantity),
            "line {i} below its floor"
        );
        assert_eq!(
            pl.list_fen - pl.net_fen,
            pl.merchant_funded_fen + pl.platform_funded_fen,
            "line {i}: funders add up"
        );
        let from_shares: i64 = p
            .discounts
            .iter()
            .flat_map(|d| &d.shares)
            .filter(|s| s.line as usize == i)
            .map(|s| s.fen)
            .sum();
        assert_eq!(
            pl.list_fen - pl.net_fen,
            from_shares,
            "line {i}: shares add up"
        );
    }
    for d in &p.discounts {
        assert!(d.fen > 0, "an empty discount listed");
        assert_eq!(d.fen, d.shares.iter().map(|s| s.fen).sum::<i64>());
        if let Some(o) = offer_of(offers, d.source) {
            for s in &d.shares {
                assert!(s.fen > 0);
                let line = &lines[s.line as usize];
                match o.funder {
                    Funder::Merchant(m) => assert_eq!(line.merchant, m, "outside its merchant"),
                    Funder::Platform => {}
                }
                assert!(
                    o.skus.is_empty() || o.skus.contains(&line.sku),
                    "outside its SKUs"
                );
            }
            if let Some(max) = o.max_off_fen {
                assert!(d.fen <= max, "over its own maximum");
            }
        }
    }
    // The fixed order: stages never go back; by id within a kind.
    let keys: Vec<(Stage, u8, u64)> = p
        .discounts
        .iter()
        .map(|d| match d.source {
            Source::SalePrice => (Stage::Item, 0, 0),
            Source::Promotion(id) => (d.stage, 1, id),
            Source::Coupon(id) => (d.stage, 2, id),
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0].0 <= w[1].0), "stages in order");
    assert!(
        keys.windows(2)
            .filter(|w| w[0].0 == w[1].0 && w[0].0 != Stage::Item)
            .all(|w| (w[0].1, w[0].2) <= (w[1].1, w[1].2)),
        "ids in order within a stage"
    );
    if let Some(cap) = policy.order_cap_fen {
        let offers_off: i64 = p
            .discounts
            .iter()
            .filter(|d| d.stage != Stage::Item)
            .map(|d| d.fen)
            .sum();
        assert!(offers_off <= cap.max(0), "over the order cap");
    }
    let mut groups = vec![];
    for d in &p.discounts {
        if let Some(g) = offer_of(offers, d.source).and_then(|o| o.group) {
            assert!(
                !groups.contains(&(d.funder, g)),
                "two offers of {:?}'s group {g}",
                d.funder
            );
            groups.push((d.funder, g));
        }
    }
}

/// The offer a discount came from (the first of that kind and id, as the
/// generator may repeat an id; the crate takes them in a stable order).
fn offer_of(offers: &[Offer], source: Source) -> Option<&Offer> {
    let (kind, id) = match source {
        Source::SalePrice => return None,
        Source::Promotion(id) => (OfferKind::Promotion, id),
        Source::Coupon(id) => (OfferKind::Coupon, id),
    };
    offers.iter().find(|o| o.kind == kind && o.id == id)
}

fn unique_ids(offers: &mut [Offer]) {
    for (i, o) in offers.iter_mut().enumerate() {
        o.id = o.id * 100 + i as u64;
    }
}

fn one_seed(seed: u64) -> Reached {
    let mut rng = Rng::new(seed);
    let mut reached = Reached::default();
    for _ in 0..200 {
        let (lines, mut offers, policy) = cart(&mut rng);
        unique_ids(&mut offers);
        let priced = price(&lines, &offers, &policy).expect("a valid cart");
        check_invariants(&lines, &offers, &policy, &priced);

        let (want, want_net) = model(&lines, &offers, &policy, &mut reached);
        let got: Vec<(Source, Funder, i64, Vec<i64>)> = priced
            .discounts
            .iter()
            .map(|d| {
                let mut shares = vec![0; lines.len()];
                for s in &d.shares {
                    shares[s.line as usize] = s.fen;
                }
                (d.source, d.funder, d.fen, shares)
            })
            .collect();
        assert_eq!(got, want, "the model disagrees on the discounts");
        let nets: Vec<i64> = priced.lines.iter().map(|l| l.net_fen).collect();
        assert_eq!(nets, want_net, "the model disagrees on the lines");

        // The same input, offers in another order: the same price.
        let mut shuffled = offers.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        assert_eq!(price(&lines, &shuffled, &policy).unwrap(), priced);

        note(&lines, &offers, &policy, &priced, &mut reached);
    }
    reached
}

/// Counts what this cart reached.
fn note(lines: &[Line], offers: &[Offer], policy: &Policy, p: &Priced, r: &mut Reached) {
    let merchants: std::collections::BTreeSet<_> = lines.iter().map(|l| l.merchant).collect();
    if merchants.len() > 1 {
        r.hit("several_merchants");
    }
    for d in &p.discounts {
        if d.source == Source::SalePrice {
            r.hit("sale_price");
            continue;
        }
        let o = offer_of(offers, d.source).unwrap();
        r.hit(match o.rule {
            Rule::PercentOff { .. } => "percent_off",
            Rule::AmountOff { .. } => "amount_off",
            Rule::SpendSave { repeat: false, .. } => "spend_save_once",
            Rule::SpendSave { repeat: true, .. } => "spend_save_repeat",
        });
        r.hit(match (o.kind, o.funder) {
            (OfferKind::Promotion, Funder::Merchant(_)) => "store_promotion",
            (OfferKind::Promotion, Funder::Platform) => "platform_promotion",
            (OfferKind::Coupon, Funder::Merchant(_)) => "merchant_coupon",
            (OfferKind::Coupon, Funder::Platform) => "platform_coupon",
        });
        if !o.skus.is_empty() {
            r.hit("sku_scoped");
        }
        if o.max_off_fen == Some(d.fen) {
            r.hit("max_off_bit");
        }
    }
    for o in offers {
        let listed = offer_of(offers, source_of(o)).is_some_and(|first| first.id == o.id)
            && p.discounts.iter().any(|d| d.source == source_of(o));
        if listed {
            continue;
        }
        let group_taken = o.group.is_some_and(|g| {
            p.discounts.iter().any(|d| {
                offer_of(offers, d.source)
                    .is_some_and(|x| x.group == Some(g) && x.funder == o.funder)
            })
        });
        if group_taken {
            r.hit("exclusive_skipped");
        }
        let covered: i64 = lines
            .iter()
            .zip(&p.lines)
            .filter(|(l, _)| {
                (match o.funder {
                    Funder::Platform => true,
                    Funder::Merchant(m) => l.merchant == m,
                }) && (o.skus.is_empty() || o.skus.contains(&l.sku))
            })
            .map(|(_, pl)| pl.list_fen)
            .sum();
        if covered > 0 && o.rule.discount(covered) == 0 {
            r.hit("threshold_not_met");
        }
    }
    if let Some(cap) = policy.order_cap_fen {
        let off: i64 = p
            .discounts
            .iter()
            .filter(|d| d.stage != Stage::Item)
            .map(|d| d.fen)
            .sum();
        if off == cap && cap > 0 {
            r.hit("order_cap_bit");
        }
    }
    for (l, pl) in lines.iter().zip(&p.lines) {
        let floor = l.floor_unit_fen * i64::from(l.quantity);
        if pl.net_fen == floor && pl.net_fen < pl.list_fen {
            r.hit("floor_bit");
        }
        if l.floor_unit_fen == l.list_unit_fen {
            r.hit("zero_room");
        }
    }
}

fn source_of(o: &Offer) -> Source {
    match o.kind {
        OfferKind::Promotion => Source::Promotion(o.id),
        OfferKind::Coupon => Source::Coupon(o.id),
    }
}

#[test]
fn the_price_agrees_with_the_model_and_keeps_its_invariants() {
    let all = for_each_seed("-p mall-pricing --test pricing", 1, 200, one_seed);
    let mut total = Reached::default();
    for r in all {
        for (k, v) in r.0 {
            *total.0.entry(k).or_default() += v;
        }
    }
    if std::env::var("MALL_SEED").is_err() {
        for what in MUST_REACH {
            assert!(
                total.0.get(what).copied().unwrap_or(0) > 0,
                "the workload never reached {what}: {:?}",
                total.0
            );
        }
    }
}

#[test]
fn a_worked_example_to_the_fen() {
    // Two merchants. Merchant 1: an appliance listed at ¥45,000 on sale at
    // ¥38,888, and a ¥99 kettle; merchant 2: two ¥150 jars.
    let lines = vec![
        line(1, 1, 1, 4_500_000, 3_888_800, 0),
        line(2, 1, 1, 9_900, 9_900, 0),
        line(3, 2, 2, 15_000, 15_000, 0),
    ];
    let offers = vec![
        // Merchant 1: every ¥300, save ¥40.
        offer(
            7,
            OfferKind::Promotion,
            Funder::Merchant(MerchantId(1)),
            spend_save(30_000, 4_000, true),
        ),
        // Platform: ¥20 off from ¥200 of anything.
        offer(
            9,
            OfferKind::Coupon,
            Funder::Platform,
            Rule::AmountOff {
                off_fen: 2_000,
                min_spend_fen: 20_000,
            },
        ),
    ];
    let p = price(&lines, &offers, &Policy::default()).unwrap();
    assert_eq!(p.list_fen, 4_500_000 + 9_900 + 30_000);
    // Sale price: 611,200 off the appliance.
    assert_eq!(p.discounts[0].fen, 611_200);
    // Merchant 1's lines are worth 3,898,700 after it: 129 × ¥40 off.
    assert_eq!(p.discounts[1].fen, 129 * 4_000);
    // The coupon: 2,000 split over all three lines by what they can give.
    assert_eq!(p.discounts[2].fen, 2_000);
    assert_eq!(p.total_fen, 4_539_900 - 611_200 - 516_000 - 2_000);
    assert_eq!(p.lines.iter().map(|l| l.net_fen).sum::<i64>(), p.total_fen);
    // Who funds what: the platform funds only its coupon.
    assert_eq!(
        p.lines.iter().map(|l| l.platform_funded_fen).sum::<i64>(),
        2_000
    );
    // The breakdown is JSON a client can read.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["discounts"][0]["source"], "sale_price");
    assert_eq!(json["discounts"][1]["source"], "promotion");
    assert_eq!(json["discounts"][1]["id"], 7);
    assert_eq!(json["discounts"][1]["funded_by"], "merchant");
    assert_eq!(json["discounts"][1]["merchant"], 1);
    assert_eq!(json["discounts"][2]["funded_by"], "platform");
    assert_eq!(json["discounts"][2]["stage"], "platform");
}

#[test]
fn the_largest_remainder_goes_first_then_the_earlier_line() {
    let mut out = vec![];
    // 10 over three equal rooms: 3, 3, 3 and one more to the first.
    mall_pricing::apportion(10, &[5, 5, 5], &mut out);
    assert_eq!(out, vec![4, 3, 3]);
    // 5 over 1:2:3 → 0.83, 1.67, 2.5 → 0, 1, 2 with remainders 5, 4, 3 (of 6): +1, +1.
    mall_pricing::apportion(5, &[1, 2, 3], &mut out);
    assert_eq!(out, vec![1, 2, 2]);
    // Never above a room.
    mall_pricing::apportion(6, &[1, 2, 3], &mut out);
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn bad_carts_and_offers_are_refused_with_a_reason() {
    let ok = line(1, 1, 1, 100, 100, 0);
    let none: &[Offer] = &[];
    assert_eq!(
        price(&[], none, &Policy::default()),
        Err(PricingError::Lines(0))
    );
    let mut l = ok.clone();
    l.quantity = 0;
    assert!(matches!(
        price(&[l], none, &Policy::default()),
        Err(PricingError::Line(0, _))
    ));
    let mut l = ok.clone();
    l.sale_unit_fen = 101;
    assert!(matches!(
        price(&[l], none, &Policy::default()),
        Err(PricingError::Line(0, _))
    ));
    let mut l = ok.clone();
    l.floor_unit_fen = 101;
    assert!(matches!(
        price(&[l], none, &Policy::default()),
        Err(PricingError::Line(0, _))
    ));
    for rule in [
        Rule::PercentOff { basis_points: 0 },
        Rule::PercentOff {
            basis_points: 10_000,
        },
        Rule::AmountOff {
            off_fen: 0,
            min_spend_fen: 0,
        },
        Rule::AmountOff {
            off_fen: 5,
            min_spend_fen: -1,
        },
        spend_save(100, 100, false),
        spend_save(0, 0, true),
    ] {
        let o = offer(1, OfferKind::Coupon, Funder::Platform, rule);
        assert!(
            matches!(
                price(std::slice::from_ref(&ok), &[o], &Policy::default()),
                Err(PricingError::Rule(_))
            ),
            "{rule:?} accepted"
        );
    }
}

fn line(sku: u64, merchant: u64, quantity: u32, list: i64, sale: i64, floor: i64) -> Line {
    Line {
        sku: Sku(sku),
        merchant: MerchantId(merchant),
        quantity,
        list_unit_fen: list,
        sale_unit_fen: sale,
        floor_unit_fen: floor,
    }
}

fn offer(id: u64, kind: OfferKind, funder: Funder, rule: Rule) -> Offer {
    Offer {
        id,
        kind,
        funder,
        rule,
        skus: vec![],
        max_off_fen: None,
        group: None,
    }
}

fn spend_save(every: i64, save: i64, repeat: bool) -> Rule {
    Rule::SpendSave {
        every_fen: every,
        save_fen: save,
        repeat,
    }
}

#[test]
fn the_benchmark_cart_reaches_every_stage() {
    let (lines, offers, policy) = mall_pricing::bench::shape();
    assert_eq!((lines.len(), offers.len()), (5, 6));
    let p = price(&lines, &offers, &policy).unwrap();
    for stage in [Stage::Item, Stage::Store, Stage::Platform] {
        assert!(
            p.discounts.iter().any(|d| d.stage == stage),
            "{stage:?} never applied"
        );
    }
    assert!(p
        .discounts
        .iter()
        .any(|d| matches!(d.source, Source::Coupon(_))));
    // Offers 3 and 4 share a group: one of them only.
    assert_eq!(
        p.discounts
            .iter()
            .filter(|d| matches!(d.source, Source::Promotion(3 | 4)))
            .count(),
        1
    );
}

#[test]
fn the_largest_carts_and_prices_stay_exact() {
    // 100 lines of 1,000 units at ¥1,000,000, every kind of offer, no cap:
    // nothing overflows, the invariants hold and the model agrees.
    let lines: Vec<Line> = (0..mall_pricing::LINES_MAX as u64)
        .map(|i| line(i, 1 + i % 3, 1_000, 100_000_000, 99_999_999 - i as i64, 1))
        .collect();
    let big = 100_000_000;
    let offers = vec![
        offer(
            1,
            OfferKind::Promotion,
            Funder::Merchant(MerchantId(1)),
            Rule::PercentOff {
                basis_points: 9_999,
            },
        ),
        offer(
            2,
            OfferKind::Promotion,
            Funder::Platform,
            spend_save(10_000_000, 1, true),
        ),
        offer(
            3,
            OfferKind::Coupon,
            Funder::Platform,
            Rule::AmountOff {
                off_fen: big,
                min_spend_fen: big,
            },
        ),
        offer(
            4,
            OfferKind::Promotion,
            Funder::Platform,
            spend_save(big, big - 1, true),
        ),
    ];
    let policy = Policy::default();
    let p = price(&lines, &offers, &policy).unwrap();
    check_invariants(&lines, &offers, &policy, &p);
    assert!(p.total_fen >= lines.len() as i64 * 1_000, "floors hold");
    let (want, nets) = model(&lines, &offers, &policy, &mut Reached::default());
    assert_eq!(p.discounts.len(), want.len());
    assert_eq!(p.lines.iter().map(|l| l.net_fen).collect::<Vec<_>>(), nets);
    // One line more is refused, with a reason.
    let mut more = lines.clone();
    more.push(line(999, 1, 1, 100, 100, 0));
    assert_eq!(
        price(&more, &offers, &policy),
        Err(PricingError::Lines(101))
    );
}

#[test]
fn a_merchants_group_never_excludes_the_platforms() {
    let lines = vec![line(1, 1, 1, 100_000, 100_000, 0)];
    let mut store = offer(
        1,
        OfferKind::Promotion,
        Funder::Merchant(MerchantId(1)),
        Rule::AmountOff {
            off_fen: 1_000,
            min_spend_fen: 0,
        },
    );
    let mut platform = offer(
        2,
        OfferKind::Coupon,
        Funder::Platform,
        Rule::AmountOff {
            off_fen: 500,
            min_spend_fen: 0,
        },
    );
    store.group = Some(1);
    platform.group = Some(1);
    let p = price(&lines, &[store.clone(), platform], &Policy::default()).unwrap();
    assert_eq!(p.discounts.len(), 2, "both apply: {:?}", p.discounts);
    // The merchant's own second offer of group 1 is excluded.
    let mut again = store.clone();
    again.id = 3;
    let p = price(&lines, &[store, again], &Policy::default()).unwrap();
    assert_eq!(p.discounts.len(), 1);
}
