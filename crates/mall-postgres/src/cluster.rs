//! Membership and shard leases of a cluster, in the store's first server.
//!
//! Every node heartbeats its row in `cluster_nodes` and renews the leases
//! it holds in `shard_leases`, in one transaction, on a connection of its
//! own. Times are the server's (`now()`), so the nodes' clocks never have
//! to agree. A lease is who *should* serve a shard; the shard's epoch
//! (`shard_epochs`, checked in every commit's transaction) is who *can*
//! write it: a node that lost its lease while paused is fenced the moment
//! the next owner opens the shard.
//!
//! Lease keys: shard `0..n`, [`LEDGER`] for the ledger, [`REBALANCER`] for
//! the node allowed to plan moves.

use crate::pool::Pool;
use crate::{Error, PgStore};
use mall_engine::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// The ledger's lease key (as its `shard_epochs` key).
pub const LEDGER: i32 = -1;
/// The rebalancer's lease key: its holder alone plans shard moves.
pub const REBALANCER: i32 = -2;

/// A node as the cluster sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    pub name: String,
    /// Where clients reach it.
    pub api: String,
    /// Where the other nodes reach it.
    pub internal: String,
    /// Milliseconds since its last heartbeat, by the server's clock.
    pub heartbeat_age_ms: i64,
    pub draining: bool,
    /// Requests per second it reported with its last heartbeat.
    pub load: f64,
}

/// One lease as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRow {
    pub key: i32,
    pub owner: Option<String>,
    /// Milliseconds until it lapses (negative: lapsed).
    pub expires_in_ms: i64,
    /// A planned move: the owner hands it to this node.
    pub handoff_to: Option<String>,
    /// The shard's epoch (how many times it was taken over).
    pub epoch: i64,
    /// Planned moves so far.
    pub moves: i64,
}

/// What a heartbeat renewed.
#[derive(Clone, Debug, Default)]
pub struct Renewed {
    /// The keys this node still holds (renewed for a full lease).
    pub held: Vec<i32>,
    /// Planned moves asked of this node: (key, to whom).
    pub handoffs: Vec<(i32, String)>,
}

/// The whole cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub nodes: Vec<NodeRow>,
    pub leases: Vec<LeaseRow>,
}

/// One node's membership: its own connection to the store's first server.
pub struct Membership {
    pool: Arc<Pool>,
    node: String,
    lease_ms: i64,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PgStore {
    /// Membership of node `node`, with leases of `lease` length, on a
    /// connection of its own (a busy pool never delays a heartbeat).
    pub fn membership(&self, node: &str, lease: Duration) -> Membership {
        let first = self.first();
        Membership {
            pool: Arc::new(Pool::new(first.config.clone(), first.label.clone(), 1)),
            node: node.to_string(),
            lease_ms: ms(lease),
        }
    }
}

impl Membership {
    /// Announces the node (or says it is alive) and renews every lease it
    /// holds, in one transaction.
    pub fn heartbeat(
        &self,
        api: &str,
        internal: &str,
        draining: bool,
        load: f64,
    ) -> Result<Renewed, StoreError> {
        Ok(self.pool.with(|conn| {
            let mut tx = conn.client.transaction()?;
            tx.execute(
                "INSERT INTO cluster_nodes (name, api, internal, heartbeat_at, draining, load)
                 VALUES ($1, $2, $3, now(), $4, $5)
                 ON CONFLICT (name) DO UPDATE SET api = EXCLUDED.api, internal = EXCLUDED.internal,
                   heartbeat_at = now(), draining = EXCLUDED.draining, load = EXCLUDED.load",
                &[&self.node, &api, &internal, &draining, &load],
            )?;
            let rows = tx.query(
                "UPDATE shard_leases SET expires_at = now() + $2 * interval '1 millisecond'
                 WHERE owner = $1 RETURNING shard, handoff_to",
                &[&self.node, &(self.lease_ms as f64)],
            )?;
            tx.commit()?;
            let mut renewed = Renewed::default();
            for row in rows {
                let key: i32 = row.try_get(0)?;
                renewed.held.push(key);
                if let Some(to) = row.try_get::<_, Option<String>>(1)? {
                    renewed.handoffs.push((key, to));
                }
            }
            renewed.held.sort_unstable();
            Ok(renewed)
        })?)
    }

