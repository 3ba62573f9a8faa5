//! Forecasting Singles' Day from the days before it.
//!
//! The night's load is decided weeks earlier by how many shoppers want
//! which items. This crate reads a shop's event history, forecasts the
//! night's peak of order attempts, when it comes, which items sell out and
//! when, and the payments peak, each with a p10/p50/p90 band; turns the
//! forecast into a capacity plan; and checks a forecast against the event
//! log of a real (or rehearsed) rush. It also generates synthetic histories
//! whose true night is known, so the forecast's accuracy can be measured.
//!
//! Four entry points, one per command of the `mall` binary:
//!
//! - [`history::generate`] (`mall history generate --out DIR`): normal days,
//!   pre-sale intent, and the hidden truth of the night;
//! - [`forecast::forecast`] (`mall forecast --history DIR`), with
//!   [`forecast::print`], [`forecast::save`] and [`forecast::load`];
//! - [`plan::plan`], [`plan::to_toml`], [`plan::from_toml`] (`--out plan.toml`);
//! - [`backtest::backtest`] and [`backtest::print`] (`mall forecast backtest`).
//!
//! Everything here is deterministic: the same history, parameters and seed
//! give the same bytes. No clock is read; randomness is a seeded
//! SplitMix64 ([`rng::Rng`]). Only functions that take a path touch files;
//! the models ([`model`]) are pure arithmetic.
//!
//! # The model, and what it assumes
//!
//! - **Normal days** give the yardstick: the average order rate `R` (orders
//!   over the history's seconds), reported with its daily profile, weekend
//!   factor and growth.
//! - **Intent → wanters.** The shoppers who will try to buy an item at
//!   midnight ("wanters") leave signals in the last `intent_window_days`
//!   (3): a favourite, a cart, a deposit, each with an assumed share
//!   ([`model::SignalShares`]: 55 %, 45 %, 25 %). An item's favourites and
//!   carts in the window, minus its normal background (its own count before
//!   the window carried over by a seasonal fit), over the share, estimate
//!   its wanters; deposits have no background. The three are combined by
//!   inverse variance.
//! - **Wanters → the night** ([`model`]): each wanter makes one attempt
//!   (`attempts_per_wanter`) at a time drawn from one arrival profile for
//!   all items: a 3 s opening ramp, then 30 % of the night's attempts in a
//!   rush decaying over 30 min and the rest over 8 h. Attempts are a fluid:
//!   an item sells out when `stock / demand` of its attempts have arrived.
//!   Accepted orders are paid at the history's paying share after the
//!   history's order-to-payment delays.
//! - **Without a past sale in a history** the signal shares and the
//!   profile are *stated assumptions*, not fits; with last year's night in
//!   it (`past/`, [`past`]) they are fitted from that night. Their uncertainty is
//!   stated too (log-sd 5 % on the shares, common to all items; 5 % on
//!   each profile parameter) and propagated with the estimates' own
//!   sampling error by Monte Carlo ([`forecast`]). On a real shop they would
//!   be calibrated on last year's sale with [`backtest`].
//! - The synthetic world ([`history`]) draws its true parameters from those
//!   same distributions, so on generated histories the accuracy measured is
//!   that of the estimation and of the stated uncertainty, not of the model's
//!   form. It does add what the forecast does not model: segments whose
//!   signals, weekends and payments differ.
//!
//! # Formats
//!
//! - Events: JSON lines in `*.jsonl` files of one directory, shared with
//!   the server's event log; see [`event`]. Unknown kinds and fields are
//!   skipped, malformed lines counted and skipped, order not assumed.
//! - `catalog.json` ([`catalog::Catalog`]): items, stock, the opening.
//! - `truth.json` ([`history::Truth`]): the generated night; never read by
//!   the forecast.
//! - A forecast as JSON ([`forecast::save`]); a plan as TOML ([`plan`]).

pub mod backtest;
pub mod calendar;
pub mod catalog;
pub mod event;
pub mod forecast;
pub mod history;
pub mod model;
pub mod night;
pub mod past;
pub mod plan;
pub mod rng;

use std::path::PathBuf;

/// Operating errors: I/O, unreadable files, bad parameters or plans.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: no *.jsonl event files", dir.display())]
    NoEventFiles { dir: PathBuf },
    #[error("{}: {found} event files, more than the {max} read", dir.display())]
    TooManyFiles {
        dir: PathBuf,
        found: usize,
        max: usize,
    },
    #[error("{}: {reason}", path.display())]
    InvalidCatalog { path: PathBuf, reason: String },
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("history too short: {reason}")]
    HistoryTooShort { reason: String },
    #[error("plan: {0}")]
    PlanParse(String),
    #[error("plan: {field}: {reason}")]
    PlanInvalid { field: String, reason: String },
}

/// Reads a JSON file into `T`, naming the file in any error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
