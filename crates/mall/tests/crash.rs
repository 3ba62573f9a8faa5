//! Crash test on the real binary: concurrent snap-ups over HTTP, `kill -9`
//! mid-run, restart, and every acknowledged order must be there with exact
//! stock counts; `mall check` must pass. Two kill cycles.

use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{agent, call, Server, ADMIN};

const ITEMS: usize = 4;
const STOCK: i64 = 300;

#[derive(Clone, Debug)]
struct Acked {
    id: u64,
    sku: u64,
    user: u64,
    status: String,
}

#[test]
fn kill_dash_nine_loses_no_acknowledged_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let a = agent();
    let m = call(
        &a,
        "POST",
        &format!("{}/v1/admin/merchants", server.base),
        ADMIN,
        Some(json!({"name": "Crash Store"})),
        None,
    )
    .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut skus = Vec::new();
    for n in 0..ITEMS {
        let body = json!({"merchant_id": m.1["id"], "title": format!("hot item {n}"), "category": "electronics", "price_fen": 99900,
                          "stock": STOCK, "per_user_limit": 2, "opens_at_ms": now_ms - 1000, "closes_at_ms": now_ms + 3_600_000});
        let r = call(
            &a,
            "POST",
            &format!("{}/v1/admin/items", server.base),
            ADMIN,
            Some(body),
            None,
        )
        .unwrap();
        assert_eq!(r.0, 201, "{}", r.1);
        skus.push(r.1["sku"].as_u64().unwrap());
    }
    let r = call(
        &a,
        "POST",
        &format!("{}/v1/admin/users/bulk", server.base),
        ADMIN,
        Some(json!({"count": 2000})),
        None,
    )
    .unwrap();
    let users: Vec<(u64, String)> = r.1["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["id"].as_u64().unwrap(),
                u["token"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let users = Arc::new(users);
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();

    for cycle in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (users, acked, stop, skus, base) = (users.clone(), acked.clone(), stop.clone(), skus.clone(), server.base.clone());
                std::thread::spawn(move || {
                    let agent = agent();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let (user, token) = &users[((w * 7919 + n * 104_729) % users.len() as u64) as usize];
                        let sku = skus[(n as usize + w as usize) % skus.len()];
                        let pay = if n.is_multiple_of(4) { "cod" } else { "online" };
                        let body = json!({"sku": sku, "quantity": 1, "payment": pay, "address": "11 Singles Road"});
                        let key = format!("c{cycle}-w{w}-{n}");
                        if let Some((201, o)) = call(&agent, "POST", &format!("{base}/v1/orders"), token, Some(body), Some(&key)) {
                            assert_eq!(o["user_id"].as_u64(), Some(*user));
                            let id = o["id"].as_u64().unwrap();
                            // Some shoppers cancel right away; the cancel is acknowledged too.
                            let status = if n.is_multiple_of(7) {
                                match call(&agent, "POST", &format!("{base}/v1/orders/{id}/cancel"), token, None, None) {
                                    Some((200, c)) => c["status"].as_str().unwrap().to_string(),
                                    _ => o["status"].as_str().unwrap().to_string(),
                                }
                            } else {
                                o["status"].as_str().unwrap().to_string()
                            };
                            acked.lock().unwrap().push(Acked { id, sku, user: *user, status });
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        // kill -9 while requests are in flight.
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        server = Server::start(&data, &[]);
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            acked_now.len() > 50,
            "cycle {cycle}: too few orders acknowledged ({}) for the test to mean much",
            acked_now.len()
        );
        for o in &acked_now {
            let (status, body) = call(
                &a,
                "GET",
                &format!("{}/v1/orders/{}", server.base, o.id),
                ADMIN,
                None,
                None,
            )
            .unwrap();
            assert_eq!(
                status, 200,
                "cycle {cycle}: acknowledged order {} lost",
                o.id
            );
            assert_eq!(
                (body["sku"].as_u64(), body["user_id"].as_u64()),
                (Some(o.sku), Some(o.user))
            );
            if o.status == "cancelled" {
                assert_eq!(
                    body["status"], "cancelled",
                    "acknowledged cancel of {} lost",
                    o.id
                );
            } else {
                assert_ne!(body["status"], "cancelled");
            }
        }
        // Conservation, exact, per SKU.
        for sku in &skus {
            let (_, item) = call(
                &a,
                "GET",
                &format!("{}/v1/items/{sku}", server.base),
                ADMIN,
                None,
                None,
            )
            .unwrap();
            let (av, held, sold) = (
                item["available"].as_i64().unwrap(),
                item["held"].as_i64().unwrap(),
                item["sold"].as_i64().unwrap(),
            );
            assert_eq!(
                av + held + sold,
                STOCK,
                "cycle {cycle}: conservation for {sku}: {item}"
            );
            let live = acked_now
                .iter()
                .filter(|o| o.sku == *sku && o.status != "cancelled")
                .count() as i64;
            assert!(held + sold >= live, "cycle {cycle}: SKU {sku} counts {held}+{sold} below {live} acknowledged live orders");
        }
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (ok, text) = common::mall(&["check"], &data);
    assert!(ok, "mall check failed:\n{text}");
    assert!(text.contains("OK: conservation holds"), "{text}");
}

#[test]
fn check_fails_on_an_oversold_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let seeded = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args([
            "seed",
            "--items",
            "20",
            "--merchants",
            "3",
            "--shards",
            "1",
            "--opens-in",
            "0s",
            "--data",
        ])
        .arg(&data)
        .env("MALL_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["check", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Tamper: sell 3 units of an item whose stock is 1, behind the engine's back.
    let conn = rusqlite::Connection::open(data.join("shard-000.db")).unwrap();
    conn.execute("UPDATE items SET stock_total = 1 WHERE sku = 1", [])
        .unwrap();
    for id in 1..=3i64 {
        conn.execute(
            "INSERT INTO orders (id, sku, user_id, quantity, unit_price_fen, amount_fen, payment, status, address, request_fingerprint, created_at_ms, updated_at_ms, per_user_limit)
             VALUES (?1, 1, ?1, 1, 100, 100, 'cod', 'confirmed', 'x', 0, 0, 0, 1)",
            [id << 8],
        ).unwrap();
    }
    drop(conn);
    let bad = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["check", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        !bad.status.success(),
        "check passed an oversold store:\n{text}"
    );
    assert!(text.contains("oversold"), "{text}");
}

/// A coupon claim rush on the real binary, `kill -9` mid-run: after the
/// restart every acknowledged claim is there for its shopper, and never
/// more claims than the quantity.
#[test]
fn kill_dash_nine_loses_no_acknowledged_claim() {
    const QUANTITY: i64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let a = agent();
    let now = common::now_ms();
    let r = call(
        &a,
        "POST",
        &server.url("/v1/coupons"),
        ADMIN,
        Some(json!({"title": "¥10 off", "rule": {"kind": "amount_off", "off_fen": 1000, "min_spend_fen": 0},
                    "quantity": QUANTITY, "per_user_limit": 3, "claim_opens_at_ms": now - 1000,
                    "claim_closes_at_ms": now + 3_600_000, "valid_until_ms": now + 86_400_000})),
        None,
    )
    .unwrap();
    assert_eq!(r.0, 201, "{}", r.1);
    let coupon = r.1["id"].as_u64().unwrap();
    let users = Arc::new(common::shoppers(&server, 300));
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (users, acked, stop, base) = (
                users.clone(),
                acked.clone(),
                stop.clone(),
                server.base.clone(),
            );
            std::thread::spawn(move || {
                let agent = agent();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let who = (w * 7919 + n * 104_729) % users.len();
                    let key = format!("claim-w{w}-{n}");
                    let url = format!("{base}/v1/coupons/{coupon}/claims");
                    if let Some((201, c)) =
                        call(&agent, "POST", &url, &users[who].1, None, Some(&key))
                    {
                        acked.lock().unwrap().push((who, c["id"].as_u64().unwrap()));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    server.kill_9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let server = Server::start(&data, &[]);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 30,
        "too few claims acknowledged ({}) to mean much",
        acked.len()
    );
    for (who, id) in &acked {
        let (status, body) = call(
            &a,
            "GET",
            &server.url("/v1/claims"),
            &users[*who].1,
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let there = body["claims"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"].as_u64() == Some(*id) && c["coupon_id"].as_u64() == Some(coupon));
        assert!(there, "acknowledged claim {id} lost");
    }
    let (_, c) = call(
        &a,
        "GET",
        &server.url(&format!("/v1/coupons/{coupon}")),
        ADMIN,
        None,
        None,
    )
    .unwrap();
    let claimed = c["claimed"].as_i64().unwrap();
    assert!(claimed <= QUANTITY && claimed >= acked.len() as i64, "{c}");
}

/// Checkouts of three items each, under way from many shoppers, when the
/// process dies (`kill -9`). After the restart (whose recovery releases
/// what was half made): every acknowledged checkout is reserved whole,
/// every checkout is either reserved or released, the units held are
/// exactly the reserved checkouts' lines (nothing half held), and `mall
/// check` passes.
#[test]
fn kill_dash_nine_leaves_every_checkout_whole() {
    const LINES: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let skus = Arc::new(common::items(&server, 6, 60, 1_000));
    let users = Arc::new(common::shoppers(&server, 200));
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (skus, users, acked, stop, base) = (
                skus.clone(),
                users.clone(),
                acked.clone(),
                stop.clone(),
                server.base.clone(),
            );
            std::thread::spawn(move || {
                let agent = agent();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let who = (w * 7919 + n * 104_729) % users.len();
                    let lines: Vec<_> = (0..LINES)
                        .map(|i| json!({"sku": skus[(w + n + 2 * i) % skus.len()], "quantity": 1}))
                        .collect();
                    let body =
                        json!({"lines": lines, "payment": "online", "address": "8 Bund, Shanghai"});
                    let key = format!("checkout-w{w}-{n}");
                    let url = format!("{base}/v1/checkouts");
                    if let Some((201, c)) =
                        call(&agent, "POST", &url, &users[who].1, Some(body), Some(&key))
                    {
                        acked.lock().unwrap().push((who, c["id"].as_u64().unwrap()));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(900));
    server.kill_9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let mut server = Server::start(&data, &[]);
    let a = agent();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "too few checkouts acknowledged ({}) to mean much",
        acked.len()
    );
    for (who, id) in &acked {
        let (status, body) = call(
            &a,
            "GET",
            &server.url(&format!("/v1/checkouts/{id}")),
            &users[*who].1,
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "acknowledged checkout {id} lost: {body}");
        assert_eq!(body["state"], "reserved", "{body}");
        let orders: usize = body["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["orders"].as_array().unwrap().len())
            .sum();
        assert_eq!(orders, LINES, "acknowledged checkout {id} not whole");
    }
    // Every checkout of every shopper is decided, and the units held are
    // exactly the reserved ones' lines.
    let mut reserved = 0;
    for (user, _) in users.iter() {
        let (status, body) = call(
            &a,
            "GET",
            &server.url(&format!("/v1/checkouts?user_id={user}")),
            ADMIN,
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        for c in body["checkouts"].as_array().unwrap() {
            match c["state"].as_str().unwrap() {
                "reserved" => reserved += 1,
                "released" => {}
                other => panic!("checkout {} left {other} after recovery", c["id"]),
            }
        }
    }
    let mut held = 0;
    for sku in skus.iter() {
        let (_, item) = call(
            &a,
            "GET",
            &server.url(&format!("/v1/items/{sku}")),
            ADMIN,
            None,
            None,
        )
        .unwrap();
        held += item["held"].as_u64().unwrap();
        assert_eq!(item["sold"], 0);
    }
    assert_eq!(
        held as usize,
        reserved * LINES,
        "units held beyond the reserved checkouts' lines"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (ok, text) = common::mall(&["check"], &data);
    assert!(ok, "mall check failed:\n{text}");
}