    /// Every node and lease, with ages by the server's clock.
    pub fn view(&self) -> Result<View, StoreError> {
        Ok(self.pool.read(|conn| {
            let nodes = conn
                .client
                .query(
                    "SELECT name, api, internal,
                        (extract(epoch FROM now() - heartbeat_at) * 1000)::BIGINT, draining, load
                     FROM cluster_nodes ORDER BY name",
                    &[],
                )?
                .into_iter()
                .map(|r| {
                    Ok(NodeRow {
                        name: r.try_get(0)?,
                        api: r.try_get(1)?,
                        internal: r.try_get(2)?,
                        heartbeat_age_ms: r.try_get(3)?,
                        draining: r.try_get(4)?,
                        load: r.try_get(5)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let leases = conn
                .client
                .query(
                    "SELECT l.shard, l.owner,
                        (extract(epoch FROM l.expires_at - now()) * 1000)::BIGINT,
                        l.handoff_to, COALESCE(e.epoch, 0), l.moves
                     FROM shard_leases l LEFT JOIN shard_epochs e ON e.shard = l.shard
                     ORDER BY l.shard",
                    &[],
                )?
                .into_iter()
                .map(|r| {
                    Ok(LeaseRow {
                        key: r.try_get(0)?,
                        owner: r.try_get(1)?,
                        expires_in_ms: r.try_get(2)?,
                        handoff_to: r.try_get(3)?,
                        epoch: r.try_get(4)?,
                        moves: r.try_get(5)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(View { nodes, leases })
        })?)
    }

    /// Takes `key` if nobody holds it or its lease lapsed. `true`: ours now.
    pub fn acquire(&self, key: i32) -> Result<bool, StoreError> {
        Ok(self.pool.with(|conn| {
            let n = conn.client.execute(
                "INSERT INTO shard_leases (shard, owner, expires_at)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                 ON CONFLICT (shard) DO UPDATE
                   SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at, handoff_to = NULL
                   WHERE shard_leases.owner IS NULL OR shard_leases.expires_at < now()",
                &[&key, &self.node, &(self.lease_ms as f64)],
            )?;
            Ok(n == 1)
        })?)
    }

    /// Does this node hold `key` now (its lease not lapsed)?
    pub fn holds(&self, key: i32) -> Result<bool, StoreError> {
        Ok(self.pool.read(|conn| {
            Ok(conn
                .client
                .query_opt(
                    "SELECT 1 FROM shard_leases WHERE shard = $1 AND owner = $2 AND expires_at > now()",
                    &[&key, &self.node],
                )?
                .is_some())
        })?)
    }

    /// A planned move, done by the owner once the shard is closed here:
    /// the lease passes to `to` (who opens the shard, bumping its epoch),
    /// unless `to` has started draining meanwhile (then `false`).
    pub fn hand_over(&self, key: i32, to: &str) -> Result<bool, StoreError> {
        Ok(self.pool.with(|conn| {
            let n = conn.client.execute(
                "UPDATE shard_leases SET owner = $3, handoff_to = NULL, moves = moves + 1,
                   expires_at = now() + $4 * interval '1 millisecond'
                 WHERE shard = $1 AND owner = $2
                   AND EXISTS (SELECT 1 FROM cluster_nodes WHERE name = $3 AND NOT draining)",
                &[&key, &self.node, &to, &(self.lease_ms as f64)],
            )?;
            Ok(n == 1)
        })?)
    }

    /// The rebalancer asks `from` to hand `key` to `to` (one move at a time:
    /// refused while another is asked of that shard).
    pub fn ask_handoff(&self, key: i32, from: &str, to: &str) -> Result<bool, StoreError> {
        Ok(self.pool.with(|conn| {
            let n = conn.client.execute(
                "UPDATE shard_leases SET handoff_to = $3
                 WHERE shard = $1 AND owner = $2 AND handoff_to IS NULL",
                &[&key, &from, &to],
            )?;
            Ok(n == 1)
        })?)
    }

    /// Withdraws a planned move (its target left or started draining).
    pub fn cancel_handoff(&self, key: i32) -> Result<(), StoreError> {
        Ok(self.pool.with(|conn| {
            conn.client.execute(
                "UPDATE shard_leases SET handoff_to = NULL WHERE shard = $1",
                &[&key],
            )?;
            Ok(())
        })?)
    }

    /// The node leaves: its row goes (its leases were handed over or released).
    pub fn leave(&self) -> Result<(), StoreError> {
        Ok(self.pool.with(|conn| {
            conn.client.execute(
                "UPDATE shard_leases SET owner = NULL, handoff_to = NULL, expires_at = now()
                 WHERE owner = $1",
                &[&self.node],
            )?;
            conn.client
                .execute("DELETE FROM cluster_nodes WHERE name = $1", &[&self.node])?;
            Ok(())
        })?)
    }
}
