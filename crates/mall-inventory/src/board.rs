//! The board: a read-mostly view of every item and its live counters,
//! shared by all shards (writers) and the HTTP layer (readers). The shards
//! stay the authority; the board is what browsing reads without queueing.

use mall_core::{Category, Item, Sku};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

/// Counters of one SKU as last published by its shard (may include effects
/// not yet committed: fine for display, never used for decisions).
#[derive(Debug, Default)]
pub struct Live {
    available: AtomicU32,
    held: AtomicU32,
    sold: AtomicU32,
}

impl Live {
    pub fn store(&self, available: u32, held: u32, sold: u32) {
        self.available.store(available, Ordering::Relaxed);
        self.held.store(held, Ordering::Relaxed);
        self.sold.store(sold, Ordering::Relaxed);
    }

    /// `(available, held, sold)`.
    pub fn load(&self) -> (u32, u32, u32) {
        (
            self.available.load(Ordering::Relaxed),
            self.held.load(Ordering::Relaxed),
            self.sold.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
pub struct BoardEntry {
    pub shard: usize,
    pub item: Item,
    pub live: Arc<Live>,
}

#[derive(Debug, Default)]
pub struct Board {
    /// Every item by SKU; replaced whole on change (items change rarely).
    entries: RwLock<BTreeMap<Sku, Arc<BoardEntry>>>,
}

impl Board {
    pub fn put(&self, shard: usize, item: Item, live: Arc<Live>) {
        let entry = Arc::new(BoardEntry { shard, item, live });
        self.write().insert(entry.item.sku, entry);
    }

    /// Forgets a shard's items before it is rebuilt from its store.
    pub fn remove_shard(&self, shard: usize) {
        self.write().retain(|_, e| e.shard != shard);
    }

    pub fn get(&self, sku: Sku) -> Option<Arc<BoardEntry>> {
        self.read().get(&sku).cloned()
    }

    /// Items with SKU greater than `after`, optionally of one category, in
    /// SKU order, at most `limit`.
    pub fn list(
        &self,
        after: Option<Sku>,
        category: Option<Category>,
        limit: usize,
    ) -> Vec<Arc<BoardEntry>> {
        let entries = self.read();
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        entries
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| category.is_none_or(|c| e.item.category == c))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn max_sku(&self) -> Option<Sku> {
        self.read().keys().next_back().copied()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Sku, Arc<BoardEntry>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Sku, Arc<BoardEntry>>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}
