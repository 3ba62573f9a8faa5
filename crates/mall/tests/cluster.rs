//! mall as a cluster: real `mall serve --node` processes on loopback
//! sharing one real PostgreSQL, killed and stopped for real.
//!
//! - three nodes and a rush over all of them; one is killed (-9) in the
//!   middle: no acknowledged order is lost, nothing is oversold, `mall
//!   check` and `mall ledger verify` pass, and the failover time is printed;
//! - a node stopped (SIGSTOP) past its lease and woken again stores nothing
//!   under its old epoch, drops its shards and rejoins;
//! - a fourth node joins under load and takes its share (only 503 with
//!   Retry-After is allowed, and counted), then drains on SIGTERM with no
//!   failed request.
//!
//! They share the PostgreSQL of `./scripts/test.sh` (`MALL_TEST_PG`), a
//! database each; alone, each starts a throwaway server.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{agent, call, free_port, items, shoppers, start_channels, wait_for, Server, ADMIN};

const SHARDS: usize = 16;
const LEASE: &str = "1s";
const SECRET: &str = "cluster-test-secret-0123456789abcdef";

/// A database of its own on the shared PostgreSQL (or a throwaway server).
struct Db {
    url: String,
    _server: Option<mall_postgres::server::PostgresServer>,
}

fn database(name: &str) -> Db {
    match std::env::var("MALL_TEST_PG") {
        Ok(base) => {
            let mut admin =
                postgres::Client::connect(&base, postgres::NoTls).expect("MALL_TEST_PG");
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .unwrap();
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
            Db {
                url: format!("{base} dbname={name}"),
                _server: None,
            }
        }
        Err(_) => {
            let server = mall_postgres::server::PostgresServer::start()
                .unwrap_or_else(|e| panic!("this test needs PostgreSQL: {e}"));
            let url = server.create_database(name).unwrap();
            Db {
                url,
                _server: Some(server),
            }
        }
    }
}

struct Node {
    name: String,
    server: Server,
}

fn start_node(db: &Db, dir: &std::path::Path, name: &str) -> Node {
    start_node_with(db, dir, name, free_port(), &[])
}

fn start_node_with(db: &Db, dir: &std::path::Path, name: &str, port: u16, extra: &[&str]) -> Node {
    let internal = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["serve", "--node", name, "--lease", LEASE])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--internal-addr", &format!("127.0.0.1:{internal}")])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--shards",
            &SHARDS.to_string(),
        ])
        .args(["--user-rate-per-s", "100000", "--store-connections", "12"])
        .arg("--data")
        .arg(dir.join(name))
        .args(extra)
        .env("MALL_STORE", &db.url)
        .env("MALL_CLUSTER_SECRET", SECRET)
        .env("MALL_ADMIN_TOKEN", ADMIN)
        .env("MALL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start mall serve --node");
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/healthz"), "");
    Node {
        name: name.to_string(),
        server: Server { child, base },
    }
}

/// Shards (and the ledger, key -1) per owner, as the store records them.
fn owners(db: &Db) -> BTreeMap<String, Vec<i32>> {
    let mut client = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT shard, owner FROM shard_leases WHERE owner IS NOT NULL AND expires_at > now() AND shard >= -1",
            &[],
        )
        .unwrap()
    {
        out.entry(row.get(1)).or_default().push(row.get(0));
    }
    out
}

