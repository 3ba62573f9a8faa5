//! mall as a cluster. Any number of `mall serve --node NAME` processes
//! share one PostgreSQL store; each runs some of its shards.
//!
//! - **Membership and leases** live in the store (`mall_postgres::cluster`):
//!   a node heartbeats and renews its leases on a thread and a connection
//!   of its own, every eighth of a lease, so a node busy with a spike never
//!   loses them. The epoch of a shard, checked in every commit's
//!   transaction, is what makes a lapsed owner harmless.
//! - **Placement.** A node takes lapsed or free shards up to its fair
//!   share (`ceil(shards / live nodes)`); the holder of the rebalancer's
//!   lease asks one planned move at a time until the counts differ by at
//!   most one. A move is a handover: the owner closes the shard (queued
//!   commands applied, everything staged committed), passes the lease to
//!   the new owner and nudges it; the new owner opens the shard (bumping
//!   its epoch) and serves it.
//! - **Forwarding.** A command for a shard that runs elsewhere goes to its
//!   owner over one persistent connection per peer, many commands to a
//!   frame (see `wire`). During a planned move it waits (up to
//!   [`NodeConfig::wait`]) and is retried inside the cluster; the client
//!   sees no error. An owner that cannot be reached (it died; its lease has
//!   not lapsed yet) is asked again the same way: the command lands once a
//!   survivor takes the shard over, or answers unavailable when the wait
//!   runs out (a 503 with Retry-After, never a false success).
//! - **Payments** run where the ledger runs (one more lease); the other
//!   nodes carry payment requests and provider callbacks there as they came.
//! - **The board**: each owner publishes its items' counters to every peer
//!   every 50 ms (changes only; everything every 2 s), so any node shows
//!   any item and knows within ~100 ms when it sold out or came back.

pub mod peer;
mod server;
pub mod wire;

use mall_engine::{Elsewhere, Engine};
use mall_inventory::{Command, Live, Reply};
use mall_postgres::cluster::{Membership, NodeRow, View, LEDGER, REBALANCER};
use peer::{Asked, Peer};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wire::{Answer, Ask, BoardUpdate, HttpAnswer, HttpAsk};

/// How a node of a cluster is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Unique in the cluster.
    pub name: String,
    /// Where clients reach this node (shown by `mall cluster status`).
    pub api: String,
    /// Where the other nodes reach this node (the internal port).
    pub internal: SocketAddr,
    /// Shared by every node; proves a connection to the internal port comes
    /// from a node.
    pub secret: Vec<u8>,
    /// A lease lapses this long after its holder's last renewal.
    pub lease: Duration,
    /// How long a command waits for a shard in a planned move.
    pub wait: Duration,
}

/// Runs a public request that another node carried here (payments).
pub type HttpHandler =
    Arc<dyn Fn(HttpAsk) -> Pin<Box<dyn Future<Output = HttpAnswer> + Send>> + Send + Sync>;

enum Job {
    Open(i32),
    /// The lease is gone (lapsed and taken): stop serving at once.
    Drop(i32),
    Handover(i32, String),
}

/// Where a shard is served, as this node believes.
#[derive(Clone, Debug, PartialEq)]
enum Owner {
    Nobody,
    Here,
    /// A planned move away from this node is under way.
    Moving,
    Node(String),
}

#[derive(Default)]
struct Routes {
    owners: HashMap<i32, Owner>,
    /// Live nodes (heartbeat younger than a lease), by name.
    nodes: HashMap<String, NodeRow>,
}

/// Counters of this node's part in the cluster.
#[derive(Default)]
pub struct ClusterStats {
    /// Commands this node sent to the shards' owners.
    pub forwarded: AtomicU64,
    /// Commands other nodes sent here.
    pub served: AtomicU64,
    pub handovers: AtomicU64,
    /// The longest a shard was closed during a planned handover here, µs.
    pub handover_pause_max_us: AtomicU64,
    /// Shards opened after a lease lapsed (failovers) or handed over.
    pub opened: AtomicU64,
    /// Shards dropped because their lease was lost (fenced).
    pub dropped: AtomicU64,
    /// Snap-ups of sold-out items refused here, without a hop.
    pub refused_here: AtomicU64,
}

