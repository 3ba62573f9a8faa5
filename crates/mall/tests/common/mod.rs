//! What the binary's tests share: free ports, a client, starting `mall
//! serve` (and `mall channels`) as processes, and one-line calls.
#![allow(dead_code)] // each test file uses its own part

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "binary-test-admin-token-0123456789abcdef";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub struct Server {
    pub child: Child,
    pub base: String,
}

/// Whether this run keeps the store in PostgreSQL (`MALL_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("MALL_TEST_STORE").as_deref() == Ok("postgres")
}

/// With `MALL_TEST_STORE=postgres` (`./scripts/test.sh` runs the
/// end-to-end tests both ways), a `mall` command on `data` keeps its store
/// in a database of its own on the PostgreSQL at `MALL_TEST_PG`: the same
/// data directory, the same database, across restarts. Otherwise nothing
/// changes (SQLite in the data directory).
pub fn store_env(command: &mut Command, data: &Path) {
    if !on_postgres() {
        return;
    }
    let base = std::env::var("MALL_TEST_PG")
        .expect("MALL_TEST_STORE=postgres needs MALL_TEST_PG, a PostgreSQL connection string");
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    let db = format!("e2e_{:016x}", h.finish());
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).expect("MALL_TEST_PG");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .unwrap()
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
    }
    command.env("MALL_STORE", format!("{base} dbname={db}"));
}

