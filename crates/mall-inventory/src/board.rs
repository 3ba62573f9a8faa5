//! The board: a read-mostly view of every item and its live counters,
//! shared by all shards (writers) and the HTTP layer (readers). The shards
//! stay the authority; the board is what browsing reads without queueing.

use mall_core::{Category, CouponId, Item, Sku};
use std::collections::BTreeMap;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Counters of one SKU as last published by its shard (may include effects
/// not yet committed: fine for display, never used for decisions).
///
/// A sequence lock: the shard (the only writer) makes `seq` odd while it
/// writes; a reader retries until it sees the same even `seq` before and
/// after, so it never sees a torn triple (`available + held + sold` always
/// equals the stock at some moment).
#[derive(Debug, Default)]
pub struct Live {
    seq: AtomicU64,
    available: AtomicU32,
    held: AtomicU32,
    sold: AtomicU32,
    /// Every shopper who made an order of this SKU since the shard was
    /// loaded, in order (appended before the counters that order changed
    /// are published). A cluster's other nodes refuse a sold-out SKU
    /// themselves only to shoppers not on it: a retry of an order that
    /// succeeded always reaches the shard and gets its order back.
    buyers: std::sync::Mutex<Buyers>,
}

/// The buyers in order (for publication) and as a set (for lookups).
#[derive(Debug, Default)]
struct Buyers {
    order: Vec<u64>,
    set: std::collections::HashSet<u64>,
}

impl Live {
    /// Notes a shopper who made an order (by the owning shard).
    pub fn add_buyer(&self, user: u64) {
        let mut buyers = self.buyers.lock().unwrap_or_else(|p| p.into_inner());
        if buyers.set.insert(user) {
            buyers.order.push(user);
        }
    }

    /// Has this shopper made an order of the SKU?
    pub fn is_buyer(&self, user: u64) -> bool {
        self.buyers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .contains(&user)
    }

    /// The buyers from position `from` on, and the position after them.
    pub fn buyers_since(&self, from: usize) -> (Vec<u64>, usize) {
        let buyers = self.buyers.lock().unwrap_or_else(|p| p.into_inner());
        let from = from.min(buyers.order.len());
        (buyers.order[from..].to_vec(), buyers.order.len())
    }

    /// Publishes new counters. One writer at a time (the owning shard).
    pub fn store(&self, available: u32, held: u32, sold: u32) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.available.store(available, Ordering::Relaxed);
        self.held.store(held, Ordering::Relaxed);
        self.sold.store(sold, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// `(available, held, sold)`, all from one publication.
    pub fn load(&self) -> (u32, u32, u32) {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let triple = (
                self.available.load(Ordering::Relaxed),
                self.held.load(Ordering::Relaxed),
                self.sold.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return triple;
            }
        }
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
    /// The highest coupon id a shard here has seen (0: none), so new ids
    /// start above it. Coupons themselves are read from their shards.
    max_coupon: AtomicU64,
}

impl Board {
    pub fn put(&self, shard: usize, item: Item, live: Arc<Live>) {
        let entry = Arc::new(BoardEntry { shard, item, live });
        self.write().insert(entry.item.sku, entry);
    }

    /// Replaces all of a shard's items at once (a shard rebuilt from its store).
    pub fn replace_shard(&self, shard: usize, entries: Vec<(Item, Arc<Live>)>) {
        let mut board = self.write();
        board.retain(|_, e| e.shard != shard);
        for (item, live) in entries {
            board.insert(item.sku, Arc::new(BoardEntry { shard, item, live }));
        }
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

    /// A shard here holds coupon `id`.
    pub(crate) fn note_coupon(&self, id: CouponId) {
        self.max_coupon.fetch_max(id.0, Ordering::Relaxed);
    }

    /// The highest coupon id known here.
    pub fn max_coupon(&self) -> Option<CouponId> {
        match self.max_coupon.load(Ordering::Relaxed) {
            0 => None,
            id => Some(CouponId(id)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn readers_never_see_a_torn_triple() {
        let live = Arc::new(Live::default());
        live.store(100, 0, 0);
        let writer = {
            let live = live.clone();
            std::thread::spawn(move || {
                for i in 0..200_000u32 {
                    let held = i % 100;
                    live.store(100 - held, held, 0);
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads < 1_000 {
            let (a, h, s) = live.load();
            assert_eq!(a + h + s, 100, "torn read");
            reads += 1;
        }
        writer.join().unwrap();
    }
}
