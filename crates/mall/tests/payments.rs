//! Payments end to end on the real binaries: `mall channels` simulates the
//! providers, `mall serve --channels` routes payments to them through the
//! scheduler, and the ledger must verify at the end.
//!
//! - An outage of one channel in the middle of a run: it stops getting
//!   payments within seconds, every order still ends paid exactly once, and
//!   what the providers charged less what they refunded equals what the
//!   mall recorded.
//! - Forged and replayed callbacks are refused.
//! - Wallets: top-up through a channel, paying, statement, refunds (partial,
//!   too much, on cancel), settlement on delivery, cash on delivery.

mod common;

use common::{
    agent, call, items, mall, now_ms, provider_stats, shoppers, start_channels, Server, ADMIN,
};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn dispatched(server: &Server, channel: &str) -> u64 {
    let r = call(
        &agent(),
        "GET",
        &server.url("/v1/admin/channels"),
        ADMIN,
        None,
        None,
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    r.1["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == channel)
        .unwrap()["dispatched_total"]
        .as_u64()
        .unwrap()
}

fn order_status(server: &Server, token: &str, id: u64) -> String {
    let r = call(
        &agent(),
        "GET",
        &server.url(&format!("/v1/orders/{id}")),
        token,
        None,
        None,
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    r.1["status"].as_str().unwrap().to_string()
}

fn snap_up(server: &Server, token: &str, sku: u64, payment: &str) -> u64 {
    let r = call(
        &agent(),
        "POST",
        &server.url("/v1/orders"),
        token,
        Some(json!({"sku": sku, "quantity": 1, "payment": payment, "address": "11 Singles Road"})),
        None,
    )
    .unwrap();
    assert_eq!(r.0, 201, "{}", r.1);
    r.1["id"].as_u64().unwrap()
}

/// Simulated providers and a server routing payments to them.
fn mall_with_channels(
    dir: &std::path::Path,
    outage: Option<(u64, u64)>,
) -> (common::Channels, std::path::PathBuf, Server) {
    let channels = start_channels(dir, outage);
    let data = dir.join("data");
    let server = Server::start(&data, &["--channels", channels.file.to_str().unwrap()]);
    (channels, data, server)
}

/// One online order awaiting payment per new shopper, over `n_items` items
/// of 100 units at `price`: `(order, shopper's token)`.
fn unpaid_orders(server: &Server, n_items: usize, price: i64, payers: usize) -> Vec<(u64, String)> {
    let skus = items(server, n_items, 100, price);
    shoppers(server, payers)
        .iter()
        .enumerate()
        .map(|(i, (_, token))| {
            (
                snap_up(server, token, skus[i % n_items], "online"),
                token.clone(),
            )
        })
        .collect()
}

#[test]
fn an_outage_mid_run_moves_payments_elsewhere_and_nothing_is_charged_twice() {
    const PAYERS: usize = 400;
    const PRICE: i64 = 1_999;
    let dir = tempfile::tempdir().unwrap();
    let (channels, data, server) = mall_with_channels(dir.path(), Some((5, 9)));
    let orders = unpaid_orders(&server, 4, PRICE, PAYERS);

    // Pay over ~8 s, across beta's outage (5 s to 9 s after the providers started).
    let outage_start = channels.started + Duration::from_secs(5);
    let answers = Arc::new(Mutex::new(Vec::new()));
    let pay_from = Instant::now();
    let spread = Duration::from_secs(8);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (orders, answers, base) = (orders.clone(), answers.clone(), server.base.clone());
            std::thread::spawn(move || {
                let a = agent();
                for (i, (id, token)) in orders.iter().enumerate().filter(|(i, _)| i % 16 == w) {
                    let at = pay_from + spread * i as u32 / PAYERS as u32;
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let r = call(
                        &a,
                        "POST",
                        &format!("{base}/v1/orders/{id}/payments"),
                        token,
                        Some(json!({"method": "third_party"})),
                        Some(&format!("pay-{id}")),
                    );
                    answers.lock().unwrap().push((*id, r));
                }
            })
        })
        .collect();
    // Beta must get nothing new from 2 s after its outage began until it ends.
    std::thread::sleep(
        (outage_start + Duration::from_millis(2_600)).saturating_duration_since(Instant::now()),
    );
    let beta_then = dispatched(&server, "beta");
    std::thread::sleep(
        (outage_start + Duration::from_millis(3_800)).saturating_duration_since(Instant::now()),
    );
    let beta_later = dispatched(&server, "beta");
    assert_eq!(
        beta_then, beta_later,
        "beta got payments in the middle of its outage"
    );
    for w in workers {
        w.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), PAYERS);
    for (id, r) in &answers {
        let (status, body) = r.as_ref().expect("every payment answered");
        assert!(
            *status == 200 || *status == 202,
            "order {id}: {status} {body}"
        );
    }
    assert!(
        dispatched(&server, "beta") > 0,
        "beta took payments before its outage"
    );

    // Let late callbacks (held by the outage) arrive and be handed back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: u64 = (0..3)
            .map(|i| provider_stats(&channels, i)["pending"].as_u64().unwrap())
            .sum();
        let unpaid = orders
            .iter()
            .filter(|(id, token)| order_status(&server, token, *id) != "paid")
            .count();
        if pending == 0
            && unpaid == 0
            && Instant::now() > channels.started + Duration::from_secs(10)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unpaid} orders unpaid, {pending} payments pending at providers"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the providers kept is exactly what the mall recorded: every order once.
    assert_eq!(
        common::kept(&channels),
        PRICE * PAYERS as i64,
        "charged minus refunded at the providers"
    );

    // A forged callback (wrong key) and a replayed one are refused.
    let (id, _) = &orders[0];
    let attempt = answers
        .iter()
        .find(|(o, _)| o == id)
        .unwrap()
        .1
        .as_ref()
        .unwrap()
        .1["payment"]["attempt"]
        .as_u64()
        .unwrap();
    let channel = answers
        .iter()
        .find(|(o, _)| o == id)
        .unwrap()
        .1
        .as_ref()
        .unwrap()
        .1["payment"]["channel"]
        .as_str()
        .unwrap()
        .to_string();
    let (body, secret) = common::succeeded_callback(&channel, attempt, PRICE);
    let post = |sig: &str| common::post_callback(&server.base, &channel, sig, &body);
    let forged = mall_router::signature::sign(b"not-the-secret-at-all", now_ms(), body.as_bytes());
    assert_eq!(post(&forged), (401, "signature_mismatch".to_string()));
    let stale =
        mall_router::signature::sign(secret.as_bytes(), now_ms() - 3_600_000, body.as_bytes());
    assert_eq!(post(&stale), (401, "signature_stale".to_string()));
    let replay = mall_router::signature::sign(secret.as_bytes(), now_ms(), body.as_bytes());
    assert_eq!(post(&replay), (409, "callback_replayed".to_string()));

    server.stop();
    let (ok, text) = mall(&["ledger", "verify"], &data);
    assert!(ok, "{text}");
    let (ok, text) = mall(&["check"], &data);
    assert!(ok, "{text}");
}

