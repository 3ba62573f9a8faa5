//! `mall seed`: a realistic Singles' Day catalog. 10,000 flash-sale SKUs
//! over eight categories from 60 merchants, prices from ¥1 to ¥50,000
//! (log-uniform within each category's range), stock from 1 to 2,000 with a
//! long tail (Pareto), sale opening at the next midnight (China time) or
//! when told, and N token-only shopper accounts.

use anyhow::Result;
use clap::Args;
use mall_core::{MerchantId, Role, Sku, Timestamp};
use mall_engine::{AccountStore, Engine, EngineConfig, NewUser};
use mall_inventory::sim::Rng;
use mall_rush::catalog::{make_item, merchant_name, CatalogShape};
use mall_shard::{Clock, SystemClock};
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
    #[command(flatten)]
    pub store: crate::store::StoreArgs,
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

/// Creates merchants and items through the engine (durable before it returns).
pub fn seed_catalog(
    engine: &Engine,
    accounts: &dyn AccountStore,
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
        let name = merchant_name(i);
        merchants.push(accounts.create_merchant(&name, now)?);
    }
    merchants.truncate(args.merchants as usize);
    let first = engine.board().max_sku().map_or(1, |s| s.0 + 1);
    let items = (0..args.items)
        .map(|n| {
            let sku = Sku(first + u64::from(n));
            make_item(
                &mut rng,
                sku,
                n,
                &merchants,
                (opens_at, closes_at),
                &CatalogShape::default(),
            )
        })
        .collect();
    engine.create_items_blocking(items)?;
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
    let store = args.store.open(&args.data, args.shards)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let accounts = store.accounts()?;
    let engine = Engine::start(store.clone(), EngineConfig::default(), clock)?;
    seed_catalog(&engine, &*accounts, &args.catalog, now)?;
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
        store.describe()
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
}
