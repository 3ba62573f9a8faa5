//! Group-commit runtime shared by the engines (inventory now, ledger later).
//!
//! A *shard* is one single-threaded state machine ([`StateMachine`]) fed by a
//! bounded FIFO queue. Two threads serve it:
//!
//! - the **apply thread** drains the queue in arrival order, applies each
//!   command to the machine in memory, answers refusals at once (they claim
//!   nothing, so they need no disk), and stages the effects and the success
//!   replies of the batch;
//! - the **commit thread** takes everything staged so far as one batch,
//!   writes it to the [`Journal`] in one transaction (one fsync: group
//!   commit), and only then sends the success replies.
//!
//! While one batch commits, the next is applied and refusals keep flowing, so
//! a sold-out item is refused without waiting behind successful work.
//!
//! If a commit fails, the machine in memory is ahead of the store. The shard
//! is then *poisoned*: every staged or in-flight success is answered with
//! [`StateMachine::unavailable`], and the apply thread rebuilds its machine
//! from the journal (the same code path as a start) before taking new work.

mod queue;
pub mod stats;

use queue::{Queue, Received};

pub use stats::{Histogram, ShardStats};

use mall_core::Timestamp;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A sans-IO state machine: no threads, files, clocks or randomness inside.
pub trait StateMachine: Send + 'static {
    type Command: Send + 'static;
    type Reply: Send + 'static;
    type Effect: Send + 'static;

    /// Applies one command at `now`, pushing what must become durable into
    /// `effects`, and returns the reply.
    fn apply(
        &mut self,
        command: Self::Command,
        now: Timestamp,
        effects: &mut Vec<Self::Effect>,
    ) -> Self::Reply;

    /// Does the reply claim state (a success, or a replay of one)? Such a
    /// reply waits until everything applied before it is committed.
    fn needs_commit(reply: &Self::Reply) -> bool;

    /// Time-driven work, e.g. expiring holds.
    fn tick(&mut self, now: Timestamp, effects: &mut Vec<Self::Effect>);

    /// Asserts the machine's invariants (always on). Called after every batch.
    fn check_invariants(&mut self);

    /// The reply for a command whose batch could not be committed.
    fn unavailable() -> Self::Reply;
}

#[derive(Debug, thiserror::Error)]
#[error("journal: {0}")]
pub struct JournalError(pub String);

/// Durable storage of one shard's effects.
pub trait Journal: Send + 'static {
    type Machine: StateMachine;

    /// Writes the effects in one transaction. On `Ok` they are durable.
    fn commit(
        &mut self,
        effects: &[<Self::Machine as StateMachine>::Effect],
    ) -> Result<(), JournalError>;

    /// Rebuilds the machine from what is durable.
    fn load(&mut self, now: Timestamp) -> Result<Self::Machine, JournalError>;
}

/// A boxed journal is a journal: backends hand the engine
/// `Box<dyn Journal<Machine = M>>`.
impl<J: Journal + ?Sized> Journal for Box<J> {
    type Machine = J::Machine;

    fn commit(
        &mut self,
        effects: &[<Self::Machine as StateMachine>::Effect],
    ) -> Result<(), JournalError> {
        (**self).commit(effects)
    }

    fn load(&mut self, now: Timestamp) -> Result<Self::Machine, JournalError> {
        (**self).load(now)
    }
}

/// Source of the current time, injected so tests can drive it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_millis() as i64)
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: Timestamp) -> ManualClock {
        ManualClock(AtomicI64::new(now.0))
    }
    pub fn set(&self, now: Timestamp) {
        self.0.store(now.0, Ordering::SeqCst);
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Commands waiting in the queue, at most. A full queue refuses at once.
    pub queue_capacity: usize,
    /// Commands applied in one go by the apply thread, at most.
    pub batch_commands_max: usize,
    /// Effects staged for the commit thread, at most; beyond it the apply
    /// thread waits (and the queue fills, and the edge answers 503).
    pub staged_effects_max: usize,
    /// How often time-driven work runs when the queue is idle.
    pub tick_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            queue_capacity: 65_536,
            batch_commands_max: 8_192,
            staged_effects_max: 65_536,
            tick_interval: Duration::from_millis(50),
        }
    }
}

/// The queue is full: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard queue is full")]
pub struct Busy;

