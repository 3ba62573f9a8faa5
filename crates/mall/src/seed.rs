//! `mall seed`: a realistic Singles' Day catalog. 10,000 flash-sale SKUs
//! over eight categories from 60 merchants, prices from ¥1 to ¥50,000
//! (log-uniform within each category's range), stock from 1 to 2,000 with a
//! long tail (Pareto), sale opening at the next midnight (China time) or
//! when told, and N token-only shopper accounts.

use anyhow::{Context, Result};
use clap::Args;
use mall_core::{Category, Fen, Item, MerchantId, Role, Sku, Timestamp};
use mall_inventory::sim::Rng;
use mall_inventory::{Command, Reply};
use mall_shard::{Clock, SystemClock};
use mall_store::{Accounts, DataDir, Engine, EngineConfig, NewUser};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct CatalogArgs {
    /// Flash-sale SKUs to create.
    #[arg(long, default_value_t = 10_000)]
    pub items: u32,
    #[arg(long, default_value_t = 60)]
    pub merchants: u32,
    /// Open the sale this long from now (e.g. "30s"); default the next midnight, China time (UTC+8).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub opens_in: Option<Duration>,
    /// How long the sale stays open.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub sale_length: Duration,
    /// Random seed: the same seed gives the same catalog.
    #[arg(long, default_value_t = 11)]
    pub random_seed: u64,
}

#[derive(Args, Clone, Debug)]
pub struct SeedArgs {
    #[arg(long, env = "MALL_DATA", default_value = "mall-data")]
    pub data: PathBuf,
    #[arg(long, env = "MALL_SHARDS")]
    pub shards: Option<usize>,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Shopper accounts to create (token only, no password).
    #[arg(long, default_value_t = 0)]
    pub shoppers: u32,
    /// Write the shoppers' `username,token` lines here (mode 0600).
    #[arg(long)]
    pub tokens_out: Option<PathBuf>,
}

const DAY_MS: i64 = 24 * 3_600_000;
const CHINA_OFFSET_MS: i64 = 8 * 3_600_000;

