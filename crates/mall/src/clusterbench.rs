//! `mall bench cluster`: throughput of 1, 2 and 3 nodes on this machine,
//! and the cost of forwarding: the same load sent only to each SKU's owner,
//! then to nodes in turn (two of three requests then take a hop).

use anyhow::{Context, Result};
use axum::http::Method;
use mall_rush::http::{Conn, Target};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ClusterBenchArgs {
    /// Clusters of 1 up to this many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes_max: usize,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Keep-alive connections of the load generator (closed loop).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Shards of the store.
    #[arg(long, default_value_t = 24)]
    pub shards: usize,
    #[arg(long, default_value_t = 8_100)]
    pub port: u16,
    /// Then, on the largest cluster: kill a node (-9) this many times,
    /// timing each failover (kill to the first success on a moved shard),
    /// and start it again (timing each shard's handover pause as it
    /// takes its share back).
    #[arg(long, default_value_t = 10)]
    pub failovers: usize,
}

struct Setup {
    /// (sku, node index owning it)
    skus: Vec<(u64, usize)>,
    sold_out: Vec<(u64, usize)>,
    tokens: Vec<String>,
    urls: Vec<String>,
}

async fn call(
    conn: &mut Conn,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> Result<Value> {
    let (status, bytes) = conn
        .send(
            method,
            path,
            Some(token),
            None,
            Some(&body),
            Duration::from_secs(30),
        )
        .await?;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
    Ok(v)
}

async fn setup(cluster: &crate::cluster::LocalCluster, shards: usize) -> Result<Setup> {
    let urls: Vec<String> = cluster.nodes.iter().map(|(_, u, _)| u.clone()).collect();
    let mut conn = Conn::new(Target::parse(&urls[0], false)?);
    let admin = cluster.admin_token.as_str();
    let m = call(
        &mut conn,
        Method::POST,
        "/v1/admin/merchants",
        admin,
        json!({"name": format!("bench {}", std::process::id())}),
    )
    .await?;
    let now = mall_core::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64,
    );
    let mut items = Vec::new();
    // Items with stock to spare (every snap-up succeeds and commits), on
    // every shard; and one sold out per shard (refusals only).
    for i in 0..shards * 4 {
        let stock = if i % 4 == 3 { 0 } else { 50_000_000 };
        let body = json!({"merchant_id": m["id"], "title": format!("bench {i}"), "category": "electronics",
            "price_fen": 100, "stock": stock, "per_user_limit": 1000, "opens_at_ms": now.0 - 1000, "closes_at_ms": now.0 + 86_400_000});
        let item = call(&mut conn, Method::POST, "/v1/admin/items", admin, body).await?;
        items.push((item["sku"].as_u64().context("a sku")?, stock));
    }
    let users = call(
        &mut conn,
        Method::POST,
        "/v1/admin/users/bulk",
        admin,
        json!({"count": 5000}),
    )
    .await?;
    let tokens = users["users"]
        .as_array()
        .context("users")?
        .iter()
        .filter_map(|u| u["token"].as_str().map(String::from))
        .collect();
    let pg = mall_postgres::PgStore::open_existing(&crate::store::split_stores(&cluster.store), 1)?;
    let view = pg
        .membership("bench", crate::cluster::LEASE_DEFAULT)
        .view()?;
    let owner = |sku: u64| -> usize {
        let shard = (sku % shards as u64) as i32;
        view.leases
            .iter()
            .find(|l| l.key == shard)
            .and_then(|l| l.owner.as_ref())
            .and_then(|o| cluster.nodes.iter().position(|(n, _, _)| n == o))
            .unwrap_or(0)
    };
    Ok(Setup {
        skus: items
            .iter()
            .filter(|(_, s)| *s > 0)
            .map(|(k, _)| (*k, owner(*k)))
            .collect(),
        sold_out: items
            .iter()
            .filter(|(_, s)| *s == 0)
            .map(|(k, _)| (*k, owner(*k)))
            .collect(),
        tokens,
        urls,
    })
}

