//! Ids the HTTP layer hands out (SKUs, coupon ids). A node of a cluster
//! takes them from blocks of 1,000 reserved in the store, so two nodes
//! never hand out the same one; a single node counts up from the highest
//! it knows.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Ids reserved in a block at a time on a cluster.
const BLOCK: u64 = 1_000;

pub struct IdSource {
    /// The store's counter (`mall_meta`) for cluster blocks.
    key: &'static str,
    /// The next id to hand out on a single node.
    next: AtomicU64,
    /// On a cluster: the ids reserved for this node, `[next, end)`.
    block: Mutex<(u64, u64)>,
}

impl IdSource {
    pub fn new(key: &'static str, next: u64) -> IdSource {
        IdSource {
            key,
            next: AtomicU64::new(next),
            block: Mutex::new((0, 0)),
        }
    }

    /// A new id, above `above` (one past the highest known here).
    pub async fn next(&self, state: &AppState, above: u64) -> ApiResult<u64> {
        if state.cluster.get().is_none() {
            self.next.fetch_max(above, Ordering::Relaxed);
            return Ok(self.next.fetch_add(1, Ordering::Relaxed));
        }
        {
            let mut block = self.block.lock().unwrap_or_else(|p| p.into_inner());
            if block.0 < block.1 {
                block.0 += 1;
                return Ok(block.0 - 1);
            }
        }
        let (accounts, key) = (state.accounts.clone(), self.key);
        let start = super::blocking(state, move || accounts.reserve_ids(key, BLOCK, above))
            .await
            .map_err(|e| ApiError::store("reserving ids", e))?;
        let mut block = self.block.lock().unwrap_or_else(|p| p.into_inner());
        *block = (start + 1, start + BLOCK);
        Ok(start)
    }
}
