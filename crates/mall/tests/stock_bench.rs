//! `mall bench stock` at a small size against real Redis and PostgreSQL
//! servers it starts itself: asserts correctness (every system verified, no
//! oversell), never speed.

use std::process::Command;

#[test]
fn stock_bench_against_real_redis_and_postgres_oversells_nowhere() {
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
        .env("MALL_LOG", "warn")
        .output()
        .expect("run mall bench stock");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench stock failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for system in [
        "mall in-process",
        "mall HTTP  ",
        "mall HTTP + event log",
        "Redis Lua",
        "PostgreSQL",
    ] {
        let rows: Vec<&str> = text.lines().filter(|l| l.contains(system)).collect();
        assert_eq!(rows.len(), 2, "{system}: one row per shape in\n{text}");
        for row in rows {
            assert!(
                row.trim_end().ends_with("ok"),
                "{system} not verified: {row}"
            );
            // The hot shape sells exactly its stock: 3,000 contenders for 500 units.
            if row.starts_with("hot") {
                let orders: Vec<&str> = row.split_whitespace().collect();
                assert!(
                    row.contains(" 500 "),
                    "hot {system} should sell exactly 500: {orders:?}"
                );
            }
        }
    }
}

#[test]
fn ledger_bench_against_real_postgres_balances_everywhere() {
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
        .env("MALL_LOG", "warn")
        .output()
        .expect("run mall bench ledger");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench ledger failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for system in ["mall ledger in-process", "PostgreSQL"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(system))
            .unwrap_or_else(|| panic!("no {system} row in\n{text}"));
        assert!(
            row.trim_end().ends_with("ok"),
            "{system} not verified: {row}"
        );
    }
    let mall = text.lines().find(|l| l.starts_with("mall ledger")).unwrap();
    assert!(mall.contains(" 20000 "), "every transfer made: {mall}");
}
