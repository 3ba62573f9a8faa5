//! `mall serve` as an operator starts it: settings from a TOML file with
//! flags winning, a refusal of a bad setting, and a graceful stop on SIGTERM
//! that keeps everything acknowledged.

mod common;

use common::{free_port, mall_in};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "serve-test-admin-token-0123456789abcdef";

fn wait_healthy(base: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut r) = agent.get(&format!("{base}/healthz")).call() {
            if r.status() == 200 {
                return r.body_mut().read_json().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn config_file_flags_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("mall.toml");
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:{port}\"\ndata = \"{}\"\nshards = 3\nhold_timeout = \"2m\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // The flag wins over the file: 1 shard, not 3.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args([
            "serve",
            "--seed",
            "--items",
            "50",
            "--merchants",
            "5",
            "--opens-in",
            "0s",
            "--shards",
            "1",
            "--config",
        ])
        .arg(&config)
        .env("MALL_ADMIN_TOKEN", ADMIN)
        .env("MALL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let health = wait_healthy(&base);
    assert_eq!(health["shards"], 1);
    assert_eq!(health["items"], 50);
    // Buy one thing, then stop with SIGTERM.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut bulk = agent
        .post(&format!("{base}/v1/admin/users/bulk"))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .send_json(serde_json::json!({"count": 1}))
        .unwrap();
    let users: serde_json::Value = bulk.body_mut().read_json().unwrap();
    let token = users["users"][0]["token"].as_str().unwrap().to_string();
    let mut order = agent
        .post(&format!("{base}/v1/orders"))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(
            serde_json::json!({"sku": 1, "quantity": 1, "payment": "online", "address": "1 Road"}),
        )
        .unwrap();
    assert_eq!(order.status(), 201);
    let order: serde_json::Value = order.body_mut().read_json().unwrap();
    assert_eq!(
        order["expires_at_ms"].as_i64().unwrap() - order["created_at_ms"].as_i64().unwrap(),
        120_000,
        "hold_timeout from the file"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no graceful exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let check = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["check", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("awaiting_payment  1"),
        "{text}"
    );
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "hold_timeout = \"0s\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hold_timeout must be at least 1s"));
    std::fs::write(&config, "bogus_setting = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus_setting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_forecast_and_its_plan_load_into_the_server_and_its_dashboard() {
    let dir = tempfile::tempdir().unwrap();
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
    let text = mall_in(dir.path(), &["forecast", "--history", "h"]);
    assert!(text.contains("plan.toml"), "{text}");
    let plan = std::fs::read_to_string(dir.path().join("plan.toml")).unwrap();
    assert!(plan.contains("[admission]"), "{plan}");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mall"))
        .current_dir(dir.path())
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data",
            "data",
            "--forecast",
            "forecast.json",
            "--plan",
            "plan.toml",
        ])
        .env("MALL_ADMIN_TOKEN", ADMIN)
        .env("MALL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("{base}/v1/dashboard"))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap();
    let d: serde_json::Value = r.body_mut().read_json().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let peak = &d["forecast"]["peak_orders_per_s"];
    assert!(peak["p50"].as_f64().unwrap() > 0.0, "{d}");
    assert!(peak["p10"].as_f64().unwrap() <= peak["p90"].as_f64().unwrap());
    assert!(!d["forecast"]["series"]["t_ms"]
        .as_array()
        .unwrap()
        .is_empty());
    // A bad plan is refused with a reason.
    std::fs::write(dir.path().join("bad.toml"), "shards = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .current_dir(dir.path())
        .args(["serve", "--data", "data2", "--plan", "bad.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plan"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every setting of the TOML file is also a flag and a `MALL_*` variable
/// (issue 10: settings defined in three places disagreed). The settings are
/// read from `Config` in the source; the flags from `mall serve --help`.
#[test]
fn every_setting_is_a_flag_and_an_environment_variable() {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs"),
    )
    .unwrap();
    let body = &source[source.find("pub struct Config {").unwrap()..];
    let body = &body[..body.find("\n}").unwrap()];
    let keys: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter(|l| !l.starts_with("struct"))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert!(keys.len() >= 25, "{keys:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_mall"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&&str> = keys
        .iter()
        .filter(|k| {
            let flag = format!("--{}", k.replace('_', "-"));
            let var = format!("MALL_{}", k.to_uppercase());
            !help.contains(&flag) || !help.contains(&var)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "settings without a flag or a variable: {missing:?}\n{help}"
    );
}