/// Every lease's (epoch, planned moves), by key: unchanged means no shard
/// changed hands.
fn epochs(db: &Db) -> BTreeMap<i32, (i64, i64)> {
    let mut client = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    client
        .query(
            "SELECT l.shard, COALESCE(e.epoch, 0), l.moves FROM shard_leases l LEFT JOIN shard_epochs e ON e.shard = l.shard",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Waits until `names` share every shard, no two differing by more than one.
fn wait_balanced(db: &Db, names: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let owners = owners(db);
        let counts: Vec<usize> = names
            .iter()
            .map(|n| {
                owners
                    .get(*n)
                    .map_or(0, |k| k.iter().filter(|k| **k >= 0).count())
            })
            .collect();
        let total: usize = counts.iter().sum();
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        if total == SHARDS && hi - lo <= 1 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "shards not balanced over {names:?} within {within:?}: {owners:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One snap-up as the shopper saw it.
#[derive(Clone, Debug)]
struct Seen {
    node: usize,
    token: String,
    sku: u64,
    status: u16,
    code: String,
    order: Option<u64>,
    retry_after: bool,
    at: Instant,
}

/// Shoppers snapping up over `urls` (each request to the next node; a node
/// that refuses connections is skipped, as a client would) until stopped.
struct Rush {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Transport failures per node (a killed node's, expected).
    unreachable: Arc<Mutex<BTreeMap<usize, usize>>>,
}

fn rush(
    urls: Arc<Mutex<Vec<Option<String>>>>,
    skus: Vec<u64>,
    people: Vec<(u64, String)>,
    threads: usize,
) -> Rush {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let unreachable = Arc::new(Mutex::new(BTreeMap::new()));
    let handles = (0..threads)
        .map(|t| {
            let (urls, skus, people) = (urls.clone(), skus.clone(), people.clone());
            let (stop, seen, unreachable) = (stop.clone(), seen.clone(), unreachable.clone());
            std::thread::spawn(move || {
                let a = agent();
                let mut n = t;
                while !stop.load(Ordering::SeqCst) {
                    n += threads;
                    let (_, token) = &people[n % people.len()];
                    let sku = skus[(n / people.len() + n) % skus.len()];
                    let live: Vec<(usize, String)> = urls
                        .lock()
                        .unwrap()
                        .iter()
                        .enumerate()
                        .filter_map(|(i, u)| u.clone().map(|u| (i, u)))
                        .collect();
                    let (node, url) = &live[n % live.len()];
                    let key = format!("c-{t}-{n}");
                    let body = json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "11 Singles Road"});
                    let response = a
                        .post(&format!("{url}/v1/orders"))
                        .header("authorization", &format!("Bearer {token}"))
                        .header("idempotency-key", &key)
                        .send_json(body);
                    let Ok(mut response) = response else {
                        *unreachable.lock().unwrap().entry(*node).or_insert(0) += 1;
                        continue;
                    };
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
                    seen.lock().unwrap().push(Seen {
                        node: *node,
                        token: token.clone(),
                        sku,
                        status,
                        code: body["error"]["code"].as_str().unwrap_or("").into(),
                        order: body["id"].as_u64(),
                        retry_after,
                        at: Instant::now(),
                    });
                }
            })
        })
        .collect();
    Rush {
        stop,
        seen,
        threads: handles,
        unreachable,
    }
}

impl Rush {
    fn finish(self) -> (Vec<Seen>, BTreeMap<usize, usize>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let unreachable = std::mem::take(&mut *self.unreachable.lock().unwrap());
        (seen, unreachable)
    }
}

/// Every answer is an order, a business refusal, or a 503 with
/// `Retry-After` saying the store (or the node) is away: never a false
/// success, never another error.
fn assert_answers(seen: &[Seen]) {
    for s in seen {
        assert!(
            [201, 409, 503].contains(&s.status),
            "unexpected {} {}",
            s.status,
            s.code
        );
        if s.status == 503 {
            assert!(s.retry_after, "a 503 without Retry-After: {}", s.code);
            assert!(
                ["store_unavailable", "overloaded"].contains(&s.code.as_str()),
                "503 {}",
                s.code
            );
        }
    }
}

fn tally(seen: &[Seen]) -> BTreeMap<(u16, String), usize> {
    let mut t = BTreeMap::new();
    for s in seen {
        *t.entry((s.status, s.code.clone())).or_insert(0) += 1;
    }
    t
}

/// Every acknowledged order is there, on its SKU, read through `url`.
fn assert_durable(url: &str, seen: &[Seen]) {
    let a = agent();
    for s in seen.iter().filter(|s| s.status == 201) {
        let id = s.order.expect("a 201 names its order");
        // A read that fails in transport (a pool still finding the new
        // primary) proves nothing either way: asked again, a few times.
        let read = || {
            call(
                &a,
                "GET",
                &format!("{url}/v1/orders/{id}"),
                &s.token,
                None,
                None,
            )
        };
        let (status, body) = (0..4)
            .find_map(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_secs(1));
                }
                read()
            })
            .unwrap_or_else(|| panic!("order {id} could not be read through {url}"));
        assert_eq!(status, 200, "acknowledged order {id} is gone: {body}");
        assert_eq!(body["sku"].as_u64(), Some(s.sku), "order {id}: {body}");
    }
}

