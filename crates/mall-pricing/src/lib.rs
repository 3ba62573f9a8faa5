//! What a cart costs, to the fen, and who pays for each discount.
//!
//! One pure function, [`price`]: lines (with their list, sale and floor
//! prices), the offers that may apply (promotions and claimed coupons) and
//! the order's [`Policy`] in; the [`Priced`] breakdown out. No clock, no
//! store, no allocation beyond the answer: the server prices quotes with it
//! and a snap-up as a one-line cart (and, with checkout, every cart).
//!
//! # The rules, in the order they apply
//!
//! 1. **Item discounts.** A line whose sale price (the price of its sale
//!    window now) is below its list price is discounted by the difference,
//!    funded by the item's merchant.
//! 2. **Store promotions**: promotions funded by a merchant, on that
//!    merchant's lines, in ascending id.
//! 3. **Platform promotions, then coupons**, each in ascending id. A
//!    platform offer covers every line; a merchant's coupon covers only that
//!    merchant's lines and the merchant funds it.
//!
//! An offer that names SKUs covers only those of its lines. Each offer
//! applies to the net amounts that everything before it left:
//!
//! - [`Rule::PercentOff`]: `floor(eligible × basis_points / 10,000)`;
//! - [`Rule::AmountOff`]: `off_fen` once the eligible lines reach
//!   `min_spend_fen`;
//! - [`Rule::SpendSave`]: `save_fen` for every full `every_fen` of the
//!   eligible lines (once only, unless `repeat`).
//!
//! Then, in this order, the discount is cut to the offer's own
//! `max_off_fen`, to what is left of the order's cap
//! ([`Policy::order_cap_fen`], stages 2 and 3 together), and to what the
//! eligible lines can still give: **no line goes below its floor**
//! (quantity × floor unit price). An offer whose discount comes to zero does
//! not apply.
//!
//! **Exclusivity.** Of one funder's offers that share a `group`, only the
//! first that applies (in the order above) counts; the others are skipped.
//! Groups are the funder's own: a merchant's group 1 never excludes the
//! platform's group 1.
//!
//! **The one rounding rule.** A discount is split over its eligible lines in
//! proportion to what each line can still give (its net amount above its
//! floor), each share rounded down to the fen; the fen left over go one at a
//! time to the lines with the largest remainders, the earlier line first on
//! a tie (largest remainder, Hamilton's method). So every discount's shares
//! add up to the discount exactly, the lines' net amounts add up to the
//! total exactly, and no share takes a line below its floor.

pub mod bench;

use mall_core::{MerchantId, Sku};
use serde::{Deserialize, Serialize};

/// 100 % in basis points.
pub const BASIS_POINTS: u32 = 10_000;
/// Most lines one cart may hold.
pub const LINES_MAX: usize = 100;
/// Most offers one price may weigh.
pub const OFFERS_MAX: usize = 256;

/// One line of a cart: a SKU and how many, with the prices of one unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: Sku,
    pub merchant: MerchantId,
    pub quantity: u32,
    /// The list price of one unit.
    pub list_unit_fen: i64,
    /// The price of one unit now: its sale window's price, or the list
    /// price outside every window.
    pub sale_unit_fen: i64,
    /// No discount takes one unit below this.
    pub floor_unit_fen: i64,
}

/// Who pays for a discount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "funded_by", content = "merchant", rename_all = "snake_case")]
pub enum Funder {
    Merchant(MerchantId),
    Platform,
}

/// How an offer computes its discount from the eligible lines' net amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// `basis_points` / 10,000 off (1,500 = 15 % off), rounded down.
    PercentOff { basis_points: u32 },
    /// `off_fen` off once the eligible lines reach `min_spend_fen`.
    AmountOff { off_fen: i64, min_spend_fen: i64 },
    /// "Spend ¥300, save ¥40": `save_fen` for every full `every_fen`, or
    /// once only unless `repeat`.
    SpendSave {
        every_fen: i64,
        save_fen: i64,
        repeat: bool,
    },
}

