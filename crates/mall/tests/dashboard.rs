//! The dashboard in a real browser during a rush: headless Chromium
//! (Debian's `/usr/bin/chromium`, driven by playwright-core from
//! `tests/browser`, both installed by `scripts/test.sh`) loads the page
//! from `mall serve`, checks that its numbers update and agree with the
//! API, and saves screenshots to `target/dashboard.png` and
//! `target/dashboard-phone.png`.

mod common;

use common::{mall_in, start_channels, Server, ADMIN};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_dashboard_updates_live_and_agrees_with_the_api_in_chromium() {
    let browser_tests = repo().join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in tests/browser: run ./scripts/test.sh (it runs npm ci there)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: run ./scripts/test.sh (it apt-installs chromium)"
    );
    let dir = tempfile::tempdir().unwrap();
    let channels = start_channels(dir.path(), None);
    let data = dir.path().join("data");
    let channels_file = channels.file.to_str().unwrap().to_string();
    let server = Server::start(&data, &["--channels", &channels_file]);
    // A small night with a long tail, so orders keep coming while the browser watches.
    let scenario = dir.path().join("night.toml");
    std::fs::write(
        &scenario,
        mall_rush::scenario::SMOKE
            .replace("tail_s = 4.0", "tail_s = 25.0")
            .replace("spike_share = 0.7", "spike_share = 0.2")
            .replace("users = 2000", "users = 3000")
            .replace("duration_max_s = 30.0", "duration_max_s = 45.0"),
    )
    .unwrap();
    let mut rush = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["rush", "--target", &server.base, "--scenario"])
        .arg(&scenario)
        .args(["--admin-token", ADMIN, "--out"])
        .arg(dir.path().join("report"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mall rush");
    // Watch once the sale is on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = common::call(
            &common::agent(),
            "GET",
            &server.url("/v1/dashboard"),
            ADMIN,
            None,
            None,
        );
        if d.is_some_and(|(_, v)| v["orders_total"].as_u64().unwrap_or(0) > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the rush placed no order");
        std::thread::sleep(Duration::from_millis(100));
    }
    let target = repo().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard.png");
    let out = Command::new("node")
        .current_dir(&browser_tests)
        .arg("dashboard.mjs")
        .arg(&server.base)
        .arg(ADMIN)
        .arg(&shot)
        .output()
        .expect("run node (install Node.js)");
    let _ = rush.kill();
    let _ = rush.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    println!("dashboard in Chromium: {text}");
    let measured: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        measured["snapshots_per_s"].as_f64().unwrap() >= 1.0,
        "{measured}"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );
    // Stopped, the server has written its events: `mall report` adds up the night.
    server.stop();
    let page = target.join("night-report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["report", "--events"])
        .arg(data.join("events"))
        .arg("--out")
        .arg(&page)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: u64 = measured["orders_shown"]
        .as_str()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    let orders: u64 = text
        .split("; orders ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no order count in {text}"));
    assert!(
        orders >= shown,
        "the report counts at least what the page showed: {text}"
    );
    assert!(std::fs::read_to_string(&page).unwrap().contains("<svg"));
    // A forecast, backtested against what this rush produced.
    mall_in(
        dir.path(),
        &[
            "history",
            "generate",
            "--out",
            "h",
            "--days",
            "5",
            "--items",
            "100",
            "--shoppers",
            "2000",
        ],
    );
    mall_in(dir.path(), &["forecast", "--history", "h"]);
    let (events, _) = mall_events::read_dir(&data.join("events")).unwrap();
    let opened = events
        .iter()
        .find(|e| e.kind == mall_events::Kind::Order)
        .map(|e| e.at_ms)
        .unwrap();
    let events_dir = data.join("events");
    let text = mall_in(
        dir.path(),
        &[
            "forecast",
            "backtest",
            "--forecast",
            "forecast.json",
            "--events",
            events_dir.to_str().unwrap(),
            "--opens-at-ms",
            &opened.to_string(),
        ],
    );
    println!("backtest of a small forecast against the rush:\n{text}");
    assert!(text.to_lowercase().contains("peak"), "{text}");
}
