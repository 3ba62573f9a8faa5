//! `mall history generate`, `mall forecast` and `mall forecast backtest`:
//! glue over `mall-forecast`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mall_forecast::forecast::{Forecast, SaleParams};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum HistoryCmd {
    /// Writes a realistic synthetic history of normal days for a catalog:
    /// browsing, favourites, carts, orders and pre-sale deposits, with daily
    /// seasonality and shopper segments (and `truth.json`, the night it
    /// leads to, for checking forecasts).
    Generate {
        #[arg(long, default_value = "history")]
        out: PathBuf,
        #[arg(long, default_value_t = 14)]
        days: u32,
        #[arg(long, default_value_t = 2_000)]
        items: u32,
        #[arg(long, default_value_t = 50_000)]
        shoppers: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write last year's night (`past/`): the forecast then fits
        /// the signal shares and the arrival profile from it.
        #[arg(long)]
        past_night: bool,
        /// How far the world's true signal shares and profile stray from
        /// the forecast's stated ones (log-sd; default the stated 0.05).
        #[arg(long, default_value_t = 0.05)]
        habits_sigma: f64,
    },
}

#[derive(Args)]
pub struct ForecastArgs {
    #[command(subcommand)]
    pub which: Option<ForecastCmd>,
    /// The history to forecast from (`mall history generate` writes one).
    #[arg(long, default_value = "history")]
    pub history: PathBuf,
    /// Forecast from a live mall instead: its store (the data directory's
    /// SQLite files, or `--store`) gives the catalog (every item) and the
    /// pre-sale deposits (its deposit orders, paid or held), and
    /// `DATA/events` the browsing, favourites, carts and orders of the
    /// days before.
    #[arg(long, conflicts_with = "history")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub store: crate::store::StoreArgs,
    /// When the night opens (ms since the epoch); with `--data`, default:
    /// the sale opening most items share.
    #[arg(long)]
    pub opens_at_ms: Option<i64>,
    /// Where the forecast goes (JSON; `mall serve --forecast` and backtests read it).
    #[arg(long, default_value = "forecast.json")]
    pub out: PathBuf,
    /// Where the capacity plan goes (TOML; `mall serve --plan` loads it).
    #[arg(long, default_value = "plan.toml")]
    pub plan: PathBuf,
    /// Payment channels to split the payment peak over (a channels file).
    #[arg(long)]
    pub channels: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Subcommand)]