enum Envelope<M: StateMachine> {
    One(M::Command, oneshot::Sender<M::Reply>),
    Many(Vec<M::Command>, oneshot::Sender<Vec<M::Reply>>),
}

impl<M: StateMachine> Envelope<M> {
    /// Answers a command that cannot be served now (the store is away).
    fn refuse(self) {
        match self {
            Envelope::One(_, tx) => drop(tx.send(M::unavailable())),
            Envelope::Many(commands, tx) => {
                drop(tx.send(commands.iter().map(|_| M::unavailable()).collect()))
            }
        }
    }
}

enum PendingReply<M: StateMachine> {
    One(M::Reply, oneshot::Sender<M::Reply>),
    Many(Vec<M::Reply>, oneshot::Sender<Vec<M::Reply>>),
}

impl<M: StateMachine> PendingReply<M> {
    fn send(self) {
        // A caller that went away (timeout, disconnect) is not an error here.
        match self {
            PendingReply::One(reply, tx) => drop(tx.send(reply)),
            PendingReply::Many(replies, tx) => drop(tx.send(replies)),
        }
    }

    fn fail(self) {
        match self {
            PendingReply::One(_, tx) => drop(tx.send(M::unavailable())),
            PendingReply::Many(replies, tx) => {
                drop(tx.send(replies.iter().map(|_| M::unavailable()).collect()))
            }
        }
    }
}

/// What the apply thread hands to the commit thread. Guarded by one mutex.
struct Staging<M: StateMachine> {
    /// Effects applied in memory, not yet taken by the commit thread.
    effects: Vec<M::Effect>,
    /// Success replies waiting for those effects (and all before them).
    replies: Vec<PendingReply<M>>,
    /// A commit failed: memory is ahead of the store until the apply thread reloads.
    poisoned: bool,
    /// The apply thread has stopped; the commit thread drains and exits.
    closed: bool,
}

struct Shared<M: StateMachine> {
    staging: Mutex<Staging<M>>,
    /// Signals the commit thread (work staged, or closed).
    staged: Condvar,
    /// Signals the apply thread (room freed in staging).
    drained: Condvar,
}

/// A cheap, cloneable handle for submitting commands to one shard. The
/// shard stops once every handle is dropped.
pub struct ShardHandle<M: StateMachine> {
    queue: Arc<Queue<Envelope<M>>>,
    stats: Arc<ShardStats>,
}

impl<M: StateMachine> Clone for ShardHandle<M> {
    fn clone(&self) -> Self {
        self.queue.add_sender();
        ShardHandle {
            queue: self.queue.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<M: StateMachine> Drop for ShardHandle<M> {
    fn drop(&mut self) {
        self.queue.remove_sender();
    }
}

impl<M: StateMachine> ShardHandle<M> {
    /// Enqueues one command, or refuses at once when the queue is full.
    pub fn try_submit(&self, command: M::Command) -> Result<oneshot::Receiver<M::Reply>, Busy> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Envelope::One(command, tx))
            .map_err(|_| Busy)?;
        Ok(rx)
    }

    /// Enqueues commands as one envelope (applied back to back, answered together),
    /// waiting for room in the queue. For in-process clients such as benchmarks.
    /// (A live handle keeps the shard running, so this cannot fail; a
    /// dropped receiver means the process is going down.)
    pub fn submit_many(&self, commands: Vec<M::Command>) -> oneshot::Receiver<Vec<M::Reply>> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(Envelope::Many(commands, tx));
        rx
    }

    /// Enqueues one command, waiting for room in the queue.
    pub fn submit(&self, command: M::Command) -> oneshot::Receiver<M::Reply> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(Envelope::One(command, tx));
        rx
    }

    /// Commands waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }
}

/// A running shard: its handle and its two threads.
pub struct Shard<M: StateMachine> {
    handle: ShardHandle<M>,
    apply_thread: JoinHandle<()>,
}