impl Rule {
    /// The discount on eligible lines worth `base` fen, before any limit.
    pub fn discount(&self, base: i64) -> i64 {
        if base <= 0 {
            return 0;
        }
        match *self {
            Rule::PercentOff { basis_points } => {
                let bp = i128::from(basis_points.min(BASIS_POINTS));
                (i128::from(base) * bp / i128::from(BASIS_POINTS)) as i64
            }
            Rule::AmountOff {
                off_fen,
                min_spend_fen,
            } => {
                if base >= min_spend_fen {
                    off_fen.max(0)
                } else {
                    0
                }
            }
            Rule::SpendSave {
                every_fen,
                save_fen,
                repeat,
            } => {
                if every_fen <= 0 {
                    return 0;
                }
                let times = base / every_fen;
                let times = if repeat { times } else { times.min(1) };
                times.saturating_mul(save_fen.max(0))
            }
        }
    }

    /// Why this rule cannot be offered, if it cannot.
    pub fn check(&self) -> Result<(), PricingError> {
        let bad = |why: &'static str| Err(PricingError::Rule(why));
        match *self {
            Rule::PercentOff { basis_points } if !(1..BASIS_POINTS).contains(&basis_points) => {
                bad("basis_points must be 1 to 9,999")
            }
            Rule::AmountOff { off_fen, .. }
                if !(1..=mall_core::PRICE_MAX_FEN).contains(&off_fen) =>
            {
                bad("off_fen must be 1 to 100,000,000")
            }
            Rule::AmountOff { min_spend_fen, .. }
                if !(0..=mall_core::PRICE_MAX_FEN).contains(&min_spend_fen) =>
            {
                bad("min_spend_fen must be 0 to 100,000,000")
            }
            Rule::SpendSave {
                every_fen,
                save_fen,
                ..
            } if !(1..=mall_core::PRICE_MAX_FEN).contains(&every_fen)
                || !(1..every_fen).contains(&save_fen) =>
            {
                bad("every_fen must be 1 to 100,000,000 and save_fen 1 to below every_fen")
            }
            _ => Ok(()),
        }
    }
}

/// A promotion or a claimed coupon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferKind {
    Promotion,
    Coupon,
}

/// A discount that may apply to a cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub id: u64,
    pub kind: OfferKind,
    /// A merchant's offer covers only that merchant's lines, and the
    /// merchant pays for it; a platform's covers every line.
    pub funder: Funder,
    pub rule: Rule,
    /// Only these SKUs (empty: every line the funder covers).
    pub skus: Vec<Sku>,
    /// Most this offer takes off one order.
    pub max_off_fen: Option<i64>,
    /// Of this funder's offers that share a group, only the first that
    /// applies counts.
    pub group: Option<u32>,
}

impl Offer {
    /// Its place in the order of application: offers sorted by this apply
    /// in that order.
    pub fn rank(&self) -> (Stage, OfferKind, u64) {
        (self.stage(), self.kind, self.id)
    }

    /// The stage it applies in.
    pub fn stage(&self) -> Stage {
        match (self.kind, self.funder) {
            (OfferKind::Promotion, Funder::Merchant(_)) => Stage::Store,
            _ => Stage::Platform,
        }
    }

    /// Does it cover this line (its funder's, and among its SKUs)?
    pub fn covers(&self, line: &Line) -> bool {
        let in_scope = match self.funder {
            Funder::Merchant(m) => line.merchant == m,
            Funder::Platform => true,
        };
        in_scope && (self.skus.is_empty() || self.skus.contains(&line.sku))
    }
}

/// Limits of one order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Most that promotions and coupons together take off one order (item
    /// discounts are not counted).
    pub order_cap_fen: Option<i64>,
}

/// The three stages, in the order they apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Item,
    Store,
    Platform,
}

/// Where a discount comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "source", content = "id", rename_all = "snake_case")]
pub enum Source {
    /// The sale price of the line's item.
    SalePrice,
    Promotion(u64),
    Coupon(u64),
}

/// A line's part of a discount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Index into [`Priced::lines`].
    pub line: u32,
    pub fen: i64,
}

