//! A synthetic shopper history: `days` normal days before the sale, the
//! pre-sale intent of the last days, and the hidden truth of the night.
//!
//! # The world
//!
//! - **Catalog.** Eight categories with their own price ranges and appeal;
//!   item popularity is Zipf (s = 1) over a random ranking, times the
//!   category's appeal, times log-normal noise.
//! - **Shoppers** belong to four hidden segments with their own habits:
//!   bargain hunters (many views and favourites, few orders), loyal
//!   shoppers (few views, high conversion, deposits), night owls (active
//!   around midnight) and casuals (rare visits).
//! - **Normal days.** Each shopper opens Poisson-many sessions a day (more at
//!   weekends for most segments, slowly growing toward the sale), at an hour
//!   drawn from the segment's daily profile (trough 3-5 am, peaks around
//!   10-11 am and 8-10 pm; night owls around midnight). A session views
//!   items by popularity; a view may become a favourite, a cart, an order
//!   (through the cart or "buy now"), or a refusal (`limit_reached`). Online
//!   orders are paid after a log-normal delay within the 15-minute hold,
//!   cancelled, or left to expire; a few paid orders are refunded.
//! - **The night's demand.** Each item draws a sale appeal (log-normal,
//!   mean 1): how much its discount excites beyond its normal popularity.
//!   The shoppers who will try to buy it at midnight ("wanters") are
//!   Poisson with mean ∝ popularity × appeal. The scale is set so that the
//!   busiest second is `peak_multiple` (100, with log-normal noise) times the
//!   normal days' average order rate.
//! - **Intent.** In the last `intent_window_days` days each wanter, with
//!   probabilities that depend on the segment, favourites the item, carts
//!   it, and pays a deposit; the days nearer the sale get more of it (weights
//!   1, 2, 4, ...). Averaged over the wanters' segments the probabilities
//!   are [`SaleModel::signal_share`] times one common log-normal factor
//!   (`share_sigma`): this year's shoppers signal a bit more or less than the
//!   forecast assumes.
//! - **Stock.** The headline items (the `headline_share` with the largest
//!   expected demand) get scarce stock (about 12 % of expected demand, at
//!   least one unit); the rest get more than their demand, so the
//!   sell-outs are the headline items, as on the real night.
//! - **The night** follows the fluid model of [`crate::model`] with the
//!   profile's parameters drawn around the stated ones (`profile_sigma`).
//!   `truth.json` holds its figures: per item the demand, stock and fluid
//!   sell-out time; the peak attempts/s and its second; accepted orders and
//!   payments peaks.
//!
//! - **Last year's night** (`past_night`): the same world a year earlier
//!   (364 days: the same weekday), with its own normal days, its own sale
//!   appeals, stock and wanters, but the same true signal shares and
//!   arrival profile (they are the shoppers' habits, not the year's), in
//!   `past/`: its day files and catalog, and `past/night.json`, what the
//!   mall saw of that night: order attempts per item and per second from
//!   the opening. The forecast fits the shares and the profile from it.
//!
//! Files: `day-YYYYMMDD.jsonl` per China-local day (the day's normal
//! events sorted by time, then, on the intent window's days, its intent
//! sorted by time: readers must not assume one order),
//! `catalog.json`, `truth.json`. Events at or after the opening are not
//! written: the history ends at midnight.

use crate::calendar::{china_day, Date, HOUR_MS};
use crate::catalog::{Catalog, CatalogItem};
use crate::event::{Event, Kind};
use crate::model::{
    kernel_from_delays, payments, peak, FluidSale, Grid, ItemDemand, Profile, SaleModel,
    SignalShares,
};
use crate::rng::{cumulative, Rng};
use crate::Error;
use mall_core::{Category, Fen, OrderId, Sku};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The answer key's file name.
pub const TRUTH_FILE: &str = "truth.json";
/// Longest history generated.
pub const DAYS_MAX: u32 = 120;
/// Most items generated.
pub const ITEMS_MAX: u32 = 100_000;
/// Most shoppers generated (a day of them is held in memory).
pub const SHOPPERS_MAX: u32 = 1_000_000;
/// An online order's stock is held this long waiting for payment.
pub const HOLD_S: f64 = 900.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// Normal days before the sale.
    pub days: u32,
    pub items: u32,
    pub shoppers: u32,
    pub seed: u64,
    /// The sale opens at this date's midnight, China time.
    pub sale_day: Date,
    /// The night's busiest second over the normal days' average order rate.
    pub peak_multiple: f64,
    /// Log-sd of the noise on `peak_multiple`.
    pub peak_multiple_sigma: f64,
    /// Share of the items, by expected demand, that get scarce stock.
    pub headline_share: f64,
    /// The world's nominal sale model; its sigmas are the noise the true
    /// parameters are drawn with.
    pub model: SaleModel,
    /// Also write last year's night in `past/` (see the module documentation).
    #[serde(default)]
    pub past_night: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            days: 14,
            items: 2_000,
            shoppers: 50_000,
            seed: 1,
            sale_day: Date {
                year: 2025,
                month: 11,
                day: 11,
            },
            peak_multiple: 100.0,
            peak_multiple_sigma: 0.1,
            headline_share: 0.2,
            model: SaleModel::default(),
            past_night: false,
        }
    }
}