#[test]
fn wallets_refunds_settlement_and_cash_on_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (_channels, data, server) = mall_with_channels(dir.path(), None);
    let skus = items(&server, 2, 50, 3_000);
    let users = shoppers(&server, 2);
    let (_, token) = &users[0];
    let a = agent();
    let wallet = |t: &str| {
        call(&a, "GET", &server.url("/v1/wallet"), t, None, None)
            .unwrap()
            .1
    };
    assert_eq!(wallet(token)["balance_fen"], 0);

    // Top up 10,000 fen by card, then pay a 3,000 order from the wallet.
    let r = call(
        &a,
        "POST",
        &server.url("/v1/wallet/top-ups"),
        token,
        Some(json!({"amount_fen": 10_000, "method": "card"})),
        Some("top-1"),
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["payment"]["channel"], "gamma");
    assert_eq!(r.1["wallet"]["balance_fen"], 10_000);
    let first = snap_up(&server, token, skus[0], "online");
    let r = call(
        &a,
        "POST",
        &server.url(&format!("/v1/orders/{first}/payments")),
        token,
        Some(json!({"method": "wallet"})),
        Some("pay-1"),
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["order"]["status"], "paid");
    assert_eq!(wallet(token)["balance_fen"], 7_000);
    // Paying again changes nothing: the order is paid.
    let again = call(
        &a,
        "POST",
        &server.url(&format!("/v1/orders/{first}/payments")),
        token,
        Some(json!({"method": "wallet"})),
        Some("pay-2"),
    )
    .unwrap();
    assert_eq!(
        (again.0, again.1["error"]["code"].as_str()),
        (409, Some("invalid_order_status"))
    );
    assert_eq!(wallet(token)["balance_fen"], 7_000);

    // Too little in the wallet: refused, nothing moves.
    let (_, poor) = &users[1];
    let other = snap_up(&server, poor, skus[0], "online");
    let r = call(
        &a,
        "POST",
        &server.url(&format!("/v1/orders/{other}/payments")),
        poor,
        Some(json!({"method": "wallet"})),
        None,
    )
    .unwrap();
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (402, Some("insufficient_funds"))
    );
    assert_eq!(order_status(&server, poor, other), "awaiting_payment");
    // Bad input is refused with a code.
    for (body, code) in [
        (json!({"method": "cash"}), "invalid_request"),
        (json!({"method": "wallet", "extra": 1}), "invalid_request"),
    ] {
        let r = call(
            &a,
            "POST",
            &server.url(&format!("/v1/orders/{other}/payments")),
            poor,
            Some(body),
            None,
        )
        .unwrap();
        assert_eq!(r.1["error"]["code"], code, "{}", r.1);
    }
    let r = call(
        &a,
        "POST",
        &server.url("/v1/wallet/top-ups"),
        poor,
        Some(json!({"amount_fen": 0, "method": "card"})),
        None,
    )
    .unwrap();
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (422, Some("invalid_amount"))
    );
    // Someone else's order is not yours to pay.
    let r = call(
        &a,
        "POST",
        &server.url(&format!("/v1/orders/{first}/payments")),
        poor,
        Some(json!({"method": "wallet"})),
        None,
    )
    .unwrap();
    assert_eq!(r.0, 404, "{}", r.1);

    // Refunds: a shopper may not; partial; too much; replay; cancel refunds the rest.
    let refund = |amount: Option<i64>, key: &str, who: &str| {
        let body = amount.map_or(json!({}), |a| json!({"amount_fen": a}));
        call(
            &a,
            "POST",
            &server.url(&format!("/v1/orders/{first}/refunds")),
            who,
            Some(body),
            Some(key),
        )
        .unwrap()
    };
    assert_eq!(refund(Some(500), "r1", token).0, 403);
    let r = refund(Some(500), "r1", ADMIN);
    assert_eq!(
        (r.0, r.1["refunded_total_fen"].as_i64()),
        (200, Some(500)),
        "{}",
        r.1
    );
    let r = refund(Some(500), "r1", ADMIN);
    assert_eq!(
        (r.0, r.1["refunded_total_fen"].as_i64()),
        (200, Some(500)),
        "a replay refunds nothing more: {}",
        r.1
    );
    let r = refund(Some(2_501), "r2", ADMIN);
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (409, Some("refund_exceeds_paid")),
        "{}",
        r.1
    );
    assert_eq!(wallet(token)["balance_fen"], 7_500);
    let r = call(
        &a,
        "POST",
        &server.url(&format!("/v1/orders/{first}/cancel")),
        token,
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        (r.0, r.1["status"].as_str()),
        (200, Some("cancelled")),
        "{}",
        r.1
    );
    assert_eq!(
        wallet(token)["balance_fen"],
        10_000,
        "cancel refunds what is left"
    );

    // Pay by third party, deliver: the money leaves escrow for the merchant, once.
    let second = snap_up(&server, token, skus[1], "online");
    let r = call(
        &a,
        "POST",
        &server.url(&format!("/v1/orders/{second}/payments")),
        token,
        Some(json!({"method": "third_party"})),
        None,
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    let deliver = |id: u64| {
        call(
            &a,
            "POST",
            &server.url(&format!("/v1/admin/orders/{id}/deliver")),
            ADMIN,
            None,
            None,
        )
        .unwrap()
    };
    assert_eq!(deliver(second).1["amount_fen"], 3_000);
    assert_eq!(deliver(second).1["error"]["code"], "already_settled");
    // Cash on delivery: collected by the courier, then settled.
    let cod = snap_up(&server, token, skus[1], "cod");
    assert_eq!(deliver(cod).1["error"]["code"], "not_paid");
    let r = call(
        &a,
        "POST",
        &server.url(&format!("/v1/admin/orders/{cod}/cod-collected")),
        ADMIN,
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        (r.0, r.1["amount_fen"].as_i64()),
        (200, Some(3_000)),
        "{}",
        r.1
    );
    assert_eq!(deliver(cod).1["amount_fen"], 3_000);

    // The statement tells the wallet's story, newest first.
    let s = call(
        &a,
        "GET",
        &server.url("/v1/wallet/statement"),
        token,
        None,
        None,
    )
    .unwrap()
    .1;
    let kinds: Vec<&str> = s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "refund",
            "refund",
            "wallet_payment",
            "wallet_payment",
            "top_up",
            "top_up"
        ],
        "{s}"
    );
    let sum: i64 = s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mode"] != "pending")
        .map(|l| l["amount_fen"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 10_000);

    server.stop();
    let (ok, text) = mall(&["ledger", "verify"], &data);
    assert!(ok, "{text}");
}

