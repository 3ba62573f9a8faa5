//! `mall bench stock` at a small size against real Redis and PostgreSQL
//! servers it starts itself: asserts correctness (every system verified, no
//! oversell), never speed. The rows are read from the benchmarks' JSON
//! (`--json`), not scraped from the printed table.

use serde_json::Value;
use std::process::Command;

#[test]
fn stock_bench_against_real_redis_and_postgres_oversells_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("stock.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args([
            "bench",
            "stock",
            "--users",
            "3000",
            "--attempts",
            "3000",
            "--items",
            "300",
            "--hot-stock",
            "500",
        ])
        .args([
            "--concurrency",
            "16",
            "--seconds",
            "60",
            "--against",
            "redis,postgres",
        ])
        .arg("--json")
        .arg(&json)
        .env("MALL_LOG", "warn")
        .output()
        .expect("run mall bench stock");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench stock failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for system in [
        "mall_in_process",
        "mall_http",
        "mall_http_events",
        "redis",
        "postgres",
    ] {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["system"] == system).collect();
        assert_eq!(mine.len(), 2, "{system}: one row per shape in {rows:?}");
        for row in mine {
            assert_eq!(row["verified"], "ok", "{system} not verified: {row}");
            // The hot shape sells exactly its stock: 3,000 contenders for 500 units.
            if row["shape"] == "hot" {
                assert_eq!(
                    row["orders"], 500,
                    "hot {system} should sell exactly 500: {row}"
                );
            }
        }
    }
    // The hot shape as a coupon claim rush: exactly the quantity issued.
    let claims: Vec<&Value> = rows
        .iter()
        .filter(|r| r["system"] == "mall_coupons_in_process")
        .collect();
    assert_eq!(claims.len(), 1, "one claim-rush row: {rows:?}");
    assert_eq!(claims[0]["verified"], "ok", "{}", claims[0]);
    assert_eq!(
        claims[0]["orders"], 500,
        "exactly 500 claims: {}",
        claims[0]
    );
}

#[test]
fn ledger_bench_against_real_postgres_balances_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ledger.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args([
            "bench",
            "ledger",
            "--wallets",
            "500",
            "--transfers",
            "20000",
            "--batch",
            "512",
            "--concurrency",
            "8",
            "--seconds",
            "30",
        ])
        .arg("--json")
        .arg(&json)
        .env("MALL_LOG", "warn")
        .output()
        .expect("run mall bench ledger");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench ledger failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 2, "mall and PostgreSQL: {rows:?}");
    for row in &rows {
        assert_eq!(row["verified"], "ok", "not verified: {row}");
    }
    let mall = rows
        .iter()
        .find(|r| {
            r["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("mall ledger"))
        })
        .unwrap();
    assert_eq!(mall["transfers"], 20000, "every transfer made: {mall}");
}