impl GenerateParams {
    /// Checks the values serde cannot (ranges, consistency).
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.check().map_err(crate::Error::InvalidParams)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let window = self.model.intent_window_days;
        if self.days <= window || self.days > DAYS_MAX {
            return Err(format!(
                "days must be in {}..={DAYS_MAX} (more than the {window}-day intent window), got {}",
                window + 1,
                self.days
            ));
        }
        if !(1..=ITEMS_MAX).contains(&self.items) {
            return Err(format!(
                "items must be in 1..={ITEMS_MAX}, got {}",
                self.items
            ));
        }
        if !(1..=SHOPPERS_MAX).contains(&self.shoppers) {
            return Err(format!(
                "shoppers must be in 1..={SHOPPERS_MAX}, got {}",
                self.shoppers
            ));
        }
        if Date::new(self.sale_day.year, self.sale_day.month, self.sale_day.day).is_none() {
            return Err(format!("sale_day {} is not a date", self.sale_day));
        }
        if !(self.peak_multiple.is_finite() && self.peak_multiple > 0.0) {
            return Err("peak_multiple must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.peak_multiple_sigma) {
            return Err("peak_multiple_sigma must be in [0, 1]".into());
        }
        if !(self.headline_share > 0.0 && self.headline_share <= 1.0) {
            return Err("headline_share must be in (0, 1]".into());
        }
        self.model.check()
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistorySummary {
    pub out_dir: PathBuf,
    pub days: u32,
    pub items: u32,
    pub shoppers: u32,
    pub seed: u64,
    pub opens_at_ms: i64,
    /// Events written, over all day files.
    pub events: u64,
    /// Bytes written, over all files.
    pub bytes: u64,
    /// Orders of the normal days.
    pub orders: u64,
    pub normal_orders_per_s: f64,
    pub true_peak_attempts_per_s: f64,
    pub true_peak_at_s: u64,
    /// Items whose demand exceeds their stock.
    pub sold_out_items: usize,
    /// Last year's night, when written: its busiest second's attempts.
    #[serde(default)]
    pub past_peak_attempts_per_s: Option<f64>,
}

/// Where last year's night is, inside a history.
pub const PAST_DIR: &str = "past";
/// What the mall saw of last year's night, in [`PAST_DIR`].
pub const PAST_NIGHT_FILE: &str = "night.json";

/// `past/night.json`: last year's night as the mall saw it (its event log's
/// order attempts, counted), never its hidden parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PastNightLog {
    pub opens_at_ms: i64,
    /// Order attempts over the whole night, per item (catalog order).
    pub items: Vec<PastNightItem>,
    /// Order attempts in each second from the opening, for an hour.
    pub attempts_per_s: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PastNightItem {
    pub sku: Sku,
    pub attempts: f64,
}

impl PastNightLog {
    pub fn load(path: &Path) -> Result<PastNightLog, Error> {
        crate::read_json(path)
    }
}

/// `truth.json`: the night the history leads to. Never read by the forecast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    pub seed: u64,
    pub opens_at_ms: i64,
    /// Orders of the normal days over their seconds.
    pub normal_orders_per_s: f64,
    /// `peak_attempts_per_s / normal_orders_per_s`.
    pub peak_multiple: f64,
    /// Order attempts of the busiest second `[peak_at_s, peak_at_s + 1)`.
    pub peak_attempts_per_s: f64,
    pub peak_at_s: u64,
    pub peak_accepted_per_s: f64,
    pub peak_payments_per_s: f64,
    pub peak_payments_at_s: u64,
    pub attempts_total: f64,
    /// Share of accepted orders paid online during the night.
    pub pay_share: f64,
    /// The night's true profile and signal shares.
    pub profile: Profile,
    pub signal_share: SignalShares,
    /// Every item, in catalog order.
    pub items: Vec<TruthItem>,
    /// The hidden segments: which shopper belongs to which.
    pub segments: Vec<TruthSegment>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthItem {
    pub sku: Sku,
    /// Order attempts at the sale.
    pub demand: f64,
    pub stock: u32,
    /// Fluid sell-out time, seconds after opening (`demand > stock`).
    pub sellout_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthSegment {
    pub name: String,
    pub users: Vec<u64>,
}

impl Truth {
    pub fn load(dir: &Path) -> Result<Truth, Error> {
        crate::read_json(&dir.join(TRUTH_FILE))
    }
}

/// A shopper segment's habits.
struct Segment {
    name: &'static str,
    /// Share of shoppers.
    share: f64,
    sessions_per_day: f64,
    views_per_session: f64,
    favorite_per_view: f64,
    cart_per_view: f64,
    order_per_cart: f64,
    buy_now_per_view: f64,
    cod_share: f64,
    /// Share of online orders paid (the rest cancelled or left to expire).
    pay_share: f64,
    weekend_factor: f64,
    /// Relative weight of a segment's shoppers among an item's wanters.
    sale_weight: f64,
    /// Relative propensity to favourite, cart, deposit before the sale.
    intent: [f64; 3],
    hours: &'static [f64; 24],
}

/// Most shoppers: trough 3-5 am, peaks 10-11 am and 8-10 pm.
const DAYTIME: [f64; 24] = [
    0.30, 0.18, 0.10, 0.06, 0.05, 0.07, 0.18, 0.40, 0.65, 0.90, 1.15, 1.20, 1.00, 0.90, 0.85, 0.85,
    0.85, 0.90, 0.95, 1.10, 1.30, 1.40, 1.25, 0.70,
];
/// Night owls: busiest around midnight.
const NIGHT: [f64; 24] = [
    1.20, 1.00, 0.70, 0.35, 0.15, 0.08, 0.06, 0.08, 0.15, 0.25, 0.35, 0.45, 0.50, 0.50, 0.50, 0.50,
    0.50, 0.55, 0.65, 0.80, 1.00, 1.30, 1.50, 1.50,
];

const SEGMENTS: [Segment; 4] = [
    Segment {
        name: "bargain_hunter",
        share: 0.25,
        sessions_per_day: 0.30,
        views_per_session: 4.0,
        favorite_per_view: 0.10,
        cart_per_view: 0.06,
        order_per_cart: 0.25,
        buy_now_per_view: 0.01,
        cod_share: 0.05,
        pay_share: 0.85,
        weekend_factor: 1.30,
        sale_weight: 2.0,
        intent: [1.4, 0.9, 0.7],
        hours: &DAYTIME,
    },
    Segment {
        name: "loyal",
        share: 0.15,
        sessions_per_day: 0.35,
        views_per_session: 2.5,
        favorite_per_view: 0.04,
        cart_per_view: 0.20,
        order_per_cart: 0.75,
        buy_now_per_view: 0.10,
        cod_share: 0.25,
        pay_share: 0.95,
        weekend_factor: 1.0,
        sale_weight: 1.0,
        intent: [0.6, 1.3, 1.6],
        hours: &DAYTIME,
    },
    Segment {
        name: "night_owl",
        share: 0.15,
        sessions_per_day: 0.30,
        views_per_session: 3.0,
        favorite_per_view: 0.07,
        cart_per_view: 0.10,
        order_per_cart: 0.50,
        buy_now_per_view: 0.04,
        cod_share: 0.10,
        pay_share: 0.90,
        weekend_factor: 1.15,
        sale_weight: 1.3,
        intent: [1.0, 1.0, 1.0],
        hours: &NIGHT,
    },
    Segment {
        name: "casual",
        share: 0.45,
        sessions_per_day: 0.12,
        views_per_session: 3.0,
        favorite_per_view: 0.03,
        cart_per_view: 0.06,
        order_per_cart: 0.45,
        buy_now_per_view: 0.03,
        cod_share: 0.20,
        pay_share: 0.85,
        weekend_factor: 1.35,
        sale_weight: 0.6,
        intent: [0.8, 0.9, 0.8],
        hours: &DAYTIME,
    },
];

/// Normal-day sessions grow by this factor per day toward the sale.
const GROWTH_PER_DAY: f64 = 0.01;
/// Median and log-sd of the delay from an online order to its payment.
const PAY_DELAY_MEDIAN_S: f64 = 45.0;
const PAY_DELAY_SIGMA: f64 = 1.0;
/// Payment channels and their shares of online payments.
const CHANNELS: [(&str, f64); 3] = [("alipay", 0.55), ("wechat", 0.35), ("unionpay", 0.10)];
/// Log-sd of the items' sale appeal (its mean is 1).
const APPEAL_SIGMA: f64 = 0.4;
/// Headline stock as a share of expected demand: median and log-sd.
const HEADLINE_STOCK_MEDIAN: f64 = 0.12;
const HEADLINE_STOCK_SIGMA: f64 = 0.5;

struct CategoryShape {
    category: Category,
    weight: f64,
    price_yuan: (f64, f64),
    appeal: f64,
    nouns: &'static [&'static str],
}

const CATEGORIES: [CategoryShape; 8] = [
    CategoryShape {
        category: Category::Fresh,
        weight: 15.0,
        price_yuan: (5.0, 800.0),
        appeal: 0.8,
        nouns: &[
            "hairy crab",
            "durian",
            "king prawns",
            "cherries",
            "salmon fillet",
        ],
    },
    CategoryShape {
        category: Category::Appliances,
        weight: 14.0,
        price_yuan: (99.0, 20_000.0),
        appeal: 1.2,
        nouns: &[
            "air fryer",
            "robot vacuum",
            "rice cooker",
            "dishwasher",
            "air conditioner",
        ],
    },
    CategoryShape {
        category: Category::Clothing,
        weight: 24.0,
        price_yuan: (19.0, 3_000.0),
        appeal: 1.0,
        nouns: &[
            "down jacket",
            "wool coat",
            "sneakers",
            "jeans",
            "cashmere sweater",
        ],
    },
    CategoryShape {
        category: Category::Books,
        weight: 8.0,
        price_yuan: (10.0, 300.0),
        appeal: 0.6,
        nouns: &[
            "novel box set",
            "cookbook",
            "atlas",
            "comic volume",
            "dictionary",
        ],
    },
    CategoryShape {
        category: Category::Electronics,
        weight: 14.0,
        price_yuan: (99.0, 20_000.0),
        appeal: 1.5,
        nouns: &["phone", "earbuds", "tablet", "smartwatch", "laptop"],
    },
    CategoryShape {
        category: Category::Beauty,
        weight: 12.0,
        price_yuan: (20.0, 2_000.0),
        appeal: 1.2,
        nouns: &[
            "serum",
            "lipstick set",
            "face cream",
            "perfume",
            "sunscreen",
        ],
    },
    CategoryShape {
        category: Category::Home,
        weight: 8.0,
        price_yuan: (10.0, 5_000.0),
        appeal: 0.8,
        nouns: &["duvet", "desk lamp", "cookware set", "office chair", "rug"],
    },
    CategoryShape {
        category: Category::Toys,
        weight: 5.0,
        price_yuan: (10.0, 1_500.0),
        appeal: 0.7,
        nouns: &[
            "building bricks",
            "plush bear",
            "model train",
            "puzzle",
            "drone",
        ],
    },
];

const ADJECTIVES: [&str; 8] = [
    "Classic", "Premium", "Limited", "Deluxe", "Everyday", "Pro", "Mini", "Family",
];

/// An item while generating.
struct GenItem {
    sku: Sku,
    price_fen: i64,
    /// Normal-day popularity (relative).
    popularity: f64,
    /// Sale appeal (mean 1).
    appeal: f64,
}

/// Writes a synthetic history into `out_dir` (created if missing; it must
/// hold no `*.jsonl` files yet) and returns what it wrote.
pub fn generate(params: &GenerateParams, out_dir: &Path) -> Result<HistorySummary, Error> {
    params.validate()?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    for dir in [out_dir.to_path_buf(), out_dir.join(PAST_DIR)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // no past/ yet
        };
        for entry in entries {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                return Err(Error::InvalidParams(format!(
                    "{} already holds event files ({}); generate into an empty directory",
                    dir.display(),
                    path.display()
                )));
            }
        }
    }