/// `mall check` and `mall ledger verify` on the store: conservation and
/// per-shopper limits of every item, and the ledger's balance.
fn assert_store_checks(db: &Db, dir: &std::path::Path) {
    for args in [&["check"][..], &["ledger", "verify"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_mall"))
            .args(args)
            .arg("--data")
            .arg(dir.join("check"))
            .env("MALL_STORE", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mall {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The nodes' URLs as the rush takes them (a gone node: `None`).
fn urls_of(nodes: &[Node]) -> Arc<Mutex<Vec<Option<String>>>> {
    Arc::new(Mutex::new(
        nodes.iter().map(|n| Some(n.server.base.clone())).collect(),
    ))
}

fn three_nodes(db: &Db, dir: &std::path::Path) -> Vec<Node> {
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| start_node(db, dir, n))
        .collect();
    wait_balanced(db, &["n1", "n2", "n3"], Duration::from_secs(60));
    nodes
}

#[test]
fn three_nodes_rush_and_one_is_killed() {
    let db = database("cluster_kill");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(&db, dir.path());
    // Items and shoppers made through one node, used through all.
    let skus = items(&nodes[0].server, 32, 300, 990);
    let people = shoppers(&nodes[1].server, 600);
    let urls = urls_of(&nodes);
    let calm = epochs(&db);
    let running = rush(urls.clone(), skus.clone(), people.clone(), 6);
    std::thread::sleep(Duration::from_millis(1_500));
    // A rush with no kill moves nothing: busy nodes keep their leases.
    assert_eq!(
        epochs(&db),
        calm,
        "a shard changed hands during a rush with no failure"
    );
    // Kill the node with the most shards (not the one we read through).
    let before = owners(&db);
    let victim = (1..3)
        .max_by_key(|i| before.get(&nodes[*i].name).map_or(0, Vec::len))
        .unwrap();
    let victim_shards: Vec<i32> = before[&nodes[victim].name].clone();
    let victim_sku = *skus
        .iter()
        .find(|s| victim_shards.contains(&((**s as usize % SHARDS) as i32)))
        .expect("the victim owns some item's shard");
    urls.lock().unwrap()[victim] = None;
    nodes[victim].server.kill_9();
    let killed = Instant::now();
    // Failover: until an item of the dead node's shards is served again.
    let a = agent();
    let failover = loop {
        let (status, body) = call(
            &a,
            "POST",
            &nodes[0].server.url("/v1/orders"),
            ADMIN,
            Some(json!({"sku": victim_sku, "quantity": 1, "payment": "cod", "address": "1 Failover Way"})),
            Some("failover-probe"),
        )
        .unwrap();
        if status != 503 {
            assert!(
                [201, 409].contains(&status),
                "after failover: {status} {body}"
            );
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(50),
            "no failover within 50 s (target 5 s)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("failover after kill -9: {failover:?} (lease {LEASE})");
    std::thread::sleep(Duration::from_millis(1_000));
    let (seen, unreachable) = running.finish();
    println!(
        "answers: {:?}; transport failures by node: {unreachable:?}",
        tally(&seen)
    );
    assert!(
        seen.iter().any(|s| s.status == 201 && s.at < killed),
        "orders before the kill"
    );
    assert!(
        seen.iter()
            .any(|s| s.status == 201 && s.at > killed + failover),
        "orders after the failover"
    );
    assert_answers(&seen);
    for node in unreachable.keys() {
        assert_eq!(*node, victim, "only the killed node may be unreachable");
    }
    let survivor = nodes[0].server.base.clone();
    assert_durable(&survivor, &seen);
    // The survivors hold every shard and the ledger.
    let after = owners(&db);
    let held: usize = after
        .values()
        .map(|k| k.iter().filter(|k| **k >= 0).count())
        .sum();
    assert_eq!(held, SHARDS, "every shard has a live owner: {after:?}");
    assert!(
        !after.contains_key(&nodes[victim].name),
        "the dead node holds nothing: {after:?}"
    );
    drop(nodes);
    assert_store_checks(&db, dir.path());
}

#[test]
fn a_node_stopped_past_its_lease_is_fenced_and_rejoins() {
    let db = database("cluster_sigstop");
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&db, dir.path());
    let skus = items(&nodes[0].server, 16, 300, 990);
    let people = shoppers(&nodes[0].server, 200);
    // Node 2, if it holds the ledger, would stop the process when it loses
    // it; pick a node without the ledger.
    let owners_before = owners(&db);
    let paused = (1..3)
        .find(|i| !owners_before[&nodes[*i].name].contains(&-1))
        .unwrap();
    let pid = nodes[paused].server.child.id().to_string();
    let urls = urls_of(&nodes);
    // Shoppers keep sending to all three, the paused one included: what it
    // got before and during the pause it handles when it wakes.
    let running = rush(urls.clone(), skus.clone(), people.clone(), 6);
    std::thread::sleep(Duration::from_millis(800));
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(3_000)); // 3 leases
    let taken = owners(&db);
    assert!(
        !taken.contains_key(&nodes[paused].name),
        "a paused node's leases lapse and its shards move: {taken:?}"
    );
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // It notices, drops its shards, and rejoins: it takes shards again.
    let rejoined = wait_balanced(&db, &["n1", "n2", "n3"], Duration::from_secs(60));
    println!("rejoined and rebalanced {rejoined:?} after waking");
    std::thread::sleep(Duration::from_millis(500));
    let (seen, unreachable) = running.finish();
    println!(
        "answers: {:?}; transport failures: {unreachable:?}",
        tally(&seen)
    );
    assert_answers(&seen);
    // What the woken node acknowledged is durable: nothing it applied under
    // its old epoch was acknowledged without being stored.
    assert_durable(&nodes[0].server.base, &seen);
    assert!(
        seen.iter().any(|s| s.node == paused && s.status == 201),
        "the rejoined node serves"
    );
    drop(nodes);
    assert_store_checks(&db, dir.path());
}

#[test]
fn a_fourth_node_joins_under_load_and_then_drains() {
    let db = database("cluster_elastic");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(&db, dir.path());
    let skus = items(&nodes[0].server, 32, 1_000, 990);
    let people = shoppers(&nodes[0].server, 600);
    let urls = urls_of(&nodes);
    let running = rush(urls.clone(), skus.clone(), people.clone(), 6);
    std::thread::sleep(Duration::from_millis(800));
    nodes.push(start_node(&db, dir.path(), "n4"));
    urls.lock()
        .unwrap()
        .push(Some(nodes[3].server.base.clone()));
    let joined = wait_balanced(&db, &["n1", "n2", "n3", "n4"], Duration::from_secs(100));
    println!("a fourth node took its share in {joined:?} (target 10 s)");
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM: it hands its shards over and exits; shoppers move on.
    let drain_started = Instant::now();
    let n4 = nodes.pop().unwrap();
    n4.server.stop();
    urls.lock().unwrap()[3] = None;
    let drained = drain_started.elapsed();
    println!("the fourth node drained and exited in {drained:?}");
    wait_balanced(&db, &["n1", "n2", "n3"], Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let (seen, unreachable) = running.finish();
    let t = tally(&seen);
    println!("answers: {t:?}; transport failures by node: {unreachable:?}");
    let joining = seen
        .iter()
        .filter(|s| s.status == 503 && s.at < drain_started)
        .count();
    let draining: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.status == 503 && s.at >= drain_started)
        .collect();
    println!(
        "503 with Retry-After while a node joined: {joining}; while it drained: {}",
        draining.len()
    );
    // A planned handover retries inside the cluster: a drain fails nothing.
    let described: Vec<String> = draining
        .iter()
        .map(|s| {
            format!(
                "node {} sku {} at +{:?}",
                s.node,
                s.sku,
                s.at - drain_started
            )
        })
        .collect();
    assert!(
        draining.is_empty(),
        "requests failed during the drain (it took {drained:?}): {described:?}"
    );
    assert_answers(&seen);
    assert!(
        seen.iter().filter(|s| s.node == 3).any(|s| s.status == 201),
        "the fourth node served"
    );
    assert_durable(&nodes[0].server.base, &seen);
    drop(nodes);
    assert_store_checks(&db, dir.path());
}

#[test]
fn payments_run_where_the_ledger_runs_and_a_callback_to_another_node_counts_once() {
    const PRICE: i64 = 2_499;
    const PAYERS: usize = 60;
    let db = database("cluster_pay");
    let dir = tempfile::tempdir().unwrap();
    let channels = start_channels(dir.path(), None);
    let file = channels.file.to_str().unwrap().to_string();
    // Providers call back to n3, which never holds the ledger: n1 starts
    // alone and takes it; the others join after.
    let n3_port = free_port();
    let callback = format!("http://127.0.0.1:{n3_port}");
    let with_channels = [
        "--channels",
        file.as_str(),
        "--callback-base",
        callback.as_str(),
    ];
    let mut nodes = vec![start_node_with(
        &db,
        dir.path(),
        "n1",
        free_port(),
        &with_channels,
    )];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !owners(&db).get("n1").is_some_and(|k| k.contains(&-1)) {
        assert!(Instant::now() < deadline, "n1 did not take the ledger");
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes.push(start_node_with(
        &db,
        dir.path(),
        "n2",
        free_port(),
        &with_channels,
    ));
    nodes.push(start_node_with(
        &db,
        dir.path(),
        "n3",
        n3_port,
        &with_channels,
    ));
    wait_balanced(&db, &["n1", "n2", "n3"], Duration::from_secs(60));
    let skus = items(&nodes[1].server, 4, 100, PRICE);
    let people = shoppers(&nodes[2].server, PAYERS);
    let a = agent();
    let mut paid = Vec::new();
    for (i, (_, token)) in people.iter().enumerate() {
        // Snapped up on one node, paid on the next.
        let on = &nodes[i % 3].server;
        let (status, order) = call(
            &a,
            "POST",
            &on.url("/v1/orders"),
            token,
            Some(json!({"sku": skus[i % 4], "quantity": 1, "payment": "online", "address": "5 Ledger Lane"})),
            Some(&format!("o-{i}")),
        )
        .unwrap();
        assert_eq!(status, 201, "{order}");
        let id = order["id"].as_u64().unwrap();
        let method = if i % 2 == 0 { "third_party" } else { "card" };
        let pay_on = &nodes[(i + 1) % 3].server;
        let (status, answer) = call(
            &a,
            "POST",
            &pay_on.url(&format!("/v1/orders/{id}/payments")),
            token,
            Some(json!({"method": method})),
            Some(&format!("p-{i}")),
        )
        .unwrap();
        assert!(
            [200, 202].contains(&status),
            "paying {id} on {}: {status} {answer}",
            pay_on.base
        );
        paid.push((id, token.clone(), answer));
    }
    // Every order is paid, as any node shows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, (id, token, _)) in paid.iter().enumerate() {
        loop {
            let (_, order) = call(
                &a,
                "GET",
                &nodes[i % 3].server.url(&format!("/v1/orders/{id}")),
                token,
                None,
                None,
            )
            .unwrap();
            if order["status"] == "paid" {
                break;
            }
            assert!(Instant::now() < deadline, "order {id} not paid: {order}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The providers took each order's money once.
    assert_eq!(
        common::kept(&channels),
        PRICE * PAYERS as i64,
        "charged minus refunded at the providers"
    );
    // A provider repeats a callback (providers do): it lands on n2, which
    // has no ledger, is carried to n1, and counts once: a replay.
    let (_, _, answer) = paid
        .iter()
        .find(|(_, _, a)| a["payment"]["attempt"].is_u64())
        .expect("a paid answer names its try");
    let attempt = answer["payment"]["attempt"].as_u64().unwrap();
    let channel = answer["payment"]["channel"].as_str().unwrap().to_string();
    let (body, secret) = common::succeeded_callback(&channel, attempt, PRICE);
    let signature =
        mall_router::signature::sign(secret.as_bytes(), common::now_ms(), body.as_bytes());
    assert_eq!(
        common::post_callback(&nodes[1].server.base, &channel, &signature, &body),
        (409, "callback_replayed".to_string())
    );
    // Any node's dashboard shows the whole cluster: the sum over nodes.
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, d) = call(
                &a,
                "GET",
                &node.server.url("/v1/dashboard"),
                ADMIN,
                None,
                None,
            )
            .unwrap();
            assert_eq!(status, 200, "{d}");
            let per_node: u64 = d["nodes"].as_array().map_or(0, |n| {
                n.iter().filter_map(|n| n["orders_total"].as_u64()).sum()
            });
            if d["orders_total"] == PAYERS as u64
                && d["paid_total"] == PAYERS as u64
                && per_node == PAYERS as u64
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s dashboard is not the cluster's: {d}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A checkout made on n3 and paid with one payment on n2 (carried to
    // the ledger's node): every line paid, one charge at a provider.
    let (status, c) = call(
        &a,
        "POST",
        &nodes[2].server.url("/v1/checkouts"),
        &people[0].1,
        Some(
            json!({"lines": [{"sku": skus[1], "quantity": 1}, {"sku": skus[2], "quantity": 1}],
                    "payment": "online", "address": "5 Ledger Lane"}),
        ),
        Some("cluster-checkout"),
    )
    .unwrap();
    assert_eq!(status, 201, "{c}");
    let checkout = c["id"].as_u64().unwrap();
    let (status, answer) = call(
        &a,
        "POST",
        &nodes[1]
            .server
            .url(&format!("/v1/checkouts/{checkout}/payments")),
        &people[0].1,
        Some(json!({"method": "third_party"})),
        Some("cluster-checkout-pay"),
    )
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["payment"]["amount_fen"], 2 * PRICE, "{answer}");
    let lines: Vec<&serde_json::Value> = answer["checkout"]["children"][0]["orders"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|o| o["status"] == "paid"),
        "{answer}"
    );
    assert_eq!(common::kept(&channels), PRICE * (PAYERS as i64 + 2));
    // Each node's /metrics is its own, named.
    let metrics = metrics_text(&nodes[1]);
    assert!(metrics.contains("mall_node{node=\"n2\"} 1"), "{metrics}");
    // The ledger on the store balances, and nothing is oversold.
    drop(nodes);
    assert_store_checks(&db, dir.path());
}

#[test]
fn the_postgres_primary_dies_and_its_synchronous_standby_takes_over_mid_rush() {
    // Its own primary and standby: this test kills the primary.
    let primary = mall_postgres::server::PostgresServer::start()
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL: {e}"));
    primary.create_database("failover").unwrap();
    let standby = primary.start_standby().expect("a synchronous standby");
    // Both servers in one connection string: mall follows whichever takes writes.
    let db = Db {
        url: format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=mall dbname=failover target_session_attrs=read-write connect_timeout=2",
            primary.port, standby.port
        ),
        _server: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|n| start_node(&db, dir.path(), n))
        .collect();
    wait_balanced(&db, &["n1", "n2"], Duration::from_secs(60));
    let skus = items(&nodes[0].server, 16, 500, 990);
    let people = shoppers(&nodes[1].server, 300);
    let urls = urls_of(&nodes);
    let running = rush(urls, skus, people, 4);
    std::thread::sleep(Duration::from_millis(1_000));
    primary.stop_immediate().unwrap();
    let died = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    standby.promote().unwrap();
    // Orders flow again through the new primary.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served = running
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.status == 201 && s.at > died + Duration::from_millis(600));
        if served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no order after the standby's promotion"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "orders again {:?} after the primary died (promoted after 500 ms)",
        died.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1_000));
    let (seen, unreachable) = running.finish();
    println!(
        "answers: {:?}; transport failures: {unreachable:?}",
        tally(&seen)
    );
    assert_answers(&seen);
    // A node whose ledger lease lapsed during the switch stops with status
    // 75, by design (payments cannot move while running; a supervisor
    // restarts it). Any other end is a failure. Read through one that runs.
    let mut nodes = nodes;
    let mut live = None;
    for node in nodes.iter_mut() {
        match node.server.child.try_wait().unwrap() {
            None => live = live.or_else(|| Some(node.server.base.clone())),
            Some(status) => {
                assert_eq!(status.code(), Some(75), "{} stopped: {status}", node.name);
                println!(
                    "{} stopped (status 75: its ledger lease lapsed in the switch)",
                    node.name
                );
            }
        }
    }
    // Every order acknowledged before or after the switch is on the new primary.
    assert_durable(&live.expect("a node still runs"), &seen);
    drop(nodes);
    assert_store_checks(&db, dir.path());
}

