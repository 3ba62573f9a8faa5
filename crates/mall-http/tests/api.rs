//! HTTP tests of every endpoint, every error code and authorization,
//! against the real engine and SQLite store (in a temp dir), on a manual clock.

mod common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use mall_core::Timestamp;
use mall_engine::{Engine, EngineConfig};
use mall_shard::{Clock, ManualClock};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_openapi_and_unknown_routes() {
    let api = Api::new();
    let r = api.get("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["shards"], 2);
    let r = api.get("/v1/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    for path in [
        "/v1/orders",
        "/v1/orders/{id}/cancel",
        "/v1/items/{sku}",
        "/v1/admin/users/bulk",
        "/v1/sessions",
        "/v1/checkouts/{id}/payments",
    ] {
        assert!(r.body["paths"][path].is_object(), "openapi lacks {path}");
    }
    let r = api.get("/nope", None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "route_not_found")
    );
    let r = api.call("DELETE", "/v1/items", None, None, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_admin_and_count_orders_and_refusals() {
    let api = Api::new();
    let sku = api.item(1, 1, -1000).await;
    let users = api.shoppers(2, "m").await;
    assert_eq!(
        api.order(&users[0], sku, 1, None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(api.order(&users[1], sku, 1, None).await.code(), "sold_out");
    assert_eq!(
        api.get("/metrics", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("/metrics", Some(&users[0])).await.status,
        StatusCode::FORBIDDEN
    );
    let r = api.get("/metrics", Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap();
    for line in [
        "mall_orders_total{payment=\"online\"} 1",
        "mall_refusals_total{reason=\"sold_out\"} 1",
        "mall_shard_queue_depth{shard=\"0\"}",
        "mall_shard_reloads_total{shard=\"0\"} 0",
        "mall_shard_commit_seconds_bucket",
        "route=\"/v1/orders\"",
    ] {
        assert!(text.contains(line), "metrics lack {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_token_checks() {
    let api = Api::new();
    let creds = json!({"username": "li.lei", "password": "correct horse"});
    let r = api.post("/v1/users", None, creds.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["role"], "shopper");
    assert_eq!(
        api.post("/v1/users", None, creds.clone()).await.code(),
        "username_taken"
    );
    assert_eq!(
        api.post(
            "/v1/users",
            None,
            json!({"username": "X!", "password": "correct horse"})
        )
        .await
        .code(),
        "invalid_request"
    );
    assert_eq!(
        api.post(
            "/v1/users",
            None,
            json!({"username": "hanmeimei", "password": "short"})
        )
        .await
        .code(),
        "invalid_request"
    );
    let r = api
        .post(
            "/v1/sessions",
            None,
            json!({"username": "li.lei", "password": "wrong horse"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );
    let r = api
        .post(
            "/v1/sessions",
            None,
            json!({"username": "nobody", "password": "whatever1"}),
        )
        .await;
    assert_eq!(r.code(), "bad_credentials");
    let r = api.post("/v1/sessions", None, creds).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.get("/v1/orders", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(api.get("/v1/orders", None).await.code(), "unauthenticated");
    assert_eq!(
        api.get("/v1/orders", Some("not-a-token")).await.code(),
        "invalid_token"
    );
    // Shoppers may not do admin things.
    assert_eq!(
        api.post("/v1/admin/merchants", Some(&token), json!({"name": "x"}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.post("/v1/admin/users/bulk", Some(&token), json!({"count": 1}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Tokens expire.
    api.clock.advance_ms(25 * 3_600_000);
    assert_eq!(
        api.get("/v1/orders", Some(&token)).await.code(),
        "invalid_token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_accounts_and_bulk_limits() {
    let api = Api::new();
    let m = api
        .post(
            "/v1/admin/merchants",
            Some(ADMIN),
            json!({"name": "Panda Store"}),
        )
        .await;
    assert_eq!(
        api.post(
            "/v1/admin/merchants",
            Some(ADMIN),
            json!({"name": "Panda Store"})
        )
        .await
        .code(),
        "merchant_name_taken"
    );
    let r = api.post("/v1/admin/users", Some(ADMIN), json!({"username": "panda", "password": "bamboo-shoots", "role": "merchant", "merchant_id": m.body["id"]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .post(
            "/v1/admin/users",
            Some(ADMIN),
            json!({"username": "panda2", "password": "bamboo-shoots", "role": "merchant"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    let r = api
        .post(
            "/v1/admin/users",
            Some(ADMIN),
            json!({"username": "boss", "password": "bamboo-shoots", "role": "emperor"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    assert_eq!(
        api.post("/v1/admin/users/bulk", Some(ADMIN), json!({"count": 0}))
            .await
            .code(),
        "invalid_request"
    );
    assert_eq!(
        api.post(
            "/v1/admin/users/bulk",
            Some(ADMIN),
            json!({"count": 10_001})
        )
        .await
        .code(),
        "invalid_request"
    );
    let r = api
        .post(
            "/v1/admin/users/bulk",
            Some(ADMIN),
            json!({"count": 10, "start": u64::MAX - 5}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    // A replayed bulk creation lists the accounts but never their tokens:
    // only token hashes are stored.
    let first = api
        .call(
            "POST",
            "/v1/admin/users/bulk",
            Some(ADMIN),
            Some(json!({"count": 2, "prefix": "b"})),
            Some("bulk-1"),
        )
        .await;
    assert!(first.body["users"][0]["token"].is_string());
    let replay = api
        .call(
            "POST",
            "/v1/admin/users/bulk",
            Some(ADMIN),
            Some(json!({"count": 2, "prefix": "b"})),
            Some("bulk-1"),
        )
        .await;
    assert!(replay.replayed);
    assert_eq!(replay.body["users"][1]["id"], first.body["users"][1]["id"]);
    assert!(replay.body["users"][0]["token"].is_null());
    let r = api.get("/v1/admin/merchants", Some(ADMIN)).await;
    assert_eq!(r.body["merchants"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_browse_filter_page_and_validate() {
    let api = Api::new();
    let m = api
        .post("/v1/admin/merchants", Some(ADMIN), json!({"name": "Jade"}))
        .await;
    let base = json!({"merchant_id": m.body["id"], "title": "Crab", "category": "fresh", "price_fen": 8800, "stock": 5,
                      "opens_at_ms": T0, "closes_at_ms": T0 + 1000, "shelf_life_hours": 48});
    for _ in 0..3 {
        assert_eq!(
            api.post("/v1/admin/items", Some(ADMIN), base.clone())
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let mut book = base.clone();
    book["category"] = json!("books");
    book.as_object_mut().unwrap().remove("shelf_life_hours");
    let r = api.post("/v1/admin/items", Some(ADMIN), book.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["available"], 5);
    assert_eq!(r.body["sale"], "open");
    let r = api.get("/v1/items?category=fresh&limit=2", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let next = r.body["next_after"].as_u64().unwrap();
    let r = api
        .get(
            &format!("/v1/items?category=fresh&limit=2&after={next}"),
            None,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert!(r.body["next_after"].is_null());
    assert_eq!(
        api.get("/v1/items?category=weapons", None).await.code(),
        "invalid_query"
    );
    assert_eq!(
        api.get("/v1/items?limit=0", None).await.code(),
        "invalid_query"
    );
    assert_eq!(
        api.get("/v1/items?bogus=1", None).await.code(),
        "invalid_query"
    );
    assert_eq!(
        api.get("/v1/items/999", None).await.code(),
        "item_not_found"
    );
    assert_eq!(api.get("/v1/items/abc", None).await.code(), "invalid_id");
    // Validation: each bad field is a 422 with a clear message, nothing created.
    api.each_invalid(
        "/v1/admin/items",
        &book,
        &[
            ("price_fen", json!(0)),
            ("stock", json!(-1)),
            ("category", json!("weapons")),
            ("closes_at_ms", json!(T0 - 1)),
            ("title", json!("")),
        ],
    )
    .await;
    let mut bad = book.clone();
    bad["merchant_id"] = json!(404);
    assert_eq!(
        api.post("/v1/admin/items", Some(ADMIN), bad).await.code(),
        "merchant_not_found"
    );
    assert_eq!(api.get("/healthz", None).await.body["items"], 4);
}

/// Sold out is answered before the shard's queue, to everyone but the
/// item's buyers: a retry of an order that succeeded still gets it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_success_replays_after_the_item_sold_out() {
    let api = Api::new();
    let sku = api.item(1, 1, 0).await;
    let u = api.shoppers(3, "r").await;
    let won = api.order(&u[0], sku, 1, Some("win")).await;
    assert_eq!(won.status, StatusCode::CREATED, "{}", won.body);
    for _ in 0..3 {
        let r = api.order(&u[1], sku, 1, Some("late")).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "sold_out"));
    }
    let again = api.order(&u[0], sku, 1, Some("win")).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body["id"], won.body["id"]);
    // A buyer's new request reaches the shard, which gives the same answer.
    let r = api.order(&u[0], sku, 1, Some("more")).await;
    assert_eq!(r.code(), "sold_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap_up_refusals_and_strict_parsing() {
    let api = Api::new();
    let sku = api.item(2, 1, 0).await;
    let u = api.shoppers(4, "s").await;
    let r = api.order(&u[0], sku, 1, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "awaiting_payment");
    assert_eq!(r.body["amount_fen"], 29900);
    assert_eq!(r.body["expires_at_ms"], T0 + 60_000);
    assert_eq!(api.order(&u[0], sku, 1, None).await.code(), "limit_reached");
    assert_eq!(api.order(&u[1], sku, 2, None).await.code(), "limit_reached");
    let cod = json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "2 Nanjing Road"});
    let r = api.post("/v1/orders", Some(&u[1]), cod).await;
    assert_eq!(r.body["status"], "confirmed");
    let r = api.order(&u[2], sku, 1, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "sold_out"));
    let r = api.order(&u[2], 777, 1, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "item_not_found")
    );
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        (
            item.body["available"].as_u64(),
            item.body["held"].as_u64(),
            item.body["sold"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );

    // Strict parsing: each is a 4xx with its own code, and nothing changes.
    let other = api.item(5, 5, 0).await;
    for (qty, code) in [
        (json!(0), "invalid_quantity"),
        (json!(-3), "invalid_quantity"),
        (json!(1001), "invalid_quantity"),
        (json!(4_294_967_297u64), "invalid_quantity"),
        (json!(1e40), "invalid_request"),
        (json!("2"), "invalid_request"),
    ] {
        let r = api
            .post(
                "/v1/orders",
                Some(&u[3]),
                json!({"sku": other, "quantity": qty, "payment": "online", "address": "a"}),
            )
            .await;
        assert_eq!(r.code(), code, "quantity {qty}: {}", r.body);
        assert!(r.status.is_client_error());
    }
    let r = api.post("/v1/orders", Some(&u[3]), json!({"sku": other, "quantity": 1, "payment": "online", "address": "a", "coupon": "x"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
    );
    let r = api
        .post(
            "/v1/orders",
            Some(&u[3]),
            json!({"sku": other, "quantity": 1, "payment": "bitcoin", "address": "a"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    let r = api
        .post(
            "/v1/orders",
            Some(&u[3]),
            json!({"sku": other, "quantity": 1, "payment": "online", "address": ""}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    let r = api
        .post(
            "/v1/orders",
            Some(&u[3]),
            json!({"sku": other, "quantity": 1, "payment": "online"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    let req = |body: &'static str, ctype: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/v1/orders")
            .header("authorization", format!("Bearer {}", u[3]))
            .header("content-type", ctype)
            .body(Body::from(body))
            .unwrap()
    };
    let r = api.raw(req("{\"sku\": 1, ", "application/json")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let r = api.raw(req("sku=1", "text/plain")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let big = Box::leak(format!("{{\"address\": \"{}\"}}", "x".repeat(100_000)).into_boxed_str());
    let r = api.raw(req(big, "application/json")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let r = api
        .call(
            "POST",
            "/v1/orders",
            Some(&u[3]),
            Some(json!({"sku": other, "quantity": 1, "payment": "online", "address": "a"})),
            Some("bad key with spaces"),
        )
        .await;
    assert_eq!(r.code(), "invalid_idempotency_key");
    let item = api.get(&format!("/v1/items/{other}"), None).await;
    assert_eq!(
        item.body["available"], 5,
        "refused requests changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_window_and_the_ceremonial_first_order() {
    let api = Api::new();
    let sku = api.item(10, 1, 5 * 60_000).await;
    let u = api.shoppers(1, "w").await;
    let r = api.order(&u[0], sku, 1, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "sale_not_open")
    );
    let r = api.order(ADMIN, sku, 1, None).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "admins buy early: {}",
        r.body
    );
    api.clock.advance_ms(5 * 60_000);
    assert_eq!(
        api.order(&u[0], sku, 1, None).await.status,
        StatusCode::CREATED
    );
    api.clock.advance_ms(86_400_000);
    let other = api.shoppers(1, "late").await;
    assert_eq!(
        api.order(&other[0], sku, 1, None).await.code(),
        "sale_closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_and_refuse_reuse() {
    let api = Api::new();
    let sku = api.item(10, 3, 0).await;
    let u = api.shoppers(2, "i").await;
    let first = api.order(&u[0], sku, 1, Some("key-1")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed);
    let again = api.order(&u[0], sku, 1, Some("key-1")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(again.body["id"], first.body["id"]);
    let reused = api.order(&u[0], sku, 2, Some("key-1")).await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    assert_eq!(
        api.get(&format!("/v1/items/{sku}"), None).await.body["held"],
        1
    );
    // Cancel, then a replay of the order still names it (now from the store).
    let id = first.body["id"].as_u64().unwrap();
    assert_eq!(
        api.call(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(&u[0]),
            None,
            Some("c-1")
        )
        .await
        .status,
        StatusCode::OK
    );
    let replay = api.order(&u[0], sku, 1, Some("key-1")).await;
    assert_eq!(
        (replay.body["id"].as_u64(), replay.body["status"].as_str()),
        (Some(id), Some("cancelled"))
    );
    // Non-order requests: the same key returns the stored first response.
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(&u[0]),
            None,
            Some("c-1"),
        )
        .await;
    assert!(r.replayed);
    let other = api.order(&u[0], sku, 1, None).await.body["id"]
        .as_u64()
        .unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{other}/cancel"),
            Some(&u[0]),
            None,
            Some("c-1"),
        )
        .await;
    assert_eq!(r.code(), "idempotency_key_reused");
    let m1 = api
        .call(
            "POST",
            "/v1/admin/merchants",
            Some(ADMIN),
            Some(json!({"name": "Once"})),
            Some("mk"),
        )
        .await;
    let m2 = api
        .call(
            "POST",
            "/v1/admin/merchants",
            Some(ADMIN),
            Some(json!({"name": "Once"})),
            Some("mk"),
        )
        .await;
    assert_eq!(
        (m2.status, m2.body["id"].clone(), m2.replayed),
        (StatusCode::CREATED, m1.body["id"].clone(), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoppers_see_and_cancel_only_their_own_orders() {
    let api = Api::new();
    let sku = api.item(3, 1, 0).await;
    let u = api.shoppers(2, "a").await;
    let order = api.order(&u[0], sku, 1, None).await;
    let id = order.body["id"].as_u64().unwrap();
    let path = format!("/v1/orders/{id}");
    assert_eq!(api.get(&path, Some(&u[0])).await.status, StatusCode::OK);
    assert_eq!(api.get(&path, Some(&u[1])).await.code(), "order_not_found");
    assert_eq!(api.get(&path, Some(ADMIN)).await.status, StatusCode::OK);
    let cancel = format!("/v1/orders/{id}/cancel");
    assert_eq!(
        api.call("POST", &cancel, Some(&u[1]), None, None)
            .await
            .code(),
        "order_not_found"
    );
    assert_eq!(
        api.get(&format!("/v1/items/{sku}"), None).await.body["held"],
        1
    );
    let mine = api.get("/v1/orders", Some(&u[1])).await;
    assert_eq!(mine.body["orders"].as_array().unwrap().len(), 0);
    assert_eq!(
        api.get(
            &format!("/v1/orders?user_id={}", order.body["user_id"]),
            Some(&u[1])
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let r = api.call("POST", &cancel, Some(&u[0]), None, None).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let r = api.call("POST", &cancel, Some(&u[0]), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "cancelling twice is idempotent");
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        (item.body["available"].as_u64(), item.body["held"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(
        api.get("/v1/orders/abc", Some(&u[0])).await.code(),
        "invalid_id"
    );
    assert_eq!(
        api.get("/v1/orders/12345678", Some(&u[0])).await.code(),
        "order_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_newest_first() {
    let api = Api::new();
    let skus = [
        api.item(5, 1, 0).await,
        api.item(6, 1, 0).await,
        api.item(7, 1, 0).await,
    ];
    let u = api.shoppers(1, "h").await;
    for sku in skus {
        api.clock.advance_ms(10);
        assert_eq!(
            api.order(&u[0], sku, 1, None).await.status,
            StatusCode::CREATED
        );
    }
    let p1 = api.get("/v1/orders?limit=2", Some(&u[0])).await;
    let orders = p1.body["orders"].as_array().unwrap();
    assert_eq!(
        orders
            .iter()
            .map(|o| o["sku"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![skus[2], skus[1]]
    );
    let cursor = p1.body["next_before"].as_str().unwrap();
    let p2 = api
        .get(&format!("/v1/orders?limit=2&before={cursor}"), Some(&u[0]))
        .await;
    assert_eq!(p2.body["orders"][0]["sku"].as_u64(), Some(skus[0]));
    assert!(p2.body["next_before"].is_null());
    assert_eq!(
        api.get("/v1/orders?before=zzz", Some(&u[0])).await.code(),
        "invalid_query"
    );
    assert_eq!(
        api.get("/v1/orders?limit=101", Some(&u[0])).await.code(),
        "invalid_query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_expiry_and_stock_changes() {
    let (api, _sim) = Api::with_channel().await;
    let sku = api.item(3, 1, 0).await;
    let u = api.shoppers(3, "p").await;
    let paid = api.order(&u[0], sku, 1, None).await.body["id"]
        .as_u64()
        .unwrap();
    let lapsing = api.order(&u[1], sku, 1, None).await.body["id"]
        .as_u64()
        .unwrap();
    let api = &api;
    let pay = |id: u64, who: &str, method: &str| {
        let (who, path) = (who.to_string(), format!("/v1/orders/{id}/payments"));
        let body = json!({ "method": method });
        async move { api.call("POST", &path, Some(&who), Some(body), None).await }
    };
    // Only the order's shopper pays it; the method must be one we know.
    assert_eq!(
        pay(paid, &u[1], "third_party").await.code(),
        "order_not_found"
    );
    assert_eq!(pay(paid, &u[0], "cheque").await.code(), "invalid_request");
    assert_eq!(
        pay(paid, &u[0], "card").await.code(),
        "no_channel_for_method"
    );
    let r = pay(paid, &u[0], "third_party").await;
    assert_eq!(
        (
            r.status,
            r.body["order"]["status"].as_str(),
            r.body["payment"]["channel"].as_str()
        ),
        (StatusCode::OK, Some("paid"), Some("sim")),
        "{}",
        r.body
    );
    assert_eq!(
        pay(paid, &u[0], "third_party").await.code(),
        "invalid_order_status"
    );
    // The unpaid hold lapses: stock returns, a late payment is refused.
    api.clock.advance_ms(61_000);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // a few shard ticks
    let r = api.get(&format!("/v1/orders/{lapsing}"), Some(&u[1])).await;
    assert_eq!(r.body["status"], "expired");
    let r = pay(lapsing, &u[1], "third_party").await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "hold_expired"));
    assert_eq!(pay(99_999, &u[1], "wallet").await.code(), "order_not_found");
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        (item.body["available"].as_u64(), item.body["sold"].as_u64()),
        (Some(2), Some(1))
    );
    // Stock may change, never below what is held or sold.
    let item_path = format!("/v1/admin/items/{sku}");
    let patch = |body: Value| api.call("PATCH", &item_path, Some(ADMIN), Some(body), None);
    let r = patch(json!({"stock": 0})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "stock_below_committed")
    );
    let r = patch(json!({"stock": 10, "title": "Bigger"})).await;
    assert_eq!(
        (r.status, r.body["available"].as_u64()),
        (StatusCode::OK, Some(9))
    );
    let r = api
        .call(
            "PATCH",
            &format!("/v1/admin/items/{sku}"),
            Some(&u[2]),
            Some(json!({"stock": 99})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.call(
            "PATCH",
            "/v1/admin/items/4242",
            Some(ADMIN),
            Some(json!({"stock": 1})),
            None
        )
        .await
        .code(),
        "item_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_happened_and_only_to_admins() {
    let api = Api::new();
    let log = mall_events::EventLog::start(
        mall_events::LogConfig {
            drain_every: std::time::Duration::from_millis(5),
            ..Default::default()
        },
        mall_events::live::LiveConfig::default(),
    )
    .unwrap();
    api.state.attach_events(log.clone());
    let sku = api.item(2, 1, 0).await;
    let u = api.shoppers(4, "d").await;
    for t in &u {
        api.order(t, sku, 1, None).await; // two win, two are refused
    }
    api.get(&format!("/v1/items/{sku}"), None).await;
    log.flush();
    let page = api.get("/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.as_str().unwrap().contains("data-testid=\"gmv\""));
    assert_eq!(
        api.get("/v1/dashboard", Some(&u[0])).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/v1/dashboard", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let d = api.get("/v1/dashboard", Some(ADMIN)).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    assert_eq!(d.body["orders_total"], 2);
    assert_eq!(d.body["refusals_total"], 2);
    assert_eq!(d.body["refusals"]["sold_out"], 2);
    assert_eq!(d.body["funnel"]["view"], 1);
    assert_eq!(d.body["gmv_fen_total"], 0, "nothing paid yet");
    assert_eq!(d.body["hot_items"][0]["sku"], sku);
    assert_eq!(d.body["hot_items"][0]["held"], 2);
    assert_eq!(d.body["series"]["t_ms"].as_array().unwrap().len(), 300);
    // The stream sends snapshots as Server-Sent Events.
    let response = api
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/dashboard/stream")
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), next_chunk(&mut body))
        .await
        .unwrap();
    let text = String::from_utf8(first.to_vec()).unwrap();
    assert!(text.starts_with("event: snapshot\ndata: {"), "{text}");
    assert!(text.contains("\"orders_total\":2"), "{text}");
}

/// The next chunk of a body stream, without a futures crate.
async fn next_chunk(body: &mut axum::body::BodyDataStream) -> axum::body::Bytes {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *body), cx))
        .await
        .expect("a chunk")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn favourites_and_carts_before_the_sale_feed_the_funnel() {
    let api = Api::new();
    let log = mall_events::EventLog::start(
        mall_events::LogConfig {
            drain_every: std::time::Duration::from_millis(5),
            ..Default::default()
        },
        mall_events::live::LiveConfig::default(),
    )
    .unwrap();
    api.state.attach_events(log.clone());
    let sku = api.item(5, 1, 3_600_000).await; // the sale opens in an hour
    let u = api.shoppers(1, "w").await;
    let fav = format!("/v1/items/{sku}/favorite");
    assert_eq!(
        api.call("POST", &fav, None, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call("POST", "/v1/items/999/favorite", Some(&u[0]), None, None)
            .await
            .code(),
        "item_not_found"
    );
    for _ in 0..2 {
        let r = api.call("POST", &fav, Some(&u[0]), None, None).await;
        assert_eq!(
            (r.status, r.body["skus"].clone()),
            (StatusCode::OK, json!([sku]))
        );
    }
    let r = api
        .post("/v1/cart", Some(&u[0]), json!({"sku": sku, "quantity": 2}))
        .await;
    assert_eq!(r.body["lines"], json!([{"sku": sku, "quantity": 2}]));
    for (body, code) in [
        (json!({"sku": sku, "quantity": 100}), "invalid_request"),
        (json!({"sku": sku, "quantity": -1}), "invalid_request"),
        (json!({"sku": 999, "quantity": 1}), "item_not_found"),
        (json!({"sku": sku}), "invalid_request"),
    ] {
        assert_eq!(api.post("/v1/cart", Some(&u[0]), body).await.code(), code);
    }
    assert_eq!(
        api.get("/v1/cart", Some(&u[0])).await.body["lines"][0]["quantity"],
        2
    );
    log.flush();
    let d = api.get("/v1/dashboard", Some(ADMIN)).await;
    assert_eq!(
        (
            d.body["funnel"]["favorite"].as_u64(),
            d.body["funnel"]["cart"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Another shopper favourites it too: the item shows both, and a new
    // state on the same store (a restart of the API) starts from them.
    let v = api.shoppers(1, "v").await;
    api.call("POST", &fav, Some(&v[0]), None, None).await;
    assert_eq!(
        api.get(&format!("/v1/items/{sku}"), None).await.body["favorites"],
        2
    );
    let again = mall_http::AppState::new(
        api.state.engine.clone(),
        api.state.accounts.clone(),
        api.state.config.clone(),
        api.clock.clone(),
    )
    .unwrap();
    assert_eq!(again.wishlists.favorites_of(mall_core::Sku(sku)), 2);
    let r = api
        .post("/v1/cart", Some(&u[0]), json!({"sku": sku, "quantity": 0}))
        .await;
    assert_eq!(r.body["lines"], json!([]));
    let r = api.call("DELETE", &fav, Some(&u[0]), None, None).await;
    assert_eq!(r.body["skus"], json!([]));
    assert_eq!(
        api.get("/v1/favorites", Some(&u[0])).await.body["skus"],
        json!([])
    );
    assert_eq!(
        api.get(&format!("/v1/items/{sku}"), None).await.body["favorites"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_admission_limit_turns_the_excess_away_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (data, scratch) = common::test_store(dir.path(), 1);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp(T0)));
    let accounts = data.accounts().unwrap();
    let engine = Arc::new(Engine::start(data, EngineConfig::default(), clock.clone()).unwrap());
    let mut http = mall_http::HttpConfig::default();
    http.rate.snapups_per_s_max = Some(3.0);
    let state = mall_http::AppState::new(engine, accounts, http, clock).unwrap();
    mall_http::bootstrap_admin(&state, Some(ADMIN), None).unwrap();
    let api = Api {
        app: mall_http::router(state.clone()),
        clock: Arc::new(ManualClock::new(Timestamp(T0))),
        state,
        _dir: dir,
        _scratch: scratch,
    };
    let sku = api.item(100, 1, 0).await;
    let u = api.shoppers(6, "a").await;
    let mut codes = Vec::new();
    for t in &u {
        codes.push(api.order(t, sku, 1, None).await.status.as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 3, "{codes:?}");
    let turned = api.order(&u[5], sku, 1, None).await;
    assert_eq!(
        (turned.status, turned.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        item.body["held"], 3,
        "nothing held for the orders turned away"
    );
}

/// A list price and sale windows: the price follows the server's clock,
/// every order keeps its list price and shows its breakdown, and a client
/// whose expected total is stale gets 409 `price_changed` with the price
/// as it stands, and nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_windows_price_orders_and_a_stale_total_reserves_nothing() {
    let api = Api::new();
    let m = api
        .post("/v1/admin/merchants", Some(ADMIN), json!({"name": "Haier"}))
        .await;
    let merchant = m.body["id"].as_u64().unwrap();
    // Listed at ¥45,000; ¥38,888 in the first half minute of the night, ¥40,000
    // until 02:00.
    let body = json!({"merchant_id": merchant, "title": "Fridge", "category": "appliances",
        "price_fen": 4_500_000, "floor_price_fen": 3_000_000, "stock": 10, "per_user_limit": 5,
        "opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000,
        "sale_prices": [
            {"opens_at_ms": T0, "closes_at_ms": T0 + 30_000, "price_fen": 3_888_800},
            {"opens_at_ms": T0 + 30_000, "closes_at_ms": T0 + 7_200_000, "price_fen": 4_000_000}]});
    let r = api.post("/v1/admin/items", Some(ADMIN), body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let sku = r.body["sku"].as_u64().unwrap();
    assert_eq!(r.body["price_fen"], 4_500_000);
    assert_eq!(r.body["price_now_fen"], 3_888_800);
    assert_eq!(r.body["sale_prices"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["floor_price_fen"], 3_000_000);

    let shopper = &api.shoppers(1, "p").await[0];
    let order = |expected: Option<i64>| {
        let mut b = json!({"sku": sku, "quantity": 2, "payment": "online", "address": "1 Nanjing Road, Shanghai"});
        if let Some(e) = expected {
            b["expected_total_fen"] = json!(e);
        }
        api.call("POST", "/v1/orders", Some(shopper), Some(b), None)
    };
    // In the first window, at the price the page showed.
    let r = order(Some(2 * 3_888_800)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (
            &r.body["list_price_fen"],
            &r.body["unit_price_fen"],
            &r.body["amount_fen"]
        ),
        (&json!(4_500_000), &json!(3_888_800), &json!(7_777_600))
    );
    let price = &r.body["price"];
    assert_eq!(
        (&price["list_fen"], &price["total_fen"]),
        (&json!(9_000_000), &json!(7_777_600))
    );
    assert_eq!(price["discounts"][0]["source"], "sale_price");
    assert_eq!(price["discounts"][0]["funded_by"], "merchant");
    assert_eq!(price["discounts"][0]["merchant_id"], merchant);
    assert_eq!(price["discounts"][0]["fen"], 1_222_400);
    assert_eq!(price["lines"][0]["net_fen"], 7_777_600);
    let id = r.body["id"].as_u64().unwrap();
    let again = api.get(&format!("/v1/orders/{id}"), Some(shopper)).await;
    assert_eq!(again.body["price"], *price);

    // Half a minute on (the hold still runs), the page still shows the first window's price: refused,
    // with the price as it stands, and nothing held.
    api.clock.advance_ms(30_000);
    let counters = |b: &Value| (b["available"].clone(), b["held"].clone(), b["sold"].clone());
    let before = api.get(&format!("/v1/items/{sku}"), None).await;
    let r = order(Some(2 * 3_888_800)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "price_changed"),
        "{}",
        r.body
    );
    let now = &r.body["error"]["price"];
    assert_eq!(
        (&now["list_fen"], &now["total_fen"]),
        (&json!(9_000_000), &json!(8_000_000))
    );
    assert_eq!(now["discounts"][0]["fen"], 1_000_000);
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(counters(&item.body), counters(&before.body));
    assert_eq!(item.body["price_now_fen"], 4_000_000);
    // Without an expectation, the price now.
    let r = order(None).await;
    assert_eq!(r.body["unit_price_fen"], 4_000_000);
    // After the windows, the list price and no discount.
    api.clock.advance_ms(7_200_000);
    let r = order(Some(9_000_000)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["price"]["discounts"], json!([]));

    // Bad prices: each a 422 naming the field, nothing created.
    let items_before = api.get("/healthz", None).await.body["items"].clone();
    api.each_invalid(
        "/v1/admin/items",
        &body,
        &[
        (
            "sale_prices",
            json!([{"opens_at_ms": T0, "closes_at_ms": T0, "price_fen": 100}]),
        ),
        (
            "sale_prices",
            json!([{"opens_at_ms": T0, "closes_at_ms": T0 + 10, "price_fen": 4_600_000}]),
        ),
        (
            "sale_prices",
            json!([{"opens_at_ms": T0, "closes_at_ms": T0 + 10, "price_fen": 2_000_000}]),
        ),
        (
            "sale_prices",
            json!([{"opens_at_ms": T0, "closes_at_ms": T0 + 10, "price_fen": 3_000_000},
                               {"opens_at_ms": T0 + 5, "closes_at_ms": T0 + 20, "price_fen": 3_000_000}]),
        ),
        (
            "sale_prices",
            json!([{"opens_at_ms": T0, "closes_at_ms": T0 + 10, "price": 3_000_000}]),
        ),
        ("floor_price_fen", json!(4_500_001)),
        ],
    )
    .await;
    let r = order(Some(0)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(api.get("/healthz", None).await.body["items"], items_before);
    // A PATCH replaces the windows.
    let r = api
        .call("PATCH", &format!("/v1/admin/items/{sku}"), Some(ADMIN),
              Some(json!({"sale_prices": [{"opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000, "price_fen": 3_500_000}]})), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["price_now_fen"], 3_500_000);
}

/// Promotions: a merchant's on its own items, the platform's on all; who
/// may create and end them; a quote applies every running one in the
/// documented order, to the fen, as `mall_pricing` computes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_by_merchant_and_platform_price_a_quote() {
    let api = Api::new();
    let merchant = |name: &'static str| {
        let api = &api;
        async move {
            api.post("/v1/admin/merchants", Some(ADMIN), json!({"name": name}))
                .await
                .body["id"]
                .as_u64()
                .unwrap()
        }
    };
    let (a, b) = (merchant("Alpha").await, merchant("Beta").await);
    let item = |m: u64, price: i64, sale: Option<i64>| {
        let api = &api;
        async move {
            let mut body = json!({"merchant_id": m, "title": "Tea", "category": "home", "price_fen": price,
                "stock": 100, "per_user_limit": 10, "opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000});
            if let Some(s) = sale {
                body["sale_prices"] =
                    json!([{"opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000, "price_fen": s}]);
            }
            let r = api.post("/v1/admin/items", Some(ADMIN), body).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["sku"].as_u64().unwrap()
        }
    };
    let a1 = item(a, 10_000, None).await;
    let a2 = item(a, 20_000, Some(15_000)).await;
    let b1 = item(b, 30_000, None).await;
    let seller = api.seller(a, "alpha.shop").await;
    let shopper = api.shoppers(1, "q").await.remove(0);
    let window = |body: Value| {
        let mut b = body;
        b["starts_at_ms"] = json!(T0);
        b["ends_at_ms"] = json!(T0 + 3_600_000);
        b
    };
    let store_promo = window(
        json!({"rule": {"kind": "spend_save", "every_fen": 20_000, "save_fen": 3_000, "repeat": true}}),
    );
    // Who may create what.
    assert_eq!(
        api.post("/v1/promotions", Some(&shopper), store_promo.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let mut theirs = store_promo.clone();
    theirs["merchant_id"] = json!(b);
    assert_eq!(
        api.post("/v1/promotions", Some(&seller), theirs)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let mut their_item = store_promo.clone();
    their_item["skus"] = json!([b1]);
    assert_eq!(
        api.post("/v1/promotions", Some(&seller), their_item)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = api.post("/v1/promotions", Some(&seller), store_promo).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (
            &r.body["funded_by"],
            &r.body["merchant_id"],
            &r.body["running"]
        ),
        (&json!("merchant"), &json!(a), &json!(true))
    );
    let store_id = r.body["id"].as_u64().unwrap();
    let r = api
        .post("/v1/promotions", Some(ADMIN), window(json!({"rule": {"kind": "percent_off", "basis_points": 1_000}, "max_off_fen": 5_000})))
        .await;
    assert_eq!(
        (r.status, &r.body["funded_by"]),
        (StatusCode::CREATED, &json!("platform")),
        "{}",
        r.body
    );
    let platform_id = r.body["id"].as_u64().unwrap();
    // One that starts later does not apply yet.
    let mut later =
        window(json!({"rule": {"kind": "amount_off", "off_fen": 100, "min_spend_fen": 0}}));
    later["starts_at_ms"] = json!(T0 + 1_800_000);
    assert_eq!(
        api.post("/v1/promotions", Some(ADMIN), later).await.status,
        StatusCode::CREATED
    );
    // Bad promotions: 422, nothing created.
    for bad in [
        json!({"rule": {"kind": "percent_off", "basis_points": 0}}),
        json!({"rule": {"kind": "buy_one_get_one"}}),
        json!({"rule": {"kind": "percent_off", "basis_points": 10, "extra": 1}}),
        json!({"rule": {"kind": "spend_save", "every_fen": 100, "save_fen": 100, "repeat": false}}),
        json!({"rule": {"kind": "percent_off", "basis_points": 10}, "group": 0}),
    ] {
        let r = api
            .post("/v1/promotions", Some(ADMIN), window(bad.clone()))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
    }
    let listed = api.get("/v1/promotions", None).await;
    assert_eq!(listed.body["promotions"].as_array().unwrap().len(), 3);
    assert_eq!(
        api.get(&format!("/v1/promotions?merchant_id={a}"), None)
            .await
            .body["promotions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The quote: a1 ×1 (10,000), a2 ×2 (40,000 listed, 30,000 on sale), b1 ×1 (30,000).
    let lines = json!({"lines": [{"sku": a1, "quantity": 1}, {"sku": a2, "quantity": 2}, {"sku": b1, "quantity": 1}]});
    let q = api.post("/v1/quotes", Some(&shopper), lines.clone()).await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    let discounts = q.body["discounts"].as_array().unwrap();
    let sources: Vec<(String, Value)> = discounts
        .iter()
        .map(|d| (d["source"].as_str().unwrap().to_string(), d["id"].clone()))
        .collect();
    assert_eq!(
        sources,
        vec![
            ("sale_price".into(), Value::Null),
            ("promotion".into(), json!(store_id)),
            ("promotion".into(), json!(platform_id)),
        ]
    );
    // Alpha's lines after the sale price: 40,000 → 2 × 3,000 off; then 10 %
    // of everything left (64,000), capped at 5,000.
    assert_eq!(discounts[1]["fen"], 6_000);
    assert_eq!(discounts[2]["fen"], 5_000);
    assert_eq!(q.body["list_fen"], 80_000);
    assert_eq!(q.body["total_fen"], 80_000 - 10_000 - 6_000 - 5_000);
    let nets: i64 = q.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["net_fen"].as_i64().unwrap())
        .sum();
    assert_eq!(nets, q.body["total_fen"].as_i64().unwrap());
    assert_eq!(
        q.body["lines"][2]["merchant_funded_fen"], 0,
        "Beta funds nothing"
    );
    // The cart, when no lines are given.
    api.post(
        "/v1/cart",
        Some(&shopper),
        json!({"sku": a1, "quantity": 3}),
    )
    .await;
    let q = api.post("/v1/quotes", Some(&shopper), json!({})).await;
    assert_eq!(
        (
            &q.body["list_fen"],
            q.body["lines"].as_array().unwrap().len()
        ),
        (&json!(30_000), 1)
    );
    for bad in [
        json!({"lines": []}),
        json!({"lines": [{"sku": a1, "quantity": 0}]}),
    ] {
        assert_eq!(
            api.post("/v1/quotes", Some(&shopper), bad).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    assert_eq!(
        api.post(
            "/v1/quotes",
            Some(&shopper),
            json!({"lines": [{"sku": 999, "quantity": 1}]})
        )
        .await
        .code(),
        "item_not_found"
    );

    // Ending: not another merchant's; the merchant's own; then it is gone.
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/promotions/{platform_id}"),
            Some(&seller),
            None,
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let r = api
        .call(
            "DELETE",
            &format!("/v1/promotions/{store_id}"),
            Some(&seller),
            None,
            None,
        )
        .await;
    assert_eq!(
        (r.status, &r.body["running"]),
        (StatusCode::OK, &json!(false)),
        "{}",
        r.body
    );
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/promotions/{store_id}"),
            Some(&seller),
            None,
            None
        )
        .await
        .code(),
        "promotion_not_found"
    );
    let q = api.post("/v1/quotes", Some(&shopper), lines).await;
    assert!(q.body["discounts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["id"] != json!(store_id)));
    // A merchant runs 16 promotions at most (the one it ended no longer counts).
    let promo = window(json!({"rule": {"kind": "percent_off", "basis_points": 100}}));
    for n in 0..16 {
        let r = api
            .post("/v1/promotions", Some(&seller), promo.clone())
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "promotion {n}: {}", r.body);
    }
    let r = api.post("/v1/promotions", Some(&seller), promo).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "promotions_full")
    );
    // Half an hour on, the later one runs too: two platform discounts
    // beside the merchant's own.
    api.clock.advance_ms(1_800_000);
    let q = api.post("/v1/quotes", Some(&shopper), json!({})).await;
    let platform = q.body["discounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["funded_by"] == "platform")
        .count();
    assert_eq!(platform, 2, "{}", q.body);
}

/// A coupon claim rush: more claimants than coupons, all at once. Exactly
/// the quantity is issued, per-shopper limits hold, a retry gets its claim
/// back, and the refusals say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_claim_rush_issues_exactly_the_quantity() {
    let api = Api::new();
    let body = json!({"title": "¥20 off ¥200", "rule": {"kind": "amount_off", "off_fen": 2_000, "min_spend_fen": 20_000},
        "quantity": 30, "per_user_limit": 2, "claim_opens_at_ms": T0, "claim_closes_at_ms": T0 + 3_600_000,
        "valid_until_ms": T0 + 86_400_000});
    let r = api.post("/v1/coupons", Some(ADMIN), body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (&r.body["funded_by"], &r.body["remaining"]),
        (&json!("platform"), &json!(30))
    );
    let id = r.body["id"].as_u64().unwrap();
    let claims = format!("/v1/coupons/{id}/claims");

    // 40 shoppers, each trying three times at once: 120 claims for 30.
    let shoppers = api.shoppers(40, "rush").await;
    let mut tasks = tokio::task::JoinSet::new();
    for (n, token) in shoppers.iter().enumerate() {
        for attempt in 0..3 {
            let app = api.app.clone();
            let (path, token) = (claims.clone(), token.clone());
            tasks.spawn(async move {
                let req = Request::builder()
                    .method("POST")
                    .uri(path)
                    .header("authorization", format!("Bearer {token}"))
                    .header("idempotency-key", format!("claim-{n}-{attempt}"))
                    .body(Body::empty())
                    .unwrap();
                let response = app.oneshot(req).await.unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                    .await
                    .unwrap();
                (n, status, serde_json::from_slice::<Value>(&bytes).unwrap())
            });
        }
    }
    let mut issued = std::collections::BTreeMap::<usize, u32>::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    while let Some(answer) = tasks.join_next().await {
        let (n, status, body) = answer.unwrap();
        if status == StatusCode::CREATED {
            *issued.entry(n).or_default() += 1;
            assert!(ids.insert(body["id"].as_u64().unwrap()), "a claim id twice");
            assert_eq!(body["status"], "claimed");
        } else {
            *codes
                .entry(body["error"]["code"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(ids.len(), 30, "exactly the quantity: {codes:?}");
    assert!(
        issued.values().all(|&k| k <= 2),
        "a shopper over the limit: {issued:?}"
    );
    assert_eq!(codes.values().sum::<u32>(), 90);
    assert!(
        codes
            .keys()
            .all(|c| c == "sold_out" || c == "limit_reached"),
        "{codes:?}"
    );
    let r = api.get(&format!("/v1/coupons/{id}"), None).await;
    assert_eq!(
        (&r.body["claimed"], &r.body["remaining"]),
        (&json!(30), &json!(0))
    );
    // A retry of a claim that succeeded gets it back, marked a replay.
    let (&winner, _) = issued.iter().next().unwrap();
    let mut first = None;
    for attempt in 0..3 {
        let key = format!("claim-{winner}-{attempt}");
        let r = api
            .call("POST", &claims, Some(&shoppers[winner]), None, Some(&key))
            .await;
        if r.status == StatusCode::CREATED {
            assert!(r.replayed);
            first = Some(r.body["id"].clone());
        }
    }
    assert!(first.is_some());
    // The winner sees their claims, and a quote takes one off.
    let mine = api.get("/v1/claims", Some(&shoppers[winner])).await;
    let listed = mine.body["claims"].as_array().unwrap();
    assert_eq!(listed.len() as u32, issued[&winner], "{}", mine.body);
    assert!(listed
        .iter()
        .all(|c| c["status"] == "claimed" && c["coupon_id"] == id));
    let sku = api.item(5, 1, -1_000).await; // ¥299
    let claim = listed[0]["id"].clone();
    let q = api
        .post(
            "/v1/quotes",
            Some(&shoppers[winner]),
            json!({"lines": [{"sku": sku, "quantity": 1}], "claims": [claim]}),
        )
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    let coupon = q.body["discounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == "coupon")
        .cloned();
    let coupon = coupon.expect("the coupon applied");
    assert_eq!(
        (&coupon["id"], &coupon["fen"], &coupon["funded_by"]),
        (&json!(id), &json!(2_000), &json!("platform"))
    );
    assert_eq!(q.body["total_fen"], 29_900 - 2_000);
    // Someone else's claim is no claim of yours; one claim per coupon.
    let other = shoppers
        .iter()
        .enumerate()
        .find(|(n, _)| *n != winner && issued.contains_key(n))
        .unwrap()
        .1;
    let r = api
        .post(
            "/v1/quotes",
            Some(other),
            json!({"lines": [{"sku": sku, "quantity": 1}], "claims": [claim]}),
        )
        .await;
    assert_eq!(r.code(), "coupon_not_found");
    if listed.len() > 1 {
        let both = json!({"lines": [{"sku": sku, "quantity": 1}], "claims": [listed[0]["id"], listed[1]["id"]]});
        assert_eq!(
            api.post("/v1/quotes", Some(&shoppers[winner]), both)
                .await
                .status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    // The refusals and who may create.
    let late = api.shoppers(1, "late").await.remove(0);
    let r = api.call("POST", &claims, Some(&late), None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "sold_out"));
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("claimed"));
    assert_eq!(
        api.call("POST", "/v1/coupons/999999/claims", Some(&late), None, None)
            .await
            .code(),
        "coupon_not_found"
    );
    let mut later = body.clone();
    later["claim_opens_at_ms"] = json!(T0 + 60_000);
    let r = api.post("/v1/coupons", Some(ADMIN), later).await;
    let soon = r.body["id"].as_u64().unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/coupons/{soon}/claims"),
            Some(&late),
            None,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "sale_not_open")
    );
    assert_eq!(
        api.post("/v1/coupons", Some(&late), body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    api.each_invalid(
        "/v1/coupons",
        &body,
        &[
            ("quantity", json!(-1)),
            ("per_user_limit", json!(0)),
            ("valid_until_ms", json!(T0)),
            ("title", json!("")),
        ],
    )
    .await;
    assert_eq!(
        api.get("/v1/coupons", None).await.body["coupons"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// `(available, held, sold)` of an item, as the API shows it.
async fn counters(api: &Api, sku: u64) -> (u64, u64, u64) {
    let r = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let n = |f: &str| r.body[f].as_u64().unwrap();
    (n("available"), n("held"), n("sold"))
}

/// A merchant named `name` and an item of it: its SKU.
async fn item_of(api: &Api, name: &str, price: i64, stock: i64, sale: Option<i64>) -> (u64, u64) {
    let m = api
        .post("/v1/admin/merchants", Some(ADMIN), json!({"name": name}))
        .await;
    assert_eq!(m.status, StatusCode::CREATED, "{}", m.body);
    let merchant = m.body["id"].as_u64().unwrap();
    let mut body = json!({"merchant_id": merchant, "title": "Tea", "category": "home", "price_fen": price,
        "stock": stock, "per_user_limit": 10, "opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000});
    if let Some(s) = sale {
        body["sale_prices"] =
            json!([{"opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000, "price_fen": s}]);
    }
    let r = api.post("/v1/admin/items", Some(ADMIN), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    (merchant, r.body["sku"].as_u64().unwrap())
}

/// A platform coupon (`off_fen` off `min_fen`) claimed by `shopper`: the claim id.
async fn claimed_coupon(api: &Api, shopper: &str, off_fen: i64, min_fen: i64) -> u64 {
    let body = json!({"title": "coupon", "rule": {"kind": "amount_off", "off_fen": off_fen, "min_spend_fen": min_fen},
        "quantity": 10, "claim_opens_at_ms": T0, "claim_closes_at_ms": T0 + 3_600_000,
        "valid_until_ms": T0 + 86_400_000});
    let r = api.post("/v1/coupons", Some(ADMIN), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/coupons/{id}/claims"),
            Some(shopper),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_u64().unwrap()
}

/// The status of a shopper's claim.
async fn claim_status(api: &Api, shopper: &str, claim: u64) -> String {
    let r = api.get("/v1/claims", Some(shopper)).await;
    r.body["claims"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == claim)
        .map(|c| c["status"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A cart checkout across merchants with a promotion and a coupon: every
/// line held at its share of the discounts (the lines add up to the quoted
/// total), grouped by merchant; retried by key, it answers the same. A
/// checkout with a line sold out holds nothing and gives its coupon back;
/// the error names the line. Bad requests change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_holds_every_line_or_none() {
    let api = Api::new();
    let (ma, a1) = item_of(&api, "Alpha", 10_000, 5, None).await;
    let a2 = {
        let body = json!({"merchant_id": ma, "title": "Pot", "category": "home", "price_fen": 20_000,
            "stock": 5, "per_user_limit": 10, "opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000,
            "sale_prices": [{"opens_at_ms": T0, "closes_at_ms": T0 + 86_400_000, "price_fen": 15_000}]});
        let r = api.post("/v1/admin/items", Some(ADMIN), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["sku"].as_u64().unwrap()
    };
    let (mb, b1) = item_of(&api, "Beta", 30_000, 1, None).await;
    let r = api
        .post(
            "/v1/promotions",
            Some(ADMIN),
            json!({"rule": {"kind": "percent_off", "basis_points": 1_000},
            "max_off_fen": 5_000, "starts_at_ms": T0, "ends_at_ms": T0 + 3_600_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let shoppers = api.shoppers(2, "ck").await;
    let (first, second) = (&shoppers[0], &shoppers[1]);
    let claim = claimed_coupon(&api, first, 2_000, 20_000).await;
    let lines =
        json!([{"sku": a1, "quantity": 2}, {"sku": a2, "quantity": 1}, {"sku": b1, "quantity": 1}]);
    let quote = api
        .post(
            "/v1/quotes",
            Some(first),
            json!({"lines": lines, "claims": [claim]}),
        )
        .await;
    assert_eq!(quote.status, StatusCode::OK, "{}", quote.body);
    let total = quote.body["total_fen"].as_i64().unwrap();
    // Sale 20,000 + 15,000 + 30,000 = 65,000; 10% capped at 5,000; 2,000 off.
    assert_eq!(total, 58_000);
    let body = |expected: i64| {
        json!({"lines": lines, "claims": [claim], "payment": "online",
               "address": "1 Nanjing Road, Shanghai", "expected_total_fen": expected})
    };
    // A stale total: 409 with the price as it stands, nothing held.
    let r = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(first),
            Some(body(total + 1)),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "price_changed")
    );
    assert_eq!(r.body["error"]["price"]["total_fen"], total);
    assert_eq!(counters(&api, a1).await, (5, 0, 0));
    assert_eq!(claim_status(&api, first, claim).await, "claimed");

    let r = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(first),
            Some(body(total)),
            Some("ck-1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let checkout = r.body["id"].as_u64().unwrap();
    assert_eq!(r.body["state"], "reserved");
    assert_eq!(r.body["total_fen"], total);
    let children = r.body["children"].as_array().unwrap();
    let merchants: Vec<u64> = children
        .iter()
        .map(|c| c["merchant_id"].as_u64().unwrap())
        .collect();
    assert_eq!(merchants, vec![ma, mb], "one child order per merchant");
    let orders: Vec<&Value> = children
        .iter()
        .flat_map(|c| c["orders"].as_array().unwrap())
        .collect();
    assert_eq!(orders.len(), 3);
    let paid: i64 = orders
        .iter()
        .map(|o| o["amount_fen"].as_i64().unwrap())
        .sum();
    assert_eq!(
        paid, total,
        "the lines' amounts add up to the total, to the fen"
    );
    for (child, c) in children.iter().zip([ma, mb]) {
        let sum: i64 = child["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["amount_fen"].as_i64().unwrap())
            .sum();
        assert_eq!(child["amount_fen"].as_i64().unwrap(), sum, "merchant {c}");
    }
    for o in &orders {
        assert_eq!(o["checkout_id"], checkout);
        assert_eq!(o["status"], "awaiting_payment");
        assert_eq!(o["price"]["total_fen"], o["amount_fen"], "{o}");
    }
    assert_eq!(counters(&api, a1).await, (3, 2, 0));
    assert_eq!(counters(&api, b1).await, (0, 1, 0));
    assert_eq!(claim_status(&api, first, claim).await, "used");
    // Retried: the same checkout, a replay; the key with another body: refused.
    let again = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(first),
            Some(body(total)),
            Some("ck-1"),
        )
        .await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, true));
    assert_eq!(again.body["id"], checkout);
    let mut other = body(total);
    other["address"] = json!("2 Bund, Shanghai");
    let r = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(first),
            Some(other),
            Some("ck-1"),
        )
        .await;
    assert_eq!(r.code(), "idempotency_key_reused");
    assert_eq!(counters(&api, a1).await, (3, 2, 0));

    // The second shopper wants b1 too, now sold out: nothing held, the
    // coupon back, the line named.
    let theirs = claimed_coupon(&api, second, 1_000, 10_000).await;
    let r = api
        .post(
            "/v1/checkouts",
            Some(second),
            json!({"lines": [{"sku": a1, "quantity": 1}, {"sku": b1, "quantity": 1}],
            "claims": [theirs], "payment": "online", "address": "3 Bund, Shanghai"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "sold_out"),
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["line"], 1);
    assert_eq!(counters(&api, a1).await, (3, 2, 0), "no hold remains");
    assert_eq!(claim_status(&api, second, theirs).await, "claimed");
    let listed = api.get("/v1/checkouts", Some(second)).await;
    assert_eq!(listed.body["checkouts"][0]["state"], "released");
    assert_eq!(listed.body["checkouts"][0]["failure"]["line"], 1);

    // Who may see it.
    let path = format!("/v1/checkouts/{checkout}");
    assert_eq!(api.get(&path, Some(first)).await.body["total_fen"], total);
    assert_eq!(
        api.get(&path, Some(second)).await.code(),
        "checkout_not_found"
    );
    assert_eq!(api.get(&path, Some(ADMIN)).await.status, StatusCode::OK);
    assert_eq!(api.get(&path, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.get("/v1/checkouts?user_id=1", Some(second))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // A child's line is cancelled on its own: its stock goes back.
    let a1_order = orders.iter().find(|o| o["sku"] == a1).unwrap()["id"]
        .as_u64()
        .unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{a1_order}/cancel"),
            Some(first),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(counters(&api, a1).await, (5, 0, 0));

    // Bad requests: refused, nothing held.
    let base =
        json!({"lines": [{"sku": a1, "quantity": 1}], "payment": "cod", "address": "4 Bund"});
    for (field, value, code) in [
        ("lines", json!([]), "invalid_request"),
        (
            "lines",
            json!([{"sku": a1, "quantity": 1}, {"sku": a1, "quantity": 2}]),
            "invalid_request",
        ),
        (
            "lines",
            json!([{"sku": a1, "quantity": 0}]),
            "invalid_request",
        ),
        (
            "lines",
            json!([{"sku": 999_999, "quantity": 1}]),
            "item_not_found",
        ),
        ("payment", json!("cheque"), "invalid_request"),
        ("address", json!(""), "invalid_request"),
        ("claims", json!([999_999]), "coupon_not_found"),
    ] {
        let mut bad = base.clone();
        bad[field] = value;
        let r = api.post("/v1/checkouts", Some(second), bad).await;
        assert_eq!(r.code(), code, "{field}: {}", r.body);
        assert!(r.status.is_client_error());
    }
    assert_eq!(counters(&api, a1).await, (5, 0, 0));

    // The cart, checked out: its lines leave it.
    for (sku, q) in [(a1, 1), (a2, 2)] {
        let r = api
            .post("/v1/cart", Some(second), json!({"sku": sku, "quantity": q}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let cart_body = json!({"payment": "cod", "address": "5 Bund, Shanghai"});
    let r = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(second),
            Some(cart_body.clone()),
            Some("cart-1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Retried once the cart is empty: the same checkout, replayed.
    let again = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(second),
            Some(cart_body),
            Some("cart-1"),
        )
        .await;
    assert_eq!(
        (again.status, again.replayed),
        (StatusCode::CREATED, true),
        "{}",
        again.body
    );
    assert_eq!(again.body["id"], r.body["id"]);
    assert_eq!(r.body["children"][0]["orders"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["children"][0]["orders"][0]["status"], "confirmed");
    assert_eq!(
        counters(&api, a2).await.2,
        2,
        "cash on delivery: sold at once"
    );
    let cart = api.get("/v1/cart", Some(second)).await;
    assert_eq!(
        cart.body["lines"].as_array().map(Vec::len),
        Some(0),
        "{}",
        cart.body
    );
    let r = api
        .post(
            "/v1/checkouts",
            Some(second),
            json!({"payment": "cod", "address": "5 Bund, Shanghai"}),
        )
        .await;
    assert_eq!(r.code(), "invalid_request", "an empty cart");
}

/// Shoppers race for the last units of two items, each checking out both:
/// at most as many checkouts as units win, each whole; the losers hold
/// nothing (stock conserved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkouts_for_the_last_units_conserve_stock() {
    let api = Arc::new(Api::new());
    let (_, x) = item_of(&api, "Xi", 5_000, 3, None).await;
    let (_, y) = item_of(&api, "Yu", 7_000, 3, None).await;
    let shoppers = api.shoppers(12, "race").await;
    let mut tasks = Vec::new();
    for (i, token) in shoppers.into_iter().enumerate() {
        let api = api.clone();
        // Half ask for x then y, half y then x.
        let lines = if i % 2 == 0 {
            json!([{"sku": x, "quantity": 1}, {"sku": y, "quantity": 1}])
        } else {
            json!([{"sku": y, "quantity": 1}, {"sku": x, "quantity": 1}])
        };
        tasks.push(tokio::spawn(async move {
            api.post(
                "/v1/checkouts",
                Some(&token),
                json!({"lines": lines, "payment": "online", "address": "6 Bund"}),
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => {
                won += 1;
                let orders = r.body["children"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["orders"].as_array().unwrap().len())
                    .sum::<usize>();
                assert_eq!(orders, 2, "a checkout is whole");
            }
            StatusCode::CONFLICT => {
                assert!(
                    ["sold_out", "insufficient_stock"].contains(&r.code()),
                    "{}",
                    r.body
                )
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    // Checkouts that each got one item and lost the other hand it back,
    // possibly after a later shopper was told `sold_out`: fewer than 3 may
    // win. Never more, and the units held are exactly the winners'.
    assert!((1..=3).contains(&won), "{won} checkouts won");
    assert_eq!(counters(&api, x).await, (3 - won, won, 0));
    assert_eq!(counters(&api, y).await, (3 - won, won, 0));
}

/// A checkout its request abandoned (left open with a line held, as a crash
/// leaves it) is released by recovery: the line found again by its key and
/// cancelled, the checkout released; a reserved one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_releases_an_abandoned_checkout() {
    let api = Api::new();
    let (_, a) = item_of(&api, "Ada", 5_000, 4, None).await;
    let (_, b) = item_of(&api, "Bo", 6_000, 4, None).await;
    let shopper = api.shoppers(1, "rec").await.remove(0);
    let r = api
        .post(
            "/v1/checkouts",
            Some(&shopper),
            json!({"lines": [{"sku": a, "quantity": 1}, {"sku": b, "quantity": 1}],
            "payment": "online", "address": "7 Bund"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let kept = r.body["id"].as_u64().unwrap();
    // The same plan begun again, and only its first line held: what a
    // crash between the two holds leaves.
    let accounts = api.state.accounts.clone();
    let row = accounts.checkout(kept).unwrap().unwrap();
    let mut abandoned = row.clone();
    abandoned.key = Some("left-behind".into());
    let id = accounts.begin_checkout(&abandoned).unwrap().unwrap();
    let user = row.user;
    let reserve = mall_inventory::Reserve::new(
        user,
        mall_core::Sku(a),
        mall_core::Quantity::new(1).unwrap(),
        mall_core::PaymentMethod::Online,
        "7 Bund".into(),
        Some(format!("checkout {id} 0").into()),
        false,
    )
    .expecting(Some(mall_core::Fen(5_000)));
    let rx = api
        .state
        .engine
        .try_submit_for_sku(mall_core::Sku(a), mall_inventory::Command::Reserve(reserve))
        .unwrap();
    assert!(matches!(
        rx.await.unwrap(),
        mall_inventory::Reply::Order { .. }
    ));
    assert_eq!(counters(&api, a).await, (2, 2, 0));
    let released = mall_http::routes::checkouts::recover(&api.state, Timestamp(i64::MAX))
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(
        counters(&api, a).await,
        (3, 1, 0),
        "the abandoned hold is gone"
    );
    assert_eq!(
        counters(&api, b).await,
        (3, 1, 0),
        "the line never held stays free"
    );
    assert_eq!(
        accounts.checkout(id).unwrap().unwrap().state,
        mall_engine::CheckoutState::Released
    );
    assert_eq!(
        accounts.checkout(kept).unwrap().unwrap().state,
        mall_engine::CheckoutState::Reserved
    );
    // Nothing left to do.
    assert_eq!(
        mall_http::routes::checkouts::recover(&api.state, Timestamp(i64::MAX))
            .await
            .unwrap(),
        0
    );
    // Its key answers as released.
    let r = api
        .call(
            "POST",
            "/v1/checkouts",
            Some(&shopper),
            Some(
                json!({"lines": [{"sku": a, "quantity": 1}, {"sku": b, "quantity": 1}],
            "payment": "online", "address": "7 Bund"}),
            ),
            Some("left-behind"),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "checkout_released"),
        "{}",
        r.body
    );
}

/// A limited-quantity promotion: each checkout it applies to takes a unit
/// with its record; a checkout refused for another reason gives it back;
/// used up, it no longer applies (a client expecting it is told
/// `price_changed`, nothing held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_promotion_is_taken_by_checkouts_and_given_back() {
    let api = Api::new();
    let (_, a) = item_of(&api, "Lim", 10_000, 50, None).await;
    let (_, gone) = item_of(&api, "Gone", 5_000, 1, None).await;
    let r = api
        .post(
            "/v1/promotions",
            Some(ADMIN),
            json!({"rule": {"kind": "amount_off", "off_fen": 1_000, "min_spend_fen": 0},
            "skus": [a], "quantity": 2, "starts_at_ms": T0, "ends_at_ms": T0 + 3_600_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (&r.body["quantity"], &r.body["remaining"]),
        (&json!(2), &json!(2))
    );
    let promo = r.body["id"].as_u64().unwrap();
    let remaining = || async {
        let r = api.get("/v1/promotions", None).await;
        r.body["promotions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == promo)
            .unwrap()["remaining"]
            .as_u64()
            .unwrap()
    };
    let bad = |q: i64| {
        json!({"rule": {"kind": "amount_off", "off_fen": 1, "min_spend_fen": 0},
        "quantity": q, "starts_at_ms": T0, "ends_at_ms": T0 + 1})
    };
    assert_eq!(
        api.post("/v1/promotions", Some(ADMIN), bad(0)).await.code(),
        "invalid_request"
    );
    assert_eq!(
        api.post("/v1/promotions", Some(ADMIN), bad(10_000_001))
            .await
            .code(),
        "invalid_request"
    );
    let s = api.shoppers(4, "lim").await;
    let checkout = |token: &str, lines: Value, expected: i64| {
        let (api, token) = (&api, token.to_string());
        async move {
            api.post(
                "/v1/checkouts",
                Some(&token),
                json!({"lines": lines, "payment": "cod",
                "address": "11 Bund", "expected_total_fen": expected}),
            )
            .await
        }
    };
    let one = json!([{"sku": a, "quantity": 1}]);
    let r = checkout(&s[0], one.clone(), 9_000).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(remaining().await, 1);
    // Its other line is sold out (after the first unit goes): refused
    // whole, and the unit comes back.
    let r = checkout(&s[1], json!([{"sku": gone, "quantity": 1}]), 5_000).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = checkout(
        &s[2],
        json!([{"sku": a, "quantity": 1}, {"sku": gone, "quantity": 1}]),
        14_000,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "sold_out"),
        "{}",
        r.body
    );
    assert_eq!(
        remaining().await,
        1,
        "the refused checkout gave its unit back"
    );
    let r = checkout(&s[2], one.clone(), 9_000).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(remaining().await, 0);
    // Used up: the price is the full one now.
    let before = counters(&api, a).await;
    let r = checkout(&s[3], one.clone(), 9_000).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "price_changed"),
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["price"]["total_fen"], 10_000);
    assert_eq!(counters(&api, a).await, before, "nothing held");
    let q = api
        .post("/v1/quotes", Some(&s[3]), json!({"lines": one}))
        .await;
    assert_eq!(q.body["total_fen"], 10_000);
}

/// A checkout's coupons come back when every line ends unpaid: at once
/// when its last line is cancelled, or once the holds lapse; a checkout
/// with a line paid keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkouts_coupons_come_back_when_no_line_is_paid() {
    let (api, _sim) = Api::with_channel().await;
    let (_, a) = item_of(&api, "Cou", 20_000, 20, None).await;
    let (_, b) = item_of(&api, "Pon", 30_000, 20, None).await;
    let s = api.shoppers(3, "cb").await;
    let lines = json!([{"sku": a, "quantity": 1}, {"sku": b, "quantity": 1}]);
    let checkout = |who: usize, claim: u64| {
        let (api, token, lines) = (&api, s[who].clone(), lines.clone());
        async move {
            let r = api
                .post(
                    "/v1/checkouts",
                    Some(&token),
                    json!({"lines": lines, "claims": [claim],
                    "payment": "online", "address": "12 Bund"}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["children"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| {
                    c["orders"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|o| o["id"].as_u64().unwrap())
                })
                .collect::<Vec<u64>>()
        }
    };
    let cancel = |who: usize, id: u64| {
        let (api, token) = (&api, s[who].clone());
        async move {
            let r = api
                .call(
                    "POST",
                    &format!("/v1/orders/{id}/cancel"),
                    Some(&token),
                    None,
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
    };
    // A limited promotion of one unit rides along: it comes back with the
    // coupons.
    let r = api
        .post(
            "/v1/promotions",
            Some(ADMIN),
            json!({"rule": {"kind": "amount_off", "off_fen": 500, "min_spend_fen": 0},
            "quantity": 1, "starts_at_ms": T0, "ends_at_ms": T0 + 86_400_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let promo = r.body["id"].as_u64().unwrap();
    let remaining = || async {
        let r = api.get("/v1/promotions", None).await;
        r.body["promotions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == promo)
            .unwrap()["remaining"]
            .as_u64()
            .unwrap()
    };
    // Cancelled line by line: back when the last goes.
    let c0 = claimed_coupon(&api, &s[0], 2_000, 10_000).await;
    let orders = checkout(0, c0).await;
    assert_eq!(claim_status(&api, &s[0], c0).await, "used");
    assert_eq!(remaining().await, 0);
    cancel(0, orders[0]).await;
    assert_eq!(
        claim_status(&api, &s[0], c0).await,
        "used",
        "a line is still to be paid"
    );
    cancel(0, orders[1]).await;
    assert_eq!(claim_status(&api, &s[0], c0).await, "claimed");
    assert_eq!(remaining().await, 1, "the promotion's unit is back too");
    // A line paid, the rest cancelled: kept.
    let c1 = claimed_coupon(&api, &s[1], 2_000, 10_000).await;
    let orders = checkout(1, c1).await;
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{}/payments", orders[0]),
            Some(&s[1]),
            Some(json!({"method": "third_party"})),
            None,
        )
        .await;
    assert_eq!(r.body["order"]["status"], "paid", "{}", r.body);
    cancel(1, orders[1]).await;
    assert_eq!(claim_status(&api, &s[1], c1).await, "used");
    // Left unpaid until the holds lapse: back at the next settling.
    let c2 = claimed_coupon(&api, &s[2], 2_000, 10_000).await;
    checkout(2, c2).await;
    api.clock.advance_ms(61_000);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // a few shard ticks
    let looked = mall_http::routes::checkouts::settle_all_coupons(&api.state, Timestamp(i64::MAX))
        .await
        .unwrap();
    // The second was settled (kept) when its last line was cancelled.
    assert_eq!(looked, 1);
    assert_eq!(claim_status(&api, &s[2], c2).await, "claimed");
    assert_eq!(
        claim_status(&api, &s[1], c1).await,
        "used",
        "settled as kept"
    );
    // Nothing left to settle.
    assert_eq!(
        mall_http::routes::checkouts::settle_all_coupons(&api.state, Timestamp(i64::MAX))
            .await
            .unwrap(),
        0
    );
}

/// Pre-sale end to end on a manual clock: deposits (a snap-up that holds a
/// unit, online only, never in a cart), the balance asked and paid, then
/// delivered and settled; a balance never paid (the deposit forfeited to
/// the merchant at the window's end); a shopper's cancel (forfeited) and
/// the merchant's (refunded). The mall's ledger is verified after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presale_deposit_balance_forfeit_and_cancels() {
    use mall_ledger::chart::code;
    let (api, _sim) = Api::with_channel().await;
    let api = &api;
    let hour = 3_600_000;
    let m = api
        .post("/v1/admin/merchants", Some(ADMIN), json!({"name": "Haier"}))
        .await;
    let merchant = m.body["id"].as_u64().unwrap();
    let seller = api.seller(merchant, "haier.shop").await;
    // Deposits in the first hour; the balance from 2 h to 3 h, at the
    // night's price: 45,000.00 listed, 38,888.00 then; 100 worth 150.
    let (opens, closes) = (T0 + 2 * hour, T0 + 3 * hour);
    let base = json!({"merchant_id": merchant, "title": "Fridge", "category": "appliances",
        "price_fen": 4_500_000, "stock": 4, "per_user_limit": 1, "opens_at_ms": T0, "closes_at_ms": T0 + hour,
        "sale_prices": [{"opens_at_ms": opens, "closes_at_ms": closes, "price_fen": 3_888_800}],
        "presale": {"deposit_fen": 10_000, "worth_fen": 15_000, "balance_opens_at_ms": opens, "balance_closes_at_ms": closes}});
    // Terms that cannot stand are refused, naming the field.
    for (field, value) in [
        ("deposit_fen", json!(0)),
        ("worth_fen", json!(5_000)),
        ("balance_opens_at_ms", json!(T0)),
        ("worth_fen", json!(3_888_800)),
    ] {
        let mut bad = base.clone();
        bad["presale"][field] = value;
        let r = api.post("/v1/admin/items", Some(ADMIN), bad).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("presale"),
            "{}",
            r.body
        );
    }
    let r = api.post("/v1/admin/items", Some(ADMIN), base).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["presale"]["worth_fen"], 15_000);
    let sku = r.body["sku"].as_u64().unwrap();
    let ledger_ok = || {
        let (accounts, transfers) = api.state.engine.store().read_ledger().unwrap();
        let violations = mall_engine::verify_mall_ledger(accounts, transfers.clone());
        assert!(violations.is_empty(), "{violations:?}");
        transfers
    };
    let moved = |code: u16, order: u64| -> u64 {
        ledger_ok()
            .iter()
            .filter(|s| s.transfer.code == code && s.transfer.user_data == order)
            .map(|s| s.transfer.amount)
            .sum()
    };
    let u = api.shoppers(4, "pre").await;
    let pay = |id: u64, who: &str| {
        let (who, path) = (who.to_string(), format!("/v1/orders/{id}/payments"));
        async move {
            let r = api
                .call(
                    "POST",
                    &path,
                    Some(&who),
                    Some(json!({"method": "third_party"})),
                    None,
                )
                .await;
            assert_eq!(
                (r.status, &r.body["order"]["status"]),
                (StatusCode::OK, &json!("paid")),
                "{}",
                r.body
            );
        }
    };
    // A deposit is online only, and not in a cart.
    let cod =
        json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "1 Nanjing Road, Shanghai"});
    let r = api.post("/v1/orders", Some(&u[0]), cod).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "presale_online_only")
    );
    let r = api
        .post("/v1/checkouts", Some(&u[0]),
            json!({"lines": [{"sku": sku, "quantity": 1}], "payment": "online", "address": "1 Nanjing Road, Shanghai"}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "presale_online_only"),
        "{}",
        r.body
    );
    let mut deposits = vec![];
    for who in &u {
        let r = api.order(who, sku, 1, None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["amount_fen"], 10_000, "the deposit");
        assert_eq!(r.body["unit_price_fen"], 3_888_800, "at the final price");
        assert_eq!(r.body["presale"]["part"], "deposit");
        assert_eq!(r.body["presale"]["balance_fen"], 3_888_800 - 15_000);
        let id = r.body["id"].as_u64().unwrap();
        pay(id, who).await;
        deposits.push(id);
    }
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        (&item.body["available"], &item.body["sold"]),
        (&json!(0), &json!(4))
    );
    ledger_ok();
    let balance = |who: usize| {
        let (path, token) = (
            format!("/v1/orders/{}/balance", deposits[who]),
            u[who].clone(),
        );
        async move { api.post(&path, Some(&token), json!({})).await }
    };
    let r = balance(0).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "balance_not_open")
    );
    // Not another shopper's.
    let r = api
        .post(
            &format!("/v1/orders/{}/balance", deposits[0]),
            Some(&u[1]),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The shopper cancels a paid deposit before the balance: forfeited.
    let r = api
        .post(
            &format!("/v1/orders/{}/cancel", deposits[2]),
            Some(&u[2]),
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["status"]),
        (StatusCode::OK, &json!("forfeited")),
        "{}",
        r.body
    );
    // The merchant cancels another: refunded.
    let r = api
        .post(
            &format!("/v1/orders/{}/cancel", deposits[3]),
            Some(&seller),
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{}",
        r.body
    );
    // Another merchant's order is unknown to the seller.
    let r = api
        .get(&format!("/v1/orders/{}", deposits[0]), Some(&seller))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let mut waited = 0;
    while (
        moved(code::FORFEIT, deposits[2]),
        moved(code::REFUND, deposits[3]),
    ) != (10_000, 10_000)
    {
        assert!(waited < 100, "the forfeit and the refund never landed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        (&item.body["available"], &item.body["sold"]),
        (&json!(2), &json!(2))
    );

    // The balance window: asked once, paid, delivered with its deposit.
    api.clock.advance_ms(2 * hour);
    let b = balance(0).await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(
        (&b.body["amount_fen"], &b.body["presale"]["part"]),
        (&json!(3_888_800 - 15_000), &json!("balance"))
    );
    assert_eq!(b.body["presale"]["deposit_order"], deposits[0]);
    let again = balance(0).await;
    assert_eq!(
        (again.status, &again.body["id"]),
        (StatusCode::OK, &b.body["id"])
    );
    let b0 = b.body["id"].as_u64().unwrap();
    let r = api
        .post(
            &format!("/v1/admin/orders/{}/deliver", deposits[0]),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "balance_not_paid"),
        "{}",
        r.body
    );
    pay(b0, &u[0]).await;
    // Delivered by the merchant, named by the balance order: both settled.
    let r = api
        .post(
            &format!("/v1/admin/orders/{b0}/deliver"),
            Some(&seller),
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["amount_fen"]),
        (StatusCode::OK, &json!(10_000 + 3_888_800 - 15_000)),
        "{}",
        r.body
    );
    for id in [deposits[0], b0] {
        let r = api.get(&format!("/v1/orders/{id}"), Some(&u[0])).await;
        assert_eq!(r.body["status"], "delivered");
    }
    assert_eq!(
        moved(code::SETTLEMENT, deposits[0]) + moved(code::SETTLEMENT, b0),
        10_000 + 3_888_800 - 15_000
    );
    let r = api
        .post(
            &format!("/v1/admin/orders/{}/deliver", deposits[0]),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "already_settled");

    // The window ends with shopper 1's balance unpaid (asked, never paid):
    // the deposit is forfeited to the merchant, the unit comes back.
    let b1 = balance(1).await.body["id"].as_u64().unwrap();
    api.clock.advance_ms(hour);
    let mut waited = 0;
    while moved(code::FORFEIT, deposits[1]) != 10_000 {
        assert!(
            waited < 200,
            "the lapsed deposit was never forfeited to the merchant"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    let r = api
        .get(&format!("/v1/orders/{}", deposits[1]), Some(&u[1]))
        .await;
    assert_eq!(r.body["status"], "forfeited");
    let r = api.get(&format!("/v1/orders/{b1}"), Some(&u[1])).await;
    assert_eq!(r.body["status"], "expired");
    let r = balance(1).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "balance_closed")
    );
    let item = api.get(&format!("/v1/items/{sku}"), None).await;
    assert_eq!(
        (
            &item.body["available"],
            &item.body["sold"],
            &item.body["held"]
        ),
        (&json!(3), &json!(1), &json!(0))
    );
    // Every fen: 4 deposits and 1 balance in; 1 refund out; 2 forfeits and
    // 1 delivery's settlement to the merchant.
    assert_eq!(
        moved(code::REFUND, deposits[2]),
        0,
        "a forfeit is no refund"
    );
    ledger_ok();
}

/// The platform funds its own promotions: a checkout line's share of a
/// platform promotion is paid to the merchant (promotions → merchant) when
/// the line is delivered, once; the merchant's own promotion it funds
/// itself. The mall's ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_pays_its_share_of_a_discount_at_settlement() {
    use mall_ledger::chart::{self, code};
    let (api, _sim) = Api::with_channel().await;
    let sku = api.item(10, 2, 0).await; // 299.00
    let u = api.shoppers(1, "share").await.remove(0);
    // 10% off everything, funded by the platform.
    let r = api
        .post("/v1/promotions", Some(ADMIN),
            json!({"rule": {"kind": "percent_off", "basis_points": 1_000}, "starts_at_ms": T0, "ends_at_ms": T0 + 3_600_000}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let c = api
        .post("/v1/checkouts", Some(&u),
            json!({"lines": [{"sku": sku, "quantity": 2}], "payment": "online", "address": "1 Nanjing Road, Shanghai",
                   "expected_total_fen": 2 * 29_900 - 5_980}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let line = c.body["children"][0]["orders"][0]["id"].as_u64().unwrap();
    let ledger = || {
        let (accounts, transfers) = api.state.engine.store().read_ledger().unwrap();
        let v = mall_engine::verify_mall_ledger(accounts, transfers.clone());
        assert!(v.is_empty(), "{v:?}");
        transfers
    };
    let shares = || {
        ledger()
            .iter()
            .filter(|s| s.transfer.code == code::PLATFORM_DISCOUNT && s.transfer.user_data == line)
            .map(|s| (s.transfer.debit, s.transfer.amount))
            .collect::<Vec<_>>()
    };
    // Not before it is paid and delivered.
    let path = format!("/v1/admin/orders/{line}/deliver");
    let deliver = || api.post(&path, Some(ADMIN), json!({}));
    assert_eq!(deliver().await.code(), "invalid_order_status");
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{line}/payments"),
            Some(&u),
            Some(json!({"method": "third_party"})),
            None,
        )
        .await;
    assert_eq!(r.body["order"]["status"], "paid", "{}", r.body);
    assert!(shares().is_empty());
    let r = deliver().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (&r.body["amount_fen"], &r.body["platform_share_fen"]),
        (&json!(2 * 29_900 - 5_980), &json!(5_980))
    );
    assert_eq!(shares(), vec![(chart::PROMOTIONS, 5_980)]);
    // Again: already settled, and the share is not paid twice.
    assert_eq!(deliver().await.code(), "already_settled");
    assert_eq!(shares(), vec![(chart::PROMOTIONS, 5_980)]);
    // A line refunded in full before its delivery: the platform funds no
    // sale that did not happen.
    let u = api.shoppers(1, "share2").await.remove(0);
    let c = api
        .post("/v1/checkouts", Some(&u),
            json!({"lines": [{"sku": sku, "quantity": 1}], "payment": "online", "address": "1 Nanjing Road, Shanghai"}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let other = c.body["children"][0]["orders"][0]["id"].as_u64().unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{other}/payments"),
            Some(&u),
            Some(json!({"method": "third_party"})),
            None,
        )
        .await;
    assert_eq!(r.body["order"]["status"], "paid", "{}", r.body);
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{other}/refunds"),
            Some(ADMIN),
            Some(json!({})),
            Some("refund-all"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .post(
            &format!("/v1/admin/orders/{other}/deliver"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(
        (
            r.status,
            &r.body["amount_fen"],
            &r.body["platform_share_fen"]
        ),
        (StatusCode::OK, &json!(0), &json!(0)),
        "{}",
        r.body
    );
    assert!(ledger()
        .iter()
        .all(|s| !(s.transfer.code == code::PLATFORM_DISCOUNT && s.transfer.user_data == other)));
}

/// A checkout paid with one payment: one provider charge for its total,
/// each line order paid with its own money (the ledger verifies), then
/// refunded and delivered on its own, the provider refunding the one
/// payment. A retry under the key answers the same; paying again, or a
/// line alone, is refused. Refusals charge nothing: a wallet (422),
/// another shopper (404), a checkout with a line cancelled (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_is_paid_with_one_payment() {
    let (api, sim) = Api::with_channel().await;
    let (_, a1) = item_of(&api, "Alpha", 10_000, 5, None).await;
    let (_, b1) = item_of(&api, "Beta", 30_000, 5, None).await;
    let shoppers = api.shoppers(2, "cp").await;
    let (first, second) = (&shoppers[0], &shoppers[1]);
    let checkout = |lines: Value| {
        let body = json!({"lines": lines, "payment": "online", "address": "1 Nanjing Road"});
        let api = &api;
        async move {
            let r = api.post("/v1/checkouts", Some(first), body).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            let orders: Vec<u64> = r.body["children"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| c["orders"].as_array().unwrap().clone())
                .map(|o| o["id"].as_u64().unwrap())
                .collect();
            (r.body["id"].as_u64().unwrap(), orders)
        }
    };
    let pay = |id: u64, who: &str, method: &str, key: Option<&str>| {
        let (who, path) = (who.to_string(), format!("/v1/checkouts/{id}/payments"));
        let (body, key) = (json!({ "method": method }), key.map(str::to_string));
        let api = &api;
        async move {
            api.call("POST", &path, Some(&who), Some(body), key.as_deref())
                .await
        }
    };
    let charged = || {
        let s = sim.stats("sim").unwrap();
        (
            s.succeeded + s.pending + s.failed,
            s.succeeded_fen,
            s.refunded_fen,
        )
    };
    let (id, orders) =
        checkout(json!([{"sku": a1, "quantity": 1}, {"sku": b1, "quantity": 2}])).await;
    assert_eq!(orders.len(), 2);

    // Refused, nothing charged.
    let path = format!("/v1/checkouts/{id}/payments");
    let anonymous = api
        .call(
            "POST",
            &path,
            None,
            Some(json!({"method": "third_party"})),
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let r = pay(id, first, "wallet", None).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "wallet_not_for_checkouts")
    );
    assert_eq!(
        pay(id, second, "third_party", None).await.code(),
        "checkout_not_found"
    );
    assert_eq!(
        pay(id, first, "cheque", None).await.code(),
        "invalid_request"
    );
    assert_eq!(
        pay(id + 1_000, first, "third_party", None).await.code(),
        "checkout_not_found"
    );
    assert_eq!(charged(), (0, 0, 0));

    // One payment for 10,000 + 2 × 30,000.
    let r = pay(id, first, "third_party", Some("ck-pay")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["payment"]["status"], "succeeded");
    assert_eq!(r.body["payment"]["amount_fen"], 70_000);
    for child in r.body["checkout"]["children"].as_array().unwrap() {
        for o in child["orders"].as_array().unwrap() {
            assert_eq!(o["status"], "paid", "{}", r.body);
        }
    }
    assert_eq!(charged(), (1, 70_000, 0));
    let again = pay(id, first, "third_party", Some("ck-pay")).await;
    assert!(again.replayed);
    assert_eq!(again.body["payment"], r.body["payment"]);
    assert_eq!(
        pay(id, first, "third_party", None).await.code(),
        "invalid_order_status"
    );
    let alone = api
        .call(
            "POST",
            &format!("/v1/orders/{}/payments", orders[0]),
            Some(first),
            Some(json!({"method": "third_party"})),
            None,
        )
        .await;
    assert_eq!(alone.code(), "invalid_order_status");
    assert_eq!(charged(), (1, 70_000, 0));

    // Each line's money is its own: the ledger has one transfer per line,
    // from one provider payment, and verifies.
    let ledger = || {
        let (accounts, transfers) = api.state.engine.store().read_ledger().unwrap();
        let violations = mall_engine::verify_mall_ledger(accounts, transfers.clone());
        assert!(violations.is_empty(), "{violations:?}");
        transfers
    };
    let code = mall_ledger::chart::code::CHECKOUT_PAYMENT;
    let lines: Vec<(u64, u64)> = ledger()
        .iter()
        .filter(|s| s.transfer.code == code && s.state.is_some())
        .map(|s| (s.transfer.user_data, s.transfer.amount))
        .collect();
    assert_eq!(lines, vec![(orders[0], 10_000), (orders[1], 60_000)]);

    // A line refunded in part, the other delivered: per line, through the
    // one payment.
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{}/refunds", orders[1]),
            Some(ADMIN),
            Some(json!({"amount_fen": 25_000})),
            Some("ck-refund"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["paid_fen"], 60_000, "{}", r.body);
    let r = api
        .post(
            &format!("/v1/admin/orders/{}/deliver", orders[0]),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["amount_fen"], 10_000, "{}", r.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while charged().2 != 25_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the provider never heard of the refund"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ledger();

    // A checkout with a line cancelled: refused whole, nothing charged.
    let (id, orders) =
        checkout(json!([{"sku": a1, "quantity": 1}, {"sku": b1, "quantity": 1}])).await;
    let r = api
        .post(
            &format!("/v1/orders/{}/cancel", orders[1]),
            Some(first),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = pay(id, first, "third_party", None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_order_status"),
        "{}",
        r.body
    );
    assert_eq!(charged().0, 1);
    let r = api
        .get(&format!("/v1/orders/{}", orders[0]), Some(first))
        .await;
    assert_eq!(r.body["status"], "awaiting_payment");
}