pub struct Node {
    me: std::sync::Weak<Node>,
    config: NodeConfig,
    secret: Arc<[u8]>,
    runtime: tokio::runtime::Handle,
    engine: OnceLock<Arc<Engine>>,
    routes: RwLock<Routes>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    http: OnceLock<HttpHandler>,
    on_ledger: OnceLock<Box<dyn Fn() + Send + Sync>>,
    dashboard: OnceLock<Box<dyn Fn() -> String + Send + Sync>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Keys with a job queued or under way.
    busy: Mutex<HashSet<i32>>,
    /// Other nodes' items: their buyers (sold out at the edge).
    edge: Mutex<HashMap<mall_core::Sku, EdgeItem>>,
    draining: AtomicBool,
    stopped: AtomicBool,
    pub stats: ClusterStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub fn new(config: NodeConfig, runtime: tokio::runtime::Handle) -> Arc<Node> {
        Arc::new_cyclic(|me| Node {
            me: me.clone(),
            secret: config.secret.clone().into(),
            config,
            runtime,
            engine: OnceLock::new(),
            routes: RwLock::default(),
            peers: Mutex::default(),
            http: OnceLock::new(),
            on_ledger: OnceLock::new(),
            dashboard: OnceLock::new(),
            jobs: Mutex::new(None),
            busy: Mutex::default(),
            edge: Mutex::default(),
            draining: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stats: ClusterStats::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn engine(&self) -> &Arc<Engine> {
        self.engine.get().expect("the engine is attached at start")
    }

    /// Runs carried public requests (payments) with `handler`.
    pub fn set_http_handler(&self, handler: HttpHandler) {
        let _ = self.http.set(handler);
    }

    /// This node's own dashboard figures, as JSON, for the other nodes.
    pub fn set_dashboard(&self, figures: impl Fn() -> String + Send + Sync + 'static) {
        let _ = self.dashboard.set(Box::new(figures));
    }

    pub(crate) fn dashboard(&self) -> String {
        self.dashboard.get().map_or_else(|| "null".into(), |f| f())
    }

    /// The other live nodes, by name.
    fn other_nodes(&self) -> Vec<String> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .nodes
            .keys()
            .filter(|n| **n != self.config.name)
            .cloned()
            .collect()
    }

    /// Every other live node's own dashboard figures (nodes that do not
    /// answer within a second are left out).
    pub async fn gather_dashboards(&self) -> Vec<(String, String)> {
        let names = self.other_nodes();
        let mut asks = Vec::new();
        for name in names {
            if let Some(peer) = self.peer(&name) {
                asks.push(async move {
                    let answer =
                        tokio::time::timeout(Duration::from_secs(1), peer.ask(Ask::Dashboard))
                            .await;
                    match answer {
                        Ok(Asked::Answered(Answer::Json(text))) => Some((name, text)),
                        _ => None,
                    }
                });
            }
        }
        let mut out = Vec::new();
        for ask in asks {
            out.extend(ask.await);
        }
        out
    }

    /// Called (on a thread of the cluster) once the ledger runs here.
    pub fn on_ledger(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_ledger.set(Box::new(hook));
    }

    /// Joins the cluster: binds the internal port, then heartbeats, takes
    /// leases and opens shards on threads of its own. `control` and
    /// `worker` are two memberships (two connections), so a slow shard
    /// load never delays a heartbeat.
    pub fn start(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        control: Membership,
        worker: Membership,
    ) -> std::io::Result<()> {
        let _ = self.engine.set(engine);
        let listener = {
            let _guard = self.runtime.enter();
            let std = std::net::TcpListener::bind(self.config.internal)?;
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)?
        };
        self.runtime.spawn(server::serve(listener, self.clone()));
        let (tx, rx) = mpsc::channel();
        *lock(&self.jobs) = Some(tx);
        let me = self.clone();
        std::thread::Builder::new()
            .name("cluster-worker".into())
            .spawn(move || me.work(worker, rx))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("cluster-heartbeat".into())
            .spawn(move || me.control(control))?;
        let me = self.clone();
        self.runtime.spawn(async move { me.publish_board().await });
        Ok(())
    }

    // ---- routing ---------------------------------------------------------

    fn owner(&self, key: i32) -> Owner {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.owners.get(&key).cloned().unwrap_or(Owner::Nobody)
    }

    fn set_owner(&self, key: i32, owner: Owner) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.owners.insert(key, owner);
    }

    fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        let addr = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            routes.nodes.get(name)?.internal.clone()
        };
        let mut peers = lock(&self.peers);
        let peer = peers.entry(name.to_string()).or_insert_with(|| {
            Peer::start(
                &self.runtime,
                self.config.name.clone(),
                name.to_string(),
                addr.clone(),
                self.secret.clone(),
            )
        });
        if peer.addr != addr {
            // The node came back at another address.
            *peer = Peer::start(
                &self.runtime,
                self.config.name.clone(),
                name.to_string(),
                addr,
                self.secret.clone(),
            );
        }
        Some(peer.clone())
    }

    /// The node serving payments (the ledger's owner), if it is another
    /// live node.
    pub fn payments_elsewhere(&self) -> bool {
        matches!(self.owner(LEDGER), Owner::Node(_))
    }

    /// Carries a public request to the node serving payments. `None`: no
    /// node serves them now (answer 503).
    pub async fn forward_http(&self, ask: HttpAsk) -> Option<HttpAnswer> {
        let Owner::Node(name) = self.owner(LEDGER) else {
            return None;
        };
        match self.peer(&name)?.ask(Ask::Http(ask)).await {
            Asked::Answered(Answer::Http(answer)) => Some(answer),
            _ => None,
        }
    }

    pub(crate) async fn http(&self, ask: HttpAsk) -> HttpAnswer {
        match self.http.get() {
            Some(handler) => handler(ask).await,
            None => HttpAnswer {
                status: 503,
                headers: vec![("content-type".into(), "application/json".into())],
                body: r#"{"error":{"code":"store_unavailable","message":"this node is starting"}}"#
                    .into(),
            },
        }
    }

    async fn forward(self: Arc<Self>, shard: usize, command: Command) -> Reply {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.config.wait;
        loop {
            match self.owner(shard as i32) {
                Owner::Here => {
                    if let Some(handle) = self.engine().local(shard) {
                        return match handle.try_submit(command) {
                            Ok(rx) => rx.await.unwrap_or(Reply::Unavailable),
                            Err(_) => Reply::Unavailable,
                        };
                    }
                }
                Owner::Node(name) => {
                    if let Some(peer) = self.peer(&name) {
                        let ask = Ask::Inventory {
                            shard,
                            command: command.clone(),
                        };
                        match peer.ask(ask).await {
                            Asked::Answered(Answer::Inventory(reply)) => return reply,
                            // Nothing was applied: ask again. A node that
                            // cannot be reached (it died, or left and our
                            // route is stale) says the same until the
                            // routes move on or the wait runs out (503).
                            Asked::Answered(Answer::NotHere) | Asked::Unsent => {}
                            Asked::Answered(_) | Asked::Lost => return Reply::Unavailable,
                        }
                    }
                }
                Owner::Nobody | Owner::Moving => {}
            }
            if Instant::now() >= deadline {
                return Reply::Unavailable;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ---- the heartbeat thread ------------------------------------------

    fn tick(&self) -> Duration {
        (self.config.lease / 8).max(Duration::from_millis(20))
    }

    fn control(self: Arc<Self>, membership: Membership) {
        let api = self.config.api.clone();
        let internal = self.config.internal.to_string();
        let mut last_error: Option<Instant> = None;
        while !self.stopped.load(Ordering::Relaxed) {
            let started = Instant::now();
            let load = self.stats.forwarded.load(Ordering::Relaxed) as f64;
            let draining = self.draining.load(Ordering::Relaxed);
            match membership
                .heartbeat(&api, &internal, draining, load)
                .and_then(|renewed| Ok((renewed, membership.view()?)))
            {
                Ok((renewed, view)) => self.after_heartbeat(&membership, renewed, view),
                Err(e) => {
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "heartbeat failed; retrying");
                        last_error = Some(Instant::now());
                    }
                }
            }
            std::thread::sleep(self.tick().saturating_sub(started.elapsed()));
        }
    }

    fn after_heartbeat(
        &self,
        membership: &Membership,
        renewed: mall_postgres::cluster::Renewed,
        view: View,
    ) {
        let lease_ms = self.config.lease.as_millis() as i64;
        let me = self.config.name.clone();
        let engine = self.engine();
        let shards = engine.shard_count();
        let mut held: HashSet<i32> = renewed.held.iter().copied().collect();
        // Routes from the view; our own keys from what is open here.
        {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            routes.nodes = view
                .nodes
                .iter()
                .filter(|n| n.heartbeat_age_ms < lease_ms)
                .map(|n| (n.name.clone(), n.clone()))
                .collect();
            for lease in &view.leases {
                let owner = match &lease.owner {
                    None => Owner::Nobody,
                    Some(o) if *o == me => {
                        let open = if lease.key == LEDGER {
                            engine.ledger().is_some()
                        } else {
                            lease.key >= 0 && engine.runs_here(lease.key as usize)
                        };
                        match routes.owners.get(&lease.key) {
                            Some(Owner::Moving) => Owner::Moving,
                            _ if open => Owner::Here,
                            _ => Owner::Nobody,
                        }
                    }
                    Some(o) => Owner::Node(o.clone()),
                };
                routes.owners.insert(lease.key, owner);
            }
        }
        let busy = lock(&self.busy).clone();
        // Open here but no longer ours: the lease lapsed and someone took it.
        for shard in engine.shards_here() {
            let key = shard as i32;
            if !held.contains(&key) && !busy.contains(&key) {
                tracing::error!(
                    shard,
                    "lost this shard's lease (paused or cut off past it); dropping it"
                );
                self.job(Job::Drop(key));
            }
        }
        if engine.ledger().is_some() && !held.contains(&LEDGER) && !busy.contains(&LEDGER) {
            self.job(Job::Drop(LEDGER));
        }
        for (key, to) in &renewed.handoffs {
            if !busy.contains(key) {
                self.job(Job::Handover(*key, to.clone()));
            }
        }
        for &key in &held {
            let open = match key {
                LEDGER => engine.ledger().is_some(),
                REBALANCER => true,
                k => engine.runs_here(k as usize),
            };
            if !open && !busy.contains(&key) {
                self.job(Job::Open(key));
            }
        }
        if self.draining.load(Ordering::Relaxed) {
            return;
        }
        // Take free or lapsed leases, shards up to our fair share.
        let live: Vec<&NodeRow> = view
            .nodes
            .iter()
            .filter(|n| n.heartbeat_age_ms < lease_ms && !n.draining)
            .collect();
        let fair = shards.div_ceil(live.len().max(1));
        let mut mine = held.iter().filter(|k| **k >= 0).count();
        let by_key: HashMap<i32, &mall_postgres::cluster::LeaseRow> =
            view.leases.iter().map(|l| (l.key, l)).collect();
        let free = |key: i32| {
            by_key
                .get(&key)
                .is_none_or(|l| l.owner.is_none() || l.expires_in_ms < 0)
        };
        for key in [LEDGER, REBALANCER] {
            if free(key) && !held.contains(&key) {
                match membership.acquire(key) {
                    Ok(true) => {
                        held.insert(key);
                        if key == LEDGER {
                            self.job(Job::Open(key));
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, key, "taking a lease failed"),
                }
            }
        }
        for shard in 0..shards as i32 {
            if mine >= fair {
                break;
            }
            if free(shard) && !held.contains(&shard) {
                match membership.acquire(shard) {
                    Ok(true) => {
                        mine += 1;
                        held.insert(shard);
                        if let Some(previous) = by_key.get(&shard).and_then(|l| l.owner.clone()) {
                            tracing::warn!(shard, %previous, "taking over a shard whose lease lapsed");
                        }
                        self.job(Job::Open(shard));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, shard, "taking a lease failed");
                        break;
                    }
                }
            }
        }
        if held.contains(&REBALANCER) {
            self.rebalance(membership, &view, &live);
        }
    }

    /// The rebalancer's step: one planned move at a time, from the node
    /// with most shards to the one with fewest (draining nodes hand their
    /// shards over themselves).
    fn rebalance(&self, membership: &Membership, view: &View, live: &[&NodeRow]) {
        // A move whose target left or drains is withdrawn.
        let mut pending = false;
        for lease in &view.leases {
            if let Some(to) = &lease.handoff_to {
                if live.iter().any(|n| n.name == *to) {
                    pending = true;
                } else if let Err(e) = membership.cancel_handoff(lease.key) {
                    tracing::warn!(error = %e, "withdrawing a move failed");
                }
            }
        }
        if live.len() < 2 || pending {
            return;
        }
        let mut counts: HashMap<&str, Vec<i32>> =
            live.iter().map(|n| (n.name.as_str(), Vec::new())).collect();
        for lease in view.leases.iter().filter(|l| l.key >= 0) {
            if let Some(owner) = &lease.owner {
                if let Some(keys) = counts.get_mut(owner.as_str()) {
                    keys.push(lease.key);
                }
            }
        }
        let (Some(most), Some(least)) = (
            counts.iter().max_by_key(|(n, k)| (k.len(), *n)),
            counts.iter().min_by_key(|(n, k)| (k.len(), *n)),
        ) else {
            return;
        };
        if most.1.len() < least.1.len() + 2 {
            return;
        }
        let key = *most.1.iter().max().expect("not empty");
        match membership.ask_handoff(key, most.0, least.0) {
            Ok(true) => {
                tracing::info!(shard = key, from = %most.0, to = %least.0, "rebalancing: moving a shard")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "asking for a move failed"),
        }
    }

    fn job(&self, job: Job) {
        let key = match &job {
            Job::Open(k) | Job::Drop(k) | Job::Handover(k, _) => *k,
        };
        if !lock(&self.busy).insert(key) {
            return;
        }
        if let Some(tx) = lock(&self.jobs).as_ref() {
            let _ = tx.send(job);
        }
    }

    /// A peer handed `key` over to us: open it now.
    pub(crate) fn nudge(&self, key: i32) {
        self.job(Job::Open(key));
    }

    // ---- the worker thread ---------------------------------------------

    fn work(self: Arc<Self>, membership: Membership, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let key = match &job {
                Job::Open(k) | Job::Drop(k) | Job::Handover(k, _) => *k,
            };
            match job {
                Job::Open(key) => self.open(&membership, key),
                Job::Drop(key) => self.drop_key(key),
                Job::Handover(key, to) => {
                    self.hand_over(&membership, key, &to);
                }
            }
            lock(&self.busy).remove(&key);
        }
    }

    fn open(&self, membership: &Membership, key: i32) {
        // Never on a stale belief: opening bumps the epoch and would fence
        // the rightful owner.
        match membership.holds(key) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, key, "checking a lease failed");
                return;
            }
        }
        let engine = self.engine();
        let started = Instant::now();
        let opened = match key {
            LEDGER => engine.open_ledger(),
            REBALANCER => return,
            shard => engine.open_shard(shard as usize),
        };
        match opened {
            Ok(()) => {
                self.set_owner(key, Owner::Here);
                self.stats.opened.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    key,
                    took_ms = started.elapsed().as_millis() as u64,
                    "serving here"
                );
                if key == LEDGER {
                    if let Some(hook) = self.on_ledger.get() {
                        hook();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, key, "opening failed; retrying at the next heartbeat")
            }
        }
    }

    fn drop_key(&self, key: i32) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if key == LEDGER {
            // The payment service runs with the ledger and cannot move
            // while running: stop the process (a supervisor restarts it,
            // and it rejoins as a new member).
            tracing::error!(
                "lost the ledger's lease; stopping so that payments restart on its new owner"
            );
            std::process::exit(75);
        }
        self.set_owner(key, Owner::Nobody);
        self.engine().close_shard(key as usize);
        tracing::warn!(shard = key, "dropped a shard whose lease was lost");
    }

    fn hand_over(&self, membership: &Membership, key: i32, to: &str) -> bool {
        let eligible = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            routes.nodes.get(to).is_some_and(|n| !n.draining)
        };
        if !eligible {
            // Never close a shard for a node that cannot take it.
            let _ = membership.cancel_handoff(key);
            return false;
        }
        let started = Instant::now();
        self.set_owner(key, Owner::Moving);
        let engine = self.engine();
        match key {
            LEDGER => {
                engine.close_ledger();
            }
            REBALANCER => {}
            shard => {
                engine.close_shard(shard as usize);
            }
        }
        let passed = match membership.hand_over(key, to) {
            Ok(passed) => passed,
            Err(e) => {
                tracing::warn!(error = %e, key, "handing over failed; keeping the shard");
                false
            }
        };
        if !passed {
            // Still ours (or already lost): serve it again if still ours.
            let _ = membership.cancel_handoff(key);
            self.set_owner(key, Owner::Nobody);
            self.open(membership, key);
            return false;
        }
        self.set_owner(key, Owner::Node(to.to_string()));
        if let Some(peer) = self.peer(to) {
            self.runtime.spawn(async move {
                let _ = peer.ask(Ask::Open { shard: key }).await;
            });
        }
        let pause = started.elapsed().as_micros() as u64;
        self.stats.handovers.fetch_add(1, Ordering::Relaxed);
        self.stats
            .handover_pause_max_us
            .fetch_max(pause, Ordering::Relaxed);
        tracing::info!(key, %to, pause_us = pause, "handed over");
        true
    }

    // ---- draining --------------------------------------------------------

    /// Hands every shard here to the other live nodes, one at a time
    /// (blocking; call it off the async runtime). Returns how many were
    /// handed over. With no other node alive nothing moves.
    pub fn drain_shards(&self, membership: &Membership) -> usize {
        self.draining.store(true, Ordering::Relaxed);
        // Say so in the store at once (not at the next heartbeat): no
        // handover is then passed to this node any more.
        let internal = self.config.internal.to_string();
        if let Err(e) = membership.heartbeat(&self.config.api, &internal, true, 0.0) {
            tracing::warn!(error = %e, "marking this node draining failed");
        }
        let mut moved = 0;
        // Until nothing runs here: a move to this node asked just before
        // the others learnt it drains may still land (a few rounds).
        let deadline = Instant::now() + self.config.lease * 4;
        while let Some(shard) = self.engine().shards_here().first().copied() {
            if Instant::now() > deadline {
                tracing::warn!(left = ?self.engine().shards_here(), "draining: shards still here; their leases will lapse");
                break;
            }
            let Some(to) = self.least_loaded_other() else {
                break;
            };
            // Wait for any job on this shard (a rebalance) to finish.
            while lock(&self.busy).contains(&(shard as i32)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            lock(&self.busy).insert(shard as i32);
            if self.hand_over(membership, shard as i32, &to) {
                moved += 1;
            } else {
                std::thread::sleep(self.tick());
            }
            lock(&self.busy).remove(&(shard as i32));
        }
        moved
    }

    /// Hands the ledger (and with it the payments) to another node.
    pub fn drain_ledger(&self, membership: &Membership) -> bool {
        if self.engine().ledger().is_none() {
            return false;
        }
        let Some(to) = self.least_loaded_other() else {
            return false;
        };
        lock(&self.busy).insert(LEDGER);
        let moved = self.hand_over(membership, LEDGER, &to);
        lock(&self.busy).remove(&LEDGER);
        moved
    }

    /// Stops heartbeating; the node's row and leases go. First it lingers
    /// for a few heartbeats, answering "not here", so the other nodes learn
    /// where its shards went before it stops answering at all.
    pub fn leave(&self, membership: &Membership) {
        std::thread::sleep(self.tick() * 3);
        self.stopped.store(true, Ordering::Relaxed);
        if let Err(e) = membership.leave() {
            tracing::warn!(error = %e, "leaving the cluster failed; the leases will lapse");
        }
    }

    fn least_loaded_other(&self) -> Option<String> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut counts: HashMap<&str, usize> = routes
            .nodes
            .values()
            .filter(|n| n.name != self.config.name && !n.draining)
            .map(|n| (n.name.as_str(), 0))
            .collect();
        for owner in routes.owners.values() {
            if let Owner::Node(name) = owner {
                if let Some(c) = counts.get_mut(name.as_str()) {
                    *c += 1;
                }
            }
        }
        counts
            .into_iter()
            .min_by_key(|(n, c)| (*c, *n))
            .map(|(n, _)| n.to_string())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    // ---- the board -------------------------------------------------------

    async fn publish_board(self: Arc<Self>) {
        let mut sent: HashMap<mall_core::Sku, (usize, (u32, u32, u32))> = HashMap::new();
        // Per peer: how many of each SKU's buyers it has, and the peer's
        // connection count when they were sent (a new connection may have
        // lost frames: everything again).
        let mut peers_sent: HashMap<String, (u64, HashMap<mall_core::Sku, usize>)> = HashMap::new();
        let mut every = tokio::time::interval(Duration::from_millis(50));
        let mut round = 0u64;
        loop {
            every.tick().await;
            if self.stopped.load(Ordering::Relaxed) {
                return;
            }
            round += 1;
            let full = round.is_multiple_of(40);
            let engine = self.engine();
            let here: HashSet<usize> = engine.shards_here().into_iter().collect();
            if here.is_empty() {
                continue;
            }
            let mut changed = Vec::new();
            for entry in engine.board().list(None, None, usize::MAX) {
                if !here.contains(&entry.shard) {
                    continue;
                }
                let counters = entry.live.load();
                let ptr = Arc::as_ptr(&entry) as usize;
                let last = sent.get(&entry.item.sku);
                let item_changed = last.is_none_or(|(p, _)| *p != ptr);
                if full || item_changed || last.is_none_or(|(_, c)| *c != counters) {
                    sent.insert(entry.item.sku, (ptr, counters));
                    changed.push((entry, counters, full || item_changed));
                }
            }
            let names = self.other_nodes();
            for name in names {
                let Some(peer) = self.peer(&name) else {
                    continue;
                };
                let connects = peer.connects.load(Ordering::Relaxed);
                let state = peers_sent.entry(name).or_default();
                let fresh = state.0 != connects;
                if fresh {
                    *state = (connects, HashMap::new());
                }
                let mut updates = Vec::new();
                for (entry, counters, with_item) in &changed {
                    let from = state.1.get(&entry.item.sku).copied().unwrap_or(0);
                    let (buyers, upto) = entry.live.buyers_since(from);
                    state.1.insert(entry.item.sku, upto);
                    updates.push(BoardUpdate {
                        shard: entry.shard,
                        sku: entry.item.sku,
                        item: (*with_item || fresh).then(|| entry.item.clone()),
                        available: counters.0,
                        held: counters.1,
                        sold: counters.2,
                        buyers_from: from,
                        buyers,
                    });
                }
                if fresh {
                    // Everything else too, for a peer met on a new connection.
                    for entry in engine.board().list(None, None, usize::MAX) {
                        if !here.contains(&entry.shard) || state.1.contains_key(&entry.item.sku) {
                            continue;
                        }
                        let counters = entry.live.load();
                        let (buyers, upto) = entry.live.buyers_since(0);
                        state.1.insert(entry.item.sku, upto);
                        updates.push(BoardUpdate {
                            shard: entry.shard,
                            sku: entry.item.sku,
                            item: Some(entry.item.clone()),
                            available: counters.0,
                            held: counters.1,
                            sold: counters.2,
                            buyers_from: 0,
                            buyers,
                        });
                    }
                }
                if !updates.is_empty() {
                    peer.publish(updates);
                }
            }
        }
    }

    /// Counters another node published for its shards. Buyers first, then
    /// the counters: an edge never sees a sold-out count without the
    /// buyers that led to it.
    pub(crate) fn take_board(&self, updates: Vec<BoardUpdate>) {
        let engine = self.engine();
        let board = engine.board();
        for u in updates {
            if engine.runs_here(u.shard) {
                continue;
            }
            {
                let mut edge = lock(&self.edge);
                let known = edge.entry(u.sku).or_default();
                if u.buyers_from == 0 {
                    // From the start (a new connection, or a new owner).
                    known.buyers.clear();
                    known.have = 0;
                    known.complete = true;
                }
                if u.buyers_from <= known.have && known.complete {
                    known.buyers.extend(u.buyers.iter().copied());
                    known.have = known.have.max(u.buyers_from + u.buyers.len());
                } else if u.buyers_from > known.have {
                    // A gap: until everything comes again, never refuse here.
                    known.complete = false;
                }
            }
            let known = board.get(u.sku);
            match u.item {
                Some(item) if known.as_ref().is_none_or(|e| e.item != item) => {
                    let live = Arc::new(Live::default());
                    live.store(u.available, u.held, u.sold);
                    board.put(u.shard, item, live);
                }
                _ => {
                    if let Some(entry) = known {
                        entry.live.store(u.available, u.held, u.sold);
                    }
                }
            }
        }
    }

    /// Sold out at the edge ([`Engine::sold_out_to`]), with the buyers the
    /// owner published: unknown while they came with a gap.
    fn sold_out_here(&self, command: &Command) -> bool {
        self.engine().sold_out_to(command, |entry, user| {
            let edge = lock(&self.edge);
            let known = edge.get(&entry.item.sku).filter(|k| k.complete)?;
            Some(known.buyers.contains(&user))
        })
    }
}

/// What this node knows of another node's SKU: who bought it.
#[derive(Default)]
struct EdgeItem {
    buyers: HashSet<u64>,
    /// Buyers received, counted from the owner's first.
    have: usize,
    /// Every buyer from the first on arrived (no gap).
    complete: bool,
}

impl Elsewhere for Node {
    fn submit(&self, shard: usize, command: Command) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        if self.sold_out_here(&command) {
            self.stats.refused_here.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Reply::Refused(mall_core::Refusal::SoldOut));
            return rx;
        }
        // The node is always held in an Arc (see `Node::new`).
        let me = self.arc();
        self.runtime.spawn(async move {
            let _ = tx.send(me.forward(shard, command).await);
        });
        rx
    }
}

impl Node {
    fn arc(&self) -> Arc<Node> {
        self.me
            .upgrade()
            .expect("a node lives in an Arc while it serves")
    }
}
