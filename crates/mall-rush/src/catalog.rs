//! A realistic Singles' Day catalog: eight categories with their own price
//! ranges (log-uniform), titles, stock with a long tail (Pareto), per-user
//! limits, and shelf lives for fresh goods. Deterministic for a seed. Used by
//! `mall seed` and by rush scenarios.

use mall_core::{Category, Fen, Item, MerchantId, Sku, Timestamp};
use mall_inventory::sim::Rng;

/// Bounds of generated stock.
#[derive(Clone, Copy, Debug)]
pub struct StockShape {
    pub min: u32,
    pub max: u32,
    /// Pareto tail index: smaller means a longer tail.
    pub alpha: f64,
}

impl Default for StockShape {
    fn default() -> Self {
        StockShape {
            min: 1,
            max: 2_000,
            alpha: 0.9,
        }
    }
}

/// A uniform float in `[0, 1)`.
pub fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

struct CategoryShape {
    category: Category,
    weight: u64,
    price_yuan: (f64, f64),
    nouns: &'static [&'static str],
}

const SHAPES: &[CategoryShape] = &[
    CategoryShape {
        category: Category::Fresh,
        weight: 15,
        price_yuan: (5.0, 800.0),
        nouns: &[
            "hairy crab",
            "durian",
            "king prawns",
            "wagyu steak",
            "cherries",
            "salmon fillet",
            "lychees",
            "milk crate",
        ],
    },
    CategoryShape {
        category: Category::Appliances,
        weight: 14,
        price_yuan: (99.0, 50_000.0),
        nouns: &[
            "air conditioner",
            "refrigerator",
            "washing machine",
            "rice cooker",
            "robot vacuum",
            "dishwasher",
            "air fryer",
            "water heater",
        ],
    },
    CategoryShape {
        category: Category::Clothing,
        weight: 24,
        price_yuan: (19.0, 3_000.0),
        nouns: &[
            "down jacket",
            "wool coat",
            "sneakers",
            "jeans",
            "cashmere sweater",
            "silk scarf",
            "hoodie",
            "boots",
        ],
    },
    CategoryShape {
        category: Category::Books,
        weight: 14,
        price_yuan: (1.0, 300.0),
        nouns: &[
            "novel",
            "cookbook",
            "textbook",
            "comic set",
            "poetry collection",
            "atlas",
            "dictionary",
            "biography",
        ],
    },
    CategoryShape {
        category: Category::Electronics,
        weight: 11,
        price_yuan: (49.0, 50_000.0),
        nouns: &[
            "phone",
            "laptop",
            "tablet",
            "earbuds",
            "camera",
            "smart watch",
            "monitor",
            "game console",
        ],
    },
    CategoryShape {
        category: Category::Beauty,
        weight: 10,
        price_yuan: (9.0, 3_000.0),
        nouns: &[
            "face cream",
            "lipstick set",
            "serum",
            "perfume",
            "sunscreen",
            "hair dryer",
        ],
    },
    CategoryShape {
        category: Category::Home,
        weight: 7,
        price_yuan: (9.0, 8_000.0),
        nouns: &[
            "duvet",
            "sofa",
            "desk lamp",
            "cookware set",
            "mattress",
            "storage box",
        ],
    },
    CategoryShape {
        category: Category::Toys,
        weight: 5,
        price_yuan: (5.0, 2_000.0),
        nouns: &[
            "building blocks",
            "plush panda",
            "model train",
            "puzzle",
            "drone",
            "board game",
        ],
    },
];

const ADJECTIVES: &[&str] = &[
    "Double 11",
    "Limited",
    "Flagship",
    "Classic",
    "Premium",
    "Family",
    "Deluxe",
    "Everyday",
    "Imported",
    "Golden",
];
pub const MERCHANT_WORDS: &[&str] = &[
    "Bonjour",
    "Jade",
    "Panda",
    "Lotus",
    "Dragon",
    "Harbor",
    "Summit",
    "Phoenix",
    "Silk Road",
    "Bamboo",
    "Lantern",
    "Peony",
];

/// The display name of the `i`-th merchant (0-based).
pub fn merchant_name(i: u32) -> String {
    format!(
        "{} {} Store",
        MERCHANT_WORDS[i as usize % MERCHANT_WORDS.len()],
        i + 1
    )
}

