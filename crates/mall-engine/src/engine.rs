//! The engine as a whole: the inventory shards of the store that run here,
//! the board they publish to, read access to every shard's orders, and the
//! ledger, run by the same group-commit runtime.
//!
//! A single node runs every shard and the ledger ([`Engine::start`]). A node
//! of a cluster starts with none ([`Engine::start_empty`]) and opens and
//! closes shards as their leases come and go; a command for a shard that
//! runs elsewhere goes to [`Elsewhere`], which forwards it to its owner.

use crate::{LedgerRead, OrderReader, Store, StoreError};
use mall_core::{Claim, ClaimId, Coupon, CouponId, Item, OrderId, Sku, UserId};
use mall_inventory::{Board, BoardEntry, Command, Inventory, InventoryConfig, Reply};
use mall_ledger::{Ledger, LedgerConfig};
use mall_shard::{Busy, Clock, RuntimeConfig, Shard, ShardHandle};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub inventory: InventoryConfig,
    pub runtime: RuntimeConfig,
    pub ledger: LedgerConfig,
}

/// Where commands for shards that do not run here go (a cluster's
/// forwarding). The answer comes back on the receiver; a shard nobody
/// serves yet answers [`Reply::Unavailable`] after a short wait.
pub trait Elsewhere: Send + Sync {
    fn submit(&self, shard: usize, command: Command) -> oneshot::Receiver<Reply>;
}

pub struct Engine {
    store: Arc<dyn Store>,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    board: Arc<Board>,
    /// The shards running here, by index; `None`: it runs elsewhere.
    shards: Vec<RwLock<Option<Shard<Inventory>>>>,
    readers: Vec<Arc<dyn OrderReader>>,
    ledger: RwLock<Option<Shard<Ledger>>>,
    ledger_reader: Arc<dyn LedgerRead>,
    elsewhere: Option<Arc<dyn Elsewhere>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// A receiver already holding `reply`.
fn answered(reply: Reply) -> oneshot::Receiver<Reply> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(reply);
    rx
}

