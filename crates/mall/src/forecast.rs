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
    },
}

#[derive(Args)]
pub struct ForecastArgs {
    #[command(subcommand)]
    pub which: Option<ForecastCmd>,
    /// The history to forecast from (`mall history generate` writes one).
    #[arg(long, default_value = "history")]
    pub history: PathBuf,
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
    } = cmd;
    let params = mall_forecast::history::GenerateParams {
        days,
        items,
        shoppers,
        seed,
        ..Default::default()
    };
    params.validate()?;
    let summary = mall_forecast::history::generate(&params, &out)
        .with_context(|| format!("generating a history in {}", out.display()))?;
    print!("{}", mall_forecast::history::print(&summary));
    Ok(())
}

pub fn forecast(args: ForecastArgs) -> Result<()> {
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
        ..SaleParams::default()
    };
    let f = mall_forecast::forecast::forecast(&args.history, sale)
        .with_context(|| format!("forecasting from {}", args.history.display()))?;
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