    let world = World::new(params, 0);
    let (night, mut summary) = write_year(&world, out_dir)?;
    let path = out_dir.join(TRUTH_FILE);
    let truth = serde_json::to_string(&night.truth).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, &truth).map_err(io(&path))?;
    summary.bytes += truth.len() as u64;
    if params.past_night {
        // The same world (same seed: catalog, shoppers, habits) a year before.
        let past_params = GenerateParams {
            sale_day: params.sale_day.plus_days(-364),
            ..params.clone()
        };
        let past_world = World::new(&past_params, 1);
        let past_dir = out_dir.join(PAST_DIR);
        std::fs::create_dir_all(&past_dir).map_err(io(&past_dir))?;
        let (past, past_summary) = write_year(&past_world, &past_dir)?;
        let log = PastNightLog {
            opens_at_ms: past_world.opens_at_ms,
            items: past
                .truth
                .items
                .iter()
                .map(|i| PastNightItem {
                    sku: i.sku,
                    attempts: i.demand,
                })
                .collect(),
            attempts_per_s: past.attempts_per_s.clone(),
        };
        let path = past_dir.join(PAST_NIGHT_FILE);
        let text = serde_json::to_string(&log).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, &text).map_err(io(&path))?;
        summary.events += past_summary.events;
        summary.bytes += past_summary.bytes + text.len() as u64;
        summary.past_peak_attempts_per_s = Some(past.truth.peak_attempts_per_s);
    }
    Ok(summary)
}