/// Closed-loop load for `seconds`: (answers/s, hops taken share).
async fn load(
    setup: &Setup,
    sold_out: bool,
    to_owner: bool,
    connections: usize,
    seconds: f64,
) -> Result<(f64, f64, u64)> {
    let skus = if sold_out {
        &setup.sold_out
    } else {
        &setup.skus
    };
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let forwarded = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mut conns: Vec<Conn> = setup
            .urls
            .iter()
            .map(|u| Target::parse(u, false).map(Conn::new))
            .collect::<Result<_, _>>()?;
        let (skus, tokens) = (skus.clone(), setup.tokens.clone());
        let (done, errors, forwarded) = (done.clone(), errors.clone(), forwarded.clone());
        let nodes = setup.urls.len();
        tasks.push(tokio::spawn(async move {
            let mut n = c as u64 * 7919;
            while Instant::now() < deadline {
                n += 1;
                let (sku, owner) = skus[(n % skus.len() as u64) as usize];
                // A node independent of the SKU (a multiplicative hash of the count).
                let node = if to_owner {
                    owner
                } else {
                    ((n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % nodes as u64) as usize
                };
                if node != owner {
                    forwarded.fetch_add(1, Ordering::Relaxed);
                }
                let token = &tokens[(n % tokens.len() as u64) as usize];
                let key = format!("b{c}-{n}");
                let body =
                    json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "1 Bench Road"});
                match conns[node]
                    .send(
                        Method::POST,
                        "/v1/orders",
                        Some(token),
                        Some(&key),
                        Some(&body),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok((s, _)) if s.as_u16() == 201 || s.as_u16() == 409 => {
                        done.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let total = done.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
    Ok((
        done.load(Ordering::Relaxed) as f64 / seconds,
        forwarded.load(Ordering::Relaxed) as f64 / total.max(1) as f64,
        errors.load(Ordering::Relaxed),
    ))
}

fn wait_even(
    cluster: &crate::cluster::LocalCluster,
    membership: &mall_postgres::cluster::Membership,
    shards: usize,
) -> Result<()> {
    let nodes = cluster.nodes.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = membership.view()?;
        let mut counts = vec![0usize; nodes];
        for l in view
            .leases
            .iter()
            .filter(|l| l.key >= 0 && l.expires_in_ms > 0)
        {
            if let Some(i) = cluster
                .nodes
                .iter()
                .position(|(n, _, _)| Some(n) == l.owner.as_ref())
            {
                counts[i] += 1;
            }
        }
        let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        if counts.iter().sum::<usize>() == shards
            && hi - lo <= 1
            && view.leases.iter().all(|l| l.handoff_to.is_none())
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "shards did not spread: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Kills a node (not the first) `rounds` times; each time, the time from
/// the kill to the first snap-up served on one of its shards; then starts
/// it again and waits for the shards to even out.
fn failovers(
    runtime: &tokio::runtime::Runtime,
    cluster: &mut crate::cluster::LocalCluster,
    membership: &mall_postgres::cluster::Membership,
    setup: &Setup,
    shards: usize,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let nodes = cluster.nodes.len();
    let mut times = Vec::new();
    let mut probe = Conn::new(Target::parse(&setup.urls[0], false)?);
    for round in 0..rounds {
        let victim = 1 + round % (nodes - 1);
        let view = membership.view()?;
        let name = cluster.nodes[victim].0.clone();
        let sku = setup
            .skus
            .iter()
            .map(|(k, _)| *k)
            .find(|k| {
                view.leases.iter().any(|l| {
                    l.key == (*k % shards as u64) as i32
                        && l.owner.as_deref() == Some(name.as_str())
                })
            })
            .context("the victim owns an item's shard")?;
        cluster.kill(victim);
        let killed = Instant::now();
        let token = setup.tokens[round].clone();
        let elapsed = runtime.block_on(async {
            let mut n = 0;
            loop {
                n += 1;
                let body = json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "1 Failover Road"});
                let key = format!("f{round}-{n}");
                let answer = probe
                    .send(Method::POST, "/v1/orders", Some(&token), Some(&key), Some(&body), Duration::from_secs(10))
                    .await;
                if let Ok((status, _)) = answer {
                    if status.as_u16() == 201 {
                        return Ok(killed.elapsed());
                    }
                }
                anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "no failover within 60 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })?;
        println!(
            "  failover {:>2}: {name} killed; its shard served again after {:.0} ms",
            round + 1,
            elapsed.as_secs_f64() * 1e3
        );
        times.push(elapsed);
        cluster.restart(victim)?;
        wait_even(cluster, membership, shards)?;
    }
    Ok(times)
}

/// Handover pauses the nodes logged (`pause_us`), from their log files.
fn handover_pauses(logs: &std::path::Path) -> Vec<Duration> {
    let mut pauses = Vec::new();
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("handed over")) {
            if let Some(us) = line
                .split("pause_us=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                pauses.push(Duration::from_micros(us));
            }
        }
    }
    pauses.sort();
    pauses
}

pub fn run(args: ClusterBenchArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=8).contains(&args.nodes_max),
        "--nodes-max must be 1 to 8"
    );
    println!(
        "mall bench cluster: 1..={} nodes on one throwaway PostgreSQL, {} shards, {} connections, {} s per row (all on this machine: {} cores)",
        args.nodes_max,
        args.shards,
        args.connections,
        args.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("  nodes  workload             sent to        answers/s  not owner  errors");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for nodes in 1..=args.nodes_max {
        let dir =
            std::env::temp_dir().join(format!("mall-bench-cluster-{}-{nodes}", std::process::id()));
        let mut cluster = crate::cluster::LocalCluster::start(
            nodes,
            &crate::store::StoreArgs::default(),
            args.port,
            args.shards,
            &dir,
            &[
                "--user-rate-per-s".into(),
                "1000000".into(),
                "--snapups-per-s-max".into(),
                "10000000".into(),
            ],
            Some(&dir.join("logs")),
        )?;
        // Wait for the shards to spread evenly.
        let pg =
            mall_postgres::PgStore::open_existing(&crate::store::split_stores(&cluster.store), 1)?;
        let membership = pg.membership("bench", crate::cluster::LEASE_DEFAULT);
        wait_even(&cluster, &membership, args.shards)?;
        let setup = runtime.block_on(setup(&cluster, args.shards))?;
        for (sold_out, workload) in [(false, "snap-ups (201)"), (true, "sold out (409)")] {
            let modes: &[(bool, &str)] = if nodes == 1 {
                &[(true, "the node")]
            } else {
                &[(true, "owners"), (false, "nodes in turn")]
            };
            for (to_owner, label) in modes {
                let (rate, hops, errors) = runtime.block_on(load(
                    &setup,
                    sold_out,
                    *to_owner,
                    args.connections,
                    args.seconds,
                ))?;
                println!("  {nodes:>5}  {workload:<19}  {label:<13}  {rate:>10.0}  {:>8.0}%  {errors:>6}", hops * 100.0);
            }
        }
        if nodes == args.nodes_max && nodes >= 2 && args.failovers > 0 {
            println!(
                "failover and handover on {nodes} nodes (lease {:?}):",
                crate::cluster::LEASE_DEFAULT
            );
            let mut times = failovers(
                &runtime,
                &mut cluster,
                &membership,
                &setup,
                args.shards,
                args.failovers,
            )?;
            times.sort();
            println!(
                "  failover (kill -9 to the first success on a moved shard), {} kills: p50 {:.0} ms, max {:.0} ms",
                times.len(),
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                times.last().unwrap().as_secs_f64() * 1e3
            );
            let pauses = handover_pauses(&dir.join("logs"));
            if !pauses.is_empty() {
                println!(
                    "  handover pause per moved shard (closed, committed, lease passed), {} moves: p50 {:.1} ms, max {:.1} ms",
                    pauses.len(),
                    percentile(&pauses, 0.5).as_secs_f64() * 1e3,
                    pauses.last().unwrap().as_secs_f64() * 1e3
                );
            }
        }
        cluster.stop();
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