#[test]
fn kill_dash_nine_mid_payments_loses_no_acknowledged_payment_and_charges_none_twice() {
    const PAYERS: usize = 300;
    const PRICE: i64 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let (channels, data, mut server) = mall_with_channels(dir.path(), None);
    let channels_file = channels.file.to_str().unwrap().to_string();
    let orders = unpaid_orders(&server, 3, PRICE, PAYERS);
    // Pay as fast as 16 shoppers at a time can; kill -9 the server mid-way.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (orders, acked, base) = (orders.clone(), acked.clone(), server.base.clone());
            std::thread::spawn(move || {
                let a = agent();
                for (id, token) in orders.iter().skip(w).step_by(16) {
                    let r = call(
                        &a,
                        "POST",
                        &format!("{base}/v1/orders/{id}/payments"),
                        token,
                        Some(json!({"method": "third_party"})),
                        Some(&format!("pay-{id}")),
                    );
                    if let Some((200, body)) = r {
                        assert_eq!(body["order"]["status"], "paid");
                        acked.lock().unwrap().push(*id);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < PAYERS / 4 {
        assert!(Instant::now() < deadline, "payments did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill_9();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < PAYERS,
        "the kill came too late to test anything"
    );

    // Restart: what was acknowledged is paid; the rest can be paid (once).
    let server = Server::start(&data, &["--channels", &channels_file]);
    for id in &acked {
        let token = &orders.iter().find(|(o, _)| o == id).unwrap().1;
        assert_eq!(
            order_status(&server, token, *id),
            "paid",
            "acknowledged payment of order {id} lost"
        );
    }
    let a = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, token) in &orders {
        loop {
            if order_status(&server, token, *id) == "paid" {
                break;
            }
            let r = call(
                &a,
                "POST",
                &server.url(&format!("/v1/orders/{id}/payments")),
                token,
                Some(json!({"method": "third_party"})),
                Some(&format!("pay-{id}")),
            );
            assert!(
                Instant::now() < deadline,
                "order {id} could not be paid after the restart: {r:?}"
            );
            if !matches!(r, Some((200, _))) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Late callbacks of tries the crash cut off are handed back; then the
    // providers keep exactly one payment per order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: u64 = (0..3)
            .map(|i| provider_stats(&channels, i)["pending"].as_u64().unwrap())
            .sum();
        let kept = common::kept(&channels);
        if pending == 0 && kept == PRICE * PAYERS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "providers kept {kept} fen with {pending} pending; expected {}",
            PRICE * PAYERS as i64
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
    let (ok, text) = mall(&["ledger", "verify"], &data);
    assert!(ok, "{text}");
    let (ok, text) = mall(&["check"], &data);
    assert!(ok, "{text}");
}

/// Kill -9 while pre-sale balances are being paid: after a restart every
/// acknowledged balance payment is there (its balance order paid, its
/// deposit paid), every balance paid again under its key ends paid exactly
/// once, the providers kept exactly every deposit and balance, and `mall
/// check` and `mall ledger verify` pass.
#[test]
fn kill_dash_nine_during_balance_payments_loses_no_acknowledged_payment() {
    const SHOPPERS: usize = 160;
    const DEPOSIT: i64 = 1_000;
    const PRICE: i64 = 20_000;
    const WORTH: i64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let (channels, data, mut server) = mall_with_channels(dir.path(), None);
    let a = agent();
    let m = call(
        &a,
        "POST",
        &server.url("/v1/admin/merchants"),
        ADMIN,
        Some(json!({"name": "Presale Store"})),
        None,
    )
    .unwrap();
    // Deposits for the next 10 s, the balance from then for a minute.
    let now = now_ms();
    let opens = now + 10_000;
    let body = json!({"merchant_id": m.1["id"], "title": "Pre-sale TV", "category": "electronics",
        "price_fen": PRICE, "stock": SHOPPERS, "per_user_limit": 1, "opens_at_ms": now - 1_000, "closes_at_ms": opens,
        "presale": {"deposit_fen": DEPOSIT, "worth_fen": WORTH, "balance_opens_at_ms": opens, "balance_closes_at_ms": opens + 60_000}});
    let r = call(
        &a,
        "POST",
        &server.url("/v1/admin/items"),
        ADMIN,
        Some(body),
        None,
    )
    .unwrap();
    assert_eq!(r.0, 201, "{}", r.1);
    let sku = r.1["sku"].as_u64().unwrap();
    let users = shoppers(&server, SHOPPERS);
    let pay = |base: &str, a: &ureq::Agent, token: &str, id: u64| {
        call(
            a,
            "POST",
            &format!("{base}/v1/orders/{id}/payments"),
            token,
            Some(json!({"method": "third_party"})),
            Some(&format!("pay-{id}")),
        )
    };
    // Every shopper pays a deposit (8 at a time).
    let deposits: Vec<u64> = std::thread::scope(|scope| {
        let chunks: Vec<_> = users
            .chunks(SHOPPERS / 8)
            .map(|chunk| {
                let server = &server;
                scope.spawn(move || {
                    let a = agent();
                    chunk
                        .iter()
                        .map(|(_, token)| {
                            let id = snap_up(server, token, sku, "online");
                            let r = pay(&server.base, &a, token, id).unwrap();
                            let status = &r.1["order"]["status"];
                            assert_eq!((r.0, status), (200, &json!("paid")), "{}", r.1);
                            id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert!(
        now_ms() < opens,
        "the deposits took longer than their window"
    );
    std::thread::sleep(Duration::from_millis(
        (opens - now_ms()).max(0) as u64 + 200,
    ));
    // Balances asked and paid from 8 threads; kill -9 in the middle.
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (users, deposits, acked, base) = (
                users.clone(),
                deposits.clone(),
                acked.clone(),
                server.base.clone(),
            );
            std::thread::spawn(move || {
                let a = agent();
                for i in (w..users.len()).step_by(8) {
                    let token = &users[i].1;
                    let url = format!("{base}/v1/orders/{}/balance", deposits[i]);
                    let Some((201 | 200, b)) = call(&a, "POST", &url, token, Some(json!({})), None)
                    else {
                        return; // the server is gone
                    };
                    let b = b["id"].as_u64().unwrap();
                    if let Some((200, r)) = pay(&base, &a, token, b) {
                        if r["order"]["status"] == "paid" {
                            acked.lock().unwrap().push((i, b));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(120));
    server.kill_9();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} of {SHOPPERS} balances acknowledged paid before the kill",
        acked.len()
    );
    let server = Server::start(&data, &["--channels", channels.file.to_str().unwrap()]);
    for (i, b) in &acked {
        let token = &users[*i].1;
        assert_eq!(
            order_status(&server, token, *b),
            "paid",
            "acknowledged balance {b} lost"
        );
        assert_eq!(order_status(&server, token, deposits[*i]), "paid");
    }
    // Every balance paid (again, under its key where one was asked before):
    // each ends paid once.
    for (i, (_, token)) in users.iter().enumerate() {
        let url = server.url(&format!("/v1/orders/{}/balance", deposits[i]));
        let (status, b) = call(&a, "POST", &url, token, Some(json!({})), None).unwrap();
        assert!(status == 200 || status == 201, "{status} {b}");
        let b = b["id"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, r) = pay(&server.base, &a, token, b).unwrap();
            if status == 200 && r["order"]["status"] == "paid" {
                break;
            }
            // Already paid (a payment before the kill landed), or one under way.
            if status == 409 && order_status(&server, token, b) == "paid" {
                break;
            }
            assert!(Instant::now() < deadline, "balance {b}: {status} {r}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The providers kept exactly every deposit and balance, once.
    let want = SHOPPERS as i64 * (DEPOSIT + PRICE - WORTH);
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::kept(&channels) != want {
        assert!(
            Instant::now() < deadline,
            "providers kept {} fen, the mall sold {want}",
            common::kept(&channels)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
    let (ok, text) = mall(&["check"], &data);
    assert!(ok, "mall check failed:\n{text}");
    let (ok, text) = mall(&["ledger", "verify"], &data);
    assert!(ok, "mall ledger verify failed:\n{text}");
    assert!(
        !acked.is_empty(),
        "no balance was acknowledged before the kill"
    );
}

/// Kill -9 while checkouts are paid as a whole: after a restart every
/// acknowledged checkout payment is there (every line of it paid), every
/// checkout paid again under its key ends with every line paid once, the
/// providers kept exactly every checkout's total, and `mall check` and
/// `mall ledger verify` pass.
#[test]
fn kill_dash_nine_during_checkout_payments_loses_no_acknowledged_payment() {
    const SHOPPERS: usize = 150;
    const PRICES: [i64; 3] = [1_200, 3_400, 5_600];
    let dir = tempfile::tempdir().unwrap();
    let (channels, data, mut server) = mall_with_channels(dir.path(), None);
    // Three merchants, an item each; every shopper checks out one of each.
    let skus: Vec<u64> = PRICES
        .iter()
        .map(|p| items(&server, 1, SHOPPERS as i64, *p)[0])
        .collect();
    let users = shoppers(&server, SHOPPERS);
    let lines: Vec<_> = skus
        .iter()
        .map(|s| json!({"sku": s, "quantity": 1}))
        .collect();
    let checkouts: Vec<(u64, Vec<u64>)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = users
            .chunks(SHOPPERS / 6)
            .map(|chunk| {
                let (server, lines) = (&server, &lines);
                scope.spawn(move || {
                    let a = agent();
                    chunk
                        .iter()
                        .map(|(_, token)| {
                            let body = json!({"lines": lines, "payment": "online", "address": "11 Singles Road"});
                            let (status, c) =
                                call(&a, "POST", &server.url("/v1/checkouts"), token, Some(body), None)
                                    .unwrap();
                            assert_eq!(status, 201, "{c}");
                            let orders = c["children"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .flat_map(|c| c["orders"].as_array().unwrap().clone())
                                .map(|o| o["id"].as_u64().unwrap())
                                .collect();
                            (c["id"].as_u64().unwrap(), orders)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    let pay = |base: &str, a: &ureq::Agent, token: &str, id: u64| {
        call(
            a,
            "POST",
            &format!("{base}/v1/checkouts/{id}/payments"),
            token,
            Some(json!({"method": "third_party"})),
            Some(&format!("pay-checkout-{id}")),
        )
    };
    let all_paid = |body: &serde_json::Value| {
        body["checkout"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["orders"].as_array().unwrap())
            .all(|o| o["status"] == "paid")
    };
    // Paid from 8 threads; kill -9 in the middle.
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (users, checkouts, acked, base) = (
                users.clone(),
                checkouts.clone(),
                acked.clone(),
                server.base.clone(),
            );
            std::thread::spawn(move || {
                let a = agent();
                for i in (w..users.len()).step_by(8) {
                    match pay(&base, &a, &users[i].1, checkouts[i].0) {
                        Some((200, body)) => {
                            assert!(all_paid(&body), "a line left unpaid: {body}");
                            acked.lock().unwrap().push(i);
                        }
                        Some(_) => {}
                        None => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < SHOPPERS / 5 {
        assert!(Instant::now() < deadline, "payments did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill_9();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} of {SHOPPERS} checkout payments acknowledged before the kill",
        acked.len()
    );
    assert!(
        acked.len() < SHOPPERS,
        "the kill came too late to test anything"
    );
    let server = Server::start(&data, &["--channels", channels.file.to_str().unwrap()]);
    for i in &acked {
        for order in &checkouts[*i].1 {
            assert_eq!(
                order_status(&server, &users[*i].1, *order),
                "paid",
                "acknowledged checkout {} lost line {order}",
                checkouts[*i].0
            );
        }
    }
    // Every checkout paid (again, under its key): every line ends paid once.
    let a = agent();
    for (i, (_, token)) in users.iter().enumerate() {
        let (id, orders) = &checkouts[i];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = pay(&server.base, &a, token, *id).unwrap();
            if r.0 == 200 && all_paid(&r.1) {
                break;
            }
            // Already paid (a payment before the kill landed), or one under way.
            let paid = orders
                .iter()
                .all(|o| order_status(&server, token, *o) == "paid");
            if r.0 == 409 && paid {
                break;
            }
            assert!(Instant::now() < deadline, "checkout {id}: {} {}", r.0, r.1);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The providers kept exactly every checkout's total, once.
    let want = SHOPPERS as i64 * PRICES.iter().sum::<i64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::kept(&channels) != want {
        assert!(
            Instant::now() < deadline,
            "providers kept {} fen, the mall sold {want}",
            common::kept(&channels)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
    let (ok, text) = mall(&["check"], &data);
    assert!(ok, "mall check failed:\n{text}");
    let (ok, text) = mall(&["ledger", "verify"], &data);
    assert!(ok, "mall ledger verify failed:\n{text}");
}