/// Writes one year's history into `dir`: its normal days, the intent before
/// its night, and its catalog. Its night, and what was written.
fn write_year(world: &World, dir: &Path) -> Result<(Night, HistorySummary), Error> {
    let params = world.params;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut out = DayWriter {
        dir,
        first_day: world.first_day,
        events: 0,
        bytes: 0,
    };
    // Events wait here until their day is written. A day is written as soon
    // as it is simulated (events only spill forward in time), so memory
    // holds about one day; the intent is appended to the window's days.
    let mut pending: Vec<Vec<Event>> = vec![Vec::new(); params.days as usize];
    let mut rng = world.rng.clone().fork(world.stream(3));
    let mut next_order = 1u64;
    let mut orders = 0;
    for d in 0..pending.len() {
        orders += world.normal_day(d, &mut rng, &mut pending, &mut next_order);
        out.write(d, &mut pending[d], false)?;
    }
    let normal_orders_per_s = orders as f64 / (f64::from(params.days) * 86_400.0);
    let night = world.night(normal_orders_per_s);
    world.intent(&night, &mut pending);
    for (d, events) in pending.iter_mut().enumerate() {
        if !events.is_empty() {
            out.write(d, events, true)?;
        }
    }
    let mut summary = HistorySummary {
        out_dir: dir.to_path_buf(),
        days: params.days,
        items: params.items,
        shoppers: params.shoppers,
        seed: params.seed,
        opens_at_ms: world.opens_at_ms,
        events: out.events,
        bytes: out.bytes,
        orders,
        normal_orders_per_s,
        true_peak_attempts_per_s: night.truth.peak_attempts_per_s,
        true_peak_at_s: night.truth.peak_at_s,
        sold_out_items: night
            .truth
            .items
            .iter()
            .filter(|i| i.sellout_s.is_some())
            .count(),
        past_peak_attempts_per_s: None,
    };
    world.catalog(&night).save(dir)?;
    let catalog = dir.join(crate::catalog::CATALOG_FILE);
    summary.bytes += std::fs::metadata(&catalog).map_err(io(&catalog))?.len();
    Ok((night, summary))
}