fn metrics_text(node: &Node) -> String {
    agent()
        .get(&node.server.url("/metrics"))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

fn metric(node: &Node, name: &str) -> f64 {
    metrics_text(node)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sold_out_is_refused_at_the_edge_but_a_retry_gets_its_order_back() {
    let db = database("cluster_edge");
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|n| start_node(&db, dir.path(), n))
        .collect();
    wait_balanced(&db, &["n1", "n2"], Duration::from_secs(60));
    let sku = items(&nodes[0].server, 1, 5, 990)[0];
    let people = shoppers(&nodes[0].server, 8);
    let shard = (sku as usize % SHARDS) as i32;
    let owner_name = owners(&db)
        .into_iter()
        .find(|(_, k)| k.contains(&shard))
        .unwrap()
        .0;
    let edge = nodes.iter().find(|n| n.name != owner_name).unwrap();
    let a = agent();
    let snap = |node: &Node, token: &str, key: &str| {
        call(
            &a,
            "POST",
            &node.server.url("/v1/orders"),
            token,
            Some(
                json!({"sku": sku, "quantity": 1, "payment": "online", "address": "9 Edge Street"}),
            ),
            Some(key),
        )
        .unwrap()
    };
    // Five buyers take the five units, through the edge node.
    let mut bought = Vec::new();
    for (i, (_, token)) in people.iter().take(5).enumerate() {
        let (status, order) = snap(edge, token, &format!("buy-{i}"));
        assert_eq!(status, 201, "{order}");
        bought.push((
            token.clone(),
            format!("buy-{i}"),
            order["id"].as_u64().unwrap(),
        ));
    }
    // The edge learns it is sold out; then it refuses without a hop.
    std::thread::sleep(Duration::from_millis(300));
    let before = metric(edge, "mall_node_refused_here_total");
    let (status, body) = snap(edge, &people[5].1, "late-1");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sold_out")),
        "{body}"
    );
    assert_eq!(
        metric(edge, "mall_node_refused_here_total"),
        before + 1.0,
        "refused at the edge"
    );
    // A buyer's retry still reaches the shard and gets its order back.
    let (token, key, id) = &bought[2];
    let (status, order) = snap(edge, token, key);
    assert_eq!(status, 201, "a retry of a success: {order}");
    assert_eq!(order["id"].as_u64(), Some(*id));
    // A unit comes back: the edge knows within 100 ms (10x: a loose ceiling here).
    let (token, _, id) = &bought[0];
    let (status, body) = call(
        &a,
        "POST",
        &nodes[0].server.url(&format!("/v1/orders/{id}/cancel")),
        token,
        None,
        Some("cancel-0"),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let cancelled = Instant::now();
    loop {
        let (_, item) = call(
            &a,
            "GET",
            &edge.server.url(&format!("/v1/items/{sku}")),
            "",
            None,
            None,
        )
        .unwrap();
        if item["available"] == 1 {
            break;
        }
        assert!(
            cancelled.elapsed() < Duration::from_secs(1),
            "the edge did not learn of the returned unit"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "the edge learnt of a returned unit {:?} after the cancel answered",
        cancelled.elapsed()
    );
    let (status, body) = snap(edge, &people[6].1, "late-2");
    assert_eq!(status, 201, "the returned unit sells: {body}");
    // A session revoked through one node stops working on the other within 1 s.
    let (user, token) = &people[7];
    let mine = |node: &Node| {
        call(&a, "GET", &node.server.url("/v1/orders"), token, None, None)
            .unwrap()
            .0
    };
    assert_eq!(
        mine(edge),
        200,
        "the token works on the edge (and is cached there)"
    );
    let revoker = nodes.iter().find(|n| n.name != edge.name).unwrap();
    let revoked = agent()
        .delete(
            &revoker
                .server
                .url(&format!("/v1/admin/users/{user}/sessions")),
        )
        .header("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(revoked, 200);
    let since = Instant::now();
    while mine(edge) != 401 {
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "a revoked token still works on another node after 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "a revocation reached the other node in {:?}",
        since.elapsed()
    );
    drop(nodes);
    assert_store_checks(&db, dir.path());
}

/// The night's commerce on three nodes over one PostgreSQL: a promotion
/// made on one node prices quotes on another, a coupon made on one is
/// claimed through all three (never over-issued) and applied in a quote on
/// a node that does not hold it, and favourites made on two nodes are
/// counted on the third.
#[test]
fn commerce_works_on_three_nodes() {
    let db = database("cluster_commerce");
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&db, dir.path());
    let a = agent();
    let now = common::now_ms();
    let sku = items(&nodes[0].server, 1, 50, 30_000)[0];
    let people = shoppers(&nodes[1].server, 30);
    let post = |node: &Node, path: &str, token: &str, body: Option<Value>, key: Option<&str>| {
        call(&a, "POST", &node.server.url(path), token, body, key).unwrap()
    };
    let get = |node: &Node, path: &str, token: &str| {
        call(&a, "GET", &node.server.url(path), token, None, None).unwrap()
    };

    // A platform promotion, made on n1.
    let (status, promo) = post(
        &nodes[0],
        "/v1/promotions",
        ADMIN,
        Some(
            json!({"rule": {"kind": "percent_off", "basis_points": 1000},
                    "starts_at_ms": now - 1000, "ends_at_ms": now + 3_600_000}),
        ),
        None,
    );
    assert_eq!(status, 201, "{promo}");
    // A coupon of 10, made on n2, claimed by 30 shoppers through all nodes.
    let (status, coupon) = post(
        &nodes[1],
        "/v1/coupons",
        ADMIN,
        Some(
            json!({"title": "¥20 off", "rule": {"kind": "amount_off", "off_fen": 2000, "min_spend_fen": 0},
                    "quantity": 10, "claim_opens_at_ms": now - 1000, "claim_closes_at_ms": now + 3_600_000,
                    "valid_until_ms": now + 3_600_000}),
        ),
        None,
    );
    assert_eq!(status, 201, "{coupon}");
    let id = coupon["id"].as_u64().unwrap();
    let mut won = Vec::new();
    for (n, (_, token)) in people.iter().enumerate() {
        let (status, claim) = post(
            &nodes[n % 3],
            &format!("/v1/coupons/{id}/claims"),
            token,
            None,
            Some(&format!("k{n}")),
        );
        match status {
            201 => won.push((n, claim["id"].as_u64().unwrap())),
            409 => assert_eq!(claim["error"]["code"], "sold_out", "{claim}"),
            other => panic!("claim {n}: {other} {claim}"),
        }
    }
    assert_eq!(won.len(), 10, "exactly the quantity");
    for node in &nodes {
        let (status, c) = get(node, &format!("/v1/coupons/{id}"), "");
        assert_eq!(
            (status, c["claimed"].as_u64()),
            (200, Some(10)),
            "{}: {c}",
            node.name
        );
        let (_, list) = get(node, "/v1/coupons", "");
        assert_eq!(
            list["coupons"].as_array().unwrap().len(),
            1,
            "{}: {list}",
            node.name
        );
    }
    // A winner's quote on each node: the promotion and the coupon apply.
    let (n, claim) = won[0];
    let token = &people[n].1;
    std::thread::sleep(Duration::from_millis(2_500)); // promotions reach the others
    for node in &nodes {
        let (status, q) = post(
            node,
            "/v1/quotes",
            token,
            Some(json!({"lines": [{"sku": sku, "quantity": 1}], "claims": [claim]})),
            None,
        );
        assert_eq!(status, 200, "{}: {q}", node.name);
        assert_eq!(q["total_fen"], 30_000 - 3_000 - 2_000, "{}: {q}", node.name);
        let (_, mine) = get(node, "/v1/claims", token);
        assert_eq!(mine["claims"][0]["id"], claim, "{}: {mine}", node.name);
    }
    // Favourites on n2 and n3; n1 counts both within its 2 s follow.
    post(
        &nodes[1],
        &format!("/v1/items/{sku}/favorite"),
        &people[0].1,
        None,
        None,
    );
    post(
        &nodes[2],
        &format!("/v1/items/{sku}/favorite"),
        &people[1].1,
        None,
        None,
    );
    let asked = Instant::now();
    loop {
        let (_, item) = get(&nodes[0], &format!("/v1/items/{sku}"), "");
        if item["favorites"] == 2 {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "favourites never reached n1: {item}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cart is the shopper's wherever they ask.
    post(
        &nodes[0],
        "/v1/cart",
        &people[2].1,
        Some(json!({"sku": sku, "quantity": 2})),
        None,
    );
    let (_, cart) = get(&nodes[2], "/v1/cart", &people[2].1);
    assert_eq!(cart["lines"], json!([{"sku": sku, "quantity": 2}]));

    // Checkouts across merchants and shards, from any node: the winner's,
    // with its coupon, on n3 (all or nothing, one child per merchant).
    let last = items(&nodes[0].server, 1, 1, 10_000)[0];
    // A new item reaches the other nodes' boards within a publication.
    let asked = Instant::now();
    while get(&nodes[2], &format!("/v1/items/{last}"), "").0 != 200 {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "item {last} never reached n3"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, c) = post(
        &nodes[2],
        "/v1/checkouts",
        token,
        Some(
            json!({"lines": [{"sku": sku, "quantity": 1}, {"sku": last, "quantity": 1}],
                    "claims": [claim], "payment": "online", "address": "9 Bund, Shanghai",
                    "expected_total_fen": 40_000 - 4_000 - 2_000}),
        ),
        Some("cluster-checkout"),
    );
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["children"].as_array().unwrap().len(), 2, "{c}");
    let checkout = c["id"].as_u64().unwrap();
    let (status, seen) = get(&nodes[0], &format!("/v1/checkouts/{checkout}"), token);
    assert_eq!(
        (status, &seen["state"]),
        (200, &json!("reserved")),
        "{seen}"
    );
    let (_, mine) = get(&nodes[1], "/v1/claims", token);
    assert_eq!(mine["claims"][0]["status"], "used", "{mine}");
    // The cart (the hot item, and the last unit, now gone) on n2: refused
    // whole, the line named, nothing of it held.
    post(
        &nodes[0],
        "/v1/cart",
        &people[2].1,
        Some(json!({"sku": last, "quantity": 1})),
        None,
    );
    let (_, before) = get(&nodes[0], &format!("/v1/items/{sku}"), "");
    let (status, refused) = post(
        &nodes[1],
        "/v1/checkouts",
        &people[2].1,
        Some(json!({"payment": "cod", "address": "10 Bund, Shanghai"})),
        None,
    );
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("sold_out")),
        "{refused}"
    );
    assert!(refused["error"]["line"].is_u64(), "{refused}");
    std::thread::sleep(Duration::from_millis(200)); // counters published
    let (_, after) = get(&nodes[0], &format!("/v1/items/{sku}"), "");
    assert_eq!(
        (&after["available"], &after["sold"]),
        (&before["available"], &before["sold"]),
        "a refused checkout holds nothing: {after}"
    );

    // A pre-sale, its commands forwarded between nodes: a deposit made on
    // every node, its balance asked on another (not open yet), and a
    // shopper's cancel of the pre-sale (its unpaid deposit) on a third.
    let (_, m) = post(
        &nodes[0],
        "/v1/admin/merchants",
        ADMIN,
        Some(json!({"name": "Pre-sales"})),
        None,
    );
    let now = common::now_ms();
    let (status, item) = post(
        &nodes[0],
        "/v1/admin/items",
        ADMIN,
        Some(json!({
        "merchant_id": m["id"], "title": "Pre-sale rice", "category": "home", "price_fen": 9_900,
        "stock": 3, "per_user_limit": 1, "opens_at_ms": now - 1_000, "closes_at_ms": now + 3_600_000,
        "presale": {"deposit_fen": 500, "worth_fen": 1_000,
                    "balance_opens_at_ms": now + 3_600_000, "balance_closes_at_ms": now + 7_200_000}})),
        None,
    );
    assert_eq!(status, 201, "{item}");
    let presale = item["sku"].as_u64().unwrap();
    let asked = Instant::now();
    while get(&nodes[2], &format!("/v1/items/{presale}"), "").0 != 200 {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "item {presale} never reached n3"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, node) in nodes.iter().enumerate() {
        let token = &people[10 + n].1;
        let (status, d) = post(
            node,
            "/v1/orders",
            token,
            Some(json!({"sku": presale, "quantity": 1,
            "payment": "online", "address": "1 Pre-sale Road"})),
            None,
        );
        assert_eq!(
            (status, &d["amount_fen"], &d["presale"]["part"]),
            (201, &json!(500), &json!("deposit")),
            "{}: {d}",
            node.name
        );
        let id = d["id"].as_u64().unwrap();
        let next = &nodes[(n + 1) % 3];
        let (status, b) = post(next, &format!("/v1/orders/{id}/balance"), token, None, None);
        assert_eq!(
            (status, &b["error"]["code"]),
            (409, &json!("not_a_presale")),
            "{}: {b}",
            next.name
        );
        let third = &nodes[(n + 2) % 3];
        let (status, c) = post(third, &format!("/v1/orders/{id}/cancel"), token, None, None);
        assert_eq!(
            (status, &c["status"]),
            (200, &json!("cancelled")),
            "{}: {c}",
            third.name
        );
    }
    std::thread::sleep(Duration::from_millis(200)); // counters published
    let (_, item) = get(&nodes[1], &format!("/v1/items/{presale}"), "");
    assert_eq!(
        (&item["available"], &item["held"]),
        (&json!(3), &json!(0)),
        "{item}"
    );
}
