//! `catalog.json`: the items of the sale, their stock and the opening.
//!
//! ```json
//! {"opens_at_ms": 1762790400000,
//!  "items": [{"sku": 1, "title": "Classic air fryer", "category": "appliances",
//!             "price_fen": 39900, "stock": 120, "opens_at_ms": 1762790400000}]}
//! ```

use crate::Error;
use mall_core::{Category, Fen, Sku, STOCK_MAX};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// The file's name inside a history directory.
pub const CATALOG_FILE: &str = "catalog.json";
/// Most items a catalog may hold.
pub const ITEMS_MAX: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// When the sale opens (ms since epoch): midnight China time.
    pub opens_at_ms: i64,
    pub items: Vec<CatalogItem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogItem {
    pub sku: Sku,
    pub title: String,
    pub category: Category,
    pub price_fen: Fen,
    /// Units for the sale.
    pub stock: u32,
    pub opens_at_ms: i64,
}

impl Catalog {
    /// Reads and checks `dir/catalog.json`.
    pub fn load(dir: &Path) -> Result<Catalog, Error> {
        let path = dir.join(CATALOG_FILE);
        let catalog: Catalog = crate::read_json(&path)?;
        catalog
            .check()
            .map_err(|reason| Error::InvalidCatalog { path, reason })?;
        Ok(catalog)
    }

    /// Checks the values serde cannot (ranges, consistency).
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.check().map_err(crate::Error::InvalidParams)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.items.is_empty() || self.items.len() > ITEMS_MAX {
            return Err(format!(
                "must hold 1 to {ITEMS_MAX} items, holds {}",
                self.items.len()
            ));
        }
        let mut seen = HashSet::new();
        for item in &self.items {
            if !seen.insert(item.sku) {
                return Err(format!("sku {} appears twice", item.sku));
            }
            if item.stock == 0 || item.stock > STOCK_MAX {
                return Err(format!(
                    "sku {}: stock must be in 1..={STOCK_MAX}",
                    item.sku
                ));
            }
            if item.price_fen.0 <= 0 {
                return Err(format!("sku {}: price must be positive", item.sku));
            }
        }
        Ok(())
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(CATALOG_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|source| Error::Io { path, source })
    }
}