/// What [`generate`] wrote, as text for a terminal.
pub fn print(s: &HistorySummary) -> String {
    format!(
        "wrote {}: {} days, {} items, {} shoppers (seed {}): {} events, {:.1} MB\n\
         normal days: {} orders, {:.4} orders/s on average\n\
         the sale opens at {} ms; truth.json holds the night (peak {:.2} attempts/s at {} s, {} items sell out)\n{}",
        s.out_dir.display(),
        s.days,
        s.items,
        s.shoppers,
        s.seed,
        s.events,
        s.bytes as f64 / 1e6,
        s.orders,
        s.normal_orders_per_s,
        s.opens_at_ms,
        s.true_peak_attempts_per_s,
        s.true_peak_at_s,
        s.sold_out_items,
        match s.past_peak_attempts_per_s {
            Some(p) => format!(
                "last year's night is in past/ (its peak {p:.2} attempts/s): the forecast fits its shares and profile from it\n"
            ),
            None => String::new(),
        }
    )
}

/// Writes day files: `day-YYYYMMDD.jsonl`, each batch sorted by time.
struct DayWriter<'a> {
    dir: &'a Path,
    first_day: Date,
    /// Events and bytes written so far.
    events: u64,
    bytes: u64,
}

impl DayWriter<'_> {
    /// Writes (or appends) day `d`'s events and empties them.
    fn write(&mut self, d: usize, events: &mut Vec<Event>, append: bool) -> Result<(), Error> {
        events.sort_by_key(|e| e.t_ms);
        let mut text = String::with_capacity(events.len() * 64);
        for event in events.iter() {
            event.write_line(&mut text);
        }
        let date = self.first_day.plus_days(d as i64);
        let path = self.dir.join(format!("day-{}.jsonl", date.compact()));
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(io)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
        self.events += events.len() as u64;
        self.bytes += text.len() as u64;
        *events = Vec::new();
        Ok(())
    }
}

/// Everything drawn before the days are simulated.
struct World<'p> {
    params: &'p GenerateParams,
    /// 0: the year of the sale to forecast; 1: the year before.
    year: u64,
    /// The root of the generation's streams: each part forks its own.
    rng: Rng,
    opens_at_ms: i64,
    /// The history's first day (China time).
    first_day: Date,
    /// In catalog order (SKU = index + 1).
    items: Vec<GenItem>,
    titles: Vec<(String, Category)>,
    /// Cumulative normal-day popularity, for drawing viewed items.
    popularity_cdf: Vec<f64>,
    /// Segment index per shopper (user id = index + 1).
    segment_of: Vec<u8>,
    /// Shoppers per segment (user ids).
    members: Vec<Vec<u64>>,
    hour_cdfs: Vec<Vec<f64>>,
    channel_cdf: Vec<f64>,
}

/// The night's truth and what the intent generation needs from it.
struct Night {
    truth: Truth,
    /// Wanters per item (catalog order).
    wanters: Vec<u64>,
    /// Order attempts in each second from the opening (the fluid night's).
    attempts_per_s: Vec<f64>,
}