pub enum ForecastCmd {
    /// Forecasts a night's peak of attempted requests from a past night
    /// (a rehearsal's report and its server's event log): the past night's
    /// attempts per intent signal and its arrival profile, applied to the
    /// signals left before this night's opening. With `--report`, compares
    /// with what this night's clients attempted.
    Night {
        /// The past night's rush report (`mall rush` writes it).
        #[arg(long)]
        past_report: PathBuf,
        /// The past night's server event log (its DATA/events).
        #[arg(long)]
        past_events: PathBuf,
        /// This night's event log, read up to its opening.
        #[arg(long)]
        events: PathBuf,
        /// This night's opening (ms since the epoch); default: `--report`'s.
        #[arg(long)]
        opens_at_ms: Option<i64>,
        /// This night's rush report, to backtest against.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Compares a forecast with what a rush produced (its event log).
    Backtest {
        #[arg(long, default_value = "forecast.json")]
        forecast: PathBuf,
        /// The event log (a server's is DATA/events).
        #[arg(long, default_value = "mall-data/events")]
        events: PathBuf,
        /// When the sale opened (ms since the epoch); default: the forecast's.
        #[arg(long)]
        opens_at_ms: Option<i64>,
    },
}

pub fn history(cmd: HistoryCmd) -> Result<()> {
    let HistoryCmd::Generate {
        out,
        days,
        items,
        shoppers,
        seed,
        past_night,
        habits_sigma,
    } = cmd;
    let mut params = mall_forecast::history::GenerateParams {
        days,
        items,
        shoppers,
        seed,
        past_night,
        ..Default::default()
    };
    params.model.share_sigma = habits_sigma;
    params.model.profile_sigma = habits_sigma;
    params.validate()?;
    let summary = mall_forecast::history::generate(&params, &out)
        .with_context(|| format!("generating a history in {}", out.display()))?;
    print!("{}", mall_forecast::history::print(&summary));
    Ok(())
}

/// A rush report's opening and its attempted requests per second from it.
fn attempted(report: &std::path::Path) -> Result<(i64, Vec<u64>)> {
    let text =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
    let s = &v["summary"];
    let opening = s["opening_ms"]
        .as_i64()
        .with_context(|| format!("{}: no opening_ms (an older report)", report.display()))?;
    let mut per_s = Vec::new();
    for sec in s["timeline"].as_array().into_iter().flatten() {
        let (Some(t), Some(sent)) = (sec["t"].as_i64(), sec["sent"].as_u64()) else {
            continue;
        };
        if let Ok(t) = usize::try_from(t) {
            if per_s.len() <= t {
                per_s.resize(t + 1, 0);
            }
            per_s[t] += sent;
        }
    }
    Ok((opening, per_s))
}

fn night(cmd: ForecastCmd) -> Result<()> {
    let ForecastCmd::Night {
        past_report,
        past_events,
        events,
        opens_at_ms,
        report,
    } = cmd
    else {
        unreachable!("called for night only")
    };
    use mall_forecast::night::{signals, NightFit, PastNight};
    let (past_opening, past_attempted) = attempted(&past_report)?;
    let past = PastNight {
        signals: signals(&past_events, i64::MIN, past_opening)?,
        attempted: past_attempted,
    };
    let fit = NightFit::fit(&past)?;
    let actual = report.as_deref().map(attempted).transpose()?;
    let opening = opens_at_ms
        .or(actual.as_ref().map(|a| a.0))
        .context("give --opens-at-ms (or --report)")?;
    let f = fit.forecast(signals(&events, i64::MIN, opening)?);
    println!(
        "past night: {} signals (favourites {}, carts {}, deposits {}) -> {} attempts: {:.2} a signal; busiest second {} s after opening, {:.1}% of the night",
        past.signals.total(), past.signals.favorites, past.signals.carts, past.signals.deposits,
        past.attempted.iter().sum::<u64>(), fit.attempts_per_signal, fit.peak_at_s, fit.peak_share * 100.0
    );
    println!(
        "this night: {} signals (favourites {}, carts {}, deposits {}) -> forecast {:.0} attempts, peak {:.0} requests/s at {} s",
        f.signals.total(), f.signals.favorites, f.signals.carts, f.signals.deposits, f.attempts, f.peak_per_s, f.peak_at_s
    );
    if let Some((_, per_s)) = actual {
        let (at, peak) = per_s
            .iter()
            .enumerate()
            .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
            .map(|(i, n)| (i, *n))
            .unwrap_or_default();
        let total: u64 = per_s.iter().sum();
        println!(
            "attempted: {total} requests, peak {peak} requests/s at {at} s; error: peak {:+.1}%, attempts {:+.1}%",
            (f.peak_per_s / peak.max(1) as f64 - 1.0) * 100.0,
            (f.attempts / total.max(1) as f64 - 1.0) * 100.0
        );
    }
    Ok(())
}

pub fn forecast(args: ForecastArgs) -> Result<()> {
    if matches!(args.which, Some(ForecastCmd::Night { .. })) {
        return night(args.which.expect("matched"));
    }
    if let Some(ForecastCmd::Backtest {
        forecast,
        events,
        opens_at_ms,
    }) = args.which
    {
        let f = mall_forecast::forecast::load(&forecast)
            .with_context(|| format!("reading {}", forecast.display()))?;
        let b =
            mall_forecast::backtest::backtest(&f, &events, opens_at_ms.unwrap_or(f.opens_at_ms))
                .with_context(|| format!("reading the event log in {}", events.display()))?;
        print!("{}", mall_forecast::backtest::print(&b));
        return Ok(());
    }
    let sale = SaleParams {
        seed: args.seed,
        opens_at_ms: args.opens_at_ms,
        ..SaleParams::default()
    };
    let f = match &args.data {
        Some(data) => from_store(data, &args.store, sale)?,
        None => mall_forecast::forecast::forecast(&args.history, sale)
            .with_context(|| format!("forecasting from {}", args.history.display()))?,
    };
    print!("{}", mall_forecast::forecast::print(&f));
    mall_forecast::forecast::save(&f, &args.out)?;
    let channels: Vec<(String, f64)> = match &args.channels {
        Some(path) => mall_provider_sim::config::load(path)?
            .channel
            .iter()
            .map(|c| (c.name.clone(), f64::from(c.capacity_per_s)))
            .collect(),
        None => Vec::new(),
    };
    let named: Vec<(&str, f64)> = channels.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let plan = mall_forecast::plan::plan(&f, &named, &Default::default())?;
    std::fs::write(&args.plan, mall_forecast::plan::to_toml(&plan)?)
        .with_context(|| format!("writing {}", args.plan.display()))?;
    println!(
        "forecast: {}; capacity plan: {} (load with mall serve --forecast {} --plan {})",
        args.out.display(),
        args.plan.display(),
        args.out.display(),
        args.plan.display()
    );
    Ok(())
}

/// A forecast from a live mall: the catalog and the deposits from its
/// store, the rest from its event log.
fn from_store(
    data: &std::path::Path,
    store: &crate::store::StoreArgs,
    sale: SaleParams,
) -> Result<Forecast> {
    let (catalog, deposits) = store_signals(data, store)?;
    mall_forecast::forecast::forecast_from(&catalog, &data.join("events"), &deposits, sale)
        .with_context(|| format!("forecasting from {}", data.display()))
}

/// A live mall's catalog (every item, at its night's price) and its
/// pre-sale deposits still holding (paid or awaiting payment), as events.
fn store_signals(
    data: &std::path::Path,
    store: &crate::store::StoreArgs,
) -> Result<(
    mall_forecast::catalog::Catalog,
    Vec<mall_forecast::event::Event>,
)> {
    use mall_forecast::catalog::{Catalog, CatalogItem};
    use mall_forecast::event::{Event, Kind};
    let store = store.open_existing(data)?;
    let mut items = Vec::new();
    let mut deposits = Vec::new();
    for shard in 0..store.shard_count() {
        let contents = store
            .shard_contents(shard)
            .with_context(|| format!("reading shard {shard}"))?;
        items.extend(contents.items);
        for o in contents.orders.into_iter().flatten() {
            let deposit = matches!(o.presale, Some(mall_core::OrderPreSale::Deposit { .. }));
            let holds = matches!(
                o.status,
                mall_core::OrderStatus::Paid
                    | mall_core::OrderStatus::AwaitingPayment
                    | mall_core::OrderStatus::Delivered
            );
            if deposit && holds {
                let mut e = Event::new(o.created_at.0, Kind::Deposit, o.user.0, o.sku.0);
                e.order = Some(o.id);
                e.amount = Some(o.amount_fen);
                e.quantity = o.quantity.get();
                deposits.push(e);
            }
        }
    }
    anyhow::ensure!(
        !items.is_empty(),
        "the store {} has no items to forecast",
        store.describe()
    );
    // The night: the sale opening most items share (a pre-sale item's own
    // sale window is its deposit window: its night is its balance's opening).
    let night = |i: &mall_core::Item| i.presale.map_or(i.opens_at.0, |p| p.balance_opens_at.0);
    let mut openings: std::collections::HashMap<i64, usize> = Default::default();
    for i in &items {
        *openings.entry(night(i)).or_default() += 1;
    }
    let opens_at_ms = openings
        .into_iter()
        .max_by_key(|(at, n)| (*n, *at))
        .map_or(0, |(at, _)| at);
    let catalog = Catalog {
        opens_at_ms,
        items: items
            .iter()
            .map(|i| CatalogItem {
                sku: i.sku,
                title: i.title.clone(),
                category: i.category,
                price_fen: i.price_at(mall_core::Timestamp(night(i))),
                stock: i.stock_total,
                opens_at_ms: night(i),
            })
            .collect(),
    };
    println!(
        "mall forecast from {}: {} items, {} pre-sale deposits, events from {}",
        store.describe(),
        catalog.items.len(),
        deposits.len(),
        data.join("events").display()
    );
    Ok((catalog, deposits))
}

/// The forecast as the dashboard draws it: the peak band and the curve of
/// order attempts per second after the opening.
pub fn for_dashboard(f: &Forecast) -> serde_json::Value {
    let band = |b: &mall_forecast::forecast::Band| serde_json::json!({"p10": b.p10, "p50": b.p50, "p90": b.p90});
    let t: Vec<i64> = f
        .curve
        .iter()
        .map(|p| f.opens_at_ms + i64::from(p.t_s) * 1000)
        .collect();
    serde_json::json!({
        "peak_orders_per_s": band(&f.peak_attempts_per_s),
        "peak_at_s": f.peak_at_s.p50,
        "series": {
            "t_ms": t,
            "orders_p10": f.curve.iter().map(|p| p.attempts.p10).collect::<Vec<_>>(),
            "orders_p50": f.curve.iter().map(|p| p.attempts.p50).collect::<Vec<_>>(),
            "orders_p90": f.curve.iter().map(|p| p.attempts.p90).collect::<Vec<_>>(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mall_core::{Fen, OrderId, PaymentMethod, PreSale, Quantity, Sku, Timestamp, UserId};
    use mall_engine::{Engine, EngineConfig, Store};
    use mall_inventory::{Command, Reply, Reserve};
    use mall_shard::{Clock, ManualClock};
    use std::sync::Arc;

    /// `mall forecast --data`: the catalog and the pre-sale deposits come
    /// from the store (deposits still holding count; a lapsed one does
    /// not), the days before from the event log; the deposits raise the
    /// pre-sale item's forecast demand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forecast_reads_a_live_stores_catalog_and_deposits() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("h");
        let params = mall_forecast::history::GenerateParams {
            days: 5,
            items: 30,
            shoppers: 1_500,
            ..Default::default()
        };
        mall_forecast::history::generate(&params, &history).unwrap();
        let catalog = mall_forecast::catalog::Catalog::load(&history).unwrap();
        let opening = Timestamp(catalog.opens_at_ms);
        // The mall's store: the catalog's items, the first a pre-sale whose
        // deposits were taken in the days before; its event log: the history's.
        let data = dir.path().join("data");
        let store: Arc<dyn Store> = Arc::new(mall_sqlite::DataDir::open(&data, Some(2)).unwrap());
        let clock = Arc::new(ManualClock::new(opening.plus_ms(-2 * 86_400_000)));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let mut config = EngineConfig::default();
        config.inventory.hold_timeout_ms = 3_600_000;
        let engine = Engine::start(store.clone(), config, dyn_clock).unwrap();
        let presale_sku = catalog.items[0].sku;
        let items = catalog
            .items
            .iter()
            .map(|c| mall_core::Item {
                sku: c.sku,
                merchant: mall_core::MerchantId(1),
                title: c.title.clone(),
                category: c.category,
                price_fen: c.price_fen,
                sale_prices: vec![],
                floor_price_fen: Fen(1),
                stock_total: c.stock.max(1),
                per_user_limit: 1,
                opens_at: if c.sku == presale_sku {
                    opening.plus_ms(-5 * 86_400_000)
                } else {
                    opening
                },
                closes_at: if c.sku == presale_sku {
                    opening
                } else {
                    opening.plus_ms(86_400_000)
                },
                shelf_life_hours: (c.category == mall_core::Category::Fresh).then_some(48),
                presale: (c.sku == presale_sku).then_some(PreSale {
                    deposit_fen: Fen(1),
                    worth_fen: Fen(1),
                    balance_opens_at: opening,
                    balance_closes_at: opening.plus_ms(86_400_000),
                }),
            })
            .collect();
        engine.create_items(items).await.unwrap();
        let stock = catalog.items[0].stock.max(1);
        let deposits = stock.min(20);
        let deposit = |user: u64| {
            Command::Reserve(Reserve::new(
                UserId(900_000 + user),
                presale_sku,
                Quantity::new(1).unwrap(),
                PaymentMethod::Online,
                "1 Road".into(),
                None,
                false,
            ))
        };
        let mut made: Vec<OrderId> = Vec::new();
        for u in 0..u64::from(deposits) {
            match engine
                .try_submit_for_sku(presale_sku, deposit(u))
                .unwrap()
                .await
                .unwrap()
            {
                Reply::Order { order, .. } => made.push(order.id),
                other => panic!("{other:?}"),
            }
        }
        // All but one paid; the last lapses unpaid and counts no more.
        for id in &made[..made.len() - 1] {
            let r = engine.try_submit_for_order(*id, Command::Confirm { order: *id });
            assert!(matches!(
                r.unwrap().unwrap().await.unwrap(),
                Reply::Order { .. }
            ));
        }
        clock.advance_ms(3_600_001);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(engine);
        std::fs::create_dir_all(data.join("events")).unwrap();
        for f in mall_forecast::event::event_files(&history).unwrap() {
            std::fs::copy(&f, data.join("events").join(f.file_name().unwrap())).unwrap();
        }
        let sale = SaleParams {
            draws: 200,
            ..SaleParams::default()
        };
        let args = crate::store::StoreArgs::default();
        let live = from_store(&data, &args, sale.clone()).unwrap();
        assert_eq!(
            live.opens_at_ms, catalog.opens_at_ms,
            "the night most items share"
        );
        assert_eq!(live.items.len(), catalog.items.len());
        let item = |f: &Forecast, sku: Sku| f.items.iter().find(|i| i.sku == sku).unwrap().clone();
        let with = item(&live, presale_sku);
        // The store's deposits stand for the log's (none counts twice).
        assert_eq!(
            with.deposits,
            u64::from(deposits) - 1,
            "the deposits holding, from the store"
        );
        // Three times the deposits (other shoppers): more demand forecast.
        let (cat, deps) = store_signals(&data, &args).unwrap();
        let more: Vec<_> = (0..3u64)
            .flat_map(|k| {
                deps.iter().map(move |e| {
                    let mut e = e.clone();
                    e.user = UserId(e.user.0 + k * 1_000_000);
                    e
                })
            })
            .collect();
        let tripled =
            mall_forecast::forecast::forecast_from(&cat, &data.join("events"), &more, sale)
                .unwrap();
        let tripled = item(&tripled, presale_sku);
        assert_eq!(tripled.deposits, 3 * with.deposits);
        assert!(
            tripled.demand.p50 > with.demand.p50,
            "deposits raise the demand: {:?} vs {:?}",
            tripled.demand,
            with.demand
        );
    }
}