/// How a catalog is shaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatalogShape {
    pub stock: StockShape,
    /// Every item's per-user limit; `None`: mostly 1, some 2 or 5.
    pub per_user_limit: Option<u32>,
}

/// One item of the catalog; `n` is its position (0-based). Items 0 and 1
/// pin the extremes, so every catalog spans ¥1 to ¥50,000 and the whole
/// stock range.
pub fn make_item(
    rng: &mut Rng,
    sku: Sku,
    n: u32,
    merchants: &[MerchantId],
    (opens_at, closes_at): (Timestamp, Timestamp),
    catalog: &CatalogShape,
) -> Item {
    let total: u64 = SHAPES.iter().map(|s| s.weight).sum();
    let mut pick = rng.below(total);
    let shape = SHAPES
        .iter()
        .find(|s| {
            if pick < s.weight {
                true
            } else {
                pick -= s.weight;
                false
            }
        })
        .expect("weights cover the range");
    let u = unit(rng);
    let (lo, hi) = shape.price_yuan;
    let mut price_fen = ((lo.ln() + u * (hi.ln() - lo.ln())).exp() * 100.0).round() as i64;
    let mut stock = pareto_stock(rng, catalog.stock);
    match n {
        0 => {
            price_fen = 100;
            stock = catalog.stock.max
        }
        1 => {
            price_fen = 5_000_000;
            stock = catalog.stock.min
        }
        _ => {}
    }
    let noun = shape.nouns[rng.below(shape.nouns.len() as u64) as usize];
    let adjective = ADJECTIVES[rng.below(ADJECTIVES.len() as u64) as usize];
    let mixed = match rng.below(10) {
        0..=6 => 1,
        7 | 8 => 2,
        _ => 5,
    };
    let per_user_limit = catalog.per_user_limit.unwrap_or(mixed);
    Item {
        sku,
        merchant: merchants[rng.below(merchants.len() as u64) as usize],
        title: format!("{adjective} {noun} #{}", sku.0),
        category: shape.category,
        price_fen: Fen(price_fen.max(100)),
        stock_total: stock,
        per_user_limit,
        opens_at,
        closes_at,
        shelf_life_hours: (shape.category == Category::Fresh)
            .then(|| 24 + rng.below(14 * 24) as u32),
        sale_prices: vec![],
        floor_price_fen: mall_core::Fen(1),
        presale: None,
    }
}

/// Stock with a long tail: most items have tens of units, a few thousands.
pub fn pareto_stock(rng: &mut Rng, shape: StockShape) -> u32 {
    let u = 1.0 - unit(rng); // (0, 1]
    let x = 5.0 / u.powf(1.0 / shape.alpha);
    (x as u32).clamp(shape.min, shape.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_shape_is_realistic() {
        let mut rng = Rng::new(11);
        let merchants: Vec<_> = (1..=60).map(MerchantId).collect();
        let shape = CatalogShape::default();
        let window = (Timestamp(0), Timestamp(1));
        let items: Vec<Item> = (0..10_000)
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
        let categories: std::collections::HashSet<_> = items.iter().map(|i| i.category).collect();
        assert!(categories.len() >= 4);
        let sellers: std::collections::HashSet<_> = items.iter().map(|i| i.merchant).collect();
        assert!(sellers.len() >= 50);
        assert_eq!(items.iter().map(|i| i.price_fen.0).min(), Some(100));
        assert_eq!(items.iter().map(|i| i.price_fen.0).max(), Some(5_000_000));
        assert_eq!(items.iter().map(|i| i.stock_total).min(), Some(1));
        assert_eq!(items.iter().map(|i| i.stock_total).max(), Some(2_000));
        // Long tail: the median item has far less than the mean.
        let mut stock: Vec<u32> = items.iter().map(|i| i.stock_total).collect();
        stock.sort_unstable();
        let mean = stock.iter().map(|&s| u64::from(s)).sum::<u64>() / stock.len() as u64;
        assert!(
            u64::from(stock[stock.len() / 2]) * 2 < mean,
            "median {} mean {mean}",
            stock[stock.len() / 2]
        );
        let fresh = |i: &&Item| i.category == Category::Fresh;
        assert!(items
            .iter()
            .filter(fresh)
            .all(|i| i.shelf_life_hours.is_some()));
        assert!(items
            .iter()
            .filter(|i| !fresh(i))
            .all(|i| i.shelf_life_hours.is_none()));
    }
}