impl<'p> World<'p> {
    fn new(params: &'p GenerateParams, year: u64) -> World<'p> {
        let mut rng = Rng::new(params.seed);
        let mut catalog_rng = rng.fork(1);
        let mut shopper_rng = rng.fork(2);
        let n = params.items as usize;
        let category_cdf = cumulative(&CATEGORIES.map(|c| c.weight));
        // A random popularity ranking: Zipf over ranks.
        let mut ranks: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = catalog_rng.below(i as u64 + 1) as usize;
            ranks.swap(i, j);
        }
        let mut items = Vec::with_capacity(n);
        let mut titles = Vec::with_capacity(n);
        for (i, &rank) in ranks.iter().enumerate() {
            let shape = &CATEGORIES[catalog_rng.pick_weighted(&category_cdf)];
            let (lo, hi) = shape.price_yuan;
            let yuan = lo * (hi / lo).powf(catalog_rng.next_f64());
            let price_fen = ((yuan * 100.0).round() as i64 / 10 * 10 - 10).max(90);
            let noun = shape.nouns[catalog_rng.below(shape.nouns.len() as u64) as usize];
            let adjective = ADJECTIVES[catalog_rng.below(ADJECTIVES.len() as u64) as usize];
            titles.push((format!("{adjective} {noun}"), shape.category));
            let popularity = shape.appeal / (rank as f64 + 1.0) * catalog_rng.lognormal(1.0, 0.3);
            let appeal =
                catalog_rng.lognormal((-APPEAL_SIGMA * APPEAL_SIGMA / 2.0).exp(), APPEAL_SIGMA);
            items.push(GenItem {
                sku: Sku(i as u64 + 1),
                price_fen,
                popularity,
                appeal,
            });
        }
        let popularity_cdf = cumulative(&items.iter().map(|i| i.popularity).collect::<Vec<_>>());
        let segment_cdf = cumulative(&SEGMENTS.map(|s| s.share));
        let mut segment_of = Vec::with_capacity(params.shoppers as usize);
        let mut members = vec![Vec::new(); SEGMENTS.len()];
        for user in 1..=u64::from(params.shoppers) {
            let s = shopper_rng.pick_weighted(&segment_cdf);
            segment_of.push(s as u8);
            members[s].push(user);
        }
        let first_day = params.sale_day.plus_days(-i64::from(params.days));
        World {
            params,
            year,
            rng,
            opens_at_ms: params.sale_day.china_midnight_ms(),
            first_day,
            items,
            titles,
            popularity_cdf,
            segment_of,
            members,
            hour_cdfs: SEGMENTS.iter().map(|s| cumulative(s.hours)).collect(),
            channel_cdf: cumulative(&CHANNELS.map(|c| c.1)),
        }
    }

    /// Simulates normal day `d` (its events may spill into later days);
    /// returns its orders.
    fn normal_day(
        &self,
        d: usize,
        rng: &mut Rng,
        days: &mut [Vec<Event>],
        next_order: &mut u64,
    ) -> u64 {
        let mut orders = 0;
        let date = self.first_day.plus_days(d as i64);
        let start_ms = date.china_midnight_ms();
        let growth = (1.0 + GROWTH_PER_DAY).powi(d as i32);
        for (u, &s) in self.segment_of.iter().enumerate() {
            let segment = &SEGMENTS[s as usize];
            let weekend = if date.is_weekend() {
                segment.weekend_factor
            } else {
                1.0
            };
            let sessions = rng.poisson(segment.sessions_per_day * weekend * growth);
            for _ in 0..sessions {
                let hour = rng.pick_weighted(&self.hour_cdfs[s as usize]) as i64;
                let t = start_ms + hour * HOUR_MS + rng.below(HOUR_MS as u64) as i64;
                orders += self.session(rng, u as u64 + 1, segment, t, days, next_order);
            }
        }
        orders
    }

    /// One browsing session; returns its orders.
    fn session(
        &self,
        rng: &mut Rng,
        user: u64,
        segment: &Segment,
        mut t: i64,
        days: &mut [Vec<Event>],
        next_order: &mut u64,
    ) -> u64 {
        let mut orders = 0;
        let views = 1 + rng.poisson(segment.views_per_session - 1.0);
        for _ in 0..views {
            t += 5_000 + rng.below(55_000) as i64;
            let item = &self.items[rng.pick_weighted(&self.popularity_cdf)];
            let sku = item.sku.0;
            self.push(days, Event::new(t, Kind::View, user, sku));
            if rng.chance(segment.favorite_per_view) {
                self.push(days, Event::new(t + 2_000, Kind::Favorite, user, sku));
            }
            let carted = rng.chance(segment.cart_per_view);
            if carted {
                self.push(days, Event::new(t + 4_000, Kind::Cart, user, sku));
            }
            let buys = if carted {
                rng.chance(segment.order_per_cart)
            } else {
                rng.chance(segment.buy_now_per_view)
            };
            if !buys {
                continue;
            }
            let at = t + 10_000 + rng.below(50_000) as i64;
            if rng.chance(0.02) {
                let mut refusal = Event::new(at, Kind::Refusal, user, sku);
                refusal.reason = Some("limit_reached".into());
                self.push(days, refusal);
                continue;
            }
            orders += u64::from(at < self.opens_at_ms);
            self.order(rng, user, segment, item, at, days, next_order);
        }
        orders
    }

