//! Regression tests for the outside probe's findings (issue 9), one per
//! numbered item, named after it. Each failed on the code before its fix.

mod common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::json;

/// Tops up `token`'s wallet by `fen` through the simulated channel.
async fn top_up(api: &Api, token: &str, fen: i64) {
    let r = api
        .call(
            "POST",
            "/v1/wallet/top-ups",
            Some(token),
            Some(json!({"amount_fen": fen, "method": "third_party"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// What the wallet can spend: posted balance less payments under way (a
/// paid order's transfer is posted in the background).
async fn balance(api: &Api, token: &str) -> i64 {
    let r = api.get("/v1/wallet", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["balance_fen"].as_i64().unwrap() - r.body["pending_out_fen"].as_i64().unwrap()
}

async fn counters(api: &Api, sku: u64) -> (u64, u64, u64) {
    let r = api.get(&format!("/v1/items/{sku}"), None).await;
    let n = |k: &str| r.body[k].as_u64().unwrap();
    (n("available"), n("held"), n("sold"))
}

/// An admin's action on an order: `deliver` or `cod-collected`.
async fn admin_order(api: &Api, id: u64, action: &str) -> Reply {
    api.post(
        &format!("/v1/admin/orders/{id}/{action}"),
        Some(ADMIN),
        json!({}),
    )
    .await
}

async fn status(api: &Api, id: u64) -> String {
    let r = api.get(&format!("/v1/orders/{id}"), Some(ADMIN)).await;
    r.body["status"].as_str().unwrap_or("?").to_string()
}

/// A shopper with one order (of a fresh item) awaiting payment.
async fn shopper_with_order(api: &Api, who: &str) -> (Vec<String>, u64) {
    let sku = api.item(5, 2, 0).await;
    let u = api.shoppers(1, who).await;
    let id = api.order(&u[0], sku, 1, None).await.body["id"]
        .as_u64()
        .unwrap();
    (u, id)
}

/// Pays order `id` by third party under Idempotency-Key `key`.
async fn pay_by_third_party(api: &Api, token: &str, id: u64, key: &str) -> Reply {
    api.call(
        "POST",
        &format!("/v1/orders/{id}/payments"),
        Some(token),
        Some(json!({"method": "third_party"})),
        Some(key),
    )
    .await
}

/// Waits (up to 2 s) for order `id` to be paid.
async fn until_paid(api: &Api, id: u64) {
    for _ in 0..200 {
        if status(api, id).await == "paid" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_1_a_delivered_order_cannot_be_cancelled_and_money_goes_back_only_by_refund() {
    let (api, _sim) = Api::with_channel().await;
    let sku = api.item(5, 2, 0).await;
    let u = api.shoppers(2, "d").await;
    top_up(&api, &u[0], 100_000).await;
    let id = api.order(&u[0], sku, 1, None).await.body["id"]
        .as_u64()
        .unwrap();
    let r = api
        .post(
            &format!("/v1/orders/{id}/payments"),
            Some(&u[0]),
            json!({"method": "wallet"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let paid_balance = balance(&api, &u[0]).await;
    let r = admin_order(&api, id, "deliver").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(status(&api, id).await, "delivered");
    // The probe's repro: the shopper cancels after delivery.
    let r = api
        .post(&format!("/v1/orders/{id}/cancel"), Some(&u[0]), json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_delivered"),
        "{}",
        r.body
    );
    // Nothing moved: no refund, the unit stays sold, the order delivered.
    assert_eq!(balance(&api, &u[0]).await, paid_balance);
    assert_eq!(counters(&api, sku).await, (4, 0, 1));
    assert_eq!(status(&api, id).await, "delivered");
    // An admin cannot cancel it either; an after-sale refund is the way.
    let r = api
        .post(&format!("/v1/orders/{id}/cancel"), Some(ADMIN), json!({}))
        .await;
    assert_eq!(r.code(), "already_delivered");
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/refunds"),
            Some(ADMIN),
            Some(json!({})),
            Some("after-sale-1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(balance(&api, &u[0]).await, paid_balance + 29_900);
    assert_eq!(
        counters(&api, sku).await,
        (4, 0, 1),
        "stock never returns by itself"
    );

    // Cash on delivery: collected means delivered.
    let body =
        json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "2 Huaihai Road, Shanghai"});
    let r = api
        .call("POST", "/v1/orders", Some(&u[1]), Some(body), None)
        .await;
    assert_eq!(r.body["status"], "confirmed", "{}", r.body);
    let cod = r.body["id"].as_u64().unwrap();
    let r = admin_order(&api, cod, "cod-collected").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .post(&format!("/v1/orders/{cod}/cancel"), Some(&u[1]), json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_delivered")
    );
    assert_eq!(status(&api, cod).await, "delivered");
    assert_eq!(counters(&api, sku).await, (3, 0, 2));
    // Collected twice books nothing twice; then settled to the merchant once.
    let r = admin_order(&api, cod, "cod-collected").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = admin_order(&api, cod, "deliver").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = admin_order(&api, cod, "deliver").await;
    assert_eq!(r.code(), "already_settled");
    // A refused delivery changes nothing: an unpaid order stays cancellable.
    let unpaid = api.order(&u[1], sku, 1, None).await.body["id"]
        .as_u64()
        .unwrap();
    let r = admin_order(&api, unpaid, "deliver").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(status(&api, unpaid).await, "awaiting_payment");
    let r = api
        .post(
            &format!("/v1/orders/{unpaid}/cancel"),
            Some(&u[1]),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
}

/// Cancels raced against payments (wallet and channel): an error answer
/// must mean nothing changed, and a success must say what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_6_a_cancel_racing_a_payment_answers_with_what_happened() {
    let (api, _sim) = Api::with_channel().await;
    let sku = api.item(40, 2, 0).await;
    let u = api.shoppers(20, "race").await;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for (i, token) in u.iter().enumerate() {
        let method = if i % 2 == 0 { "wallet" } else { "third_party" };
        if method == "wallet" {
            top_up(&api, token, 50_000).await;
        }
        let before = balance(&api, token).await;
        let id = api.order(token, sku, 1, None).await.body["id"]
            .as_u64()
            .unwrap();
        let pay_path = format!("/v1/orders/{id}/payments");
        let cancel_path = format!("/v1/orders/{id}/cancel");
        let (paid, cancelled) = tokio::join!(
            api.post(&pay_path, Some(token), json!({ "method": method })),
            api.post(&cancel_path, Some(token), json!({}))
        );
        let now = status(&api, id).await;
        *outcomes
            .entry(format!(
                "{method}: pay {} / cancel {} / {now}",
                paid.status.as_u16(),
                cancelled.status.as_u16()
            ))
            .or_default() += 1;
        if cancelled.status == StatusCode::OK {
            assert_eq!(cancelled.body["status"], "cancelled", "{}", cancelled.body);
            assert_eq!(now, "cancelled");
            if method == "wallet" {
                // Whatever the payment did, the wallet is whole again.
                assert_eq!(balance(&api, token).await, before, "order {id}");
            }
        } else {
            // An error: nothing changed by the cancel.
            assert_ne!(now, "cancelled", "order {id}: {}", cancelled.body);
            assert!(
                ["payment_in_progress", "invalid_order_status"].contains(&cancelled.code()),
                "{}",
                cancelled.body
            );
        }
        if paid.status == StatusCode::OK {
            assert_eq!(paid.body["order"]["status"], "paid");
        }
    }
    println!("races: {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_8_every_error_is_json() {
    let (api, _sim) = Api::with_channel().await;
    let u = api.shoppers(1, "j").await;
    let raw = |method: &str, uri: &str, token: Option<&str>, body: Body| {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    // `raw` (the helper) asserts that every 4xx/5xx carries a code and a message.
    for (method, uri, token, want) in [
        ("GET", "/v1/items/%FF", None, "invalid_path"),
        (
            "GET",
            "/v1/orders/%00%ff",
            Some(u[0].as_str()),
            "invalid_path",
        ),
        (
            "POST",
            "/v1/orders/%FF/payments",
            Some(u[0].as_str()),
            "invalid_path",
        ),
        (
            "POST",
            "/v1/items/%C3%28/favorite",
            Some(u[0].as_str()),
            "invalid_path",
        ),
        (
            "GET",
            "/v1/wallet/statement?limit=1&limit=2",
            Some(u[0].as_str()),
            "invalid_query",
        ),
        ("GET", "/v1/items?limit=1&limit=2", None, "invalid_query"),
        (
            "GET",
            "/v1/orders?limit=x",
            Some(u[0].as_str()),
            "invalid_query",
        ),
    ] {
        let r = api.raw(raw(method, uri, token, Body::from("{}"))).await;
        assert_eq!(r.code(), want, "{method} {uri}: {}", r.body);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let big = Body::from(vec![b'x'; 200 * 1024]);
    let r = api
        .raw(raw("POST", "/v1/channels/sim/callback", None, big))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_9_weak_passwords_are_refused() {
    let api = Api::new();
    for (i, weak) in [
        "password",
        "12345678",
        "        ",
        "PassWord1",
        "\t\t\t\t\t\t\t\t",
    ]
    .iter()
    .enumerate()
    {
        let r = api
            .post(
                "/v1/users",
                None,
                json!({"username": format!("weak{i}"), "password": weak}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "weak_password"),
            "{weak:?}: {}",
            r.body
        );
    }
    let r = api
        .post(
            "/v1/users",
            None,
            json!({"username": "strong", "password": "seven horses run far"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_10_anonymous_idempotency_keys_are_scoped_by_username() {
    let api = Api::new();
    let register = |name: &'static str, password: &'static str| {
        let api = &api;
        async move {
            api.call(
                "POST",
                "/v1/users",
                None,
                Some(json!({"username": name, "password": password})),
                Some("k-1"),
            )
            .await
        }
    };
    let a = register("alice", "alice's long secret").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    // Another client's registration with the same key is its own.
    let b = register("bob", "bob's long secret!").await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert!(!b.replayed);
    assert_ne!(a.body["id"], b.body["id"]);
    // The same key and username with another password: refused, not a 201.
    let c = register("alice", "another long secret").await;
    assert_eq!(
        (c.status, c.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    // A true retry replays.
    let d = register("alice", "alice's long secret").await;
    assert_eq!((d.status, d.replayed), (StatusCode::CREATED, true));
    for (name, password) in [
        ("alice", "alice's long secret"),
        ("bob", "bob's long secret!"),
    ] {
        let r = api
            .post(
                "/v1/sessions",
                None,
                json!({"username": name, "password": password}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_12_a_merchant_cannot_buy_its_own_items() {
    let api = Api::new();
    let sku = api.item(10, 2, 0).await;
    let merchant = api.get(&format!("/v1/items/{sku}"), None).await.body["merchant_id"].clone();
    let r = api
        .post(
            "/v1/admin/users",
            Some(ADMIN),
            json!({"username": "shopkeeper", "password": "sells rice cookers", "role": "merchant", "merchant_id": merchant}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let login = api
        .post(
            "/v1/sessions",
            None,
            json!({"username": "shopkeeper", "password": "sells rice cookers"}),
        )
        .await;
    let token = login.body["token"].as_str().unwrap().to_string();
    let r = api.order(&token, sku, 1, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "own_item"),
        "{}",
        r.body
    );
    assert_eq!(counters(&api, sku).await, (10, 0, 0));
    // Another merchant's item is fine.
    let other = api.item(3, 1, 0).await;
    assert_eq!(
        api.order(&token, other, 1, None).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_13_bearer_any_case_nosniff_and_no_framing() {
    let api = Api::new();
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let req = Request::builder()
            .uri("/v1/admin/merchants")
            .header("authorization", format!("{scheme} {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(api.raw(req).await.status, StatusCode::OK, "{scheme}");
    }
    let response = tower::ServiceExt::oneshot(
        api.app.clone(),
        Request::builder().uri("/").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let h = response.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "frame-ancestors 'none'");
    let r = api.get("/v1/items/1", None).await;
    assert_eq!(r.code(), "item_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_3_log_out_revoke_rotate_and_shorter_admin_sessions() {
    let api = Api::new();
    let r = api
        .post(
            "/v1/users",
            None,
            json!({"username": "li.lei", "password": "correct horse"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let login = || {
        let api = &api;
        async move {
            let r = api
                .post(
                    "/v1/sessions",
                    None,
                    json!({"username": "li.lei", "password": "correct horse"}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body
        }
    };
    let s1 = login().await;
    let t1 = s1["token"].as_str().unwrap().to_string();
    assert_eq!(
        s1["expires_at_ms"].as_i64().unwrap() - T0,
        24 * 3_600_000,
        "a shopper's session lasts 24 h"
    );
    let t2 = login().await["token"].as_str().unwrap().to_string();
    // Log out ends that token only.
    let r = api
        .call("DELETE", "/v1/sessions/current", Some(&t1), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        api.get("/v1/orders", Some(&t1)).await.code(),
        "invalid_token"
    );
    assert_eq!(
        api.get("/v1/orders", Some(&t2)).await.status,
        StatusCode::OK
    );
    // An admin revokes every session of the user.
    let user = s1["user"]["id"].as_u64().unwrap();
    let bulk = api.shoppers(1, "rv").await;
    let r = api
        .call(
            "DELETE",
            &format!("/v1/admin/users/{user}/sessions"),
            Some(&bulk[0]),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "shoppers may not revoke");
    let r = api
        .call(
            "DELETE",
            &format!("/v1/admin/users/{user}/sessions"),
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["sessions_ended"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{}",
        r.body
    );
    assert_eq!(
        api.get("/v1/orders", Some(&t2)).await.code(),
        "invalid_token"
    );
    assert_eq!(
        api.get("/v1/orders", Some(&bulk[0])).await.status,
        StatusCode::OK
    );
    let r = api
        .call(
            "DELETE",
            "/v1/admin/users/999999/sessions",
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(r.code(), "user_not_found");
    // Admins who log in get a shorter session than shoppers.
    let r = api
        .post(
            "/v1/admin/users",
            Some(ADMIN),
            json!({"username": "ops", "password": "night shift 1111", "role": "admin"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .post(
            "/v1/sessions",
            None,
            json!({"username": "ops", "password": "night shift 1111"}),
        )
        .await;
    assert_eq!(
        r.body["expires_at_ms"].as_i64().unwrap() - T0,
        8 * 3_600_000
    );
    // A new bootstrap token replaces the old one.
    let rotated = "rotated-admin-token-0123456789abcdef-xyz";
    mall_http::bootstrap_admin(&api.state, Some(rotated), None).unwrap();
    assert_eq!(
        api.get("/v1/admin/merchants", Some(ADMIN)).await.code(),
        "invalid_token"
    );
    assert_eq!(
        api.get("/v1/admin/merchants", Some(rotated)).await.status,
        StatusCode::OK
    );
    // The same one again changes nothing.
    mall_http::bootstrap_admin(&api.state, Some(rotated), None).unwrap();
    assert_eq!(
        api.get("/v1/admin/merchants", Some(rotated)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_5_failed_logins_are_throttled_per_username() {
    let mut config = mall_http::HttpConfig::default();
    config.rate.anonymous_rate_per_s = 1e6;
    config.rate.anonymous_burst = 1e6;
    let api = Api::with_config(config);
    let r = api
        .post(
            "/v1/users",
            None,
            json!({"username": "han.mei", "password": "correct horse"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let attempt = |password: &'static str| {
        let api = &api;
        async move {
            api.post(
                "/v1/sessions",
                None,
                json!({"username": "han.mei", "password": password}),
            )
            .await
        }
    };
    for _ in 0..6 {
        assert_eq!(attempt("wrong horse").await.code(), "bad_credentials");
    }
    let r = attempt("wrong horse").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "login_throttled"),
        "{}",
        r.body
    );
    // Even the right password waits out the delay (one second here)...
    assert_eq!(attempt("correct horse").await.code(), "login_throttled");
    // ...but not for long, and other usernames were never slowed.
    let r = api
        .post(
            "/v1/sessions",
            None,
            json!({"username": "nobody.else", "password": "whatever1"}),
        )
        .await;
    assert_eq!(r.code(), "bad_credentials");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(attempt("correct horse").await.status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_7_registrations_are_limited_per_address_and_proxies_are_trusted_only_if_listed() {
    let mut config = mall_http::HttpConfig::default();
    config.rate.registrations_per_address_per_h = 3.0;
    config.trusted_proxies = mall_http::client::parse_list("0.0.0.0").unwrap();
    let api = Api::with_config(config);
    let register = |n: u32, forwarded: &'static str| {
        let api = &api;
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/users")
                .header("content-type", "application/json")
                .header("x-forwarded-for", forwarded)
                .body(Body::from(
                    json!({"username": format!("acct{n}"), "password": "a long enough secret"})
                        .to_string(),
                ))
                .unwrap();
            api.raw(req).await
        }
    };
    // In-process requests come from 0.0.0.0, listed as a trusted proxy
    // here, so the forwarded address is the client.
    for n in 0..3 {
        assert_eq!(
            register(n, "198.51.100.1").await.status,
            StatusCode::CREATED
        );
    }
    let r = register(3, "198.51.100.1").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "registration_limited"),
        "{}",
        r.body
    );
    // Another client is not affected.
    assert_eq!(
        register(4, "198.51.100.2").await.status,
        StatusCode::CREATED
    );
    // Untrusted: the header is ignored (the connection's own address counts).
    let api2 = Api::with_config({
        let mut c = mall_http::HttpConfig::default();
        c.rate.registrations_per_address_per_h = 2.0;
        c
    });
    let mut statuses = Vec::new();
    for (n, fwd) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/users")
            .header("content-type", "application/json")
            .header("x-forwarded-for", *fwd)
            .body(Body::from(
                json!({"username": format!("other{n}"), "password": "a long enough secret"})
                    .to_string(),
            ))
            .unwrap();
        statuses.push(api2.raw(req).await.status.as_u16());
    }
    assert_eq!(statuses, vec![201, 201, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_4_password_hashing_is_bounded_and_answers_busy_beyond() {
    let mut config = mall_http::HttpConfig::default();
    config.rate.anonymous_rate_per_s = 1e6;
    config.rate.anonymous_burst = 1e6;
    config.passwords.threads = 1;
    config.passwords.queue_max = 2;
    let api = std::sync::Arc::new(Api::with_config(config));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let r = api
                .post(
                    "/v1/sessions",
                    None,
                    json!({"username": format!("ghost{i}"), "password": "not a password"}),
                )
                .await;
            (r.status.as_u16(), r.code().to_string(), r.body)
        }));
    }
    let mut seen = std::collections::BTreeMap::<(u16, String), u32>::new();
    for t in tasks {
        let (status, code, body) = t.await.unwrap();
        assert!(status == 401 || status == 503, "{status} {body}");
        *seen.entry((status, code)).or_default() += 1;
    }
    println!("24 logins at once, 1 thread, 2 queued: {seen:?}");
    assert!(seen.contains_key(&(503, "busy".to_string())), "{seen:?}");
    assert!(
        seen.contains_key(&(401, "bad_credentials".to_string())),
        "{seen:?}"
    );
}

/// Every stable error code the code can answer is in README's table
/// (item 13: three were missing). The codes are read from the sources:
/// `ApiError` constructors, `code = "..."` assignments, the literal in the
/// listener's refusal, and the `fn code` tables of the refusal enums.
#[test]
fn issue9_13_readme_lists_every_error_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = &readme[readme
        .find("| status | codes |")
        .expect("README's error table")..];
    let mut sources = Vec::new();
    for dir in ["crates/mall-http/src", "crates/mall-http/src/routes"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                sources.push((p.clone(), false));
            }
        }
    }
    for f in [
        "crates/mall-core/src/outcome.rs",
        "crates/mall-payments/src/errors.rs",
        "crates/mall-router/src/signature.rs",
    ] {
        sources.push((root.join(f), true));
    }
    let is_code = |s: &str| {
        s.len() >= 3 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && s.contains('_')
    };
    let first_literal = |text: &str| -> Option<String> {
        let start = text.find('"')? + 1;
        let end = start + text[start..].find('"')?;
        Some(text[start..end].to_string())
    };
    let mut codes = std::collections::BTreeSet::new();
    for (path, tables) in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for marker in [
            "ApiError::new(",
            "ApiError::bad_request(",
            "ApiError::not_found(",
            "ApiError::conflict(",
            "ApiError::forbidden_code(",
            "code = \"",
            "\"code\\\":\\\"",
        ] {
            for (at, _) in text.match_indices(marker) {
                let after = &text[at + marker.len() - usize::from(marker.ends_with('"'))..];
                // The code is the first string literal within the call.
                let window = &after[..after.len().min(160)];
                if let Some(lit) = first_literal(window).filter(|l| is_code(l)) {
                    codes.insert(lit);
                }
            }
        }
        if tables {
            for (at, _) in text.match_indices("fn code(&self)") {
                let body = &text[at..];
                let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
                for line in body.lines().filter(|l| l.contains("=> \"")) {
                    if let Some(lit) = first_literal(&line[line.find("=> \"").unwrap()..]) {
                        codes.insert(lit);
                    }
                }
            }
        }
        if path.ends_with("listener.rs") {
            codes.insert("too_many_connections".into());
            assert!(text.contains("too_many_connections"));
        }
    }
    for status_only in [
        "headers_too_large",
        "uri_too_long",
        "request_timeout",
        "unavailable",
    ] {
        codes.remove(status_only); // only ever a rewrite of the server's own text errors
    }
    assert!(
        codes.len() > 50,
        "found only {} codes: {codes:?}",
        codes.len()
    );
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !table.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's error table misses {missing:?}"
    );
}

/// Issue 10's audit failures: a payment answered 202, retried with the same
/// key after the order was paid, must answer 200 paid (not
/// `invalid_order_status`); a retried top-up must not top up twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_a_retried_payment_answers_how_it_ended_and_a_top_up_happens_once() {
    // The answer leaves after 1 ms; the provider takes ~5 ms.
    let (api, _sim) = Api::with_channel_and(Api::new(), 1).await;
    let (u, id) = shopper_with_order(&api, "retry").await;
    let pay = || pay_by_third_party(&api, &u[0], id, "pay-1");
    let first = pay().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    until_paid(&api, id).await;
    assert_eq!(status(&api, id).await, "paid");
    let again = pay().await;
    assert_eq!(
        (
            again.status,
            again.body["payment"]["status"].as_str(),
            again.body["order"]["status"].as_str()
        ),
        (StatusCode::OK, Some("succeeded"), Some("paid")),
        "{}",
        again.body
    );
    // And from then on the same answer, replayed.
    let third = pay().await;
    assert_eq!((third.status, third.replayed), (StatusCode::OK, true));
    // Another key is another payment: refused, nothing charged.
    let other = pay_by_third_party(&api, &u[0], id, "pay-2").await;
    assert_eq!(other.code(), "invalid_order_status");

    let top_up = || {
        api.call(
            "POST",
            "/v1/wallet/top-ups",
            Some(&u[0]),
            Some(json!({"amount_fen": 1000, "method": "third_party"})),
            Some("top-1"),
        )
    };
    let first = top_up().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = top_up().await;
    assert!(again.status.is_success(), "{}", again.body);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(balance(&api, &u[0]).await, 1000, "one top-up, not two");
}

/// Issue 10's audit failures, the root cause: a client that hangs up (its
/// own timeout) must not cut the payment request off before its answer is
/// stored, or the retry finds a paid order and no answer to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_a_payment_whose_client_hung_up_answers_its_retry_with_the_outcome() {
    let (api, _sim) = Api::with_channel().await;
    let (u, id) = shopper_with_order(&api, "hangup").await;
    let pay = || pay_by_third_party(&api, &u[0], id, "k");
    // The client gives up after 1 ms; the provider takes ~5 ms.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1), pay())
            .await
            .is_err()
    );
    until_paid(&api, id).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let again = pay().await;
    assert_eq!(
        (again.status, again.body["order"]["status"].as_str()),
        (StatusCode::OK, Some("paid")),
        "{}",
        again.body
    );
}

/// `/metrics` comes from a maintained client library: every family has its
/// HELP and TYPE (the payment totals had none), counters are typed
/// counters (a channel's dispatches were a gauge), and the text ends as
/// OpenMetrics requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_metrics_are_typed_and_described() {
    let (api, _sim) = Api::with_channel().await;
    let u = api.shoppers(1, "m").await;
    top_up(&api, &u[0], 10_000).await;
    let r = api.get("/metrics", Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().expect("a text body");
    assert!(
        text.ends_with("# EOF\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    let mut typed = std::collections::HashMap::new();
    let mut described = std::collections::HashSet::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name)) => {
                typed.insert(name.to_string(), words.next().unwrap_or("").to_string());
            }
            (Some("#"), Some("HELP"), Some(name)) => {
                described.insert(name.to_string());
            }
            _ => {}
        }
    }
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = &line[..line.find(['{', ' ']).expect("a sample line")];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{name} has no TYPE");
        assert!(described.contains(family), "{name} has no HELP");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}: value {value}");
        samples += 1;
    }
    assert!(samples > 50, "only {samples} samples");
    assert_eq!(typed["mall_channel_dispatched"], "counter");
    assert_eq!(typed["mall_payments_succeeded"], "counter");
    assert_eq!(typed["mall_channel_in_flight"], "gauge");
    assert_eq!(typed["mall_shard_commit_seconds"], "histogram");
    assert!(text.contains("mall_payments_succeeded_total 1\n"), "{text}");
    assert!(text.contains("mall_channel_dispatched_total{channel=\"sim\"} 1\n"));
}