impl<M: StateMachine> Shard<M> {
    /// Loads the machine from the journal and starts the shard's threads.
    pub fn start<J, C>(
        name: String,
        mut journal: J,
        clock: C,
        config: RuntimeConfig,
    ) -> Result<Shard<M>, JournalError>
    where
        J: Journal<Machine = M>,
        C: Clock,
    {
        assert!(config.queue_capacity > 0);
        assert!(config.batch_commands_max > 0);
        assert!(config.staged_effects_max > 0);
        let machine = journal.load(clock.now())?;
        let queue = Arc::new(Queue::new(config.queue_capacity));
        let stats = Arc::new(ShardStats::default());
        let shared = Arc::new(Shared {
            staging: Mutex::new(Staging {
                effects: Vec::new(),
                replies: Vec::new(),
                poisoned: false,
                closed: false,
            }),
            staged: Condvar::new(),
            drained: Condvar::new(),
        });
        let journal = Arc::new(Mutex::new(journal));
        let committer = {
            let (shared, journal, stats) = (shared.clone(), journal.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("{name}-commit"))
                .spawn(move || {
                    // Fail-stop here too: a dead commit thread would leave
                    // the apply thread staging forever and the shard hung.
                    let run = std::panic::AssertUnwindSafe(|| commit_loop(shared, journal, stats));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("shard commit thread panicked; aborting the process");
                        std::process::abort();
                    }
                })
                .map_err(|e| JournalError(format!("spawn commit thread: {e}")))?
        };
        let applier = Applier {
            machine,
            queue: queue.clone(),
            shared,
            journal,
            clock,
            config,
            stats: stats.clone(),
        };
        let apply_thread = std::thread::Builder::new()
            .name(format!("{name}-apply"))
            .spawn(move || {
                // Fail-stop: a broken invariant (or any panic) in the apply
                // thread must not leave a dead shard answering 503 forever.
                // Abort; a restart rebuilds the shard from what is durable.
                let run = std::panic::AssertUnwindSafe(|| applier.run());
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("shard apply thread panicked; aborting the process");
                    std::process::abort();
                }
                if committer.join().is_err() {
                    tracing::error!("commit thread panicked; aborting the process");
                    std::process::abort();
                }
            })
            .map_err(|e| JournalError(format!("spawn apply thread: {e}")))?;
        Ok(Shard {
            handle: ShardHandle { queue, stats },
            apply_thread,
        })
    }

    pub fn handle(&self) -> ShardHandle<M> {
        self.handle.clone()
    }

    /// [`ShardHandle::try_submit`] without cloning a handle.
    pub fn try_submit(&self, command: M::Command) -> Result<oneshot::Receiver<M::Reply>, Busy> {
        self.handle.try_submit(command)
    }

    /// Stops taking work once every handle is dropped, commits what is
    /// staged, and waits for both threads.
    pub fn join(self) {
        drop(self.handle);
        if self.apply_thread.join().is_err() {
            tracing::error!("apply thread panicked");
        }
    }
}

struct Applier<M: StateMachine, J: Journal<Machine = M>, C: Clock> {
    machine: M,
    queue: Arc<Queue<Envelope<M>>>,
    shared: Arc<Shared<M>>,
    journal: Arc<Mutex<J>>,
    clock: C,
    config: RuntimeConfig,
    stats: Arc<ShardStats>,
}

impl<M: StateMachine, J: Journal<Machine = M>, C: Clock> Applier<M, J, C> {
    fn run(mut self) {
        let mut envelopes = Vec::with_capacity(self.config.batch_commands_max);
        let mut effects = Vec::new();
        let mut pending = Vec::new();
        loop {
            let batch_max = self.config.batch_commands_max;
            match self
                .queue
                .recv_batch(&mut envelopes, batch_max, self.config.tick_interval)
            {
                Received::Items | Received::Timeout => {}
                Received::Disconnected => break,
            }
            if self.is_poisoned() && !self.recover() {
                // Every handle is gone and the journal will not load (a
                // fenced shard being dropped): stop instead of retrying.
                envelopes.drain(..).for_each(Envelope::refuse);
                break;
            }
            let now = self.clock.now();
            self.machine.tick(now, &mut effects);
            let commands = envelopes.len();
            for envelope in envelopes.drain(..) {
                self.apply(envelope, now, &mut effects, &mut pending);
            }
            self.machine.check_invariants();
            self.stats.record_apply(commands);
            if !effects.is_empty() || !pending.is_empty() {
                self.stage(&mut effects, &mut pending);
            }
        }
        let mut staging = self
            .shared
            .staging
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        staging.closed = true;
        self.shared.staged.notify_all();
    }