impl Server {
    /// `mall serve` on a free port over `data`, with `extra` flags.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_as(data, ADMIN, extra)
    }

    /// The same with `token` as the bootstrap admin token. The operators'
    /// listener is on an ephemeral port unless `extra` names one.
    pub fn start_as(data: &Path, token: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mall"));
        store_env(&mut command, data);
        command
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(["--shards", "2", "--user-rate-per-s", "100000"]);
        if !extra.contains(&"--admin-addr") {
            command.args(["--admin-addr", "127.0.0.1:0"]);
        }
        let child = command
            .args(extra)
            .env("MALL_ADMIN_TOKEN", token)
            .env("MALL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start mall serve");
        let base = format!("http://127.0.0.1:{port}");
        wait_for(&format!("{base}/healthz"), "");
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "exit status {s:?}");
                return;
            }
            assert!(Instant::now() < deadline, "no graceful exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `url` answers 200 (with `token` as bearer, if any).
pub fn wait_for(url: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = agent().get(url);
        if !token.is_empty() {
            req = req.header("authorization", &format!("Bearer {token}"));
        }
        if let Ok(r) = req.call() {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request; `None` on a transport error (e.g. the server was killed).
pub fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let result = match (method, body) {
        ("GET", _) => agent
            .get(url)
            .header("authorization", &format!("Bearer {token}"))
            .call(),
        (_, body) => {
            let mut req = agent
                .post(url)
                .header("authorization", &format!("Bearer {token}"));
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            req.send_json(body.unwrap_or(json!({})))
        }
    };
    let mut response = result.ok()?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_json::<Value>()
        .unwrap_or(Value::Null);
    Some((status, body))
}

/// A merchant and `n` items of `stock` units at `price_fen`, on sale now.
pub fn items(server: &Server, n: usize, stock: i64, price_fen: i64) -> Vec<u64> {
    let a = agent();
    let m = call(
        &a,
        "POST",
        &server.url("/v1/admin/merchants"),
        ADMIN,
        Some(json!({"name": format!("Store {}", now_ms())})),
        None,
    )
    .unwrap();
    assert_eq!(m.0, 201, "{}", m.1);
    let now = now_ms();
    (0..n)
        .map(|i| {
            let body = json!({"merchant_id": m.1["id"], "title": format!("item {i}"), "category": "electronics", "price_fen": price_fen,
                              "stock": stock, "per_user_limit": 2, "opens_at_ms": now - 1000, "closes_at_ms": now + 3_600_000});
            let r = call(&a, "POST", &server.url("/v1/admin/items"), ADMIN, Some(body), None).unwrap();
            assert_eq!(r.0, 201, "{}", r.1);
            r.1["sku"].as_u64().unwrap()
        })
        .collect()
}

/// `n` shoppers: `(user id, token)`.
pub fn shoppers(server: &Server, n: usize) -> Vec<(u64, String)> {
    let r = call(
        &agent(),
        "POST",
        &server.url("/v1/admin/users/bulk"),
        ADMIN,
        Some(json!({"count": n})),
        None,
    )
    .unwrap();
    assert_eq!(r.0, 201, "{}", r.1);
    r.1["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["id"].as_u64().unwrap(),
                u["token"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs `mall <args…>` in `dir` and insists it succeeds: its stdout + stderr.
pub fn mall_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mall {args:?}: {text}");
    text
}

/// Runs `mall <args…>` to completion: (success, stdout + stderr).
pub fn mall(args: &[&str], data: &Path) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mall"));
    store_env(&mut command, data);
    let out = command.args(args).arg("--data").arg(data).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub const SECRETS: [&str; 3] = [
    "alpha-secret-0123456789",
    "beta-secret-0123456789",
    "gamma-secret-0123456789",
];

pub struct Channels {
    pub child: Child,
    pub ports: [u16; 3],
    pub started: Instant,
    pub file: std::path::PathBuf,
}

impl Drop for Channels {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three providers: alpha and beta (third party), gamma (card). Beta times
/// out from `outage.0` to `outage.1` seconds after start, if given.
pub fn start_channels(dir: &std::path::Path, outage: Option<(u64, u64)>) -> Channels {
    let ports = [free_port(), free_port(), free_port()];
    let mut text = String::new();
    for (i, (name, method)) in [
        ("alpha", "third_party"),
        ("beta", "third_party"),
        ("gamma", "card"),
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "[[channel]]\nname = \"{name}\"\nport = {}\nsecret = \"{}\"\nmethods = [\"{method}\"]\n\
             capacity_per_s = 400\nmax_concurrency = 200\nfee_bp = 50\nlatency_ms = {{ median = 15, p99 = 60 }}\n",
            ports[i], SECRETS[i]
        ));
        if let (1, Some((from, to))) = (i, outage) {
            text.push_str(&format!(
                "[[channel.outage]]\nfrom_s = {from}\nto_s = {to}\nkind = \"timeout\"\n"
            ));
        }
    }
    let file = dir.join("channels.toml");
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["channels", "--config"])
        .arg(&file)
        .env("MALL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start mall channels");
    for (port, secret) in ports.iter().zip(SECRETS) {
        wait_for(&format!("http://127.0.0.1:{port}/v1/stats"), secret);
    }
    Channels {
        child,
        ports,
        started,
        file,
    }
}

pub fn provider_stats(ch: &Channels, i: usize) -> Value {
    let r = call(
        &agent(),
        "GET",
        &format!("http://127.0.0.1:{}/v1/stats", ch.ports[i]),
        SECRETS[i],
        None,
        None,
    )
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    r.1
}

/// What the providers kept: charged minus refunded, fen.
pub fn kept(channels: &Channels) -> i64 {
    (0..3)
        .map(|i| {
            let s = provider_stats(channels, i);
            s["succeeded_fen"].as_i64().unwrap() - s["refunded_fen"].as_i64().unwrap()
        })
        .sum()
}

/// A provider's "succeeded" callback for try `attempt` on `channel`: its
/// body, and the channel's secret to sign it with.
pub fn succeeded_callback(channel: &str, attempt: u64, amount_fen: i64) -> (String, &'static str) {
    let secret = SECRETS[["alpha", "beta", "gamma"]
        .iter()
        .position(|c| *c == channel)
        .expect("one of the test channels")];
    let body = json!({"event_id": format!("evt-{channel}-{attempt}"), "channel": channel,
                      "payment_id": attempt.to_string(), "status": "succeeded", "amount_fen": amount_fen})
    .to_string();
    (body, secret)
}

/// Posts a callback to the server at `base`: (status, error code).
pub fn post_callback(base: &str, channel: &str, signature: &str, body: &str) -> (u16, String) {
    let mut r = agent()
        .post(&format!("{base}/v1/channels/{channel}/callback"))
        .header("x-mall-signature", signature)
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .unwrap();
    let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
    (
        r.status().as_u16(),
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}