    /// An accepted order and what follows it: payment, cancel or expiry,
    /// sometimes a refund.
    #[allow(clippy::too_many_arguments)]
    fn order(
        &self,
        rng: &mut Rng,
        user: u64,
        segment: &Segment,
        item: &GenItem,
        at: i64,
        days: &mut [Vec<Event>],
        next_order: &mut u64,
    ) {
        let sku = item.sku.0;
        let id = OrderId(*next_order);
        *next_order += 1;
        let quantity = if rng.chance(0.08) { 2 } else { 1 };
        let amount = Fen(item.price_fen * i64::from(quantity));
        let cod = rng.chance(segment.cod_share);
        let mut order = Event::new(at, Kind::Order, user, sku);
        order.order = Some(id);
        order.amount = Some(amount);
        order.quantity = quantity;
        order.cod = cod;
        self.push(days, order);
        if cod {
            return;
        }
        if rng.chance(segment.pay_share) {
            let mut pay = Event::new(at + pay_delay_ms(rng), Kind::Pay, user, sku);
            pay.order = Some(id);
            pay.amount = Some(amount);
            pay.channel = Some(CHANNELS[rng.pick_weighted(&self.channel_cdf)].0.into());
            let paid_at = pay.t_ms;
            self.push(days, pay);
            if rng.chance(0.02) {
                let hours = 1 + rng.below(20) as i64;
                let mut refund = Event::new(paid_at + hours * HOUR_MS, Kind::Refund, user, sku);
                refund.order = Some(id);
                refund.amount = Some(amount);
                self.push(days, refund);
            }
        } else if rng.chance(0.5) {
            let mut cancel = Event::new(
                at + 60_000 + rng.below(540_000) as i64,
                Kind::Cancel,
                user,
                sku,
            );
            cancel.order = Some(id);
            self.push(days, cancel);
        }
    }

    /// Files an event under its China-local day; drops what falls outside
    /// the history (at or after the opening).
    fn push(&self, days: &mut [Vec<Event>], event: Event) {
        let d = china_day(event.t_ms) - self.first_day.days();
        if event.t_ms < self.opens_at_ms && d >= 0 {
            if let Some(day) = days.get_mut(d as usize) {
                day.push(event);
            }
        }
    }

    /// The stream `k` of this world's year (year 0 keeps the streams it
    /// always had).
    fn stream(&self, k: u64) -> u64 {
        k + 100 * self.year
    }

    /// Draws the night: true parameters, wanters, stock, and the fluid truth.
    /// The true profile and signal shares are the world's (the same every
    /// year); the rest is the year's own.
    fn night(&self, normal_orders_per_s: f64) -> Night {
        let p = self.params;
        let mut rng = self.rng.clone().fork(4);
        let model = &p.model;
        let profile = model.profile.perturbed(&mut rng, model.profile_sigma);
        let signal_share = model
            .signal_share
            .scaled((model.share_sigma * rng.normal()).exp());
        let mut appeal: Vec<f64> = self.items.iter().map(|i| i.appeal).collect();
        if self.year > 0 {
            rng = self.rng.clone().fork(self.stream(4));
            for a in &mut appeal {
                *a = rng.lognormal((-APPEAL_SIGMA * APPEAL_SIGMA / 2.0).exp(), APPEAL_SIGMA);
            }
        }
        let multiple = p.peak_multiple * (p.peak_multiple_sigma * rng.normal()).exp();
        let grid = Grid::new(profile);
        let peak_share = (0..crate::model::HORIZON_S)
            .map(|k| grid.share(k))
            .fold(0.0, f64::max);
        let attempts_target = multiple * normal_orders_per_s.max(1e-9) / peak_share;
        let weight: Vec<f64> = self
            .items
            .iter()
            .zip(&appeal)
            .map(|(i, a)| i.popularity * a)
            .collect();
        let weight_sum: f64 = weight.iter().sum();
        let apw = model.attempts_per_wanter;
        let expected: Vec<f64> = weight
            .iter()
            .map(|w| attempts_target * w / weight_sum)
            .collect();
        let wanters: Vec<u64> = expected.iter().map(|e| rng.poisson(e / apw)).collect();

        // Headline items: the largest expected demand.
        let mut by_demand: Vec<usize> = (0..self.items.len()).collect();
        by_demand.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
        let headline = ((self.items.len() as f64 * p.headline_share).ceil() as usize).max(1);
        let mut stock = vec![0u32; self.items.len()];
        for (rank, &i) in by_demand.iter().enumerate() {
            let units = if rank < headline {
                expected[i] * rng.lognormal(HEADLINE_STOCK_MEDIAN, HEADLINE_STOCK_SIGMA)
            } else {
                expected[i] * rng.lognormal(2.5, 0.3) + 5.0
            };
            stock[i] = units.round().clamp(1.0, f64::from(mall_core::STOCK_MAX)) as u32;
        }

        let demands: Vec<ItemDemand> = wanters
            .iter()
            .zip(&stock)
            .map(|(&w, &s)| ItemDemand {
                demand: w as f64 * apw,
                stock: f64::from(s),
            })
            .collect();
        let sale = FluidSale::new(&grid, &demands);
        let (peak_at, peak_attempts) = peak(&sale.attempts);
        let (_, peak_accepted) = peak(&sale.accepted);
        // The night's paying share: the wanters' segment mix.
        let mix = wanter_mix();
        let pay_share: f64 = SEGMENTS
            .iter()
            .zip(&mix)
            .map(|(s, m)| m * (1.0 - s.cod_share) * s.pay_share)
            .sum();
        let mut delays: Vec<f64> = (0..20_000)
            .map(|_| pay_delay_ms(&mut rng) as f64 / 1_000.0)
            .collect();
        let kernel = kernel_from_delays(&mut delays);
        let paid = payments(&sale.accepted, pay_share, &kernel);
        let (pay_at, pay_peak) = peak(&paid);
        let items = self
            .items
            .iter()
            .zip(&demands)
            .zip(&sale.sellout_s)
            .map(|((item, d), t)| TruthItem {
                sku: item.sku,
                demand: d.demand,
                stock: d.stock as u32,
                sellout_s: *t,
            })
            .collect();
        let segments = SEGMENTS
            .iter()
            .zip(&self.members)
            .map(|(s, m)| TruthSegment {
                name: s.name.into(),
                users: m.clone(),
            })
            .collect();
        Night {
            truth: Truth {
                seed: p.seed,
                opens_at_ms: self.opens_at_ms,
                normal_orders_per_s,
                peak_multiple: peak_attempts / normal_orders_per_s.max(1e-9),
                peak_attempts_per_s: peak_attempts,
                peak_at_s: peak_at as u64,
                peak_accepted_per_s: peak_accepted,
                peak_payments_per_s: pay_peak,
                peak_payments_at_s: pay_at as u64,
                attempts_total: demands.iter().map(|d| d.demand).sum(),
                pay_share,
                profile,
                signal_share,
                items,
                segments,
            },
            wanters,
            attempts_per_s: sale.attempts.clone(),
        }
    }