/// The next midnight in China Standard Time, as ms since the epoch.
pub fn next_midnight_china(now: Timestamp) -> Timestamp {
    let local = now.0 + CHINA_OFFSET_MS;
    Timestamp((local.div_euclid(DAY_MS) + 1) * DAY_MS - CHINA_OFFSET_MS)
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
const MERCHANT_WORDS: &[&str] = &[
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

/// One item of the catalog; `n` is its position (0-based).
fn make_item(
    rng: &mut Rng,
    sku: Sku,
    n: u32,
    merchants: &[MerchantId],
    opens_at: Timestamp,
    closes_at: Timestamp,
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
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let (lo, hi) = shape.price_yuan;
    let mut price_fen = ((lo.ln() + u * (hi.ln() - lo.ln())).exp() * 100.0).round() as i64;
    // Pin the extremes so every catalog spans ¥1 to ¥50,000 and stock 1 to 2,000.
    let mut stock = pareto_stock(rng);
    match n {
        0 => {
            price_fen = 100;
            stock = 2_000
        }
        1 => {
            price_fen = 5_000_000;
            stock = 1
        }
        _ => {}
    }
    let noun = shape.nouns[rng.below(shape.nouns.len() as u64) as usize];
    let adjective = ADJECTIVES[rng.below(ADJECTIVES.len() as u64) as usize];
    let per_user_limit = match rng.below(10) {
        0..=6 => 1,
        7 | 8 => 2,
        _ => 5,
    };
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
    }
}

/// Stock with a long tail: most items have tens of units, a few thousands.
fn pareto_stock(rng: &mut Rng) -> u32 {
    let u = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let x = 5.0 / u.powf(1.0 / 0.9);
    (x as u32).clamp(1, 2_000)
}

/// Creates merchants and items through the engine (durable before it returns).
pub fn seed_catalog(
    engine: &Engine,
    accounts: &Accounts,
    args: &CatalogArgs,
    now: Timestamp,
) -> Result<()> {
    let opens_at = match args.opens_in {
        Some(d) => now.plus_ms(d.as_millis() as i64),
        None => next_midnight_china(now),
    };
    let closes_at = opens_at.plus_ms(args.sale_length.as_millis() as i64);
    anyhow::ensure!(
        args.merchants >= 1 && args.items >= 1,
        "need at least one merchant and one item"
    );
    let mut rng = Rng::new(args.random_seed);
    let existing = accounts.merchants()?;
    let mut merchants: Vec<MerchantId> = existing.iter().map(|m| m.id).collect();
    for i in existing.len() as u32..args.merchants {
        let name = format!(
            "{} {} Store",
            MERCHANT_WORDS[i as usize % MERCHANT_WORDS.len()],
            i + 1
        );
        merchants.push(accounts.create_merchant(&name, now)?);
    }
    merchants.truncate(args.merchants as usize);
    let first = engine.board().max_sku().map_or(1, |s| s.0 + 1);
    let mut per_shard: Vec<Vec<Command>> = vec![Vec::new(); engine.shard_count()];
    for n in 0..args.items {
        let sku = Sku(first + u64::from(n));
        let item = make_item(&mut rng, sku, n, &merchants, opens_at, closes_at);
        per_shard[engine.shard_of_sku(sku)].push(Command::PutItem {
            item,
            expected: None,
        });
    }
    for (shard, commands) in per_shard.into_iter().enumerate() {
        for chunk in commands.chunks(1_000) {
            let replies = engine
                .handle(shard)
                .submit_many(chunk.to_vec())
                .context("shard stopped")?
                .blocking_recv()
                .context("shard dropped the reply")?;
            for reply in replies {
                anyhow::ensure!(
                    matches!(reply, Reply::Item(_)),
                    "seeding an item failed: {reply:?}"
                );
            }
        }
    }
    tracing::info!(
        items = args.items,
        merchants = merchants.len(),
        opens_at_ms = opens_at.0,
        "catalog seeded"
    );
    Ok(())
}

fn hex_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run(args: SeedArgs) -> Result<()> {
    let _lock = crate::lock_data_dir(&args.data)?;
    let shards = args
        .shards
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()));
    let dir = DataDir::open(&args.data, shards)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let accounts = Accounts::open(&dir.accounts_path())?;
    let engine = Engine::start(dir.clone(), EngineConfig::default(), clock)?;
    seed_catalog(&engine, &accounts, &args.catalog, now)?;
    engine.shutdown();
    if args.shoppers > 0 {
        use sha2::Digest;
        let expires = now.plus_ms(7 * DAY_MS);
        let mut lines = String::new();
        let mut users = Vec::new();
        let taken = accounts
            .meta_get("seed_shoppers")?
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        for n in taken + 1..=taken + u64::from(args.shoppers) {
            let token = hex_token()?;
            let username = format!("shopper-{n}");
            lines.push_str(&format!("{username},{token}\n"));
            let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
            users.push(NewUser {
                username,
                role: Role::Shopper,
                merchant: None,
                password_hash: None,
                session: Some((hash, expires)),
            });
        }
        for chunk in users.chunks(10_000) {
            accounts.create_users(chunk, now)?;
        }
        accounts.meta_set(
            "seed_shoppers",
            &(taken + u64::from(args.shoppers)).to_string(),
        )?;
        if let Some(path) = &args.tokens_out {
            crate::write_secret(path, &lines)?;
            println!(
                "{} shopper tokens written to {}",
                args.shoppers,
                path.display()
            );
        }
    }
    println!(
        "seeded {} items over {} merchants into {}",
        args.catalog.items,
        args.catalog.merchants,
        dir.path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_midnight_is_midnight_in_china_and_in_the_future() {
        // 2026-11-10 15:59:59 UTC = 23:59:59 in China.
        let now = Timestamp(1_794_326_399_000);
        let m = next_midnight_china(now);
        assert_eq!(m.0, 1_794_326_400_000);
        assert_eq!((m.0 + CHINA_OFFSET_MS) % DAY_MS, 0);
        assert_eq!(next_midnight_china(m), m.plus_ms(DAY_MS));
    }

    #[test]
    fn catalog_shape_is_realistic() {
        let mut rng = Rng::new(11);
        let merchants: Vec<_> = (1..=60).map(MerchantId).collect();
        let items: Vec<Item> = (0..10_000)
            .map(|n| {
                make_item(
                    &mut rng,
                    Sku(u64::from(n) + 1),
                    n,
                    &merchants,
                    Timestamp(0),
                    Timestamp(1),
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
        assert!(items
            .iter()
            .filter(|i| i.category == Category::Fresh)
            .all(|i| i.shelf_life_hours.is_some()));
        assert!(items
            .iter()
            .filter(|i| i.category != Category::Fresh)
            .all(|i| i.shelf_life_hours.is_none()));
    }
}
