//! The database goes away mid-rush and comes back. PostgreSQL is stopped
//! the way a crash stops it (`pg_ctl stop -m immediate`: no checkpoint,
//! every connection cut) while shoppers snap up, then started again:
//! - no snap-up is acknowledged that is not durable (every 201 is there
//!   afterwards, and none is answered while the database is down);
//! - snap-ups answer 503 `store_unavailable` meanwhile, and browsing keeps
//!   working from memory;
//! - the same `mall serve` carries on once the database is back (no
//!   restart), and `mall check` passes.

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{agent, call, items, shoppers, Server};

const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One snap-up as the shopper saw it.
struct Attempt {
    token: String,
    sent: u8,
    answered: u8,
    status: u16,
    code: String,
    order: Option<u64>,
}

#[test]
fn postgres_lost_mid_rush_then_back() {
    let pg = mall_postgres::server::PostgresServer::start()
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL: {e}"));
    let url = pg.create_database("store_loss").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Arc::new(Server::start(&data, &["--store", &url]));
    let skus = items(&server, 4, 10_000, 990);
    let people = shoppers(&server, 4_000);
    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    // If the test fails, the shoppers stop too, and the last of them to go
    // drops the server (which kills it): no `mall serve` outlives the test.
    let _stop_on_panic = StopOnDrop(stop.clone());
    let seen = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (server, skus, people) = (server.clone(), skus.clone(), people.clone());
            let (phase, stop, seen) = (phase.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let a = agent();
                let mut n = t;
                while !stop.load(Ordering::SeqCst) {
                    let (_, token) = &people[n % people.len()];
                    let sku = skus[(n / people.len() + n) % skus.len()];
                    n += 4;
                    let sent = phase.load(Ordering::SeqCst);
                    let Some((status, body)) = call(
                        &a,
                        "POST",
                        &server.url("/v1/orders"),
                        token,
                        Some(json!({"sku": sku, "quantity": 1, "payment": "cod", "address": "11 Singles Road"})),
                        Some(&format!("loss-{t}-{n}")),
                    ) else {
                        continue;
                    };
                    seen.lock().unwrap().push(Attempt {
                        token: token.clone(),
                        sent,
                        answered: phase.load(Ordering::SeqCst),
                        status,
                        code: body["error"]["code"].as_str().unwrap_or("").into(),
                        order: body["id"].as_u64(),
                    });
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1_500));
    pg.stop_immediate().unwrap();
    phase.store(DOWN, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(3_000));
    // Browsing is served from memory while the database is away.
    let a = agent();
    let item = call(
        &a,
        "GET",
        &server.url(&format!("/v1/items/{}", skus[0])),
        "",
        None,
        None,
    )
    .unwrap();
    assert_eq!(item.0, 200, "browsing during the outage: {}", item.1);
    pg.start_again().unwrap();
    phase.store(BACK, Ordering::SeqCst);
    // The same process takes orders again, on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let back = seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.sent == BACK && s.status == 201);
        if back {
            break;
        }
        if Instant::now() > deadline {
            let mut answers = std::collections::BTreeMap::new();
            for s in seen.lock().unwrap().iter() {
                *answers
                    .entry((s.sent, s.answered, s.status, s.code.clone()))
                    .or_insert(0) += 1;
            }
            panic!("no snap-up succeeded within 30 s of the database's return; answers (sent, answered, status, code): {answers:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let count = |f: &dyn Fn(&Attempt) -> bool| seen.iter().filter(|s| f(s)).count();
    let acked_before = count(&|s| s.sent == UP && s.status == 201);
    let refused_down = count(&|s| s.sent == DOWN && s.status == 503);
    let answers = || {
        let mut answers = std::collections::BTreeMap::new();
        for s in &seen {
            *answers
                .entry((s.sent, s.answered, s.status, s.code.clone()))
                .or_insert(0) += 1;
        }
        format!("answers (sent, answered, status, code): {answers:?}")
    };
    assert!(
        acked_before > 0,
        "no snap-up before the outage; {}",
        answers()
    );
    // Shoppers whose requests were in flight at the crash may wait through
    // the outage and succeed after it (seen once in about six loaded runs:
    // every shopper thread blocked in such a request, none sent during the
    // outage). That is slow, not false. Whatever was sent while the
    // database was down must have been refused.
    let sent_down = count(&|s| s.sent == DOWN);
    assert!(
        sent_down == 0 || refused_down > 0,
        "snap-ups were sent while the database was down and none was refused; {}",
        answers()
    );
    for s in &seen {
        // Sent and answered while the database was down: never a success.
        if s.sent == DOWN && s.answered == DOWN {
            assert_ne!(s.status, 201, "an order acknowledged with no database");
        }
        if s.status == 503 {
            assert!(
                ["store_unavailable", "overloaded"].contains(&s.code.as_str()),
                "503 {}",
                s.code
            );
        }
        assert!(
            [201, 409, 503].contains(&s.status),
            "unexpected answer {} {}",
            s.status,
            s.code
        );
    }
    // Every acknowledged order is durable: there after the outage.
    for s in seen.iter().filter(|s| s.status == 201) {
        let id = s.order.expect("a 201 names its order");
        let got = call(
            &a,
            "GET",
            &server.url(&format!("/v1/orders/{id}")),
            &s.token,
            None,
            None,
        )
        .unwrap();
        assert_eq!(got.0, 200, "acknowledged order {id} is gone: {}", got.1);
    }
    println!(
        "{} attempts: {acked_before} acknowledged before the outage, {refused_down} sent during it refused, {} acknowledged after",
        seen.len(),
        count(&|s| s.sent == BACK && s.status == 201)
    );
    Arc::try_unwrap(server)
        .unwrap_or_else(|_| panic!("server still shared"))
        .stop();
    let (ok, text) = common::mall(&["check", "--store", &url], &data);
    assert!(ok, "mall check failed:\n{text}");
    assert!(text.contains("OK: conservation holds"), "{text}");
}

/// Fencing across processes: a second `mall serve` on the same store takes
/// every shard over; the first can no longer write any (it answers 503),
/// and nothing it tries after the takeover is stored.
#[test]
fn a_second_node_on_the_same_store_fences_the_first() {
    let pg = mall_postgres::server::PostgresServer::start()
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL: {e}"));
    let url = pg.create_database("fencing").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&dir.path().join("a"), &["--store", &url]);
    let skus = items(&first, 1, 100, 990);
    let people = shoppers(&first, 3);
    let a = agent();
    let snap = |server: &Server, token: &str| {
        call(
            &a,
            "POST",
            &server.url("/v1/orders"),
            token,
            Some(json!({"sku": skus[0], "quantity": 1, "payment": "cod", "address": "11 Singles Road"})),
            None,
        )
        .unwrap()
    };
    let made = snap(&first, &people[0].1);
    assert_eq!(made.0, 201, "{}", made.1);

    let second = Server::start(&dir.path().join("b"), &["--store", &url]);
    let refused = snap(&first, &people[1].1);
    assert_eq!(refused.0, 503, "the fenced node still wrote: {}", refused.1);
    assert_eq!(refused.1["error"]["code"], "store_unavailable");
    let taken = snap(&second, &people[2].1);
    assert_eq!(taken.0, 201, "{}", taken.1);
    // The new owner has the first node's order; the refused one exists nowhere.
    let id = made.1["id"].as_u64().unwrap();
    let got = call(
        &a,
        "GET",
        &second.url(&format!("/v1/orders/{id}")),
        &people[0].1,
        None,
        None,
    )
    .unwrap();
    assert_eq!(got.0, 200, "{}", got.1);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let users: Vec<i64> = db
        .query("SELECT user_id FROM orders ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        users,
        vec![people[0].0 as i64, people[2].0 as i64],
        "only the acknowledged orders are stored"
    );
}