    /// The wanters' favourites, carts and deposits in the intent window.
    fn intent(&self, night: &Night, days: &mut [Vec<Event>]) {
        let p = self.params;
        let mut rng = self.rng.clone().fork(self.stream(5));
        let mix = wanter_mix();
        let mix_cdf = cumulative(&mix);
        let shares = night.truth.signal_share;
        let nominal = [shares.favorite, shares.cart, shares.deposit];
        // Per segment and signal, so that the mix over wanters averages to
        // the true share.
        let probability: Vec<[f64; 3]> = SEGMENTS
            .iter()
            .map(|s| {
                std::array::from_fn(|k| {
                    let mean: f64 = SEGMENTS
                        .iter()
                        .zip(&mix)
                        .map(|(o, m)| m * o.intent[k])
                        .sum();
                    (nominal[k] * s.intent[k] / mean).min(0.98)
                })
            })
            .collect();
        let window = p.model.intent_window_days as usize;
        let day_cdf = cumulative(&(0..window).map(|j| 2f64.powi(j as i32)).collect::<Vec<_>>());
        let first_window_day = p.days as usize - window;
        let kinds = [Kind::Favorite, Kind::Cart, Kind::Deposit];
        for (item, &wanters) in self.items.iter().zip(&night.wanters) {
            for _ in 0..wanters {
                let mut s = rng.pick_weighted(&mix_cdf);
                if self.members[s].is_empty() {
                    s = self.segment_of[0] as usize;
                }
                let members = &self.members[s];
                let user = members[rng.below(members.len() as u64) as usize];
                let mut first: Option<i64> = None;
                for (k, kind) in kinds.into_iter().enumerate() {
                    if !rng.chance(probability[s][k]) {
                        continue;
                    }
                    let day = first_window_day + rng.pick_weighted(&day_cdf);
                    let start = self.first_day.plus_days(day as i64).china_midnight_ms();
                    let hour = rng.pick_weighted(&self.hour_cdfs[s]) as i64;
                    let t = start + hour * HOUR_MS + rng.below(HOUR_MS as u64) as i64;
                    let mut event = Event::new(t, kind, user, item.sku.0);
                    if kind == Kind::Deposit {
                        event.amount = Some(Fen((item.price_fen / 10).max(100)));
                        event.channel =
                            Some(CHANNELS[rng.pick_weighted(&self.channel_cdf)].0.into());
                    }
                    self.push(days, event);
                    first = Some(first.map_or(t, |f| f.min(t)));
                }
                if let Some(t) = first {
                    let view = Event::new(
                        t - 5_000 - rng.below(60_000) as i64,
                        Kind::View,
                        user,
                        item.sku.0,
                    );
                    self.push(days, view);
                }
            }
        }
    }

    fn catalog(&self, night: &Night) -> Catalog {
        Catalog {
            opens_at_ms: self.opens_at_ms,
            items: self
                .items
                .iter()
                .zip(&self.titles)
                .zip(&night.truth.items)
                .map(|((item, (title, category)), truth)| CatalogItem {
                    sku: item.sku,
                    title: title.clone(),
                    category: *category,
                    price_fen: Fen(item.price_fen),
                    stock: truth.stock,
                    opens_at_ms: self.opens_at_ms,
                })
                .collect(),
        }
    }
}

/// The segments' shares among an item's wanters.
fn wanter_mix() -> [f64; 4] {
    let total: f64 = SEGMENTS.iter().map(|s| s.share * s.sale_weight).sum();
    SEGMENTS.map(|s| s.share * s.sale_weight / total)
}

/// Order-to-payment delay, ms: log-normal, redrawn until inside the hold.
fn pay_delay_ms(rng: &mut Rng) -> i64 {
    loop {
        let s = rng.lognormal(PAY_DELAY_MEDIAN_S, PAY_DELAY_SIGMA);
        if s < HOLD_S {
            return (s * 1_000.0).round() as i64 + 1;
        }
    }
}