/// One discount applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    #[serde(flatten)]
    pub source: Source,
    #[serde(flatten)]
    pub funder: Funder,
    pub stage: Stage,
    pub fen: i64,
    /// Non-zero shares, by line; they add up to `fen`.
    pub shares: Vec<Share>,
}

/// A line as priced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: Sku,
    pub merchant: MerchantId,
    pub quantity: u32,
    /// List price × quantity.
    pub list_fen: i64,
    /// What the shopper pays for this line.
    pub net_fen: i64,
    /// Of `list_fen − net_fen`: what the merchant gives up.
    pub merchant_funded_fen: i64,
    /// Of `list_fen − net_fen`: what the platform pays the merchant at
    /// settlement.
    pub platform_funded_fen: i64,
}

/// The price of a cart: every line, every discount, the total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priced {
    pub lines: Vec<PricedLine>,
    /// In the order they applied.
    pub discounts: Vec<Discount>,
    pub list_fen: i64,
    /// What the shopper pays: the lines' net amounts added up.
    pub total_fen: i64,
}

impl Priced {
    /// The offers that applied (their discount was above zero): the
    /// coupons a checkout uses and the limited promotions it counts.
    pub fn offers_used(&self) -> impl Iterator<Item = Source> + '_ {
        self.discounts
            .iter()
            .map(|d| d.source)
            .filter(|s| *s != Source::SalePrice)
    }
}