    fn apply(
        &mut self,
        envelope: Envelope<M>,
        now: Timestamp,
        effects: &mut Vec<M::Effect>,
        pending: &mut Vec<PendingReply<M>>,
    ) {
        match envelope {
            Envelope::One(command, tx) => {
                let reply = self.machine.apply(command, now, effects);
                if M::needs_commit(&reply) {
                    pending.push(PendingReply::One(reply, tx));
                } else {
                    let _ = tx.send(reply);
                }
            }
            Envelope::Many(commands, tx) => {
                let replies: Vec<M::Reply> = commands
                    .into_iter()
                    .map(|c| self.machine.apply(c, now, effects))
                    .collect();
                if replies.iter().any(M::needs_commit) {
                    pending.push(PendingReply::Many(replies, tx));
                } else {
                    let _ = tx.send(replies);
                }
            }
        }
    }

    fn is_poisoned(&self) -> bool {
        self.shared
            .staging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .poisoned
    }

    /// Hands effects and replies to the commit thread, waiting while staging is full.
    fn stage(&mut self, effects: &mut Vec<M::Effect>, pending: &mut Vec<PendingReply<M>>) {
        let mut staging = self
            .shared
            .staging
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while staging.effects.len() >= self.config.staged_effects_max && !staging.poisoned {
            staging = self
                .shared
                .drained
                .wait(staging)
                .unwrap_or_else(|p| p.into_inner());
        }
        if staging.poisoned {
            drop(staging);
            effects.clear();
            pending.drain(..).for_each(PendingReply::fail);
            return;
        }
        staging.effects.append(effects);
        staging.replies.append(pending);
        self.shared.staged.notify_one();
    }

    /// A commit failed: fail everything staged after it and rebuild the
    /// machine from the journal. Retries until the journal loads, or until
    /// every handle is dropped (then `false`: nobody will ask again).
    fn recover(&mut self) -> bool {
        let mut backoff = Duration::from_millis(10);
        loop {
            {
                let mut staging = self
                    .shared
                    .staging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                staging.effects.clear();
                staging.replies.drain(..).for_each(PendingReply::fail);
            }
            let loaded = self
                .journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .load(self.clock.now());
            match loaded {
                Ok(machine) => {
                    self.machine = machine;
                    self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                    let mut staging = self
                        .shared
                        .staging
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    staging.poisoned = false;
                    tracing::warn!("shard reloaded from the journal after a failed commit");
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "shard reload failed; retrying");
                    // While the store is away, whoever is queued hears at
                    // once that it is unavailable (a 503 with Retry-After)
                    // instead of waiting for a reload that may take long.
                    let mut waiting = Vec::new();
                    let deadline = Instant::now() + backoff;
                    while Instant::now() < deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let received = self.queue.recv_batch(
                            &mut waiting,
                            self.config.batch_commands_max,
                            left,
                        );
                        waiting.drain(..).for_each(Envelope::refuse);
                        if matches!(received, Received::Disconnected) {
                            return false;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

fn commit_loop<M: StateMachine, J: Journal<Machine = M>>(
    shared: Arc<Shared<M>>,
    journal: Arc<Mutex<J>>,
    stats: Arc<ShardStats>,
) {
    let mut effects = Vec::new();
    let mut replies = Vec::new();
    loop {
        let poisoned;
        {
            let mut staging = shared.staging.lock().unwrap_or_else(|p| p.into_inner());
            while staging.effects.is_empty() && staging.replies.is_empty() && !staging.closed {
                staging = shared
                    .staged
                    .wait(staging)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if staging.effects.is_empty() && staging.replies.is_empty() {
                return; // closed and drained
            }
            std::mem::swap(&mut effects, &mut staging.effects);
            std::mem::swap(&mut replies, &mut staging.replies);
            poisoned = staging.poisoned;
            shared.drained.notify_one();
        }
        if poisoned {
            effects.clear();
            replies.drain(..).for_each(PendingReply::fail);
            continue;
        }
        let result = if effects.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let result = journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .commit(&effects);
            stats.record_commit(effects.len(), started.elapsed());
            result
        };
        effects.clear();
        match result {
            Ok(()) => replies.drain(..).for_each(PendingReply::send),
            Err(e) => {
                tracing::error!(error = %e, "commit failed; shard will reload");
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                shared
                    .staging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .poisoned = true;
                shared.drained.notify_all();
                replies.drain(..).for_each(PendingReply::fail);
            }
        }
    }
}
