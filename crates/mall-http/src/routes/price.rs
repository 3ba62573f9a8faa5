//! The price breakdown as the API shows it: lines, the discounts applied
//! with their source and who funds each, the list amount and the total.
//! Computed by `mall_pricing` (the one pricing function) for a snap-up as
//! for a cart.

use mall_core::{MerchantId, Order, Sku};
use mall_pricing::{Funder, Line, Policy, Priced, Source, Stage};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct PriceBreakdown {
    /// List prices × quantities.
    pub list_fen: i64,
    /// What the shopper pays: the lines' net amounts added up.
    pub total_fen: i64,
    pub lines: Vec<PriceLine>,
    /// In the order they applied: item discounts, store promotions,
    /// platform promotions and coupons.
    pub discounts: Vec<DiscountView>,
}

#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct PriceLine {
    pub sku: u64,
    pub merchant_id: u64,
    pub quantity: u32,
    pub list_fen: i64,
    pub net_fen: i64,
    /// Of the line's discounts, what its merchant gives up.
    pub merchant_funded_fen: i64,
    /// Of the line's discounts, what the platform pays the merchant.
    pub platform_funded_fen: i64,
}

#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct DiscountView {
    /// `sale_price`, `promotion`, `coupon`, or `checkout` (an order that is a
    /// checkout's line: its share of the checkout's discounts).
    pub source: &'static str,
    /// The promotion's, coupon's or checkout's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// `merchant` or `platform` (`see_checkout` for a checkout's share).
    pub funded_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<u64>,
    /// `item`, `store`, `platform` (or `checkout`).
    pub stage: &'static str,
    pub fen: i64,
    /// By line (index into `lines`), non-zero only; they add up to `fen`.
    pub shares: Vec<ShareView>,
}

#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct ShareView {
    pub line: u32,
    pub fen: i64,
}

impl From<&Priced> for PriceBreakdown {
    fn from(p: &Priced) -> PriceBreakdown {
        PriceBreakdown {
            list_fen: p.list_fen,
            total_fen: p.total_fen,
            lines: p
                .lines
                .iter()
                .map(|l| PriceLine {
                    sku: l.sku.0,
                    merchant_id: l.merchant.0,
                    quantity: l.quantity,
                    list_fen: l.list_fen,
                    net_fen: l.net_fen,
                    merchant_funded_fen: l.merchant_funded_fen,
                    platform_funded_fen: l.platform_funded_fen,
                })
                .collect(),
            discounts: p
                .discounts
                .iter()
                .map(|d| {
                    let (source, id) = match d.source {
                        Source::SalePrice => ("sale_price", None),
                        Source::Promotion(id) => ("promotion", Some(id)),
                        Source::Coupon(id) => ("coupon", Some(id)),
                    };
                    let (funded_by, merchant_id) = match d.funder {
                        Funder::Merchant(m) => ("merchant", Some(m.0)),
                        Funder::Platform => ("platform", None),
                    };
                    DiscountView {
                        source,
                        id,
                        funded_by,
                        merchant_id,
                        stage: match d.stage {
                            Stage::Item => "item",
                            Stage::Store => "store",
                            Stage::Platform => "platform",
                        },
                        fen: d.fen,
                        shares: d
                            .shares
                            .iter()
                            .map(|s| ShareView {
                                line: s.line,
                                fen: s.fen,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// The breakdown of one SKU bought at `unit_fen` a unit against a list
/// price of `list_fen` (the item's merchant funds the difference).
pub fn single(
    sku: Sku,
    merchant: MerchantId,
    quantity: u32,
    list_fen: i64,
    unit_fen: i64,
) -> PriceBreakdown {
    let line = Line {
        sku,
        merchant,
        quantity,
        list_unit_fen: list_fen,
        sale_unit_fen: unit_fen,
        floor_unit_fen: 0,
    };
    match mall_pricing::price(&[line], &[], &Policy::default()) {
        Ok(priced) => PriceBreakdown::from(&priced),
        // Prices out of range (none are stored so): the amount as it is.
        Err(_) => {
            let amount = unit_fen.saturating_mul(i64::from(quantity));
            PriceBreakdown {
                list_fen: amount,
                total_fen: amount,
                lines: vec![PriceLine {
                    sku: sku.0,
                    merchant_id: merchant.0,
                    quantity,
                    list_fen: amount,
                    net_fen: amount,
                    merchant_funded_fen: 0,
                    platform_funded_fen: 0,
                }],
                discounts: vec![],
            }
        }
    }
}

/// An order's breakdown (`merchant`: its item's merchant). A checkout's
/// line also shows its share of the checkout's promotions and coupons as
/// one `checkout` discount (the checkout's own breakdown names each).
pub fn of_order(order: &Order, merchant: MerchantId) -> PriceBreakdown {
    let mut breakdown = single(
        order.sku,
        merchant,
        order.quantity.get(),
        order.list_price_fen.0,
        order.unit_price_fen.0,
    );
    let share = breakdown.total_fen - order.amount_fen.0;
    if share > 0 {
        breakdown.total_fen = order.amount_fen.0;
        if let Some(line) = breakdown.lines.first_mut() {
            line.net_fen = order.amount_fen.0;
        }
        breakdown.discounts.push(DiscountView {
            source: "checkout",
            id: super::checkouts::checkout_of(order),
            funded_by: "see_checkout",
            merchant_id: None,
            stage: "checkout",
            fen: share,
            shares: vec![ShareView {
                line: 0,
                fen: share,
            }],
        });
    }
    breakdown
}