/// Why a cart or an offer cannot be priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PricingError {
    /// The cart has no line, or more than [`LINES_MAX`].
    Lines(usize),
    /// More offers than [`OFFERS_MAX`].
    Offers(usize),
    /// A line's quantity or prices are out of range (its index, why).
    Line(usize, &'static str),
    /// An offer's rule is out of range.
    Rule(&'static str),
}

impl std::fmt::Display for PricingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PricingError::Lines(n) => write!(f, "a cart holds 1 to {LINES_MAX} lines, not {n}"),
            PricingError::Offers(n) => write!(f, "at most {OFFERS_MAX} offers, not {n}"),
            PricingError::Line(i, why) => write!(f, "line {i}: {why}"),
            PricingError::Rule(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for PricingError {}

/// Checks a cart and its offers, then prices it (see the module's rules).
pub fn price(lines: &[Line], offers: &[Offer], policy: &Policy) -> Result<Priced, PricingError> {
    if lines.is_empty() || lines.len() > LINES_MAX {
        return Err(PricingError::Lines(lines.len()));
    }
    if offers.len() > OFFERS_MAX {
        return Err(PricingError::Offers(offers.len()));
    }
    for (i, l) in lines.iter().enumerate() {
        let price = 1..=mall_core::PRICE_MAX_FEN;
        if !(1..=mall_core::QUANTITY_MAX).contains(&l.quantity) {
            return Err(PricingError::Line(i, "quantity must be 1 to 1,000"));
        }
        if !price.contains(&l.list_unit_fen)
            || !(1..=l.list_unit_fen).contains(&l.sale_unit_fen)
            || !(0..=l.list_unit_fen).contains(&l.floor_unit_fen)
        {
            return Err(PricingError::Line(
                i,
                "the list price must be 1 to 100,000,000 fen, the sale price 1 to the list price, the floor 0 to the list price",
            ));
        }
    }
    for o in offers {
        o.rule.check()?;
    }
    Ok(price_checked(lines, offers, policy))
}

/// [`price`] on a cart and offers already checked.
fn price_checked(lines: &[Line], offers: &[Offer], policy: &Policy) -> Priced {
    let mut priced: Vec<PricedLine> = lines
        .iter()
        .map(|l| {
            let list = l.list_unit_fen * i64::from(l.quantity);
            PricedLine {
                sku: l.sku,
                merchant: l.merchant,
                quantity: l.quantity,
                list_fen: list,
                net_fen: list,
                merchant_funded_fen: 0,
                platform_funded_fen: 0,
            }
        })
        .collect();
    let floors: Vec<i64> = lines
        .iter()
        .map(|l| l.floor_unit_fen * i64::from(l.quantity))
        .collect();
    let mut discounts = Vec::with_capacity(lines.len() + offers.len());

    // 1. Item discounts.
    for (i, l) in lines.iter().enumerate() {
        let unit_off = l.list_unit_fen - l.sale_unit_fen.max(l.floor_unit_fen);
        if unit_off > 0 {
            let fen = unit_off * i64::from(l.quantity);
            let funder = Funder::Merchant(l.merchant);
            take(&mut priced[i], funder, fen);
            discounts.push(Discount {
                source: Source::SalePrice,
                funder,
                stage: Stage::Item,
                fen,
                shares: vec![Share {
                    line: i as u32,
                    fen,
                }],
            });
        }
    }

    // 2 and 3. Offers in their order.
    let mut order: Vec<&Offer> = offers.iter().collect();
    order.sort_by_key(|o| o.rank());
    let mut cap_left = policy.order_cap_fen.unwrap_or(i64::MAX).max(0);
    let mut groups_used: Vec<(Funder, u32)> = Vec::new();
    let mut eligible: Vec<usize> = Vec::with_capacity(lines.len());
    let mut rooms: Vec<i64> = Vec::with_capacity(lines.len());
    let mut shares: Vec<i64> = Vec::with_capacity(lines.len());
    for offer in order {
        if offer
            .group
            .is_some_and(|g| groups_used.contains(&(offer.funder, g)))
        {
            continue;
        }
        eligible.clear();
        eligible.extend((0..lines.len()).filter(|&i| offer.covers(&lines[i])));
        let base: i64 = eligible.iter().map(|&i| priced[i].net_fen).sum();
        rooms.clear();
        rooms.extend(eligible.iter().map(|&i| priced[i].net_fen - floors[i]));
        let room: i64 = rooms.iter().sum();
        let fen = offer
            .rule
            .discount(base)
            .min(offer.max_off_fen.unwrap_or(i64::MAX))
            .min(cap_left)
            .min(room);
        if fen <= 0 {
            continue;
        }
        apportion(fen, &rooms, &mut shares);
        let mut kept = Vec::with_capacity(eligible.len());
        for (&i, &share) in eligible.iter().zip(&shares) {
            if share > 0 {
                take(&mut priced[i], offer.funder, share);
                kept.push(Share {
                    line: i as u32,
                    fen: share,
                });
            }
        }
        cap_left -= fen;
        if let Some(g) = offer.group {
            groups_used.push((offer.funder, g));
        }
        discounts.push(Discount {
            source: match offer.kind {
                OfferKind::Promotion => Source::Promotion(offer.id),
                OfferKind::Coupon => Source::Coupon(offer.id),
            },
            funder: offer.funder,
            stage: offer.stage(),
            fen,
            shares: kept,
        });
    }

    Priced {
        list_fen: priced.iter().map(|l| l.list_fen).sum(),
        total_fen: priced.iter().map(|l| l.net_fen).sum(),
        lines: priced,
        discounts,
    }
}

fn take(line: &mut PricedLine, funder: Funder, fen: i64) {
    line.net_fen -= fen;
    match funder {
        Funder::Merchant(_) => line.merchant_funded_fen += fen,
        Funder::Platform => line.platform_funded_fen += fen,
    }
}

/// Splits `fen` (at most the rooms' sum) in proportion to `rooms` by
/// largest remainder, earlier first on a tie; the shares go to `out`.
pub fn apportion(fen: i64, rooms: &[i64], out: &mut Vec<i64>) {
    out.clear();
    let total: i64 = rooms.iter().sum();
    if total <= 0 || fen <= 0 {
        out.resize(rooms.len(), 0);
        return;
    }
    let fen = fen.min(total);
    let (fen_w, total_w) = (i128::from(fen), i128::from(total));
    let mut given = 0;
    // Remainders as (remainder, index): largest first, then earliest.
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(rooms.len());
    for (i, &room) in rooms.iter().enumerate() {
        let exact = fen_w * i128::from(room.max(0));
        let share = (exact / total_w) as i64;
        given += share;
        out.push(share);
        remainders.push((exact % total_w, i));
    }
    let left = (fen - given) as usize;
    if left > 0 {
        remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in &remainders[..left] {
            out[i] += 1;
        }
    }
}
