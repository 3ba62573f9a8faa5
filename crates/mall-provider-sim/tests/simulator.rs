//! The simulator over real loopback HTTP: a hyper client plays the mall's
//! adapter, a small axum receiver collects the callbacks.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mall_provider_sim::config::{self, ChannelsFile, ConfigError};
use mall_provider_sim::{Simulator, Stats};
use mall_router::signature::{self, SignatureError};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(3);

/// A channel's body in the channels file, after name, port and secret.
const CHANNEL_DEFAULTS: &str = r#"
methods = ["card", "third_party"]
capacity_per_s = 1000
max_concurrency = 1000
latency_ms = { median = 20, p99 = 40 }
"#;

fn secret(name: &str) -> String {
    format!("test-secret-of-{name}")
}

/// One `[[channel]]` with port 0 and secret `secret(name)`.
fn channel(name: &str, body: &str) -> String {
    format!(
        "[[channel]]\nname = \"{name}\"\nport = 0\nsecret = \"{}\"\n{body}\n",
        secret(name)
    )
}

fn file(channels: &[String]) -> ChannelsFile {
    config::parse(&channels.concat()).unwrap()
}

async fn start(channels: &[String]) -> Simulator {
    Simulator::start(file(channels), 7).await.unwrap()
}

// ---- the client (the mall's adapter) -----------------------------------

struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// One request on a fresh connection; `Err` if no answer within `timeout`.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<String>,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, body }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| "timed out".to_string())
}

/// A client of one channel, with its secret.
struct Client {
    addr: SocketAddr,
    secret: String,
}

impl Client {
    fn of(sim: &Simulator, name: &str) -> Client {
        Client {
            addr: sim.addr(name).unwrap(),
            secret: secret(name),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        call(
            self.addr,
            "POST",
            path,
            Some(&self.secret),
            Some(body.to_string()),
            TIMEOUT,
        )
        .await
        .unwrap()
    }

    async fn get(&self, path: &str) -> Answer {
        call(self.addr, "GET", path, Some(&self.secret), None, TIMEOUT)
            .await
            .unwrap()
    }

    async fn pay(&self, payment_id: &str, amount_fen: i64, callback_url: &str) -> Answer {
        let body = json!({
            "payment_id": payment_id,
            "amount_fen": amount_fen,
            "method": "third_party",
            "callback_url": callback_url,
        });
        self.post("/v1/payments", body).await
    }

    async fn refund(&self, refund_id: &str, payment_id: &str, amount_fen: i64) -> Answer {
        let body =
            json!({"refund_id": refund_id, "payment_id": payment_id, "amount_fen": amount_fen});
        self.post("/v1/refunds", body).await
    }
}

// ---- the receiver (the mall's callback endpoint) ------------------------

#[derive(Debug)]
struct Callback {
    signature: String,
    body: Bytes,
    /// Whether the receiver answered 2xx to this attempt.
    taken: bool,
}

impl Callback {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Callback>,
    /// Attempts still to be answered 500.
    fail_next: Arc<AtomicUsize>,
    /// How long each answer takes.
    delay: Duration,
}

struct Receiver {
    base: String,
    rx: mpsc::UnboundedReceiver<Callback>,
}

impl Receiver {
    async fn start(fail_next: usize, delay: Duration) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = ReceiverState {
            tx,
            fail_next: Arc::new(AtomicUsize::new(fail_next)),
            delay,
        };
        let app = Router::new()
            .route("/cb/{channel}", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { base, rx }
    }

    fn url(&self, channel: &str) -> String {
        format!("{}/cb/{channel}", self.base)
    }