impl Engine {
    /// Rebuilds every shard and the ledger from the store and starts them.
    pub fn start(
        store: Arc<dyn Store>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, StoreError> {
        let engine = Engine::start_empty(store, config, clock, None)?;
        for shard in 0..engine.shard_count() {
            engine.open_shard(shard)?;
        }
        engine.open_ledger()?;
        Ok(engine)
    }

    /// An engine running no shard yet (a node of a cluster): commands for
    /// shards not opened here go to `elsewhere` (or are answered
    /// unavailable without it).
    pub fn start_empty(
        store: Arc<dyn Store>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        elsewhere: Option<Arc<dyn Elsewhere>>,
    ) -> Result<Engine, StoreError> {
        let count = store.shard_count();
        let readers = (0..count)
            .map(|shard| store.order_reader(shard))
            .collect::<Result<Vec<_>, _>>()?;
        let ledger_reader = store.ledger_reader()?;
        Ok(Engine {
            store,
            config,
            clock,
            board: Arc::new(Board::default()),
            shards: (0..count).map(|_| RwLock::new(None)).collect(),
            readers,
            ledger: RwLock::new(None),
            ledger_reader,
            elsewhere,
        })
    }

    /// Takes the shard over (its journal's epoch is bumped: whoever ran it
    /// before can no longer commit), rebuilds it from the store and starts
    /// it here. Opening a shard already running here does nothing.
    pub fn open_shard(&self, shard: usize) -> Result<(), StoreError> {
        let slot = self.shards.get(shard).ok_or_else(|| {
            StoreError::Rejected(format!("shard {shard} is not a shard of this store"))
        })?;
        let mut slot = write(slot);
        if slot.is_some() {
            return Ok(());
        }
        let journal =
            self.store
                .shard_journal(shard, self.config.inventory.clone(), self.board.clone())?;
        let running = Shard::start(
            format!("shard-{shard}"),
            journal,
            self.clock.clone(),
            self.config.runtime.clone(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        *slot = Some(running);
        Ok(())
    }

    /// Stops the shard here: new commands go elsewhere at once, commands
    /// already queued are applied, everything staged is committed, and then
    /// its threads end. Returns whether it was running here.
    pub fn close_shard(&self, shard: usize) -> bool {
        let taken = self.shards.get(shard).and_then(|slot| write(slot).take());
        match taken {
            Some(running) => {
                running.join();
                true
            }
            None => false,
        }
    }

    /// Takes the ledger over and starts it here.
    pub fn open_ledger(&self) -> Result<(), StoreError> {
        let mut slot = write(&self.ledger);
        if slot.is_some() {
            return Ok(());
        }
        let running = Shard::start(
            "ledger".to_string(),
            self.store.ledger_journal(self.config.ledger.clone())?,
            self.clock.clone(),
            self.config.runtime.clone(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        *slot = Some(running);
        Ok(())
    }

    /// Stops the ledger here after committing what is staged (every
    /// handle of it must be dropped for its threads to end).
    pub fn close_ledger(&self) -> bool {
        let taken = write(&self.ledger).take();
        match taken {
            Some(running) => {
                running.join();
                true
            }
            None => false,
        }
    }

    /// Does `shard` run here?
    pub fn runs_here(&self, shard: usize) -> bool {
        self.shards.get(shard).is_some_and(|s| read(s).is_some())
    }

    /// The shards running here.
    pub fn shards_here(&self) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|&s| self.runs_here(s))
            .collect()
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn shard_of_sku(&self, sku: Sku) -> usize {
        self.store.shard_of(sku)
    }

    /// The handle of a shard running here (queue depth, statistics,
    /// in-process clients).
    pub fn local(&self, shard: usize) -> Option<ShardHandle<Inventory>> {
        self.shards
            .get(shard)
            .and_then(|s| read(s).as_ref().map(Shard::handle))
    }

    /// Queues a command on `shard`: here (refused at once when its queue is
    /// full) or on the node that runs it.
    pub fn try_submit(
        &self,
        shard: usize,
        command: Command,
    ) -> Result<oneshot::Receiver<Reply>, Busy> {
        if let Some(running) = read(&self.shards[shard]).as_ref() {
            if self.sold_out_to(&command, |entry, user| Some(entry.live.is_buyer(user))) {
                return Ok(answered(Reply::Refused(mall_core::Refusal::SoldOut)));
            }
            return running.try_submit(command);
        }
        Ok(match &self.elsewhere {
            Some(elsewhere) => elsewhere.submit(shard, command),
            None => answered(Reply::Unavailable),
        })
    }

    /// Would the shard answer `sold_out` to this snap-up? Yes when the item
    /// has nothing available (as published on the board), its sale window is
    /// open, and the shopper is known not to be a buyer of it: `is_buyer`
    /// says whether they are, or `None` when that is not known (then no).
    /// A buyer (a retry of a success) always goes to the shard and gets its
    /// order back: the shard notes a buyer before it publishes the counters
    /// that order changed. Used before a shard's queue here (no thread
    /// hand-off) and, on a cluster, at the edge (no hop).
    pub fn sold_out_to(
        &self,
        command: &Command,
        is_buyer: impl FnOnce(&BoardEntry, u64) -> Option<bool>,
    ) -> bool {
        let Command::Reserve(r) = command else {
            return false;
        };
        if r.early_access {
            return false;
        }
        let Some(entry) = self.board.get(r.sku) else {
            return false;
        };
        if entry.live.load().0 != 0 {
            return false;
        }
        let now = self.clock.now();
        now >= entry.item.opens_at
            && now < entry.item.closes_at
            && is_buyer(&entry, r.user.0) == Some(false)
    }

    /// Queues a command on the shard that owns `sku`; refuses at once when full.
    pub fn try_submit_for_sku(
        &self,
        sku: Sku,
        command: Command,
    ) -> Result<oneshot::Receiver<Reply>, Busy> {
        self.try_submit(self.shard_of_sku(sku), command)
    }

    /// Queues a command on the shard that owns `order`; refuses at once when full.
    /// `None` if the id names no shard of this store.
    pub fn try_submit_for_order(
        &self,
        order: OrderId,
        command: Command,
    ) -> Option<Result<oneshot::Receiver<Reply>, Busy>> {
        (order.shard() < self.shards.len()).then(|| self.try_submit(order.shard(), command))
    }

    /// The shard that owns a coupon: the one its id names as a SKU would.
    pub fn shard_of_coupon(&self, coupon: CouponId) -> usize {
        self.store.shard_of(Sku(coupon.0))
    }

    /// Queues a command on the shard that owns `coupon`; refuses at once when full.
    pub fn try_submit_for_coupon(
        &self,
        coupon: CouponId,
        command: Command,
    ) -> Result<oneshot::Receiver<Reply>, Busy> {
        self.try_submit(self.shard_of_coupon(coupon), command)
    }

    /// A coupon and its counters, read on its shard (here or on its node):
    /// `Ok(None)` if there is no such coupon; `Err(reply)` with the reply
    /// when the shard could not answer (`Unavailable`, or busy as `None`).
    pub async fn coupon(
        &self,
        id: CouponId,
    ) -> Result<Option<mall_inventory::CouponCounts>, Option<Reply>> {
        let rx = self
            .try_submit_for_coupon(id, Command::Coupons)
            .map_err(|_| None)?;
        match rx.await.unwrap_or(Reply::Unavailable) {
            Reply::Coupons(all) => Ok(all.into_iter().find(|c| c.coupon.id == id)),
            other => Err(Some(other)),
        }
    }

    /// Asks every shard (here or on its node) the same read and gathers
    /// the replies; each answers once what it applied before is committed.
    /// `Err(None)`: a queue was full; `Err(Some(reply))`: a shard could not
    /// answer.
    async fn ask_every_shard(&self, command: Command) -> Result<Vec<Reply>, Option<Reply>> {
        let mut waiting = Vec::with_capacity(self.shard_count());
        for shard in 0..self.shard_count() {
            waiting.push(self.try_submit(shard, command.clone()).map_err(|_| None)?);
        }
        let mut replies = Vec::with_capacity(waiting.len());
        for rx in waiting {
            replies.push(rx.await.unwrap_or(Reply::Unavailable));
        }
        Ok(replies)
    }

    /// A shopper's claims, by id, and the coupons they are of, from every
    /// shard (errors as [`Engine::coupon`]).
    pub async fn claims_of(
        &self,
        user: UserId,
    ) -> Result<(Vec<Claim>, Vec<Coupon>), Option<Reply>> {
        let (mut claims, mut coupons) = (Vec::new(), Vec::new());
        for reply in self.ask_every_shard(Command::ClaimsOf { user }).await? {
            match reply {
                Reply::Claims {
                    claims: c,
                    coupons: k,
                } => {
                    claims.extend(c);
                    coupons.extend(k);
                }
                other => return Err(Some(other)),
            }
        }
        claims.sort_by_key(|c| c.id);
        Ok((claims, coupons))
    }

    /// Every coupon with its counters, by id, from every shard.
    pub async fn coupons(&self) -> Result<Vec<mall_inventory::CouponCounts>, Option<Reply>> {
        let mut all = Vec::new();
        for reply in self.ask_every_shard(Command::Coupons).await? {
            match reply {
                Reply::Coupons(c) => all.extend(c),
                other => return Err(Some(other)),
            }
        }
        all.sort_by_key(|c| c.coupon.id);
        Ok(all)
    }

    /// Queues a command on the shard that owns `claim`; `None` if the id
    /// names no shard of this store.
    pub fn try_submit_for_claim(
        &self,
        claim: ClaimId,
        command: Command,
    ) -> Option<Result<oneshot::Receiver<Reply>, Busy>> {
        (claim.shard() < self.shards.len()).then(|| self.try_submit(claim.shard(), command))
    }

    /// The ledger, if it runs here: every fen that moves.
    pub fn ledger(&self) -> Option<ShardHandle<Ledger>> {
        read(&self.ledger).as_ref().map(Shard::handle)
    }

    /// Queues a command on the ledger; answered unavailable when the
    /// ledger does not run here.
    pub fn try_submit_ledger(
        &self,
        command: mall_ledger::Command,
    ) -> Result<oneshot::Receiver<mall_ledger::Reply>, Busy> {
        match read(&self.ledger).as_ref() {
            Some(ledger) => ledger.try_submit(command),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(<Ledger as mall_shard::StateMachine>::unavailable());
                Ok(rx)
            }
        }
    }

    pub fn ledger_reader(&self) -> &Arc<dyn LedgerRead> {
        &self.ledger_reader
    }

    /// Read access to the shard that owns `order`, if any.
    pub fn reader_for_order(&self, order: OrderId) -> Option<&Arc<dyn OrderReader>> {
        self.readers.get(order.shard())
    }

    pub fn readers(&self) -> &[Arc<dyn OrderReader>] {
        &self.readers
    }

    /// Queues the creation of items, 1,000 to an envelope, on the shards
    /// that own them (waiting for room). Every shard must run here.
    fn submit_items(
        &self,
        items: Vec<Item>,
    ) -> Result<Vec<oneshot::Receiver<Vec<Reply>>>, StoreError> {
        let mut per_shard: Vec<Vec<Command>> = vec![Vec::new(); self.shard_count()];
        for item in items {
            per_shard[self.shard_of_sku(item.sku)].push(Command::PutItem {
                item,
                expected: None,
            });
        }
        let mut receivers = Vec::new();
        for (shard, commands) in per_shard.into_iter().enumerate() {
            if commands.is_empty() {
                continue;
            }
            let handle = self
                .local(shard)
                .ok_or_else(|| StoreError::Rejected(format!("shard {shard} does not run here")))?;
            for chunk in commands.chunks(1_000) {
                receivers.push(handle.submit_many(chunk.to_vec()));
            }
        }
        Ok(receivers)
    }

    fn created(answer: Result<Vec<Reply>, oneshot::error::RecvError>) -> Result<(), StoreError> {
        let replies = answer.map_err(|_| StoreError::Rejected("a shard went away".into()))?;
        match replies.iter().find(|r| !matches!(r, Reply::Item(_))) {
            Some(bad) => Err(StoreError::Rejected(format!("creating an item: {bad:?}"))),
            None => Ok(()),
        }
    }

    /// Creates new items and waits until they are durable.
    pub async fn create_items(&self, items: Vec<Item>) -> Result<(), StoreError> {
        for rx in self.submit_items(items)? {
            Self::created(rx.await)?;
        }
        Ok(())
    }

    /// [`Engine::create_items`] for threads outside an async runtime.
    pub fn create_items_blocking(&self, items: Vec<Item>) -> Result<(), StoreError> {
        for rx in self.submit_items(items)? {
            Self::created(rx.blocking_recv())?;
        }
        Ok(())
    }

    /// Stops every shard here after committing what is staged.
    pub fn shutdown(self) {
        for shard in 0..self.shards.len() {
            self.close_shard(shard);
        }
        self.close_ledger();
    }
}
