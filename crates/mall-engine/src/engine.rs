//! The engine as a whole: one running inventory shard per shard of the
//! store, the board they publish to, read access to their orders, and the
//! ledger, run by the same group-commit runtime.

use crate::{LedgerRead, OrderReader, Store, StoreError};
use mall_core::{Item, OrderId, Sku};
use mall_inventory::{Board, Command, Inventory, InventoryConfig, Reply};
use mall_ledger::{Ledger, LedgerConfig};
use mall_shard::{Busy, Clock, RuntimeConfig, Shard, ShardHandle};
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub inventory: InventoryConfig,
    pub runtime: RuntimeConfig,
    pub ledger: LedgerConfig,
}

pub struct Engine {
    store: Arc<dyn Store>,
    board: Arc<Board>,
    shards: Vec<Shard<Inventory>>,
    handles: Vec<ShardHandle<Inventory>>,
    readers: Vec<Arc<dyn OrderReader>>,
    ledger: Shard<Ledger>,
    ledger_handle: ShardHandle<Ledger>,
    ledger_reader: Arc<dyn LedgerRead>,
}

impl Engine {
    /// Rebuilds every shard from its store and starts it.
    pub fn start(
        store: Arc<dyn Store>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, StoreError> {
        let board = Arc::new(Board::default());
        let count = store.shard_count();
        let mut shards = Vec::with_capacity(count);
        let mut readers = Vec::with_capacity(count);
        for shard in 0..count {
            let journal = store.shard_journal(shard, config.inventory.clone(), board.clone())?;
            let running = Shard::start(
                format!("shard-{shard}"),
                journal,
                clock.clone(),
                config.runtime.clone(),
            )
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            shards.push(running);
            readers.push(store.order_reader(shard)?);
        }
        let handles = shards.iter().map(Shard::handle).collect();
        let ledger = Shard::start(
            "ledger".to_string(),
            store.ledger_journal(config.ledger.clone())?,
            clock,
            config.runtime.clone(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ledger_reader = store.ledger_reader()?;
        Ok(Engine {
            store,
            board,
            shards,
            handles,
            readers,
            ledger_handle: ledger.handle(),
            ledger,
            ledger_reader,
        })
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    pub fn shard_count(&self) -> usize {
        self.handles.len()
    }

    pub fn shard_of_sku(&self, sku: Sku) -> usize {
        self.store.shard_of(sku)
    }

    pub fn handle(&self, shard: usize) -> &ShardHandle<Inventory> {
        &self.handles[shard]
    }

    /// Queues a command on the shard that owns `sku`; refuses at once when full.
    pub fn try_submit_for_sku(
        &self,
        sku: Sku,
        command: Command,
    ) -> Result<oneshot::Receiver<Reply>, Busy> {
        self.handles[self.shard_of_sku(sku)].try_submit(command)
    }

    /// Queues a command on the shard that owns `order`; refuses at once when full.
    /// `None` if the id names no shard of this store.
    pub fn try_submit_for_order(
        &self,
        order: OrderId,
        command: Command,
    ) -> Option<Result<oneshot::Receiver<Reply>, Busy>> {
        self.handles
            .get(order.shard())
            .map(|h| h.try_submit(command))
    }

    /// The ledger: every fen that moves.
    pub fn ledger(&self) -> &ShardHandle<Ledger> {
        &self.ledger_handle
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
    /// that own them (waiting for room).
    fn submit_items(&self, items: Vec<Item>) -> Vec<oneshot::Receiver<Vec<Reply>>> {
        let mut per_shard: Vec<Vec<Command>> = vec![Vec::new(); self.shard_count()];
        for item in items {
            per_shard[self.shard_of_sku(item.sku)].push(Command::PutItem {
                item,
                expected: None,
            });
        }
        let mut receivers = Vec::new();
        for (shard, commands) in per_shard.into_iter().enumerate() {
            for chunk in commands.chunks(1_000) {
                receivers.push(self.handles[shard].submit_many(chunk.to_vec()));
            }
        }
        receivers
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
        for rx in self.submit_items(items) {
            Self::created(rx.await)?;
        }
        Ok(())
    }

    /// [`Engine::create_items`] for threads outside an async runtime.
    pub fn create_items_blocking(&self, items: Vec<Item>) -> Result<(), StoreError> {
        for rx in self.submit_items(items) {
            Self::created(rx.blocking_recv())?;
        }
        Ok(())
    }

    /// Stops every shard after committing what is staged.
    pub fn shutdown(self) {
        drop(self.handles);
        drop(self.ledger_handle);
        for shard in self.shards {
            shard.join();
        }
        self.ledger.join();
    }
}