    async fn next(&mut self, within: Duration) -> Option<Callback> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    tokio::time::sleep(s.delay).await;
    let signature = headers
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let fail = s
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let _ = s.tx.send(Callback {
        signature,
        body,
        taken: !fail,
    });
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn wait_for_stats(sim: &Simulator, name: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let stats = sim.stats(name).unwrap();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- tests ---------------------------------------------------------------

#[tokio::test]
async fn a_payment_is_called_back_signed_and_creates_are_idempotent() {
    let sim = start(&[channel("alipay", CHANNEL_DEFAULTS)]).await;
    let mut receiver = Receiver::start(0, Duration::ZERO).await;
    let alipay = Client::of(&sim, "alipay");
    let url = receiver.url("alipay");

    let created = alipay.pay("1001", 500, &url).await;
    assert_eq!(created.status, 202);
    assert_eq!(
        created.body,
        json!({"payment_id": "1001", "status": "pending"})
    );
    let repeated = alipay.pay("1001", 500, &url).await;
    assert_eq!((repeated.status, &repeated.body), (202, &created.body));

    let callback = receiver.next(TIMEOUT).await.expect("a callback");
    assert!(callback.taken);
    let now = unix_now_ms();
    let signed_at = signature::verify(
        secret("alipay").as_bytes(),
        &callback.signature,
        &callback.body,
        now,
    )
    .expect("signed with the channel's secret");
    assert!((now - signed_at).abs() < 5_000);
    assert_eq!(
        signature::verify(
            b"someone-elses-secret",
            &callback.signature,
            &callback.body,
            now
        ),
        Err(SignatureError::Mismatch)
    );
    let event = callback.json();
    assert!(!event["event_id"].as_str().unwrap().is_empty());
    assert_eq!(event["channel"], "alipay");
    assert_eq!(event["payment_id"], "1001");
    assert_eq!(event["status"], "succeeded");
    assert_eq!(event["amount_fen"], 500);

    let shown = alipay.get("/v1/payments/1001").await;
    assert_eq!(shown.status, 200);
    let expected =
        json!({"payment_id": "1001", "status": "succeeded", "amount_fen": 500, "refunded_fen": 0});
    assert_eq!(shown.body, expected);

    let again = alipay.pay("1001", 500, &url).await;
    assert_eq!((again.status, &again.body), (202, &created.body));
    assert!(receiver.next(Duration::from_millis(300)).await.is_none());

    let reused = alipay.pay("1001", 501, &url).await;
    assert_eq!((reused.status, reused.code()), (409, "payment_id_reused"));

    let stats = sim.stats("alipay").unwrap();
    assert_eq!((stats.created, stats.succeeded, stats.pending), (1, 1, 0));
    assert_eq!((stats.succeeded_fen, stats.callbacks_sent), (500, 1));
    let served = alipay.get("/v1/stats").await;
    assert_eq!(served.body["created"], 1);
    assert_eq!(served.body["callbacks_sent"], 1);
    assert_eq!(sim.addrs(), vec![("alipay".to_string(), alipay.addr)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_code() {
    let body = CHANNEL_DEFAULTS.replace(r#"["card", "third_party"]"#, r#"["card"]"#);
    let sim = start(&[
        channel("unionpay", &body),
        channel("other", CHANNEL_DEFAULTS),
    ])
    .await;
    let addr = sim.addr("unionpay").unwrap();
    let unionpay = Client::of(&sim, "unionpay");
    let good = json!({
        "payment_id": "1", "amount_fen": 100, "method": "card",
        "callback_url": "http://127.0.0.1:9/cb",
    });

    for bearer in [
        None,
        Some("wrong-secret-0123456789"),
        Some(&*secret("other")),
    ] {
        let answer = call(
            addr,
            "POST",
            "/v1/payments",
            bearer,
            Some(good.to_string()),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{bearer:?}"
        );
    }
    let answer = call(addr, "GET", "/v1/stats", None, None, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(answer.status, 401);

    let raw = |text: &str| {
        call(
            addr,
            "POST",
            "/v1/payments",
            Some(&unionpay.secret),
            Some(text.into()),
            TIMEOUT,
        )
    };
    let answer = raw("{not json").await.unwrap();
    assert_eq!((answer.status, answer.code()), (400, "malformed_json"));
    let answer = raw("").await.unwrap();
    assert_eq!((answer.status, answer.code()), (400, "malformed_json"));
    let answer = raw(&"x".repeat(20 * 1024)).await.unwrap();
    assert_eq!((answer.status, answer.code()), (413, "body_too_large"));

    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("amount_fen");
    let cases = [
        (missing, "invalid_request"),
        (with("extra", json!(1)), "invalid_request"),
        (with("method", json!("cash")), "invalid_request"),
        (with("amount_fen", json!("100")), "invalid_request"),
        (with("payment_id", json!("abc")), "invalid_id"),
        (with("payment_id", json!("007")), "invalid_id"),
        (with("payment_id", json!("-1")), "invalid_id"),
        (with("amount_fen", json!(0)), "invalid_amount"),
        (with("amount_fen", json!(-5)), "invalid_amount"),
        (
            with("callback_url", json!("http://10.0.0.1:9/cb")),
            "invalid_callback_url",
        ),
        (
            with("callback_url", json!("http://example.com/cb")),
            "invalid_callback_url",
        ),
        (
            with("callback_url", json!("https://127.0.0.1:9/cb")),
            "invalid_callback_url",
        ),
        (with("method", json!("third_party")), "method_not_supported"),
    ];
    for (body, code) in cases {
        let answer = unionpay.post("/v1/payments", body.clone()).await;
        assert_eq!((answer.status, answer.code()), (400, code), "{body}");
    }

    let answer = unionpay.get("/v1/payments/404").await;
    assert_eq!((answer.status, answer.code()), (404, "unknown_payment"));
    let answer = unionpay.get("/v1/payments/x").await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_id"));
    let answer = unionpay.get("/v1/nowhere").await;
    assert_eq!((answer.status, answer.code()), (404, "not_found"));
    assert_eq!(sim.stats("unionpay").unwrap(), Stats::default());
    sim.shutdown().await;
}

#[tokio::test]
async fn declined_payments_and_refunds() {
    let declines = format!("{CHANNEL_DEFAULTS}failure_rate = 1.0\n");
    let sim = start(&[
        channel("declines", &declines),
        channel("pays", CHANNEL_DEFAULTS),
    ])
    .await;
    let mut receiver = Receiver::start(0, Duration::ZERO).await;
    let (no, yes) = (Client::of(&sim, "declines"), Client::of(&sim, "pays"));

    assert_eq!(
        no.pay("1", 1000, &receiver.url("declines")).await.status,
        202
    );
    let event = receiver.next(TIMEOUT).await.unwrap().json();
    assert_eq!(
        (event["channel"].as_str(), event["status"].as_str()),
        (Some("declines"), Some("failed"))
    );
    assert_eq!(no.get("/v1/payments/1").await.body["status"], "failed");
    let answer = no.refund("1", "1", 10).await;
    assert_eq!(
        (answer.status, answer.code()),
        (409, "payment_not_succeeded")
    );

    assert_eq!(yes.pay("1", 1000, &receiver.url("pays")).await.status, 202);
    let answer = yes.refund("1", "1", 10).await;
    assert_eq!(
        (answer.status, answer.code()),
        (409, "payment_not_succeeded"),
        "still pending"
    );
    let event = receiver.next(TIMEOUT).await.unwrap().json();
    assert_eq!(event["status"], "succeeded");

    let first = yes.refund("7", "1", 300).await;
    assert_eq!(
        (first.status, &first.body),
        (200, &json!({"refund_id": "7", "status": "refunded"}))
    );
    let again = yes.refund("7", "1", 300).await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    let answer = yes.refund("7", "1", 301).await;
    assert_eq!((answer.status, answer.code()), (409, "refund_id_reused"));
    let answer = yes.refund("8", "1", 701).await;
    assert_eq!(
        (answer.status, answer.code()),
        (409, "refund_exceeds_payment")
    );
    assert_eq!(yes.refund("8", "1", 700).await.status, 200);
    let answer = yes.refund("9", "1", 1).await;
    assert_eq!(
        (answer.status, answer.code()),
        (409, "refund_exceeds_payment")
    );
    let answer = yes.refund("10", "2", 1).await;
    assert_eq!((answer.status, answer.code()), (404, "unknown_payment"));
    assert_eq!(yes.get("/v1/payments/1").await.body["refunded_fen"], 1000);

    let (n, y) = (sim.stats("declines").unwrap(), sim.stats("pays").unwrap());
    assert_eq!((n.failed, n.succeeded, n.succeeded_fen), (1, 0, 0));
    assert_eq!(
        (y.succeeded, y.succeeded_fen, y.refunded_fen),
        (1, 1000, 1000)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn over_capacity_refuses_or_slows() {
    let refuse = CHANNEL_DEFAULTS.replace("capacity_per_s = 1000", "capacity_per_s = 5");
    let slow = CHANNEL_DEFAULTS.replace("capacity_per_s = 1000", "capacity_per_s = 4")
        + "over_capacity = \"slow\"\n";
    let sim = start(&[channel("tight", &refuse), channel("slowpoke", &slow)]).await;
    let mut receiver = Receiver::start(0, Duration::ZERO).await;
    let tight = Arc::new(Client::of(&sim, "tight"));

    let mut sends = Vec::new();
    for id in 1..=20 {
        let (tight, url) = (tight.clone(), receiver.url("tight"));
        sends.push(tokio::spawn(async move {
            tight.pay(&id.to_string(), 100, &url).await
        }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for send in sends {
        let answer = send.await.unwrap();
        match (answer.status, answer.code()) {
            (202, _) => accepted += 1,
            (429, "over_capacity") => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    // The burst spans one or two one-second windows (more only on a
    // machine so loaded that 20 loopback requests take over a second).
    assert!(accepted >= 5 && refused >= 5, "{accepted} accepted");
    assert_eq!(accepted + refused, 20);
    let stats = sim.stats("tight").unwrap();
    assert_eq!(
        (stats.created, stats.refused_over_capacity),
        (accepted, refused)
    );

    let slowpoke = Client::of(&sim, "slowpoke");
    for id in 1..=8 {
        let answer = slowpoke
            .pay(&id.to_string(), 100, &receiver.url("slowpoke"))
            .await;
        assert_eq!(answer.status, 202);
    }
    let stats = wait_for_stats(&sim, "slowpoke", |s| s.callbacks_sent == 8).await;
    assert_eq!((stats.created, stats.refused_over_capacity), (8, 0));
    while receiver.next(Duration::from_millis(10)).await.is_some() {}
    sim.shutdown().await;
}

#[tokio::test]
async fn an_error_outage_answers_503_until_it_ends() {
    let body =
        format!("{CHANNEL_DEFAULTS}[[channel.outage]]\nfrom_s = 0\nto_s = 1\nkind = \"error\"\n");
    let sim = start(&[channel("flaky", &body)]).await;
    let started = Instant::now();
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let flaky = Client::of(&sim, "flaky");

    let answer = flaky.pay("1", 100, &receiver.url("flaky")).await;
    assert_eq!((answer.status, answer.code()), (503, "unavailable"));
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed())).await;
    let answer = flaky.pay("1", 100, &receiver.url("flaky")).await;
    assert_eq!(answer.status, 202);
    let stats = sim.stats("flaky").unwrap();
    assert_eq!((stats.errored, stats.created), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_timeout_outage_holds_creates_and_sends_no_callbacks() {
    let body = format!(
        "{CHANNEL_DEFAULTS}[[channel.outage]]\nfrom_s = 0\nto_s = 30\nkind = \"timeout\"\n"
    );
    let sim = start(&[channel("hung", &body)]).await;
    let mut receiver = Receiver::start(0, Duration::ZERO).await;
    let hung = Client::of(&sim, "hung");
    let create = json!({
        "payment_id": "1", "amount_fen": 100, "method": "card",
        "callback_url": receiver.url("hung"),
    });

    let short = Duration::from_millis(300);
    let answer = call(
        hung.addr,
        "POST",
        "/v1/payments",
        Some(&hung.secret),
        Some(create.to_string()),
        short,
    )
    .await;
    assert!(answer.is_err(), "the create was answered");
    assert!(receiver.next(Duration::from_millis(300)).await.is_none());
    // Other requests are still answered.
    assert_eq!(hung.get("/v1/payments/1").await.status, 404);
    let stats = sim.stats("hung").unwrap();
    assert_eq!(
        (stats.timed_out, stats.created, stats.callbacks_sent),
        (1, 0, 0)
    );

    // Shutdown answers held requests instead of waiting 30 s.
    let (addr, token, body) = (hung.addr, hung.secret.clone(), create.to_string());
    let held = tokio::spawn(async move {
        call(
            addr,
            "POST",
            "/v1/payments",
            Some(&token),
            Some(body),
            TIMEOUT,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    sim.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(2));
    let answer = held.await.unwrap().expect("answered at shutdown");
    assert_eq!(answer.status, 504);
}

#[tokio::test]
async fn callbacks_due_in_a_timeout_outage_wait_for_its_end() {
    let body = CHANNEL_DEFAULTS.replace("median = 20, p99 = 40", "median = 1200, p99 = 1200")
        + "[[channel.outage]]\nfrom_s = 1\nto_s = 2\nkind = \"timeout\"\n";
    let sim = start(&[channel("late", &body)]).await;
    let started = Instant::now();
    let mut receiver = Receiver::start(0, Duration::ZERO).await;
    let late = Client::of(&sim, "late");

    assert_eq!(late.pay("1", 100, &receiver.url("late")).await.status, 202);
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    // Settled at 1.2 s, but its callback is held until the outage ends.
    assert_eq!(late.get("/v1/payments/1").await.body["status"], "succeeded");
    let callback = receiver
        .next(TIMEOUT)
        .await
        .expect("a callback after the outage");
    assert!(
        started.elapsed() >= Duration::from_millis(1950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(callback.json()["status"], "succeeded");
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_are_retried_with_the_same_event_until_taken() {
    let sim = start(&[channel("alipay", CHANNEL_DEFAULTS)]).await;
    let mut receiver = Receiver::start(2, Duration::ZERO).await;
    let alipay = Client::of(&sim, "alipay");

    assert_eq!(
        alipay.pay("5", 100, &receiver.url("alipay")).await.status,
        202
    );
    let mut attempts = Vec::new();
    for _ in 0..3 {
        attempts.push(receiver.next(TIMEOUT).await.expect("an attempt"));
    }
    let taken: Vec<bool> = attempts.iter().map(|a| a.taken).collect();
    assert_eq!(taken, [false, false, true]);
    let events: Vec<Value> = attempts.iter().map(Callback::json).collect();
    assert!(events.iter().all(|e| e == &events[0]), "{events:?}");
    for a in &attempts {
        assert!(signature::verify(
            secret("alipay").as_bytes(),
            &a.signature,
            &a.body,
            unix_now_ms()
        )
        .is_ok());
    }
    assert!(receiver.next(Duration::from_millis(200)).await.is_none());
    let stats = sim.stats("alipay").unwrap();
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (1, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_to_nobody_are_given_up_after_five_retries() {
    let sim = start(&[channel("alipay", CHANNEL_DEFAULTS)]).await;
    let alipay = Client::of(&sim, "alipay");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", closed.local_addr().unwrap());
    drop(closed);

    let started = Instant::now();
    assert_eq!(alipay.pay("1", 100, &url).await.status, 202);
    let stats = wait_for_stats(&sim, "alipay", |s| s.callbacks_failed == 1).await;
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (0, 1));
    // 100 + 200 + 400 + 800 + 1600 ms of backoff.
    assert!(started.elapsed() >= Duration::from_millis(3100));
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_go_out_concurrently() {
    let sim = start(&[channel("alipay", CHANNEL_DEFAULTS)]).await;
    // Each callback takes the receiver 300 ms: 20 in a row would take 6 s.
    let mut receiver = Receiver::start(0, Duration::from_millis(300)).await;
    let alipay = Client::of(&sim, "alipay");
    let started = Instant::now();
    for id in 1..=20 {
        assert_eq!(
            alipay
                .pay(&id.to_string(), 100, &receiver.url("alipay"))
                .await
                .status,
            202
        );
    }
    for _ in 0..20 {
        assert!(receiver.next(TIMEOUT).await.is_some());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_same_seed_draws_the_same_outcomes() {
    let body = CHANNEL_DEFAULTS.replace("median = 20, p99 = 40", "median = 5, p99 = 30")
        + "failure_rate = 0.5\n";
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sim = Simulator::start(file(&[channel("coin", &body)]), 99)
            .await
            .unwrap();
        let coin = Client::of(&sim, "coin");
        for id in 1..=24 {
            assert_eq!(
                coin.pay(&id.to_string(), 100, "http://127.0.0.1:9/cb")
                    .await
                    .status,
                202
            );
        }
        wait_for_stats(&sim, "coin", |s| s.pending == 0).await;
        let mut outcomes = Vec::new();
        for id in 1..=24 {
            let shown = coin.get(&format!("/v1/payments/{id}")).await;
            outcomes.push(shown.body["status"].as_str().unwrap().to_string());
        }
        runs.push(outcomes);
        sim.shutdown().await;
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].iter().any(|s| s == "failed") && runs[0].iter().any(|s| s == "succeeded"));
}

#[tokio::test]
async fn a_busy_port_is_an_error_naming_the_channel() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = channel("alipay", CHANNEL_DEFAULTS).replace("port = 0", &format!("port = {port}"));
    let error = Simulator::start(config::parse(&text).unwrap(), 1)
        .await
        .err()
        .unwrap();
    assert!(format!("{error:#}").contains("\"alipay\""), "{error:#}");
}

#[test]
fn config_errors_say_what_is_wrong() {
    let check = |text: String, expected: &str| {
        let error = config::parse(&text).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        error
    };
    let a = channel("alipay", CHANNEL_DEFAULTS);
    let with = |extra: &str| channel("alipay", &format!("{CHANNEL_DEFAULTS}{extra}"));

    check(format!("{a}{a}"), "\"alipay\" is used twice");
    let error = check(format!("{a}bogus = 1\n"), "bogus");
    assert!(matches!(error, ConfigError::Syntax(_)));
    check(format!("colour = \"red\"\n{a}"), "colour");
    check(
        with("failure_rate = 1.5"),
        "failure_rate 1.5 must be a share from 0 to 1",
    );
    check(with("failure_rate = -0.1"), "failure_rate");
    check(
        a.replace("capacity_per_s = 1000", "capacity_per_s = 0"),
        "capacity_per_s must be positive",
    );
    check(
        a.replace("max_concurrency = 1000", "max_concurrency = 0"),
        "max_concurrency must be positive",
    );
    check(a.replace("median = 20", "median = 50"), "latency_ms needs");
    check(
        a.replace(&secret("alipay"), "short"),
        "secret must be at least 16 bytes",
    );
    check(
        a.replace("methods = [\"card\", \"third_party\"]", "methods = []"),
        "methods must name",
    );
    check(
        a.replace("\"card\", \"third_party\"", "\"card\", \"card\""),
        "twice",
    );
    check(a.replace("\"card\"", "\"cash\""), "cash");
    check(
        channel("Ali Pay", CHANNEL_DEFAULTS),
        "must be 1 to 32 of a-z",
    );
    let b = channel("wechat", CHANNEL_DEFAULTS);
    check(
        format!(
            "{}{}",
            a.replace("port = 0", "port = 18101"),
            b.replace("port = 0", "port = 18101")
        ),
        "port 18101 is used by another channel",
    );
    check(
        with("[[channel.outage]]\nfrom_s = 5\nto_s = 5\nkind = \"error\"\n"),
        "from_s must be before to_s",
    );
    check(
        with("[[channel.outage]]\nfrom_s = 1\nto_s = 5\nkind = \"slow\"\n"),
        "needs a factor",
    );
    check(
        with("[[channel.outage]]\nfrom_s = 1\nto_s = 5\nkind = \"error\"\nfactor = 2.0\n"),
        "factor is for kind \"slow\" only",
    );
    check(
        with("[[channel.outage]]\nfrom_s = 1\nto_s = 5\nkind = \"nap\"\n"),
        "nap",
    );
    check(
        with(concat!(
            "[[channel.outage]]\nfrom_s = 1\nto_s = 5\nkind = \"error\"\n",
            "[[channel.outage]]\nfrom_s = 4\nto_s = 6\nkind = \"decline\"\n",
        )),
        "overlap",
    );
    check(String::new(), "no channels");
    check(a.replace("port = 0", "port = 70000"), "port");
    // The optional fields, well set, are fine.
    let fine = with(concat!(
        "over_capacity = \"slow\"\nfee_bp = 60\npriority = 2\n",
        "[[channel.outage]]\nfrom_s = 1\nto_s = 5\nkind = \"slow\"\nfactor = 10.0\n",
    ));
    assert!(config::parse(&fine).is_ok());
}

#[test]
fn the_example_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/channels.example.toml");
    let file = config::load(path).unwrap();
    let names: Vec<_> = file
        .channel
        .iter()
        .map(|c| (c.name.as_str(), c.capacity_per_s, c.port))
        .collect();
    assert_eq!(
        names,
        [
            ("alipay", 3000, 18101),
            ("wechat", 2500, 18102),
            ("unionpay", 1500, 18103)
        ]
    );
    let missing = config::load("/nonexistent/channels.toml").unwrap_err();
    assert!(format!("{missing:#}").contains("/nonexistent/channels.toml"));
}
